//! The harness: a temp data root and mirror config per test, a way to run `kiln` and read its
//! plain progress, and the after-test checks (no mounts, no runc containers left).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub const KILN: &str = env!("CARGO_BIN_EXE_kiln");

/// `kilnd`, built beside `kiln` in the same target directory (`cargo build -p kilnd`): the
/// CLI's tests cannot name another package's binary.
pub fn kilnd_path() -> PathBuf {
    Path::new(KILN).with_file_name("kilnd")
}

/// `KILN_TEST_REMOTE=1`: every `kiln build` of the suite runs through a kilnd on a unix socket
/// serving the test's own data root and config.
pub fn remote_mode() -> bool {
    std::env::var("KILN_TEST_REMOTE").is_ok_and(|v| v == "1")
}

/// A kilnd started for a test, killed when dropped.
pub struct Kilnd {
    pub child: std::process::Child,
    pub address: String,
    pub log: PathBuf,
}

impl Kilnd {
    /// Starts `kilnd --root ROOT --config CONFIG --debug EXTRA...` listening on `address`, and
    /// waits until it answers (its socket exists or its port accepts).
    pub fn start(root: &Path, config: &Path, address: &str, extra: &[&str], log: &Path) -> Kilnd {
        let kilnd = kilnd_path();
        assert!(
            kilnd.exists(),
            "`{}` is missing: build it first (cargo build -p kilnd)",
            kilnd.display()
        );
        let log_file = std::fs::File::create(log).expect("creating kilnd's log");
        let child = Command::new(&kilnd)
            .arg("--root")
            .arg(root)
            .arg("--config")
            .arg(config)
            .args(["--debug", "--addr", address])
            .args(extra)
            .env_remove("KILN_ROOT")
            .env_remove("KILN_CONFIG")
            .stdout(log_file.try_clone().expect("cloning the log"))
            .stderr(log_file)
            .spawn()
            .expect("starting kilnd");
        let mut d = Kilnd {
            child,
            address: address.to_string(),
            log: log.to_path_buf(),
        };
        d.wait_ready();
        d
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = match self.address.strip_prefix("unix://") {
                Some(p) => std::os::unix::net::UnixStream::connect(p).is_ok(),
                None => self
                    .address
                    .strip_prefix("tcp://")
                    .is_some_and(|a| TcpStream::connect(a).is_ok()),
            };
            if ready {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("kilnd exited ({status}): {}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "kilnd did not start: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Kilnd {
    fn drop(&mut self) {
        // SIGTERM: kilnd stops listening; its builds' guards clean up as the process exits.
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_child(&self.child),
            rustix::process::Signal::TERM,
        );
        if wait_timeout(&mut self.child, Duration::from_secs(10)).is_err() {
            let _ = self.child.kill();
        }
    }
}

/// Whether externals are required (CI): a missing one fails the test instead of skipping it.
pub fn require_external() -> bool {
    kiln_test::externals_required()
}

/// Returns true when the test should skip because `what` is missing; panics under
/// `KILN_TEST_REQUIRE_EXTERNAL=1`.
pub fn skip_because(test: &str, what: &str) -> bool {
    if require_external() {
        panic!("{test}: {what} (required: KILN_TEST_REQUIRE_EXTERNAL=1)");
    }
    eprintln!("skipping {test}: {what}");
    true
}

pub use kiln_test::find_program;

/// The `dockerd` to start for `test`, or `None` (skipping) when docker's daemon or client is
/// missing.
pub fn dockerd_for(test: &str) -> Option<PathBuf> {
    let Some(dockerd) = find_program("dockerd") else {
        skip_because(test, "dockerd is not installed");
        return None;
    };
    if find_program("docker").is_none() {
        skip_because(test, "the docker client is not installed");
        return None;
    }
    Some(dockerd)
}

/// A private dockerd in a short temp dir (its socket path must stay short); the daemon stops
/// before its dir is removed.
pub struct PrivateDockerd {
    pub daemon: kiln_test::Dockerd,
    _dir: tempfile::TempDir,
}

impl PrivateDockerd {
    pub fn start(dockerd: &Path) -> PrivateDockerd {
        let dir = tempfile::Builder::new()
            .prefix("kiln-dk")
            .tempdir_in("/tmp")
            .unwrap();
        let daemon = kiln_test::Dockerd::start(dockerd, dir.path()).expect("starting dockerd");
        PrivateDockerd { daemon, _dir: dir }
    }
}

/// A minimal HTTP/1.0 GET (the registry and the example app speak plain HTTP on loopback).
/// Returns the status code and body.
pub fn http_get(
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Result<(u16, String)> {
    let sock = addr.parse().with_context(|| format!("address `{addr}`"))?;
    let mut stream = TcpStream::connect_timeout(&sock, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad HTTP response from {addr}: {head}"))?;
    Ok((status, body.to_string()))
}

/// Whether the registry at `addr` has `repo:tag`.
pub fn registry_has(addr: &str, repo: &str, tag: &str) -> bool {
    let accept = "application/vnd.docker.distribution.manifest.v2+json, \
                  application/vnd.oci.image.manifest.v1+json, \
                  application/vnd.docker.distribution.manifest.list.v2+json, \
                  application/vnd.oci.image.index.v1+json";
    matches!(
        http_get(
            addr,
            &format!("/v2/{repo}/manifests/{tag}"),
            &[("Accept", accept)],
            Duration::from_secs(10)
        ),
        Ok((200, _))
    )
}

/// What a `kiln` invocation did.
#[derive(Debug)]
pub struct Run {
    pub args: Vec<String>,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from_output(args: Vec<String>, out: Output) -> Self {
        Run {
            args,
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Fails the test with the output unless kiln exited 0.
    #[track_caller]
    pub fn ok(self) -> Self {
        assert_eq!(
            self.code,
            Some(0),
            "kiln {:?} failed:\n{}\n{}",
            self.args,
            self.stdout,
            self.stderr
        );
        self
    }

    /// Fails the test unless kiln exited non-zero.
    #[track_caller]
    pub fn failed(self) -> Self {
        assert!(
            matches!(self.code, Some(c) if c != 0),
            "kiln {:?} should have failed (exit {:?}):\n{}\n{}",
            self.args,
            self.code,
            self.stdout,
            self.stderr
        );
        self
    }

    pub fn progress(&self) -> Progress {
        Progress::parse(&self.stderr)
    }
}

/// One vertex of BuildKit's plain progress (`#N NAME`, `#N CACHED`, `#N DONE 0.1s`...).
#[derive(Debug, Clone, Default)]
pub struct Vertex {
    pub number: u32,
    pub name: String,
    pub cached: bool,
    pub done: bool,
    pub error: Option<String>,
    /// Log lines, without their `#N 0.123 ` prefix.
    pub logs: Vec<String>,
}

impl Vertex {
    /// A build step (`[2/5] RUN ...`, `[stage 1/3] FROM ...`), not `[internal]` (or, building
    /// for several platforms, `[linux/arm64 internal]`) or exporting.
    pub fn is_step(&self) -> bool {
        self.name.starts_with('[')
            && !self.name.starts_with("[internal]")
            && !self.name.contains(" internal] ")
    }
}

#[derive(Debug, Clone)]
pub struct Progress {
    pub vertices: Vec<Vertex>,
    raw: String,
}

impl Progress {
    pub fn parse(text: &str) -> Self {
        let mut vertices: Vec<Vertex> = Vec::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix('#') else {
                continue;
            };
            let Some((num, body)) = rest.split_once(' ') else {
                continue;
            };
            let Ok(number) = num.parse::<u32>() else {
                continue;
            };
            let v = match vertices.iter_mut().position(|v| v.number == number) {
                Some(i) => &mut vertices[i],
                None => {
                    vertices.push(Vertex {
                        number,
                        name: body.to_string(),
                        ..Default::default()
                    });
                    continue;
                }
            };
            if body == "CACHED" {
                v.cached = true;
            } else if body.starts_with("DONE") {
                v.done = true;
            } else if let Some(e) = body.strip_prefix("ERROR") {
                v.error = Some(e.trim_start_matches(':').trim().to_string());
            } else if let Some((t, log)) = body.split_once(' ')
                && t.parse::<f64>().is_ok()
            {
                v.logs.push(log.to_string());
            }
        }
        Progress {
            vertices,
            raw: text.to_string(),
        }
    }

    pub fn steps(&self) -> Vec<&Vertex> {
        self.vertices.iter().filter(|v| v.is_step()).collect()
    }

    /// The one step whose name contains `needle`.
    #[track_caller]
    pub fn step(&self, needle: &str) -> &Vertex {
        let found: Vec<&Vertex> = self
            .steps()
            .into_iter()
            .filter(|v| v.name.contains(needle))
            .collect();
        assert_eq!(
            found.len(),
            1,
            "expected one step matching {needle:?} in:\n{}",
            self.raw
        );
        found[0]
    }

    /// Names of steps that were not cache hits.
    pub fn rebuilt(&self) -> Vec<&str> {
        self.steps()
            .into_iter()
            .filter(|v| !v.cached)
            .map(|v| v.name.as_str())
            .collect()
    }

    pub fn raw(&self) -> &str {
        &self.raw
    }
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// One test's kiln: its own data root and config, checked for leftovers when dropped.
pub struct Kiln {
    pub test: String,
    pub registry: String,
    dir: tempfile::TempDir,
    pub root: PathBuf,
    pub config: PathBuf,
    started: Instant,
    /// Under `KILN_TEST_REMOTE=1`, the kilnd every `kiln build` goes through, with the
    /// config text it read.
    kilnd: std::sync::Mutex<Option<(Kilnd, String)>>,
}

impl Kiln {
    /// A fresh kiln for `test`, or `None` (after printing why) when runc or the test registry
    /// is missing; panics instead under `KILN_TEST_REQUIRE_EXTERNAL=1`.
    pub fn new(test: &str) -> Option<Kiln> {
        let Some(registry) = std::env::var("KILN_TEST_REGISTRY")
            .ok()
            .filter(|r| !r.is_empty())
        else {
            skip_because(test, "KILN_TEST_REGISTRY is not set");
            return None;
        };
        if find_program("runc").is_none() {
            skip_because(test, "runc is not installed");
            return None;
        }
        if !registry_has(&registry, "library/busybox", "latest") {
            skip_because(
                test,
                &format!("the registry at {registry} does not serve library/busybox:latest"),
            );
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("kiln-it-")
            .tempdir()
            .expect("creating a temp dir");
        let root = dir.path().join("root");
        let config = dir.path().join("kiln.toml");
        std::fs::write(
            &config,
            format!("[registry.\"docker.io\"]\nmirrors = [\"{registry}\"]\n\n[registry.\"{registry}\"]\nhttp = true\n"),
        )
        .expect("writing the config");
        Some(Kiln {
            test: test.to_string(),
            registry,
            dir,
            root,
            config,
            started: Instant::now(),
            kilnd: std::sync::Mutex::new(None),
        })
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A name unique to this test run, for images and repositories.
    pub fn unique(&self, base: &str) -> String {
        format!(
            "{base}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Builds and pushes `name`: busybox with `content` in `/base`, so a test can move a tag to
    /// another image and tell which one a build used.
    pub fn push_marked_base(&self, name: &str, content: &str) {
        let ctx = self.context(
            &self.unique("base"),
            &[(
                "Dockerfile",
                &format!("FROM busybox\nRUN echo {content} > /base\n"),
            )],
        );
        self.build(&ctx, &["--push", "-t", name]).ok();
    }

    /// The address of this test's kilnd, on a unix socket in its dir: started on first use,
    /// and restarted when the test has changed the config since (a daemon reads it once).
    pub fn kilnd_address(&self) -> String {
        let sock = self.dir.path().join("kilnd.sock");
        let config = std::fs::read_to_string(&self.config).unwrap_or_default();
        let mut kilnd = self.kilnd.lock().unwrap();
        if kilnd.as_ref().is_none_or(|(_, read)| *read != config) {
            drop(kilnd.take());
            let d = Kilnd::start(
                &self.root,
                &self.config,
                &format!("unix://{}", sock.display()),
                &[],
                &self.dir.path().join("kilnd.log"),
            );
            *kilnd = Some((d, config));
        }
        format!("unix://{}", sock.display())
    }

    /// `kiln --root R --config C ARGS...`, not yet started, with a builder store of its own
    /// (`builders/` in the test's dir, empty: the embedded `default` builder is current). Under
    /// `KILN_TEST_REMOTE=1` a `build` gets `--host` of the test's kilnd.
    pub fn command<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Command {
        let mut cmd = Command::new(KILN);
        cmd.arg("--root")
            .arg(&self.root)
            .arg("--config")
            .arg(&self.config);
        match args.split_first() {
            Some((first, rest)) if remote_mode() && first.as_ref() == "build" => {
                cmd.arg(first)
                    .arg("--host")
                    .arg(self.kilnd_address())
                    .args(rest);
            }
            _ => {
                cmd.args(args);
            }
        }
        cmd.env_remove("KILN_ROOT")
            .env_remove("KILN_CONFIG")
            .env_remove("KILN_BUILDER")
            .env("KILN_BUILDER_CONFIG_DIR", self.builder_dir());
        cmd
    }

    /// Where this test's builders are stored.
    pub fn builder_dir(&self) -> PathBuf {
        self.dir.path().join("builders")
    }

    pub fn kiln<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Run {
        let shown: Vec<String> = args
            .iter()
            .map(|a| a.as_ref().to_string_lossy().into_owned())
            .collect();
        let out = self.command(args).output().expect("running kiln");
        Run::from_output(shown, out)
    }

    /// Runs a command made by [`Kiln::command`] (with its own environment, say) to its end.
    pub fn run(&self, mut cmd: Command) -> Run {
        let shown = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let out = cmd.output().expect("running kiln");
        Run::from_output(shown, out)
    }

    /// `kiln build --progress plain EXTRA... CONTEXT`.
    pub fn build(&self, context: &Path, extra: &[&str]) -> Run {
        let mut args: Vec<String> = vec!["build".into(), "--progress".into(), "plain".into()];
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push(context.to_string_lossy().into_owned());
        self.kiln(&args)
    }

    /// Writes a build context `name` from (path, contents) pairs and returns its directory.
    pub fn context(&self, name: &str, files: &[(&str, &str)]) -> PathBuf {
        let dir = self.dir.path().join(name);
        write_files(&dir, files);
        dir
    }

    /// Fails when something is mounted under the data root or a runc container is left.
    #[track_caller]
    pub fn assert_clean(&self) {
        let mounts = mounts_under(&self.root);
        assert!(
            mounts.is_empty(),
            "{}: mounts left under the data root: {mounts:?}",
            self.test
        );
        let containers = runc_containers(&self.root);
        assert!(
            containers.is_empty(),
            "{}: runc containers left: {containers:?}",
            self.test
        );
    }
}

impl Drop for Kiln {
    fn drop(&mut self) {
        eprintln!(
            "{}: took {:.1}s",
            self.test,
            self.started.elapsed().as_secs_f64()
        );
        if std::thread::panicking() {
            return;
        }
        // The daemon's builds are over: stop it before looking for leftovers.
        if let Ok(mut kilnd) = self.kilnd.lock() {
            drop(kilnd.take());
        }
        self.assert_clean();
    }
}

pub fn write_files(dir: &Path, files: &[(&str, &str)]) {
    for (path, contents) in files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().expect("files have a parent"))
            .expect("creating directories");
        std::fs::write(&path, contents).expect("writing a context file");
    }
    std::fs::create_dir_all(dir).expect("creating the context");
}

/// Mount points at or below `root`, from /proc/self/mountinfo.
pub fn mounts_under(root: &Path) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let root = root.to_string_lossy();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| m.replace("\\040", " "))
        .filter(|m| m == root.as_ref() || m.starts_with(&format!("{root}/")))
        .collect()
}

/// Containers runc still knows about under the data root's executor state (builds' and
/// `kiln run`'s).
pub fn runc_containers(root: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for state in [
        root.join("executor").join("runc"),
        root.join("containers").join("executor").join("runc"),
    ] {
        let out = Command::new("runc")
            .arg("--root")
            .arg(&state)
            .args(["list", "-q"])
            .output();
        match out {
            Ok(o) => found.extend(
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .map(str::to_string)
                    .filter(|l| !l.is_empty()),
            ),
            Err(e) => found.push(format!("<runc list failed: {e}>")),
        }
    }
    found
}

/// Reads every regular file of a tar archive into memory (test archives are small).
pub fn read_tar(path: &Path) -> Result<std::collections::BTreeMap<String, Vec<u8>>> {
    let mut archive = tar::Archive::new(std::fs::File::open(path)?);
    let mut files = std::collections::BTreeMap::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let name = entry
            .path()?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        let mut data = Vec::new();
        entry.read_to_end(&mut data)?;
        if files.insert(name.clone(), data).is_some() {
            bail!("`{name}` appears twice in {}", path.display());
        }
    }
    Ok(files)
}

/// Waits for `child` up to `timeout`; kills it after that. Returns its exit status.
pub fn wait_timeout(
    child: &mut std::process::Child,
    timeout: Duration,
) -> Result<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("process {} did not exit within {timeout:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
