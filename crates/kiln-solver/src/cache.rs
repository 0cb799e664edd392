use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use kiln_oci::Digest;
use rustix::fs::FlockOperation;
use serde::{Serialize, de::DeserializeOwned};

use crate::{CacheStore, KeyLock};

/// How often a step waiting for another process's run of its key checks the lock again.
const LOCK_POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// Cache records as one small JSON file per key, written by temp file and rename so a killed
/// build leaves either the old record or the new one. A lookup is one open and read: the no-op
/// rebuild path stays a few system calls per step.
pub struct FileCacheStore<V> {
    dir: PathBuf,
    _value: PhantomData<fn() -> V>,
}

impl<V> FileCacheStore<V> {
    pub fn open(dir: impl Into<PathBuf>) -> std::io::Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(&dir)?;
        Ok(Self {
            dir,
            _value: PhantomData,
        })
    }

    fn path(&self, key: &Digest) -> PathBuf {
        self.dir.join(key.digest())
    }

    /// `.lock-<hex>`: a file that exists only while some process runs the key's step.
    fn lock_path(&self, key: &Digest) -> PathBuf {
        self.dir.join(format!(".lock-{}", key.digest()))
    }
}

/// A key's lock file, `flock`ed; removed (then unlocked) when dropped, so lock files do not pile
/// up. Whoever locked a file that was removed meanwhile sees it is no longer the one at the path
/// and opens the new one.
struct FileKeyLock {
    path: PathBuf,
    _file: fs::File,
}

impl Drop for FileKeyLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Waits (polling, so that a dropped waiter leaves nothing blocked) for the lock at `path`.
async fn lock_file(path: PathBuf) -> std::io::Result<FileKeyLock> {
    loop {
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                drop(file);
                tokio::time::sleep(LOCK_POLL).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        }
        // The holder before us removes the file as it unlocks; ours counts only if it is still
        // the file at the path.
        let held = rustix::fs::fstat(&file)?;
        match rustix::fs::stat(&path) {
            Ok(now) if now.st_dev == held.st_dev && now.st_ino == held.st_ino => {
                return Ok(FileKeyLock { path, _file: file });
            }
            Ok(_) | Err(rustix::io::Errno::NOENT) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

impl<V: Serialize + DeserializeOwned + Send + Sync> CacheStore<V> for FileCacheStore<V> {
    fn load(&self, key: &Digest) -> Option<V> {
        use std::io::Read;
        let mut file = fs::File::open(self.path(key)).ok()?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).ok()?;
        let value = serde_json::from_slice(&bytes).ok()?;
        // The record's mtime is its last use, for `kiln du` and `kiln prune --filter until=`.
        let _ = file.set_modified(std::time::SystemTime::now());
        Some(value)
    }

    fn save(&self, key: &Digest, value: &V) {
        // A failed save costs only a future cache miss, so it is not an error of the build.
        let Ok(bytes) = serde_json::to_vec(value) else {
            return;
        };
        let tmp = self
            .dir
            .join(format!(".tmp-{:016x}", rand::random::<u64>()));
        let ok = fs::File::create(&tmp)
            .and_then(|mut f| f.write_all(&bytes).and_then(|_| f.sync_all()))
            .and_then(|_| fs::rename(&tmp, self.path(key)));
        if ok.is_err() {
            let _ = fs::remove_file(&tmp);
        }
    }

    fn lock<'a>(&'a self, key: &'a Digest) -> BoxFuture<'a, Option<KeyLock>> {
        let path = self.lock_path(key);
        async move {
            // Without the lock the step still runs; it may run in two processes at once.
            let lock = lock_file(path).await.ok()?;
            Some(Box::new(lock) as KeyLock)
        }
        .boxed()
    }
}

/// The local store over records imported from elsewhere (`--cache-from`): a key is looked up
/// locally first, then in each imported map in order. New records go to the local store, and so
/// does an imported record when it is hit, so the next build on this data root finds it without
/// `--cache-from` (its layers still come lazily from where they were imported from).
pub struct LayeredCacheStore<V> {
    local: Arc<dyn CacheStore<V>>,
    imported: Vec<HashMap<Digest, V>>,
}

impl<V> LayeredCacheStore<V> {
    pub fn new(local: Arc<dyn CacheStore<V>>, imported: Vec<HashMap<Digest, V>>) -> Self {
        Self { local, imported }
    }
}

impl<V: Clone + Send + Sync> CacheStore<V> for LayeredCacheStore<V> {
    fn load(&self, key: &Digest) -> Option<V> {
        if let Some(v) = self.local.load(key) {
            return Some(v);
        }
        let v = self.imported.iter().find_map(|m| m.get(key).cloned())?;
        self.local.save(key, &v);
        Some(v)
    }

    fn save(&self, key: &Digest, value: &V) {
        self.local.save(key, value)
    }

    fn lock<'a>(&'a self, key: &'a Digest) -> BoxFuture<'a, Option<KeyLock>> {
        self.local.lock(key)
    }
}
