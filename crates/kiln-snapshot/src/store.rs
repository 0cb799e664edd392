//! The layer store: `root/<diffID hex>/`, each an unpacked layer in overlay format.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use kiln_content::{BlobWriter, ContentStore};
use kiln_oci::Digest;
use kiln_oci::media_type::{self, LayerCompression};
use rustix::fs::{CWD, RenameFlags};
use rustix::io::Errno;
use sha2::{Digest as _, Sha256};

use crate::{Error, Result, apply, diff, io_err};

/// Prefix of in-progress directories; never a valid hex digest, so never mistaken for a layer.
const TEMP_PREFIX: &str = ".tmp-";

/// How `commit_upper` and `export` compress the layer tar they write. Builds store layers
/// uncompressed (the blob digest is the diffID) and compress only at export, as Docker's store
/// and BuildKit do: compression is the slow part of a commit and most layers are never pushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    #[default]
    Uncompressed,
    /// gzip at the default level (6).
    Gzip,
}

impl Compression {
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::Uncompressed => media_type::OCI_LAYER_TAR,
            Compression::Gzip => media_type::OCI_LAYER_GZIP,
        }
    }
}

/// A layer written to the content store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerBlob {
    /// sha256 of the uncompressed tar (what image configs list in `rootfs.diff_ids`).
    pub diff_id: Digest,
    /// sha256 of the blob as stored (what manifests list).
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
}

#[derive(Debug, Clone)]
pub struct LayerStore {
    root: PathBuf,
}

