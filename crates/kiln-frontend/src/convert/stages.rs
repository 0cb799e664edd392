//! Which stages a build needs and in what order they are converted. The target's `FROM <stage>`,
//! `COPY --from` and `RUN --mount=from=` name stages up front; the ONBUILD triggers of a stage's
//! base (an image's, or an earlier stage's `ONBUILD` lines) can name more, known only once the
//! base is resolved, so stages are converted smallest index first and a stage whose triggers
//! name a stage not converted yet waits for it, as BuildKit adds a trigger's `--from` to the
//! stage's dependencies.
//!
//! How a name finds a stage follows BuildKit's dockerfile2llb: stage names are lower-cased when
//! declared; `FROM <name>` matches the last stage declared before it whose name is exactly
//! `<name>` (so `FROM Build` is an image reference, however the stage was spelled); `COPY --from`
//! and `RUN --mount=from=` match any stage of the file, case-insensitively, the last one when
//! names repeat; a numeric `COPY --from` is a stage index, never an image. A stage can only read
//! from stages converted before it, and references that go round in a circle are refused up
//! front, for every stage, needed or not.

use std::collections::{BTreeSet, HashMap, HashSet};

use kiln_llb::NodeId;

use kiln_dockerfile::{Instruction, InstructionKind};

use super::copy::has_variable;
use super::{Converter, Stage, StageBase, StageResult};
use crate::{Error, ImageResolver, Result};

