//! kiln's cache manifest (docs/cache.md): an OCI image manifest whose config blob maps cache
//! keys to the layer chains of their results, and whose layers are every blob those chains
//! name. Shared by the cache exporters and importers.

use std::collections::{BTreeMap, HashMap};

use kiln_oci::Digest;
use kiln_worker::{LayerRef, Value};
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
    /// Exported cache mounts (`cache-mounts=`) by identity (`cachemount::identity`); left out
    /// when there are none, so a cache without them keeps its bytes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub mounts: BTreeMap<String, MountRecord>,
}

/// One exported cache mount: its id (for people and warnings) and the blob of its files, a tar
/// compressed like the layers (`diff_id`: the tar's digest).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct MountRecord {
    pub id: String,
    #[serde(flatten)]
    pub layer: LayerRef,
}

/// What an imported cache gives the build: records for the solver, cache mount contents for
/// the worker (both pointing at the cache as their blobs' source).
#[derive(Debug, Default)]
pub(crate) struct Imported {
    pub records: HashMap<Digest, Value>,
    pub mounts: HashMap<String, LayerRef>,
}

/// The cache manifest for a config blob and the layer blobs (digest, size, media type), and
/// its media type. `image_manifest`: an OCI image manifest (config and layers); otherwise
/// BuildKit's older form, an index whose entries are the layer blobs and then the config
/// (`oci`: an OCI index, else a Docker manifest list, as BuildKit writes it).
pub(crate) fn manifest_bytes(
    config: &Digest,
    config_size: usize,
    layers: &[(Digest, u64, String)],
    image_manifest: bool,
    oci: bool,
) -> (Vec<u8>, &'static str) {
    use kiln_oci::media_type::{DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST};
    let config = serde_json::json!({
        "mediaType": CONFIG_MEDIA_TYPE,
        "digest": config.to_string(),
        "size": config_size,
    });
    let mut blobs: Vec<serde_json::Value> = layers
        .iter()
        .map(|(digest, size, media_type)| {
            serde_json::json!({
                "mediaType": media_type,
                "digest": digest.to_string(),
                "size": size,
            })
        })
        .collect();
    let (manifest, media_type) = if image_manifest {
        let doc = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config,
            "layers": blobs,
        });
        (doc, OCI_MANIFEST)
    } else {
        let media_type = if oci { OCI_INDEX } else { DOCKER_MANIFEST_LIST };
        blobs.push(config);
        let doc = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media_type,
            "manifests": blobs,
        });
        (doc, media_type)
    };
    (
        serde_json::to_vec(&manifest).expect("json values serialise"),
        media_type,
    )
}

