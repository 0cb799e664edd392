//! The daemon's copy of a client's context (`<root>/sessions/<key>/context`), brought up to
//! date from the client's stat records: only new or changed files are asked for, entries gone
//! on the client are removed, and each entry gets the client's mode, owner and times so a COPY
//! reads the same tree as it would embedded.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, Write as _};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use kiln_proto::v1::FileStat;
use serde::{Deserialize, Serialize};

/// What the mirror holds for one entry: the client's stat record when it was synced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Stat {
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime_sec: i64,
    mtime_nsec: u32,
    link: String,
    /// A hard link to the file `link`.
    #[serde(default)]
    hardlink: bool,
}

impl Stat {
    fn of(f: &FileStat) -> Stat {
        Stat {
            mode: f.mode,
            uid: f.uid,
            gid: f.gid,
            size: f.size,
            mtime_sec: f.mtime_sec,
            mtime_nsec: f.mtime_nsec,
            link: f.link_target.clone(),
            hardlink: f.hardlink,
        }
    }

    fn kind(&self) -> u32 {
        self.mode & libc::S_IFMT
    }
    fn is_dir(&self) -> bool {
        self.kind() == libc::S_IFDIR
    }
    fn is_file(&self) -> bool {
        self.kind() == libc::S_IFREG
    }
    fn is_link(&self) -> bool {
        self.kind() == libc::S_IFLNK
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("context entry `{path}`: {why}")]
    Invalid { path: String, why: &'static str },
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> MirrorError {
    let what = what.into();
    move |source| MirrorError::Io { what, source }
}

/// A session's mirror, locked by its caller for the build's duration.
pub struct Mirror {
    session: PathBuf,
    index: BTreeMap<String, Stat>,
    /// The listing being applied, and which of its entries need their metadata set.
    next: BTreeMap<String, Stat>,
    touched: BTreeSet<String>,
}

const INDEX: &str = "index.json";

impl Mirror {
    /// Opens (creating) the mirror under `session`. Without a readable index (first use, or
    /// a sync that did not finish) the mirror is emptied: it is rebuilt from the client.
    pub fn open(session: &Path) -> Result<Mirror, MirrorError> {
        let ctx = session.join("context");
        let index = match std::fs::read(session.join(INDEX)) {
            Ok(bytes) => serde_json::from_slice(&bytes).ok(),
            Err(_) => None,
        };
        let index = match index {
            Some(i) => i,
            None => {
                match std::fs::remove_dir_all(&ctx) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err("emptying the session's mirror")(e)),
                }
                BTreeMap::new()
            }
        };
        std::fs::create_dir_all(&ctx).map_err(io_err("creating the session's mirror"))?;
        std::fs::create_dir_all(session.join("tmp")).map_err(io_err("creating the session"))?;
        Ok(Mirror {
            session: session.to_path_buf(),
            index,
            next: BTreeMap::new(),
            touched: BTreeSet::new(),
        })
    }

    pub fn context_dir(&self) -> PathBuf {
        self.session.join("context")
    }

