//! `cargo xtask oracle record|check`: the differential corpus (tests/oracle, docs/oracle.md).
//! `record` builds cases with BuildKit (the oracle, ../shared/oracle) and writes what it built
//! as canonical JSON beside each case; `check` builds them with kiln and prints how kiln
//! differs. `cargo test` compares without BuildKit (kiln-cli's `oracle` test).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use kiln_test::oracle::{self, Bases, Case, Outcome};

const DEFAULT_ADDR: &str = "unix:///var/tmp/kiln-oracle/run/buildkitd.sock";
const DEFAULT_BUILDCTL: &str = "/var/tmp/kiln-oracle/bin/buildctl";
const START_HINT: &str = "start the oracle with `bash ../shared/oracle/start.sh --registry 127.0.0.1:5123` \
     (see ../shared/oracle/README.md)";

#[derive(Parser)]
pub struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build cases with BuildKit and write their recordings (`<case>.json`).
    Record(RecordArgs),
    /// Build cases with kiln and print where kiln differs from the recordings.
    Check(CheckArgs),
}

#[derive(Parser)]
struct Common {
    /// Cases by name (file stem in tests/oracle/cases); default all.
    cases: Vec<String>,
    /// The registry serving the corpus' bases (docker.io's mirror for both tools).
    #[arg(long, env = "KILN_TEST_REGISTRY", default_value = "127.0.0.1:5123")]
    registry: String,
}

#[derive(Parser)]
struct RecordArgs {
    #[command(flatten)]
    common: Common,
    /// buildkitd's address.
    #[arg(long, env = "BUILDKIT_HOST", default_value = DEFAULT_ADDR)]
    addr: String,
    /// The buildctl binary.
    #[arg(long, default_value = DEFAULT_BUILDCTL)]
    buildctl: PathBuf,
}

