//! The image store commands: `images` filters and formats, `rmi`, `save`/`load` (with each
//! other and with a real Docker engine), `inspect` and `history`.

use std::io::Write;
use std::process::Stdio;

use crate::support::{Kiln, PrivateDockerd, dockerd_for};

/// busybox plus a labelled image built from it, tagged in two repositories.
fn two_images(k: &Kiln) -> (String, String) {
    k.kiln(&["pull", "busybox"]).ok();
    let ctx = k.context(
        "labelled",
        &[(
            "Dockerfile",
            "FROM busybox\nLABEL team=store tier=test\nCMD [\"cat\", \"/etc/motd\"]\nRUN echo made-by-kiln > /etc/motd\n",
        )],
    );
    let name = format!("{}:v1", k.unique("kiln-it-store"));
    k.build(&ctx, &["-t", &name]).ok();
    (name.clone(), name.split(':').next().unwrap().to_string())
}

fn id_of(k: &Kiln, image: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(&k.kiln(&["inspect", image]).ok().stdout)
        .expect("inspect prints JSON");
    v[0]["Id"].as_str().expect("an Id").to_string()
}

#[test]
fn images_filters_digests_quiet_and_format() {
    let Some(k) = Kiln::new("images_filters_digests_quiet_and_format") else {
        return;
    };
    let (name, repo) = two_images(&k);
    let built = id_of(&k, &name);
    let busybox = id_of(&k, "busybox");

    let by_ref = k
        .kiln(&[
            "images",
            "-q",
            "--no-trunc",
            "--filter",
            &format!("reference={repo}*"),
        ])
        .ok();
    assert_eq!(by_ref.stdout, format!("{built}\n"));
    let by_label = k
        .kiln(&["images", "-q", "--no-trunc", "-f", "label=team=store"])
        .ok();
    assert_eq!(by_label.stdout, format!("{built}\n"));
    let none = k.kiln(&["images", "-q", "-f", "label=team=other"]).ok();
    assert_eq!(none.stdout, "");
    let since = k
        .kiln(&["images", "-q", "--no-trunc", "-f", "since=busybox"])
        .ok();
    assert_eq!(since.stdout, format!("{built}\n"));
    let before = k
        .kiln(&[
            "images",
            "-q",
            "--no-trunc",
            "-f",
            &format!("before={name}"),
        ])
        .ok();
    assert_eq!(before.stdout, format!("{busybox}\n"));
    let dangling = k.kiln(&["images", "-q", "-f", "dangling=true"]).ok();
    assert_eq!(dangling.stdout, "", "every image here has a tag");
    let positional = k
        .kiln(&["images", "--format", "{{.Repository}}:{{.Tag}}", "busybox"])
        .ok();
    assert_eq!(positional.stdout, "busybox:latest\n");

    let digests = k.kiln(&["images", "--digests"]).ok().stdout;
    let header: Vec<&str> = digests
        .lines()
        .next()
        .unwrap()
        .split("   ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(
        header,
        ["REPOSITORY", "TAG", "DIGEST", "IMAGE ID", "CREATED", "SIZE"]
    );
    let manifest = k
        .kiln(&["images", "--format", "{{.Digest}}", &name])
        .ok()
        .stdout;
    assert!(digests.contains(manifest.trim()), "{digests}");

    let table = k
        .kiln(&["images", "--format", "table {{.ID}}\\t{{.Tag}}", "busybox"])
        .ok();
    assert_eq!(
        table.stdout,
        format!("IMAGE ID       TAG\n{}   latest\n", &busybox[7..19])
    );
    let bad = k.kiln(&["images", "--format", "{{json .}}"]).failed();
    assert!(bad.stderr.contains("not supported yet"), "{}", bad.stderr);
    let bad = k.kiln(&["images", "-f", "color=red"]).failed();
    assert!(
        bad.stderr.contains("invalid filter `color`"),
        "{}",
        bad.stderr
    );
}

