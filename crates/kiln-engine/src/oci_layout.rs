//! `--build-context NAME=oci-layout://PATH[:TAG][@DIGEST]`: an image from an OCI image layout
//! directory (`index.json`, `blobs/sha256/…`). The manifest is picked as buildx picks it (the
//! digest; else the index entry whose `org.opencontainers.image.ref.name` is the tag, `latest`
//! by default; else the only entry), an index is narrowed to the build's platform, and the
//! manifest, config and layers are copied into the content store, each checked against its
//! digest. The image is then pinned by its manifest digest, as a registry image is.

use std::path::Path;

use kiln_content::ContentStore;
use kiln_frontend::ResolvedImage;
use kiln_oci::{Digest, ImageConfig, Platform};
use serde_json::Value;

use crate::{Error, Result};

const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

pub(crate) fn import(
    content: &ContentStore,
    key: &str,
    layout: &Path,
    tag: Option<&str>,
    digest: Option<&str>,
    platform: &Platform,
) -> Result<ResolvedImage> {
    let shown = format!(
        "oci-layout://{}{}{}",
        layout.display(),
        tag.map(|t| format!(":{t}")).unwrap_or_default(),
        digest.map(|d| format!("@{d}")).unwrap_or_default()
    );
    let unresolved = |why: String| {
        Error::Usage(format!(
            "oci-layout reference \"{shown}\" could not be resolved: {why}"
        ))
    };
    // The name BuildKit gives the image: the context's name, pinned.
    let name: kiln_oci::Reference = key
        .parse()
        .map_err(|e: kiln_oci::Error| Error::Usage(e.to_string()))?;
    let repo = format!("{}/{}", name.registry(), name.repository());
    let manifest_digest = match digest {
        Some(d) => parse(d)?,
        None => {
            let path = layout.join("index.json");
            let bytes = std::fs::read(&path)
                .map_err(|e| unresolved(format!("reading `{}`: {e}", path.display())))?;
            let index: Value = serde_json::from_slice(&bytes)
                .map_err(|e| unresolved(format!("`{}`: {e}", path.display())))?;
            let entries = index["manifests"].as_array().cloned().unwrap_or_default();
            let want = tag.unwrap_or("latest");
            let named = entries.iter().find(|m| {
                m["annotations"]["org.opencontainers.image.ref.name"].as_str() == Some(want)
            });
            let picked = match (named, entries.as_slice()) {
                (Some(m), _) => m,
                (None, [only]) => only,
                _ => return Err(unresolved("failed to resolve digest".into())),
            };
            parse(picked["digest"].as_str().unwrap_or_default())?
        }
    };
    let metadata_error = |why: String| {
        Error::Usage(format!(
            "failed to resolve source metadata for {repo}@{manifest_digest}: {why}"
        ))
    };
    let mut bytes = read_blob(layout, &manifest_digest).map_err(metadata_error)?;
    let mut pinned_digest = manifest_digest.clone();
    let mut manifest: Value = serde_json::from_slice(&bytes)
        .map_err(|e| metadata_error(format!("invalid manifest: {e}")))?;
    if INDEX_TYPES.contains(&manifest["mediaType"].as_str().unwrap_or_default())
        || manifest["manifests"].is_array()
    {
        let child = manifest["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| {
                let p = &m["platform"];
                let candidate = Platform::new(
                    p["os"].as_str().unwrap_or_default(),
                    p["architecture"].as_str().unwrap_or_default(),
                    p["variant"].as_str(),
                );
                platform.matches(&candidate)
            })
            .ok_or_else(|| metadata_error(format!("no image for platform {platform}")))?;
        content.put(&bytes, Some(&manifest_digest))?;
        pinned_digest = parse(child["digest"].as_str().unwrap_or_default())?;
        bytes = read_blob(layout, &pinned_digest).map_err(metadata_error)?;
        manifest = serde_json::from_slice(&bytes)
            .map_err(|e| metadata_error(format!("invalid manifest: {e}")))?;
    }
    content.put(&bytes, Some(&pinned_digest))?;
    let config_digest = parse(manifest["config"]["digest"].as_str().unwrap_or_default())?;
    let config_bytes = read_blob(layout, &config_digest).map_err(metadata_error)?;
    content.put(&config_bytes, Some(&config_digest))?;
    let config: ImageConfig = serde_json::from_slice(&config_bytes)
        .map_err(|e| metadata_error(format!("invalid image config: {e}")))?;
    for layer in manifest["layers"].as_array().into_iter().flatten() {
        let d = parse(layer["digest"].as_str().unwrap_or_default())?;
        if !content.contains(&d) {
            copy_blob(content, layout, &d).map_err(metadata_error)?;
        }
    }
    Ok(ResolvedImage {
        pinned: format!("{repo}@{pinned_digest}"),
        config,
    })
}

fn parse(d: &str) -> Result<Digest> {
    kiln_oci::parse_digest(d).map_err(|e| Error::Usage(format!("OCI layout: {e}")))
}

/// `blobs/sha256/<hex>`: the hex is checked by [`parse`], so the path stays in the layout.
fn blob_path(layout: &Path, digest: &Digest) -> std::path::PathBuf {
    layout.join("blobs/sha256").join(digest.digest())
}

/// A small blob (manifest, config), checked against its digest.
fn read_blob(layout: &Path, digest: &Digest) -> std::result::Result<Vec<u8>, String> {
    let bytes =
        std::fs::read(blob_path(layout, digest)).map_err(|e| format!("content {digest}: {e}"))?;
    if kiln_oci::sha256(&bytes) != *digest {
        return Err(format!("content {digest}: digest mismatch"));
    }
    Ok(bytes)
}

/// A layer, streamed into the content store, which refuses it unless it hashes to `digest`.
fn copy_blob(
    content: &ContentStore,
    layout: &Path,
    digest: &Digest,
) -> std::result::Result<(), String> {
    let mut file = std::fs::File::open(blob_path(layout, digest))
        .map_err(|e| format!("content {digest}: {e}"))?;
    let mut w = content.writer().map_err(|e| e.to_string())?;
    std::io::copy(&mut file, &mut w).map_err(|e| format!("content {digest}: {e}"))?;
    w.commit(Some(digest))
        .map_err(|e| format!("content {digest}: {e}"))?;
    Ok(())
}
