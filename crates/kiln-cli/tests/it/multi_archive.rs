//! Docker's archive of a multi-platform image (`-o type=docker,dest=`, `kiln save`). BuildKit
//! v0.32.2 refuses it ("docker exporter does not currently support exporting manifest lists");
//! kiln writes what `docker save` writes for one since Docker 25 (containerd image store): an
//! OCI layout whose index.json names the index (every platform's blobs are there), plus a
//! manifest.json listing this machine's image, which is all Docker 20.10's loader reads.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use crate::export_oci::blob;
use crate::multi_platform::{image_files, kiln_for, platform_of};
use crate::support::{PrivateDockerd, dockerd_for, read_tar};

const DOCKERFILE: &str = "FROM busybox:multi\nRUN uname -m > /arch\n";

/// Checks a docker archive of the two-platform image `tag`: the index in index.json under the
/// name, each platform's files, and manifest.json listing the amd64 image under the tag.
fn check_archive(path: &Path, tag: &str) {
    let files: BTreeMap<String, Vec<u8>> = read_tar(path).unwrap();
    assert_eq!(files["oci-layout"], br#"{"imageLayoutVersion":"1.0.0"}"#);
    let top: Value = serde_json::from_slice(&files["index.json"]).unwrap();
    let descs = top["manifests"].as_array().unwrap();
    assert_eq!(descs.len(), 1, "{top}");
    let desc = &descs[0];
    assert_eq!(desc["mediaType"], "application/vnd.oci.image.index.v1+json");
    assert_eq!(
        desc["annotations"]["io.containerd.image.name"],
        format!("docker.io/library/{tag}:latest")
    );
    assert_eq!(
        desc["annotations"]["org.opencontainers.image.ref.name"],
        "latest"
    );
    let index: Value = serde_json::from_slice(blob(&files, desc)).unwrap();
    let mut amd64 = None;
    let mut platforms = Vec::new();
    for entry in index["manifests"].as_array().unwrap() {
        let platform = platform_of(entry);
        let manifest: Value = serde_json::from_slice(blob(&files, entry)).unwrap();
        let tree = image_files(&files, &manifest);
        let arch = if platform == "linux/amd64" {
            "x86_64\n"
        } else {
            "aarch64\n"
        };
        assert_eq!(String::from_utf8_lossy(&tree["arch"]), arch, "{platform}");
        if platform == "linux/amd64" {
            amd64 = Some(manifest);
        }
        platforms.push(platform);
    }
    assert_eq!(platforms, ["linux/amd64", "linux/arm64"]);

    // Docker's older loader: one entry, this machine's image, named by the tag.
    let amd64 = amd64.unwrap();
    let listed: Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
    let entries = listed.as_array().unwrap();
    assert_eq!(entries.len(), 1, "{listed}");
    let entry = &entries[0];
    assert_eq!(
        entry["RepoTags"],
        serde_json::json!([format!("{tag}:latest")])
    );
    let config_hex = amd64["config"]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:");
    assert_eq!(entry["Config"], format!("{config_hex}.json"));
    assert_eq!(
        &files[&format!("{config_hex}.json")][..],
        blob(&files, &amd64["config"])
    );
    let layers: Vec<String> = amd64["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            format!(
                "blobs/sha256/{}",
                l["digest"].as_str().unwrap().trim_start_matches("sha256:")
            )
        })
        .collect();
    assert_eq!(entry["Layers"], serde_json::json!(layers));
}

#[test]
fn docker_archive_of_several_platforms_as_docker_saves_one() {
    const TEST: &str = "docker_archive_of_several_platforms_as_docker_saves_one";
    let Some(k) = kiln_for(TEST) else {
        return;
    };
    let ctx = k.context("ctx", &[("Dockerfile", DOCKERFILE)]);
    let built_tag = k.unique("multi-docker");
    let built = k.dir().join("built.tar");
    k.build(
        &ctx,
        &[
            "--platform",
            "linux/amd64,linux/arm64",
            "-t",
            &built_tag,
            "-o",
            &format!("type=docker,dest={}", built.display()),
        ],
    )
    .ok();
    check_archive(&built, &built_tag);

    // `kiln save` of the index the store keeps writes the same shape.
    let stored_tag = k.unique("multi-saved");
    k.build(
        &ctx,
        &["--platform", "linux/amd64,linux/arm64", "-t", &stored_tag],
    )
    .ok();
    let saved = k.dir().join("saved.tar");
    k.kiln(&["save", "-o", &saved.to_string_lossy(), &stored_tag])
        .ok();
    check_archive(&saved, &stored_tag);

    // kiln loads the whole index back (every platform's image is in the archive), as a
    // containerd-store Docker does.
    let fresh = kiln_for(&format!("{TEST}_load")).unwrap();
    let loaded = fresh
        .kiln(&["load", "-i", &saved.to_string_lossy()])
        .ok()
        .stdout;
    assert_eq!(loaded, format!("Loaded image: {stored_tag}:latest\n"));
    let tree = fresh.kiln(&["images", "--tree"]).ok().stdout;
    assert!(tree.contains("├─ linux/amd64 "), "{tree}");
    assert!(tree.contains("└─ linux/arm64 "), "{tree}");
    for (platform, arch) in [("linux/amd64", "x86_64\n"), ("linux/arm64", "aarch64\n")] {
        let out = fresh
            .kiln(&[
                "run",
                "--rm",
                "--platform",
                platform,
                &stored_tag,
                "cat",
                "/arch",
            ])
            .ok()
            .stdout;
        assert_eq!(out, arch, "{platform}");
    }
    fresh.assert_clean();

    // Docker 20.10 reads manifest.json: it loads this machine's image under the tag.
    let Some(dockerd) = dockerd_for(TEST) else {
        return;
    };
    let docker = PrivateDockerd::start(&dockerd);
    for (archive, tag) in [(&built, &built_tag), (&saved, &stored_tag)] {
        let out = docker
            .daemon
            .run(&["load", "-i", &archive.to_string_lossy()])
            .unwrap();
        assert!(
            out.contains(&format!("Loaded image: {tag}:latest")),
            "{out}"
        );
        let arch = docker
            .daemon
            .run(&["run", "--rm", "--network", "none", tag, "cat", "/arch"])
            .unwrap();
        assert_eq!(arch, "x86_64\n");
        let inspected = docker
            .daemon
            .run(&["image", "inspect", "-f", "{{.Os}}/{{.Architecture}}", tag])
            .unwrap();
        assert_eq!(inspected, "linux/amd64\n");
    }
    k.assert_clean();
}
