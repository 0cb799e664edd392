//! `kiln`: parses docker-style flags, opens the engine on the data directory, and prints. All
//! the work is in kiln-engine.

mod args;
mod builder;
mod container;
mod env;
mod images;
mod login;
mod manifest;
mod prune;
mod remote;
mod run_opts;
mod stdin;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use kiln_engine::{BuildRequest, Engine, ImportRequest};
use kiln_oci::Reference;
use kiln_progress::{Mode, Progress};

use crate::args::{BuildArgs, Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Ctrl-C or SIGTERM drops the command's future: running containers are killed and mounts
    // and step directories removed by their guards before kiln exits.
    let result = runtime.block_on(async {
        tokio::select! {
            r = run(cli) => r.map_err(Stop::Failed),
            (name, number) = interrupted() => Err(Stop::Interrupted(name, number)),
        }
    });
    match result {
        Ok(code) => code,
        Err(Stop::Failed(e)) => {
            print_error(&e);
            ExitCode::FAILURE
        }
        // As a shell reports a command killed by a signal: 128 + its number.
        Err(Stop::Interrupted(name, number)) => {
            eprintln!("kiln: interrupted by {name}");
            ExitCode::from(128 + number)
        }
    }
}

enum Stop {
    Failed(anyhow::Error),
    Interrupted(&'static str, u8),
}

async fn interrupted() -> (&'static str, u8) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => ("SIGINT", 2),
        _ = term.recv() => ("SIGTERM", 15),
    }
}

fn print_error(e: &anyhow::Error) {
    // A remote build's failure comes rendered by the daemon, with the engine's words.
    if let Some(kiln_client::Error::Remote(text)) = e.downcast_ref::<kiln_client::Error>() {
        eprintln!("{text}");
        return;
    }
    // A failed step or a Dockerfile error is printed as the engine renders it (kilnd sends
    // the same text), even under added context.
    if let Some(err) = e.downcast_ref::<kiln_engine::Error>()
        && matches!(
            err,
            kiln_engine::Error::Solve { .. } | kiln_engine::Error::Frontend(_)
        )
    {
        eprintln!("{}", kiln_engine::render_error(err));
        return;
    }
    eprintln!("{}", kiln_engine::render_error(e.as_ref()));
}

fn open_engine(cli: &Cli) -> Result<Engine> {
    let (root, config) = env::root_and_config(cli.root.as_deref(), cli.config.as_deref())?;
    Ok(Engine::open(&root, config)?)
}

fn parse_ref(s: &str) -> Result<Reference> {
    s.parse::<Reference>().map_err(|e| anyhow::anyhow!("{e}"))
}

