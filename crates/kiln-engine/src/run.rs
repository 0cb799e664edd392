//! `kiln run` and `kiln exec`: a container from an image's entrypoint and command, run in the
//! foreground or handed to a monitor (`-d`), and more processes in a running one.

use kiln_oci::{ImageConfig, Reference};
use kiln_progress::Progress;

use crate::container::{ContainerConfig, ContainerError, Containers, PortSpec, Volume};
use crate::monitor::Attach;
use crate::{Engine, Error, Result};

#[derive(Debug, Clone, Default)]
pub struct RunRequest {
    pub image: String,
    /// Replaces the image's Cmd when not empty.
    pub command: Vec<String>,
    pub entrypoint: Option<String>,
    /// `KEY=VALUE`, or `KEY` to pass this process's value.
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    /// `--name`; generated when `None`.
    pub name: Option<String>,
    /// `--rm`: remove the container when it exits.
    pub auto_remove: bool,
    /// `-p [IP:][HOST:]CONTAINER[/tcp]`.
    pub publish: Vec<String>,
    /// `-v /HOST:/CONTAINER[:ro|rw]`.
    pub volumes: Vec<String>,
    /// `-i`: the container reads this process's stdin (foreground only).
    pub interactive: bool,
    /// `-t`: allocate a terminal (foreground only).
    pub tty: bool,
    /// `--platform`: which image of a multi-platform name (default: this machine's), and
    /// which one to pull when the image is not here.
    pub platform: Option<kiln_oci::Platform>,
}

/// `kiln exec`: one more process in a running container.
#[derive(Debug, Clone, Default)]
pub struct ExecRequest {
    pub container: String,
    pub command: Vec<String>,
    /// `KEY=VALUE`, or `KEY` to pass this process's value.
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub interactive: bool,
    pub tty: bool,
}

impl Engine {
    /// The containers of this data directory.
    pub fn containers(&self) -> Result<Containers> {
        Containers::open(&self.root)
    }

    /// Runs a new container in the foreground; returns its exit code (128+N for a signal).
    pub async fn run(&self, req: RunRequest) -> Result<i32> {
        let config = self.create_container(&req).await?;
        let attach = if req.interactive || req.tty {
            Attach::Interactive { tty: req.tty }
        } else {
            Attach::Foreground
        };
        self.containers()?.monitor(&config.id, attach, None).await
    }

