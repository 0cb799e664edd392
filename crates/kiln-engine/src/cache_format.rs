//! kiln's cache manifest (docs/cache.md): an OCI image manifest whose config blob maps cache
//! keys to the layer chains of their results, and whose layers are every blob those chains
//! name. Shared by the cache exporters and importers.

use std::collections::{BTreeMap, HashMap};

use kiln_oci::Digest;
use kiln_worker::Value;
use serde::{Deserialize, Serialize};

/// The config blob's media type: what tells a kiln cache from an image or BuildKit's cache.
pub(crate) const CONFIG_MEDIA_TYPE: &str = "application/vnd.kiln.cache.config.v1+json";

/// The most a cache config may weigh: a hostile registry cannot make kiln read more.
pub(crate) const MAX_CONFIG_BYTES: u64 = 64 << 20;

/// The config blob. Layers carry no `source`: every blob is in the manifest, so an importer
/// pulls from the cache's own repository.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct CacheConfig {
    pub records: BTreeMap<String, Value>,
}

impl CacheConfig {
    /// Records by key, sources cleared, in a stable order (the same cache, the same bytes).
    pub fn new<'a>(records: impl IntoIterator<Item = (String, &'a Value)>) -> CacheConfig {
        let records = records
            .into_iter()
            .map(|(key, value)| {
                let mut value = value.clone();
                if let Value::Rootfs { layers } = &mut value {
                    for l in layers {
                        l.source = None;
                    }
                }
                (key, value)
            })
            .collect();
        CacheConfig { records }
    }

    /// The records as the solver looks them up, every layer's source set to `source` (the
    /// cache manifest's pinned reference). Keys that are not digests and values that are no
    /// layer chain are refused: a hand-made config must not reach the solver.
    pub fn into_records(self, source: &str) -> Result<HashMap<Digest, Value>, String> {
        let mut out = HashMap::new();
        for (key, mut value) in self.records {
            let digest =
                kiln_oci::parse_digest(&key).map_err(|_| format!("invalid cache key `{key}`"))?;
            let Value::Rootfs { layers } = &mut value else {
                return Err(format!("record `{key}` is not a layer chain"));
            };
            for l in layers.iter_mut().filter(|l| l.blob.is_some()) {
                l.source = Some(source.to_string());
            }
            out.insert(digest, value);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_worker::LayerRef;

    fn layer(blob: &Digest, source: Option<&str>) -> LayerRef {
        LayerRef {
            diff_id: Some(blob.clone()),
            blob: Some(blob.clone()),
            size: 3,
            media_type: kiln_oci::media_type::OCI_LAYER_TAR.into(),
            source: source.map(str::to_string),
        }
    }

    #[test]
    fn round_trip_clears_and_sets_sources() {
        let key = kiln_oci::sha256(b"key");
        let blob = kiln_oci::sha256(b"blob");
        let empty = LayerRef {
            diff_id: None,
            blob: None,
            size: 0,
            media_type: String::new(),
            source: None,
        };
        let value = Value::Rootfs {
            layers: vec![
                layer(&blob, Some("docker.io/library/busybox@sha256:00")),
                empty,
            ],
        };
        let config = CacheConfig::new([(key.to_string(), &value)]);
        let bytes = serde_json::to_vec(&config).unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains("busybox"));
        let back: CacheConfig = serde_json::from_slice(&bytes).unwrap();
        let records = back.into_records("r.io/cache@sha256:11").unwrap();
        let layers = records[&key].layers();
        assert_eq!(layers[0].source.as_deref(), Some("r.io/cache@sha256:11"));
        assert_eq!(layers[1].source, None, "an empty layer has nothing to pull");
    }

    #[test]
    fn hostile_records_are_refused() {
        let bad_key: CacheConfig =
            serde_json::from_str(r#"{"records":{"nope":{"kind":"rootfs","layers":[]}}}"#).unwrap();
        assert!(
            bad_key
                .into_records("r")
                .unwrap_err()
                .contains("invalid cache key")
        );
        let key = kiln_oci::sha256(b"k");
        let context: CacheConfig = serde_json::from_str(&format!(
            r#"{{"records":{{"{key}":{{"kind":"context","name":"context"}}}}}}"#
        ))
        .unwrap();
        assert!(
            context
                .into_records("r")
                .unwrap_err()
                .contains("not a layer chain")
        );
    }
}
