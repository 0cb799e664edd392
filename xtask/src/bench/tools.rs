//! The builders under test, driven through their command lines the way a user drives them.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use kiln_test::Dockerd;

use super::measure::{self, Sample};

/// A build to run: the workload's Dockerfile, its generated context and the image's name.
pub struct BuildSpec<'a> {
    pub dockerfile: &'a Path,
    pub context: &'a Path,
    pub tag: &'a str,
    pub build_args: &'a [(String, String)],
    /// A context tarball fed on stdin (`build -`) instead of `context`; `dockerfile` is then a
    /// path inside it.
    pub stdin: Option<&'a Path>,
}

impl BuildSpec<'_> {
    /// Adds what every builder's command line ends with: the build args and the context.
    fn finish(&self, c: &mut Command) {
        for (k, v) in self.build_args {
            c.arg("--build-arg").arg(format!("{k}={v}"));
        }
        match self.stdin {
            Some(_) => c.arg("-"),
            None => c.arg(self.context),
        };
    }
}

pub trait Tool {
    fn name(&self) -> &'static str;
    /// Empties the build cache and the image store, then makes `base` present again, untimed: the
    /// state a "cold" workload starts from.
    fn reset(&mut self, base: &str) -> Result<()>;
    fn build(&mut self, spec: &BuildSpec) -> Result<Sample>;
    /// Writes the image `tag` as an archive at `dest` (OCI where the tool can, else docker's).
    fn export(&mut self, spec: &BuildSpec, dest: &Path) -> Result<Sample>;
    /// Pushes the image `tag` to the registry.
    fn push(&mut self, tag: &str) -> Result<Sample>;
}

/// kiln from this tree, with its own data directory.
pub struct Kiln {
    pub bin: PathBuf,
    pub dir: PathBuf,
    pub log: PathBuf,
}

impl Kiln {
    pub fn new(bin: PathBuf, dir: &Path, registry: &str) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(
            dir.join("kiln.toml"),
            format!("[registry.\"{registry}\"]\nhttp = true\n"),
        )?;
        Ok(Kiln {
            bin,
            dir: dir.to_path_buf(),
            log: dir.join("bench.log"),
        })
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--root")
            .arg(self.dir.join("root"))
            .arg("--config")
            .arg(self.dir.join("kiln.toml"));
        c
    }

    fn build_cmd(&self, spec: &BuildSpec) -> Command {
        let mut c = self.cmd();
        c.args(["build", "--progress", "plain", "-t", spec.tag, "-f"])
            .arg(spec.dockerfile);
        spec.finish(&mut c);
        c
    }
}

impl Tool for Kiln {
    fn name(&self) -> &'static str {
        "kiln"
    }

    fn reset(&mut self, base: &str) -> Result<()> {
        let root = self.dir.join("root");
        if root.exists() {
            std::fs::remove_dir_all(&root)
                .with_context(|| format!("removing {}", root.display()))?;
        }
        measure::quiet(self.cmd().args(["pull", base]), &self.log)
    }

    fn build(&mut self, spec: &BuildSpec) -> Result<Sample> {
        measure::run_in(&mut self.build_cmd(spec), &self.log, spec.stdin)
    }

    fn export(&mut self, spec: &BuildSpec, dest: &Path) -> Result<Sample> {
        // kiln has no `save` yet: an export is a build whose steps are all cached, written out.
        let mut c = self.build_cmd(spec);
        c.arg("-o").arg(format!("type=oci,dest={}", dest.display()));
        measure::run(&mut c, &self.log)
    }

    fn push(&mut self, tag: &str) -> Result<Sample> {
        measure::run(self.cmd().args(["push", tag]), &self.log)
    }
}

/// BuildKit as Docker 20.10's dockerd embeds it, through a private daemon.
pub struct BuildKit {
    daemon: Dockerd,
    docker: PathBuf,
    log: PathBuf,
}

impl BuildKit {
    /// Starts a private dockerd in `dir`. `docker` is the 20.10 client that matches it (a newer
    /// client without buildx refuses `DOCKER_BUILDKIT=1`).
    pub fn start(dockerd: &Path, docker: PathBuf, dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let daemon = Dockerd::start(dockerd, dir)?;
        Ok(BuildKit {
            daemon,
            docker,
            log: dir.join("bench.log"),
        })
    }

