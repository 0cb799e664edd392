//! `kiln build --build-context NAME=VALUE`: named contexts of every kind, checked against what
//! BuildKit v0.32.2 through buildx v0.36.1 does with the same flags (recorded with the oracle:
//! files, configs, progress names and error messages quoted below).

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::export_oci::layout_image;
use crate::support::{Kiln, http_get, read_tar};

/// Builds `dockerfile` (written beside the context) and returns the OCI archive's manifest,
/// config and files.
fn build_oci(
    k: &Kiln,
    ctx: &Path,
    dockerfile: &str,
    extra: &[&str],
) -> (Value, Value, std::collections::BTreeMap<String, Vec<u8>>) {
    let df = k.dir().join(k.unique("Dockerfile"));
    std::fs::write(&df, dockerfile).unwrap();
    let dest = k.dir().join(format!("{}.tar", k.unique("image")));
    let out = format!("type=oci,dest={},compression=uncompressed", dest.display());
    let mut args = vec!["-f", df.to_str().unwrap(), "-o", &out];
    args.extend(extra);
    k.build(ctx, &args).ok();
    let files = read_tar(&dest).unwrap();
    let (manifest, config) = layout_image(&files);
    (manifest, config, files)
}

/// The paths in one uncompressed layer of an OCI archive, with file contents.
fn layer_files(
    files: &std::collections::BTreeMap<String, Vec<u8>>,
    desc: &Value,
) -> Vec<(String, Vec<u8>)> {
    let hex = desc["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:");
    let blob = &files[&format!("blobs/sha256/{hex}")];
    let mut out = Vec::new();
    let mut archive = tar::Archive::new(blob.as_slice());
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
        let path = path.trim_start_matches("./").trim_end_matches('/');
        out.push((path.to_string(), data));
    }
    out.sort();
    out
}

fn names(layer: &[(String, Vec<u8>)]) -> Vec<&str> {
    layer.iter().map(|(p, _)| p.as_str()).collect()
}

/// A named directory with its own `.dockerignore` (BuildKit reads `<dir>/.dockerignore` for a
/// named local context: `b.txt` never arrives) in `COPY --from`, `RUN --mount=from` and the
/// cache: an edit of a file it sends reruns the steps that read it, an edit of an ignored one
/// does not.
#[test]
fn named_dir_in_copy_and_mount_with_its_own_dockerignore() {
    let Some(k) = Kiln::new("named_dir_in_copy_and_mount_with_its_own_dockerignore") else {
        return;
    };
    let ctx = k.context("ctx", &[("m.txt", "main\n"), (".dockerignore", "a.txt\n")]);
    let named = k.context(
        "nc",
        &[
            ("a.txt", "one\n"),
            ("b.txt", "two\n"),
            (".dockerignore", "b.txt\n"),
        ],
    );
    let dockerfile = "FROM busybox\nCOPY --from=foo / /foo/\n\
                      RUN --mount=from=foo,target=/mnt ls -A /mnt > /mnt-list\n";
    let flag = format!("foo={}", named.display());
    let (manifest, _, files) = build_oci(&k, &ctx, dockerfile, &["--build-context", &flag]);
    let layers = manifest["layers"].as_array().unwrap();
    let copied = layer_files(&files, &layers[layers.len() - 2]);
    // The main context's .dockerignore (which hides a.txt there) does not apply.
    assert_eq!(names(&copied), ["foo", "foo/.dockerignore", "foo/a.txt"]);
    let run = layer_files(&files, &layers[layers.len() - 1]);
    let list = run.iter().find(|(p, _)| p == "mnt-list").unwrap();
    assert_eq!(String::from_utf8_lossy(&list.1), ".dockerignore\na.txt\n");

    let df = k.dir().join("Dockerfile.cache");
    std::fs::write(&df, dockerfile).unwrap();
    // The steps that ran; loading a local source is never a cache hit (as in BuildKit).
    let rebuilt = |k: &Kiln| -> Vec<String> {
        let run = k
            .build(
                &ctx,
                &["-f", df.to_str().unwrap(), "--build-context", &flag],
            )
            .ok();
        let p = run.progress();
        let steps = p
            .rebuilt()
            .into_iter()
            .filter(|s| !s.starts_with("[context "));
        steps.map(str::to_string).collect()
    };
    rebuilt(&k);
    assert_eq!(rebuilt(&k), Vec::<String>::new(), "a rebuild is all cached");
    std::fs::write(named.join("b.txt"), "ignored edit\n").unwrap();
    assert_eq!(
        rebuilt(&k),
        Vec::<String>::new(),
        "an ignored file is no input"
    );
    std::fs::write(named.join("a.txt"), "edited\n").unwrap();
    assert_eq!(
        rebuilt(&k),
        [
            "[2/3] COPY --from=foo / /foo/",
            "[3/3] RUN --mount=from=foo,target=/mnt ls -A /mnt > /mnt-list"
        ]
    );
}

