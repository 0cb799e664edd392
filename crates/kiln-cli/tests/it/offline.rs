//! `kiln build --offline`: base images and `COPY --from=IMAGE` come from the data root (the
//! local image store, or what an earlier build resolved them to), never from a registry. The
//! offline builds here use a config whose docker.io mirror is a dead port, and one also runs
//! with the live registry configured, to show it is not asked.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{KILN, Kiln, Run};

/// A config mapping docker.io to a port nothing listens on.
pub(crate) fn dead_config(k: &Kiln) -> PathBuf {
    let path = k.dir().join("dead.toml");
    std::fs::write(
        &path,
        "[registry.\"docker.io\"]\nmirrors = [\"127.0.0.1:9\"]\n\n[registry.\"127.0.0.1:9\"]\nhttp = true\n",
    )
    .unwrap();
    path
}

/// `kiln --root R --config CONFIG build --progress plain ARGS... CTX`.
pub(crate) fn build_with(k: &Kiln, config: &Path, ctx: &Path, args: &[&str]) -> Run {
    let mut cmd = Command::new(KILN);
    cmd.arg("--root")
        .arg(&k.root)
        .arg("--config")
        .arg(config)
        .args(["build", "--progress", "plain"])
        .args(args)
        .arg(ctx)
        .env_remove("KILN_ROOT")
        .env_remove("KILN_CONFIG");
    k.run(cmd)
}

const DOCKERFILE: &str = "FROM busybox\nCOPY --from=busybox:bare /bin/busybox /bare-busybox\nCOPY f /f\nRUN cat /f && test -x /bare-busybox\n";

#[test]
fn offline_build_needs_a_warmed_store_and_then_uses_no_network() {
    let Some(k) = Kiln::new("offline_build_needs_a_warmed_store_and_then_uses_no_network") else {
        return;
    };
    let dead = dead_config(&k);
    let ctx = k.context("ctx", &[("Dockerfile", DOCKERFILE), ("f", "one\n")]);

    // Nothing stored yet: the first base image is named, with the fix. Even with the live
    // registry configured, --offline does not ask it.
    for config in [&dead, &k.config] {
        let run = build_with(&k, config, &ctx, &["--offline"]).failed();
        assert!(
            run.stderr.contains(
                "`docker.io/library/busybox:latest` (linux/amd64) is not on this machine"
            ) && run.stderr.contains("pull it first (`kiln pull --platform linux/amd64 docker.io/library/busybox:latest`) or build without --offline"),
            "{}",
            run.stderr
        );
    }

    // An online build warms the store: the next offline builds run, with the registry dead.
    k.build(&ctx, &[]).ok();
    std::fs::write(ctx.join("f"), "two\n").unwrap();
    let run = build_with(&k, &dead, &ctx, &["--offline"]).ok();
    let p = run.progress();
    assert!(
        p.step("RUN cat /f").logs.iter().any(|l| l == "two"),
        "{}",
        run.stderr
    );
    assert!(p.step("FROM").cached, "{}", run.stderr);

    // Without --offline the dead registry is an error (busybox was never pulled by name).
    build_with(&k, &dead, &ctx, &[]).failed();
}

#[test]
fn offline_build_uses_a_pulled_image() {
    let Some(k) = Kiln::new("offline_build_uses_a_pulled_image") else {
        return;
    };
    let dead = dead_config(&k);
    k.kiln(&["pull", "busybox:bare"]).ok();
    let ctx = k.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM busybox:bare\nCOPY --from=busybox /bin/busybox /latest-busybox\nRUN echo built\n",
        )],
    );
    // busybox:latest (the COPY --from) was never pulled: named as missing.
    let run = build_with(&k, &dead, &ctx, &["--offline"]).failed();
    assert!(
        run.stderr
            .contains("`docker.io/library/busybox:latest` (linux/amd64) is not on this machine"),
        "{}",
        run.stderr
    );
    k.kiln(&["pull", "busybox"]).ok();
    let run = build_with(&k, &dead, &ctx, &["--offline"]).ok();
    assert!(
        run.progress()
            .step("RUN echo built")
            .logs
            .iter()
            .any(|l| l == "built"),
        "{}",
        run.stderr
    );
}

#[test]
fn offline_refuses_what_needs_a_registry() {
    let Some(k) = Kiln::new("offline_refuses_what_needs_a_registry") else {
        return;
    };
    let ctx = k.context("ctx", &[("Dockerfile", "FROM busybox\n")]);
    let image = format!("{}/offline-push:1", k.registry);
    for (args, what) in [
        (
            vec!["--pull"],
            "--offline with --pull: that needs the network",
        ),
        (
            vec!["--push", "-t", image.as_str()],
            "--offline with a push (--push, type=registry or push=true)",
        ),
        (
            vec!["--cache-from", image.as_str()],
            "--offline with --cache-from type=registry",
        ),
        (
            vec!["--cache-to", image.as_str()],
            "--offline with --cache-to type=registry",
        ),
    ] {
        let mut all = vec!["--offline"];
        all.extend(args);
        let run = k.build(&ctx, &all).failed();
        assert!(run.stderr.contains(what), "{what}: {}", run.stderr);
    }
}
