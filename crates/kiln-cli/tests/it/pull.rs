//! `kiln pull`, and `kiln run` of an image that is only in the registry.

use crate::support::Kiln;

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
