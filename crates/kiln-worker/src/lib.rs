//! The worker: what each build-graph op means. Root filesystems are chains of layers; a step
//! mounts its input chain as an overlay, works in the merged view (runc for RUN, file copies
//! for COPY and WORKDIR), and the overlay's upper dir becomes the step's new layer. Image layers
//! are pulled and unpacked only when a step needs their files, so a fully cached build touches
//! neither the registry's blobs nor the disk.

mod add;
pub mod cachemount;
pub mod cdi;
mod copystream;
mod fsutil;
pub mod git;
mod hashcache;

pub use hashcache::FileHashes;
mod ssh;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use kiln_content::ContentStore;
use kiln_executor::{ExitStatus, ProcessSpec, RunRequest, RuncExecutor, Stdio};
use kiln_ignore::Matcher;
use kiln_llb::{
    CopyOp, Definition, ExecOp, ExecSandbox, GitOp, HttpOp, MkdirOp, MkfileOp, NetworkMode, Op,
    SecretMount, SecurityMode,
};
use kiln_oci::{Descriptor, Digest, ImageManifest, MediaType, Reference};
use kiln_progress::{Stream, Vertex};
use kiln_snapshot::{
    Compression, LayerStore, OverlayMount, mount_scratch_overlay, sync_filesystem,
};
use kiln_solver::{Graph, Solved, WorkerError};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

pub use fsutil::{Owner, SourceError, resolve_in_root};
pub use ssh::{SshAgents, SshError};

/// The hostname RUN steps see, as in BuildKit.
pub const SANDBOX_HOSTNAME: &str = "buildkitsandbox";

/// The solver's view of a build definition.
pub struct LlbGraph {
    pub def: Definition,
    inputs: Vec<Vec<usize>>,
}

impl LlbGraph {
    pub fn new(def: Definition) -> Self {
        let inputs = def
            .nodes()
            .map(|(_, n)| n.inputs.iter().map(|i| i.0).collect())
            .collect();
        Self { def, inputs }
    }
}

impl Graph for LlbGraph {
    fn inputs(&self, vertex: usize) -> &[usize] {
        &self.inputs[vertex]
    }

    fn name(&self, vertex: usize) -> &str {
        &self.def.node(kiln_llb::NodeId(vertex)).name
    }
}

/// One layer of a root filesystem.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerRef {
    /// None when the step changed nothing: the layer is left out of the image.
    pub diff_id: Option<Digest>,
    pub blob: Option<Digest>,
    pub size: u64,
    pub media_type: String,
    /// Where to pull the blob from when it is not in the content store.
    pub source: Option<String>,
}

/// What a vertex solves to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Value {
    Rootfs { layers: Vec<LayerRef> },
    Context,
}

