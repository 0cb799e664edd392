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
mod seccomp;
mod seccomp_bpf;
mod shim;
mod spec;
mod user;

pub use control::ExecRequest;
pub use error::{Error, Result};
pub use runc::{RuncExecutor, valid_cgroup_parent};
pub use shim::command_started;
pub use user::{home_dir, resolve_owner, resolve_user};

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
    /// Confinement and limits; the default is Docker's sandbox.
    pub sandbox: Sandbox,
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
    /// A new network namespace with only the loopback interface, which runc brings up.
    None,
}

/// How the process is confined, and the limits `docker build` lets a user set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sandbox {
    pub security: Security,
    /// Extra `/etc/hosts` entries as (name, address), after the defaults (`--add-host`).
    pub extra_hosts: Vec<(String, String)>,
    /// Resource limits (`--ulimit`); without them the process inherits ours, as Docker's
    /// containers inherit dockerd's.
    pub rlimits: Vec<Rlimit>,
    /// Size of the `/dev/shm` tmpfs in bytes; 64 MiB when `None`, as in Docker.
    pub shm_size: Option<u64>,
    /// A cgroup memory limit in bytes; none when `None`.
    pub memory_limit: Option<u64>,
    /// The other cgroup limits (`kiln build --resource`).
    pub resources: Resources,
    /// The cgroup under which the container's own is made (`--cgroup-parent`): runc's
    /// `cgroupsPath` becomes `/<parent>/<container id>`. An absolute cgroupfs path, without `..`.
    pub cgroup_parent: Option<String>,
    /// Device nodes created in the container and allowed by its device cgroup (CDI devices).
    pub devices: Vec<DeviceNode>,
    /// OCI hooks runc runs around the container (CDI devices'), in order.
    pub hooks: Vec<Hook>,
}

/// A device node in the container: `kind` is `c`, `b` or `p`; `permissions` the cgroup's
/// access (`rwm`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceNode {
    pub path: String,
    pub kind: char,
    pub major: i64,
    pub minor: i64,
    pub file_mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub permissions: String,
}

/// An OCI hook; `stage` is the runtime spec's name for when it runs (`createRuntime`,
/// `createContainer`, `startContainer`, `poststart`, `poststop`, `prestart`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    pub stage: String,
    pub path: String,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub timeout: Option<i64>,
}

/// Cgroup limits beside the memory limit, in runc's units; `None` leaves runc's default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    /// Memory plus swap in bytes, `-1` for unlimited.
    pub memory_swap: Option<i64>,
    /// CPU time per period, microseconds.
    pub cpu_quota: Option<i64>,
    /// The period of `cpu_quota`, microseconds.
    pub cpu_period: Option<u64>,
    /// Relative CPU weight (cgroup v1 shares; runc converts for v2).
    pub cpu_shares: Option<u64>,
    /// CPUs the process may run on (`0-3`, `0,2`).
    pub cpuset_cpus: Option<String>,
    /// Memory nodes the process may use.
    pub cpuset_mems: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Security {
    /// Docker's defaults: its capability set and seccomp profile, masked and read-only paths
    /// in /proc and /sys, no new privileges, only the default devices.
    #[default]
    Sandbox,
    /// As `docker run --privileged`: every capability, no seccomp, nothing masked, /sys
    /// writable, every device allowed.
    Insecure,
}

/// One resource limit, by its Docker `--ulimit` name (`nofile`, `nproc`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rlimit {
    pub name: String,
    pub soft: u64,
    pub hard: u64,
}

/// The `--ulimit` names and the resources they limit.
pub const RLIMIT_NAMES: &[&str] = &[
    "core",
    "cpu",
    "data",
    "fsize",
    "locks",
    "memlock",
    "msgqueue",
    "nice",
    "nofile",
    "nproc",
    "rss",
    "rtprio",
    "rttime",
    "sigpending",
    "stack",
];

/// How the container's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// The exit code reported by `runc run`.
    Code(i32),
    /// The process was killed by `signal`. runc reports that as exit code `128 + signal`, as a
    /// shell does, so a process that itself exits with such a code reads the same (as in
    /// Docker). `oom`: the kernel's out-of-memory killer ran while the process did.
    Killed { signal: i32, oom: bool },
    /// `runc` itself was killed by this signal, so the process's own status is unknown.
    Signal(i32),
    /// The command could not be executed (not found: code 127; not executable: 126); why is on
    /// its stderr. runc reports this as a failure to start, before the process exists.
    NotStarted { code: i32 },
}

impl ExitStatus {
    pub fn success(&self) -> bool {
        matches!(self, ExitStatus::Code(0))
    }

    /// The status for `runc run`'s exit code: `128 + n` for a process killed by signal `n`.
    pub fn from_runc_code(code: i32) -> ExitStatus {
        match code - 128 {
            signal @ 1..=64 => ExitStatus::Killed { signal, oom: false },
            _ => ExitStatus::Code(code),
        }
    }

    /// The exit code a shell would show for this status.
    pub fn code(&self) -> i32 {
        match self {
            ExitStatus::Code(c) | ExitStatus::NotStarted { code: c } => *c,
            ExitStatus::Killed { signal, .. } | ExitStatus::Signal(signal) => 128 + signal,
        }
    }
}

/// `SIGKILL` for 9, as the generic Linux signal numbers are named.
pub fn signal_name(signal: i32) -> Option<&'static str> {
    const NAMES: [&str; 31] = [
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    usize::try_from(signal - 1)
        .ok()
        .and_then(|i| NAMES.get(i))
        .copied()
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exit code: {c}"),
            ExitStatus::Killed { signal, oom } => {
                write!(f, "exit code: {}: killed by signal {signal}", self.code())?;
                if let Some(name) = signal_name(*signal) {
                    write!(f, " ({name})")?;
                }
                if *oom {
                    f.write_str(", out of memory: the kernel's OOM killer ran during the step")?;
                }
                Ok(())
            }
            ExitStatus::Signal(s) => write!(f, "runc killed by signal {s}"),
            ExitStatus::NotStarted { code } => {
                write!(f, "exit code: {code}: the command could not be started")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runc_codes_above_128_are_signals() {
        assert_eq!(ExitStatus::from_runc_code(0), ExitStatus::Code(0));
        assert_eq!(ExitStatus::from_runc_code(128), ExitStatus::Code(128));
        assert_eq!(ExitStatus::from_runc_code(255), ExitStatus::Code(255));
        let killed = ExitStatus::from_runc_code(137);
        assert_eq!(
            killed,
            ExitStatus::Killed {
                signal: 9,
                oom: false
            }
        );
        assert_eq!(killed.code(), 137);
        assert_eq!(
            killed.to_string(),
            "exit code: 137: killed by signal 9 (SIGKILL)"
        );
        let oom = ExitStatus::Killed {
            signal: 9,
            oom: true,
        };
        assert!(oom.to_string().contains("out of memory"), "{oom}");
        assert_eq!(signal_name(15), Some("SIGTERM"));
        assert_eq!(signal_name(31), Some("SIGSYS"));
        assert_eq!(signal_name(40), None);
        assert_eq!(signal_name(0), None);
        assert_eq!(
            ExitStatus::from_runc_code(168).to_string(),
            "exit code: 168: killed by signal 40"
        );
    }
}
