//! One `Build` stream: the start message, the context sync into the session's mirror, secrets
//! asked for, the engine's build with its progress streamed back, client-side outputs sent
//! back, then the result or the error rendered as `kiln` prints it.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use kiln_engine::{BuildRequest, Engine};
use kiln_proto::v1::builder_server::Builder;
use kiln_proto::v1::{
    BuildError, BuildResult, BuildStart, ClientMessage, ContextRequest, FileRequest, InfoRequest,
    InfoResponse, OutputChunk, SecretRequest, ServerMessage, client_message, server_message,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::mirror::Mirror;

#[derive(Clone)]
pub struct BuilderService {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Arc<Engine>,
    sessions: PathBuf,
    debug: bool,
    /// One build at a time per session key: its mirror is synced then read by that build. The
    /// mirror's index stays loaded between builds (`None` until first used, or after a sync
    /// failed: then it is read again from disk, which starts over if the sync was cut short).
    sessions_open: parking_lot::Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Mirror>>>>>,
}

impl BuilderService {
    pub fn new(engine: Arc<Engine>, sessions: PathBuf, debug: bool) -> BuilderService {
        BuilderService {
            inner: Arc::new(Inner {
                engine,
                sessions,
                debug,
                sessions_open: Default::default(),
            }),
        }
    }
}

type Tx = mpsc::Sender<Result<ServerMessage, Status>>;

fn msg(m: server_message::Msg) -> Result<ServerMessage, Status> {
    Ok(ServerMessage { msg: Some(m) })
}

#[tonic::async_trait]
impl Builder for BuilderService {
    type BuildStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<ServerMessage, Status>> + Send>>;

    async fn build(
        &self,
        request: Request<Streaming<ClientMessage>>,
    ) -> Result<Response<Self::BuildStream>, Status> {
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let outcome = inner.session(inbound, &tx).await;
            let last = match outcome {
                Ok(Some(r)) => server_message::Msg::Result(r),
                Ok(None) => return,
                Err(rendered) => server_message::Msg::Error(BuildError { rendered }),
            };
            let _ = tx.send(msg(last)).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn info(&self, _: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        Ok(Response::new(InfoResponse {
            version: env!("CARGO_PKG_VERSION").into(),
            platforms: vec![kiln_oci::Platform::host().to_string()],
        }))
    }
}

/// The rendered text of a failure that is not the engine's own.
fn usage(text: impl std::fmt::Display) -> String {
    format!("error: {text}")
}

fn render(e: &(dyn std::error::Error + 'static)) -> String {
    kiln_engine::render_error(e)
}

/// Figures of one context sync, sent back in the result.
#[derive(Default)]
struct SyncFigures {
    entries: u64,
    files: u64,
    bytes: u64,
}

/// What the next client message must be, or the stream is broken.
async fn next(inbound: &mut Streaming<ClientMessage>) -> Result<client_message::Msg, String> {
    match inbound.message().await {
        Ok(Some(ClientMessage { msg: Some(m) })) => Ok(m),
        Ok(Some(ClientMessage { msg: None })) => Err(usage("an empty message from the client")),
        Ok(None) => Err(usage("the client went away")),
        Err(e) => Err(usage(format!("the client's stream failed: {e}"))),
    }
}

impl Inner {
    /// `Ok(None)`: the client is gone, nobody to answer.
    async fn session(
        &self,
        mut inbound: Streaming<ClientMessage>,
        tx: &Tx,
    ) -> Result<Option<BuildResult>, String> {
        let start = match next(&mut inbound).await? {
            client_message::Msg::Start(s) => s,
            _ => return Err(usage("the client did not start with a build request")),
        };
        if start.session_key.len() != 64
            || !start.session_key.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(usage("invalid session key: expected 64 hex digits"));
        }
        let scratch = tempdir_in(&self.sessions.join("builds"))?;
        let (mut req, client_outputs) = request(&start, scratch.path())?;

        let slot = self
            .sessions_open
            .lock()
            .entry(start.session_key.clone())
            .or_default()
            .clone();
        let mut held = slot.lock().await;
        let synced = std::time::Instant::now();
        let session_dir = self.sessions.join(&start.session_key);
        let mirror = match held.take() {
            Some(m) => m,
            None => Mirror::open(&session_dir).map_err(|e| render(&e))?,
        };
        let mirror = &mut *held.insert(mirror);
        let figures = match sync(mirror, &start, &mut inbound, tx).await {
            Ok(f) => f,
            Err(e) => {
                // Its state in memory may not be the disk's: read afresh next time.
                *held = None;
                return Err(e);
            }
        };
        req.context = mirror.context_dir();
        if self.debug {
            eprintln!(
                "kilnd: session {}: synced in {} ms: {} entries, {} files sent ({} bytes)",
                &start.session_key[..12],
                synced.elapsed().as_millis(),
                figures.entries,
                figures.files,
                figures.bytes
            );
        }
        for id in &start.secret_ids {
            let ask = server_message::Msg::Secret(SecretRequest { id: id.clone() });
            if tx.send(msg(ask)).await.is_err() {
                return Ok(None);
            }
            match next(&mut inbound).await? {
                client_message::Msg::Secret(s) if &s.id == id && s.error.is_empty() => {
                    // Held in memory only; the worker hands it to the RUN as embedded.
                    req.secrets.insert(s.id, s.value);
                }
                client_message::Msg::Secret(s) if &s.id == id => return Err(s.error),
                _ => return Err(usage(format!("the client did not send secret `{id}`"))),
            }
        }

        let progress = kiln_progress::Progress::new(
            kiln_progress::Mode::RawJson,
            Box::new(EventWriter {
                tx: tx.clone(),
                line: Vec::new(),
                rewrites: client_outputs
                    .iter()
                    .map(|(_, path, _, dest)| {
                        let to = serde_json::to_string(&dest.to_string_lossy()).unwrap_or_default();
                        (
                            path.to_string_lossy().into_owned(),
                            to.trim_matches('"').to_string(),
                        )
                    })
                    .collect(),
            }),
        );
        // The engine's build future is not `Send`: it runs on a blocking thread of its own,
        // driven by the daemon's runtime, and stops when `cancel` is dropped.
        let (cancel, canceled) = tokio::sync::oneshot::channel::<()>();
        let engine = self.engine.clone();
        let building = progress.clone();
        let handle = tokio::runtime::Handle::current();
        let mut job = tokio::task::spawn_blocking(move || {
            handle.block_on(async move {
                tokio::select! {
                    r = engine.build(req, &building) => Some(r),
                    _ = canceled => None,
                }
            })
        });
        let result = loop {
            tokio::select! {
                r = &mut job => break r,
                m = inbound.message() => match m {
                    Ok(Some(ClientMessage { msg: Some(client_message::Msg::Cancel(_)) })) => {
                        // Dropping the build stops its containers and removes its mounts.
                        drop(cancel);
                        let _ = job.await;
                        tokio::task::block_in_place(|| progress.finish());
                        return Err("ERROR: failed to solve: context canceled".into());
                    }
                    Ok(Some(_)) => {}
                    // A lost client: its build stops now.
                    Ok(None) | Err(_) => {
                        if self.debug {
                            eprintln!("kilnd: client gone, build canceled");
                        }
                        drop(cancel);
                        let _ = job.await;
                        tokio::task::block_in_place(|| progress.finish());
                        return Ok(None);
                    }
                }
            }
        };
        drop(cancel);
        let result = match result {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(None),
            Err(e) => return Err(usage(format!("the build's thread failed: {e}"))),
        };
        // Every event is sent before the result.
        tokio::task::block_in_place(|| progress.finish());
        let result = result.map_err(|e| render(&e))?;
        drop(self.engine.spawn_gc());
        for (index, path, dir, _) in client_outputs {
            if !send_output(index, &path, dir, tx).await? {
                return Ok(None);
            }
        }
        Ok(Some(BuildResult {
            manifest_digest: result.manifest.to_string(),
            manifest_media_type: result.manifest_media_type,
            manifest_size: result.manifest_size,
            image_id: result.image_id.to_string(),
            names: result.names,
            platform_json: serde_json::to_string(&result.platform).unwrap_or_default(),
            created: result.created,
            context_entries: figures.entries,
            context_files_sent: figures.files,
            context_bytes_sent: figures.bytes,
        }))
    }
}

fn tempdir_in(dir: &Path) -> Result<tempfile::TempDir, String> {
    std::fs::create_dir_all(dir)
        .and_then(|()| tempfile::tempdir_in(dir))
        .map_err(|e| {
            usage(format!(
                "creating a build directory in `{}`: {e}",
                dir.display()
            ))
        })
}

/// An output the daemon writes in its scratch directory and sends back: its index in the
/// client's list, where it is written, and whether it is a directory (sent as a tar stream).
type ClientOutput = (u32, PathBuf, bool, PathBuf);

/// The engine's request for `start`, every client-side output redirected into `scratch`.
fn request(
    start: &BuildStart,
    scratch: &Path,
) -> Result<(BuildRequest, Vec<ClientOutput>), String> {
    let mut tags = Vec::new();
    for t in &start.tags {
        tags.push(t.parse::<kiln_oci::Reference>().map_err(usage)?);
    }
    let mut outputs = kiln_engine::assemble_outputs(kiln_engine::OutputFlags {
        outputs: &start.outputs,
        push: start.push,
        load: start.load,
        annotations: &start.annotations,
        has_tags: !tags.is_empty(),
    })
    .map_err(|e| render(&e))?;
    let mut client_outputs = Vec::new();
    for (i, o) in outputs.iter_mut().enumerate() {
        if o.dest.is_none() {
            continue;
        }
        let dir = o.writes_directory();
        let path = scratch.join(format!("out-{i}"));
        let client_dest = o.dest.replace(path.clone()).unwrap_or_default();
        let index = u32::try_from(i).map_err(usage)?;
        client_outputs.push((index, path, dir, client_dest));
    }
    let mut platforms = Vec::new();
    for p in &start.platforms {
        let parsed: kiln_oci::Platform = p
            .parse()
            .map_err(|e| usage(format!("invalid --platform `{p}`: {e}")))?;
        if !platforms.contains(&parsed) {
            platforms.push(parsed);
        }
    }
    let platform = match platforms.as_slice() {
        [one] => Some(one.clone()),
        _ => None,
    };
    // The client's environment first, then the daemon's.
    let env = |key: &str| {
        start
            .cache_env
            .get(key)
            .cloned()
            .or_else(|| std::env::var(key).ok())
    };
    let cache_from = start
        .cache_from
        .iter()
        .map(|s| kiln_engine::CacheImport::parse_with_env(s, &env))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| render(&e))?;
    let cache_to = start
        .cache_to
        .iter()
        .map(|s| kiln_engine::CacheExport::parse_with_env(s, &env))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| render(&e))?;
    let run: kiln_engine::RunOpts = match start.run_opts_json.is_empty() {
        true => Default::default(),
        false => serde_json::from_slice(&start.run_opts_json)
            .map_err(|e| usage(format!("invalid run options from the client: {e}")))?,
    };
    if let Some(parent) = &run.cgroup_parent
        && (parent.is_empty() || !kiln_engine::valid_cgroup_parent(parent))
    {
        return Err(usage(format!("invalid --cgroup-parent `{parent}`")));
    }
    let name = start.dockerfile_name.as_str();
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(usage(format!("invalid Dockerfile name `{name}`")));
    }
    let req = BuildRequest {
        context: PathBuf::new(),
        // Only its file name is used (in progress and errors): the text comes with it.
        dockerfile: Some(PathBuf::from(name)),
        dockerfile_text: Some(start.dockerfile_text.clone()),
        context_archive: None,
        labels: start.labels.clone().into_iter().collect::<BTreeMap<_, _>>(),
        pull: start.pull,
        squash: start.squash,
        named_contexts: BTreeMap::new(),
        no_cache_filter: start.no_cache_filter.clone(),
        target: (!start.target.is_empty()).then(|| start.target.clone()),
        build_args: start.build_args.clone().into_iter().collect(),
        tags,
        outputs,
        no_cache: start.no_cache,
        platform,
        platforms,
        source_date_epoch: start.source_date_epoch,
        secrets: kiln_engine::Secrets::new(),
        ssh: kiln_engine::SshAgents::new(),
        run,
        cache_from,
        cache_to,
        // Not sent yet: the client refuses --offline and --pin with a remote builder.
        offline: false,
        pin: None,
    };
    Ok((req, client_outputs))
}

