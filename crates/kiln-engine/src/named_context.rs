//! `--build-context NAME=VALUE`: buildx's named contexts. The value is parsed as buildx parses
//! it (a Git URL, `docker-image://`, `oci-layout://`, `target:`, else a local directory), then
//! made into what the frontend and the worker need: a local source with its own `.dockerignore`
//! rules, an image to resolve, an OCI layout's image imported into the content store, a Git
//! source, or another name for a stage.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_frontend::NamedContext;
use kiln_ignore::Matcher;
use kiln_oci::Platform;

use crate::{Engine, Error, Result};

/// Where a named context comes from, as written on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamedContextSource {
    /// A directory on this machine.
    Dir(PathBuf),
    /// `docker-image://REF`.
    Image(String),
    /// `oci-layout://PATH[:TAG][@DIGEST]`: an image in an OCI layout directory.
    OciLayout {
        path: PathBuf,
        tag: Option<String>,
        digest: Option<String>,
    },
    /// A Git URL (`https://…/repo.git#ref:dir`, `git@host:repo`, `git://…`).
    Git(String),
    /// `target:STAGE`.
    Stage(String),
    /// Any other http(s) URL: one file, as BuildKit's HTTP source.
    Http(String),
}

/// Parses one `--build-context NAME=VALUE` into the key the frontend looks names up by and
/// the source. Only the syntax is checked here; paths are read when the build starts.
pub fn parse_build_context(spec: &str) -> Result<(String, NamedContextSource)> {
    let Some((name, value)) = spec.split_once('=') else {
        return Err(Error::Usage(format!(
            "invalid context value: {spec}, expected key=value"
        )));
    };
    let key = kiln_frontend::context_key(name)
        .map_err(|e| Error::Usage(format!("invalid context name {name}: {e}")))?;
    let source = if let Some(r) = value.strip_prefix("docker-image://") {
        if r != "scratch" {
            r.parse::<kiln_oci::Reference>().map_err(|e| {
                Error::Usage(format!("invalid context {name}: docker-image://{r}: {e}"))
            })?;
        }
        NamedContextSource::Image(r.to_string())
    } else if let Some(rest) = value.strip_prefix("oci-layout://") {
        // buildx's split: the digest after the first `@`, the tag after the first `:`.
        let (rest, digest) = match rest.split_once('@') {
            Some((p, d)) => {
                kiln_oci::parse_digest(d)
                    .map_err(|e| Error::Usage(format!("invalid context {name}: {value}: {e}")))?;
                (p, Some(d.to_string()))
            }
            None => (rest, None),
        };
        let (path, tag) = match rest.split_once(':') {
            Some((p, t)) => (p, Some(t.to_string())),
            None => (rest, None),
        };
        NamedContextSource::OciLayout {
            path: PathBuf::from(path),
            tag,
            digest,
        }
    } else if let Some(stage) = value.strip_prefix("target:") {
        NamedContextSource::Stage(stage.to_ascii_lowercase())
    } else if kiln_frontend::parse_git_ref(value).is_some() {
        NamedContextSource::Git(value.to_string())
    } else if value.starts_with("https://") || value.starts_with("http://") {
        NamedContextSource::Http(value.to_string())
    } else {
        NamedContextSource::Dir(PathBuf::from(value))
    };
    Ok((key, source))
}

/// The named contexts made ready for a build: what the frontend resolves names to, and the
/// local directories the worker serves, by local source name.
pub(crate) struct Prepared {
    pub contexts: BTreeMap<String, NamedContext>,
    pub locals: Vec<(String, kiln_worker::Context)>,
}

impl Engine {
    pub(crate) fn prepare_named_contexts(
        &self,
        named: &BTreeMap<String, NamedContextSource>,
        platform: &Platform,
    ) -> Result<Prepared> {
        let mut out = Prepared {
            contexts: BTreeMap::new(),
            locals: Vec::new(),
        };
        for (key, source) in named {
            let ctx = match source {
                NamedContextSource::Dir(dir) => {
                    // buildx's local names: the key, with `_` before the two it uses itself.
                    let local = match key.as_str() {
                        "context" | "dockerfile" => format!("_{key}"),
                        _ => key.clone(),
                    };
                    let (dir, matcher, excludes) = local_dir(key, dir)?;
                    out.locals
                        .push((local.clone(), kiln_worker::Context { dir, matcher }));
                    NamedContext::Local { local, excludes }
                }
                NamedContextSource::Image(r) => NamedContext::Image(r.clone()),
                NamedContextSource::Git(url) => match kiln_frontend::parse_git_ref(url) {
                    Some(Ok(git)) => NamedContext::Git(git),
                    Some(Err(e)) => return Err(Error::Usage(e.to_string())),
                    None => return Err(Error::Usage(format!("invalid git context {url}"))),
                },
                NamedContextSource::OciLayout { path, tag, digest } => {
                    let image = crate::oci_layout::import(
                        &self.content,
                        key,
                        path,
                        tag.as_deref(),
                        digest.as_deref(),
                        platform,
                    )?;
                    NamedContext::Resolved(Box::new(image))
                }
                NamedContextSource::Stage(s) => NamedContext::Stage(s.clone()),
                NamedContextSource::Http(url) => NamedContext::Http(url.clone()),
            };
            out.contexts.insert(key.clone(), ctx);
        }
        Ok(out)
    }
}

