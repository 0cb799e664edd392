//! SSH agents for `RUN --mount=type=ssh`. Each mount gets a socket of its own that kiln serves
//! for the step's duration, relaying every connection to the agent given with `kiln build --ssh`
//! (as BuildKit's forwarding does). So the mount has the mode and owner the Dockerfile asks for
//! without touching the agent's own socket, and the host path never reaches the step. For
//! `--ssh ID=KEYFILE`, kiln runs `ssh-agent` with the keys added for the build's duration.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_llb::SshMount;

/// Why an agent could not be set up for `kiln build --ssh`.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("`--ssh {0}`: SSH_AUTH_SOCK is not set")]
    NoAuthSock(String),
    #[error("`--ssh {id}`: failed to start `ssh-agent`")]
    Spawn {
        id: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`--ssh {id}`: `ssh-agent` did not create its socket")]
    NoSocket { id: String },
    #[error("`--ssh {id}`: `ssh-add` failed for `{key}`: {stderr}")]
    Add {
        id: String,
        key: String,
        stderr: String,
    },
}

/// The agents a build may use, by id: sockets of the caller's agents, or agents kiln started
/// (killed when the last clone is dropped). `Debug` shows the ids only.
#[derive(Clone, Default)]
pub struct SshAgents(HashMap<String, Agent>);

#[derive(Clone)]
struct Agent {
    socket: PathBuf,
    /// Set when kiln runs the agent itself.
    _owned: Option<Arc<OwnedAgent>>,
}

impl SshAgents {
    pub fn new() -> Self {
        Self::default()
    }

    /// `--ssh ID[=PATH[,PATH...]]` as buildx reads it: no path means `$SSH_AUTH_SOCK`; one path
    /// naming a socket means that agent; otherwise the paths are private keys to load into an
    /// agent kiln starts.
    pub fn add(&mut self, id: &str, paths: &[PathBuf]) -> Result<(), SshError> {
        let agent = match paths {
            [] => {
                let sock = std::env::var_os("SSH_AUTH_SOCK")
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| SshError::NoAuthSock(id.to_string()))?;
                Agent {
                    socket: PathBuf::from(sock),
                    _owned: None,
                }
            }
            [one] if is_socket(one) => Agent {
                socket: one.clone(),
                _owned: None,
            },
            keys => {
                let owned = OwnedAgent::start(id, keys)?;
                Agent {
                    socket: owned.socket.clone(),
                    _owned: Some(Arc::new(owned)),
                }
            }
        };
        self.0.insert(id.to_string(), agent);
        Ok(())
    }

    /// The agent socket for `id`.
    pub fn socket(&self, id: &str) -> Option<&Path> {
        self.0.get(id).map(|a| a.socket.as_path())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for SshAgents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut ids: Vec<&String> = self.0.keys().collect();
        ids.sort();
        f.debug_tuple("SshAgents").field(&ids).finish()
    }
}

fn is_socket(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    fs::metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

/// A private temp dir (0700) for sockets: Unix socket paths are limited to 108 bytes, so they
/// cannot live under an arbitrarily deep data root.
fn socket_dir(prefix: &str) -> std::io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("{prefix}-{:016x}", rand::random::<u64>()));
    fs::DirBuilder::new().mode(0o700).create(&dir)?;
    Ok(dir)
}

/// An `ssh-agent` kiln started; killed and its socket dir removed on drop.
struct OwnedAgent {
    child: parking_lot::Mutex<Child>,
    dir: PathBuf,
    socket: PathBuf,
}

