//! A private dockerd (own socket, data root and exec root; no bridge, no iptables), stopped
//! with SIGTERM when dropped so it unmounts its layers.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

pub struct Dockerd {
    child: Child,
    host: String,
    client_config: PathBuf,
    dir: PathBuf,
}

impl Dockerd {
    /// Starts dockerd with its state in `dir` (keep the path short: the socket lives there).
    pub fn start(dockerd: &Path, dir: &Path) -> Result<Self> {
        let log = std::fs::File::create(dir.join("dockerd.log"))?;
        let socket = dir.join("docker.sock");
        let child = Command::new(dockerd)
            .arg(format!("--host=unix://{}", socket.display()))
            .arg(format!("--data-root={}", dir.join("root").display()))
            .arg(format!("--exec-root={}", dir.join("exec").display()))
            .arg(format!("--pidfile={}", dir.join("pid").display()))
            .args(["--iptables=false", "--ip6tables=false", "--bridge=none"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting dockerd")?;
        let client_config = dir.join("client-config");
        std::fs::create_dir_all(&client_config)?;
        let mut d = Dockerd {
            child,
            host: format!("unix://{}", socket.display()),
            client_config,
            dir: dir.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = d.child.try_wait()? {
                bail!("dockerd exited with {status}: {}", d.log_tail());
            }
            if d.docker(&["version"]).is_ok_and(|o| o.status.success()) {
                return Ok(d);
            }
            if Instant::now() > deadline {
                bail!("dockerd did not come up in 60s: {}", d.log_tail());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn docker(&self, args: &[&str]) -> Result<Output> {
        Ok(self.command(Path::new("docker")).args(args).output()?)
    }

    /// A command for this daemon's client `program` (a `docker` binary), its socket and config
    /// already set.
    pub fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("DOCKER_CONFIG", &self.client_config)
            .arg("-H")
            .arg(&self.host);
        cmd
    }

    /// The daemon's process id, to read its memory use.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Runs a docker command; returns stdout, or fails with its stderr.
    pub fn run(&self, args: &[&str]) -> Result<String> {
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
