//! Git URLs as BuildKit's Dockerfile frontend recognises them, for `ADD <git url>` and for a Git
//! build context: `https://host/repo.git`, `http://…/x.git`, `git://…`, `ssh://…` and scp-like
//! `user@host:path`, with a `#ref:subdir` fragment or the query form
//! `?ref=…&branch=…&tag=…&subdir=…&checksum=…&keep-git-dir=…&submodules=…&mtime=…`.

use std::collections::BTreeMap;

/// A parsed Git URL: what to fetch and which part of it to use.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GitRef {
    /// The URL handed to `git`, without fragment and query.
    pub remote: String,
    /// Branch, tag, ref or commit; empty for the default branch.
    pub reference: String,
    /// Directory inside the repository, cleaned and relative; empty for the root.
    pub subdir: String,
    /// `checksum=`/`commit=`: a hex prefix of the expected commit.
    pub checksum: Option<String>,
    pub keep_git_dir: Option<bool>,
    pub submodules: Option<bool>,
    /// `mtime=commit`: files get the commit time rather than the checkout time.
    pub mtime_commit: bool,
}

impl GitRef {
    /// The remote as progress may show it: a password in the URL replaced by `xxxxx`.
    pub fn shown_remote(&self) -> String {
        if let Ok(mut u) = url::Url::parse(&self.remote)
            && u.password().is_some()
        {
            let _ = u.set_password(Some("xxxxx"));
            return u.to_string();
        }
        self.remote.clone()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid Git URL `{url}`: {reason}")]
pub struct GitUrlError {
    pub url: String,
    pub reason: String,
}

/// Parses `src` as a Git URL. `None`: not a Git URL (a local path or a plain HTTP download);
/// `Some(Err)`: a Git URL with a malformed fragment or query.
pub fn parse_git_ref(src: &str) -> Option<Result<GitRef, GitUrlError>> {
    if src.starts_with("./") || src.starts_with("../") {
        return None;
    }
    let (before_fragment, fragment) = match src.split_once('#') {
        Some((b, f)) => (b, Some(f)),
        None => (src, None),
    };
    let (remote, query) = match before_fragment.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (before_fragment, None),
    };
    if let Some((scheme, rest)) = remote.split_once("://") {
        if scheme.is_empty() || !scheme.chars().all(|c| c.is_ascii_alphanumeric()) {
            return None;
        }
        let scheme = scheme.to_ascii_lowercase();
        if !matches!(scheme.as_str(), "http" | "https" | "ssh" | "git") {
            return None;
        }
        // An HTTP(S) URL is a repository only when its path ends in `.git`; otherwise ADD
        // downloads it as a file.
        if matches!(scheme.as_str(), "http" | "https") {
            let path = rest.find('/').map_or("", |i| &rest[i..]);
            if !path.ends_with(".git") {
                return None;
            }
        }
        if url::Url::parse(remote).is_err() {
            return Some(Err(error(src, "not a valid URL")));
        }
    } else if !is_scp_like(remote) {
        return None;
    }
    Some(build(src, remote, query, fragment))
}

/// `user@host:path`, as git's scp-like syntax (the user part is required, as in BuildKit).
fn is_scp_like(s: &str) -> bool {
    let Some((user, rest)) = s.split_once('@') else {
        return false;
    };
    let Some((host, _path)) = rest.split_once(':') else {
        return false;
    };
    !user.is_empty()
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
}

fn error(url: &str, reason: impl Into<String>) -> GitUrlError {
    GitUrlError {
        url: url.to_string(),
        reason: reason.into(),
    }
}

fn build(
    src: &str,
    remote: &str,
    query: Option<&str>,
    fragment: Option<&str>,
) -> Result<GitRef, GitUrlError> {
    let mut r = GitRef {
        remote: remote.to_string(),
        ..Default::default()
    };
    if let Some(f) = fragment.filter(|f| !f.is_empty()) {
        let (reference, subdir) = f.split_once(':').unwrap_or((f, ""));
        r.reference = reference.to_string();
        r.subdir = clean_subdir(subdir);
    }
    let Some(query) = query.filter(|q| !q.is_empty()) else {
        return Ok(r);
    };
    let mut values: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        if values.insert(k.to_string(), v.to_string()).is_some() {
            return Err(error(src, format!("query `{k}` has multiple values")));
        }
    }
    let flag = |k: &str, v: &str| -> Result<bool, GitUrlError> {
        match v {
            "" | "1" | "true" | "TRUE" | "True" | "t" | "T" => Ok(true),
            "0" | "false" | "FALSE" | "False" | "f" | "F" => Ok(false),
            _ => Err(error(src, format!("invalid {k} value `{v}`"))),
        }
    };
    let (mut tag, mut branch) = (None, None);
    for (k, v) in &values {
        if v.is_empty()
            && !matches!(
                k.as_str(),
                "submodules" | "keep-git-dir" | "fetch-by-commit"
            )
        {
            return Err(error(src, format!("query `{k}` has no value")));
        }
        match k.as_str() {
            "ref" => set_once(src, &mut r.reference, v, "ref")?,
            "tag" => tag = Some(v.clone()),
            "branch" => branch = Some(v.clone()),
            "subdir" => set_once(src, &mut r.subdir, &clean_subdir(v), "subdir")?,
            "checksum" | "commit" => r.checksum = Some(v.clone()),
            "keep-git-dir" => r.keep_git_dir = Some(flag(k, v)?),
            "submodules" => r.submodules = Some(flag(k, v)?),
            "mtime" => match v.as_str() {
                "commit" => r.mtime_commit = true,
                "checkout" => r.mtime_commit = false,
                _ => {
                    return Err(error(
                        src,
                        format!("invalid mtime value `{v}` (must be \"checkout\" or \"commit\")"),
                    ));
                }
            },
            "fetch-by-commit" => {
                return Err(error(src, "query `fetch-by-commit` is not supported yet"));
            }
            _ => return Err(error(src, format!("unexpected query `{k}`"))),
        }
    }
    if tag.is_some() && branch.is_some() {
        return Err(error(src, "branch conflicts with tag"));
    }
    if let Some(t) = tag {
        let full = prefixed("refs/tags/", &t);
        set_once(src, &mut r.reference, &full, "ref")?;
    }
    if let Some(b) = branch {
        let full = prefixed("refs/heads/", &b);
        set_once(src, &mut r.reference, &full, "ref")?;
    }
    Ok(r)
}

