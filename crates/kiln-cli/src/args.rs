//! The command line, with docker's and buildx's flag names.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "kiln",
    version,
    about = "Build container images from Dockerfiles, without a daemon"
)]
pub struct Cli {
    /// Data directory (images, layers, cache) [env: KILN_ROOT] [default: /var/lib/kiln]
    #[arg(long, global = true)]
    pub root: Option<PathBuf>,
    /// Config file (TOML) [env: KILN_CONFIG] [default: <root>/kiln.toml]
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// Override the configured builder instance [env: KILN_BUILDER]
    #[arg(long, global = true)]
    pub builder: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Start a build
    Build(Box<BuildArgs>),
    /// List images
    Images(ImagesArgs),
    /// Create and run a new container from an image
    Run(RunArgs),
    /// Create an image from a root filesystem tarball
    Import(ImportArgs),
    /// Create a tag TARGET_IMAGE that refers to SOURCE_IMAGE
    Tag(TagArgs),
    /// Upload an image to a registry
    Push(PushArgs),
    /// Download an image from a registry
    Pull(PullArgs),
    /// Show the disk usage of the build cache
    Du(DuArgs),
    /// Remove build cache
    Prune(PruneArgs),
    /// List containers
    Ps(PsArgs),
    /// Fetch the logs of a container
    Logs(LogsArgs),
    /// Stop one or more running containers
    Stop(StopArgs),
    /// Remove one or more containers
    Rm(RmArgs),
    /// Execute a command in a running container
    Exec(ExecArgs),
    /// Start one or more stopped containers (detached)
    Start(StartArgs),
    /// Runs one container to its end, detached (started by `run -d` and `start`)
    #[command(hide = true)]
    ContainerMonitor(MonitorArgs),
    /// Remove one or more images
    Rmi(RmiArgs),
    /// Save one or more images to a tar archive (streamed to STDOUT by default)
    Save(SaveArgs),
    /// Load images from a tar archive or STDIN
    Load(LoadArgs),
    /// Display detailed information on one or more images
    Inspect(InspectArgs),
    /// Show the history of an image
    History(HistoryArgs),
    /// Commands to work on images in a registry
    Imagetools(ImagetoolsArgs),
    /// Manage manifest lists, kept locally until pushed
    Manifest(ManifestArgs),
    /// Authenticate to a registry (saved in Docker's config.json)
    Login(LoginArgs),
    /// Log out from a registry
    Logout(LogoutArgs),
    /// Manage builders: the embedded engine, or kilnd instances
    Builder(crate::builder::BuilderArgs),
}

#[derive(Args, Debug)]
pub struct DuArgs {
    /// Provide a more verbose output
    #[arg(long)]
    pub verbose: bool,
}

#[derive(Args, Debug)]
pub struct PruneArgs {
    /// Also base images' layers (`source.image`), manifests, configs and what tagged images share
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Do not prompt for confirmation
    #[arg(short = 'f', long)]
    pub force: bool,
    /// Provide filter values (e.g., "until=24h", "type=exec.cachemount", "id=abc")
    #[arg(long)]
    pub filter: Vec<String>,
    /// Amount of disk space always allowed to keep for cache (e.g., "512MB")
    #[arg(long = "reserved-space")]
    pub reserved_space: Option<String>,
    /// Amount of disk space to keep for cache (deprecated: --reserved-space)
    #[arg(long = "keep-storage", conflicts_with = "reserved_space")]
    pub keep_storage: Option<String>,
    /// Maximum amount of disk space allowed to keep for cache
    #[arg(long = "max-used-space")]
    pub max_used_space: Option<String>,
    /// Target amount of free disk space after pruning
    #[arg(long = "min-free-space")]
    pub min_free_space: Option<String>,
    /// Print what would be removed and by which rule; remove nothing
    #[arg(long = "dry-run")]
    pub dry_run: bool,
    /// Apply the configured GC policies ([[worker.oci.gcpolicy]], else BuildKit's defaults), as after a build
    #[arg(long, conflicts_with_all = ["all", "filter", "reserved_space", "keep_storage", "max_used_space", "min_free_space"])]
    pub gc: bool,
}

