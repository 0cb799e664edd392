//! The `kiln build` flags of a single-platform `docker buildx build` (issue 14): `--label`,
//! `-q`, `--metadata-file`, `--network`, `--cgroup-parent`, `--resource`, `--pull`,
//! `--no-cache-filter`, `-f -` and `-`, `--call outline|targets`, `--progress none`,
//! `--add-host NAME:host-gateway` and `--squash`. Expected outputs were recorded
//! with buildx v0.36.1 (see each test).

use std::io::Write as _;
use std::process::Stdio;

use crate::support::{Kiln, Run};

fn inspect(k: &Kiln, name: &str) -> serde_json::Value {
    let out = k.kiln(&["inspect", name]).ok().stdout;
    let v: serde_json::Value = serde_json::from_str(&out).expect("inspect prints JSON");
    v[0].clone()
}

/// `kiln ARGS` with `stdin` written to its standard input.
fn with_stdin(k: &Kiln, args: &[&str], stdin: &str) -> Run {
    let mut cmd = k.command(args);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("starting kiln");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(stdin.as_bytes())
        .expect("writing stdin");
    let out = child.wait_with_output().expect("waiting for kiln");
    Run {
        args: args.iter().map(|a| a.to_string()).collect(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// buildx: `--label` wins over a Dockerfile LABEL of the same key and adds no history entry;
/// `-q` prints only the config digest; `--metadata-file` has `buildx.build.ref`,
/// `containerimage.config.digest`, `containerimage.descriptor` and `containerimage.digest`.
#[test]
fn labels_quiet_and_metadata() {
    let Some(k) = Kiln::new("labels_quiet_and_metadata") else {
        return;
    };
    let ctx = k.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM busybox\nLABEL a=fromdockerfile b=keep\nRUN echo hi > /x\n",
        )],
    );
    let name = k.unique("labels");
    let meta = k.dir().join("meta.json");
    let run = k
        .kiln(&[
            "build",
            "-q",
            "--label",
            "a=fromflag",
            "--label",
            "c=new",
            "-t",
            &name,
            "--metadata-file",
            meta.to_str().unwrap(),
            ctx.to_str().unwrap(),
        ])
        .ok();
    let id = run.stdout.trim_end();
    assert!(
        id.starts_with("sha256:") && id.len() == 71,
        "{:?}",
        run.stdout
    );
    assert_eq!(run.stdout, format!("{id}\n"), "only the image ID");
    assert!(!run.stderr.contains("#1 "), "no progress: {}", run.stderr);

    let image = inspect(&k, &name);
    assert_eq!(
        image["Config"]["Labels"],
        serde_json::json!({"a": "fromflag", "b": "keep", "c": "new"})
    );
    assert_eq!(image["Id"], id);
    let history = k.kiln(&["history", "-q", "--no-trunc", &name]).ok().stdout;
    k.kiln(&["pull", "busybox"]).ok();
    let base = k
        .kiln(&["history", "-q", "--no-trunc", "busybox"])
        .ok()
        .stdout;
    // LABEL and RUN: two entries on top of the base's, none for `--label`.
    assert_eq!(
        history.lines().count(),
        base.lines().count() + 2,
        "{history}"
    );

    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
    let keys: Vec<&str> = meta
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(
        keys,
        [
            "buildx.build.ref",
            "containerimage.config.digest",
            "containerimage.descriptor",
            "containerimage.digest",
            "image.name"
        ]
    );
    assert_eq!(meta["containerimage.config.digest"], id);
    let build_ref = meta["buildx.build.ref"].as_str().unwrap();
    let rest = build_ref.strip_prefix("kiln/kiln0/").expect(build_ref);
    assert!(
        rest.len() == 25
            && rest
                .bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()),
        "{build_ref}"
    );
    assert_eq!(
        meta["containerimage.descriptor"]["digest"],
        meta["containerimage.digest"]
    );
}

