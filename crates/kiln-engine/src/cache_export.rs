//! `--cache-to`: the build's cache records as a kiln cache manifest (cache_format.rs) in a
//! registry (`type=registry`) or an OCI layout directory (`type=local`). Blobs go first, each
//! only when the destination lacks it, several at once; the config next; the manifest (and a
//! layout's index.json) last, so a reader never sees a manifest whose blobs are missing.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use futures::StreamExt;
use kiln_oci::{Digest, Reference, media_type};
use kiln_progress::{Progress, Vertex};
use kiln_solver::Solved;
use kiln_worker::{LayerRef, Value};

use crate::cache_format::{CacheConfig, manifest_bytes};
use crate::cache_spec::{CacheExport, CacheLocation, CacheMode};
use crate::{Engine, Result, io, write_file_atomically};

/// Blob checks and uploads in flight at once (uploads are further limited per registry).
const PARALLEL: usize = 8;

/// The records a cache export writes: `Max` every solved step, `Min` the steps whose result
/// is a prefix of the final layer chain (the final stage's own steps and its base).
pub(crate) fn select_records<'a>(
    solved: &'a [(usize, Solved<Value>)],
    result: &Value,
    mode: CacheMode,
) -> BTreeMap<String, &'a Value> {
    let chain = result.layers();
    solved
        .iter()
        .filter(|(_, s)| matches!(s.value, Value::Rootfs { .. }))
        .filter(|(_, s)| {
            mode == CacheMode::Max || {
                let layers = s.value.layers();
                chain.len() >= layers.len() && chain[..layers.len()] == *layers
            }
        })
        .map(|(_, s)| (s.cache_key.to_string(), &s.value))
        .collect()
}

impl Engine {
    /// Every `--cache-to`, in order. A failed export is a warning unless its `ignore-error`
    /// is false, then it fails the build.
    pub(crate) async fn export_caches(
        &self,
        exports: &[CacheExport],
        solved: &[(usize, Solved<Value>)],
        result: &Value,
        progress: &Progress,
    ) -> Result<()> {
        // An inline cache went into the image config before the image was written.
        for e in exports
            .iter()
            .filter(|e| e.location != CacheLocation::Inline)
        {
            let v = progress.vertex(match e.location {
                CacheLocation::Local(_) => "exporting cache to client directory",
                _ => "exporting cache to registry",
            });
            let records = select_records(solved, result, e.mode);
            v.status("preparing build cache for export");
            let exported = match &e.location {
                CacheLocation::Registry(r) => self.export_registry_cache(r, &records, &v).await,
                CacheLocation::Local(dir) => self.export_local_cache(dir, &records, &v).await,
                CacheLocation::Inline => Ok(()), // filtered out above
            };
            match exported {
                Ok(()) => v.done(),
                Err(err) => {
                    let message = format!(
                        "failed to export cache to {}: {}",
                        e.location,
                        kiln_solver::error_chain(&err)
                    );
                    v.error(&message);
                    if !e.ignore_error {
                        return Err(err);
                    }
                    progress.warn(message);
                }
            }
        }
        Ok(())
    }

    async fn export_registry_cache(
        &self,
        reference: &Reference,
        records: &BTreeMap<String, &Value>,
        v: &Vertex,
    ) -> Result<()> {
        let mut reference = reference.clone();
        if reference.tag().is_none() && reference.digest().is_none() {
            reference = reference.with_tag("latest");
        }
        let pushed: Vec<Result<(Digest, u64, String)>> =
            futures::stream::iter(blobs_of(records).into_values())
                .map(|layer| self.push_cache_blob(&reference, layer, v))
                .buffer_unordered(PARALLEL)
                .collect()
                .await;
        let layers = sorted(pushed)?;

        let (config_digest, config_bytes) = self.cache_config(records)?;
        self.registry
            .push_blob(
                &reference,
                &config_digest,
                config_bytes.len() as u64,
                &self.content.path(&config_digest),
            )
            .await?;
        v.status(&format!("writing config {config_digest} done"));
        let bytes = manifest_bytes(&config_digest, config_bytes.len(), &layers);
        let digest = self
            .registry
            .push_manifest(&reference, media_type::OCI_MANIFEST, &bytes)
            .await?;
        v.status(&format!("writing cache manifest {digest} done"));
        Ok(())
    }

