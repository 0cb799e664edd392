//! `kiln inspect`: Docker's image inspect object. For a multi-platform name it is what Docker's
//! containerd image store shows: the index as `Descriptor`, this machine's image's config and
//! size, and each platform's manifest under `Manifests`; `--platform` picks one platform's
//! image instead (its manifest as `Descriptor`, no `Manifests`).

use kiln_exporter::view::image_details;
use kiln_exporter::{PlatformImage, familiar_name};
use kiln_oci::{Digest, Platform};
use serde_json::{Value, json};

use crate::{Engine, Result};

fn platform_json(p: &Platform) -> Value {
    let mut v = json!({"architecture": p.architecture, "os": p.os});
    if let Some(variant) = &p.variant {
        v["variant"] = json!(variant);
    }
    v
}

/// The error for a platform `image` does not have, listing those it has.
fn no_platform(image: &str, wanted: &Platform, has: &[Platform]) -> crate::Error {
    kiln_exporter::Error::NoPlatform {
        name: image.to_string(),
        platform: wanted.to_string(),
        available: has
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
    }
    .into()
}

impl Engine {
    /// `docker image inspect`'s object for one image, or for `platform`'s image of it.
    pub fn inspect_image(&self, image: &str, platform: Option<&Platform>) -> Result<Value> {
        let mut found = self.find_image(image)?;
        // The index the name asked for points at, if it names one.
        let record = found
            .by_name
            .as_ref()
            .and_then(|n| found.records.iter().find(|r| &r.name == n))
            .filter(|r| r.index.is_some())
            .cloned();
        let platforms = match &record {
            Some(r) => self.images.platform_images(r)?,
            None => Vec::new(),
        };
        let mut size = found.records.first().map(|r| r.size).unwrap_or(0);
        let mut picked: Option<&PlatformImage> = None;
        if record.is_some() {
            let chosen = match platform {
                Some(p) => platforms.iter().find(|i| p.matches(&i.platform)),
                None => platforms.iter().find(|i| i.manifest == found.manifest),
            };
            let Some(chosen) = chosen else {
                let has: Vec<Platform> = platforms.iter().map(|i| i.platform.clone()).collect();
                let wanted = platform.cloned().unwrap_or_else(Platform::host);
                return Err(no_platform(image, &wanted, &has));
            };
            found.manifest = chosen.manifest.clone();
            found.config = chosen.config.clone();
            // As Docker's containerd store: the size of the image shown, not the index's.
            size = chosen.size;
            picked = platform.map(|_| chosen);
        }
        let d = image_details(&self.content, &found.manifest)?;
        if let (Some(wanted), None) = (platform, &record) {
            let own = Platform::new(
                &d.config.os,
                &d.config.architecture,
                d.config.variant.as_deref(),
            );
            if !wanted.matches(&own) {
                return Err(no_platform(image, wanted, &[own]));
            }
        }
        let c = &d.config_json;
        let text = |key: &str| {
            c.get(key)
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_string()
        };
        let mut tags = Vec::new();
        let mut digests = Vec::new();
        for r in &found.records {
            let (repo, tag) = familiar_name(&r.name);
            if r.name.tag().is_some() {
                tags.push(format!("{repo}:{tag}"));
            }
            let digest = format!("{repo}@{}", r.manifest);
            if !kiln_exporter::is_dangling(&r.name) && !digests.contains(&digest) {
                digests.push(digest);
            }
        }
        let last_tag = found.records.iter().map(|r| r.tagged_at).max();
        let descriptor = |digest: &Digest, media_type: &str| -> Result<Value> {
            let size = self.content.size(digest)?.unwrap_or(0);
            Ok(json!({"mediaType": media_type, "digest": digest.to_string(), "size": size}))
        };
        let mut v = json!({
            "Id": found.config.to_string(),
            "RepoTags": tags,
            "RepoDigests": digests,
            "Parent": "",
            "Comment": text("comment"),
            "Created": text("created"),
            "DockerVersion": text("docker_version"),
            "Author": text("author"),
            "Config": c.get("config").cloned().unwrap_or(Value::Null),
            "Architecture": d.config.architecture,
            "Os": d.config.os,
            "Size": size,
            "RootFS": {
                "Type": d.config.rootfs.kind,
                "Layers": d.config.rootfs.diff_ids,
            },
            "Metadata": {
                "LastTagTime": last_tag.map(|t| t.to_rfc3339()).unwrap_or_default(),
            },
            "Descriptor": descriptor(&d.manifest, &d.manifest_media_type)?,
        });
        if let Some(variant) = &d.config.variant {
            v["Variant"] = json!(variant);
        }
        if let Some(p) = picked {
            v["Descriptor"]["platform"] = platform_json(&p.platform);
        }
        if let (Some(r), None) = (&record, platform) {
            let index = r.index.as_ref().expect("filtered on index");
            let bytes = self.content.read(index)?;
            let media_type = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|i| i["mediaType"].as_str().map(str::to_string))
                .unwrap_or_else(|| kiln_oci::media_type::OCI_INDEX.to_string());
            v["Descriptor"] = descriptor(index, &media_type)?;
            v["Manifests"] = Value::Array(
                platforms
                    .iter()
                    .map(|i| self.manifest_summary(i))
                    .collect::<Result<_>>()?,
            );
        }
        Ok(v)
    }

    /// One entry of `Manifests`, in the shape of Docker's `ManifestSummary`.
    fn manifest_summary(&self, image: &PlatformImage) -> Result<Value> {
        let d = image_details(&self.content, &image.manifest)?;
        let available = self.content.contains(&image.config)
            && d.layers.iter().all(|(l, _)| self.content.contains(l));
        let size = self.content.size(&image.manifest)?.unwrap_or(0);
        let platform = platform_json(&image.platform);
        Ok(json!({
            "ID": image.manifest.to_string(),
            "Descriptor": {
                "mediaType": d.manifest_media_type,
                "digest": image.manifest.to_string(),
                "size": size,
                "platform": platform,
            },
            "Available": available,
            // Config and layers as kept; kiln keeps no separate unpacked copy to add.
            "Size": {"Content": image.size, "Total": image.size},
            "Kind": "image",
            "ImageData": {
                "Platform": platform,
                "Containers": self.containers_using(&image.config),
            },
        }))
    }
}
