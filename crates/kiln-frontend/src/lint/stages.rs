//! The checks about stages as a whole: names, casing, the target and its args, which stages
//! a build reaches.

use super::*;

impl Linter<'_> {
    pub(super) fn stage_names(&mut self, stages: &[StageInfo]) {
        let cfg = self.cfg.clone();
        let mut seen = BTreeSet::new();
        for st in stages {
            let Some(name) = &st.name else { continue };
            if RESERVED_STAGE_NAMES.contains(&name.as_str()) {
                let msg =
                    format!("Stage name should not use the same name as reserved stage \"{name}\"");
                self.warn(&cfg, &RESERVED_STAGE_NAME, st.from.ins.location, msg);
            }
            if !seen.insert(name.clone()) {
                let msg = format!("Duplicate stage name \"{name}\", stage names should be unique");
                self.warn(&cfg, &DUPLICATE_STAGE_NAME, st.from.ins.location, msg);
            }
        }
    }

    /// ConsistentInstructionCasing: keywords must be all-lower or all-upper, matching the
    /// majority of the stages' keywords (ties go to uppercase).
    pub(super) fn casing(&mut self, stages: &[StageInfo]) {
        let all: Vec<&Instruction> = stages
            .iter()
            .flat_map(|s| std::iter::once(s.from).chain(s.body.iter().copied()))
            .map(|i| i.ins)
            .collect();
        let (mut lower, mut upper) = (0, 0);
        for ins in &all {
            let kw = &ins.keyword;
            if *kw == kw.to_lowercase() {
                lower += 1;
            } else if *kw == kw.to_uppercase() {
                upper += 1;
            }
        }
        let majority_lower = lower > upper;
        let cfg = self.cfg.clone();
        for ins in all {
            let kw = &ins.keyword;
            let want = if majority_lower && *kw != kw.to_lowercase() {
                "lowercase"
            } else if !majority_lower && *kw != kw.to_uppercase() {
                "uppercase"
            } else {
                continue;
            };
            let msg =
                format!("Command '{kw}' should match the case of the command majority ({want})");
            self.warn(&cfg, &CONSISTENT_INSTRUCTION_CASING, ins.location, msg);
        }
    }

    pub(super) fn target_name(&self, stages: &[StageInfo]) -> String {
        match self.opts.target {
            Some(t) => t.to_string(),
            None => stages
                .last()
                .and_then(|s| s.name.clone())
                .unwrap_or_else(|| "default".into()),
        }
    }

    /// The predefined platform args, which build args may override.
    pub(super) fn default_args(&self, target: &str) -> BTreeMap<String, String> {
        let host = Platform::host();
        let target_platform = self.opts.platform.cloned().unwrap_or_else(Platform::host);
        let mut m = BTreeMap::new();
        for (prefix, p) in [("BUILD", &host), ("TARGET", &target_platform)] {
            m.insert(format!("{prefix}PLATFORM"), p.to_string());
            m.insert(format!("{prefix}OS"), p.os.clone());
            m.insert(format!("{prefix}OSVERSION"), String::new());
            m.insert(format!("{prefix}ARCH"), p.architecture.clone());
            m.insert(
                format!("{prefix}VARIANT"),
                p.variant.clone().unwrap_or_default(),
            );
        }
        m.insert("TARGETSTAGE".into(), target.to_string());
        for (k, v) in m.iter_mut() {
            if let Some(o) = self.build_args.get(k) {
                v.clone_from(o);
            }
        }
        m
    }

    /// The global scope after the ARGs before the first FROM, with or without build args,
    /// plus every name declared there.
    pub(super) fn meta_args(
        &self,
        defaults: &BTreeMap<String, String>,
        meta: &[&Item],
        with_build_args: bool,
    ) -> (BTreeMap<String, String>, BTreeSet<String>) {
        let mut env = defaults.clone();
        let mut declared = BTreeSet::new();
        for item in meta {
            let InstructionKind::Arg(pairs) = &item.ins.kind else {
                continue;
            };
            for (k, default) in pairs {
                declared.insert(k.clone());
                let value = match self.build_args.get(k).filter(|_| with_build_args) {
                    Some(v) => Some(v.clone()),
                    None => default
                        .as_ref()
                        .map(|d| self.lex.process_word(d, &env).unwrap_or_default()),
                };
                if let Some(v) = value {
                    env.insert(k.clone(), v);
                }
            }
        }
        (env, declared)
    }

    /// The stage index a FROM or `--from` value names, if it names an earlier stage.
    pub(super) fn stage_ref(stages: &[StageInfo], current: usize, name: &str) -> Option<usize> {
        let lower = name.to_ascii_lowercase();
        stages[..current]
            .iter()
            .position(|s| s.name.as_deref() == Some(lower.as_str()))
            .or_else(|| name.parse::<usize>().ok().filter(|i| *i < current))
    }

    pub(super) fn reachable(
        &self,
        stages: &[StageInfo],
        globals: &BTreeMap<String, String>,
    ) -> BTreeSet<usize> {
        if self.opts.all_stages {
            return (0..stages.len()).collect();
        }
        let target = self
            .opts
            .target
            .map(str::to_ascii_lowercase)
            .and_then(|t| {
                stages
                    .iter()
                    .position(|s| s.name.as_deref() == Some(t.as_str()))
            })
            .unwrap_or(stages.len() - 1);
        let mut seen = BTreeSet::new();
        let mut todo = vec![target];
        while let Some(i) = todo.pop() {
            if !seen.insert(i) {
                continue;
            }
            let base = self
                .lex
                .process_word(&stages[i].image, globals)
                .unwrap_or_default();
            todo.extend(Self::stage_ref(stages, i, &base));
            for item in &stages[i].body {
                if let InstructionKind::Copy(CopyArgs {
                    from: Some(from), ..
                }) = &item.ins.kind
                {
                    let from = self
                        .lex
                        .process_word(from, globals)
                        .unwrap_or_else(|_| from.clone());
                    todo.extend(Self::stage_ref(stages, i, &from));
                }
            }
        }
        seen
    }
}
