//! Which stages a build needs and in what order they are converted. The target's `FROM <stage>`,
//! `COPY --from` and `RUN --mount=from=` name stages up front; the ONBUILD triggers of a stage's
//! base (an image's, or an earlier stage's `ONBUILD` lines) can name more, known only once the
//! base is resolved, so stages are converted smallest index first and a stage whose triggers
//! name a stage not converted yet waits for it, as BuildKit adds a trigger's `--from` to the
//! stage's dependencies.

use std::collections::{BTreeSet, HashMap, HashSet};

use kiln_llb::NodeId;

use kiln_dockerfile::{Instruction, InstructionKind};

use super::{Converter, Stage, StageBase, StageResult};
use crate::{ImageResolver, Result};

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
                .flat_map(|t| self.instruction_deps(stages, i, t))
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
            let base = self.expand(stages[i].from, &stages[i].image, &self.meta_args)?;
            if let Some(dep) = self.stage_ref(stages, i, &base) {
                todo.push(dep);
            }
            for ins in &stages[i].instructions {
                todo.extend(self.instruction_deps(stages, i, ins));
            }
        }
        Ok(needed)
    }

    /// The earlier stages one instruction of stage `current` reads from.
    fn instruction_deps(&self, stages: &[Stage], current: usize, ins: &Instruction) -> Vec<usize> {
        let mut deps = Vec::new();
        match &ins.kind {
            InstructionKind::Copy(args) => {
                if let Some(from) = &args.from {
                    deps.extend(self.stage_ref(stages, current, from));
                }
            }
            InstructionKind::Run { mounts, .. } => {
                for m in mounts {
                    if let Some(from) = crate::mount::from_of(m) {
                        deps.extend(self.stage_ref(stages, current, &from));
                    }
                }
            }
            _ => {}
        }
        deps
    }

    /// A stage named or numbered `name` defined before stage `current`.
    pub(super) fn stage_ref(&self, stages: &[Stage], current: usize, name: &str) -> Option<usize> {
        let lower = name.to_ascii_lowercase();
        if let Some(i) = stages[..current]
            .iter()
            .position(|s| s.name.as_deref() == Some(lower.as_str()))
        {
            return Some(i);
        }
        name.parse::<usize>().ok().filter(|i| *i < current)
    }
}
