//! Dockerfile → build graph. One pass over the stages the target needs, in file order (a stage
//! can only use stages defined before it), keeping per-stage state the way BuildKit's
//! dockerfile2llb does.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use kiln_dockerfile::shell::ShellLex;
use kiln_dockerfile::{Command, Instruction, InstructionKind, Location};
use kiln_llb::{
    CacheMount, Definition, ExecMount, ExecOp, InlineFile, MkdirOp, MkfileOp, NodeId, Op,
    SecretMount, SshMount, TmpfsMount,
};
use kiln_oci::{History, ImageConfig, Platform, Reference};

mod config_text;
mod copy;
mod instructions;
mod named;
mod run;
mod scope;
mod stages;

use config_text::*;
use run::*;

use scope::Scope;

use crate::path;
use crate::{BuildOpts, Converted, Error, ImageResolver, Result};

const HISTORY_COMMENT: &str = "buildkit.dockerfile.v0";
const DEFAULT_SHELL: [&str; 2] = ["/bin/sh", "-c"];

struct Stage<'a> {
    name: Option<String>,
    from: &'a Instruction,
    image: String,
    platform: Option<String>,
    instructions: Vec<&'a Instruction>,
}

/// The state of a stage once converted: where its filesystem is and what its config says.
#[derive(Clone)]
struct StageResult {
    node: NodeId,
    image: ImageConfig,
    /// The stage's FROM (expanded) and how many history entries its config came with.
    base: String,
    base_history: usize,
    scope: Scope,
}

/// A stage's starting point, before its instructions: the base's filesystem and config, and the
/// base's ONBUILD triggers (which may name stages of their own).
struct StageBase {
    node: NodeId,
    image: ImageConfig,
    triggers: Vec<Instruction>,
    /// A stage's scope when the base is that stage, else empty.
    scope: Scope,
    platform: Platform,
    /// `name ` in step labels of a multi-stage build.
    prefix: String,
    /// How many history entries the base image brought (`--squash` keeps them).
    base_history: usize,
    /// The stage's FROM, expanded.
    from_ref: String,
}

struct Converter<'a> {
    opts: &'a BuildOpts,
    source: &'a str,
    lex: ShellLex,
    def: Definition,
    context: Option<NodeId>,
    used_build_args: BTreeSet<String>,
    meta_args: BTreeMap<String, String>,
    locations: HashMap<NodeId, Location>,
    steps: HashMap<NodeId, crate::StepInfo>,
    /// Resolved base image configs by name and requested platform, for the build checks.
    images: BTreeMap<(String, Platform), ImageConfig>,
    /// Every stage's name, to suggest one when an image name that fails to resolve is a typo.
    stage_names: Vec<String>,
}

