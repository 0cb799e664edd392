//! A tarball as the build context, from stdin (`kiln build - < ctx.tar.gz`) or a URL (`kiln
//! build https://host/ctx.tar.gz`), and a URL of a plain-text Dockerfile (`kiln build
//! https://host/Dockerfile`, `-f https://host/Dockerfile`).
//!
//! The archive is decompressed as it is read and unpacked, in the same pass, into a temporary
//! directory under the data dir's `tmp/` with the layer applier read as BuildKit unpacks a
//! context (`kiln_snapshot::extract_context`): that directory is the context for the build and
//! is removed afterwards (or, after a kill, when the next engine opens the data dir alone).

use std::fmt;
use std::io::{self, BufReader, Read, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use kiln_progress::Progress;

use crate::build::BuildRequest;
use crate::{Engine, Error, Result, io};

/// How many bytes decide between an archive and a Dockerfile, as buildx peeks stdin.
pub const SNIFF_LEN: usize = 1024;

/// Redirects a download follows, as Go's HTTP client (BuildKit's) does.
const MAX_REDIRECTS: usize = 10;

/// The compression of an archive, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Bzip2,
    Xz,
    Zstd,
}

/// Whether `head` (the first [`SNIFF_LEN`] bytes, or all there is) starts an archive, and how it
/// is compressed: a compression's magic bytes, or a tar header with a valid checksum. Anything
/// else is read as a Dockerfile, as docker reads stdin.
pub fn sniff_archive(head: &[u8]) -> Option<Compression> {
    const MAGIC: [(&[u8], Compression); 4] = [
        (&[0x1f, 0x8b, 0x08], Compression::Gzip),
        (b"BZh", Compression::Bzip2),
        (&[0xfd, b'7', b'z', b'X', b'Z', 0x00], Compression::Xz),
        (&[0x28, 0xb5, 0x2f, 0xfd], Compression::Zstd),
    ];
    if let Some((_, c)) = MAGIC.iter().find(|(m, _)| head.starts_with(m)) {
        return Some(*c);
    }
    is_tar_header(head).then_some(Compression::None)
}

/// A valid checksum in the first 512-byte block: the `ustar` magic alone is not enough, and
/// v7 archives lack it.
fn is_tar_header(head: &[u8]) -> bool {
    let Some(block) = head.get(..512) else {
        return false;
    };
    if block.iter().all(|b| *b == 0) {
        return false;
    }
    let field = String::from_utf8_lossy(&block[148..156]);
    let Ok(expected) = u32::from_str_radix(field.trim_matches(|c: char| c == ' ' || c == '\0'), 8)
    else {
        return false;
    };
    let sum: u32 = block
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u32::from(*b)
            }
        })
        .sum();
    sum == expected
}

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

    fn http_client(&self) -> Result<reqwest::Client> {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::limited(MAX_REDIRECTS))
            .build()
            .map_err(|e| Error::Usage(format!("cannot make an HTTP client: {e}")))
    }

    /// Downloads `url` whole into memory (a Dockerfile), within the size cap.
    async fn download(&self, url: &str) -> Result<Fetched> {
        let mut out = Vec::new();
        let mut fetched = self.fetch(url, &mut out).await?;
        fetched.head = out;
        Ok(fetched)
    }

    /// Downloads `url` into the file `path`, within the size cap.
    async fn download_to(&self, url: &str, path: &Path) -> Result<Fetched> {
        let mut file =
            std::fs::File::create(path).map_err(io(format!("creating `{}`", path.display())))?;
        self.fetch(url, &mut file).await
    }

    async fn fetch(&self, url: &str, out: &mut dyn io::Write) -> Result<Fetched> {
        let failed = |e: reqwest::Error| Error::Remote {
            url: url.to_string(),
            reason: error_chain(&e),
        };
        let mut resp = self.http_client()?.get(url).send().await.map_err(failed)?;
        let status = resp.status();
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if !status.is_success() {
            return Err(Error::Remote {
                url: url.to_string(),
                reason: format!("the server answered {status}"),
            });
        }
        let cap = self.remote_context_max_bytes;
        let too_big = || Error::Remote {
            url: url.to_string(),
            reason: format!(
                "larger than {} (`remote-context-max-bytes` in the config file)",
                human_bytes(cap)
            ),
        };
        if resp.content_length().is_some_and(|n| n > cap) {
            return Err(too_big());
        }
        let mut head = Vec::new();
        let mut size = 0u64;
        while let Some(chunk) = resp.chunk().await.map_err(failed)? {
            size += chunk.len() as u64;
            if size > cap {
                return Err(too_big());
            }
            if head.len() < SNIFF_LEN {
                let take = (SNIFF_LEN - head.len()).min(chunk.len());
                head.extend_from_slice(&chunk[..take]);
            }
            out.write_all(&chunk)
                .map_err(io(format!("saving the download of `{url}`")))?;
        }
        out.flush()
            .map_err(io(format!("saving the download of `{url}`")))?;
        Ok(Fetched {
            head,
            size,
            status: status.as_u16(),
            content_type,
        })
    }
}

