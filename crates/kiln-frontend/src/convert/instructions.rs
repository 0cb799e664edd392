//! A stage's instructions, one by one, into build steps and the image config.

use super::*;

impl Converter<'_> {
    pub(super) async fn convert_stage(
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
        // `--explain`'s identity of a step: the stage and the step's number in it.
        let stage_key = stage
            .name
            .clone()
            .unwrap_or_else(|| format!("stage-{index}"));
        self.steps.entry(node).or_insert_with(|| crate::StepInfo {
            id: format!("{stage_key}/1"),
            args: Default::default(),
        });
        for (ins, onbuild) in instructions {
            let before = node;
            let env = scope.vars();
            // `[linux/amd64->arm64 build 2/2]`: a step of a stage on one platform that sees the
            // target args of another, as BuildKit names it in a multi-platform build.
            let arrow = if self.opts.multi_platform {
                target_arrow(&platform, &env)
            } else {
                String::new()
            };
            let label = |step: usize| {
                let l = label(step, onbuild);
                if arrow.is_empty() {
                    l
                } else {
                    l.replacen(' ', &format!("{arrow} "), 1)
                }
            };
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
                        platform: (platform != Platform::host()).then(|| platform.clone()),
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
            if node != before {
                self.steps.entry(node).or_insert_with(|| crate::StepInfo {
                    id: format!("{stage_key}/{step}"),
                    args: scope.arg_names(),
                });
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
}

/// `->ARCH[/VARIANT]` (`->OS/ARCH...` across systems) when the target args in `env` describe a
/// platform other than the stage's own, else empty.
pub(super) fn target_arrow(stage: &Platform, env: &BTreeMap<String, String>) -> String {
    let target = match env
        .get("TARGETPLATFORM")
        .and_then(|p| p.parse::<Platform>().ok())
    {
        Some(p) => p,
        None => {
            let (os, arch, variant) = (
                env.get("TARGETOS"),
                env.get("TARGETARCH"),
                env.get("TARGETVARIANT"),
            );
            if os.is_none() && arch.is_none() && variant.is_none() {
                return String::new();
            }
            Platform::new(
                os.unwrap_or(&stage.os),
                arch.unwrap_or(&stage.architecture),
                variant.filter(|v| !v.is_empty()).map(String::as_str),
            )
        }
    };
    if target == *stage {
        return String::new();
    }
    let mut arch = target.architecture.clone();
    if let Some(v) = &target.variant {
        arch = format!("{arch}/{v}");
    }
    if target.os == stage.os {
        format!("->{arch}")
    } else {
        format!("->{}/{arch}", target.os)
    }
}
