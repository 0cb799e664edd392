//! A build, end to end.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use kiln_frontend::BuildOpts;
use kiln_ignore::Matcher;
use kiln_oci::{Digest, Platform, Reference};
use kiln_progress::Progress;
use kiln_solver::Solver;
use kiln_worker::{Context, LlbGraph};

use crate::output::Output;
use crate::resolver::EngineResolver;
use crate::{Engine, Error, Result, io};

#[derive(Debug, Clone, Default)]
pub struct BuildRequest {
    pub context: PathBuf,
    /// The Dockerfile; `None` means `<context>/Dockerfile`.
    pub dockerfile: Option<PathBuf>,
    pub target: Option<String>,
    pub build_args: BTreeMap<String, String>,
    pub tags: Vec<Reference>,
    pub outputs: Vec<Output>,
    pub no_cache: bool,
    pub platform: Option<Platform>,
    /// Two or more: a multi-platform build (`--platform a,b`), whose result is an index;
    /// `platform` is then `None`.
    pub platforms: Vec<Platform>,
    /// Seconds since the epoch to write as the build's time (`SOURCE_DATE_EPOCH`).
    pub source_date_epoch: Option<i64>,
    /// Values for `RUN --mount=type=secret`, by id.
    pub secrets: kiln_worker::Secrets,
    /// Agents for `RUN --mount=type=ssh`, by id.
    pub ssh: kiln_worker::SshAgents,
    /// `--allow`, `--add-host`, `--ulimit`, `--shm-size`, `--network`, `--cgroup-parent`,
    /// `--resource`. An `--add-host` address `host-gateway` is mapped with the config's
    /// `host-gateway-ip`.
    pub run: kiln_frontend::RunOpts,
    /// The Dockerfile's text when it does not come from a file (`-f -`, read from stdin).
    pub dockerfile_text: Option<String>,
    /// `--label`: set on the image config, over the Dockerfile's `LABEL`s of the same key.
    pub labels: BTreeMap<String, String>,
    /// `--pull`: base images always come from the registry, never the local image store.
    pub pull: bool,
    /// `--no-cache-filter`: stages built without the cache.
    pub no_cache_filter: Vec<String>,
    /// `--squash`: the final stage's layers merged into one on top of its base.
    pub squash: bool,
    /// `--build-context NAME=VALUE`, by the key the frontend looks names up by.
    pub named_contexts: BTreeMap<String, crate::NamedContextSource>,
    /// A tarball (perhaps compressed) that is the context, read once (`kiln build - <
    /// ctx.tar`); `context` is then ignored and a relative `dockerfile` names a file in it.
    pub context_archive: Option<crate::ContextArchive>,
    /// `--cache-from`: records looked up after the local ones (cache_import.rs).
    pub cache_from: Vec<crate::CacheImport>,
    /// `--cache-to`: where the build's records go once the image is exported (cache_export.rs).
    pub cache_to: Vec<crate::CacheExport>,
    /// `--offline`: base images from the local image store or earlier lookups, layers from
    /// the content store or a local cache; no registry is asked anything.
    pub offline: bool,
    /// `--pin FILE`: image references resolved to the digests the file lists; what it lacks
    /// is resolved as usual and added to it after the build.
    pub pin: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct BuildResult {
    pub manifest: Digest,
    /// The manifest's media type and size, for its descriptor (`--metadata-file`).
    pub manifest_media_type: String,
    pub manifest_size: u64,
    /// The config digest: what `docker images` calls the image ID.
    pub image_id: Digest,
    pub warnings: Vec<String>,
    /// Every name the image got in the store or a registry (`image.name` in buildx's metadata).
    pub names: Vec<String>,
    /// The image's platform and creation time (RFC 3339, whole seconds), which BuildKit puts on
    /// the image's descriptor (`platform`, `org.opencontainers.image.created`).
    pub platform: kiln_oci::Platform,
    pub created: Option<String>,
    /// The steps that did not come from the cache and why (`--explain`); empty for a
    /// multi-platform build.
    pub explain: Vec<crate::ExplainedStep>,
}

impl Engine {
    pub async fn build(&self, req: BuildRequest, progress: &Progress) -> Result<BuildResult> {
        if req.offline && !self.offline {
            check_offline(&req)?;
            return Box::pin(self.offline()?.build(req, progress)).await;
        }
        self.build_inner(req, progress).await
    }

