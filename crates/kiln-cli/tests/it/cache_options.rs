//! Cache manifest options: `oci-mediatypes=false` (Docker media types, in BuildKit's index
//! form), `image-manifest=false` (that index form with OCI types), the refused combination,
//! and `tag=` of a local cache; each written form imports into an empty root as all CACHED.

use std::time::Duration;

use serde_json::Value;

use crate::cache_export::DOCKERFILE;
use crate::support::{Kiln, http_get};

/// Whatever manifest or index is at `repo:tag`.
fn any_manifest(registry: &str, repo: &str, tag: &str) -> Value {
    let accept = "application/vnd.oci.image.manifest.v1+json, \
                  application/vnd.oci.image.index.v1+json, \
                  application/vnd.docker.distribution.manifest.list.v2+json";
    let (status, body) = http_get(
        registry,
        &format!("/v2/{repo}/manifests/{tag}"),
        &[("Accept", accept)],
        Duration::from_secs(10),
    )
    .expect("fetching the cache manifest");
    assert_eq!(status, 200, "{repo}:{tag}: {body}");
    serde_json::from_str(&body).expect("manifest JSON")
}

#[test]
fn docker_media_types_and_the_index_form_round_trip() {
    let Some(a) = Kiln::new("docker_media_types_and_the_index_form_round_trip") else {
        return;
    };
    let repo = a.unique("kiln-cache-forms");
    let ctx = a.context("ctx", &[("Dockerfile", DOCKERFILE), ("a", "forms\n")]);
    let cases = [
        (
            "docker",
            "oci-mediatypes=false",
            "application/vnd.docker.distribution.manifest.list.v2+json",
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
        ),
        (
            "index",
            "image-manifest=false",
            "application/vnd.oci.image.index.v1+json",
            "application/vnd.oci.image.layer.v1.tar+gzip",
        ),
    ];
    for (tag, option, list_type, layer_type) in cases {
        let cache = format!("{}/{repo}:{tag}", a.registry);
        a.build(
            &ctx,
            &[
                "--cache-to",
                &format!("type=registry,ref={cache},mode=max,{option}"),
            ],
        )
        .ok();
        // As BuildKit writes it: the blobs, then kiln's config, as the entries of a list.
        let doc = any_manifest(&a.registry, &repo, tag);
        assert_eq!(doc["mediaType"], list_type, "{doc}");
        let entries = doc["manifests"].as_array().expect("entries");
        assert_eq!(entries.len(), 4, "3 layers and the config: {doc}");
        for l in &entries[..3] {
            assert_eq!(l["mediaType"], layer_type, "{doc}");
        }
        assert_eq!(
            entries[3]["mediaType"],
            "application/vnd.kiln.cache.config.v1+json"
        );

        let b = Kiln::new(&format!("docker_media_types... ({tag})")).unwrap();
        let run = b
            .build(&ctx, &["--cache-from", &cache, "-o", "type=cacheonly"])
            .ok();
        assert_eq!(run.progress().steps().len(), 3, "{}", run.stderr);
        assert!(run.progress().rebuilt().is_empty(), "{}", run.stderr);
    }

    // An image manifest has OCI types only: BuildKit's refusal, in its words.
    let run = a
        .build(
            &ctx,
            &[
                "--cache-to",
                &format!(
                    "type=registry,ref={}/{repo}:x,oci-mediatypes=false,image-manifest=true",
                    a.registry
                ),
            ],
        )
        .failed();
    assert!(
        run.stderr
            .contains("OCI mediatypes are required for image-manifest cache format"),
        "{}",
        run.stderr
    );
}

#[test]
fn local_cache_tags_name_index_entries() {
    let Some(a) = Kiln::new("local_cache_tags_name_index_entries") else {
        return;
    };
    let dir = a.dir().join("layout");
    let ctx = a.context("ctx", &[("Dockerfile", DOCKERFILE), ("a", "one\n")]);
    a.build(
        &ctx,
        &["--cache-to", &format!("type=local,dest={}", dir.display())],
    )
    .ok();
    // Another build's cache under its own tag, beside `latest`.
    let other = a.context("other", &[("Dockerfile", DOCKERFILE), ("a", "two\n")]);
    let to = format!("type=local,dest={},tag=ci-2,mode=max", dir.display());
    a.build(&other, &["--cache-to", &to]).ok();
    let index: Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).expect("index.json"))
            .expect("index JSON");
    let mut names: Vec<&str> = index["manifests"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            e["annotations"]["org.opencontainers.image.ref.name"]
                .as_str()
                .expect("a name")
        })
        .collect();
    names.sort();
    assert_eq!(names, ["ci-2", "latest"], "{index}");

    // `tag=` picks the entry: `ci-2` holds the second build's records, `latest` does not.
    let b = Kiln::new("local_cache_tags_name_index_entries (b)").unwrap();
    let from = |tag: &str| format!("type=local,src={},tag={tag}", dir.display());
    let run = b
        .build(
            &other,
            &["--cache-from", &from("ci-2"), "-o", "type=cacheonly"],
        )
        .ok();
    assert!(run.progress().rebuilt().is_empty(), "{}", run.stderr);
    let c = Kiln::new("local_cache_tags_name_index_entries (c)").unwrap();
    let run = c
        .build(
            &other,
            &["--cache-from", &from("latest"), "-o", "type=cacheonly"],
        )
        .ok();
    assert_eq!(
        run.progress().rebuilt().len(),
        2,
        "COPY and RUN: {}",
        run.stderr
    );
    let run = c
        .build(
            &other,
            &["--cache-from", &from("nope"), "-o", "type=cacheonly"],
        )
        .ok();
    assert!(
        run.stderr.contains("has no entry tagged `nope`"),
        "{}",
        run.stderr
    );
}