/// What a download brought: its first bytes (all of them for [`Engine::download`]).
struct Fetched {
    head: Vec<u8>,
    size: u64,
    status: u16,
    content_type: Option<String>,
}

/// The text of a downloaded file that is not an archive, read as a Dockerfile, unless it is an
/// HTML page (an error page served with 200, say) or not text at all. Whatever the server calls
/// it, archive magic decided first (docker's `application/octet-stream` case); BuildKit would
/// parse an HTML page as a Dockerfile and fail on `<html>`.
fn plain_text(url: &str, fetched: &Fetched, body: Vec<u8>) -> Result<String> {
    let mime = fetched
        .content_type
        .as_deref()
        .and_then(|c| c.split(';').next())
        .map(|c| c.trim().to_ascii_lowercase());
    let start = String::from_utf8_lossy(&fetched.head[..fetched.head.len().min(64)])
        .trim_start()
        .to_ascii_lowercase();
    let html = mime.as_deref() == Some("text/html")
        || start.starts_with("<!doctype html")
        || start.starts_with("<html");
    if html {
        return Err(Error::Remote {
            url: url.to_string(),
            reason: format!(
                "the server answered {} with an HTML page ({}), not a Dockerfile or a tar archive",
                fetched.status,
                mime.as_deref().unwrap_or("no Content-Type")
            ),
        });
    }
    String::from_utf8(body).map_err(|_| Error::Remote {
        url: url.to_string(),
        reason: format!(
            "neither a tar archive nor a text Dockerfile (Content-Type {})",
            mime.as_deref().unwrap_or("not given")
        ),
    })
}

/// Decompresses `reader` as its first bytes say into the file `spool`; returns the bytes read
/// and whether the tar holds a symlink or hardlink. `name` says where the archive came from.
fn spool_tar(reader: Box<dyn Read + Send>, spool: &Path, name: &str) -> Result<(u64, bool)> {
    let counted = Counted {
        inner: reader,
        n: Arc::new(std::sync::atomic::AtomicU64::new(0)),
    };
    let n = counted.n.clone();
    let (head, reader) = peek(Box::new(counted), SNIFF_LEN)
        .map_err(io(format!("reading the context archive from {name}")))?;
    let compression = sniff_archive(&head)
        .ok_or_else(|| Error::Usage(format!("{name} is neither a tar archive nor a Dockerfile")))?;
    let bad = |e: io::Error| Error::ContextArchive {
        name: name.to_string(),
        source: Box::new(e),
    };
    let (head, mut tar) = peek(decompress(reader, compression), 512).map_err(bad)?;
    if !is_tar_header(&head) {
        return Err(bad(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a tar archive once decompressed",
        )));
    }
    let file =
        std::fs::File::create(spool).map_err(io(format!("creating `{}`", spool.display())))?;
    let mut out = io::BufWriter::with_capacity(1 << 20, file);
    io::copy(&mut tar, &mut out).map_err(bad)?;
    out.flush().map_err(bad)?;
    // One pass over the headers (seeking past the data) to find links, and to refuse a tar
    // cut short before anything is unpacked.
    let file = std::fs::File::open(spool).map_err(io(format!("reading `{}`", spool.display())))?;
    let mut archive = tar::Archive::new(file);
    let mut links = false;
    for entry in archive.entries_with_seek().map_err(bad)? {
        let entry = entry.map_err(bad)?;
        links |= matches!(
            entry.header().entry_type(),
            tar::EntryType::Symlink | tar::EntryType::Link
        );
    }
    Ok((n.load(std::sync::atomic::Ordering::Relaxed), links))
}

