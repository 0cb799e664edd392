//! RUN: heredoc scripts and the `--mount`s of its exec op.

use super::*;

/// What a RUN's `--mount`s add to its exec op.
#[derive(Default)]
pub(super) struct RunMounts {
    pub(super) binds: Vec<ExecMount>,
    pub(super) caches: Vec<CacheMount>,
    pub(super) tmpfs: Vec<TmpfsMount>,
    pub(super) secrets: Vec<SecretMount>,
    pub(super) ssh: Vec<SshMount>,
    pub(super) inputs: Vec<NodeId>,
}

impl Converter<'_> {
    /// The command a RUN with heredocs runs, as BuildKit rewrites it: a lone heredoc starting
    /// with `#!` is written to a file under [`HEREDOC_PIPES`] and run; any other lone heredoc
    /// becomes the shell script itself; otherwise the heredocs are put back after the command
    /// line for the shell to read. Bodies are never expanded here: the shell does it.
    pub(super) fn run_heredoc(
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
}

impl Converter<'_> {
    /// The LLB form of a RUN's `--mount`s; bind sources become inputs from `first_input` on.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn run_mounts(
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
}

/// Where a RUN heredoc with a shebang is mounted (read-only), as in BuildKit.
pub(super) const HEREDOC_PIPES: &str = "/dev/pipes";

/// The command text of a shell-form RUN, as the parser keeps it.
pub(super) fn command_text(ins: &Instruction) -> String {
    match &ins.kind {
        InstructionKind::Run {
            command: Command::Shell(s),
            ..
        } => s.clone(),
        _ => String::new(),
    }
}

/// Whether a whole command line is one heredoc introducer (`<<EOF`, `<<-'EOF'`).
pub(super) fn is_single_heredoc(line: &str) -> bool {
    matches!(
        kiln_dockerfile::parser::heredoc::parse_heredoc(line),
        Ok(Some(_))
    )
}

/// The first line of a heredoc, with `...` when there are more (BuildKit's progress name).
pub(super) fn summarize_heredoc(doc: &str) -> String {
    let doc = doc.trim();
    let mut lines = doc.lines();
    let first = lines.next().unwrap_or_default().to_string();
    if lines.next().is_some() {
        format!("{first}...")
    } else {
        first
    }
}