/// `--network none` for RUNs without their own `--network`; a RUN's `--network=host` still
/// wins (with the entitlement); `--network host` asks for the entitlement itself, as buildx.
#[test]
fn network_flag_forces_the_default_mode() {
    let Some(k) = Kiln::new("network_flag_forces_the_default_mode") else {
        return;
    };
    let reg = &k.registry;
    let probe = format!("wget -q -O- http://{reg}/v2/ >/dev/null && echo reached || echo cut");
    let dockerfile = format!(
        "FROM busybox\n\
         RUN echo plain; {probe}\n\
         RUN --network=default echo default; {probe}\n\
         RUN --network=host echo host; {probe}\n"
    );
    let ctx = k.context("ctx", &[("Dockerfile", &dockerfile)]);
    let outcome = |run: &Run, step: &str| -> String {
        let logs = run.progress().step(step).logs.clone();
        logs.iter()
            .find(|l| *l == "reached" || *l == "cut")
            .cloned()
            .unwrap_or_else(|| panic!("{step}: {logs:?}"))
    };
    let run = k
        .build(&ctx, &["--network", "none", "--allow", "network.host"])
        .ok();
    assert_eq!(outcome(&run, "echo plain"), "cut");
    assert_eq!(outcome(&run, "echo default"), "cut");
    assert_eq!(outcome(&run, "echo host"), "reached");

    // A different mode is a different step: nothing of the first build is reused.
    let run = k.build(&ctx, &["--network", "host"]).ok();
    assert_eq!(outcome(&run, "echo plain"), "reached");
    assert_eq!(outcome(&run, "echo host"), "reached");

    let run = k.build(&ctx, &["--network", "bridge"]).failed();
    assert!(
        run.stderr.contains(
            "network mode \"bridge\" not supported by buildkit - you can define a custom \
             network for your builder using the network driver-opt in buildx create"
        ),
        "{}",
        run.stderr
    );
    // The config can still refuse the entitlement `--network host` asks for.
    let mut config = std::fs::read_to_string(&k.config).unwrap();
    config.insert_str(0, "insecure-entitlements = []\n");
    std::fs::write(&k.config, config).unwrap();
    let run = k.build(&ctx, &["--network", "host"]).failed();
    assert!(run.stderr.contains("network.host"), "{}", run.stderr);
}

/// `--cgroup-parent` becomes the parent of each RUN's cgroup; `--resource memory=` limits it
/// (a 64 MiB buffer under 16 MiB is killed; cgroup v1 containers have no cgroupfs to read the
/// limit from). Keys and messages as buildx v0.36.1 (`unknown resource "bogus"`).
#[test]
fn cgroup_parent_and_resources() {
    let Some(k) = Kiln::new("cgroup_parent_and_resources") else {
        return;
    };
    let parent = format!("kiln-it-{}", std::process::id());
    let ctx = k.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN cat /proc/self/cgroup\n\
             RUN dd if=/dev/zero of=/dev/null bs=64M count=1 && echo survived\n",
        )],
    );
    let parent_flag = format!("/{parent}");
    let flags = [
        "--cgroup-parent",
        &parent_flag,
        "--resource",
        "cpu-quota=50000",
        "--resource",
        "memory=256m",
    ];
    let roomy = k.build(&ctx, &flags);
    let tight = k.build(&ctx, &[&flags[..4], &["--resource", "memory=16m"]].concat());
    // runc removes the container's own cgroup, not its parents.
    for dir in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten() {
        let _ = std::fs::remove_dir(dir.unwrap().path().join(&parent));
    }
    let _ = std::fs::remove_dir(std::path::Path::new("/sys/fs/cgroup").join(&parent));
    let roomy = roomy.ok();
    let logs = roomy.progress().step("cat /proc/self/cgroup").logs.clone();
    let paths: Vec<&String> = logs.iter().filter(|l| l.contains(":/")).collect();
    assert!(!paths.is_empty(), "{logs:?}");
    assert!(
        paths.iter().all(|l| l.contains(&format!(":/{parent}/"))),
        "{logs:?}"
    );
    let logs = roomy.progress().step("dd if=").logs.clone();
    assert!(logs.iter().any(|l| l == "survived"), "{logs:?}");
    let tight = tight.failed();
    let dd = tight.progress().step("dd if=").clone();
    assert!(dd.error.is_some(), "{}", tight.stderr);
    assert!(!dd.logs.iter().any(|l| l == "survived"), "{}", tight.stderr);

    for (flags, message) in [
        (&["--resource", "bogus=1"][..], "unknown resource \"bogus\""),
        (
            &["--resource", "memory=abc"][..],
            "invalid value \"abc\" for resource memory: invalid size: 'abc'",
        ),
        (
            &["--cgroup-parent", "system.slice:kiln:x"][..],
            "invalid --cgroup-parent",
        ),
    ] {
        let run = k.build(&ctx, flags).failed();
        assert!(run.stderr.contains(message), "{flags:?}: {}", run.stderr);
        assert!(!run.stderr.contains("#1 "), "refused before the build");
    }
}

/// `--pull` resolves base images in the registry only: an image only in the local store is
/// found without it and is an error with it.
#[test]
fn pull_never_falls_back_to_the_local_store() {
    let Some(k) = Kiln::new("pull_never_falls_back_to_the_local_store") else {
        return;
    };
    k.kiln(&["pull", "busybox"]).ok();
    let local = format!("kiln-local-only/{}:1", k.unique("base"));
    k.kiln(&["tag", "busybox", &local]).ok();
    let ctx = k.context(
        "ctx",
        &[("Dockerfile", &format!("FROM {local}\nRUN echo built\n"))],
    );
    k.build(&ctx, &[]).ok();
    let run = k.build(&ctx, &["--pull"]).failed();
    assert!(run.stderr.contains("kiln-local-only"), "{}", run.stderr);
}