    /// Takes the client's listing: removes what is gone, creates directories and links, and
    /// returns the files whose bytes the client must send.
    pub fn plan(&mut self, entries: &[FileStat]) -> Result<Vec<String>, MirrorError> {
        let mut next = BTreeMap::new();
        for e in entries {
            check_path(&e.path)?;
            let stat = Stat::of(e);
            if !(stat.is_dir() || stat.is_file() || stat.is_link()) {
                return Err(MirrorError::Invalid {
                    path: e.path.clone(),
                    why: "not a file, directory or symlink",
                });
            }
            // Every parent must be a directory of this listing: no entry is written through a
            // link, and none lands outside the mirror.
            if let Some((parent, _)) = e.path.rsplit_once('/')
                && !next.get(parent).is_some_and(Stat::is_dir)
            {
                return Err(MirrorError::Invalid {
                    path: e.path.clone(),
                    why: "its parent directory was not listed before it",
                });
            }
            // A hard link's file is a plain file listed before it.
            if stat.hardlink
                && !(stat.is_file()
                    && next
                        .get(&stat.link)
                        .is_some_and(|t: &Stat| t.is_file() && !t.hardlink))
            {
                return Err(MirrorError::Invalid {
                    path: e.path.clone(),
                    why: "a hard link to no file listed before it",
                });
            }
            if next.insert(e.path.clone(), stat).is_some() {
                return Err(MirrorError::Invalid {
                    path: e.path.clone(),
                    why: "listed twice",
                });
            }
        }
        let ctx = self.context_dir();
        let changed = self.index != next;
        if changed {
            // A sync that does not finish leaves no index: the next one starts afresh.
            match std::fs::remove_file(self.session.join(INDEX)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("removing the session index")(e)),
            }
        }
        // Gone, or of another kind now: removed deepest first.
        for (path, old) in self.index.iter().rev() {
            let keep = next.get(path).is_some_and(|n| n.kind() == old.kind());
            if keep {
                continue;
            }
            let abs = ctx.join(path);
            let r = match old.is_dir() {
                true => std::fs::remove_dir_all(&abs),
                false => std::fs::remove_file(&abs),
            };
            match r {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(format!("removing `{path}` from the mirror"))(e)),
            }
        }
        let mut wanted = Vec::new();
        for (path, stat) in &next {
            let old = self.index.get(path).filter(|o| o.kind() == stat.kind());
            if old == Some(stat) {
                continue;
            }
            self.touched.insert(path.clone());
            let abs = self.target(path)?;
            if stat.is_dir() {
                if old.is_none() {
                    std::fs::create_dir(&abs)
                        .map_err(io_err(format!("creating `{path}` in the mirror")))?;
                }
            } else if stat.is_link() {
                if old.is_some() {
                    std::fs::remove_file(&abs)
                        .map_err(io_err(format!("replacing `{path}` in the mirror")))?;
                }
                symlink(&stat.link, &abs)
                    .map_err(io_err(format!("creating `{path}` in the mirror")))?;
            } else if stat.hardlink {
                // Made in `finish`, once the file it links to is in place.
            } else if old.is_none_or(|o| {
                o.hardlink
                    || (o.size, o.mtime_sec, o.mtime_nsec)
                        != (stat.size, stat.mtime_sec, stat.mtime_nsec)
            }) {
                wanted.push(path.clone());
            }
        }
        self.next = next;
        Ok(wanted)
    }

    /// Where `rel` goes in the mirror, once its parent is known to be a directory reached
    /// without following a link (the project's safe resolver, which must not have moved it).
    fn target(&self, rel: &str) -> Result<PathBuf, MirrorError> {
        let ctx = self.context_dir();
        if let Some((parent, _)) = rel.rsplit_once('/') {
            let resolved = kiln_worker::resolve_in_root(&ctx, parent, true)
                .map_err(io_err(format!("resolving `{parent}` in the mirror")))?;
            let meta = std::fs::symlink_metadata(&resolved);
            if resolved != ctx.join(parent) || !meta.is_ok_and(|m| m.is_dir()) {
                return Err(MirrorError::Invalid {
                    path: rel.to_string(),
                    why: "its parent in the mirror is not a directory",
                });
            }
        }
        Ok(ctx.join(rel))
    }

    /// A temporary file for the bytes of `rel`, renamed into place by [`Mirror::commit_file`].
    pub fn start_file(&self, rel: &str) -> Result<(File, PathBuf), MirrorError> {
        if !self.next.get(rel).is_some_and(Stat::is_file) {
            return Err(MirrorError::Invalid {
                path: rel.to_string(),
                why: "bytes sent for a file that was not asked for",
            });
        }
        let tmp = self
            .session
            .join("tmp")
            .join(format!("{:016x}", rand::random::<u64>()));
        let f = File::create(&tmp).map_err(io_err("creating a file in the session"))?;
        Ok((f, tmp))
    }

    pub fn commit_file(&self, rel: &str, mut file: File, tmp: &Path) -> Result<(), MirrorError> {
        let stat = &self.next[rel];
        file.flush().map_err(io_err(format!("writing `{rel}`")))?;
        let written = file
            .metadata()
            .map_err(io_err(format!("writing `{rel}`")))?
            .len();
        if written != stat.size {
            return Err(MirrorError::Invalid {
                path: rel.to_string(),
                why: "the bytes sent are not the size listed",
            });
        }
        let abs = self.target(rel)?;
        std::fs::rename(tmp, &abs).map_err(io_err(format!("writing `{rel}` in the mirror")))?;
        Ok(())
    }

    /// Sets every touched entry's mode, owner and times (directories last, deepest first, as
    /// writing into them moved theirs), then records the listing.
    pub fn finish(&mut self) -> Result<(), MirrorError> {
        let ctx = self.context_dir();
        // Hard links, new or whose file was rewritten (a new inode), linked again.
        for (path, stat) in &self.next {
            if !stat.hardlink || !(self.touched.contains(path) || self.touched.contains(&stat.link))
            {
                continue;
            }
            let abs = self.target(path)?;
            match std::fs::remove_file(&abs) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(format!("replacing `{path}` in the mirror"))(e)),
            }
            let first = self.target(&stat.link)?;
            std::fs::hard_link(&first, &abs)
                .map_err(io_err(format!("linking `{path}` in the mirror")))?;
        }
        let touched_links: Vec<String> = self
            .next
            .iter()
            .filter(|(p, s)| {
                s.hardlink && self.touched.contains(&s.link) && !self.touched.contains(*p)
            })
            .map(|(p, _)| p.clone())
            .collect();
        self.touched.extend(touched_links);
        let mut dirs = Vec::new();
        for path in &self.touched {
            let stat = &self.next[path];
            if stat.is_dir() {
                continue;
            }
            apply_meta(&ctx.join(path), stat).map_err(io_err(format!("setting `{path}`")))?;
        }
        if !self.touched.is_empty() {
            // A write into a directory changes its time: every directory is set again.
            dirs.extend(self.next.iter().filter(|(_, s)| s.is_dir()));
            for (path, stat) in dirs.into_iter().rev() {
                apply_meta(&ctx.join(path), stat).map_err(io_err(format!("setting `{path}`")))?;
            }
        }
        if self.touched.is_empty() && self.index == self.next {
            return Ok(());
        }
        let bytes = serde_json::to_vec(&self.next).map_err(|e| MirrorError::Io {
            what: "encoding the session index".into(),
            source: io::Error::other(e),
        })?;
        let tmp = self.session.join("index.json.tmp");
        std::fs::write(&tmp, bytes).map_err(io_err("writing the session index"))?;
        std::fs::rename(&tmp, self.session.join(INDEX))
            .map_err(io_err("writing the session index"))?;
        self.index = std::mem::take(&mut self.next);
        self.touched.clear();
        Ok(())
    }
}

