//! Extraction of a (possibly hostile) layer tarball into an overlay-format directory.
//!
//! Every parent directory is opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` from
//! the layer root and entries are created with `*at` calls relative to it, so no entry can land
//! outside the layer or be written through a symlink, whatever earlier entries planted. OCI
//! whiteouts become overlay whiteouts on the way in.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{
    AtFlags, CWD, FileType, Gid, Mode, OFlags, ResolveFlags, Timespec, Timestamps, Uid, XattrFlags,
};
use rustix::io::Errno;
use tar::EntryType;

use crate::xattr::{self, OPAQUE};
use crate::{Error, Result};

pub(crate) const WHITEOUT_PREFIX: &str = ".wh.";
pub(crate) const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// Extracts every entry of the tar stream `reader` into the existing empty directory `root`.
/// Reads only up to the end-of-archive marker; the caller drains what follows.
pub(crate) fn apply(reader: impl Read, root: &Path) -> Result<()> {
    apply_with(reader, root, true)
}

/// [`apply`], keeping the owners of the archive's entries only when `owners` is set (an
/// unprivileged process cannot chown).
pub(crate) fn apply_with(reader: impl Read, root: &Path, owners: bool) -> Result<()> {
    let root_fd = rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::Io {
        path: root.to_path_buf(),
        source: e.into(),
    })?;
    let mut ex = Extractor {
        root,
        root_fd,
        dir_times: Vec::new(),
        owners,
    };
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().map_err(read_tar)? {
        ex.entry(entry.map_err(read_tar)?)?;
    }
    ex.finish();
    Ok(())
}

fn read_tar(source: io::Error) -> Error {
    Error::ReadTar { source }
}

struct Extractor<'a> {
    root: &'a Path,
    root_fd: OwnedFd,
    /// Directory mtimes are applied last: creating children would bump them again.
    dir_times: Vec<(Vec<OsString>, Timestamps)>,
    owners: bool,
}

/// The metadata an entry's header (and PAX records) ask for.
struct Meta {
    uid: Uid,
    gid: Gid,
    mode: Mode,
    times: Timestamps,
    xattrs: Vec<(String, Vec<u8>)>,
    /// Whether to chown to `uid`/`gid`.
    chown: bool,
}

