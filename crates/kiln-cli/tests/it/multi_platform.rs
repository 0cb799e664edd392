//! `--platform linux/amd64,linux/arm64`: one graph for both platforms (the build-platform stage's
//! base shared), one image per platform under an OCI index, in an OCI archive and pushed to the
//! registry (the index last), then pulled back per platform by kiln and by a Docker engine.
//! Expected file contents were recorded from BuildKit v0.32.2 (buildctl, `--opt
//! platform=linux/amd64,linux/arm64 --output type=oci`) on the same Dockerfile; its per-platform
//! file trees are the same as kiln's.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use serde_json::Value;

use crate::export_oci::blob;
use crate::support::{
    Kiln, PrivateDockerd, dockerd_for, http_get, read_tar, registry_has, skip_because,
};

/// A cross-compiling shape: the `build` stage runs on the build platform once per target (it
/// sees TARGETARCH), the final stage per target (the arm64 one under QEMU).
const DOCKERFILE: &str = r#"FROM --platform=$BUILDPLATFORM busybox:multi AS build
ARG TARGETARCH
RUN echo "built on $(uname -m) for $TARGETARCH" > /note
FROM busybox:multi
ARG TARGETPLATFORM TARGETARCH TARGETVARIANT BUILDPLATFORM
COPY --from=build /note /note
RUN uname -m > /arch && echo "$TARGETPLATFORM $TARGETARCH $TARGETVARIANT $BUILDPLATFORM" > /args
"#;

/// What BuildKit v0.32.2 wrote in /note, /arch and /args per platform.
const EXPECTED: [(&str, [&str; 3]); 2] = [
    (
        "linux/amd64",
        [
            "built on x86_64 for amd64\n",
            "x86_64\n",
            "linux/amd64 amd64  linux/amd64\n",
        ],
    ),
    (
        "linux/arm64",
        [
            "built on x86_64 for arm64\n",
            "aarch64\n",
            "linux/arm64 arm64  linux/amd64\n",
        ],
    ),
];

/// A kiln whose registry has busybox:multi and whose machine can run arm64 through QEMU.
pub(crate) fn kiln_for(test: &str) -> Option<Kiln> {
    let k = Kiln::new(test)?;
    if std::env::consts::ARCH != "x86_64" {
        eprintln!("skipping {test}: written for an amd64 machine (arm64 is the foreign platform)");
        return None;
    }
    if !registry_has(&k.registry, "library/busybox", "multi") {
        skip_because(
            test,
            "the registry has no library/busybox:multi (scripts/setup.sh)",
        );
        return None;
    }
    if !Path::new("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists() {
        skip_because(
            test,
            "no qemu-aarch64 binfmt_misc handler (scripts/setup.sh)",
        );
        return None;
    }
    Some(k)
}

/// `os/arch[/variant]` of an index entry.
pub(crate) fn platform_of(desc: &Value) -> String {
    let p = &desc["platform"];
    let mut s = format!(
        "{}/{}",
        p["os"].as_str().unwrap(),
        p["architecture"].as_str().unwrap()
    );
    if let Some(v) = p["variant"].as_str() {
        s.push('/');
        s.push_str(v);
    }
    s
}

/// The files of one image of an OCI layout (its layers applied in order), by path.
pub(crate) fn image_files(
    files: &BTreeMap<String, Vec<u8>>,
    manifest: &Value,
) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for layer in manifest["layers"].as_array().unwrap() {
        let data = blob(files, layer);
        let mut raw = Vec::new();
        if data.starts_with(&[0x1f, 0x8b]) {
            flate2::read::MultiGzDecoder::new(data)
                .read_to_end(&mut raw)
                .unwrap();
        } else {
            raw = data.to_vec();
        }
        let mut archive = tar::Archive::new(&raw[..]);
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let path = path.trim_start_matches("./").to_string();
            let mut body = Vec::new();
            entry.read_to_end(&mut body).unwrap();
            out.insert(path, body);
        }
    }
    out
}

