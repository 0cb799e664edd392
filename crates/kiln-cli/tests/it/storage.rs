//! Cache mounts seeded `from` a stage, SSH agents forwarded into RUN (`kiln build --ssh`), and
//! the data directory's accounting: `kiln du` and `kiln prune`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::support::{Kiln, find_program, skip_because};

#[test]
fn cache_mount_seeded_from_a_stage() {
    let Some(k) = Kiln::new("cache_mount_seeded_from_a_stage") else {
        return;
    };
    let dockerfile = "FROM busybox AS seed
RUN mkdir -p /out && echo seeded > /out/s.txt && chown 7:8 /out

FROM busybox
RUN --mount=type=cache,id=c1,target=/c,from=seed,source=/out cp /c/s.txt /first && echo more >> /c/s.txt && stat -c %u:%g /c > /owner
RUN --mount=type=cache,id=c1,target=/c,from=seed,source=out cp /c/s.txt /second
RUN --mount=type=cache,id=c1,target=/c ls -A /c | wc -l > /plain
RUN --mount=type=cache,id=sub,target=/s,source=inner touch /s/f
RUN --mount=type=cache,id=sub,target=/s ls /s/inner > /subdir
";
    let ctx = k.context("ctx", &[("Dockerfile", dockerfile)]);
    let tag = k.unique("seeded");
    k.build(&ctx, &["-t", &tag]).ok();
    let out = k
        .kiln(&[
            "run", &tag, "cat", "/first", "/second", "/owner", "/plain", "/subdir",
        ])
        .ok();
    // Seeded once from the stage, then kept: the second step sees the first one's write. The
    // same id without `from` is another cache (empty), as in BuildKit. Without `from`, `source`
    // is the subdirectory of the cache that is mounted.
    assert_eq!(out.stdout, "seeded\nseeded\nmore\n7:8\n0\nf\n");

    // A changed seed starts a new cache rather than reusing the old one.
    let changed = dockerfile.replace("echo seeded", "echo reseeded");
    std::fs::write(ctx.join("Dockerfile"), changed).unwrap();
    k.build(&ctx, &["-t", &tag]).ok();
    let out = k.kiln(&["run", &tag, "cat", "/first"]).ok();
    assert_eq!(out.stdout, "reseeded\n");
    k.assert_clean();
}

/// An `ssh-agent` the test runs (killed on drop) with a fresh ed25519 key added.
struct TestAgent {
    child: Child,
    socket: PathBuf,
    key: PathBuf,
    /// `SHA256:...` as `ssh-keygen -l` prints it.
    fingerprint: String,
}

