//! `kiln run -d`, `ps`, `logs`, `stop`, `rm`, `exec`, `-p`, `-v`, `--name`, `--rm`: containers
//! owned by a detached monitor, with busybox (httpd for published ports), and the seeds'
//! flask tutorial end to end once.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::support::{
    Kiln, http_get, mounts_under, registry_has, runc_containers, skip_because, wait_timeout,
    write_files,
};

/// A port nothing listens on right now.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a free port");
    l.local_addr().expect("local address").port()
}

/// Polls `check` until it returns `Some`, failing with `what` after `timeout`.
#[track_caller]
fn eventually<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Force-removes every container of the test when dropped, so a failed test leaves no monitor
/// running and no port bound.
struct RemoveAll<'a>(&'a Kiln);

impl Drop for RemoveAll<'_> {
    fn drop(&mut self) {
        if let Ok(out) = self.0.command(&["ps", "-a", "-q"]).output() {
            for id in String::from_utf8_lossy(&out.stdout).lines() {
                let _ = self.0.command(&["rm", "-f", id]).output();
            }
        }
    }
}

/// A foreground `kiln run`, sent SIGTERM if the test fails before it does.
struct Foreground(std::process::Child);

impl Drop for Foreground {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let pid = rustix::process::Pid::from_child(&self.0);
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            let _ = wait_timeout(&mut self.0, Duration::from_secs(30));
        }
    }
}

fn get(port: u16) -> Option<String> {
    match http_get(
        &format!("127.0.0.1:{port}"),
        "/",
        &[],
        Duration::from_secs(2),
    ) {
        Ok((200, body)) => Some(body),
        _ => None,
    }
}

/// The ids of `kiln ps [-a] -q`.
fn ps_ids(k: &Kiln, all: bool) -> Vec<String> {
    let args: &[&str] = if all {
        &["ps", "-a", "-q"]
    } else {
        &["ps", "-q"]
    };
    k.kiln(args)
        .ok()
        .stdout
        .lines()
        .map(str::to_string)
        .collect()
}

/// Nothing of any container left: no runc container, no mount, no container directory.
#[track_caller]
fn assert_no_containers(k: &Kiln) {
    assert!(
        runc_containers(&k.root).is_empty(),
        "{:?}",
        runc_containers(&k.root)
    );
    assert!(
        mounts_under(&k.root).is_empty(),
        "{:?}",
        mounts_under(&k.root)
    );
    let dirs: Vec<String> = std::fs::read_dir(k.root.join("containers"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.len() == 64)
                .collect()
        })
        .unwrap_or_default();
    assert!(dirs.is_empty(), "container dirs left: {dirs:?}");
    assert!(ps_ids(k, true).is_empty());
}

fn www(k: &Kiln, body: &str) -> String {
    let dir = k.dir().join("www");
    write_files(&dir, &[("index.html", body)]);
    dir.to_string_lossy().into_owned()
}

