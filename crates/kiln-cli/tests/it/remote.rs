//! `kiln build --host`: builds through a kilnd on a unix socket (its own data root) give what
//! the embedded build gives, the session sends only what changed, outputs come back, a lost
//! or interrupted client cancels its build, and TCP needs mutual TLS.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::{Kiln, Kilnd, read_tar, registry_has, runc_containers};

const EPOCH: &str = "1700000000";

fn start_kilnd(k: &Kiln) -> Kilnd {
    // A data root of its own, so nothing comes from the embedded builds' cache.
    let root = k.dir().join("kilnd-root");
    let sock = k.dir().join("d.sock");
    Kilnd::start(
        &root,
        &k.config,
        &format!("unix://{}", sock.display()),
        &[],
        &k.dir().join("kilnd.log"),
    )
}

fn host_args<'a>(d: &'a Kilnd, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["--host", d.address.as_str()];
    args.extend_from_slice(extra);
    args
}

/// `kiln build -q ARGS CTX` with SOURCE_DATE_EPOCH; the image ID it prints.
fn image_id(k: &Kiln, ctx: &Path, extra: &[&str]) -> String {
    let mut cmd = k.command(&["build", "-q"]);
    cmd.args(extra).arg(ctx).env("SOURCE_DATE_EPOCH", EPOCH);
    k.run(cmd).ok().stdout.trim().to_string()
}

/// The figures of kilnd's last session, from its `--debug` log line
/// `kilnd: session KEY: N entries, F files sent (B bytes)`: (entries, files, bytes).
fn last_session(d: &Kilnd) -> (u64, u64, u64) {
    let log = d.log_text();
    let line = log
        .lines()
        .rev()
        .find(|l| l.starts_with("kilnd: session "))
        .unwrap_or_else(|| panic!("no session line in:\n{log}"));
    let nums: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    // The key's hex may hold digits too: the figures are the last three numbers.
    let n = nums.len();
    (nums[n - 3], nums[n - 2], nums[n - 1])
}

