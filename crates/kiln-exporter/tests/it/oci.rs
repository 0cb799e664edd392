use std::io::Read;

use anyhow::Result;
use kiln_exporter::verify::verify_oci_archive;
use kiln_exporter::{ArchiveOptions, ContentStore, Error, oci};
use kiln_oci::Reference;

use crate::support::{build_index, small_image};

fn names() -> Vec<Reference> {
    vec![
        "hello-world-flask:latest".parse().unwrap(),
        "127.0.0.1:5000/team/app:v1".parse().unwrap(),
    ]
}

/// (path, mode, mtime, uid, gid, size) of every entry.
type Listing = Vec<(String, u32, u64, u64, u64, u64)>;

fn listing(bytes: &[u8]) -> Result<Listing> {
    let mut ar = tar::Archive::new(bytes);
    let mut out = Vec::new();
    for e in ar.entries()? {
        let e = e?;
        let h = e.header();
        out.push((
            e.path()?.to_string_lossy().into_owned(),
            h.mode()?,
            h.mtime()?,
            h.uid()?,
            h.gid()?,
            h.size()?,
        ));
    }
    Ok(out)
}

fn entry(bytes: &[u8], path: &str) -> Result<Vec<u8>> {
    let mut ar = tar::Archive::new(bytes);
    for e in ar.entries()? {
        let mut e = e?;
        if e.path()?.to_string_lossy() == path {
            let mut buf = Vec::new();
            e.read_to_end(&mut buf)?;
            return Ok(buf);
        }
    }
    anyhow::bail!("no entry `{path}`")
}

#[test]
fn archive_verifies_and_indexes_every_name() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let content = ContentStore::open(dir.path().join("content"))?;
    let img = small_image(&content)?;
    let path = dir.path().join("out.tar");
    oci::write_archive(
        &content,
        &img.manifest,
        &names(),
        std::fs::File::create(&path)?,
    )?;

    let summary = verify_oci_archive(&path)?;
    assert_eq!(summary.blobs, 4);
    assert_eq!(summary.unchecked_diff_ids, 0);
    assert!(summary.docker_manifest.is_none());
    assert_eq!(summary.manifests.len(), 1);
    let m = &summary.manifests[0];
    assert_eq!(m.digest, img.manifest);
    assert_eq!(m.config, img.config);
    assert_eq!(m.layers, img.layers);
    let refs: Vec<(Option<&str>, Option<&str>)> = summary
        .refs
        .iter()
        .map(|r| (r.image_name.as_deref(), r.ref_name.as_deref()))
        .collect();
    assert_eq!(
        refs,
        vec![
            (
                Some("docker.io/library/hello-world-flask:latest"),
                Some("latest")
            ),
            (Some("127.0.0.1:5000/team/app:v1"), Some("v1")),
        ]
    );
    assert!(summary.refs.iter().all(|r| r.digest == img.manifest));
    Ok(())
}

#[test]
fn archive_is_deterministic_with_normalised_entries() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let content = ContentStore::open(dir.path().join("content"))?;
    let img = small_image(&content)?;
    let a = oci::write_archive(&content, &img.manifest, &names(), Vec::new())?;
    let b = oci::write_archive(&content, &img.manifest, &names(), Vec::new())?;
    assert_eq!(a, b);

    let list = listing(&a)?;
    let mut blobs: Vec<String> = [&img.manifest, &img.config]
        .into_iter()
        .chain(&img.layers)
        .map(|d| format!("blobs/sha256/{}", d.digest()))
        .collect();
    blobs.sort();
    let mut want = vec!["blobs/".to_string(), "blobs/sha256/".to_string()];
    want.extend(blobs);
    want.extend(["oci-layout".to_string(), "index.json".to_string()]);
    let paths: Vec<String> = list.iter().map(|e| e.0.clone()).collect();
    assert_eq!(paths, want);
    for (path, mode, mtime, uid, gid, _) in &list {
        let want_mode = if path.ends_with('/') { 0o755 } else { 0o644 };
        assert_eq!((*mode, *mtime, *uid, *gid), (want_mode, 0, 0, 0), "{path}");
    }
    let layout: serde_json::Value = serde_json::from_slice(&entry(&a, "oci-layout")?)?;
    assert_eq!(layout, serde_json::json!({"imageLayoutVersion": "1.0.0"}));

    // SOURCE_DATE_EPOCH sets every mtime and nothing else.
    let opts = ArchiveOptions {
        source_date_epoch: Some(1_234_567_890),
        ..ArchiveOptions::default()
    };
    let c = oci::write_archive_with(&content, &img.manifest, &names(), &opts, Vec::new())?;
    assert_ne!(a, c);
    let list_c = listing(&c)?;
    assert!(list_c.iter().all(|e| e.2 == 1_234_567_890));
    assert_eq!(
        list_c.iter().map(|e| (&e.0, e.5)).collect::<Vec<_>>(),
        list.iter().map(|e| (&e.0, e.5)).collect::<Vec<_>>()
    );
    Ok(())
}

