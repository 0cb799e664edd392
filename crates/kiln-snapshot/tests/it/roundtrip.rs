//! Commit → blob → unpack round trips, diffIDs and interop with GNU tar.

use std::fs;
use std::process::Command;

use kiln_content::ContentStore;
use kiln_oci::media_type;
use kiln_snapshot::{Compression, Error, LayerStore};

use crate::common::*;

struct Env {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    content: ContentStore,
    layers: LayerStore,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    Env {
        content: ContentStore::open(root.join("content")).unwrap(),
        layers: LayerStore::open(&root.join("layers")).unwrap(),
        root,
        _dir: dir,
    }
}

#[test]
fn commit_then_unpack_reproduces_the_tree() {
    let e = env();
    let upper = e.root.join("upper");
    build_tree(&upper);
    let before = snapshot(&upper);
    assert!(before["data/b"].same_inode_as.as_deref() == Some("data/a"));

    let blob = e
        .layers
        .commit_upper(&upper, &e.content, Compression::Gzip)
        .unwrap();
    assert_eq!(blob.media_type, media_type::OCI_LAYER_GZIP);
    assert!(!upper.exists(), "the upper dir moves into the store");
    assert_eq!(snapshot(&e.layers.dir(&blob.diff_id)), before);

    // Unpack the blob in a different store and compare everything.
    let other = LayerStore::open(&e.root.join("other")).unwrap();
    let diff_id = other
        .unpack(
            e.content.open_blob(&blob.digest).unwrap(),
            &blob.media_type,
            Some(&blob.diff_id),
        )
        .unwrap();
    assert_eq!(diff_id, blob.diff_id);
    assert_eq!(snapshot(&other.dir(&diff_id)), before);

    // Re-exporting the unpacked copy yields byte-identical layers.
    let again = other
        .export(&diff_id, &e.content, Compression::Gzip)
        .unwrap();
    assert_eq!(again, blob);
}

#[test]
fn diff_id_and_digest_match_coreutils() {
    let e = env();
    let upper = e.root.join("upper");
    build_tree(&upper);
    let blob = e
        .layers
        .commit_upper(&upper, &e.content, Compression::Gzip)
        .unwrap();
    let path = e.content.path(&blob.digest);
    assert_eq!(blob.diff_id.digest(), &sha256sum(&gunzip(&path)));
    assert_eq!(blob.digest.digest(), &sha256_file(&path));
    assert_eq!(blob.size, fs::metadata(&path).unwrap().len());

    let plain = e
        .layers
        .export(&blob.diff_id, &e.content, Compression::Uncompressed)
        .unwrap();
    assert_eq!(plain.media_type, media_type::OCI_LAYER_TAR);
    assert_eq!(plain.diff_id, blob.diff_id);
    assert_eq!(plain.digest, plain.diff_id);
    assert_eq!(
        plain.digest.digest(),
        &sha256file_cmd(&e.content.path(&plain.digest))
    );
}

fn sha256file_cmd(path: &std::path::Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

#[test]
fn same_tree_twice_gives_the_same_layer() {
    let e = env();
    let (a, b) = (e.root.join("a"), e.root.join("b"));
    build_tree(&a);
    build_tree(&b);
    let first = e
        .layers
        .commit_upper(&a, &e.content, Compression::Gzip)
        .unwrap();
    let second = e
        .layers
        .commit_upper(&b, &e.content, Compression::Gzip)
        .unwrap();
    assert_eq!(first, second);
    assert!(!b.exists(), "a duplicate upper dir is dropped");
    assert!(e.layers.contains(&first.diff_id));

    // And a real change changes it.
    let c = e.root.join("c");
    build_tree(&c);
    fs::write(c.join("etc/passwd"), b"changed\n").unwrap();
    stamp_mtimes(&c, 1_600_000_000);
    let third = e
        .layers
        .commit_upper(&c, &e.content, Compression::Gzip)
        .unwrap();
    assert_ne!(third.diff_id, first.diff_id);
}

#[test]
fn gnu_tar_gzip_layer_unpacks() {
    let e = env();
    let tree = e.root.join("tree");
    build_tree(&tree);
    let tgz = e.root.join("layer.tgz");
    let status = Command::new("tar")
        .args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-czf"])
        .arg(&tgz)
        .arg("-C")
        .arg(&tree)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());

    let diff_id = e
        .layers
        .unpack(
            fs::File::open(&tgz).unwrap(),
            media_type::DOCKER_LAYER_GZIP,
            None,
        )
        .unwrap();
    assert_eq!(diff_id.digest(), &sha256sum(&gunzip(&tgz)));
    assert_eq!(snapshot(&e.layers.dir(&diff_id)), snapshot(&tree));
}

#[test]
fn gnu_tar_extracts_our_layers() {
    let e = env();
    let upper = e.root.join("upper");
    build_tree(&upper);
    let before = snapshot(&upper);
    let blob = e
        .layers
        .commit_upper(&upper, &e.content, Compression::Uncompressed)
        .unwrap();
    let out = e.root.join("out");
    fs::create_dir(&out).unwrap();
    let status = Command::new("tar")
        .args([
            "--numeric-owner",
            "--same-owner",
            "-p",
            "--xattrs",
            "--xattrs-include=*",
            "-xf",
        ])
        .arg(e.content.path(&blob.digest))
        .arg("-C")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(snapshot(&out), before);
}

#[test]
fn zstd_layers_unpack() {
    let e = env();
    let upper = e.root.join("upper");
    build_tree(&upper);
    let blob = e
        .layers
        .commit_upper(&upper, &e.content, Compression::Uncompressed)
        .unwrap();
    let tar = e.content.read(&blob.digest).unwrap();
    let zst = zstd::encode_all(&tar[..], 3).unwrap();
    let other = LayerStore::open(&e.root.join("other")).unwrap();
    let diff_id = other
        .unpack(&zst[..], media_type::OCI_LAYER_ZSTD, None)
        .unwrap();
    assert_eq!(diff_id, blob.diff_id);
    assert_eq!(
        snapshot(&other.dir(&diff_id)),
        snapshot(&e.layers.dir(&blob.diff_id))
    );
}

#[test]
fn wrong_expected_diff_id_leaves_nothing() {
    let e = env();
    let tree = e.root.join("tree");
    build_tree(&tree);
    let tar = e.root.join("layer.tar");
    assert!(
        Command::new("tar")
            .arg("-cf")
            .arg(&tar)
            .arg("-C")
            .arg(&tree)
            .arg(".")
            .status()
            .unwrap()
            .success()
    );
    let wrong = kiln_oci::sha256(b"something else");
    let err = e
        .layers
        .unpack(
            fs::File::open(&tar).unwrap(),
            media_type::OCI_LAYER_TAR,
            Some(&wrong),
        )
        .unwrap_err();
    match err {
        Error::DiffIdMismatch { expected, actual } => {
            assert_eq!(expected, wrong);
            assert_eq!(actual.digest(), &sha256_file(&tar));
        }
        other => panic!("unexpected error {other}"),
    }
    assert_eq!(fs::read_dir(e.layers.root()).unwrap().count(), 0);
}

#[test]
fn exporting_a_missing_layer_fails() {
    let e = env();
    let missing = kiln_oci::sha256(b"nope");
    let err = e
        .layers
        .export(&missing, &e.content, Compression::Gzip)
        .unwrap_err();
    assert!(matches!(err, Error::NotFound(d) if d == missing));
}
