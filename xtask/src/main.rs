//! Project tasks that are not part of kiln itself. `cargo xtask bench` (alias in .cargo/config.toml)
//! measures kiln beside BuildKit (through a private dockerd) and Buildah; see docs/performance.md.
//! `cargo xtask oracle record|check` records the differential corpus with BuildKit v0.32.2 and
//! compares kiln with it; see docs/oracle.md.

mod bench;
mod oracle;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "kiln's project tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the benchmark suite: kiln beside BuildKit and Buildah, same machine, same workloads.
    Bench(bench::Args),
    /// The differential corpus (tests/oracle): record cases with BuildKit, check kiln on them.
    Oracle(oracle::Args),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Bench(args) => bench::run(args),
        Command::Oracle(args) => oracle::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
