//! A content-addressed blob store: every blob lives at `blobs/sha256/<hex>` under its root, is
//! written to `ingest/` first, hashed while it streams, fsynced, and renamed into place only when
//! its digest is the one expected. A crash leaves at worst a stray ingest file, never a blob whose
//! bytes do not match its name; each ingest file is `flock`ed by its writer, so opening the store
//! removes the ones a killed writer left (unlocked) and never a live writer's (see [`partial`]).
//! It knows digests and files, not images or registries.

pub mod partial;

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
    /// Opens (creating if needed) a store rooted at `root`, removing the partial ingest files
    /// writers that died left (never one a live writer, in this process or another, holds).
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        for dir in [root.join("blobs/sha256"), root.join("ingest")] {
            fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        }
        let store = Self { root };
        store.remove_stale_ingest()?;
        Ok(store)
    }

    fn ingest_dir(&self) -> PathBuf {
        self.root.join("ingest")
    }

    /// The partial blobs in `ingest/`: being written (`in_use`) or left by a killed writer.
    pub fn ingest_files(&self) -> Result<Vec<partial::PartialFile>> {
        let dir = self.ingest_dir();
        partial::list(&dir, "").map_err(io_err(&dir))
    }

    /// Removes the partial blobs no live writer holds; returns how many files and bytes went.
    pub fn remove_stale_ingest(&self) -> Result<(usize, u64)> {
        let dir = self.ingest_dir();
        partial::remove_stale(&dir, "").map_err(io_err(&dir))
    }

    /// Removes the partial blob `name` unless a live writer holds it; returns whether it did.
    pub fn remove_ingest(&self, name: &str) -> Result<bool> {
        let path = self.ingest_dir().join(name);
        if name.contains('/') || name.starts_with('.') {
            return Ok(false);
        }
        partial::remove_if_stale(&path).map_err(io_err(&path))
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

    /// A new ingest file, locked for as long as it is open (so no cleaner removes it).
    fn ingest_file(&self) -> Result<(PathBuf, File)> {
        let dir = self.ingest_dir();
        partial::create_locked(&dir, "").map_err(io_err(&dir))
    }

    /// Moves a fully written and synced ingest file into place under `digest`. The caller
    /// still holds the file open (and so locked): a cleaner cannot remove it meanwhile.
    fn install(&self, tmp: &Path, expected: Option<&Digest>, actual: Digest) -> Result<Digest> {
        if let Err(e) = check(expected, &actual) {
            let _ = fs::remove_file(tmp);
            return Err(e);
        }
        let dest = self.path(&actual);
        if let Err(e) = fs::rename(tmp, &dest) {
            let _ = fs::remove_file(tmp);
            return Err(Error::Io {
                path: dest,
                source: e,
            });
        }
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
        let file = self.file.as_ref().expect("file present until commit");
        file.sync_all().map_err(io_err(&self.tmp))?;
        let hasher = std::mem::take(&mut self.hasher);
        let installed = self
            .store
            .install(&self.tmp, expected, finish_digest(hasher));
        // Installed or removed: either way nothing is left for `Drop`; the lock goes last.
        let file = self.file.take();
        drop(file);
        Ok((installed?, self.written))
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
        let file = self.file.as_mut().expect("file present until commit");
        tokio::io::AsyncWriteExt::flush(file)
            .await
            .map_err(io_err(&self.tmp))?;
        file.sync_all().await.map_err(io_err(&self.tmp))?;
        let hasher = std::mem::take(&mut self.hasher);
        let installed = self
            .store
            .install(&self.tmp, expected, finish_digest(hasher));
        // Installed or removed: either way nothing is left for `Drop`; the lock goes last.
        let file = self.file.take();
        drop(file);
        Ok((installed?, self.written))
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

    fn ingest_names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir.join("ingest"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Issue 13: a killed writer's partial blob goes when the store is opened again; a live
    /// writer's (another handle on the same data dir) stays and still commits.
    #[test]
    fn issue_13_open_removes_stale_ingest_but_not_a_live_writers() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let mut live = store.writer().unwrap();
        live.write_all(b"still coming").unwrap();
        // What a SIGKILLed writer leaves: a file nothing holds.
        fs::write(dir.path().join("ingest/00000000deadbeef"), vec![7u8; 1000]).unwrap();
        assert_eq!(ingest_names(dir.path()).len(), 2);
        let files = store.ingest_files().unwrap();
        assert_eq!(files.iter().filter(|f| f.in_use).count(), 1, "{files:?}");

        let again = ContentStore::open(dir.path()).unwrap();
        let left = ingest_names(dir.path());
        assert_eq!(left.len(), 1, "{left:?}");
        assert_ne!(left[0], "00000000deadbeef");
        assert!(!again.remove_ingest(&left[0]).unwrap());

        let (d, _) = live.commit(None).unwrap();
        assert_eq!(again.read(&d).unwrap(), b"still coming");
        assert!(ingest_names(dir.path()).is_empty());
    }

    /// The same with the lock held by another process (`flock(1)`, when installed).
    #[test]
    fn issue_13_a_file_another_process_holds_survives_open() {
        use std::os::unix::process::CommandExt as _;
        use std::process::{Command, Stdio};
        let dir = tempfile::tempdir().unwrap();
        ContentStore::open(dir.path()).unwrap();
        let held = dir.path().join("ingest/00000000000000aa");
        fs::write(&held, b"partial").unwrap();
        let child = Command::new("flock")
            .arg("--exclusive")
            .arg(&held)
            .args(["sleep", "30"])
            .stdin(Stdio::null())
            .process_group(0)
            .spawn();
        let Ok(mut child) = child else {
            eprintln!("skipping: flock(1) is not installed");
            return;
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !partial::is_locked(&held) {
            assert!(
                std::time::Instant::now() < deadline,
                "flock(1) never locked"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let store = ContentStore::open(dir.path()).unwrap();
        assert!(held.exists(), "a file another process holds was removed");
        // flock(1) and the `sleep` that inherited its descriptor: the lock dies with both.
        let group = i32::try_from(child.id()).unwrap();
        // SAFETY: signals a process group this test started.
        unsafe { libc::kill(-group, libc::SIGKILL) };
        child.wait().unwrap();
        while partial::is_locked(&held) {
            assert!(
                std::time::Instant::now() < deadline,
                "the lock outlived flock(1)"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(store.remove_stale_ingest().unwrap(), (1, 7));
        assert!(!held.exists());
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
