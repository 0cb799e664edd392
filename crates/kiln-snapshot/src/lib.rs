//! Layers on disk and their diffs: unpack OCI/Docker layer tarballs into directories usable as
//! overlayfs lower dirs, mount overlays for build steps, and turn an overlay upper dir back into
//! an OCI layer tarball.
//!
//! Every stored layer is kept in overlay format: deletions are overlay whiteouts (character
//! devices 0/0) and opaque directories carry `trusted.overlay.opaque=y`; the OCI `.wh.` spelling
//! only exists inside tarballs. This crate knows layers, directories and mounts; it must not know
//! images, registries or the build graph.

mod apply;
pub mod archive;
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
        context: false,
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
        context: false,
    };
    apply::apply_with(reader, dest, opts)
}

/// Extracts a build context tarball (from stdin or a URL) into the empty directory `dest` with
/// the applier's rules, read as BuildKit unpacks a context: `..` above the root and a leading
/// `/` stay at the root, hardlink targets resolve inside it, and nothing is written through a
/// symlink. Character and block devices are refused (BuildKit would create them; kiln will not
/// make live device nodes on the host). Owners are kept only when running as root.
pub fn extract_context(reader: impl io::Read, dest: &std::path::Path) -> Result<()> {
    extract_context_filtered(reader, dest, &|_| true)
}

/// [`extract_context`] of only the entries whose cleaned path (components below the root)
/// `keep` accepts: the others are skipped unread and unchecked.
pub fn extract_context_filtered(
    reader: impl io::Read,
    dest: &std::path::Path,
    keep: &dyn Fn(&[std::ffi::OsString]) -> bool,
) -> Result<()> {
    let opts = apply::Options {
        owners: rustix::process::geteuid().is_root(),
        whiteouts: false,
        xattrs: false,
        context: true,
    };
    apply::apply_filtered(reader, dest, opts, keep)
}

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}

#[cfg(test)]
mod context_tests {
    use super::*;

    fn tar_of(entries: &[(&str, tar::EntryType, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(0o644);
            h.set_size(if *kind == tar::EntryType::Regular {
                1
            } else {
                0
            });
            // Raw names: the builder's setters refuse `..` and absolute paths.
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
            h.set_cksum();
            let data: &[u8] = if *kind == tar::EntryType::Regular {
                b"x"
            } else {
                b""
            };
            b.append(&h, data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn extract(entries: &[(&str, tar::EntryType, &str)]) -> (tempfile::TempDir, Result<()>) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("ctx")).unwrap();
        let r = extract_context(&tar_of(entries)[..], &dir.path().join("ctx"));
        (dir, r)
    }

    #[test]
    fn dotdot_and_absolute_names_land_inside_as_buildkit_puts_them() {
        use tar::EntryType::Regular;
        let (dir, r) = extract(&[("../evil", Regular, ""), ("/abs/f", Regular, "")]);
        r.unwrap();
        assert!(dir.path().join("ctx/evil").is_file());
        assert!(dir.path().join("ctx/abs/f").is_file());
        assert!(!dir.path().join("evil").exists());
    }

    #[test]
    fn writes_through_symlinks_links_out_and_devices_are_refused() {
        use tar::EntryType::{Block, Char, Link, Regular, Symlink};
        for entries in [
            &[("l", Symlink, "/tmp"), ("l/x", Regular, "")][..],
            &[("l", Symlink, "../../.."), ("l/x", Regular, "")][..],
            &[("h", Link, "../../etc/passwd")][..],
            &[("c", Char, "")][..],
            &[("b", Block, "")][..],
        ] {
            let (dir, r) = extract(entries);
            assert!(
                r.is_err(),
                "{:?} was accepted",
                entries[entries.len() - 1].0
            );
            assert!(!dir.path().join("x").exists());
        }
    }

    #[test]
    fn a_filter_writes_only_what_it_keeps() {
        use tar::EntryType::{Char, Regular};
        let bytes = tar_of(&[("a/x", Regular, ""), ("b/y", Regular, ""), ("c", Char, "")]);
        let dir = tempfile::tempdir().unwrap();
        extract_context_filtered(&bytes[..], dir.path(), &|c| {
            c.first().is_some_and(|f| f == "a")
        })
        .unwrap();
        assert!(dir.path().join("a/x").is_file());
        assert!(!dir.path().join("b").exists());
        assert!(!dir.path().join("c").exists());
    }

    #[test]
    fn symlinks_out_are_kept_as_written() {
        use tar::EntryType::{Fifo, Symlink};
        let (dir, r) = extract(&[("s", Symlink, "../../../etc/passwd"), ("p", Fifo, "")]);
        r.unwrap();
        let target = std::fs::read_link(dir.path().join("ctx/s")).unwrap();
        assert_eq!(target, std::path::Path::new("../../../etc/passwd"));
    }
}