/// `--no-cache-filter STAGE`: that stage's steps run again, the others come from the cache.
#[test]
fn no_cache_filter_reruns_only_the_named_stages() {
    let Some(k) = Kiln::new("no_cache_filter_reruns_only_the_named_stages") else {
        return;
    };
    let ctx = k.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM busybox AS base\nRUN echo base > /a\n\
             FROM base AS Mid\nRUN echo mid > /b\n\
             FROM mid\nRUN echo final > /c\n",
        )],
    );
    k.build(&ctx, &[]).ok();
    let run = k.build(&ctx, &["--no-cache-filter", "MID"]).ok();
    let p = run.progress();
    assert!(p.step("echo base").cached, "{}", p.raw());
    assert!(!p.step("echo mid").cached, "{}", p.raw());
    // Its key is unchanged, so what follows still hits the cache.
    assert!(p.step("echo final").cached, "{}", p.raw());
    let run = k
        .build(
            &ctx,
            &["--no-cache-filter", "base,mid", "--no-cache-filter", "nope"],
        )
        .ok();
    let p = run.progress();
    assert!(!p.step("echo base").cached, "{}", p.raw());
    assert!(!p.step("echo mid").cached, "{}", p.raw());
}

/// `kiln build -f - DIR` reads the Dockerfile from stdin and the context from DIR;
/// `kiln build -` has the Dockerfile on stdin and an empty context, as docker build.
#[test]
fn dockerfile_from_stdin() {
    let Some(k) = Kiln::new("dockerfile_from_stdin") else {
        return;
    };
    let ctx = k.context("ctx", &[("f", "data\n")]);
    let name = k.unique("stdin");
    let run = with_stdin(
        &k,
        &[
            "build",
            "--progress",
            "plain",
            "-t",
            &name,
            "-f",
            "-",
            ctx.to_str().unwrap(),
        ],
        "FROM busybox\nCOPY f /f\nRUN grep -q data /f\n",
    )
    .ok();
    assert!(
        run.stderr
            .contains("[internal] load build definition from Dockerfile"),
        "{}",
        run.stderr
    );
    with_stdin(
        &k,
        &["build", "--progress", "plain", "-"],
        "FROM busybox\nRUN echo from-stdin\n",
    )
    .ok();
    // The context of `kiln build -` is empty.
    let run = with_stdin(
        &k,
        &["build", "--progress", "plain", "-"],
        "FROM busybox\nCOPY f /f\n",
    )
    .failed();
    assert!(run.stderr.contains("f"), "{}", run.stderr);
    let run = k.kiln(&["build", "-f", "-", "-"]).failed();
    assert!(
        run.stderr
            .contains("can't use stdin for both build context and dockerfile"),
        "{}",
        run.stderr
    );
}

/// `--call outline` and `--call targets`, text and JSON, byte for byte as buildx v0.36.1
/// printed them for the same Dockerfile (kiln-frontend's outline corpus has more cases).
#[test]
fn call_outline_and_targets_print_as_buildx() {
    let Some(k) = Kiln::new("call_outline_and_targets_print_as_buildx") else {
        return;
    };
    let ctx = k.context(
        "ctx",
        &[(
            "Dockerfile",
            include_str!("../../../kiln-frontend/tests/corpus/outline/doc-comments/Dockerfile"),
        )],
    );
    for (call, want) in [
        (
            "outline",
            include_str!("../../../kiln-frontend/tests/corpus/outline/doc-comments/outline.txt"),
        ),
        (
            "outline,format=json",
            include_str!("../../../kiln-frontend/tests/corpus/outline/doc-comments/outline.json"),
        ),
        (
            "targets",
            include_str!("../../../kiln-frontend/tests/corpus/outline/doc-comments/targets.txt"),
        ),
        (
            "targets,format=json",
            include_str!("../../../kiln-frontend/tests/corpus/outline/doc-comments/targets.json"),
        ),
    ] {
        let run = k
            .kiln(&["build", "--call", call, ctx.to_str().unwrap()])
            .ok();
        assert_eq!(run.stdout, want, "--call {call}");
    }
    let run = k
        .kiln(&["build", "--call", "bogus", ctx.to_str().unwrap()])
        .failed();
    assert!(
        run.stderr.contains("unsupported request frontend.bogus"),
        "{}",
        run.stderr
    );
}

