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

mod copy;
mod named;
mod scope;
mod stages;

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
    /// Resolved base image configs by name, for the build checks.
    images: BTreeMap<String, ImageConfig>,
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
        meta_args: platform_args(&opts.platform),
        locations: HashMap::new(),
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
        proxy_env: opts
            .build_args
            .iter()
            .filter(|(k, _)| is_builtin_arg(k))
            .map(|(k, v)| format!("{k}={v}"))
            .collect(),
    })
}

fn platform_args(p: &Platform) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for prefix in ["TARGET", "BUILD"] {
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

/// Go's `%q` of a string slice, which BuildKit uses in history entries: `["a" "b"]`.
fn go_quote_list(items: &[String]) -> String {
    let quoted: Vec<String> = items
        .iter()
        .map(|s| serde_json::to_string(s).expect("strings serialise"))
        .collect();
    format!("[{}]", quoted.join(" "))
}

/// Go's `%v` of a string slice: `[a b]`.
fn go_list(items: &[String]) -> String {
    format!("[{}]", items.join(" "))
}

/// Go's `time.Duration.String()` for a count of nanoseconds: `1m30s`, `1.5s`, `500ms`, `0s`.
fn go_duration(nanos: i128) -> String {
    if nanos == 0 {
        return "0s".into();
    }
    let sign = if nanos < 0 { "-" } else { "" };
    let n = nanos.unsigned_abs();
    // Below a second Go picks the largest unit that keeps an integer part.
    let fraction = |value: u128, unit: u128, digits: usize| {
        let whole = value / unit;
        let frac = value % unit;
        if frac == 0 {
            whole.to_string()
        } else {
            let f = format!("{frac:0digits$}");
            format!("{whole}.{}", f.trim_end_matches('0'))
        }
    };
    if n < 1_000 {
        return format!("{sign}{n}ns");
    }
    if n < 1_000_000 {
        return format!("{sign}{}µs", fraction(n, 1_000, 3));
    }
    if n < 1_000_000_000 {
        return format!("{sign}{}ms", fraction(n, 1_000_000, 6));
    }
    let secs = fraction(n % 60_000_000_000, 1_000_000_000, 9);
    let total_minutes = n / 60_000_000_000;
    let (hours, minutes) = (total_minutes / 60, total_minutes % 60);
    if hours > 0 {
        format!("{sign}{hours}h{minutes}m{secs}s")
    } else if minutes > 0 {
        format!("{sign}{minutes}m{secs}s")
    } else {
        format!("{sign}{secs}s")
    }
}

/// The config `Healthcheck` (zero values left out, as Go's `omitempty` does) and BuildKit's
/// history text for it, Go's `%+v` of the struct.
fn healthcheck(
    check: &kiln_dockerfile::Healthcheck,
) -> std::result::Result<(serde_json::Value, String), String> {
    use kiln_dockerfile::Healthcheck;
    let duration = |d: &Option<String>| match d {
        None => Ok(0),
        Some(d) => kiln_dockerfile::instructions::parse_go_duration(d),
    };
    let (test, durations, retries) = match check {
        Healthcheck::None => (vec!["NONE".to_string()], [0; 4], 0),
        Healthcheck::Cmd {
            command,
            interval,
            timeout,
            start_period,
            start_interval,
            retries,
        } => {
            let test = match command {
                Command::Shell(s) => vec!["CMD-SHELL".to_string(), s.clone()],
                Command::Exec(v) => std::iter::once("CMD".to_string())
                    .chain(v.iter().cloned())
                    .collect(),
            };
            let durations = [
                duration(interval)?,
                duration(timeout)?,
                duration(start_period)?,
                duration(start_interval)?,
            ];
            let retries = match retries {
                None => 0,
                Some(r) => r
                    .parse::<i32>()
                    .map_err(|_| format!("invalid --retries `{r}`"))?,
            };
            (test, durations, retries)
        }
    };
    let names = ["Interval", "Timeout", "StartPeriod", "StartInterval"];
    let mut json = serde_json::Map::new();
    json.insert("Test".into(), serde_json::json!(test));
    for (name, d) in names.iter().zip(durations) {
        if d != 0 {
            json.insert((*name).into(), serde_json::json!(d as i64));
        }
    }
    if retries != 0 {
        json.insert("Retries".into(), serde_json::json!(retries));
    }
    let mut shown = format!("{{Test:{}", go_list(&test));
    for (name, d) in names.iter().zip(durations) {
        shown.push_str(&format!(" {name}:{}", go_duration(d)));
    }
    shown.push_str(&format!(" Retries:{retries}}}"));
    Ok((serde_json::Value::Object(json), shown))
}

/// A signal name (`SIGTERM`, `TERM`, case-insensitive) or a positive number, as Docker's
/// `signal.ParseSignal` accepts.
fn is_valid_signal(signal: &str) -> bool {
    const NAMES: [&str; 34] = [
        "ABRT", "ALRM", "BUS", "CHLD", "CLD", "CONT", "FPE", "HUP", "ILL", "INT", "IO", "IOT",
        "KILL", "PIPE", "POLL", "PROF", "PWR", "QUIT", "SEGV", "STKFLT", "STOP", "SYS", "TERM",
        "TRAP", "TSTP", "TTIN", "TTOU", "UNUSED", "URG", "USR1", "USR2", "VTALRM", "WINCH", "XCPU",
    ];
    if let Ok(n) = signal.parse::<u32>() {
        return n > 0;
    }
    let upper = signal.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    if NAMES.contains(&name) || name == "XFSZ" {
        return true;
    }
    // Real-time signals: RTMIN, RTMIN+n, RTMAX-n.
    let rt = |base: &str, sep: char| {
        name.strip_prefix(base).is_some_and(|rest| {
            rest.is_empty()
                || rest
                    .strip_prefix(sep)
                    .is_some_and(|n| n.parse::<u8>().is_ok_and(|n| n <= 15))
        })
    };
    rt("RTMIN", '+') || rt("RTMAX", '-')
}

/// The ONBUILD trigger as BuildKit stores it: the line after the keyword, then any heredoc
/// bodies each followed by its terminator.
fn onbuild_expression(ins: &Instruction) -> String {
    let original = ins.original.trim_start();
    let rest = original
        .get(..7)
        .filter(|k| k.eq_ignore_ascii_case("onbuild"))
        .map_or(original, |_| original[7..].trim_start());
    let mut out = rest.to_string();
    if let InstructionKind::Onbuild(inner) = &ins.kind {
        let heredocs = match &inner.kind {
            InstructionKind::Run { heredocs, .. } => heredocs.as_slice(),
            InstructionKind::Copy(c) | InstructionKind::Add(c) => c.heredocs.as_slice(),
            _ => &[],
        };
        for h in heredocs {
            out.push('\n');
            out.push_str(&h.content);
            out.push_str(&h.name);
        }
    }
    out
}

/// What a RUN's `--mount`s add to its exec op.
#[derive(Default)]
struct RunMounts {
    binds: Vec<ExecMount>,
    caches: Vec<CacheMount>,
    tmpfs: Vec<TmpfsMount>,
    secrets: Vec<SecretMount>,
    ssh: Vec<SshMount>,
    inputs: Vec<NodeId>,
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl Converter<'_> {
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
        self.images.insert(base_name, resolved.config.clone());
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
        let prefix = if multistage {
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
        let platform = match &stage.platform {
            None => self.opts.platform.clone(),
            Some(p) => {
                let p = self.expand(stage.from, p, &self.meta_args)?;
                p.parse()
                    .map_err(|e: kiln_oci::Error| self.located(stage.from, &e.to_string()))?
            }
        };
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

    async fn convert_stage(
        &mut self,
        index: usize,
        stages: &[Stage<'_>],
        done: &[Option<StageResult>],
        base: StageBase,
        resolver: &dyn ImageResolver,
    ) -> Result<StageResult> {
        let stage = &stages[index];
        let StageBase {
            mut node,
            mut image,
            triggers,
            mut scope,
            platform,
            prefix,
            base_history,
            from_ref,
        } = base;
        let mut step = 1;
        let mut instructions: Vec<(&Instruction, bool)> =
            triggers.iter().map(|t| (t, true)).collect();
        instructions.extend(stage.instructions.iter().map(|i| (*i, false)));
        let total = 1 + instructions.iter().filter(|(i, _)| makes_step(i)).count();
        if image.config.env_get("PATH").is_none() {
            image
                .config
                .env
                .get_or_insert_with(Vec::new)
                .push(format!("PATH={DEFAULT_PATH}"));
        }
        for kv in image.config.env.iter().flatten() {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            scope.set_env(k, v);
        }
        let created = self.opts.created.clone();
        let history = |image: &mut ImageConfig, created_by: String, empty_layer: bool| {
            image.history.push(History {
                created: Some(created.clone()),
                created_by: Some(created_by),
                comment: Some(HISTORY_COMMENT.into()),
                empty_layer,
                ..Default::default()
            });
        };

        let label = |step: usize, onbuild: bool| {
            let trigger = if onbuild { " ONBUILD" } else { "" };
            format!("[{prefix}{step}/{total}]{trigger}")
        };
        for (ins, onbuild) in instructions {
            let label = |step: usize| label(step, onbuild);
            let env = scope.vars();
            match &ins.kind {
                InstructionKind::From { .. } => unreachable!("FROM starts a new stage"),
                InstructionKind::Run {
                    command,
                    heredocs,
                    mounts,
                    network,
                    security,
                    device,
                } => {
                    let cwd = working_dir(&image);
                    let mut parsed = Vec::new();
                    for m in mounts {
                        let m = crate::mount::parse(m, |w| {
                            self.lex.process_word(w, &env).map_err(|e| e.to_string())
                        })
                        .map_err(|e| self.located(ins, &e))?;
                        parsed.push(m);
                    }
                    let (network, mut sandbox) = crate::sandbox::run_modes(
                        &self.opts.run,
                        network.as_deref(),
                        security.as_deref(),
                    )
                    .map_err(|e| self.located(ins, &e))?;
                    for d in device {
                        // Not expanded, as in BuildKit: `$D` is a device name.
                        let d = kiln_dockerfile::instructions::parse_device(d)
                            .map_err(|e| self.located(ins, &e))?;
                        sandbox.devices.push(kiln_llb::DeviceRequest {
                            name: d.name,
                            required: d.required,
                        });
                    }
                    let (command, script) = self.run_heredoc(ins, command, heredocs)?;
                    let first_mount_input = 1 + usize::from(script.is_some());
                    let run_mounts = self
                        .run_mounts(
                            ins,
                            &parsed,
                            &cwd,
                            first_mount_input,
                            stages,
                            done,
                            resolver,
                        )
                        .await?;
                    let argv = self.command_argv(&image, &command);
                    // The stage's environment: ENV and ARG values, the later write winning.
                    let mut run_env = scope.env_list();
                    // As BuildKit: the first agent is the default one unless the env names one.
                    if let Some(first) = run_mounts.ssh.first()
                        && !run_env.iter().any(|e| e.starts_with("SSH_AUTH_SOCK="))
                    {
                        run_env.push(format!("SSH_AUTH_SOCK={}", first.target));
                    }
                    step += 1;
                    let op = Op::Exec(Box::new(ExecOp {
                        args: argv.clone(),
                        env: run_env,
                        // As written (`/a/./b/..`): runc makes the directories the path names
                        // on the way, as under BuildKit, then starts where it leads.
                        cwd: cwd.clone(),
                        user: image.config.user.clone().unwrap_or_default(),
                        network,
                        mounts: script
                            .iter()
                            .map(|_| ExecMount {
                                input: 1,
                                target: HEREDOC_PIPES.into(),
                                readonly: true,
                                source: String::new(),
                            })
                            .chain(run_mounts.binds)
                            .collect(),
                        caches: run_mounts.caches,
                        tmpfs: run_mounts.tmpfs,
                        secrets: run_mounts.secrets,
                        ssh: run_mounts.ssh,
                        sandbox,
                    }));
                    let mut inputs = vec![node];
                    if let Some(file) = script {
                        let op = Op::Mkfile(MkfileOp { files: vec![file] });
                        inputs.push(self.def.add(op, vec![], "preparing inline document"));
                    }
                    inputs.extend(run_mounts.inputs);
                    let mut name = format!("{} {}", label(step), one_line(&ins.original));
                    if let [h] = heredocs.as_slice()
                        && is_single_heredoc(&command_text(ins))
                    {
                        name.push_str(&format!(" ({})", summarize_heredoc(&h.content)));
                    }
                    node = self.def.add(op, inputs, name);
                    self.locations.insert(node, ins.location);
                    // BuildKit's history lists every ARG in scope, valued from the environment,
                    // then the argv joined by spaces (either form).
                    let shown = argv.join(" ");
                    let history_args = scope.history_args();
                    let prefix_args = if history_args.is_empty() {
                        String::new()
                    } else {
                        format!("|{} {} ", history_args.len(), history_args.join(" "))
                    };
                    history(
                        &mut image,
                        format!("RUN {prefix_args}{shown} # buildkit"),
                        false,
                    );
                }
                InstructionKind::Copy(copy) | InstructionKind::Add(copy) => {
                    let add = matches!(ins.kind, InstructionKind::Add(_));
                    step += 1;
                    node = self
                        .copy(
                            ins,
                            add,
                            copy,
                            node,
                            &image,
                            &env,
                            stages,
                            index,
                            done,
                            &label(step),
                            resolver,
                        )
                        .await?;
                    self.locations.insert(node, ins.location);
                    // BuildKit records --parents, --chown and --chmod (expanded) and the
                    // expanded sources and destination; --from, --link and --exclude are left out.
                    let mut words = Vec::new();
                    if copy.parents {
                        words.push("--parents".to_string());
                    }
                    if let Some(c) = &copy.chown {
                        words.push(format!("--chown={}", self.expand(ins, c, &env)?));
                    }
                    if let Some(c) = &copy.chmod {
                        words.push(format!("--chmod={}", self.expand(ins, c, &env)?));
                    }
                    for w in &copy.sources {
                        words.push(self.expand(ins, w, &env)?);
                    }
                    words.extend(copy.heredocs.iter().map(|h| format!("<<{}", h.name)));
                    words.push(self.expand(ins, &copy.dest, &env)?);
                    let keyword = if add { "ADD" } else { "COPY" };
                    history(
                        &mut image,
                        format!("{keyword} {} # buildkit", words.join(" ")),
                        false,
                    );
                }
                InstructionKind::Workdir(dir) => {
                    let dir = self.expand(ins, dir, &env)?;
                    let cwd = working_dir(&image);
                    // As BuildKit's NormalizeWorkdir: an absolute path is kept as written
                    // (`/x//y` stays), a relative one is joined to the current one and cleaned.
                    let path = if dir.starts_with('/') {
                        dir
                    } else if dir.is_empty() {
                        cwd
                    } else {
                        path::join(&cwd, &dir)
                    };
                    image.config.working_dir = Some(path.clone());
                    step += 1;
                    let op = Op::Mkdir(MkdirOp {
                        path: path::clean(&path),
                        mode: 0o755,
                        user: image.config.user.clone().unwrap_or_default(),
                    });
                    node = self
                        .def
                        .add(op, vec![node], format!("{} WORKDIR {path}", label(step)));
                    self.locations.insert(node, ins.location);
                    history(&mut image, format!("WORKDIR {path}"), false);
                }
                InstructionKind::Env(pairs) => {
                    // Every pair is expanded with the environment from before the line, as
                    // BuildKit expands the whole instruction before applying it.
                    let mut expanded = Vec::new();
                    for (k, v) in pairs {
                        expanded.push((self.expand(ins, k, &env)?, self.expand(ins, v, &env)?));
                    }
                    let mut shown = Vec::new();
                    for (k, v) in expanded {
                        image.config.env_set(&k, &v);
                        scope.set_env(&k, &v);
                        shown.push(format!("{k}={v}"));
                    }
                    history(&mut image, format!("ENV {}", shown.join(" ")), true);
                }
                InstructionKind::Arg(decls) => {
                    let mut shown = Vec::new();
                    for (name, default) in decls {
                        let value = if let Some(v) = self.opts.build_args.get(name) {
                            self.used_build_args.insert(name.clone());
                            Some(v.clone())
                        } else if let Some(d) = default {
                            // An earlier ARG on the same line is already in scope.
                            Some(self.expand(ins, d, &scope.vars())?)
                        } else {
                            self.meta_args.get(name).cloned()
                        };
                        shown.push(match &value {
                            Some(v) => format!("{name}={v}"),
                            None => name.clone(),
                        });
                        scope.declare_arg(name, value);
                    }
                    history(&mut image, format!("ARG {}", shown.join(" ")), true);
                }
                InstructionKind::User(user) => {
                    let user = self.expand(ins, user, &env)?;
                    image.config.user = Some(user.clone());
                    history(&mut image, format!("USER {user}"), true);
                }
                InstructionKind::Cmd(command) => {
                    let argv = self.command_argv(&image, command);
                    history(&mut image, format!("CMD {}", go_quote_list(&argv)), true);
                    // An empty list is left out of the config, as Go's `omitempty` does.
                    image.config.cmd = Some(argv).filter(|a| !a.is_empty());
                    // BuildKit marks every CMD so (Docker's image spec field, kept for
                    // compatibility).
                    image.config.args_escaped = Some(true);
                }
                InstructionKind::Entrypoint(command) => {
                    let argv = self.command_argv(&image, command);
                    history(
                        &mut image,
                        format!("ENTRYPOINT {}", go_quote_list(&argv)),
                        true,
                    );
                    image.config.entrypoint = Some(argv).filter(|a| !a.is_empty());
                    // An ENTRYPOINT resets a CMD inherited from the base image, not one set in
                    // this stage (BuildKit's rule).
                    if !cmd_set_in_stage(&stage.instructions, ins) {
                        image.config.cmd = None;
                    }
                }
                InstructionKind::Expose(ports) => {
                    let mut keys = Vec::new();
                    for p in ports {
                        let p = self.expand(ins, p, &env)?;
                        keys.extend(expose_keys(&p).map_err(|m| self.located(ins, &m))?);
                    }
                    let map = image.config.exposed_ports.get_or_insert_with(BTreeMap::new);
                    for k in &keys {
                        map.insert(k.clone(), serde_json::json!({}));
                    }
                    // BuildKit prints the sorted ports as a Go slice.
                    keys.sort();
                    keys.dedup();
                    history(&mut image, format!("EXPOSE [{}]", keys.join(" ")), true);
                }
                InstructionKind::Label(pairs) => {
                    let mut shown = Vec::new();
                    for (k, v) in pairs {
                        let k = self.expand(ins, k, &env)?;
                        let v = self.expand(ins, v, &env)?;
                        shown.push(format!("{k}={v}"));
                        image
                            .config
                            .labels
                            .get_or_insert_with(BTreeMap::new)
                            .insert(k, v);
                    }
                    history(&mut image, format!("LABEL {}", shown.join(" ")), true);
                }
                InstructionKind::Shell(shell) => {
                    image.config.shell = Some(shell.clone());
                    history(&mut image, format!("SHELL {}", go_list(shell)), true);
                }
                InstructionKind::Volume(volumes) => {
                    let mut expanded = Vec::new();
                    for v in volumes {
                        let v = self.expand(ins, v, &env)?;
                        if v.is_empty() {
                            return Err(
                                self.located(ins, "VOLUME specified can not be an empty string")
                            );
                        }
                        expanded.push(v);
                    }
                    let map = image.config.volumes.get_or_insert_with(BTreeMap::new);
                    for v in &expanded {
                        map.insert(v.clone(), serde_json::json!({}));
                    }
                    history(&mut image, format!("VOLUME {}", go_list(&expanded)), true);
                }
                InstructionKind::StopSignal(signal) => {
                    let signal = self.expand(ins, signal, &env)?;
                    if !is_valid_signal(&signal) {
                        return Err(self.located(ins, &format!("invalid signal: {signal}")));
                    }
                    history(&mut image, format!("STOPSIGNAL {signal}"), true);
                    image.config.stop_signal = Some(signal);
                }
                InstructionKind::Maintainer(maintainer) => {
                    image.author = Some(maintainer.clone());
                    history(&mut image, format!("MAINTAINER {maintainer}"), true);
                }
                InstructionKind::Healthcheck(check) => {
                    let (json, shown) = healthcheck(check).map_err(|m| self.located(ins, &m))?;
                    image.config.healthcheck = Some(json);
                    history(&mut image, format!("HEALTHCHECK {shown}"), true);
                }
                // BuildKit records the trigger text as written and adds no history entry.
                InstructionKind::Onbuild(_) => {
                    image
                        .config
                        .on_build
                        .get_or_insert_with(Vec::new)
                        .push(onbuild_expression(ins));
                }
            }
        }
        image.created = Some(self.opts.created.clone());
        image.architecture = platform.architecture.clone();
        image.os = platform.os.clone();
        image.variant = platform.variant.clone();
        Ok(StageResult {
            node,
            image,
            base: from_ref,
            base_history,
            scope,
        })
    }

    /// The command a RUN with heredocs runs, as BuildKit rewrites it: a lone heredoc starting
    /// with `#!` is written to a file under [`HEREDOC_PIPES`] and run; any other lone heredoc
    /// becomes the shell script itself; otherwise the heredocs are put back after the command
    /// line for the shell to read. Bodies are never expanded here: the shell does it.
    fn run_heredoc(
        &self,
        ins: &Instruction,
        command: &Command,
        heredocs: &[kiln_dockerfile::Heredoc],
    ) -> Result<(Command, Option<InlineFile>)> {
        if heredocs.is_empty() {
            return Ok((command.clone(), None));
        }
        let Command::Shell(line) = command else {
            return Err(self.located(ins, "parsing produced an invalid run command"));
        };
        if is_single_heredoc(line)
            && let [h] = heredocs
        {
            let data = if h.chomp {
                kiln_dockerfile::parser::heredoc::chomp_heredoc_content(&h.content)
            } else {
                h.content.clone()
            };
            if data.starts_with("#!") {
                let run = format!("{HEREDOC_PIPES}/{}", h.name);
                let file = InlineFile {
                    path: h.name.clone(),
                    data,
                    mode: 0o755,
                };
                return Ok((Command::Shell(run), Some(file)));
            }
            return Ok((Command::Shell(data), None));
        }
        let mut script = line.clone();
        for h in heredocs {
            script.push('\n');
            script.push_str(&h.content);
            script.push_str(&h.name);
        }
        Ok((Command::Shell(script), None))
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

    /// The LLB form of a RUN's `--mount`s; bind sources become inputs from `first_input` on.
    #[allow(clippy::too_many_arguments)]
    async fn run_mounts(
        &mut self,
        ins: &Instruction,
        mounts: &[crate::mount::RunMount],
        cwd: &str,
        first_input: usize,
        stages: &[Stage<'_>],
        done: &[Option<StageResult>],
        resolver: &dyn ImageResolver,
    ) -> Result<RunMounts> {
        use crate::mount::RunMount;
        let mut out = RunMounts::default();
        for m in mounts {
            match m {
                RunMount::Bind {
                    target,
                    source,
                    from,
                    readwrite,
                } => {
                    let node = match from {
                        None => self.context(),
                        Some(from) => {
                            self.mount_from_node(ins, from, target, stages, done, resolver)
                                .await?
                        }
                    };
                    out.binds.push(ExecMount {
                        input: first_input + out.inputs.len(),
                        target: path::join(cwd, target),
                        readonly: !readwrite,
                        source: path::clean(&format!("/{source}")),
                    });
                    out.inputs.push(node);
                }
                RunMount::Cache {
                    id,
                    target,
                    readonly,
                    sharing,
                    mode,
                    uid,
                    gid,
                    from,
                    source,
                } => {
                    let target = path::join(cwd, target);
                    let input = match from {
                        None => None,
                        Some(from) => {
                            let node = self
                                .mount_from_node(ins, from, &target, stages, done, resolver)
                                .await?;
                            out.inputs.push(node);
                            Some(first_input + out.inputs.len() - 1)
                        }
                    };
                    let source = path::clean(&format!("/{source}"));
                    out.caches.push(CacheMount {
                        id: id.clone().unwrap_or_else(|| target.clone()),
                        target,
                        readonly: *readonly,
                        sharing: *sharing,
                        mode: *mode,
                        uid: *uid,
                        gid: *gid,
                        input,
                        source: if source == "/" { String::new() } else { source },
                    });
                }
                RunMount::Ssh {
                    id,
                    target,
                    required,
                    mode,
                    uid,
                    gid,
                } => {
                    let target = match target {
                        Some(t) => path::join(cwd, t),
                        None => format!("/run/buildkit/ssh_agent.{}", out.ssh.len()),
                    };
                    out.ssh.push(SshMount {
                        id: id.clone().unwrap_or_else(|| "default".into()),
                        target,
                        required: *required,
                        mode: *mode,
                        uid: *uid,
                        gid: *gid,
                    });
                }
                RunMount::Tmpfs { target, size } => out.tmpfs.push(TmpfsMount {
                    target: path::join(cwd, target),
                    size: *size,
                }),
                RunMount::Secret {
                    id,
                    target,
                    env,
                    required,
                    mode,
                    uid,
                    gid,
                } => {
                    let target = target.as_deref().map(|t| path::join(cwd, t));
                    // As BuildKit: the id defaults to the target's file name.
                    let id = match (id, &target) {
                        (Some(id), _) => id.clone(),
                        (None, Some(t)) => t.rsplit('/').next().unwrap_or_default().to_string(),
                        (None, None) => String::new(),
                    };
                    if id.is_empty() {
                        return Err(self.located(ins, "secret `id` must be specified"));
                    }
                    // Without `env` or `target`, the file goes to /run/secrets/<id>.
                    let target = match (target, env) {
                        (None, None) => Some(format!("/run/secrets/{id}")),
                        (t, _) => t,
                    };
                    out.secrets.push(SecretMount {
                        id,
                        target,
                        env: env.clone(),
                        required: *required,
                        mode: *mode,
                        uid: *uid,
                        gid: *gid,
                    });
                }
            }
        }
        Ok(out)
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

/// Where a RUN heredoc with a shebang is mounted (read-only), as in BuildKit.
const HEREDOC_PIPES: &str = "/dev/pipes";

/// The command text of a shell-form RUN, as the parser keeps it.
fn command_text(ins: &Instruction) -> String {
    match &ins.kind {
        InstructionKind::Run {
            command: Command::Shell(s),
            ..
        } => s.clone(),
        _ => String::new(),
    }
}

/// Whether a whole command line is one heredoc introducer (`<<EOF`, `<<-'EOF'`).
fn is_single_heredoc(line: &str) -> bool {
    matches!(
        kiln_dockerfile::parser::heredoc::parse_heredoc(line),
        Ok(Some(_))
    )
}

/// The first line of a heredoc, with `...` when there are more (BuildKit's progress name).
fn summarize_heredoc(doc: &str) -> String {
    let doc = doc.trim();
    let mut lines = doc.lines();
    let first = lines.next().unwrap_or_default().to_string();
    if lines.next().is_some() {
        format!("{first}...")
    } else {
        first
    }
}

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

/// `80`, `80/udp`, `8000-8002/tcp` → `80/tcp`, `80/udp`, `8000/tcp`...
fn expose_keys(spec: &str) -> std::result::Result<Vec<String>, String> {
    let quoted = serde_json::to_string(spec).expect("strings serialise");
    let (ports, proto) = spec.split_once('/').unwrap_or((spec, ""));
    if ports.is_empty() {
        return Err(format!("invalid port: {quoted}: no port specified"));
    }
    let proto = match proto.to_ascii_lowercase().as_str() {
        "" => "tcp".to_string(),
        p @ ("tcp" | "udp" | "sctp") => p.to_string(),
        // BuildKit's words, with the protocol as written.
        _ => return Err(format!("invalid port: {quoted}: invalid proto: {proto}")),
    };
    let bad = || format!("invalid containerPort: {ports}");
    let parse = |p: &str| p.parse::<u16>().map_err(|_| bad());
    let (lo, hi) = match ports.split_once('-') {
        Some((a, b)) => (parse(a)?, parse(b)?),
        None => (parse(ports)?, parse(ports)?),
    };
    if lo > hi {
        return Err(bad());
    }
    Ok((lo..=hi).map(|p| format!("{p}/{proto}")).collect())
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
    fn expose_forms() {
        assert_eq!(expose_keys("80").unwrap(), vec!["80/tcp"]);
        assert_eq!(expose_keys("53/UDP").unwrap(), vec!["53/udp"]);
        assert_eq!(
            expose_keys("8000-8002").unwrap(),
            vec!["8000/tcp", "8001/tcp", "8002/tcp"]
        );
        assert!(expose_keys("http").is_err());
        assert!(expose_keys("80/xyz").is_err());
    }

    #[test]
    fn go_durations() {
        assert_eq!(go_duration(0), "0s");
        assert_eq!(go_duration(90_000_000_000), "1m30s");
        assert_eq!(go_duration(1_500_000_000), "1.5s");
        assert_eq!(go_duration(500_000_000), "500ms");
        assert_eq!(go_duration(3_600_000_000_000), "1h0m0s");
        assert_eq!(go_duration(1_500), "1.5µs");
    }

    #[test]
    fn signals() {
        assert!(is_valid_signal("SIGTERM"));
        assert!(is_valid_signal("quit"));
        assert!(is_valid_signal("9"));
        assert!(is_valid_signal("SIGRTMIN+3"));
        assert!(!is_valid_signal("SIGNOPE"));
        assert!(!is_valid_signal("0"));
    }

    #[test]
    fn go_quoting() {
        assert_eq!(
            go_quote_list(&["python3".into(), "-m".into()]),
            r#"["python3" "-m"]"#
        );
    }
}
