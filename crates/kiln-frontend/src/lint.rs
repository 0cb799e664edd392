//! Build checks: BuildKit's Dockerfile lint rules (`docker build --check`), run over a parsed
//! Dockerfile without building anything.
//!
//! Rules that need to know what a stage inherits (UndefinedVar, JSONArgsRecommended,
//! WorkdirRelativePath) simulate the ARG/ENV/SHELL/WORKDIR state of each stage. A base image's
//! config is only known when the caller passes it in [`LintOptions::images`]; otherwise an
//! external base image is assumed to define nothing but `PATH`, as `scratch` does.
//!
//! The `# check=` directive (or the `BUILDKIT_DOCKERFILE_CHECK` build arg, which replaces it)
//! selects rules; a `# check=` comment right above an instruction adjusts them for that
//! instruction only, as in BuildKit.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use kiln_dockerfile::shell::ShellLex;
use kiln_dockerfile::{Command, CopyArgs, Dockerfile, Instruction, InstructionKind, Location};
use kiln_oci::{ImageConfig, Platform, Reference};

use crate::{Error, Result};

mod checks;
pub use checks::looks_secret;
mod config;
mod stages;

use checks::suggest;
use config::CheckConfig;

/// One build check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub name: &'static str,
    pub description: &'static str,
    /// The rule's page on docs.docker.com, when it has one.
    pub url: Option<&'static str>,
    /// A short fix, without a link.
    pub hint: &'static str,
    /// Experimental rules run only when `# check=experimental=...` names them.
    pub experimental: bool,
}

macro_rules! rules {
    ($($id:ident = $name:literal, $slug:expr, $exp:literal, $desc:literal, $hint:literal;)*) => {
        $(pub const $id: Rule = Rule {
            name: $name,
            description: $desc,
            url: $slug,
            hint: $hint,
            experimental: $exp,
        };)*
        /// Every rule, in BuildKit's order.
        pub const ALL: &[Rule] = &[$($id),*];
    };
}

/// The rules, one constant each.
pub mod rules {
    use super::Rule;

