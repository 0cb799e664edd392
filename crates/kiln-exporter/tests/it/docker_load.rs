//! Loads a docker archive into a real, private dockerd and runs it. Skips (with a reason) when
//! dockerd is not installed, unless `KILN_TEST_REQUIRE_EXTERNAL=1`.

use std::path::Path;

use anyhow::Result;
use kiln_exporter::{ContentStore, docker};
use kiln_oci::Reference;
use kiln_test::{Dockerd, find_program, skip_without};

use crate::support::{Layer, build_image};

#[test]
fn docker_load_accepts_the_archive_and_runs_it() -> Result<()> {
    let dockerd = find_program("dockerd");
    if skip_without("dockerd", dockerd.is_none())
        || skip_without("docker", find_program("docker").is_none())
    {
        return Ok(());
    }
    if skip_without("/bin/busybox", !Path::new("/bin/busybox").is_file()) {
        return Ok(());
    }
    // A short path: the socket path must fit in sun_path.
    let dir = tempfile::Builder::new()
        .prefix("kiln-dk")
        .tempdir_in("/tmp")?;
    let content = ContentStore::open(dir.path().join("content"))?;
    let busybox = std::fs::read("/bin/busybox")?;
    let img = build_image(
        &content,
        &[
            Layer {
                files: vec![("bin/busybox".into(), busybox, 0o755)],
            },
            Layer::text(&[("etc/kiln", "exported by kiln\n")]),
        ],
        "2026-01-02T03:04:05Z",
        false,
    )?;
    let name = "kiln-exporter-test:latest";
    let names: Vec<Reference> = vec![name.parse()?];
    let archive = dir.path().join("image.tar");
    docker::write_archive(
        &content,
        &img.manifest,
        &names,
        std::fs::File::create(&archive)?,
    )?;

    let daemon = Dockerd::start(
        dockerd.as_deref().unwrap_or(Path::new("dockerd")),
        dir.path(),
    )?;
    let loaded = daemon.run(&["load", "-i", &archive.to_string_lossy()])?;
    assert!(
        loaded.contains(&format!("Loaded image: {name}")),
        "{loaded}"
    );

    let inspect = daemon.run(&[
        "image",
        "inspect",
        "--format",
        "{{.Id}} {{json .RepoTags}} {{len .RootFS.Layers}} {{json .RootFS.Layers}}",
        name,
    ])?;
    let diff_ids: Vec<String> = img.diff_ids.iter().map(|d| d.to_string()).collect();
    assert_eq!(
        inspect.trim(),
        format!(
            "{} [\"{name}\"] 2 {}",
            img.config,
            serde_json::to_string(&diff_ids)?
        ),
        "image ID is the config digest, tag and layers as exported"
    );

    let out = daemon.run(&[
        "run",
        "--rm",
        "--network",
        "none",
        name,
        "/bin/busybox",
        "cat",
        "/etc/kiln",
    ])?;
    assert_eq!(out, "exported by kiln\n");
    let out = daemon.run(&[
        "run",
        "--rm",
        "--network",
        "none",
        name,
        "/bin/busybox",
        "echo",
        "hi",
    ])?;
    assert_eq!(out, "hi\n");
    Ok(())
}