    fn cmd(&self) -> Command {
        let mut c = self.daemon.command(&self.docker);
        c.env("DOCKER_BUILDKIT", "1");
        c
    }

    /// Measures a client command; the work happens in dockerd, so the memory figure is the
    /// daemon's peak during the command.
    fn measured(&self, c: Command) -> Result<Sample> {
        self.measured_in(c, None)
    }

    /// [`BuildKit::measured`] with `stdin` fed from a file.
    fn measured_in(&self, mut c: Command, stdin: Option<&Path>) -> Result<Sample> {
        let pid = self.daemon.pid();
        measure::reset_peak_rss(pid)?;
        let mut s = measure::run_in(&mut c, &self.log, stdin)?;
        s.max_rss_kib = Some(measure::peak_rss(pid)?);
        Ok(s)
    }
}

impl Tool for BuildKit {
    fn name(&self) -> &'static str {
        "buildkit"
    }

    fn reset(&mut self, base: &str) -> Result<()> {
        measure::quiet(self.cmd().args(["builder", "prune", "-af"]), &self.log)?;
        measure::quiet(self.cmd().args(["system", "prune", "-af"]), &self.log)?;
        measure::quiet(self.cmd().args(["pull", base]), &self.log)
    }

    fn build(&mut self, spec: &BuildSpec) -> Result<Sample> {
        let mut c = self.cmd();
        c.args([
            "build",
            "--progress",
            "plain",
            "--network",
            "host",
            "-t",
            spec.tag,
            "-f",
        ])
        .arg(spec.dockerfile);
        spec.finish(&mut c);
        self.measured_in(c, spec.stdin)
    }

    fn export(&mut self, spec: &BuildSpec, dest: &Path) -> Result<Sample> {
        // dockerd's embedded BuildKit cannot write an OCI tarball; `docker save` is what its users
        // run (docker's archive format).
        let mut c = self.cmd();
        c.args(["save", "-o"]).arg(dest).arg(spec.tag);
        self.measured(c)
    }

    fn push(&mut self, tag: &str) -> Result<Sample> {
        let mut c = self.cmd();
        c.args(["push", tag]);
        self.measured(c)
    }
}

/// Buildah with its own storage, `--layers` (its cache) and runc.
pub struct Buildah {
    dir: PathBuf,
    log: PathBuf,
}

impl Buildah {
    pub fn new(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Buildah {
            dir: dir.to_path_buf(),
            log: dir.join("bench.log"),
        })
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("buildah");
        c.arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(self.dir.join("run"))
            .args(["--storage-driver", "overlay"]);
        c
    }
}

impl Tool for Buildah {
    fn name(&self) -> &'static str {
        "buildah"
    }

    fn reset(&mut self, base: &str) -> Result<()> {
        measure::quiet(self.cmd().args(["rm", "--all"]), &self.log)?;
        measure::quiet(self.cmd().args(["rmi", "--all", "--force"]), &self.log)?;
        measure::quiet(
            self.cmd().args(["pull", "--tls-verify=false", "-q", base]),
            &self.log,
        )
    }

    fn build(&mut self, spec: &BuildSpec) -> Result<Sample> {
        let mut c = self.cmd();
        c.args([
            "bud",
            "--layers",
            "--runtime",
            "runc",
            "--network",
            "host",
            "--tls-verify=false",
            "-t",
            spec.tag,
            "-f",
        ])
        .arg(spec.dockerfile);
        spec.finish(&mut c);
        measure::run(&mut c, &self.log)
    }

    fn export(&mut self, spec: &BuildSpec, dest: &Path) -> Result<Sample> {
        let mut c = self.cmd();
        c.args(["push", spec.tag])
            .arg(format!("oci-archive:{}", dest.display()));
        measure::run(&mut c, &self.log)
    }

    fn push(&mut self, tag: &str) -> Result<Sample> {
        let mut c = self.cmd();
        c.args(["push", "--tls-verify=false", tag])
            .arg(format!("docker://{tag}"));
        measure::run(&mut c, &self.log)
    }
}