impl Extractor<'_> {
    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<()> {
        let shown = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let bad = |reason: &str| Error::BadEntry {
            path: shown.clone(),
            reason: reason.to_string(),
        };
        let comps = clean_path(&entry.path_bytes()).map_err(bad)?;
        let kind = entry.header().entry_type();
        if kind == EntryType::XGlobalHeader {
            // Global PAX records describe the archive, not a file.
            return Ok(());
        }
        let mut meta = read_meta(&mut entry).map_err(|reason| bad(&reason))?;
        meta.chown = self.owners;
        let ctx = |source: io::Error| Error::Extract {
            path: shown.clone(),
            source,
        };

        let Some((name, parent_comps)) = comps.split_last() else {
            if !kind.is_dir() {
                return Err(bad("the layer root can only be a directory"));
            }
            set_fd_meta(&self.root_fd, &meta).map_err(ctx)?;
            self.dir_times.push((Vec::new(), meta.times));
            return Ok(());
        };

        if let Some(hidden) = name.as_bytes().strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            let parent = self
                .dir(parent_comps, true)
                .map_err(|e| self.walk_err(e, &shown))?;
            if name == OPAQUE_MARKER {
                let dir: PathBuf = self.root.join(parent_comps.iter().collect::<PathBuf>());
                return xattr::set(&dir, OPAQUE, b"y").map_err(ctx);
            }
            if hidden.starts_with(WHITEOUT_PREFIX.as_bytes()) {
                // Other `.wh..wh.` names are AUFS bookkeeping with no meaning here.
                return Ok(());
            }
            if hidden.is_empty() || hidden == b"." || hidden == b".." {
                return Err(bad("whiteout names no file"));
            }
            let hidden = OsStr::from_bytes(hidden);
            remove_existing(&parent, hidden, &self.root_path(parent_comps, hidden)).map_err(ctx)?;
            return rustix::fs::mknodat(
                &parent,
                hidden,
                FileType::CharacterDevice,
                Mode::empty(),
                rustix::fs::makedev(0, 0),
            )
            .map_err(|e| ctx(e.into()));
        }

        let parent = self
            .dir(parent_comps, true)
            .map_err(|e| self.walk_err(e, &shown))?;
        let full = self.root_path(parent_comps, name);
        match kind {
            EntryType::Directory => {
                match rustix::fs::statat(&parent, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {}
                    Ok(_) => {
                        remove_existing(&parent, name, &full).map_err(ctx)?;
                        mkdir(&parent, name).map_err(ctx)?;
                    }
                    Err(Errno::NOENT) => mkdir(&parent, name).map_err(ctx)?,
                    Err(e) => return Err(ctx(e.into())),
                }
                let fd = open_dir(&parent, name).map_err(|e| ctx(e.into()))?;
                set_fd_meta(&fd, &meta).map_err(ctx)?;
                self.dir_times.push((comps.clone(), meta.times));
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                remove_existing(&parent, name, &full).map_err(ctx)?;
                let fd = rustix::fs::openat(
                    &parent,
                    name.as_os_str(),
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(|e| ctx(e.into()))?;
                let mut file = File::from(fd);
                io::copy(&mut entry, &mut file).map_err(ctx)?;
                set_fd_meta(&file, &meta).map_err(ctx)?;
                rustix::fs::futimens(&file, &meta.times).map_err(|e| ctx(e.into()))?;
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| bad("symlink without a target"))?
                    .into_owned();
                remove_existing(&parent, name, &full).map_err(ctx)?;
                rustix::fs::symlinkat(OsStr::from_bytes(&target), &parent, name.as_os_str())
                    .map_err(|e| ctx(e.into()))?;
                set_path_meta(&parent, name, &full, &meta, false).map_err(ctx)?;
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| bad("hardlink without a target"))?
                    .into_owned();
                let target_comps =
                    clean_path(&target).map_err(|r| bad(&format!("hardlink target: {r}")))?;
                let Some((target_name, target_parent)) = target_comps.split_last() else {
                    return Err(bad("hardlink to the layer root"));
                };
                if target_comps == comps {
                    return Ok(());
                }
                let tparent = self
                    .dir(target_parent, false)
                    .map_err(|e| self.link_err(e, &shown))?;
                remove_existing(&parent, name, &full).map_err(ctx)?;
                rustix::fs::linkat(
                    &tparent,
                    target_name.as_os_str(),
                    &parent,
                    name.as_os_str(),
                    AtFlags::empty(),
                )
                .map_err(|e| self.link_err(e, &shown))?;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let file_type = match kind {
                    EntryType::Char => FileType::CharacterDevice,
                    EntryType::Block => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                let header = entry.header();
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                remove_existing(&parent, name, &full).map_err(ctx)?;
                rustix::fs::mknodat(
                    &parent,
                    name.as_os_str(),
                    file_type,
                    meta.mode,
                    rustix::fs::makedev(major, minor),
                )
                .map_err(|e| ctx(e.into()))?;
                set_path_meta(&parent, name, &full, &meta, true).map_err(ctx)?;
            }
            _ => return Err(bad(&format!("unsupported entry type {kind:?}"))),
        }
        Ok(())
    }

    fn root_path(&self, parent: &[OsString], name: &OsStr) -> PathBuf {
        let mut p = self.root.to_path_buf();
        p.extend(parent);
        p.push(name);
        p
    }

    /// Opens the directory `comps` below the root without following any symlink, creating
    /// missing components (as root-owned 0755 dirs, like other extractors) when `create`.
    fn dir(&self, comps: &[OsString], create: bool) -> rustix::io::Result<OwnedFd> {
        if comps.is_empty() {
            return open_dir(&self.root_fd, OsStr::new("."));
        }
        let rel: PathBuf = comps.iter().collect();
        match open_beneath(&self.root_fd, &rel) {
            Err(Errno::NOENT) if create => {}
            other => return other,
        }
        let mut cur = open_dir(&self.root_fd, OsStr::new("."))?;
        for c in comps {
            cur = match open_beneath(&cur, Path::new(c)) {
                Err(Errno::NOENT) => {
                    mkdir(&cur, c).map_err(|e| Errno::from_io_error(&e).unwrap_or(Errno::IO))?;
                    open_beneath(&cur, Path::new(c))?
                }
                other => other?,
            };
        }
        Ok(cur)
    }

    fn walk_err(&self, e: Errno, shown: &str) -> Error {
        let reason = match e {
            Errno::LOOP => "its path goes through a symlink",
            Errno::NOTDIR => "a parent in its path is not a directory",
            Errno::XDEV => "its path leaves the layer",
            _ => {
                return Error::Extract {
                    path: shown.to_string(),
                    source: e.into(),
                };
            }
        };
        Error::BadEntry {
            path: shown.to_string(),
            reason: reason.to_string(),
        }
    }

    fn link_err(&self, e: Errno, shown: &str) -> Error {
        match e {
            Errno::NOENT => Error::BadEntry {
                path: shown.to_string(),
                reason: "hardlink target is not in the layer".to_string(),
            },
            _ => self.walk_err(e, shown),
        }
    }

    /// Applies deferred directory mtimes. A directory replaced or removed by a later entry is
    /// skipped rather than reached through whatever took its place.
    fn finish(&self) {
        for (comps, times) in &self.dir_times {
            if let Ok(fd) = self.dir(comps, false) {
                let _ = rustix::fs::futimens(&fd, times);
            }
        }
    }
}