/// A named local directory: its real path and its own `.dockerignore` rules (BuildKit reads
/// `<dir>/.dockerignore` for each named local context, as for the build context).
fn local_dir(key: &str, dir: &Path) -> Result<(PathBuf, Option<Arc<Matcher>>, Vec<String>)> {
    let meta = std::fs::metadata(dir).map_err(|source| Error::Io {
        what: format!("failed to get build context {key}: stat {}", dir.display()),
        source,
    })?;
    if !meta.is_dir() {
        return Err(Error::Usage(format!(
            "failed to get build context path {}: not a directory",
            dir.display()
        )));
    }
    let real = std::fs::canonicalize(dir).map_err(|source| Error::Io {
        what: format!("failed to get build context {key}: {}", dir.display()),
        source,
    })?;
    let ignore = real.join(".dockerignore");
    match std::fs::read_to_string(&ignore) {
        Ok(text) => {
            let matcher = Matcher::from_dockerignore(&text).map_err(|e| Error::Invalid {
                what: format!("`{}`", ignore.display()),
                source: Box::new(e),
            })?;
            let excludes = matcher
                .rules()
                .iter()
                .map(|r| r.text().to_string())
                .collect();
            Ok((real, Some(Arc::new(matcher)), excludes))
        }
        Err(_) => Ok((real, None, Vec::new())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(spec: &str) -> (String, NamedContextSource) {
        parse_build_context(spec).unwrap()
    }

    #[test]
    fn values_of_each_kind() {
        assert_eq!(
            parse("foo=./dir"),
            ("foo".into(), NamedContextSource::Dir("./dir".into()))
        );
        // An unknown scheme is a path to buildx.
        assert_eq!(
            parse("foo=bogus://x"),
            ("foo".into(), NamedContextSource::Dir("bogus://x".into()))
        );
        assert_eq!(
            parse("docker.io/library/busybox:latest=docker-image://busybox:bare"),
            (
                "busybox".into(),
                NamedContextSource::Image("busybox:bare".into())
            )
        );
        assert_eq!(
            parse("alpine:3=docker-image://busybox@sha256:e913d75debaa05f63f5a27b72bf7ceb7875c27a6acd91be20cdf9d7ae6618107").1,
            NamedContextSource::Image(
                "busybox@sha256:e913d75debaa05f63f5a27b72bf7ceb7875c27a6acd91be20cdf9d7ae6618107"
                    .into()
            )
        );
        assert_eq!(
            parse("foo=target:Build").1,
            NamedContextSource::Stage("build".into())
        );
        assert_eq!(
            parse("foo=https://example.com/r.git#main").1,
            NamedContextSource::Git("https://example.com/r.git#main".into())
        );
        assert_eq!(
            parse("foo=git@example.com:r.git").1,
            NamedContextSource::Git("git@example.com:r.git".into())
        );
    }

    #[test]
    fn oci_layout_tag_and_digest() {
        let d = "sha256:e913d75debaa05f63f5a27b72bf7ceb7875c27a6acd91be20cdf9d7ae6618107";
        assert_eq!(
            parse("foo=oci-layout:///tmp/lay").1,
            NamedContextSource::OciLayout {
                path: "/tmp/lay".into(),
                tag: None,
                digest: None
            }
        );
        assert_eq!(
            parse(&format!("foo=oci-layout:///tmp/lay:v1@{d}")).1,
            NamedContextSource::OciLayout {
                path: "/tmp/lay".into(),
                tag: Some("v1".into()),
                digest: Some(d.into())
            }
        );
        assert!(parse_build_context("foo=oci-layout:///tmp/lay@sha256:00").is_err());
    }

    #[test]
    fn bad_values_say_what_is_wrong() {
        let e = |s: &str| parse_build_context(s).unwrap_err().to_string();
        assert_eq!(e("foo"), "invalid context value: foo, expected key=value");
        assert!(
            e("Foo=/tmp").starts_with("invalid context name Foo: ")
                && e("Foo=/tmp").contains("must be lowercase"),
            "{}",
            e("Foo=/tmp")
        );
        assert_eq!(
            parse("foo=https://example.com/x.tar.gz").1,
            NamedContextSource::Http("https://example.com/x.tar.gz".into())
        );
        assert!(e("foo=docker-image://Bad").contains("invalid context foo"));
    }
}