    async fn build_inner(&self, mut req: BuildRequest, progress: &Progress) -> Result<BuildResult> {
        // A prune in this process meanwhile must leave unreferenced data alone.
        let _running = self.build_running();
        if req.platforms.len() > 1 {
            return self.build_multi(req, progress).await;
        }
        if let Some(why) = req.outputs.iter().find_map(Output::unsupported) {
            return Err(Error::Unsupported(why));
        }
        let target = req
            .platform
            .clone()
            .unwrap_or_else(|| self.default_platform());
        let step_keys = crate::explain::StepKeys::new(&self.root, dockerfile_identity(&req));
        crate::output::check_annotations(&mut req.outputs, &target).map_err(Error::Usage)?;
        let Prelude {
            req,
            loaded:
                Loaded {
                    source,
                    dockerfile_name,
                    excludes,
                    matcher,
                },
            run,
            mut archive_context,
            git_context,
        } = self.prelude(req, progress).await?;
        let platform = req
            .platform
            .clone()
            .unwrap_or_else(|| self.default_platform());
        let named = self.prepare_named_contexts(&req.named_contexts, &platform)?;
        let opts = BuildOpts {
            dockerfile_name: dockerfile_name.clone(),
            build_args: req.build_args.clone(),
            target: req.target.clone(),
            platform: platform.clone(),
            excludes,
            created: created_time(req.epoch()),
            run,
            no_cache_filter: req.no_cache_filter.clone(),
            named_contexts: named.contexts,
            multi_platform: false,
        };
        let mut pins = req.pin.as_deref().map(crate::pin::Pins::load).transpose()?;
        let resolver = EngineResolver::for_build(self, &req, pins.as_ref(), progress, false);
        let mut converted = kiln_frontend::convert(&source, &opts, &resolver).await?;
        let resolved = resolver.resolved();
        drop(resolver);
        // As BuildKit's `label:` options: on the final config, after the Dockerfile's LABELs,
        // with no history entry.
        if !req.labels.is_empty() {
            let labels = converted
                .image
                .config
                .labels
                .get_or_insert_with(Default::default);
            labels.extend(req.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        for w in &converted.warnings {
            progress.warn(w.clone());
        }
        let cdi = self.cdi_devices(&converted.definition, &req.run)?;

        // A tarball context so far holds its Dockerfile: now what the steps read from it.
        if let Some(a) = &mut archive_context {
            a.materialise(&converted.definition, progress).await?;
        }
        let context_dir = std::fs::canonicalize(&req.context).map_err(io(format!(
            "the build context `{}` cannot be read",
            req.context.display()
        )))?;
        let mut worker = self.worker(Some(Context {
            dir: context_dir,
            matcher,
        }));
        for (name, ctx) in named.locals {
            worker = worker.with_context(name, ctx);
        }
        let (cache, imported_mounts) = self
            .open_build_cache(&req.cache_from, std::slice::from_ref(&platform), progress)
            .await?;
        let worker = Arc::new(
            worker
                .with_secrets(req.secrets.clone())
                .with_ssh(req.ssh.clone())
                .with_proxy_env(converted.proxy_env.clone())
                .with_cdi(cdi)
                .with_file_hashes(self.root.join("context-hashes"))
                .with_imported_cache_mounts(imported_mounts.clone())
                .with_keep_alive(Box::new((archive_context, git_context))),
        );
        let root = converted.root.0;
        let no_cache_nodes = std::mem::take(&mut converted.no_cache);
        let filtered: std::collections::HashSet<usize> =
            no_cache_nodes.iter().map(|n| n.0).collect();
        let locations = converted.locations.clone();
        let graph = Arc::new(LlbGraph::new(converted.definition));
        let solver = Solver::new(
            graph.clone(),
            worker.clone(),
            cache,
            progress.clone(),
            req.no_cache,
        )
        .with_in_flight(self.in_flight.clone())
        .with_no_cache_for(no_cache_nodes.into_iter().map(|n| n.0));
        let solved = solver.solve(root).await;
        let all_solved = solver.solved();
        let explain = match &solved {
            Ok(_) => step_keys.explain(&graph, &converted.steps, &all_solved, &worker, &|v| {
                if req.no_cache {
                    crate::explain::Forced::NoCache
                } else if filtered.contains(&v) {
                    crate::explain::Forced::NoCacheFilter
                } else {
                    crate::explain::Forced::No
                }
            }),
            Err(_) => Vec::new(),
        };
        let cache_records = match req.cache_to.is_empty() {
            true => Vec::new(),
            false => all_solved,
        };
        let solved = SolveEnd {
            graph: &graph,
            locations: &locations,
            dockerfile_name: &dockerfile_name,
            source: &source,
        }
        .finish(&worker, solved, progress)?;

        // The base image's layers: the history entries it brought that made one.
        let base_layers = converted.image.history
            [..converted.base_history.min(converted.image.history.len())]
            .iter()
            .filter(|h| !h.empty_layer)
            .count();
        let image = crate::cache_inline::with_inline_cache(
            converted.image,
            &req.cache_to,
            &req.outputs,
            req.squash,
            &cache_records,
            &solved.value,
        )?;
        let (image_value, image) = if req.squash {
            self.squash(
                &solved.value,
                image,
                &converted.base,
                converted.base_history,
                progress,
            )
            .await?
        } else {
            (solved.value.clone(), image)
        };
        let platform = kiln_oci::Platform {
            os: image.os.clone(),
            architecture: image.architecture.clone(),
            variant: image.variant.clone(),
        };
        let created = image.created.as_deref().map(whole_seconds);
        let exported = self
            .export(
                &image_value,
                &solved.value,
                image,
                &req,
                base_layers,
                progress,
            )
            .await?;
        let inputs = crate::cache_export::ExportInputs {
            solved: &cache_records,
            results: vec![&solved.value],
            graph: &graph,
            imported_mounts: &imported_mounts,
        };
        self.export_caches(&req.cache_to, &inputs, progress).await?;
        save_pins(pins.as_mut(), &resolved)?;
        let manifest_bytes = self.content.read(&exported.0)?;
        let manifest_media_type = serde_json::from_slice::<serde_json::Value>(&manifest_bytes)
            .ok()
            .and_then(|m| m["mediaType"].as_str().map(str::to_string))
            .unwrap_or_default();
        Ok(BuildResult {
            manifest_media_type,
            manifest_size: manifest_bytes.len() as u64,
            manifest: exported.0,
            image_id: exported.1,
            warnings: converted.warnings,
            names: exported.2,
            platform,
            created,
            explain,
        })
    }
}

/// Which Dockerfile a build reads, for `--explain` to compare its steps only with its own: the
/// context directory and the Dockerfile path as absolute paths (`-` for one read from stdin).
fn dockerfile_identity(req: &BuildRequest) -> String {
    let abs = |p: &std::path::Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let dockerfile = match (&req.dockerfile_text, &req.dockerfile) {
        (Some(_), _) => "-".into(),
        (None, Some(f)) => abs(f),
        (None, None) => abs(&req.context).join("Dockerfile"),
    };
    format!("{}\0{}", abs(&req.context).display(), dockerfile.display())
}

/// `--pin FILE` after a successful build: what the build resolved that the file lacked is added.
pub(crate) fn save_pins(
    pins: Option<&mut crate::pin::Pins>,
    resolved: &[(Reference, Platform, Digest)],
) -> Result<()> {
    let Some(pins) = pins else {
        return Ok(());
    };
    for (reference, platform, digest) in resolved {
        pins.add(reference, platform, digest);
    }
    pins.save()
}

/// `--offline` with something that exists only on a registry: refused before anything runs.
fn check_offline(req: &BuildRequest) -> Result<()> {
    let refuse = |what: &str| {
        Err(Error::Usage(format!(
            "--offline with {what}: that needs the network; drop one of them"
        )))
    };
    if req.pull {
        return refuse("--pull");
    }
    if req.outputs.iter().any(|o| o.push) {
        return refuse("a push (--push, type=registry or push=true)");
    }
    let registry = |l: &crate::CacheLocation| matches!(l, crate::CacheLocation::Registry(_));
    if req.cache_from.iter().any(|c| registry(&c.location)) {
        return refuse("--cache-from type=registry (a local cache, type=local, is read offline)");
    }
    if req.cache_to.iter().any(|c| registry(&c.location)) {
        return refuse("--cache-to type=registry");
    }
    Ok(())
}

/// An RFC 3339 time without its fraction (`2026-12-07T20:15:11.123Z` → `2026-12-07T20:15:11Z`).
pub(crate) fn whole_seconds(t: &str) -> String {
    match t.split_once('.') {
        Some((secs, _)) => format!("{secs}Z"),
        None => t.to_string(),
    }
}

/// The Dockerfile location of the vertex a solve error names.
/// What the end of a solve needs to report a failure at its Dockerfile line.
pub(crate) struct SolveEnd<'a> {
    pub graph: &'a LlbGraph,
    pub locations: &'a std::collections::HashMap<kiln_llb::NodeId, kiln_dockerfile::Location>,
    pub dockerfile_name: &'a str,
    pub source: &'a str,
}

impl SolveEnd<'_> {
    /// After the solve: the file hashes saved, the emulation summary shown, and a failure made
    /// the error the user sees (the chain of causes and the failing step's line).
    pub(crate) fn finish<T>(
        &self,
        worker: &kiln_worker::LlbWorker,
        solved: std::result::Result<T, kiln_solver::SharedError>,
        progress: &Progress,
    ) -> Result<T> {
        // Only a hint cache: failing to save it costs rehashing next time, not the build.
        let _ = worker.save_file_hashes();
        // How much of the build QEMU took, as its own closing line of the progress.
        if let Some(summary) = worker.emulation_stats().summary() {
            progress.vertex(format!("[emulation] {summary}")).done();
        }
        solved.map_err(|e| {
            let message = kiln_solver::error_chain(&*e);
            let location = failing_location(&e, self.graph, self.locations).map(|loc| {
                kiln_dockerfile::render_snippet(
                    self.dockerfile_name,
                    self.source,
                    loc,
                    "the step that failed",
                )
            });
            Error::Solve { message, location }
        })
    }
}

pub(crate) fn failing_location(
    err: &kiln_solver::Error,
    graph: &LlbGraph,
    locations: &std::collections::HashMap<kiln_llb::NodeId, kiln_dockerfile::Location>,
) -> Option<kiln_dockerfile::Location> {
    let name = match err {
        kiln_solver::Error::Vertex { name, .. } | kiln_solver::Error::CacheKey { name, .. } => name,
    };
    graph
        .def
        .nodes()
        .find(|(_, n)| &n.name == name)
        .and_then(|(id, _)| locations.get(&id).cloned())
}

/// The time written into `created` fields: `SOURCE_DATE_EPOCH` when the caller gives one.
pub(crate) fn created_time(source_date_epoch: Option<i64>) -> String {
    let t = match source_date_epoch {
        Some(secs) => chrono::DateTime::from_timestamp(secs, 0).unwrap_or_else(chrono::Utc::now),
        None => chrono::Utc::now(),
    };
    t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// The Dockerfile and `.dockerignore` of a build, read once however many platforms it has.
pub(crate) struct Loaded {
    pub source: String,
    pub dockerfile_name: String,
    pub excludes: Vec<String>,
    pub matcher: Option<Arc<Matcher>>,
}

/// What every build starts from: the request with its context made local (a Git checkout, an
/// unpacked tarball: removed when this is dropped), the Dockerfile and `.dockerignore` read, and
/// the RUN options checked against the config.
pub(crate) struct Prelude {
    pub req: BuildRequest,
    pub loaded: Loaded,
    pub run: kiln_frontend::RunOpts,
    pub archive_context: Option<crate::archive_context::TempContext>,
    pub git_context: Option<crate::git_context::GitContext>,
}

impl Engine {
    pub(crate) async fn prelude(&self, req: BuildRequest, progress: &Progress) -> Result<Prelude> {
        // A Git URL context is checked out for the build's duration.
        let (req, git_context) = self.git_context(req, progress).await?;
        // So is a tarball from stdin or a URL, unpacked; a `-f` URL is fetched.
        let (req, archive_context) = self.archive_context(req, progress).await?;
        let loaded = self.load_definition(&req, archive_context.is_some(), progress)?;
        self.check_entitlements(&req.run)?;
        let mut run = req.run.clone();
        self.map_host_gateway(&mut run)?;
        Ok(Prelude {
            req,
            loaded,
            run,
            archive_context,
            git_context,
        })
    }

    /// `[internal] load build definition` and `[internal] load .dockerignore`.
    /// `archive`: the context is an unpacked tarball, whose `.dockerignore` excludes nothing
    /// (BuildKit copies a tarball context whole).
    pub(crate) fn load_definition(
        &self,
        req: &BuildRequest,
        archive: bool,
        progress: &Progress,
    ) -> Result<Loaded> {
        let dockerfile_path = req
            .dockerfile
            .clone()
            .unwrap_or_else(|| req.context.join("Dockerfile"));
        let dockerfile_name = dockerfile_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "Dockerfile".into());

        let v = progress.vertex(format!(
            "[internal] load build definition from {dockerfile_name}"
        ));
        let source = match &req.dockerfile_text {
            Some(text) => text.clone(),
            None => std::fs::read_to_string(&dockerfile_path).map_err(io(format!(
                "failed to read the Dockerfile `{}`",
                dockerfile_path.display()
            )))?,
        };
        v.status(&format!("transferring dockerfile: {}B done", source.len()));
        v.done();

        let v = progress.vertex("[internal] load .dockerignore");
        let ignore_path = req.context.join(".dockerignore");
        let ignore = match archive {
            true => Err(std::io::ErrorKind::NotFound.into()),
            false => std::fs::read_to_string(&ignore_path),
        };
        let (excludes, matcher) = match ignore {
            Ok(text) => {
                let matcher = Matcher::from_dockerignore(&text).map_err(|e| Error::Invalid {
                    what: format!("`{}`", ignore_path.display()),
                    source: Box::new(e),
                })?;
                let patterns = matcher
                    .rules()
                    .iter()
                    .map(|r| r.text().to_string())
                    .collect();
                (patterns, Some(Arc::new(matcher)))
            }
            Err(_) => (Vec::new(), None),
        };
        v.status(&format!(
            "transferring context: {}B done",
            excludes.iter().map(|e: &String| e.len() + 1).sum::<usize>()
        ));
        v.done();

        Ok(Loaded {
            source,
            dockerfile_name,
            excludes,
            matcher,
        })
    }

    /// `--add-host NAME:host-gateway`: the config's `host-gateway-ip`, as dockerd's; buildx's
    /// words when there is none (its remote driver cannot derive one either).
    pub(crate) fn map_host_gateway(&self, run: &mut kiln_frontend::RunOpts) -> Result<()> {
        for h in run
            .extra_hosts
            .iter_mut()
            .filter(|h| h.ip == "host-gateway")
        {
            match self.host_gateway_ip {
                Some(ip) => h.ip = ip.to_string(),
                None => {
                    return Err(Error::Usage(
                        "unable to derive the IP value for host-gateway: set `host-gateway-ip` \
                         in the config file"
                            .into(),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Refuses a build asking for an entitlement the configuration does not allow, as buildkitd
    /// refuses one missing from `insecure-entitlements`.
    pub(crate) fn check_entitlements(&self, run: &kiln_frontend::RunOpts) -> Result<()> {
        match run
            .entitlements
            .iter()
            .find(|e| !self.insecure_entitlements.contains(e))
        {
            Some(e) => Err(Error::EntitlementNotAllowed { entitlement: *e }),
            None => Ok(()),
        }
    }
}
