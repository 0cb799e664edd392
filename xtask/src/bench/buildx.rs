//! BuildKit v0.32.2 driven by buildx v0.36.1 (the oracle in ../shared/oracle): the current
//! Docker Build, as a peer. The bench starts its own buildkitd with the oracle's start.sh in a
//! private directory, so the oracle that records the corpus is never disturbed, and "empty" means
//! a buildkitd restarted on an empty root, as kiln's empty data root.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};

use super::measure::{self, Sample};
use super::tools::{BuildSpec, Output, Pull, Tool};

/// What a later `push` rebuilds: buildx pushes a build's result, not a stored image.
struct Built {
    dockerfile: PathBuf,
    context: PathBuf,
    build_args: Vec<(String, String)>,
    platforms: Option<String>,
}

pub struct BuildKit32 {
    start_sh: PathBuf,
    dir: PathBuf,
    registry: String,
    log: PathBuf,
    built: HashMap<String, Built>,
}

impl BuildKit32 {
    /// Starts buildkitd from `oracle` (the directory holding start.sh and the binaries) with its
    /// state in `dir` and `registry` as docker.io's mirror.
    pub fn start(oracle: &Path, dir: &Path, registry: &str) -> Result<Self> {
        let start_sh = oracle.join("start.sh");
        ensure!(
            start_sh.exists(),
            "buildkit32: no {} (BuildKit v0.32.2 and buildx v0.36.1)",
            start_sh.display()
        );
        std::fs::create_dir_all(dir)?;
        let b = BuildKit32 {
            start_sh,
            dir: dir.to_path_buf(),
            registry: registry.to_string(),
            log: dir.join("bench.log"),
            built: HashMap::new(),
        };
        b.daemon(&[])?;
        Ok(b)
    }

    /// start.sh with `args` (none: start or reuse; `stop`).
    fn daemon(&self, args: &[&str]) -> Result<()> {
        let mut c = Command::new("bash");
        c.arg(&self.start_sh)
            .args(args)
            .arg("--dir")
            .arg(&self.dir)
            .arg("--registry")
            .arg(&self.registry);
        measure::quiet(&mut c, &self.log)
    }

    fn pid(&self) -> Result<u32> {
        let p = self.dir.join("run/buildkitd.pid");
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        Ok(text.trim().parse()?)
    }

    fn buildx(&self) -> Command {
        let mut c = Command::new(self.dir.join("bin/buildx"));
        c.env("BUILDX_CONFIG", self.dir.join("buildx"))
            .args(["--builder", "oracle"]);
        c
    }

    fn build_cmd(&self, spec: &BuildSpec) -> Command {
        let mut c = self.buildx();
        c.args(["build", "--progress", "plain", "--network", "host", "-f"])
            .arg(spec.dockerfile)
            .arg("-o");
        match spec.output {
            // Without an output buildx only warns; kiln and Docker keep the image, so this does.
            Output::Store => c.arg(format!("type=image,name={}", spec.tag)),
            Output::Oci(dest) => c.arg(format!("type=oci,dest={}", dest.display())),
            Output::Push => c.arg(format!("type=image,name={},push=true", spec.tag)),
        };
        spec.finish(&mut c);
        c
    }

    /// A client command measured with the daemon's peak memory, where the build runs.
    fn measured(&self, mut c: Command, stdin: Option<&Path>) -> Result<Sample> {
        let pid = self.pid()?;
        measure::reset_peak_rss(pid)?;
        let mut s = measure::run_in(&mut c, &self.log, stdin)?;
        s.max_rss_kib = Some(measure::peak_rss(pid)?);
        Ok(s)
    }
}

impl Tool for BuildKit32 {
    fn name(&self) -> &'static str {
        "buildkit32"
    }

    fn reset_empty(&mut self) -> Result<()> {
        // `prune --all` keeps images and their blobs; a restart on an empty root keeps nothing.
        self.daemon(&["stop"])?;
        let root = self.dir.join("root");
        if root.exists() {
            std::fs::remove_dir_all(&root)
                .with_context(|| format!("removing {}", root.display()))?;
        }
        self.daemon(&[])
    }

    fn reset(&mut self, bases: &[Pull]) -> Result<()> {
        self.reset_empty()?;
        // BuildKit has no pull. kiln's and docker's pulls unpack the layers too, so the base is
        // made present by a build that runs a step on it (its `FROM` record then holds the
        // unpacked snapshot the timed build reuses), kept as an image. Every base here has `true`.
        let dir = self.dir.join("prepull");
        std::fs::create_dir_all(&dir)?;
        let dockerfile = dir.join("Dockerfile");
        for (i, (base, platforms)) in bases.iter().enumerate() {
            std::fs::write(&dockerfile, format!("FROM {base}\nRUN true\n"))?;
            let tag = format!("bench/prepull-{i}:latest");
            let mut spec = BuildSpec::new(&dockerfile, &dir, &tag, &[]);
            spec.platforms = *platforms;
            measure::quiet(&mut self.build_cmd(&spec), &self.log)?;
        }
        Ok(())
    }

    fn build(&mut self, spec: &BuildSpec) -> Result<Sample> {
        self.built.insert(
            spec.tag.to_string(),
            Built {
                dockerfile: spec.dockerfile.to_path_buf(),
                context: spec.context.to_path_buf(),
                build_args: spec.build_args.to_vec(),
                platforms: spec.platforms.map(str::to_string),
            },
        );
        let c = self.build_cmd(spec);
        self.measured(c, spec.stdin)
    }

    fn export(&mut self, spec: &BuildSpec, dest: &Path) -> Result<Sample> {
        // As kiln's: the build again, every step cached, written as an OCI tarball.
        let spec = BuildSpec {
            output: Output::Oci(dest),
            ..*spec
        };
        let c = self.build_cmd(&spec);
        self.measured(c, spec.stdin)
    }

    fn push(&mut self, tag: &str) -> Result<Sample> {
        let b = self
            .built
            .get(tag)
            .with_context(|| format!("buildkit32: {tag} was not built"))?;
        let mut spec = BuildSpec::new(&b.dockerfile, &b.context, tag, &b.build_args);
        spec.platforms = b.platforms.as_deref();
        spec.output = Output::Push;
        let c = self.build_cmd(&spec);
        self.measured(c, None)
    }
}

impl Drop for BuildKit32 {
    fn drop(&mut self) {
        let _ = self.daemon(&["stop"]);
    }
}
