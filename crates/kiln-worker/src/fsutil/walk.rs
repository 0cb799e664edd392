//! Walking the selected sources, filtered by .dockerignore, `--exclude` and `--parents`.

use std::fs::{self, Metadata};
use std::io;
use std::path::{Path, PathBuf};

use kiln_ignore::Matcher;

use super::select::excluded;
use super::{Source, SourceError, component_match};

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
