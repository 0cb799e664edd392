//! The runc backend: bundle layout, `runc run`, output streaming and the cleanup guard.
//!
//! Layout under the state directory: `runc/` is runc's `--root` (container state), and
//! `bundles/<id>/` holds `config.json`, `hosts` and `resolv.conf` for one run.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio as StdStdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command as TokioCommand};

use crate::rootfs_linux::{Root, clean_components};
use crate::shim::SeccompShim;
use crate::spec::{self, DEFAULT_MOUNT_POINTS, SpecInput};
use crate::{Error, ExitStatus, OutputSink, Result, RunRequest, Stdio, env, user};

/// Where runc is looked for when `KILN_RUNC` is unset and `PATH` has none.
const FALLBACK_RUNC: &[&str] = &["/usr/sbin/runc", "/usr/bin/runc", "/sbin/runc"];
/// How long a cancelled run may take to wind down after `runc kill` before runc is killed.
const KILL_GRACE: Duration = Duration::from_secs(10);

/// Runs processes in containers with the `runc` binary.
#[derive(Debug, Clone)]
pub struct RuncExecutor {
    runc: PathBuf,
    runc_root: PathBuf,
    bundles: PathBuf,
    /// Where `run` has runc write each container's pid file (see `with_pid_files`).
    pid_files: Option<PathBuf>,
    /// Installs seccomp from a profile compiled once; `None`: not available on this host.
    seccomp_shim: Option<Arc<SeccompShim>>,
    /// Whether new containers use the shim; otherwise runc compiles the profile in each. A
    /// container started with the shim gets it for `exec` either way.
    use_seccomp_shim: bool,
}

impl RuncExecutor {
    /// Uses `KILN_RUNC` (a path or a name looked up on `PATH`), else `runc` from `PATH`.
    /// `state_dir` holds bundles and runc's `--root`, e.g. `<data-root>/executor`.
    pub fn new(state_dir: &Path) -> Result<RuncExecutor> {
        Self::with_runc(state_dir, &find_runc()?)
    }