    /// Creates a container (pulling the image if missing) without starting it: its record,
    /// name and upper dir. A monitor runs it (see [`Containers::monitor`]).
    pub async fn create_container(&self, req: &RunRequest) -> Result<ContainerConfig> {
        let invalid = |e: String| Error::from(ContainerError::InvalidSpec(e));
        let ports = req
            .publish
            .iter()
            .map(|p| PortSpec::parse(p).map_err(invalid))
            .collect::<Result<Vec<_>>>()?;
        let volumes = req
            .volumes
            .iter()
            .map(|v| Volume::parse(v).map_err(invalid))
            .collect::<Result<Vec<_>>>()?;
        // A local name or image ID first, as `docker run` takes either; else a name to pull.
        let local = self.find_image(&req.image).ok().and_then(|f| {
            f.by_name
                .clone()
                .or_else(|| f.records.first().map(|r| r.name.clone()))
        });
        let name: Reference = match local {
            Some(name) => name,
            None => req
                .image
                .parse()
                .map_err(|_| Error::Reference(req.image.clone()))?,
        };
        let host = kiln_oci::Platform::host();
        let platform = req.platform.as_ref().unwrap_or(&host);
        let manifest = match self.images.get_platform(&name, platform)? {
            Some(record) => record.manifest,
            None => {
                self.pull_platform(&name, platform, &Progress::discard())
                    .await?
            }
        };
        let pinned = crate::resolver::pin(&name, &manifest);
        let worker = self.worker(None);
        let layers = worker.image(&pinned).await?;
        let m: kiln_oci::ImageManifest = serde_json::from_slice(&self.content.read(&manifest)?)
            .map_err(|e| Error::Invalid {
                what: format!("manifest of `{}`", name.whole()),
                source: Box::new(e),
            })?;
        let image: ImageConfig = serde_json::from_slice(&self.content.read(m.config().digest())?)
            .map_err(|e| Error::Invalid {
            what: "image config".into(),
            source: Box::new(e),
        })?;
        let quiet = Progress::discard();
        let step = worker.prepare(layers.layers(), &quiet.vertex("")).await?;
        let rootfs = step.rootfs();

        let cfg = &image.config;
        let entrypoint = match &req.entrypoint {
            Some(e) if e.is_empty() => Vec::new(),
            Some(e) => vec![e.clone()],
            None => cfg.entrypoint.clone().unwrap_or_default(),
        };
        // Docker drops the image's Cmd when --entrypoint is given.
        let cmd = if !req.command.is_empty() {
            req.command.clone()
        } else if req.entrypoint.is_some() {
            Vec::new()
        } else {
            cfg.cmd.clone().unwrap_or_default()
        };
        let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
        if args.is_empty() {
            return Err(Error::Invalid {
                what: "command".into(),
                source: "no command specified".into(),
            });
        }
        let id = crate::container::new_id();
        let short = id[..12].to_string();
        let mut env = cfg.env.clone().unwrap_or_default();
        env.push(format!("HOSTNAME={short}"));
        env.extend(expand_env(&req.env));
        let user_spec = req
            .user
            .clone()
            .or_else(|| cfg.user.clone())
            .filter(|u| !u.is_empty())
            // uid 0 without a lookup by name, as docker runs an image with no user.
            .unwrap_or_else(|| "0".into());
        let user = kiln_executor::resolve_user(&rootfs, &user_spec)?;
        if !env.iter().any(|e| e.starts_with("HOME=")) {
            env.push(format!(
                "HOME={}",
                kiln_executor::home_dir(&rootfs, user.uid)?
            ));
        }
        let cwd = req
            .workdir
            .clone()
            .or_else(|| cfg.working_dir.clone())
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".into());
        let lowers = worker
            .materialize(layers.layers(), &quiet.vertex(""))
            .await?;
        drop(step);
        for v in &volumes {
            // As docker does, a missing host directory is created.
            std::fs::create_dir_all(&v.source)
                .map_err(crate::io(format!("creating `{}`", v.source.display())))?;
        }
        self.containers()?.create(ContainerConfig {
            id,
            name: req.name.clone().unwrap_or_default(),
            image: req.image.clone(),
            image_id: m.config().digest().to_string(),
            created: chrono::Utc::now(),
            args,
            env,
            cwd,
            uid: user.uid,
            gid: user.gid,
            additional_gids: user.additional_gids,
            hostname: short,
            lowers,
            volumes,
            ports,
            auto_remove: req.auto_remove,
        })
    }

    /// Runs a process in a running container with this process's stdio; returns its exit code.
    pub async fn exec(&self, req: ExecRequest) -> Result<i32> {
        let containers = self.containers()?;
        let id = containers.lookup(&req.container)?;
        if containers.state(&id)?.status != crate::container::Status::Running {
            return Err(ContainerError::NotRunning(req.container.clone()).into());
        }
        let user = match req.user.as_deref().filter(|u| !u.is_empty()) {
            Some(u) => Some(kiln_executor::resolve_user(&containers.rootfs(&id), u)?),
            None => None,
        };
        let status = containers
            .executor()
            .exec(
                &id,
                kiln_executor::ExecRequest {
                    args: req.command.clone(),
                    env: expand_env(&req.env),
                    cwd: req.workdir.clone().filter(|w| !w.is_empty()),
                    user,
                    terminal: req.tty,
                    stdin: req.interactive,
                },
            )
            .await?;
        Ok(status.code())
    }
}

/// `KEY=VALUE` as is; a bare `KEY` takes this process's value, or is dropped when unset.
fn expand_env(env: &[String]) -> Vec<String> {
    env.iter()
        .filter_map(|e| match e.split_once('=') {
            Some(_) => Some(e.clone()),
            None => std::env::var(e).ok().map(|v| format!("{e}={v}")),
        })
        .collect()
}