/// `FROM <named dir>`: the directory's files are the base layer, on the empty image's config
/// (PATH, WorkingDir `/`), and BuildKit's exporter adds a history entry for that layer.
#[test]
fn from_a_named_dir_is_its_files_on_the_empty_image() {
    let Some(k) = Kiln::new("from_a_named_dir_is_its_files_on_the_empty_image") else {
        return;
    };
    let ctx = k.context("ctx", &[("m.txt", "main\n")]);
    let named = k.context(
        "nc",
        &[
            ("a.txt", "one\n"),
            ("b.txt", "two\n"),
            (".dockerignore", "b.txt\n"),
        ],
    );
    let flag = format!("foo={}", named.display());
    let (manifest, config, files) = build_oci(
        &k,
        &ctx,
        "FROM foo\nCOPY m.txt /\n",
        &["--build-context", &flag],
    );
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    assert_eq!(
        names(&layer_files(&files, &layers[0])),
        [".dockerignore", "a.txt"]
    );
    assert_eq!(names(&layer_files(&files, &layers[1])), ["m.txt"]);
    assert_eq!(
        config["config"],
        serde_json::json!({
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "WorkingDir": "/"
        })
    );
    let history = config["history"].as_array().unwrap();
    assert_eq!(history.len(), 2, "{history:?}");
    assert_eq!(history[0]["comment"], "buildkit.exporter.image.v0");
    assert_eq!(history[1]["created_by"], "COPY m.txt / # buildkit");
}