    /// The config blob for `records`, put in the content store (a push reads it from there).
    fn cache_config(&self, records: &BTreeMap<String, &Value>) -> Result<(Digest, Vec<u8>)> {
        let config = CacheConfig::new(records.iter().map(|(k, v)| (k.clone(), *v)));
        let bytes = serde_json::to_vec(&config).expect("cache records serialise");
        Ok((self.content.put(&bytes, None)?, bytes))
    }

    /// Makes one layer blob present in the cache repository; returns its descriptor's
    /// (digest, size, media type). A blob kiln never pulled (a base layer no step unpacked, a
    /// layer of an imported cache) is left alone when the repository has it, and otherwise
    /// fetched from its source first.
    async fn push_cache_blob(
        &self,
        reference: &Reference,
        layer: &LayerRef,
        v: &Vertex,
    ) -> Result<(Digest, u64, String)> {
        let blob = layer.blob.clone().expect("layers with a blob only");
        let (size, push) = match self.content.size(&blob)? {
            Some(size) => (size, true),
            None if self.registry.blob_exists(reference, &blob).await? => (layer.size, false),
            None => (self.local_blob(layer, &blob, v).await?, true),
        };
        // push_blob HEADs first: a blob the repository holds is not uploaded again.
        if push
            && self
                .registry
                .push_blob(reference, &blob, size, &self.content.path(&blob))
                .await?
                != kiln_registry::BlobPush::Exists
        {
            v.status(&format!("writing layer {blob} done"));
        }
        Ok((blob, size, layer.media_type.clone()))
    }

    /// Fetches a layer's blob into the content store from its source; returns its size.
    async fn local_blob(&self, layer: &LayerRef, blob: &Digest, v: &Vertex) -> Result<u64> {
        if let Some(size) = self.content.size(blob)? {
            return Ok(size);
        }
        v.status(&format!("pulling {blob}"));
        kiln_worker::fetch_layer_blob(&self.registry, &self.content, layer, blob).await?;
        Ok(self.content.size(blob)?.unwrap_or(layer.size))
    }

    /// An OCI image layout at `dir`: blobs it lacks are copied in, then the config, the
    /// manifest and `index.json` (its entry tagged `latest` replaced, others kept); last, blobs
    /// no entry of the index reaches any more are removed, so re-exporting does not grow it.
    async fn export_local_cache(
        &self,
        dir: &Path,
        records: &BTreeMap<String, &Value>,
        v: &Vertex,
    ) -> Result<()> {
        let blobs_dir = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs_dir).map_err(io(format!(
            "creating the cache directory `{}`",
            blobs_dir.display()
        )))?;
        let written: Vec<Result<(Digest, u64, String)>> =
            futures::stream::iter(blobs_of(records).into_values())
                .map(|layer| async move {
                    let blob = layer.blob.clone().expect("layers with a blob only");
                    let size = match layout_blob_size(dir, &blob) {
                        Some(size) => size,
                        None => {
                            let size = self.local_blob(layer, &blob, v).await?;
                            let (from, dir) = (self.content.path(&blob), dir.to_path_buf());
                            let b = blob.clone();
                            tokio::task::spawn_blocking(move || copy_into_layout(&from, &dir, &b))
                                .await??;
                            v.status(&format!("writing layer {blob} done"));
                            size
                        }
                    };
                    Ok((blob, size, layer.media_type.clone()))
                })
                .buffer_unordered(PARALLEL)
                .collect()
                .await;
        let layers = sorted(written)?;
        let (config_digest, config_bytes) = self.cache_config(records)?;
        write_layout_blob(dir, &config_digest, &config_bytes)?;
        v.status(&format!("writing config {config_digest} done"));
        let manifest = manifest_bytes(&config_digest, config_bytes.len(), &layers);
        let manifest_digest = kiln_oci::sha256(&manifest);
        write_layout_blob(dir, &manifest_digest, &manifest)?;
        v.status(&format!("writing cache manifest {manifest_digest} done"));

