//! Walking the selected sources, filtered by .dockerignore, `--exclude` and `--parents`.

use std::ffi::{OsStr, OsString};
use std::fs::{File, Metadata};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use kiln_ignore::Matcher;
use rustix::fs::{Mode, OFlags};

use super::select::excluded;
use super::{Source, SourceError, component_match};

/// An entry met while walking a selected source.
///
/// The walk never reads through a path: every directory is opened relative to its parent's
/// descriptor without following links, and [`Entry::open`] and [`Entry::read_link`] do the same,
/// so a context changed while it is copied (a directory swapped for a link to `/`, a file for a
/// link to `/etc/shadow`) fails the copy instead of reading outside the root.
pub struct Entry<'a> {
    /// Index of the source in the list given to [`walk`].
    pub source: usize,
    /// Path below the source ("" for the source itself).
    pub rel: &'a str,
    /// Where the entry is, for messages and as a key; never opened by path.
    pub abs: &'a Path,
    pub meta: &'a Metadata,
    /// A directory not selected itself, visited because something below it is (`--parents`,
    /// an `--exclude` exception): a copy recreates it, BuildKit with the build's time.
    pub implied: bool,
    dir: BorrowedFd<'a>,
    name: &'a OsStr,
}

impl Entry<'_> {
    /// Opens the regular file this entry is, refusing a link or another file put in its place.
    pub fn open(&self) -> io::Result<File> {
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY;
        let file = File::from(rustix::fs::openat(
            self.dir,
            self.name,
            flags,
            Mode::empty(),
        )?);
        same_file(self.abs, self.meta, &file.metadata()?)?;
        Ok(file)
    }

    /// The target of the symlink this entry is.
    pub fn read_link(&self) -> io::Result<PathBuf> {
        let target = rustix::fs::readlinkat(self.dir, self.name, Vec::new())?;
        Ok(PathBuf::from(OsStr::from_bytes(target.as_bytes())))
    }
}

/// Fails when `now` is not the file `seen` described: it was replaced after the walk met it.
fn same_file(abs: &Path, seen: &Metadata, now: &Metadata) -> io::Result<()> {
    if (seen.dev(), seen.ino()) == (now.dev(), now.ino()) {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "`{}` was replaced while it was being copied",
        abs.display()
    )))
}

/// The metadata of `name` in `dir`, without following it.
fn stat_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Metadata> {
    let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    File::from(rustix::fs::openat(dir, name, flags, Mode::empty())?).metadata()
}

/// Opens the directory `name` in `dir` for listing, if it is still the one `meta` described.
fn open_dir_at(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    abs: &Path,
    meta: &Metadata,
) -> io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(dir, name, flags, Mode::empty())?;
    same_file(abs, meta, &File::from(fd.try_clone()?).metadata()?)?;
    Ok(fd)
}

/// Which entries below each source a COPY keeps, besides the context's `.dockerignore`. Both
/// matchers see paths relative to the source, as BuildKit's copier does.
#[derive(Debug, Default, Clone, Copy)]
pub struct Filter<'a> {
    /// `--parents`: only paths matching (or below a match) are kept.
    pub include: Option<&'a Matcher>,
    /// `--exclude`: matching paths are dropped (`!` rules re-include).
    pub exclude: Option<&'a Matcher>,
}

/// A directory walked but not kept itself: it is visited only if something below it is kept,
/// so the copy can create it first.
struct Pending {
    rel: String,
    abs: PathBuf,
    meta: Metadata,
    parent: Rc<OwnedFd>,
    name: OsString,
    /// Left out by the COPY's own filters (`--parents`, `--exclude`), not only by
    /// .dockerignore: BuildKit's context still has a directory .dockerignore drops, with its
    /// time, where the COPY's filters make one anew.
    implied: bool,
}

/// A source opened for walking: the descriptor of the directory holding it and its name there.
pub(super) struct Opened {
    pub parent: OwnedFd,
    pub name: OsString,
    pub meta: Metadata,
}

impl Opened {
    /// Opens the regular file this is (see [`Entry::open`]).
    pub fn open(&self, abs: &Path) -> io::Result<File> {
        open_file_at(self.parent.as_fd(), &self.name, abs, &self.meta)
    }
}

/// Opens the regular file `name` in `dir`, refusing a link or another file put in its place.
fn open_file_at(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    abs: &Path,
    meta: &Metadata,
) -> io::Result<File> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY;
    let file = File::from(rustix::fs::openat(dir, name, flags, Mode::empty())?);
    same_file(abs, meta, &file.metadata()?)?;
    Ok(file)
}

/// Opens a source one component at a time from its root, following no link: the path was
/// resolved inside the root already, so a link met now was put there since, and is refused.
pub(super) fn open_source(s: &Source) -> io::Result<Opened> {
    let rel = s
        .abs
        .strip_prefix(&s.root)
        .map_err(|_| io::Error::other(format!("`{}` is outside its root", s.abs.display())))?;
    let mut parent: OwnedFd = File::open(&s.root)?.into();
    let mut name = OsString::from(".");
    for comp in rel.components() {
        let Component::Normal(c) = comp else {
            return Err(io::Error::other(format!(
                "`{}` is not a resolved path",
                s.abs.display()
            )));
        };
        if name != "." {
            let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            parent = rustix::fs::openat(&parent, &name, flags, Mode::empty())?;
        }
        name = c.to_os_string();
    }
    let meta = stat_at(parent.as_fd(), &name)?;
    if meta.file_type().is_symlink() {
        return Err(io::Error::other(format!(
            "`{}` was replaced by a symlink after it was resolved",
            s.abs.display()
        )));
    }
    Ok(Opened { parent, name, meta })
}

