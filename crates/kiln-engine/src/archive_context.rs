//! A tarball as the build context, from stdin (`kiln build - < ctx.tar.gz`) or a URL (`kiln
//! build https://host/ctx.tar.gz`), and a URL of a plain-text Dockerfile (`kiln build
//! https://host/Dockerfile`, `-f https://host/Dockerfile`).
//!
//! The archive is decompressed as it is read and unpacked, in the same pass, into a temporary
//! directory under the data dir's `tmp/` with the layer applier read as BuildKit unpacks a
//! context (`kiln_snapshot::extract_context`): that directory is the context for the build and
//! is removed afterwards (or, after a kill, when the next engine opens the data dir alone).

mod fetch;
mod tarball;

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use kiln_progress::Progress;

pub use kiln_snapshot::archive::{Compression, sniff_archive};
pub use tarball::{SNIFF_LEN, peek};

use crate::build::BuildRequest;
use crate::{Engine, Error, Result, io};
use fetch::plain_text;
use tarball::{spool_tar, unpack_spool};

/// A context archive handed to a build, read once. Cloning shares the one stream.
#[derive(Clone)]
pub struct ContextArchive {
    /// What the archive came from, for messages (`stdin`).
    name: String,
    reader: Arc<Mutex<Option<Box<dyn Read + Send>>>>,
}

impl ContextArchive {
    pub fn new(name: impl Into<String>, reader: impl Read + Send + 'static) -> ContextArchive {
        ContextArchive {
            name: name.into(),
            reader: Arc::new(Mutex::new(Some(Box::new(reader)))),
        }
    }

    fn take(&self) -> Option<Box<dyn Read + Send>> {
        self.reader.lock().ok().and_then(|mut r| r.take())
    }
}

impl fmt::Debug for ContextArchive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContextArchive({})", self.name)
    }
}

/// The unpacked context (or the downloaded Dockerfile's dir), and the decompressed archive
/// while parts of it are still to unpack; dropping it removes both.
pub(crate) struct TempContext {
    dir: PathBuf,
    /// The decompressed tar beside `dir`, until [`TempContext::materialise`] unpacks what the
    /// build reads from it.
    spool: Option<PathBuf>,
    /// Where the archive came from, for messages.
    name: String,
}

impl Drop for TempContext {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some(spool) = &self.spool {
            let _ = std::fs::remove_file(spool);
        }
    }
}

impl TempContext {
    /// Decompresses `reader` into the spool file, one pass, and unpacks from it the Dockerfile
    /// (`wanted`) only, unless the archive holds links (then everything now: a link's target
    /// may be anywhere in it). Returns the bytes read from `reader`.
    async fn spool(
        &mut self,
        reader: Box<dyn Read + Send>,
        name: String,
        wanted: Option<Vec<String>>,
    ) -> Result<u64> {
        let spool = self.dir.with_extension("tar");
        self.spool = Some(spool.clone());
        self.name = name.clone();
        let dir = self.dir.clone();
        let (n, rest) = tokio::task::spawn_blocking(move || -> Result<(u64, bool)> {
            let (n, links) = spool_tar(reader, &spool, &name)?;
            let select = match wanted {
                Some(path) if !links => Selection::Prefixes(vec![path]),
                _ => Selection::All,
            };
            unpack_spool(&spool, &dir, &name, &select)?;
            Ok((n, matches!(select, Selection::Prefixes(_))))
        })
        .await??;
        if !rest {
            self.drop_spool();
        }
        Ok(n)
    }

    /// Unpacks what the build graph reads from the context: the sources of COPY/ADD from it
    /// (below the literal part of a wildcard), or everything when a step mounts it or copies
    /// its root.
    pub(crate) async fn materialise(
        &mut self,
        def: &kiln_llb::Definition,
        progress: &Progress,
    ) -> Result<()> {
        let Some(spool) = self.spool.clone() else {
            return Ok(());
        };
        let select = needed(def);
        let v = progress.vertex("[internal] unpack build context");
        v.status(&match &select {
            Selection::All => "everything".to_string(),
            Selection::Prefixes(p) if p.is_empty() => "nothing".to_string(),
            Selection::Prefixes(p) => {
                let paths: Vec<String> = p.iter().map(|c| c.join("/")).collect();
                paths.join(", ")
            }
        });
        let dir = self.dir.clone();
        let name = self.name.clone();
        let r = tokio::task::spawn_blocking(move || unpack_spool(&spool, &dir, &name, &select))
            .await
            .map_err(Error::from)
            .and_then(|r| r);
        self.drop_spool();
        match r {
            Ok(()) => {
                v.done();
                Ok(())
            }
            Err(e) => {
                v.error(&e.to_string());
                Err(e)
            }
        }
    }

