//! Filesystem work inside a root that is not ours: every path is resolved as if the root were
//! `/` (symlinks followed but clamped at the root), so a hostile image or context can never make a
//! COPY or WORKDIR read or write outside it. No crate offers chroot-style resolution on top of
//! std, so it is written here.

use std::ffi::OsStr;
use std::fs::{self, Metadata};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use kiln_ignore::Matcher;
use kiln_llb::mode::Chmod;

const MAX_SYMLINKS: usize = 255;

/// Resolves `path` inside `root` as a chroot would. Missing components are kept literally.
/// With `follow_last` false, a final symlink is not followed (it names the link itself).
pub fn resolve_in_root(root: &Path, path: &str, follow_last: bool) -> io::Result<PathBuf> {
    let mut todo: Vec<String> = components(path).into_iter().rev().collect();
    let mut done: Vec<String> = Vec::new();
    let mut links = 0;
    while let Some(comp) = todo.pop() {
        match comp.as_str() {
            "." => continue,
            ".." => {
                done.pop();
                continue;
            }
            _ => {}
        }
        let candidate = join(root, &done).join(&comp);
        let is_last = todo.is_empty();
        match fs::symlink_metadata(&candidate) {
            Ok(m) if m.file_type().is_symlink() && (!is_last || follow_last) => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(io::Error::other(format!(
                        "too many levels of symbolic links in `{path}`"
                    )));
                }
                let target = fs::read_link(&candidate)?;
                let target = target.to_string_lossy();
                if target.starts_with('/') {
                    done.clear();
                }
                todo.extend(components(&target).into_iter().rev());
            }
            _ => done.push(comp),
        }
    }
    Ok(join(root, &done))
}

fn components(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect()
}

fn join(root: &Path, parts: &[String]) -> PathBuf {
    let mut p = root.to_path_buf();
    for part in parts {
        p.push(part);
    }
    p
}