impl Value {
    pub fn layers(&self) -> &[LayerRef] {
        match self {
            Value::Rootfs { layers } => layers,
            Value::Context => &[],
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("process \"{command}\" did not complete successfully: {status}")]
    ExecFailed { command: String, status: ExitStatus },
    #[error("failed to compute cache key")]
    Source(#[source] SourceError),
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("secret `{0}` not found")]
    SecretNotFound(String),
    #[error("no SSH agent `{0}` was given (`kiln build --ssh {0}`)")]
    SshNotFound(String),
    #[error("no build context was given")]
    NoContext,
    #[error(transparent)]
    Device(#[from] cdi::DeviceError),
    #[error("invalid image reference `{0}`")]
    Reference(String),
    #[error("invalid manifest for `{0}`")]
    Manifest(String),
    #[error(transparent)]
    Registry(#[from] kiln_registry::Error),
    #[error(transparent)]
    Content(#[from] kiln_content::Error),
    #[error(transparent)]
    Snapshot(#[from] kiln_snapshot::Error),
    #[error(transparent)]
    Executor(#[from] kiln_executor::Error),
    #[error("background task failed")]
    Join(#[from] tokio::task::JoinError),
    #[error("failed to download `{url}`")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("failed to download `{url}`: HTTP status {status}")]
    HttpStatus { url: String, status: u16 },
    #[error("failed to fetch Git repository `{remote}`")]
    Git {
        remote: String,
        #[source]
        source: git::GitError,
    },
    #[error("digest mismatch for `{url}`: expected {expected}, got {actual}")]
    ChecksumMismatch {
        url: String,
        expected: String,
        actual: Digest,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// The build context: a directory on this machine and the .dockerignore rules that hide parts of it.
#[derive(Clone)]
pub struct Context {
    pub dir: PathBuf,
    pub matcher: Option<Arc<Matcher>>,
}

pub struct LlbWorker {
    content: ContentStore,
    layers: LayerStore,
    executor: Arc<RuncExecutor>,
    registry: Arc<kiln_registry::Client>,
    context: Option<Context>,
    scratch: PathBuf,
    unpacking: parking_lot::Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
    http: reqwest::Client,
    /// Downloads made to compute a cache key, reused when the step runs.
    downloads: parking_lot::Mutex<HashMap<String, Arc<add::Download>>>,
    /// Git refs resolved to commits for a cache key, by op, reused when the step runs so the
    /// checkout is the commit the key names.
    git_resolved: parking_lot::Mutex<HashMap<String, git::Resolved>>,
    secrets: Secrets,
    /// Remembered digests of context files; `None` hashes every file every time.
    hashes: Option<Arc<FileHashes>>,
    /// `KEY=value` proxy settings every RUN gets unless its env sets the key.
    proxy_env: Vec<String>,
    ssh: SshAgents,
    /// COPY from the context streams its layer (copystream.rs) instead of writing files.
    copy_stream: bool,
}

impl LlbWorker {
    /// `scratch`: a directory for per-step overlay dirs, on the same filesystem as `layers`.
    pub fn new(
        content: ContentStore,
        layers: LayerStore,
        executor: Arc<RuncExecutor>,
        registry: Arc<kiln_registry::Client>,
        context: Option<Context>,
        scratch: PathBuf,
    ) -> Self {
        Self {
            content,
            layers,
            executor,
            registry,
            context,
            scratch,
            unpacking: Default::default(),
            http: reqwest::Client::new(),
            downloads: Default::default(),
            git_resolved: Default::default(),
            secrets: Secrets::default(),
            hashes: None,
            proxy_env: Vec::new(),
            ssh: SshAgents::default(),
            copy_stream: true,
        }
    }

    /// Whether a COPY from the context streams its layer without creating files (the default)
    /// or copies files into an overlay like other steps.
    pub fn with_copy_stream(mut self, on: bool) -> Self {
        self.copy_stream = on;
        self
    }

    /// Remembers context files' digests in `table` across builds (see [`FileHashes`]).
    pub fn with_file_hashes(mut self, table: PathBuf) -> Self {
        self.hashes = Some(Arc::new(FileHashes::new(table)));
        self
    }

    /// Writes the remembered digests back; a failure only costs rehashing next time.
    pub fn save_file_hashes(&self) -> std::io::Result<()> {
        self.hashes.as_ref().map_or(Ok(()), |h| h.save())
    }

    /// Proxy variables (`HTTP_PROXY=...`) for every RUN, kept out of cache keys as BuildKit
    /// keeps its proxy env out of them.
    pub fn with_proxy_env(mut self, env: Vec<String>) -> Self {
        self.proxy_env = env;
        self
    }

    /// The secrets `RUN --mount=type=secret` may use.
    pub fn with_secrets(mut self, secrets: Secrets) -> Self {
        self.secrets = secrets;
        self
    }

    /// The agents `RUN --mount=type=ssh` may use.
    pub fn with_ssh(mut self, ssh: SshAgents) -> Self {
        self.ssh = ssh;
        self
    }

    fn context(&self) -> Result<&Context> {
        self.context.as_ref().ok_or(Error::NoContext)
    }

    async fn key(
        &self,
        graph: &LlbGraph,
        vertex: usize,
        inputs: &[Solved<Value>],
    ) -> Result<Digest> {
        let node = graph.def.node(kiln_llb::NodeId(vertex));
        if let Op::Git(op) = &node.op {
            return self.git_key(op).await;
        }
        let mut h = Sha256::new();
        h.update(serde_json::to_vec(&node.op).expect("ops serialise"));
        for input in inputs {
            h.update(input.cache_key.as_ref().as_bytes());
        }
        // A COPY from the context is keyed by the content it selects, never by mtimes.
        if let (Op::Copy(copy), Some(Value::Context)) = (&node.op, inputs.get(1).map(|i| &i.value))
        {
            let ctx = self.context()?.clone();
            let copy = copy.clone();
            let hashes = self.hashes.clone();
            let sum = tokio::task::spawn_blocking(move || {
                context_checksum(
                    &ctx,
                    &copy.sources,
                    copy.parents,
                    &copy.exclude,
                    hashes.as_deref(),
                )
            })
            .await??;
            h.update(sum);
        }
        // A bind mount of the context is keyed by the content it exposes, as COPY is.
        if let Op::Exec(exec) = &node.op {
            for m in &exec.mounts {
                if let Some(Value::Context) = inputs.get(m.input).map(|i| &i.value) {
                    let ctx = self.context()?.clone();
                    let sources = vec![context_source(&m.source)];
                    let hashes = self.hashes.clone();
                    let sum = tokio::task::spawn_blocking(move || {
                        context_checksum(&ctx, &sources, false, &[], hashes.as_deref())
                    })
                    .await??;
                    h.update(sum);
                }
            }
        }
        // Without a checksum a download is keyed by its content, as BuildKit does.
        if let Op::Http(http) = &node.op
            && http.checksum.is_none()
        {
            let d = self.download(http).await?;
            h.update(kiln_oci::sha256(&d.data).as_ref().as_bytes());
        }
        Ok(kiln_oci::sha256(&h.finalize()))
    }

    async fn run(
        &self,
        graph: &LlbGraph,
        vertex: usize,
        inputs: &[Solved<Value>],
        progress: &Vertex,
    ) -> Result<Value> {
        let node = graph.def.node(kiln_llb::NodeId(vertex));
        match &node.op {
            Op::Scratch => Ok(Value::Rootfs { layers: Vec::new() }),
            Op::Local { .. } => {
                self.context()?;
                Ok(Value::Context)
            }
            Op::Image { reference, .. } => self.image(reference).await,
            Op::Exec(exec) => self.exec(exec, inputs, progress).await,
            Op::Mkfile(mkfile) => self.mkfile(mkfile, progress).await,
            Op::Http(http) => self.http(http, progress).await,
            Op::Git(op) => self.git(op, progress).await,
            Op::Copy(copy) => {
                self.copy(copy, inputs[0].value.layers(), &inputs[1].value, progress)
                    .await
            }
            Op::Mkdir(mkdir) => self.mkdir(mkdir, inputs[0].value.layers(), progress).await,
        }
    }

    /// The layer chain of an image pinned by digest; nothing is pulled yet.
    pub async fn image(&self, pinned: &str) -> Result<Value> {
        let reference: Reference = pinned
            .parse()
            .map_err(|_| Error::Reference(pinned.to_string()))?;
        let digest = reference
            .digest()
            .and_then(|d| kiln_oci::parse_digest(d).ok())
            .ok_or_else(|| Error::Reference(pinned.to_string()))?;
        let bytes = match self.content.read(&digest) {
            Ok(b) => b,
            Err(_) => {
                let resolved = self
                    .registry
                    .resolve(&reference, &kiln_oci::Platform::host())
                    .await?;
                self.content
                    .put(&resolved.manifest_bytes, Some(&resolved.digest))?;
                self.content.put(&resolved.config_bytes, None)?;
                resolved.manifest_bytes
            }
        };
        let manifest: ImageManifest =
            serde_json::from_slice(&bytes).map_err(|_| Error::Manifest(pinned.to_string()))?;
        let config_digest = manifest.config().digest().clone();
        let config_bytes = match self.content.read(&config_digest) {
            Ok(b) => b,
            Err(_) => {
                let mut w = self.content.async_writer()?;
                self.registry
                    .fetch_blob(&reference, manifest.config(), &mut w)
                    .await?;
                w.commit(Some(&config_digest)).await?;
                self.content.read(&config_digest)?
            }
        };
        let config: kiln_oci::ImageConfig = serde_json::from_slice(&config_bytes)
            .map_err(|_| Error::Manifest(pinned.to_string()))?;
        if config.rootfs.diff_ids.len() != manifest.layers().len() {
            return Err(Error::Manifest(pinned.to_string()));
        }
        let mut layers = Vec::new();
        for (desc, diff_id) in manifest.layers().iter().zip(&config.rootfs.diff_ids) {
            layers.push(LayerRef {
                diff_id: Some(
                    kiln_oci::parse_digest(diff_id)
                        .map_err(|_| Error::Manifest(pinned.to_string()))?,
                ),
                blob: Some(desc.digest().clone()),
                size: desc.size(),
                media_type: desc.media_type().to_string(),
                source: Some(pinned.to_string()),
            });
        }
        Ok(Value::Rootfs { layers })
    }

    /// Makes sure every layer of a chain is unpacked; returns their dirs, topmost first.
    pub async fn materialize(
        &self,
        layers: &[LayerRef],
        progress: &Vertex,
    ) -> Result<Vec<PathBuf>> {
        let mut dirs = Vec::new();
        for layer in layers {
            let Some(diff_id) = &layer.diff_id else {
                continue;
            };
            if !self.layers.contains(diff_id) {
                let lock = self
                    .unpacking
                    .lock()
                    .entry(diff_id.clone())
                    .or_default()
                    .clone();
                let _guard = lock.lock().await;
                if !self.layers.contains(diff_id) {
                    self.unpack(layer, diff_id, progress).await?;
                }
            }
            dirs.push(self.layers.dir(diff_id));
        }
        dirs.reverse();
        // Two steps with identical changes share a layer dir; overlayfs refuses a lowerdir
        // listed twice (ELOOP). The topmost copy alone gives the same view.
        let mut seen = std::collections::HashSet::new();
        dirs.retain(|d| seen.insert(d.clone()));
        Ok(dirs)
    }

    async fn unpack(&self, layer: &LayerRef, diff_id: &Digest, progress: &Vertex) -> Result<()> {
        let blob = layer
            .blob
            .clone()
            .ok_or_else(|| Error::Manifest(format!("layer {diff_id} has no blob")))?;
        if !self.content.contains(&blob) {
            let source = layer
                .source
                .as_deref()
                .ok_or_else(|| Error::Content(kiln_content::Error::NotFound(blob.clone())))?;
            let reference: Reference = source
                .parse()
                .map_err(|_| Error::Reference(source.to_string()))?;
            progress.status(&format!("pulling {blob}"));
            let desc = Descriptor::new(
                MediaType::from(layer.media_type.as_str()),
                layer.size,
                blob.clone(),
            );
            let mut w = self.content.async_writer()?;
            self.registry.fetch_blob(&reference, &desc, &mut w).await?;
            w.commit(Some(&blob)).await?;
        }
        progress.status(&format!("extracting {blob}"));
        let (content, layers, media_type, diff_id) = (
            self.content.clone(),
            self.layers.clone(),
            layer.media_type.clone(),
            diff_id.clone(),
        );
        tokio::task::spawn_blocking(move || -> Result<()> {
            let file = content.open_blob(&blob)?;
            layers.unpack(std::io::BufReader::new(file), &media_type, Some(&diff_id))?;
            Ok(())
        })
        .await??;
        Ok(())
    }

    /// Mounts `layers` with a fresh upper dir for a step.
    pub async fn prepare(&self, layers: &[LayerRef], progress: &Vertex) -> Result<Step> {
        let lowers = self.materialize(layers, progress).await?;
        self.mount_step(&lowers, layers.to_vec())
    }

    /// An overlay with a fresh upper dir over plain directories (topmost first).
    fn overlay(&self, lowers: &[PathBuf]) -> Result<Step> {
        self.mount_step(lowers, Vec::new())
    }

    /// A step directory with its overlay of `lowers` mounted; `layers` is the chain they are.
    fn mount_step(&self, lowers: &[PathBuf], layers: Vec<LayerRef>) -> Result<Step> {
        let dir = self
            .scratch
            .join(format!("step-{:016x}", rand::random::<u64>()));
        let (upper, work, merged) = (dir.join("upper"), dir.join("work"), dir.join("merged"));
        for d in [&upper, &work, &merged] {
            fs::create_dir_all(d).map_err(io(format!("creating `{}`", d.display())))?;
        }
        let mut step = Step {
            dir,
            mount: None,
            layers,
        };
        step.mount = Some(mount_scratch_overlay(lowers, &upper, &work, &merged)?);
        Ok(step)
    }

    /// Unmounts the step and turns its upper dir into the next layer of the chain.
    async fn commit(&self, mut step: Step) -> Result<Value> {
        if let Some(m) = step.mount.take() {
            m.unmount()?;
        }
        let upper = step.dir.join("upper");
        let lowers: Vec<PathBuf> = step
            .layers
            .iter()
            .rev()
            .filter_map(|l| l.diff_id.as_ref().map(|d| self.layers.dir(d)))
            .collect();
        fsutil::prune_unchanged_dirs(&upper, &lowers).map_err(io("reading the step's changes"))?;
        let empty = fs::read_dir(&upper)
            .map_err(io("reading the step's changes"))?
            .next()
            .is_none();
        let mut layers = std::mem::take(&mut step.layers);
        if empty {
            layers.push(LayerRef {
                diff_id: None,
                blob: None,
                size: 0,
                media_type: String::new(),
                source: None,
            });
        } else {
            let (store, content) = (self.layers.clone(), self.content.clone());
            // The step's overlay was volatile: the layer must reach the disk before it is kept.
            let blob = tokio::task::spawn_blocking(move || {
                sync_filesystem(&upper)?;
                store.commit_upper(&upper, &content, Compression::Uncompressed)
            })
            .await??;
            layers.push(LayerRef {
                diff_id: Some(blob.diff_id),
                blob: Some(blob.digest),
                size: blob.size,
                media_type: blob.media_type,
                source: None,
            });
        }
        Ok(Value::Rootfs { layers })
    }

    async fn exec(
        &self,
        op: &ExecOp,
        inputs: &[Solved<Value>],
        progress: &Vertex,
    ) -> Result<Value> {
        let layers = inputs.first().map(|i| i.value.layers()).unwrap_or_default();
        let step = self.prepare(layers, progress).await?;
        let merged = step.dir.join("merged");
        // Mounted inputs get their own overlay, dropped (unmounted) once the process is done.
        let mut mount_steps = Vec::new();
        let mut mounts = Vec::new();
        for m in &op.mounts {
            let input = inputs.get(m.input).ok_or_else(|| {
                Error::Manifest(format!("exec mount names missing input {}", m.input))
            })?;
            let sub = m.source.trim_start_matches('/');
            let root = match &input.value {
                // Files .dockerignore excludes are not part of the context, for a bind mount as
                // for COPY: mount a private copy of what the rules let through (writes to it
                // are dropped with the step).
                Value::Context if self.context()?.matcher.is_some() => {
                    let ctx = self.context()?.clone();
                    let view = step.dir.join(format!("context-{}", mounts.len()));
                    let (sub, dest) = (sub.to_string(), format!("/{sub}"));
                    let view2 = view.clone();
                    tokio::task::spawn_blocking(move || {
                        fs::create_dir_all(&view2).map_err(|e| SourceError::Io {
                            path: view2.clone(),
                            source: e,
                        })?;
                        let m = ctx.matcher.as_deref();
                        let from = if sub.is_empty() { ".".to_string() } else { sub };
                        let selected = fsutil::expand_sources(&ctx.dir, &[from], m)?;
                        fsutil::copy(
                            &selected,
                            m,
                            fsutil::Filter::default(),
                            &view2,
                            &dest,
                            Owner::Set { uid: 0, gid: 0 },
                            None,
                        )
                    })
                    .await?
                    .map_err(Error::Source)?;
                    view
                }
                // Read-only: the context itself. Writable: an overlay over it, whose writes
                // are dropped with the step.
                Value::Context if m.readonly => self.context()?.dir.clone(),
                Value::Context => {
                    let s = self.overlay(&[self.context()?.dir.clone()])?;
                    let root = s.rootfs();
                    mount_steps.push(s);
                    root
                }
                Value::Rootfs { layers } => {
                    let s = self.prepare(layers, progress).await?;
                    let root = s.rootfs();
                    mount_steps.push(s);
                    root
                }
            };
            let source = resolve_in_root(&root, sub, true)
                .map_err(io(format!("resolving mount source `{}`", m.source)))?;
            mounts.push(kiln_executor::Mount::Bind {
                source,
                destination: m.target.clone(),
                readonly: m.readonly,
            });
        }
        // Cache dirs live outside every layer; a guard holds each one's lock for the step.
        let mut cache_guards = Vec::new();
        for c in &op.caches {
            let seed = match c.input {
                Some(i) => Some(inputs.get(i).ok_or_else(|| {
                    Error::Manifest(format!("cache mount names missing input {i}"))
                })?),
                None => None,
            };
            let (source, guard) = self.cache_dir(c, seed, &step.dir, progress).await?;
            mounts.push(kiln_executor::Mount::Bind {
                source,
                destination: c.target.clone(),
                readonly: c.readonly,
            });
            cache_guards.push(guard);
        }
        for t in &op.tmpfs {
            mounts.push(kiln_executor::Mount::Tmpfs {
                destination: t.target.clone(),
                size: t.size,
            });
        }
        let user = run_user(&merged, &op.user)?;
        let mut env = op.env.clone();
        for kv in &self.proxy_env {
            let key = kv.split_once('=').map_or(kv.as_str(), |(k, _)| k);
            if !env
                .iter()
                .any(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) == key)
            {
                env.push(kv.clone());
            }
        }
        if !env.iter().any(|e| e.starts_with("HOME=")) {
            env.push(format!(
                "HOME={}",
                kiln_executor::home_dir(&merged, user.uid)?
            ));
        }
        let secrets_dir = step.dir.join("secrets");
        for (i, sm) in op.secrets.iter().enumerate() {
            let Some(value) = self.secrets.get(&sm.id) else {
                if sm.required {
                    return Err(Error::SecretNotFound(sm.id.clone()));
                }
                continue;
            };
            if let Some(name) = &sm.env {
                let text = String::from_utf8_lossy(value);
                env.retain(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) != name);
                env.push(format!("{name}={text}"));
            }
            if let Some(target) = &sm.target {
                let file = write_secret(&secrets_dir, i, value, sm)
                    .map_err(io(format!("preparing secret `{}`", sm.id)))?;
                mounts.push(kiln_executor::Mount::Bind {
                    source: file,
                    destination: target.clone(),
                    readonly: true,
                });
            }
        }
        // Each agent is served on a socket of the step's own; the proxies stop when dropped.
        let mut ssh_proxies = Vec::new();
        for m in &op.ssh {
            let Some(agent) = self.ssh.socket(&m.id) else {
                if m.required {
                    return Err(Error::SshNotFound(m.id.clone()));
                }
                continue;
            };
            let (socket, proxy) = ssh::SshProxy::start(agent, m)
                .map_err(io(format!("serving SSH agent `{}`", m.id)))?;
            mounts.push(kiln_executor::Mount::Bind {
                source: socket,
                destination: m.target.clone(),
                readonly: false,
            });
            ssh_proxies.push(proxy);
        }
        // runc needs the working directory to exist, as BuildKit ensures.
        fsutil::mkdir_all(&merged, &op.cwd, 0o755, (0, 0))
            .map_err(io(format!("creating `{}`", op.cwd)))?;
        let (out, err) = (progress.clone(), progress.clone());
        let status = self
            .executor
            .run(RunRequest {
                id: format!("kiln-{:016x}", rand::random::<u64>()),
                rootfs: &merged,
                process: ProcessSpec {
                    args: op.args.clone(),
                    env,
                    cwd: op.cwd.clone(),
                    user,
                    hostname: SANDBOX_HOSTNAME.into(),
                    terminal: false,
                },
                mounts,
                stdio: Stdio::Capture {
                    stdout: Box::new(move |b| out.log(Stream::Stdout, b)),
                    stderr: Box::new(move |b| err.log(Stream::Stderr, b)),
                },
                network: match op.network {
                    NetworkMode::Host => kiln_executor::Network::Host,
                    NetworkMode::None => kiln_executor::Network::None,
                },
                readonly_rootfs: false,
                sandbox: executor_sandbox(&op.sandbox),
            })
            .await;
        if secrets_dir.exists() {
            let _ = fs::remove_dir_all(&secrets_dir);
        }
        drop(ssh_proxies);
        let status = status?;
        drop(mount_steps);
        drop(cache_guards);
        if !status.success() {
            return Err(Error::ExecFailed {
                command: op.args.join(" "),
                status,
            });
        }
        self.commit(step).await
    }

    async fn copy(
        &self,
        op: &CopyOp,
        layers: &[LayerRef],
        source: &Value,
        progress: &Vertex,
    ) -> Result<Value> {
        let step = self.prepare(layers, progress).await?;
        let merged = step.dir.join("merged");
        // The source: the context, or another filesystem mounted read-only for the copy.
        let from_context = matches!(source, Value::Context);
        let (src_root, matcher, src_step, keep_owner) = match source {
            Value::Context => {
                let ctx = self.context()?;
                (ctx.dir.clone(), ctx.matcher.clone(), None, false)
            }
            Value::Rootfs { layers } => {
                let s = self.prepare(layers, progress).await?;
                (s.dir.join("merged"), None, Some(s), true)
            }
        };
        let owner = match &op.chown {
            Some(spec) => {
                let (uid, gid) = kiln_executor::resolve_owner(&merged, spec)?;
                Owner::Set { uid, gid }
            }
            None if keep_owner => Owner::Keep,
            None => Owner::Set { uid: 0, gid: 0 },
        };
        // Local files only: an ADD that may unpack archives copies files.
        if let (Value::Context, Owner::Set { uid, gid }) = (source, owner)
            && self.copy_stream
            && !op.unpack
            && let Some(value) = self.copy_stream(op, &step, (uid, gid), progress).await?
        {
            return Ok(value);
        }
        let (sources, dest, parents) = (op.sources.clone(), op.dest.clone(), op.parents);
        let chmod = op
            .chmod()
            .map_err(|e| Error::Manifest(format!("copy op: {e}")))?;
        let exclude = exclude_matcher(&op.exclude)?;
        let merged2 = merged.clone();
        let (unpack, work) = (op.unpack, step.dir.join("unpack"));
        // An archive's own owners are kept unless --chown says otherwise.
        let archive_owner = if op.chown.is_some() {
            owner
        } else {
            Owner::Keep
        };
        tokio::task::spawn_blocking(move || {
            let m = matcher.as_deref();
            let chmod = chmod.as_ref();
            let mut groups = fsutil::select(&src_root, &sources, parents, m)?;
            if from_context {
                fsutil::context_root_lends_no_mtime(&mut groups);
            }
            if parents {
                for g in &groups {
                    let filter = fsutil::Filter {
                        include: g.include.as_ref(),
                        exclude: exclude.as_ref(),
                    };
                    fsutil::copy(&g.sources, m, filter, &merged2, &dest, owner, chmod)?;
                }
                return Ok(());
            }
            let filter = fsutil::Filter {
                include: None,
                exclude: exclude.as_ref(),
            };
            let mut selected: Vec<fsutil::Source> =
                groups.into_iter().flat_map(|g| g.sources).collect();
            let mut archives = Vec::new();
            if unpack {
                let scratch = work.join("decompressed");
                fs::create_dir_all(&work).map_err(|source| SourceError::Io {
                    path: work.clone(),
                    source,
                })?;
                let (a, rest): (Vec<_>, Vec<_>) = selected
                    .into_iter()
                    .partition(|s| add::is_archive(s, &scratch));
                archives = a;
                selected = rest;
            }
            if !selected.is_empty() || archives.is_empty() {
                fsutil::copy(&selected, m, filter, &merged2, &dest, owner, chmod)?;
            }
            for (i, archive) in archives.iter().enumerate() {
                let out = work.join(format!("archive-{i}"));
                add::extract(archive, &out, &work.join("decompressed"))?;
                let tree = fsutil::Source::whole(&out);
                let all = fsutil::Filter::default();
                // BuildKit unpacks archives with their own modes: --chmod does not apply.
                fsutil::copy(&[tree], None, all, &merged2, &dest, archive_owner, None)?;
            }
            Ok(())
        })
        .await?
        .map_err(Error::Source)?;
        drop(src_step);
        self.commit(step).await
    }

    async fn download(&self, op: &HttpOp) -> Result<Arc<add::Download>> {
        if let Some(d) = self.downloads.lock().get(&op.url) {
            return Ok(d.clone());
        }
        let d = Arc::new(add::download(&self.http, &op.url).await?);
        self.downloads.lock().insert(op.url.clone(), d.clone());
        Ok(d)
    }

    /// A fresh filesystem holding the downloaded file, mode 0600, its mtime from Last-Modified.
    async fn http(&self, op: &HttpOp, progress: &Vertex) -> Result<Value> {
        progress.status(&format!("downloading {}", op.url));
        let d = self.download(op).await?;
        self.downloads.lock().remove(&op.url);
        if let Some(expected) = &op.checksum {
            let actual = kiln_oci::sha256(&d.data);
            if actual.to_string() != *expected {
                return Err(Error::ChecksumMismatch {
                    url: op.url.clone(),
                    expected: expected.clone(),
                    actual,
                });
            }
        }
        let step = self.prepare(&[], progress).await?;
        let merged = step.dir.join("merged");
        let path = fsutil::write_file(&merged, &op.filename, &d.data, 0o600)
            .map_err(io(format!("creating `{}`", op.filename)))?;
        if let Some(t) = d.last_modified {
            filetime::set_file_mtime(&path, filetime::FileTime::from_system_time(t))
                .map_err(io(format!("setting the mtime of `{}`", op.filename)))?;
        }
        self.commit(step).await
    }

    async fn resolve_git(&self, op: &GitOp) -> Result<git::Resolved> {
        let id = serde_json::to_string(op).expect("ops serialise");
        if let Some(r) = self.git_resolved.lock().get(&id) {
            return Ok(r.clone());
        }
        let r = git::resolve(op, &self.scratch)
            .await
            .map_err(|source| Error::Git {
                remote: git::redact(&op.remote),
                source,
            })?;
        self.git_resolved.lock().insert(id, r.clone());
        Ok(r)
    }

    /// A Git source is keyed by the commit its ref resolves to now (so a moved branch misses
    /// and an unchanged one hits, as in BuildKit) and by what shapes the checkout; the remote
    /// and ref name count only when `.git` is kept, since they are written into it.
    async fn git_key(&self, op: &GitOp) -> Result<Digest> {
        let resolved = self.resolve_git(op).await?;
        let mut h = Sha256::new();
        h.update(b"git\0");
        h.update(resolved.commit.as_bytes());
        h.update([0]);
        h.update(op.subdir.as_bytes());
        h.update([0, op.skip_submodules as u8, op.mtime_commit as u8]);
        if op.keep_git_dir && op.subdir.is_empty() {
            h.update(op.remote.as_bytes());
            h.update([0]);
            h.update(resolved.full_ref.as_deref().unwrap_or_default().as_bytes());
        }
        Ok(kiln_oci::sha256(&h.finalize()))
    }

    /// A fresh filesystem holding the checkout (or its subdir), as the user running kiln
    /// fetched it; the result's files are owned by that user (root for builds).
    async fn git(&self, op: &GitOp, progress: &Vertex) -> Result<Value> {
        let resolved = self.resolve_git(op).await?;
        progress.status(&format!(
            "fetching {} at {}",
            git::redact(&op.remote),
            resolved.commit
        ));
        let dir = self
            .scratch
            .join(format!("git-{:016x}", rand::random::<u64>()));
        // No overlay: the checkout is the new layer's whole upper dir.
        let step = Step {
            dir: dir.clone(),
            mount: None,
            layers: Vec::new(),
        };
        let tree = git::checkout(op, &resolved, &dir.join("work"))
            .await
            .map_err(|source| Error::Git {
                remote: git::redact(&op.remote),
                source,
            })?;
        let upper = dir.join("upper");
        fs::rename(&tree, &upper).map_err(io(format!("moving `{}`", tree.display())))?;
        self.commit(step).await
    }

    /// A fresh filesystem holding only the op's files, owned by 0:0.
    async fn mkfile(&self, op: &MkfileOp, progress: &Vertex) -> Result<Value> {
        let step = self.prepare(&[], progress).await?;
        let merged = step.dir.join("merged");
        for f in &op.files {
            fsutil::write_file(&merged, &f.path, f.data.as_bytes(), f.mode)
                .map_err(io(format!("creating `{}`", f.path)))?;
        }
        self.commit(step).await
    }

    async fn mkdir(&self, op: &MkdirOp, layers: &[LayerRef], progress: &Vertex) -> Result<Value> {
        let step = self.prepare(layers, progress).await?;
        let merged = step.dir.join("merged");
        let owner = kiln_executor::resolve_owner(&merged, &op.user)?;
        fsutil::mkdir_all(&merged, &op.path, op.mode, owner)
            .map_err(io(format!("creating `{}`", op.path)))?;
        self.commit(step).await
    }
}

/// The user a RUN step runs as: USER's value; without one uid 0, looked up by uid only for its
/// groups (BuildKit never looks up "root": an image without /etc/passwd runs as 0:0).
fn run_user(rootfs: &std::path::Path, user: &str) -> Result<kiln_executor::User> {
    let spec = if user.is_empty() { "0" } else { user };
    Ok(kiln_executor::resolve_user(rootfs, spec)?)
}

/// Secret values by id for `RUN --mount=type=secret`. They are never hashed or recorded;
/// `Debug` shows the ids only.
#[derive(Clone, Default)]
pub struct Secrets(HashMap<String, Vec<u8>>);

impl Secrets {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, id: impl Into<String>, value: Vec<u8>) {
        self.0.insert(id.into(), value);
    }

    pub fn get(&self, id: &str) -> Option<&[u8]> {
        self.0.get(id).map(Vec::as_slice)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut ids: Vec<&String> = self.0.keys().collect();
        ids.sort();
        f.debug_tuple("Secrets").field(&ids).finish()
    }
}

/// Writes a secret to a private file (in a 0700 dir) for a read-only bind mount.
fn write_secret(
    dir: &Path,
    index: usize,
    value: &[u8],
    sm: &SecretMount,
) -> std::io::Result<PathBuf> {
    use std::io::Write as _;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    if !dir.exists() {
        fs::DirBuilder::new().mode(0o700).create(dir)?;
    }
    let path = dir.join(format!("secret-{index}"));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(&path)?;
    f.write_all(value)?;
    f.set_permissions(fs::Permissions::from_mode(sm.mode))?;
    std::os::unix::fs::fchown(&f, Some(sm.uid), Some(sm.gid))?;
    Ok(path)
}

/// The COPY-style source path for a bind mount's `source`.
fn context_source(source: &str) -> String {
    let s = source.trim_start_matches('/');
    if s.is_empty() { ".".into() } else { s.into() }
}

/// A mounted root filesystem with a private upper dir (a build step's or a container's);
/// dropping it unmounts and removes it, so a cancelled build leaves nothing behind.
pub struct Step {
    dir: PathBuf,
    mount: Option<OverlayMount>,
    layers: Vec<LayerRef>,
}

impl Step {
    /// The merged view: the container's root.
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("merged")
    }
}

impl Drop for Step {
    fn drop(&mut self) {
        drop(self.mount.take());
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// `--exclude` patterns as a matcher (None when there are none).
fn exclude_matcher(patterns: &[String]) -> Result<Option<kiln_ignore::Matcher>> {
    if patterns.is_empty() {
        return Ok(None);
    }
    kiln_ignore::Matcher::new(patterns)
        .map(Some)
        .map_err(|e| Error::Source(SourceError::Pattern(e)))
}

/// The content checksum of what a COPY selects from the context (after `.dockerignore`,
/// `--parents` and `--exclude`): paths, file types, modes, symlink targets and file bytes.
/// Owners and mtimes are left out: COPY from the context writes 0:0 and a touched file must
/// not miss the cache. `hashes` spares reading files whose metadata did not change.
fn context_checksum(
    ctx: &Context,
    sources: &[String],
    parents: bool,
    exclude: &[String],
    hashes: Option<&FileHashes>,
) -> Result<[u8; 32]> {
    let m = ctx.matcher.as_deref();
    let groups = fsutil::select(&ctx.dir, sources, parents, m).map_err(Error::Source)?;
    let exclude = exclude_matcher(exclude)?;
    let mut h = Sha256::new();
    for g in &groups {
        let filter = fsutil::Filter {
            include: g.include.as_ref(),
            exclude: exclude.as_ref(),
        };
        checksum_group(&mut h, &g.sources, m, filter, hashes)?;
    }
    Ok(h.finalize().into())
}

fn checksum_group(
    h: &mut Sha256,
    selected: &[fsutil::Source],
    m: Option<&kiln_ignore::Matcher>,
    filter: fsutil::Filter<'_>,
    hashes: Option<&FileHashes>,
) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    for s in selected {
        h.update(s.rel.as_bytes());
        h.update([0]);
    }
    fsutil::walk(selected, m, filter, &mut |e| {
        h.update(e.source.to_le_bytes());
        h.update(e.rel.as_bytes());
        h.update([0]);
        h.update((e.meta.mode() & 0o177777).to_le_bytes());
        if e.meta.file_type().is_symlink() {
            h.update(e.read_link()?.as_os_str().as_encoded_bytes());
        } else if e.meta.is_file() {
            match hashes {
                Some(table) => h.update(table.digest(e.abs, e.meta, || e.open())?),
                None => h.update(hashcache::file_digest(e.open()?)?),
            }
        }
        h.update([0xff]);
        Ok(())
    })
    .map_err(Error::Source)
}

impl kiln_solver::Worker<LlbGraph> for LlbWorker {
    type Value = Value;

    fn cache_key<'a>(
        &'a self,
        graph: &'a LlbGraph,
        vertex: usize,
        inputs: &'a [Solved<Value>],
    ) -> BoxFuture<'a, std::result::Result<Digest, WorkerError>> {
        async move {
            self.key(graph, vertex, inputs)
                .await
                .map_err(|e| Box::new(e) as WorkerError)
        }
        .boxed()
    }

    fn exec<'a>(
        &'a self,
        graph: &'a LlbGraph,
        vertex: usize,
        inputs: &'a [Solved<Value>],
        progress: &'a Vertex,
    ) -> BoxFuture<'a, std::result::Result<Value, WorkerError>> {
        async move {
            self.run(graph, vertex, inputs, progress)
                .await
                .map_err(|e| Box::new(e) as WorkerError)
        }
        .boxed()
    }

    fn usable(&self, value: &Value) -> bool {
        value.layers().iter().all(|l| match &l.blob {
            None => true,
            Some(blob) => l.source.is_some() || self.content.contains(blob),
        })
    }

    fn persist(&self, graph: &LlbGraph, vertex: usize) -> bool {
        !matches!(
            graph.def.node(kiln_llb::NodeId(vertex)).op,
            Op::Local { .. } | Op::Scratch
        )
    }
}

/// The executor's sandbox for an exec op's security mode and build-wide settings.
fn executor_sandbox(s: &ExecSandbox) -> kiln_executor::Sandbox {
    let r = s.resources.as_deref().cloned().unwrap_or_default();
    kiln_executor::Sandbox {
        security: match s.security {
            SecurityMode::Sandbox => kiln_executor::Security::Sandbox,
            SecurityMode::Insecure => kiln_executor::Security::Insecure,
        },
        extra_hosts: s
            .extra_hosts
            .iter()
            .map(|h| (h.host.clone(), h.ip.clone()))
            .collect(),
        rlimits: s
            .ulimits
            .iter()
            .map(|u| kiln_executor::Rlimit {
                name: u.name.clone(),
                soft: u.soft,
                hard: u.hard,
            })
            .collect(),
        shm_size: s.shm_size,
        memory_limit: r.memory.map(|m| u64::try_from(m).unwrap_or(0)),
        resources: kiln_executor::Resources {
            memory_swap: r.memory_swap,
            cpu_quota: r.cpu_quota,
            cpu_period: r.cpu_period,
            cpu_shares: r.cpu_shares,
            cpuset_cpus: r.cpuset_cpus.clone(),
            cpuset_mems: r.cpuset_mems.clone(),
        },
        cgroup_parent: s.cgroup_parent.clone(),
    }
}