#[derive(Parser)]
struct CheckArgs {
    #[command(flatten)]
    common: Common,
    /// The kiln binary; default target/debug/kiln.
    #[arg(long)]
    kiln: Option<PathBuf>,
    /// kiln's data directory, kept between runs; default a temporary one.
    #[arg(long)]
    root: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    match args.command {
        Cmd::Record(a) => record(a),
        Cmd::Check(a) => check(a),
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is in the repository")
        .to_path_buf()
}

fn bases(registry: &str) -> Result<Bases> {
    Bases::from_registry(registry).context(
        "the corpus' base images are missing: run scripts/setup.sh (it seeds them into the registry)",
    )
}

fn record(args: RecordArgs) -> Result<()> {
    if !args.buildctl.is_file() {
        bail!("no buildctl at `{}`: {START_HINT}", args.buildctl.display());
    }
    let probe = Command::new(&args.buildctl)
        .args(["--addr", &args.addr, "debug", "workers"])
        .output()
        .with_context(|| format!("running `{}`", args.buildctl.display()))?;
    if !probe.status.success() {
        bail!(
            "buildkitd does not answer at {}: {}\n{START_HINT}",
            args.addr,
            String::from_utf8_lossy(&probe.stderr).trim()
        );
    }
    let bases = bases(&args.common.registry)?;
    let cases = oracle::load_cases(&oracle::corpus_dir(), &args.common.cases)?;
    let mut wrong = Vec::new();
    for case in &cases {
        match record_case(&args, &bases, case) {
            Ok(summary) => eprintln!("{}: {summary}", case.name),
            Err(e) => {
                eprintln!("{}: FAILED: {e:#}", case.name);
                wrong.push(case.name.clone());
            }
        }
    }
    if !wrong.is_empty() {
        bail!("{} case(s) not recorded: {}", wrong.len(), wrong.join(", "));
    }
    eprintln!("recorded {} case(s)", cases.len());
    Ok(())
}

fn record_case(args: &RecordArgs, bases: &Bases, case: &Case) -> Result<String> {
    let dir = tempfile::Builder::new().prefix("kiln-oracle-").tempdir()?;
    let ws = case.materialize(dir.path())?;
    let out = dir.path().join("image.tar");
    // Every case's context is the local source `context`, whose synced copy BuildKit keeps
    // and updates between builds without always resetting directory times: forget it first.
    let pruned = Command::new(&args.buildctl)
        .arg("--addr")
        .arg(&args.addr)
        .args(["prune", "--all"])
        .output()
        .context("running buildctl prune")?;
    if !pruned.status.success() {
        bail!(
            "buildctl prune --all failed: {}",
            String::from_utf8_lossy(&pruned.stderr)
        );
    }
    let mut cmd = Command::new(&args.buildctl);
    cmd.arg("--addr")
        .arg(&args.addr)
        .args(case.buildctl_args(&ws, &out));
    match case.source_date_epoch() {
        Some(e) => cmd.env("SOURCE_DATE_EPOCH", e),
        None => cmd.env_remove("SOURCE_DATE_EPOCH"),
    };
    let output = cmd.output().context("running buildctl")?;
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let (value, summary) = if output.status.success() {
        if let Some(want) = &case.spec.expect_error {
            bail!("BuildKit built it, but the case expects the error {want:?}");
        }
        let value = oracle::canonicalize(&out, bases)?;
        let layers = value["layers"].as_array().map_or(0, Vec::len);
        (value, format!("image, {layers} layer(s)"))
    } else {
        let value = oracle::error_record(&log);
        if let Some(want) = &case.spec.expect_error
            && !log.contains(want.as_str())
        {
            bail!(
                "BuildKit failed without {want:?}:\n{}",
                oracle::error_lines(&log)
            );
        }
        let summary = format!(
            "error: {}",
            value["error"].as_str().unwrap_or("").replace('\n', " | ")
        );
        if case.spec.expect_error.is_none() {
            eprintln!(
                "{}: warning: BuildKit failed and the case has no expect-error",
                case.name
            );
        }
        (value, summary)
    };
    std::fs::write(case.recording_path(), oracle::to_canonical_string(&value))?;
    Ok(summary)
}

fn check(args: CheckArgs) -> Result<()> {
    let kiln = args
        .kiln
        .clone()
        .unwrap_or_else(|| repo_root().join("target/debug/kiln"));
    if !kiln.is_file() {
        bail!(
            "no kiln at `{}`: `cargo build -p kiln-cli` or --kiln PATH",
            kiln.display()
        );
    }
    let bases = bases(&args.common.registry)?;
    let cases = oracle::load_cases(&oracle::corpus_dir(), &args.common.cases)?;
    let work = tempfile::Builder::new().prefix("kiln-oracle-").tempdir()?;
    let root = args
        .root
        .clone()
        .unwrap_or_else(|| work.path().join("root"));
    let config = work.path().join("kiln.toml");
    let registry = &args.common.registry;
    std::fs::write(
        &config,
        format!(
            "[registry.\"docker.io\"]\nmirrors = [\"{registry}\"]\n\n[registry.\"{registry}\"]\nhttp = true\n"
        ),
    )?;
    let (mut matching, mut xfails, mut failing, mut unrecorded) = (0, 0, Vec::new(), 0);
    for case in &cases {
        let Some(recording) = case.recording()? else {
            eprintln!(
                "{}: no recording (cargo xtask oracle record {})",
                case.name, case.name
            );
            unrecorded += 1;
            continue;
        };
        let dir = tempfile::Builder::new()
            .prefix("case-")
            .tempdir_in(work.path())?;
        let ws = case.materialize(dir.path())?;
        let out = dir.path().join("image.tar");
        let mut cmd = Command::new(&kiln);
        cmd.arg("--root")
            .arg(&root)
            .arg("--config")
            .arg(&config)
            .args(["build", "--progress", "plain"])
            .args(case.kiln_flags(&ws, &out))
            .arg(&ws.context)
            .env_remove("KILN_ROOT")
            .env_remove("KILN_CONFIG");
        match case.source_date_epoch() {
            Some(e) => cmd.env("SOURCE_DATE_EPOCH", e),
            None => cmd.env_remove("SOURCE_DATE_EPOCH"),
        };
        let output = cmd.output().context("running kiln")?;
        let outcome = if output.status.success() {
            match oracle::canonicalize(&out, &bases) {
                Ok(v) => Outcome::Image(v),
                Err(e) => Outcome::Failed(format!("error: reading kiln's image: {e:#}")),
            }
        } else {
            Outcome::Failed(String::from_utf8_lossy(&output.stderr).into_owned())
        };
        let judgement = oracle::judge(case, &recording, &outcome);
        match (&judgement.xfail, judgement.matches()) {
            (None, true) => {
                matching += 1;
                eprintln!("{}: matches", case.name);
            }
            (Some(reason), false) => {
                xfails += 1;
                eprintln!("{}: differs, as expected (xfail: {reason})", case.name);
            }
            (None, false) => {
                failing.push(case.name.clone());
                eprintln!("{}: DIFFERS", case.name);
            }
            (Some(_), true) => {
                failing.push(case.name.clone());
                eprintln!("{}: MATCHES but is marked xfail", case.name);
            }
        }
        if !judgement.matches() {
            for line in &judgement.differences {
                eprintln!("    {line}");
            }
        }
        if let Some(why) = judgement.failure()
            && judgement.xfail.is_some()
        {
            eprintln!("{why}");
        }
    }
    eprintln!(
        "{matching} match, {xfails} differ as expected (xfail), {} fail, {unrecorded} unrecorded",
        failing.len()
    );
    if !failing.is_empty() {
        bail!("failing: {}", failing.join(", "));
    }
    Ok(())
}
