//! Dropping directories an overlay copied up without changing them.

use std::fs::{self, Metadata};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Removes from an overlay upper dir the directories that hold no change: overlayfs copies a
/// directory up when anything below it is touched (runc creating and removing the stubs it
/// mounts /etc/hosts and /etc/resolv.conf on, say), and such a copy would otherwise make a layer
/// of a step that changed nothing. A directory stays when it is new, opaque, non-empty, or its
/// mode or owner differ from the lower one.
pub fn prune_unchanged_dirs(upper: &Path, lowers: &[PathBuf]) -> io::Result<()> {
    prune_dir(upper, Path::new(""), lowers).map(|_| ())
}

/// Returns whether `upper/rel` is now empty.
fn prune_dir(upper: &Path, rel: &Path, lowers: &[PathBuf]) -> io::Result<bool> {
    let dir = upper.join(rel);
    let mut remaining = 0usize;
    for entry in fs::read_dir(&dir)? {
        let entry = entry?;
        let child_rel = rel.join(entry.file_name());
        let meta = fs::symlink_metadata(entry.path())?;
        if meta.is_dir()
            && prune_dir(upper, &child_rel, lowers)?
            && unchanged_dir(&entry.path(), &meta, &child_rel, lowers)
        {
            fs::remove_dir(entry.path())?;
            continue;
        }
        remaining += 1;
    }
    Ok(remaining == 0)
}

fn unchanged_dir(path: &Path, meta: &Metadata, rel: &Path, lowers: &[PathBuf]) -> bool {
    let opaque = rustix::fs::lgetxattr(path, "trusted.overlay.opaque", &mut [0u8; 1]).is_ok();
    if opaque {
        return false;
    }
    for lower in lowers {
        if let Ok(lm) = fs::symlink_metadata(lower.join(rel)) {
            let whiteout = lm.file_type().is_char_device() && lm.rdev() == 0;
            return !whiteout
                && lm.is_dir()
                && lm.mode() == meta.mode()
                && lm.uid() == meta.uid()
                && lm.gid() == meta.gid();
        }
    }
    false
}
