//! `--platform a,b,...`: one build for several platforms. The frontend converts the Dockerfile
//! once per platform; the graphs are merged into one definition, where identical ops (same
//! digest: a `FROM --platform=$BUILDPLATFORM` stage, a COPY of the context into it) become one
//! node, and one solver solves every platform's root, so shared steps run once and the rest run
//! in parallel. The export writes one image per platform and an OCI index over them.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use kiln_frontend::BuildOpts;
use kiln_llb::{Definition, NodeId};
use kiln_oci::{Digest, ImageConfig, Platform, media_type};
use kiln_progress::Progress;
use kiln_solver::Solver;
use kiln_worker::{Context, LlbGraph, Value};
use serde_json::json;

use crate::build::{BuildRequest, BuildResult, Loaded, Prelude, created_time};
use crate::output::{ExporterKind, Output};
use crate::resolver::EngineResolver;
use crate::{Engine, Error, Result, io};

/// What one platform's conversion left for the export.
struct Target {
    platform: Platform,
    root: NodeId,
    image: ImageConfig,
    base_layers: usize,
}

/// Why a multi-platform build cannot do what `req` asks yet, in "not supported yet" words.
fn unsupported(req: &BuildRequest) -> Option<String> {
    let what = if req.squash {
        "--squash".to_string()
    } else if let Some(o) = req.outputs.iter().find(|o| !supported_output(o)) {
        format!("--output type={} for several platforms", o.kind.name())
    } else {
        return None;
    };
    Some(format!(
        "{what} is not supported yet (a multi-platform build writes --output type=image, \
         type=docker, type=oci, type=local, type=tar, type=registry or --push)"
    ))
}

fn supported_output(o: &Output) -> bool {
    let plain = o.annotations.is_empty() && !o.unpack && !o.name_canonical && !o.push_by_digest;
    plain
        && match o.kind {
            ExporterKind::Oci => o.dest.is_some() && o.tar,
            // An archive, or (no dest) the store, which keeps the index.
            ExporterKind::Docker => o.dest.is_none() || o.tar,
            ExporterKind::Local | ExporterKind::Tar => true,
            ExporterKind::Registry => true,
            ExporterKind::Image => true,
            ExporterKind::CacheOnly => true,
        }
}