/// Refuses paths that are empty, absolute, or hold `.`, `..` or empty components.
fn check_path(path: &str) -> Result<(), MirrorError> {
    let bad = |why| MirrorError::Invalid {
        path: path.to_string(),
        why,
    };
    if path.is_empty() || path.starts_with('/') {
        return Err(bad("not a relative path"));
    }
    if path.contains('\0') {
        return Err(bad("holds a NUL byte"));
    }
    if path
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(bad("holds an empty, `.` or `..` component"));
    }
    Ok(())
}

fn apply_meta(abs: &Path, stat: &Stat) -> io::Result<()> {
    std::os::unix::fs::lchown(abs, Some(stat.uid), Some(stat.gid))?;
    if !stat.is_link() {
        std::fs::set_permissions(abs, std::fs::Permissions::from_mode(stat.mode & 0o7777))?;
    }
    let t = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: stat.mtime_sec,
            tv_nsec: stat.mtime_nsec.into(),
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: stat.mtime_sec,
            tv_nsec: stat.mtime_nsec.into(),
        },
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        abs,
        &t,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(path: &str, mode: u32, size: u64, mtime: i64) -> FileStat {
        FileStat {
            path: path.into(),
            mode,
            uid: 0,
            gid: 0,
            size,
            mtime_sec: mtime,
            mtime_nsec: 0,
            link_target: String::new(),
            hardlink: false,
        }
    }

    #[test]
    fn refuses_escaping_paths() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Mirror::open(dir.path()).unwrap();
        for p in ["../x", "/etc/passwd", "a//b", "a/./b", ""] {
            let e = m.plan(&[stat(p, libc::S_IFREG | 0o644, 1, 1)]);
            assert!(e.is_err(), "{p}");
        }
        // A child of a symlink, or of a directory never listed, is refused.
        let mut link = stat("l", libc::S_IFLNK | 0o777, 4, 1);
        link.link_target = "/etc".into();
        let e = m.plan(&[link, stat("l/shadow", libc::S_IFREG | 0o644, 1, 1)]);
        assert!(e.is_err());
        assert!(m.plan(&[stat("d/f", libc::S_IFREG | 0o644, 1, 1)]).is_err());
    }

    #[test]
    fn asks_only_for_changed_files_and_removes_gone_ones() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Mirror::open(dir.path()).unwrap();
        let listing = vec![
            stat("d", libc::S_IFDIR | 0o755, 0, 5),
            stat("d/a", libc::S_IFREG | 0o644, 1, 5),
            stat("b", libc::S_IFREG | 0o600, 2, 5),
        ];
        assert_eq!(m.plan(&listing).unwrap(), ["b", "d/a"]);
        for (p, data) in [("b", &b"hi"[..]), ("d/a", b"x")] {
            let (mut f, tmp) = m.start_file(p).unwrap();
            f.write_all(data).unwrap();
            m.commit_file(p, f, &tmp).unwrap();
        }
        m.finish().unwrap();
        let meta = std::fs::metadata(dir.path().join("context/b")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(rustix_mtime(&meta), 5);

        // Reopened: nothing changed, nothing asked.
        let mut m = Mirror::open(dir.path()).unwrap();
        assert!(m.plan(&listing).unwrap().is_empty());
        m.finish().unwrap();
        // One file edited, one gone.
        let mut m = Mirror::open(dir.path()).unwrap();
        let edited = vec![
            stat("d", libc::S_IFDIR | 0o755, 0, 5),
            stat("d/a", libc::S_IFREG | 0o644, 1, 9),
        ];
        assert_eq!(m.plan(&edited).unwrap(), ["d/a"]);
        assert!(!dir.path().join("context/b").exists());
        // Bytes of a file not asked for are refused.
        assert!(m.start_file("b").is_err());
    }

    #[test]
    fn hard_links_share_their_file_and_follow_its_rewrites() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let mut m = Mirror::open(dir.path()).unwrap();
        let link = |mtime| FileStat {
            link_target: "a".into(),
            hardlink: true,
            ..stat("b", libc::S_IFREG | 0o644, 1, mtime)
        };
        let listing = vec![stat("a", libc::S_IFREG | 0o644, 1, 5), link(5)];
        assert_eq!(m.plan(&listing).unwrap(), ["a"]);
        let write = |m: &Mirror, data: &[u8]| {
            let (mut f, tmp) = m.start_file("a").unwrap();
            f.write_all(data).unwrap();
            m.commit_file("a", f, &tmp).unwrap();
        };
        write(&m, b"1");
        m.finish().unwrap();
        let ino = |p: &str| {
            std::fs::metadata(dir.path().join("context").join(p))
                .unwrap()
                .ino()
        };
        assert_eq!(ino("a"), ino("b"));
        // The file rewritten (a new inode): the link follows.
        let listing = vec![stat("a", libc::S_IFREG | 0o644, 1, 9), link(9)];
        assert_eq!(m.plan(&listing).unwrap(), ["a"]);
        write(&m, b"2");
        m.finish().unwrap();
        assert_eq!(ino("a"), ino("b"));
        // A link to nothing listed before it is refused.
        let mut m = Mirror::open(dir.path()).unwrap();
        assert!(m.plan(&[link(9)]).is_err());
    }

    fn rustix_mtime(meta: &std::fs::Metadata) -> i64 {
        use std::os::unix::fs::MetadataExt;
        meta.mtime()
    }
}
