//! `kilnd`: kiln-engine served over gRPC. A thin shell: it parses flags and the config, opens
//! one engine on the data root and listens; every build is kiln-engine's (docs/kilnd.md).

mod listen;
mod mirror;
mod pack;
mod service;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, Result, bail};
use clap::Parser;

/// kiln's build daemon: serves `kiln build --host ADDR` over gRPC.
#[derive(Debug, Parser)]
#[command(name = "kilnd", version)]
struct Args {
    /// Where to listen: `unix:///path/to.sock` or `tcp://HOST:PORT` (repeatable). Default: the
    /// config's `[grpc] address`, else unix:///run/kilnd/kilnd.sock.
    #[arg(long = "addr", value_name = "ADDRESS")]
    addr: Vec<String>,
    /// The data root (the store, the cache, the sessions' context mirrors). Default:
    /// KILN_ROOT, else /var/lib/kiln.
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// The config file (kiln's TOML, with `[grpc]` and `[grpc.tls]`). Default: KILN_CONFIG
    /// (must exist), else <root>/kiln.toml (optional).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Serve a tcp:// address without TLS. Anyone reaching the port can then build as root.
    #[arg(long)]
    insecure: bool,
    /// The daemon's TLS certificate (PEM); overrides `[grpc.tls] cert`.
    #[arg(long, value_name = "FILE")]
    tlscert: Option<PathBuf>,
    /// The daemon's TLS key (PEM); overrides `[grpc.tls] key`.
    #[arg(long, value_name = "FILE")]
    tlskey: Option<PathBuf>,
    /// The CA that clients' certificates must chain to (PEM); overrides `[grpc.tls] ca`.
    #[arg(long, value_name = "FILE")]
    tlscacert: Option<PathBuf>,
    /// Log on stderr where kilnd listens, each session's sync (time, entries, files and bytes
    /// sent) and builds canceled by a lost client.
    #[arg(long)]
    debug: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kilnd: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}", kiln_engine::render_error(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<()> {
    let root = args
        .root
        .clone()
        .or_else(|| std::env::var_os("KILN_ROOT").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/var/lib/kiln"));
    let (config_path, required) = match args
        .config
        .clone()
        .or_else(|| std::env::var_os("KILN_CONFIG").map(PathBuf::from))
    {
        Some(p) => (p, true),
        None => (root.join("kiln.toml"), false),
    };
    let config = kiln_engine::Config::load(&config_path, required)?;
    // Sockets handed over by systemd (LISTEN_FDS) stand in for the default address.
    let inherited = listen::inherited_unix_listeners()?;
    let mut addresses = args.addr.clone();
    if addresses.is_empty() {
        addresses = config.grpc.address.clone();
    }
    if addresses.is_empty() && inherited.is_empty() {
        addresses.push("unix:///run/kilnd/kilnd.sock".into());
    }
    let tls = listen::tls_files(&args, config.grpc.tls.as_ref())?;
    let mut listeners = Vec::new();
    for a in &addresses {
        listeners.push(listen::Listener::parse(a, tls.is_some(), args.insecure)?);
    }
    let engine = Arc::new(
        kiln_engine::Engine::open(&root, config)
            .with_context(|| format!("opening the data root `{}`", root.display()))?,
    );
    let service = service::BuilderService::new(engine, root.join("sessions"), args.debug);
    let mut tasks = tokio::task::JoinSet::new();
    for l in inherited {
        tasks.spawn(listen::serve_unix_listener(l, service.clone()));
    }
    for l in listeners {
        let bound = l.bind(tls.as_ref()).await?;
        if args.debug {
            eprintln!("kilnd: listening on {}", l.address);
        }
        tasks.spawn(bound.serve(service.clone()));
    }
    if tasks.is_empty() {
        bail!("no address to listen on");
    }
    tokio::select! {
        Some(r) = tasks.join_next() => r.context("a listener stopped")??,
        _ = shutdown() => {}
    }
    Ok(())
}

async fn shutdown() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
}
