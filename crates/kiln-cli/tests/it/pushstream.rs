//! A push compresses new layers while it uploads them (one streamed PATCH per layer, closed by
//! a PUT once the digest is known), through a fault-injecting proxy in front of the registry:
//! the streamed blob is the one a plain export makes, and a connection dropped mid-PATCH still
//! ends in a complete push.

use std::time::Duration;

use kiln_test::{Fault, FaultProxy};
use serde_json::Value;

use crate::export_oci::layout_image;
use crate::support::{Kiln, http_get, read_tar};

const EPOCH: &str = "1700000000";

/// One built layer of a few MiB that compresses (several gzip members).
const DOCKERFILE: &str =
    "FROM busybox\nRUN seq 1 400000 > /seq && head -c 3000000 /dev/zero | tr '\\0' k > /k\n";

/// Random data, so the compressed layer outgrows what the proxy reads before it drops.
const RANDOM_DOCKERFILE: &str = "FROM busybox\nRUN head -c 2000000 /dev/urandom > /r\n";

/// A proxy in front of the test registry, and `k`'s config allowing plain HTTP to it.
fn proxy_for(k: &Kiln) -> FaultProxy {
    let proxy = FaultProxy::start(&k.registry).unwrap();
    let mut config = std::fs::read_to_string(&k.config).unwrap();
    config.push_str(&format!("\n[registry.\"{}\"]\nhttp = true\n", proxy.host));
    std::fs::write(&k.config, config).unwrap();
    proxy
}