    rules! {
        STAGE_NAME_CASING = "StageNameCasing", Some("stage-name-casing"), false,
            "Stage names should be lowercase",
            "write the stage name in lowercase";
        FROM_AS_CASING = "FromAsCasing", Some("from-as-casing"), false,
            "The 'as' keyword should match the case of the 'from' keyword",
            "write AS in the same case as FROM";
        NO_EMPTY_CONTINUATION = "NoEmptyContinuation", Some("no-empty-continuation"), false,
            "Empty continuation lines will become errors in a future release",
            "delete the empty line inside the continued instruction";
        CONSISTENT_INSTRUCTION_CASING = "ConsistentInstructionCasing", Some("consistent-instruction-casing"), false,
            "All commands within the Dockerfile should use the same casing (either upper or lower)",
            "write every instruction keyword in the same case";
        DUPLICATE_STAGE_NAME = "DuplicateStageName", Some("duplicate-stage-name"), false,
            "Stage names should be unique",
            "give each stage its own name";
        RESERVED_STAGE_NAME = "ReservedStageName", Some("reserved-stage-name"), false,
            "Reserved words should not be used as stage names",
            "rename the stage: `scratch` and `context` are reserved";
        JSON_ARGS_RECOMMENDED = "JSONArgsRecommended", Some("json-args-recommended"), false,
            "JSON arguments recommended for ENTRYPOINT/CMD to prevent unintended behavior related to OS signals",
            "use the exec form, e.g. CMD [\"app\", \"--flag\"]";
        MAINTAINER_DEPRECATED = "MaintainerDeprecated", Some("maintainer-deprecated"), false,
            "The MAINTAINER instruction is deprecated, use a label instead to define an image author",
            "use LABEL org.opencontainers.image.authors=\"...\"";
        UNDEFINED_ARG_IN_FROM = "UndefinedArgInFrom", Some("undefined-arg-in-from"), false,
            "FROM command must use declared ARGs",
            "declare the variable with ARG before the first FROM";
        WORKDIR_RELATIVE_PATH = "WorkdirRelativePath", Some("workdir-relative-path"), false,
            "Relative workdir without an absolute workdir declared within the build can have unexpected results if the base image changes",
            "make the stage's first WORKDIR an absolute path";
        UNDEFINED_VAR = "UndefinedVar", Some("undefined-var"), false,
            "Variables should be defined before their use",
            "declare the variable with ARG or ENV before using it";
        MULTIPLE_INSTRUCTIONS_DISALLOWED = "MultipleInstructionsDisallowed", Some("multiple-instructions-disallowed"), false,
            "Multiple instructions of the same type should not be used in the same stage",
            "keep only the last of these instructions";
        LEGACY_KEY_VALUE_FORMAT = "LegacyKeyValueFormat", Some("legacy-key-value-format"), false,
            "Legacy key/value format with whitespace separator should not be used",
            "write key=value";
        INVALID_BASE_IMAGE_PLATFORM = "InvalidBaseImagePlatform", None, false,
            "Base image platform does not match expected target platform",
            "use an image published for the target platform, or set FROM --platform";
        REDUNDANT_TARGET_PLATFORM = "RedundantTargetPlatform", Some("redundant-target-platform"), false,
            "Setting platform to predefined $TARGETPLATFORM in FROM is redundant as this is the default behavior",
            "drop the --platform flag";
        SECRETS_USED_IN_ARG_OR_ENV = "SecretsUsedInArgOrEnv", Some("secrets-used-in-arg-or-env"), false,
            "Sensitive data should not be used in the ARG or ENV commands",
            "pass secrets with RUN --mount=type=secret instead";
        INVALID_DEFAULT_ARG_IN_FROM = "InvalidDefaultArgInFrom", Some("invalid-default-arg-in-from"), false,
            "Default value for global ARG results in an empty or invalid base image name",
            "give the ARG a default that makes a valid image name";
        FROM_PLATFORM_FLAG_CONST_DISALLOWED = "FromPlatformFlagConstDisallowed", Some("from-platform-flag-const-disallowed"), false,
            "FROM --platform flag should not use a constant value",
            "use a variable such as $BUILDPLATFORM, or name the stage after the platform";
        COPY_IGNORED_FILE = "CopyIgnoredFile", Some("copy-ignored-file"), false,
            "Attempting to Copy file that is excluded by .dockerignore",
            "remove the path from .dockerignore or from the instruction";
        INVALID_DEFINITION_DESCRIPTION = "InvalidDefinitionDescription", Some("invalid-definition-description"), true,
            "Comment for build stage or argument should follow the format: `# <arg/stage name> <description>`. If this is not intended to be a description comment, add an empty line or comment between the instruction and the comment.",
            "start the comment with the name, or put an empty `#` line between";
        EXPOSE_PROTO_CASING = "ExposeProtoCasing", Some("expose-proto-casing"), false,
            "Protocol in EXPOSE instruction should be lowercase",
            "write the protocol in lowercase, e.g. 80/tcp";
        EXPOSE_INVALID_FORMAT = "ExposeInvalidFormat", Some("expose-invalid-format"), false,
            "IP address and host-port mapping should not be used in EXPOSE instruction. This will become an error in a future release",
            "EXPOSE only the container port; publish host ports at run time";
    }
}

use rules::*;

const DOCS: &str = "https://docs.docker.com/go/dockerfile/rule/";
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Build args that configure the build rather than the Dockerfile; never "undefined".
const NON_ENV_ARGS: [&str; 2] = ["BUILDKIT_SBOM_SCAN_CONTEXT", "BUILDKIT_SBOM_SCAN_STAGE"];
const RESERVED_STAGE_NAMES: [&str; 2] = ["context", "scratch"];

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub rule: &'static str,
    pub description: &'static str,
    pub message: String,
    pub location: Option<Location>,
    /// The rule's docs.docker.com page, empty when it has none.
    pub url: String,
    pub hint: &'static str,
}

impl Warning {
    fn new(rule: &Rule, location: Option<Location>, message: String) -> Self {
        Self {
            rule: rule.name,
            description: rule.description,
            message,
            location,
            url: rule.url.map(|u| format!("{DOCS}{u}/")).unwrap_or_default(),
            hint: rule.hint,
        }
    }

