use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("runc not found: install runc or set `KILN_RUNC` to its path")]
    RuncNotFound,
    #[error("runc `{0}` is not an executable file")]
    RuncNotExecutable(PathBuf),
    #[error("failed to create executor state directory `{path}`")]
    StateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("invalid container id `{0}`: use 1-128 characters from `A-Za-z0-9_+.-`")]
    InvalidId(String),
    #[error("container `{0}` already exists")]
    ContainerExists(String),
    #[error("invalid mount destination `{0}`: must be an absolute path")]
    InvalidMountDestination(String),
    #[error("invalid working directory `{0}`: must be an absolute path")]
    InvalidCwd(String),
    #[error(
        "invalid cgroup parent `{0}`: expected a cgroupfs path such as `/kiln.slice` (no `..`, \
         no systemd `slice:prefix:name` form)"
    )]
    InvalidCgroupParent(String),
    #[error("no command to run")]
    EmptyArgs,
    #[error("a terminal needs inherited stdio")]
    TerminalNeedsInherit,

    #[error("invalid user `{0}`")]
    InvalidUser(String),
    // Worded as BuildKit (runc's user lookup) words them.
    #[error("unable to find user {0}: no matching entries in passwd file")]
    UnknownUser(String),
    #[error("unable to find group {0}: no matching entries in group file")]
    UnknownGroup(String),
    #[error("failed to open rootfs `{path}`")]
    OpenRootfs {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to read `{path}` in the rootfs")]
    ReadRootfs {
        path: String,
        #[source]
        source: io::Error,
    },

    #[error("failed to prepare the bundle of container `{id}`")]
    Bundle {
        id: String,
        #[source]
        source: io::Error,
    },
    #[error("failed to generate the runtime spec of container `{id}`")]
    Spec {
        id: String,
        #[source]
        source: oci_spec::OciSpecError,
    },
    #[error("failed to start runc for container `{id}`")]
    Spawn {
        id: String,
        #[source]
        source: io::Error,
    },
    #[error("failed to wait for container `{id}`")]
    Wait {
        id: String,
        #[source]
        source: io::Error,
    },
    #[error("`runc {command}` failed: {stderr}")]
    Runc { command: String, stderr: String },
    #[error("failed to run `runc {command}`")]
    RuncIo {
        command: String,
        #[source]
        source: io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;
