//! COPY from the build context straight into a layer blob: the context's files are written as
//! an uncompressed tar into the content store (the blob digest is the diffID, hashed as it is
//! written) without creating them anywhere. The layer is unpacked later, like a pulled one, only
//! when a step needs its files.
//!
//! The tar holds the entries the file-based COPY's overlay diff would hold (see `fsutil::copy`
//! and `LlbWorker::commit`): the copied entries with their COPY modes, owners and times, and
//! the destination's parent directories. What is already at the destination is read through a
//! read-only view of the step's input (`lower`); where the stream cannot be sure to match the
//! file-based layer (symlinks or non-directories on the destination path, a copied entry
//! replacing one of another kind, extended attributes a copy-up would carry, sources
//! overlapping each other), it answers [`Outcome::Fallback`] and the caller copies files.

use std::collections::{HashMap, HashSet};
use std::fs::{self, Metadata};
use std::io::{self, BufWriter, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use kiln_content::{BlobWriter, ContentStore};
use kiln_ignore::Matcher;
use kiln_llb::mode::Chmod;
use kiln_oci::Digest;
use tar::{EntryType, Header};

use crate::fsutil::{self, Filter, SourceError};
use crate::{Error, Result};

/// What a COPY selects and where it goes.
pub(crate) struct Request<'a> {
    /// The build context's directory.
    pub src_root: &'a Path,
    /// The context's `.dockerignore` rules.
    pub matcher: Option<&'a Matcher>,
    pub sources: &'a [String],
    pub parents: bool,
    /// `--exclude` patterns.
    pub exclude: Option<&'a Matcher>,
    pub dest: &'a str,
    /// `--chown` (0:0 without it).
    pub owner: (u32, u32),
    pub chmod: Option<&'a Chmod>,
    /// The step's input filesystem, only read.
    pub lower: &'a Path,
}

#[derive(Debug)]
pub(crate) enum Outcome {
    /// The layer blob: uncompressed tar, so its digest is also the diffID.
    Layer { digest: Digest, size: u64 },
    /// The COPY changes nothing (an empty source directory into an existing one).
    Empty,
    /// The stream cannot promise the file-based layer; why, for the log.
    Fallback(&'static str),
}

/// Streams the layer of a COPY from the context into `content`.
pub(crate) fn stream(req: &Request<'_>, content: &ContentStore) -> Result<Outcome> {
    let mut groups = fsutil::select(req.src_root, req.sources, req.parents, req.matcher)
        .map_err(Error::Source)?;
    fsutil::context_root_lends_no_mtime(&mut groups);
    let blob = content.writer()?;
    let mut w = LayerWriter {
        tar: tar::Builder::new(BufWriter::with_capacity(CHUNK, Pipe::new(blob))),
        lower: req.lower,
        now: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        written: HashSet::new(),
        deferred: HashMap::new(),
        lower_dirs: HashSet::new(),
        linked: HashMap::new(),
        entries: 0,
    };
    let many = groups.iter().map(|g| g.sources.len()).sum::<usize>() > 1;
    for g in &groups {
        if let Some(why) = w.group(req, &g.sources, g.include.as_ref(), many)? {
            return Ok(Outcome::Fallback(why));
        }
    }
    if w.entries == 0 {
        // Dropping the unfinished blob writer removes its ingest file.
        return Ok(Outcome::Empty);
    }
    let buffered = w.tar.into_inner().map_err(layer_io)?;
    let pipe = buffered
        .into_inner()
        .map_err(|e| layer_io(e.into_error()))?;
    let (digest, size) = pipe.finish().map_err(layer_io)?.commit(None)?;
    Ok(Outcome::Layer { digest, size })
}

fn layer_io(source: io::Error) -> Error {
    Error::Io {
        what: "writing the COPY layer".into(),
        source,
    }
}

/// A reason to fall back, carried through the walk's `io::Error`.
#[derive(Debug)]
struct Fallback(&'static str);

impl std::fmt::Display for Fallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for Fallback {}

fn fallback(why: &'static str) -> io::Error {
    io::Error::other(Fallback(why))
}

/// The fallback reason inside a walk error, if that is what it is.
fn fallback_reason(e: &SourceError) -> Option<&'static str> {
    match e {
        SourceError::Io { source, .. } => source
            .get_ref()
            .and_then(|i| i.downcast_ref::<Fallback>())
            .map(|f| f.0),
        _ => None,
    }
}

struct LayerWriter<'a> {
    tar: tar::Builder<BufWriter<Pipe>>,
    lower: &'a Path,
    now: u64,
    /// In-image paths written so far (tracked when several sources might overlap).
    written: HashSet<String>,
    /// Directories that exist below with the same mode and owner: the overlay diff keeps them
    /// only when something below them changed, so they wait for a child to be written.
    deferred: HashMap<String, Header>,
    /// Directories that exist below, whose children must be checked against what is there.
    lower_dirs: HashSet<String>,
    /// The first in-image path of each hard-linked file, by source and inode: the others
    /// become links to it, as the file-based copy makes them.
    linked: HashMap<(usize, u64, u64), String>,
    entries: usize,
}

