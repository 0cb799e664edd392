//! `kiln builder ...`, `--builder` and `KILN_BUILDER`: builders stored as buildx stores them
//! (in the test's own KILN_BUILDER_CONFIG_DIR), printed with buildx's texts, and builds that run
//! on the embedded builder or stop at a remote one; and the buildkitd.toml keys the embedded
//! builder reads (`root`, `[worker.oci] platforms`, `max-parallelism`).

use std::process::Command;

use crate::support::{Kiln, Run};

fn kiln_env(k: &Kiln, env: &[(&str, &str)], args: &[&str]) -> Run {
    let mut cmd = k.command(args);
    for (key, v) in env {
        cmd.env(key, v);
    }
    k.run(cmd)
}

/// The lines of `ls` for `builder` (its row and its nodes').
fn ls_rows(ls: &str, builder: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut inside = false;
    for line in ls.lines().skip(1) {
        if !line.starts_with(' ') {
            inside = line.split_whitespace().next() == Some(builder);
        }
        if inside {
            out.push(line.trim_end().to_string());
        }
    }
    out
}

#[test]
fn builder_create_ls_inspect_use_rm() {
    let Some(k) = Kiln::new("builder_create_ls_inspect_use_rm") else {
        return;
    };
    let ls = k.kiln(&["builder", "ls"]).ok().stdout;
    let head = ls.lines().next().unwrap();
    assert_eq!(
        head.split_whitespace().collect::<Vec<_>>(),
        [
            "NAME/NODE",
            "DRIVER/ENDPOINT",
            "STATUS",
            "BUILDKIT",
            "PLATFORMS"
        ]
    );
    let default = ls_rows(&ls, "default*");
    assert_eq!(default[0], format!("{:<14}embedded", "default*"), "{ls}");
    let node: Vec<&str> = default[1].split_whitespace().collect();
    assert_eq!(
        &node[..6],
        [
            "\\_",
            "default",
            "\\_",
            k.root.to_str().unwrap(),
            "running",
            &format!("v{}", env!("CARGO_PKG_VERSION"))
        ],
        "{ls}"
    );
    assert!(node[6].starts_with("linux/"), "{ls}");

    let sock = k.dir().join("no-kilnd.sock");
    let addr = format!("unix://{}", sock.display());
    let r = k
        .kiln(&[
            "builder", "create", "--name", "x", "--driver", "remote", &addr,
        ])
        .ok();
    assert_eq!(r.stdout, "x\n");
    let r = k
        .kiln(&[
            "builder",
            "create",
            "--name",
            "y",
            "--driver",
            "remote",
            "--driver-opt",
            "cacert=/tmp/ca.pem,cert=/tmp/c.pem,key=/tmp/k.pem,servername=foo",
            "--platform",
            "linux/arm64,linux/amd64",
            "--use",
            &addr,
        ])
        .ok();
    assert_eq!(r.stdout, "y\n");
    let ls = k.kiln(&["builder", "ls"]).ok().stdout;
    let x = ls_rows(&ls, "x");
    assert_eq!(x.len(), 2, "{ls}");
    assert_eq!(x[0].split_whitespace().collect::<Vec<_>>(), ["x", "remote"]);
    assert_eq!(
        x[1].split_whitespace().collect::<Vec<_>>(),
        ["\\_", "x0", "\\_", addr.as_str(), "inactive"]
    );
    let y = ls_rows(&ls, "y*");
    assert!(
        y[1].ends_with("inactive              linux/amd64*, linux/arm64*"),
        "{ls}"
    );
    assert!(
        ls_rows(&ls, "default").len() == 2,
        "default is no longer current: {ls}"
    );

    // The file is buildx's.
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(k.builder_dir().join("instances/y")).unwrap())
            .unwrap();
    assert_eq!(json["Name"], "y");
    assert_eq!(json["Driver"], "remote");
    assert_eq!(json["Nodes"][0]["Name"], "y0");
    assert_eq!(json["Nodes"][0]["Endpoint"], addr.as_str());
    assert_eq!(json["Nodes"][0]["DriverOpts"]["servername"], "foo");
    assert_eq!(json["Nodes"][0]["Platforms"][0]["architecture"], "arm64");

    // No name: the current builder.
    let out = k.kiln(&["builder", "inspect"]).ok().stdout;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "Name:          y");
    assert_eq!(lines[1], "Driver:        remote");
    assert!(
        lines[2].starts_with("Last Activity: 20") && lines[2].ends_with(" +0000 UTC"),
        "{out}"
    );
    assert_eq!(
        lines[3..].join("\n"),
        format!(
            "\nNodes:\nName:           y0\nEndpoint:       {addr}\n\
             Driver Options: cacert=\"/tmp/ca.pem\" cert=\"/tmp/c.pem\" key=\"/tmp/k.pem\" servername=\"foo\"\n\
             Status:         inactive\nPlatforms:      linux/arm64*, linux/amd64*"
        )
    );
    let r = k.kiln(&["builder", "inspect", "--bootstrap", "y"]).failed();
    assert!(r.stderr.contains("does not answer"), "{}", r.stderr);

    // A second node, then a change to the first (buildx warns).
    let other = format!("unix://{}", k.dir().join("other.sock").display());
    k.kiln(&["builder", "create", "--name", "y", "--append", &other])
        .ok();
    let r = k
        .kiln(&["builder", "create", "--name", "y", "--node", "y0", &other])
        .failed();
    assert!(
        r.stderr
            .contains(&format!("invalid duplicate endpoint {other}")),
        "{}",
        r.stderr
    );
    let third = format!("unix://{}", k.dir().join("third.sock").display());
    let r = k
        .kiln(&["builder", "create", "--name", "y", "--node", "y0", &third])
        .ok();
    assert!(
        r.stderr
            .contains("WARNING: new settings may not be used until builder is restarted"),
        "{}",
        r.stderr
    );
    let out = k.kiln(&["builder", "inspect", "y"]).ok().stdout;
    assert!(
        out.contains(&format!(
            "Name:     y1\nEndpoint: {other}\nStatus:   inactive\n"
        )),
        "{out}"
    );

    let out = k.kiln(&["builder", "inspect", "default"]).ok().stdout;
    assert!(
        out.starts_with("Name:   default\nDriver: embedded\n\nNodes:\nName:             default\n"),
        "{out}"
    );
    assert!(
        out.contains(&format!("Endpoint:         {}\n", k.root.display())),
        "{out}"
    );
    // BuildKit's default GC rules, worded and sized as `buildx inspect` shows them.
    assert!(
        out.contains(
            "GC Policy rule#0:\n All:            false\n \
             Filters:        type==source.local type==exec.cachemount type==source.git.checkout\n \
             Keep Duration:  48h0m0s\n Max Used Space: 488.3MiB\nGC Policy rule#1:\n"
        ),
        "{out}"
    );

    k.kiln(&["builder", "use", "default"]).ok();
    let ls = k.kiln(&["builder", "ls"]).ok().stdout;
    assert_eq!(ls_rows(&ls, "default*").len(), 2, "{ls}");

    let r = k.kiln(&["builder", "rm", "default"]).failed();
    assert_eq!(
        r.stderr,
        "failed to remove default: context builder cannot be removed\nerror: failed to remove one or more builders\n"
    );
    let r = k.kiln(&["builder", "rm", "x", "nonexist"]).failed();
    assert!(r.stderr.contains("x removed\n"), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("failed to remove nonexist: no builder \"nonexist\" found\n"),
        "{}",
        r.stderr
    );
    assert!(!k.builder_dir().join("instances/x").exists());
    let r = k.kiln(&["builder", "inspect", "x"]).failed();
    assert_eq!(r.stderr, "error: no builder \"x\" found\n");
    let r = k.kiln(&["builder", "use", "x"]).failed();
    assert_eq!(
        r.stderr,
        format!(
            "error: failed to find instance \"x\": open {}: no such file or directory\n",
            k.builder_dir().join("instances/x").display()
        )
    );
    k.kiln(&["builder", "use", "y"]).ok();
    let r = k.kiln(&["builder", "rm", "--keep-state"]).ok();
    assert_eq!(
        r.stderr, "y removed\n",
        "rm without a name removes the current builder"
    );
    let ls = k.kiln(&["builder", "ls"]).ok().stdout;
    assert_eq!(
        ls.lines().count(),
        3,
        "only default is left, and current: {ls}"
    );
    assert_eq!(ls_rows(&ls, "default*").len(), 2, "{ls}");
}

