//! `--cache-to`: the build's cache records as a kiln cache manifest (cache_format.rs) in a
//! registry (`type=registry`), an OCI layout directory (`type=local`, cache_layout.rs) or a
//! bucket (`type=s3`, `type=azblob`, cache_store/).
//! Layers go in the export's compression (gzip by default, made once and recorded in
//! `blob-variants/` as image exports do); blobs go first, each only when the destination lacks
//! it, several at once; the config next; the manifest (and a layout's index.json) last, so a
//! reader never sees a manifest whose blobs are missing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use futures::StreamExt;
use kiln_exporter::compress::{CompressionOpts, ExportOpts};
use kiln_oci::{Digest, Reference, media_type};
use kiln_progress::{Progress, Vertex};
use kiln_solver::Solved;
use kiln_worker::{LayerRef, LlbGraph, Value};

use crate::cache_format::{CacheConfig, MountRecord, manifest_bytes};
use crate::cache_layout;
use crate::cache_mounts::build_mounts;
use crate::cache_spec::{CacheExport, CacheLocation, CacheMode, CacheMounts};
use crate::cache_store::{BucketCache, ObjectCache};
use crate::{Engine, Result};

/// Blob checks and uploads in flight at once (uploads are further limited per registry).
const PARALLEL: usize = 8;

/// The records a cache export writes: `Max` every solved step, `Min` the steps whose result
/// is a prefix of the final layer chain (the final stage's own steps and its base).
/// With several results (one per platform), `Min` keeps the prefixes of any of them.
pub(crate) fn select_records<'a>(
    solved: &'a [(usize, Solved<Value>)],
    results: &[&Value],
    mode: CacheMode,
) -> BTreeMap<String, &'a Value> {
    solved
        .iter()
        .filter(|(_, s)| matches!(s.value, Value::Rootfs { .. }))
        .filter(|(_, s)| {
            mode == CacheMode::Max
                || results.iter().any(|result| {
                    let (chain, layers) = (result.layers(), s.value.layers());
                    chain.len() >= layers.len() && chain[..layers.len()] == *layers
                })
        })
        .map(|(_, s)| (s.cache_key.to_string(), &s.value))
        .collect()
}

/// What a build hands its cache exports.
pub(crate) struct ExportInputs<'a> {
    /// Every step the build solved, by vertex.
    pub solved: &'a [(usize, Solved<Value>)],
    /// The build's results: one per platform.
    pub results: Vec<&'a Value>,
    pub graph: &'a LlbGraph,
    /// Cache mounts the build's `--cache-from` brought, by identity.
    pub imported_mounts: &'a HashMap<String, LayerRef>,
}

/// Where an export writes.
enum Dest<'a> {
    Registry(Reference),
    Layout(&'a Path),
    Bucket(ObjectCache),
}

/// Where `location` writes; a bucket is opened here (bad credentials' errors are the export's).
async fn dest(location: &CacheLocation) -> Result<Dest<'_>> {
    Ok(match location {
        CacheLocation::Registry(r) if r.tag().is_none() && r.digest().is_none() => {
            Dest::Registry(r.with_tag("latest"))
        }
        CacheLocation::Registry(r) => Dest::Registry(r.clone()),
        CacheLocation::Local(dir) => Dest::Layout(dir),
        CacheLocation::S3(c) => Dest::Bucket(BucketCache::S3(c).open_for_export().await?),
        CacheLocation::Azblob(c) => Dest::Bucket(BucketCache::Azblob(c).open_for_export().await?),
        CacheLocation::Inline => {
            return Err(crate::Error::Usage(
                "an inline cache is written into the image config".into(),
            ));
        }
    })
}

impl Dest<'_> {
    /// Blob checks and uploads at once: a bucket's `upload_parallelism`.
    fn parallel(&self) -> usize {
        match self {
            Dest::Bucket(b) => b.parallelism,
            _ => PARALLEL,
        }
    }
}

