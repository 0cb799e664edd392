//! Cache mount directories (`RUN --mount=type=cache`) under `<root>/cache-mounts/`: creating
//! (and seeding from `from`/`source`), locking for a step, recording their use, listing and
//! removing them for `kiln du` / `kiln prune`.
//!
//! Every user of a cache dir holds an `flock` on it while its step runs: shared for
//! `sharing=shared`, exclusive for `locked` and `private`. Removal takes the exclusive lock
//! without waiting, so a dir a step is using is never removed; a step that locked a dir which
//! was removed meanwhile notices (the path no longer names the locked dir) and starts again.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use kiln_llb::{CacheMount, CacheSharing};
use kiln_progress::Vertex;
use kiln_solver::Solved;
use rustix::fs::FlockOperation;
use serde::{Deserialize, Serialize};

use crate::fsutil::{self, Owner};
use crate::{Error, LayerRef, LlbWorker, Result, Value, io};

/// The directory holding every cache mount of a data root.
pub fn cache_mounts_dir(root: &Path) -> PathBuf {
    root.join("cache-mounts")
}

/// What `<name>.json` beside a cache dir records: what made it. Its mtime is the last use.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Meta {
    id: String,
    /// The `from` input's cache key and `source` path, for a seeded cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    from: Option<String>,
}

/// One cache mount dir, as `kiln du` lists it.
#[derive(Debug, Clone)]
pub struct CacheMountEntry {
    /// The dir's name under `cache-mounts/` (stable: what `--filter id=` matches too).
    pub name: String,
    /// The mount's `id` (the target path when none was given), when recorded.
    pub id: String,
    pub path: PathBuf,
    pub last_used: Option<SystemTime>,
    /// Whether a step holds it right now.
    pub in_use: bool,
}

