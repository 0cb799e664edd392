//! Runs real containers with runc and a busybox rootfs. Needs root and runc; skipped with a
//! printed reason when either is missing, unless `KILN_TEST_REQUIRE_EXTERNAL=1`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln_executor::{
    Error, ExitStatus, Mount, Network, OutputSink, ProcessSpec, RunRequest, RuncExecutor, Sandbox,
    Security, Stdio, User, resolve_user,
};

const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "id", "pwd", "sleep", "env", "false", "true", "ls", "hostname", "touch",
    "unshare", "mount", "grep", "ip", "dd", "wc", "kill",
];
const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n";
const GROUP: &str = "root:x:0:\napp:x:1000:\nwheel:x:10:app\n";

struct Env {
    executor: RuncExecutor,
    _state: tempfile::TempDir,
    rootfs: tempfile::TempDir,
}

/// An executor over a fresh state dir and a busybox rootfs, or `None` (skip) without runc/root.
fn setup() -> Option<Env> {
    let require = std::env::var("KILN_TEST_REQUIRE_EXTERNAL").is_ok_and(|v| v == "1");
    let skip = |reason: String| {
        assert!(!require, "KILN_TEST_REQUIRE_EXTERNAL=1 but {reason}");
        eprintln!("skipping: {reason}");
        None
    };
    if !rustix::process::geteuid().is_root() {
        return skip("runc tests need root".into());
    }
    if !Path::new("/bin/busybox").exists() {
        return skip("no static busybox at /bin/busybox".into());
    }
    let state = tempfile::tempdir().unwrap();
    let executor = match RuncExecutor::new(state.path()) {
        Ok(e) => e,
        Err(e) => return skip(format!("runc unavailable: {e}")),
    };
    let rootfs = tempfile::tempdir().unwrap();
    let r = rootfs.path();
    fs_err::create_dir_all(r.join("bin")).unwrap();
    fs_err::create_dir_all(r.join("etc")).unwrap();
    fs_err::copy("/bin/busybox", r.join("bin/busybox")).unwrap();
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", r.join("bin").join(applet)).unwrap();
    }
    fs_err::write(r.join("etc/passwd"), PASSWD).unwrap();
    fs_err::write(r.join("etc/group"), GROUP).unwrap();
    Some(Env {
        executor,
        _state: state,
        rootfs,
    })
}

/// A container id unique across concurrently running tests (cgroup paths are global).
fn id(test: &str) -> String {
    format!("kiln-test-{}-{test}", std::process::id())
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
    fn sink(&self) -> OutputSink {
        let buf = self.0.clone();
        Box::new(move |b| buf.lock().unwrap().extend_from_slice(b))
    }
}

fn capture() -> (Stdio, Captured, Captured) {
    let (out, err) = (Captured::default(), Captured::default());
    let stdio = Stdio::Capture {
        stdout: out.sink(),
        stderr: err.sink(),
    };
    (stdio, out, err)
}

fn request<'a>(id: String, rootfs: &'a Path, script: &str, stdio: Stdio) -> RunRequest<'a> {
    RunRequest {
        id,
        rootfs,
        process: ProcessSpec {
            args: vec!["/bin/sh".into(), "-c".into(), script.into()],
            env: vec![],
            cwd: "/".into(),
            user: User::default(),
            hostname: "buildkitsandbox".into(),
            terminal: false,
        },
        mounts: vec![],
        stdio,
        network: Network::Host,
        readonly_rootfs: false,
        sandbox: Sandbox::default(),
    }
}

