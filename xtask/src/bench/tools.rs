//! The builders under test, driven through their command lines the way a user drives them.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};
use kiln_test::Dockerd;

use super::measure::{self, Sample};

/// Where a build's result goes.
#[derive(Debug, Clone, Copy)]
pub enum Output<'a> {
    /// The tool's own image store (BuildKit v0.32.2: its worker's image store, unpushed).
    Store,
    /// An OCI image tarball.
    Oci(&'a Path),
    /// Pushed to the registry the tag names.
    Push,
}

/// A build to run: the workload's Dockerfile, its generated context and the image's name.
#[derive(Debug, Clone, Copy)]
pub struct BuildSpec<'a> {
    pub dockerfile: &'a Path,
    pub context: &'a Path,
    pub tag: &'a str,
    pub build_args: &'a [(String, String)],
    /// A context tarball fed on stdin (`build -`) instead of `context`; `dockerfile` is then a
    /// path inside it.
    pub stdin: Option<&'a Path>,
    /// `--platform`, one or several.
    pub platforms: Option<&'a str>,
    pub cache_from: Option<&'a str>,
    pub cache_to: Option<&'a str>,
    pub output: Output<'a>,
}

impl<'a> BuildSpec<'a> {
    pub fn new(
        dockerfile: &'a Path,
        context: &'a Path,
        tag: &'a str,
        build_args: &'a [(String, String)],
    ) -> Self {
        BuildSpec {
            dockerfile,
            context,
            tag,
            build_args,
            stdin: None,
            platforms: None,
            cache_from: None,
            cache_to: None,
            output: Output::Store,
        }
    }

    /// Fails for what Docker 20.10's builder and Buildah cannot do as buildx does.
    fn plain_only(&self, tool: &str) -> Result<()> {
        ensure!(
            self.platforms.is_none_or(|p| !p.contains(','))
                && self.cache_from.is_none()
                && self.cache_to.is_none()
                && matches!(self.output, Output::Store),
            "{tool}: this phase needs --platform a,b, a registry cache or an output it lacks"
        );
        Ok(())
    }

    /// Adds what every builder's command line ends with: platforms, caches, the build args and
    /// the context.
    pub(super) fn finish(&self, c: &mut Command) {
        if let Some(p) = self.platforms {
            c.arg("--platform").arg(p);
        }
        if let Some(from) = self.cache_from {
            c.arg("--cache-from").arg(from);
        }
        if let Some(to) = self.cache_to {
            c.arg("--cache-to").arg(to);
        }
        for (k, v) in self.build_args {
            c.arg("--build-arg").arg(format!("{k}={v}"));
        }
        match self.stdin {
            Some(_) => c.arg("-"),
            None => c.arg(self.context),
        };
    }
}

/// A base image to make present: its reference and platforms (`None`: this machine's).
pub type Pull<'a> = (String, Option<&'a str>);

pub trait Tool {
    fn name(&self) -> &'static str;
    /// Empties the build cache and the image store, untimed: nothing is left, not even a base.
    fn reset_empty(&mut self) -> Result<()>;
    /// [`Tool::reset_empty`], then makes `bases` present again, untimed: the state a "cold"
    /// workload starts from.
    fn reset(&mut self, bases: &[Pull]) -> Result<()>;
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
        match spec.output {
            Output::Store => {}
            Output::Oci(dest) => {
                c.arg("-o").arg(format!("type=oci,dest={}", dest.display()));
            }
            Output::Push => {
                c.arg("--push");
            }
        }
        spec.finish(&mut c);
        c
    }
}

impl Tool for Kiln {
    fn name(&self) -> &'static str {
        "kiln"
    }

    fn reset_empty(&mut self) -> Result<()> {
        let root = self.dir.join("root");
        if root.exists() {
            std::fs::remove_dir_all(&root)
                .with_context(|| format!("removing {}", root.display()))?;
        }
        Ok(())
    }

    fn reset(&mut self, bases: &[Pull]) -> Result<()> {
        self.reset_empty()?;
        for (base, platforms) in bases {
            match platforms {
                None => measure::quiet(self.cmd().args(["pull", base]), &self.log)?,
                Some(list) => {
                    for p in list.split(',') {
                        measure::quiet(
                            self.cmd().args(["pull", "--platform", p, base]),
                            &self.log,
                        )?;
                    }
                }
            }
        }
        Ok(())
    }

    fn build(&mut self, spec: &BuildSpec) -> Result<Sample> {
        measure::run_in(&mut self.build_cmd(spec), &self.log, spec.stdin)
    }

    fn export(&mut self, spec: &BuildSpec, dest: &Path) -> Result<Sample> {
        // An export is a build whose steps are all cached, written out as BuildKit v0.32.2's is.
        let spec = BuildSpec {
            output: Output::Oci(dest),
            ..*spec
        };
        measure::run(&mut self.build_cmd(&spec), &self.log)
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

    fn reset_empty(&mut self) -> Result<()> {
        measure::quiet(self.cmd().args(["builder", "prune", "-af"]), &self.log)?;
        measure::quiet(self.cmd().args(["system", "prune", "-af"]), &self.log)
    }

    fn reset(&mut self, bases: &[Pull]) -> Result<()> {
        self.reset_empty()?;
        for (base, platforms) in bases {
            ensure!(platforms.is_none(), "buildkit: one platform only");
            measure::quiet(self.cmd().args(["pull", base]), &self.log)?;
        }
        Ok(())
    }

    fn build(&mut self, spec: &BuildSpec) -> Result<Sample> {
        spec.plain_only("buildkit")?;
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

    fn reset_empty(&mut self) -> Result<()> {
        measure::quiet(self.cmd().args(["rm", "--all"]), &self.log)?;
        measure::quiet(self.cmd().args(["rmi", "--all", "--force"]), &self.log)
    }

    fn reset(&mut self, bases: &[Pull]) -> Result<()> {
        self.reset_empty()?;
        for (base, platforms) in bases {
            ensure!(platforms.is_none(), "buildah: one platform only");
            measure::quiet(
                self.cmd().args(["pull", "--tls-verify=false", "-q", base]),
                &self.log,
            )?;
        }
        Ok(())
    }

    fn build(&mut self, spec: &BuildSpec) -> Result<Sample> {
        spec.plain_only("buildah")?;
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
