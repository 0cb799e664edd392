//! Caches of multi-platform builds: `--platform linux/amd64,linux/arm64 --cache-to` writes one
//! cache manifest with both platforms' records (as BuildKit v0.32.2 does: one cache image
//! manifest, 6 layers for this Dockerfile with mode=max), and an empty root importing it has
//! every step of both platforms CACHED and builds the same index; an inline cache in a pushed
//! index serves both platforms too.

use serde_json::Value;

use crate::cache_export::{archived_manifest, registry_manifest};
use crate::multi_platform::kiln_for;

/// A build-platform stage run once per target, and a per-target final stage (no emulated RUN).
const DOCKERFILE: &str = "FROM --platform=$BUILDPLATFORM busybox:multi AS build\n\
    ARG TARGETARCH\n\
    RUN echo $TARGETARCH > /note\n\
    FROM busybox:multi\n\
    COPY --from=build /note /note\n";

const PLATFORMS: &str = "--platform=linux/amd64,linux/arm64";
const EPOCH: &str = "--build-arg=SOURCE_DATE_EPOCH=1700000000";

fn layer_count(manifest: &Value) -> usize {
    manifest["layers"].as_array().expect("layers").len()
}

#[test]
fn one_cache_serves_every_platform() {
    let Some(a) = kiln_for("one_cache_serves_every_platform") else {
        return;
    };
    let repo = a.unique("kiln-cache-multi");
    let ctx = a.context("ctx", &[("Dockerfile", DOCKERFILE)]);
    let a_tar = a.dir().join("a.tar");
    let cache = |tag: &str| format!("{}/{repo}:{tag}", a.registry);
    let run = a
        .build(
            &ctx,
            &[
                PLATFORMS,
                EPOCH,
                "--cache-to",
                &format!("type=registry,ref={},mode=max", cache("max")),
                "--cache-to",
                &format!("type=registry,ref={},mode=min", cache("min")),
                "-o",
                &format!("type=oci,dest={}", a_tar.display()),
            ],
        )
        .ok();
    assert!(run.stderr.contains("exporting cache to registry"));
    // Both busybox images, both RUNs (one per target) and both COPYs; min leaves the RUNs out.
    let max = registry_manifest(&a.registry, &repo, "max");
    assert_eq!(layer_count(&max), 6, "{max}");
    assert_eq!(
        layer_count(&registry_manifest(&a.registry, &repo, "min")),
        4
    );

    // An empty root: every step of both platforms CACHED, nothing downloaded for cacheonly.
    let b = kiln_for("one_cache_serves_every_platform (b)").unwrap();
    let from = format!("type=registry,ref={}", cache("max"));
    let run = b
        .build(
            &ctx,
            &[
                PLATFORMS,
                EPOCH,
                "--cache-from",
                &from,
                "-o",
                "type=cacheonly",
            ],
        )
        .ok();
    let progress = run.progress();
    for platform in ["linux/amd64", "linux/arm64"] {
        let steps = progress
            .steps()
            .into_iter()
            .filter(|v| v.name.contains(platform))
            .count();
        assert!(steps >= 2, "{platform}: {}", run.stderr);
    }
    assert!(progress.rebuilt().is_empty(), "{}", run.stderr);

    // Another exports the index from the cache's layers: the same one as A's.
    let c = kiln_for("one_cache_serves_every_platform (c)").unwrap();
    let c_tar = c.dir().join("c.tar");
    let run = c
        .build(
            &ctx,
            &[
                PLATFORMS,
                EPOCH,
                "--cache-from",
                &from,
                "-o",
                &format!("type=oci,dest={}", c_tar.display()),
            ],
        )
        .ok();
    assert!(run.progress().rebuilt().is_empty(), "{}", run.stderr);
    assert_eq!(archived_manifest(&c_tar), archived_manifest(&a_tar));
}

#[test]
fn inline_cache_of_a_pushed_index_serves_every_platform() {
    let Some(a) = kiln_for("inline_cache_of_a_pushed_index_serves_every_platform") else {
        return;
    };
    let image = format!("{}/{}:1", a.registry, a.unique("kiln-inline-multi"));
    let ctx = a.context("ctx", &[("Dockerfile", DOCKERFILE)]);
    a.build(
        &ctx,
        &[
            PLATFORMS,
            "--cache-to",
            "type=inline",
            "-t",
            &image,
            "--push",
        ],
    )
    .ok();
    let b = kiln_for("inline_cache_of_a_pushed_index_serves_every_platform (b)").unwrap();
    let run = b
        .build(
            &ctx,
            &[PLATFORMS, "--cache-from", &image, "-o", "type=cacheonly"],
        )
        .ok();
    // Inline records hold each final chain (mode=min): the build stage's RUNs run again, the
    // final stages' COPYs then hit.
    let rebuilt = run.progress().rebuilt().join("\n");
    assert!(!rebuilt.contains("COPY"), "{}", run.stderr);
    assert!(
        run.progress()
            .steps()
            .iter()
            .filter(|v| v.name.contains("COPY") && v.cached)
            .count()
            == 2,
        "{}",
        run.stderr
    );
}
