//! Runs one process in a prepared root filesystem under `runc`, the way BuildKit's runc executor
//! does: write an OCI runtime bundle (`config.json`, `/etc/hosts`, `/etc/resolv.conf`), run
//! `runc run` in the foreground, stream its output, and leave no container, mount or bundle
//! behind, even when the caller drops the future.
//!
//! This crate knows a rootfs, mounts and a process. It must not know images, layers, snapshots
//! or the build graph: the caller mounts the rootfs (an overlay) and passes its path.

mod control;
mod env;
mod error;
mod rootfs_linux;
mod runc;
mod spec;
mod user;

pub use control::ExecRequest;
pub use error::{Error, Result};
pub use runc::RuncExecutor;
pub use user::{home_dir, resolve_user};

use std::path::{Path, PathBuf};

/// `PATH` used when the process environment has none, as Docker and BuildKit do.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// One process to run in one container.
pub struct RunRequest<'a> {
    /// Container id, unique among running containers; only `[A-Za-z0-9_+.-]`.
    pub id: String,
    /// The mounted root filesystem; it is the container's only writable root.
    pub rootfs: &'a Path,
    pub process: ProcessSpec,
    /// Extra mounts, beside the defaults (`/proc`, `/dev`, `/sys`, `/etc/hosts`, ...).
    pub mounts: Vec<Mount>,
    pub stdio: Stdio,
    pub network: Network,
    pub readonly_rootfs: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessSpec {
    pub args: Vec<String>,
    /// `KEY=value` entries. `PATH` and `HOME` are added when missing.
    pub env: Vec<String>,
    /// Absolute working directory inside the container; runc creates it when missing.
    pub cwd: String,
    pub user: User,
    pub hostname: String,
    /// Allocate a pseudo-terminal; needs [`Stdio::Inherit`] with a terminal on stdin.
    pub terminal: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

/// An extra mount. Destinations are absolute paths inside the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mount {
    /// Recursive bind mount of a host file or directory.
    Bind {
        source: PathBuf,
        destination: String,
        readonly: bool,
    },
    /// A fresh tmpfs; `size` in bytes, unlimited (half of RAM) when `None`.
    Tmpfs {
        destination: String,
        size: Option<u64>,
    },
}

impl Mount {
    pub fn destination(&self) -> &str {
        match self {
            Mount::Bind { destination, .. } | Mount::Tmpfs { destination, .. } => destination,
        }
    }
}

/// Callback receiving chunks of the process's output as they arrive.
pub type OutputSink = Box<dyn FnMut(&[u8]) + Send>;

pub enum Stdio {
    /// The container uses this process's stdin, stdout and stderr (`kiln run`). runc stays in
    /// our process group, so a terminal's Ctrl-C reaches it and runc forwards it to the container.
    Inherit,
    /// Output is handed to the callbacks; stdin is empty. runc runs in its own process group so
    /// terminal signals do not reach the build step; cancel by dropping the `run` future.
    Capture {
        stdout: OutputSink,
        stderr: OutputSink,
    },
}

impl std::fmt::Debug for Stdio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stdio::Inherit => f.write_str("Inherit"),
            Stdio::Capture { .. } => f.write_str("Capture"),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Network {
    /// Share the host's network namespace.
    #[default]
    Host,
    /// A network namespace of its own with only loopback (up): no route out.
    None,
}

/// How the container's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// The exit code reported by `runc run`. A process killed by signal `n` shows as `128 + n`,
    /// as in a shell, because runc reports it that way.
    Code(i32),
    /// `runc` itself was killed by this signal, so the process's own status is unknown.
    Signal(i32),
}

impl ExitStatus {
    pub fn success(&self) -> bool {
        matches!(self, ExitStatus::Code(0))
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exit code: {c}"),
            ExitStatus::Signal(s) => write!(f, "runc killed by signal {s}"),
        }
    }
}
