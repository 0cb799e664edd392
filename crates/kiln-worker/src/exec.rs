//! RUN: an exec op's process in its overlay, with bind, cache, tmpfs, secret and SSH mounts.

use super::*;

impl LlbWorker {
    pub(crate) async fn exec(
        &self,
        op: &ExecOp,
        inputs: &[Solved<Value>],
        progress: &Vertex,
    ) -> Result<Value> {
        // A foreign platform's RUN needs a binfmt_misc handler: stop before running anything
        // when there is none, rather than failing with "exec format error" inside.
        let emulated = match &op.platform {
            Some(p) => match emulation::emulation(p)? {
                emulation::Emulation::Native => None,
                emulation::Emulation::Handler { name, interpreter } => {
                    progress.status(&format!(
                        "[emulated {p}] through {interpreter} (binfmt_misc handler {name})"
                    ));
                    Some(p.to_string())
                }
            },
            None => None,
        };
        let layers = inputs.first().map(|i| i.value.layers()).unwrap_or_default();
        let step = self.prepare(layers, progress).await?;
        let merged = step.dir.join("merged");
        // Mounted inputs get their own overlay, dropped (unmounted) once the process is done.
        let mut mount_steps = Vec::new();
        let mut mounts = Vec::new();
        for m in &op.mounts {
            let input = inputs.get(m.input).ok_or_else(|| {
                Error::Manifest(format!("exec mount names missing input {}", m.input))
            })?;
            let sub = m.source.trim_start_matches('/');
            let root = match &input.value {
                // Files .dockerignore excludes are not part of the context, for a bind mount as
                // for COPY: mount a private copy of what the rules let through (writes to it
                // are dropped with the step).
                Value::Context { name } if self.context(name)?.matcher.is_some() => {
                    let ctx = self.context(name)?.clone();
                    let view = step.dir.join(format!("context-{}", mounts.len()));
                    let (sub, dest) = (sub.to_string(), format!("/{sub}"));
                    let view2 = view.clone();
                    tokio::task::spawn_blocking(move || {
                        fs::create_dir_all(&view2).map_err(|e| SourceError::Io {
                            path: view2.clone(),
                            source: e,
                        })?;
                        let m = ctx.matcher.as_deref();
                        let from = if sub.is_empty() { ".".to_string() } else { sub };
                        let selected = fsutil::expand_sources(&ctx.dir, &[from], m)?;
                        fsutil::copy(
                            &selected,
                            m,
                            fsutil::Filter::default(),
                            &view2,
                            &dest,
                            Owner::Set { uid: 0, gid: 0 },
                            None,
                        )
                    })
                    .await?
                    .map_err(Error::Source)?;
                    view
                }
                // Read-only: the context itself. Writable: an overlay over it, whose writes
                // are dropped with the step.
                Value::Context { name } if m.readonly => self.context(name)?.dir.clone(),
                Value::Context { name } => {
                    let s = self.overlay(&[self.context(name)?.dir.clone()])?;
                    let root = s.rootfs();
                    mount_steps.push(s);
                    root
                }
                Value::Rootfs { layers } => {
                    let s = self.prepare(layers, progress).await?;
                    let root = s.rootfs();
                    mount_steps.push(s);
                    root
                }
            };
            let source = resolve_in_root(&root, sub, true)
                .map_err(io(format!("resolving mount source `{}`", m.source)))?;
            mounts.push(kiln_executor::Mount::Bind {
                source,
                destination: m.target.clone(),
                readonly: m.readonly,
            });
        }
        // Cache dirs live outside every layer; a guard holds each one's lock for the step.
        let mut cache_guards = Vec::new();
        for c in &op.caches {
            let seed = match c.input {
                Some(i) => Some(inputs.get(i).ok_or_else(|| {
                    Error::Manifest(format!("cache mount names missing input {i}"))
                })?),
                None => None,
            };
            let (source, guard) = self.cache_dir(c, seed, &step.dir, progress).await?;
            mounts.push(kiln_executor::Mount::Bind {
                source,
                destination: c.target.clone(),
                readonly: c.readonly,
            });
            cache_guards.push(guard);
        }
        for t in &op.tmpfs {
            mounts.push(kiln_executor::Mount::Tmpfs {
                destination: t.target.clone(),
                size: t.size,
            });
        }
        let mut user = run_user(&merged, &op.user)?;
        let mut env = op.env.clone();
        for kv in &self.proxy_env {
            let key = kv.split_once('=').map_or(kv.as_str(), |(k, _)| k);
            if !env
                .iter()
                .any(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) == key)
            {
                env.push(kv.clone());
            }
        }
        if !env.iter().any(|e| e.starts_with("HOME=")) {
            env.push(format!(
                "HOME={}",
                kiln_executor::home_dir(&merged, user.uid)?
            ));
        }
        let secrets_dir = step.dir.join("secrets");
        for (i, sm) in op.secrets.iter().enumerate() {
            let Some(value) = self.secrets.get(&sm.id) else {
                if sm.required {
                    return Err(Error::SecretNotFound(sm.id.clone()));
                }
                continue;
            };
            if let Some(name) = &sm.env {
                let text = String::from_utf8_lossy(value);
                env.retain(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) != name);
                env.push(format!("{name}={text}"));
            }
            if let Some(target) = &sm.target {
                let file = write_secret(&secrets_dir, i, value, sm)
                    .map_err(io(format!("preparing secret `{}`", sm.id)))?;
                mounts.push(kiln_executor::Mount::Bind {
                    source: file,
                    destination: target.clone(),
                    readonly: true,
                });
            }
        }
        // Each agent is served on a socket of the step's own; the proxies stop when dropped.
        let mut ssh_proxies = Vec::new();
        for m in &op.ssh {
            let Some(agent) = self.ssh.socket(&m.id) else {
                if m.required {
                    return Err(Error::SshNotFound(m.id.clone()));
                }
                continue;
            };
            let (socket, proxy) = ssh::SshProxy::start(agent, m)
                .map_err(io(format!("serving SSH agent `{}`", m.id)))?;
            mounts.push(kiln_executor::Mount::Bind {
                source: socket,
                destination: m.target.clone(),
                readonly: false,
            });
            ssh_proxies.push(proxy);
        }
        // runc needs the working directory to exist, as BuildKit ensures.
        fsutil::mkdir_all(&merged, &op.cwd, 0o755, (0, 0))
            .map_err(io(format!("creating `{}`", op.cwd)))?;
        let mut sandbox = executor_sandbox(&op.sandbox);
        let edits = self.cdi.edits(&op.sandbox.devices)?;
        cdi::apply(
            &edits,
            cdi::Applied {
                env: &mut env,
                mounts: &mut mounts,
                sandbox: &mut sandbox,
                user: &mut user,
            },
        )?;
        let (out, err) = (progress.clone(), progress.clone());
        let started = std::time::Instant::now();
        let status = self
            .executor
            .run(RunRequest {
                id: format!("kiln-{:016x}", rand::random::<u64>()),
                rootfs: &merged,
                process: ProcessSpec {
                    args: op.args.clone(),
                    env,
                    cwd: op.cwd.clone(),
                    user,
                    hostname: SANDBOX_HOSTNAME.into(),
                    terminal: false,
                },
                mounts,
                stdio: Stdio::Capture {
                    stdout: Box::new(move |b| out.log(Stream::Stdout, b)),
                    stderr: Box::new(move |b| err.log(Stream::Stderr, b)),
                },
                network: match op.network {
                    NetworkMode::Host => kiln_executor::Network::Host,
                    NetworkMode::None => kiln_executor::Network::None,
                },
                readonly_rootfs: false,
                sandbox,
            })
            .await;
        if let Some(platform) = emulated {
            let took = started.elapsed();
            progress.status(&format!(
                "[emulated {platform}] {:.1}s under QEMU",
                took.as_secs_f64()
            ));
            let mut stats = self.emulated.lock();
            stats.steps += 1;
            stats.time += took;
            stats.platforms.insert(platform);
        }
        if secrets_dir.exists() {
            let _ = fs::remove_dir_all(&secrets_dir);
        }
        drop(ssh_proxies);
        let status = status?;
        drop(mount_steps);
        drop(cache_guards);
        if !status.success() {
            return Err(Error::ExecFailed {
                command: op.args.join(" "),
                status,
            });
        }
        self.commit(step).await
    }
}

