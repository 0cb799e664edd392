//! `kiln save`: several images in one archive, as `docker save` writes them. Both formats are an
//! OCI image layout (blobs shared between images once); the docker format adds `manifest.json`,
//! `repositories` and each config as `<hex>.json` for `docker load`.

use std::collections::BTreeMap;
use std::io::Write;

use kiln_content::ContentStore;
use kiln_oci::{Digest, Reference, media_type};

use crate::archive::{ArchiveOptions, TarOut, blob_path};
use crate::docker::{MANIFEST_FILE, ManifestEntry, REPOSITORIES_FILE};
use crate::image;
use crate::oci::{
    ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME, INDEX_FILE, LAYOUT_FILE, LayoutDescriptor,
    LayoutHeader, LayoutIndex,
};
use crate::store::familiar_name;
use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveFormat {
    /// `docker load`'s format (which is also an OCI layout), `docker save`'s default.
    Docker,
    /// A plain OCI image layout.
    Oci,
}

/// One image to save: its manifest and the names to record for it (none when saved by ID).
#[derive(Debug, Clone)]
pub struct SaveImage {
    pub manifest: Digest,
    pub names: Vec<Reference>,
}

/// Writes every image into one archive and returns `out`.
pub fn write_save_archive<W: Write>(
    content: &ContentStore,
    images: &[SaveImage],
    format: SaveFormat,
    opts: &ArchiveOptions,
    out: W,
) -> Result<W> {
    let mut blobs = BTreeMap::new();
    let mut descriptors = Vec::new();
    let mut entries = Vec::new();
    let mut configs = BTreeMap::new();
    let mut repositories: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for img in images {
        let graph = image::collect(content, &img.manifest)?;
        blobs.extend(graph.blobs);
        let descriptor = |annotations| LayoutDescriptor {
            media_type: graph.root.media_type.clone(),
            digest: graph.root.digest.to_string(),
            size: graph.root.size,
            annotations,
        };
        if img.names.is_empty() {
            descriptors.push(descriptor(BTreeMap::new()));
        }
        for name in &img.names {
            let mut a = BTreeMap::new();
            a.insert(ANNOTATION_IMAGE_NAME.to_string(), name.whole());
            if let Some(tag) = name.tag() {
                a.insert(ANNOTATION_REF_NAME.to_string(), tag.to_string());
            }
            descriptors.push(descriptor(a));
        }
        if format == SaveFormat::Docker {
            // Docker's older loader reads one image per entry: for an index, the one `docker
            // save` lists (this machine's platform, else the first).
            let m = image::read_manifest(content, &image::docker_image(content, &img.manifest)?)?;
            let config = m.config().digest().clone();
            let bytes = image::read_metadata(content, &config)?;
            if bytes.len() as u64 != m.config().size() {
                return Err(Error::SizeMismatch {
                    digest: config,
                    expected: m.config().size(),
                    actual: bytes.len() as u64,
                });
            }
            let tags: Vec<(String, String)> = img
                .names
                .iter()
                .filter(|n| n.tag().is_some())
                .map(familiar_name)
                .collect();
            if let Some(top) = m.layers().last() {
                for (repo, tag) in &tags {
                    repositories
                        .entry(repo.clone())
                        .or_default()
                        .insert(tag.clone(), top.digest().digest().to_string());
                }
            }
            let path = format!("{}.json", config.digest());
            entries.push(ManifestEntry {
                config: path.clone(),
                repo_tags: tags.iter().map(|(r, t)| format!("{r}:{t}")).collect(),
                layers: m.layers().iter().map(|l| blob_path(l.digest())).collect(),
            });
            configs.insert(path, bytes);
        }
    }

    let mut tar = TarOut::new(out, opts);
    tar.dir("blobs/")?;
    let mut algorithms: Vec<&str> = blobs
        .values()
        .map(|(d, _)| d.algorithm().as_ref())
        .collect();
    algorithms.sort();
    algorithms.dedup();
    for alg in algorithms {
        tar.dir(&format!("blobs/{alg}/"))?;
    }
    for (digest, size) in blobs.values() {
        tar.blob(&blob_path(digest), content, digest, *size)?;
    }
    let header = LayoutHeader {
        image_layout_version: "1.0.0".to_string(),
    };
    tar.file(LAYOUT_FILE, &to_json(&header))?;
    let index = LayoutIndex {
        schema_version: 2,
        media_type: Some(media_type::OCI_INDEX.to_string()),
        manifests: descriptors,
    };
    tar.file(INDEX_FILE, &to_json(&index))?;
    if format == SaveFormat::Docker {
        for (path, bytes) in &configs {
            tar.file(path, bytes)?;
        }
        tar.file(MANIFEST_FILE, &to_json(&entries))?;
        tar.file(REPOSITORIES_FILE, &to_json(&repositories))?;
    }
    tar.finish()
}

fn to_json<T: serde::Serialize + ?Sized>(value: &T) -> Vec<u8> {
    // Plain structs, strings and maps always serialise.
    serde_json::to_vec(value).unwrap_or_default()
}
