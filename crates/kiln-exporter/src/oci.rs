//! The OCI image layout exporter: `oci-layout`, `index.json` and `blobs/sha256/<hex>`, as a
//! tarball ([`write_archive`]) or a directory ([`write_layout_dir`], BuildKit's `tar=false`).

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::Path;

use kiln_content::ContentStore;
use kiln_oci::{Digest, Reference, media_type};
use serde::{Deserialize, Serialize};

use crate::archive::{ArchiveOptions, HashingReader, TarOut, blob_path};
use crate::image::{self, Graph, RootBlob};
use crate::{Error, Result, atomic_write, io_err, unique_suffix};

/// The tag part of a name, as the OCI layout spec wants it.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// The full image name, which containerd and BuildKit add because a tag alone is ambiguous.
pub const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";
pub const LAYOUT_FILE: &str = "oci-layout";
pub const INDEX_FILE: &str = "index.json";
const LAYOUT_VERSION: &str = "1.0.0";

/// `oci-layout`'s content.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct LayoutHeader {
    #[serde(rename = "imageLayoutVersion")]
    pub image_layout_version: String,
}

/// `index.json`, with fields and annotations in a fixed order so archives are reproducible.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct LayoutIndex {
    pub schema_version: u32,
    #[serde(default)]
    pub media_type: Option<String>,
    pub manifests: Vec<LayoutDescriptor>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct LayoutDescriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Writes an OCI image layout tarball of the image whose manifest (or index) is `manifest`,
/// with one `index.json` entry per name. Returns `out`.
pub fn write_archive<W: Write>(
    content: &ContentStore,
    manifest: &Digest,
    names: &[Reference],
    out: W,
) -> Result<W> {
    write_archive_with(content, manifest, names, &ArchiveOptions::default(), out)
}

/// [`write_archive`] with explicit options (entry mtimes).
pub fn write_archive_with<W: Write>(
    content: &ContentStore,
    manifest: &Digest,
    names: &[Reference],
    opts: &ArchiveOptions,
    out: W,
) -> Result<W> {
    let graph = image::collect(content, manifest)?;
    let mut tar = TarOut::new(out, opts);
    write_layout_entries(&mut tar, content, &graph, names, opts)?;
    tar.finish()
}

/// Blobs, `oci-layout` and `index.json`, in that order; shared with the docker exporter.
pub(crate) fn write_layout_entries<W: Write>(
    tar: &mut TarOut<W>,
    content: &ContentStore,
    graph: &Graph,
    names: &[Reference],
    opts: &ArchiveOptions,
) -> Result<()> {
    tar.dir("blobs/")?;
    let mut algorithms: Vec<&str> = graph
        .blobs
        .values()
        .map(|(d, _)| d.algorithm().as_ref())
        .collect();
    algorithms.dedup();
    for alg in algorithms {
        tar.dir(&format!("blobs/{alg}/"))?;
    }
    for (digest, size) in graph.blobs.values() {
        tar.blob(&blob_path(digest), content, digest, *size)?;
    }
    tar.file(LAYOUT_FILE, &layout_header_json())?;
    tar.file(
        INDEX_FILE,
        &index_json(&graph.root, names, &opts.descriptor_annotations),
    )
}

fn layout_header_json() -> Vec<u8> {
    let header = LayoutHeader {
        image_layout_version: LAYOUT_VERSION.to_string(),
    };
    serde_json::to_vec(&header).unwrap_or_default()
}