#[test]
fn builder_create_errors() {
    let Some(k) = Kiln::new("builder_create_errors") else {
        return;
    };
    for (args, want) in [
        (
            vec!["--name", "z", "--driver", "nope", "tcp://127.0.0.1:1"],
            "error: failed to find driver \"nope\" (known drivers: embedded, remote)\n",
        ),
        (
            vec![
                "--name",
                "z",
                "--driver",
                "remote",
                "--driver-opt",
                "bogus=1",
                "tcp://127.0.0.1:1",
            ],
            "error: failed to initialize builder z (z0): invalid driver option bogus for remote driver\n",
        ),
        (
            vec![
                "--name",
                "z",
                "--driver",
                "remote",
                "--driver-opt",
                "cert=/c",
                "tcp://127.0.0.1:1",
            ],
            "error: failed to initialize builder z (z0): tls enabled, but missing keys cacert, key\n",
        ),
        (
            vec!["--name", "z", "--driver", "remote"],
            "error: no remote endpoint provided\n",
        ),
        (
            vec!["--name", "z", "--driver", "remote", "http://h:1"],
            "error: unrecognized url scheme http\n",
        ),
        (
            vec!["--name", "default", "tcp://127.0.0.1:1"],
            "error: default is a reserved name and cannot be used to identify builder instance\n",
        ),
        (
            vec!["--name", "z", "--append", "tcp://127.0.0.1:1"],
            "error: failed to find instance \"z\" for append\n",
        ),
    ] {
        let mut all = vec!["builder", "create"];
        all.extend(args);
        let r = k.kiln(&all).failed();
        assert_eq!(r.stderr, want, "{all:?}");
    }
    let r = k
        .kiln(&[
            "builder",
            "create",
            "--name",
            "z",
            "--driver",
            "embedded",
            "tcp://127.0.0.1:1",
        ])
        .failed();
    assert!(r.stderr.contains("take no endpoint"), "{}", r.stderr);
    assert!(!k.builder_dir().join("instances/z").exists());
}

