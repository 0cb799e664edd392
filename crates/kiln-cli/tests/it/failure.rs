//! A failing RUN: the error names the step, line and exit code, nothing is left behind, and the
//! fixed Dockerfile builds straight away.

use crate::support::{Kiln, wait_timeout};

#[test]
fn failing_run_reports_and_cleans_up() {
    let Some(k) = Kiln::new("failing_run_reports_and_cleans_up") else {
        return;
    };
    let broken = "FROM busybox\nRUN echo setup\nRUN echo before && exit 3\nRUN echo after\n";
    let ctx = k.context("ctx", &[("Dockerfile", broken)]);

    let run = k.build(&ctx, &[]).failed();
    let err = &run.stderr;
    assert!(
        err.contains("ERROR: failed to solve: [3/4] RUN echo before && exit 3:"),
        "the error names the step:\n{err}"
    );
    assert!(
        err.contains("process \"/bin/sh -c echo before && exit 3\" did not complete successfully"),
        "{err}"
    );
    assert!(err.contains("exit code: 3"), "{err}");
    assert!(
        err.contains("Dockerfile:3"),
        "the error gives the line:\n{err}"
    );
    assert!(
        err.contains("3 | RUN echo before && exit 3"),
        "the snippet shows the line:\n{err}"
    );
    let p = run.progress();
    let step = p.step("RUN echo before");
    assert_eq!(step.logs, vec!["before"], "{err}");
    assert!(
        step.error
            .as_deref()
            .is_some_and(|e| e.contains("exit code: 3")),
        "{err}"
    );
    assert!(
        !err.contains("after"),
        "a step after the failure ran:\n{err}"
    );
    k.assert_clean();

    // Fixed: builds at once, reusing the step before the failure.
    std::fs::write(ctx.join("Dockerfile"), broken.replace("exit 3", "exit 0")).unwrap();
    let tag = k.unique("fixed");
    let p = k.build(&ctx, &["-t", &tag]).ok().progress();
    assert!(p.step("RUN echo setup").cached, "{}", p.raw());
    assert!(
        p.step("RUN echo after").logs.iter().any(|l| l == "after"),
        "{}",
        p.raw()
    );
}

/// Ctrl-C in the middle of a RUN: kiln exits 130, the container, its mounts and the step's
/// directories are gone, and the next build reuses what finished before the interrupt.
#[test]
fn interrupted_build_cleans_up_and_rebuilds() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    use std::time::Duration;

    let Some(k) = Kiln::new("interrupted_build_cleans_up_and_rebuilds") else {
        return;
    };
    let slow = "FROM busybox\nRUN echo first > /first\nRUN echo started && sleep 60\n";
    let ctx = k.context("ctx", &[("Dockerfile", slow)]);
    let mut child = k
        .command(&["build", "--progress", "plain", ctx.to_str().unwrap()])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("starting kiln build");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.ends_with(" started") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("the slow RUN step started");
    let pid = rustix::process::Pid::from_child(&child);
    rustix::process::kill_process(pid, rustix::process::Signal::INT).expect("sending SIGINT");
    let status =
        wait_timeout(&mut child, Duration::from_secs(30)).expect("kiln exits after SIGINT");
    assert_eq!(status.code(), Some(130), "exit status after SIGINT");
    k.assert_clean();
    let steps: Vec<_> = std::fs::read_dir(k.root.join("tmp"))
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(steps.is_empty(), "step directories left: {steps:?}");

    std::fs::write(ctx.join("Dockerfile"), slow.replace("sleep 60", "true")).unwrap();
    let p = k.build(&ctx, &[]).ok().progress();
    assert!(p.step("RUN echo first").cached, "{}", p.raw());
}
