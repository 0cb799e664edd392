//! Inspecting a multi-platform image: `kiln inspect` as Docker's containerd image store shows
//! one (the index as Descriptor, this machine's image, each platform under Manifests, and
//! `--platform` for another), and `kiln imagetools inspect` of the pushed index as buildx
//! prints it.

use serde_json::Value;

use crate::multi_platform::kiln_for;

fn inspect(k: &crate::support::Kiln, args: &[&str]) -> Value {
    let mut all = vec!["inspect"];
    all.extend_from_slice(args);
    let out = k.kiln(&all).ok().stdout;
    let v: Value = serde_json::from_str(&out).unwrap();
    v[0].clone()
}

#[test]
fn inspect_shows_an_index_and_picks_a_platform() {
    let Some(k) = kiln_for("inspect_shows_an_index_and_picks_a_platform") else {
        return;
    };
    let ctx = k.context(
        "ctx",
        &[("Dockerfile", "FROM busybox:multi\nRUN uname -m > /arch\n")],
    );
    let tag = k.unique("multi-inspect");
    let meta = k.dir().join("meta.json");
    k.build(
        &ctx,
        &[
            "--platform",
            "linux/amd64,linux/arm64",
            "-t",
            &tag,
            "--metadata-file",
            &meta.to_string_lossy(),
        ],
    )
    .ok();
    let meta: Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();

    // The name: its index as the descriptor, this machine's image, every platform listed.
    let v = inspect(&k, &[&tag]);
    assert_eq!(
        v["Descriptor"]["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    assert_eq!(v["Descriptor"]["digest"], meta["containerimage.digest"]);
    assert_eq!(v["Architecture"], "amd64");
    let manifests = v["Manifests"].as_array().expect("Manifests");
    let platforms: Vec<&str> = manifests
        .iter()
        .map(|m| m["ImageData"]["Platform"]["architecture"].as_str().unwrap())
        .collect();
    assert_eq!(platforms, ["amd64", "arm64"]);
    for m in manifests {
        assert_eq!(m["Kind"], "image");
        assert_eq!(m["Available"], true);
        assert_eq!(m["ID"], m["Descriptor"]["digest"]);
        assert_eq!(
            m["Descriptor"]["platform"], m["ImageData"]["Platform"],
            "{m}"
        );
        assert!(m["Size"]["Content"].as_u64().unwrap() > 0, "{m}");
        assert!(m["Descriptor"]["size"].as_u64().unwrap() > 0, "{m}");
    }
    assert_ne!(manifests[0]["ID"], manifests[1]["ID"]);
    assert_eq!(v["Size"], manifests[0]["Size"]["Content"]);

    // `--platform`: that platform's image, its manifest as the descriptor.
    let arm = inspect(&k, &["--platform", "linux/arm64", &tag]);
    assert_eq!(arm["Architecture"], "arm64");
    assert_eq!(arm["Descriptor"]["digest"], manifests[1]["ID"]);
    assert_eq!(arm["Descriptor"]["platform"]["architecture"], "arm64");
    assert_eq!(arm["Size"], manifests[1]["Size"]["Content"]);
    assert!(arm.get("Manifests").is_none(), "{arm}");
    assert_ne!(arm["Id"], v["Id"]);
    let amd = inspect(&k, &["--platform", "linux/amd64", &tag]);
    assert_eq!(amd["Id"], v["Id"]);

    // A platform it lacks: an error listing those it has; nothing printed for it.
    let missing = k
        .kiln(&["inspect", "--platform", "linux/s390x", &tag])
        .failed();
    assert_eq!(missing.stdout.trim(), "[]");
    assert!(
        missing
            .stderr
            .contains("has no image for linux/s390x (it has linux/amd64, linux/arm64)"),
        "{}",
        missing.stderr
    );
    // A single-platform image answers only for its own platform.
    k.kiln(&["pull", "busybox:latest"]).ok();
    let single = inspect(&k, &["--platform", "linux/amd64", "busybox:latest"]);
    assert_eq!(single["Architecture"], "amd64");
    assert!(single.get("Manifests").is_none(), "{single}");
    let other = k
        .kiln(&["inspect", "--platform", "linux/arm64", "busybox:latest"])
        .failed();
    assert!(
        other
            .stderr
            .contains("has no image for linux/arm64 (it has linux/amd64)"),
        "{}",
        other.stderr
    );

    // Pushed, the index as `buildx imagetools inspect` prints it: each manifest by the name
    // asked (tag kept) and its platform.
    let repo = k.unique("kiln-it-multi-inspect");
    let pushed = format!("{}/{repo}:v1", k.registry);
    k.kiln(&["tag", &tag, &pushed]).ok();
    k.kiln(&["push", &pushed]).ok();
    let text = k.kiln(&["imagetools", "inspect", &pushed]).ok().stdout;
    assert!(
        text.starts_with(&format!("Name:      {pushed}\n")),
        "{text}"
    );
    assert!(
        text.contains("MediaType: application/vnd.oci.image.index.v1+json\n"),
        "{text}"
    );
    assert_eq!(
        text.matches(&format!("  Name:      {pushed}@sha256:"))
            .count(),
        2,
        "{text}"
    );
    let shown: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("  Platform:  "))
        .collect();
    assert_eq!(shown, ["linux/amd64", "linux/arm64"], "{text}");
    k.assert_clean();
}
