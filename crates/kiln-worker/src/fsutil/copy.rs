//! Copying walked sources into a destination root, as Dockerfile COPY writes them.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, Metadata};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use kiln_ignore::Matcher;
use kiln_llb::mode::Chmod;

use super::walk::Entry;
use super::{Filter, Source, SourceError, clean_rel, resolve_in_root, walk};

/// Who owns what a COPY or mkdir creates.
#[derive(Debug, Clone, Copy)]
pub enum Owner {
    /// Keep the source's uid/gid (COPY --from a stage or image).
    Keep,
    Set {
        uid: u32,
        gid: u32,
    },
}

impl Owner {
    fn ids(&self, meta: &Metadata) -> (u32, u32) {
        match *self {
            Owner::Keep => (meta.uid(), meta.gid()),
            Owner::Set { uid, gid } => (uid, gid),
        }
    }
}

/// Creates `path` (absolute in-image) and missing parents inside `root`; new directories get
/// `mode` and `owner`. Returns the resolved host path.
pub fn mkdir_all(root: &Path, path: &str, mode: u32, owner: (u32, u32)) -> io::Result<PathBuf> {
    // Resolve first: symlinks on the way lead somewhere inside the root, and every component of
    // the result that exists is a real directory; only the missing tail is created.
    let target = resolve_in_root(root, path, true)?;
    let rel = target
        .strip_prefix(root)
        .map_err(io::Error::other)?
        .to_path_buf();
    let mut cur = root.to_path_buf();
    for comp in rel.components() {
        cur.push(comp);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(io::Error::other(format!(
                    "`{}` exists and is not a directory",
                    cur.display()
                )));
            }
            Err(_) => {
                fs::create_dir(&cur)?;
                fs::set_permissions(&cur, fs::Permissions::from_mode(mode))?;
                std::os::unix::fs::lchown(&cur, Some(owner.0), Some(owner.1))?;
            }
        }
    }
    Ok(target)
}

/// Writes a regular file at `path` (in-image) inside `root` from `data` with `mode`, owned by
/// 0:0; missing parents are created 0755. An existing file there is replaced.
pub fn write_file(
    root: &Path,
    path: &str,
    data: &mut dyn io::Read,
    mode: u32,
) -> io::Result<PathBuf> {
    let clean = clean_rel(path);
    let (parent, name) = match clean.rsplit_once('/') {
        Some((p, n)) => (p, n),
        None => ("", clean.as_str()),
    };
    if name.is_empty() {
        return Err(io::Error::other(format!("invalid file name `{path}`")));
    }
    let dir = mkdir_all(root, &format!("/{parent}"), 0o755, (0, 0))?;
    let target = dir.join(name);
    if fs::symlink_metadata(&target).is_ok() {
        fs::remove_file(&target)?;
    }
    io::copy(data, &mut fs::File::create(&target)?)?;
    fs::set_permissions(&target, fs::Permissions::from_mode(mode))?;
    std::os::unix::fs::lchown(&target, Some(0), Some(0))?;
    Ok(target)
}

