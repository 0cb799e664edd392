//! `kiln load` unit tests: round trips, links, digests, and hostile layers.

use super::*;
use crate::ArchiveOptions;
use crate::save::{SaveFormat, SaveImage, write_save_archive};

fn tar_gz(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (p, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, p, *data).unwrap();
    }
    let tar = b.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    io::Write::write_all(&mut gz, &tar).unwrap();
    gz.finish().unwrap()
}

/// A one-layer image in `content`; returns (manifest, config).
fn image(content: &ContentStore, file: &[u8]) -> (Digest, Digest) {
    let layer = tar_gz(&[("hello.txt", file)]);
    let mut gz = flate2::read::GzDecoder::new(layer.as_slice());
    let mut tar = Vec::new();
    gz.read_to_end(&mut tar).unwrap();
    let diff_id = kiln_oci::sha256(&tar);
    let layer_digest = content.put(&layer, None).unwrap();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [diff_id.to_string()]},
    }))
    .unwrap();
    let config_digest = content.put(&config, None).unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_type::DOCKER_MANIFEST,
        "config": {"mediaType": media_type::DOCKER_CONFIG, "digest": config_digest.to_string(), "size": config.len()},
        "layers": [{"mediaType": media_type::DOCKER_LAYER_GZIP, "digest": layer_digest.to_string(), "size": layer.len()}],
    }))
    .unwrap();
    (content.put(&manifest, None).unwrap(), config_digest)
}

fn store() -> (tempfile::TempDir, ContentStore) {
    let dir = tempfile::tempdir().unwrap();
    let content = ContentStore::open(dir.path().join("c")).unwrap();
    (dir, content)
}

#[test]
fn save_then_load_round_trips_both_formats_with_names() {
    let (_d, src) = store();
    let (m1, c1) = image(&src, b"one");
    let (m2, c2) = image(&src, b"two");
    let images = vec![
        SaveImage {
            manifest: m1.clone(),
            names: vec!["a:1".parse().unwrap(), "b/c:2".parse().unwrap()],
        },
        SaveImage {
            manifest: m2.clone(),
            names: vec![],
        },
    ];
    for format in [SaveFormat::Docker, SaveFormat::Oci] {
        let bytes = write_save_archive(
            &src,
            &images,
            format,
            &ArchiveOptions::default(),
            Vec::new(),
        )
        .unwrap();
        let (_d2, dst) = store();
        let loaded = load_archive(
            &dst,
            bytes.as_slice(),
            Path::new("x.tar"),
            &Platform::host(),
        )
        .unwrap();
        assert_eq!(loaded.len(), 2, "{format:?}");
        assert_eq!(loaded[0].manifest, m1);
        assert_eq!(loaded[0].config, c1);
        let names: Vec<String> = loaded[0].names.iter().map(|n| n.whole()).collect();
        assert_eq!(
            names,
            ["docker.io/library/a:1", "docker.io/b/c:2"],
            "{format:?}"
        );
        assert_eq!(loaded[1].config, c2);
        assert!(loaded[1].names.is_empty());
    }
}

#[test]
fn legacy_docker_archive_with_symlinked_layer_loads_and_bad_diff_id_fails() {
    let (_d, content) = store();
    let layer = {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(2);
        h.set_mode(0o644);
        b.append_data(&mut h, "f", &b"hi"[..]).unwrap();
        b.into_inner().unwrap()
    };
    let diff = kiln_oci::sha256(&layer);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [diff.to_string(), diff.to_string()]},
    }))
    .unwrap();
    let config_name = format!("{}.json", kiln_oci::sha256_hex(&config));
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": config_name, "RepoTags": ["legacy:v1"],
        "Layers": ["aaa/layer.tar", "bbb/layer.tar"],
    }]))
    .unwrap();
    let archive = |config: &[u8]| {
        let mut b = tar::Builder::new(Vec::new());
        let mut add = |p: &str, d: &[u8]| {
            let mut h = tar::Header::new_ustar();
            h.set_size(d.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, p, d).unwrap();
        };
        add("aaa/layer.tar", &layer);
        add(&config_name, config);
        add("manifest.json", &manifest);
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "bbb/layer.tar", "../aaa/layer.tar")
            .unwrap();
        b.into_inner().unwrap()
    };
    let loaded = load_archive(
        &content,
        archive(&config).as_slice(),
        Path::new("-"),
        &Platform::host(),
    )
    .unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].names[0].whole(), "docker.io/library/legacy:v1");
    let m = crate::image::read_manifest(&content, &loaded[0].manifest).unwrap();
    assert_eq!(m.layers().len(), 2);
    assert_eq!(m.layers()[1].digest(), &diff);

    let bad =
        String::from_utf8(config.clone())
            .unwrap()
            .replacen(&diff.digest()[..8], "00000000", 1);
    let err = load_archive(
        &content,
        archive(bad.as_bytes()).as_slice(),
        Path::new("-"),
        &Platform::host(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("invalid archive"), "{err}");
}