/// Asks for the client's listing, brings the mirror up to date and receives the bytes it
/// lacks.
async fn sync(
    mirror: &mut Mirror,
    start: &BuildStart,
    inbound: &mut Streaming<ClientMessage>,
    tx: &Tx,
) -> Result<SyncFigures, String> {
    let mut figures = SyncFigures::default();
    let mut entries = Vec::new();
    if start.has_context {
        if tx
            .send(msg(server_message::Msg::Context(ContextRequest {})))
            .await
            .is_err()
        {
            return Err(usage("the client went away"));
        }
        loop {
            match next(inbound).await? {
                client_message::Msg::Stats(s) => {
                    entries.extend(s.entries);
                    if s.done {
                        break;
                    }
                }
                _ => return Err(usage("the client did not send its context listing")),
            }
        }
    }
    figures.entries = entries.len() as u64;
    let wanted = mirror.plan(&entries).map_err(|e| render(&e))?;
    drop(entries);
    if !wanted.is_empty() {
        let ask = server_message::Msg::Files(FileRequest {
            paths: wanted.clone(),
        });
        if tx.send(msg(ask)).await.is_err() {
            return Err(usage("the client went away"));
        }
    }
    for path in &wanted {
        let (mut file, tmp) = mirror.start_file(path).map_err(|e| render(&e))?;
        loop {
            match next(inbound).await? {
                client_message::Msg::File(c) if &c.path == path => {
                    figures.bytes += c.data.len() as u64;
                    file.write_all(&c.data)
                        .map_err(|e| usage(format!("writing `{path}` in the mirror: {e}")))?;
                    if c.eof {
                        break;
                    }
                }
                _ => return Err(usage(format!("the client did not send `{path}`"))),
            }
        }
        figures.files += 1;
        mirror
            .commit_file(path, file, &tmp)
            .map_err(|e| render(&e))?;
    }
    mirror.finish().map_err(|e| render(&e))?;
    Ok(figures)
}