/// Lexically cleans a source path relative to its root: no leading `/`, no `..` above the root.
pub fn clean_rel(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for c in Path::new(path).components() {
        match c {
            Component::Normal(s) => out.push(s.to_str().unwrap_or_default()),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out.join("/")
}

fn has_wildcard(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// Go's `filepath.Match` for one path component, which Dockerfile COPY wildcards follow.
pub fn component_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    match_from(&p, &n)
}

fn match_from(p: &[char], n: &[char]) -> bool {
    match p.first() {
        None => n.is_empty(),
        Some('*') => (0..=n.len()).any(|i| match_from(&p[1..], &n[i..])),
        Some('?') => !n.is_empty() && match_from(&p[1..], &n[1..]),
        Some('[') => {
            let Some(c) = n.first() else { return false };
            let mut i = 1;
            let negate = matches!(p.get(1), Some('^') | Some('!'));
            if negate {
                i += 1;
            }
            let mut matched = false;
            let mut first = true;
            while i < p.len() && (p[i] != ']' || first) {
                first = false;
                let lo = if p[i] == '\\' && i + 1 < p.len() {
                    i += 1;
                    p[i]
                } else {
                    p[i]
                };
                let hi = if p.get(i + 1) == Some(&'-') && p.get(i + 2).is_some_and(|c| *c != ']') {
                    i += 2;
                    p[i]
                } else {
                    lo
                };
                if lo <= *c && *c <= hi {
                    matched = true;
                }
                i += 1;
            }
            if i >= p.len() {
                return false; // unterminated class never matches
            }
            matched != negate && match_from(&p[i + 1..], &n[1..])
        }
        Some('\\') if p.len() > 1 => n.first() == Some(&p[1]) && match_from(&p[2..], &n[1..]),
        Some(c) => n.first() == Some(c) && match_from(&p[1..], &n[1..]),
    }
}

/// One source a COPY selected: its path relative to the source root and where it is on disk.
#[derive(Debug, Clone)]
pub struct Source {
    pub rel: String,
    pub abs: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("\"/{path}\": not found{}", excluded_note(excluded_by))]
    NotFound {
        path: String,
        excluded_by: Option<String>,
    },
    #[error("no source files were specified matching `{0}`")]
    NoMatch(String),
    #[error("invalid copy pattern")]
    Pattern(#[source] kiln_ignore::Error),
    #[error("reading `{path}`")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to extract archive `{path}`")]
    Archive {
        path: PathBuf,
        #[source]
        source: Box<kiln_snapshot::Error>,
    },
}

fn excluded_note(rule: &Option<String>) -> String {
    rule.as_ref()
        .map(|r| format!(" (excluded by .dockerignore rule {r})"))
        .unwrap_or_default()
}

fn excluded(matcher: Option<&Matcher>, rel: &str) -> bool {
    matcher.is_some_and(|m| !rel.is_empty() && m.excludes(rel))
}

/// Expands COPY sources (literal paths and wildcards) against `root`, hiding excluded paths.
pub fn expand_sources(
    root: &Path,
    patterns: &[String],
    matcher: Option<&Matcher>,
) -> Result<Vec<Source>, SourceError> {
    let mut out = Vec::new();
    for pattern in patterns {
        let rel = clean_rel(pattern);
        if !has_wildcard(&rel) {
            let abs = resolve_in_root(root, &rel, true).map_err(|source| SourceError::Io {
                path: root.join(&rel),
                source,
            })?;
            if fs::symlink_metadata(&abs).is_err() || excluded(matcher, &rel) {
                let excluded_by = matcher
                    .and_then(|m| m.excluding_rule(&rel))
                    .map(|r| format!("`{}` (line {})", r.text(), r.line()));
                return Err(SourceError::NotFound {
                    path: rel,
                    excluded_by,
                });
            }
            out.push(Source { rel, abs });
            continue;
        }
        let mut found = vec![(String::new(), root.to_path_buf())];
        for part in rel.split('/') {
            let mut next = Vec::new();
            for (prefix, dir) in &found {
                let join_rel = |name: &str| {
                    if prefix.is_empty() {
                        name.to_string()
                    } else {
                        format!("{prefix}/{name}")
                    }
                };
                if !has_wildcard(part) {
                    let r = join_rel(part);
                    let abs = dir.join(part);
                    if fs::symlink_metadata(&abs).is_ok() && !excluded(matcher, &r) {
                        next.push((r, abs));
                    }
                    continue;
                }
                let Ok(entries) = fs::read_dir(dir) else {
                    continue;
                };
                let mut names: Vec<String> = entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
                names.sort();
                for name in names {
                    let r = join_rel(&name);
                    if component_match(part, &name) && !excluded(matcher, &r) {
                        next.push((r, dir.join(&name)));
                    }
                }
            }
            found = next;
        }
        if found.is_empty() {
            return Err(SourceError::NoMatch(pattern.clone()));
        }
        out.extend(found.into_iter().map(|(rel, abs)| Source { rel, abs }));
    }
    Ok(out)
}

/// An entry met while walking a selected source.
pub struct Entry<'a> {
    /// Index of the source in the list given to [`walk`].
    pub source: usize,
    /// Path below the source ("" for the source itself).
    pub rel: &'a str,
    pub abs: &'a Path,
    pub meta: &'a Metadata,
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
        let meta = fs::metadata(&s.abs)
            .or_else(|_| fs::symlink_metadata(&s.abs))
            .map_err(|source| SourceError::Io {
                path: s.abs.clone(),
                source,
            })?;
        f(Entry {
            source: i,
            rel: "",
            abs: &s.abs,
            meta: &meta,
        })
        .map_err(|source| SourceError::Io {
            path: s.abs.clone(),
            source,
        })?;
        if meta.is_dir() {
            let mut walker = Walker {
                index: i,
                ctx_prefix: &s.rel,
                matcher,
                filter,
                pending: Vec::new(),
                f,
            };
            walker.dir(&s.abs, "")?;
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
    fn visit(&mut self, rel: &str, abs: &Path, meta: &Metadata) -> Result<(), SourceError> {
        for p in std::mem::take(&mut self.pending) {
            (self.f)(Entry {
                source: self.index,
                rel: &p.rel,
                abs: &p.abs,
                meta: &p.meta,
            })
            .map_err(|source| SourceError::Io {
                path: p.abs.clone(),
                source,
            })?;
        }
        (self.f)(Entry {
            source: self.index,
            rel,
            abs,
            meta,
        })
        .map_err(|source| SourceError::Io {
            path: abs.to_path_buf(),
            source,
        })
    }

    fn dir(&mut self, dir: &Path, rel_prefix: &str) -> Result<(), SourceError> {
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SourceError::Io { path, source }
        };
        let mut names: Vec<std::ffi::OsString> = fs::read_dir(dir)
            .map_err(io_err(dir))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect();
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
            let meta = fs::symlink_metadata(&abs).map_err(io_err(&abs))?;
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
                self.visit(&rel, &abs, &meta)?;
            } else if is_dir {
                self.pending.push(Pending {
                    rel: rel.clone(),
                    abs: abs.clone(),
                    meta: meta.clone(),
                });
            }
            if is_dir {
                self.dir(&abs, &rel)?;
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

/// The sources of a COPY, in groups that share an include filter.
pub struct Group {
    pub sources: Vec<Source>,
    /// The `--parents` pattern of the group (None: everything below the sources).
    pub include: Option<Matcher>,
}

/// Expands a COPY's sources. Without `parents` that is [`expand_sources`]; with it, each source
/// is split at its first `/./` (or taken whole, from the root) into the directory to copy
/// from, which may hold wildcards, and a pattern below it that selects what is copied with
/// its path. A pattern without wildcards must name something that exists.
pub fn select(
    root: &Path,
    sources: &[String],
    parents: bool,
    matcher: Option<&Matcher>,
) -> Result<Vec<Group>, SourceError> {
    if !parents {
        return Ok(vec![Group {
            sources: expand_sources(root, sources, matcher)?,
            include: None,
        }]);
    }
    let mut groups = Vec::new();
    for source in sources {
        let (base, pattern) = match source.split_once("/./") {
            Some((base, pattern)) => (clean_rel(base), clean_rel(pattern)),
            None => (String::new(), clean_rel(source)),
        };
        if !has_wildcard(&base) && !has_wildcard(&pattern) {
            let whole = if base.is_empty() {
                pattern.clone()
            } else {
                format!("{base}/{pattern}")
            };
            expand_sources(root, &[whole], matcher)?;
        }
        let include = if pattern.is_empty() {
            None
        } else {
            Some(Matcher::new(std::slice::from_ref(&pattern)).map_err(SourceError::Pattern)?)
        };
        groups.push(Group {
            sources: expand_sources(root, &[base], matcher)?,
            include,
        });
    }
    Ok(groups)
}

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

/// Writes a regular file at `path` (in-image) inside `root` with `mode`, owned by 0:0; missing
/// parents are created 0755. An existing file there is replaced.
pub fn write_file(root: &Path, path: &str, data: &[u8], mode: u32) -> io::Result<PathBuf> {
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
    fs::write(&target, data)?;
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
    let dest_is_dir = dest.ends_with('/') || sources.len() > 1;
    let root_owner = match owner {
        Owner::Set { uid, gid } => (uid, gid),
        Owner::Keep => (0, 0),
    };
    let io_at = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SourceError::Io { path, source }
    };
    // Where each source lands.
    let mut targets: Vec<PathBuf> = Vec::new();
    for s in sources {
        let meta = fs::metadata(&s.abs)
            .or_else(|_| fs::symlink_metadata(&s.abs))
            .map_err(io_at(&s.abs))?;
        let dest_abs = resolve_in_root(dest_root, dest, true).map_err(io_at(dest_root))?;
        let target = if meta.is_dir() {
            mkdir_all(dest_root, dest, 0o755, root_owner).map_err(io_at(&dest_abs))?
        } else if dest_is_dir || dest_abs.is_dir() {
            let dir = mkdir_all(dest_root, dest, 0o755, root_owner).map_err(io_at(&dest_abs))?;
            let name = Path::new(&s.rel)
                .file_name()
                .map(OsStr::to_os_string)
                .unwrap_or_default();
            dir.join(name)
        } else {
            let parent = dest
                .rsplit_once('/')
                .map_or("/", |(p, _)| if p.is_empty() { "/" } else { p });
            mkdir_all(dest_root, parent, 0o755, root_owner).map_err(io_at(&dest_abs))?;
            resolve_in_root(dest_root, dest, false).map_err(io_at(&dest_abs))?
        };
        targets.push(target);
    }
    let mut dirs: Vec<(PathBuf, Metadata)> = Vec::new();
    walk(sources, matcher, filter, &mut |e| {
        let target = if e.rel.is_empty() {
            targets[e.source].clone()
        } else {
            targets[e.source].join(e.rel)
        };
        // The source directory itself only lends its contents; its own entry is the target dir.
        if e.rel.is_empty() && e.meta.is_dir() {
            return Ok(());
        }
        copy_entry(e.abs, e.meta, &target, owner, chmod)?;
        if e.meta.is_dir() {
            dirs.push((target, e.meta.clone()));
        }
        Ok(())
    })?;
    // Directory times last, after their children were written.
    for (dir, meta) in dirs.iter().rev() {
        let t = filetime::FileTime::from_last_modification_time(meta);
        filetime::set_file_times(dir, t, t).map_err(io_at(dir))?;
    }
    Ok(())
}

fn copy_entry(
    src: &Path,
    meta: &Metadata,
    dst: &Path,
    owner: Owner,
    chmod: Option<&Chmod>,
) -> io::Result<()> {
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
        std::os::unix::fs::symlink(fs::read_link(src)?, dst)?;
    } else if ft.is_file() {
        fs::copy(src, dst)?;
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

/// Removes from an overlay upper dir the directories that hold no change: overlayfs copies a
/// directory up when anything below it is touched (runc creating and removing the stubs it
/// mounts /etc/hosts and /etc/resolv.conf on, say), and such a copy would otherwise make a layer
/// of a step that changed nothing. A directory stays when it is new, opaque, non-empty, or its
/// mode or owner differ from the lower one.
pub fn prune_unchanged_dirs(upper: &Path, lowers: &[PathBuf]) -> io::Result<()> {
    prune_dir(upper, Path::new(""), lowers).map(|_| ())
}

/// Returns whether `upper/rel` is now empty.
fn prune_dir(upper: &Path, rel: &Path, lowers: &[PathBuf]) -> io::Result<bool> {
    let dir = upper.join(rel);
    let mut remaining = 0usize;
    for entry in fs::read_dir(&dir)? {
        let entry = entry?;
        let child_rel = rel.join(entry.file_name());
        let meta = fs::symlink_metadata(entry.path())?;
        if meta.is_dir()
            && prune_dir(upper, &child_rel, lowers)?
            && unchanged_dir(&entry.path(), &meta, &child_rel, lowers)
        {
            fs::remove_dir(entry.path())?;
            continue;
        }
        remaining += 1;
    }
    Ok(remaining == 0)
}

fn unchanged_dir(path: &Path, meta: &Metadata, rel: &Path, lowers: &[PathBuf]) -> bool {
    let opaque = rustix::fs::lgetxattr(path, "trusted.overlay.opaque", &mut [0u8; 1]).is_ok();
    if opaque {
        return false;
    }
    for lower in lowers {
        if let Ok(lm) = fs::symlink_metadata(lower.join(rel)) {
            let whiteout = lm.file_type().is_char_device() && lm.rdev() == 0;
            return !whiteout
                && lm.is_dir()
                && lm.mode() == meta.mode()
                && lm.uid() == meta.uid()
                && lm.gid() == meta.gid();
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolution_is_clamped_to_the_root() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir_all(r.join("real/dir")).unwrap();
        std::os::unix::fs::symlink("/etc", r.join("evil")).unwrap();
        std::os::unix::fs::symlink("../../../../..", r.join("up")).unwrap();
        std::os::unix::fs::symlink("real/dir", r.join("rel")).unwrap();
        assert_eq!(
            resolve_in_root(r, "/etc/passwd", true).unwrap(),
            r.join("etc/passwd")
        );
        assert_eq!(resolve_in_root(r, "up/x", true).unwrap(), r.join("x"));
        assert_eq!(
            resolve_in_root(r, "rel/f", true).unwrap(),
            r.join("real/dir/f")
        );
        assert_eq!(resolve_in_root(r, "rel", false).unwrap(), r.join("rel"));
        assert_eq!(resolve_in_root(r, "../../x", true).unwrap(), r.join("x"));
    }

    #[test]
    fn prune_keeps_only_real_changes() {
        let lower = tempfile::tempdir().unwrap();
        let upper = tempfile::tempdir().unwrap();
        fs::create_dir_all(lower.path().join("etc")).unwrap();
        fs::create_dir_all(lower.path().join("tmp")).unwrap();
        fs::set_permissions(lower.path().join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
        fs::create_dir_all(upper.path().join("etc")).unwrap(); // a bare copy-up
        fs::create_dir_all(upper.path().join("tmp")).unwrap(); // mode differs from the lower
        fs::create_dir_all(upper.path().join("new/empty")).unwrap(); // new directories
        fs::create_dir_all(upper.path().join("etc2")).unwrap();
        fs::set_permissions(upper.path().join("tmp"), fs::Permissions::from_mode(0o755)).unwrap();
        prune_unchanged_dirs(upper.path(), &[lower.path().to_path_buf()]).unwrap();
        assert!(!upper.path().join("etc").exists());
        assert!(upper.path().join("tmp").exists());
        assert!(upper.path().join("new/empty").exists());
        assert!(upper.path().join("etc2").exists());
    }

    #[test]
    fn go_match_semantics() {
        assert!(component_match("*.py", "app.py"));
        assert!(!component_match("*.py", "app.pyc"));
        assert!(component_match("a?c", "abc"));
        assert!(component_match("[a-c]x", "bx"));
        assert!(!component_match("[^a-c]x", "bx"));
        assert!(component_match("\\*", "*"));
        assert!(!component_match("[a", "a"));
    }

    #[test]
    fn copy_file_dir_and_wildcard() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        fs::write(src.path().join("a.txt"), "a").unwrap();
        fs::write(src.path().join("b.txt"), "b").unwrap();
        fs::create_dir(src.path().join("d")).unwrap();
        fs::write(src.path().join("d/x"), "x").unwrap();
        fs::set_permissions(src.path().join("d/x"), fs::Permissions::from_mode(0o750)).unwrap();
        let owner = Owner::Set { uid: 0, gid: 0 };

        let s = expand_sources(src.path(), &["a.txt".into()], None).unwrap();
        copy(
            &s,
            None,
            Filter::default(),
            dst.path(),
            "/out/renamed",
            owner,
            None,
        )
        .unwrap();
        assert_eq!(
            fs::read_to_string(dst.path().join("out/renamed")).unwrap(),
            "a"
        );

        let s = expand_sources(src.path(), &["*.txt".into()], None).unwrap();
        assert_eq!(s.len(), 2);
        copy(&s, None, Filter::default(), dst.path(), "/w/", owner, None).unwrap();
        assert!(dst.path().join("w/a.txt").is_file() && dst.path().join("w/b.txt").is_file());

        let s = expand_sources(src.path(), &["d".into()], None).unwrap();
        copy(
            &s,
            None,
            Filter::default(),
            dst.path(),
            "/app/",
            owner,
            Some(&Chmod::Octal(0o600)),
        )
        .unwrap();
        let m = fs::metadata(dst.path().join("app/x")).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o600);
        assert!(
            !dst.path().join("app/d").exists(),
            "a directory source copies its contents"
        );

        assert!(matches!(
            expand_sources(src.path(), &["missing".into()], None),
            Err(SourceError::NotFound { .. })
        ));
        assert!(matches!(
            expand_sources(src.path(), &["*.none".into()], None),
            Err(SourceError::NoMatch(_))
        ));
    }

    #[test]
    fn excluded_files_are_invisible() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        fs::write(src.path().join("keep"), "k").unwrap();
        fs::write(src.path().join("secret.log"), "s").unwrap();
        let m = Matcher::from_dockerignore("*.log\n").unwrap();
        let s = expand_sources(src.path(), &[".".into()], Some(&m)).unwrap();
        copy(
            &s,
            Some(&m),
            Filter::default(),
            dst.path(),
            "/",
            Owner::Set { uid: 0, gid: 0 },
            None,
        )
        .unwrap();
        assert!(dst.path().join("keep").exists());
        assert!(!dst.path().join("secret.log").exists());
        match expand_sources(src.path(), &["secret.log".into()], Some(&m)) {
            Err(e @ SourceError::NotFound { .. }) => assert_eq!(
                e.to_string(),
                "\"/secret.log\": not found (excluded by .dockerignore rule `*.log` (line 1))"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn copy_never_writes_through_a_symlink_out_of_the_root() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::write(src.path().join("f"), "f").unwrap();
        std::os::unix::fs::symlink(outside.path(), dst.path().join("evil")).unwrap();
        let s = expand_sources(src.path(), &["f".into()], None).unwrap();
        copy(
            &s,
            None,
            Filter::default(),
            dst.path(),
            "/evil/",
            Owner::Set { uid: 0, gid: 0 },
            None,
        )
        .unwrap();
        assert!(!outside.path().join("f").exists());
        assert!(
            dst.path()
                .join(outside.path().strip_prefix("/").unwrap())
                .join("f")
                .exists()
        );
    }

    fn tree(files: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for f in files {
            let path = dir.path().join(f);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, f).unwrap();
        }
        dir
    }

    fn listing(root: &Path) -> Vec<String> {
        fn visit(dir: &Path, prefix: &str, out: &mut Vec<String>) {
            let mut names: Vec<_> = fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            names.sort();
            for name in names {
                let rel = format!("{prefix}{}", name.to_string_lossy());
                let path = dir.join(&name);
                if path.is_dir() {
                    out.push(format!("{rel}/"));
                    visit(&path, &format!("{rel}/"), out);
                } else {
                    out.push(rel);
                }
            }
        }
        let mut out = Vec::new();
        visit(root, "", &mut out);
        out
    }

    fn copy_with(
        src: &Path,
        sources: &[&str],
        parents: bool,
        exclude: &[&str],
        dest: &str,
    ) -> Vec<String> {
        let dst = tempfile::tempdir().unwrap();
        let sources: Vec<String> = sources.iter().map(|s| s.to_string()).collect();
        let exclude: Vec<String> = exclude.iter().map(|s| s.to_string()).collect();
        let exclude = (!exclude.is_empty()).then(|| Matcher::new(&exclude).unwrap());
        for g in select(src, &sources, parents, None).unwrap() {
            let filter = Filter {
                include: g.include.as_ref(),
                exclude: exclude.as_ref(),
            };
            let owner = Owner::Set { uid: 0, gid: 0 };
            copy(&g.sources, None, filter, dst.path(), dest, owner, None).unwrap();
        }
        listing(dst.path())
    }

    #[test]
    fn exclude_applies_below_each_source() {
        let src = tree(&[
            "dir1/a.png",
            "dir1/b.txt",
            "dir2/c.png",
            "dir2/sub/d.png",
            "top.png",
        ]);
        assert_eq!(
            copy_with(src.path(), &["."], false, &["*/*.png"], "/o/"),
            [
                "o/",
                "o/dir1/",
                "o/dir1/b.txt",
                "o/dir2/",
                "o/dir2/sub/",
                "o/dir2/sub/d.png",
                "o/top.png"
            ]
        );
        // Each wildcard match is a source of its own: patterns are relative to it.
        assert_eq!(
            copy_with(src.path(), &["dir*"], false, &["*.png"], "/o/"),
            ["o/", "o/b.txt", "o/sub/", "o/sub/d.png"]
        );
        assert_eq!(
            copy_with(src.path(), &["dir*"], false, &["*"], "/o/"),
            ["o/"]
        );
        // An exception reaches into an excluded directory, which is then created.
        assert_eq!(
            copy_with(src.path(), &["."], false, &["dir2", "!dir2/sub"], "/o/"),
            [
                "o/",
                "o/dir1/",
                "o/dir1/a.png",
                "o/dir1/b.txt",
                "o/dir2/",
                "o/dir2/sub/",
                "o/dir2/sub/d.png",
                "o/top.png"
            ]
        );
        // A named file source is never excluded itself.
        assert_eq!(
            copy_with(src.path(), &["top.png"], false, &["*.png"], "/o/"),
            ["o/", "o/top.png"]
        );
    }

    #[test]
    fn parents_keep_the_path_below_the_pivot() {
        let src = tree(&[
            "foo1/foo2/bar",
            "foo1/foo2/baz",
            "x/y/a.txt",
            "x/y/b.md",
            "src/a.txt",
            "src/x/b.txt",
            "src/x/y/c.txt",
            "src/x/y/d.md",
        ]);
        assert_eq!(
            copy_with(src.path(), &["foo1/foo2/bar"], true, &[], "/"),
            ["foo1/", "foo1/foo2/", "foo1/foo2/bar"]
        );
        assert_eq!(
            copy_with(src.path(), &["foo1/foo2/ba*"], true, &[], "/t/"),
            [
                "t/",
                "t/foo1/",
                "t/foo1/foo2/",
                "t/foo1/foo2/bar",
                "t/foo1/foo2/baz"
            ]
        );
        assert_eq!(
            copy_with(src.path(), &["./x/./y/*.txt"], true, &[], "/p/"),
            ["p/", "p/y/", "p/y/a.txt"]
        );
        assert_eq!(
            copy_with(src.path(), &["./src/**/*.txt"], true, &[], "/p/"),
            [
                "p/",
                "p/src/",
                "p/src/a.txt",
                "p/src/x/",
                "p/src/x/b.txt",
                "p/src/x/y/",
                "p/src/x/y/c.txt"
            ]
        );
        assert_eq!(
            copy_with(
                src.path(),
                &["x/./y", "foo*/./foo2/baz"],
                true,
                &["**/*.md"],
                "/p/"
            ),
            ["p/", "p/foo2/", "p/foo2/baz", "p/y/", "p/y/a.txt"]
        );
        assert!(matches!(
            select(src.path(), &["x/./nope".to_string()], true, None),
            Err(SourceError::NotFound { .. })
        ));
        // A wildcard that matches nothing copies nothing.
        assert_eq!(
            copy_with(src.path(), &["*/none*"], true, &[], "/p/"),
            ["p/"]
        );
    }

    #[test]
    fn symbolic_chmod_is_applied_per_file() {
        let src = tree(&["d/plain", "d/tool"]);
        fs::set_permissions(
            src.path().join("d/plain"),
            fs::Permissions::from_mode(0o640),
        )
        .unwrap();
        fs::set_permissions(src.path().join("d/tool"), fs::Permissions::from_mode(0o700)).unwrap();
        let dst = tempfile::tempdir().unwrap();
        let s = expand_sources(src.path(), &["d".into()], None).unwrap();
        let chmod = Chmod::parse("a+rX,go-w").unwrap();
        let owner = Owner::Set { uid: 0, gid: 0 };
        copy(
            &s,
            None,
            Filter::default(),
            dst.path(),
            "/out/",
            owner,
            Some(&chmod),
        )
        .unwrap();
        let mode = |p: &str| fs::metadata(dst.path().join(p)).unwrap().mode() & 0o7777;
        assert_eq!(mode("out/plain"), 0o644);
        assert_eq!(mode("out/tool"), 0o755);
    }
}
