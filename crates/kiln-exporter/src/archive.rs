//! Deterministic tar output shared by the exporters: fixed order is the caller's job; every
//! entry here gets the same mtime, uid/gid 0 and mode 0644 (files) or 0755 (directories).

use std::io::{self, Read, Write};

use kiln_content::ContentStore;
use kiln_oci::{Digest, Sha256Writer};

use crate::{Error, Result};

/// How archives are written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArchiveOptions {
    /// The mtime of every entry, in seconds since the epoch (`SOURCE_DATE_EPOCH`); 0 when unset.
    pub source_date_epoch: Option<u64>,
    /// Annotations of the image's descriptor in `index.json` (BuildKit's
    /// `annotation-manifest-descriptor.KEY`), beside the name annotations.
    pub descriptor_annotations: std::collections::BTreeMap<String, String>,
}

pub(crate) struct TarOut<W: Write> {
    builder: tar::Builder<W>,
    mtime: u64,
}

impl<W: Write> TarOut<W> {
    pub fn new(out: W, opts: &ArchiveOptions) -> Self {
        Self {
            builder: tar::Builder::new(out),
            mtime: opts.source_date_epoch.unwrap_or(0),
        }
    }

    fn header(&self, kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode);
        h.set_mtime(self.mtime);
        h.set_uid(0);
        h.set_gid(0);
        h
    }

    /// A directory entry; `path` ends with `/`.
    pub fn dir(&mut self, path: &str) -> Result<()> {
        let mut h = self.header(tar::EntryType::Directory, 0, 0o755);
        self.builder
            .append_data(&mut h, path, io::empty())
            .map_err(write_err(path))
    }

    pub fn file(&mut self, path: &str, bytes: &[u8]) -> Result<()> {
        let mut h = self.header(tar::EntryType::Regular, bytes.len() as u64, 0o644);
        self.builder
            .append_data(&mut h, path, bytes)
            .map_err(write_err(path))
    }

    /// Streams a blob from the store into the archive, hashing it on the way so a corrupt store
    /// cannot produce an archive whose blobs do not match their names.
    pub fn blob(
        &mut self,
        path: &str,
        content: &ContentStore,
        digest: &Digest,
        size: u64,
    ) -> Result<()> {
        let file = content
            .open_blob(digest)
            .map_err(|source| Error::ReadBlob {
                digest: digest.clone(),
                source: Box::new(source),
            })?;
        // `take` keeps the entry the size its header promises even if the file grew.
        let mut reader = HashingReader::new(file.take(size));
        let mut h = self.header(tar::EntryType::Regular, size, 0o644);
        self.builder
            .append_data(&mut h, path, &mut reader)
            .map_err(write_err(path))?;
        reader.check(digest, size)
    }

    /// Writes the end-of-archive marker and returns the writer.
    pub fn finish(self) -> Result<W> {
        let mut out = self.builder.into_inner().map_err(write_err("<end>"))?;
        out.flush().map_err(write_err("<end>"))?;
        Ok(out)
    }
}

fn write_err(path: &str) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::WriteArchive {
        path: path.to_string(),
        source,
    }
}

/// A reader that hashes and counts what passes through it.
pub(crate) struct HashingReader<R> {
    inner: R,
    hash: Sha256Writer<io::Sink>,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            hash: Sha256Writer::new(io::sink()),
        }
    }

    /// Fails unless exactly `size` bytes hashing to `digest` were read.
    pub fn check(self, digest: &Digest, size: u64) -> Result<()> {
        let (_, actual, n) = self.hash.finish();
        if n != size {
            return Err(Error::SizeMismatch {
                digest: digest.clone(),
                expected: size,
                actual: n,
            });
        }
        if &actual != digest {
            return Err(Error::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        Ok(())
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.write_all(&buf[..n])?;
        Ok(n)
    }
}

/// `blobs/<alg>/<hex>`, the blob's path in an OCI image layout.
pub(crate) fn blob_path(digest: &Digest) -> String {
    format!("blobs/{}/{}", digest.algorithm().as_ref(), digest.digest())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_normalised_and_blob_hash_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let content = ContentStore::open(dir.path()).unwrap();
        let d = content.put(b"layer bytes", None).unwrap();

        let opts = ArchiveOptions {
            source_date_epoch: Some(1_700_000_000),
            ..ArchiveOptions::default()
        };
        let mut out = TarOut::new(Vec::new(), &opts);
        out.dir("blobs/").unwrap();
        out.blob(&blob_path(&d), &content, &d, 11).unwrap();
        out.file("x", b"hi").unwrap();
        let bytes = out.finish().unwrap();

        let mut ar = tar::Archive::new(bytes.as_slice());
        let got: Vec<(String, u32, u64, u64)> = ar
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    h.mode().unwrap(),
                    h.mtime().unwrap(),
                    h.uid().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("blobs/".into(), 0o755, 1_700_000_000, 0),
                (blob_path(&d), 0o644, 1_700_000_000, 0),
                ("x".into(), 0o644, 1_700_000_000, 0),
            ]
        );

        // A blob whose bytes no longer match its name is refused.
        std::fs::write(content.path(&d), b"LAYER BYTES").unwrap();
        let mut out = TarOut::new(Vec::new(), &ArchiveOptions::default());
        assert!(matches!(
            out.blob("b", &content, &d, 11),
            Err(Error::DigestMismatch { .. })
        ));
    }
}
