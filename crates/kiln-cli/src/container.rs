//! The container commands: `run`, `ps`, `logs`, `stop`, `rm`, `exec`, `start`, and the hidden
//! monitor that `run -d` and `start` re-execute kiln as.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use kiln_engine::{
    Attach, Containers, Engine, ExecRequest, LogOptions, LogStream, RunRequest, format_ps_table,
};

use crate::args::{Cli, Command, ExecArgs, LogsArgs, PsArgs, RunArgs};
use crate::{env, open_engine};

fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(code.clamp(0, 255) as u8)
}

pub async fn run(cli: &Cli, a: &RunArgs) -> Result<ExitCode> {
    if a.detach && (a.interactive || a.tty) {
        bail!("run -d with -i or -t is not supported yet (kiln has no attach)");
    }
    let engine = open_engine(cli)?;
    let req = RunRequest {
        image: a.image.clone(),
        command: a.command.clone(),
        entrypoint: a.entrypoint.clone(),
        env: a.env.clone(),
        workdir: a.workdir.clone(),
        user: a.user.clone(),
        name: a.name.clone(),
        auto_remove: a.rm,
        publish: a.publish.clone(),
        volumes: a.volume.clone(),
        interactive: a.interactive,
        tty: a.tty,
        platform: a
            .platform
            .as_deref()
            .map(|p| {
                p.parse()
                    .with_context(|| format!("invalid --platform `{p}`"))
            })
            .transpose()?,
    };
    if !a.detach {
        return Ok(exit_code(engine.run(req).await?));
    }
    let config = engine.create_container(&req).await?;
    let containers = engine.containers()?;
    if let Err(e) = start_monitor(cli, &engine, &containers, &config.id) {
        // Docker keeps a container that failed to start, unless --rm.
        if a.rm {
            let _ = containers.remove(&config.id, true).await;
        }
        return Err(e);
    }
    println!("{}", config.id);
    Ok(ExitCode::SUCCESS)
}

/// Re-executes kiln as the container's monitor in its own session, so it outlives this command
/// and the terminal, and waits for its word that the container started.
fn start_monitor(cli: &Cli, engine: &Engine, containers: &Containers, id: &str) -> Result<()> {
    let exe = std::env::current_exe().context("finding the kiln executable")?;
    let stderr = std::fs::File::create(containers.container_dir(id).join("monitor.log"))
        .context("creating the monitor's log")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("--root").arg(engine.root());
    if let Some(config) = &cli.config {
        cmd.arg("--config").arg(config);
    }
    cmd.arg("container-monitor")
        .arg(id)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr);
    // SAFETY: setsid is async-signal-safe and touches no memory of this process.
    unsafe {
        cmd.pre_exec(|| rustix::process::setsid().map(drop).map_err(Into::into));
    }
    let mut child = cmd.spawn().context("starting the container monitor")?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        BufReader::new(out)
            .read_line(&mut line)
            .context("waiting for the container to start")?;
    }
    match line.trim_end().strip_prefix("error: ") {
        _ if line.trim_end() == "ok" => Ok(()),
        Some(message) => bail!("container `{}` failed to start: {message}", &id[..12]),
        None => {
            // The monitor died without a word; its stderr says why.
            let _ = child.wait();
            let log = std::fs::read_to_string(containers.container_dir(id).join("monitor.log"))
                .unwrap_or_default();
            bail!(
                "the monitor of container `{}` exited before starting it: {}",
                &id[..12],
                log.trim()
            )
        }
    }
}

/// The hidden `container-monitor ID`: runs the container to its end, reporting the start on
/// stdout (`ok` or `error: ...`) for the `run -d` that spawned it.
pub async fn monitor(cli: &Cli, id: &str) -> Result<ExitCode> {
    let root = env::data_root(cli.root.as_deref());
    let containers = Containers::open(&root)?;
    let ready: kiln_engine::Ready = Box::new(|result| {
        let mut out = std::io::stdout();
        let _ = match result {
            Ok(()) => writeln!(out, "ok"),
            Err(e) => writeln!(out, "error: {}", e.replace('\n', " / ")),
        };
        let _ = out.flush();
    });
    let code = containers
        .monitor(id, Attach::Detached, Some(ready))
        .await?;
    Ok(exit_code(code))
}

pub fn ps(cli: &Cli, a: &PsArgs) -> Result<ExitCode> {
    let engine = open_engine(cli)?;
    let list = engine.containers()?.list(a.all)?;
    if a.quiet {
        for c in &list {
            println!("{}", c.config.short_id());
        }
    } else {
        print!("{}", format_ps_table(&list, chrono::Utc::now()));
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn logs(cli: &Cli, a: &LogsArgs) -> Result<ExitCode> {
    let engine = open_engine(cli)?;
    let tail = match a.tail.as_str() {
        "all" => None,
        n => Some(
            n.parse::<usize>()
                .with_context(|| format!("invalid --tail `{n}`: expected a number or `all`"))?,
        ),
    };
    let opts = LogOptions {
        follow: a.follow,
        tail,
        timestamps: a.timestamps,
    };
    let mut out = |stream: LogStream, bytes: &[u8]| {
        let _ = match stream {
            LogStream::Stdout => std::io::stdout().write_all(bytes),
            LogStream::Stderr => std::io::stderr().write_all(bytes),
        };
    };
    engine
        .containers()?
        .logs(&a.container, &opts, &mut out)
        .await?;
    Ok(ExitCode::SUCCESS)
}

/// `stop`, `rm` and `start` act on each container named and print its name as given, as docker
/// does; a failure is reported and the others still go ahead.
pub async fn each(cli: &Cli) -> Result<ExitCode> {
    let engine = open_engine(cli)?;
    let containers = engine.containers()?;
    let (names, what) = match &cli.command {
        Command::Stop(a) => (&a.containers, "stop"),
        Command::Rm(a) => (&a.containers, "remove"),
        Command::Start(a) => (&a.containers, "start"),
        _ => bail!("not a container command"),
    };
    let mut failed = false;
    for name in names {
        let result = match &cli.command {
            Command::Stop(a) => containers
                .stop(name, Duration::from_secs(a.time))
                .await
                .map_err(anyhow::Error::from),
            Command::Rm(a) => containers
                .remove(name, a.force)
                .await
                .map_err(anyhow::Error::from),
            _ => start(cli, &engine, &containers, name),
        };
        match result {
            Ok(()) => println!("{name}"),
            Err(e) => {
                failed = true;
                eprintln!("error: failed to {what} container `{name}`: {e:#}");
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn start(cli: &Cli, engine: &Engine, containers: &Containers, name: &str) -> Result<()> {
    let id = containers.lookup(name)?;
    if containers.is_monitored(&id) {
        return Ok(());
    }
    start_monitor(cli, engine, containers, &id)
}

pub async fn exec(cli: &Cli, a: &ExecArgs) -> Result<ExitCode> {
    let engine = open_engine(cli)?;
    let code = engine
        .exec(ExecRequest {
            container: a.container.clone(),
            command: a.command.clone(),
            env: a.env.clone(),
            workdir: a.workdir.clone(),
            user: a.user.clone(),
            interactive: a.interactive,
            tty: a.tty,
        })
        .await?;
    Ok(exit_code(code))
}
