//! Control of a container another call started: signals, deletion and extra processes in it
//! (`runc kill`, `runc delete`, `runc exec`), for containers that outlive one command.

use std::process::Stdio as StdStdio;

use tokio::process::Command as TokioCommand;

use crate::runc::runc_sync;
use crate::shim::{BUNDLE_PROGRAM, SHIM_ARG0};
use crate::{Error, ExitStatus, Result, RuncExecutor, User};

/// One more process in a running container; what is not set comes from the container's own.
#[derive(Debug, Clone, Default)]
pub struct ExecRequest {
    pub args: Vec<String>,
    /// `KEY=value` entries added to the container's environment.
    pub env: Vec<String>,
    pub cwd: Option<String>,
    pub user: Option<User>,
    /// Allocate a pseudo-terminal (stdin must be one).
    pub terminal: bool,
    /// Pass this process's stdin; otherwise the process reads an empty one.
    pub stdin: bool,
}

impl RuncExecutor {
    /// Sends `signal` (a name such as `TERM`, or a number) to the container's init process.
    pub fn kill(&self, id: &str, signal: &str) -> Result<()> {
        runc_sync(self.runc_path(), self.runc_root(), &["kill", id, signal]).map(drop)
    }

    /// Deletes the container, killing it first if it still runs.
    pub fn delete(&self, id: &str) -> Result<()> {
        if !self.runc_root().join(id).exists() {
            return Ok(());
        }
        runc_sync(
            self.runc_path(),
            self.runc_root(),
            &["delete", "--force", id],
        )
        .map(drop)
    }

    /// Runs a process in running container `id` with this process's stdout and stderr, and
    /// returns how it ended.
    pub async fn exec(&self, id: &str, req: ExecRequest) -> Result<ExitStatus> {
        if req.args.is_empty() {
            return Err(Error::EmptyArgs);
        }
        if let Some(cwd) = req.cwd.as_deref().filter(|c| !c.starts_with('/')) {
            return Err(Error::InvalidCwd(cwd.to_string()));
        }
        let mut cmd = TokioCommand::new(self.runc_path());
        cmd.arg("--root").arg(self.runc_root()).arg("exec");
        // A container whose seccomp the shim installed gets it the same way for this process.
        let bundle = self.bundles_dir().join(id);
        let bundle_err = |source| Error::Bundle {
            id: id.to_string(),
            source,
        };
        let shim_fds = match self.seccomp_shim() {
            Some(shim) => shim.for_exec(&bundle).map_err(bundle_err)?,
            // Never run the process unconfined instead.
            None if bundle.join(BUNDLE_PROGRAM).exists() => {
                return Err(bundle_err(std::io::Error::other(
                    "the container's seccomp filter needs kiln's seccomp shim, unavailable here",
                )));
            }
            None => None,
        };
        if let Some(fds) = &shim_fds {
            fds.args(&mut cmd);
        }
        if req.terminal {
            cmd.arg("--tty");
        }
        for e in &req.env {
            cmd.arg("--env").arg(e);
        }
        if let Some(cwd) = &req.cwd {
            cmd.arg("--cwd").arg(cwd);
        }
        if let Some(u) = &req.user {
            cmd.arg("--user").arg(format!("{}:{}", u.uid, u.gid));
            for g in &u.additional_gids {
                cmd.arg("--additional-gids").arg(g.to_string());
            }
        }
        // runc stops parsing its flags at the container id.
        cmd.arg(id);
        if shim_fds.is_some() {
            cmd.arg(SHIM_ARG0);
        }
        cmd.args(&req.args);
        if !req.stdin {
            cmd.stdin(StdStdio::null());
        }
        let status = cmd.status().await.map_err(|source| Error::Spawn {
            id: id.to_string(),
            source,
        })?;
        use std::os::unix::process::ExitStatusExt;
        Ok(match (status.code(), status.signal()) {
            (Some(code), _) => ExitStatus::Code(code),
            (None, Some(sig)) => ExitStatus::Signal(sig),
            (None, None) => ExitStatus::Code(-1),
        })
    }
}
