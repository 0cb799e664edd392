//! Reading a context tarball: archive or Dockerfile from the first bytes, decompression by
//! magic bytes (gzip, bzip2, xz, zstd), the spool file, and unpacking what is selected from it.

use std::io::{self, BufReader, Read, Write as _};
use std::path::Path;
use std::sync::Arc;

use kiln_snapshot::archive::{decompress, is_tar_header, sniff_archive};

use super::Selection;
use crate::{Error, Result, io};

/// How many bytes decide between an archive and a Dockerfile, as buildx peeks stdin.
pub const SNIFF_LEN: usize = 1024;

/// Decompresses `reader` as its first bytes say into the file `spool`; returns the bytes read
/// and whether the tar holds a symlink or hardlink. `name` says where the archive came from.
pub(super) fn spool_tar(
    reader: Box<dyn Read + Send>,
    spool: &Path,
    name: &str,
) -> Result<(u64, bool)> {
    let counted = Counted {
        inner: reader,
        n: Arc::new(std::sync::atomic::AtomicU64::new(0)),
    };
    let n = counted.n.clone();
    let (head, reader) = peek(Box::new(counted), SNIFF_LEN)
        .map_err(io(format!("reading the context archive from {name}")))?;
    let compression = sniff_archive(&head)
        .ok_or_else(|| Error::Usage(format!("{name} is neither a tar archive nor a Dockerfile")))?;
    let bad = |e: io::Error| Error::ContextArchive {
        name: name.to_string(),
        source: Box::new(e),
    };
    let (head, mut tar) = peek(decompress(reader, compression), 512).map_err(bad)?;
    if !is_tar_header(&head) {
        return Err(bad(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a tar archive once decompressed",
        )));
    }
    let file =
        std::fs::File::create(spool).map_err(io(format!("creating `{}`", spool.display())))?;
    let mut out = io::BufWriter::with_capacity(1 << 20, file);
    io::copy(&mut tar, &mut out).map_err(bad)?;
    out.flush().map_err(bad)?;
    // One pass over the headers (seeking past the data) to find links, and to refuse a tar
    // cut short before anything is unpacked.
    let file = std::fs::File::open(spool).map_err(io(format!("reading `{}`", spool.display())))?;
    let mut archive = tar::Archive::new(file);
    let mut links = false;
    for entry in archive.entries_with_seek().map_err(bad)? {
        let entry = entry.map_err(bad)?;
        links |= matches!(
            entry.header().entry_type(),
            tar::EntryType::Symlink | tar::EntryType::Link
        );
    }
    Ok((n.load(std::sync::atomic::Ordering::Relaxed), links))
}

/// Unpacks from the spooled tar into `dir` the entries `select` picks.
pub(super) fn unpack_spool(spool: &Path, dir: &Path, name: &str, select: &Selection) -> Result<()> {
    let file = std::fs::File::open(spool).map_err(io(format!("reading `{}`", spool.display())))?;
    let reader = BufReader::with_capacity(1 << 20, file);
    let keep = |comps: &[std::ffi::OsString]| match select {
        Selection::All => true,
        Selection::Prefixes(prefixes) => prefixes.iter().any(|p| {
            let n = p.len().min(comps.len());
            p[..n].iter().zip(&comps[..n]).all(|(a, b)| a.as_str() == b)
        }),
    };
    kiln_snapshot::extract_context_filtered(reader, dir, &keep).map_err(|source| {
        Error::ContextArchive {
            name: name.to_string(),
            source: Box::new(source),
        }
    })
}

struct Counted {
    inner: Box<dyn Read + Send>,
    n: Arc<std::sync::atomic::AtomicU64>,
}

impl Read for Counted {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.n
            .fetch_add(k as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(k)
    }
}

/// The first `len` bytes of `reader` (fewer at its end) and a reader that yields all of it.
pub fn peek(
    mut reader: Box<dyn Read + Send>,
    len: usize,
) -> io::Result<(Vec<u8>, Box<dyn Read + Send>)> {
    let mut head = Vec::with_capacity(len);
    (&mut reader).take(len as u64).read_to_end(&mut head)?;
    let again = io::Cursor::new(head.clone()).chain(reader);
    Ok((head, Box::new(again)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_bytes() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o644);
        h.set_path("Dockerfile").unwrap();
        h.set_cksum();
        b.append(&h, &b"abc"[..]).unwrap();
        b.into_inner().unwrap()
    }

    fn unpack_all(bytes: &[u8], dir: &Path, what: &str) -> Result<()> {
        let spool = dir.join("spool.tar");
        let ctx = dir.join("ctx");
        std::fs::create_dir(&ctx).unwrap();
        spool_tar(Box::new(io::Cursor::new(bytes.to_vec())), &spool, what)?;
        unpack_spool(&spool, &ctx, what, &Selection::All)?;
        std::fs::rename(ctx.join("Dockerfile"), dir.join("Dockerfile")).unwrap();
        Ok(())
    }

    #[test]
    fn every_compression_unpacks_and_a_truncated_stream_is_an_error() {
        let tar = tar_bytes();
        let gz = {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            io::Write::write_all(&mut e, &tar).unwrap();
            e.finish().unwrap()
        };
        let bz = {
            let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
            io::Write::write_all(&mut e, &tar).unwrap();
            e.finish().unwrap()
        };
        let xz = {
            let mut out = Vec::new();
            lzma_rs::xz_compress(&mut &tar[..], &mut out).unwrap();
            out
        };
        let zst = zstd::encode_all(&tar[..], 1).unwrap();
        for (what, bytes) in [
            ("tar", &tar),
            ("gz", &gz),
            ("bz2", &bz),
            ("xz", &xz),
            ("zst", &zst),
        ] {
            let dir = tempfile::tempdir().unwrap();
            unpack_all(bytes, dir.path(), what).unwrap();
            assert_eq!(
                std::fs::read(dir.path().join("Dockerfile")).unwrap(),
                b"abc",
                "{what}"
            );
            if what != "tar" {
                let dir = tempfile::tempdir().unwrap();
                let cut = bytes[..bytes.len() - 8].to_vec();
                let r = unpack_all(&cut, dir.path(), what);
                assert!(r.is_err(), "{what}: a truncated stream was accepted");
            }
        }
    }
}
