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