#[derive(Args, Debug)]
pub struct PsArgs {
    /// Show all containers (default shows just running)
    #[arg(short, long)]
    pub all: bool,
    /// Only display container IDs
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// Follow log output
    #[arg(short, long)]
    pub follow: bool,
    /// Number of lines to show from the end of the logs ("all" for all)
    #[arg(short = 'n', long, default_value = "all")]
    pub tail: String,
    /// Show timestamps
    #[arg(short, long)]
    pub timestamps: bool,
    pub container: String,
}

#[derive(Args, Debug)]
pub struct StopArgs {
    /// Seconds to wait before killing the container
    #[arg(short = 't', long = "time", default_value_t = 10)]
    pub time: u64,
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(Args, Debug)]
pub struct RmArgs {
    /// Force the removal of a running container (uses SIGKILL)
    #[arg(short, long)]
    pub force: bool,
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ExecArgs {
    /// Keep STDIN open
    #[arg(short, long)]
    pub interactive: bool,
    /// Allocate a pseudo-TTY
    #[arg(short, long)]
    pub tty: bool,
    /// Set environment variables
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// Working directory inside the container
    #[arg(short = 'w', long = "workdir")]
    pub workdir: Option<String>,
    /// Username or UID (format: <name|uid>[:<group|gid>])
    #[arg(short = 'u', long = "user")]
    pub user: Option<String>,
    pub container: String,
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct StartArgs {
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(Args, Debug)]
pub struct MonitorArgs {
    pub id: String,
}

#[derive(Args, Debug)]
pub struct BuildArgs {
    /// Build context directory; `-` reads the Dockerfile from STDIN with an empty context
    pub context: PathBuf,
    /// Name and optionally a tag (format: "name:tag")
    #[arg(short = 't', long = "tag")]
    pub tag: Vec<String>,
    /// Name of the Dockerfile (default: "PATH/Dockerfile"; `-` reads it from STDIN)
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// Set the target build stage to build
    #[arg(long)]
    pub target: Option<String>,
    /// Set build-time variables
    #[arg(long = "build-arg")]
    pub build_arg: Vec<String>,
    /// Output destination (format: "type=local|tar|oci|docker|image|registry|cacheonly,dest=path")
    #[arg(short = 'o', long = "output")]
    pub output: Vec<String>,
    /// Add annotation to the image ([TYPE[PLATFORM]:]KEY=VALUE; TYPE manifest, index,
    /// manifest-descriptor or index-descriptor)
    #[arg(long)]
    pub annotation: Vec<String>,
    /// Set target platform for build
    #[arg(long)]
    pub platform: Option<String>,
    /// Do not use cache when building the image
    #[arg(long = "no-cache")]
    pub no_cache: bool,
    /// Do not cache specified stages
    #[arg(long = "no-cache-filter")]
    pub no_cache_filter: Vec<String>,
    /// Always attempt to pull all referenced images
    #[arg(long)]
    pub pull: bool,
    /// Use no network for images: base images from the local store (or what an earlier build
    /// resolved them to), layers from the local store or a local cache
    #[arg(long)]
    pub offline: bool,
    /// Pin image references to digests: a missing FILE gets what every tag resolved to; an
    /// existing one is used (and references it lacks are added)
    #[arg(long, value_name = "FILE")]
    pub pin: Option<PathBuf>,
    /// After the build, say why each step that did not come from the cache missed it (also
    /// under `kiln.explain` in --metadata-file)
    #[arg(long)]
    pub explain: bool,
    /// Set metadata for an image
    #[arg(long)]
    pub label: Vec<String>,
    /// Set the networking mode for the "RUN" instructions during build ("default", "none",
    /// "host")
    #[arg(long, default_value = "default")]
    pub network: String,
    /// Set the parent cgroup for the "RUN" instructions during build
    #[arg(long = "cgroup-parent")]
    pub cgroup_parent: Option<String>,
    /// Resource limits for build containers (format: "memory=2g", "cpu-quota=50000")
    #[arg(long)]
    pub resource: Vec<String>,
    /// Squash the layers the final stage adds on top of its base image into one (the classic
    /// builder's flag)
    #[arg(long)]
    pub squash: bool,
    /// Set type of progress output ("auto", "none", "plain", "tty", "quiet", "rawjson")
    #[arg(long, default_value = "auto")]
    pub progress: String,
    /// Shorthand for "--output=type=docker" (kiln: the local image store)
    #[arg(long)]
    pub load: bool,
    /// Shorthand for "--output=type=registry"
    #[arg(long)]
    pub push: bool,
    /// Suppress the build output and print image ID on success
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Write the image ID to a file
    #[arg(long)]
    pub iidfile: Option<PathBuf>,
    /// Write build result metadata to a file (buildx's keys)
    #[arg(long = "metadata-file")]
    pub metadata_file: Option<PathBuf>,
    /// Build on the kilnd at ADDRESS (`unix:///path/kilnd.sock`, `tcp://HOST:PORT`) instead
    /// of in this process
    #[arg(long, env = "KILN_HOST", value_name = "ADDRESS")]
    pub host: Option<String>,
    /// With a tcp:// --host: the CA the daemon's certificate must chain to
    #[arg(long, env = "KILN_TLS_CACERT", value_name = "FILE")]
    pub tlscacert: Option<PathBuf>,
    /// With a tcp:// --host: this client's certificate
    #[arg(long, env = "KILN_TLS_CERT", value_name = "FILE")]
    pub tlscert: Option<PathBuf>,
    /// With a tcp:// --host: this client's key
    #[arg(long, env = "KILN_TLS_KEY", value_name = "FILE")]
    pub tlskey: Option<PathBuf>,
    /// External cache sources
    #[arg(long = "cache-from")]
    pub cache_from: Vec<String>,
    /// Cache export destinations
    #[arg(long = "cache-to")]
    pub cache_to: Vec<String>,
    /// Secret to expose to the build
    #[arg(long)]
    pub secret: Vec<String>,
    /// SSH agent socket or keys to expose to the build
    #[arg(long)]
    pub ssh: Vec<String>,
    /// Shorthand for "--call=check"
    #[arg(long)]
    pub check: bool,
    /// Set method for evaluating build
    #[arg(long)]
    pub call: Option<String>,
    /// Additional build contexts (e.g., name=path): a directory, docker-image://REF,
    /// oci-layout://PATH[:TAG|@DIGEST], a Git URL or target:STAGE
    #[arg(long = "build-context")]
    pub build_context: Vec<String>,
    /// Allow extra privileged entitlement (e.g., "network.host", "security.insecure")
    #[arg(long)]
    pub allow: Vec<String>,
    /// Add a custom host-to-IP mapping (format: "host:ip")
    #[arg(long = "add-host")]
    pub add_host: Vec<String>,
    /// Ulimit options (format: "name=soft[:hard]")
    #[arg(long)]
    pub ulimit: Vec<String>,
    /// Size of "/dev/shm" (e.g. "64m")
    #[arg(long = "shm-size")]
    pub shm_size: Option<String>,
}

#[derive(Args, Debug)]
pub struct ImagesArgs {
    /// Only show image IDs
    #[arg(short, long)]
    pub quiet: bool,
    /// Show digests
    #[arg(long)]
    pub digests: bool,
    /// Don't truncate output
    #[arg(long = "no-trunc")]
    pub no_trunc: bool,
    /// Filter output based on conditions provided (reference, dangling, before, since, label)
    #[arg(short = 'f', long = "filter")]
    pub filter: Vec<String>,
    /// Format output using a template of {{.Field}} placeholders (Repository, Tag, ID, Digest,
    /// CreatedSince, CreatedAt, Size); "table TEMPLATE" adds headers
    #[arg(long)]
    pub format: Option<String>,
    /// List each multi-platform image's platforms under it, as `docker image ls --tree`
    #[arg(long)]
    pub tree: bool,
    /// Only images whose name matches [REPOSITORY[:TAG]]
    pub repository: Option<String>,
}

#[derive(Args, Debug)]
pub struct RmiArgs {
    /// Force removal of the image
    #[arg(short, long)]
    pub force: bool,
    #[arg(required = true)]
    pub images: Vec<String>,
}

#[derive(Args, Debug)]
pub struct SaveArgs {
    /// Write to a file, instead of STDOUT
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Archive format: "docker" (what `docker load` reads, also an OCI layout) or "oci"
    #[arg(long, default_value = "docker", value_parser = ["docker", "oci"])]
    pub format: String,
    #[arg(required = true)]
    pub images: Vec<String>,
}

#[derive(Args, Debug)]
pub struct LoadArgs {
    /// Read from tar archive file, instead of STDIN
    #[arg(short, long)]
    pub input: Option<PathBuf>,
    /// Suppress the load output
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Inspect a specific platform of the multi-platform image (os[/arch[/variant]])
    #[arg(long)]
    pub platform: Option<String>,
    #[arg(required = true)]
    pub images: Vec<String>,
}

#[derive(Args, Debug)]
pub struct HistoryArgs {
    /// Don't truncate output
    #[arg(long = "no-trunc")]
    pub no_trunc: bool,
    /// Only show image IDs
    #[arg(short, long)]
    pub quiet: bool,
    /// Format output using a template of {{.Field}} placeholders (ID, CreatedSince, CreatedAt,
    /// CreatedBy, Size, Comment)
    #[arg(long)]
    pub format: Option<String>,
    pub image: String,
}

#[derive(Args, Debug)]
pub struct ImagetoolsArgs {
    #[command(subcommand)]
    pub command: ImagetoolsCommand,
}

#[derive(Subcommand, Debug)]
pub enum ImagetoolsCommand {
    /// Show details of an image in the registry
    Inspect(ImagetoolsInspectArgs),
    /// Create a new image (an index) based on source images in a registry
    Create(ImagetoolsCreateArgs),
}

#[derive(Args, Debug)]
pub struct ImagetoolsInspectArgs {
    /// Show original, unformatted JSON manifest
    #[arg(long)]
    pub raw: bool,
    pub name: String,
}

#[derive(Args, Debug)]
pub struct ImagetoolsCreateArgs {
    /// Set reference for new image
    #[arg(short = 't', long = "tag", required = true)]
    pub tag: Vec<String>,
    /// Append to existing manifest
    #[arg(long)]
    pub append: bool,
    /// Add annotation to the image (KEY=VALUE, index:KEY=VALUE, manifest-descriptor:KEY=VALUE)
    #[arg(long)]
    pub annotation: Vec<String>,
    /// Show final image instead of pushing
    #[arg(long = "dry-run")]
    pub dry_run: bool,
    /// Source images (a name, or a digest in the first target's repository)
    #[arg(required = true)]
    pub sources: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ManifestArgs {
    #[command(subcommand)]
    pub command: ManifestCommand,
}

#[derive(Subcommand, Debug)]
pub enum ManifestCommand {
    /// Create a local manifest list for annotating and pushing to a registry
    Create {
        /// Amend an existing manifest list
        #[arg(short, long)]
        amend: bool,
        /// Allow communication with an insecure registry
        #[arg(long)]
        insecure: bool,
        list: String,
        #[arg(required = true)]
        manifests: Vec<String>,
    },
    /// Add additional information to a local image manifest
    Annotate {
        /// Set operating system
        #[arg(long)]
        os: Option<String>,
        /// Set architecture
        #[arg(long)]
        arch: Option<String>,
        /// Set architecture variant
        #[arg(long)]
        variant: Option<String>,
        /// Set operating system version
        #[arg(long = "os-version")]
        os_version: Option<String>,
        /// Set operating system feature
        #[arg(long = "os-features", value_delimiter = ',')]
        os_features: Vec<String>,
        list: String,
        manifest: String,
    },
    /// Display an image manifest, or manifest list
    Inspect {
        /// Allow communication with an insecure registry
        #[arg(long)]
        insecure: bool,
        /// Output additional info including layers and platform
        #[arg(short, long)]
        verbose: bool,
        /// `[LIST] MANIFEST`
        #[arg(required = true, num_args = 1..=2)]
        names: Vec<String>,
    },
    /// Push a manifest list to a repository
    Push {
        /// Allow push to an insecure registry
        #[arg(long)]
        insecure: bool,
        /// Remove the local manifest list after push
        #[arg(short, long)]
        purge: bool,
        list: String,
    },
    /// Delete one or more manifest lists from local storage
    Rm {
        #[arg(required = true)]
        lists: Vec<String>,
    },
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Automatically remove the container when it exits
    #[arg(long)]
    pub rm: bool,
    /// Assign a name to the container
    #[arg(long)]
    pub name: Option<String>,
    /// Bind mount a volume (format: /HOST:/CONTAINER[:ro|rw])
    #[arg(short = 'v', long = "volume")]
    pub volume: Vec<String>,
    /// Keep STDIN open
    #[arg(short, long)]
    pub interactive: bool,
    /// Allocate a pseudo-TTY
    #[arg(short, long)]
    pub tty: bool,
    /// Run container in background and print container ID
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Set environment variables
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// Overwrite the default ENTRYPOINT of the image
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Working directory inside the container
    #[arg(short = 'w', long = "workdir")]
    pub workdir: Option<String>,
    /// Username or UID (format: <name|uid>[:<group|gid>])
    #[arg(short = 'u', long = "user")]
    pub user: Option<String>,
    /// Publish a container's port(s) to the host
    #[arg(short = 'p', long = "publish")]
    pub publish: Vec<String>,
    /// Set platform if server is multi-platform capable (picks that image of a multi-platform
    /// name; default: this machine's)
    #[arg(long)]
    pub platform: Option<String>,
    pub image: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// Apply Dockerfile instruction to the created image
    #[arg(short = 'c', long)]
    pub change: Vec<String>,
    /// Set platform if server is multi-platform capable
    #[arg(long)]
    pub platform: Option<String>,
    pub tarball: PathBuf,
    pub name: String,
}

#[derive(Args, Debug)]
pub struct TagArgs {
    pub source: String,
    pub target: String,
}

#[derive(Args, Debug)]
pub struct PushArgs {
    /// NAME[:TAG|@DIGEST]
    pub name: String,
}

#[derive(Args, Debug)]
pub struct PullArgs {
    /// NAME[:TAG|@DIGEST]
    pub name: String,
    /// Pick this platform's image from a multi-platform index (default: this machine's)
    #[arg(long)]
    pub platform: Option<String>,
}

#[derive(Args, Debug)]
pub struct LoginArgs {
    /// Username
    #[arg(short = 'u', long)]
    pub username: Option<String>,
    /// Password
    #[arg(short = 'p', long, conflicts_with = "password_stdin")]
    pub password: Option<String>,
    /// Take the password from stdin
    #[arg(long = "password-stdin")]
    pub password_stdin: bool,
    /// Registry (default: docker.io)
    pub server: Option<String>,
}

#[derive(Args, Debug)]
pub struct LogoutArgs {
    /// Registry (default: docker.io)
    pub server: Option<String>,
}

/// `type=oci,dest=out.tar` and friends.
/// Where a `--secret`'s value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    File(PathBuf),
    Env(String),
}

/// Parses `--secret id=ID,src=FILE`, `id=ID,env=VAR` or `id=ID,type=file|env,...`. As buildx:
/// without `type`, `src`/`source` means a file and `env` a variable; the id defaults to the
/// file's name or the variable's name; a bare `id=ID` reads the variable `ID`.
pub fn parse_secret(spec: &str) -> Result<(String, SecretSource)> {
    let (mut id, mut typ, mut src, mut env) = (None, None, None, None);
    for field in spec.split(',').filter(|f| !f.is_empty()) {
        let Some((k, v)) = field.split_once('=') else {
            bail!("invalid --secret `{spec}`: expected key=value fields");
        };
        match k.trim().to_ascii_lowercase().as_str() {
            "id" => id = Some(v.to_string()),
            "type" => typ = Some(v.to_ascii_lowercase()),
            "src" | "source" => src = Some(v.to_string()),
            "env" => env = Some(v.to_string()),
            other => bail!("invalid --secret `{spec}`: unexpected key `{other}`"),
        }
    }
    let typ = match typ.as_deref() {
        Some("file") | Some("env") => typ.unwrap_or_default(),
        Some(other) => bail!("invalid --secret `{spec}`: unsupported type `{other}`"),
        None if src.is_some() => "file".into(),
        None => "env".into(),
    };
    if typ == "file" {
        let Some(path) = src.or_else(|| id.clone()) else {
            bail!("invalid --secret `{spec}`: a file secret needs `src`");
        };
        let id = match id {
            Some(id) => id,
            None => std::path::Path::new(&path)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        };
        if id.is_empty() {
            bail!("invalid --secret `{spec}`: missing `id`");
        }
        Ok((id, SecretSource::File(PathBuf::from(path))))
    } else {
        let Some(var) = env.or_else(|| src.clone()).or_else(|| id.clone()) else {
            bail!("invalid --secret `{spec}`: missing `id` or `env`");
        };
        Ok((id.unwrap_or_else(|| var.clone()), SecretSource::Env(var)))
    }
}

/// Parses `--ssh default|ID[=SOCKET|KEY[,KEY...]]` (buildx's syntax) into the id and paths.
pub fn parse_ssh(spec: &str) -> Result<(String, Vec<PathBuf>)> {
    let (id, paths) = match spec.split_once('=') {
        Some((id, rest)) => (
            id,
            rest.split(',')
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
                .collect(),
        ),
        None => (spec, Vec::new()),
    };
    if id.is_empty() {
        bail!("invalid --ssh `{spec}`: missing id");
    }
    Ok((id.to_string(), paths))
}

/// `--call METHOD[,format=json]` (and `--check`, its shorthand for `check`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Build,
    Check { json: bool },
    Outline { json: bool },
    Targets { json: bool },
}

pub fn parse_call(call: Option<&str>, check: bool) -> Result<Call> {
    if check {
        return Ok(Call::Check { json: false });
    }
    let Some(call) = call else {
        return Ok(Call::Build);
    };
    let mut parts = call.split(',');
    let method = parts.next().unwrap_or_default().trim();
    let mut json = false;
    for opt in parts {
        match opt.trim().split_once('=') {
            Some(("format", "json")) => json = true,
            Some(("format", "text" | "")) => json = false,
            Some(("format", other)) => bail!("invalid --call format `{other}`: expected json"),
            _ => bail!("invalid --call option `{opt}`: expected format=json"),
        }
    }
    Ok(match method {
        "build" | "" => Call::Build,
        "check" => Call::Check { json },
        "outline" => Call::Outline { json },
        "targets" => Call::Targets { json },
        // BuildKit's answer to a subrequest it does not know.
        other => bail!("unsupported request frontend.{other}"),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn secret_specs_infer_type_and_id() {
        use super::{SecretSource, parse_secret};
        assert_eq!(
            parse_secret("id=tok,src=/tmp/t.txt").unwrap(),
            ("tok".into(), SecretSource::File("/tmp/t.txt".into()))
        );
        assert_eq!(
            parse_secret("source=/run/a/key.pem").unwrap(),
            (
                "key.pem".into(),
                SecretSource::File("/run/a/key.pem".into())
            )
        );
        assert_eq!(
            parse_secret("env=GH_TOKEN").unwrap(),
            ("GH_TOKEN".into(), SecretSource::Env("GH_TOKEN".into()))
        );
        assert_eq!(
            parse_secret("id=x,env=Y").unwrap(),
            ("x".into(), SecretSource::Env("Y".into()))
        );
        assert!(parse_secret("id=x,type=ssh").is_err());
        assert!(parse_secret("id=x,bogus=1").is_err());
    }

    use super::*;

    #[test]
    fn ssh_specs() {
        assert_eq!(parse_ssh("default").unwrap(), ("default".into(), vec![]));
        assert_eq!(
            parse_ssh("gh=/k1,/k2").unwrap(),
            (
                "gh".into(),
                vec![PathBuf::from("/k1"), PathBuf::from("/k2")]
            )
        );
        assert!(parse_ssh("=/k").is_err());
    }

    #[test]
    fn call_methods_and_formats() {
        assert_eq!(parse_call(None, false).unwrap(), Call::Build);
        assert_eq!(parse_call(Some("build"), false).unwrap(), Call::Build);
        assert_eq!(parse_call(None, true).unwrap(), Call::Check { json: false });
        assert_eq!(
            parse_call(Some("outline"), false).unwrap(),
            Call::Outline { json: false }
        );
        assert_eq!(
            parse_call(Some("targets,format=json"), false).unwrap(),
            Call::Targets { json: true }
        );
        let e = parse_call(Some("bogus"), false).unwrap_err().to_string();
        assert_eq!(e, "unsupported request frontend.bogus");
        assert!(parse_call(Some("outline,format=yaml"), false).is_err());
    }
}
