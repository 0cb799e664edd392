//! `kiln imagetools`: look at a manifest or index in a registry, and make an index (a
//! multi-platform image) out of images already pushed, as `docker buildx imagetools` and
//! `docker manifest create/push` do. Nothing here touches the local image store; blobs pass
//! through the content store only when a source lives in another repository.

use std::collections::BTreeMap;

use kiln_oci::media_type::{self, is_index, is_manifest};
use kiln_oci::{Descriptor, Digest, MediaType, Reference};
use kiln_registry::RawManifest;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{Engine, Error, Result};

/// `imagetools create`.
#[derive(Debug, Clone)]
pub struct IndexRequest {
    /// Where the index is pushed (a tag).
    pub target: Reference,
    /// Images or indexes already in a registry; an index contributes all its manifests.
    pub sources: Vec<Reference>,
    /// Start from the index `target` names now, keeping its entries.
    pub append: bool,
    /// `KEY=VALUE`, `index:KEY=VALUE` or `manifest-descriptor:KEY=VALUE`.
    pub annotations: Vec<String>,
    /// Build the index but do not push anything.
    pub dry_run: bool,
}

impl Engine {
    /// The manifest or index `reference` names, as the registry serves it.
    pub async fn imagetools_inspect(&self, reference: &Reference) -> Result<RawManifest> {
        Ok(self.registry.fetch_manifest_raw(reference).await?)
    }

    /// Builds the index and pushes it (and, for sources in other repositories, their manifests
    /// and blobs) to `target`. Returns the index's digest and bytes.
    pub async fn imagetools_create(&self, req: &IndexRequest) -> Result<(Digest, Vec<u8>)> {
        let (index_annotations, descriptor_annotations) = parse_annotations(&req.annotations)?;
        let mut entries: Vec<Value> = Vec::new();
        if req.append {
            let current = self.registry.fetch_manifest_raw(&req.target).await?;
            entries.extend(self.entries_of(&req.target, &current).await?);
        }
        for src in &req.sources {
            let raw = self.registry.fetch_manifest_raw(src).await?;
            let found = self.entries_of(src, &raw).await?;
            if !req.dry_run && !same_repository(src, &req.target) {
                for e in &found {
                    let digest = e["digest"].as_str().unwrap_or_default();
                    self.copy_manifest(src, digest, &req.target).await?;
                }
            }
            entries.extend(found);
        }
        let mut seen = Vec::new();
        entries.retain(|e| {
            let d = e["digest"].as_str().unwrap_or_default().to_string();
            let new = !seen.contains(&d);
            seen.push(d);
            new
        });
        if entries.is_empty() {
            return Err(Error::Usage("no images to put in the index".into()));
        }
        for e in &mut entries {
            for (k, v) in &descriptor_annotations {
                e["annotations"][k] = Value::String(v.clone());
            }
        }
        // A Docker manifest list cannot carry annotations or OCI manifests; anything else
        // stays in Docker's type, as buildx chooses.
        let docker = index_annotations.is_empty()
            && descriptor_annotations.is_empty()
            && entries
                .iter()
                .all(|e| e["mediaType"] == media_type::DOCKER_MANIFEST);
        let media_type = if docker {
            media_type::DOCKER_MANIFEST_LIST
        } else {
            media_type::OCI_INDEX
        };
        let bytes = index_json(media_type, entries, index_annotations)?;
        let digest = kiln_oci::sha256(&bytes);
        if !req.dry_run {
            self.registry
                .push_manifest(&req.target, media_type, &bytes)
                .await?;
        }
        Ok((digest, bytes))
    }

