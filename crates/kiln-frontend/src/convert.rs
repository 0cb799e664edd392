//! Dockerfile → build graph. One pass over the stages the target needs, in file order (a stage
//! can only use stages defined before it), keeping per-stage state the way BuildKit's
//! dockerfile2llb does.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use kiln_dockerfile::shell::ShellLex;
use kiln_dockerfile::{Command, CopyArgs, Instruction, InstructionKind, Location};
use kiln_llb::{CopyOp, Definition, ExecOp, MkdirOp, NetworkMode, NodeId, Op};
use kiln_oci::{History, ImageConfig, Platform, Reference};

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
}

pub async fn convert(
    source: &str,
    opts: &BuildOpts,
    resolver: &dyn ImageResolver,
) -> Result<Converted> {
    let dockerfile = kiln_dockerfile::parse(source).map_err(|e| Error::Dockerfile {
        rendered: e.render(&opts.dockerfile_name, source),
    })?;
    if let Some(syntax) = &dockerfile.directives.syntax
        && !is_builtin_syntax(syntax)
    {
        return Err(Error::Dockerfile {
            rendered: format!(
                "error: {}: `# syntax={syntax}` names an external frontend image, which is not supported yet \
                 (kiln's built-in frontend implements docker/dockerfile:1)",
                opts.dockerfile_name
            ),
        });
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
    };
    let mut warnings: Vec<String> = dockerfile
        .warnings
        .iter()
        .map(|w| {
            format!(
                "{}:{}: {}",
                opts.dockerfile_name, w.location.start_line, w.message
            )
        })
        .collect();

    // Instructions before the first FROM: only ARG is allowed there.
    let mut stages: Vec<Stage> = Vec::new();
    for ins in &dockerfile.instructions {
        match (&ins.kind, stages.last_mut()) {
            (
                InstructionKind::From {
                    image,
                    name,
                    platform,
                },
                _,
            ) => stages.push(Stage {
                name: name.as_ref().map(|n| n.to_ascii_lowercase()),
                from: ins,
                image: image.clone(),
                platform: platform.clone(),
                instructions: Vec::new(),
            }),
            (InstructionKind::Arg(args), None) => conv.meta_arg(ins, args)?,
            (_, None) => return Err(conv.located(ins, "no build stage in current context")),
            (_, Some(stage)) => stage.instructions.push(ins),
        }
    }
    if stages.is_empty() {
        return Err(Error::Dockerfile {
            rendered: format!(
                "error: {}: the Dockerfile has no FROM instruction",
                opts.dockerfile_name
            ),
        });
    }
    for (i, s) in stages.iter().enumerate() {
        if let Some(name) = &s.name
            && stages[..i].iter().any(|o| o.name.as_deref() == Some(name))
        {
            return Err(conv.located(s.from, &format!("duplicate stage name `{name}`")));
        }
    }

    let target = match &opts.target {
        None => stages.len() - 1,
        Some(t) => {
            let t = t.to_ascii_lowercase();
            stages
                .iter()
                .position(|s| s.name.as_deref() == Some(t.as_str()))
                .ok_or_else(|| {
                    let names: Vec<&str> =
                        stages.iter().filter_map(|s| s.name.as_deref()).collect();
                    Error::Dockerfile {
                        rendered: format!(
                            "error: target stage `{t}` could not be found in {}; valid stages: {}",
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

    let needed = conv.needed_stages(&stages, target)?;
    let multistage = stages.len() > 1;
    let mut results: Vec<Option<StageResult>> = vec![None; stages.len()];
    for i in 0..=target {
        if !needed.contains(&i) {
            continue;
        }
        let r = conv
            .convert_stage(i, &stages, &results, multistage, resolver)
            .await?;
        results[i] = Some(r);
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
    let result = results[target]
        .take()
        .expect("the target stage was converted");
    Ok(Converted {
        definition: conv.def,
        root: result.node,
        image: result.image,
        warnings,
        locations: conv.locations,
    })
}

/// `docker/dockerfile:1`, `docker.io/docker/dockerfile:1.7`, `docker/dockerfile` and the like,
/// which kiln's own frontend stands in for.
fn is_builtin_syntax(syntax: &str) -> bool {
    let name = syntax.split(['@', ':']).next().unwrap_or_default();
    matches!(name, "docker/dockerfile" | "docker.io/docker/dockerfile")
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

    fn not_supported(&self, ins: &Instruction, what: &str) -> Error {
        self.located(ins, &format!("{what} is not supported yet"))
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
            match value {
                Some(v) => {
                    self.meta_args.insert(name.clone(), v);
                }
                None => {
                    self.meta_args.remove(name);
                }
            }
        }
        Ok(())
    }

    /// The stages `target` needs, through FROM and COPY --from.
    fn needed_stages(&self, stages: &[Stage], target: usize) -> Result<BTreeSet<usize>> {
        let mut needed = BTreeSet::new();
        let mut todo = vec![target];
        while let Some(i) = todo.pop() {
            if !needed.insert(i) {
                continue;
            }
            let base = self.expand(stages[i].from, &stages[i].image, &self.meta_args)?;
            if let Some(dep) = self.stage_ref(stages, i, &base) {
                todo.push(dep);
            }
            for ins in &stages[i].instructions {
                if let InstructionKind::Copy(args) = &ins.kind
                    && let Some(from) = &args.from
                    && let Some(dep) = self.stage_ref(stages, i, from)
                {
                    todo.push(dep);
                }
            }
        }
        Ok(needed)
    }

    /// A stage named or numbered `name` defined before stage `current`.
    fn stage_ref(&self, stages: &[Stage], current: usize, name: &str) -> Option<usize> {
        let lower = name.to_ascii_lowercase();
        if let Some(i) = stages[..current]
            .iter()
            .position(|s| s.name.as_deref() == Some(lower.as_str()))
        {
            return Some(i);
        }
        name.parse::<usize>().ok().filter(|i| *i < current)
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
        let reference: Reference = name
            .parse()
            .map_err(|e| self.located(ins, &format!("invalid reference format `{name}`: {e}")))?;
        let resolved = resolver
            .resolve(&reference, platform)
            .await
            .map_err(|source| {
                let msg = format!(
                    "failed to resolve source metadata for `{}`",
                    reference.whole()
                );
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

    async fn convert_stage(
        &mut self,
        index: usize,
        stages: &[Stage<'_>],
        done: &[Option<StageResult>],
        multistage: bool,
        resolver: &dyn ImageResolver,
    ) -> Result<StageResult> {
        let stage = &stages[index];
        let total = 1 + stage
            .instructions
            .iter()
            .filter(|i| {
                matches!(
                    i.kind,
                    InstructionKind::Run { .. }
                        | InstructionKind::Copy(_)
                        | InstructionKind::Add(_)
                        | InstructionKind::Workdir(_)
                )
            })
            .count();
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
        let mut step = 1;
        let label = |step: usize| format!("[{prefix}{step}/{total}]");

        let platform = match &stage.platform {
            None => self.opts.platform.clone(),
            Some(p) => {
                let p = self.expand(stage.from, p, &self.meta_args)?;
                p.parse()
                    .map_err(|e: kiln_oci::Error| self.located(stage.from, &e.to_string()))?
            }
        };
        let base = self.expand(stage.from, &stage.image, &self.meta_args)?;
        let (mut node, mut image) = if let Some(dep) = self.stage_ref(stages, index, &base) {
            let r = done[dep]
                .clone()
                .expect("stages a stage needs are converted first");
            (r.node, r.image)
        } else if base == "scratch" {
            let mut image = ImageConfig {
                architecture: platform.architecture.clone(),
                os: platform.os.clone(),
                variant: platform.variant.clone(),
                ..Default::default()
            };
            image.config.env = Some(vec![format!("PATH={}", DEFAULT_PATH)]);
            (self.def.add(Op::Scratch, vec![], ""), image)
        } else {
            let display = label(step);
            self.image_node(stage.from, &base, &platform, &display, resolver)
                .await?
        };
        if image
            .config
            .on_build
            .as_ref()
            .is_some_and(|t| !t.is_empty())
        {
            return Err(self.not_supported(stage.from, "running ONBUILD triggers of a base image"));
        }
        if image.config.env.is_none() {
            image.config.env = Some(vec![format!("PATH={DEFAULT_PATH}")]);
        }
        // Args in scope in this stage: name → value (None: declared without a value).
        let mut args: Vec<(String, Option<String>)> = Vec::new();
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

        for ins in &stage.instructions {
            let env = expansion_env(&image, &args);
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
                    if !heredocs.is_empty() {
                        return Err(self.not_supported(ins, "a heredoc in RUN"));
                    }
                    if !mounts.is_empty() {
                        return Err(self.not_supported(ins, "RUN --mount"));
                    }
                    if network.is_some() {
                        return Err(self.not_supported(ins, "RUN --network"));
                    }
                    if security.is_some() {
                        return Err(self.not_supported(ins, "RUN --security"));
                    }
                    if !device.is_empty() {
                        return Err(self.not_supported(ins, "RUN --device"));
                    }
                    let argv = self.command_argv(&image, command);
                    let run_args: Vec<String> = args
                        .iter()
                        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v}")))
                        .filter(|kv| {
                            let k = kv.split_once('=').map_or(kv.as_str(), |(k, _)| k);
                            image.config.env_get(k).is_none()
                        })
                        .collect();
                    let mut run_env = image.config.env.clone().unwrap_or_default();
                    run_env.extend(run_args.iter().cloned());
                    step += 1;
                    let op = Op::Exec(ExecOp {
                        args: argv.clone(),
                        env: run_env,
                        cwd: image
                            .config
                            .working_dir
                            .clone()
                            .filter(|w| !w.is_empty())
                            .unwrap_or_else(|| "/".into()),
                        user: image.config.user.clone().unwrap_or_default(),
                        network: NetworkMode::Host,
                    });
                    node = self.def.add(
                        op,
                        vec![node],
                        format!("{} {}", label(step), one_line(&ins.original)),
                    );
                    self.locations.insert(node, ins.location);
                    // BuildKit's history lists every ARG in scope, with the ENV value when an
                    // ENV overrides it, then the argv joined by spaces (either form).
                    let shown = argv.join(" ");
                    let history_args: Vec<String> = args
                        .iter()
                        .map(|(k, v)| {
                            let v = image.config.env_get(k).or(v.as_deref()).unwrap_or("");
                            format!("{k}={v}")
                        })
                        .collect();
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
                InstructionKind::Copy(copy) => {
                    step += 1;
                    node = self
                        .copy(
                            ins,
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
                    // BuildKit records the expanded sources and destination, without flags.
                    let mut words = Vec::new();
                    for w in copy.sources.iter().chain([&copy.dest]) {
                        words.push(self.expand(ins, w, &env)?);
                    }
                    history(
                        &mut image,
                        format!("COPY {} # buildkit", words.join(" ")),
                        false,
                    );
                }
                InstructionKind::Add(_) => return Err(self.not_supported(ins, "ADD")),
                InstructionKind::Workdir(dir) => {
                    let dir = self.expand(ins, dir, &env)?;
                    let cwd = image
                        .config
                        .working_dir
                        .clone()
                        .filter(|w| !w.is_empty())
                        .unwrap_or_else(|| "/".into());
                    let path = path::join(&cwd, &dir);
                    image.config.working_dir = Some(path.clone());
                    step += 1;
                    let op = Op::Mkdir(MkdirOp {
                        path: path.clone(),
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
                    let mut shown = Vec::new();
                    for (k, v) in pairs {
                        // Each pair sees the values set before it in the same instruction only
                        // through the image env, as BuildKit does.
                        let env = expansion_env(&image, &args);
                        let k = self.expand(ins, k, &env)?;
                        let v = self.expand(ins, v, &env)?;
                        image.config.env_set(&k, &v);
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
                            Some(self.expand(ins, d, &env)?)
                        } else {
                            self.meta_args.get(name).cloned()
                        };
                        shown.push(match &value {
                            Some(v) => format!("{name}={v}"),
                            None => name.clone(),
                        });
                        args.retain(|(k, _)| k != name);
                        args.push((name.clone(), value));
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
                    image.config.cmd = Some(argv);
                }
                InstructionKind::Entrypoint(command) => {
                    let argv = self.command_argv(&image, command);
                    history(
                        &mut image,
                        format!("ENTRYPOINT {}", go_quote_list(&argv)),
                        true,
                    );
                    image.config.entrypoint = Some(argv);
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
                    // BuildKit prints a Go map: sorted keys, no duplicates.
                    keys.sort();
                    keys.dedup();
                    let shown: Vec<String> = keys.iter().map(|k| format!("{k}:{{}}")).collect();
                    history(&mut image, format!("EXPOSE map[{}]", shown.join(" ")), true);
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
                InstructionKind::Shell(_) => return Err(self.not_supported(ins, "SHELL")),
                InstructionKind::Volume(_) => return Err(self.not_supported(ins, "VOLUME")),
                InstructionKind::StopSignal(_) => return Err(self.not_supported(ins, "STOPSIGNAL")),
                InstructionKind::Maintainer(_) => return Err(self.not_supported(ins, "MAINTAINER")),
                InstructionKind::Healthcheck(_) => {
                    return Err(self.not_supported(ins, "HEALTHCHECK"));
                }
                InstructionKind::Onbuild(_) => return Err(self.not_supported(ins, "ONBUILD")),
            }
        }
        image.created = Some(self.opts.created.clone());
        image.architecture = platform.architecture.clone();
        image.os = platform.os.clone();
        image.variant = platform.variant.clone();
        Ok(StageResult { node, image })
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

    #[allow(clippy::too_many_arguments)]
    async fn copy(
        &mut self,
        ins: &Instruction,
        copy: &CopyArgs,
        node: NodeId,
        image: &ImageConfig,
        env: &BTreeMap<String, String>,
        stages: &[Stage<'_>],
        index: usize,
        done: &[Option<StageResult>],
        label: &str,
        resolver: &dyn ImageResolver,
    ) -> Result<NodeId> {
        if !copy.heredocs.is_empty() {
            return Err(self.not_supported(ins, "a heredoc in COPY"));
        }
        if copy.link {
            return Err(self.not_supported(ins, "COPY --link"));
        }
        if copy.parents {
            return Err(self.not_supported(ins, "COPY --parents"));
        }
        if !copy.exclude.is_empty() {
            return Err(self.not_supported(ins, "COPY --exclude"));
        }
        if copy.checksum.is_some() || copy.keep_git_dir.is_some() || copy.unpack.is_some() {
            return Err(self.not_supported(ins, "this COPY flag"));
        }
        let mut sources = Vec::new();
        for s in &copy.sources {
            sources.push(self.expand(ins, s, env)?);
        }
        let dest = self.expand(ins, &copy.dest, env)?;
        let cwd = image
            .config
            .working_dir
            .clone()
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".into());
        let mut dest = path::copy_dest(&cwd, &dest);
        if sources.len() > 1 && !dest.ends_with('/') {
            if copy.dest.ends_with('/') {
                dest.push('/');
            } else {
                return Err(self.located(ins, "when using COPY with more than one source file, the destination must be a directory and end with a /"));
            }
        }
        let chown = match &copy.chown {
            Some(c) => Some(self.expand(ins, c, env)?),
            None => None,
        };
        let chmod = match &copy.chmod {
            Some(c) => {
                let c = self.expand(ins, c, env)?;
                Some(
                    u32::from_str_radix(&c, 8)
                        .ok()
                        .filter(|m| *m <= 0o7777)
                        .ok_or_else(|| {
                            self.located(
                                ins,
                                &format!(
                                    "invalid --chmod `{c}`: only octal modes are supported yet"
                                ),
                            )
                        })?,
                )
            }
            None => None,
        };
        let source_node = match &copy.from {
            None => self.context(),
            Some(from) => {
                let from = self.expand(ins, from, env)?;
                if let Some(dep) = self.stage_ref(stages, index, &from) {
                    done[dep]
                        .as_ref()
                        .expect("stages a stage needs are converted first")
                        .node
                } else if stages[index..]
                    .iter()
                    .any(|s| s.name.as_deref() == Some(from.to_ascii_lowercase().as_str()))
                {
                    return Err(
                        self.located(ins, &format!("stage `{from}` is used before it is defined"))
                    );
                } else {
                    let platform = self.opts.platform.clone();
                    self.image_node(ins, &from, &platform, "", resolver)
                        .await?
                        .0
                }
            }
        };
        let op = Op::Copy(CopyOp {
            sources,
            dest,
            chown,
            chmod,
            allow_wildcard: true,
        });
        Ok(self.def.add(
            op,
            vec![node, source_node],
            format!("{label} {}", one_line(&ins.original)),
        ))
    }
}

pub(crate) const DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Variables visible to word expansion: stage ARGs, overridden by the image's ENV.
fn expansion_env(
    image: &ImageConfig,
    args: &[(String, Option<String>)],
) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = args
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| (k.clone(), v.clone())))
        .collect();
    for kv in image.config.env.iter().flatten() {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        env.insert(k.to_string(), v.to_string());
    }
    env
}

fn cmd_set_in_stage(instructions: &[&Instruction], before: &Instruction) -> bool {
    instructions
        .iter()
        .take_while(|i| !std::ptr::eq(**i, before))
        .any(|i| matches!(i.kind, InstructionKind::Cmd(_)))
}

/// `80`, `80/udp`, `8000-8002/tcp` → `80/tcp`, `80/udp`, `8000/tcp`...
fn expose_keys(spec: &str) -> std::result::Result<Vec<String>, String> {
    let (ports, proto) = spec.split_once('/').unwrap_or((spec, "tcp"));
    let proto = proto.to_ascii_lowercase();
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err(format!("invalid proto `{proto}` in EXPOSE {spec}"));
    }
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
    fn builtin_syntax_names() {
        assert!(is_builtin_syntax("docker/dockerfile:1"));
        assert!(is_builtin_syntax("docker.io/docker/dockerfile:1.7-labs"));
        assert!(is_builtin_syntax("docker/dockerfile"));
        assert!(!is_builtin_syntax("example.com/my/frontend:1"));
    }

    #[test]
    fn go_quoting() {
        assert_eq!(
            go_quote_list(&["python3".into(), "-m".into()]),
            r#"["python3" "-m"]"#
        );
    }
}
