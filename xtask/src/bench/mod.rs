//! `cargo xtask bench`: the workloads of bench/workloads run by kiln, BuildKit and Buildah in
//! turn (runs alternate between the tools, so a noisy minute hurts all of them alike), with the
//! medians, ratios and peak memory printed as a table and written as JSON.

mod buildx;
mod limits;
mod measure;
mod phases;
mod report;
mod tools;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};

use measure::Sample;
use phases::{Kind, PHASES, Phase};
use report::{PhaseResult, Report};
use tools::{BuildSpec, Output, Pull, Tool};

#[derive(clap::Args)]
pub struct Args {
    /// Phases to run, by id or workload prefix (w1, w4, w4-edit, run-step, limits...); default all.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Tools to run: kiln, buildkit (Docker 20.10's), buildkit32 (BuildKit v0.32.2 through buildx
    /// v0.36.1), buildah; default all.
    #[arg(long, value_delimiter = ',')]
    tool: Vec<String>,
    /// Measured runs per phase and tool (heavy phases take at most 3).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Unmeasured runs before the measured ones.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Working directory: data directories, contexts, logs.
    #[arg(long, default_value = "/var/tmp/kiln-bench")]
    dir: PathBuf,
    /// Where to write the results as JSON; default <dir>/results.json.
    #[arg(long)]
    json: Option<PathBuf>,
    /// The kiln binary; default target/release/kiln, built by the set-up.
    #[arg(long)]
    kiln: Option<PathBuf>,
    /// The directory of BuildKit v0.32.2's start.sh and binaries (the oracle).
    #[arg(long)]
    oracle: Option<PathBuf>,
    /// Skip scripts/setup.sh (packages, release build, registry, base images).
    #[arg(long)]
    no_setup: bool,
}

struct Bench {
    dir: PathBuf,
    registry: String,
    repo: PathBuf,
    /// A counter that makes every edit and every "new" image unique.
    serial: u64,
}

pub fn run(args: Args) -> Result<()> {
    ensure!(
        is_root(),
        "the benchmarks must run as root (overlayfs, runc, dockerd)"
    );
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("xtask lives in the repository")?
        .to_path_buf();
    let registry =
        std::env::var("KILN_DEV_REGISTRY").unwrap_or_else(|_| "127.0.0.1:5123".to_string());
    if !args.no_setup {
        setup(&repo)?;
    }
    std::fs::create_dir_all(&args.dir)?;
    let wanted = |name: &str| args.tool.is_empty() || args.tool.iter().any(|t| t == name);
    let mut tools: Vec<Box<dyn Tool>> = Vec::new();
    if wanted("kiln") {
        let bin = args
            .kiln
            .clone()
            .unwrap_or_else(|| repo.join("target/release/kiln"));
        ensure!(bin.exists(), "no kiln binary at {}", bin.display());
        tools.push(Box::new(tools::Kiln::new(
            bin,
            &args.dir.join("kiln"),
            &registry,
        )?));
    }
    if wanted("buildkit") {
        let docker = PathBuf::from("/usr/bin/docker");
        ensure!(
            docker.exists(),
            "buildkit: Debian's docker.io client is missing at /usr/bin/docker"
        );
        tools.push(Box::new(tools::BuildKit::start(
            Path::new("/usr/sbin/dockerd"),
            docker,
            &args.dir.join("docker"),
        )?));
    }
    if wanted("buildkit32") {
        let oracle = args
            .oracle
            .clone()
            .unwrap_or_else(|| repo.join("../shared/oracle"));
        tools.push(Box::new(buildx::BuildKit32::start(
            &oracle,
            &args.dir.join("buildkit32"),
            &registry,
        )?));
    }
    if wanted("buildah") {
        tools.push(Box::new(tools::Buildah::new(&args.dir.join("buildah"))?));
    }
    for t in &args.tool {
        ensure!(
            report::TOOLS.contains(&t.as_str()),
            "unknown tool `{t}`: expected one of {:?}",
            report::TOOLS
        );
    }
    let selected = |id: &str, workload: &str| {
        args.only.is_empty()
            || args
                .only
                .iter()
                .any(|o| id.starts_with(o.as_str()) || workload.starts_with(o.as_str()))
    };

    let mut bench = Bench {
        dir: args.dir.clone(),
        registry: registry.clone(),
        repo: repo.clone(),
        serial: 0,
    };
    let mut results = Vec::new();
    let mut errors = Vec::new();
    for phase in PHASES.iter().filter(|p| selected(p.id, p.workload)) {
        let runs = if phase.heavy {
            args.runs.min(3)
        } else {
            args.runs
        };
        let warmup = if phase.network { 0 } else { args.warmup };
        let runs = if phase.network { 1 } else { runs };
        eprintln!("==> {} ({} warm-up, {runs} measured)", phase.id, warmup);
        let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); tools.len()];
        let mut failed = vec![false; tools.len()];
        for i in 0..warmup + runs {
            for (t, tool) in tools.iter_mut().enumerate() {
                if failed[t] || phase.tools.is_some_and(|only| !only.contains(&tool.name())) {
                    continue;
                }
                match bench.one(phase, tool.as_mut()) {
                    Ok(s) => {
                        eprintln!("    {:<9} {:>8.3}s", tool.name(), s.secs);
                        if i >= warmup {
                            samples[t].push(s);
                        }
                    }
                    Err(e) => {
                        let msg = format!("{} {}: {e:#}", phase.id, tool.name());
                        eprintln!("    {msg}");
                        errors.push(msg);
                        failed[t] = true;
                    }
                }
            }
        }
        for (t, tool) in tools.iter().enumerate() {
            if samples[t].is_empty() {
                continue;
            }
            let secs: Vec<f64> = samples[t].iter().map(|s| s.secs).collect();
            let peak = samples[t].iter().filter_map(|s| s.max_rss_kib).max();
            results.push(PhaseResult {
                phase: phase.id.to_string(),
                tool: tool.name().to_string(),
                median: measure::median(&secs),
                samples: secs,
                peak_rss_mib: peak.map(|k| k as f64 / 1024.0),
                target: phase.target,
                ratio_target: phase.ratio_target,
                network_bound: phase.network,
            });
        }
    }
    let limits = if selected("limits", "limits") {
        eprintln!("==> limits of this machine");
        limits::measure(&bench.context("w4-big-context")?, &args.dir.join("limits")).unwrap_or_else(
            |e| {
                errors.push(format!("limits: {e:#}"));
                Vec::new()
            },
        )
    } else {
        Vec::new()
    };
    drop(tools);

    let report = Report {
        date: String::from_utf8_lossy(&Command::new("date").arg("-Iseconds").output()?.stdout)
            .trim()
            .to_string(),
        machine: report::machine(),
        results,
        limits,
        errors,
    };
    report::print_table(&report);
    let json = args.json.unwrap_or_else(|| args.dir.join("results.json"));
    std::fs::write(&json, serde_json::to_vec_pretty(&report)?)?;
    eprintln!("results written to {}", json.display());
    if !report.errors.is_empty() {
        bail!("{} phase(s) failed; see above", report.errors.len());
    }
    Ok(())
}

