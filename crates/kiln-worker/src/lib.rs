//! The worker: what each build-graph op means. Root filesystems are chains of layers; a step
//! mounts its input chain as an overlay, works in the merged view (runc for RUN, file copies
//! for COPY and WORKDIR), and the overlay's upper dir becomes the step's new layer. Image layers
//! are pulled and unpacked only when a step needs their files, so a fully cached build touches
//! neither the registry's blobs nor the disk.

mod add;
mod blobsource;
pub mod cachemount;
mod cachemount_import;
pub mod cdi;
mod copy;
mod copystream;
pub mod emulation;
mod exec;
mod fsutil;
pub mod git;
mod hashcache;
mod http;
mod image;
pub mod key_inputs;
mod sources;
mod step;

pub use hashcache::FileHashes;
pub use key_inputs::{FileSummary, KeyInputs};
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
use kiln_oci::{Digest, ImageManifest, Reference};
use kiln_progress::{Stream, Vertex};
use kiln_snapshot::{
    Compression, LayerStore, OverlayMount, mount_scratch_overlay, sync_filesystem,
};
use kiln_solver::{Graph, Solved, WorkerError};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

pub use blobsource::{BlobStore, BlobStores, LAYOUT_SOURCE, STORE_SOURCE, fetch_layer_blob};
use copy::{context_checksum, context_source, exclude_matcher};
pub use exec::Secrets;
pub use fsutil::{
    ContextEntry, Owner, SourceError, open_context_file, resolve_in_root, walk_context,
};
pub use ssh::{SshAgents, SshError};
pub use step::Step;

/// The local source name of the build context; named contexts have others.
pub const MAIN_CONTEXT: &str = "context";

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
    Rootfs {
        layers: Vec<LayerRef>,
    },
    /// A local directory from the client, by its local source name: `context` for the build
    /// context, others for named contexts (`--build-context NAME=DIR`).
    Context {
        name: String,
    },
}

