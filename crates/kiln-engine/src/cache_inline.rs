//! `--cache-to type=inline`: the cache records of the final image's own chain, written into
//! its config (as BuildKit writes `moby.buildkit.cache.v0`), so the image is its own cache:
//! `--cache-from type=registry,ref=IMAGE` (cache_import.rs) finds them there. A record names
//! no blob, only how many of the image's layers its result is; the image's manifest and
//! config give the blobs and diff_ids.

use std::collections::{BTreeMap, HashMap};

use kiln_oci::{Digest, ImageConfig};
use kiln_solver::Solved;
use kiln_worker::{LayerRef, Value};

use crate::cache_export::select_records;
use crate::cache_spec::{CacheExport, CacheLocation, CacheMode};
use crate::output::Output;
use crate::{Error, Result};

/// The image config key. kiln's own, not BuildKit's: the records are kiln's cache keys, which
/// BuildKit could not use (nor kiln BuildKit's).
pub(crate) const INLINE_KEY: &str = "kiln.cache.v1";

/// The image config with kiln's inline records when a `--cache-to type=inline` asks for them,
/// and without any otherwise (one a base image carried never describes this image).
pub(crate) fn with_inline_cache(
    mut image: ImageConfig,
    exports: &[CacheExport],
    outputs: &[Output],
    squash: bool,
    solved: &[(usize, Solved<Value>)],
    result: &Value,
) -> Result<ImageConfig> {
    image.extra.remove(INLINE_KEY);
    if !exports.iter().any(|e| e.location == CacheLocation::Inline) {
        return Ok(image);
    }
    // Both change the image's layers away from the solved chain the records describe.
    if squash {
        return Err(Error::Unsupported(
            "`--cache-to type=inline` with `--squash` is not supported yet".into(),
        ));
    }
    if outputs.iter().any(|o| o.rewrite_timestamp) {
        return Err(Error::Unsupported(
            "`--cache-to type=inline` with `rewrite-timestamp=true` is not supported yet".into(),
        ));
    }
    let records: BTreeMap<String, usize> = select_records(solved, &[result], CacheMode::Min)
        .into_iter()
        .map(|(key, value)| (key, value.layers().len()))
        .collect();
    image
        .extra
        .insert(INLINE_KEY.into(), serde_json::json!({ "records": records }));
    Ok(image)
}

