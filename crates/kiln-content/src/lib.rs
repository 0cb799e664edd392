//! A content-addressed blob store: every blob lives at `blobs/sha256/<hex>` under its root, is
//! written to `ingest/` first, hashed while it streams, fsynced, and renamed into place only when
//! its digest is the one expected. A crash leaves at worst a stray ingest file, never a blob whose
//! bytes do not match its name. It knows digests and files, not images or registries.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use kiln_oci::Digest;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWrite;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("blob `{0}` not found in the content store")]
    NotFound(Digest),
    #[error("blob digest mismatch: expected `{expected}`, got `{actual}`")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("content store i/o on `{path}`")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug, Clone)]
pub struct ContentStore {
    root: PathBuf,
}

impl ContentStore {
    /// Opens (creating if needed) a store rooted at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        for dir in [root.join("blobs/sha256"), root.join("ingest")] {
            fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        }
        Ok(Self { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob lives (whether or not it exists).
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(digest.algorithm().as_ref())
            .join(digest.digest())
    }

    pub fn contains(&self, digest: &Digest) -> bool {
        self.path(digest).is_file()
    }

    /// The blob's size, or `None` when absent.
    pub fn size(&self, digest: &Digest) -> Result<Option<u64>> {
        let path = self.path(digest);
        match fs::metadata(&path) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::Io { path, source: e }),
        }
    }

    pub fn open_blob(&self, digest: &Digest) -> Result<File> {
        let path = self.path(digest);
        File::open(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Error::NotFound(digest.clone()),
            _ => Error::Io {
                path: path.clone(),
                source: e,
            },
        })
    }

    pub fn read(&self, digest: &Digest) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        let path = self.path(digest);
        self.open_blob(digest)?
            .read_to_end(&mut buf)
            .map_err(io_err(&path))?;
        Ok(buf)
    }

    /// Stores `bytes`, checking them against `expected` when given.
    pub fn put(&self, bytes: &[u8], expected: Option<&Digest>) -> Result<Digest> {
        let actual = kiln_oci::sha256(bytes);
        check(expected, &actual)?;
        if self.contains(&actual) {
            return Ok(actual);
        }
        let mut w = self.writer()?;
        w.write_all(bytes).map_err(io_err(&w.tmp))?;
        w.commit(Some(&actual)).map(|(d, _)| d)
    }

    /// A writer for a new blob; nothing is visible until `commit`.
    pub fn writer(&self) -> Result<BlobWriter> {
        let (tmp, file) = self.ingest_file()?;
        Ok(BlobWriter {
            store: self.clone(),
            tmp,
            file: Some(file),
            hasher: Sha256::new(),
            written: 0,
        })
    }

    /// An async writer for a new blob (for network streams); nothing is visible until `commit`.
    pub fn async_writer(&self) -> Result<AsyncBlobWriter> {
        let (tmp, file) = self.ingest_file()?;
        Ok(AsyncBlobWriter {
            store: self.clone(),
            tmp,
            file: Some(tokio::fs::File::from_std(file)),
            hasher: Sha256::new(),
            written: 0,
        })
    }

    pub fn delete(&self, digest: &Digest) -> Result<()> {
        let path = self.path(digest);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::Io { path, source: e }),
            _ => Ok(()),
        }
    }

    fn ingest_file(&self) -> Result<(PathBuf, File)> {
        let tmp = self
            .root
            .join("ingest")
            .join(format!("{:016x}", rand::random::<u64>()));
        let file = File::create(&tmp).map_err(io_err(&tmp))?;
        Ok((tmp, file))
    }

    /// Moves a fully written and synced ingest file into place under `digest`.
    fn install(&self, tmp: &Path, expected: Option<&Digest>, actual: Digest) -> Result<Digest> {
        if let Err(e) = check(expected, &actual) {
            let _ = fs::remove_file(tmp);
            return Err(e);
        }
        let dest = self.path(&actual);
        fs::rename(tmp, &dest).map_err(io_err(&dest))?;
        Ok(actual)
    }
}

