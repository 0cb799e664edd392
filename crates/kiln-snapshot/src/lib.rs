//! Layers on disk and their diffs: unpack OCI/Docker layer tarballs into directories usable as
//! overlayfs lower dirs, mount overlays for build steps, and turn an overlay upper dir back into
//! an OCI layer tarball.
//!
//! Every stored layer is kept in overlay format: deletions are overlay whiteouts (character
//! devices 0/0) and opaque directories carry `trusted.overlay.opaque=y`; the OCI `.wh.` spelling
//! only exists inside tarballs. This crate knows layers, directories and mounts; it must not know
//! images, registries or the build graph.

mod apply;
mod check;
mod diff;
mod entry;
mod overlay_linux;
mod squash;
mod store;
mod xattr;

use std::io;
use std::path::PathBuf;

use kiln_oci::Digest;

pub use check::check_layer_tar;
pub use diff::Exact;
pub use overlay_linux::{
    OverlayMount, cleanup_stale_mounts, mount_overlay, mount_scratch_overlay, sync_filesystem,
};
pub use squash::squash_layers;
pub use store::{Compression, LayerBlob, LayerStore};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unsupported layer media type `{0}`")]
    MediaType(String),
    #[error("layer `{0}` not found in the layer store")]
    NotFound(Digest),
    #[error("layer diffID mismatch: expected `{expected}`, got `{actual}`")]
    DiffIdMismatch { expected: Digest, actual: Digest },

    /// The tarball itself is unreadable (corrupt compression, bad header checksum, ...).
    #[error("failed to read layer tar")]
    ReadTar {
        #[source]
        source: io::Error,
    },
    /// An entry the extractor refuses: it would escape the layer, write through a symlink, or is
    /// otherwise malformed.
    #[error("refused layer entry `{path}`: {reason}")]
    BadEntry { path: String, reason: String },
    #[error("failed to extract layer entry `{path}`")]
    Extract {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("failed to write tar entry for `{path}`")]
    Diff {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("layer store i/o on `{path}`")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to store layer blob")]
    Content {
        #[source]
        source: kiln_content::Error,
    },

    #[error("failed to mount overlay on `{target}`{}", kernel_message(.detail))]
    Mount {
        target: PathBuf,
        /// What the kernel logged on the filesystem context, when the new mount API was used.
        detail: Option<String>,
        #[source]
        source: io::Error,
    },
    #[error("overlay path `{0}` cannot be passed in a classic mount option")]
    MountPath(PathBuf),
    #[error("failed to unmount `{target}`")]
    Unmount {
        target: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn kernel_message(detail: &Option<String>) -> String {
    match detail {
        Some(d) => format!(" (kernel: {d})"),
        None => String::new(),
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Writes a plain directory tree (such as the merged view of a mounted chain) as a tar into
/// `out`, the same way a layer is serialised, and returns `out` once the archive is finished.
pub fn write_tree_tar<W: io::Write>(dir: &std::path::Path, out: W) -> Result<W> {
    diff::write_tar(dir, out)
}

/// [`write_tree_tar`] of several trees into one tar, each under its directory `NAME/`
/// (`--output type=tar` of a multi-platform build: `linux_amd64/`, `linux_arm64/`).
pub fn write_trees_tar<W: io::Write>(trees: &[(PathBuf, String)], out: W) -> Result<W> {
    diff::write_trees_tar(trees, out)
}

/// Extracts the tar stream `reader` (a plain archive, not a layer: `.wh.` names are ordinary
/// files) into the existing directory `dest`, merging with what is there, with the layer
/// applier's rules: an entry replaces what has its path (a directory merges into a directory),
/// device nodes and fifos are made as such, and nothing is written outside `dest` or through a
/// symlink. Owners are kept only when running as root; extended attributes are set.
pub fn extract_tar(reader: impl io::Read, dest: &std::path::Path) -> Result<()> {
    let opts = apply::Options {
        owners: rustix::process::geteuid().is_root(),
        whiteouts: false,
        xattrs: true,
    };
    apply::apply_with(reader, dest, opts)
}

/// [`extract_tar`] without extended attributes: ADD of a local archive, whose files are then
/// copied into the image without them (as before it used this applier).
pub fn extract_archive(reader: impl io::Read, dest: &std::path::Path) -> Result<()> {
    let opts = apply::Options {
        owners: rustix::process::geteuid().is_root(),
        whiteouts: false,
        xattrs: false,
    };
    apply::apply_with(reader, dest, opts)
}

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}
