//! Remembered content digests of context files, so an unchanged context costs a stat walk rather
//! than reading and hashing every byte again.
//!
//! A file's metadata is only a hint: an entry is used when the device, inode, size, mode, mtime
//! *and* ctime all match what was seen when the file was hashed. Any write changes ctime, which no
//! user can set back, so an edited file is always read again and its content decides the key (a
//! mere `touch` rehashes the file but changes no key). Files changed within the last seconds are
//! not remembered: timestamps are coarser than writes, so a write right after hashing could leave
//! the metadata unchanged (git's "racily clean" problem).
//!
//! The table is a hint cache, not a record: a damaged or missing file means an empty table, and
//! concurrent builds simply overwrite each other's saves.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use sha2::{Digest as _, Sha256};

const MAGIC: &[u8; 8] = b"kilnfh1\n";
/// Changes newer than this (in nanoseconds) are not remembered; see the module comment.
const RACY_NANOS: i128 = 2_000_000_000;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Stat {
    dev: u64,
    ino: u64,
    size: u64,
    mode: u32,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Stat {
    fn of(meta: &fs::Metadata) -> Stat {
        Stat {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mode: meta.mode(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            ctime_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
        }
    }
}

#[derive(Clone, Copy)]
struct Entry {
    stat: Stat,
    digest: [u8; 32],
}

/// Digests of regular files keyed by absolute path, kept in one file of the data directory.
pub struct FileHashes {
    path: PathBuf,
    table: OnceLock<Mutex<Table>>,
}

#[derive(Default)]
struct Table {
    entries: HashMap<PathBuf, Entry>,
    dirty: bool,
}

impl FileHashes {
    /// A table stored at `path`, read on first use.
    pub fn new(path: PathBuf) -> Self {
        FileHashes {
            path,
            table: OnceLock::new(),
        }
    }

    fn table(&self) -> &Mutex<Table> {
        self.table.get_or_init(|| {
            Mutex::new(Table {
                entries: load(&self.path).unwrap_or_default(),
                dirty: false,
            })
        })
    }

    /// The SHA-256 of the regular file at `abs`, whose metadata the caller just read; `open`
    /// opens it when its bytes must be read.
    pub fn digest(
        &self,
        abs: &Path,
        meta: &fs::Metadata,
        open: impl FnOnce() -> io::Result<fs::File>,
    ) -> io::Result<[u8; 32]> {
        let stat = Stat::of(meta);
        if let Some(e) = self.table().lock().entries.get(abs)
            && e.stat == stat
        {
            return Ok(e.digest);
        }
        let (bytes, after) = digest_and_stat(open()?)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        // A file written while it was read must not be remembered.
        if after == stat && now - stat.ctime_ns.max(stat.mtime_ns) > RACY_NANOS {
            let mut t = self.table().lock();
            t.entries.insert(
                abs.to_path_buf(),
                Entry {
                    stat,
                    digest: bytes,
                },
            );
            t.dirty = true;
        }
        Ok(bytes)
    }

    /// Writes the table back when it changed (atomically: a temp file renamed into place).
    pub fn save(&self) -> io::Result<()> {
        let Some(table) = self.table.get() else {
            return Ok(());
        };
        let mut t = table.lock();
        if !t.dirty {
            return Ok(());
        }
        // Entries for files that are gone would accumulate forever otherwise.
        t.entries.retain(|p, _| p.exists());
        let mut buf = Vec::with_capacity(MAGIC.len() + t.entries.len() * 120);
        buf.extend_from_slice(MAGIC);
        for (path, e) in &t.entries {
            let p = path.as_os_str().as_bytes();
            buf.extend_from_slice(&(p.len() as u32).to_le_bytes());
            buf.extend_from_slice(p);
            buf.extend_from_slice(&e.stat.dev.to_le_bytes());
            buf.extend_from_slice(&e.stat.ino.to_le_bytes());
            buf.extend_from_slice(&e.stat.size.to_le_bytes());
            buf.extend_from_slice(&e.stat.mode.to_le_bytes());
            buf.extend_from_slice(&e.stat.mtime_ns.to_le_bytes());
            buf.extend_from_slice(&e.stat.ctime_ns.to_le_bytes());
            buf.extend_from_slice(&e.digest);
        }
        if let Some(dir) = self.path.parent() {
            fs::create_dir_all(dir)?;
        }
        let tmp = self
            .path
            .with_extension(format!("tmp{}", std::process::id()));
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&buf)?;
        drop(f);
        fs::rename(&tmp, &self.path)?;
        t.dirty = false;
        Ok(())
    }
}

/// The SHA-256 of a file's bytes.
pub(crate) fn file_digest(file: fs::File) -> io::Result<[u8; 32]> {
    digest_and_stat(file).map(|(d, _)| d)
}

/// The file's digest and its metadata once read.
fn digest_and_stat(mut file: fs::File) -> io::Result<([u8; 32], Stat)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((hasher.finalize().into(), Stat::of(&file.metadata()?)))
}