/// Unpacks from the spooled tar into `dir` the entries `select` picks.
fn unpack_spool(spool: &Path, dir: &Path, name: &str, select: &Selection) -> Result<()> {
    let file = std::fs::File::open(spool).map_err(io(format!("reading `{}`", spool.display())))?;
    let reader = BufReader::with_capacity(1 << 20, file);
    let keep = |comps: &[std::ffi::OsString]| match select {
        Selection::All => true,
        Selection::Prefixes(prefixes) => prefixes.iter().any(|p| {
            let n = p.len().min(comps.len());
            p[..n].iter().zip(&comps[..n]).all(|(a, b)| a.as_str() == b)
        }),
    };
    kiln_snapshot::extract_context_filtered(reader, dir, &keep).map_err(|source| {
        Error::ContextArchive {
            name: name.to_string(),
            source: Box::new(source),
        }
    })
}

struct Counted {
    inner: Box<dyn Read + Send>,
    n: Arc<std::sync::atomic::AtomicU64>,
}

impl Read for Counted {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.n
            .fetch_add(k as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(k)
    }
}

/// The first `len` bytes of `reader` (fewer at its end) and a reader that yields all of it.
pub fn peek(
    mut reader: Box<dyn Read + Send>,
    len: usize,
) -> io::Result<(Vec<u8>, Box<dyn Read + Send>)> {
    let mut head = Vec::with_capacity(len);
    (&mut reader).take(len as u64).read_to_end(&mut head)?;
    let again = io::Cursor::new(head.clone()).chain(reader);
    Ok((head, Box::new(again)))
}

fn decompress(reader: Box<dyn Read + Send>, c: Compression) -> Box<dyn Read + Send> {
    const BUF: usize = 256 << 10;
    match c {
        Compression::None => Box::new(BufReader::with_capacity(BUF, reader)),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(BufReader::with_capacity(
            BUF, reader,
        ))),
        Compression::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(BufReader::with_capacity(
            BUF, reader,
        ))),
        Compression::Zstd => match zstd::stream::read::Decoder::new(reader) {
            Ok(d) => Box::new(d),
            Err(e) => Box::new(Failed(Some(e))),
        },
        Compression::Xz => match XzReader::spawn(reader) {
            Ok(r) => Box::new(r),
            Err(e) => Box::new(Failed(Some(e))),
        },
    }
}

/// A reader that fails once with the error that stopped it being made.
struct Failed(Option<io::Error>);

impl Read for Failed {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(self
            .0
            .take()
            .unwrap_or_else(|| io::Error::other("decompression failed")))
    }
}

/// xz decompressed on a thread into a pipe (lzma-rs decodes xz only from reader to writer);
/// at the pipe's end the thread's error, if any, is this reader's.
struct XzReader {
    pipe: io::PipeReader,
    thread: Option<std::thread::JoinHandle<io::Result<()>>>,
}