impl LayerWriter<'_> {
    /// One group of sources sharing a `--parents` pattern, as one `fsutil::copy` call.
    fn group(
        &mut self,
        req: &Request<'_>,
        sources: &[fsutil::Source],
        include: Option<&Matcher>,
        many: bool,
    ) -> Result<Option<&'static str>> {
        let dest = fsutil::clean_rel(req.dest);
        // Symlinks on the destination path are resolved inside the input by the file-based
        // copy; the stream only handles plain directories.
        let resolved = fsutil::resolve_in_root(self.lower, req.dest, true);
        if resolved.ok() != Some(self.lower.join(&dest)) {
            return Ok(Some("the destination path goes through a symlink"));
        }
        let dest_is_dir = req.dest.ends_with('/');
        let mut metas = Vec::new();
        for s in sources {
            metas.push(
                s.metadata()
                    .map_err(|e| Error::Source(source_io(&s.abs)(e)))?,
            );
        }
        // A directory source gives its mtime to the directory receiving it, and a later source
        // writing there changes it again: the file-based copy follows that order exactly.
        if sources.len() > 1 && metas.iter().any(Metadata::is_dir) {
            return Ok(Some("several sources, one of them a directory"));
        }
        let mut targets = Vec::new();
        for (s, meta) in sources.iter().zip(&metas) {
            let receive = (meta.is_dir() && s.lends_mtime).then(|| mtime(meta));
            let (dir, target) = if meta.is_dir() {
                (dest.clone(), dest.clone())
            } else if dest_is_dir || self.lower.join(&dest).is_dir() {
                let name = Path::new(&s.rel)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                (dest.clone(), join(&dest, &name))
            } else {
                // The file-based copy writes through a symlink found there.
                if fs::symlink_metadata(self.lower.join(&dest)).is_ok_and(|m| m.is_symlink()) {
                    return Ok(Some("the destination is a symlink"));
                }
                let parent = dest.rsplit_once('/').map_or("", |(p, _)| p).to_string();
                (parent, dest.clone())
            };
            if let Some(why) = self.dest_dirs(&dir, req, receive)? {
                return Ok(Some(why));
            }
            targets.push(target);
        }
        let filter = Filter {
            include,
            exclude: req.exclude,
        };
        let walked = fsutil::walk(sources, req.matcher, filter, &mut |e| {
            // The source directory itself only lends its contents; its target is `dest`.
            if e.rel.is_empty() && e.meta.is_dir() {
                return Ok(());
            }
            let target = if e.rel.is_empty() {
                targets[e.source].clone()
            } else {
                join(&targets[e.source], e.rel)
            };
            self.entry(&target, &e, req, many)
        });
        match walked {
            Ok(()) => Ok(None),
            Err(e) => match fallback_reason(&e) {
                Some(why) => Ok(Some(why)),
                None => Err(Error::Source(e)),
            },
        }
    }

    /// The directories of `dir` (in-image, relative) as the overlay diff lists them: new ones
    /// 0755 (or the octal `--chmod`) and owned by the COPY's owner, existing ones with their own
    /// mode and owner. The directory that receives the copy gets the build's time (creating
    /// entries in it sets its mtime), or `receive`, the mtime of a directory source, which the
    /// file-based copy gives it; the ones above it keep theirs, as overlayfs copies them up.
    fn dest_dirs(
        &mut self,
        dir: &str,
        req: &Request<'_>,
        receive: Option<u64>,
    ) -> Result<Option<&'static str>> {
        let owner = req.owner;
        let created_mode = match req.chmod {
            Some(Chmod::Octal(m)) => *m & 0o7777,
            _ => 0o755,
        };
        // The root always exists; it is never an entry of a layer.
        self.lower_dirs.insert(String::new());
        let comps: Vec<&str> = dir.split('/').filter(|c| !c.is_empty()).collect();
        let mut exists = true;
        for i in 0..comps.len() {
            let path = comps[..=i].join("/");
            let last = i + 1 == comps.len();
            let receives = last || !self.lower.join(join(&path, comps[i + 1])).exists();
            let receive_time = match receive {
                Some(t) if last => t,
                _ => self.now,
            };
            if self.written.contains(&path) || self.deferred.contains_key(&path) {
                exists = self.lower_dirs.contains(&path);
                continue;
            }
            if exists {
                match fs::symlink_metadata(self.lower.join(&path)) {
                    Ok(m) if m.is_dir() => {
                        let abs = self.lower.join(&path);
                        if has_xattrs(&abs).map_err(|e| Error::Source(source_io(&abs)(e)))? {
                            return Ok(Some("a destination directory has extended attributes"));
                        }
                        let mtime = if receives { receive_time } else { mtime(&m) };
                        let h = header(
                            EntryType::Directory,
                            m.mode() & 0o7777,
                            (m.uid(), m.gid()),
                            mtime,
                        );
                        self.lower_dirs.insert(path.clone());
                        // BuildKit's diff lists an existing directory only when something
                        // below it changed, a new mtime alone is not enough.
                        self.deferred.insert(path, h);
                        continue;
                    }
                    Ok(_) => return Ok(Some("a destination parent is not a directory")),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => exists = false,
                    Err(e) => return Err(Error::Source(source_io(&self.lower.join(&path))(e))),
                }
            }
            let mut h = header(EntryType::Directory, created_mode, owner, receive_time);
            self.append(&path, &mut h, io::empty()).map_err(layer_io)?;
            self.written.insert(path);
        }
        Ok(None)
    }

    fn entry(
        &mut self,
        target: &str,
        e: &fsutil::Entry<'_>,
        req: &Request<'_>,
        many: bool,
    ) -> io::Result<()> {
        let meta = e.meta;
        let ft = meta.file_type();
        if ft.is_socket() {
            // The file-based copy makes one, and the diff leaves sockets out.
            return Ok(());
        }
        let kind = if ft.is_dir() {
            EntryType::Directory
        } else if ft.is_symlink() {
            EntryType::Symlink
        } else if ft.is_file() {
            EntryType::Regular
        } else if ft.is_char_device() {
            EntryType::Char
        } else if ft.is_block_device() {
            EntryType::Block
        } else {
            EntryType::Fifo
        };
        let mode = if ft.is_symlink() {
            0o777
        } else {
            req.chmod
                .map_or(meta.mode() & 0o7777, |c| c.apply(meta.mode(), ft.is_dir()))
        };
        let time = if e.implied { self.now } else { mtime(meta) };
        let mut h = header(kind, mode, req.owner, time);
        if many && (self.written.contains(target) || self.deferred.contains_key(target)) {
            return Err(fallback("two sources copy to the same path"));
        }
        let parent = target.rsplit_once('/').map_or("", |(p, _)| p);
        if self.lower_dirs.contains(parent) {
            match fs::symlink_metadata(self.lower.join(target)) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
                Ok(m) if m.is_dir() && ft.is_dir() => {
                    if has_xattrs(&self.lower.join(target))? {
                        return Err(fallback("a directory copied over has extended attributes"));
                    }
                    self.lower_dirs.insert(target.to_string());
                    if m.mode() & 0o7777 == mode && (m.uid(), m.gid()) == req.owner {
                        // Unchanged but for its mtime: the diff drops it unless a child lands.
                        self.deferred.insert(target.to_string(), h);
                        return Ok(());
                    }
                }
                Ok(m) if !m.is_dir() && !ft.is_dir() => {}
                Ok(_) => return Err(fallback("a copied entry replaces one of another kind")),
            }
        }
        match kind {
            EntryType::Regular if meta.nlink() > 1 => {
                let inode = (e.source, meta.dev(), meta.ino());
                if let Some(first) = self.linked.get(&inode).cloned() {
                    h.set_entry_type(EntryType::Link);
                    h.set_size(0);
                    self.flush_deferred(target)?;
                    self.tar.append_link(&mut h, target, first)?;
                    self.entries += 1;
                } else {
                    self.linked.insert(inode, target.to_string());
                    h.set_size(meta.len());
                    let file = e.open()?;
                    self.append(target, &mut h, kiln_snapshot::Exact::new(file, meta.len()))?;
                }
            }
            EntryType::Regular => {
                h.set_size(meta.len());
                let file = e.open()?;
                self.append(target, &mut h, kiln_snapshot::Exact::new(file, meta.len()))?;
            }
            EntryType::Symlink => {
                let link = e.read_link()?;
                self.flush_deferred(target)?;
                self.tar.append_link(&mut h, target, link)?;
                self.entries += 1;
            }
            EntryType::Char | EntryType::Block => {
                h.set_device_major(rustix::fs::major(meta.rdev()))?;
                h.set_device_minor(rustix::fs::minor(meta.rdev()))?;
                self.append(target, &mut h, io::empty())?;
            }
            _ => self.append(target, &mut h, io::empty())?,
        }
        if many {
            self.written.insert(target.to_string());
        }
        Ok(())
    }

    /// Writes an entry after the deferred directories above it.
    fn append(&mut self, path: &str, h: &mut Header, data: impl Read) -> io::Result<()> {
        self.flush_deferred(path)?;
        if h.entry_type() == EntryType::Directory {
            // A trailing slash is how Docker and GNU tar spell directories (and kiln's diff).
            self.tar.append_data(h, format!("{path}/"), data)?;
        } else {
            self.tar.append_data(h, path, data)?;
        }
        self.entries += 1;
        Ok(())
    }

    fn flush_deferred(&mut self, path: &str) -> io::Result<()> {
        if self.deferred.is_empty() {
            return Ok(());
        }
        let mut end = 0;
        while let Some(i) = path[end..].find('/') {
            end += i;
            let dir = &path[..end];
            if let Some(mut h) = self.deferred.remove(dir) {
                self.tar
                    .append_data(&mut h, format!("{dir}/"), io::empty())?;
                self.entries += 1;
                self.written.insert(dir.to_string());
            }
            end += 1;
        }
        Ok(())
    }
}