    /// Like [`RuncExecutor::new`] with an explicit runc binary.
    pub fn with_runc(state_dir: &Path, runc: &Path) -> Result<RuncExecutor> {
        if !is_executable(runc) {
            return Err(Error::RuncNotExecutable(runc.to_path_buf()));
        }
        let state_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::StateDir { path, source }
        };
        fs_err::create_dir_all(state_dir).map_err(state_err(state_dir))?;
        let state_dir = fs_err::canonicalize(state_dir).map_err(state_err(state_dir))?;
        let runc_root = state_dir.join("runc");
        let bundles = state_dir.join("bundles");
        for dir in [&runc_root, &bundles] {
            fs_err::create_dir_all(dir).map_err(state_err(dir))?;
            // Container state and configs are root's business only.
            fs_err::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(state_err(dir))?;
        }
        let seccomp_shim = SeccompShim::new(&state_dir).map(Arc::new);
        let use_seccomp_shim = std::env::var("KILN_SECCOMP_SHIM").map_or(true, |v| v != "0");
        if let Some(shim) = seccomp_shim.clone().filter(|_| use_seccomp_shim) {
            std::thread::spawn(move || shim.warm());
        }
        Ok(RuncExecutor {
            runc: runc.to_path_buf(),
            runc_root,
            bundles,
            pid_files: None,
            seccomp_shim,
            use_seccomp_shim,
        })
    }

    /// Has runc write `<dir>/<id>.pid` once a container is created, for callers that must tell
    /// "runc could not create it" from "it ran and failed"; the caller removes the file.
    pub fn with_pid_files(mut self, dir: &Path) -> RuncExecutor {
        self.pid_files = Some(dir.to_path_buf());
        self
    }

    /// The pid file of container `id` (see [`RuncExecutor::with_pid_files`]).
    pub fn pid_file(&self, id: &str) -> Option<PathBuf> {
        self.pid_files.as_ref().map(|d| d.join(format!("{id}.pid")))
    }

    pub fn runc_path(&self) -> &Path {
        &self.runc
    }

    /// runc's `--root`, for callers that want to inspect containers (`runc --root <this> list`).
    pub fn runc_root(&self) -> &Path {
        &self.runc_root
    }

    /// Directory of the per-run bundles.
    pub fn bundles_dir(&self) -> &Path {
        &self.bundles
    }

    /// Leaves seccomp to runc, which then compiles the profile in every container (as
    /// `KILN_SECCOMP_SHIM=0` does).
    pub fn without_seccomp_shim(mut self) -> RuncExecutor {
        self.use_seccomp_shim = false;
        self
    }

    /// Whether new sandboxed containers get their seccomp filter from the shim.
    pub fn uses_seccomp_shim(&self) -> bool {
        self.use_seccomp_shim && self.seccomp_shim.is_some()
    }

    pub(crate) fn seccomp_shim(&self) -> Option<&SeccompShim> {
        self.seccomp_shim.as_deref()
    }

    /// Deletes containers and bundles left by a previous process that crashed. Call at startup,
    /// before any `run`, while holding the data root: it removes everything in the state dir.
    pub fn cleanup_stale(&self) -> Result<()> {
        let out = runc_sync(&self.runc, &self.runc_root, &["list", "--quiet"])?;
        for id in out.lines().map(str::trim).filter(|l| !l.is_empty()) {
            tracing::info!(id, "deleting stale container");
            runc_sync(&self.runc, &self.runc_root, &["delete", "--force", id])?;
        }
        let entries = fs_err::read_dir(&self.bundles).map_err(|source| Error::StateDir {
            path: self.bundles.clone(),
            source,
        })?;
        for entry in entries {
            let path = entry
                .map_err(|source| Error::StateDir {
                    path: self.bundles.clone(),
                    source,
                })?
                .path();
            fs_err::remove_dir_all(&path).map_err(|source| Error::StateDir { path, source })?;
        }
        Ok(())
    }

    /// Runs the process to completion and returns how it ended. A non-zero exit is not an error.
    ///
    /// Dropping the future kills the container (`runc kill KILL`), deletes it and removes the
    /// bundle, blocking the dropping thread for as long as that takes (normally milliseconds).
    pub async fn run(&self, req: RunRequest<'_>) -> Result<ExitStatus> {
        validate(&req)?;
        let id = req.id.clone();
        let bundle_err = |source| Error::Bundle {
            id: id.clone(),
            source,
        };
        let rootfs = fs_err::canonicalize(req.rootfs).map_err(|source| Error::OpenRootfs {
            path: req.rootfs.to_path_buf(),
            source,
        })?;
        let root = Root::open(&rootfs).map_err(|source| Error::OpenRootfs {
            path: rootfs.clone(),
            source,
        })?;
        let has_home = req.process.env.iter().any(|e| e.starts_with("HOME="));
        let home = if has_home {
            String::new()
        } else {
            user::home_dir(&rootfs, req.process.user.uid)?
        };
        let env = spec::finalize_env(&req.process.env, &home, req.process.terminal);

        if self.runc_root.join(&id).exists() {
            return Err(Error::ContainerExists(id));
        }
        let bundle = self.bundles.join(&id);
        match fs_err::create_dir(&bundle) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(Error::ContainerExists(id));
            }
            r => r.map_err(bundle_err)?,
        }
        // From here on everything created is undone by the guard, on every path.
        let mut guard = Cleanup {
            runc: self.runc.clone(),
            runc_root: self.runc_root.clone(),
            id: id.clone(),
            bundle: bundle.clone(),
            root,
            stubs: Vec::new(),
            child: None,
        };

        let hosts = bundle.join("hosts");
        let resolv_conf = bundle.join("resolv.conf");
        let hosts_text = spec::hosts_file(&req.process.hostname, &req.sandbox.extra_hosts);
        fs_err::write(&hosts, hosts_text).map_err(bundle_err)?;
        fs_err::write(&resolv_conf, host_resolv_conf()).map_err(bundle_err)?;
        let mut spec = spec::build(SpecInput {
            id: &id,
            rootfs: &rootfs,
            process: &req.process,
            env,
            mounts: &req.mounts,
            hosts: &hosts,
            resolv_conf: &resolv_conf,
            network: req.network,
            readonly_rootfs: req.readonly_rootfs,
            sandbox: &req.sandbox,
        })
        .map_err(|source| Error::Spec {
            id: id.clone(),
            source,
        })?;
        let shim_fds = match &self.seccomp_shim {
            Some(shim) if self.use_seccomp_shim => {
                shim.apply(&mut spec, &bundle).map_err(bundle_err)?
            }
            _ => None,
        };
        let config = serde_json::to_vec_pretty(&spec).map_err(|e| bundle_err(e.into()))?;
        fs_err::write(bundle.join("config.json"), config).map_err(bundle_err)?;

        guard.stubs = mount_stubs(&guard.root, &req).map_err(bundle_err)?;

        let mut cmd = TokioCommand::new(&self.runc);
        cmd.arg("--root")
            .arg(&self.runc_root)
            .arg("run")
            .arg("--bundle")
            .arg(&bundle);
        if let Some(pid_file) = self.pid_file(&id) {
            cmd.arg("--pid-file").arg(pid_file);
        }
        let (shim_fds, status_pipe) = shim_fds.unzip();
        if let Some(fds) = &shim_fds {
            fds.args(&mut cmd);
        }
        cmd.arg(&id)
            // The guard decides how to stop runc; a plain SIGKILL would orphan the container.
            .kill_on_drop(false);
        let sinks = match req.stdio {
            Stdio::Inherit => None,
            Stdio::Capture { stdout, stderr } => {
                cmd.stdin(StdStdio::null())
                    .stdout(StdStdio::piped())
                    .stderr(StdStdio::piped())
                    .process_group(0);
                Some((stdout, stderr))
            }
        };
        let ooms_before = oom_kills();
        let child = cmd.spawn().map_err(|source| Error::Spawn {
            id: id.clone(),
            source,
        })?;
        let child = guard.child.insert(child);
        // runc holds the descriptors now; the status pipe must have no writer left here.
        drop(shim_fds);

        let wait_err = |source| Error::Wait {
            id: id.clone(),
            source,
        };
        let status = match sinks {
            None => child.wait().await.map_err(wait_err)?,
            Some((mut out_sink, mut err_sink)) => {
                let out = child.stdout.take();
                let err = child.stderr.take();
                let (r_out, r_err, status) = tokio::join!(
                    pump(out, &mut out_sink),
                    pump(err, &mut err_sink),
                    child.wait()
                );
                let status = status.map_err(wait_err)?;
                r_out.map_err(wait_err)?;
                r_err.map_err(wait_err)?;
                status
            }
        };
        drop(guard);
        Ok(match (status.code(), status.signal()) {
            (Some(code), _) if status_pipe.as_ref().is_some_and(|p| p.not_started()) => {
                ExitStatus::NotStarted { code }
            }
            (Some(code), _) => match ExitStatus::from_runc_code(code) {
                ExitStatus::Killed { signal: 9, .. } => ExitStatus::Killed {
                    signal: 9,
                    oom: oom_kills() > ooms_before,
                },
                s => s,
            },
            (None, Some(sig)) => ExitStatus::Signal(sig),
            (None, None) => ExitStatus::Code(-1),
        })
    }
}