#[test]
fn builds_follow_builder_and_kiln_builder() {
    let Some(k) = Kiln::new("builds_follow_builder_and_kiln_builder") else {
        return;
    };
    let ctx = k.context(
        "ctx",
        &[("Dockerfile", "FROM busybox\nRUN echo built > /built\n")],
    );
    let c = ctx.to_str().unwrap();
    k.kiln(&["build", "--builder", "default", "-q", c]).ok();
    let addr = format!("unix://{}", k.dir().join("kilnd.sock").display());
    k.kiln(&["builder", "create", "--name", "remote1", &addr])
        .ok();
    k.kiln(&[
        "builder", "create", "--name", "local1", "--driver", "embedded",
    ])
    .ok();

    let refused = |r: Run| {
        let r = r.failed();
        assert_eq!(r.stderr, "error: remote builders: not supported yet\n");
    };
    // A build on the remote builder goes to the kilnd at its address: none yet, then one.
    let r = k.kiln(&["build", "--builder", "remote1", "-q", c]).failed();
    assert!(r.stderr.contains("kilnd.sock"), "{}", r.stderr);
    let r = k
        .kiln(&["builder", "inspect", "--bootstrap", "remote1"])
        .failed();
    assert!(r.stderr.contains("does not answer"), "{}", r.stderr);
    assert_eq!(k.kilnd_address(), addr);
    // Once it answers, inspect shows what the daemon says of itself.
    let r = k
        .kiln(&["builder", "inspect", "--bootstrap", "remote1"])
        .ok();
    assert!(r.stdout.contains("running"), "{}", r.stdout);
    assert!(r.stdout.contains("linux/amd64"), "{}", r.stdout);
    // The same image as embedded is remote.rs's to check (it needs SOURCE_DATE_EPOCH).
    let remote = k.kiln(&["build", "--builder", "remote1", "-q", c]).ok();
    assert!(remote.stdout.starts_with("sha256:"), "{}", remote.stdout);
    k.kiln(&["--builder", "remote1", "build", "-q", c]).ok();
    kiln_env(&k, &[("KILN_BUILDER", "remote1")], &["build", "-q", c]).ok();
    refused(kiln_env(&k, &[("KILN_BUILDER", "remote1")], &["du"]));
    // --builder wins over KILN_BUILDER; an embedded builder builds here.
    kiln_env(
        &k,
        &[("KILN_BUILDER", "remote1")],
        &["build", "--builder", "local1", "-q", c],
    )
    .ok();
    k.kiln(&["builder", "use", "remote1"]).ok();
    k.kiln(&["build", "-q", c]).ok();
    refused(k.kiln(&["prune", "-f"]));
    kiln_env(&k, &[("KILN_BUILDER", "default")], &["build", "-q", c]).ok();
    let r = k
        .kiln(&["build", "--builder", "nonexist", "-q", c])
        .failed();
    assert_eq!(r.stderr, "error: no builder \"nonexist\" found\n");
    // docker's commands use the local store whatever the current builder is.
    k.kiln(&["images"]).ok();
    let r = k.kiln(&["--builder", "remote1", "images"]).failed();
    assert!(
        r.stderr.contains("this command works on the local store"),
        "{}",
        r.stderr
    );
}