fn prefixed(prefix: &str, name: &str) -> String {
    if name.starts_with(prefix) {
        name.to_string()
    } else {
        format!("{prefix}{name}")
    }
}

/// Sets a field from the query unless the fragment already gave a different value.
fn set_once(src: &str, field: &mut String, value: &str, what: &str) -> Result<(), GitUrlError> {
    if !field.is_empty() && field != value {
        return Err(error(
            src,
            format!("{what} conflicts: `{field}` vs `{value}`"),
        ));
    }
    *field = value.to_string();
    Ok(())
}

/// A subdir as a clean relative path (`/a/../b/` → `b`, `/` → ``), never above the root.
fn clean_subdir(subdir: &str) -> String {
    crate::path::clean(&format!("/{subdir}"))
        .trim_start_matches('/')
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn git(s: &str) -> GitRef {
        parse_git_ref(s)
            .unwrap_or_else(|| panic!("{s} should be a Git URL"))
            .unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn recognises_git_urls_as_buildkit_does() {
        for s in [
            "https://github.com/moby/buildkit.git",
            "http://127.0.0.1:8080/repo.git",
            "git://127.0.0.1:9418/repo.git",
            "git://host/repo",
            "ssh://git@github.com/moby/buildkit",
            "git@github.com:moby/buildkit.git",
            "deploy_key-1@example.com:org/repo",
            "https://github.com/moby/buildkit.git#v0.10",
            "HTTPS://github.com/moby/buildkit.git",
        ] {
            assert!(matches!(parse_git_ref(s), Some(Ok(_))), "{s}");
        }
        for s in [
            "https://example.com/file.tar.gz",
            "https://example.com/repo.git/file",
            "dir/file",
            "./git@host:x",
            "../repo.git",
            "ftp://host/repo.git",
            "github.com/moby/buildkit",
            "host:path",
            "user@:path",
            ".",
        ] {
            assert!(parse_git_ref(s).is_none(), "{s}");
        }
    }

    #[test]
    fn fragment_gives_ref_and_subdir() {
        let r = git("https://github.com/moby/buildkit.git#v0.10.1:docs/dev");
        assert_eq!(r.remote, "https://github.com/moby/buildkit.git");
        assert_eq!(r.reference, "v0.10.1");
        assert_eq!(r.subdir, "docs/dev");
        let r = git("git@github.com:moby/buildkit.git#main");
        assert_eq!(r.remote, "git@github.com:moby/buildkit.git");
        assert_eq!((r.reference.as_str(), r.subdir.as_str()), ("main", ""));
        let r = git("git://h/r.git#:sub/../other/");
        assert_eq!((r.reference.as_str(), r.subdir.as_str()), ("", "other"));
        let r = git("git://h/r.git#main:/");
        assert_eq!(r.subdir, "");
        let r = git("git://h/r.git#main:../../etc");
        assert_eq!(r.subdir, "etc");
        assert_eq!(git("git://h/r.git#").reference, "");
    }

    #[test]
    fn shown_remotes_hide_passwords() {
        assert_eq!(
            git("https://u:secret@h/r.git").shown_remote(),
            "https://u:xxxxx@h/r.git"
        );
        assert_eq!(git("git@h:r.git").shown_remote(), "git@h:r.git");
    }

    #[test]
    fn query_form() {
        let r = git("https://h/r.git?branch=dev&subdir=app&keep-git-dir&submodules=false");
        assert_eq!(r.remote, "https://h/r.git");
        assert_eq!(r.reference, "refs/heads/dev");
        assert_eq!(r.subdir, "app");
        assert_eq!(r.keep_git_dir, Some(true));
        assert_eq!(r.submodules, Some(false));
        let r = git("https://h/r.git?tag=v1&checksum=abc123&mtime=commit");
        assert_eq!(r.reference, "refs/tags/v1");
        assert_eq!(r.checksum.as_deref(), Some("abc123"));
        assert!(r.mtime_commit);
        let r = git("git@h:r.git?ref=pull/42/head#pull/42/head:x");
        assert_eq!(r.remote, "git@h:r.git");
        assert_eq!(
            (r.reference.as_str(), r.subdir.as_str()),
            ("pull/42/head", "x")
        );
        assert_eq!(
            git("git://h/r?commit=deadbeef").checksum.as_deref(),
            Some("deadbeef")
        );
    }

    #[test]
    fn bad_queries_are_errors() {
        for (s, reason) in [
            (
                "https://h/r.git?branch=a&tag=b",
                "branch conflicts with tag",
            ),
            (
                "https://h/r.git?ref=a&ref=b",
                "query `ref` has multiple values",
            ),
            ("https://h/r.git#a?ref=b", ""),
            ("https://h/r.git?ref=b#a", "ref conflicts: `a` vs `b`"),
            ("https://h/r.git?subdir=", "query `subdir` has no value"),
            ("https://h/r.git?mtime=now", "invalid mtime value"),
            (
                "https://h/r.git?keep-git-dir=maybe",
                "invalid keep-git-dir value `maybe`",
            ),
            ("https://h/r.git?depth=1", "unexpected query `depth`"),
            ("https://h/r.git?fetch-by-commit", "not supported yet"),
        ] {
            match parse_git_ref(s) {
                Some(Err(e)) => assert!(e.to_string().contains(reason), "{s}: {e}"),
                // `#a?ref=b`: the `?` is part of the fragment, so the ref is `a?ref=b`.
                Some(Ok(r)) if reason.is_empty() => assert_eq!(r.reference, "a?ref=b"),
                other => panic!("{s}: {other:?}"),
            }
        }
    }
}
