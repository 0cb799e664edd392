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
mod du;
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
mod login;
mod logs;
mod manifest_list;
mod monitor;
mod named_context;
mod oci_layout;
mod output;
mod output_flags;
mod proxy_linux;
mod prune;
mod push_stream;
mod render_error;
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
pub use config::{Config, GrpcConfig, GrpcTlsConfig};
pub use container::{
    ContainerConfig, ContainerError, ContainerInfo, ContainerState, Containers, PortSpec, Status,
    Volume, format_ps_table,
};
pub use du::{DiskUsage, UsageKind, UsageRecord};
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
    _lock: std::fs::File,
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
    /// Entitlements a build may be granted (`insecure-entitlements`).
    insecure_entitlements: std::collections::BTreeSet<Entitlement>,
    /// `copy-stream` (default true): COPY from the context streams its layer.
    copy_stream: bool,
    /// `host-gateway-ip`: what `--add-host NAME:host-gateway` maps to.
    host_gateway_ip: Option<std::net::IpAddr>,
    cdi: config::CdiConfig,
    /// `remote-context-max-bytes`: the most a URL context or Dockerfile may download.
    remote_context_max_bytes: u64,
    /// `[worker.oci]`: the GC policies.
    gc: gc_config::GcConfig,
    /// Builds of this engine running now: a prune is not alone while one is (the engine lock
    /// is per process and cannot tell).
    builds: std::sync::atomic::AtomicUsize,
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
            // names, compiled seccomp profiles.
            remove_temp_files(&root.join("cache"), |n| n.starts_with(".tmp-"))?;
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
            _lock: lock,
            root: root.to_path_buf(),
            content,
            layers,
            images,
            variants,
            executor,
            registry: Arc::new(registry),
            blob_stores: Default::default(),
            insecure_entitlements: config.insecure_entitlements(),
            copy_stream: config.copy_stream.unwrap_or(true),
            host_gateway_ip: config.host_gateway_ip,
            cdi: config.cdi.clone(),
            remote_context_max_bytes: config
                .remote_context_max_bytes
                .unwrap_or(config::REMOTE_CONTEXT_MAX_BYTES),
            gc: config.worker.oci.clone(),
            builds: Default::default(),
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
        for d in ["content/ingest", "cache", "images", "executor/seccomp"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        let left = [
            "content/ingest/0123456789abcdef",
            "cache/.tmp-0123456789abcdef",
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