/// The records an image's config carries, their layers taken from the image (`layers`: the
/// manifest's descriptors as (blob, size, media type); `diff_ids` from its config), to be
/// pulled from `source`. `Ok(None)` when the image has no inline cache.
pub(crate) fn inline_records(
    config: &serde_json::Value,
    layers: &[(Digest, u64, String)],
    source: &str,
) -> std::result::Result<Option<HashMap<Digest, Value>>, String> {
    let Some(records) = config.get(INLINE_KEY) else {
        return Ok(None);
    };
    let records: BTreeMap<String, usize> = serde_json::from_value(records["records"].clone())
        .map_err(|e| format!("{INLINE_KEY}: {e}"))?;
    let diff_ids: Vec<Digest> = config["rootfs"]["diff_ids"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            d.as_str()
                .and_then(|d| kiln_oci::parse_digest(d).ok())
                .ok_or("an invalid diff_id")
        })
        .collect::<std::result::Result<_, _>>()?;
    if diff_ids.len() != layers.len() {
        return Err("its config's diff_ids do not match its layers".into());
    }
    let mut out = HashMap::new();
    for (key, n) in records {
        let digest =
            kiln_oci::parse_digest(&key).map_err(|_| format!("invalid cache key `{key}`"))?;
        if n > layers.len() {
            return Err(format!(
                "record `{key}` names {n} layers of {}",
                layers.len()
            ));
        }
        let chain = layers[..n]
            .iter()
            .zip(&diff_ids)
            .map(|((blob, size, media_type), diff_id)| LayerRef {
                diff_id: Some(diff_id.clone()),
                blob: Some(blob.clone()),
                size: *size,
                media_type: media_type.clone(),
                source: Some(source.to_string()),
            })
            .collect();
        out.insert(digest, Value::Rootfs { layers: chain });
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: usize) -> Value {
        Value::Rootfs {
            layers: (0..n)
                .map(|i| {
                    let d = kiln_oci::sha256(&[i as u8]);
                    LayerRef {
                        diff_id: Some(d.clone()),
                        blob: Some(d),
                        size: 1,
                        media_type: kiln_oci::media_type::OCI_LAYER_TAR.into(),
                        source: None,
                    }
                })
                .collect(),
        }
    }

    #[test]
    fn written_only_when_asked_and_read_back_against_the_image() {
        let solved = vec![
            (
                0,
                Solved {
                    value: chain(1),
                    cache_key: kiln_oci::sha256(b"from"),
                    cached: false,
                },
            ),
            (
                1,
                Solved {
                    value: chain(2),
                    cache_key: kiln_oci::sha256(b"run"),
                    cached: false,
                },
            ),
        ];
        let mut base = ImageConfig::default();
        base.extra
            .insert(INLINE_KEY.into(), serde_json::json!({"stale": true}));
        let result = chain(2);
        let plain = with_inline_cache(base.clone(), &[], &[], false, &solved, &result).unwrap();
        assert!(!plain.extra.contains_key(INLINE_KEY), "a base's records go");

        let inline = CacheExport::parse("type=inline").unwrap();
        let mut image = with_inline_cache(
            base,
            std::slice::from_ref(&inline),
            &[],
            false,
            &solved,
            &result,
        )
        .unwrap();
        let blobs: Vec<(Digest, u64, String)> = (0..2u8)
            .map(|i| (kiln_oci::sha256(&[b'z', i]), 9, "gz".to_string()))
            .collect();
        image.rootfs.diff_ids = result
            .layers()
            .iter()
            .map(|l| l.diff_id.as_ref().unwrap().to_string())
            .collect();
        let config = serde_json::to_value(&image).unwrap();
        let records = inline_records(&config, &blobs, "r.io/img@sha256:00")
            .unwrap()
            .unwrap();
        let run = records[&kiln_oci::sha256(b"run")].layers();
        assert_eq!(run.len(), 2);
        assert_eq!(run[1].blob.as_ref(), Some(&blobs[1].0));
        assert_eq!(run[1].diff_id, result.layers()[1].diff_id);
        assert_eq!(run[0].source.as_deref(), Some("r.io/img@sha256:00"));
        assert_eq!(records[&kiln_oci::sha256(b"from")].layers().len(), 1);

        let err = with_inline_cache(
            ImageConfig::default(),
            std::slice::from_ref(&inline),
            &[],
            true,
            &solved,
            &result,
        )
        .unwrap_err();
        assert!(err.to_string().contains("not supported yet"));
    }

    #[test]
    fn hostile_inline_records_are_refused() {
        let blobs = vec![(kiln_oci::sha256(b"l"), 1, "t".to_string())];
        let d = kiln_oci::sha256(b"l").to_string();
        let key = kiln_oci::sha256(b"k").to_string();
        let too_many = serde_json::json!({
            "rootfs": {"diff_ids": [d]},
            INLINE_KEY: {"records": {key.clone(): 5}},
        });
        assert!(
            inline_records(&too_many, &blobs, "s")
                .unwrap_err()
                .contains("names 5 layers")
        );
        let mismatch = serde_json::json!({
            "rootfs": {"diff_ids": []},
            INLINE_KEY: {"records": {key: 1}},
        });
        assert!(inline_records(&mismatch, &blobs, "s").is_err());
        let none = serde_json::json!({"rootfs": {"diff_ids": [d]}});
        assert_eq!(inline_records(&none, &blobs, "s").unwrap(), None);
    }
}