impl LayerStore {
    /// Opens (creating if needed) a store rooted at `root`.
    pub fn open(root: &Path) -> Result<LayerStore> {
        fs::create_dir_all(root).map_err(io_err(root))?;
        Ok(LayerStore {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the layer lives (whether or not it exists).
    pub fn dir(&self, diff_id: &Digest) -> PathBuf {
        self.root.join(diff_id.digest())
    }

    pub fn contains(&self, diff_id: &Digest) -> bool {
        self.dir(diff_id).is_dir()
    }

    /// Unpacks a layer blob (gzip, zstd or plain tar, from `media_type`) into the store and
    /// returns its diffID, hashed from the uncompressed bytes while they stream. Verifies
    /// `expected_diff_id` when given (and skips the work if that layer is already stored).
    ///
    /// Extraction happens in a temporary directory next to the final one, which is renamed
    /// into place only once complete and synced: a crash or error never leaves a half layer
    /// under a diffID.
    pub fn unpack(
        &self,
        blob: impl Read,
        media_type: &str,
        expected_diff_id: Option<&Digest>,
    ) -> Result<Digest> {
        let compression = media_type::layer_compression(media_type)
            .ok_or_else(|| Error::MediaType(media_type.to_string()))?;
        if let Some(expected) = expected_diff_id
            && self.contains(expected)
        {
            return Ok(expected.clone());
        }
        let mut tmp = TempDir::create(&self.root)?;
        let decoded: Box<dyn Read + '_> = match compression {
            LayerCompression::None => Box::new(blob),
            LayerCompression::Gzip => Box::new(MultiGzDecoder::new(io::BufReader::new(blob))),
            LayerCompression::Zstd => Box::new(
                zstd::stream::read::Decoder::new(blob)
                    .map_err(|source| Error::ReadTar { source })?,
            ),
        };
        // tar reads 512-byte blocks; buffer so each is not a syscall or decoder call.
        let mut hashing = HashingReader {
            inner: io::BufReader::with_capacity(128 * 1024, decoded),
            hasher: Sha256::new(),
        };
        apply::apply(&mut hashing, &tmp.path)?;
        // The diffID covers the whole stream, including the zero blocks after the end marker.
        io::copy(&mut hashing, &mut io::sink()).map_err(|source| Error::ReadTar { source })?;
        let diff_id = digest_from(hashing.hasher);
        if let Some(expected) = expected_diff_id
            && *expected != diff_id
        {
            return Err(Error::DiffIdMismatch {
                expected: expected.clone(),
                actual: diff_id,
            });
        }
        let fd = apply::open_path(&tmp.path).map_err(io_err(&tmp.path))?;
        rustix::fs::syncfs(&fd).map_err(|e| Error::Io {
            path: tmp.path.clone(),
            source: e.into(),
        })?;
        // When the layer is already there, dropping `tmp` discards our copy.
        tmp.keep = self.install(&tmp.path, &diff_id)?;
        Ok(diff_id)
    }

    /// Adopts `dir` (an unmounted overlay upper dir after a build step) as a layer: writes its
    /// OCI tar diff through `compression` into a new blob of `content`, then moves `dir` into
    /// the store under the diffID, or removes it when that layer is already stored. `dir` must
    /// be on the store's filesystem.
    pub fn commit_upper(
        &self,
        dir: &Path,
        content: &ContentStore,
        compression: Compression,
    ) -> Result<LayerBlob> {
        let blob = write_blob(dir, content, compression)?;
        if !self.install(dir, &blob.diff_id)? {
            fs::remove_dir_all(dir).map_err(io_err(dir))?;
        }
        Ok(blob)
    }

    /// Writes the layer tar of a stored layer into `content`, the same way as `commit_upper`.
    ///
    /// The returned diffID is that of the tar written. For layers committed by kiln it equals
    /// `diff_id`; a layer unpacked from a foreign tar (other entry order, `./` prefixes, PAX
    /// times) is re-serialised and gets a new one.
    pub fn export(
        &self,
        diff_id: &Digest,
        content: &ContentStore,
        compression: Compression,
    ) -> Result<LayerBlob> {
        let dir = self.dir(diff_id);
        if !dir.is_dir() {
            return Err(Error::NotFound(diff_id.clone()));
        }
        write_blob(&dir, content, compression)
    }

    /// Removes temporary directories left by interrupted unpacks. Only call this when no other
    /// unpack into the same store is running.
    pub fn remove_stale_temp_dirs(&self) -> Result<usize> {
        let mut removed = 0;
        for entry in fs::read_dir(&self.root).map_err(io_err(&self.root))? {
            let entry = entry.map_err(io_err(&self.root))?;
            if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                let path = entry.path();
                fs::remove_dir_all(&path).map_err(io_err(&path))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Renames a finished directory into place. Returns false, leaving `dir` where it is, when
    /// the layer is already stored: its content is the same by construction.
    fn install(&self, dir: &Path, diff_id: &Digest) -> Result<bool> {
        let dest = self.dir(diff_id);
        match rustix::fs::renameat_with(CWD, dir, CWD, &dest, RenameFlags::NOREPLACE) {
            Ok(()) => Ok(true),
            Err(Errno::EXIST | Errno::NOTEMPTY) => Ok(false),
            Err(e) => Err(Error::Io {
                path: dest,
                source: e.into(),
            }),
        }
    }
}

/// Streams the tar of `dir` through the compressor into a new blob, hashing the uncompressed
/// bytes (diffID) and the compressed bytes (blob digest) in the same pass.
fn write_blob(dir: &Path, content: &ContentStore, compression: Compression) -> Result<LayerBlob> {
    let blob = content
        .writer()
        .map_err(|source| Error::Content { source })?;
    let finish_err = |source: io::Error| Error::Diff {
        path: dir.to_path_buf(),
        source,
    };
    if compression == Compression::Uncompressed {
        // The blob is the tar: the content store's own hash is the diffID (one pass).
        let buffered = diff::write_tar(dir, io::BufWriter::with_capacity(256 * 1024, blob))?;
        let blob = buffered
            .into_inner()
            .map_err(|e| finish_err(e.into_error()))?;
        let (digest, size) = blob
            .commit(None)
            .map_err(|source| Error::Content { source })?;
        return Ok(LayerBlob {
            diff_id: digest.clone(),
            digest,
            size,
            media_type: compression.media_type().to_string(),
        });
    }
    let encoder = match compression {
        Compression::Uncompressed => Encoder::Plain(blob),
        Compression::Gzip => {
            Encoder::Gzip(Box::new(GzEncoder::new(blob, flate2::Compression::new(6))))
        }
    };
    let hashing = kiln_oci::Sha256Writer::new(io::BufWriter::with_capacity(256 * 1024, encoder));
    let hashing = diff::write_tar(dir, hashing)?;
    let (buffered, diff_id, _) = hashing.finish();
    let encoder = buffered
        .into_inner()
        .map_err(|e| finish_err(e.into_error()))?;
    let blob = encoder.finish().map_err(finish_err)?;
    let (digest, size) = blob
        .commit(None)
        .map_err(|source| Error::Content { source })?;
    Ok(LayerBlob {
        diff_id,
        digest,
        size,
        media_type: compression.media_type().to_string(),
    })
}

enum Encoder {
    Plain(BlobWriter),
    Gzip(Box<GzEncoder<BlobWriter>>),
}

impl Encoder {
    fn finish(self) -> io::Result<BlobWriter> {
        match self {
            Encoder::Plain(w) => Ok(w),
            Encoder::Gzip(g) => (*g).finish(),
        }
    }
}

impl Write for Encoder {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::Plain(w) => w.write(buf),
            Encoder::Gzip(g) => g.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Plain(w) => w.flush(),
            Encoder::Gzip(g) => g.flush(),
        }
    }
}

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

fn digest_from(hasher: Sha256) -> Digest {
    let hex: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    kiln_oci::parse_digest(&format!("sha256:{hex}"))
        .expect("64 lowercase hex digits are a valid sha256 digest")
}

/// A directory removed on drop unless `keep` is set.
struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl TempDir {
    fn create(parent: &Path) -> Result<TempDir> {
        let path = parent.join(format!("{TEMP_PREFIX}{:016x}", rand::random::<u64>()));
        fs::create_dir(&path).map_err(io_err(&path))?;
        Ok(TempDir { path, keep: false })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.keep
            && let Err(e) = fs::remove_dir_all(&self.path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.path.display(), error = %e, "failed to remove directory");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_media_types() {
        assert_eq!(
            Compression::Gzip.media_type(),
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
        assert_eq!(
            media_type::layer_compression(Compression::Uncompressed.media_type()),
            Some(LayerCompression::None)
        );
    }

    #[test]
    fn unknown_media_type_is_refused_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = LayerStore::open(dir.path()).unwrap();
        let err = store
            .unpack(&b""[..], "application/octet-stream", None)
            .unwrap_err();
        assert!(matches!(err, Error::MediaType(_)));
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn corrupt_blob_leaves_no_layer_or_temp_dir() {
        let dir = tempfile::tempdir().unwrap();
        let store = LayerStore::open(dir.path()).unwrap();
        let err = store
            .unpack(&b"not gzip at all"[..], media_type::OCI_LAYER_GZIP, None)
            .unwrap_err();
        assert!(matches!(err, Error::ReadTar { .. }), "{err:?}");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn stale_temp_dirs_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = LayerStore::open(dir.path()).unwrap();
        let tmp = TempDir::create(dir.path()).unwrap();
        std::mem::forget(tmp);
        fs::create_dir(dir.path().join("abc")).unwrap();
        assert_eq!(store.remove_stale_temp_dirs().unwrap(), 1);
        assert!(dir.path().join("abc").is_dir());
    }
}