impl TestAgent {
    fn start(dir: &Path, test: &str) -> Option<TestAgent> {
        for tool in ["ssh-agent", "ssh-add", "ssh-keygen"] {
            if find_program(tool).is_none() {
                skip_because(test, &format!("{tool} is not installed (openssh-client)"));
                return None;
            }
        }
        let key = dir.join("id_test");
        let st = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "kiln-test", "-f"])
            .arg(&key)
            .status()
            .unwrap();
        assert!(st.success());
        let out = Command::new("ssh-keygen")
            .arg("-lf")
            .arg(key.with_extension("pub"))
            .output()
            .unwrap();
        let fingerprint = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_string();
        let socket = dir.join("agent.sock");
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let agent = TestAgent {
            child,
            socket,
            key,
            fingerprint,
        };
        // Wait until the agent answers (ssh-add fails while the socket is not there yet).
        let mut added = false;
        for _ in 0..500 {
            let st = Command::new("ssh-add")
                .arg(&agent.key)
                .env("SSH_AUTH_SOCK", &agent.socket)
                .stderr(Stdio::null())
                .status()
                .unwrap();
            if st.success() {
                added = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(added, "ssh-add never succeeded");
        Some(agent)
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Lists the agent's keys as `ssh-add -l` does (SHA256 fingerprints), speaking the agent
/// protocol itself: the base images have no ssh-add, and python3 is enough.
const AGENT_LIST: &str = r#"import base64, hashlib, os, socket, struct, sys
path = sys.argv[1] if len(sys.argv) > 1 else os.environ["SSH_AUTH_SOCK"]
s = socket.socket(socket.AF_UNIX)
s.connect(path)
s.sendall(struct.pack(">IB", 1, 11))
def recv(n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            sys.exit("agent closed the connection")
        b += c
    return b
(length,) = struct.unpack(">I", recv(4))
body = recv(length)
assert body[0] == 12, body[0]
(count,) = struct.unpack(">I", body[1:5])
off = 5
for _ in range(count):
    (n,) = struct.unpack(">I", body[off:off + 4])
    blob = body[off + 4:off + 4 + n]
    off += 4 + n
    (m,) = struct.unpack(">I", body[off:off + 4])
    off += 4 + m
    print("SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("="))
"#;

/// Every file under `root` whose bytes contain `needle` (grep: the data root holds whole
/// base images, too much for a byte-by-byte scan in a debug build).
fn files_containing(root: &Path, needle: &str) -> Vec<String> {
    let out = Command::new("grep")
        .args(["-rlF", "-D", "skip", "-e", needle, "--"])
        .arg(root)
        .output()
        .unwrap();
    assert!(
        out.status.code().is_some_and(|c| c <= 1),
        "grep failed: {out:?}"
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn ssh_agent_forwarded_into_run() {
    let Some(k) = Kiln::new("ssh_agent_forwarded_into_run") else {
        return;
    };
    let Some(agent) = TestAgent::start(k.dir(), &k.test) else {
        return;
    };
    let dockerfile = "FROM python:3.11-slim
RUN --mount=type=ssh --mount=target=/ctx echo \"$SSH_AUTH_SOCK\" > /sock && stat -c %a $SSH_AUTH_SOCK > /mode && python3 /ctx/agent_list.py > /default
RUN --mount=type=ssh,id=keys,target=/agent,mode=0666,uid=1 --mount=target=/ctx python3 /ctx/agent_list.py /agent > /keys && stat -c %a:%u /agent >> /keys
RUN --mount=type=ssh,id=absent,target=/nope test ! -e /nope && echo skipped > /absent
";
    let ctx = k.context(
        "ctx",
        &[("Dockerfile", dockerfile), ("agent_list.py", AGENT_LIST)],
    );
    let tag = k.unique("ssh");
    let args = [
        "build".to_string(),
        "--progress".into(),
        "plain".into(),
        "--ssh".into(),
        "default".into(),
        "--ssh".into(),
        format!("keys={}", agent.key.display()),
        "-t".into(),
        tag.clone(),
        ctx.to_string_lossy().into_owned(),
    ];
    let mut cmd = k.command(&args);
    cmd.env("SSH_AUTH_SOCK", &agent.socket);
    let built = k.run(cmd).ok();
    let shown = k
        .kiln(&[
            "run", &tag, "cat", "/sock", "/mode", "/default", "/keys", "/absent",
        ])
        .ok();
    let fp = &agent.fingerprint;
    assert_eq!(
        shown.stdout,
        format!("/run/buildkit/ssh_agent.0\n600\n{fp}\n{fp}\n666:1\nskipped\n")
    );
    // Neither the key nor the agent's socket path is anywhere in the data dir.
    let key = std::fs::read_to_string(&agent.key).unwrap();
    let key_body = key.lines().nth(2).unwrap();
    assert!(files_containing(&k.root, key_body).is_empty());
    let sock = agent.socket.to_string_lossy().into_owned();
    let with_path = files_containing(&k.root, &sock);
    assert!(with_path.is_empty(), "{with_path:?}");
    let progress = &built.stderr;
    assert!(!progress.contains(&sock), "{progress}");
    k.assert_clean();
}

#[test]
fn ssh_required_without_agent_fails() {
    let Some(k) = Kiln::new("ssh_required_without_agent_fails") else {
        return;
    };
    let ctx = k.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN --mount=type=ssh,id=gh,required true\n",
        )],
    );
    let out = k.build(&ctx, &[]).failed();
    assert!(out.stderr.contains("`gh`"), "{}", out.stderr);
    assert!(out.stderr.contains("Dockerfile:2"), "{}", out.stderr);
    k.assert_clean();
}

const COUNTER: &str = "FROM busybox
RUN --mount=type=cache,id=dutest,target=/c echo x >> /c/n && wc -l < /c/n > /count
";

#[test]
fn du_lists_cache_mounts_and_prune_removes_them() {
    let Some(k) = Kiln::new("du_lists_cache_mounts_and_prune_removes_them") else {
        return;
    };
    let ctx = k.context("ctx", &[("Dockerfile", COUNTER)]);
    let tag = k.unique("du");
    k.build(&ctx, &["-t", &tag]).ok();
    let du = k.kiln(&["du"]).ok().stdout;
    assert!(du.contains("exec.cachemount"), "{du}");
    assert!(du.contains("Cache mounts:\t1"), "{du}");
    assert!(du.contains("Images:\t\t1 tagged"), "{du}");
    let verbose = k.kiln(&["du", "--verbose"]).ok().stdout;
    assert!(
        verbose.contains("Description:\tcache mount dutest"),
        "{verbose}"
    );
    assert!(verbose.contains("Type:\t\tregular"), "{verbose}");

    let pruned = k.kiln(&["prune", "-f"]).ok().stdout;
    assert!(pruned.contains("Deleted build cache objects:"), "{pruned}");
    let du = k.kiln(&["du"]).ok().stdout;
    assert!(du.contains("Cache mounts:\t0"), "{du}");
    // As BuildKit: without --all, what a tagged image shares stays (removing it frees nothing).
    assert!(du.contains("regular"), "{du}");
    k.kiln(&["rmi", &tag]).ok();
    k.kiln(&["prune", "-f"]).ok();
    let du = k.kiln(&["du"]).ok().stdout;
    assert!(!du.contains("regular"), "{du}");
    // Base images stay without --all.
    assert!(du.contains("source.image"), "{du}");

    // The step's record and the cache dir are gone: the RUN runs again on an empty cache.
    let p = k.build(&ctx, &["-t", &tag]).ok().progress();
    assert!(!p.step("RUN --mount").cached, "{}", p.raw());
    assert!(p.step("FROM").cached, "{}", p.raw());
    let out = k.kiln(&["run", &tag, "cat", "/count"]).ok();
    assert_eq!(out.stdout.trim(), "1");
    k.assert_clean();
}

#[test]
fn prune_all_keeps_tagged_images_runnable() {
    let Some(k) = Kiln::new("prune_all_keeps_tagged_images_runnable") else {
        return;
    };
    let ctx = k.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN echo kept > /kept\nRUN echo also > /also\n",
        )],
    );
    let tag = k.unique("kept");
    k.build(&ctx, &["-t", &tag]).ok();
    // An untagged build's layers are the garbage prune may take.
    let other = k.context(
        "other",
        &[("Dockerfile", "FROM busybox\nRUN echo gone > /gone\n")],
    );
    k.build(&other, &[]).ok();
    let layers_before = std::fs::read_dir(k.root.join("layers")).unwrap().count();

    let pruned = k.kiln(&["prune", "-a", "-f"]).ok().stdout;
    assert!(pruned.contains("Deleted build cache objects:"), "{pruned}");
    let du = k.kiln(&["du"]).ok().stdout;
    assert!(
        !du.contains("regular") && !du.contains("source.image"),
        "{du}"
    );
    let layers_after = std::fs::read_dir(k.root.join("layers")).unwrap().count();
    assert!(
        layers_after < layers_before,
        "{layers_before} -> {layers_after}"
    );

    let out = k.kiln(&["run", &tag, "cat", "/kept", "/also"]).ok();
    assert_eq!(out.stdout, "kept\nalso\n");
    // And building again works (base image fetched again, every step rerun).
    let p = k.build(&ctx, &["-t", &tag]).ok().progress();
    assert!(!p.step("RUN echo kept").cached, "{}", p.raw());
    k.assert_clean();
}