/// `--progress none` prints nothing; `--add-host NAME:host-gateway` maps to the config's
/// `host-gateway-ip` and is an error without it.
#[test]
fn progress_none_and_host_gateway() {
    let Some(k) = Kiln::new("progress_none_and_host_gateway") else {
        return;
    };
    let ctx = k.context(
        "ctx",
        &[("Dockerfile", "FROM busybox\nRUN grep gw /etc/hosts\n")],
    );
    let run = k
        .kiln(&["build", "--progress", "none", ctx.to_str().unwrap()])
        .failed();
    assert!(!run.stderr.contains("#1 "), "{}", run.stderr);
    let ok_ctx = k.context("ok", &[("Dockerfile", "FROM busybox\nRUN true\n")]);
    let run = k
        .kiln(&["build", "--progress", "none", ok_ctx.to_str().unwrap()])
        .ok();
    assert_eq!((run.stdout.as_str(), run.stderr.as_str()), ("", ""));
    // `--progress quiet` is `-q`: the image ID on stdout (buildx v0.36.1 prints it too).
    let run = k
        .kiln(&["build", "--progress", "quiet", ok_ctx.to_str().unwrap()])
        .ok();
    assert!(run.stdout.starts_with("sha256:"), "{}", run.stdout);
    assert_eq!(run.stderr, "");

    let run = k.build(&ctx, &["--add-host", "gw:host-gateway"]).failed();
    assert!(
        run.stderr
            .contains("unable to derive the IP value for host-gateway"),
        "{}",
        run.stderr
    );
    let mut config = std::fs::read_to_string(&k.config).unwrap();
    config.insert_str(0, "host-gateway-ip = \"10.9.8.7\"\n");
    std::fs::write(&k.config, config).unwrap();
    let run = k.build(&ctx, &["--add-host", "gw:host-gateway"]).ok();
    let logs = run.progress().step("grep gw").logs.clone();
    assert!(
        logs.iter()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["10.9.8.7", "gw"]),
        "{logs:?}"
    );
}

/// `--squash`: the final stage's layers become one on top of its base's (a deletion of a base
/// file kept as a whiteout); its history entries stay, marked empty, plus docker's `merge`
/// entry; the image runs with the tree the unsquashed one has.
#[test]
fn squash_merges_the_final_stage_layers() {
    let Some(k) = Kiln::new("squash_merges_the_final_stage_layers") else {
        return;
    };
    let ctx = k.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM busybox\n\
             RUN mkdir /d && echo a > /d/a && echo keep > /k\n\
             RUN rm /d/a && echo b > /d/b\n\
             ENV X=1\n\
             RUN rm /bin/whoami\n",
        )],
    );
    let name = k.unique("squashed");
    let archive = k.dir().join("img.tar");
    let dest = format!("type=oci,dest={}", archive.display());
    k.build(&ctx, &["--squash", "-t", &name, "-o", &dest, "--load"])
        .ok();
    let files = crate::support::read_tar(&archive).unwrap();
    let blob = |digest: &str| -> &Vec<u8> {
        &files[&format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"))]
    };
    let index: serde_json::Value = serde_json::from_slice(&files["index.json"]).unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(blob(index["manifests"][0]["digest"].as_str().unwrap())).unwrap();
    let config: serde_json::Value =
        serde_json::from_slice(blob(manifest["config"]["digest"].as_str().unwrap())).unwrap();
    let history = config["history"].as_array().unwrap();
    let diff_ids = config["rootfs"]["diff_ids"].as_array().unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    // busybox: one layer and two history entries; then the stage's four, all empty, and the
    // merge entry with the one new layer.
    assert_eq!(
        (diff_ids.len(), layers.len(), history.len()),
        (2, 2, 7),
        "{config}"
    );
    for h in &history[2..6] {
        assert_eq!(h["empty_layer"], true, "{h}");
    }
    let last = &history[6];
    assert!(last.get("empty_layer").is_none(), "{last}");
    let comment = last["comment"].as_str().unwrap();
    assert!(
        comment.starts_with("merge sha256:") && comment.ends_with(" to busybox"),
        "{comment}"
    );

    let gz = blob(layers[1]["digest"].as_str().unwrap());
    let mut names = Vec::new();
    let mut tar = tar::Archive::new(flate2::read::MultiGzDecoder::new(gz.as_slice()));
    for e in tar.entries().unwrap() {
        let e = e.unwrap();
        names.push(
            e.path()
                .unwrap()
                .to_string_lossy()
                .trim_end_matches('/')
                .to_string(),
        );
    }
    for want in ["d", "d/b", "k", "bin/.wh.whoami"] {
        assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
    }
    // d/a's content is gone; its whiteout stays (the base might have had a /d/a).
    assert!(!names.iter().any(|n| n == "d/a"), "{names:?}");

    let out = k
        .kiln(&[
            "run",
            "--rm",
            &name,
            "sh",
            "-c",
            "ls /d; cat /k; test ! -e /bin/whoami && echo no-whoami",
        ])
        .ok()
        .stdout;
    assert_eq!(out, "b\nkeep\nno-whoami\n");
}