pub async fn convert(
    source: &str,
    opts: &BuildOpts,
    resolver: &dyn ImageResolver,
) -> Result<Converted> {
    let dockerfile = kiln_dockerfile::parse(source).map_err(|e| Error::Dockerfile {
        rendered: e.render(&opts.dockerfile_name, source),
    })?;
    // Parser warnings (empty continuation lines) are reported by the build checks.
    let mut warnings: Vec<String> = Vec::new();
    if let Some(syntax) = &dockerfile.directives.syntax {
        match crate::syntax::classify(syntax) {
            crate::syntax::Syntax::Builtin(warning) => warnings.extend(warning),
            crate::syntax::Syntax::Foreign => {
                return Err(Error::Dockerfile {
                    rendered: format!(
                        "error: {}: `# syntax={syntax}` names a frontend image other than Docker's \
                         Dockerfile frontend, which is not supported yet (kiln runs \
                         docker/dockerfile images with its built-in frontend)",
                        opts.dockerfile_name
                    ),
                });
            }
        }
    }
    let mut conv = Converter {
        opts,
        source,
        lex: ShellLex::new(dockerfile.directives.escape),
        def: Definition::new(),
        context: None,
        used_build_args: BTreeSet::new(),
        meta_args: platform_args(&opts.platform, &Platform::host()),
        locations: HashMap::new(),
        steps: HashMap::new(),
        images: BTreeMap::new(),
        stage_names: Vec::new(),
    };

    // Instructions before the first FROM: only ARG is allowed there.
    let (meta, split) = crate::split::split(&dockerfile);
    for ins in meta {
        match &ins.kind {
            InstructionKind::Arg(args) => conv.meta_arg(ins, args)?,
            _ => return Err(conv.located(ins, "no build stage in current context")),
        }
    }
    let stages: Vec<Stage> = split
        .into_iter()
        .map(|s| Stage {
            name: s.name,
            from: s.from,
            image: s.image.to_string(),
            platform: s.platform.map(str::to_string),
            instructions: s.instructions,
        })
        .collect();
    if stages.is_empty() {
        return Err(Error::Dockerfile {
            rendered: format!(
                "error: {}: the Dockerfile has no FROM instruction",
                opts.dockerfile_name
            ),
        });
    }
    conv.stage_names = stages.iter().filter_map(|s| s.name.clone()).collect();

    let target = match &opts.target {
        None => stages.len() - 1,
        Some(target) => {
            let t = target.to_ascii_lowercase();
            // The last stage of that name, as BuildKit's lookup by name.
            stages
                .iter()
                .rposition(|s| s.name.as_deref() == Some(t.as_str()))
                .ok_or_else(|| {
                    let names: Vec<&str> =
                        stages.iter().filter_map(|s| s.name.as_deref()).collect();
                    let hint = kiln_dockerfile::suggest::closest(&t, &names, false)
                        .map(|s| format!(" (did you mean {s}?)"))
                        .unwrap_or_default();
                    Error::Dockerfile {
                        rendered: format!(
                            "error: target stage {} could not be found in {}{hint}; valid stages: {}",
                            serde_json::to_string(target).expect("strings serialise"),
                            opts.dockerfile_name,
                            if names.is_empty() {
                                "(none are named)".to_string()
                            } else {
                                names.join(", ")
                            }
                        ),
                    }
                })?
        }
    };

    conv.check_stage_aliases(&stages)?;
    conv.check_stage_graph(&stages)?;
    conv.check_stage_bases(&stages)?;
    let (result, no_cache) = conv
        .convert_stages(&stages, target, &opts.no_cache_filter, resolver)
        .await?;
    let ignore = kiln_ignore::Matcher::new(&opts.excludes).ok();
    let report = crate::lint::lint(
        &dockerfile,
        source,
        &crate::LintOptions {
            build_args: Some(&opts.build_args),
            target: opts.target.as_deref(),
            platform: Some(&opts.platform),
            ignore: ignore.as_ref().filter(|m| !m.is_empty()),
            images: Some(&conv.images),
            all_stages: false,
        },
    )?;
    warnings.extend(report.warnings.iter().map(crate::Warning::short));
    if let Some(violation) = report.violation() {
        let mut rendered = format!("error: {violation}\n");
        for w in &report.warnings {
            rendered.push_str(&w.render(&opts.dockerfile_name, source));
        }
        return Err(Error::Dockerfile { rendered });
    }
    let unused: Vec<&String> = opts
        .build_args
        .keys()
        .filter(|k| !conv.used_build_args.contains(*k) && !is_builtin_arg(k))
        .collect();
    if !unused.is_empty() {
        let list: Vec<&str> = unused.iter().map(|s| s.as_str()).collect();
        warnings.push(format!(
            "one or more build-args [{}] were not consumed",
            list.join(" ")
        ));
    }
    Ok(Converted {
        definition: conv.def,
        no_cache,
        root: result.node,
        image: result.image,
        base: result.base,
        base_history: result.base_history,
        warnings,
        locations: conv.locations,
        steps: conv.steps,
        proxy_env: opts
            .build_args
            .iter()
            .filter(|(k, _)| is_builtin_arg(k))
            .map(|(k, v)| format!("{k}={v}"))
            .collect(),
    })
}

/// The eight automatic platform args: TARGET* for the platform built for, BUILD* for the one the
/// build runs on (a cross-compiling stage's `FROM --platform=$BUILDPLATFORM` runs natively).
fn platform_args(target: &Platform, build: &Platform) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for (prefix, p) in [("TARGET", target), ("BUILD", build)] {
        m.insert(format!("{prefix}PLATFORM"), p.to_string());
        m.insert(format!("{prefix}OS"), p.os.clone());
        m.insert(format!("{prefix}ARCH"), p.architecture.clone());
        m.insert(
            format!("{prefix}VARIANT"),
            p.variant.clone().unwrap_or_default(),
        );
    }
    m
}

