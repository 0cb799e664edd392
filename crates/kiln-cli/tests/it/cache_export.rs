//! `--cache-to type=registry` / `--cache-from type=registry` against the test registry: a cache
//! written from one data root makes every step CACHED on an empty one, downloads no layer the
//! result does not need, and gives the same image; an unreachable cache is a warning.

use std::time::Duration;

use serde_json::Value;

use crate::support::{Kiln, http_get, read_tar};

pub(crate) const DOCKERFILE: &str =
    "FROM busybox\nCOPY a /a\nRUN echo built > /b && cat /a >> /b\n";

/// The manifest at `repo:tag` in the test registry.
pub(crate) fn registry_manifest(registry: &str, repo: &str, tag: &str) -> Value {
    let (status, body) = http_get(
        registry,
        &format!("/v2/{repo}/manifests/{tag}"),
        &[("Accept", "application/vnd.oci.image.manifest.v1+json")],
        Duration::from_secs(10),
    )
    .expect("fetching the cache manifest");
    assert_eq!(status, 200, "{repo}:{tag}: {body}");
    serde_json::from_str(&body).expect("manifest JSON")
}

/// The digest of the one manifest an OCI archive's index.json names.
pub(crate) fn archived_manifest(path: &std::path::Path) -> String {
    let files = read_tar(path).expect("reading the OCI archive");
    let index: Value = serde_json::from_slice(&files["index.json"]).expect("index.json");
    index["manifests"][0]["digest"]
        .as_str()
        .expect("a manifest digest")
        .to_string()
}

pub(crate) fn blob_in_store(k: &Kiln, digest: &str) -> bool {
    let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
    k.root.join("content/blobs/sha256").join(hex).exists()
}

#[test]
fn registry_cache_makes_every_step_cached_on_an_empty_root() {
    let Some(a) = Kiln::new("registry_cache_makes_every_step_cached_on_an_empty_root") else {
        return;
    };
    let repo = a.unique("kiln-cache-it");
    let cache = format!("{}/{repo}:max", a.registry);
    let ctx = a.context(
        "ctx",
        &[("Dockerfile", DOCKERFILE), ("a", "from the context\n")],
    );
    let epoch = "--build-arg=SOURCE_DATE_EPOCH=1700000000";
    let a_tar = a.dir().join("a.tar");
    let run = a
        .build(
            &ctx,
            &[
                epoch,
                "--cache-to",
                &format!("type=registry,ref={cache},mode=max"),
                "-o",
                &format!("type=oci,dest={}", a_tar.display()),
            ],
        )
        .ok();
    assert_eq!(run.progress().rebuilt().len(), 3, "{}", run.stderr);
    assert!(run.stderr.contains("exporting cache to registry"));

    // kiln's cache manifest: an OCI image manifest, kiln's config, one layer per blob.
    let manifest = registry_manifest(&a.registry, &repo, "max");
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.kiln.cache.config.v1+json"
    );
    let layers: Vec<String> = manifest["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l["digest"].as_str().expect("digest").to_string())
        .collect();
    assert_eq!(layers.len(), 3, "busybox, COPY and RUN: {manifest}");
    for l in manifest["layers"].as_array().unwrap() {
        let mt = l["mediaType"].as_str().unwrap();
        assert!(mt.ends_with("gzip"), "gzip by default, as BuildKit: {mt}");
    }

    // An empty data root, cache only: every step CACHED, no layer blob downloaded.
    let b = Kiln::new("registry_cache_makes_every_step_cached_on_an_empty_root (b)").unwrap();
    let from = format!("type=registry,ref={cache}");
    let run = b
        .build(
            &ctx,
            &[epoch, "--cache-from", &from, "-o", "type=cacheonly"],
        )
        .ok();
    let progress = run.progress();
    assert_eq!(progress.steps().len(), 3, "{}", run.stderr);
    assert!(progress.rebuilt().is_empty(), "{}", run.stderr);
    assert!(
        run.stderr
            .contains(&format!("importing cache manifest from {cache}"))
    );
    for layer in &layers {
        assert!(!blob_in_store(&b, layer), "{layer} was downloaded");
    }
    // The records hit are kept: the next build on that root needs no --cache-from.
    let run = b.build(&ctx, &[epoch, "-o", "type=cacheonly"]).ok();
    assert!(run.progress().rebuilt().is_empty(), "{}", run.stderr);

    // Another empty root exporting the image: still all CACHED, and the same image as A's.
    let c = Kiln::new("registry_cache_makes_every_step_cached_on_an_empty_root (c)").unwrap();
    let c_tar = c.dir().join("c.tar");
    let run = c
        .build(
            &ctx,
            &[
                epoch,
                "--cache-from",
                "type=registry,ref=127.0.0.1:1/nowhere:x",
                "--cache-from",
                &from,
                "-o",
                &format!("type=oci,dest={}", c_tar.display()),
            ],
        )
        .ok();
    assert!(run.progress().rebuilt().is_empty(), "{}", run.stderr);
    assert_eq!(archived_manifest(&c_tar), archived_manifest(&a_tar));

    // Exporting the unchanged cache again uploads nothing: the manifest stays the same.
    let run = a
        .build(
            &ctx,
            &[
                epoch,
                "--cache-to",
                &format!("type=registry,ref={cache},mode=max"),
            ],
        )
        .ok();
    assert!(!run.stderr.contains("writing layer"), "{}", run.stderr);
    assert_eq!(registry_manifest(&a.registry, &repo, "max"), manifest);
}