impl Bench {
    /// The workload's context, generated by its gen.sh on first use.
    fn context(&self, workload: &str) -> Result<PathBuf> {
        let dir = self.dir.join("contexts").join(workload);
        if !dir.join(".complete").exists() {
            if dir.exists() {
                std::fs::remove_dir_all(&dir)?;
            }
            let gen_script = self.workload_dir(workload).join("gen.sh");
            let status = Command::new("bash").arg(&gen_script).arg(&dir).status()?;
            ensure!(status.success(), "{} failed", gen_script.display());
            std::fs::write(dir.join(".complete"), "")?;
            // The marker must not be part of what is built.
            std::fs::write(dir.join(".dockerignore"), ".complete\n.dockerignore\n")?;
        }
        Ok(dir)
    }

    /// The workload's context as a tar, with its Dockerfile and a `Dockerfile.one` that copies
    /// only `app.txt`, made on first use.
    fn stdin_tar(&self, workload: &str) -> Result<PathBuf> {
        let context = self.context(workload)?;
        let dir = self.dir.join("stdin").join(workload);
        let tar = dir.join("context.tar");
        if !tar.exists() {
            std::fs::create_dir_all(&dir)?;
            let dockerfile =
                std::fs::read_to_string(self.workload_dir(workload).join("Dockerfile"))?;
            let one: Vec<&str> = dockerfile
                .lines()
                .filter(|l| !l.starts_with("COPY ") && !l.starts_with("RUN "))
                .collect();
            std::fs::write(dir.join("Dockerfile"), &dockerfile)?;
            std::fs::write(
                dir.join("Dockerfile.one"),
                one.join("\n") + "\nCOPY app.txt /app.txt\n",
            )?;
            let partial = dir.join("context.tar.partial");
            let status = Command::new("tar")
                .arg("-cf")
                .arg(&partial)
                .arg("-C")
                .arg(&context)
                .arg(".")
                .arg("-C")
                .arg(&dir)
                .args(["Dockerfile", "Dockerfile.one"])
                .status()?;
            ensure!(status.success(), "tar of {} failed", context.display());
            std::fs::rename(&partial, &tar)?;
        }
        Ok(tar)
    }

    fn workload_dir(&self, workload: &str) -> PathBuf {
        self.repo.join("bench/workloads").join(workload)
    }

    fn edit(&mut self, workload: &str, file: &str) -> Result<()> {
        self.serial += 1;
        let path = self.context(workload)?.join(file);
        let text = if file.ends_with(".py") {
            format!("print(\"edit {}\")\n", self.serial)
        } else {
            format!("edit {}\n", self.serial)
        };
        Ok(std::fs::write(path, text)?)
    }