#[test]
fn prune_filters_and_keep_storage() {
    let Some(k) = Kiln::new("prune_filters_and_keep_storage") else {
        return;
    };
    let ctx = k.context("ctx", &[("Dockerfile", COUNTER)]);
    k.build(&ctx, &[]).ok();

    // Everything is fresh: `until=24h` selects nothing; a huge keep-storage keeps everything.
    for args in [
        &["prune", "-f", "--filter", "until=24h"][..],
        &["prune", "-f", "--keep-storage", "10GB"][..],
        &["prune", "-f", "--filter", "id=ffffffffffffffff"][..],
    ] {
        let out = k.kiln(args).ok().stdout;
        assert!(!out.contains("Deleted"), "{args:?}: {out}");
        assert!(out.contains("Total:\t0B"), "{args:?}: {out}");
    }
    // Only the cache mounts go with type=exec.cachemount: the step itself stays cached.
    let out = k
        .kiln(&["prune", "-f", "--filter", "type=exec.cachemount"])
        .ok()
        .stdout;
    assert_eq!(out.matches('\n').count(), 4, "one object deleted: {out}");
    let du = k.kiln(&["du"]).ok().stdout;
    assert!(
        du.contains("Cache mounts:\t0") && du.contains("regular"),
        "{du}"
    );
    let p = k.build(&ctx, &[]).ok().progress();
    assert!(p.step("RUN --mount").cached, "{}", p.raw());

    // A keep-storage of zero takes what the default allows, by id prefix too.
    let verbose = k.kiln(&["du", "--verbose"]).ok().stdout;
    let regular_id = verbose
        .split("\n\n")
        .find(|b| b.contains("Type:\t\tregular"))
        .and_then(|b| b.lines().next())
        .and_then(|l| l.strip_prefix("ID:\t\t"))
        .unwrap()
        .to_string();
    let out = k
        .kiln(&[
            "prune",
            "-f",
            "--keep-storage",
            "0",
            "--filter",
            &format!("id={}", &regular_id[..12]),
        ])
        .ok()
        .stdout;
    assert!(out.contains(&regular_id), "{out}");
    let p = k.build(&ctx, &[]).ok().progress();
    assert!(!p.step("RUN --mount").cached, "{}", p.raw());

    let bad = k.kiln(&["prune", "-f", "--filter", "until=soon"]).failed();
    assert!(bad.stderr.contains("until=soon"), "{}", bad.stderr);
    k.assert_clean();
}