/// The manifest under `repo:tag` in the registry, and that every blob it lists is there.
fn pushed_manifest(registry: &str, repo: &str, tag: &str) -> Value {
    let accept = format!(
        "{}, {}",
        kiln_oci::media_type::DOCKER_MANIFEST,
        kiln_oci::media_type::OCI_MANIFEST
    );
    let (status, body) = http_get(
        registry,
        &format!("/v2/{repo}/manifests/{tag}"),
        &[("Accept", &accept)],
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let manifest: Value = serde_json::from_str(&body).unwrap();
    let mut digests = vec![manifest["config"]["digest"].as_str().unwrap()];
    digests.extend(
        manifest["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap()),
    );
    for d in digests {
        let (status, _) = http_get(
            registry,
            &format!("/v2/{repo}/blobs/{d}"),
            &[],
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(status, 200, "blob {d} of {manifest}");
    }
    manifest
}

/// `kiln build --output SPEC CONTEXT` at `SOURCE_DATE_EPOCH=EPOCH`; fails the test unless it
/// succeeds.
fn build_at_epoch(k: &Kiln, spec: &str, ctx: &std::path::Path) -> crate::support::Run {
    let mut cmd = k.command(&["build", "--progress", "plain", "--output", spec]);
    cmd.env("SOURCE_DATE_EPOCH", EPOCH).arg(ctx);
    k.run(cmd).ok()
}

#[test]
fn streamed_push_uploads_the_layer_an_export_makes() {
    let Some(a) = Kiln::new("streamed_push_uploads_the_layer_an_export_makes_a") else {
        return;
    };
    let Some(b) = Kiln::new("streamed_push_uploads_the_layer_an_export_makes_b") else {
        return;
    };
    let proxy = proxy_for(&a);
    let repo = format!("kiln-test/{}", a.unique("pushstream"));
    let name = format!("{}/{repo}:1", proxy.host);

    // Pushed from a build: the new layer is compressed while it goes up.
    let ctx_a = a.context("ctx", &[("Dockerfile", DOCKERFILE)]);
    let push_spec = format!("type=registry,name={name},rewrite-timestamp=true");
    let stderr = build_at_epoch(&a, &push_spec, &ctx_a).stderr;
    a.assert_clean();
    let pushed = pushed_manifest(&a.registry, &repo, "1");
    let layer = pushed["layers"][1]["digest"].as_str().unwrap().to_string();
    assert_eq!(
        pushed["layers"][1]["mediaType"],
        kiln_oci::media_type::OCI_LAYER_GZIP
    );
    assert!(stderr.contains(&format!("{layer}: pushed")), "{stderr}");
    let log = proxy.log();
    // The build's layer is a new blob: streamed, without a HEAD (the digest was not known
    // yet), in one PATCH closed by a PUT. busybox's stays as pulled (rewrite-timestamp leaves
    // the base image's layers alone, as BuildKit does), so it is no new blob.
    let base = pushed_manifest(&a.registry, "library/busybox", "latest");
    assert_eq!(pushed["layers"][0]["digest"], base["layers"][0]["digest"]);
    for l in &pushed["layers"].as_array().unwrap()[1..] {
        let digest = l["digest"].as_str().unwrap();
        assert!(
            !log.iter()
                .any(|l| l.starts_with("HEAD ") && l.contains(digest)),
            "{log:#?}"
        );
        assert!(
            log.iter()
                .any(|l| l.starts_with("PUT ") && l.contains(&digest.replace(':', "%3A"))),
            "{log:#?}"
        );
    }
    assert_eq!(
        log.iter().filter(|l| l.starts_with("PATCH ")).count(),
        1,
        "{log:#?}"
    );

    // The same build exported to an OCI archive in another data directory, compressed the
    // usual way before it is written: the same layer blob.
    let ctx = b.context("ctx", &[("Dockerfile", DOCKERFILE)]);
    let dest = b.dir().join("image.tar");
    let spec = format!("type=oci,rewrite-timestamp=true,dest={}", dest.display());
    build_at_epoch(&b, &spec, &ctx);
    let (exported, _) = layout_image(&read_tar(&dest).unwrap());
    for i in 0..2 {
        assert_eq!(
            exported["layers"][i]["digest"],
            pushed["layers"][i]["digest"]
        );
        assert_eq!(exported["layers"][i]["size"], pushed["layers"][i]["size"]);
    }

    // Recorded like an export's blobs: the same build and push again (cached) compresses
    // and uploads nothing.
    proxy.clear_log();
    let stderr = build_at_epoch(&a, &push_spec, &ctx_a).stderr;
    assert!(!stderr.contains(": pushed"), "{stderr}");
    let log = proxy.log();
    assert!(!log.iter().any(|l| l.starts_with("PATCH ")), "{log:#?}");
}

#[test]
fn streamed_push_survives_a_connection_dropped_mid_patch() {
    let Some(k) = Kiln::new("streamed_push_survives_a_connection_dropped_mid_patch") else {
        return;
    };
    let proxy = proxy_for(&k);
    let repo = format!("kiln-test/{}", k.unique("pushstream-drop"));
    let name = format!("{}/{repo}:1", proxy.host);
    let ctx = k.context("ctx", &[("Dockerfile", RANDOM_DOCKERFILE)]);
    k.build(&ctx, &["-t", &name]).ok();

    // The streamed PATCH loses its connection after 256 KiB of its body.
    proxy.fail("PATCH", "/blobs/uploads/", 0, 1, Fault::Drop);
    let first = k.kiln(&["push", &name]).ok();
    let log = proxy.log();
    assert!(
        log.iter()
            .any(|l| l.starts_with("PATCH ") && l.ends_with("!drop")),
        "{log:#?}"
    );
    let pushed = pushed_manifest(&k.registry, &repo, "1");
    let layer = pushed["layers"][1]["digest"].as_str().unwrap();
    assert!(
        first.stderr.contains(&format!("{layer}: pushed")),
        "{}",
        first.stderr
    );
    // Then uploaded again from the compressed file, after a HEAD as any upload.
    assert!(
        log.iter()
            .any(|l| l.starts_with("HEAD ") && l.contains(layer)),
        "{log:#?}"
    );

    // The compressed blob was kept and recorded: nothing goes up again.
    let again = k.kiln(&["push", &name]).ok();
    assert!(!again.stderr.contains(": pushed"), "{}", again.stderr);
    assert_eq!(again.stdout.trim(), first.stdout.trim());
}