    fn drop_spool(&mut self) {
        if let Some(spool) = self.spool.take() {
            let _ = std::fs::remove_file(spool);
        }
    }
}

/// Which entries of the archive to unpack.
#[derive(Debug, PartialEq, Eq)]
enum Selection {
    All,
    /// Entries at or below one of these cleaned paths, and the directories above them.
    Prefixes(Vec<Vec<String>>),
}

/// A path cleaned as the applier cleans entry names, with `..` stopping at the root.
fn clean(path: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c.to_string()),
        }
    }
    out
}

/// The Dockerfile's path inside the archive: `-f` when relative, else `Dockerfile`.
fn dockerfile_in_archive(file: Option<&Path>) -> Option<Vec<String>> {
    match file {
        None => Some(vec!["Dockerfile".to_string()]),
        Some(f) if f.is_relative() && !f.to_str().is_some_and(is_url) => {
            Some(clean(&f.to_string_lossy()))
        }
        Some(_) => None,
    }
}

/// What of the context the graph `def` reads.
fn needed(def: &kiln_llb::Definition) -> Selection {
    use kiln_llb::Op;
    let locals: std::collections::HashSet<_> = def
        .nodes()
        .filter(|(_, n)| matches!(n.op, Op::Local { .. }))
        .map(|(id, _)| id)
        .collect();
    let mut prefixes = Vec::new();
    for (_, node) in def.nodes() {
        for (i, input) in node.inputs.iter().enumerate() {
            if !locals.contains(input) {
                continue;
            }
            let Op::Copy(copy) = &node.op else {
                return Selection::All;
            };
            if i != 1 {
                return Selection::All;
            }
            for source in &copy.sources {
                // The literal components before the first wildcard.
                let literal: Vec<String> = clean(source)
                    .into_iter()
                    .take_while(|c| !c.contains(['*', '?', '[', '\\']))
                    .collect();
                if literal.is_empty() {
                    return Selection::All;
                }
                prefixes.push(literal);
            }
        }
    }
    Selection::Prefixes(prefixes)
}

fn is_url(s: &str) -> bool {
    let lower = s.get(..8).unwrap_or(s).to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}

impl Engine {
    /// Replaces an archive context (from stdin, or an HTTP(S) URL that is not a Git
    /// repository) with the directory it is unpacked into, and fetches a `-f` URL. A relative
    /// `-f` then names a file inside the archive, as with docker. Other requests pass through.
    pub(crate) async fn archive_context(
        &self,
        mut req: BuildRequest,
        progress: &Progress,
    ) -> Result<(BuildRequest, Option<TempContext>)> {
        let mut guard = None;
        if let Some(archive) = req.context_archive.take() {
            let reader = archive.take().ok_or_else(|| {
                Error::Usage(format!(
                    "the context archive from {} was already read",
                    archive.name
                ))
            })?;
            let mut temp = self.temp_context("tar-context")?;
            let v = progress.vertex("[internal] load remote build context");
            let name = archive.name.clone();
            let wanted = dockerfile_in_archive(req.dockerfile.as_deref());
            let spooled = temp.spool(reader, name, wanted).await;
            match spooled {
                Ok(n) => v.status(&format!("transferring context: {} done", human_bytes(n))),
                Err(e) => {
                    v.error(&e.to_string());
                    return Err(e);
                }
            }
            v.done();
            guard = Some(temp);
        } else if let Some(url) = req
            .context
            .to_str()
            .filter(|s| is_url(s))
            .map(str::to_owned)
            && !req.context.exists()
        {
            guard = Some(self.remote_context(&url, &mut req, progress).await?);
        }
        if let Some(temp) = &guard {
            req.dockerfile = match req.dockerfile.take() {
                Some(f) if f.is_relative() && !f.to_str().is_some_and(is_url) => {
                    Some(temp.dir.join(f))
                }
                other => other,
            };
            req.context = temp.dir.clone();
        }
        if let Some(url) = req
            .dockerfile
            .as_ref()
            .and_then(|f| f.to_str())
            .filter(|s| is_url(s))
        {
            let url = url.to_string();
            let v = progress.vertex(format!("[internal] load remote Dockerfile {url}"));
            let body = self
                .download(&url)
                .await
                .inspect_err(|e| v.error(&e.to_string()))?;
            let text = plain_text(&url, &body, body.head.clone())
                .inspect_err(|e| v.error(&e.to_string()))?;
            v.done();
            req.dockerfile = Some(PathBuf::from("Dockerfile"));
            req.dockerfile_text = Some(text);
        }
        Ok((req, guard))
    }