/// `root` in the config is the data root when neither `--root` nor `KILN_ROOT` names one.
#[test]
fn config_root_is_the_data_root() {
    let Some(k) = Kiln::new("config_root_is_the_data_root") else {
        return;
    };
    let root = k.dir().join("from-config");
    let config = k.dir().join("rooted.toml");
    std::fs::write(&config, format!("root = \"{}\"\n", root.display())).unwrap();
    let run = |extra: &[(&str, &std::path::Path)]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
        cmd.arg("--config")
            .arg(&config)
            .args(["builder", "inspect", "default"]);
        cmd.env_remove("KILN_ROOT")
            .env("KILN_BUILDER_CONFIG_DIR", k.builder_dir());
        for (key, v) in extra {
            cmd.env(key, v);
        }
        k.run(cmd).ok().stdout
    };
    let out = run(&[]);
    assert!(
        out.contains(&format!("Endpoint:         {}\n", root.display())),
        "{out}"
    );
    let other = k.dir().join("from-env");
    let out = run(&[("KILN_ROOT", &other)]);
    assert!(
        out.contains(&format!("Endpoint:         {}\n", other.display())),
        "KILN_ROOT wins: {out}"
    );
    std::fs::write(&config, "root = \"/x\"\ndebug = true\n").unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
    cmd.arg("--config")
        .arg(&config)
        .arg("du")
        .env_remove("KILN_ROOT");
    let r = k.run(cmd).failed();
    assert!(
        r.stderr.contains("rooted.toml")
            && r.stderr.contains("line 2")
            && r.stderr.contains("debug logging is not supported yet"),
        "{}",
        r.stderr
    );
}

/// `[worker.oci] platforms`: what the embedded builder advertises, the first one being what a
/// build without `--platform` is for (BuildKit's worker default).
#[test]
fn config_platforms_are_advertised_and_the_default() {
    let Some(k) = Kiln::new("config_platforms_are_advertised_and_the_default") else {
        return;
    };
    let mut text = std::fs::read_to_string(&k.config).unwrap();
    text.push_str("\n[worker.oci]\nplatforms = [\"linux/arm64\", \"linux/amd64\"]\n");
    std::fs::write(&k.config, text).unwrap();
    let out = k.kiln(&["builder", "inspect"]).ok().stdout;
    assert!(
        out.contains("\nPlatforms:        linux/arm64, linux/amd64\n"),
        "{out}"
    );
    let ls = k.kiln(&["builder", "ls"]).ok().stdout;
    assert!(
        ls.lines()
            .nth(2)
            .unwrap()
            .ends_with("linux/amd64, linux/arm64"),
        "{ls}"
    );

    let ctx = k.context("ctx", &[("Dockerfile", "FROM busybox:multi\nLABEL x=y\n")]);
    let meta = k.dir().join("meta.json");
    k.build(&ctx, &["--metadata-file", meta.to_str().unwrap()])
        .ok();
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
    assert_eq!(
        meta["containerimage.descriptor"]["platform"]["architecture"], "arm64",
        "{meta}"
    );
}

/// `max-parallelism = 1`: two independent stages' RUNs take turns instead of overlapping.
#[test]
fn max_parallelism_serializes_steps() {
    let Some(k) = Kiln::new("max_parallelism_serializes_steps") else {
        return;
    };
    let mut text = std::fs::read_to_string(&k.config).unwrap();
    text.push_str("\n[worker.oci]\nmax-parallelism = 1\n");
    std::fs::write(&k.config, text).unwrap();
    let stage = |name: &str| {
        format!(
            "FROM busybox AS {name}\nRUN echo {name} && date +%s > /start && sleep 2 && date +%s > /end\n"
        )
    };
    let dockerfile = format!(
        "{}{}FROM scratch\nCOPY --from=a /start /a.start\nCOPY --from=a /end /a.end\n\
         COPY --from=b /start /b.start\nCOPY --from=b /end /b.end\n",
        stage("a"),
        stage("b")
    );
    let ctx = k.context("ctx", &[("Dockerfile", &dockerfile)]);
    let out = k.dir().join("out");
    k.build(&ctx, &["-o", &format!("type=local,dest={}", out.display())])
        .ok();
    let read = |f: &str| -> u64 {
        std::fs::read_to_string(out.join(f))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let (a, b) = (
        (read("a.start"), read("a.end")),
        (read("b.start"), read("b.end")),
    );
    assert!(
        b.0 >= a.1 || a.0 >= b.1,
        "the RUNs overlapped: a {a:?}, b {b:?}"
    );
}