impl Converter<'_> {
    /// Converts the target and every stage it needs; returns the target's result.
    /// Converts the stages `target` needs; also returns the nodes of the stages
    /// `--no-cache-filter` names.
    pub(super) async fn convert_stages(
        &mut self,
        stages: &[Stage<'_>],
        target: usize,
        no_cache_filter: &[String],
        resolver: &dyn ImageResolver,
    ) -> Result<(StageResult, HashSet<NodeId>)> {
        let mut no_cache = HashSet::new();
        let multistage = stages.len() > 1;
        let mut needed = self.needed_stages(stages, [target])?;
        let mut results: Vec<Option<StageResult>> = vec![None; stages.len()];
        let mut bases: HashMap<usize, StageBase> = HashMap::new();
        while let Some(i) = needed.iter().copied().find(|i| results[*i].is_none()) {
            if let Some(ctx) = self.stage_override(&stages[i]) {
                results[i] = Some(self.overridden_stage(&stages[i], ctx, resolver).await?);
                continue;
            }
            let base = match bases.remove(&i) {
                Some(base) => base,
                None => {
                    self.stage_base(i, stages, &results, multistage, resolver)
                        .await?
                }
            };
            let deps: Vec<usize> = base
                .triggers
                .iter()
                .map(|t| self.instruction_deps(stages, t))
                .collect::<Result<Vec<_>>>()?
                .into_iter()
                .flatten()
                .collect();
            let more: Vec<usize> = self
                .needed_stages(stages, deps)?
                .into_iter()
                .filter(|d| !needed.contains(d))
                .collect();
            if !more.is_empty() {
                // The stages a trigger names come before this one: convert them first.
                needed.extend(more);
                bases.insert(i, base);
                continue;
            }
            let first_node = self.def.len();
            let r = self
                .convert_stage(i, stages, &results, base, resolver)
                .await?;
            // The steps this stage added: the stages it needs were converted before it.
            if crate::no_cache::filtered(no_cache_filter, stages[i].name.as_deref()) {
                no_cache.extend((first_node..self.def.len()).map(NodeId));
            }
            results[i] = Some(r);
        }
        let result = results[target]
            .take()
            .expect("the target stage was converted");
        Ok((result, no_cache))
    }

    /// The stages `roots` need, themselves included: through `FROM <stage>`, `COPY --from` and
    /// `RUN --mount=from=`, transitively.
    pub(super) fn needed_stages(
        &self,
        stages: &[Stage],
        roots: impl IntoIterator<Item = usize>,
    ) -> Result<BTreeSet<usize>> {
        let mut needed = BTreeSet::new();
        let mut todo: Vec<usize> = roots.into_iter().collect();
        while let Some(i) = todo.pop() {
            if !needed.insert(i) {
                continue;
            }
            // A stage a named context replaces needs nothing.
            if self.stage_override(&stages[i]).is_some() {
                continue;
            }
            let base = self.expand(stages[i].from, &stages[i].image, &self.meta_args)?;
            if let Some(dep) = self.base_stage(stages, i, &base) {
                todo.push(dep);
            }
            for ins in &stages[i].instructions {
                todo.extend(self.instruction_deps(stages, ins)?);
            }
        }
        Ok(needed)
    }

    /// The stages one instruction reads from (`COPY --from`, `RUN --mount=from=`).
    fn instruction_deps(&self, stages: &[Stage], ins: &Instruction) -> Result<Vec<usize>> {
        let mut deps = Vec::new();
        match &ins.kind {
            InstructionKind::Copy(args) => {
                if let Some(from) = &args.from
                    && !has_variable(from)
                {
                    let from = self.alias(stages, from);
                    deps.extend(copy_source(stages, &from).map_err(|m| self.located(ins, &m))?);
                }
            }
            InstructionKind::Run { mounts, .. } => {
                for m in mounts {
                    if let Some(from) = crate::mount::from_of(m) {
                        deps.extend(mount_source(stages, &self.alias(stages, &from)));
                    }
                }
            }
            _ => {}
        }
        Ok(deps)
    }

    /// Refuses a `COPY --from` index out of range and stages that read from each other in a
    /// circle, for every stage of the file as BuildKit does, naming the first stage (in file
    /// order) from which a circle is reachable.
    pub(super) fn check_stage_graph(&self, stages: &[Stage]) -> Result<()> {
        let mut deps: Vec<Vec<(usize, &Instruction)>> = Vec::with_capacity(stages.len());
        for stage in stages {
            let mut mine = Vec::new();
            for ins in &stage.instructions {
                for dep in self.instruction_deps(stages, ins)? {
                    mine.push((dep, *ins));
                }
            }
            deps.push(mine);
        }
        let mut visited = HashSet::new();
        for root in 0..stages.len() {
            let mut path = vec![(root, None)];
            if let Some(cycle) = find_cycle(&deps, root, &mut visited, &mut path) {
                let msg = format!(
                    "circular dependency detected on stage: {}",
                    stage_name(stages, root)
                );
                // Every instruction of the circle is shown, as BuildKit shows them.
                let mut rendered = self.located(cycle[0], &msg).to_string();
                for ins in &cycle[1..] {
                    let note = self.located(ins, "part of the same circle").to_string();
                    rendered.push_str(&note.replacen("error: ", "note: ", 1));
                }
                return Err(Error::Dockerfile { rendered });
            }
        }
        Ok(())
    }

    /// The stage a `FROM` names: the last one declared before `current` with exactly this
    /// (lower-case) name.
    /// Every stage's FROM that names an image must be a valid reference, needed or not, as
    /// BuildKit checks them all (without resolving the ones the target does not need).
    pub(super) fn check_stage_bases(&self, stages: &[Stage]) -> Result<()> {
        for (i, stage) in stages.iter().enumerate() {
            let base = self.expand(stage.from, &stage.image, &self.meta_args)?;
            if base == "scratch"
                || self.base_stage(stages, i, &base).is_some()
                || self.stage_override(stage).is_some()
            {
                continue;
            }
            if let Err(e) = base.parse::<kiln_oci::Reference>() {
                return Err(self.located(
                    stage.from,
                    &format!("failed to parse stage name \"{base}\": {e}"),
                ));
            }
        }
        Ok(())
    }

    pub(super) fn base_stage(&self, stages: &[Stage], current: usize, name: &str) -> Option<usize> {
        let name = self.alias(stages, name);
        stages[..current]
            .iter()
            .rposition(|s| s.name.as_deref() == Some(name.as_str()))
    }

    /// Every `target:STAGE` context must name a stage of the Dockerfile; buildx's words.
    pub(super) fn check_stage_aliases(&self, stages: &[Stage]) -> Result<()> {
        for (key, ctx) in &self.opts.named_contexts {
            if let crate::NamedContext::Stage(s) = ctx
                && mount_source(stages, s).is_none()
            {
                return Err(crate::Error::Dockerfile {
                    rendered: format!("error: failed to find target {s} for context {key}"),
                });
            }
        }
        Ok(())
    }

    /// The node a `COPY --from` reads: a stage converted before this one, else an image.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn copy_from_node(
        &mut self,
        ins: &Instruction,
        from: &str,
        stages: &[Stage<'_>],
        index: usize,
        done: &[Option<StageResult>],
        resolver: &dyn ImageResolver,
    ) -> Result<NodeId> {
        let aliased = self.alias(stages, from);
        match copy_source(stages, &aliased).map_err(|m| self.located(ins, &m))? {
            Some(dep) => match &done[dep] {
                Some(r) => Ok(r.node),
                None => Err(self.located(
                    ins,
                    &format!(
                        "cannot copy from stage {}, it needs to be defined before current stage {}",
                        go_quote(from),
                        go_quote(&stage_name(stages, index))
                    ),
                )),
            },
            None => self.image_or_context_node(ins, from, resolver).await,
        }
    }

    /// A `COPY --from` or `RUN --mount=from=` that names no stage: a named context, else an
    /// image.
    async fn image_or_context_node(
        &mut self,
        ins: &Instruction,
        from: &str,
        resolver: &dyn ImageResolver,
    ) -> Result<NodeId> {
        let platform = self.opts.platform.clone();
        if let Some((key, ctx)) = self.named_context(from) {
            let node = self
                .named_context_node(ins, &key, &ctx, &platform, resolver)
                .await?;
            return Ok(node.0);
        }
        Ok(self.image_node(ins, from, &platform, "", resolver).await?.0)
    }

    /// The node a `RUN --mount=from=` reads: a stage converted before this one, else an image.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn mount_from_node(
        &mut self,
        ins: &Instruction,
        from: &str,
        target: &str,
        stages: &[Stage<'_>],
        done: &[Option<StageResult>],
        resolver: &dyn ImageResolver,
    ) -> Result<NodeId> {
        match mount_source(stages, &self.alias(stages, from)) {
            Some(dep) => match &done[dep] {
                Some(r) => Ok(r.node),
                None => Err(self.located(
                    ins,
                    &format!(
                        "cannot mount from stage {} to {}, stage needs to be defined before \
                         current command",
                        go_quote(from),
                        go_quote(target)
                    ),
                )),
            },
            None => self.image_or_context_node(ins, from, resolver).await,
        }
    }
}

