//! `kiln pull`, and `kiln run` of an image that is only in the registry.

use crate::support::{Kiln, registry_has};

#[test]
fn run_pulls_a_missing_image_and_pull_stores_it() {
    let Some(k) = Kiln::new("run_pulls_a_missing_image_and_pull_stores_it") else {
        return;
    };
    // A fresh data root: busybox is only in the registry (through the docker.io mirror).
    let out = k
        .kiln(&["run", "busybox", "echo", "hi from a pulled image"])
        .ok();
    assert_eq!(out.stdout, "hi from a pulled image\n");
    let images = k.kiln(&["images"]).ok().stdout;
    assert!(
        images
            .lines()
            .any(|l| l.starts_with("busybox ") && l.contains("latest")),
        "{images}"
    );

    let pulled = k.kiln(&["pull", "busybox:latest"]).ok().stdout;
    assert!(pulled.trim().starts_with("sha256:"), "{pulled}");
    let missing = k.kiln(&["pull", "no-such-image-anywhere"]).failed();
    assert!(
        missing.stderr.contains("no-such-image-anywhere"),
        "{}",
        missing.stderr
    );
}

#[test]
fn build_push_sends_every_tag_and_a_fresh_store_runs_it() {
    const TEST: &str = "build_push_sends_every_tag_and_a_fresh_store_runs_it";
    let Some(k) = Kiln::new(TEST) else { return };
    let ctx = k.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN echo pushed-by-kiln > /msg\nCMD [\"cat\", \"/msg\"]\n",
        )],
    );
    let err = k.build(&ctx, &["--push"]).failed().stderr;
    assert!(err.contains("tag is needed"), "{err}");

    let repo = k.unique("kiln-it-push");
    let one = format!("{}/{repo}:one", k.registry);
    let two = format!("{}/{repo}:two", k.registry);
    let meta_path = k.dir().join("metadata.json");
    let meta_arg = meta_path.to_string_lossy().into_owned();
    let iid_path = k.dir().join("iid");
    let iid_arg = iid_path.to_string_lossy().into_owned();
    k.build(
        &ctx,
        &[
            "--push",
            "-t",
            &one,
            "-t",
            &two,
            "--metadata-file",
            &meta_arg,
            "--iidfile",
            &iid_arg,
        ],
    )
    .ok();
    assert!(registry_has(&k.registry, &repo, "one"));
    assert!(registry_has(&k.registry, &repo, "two"));

    // buildx's metadata keys: the pushed manifest, its descriptor, the config (= --iidfile).
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&meta_path).unwrap()).unwrap();
    let pushed = k.kiln(&["push", &one]).ok().stdout;
    assert_eq!(meta["containerimage.digest"], pushed.trim());
    assert_eq!(meta["containerimage.descriptor"]["digest"], pushed.trim());
    assert!(meta["containerimage.descriptor"]["size"].as_u64().unwrap() > 0);
    assert!(
        meta["containerimage.descriptor"]["mediaType"]
            .as_str()
            .unwrap()
            .contains("manifest"),
        "{meta}"
    );
    assert_eq!(
        meta["containerimage.config.digest"],
        std::fs::read_to_string(&iid_path).unwrap().trim()
    );
    assert_eq!(meta["image.name"], format!("{one},{two}"));
    // As buildx v0.36.1 writes the descriptor: the platform, and the creation time in whole
    // seconds as an annotation.
    let d = &meta["containerimage.descriptor"];
    assert_eq!(d["platform"]["os"], "linux", "{meta}");
    assert!(d["platform"]["architecture"].is_string(), "{meta}");
    let created = d["annotations"]["org.opencontainers.image.created"]
        .as_str()
        .unwrap();
    assert!(
        created.len() == 20 && created.ends_with('Z') && !created.contains('.'),
        "{created}"
    );

    let Some(fresh) = Kiln::new(TEST) else { return };
    let out = fresh.kiln(&["run", "--rm", &two]).ok();
    assert_eq!(out.stdout, "pushed-by-kiln\n");
}