    /// The index entries a source contributes: an index's own entries, or one entry with the
    /// platform read from the image's config.
    pub(crate) async fn entries_of(
        &self,
        src: &Reference,
        raw: &RawManifest,
    ) -> Result<Vec<Value>> {
        let doc: Value = serde_json::from_slice(&raw.bytes).map_err(|e| Error::Invalid {
            what: format!("manifest of `{src}`"),
            source: Box::new(e),
        })?;
        if is_index(&raw.media_type) {
            return Ok(doc["manifests"].as_array().cloned().unwrap_or_default());
        }
        if !is_manifest(&raw.media_type) {
            return Err(Error::Usage(format!(
                "`{src}` is a `{}`, not an image or index",
                raw.media_type
            )));
        }
        let config = descriptor(&doc["config"], src)?;
        let mut bytes = Vec::new();
        self.registry.fetch_blob(src, &config, &mut bytes).await?;
        let cfg: Value = serde_json::from_slice(&bytes).map_err(|e| Error::Invalid {
            what: format!("config of `{src}`"),
            source: Box::new(e),
        })?;
        let mut platform = json!({
            "architecture": cfg["architecture"].as_str().unwrap_or("unknown"),
            "os": cfg["os"].as_str().unwrap_or("unknown"),
        });
        if let Some(v) = cfg["variant"].as_str() {
            platform["variant"] = json!(v);
        }
        if let Some(v) = cfg["os.version"].as_str() {
            platform["os.version"] = json!(v);
        }
        Ok(vec![json!({
            "mediaType": raw.media_type,
            "digest": raw.digest.to_string(),
            "size": raw.bytes.len(),
            "platform": platform,
        })])
    }

    /// Makes the manifest `digest` of `src`'s repository (and its blobs) present in `target`'s.
    pub(crate) async fn copy_manifest(
        &self,
        src: &Reference,
        digest: &str,
        target: &Reference,
    ) -> Result<()> {
        let from = pinned(src, digest)?;
        let to = pinned(target, digest)?;
        let raw = self.registry.fetch_manifest_raw(&from).await?;
        if is_index(&raw.media_type) {
            return Err(Error::Usage(format!(
                "`{from}` is a nested index; copying those between repositories is not supported yet"
            )));
        }
        let doc: Value = serde_json::from_slice(&raw.bytes).map_err(|e| Error::Invalid {
            what: format!("manifest `{from}`"),
            source: Box::new(e),
        })?;
        let mut blobs = vec![descriptor(&doc["config"], &from)?];
        for l in doc["layers"].as_array().into_iter().flatten() {
            blobs.push(descriptor(l, &from)?);
        }
        for desc in &blobs {
            // Lets the push mount the blob from the source repository when the registry can.
            self.registry.remember_blob(&from, desc.digest());
            if self.registry.blob_exists(target, desc.digest()).await? {
                continue;
            }
            if !self.content.contains(desc.digest()) {
                let mut w = self.content.async_writer()?;
                self.registry.fetch_blob(&from, desc, &mut w).await?;
                w.commit(Some(desc.digest())).await?;
            }
            let path = self.content.path(desc.digest());
            self.registry
                .push_blob(target, desc.digest(), desc.size(), &path)
                .await?;
        }
        self.registry
            .push_manifest(&to, &raw.media_type, &raw.bytes)
            .await?;
        Ok(())
    }
}

pub(crate) fn same_repository(a: &Reference, b: &Reference) -> bool {
    a.registry() == b.registry() && a.repository() == b.repository()
}

/// `repo@digest`, without a tag, so a push goes to the digest.
pub(crate) fn pinned(r: &Reference, digest: &str) -> Result<Reference> {
    let s = format!("{}/{}@{digest}", r.registry(), r.repository());
    s.parse().map_err(|_| Error::Reference(s))
}

fn descriptor(v: &Value, of: &Reference) -> Result<Descriptor> {
    let bad = |what: &str| Error::Usage(format!("manifest of `{of}` has {what}"));
    let digest = v["digest"]
        .as_str()
        .and_then(|d| kiln_oci::parse_digest(d).ok())
        .ok_or_else(|| bad("a descriptor without a valid digest"))?;
    let size = v["size"]
        .as_u64()
        .ok_or_else(|| bad("a descriptor without a size"))?;
    let mt = v["mediaType"]
        .as_str()
        .unwrap_or("application/octet-stream");
    Ok(Descriptor::new(MediaType::from(mt), size, digest))
}

type Annotations = BTreeMap<String, String>;

