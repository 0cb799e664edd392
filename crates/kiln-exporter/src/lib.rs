//! The local image store and the image exporters. An image here is a manifest blob (OCI or
//! Docker schema 2) whose config and layers are all in a [`ContentStore`]; this crate names
//! images ([`store`]), writes them out as an OCI image layout ([`oci`]) or a `docker load`
//! archive ([`docker`]), and checks such archives ([`verify`]). It knows content, manifests and
//! archives; it must not know builds, registries or layers on disk.

mod archive;
pub mod compress;
pub mod docker;
mod image;
pub mod layercheck;
pub mod load;
pub mod oci;
pub mod save;
pub mod store;
mod table;
pub mod verify;
pub mod view;

use std::io;
use std::path::PathBuf;

pub use archive::ArchiveOptions;
pub use kiln_content::ContentStore;
use kiln_oci::Digest;
pub use store::{
    ImageRecord, ImageStore, PlatformImage, dangling_name, familiar_name, is_dangling,
};
pub use table::{format_images_table, human_duration, human_size};

/// Manifests and configs bigger than this are refused rather than read into memory; the OCI
/// distribution spec lets registries refuse manifests over 4 MiB too.
pub(crate) const MAX_METADATA_SIZE: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("blob `{0}` is not in the content store")]
    MissingBlob(Digest),
    #[error("failed to read blob `{digest}` from the content store")]
    ReadBlob {
        digest: Digest,
        #[source]
        source: Box<kiln_content::Error>,
    },
    #[error("blob `{digest}` is {actual} bytes but its descriptor says {expected}")]
    SizeMismatch {
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    #[error("blob `{expected}` hashes to `{actual}`")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("blob `{digest}` is too large ({size} bytes) to be a manifest or config")]
    MetadataTooLarge { digest: Digest, size: u64 },
    #[error("invalid manifest `{digest}`")]
    InvalidManifest {
        digest: Digest,
        #[source]
        source: serde_json::Error,
    },
    #[error("invalid image config `{digest}`")]
    InvalidConfig {
        digest: Digest,
        #[source]
        source: serde_json::Error,
    },
    #[error("`{digest}` has media type `{media_type}`, expected an image manifest")]
    NotAManifest { digest: Digest, media_type: String },
    #[error("image `{name}` has no image for {platform} (it has {available})")]
    NoPlatform {
        name: String,
        platform: String,
        available: String,
    },
    #[error("image index `{0}` names no platform's image manifest")]
    EmptyIndex(Digest),
    #[error("image index `{0}` nests too deeply")]
    IndexTooDeep(Digest),
    #[error("failed to write archive entry `{path}`")]
    WriteArchive {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("i/o on `{path}`")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("image store file `{path}` is corrupt")]
    CorruptStore {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("image store file `{path}` names an invalid reference `{name}`")]
    CorruptStoreName { path: PathBuf, name: String },
    #[error("invalid archive `{path}`: {reason}")]
    InvalidArchive { path: PathBuf, reason: String },
    /// A layer the applier would refuse: it could never be unpacked.
    #[error("refused layer `{digest}` (`{path}` in the archive)")]
    RefusedLayer {
        digest: Digest,
        path: String,
        #[source]
        source: Box<kiln_snapshot::Error>,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}

/// Writes `bytes` to `path` so readers see the old file or the new one, never a torn one:
/// temp file in the same directory, fsync, rename, fsync the directory.
pub(crate) fn atomic_write(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.unwrap_or_default(),
        unique_suffix()
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(bytes).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io_err(path))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    sync_dir(dir)
}

pub(crate) fn sync_dir(dir: &std::path::Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// A suffix no other temp file of this process or another live one is using.
pub(crate) fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The `rootfs.diff_ids` of an image config, reading nothing else of it (archives from other
/// tools may carry fields kiln's own config type does not know).
pub(crate) fn config_diff_ids(config: &[u8]) -> serde_json::Result<Vec<String>> {
    #[derive(serde::Deserialize)]
    struct Config {
        rootfs: Option<RootFs>,
    }
    #[derive(serde::Deserialize)]
    struct RootFs {
        #[serde(default)]
        diff_ids: Vec<String>,
    }
    let c: Config = serde_json::from_slice(config)?;
    Ok(c.rootfs.map(|r| r.diff_ids).unwrap_or_default())
}
