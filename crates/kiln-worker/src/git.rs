//! Git sources, through the `git` command line as BuildKit does: `git ls-remote` resolves the
//! ref to a commit (the cache key), then a shallow fetch of that ref into a fresh repository, a
//! detached checkout, submodules, and the result: the tree (or a subdir of it), without `.git`
//! unless it is kept. Runs with the user's git and ssh configuration (credential helpers,
//! `~/.ssh/config`, the ssh agent), never prompting.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use kiln_llb::GitOp;

/// How much of git's stderr an error keeps.
const STDERR_TAIL: usize = 2048;

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("failed to run `git {command}` (is git installed?)")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`git {command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("repository does not contain ref `{reference}`")]
    UnknownRef { reference: String },
    #[error("the repository has no default branch (HEAD)")]
    NoHead,
    #[error("expected checksum to match {expected}, got {actual}")]
    Checksum { expected: String, actual: String },
    #[error("`{reference}` moved while it was fetched: expected {expected}, got {actual}")]
    Moved {
        reference: String,
        expected: String,
        actual: String,
    },
    #[error("subdir `{0}` is not a directory in the repository")]
    Subdir(String),
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

type Result<T> = std::result::Result<T, GitError>;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> GitError {
    let what = what.into();
    move |source| GitError::Io { what, source }
}

/// What a ref named in a Git op stands for at the remote now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The commit the checkout will have (an annotated tag is peeled).
    pub commit: String,
    /// The full ref to fetch (`refs/heads/main`), or None when the op names a commit.
    pub full_ref: Option<String>,
    /// For an annotated tag, the tag object, which `--checksum` may name instead of the commit
    /// (BuildKit accepts either).
    pub tag_object: Option<String>,
}

/// A full sha-1 or sha-256 commit id.
pub fn is_commit_sha(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `remote` with any password or token in it replaced, for messages and the kept `.git/config`.
pub fn redact(remote: &str) -> String {
    if let Ok(mut u) = url::Url::parse(remote)
        && u.password().is_some()
    {
        let _ = u.set_password(Some("xxxxx"));
        return u.to_string();
    }
    remote.to_string()
}

/// Runs `git ARGS` in `cwd` and returns its stdout; failures keep the tail of stderr.
async fn git(cwd: &Path, args: &[&str]) -> Result<String> {
    let command = args.join(" ");
    let mut cmd = tokio::process::Command::new("git");
    // Submodules may not point at files on this machine, as in BuildKit.
    cmd.args(["-c", "protocol.file.allow=user"])
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("LC_ALL", "C")
        .kill_on_drop(true);
    // ssh must fail rather than ask for a password or a host key on the terminal.
    if std::env::var_os("GIT_SSH_COMMAND").is_none() && std::env::var_os("GIT_SSH").is_none() {
        cmd.env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes");
    }
    let out = cmd.output().await.map_err(|source| GitError::Spawn {
        command: command.clone(),
        source,
    })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stderr = stderr.trim();
        let start = stderr
            .char_indices()
            .rev()
            .nth(STDERR_TAIL)
            .map_or(0, |(i, _)| i);
        return Err(GitError::Failed {
            command,
            status: out.status,
            stderr: stderr[start..].to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Like [`git`], but retried without `--depth=1` when the remote cannot serve a shallow fetch
/// (the dumb HTTP protocol), as BuildKit does.
async fn git_maybe_shallow(cwd: &Path, args: &[&str]) -> Result<String> {
    match git(cwd, args).await {
        Err(GitError::Failed { stderr, .. })
            if (stderr.contains("depth") || stderr.contains("shallow"))
                && args.contains(&"--depth=1") =>
        {
            let deep: Vec<&str> = args.iter().copied().filter(|a| *a != "--depth=1").collect();
            git(cwd, &deep).await
        }
        r => r,
    }
}

/// Resolves the op's ref to a commit with `git ls-remote` (nothing is fetched), and checks the
/// op's checksum against it. `cwd` is any directory outside a repository.
pub async fn resolve(op: &GitOp, cwd: &Path) -> Result<Resolved> {
    let reference = op.reference.as_str();
    let resolved = if is_commit_sha(reference) {
        check_checksum(op, reference, None)?;
        return Ok(Resolved {
            commit: reference.to_string(),
            full_ref: None,
            tag_object: None,
        });
    } else if reference.is_empty() {
        let out = git(cwd, &["ls-remote", "--symref", "--", &op.remote, "HEAD"]).await?;
        let mut full_ref = None;
        let mut commit = None;
        for line in out.lines() {
            if let Some(rest) = line.strip_prefix("ref: ") {
                full_ref = rest.split('\t').next().map(str::to_string);
            } else if let Some((sha, "HEAD")) = line.split_once('\t') {
                commit = Some(sha.to_string());
            }
        }
        let commit = commit.ok_or(GitError::NoHead)?;
        Resolved {
            commit,
            full_ref,
            tag_object: None,
        }
    } else {
        let peeled = format!("{reference}^{{}}");
        let out = git(cwd, &["ls-remote", "--", &op.remote, reference, &peeled]).await?;
        pick_ref(reference, &out)?
    };
    check_checksum(op, &resolved.commit, resolved.tag_object.clone())?;
    if !is_commit_sha(&resolved.commit) {
        return Err(GitError::UnknownRef {
            reference: reference.to_string(),
        });
    }
    Ok(resolved)
}

fn check_checksum(op: &GitOp, commit: &str, tag: Option<String>) -> Result<()> {
    let Some(expected) = &op.checksum else {
        return Ok(());
    };
    if commit.starts_with(expected.as_str())
        || tag
            .as_deref()
            .is_some_and(|t| t.starts_with(expected.as_str()))
    {
        return Ok(());
    }
    Err(GitError::Checksum {
        expected: expected.clone(),
        actual: match tag {
            Some(t) => format!("{commit} or {t}"),
            None => commit.to_string(),
        },
    })
}

/// Picks the ref `git checkout` would from `ls-remote` output: the exact `refs/…` name, then a
/// branch, then a tag (peeled to its commit).
fn pick_ref(reference: &str, ls_remote: &str) -> Result<Resolved> {
    let bare = reference.strip_prefix("refs/").unwrap_or(reference);
    let exact = format!("refs/{bare}");
    let head = format!("refs/heads/{}", bare.strip_prefix("heads/").unwrap_or(bare));
    let tag = format!("refs/tags/{}", bare.strip_prefix("tags/").unwrap_or(bare));
    let peeled = format!("{tag}^{{}}");
    let find = |name: &str| {
        ls_remote.lines().find_map(|l| {
            let (sha, r) = l.split_once('\t')?;
            (r == name).then(|| sha.to_string())
        })
    };
    let found = find(&exact)
        .map(|sha| (exact.clone(), sha))
        .or_else(|| find(&head).map(|sha| (head.clone(), sha)))
        .or_else(|| find(&tag).map(|sha| (tag.clone(), sha)));
    let Some((full_ref, sha)) = found else {
        return Err(GitError::UnknownRef {
            reference: reference.to_string(),
        });
    };
    // An annotated tag: the checkout has the commit it points at.
    let (commit, tag_object) = match find(&peeled) {
        Some(commit) if full_ref == tag => (commit, Some(sha)),
        _ => (sha, None),
    };
    Ok(Resolved {
        commit,
        full_ref: Some(full_ref),
        tag_object,
    })
}

/// Fetches and checks out `resolved` into `work` (created, empty, on the same filesystem as
/// where the caller will move the result). Returns the directory holding the result: `work`
/// itself, or the op's subdir inside it.
pub async fn checkout(op: &GitOp, resolved: &Resolved, work: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(work).map_err(io(format!("creating `{}`", work.display())))?;
    git(work, &["-c", "init.defaultBranch=master", "init", "-q"]).await?;
    git(work, &["remote", "add", "origin", &op.remote]).await?;
    match &resolved.full_ref {
        Some(full) => {
            // A local ref of the same name, so a kept `.git` knows the branch or tag.
            let spec = format!("+{full}:{full}");
            let args = [
                "fetch",
                "-q",
                "--no-tags",
                "--update-head-ok",
                "--depth=1",
                "origin",
                &spec,
            ];
            git_maybe_shallow(work, &args).await?;
        }
        None => {
            let by_sha = [
                "fetch",
                "-q",
                "--no-tags",
                "--depth=1",
                "origin",
                &resolved.commit,
            ];
            // A server may refuse a want that is not a ref tip: then fetch everything.
            if git_maybe_shallow(work, &by_sha).await.is_err() {
                git(
                    work,
                    &[
                        "fetch",
                        "-q",
                        "--tags",
                        "origin",
                        "+refs/heads/*:refs/remotes/origin/*",
                    ],
                )
                .await?;
            }
        }
    }
    let verify = format!("{}^{{commit}}", resolved.commit);
    let fetched = git(work, &["rev-parse", "-q", "--verify", &verify])
        .await
        .map_err(|_| GitError::UnknownRef {
            reference: resolved.commit.clone(),
        })?;
    if let Some(full) = &resolved.full_ref {
        let at = git(
            work,
            &["rev-parse", "-q", "--verify", &format!("{full}^{{commit}}")],
        )
        .await?;
        if at.trim() != resolved.commit {
            return Err(GitError::Moved {
                reference: full.clone(),
                expected: resolved.commit.clone(),
                actual: at.trim().to_string(),
            });
        }
    }
    let commit = fetched.trim().to_string();
    git(
        work,
        &[
            "-c",
            "advice.detachedHead=false",
            "checkout",
            "-q",
            "--detach",
            &commit,
        ],
    )
    .await?;
    if !op.skip_submodules && work.join(".gitmodules").exists() {
        git_maybe_shallow(
            work,
            &["submodule", "update", "--init", "--recursive", "--depth=1"],
        )
        .await?;
    }
    let keep = op.keep_git_dir && op.subdir.is_empty();
    if keep {
        // No credentials in the image.
        git(work, &["remote", "set-url", "origin", &redact(&op.remote)]).await?;
        git(work, &["reflog", "expire", "--all", "--expire=now"]).await?;
        let _ = std::fs::remove_file(work.join(".git/FETCH_HEAD"));
    }
    let mtime = if op.mtime_commit {
        let t = git(work, &["log", "-1", "--format=%ct", "HEAD"]).await?;
        t.trim().parse::<i64>().ok()
    } else {
        None
    };
    let result = if op.subdir.is_empty() {
        work.to_path_buf()
    } else {
        let dir = crate::fsutil::resolve_in_root(work, &op.subdir, true)
            .map_err(io(format!("resolving subdir `{}`", op.subdir)))?;
        if !std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
            return Err(GitError::Subdir(op.subdir.clone()));
        }
        dir
    };
    let root = result.clone();
    tokio::task::spawn_blocking(move || finish_tree(&root, keep, mtime))
        .await
        .map_err(|e| GitError::Io {
            what: "normalising the checkout".into(),
            source: std::io::Error::other(e),
        })?
        .map_err(io("normalising the checkout"))?;
    Ok(result)
}

/// Makes the tree what git describes and no more: `.git` entries removed unless kept, modes
/// 0644/0755 from git's executable bit whatever the umask, mtimes set to the commit time when
/// asked.
fn finish_tree(root: &Path, keep_git: bool, mtime: Option<i64>) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut stack = vec![root.to_path_buf()];
    let mut dirs = Vec::new();
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path)?;
            let is_git = entry.file_name() == ".git";
            if is_git && keep_git {
                continue;
            }
            if is_git {
                if meta.is_dir() {
                    std::fs::remove_dir_all(&path)?;
                } else {
                    std::fs::remove_file(&path)?;
                }
                continue;
            }
            if meta.is_dir() {
                stack.push(path.clone());
                dirs.push(path);
            } else if meta.is_file() {
                let mode = if meta.permissions().mode() & 0o100 != 0 {
                    0o755
                } else {
                    0o644
                };
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
                if let Some(t) = mtime {
                    filetime::set_file_mtime(&path, filetime::FileTime::from_unix_time(t, 0))?;
                }
            } else if let Some(t) = mtime {
                let t = filetime::FileTime::from_unix_time(t, 0);
                filetime::set_symlink_file_times(&path, t, t)?;
            }
        }
    }
    dirs.push(root.to_path_buf());
    // Directories last, deepest first, so setting a child does not move a parent's mtime.
    for dir in dirs.iter().rev() {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
        if let Some(t) = mtime {
            filetime::set_file_mtime(dir, filetime::FileTime::from_unix_time(t, 0))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "1111111111111111111111111111111111111111";
    const B: &str = "2222222222222222222222222222222222222222";
    const C: &str = "3333333333333333333333333333333333333333";

    #[test]
    fn picks_refs_as_git_checkout_would() {
        let out = format!(
            "{A}\trefs/heads/v1\n{B}\trefs/tags/v1\n{C}\trefs/tags/v1^{{}}\n{A}\trefs/heads/x/main\n"
        );
        // A branch wins over a tag of the same name.
        let r = pick_ref("v1", &out).unwrap();
        assert_eq!(
            (r.commit.as_str(), r.full_ref.as_deref()),
            (A, Some("refs/heads/v1"))
        );
        // An annotated tag is peeled to its commit.
        let r = pick_ref("refs/tags/v1", &out).unwrap();
        assert_eq!(
            (r.commit.as_str(), r.full_ref.as_deref()),
            (C, Some("refs/tags/v1"))
        );
        let r = pick_ref("tags/v1", &out).unwrap();
        assert_eq!(r.commit, C);
        // `main` does not match `refs/heads/x/main`.
        assert!(matches!(
            pick_ref("main", &out),
            Err(GitError::UnknownRef { .. })
        ));
        let out = format!("{B}\trefs/pull/42/head\n");
        let r = pick_ref("pull/42/head", &out).unwrap();
        assert_eq!(r.full_ref.as_deref(), Some("refs/pull/42/head"));
    }

    #[test]
    fn checksum_is_a_prefix_of_the_commit_or_tag() {
        let op = |c: &str| GitOp {
            remote: "git://h/r".into(),
            reference: String::new(),
            subdir: String::new(),
            keep_git_dir: false,
            checksum: Some(c.into()),
            skip_submodules: false,
            mtime_commit: false,
        };
        assert!(check_checksum(&op("1111"), A, None).is_ok());
        assert!(check_checksum(&op(A), A, None).is_ok());
        assert!(check_checksum(&op("2222"), A, Some(B.into())).is_ok());
        let e = check_checksum(&op("3333"), A, None).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("expected checksum to match 3333, got {A}")
        );
    }

    #[test]
    fn commit_shas_and_redaction() {
        assert!(is_commit_sha(A));
        assert!(is_commit_sha(&"ab".repeat(32)));
        assert!(!is_commit_sha("1111"));
        assert!(!is_commit_sha(&"A".repeat(40)));
        assert_eq!(
            redact("https://user:token@host/r.git"),
            "https://user:xxxxx@host/r.git"
        );
        assert_eq!(redact("git@host:r.git"), "git@host:r.git");
    }

    #[test]
    fn finish_tree_drops_git_dirs_and_normalises_modes() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::create_dir_all(r.join(".git/objects")).unwrap();
        std::fs::create_dir_all(r.join("sub")).unwrap();
        std::fs::write(r.join("sub/.git"), "gitdir: ../.git/modules/sub\n").unwrap();
        std::fs::write(r.join("run.sh"), "").unwrap();
        std::fs::set_permissions(r.join("run.sh"), std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(r.join("sub/f"), "").unwrap();
        std::fs::set_permissions(r.join("sub/f"), std::fs::Permissions::from_mode(0o600)).unwrap();
        finish_tree(r, false, Some(1_000_000_000)).unwrap();
        assert!(!r.join(".git").exists() && !r.join("sub/.git").exists());
        let mode = |p: &str| std::fs::metadata(r.join(p)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(
            (mode("run.sh"), mode("sub/f"), mode("sub")),
            (0o755, 0o644, 0o755)
        );
        let mtime = std::fs::metadata(r.join("sub")).unwrap();
        assert_eq!(
            filetime::FileTime::from_last_modification_time(&mtime).unix_seconds(),
            1_000_000_000
        );
    }
}