/// Copies the selected sources into `dest` (absolute in-image; trailing `/` means a directory)
/// inside `dest_root`, as Dockerfile COPY does.
pub fn copy(
    sources: &[Source],
    matcher: Option<&Matcher>,
    filter: Filter<'_>,
    dest_root: &Path,
    dest: &str,
    owner: Owner,
    chmod: Option<&Chmod>,
) -> Result<(), SourceError> {
    // A destination is a directory when it says so with a trailing slash or is one; with
    // several sources each is copied by the rule of one (BuildKit).
    let dest_is_dir = dest.ends_with('/');
    let root_owner = match owner {
        Owner::Set { uid, gid } => (uid, gid),
        Owner::Keep => (0, 0),
    };
    let io_at = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SourceError::Io { path, source }
    };
    // Directories the copy creates get 0755, or the --chmod mode when it is octal, as BuildKit
    // gives them.
    let created_mode = match chmod {
        Some(Chmod::Octal(m)) => *m & 0o7777,
        _ => 0o755,
    };
    // One source after the other, as BuildKit copies them: where a source lands can depend on
    // what the ones before it made.
    for s in sources {
        let meta = s.metadata().map_err(io_at(&s.abs))?;
        let dest_abs = resolve_in_root(dest_root, dest, true).map_err(io_at(dest_root))?;
        let target = if meta.is_dir() {
            if fs::symlink_metadata(&dest_abs).is_ok_and(|m| !m.is_dir()) {
                return Err(SourceError::Io {
                    path: dest_abs,
                    source: io::Error::other(format!("cannot copy to non-directory: {dest}")),
                });
            }
            mkdir_all(dest_root, dest, created_mode, root_owner).map_err(io_at(&dest_abs))?
        } else if dest_is_dir || dest_abs.is_dir() {
            let dir =
                mkdir_all(dest_root, dest, created_mode, root_owner).map_err(io_at(&dest_abs))?;
            let name = Path::new(&s.rel)
                .file_name()
                .map(OsStr::to_os_string)
                .unwrap_or_default();
            dir.join(name)
        } else {
            let parent = dest
                .rsplit_once('/')
                .map_or("/", |(p, _)| if p.is_empty() { "/" } else { p });
            mkdir_all(dest_root, parent, created_mode, root_owner).map_err(io_at(&dest_abs))?;
            // A symlink there is written through, inside the root, as BuildKit does.
            dest_abs.clone()
        };
        // A directory source lends its contents and its mtime to the directory receiving them
        // (new or not), as BuildKit's copy does; its mode and owner are not copied.
        let mut dirs: Vec<(PathBuf, Metadata)> = Vec::new();
        if meta.is_dir() && s.lends_mtime {
            dirs.push((target.clone(), meta));
        }
        // Files hard-linked to each other within the source stay linked (BuildKit's copier
        // keeps them per source), the first one met copied, the others linked to it.
        let mut linked: HashMap<(u64, u64), PathBuf> = HashMap::new();
        walk(std::slice::from_ref(s), matcher, filter, &mut |e| {
            let entry_target = if e.rel.is_empty() {
                target.clone()
            } else {
                target.join(e.rel)
            };
            if e.rel.is_empty() && e.meta.is_dir() {
                return Ok(());
            }
            if e.meta.is_file() && e.meta.nlink() > 1 {
                let inode = (e.meta.dev(), e.meta.ino());
                if let Some(first) = linked.get(&inode) {
                    return hard_link(first, &entry_target);
                }
                linked.insert(inode, entry_target.clone());
            }
            copy_entry(&e, &entry_target, owner, chmod)?;
            // An implied directory keeps the time its children give it: the build's.
            if e.meta.is_dir() && !e.implied {
                dirs.push((entry_target, e.meta.clone()));
            }
            Ok(())
        })?;
        // Directory times last, after their children were written.
        for (dir, meta) in dirs.iter().rev() {
            let t = filetime::FileTime::from_last_modification_time(meta);
            filetime::set_file_times(dir, t, t).map_err(io_at(dir))?;
        }
    }
    Ok(())
}

/// Makes `dst` a hard link to `first`, replacing what is there unless it is a directory.
fn hard_link(first: &Path, dst: &Path) -> io::Result<()> {
    match fs::symlink_metadata(dst) {
        Ok(m) if m.is_dir() => {
            return Err(io::Error::other(format!(
                "cannot replace directory `{}` with a file",
                dst.display()
            )));
        }
        Ok(_) => fs::remove_file(dst)?,
        Err(_) => {}
    }
    fs::hard_link(first, dst)
}

fn copy_entry(src: &Entry<'_>, dst: &Path, owner: Owner, chmod: Option<&Chmod>) -> io::Result<()> {
    let meta = src.meta;
    let ft = meta.file_type();
    let (uid, gid) = owner.ids(meta);
    let mode = chmod.map_or(meta.mode() & 0o7777, |c| c.apply(meta.mode(), ft.is_dir()));
    if let Ok(existing) = fs::symlink_metadata(dst) {
        if existing.is_dir() && !ft.is_dir() {
            return Err(io::Error::other(format!(
                "cannot replace directory `{}` with a file",
                dst.display()
            )));
        }
        if !existing.is_dir() {
            fs::remove_file(dst)?;
        }
    }
    if ft.is_dir() {
        if !dst.is_dir() {
            fs::create_dir(dst)?;
        }
    } else if ft.is_symlink() {
        std::os::unix::fs::symlink(src.read_link()?, dst)?;
    } else if ft.is_file() {
        // Opened through the walk, never by path (see `Entry::open`); io::copy still uses
        // copy_file_range between the two files.
        let mut from = src.open()?;
        let mut to = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dst)?;
        io::copy(&mut from, &mut to)?;
    } else if ft.is_fifo() || ft.is_char_device() || ft.is_block_device() || ft.is_socket() {
        let c = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(dst.as_os_str()))
            .map_err(io::Error::other)?;
        // SAFETY: `c` is a valid NUL-terminated path; mknod has no other memory effects.
        let rc = unsafe {
            libc::mknod(
                c.as_ptr(),
                meta.mode() as libc::mode_t,
                meta.rdev() as libc::dev_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    std::os::unix::fs::lchown(dst, Some(uid), Some(gid))?;
    let t = filetime::FileTime::from_last_modification_time(meta);
    if !ft.is_symlink() {
        // chown clears setuid bits, so the mode goes last.
        fs::set_permissions(dst, fs::Permissions::from_mode(mode))?;
    }
    // By path, never by opening `dst` (`filetime::set_file_times` opens it, which blocks on a
    // fifo); `dst` was just made, so not following a final symlink changes nothing else.
    filetime::set_symlink_file_times(dst, t, t)?;
    Ok(())
}