fn open_beneath(dir: impl AsFd, rel: &Path) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat2(
        dir,
        rel,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )
}

fn open_dir(parent: impl AsFd, name: &OsStr) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

fn mkdir(parent: impl AsFd, name: &OsStr) -> io::Result<()> {
    rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o755))?;
    Ok(())
}

/// Clears the way for a new entry at `name`: tar semantics say a later entry replaces an
/// earlier one of the same path.
fn remove_existing(parent: impl AsFd, name: &OsStr, full: &Path) -> io::Result<()> {
    let parent = parent.as_fd();
    match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
            // The parent was just opened without following symlinks and `remove_dir_all`
            // never follows them either, so this stays inside the layer.
            std::fs::remove_dir_all(full)
        }
        Ok(_) => Ok(rustix::fs::unlinkat(parent, name, AtFlags::empty())?),
    }
}

fn set_ids(fd: impl AsFd, meta: &Meta) -> io::Result<()> {
    if meta.chown {
        rustix::fs::fchown(fd, Some(meta.uid), Some(meta.gid))?;
    }
    Ok(())
}

/// Owner before mode (chown clears setuid bits), xattrs last (chown clears file capabilities).
fn set_fd_meta(fd: impl AsFd, meta: &Meta) -> io::Result<()> {
    let fd = fd.as_fd();
    set_ids(fd, meta)?;
    rustix::fs::fchmod(fd, meta.mode)?;
    for (name, value) in &meta.xattrs {
        rustix::fs::fsetxattr(fd, name.as_str(), value, XattrFlags::empty())?;
    }
    Ok(())
}

/// Metadata for entries that cannot be opened (symlinks, device nodes, fifos).
fn set_path_meta(
    parent: impl AsFd,
    name: &OsStr,
    full: &Path,
    meta: &Meta,
    chmod: bool,
) -> io::Result<()> {
    let parent = parent.as_fd();
    if meta.chown {
        rustix::fs::chownat(
            parent,
            name,
            Some(meta.uid),
            Some(meta.gid),
            AtFlags::SYMLINK_NOFOLLOW,
        )?;
    }
    if chmod {
        // Only reached for device nodes and fifos we just created, never a symlink.
        rustix::fs::chmodat(parent, name, meta.mode, AtFlags::empty())?;
    }
    for (xname, value) in &meta.xattrs {
        xattr::set(full, xname, value)?;
    }
    rustix::fs::utimensat(parent, name, &meta.times, AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(())
}

fn read_meta<R: Read>(entry: &mut tar::Entry<'_, R>) -> std::result::Result<Meta, String> {
    let mut xattrs = Vec::new();
    let mut pax_mtime = None;
    if let Some(exts) = entry.pax_extensions().map_err(|e| e.to_string())? {
        for ext in exts {
            let ext = ext.map_err(|e| e.to_string())?;
            let key = ext.key().map_err(|_| "PAX key is not utf-8".to_string())?;
            if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                // A layer must not smuggle overlay metadata (redirects, opaque flags) in.
                if !xattr::is_overlay_private(name) {
                    xattrs.push((name.to_string(), ext.value_bytes().to_vec()));
                }
            } else if key == "mtime" {
                pax_mtime = Some(parse_pax_time(ext.value_bytes()).ok_or("invalid PAX mtime")?);
            }
        }
    }
    let h = entry.header();
    let old = h.as_old();
    let id = |v: u64, what: &str| -> std::result::Result<u32, String> {
        u32::try_from(v)
            .ok()
            .filter(|v| *v != u32::MAX)
            .ok_or_else(|| format!("{what} {v} out of range"))
    };
    let uid = id(numeric(h.uid(), &old.uid, "uid")?, "uid")?;
    let gid = id(numeric(h.gid(), &old.gid, "gid")?, "gid")?;
    let mode =
        u32::try_from(numeric(h.mode().map(u64::from), &old.mode, "mode")? & 0o7777).unwrap_or(0);
    let mtime = match pax_mtime {
        Some(t) => t,
        None => Timespec {
            tv_sec: i64::try_from(numeric(h.mtime(), &old.mtime, "mtime")?).unwrap_or(i64::MAX),
            tv_nsec: 0,
        },
    };
    Ok(Meta {
        uid: Uid::from_raw(uid),
        gid: Gid::from_raw(gid),
        mode: Mode::from_raw_mode(mode),
        times: Timestamps {
            last_access: mtime,
            last_modification: mtime,
        },
        xattrs,
        chown: true,
    })
}