/// Visits every selected source and, for directories, everything below them in sorted
/// pre-order, skipping excluded paths (context-relative rules apply to `source.rel/...`, the
/// filter's to paths below the source). A directory that is not kept but holds kept entries
/// is visited just before the first of them.
pub fn walk(
    sources: &[Source],
    matcher: Option<&Matcher>,
    filter: Filter<'_>,
    f: &mut dyn FnMut(Entry<'_>) -> io::Result<()>,
) -> Result<(), SourceError> {
    for (i, s) in sources.iter().enumerate() {
        let io_err = |source| SourceError::Io {
            path: s.abs.clone(),
            source,
        };
        let opened = open_source(s).map_err(io_err)?;
        f(Entry {
            source: i,
            rel: "",
            abs: &s.abs,
            meta: &opened.meta,
            implied: false,
            dir: opened.parent.as_fd(),
            name: &opened.name,
        })
        .map_err(io_err)?;
        if opened.meta.is_dir() {
            let fd = open_dir_at(opened.parent.as_fd(), &opened.name, &s.abs, &opened.meta)
                .map_err(io_err)?;
            let mut walker = Walker {
                index: i,
                ctx_prefix: &s.rel,
                matcher,
                filter,
                pending: Vec::new(),
                f,
            };
            walker.dir(Rc::new(fd), &s.abs, "")?;
        }
    }
    Ok(())
}

struct Walker<'a, 'f> {
    index: usize,
    ctx_prefix: &'a str,
    matcher: Option<&'a Matcher>,
    filter: Filter<'a>,
    pending: Vec<Pending>,
    f: &'f mut dyn FnMut(Entry<'_>) -> io::Result<()>,
}

impl Walker<'_, '_> {
    fn visit(&mut self, e: Entry<'_>) -> Result<(), SourceError> {
        for p in std::mem::take(&mut self.pending) {
            (self.f)(Entry {
                source: self.index,
                rel: &p.rel,
                abs: &p.abs,
                meta: &p.meta,
                implied: p.implied,
                dir: p.parent.as_fd(),
                name: &p.name,
            })
            .map_err(|source| SourceError::Io {
                path: p.abs.clone(),
                source,
            })?;
        }
        let abs = e.abs.to_path_buf();
        (self.f)(e).map_err(|source| SourceError::Io { path: abs, source })
    }

    fn dir(&mut self, fd: Rc<OwnedFd>, dir: &Path, rel_prefix: &str) -> Result<(), SourceError> {
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SourceError::Io { path, source }
        };
        let mut names: Vec<OsString> = Vec::new();
        for entry in rustix::fs::Dir::read_from(&*fd).map_err(|e| io_err(dir)(e.into()))? {
            let entry = entry.map_err(|e| io_err(dir)(e.into()))?;
            let name = OsStr::from_bytes(entry.file_name().to_bytes());
            if name != "." && name != ".." {
                names.push(name.to_os_string());
            }
        }
        names.sort();
        for name in names {
            let name_str = name.to_string_lossy();
            let rel = if rel_prefix.is_empty() {
                name_str.to_string()
            } else {
                format!("{rel_prefix}/{name_str}")
            };
            let ctx_rel = if self.ctx_prefix.is_empty() {
                rel.clone()
            } else {
                format!("{}/{rel}", self.ctx_prefix)
            };
            let abs = dir.join(&name);
            let meta = stat_at(fd.as_fd(), &name).map_err(io_err(&abs))?;
            let is_dir = meta.is_dir();
            let ignored = excluded(self.matcher, &ctx_rel);
            if ignored && (!is_dir || self.matcher.is_some_and(|m| m.can_skip_dir(&ctx_rel))) {
                continue;
            }
            let exclude = self.filter.exclude;
            let dropped = exclude.is_some_and(|m| m.excludes(&rel));
            if dropped && (!is_dir || !exclude.is_some_and(Matcher::has_exceptions)) {
                continue;
            }
            let include = self.filter.include;
            let selected = include.is_none_or(|m| m.excludes(&rel));
            if !selected && (!is_dir || !include.is_some_and(|m| may_match_below(m, &rel))) {
                continue;
            }
            let keep = !ignored && !dropped && selected;
            let depth = self.pending.len();
            if keep {
                self.visit(Entry {
                    source: self.index,
                    rel: &rel,
                    abs: &abs,
                    meta: &meta,
                    implied: false,
                    dir: fd.as_fd(),
                    name: &name,
                })?;
            } else if is_dir {
                self.pending.push(Pending {
                    rel: rel.clone(),
                    abs: abs.clone(),
                    meta: meta.clone(),
                    parent: fd.clone(),
                    name: name.clone(),
                    implied: dropped || !selected,
                });
            }
            if is_dir {
                let child = open_dir_at(fd.as_fd(), &name, &abs, &meta).map_err(io_err(&abs))?;
                self.dir(Rc::new(child), &abs, &rel)?;
            }
            self.pending.truncate(depth);
        }
        Ok(())
    }
}

/// Could some path strictly below `dir` match one of `m`'s patterns? Compares the pattern's
/// leading components with the directory's; may say yes when the answer is no.
fn may_match_below(m: &Matcher, dir: &str) -> bool {
    let dir: Vec<&str> = dir.split('/').collect();
    m.rules().iter().filter(|r| !r.is_exception()).any(|r| {
        for (i, p) in r.pattern().split('/').enumerate() {
            if p.contains("**") {
                return true;
            }
            match dir.get(i) {
                None => return true,
                Some(d) if !component_match(p, d) => return false,
                Some(_) => {}
            }
        }
        true
    })
}
