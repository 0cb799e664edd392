//! Which sources a COPY names: literal paths and wildcard patterns expanded in the root.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use kiln_ignore::Matcher;

use super::{clean_rel, component_match, has_wildcard, resolve_in_root};

/// One source a COPY selected: its path relative to the source root and where it is on disk.
#[derive(Debug, Clone)]
pub struct Source {
    pub rel: String,
    /// `rel` resolved inside `root` (links followed, clamped at the root).
    pub abs: PathBuf,
    /// The root the source was resolved in; the walk opens `abs` from it, following nothing.
    pub(super) root: PathBuf,
    /// Whether a directory source gives its mtime to the directory receiving its contents, as
    /// BuildKit's copy does. Not the build context's own root: BuildKit's synced copy of the
    /// context has the time of the sync there, never the directory's.
    pub lends_mtime: bool,
}

impl Source {
    /// The whole of `root` as one source.
    pub fn whole(root: &Path) -> Source {
        Source {
            rel: String::new(),
            abs: root.to_path_buf(),
            root: root.to_path_buf(),
            lends_mtime: true,
        }
    }

    /// The file at `path` as a source of its own (its directory is the root).
    #[cfg(test)]
    pub fn file(path: &Path) -> Source {
        Source {
            rel: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            abs: path.to_path_buf(),
            root: path.parent().unwrap_or(Path::new("/")).to_path_buf(),
            lends_mtime: true,
        }
    }

    /// The source's metadata, read as the walk reads it (no link followed on the way).
    pub fn metadata(&self) -> io::Result<std::fs::Metadata> {
        super::walk::open_source(self).map(|o| o.meta)
    }

    /// Opens the source, a regular file, as the walk opens files: from its root, following no
    /// link, and only if it is still the file it was resolved to.
    pub fn open_file(&self) -> io::Result<std::fs::File> {
        super::walk::open_source(self)?.open(&self.abs)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("\"/{path}\": not found{}", excluded_note(excluded_by))]
    NotFound {
        path: String,
        excluded_by: Option<String>,
    },
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

pub(super) fn excluded(matcher: Option<&Matcher>, rel: &str) -> bool {
    matcher.is_some_and(|m| !rel.is_empty() && m.excludes(rel))
}

/// Expands COPY sources (literal paths and wildcards) against `root`, hiding excluded paths.
///
/// As BuildKit does: the components before the first wildcard are resolved inside `root` as a
/// literal path is (links followed but clamped at the root); from there the pattern is matched
/// against what is really below, descending into directories but never through a link; each
/// match is then resolved as a literal path again (a final link followed inside the root). A
/// link in the context that points out of it, `up -> ../..` or `etc -> /etc`, so never leads
/// outside the root.
pub fn expand_sources(
    root: &Path,
    patterns: &[String],
    matcher: Option<&Matcher>,
) -> Result<Vec<Source>, SourceError> {
    let mut out = Vec::new();
    for pattern in patterns {
        let rel = clean_rel(pattern);
        let comps: Vec<&str> = rel.split('/').collect();
        let Some(first) = comps.iter().position(|c| has_wildcard(c)) else {
            out.push(literal(root, rel, matcher)?);
            continue;
        };
        let prefix = comps[..first].join("/");
        let base = resolve_in_root(root, &prefix, true).map_err(|source| SourceError::Io {
            path: root.join(&prefix),
            source,
        })?;
        // (the path as the pattern spells it, where it really is)
        let mut found = vec![(prefix, base)];
        for part in &comps[first..] {
            let mut next = Vec::new();
            for (prefix, dir) in &found {
                if !fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir()) {
                    continue;
                }
                let join_rel = |name: &str| {
                    if prefix.is_empty() {
                        name.to_string()
                    } else {
                        format!("{prefix}/{name}")
                    }
                };
                if !has_wildcard(part) {
                    let r = join_rel(part);
                    if fs::symlink_metadata(dir.join(part)).is_ok() && !excluded(matcher, &r) {
                        next.push((r, dir.join(part)));
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
        // A pattern that matches nothing copies nothing, and is no error (BuildKit's rule).
        for (rel, _) in found {
            out.push(literal(root, rel, matcher)?);
        }
    }
    Ok(out)
}

/// The source `rel` names, resolved inside `root`; an error if it is missing or excluded.
fn literal(root: &Path, rel: String, matcher: Option<&Matcher>) -> Result<Source, SourceError> {
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
    Ok(Source {
        rel,
        abs,
        root: root.to_path_buf(),
        lends_mtime: true,
    })
}

/// The sources of a COPY, in groups that share an include filter.
pub struct Group {
    pub sources: Vec<Source>,
    /// The `--parents` pattern of the group (None: everything below the sources).
    pub include: Option<Matcher>,
}

/// Marks the build context's root, where it is a source, as lending no mtime (see
/// [`Source::lends_mtime`]); for groups selected from the context.
pub fn context_root_lends_no_mtime(groups: &mut [Group]) {
    for s in groups.iter_mut().flat_map(|g| g.sources.iter_mut()) {
        if s.abs == s.root {
            s.lends_mtime = false;
        }
    }
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