/// Reads a saved table; `None` when missing or damaged (an empty table is always safe).
fn load(path: &Path) -> Option<HashMap<PathBuf, Entry>> {
    let mut data = Vec::new();
    fs::File::open(path).ok()?.read_to_end(&mut data).ok()?;
    let mut rest = data.strip_prefix(MAGIC)?;
    let mut take = |n: usize| -> Option<&[u8]> {
        let (head, tail) = rest.split_at_checked(n)?;
        rest = tail;
        Some(head)
    };
    let mut entries = HashMap::new();
    while let Some(len) = take(4) {
        let len = u32::from_le_bytes(len.try_into().ok()?) as usize;
        let path = PathBuf::from(std::ffi::OsStr::from_bytes(take(len)?));
        let u64_at = |b: &[u8]| b.try_into().ok().map(u64::from_le_bytes);
        let dev = u64_at(take(8)?)?;
        let ino = u64_at(take(8)?)?;
        let size = u64_at(take(8)?)?;
        let mode = u32::from_le_bytes(take(4)?.try_into().ok()?);
        let mtime_ns = i128::from_le_bytes(take(16)?.try_into().ok()?);
        let ctime_ns = i128::from_le_bytes(take(16)?.try_into().ok()?);
        let digest: [u8; 32] = take(32)?.try_into().ok()?;
        entries.insert(
            path,
            Entry {
                stat: Stat {
                    dev,
                    ino,
                    size,
                    mode,
                    mtime_ns,
                    ctime_ns,
                },
                digest,
            },
        );
    }
    Some(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(data: &[u8]) -> [u8; 32] {
        Sha256::digest(data).into()
    }

    /// Makes a file look old enough to be remembered.
    fn age(path: &Path) {
        let old = SystemTime::now() - std::time::Duration::from_secs(60);
        fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(old)
            .unwrap();
    }

    #[test]
    fn remembers_unchanged_files_and_rereads_edited_ones() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a");
        fs::write(&file, b"one").unwrap();
        age(&file);
        let table = dir.path().join("hashes");
        let h = FileHashes::new(table.clone());
        let meta = fs::metadata(&file).unwrap();
        assert_eq!(
            h.digest(&file, &meta, || fs::File::open(&file)).unwrap(),
            sha(b"one")
        );
        // ctime is "now" after set_modified: too recent to remember.
        h.save().unwrap();
        assert!(!table.exists());

        // An entry whose stat matches is served from the table without reading the file: prove
        // it by planting a wrong digest for the file's current metadata.
        let stat = Stat::of(&meta);
        h.table().lock().entries.insert(
            file.clone(),
            Entry {
                stat,
                digest: sha(b"planted"),
            },
        );
        h.table().lock().dirty = true;
        assert_eq!(
            h.digest(&file, &meta, || fs::File::open(&file)).unwrap(),
            sha(b"planted")
        );
        h.save().unwrap();
        let reopened = FileHashes::new(table.clone());
        assert_eq!(
            reopened
                .digest(&file, &meta, || fs::File::open(&file))
                .unwrap(),
            sha(b"planted")
        );

        // Any write changes ctime: the content is read again, even with size and mtime kept.
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::write(&file, b"two").unwrap();
        age(&file);
        let meta2 = fs::metadata(&file).unwrap();
        assert_eq!(meta2.size(), meta.size());
        assert_eq!(
            reopened
                .digest(&file, &meta2, || fs::File::open(&file))
                .unwrap(),
            sha(b"two")
        );
    }

    #[test]
    fn a_damaged_table_is_an_empty_one() {
        let dir = tempfile::tempdir().unwrap();
        let table = dir.path().join("hashes");
        fs::write(&table, b"kilnfh1\n\xff\xff\xff\xffgarbage").unwrap();
        assert!(load(&table).is_none());
        let file = dir.path().join("f");
        fs::write(&file, b"x").unwrap();
        let h = FileHashes::new(table);
        assert_eq!(
            h.digest(&file, &fs::metadata(&file).unwrap(), || fs::File::open(
                &file
            ))
            .unwrap(),
            sha(b"x")
        );
    }
}
