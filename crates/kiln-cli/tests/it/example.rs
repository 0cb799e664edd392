//! The seeds' example: examples/hello-world-flask built on python:3.11-slim, served by
//! `kiln run` on port 5000, and stopped with SIGTERM. The only test that uses port 5000.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::support::{Kiln, http_get, registry_has, skip_because, wait_timeout};

const EXPECTED: &str = "Hello, my first docker images!";

/// The repository's example, the same directory README's demo builds.
pub fn example_context() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello-world-flask")
}

fn get_page() -> Option<String> {
    match http_get("127.0.0.1:5000", "/", &[], Duration::from_secs(2)) {
        Ok((200, body)) => Some(body),
        _ => None,
    }
}

#[test]
fn hello_world_flask_builds_runs_and_stops() {
    const TEST: &str = "hello_world_flask_builds_runs_and_stops";
    let Some(k) = Kiln::new(TEST) else { return };
    if !registry_has(&k.registry, "library/python", "3.11-slim") {
        skip_because(
            TEST,
            &format!(
                "the registry at {} does not serve library/python:3.11-slim",
                k.registry
            ),
        );
        return;
    }
    assert!(
        get_page().is_none(),
        "something already answers on 127.0.0.1:5000; stop it first"
    );

    let ctx = example_context();
    let tag = k.unique("hello-world-flask");
    let t0 = Instant::now();
    k.build(&ctx, &["-t", &tag]).ok();
    eprintln!("{TEST}: built in {:.1}s", t0.elapsed().as_secs_f64());

    let log = k.dir().join("run.log");
    let mut child = k
        .command(&["run", tag.as_str()])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("starting kiln run");
    let deadline = Instant::now() + Duration::from_secs(120);
    let page = loop {
        if let Some(page) = get_page() {
            break page;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "kiln run exited ({status}) before serving:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "no answer on port 5000 within 120s:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(page.contains(EXPECTED), "{page}");

    let pid = rustix::process::Pid::from_child(&child);
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("sending SIGTERM");
    let status =
        wait_timeout(&mut child, Duration::from_secs(30)).expect("kiln run exits after SIGTERM");
    eprintln!("{TEST}: kiln run exited with {status}");
    k.assert_clean();
    assert!(
        get_page().is_none(),
        "port 5000 still answers after kiln run exited"
    );
}