/// The stage a `COPY --from` names: a number is an index (an error when out of range), else
/// the last stage of that name, case-insensitively; `None` for an image.
fn copy_source(stages: &[Stage], from: &str) -> std::result::Result<Option<usize>, String> {
    if let Ok(index) = from.parse::<i64>() {
        return match usize::try_from(index) {
            Ok(i) if i < stages.len() => Ok(Some(i)),
            _ => Err(format!("invalid stage index {index}")),
        };
    }
    Ok(mount_source(stages, from))
}

/// The stage a `RUN --mount=from=` names: the last stage of that name, case-insensitively.
pub(super) fn mount_source(stages: &[Stage], from: &str) -> Option<usize> {
    let lower = from.to_ascii_lowercase();
    stages
        .iter()
        .rposition(|s| s.name.as_deref() == Some(lower.as_str()))
}

/// A stage's name in BuildKit's messages: its own, else `stage-<index>`.
pub(super) fn stage_name(stages: &[Stage], index: usize) -> String {
    stages[index]
        .name
        .clone()
        .unwrap_or_else(|| format!("stage-{index}"))
}

/// Go's `%q` of a plain string.
fn go_quote(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialise")
}

/// Depth-first from `stage` over stage reads; the instruction that starts the path to the first
/// stage found twice on the current path.
fn find_cycle<'i>(
    deps: &[Vec<(usize, &'i Instruction)>],
    stage: usize,
    visited: &mut HashSet<usize>,
    path: &mut Vec<(usize, Option<&'i Instruction>)>,
) -> Option<Vec<&'i Instruction>> {
    if !visited.insert(stage) {
        return None;
    }
    for (dep, ins) in &deps[stage] {
        if let Some(start) = path.iter().position(|(s, _)| s == dep) {
            // The edge that closes the circle first, then the others from the last back,
            // as BuildKit lists them.
            let mut cycle = vec![*ins];
            cycle.extend(path[start + 1..].iter().rev().filter_map(|(_, i)| *i));
            return Some(cycle);
        }
        path.push((*dep, Some(*ins)));
        if let Some(found) = find_cycle(deps, *dep, visited, path) {
            return Some(found);
        }
        path.pop();
    }
    None
}
