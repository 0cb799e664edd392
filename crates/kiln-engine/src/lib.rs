//! kiln as a library. An [`Engine`] owns one data directory (content store, layers, image
//! names, cache records) and runs builds and image commands against it; the `kiln` CLI and the
//! `kilnd` daemon are thin shells over it. A build flows: Dockerfile → frontend (graph + image
//! config) → solver with the worker (cache keys, exec, layers) → exporter (config, manifest, name,
//! archives). See docs/architecture.md.

mod archive_context;
mod atomic_file;
mod build;
mod build_multi;
mod cache_export;
mod cache_format;
mod cache_import;
mod cache_inline;
mod cache_layout;
mod cache_mounts;
mod cache_spec;
mod cache_store;
mod check;
mod compress;
mod config;
mod container;
mod daemon_config;
mod du;
mod explain;
mod export;
mod export_names;
mod export_rootfs;
mod gc;
mod gc_config;
mod gc_policy;
mod git_context;
mod image;
mod images;
mod imagetools;
mod inspect;
mod login;
mod logs;
mod manifest_list;
mod monitor;
mod named_context;
mod oci_layout;
mod output;
mod output_flags;
mod pin;
mod proxy_linux;
mod prune;
mod push_stream;
mod render_error;
mod resolved;
mod resolver;
mod run;
mod squash;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_content::ContentStore;
use kiln_executor::RuncExecutor;
use kiln_exporter::ImageStore;
use kiln_snapshot::LayerStore;