/// Bytes handed to the pipe's thread at a time.
const CHUNK: usize = 1024 * 1024;

/// Writes into a blob from a thread of its own, so hashing and writing the blob overlap with
/// reading the context (each is about half the work). At most a few chunks are in flight.
struct Pipe {
    tx: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
    thread: Option<std::thread::JoinHandle<io::Result<BlobWriter>>>,
}

impl Pipe {
    fn new(mut blob: BlobWriter) -> Pipe {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
        let thread = std::thread::spawn(move || {
            for chunk in rx {
                io::Write::write_all(&mut blob, &chunk)?;
            }
            Ok(blob)
        });
        Pipe {
            tx: Some(tx),
            thread: Some(thread),
        }
    }

    /// Waits for every chunk to be written and returns the blob, not yet committed.
    fn finish(mut self) -> io::Result<BlobWriter> {
        self.tx.take();
        self.join()
    }

    fn join(&mut self) -> io::Result<BlobWriter> {
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(io::Error::other("the blob writer thread panicked")),
            None => Err(io::Error::other("the blob writer thread is gone")),
        }
    }
}

impl Drop for Pipe {
    /// An unfinished pipe waits for its thread, which drops (removes) the blob.
    fn drop(&mut self) {
        self.tx.take();
        let _ = self.join();
    }
}