/// An index as buildx writes one: the OCI Go types' field order, two-space indent, no final
/// newline, so the same entries give the digest `buildx imagetools create` gives.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct IndexDoc {
    schema_version: u32,
    media_type: &'static str,
    manifests: Vec<DescriptorDoc>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: Annotations,
}

/// A descriptor in Go's `ocispec.Descriptor` order; other fields of a source index's entries
/// are dropped, as buildx's decoding into that type drops them.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DescriptorDoc {
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    urls: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    annotations: Annotations,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    platform: Option<PlatformDoc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    artifact_type: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct PlatformDoc {
    architecture: String,
    os: String,
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    os_version: Option<String>,
    #[serde(rename = "os.features", default, skip_serializing_if = "Vec::is_empty")]
    os_features: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    variant: Option<String>,
}

fn index_json(
    media_type: &'static str,
    entries: Vec<Value>,
    annotations: Annotations,
) -> Result<Vec<u8>> {
    let invalid = |e: serde_json::Error| Error::Invalid {
        what: "image index".into(),
        source: Box::new(e),
    };
    let manifests = entries
        .into_iter()
        .map(serde_json::from_value)
        .collect::<std::result::Result<Vec<DescriptorDoc>, _>>()
        .map_err(invalid)?;
    let doc = IndexDoc {
        schema_version: 2,
        media_type,
        manifests,
        annotations,
    };
    serde_json::to_vec_pretty(&doc).map_err(invalid)
}

/// Splits `--annotation` values into the index's and each descriptor's, as buildx reads them.
fn parse_annotations(specs: &[String]) -> Result<(Annotations, Annotations)> {
    let mut index = BTreeMap::new();
    let mut descriptors = BTreeMap::new();
    for spec in specs {
        let (key, value) = spec.split_once('=').ok_or_else(|| {
            Error::Usage(format!("invalid annotation `{spec}`: expected KEY=VALUE"))
        })?;
        let (kind, key) = match key.split_once(':') {
            Some((kind, k))
                if matches!(
                    kind,
                    "index" | "manifest-descriptor" | "manifest" | "index-descriptor"
                ) =>
            {
                (kind, k)
            }
            _ => ("index", key),
        };
        if key.is_empty() {
            return Err(Error::Usage(format!(
                "invalid annotation `{spec}`: empty key"
            )));
        }
        match kind {
            "index" => index.insert(key.to_string(), value.to_string()),
            "manifest-descriptor" => descriptors.insert(key.to_string(), value.to_string()),
            other => {
                return Err(Error::Usage(format!(
                    "annotation type `{other}` is not supported yet by imagetools create"
                )));
            }
        };
    }
    Ok((index, descriptors))
}