    /// The one-line form of a build's warning block: `Rule: message (line N)`.
    pub fn short(&self) -> String {
        match self.location {
            Some(l) if l.start_line > 0 => {
                format!("{}: {} (line {})", self.rule, self.message, l.start_line)
            }
            _ => format!("{}: {}", self.rule, self.message),
        }
    }

    /// The `--check` form: a `WARNING:` header, the message, and the lines around the location
    /// with the offending ones marked `>>>`.
    pub fn render(&self, file_name: &str, source: &str) -> String {
        let mut out = format!("WARNING: {}", self.rule);
        if !self.url.is_empty() {
            let _ = write!(out, " - {}", self.url);
        }
        let _ = writeln!(out, "\n{}", self.message);
        if let Some(l) = self.location {
            out.push_str(&snippet(file_name, source, l));
        }
        out
    }
}

/// Source lines around `loc`: one marked line gets two lines of context each side, a longer
/// range one (BuildKit's source printer).
fn snippet(file_name: &str, source: &str, loc: Location) -> String {
    let lines: Vec<&str> = source
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect();
    let first = loc.start_line;
    let last = loc.end_line.max(first).min(lines.len());
    if first < 1 || first > lines.len() {
        return String::new();
    }
    let pad = if last == first { 2 } else { 1 };
    let start = first.saturating_sub(pad).max(1);
    let end = (last + pad).min(lines.len());
    let mut out = format!("{file_name}:{first}\n--------------------\n");
    for n in start..=end {
        let mark = if (first..=last).contains(&n) {
            ">>>"
        } else {
            "   "
        };
        let line = format!(" {n:>3} | {mark} {}", lines[n - 1]);
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out.push_str("--------------------\n");
    out
}

/// What a lint run found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Sorted by line, file order kept within a line.
    pub warnings: Vec<Warning>,
    /// `# check=error=true`: warnings should fail the build.
    pub error_on_warning: bool,
}

impl Report {
    /// BuildKit's build error when `error=true` and there are warnings.
    pub fn violation(&self) -> Option<String> {
        if !self.error_on_warning || self.warnings.is_empty() {
            return None;
        }
        let rules: BTreeSet<&str> = self.warnings.iter().map(|w| w.rule).collect();
        Some(format!(
            "lint violation found for rules: {}",
            rules.into_iter().collect::<Vec<_>>().join(", ")
        ))
    }
}

/// What the checks may know beyond the Dockerfile.
#[derive(Debug, Clone, Copy, Default)]
pub struct LintOptions<'a> {
    pub build_args: Option<&'a BTreeMap<String, String>>,
    pub target: Option<&'a str>,
    /// The target platform; the host's when `None`.
    pub platform: Option<&'a Platform>,
    /// The context's `.dockerignore`, for CopyIgnoredFile.
    pub ignore: Option<&'a kiln_ignore::Matcher>,
    /// Configs of resolved base images by name as written after expansion (`alpine:3.20`) and
    /// the platform asked for (one name can be resolved for the build platform and the target):
    /// their env for UndefinedVar, shell for JSONArgsRecommended, and platform for
    /// InvalidBaseImagePlatform (only checked for images listed here).
    pub images: Option<&'a BTreeMap<(String, Platform), ImageConfig>>,
    /// Check every stage (`--check`), not only those the target needs (a build).
    pub all_stages: bool,
}

/// Runs the build checks over `dockerfile` (parsed from `source`). Fails only when the check
/// options themselves are malformed.
pub fn lint(dockerfile: &Dockerfile, source: &str, opts: &LintOptions) -> Result<Report> {
    let empty = BTreeMap::new();
    let build_args = opts.build_args.unwrap_or(&empty);
    let option = match build_args.get("BUILDKIT_DOCKERFILE_CHECK") {
        Some(v) => v.clone(),
        None => dockerfile
            .directives
            .check
            .as_deref()
            .and_then(|v| v.split(' ').next())
            .unwrap_or_default()
            .to_string(),
    };
    let cfg = CheckConfig::parse(&option).map_err(|e| Error::Dockerfile {
        rendered: format!("error: failed to parse check options: {e}\n"),
    })?;
    let mut linter = Linter {
        cfg,
        opts,
        build_args,
        lex: ShellLex::new(dockerfile.directives.escape),
        out: Vec::new(),
    };
    linter.run(dockerfile, source);
    let mut warnings = linter.out;
    warnings.sort_by_key(|w| w.location.map_or(0, |l| l.start_line));
    Ok(Report {
        warnings,
        error_on_warning: linter.cfg.error,
    })
}