#[test]
fn rmi_untags_refuses_shared_ids_and_images_in_use() {
    let Some(k) = Kiln::new("rmi_untags_refuses_shared_ids_and_images_in_use") else {
        return;
    };
    k.kiln(&["pull", "busybox"]).ok();
    k.kiln(&["tag", "busybox", "mine/box:1"]).ok();
    k.kiln(&["tag", "busybox", "mine/box:2"]).ok();
    let id = id_of(&k, "busybox");
    let short = &id[7..19];

    // An ID named in two repositories needs -f, as in Docker.
    let refused = k.kiln(&["rmi", short]).failed();
    assert!(
        refused
            .stderr
            .contains("image is referenced in multiple repositories"),
        "{}",
        refused.stderr
    );
    // Untagging one of several names keeps the image.
    let out = k.kiln(&["rmi", "mine/box:1"]).ok();
    assert_eq!(out.stdout, "Untagged: mine/box:1\n");
    k.kiln(&["rmi", "busybox"]).ok();
    // A container (as `kiln run` records it) that uses the image protects its last name.
    let container = k.root.join("containers").join("0123456789abcdef0123");
    std::fs::create_dir_all(&container).unwrap();
    std::fs::write(
        container.join("config.json"),
        serde_json::json!({"id": "0123456789abcdef0123", "image": "mine/box:2", "image_id": id})
            .to_string(),
    )
    .unwrap();
    let in_use = k.kiln(&["rmi", "mine/box:2"]).failed();
    assert!(
        in_use
            .stderr
            .contains("container 0123456789ab is using its referenced image"),
        "{}",
        in_use.stderr
    );
    let forced = k.kiln(&["rmi", "-f", "mine/box:2"]).ok();
    assert_eq!(
        forced.stdout,
        format!("Untagged: mine/box:2\nDeleted: {id}\n")
    );
    assert_eq!(k.kiln(&["images", "-q"]).ok().stdout, "");
    // Several arguments: the missing one fails the command, the others are still removed.
    std::fs::remove_dir_all(&container).unwrap();
    k.kiln(&["pull", "busybox"]).ok();
    let mixed = k.kiln(&["rmi", "no-such-image", "busybox"]).failed();
    assert!(
        mixed.stderr.contains("no such image: `no-such-image`"),
        "{}",
        mixed.stderr
    );
    assert!(
        mixed.stdout.contains("Untagged: busybox:latest"),
        "{}",
        mixed.stdout
    );
    // rmi removes names only: the blobs stay until prune, so a re-tag by pull needs no bytes.
    assert!(k.root.join("content/blobs/sha256").join(&id[7..]).exists());
}

