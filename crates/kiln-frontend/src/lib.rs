//! The Dockerfile frontend: parses a Dockerfile, picks the stages the target needs, tracks
//! ARG/ENV/WORKDIR/USER state, and emits the build graph plus the image config and history the
//! result should carry. Base images come through the [`ImageResolver`] trait so this crate never
//! talks to a registry itself.

mod check_json;
mod convert;
mod git_url;
pub mod lint;
mod mount;
mod no_cache;
mod outline;
mod path;
mod sandbox;
mod split;
mod syntax;

use std::collections::{BTreeMap, HashMap};

use futures::future::BoxFuture;
use kiln_llb::{Definition, NodeId};
use kiln_oci::{ImageConfig, Platform, Reference};

pub use convert::convert;
pub use git_url::{GitRef, GitUrlError, parse_git_ref};
pub use lint::{LintOptions, Report, Warning, lint, looks_secret};
pub use outline::{Outline, OutlineArg, OutlineMount, Target, Targets, outline, targets};
pub use sandbox::{Entitlement, InvalidEntitlement, RunOpts};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A base image as the frontend needs it: pinned by digest, with its config.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// `registry/repo:tag@sha256:...`, what the image source op records.
    pub pinned: String,
    pub config: ImageConfig,
}

pub trait ImageResolver: Send + Sync {
    fn resolve<'a>(
        &'a self,
        reference: &'a Reference,
        platform: &'a Platform,
    ) -> BoxFuture<'a, std::result::Result<ResolvedImage, BoxError>>;
}

#[derive(Debug, Clone)]
pub struct BuildOpts {
    /// The Dockerfile's name as errors should print it.
    pub dockerfile_name: String,
    pub build_args: BTreeMap<String, String>,
    pub target: Option<String>,
    pub platform: Platform,
    /// .dockerignore rules, recorded in the context source.
    pub excludes: Vec<String>,
    /// RFC 3339 time written into `created` fields.
    pub created: String,
    /// Entitlements and what every RUN gets (`--allow`, `--add-host`, `--ulimit`, `--shm-size`).
    pub run: RunOpts,
    /// `--no-cache-filter`: stage names whose steps run without the cache.
    pub no_cache_filter: Vec<String>,
    /// `--build-context NAME=VALUE`, by [`context_key`] of the name.
    pub named_contexts: BTreeMap<String, NamedContext>,
    /// One of several platforms built together: step names start with the stage's platform
    /// (`[linux/arm64 2/3] RUN ...`), as BuildKit names them, so that a step shared by every
    /// platform (a `FROM --platform=$BUILDPLATFORM` stage) has one name.
    pub multi_platform: bool,
}

/// A named context: what `FROM NAME`, `COPY --from=NAME` and `RUN --mount=from=NAME` read
/// instead of the image of that name, and what a stage of that name is replaced by.
#[derive(Debug, Clone)]
pub enum NamedContext {
    /// A directory on the client, read through the local source `local` with its own
    /// `.dockerignore` rules, as BuildKit loads a named local context.
    Local {
        local: String,
        excludes: Vec<String>,
    },
    /// `docker-image://REF`, resolved as `FROM REF` would be; `scratch` is the empty image.
    Image(String),
    /// An image already in the content store (`oci-layout://`), pinned by its manifest.
    Resolved(Box<ResolvedImage>),
    /// A Git repository.
    Git(GitRef),
    /// An http(s) URL that is not a Git repository: the downloaded file, named `context`,
    /// as BuildKit's HTTP source gives it (an archive is not unpacked).
    Http(String),
    /// `target:STAGE`: a stage of the same Dockerfile (buildx's bake feature, for `build` too).
    Stage(String),
}

/// The key a name is looked up by among the named contexts, as BuildKit computes it: the
/// reference in its short form without `:latest` (`docker.io/library/busybox:latest` and
/// `busybox` are one name). A name that is not a valid reference is an error.
pub fn context_key(name: &str) -> std::result::Result<String, kiln_oci::Error> {
    let r: Reference = name.parse()?;
    let repo = match r.registry() {
        "docker.io" => r
            .repository()
            .strip_prefix("library/")
            .unwrap_or(r.repository())
            .to_string(),
        host => format!("{host}/{}", r.repository()),
    };
    let mut key = repo;
    if let Some(t) = r.tag() {
        key.push(':');
        key.push_str(t);
    }
    if let Some(d) = r.digest() {
        key.push('@');
        key.push_str(d);
    }
    Ok(key
        .strip_suffix(":latest")
        .map(str::to_string)
        .unwrap_or(key))
}

/// The frontend's result: the graph, its root, and the image config of the target stage
/// (history included; rootfs diff_ids are filled in by the exporter).
#[derive(Debug)]
pub struct Converted {
    pub definition: Definition,
    pub root: NodeId,
    /// The steps of the `--no-cache-filter` stages, to run whatever the cache holds.
    pub no_cache: std::collections::HashSet<NodeId>,
    pub image: ImageConfig,
    /// The target stage's FROM, expanded (an image name, a stage name or `scratch`), and how
    /// many of `image`'s history entries it came with (`--squash` merges what follows).
    pub base: String,
    pub base_history: usize,
    pub warnings: Vec<String>,
    /// Where in the Dockerfile each step comes from, for error messages.
    pub locations: HashMap<NodeId, kiln_dockerfile::Location>,
    /// A stable identity of each Dockerfile step, for `--explain` to find the same step's key
    /// in an earlier build.
    pub steps: HashMap<NodeId, StepInfo>,
    /// Proxy build args given on the command line (`HTTP_PROXY=...`, any case BuildKit knows):
    /// every RUN gets them in its environment unless it sets them itself, but they stay out of
    /// the graph (so out of cache keys), the image config and the history, as in BuildKit.
    pub proxy_env: Vec<String>,
}

/// Which step of the Dockerfile a node is, the same across builds while the Dockerfile keeps
/// its stages and steps in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepInfo {
    /// `STAGE/N`: the stage's name (`stage-I` for an unnamed one, by index) and the step's
    /// number in it (FROM is 1), as progress numbers steps.
    pub id: String,
    /// The ARG names in scope at the step: the other variables of its environment are ENVs.
    pub args: std::collections::BTreeSet<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A located error, already rendered with the offending line and a caret.
    #[error("{rendered}")]
    Dockerfile { rendered: String },
    #[error("{rendered}")]
    Resolve {
        rendered: String,
        #[source]
        source: BoxError,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::context_key;

    #[test]
    fn context_keys_are_short_references() {
        assert_eq!(context_key("busybox").unwrap(), "busybox");
        assert_eq!(
            context_key("docker.io/library/busybox:latest").unwrap(),
            "busybox"
        );
        assert_eq!(context_key("busybox:1.36").unwrap(), "busybox:1.36");
        assert_eq!(context_key("foo/bar").unwrap(), "foo/bar");
        assert_eq!(
            context_key("127.0.0.1:5123/x/y:latest").unwrap(),
            "127.0.0.1:5123/x/y"
        );
        assert!(context_key("Foo").is_err());
        assert!(context_key("FOO@bad").is_err());
    }
}
