//! Loads a docker archive into a real, private dockerd and runs it. Skips (with a reason) when
//! dockerd is not installed, unless `KILN_TEST_REQUIRE_EXTERNAL=1`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use kiln_exporter::{ContentStore, docker};
use kiln_oci::Reference;

use crate::support::{Layer, build_image};

fn find_program(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}

/// Whether a test needing `what` should skip; panics instead when externals are required.
fn skip_without(what: &str, missing: bool) -> bool {
    if !missing {
        return false;
    }
    if std::env::var("KILN_TEST_REQUIRE_EXTERNAL").as_deref() == Ok("1") {
        panic!("{what} is required (KILN_TEST_REQUIRE_EXTERNAL=1) but not installed");
    }
    eprintln!("skipping: {what} is not installed");
    true
}

/// A dockerd on a private socket and data root; stopped and cleaned up on drop.
struct Dockerd {
    child: Child,
    host: String,
    config: PathBuf,
    dir: PathBuf,
}

impl Dockerd {
    fn start(dockerd: &Path, dir: &Path) -> Result<Self> {
        let log = std::fs::File::create(dir.join("dockerd.log"))?;
        let child = Command::new(dockerd)
            .arg(format!(
                "--host=unix://{}",
                dir.join("docker.sock").display()
            ))
            .arg(format!("--data-root={}", dir.join("root").display()))
            .arg(format!("--exec-root={}", dir.join("exec").display()))
            .arg(format!("--pidfile={}", dir.join("pid").display()))
            .args(["--iptables=false", "--ip6tables=false", "--bridge=none"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting dockerd")?;
        let config = dir.join("client-config");
        std::fs::create_dir_all(&config)?;
        let mut d = Dockerd {
            child,
            host: format!("unix://{}", dir.join("docker.sock").display()),
            config,
            dir: dir.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = d.child.try_wait()? {
                bail!("dockerd exited with {status}: {}", d.log());
            }
            if d.docker(&["version"]).is_ok_and(|o| o.status.success()) {
                return Ok(d);
            }
            if Instant::now() > deadline {
                bail!("dockerd did not come up in 60s: {}", d.log());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn log(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn docker(&self, args: &[&str]) -> Result<Output> {
        Ok(Command::new("docker")
            .env("DOCKER_CONFIG", &self.config)
            .arg("-H")
            .arg(&self.host)
            .args(args)
            .output()?)
    }

    /// Runs docker and returns stdout, failing with stderr on a non-zero exit.
    fn run(&self, args: &[&str]) -> Result<String> {
        let out = self.docker(args)?;
        ensure!(
            out.status.success(),
            "docker {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // SIGTERM lets dockerd stop its containerd and unmount its layers.
        let pid = rustix::process::Pid::from_child(&self.child);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn docker_load_accepts_the_archive_and_runs_it() -> Result<()> {
    let dockerd = find_program("dockerd");
    if skip_without("dockerd", dockerd.is_none())
        || skip_without("docker", find_program("docker").is_none())
    {
        return Ok(());
    }
    if skip_without("/bin/busybox", !Path::new("/bin/busybox").is_file()) {
        return Ok(());
    }
    // A short path: the socket path must fit in sun_path.
    let dir = tempfile::Builder::new()
        .prefix("kiln-dk")
        .tempdir_in("/tmp")?;
    let content = ContentStore::open(dir.path().join("content"))?;
    let busybox = std::fs::read("/bin/busybox")?;
    let img = build_image(
        &content,
        &[
            Layer {
                files: vec![("bin/busybox".into(), busybox, 0o755)],
            },
            Layer::text(&[("etc/kiln", "exported by kiln\n")]),
        ],
        "2026-01-02T03:04:05Z",
        false,
    )?;
    let name = "kiln-exporter-test:latest";
    let names: Vec<Reference> = vec![name.parse()?];
    let archive = dir.path().join("image.tar");
    docker::write_archive(
        &content,
        &img.manifest,
        &names,
        std::fs::File::create(&archive)?,
    )?;

    let daemon = Dockerd::start(
        dockerd.as_deref().unwrap_or(Path::new("dockerd")),
        dir.path(),
    )?;
    let loaded = daemon.run(&["load", "-i", &archive.to_string_lossy()])?;
    assert!(
        loaded.contains(&format!("Loaded image: {name}")),
        "{loaded}"
    );

    let inspect = daemon.run(&[
        "image",
        "inspect",
        "--format",
        "{{.Id}} {{json .RepoTags}} {{len .RootFS.Layers}} {{json .RootFS.Layers}}",
        name,
    ])?;
    let diff_ids: Vec<String> = img.diff_ids.iter().map(|d| d.to_string()).collect();
    assert_eq!(
        inspect.trim(),
        format!(
            "{} [\"{name}\"] 2 {}",
            img.config,
            serde_json::to_string(&diff_ids)?
        ),
        "image ID is the config digest, tag and layers as exported"
    );

    let out = daemon.run(&[
        "run",
        "--rm",
        "--network",
        "none",
        name,
        "/bin/busybox",
        "cat",
        "/etc/kiln",
    ])?;
    assert_eq!(out, "exported by kiln\n");
    let out = daemon.run(&[
        "run",
        "--rm",
        "--network",
        "none",
        name,
        "/bin/busybox",
        "echo",
        "hi",
    ])?;
    assert_eq!(out, "hi\n");
    Ok(())
}