/// How many processes the kernel's OOM killer has killed since boot (`oom_kill` in
/// /proc/vmstat, Linux 4.13+), counting memory-cgroup limits too. runc removes the container's
/// cgroup, and its counters with it, before `runc run` returns, so a SIGKILL is put down to
/// memory when this count grew during the run. Another process's OOM kill at the same moment
/// would be counted too; that is rare enough for a diagnosis.
fn oom_kills() -> u64 {
    std::fs::read_to_string("/proc/vmstat")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
        })
        .unwrap_or(0)
}

async fn pump<R: AsyncRead + Unpin>(reader: Option<R>, sink: &mut OutputSink) -> io::Result<()> {
    let Some(mut reader) = reader else {
        return Ok(());
    };
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        sink(&buf[..n]);
    }
}

fn validate(req: &RunRequest<'_>) -> Result<()> {
    let id = &req.id;
    let id_ok = !id.is_empty()
        && id.len() <= 128
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_+.-".contains(&b));
    if !id_ok {
        return Err(Error::InvalidId(id.clone()));
    }
    if req.process.args.is_empty() {
        return Err(Error::EmptyArgs);
    }
    if !req.process.cwd.starts_with('/') {
        return Err(Error::InvalidCwd(req.process.cwd.clone()));
    }
    if let Some(m) = req
        .mounts
        .iter()
        .find(|m| !m.destination().starts_with('/'))
    {
        return Err(Error::InvalidMountDestination(m.destination().to_string()));
    }
    if let Some(parent) = &req.sandbox.cgroup_parent
        && !valid_cgroup_parent(parent)
    {
        return Err(Error::InvalidCgroupParent(parent.clone()));
    }
    if req.process.terminal && !matches!(req.stdio, Stdio::Inherit) {
        return Err(Error::TerminalNeedsInherit);
    }
    Ok(())
}

