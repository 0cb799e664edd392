//! The walk a client makes of its context for a remote build: the same walk and .dockerignore
//! rules a COPY from the context uses, so the daemon's mirror holds what the build can read.

use std::fs::{File, Metadata};
use std::io;
use std::path::{Path, PathBuf};

use kiln_ignore::Matcher;

use super::{Filter, Source, SourceError, walk};

/// One entry of a context walk: its path relative to the context (`/`-separated), its metadata
/// (links not followed) and the target when it is a symlink.
pub struct ContextEntry<'a> {
    pub rel: &'a str,
    pub meta: &'a Metadata,
    pub link_target: Option<PathBuf>,
}

/// Visits every entry of the context at `dir` that `matcher` (its .dockerignore) keeps, in
/// sorted pre-order, never the root itself. A directory left out but holding kept entries (a
/// `!` exception) is visited before them.
pub fn walk_context(
    dir: &Path,
    matcher: Option<&Matcher>,
    f: &mut dyn FnMut(ContextEntry<'_>) -> io::Result<()>,
) -> Result<(), SourceError> {
    walk(
        &[Source::whole(dir)],
        matcher,
        Filter::default(),
        &mut |e| {
            if e.rel.is_empty() {
                return Ok(());
            }
            let link_target = match e.meta.file_type().is_symlink() {
                true => Some(e.read_link()?),
                false => None,
            };
            f(ContextEntry {
                rel: e.rel,
                meta: e.meta,
                link_target,
            })
        },
    )
}

/// Opens the regular file `rel` below `dir` without following a link at any component.
pub fn open_context_file(dir: &Path, rel: &str) -> io::Result<File> {
    let source = Source {
        rel: rel.to_string(),
        abs: dir.join(rel),
        root: dir.to_path_buf(),
        lends_mtime: true,
    };
    let opened = super::walk::open_source(&source)?;
    if !opened.meta.is_file() {
        return Err(io::Error::other(format!(
            "`{}` is not a regular file",
            source.abs.display()
        )));
    }
    opened.open(&source.abs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_kept_entries_with_link_targets() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("a")).unwrap();
        std::fs::write(dir.path().join("a/f"), b"x").unwrap();
        std::fs::write(dir.path().join("skip.log"), b"y").unwrap();
        std::os::unix::fs::symlink("a/f", dir.path().join("l")).unwrap();
        let m = Matcher::from_dockerignore("*.log\n").unwrap();
        let mut seen = Vec::new();
        walk_context(dir.path(), Some(&m), &mut |e| {
            seen.push((e.rel.to_string(), e.link_target.clone()));
            Ok(())
        })
        .unwrap();
        assert_eq!(
            seen,
            [
                ("a".to_string(), None),
                ("a/f".to_string(), None),
                ("l".to_string(), Some(PathBuf::from("a/f"))),
            ]
        );
        let mut s = String::new();
        io::Read::read_to_string(&mut open_context_file(dir.path(), "a/f").unwrap(), &mut s)
            .unwrap();
        assert_eq!(s, "x");
        assert!(open_context_file(dir.path(), "l").is_err());
    }
}