#[test]
fn save_and_load_several_images_through_files_and_pipes() {
    let Some(k) = Kiln::new("save_and_load_several_images_through_files_and_pipes") else {
        return;
    };
    let (name, _) = two_images(&k);
    let expected = k.kiln(&["run", &name]).ok().stdout;
    assert_eq!(expected, "made-by-kiln\n");
    let ids = [id_of(&k, &name), id_of(&k, "busybox")];

    for format in ["docker", "oci"] {
        let file = k.dir().join(format!("both-{format}.tar"));
        let file_arg = file.to_string_lossy().into_owned();
        k.kiln(&[
            "save", "--format", format, "-o", &file_arg, &name, "busybox",
        ])
        .ok();
        let summary = kiln_exporter::verify::verify_oci_archive(&file).expect("a valid layout");
        assert_eq!(summary.refs.len(), 2, "{format}");
        assert_eq!(summary.docker_manifest.is_some(), format == "docker");

        let Some(other) = Kiln::new("save_and_load_several_images_through_files_and_pipes") else {
            return;
        };
        let loaded = other.kiln(&["load", "-i", &file_arg]).ok();
        let shown = name.clone();
        assert_eq!(
            loaded.stdout,
            format!("Loaded image: {shown}\nLoaded image: busybox:latest\n"),
            "{format}"
        );
        assert_eq!([id_of(&other, &name), id_of(&other, "busybox")], ids);
        assert_eq!(other.kiln(&["run", &name]).ok().stdout, expected);
    }

    // `kiln save IMAGE | kiln load`: stdout to stdin, no file.
    let Some(other) = Kiln::new("save_and_load_several_images_through_files_and_pipes") else {
        return;
    };
    let mut save = k
        .command(&["save", &name])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pipe = save.stdout.take().unwrap();
    let load = other.command(&["load"]).stdin(pipe).output().unwrap();
    assert!(save.wait().unwrap().success());
    assert!(
        load.status.success(),
        "{}",
        String::from_utf8_lossy(&load.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&load.stdout),
        format!("Loaded image: {name}\n")
    );
    assert_eq!(other.kiln(&["run", &name]).ok().stdout, expected);

    // A damaged archive is refused and names what is wrong.
    let good = std::fs::read(k.dir().join("both-oci.tar")).unwrap();
    let mut bad = good.clone();
    // The config blob is plain JSON: change one letter of the label and its name no longer fits.
    let at = find(&good, b"\"team\":\"store\"").expect("the config in the archive") + 9;
    bad[at] = b'S';
    let mut child = other
        .command(&["load"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&bad).ok();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("hashes to"), "{err}");
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[test]
fn inspect_and_history_describe_the_image() {
    let Some(k) = Kiln::new("inspect_and_history_describe_the_image") else {
        return;
    };
    let (name, _) = two_images(&k);
    let v: serde_json::Value =
        serde_json::from_str(&k.kiln(&["inspect", &name, "busybox"]).ok().stdout).unwrap();
    let img = &v[0];
    assert_eq!(img["RepoTags"], serde_json::json!([name]));
    assert_eq!(img["Config"]["Labels"]["team"], "store");
    assert_eq!(
        img["Config"]["Cmd"],
        serde_json::json!(["cat", "/etc/motd"])
    );
    assert_eq!(img["Os"], "linux");
    assert_eq!(img["RootFS"]["Type"], "layers");
    let layers = img["RootFS"]["Layers"].as_array().unwrap().len();
    assert_eq!(layers, 2, "busybox's layer and the RUN's");
    let digest = img["Descriptor"]["digest"].as_str().unwrap();
    assert!(img["RepoDigests"][0].as_str().unwrap().ends_with(digest));
    assert_eq!(v[1]["RepoTags"], serde_json::json!(["busybox:latest"]));
    // By ID prefix too, and a missing image fails after printing what was found.
    let short = &img["Id"].as_str().unwrap()[7..15];
    k.kiln(&["inspect", short]).ok();
    let missing = k.kiln(&["inspect", "busybox", "nope-not-here"]).failed();
    assert!(missing.stdout.contains("busybox:latest"));
    assert!(
        missing.stderr.contains("nope-not-here"),
        "{}",
        missing.stderr
    );

    let history = k.kiln(&["history", &name]).ok().stdout;
    let lines: Vec<&str> = history.lines().collect();
    assert!(
        lines[0].starts_with("IMAGE          CREATED ")
            && lines[0].contains("CREATED BY")
            && lines[0].ends_with("COMMENT"),
        "{history}"
    );
    assert!(
        lines[1].starts_with(&img["Id"].as_str().unwrap()[7..19]),
        "{history}"
    );
    assert!(
        lines[1].contains("RUN /bin/sh -c echo made-by-kiln"),
        "{history}"
    );
    assert!(
        lines[2..].iter().all(|l| l.starts_with("<missing>")),
        "{history}"
    );
    let config_history = k
        .kiln(&["history", "-q", &name])
        .ok()
        .stdout
        .lines()
        .count();
    assert_eq!(config_history, lines.len() - 1);
    let full = k
        .kiln(&[
            "history",
            "--no-trunc",
            "--format",
            "{{.ID}}|{{.Size}}",
            &name,
        ])
        .ok()
        .stdout;
    assert!(
        full.starts_with(&format!("{}|", img["Id"].as_str().unwrap())),
        "{full}"
    );
    // The CMD and LABEL steps made no layer.
    assert!(
        full.lines().filter(|l| l.ends_with("|0B")).count() >= 2,
        "{full}"
    );
}

#[test]
fn docker_save_loads_into_kiln_and_kiln_save_into_docker() {
    const TEST: &str = "docker_save_loads_into_kiln_and_kiln_save_into_docker";
    let Some(dockerd) = dockerd_for(TEST) else {
        return;
    };
    let Some(k) = Kiln::new(TEST) else { return };
    let (name, _) = two_images(&k);
    let to_docker = k.dir().join("to-docker.tar");
    let to_docker_arg = to_docker.to_string_lossy().into_owned();
    k.kiln(&["save", "-o", &to_docker_arg, &name, "busybox"])
        .ok();

    let docker = PrivateDockerd::start(&dockerd);
    let daemon = &docker.daemon;
    let loaded = daemon.run(&["load", "-i", &to_docker_arg]).unwrap();
    assert!(
        loaded.contains(&format!("Loaded image: {name}")),
        "{loaded}"
    );
    assert!(loaded.contains("Loaded image: busybox:latest"), "{loaded}");
    let out = daemon
        .run(&["run", "--rm", "--network", "none", &name])
        .unwrap();
    assert_eq!(out, "made-by-kiln\n");

    // An image Docker made itself (a committed container on top of busybox), saved by Docker.
    daemon
        .run(&[
            "run",
            "--name",
            "maker",
            "--network",
            "none",
            "busybox",
            "sh",
            "-c",
            "echo made-by-docker > /from-docker",
        ])
        .unwrap();
    daemon
        .run(&[
            "commit",
            "--change",
            "CMD [\"cat\", \"/from-docker\"]",
            "maker",
            "docker-made:v2",
        ])
        .unwrap();
    let docker_id = daemon
        .run(&["image", "inspect", "--format", "{{.Id}}", "docker-made:v2"])
        .unwrap();
    let from_docker = k.dir().join("from-docker.tar");
    let from_docker_arg = from_docker.to_string_lossy().into_owned();
    daemon
        .run(&["save", "-o", &from_docker_arg, "docker-made:v2", "busybox"])
        .unwrap();
    drop(docker);

    let Some(fresh) = Kiln::new(TEST) else { return };
    let loaded = fresh.kiln(&["load", "-i", &from_docker_arg]).ok().stdout;
    assert!(loaded.contains("Loaded image: docker-made:v2"), "{loaded}");
    assert!(loaded.contains("Loaded image: busybox:latest"), "{loaded}");
    assert_eq!(
        id_of(&fresh, "docker-made:v2"),
        docker_id.trim(),
        "the image ID survives"
    );
    assert_eq!(
        fresh.kiln(&["run", "docker-made:v2"]).ok().stdout,
        "made-by-docker\n"
    );
    assert_eq!(
        fresh.kiln(&["run", "busybox", "echo", "ok"]).ok().stdout,
        "ok\n"
    );
}