/// A numeric header field; an empty one (all NUL or spaces) reads as 0, as Go and GNU tar
/// treat it.
fn numeric(parsed: io::Result<u64>, raw: &[u8], what: &str) -> std::result::Result<u64, String> {
    match parsed {
        Ok(v) => Ok(v),
        Err(_) if raw.iter().all(|b| *b == 0 || *b == b' ') => Ok(0),
        Err(_) => Err(format!("invalid {what} in header")),
    }
}

/// Parses a PAX time (`secs[.frac]`, possibly negative).
fn parse_pax_time(raw: &[u8]) -> Option<Timespec> {
    let s = std::str::from_utf8(raw).ok()?;
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    if secs.is_empty() || !secs.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i64 = secs.parse().ok()?;
    let mut nanos: i64 = 0;
    for (i, b) in frac.bytes().take(9).enumerate() {
        nanos += i64::from(b - b'0') * 10_i64.pow(8 - i as u32);
    }
    Some(if !neg {
        Timespec {
            tv_sec: secs,
            tv_nsec: nanos,
        }
    } else if nanos == 0 {
        Timespec {
            tv_sec: -secs,
            tv_nsec: 0,
        }
    } else {
        Timespec {
            tv_sec: -secs - 1,
            tv_nsec: 1_000_000_000 - nanos,
        }
    })
}

/// Splits an entry path into plain components. `.` and empty components are dropped; absolute
/// paths and `..` are refused rather than rewritten, since no honest layer contains them.
fn clean_path(raw: &[u8]) -> std::result::Result<Vec<OsString>, &'static str> {
    if raw.starts_with(b"/") {
        return Err("absolute path");
    }
    let mut out = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("path contains `..`"),
            c => out.push(OsStr::from_bytes(c).to_os_string()),
        }
    }
    Ok(out)
}

/// Used by the store to open a layer directory for syncing.
pub(crate) fn open_path(path: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        CWD,
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_path_drops_dots_and_refuses_escapes() {
        let c = clean_path(b"./a//b/./c/").unwrap();
        assert_eq!(c, vec![OsString::from("a"), "b".into(), "c".into()]);
        assert!(clean_path(b"./").unwrap().is_empty());
        assert_eq!(clean_path(b"../x"), Err("path contains `..`"));
        assert_eq!(clean_path(b"a/../../x"), Err("path contains `..`"));
        assert_eq!(clean_path(b"/etc/x"), Err("absolute path"));
        // Names that merely start with dots are ordinary.
        assert_eq!(clean_path(b"..a/...").unwrap().len(), 2);
    }

    #[test]
    fn pax_times() {
        let t = parse_pax_time(b"1700000000.5").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec), (1_700_000_000, 500_000_000));
        let t = parse_pax_time(b"42").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec), (42, 0));
        let t = parse_pax_time(b"-1.25").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec), (-2, 750_000_000));
        assert!(parse_pax_time(b"abc").is_none());
        assert!(parse_pax_time(b"1.2x").is_none());
    }
}