#[test]
fn a_blob_that_does_not_match_its_name_is_refused() {
    let (_d, content) = store();
    let wrong = kiln_oci::sha256(b"something else");
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(3);
    h.set_mode(0o644);
    b.append_data(&mut h, crate::archive::blob_path(&wrong), &b"abc"[..])
        .unwrap();
    let bytes = b.into_inner().unwrap();
    let err = load_archive(
        &content,
        bytes.as_slice(),
        Path::new("-"),
        &Platform::host(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
}

#[test]
fn paths_are_cleaned_and_may_not_escape() {
    assert_eq!(clean(Path::new("./a/./b/../c")).unwrap(), "a/c");
    assert_eq!(clean(Path::new("/abs/x")).unwrap(), "abs/x");
    assert!(clean(Path::new("../x")).is_none());
}

/// A layer tar with names and link names written verbatim (the tar crate's setters refuse
/// `..`); a regular entry gets `data`.
fn raw_layer(entries: &[(tar::EntryType, &str, &str)], data: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (kind, name, link) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_mode(0o644);
        let body: &[u8] = if *kind == tar::EntryType::Regular {
            data
        } else {
            b""
        };
        h.set_size(body.len() as u64);
        h.set_cksum();
        b.append(&h, body).unwrap();
    }
    b.into_inner().unwrap()
}

/// A legacy `docker save` archive whose layer `aaa/layer.tar` holds `layer`, and its config.
fn legacy_with_layer(layer: &[u8]) -> (Vec<u8>, Vec<u8>) {
    kiln_test::docker_save_archive("aaa/layer.tar", layer)
}

fn blobs(content: &ContentStore) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(content.root().join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn each_hostile_layer_is_refused_naming_layer_and_entry_and_nothing_new_is_kept() {
    use tar::EntryType::{Directory as D, Link as H, Regular as F, Symlink as S};
    let honest = raw_layer(&[(F, "f", "")], b"data");
    let mut cut = honest.clone();
    cut.truncate(514);
    let mut huge = {
        let mut h = tar::Header::new_gnu();
        h.set_size(1 << 40);
        h.set_path("big").unwrap();
        h.set_cksum();
        h.as_bytes().to_vec()
    };
    huge.extend_from_slice(&[0u8; 2048]);
    // (layer bytes, the entry the refusal names, or None for an unreadable tar)
    let cases: Vec<(Vec<u8>, Option<&str>)> = vec![
        (raw_layer(&[(F, "../escape", "")], b"x"), Some("../escape")),
        (raw_layer(&[(F, "a/../../x", "")], b"x"), Some("a/../../x")),
        (
            raw_layer(&[(F, "f", ""), (H, "h", "../../etc/passwd")], b"x"),
            Some("h"),
        ),
        (raw_layer(&[(H, "h", "/etc/shadow")], b""), Some("h")),
        (
            raw_layer(&[(S, "s", "/etc"), (F, "s/cron", "")], b"x"),
            Some("s/cron"),
        ),
        (
            raw_layer(&[(F, "x", ""), (F, "x/y", "")], b"x"),
            Some("x/y"),
        ),
        (raw_layer(&[(D, "d", ""), (H, "h", "d")], b""), Some("h")),
        (cut, Some("f")),
        (huge, Some("big")),
        (
            b"this is not a tar archive at all, just text\n".repeat(20),
            None,
        ),
    ];
    for (layer, entry) in cases {
        let (_d, content) = store();
        let (archive, config) = legacy_with_layer(&layer);
        // A blob the store held before the load stays after it.
        let before = content.put(&config, None).unwrap();
        let err = load_archive(
            &content,
            archive.as_slice(),
            Path::new("x.tar"),
            &Platform::host(),
        )
        .unwrap_err();
        let Error::RefusedLayer {
            digest,
            path,
            source,
        } = &err
        else {
            panic!("{entry:?}: {err:?}");
        };
        assert_eq!(*digest, kiln_oci::sha256(&layer));
        assert_eq!(path, "aaa/layer.tar");
        match (entry, source.as_ref()) {
            (Some(e), kiln_snapshot::Error::BadEntry { path, .. }) => assert_eq!(path, e),
            (None, kiln_snapshot::Error::ReadTar { .. }) => {}
            _ => panic!("{entry:?}: {source:?}"),
        }
        assert_eq!(blobs(&content), [before.digest().to_string()], "{entry:?}");
        assert!(err.to_string().contains(&digest.to_string()));
    }
}

#[test]
fn layers_with_absolute_names_and_links_load() {
    use tar::EntryType::{Link as H, Regular as F, Symlink as S};
    let layer = raw_layer(
        &[
            (F, "/etc/passwd", ""),
            (H, "etc/passwd-", "/etc/passwd"),
            (S, "etc/localtime", "/usr/share/zoneinfo/UTC"),
            (F, "./a/../b", ""),
        ],
        b"root:x:0:0\n",
    );
    let (_d, content) = store();
    let (archive, _) = legacy_with_layer(&layer);
    let loaded = load_archive(
        &content,
        archive.as_slice(),
        Path::new("x.tar"),
        &Platform::host(),
    )
    .unwrap();
    assert_eq!(loaded.len(), 1);
}

#[test]
fn a_layer_compressed_otherwise_than_its_media_type_says_is_refused() {
    let (_d, content) = store();
    let l = Loader {
        content: &content,
        source: "x.tar".into(),
        scans: Default::default(),
        added: Default::default(),
    };
    let plain = raw_layer(&[(tar::EntryType::Regular, "f", "")], b"x");
    let digest = kiln_oci::sha256(&plain);
    let scan = copy_checking_layer(plain.as_slice(), io::sink()).unwrap();
    l.scans
        .borrow_mut()
        .insert(digest.clone(), ("l.tar".into(), scan));
    assert_eq!(
        l.layer_diff_id(&digest, LayerCompression::None).unwrap(),
        digest
    );
    let err = l
        .layer_diff_id(&digest, LayerCompression::Gzip)
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("is a plain tar but its media type says gzip"),
        "{err}"
    );
}