#[test]
fn mode_min_keeps_only_the_final_stage() {
    let Some(k) = Kiln::new("mode_min_keeps_only_the_final_stage") else {
        return;
    };
    let repo = k.unique("kiln-cache-min");
    let ctx = k.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM busybox AS tools\nRUN echo tool > /tool\n\
             FROM busybox\nCOPY --from=tools /tool /tool\n",
        )],
    );
    for mode in ["min", "max"] {
        k.build(
            &ctx,
            &[
                "--cache-to",
                &format!("type=registry,ref={}/{repo}:{mode},mode={mode}", k.registry),
            ],
        )
        .ok();
    }
    let count = |tag| {
        registry_manifest(&k.registry, &repo, tag)["layers"]
            .as_array()
            .expect("layers")
            .len()
    };
    // min: busybox and the COPY's layer; max also the tools stage's RUN layer.
    assert_eq!(count("min"), 2);
    assert_eq!(count("max"), 3);
}

#[test]
fn unreachable_cache_is_a_warning_unless_ignore_error_is_false() {
    let Some(k) = Kiln::new("unreachable_cache_is_a_warning_unless_ignore_error_is_false") else {
        return;
    };
    let ctx = k.context("ctx", &[("Dockerfile", "FROM busybox\nRUN echo x > /x\n")]);
    let nowhere = "127.0.0.1:1/kiln-nowhere:x";
    let run = k
        .build(
            &ctx,
            &[
                "--cache-from",
                nowhere,
                "--cache-to",
                &format!("type=registry,ref={nowhere}"),
            ],
        )
        .ok();
    assert!(
        run.stderr
            .contains(&format!("failed to import cache from {nowhere}")),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains(&format!("failed to export cache to {nowhere}")),
        "{}",
        run.stderr
    );
    let run = k
        .build(
            &ctx,
            &[
                "--cache-to",
                &format!("type=registry,ref={nowhere},ignore-error=false"),
            ],
        )
        .failed();
    assert!(run.stderr.contains("failed to push blob"), "{}", run.stderr);
}