fn check(expected: Option<&Digest>, actual: &Digest) -> Result<()> {
    match expected {
        Some(e) if e != actual => Err(Error::DigestMismatch {
            expected: e.clone(),
            actual: actual.clone(),
        }),
        _ => Ok(()),
    }
}

fn finish_digest(hasher: Sha256) -> Digest {
    kiln_oci::parse_digest(&format!("sha256:{}", hex::encode(hasher.finalize())))
        .expect("a sha256 hex string is a valid digest")
}

/// A blob being written. Dropping it without `commit` removes the partial file.
pub struct BlobWriter {
    store: ContentStore,
    tmp: PathBuf,
    file: Option<File>,
    hasher: Sha256,
    written: u64,
}

impl BlobWriter {
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Syncs and installs the blob; fails (and discards it) if it does not hash to `expected`.
    pub fn commit(mut self, expected: Option<&Digest>) -> Result<(Digest, u64)> {
        let file = self.file.take().expect("file present until commit");
        file.sync_all().map_err(io_err(&self.tmp))?;
        drop(file);
        let hasher = std::mem::take(&mut self.hasher);
        let digest = self
            .store
            .install(&self.tmp, expected, finish_digest(hasher))?;
        Ok((digest, self.written))
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self
            .file
            .as_mut()
            .expect("file present until commit")
            .write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file
            .as_mut()
            .expect("file present until commit")
            .flush()
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// The async twin of [`BlobWriter`].
pub struct AsyncBlobWriter {
    store: ContentStore,
    tmp: PathBuf,
    file: Option<tokio::fs::File>,
    hasher: Sha256,
    written: u64,
}

impl AsyncBlobWriter {
    pub async fn commit(mut self, expected: Option<&Digest>) -> Result<(Digest, u64)> {
        let mut file = self.file.take().expect("file present until commit");
        tokio::io::AsyncWriteExt::flush(&mut file)
            .await
            .map_err(io_err(&self.tmp))?;
        file.sync_all().await.map_err(io_err(&self.tmp))?;
        drop(file);
        let hasher = std::mem::take(&mut self.hasher);
        let digest = self
            .store
            .install(&self.tmp, expected, finish_digest(hasher))?;
        Ok((digest, self.written))
    }
}

impl AsyncWrite for AsyncBlobWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let file = this.file.as_mut().expect("file present until commit");
        match Pin::new(file).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                this.hasher.update(&buf[..n]);
                this.written += n as u64;
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.file.as_mut().expect("file present until commit")).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.file.as_mut().expect("file present until commit")).poll_shutdown(cx)
    }
}

impl Drop for AsyncBlobWriter {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let d = store.put(b"hello", None).unwrap();
        assert_eq!(d, kiln_oci::sha256(b"hello"));
        assert_eq!(store.read(&d).unwrap(), b"hello");
        assert_eq!(store.size(&d).unwrap(), Some(5));
        assert!(store.path(&d).ends_with(d.digest()));
    }

    #[test]
    fn wrong_digest_is_refused_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let wrong = kiln_oci::sha256(b"other");
        let err = store.put(b"hello", Some(&wrong)).unwrap_err();
        assert!(matches!(err, Error::DigestMismatch { .. }));
        let mut w = store.writer().unwrap();
        w.write_all(b"hello").unwrap();
        assert!(w.commit(Some(&wrong)).is_err());
        assert!(!store.contains(&wrong));
        assert!(!store.contains(&kiln_oci::sha256(b"hello")));
        assert_eq!(fs::read_dir(dir.path().join("ingest")).unwrap().count(), 0);
    }

    #[test]
    fn dropped_writer_removes_partial_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let mut w = store.writer().unwrap();
        w.write_all(b"partial").unwrap();
        drop(w);
        assert_eq!(fs::read_dir(dir.path().join("ingest")).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn async_writer_hashes_while_streaming() {
        use tokio::io::AsyncWriteExt;
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let mut w = store.async_writer().unwrap();
        w.write_all(b"abc").await.unwrap();
        w.write_all(b"def").await.unwrap();
        let (d, n) = w.commit(Some(&kiln_oci::sha256(b"abcdef"))).await.unwrap();
        assert_eq!(n, 6);
        assert_eq!(store.read(&d).unwrap(), b"abcdef");
    }
}
