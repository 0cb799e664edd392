use std::io::Read;

use anyhow::Result;
use kiln_exporter::ContentStore;
use kiln_exporter::docker::{self, ManifestEntry};
use kiln_exporter::verify::verify_oci_archive;
use kiln_oci::Reference;

use crate::support::{Layer, build_image, build_index, small_image};

fn entries(bytes: &[u8]) -> Result<Vec<(String, Vec<u8>)>> {
    let mut ar = tar::Archive::new(bytes);
    let mut out = Vec::new();
    for e in ar.entries()? {
        let mut e = e?;
        let mut data = Vec::new();
        e.read_to_end(&mut data)?;
        out.push((e.path()?.to_string_lossy().into_owned(), data));
    }
    Ok(out)
}

fn get<'a>(entries: &'a [(String, Vec<u8>)], path: &str) -> &'a [u8] {
    &entries
        .iter()
        .find(|(p, _)| p == path)
        .unwrap_or_else(|| panic!("no entry `{path}`"))
        .1
}

#[test]
fn manifest_json_names_config_layers_and_tags() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let content = ContentStore::open(dir.path().join("content"))?;
    let img = small_image(&content)?;
    let digest_only: Reference = format!("app@{}", img.manifest).parse()?;
    let names: Vec<Reference> = vec![
        "hello-world-flask".parse()?,
        "localhost:5000/team/app:v1".parse()?,
        digest_only,
    ];
    let path = dir.path().join("docker.tar");
    docker::write_archive(
        &content,
        &img.manifest,
        &names,
        std::fs::File::create(&path)?,
    )?;
    let bytes = std::fs::read(&path)?;
    let all = entries(&bytes)?;

    let manifest: Vec<ManifestEntry> = serde_json::from_slice(get(&all, "manifest.json"))?;
    let config_path = format!("{}.json", img.config.digest());
    assert_eq!(
        manifest,
        vec![ManifestEntry {
            config: config_path.clone(),
            repo_tags: vec![
                "hello-world-flask:latest".into(),
                "localhost:5000/team/app:v1".into()
            ],
            layers: img
                .layers
                .iter()
                .map(|d| format!("blobs/sha256/{}", d.digest()))
                .collect(),
        }]
    );
    // The config file is the config blob, byte for byte.
    assert_eq!(get(&all, &config_path), content.read(&img.config)?);
    assert_eq!(
        kiln_oci::sha256(get(&all, &config_path)),
        img.config,
        "docker derives the image ID from these bytes"
    );

    let repos: serde_json::Value = serde_json::from_slice(get(&all, "repositories"))?;
    let top = img.layers.last().unwrap().digest();
    assert_eq!(
        repos,
        serde_json::json!({
            "hello-world-flask": {"latest": top},
            "localhost:5000/team/app": {"v1": top},
        })
    );

    // It is an OCI layout too, and its docker manifest checks out.
    let summary = verify_oci_archive(&path)?;
    assert_eq!(summary.docker_manifest, Some(manifest));
    assert_eq!(summary.refs.len(), 3);
    assert_eq!(summary.manifests[0].layers, img.layers);

    // The last entries are the docker-specific files, after the OCI layout ones.
    let tail: Vec<&str> = all[all.len() - 5..]
        .iter()
        .map(|(p, _)| p.as_str())
        .collect();
    assert_eq!(
        tail,
        vec![
            "oci-layout",
            "index.json",
            &config_path,
            "manifest.json",
            "repositories"
        ]
    );
    Ok(())
}

#[test]
fn docker_media_types_export_too() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let content = ContentStore::open(dir.path().join("content"))?;
    let img = build_image(
        &content,
        &[Layer::text(&[("x", "y")])],
        "2026-01-01T00:00:00Z",
        true,
    )?;
    let path = dir.path().join("d.tar");
    docker::write_archive(
        &content,
        &img.manifest,
        &["d:1".parse()?],
        std::fs::File::create(&path)?,
    )?;
    let summary = verify_oci_archive(&path)?;
    assert_eq!(
        summary.refs[0].media_type,
        kiln_oci::media_type::DOCKER_MANIFEST
    );
    assert_eq!(summary.unchecked_diff_ids, 0);
    Ok(())
}

/// A multi-platform index is written as `docker save` writes one since Docker 25: the index in
/// index.json, every platform's blobs, and manifest.json naming one image (this machine's).
#[test]
fn an_index_is_written_as_docker_saves_one() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let content = ContentStore::open(dir.path().join("content"))?;
    let img = small_image(&content)?;
    let index = build_index(&content, &[&img])?;
    let tar = docker::write_archive(&content, &index, &["d:1".parse()?], Vec::new())?;
    let entries = entries(&tar)?;
    let oci_index: serde_json::Value = serde_json::from_slice(get(&entries, "index.json"))?;
    assert_eq!(
        oci_index["manifests"][0]["digest"],
        index.to_string(),
        "{oci_index}"
    );
    let manifest: Vec<ManifestEntry> = serde_json::from_slice(get(&entries, "manifest.json"))?;
    assert_eq!(manifest.len(), 1);
    assert_eq!(manifest[0].repo_tags, ["d:1"]);
    Ok(())
}