pub use archive_context::{Compression, ContextArchive, SNIFF_LEN, peek, sniff_archive};
pub use atomic_file::write_file_atomically;
pub use build::{BuildRequest, BuildResult};
pub use cache_spec::{
    CacheExport, CacheImport, CacheLocation, CacheMode, CacheMounts, CacheSpecError,
};
pub use check::{CheckReport, CheckRequest, Subrequest, check, subrequest};
pub use config::Config;
pub use container::{
    ContainerConfig, ContainerError, ContainerInfo, ContainerState, Containers, PortSpec, Status,
    Volume, format_ps_table,
};
pub use daemon_config::{GrpcConfig, GrpcTls, HistoryConfig};
pub use du::{DiskUsage, UsageKind, UsageRecord};
pub use explain::{ExplainedStep, format_explain};
pub use gc::{GC_BUDGET, GcTask};
pub use gc_config::{DiskSpace, GcConfig, GcPolicy, GoDuration, WorkerConfig};
pub use gc_policy::{DiskStat, Filter, Planned, PruneRule, short_duration};
pub use image::ImportRequest;
pub use images::{FoundImage, ImageFilter, RmiEvent};
pub use imagetools::{IndexRequest, format_imagetools};
pub use kiln_executor::{RLIMIT_NAMES, valid_cgroup_parent};
pub use kiln_exporter::{
    ImageRecord, familiar_name, format_images_table, human_duration, human_size,
};
pub use kiln_exporter::{load::LoadedImage, save::SaveFormat, view};
pub use kiln_frontend::{Entitlement, RunOpts};
pub use kiln_llb::{ExecResources, HostEntry, NetworkMode, Ulimit};
pub use kiln_registry::RawManifest;
pub use kiln_worker::{Secrets, SshAgents, SshError};
pub use login::{login, login_server, logout};
pub use logs::{LogOptions, LogStream};
pub use manifest_list::{Inspected, PlatformAnnotation};
pub use monitor::{Attach, Ready};
pub use named_context::{NamedContextSource, parse_build_context};
pub use output::{
    Annotation, AnnotationTarget, ExporterKind, LayerCompressionKind, Output, OutputError,
    parse_annotation_flag,
};
pub use output_flags::{OutputFlags, OutputFlagsError, assemble_outputs};
pub use prune::{PruneOptions, PruneReport, PruneRequest, Pruned, parse_duration, parse_size};
pub use render_error::render_error;
pub use run::{ExecRequest, RunRequest};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Frontend(#[from] kiln_frontend::Error),
    #[error("failed to solve: {message}")]
    Solve {
        message: String,
        /// The Dockerfile lines of the failing step, already rendered.
        location: Option<String>,
    },
    #[error("failed to read the config file `{path}`")]
    Config {
        path: PathBuf,
        #[source]
        source: BoxError,
    },
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "entitlement `{entitlement}` is not allowed by the configuration: add it to \
         `insecure-entitlements` in the config file"
    )]
    EntitlementNotAllowed { entitlement: Entitlement },
    /// Something kiln parses but does not implement yet.
    #[error("{0}")]
    Unsupported(String),
    #[error("no such image: `{0}`")]
    NoSuchImage(String),
    #[error("invalid reference `{0}`")]
    Reference(String),
    #[error("invalid {what}")]
    Invalid {
        what: String,
        #[source]
        source: BoxError,
    },
    #[error(transparent)]
    Registry(#[from] kiln_registry::Error),
    #[error(transparent)]
    Content(#[from] kiln_content::Error),
    #[error(transparent)]
    Snapshot(#[from] kiln_snapshot::Error),
    #[error(transparent)]
    Executor(#[from] kiln_executor::Error),
    #[error(transparent)]
    Exporter(#[from] kiln_exporter::Error),
    #[error(transparent)]
    Worker(#[from] kiln_worker::Error),
    #[error(transparent)]
    Container(#[from] ContainerError),
    #[error("background task failed")]
    Join(#[from] tokio::task::JoinError),
    #[error("{0}")]
    Usage(String),
    /// A URL context or Dockerfile that could not be used.
    #[error("failed to read the remote context `{url}`: {reason}")]
    Remote { url: String, reason: String },
    /// A context tarball the context unpacker refused or could not read.
    #[error("failed to unpack the build context from {name}")]
    ContextArchive {
        name: String,
        #[source]
        source: BoxError,
    },
    #[error("conflict: {0}")]
    Conflict(String),
    /// `kiln import` of a tarball the layer applier would refuse: it could never be unpacked.
    #[error("refused to import `{path}`: not a root filesystem tar kiln can unpack")]
    RefusedImport {
        path: PathBuf,
        #[source]
        source: Box<kiln_snapshot::Error>,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// The on-disk layout of a data directory (documented in docs/on-disk-layout.md).
pub struct Engine {
    /// Held (shared) for the engine's life; see `open`.
    _lock: Arc<std::fs::File>,
    root: PathBuf,
    content: ContentStore,
    layers: LayerStore,
    images: ImageStore,
    /// Compressed (and timestamp-rewritten) blobs made from layers at export.
    variants: kiln_exporter::compress::BlobVariants,
    executor: Arc<RuncExecutor>,
    registry: Arc<kiln_registry::Client>,
    /// Object stores of `--cache-from type=s3/azblob` opened so far, where their layers come from.
    blob_stores: Arc<kiln_worker::BlobStores>,
    /// What `registry` was made from, for an offline copy of it (`offline`).
    registry_config: kiln_registry::RegistryConfig,
    /// `kiln build --offline`: `registry` sends nothing; base images come from the data root.
    offline: bool,
    /// Entitlements a build may be granted (`insecure-entitlements`).
    insecure_entitlements: std::collections::BTreeSet<Entitlement>,
    /// `copy-stream` (default true): COPY from the context streams its layer.
    copy_stream: bool,
    /// `host-gateway-ip`: what `--add-host NAME:host-gateway` maps to.
    host_gateway_ip: Option<std::net::IpAddr>,
    cdi: config::CdiConfig,
    /// `remote-context-max-bytes`: the most a URL context or Dockerfile may download.
    remote_context_max_bytes: u64,
    /// `[worker.oci]`: the GC policies, platforms and `max-parallelism`.
    gc: gc_config::GcConfig,
    /// `max-parallelism`: permits for RUN and file ops, shared by every build of this engine.
    parallelism: Option<Arc<tokio::sync::Semaphore>>,
    /// Builds of this engine running now: a prune is not alone while one is (the engine lock
    /// is per process and cannot tell). Shared with the offline copy of this engine.
    builds: Arc<std::sync::atomic::AtomicUsize>,
    /// Steps running now in any build of this engine, by cache key: a build needing one joins
    /// it instead of running it again (see docs/architecture.md).
    in_flight: Arc<kiln_solver::InFlight<kiln_worker::Value>>,
    /// Layers being unpacked by any build of this engine.
    unpacking: Arc<kiln_worker::Unpacking>,
}

impl Engine {
    /// Opens (creating) the data directory at `root` and clears what a killed run left there:
    /// mounts, containers and half-written step dirs.
    pub fn open(root: &Path, config: Config) -> Result<Engine> {
        std::fs::create_dir_all(root).map_err(io(format!("creating `{}`", root.display())))?;
        let content = ContentStore::open(root.join("content"))?;
        let layers = LayerStore::open(&root.join("layers"))?;
        let images = ImageStore::open(&root.join("images"), content.clone())?;
        let variants = kiln_exporter::compress::BlobVariants::open(&root.join("blob-variants"))?;
        let executor = Arc::new(RuncExecutor::new(&root.join("executor"))?);
        let tmp = root.join("tmp");
        // Every engine on this data dir holds a shared lock. One that gets the lock exclusively
        // is alone, so whatever is in tmp/, the executor's state and layers/.tmp-* was left by a
        // killed run and is cleared; with others running, their work is left alone.
        let lock_path = root.join("engine.lock");
        let lock = std::fs::File::create(&lock_path)
            .map_err(io(format!("opening `{}`", lock_path.display())))?;
        let alone =
            rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_ok();
        if alone {
            kiln_snapshot::cleanup_stale_mounts(&tmp)?;
            // Only a killed run leaves bundles; skip spawning runc when there are none.
            let has_bundles =
                std::fs::read_dir(executor.bundles_dir()).is_ok_and(|mut d| d.next().is_some());
            if has_bundles {
                executor.cleanup_stale()?;
            }
            if tmp.exists() {
                std::fs::remove_dir_all(&tmp).map_err(io("removing stale step directories"))?;
            }
            layers.remove_stale_temp_dirs()?;
            kiln_worker::cachemount::remove_stale(root)
                .map_err(io("removing stale cache mount dirs"))?;
            // Small temp files of atomic writes a kill interrupted: cache records, image
            // names, compiled seccomp profiles, `--explain`'s step records.
            remove_temp_files(&root.join("cache"), |n| {
                n.starts_with(".tmp-") || n.starts_with(".lock-")
            })?;
            remove_temp_files(&root.join("step-keys"), |n| n.starts_with(".tmp-"))?;
            remove_temp_files(&root.join("resolved"), |n| n.starts_with(".tmp-"))?;
            remove_temp_files(&root.join("images"), |n| {
                n.starts_with('.') && n.ends_with(".tmp")
            })?;
            remove_temp_files(&root.join("executor/seccomp"), |n| n.starts_with(".tmp-"))?;
        }
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockShared)
            .map_err(|e| io(format!("locking `{}`", lock_path.display()))(e.into()))?;
        std::fs::create_dir_all(&tmp).map_err(io("creating the step directory"))?;
        let registry = kiln_registry::Client::new(config.registry.clone())?
            .with_credentials(config.credentials());
        Ok(Engine {
            _lock: Arc::new(lock),
            root: root.to_path_buf(),
            content,
            layers,
            images,
            variants,
            executor,
            registry: Arc::new(registry),
            blob_stores: Default::default(),
            registry_config: config.registry.clone(),
            offline: false,
            insecure_entitlements: config.insecure_entitlements(),
            copy_stream: config.copy_stream.unwrap_or(true),
            host_gateway_ip: config.host_gateway_ip,
            cdi: config.cdi.clone(),
            remote_context_max_bytes: config
                .remote_context_max_bytes
                .unwrap_or(config::REMOTE_CONTEXT_MAX_BYTES),
            parallelism: config
                .worker
                .oci
                .max_parallelism
                .filter(|n| *n > 0)
                .map(|n| Arc::new(tokio::sync::Semaphore::new(n))),
            gc: config.worker.oci.clone(),
            builds: Default::default(),
            in_flight: Default::default(),
            unpacking: Default::default(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Marks a build running until the guard drops.
    pub(crate) fn build_running(&self) -> BuildGuard<'_> {
        self.builds
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        BuildGuard(&self.builds)
    }

    pub(crate) fn builds_running(&self) -> usize {
        self.builds.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// This engine with a registry client that sends nothing (`kiln build --offline`): every
    /// path that would reach a registry (base image lookups, layer pulls, cache imports,
    /// pushes) fails with the request it did not send instead.
    pub(crate) fn offline(&self) -> Result<Engine> {
        Ok(Engine {
            _lock: self._lock.clone(),
            root: self.root.clone(),
            content: self.content.clone(),
            layers: self.layers.clone(),
            images: self.images.clone(),
            variants: self.variants.clone(),
            executor: self.executor.clone(),
            registry: Arc::new(kiln_registry::Client::offline(
                self.registry_config.clone(),
            )?),
            registry_config: self.registry_config.clone(),
            offline: true,
            insecure_entitlements: self.insecure_entitlements.clone(),
            copy_stream: self.copy_stream,
            host_gateway_ip: self.host_gateway_ip,
            cdi: self.cdi.clone(),
            remote_context_max_bytes: self.remote_context_max_bytes,
            blob_stores: self.blob_stores.clone(),
            gc: self.gc.clone(),
            parallelism: self.parallelism.clone(),
            in_flight: self.in_flight.clone(),
            unpacking: self.unpacking.clone(),
            builds: self.builds.clone(),
        })
    }

    pub fn images(&self) -> Result<Vec<ImageRecord>> {
        Ok(self.images.list()?)
    }

    pub(crate) fn worker(&self, context: Option<kiln_worker::Context>) -> kiln_worker::LlbWorker {
        kiln_worker::LlbWorker::new(
            self.content.clone(),
            self.layers.clone(),
            self.executor.clone(),
            self.registry.clone(),
            context,
            self.root.join("tmp"),
        )
        .with_copy_stream(self.copy_stream)
        .with_http_records(self.root.join("http"))
        .with_blob_stores(self.blob_stores.clone())
        .with_unpacking(self.unpacking.clone())
        .with_parallelism(self.parallelism.clone())
    }

    /// The platforms this engine builds for, as a builder advertises them: `[worker.oci]
    /// platforms`, else this machine's and those a QEMU handler makes available.
    pub fn platforms(&self) -> Vec<kiln_oci::Platform> {
        advertised_platforms(&self.gc)
    }

    /// A build's platform when it names none: the first advertised one, as BuildKit takes
    /// its worker's first platform.
    pub(crate) fn default_platform(&self) -> kiln_oci::Platform {
        self.gc
            .platforms
            .as_ref()
            .and_then(|p| p.first().cloned())
            .unwrap_or_else(kiln_oci::Platform::host)
    }
}

/// What an embedded builder on `config` offers, without opening its data root (`kiln builder
/// ls` lists builders without taking the engine's lock).
pub fn builder_platforms(config: &Config) -> Vec<kiln_oci::Platform> {
    advertised_platforms(&config.worker.oci)
}

fn advertised_platforms(oci: &gc_config::GcConfig) -> Vec<kiln_oci::Platform> {
    match &oci.platforms {
        Some(p) => p.clone(),
        None => kiln_worker::emulation::available_platforms(),
    }
}

impl Engine {
    /// The CDI devices the build's RUNs ask for, checked before anything runs as BuildKit checks
    /// them when it loads a build: the specs of the config's spec dirs are read only when some
    /// RUN has `--device` (so a broken spec on the host fails only builds that use devices),
    /// and none are when CDI is disabled.
    pub(crate) fn cdi_devices(
        &self,
        def: &kiln_llb::Definition,
        run: &kiln_frontend::RunOpts,
    ) -> Result<Arc<kiln_worker::cdi::Registry>> {
        let asked = def
            .nodes()
            .any(|(_, n)| matches!(&n.op, kiln_llb::Op::Exec(e) if !e.sandbox.devices.is_empty()));
        if !asked {
            return Ok(Default::default());
        }
        let registry = if self.cdi.disabled {
            Default::default()
        } else {
            let dirs: Vec<PathBuf> = match &self.cdi.spec_dirs {
                Some(d) => d.clone(),
                None => kiln_worker::cdi::SPEC_DIRS.map(PathBuf::from).to_vec(),
            };
            let dirs: Vec<&std::path::Path> = dirs.iter().map(PathBuf::as_path).collect();
            kiln_worker::cdi::Registry::load(&dirs, &self.cdi.auto_allowed)
                .map_err(kiln_worker::Error::from)?
        };
        let allowed = run
            .entitlements
            .contains(&kiln_frontend::Entitlement::Device);
        kiln_worker::cdi::check(def, &registry, allowed).map_err(kiln_worker::Error::from)?;
        Ok(Arc::new(registry))
    }
}

pub(crate) struct BuildGuard<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for BuildGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Removes the regular files directly in `dir` whose names `stale` picks; only called while no
/// other kiln uses the data directory, so no live writer owns them.
fn remove_temp_files(dir: &Path, stale: impl Fn(&str) -> bool) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        if is_file && stale(&name.to_string_lossy()) {
            let path = entry.path();
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(io(format!("removing `{}`", path.display()))(e));
                }
                _ => {}
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 13: what killed writes leave under the data root goes at the next open.
    #[test]
    fn issue_13_open_removes_partial_files_a_kill_left() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        for d in [
            "content/ingest",
            "cache",
            "images",
            "executor/seccomp",
            "step-keys",
        ] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        let left = [
            "content/ingest/0123456789abcdef",
            "cache/.tmp-0123456789abcdef",
            "step-keys/.tmp-0123456789abcdef",
            "cache/.lock-0123456789abcdef",
            "images/.images.json.123-0.tmp",
            "executor/seccomp/.tmp-1-ThreadId(1)",
        ];
        for f in left {
            std::fs::write(root.join(f), b"partial").unwrap();
        }
        std::fs::write(root.join("images/images.json"), b"{}").unwrap();
        let engine = match Engine::open(&root, Config::default()) {
            Ok(e) => e,
            Err(e) if std::env::var("KILN_TEST_REQUIRE_EXTERNAL").as_deref() != Ok("1") => {
                eprintln!("skipping: cannot open an engine here: {e}");
                return;
            }
            Err(e) => panic!("{e}"),
        };
        for f in left {
            assert!(!root.join(f).exists(), "`{f}` was left");
        }
        assert!(root.join("images/images.json").exists());
        drop(engine);
    }
}

/// kilnd spawns each build on a multi-threaded runtime: a build's future must stay `Send` and
/// own what it needs (this fails to compile otherwise).
#[cfg(test)]
mod send_check {
    fn spawnable<T: std::future::Future + Send + 'static>(_: &T) {}

    #[allow(dead_code)]
    fn build_is_send(e: std::sync::Arc<crate::Engine>, req: crate::BuildRequest) {
        spawnable(&async move {
            let p = kiln_progress::Progress::discard();
            let _ = e.build(req, &p).await;
        });
    }
}
