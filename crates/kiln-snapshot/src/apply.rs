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
use rustix::fs::{AtFlags, CWD, FileType, Mode, OFlags, ResolveFlags, Timestamps, XattrFlags};
use rustix::io::Errno;

use crate::entry::{self, Kind, Meta, Parsed};
use crate::xattr::{self, OPAQUE};
use crate::{Error, Result};

/// Extracts every layer entry of the tar stream `reader` into the existing empty directory
/// `root`, OCI whiteouts becoming overlay whiteouts. Reads only up to the end-of-archive marker;
/// the caller drains what follows.
pub(crate) fn apply(reader: impl Read, root: &Path) -> Result<()> {
    apply_with(reader, root, Options::LAYER)
}

/// How [`apply_with`] reads an archive.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Options {
    /// Keep the owners of the archive's entries (an unprivileged process cannot chown).
    pub owners: bool,
    /// Read `.wh.` names as OCI whiteouts (a layer, not a plain archive).
    pub whiteouts: bool,
    /// Set the entries' extended attributes (PAX `SCHILY.xattr.*`).
    pub xattrs: bool,
    /// Read the archive as a build context: `..` above the root stays at the root, and
    /// character and block devices are refused (they would be live nodes on the host).
    pub context: bool,
}

impl Options {
    pub const LAYER: Options = Options {
        owners: true,
        whiteouts: true,
        xattrs: true,
        context: false,
    };
}

/// [`apply`] with `opts`.
pub(crate) fn apply_with(reader: impl Read, root: &Path, opts: Options) -> Result<()> {
    apply_filtered(reader, root, opts, &|_| true)
}

/// [`apply_with`], writing only the entries whose cleaned path `keep` accepts; the others are
/// read past unchecked, as if absent.
pub(crate) fn apply_filtered(
    reader: impl Read,
    root: &Path,
    opts: Options,
    keep: &dyn Fn(&[OsString]) -> bool,
) -> Result<()> {
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
        opts,
        keep,
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
    opts: Options,
    keep: &'a dyn Fn(&[OsString]) -> bool,
}

impl Extractor<'_> {
    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<()> {
        let Parsed {
            shown,
            comps,
            kind,
            mut meta,
        } = entry::parse_with(&mut entry, self.opts.whiteouts, self.opts.context)?;
        if !(self.keep)(&comps) {
            return Ok(());
        }
        if self.opts.context
            && let Kind::Node { file_type, .. } = &kind
            && *file_type != FileType::Fifo
        {
            return Err(Error::BadEntry {
                path: shown,
                reason: "a device node has no place in a build context".into(),
            });
        }
        meta.chown = self.opts.owners;
        if !self.opts.xattrs {
            meta.xattrs.clear();
        }
        let ctx = |source: io::Error| Error::Extract {
            path: shown.clone(),
            source,
        };

        let Some((name, parent_comps)) = comps.split_last() else {
            match kind {
                Kind::Dir => {
                    set_fd_meta(&self.root_fd, &meta).map_err(ctx)?;
                    self.dir_times.push((Vec::new(), meta.times));
                }
                Kind::Opaque => xattr::set(self.root, OPAQUE, b"y").map_err(ctx)?,
                _ => {}
            }
            return Ok(());
        };

        match &kind {
            Kind::Skip => return Ok(()),
            Kind::Opaque => {
                self.dir(&comps, true)
                    .map_err(|e| self.walk_err(e, &shown))?;
                let dir: PathBuf = self.root.join(comps.iter().collect::<PathBuf>());
                return xattr::set(&dir, OPAQUE, b"y").map_err(ctx);
            }
            _ => {}
        }

        let parent = self
            .dir(parent_comps, true)
            .map_err(|e| self.walk_err(e, &shown))?;
        let full = self.root_path(parent_comps, name);
        match kind {
            Kind::Skip | Kind::Opaque => {}
            Kind::Whiteout => {
                remove_existing(&parent, name, &full).map_err(ctx)?;
                rustix::fs::mknodat(
                    &parent,
                    name.as_os_str(),
                    FileType::CharacterDevice,
                    Mode::empty(),
                    rustix::fs::makedev(0, 0),
                )
                .map_err(|e| ctx(e.into()))?;
            }
            Kind::Dir => {
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
            Kind::File => {
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
            Kind::Symlink(target) => {
                remove_existing(&parent, name, &full).map_err(ctx)?;
                rustix::fs::symlinkat(OsStr::from_bytes(&target), &parent, name.as_os_str())
                    .map_err(|e| ctx(e.into()))?;
                set_path_meta(&parent, name, &full, &meta, false).map_err(ctx)?;
            }
            Kind::Hardlink(target) => {
                let Some((target_name, target_parent)) = target.split_last() else {
                    return Ok(());
                };
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
            Kind::Node {
                file_type,
                major,
                minor,
            } => {
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

/// Used by the store to open a layer directory for syncing.
pub(crate) fn open_path(path: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        CWD,
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}