/// `imagetools inspect` without `--raw`, in buildx's layout.
pub fn format_imagetools(reference: &Reference, raw: &RawManifest) -> String {
    let mut name = reference.clone();
    if name.digest().is_some() {
        name = pinned(reference, name.digest().unwrap_or_default()).unwrap_or(name);
    }
    let shown = name.whole();
    // buildx names each manifest by the name asked, tag kept (`repo:tag@digest`).
    let base = match (reference.tag(), reference.digest()) {
        (Some(tag), None) => format!("{}/{}:{tag}", name.registry(), name.repository()),
        _ => format!("{}/{}", name.registry(), name.repository()),
    };
    let mut out = format!(
        "{:<11}{shown}\n{:<11}{}\n{:<11}{}\n",
        "Name:", "MediaType:", raw.media_type, "Digest:", raw.digest
    );
    let doc: Value = serde_json::from_slice(&raw.bytes).unwrap_or(Value::Null);
    if is_index(&raw.media_type) {
        out.push_str("\nManifests:\n");
        for (i, m) in doc["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            if i > 0 {
                out.push('\n');
            }
            let digest = m["digest"].as_str().unwrap_or_default();
            out.push_str(&format!("  {:<11}{base}@{digest}\n", "Name:"));
            out.push_str(&format!(
                "  {:<11}{}\n",
                "MediaType:",
                m["mediaType"].as_str().unwrap_or_default()
            ));
            let p = &m["platform"];
            if p.is_object() {
                let mut platform = format!(
                    "{}/{}",
                    p["os"].as_str().unwrap_or("unknown"),
                    p["architecture"].as_str().unwrap_or("unknown")
                );
                if let Some(v) = p["variant"].as_str() {
                    platform.push('/');
                    platform.push_str(v);
                }
                out.push_str(&format!("  {:<11}{platform}\n", "Platform:"));
            }
            if let Some(a) = m["annotations"].as_object().filter(|a| !a.is_empty()) {
                out.push_str("  Annotations:\n");
                for (k, v) in a {
                    out.push_str(&format!("    {k}: {}\n", v.as_str().unwrap_or_default()));
                }
            }
        }
    }
    if let Some(a) = doc["annotations"].as_object().filter(|a| !a.is_empty()) {
        out.push_str("\nAnnotations:\n");
        for (k, v) in a {
            out.push_str(&format!("  {k}: {}\n", v.as_str().unwrap_or_default()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotations_split_by_prefix() {
        let specs: Vec<String> = ["a=1", "index:b=2", "manifest-descriptor:c=3"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (index, desc) = parse_annotations(&specs).unwrap();
        assert_eq!(index.len(), 2);
        assert_eq!(index["b"], "2");
        assert_eq!(desc["c"], "3");
        assert!(parse_annotations(&["x".to_string()]).is_err());
        let err = parse_annotations(&["manifest:k=v".to_string()]).unwrap_err();
        assert!(err.to_string().contains("not supported yet"), "{err}");
    }

    #[test]
    fn index_listing_shows_each_platform() {
        let index = json!({
            "schemaVersion": 2,
            "mediaType": media_type::OCI_INDEX,
            "manifests": [
                {"mediaType": media_type::DOCKER_MANIFEST, "digest": kiln_oci::sha256(b"a").to_string(), "size": 1,
                 "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}},
            ],
            "annotations": {"org.opencontainers.image.description": "two"},
        });
        let bytes = serde_json::to_vec(&index).unwrap();
        let raw = RawManifest {
            digest: kiln_oci::sha256(&bytes),
            media_type: media_type::OCI_INDEX.into(),
            bytes,
        };
        let r: Reference = "127.0.0.1:5000/x:multi".parse().unwrap();
        let text = format_imagetools(&r, &raw);
        assert!(
            text.starts_with("Name:      127.0.0.1:5000/x:multi\n"),
            "{text}"
        );
        assert!(text.contains("  Platform:  linux/arm/v7\n"), "{text}");
        assert!(
            text.contains(&format!(
                "  Name:      127.0.0.1:5000/x:multi@{}",
                kiln_oci::sha256(b"a")
            )),
            "{text}"
        );
        assert!(
            text.contains("Annotations:\n  org.opencontainers.image.description: two\n"),
            "{text}"
        );
    }

    #[test]
    fn index_is_written_in_buildx_field_order() {
        let digest = kiln_oci::sha256(b"a").to_string();
        let entries = vec![json!({
            "size": 3, "platform": {"variant": "v7", "os": "linux", "architecture": "arm"},
            "digest": digest, "mediaType": media_type::OCI_MANIFEST, "unknown": 1,
        })];
        let mut annotations = Annotations::new();
        annotations.insert("b".into(), "2".into());
        annotations.insert("a".into(), "1".into());
        let bytes = index_json(media_type::OCI_INDEX, entries, annotations).unwrap();
        let want = format!(
            r#"{{
  "schemaVersion": 2,
  "mediaType": "{}",
  "manifests": [
    {{
      "mediaType": "{}",
      "digest": "{digest}",
      "size": 3,
      "platform": {{
        "architecture": "arm",
        "os": "linux",
        "variant": "v7"
      }}
    }}
  ],
  "annotations": {{
    "a": "1",
    "b": "2"
  }}
}}"#,
            media_type::OCI_INDEX,
            media_type::OCI_MANIFEST
        );
        assert_eq!(String::from_utf8(bytes).unwrap(), want);
        assert!(
            index_json(
                media_type::OCI_INDEX,
                vec![json!({"size": 1})],
                Annotations::new()
            )
            .is_err()
        );
    }
}