impl OwnedAgent {
    fn start(id: &str, keys: &[PathBuf]) -> Result<OwnedAgent, SshError> {
        let spawn = |source| SshError::Spawn {
            id: id.to_string(),
            source,
        };
        let dir = socket_dir("kiln-ssh-agent").map_err(spawn)?;
        let socket = dir.join("agent.sock");
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) => {
                let _ = fs::remove_dir_all(&dir);
                return Err(spawn(e));
            }
        };
        let agent = OwnedAgent {
            child: parking_lot::Mutex::new(child),
            dir,
            socket,
        };
        // The agent creates its socket right after starting; wait for it (bounded).
        let deadline = Instant::now() + Duration::from_secs(10);
        while !is_socket(&agent.socket) {
            let exited = agent.child.lock().try_wait().ok().flatten().is_some();
            if exited || Instant::now() > deadline {
                return Err(SshError::NoSocket { id: id.to_string() });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        for key in keys {
            let out = Command::new("ssh-add")
                .arg(key)
                .env("SSH_AUTH_SOCK", &agent.socket)
                .env_remove("SSH_ASKPASS")
                .env("SSH_ASKPASS_REQUIRE", "never")
                .env("DISPLAY", "")
                .stdin(Stdio::null())
                .output()
                .map_err(spawn)?;
            if !out.status.success() {
                return Err(SshError::Add {
                    id: id.to_string(),
                    key: key.display().to_string(),
                    stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
                });
            }
        }
        Ok(agent)
    }
}

impl Drop for OwnedAgent {
    fn drop(&mut self) {
        let mut child = self.child.lock();
        let _ = child.kill();
        let _ = child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A socket served for one step, relaying to an agent; dropping it stops serving and removes it.
pub(crate) struct SshProxy {
    task: tokio::task::JoinHandle<()>,
    dir: PathBuf,
}

impl Drop for SshProxy {
    fn drop(&mut self) {
        self.task.abort();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl SshProxy {
    /// Serves a socket with the mount's mode and owner that relays to `agent`.
    pub(crate) fn start(agent: &Path, m: &SshMount) -> std::io::Result<(PathBuf, SshProxy)> {
        let dir = socket_dir("kiln-ssh")?;
        let path = dir.join("agent.sock");
        let listener = match tokio::net::UnixListener::bind(&path) {
            Ok(l) => l,
            Err(e) => {
                let _ = fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let set = fs::set_permissions(&path, fs::Permissions::from_mode(m.mode))
            .and_then(|()| std::os::unix::fs::chown(&path, Some(m.uid), Some(m.gid)));
        if let Err(e) = set {
            let _ = fs::remove_dir_all(&dir);
            return Err(e);
        }
        let agent = agent.to_path_buf();
        let task = tokio::spawn(async move {
            // Connections end with the proxy: aborting this task drops the set.
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut conn, _)) = listener.accept().await {
                let agent = agent.clone();
                conns.spawn(async move {
                    if let Ok(mut upstream) = tokio::net::UnixStream::connect(&agent).await {
                        let _ = tokio::io::copy_bidirectional(&mut conn, &mut upstream).await;
                    }
                });
                while conns.try_join_next().is_some() {}
            }
        });
        Ok((path, SshProxy { task, dir }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_ids_only() {
        let mut a = SshAgents::new();
        a.0.insert(
            "gh".into(),
            Agent {
                socket: "/secret/path.sock".into(),
                _owned: None,
            },
        );
        let shown = format!("{a:?}");
        assert!(
            shown.contains("gh") && !shown.contains("/secret"),
            "{shown}"
        );
    }

    #[tokio::test]
    async fn proxy_relays_to_the_agent_with_the_mount_mode() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap();
        let upstream_path = dir.path().join("up.sock");
        let upstream = tokio::net::UnixListener::bind(&upstream_path).unwrap();
        let echo = tokio::spawn(async move {
            let (mut c, _) = upstream.accept().await.unwrap();
            let mut buf = [0u8; 5];
            c.read_exact(&mut buf).await.unwrap();
            c.write_all(&buf).await.unwrap();
        });
        let m = SshMount {
            id: "default".into(),
            target: "/run/buildkit/ssh_agent.0".into(),
            required: false,
            mode: 0o640,
            uid: 0,
            gid: 0,
        };
        let (path, proxy) = SshProxy::start(&upstream_path, &m).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o640
        );
        let mut c = tokio::net::UnixStream::connect(&path).await.unwrap();
        c.write_all(b"hello").await.unwrap();
        let mut got = [0u8; 5];
        c.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
        echo.await.unwrap();
        drop(proxy);
        assert!(!path.exists());
    }
}