impl Engine {
    pub(crate) async fn build_multi(
        &self,
        req: BuildRequest,
        progress: &Progress,
    ) -> Result<BuildResult> {
        if let Some(why) = req.outputs.iter().find_map(Output::unsupported) {
            return Err(Error::Unsupported(why));
        }
        if let Some(why) = unsupported(&req) {
            return Err(Error::Unsupported(why));
        }
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

        let created = created_time(req.epoch());
        let mut def = Definition::new();
        let mut targets = Vec::new();
        let mut no_cache = HashSet::new();
        let mut locations = HashMap::new();
        let mut warnings: Vec<String> = Vec::new();
        let mut proxy_env = Vec::new();
        let mut locals = None;
        let mut pins = req.pin.as_deref().map(crate::pin::Pins::load).transpose()?;
        // One resolver: an image a stage names for the build platform is looked up once.
        let resolver = EngineResolver::for_build(self, &req, pins.as_ref(), progress, true);
        for platform in &req.platforms {
            let named = self.prepare_named_contexts(&req.named_contexts, platform)?;
            let opts = BuildOpts {
                dockerfile_name: dockerfile_name.clone(),
                build_args: req.build_args.clone(),
                target: req.target.clone(),
                platform: platform.clone(),
                excludes: excludes.clone(),
                created: created.clone(),
                run: run.clone(),
                no_cache_filter: req.no_cache_filter.clone(),
                named_contexts: named.contexts,
                multi_platform: true,
            };
            locals.get_or_insert(named.locals);
            let mut converted = kiln_frontend::convert(&source, &opts, &resolver).await?;
            let at = def.merge(&converted.definition);
            no_cache.extend(converted.no_cache.iter().map(|n| at[n.0].0));
            for (node, loc) in &converted.locations {
                locations.entry(at[node.0]).or_insert(*loc);
            }
            if !req.labels.is_empty() {
                let labels = converted
                    .image
                    .config
                    .labels
                    .get_or_insert_with(Default::default);
                labels.extend(req.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
            // The same check usually fires for every platform: reported once.
            for w in converted.warnings {
                if !warnings.contains(&w) {
                    progress.warn(w.clone());
                    warnings.push(w);
                }
            }
            proxy_env = converted.proxy_env;
            let base_layers = converted.image.history
                [..converted.base_history.min(converted.image.history.len())]
                .iter()
                .filter(|h| !h.empty_layer)
                .count();
            targets.push(Target {
                platform: platform.clone(),
                root: at[converted.root.0],
                image: converted.image,
                base_layers,
            });
        }
        let resolved = resolver.resolved();
        drop(resolver);

        // A tarball context unpacks what every platform's graph reads.
        if let Some(a) = &mut archive_context {
            a.materialise(&def, progress).await?;
        }
        let cdi = self.cdi_devices(&def, &req.run)?;
        let context_dir = std::fs::canonicalize(&req.context).map_err(io(format!(
            "the build context `{}` cannot be read",
            req.context.display()
        )))?;
        let mut worker = self.worker(Some(Context {
            dir: context_dir,
            matcher,
        }));
        for (name, ctx) in locals.unwrap_or_default() {
            worker = worker.with_context(name, ctx);
        }
        let (cache, imported_mounts) = self
            .open_build_cache(&req.cache_from, &req.platforms, progress)
            .await?;
        let worker = Arc::new(
            worker
                .with_secrets(req.secrets.clone())
                .with_ssh(req.ssh.clone())
                .with_proxy_env(proxy_env)
                .with_cdi(cdi)
                .with_file_hashes(self.root.join("context-hashes"))
                .with_imported_cache_mounts(imported_mounts.clone())
                .with_keep_alive(Box::new((archive_context, git_context))),
        );
        let graph = Arc::new(LlbGraph::new(def));
        let solver = Solver::new(
            graph.clone(),
            worker.clone(),
            cache,
            progress.clone(),
            req.no_cache,
        )
        .with_in_flight(self.in_flight.clone())
        .with_no_cache_for(no_cache);
        // One solver for every root: a vertex two platforms share is solved once.
        let solved =
            futures::future::try_join_all(targets.iter().map(|t| solver.solve(t.root.0))).await;
        let cache_records = match req.cache_to.is_empty() {
            true => Vec::new(),
            false => solver.solved(),
        };
        let solved = crate::build::SolveEnd {
            graph: &graph,
            locations: &locations,
            dockerfile_name: &dockerfile_name,
            source: &source,
        }
        .finish(&worker, solved, progress)?;
        let mut images = Vec::new();
        for (mut t, value) in targets
            .into_iter()
            .zip(solved.into_iter().map(|s| s.value.clone()))
        {
            // Each platform's image carries the records of its own chain (or, without
            // `type=inline`, none: not even its base image's).
            t.image = crate::cache_inline::with_inline_cache(
                t.image,
                &req.cache_to,
                &req.outputs,
                req.squash,
                &cache_records,
                &value,
            )?;
            images.push((t, value));
        }
        let (index, size, index_type, names) = self.export_multi(&images, &req, progress).await?;
        // One cache for all platforms, as BuildKit exports it: every platform's records.
        let inputs = crate::cache_export::ExportInputs {
            solved: &cache_records,
            results: images.iter().map(|(_, v)| v).collect(),
            graph: &graph,
            imported_mounts: &imported_mounts,
        };
        self.export_caches(&req.cache_to, &inputs, progress).await?;
        crate::build::save_pins(pins.as_mut(), &resolved)?;
        Ok(BuildResult {
            manifest: index.clone(),
            manifest_media_type: index_type.to_string(),
            manifest_size: size,
            image_id: index,
            warnings,
            names,
            platform: images[0].0.platform.clone(),
            // BuildKit annotates the index's descriptor with the build's time too.
            created: Some(crate::build::whole_seconds(&created)),
            // Step records are per Dockerfile step, not per platform: not kept here yet.
            explain: Vec::new(),
        })
    }

    /// Writes each platform's image and the index over them, then sends them to the outputs:
    /// an OCI archive holds the index and every platform's blobs; a push sends each platform's
    /// manifest by digest, then the index under the tag. Returns the (last) index's digest and
    /// size, and the names pushed.
    async fn export_multi(
        &self,
        images: &[(Target, Value)],
        req: &BuildRequest,
        progress: &Progress,
    ) -> Result<(Digest, u64, &'static str, Vec<String>)> {
        let v = progress.vertex("exporting to image");
        if req.outputs.is_empty() || req.outputs.iter().any(|o| o.kind.is_image()) {
            v.status("exporting layers");
            for (_, value) in images {
                self.fetch_missing_blobs(value.layers(), &v).await?;
            }
        }
        let mut manifests = Vec::new();
        for (t, value) in images {
            let (manifest, config) = self.write_image(value.layers(), t.image.clone(), None)?;
            v.status(&format!(
                "exporting manifest {manifest} ({}) done",
                t.platform
            ));
            v.status(&format!("exporting config {config} ({}) done", t.platform));
            manifests.push(manifest);
        }
        let descriptors = manifests
            .iter()
            .zip(images)
            .map(|(m, (t, _))| {
                let size = self.content.read(m)?.len() as u64;
                Ok((
                    m.clone(),
                    media_type::OCI_MANIFEST.to_string(),
                    size,
                    &t.platform,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let (mut index, mut index_size, mut index_type) = self.write_index(&descriptors)?;
        v.status(&format!("exporting manifest list {index} done"));
        let mut names = Vec::new();
        // The store keeps the index (blobs as held) under every name an image output gives.
        let default = [Output::new(ExporterKind::Image)];
        let outputs = if req.outputs.is_empty() {
            &default[..]
        } else {
            &req.outputs[..]
        };
        for output in outputs
            .iter()
            .filter(|o| crate::export_names::stores_image(o))
        {
            for name in crate::export_names::output_names(req, output)? {
                self.images.tag(&name, &index)?;
                v.status(&format!("naming to {} done", name.whole()));
                names.push(name.whole());
            }
        }
        for output in &req.outputs {
            let mut opts = output.export_opts(req.epoch());
            match output.kind {
                ExporterKind::Local | ExporterKind::Tar => {
                    let rv = progress.vertex(match output.kind {
                        ExporterKind::Local => "exporting to client directory",
                        _ => "exporting to client tarball",
                    });
                    let trees: Vec<(String, &[kiln_worker::LayerRef])> = images
                        .iter()
                        .map(|(t, value)| {
                            (
                                crate::export_rootfs::platform_dir(&t.platform),
                                value.layers(),
                            )
                        })
                        .collect();
                    // BuildKit's tar exporter splits whatever platform-split says.
                    if output.kind == ExporterKind::Local && output.platform_split == Some(false) {
                        let trees: Vec<(String, &[kiln_worker::LayerRef])> = images
                            .iter()
                            .map(|(t, value)| (t.platform.to_string(), value.layers()))
                            .collect();
                        self.export_rootfs_merged(&trees, output, &rv).await?;
                    } else {
                        self.export_rootfs_split(&trees, output, &rv).await?;
                    }
                    rv.done();
                }
                ExporterKind::Oci | ExporterKind::Docker => {
                    let Some(dest) = &output.dest else { continue };
                    v.status("compressing layers");
                    let mut exported = Vec::new();
                    for ((t, _), m) in images.iter().zip(&manifests) {
                        opts.base_layers = t.base_layers;
                        let e = self.exported_manifest(m, &opts).await?;
                        exported.push((e.manifest, e.media_type, e.size, &t.platform));
                    }
                    (index, index_size, index_type) = self.write_index(&exported)?;
                    v.status(&format!("sending tarball to {}", dest.display()));
                    let tags = crate::export_names::output_names(req, output)?;
                    let content = &self.content;
                    let index = &index;
                    let archive = kiln_exporter::ArchiveOptions::default();
                    let kind = output.kind;
                    crate::export_rootfs::write_to_dest(dest, false, |out| {
                        // Docker's archive as `docker save` (Docker 25+) writes an index: the
                        // OCI layout plus manifest.json naming this machine's image of it.
                        if kind == ExporterKind::Docker {
                            kiln_exporter::docker::write_archive_with(
                                content, index, &tags, &archive, out,
                            )?;
                        } else {
                            kiln_exporter::oci::write_archive_with(
                                content, index, &tags, &archive, out,
                            )?;
                        }
                        Ok(())
                    })?;
                }
                ExporterKind::Image | ExporterKind::Registry if output.push => {
                    let tags = crate::export_names::output_names(req, output)?;
                    if tags.is_empty() {
                        // buildx's words.
                        return Err(Error::Usage(
                            "tag is needed when pushing to registry".into(),
                        ));
                    }
                    for name in &tags {
                        let mut pushed = Vec::new();
                        for ((t, _), m) in images.iter().zip(&manifests) {
                            opts.base_layers = t.base_layers;
                            let e = self
                                .push_manifest_as(name, m, &opts, true, progress)
                                .await?;
                            pushed.push((e.manifest, e.media_type, e.size, &t.platform));
                        }
                        // The index last, once every manifest it names is in the repository.
                        (index, index_size, index_type) = self.write_index(&pushed)?;
                        let bytes = self.content.read(&index)?;
                        let pv = progress.vertex(format!("pushing {}", name.whole()));
                        let digest = self
                            .registry
                            .push_manifest(name, index_type, &bytes)
                            .await?;
                        pv.status(&format!(
                            "pushing manifest list for {}@{digest} done",
                            name.whole()
                        ));
                        pv.done();
                        names.push(name.whole());
                    }
                }
                _ => {}
            }
        }
        v.done();
        let mut seen = HashSet::new();
        names.retain(|n| seen.insert(n.clone()));
        Ok((index, index_size, index_type, names))
    }

    /// An index over (manifest, media type, size, platform), put in the content store: OCI's,
    /// or a Docker manifest list when the manifests are Docker's (`oci-mediatypes=false`), as
    /// BuildKit writes them. Returns its digest, size and media type.
    pub(crate) fn write_index(
        &self,
        manifests: &[(Digest, String, u64, &Platform)],
    ) -> Result<(Digest, u64, &'static str)> {
        let media_type = if !manifests.is_empty()
            && manifests
                .iter()
                .all(|(_, m, _, _)| m == media_type::DOCKER_MANIFEST)
        {
            media_type::DOCKER_MANIFEST_LIST
        } else {
            media_type::OCI_INDEX
        };
        let entries: Vec<serde_json::Value> = manifests
            .iter()
            .map(|(digest, media_type, size, platform)| {
                json!({
                    "mediaType": media_type,
                    "digest": digest.to_string(),
                    "size": size,
                    "platform": platform,
                })
            })
            .collect();
        let index = json!({
            "schemaVersion": 2,
            "mediaType": media_type,
            "manifests": entries,
        });
        let bytes = serde_json::to_vec(&index).expect("json values serialise");
        Ok((
            self.content.put(&bytes, None)?,
            bytes.len() as u64,
            media_type,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(outputs: Vec<Output>, tags: &[&str]) -> BuildRequest {
        BuildRequest {
            context: ".".into(),
            tags: tags.iter().map(|t| t.parse().unwrap()).collect(),
            outputs,
            platforms: vec![
                Platform::new("linux", "amd64", None),
                Platform::new("linux", "arm64", None),
            ],
            ..Default::default()
        }
    }

    #[test]
    fn outputs_not_built_yet_are_refused() {
        let oci = |dest: Option<&str>| {
            let mut o = Output::new(ExporterKind::Oci);
            o.dest = dest.map(Into::into);
            o
        };
        assert_eq!(
            unsupported(&request(vec![oci(Some("x.tar"))], &["a"])),
            None
        );
        assert_eq!(
            unsupported(&request(vec![Output::new(ExporterKind::Registry)], &["a"])),
            None
        );
        assert_eq!(unsupported(&request(vec![], &[])), None);
        assert_eq!(unsupported(&request(vec![], &["a"])), None);
        assert_eq!(
            unsupported(&request(vec![Output::new(ExporterKind::Image)], &["a"])),
            None
        );
        let mut push = Output::new(ExporterKind::Image);
        push.push = true;
        assert_eq!(unsupported(&request(vec![push], &["a"])), None);
        assert_eq!(
            unsupported(&request(vec![Output::new(ExporterKind::Local)], &[])),
            None
        );
        let mut docker = Output::new(ExporterKind::Docker);
        docker.dest = Some("x.tar".into());
        assert_eq!(unsupported(&request(vec![docker.clone()], &[])), None);
        docker.tar = false;
        let why = unsupported(&request(vec![docker], &[])).unwrap();
        assert!(
            why.starts_with("--output type=docker for several platforms"),
            "{why}"
        );
        assert!(why.contains("is not supported yet"), "{why}");
        assert_eq!(
            unsupported(&request(vec![Output::new(ExporterKind::Docker)], &["a"])),
            None
        );
        let mut docker_types = Output::new(ExporterKind::Registry);
        docker_types.oci_mediatypes = Some(false);
        assert_eq!(unsupported(&request(vec![docker_types], &["a"])), None);
    }
}