/// A cgroup parent runc's cgroupfs driver can take: a path of plain names, no `..`, no
/// systemd `slice:prefix:name` form (runc runs without `--systemd-cgroup`).
pub fn valid_cgroup_parent(parent: &str) -> bool {
    !parent.contains(':')
        && !parent.contains('\0')
        && parent
            .split('/')
            .all(|c| c != ".." && c != "." && !c.contains(char::is_whitespace))
}

/// Paths runc will create in the rootfs as mount points, so they can be removed afterwards and
/// do not end up in the layer (BuildKit does the same). Mounts inside `/proc`, `/dev` and `/sys`
/// land on those filesystems, not the rootfs. `/proc`, `/dev` and `/sys` themselves stay: a
/// RUN on a base without them leaves them in its layer, as BuildKit's does.
const KEPT_MOUNT_POINTS: &[&str] = &["/proc", "/dev", "/sys"];

fn mount_stubs(root: &Root, req: &RunRequest<'_>) -> io::Result<Vec<String>> {
    let mut stubs: Vec<String> = Vec::new();
    let dests = DEFAULT_MOUNT_POINTS
        .iter()
        .copied()
        .filter(|d| !KEPT_MOUNT_POINTS.contains(d))
        .chain(req.mounts.iter().map(|m| m.destination()));
    for dest in dests {
        let first = clean_components(dest).into_iter().next();
        let on_pseudo_fs = matches!(first.as_deref(), Some("proc" | "dev" | "sys"))
            && !DEFAULT_MOUNT_POINTS.contains(&dest);
        if on_pseudo_fs {
            continue;
        }
        for path in root.missing_components(dest)? {
            if !stubs.contains(&path) {
                stubs.push(path);
            }
        }
    }
    Ok(stubs)
}

/// The host's resolver config; with the host network its nameservers are reachable as is.
fn host_resolv_conf() -> Vec<u8> {
    fs_err::read("/etc/resolv.conf").unwrap_or_else(|e| {
        tracing::warn!(error = %e, "no host resolv.conf, the container gets an empty one");
        Vec::new()
    })
}

/// Undoes one run: stops the container if it is still running (the future was dropped),
/// deletes it, removes mount stubs and the bundle. Synchronous so it also works in `Drop`.
struct Cleanup {
    runc: PathBuf,
    runc_root: PathBuf,
    id: String,
    bundle: PathBuf,
    root: Root,
    stubs: Vec<String>,
    child: Option<Child>,
}

impl Cleanup {
    fn stop_child(&mut self, mut child: Child) {
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        tracing::debug!(id = %self.id, "run cancelled, killing container");
        // Killing the container lets `runc run` notice, tear it down and exit by itself. If it
        // is not created yet, kill runc instead: runc's init has a parent-death signal.
        if runc_sync(&self.runc, &self.runc_root, &["kill", &self.id, "KILL"]).is_err() {
            let _ = child.start_kill();
        }
        let deadline = Instant::now() + KILL_GRACE;
        loop {
            match child.try_wait() {
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Ok(None) => {
                    tracing::warn!(id = %self.id, "runc did not exit after kill, killing it");
                    let _ = child.start_kill();
                    break;
                }
                _ => break,
            }
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            self.stop_child(child);
        }
        // `runc run` deletes the container when it exits normally; state left behind means it
        // did not get that far.
        if self.runc_root.join(&self.id).exists()
            && let Err(e) = runc_sync(
                &self.runc,
                &self.runc_root,
                &["delete", "--force", &self.id],
            )
        {
            tracing::warn!(id = %self.id, error = %e, "failed to delete container");
        }
        for stub in self.stubs.iter().rev() {
            if let Err(e) = self.root.remove_stub(stub) {
                tracing::warn!(id = %self.id, stub, error = %e, "failed to remove mount point");
            }
        }
        if let Err(e) = fs_err::remove_dir_all(&self.bundle)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(id = %self.id, error = %e, "failed to remove bundle");
        }
    }
}