impl io::Write for Pipe {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.tx.as_ref().map(|tx| tx.send(buf.to_vec())) {
            Some(Ok(())) => Ok(buf.len()),
            // The thread stopped on an error: report it (dropping the blob removes it).
            _ => {
                self.tx.take();
                Err(self
                    .join()
                    .err()
                    .unwrap_or_else(|| io::Error::other("the blob writer thread stopped")))
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A tar header as kiln's layer diff writes it: GNU format, numeric owners, whole seconds.
fn header(kind: EntryType, mode: u32, (uid, gid): (u32, u32), mtime: u64) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_uid(u64::from(uid));
    h.set_gid(u64::from(gid));
    h.set_mode(mode);
    h.set_mtime(mtime);
    h.set_size(0);
    h
}

fn mtime(m: &Metadata) -> u64 {
    u64::try_from(m.mtime()).unwrap_or(0)
}

fn join(dir: &str, name: &str) -> String {
    match (dir.is_empty(), name.is_empty()) {
        (_, true) => dir.to_string(),
        (true, false) => name.to_string(),
        (false, false) => format!("{dir}/{name}"),
    }
}

fn source_io(path: &Path) -> impl FnOnce(io::Error) -> SourceError + '_ {
    move |source| SourceError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Whether `path` carries extended attributes an overlay copy-up would take into the layer
/// (overlayfs hides its own `trusted.overlay.*` in the merged view).
fn has_xattrs(path: &Path) -> io::Result<bool> {
    let mut buf = [0u8; 1];
    match rustix::fs::llistxattr(path, &mut buf) {
        Ok(n) => Ok(n > 0),
        Err(rustix::io::Errno::RANGE) => Ok(true),
        Err(rustix::io::Errno::NOTSUP) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

impl crate::LlbWorker {
    /// A COPY from the context as a streamed layer on top of `step`'s input, or `None` when
    /// the stream cannot promise the file-based layer (the caller then copies files).
    pub(crate) async fn copy_stream(
        &self,
        op: &kiln_llb::CopyOp,
        context: &str,
        step: &crate::Step,
        owner: (u32, u32),
        progress: &kiln_progress::Vertex,
    ) -> Result<Option<crate::Value>> {
        let ctx = self.context(context)?.clone();
        let exclude = crate::exclude_matcher(&op.exclude)?;
        let chmod = op
            .chmod()
            .map_err(|e| Error::Manifest(format!("copy op: {e}")))?;
        let (content, lower, op2) = (self.content.clone(), step.rootfs(), op.clone());
        let outcome = tokio::task::spawn_blocking(move || {
            let req = Request {
                src_root: &ctx.dir,
                matcher: ctx.matcher.as_deref(),
                sources: &op2.sources,
                parents: op2.parents,
                exclude: exclude.as_ref(),
                dest: &op2.dest,
                owner,
                chmod: chmod.as_ref(),
                lower: &lower,
            };
            stream(&req, &content)
        })
        .await??;
        let mut layers = step.layers.clone();
        layers.push(match outcome {
            Outcome::Fallback(why) => {
                progress.status(&format!("copying files: {why}"));
                return Ok(None);
            }
            Outcome::Empty => crate::LayerRef {
                diff_id: None,
                blob: None,
                size: 0,
                media_type: String::new(),
                source: None,
            },
            // Not unpacked: `materialize` extracts it, checked against its diffID, when a
            // later step needs the files.
            Outcome::Layer { digest, size } => crate::LayerRef {
                diff_id: Some(digest.clone()),
                blob: Some(digest),
                size,
                media_type: kiln_oci::media_type::OCI_LAYER_TAR.to_string(),
                source: None,
            },
        });
        Ok(Some(crate::Value::Rootfs { layers }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    struct Fixture {
        _dir: tempfile::TempDir,
        ctx: std::path::PathBuf,
        lower: std::path::PathBuf,
        content: ContentStore,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let (ctx, lower) = (dir.path().join("ctx"), dir.path().join("lower"));
        fs::create_dir_all(&ctx).unwrap();
        fs::create_dir_all(&lower).unwrap();
        let content = ContentStore::open(dir.path().join("content")).unwrap();
        Fixture {
            _dir: dir,
            ctx,
            lower,
            content,
        }
    }

    fn run(f: &Fixture, sources: &[&str], dest: &str, owner: (u32, u32)) -> Outcome {
        let sources: Vec<String> = sources.iter().map(|s| s.to_string()).collect();
        let req = Request {
            src_root: &f.ctx,
            matcher: None,
            sources: &sources,
            parents: false,
            exclude: None,
            dest,
            owner,
            chmod: None,
            lower: &f.lower,
        };
        stream(&req, &f.content).unwrap()
    }

    /// (name, mode, uid) of each entry of the blob, in order.
    fn entries(f: &Fixture, digest: &Digest) -> Vec<(String, u32, u64)> {
        let bytes = f.content.read(digest).unwrap();
        assert_eq!(&kiln_oci::sha256(&bytes), digest, "digest is the diffID");
        let mut ar = tar::Archive::new(&bytes[..]);
        ar.entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().display().to_string(),
                    h.mode().unwrap(),
                    h.uid().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn new_destination_lists_its_parents_first() {
        let f = fixture();
        fs::create_dir_all(f.ctx.join("d/sub")).unwrap();
        fs::write(f.ctx.join("d/sub/x"), "x").unwrap();
        fs::set_permissions(f.ctx.join("d/sub/x"), fs::Permissions::from_mode(0o640)).unwrap();
        let Outcome::Layer { digest, .. } = run(&f, &["d"], "/a/b/", (7, 8)) else {
            panic!("expected a layer");
        };
        assert_eq!(
            entries(&f, &digest),
            [
                ("a/".into(), 0o755, 7),
                ("a/b/".into(), 0o755, 7),
                ("a/b/sub/".into(), 0o755, 7),
                ("a/b/sub/x".into(), 0o640, 7),
            ]
        );
    }

    #[test]
    fn unchanged_existing_dirs_are_listed_only_above_a_change() {
        let f = fixture();
        for d in ["etc", "home"] {
            fs::create_dir_all(f.lower.join(d)).unwrap();
            fs::create_dir_all(f.ctx.join(d)).unwrap();
            for p in [&f.lower, &f.ctx] {
                fs::set_permissions(p.join(d), fs::Permissions::from_mode(0o755)).unwrap();
            }
        }
        fs::write(f.ctx.join("etc/x"), "x").unwrap();
        let m = fs::metadata(f.lower.join("etc")).unwrap();
        let Outcome::Layer { digest, .. } = run(&f, &["."], "/", (m.uid(), m.gid())) else {
            panic!("expected a layer");
        };
        let names: Vec<String> = entries(&f, &digest).into_iter().map(|e| e.0).collect();
        assert_eq!(names, ["etc/", "etc/x"]);
    }

    #[test]
    fn empty_source_dir_into_an_existing_dir_is_no_layer() {
        let f = fixture();
        fs::create_dir_all(f.ctx.join("empty")).unwrap();
        fs::create_dir_all(f.lower.join("tmp")).unwrap();
        assert!(matches!(
            run(&f, &["empty"], "/tmp/", (0, 0)),
            Outcome::Empty
        ));
        assert_eq!(
            fs::read_dir(f.content.root().join("ingest"))
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn cases_the_stream_cannot_match_fall_back() {
        let f = fixture();
        fs::write(f.ctx.join("a"), "a").unwrap();
        std::os::unix::fs::symlink("tmp", f.lower.join("link")).unwrap();
        fs::create_dir_all(f.lower.join("tmp/a")).unwrap();
        fs::write(f.lower.join("file"), "f").unwrap();
        // Through a symlink, a file over a directory, a directory under a file.
        for dest in ["/link/", "/tmp/", "/file/sub/"] {
            assert!(
                matches!(run(&f, &["a"], dest, (0, 0)), Outcome::Fallback(_)),
                "{dest}"
            );
        }
        assert_eq!(
            fs::read_dir(f.content.root().join("ingest"))
                .unwrap()
                .count(),
            0
        );
    }
}
