//! Two kiln processes on one data directory: the second must not clear the first's running
//! step (its overlay mount, step directory or container) as if it were left by a crash.

use std::process::Stdio;
use std::time::Duration;

use crate::support::{Kiln, wait_timeout};

#[test]
fn concurrent_builds_share_a_data_dir() {
    let Some(k) = Kiln::new("concurrent_builds_share_a_data_dir") else {
        return;
    };
    let slow = k.context(
        "slow",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN sleep 2 && echo slow > /slow\n",
        )],
    );
    let fast = k.context(
        "fast",
        &[("Dockerfile", "FROM busybox\nRUN echo fast > /fast\n")],
    );
    let mut first = k
        .command(&["build", "--progress", "plain", slow.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the first build");
    // Let the first build reach its RUN step, then start and finish a second one.
    std::thread::sleep(Duration::from_millis(800));
    k.build(&fast, &[]).ok();
    let status = wait_timeout(&mut first, Duration::from_secs(60)).expect("first build ends");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut first.stderr.take().unwrap(), &mut err).unwrap();
    assert!(status.success(), "the first build failed:\n{err}");
}

/// Issue 18: two kiln processes on one data root run the same step at once: the second waits
/// on the first's lock of the step's cache key, then takes its record (CACHED) instead of
/// running the step again.
#[test]
fn issue_18_two_processes_run_a_shared_step_once() {
    let Some(k) = Kiln::new("issue_18_two_processes_run_a_shared_step_once") else {
        return;
    };
    let run = "RUN --mount=type=cache,id=procs18,target=/c \
               sh -c 'echo ran >> /c/log && echo built > /built && sleep 1'\n";
    let a = k.context("a", &[("Dockerfile", &format!("FROM busybox\n{run}"))]);
    let b = k.context("b", &[("Dockerfile", &format!("FROM busybox\n{run}"))]);
    // busybox is in the store first, so both reach the RUN at about the same time.
    let warm = k.context("warm", &[("Dockerfile", "FROM busybox\nRUN true\n")]);
    k.build(&warm, &[]).ok();
    let spawn = |ctx: &std::path::Path| {
        k.command(&["build", "--progress", "plain", ctx.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting a build")
    };
    let mut builds = [spawn(&a), spawn(&b)];
    let mut cached = 0;
    for child in &mut builds {
        let status = wait_timeout(child, Duration::from_secs(60)).expect("the build ends");
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        assert!(status.success(), "a build failed:\n{err}");
        cached += usize::from(
            crate::support::Progress::parse(&err)
                .step("RUN --mount")
                .cached,
        );
    }
    assert_eq!(cached, 1, "one ran the step, the other found its record");
    let log = std::fs::read_dir(k.root.join("cache-mounts"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.is_dir()
                && p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("procs18-")
        })
        .map(|d| std::fs::read_to_string(d.join("log")).unwrap())
        .expect("the cache mount");
    assert_eq!(log, "ran\n", "the step ran once");
}