#[test]
fn corrupt_archives_fail_verification() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let content = ContentStore::open(dir.path().join("content"))?;
    let img = small_image(&content)?;
    let good = oci::write_archive(&content, &img.manifest, &names(), Vec::new())?;

    // Flip one byte inside the first layer blob's data.
    let mut ar = tar::Archive::new(good.as_slice());
    let layer_path = format!("blobs/sha256/{}", img.layers[0].digest());
    let mut offset = None;
    for e in ar.entries()? {
        let e = e?;
        if e.path()?.to_string_lossy() == layer_path {
            offset = Some(e.raw_file_position() as usize);
        }
    }
    let mut bad = good.clone();
    bad[offset.expect("layer entry present") + 20] ^= 0xff;
    let path = dir.path().join("bad.tar");
    std::fs::write(&path, &bad)?;
    assert!(matches!(
        verify_oci_archive(&path),
        Err(Error::DigestMismatch { expected, .. }) if expected == img.layers[0]
    ));

    // An archive without a blob its manifest needs.
    let mut b = tar::Builder::new(Vec::new());
    let mut ar = tar::Archive::new(good.as_slice());
    for e in ar.entries()? {
        let mut e = e?;
        if e.path()?.to_string_lossy() == layer_path {
            continue;
        }
        let mut h = e.header().clone();
        let mut data = Vec::new();
        e.read_to_end(&mut data)?;
        b.append_data(&mut h, &*e.path()?, data.as_slice())?;
    }
    let path = dir.path().join("missing.tar");
    std::fs::write(&path, b.into_inner()?)?;
    let err = verify_oci_archive(&path).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidArchive { reason, .. } if reason.contains(&img.layers[0].to_string())),
        "{err}"
    );
    Ok(())
}

#[test]
fn index_roots_export_every_child() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let content = ContentStore::open(dir.path().join("content"))?;
    let img = small_image(&content)?;
    let index = build_index(&content, &[&img])?;
    let path = dir.path().join("index.tar");
    oci::write_archive(
        &content,
        &index,
        &names()[..1],
        std::fs::File::create(&path)?,
    )?;
    let summary = verify_oci_archive(&path)?;
    assert_eq!(summary.blobs, 5);
    assert_eq!(summary.refs[0].digest, index);
    assert_eq!(summary.refs[0].media_type, kiln_oci::media_type::OCI_INDEX);
    assert_eq!(summary.manifests[0].digest, img.manifest);
    Ok(())
}

#[test]
fn missing_blob_in_store_is_an_error() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let content = ContentStore::open(dir.path().join("content"))?;
    let img = small_image(&content)?;
    content.delete(&img.config)?;
    let err = oci::write_archive(&content, &img.manifest, &[], Vec::new()).unwrap_err();
    assert!(matches!(err, Error::MissingBlob(d) if d == img.config));
    Ok(())
}

#[test]
fn layout_dir_matches_the_archive() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let content = ContentStore::open(dir.path().join("content"))?;
    let img = small_image(&content)?;
    let out = dir.path().join("layout");
    oci::write_layout_dir(&content, &img.manifest, &names(), &out)?;
    // Writing again over an existing layout is fine.
    oci::write_layout_dir(&content, &img.manifest, &names(), &out)?;

    let archive = oci::write_archive(&content, &img.manifest, &names(), Vec::new())?;
    for (path, ..) in listing(&archive)? {
        let on_disk = out.join(&path);
        if path.ends_with('/') {
            assert!(on_disk.is_dir(), "{path}");
        } else {
            assert_eq!(std::fs::read(&on_disk)?, entry(&archive, &path)?, "{path}");
        }
    }
    let names_on_disk: Vec<_> = std::fs::read_dir(out.join("blobs/sha256"))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()?;
    assert_eq!(
        names_on_disk.len(),
        4,
        "no temp files left: {names_on_disk:?}"
    );
    Ok(())
}
