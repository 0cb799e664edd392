//! A Git URL as the build context (`kiln build https://host/repo.git#main:dir`), as `docker
//! build` accepts one: the repository is checked out into a temporary dir under the data dir,
//! which is the context (Dockerfile and `.dockerignore` included) for this build and is removed
//! afterwards.

use std::path::PathBuf;

use kiln_progress::Progress;
use kiln_worker::git;

use crate::build::BuildRequest;
use crate::{Engine, Error, Result, io};

/// BuildKit's build arg that keeps `.git` in a Git context.
const KEEP_GIT_DIR_ARG: &str = "BUILDKIT_CONTEXT_KEEP_GIT_DIR";

/// The checked-out context; dropping it removes the checkout.
pub(crate) struct GitContext {
    dir: PathBuf,
}

impl Drop for GitContext {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Engine {
    /// When the request's context is a Git URL, fetches it and returns the request with the
    /// checkout as its context (a relative `-f` names a file inside it, as with docker), and
    /// the guard that removes the checkout. Any other context is returned unchanged.
    pub(crate) async fn git_context(
        &self,
        mut req: BuildRequest,
        progress: &Progress,
    ) -> Result<(BuildRequest, Option<GitContext>)> {
        let Some(text) = req.context.to_str() else {
            return Ok((req, None));
        };
        // A directory of that name wins, as a path the user meant.
        if req.context.exists() {
            return Ok((req, None));
        }
        let Some(parsed) = kiln_frontend::parse_git_ref(text) else {
            return Ok((req, None));
        };
        let parsed = parsed.map_err(|e| Error::Invalid {
            what: "build context".into(),
            source: Box::new(e),
        })?;
        let keep_arg = match req.build_args.get(KEEP_GIT_DIR_ARG) {
            None => None,
            Some(v) => Some(parse_bool(v).ok_or_else(|| Error::Invalid {
                what: format!("build arg {KEEP_GIT_DIR_ARG}"),
                source: format!("`{v}` is not a boolean").into(),
            })?),
        };
        let op = kiln_llb::GitOp {
            remote: parsed.remote,
            reference: parsed.reference,
            subdir: parsed.subdir,
            keep_git_dir: parsed.keep_git_dir.or(keep_arg).unwrap_or(false),
            checksum: parsed.checksum.map(|c| c.to_ascii_lowercase()),
            skip_submodules: parsed.submodules == Some(false),
            mtime_commit: parsed.mtime_commit,
        };
        let v = progress.vertex(format!("[internal] load git source {}", git::redact(text)));
        let scratch = self.root.join("tmp");
        let guard = GitContext {
            dir: scratch.join(format!("git-context-{:016x}", rand::random::<u64>())),
        };
        let fetched = async {
            let resolved = git::resolve(&op, &scratch).await?;
            v.status(&format!("checking out {}", resolved.commit));
            git::checkout(&op, &resolved, &guard.dir.join("work")).await
        }
        .await;
        let tree = match fetched {
            Ok(t) => t,
            Err(source) => {
                v.error(&source.to_string());
                return Err(kiln_worker::Error::Git {
                    remote: git::redact(&op.remote),
                    source,
                }
                .into());
            }
        };
        v.done();
        let context = std::fs::canonicalize(&tree).map_err(io("reading the Git checkout"))?;
        req.dockerfile = req
            .dockerfile
            .map(|f| if f.is_relative() { context.join(f) } else { f });
        req.context = context;
        Ok((req, Some(guard)))
    }
}

fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}