#[test]
fn run_detached_publishes_a_port_and_is_managed_by_ps_exec_stop_rm() {
    let Some(k) = Kiln::new("run_detached_publishes_a_port_and_is_managed_by_ps_exec_stop_rm")
    else {
        return;
    };
    let _cleanup = RemoveAll(&k);
    let port = free_port();
    let www = www(&k, "hello from a volume\n");
    let publish = format!("{port}:80");
    let volume = format!("{www}:/www:ro");
    let id = k
        .kiln(&[
            "run", "-d", "-p", &publish, "-v", &volume, "--name", "web", "busybox", "httpd", "-f",
            "-vv", "-p", "80", "-h", "/www",
        ])
        .ok()
        .stdout
        .trim()
        .to_string();
    assert_eq!(id.len(), 64, "run -d prints the full id: {id:?}");
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));

    let page = eventually("the published port", Duration::from_secs(30), || get(port));
    assert_eq!(page, "hello from a volume\n");

    let ps = k.kiln(&["ps"]).ok().stdout;
    let row = ps
        .lines()
        .find(|l| l.ends_with(" web"))
        .unwrap_or_else(|| panic!("{ps}"));
    assert!(row.starts_with(&id[..12]), "{ps}");
    assert!(row.contains(&format!("0.0.0.0:{port}->80/tcp")), "{ps}");
    assert!(row.contains(" Up "), "{ps}");
    assert_eq!(ps_ids(&k, false), [id[..12].to_string()]);

    // exec by name, short id and full id; -e, -w, -u reach the process.
    let out = k.kiln(&["exec", "web", "sh", "-c", "echo hi"]).ok().stdout;
    assert_eq!(out, "hi\n");
    let out = k
        .kiln(&[
            "exec",
            "-e",
            "GREETING=hey",
            "-w",
            "/www",
            &id[..12],
            "sh",
            "-c",
            "echo $GREETING $(pwd) $HOSTNAME",
        ])
        .ok()
        .stdout;
    assert_eq!(out, format!("hey /www {}\n", &id[..12]));
    let out = k
        .kiln(&["exec", "-u", "nobody", &id, "id", "-u"])
        .ok()
        .stdout;
    assert_eq!(out, "65534\n");
    let failed = k.kiln(&["exec", "web", "sh", "-c", "exit 7"]);
    assert_eq!(failed.code, Some(7), "{failed:?}");
    // An exec'd process is confined as the container's first one: one seccomp filter.
    let status = k
        .kiln(&["exec", "web", "grep", "^Seccomp", "/proc/self/status"])
        .ok()
        .stdout;
    assert_eq!(status, "Seccomp:\t2\nSeccomp_filters:\t1\n");
    let missing = k.kiln(&["exec", "web", "no-such-command"]);
    assert_eq!(missing.code, Some(127), "{missing:?}");
    assert!(
        missing
            .stderr
            .contains("executable file not found in $PATH"),
        "{missing:?}"
    );
    // The volume is read-only.
    k.kiln(&["exec", "web", "touch", "/www/x"]).failed();

    // The container has its own network namespace: loopback only.
    let dev = k.kiln(&["exec", "web", "cat", "/proc/net/dev"]).ok().stdout;
    let ifaces: Vec<&str> = dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(ifaces, ["lo"], "{dev}");

    // httpd -vv logs each request on stderr.
    let logs = k.kiln(&["logs", "web"]).ok();
    assert!(logs.stderr.contains("url:/\n"), "{logs:?}");

    let removing = k.kiln(&["rm", "web"]).failed();
    assert!(
        removing.stderr.contains("container is running"),
        "{removing:?}"
    );

    // Busybox httpd as PID 1 ignores SIGTERM: stop has to kill it after the timeout.
    assert_eq!(k.kiln(&["stop", "-t", "1", "web"]).ok().stdout, "web\n");
    assert!(
        get(port).is_none(),
        "the port is still published after stop"
    );
    assert!(ps_ids(&k, false).is_empty());
    let ps = k.kiln(&["ps", "-a"]).ok().stdout;
    assert!(ps.contains("Exited (137)"), "{ps}");
    assert!(
        mounts_under(&k.root).is_empty(),
        "the rootfs stays mounted after stop"
    );
    k.kiln(&["exec", "web", "true"]).failed();

    assert_eq!(k.kiln(&["rm", "web"]).ok().stdout, "web\n");
    assert_no_containers(&k);
    k.kiln(&["rm", "web"]).failed();
}

#[test]
fn run_detached_records_logs_and_exit_code() {
    let Some(k) = Kiln::new("run_detached_records_logs_and_exit_code") else {
        return;
    };
    let _cleanup = RemoveAll(&k);
    let id = k
        .kiln(&[
            "run",
            "-d",
            "busybox",
            "sh",
            "-c",
            "echo one; echo two; echo oops >&2; exit 3",
        ])
        .ok()
        .stdout
        .trim()
        .to_string();
    let short = &id[..12];
    let ps = eventually("the container to exit", Duration::from_secs(30), || {
        let ps = k.kiln(&["ps", "-a"]).ok().stdout;
        ps.contains("Exited (3)").then_some(ps)
    });
    assert!(ps.contains(short), "{ps}");
    // Without -a, an exited container is not listed.
    assert!(ps_ids(&k, false).is_empty());

    let logs = k.kiln(&["logs", short]).ok();
    assert_eq!(logs.stdout, "one\ntwo\n");
    assert_eq!(logs.stderr, "oops\n");
    // The tail counts lines of both streams.
    let tail = k.kiln(&["logs", "--tail", "1", short]).ok();
    assert_eq!(
        tail.stdout.lines().count() + tail.stderr.lines().count(),
        1,
        "{tail:?}"
    );
    let tail = k.kiln(&["logs", "--tail", "3", short]).ok();
    assert_eq!(
        (tail.stdout.as_str(), tail.stderr.as_str()),
        ("one\ntwo\n", "oops\n")
    );
    let stamped = k.kiln(&["logs", "-t", short]).ok().stdout;
    let first = stamped.lines().next().unwrap_or_default();
    assert!(first.ends_with("Z one"), "{stamped}");

    // A command runc cannot start is reported by run -d itself.
    let bad = k
        .kiln(&["run", "-d", "--rm", "busybox", "no-such-command"])
        .failed();
    assert!(bad.stderr.contains("no-such-command"), "{bad:?}");

    k.kiln(&["rm", &id]).ok();
    assert_no_containers(&k);
}

