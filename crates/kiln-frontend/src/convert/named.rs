//! Named contexts (`--build-context NAME=VALUE`), as BuildKit's dockerfile2llb looks them up:
//! `FROM NAME` of a name that is no earlier stage, `COPY --from=NAME` and `RUN --mount=from=NAME`
//! of a name that is no stage, read the named context instead of the image; a stage whose name
//! is a named context is replaced by it, its instructions never run. `target:STAGE` makes the
//! name another name of a stage.

use kiln_dockerfile::Instruction;
use kiln_llb::{CopyOp, HttpOp, NodeId, Op};
use kiln_oci::{History, ImageConfig, Platform};

use super::stages::mount_source;
use super::{Converter, Stage, StageResult, empty_image};
use crate::{ImageResolver, NamedContext, Result, context_key};

impl Converter<'_> {
    /// The named context a name (of an image or stage) picks, with its key; `target:` aliases
    /// are not contexts of their own (see [`Self::alias`]).
    pub(super) fn named_context(&self, name: &str) -> Option<(String, NamedContext)> {
        let key = context_key(name).ok()?;
        match self.opts.named_contexts.get(&key)? {
            NamedContext::Stage(_) => None,
            ctx => Some((key, ctx.clone())),
        }
    }

    /// The stage name a `target:STAGE` context gives `name` when no stage has that name;
    /// otherwise `name` itself.
    pub(super) fn alias(&self, stages: &[Stage], name: &str) -> String {
        if mount_source(stages, name).is_some() {
            return name.to_string();
        }
        let key = context_key(name).ok();
        match key.and_then(|k| self.opts.named_contexts.get(&k)) {
            Some(NamedContext::Stage(s)) => s.clone(),
            _ => name.to_string(),
        }
    }

    /// The stage a `target:STAGE` context names when `FROM` cannot use it (no stage of that
    /// name precedes it).
    pub(super) fn later_alias(&self, stages: &[Stage], name: &str) -> Option<String> {
        let target = self.alias(stages, name);
        (target != name).then_some(target)
    }

    /// The context that replaces a stage, when one is named as the stage is.
    pub(super) fn stage_override(&self, stage: &Stage) -> Option<(String, NamedContext)> {
        self.named_context(stage.name.as_deref()?)
    }

    /// A stage replaced by a named context: its filesystem and config, nothing run.
    pub(super) async fn overridden_stage(
        &mut self,
        stage: &Stage<'_>,
        (key, ctx): (String, NamedContext),
        resolver: &dyn ImageResolver,
    ) -> Result<StageResult> {
        let platform = self.stage_platform(stage)?;
        let (node, image) = self
            .named_context_node(stage.from, &key, &ctx, &platform, resolver)
            .await?;
        Ok(StageResult {
            node,
            base_history: image.history.len(),
            image,
            base: key,
            scope: Default::default(),
        })
    }

    /// The filesystem and config of a named context. A directory or Git checkout comes with
    /// the empty image's config, as BuildKit gives a `FROM` of one.
    pub(super) async fn named_context_node(
        &mut self,
        ins: &Instruction,
        key: &str,
        ctx: &NamedContext,
        platform: &Platform,
        resolver: &dyn ImageResolver,
    ) -> Result<(NodeId, ImageConfig)> {
        let label = format!("[context {key}]");
        let (node, name) = match ctx {
            NamedContext::Local { local, excludes } => {
                let src = self.def.add(
                    Op::Local {
                        name: local.clone(),
                        excludes: excludes.clone(),
                    },
                    vec![],
                    format!("{label} load from client"),
                );
                // A local source is no filesystem of its own in kiln: its files (what the
                // .dockerignore lets through, owned by 0:0 as buildx sends them) are copied
                // onto nothing, which is the layer BuildKit makes of it.
                let scratch = self.def.add(Op::Scratch, vec![], "");
                let copy = Op::Copy(CopyOp {
                    sources: vec![".".into()],
                    dest: "/".into(),
                    chown: None,
                    chmod: None,
                    allow_wildcard: false,
                    unpack: false,
                    exclude: Vec::new(),
                    parents: false,
                    chmod_symbolic: None,
                });
                let name = format!("{label} load from client");
                (self.def.add(copy, vec![scratch, src], ""), name)
            }
            NamedContext::Git(git) => {
                let op = self.git_op(ins, git.clone(), None, None)?;
                let name = format!("{label} {}", git.shown_remote());
                let node = self.def.add(op, vec![], name.clone());
                self.locations.entry(node).or_insert(ins.location);
                (node, name)
            }
            NamedContext::Http(url) => {
                let op = Op::Http(HttpOp {
                    url: url.clone(),
                    checksum: None,
                    filename: "context".into(),
                });
                let name = format!("{label} {url}");
                let node = self.def.add(op, vec![], name.clone());
                self.locations.entry(node).or_insert(ins.location);
                (node, name)
            }
            NamedContext::Image(r) if r == "scratch" => {
                let node = self.def.add(Op::Scratch, vec![], "");
                return Ok((node, empty_image(platform)));
            }
            NamedContext::Image(r) => {
                let resolved = self.resolve_image(ins, r, platform, resolver).await?;
                let op = Op::Image {
                    reference: resolved.pinned.clone(),
                    platform: platform.clone(),
                };
                let node = self.def.add(op, vec![], format!("{label} {r}"));
                self.locations.entry(node).or_insert(ins.location);
                return Ok((node, resolved.config));
            }
            NamedContext::Resolved(resolved) => {
                let op = Op::Image {
                    reference: resolved.pinned.clone(),
                    platform: platform.clone(),
                };
                let node = self
                    .def
                    .add(op, vec![], format!("{label} OCI load from client"));
                return Ok((node, resolved.config.clone()));
            }
            NamedContext::Stage(s) => {
                return Err(
                    self.located(ins, &format!("failed to find target {s} for context {key}"))
                );
            }
        };
        // The layer has no history entry of its own: BuildKit's exporter adds one for it.
        let mut image = empty_image(platform);
        image.history.push(History {
            created: Some(self.opts.created.clone()),
            created_by: Some(name),
            comment: Some("buildkit.exporter.image.v0".into()),
            ..Default::default()
        });
        Ok((node, image))
    }
}