impl Value {
    pub fn layers(&self) -> &[LayerRef] {
        match self {
            Value::Rootfs { layers } => layers,
            Value::Context { .. } => &[],
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
    #[error("no local context `{0}` was given")]
    NoContext(String),
    #[error(transparent)]
    Device(#[from] cdi::DeviceError),
    #[error(transparent)]
    Emulation(#[from] emulation::EmulationError),
    #[error("invalid image reference `{0}`")]
    Reference(String),
    #[error("invalid manifest for `{0}`")]
    Manifest(String),
    #[error("failed to fetch {blob} from the cache {store}")]
    BlobStore {
        store: String,
        blob: Digest,
        #[source]
        source: WorkerError,
    },
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

/// Layers being unpacked, by diff ID: whoever unpacks one holds its lock.
pub type Unpacking = parking_lot::Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>;

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
    /// Caches' object stores the engine opened (S3, Azure Blob), for layers imported from them.
    blob_stores: Arc<BlobStores>,
    /// Local directories by the name their local source op gives.
    contexts: HashMap<String, Context>,
    scratch: PathBuf,
    /// Layers being unpacked now, shared by the engine's builds so each is unpacked once.
    unpacking: Arc<Unpacking>,
    /// `max-parallelism`: permits for RUN and file ops, shared by the engine's builds.
    parallelism: Option<Arc<tokio::sync::Semaphore>>,
    http: reqwest::Client,
    /// Downloads made to compute a cache key, reused when the step runs.
    downloads: parking_lot::Mutex<HashMap<String, Arc<http::Download>>>,
    /// Validators of earlier downloads (`http.rs`), for revalidating requests.
    http_records: PathBuf,
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
    /// The CDI devices a RUN may ask for.
    cdi: Arc<cdi::Registry>,
    /// What RUNs for foreign platforms took (QEMU through binfmt_misc).
    emulated: parking_lot::Mutex<emulation::EmulationStats>,
    /// Cache mount contents from `--cache-from`, by identity (`cachemount::identity`).
    imported_mounts: HashMap<String, LayerRef>,
    /// The identities already mounted in this build: each is filled from its import once.
    mounts_considered: parking_lot::Mutex<std::collections::HashSet<String>>,
    /// What each vertex's key was computed from, for `--explain`.
    key_inputs: parking_lot::Mutex<HashMap<usize, KeyInputs>>,
    /// What the contexts' directories live in (a checkout, an unpacked tarball), removed when
    /// dropped: kept as long as the worker, which a step another build waits on may hold after
    /// its own build is gone.
    _keep_alive: Vec<Box<dyn std::any::Any + Send + Sync>>,
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
            blob_stores: Default::default(),
            contexts: context
                .map(|c| (MAIN_CONTEXT.to_string(), c))
                .into_iter()
                .collect(),
            http_records: scratch.join("http"),
            scratch,
            unpacking: Default::default(),
            parallelism: None,
            http: reqwest::Client::new(),
            downloads: Default::default(),
            git_resolved: Default::default(),
            secrets: Secrets::default(),
            hashes: None,
            proxy_env: Vec::new(),
            ssh: SshAgents::default(),
            copy_stream: true,
            cdi: Default::default(),
            emulated: Default::default(),
            imported_mounts: HashMap::new(),
            mounts_considered: Default::default(),
            key_inputs: Default::default(),
            _keep_alive: Vec::new(),
        }
    }

    /// Keeps `owner` (what a context directory is removed with) until the worker is dropped.
    pub fn with_keep_alive(mut self, owner: Box<dyn std::any::Any + Send + Sync>) -> Self {
        self._keep_alive.push(owner);
        self
    }

    /// Cache mount contents an imported cache carries, by identity: a cache dir that is absent
    /// or empty when a RUN first mounts it is filled from its blob (cachemount_import.rs).
    pub fn with_imported_cache_mounts(mut self, mounts: HashMap<String, LayerRef>) -> Self {
        self.imported_mounts = mounts;
        self
    }

    /// What `vertex`'s cache key was computed from, once the solver asked for its key.
    pub fn key_inputs(&self, vertex: usize) -> Option<KeyInputs> {
        self.key_inputs.lock().get(&vertex).cloned()
    }

    /// The layers-being-unpacked map of the engine, so two builds needing the same layer
    /// unpack it once.
    pub fn with_unpacking(mut self, unpacking: Arc<Unpacking>) -> Self {
        self.unpacking = unpacking;
        self
    }

    /// At most this semaphore's permits of RUN and file ops (COPY, ADD, WORKDIR's mkdir, a
    /// heredoc's file) run at once, across every worker given the same one: BuildKit's
    /// `max-parallelism`. Sources (pulls, downloads, Git) are not limited.
    pub fn with_parallelism(mut self, permits: Option<Arc<tokio::sync::Semaphore>>) -> Self {
        self.parallelism = permits;
        self
    }

    /// The emulated steps run so far, for the build's summary.
    pub fn emulation_stats(&self) -> emulation::EmulationStats {
        self.emulated.lock().clone()
    }

    /// Where the validators of downloads are kept across builds (ADD from http(s)).
    pub fn with_http_records(mut self, dir: PathBuf) -> Self {
        self.http_records = dir;
        self
    }

    /// The object stores of imported caches, shared with the engine that opens them.
    pub fn with_blob_stores(mut self, stores: Arc<BlobStores>) -> Self {
        self.blob_stores = stores;
        self
    }

    /// The CDI devices RUNs get (see [`cdi`]); none without it.
    pub fn with_cdi(mut self, registry: Arc<cdi::Registry>) -> Self {
        self.cdi = registry;
        self
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

    /// Another local directory, for the local source op of that name (a named context).
    pub fn with_context(mut self, name: impl Into<String>, context: Context) -> Self {
        self.contexts.insert(name.into(), context);
        self
    }

    fn context(&self, name: &str) -> Result<&Context> {
        self.contexts
            .get(name)
            .ok_or_else(|| Error::NoContext(name.to_string()))
    }

    async fn key(
        &self,
        graph: &LlbGraph,
        vertex: usize,
        inputs: &[Solved<Value>],
    ) -> Result<Digest> {
        let node = graph.def.node(kiln_llb::NodeId(vertex));
        let mut described = key_inputs::describe(&node.op);
        for (i, input) in inputs.iter().enumerate() {
            described.inputs.push(key_inputs::InputKey {
                role: input_role(&node.op, i),
                name: graph.name(node.inputs[i].0).to_string(),
                key: input.cache_key.clone(),
            });
        }
        let key = self.key_of(node, inputs, &mut described).await?;
        self.key_inputs.lock().insert(vertex, described);
        Ok(key)
    }

    async fn key_of(
        &self,
        node: &kiln_llb::Node,
        inputs: &[Solved<Value>],
        described: &mut KeyInputs,
    ) -> Result<Digest> {
        if let Op::Git(op) = &node.op {
            return self.git_key(op).await;
        }
        let mut h = Sha256::new();
        h.update(serde_json::to_vec(&node.op).expect("ops serialise"));
        for input in inputs {
            h.update(input.cache_key.as_ref().as_bytes());
        }
        // A COPY from the context is keyed by the content it selects, never by mtimes.
        if let (Op::Copy(copy), Some(Value::Context { name })) =
            (&node.op, inputs.get(1).map(|i| &i.value))
        {
            let ctx = self.context(name)?.clone();
            let copy = copy.clone();
            let hashes = self.hashes.clone();
            let (sum, files) = tokio::task::spawn_blocking(move || {
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
            described.listed.insert("COPY".into(), files);
        }
        // A bind mount of the context is keyed by the content it exposes, as COPY is.
        if let Op::Exec(exec) = &node.op {
            for m in &exec.mounts {
                if let Some(Value::Context { name }) = inputs.get(m.input).map(|i| &i.value) {
                    let ctx = self.context(name)?.clone();
                    let sources = vec![context_source(&m.source)];
                    let hashes = self.hashes.clone();
                    let (sum, files) = tokio::task::spawn_blocking(move || {
                        context_checksum(&ctx, &sources, false, &[], hashes.as_deref())
                    })
                    .await??;
                    h.update(sum);
                    described
                        .listed
                        .insert(format!("the bind mount at {}", m.target), files);
                }
            }
        }
        // Without a checksum a download is keyed by its content, as BuildKit does.
        if let Op::Http(http) = &node.op
            && http.checksum.is_none()
        {
            let d = self.download(http).await?;
            h.update(d.digest.as_ref().as_bytes());
            described.content = Some(d.digest.to_string());
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
        let limited = matches!(
            node.op,
            Op::Exec(_) | Op::Copy(_) | Op::Mkdir(_) | Op::Mkfile(_)
        );
        // Held until the op ends; a closed semaphore (never closed) would only mean no limit.
        let _permit = match (&self.parallelism, limited) {
            (Some(permits), true) => permits.clone().acquire_owned().await.ok(),
            _ => None,
        };
        match &node.op {
            Op::Scratch => Ok(Value::Rootfs { layers: Vec::new() }),
            Op::Local { name, .. } => {
                self.context(name)?;
                Ok(Value::Context { name: name.clone() })
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
}

/// What input `i` of `op` is to the step, in words for `--explain`.
fn input_role(op: &Op, i: usize) -> String {
    match (op, i) {
        (_, 0) => "parent".into(),
        (Op::Copy(_), _) => "source".into(),
        (Op::Exec(exec), _) => match exec.mounts.iter().find(|m| m.input == i) {
            Some(m) => format!("mount {}", m.target),
            None => match exec.caches.iter().find(|c| c.input == Some(i)) {
                Some(c) => format!("cache seed {}", c.target),
                None => format!("input {i}"),
            },
        },
        _ => format!("input {i}"),
    }
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
            Some(blob) => {
                self.content.contains(blob)
                    || l.source
                        .as_deref()
                        .is_some_and(|s| blobsource::available(&self.blob_stores, s, blob))
            }
        })
    }

    fn persist(&self, graph: &LlbGraph, vertex: usize) -> bool {
        !matches!(
            graph.def.node(kiln_llb::NodeId(vertex)).op,
            Op::Local { .. } | Op::Scratch
        )
    }
}
