//! Layers are stored uncompressed and compressed at export: reproducible OCI archives with
//! `SOURCE_DATE_EPOCH` (gzip and zstd, two clean data directories each), and pushes that
//! compress once and then upload and compress nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::export_oci::layout_image;
use crate::support::{Kiln, read_tar};

const EPOCH: &str = "1700000000";

const DOCKERFILE: &str = "FROM busybox\nCOPY . /app/\nRUN mkdir -p /out && echo built > /out/built.txt && cp /app/hello.txt /out/copy.txt\n";

fn context(k: &Kiln) -> PathBuf {
    k.context(
        "ctx",
        &[
            ("Dockerfile", DOCKERFILE),
            ("hello.txt", "hello\n"),
            ("sub/data.txt", "some data\n"),
        ],
    )
}

/// Builds the context into an OCI tarball, `SOURCE_DATE_EPOCH` from the environment or as a
/// build argument, and returns the archive's files.
fn build_oci(k: &Kiln, output: &str, epoch_as_arg: bool) -> BTreeMap<String, Vec<u8>> {
    let ctx = context(k);
    let dest = k.dir().join("image.tar");
    let spec = format!("{output},dest={}", dest.display());
    let mut cmd = k.command(&["build", "--progress", "plain", "-t", "repro:1", "-o", &spec]);
    if epoch_as_arg {
        cmd.args(["--build-arg", &format!("SOURCE_DATE_EPOCH={EPOCH}")]);
        cmd.env_remove("SOURCE_DATE_EPOCH");
    } else {
        cmd.env("SOURCE_DATE_EPOCH", EPOCH);
    }
    let out = cmd.arg(&ctx).output().expect("running kiln");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    k.assert_clean();
    read_tar(&dest).unwrap()
}

/// Two clean builds in two data directories; the archives must be the same bit for bit.
fn assert_reproducible(test: &str, output: &str, layer_type: &str, epoch_as_arg: bool) {
    let Some(a) = Kiln::new(&format!("{test}_a")) else {
        return;
    };
    let Some(b) = Kiln::new(&format!("{test}_b")) else {
        return;
    };
    let first = build_oci(&a, output, epoch_as_arg);
    // Another second on the clock, so unclamped times would differ.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let second = build_oci(&b, output, epoch_as_arg);

    let (manifest, config) = layout_image(&first);
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 3, "{manifest}");
    // busybox's layer is pulled gzip and kept; the two built layers are compressed as asked.
    for l in &layers[1..] {
        assert_eq!(l["mediaType"], layer_type, "{manifest}");
    }
    let created = config["created"].as_str().unwrap();
    assert!(
        created.starts_with("2023-11-14T22:13:20"),
        "the image time is SOURCE_DATE_EPOCH: {created}"
    );
    let names: Vec<&String> = first.keys().collect();
    assert_eq!(names, second.keys().collect::<Vec<_>>());
    for (name, data) in &first {
        assert!(second[name] == *data, "`{name}` differs between the builds");
    }
}

#[test]
fn reproducible_oci_archive_gzip_with_env_epoch() {
    assert_reproducible(
        "reproducible_oci_archive_gzip_with_env_epoch",
        "type=oci,rewrite-timestamp=true",
        kiln_oci::media_type::OCI_LAYER_GZIP,
        false,
    );
}

#[test]
fn reproducible_oci_archive_zstd_with_build_arg_epoch() {
    assert_reproducible(
        "reproducible_oci_archive_zstd_with_build_arg_epoch",
        "type=oci,rewrite-timestamp=true,compression=zstd,compression-level=5",
        kiln_oci::media_type::OCI_LAYER_ZSTD,
        true,
    );
}

/// Without `rewrite-timestamp`, the RUN step's files carry the build's time: the test above
/// would fail, which shows it can.
#[test]
fn without_rewrite_timestamp_builds_differ() {
    let Some(a) = Kiln::new("without_rewrite_timestamp_builds_differ_a") else {
        return;
    };
    let Some(b) = Kiln::new("without_rewrite_timestamp_builds_differ_b") else {
        return;
    };
    let first = build_oci(&a, "type=oci", false);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let second = build_oci(&b, "type=oci", false);
    assert_ne!(first["index.json"], second["index.json"]);
}