/// The files of a layout's `blobs/sha256`, by name.
fn layout_blobs(dir: &std::path::Path) -> std::collections::BTreeSet<String> {
    std::fs::read_dir(dir.join("blobs/sha256"))
        .expect("listing the layout's blobs")
        .map(|e| {
            e.expect("a dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

/// The `latest` manifest of a layout, and its digest.
pub(crate) fn layout_manifest(dir: &std::path::Path) -> (String, Value) {
    let index: Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).expect("index.json"))
            .expect("index JSON");
    let entries = index["manifests"].as_array().expect("manifests");
    assert_eq!(entries.len(), 1, "{index}");
    assert_eq!(
        entries[0]["annotations"]["org.opencontainers.image.ref.name"],
        "latest"
    );
    let digest = entries[0]["digest"].as_str().expect("digest").to_string();
    let hex = digest.strip_prefix("sha256:").expect("sha256");
    let manifest = serde_json::from_slice(
        &std::fs::read(dir.join("blobs/sha256").join(hex)).expect("manifest blob"),
    )
    .expect("manifest JSON");
    (digest, manifest)
}

#[test]
fn local_cache_round_trip_pins_and_removes_old_blobs() {
    let Some(a) = Kiln::new("local_cache_round_trip_pins_and_removes_old_blobs") else {
        return;
    };
    let dir = a.dir().join("layout");
    let ctx = a.context("ctx", &[("Dockerfile", DOCKERFILE), ("a", "one\n")]);
    let epoch = "--build-arg=SOURCE_DATE_EPOCH=1700000000";
    let to = format!("type=local,dest={},mode=max", dir.display());
    let from = format!("type=local,src={}", dir.display());
    let a_tar = a.dir().join("a.tar");
    let run = a
        .build(
            &ctx,
            &[
                epoch,
                "--cache-to",
                &to,
                "-o",
                &format!("type=oci,dest={}", a_tar.display()),
            ],
        )
        .ok();
    assert!(run.stderr.contains("exporting cache to client directory"));
    assert!(dir.join("oci-layout").is_file());
    let (first, manifest) = layout_manifest(&dir);
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.kiln.cache.config.v1+json"
    );
    let layers: Vec<String> = manifest["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l["digest"].as_str().expect("digest").to_string())
        .collect();
    assert_eq!(layers.len(), 3, "{manifest}");
    assert_eq!(layout_blobs(&dir).len(), 5, "3 layers, config, manifest");

    // An empty root: every step CACHED and no layer copied out of the directory.
    let b = Kiln::new("local_cache_round_trip_pins_and_removes_old_blobs (b)").unwrap();
    let run = b
        .build(
            &ctx,
            &[epoch, "--cache-from", &from, "-o", "type=cacheonly"],
        )
        .ok();
    assert_eq!(run.progress().steps().len(), 3, "{}", run.stderr);
    assert!(run.progress().rebuilt().is_empty(), "{}", run.stderr);
    for layer in &layers {
        assert!(!blob_in_store(&b, layer), "{layer} was copied");
    }
    // Another exports the image: the same one as A's.
    let c = Kiln::new("local_cache_round_trip_pins_and_removes_old_blobs (c)").unwrap();
    let c_tar = c.dir().join("c.tar");
    let run = c
        .build(
            &ctx,
            &[
                epoch,
                "--cache-from",
                &from,
                "-o",
                &format!("type=oci,dest={}", c_tar.display()),
            ],
        )
        .ok();
    assert!(run.progress().rebuilt().is_empty(), "{}", run.stderr);
    assert_eq!(archived_manifest(&c_tar), archived_manifest(&a_tar));

    // A change reruns COPY and RUN; re-exporting replaces their blobs, the old ones go.
    std::fs::write(ctx.join("a"), "two\n").unwrap();
    a.build(&ctx, &[epoch, "--cache-to", &to]).ok();
    let (second, manifest) = layout_manifest(&dir);
    assert_ne!(first, second);
    let blobs = layout_blobs(&dir);
    assert_eq!(blobs.len(), 5, "old blobs removed: {blobs:?}");
    assert!(!blobs.contains(first.strip_prefix("sha256:").unwrap()));
    let new_layers = manifest["layers"].as_array().expect("layers");
    for l in new_layers {
        let hex = l["digest"]
            .as_str()
            .unwrap()
            .strip_prefix("sha256:")
            .unwrap();
        assert!(blobs.contains(hex), "{hex} missing");
    }

    // `digest=` pins a manifest: the current one hits, a removed one is a warning.
    let d = Kiln::new("local_cache_round_trip_pins_and_removes_old_blobs (d)").unwrap();
    let pinned = format!("{from},digest={second}");
    let run = d
        .build(
            &ctx,
            &[epoch, "--cache-from", &pinned, "-o", "type=cacheonly"],
        )
        .ok();
    assert!(run.progress().rebuilt().is_empty(), "{}", run.stderr);
    let gone = format!("{from},digest={first}");
    let run = d
        .build(
            &ctx,
            &[epoch, "--cache-from", &gone, "-o", "type=cacheonly"],
        )
        .ok();
    assert!(
        run.stderr.contains("failed to import cache from local:"),
        "{}",
        run.stderr
    );
}

#[test]
fn inline_cache_travels_in_the_pushed_image() {
    let Some(a) = Kiln::new("inline_cache_travels_in_the_pushed_image") else {
        return;
    };
    let repo = a.unique("kiln-inline-it");
    let image = format!("{}/{repo}:1", a.registry);
    let ctx = a.context("ctx", &[("Dockerfile", DOCKERFILE), ("a", "inline\n")]);
    let epoch = "--build-arg=SOURCE_DATE_EPOCH=1700000000";
    a.build(
        &ctx,
        &[epoch, "--cache-to", "type=inline", "-t", &image, "--push"],
    )
    .ok();
    let manifest = registry_manifest(&a.registry, &repo, "1");
    let config_digest = manifest["config"]["digest"]
        .as_str()
        .expect("config digest");
    let (status, body) = http_get(
        &a.registry,
        &format!("/v2/{repo}/blobs/{config_digest}"),
        &[],
        Duration::from_secs(10),
    )
    .expect("fetching the config");
    assert_eq!(status, 200);
    let config: Value = serde_json::from_str(&body).expect("config JSON");
    let records = config["kiln.cache.v1"]["records"]
        .as_object()
        .expect("inline records in the config");
    let mut lengths: Vec<u64> = records.values().map(|n| n.as_u64().unwrap()).collect();
    lengths.sort();
    assert_eq!(lengths, vec![1, 2, 3], "FROM, COPY and RUN: {records:?}");

    // An empty root using the image as its cache: all CACHED, no layer pulled.
    let b = Kiln::new("inline_cache_travels_in_the_pushed_image (b)").unwrap();
    let run = b
        .build(
            &ctx,
            &[epoch, "--cache-from", &image, "-o", "type=cacheonly"],
        )
        .ok();
    assert_eq!(run.progress().steps().len(), 3, "{}", run.stderr);
    assert!(run.progress().rebuilt().is_empty(), "{}", run.stderr);
    let layers: Vec<&str> = manifest["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l["digest"].as_str().expect("digest"))
        .collect();
    for layer in &layers {
        assert!(!blob_in_store(&b, layer), "{layer} was downloaded");
    }
    // Exporting the image pulls the layers from it: the same blobs as pushed.
    let c = Kiln::new("inline_cache_travels_in_the_pushed_image (c)").unwrap();
    let c_tar = c.dir().join("c.tar");
    let run = c
        .build(
            &ctx,
            &[
                epoch,
                "--cache-from",
                &image,
                "-o",
                &format!("type=oci,dest={}", c_tar.display()),
            ],
        )
        .ok();
    assert!(run.progress().rebuilt().is_empty(), "{}", run.stderr);
    let files = read_tar(&c_tar).expect("reading the archive");
    let hex = archived_manifest(&c_tar);
    let archived: Value = serde_json::from_slice(
        &files[&format!("blobs/sha256/{}", hex.strip_prefix("sha256:").unwrap())],
    )
    .expect("manifest JSON");
    let archived_layers: Vec<&str> = archived["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l["digest"].as_str().expect("digest"))
        .collect();
    assert_eq!(archived_layers, layers);

    // --squash changes the layers the records describe: refused by name, not ignored.
    let run = a
        .build(&ctx, &[epoch, "--cache-to", "type=inline", "--squash"])
        .failed();
    assert!(run.stderr.contains("not supported yet"), "{}", run.stderr);
}

#[test]
fn zstd_local_cache_round_trips() {
    let Some(a) = Kiln::new("zstd_local_cache_round_trips") else {
        return;
    };
    let dir = a.dir().join("layout");
    let ctx = a.context("ctx", &[("Dockerfile", DOCKERFILE), ("a", "zstd\n")]);
    let to = format!("type=local,dest={},compression=zstd", dir.display());
    a.build(&ctx, &["--cache-to", &to]).ok();
    let (_, manifest) = layout_manifest(&dir);
    let types: Vec<&str> = manifest["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l["mediaType"].as_str().expect("media type"))
        .collect();
    // The build's two layers in zstd; busybox's stays gzip (no force-compression).
    assert_eq!(
        types
            .iter()
            .filter(|t| **t == "application/vnd.oci.image.layer.v1.tar+zstd")
            .count(),
        2,
        "{types:?}"
    );
    assert_eq!(types.iter().filter(|t| t.ends_with("gzip")).count(), 1);

    // An empty root: CACHED, and a later step unpacks the zstd layers it needs.
    let b = Kiln::new("zstd_local_cache_round_trips (b)").unwrap();
    let longer = b.context(
        "longer",
        &[
            ("Dockerfile", &format!("{DOCKERFILE}RUN cat /b > /c\n")),
            ("a", "zstd\n"),
        ],
    );
    let from = format!("type=local,src={}", dir.display());
    let run = b.build(&longer, &["--cache-from", &from]).ok();
    assert_eq!(
        run.progress().rebuilt(),
        vec!["[4/4] RUN cat /b > /c"],
        "{}",
        run.stderr
    );
}