        let index_path = dir.join("index.json");
        let mut entries: Vec<serde_json::Value> = std::fs::read(&index_path)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|i| i["manifests"].as_array().cloned())
            .unwrap_or_default();
        entries.retain(|m| m["annotations"][REF_NAME].as_str() != Some("latest"));
        entries.push(serde_json::json!({
            "mediaType": media_type::OCI_MANIFEST,
            "digest": manifest_digest.to_string(),
            "size": manifest.len(),
            "annotations": { REF_NAME: "latest" },
        }));
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
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
        let removed = remove_unreachable_blobs(dir, &entries)?;
        if removed > 0 {
            v.status(&format!("removed {removed} old blobs"));
        }
        Ok(())
    }
}

const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Every blob the records name, once, by digest.
fn blobs_of<'a>(records: &BTreeMap<String, &'a Value>) -> BTreeMap<String, &'a LayerRef> {
    let mut blobs = BTreeMap::new();
    for layer in records.values().flat_map(|r| r.layers()) {
        if let Some(blob) = &layer.blob {
            blobs.entry(blob.to_string()).or_insert(layer);
        }
    }
    blobs
}

/// Layer descriptors in digest order (the same records, the same manifest).
fn sorted(layers: Vec<Result<(Digest, u64, String)>>) -> Result<Vec<(Digest, u64, String)>> {
    let mut layers = layers.into_iter().collect::<Result<Vec<_>>>()?;
    layers.sort_by(|a, b| a.0.as_ref().cmp(b.0.as_ref()));
    Ok(layers)
}

fn layout_blob(dir: &Path, digest: &Digest) -> PathBuf {
    dir.join("blobs/sha256").join(digest.digest())
}

/// The size of a blob the layout already holds. Blobs are named by digest and written by
/// rename, so a file of that name is the blob (a changed one fails its digest on import).
fn layout_blob_size(dir: &Path, digest: &Digest) -> Option<u64> {
    std::fs::metadata(layout_blob(dir, digest))
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.len())
}

fn copy_into_layout(from: &Path, dir: &Path, digest: &Digest) -> Result<()> {
    let dest = layout_blob(dir, digest);
    write_file_atomically(&dest, |w| {
        let mut file =
            std::fs::File::open(from).map_err(io(format!("reading `{}`", from.display())))?;
        std::io::copy(&mut file, w).map_err(io(format!("writing `{}`", dest.display())))?;
        Ok(())
    })
}

fn write_layout_blob(dir: &Path, digest: &Digest, bytes: &[u8]) -> Result<()> {
    let dest = layout_blob(dir, digest);
    if layout_blob_size(dir, digest) == Some(bytes.len() as u64) {
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
            let Ok(bytes) = std::fs::read(layout_blob(dir, &digest)) else {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(names: &[&str]) -> Value {
        Value::Rootfs {
            layers: names
                .iter()
                .map(|n| {
                    let d = kiln_oci::sha256(n.as_bytes());
                    LayerRef {
                        diff_id: Some(d.clone()),
                        blob: Some(d),
                        size: 1,
                        media_type: media_type::OCI_LAYER_TAR.into(),
                        source: None,
                    }
                })
                .collect(),
        }
    }

    fn solved(key: &str, value: Value) -> Solved<Value> {
        Solved {
            value,
            cache_key: kiln_oci::sha256(key.as_bytes()),
            cached: false,
        }
    }

    #[test]
    fn min_keeps_the_final_chain_and_max_keeps_everything() {
        let all = vec![
            (0, solved("from", chain(&["base"]))),
            (1, solved("builder", chain(&["base", "tools"]))),
            (2, solved("copy", chain(&["base", "app"]))),
            (3, solved("run", chain(&["base", "app", "run"]))),
            (
                4,
                solved(
                    "ctx",
                    Value::Context {
                        name: "context".into(),
                    },
                ),
            ),
        ];
        let result = all[3].1.value.clone();
        let keys =
            |mode| -> Vec<String> { select_records(&all, &result, mode).into_keys().collect() };
        let mut want_min: Vec<String> = ["from", "copy", "run"]
            .iter()
            .map(|k| kiln_oci::sha256(k.as_bytes()).to_string())
            .collect();
        want_min.sort();
        assert_eq!(keys(CacheMode::Min), want_min);
        assert_eq!(
            keys(CacheMode::Max).len(),
            4,
            "every layer chain, no context"
        );
    }
}