async fn run(cli: Cli) -> Result<ExitCode> {
    // Only buildx's commands run on a builder; docker's (images, run, push...) use the local
    // store, and do not pretend to follow `--builder` to a remote one.
    if cli.builder.is_some()
        && !matches!(
            cli.command,
            Command::Build(_) | Command::Du(_) | Command::Prune(_) | Command::Builder(_)
        )
    {
        builder::require_embedded(&cli).map_err(|e| {
            anyhow::anyhow!("--builder: this command works on the local store; {e}")
        })?;
    }
    match &cli.command {
        Command::Build(b) => build(&cli, b).await,
        Command::Images(_)
        | Command::Rmi(_)
        | Command::Save(_)
        | Command::Load(_)
        | Command::Inspect(_)
        | Command::History(_)
        | Command::Imagetools(_) => images::run(&cli).await,
        Command::Manifest(a) => manifest::run(&cli, a).await,
        Command::Run(a) => container::run(&cli, a).await,
        Command::Ps(a) => container::ps(&cli, a),
        Command::Logs(a) => container::logs(&cli, a).await,
        Command::Stop(_) | Command::Rm(_) | Command::Start(_) => container::each(&cli).await,
        Command::Exec(a) => container::exec(&cli, a).await,
        Command::ContainerMonitor(a) => container::monitor(&cli, &a.id).await,
        Command::Import(a) => {
            let engine = open_engine(&cli)?;
            let platform = a.platform.as_deref().map(str::parse).transpose()?;
            let digest = engine
                .import(ImportRequest {
                    tarball: a.tarball.clone(),
                    name: parse_ref(&a.name)?,
                    changes: a.change.clone(),
                    platform,
                    source_date_epoch: env::source_date_epoch(),
                })
                .await?;
            println!("{digest}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Tag(a) => {
            let engine = open_engine(&cli)?;
            engine.tag(&a.source, &parse_ref(&a.target)?)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Du(a) => {
            builder::require_embedded(&cli)?;
            prune::du(&open_engine(&cli)?, a)
        }
        Command::Prune(a) => {
            builder::require_embedded(&cli)?;
            prune::prune(&open_engine(&cli)?, a)
        }
        Command::Builder(a) => builder::run(&cli, a).await,
        Command::Login(a) => login::login(&cli, a).await,
        Command::Logout(a) => login::logout(a),
        Command::Push(a) => {
            let engine = open_engine(&cli)?;
            let name = parse_ref(&a.name)?;
            let progress = Progress::new(Mode::Plain, Box::new(std::io::stderr()));
            let r = engine.push(&name, &progress).await;
            progress.finish();
            println!("{}", r?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Pull(a) => {
            let platform = match a.platform.as_deref() {
                None => kiln_oci::Platform::host(),
                Some(p) => p
                    .parse()
                    .with_context(|| format!("invalid --platform `{p}`"))?,
            };
            let engine = open_engine(&cli)?;
            let name = parse_ref(&a.name)?;
            let progress = Progress::new(Mode::Plain, Box::new(std::io::stderr()));
            let r = engine.pull_platform(&name, &platform, &progress).await;
            progress.finish();
            println!("{}", r?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn build(cli: &Cli, b: &BuildArgs) -> Result<ExitCode> {
    let cache_from = b
        .cache_from
        .iter()
        .map(|s| kiln_engine::CacheImport::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    let cache_to = b
        .cache_to
        .iter()
        .map(|s| kiln_engine::CacheExport::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    let mut tags = Vec::new();
    for t in &b.tag {
        tags.push(parse_ref(t)?);
    }
    let mut build_args = BTreeMap::new();
    for a in &b.build_arg {
        match a.split_once('=') {
            Some((k, v)) => {
                build_args.insert(k.to_string(), v.to_string());
            }
            // `--build-arg NAME` takes the value from the environment, as docker does.
            None => {
                if let Ok(v) = std::env::var(a) {
                    build_args.insert(a.clone(), v);
                }
            }
        }
    }
    let outputs = kiln_engine::assemble_outputs(kiln_engine::OutputFlags {
        outputs: &b.output,
        push: b.push,
        load: b.load,
        annotations: &b.annotation,
        has_tags: !tags.is_empty(),
    })?;
    // buildx refuses to send an archive to a terminal.
    if let Some(o) = outputs
        .iter()
        .find(|o| o.dest.as_deref() == Some(std::path::Path::new("-")))
        && std::io::stdout().is_terminal()
    {
        bail!(
            "dest file is required for {} exporter. refusing to write to console",
            o.kind.name()
        );
    }
    // `a,b`: one build for each platform, exported as one index.
    let mut platforms: Vec<kiln_oci::Platform> = Vec::new();
    for p in b.platform.iter().flat_map(|p| p.split(',')).map(str::trim) {
        let parsed = p
            .parse()
            .with_context(|| format!("invalid --platform `{p}`"))?;
        if !platforms.contains(&parsed) {
            platforms.push(parsed);
        }
    }
    let platform = match platforms.as_slice() {
        [one] => Some(one.clone()),
        _ => None,
    };
    // The builder: the embedded engine runs the build here; a remote one is kilnd's, which
    // the client for kilnd will take the endpoint to.
    let remote_endpoint = match (&b.host, builder::target(cli, &platforms)?) {
        (Some(host), _) => Some(remote::host_endpoint(host, b)),
        (None, (_, kiln_builder::Target::Remote(e))) => Some(remote::builder_endpoint(e)),
        (None, (_, kiln_builder::Target::Embedded)) => None,
    };
    if platforms.len() > 1
        && !matches!(
            args::parse_call(b.call.as_deref(), b.check)?,
            args::Call::Build
        )
    {
        bail!("--call with several platforms is not supported yet");
    }
    if platforms.len() > 1 && b.explain {
        bail!("--explain with several platforms is not supported yet");
    }
    let call = args::parse_call(b.call.as_deref(), b.check)?;
    let stdin = stdin::dockerfile(&b.context, b.file.as_deref())?;
    if !matches!(call, args::Call::Build) {
        let is_url = |p: &std::path::Path| {
            let s = p.to_string_lossy().to_ascii_lowercase();
            (s.starts_with("http://") || s.starts_with("https://")) && !p.exists()
        };
        if stdin.archive.is_some() {
            bail!("`--check` and `--call` with a context archive on stdin are not supported yet");
        }
        if is_url(&b.context) || b.file.as_deref().is_some_and(is_url) {
            bail!("`--check` and `--call` with a URL context or Dockerfile are not supported yet");
        }
        // A named context can replace a stage, which BuildKit's checks would then skip; kiln's
        // checks read the Dockerfile alone.
        if !b.build_context.is_empty() {
            bail!("`--check` and `--call` with `--build-context` are not supported yet");
        }
    }
    match call {
        args::Call::Build => {}
        args::Call::Check { json } => {
            return check(b, &stdin, &build_args, platform.as_ref(), json);
        }
        args::Call::Outline { json } | args::Call::Targets { json } => {
            let what = if matches!(call, args::Call::Outline { .. }) {
                kiln_engine::Subrequest::Outline
            } else {
                kiln_engine::Subrequest::Targets
            };
            let req = check_request(b, &stdin, &build_args, platform.as_ref());
            print!("{}", kiln_engine::subrequest(&req, what, json)?);
            return Ok(ExitCode::SUCCESS);
        }
    }
    let mode = match b.progress.as_str() {
        "auto" if std::io::stderr().is_terminal() => Mode::Tty,
        "auto" | "plain" => Mode::Plain,
        "tty" => Mode::Tty,
        // buildx's `none` prints nothing at all; kiln's quiet renderer is no renderer.
        "quiet" | "none" => Mode::Quiet,
        "rawjson" => Mode::RawJson,
        other => {
            bail!("invalid --progress `{other}`: expected auto, none, plain, tty, quiet or rawjson")
        }
    };
    let mode = if b.quiet { Mode::Quiet } else { mode };
    let progress = Progress::new(mode, Box::new(std::io::stderr()));
    let mut secret_values = BTreeMap::new();
    for spec in &b.secret {
        let (id, source) = args::parse_secret(spec)?;
        let value = match source {
            args::SecretSource::File(path) => std::fs::read(&path)
                .with_context(|| format!("reading secret `{id}` from `{}`", path.display()))?,
            args::SecretSource::Env(var) => std::env::var_os(&var)
                .with_context(|| format!("secret `{id}`: environment variable `{var}` is not set"))?
                .into_encoded_bytes(),
        };
        secret_values.insert(id, value);
    }
    let no_cache_filter: Vec<String> = b
        .no_cache_filter
        .iter()
        .flat_map(|f| f.split(','))
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .map(str::to_string)
        .collect();
    if b.host.is_none() && (b.tlscacert.is_some() || b.tlscert.is_some() || b.tlskey.is_some()) {
        bail!("--tlscacert, --tlscert and --tlskey need --host (a remote kilnd)");
    }
    // Every flag is parsed before a remote build starts: bad values fail with the same words.
    let mut ssh = kiln_engine::SshAgents::new();
    for spec in &b.ssh {
        let (id, paths) = args::parse_ssh(spec)?;
        ssh.add(&id, &paths)?;
    }
    let run = run_opts::parse(b)?;
    let mut named_contexts = BTreeMap::new();
    for spec in &b.build_context {
        let (key, source) = kiln_engine::parse_build_context(spec)?;
        named_contexts.insert(key, source);
    }
    let labels = parse_labels(&b.label)?;
    if let Some(endpoint) = &remote_endpoint {
        let parsed = remote::Parsed {
            stdin: &stdin,
            build_args: &build_args,
            labels: &labels,
            secrets: secret_values,
            outputs: &outputs,
            platforms: platforms.iter().map(ToString::to_string).collect(),
            no_cache_filter,
            run: &run,
        };
        let outcome = remote::build(endpoint, b, parsed, &progress).await;
        progress.finish();
        // The session's figures are in kilnd's `--debug` log; the metadata stays buildx's.
        return finish_build(b, &outcome?.result, None);
    }
    let engine = std::sync::Arc::new(open_engine(cli)?);
    let mut secrets = kiln_engine::Secrets::new();
    for (id, value) in secret_values {
        secrets.insert(id, value);
    }
    let req = BuildRequest {
        context: stdin.context.clone(),
        dockerfile: stdin.dockerfile.clone(),
        dockerfile_text: stdin.text.clone(),
        context_archive: stdin.archive.clone(),
        labels,
        pull: b.pull,
        squash: b.squash,
        named_contexts,
        no_cache_filter,
        target: b.target.clone(),
        build_args,
        tags,
        outputs,
        no_cache: b.no_cache,
        platform,
        platforms,
        source_date_epoch: env::source_date_epoch(),
        secrets,
        ssh,
        run,
        cache_from,
        cache_to,
        offline: b.offline,
        pin: b.pin.clone(),
    };
    let result = engine.build(req, &progress).await;
    progress.finish();
    let result = result?;
    if b.explain {
        eprint!("{}", kiln_engine::format_explain(&result.explain));
    }
    // The result is exported: automatic GC runs beside what is left to do here, and the
    // process waits for it at the end (docs/config.md, "Garbage collection").
    let gc = engine.spawn_gc();
    finish_build(b, &result, Some(gc))
}

/// What `kiln build` does once the image is built, embedded or remote: `--iidfile`,
/// `--metadata-file`, `-q`'s ID.
fn finish_build(
    b: &BuildArgs,
    result: &kiln_engine::BuildResult,
    gc: Option<kiln_engine::GcTask>,
) -> Result<ExitCode> {
    if let Some(path) = &b.iidfile {
        std::fs::write(path, result.image_id.to_string())
            .with_context(|| format!("writing `{}`", path.display()))?;
    }
    if let Some(path) = &b.metadata_file {
        let names = &result.names;
        let mut meta = serde_json::json!({
            "buildx.build.ref": build_ref(),
            "containerimage.digest": result.manifest.to_string(),
            "containerimage.descriptor": {
                "mediaType": result.manifest_media_type,
                "digest": result.manifest.to_string(),
                "size": result.manifest_size,
            },
        });
        // An index (several platforms) has no config of its own, nor one platform.
        if !kiln_oci::media_type::is_index(&result.manifest_media_type) {
            meta["containerimage.config.digest"] = result.image_id.to_string().into();
            // BuildKit's descriptor also says when and for which platform the image was made.
            meta["containerimage.descriptor"]["platform"] = serde_json::to_value(&result.platform)?;
        }
        if let Some(created) = &result.created {
            meta["containerimage.descriptor"]["annotations"] =
                serde_json::json!({ "org.opencontainers.image.created": created });
        }
        if !names.is_empty() {
            meta["image.name"] = names.join(",").into();
        }
        if b.explain {
            meta["kiln.explain"] = serde_json::to_value(&result.explain)?;
        }
        std::fs::write(path, serde_json::to_vec_pretty(&meta)?)
            .with_context(|| format!("writing `{}`", path.display()))?;
    }
    // buildx prints the ID for `-q` and for `--progress quiet` alike (not for `none`).
    if b.quiet || b.progress == "quiet" {
        println!("{}", result.image_id);
    }
    if let Some(Err(e)) = gc.and_then(|gc| gc.wait()) {
        // The build succeeded; a failed GC is only worth a warning.
        eprintln!("warning: automatic GC failed: {e}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `--label K=V` (repeatable; a later one wins); `K` alone is an empty value, as buildx.
fn parse_labels(flags: &[String]) -> Result<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    for l in flags {
        let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
        if k.is_empty() {
            bail!("invalid --label `{l}`: expected KEY=VALUE");
        }
        labels.insert(k.to_string(), v.to_string());
    }
    Ok(labels)
}

/// buildx's `buildx.build.ref`, `<builder>/<node>/<build id>`: kiln has one builder, `kiln`,
/// with one node, `kiln0`, and a fresh 25-character id per build as BuildKit makes them.
fn build_ref() -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let bytes: [u8; 25] = rand::random();
    let id: String = bytes
        .iter()
        .map(|b| DIGITS[*b as usize % DIGITS.len()] as char)
        .collect();
    format!("kiln/kiln0/{id}")
}

/// `kiln build --check` (`--call=check`): the engine lints every stage without building; print
/// the report as BuildKit does and exit 1 when there are warnings.
fn check(
    b: &BuildArgs,
    stdin: &stdin::Stdin,
    build_args: &BTreeMap<String, String>,
    platform: Option<&kiln_oci::Platform>,
    json: bool,
) -> Result<ExitCode> {
    let report = kiln_engine::check(&check_request(b, stdin, build_args, platform), json)?;
    print!("{}", report.text);
    Ok(if report.warnings == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// What `--check` and `--call outline|targets` read: the Dockerfile (perhaps from stdin).
fn check_request<'a>(
    b: &'a BuildArgs,
    stdin: &'a stdin::Stdin,
    build_args: &'a BTreeMap<String, String>,
    platform: Option<&'a kiln_oci::Platform>,
) -> kiln_engine::CheckRequest<'a> {
    kiln_engine::CheckRequest {
        context: &stdin.context,
        dockerfile: stdin.dockerfile.as_deref(),
        dockerfile_text: stdin.text.as_deref(),
        build_args,
        target: b.target.as_deref(),
        platform,
    }
}