/// A context with a nested directory, an executable, a symlink and an ignored file. The
/// Dockerfile copies whole directories only: a directory a COPY creates has the build's time,
/// which differs between any two builds, embedded or not.
fn rich_context(k: &Kiln) -> std::path::PathBuf {
    let ctx = k.context(
        "ctx",
        &[
            ("Dockerfile", "FROM busybox\nCOPY src /src\n"),
            ("src/a.txt", "alpha\n"),
            ("src/deep/b.txt", "beta\n"),
            ("src/run.sh", "#!/bin/sh\necho hi\n"),
            ("src/skip.log", "ignored\n"),
            (".dockerignore", "src/*.log\n"),
        ],
    );
    std::fs::set_permissions(
        ctx.join("src/run.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink("run.sh", ctx.join("src/link")).unwrap();
    ctx
}

#[test]
fn remote_build_gives_the_embedded_image() {
    let Some(k) = Kiln::new("remote_build_gives_the_embedded_image") else {
        return;
    };
    let ctx = rich_context(&k);
    let embedded = image_id(&k, &ctx, &[]);
    let d = start_kilnd(&k);
    let remote = image_id(&k, &ctx, &host_args(&d, &[]));
    assert_eq!(remote, embedded, "kilnd log:\n{}", d.log_text());

    // `-o type=oci,dest=` arrives on the client, the same image.
    let dest = k.dir().join("remote.oci.tar");
    let out = format!("type=oci,dest={}", dest.display());
    let mut cmd = k.command(&[
        "build",
        "--progress",
        "plain",
        "--host",
        &d.address,
        "-o",
        &out,
    ]);
    cmd.arg(&ctx).env("SOURCE_DATE_EPOCH", EPOCH);
    let run = k.run(cmd).ok();
    // The progress names the client's file, not the daemon's scratch copy.
    let sending = format!("sending tarball to {}", dest.display());
    assert!(run.stderr.contains(&sending), "{}", run.stderr);
    let files = read_tar(&dest).unwrap();
    let config = embedded.trim_start_matches("sha256:");
    assert!(
        files.contains_key(&format!("blobs/sha256/{config}")),
        "the OCI tarball holds the config {config}: {:?}",
        files.keys().collect::<Vec<_>>()
    );
}

#[test]
fn remote_session_sends_only_what_changed() {
    let Some(k) = Kiln::new("remote_session_sends_only_what_changed") else {
        return;
    };
    let ctx = rich_context(&k);
    let d = start_kilnd(&k);
    let out_dir = k.dir().join("out");
    let out = format!("type=local,dest={}", out_dir.display());
    let build = || {
        k.build(&ctx, &host_args(&d, &["-o", &out])).ok();
        last_session(&d)
    };
    let first = build();
    // Dockerfile, .dockerignore, a.txt, b.txt, run.sh (the link and directories are no bytes;
    // skip.log is ignored).
    assert_eq!(first, (8, 5, first.2), "entries and files sent");
    assert_eq!(
        std::fs::read_to_string(out_dir.join("src/deep/b.txt")).unwrap(),
        "beta\n"
    );
    assert_eq!(
        std::fs::symlink_metadata(out_dir.join("src/run.sh"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o755
    );
    assert_eq!(
        std::fs::read_link(out_dir.join("src/link")).unwrap(),
        Path::new("run.sh")
    );
    assert!(
        !out_dir.join("src/skip.log").exists(),
        ".dockerignore holds remotely"
    );

    let unchanged = build();
    assert_eq!(unchanged, (8, 0, 0), "an unchanged context sends no bytes");

    std::fs::write(ctx.join("src/a.txt"), "alpha, edited\n").unwrap();
    std::fs::remove_file(ctx.join("src/deep/b.txt")).unwrap();
    let edited = build();
    assert_eq!(edited, (7, 1, 14), "only the edited file is sent");
    assert_eq!(
        std::fs::read_to_string(out_dir.join("src/a.txt")).unwrap(),
        "alpha, edited\n"
    );
    std::fs::remove_dir_all(&out_dir).unwrap();
    build();
    assert!(
        !out_dir.join("src/deep/b.txt").exists(),
        "a deleted file is gone from the mirror"
    );
}

/// The error block of `kiln build`'s stderr: everything after the progress.
fn error_block(stderr: &str) -> String {
    stderr
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn remote_errors_read_as_embedded() {
    let Some(k) = Kiln::new("remote_errors_read_as_embedded") else {
        return;
    };
    let syntax = k.context(
        "syntax",
        &[("Dockerfile", "FROM busybox\nRUN true\nCOPPY a b\n")],
    );
    let failing = k.context(
        "failing",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN echo about to fail && exit 3\n",
        )],
    );
    let d = start_kilnd(&k);
    for ctx in [&syntax, &failing] {
        let embedded = k.build(ctx, &[]).failed();
        let remote = k.build(ctx, &host_args(&d, &[])).failed();
        let (e, r) = (error_block(&embedded.stderr), error_block(&remote.stderr));
        assert!(!e.is_empty(), "{}", embedded.stderr);
        assert_eq!(
            r, e,
            "embedded:\n{}\nremote:\n{}",
            embedded.stderr, remote.stderr
        );
    }
}

#[test]
fn remote_push_and_secrets() {
    let Some(k) = Kiln::new("remote_push_and_secrets") else {
        return;
    };
    let ctx = k.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN --mount=type=secret,id=tok tr a-z A-Z < /run/secrets/tok > /tok\n",
        )],
    );
    let secret = k.dir().join("tok");
    std::fs::write(&secret, "s3cr3t-value-for-kilnd").unwrap();
    let d = start_kilnd(&k);
    let repo = k.unique("kiln-remote-push");
    let tag = format!("{}/{repo}:latest", k.registry);
    let secret_arg = format!("id=tok,src={}", secret.display());
    let out = k.dir().join("img.tar");
    let out_arg = format!("type=tar,dest={}", out.display());
    k.build(
        &ctx,
        &host_args(&d, &["--secret", &secret_arg, "-o", &out_arg]),
    )
    .ok();
    let files = read_tar(&out).unwrap();
    // Seen by the RUN (upper-cased, so the value itself is in no layer).
    assert_eq!(files["tok"], b"S3CR3T-VALUE-FOR-KILND");
    k.build(
        &ctx,
        &host_args(&d, &["--secret", &secret_arg, "-t", &tag, "--push"]),
    )
    .ok();
    assert!(registry_has(&k.registry, &repo, "latest"));
    // The secret was never written under the daemon's root.
    let root = k.dir().join("kilnd-root");
    for e in walkdir(&root) {
        if e.is_file()
            && let Ok(bytes) = std::fs::read(&e)
        {
            assert!(
                !bytes.windows(22).any(|w| w == b"s3cr3t-value-for-kilnd"),
                "the secret is in `{}`",
                e.display()
            );
        }
    }
}

