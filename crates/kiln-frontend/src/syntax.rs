//! The `# syntax=` directive. BuildKit pulls the named frontend image and runs it; kiln has one
//! frontend built in, the Dockerfile language of BuildKit v0.32.2's own frontend (labs features
//! included), and runs Docker's Dockerfile frontend images, whatever their tag, with it.

/// What kiln makes of a `# syntax=` value.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Syntax {
    /// Docker's Dockerfile frontend, run by the built-in one; `Some` is a warning for a pinned
    /// version, whose own features the built-in frontend may not match exactly.
    Builtin(Option<String>),
    /// Any other image: a frontend kiln cannot run.
    Foreign,
}

/// The repositories of Docker's Dockerfile frontend.
const DOCKERFILE_FRONTENDS: [&str; 2] = ["docker/dockerfile", "docker/dockerfile-upstream"];

/// Tags that follow the newest release (`1`, `latest`, `labs`, `1-labs`, `master`...): the
/// built-in frontend is that release, so there is nothing to say.
fn is_floating(tag: &str) -> bool {
    let version = tag.strip_suffix("-labs").unwrap_or(tag);
    matches!(
        version,
        "" | "1" | "latest" | "labs" | "master" | "master-labs"
    )
}

pub(crate) fn classify(syntax: &str) -> Syntax {
    let (name, digest) = match syntax.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (syntax, None),
    };
    // A `:` after the last `/` starts the tag (one before it is a registry port).
    let (repo, tag) = match name.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r, t),
        _ => (name, ""),
    };
    let repo = ["docker.io/", "index.docker.io/", "registry-1.docker.io/"]
        .iter()
        .find_map(|p| repo.strip_prefix(p))
        .unwrap_or(repo);
    if !DOCKERFILE_FRONTENDS.contains(&repo) {
        return Syntax::Foreign;
    }
    if digest.is_none() && is_floating(tag) {
        return Syntax::Builtin(None);
    }
    Syntax::Builtin(Some(format!(
        "`# syntax={syntax}` is run by kiln's built-in Dockerfile frontend, not that image: \
         it has the features of docker/dockerfile:1-labs as in BuildKit v0.32.2, whatever the \
         pinned version"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockerfile_frontends_are_builtin() {
        for s in [
            "docker/dockerfile:1",
            "docker/dockerfile",
            "docker/dockerfile:labs",
            "docker/dockerfile:1-labs",
            "docker.io/docker/dockerfile:latest",
            "docker/dockerfile-upstream:master",
        ] {
            assert_eq!(classify(s), Syntax::Builtin(None), "{s}");
        }
        for s in [
            "docker/dockerfile:1.4",
            "docker.io/docker/dockerfile:1.7-labs",
            "docker/dockerfile:1.9.0",
            "docker/dockerfile@sha256:4b4a8c6e",
            "index.docker.io/docker/dockerfile:1.2",
        ] {
            let Syntax::Builtin(Some(w)) = classify(s) else {
                panic!("{s} should be built in with a warning")
            };
            assert!(w.contains(s), "{w}");
        }
    }

    #[test]
    fn other_images_are_foreign() {
        for s in [
            "example.com/my/frontend:1",
            "tonistiigi/dockerfile:1",
            "localhost:5000/docker/dockerfile:1",
            "docker/dockerfilex:1",
        ] {
            assert_eq!(classify(s), Syntax::Foreign, "{s}");
        }
    }
}