fn blob_count(root: &Path) -> usize {
    std::fs::read_dir(root.join("content/blobs/sha256"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The local image's manifest, read from the data directory.
fn local_manifest(k: &Kiln, name: &str) -> Value {
    let content = kiln_exporter::ContentStore::open(k.root.join("content")).unwrap();
    let store = kiln_exporter::ImageStore::open(&k.root.join("images"), content.clone()).unwrap();
    let record = store.get(&name.parse().unwrap()).unwrap().unwrap();
    serde_json::from_slice(&content.read(&record.manifest).unwrap()).unwrap()
}

#[test]
fn push_compresses_once_then_uploads_and_compresses_nothing() {
    let Some(k) = Kiln::new("push_compresses_once_then_uploads_and_compresses_nothing") else {
        return;
    };
    let ctx = context(&k);
    let name = format!("{}/kiln-test/{}:1", k.registry, k.unique("blobs"));
    k.build(&ctx, &["-t", &name]).ok();

    // Stored uncompressed: the built layers' blobs are their diff IDs.
    let local = local_manifest(&k, &name);
    assert_eq!(local["mediaType"], kiln_oci::media_type::OCI_MANIFEST);
    let built: Vec<&Value> = local["layers"].as_array().unwrap()[1..].iter().collect();
    assert_eq!(built.len(), 2, "{local}");
    for l in &built {
        assert_eq!(l["mediaType"], kiln_oci::media_type::OCI_LAYER_TAR);
    }

    let before = blob_count(&k.root);
    let first = k.kiln(&["push", &name]).ok();
    assert!(first.stderr.contains(": pushed"), "{}", first.stderr);
    // Two gzip blobs and the pushed manifest were made.
    let after_first = blob_count(&k.root);
    assert_eq!(after_first, before + 3, "{}", first.stderr);
    let manifest_digest = first.stdout.trim().to_string();
    let (status, pushed) = crate::support::http_get(
        &k.registry,
        &format!("/v2/{}/manifests/{manifest_digest}", repo_of(&name)),
        &[("Accept", kiln_oci::media_type::OCI_MANIFEST)],
        std::time::Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(status, 200, "{pushed}");
    let pushed: Value = serde_json::from_str(&pushed).unwrap();
    let gzipped: Vec<PathBuf> = pushed["layers"].as_array().unwrap()[1..]
        .iter()
        .map(|l| {
            assert_eq!(l["mediaType"], kiln_oci::media_type::OCI_LAYER_GZIP);
            let hex = l["digest"]
                .as_str()
                .unwrap()
                .strip_prefix("sha256:")
                .unwrap();
            k.root.join("content/blobs/sha256").join(hex)
        })
        .collect();
    assert!(gzipped.iter().all(|p| p.is_file()));

    let again = k.kiln(&["push", &name]).ok();
    assert!(!again.stderr.contains(": pushed"), "{}", again.stderr);
    assert_eq!(again.stdout.trim(), manifest_digest);
    assert_eq!(blob_count(&k.root), after_first, "nothing compressed again");

    // The compressed blobs stay while the image needs them, and go with it.
    k.kiln(&["prune", "-f"]).ok();
    assert!(gzipped.iter().all(|p| p.is_file()));
    k.kiln(&["rmi", &name]).ok();
    k.kiln(&["prune", "-f"]).ok();
    assert!(gzipped.iter().all(|p| !p.exists()), "pruned with the image");
    assert!(
        std::fs::read_dir(k.root.join("blob-variants"))
            .unwrap()
            .count()
            == 0,
        "their records too"
    );
}

fn repo_of(name: &str) -> String {
    let (_, rest) = name.split_once('/').unwrap();
    rest.rsplit_once(':').unwrap().0.to_string()
}

/// `--push` with the image output's options: zstd layers (so OCI media types), a manifest
/// annotation, and `--metadata-file` describing the manifest that was pushed.
#[test]
fn push_uses_the_image_output_options_and_metadata_names_the_pushed_manifest() {
    let Some(k) = Kiln::new("push_uses_the_image_output_options_and_metadata_names_the_pushed")
    else {
        return;
    };
    let ctx = context(&k);
    let name = format!("{}/kiln-test/{}:1", k.registry, k.unique("zstd"));
    let meta = k.dir().join("meta.json");
    k.build(
        &ctx,
        &[
            "-t",
            &name,
            "--push",
            "-o",
            "type=image,compression=zstd,annotation.org.example.note=hi",
            "--metadata-file",
            meta.to_str().unwrap(),
        ],
    )
    .ok();
    let meta: Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
    let digest = meta["containerimage.digest"].as_str().unwrap();
    let (status, body) = crate::support::http_get(
        &k.registry,
        &format!("/v2/{}/manifests/1", repo_of(&name)),
        &[("Accept", kiln_oci::media_type::OCI_MANIFEST)],
        std::time::Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(kiln_oci::sha256(body.as_bytes()).to_string(), digest);
    assert_eq!(
        meta["containerimage.descriptor"]["size"].as_u64(),
        Some(body.len() as u64)
    );
    let pushed: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(pushed["mediaType"], kiln_oci::media_type::OCI_MANIFEST);
    assert_eq!(pushed["annotations"]["org.example.note"], "hi");
    let types: Vec<&str> = pushed["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["mediaType"].as_str().unwrap())
        .collect();
    // busybox's pulled gzip layer is kept (no force-compression); the built ones are zstd.
    assert_eq!(
        types,
        [
            kiln_oci::media_type::OCI_LAYER_GZIP,
            kiln_oci::media_type::OCI_LAYER_ZSTD,
            kiln_oci::media_type::OCI_LAYER_ZSTD
        ]
    );
    // The stored image carries the annotation too, its layers still plain.
    let local = local_manifest(&k, &name);
    assert_eq!(local["annotations"]["org.example.note"], "hi");
    assert_eq!(
        local["layers"][1]["mediaType"],
        kiln_oci::media_type::OCI_LAYER_TAR
    );
}