fn walkdir(root: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                todo.push(e.path());
            } else if t.is_file() {
                out.push(e.path());
            }
        }
    }
    out
}

/// Starts a build whose RUN sleeps, waits for the container, then `stop`s the client; the
/// daemon's container must be gone within `within`.
fn cancel_case(k: &Kiln, d: &Kilnd, stop: impl FnOnce(&mut std::process::Child), within: Duration) {
    let ctx = k.context(
        &k.unique("sleep"),
        &[(
            "Dockerfile",
            &format!("FROM busybox\nRUN echo {} && sleep 60\n", k.unique("x")),
        )],
    );
    let mut cmd = k.command(&["build", "--progress", "plain", "--host", &d.address]);
    cmd.arg(&ctx)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let root = k.dir().join("kilnd-root");
    let deadline = Instant::now() + Duration::from_secs(60);
    while runc_containers(&root).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the RUN never started: {}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    stop(&mut child);
    let _ = child.wait();
    let stopped = Instant::now();
    while !runc_containers(&root).is_empty() {
        assert!(
            stopped.elapsed() < within,
            "the build still runs {within:?} after its client went: {}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn remote_lost_or_interrupted_client_cancels_its_build() {
    let Some(k) = Kiln::new("remote_lost_or_interrupted_client_cancels_its_build") else {
        return;
    };
    let d = start_kilnd(&k);
    // SIGKILL: the connection drops; runc's kill and cleanup take part of the time.
    cancel_case(&k, &d, |c| c.kill().unwrap(), Duration::from_secs(2));
    // Ctrl-C.
    cancel_case(
        &k,
        &d,
        |c| {
            rustix::process::kill_process(
                rustix::process::Pid::from_child(c),
                rustix::process::Signal::INT,
            )
            .unwrap()
        },
        Duration::from_secs(2),
    );
    // The daemon goes on serving.
    let ctx = k.context("after", &[("Dockerfile", "FROM busybox\nRUN true\n")]);
    k.build(&ctx, &host_args(&d, &[])).ok();
    let root = k.dir().join("kilnd-root");
    assert!(crate::support::mounts_under(&root).is_empty());
}

#[test]
fn kilnd_refuses_tcp_without_tls() {
    let Some(k) = Kiln::new("kilnd_refuses_tcp_without_tls") else {
        return;
    };
    let out = std::process::Command::new(crate::support::kilnd_path())
        .arg("--root")
        .arg(k.dir().join("r"))
        .args(["--addr", "tcp://127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to listen on `tcp://127.0.0.1:0` without TLS"),
        "{err}"
    );
}

struct Pki {
    ca: rcgen::Certificate,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let ca = params.self_signed(&key).unwrap();
        Pki {
            ca,
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A leaf for `names`, written as `<base>.pem` and `<base>-key.pem`.
    fn leaf(&self, dir: &Path, base: &str, names: &[&str], server: bool) {
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, base);
        params.extended_key_usages = vec![match server {
            true => rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            false => rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        }];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        std::fs::write(dir.join(format!("{base}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{base}-key.pem")), key.serialize_pem()).unwrap();
    }
}

#[test]
fn kilnd_over_tcp_needs_a_client_certificate_from_its_ca() {
    let Some(k) = Kiln::new("kilnd_over_tcp_needs_a_client_certificate_from_its_ca") else {
        return;
    };
    let dir = k.dir().join("pki");
    std::fs::create_dir_all(&dir).unwrap();
    let pki = Pki::new("kiln test CA");
    let rogue = Pki::new("rogue CA");
    std::fs::write(dir.join("ca.pem"), pki.ca.pem()).unwrap();
    pki.leaf(&dir, "server", &["localhost", "127.0.0.1"], true);
    pki.leaf(&dir, "client", &["client"], false);
    rogue.leaf(&dir, "rogue", &["client"], false);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let p = |f: &str| dir.join(f).to_string_lossy().into_owned();
    let (cert, key, ca) = (p("server.pem"), p("server-key.pem"), p("ca.pem"));
    let d = Kilnd::start(
        &k.dir().join("kilnd-root"),
        &k.config,
        &format!("tcp://127.0.0.1:{port}"),
        &["--tlscert", &cert, "--tlskey", &key, "--tlscacert", &ca],
        &k.dir().join("kilnd.log"),
    );
    let ctx = k.context("ctx", &[("Dockerfile", "FROM busybox\nRUN true\n")]);
    let build = |client: Option<(&str, &str)>| {
        let mut args = vec!["--host", d.address.as_str(), "--tlscacert", ca.as_str()];
        let (c, kk);
        if let Some((cert, key)) = client {
            (c, kk) = (p(cert), p(key));
            args.extend(["--tlscert", c.as_str(), "--tlskey", kk.as_str()]);
            return k.build(&ctx, &args);
        }
        k.build(&ctx, &args)
    };
    build(Some(("client.pem", "client-key.pem"))).ok();
    let none = build(None).failed();
    assert!(
        none.stderr.contains("cannot connect to kilnd"),
        "{}",
        none.stderr
    );
    let wrong = build(Some(("rogue.pem", "rogue-key.pem"))).failed();
    assert!(
        wrong.stderr.contains("cannot connect to kilnd"),
        "{}",
        wrong.stderr
    );
    // The daemon is unharmed by refused handshakes.
    build(Some(("client.pem", "client-key.pem"))).ok();
    // The client library's `info`, as `kiln builder inspect` calls it.
    let endpoint = kiln_client::Endpoint {
        address: d.address.clone(),
        tls: Some(kiln_client::TlsFiles {
            ca_cert: Some(dir.join("ca.pem")),
            cert: Some(dir.join("client.pem")),
            key: Some(dir.join("client-key.pem")),
            server_name: Some("localhost".into()),
        }),
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (version, platforms) = rt.block_on(kiln_client::info(&endpoint)).unwrap();
    assert_eq!(version, env!("CARGO_PKG_VERSION"));
    assert_eq!(platforms, [kiln_oci::Platform::host().to_string()]);
}

#[test]
fn remote_builds_run_side_by_side_on_one_kilnd() {
    let Some(k) = Kiln::new("remote_builds_run_side_by_side_on_one_kilnd") else {
        return;
    };
    let d = start_kilnd(&k);
    // Three contexts (three sessions) and one failing build, all at once: each gets its own
    // result, and the failure harms none of the others.
    let mut children = Vec::new();
    for i in 0..4 {
        let body = match i {
            3 => "FROM busybox\nRUN sleep 1 && exit 7\n".to_string(),
            _ => format!("FROM busybox\nCOPY f /f\nRUN sleep 1 && cat /f > /g{i}\n"),
        };
        let ctx = k.context(
            &format!("c{i}"),
            &[("Dockerfile", &body), ("f", &format!("{i}\n"))],
        );
        let mut cmd = k.command(&["build", "-q", "--host", &d.address]);
        cmd.arg(&ctx)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        children.push(cmd.spawn().unwrap());
    }
    let outs: Vec<_> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    for (i, o) in outs.iter().enumerate() {
        let err = String::from_utf8_lossy(&o.stderr);
        match i {
            3 => {
                assert!(!o.status.success());
                assert!(err.contains("exit code: 7"), "{err}");
            }
            _ => assert!(o.status.success(), "build {i}: {err}\n{}", d.log_text()),
        }
    }
    let ids: std::collections::BTreeSet<_> = outs[..3]
        .iter()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .collect();
    assert_eq!(ids.len(), 3, "three different images: {ids:?}");
}