#[test]
fn run_rm_removes_the_container_and_frees_its_name() {
    let Some(k) = Kiln::new("run_rm_removes_the_container_and_frees_its_name") else {
        return;
    };
    let _cleanup = RemoveAll(&k);
    k.kiln(&["run", "-d", "--rm", "--name", "once", "busybox", "true"])
        .ok();
    eventually(
        "--rm to remove the container",
        Duration::from_secs(30),
        || ps_ids(&k, true).is_empty().then_some(()),
    );
    assert_no_containers(&k);

    k.kiln(&["run", "-d", "--name", "once", "busybox", "sleep", "60"])
        .ok();
    let taken = k
        .kiln(&["run", "-d", "--name", "once", "busybox", "true"])
        .failed();
    assert!(taken.stderr.contains("already in use"), "{taken:?}");
    k.kiln(&["run", "--name", "bad/name", "busybox", "true"])
        .failed();
    assert_eq!(ps_ids(&k, true).len(), 1);

    // A follower of the logs ends when the container does.
    let mut follow = k
        .command(&["logs", "-f", "once"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting kiln logs -f");
    assert_eq!(k.kiln(&["rm", "-f", "once"]).ok().stdout, "once\n");
    let status = wait_timeout(&mut follow, Duration::from_secs(30)).expect("logs -f ends");
    assert!(status.success(), "{status}");
    assert_no_containers(&k);
}

#[test]
fn run_foreground_publishes_ports_and_returns_the_exit_code() {
    let Some(k) = Kiln::new("run_foreground_publishes_ports_and_returns_the_exit_code") else {
        return;
    };
    let _cleanup = RemoveAll(&k);
    let r = k.kiln(&[
        "run",
        "--rm",
        "-p",
        "80",
        "busybox",
        "sh",
        "-c",
        "echo out; exit 4",
    ]);
    assert_eq!(r.code, Some(4), "{r:?}");
    assert_eq!(r.stdout, "out\n");
    assert_no_containers(&k);

    // Without --rm the exited container stays, as in docker.
    k.kiln(&["run", "--name", "kept", "busybox", "true"]).ok();
    assert!(k.kiln(&["ps", "-a"]).ok().stdout.contains("Exited (0)"));
    k.kiln(&["rm", "kept"]).ok();

    let port = free_port();
    let www = www(&k, "foreground\n");
    let mut child = Foreground(
        k.command(&[
            "run",
            "--rm",
            "-p",
            &format!("127.0.0.1:{port}:80"),
            "-v",
            &format!("{www}:/www"),
            "busybox",
            "httpd",
            "-f",
            "-p",
            "80",
            "-h",
            "/www",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting kiln run"),
    );
    let page = eventually("the published port", Duration::from_secs(30), || get(port));
    assert_eq!(page, "foreground\n");
    let pid = rustix::process::Pid::from_child(&child.0);
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("sending SIGTERM");
    wait_timeout(&mut child.0, Duration::from_secs(30)).expect("kiln run exits after SIGTERM");
    assert!(get(port).is_none());
    assert_no_containers(&k);
}

/// The seeds' tutorial: build hello-world-flask, `run -d -p 8000:5000 --name web`, open
/// localhost:8000, `ps`, `logs`, `exec`, `stop`, `rm`. The only test that uses port 8000.
#[test]
fn flask_tutorial_runs_detached_end_to_end() {
    const TEST: &str = "flask_tutorial_runs_detached_end_to_end";
    let Some(k) = Kiln::new(TEST) else { return };
    let _cleanup = RemoveAll(&k);
    if !registry_has(&k.registry, "library/python", "3.11-slim") {
        skip_because(TEST, "the registry does not serve library/python:3.11-slim");
        return;
    }
    assert!(
        get(8000).is_none(),
        "something already answers on port 8000"
    );
    let ctx = crate::example::example_context();
    let tag = k.unique("hello-world-flask");
    k.build(&ctx, &["-t", &tag]).ok();

    let id = k
        .kiln(&["run", "-d", "-p", "8000:5000", "--name", "web", &tag])
        .ok()
        .stdout
        .trim()
        .to_string();
    let page = eventually("flask on port 8000", Duration::from_secs(120), || get(8000));
    // The app prints $HOSTNAME: the container's short id, as docker sets it.
    assert_eq!(
        page,
        format!("Hello, my first docker images! {}", &id[..12])
    );

    let ps = k.kiln(&["ps"]).ok().stdout;
    assert!(ps.contains("0.0.0.0:8000->5000/tcp"), "{ps}");
    assert!(
        ps.lines()
            .any(|l| l.starts_with(&id[..12]) && l.ends_with(" web")),
        "{ps}"
    );
    let logs = k.kiln(&["logs", "web"]).ok();
    assert!(logs.stderr.contains("\"GET / HTTP/1.0\" 200"), "{logs:?}");
    assert_eq!(
        k.kiln(&["exec", "web", "sh", "-c", "echo hi"]).ok().stdout,
        "hi\n"
    );
    // procps comes from the Dockerfile's apt-get step.
    let top = k
        .kiln(&["exec", "web", "ps", "-o", "args=", "-p", "1"])
        .ok()
        .stdout;
    assert!(top.contains("flask run"), "{top}");

    k.kiln(&["stop", "web"]).ok();
    assert!(get(8000).is_none());
    k.kiln(&["rm", "web"]).ok();
    assert_no_containers(&k);
}