impl XzReader {
    fn spawn(reader: Box<dyn Read + Send>) -> io::Result<XzReader> {
        let (pipe, mut writer) = io::pipe()?;
        let thread = std::thread::spawn(move || {
            let mut input = BufReader::with_capacity(256 << 10, reader);
            lzma_rs::xz_decompress(&mut input, &mut writer)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("xz: {e}")))
        });
        Ok(XzReader {
            pipe,
            thread: Some(thread),
        })
    }
}

impl Read for XzReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.pipe.read(buf)?;
        if n == 0
            && !buf.is_empty()
            && let Some(t) = self.thread.take()
        {
            t.join()
                .map_err(|_| io::Error::other("the xz decoder panicked"))??;
        }
        Ok(n)
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
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

    fn tar_bytes() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o644);
        h.set_path("Dockerfile").unwrap();
        h.set_cksum();
        b.append(&h, &b"abc"[..]).unwrap();
        b.into_inner().unwrap()
    }

    fn unpack_all(bytes: &[u8], dir: &Path, what: &str) -> Result<()> {
        let spool = dir.join("spool.tar");
        let ctx = dir.join("ctx");
        std::fs::create_dir(&ctx).unwrap();
        spool_tar(Box::new(io::Cursor::new(bytes.to_vec())), &spool, what)?;
        unpack_spool(&spool, &ctx, what, &Selection::All)?;
        std::fs::rename(ctx.join("Dockerfile"), dir.join("Dockerfile")).unwrap();
        Ok(())
    }

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

    #[test]
    fn sniffs_archives_by_magic_and_dockerfiles_are_not_archives() {
        assert_eq!(sniff_archive(&tar_bytes()), Some(Compression::None));
        assert_eq!(
            sniff_archive(&[0x1f, 0x8b, 0x08, 0]),
            Some(Compression::Gzip)
        );
        assert_eq!(sniff_archive(b"BZh91AY"), Some(Compression::Bzip2));
        assert_eq!(
            sniff_archive(&[0xfd, b'7', b'z', b'X', b'Z', 0, 0]),
            Some(Compression::Xz)
        );
        assert_eq!(
            sniff_archive(&[0x28, 0xb5, 0x2f, 0xfd, 1]),
            Some(Compression::Zstd)
        );
        assert_eq!(sniff_archive(b"FROM busybox\nRUN true\n"), None);
        assert_eq!(sniff_archive(&[0u8; 1024]), None);
        let mut bad = tar_bytes();
        bad[0] ^= 1;
        assert_eq!(sniff_archive(&bad), None, "a wrong checksum is not a tar");
    }

    #[test]
    fn every_compression_unpacks_and_a_truncated_stream_is_an_error() {
        let tar = tar_bytes();
        let gz = {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            io::Write::write_all(&mut e, &tar).unwrap();
            e.finish().unwrap()
        };
        let bz = {
            let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
            io::Write::write_all(&mut e, &tar).unwrap();
            e.finish().unwrap()
        };
        let xz = {
            let mut out = Vec::new();
            lzma_rs::xz_compress(&mut &tar[..], &mut out).unwrap();
            out
        };
        let zst = zstd::encode_all(&tar[..], 1).unwrap();
        for (what, bytes) in [
            ("tar", &tar),
            ("gz", &gz),
            ("bz2", &bz),
            ("xz", &xz),
            ("zst", &zst),
        ] {
            let dir = tempfile::tempdir().unwrap();
            unpack_all(bytes, dir.path(), what).unwrap();
            assert_eq!(
                std::fs::read(dir.path().join("Dockerfile")).unwrap(),
                b"abc",
                "{what}"
            );
            if what != "tar" {
                let dir = tempfile::tempdir().unwrap();
                let cut = bytes[..bytes.len() - 8].to_vec();
                let r = unpack_all(&cut, dir.path(), what);
                assert!(r.is_err(), "{what}: a truncated stream was accepted");
            }
        }
    }
}