struct Linter<'a> {
    cfg: CheckConfig,
    opts: &'a LintOptions<'a>,
    build_args: &'a BTreeMap<String, String>,
    lex: ShellLex,
    out: Vec<Warning>,
}

/// One instruction with what the typed layer drops: the raw argument words and the
/// comments without directive lines.
struct Item<'a> {
    ins: &'a Instruction,
    args: Vec<String>,
    comments: &'a [String],
}

struct StageInfo<'a> {
    from: &'a Item<'a>,
    /// Lower-cased, as stage references compare it.
    name: Option<String>,
    image: String,
    platform: Option<String>,
    body: Vec<&'a Item<'a>>,
}

/// What a stage has set up so far, inherited by stages built on it.
#[derive(Clone, Default)]
struct StageState {
    env: BTreeMap<String, String>,
    declared: BTreeSet<String>,
    shell: bool,
    workdir_set: bool,
}

impl Linter<'_> {
    fn warn(&mut self, cfg: &CheckConfig, rule: &Rule, loc: Location, message: String) {
        if cfg.enabled(rule) {
            self.out.push(Warning::new(rule, Some(loc), message));
        }
    }

    fn run(&mut self, dockerfile: &Dockerfile, source: &str) {
        let nodes = kiln_dockerfile::parser::parse(source).ok();
        let directive_count = kiln_dockerfile::parser::directives::parse_all(source)
            .map(|d| d.len())
            .unwrap_or(0);
        let items: Vec<Item> = dockerfile
            .instructions
            .iter()
            .enumerate()
            .map(|(i, ins)| {
                let args = nodes
                    .as_ref()
                    .and_then(|p| p.ast.children.get(i))
                    .map(|n| n.args().map(|a| a.value.clone()).collect())
                    .unwrap_or_default();
                // Directive lines sit in the first instruction's comments; BuildKit drops them.
                let skip = if i == 0 { directive_count } else { 0 };
                let comments = ins
                    .comments
                    .get(skip.min(ins.comments.len())..)
                    .unwrap_or(&[]);
                Item {
                    ins,
                    args,
                    comments,
                }
            })
            .collect();

        let global = self.cfg.clone();
        for w in &dockerfile.warnings {
            let line = w.location.end_line.max(w.location.start_line);
            let loc = Location {
                start_line: line,
                end_line: line,
                column: w.location.column,
            };
            self.warn(
                &global,
                &NO_EMPTY_CONTINUATION,
                loc,
                "Empty continuation line".into(),
            );
        }
        for item in &items {
            self.parse_checks(item);
        }

        let mut meta: Vec<&Item> = Vec::new();
        let mut stages: Vec<StageInfo> = Vec::new();
        for item in &items {
            match (&item.ins.kind, stages.last_mut()) {
                (
                    InstructionKind::From {
                        image,
                        name,
                        platform,
                    },
                    _,
                ) => stages.push(StageInfo {
                    from: item,
                    name: name.clone(),
                    image: image.clone(),
                    platform: platform.clone(),
                    body: Vec::new(),
                }),
                (_, None) => meta.push(item),
                (_, Some(s)) => s.body.push(item),
            }
        }
        if stages.is_empty() {
            return;
        }
        self.stage_names(&stages);
        self.casing(&stages);

        let target = self.target_name(&stages);
        let defaults = self.default_args(&target);
        let default_globals = self.meta_args(&defaults, &meta, false).0;
        for st in &stages {
            let Ok(base) = self.lex.process_word(&st.image, &default_globals) else {
                break;
            };
            if base.parse::<Reference>().is_err() || base.is_empty() {
                let msg = format!(
                    "Default value for ARG {} results in empty or invalid base image name",
                    st.image
                );
                self.warn(
                    &global,
                    &INVALID_DEFAULT_ARG_IN_FROM,
                    st.from.ins.location,
                    msg,
                );
            }
        }

        let (globals, declared_meta) = self.meta_args(&defaults, &meta, true);
        let mut keys: BTreeSet<String> = globals.keys().cloned().collect();
        keys.extend(declared_meta);
        let reachable = self.reachable(&stages, &globals);
        let mut states: Vec<StageState> = Vec::new();
        for (i, st) in stages.iter().enumerate() {
            let state = self.stage(
                i,
                st,
                &stages,
                &states,
                &globals,
                &keys,
                reachable.contains(&i),
            );
            states.push(state);
        }
    }

    /// Checks BuildKit makes while parsing each instruction.
    fn parse_checks(&mut self, item: &Item) {
        let cfg = self.cfg.for_comments(item.comments);
        let ins = item.ins;
        match &ins.kind {
            InstructionKind::Maintainer(_) => self.warn(
                &cfg,
                &MAINTAINER_DEPRECATED,
                ins.location,
                "Maintainer instruction is deprecated in favor of using label".into(),
            ),
            InstructionKind::From { name, .. } => {
                if let [_, as_kw, stage] = item.args.as_slice() {
                    if *stage != stage.to_lowercase() {
                        let msg = format!("Stage name '{stage}' should be lowercase");
                        self.warn(&cfg, &STAGE_NAME_CASING, ins.location, msg);
                    }
                    let kw = &ins.keyword;
                    let lower = *kw == kw.to_lowercase();
                    let upper = *kw == kw.to_uppercase();
                    let mismatch = (lower && *as_kw != as_kw.to_lowercase())
                        || (!lower && upper && *as_kw != as_kw.to_uppercase());
                    if mismatch {
                        let msg = format!("'{as_kw}' and '{kw}' keywords' casing do not match");
                        self.warn(&cfg, &FROM_AS_CASING, ins.location, msg);
                    }
                }
                if let Some(name) = name {
                    self.definition_description(&cfg, item, "FROM", std::slice::from_ref(name));
                }
            }
            InstructionKind::Arg(pairs) => {
                let keys: Vec<String> = pairs.iter().map(|(k, _)| k.clone()).collect();
                self.definition_description(&cfg, item, "ARG", &keys);
            }
            _ => {}
        }
    }

    fn definition_description(
        &mut self,
        cfg: &CheckConfig,
        item: &Item,
        what: &str,
        keys: &[String],
    ) {
        let (Some(last), Some(first_key)) = (item.comments.last(), keys.first()) else {
            return;
        };
        let word = last.split(' ').next().unwrap_or_default();
        if keys.iter().any(|k| k == word) {
            return;
        }
        let example = if keys.len() > 1 {
            "<arg_key>"
        } else {
            first_key.as_str()
        };
        let msg =
            format!("Comment for {what} should follow the format: `# {example} <description>`");
        self.warn(cfg, &INVALID_DEFINITION_DESCRIPTION, item.ins.location, msg);
    }

    /// The FROM checks, then, when the stage is linted, each instruction's.
    #[allow(clippy::too_many_arguments)]
    fn stage(
        &mut self,
        index: usize,
        st: &StageInfo,
        stages: &[StageInfo],
        states: &[StageState],
        globals: &BTreeMap<String, String>,
        keys: &BTreeSet<String>,
        reachable: bool,
    ) -> StageState {
        let cfg = self.cfg.for_comments(st.from.comments);
        let loc = st.from.ins.location;
        let base = match self.lex.process_word_with_matches(&st.image, globals) {
            Ok(m) => {
                self.undefined_from_args(&cfg, &m.unmatched, keys, loc);
                m.result
            }
            Err(_) => st.image.clone(),
        };
        let mut platform = self.opts.platform.cloned().unwrap_or_else(Platform::host);
        if let Some(p) = &st.platform
            && let Ok(m) = self.lex.process_word_with_matches(p, globals)
        {
            self.undefined_from_args(&cfg, &m.unmatched, keys, loc);
            if m.matched.len() == 1
                && m.unmatched.is_empty()
                && m.matched.contains("TARGETPLATFORM")
                && globals.get("TARGETPLATFORM") == Some(&m.result)
            {
                let msg = format!(
                    "Setting platform to predefined {p} in FROM is redundant as this is the default behavior"
                );
                self.warn(&cfg, &REDUNDANT_TARGET_PLATFORM, loc, msg);
            }
            if let Ok(parsed) = m.result.parse::<Platform>() {
                let stage_name = st.name.as_deref().unwrap_or_default();
                if m.matched.is_empty()
                    && m.unmatched.is_empty()
                    && !stage_name.contains(&parsed.os)
                    && !stage_name.contains(&parsed.architecture)
                {
                    let msg = format!(
                        "FROM --platform flag should not use constant value \"{}\"",
                        m.result
                    );
                    self.warn(&cfg, &FROM_PLATFORM_FLAG_CONST_DISALLOWED, loc, msg);
                }
                platform = parsed;
            }
        }

        let mut state = if let Some(parent) = Self::stage_ref(stages, index, &base) {
            states.get(parent).cloned().unwrap_or_default()
        } else {
            let mut state = StageState::default();
            if let Some(config) = self
                .opts
                .images
                .and_then(|m| m.get(&(base.clone(), platform.clone())))
            {
                for kv in config.config.env.iter().flatten() {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    state.env.insert(k.to_string(), v.to_string());
                }
                state.shell = config.config.shell.as_ref().is_some_and(|s| !s.is_empty());
                let actual =
                    Platform::new(&config.os, &config.architecture, config.variant.as_deref());
                let known = !config.os.is_empty() && !config.architecture.is_empty();
                if reachable
                    && known
                    && (actual.os != platform.os || actual.architecture != platform.architecture)
                {
                    let msg = format!(
                        "Base image {base} was pulled with platform \"{actual}\", expected \"{platform}\" for current build"
                    );
                    self.warn(&cfg, &INVALID_BASE_IMAGE_PLATFORM, loc, msg);
                }
            }
            state
                .env
                .entry("PATH".into())
                .or_insert_with(|| DEFAULT_PATH.into());
            state
        };
        // Trackers for MultipleInstructionsDisallowed start fresh in every stage.
        let mut last_seen: BTreeMap<&str, Location> = BTreeMap::new();
        for item in &st.body {
            let cfg = self.cfg.for_comments(item.comments);
            if reachable {
                self.instruction(&cfg, item, &mut state, &mut last_seen, globals);
            } else {
                // Stages not linted still set up what the stages built on them inherit.
                let silent = CheckConfig {
                    skip_all: true,
                    ..CheckConfig::default()
                };
                self.instruction(&silent, item, &mut state, &mut last_seen, globals);
            }
        }
        state
    }

    fn undefined_from_args(
        &mut self,
        cfg: &CheckConfig,
        unmatched: &BTreeSet<String>,
        keys: &BTreeSet<String>,
        loc: Location,
    ) {
        for arg in unmatched.iter().filter(|a| !keys.contains(*a)) {
            let mut msg = format!("FROM argument '{arg}' is not declared");
            if let Some(s) = suggest(arg, keys.iter().map(String::as_str)) {
                let _ = write!(msg, " (did you mean {s}?)");
            }
            self.warn(cfg, &UNDEFINED_ARG_IN_FROM, loc, msg);
        }
    }

    /// Expands `word` in the stage's scope, reporting UndefinedVar; returns the result.
    fn expand(
        &mut self,
        cfg: &CheckConfig,
        ins: &Instruction,
        word: &str,
        state: &StageState,
    ) -> String {
        let Ok(m) = self.lex.process_word_with_matches(word, &state.env) else {
            return word.to_string();
        };
        for var in &m.unmatched {
            if state.declared.contains(var) || NON_ENV_ARGS.contains(&var.as_str()) {
                continue;
            }
            let mut msg = format!("Usage of undefined variable '${var}'");
            if let Some(s) = suggest(var, state.env.keys().map(String::as_str)) {
                let _ = write!(msg, " (did you mean ${s}?)");
            }
            self.warn(cfg, &UNDEFINED_VAR, ins.location, msg);
        }
        m.result
    }

    fn instruction(
        &mut self,
        cfg: &CheckConfig,
        item: &Item,
        state: &mut StageState,
        last_seen: &mut BTreeMap<&'static str, Location>,
        globals: &BTreeMap<String, String>,
    ) {
        let ins = item.ins;
        let loc = ins.location;
        let kw = ins.keyword.as_str();
        match &ins.kind {
            InstructionKind::Env(pairs) | InstructionKind::Label(pairs) => {
                let is_env = matches!(ins.kind, InstructionKind::Env(_));
                let before = state.clone();
                for (i, (k, v)) in pairs.iter().enumerate() {
                    let key = self.expand(cfg, ins, k, &before);
                    let value = self.expand(cfg, ins, v, &before);
                    if item.args.get(i * 3 + 2).is_some_and(String::is_empty) {
                        let msg = format!(
                            "\"{kw} key=value\" should be used instead of legacy \"{kw} key value\" format"
                        );
                        self.warn(cfg, &LEGACY_KEY_VALUE_FORMAT, loc, msg);
                    }
                    if is_env {
                        self.secret(cfg, "ENV", &key, loc);
                        state.env.insert(key, value);
                    }
                }
            }
            InstructionKind::Arg(pairs) => {
                for (k, default) in pairs {
                    self.secret(cfg, "ARG", k, loc);
                    let value = match self.build_args.get(k) {
                        Some(v) => Some(v.clone()),
                        None => match default {
                            Some(d) => {
                                Some(self.lex.process_word(d, &state.env).unwrap_or_default())
                            }
                            None => globals.get(k).cloned(),
                        },
                    };
                    if let Some(v) = value
                        && !NON_ENV_ARGS.contains(&k.as_str())
                    {
                        state.env.insert(k.clone(), v);
                    }
                    state.declared.insert(k.clone());
                }
            }
            InstructionKind::Workdir(dir) => {
                let dir = self.expand(cfg, ins, dir, state);
                if !state.workdir_set && !dir.starts_with('/') {
                    let msg = format!(
                        "Relative workdir {} can have unexpected results if the base image changes",
                        kiln_dockerfile::go_quote(&dir)
                    );
                    self.warn(cfg, &WORKDIR_RELATIVE_PATH, loc, msg);
                }
                state.workdir_set = true;
            }
            InstructionKind::User(w) | InstructionKind::StopSignal(w) => {
                self.expand(cfg, ins, w, state);
            }
            InstructionKind::Volume(words) => {
                for w in words {
                    self.expand(cfg, ins, w, state);
                }
            }
            InstructionKind::Run { mounts, .. } => {
                for mount in mounts {
                    for field in mount.split(',') {
                        if let Some((_, v)) = field.split_once('=') {
                            self.expand(cfg, ins, v, state);
                        }
                    }
                }
            }
            InstructionKind::Copy(c) | InstructionKind::Add(c) => {
                let add = matches!(ins.kind, InstructionKind::Add(_));
                for w in [&c.chown, &c.chmod].into_iter().flatten() {
                    self.expand(cfg, ins, w, state);
                }
                if add && let Some(sum) = &c.checksum {
                    self.expand(cfg, ins, sum, state);
                }
                let sources: Vec<String> = c
                    .sources
                    .iter()
                    .map(|s| self.expand(cfg, ins, s, state))
                    .collect();
                self.expand(cfg, ins, &c.dest, state);
                if c.from.is_none() {
                    self.copy_ignored(cfg, loc, add, &sources);
                }
            }
            InstructionKind::Cmd(command) | InstructionKind::Entrypoint(command) => {
                self.used_once(cfg, kw, loc, last_seen);
                if matches!(command, Command::Shell(_)) && !state.shell {
                    let msg = format!(
                        "JSON arguments recommended for {kw} to prevent unintended behavior related to OS signals"
                    );
                    self.warn(cfg, &JSON_ARGS_RECOMMENDED, loc, msg);
                }
            }
            InstructionKind::Healthcheck(_) => self.used_once(cfg, kw, loc, last_seen),
            InstructionKind::Shell(_) => state.shell = true,
            InstructionKind::Expose(words) => {
                let mut ports = Vec::new();
                for w in words {
                    match self.lex.process_words(w, &state.env) {
                        Ok(p) => ports.extend(p),
                        Err(_) => return,
                    }
                }
                for port in ports {
                    if !self.expose_port(cfg, loc, &port) {
                        break;
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests;