/// Sends an output written in the scratch directory; `false` when the client is gone.
async fn send_output(index: u32, path: &Path, dir: bool, tx: &Tx) -> Result<bool, String> {
    let file_path = match dir {
        false => path.to_path_buf(),
        true => {
            // A directory travels as a tar stream the client unpacks.
            let tar_path = path.with_extension("tar");
            let (src, dst) = (path.to_path_buf(), tar_path.clone());
            tokio::task::spawn_blocking(move || crate::pack::pack_dir(&src, &dst))
                .await
                .map_err(|e| usage(e.to_string()))?
                .map_err(|e| usage(format!("packing the output: {e}")))?;
            tar_path
        }
    };
    let mut f = std::fs::File::open(&file_path)
        .map_err(|e| usage(format!("reading the output `{}`: {e}", file_path.display())))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| usage(format!("reading the output: {e}")))?;
        let chunk = OutputChunk {
            index,
            data: buf[..n].to_vec(),
            eof: n == 0,
        };
        if tx
            .send(msg(server_message::Msg::Output(chunk)))
            .await
            .is_err()
        {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

/// The progress renderer's output: each `--progress=rawjson` line becomes one message.
struct EventWriter {
    tx: Tx,
    line: Vec<u8>,
    /// Output paths in the build's scratch directory and the client's `dest` (JSON-escaped)
    /// to show instead, so `sending tarball to DEST` reads as embedded.
    rewrites: Vec<(String, String)>,
}

impl std::io::Write for EventWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for &b in buf {
            if b == b'\n' {
                let mut line = std::mem::take(&mut self.line);
                for (from, to) in &self.rewrites {
                    if let Ok(text) = std::str::from_utf8(&line)
                        && text.contains(from.as_str())
                    {
                        line = text.replace(from.as_str(), to).into_bytes();
                    }
                }
                // Written from the renderer's own thread, never a runtime's.
                let _ = self
                    .tx
                    .blocking_send(msg(server_message::Msg::Progress(line)));
            } else {
                self.line.push(b);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
