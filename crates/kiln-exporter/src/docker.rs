//! The docker exporter: a tarball `docker load` accepts (`manifest.json`, `repositories`, the
//! config as `<hex>.json`) that is also an OCI image layout, as BuildKit's docker exporter
//! writes. Layers are referenced as `blobs/sha256/<hex>` and stay compressed: `docker load`
//! decompresses them itself and checks their diff IDs against the config.

use std::collections::BTreeMap;
use std::io::Write;

use kiln_content::ContentStore;
use kiln_oci::{Digest, Reference};
use serde::{Deserialize, Serialize};

use crate::archive::{ArchiveOptions, TarOut, blob_path};
use crate::image::{self, Graph};
use crate::store::familiar_name;
use crate::{Error, Result};

pub const MANIFEST_FILE: &str = "manifest.json";
pub const REPOSITORIES_FILE: &str = "repositories";

/// One image in `manifest.json`, with Docker's field names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    #[serde(rename = "Config")]
    pub config: String,
    /// `null` (what `docker save` writes for an image saved by ID) reads as no names.
    #[serde(rename = "RepoTags", default, deserialize_with = "null_as_empty")]
    pub repo_tags: Vec<String>,
    #[serde(rename = "Layers", default)]
    pub layers: Vec<String>,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
}

/// Writes a `docker load` archive of the image whose manifest or index is `manifest`, tagged
/// with every name that has a tag. Returns `out`.
pub fn write_archive<W: Write>(
    content: &ContentStore,
    manifest: &Digest,
    names: &[Reference],
    out: W,
) -> Result<W> {
    write_archive_with(content, manifest, names, &ArchiveOptions::default(), out)
}

/// [`write_archive`] with explicit options (entry mtimes). An index is written as `docker save`
/// (Docker 25+) writes one: every platform's blobs and the index in `index.json`, and in
/// `manifest.json` the one image Docker's older loader takes (this machine's platform, else the
/// first).
pub fn write_archive_with<W: Write>(
    content: &ContentStore,
    manifest: &Digest,
    names: &[Reference],
    opts: &ArchiveOptions,
    out: W,
) -> Result<W> {
    let graph: Graph = image::collect(content, manifest)?;
    let listed = image::docker_image(content, manifest)?;
    let m = image::read_manifest(content, &listed)?;
    let config = m.config().digest();
    let config_bytes = image::read_metadata(content, config)?;
    if config_bytes.len() as u64 != m.config().size() {
        return Err(Error::SizeMismatch {
            digest: config.clone(),
            expected: m.config().size(),
            actual: config_bytes.len() as u64,
        });
    }

    let entry = ManifestEntry {
        config: config_path(config),
        repo_tags: names.iter().filter_map(repo_tag).collect(),
        layers: m.layers().iter().map(|l| blob_path(l.digest())).collect(),
    };

    let mut tar = TarOut::new(out, opts);
    crate::oci::write_layout_entries(&mut tar, content, &graph, names, opts)?;
    tar.file(&entry.config, &config_bytes)?;
    tar.file(MANIFEST_FILE, &to_json(&[entry]))?;
    let top_layer = m.layers().last().map(|l| l.digest());
    tar.file(REPOSITORIES_FILE, &repositories_json(names, top_layer))?;
    tar.finish()
}

/// Where the config goes, as `docker save` names it.
fn config_path(config: &Digest) -> String {
    format!("{}.json", config.digest())
}

/// `repo:tag` the way `docker load` wants it; names without a tag cannot be loaded as tags.
fn repo_tag(name: &Reference) -> Option<String> {
    name.tag()?;
    let (repo, tag) = familiar_name(name);
    Some(format!("{repo}:{tag}"))
}

/// The legacy `repositories` file maps repo → tag → top layer ID. Only pre-1.10 loaders read
/// it, and they also need v1 layer directories we do not write, so the top layer's blob hex
/// stands in for the ID; it is there because BuildKit and `docker save` write it.
fn repositories_json(names: &[Reference], top_layer: Option<&Digest>) -> Vec<u8> {
    let mut repos: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    if let Some(top) = top_layer {
        for name in names.iter().filter(|n| n.tag().is_some()) {
            let (repo, tag) = familiar_name(name);
            repos
                .entry(repo)
                .or_default()
                .insert(tag, top.digest().to_string());
        }
    }
    to_json(&repos)
}

fn to_json<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    // Plain structs, strings and maps always serialise.
    serde_json::to_vec(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_tags_are_familiar_and_need_a_tag() {
        let r: Reference = "hello-world-flask".parse().unwrap();
        assert_eq!(repo_tag(&r).unwrap(), "hello-world-flask:latest");
        let r: Reference = "localhost:5000/team/app:v2".parse().unwrap();
        assert_eq!(repo_tag(&r).unwrap(), "localhost:5000/team/app:v2");
        let digest = kiln_oci::sha256(b"x");
        let r: Reference = format!("app@{digest}").parse().unwrap();
        assert_eq!(repo_tag(&r), None);
    }

    #[test]
    fn repositories_groups_tags_under_repos() {
        let names: Vec<Reference> = vec![
            "app:1".parse().unwrap(),
            "app:2".parse().unwrap(),
            "quay.io/x/y:z".parse().unwrap(),
        ];
        let top = kiln_oci::sha256(b"layer");
        let v: serde_json::Value =
            serde_json::from_slice(&repositories_json(&names, Some(&top))).unwrap();
        assert_eq!(v["app"]["1"], top.digest());
        assert_eq!(v["app"]["2"], top.digest());
        assert_eq!(v["quay.io/x/y"]["z"], top.digest());
        let empty = repositories_json(&names, None);
        assert_eq!(empty, b"{}");
    }
}
