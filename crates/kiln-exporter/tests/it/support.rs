//! Builds small images by hand: a gzip layer from a tar made here, a config, a manifest.

use std::io::Write;
use std::path::Path;

use anyhow::Result;
use flate2::Compression;
use flate2::write::GzEncoder;
use kiln_exporter::ContentStore;
use kiln_oci::{Digest, media_type};
use serde_json::json;

pub struct TestImage {
    pub manifest: Digest,
    pub manifest_size: u64,
    pub config: Digest,
    pub layers: Vec<Digest>,
    pub diff_ids: Vec<Digest>,
    /// Config plus layer blob sizes.
    pub size: u64,
}

pub struct Layer {
    pub files: Vec<(String, Vec<u8>, u32)>,
}

impl Layer {
    pub fn text(files: &[(&str, &str)]) -> Self {
        Self {
            files: files
                .iter()
                .map(|(p, c)| (p.to_string(), c.as_bytes().to_vec(), 0o644))
                .collect(),
        }
    }
}

/// An uncompressed layer tar holding `layer`'s files (parent directories added).
fn layer_tar(layer: &Layer) -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let mut dirs = std::collections::BTreeSet::new();
    for (path, data, mode) in &layer.files {
        let mut parent = Path::new(path).parent();
        let mut chain = Vec::new();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            chain.push(p.to_path_buf());
            parent = p.parent();
        }
        for dir in chain.into_iter().rev() {
            if dirs.insert(dir.clone()) {
                let mut h = tar::Header::new_ustar();
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, &dir, std::io::empty())?;
            }
        }
        let mut h = tar::Header::new_ustar();
        h.set_mode(*mode);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, path, data.as_slice())?;
    }
    Ok(b.into_inner()?)
}

/// Puts an image with `layers` into `content`; `docker` selects Docker schema 2 media types.
pub fn build_image(
    content: &ContentStore,
    layers: &[Layer],
    created: &str,
    docker: bool,
) -> Result<TestImage> {
    let (manifest_type, config_type, layer_type) = if docker {
        (
            media_type::DOCKER_MANIFEST,
            media_type::DOCKER_CONFIG,
            media_type::DOCKER_LAYER_GZIP,
        )
    } else {
        (
            media_type::OCI_MANIFEST,
            media_type::OCI_CONFIG,
            media_type::OCI_LAYER_GZIP,
        )
    };
    let mut layer_descs = Vec::new();
    let mut blob_digests = Vec::new();
    let mut diff_ids = Vec::new();
    let mut size = 0;
    for layer in layers {
        let tar = layer_tar(layer)?;
        diff_ids.push(kiln_oci::sha256(&tar));
        let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
        gz.write_all(&tar)?;
        let gz = gz.finish()?;
        let d = content.put(&gz, None)?;
        size += gz.len() as u64;
        layer_descs
            .push(json!({"mediaType": layer_type, "digest": d.to_string(), "size": gz.len()}));
        blob_digests.push(d);
    }
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "created": created,
        "config": {
            "Env": ["PATH=/bin"],
            "Cmd": ["/bin/busybox", "echo", "hi"],
        },
        "rootfs": {
            "type": "layers",
            "diff_ids": diff_ids.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
        },
        "history": layers.iter().map(|_| json!({"created": created, "created_by": "kiln test"})).collect::<Vec<_>>(),
    });
    let config_bytes = serde_json::to_vec(&config)?;
    let config_digest = content.put(&config_bytes, None)?;
    size += config_bytes.len() as u64;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": {"mediaType": config_type, "digest": config_digest.to_string(), "size": config_bytes.len()},
        "layers": layer_descs,
    });
    let manifest_bytes = serde_json::to_vec(&manifest)?;
    let manifest_digest = content.put(&manifest_bytes, None)?;
    Ok(TestImage {
        manifest: manifest_digest,
        manifest_size: manifest_bytes.len() as u64,
        config: config_digest,
        layers: blob_digests,
        diff_ids,
        size,
    })
}

/// A two-layer OCI image with text files.
pub fn small_image(content: &ContentStore) -> Result<TestImage> {
    build_image(
        content,
        &[
            Layer::text(&[("etc/hello", "hello\n")]),
            Layer::text(&[("app/main.txt", "main\n"), ("app/data/x", "x")]),
        ],
        "2026-01-02T03:04:05Z",
        false,
    )
}

/// An OCI index over `manifests`, stored in `content`.
pub fn build_index(content: &ContentStore, manifests: &[&TestImage]) -> Result<Digest> {
    let index = json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_INDEX,
        "manifests": manifests.iter().map(|m| json!({
            "mediaType": media_type::OCI_MANIFEST,
            "digest": m.manifest.to_string(),
            "size": m.manifest_size,
            "platform": {"architecture": "amd64", "os": "linux"},
        })).collect::<Vec<_>>(),
    });
    Ok(content.put(&serde_json::to_vec(&index)?, None)?)
}