#[test]
fn prune_without_force_needs_a_terminal() {
    let Some(k) = Kiln::new("prune_without_force_needs_a_terminal") else {
        return;
    };
    let ctx = k.context("ctx", &[("Dockerfile", COUNTER)]);
    k.build(&ctx, &[]).ok();
    let out = k.command(&["prune"]).stdin(Stdio::null()).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--force"), "{stderr}");
    let du = k.kiln(&["du"]).ok().stdout;
    assert!(du.contains("Cache mounts:\t1"), "nothing was removed: {du}");
}

#[test]
fn prune_skips_what_a_running_build_holds() {
    let Some(k) = Kiln::new("prune_skips_what_a_running_build_holds") else {
        return;
    };
    // The step waits for a file the test creates in the (bind-mounted) context.
    let dockerfile = "FROM busybox
RUN --mount=type=cache,id=held,target=/c --mount=target=/ctx touch /c/started && while [ ! -e /ctx/go ]; do sleep 0.05; done
";
    let ctx = k.context("ctx", &[("Dockerfile", dockerfile)]);
    let mut build = k
        .command(&["build", "--progress", "plain"])
        .arg(&ctx)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mounts = k.root.join("cache-mounts");
    let started = || {
        std::fs::read_dir(&mounts)
            .map(|rd| rd.flatten().any(|e| e.path().join("started").exists()))
            .unwrap_or(false)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while !started() {
        assert!(
            build.try_wait().unwrap().is_none(),
            "the build ended before its step started"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "the step never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = k.kiln(&["prune", "-a", "-f"]).ok();
    assert!(
        out.stderr.contains("other kiln processes"),
        "{}",
        out.stderr
    );
    assert!(started(), "the cache mount in use was removed");
    std::fs::write(ctx.join("go"), "").unwrap();
    let status =
        crate::support::wait_timeout(&mut build, std::time::Duration::from_secs(300)).unwrap();
    assert!(status.success());
    let du = k.kiln(&["du"]).ok().stdout;
    assert!(du.contains("Cache mounts:\t1"), "{du}");
    k.assert_clean();
}
