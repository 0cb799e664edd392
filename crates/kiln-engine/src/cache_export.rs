//! `--cache-to type=registry`: the build's cache records as a kiln cache manifest in a
//! registry. Blobs go first, each only when a HEAD finds the repository lacks it, several at
//! once; the config next; the manifest last, so a reader never sees a manifest whose blobs are
//! missing.

use std::collections::BTreeMap;

use futures::StreamExt;
use kiln_oci::{Digest, Reference, media_type};
use kiln_progress::{Progress, Vertex};
use kiln_solver::Solved;
use kiln_worker::{LayerRef, Value};

use crate::cache_format::{CONFIG_MEDIA_TYPE, CacheConfig};
use crate::cache_spec::{CacheExport, CacheMode};
use crate::{Engine, Result};

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
        for e in exports {
            let v = progress.vertex("exporting cache to registry");
            let records = select_records(solved, result, e.mode);
            match self.export_registry_cache(e, &records, &v).await {
                Ok(()) => v.done(),
                Err(err) => {
                    let message = format!(
                        "failed to export cache to {}: {}",
                        e.reference,
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
        export: &CacheExport,
        records: &BTreeMap<String, &Value>,
        v: &Vertex,
    ) -> Result<()> {
        let mut reference = export.reference.clone();
        if reference.tag().is_none() && reference.digest().is_none() {
            reference = reference.with_tag("latest");
        }
        v.status("preparing build cache for export");
        let mut blobs: BTreeMap<String, LayerRef> = BTreeMap::new();
        for layer in records.values().flat_map(|r| r.layers()) {
            if let Some(blob) = &layer.blob {
                blobs
                    .entry(blob.to_string())
                    .or_insert_with(|| layer.clone());
            }
        }
        let pushed: Vec<Result<(Digest, u64, String)>> = futures::stream::iter(blobs.values())
            .map(|layer| self.push_cache_blob(&reference, layer, v))
            .buffer_unordered(PARALLEL)
            .collect()
            .await;
        let mut layers = pushed.into_iter().collect::<Result<Vec<_>>>()?;
        layers.sort_by(|a, b| a.0.as_ref().cmp(b.0.as_ref()));

        let config = CacheConfig::new(records.iter().map(|(k, v)| (k.clone(), *v)));
        let config_bytes = serde_json::to_vec(&config).expect("cache records serialise");
        let config_digest = self.content.put(&config_bytes, None)?;
        self.registry
            .push_blob(
                &reference,
                &config_digest,
                config_bytes.len() as u64,
                &self.content.path(&config_digest),
            )
            .await?;
        v.status(&format!("writing config {config_digest} done"));

        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media_type::OCI_MANIFEST,
            "config": {
                "mediaType": CONFIG_MEDIA_TYPE,
                "digest": config_digest.to_string(),
                "size": config_bytes.len(),
            },
            "layers": layers.iter().map(|(digest, size, media_type)| serde_json::json!({
                "mediaType": media_type,
                "digest": digest.to_string(),
                "size": size,
            })).collect::<Vec<_>>(),
        });
        let bytes = serde_json::to_vec(&manifest).expect("json values serialise");
        let digest = self
            .registry
            .push_manifest(&reference, media_type::OCI_MANIFEST, &bytes)
            .await?;
        v.status(&format!("writing cache manifest {digest} done"));
        Ok(())
    }

    /// Makes one layer blob present in the cache repository; returns its descriptor's
    /// (digest, size, media type). A blob kiln never pulled (a base layer no step unpacked, a
    /// layer of an imported cache) is left alone when the repository has it, and otherwise
    /// pulled from its source first.
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
            None => {
                self.fetch_missing_blobs(std::slice::from_ref(layer), v)
                    .await?;
                (self.content.size(&blob)?.unwrap_or(layer.size), true)
            }
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