/// No container in runc's state and no bundle left.
fn assert_nothing_left(executor: &RuncExecutor, id: &str) {
    let out = std::process::Command::new(executor.runc_path())
        .arg("--root")
        .arg(executor.runc_root())
        .args(["list", "--quiet"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(!listed.lines().any(|l| l == id), "container left: {listed}");
    let bundles: Vec<PathBuf> = fs_err::read_dir(executor.bundles_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(bundles.is_empty(), "bundles left: {bundles:?}");
}

#[tokio::test]
async fn captures_stdout_stderr_and_exit_code() {
    let Some(env) = setup() else { return };
    let (stdio, out, err) = capture();
    let id = id("capture");
    let req = request(
        id.clone(),
        env.rootfs.path(),
        "echo to-out; echo to-err >&2; exit 3",
        stdio,
    );
    let status = env.executor.run(req).await.unwrap();
    assert_eq!(status, ExitStatus::Code(3));
    assert_eq!(out.text(), "to-out\n");
    assert_eq!(err.text(), "to-err\n");
    assert_nothing_left(&env.executor, &id);

    let (stdio, _, _) = capture();
    let req = request(id.clone(), env.rootfs.path(), "true", stdio);
    assert!(env.executor.run(req).await.unwrap().success());
}

#[tokio::test]
async fn env_cwd_and_defaults() {
    let Some(env) = setup() else { return };
    let (stdio, out, err) = capture();
    let mut req = request(
        id("env"),
        env.rootfs.path(),
        "echo \"$FOO|$PATH|$HOME\"; pwd",
        stdio,
    );
    req.process.env = vec!["FOO=bar baz".into()];
    req.process.cwd = "/work/dir".into();
    let status = env.executor.run(req).await.unwrap();
    assert_eq!(status, ExitStatus::Code(0), "stderr: {}", err.text());
    assert_eq!(
        out.text(),
        format!("bar baz|{}|/root\n/work/dir\n", kiln_executor::DEFAULT_PATH)
    );
    // The working directory is part of the build's result, like Docker's WORKDIR.
    assert!(env.rootfs.path().join("work/dir").is_dir());

    let (stdio, out, _) = capture();
    let mut req = request(id("env2"), env.rootfs.path(), "echo \"$PATH|$HOME\"", stdio);
    req.process.env = vec!["PATH=/bin".into(), "HOME=/h".into()];
    env.executor.run(req).await.unwrap();
    assert_eq!(out.text(), "/bin|/h\n");
}

#[tokio::test]
async fn runs_as_resolved_user() {
    let Some(env) = setup() else { return };
    let user = resolve_user(env.rootfs.path(), "app").unwrap();
    let (stdio, out, err) = capture();
    let mut req = request(id("user"), env.rootfs.path(), "id; echo $HOME", stdio);
    req.process.user = user;
    let status = env.executor.run(req).await.unwrap();
    assert_eq!(status, ExitStatus::Code(0), "stderr: {}", err.text());
    let text = out.text();
    assert!(text.contains("uid=1000(app) gid=1000(app)"), "{text}");
    assert!(text.contains("10(wheel)"), "{text}");
    assert!(text.ends_with("/home/app\n"), "{text}");

    let (stdio, out, _) = capture();
    let mut req = request(id("user2"), env.rootfs.path(), "id -u; id -g", stdio);
    req.process.user = resolve_user(env.rootfs.path(), "4242:4343").unwrap();
    env.executor.run(req).await.unwrap();
    assert_eq!(out.text(), "4242\n4343\n");
}

#[tokio::test]
async fn hostname_and_hosts_file() {
    let Some(env) = setup() else { return };
    let (stdio, out, _) = capture();
    let mut req = request(
        id("hostname"),
        env.rootfs.path(),
        "hostname; cat /etc/hosts; ls /etc/resolv.conf",
        stdio,
    );
    req.process.hostname = "kiln-box".into();
    env.executor.run(req).await.unwrap();
    let text = out.text();
    assert!(text.starts_with("kiln-box\n"), "{text}");
    assert!(text.contains("127.0.0.1\tkiln-box"), "{text}");
    assert!(text.contains("/etc/resolv.conf"), "{text}");
}

#[tokio::test]
async fn rootfs_is_the_writable_root_and_mount_points_are_removed() {
    let Some(env) = setup() else { return };
    let r = env.rootfs.path();
    let (stdio, _, err) = capture();
    let req = request(id("write"), r, "echo hi > /x && touch /etc/hosts", stdio);
    let status = env.executor.run(req).await.unwrap();
    // /etc/hosts is a read-only bind, so touching it fails after /x was written.
    assert_eq!(status, ExitStatus::Code(1));
    assert!(err.text().contains("hosts"), "{}", err.text());
    assert_eq!(fs_err::read_to_string(r.join("x")).unwrap(), "hi\n");
    // runc created these as mount points; they must not end up in the layer.
    for stub in ["etc/hosts", "etc/resolv.conf"] {
        assert!(!r.join(stub).exists(), "{stub} left in rootfs");
    }
    // /proc, /dev and /sys stay, as in BuildKit's layers (empty directories).
    for kept in ["proc", "dev", "sys"] {
        let m = fs_err::metadata(r.join(kept)).unwrap();
        assert!(m.is_dir(), "{kept}");
        assert_eq!(fs_err::read_dir(r.join(kept)).unwrap().count(), 0, "{kept}");
    }

    let (stdio, _, err) = capture();
    let mut req = request(id("readonly"), r, "echo no > /y", stdio);
    req.readonly_rootfs = true;
    let status = env.executor.run(req).await.unwrap();
    assert_ne!(status, ExitStatus::Code(0));
    assert!(err.text().contains("Read-only"), "{}", err.text());
    assert!(!r.join("y").exists());
}

#[tokio::test]
async fn extra_bind_and_tmpfs_mounts() {
    let Some(env) = setup() else { return };
    let host = tempfile::tempdir().unwrap();
    fs_err::write(host.path().join("file"), "from-host").unwrap();
    let (stdio, out, err) = capture();
    let mut req = request(
        id("mounts"),
        env.rootfs.path(),
        "cat /src/file; echo t > /cache/a/t && cat /cache/a/t; echo no > /src/w",
        stdio,
    );
    req.mounts = vec![
        Mount::Bind {
            source: host.path().to_path_buf(),
            destination: "/src".into(),
            readonly: true,
        },
        Mount::Tmpfs {
            destination: "/cache/a".into(),
            size: Some(1 << 20),
        },
    ];
    let status = env.executor.run(req).await.unwrap();
    assert_ne!(status, ExitStatus::Code(0));
    assert_eq!(out.text(), "from-hostt\n");
    assert!(err.text().contains("Read-only"), "{}", err.text());
    assert!(!host.path().join("w").exists());
    assert!(!env.rootfs.path().join("src").exists());
    assert!(!env.rootfs.path().join("cache").exists());
}

/// Polls until `f` holds or panics after 20 s.
async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn dropping_the_future_removes_the_container() {
    let Some(env) = setup() else { return };
    let id = id("cancel");
    let (stdio, out, _) = capture();
    let req = request(
        id.clone(),
        env.rootfs.path(),
        "echo started; sleep 30",
        stdio,
    );
    let mut run = Box::pin(env.executor.run(req));
    tokio::select! {
        r = &mut run => panic!("finished early: {r:?}"),
        () = wait_for("container start", || out.text().contains("started")) => {}
    }
    assert!(env.executor.runc_root().join(&id).exists());
    let start = Instant::now();
    drop(run);
    assert!(start.elapsed() < Duration::from_secs(10));
    assert_nothing_left(&env.executor, &id);
    assert!(find_runc_run(&id).is_none(), "runc still running");
    assert!(!env.rootfs.path().join("etc/hosts").exists());
    // Unmounted: /proc is the empty directory runc made.
    assert_eq!(
        fs_err::read_dir(env.rootfs.path().join("proc"))
            .unwrap()
            .count(),
        0
    );
}

#[tokio::test]
async fn inherit_stdio_runs() {
    let Some(env) = setup() else { return };
    let req = request(id("inherit"), env.rootfs.path(), "exit 7", Stdio::Inherit);
    assert_eq!(env.executor.run(req).await.unwrap(), ExitStatus::Code(7));
}

#[tokio::test]
async fn runc_forwards_signals_to_the_container() {
    let Some(env) = setup() else { return };
    let id = id("signal");
    let (stdio, out, _) = capture();
    let script = "trap 'echo got-term; exit 42' TERM; echo ready; sleep 30 & wait";
    let req = request(id.clone(), env.rootfs.path(), script, stdio);
    let mut run = Box::pin(env.executor.run(req));
    tokio::select! {
        r = &mut run => panic!("finished early: {r:?}"),
        () = wait_for("trap installed", || out.text().contains("ready")) => {}
    }
    // Signal `runc run` itself, as a terminal or a supervisor would.
    let runc_pid = find_runc_run(&id).expect("runc run process");
    rustix::process::kill_process(runc_pid, rustix::process::Signal::TERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("container did not stop")
        .unwrap();
    assert_eq!(status, ExitStatus::Code(42));
    assert!(out.text().contains("got-term"));
    assert_nothing_left(&env.executor, &id);
}

/// The pid of the `runc ... run ... <id>` process.
fn find_runc_run(id: &str) -> Option<rustix::process::Pid> {
    for entry in fs_err::read_dir("/proc").ok()? {
        let entry = entry.ok()?;
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if args.contains(&b"run".as_slice()) && args.contains(&id.as_bytes()) {
            return rustix::process::Pid::from_raw(pid);
        }
    }
    None
}

#[tokio::test]
async fn cleanup_stale_removes_leftovers_of_a_crash() {
    let Some(env) = setup() else { return };
    let id = id("stale");
    let (stdio, out, _) = capture();
    let req = request(
        id.clone(),
        env.rootfs.path(),
        "echo started; sleep 30",
        stdio,
    );
    let mut run = Box::pin(env.executor.run(req));
    tokio::select! {
        r = &mut run => panic!("finished early: {r:?}"),
        () = wait_for("container start", || out.text().contains("started")) => {}
    }
    // A crash: the guard never runs.
    std::mem::forget(run);
    assert!(env.executor.runc_root().join(&id).exists());
    assert!(env.executor.bundles_dir().join(&id).exists());

    env.executor.cleanup_stale().unwrap();
    assert_nothing_left(&env.executor, &id);
}

#[tokio::test]
async fn duplicate_ids_and_bad_requests_are_rejected() {
    let Some(env) = setup() else { return };
    let id = id("dup");
    fs_err::create_dir(env.executor.bundles_dir().join(&id)).unwrap();
    let (stdio, _, _) = capture();
    let req = request(id.clone(), env.rootfs.path(), "true", stdio);
    assert!(matches!(
        env.executor.run(req).await,
        Err(Error::ContainerExists(i)) if i == id
    ));
    // The existing bundle belongs to someone else and must survive.
    assert!(env.executor.bundles_dir().join(&id).exists());

    let (stdio, _, _) = capture();
    let req = request("../escape".into(), env.rootfs.path(), "true", stdio);
    assert!(matches!(
        env.executor.run(req).await,
        Err(Error::InvalidId(_))
    ));
}

#[test]
fn missing_runc_is_a_clear_error() {
    let state = tempfile::tempdir().unwrap();
    let err = RuncExecutor::with_runc(state.path(), Path::new("/nonexistent/runc")).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/runc"), "{err}");
}

/// Runs `script` with `sandbox` and `network`; returns the status and stdout+stderr.
async fn run_with(
    env: &Env,
    test: &str,
    script: &str,
    network: Network,
    sandbox: Sandbox,
) -> (ExitStatus, String) {
    let (stdio, out, err) = capture();
    let mut req = request(id(test), env.rootfs.path(), script, stdio);
    req.network = network;
    req.sandbox = sandbox;
    let status = env.executor.run(req).await.unwrap();
    (status, format!("{}{}", out.text(), err.text()))
}

#[tokio::test]
async fn network_none_has_only_loopback() {
    let Some(env) = setup() else { return };
    let script = "ip -o link; echo routes:; ip route; ip -6 route";
    let (status, text) =
        run_with(&env, "net-none", script, Network::None, Sandbox::default()).await;
    assert!(status.success(), "{text}");
    let links: Vec<&str> = text.lines().take_while(|l| *l != "routes:").collect();
    assert_eq!(links.len(), 1, "{text}");
    assert!(
        links[0].contains("lo:") && links[0].contains("UP"),
        "{text}"
    );
    let routes = text.split("routes:\n").nth(1).unwrap_or_default();
    assert!(!routes.lines().any(|l| l.starts_with("default")), "{text}");
    // The host network, for contrast, has more than loopback.
    let (_, host) = run_with(
        &env,
        "net-host",
        "ip -o link",
        Network::Host,
        Sandbox::default(),
    )
    .await;
    assert!(host.lines().count() > 1, "{host}");
}

#[tokio::test]
async fn seccomp_and_capabilities_confine_the_sandbox() {
    let Some(env) = setup() else { return };
    let script = "grep -E '^(Seccomp|NoNewPrivs|CapEff):' /proc/self/status; \
                  unshare -U true && echo userns-ok; \
                  mount -t tmpfs t /mnt && echo mount-ok; \
                  echo x > /sys/kernel/uevent_helper && echo sys-ok; \
                  echo done";
    let (status, text) =
        run_with(&env, "confined", script, Network::Host, Sandbox::default()).await;
    assert!(status.success(), "{text}");
    assert!(text.contains("Seccomp:\t2"), "{text}");
    assert!(text.contains("NoNewPrivs:\t1"), "{text}");
    assert!(
        !text.contains("userns-ok"),
        "unshare(CLONE_NEWUSER) needs no capability, only seccomp stops it: {text}"
    );
    assert!(!text.contains("mount-ok"), "{text}");
    assert!(!text.contains("sys-ok"), "{text}");

    let insecure = Sandbox {
        security: Security::Insecure,
        ..Sandbox::default()
    };
    let script = "grep -E '^(Seccomp|CapEff):' /proc/self/status; \
                  unshare -U true && echo userns-ok; \
                  mkdir -p /mnt && mount -t tmpfs t /mnt && echo mount-ok; umount /mnt";
    let (status, text) = run_with(&env, "insecure", script, Network::Host, insecure).await;
    assert!(status.success(), "{text}");
    assert!(text.contains("Seccomp:\t0"), "{text}");
    assert!(text.contains("userns-ok"), "{text}");
    assert!(text.contains("mount-ok"), "{text}");
}

#[tokio::test]
async fn devices_are_dockers_default_set() {
    let Some(env) = setup() else { return };
    let script = "ls /dev; echo x > /dev/null && echo null-ok; \
                  dd if=/dev/urandom bs=4 count=1 2>/dev/null | wc -c";
    let (status, text) = run_with(&env, "devices", script, Network::Host, Sandbox::default()).await;
    assert!(status.success(), "{text}");
    assert!(text.contains("null-ok"), "{text}");
    let mut names: Vec<&str> = text
        .lines()
        .take_while(|l| *l != "null-ok")
        .flat_map(|l| l.split_whitespace())
        .collect();
    names.sort();
    let mut expected = [
        "fd", "full", "mqueue", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin",
        "stdout", "tty", "urandom", "zero",
    ];
    expected.sort();
    assert_eq!(names, expected, "{text}");
}

#[tokio::test]
async fn rlimits_and_shm_size_are_applied() {
    let Some(env) = setup() else { return };
    let sandbox = Sandbox {
        rlimits: vec![kiln_executor::Rlimit {
            name: "nofile".into(),
            soft: 1024,
            hard: 2048,
        }],
        shm_size: Some(8 * 1024 * 1024),
        ..Sandbox::default()
    };
    let script = "ulimit -n; ulimit -Hn; grep /dev/shm /proc/mounts";
    let (status, text) = run_with(&env, "limits", script, Network::Host, sandbox).await;
    assert!(status.success(), "{text}");
    assert!(text.starts_with("1024\n2048\n"), "{text}");
    assert!(text.contains("size=8192k"), "{text}");
}

#[tokio::test]
async fn signals_and_oom_kills_are_reported() {
    let Some(env) = setup() else { return };
    // The shell is the namespace's init, which SIGKILL from inside cannot end; its child can.
    let (status, text) = run_with(
        &env,
        "kill",
        "sleep 30 & kill -9 $!; wait $!",
        Network::Host,
        Sandbox::default(),
    )
    .await;
    assert_eq!(
        status,
        ExitStatus::Killed {
            signal: 9,
            oom: false
        },
        "{text}"
    );
    let (status, _) = run_with(
        &env,
        "term",
        "sleep 30 & kill $!; wait $!",
        Network::Host,
        Sandbox::default(),
    )
    .await;
    assert_eq!(
        status.to_string(),
        "exit code: 143: killed by signal 15 (SIGTERM)"
    );

    // A 64 MiB buffer under a 16 MiB limit: the memory cgroup's OOM killer ends dd (not the
    // shell, which as the namespace's init would ignore the SIGKILL).
    let sandbox = Sandbox {
        memory_limit: Some(16 * 1024 * 1024),
        ..Sandbox::default()
    };
    let script = "dd if=/dev/zero of=/dev/null bs=64M count=1";
    let (status, text) = run_with(&env, "oom", script, Network::Host, sandbox).await;
    assert_eq!(
        status,
        ExitStatus::Killed {
            signal: 9,
            oom: true
        },
        "{text}"
    );
}

/// The seccomp filter of container `test`'s init process, read with ptrace while it sleeps.
async fn installed_filter(executor: &RuncExecutor, test: &str) -> Vec<libc::sock_filter> {
    let id = id(test);
    let rootfs = tempfile::tempdir().unwrap();
    let r = rootfs.path();
    fs_err::create_dir_all(r.join("bin")).unwrap();
    fs_err::copy("/bin/busybox", r.join("bin/busybox")).unwrap();
    for applet in ["sh", "echo", "sleep"] {
        std::os::unix::fs::symlink("busybox", r.join("bin").join(applet)).unwrap();
    }
    let (stdio, out, _) = capture();
    let req = request(id.clone(), r, "echo started; sleep 30", stdio);
    let mut run = Box::pin(executor.run(req));
    tokio::select! {
        r = &mut run => panic!("finished early: {r:?}"),
        () = wait_for("container start", || out.text().contains("started")) => {}
    }
    let pid_file = executor.pid_file(&id).expect("executor with pid files");
    // runc writes the pid file once the process runs, which may be after its first output.
    wait_for("the pid file", || {
        std::fs::read_to_string(&pid_file).is_ok_and(|t| !t.trim().is_empty())
    })
    .await;
    let pid: i32 = fs_err::read_to_string(pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let filter = tokio::task::spawn_blocking(move || read_filter(pid))
        .await
        .unwrap();
    drop(run);
    filter
}

/// PTRACE_SECCOMP_GET_FILTER on `pid`'s newest filter; asserts it is its only one.
fn read_filter(pid: i32) -> Vec<libc::sock_filter> {
    const PTRACE_SECCOMP_GET_FILTER: libc::c_uint = 0x420c;
    // SAFETY: ptrace on a process this test started; the buffer has the size the kernel reported.
    unsafe {
        assert_eq!(libc::ptrace(libc::PTRACE_ATTACH, pid, 0, 0), 0, "attach");
        let mut status = 0;
        assert_eq!(libc::waitpid(pid, &mut status, libc::__WALL), pid);
        let n = libc::ptrace(
            PTRACE_SECCOMP_GET_FILTER,
            pid,
            0,
            std::ptr::null_mut::<u8>(),
        );
        assert!(
            n > 0,
            "no seccomp filter: {}",
            std::io::Error::last_os_error()
        );
        let mut buf = vec![
            libc::sock_filter {
                code: 0,
                jt: 0,
                jf: 0,
                k: 0
            };
            n as usize
        ];
        let got = libc::ptrace(PTRACE_SECCOMP_GET_FILTER, pid, 0, buf.as_mut_ptr());
        assert_eq!(got, n);
        let older = libc::ptrace(
            PTRACE_SECCOMP_GET_FILTER,
            pid,
            1,
            std::ptr::null_mut::<u8>(),
        );
        assert!(older < 0, "more than one filter");
        libc::ptrace(libc::PTRACE_DETACH, pid, 0, 0);
        buf
    }
}

/// The filter the seccomp shim installs is the one runc installs for the same profile:
/// libseccomp's program byte for byte, behind a stub with the same checks.
#[tokio::test]
async fn seccomp_shim_installs_the_filter_runc_would() {
    let Some(env) = setup() else { return };
    assert!(
        env.executor.uses_seccomp_shim(),
        "no seccomp shim on this host"
    );
    let pids = tempfile::tempdir().unwrap();
    let shim_state = tempfile::tempdir().unwrap();
    let shimmed = RuncExecutor::new(shim_state.path())
        .unwrap()
        .with_pid_files(pids.path());
    let runc_state = tempfile::tempdir().unwrap();
    let plain = RuncExecutor::new(runc_state.path())
        .unwrap()
        .without_seccomp_shim()
        .with_pid_files(pids.path());
    let ours = installed_filter(&shimmed, "filter-shim").await;
    let runcs = installed_filter(&plain, "filter-runc").await;
    assert!(
        shim_state
            .path()
            .join("seccomp")
            .read_dir()
            .unwrap()
            .count()
            == 1,
        "the compiled program is cached"
    );

    const ENOSYS_RET: u32 = 0x0005_0026;
    let split = |p: &[libc::sock_filter]| {
        let at = p
            .iter()
            .position(|i| i.code == 0x06 && i.k == ENOSYS_RET)
            .expect("an ENOSYS stub");
        let key = |i: &libc::sock_filter| (i.code, i.jt, i.jf, i.k);
        let mut checks: Vec<(u16, u32)> = p[..at]
            .iter()
            .filter(|i| i.code != 0x05)
            .map(|i| (i.code, i.k))
            .collect();
        checks.sort();
        checks.dedup();
        (checks, p[at + 1..].iter().map(key).collect::<Vec<_>>())
    };
    let (our_stub, our_program) = split(&ours);
    let (runc_stub, runc_program) = split(&runcs);
    assert!(runc_program.len() > 100);
    assert_eq!(our_program, runc_program, "libseccomp's program differs");
    assert_eq!(
        our_stub, runc_stub,
        "the ENOSYS stubs check different things"
    );
}

/// A command the shim cannot execute is told apart from a command that exits 127 itself.
#[tokio::test]
async fn a_missing_command_did_not_start() {
    let Some(env) = setup() else { return };
    let (stdio, _, err) = capture();
    let mut req = request(id("missing"), env.rootfs.path(), "", stdio);
    req.process.args = vec!["no-such-command".into()];
    let status = env.executor.run(req).await.unwrap();
    assert_eq!(status, ExitStatus::NotStarted { code: 127 });
    assert!(
        err.text()
            .contains("exec: \"no-such-command\": executable file not found in $PATH"),
        "{}",
        err.text()
    );
    let (status, _) = run_with(
        &env,
        "exit127",
        "exit 127",
        Network::Host,
        Sandbox::default(),
    )
    .await;
    assert_eq!(status, ExitStatus::Code(127));
    // Found on PATH by name, as runc finds it.
    let (stdio, out, _) = capture();
    let mut req = request(id("bypath"), env.rootfs.path(), "", stdio);
    req.process.args = vec!["echo".into(), "found".into()];
    req.process.env = vec!["PATH=/nowhere:/bin".into()];
    assert_eq!(env.executor.run(req).await.unwrap(), ExitStatus::Code(0));
    assert_eq!(out.text(), "found\n");
}