fn is_builtin_arg(name: &str) -> bool {
    matches!(
        name,
        "HTTP_PROXY"
            | "http_proxy"
            | "HTTPS_PROXY"
            | "https_proxy"
            | "FTP_PROXY"
            | "ftp_proxy"
            | "NO_PROXY"
            | "no_proxy"
            | "ALL_PROXY"
            | "all_proxy"
    )
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl Converter<'_> {
    /// A stage's platform: its `FROM --platform=` expanded, else the build's.
    fn stage_platform(&self, stage: &Stage<'_>) -> Result<Platform> {
        match &stage.platform {
            None => Ok(self.opts.platform.clone()),
            Some(p) => {
                let p = self.expand(stage.from, p, &self.meta_args)?;
                p.parse()
                    .map_err(|e: kiln_oci::Error| self.located(stage.from, &e.to_string()))
            }
        }
    }

    fn located(&self, ins: &Instruction, message: &str) -> Error {
        self.at(&ins.location, message)
    }

    fn at(&self, location: &Location, message: &str) -> Error {
        Error::Dockerfile {
            rendered: kiln_dockerfile::render_snippet(
                &self.opts.dockerfile_name,
                self.source,
                *location,
                message,
            ),
        }
    }

    fn expand(
        &self,
        ins: &Instruction,
        word: &str,
        env: &BTreeMap<String, String>,
    ) -> Result<String> {
        self.lex
            .process_word(word, env)
            .map_err(|e| self.located(ins, &e.to_string()))
    }

    fn meta_arg(&mut self, ins: &Instruction, args: &[(String, Option<String>)]) -> Result<()> {
        for (name, default) in args {
            let value = match self.opts.build_args.get(name) {
                Some(v) => {
                    self.used_build_args.insert(name.clone());
                    Some(v.clone())
                }
                None => match default {
                    Some(d) => Some(self.expand(ins, d, &self.meta_args.clone())?),
                    None => None,
                },
            };
            // A declaration without a value keeps what the global scope already has (an
            // automatic platform arg, an earlier ARG), as BuildKit's buildMetaArgs does.
            if let Some(v) = value {
                self.meta_args.insert(name.clone(), v);
            }
        }
        Ok(())
    }

    fn context(&mut self) -> NodeId {
        if let Some(c) = self.context {
            return c;
        }
        let op = Op::Local {
            name: "context".into(),
            excludes: self.opts.excludes.clone(),
        };
        let id = self.def.add(op, vec![], "[internal] load build context");
        self.context = Some(id);
        id
    }

    async fn image_node(
        &mut self,
        ins: &Instruction,
        name: &str,
        platform: &Platform,
        display: &str,
        resolver: &dyn ImageResolver,
    ) -> Result<(NodeId, ImageConfig)> {
        let resolved = self.resolve_image(ins, name, platform, resolver).await?;
        let name = if display.is_empty() {
            String::new()
        } else {
            format!("{display} FROM {}", resolved.pinned)
        };
        let op = Op::Image {
            reference: resolved.pinned.clone(),
            platform: platform.clone(),
        };
        let node = self.def.add(op, vec![], name);
        self.locations.entry(node).or_insert_with(|| ins.location);
        Ok((node, resolved.config))
    }

    /// Resolves an image name to its pinned reference and config, located at `ins` on failure.
    async fn resolve_image(
        &mut self,
        ins: &Instruction,
        name: &str,
        platform: &Platform,
        resolver: &dyn ImageResolver,
    ) -> Result<crate::ResolvedImage> {
        let base_name = name.to_string();
        let reference: Reference = name
            .parse()
            .map_err(|e: kiln_oci::Error| self.located(ins, &e.to_string()))?;
        let resolved = resolver
            .resolve(&reference, platform)
            .await
            .map_err(|source| {
                let mut msg = format!(
                    "failed to resolve source metadata for `{}`",
                    reference.whole()
                );
                // A name that is not an image may be a stage name with a typo.
                let stages: Vec<&str> = self.stage_names.iter().map(String::as_str).collect();
                if !name.contains(['/', ':', '@'])
                    && let Some(s) = kiln_dockerfile::suggest::closest(name, &stages, false)
                {
                    msg.push_str(&format!(" (did you mean the stage `{s}`?)"));
                }
                Error::Resolve {
                    rendered: kiln_dockerfile::render_snippet(
                        &self.opts.dockerfile_name,
                        self.source,
                        ins.location,
                        &msg,
                    ),
                    source,
                }
            })?;
        self.images
            .insert((base_name, platform.clone()), resolved.config.clone());
        Ok(resolved)
    }

    /// A stage's base (resolved image, `scratch` or an earlier stage) and its ONBUILD triggers.
    async fn stage_base(
        &mut self,
        index: usize,
        stages: &[Stage<'_>],
        done: &[Option<StageResult>],
        multistage: bool,
        resolver: &dyn ImageResolver,
    ) -> Result<StageBase> {
        let stage = &stages[index];
        let total = 1 + stage.instructions.iter().filter(|i| makes_step(i)).count();
        let platform = self.stage_platform(stage)?;
        let mut prefix = if multistage {
            format!(
                "{} ",
                stage
                    .name
                    .clone()
                    .unwrap_or_else(|| format!("stage-{index}"))
            )
        } else {
            String::new()
        };
        if self.opts.multi_platform {
            prefix.insert_str(0, &format!("{platform} "));
        }
        let base = self.expand(stage.from, &stage.image, &self.meta_args)?;
        let mut scope = Scope::default();
        let (node, mut image) = if let Some(dep) = self.base_stage(stages, index, &base) {
            let r = done[dep]
                .clone()
                .expect("stages a stage needs are converted first");
            scope = r.scope;
            (r.node, r.image)
        } else if base == "scratch" {
            (
                self.def.add(Op::Scratch, vec![], ""),
                empty_image(&platform),
            )
        } else if let Some((key, ctx)) = self.named_context(&base) {
            self.named_context_node(stage.from, &key, &ctx, &platform, resolver)
                .await?
        } else if let Some(target) = self.later_alias(stages, &base) {
            return Err(self.located(
                stage.from,
                &format!(
                    "context {base} is the stage {target} (target:{target}), which must be \
                     defined before it is used in FROM"
                ),
            ));
        } else {
            let display = format!("[{prefix}1/{total}]");
            self.image_node(stage.from, &base, &platform, &display, resolver)
                .await?
        };
        let base_history = image.history.len();
        // The base's ONBUILD triggers run first, located at FROM, and are not inherited.
        let triggers = self.onbuild_triggers(stage.from, image.config.on_build.take())?;
        Ok(StageBase {
            node,
            image,
            triggers,
            scope,
            platform,
            prefix,
            base_history,
            from_ref: base,
        })
    }

    /// Parses a base image's (or stage's) ONBUILD triggers into instructions located at `from`.
    fn onbuild_triggers(
        &self,
        from: &Instruction,
        triggers: Option<Vec<String>>,
    ) -> Result<Vec<Instruction>> {
        let mut out = Vec::new();
        for trigger in triggers.unwrap_or_default() {
            let parsed = kiln_dockerfile::parse(&trigger).map_err(|e| {
                self.located(from, &format!("invalid ONBUILD trigger `{trigger}`: {e}"))
            })?;
            let mut instructions = parsed.instructions;
            if instructions.len() != 1 {
                return Err(self.located(from, "onbuild trigger should be a single expression"));
            }
            let mut ins = instructions.remove(0);
            if matches!(
                ins.kind,
                InstructionKind::From { .. } | InstructionKind::Onbuild(_)
            ) {
                return Err(self.located(
                    from,
                    &format!("{} isn't allowed as an ONBUILD trigger", ins.keyword),
                ));
            }
            ins.location = from.location;
            out.push(ins);
        }
        Ok(out)
    }

    fn command_argv(&self, image: &ImageConfig, command: &Command) -> Vec<String> {
        match command {
            Command::Exec(v) => v.clone(),
            Command::Shell(s) => {
                let mut argv: Vec<String> = image
                    .config
                    .shell
                    .clone()
                    .unwrap_or_else(|| DEFAULT_SHELL.iter().map(|s| s.to_string()).collect());
                argv.push(s.clone());
                argv
            }
        }
    }

    /// Expands a COPY heredoc body as BuildKit does: variables and escapes are processed, quotes
    /// are plain characters.
    fn expand_heredoc(
        &self,
        ins: &Instruction,
        body: &str,
        env: &BTreeMap<String, String>,
    ) -> Result<String> {
        // kiln's lexer has no "skip quotes" mode; escaping every unescaped quote gives the same.
        let mut escaped = String::with_capacity(body.len());
        let mut chars = body.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    escaped.push(c);
                    if let Some(next) = chars.next() {
                        escaped.push(next);
                    }
                }
                '\'' | '"' => {
                    escaped.push('\\');
                    escaped.push(c);
                }
                _ => escaped.push(c),
            }
        }
        ShellLex::new('\\')
            .process_word(&escaped, env)
            .map_err(|e| self.located(ins, &e.to_string()))
    }
}