/// The user a RUN step runs as: USER's value; without one uid 0, looked up by uid only for its
/// groups (BuildKit never looks up "root": an image without /etc/passwd runs as 0:0).
pub(crate) fn run_user(rootfs: &std::path::Path, user: &str) -> Result<kiln_executor::User> {
    let spec = if user.is_empty() { "0" } else { user };
    Ok(kiln_executor::resolve_user(rootfs, spec)?)
}

/// Secret values by id for `RUN --mount=type=secret`. They are never hashed or recorded;
/// `Debug` shows the ids only.
#[derive(Clone, Default)]
pub struct Secrets(HashMap<String, Vec<u8>>);

impl Secrets {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, id: impl Into<String>, value: Vec<u8>) {
        self.0.insert(id.into(), value);
    }

    pub fn get(&self, id: &str) -> Option<&[u8]> {
        self.0.get(id).map(Vec::as_slice)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut ids: Vec<&String> = self.0.keys().collect();
        ids.sort();
        f.debug_tuple("Secrets").field(&ids).finish()
    }
}

/// Writes a secret to a private file (in a 0700 dir) for a read-only bind mount.
pub(crate) fn write_secret(
    dir: &Path,
    index: usize,
    value: &[u8],
    sm: &SecretMount,
) -> std::io::Result<PathBuf> {
    use std::io::Write as _;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    if !dir.exists() {
        fs::DirBuilder::new().mode(0o700).create(dir)?;
    }
    let path = dir.join(format!("secret-{index}"));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(&path)?;
    f.write_all(value)?;
    f.set_permissions(fs::Permissions::from_mode(sm.mode))?;
    std::os::unix::fs::fchown(&f, Some(sm.uid), Some(sm.gid))?;
    Ok(path)
}

