//! `kiln run`: an image's entrypoint and command in the foreground, as `docker run --rm` does it.

use kiln_executor::{ExitStatus, ProcessSpec, Stdio};
use kiln_oci::{ImageConfig, Reference};
use kiln_progress::Progress;

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
}

impl Engine {
    /// Runs the container to completion; returns its exit code (128+N for a signal).
    pub async fn run(&self, req: RunRequest) -> Result<i32> {
        let name: Reference = req
            .image
            .parse()
            .map_err(|_| Error::Reference(req.image.clone()))?;
        let manifest = match self.images.get(&name)? {
            Some(record) => record.manifest,
            None => self.pull(&name, &Progress::discard()).await?,
        };
        let pinned = crate::resolver::pin(&name, &manifest);
        let worker = self.worker(None);
        let layers = worker.image(&pinned).await?;
        let (_, m, _) = self.local_manifest(&name)?;
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
        let id = format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
        let mut env = cfg.env.clone().unwrap_or_default();
        env.push(format!("HOSTNAME={id}"));
        for e in &req.env {
            match e.split_once('=') {
                Some(_) => env.push(e.clone()),
                None => {
                    if let Ok(v) = std::env::var(e) {
                        env.push(format!("{e}={v}"));
                    }
                }
            }
        }
        let user_spec = req
            .user
            .clone()
            .or_else(|| cfg.user.clone())
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| "root".into());
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
        let status = self
            .executor
            .run(kiln_executor::RunRequest {
                id: format!("kiln-run-{id}"),
                rootfs: &rootfs,
                process: ProcessSpec {
                    args,
                    env,
                    cwd,
                    user,
                    hostname: id.clone(),
                    terminal: false,
                },
                mounts: Vec::new(),
                stdio: Stdio::Inherit,
                network: kiln_executor::Network::Host,
                readonly_rootfs: false,
                sandbox: Default::default(),
            })
            .await?;
        drop(step);
        Ok(match status {
            ExitStatus::Code(c) => c,
            ExitStatus::Signal(s) => 128 + s,
            ExitStatus::Killed { signal, .. } => 128 + signal,
        })
    }
}
