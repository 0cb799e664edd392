//! Partial files that a writer holds under an exclusive `flock` for as long as it writes them,
//! so that another process can tell a live writer's file (locked) from one a killed writer left
//! behind (unlocked) and remove only the latter.
//!
//! The lock is taken right after the file is created with `O_EXCL`. A cleaner that slips into
//! that window locks the file first and unlinks it; the writer's blocking `flock` then returns
//! and it sees the file unlinked (`st_nlink == 0`), so it starts over with a new name. A
//! cleaner unlinks only while it holds the lock and only the inode it locked (checked against
//! the path again), so a file renamed into place by its writer meanwhile is never touched.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rustix::fs::FlockOperation;

/// How many fresh names a writer tries when cleaners keep removing its new file.
const CREATE_ATTEMPTS: usize = 16;

/// Creates a new file `dir/<prefix><random>` and locks it exclusively; the lock lasts as long
/// as the returned file is open (its last descriptor closed, or the process dead).
pub fn create_locked(dir: &Path, prefix: &str) -> io::Result<(PathBuf, File)> {
    for _ in 0..CREATE_ATTEMPTS {
        let path = dir.join(format!("{prefix}{:016x}", rand::random::<u64>()));
        let file = match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o666)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        };
        // Blocking: a cleaner holds the lock only while it unlinks.
        rustix::fs::flock(&file, FlockOperation::LockExclusive)?;
        if rustix::fs::fstat(&file)?.st_nlink > 0 {
            return Ok((path, file));
        }
    }
    Err(io::Error::other(format!(
        "could not create a file in `{}`: each new file was removed at once",
        dir.display()
    )))
}

/// Removes `path` when no live writer holds it (its lock is free). Returns whether it did;
/// a locked file, a directory or a file already gone is left alone.
pub fn remove_if_stale(path: &Path) -> io::Result<bool> {
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        // A symlink (`O_NOFOLLOW`) is no writer's file; anything else unreadable is an error.
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Ok(false),
        Err(e) => return Err(e),
    };
    let locked = file.metadata()?;
    if !locked.is_file() {
        return Ok(false);
    }
    match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => return Ok(false),
        Err(e) => return Err(e.into()),
    }
    // Still the inode we locked under that name (not renamed away and replaced)?
    match fs::symlink_metadata(path) {
        Ok(now) if now.dev() == locked.dev() && now.ino() == locked.ino() => {}
        Ok(_) => return Ok(false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
    // The lock goes with `file`, after the unlink.
}

/// Whether a live writer holds `path` (an absent file is not held).
pub fn is_locked(path: &Path) -> bool {
    let Ok(file) = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    else {
        return false;
    };
    // A shared probe: it never fails for lack of a writer, and it is released at once.
    matches!(
        rustix::fs::flock(&file, FlockOperation::NonBlockingLockShared),
        Err(rustix::io::Errno::WOULDBLOCK)
    )
}

/// A partial file found in a directory.
#[derive(Debug, Clone)]
pub struct PartialFile {
    pub name: String,
    pub path: PathBuf,
    /// Bytes written so far.
    pub size: u64,
    pub modified: Option<SystemTime>,
    /// A live writer holds it: it must not be removed.
    pub in_use: bool,
}

/// The regular files in `dir` whose names start with `prefix`, sorted by name.
pub fn list(dir: &Path, prefix: &str) -> io::Result<Vec<PartialFile>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with(prefix) {
            continue;
        }
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        let path = entry.path();
        out.push(PartialFile {
            in_use: is_locked(&path),
            name,
            size: meta.len(),
            modified: meta.modified().ok(),
            path,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Removes every file in `dir` starting with `prefix` that no live writer holds; returns how
/// many files and bytes went.
pub fn remove_stale(dir: &Path, prefix: &str) -> io::Result<(usize, u64)> {
    let mut removed = (0, 0);
    for f in list(dir, prefix)? {
        if !f.in_use && remove_if_stale(&f.path)? {
            removed.0 += 1;
            removed.1 += f.size;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_goes_and_locked_stays() {
        let dir = tempfile::tempdir().unwrap();
        let (live, live_file) = create_locked(dir.path(), "p-").unwrap();
        // Left by a dead writer: nothing holds it.
        let stale = dir.path().join("p-stale");
        fs::write(&stale, b"half").unwrap();
        let other = dir.path().join("q-other");
        fs::write(&other, b"x").unwrap();

        let found = list(dir.path(), "p-").unwrap();
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found.iter().any(|f| f.path == live && f.in_use));
        assert!(found.iter().any(|f| f.path == stale && !f.in_use));

        assert_eq!(remove_stale(dir.path(), "p-").unwrap(), (1, 4));
        assert!(live.exists() && !stale.exists() && other.exists());
        assert!(!remove_if_stale(&live).unwrap());

        drop(live_file);
        assert!(!is_locked(&live));
        assert!(remove_if_stale(&live).unwrap());
        assert!(!live.exists());
    }

    #[test]
    fn a_file_renamed_by_its_writer_is_not_removed() {
        let dir = tempfile::tempdir().unwrap();
        let (tmp, file) = create_locked(dir.path(), "p-").unwrap();
        let done = dir.path().join("done");
        fs::rename(&tmp, &done).unwrap();
        drop(file);
        assert!(!remove_if_stale(&tmp).unwrap());
        assert!(done.exists());
    }
}