/// The executor's sandbox for an exec op's security mode and build-wide settings.
pub(crate) fn executor_sandbox(s: &ExecSandbox) -> kiln_executor::Sandbox {
    let r = s.resources.as_deref().cloned().unwrap_or_default();
    kiln_executor::Sandbox {
        security: match s.security {
            SecurityMode::Sandbox => kiln_executor::Security::Sandbox,
            SecurityMode::Insecure => kiln_executor::Security::Insecure,
        },
        extra_hosts: s
            .extra_hosts
            .iter()
            .map(|h| (h.host.clone(), h.ip.clone()))
            .collect(),
        rlimits: s
            .ulimits
            .iter()
            .map(|u| kiln_executor::Rlimit {
                name: u.name.clone(),
                soft: u.soft,
                hard: u.hard,
            })
            .collect(),
        shm_size: s.shm_size,
        memory_limit: r.memory.map(|m| u64::try_from(m).unwrap_or(0)),
        resources: kiln_executor::Resources {
            memory_swap: r.memory_swap,
            cpu_quota: r.cpu_quota,
            cpu_period: r.cpu_period,
            cpu_shares: r.cpu_shares,
            cpuset_cpus: r.cpuset_cpus.clone(),
            cpuset_mems: r.cpuset_mems.clone(),
        },
        cgroup_parent: s.cgroup_parent.clone(),
        devices: Vec::new(),
        hooks: Vec::new(),
    }
}