/// Runs a short runc subcommand to completion and returns its stdout.
pub(crate) fn runc_sync(runc: &Path, runc_root: &Path, args: &[&str]) -> Result<String> {
    let command = args.join(" ");
    let out = Command::new(runc)
        .arg("--root")
        .arg(runc_root)
        .args(args)
        .stdin(StdStdio::null())
        .output()
        .map_err(|source| Error::RuncIo {
            command: command.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(Error::Runc {
            command,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn find_runc() -> Result<PathBuf> {
    if let Some(value) = std::env::var_os(env::RUNC).filter(|v| !v.is_empty()) {
        let path = PathBuf::from(&value);
        if path.components().count() > 1 {
            return Ok(path);
        }
        return search_path(&path).ok_or(Error::RuncNotFound);
    }
    search_path(Path::new("runc"))
        .or_else(|| {
            FALLBACK_RUNC
                .iter()
                .map(PathBuf::from)
                .find(|p| is_executable(p))
        })
        .ok_or(Error::RuncNotFound)
}

fn search_path(name: &Path) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_parents() {
        for ok in ["/kiln.slice", "kiln", "/a/b/", "/"] {
            assert!(valid_cgroup_parent(ok), "{ok}");
        }
        for bad in ["system.slice:kiln:x", "/a/../b", "a b", "./x"] {
            assert!(!valid_cgroup_parent(bad), "{bad}");
        }
    }
    use crate::{Mount, Network, ProcessSpec, User};

    fn request(rootfs: &Path) -> RunRequest<'_> {
        RunRequest {
            id: "ok-id_1.2+3".into(),
            rootfs,
            process: ProcessSpec {
                args: vec!["true".into()],
                env: vec![],
                cwd: "/".into(),
                user: User::default(),
                hostname: "h".into(),
                terminal: false,
            },
            mounts: vec![],
            stdio: Stdio::Inherit,
            network: Network::Host,
            readonly_rootfs: false,
            sandbox: Default::default(),
        }
    }

    #[test]
    fn validate_rejects_bad_requests() {
        let dir = Path::new("/");
        assert!(validate(&request(dir)).is_ok());
        for bad in ["", "..", "a/b", "a b", &"x".repeat(129)] {
            let mut r = request(dir);
            r.id = bad.to_string();
            assert!(matches!(validate(&r), Err(Error::InvalidId(_))), "{bad:?}");
        }
        let mut r = request(dir);
        r.process.cwd = "work".into();
        assert!(matches!(validate(&r), Err(Error::InvalidCwd(_))));
        let mut r = request(dir);
        r.process.args.clear();
        assert!(matches!(validate(&r), Err(Error::EmptyArgs)));
        let mut r = request(dir);
        r.mounts.push(Mount::Tmpfs {
            destination: "tmp".into(),
            size: None,
        });
        assert!(matches!(
            validate(&r),
            Err(Error::InvalidMountDestination(_))
        ));
        let mut r = request(dir);
        r.process.terminal = true;
        r.stdio = Stdio::Capture {
            stdout: Box::new(|_| {}),
            stderr: Box::new(|_| {}),
        };
        assert!(matches!(validate(&r), Err(Error::TerminalNeedsInherit)));
    }

    #[test]
    fn mount_stubs_skip_pseudo_filesystems_and_existing_paths() {
        let dir = tempfile::tempdir().unwrap();
        fs_err::create_dir_all(dir.path().join("etc")).unwrap();
        fs_err::create_dir_all(dir.path().join("proc")).unwrap();
        let mut r = request(dir.path());
        r.mounts = vec![
            Mount::Tmpfs {
                destination: "/dev/extra".into(),
                size: None,
            },
            Mount::Tmpfs {
                destination: "/cache/a".into(),
                size: None,
            },
        ];
        let root = Root::open(dir.path()).unwrap();
        let stubs = mount_stubs(&root, &r).unwrap();
        assert_eq!(
            stubs,
            ["/etc/hosts", "/etc/resolv.conf", "/cache", "/cache/a"]
        );
    }

    #[test]
    fn with_runc_rejects_non_executables() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("runc");
        fs_err::write(&fake, "").unwrap();
        assert!(matches!(
            RuncExecutor::with_runc(dir.path(), &fake),
            Err(Error::RuncNotExecutable(_))
        ));
    }
}