    fn temp_context(&self, kind: &str) -> Result<TempContext> {
        let dir = self
            .root
            .join("tmp")
            .join(format!("{kind}-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).map_err(io(format!("creating `{}`", dir.display())))?;
        Ok(TempContext {
            dir,
            spool: None,
            name: String::new(),
        })
    }

    /// `kiln build URL`: a tarball is unpacked as the context; a text file is the Dockerfile,
    /// alone in the context under the name `context`, as BuildKit keeps it.
    async fn remote_context(
        &self,
        url: &str,
        req: &mut BuildRequest,
        progress: &Progress,
    ) -> Result<TempContext> {
        let v = progress.vertex("[internal] load remote build context");
        let result = async {
            let mut temp = self.temp_context("url-context")?;
            let spool = temp.dir.with_extension("download");
            let fetched = self.download_to(url, &spool).await;
            let fetched = fetched.inspect_err(|_| {
                let _ = std::fs::remove_file(&spool);
            })?;
            let size = fetched.size;
            if sniff_archive(&fetched.head).is_some() {
                let file = std::fs::File::open(&spool)
                    .map_err(io(format!("reading the download of `{url}`")));
                let wanted = dockerfile_in_archive(req.dockerfile.as_deref());
                let r = match file {
                    Ok(file) => temp.spool(Box::new(file), format!("`{url}`"), wanted).await,
                    Err(e) => Err(e),
                };
                let _ = std::fs::remove_file(&spool);
                r?;
            } else {
                let body = std::fs::read(&spool);
                let _ = std::fs::remove_file(&spool);
                let body = body.map_err(io(format!("reading the download of `{url}`")))?;
                let text = plain_text(url, &fetched, body)?;
                let file = temp.dir.join("context");
                std::fs::write(&file, text.as_bytes())
                    .map_err(io(format!("writing `{}`", file.display())))?;
                if req.dockerfile.is_none() {
                    req.dockerfile = Some(PathBuf::from("context"));
                }
            }
            Ok::<_, Error>((temp, size))
        }
        .await;
        match result {
            Ok((temp, size)) => {
                v.status(&format!("transferring context: {} done", human_bytes(size)));
                v.done();
                Ok(temp)
            }
            Err(e) => {
                v.error(&e.to_string());
                Err(e)
            }
        }
    }
}

fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 20 => format!("{:.2}MB", n as f64 / 1e6),
        n if n >= 1 << 10 => format!("{:.2}kB", n as f64 / 1e3),
        n => format!("{n}B"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_graph_says_which_context_paths_to_unpack() {
        use kiln_llb::{CopyOp, Definition, Op};
        let copy = |sources: &[&str]| {
            Op::Copy(CopyOp {
                sources: sources.iter().map(|s| s.to_string()).collect(),
                dest: "/x/".into(),
                chown: None,
                chmod: None,
                allow_wildcard: true,
                unpack: false,
                exclude: Vec::new(),
                parents: false,
                chmod_symbolic: None,
            })
        };
        let graph = |sources: &[&str]| {
            let mut def = Definition::default();
            let scratch = def.add(Op::Scratch, vec![], "scratch");
            let local = def.add(
                Op::Local {
                    name: "context".into(),
                    excludes: vec![],
                },
                vec![],
                "context",
            );
            def.add(copy(sources), vec![scratch, local], "COPY");
            needed(&def)
        };
        let p = |v: &[&[&str]]| {
            Selection::Prefixes(
                v.iter()
                    .map(|c| c.iter().map(|s| s.to_string()).collect())
                    .collect(),
            )
        };
        assert_eq!(graph(&["app.txt"]), p(&[&["app.txt"]]));
        assert_eq!(graph(&["./src/*.rs", "/a/../b"]), p(&[&["src"], &["b"]]));
        assert_eq!(graph(&["."]), Selection::All);
        assert_eq!(graph(&["*.txt"]), Selection::All);
        assert_eq!(graph(&["../.."]), Selection::All);
    }
}