#[test]
fn two_platforms_in_one_graph_match_buildkit() {
    let Some(k) = kiln_for("two_platforms_in_one_graph_match_buildkit") else {
        return;
    };
    let ctx = k.context("ctx", &[("Dockerfile", DOCKERFILE)]);
    let dest = k.dir().join("multi.tar");
    let meta = k.dir().join("meta.json");
    let run = k
        .build(
            &ctx,
            &[
                "--platform",
                "linux/amd64,linux/arm64",
                "-o",
                &format!("type=oci,dest={}", dest.display()),
                "--metadata-file",
                &meta.to_string_lossy(),
            ],
        )
        .ok();

    // Step names as BuildKit's; the build stage's base is one step for both platforms, its RUN
    // one per target (it sees TARGETARCH), the arm64 one natively (`->arm64`).
    let progress = run.progress();
    progress.step("[linux/amd64 build 1/2] FROM docker.io/library/busybox:multi@");
    progress.step("[linux/amd64 build 2/2] RUN echo");
    progress.step("[linux/amd64->arm64 build 2/2] RUN echo");
    progress.step("[linux/arm64 stage-1 3/3] RUN uname -m");
    assert!(
        run.stderr
            .contains("[emulation] 1 step for linux/arm64 ran under emulation (QEMU): "),
        "{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("InvalidBaseImagePlatform"),
        "{}",
        run.stderr
    );

    let files = read_tar(&dest).unwrap();
    let top: Value = serde_json::from_slice(&files["index.json"]).unwrap();
    let index_desc = &top["manifests"][0];
    assert_eq!(
        index_desc["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    let index: Value = serde_json::from_slice(blob(&files, index_desc)).unwrap();
    let entries = index["manifests"].as_array().unwrap();
    let platforms: Vec<String> = entries.iter().map(platform_of).collect();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64"]);
    for (entry, (platform, [note, arch, args])) in entries.iter().zip(EXPECTED) {
        let manifest: Value = serde_json::from_slice(blob(&files, entry)).unwrap();
        let config: Value = serde_json::from_slice(blob(&files, &manifest["config"])).unwrap();
        assert_eq!(
            format!(
                "{}/{}",
                config["os"].as_str().unwrap(),
                config["architecture"].as_str().unwrap()
            ),
            platform
        );
        let tree = image_files(&files, &manifest);
        let text = |p: &str| String::from_utf8_lossy(&tree[p]).into_owned();
        assert_eq!(text("note"), note, "{platform}");
        assert_eq!(text("arch"), arch, "{platform}");
        assert_eq!(text("args"), args, "{platform}");
        // The base's busybox binary is the platform's own (ELF e_machine).
        let machine = u16::from_le_bytes([tree["bin/busybox"][18], tree["bin/busybox"][19]]);
        assert_eq!(
            machine,
            if platform == "linux/amd64" {
                0x3e
            } else {
                0xb7
            }
        );
    }

    // As buildx describes an index: no config digest, no single platform.
    let meta: Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
    let desc = &meta["containerimage.descriptor"];
    assert_eq!(desc["mediaType"], "application/vnd.oci.image.index.v1+json");
    assert_eq!(desc["digest"], meta["containerimage.digest"]);
    assert_eq!(
        Some(desc["digest"].as_str().unwrap()),
        index_desc["digest"].as_str()
    );
    assert!(meta.get("containerimage.config.digest").is_none(), "{meta}");
    assert!(desc.get("platform").is_none(), "{meta}");

    // Again: everything is a cache hit.
    let again = k
        .build(
            &ctx,
            &[
                "--platform",
                "linux/amd64,linux/arm64",
                "-o",
                &format!("type=oci,dest={}", k.dir().join("again.tar").display()),
            ],
        )
        .ok();
    let again = again.progress();
    assert!(again.rebuilt().is_empty(), "{:?}", again.rebuilt());
    k.assert_clean();
}

#[test]
fn multi_platform_push_is_pulled_back_per_platform() {
    const TEST: &str = "multi_platform_push_is_pulled_back_per_platform";
    let Some(k) = kiln_for(TEST) else {
        return;
    };
    let ctx = k.context("ctx", &[("Dockerfile", DOCKERFILE)]);
    let repo = k.unique("kiln-it-multi");
    let name = format!("{}/{repo}:v1", k.registry);
    k.build(
        &ctx,
        &[
            "--platform",
            "linux/amd64,linux/arm64",
            "-t",
            &name,
            "--push",
        ],
    )
    .ok();
    let (status, body) = http_get(
        &k.registry,
        &format!("/v2/{repo}/manifests/v1"),
        &[("Accept", "application/vnd.oci.image.index.v1+json")],
        std::time::Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(status, 200);
    let index: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    let platforms: Vec<String> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(platform_of)
        .collect();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64"]);

    // kiln pulls each platform's image (into a fresh store) and runs it.
    let fresh = Kiln::new(TEST).unwrap();
    for (platform, [note, _, args]) in EXPECTED {
        fresh.kiln(&["pull", "--platform", platform, &name]).ok();
        let out = fresh
            .kiln(&["run", "--rm", &name, "cat", "/note", "/args"])
            .ok()
            .stdout;
        assert_eq!(out, format!("{note}{args}"), "{platform}");
    }
    fresh.assert_clean();

    // And so does a Docker engine.
    let Some(dockerd) = dockerd_for(TEST) else {
        return;
    };
    let docker = PrivateDockerd::start(&dockerd);
    for (platform, [_, arch, args]) in EXPECTED {
        docker
            .daemon
            .run(&["pull", "--platform", platform, &name])
            .unwrap();
        let out = docker
            .daemon
            .run(&[
                "run",
                "--rm",
                "--network",
                "none",
                "--platform",
                platform,
                &name,
                "sh",
                "-c",
                "uname -m; cat /args",
            ])
            .unwrap();
        assert_eq!(out, format!("{arch}{args}"), "{platform}");
    }
    k.assert_clean();
}

#[test]
fn docker_media_types_make_a_manifest_list() {
    const TEST: &str = "docker_media_types_make_a_manifest_list";
    let Some(k) = kiln_for(TEST) else {
        return;
    };
    let ctx = k.context(
        "ctx",
        &[("Dockerfile", "FROM busybox:multi\nRUN uname -m > /arch\n")],
    );
    let repo = k.unique("kiln-it-multi-list");
    let name = format!("{}/{repo}:v1", k.registry);
    k.build(
        &ctx,
        &[
            "--platform",
            "linux/amd64,linux/arm64",
            "-o",
            &format!("type=registry,name={name},oci-mediatypes=false"),
        ],
    )
    .ok();
    // As BuildKit v0.32.2 pushes it: a Docker manifest list of Docker manifests.
    let (status, body) = http_get(
        &k.registry,
        &format!("/v2/{repo}/manifests/v1"),
        &[(
            "Accept",
            "application/vnd.docker.distribution.manifest.list.v2+json",
        )],
        std::time::Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(status, 200);
    let list: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        list["mediaType"],
        "application/vnd.docker.distribution.manifest.list.v2+json"
    );
    let entries = list["manifests"].as_array().unwrap();
    assert_eq!(
        entries.iter().map(platform_of).collect::<Vec<_>>(),
        ["linux/amd64", "linux/arm64"]
    );
    for e in entries {
        assert_eq!(
            e["mediaType"],
            "application/vnd.docker.distribution.manifest.v2+json"
        );
    }
    // kiln pulls the arm64 image from it.
    let fresh = Kiln::new(TEST).unwrap();
    fresh
        .kiln(&["pull", "--platform", "linux/arm64", &name])
        .ok();
    let out = fresh
        .kiln(&["run", "--rm", &name, "cat", "/arch"])
        .ok()
        .stdout;
    assert_eq!(out, "aarch64\n");
    fresh.assert_clean();
    k.assert_clean();
}

#[test]
fn local_and_tar_outputs_split_by_platform() {
    let Some(k) = kiln_for("local_and_tar_outputs_split_by_platform") else {
        return;
    };
    let ctx = k.context("ctx", &[("Dockerfile", DOCKERFILE)]);
    let dir = k.dir().join("out");
    let tarball = k.dir().join("out.tar");
    k.build(
        &ctx,
        &[
            "--platform",
            "linux/amd64,linux/arm64",
            "-o",
            &format!("type=local,dest={}", dir.display()),
            "-o",
            &format!("type=tar,dest={}", tarball.display()),
        ],
    )
    .ok();
    // As buildx's default platform-split: a directory per platform, `os_arch`.
    let mut top: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    assert_eq!(top, ["linux_amd64", "linux_arm64"]);
    let files = read_tar(&tarball).unwrap();
    let mut tops: Vec<&str> = files.keys().map(|p| p.split('/').next().unwrap()).collect();
    tops.dedup();
    assert_eq!(tops, ["linux_amd64", "linux_arm64"]);
    for (platform, [note, arch, args]) in EXPECTED {
        let sub = platform.replace('/', "_");
        for (name, want) in [("note", note), ("arch", arch), ("args", args)] {
            let on_disk = std::fs::read_to_string(dir.join(&sub).join(name)).unwrap();
            assert_eq!(on_disk, want, "{sub}/{name}");
            let in_tar = &files[&format!("{sub}/{name}")];
            assert_eq!(
                String::from_utf8_lossy(in_tar),
                want,
                "{sub}/{name} in the tar"
            );
        }
    }
    // `platform-split=true` with one platform splits too, as BuildKit does (`false`:
    // multi_split.rs).
    let one = k.dir().join("one");
    k.build(
        &ctx,
        &[
            "--platform",
            "linux/arm64",
            "-o",
            &format!("type=local,dest={},platform-split=true", one.display()),
        ],
    )
    .ok();
    assert_eq!(
        std::fs::read_to_string(one.join("linux_arm64/arch")).unwrap(),
        "aarch64\n"
    );
    k.assert_clean();
}

#[test]
fn the_store_keeps_the_index_under_the_tag() {
    let Some(k) = kiln_for("the_store_keeps_the_index_under_the_tag") else {
        return;
    };
    let ctx = k.context("ctx", &[("Dockerfile", DOCKERFILE)]);
    let tag = k.unique("multi");
    k.build(&ctx, &["--platform", "linux/amd64,linux/arm64", "-t", &tag])
        .ok();
    // Listed once.
    let listed = k
        .kiln(&["images", "--format", "{{.Repository}}:{{.Tag}}"])
        .ok();
    assert_eq!(listed.stdout, format!("{tag}:latest\n"));
    // With its platforms under it, as `docker image ls --tree`.
    let tree = k.kiln(&["images", "--tree"]).ok().stdout;
    let lines: Vec<&str> = tree.lines().collect();
    assert_eq!(lines.len(), 4, "{tree}");
    assert!(
        lines[0].starts_with("IMAGE") && lines[0].contains("CONTENT SIZE"),
        "{tree}"
    );
    assert!(lines[1].starts_with(&format!("{tag}:latest ")), "{tree}");
    assert!(lines[2].starts_with("├─ linux/amd64 "), "{tree}");
    assert!(lines[3].starts_with("└─ linux/arm64 "), "{tree}");
    assert_ne!(
        lines[2].split_whitespace().nth(2),
        lines[3].split_whitespace().nth(2),
        "each platform has its own ID: {tree}"
    );
    let refused = k.kiln(&["images", "--tree", "-q"]).failed();
    assert!(
        refused.stderr.contains("--tree can't be combined"),
        "{}",
        refused.stderr
    );
    // Each platform's image runs; this machine's is the default.
    for (platform, [_, arch, args]) in EXPECTED {
        let out = k
            .kiln(&[
                "run",
                "--rm",
                "--platform",
                platform,
                &tag,
                "sh",
                "-c",
                "uname -m; cat /args",
            ])
            .ok()
            .stdout;
        assert_eq!(out, format!("{arch}{args}"), "{platform}");
    }
    let out = k.kiln(&["run", "--rm", &tag, "cat", "/args"]).ok().stdout;
    assert_eq!(out, EXPECTED[0].1[2]);
    let run = k
        .kiln(&["run", "--rm", "--platform", "linux/s390x", &tag, "true"])
        .failed();
    assert!(
        run.stderr
            .contains("has no image for linux/s390x (it has linux/amd64, linux/arm64)"),
        "{}",
        run.stderr
    );
    // A later stage can build FROM it for either platform (the local image, by platform).
    let from = k.context(
        "from",
        &[(
            "Dockerfile",
            &format!("FROM {tag}\nRUN cat /args > /seen\n"),
        )],
    );
    let out = k.dir().join("from");
    k.build(
        &from,
        &[
            "--platform",
            "linux/arm64",
            "-o",
            &format!("type=local,dest={}", out.display()),
        ],
    )
    .ok();
    assert_eq!(
        std::fs::read_to_string(out.join("seen")).unwrap(),
        EXPECTED[1].1[2]
    );
    // Another name gets the whole index, and `kiln push` sends it: manifests, then the index.
    let repo = k.unique("kiln-it-multi-push");
    let pushed = format!("{}/{repo}:v1", k.registry);
    k.kiln(&["tag", &tag, &pushed]).ok();
    k.kiln(&["push", &pushed]).ok();
    let (status, body) = http_get(
        &k.registry,
        &format!("/v2/{repo}/manifests/v1"),
        &[("Accept", "application/vnd.oci.image.index.v1+json")],
        std::time::Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(status, 200);
    let index: Value = serde_json::from_str(&body).unwrap();
    let platforms: Vec<String> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(platform_of)
        .collect();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64"]);
    // `kiln save --format oci` writes the index and every platform's blobs (the docker format:
    // multi_archive.rs).
    let saved = k.dir().join("s.tar");
    k.kiln(&[
        "save",
        "--format",
        "oci",
        "-o",
        &saved.to_string_lossy(),
        &tag,
    ])
    .ok();
    let files = read_tar(&saved).unwrap();
    let top: Value = serde_json::from_slice(&files["index.json"]).unwrap();
    let desc = &top["manifests"][0];
    assert_eq!(desc["mediaType"], "application/vnd.oci.image.index.v1+json");
    let index: Value = serde_json::from_slice(blob(&files, desc)).unwrap();
    for (entry, (platform, [note, arch, _])) in
        index["manifests"].as_array().unwrap().iter().zip(EXPECTED)
    {
        assert_eq!(platform_of(entry), platform);
        let manifest: Value = serde_json::from_slice(blob(&files, entry)).unwrap();
        let tree = image_files(&files, &manifest);
        assert_eq!(String::from_utf8_lossy(&tree["note"]), note);
        assert_eq!(String::from_utf8_lossy(&tree["arch"]), arch);
    }
    // Pruning keeps every platform's blobs while the name is there.
    k.kiln(&["prune", "-a", "-f"]).ok();
    let out = k
        .kiln(&[
            "run",
            "--rm",
            "--platform",
            "linux/arm64",
            &tag,
            "cat",
            "/note",
        ])
        .ok()
        .stdout;
    assert_eq!(out, EXPECTED[1].1[0]);
    k.assert_clean();
}

#[test]
fn multi_platform_outputs_not_built_yet_say_so() {
    let Some(k) = kiln_for("multi_platform_outputs_not_built_yet_say_so") else {
        return;
    };
    let ctx = k.context("ctx", &[("Dockerfile", "FROM busybox:multi\n")]);
    let dest = k.dir().join("out");
    let run = k
        .build(
            &ctx,
            &[
                "--platform",
                "linux/amd64,linux/arm64",
                "-o",
                &format!("type=oci,dest={},tar=false", dest.display()),
            ],
        )
        .failed();
    assert!(
        run.stderr
            .contains("--output type=oci for several platforms is not supported yet"),
        "{}",
        run.stderr
    );
    assert!(!dest.exists());
    k.assert_clean();
}