/// The config descriptor (digest, size) of a kiln cache manifest, in either form; `Err` says
/// why the bytes are not one.
pub(crate) fn config_of(manifest: &[u8]) -> Result<(Digest, u64), String> {
    let manifest: serde_json::Value =
        serde_json::from_slice(manifest).map_err(|e| format!("manifest: {e}"))?;
    // The index form lists the config among its entries.
    let listed = manifest["manifests"].as_array().and_then(|entries| {
        entries
            .iter()
            .find(|e| e["mediaType"].as_str() == Some(CONFIG_MEDIA_TYPE))
    });
    let config = listed.unwrap_or(&manifest["config"]);
    let media_type = config["mediaType"].as_str().unwrap_or_default();
    if media_type != CONFIG_MEDIA_TYPE {
        return Err(format!(
            "its config is `{media_type}`, not `{CONFIG_MEDIA_TYPE}`"
        ));
    }
    let digest = config["digest"]
        .as_str()
        .and_then(|d| kiln_oci::parse_digest(d).ok())
        .ok_or("the config digest is missing or invalid")?;
    let size = config["size"]
        .as_u64()
        .filter(|s| *s <= MAX_CONFIG_BYTES)
        .ok_or("the config size is missing or too large")?;
    Ok((digest, size))
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
        CacheConfig {
            records,
            mounts: BTreeMap::new(),
        }
    }

    /// With these cache mounts, sources cleared.
    pub fn with_mounts(mut self, mounts: impl IntoIterator<Item = (String, MountRecord)>) -> Self {
        self.mounts = mounts
            .into_iter()
            .map(|(identity, mut m)| {
                m.layer.source = None;
                (identity, m)
            })
            .collect();
        self
    }

    /// The records as the solver looks them up, every layer's source set to `source` (the
    /// cache manifest's pinned reference). Keys that are not digests and values that are no
    /// layer chain are refused: a hand-made config must not reach the solver.
    pub fn records(bytes: &[u8], source: &str) -> Result<Imported, String> {
        let config: CacheConfig =
            serde_json::from_slice(bytes).map_err(|e| format!("config: {e}"))?;
        config.into_imported(source)
    }

    /// The records and cache mounts, their blobs to be fetched from `source`. A cache mount
    /// without a blob digest is refused with the rest: it could not be filled.
    pub fn into_imported(mut self, source: &str) -> Result<Imported, String> {
        let mut mounts = HashMap::new();
        for (identity, m) in std::mem::take(&mut self.mounts) {
            let mut layer = m.layer;
            if layer.blob.is_none() || identity.is_empty() {
                return Err(format!("cache mount `{}` names no blob", m.id));
            }
            layer.source = Some(source.to_string());
            mounts.insert(identity, layer);
        }
        Ok(Imported {
            records: self.into_records(source)?,
            mounts,
        })
    }

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
    fn mounts_round_trip_and_are_left_out_when_none() {
        let plain = serde_json::to_string(&CacheConfig::new([])).unwrap();
        assert_eq!(plain, r#"{"records":{}}"#, "no `mounts` key without mounts");
        let blob = kiln_oci::sha256(b"tar.gz");
        let mount = MountRecord {
            id: "pip".into(),
            layer: layer(&blob, Some("somewhere")),
        };
        let config = CacheConfig::new([]).with_mounts([("pip".to_string(), mount)]);
        let bytes = serde_json::to_vec(&config).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            text.contains(r#""mounts":{"pip":{"id":"pip","diff_id""#),
            "{text}"
        );
        assert!(!text.contains("somewhere"), "{text}");
        let imported = CacheConfig::records(&bytes, "r.io/c@sha256:11").unwrap();
        assert_eq!(imported.mounts["pip"].blob.as_ref(), Some(&blob));
        assert_eq!(
            imported.mounts["pip"].source.as_deref(),
            Some("r.io/c@sha256:11")
        );
        let no_blob = r#"{"records":{},"mounts":{"x":{"id":"x","diff_id":null,"blob":null,"size":0,"media_type":"","source":null}}}"#;
        assert!(
            CacheConfig::records(no_blob.as_bytes(), "r")
                .unwrap_err()
                .contains("names no blob")
        );
    }

    #[test]
    fn manifest_round_trip_and_foreign_manifests() {
        let config = kiln_oci::sha256(b"{}");
        let blob = kiln_oci::sha256(b"layer");
        let layers = [(blob, 5, "t".to_string())];
        let (bytes, media_type) = manifest_bytes(&config, 2, &layers, true, true);
        assert_eq!(media_type, kiln_oci::media_type::OCI_MANIFEST);
        assert_eq!(config_of(&bytes).unwrap(), (config.clone(), 2));
        // BuildKit's index form: the blobs and the config as entries.
        for (oci, want) in [
            (true, kiln_oci::media_type::OCI_INDEX),
            (false, kiln_oci::media_type::DOCKER_MANIFEST_LIST),
        ] {
            let (bytes, media_type) = manifest_bytes(&config, 2, &layers, false, oci);
            assert_eq!(media_type, want);
            let doc: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(doc["mediaType"], want);
            assert_eq!(doc["manifests"].as_array().unwrap().len(), 2);
            assert_eq!(config_of(&bytes).unwrap(), (config.clone(), 2));
        }
        let image_index =
            br#"{"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json"}]}"#;
        assert!(config_of(image_index).is_err());
        let image = br#"{"config":{"mediaType":"application/vnd.oci.image.config.v1+json"}}"#;
        assert!(
            config_of(image)
                .unwrap_err()
                .contains("not `application/vnd.kiln")
        );
        assert!(config_of(b"<html>").unwrap_err().starts_with("manifest:"));
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