impl Engine {
    /// Every `--cache-to`, in order. A failed export is a warning unless its `ignore-error`
    /// is false, then it fails the build.
    pub(crate) async fn export_caches(
        &self,
        exports: &[CacheExport],
        inputs: &ExportInputs<'_>,
        progress: &Progress,
    ) -> Result<()> {
        for e in exports {
            let v = progress.vertex(match &e.location {
                // Written into the image config before the image was (cache_inline.rs).
                CacheLocation::Inline => continue,
                CacheLocation::Registry(_) => "exporting cache to registry",
                CacheLocation::Local(_) => "exporting cache to client directory",
                CacheLocation::S3(_) => "exporting cache to Amazon S3",
                CacheLocation::Azblob(_) => "exporting cache to Azure Blob Storage",
            });
            v.status("preparing build cache for export");
            let records = select_records(inputs.solved, &inputs.results, e.mode);
            let mounts = build_mounts(inputs.graph, inputs.solved, &e.cache_mounts, &self.root);
            // A named id no RUN mounts is most likely misspelt: said, not silently skipped.
            if let CacheMounts::Ids(ids) = &e.cache_mounts {
                for id in ids.iter().filter(|id| !mounts.iter().any(|m| &m.id == *id)) {
                    progress.warn(format!(
                        "cache mount `{id}` (cache-mounts=) is mounted by no RUN of this \
                         build: nothing exported for it"
                    ));
                }
            }
            let exported = async {
                let dest = dest(&e.location).await?;
                let (mounts, made) = self
                    .export_cache_mounts(
                        &mounts,
                        inputs.imported_mounts,
                        e.cache_mounts_max,
                        &e.compression,
                        e.oci,
                        progress,
                    )
                    .await?;
                let written = self.export_cache(&dest, &records, &mounts, e, &v).await;
                // The mount tars exist for this export only: the dirs are what is kept.
                for blob in made {
                    let _ = self.content.delete(&blob);
                }
                written
            };
            match exported.await {
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

    async fn export_cache(
        &self,
        dest: &Dest<'_>,
        records: &BTreeMap<String, &Value>,
        mounts: &BTreeMap<String, MountRecord>,
        e: &CacheExport,
        v: &Vertex,
    ) -> Result<()> {
        if let Dest::Layout(dir) = dest {
            cache_layout::create(dir)?;
        }
        let blobs = blobs_of(records);
        // A blob kiln does not hold (a layer of an imported cache no step needed) stays as it is
        // where the destination has it; otherwise it is fetched and exported like the rest.
        // Streams of owned items: closures over borrowed ones make the build's future not
        // `Send` (rustc cannot prove it for every lifetime).
        let owned: Vec<(String, LayerRef)> = blobs
            .iter()
            .map(|(n, l)| (n.clone(), (*l).clone()))
            .collect();
        let checks: Vec<Result<Option<String>>> = futures::stream::iter(owned)
            .map(|(name, layer)| async move {
                let blob = layer.blob.clone().expect("layers with a blob only");
                if self.content.contains(&blob) {
                    return Ok(None);
                }
                if self.dest_has(dest, &blob).await? {
                    return Ok(Some(name));
                }
                v.status(&format!("pulling {blob}"));
                kiln_worker::fetch_layer_blob(
                    &self.registry,
                    &self.blob_stores,
                    &self.content,
                    &layer,
                    &blob,
                )
                .await?;
                Ok(None)
            })
            .buffer_unordered(dest.parallel())
            .collect()
            .await;
        let remote: HashSet<String> = checks
            .into_iter()
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .flatten()
            .collect();
        let held: Vec<&LayerRef> = blobs
            .iter()
            .filter(|(name, _)| !remote.contains(*name))
            .map(|(_, l)| *l)
            .collect();
        let exported = self
            .compress_cache_layers(&held, &e.compression, e.oci)
            .await?;
        let written: Vec<Result<()>> = futures::stream::iter(exported.values().cloned())
            .map(|layer| async move {
                let blob = layer.blob.as_ref().expect("layers with a blob only");
                if self.dest_put(dest, blob, layer.size).await? {
                    v.status(&format!("writing layer {blob} done"));
                }
                Ok(())
            })
            .buffer_unordered(dest.parallel())
            .collect()
            .await;
        written.into_iter().collect::<Result<Vec<_>>>()?;
        // Cache mount blobs: made for this export, or carried over from the import (fetched
        // only when the destination lacks them).
        let written: Vec<Result<()>> = futures::stream::iter(mounts.values().cloned())
            .map(|m| async move {
                let blob = m.layer.blob.as_ref().expect("mount records have a blob");
                let fetched = !self.content.contains(blob);
                if fetched {
                    if self.dest_has(dest, blob).await? {
                        return Ok(());
                    }
                    v.status(&format!("pulling {blob}"));
                    kiln_worker::fetch_layer_blob(
                        &self.registry,
                        &self.blob_stores,
                        &self.content,
                        &m.layer,
                        blob,
                    )
                    .await?;
                }
                let put = self.dest_put(dest, blob, m.layer.size).await;
                if fetched {
                    // Fetched only to pass it on, like the tars made for this export.
                    let _ = self.content.delete(blob);
                }
                if put? {
                    v.status(&format!("writing cache mount {} {blob} done", m.id));
                }
                Ok(())
            })
            .buffer_unordered(PARALLEL)
            .collect()
            .await;
        written.into_iter().collect::<Result<Vec<_>>>()?;

        // Records name the blobs as exported; the manifest lists each blob once.
        let as_exported = |layer: &LayerRef| -> LayerRef {
            match layer
                .blob
                .as_ref()
                .and_then(|b| exported.get(&b.to_string()))
            {
                Some(e) => e.clone(),
                None => layer.clone(),
            }
        };
        let records: BTreeMap<String, Value> = records
            .iter()
            .map(|(key, value)| {
                let layers = value.layers().iter().map(as_exported).collect();
                (key.clone(), Value::Rootfs { layers })
            })
            .collect();
        let mut layers: BTreeMap<String, (Digest, u64, String)> = BTreeMap::new();
        for l in blobs.values().map(|l| as_exported(l)) {
            let blob = l.blob.clone().expect("layers with a blob only");
            layers.insert(blob.to_string(), (blob, l.size, l.media_type.clone()));
        }
        for m in mounts.values() {
            let blob = m.layer.blob.clone().expect("mount records have a blob");
            let entry = (blob, m.layer.size, m.layer.media_type.clone());
            layers.insert(entry.0.to_string(), entry);
        }
        let layers: Vec<_> = layers.into_values().collect();

        let config = CacheConfig::new(records.iter().map(|(k, v)| (k.clone(), v)))
            .with_mounts(mounts.iter().map(|(k, m)| (k.clone(), m.clone())));
        let config_bytes = serde_json::to_vec(&config).expect("cache records serialise");
        let config_digest = self.content.put(&config_bytes, None)?;
        self.dest_put(dest, &config_digest, config_bytes.len() as u64)
            .await?;
        v.status(&format!("writing config {config_digest} done"));
        let (manifest, manifest_type) = manifest_bytes(
            &config_digest,
            config_bytes.len(),
            &layers,
            e.image_manifest,
            e.oci,
        );
        let digest = match dest {
            Dest::Registry(r) => {
                self.registry
                    .push_manifest(r, manifest_type, &manifest)
                    .await?
            }
            Dest::Layout(dir) => {
                let digest = kiln_oci::sha256(&manifest);
                cache_layout::write_blob(dir, &digest, &manifest)?;
                let removed =
                    cache_layout::publish(dir, &digest, manifest.len(), manifest_type, &e.tag)?;
                if removed > 0 {
                    v.status(&format!("removed {removed} old blobs"));
                }
                digest
            }
            Dest::Bucket(b) => {
                b.put_manifest(&manifest).await?;
                kiln_oci::sha256(&manifest)
            }
        };
        v.status(&format!("writing cache manifest {digest} done"));
        Ok(())
    }

    async fn dest_has(&self, dest: &Dest<'_>, blob: &Digest) -> Result<bool> {
        Ok(match dest {
            Dest::Registry(r) => self.registry.blob_exists(r, blob).await?,
            Dest::Layout(dir) => cache_layout::blob_size(dir, blob).is_some(),
            Dest::Bucket(b) => b.has(blob).await?,
        })
    }

    /// Makes a blob of the content store present at the destination; whether it had to be
    /// written (a registry or bucket HEAD, or the layout's file, says when it is there already).
    async fn dest_put(&self, dest: &Dest<'_>, blob: &Digest, size: u64) -> Result<bool> {
        let path = self.content.path(blob);
        match dest {
            Dest::Bucket(b) => b.put_blob(blob, &path).await,
            Dest::Registry(r) => Ok(self.registry.push_blob(r, blob, size, &path).await?
                != kiln_registry::BlobPush::Exists),
            Dest::Layout(dir) => {
                if cache_layout::blob_size(dir, blob).is_some() {
                    return Ok(false);
                }
                let (dir, blob) = (dir.to_path_buf(), blob.clone());
                tokio::task::spawn_blocking(move || cache_layout::copy_blob(&path, &dir, &blob))
                    .await??;
                Ok(true)
            }
        }
    }

    /// The held layers as the export's compression gives them (by original blob digest): a
    /// stand-in image of just these layers goes through the image exporters' compression, so
    /// a blob made for an earlier export (or cache export) is reused, not made again.
    async fn compress_cache_layers(
        &self,
        held: &[&LayerRef],
        compression: &CompressionOpts,
        oci: bool,
    ) -> Result<HashMap<String, LayerRef>> {
        if held.is_empty() {
            return Ok(HashMap::new());
        }
        let mut diff_ids = Vec::new();
        let mut descs = Vec::new();
        for l in held {
            let blob = l.blob.clone().expect("layers with a blob only");
            let size = self.content.size(&blob)?.unwrap_or(l.size);
            diff_ids.push(
                l.diff_id
                    .clone()
                    .unwrap_or_else(|| blob.clone())
                    .to_string(),
            );
            descs.push(serde_json::json!({
                "mediaType": l.media_type,
                "digest": blob.to_string(),
                "size": size,
            }));
        }
        let config = serde_json::to_vec(&serde_json::json!({
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
        }))
        .expect("json values serialise");
        let config_digest = self.content.put(&config, None)?;
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media_type::OCI_MANIFEST,
            "config": {
                "mediaType": media_type::OCI_CONFIG,
                "digest": config_digest.to_string(),
                "size": config.len(),
            },
            "layers": descs,
        }))
        .expect("json values serialise");
        let manifest = self.content.put(&manifest, None)?;
        let opts = ExportOpts {
            compression: *compression,
            oci,
            ..ExportOpts::store()
        };
        let exported = self.exported_manifest(&manifest, &opts).await?;
        let doc: serde_json::Value =
            serde_json::from_slice(&self.content.read(&exported.manifest)?).map_err(|e| {
                crate::Error::Invalid {
                    what: "exported cache layers".into(),
                    source: Box::new(e),
                }
            })?;
        let out_layers = doc["layers"].as_array().cloned().unwrap_or_default();
        let mut out = HashMap::new();
        for (l, d) in held.iter().zip(&out_layers) {
            let blob = d["digest"]
                .as_str()
                .and_then(|d| kiln_oci::parse_digest(d).ok())
                .expect("the exporter writes valid digests");
            out.insert(
                l.blob
                    .as_ref()
                    .expect("layers with a blob only")
                    .to_string(),
                LayerRef {
                    diff_id: l.diff_id.clone(),
                    blob: Some(blob),
                    size: d["size"].as_u64().unwrap_or(l.size),
                    media_type: d["mediaType"].as_str().unwrap_or_default().to_string(),
                    source: None,
                },
            );
        }
        Ok(out)
    }
}

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
            |mode| -> Vec<String> { select_records(&all, &[&result], mode).into_keys().collect() };
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
