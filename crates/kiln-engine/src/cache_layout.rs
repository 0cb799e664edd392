//! A cache as an OCI image layout directory (`--cache-to type=local,dest=DIR`): blob files,
//! `index.json` and `oci-layout`, and the removal of blobs a new index no longer reaches.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use kiln_oci::{Digest, media_type};

use crate::{Result, io, write_file_atomically};

const REF_NAME: &str = "org.opencontainers.image.ref.name";

pub(crate) fn create(dir: &Path) -> Result<()> {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).map_err(io(format!(
        "creating the cache directory `{}`",
        blobs.display()
    )))
}

fn blob_path(dir: &Path, digest: &Digest) -> PathBuf {
    dir.join("blobs/sha256").join(digest.digest())
}

/// The size of a blob the layout already holds. Blobs are named by digest and written by
/// rename, so a file of that name is the blob (a changed one fails its digest on import).
pub(crate) fn blob_size(dir: &Path, digest: &Digest) -> Option<u64> {
    std::fs::metadata(blob_path(dir, digest))
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.len())
}

pub(crate) fn copy_blob(from: &Path, dir: &Path, digest: &Digest) -> Result<()> {
    let dest = blob_path(dir, digest);
    write_file_atomically(&dest, |w| {
        let mut file =
            std::fs::File::open(from).map_err(io(format!("reading `{}`", from.display())))?;
        std::io::copy(&mut file, w).map_err(io(format!("writing `{}`", dest.display())))?;
        Ok(())
    })
}

pub(crate) fn write_blob(dir: &Path, digest: &Digest, bytes: &[u8]) -> Result<()> {
    let dest = blob_path(dir, digest);
    if blob_size(dir, digest) == Some(bytes.len() as u64) {
        return Ok(());
    }
    write_file_atomically(&dest, |w| {
        w.write_all(bytes)
            .map_err(io(format!("writing `{}`", dest.display())))
    })
}

/// Removes the files of `blobs/sha256` that no index entry reaches (through manifests'
/// config and layers and indexes' manifests); returns how many.
fn remove_unreachable_blobs(dir: &Path, entries: &[serde_json::Value]) -> Result<usize> {
    let mut reachable = HashSet::new();
    let mut todo: Vec<serde_json::Value> = entries.to_vec();
    while let Some(desc) = todo.pop() {
        let Some(digest) = desc["digest"]
            .as_str()
            .and_then(|d| kiln_oci::parse_digest(d).ok())
        else {
            continue;
        };
        if !reachable.insert(digest.digest().to_string()) {
            continue;
        }
        let media_type = desc["mediaType"].as_str().unwrap_or_default();
        if media_type.contains("manifest") || media_type.contains("index") {
            let Ok(bytes) = std::fs::read(blob_path(dir, &digest)) else {
                continue;
            };
            let Ok(doc) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
                continue;
            };
            todo.push(doc["config"].clone());
            for key in ["layers", "manifests"] {
                todo.extend(doc[key].as_array().cloned().unwrap_or_default());
            }
        }
    }
    let blobs_dir = dir.join("blobs/sha256");
    let listing =
        std::fs::read_dir(&blobs_dir).map_err(io(format!("listing `{}`", blobs_dir.display())))?;
    let mut removed = 0;
    for entry in listing.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        // Only blob names: temporary files of a concurrent writer are left to it.
        let is_blob = name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit());
        if is_blob
            && !reachable.contains(&name)
            && entry.file_type().is_ok_and(|t| t.is_file())
            && std::fs::remove_file(entry.path()).is_ok()
        {
            removed += 1;
        }
    }
    Ok(removed)
}

/// Points the index's entry named `tag` at `manifest` (of `media_type`; entries with other
/// names are kept), then removes the blobs no entry reaches any more; returns how many were
/// removed.
pub(crate) fn publish(
    dir: &Path,
    manifest: &Digest,
    size: usize,
    media_type: &str,
    tag: &str,
) -> Result<usize> {
    let index_path = dir.join("index.json");
    let mut entries: Vec<serde_json::Value> = std::fs::read(&index_path)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|i| i["manifests"].as_array().cloned())
        .unwrap_or_default();
    entries.retain(|m| m["annotations"][REF_NAME].as_str() != Some(tag));
    entries.push(serde_json::json!({
        "mediaType": media_type,
        "digest": manifest.to_string(),
        "size": size,
        "annotations": { REF_NAME: tag },
    }));
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_INDEX,
        "manifests": entries,
    });
    let index_bytes = serde_json::to_vec(&index).expect("json values serialise");
    let layout_path = dir.join("oci-layout");
    if !layout_path.exists() {
        write_file_atomically(&layout_path, |w| {
            w.write_all(br#"{"imageLayoutVersion":"1.0.0"}"#)
                .map_err(io("writing oci-layout"))
        })?;
    }
    write_file_atomically(&index_path, |w| {
        w.write_all(&index_bytes).map_err(io("writing index.json"))
    })?;
    remove_unreachable_blobs(dir, &entries)
}