/// A named context named as a stage replaces the stage (its RUN never runs); one named as an
/// image replaces the image wherever it is used, under any spelling of the name
/// (`docker.io/library/busybox:latest` is `busybox`), and `docker-image://` pinned to a digest
/// gets that image.
#[test]
fn named_contexts_replace_stages_and_images() {
    let Some(k) = Kiln::new("named_contexts_replace_stages_and_images") else {
        return;
    };
    let ctx = k.context("ctx", &[("m.txt", "main\n")]);
    let named = k.context("nc", &[("which", "from the named dir\n")]);
    let flag = format!("build={}", named.display());
    let df = k.dir().join("Dockerfile.stage");
    std::fs::write(
        &df,
        "FROM busybox AS build\nRUN echo from the stage > /which\n\
         FROM scratch\nCOPY --from=build /which /which\n",
    )
    .unwrap();
    let out = k.dir().join("stage-out");
    let local = format!("type=local,dest={}", out.display());
    let run = k
        .build(
            &ctx,
            &[
                "-f",
                df.to_str().unwrap(),
                "--build-context",
                &flag,
                "-o",
                &local,
            ],
        )
        .ok();
    assert_eq!(
        std::fs::read_to_string(out.join("which")).unwrap(),
        "from the named dir\n"
    );
    assert!(!run.stderr.contains("RUN echo"), "{}", run.stderr);

    // The bare image's layer, to recognise it.
    let (_, bare, _) = build_oci(&k, &ctx, "FROM busybox:bare\n", &[]);
    let bare_layer = bare["rootfs"]["diff_ids"][0].clone();
    let (_, plain, _) = build_oci(&k, &ctx, "FROM busybox\n", &[]);
    assert_ne!(plain["rootfs"]["diff_ids"][0], bare_layer);

    let dockerfile = "FROM busybox\nCOPY --from=busybox:latest /bin/busybox /bb\n";
    let (_, config, _) = build_oci(
        &k,
        &ctx,
        dockerfile,
        &[
            "--build-context",
            "docker.io/library/busybox:latest=docker-image://busybox:bare",
        ],
    );
    assert_eq!(config["rootfs"]["diff_ids"][0], bare_layer);

    let (status, body) = http_get(
        &k.registry,
        "/v2/library/busybox/manifests/bare",
        &[(
            "Accept",
            "application/vnd.oci.image.manifest.v1+json, \
             application/vnd.docker.distribution.manifest.v2+json, \
             application/vnd.oci.image.index.v1+json, \
             application/vnd.docker.distribution.manifest.list.v2+json",
        )],
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(status, 200);
    let digest = kiln_oci::sha256(body.as_bytes());
    let flag = format!("base=docker-image://busybox@{digest}");
    let (_, config, _) = build_oci(&k, &ctx, "FROM base\n", &["--build-context", &flag]);
    assert_eq!(config["rootfs"]["diff_ids"][0], bare_layer);
}

/// `target:STAGE`: buildx build refuses it ("failed to find target build for context foo",
/// bake alone knows targets); kiln makes the name another name of the Dockerfile's stage
/// (docs/decisions.md), and keeps buildx's words for a stage that does not exist.
#[test]
fn target_context_names_a_stage() {
    let Some(k) = Kiln::new("target_context_names_a_stage") else {
        return;
    };
    let ctx = k.context("ctx", &[("m.txt", "main\n")]);
    let df = k.dir().join("Dockerfile.target");
    std::fs::write(
        &df,
        "FROM busybox AS build\nRUN echo built > /out\n\
         FROM scratch\nCOPY --from=foo /out /from-alias\n",
    )
    .unwrap();
    let out = k.dir().join("out");
    let local = format!("type=local,dest={}", out.display());
    let df = df.to_str().unwrap();
    k.build(
        &ctx,
        &[
            "-f",
            df,
            "--build-context",
            "foo=target:build",
            "-o",
            &local,
        ],
    )
    .ok();
    assert_eq!(
        std::fs::read_to_string(out.join("from-alias")).unwrap(),
        "built\n"
    );
    let failed = k
        .build(&ctx, &["-f", df, "--build-context", "foo=target:nope"])
        .failed();
    assert!(
        failed
            .stderr
            .contains("failed to find target nope for context foo"),
        "{}",
        failed.stderr
    );
    // FROM can only use a stage defined before it, through another name too.
    let late = k.dir().join("Dockerfile.late");
    std::fs::write(&late, "FROM foo AS first\nRUN true\nFROM busybox AS late\n").unwrap();
    let late = late.to_str().unwrap();
    let args = [
        "-f",
        late,
        "--build-context",
        "foo=target:late",
        "--target",
        "first",
    ];
    let failed = k.build(&ctx, &args).failed();
    assert!(
        failed.stderr.contains(
            "context foo is the stage late (target:late), which must be defined before it is \
             used in FROM"
        ),
        "{}",
        failed.stderr
    );
}

/// `oci-layout://DIR[:TAG][@DIGEST]`: the manifest picked by tag, by digest, or the only one
/// (buildx's rule); blobs are checked against their digests on the way into the store.
#[test]
fn oci_layout_contexts_by_tag_digest_and_checked() {
    let Some(k) = Kiln::new("oci_layout_contexts_by_tag_digest_and_checked") else {
        return;
    };
    let ctx = k.context("ctx", &[("m.txt", "main\n")]);
    let (manifest, _, files) =
        build_oci(&k, &ctx, "FROM busybox\nRUN echo marker > /marker\n", &[]);
    let layout = k.dir().join("layout");
    for (path, data) in &files {
        let p = layout.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
    let mut index: Value = serde_json::from_slice(&files["index.json"]).unwrap();
    let digest = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] = "v1".into();
    std::fs::write(layout.join("index.json"), index.to_string()).unwrap();

    // A fresh data root, so every blob comes from the layout.
    let Some(k2) = Kiln::new("oci_layout_contexts_by_tag_digest_and_checked") else {
        return;
    };
    let dockerfile = "FROM base\nRUN cat /marker > /seen\n";
    for value in [
        format!("base=oci-layout://{}:v1", layout.display()),
        format!("base=oci-layout://{}@{digest}", layout.display()),
        // One manifest: picked whatever the tag (buildx's rule).
        format!("base=oci-layout://{}", layout.display()),
    ] {
        let (_, config, files) = build_oci(&k2, &ctx, dockerfile, &["--build-context", &value]);
        let layers = config["rootfs"]["diff_ids"].as_array().unwrap();
        assert_eq!(
            layers.len(),
            manifest["layers"].as_array().unwrap().len() + 1
        );
        let (m, _) = layout_image(&files);
        let last = layer_files(&files, m["layers"].as_array().unwrap().last().unwrap());
        let seen = last.iter().find(|(p, _)| p == "seen").unwrap();
        assert_eq!(seen.1, b"marker\n");
    }

    // Two manifests and no tag that matches: buildx's words.
    let mut two = index.clone();
    let mut second = two["manifests"][0].clone();
    second["annotations"]["org.opencontainers.image.ref.name"] = "v2".into();
    two["manifests"].as_array_mut().unwrap().push(second);
    std::fs::write(layout.join("index.json"), two.to_string()).unwrap();
    let df = k.dir().join("Dockerfile.layout");
    std::fs::write(&df, dockerfile).unwrap();
    let flag = format!("base=oci-layout://{}", layout.display());
    let failed = k2
        .build(
            &ctx,
            &["-f", df.to_str().unwrap(), "--build-context", &flag],
        )
        .failed();
    assert!(
        failed.stderr.contains(&format!(
            "oci-layout reference \"oci-layout://{}\" could not be resolved: failed to resolve digest",
            layout.display()
        )),
        "{}",
        failed.stderr
    );

    // A layer that does not hash to its name is refused, in a root that lacks it.
    let Some(k3) = Kiln::new("oci_layout_contexts_by_tag_digest_and_checked") else {
        return;
    };
    let last = manifest["layers"].as_array().unwrap().last().unwrap()["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    std::fs::write(layout.join("blobs/sha256").join(&last), b"tampered").unwrap();
    let flag = format!("base=oci-layout://{}:v1", layout.display());
    let failed = k3
        .build(
            &ctx,
            &["-f", df.to_str().unwrap(), "--build-context", &flag],
        )
        .failed();
    assert!(failed.stderr.contains("digest"), "{}", failed.stderr);
    assert!(failed.stderr.contains(&last), "{}", failed.stderr);
}

/// A Git URL named context is a Git source: `COPY --from` reads the checkout.
#[test]
fn git_url_named_context() {
    let Some(k) = Kiln::new("git_url_named_context") else {
        return;
    };
    let Some(server) = crate::git::GitServer::start(&k.test, k.dir().join("srv")) else {
        return;
    };
    server.repo("src.git", &[("hello.txt", "from git\n")], "first");
    let ctx = k.context("ctx", &[("m.txt", "main\n")]);
    let df = k.dir().join("Dockerfile.git");
    std::fs::write(&df, "FROM scratch\nCOPY --from=src /hello.txt /hello.txt\n").unwrap();
    let out = k.dir().join("out");
    let local = format!("type=local,dest={}", out.display());
    let flag = format!("src={}#main", server.url("src.git"));
    k.build(
        &ctx,
        &[
            "-f",
            df.to_str().unwrap(),
            "--build-context",
            &flag,
            "-o",
            &local,
        ],
    )
    .ok();
    assert_eq!(
        std::fs::read_to_string(out.join("hello.txt")).unwrap(),
        "from git\n"
    );
}

/// A named directory is confined as the build context is: links out of it lead nowhere (the
/// oracle fails the same COPYs with `"/link/passwd": not found`).
#[test]
fn named_dir_links_stay_inside() {
    let Some(k) = Kiln::new("named_dir_links_stay_inside") else {
        return;
    };
    let ctx = k.context("ctx", &[("m.txt", "main\n")]);
    let named = k.context("nc", &[("sub/keep", "x\n")]);
    std::os::unix::fs::symlink("/etc", named.join("link")).unwrap();
    std::os::unix::fs::symlink("../../..", named.join("sub/up")).unwrap();
    let flag = format!("foo={}", named.display());
    for (copy, missing) in [
        ("link/passwd", "\"/link/passwd\": not found"),
        ("sub/up/etc/passwd", "\"/sub/up/etc/passwd\": not found"),
    ] {
        let df = k.dir().join(k.unique("Dockerfile"));
        std::fs::write(&df, format!("FROM scratch\nCOPY --from=foo {copy} /x\n")).unwrap();
        let failed = k
            .build(
                &ctx,
                &["-f", df.to_str().unwrap(), "--build-context", &flag],
            )
            .failed();
        assert!(failed.stderr.contains(missing), "{}", failed.stderr);
    }
}

/// Bad values, each refused with what buildx says about it.
#[test]
fn bad_build_context_values() {
    let Some(k) = Kiln::new("bad_build_context_values") else {
        return;
    };
    let ctx = k.context("ctx", &[("Dockerfile", "FROM foo\n"), ("f.txt", "x\n")]);
    let missing = k.dir().join("missing");
    let file = ctx.join("f.txt");
    let cases = [
        (
            "foo".to_string(),
            "invalid context value: foo, expected key=value".to_string(),
        ),
        ("Foo=/tmp".into(), "invalid context name Foo: ".into()),
        // An unknown scheme is a path, as to buildx.
        (
            "foo=bogus://x".into(),
            "failed to get build context foo: stat bogus://x".into(),
        ),
        (
            format!("foo={}", missing.display()),
            format!(
                "failed to get build context foo: stat {}",
                missing.display()
            ),
        ),
        (
            format!("foo={}", file.display()),
            format!(
                "failed to get build context path {}: not a directory",
                file.display()
            ),
        ),
        (
            "foo=docker-image://busybox:nope".into(),
            "failed to resolve source metadata for `docker.io/library/busybox:nope`".into(),
        ),
    ];
    // Checks read the Dockerfile alone: a named context is refused there, not ignored.
    for call in [&["--check"][..], &["--call", "outline"][..]] {
        let mut args = call.to_vec();
        args.extend(["--build-context", "foo=docker-image://busybox"]);
        let failed = k.build(&ctx, &args).failed();
        assert!(
            failed
                .stderr
                .contains("`--check` and `--call` with `--build-context` are not supported yet"),
            "{}",
            failed.stderr
        );
    }
    for (value, expected) in cases {
        let failed = k.build(&ctx, &["--build-context", &value]).failed();
        assert!(
            failed.stderr.contains(&expected),
            "{value}: expected {expected:?} in\n{}",
            failed.stderr
        );
        assert!(!failed.stderr.contains("panicked"), "{}", failed.stderr);
    }
}

/// An http(s) URL that is not a Git repository is one file named `context` (mode 0600, the
/// server's Last-Modified), not unpacked even when it is a tarball: BuildKit v0.32.2 gave
/// `COPY --from=foo . /x/` exactly `x/` and `x/context` (-rw------- 0/0, the tarball's bytes).
#[test]
fn http_url_named_context_is_one_file() {
    let Some(k) = Kiln::new("http_url_named_context_is_one_file") else {
        return;
    };
    let tarball = {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "a.txt", &b"a\n"[..]).unwrap();
        b.into_inner().unwrap()
    };
    let server = kiln_test::HttpServer::start().unwrap();
    server.route("/ctx.tar", kiln_test::Route::file(None, tarball.clone()));
    let ctx = k.context("ctx", &[("unused", "")]);
    let named = format!("foo={}", server.url("/ctx.tar"));
    let (manifest, _config, files) = build_oci(
        &k,
        &ctx,
        "FROM scratch\nCOPY --from=foo . /x/\n",
        &["--build-context", &named],
    );
    let layer = layer_files(&files, &manifest["layers"][0]);
    assert_eq!(names(&layer), ["x", "x/context"]);
    assert_eq!(layer[1].1, tarball);

    let out = k.dir().join("tar-out.tar");
    let dest = format!("type=tar,dest={}", out.display());
    let df = k.dir().join("Dockerfile.http");
    std::fs::write(&df, "FROM scratch\nCOPY --from=foo . /x/\n").unwrap();
    k.build(
        &ctx,
        &[
            "-f",
            df.to_str().unwrap(),
            "--build-context",
            &named,
            "-o",
            &dest,
        ],
    )
    .ok();
    let mut archive = tar::Archive::new(std::fs::File::open(&out).unwrap());
    let entry = archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap())
        .find(|e| e.path().unwrap().ends_with("context"))
        .unwrap();
    let h = entry.header();
    assert_eq!(h.mode().unwrap() & 0o7777, 0o600);
    assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (0, 0));
    assert_eq!(h.mtime().unwrap(), 1445412480, "the server's Last-Modified");

    // A URL the server does not have fails the build, naming it and the status.
    let missing = format!("foo={}", server.url("/missing.tar"));
    let failed = k
        .build(
            &ctx,
            &["-f", df.to_str().unwrap(), "--build-context", &missing],
        )
        .failed();
    assert!(
        failed.stderr.contains("missing.tar") && failed.stderr.contains("404"),
        "{}",
        failed.stderr
    );
}