/// `index.json`: the root descriptor once per name (or once, unnamed, when there are none),
/// each with `extra` annotations besides its name's.
pub(crate) fn index_json(
    root: &RootBlob,
    names: &[Reference],
    extra: &BTreeMap<String, String>,
) -> Vec<u8> {
    let descriptor = |mut annotations: BTreeMap<String, String>| {
        for (k, v) in extra {
            annotations.entry(k.clone()).or_insert_with(|| v.clone());
        }
        LayoutDescriptor {
            media_type: root.media_type.clone(),
            digest: root.digest.to_string(),
            size: root.size,
            annotations,
        }
    };
    let manifests = if names.is_empty() {
        vec![descriptor(BTreeMap::new())]
    } else {
        names
            .iter()
            .map(|name| {
                let mut a = BTreeMap::new();
                a.insert(ANNOTATION_IMAGE_NAME.to_string(), name.whole());
                if let Some(tag) = name.tag() {
                    a.insert(ANNOTATION_REF_NAME.to_string(), tag.to_string());
                }
                descriptor(a)
            })
            .collect()
    };
    let index = LayoutIndex {
        schema_version: 2,
        media_type: Some(media_type::OCI_INDEX.to_string()),
        manifests,
    };
    // Serialising plain strings and maps cannot fail.
    serde_json::to_vec(&index).unwrap_or_default()
}

/// Writes the image as an OCI image layout directory at `dir` (created if needed). Blobs already
/// there at the right size are kept; `oci-layout` and `index.json` are replaced atomically.
pub fn write_layout_dir(
    content: &ContentStore,
    manifest: &Digest,
    names: &[Reference],
    dir: &Path,
) -> Result<()> {
    let graph = image::collect(content, manifest)?;
    for (digest, size) in graph.blobs.values() {
        let dest = dir.join(blob_path(digest));
        let parent = dest.parent().unwrap_or(dir);
        fs_create_dir_all(parent)?;
        if std::fs::metadata(&dest).is_ok_and(|m| m.is_file() && m.len() == *size) {
            continue;
        }
        copy_blob(content, digest, *size, &dest)?;
    }
    atomic_write(&dir.join(LAYOUT_FILE), &layout_header_json())?;
    atomic_write(
        &dir.join(INDEX_FILE),
        &index_json(&graph.root, names, &BTreeMap::new()),
    )
}

fn fs_create_dir_all(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))
}

/// Copies a blob out of the store through a temp file, checking its digest on the way.
fn copy_blob(content: &ContentStore, digest: &Digest, size: u64, dest: &Path) -> Result<()> {
    let src = content
        .open_blob(digest)
        .map_err(|source| Error::ReadBlob {
            digest: digest.clone(),
            source: Box::new(source),
        })?;
    let tmp = dest.with_extension(format!("{}.tmp", unique_suffix()));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
        let mut reader = HashingReader::new(io::Read::take(src, size));
        io::copy(&mut reader, &mut file).map_err(io_err(&tmp))?;
        reader.check(digest, size)?;
        file.sync_all().map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, dest).map_err(io_err(dest))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> RootBlob {
        RootBlob {
            digest: kiln_oci::sha256(b"m"),
            size: 1,
            media_type: media_type::OCI_MANIFEST.to_string(),
        }
    }

    #[test]
    fn index_has_one_descriptor_per_name_with_both_annotations() {
        let names: Vec<Reference> = vec![
            "hello:latest".parse().unwrap(),
            "127.0.0.1:5000/a/b:v1".parse().unwrap(),
        ];
        let index: LayoutIndex =
            serde_json::from_slice(&index_json(&root(), &names, &BTreeMap::new())).unwrap();
        assert_eq!(index.schema_version, 2);
        assert_eq!(index.manifests.len(), 2);
        let a = &index.manifests[0].annotations;
        assert_eq!(a[ANNOTATION_REF_NAME], "latest");
        assert_eq!(a[ANNOTATION_IMAGE_NAME], "docker.io/library/hello:latest");
        let b = &index.manifests[1].annotations;
        assert_eq!(b[ANNOTATION_REF_NAME], "v1");
        assert_eq!(b[ANNOTATION_IMAGE_NAME], "127.0.0.1:5000/a/b:v1");
        assert_eq!(index.manifests[1].digest, root().digest.to_string());
    }

    #[test]
    fn index_without_names_has_one_bare_descriptor() {
        let bytes = index_json(&root(), &[], &BTreeMap::new());
        let index: LayoutIndex = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(index.manifests.len(), 1);
        assert!(index.manifests[0].annotations.is_empty());
        assert!(!String::from_utf8(bytes).unwrap().contains("annotations"));
    }
}