pub(crate) const DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Whether an instruction is a build step (counted in `[n/total]`).
fn makes_step(ins: &Instruction) -> bool {
    matches!(
        ins.kind,
        InstructionKind::Run { .. }
            | InstructionKind::Copy(_)
            | InstructionKind::Add(_)
            | InstructionKind::Workdir(_)
    )
}

fn cmd_set_in_stage(instructions: &[&Instruction], before: &Instruction) -> bool {
    instructions
        .iter()
        .take_while(|i| !std::ptr::eq(**i, before))
        .any(|i| matches!(i.kind, InstructionKind::Cmd(_)))
}

/// The config of `FROM scratch`: the platform, the default PATH and, as BuildKit's empty image
/// has, `/` as the working directory.
fn empty_image(platform: &Platform) -> ImageConfig {
    let mut image = ImageConfig {
        architecture: platform.architecture.clone(),
        os: platform.os.clone(),
        variant: platform.variant.clone(),
        ..Default::default()
    };
    image.config.env = Some(vec![format!("PATH={}", DEFAULT_PATH)]);
    image.config.working_dir = Some("/".into());
    image
}

/// The directory RUN, WORKDIR and relative COPY destinations start from: the image's working
/// directory, `/` when it has none.
fn working_dir(image: &ImageConfig) -> String {
    image
        .config
        .working_dir
        .clone()
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "/".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_seeing_another_platforms_target_args_get_an_arrow() {
        let amd64 = Platform::new("linux", "amd64", None);
        let env = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let arrow = instructions::target_arrow;
        assert_eq!(arrow(&amd64, &env(&[])), "");
        assert_eq!(arrow(&amd64, &env(&[("TARGETARCH", "amd64")])), "");
        // As BuildKit v0.32.2 names it: `[linux/amd64->arm64 build 2/2]`.
        assert_eq!(arrow(&amd64, &env(&[("TARGETARCH", "arm64")])), "->arm64");
        assert_eq!(
            arrow(&amd64, &env(&[("TARGETPLATFORM", "linux/arm/v7")])),
            "->arm/v7"
        );
        assert_eq!(
            arrow(
                &amd64,
                &env(&[("TARGETOS", "windows"), ("TARGETARCH", "amd64")])
            ),
            "->windows/amd64"
        );
    }

    #[test]
    fn build_args_name_the_build_platform_and_target_args_the_target() {
        let target = Platform::new("linux", "arm", Some("v7"));
        let build = Platform::new("linux", "amd64", None);
        let m = platform_args(&target, &build);
        let got: Vec<String> = m.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(
            got,
            [
                "BUILDARCH=amd64",
                "BUILDOS=linux",
                "BUILDPLATFORM=linux/amd64",
                "BUILDVARIANT=",
                "TARGETARCH=arm",
                "TARGETOS=linux",
                "TARGETPLATFORM=linux/arm/v7",
                "TARGETVARIANT=v7",
            ]
        );
    }
}