/// Every cache mount dir under `root` (the data root).
pub fn list(root: &Path) -> std::io::Result<Vec<CacheMountEntry>> {
    let dir = cache_mounts_dir(root);
    let mut out = Vec::new();
    let rd = match fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for e in rd {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !e.file_type()?.is_dir() {
            continue;
        }
        let meta_path = dir.join(format!("{name}.json"));
        let meta: Option<Meta> = fs::read(&meta_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let last_used = fs::metadata(&meta_path)
            .or_else(|_| e.metadata())
            .and_then(|m| m.modified())
            .ok();
        let in_use = match fs::File::open(e.path()) {
            Ok(f) => rustix::fs::flock(&f, FlockOperation::NonBlockingLockExclusive).is_err(),
            Err(_) => false,
        };
        out.push(CacheMountEntry {
            id: meta.map(|m| m.id).unwrap_or_else(|| name.clone()),
            name,
            path: e.path(),
            last_used,
            in_use,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Removes a cache mount dir unless a step holds it; returns whether it was removed.
pub fn remove(entry: &CacheMountEntry) -> std::io::Result<bool> {
    let file = fs::File::open(&entry.path)?;
    if rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive).is_err() {
        return Ok(false);
    }
    let parent = entry.path.parent().unwrap_or(Path::new("/"));
    // Renamed away while locked: a step that opens the path afterwards creates a fresh dir.
    let trash = parent.join(format!(".trash-{:016x}", rand::random::<u64>()));
    fs::rename(&entry.path, &trash)?;
    let _ = fs::remove_file(parent.join(format!("{}.json", entry.name)));
    drop(file);
    fs::remove_dir_all(&trash)?;
    Ok(true)
}

/// Removes what a killed `remove` left (`.trash-*`, `.new-*`); only when no other kiln runs.
pub fn remove_stale(root: &Path) -> std::io::Result<()> {
    let Ok(rd) = fs::read_dir(cache_mounts_dir(root)) else {
        return Ok(());
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(".trash-") || name.starts_with(".new-") {
            fs::remove_dir_all(e.path())?;
        }
    }
    Ok(())
}

/// Holds a cache mount's lock until dropped.
pub(crate) struct CacheGuard(#[allow(dead_code)] Option<fs::File>);

pub(crate) fn make_cache_dir(path: &Path, c: &CacheMount) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir_all(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(c.mode))?;
    std::os::unix::fs::chown(path, Some(c.uid), Some(c.gid))
}

/// A cache id as a single file name: anything but `[A-Za-z0-9._-]` becomes `_`, and a hash
/// of `identity` (the id, plus the seed for a seeded cache) keeps distinct caches apart.
fn dir_name(id: &str, identity: &str) -> String {
    let readable: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    let hash = kiln_oci::sha256_hex(identity.as_bytes());
    format!("{}-{}", readable.trim_start_matches('.'), &hash[..12])
}

/// Whether `path` still names the directory `file` has open.
pub(crate) fn still_named(file: &fs::File, path: &Path) -> bool {
    match (file.metadata(), fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// A cache mount's identity: its id, and for a seeded cache the seed's cache key and `source`
/// (as BuildKit: the same id with another seed is another cache). Equal on every data root for
/// the same Dockerfile, so an exported cache mount is found again by it (cache_import.rs).
pub fn identity(c: &CacheMount, seed_key: Option<&kiln_oci::Digest>) -> String {
    match seed_key {
        Some(key) => format!("{}:{key}:{}", c.id, c.source),
        None => c.id.clone(),
    }
}

/// The directory a cache mount with this identity has under the data root `root`.
pub fn dir_of(root: &Path, c: &CacheMount, identity: &str) -> PathBuf {
    cache_mounts_dir(root).join(dir_name(&c.id, identity))
}

/// Waits for a shared lock on a cache dir, as a `sharing=shared` step holds it: no `locked`
/// or `private` user is writing while the lock is held.
pub fn lock_shared(dir: &Path) -> std::io::Result<fs::File> {
    let file = fs::File::open(dir)?;
    rustix::fs::flock(&file, FlockOperation::LockShared)?;
    Ok(file)
}

impl LlbWorker {
    fn cache_root(&self) -> PathBuf {
        cache_mounts_dir(self.scratch.parent().unwrap_or(&self.scratch))
    }

    /// The directory to mount for a cache mount, created (and seeded from `seed`) on first use,
    /// and the lock guard to hold while the step runs. `locked` waits for the lock; `private`
    /// falls back to a temporary dir under the step dir when another step holds it; `shared`
    /// shares the lock with other shared users.
    pub(crate) async fn cache_dir(
        &self,
        c: &CacheMount,
        seed: Option<&Solved<Value>>,
        step_dir: &Path,
        progress: &Vertex,
    ) -> Result<(PathBuf, CacheGuard)> {
        let root = self.cache_root();
        // As BuildKit: a seeded cache is keyed by its id and its seed, so a changed `from`
        // starts a new cache rather than mixing into the old one.
        let from = seed.map(|s| format!("{}:{}", s.cache_key, c.source));
        let identity = identity(c, seed.map(|s| &s.cache_key));
        let name = dir_name(&c.id, &identity);
        let dir = root.join(&name);
        let imported = self.imported_mount(&identity);
        let mode = match c.sharing {
            CacheSharing::Shared => FlockOperation::LockShared,
            CacheSharing::Locked => FlockOperation::LockExclusive,
            CacheSharing::Private => FlockOperation::NonBlockingLockExclusive,
        };
        // A few rounds at most: each retry means `kiln prune` removed the dir meanwhile.
        for _ in 0..8 {
            if !dir.exists() {
                self.create_cache_dir(&root, &dir, c, seed, imported, progress)
                    .await?;
            } else if let Some(layer) = imported {
                self.fill_empty_cache_dir(&root, &dir, c, layer, progress)
                    .await?;
            }
            let file = match fs::File::open(&dir) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(format!("opening `{}`", dir.display()))(e)),
            };
            let locked =
                tokio::task::spawn_blocking(move || rustix::fs::flock(&file, mode).map(|()| file))
                    .await?;
            let file = match locked {
                Ok(file) => file,
                Err(e)
                    if c.sharing == CacheSharing::Private && e == rustix::io::Errno::WOULDBLOCK =>
                {
                    let tmp = step_dir.join("private-cache");
                    make_cache_dir(&tmp, c).map_err(io(format!("creating `{}`", tmp.display())))?;
                    return Ok((mount_path(&tmp, c)?, CacheGuard(None)));
                }
                Err(e) => {
                    return Err(Error::Io {
                        what: format!("locking `{}`", dir.display()),
                        source: e.into(),
                    });
                }
            };
            if !still_named(&file, &dir) {
                continue;
            }
            record_use(&root, &name, &c.id, from.as_deref());
            return Ok((mount_path(&dir, c)?, CacheGuard(Some(file))));
        }
        Err(Error::Io {
            what: format!("locking `{}`", dir.display()),
            source: std::io::Error::other("the cache dir kept being removed"),
        })
    }

    /// Creates the cache dir: the contents of an imported cache mount (`--cache-from`), else
    /// empty with the mount's mode and owner, or a copy of `source` in the seed. Built aside
    /// and renamed into place, so a half-made dir is never used.
    async fn create_cache_dir(
        &self,
        root: &Path,
        dir: &Path,
        c: &CacheMount,
        seed: Option<&Solved<Value>>,
        imported: Option<&LayerRef>,
        progress: &Vertex,
    ) -> Result<()> {
        fs::create_dir_all(root).map_err(io(format!("creating `{}`", root.display())))?;
        let tmp = root.join(format!(".new-{:016x}", rand::random::<u64>()));
        let filled = match imported {
            Some(layer) => {
                self.try_unpack_imported_mount(&tmp, c, layer, progress)
                    .await
            }
            None => false,
        };
        let made = match (filled, seed) {
            (true, _) => Ok(()),
            (false, None) => {
                make_cache_dir(&tmp, c).map_err(io(format!("creating `{}`", tmp.display())))
            }
            (false, Some(seed)) => self.seed_cache_dir(&tmp, c, seed, progress).await,
        };
        if let Err(e) = made {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
        // Another step may have created it meanwhile; its dir wins.
        if fs::rename(&tmp, dir).is_err() {
            let _ = fs::remove_dir_all(&tmp);
        }
        Ok(())
    }

    async fn seed_cache_dir(
        &self,
        tmp: &Path,
        c: &CacheMount,
        seed: &Solved<Value>,
        progress: &Vertex,
    ) -> Result<()> {
        progress.status(&format!("seeding cache mount {}", c.target));
        let (src_root, matcher, _mounted) = match &seed.value {
            Value::Context { name } => {
                let ctx = self.context(name)?;
                (ctx.dir.clone(), ctx.matcher.clone(), None)
            }
            Value::Rootfs { layers } => {
                let s = self.prepare(layers, progress).await?;
                (s.rootfs(), None, Some(s))
            }
        };
        let source = fsutil::clean_rel(&c.source);
        let source = if source.is_empty() {
            ".".into()
        } else {
            source
        };
        let tmp2 = tmp.to_path_buf();
        tokio::task::spawn_blocking(move || {
            let m = matcher.as_deref();
            let selected = fsutil::expand_sources(&src_root, std::slice::from_ref(&source), m)?;
            fs::create_dir_all(&tmp2).map_err(|e| fsutil::SourceError::Io {
                path: tmp2.clone(),
                source: e,
            })?;
            fsutil::copy(
                &selected,
                m,
                fsutil::Filter::default(),
                &tmp2,
                "/",
                Owner::Keep,
                None,
            )?;
            // The cache root takes the seed dir's mode and owner, as the mounted dir would.
            if let [one] = selected.as_slice()
                && let Ok(meta) = one.metadata()
                && meta.is_dir()
            {
                use std::os::unix::fs::PermissionsExt;
                let set = fs::set_permissions(&tmp2, fs::Permissions::from_mode(meta.mode()))
                    .and_then(|()| {
                        std::os::unix::fs::chown(&tmp2, Some(meta.uid()), Some(meta.gid()))
                    });
                set.map_err(|e| fsutil::SourceError::Io {
                    path: tmp2.clone(),
                    source: e,
                })?;
            }
            Ok(())
        })
        .await?
        .map_err(Error::Source)
    }
}

/// The path to mount: the cache dir, or without a seed its `source` subdirectory (created with
/// the mount's mode and owner), as BuildKit mounts a cache's sub path.
fn mount_path(dir: &Path, c: &CacheMount) -> Result<PathBuf> {
    if c.input.is_some() || c.source.trim_matches('/').is_empty() {
        return Ok(dir.to_path_buf());
    }
    fsutil::mkdir_all(dir, &c.source, c.mode, (c.uid, c.gid))
        .map_err(io(format!("creating `{}` in a cache mount", c.source)))
}

/// Writes the cache dir's `<name>.json` (its mtime is the last use); failures only cost
/// `kiln du` a detail, so they are ignored.
fn record_use(root: &Path, name: &str, id: &str, from: Option<&str>) {
    let meta = Meta {
        id: id.to_string(),
        from: from.map(str::to_string),
    };
    let path = root.join(format!("{name}.json"));
    if let Ok(bytes) = serde_json::to_vec(&meta) {
        let tmp = root.join(format!(".meta-{:016x}", rand::random::<u64>()));
        if fs::write(&tmp, bytes)
            .and_then(|()| fs::rename(&tmp, &path))
            .is_err()
        {
            let _ = fs::remove_file(&tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_names_are_single_components_and_distinct() {
        let a = dir_name("/root/.cache", "/root/.cache");
        assert!(!a.contains('/'), "{a}");
        assert!(a.starts_with("_root_.cache-"), "{a}");
        assert_ne!(
            dir_name("x", "x"),
            dir_name("x", "x:sha256:00:/src"),
            "a seeded cache is not the plain one"
        );
    }

    #[test]
    fn identity_names_the_seed_and_dir_of_follows_it() {
        let mut c = CacheMount {
            id: "pip".into(),
            target: "/root/.cache/pip".into(),
            readonly: false,
            sharing: CacheSharing::Shared,
            mode: 0o755,
            uid: 0,
            gid: 0,
            input: None,
            source: String::new(),
        };
        assert_eq!(identity(&c, None), "pip");
        let key = kiln_oci::sha256(b"seed");
        c.input = Some(1);
        c.source = "/src".into();
        let seeded = identity(&c, Some(&key));
        assert_eq!(seeded, format!("pip:{key}:/src"));
        let root = Path::new("/r");
        assert_ne!(dir_of(root, &c, "pip"), dir_of(root, &c, &seeded));
        let dir = dir_of(root, &c, &seeded);
        assert!(
            dir.to_string_lossy().starts_with("/r/cache-mounts/pip-"),
            "{}",
            dir.display()
        );
    }

    #[test]
    fn remove_skips_a_locked_dir_and_list_reports_it() {
        let root = tempfile::tempdir().unwrap();
        let dir = cache_mounts_dir(root.path()).join("c-1");
        fs::create_dir_all(dir.join("sub")).unwrap();
        record_use(&cache_mounts_dir(root.path()), "c-1", "/c", None);
        let held = fs::File::open(&dir).unwrap();
        rustix::fs::flock(&held, FlockOperation::LockShared).unwrap();
        let entries = list(root.path()).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].id, "/c");
        assert!(entries[0].in_use);
        assert!(!remove(&entries[0]).unwrap());
        assert!(dir.exists());
        drop(held);
        let entries = list(root.path()).unwrap();
        assert!(!entries[0].in_use);
        assert!(remove(&entries[0]).unwrap());
        assert!(!dir.exists());
        assert!(list(root.path()).unwrap().is_empty());
    }
}