    /// One run of `phase` by `tool`: its preparation, then the measured part.
    fn one(&mut self, phase: &Phase, tool: &mut dyn Tool) -> Result<Sample> {
        let bases: Vec<Pull> = phase
            .bases
            .iter()
            .map(|b| (format!("{}/{}", self.registry, b.name), b.platforms))
            .collect();
        let context = self.context(phase.workload)?;
        let dockerfile = self.workload_dir(phase.workload).join("Dockerfile");
        let build_args = vec![("REGISTRY".to_string(), self.registry.clone())];
        let tag = format!("bench/{}-{}:latest", phase.workload, tool.name());
        let export_dest = self.dir.join(format!("export-{}.tar", tool.name()));
        let mut spec = BuildSpec::new(&dockerfile, &context, &tag, &build_args);
        spec.platforms = phase.platforms;
        match phase.kind {
            Kind::Cold => {
                tool.reset(&bases)?;
                tool.build(&spec)
            }
            Kind::Unchanged | Kind::Edit(_) | Kind::Export => {
                tool.build(&spec)?;
                if let Kind::Edit(file) = phase.kind {
                    self.edit(phase.workload, file)?;
                }
                if let Kind::Export = phase.kind {
                    let s = tool.export(&spec, &export_dest);
                    let _ = std::fs::remove_file(&export_dest);
                    return s;
                }
                tool.build(&spec)
            }
            Kind::BuildExport => {
                tool.reset(&bases)?;
                let b = tool.build(&spec)?;
                let e = tool.export(&spec, &export_dest);
                let _ = std::fs::remove_file(&export_dest);
                Ok(b.plus(e?))
            }
            Kind::PushNew | Kind::PushUnchanged => {
                let nonce = if let Kind::PushNew = phase.kind {
                    self.serial += 1;
                    format!("{}-{}", std::process::id(), self.serial)
                } else {
                    "unchanged".to_string()
                };
                let mut args = build_args.clone();
                args.push(("NONCE".to_string(), nonce.clone()));
                let tag = format!("{}/bench/w7-{}:{nonce}", self.registry, tool.name());
                let spec = BuildSpec {
                    tag: &tag,
                    build_args: &args,
                    ..spec
                };
                tool.build(&spec)?;
                if let Kind::PushUnchanged = phase.kind {
                    tool.push(&tag)?;
                }
                tool.push(&tag)
            }
            Kind::StdinTar(dockerfile) => {
                let tar = self.stdin_tar(phase.workload)?;
                tool.reset(&bases)?;
                tool.build(&BuildSpec {
                    dockerfile: Path::new(dockerfile),
                    stdin: Some(&tar),
                    ..spec
                })
            }
            Kind::RunStep => {
                let without = self.dir.join("run-overhead.base.Dockerfile");
                let text = std::fs::read_to_string(&dockerfile)?;
                let kept: Vec<&str> = text.lines().filter(|l| !l.starts_with("RUN ")).collect();
                std::fs::write(&without, kept.join("\n") + "\n")?;
                let mut timed = |df: &Path| -> Result<Sample> {
                    tool.reset(&bases)?;
                    tool.build(&BuildSpec {
                        dockerfile: df,
                        ..spec
                    })
                };
                let with = timed(&dockerfile)?;
                let base_run = timed(&without)?;
                Ok(Sample {
                    secs: (with.secs - base_run.secs) / 10.0,
                    max_rss_kib: with.max_rss_kib,
                })
            }
            Kind::CiCache { edit, push } => {
                let name = format!("bench/ci-{}-{}", phase.workload, tool.name());
                let image = format!("{}/{name}:latest", self.registry);
                let cache = format!("{}/{name}-cache:latest", self.registry);
                let to = format!("type=registry,ref={cache},mode=max");
                let from = format!("type=registry,ref={cache}");
                // Untimed: the CI run before this one, which wrote the cache (and, for a push,
                // the image), then a fresh runner.
                tool.reset_empty()?;
                tool.build(&BuildSpec {
                    tag: &image,
                    cache_to: Some(&to),
                    output: if push { Output::Push } else { Output::Store },
                    ..spec
                })?;
                tool.reset_empty()?;
                if let Some(file) = edit {
                    self.edit(phase.workload, file)?;
                }
                let s = tool.build(&BuildSpec {
                    tag: &image,
                    cache_from: Some(&from),
                    output: if push {
                        Output::Push
                    } else {
                        Output::Oci(&export_dest)
                    },
                    ..spec
                });
                let _ = std::fs::remove_file(&export_dest);
                s
            }
        }
    }
}

fn setup(repo: &Path) -> Result<()> {
    eprintln!("==> set-up: scripts/setup.sh (release build, registry, base images)");
    let status = Command::new("bash")
        .arg(repo.join("scripts/setup.sh"))
        .env("KILN_PROFILE", "release")
        .env_remove("CARGO_TARGET_DIR")
        .status()?;
    ensure!(status.success(), "scripts/setup.sh failed");
    // The peers, which kiln itself never needs.
    let missing: Vec<&str> = ["buildah", "docker.io"]
        .into_iter()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .is_ok_and(|o| o.stdout.starts_with(b"install ok installed"))
        })
        .collect();
    if !missing.is_empty() {
        eprintln!("==> installing {}", missing.join(" "));
        let status = Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()?;
        ensure!(status.success(), "apt-get install {missing:?} failed");
    }
    Ok(())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
