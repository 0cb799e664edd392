//! COPY and ADD: local sources, URLs, Git repositories and heredocs, each a copy op into the
//! stage's filesystem.

use std::collections::BTreeMap;

use kiln_dockerfile::{CopyArgs, Instruction};
use kiln_llb::{CopyOp, GitOp, HttpOp, InlineFile, MkfileOp, NodeId, Op};
use kiln_oci::ImageConfig;

use super::{Converter, Stage, StageResult, one_line, working_dir};
use crate::path;
use crate::{ImageResolver, Result};

impl Converter<'_> {
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn copy(
        &mut self,
        ins: &Instruction,
        add: bool,
        copy: &CopyArgs,
        node: NodeId,
        image: &ImageConfig,
        env: &BTreeMap<String, String>,
        stages: &[Stage<'_>],
        index: usize,
        done: &[Option<StageResult>],
        label: &str,
        resolver: &dyn ImageResolver,
    ) -> Result<NodeId> {
        // --link changes only how BuildKit reuses the layer, never the files: same op here.
        // --exclude patterns are not expanded, as in BuildKit; they are checked here so a bad
        // one fails at its line.
        if let Err(e) = kiln_ignore::Matcher::new(&copy.exclude).and_then(|m| m.validate()) {
            return Err(self.located(ins, &format!("invalid --exclude pattern: {e}")));
        }
        // `--checksum`, `--keep-git-dir` and `--unpack` are ADD's only: on COPY the parser
        // refuses them as unknown flags, as BuildKit does.
        let mut sources = Vec::new();
        let mut urls = Vec::new();
        let mut gits = Vec::new();
        for s in &copy.sources {
            let s = self.expand(ins, s, env)?;
            if let Some(git) = crate::git_url::parse_git_ref(&s) {
                if !add {
                    return Err(self.located(ins, "source can't be a git ref for COPY"));
                }
                gits.push(git.map_err(|e| self.located(ins, &e.to_string()))?);
                continue;
            }
            if s.starts_with("http://") || s.starts_with("https://") {
                if !add {
                    return Err(self.located(ins, "source can't be a URL for COPY"));
                }
                urls.push(s);
            } else {
                sources.push(s);
            }
        }
        let checksum = match &copy.checksum {
            None => None,
            Some(c) => {
                let c = self.expand(ins, c, env)?;
                if copy.sources.len() + copy.heredocs.len() != 1 {
                    return Err(
                        self.located(ins, "checksum can't be specified for multiple sources")
                    );
                }
                if urls.is_empty() && gits.is_empty() {
                    return Err(self.located(ins, "checksum requires HTTP(S) or Git sources"));
                }
                if !gits.is_empty() {
                    if c.is_empty() || !c.chars().all(|ch| ch.is_ascii_hexdigit()) {
                        return Err(self.located(
                            ins,
                            &format!(
                                "invalid checksum `{c}` for a Git URL: expected a hex commit hash"
                            ),
                        ));
                    }
                } else if kiln_oci::parse_digest(&c).is_err() || !c.starts_with("sha256:") {
                    return Err(self.located(
                        ins,
                        &format!("invalid checksum `{c}`: only sha256:<hex> is supported"),
                    ));
                }
                Some(c)
            }
        };
        let unpack = match copy.unpack.as_deref() {
            None => None,
            Some(u) => Some(
                self.expand(ins, u, env)?
                    .parse::<bool>()
                    .map_err(|_| self.located(ins, &format!("invalid --unpack `{u}`")))?,
            ),
        };
        let dest = self.expand(ins, &copy.dest, env)?;
        let cwd = working_dir(image);
        let mut dest = path::copy_dest(&cwd, &dest);
        // Several sources need no directory destination: BuildKit copies each in turn with the
        // rules of one (onto a file path, the last wins), unlike the classic builder.
        if copy.dest.ends_with('/') && !dest.ends_with('/') {
            dest.push('/');
        }
        let chown = match &copy.chown {
            Some(c) => Some(self.expand(ins, c, env)?),
            None => None,
        };
        // BuildKit copies a --link layer (without --chmod) onto nothing, where no name can be
        // looked up: a user other than root or a group given by name fails the build
        // (moby/buildkit#2987; later BuildKit refuses it when parsing).
        if copy.link
            && copy.chmod.is_none()
            && let Some(c) = &chown
        {
            let (user, group) = c
                .split_once(':')
                .map_or((c.as_str(), None), |(u, g)| (u, Some(g)));
            let named = |s: &str| s.parse::<u32>().is_err();
            if (named(user) && user != "root") || group.is_some_and(named) {
                return Err(self.located(
                    ins,
                    &format!(
                        "invalid user index: -1: COPY --link cannot look up the names in --chown={c}; use numeric ids"
                    ),
                ));
            }
        }
        // Octal modes go in `chmod`; symbolic ones are kept as written and applied per file.
        let (chmod, chmod_symbolic) = match &copy.chmod {
            Some(c) => {
                let c = self.expand(ins, c, env)?;
                match kiln_llb::mode::Chmod::parse(&c) {
                    Ok(kiln_llb::mode::Chmod::Octal(m)) => (Some(m), None),
                    Ok(kiln_llb::mode::Chmod::Symbolic(_)) => (None, Some(c)),
                    Err(e) => return Err(self.located(ins, &e.to_string())),
                }
            }
            None => (None, None),
        };
        let source_node = match &copy.from {
            None => self.context(),
            Some(from) => {
                if has_variable(from) {
                    return Err(self.located(
                        ins,
                        "variable expansion is not supported for --from, define a new stage with \
                         FROM using ARG from global scope as a workaround",
                    ));
                }
                let from = self.expand(ins, from, env)?;
                self.copy_from_node(ins, &from, stages, index, done, resolver)
                    .await?
            }
        };
        let name = format!("{label} {}", one_line(&ins.original));
        let mut node = node;
        if !sources.is_empty() || (copy.heredocs.is_empty() && urls.is_empty() && gits.is_empty()) {
            let op = Op::Copy(CopyOp {
                sources,
                dest: dest.clone(),
                chown: chown.clone(),
                chmod,
                allow_wildcard: true,
                unpack: add && unpack != Some(false),
                exclude: copy.exclude.clone(),
                parents: copy.parents,
                chmod_symbolic: chmod_symbolic.clone(),
            });
            node = self.def.add(op, vec![node, source_node], name.clone());
        }
        // Each URL is downloaded into its own filesystem, then copied like a local file;
        // downloads are not extracted unless --unpack=true.
        for url in urls {
            let filename = url_filename(&url);
            let http = Op::Http(HttpOp {
                url: url.clone(),
                checksum: checksum.clone(),
                filename: filename.clone(),
            });
            let http = self
                .def
                .add(http, vec![], format!("{label} {}", one_line(&ins.original)));
            let op = Op::Copy(CopyOp {
                sources: vec![filename],
                dest: dest.clone(),
                chown: chown.clone(),
                chmod,
                allow_wildcard: false,
                unpack: unpack == Some(true),
                exclude: Vec::new(),
                parents: false,
                chmod_symbolic: chmod_symbolic.clone(),
            });
            node = self.def.add(op, vec![node, http], name.clone());
        }
        // Each repository is checked out into its own filesystem, whose root is copied into the
        // destination directory, as BuildKit does.
        if !gits.is_empty() {
            let keep_git_dir =
                match copy.keep_git_dir.as_deref() {
                    None => None,
                    Some(k) => Some(self.expand(ins, k, env)?.parse::<bool>().map_err(|_| {
                        self.located(ins, &format!("invalid --keep-git-dir `{k}`"))
                    })?),
                };
            for git in gits {
                let op = self.git_op(ins, git, keep_git_dir, checksum.as_deref())?;
                let git = self.def.add(op, vec![], name.clone());
                // Fetch errors are reported against the ADD line.
                self.locations.entry(git).or_insert(ins.location);
                let op = Op::Copy(CopyOp {
                    sources: vec![".".into()],
                    dest: dest.clone(),
                    chown: chown.clone(),
                    chmod,
                    allow_wildcard: false,
                    unpack: false,
                    exclude: copy.exclude.clone(),
                    parents: false,
                    chmod_symbolic: chmod_symbolic.clone(),
                });
                node = self.def.add(op, vec![node, git], name.clone());
            }
        }
        if !copy.heredocs.is_empty() {
            // Each body becomes a 0644 file named after its terminator, copied like a source.
            let mut files = Vec::new();
            for h in &copy.heredocs {
                let data = if h.expand {
                    self.expand_heredoc(ins, &h.content, env)?
                } else {
                    h.content.clone()
                };
                files.push(InlineFile {
                    path: h.name.clone(),
                    data,
                    mode: 0o644,
                });
            }
            let names = files.iter().map(|f| f.path.clone()).collect();
            let mkfile = self.def.add(
                Op::Mkfile(MkfileOp { files }),
                vec![],
                "preparing inline document",
            );
            let op = Op::Copy(CopyOp {
                sources: names,
                dest,
                chown,
                chmod,
                allow_wildcard: false,
                unpack: false,
                exclude: Vec::new(),
                parents: false,
                chmod_symbolic,
            });
            node = self.def.add(op, vec![node, mkfile], name);
        }
        Ok(node)
    }

    /// The Git source op of `ADD <git url>`: `--keep-git-dir` and `--checksum` must agree with
    /// the URL's own `keep-git-dir=` and `checksum=` when both are given.
    pub(super) fn git_op(
        &self,
        ins: &Instruction,
        git: crate::git_url::GitRef,
        keep_git_dir: Option<bool>,
        checksum: Option<&str>,
    ) -> Result<Op> {
        if let (Some(a), Some(b)) = (keep_git_dir, git.keep_git_dir)
            && a != b
        {
            return Err(self.located(ins, "inconsistent keep-git-dir configuration"));
        }
        if let (Some(a), Some(b)) = (checksum, git.checksum.as_deref())
            && a != b
        {
            return Err(self.located(ins, &format!("checksum mismatch `{a}` != `{b}`")));
        }
        let checksum = git.checksum.as_deref().or(checksum).map(str::to_string);
        if let Some(c) = &checksum
            && (c.is_empty() || !c.chars().all(|ch| ch.is_ascii_hexdigit()))
        {
            return Err(self.located(
                ins,
                &format!("invalid checksum `{c}` for a Git URL: expected a hex commit hash"),
            ));
        }
        Ok(Op::Git(GitOp {
            remote: git.remote,
            reference: git.reference,
            subdir: git.subdir,
            keep_git_dir: git.keep_git_dir.or(keep_git_dir).unwrap_or(false),
            checksum: checksum.map(|c| c.to_ascii_lowercase()),
            skip_submodules: git.submodules == Some(false),
            mtime_commit: git.mtime_commit,
        }))
    }
}

/// Whether a `--from` value would be expanded (`$` followed by anything), which BuildKit
/// refuses: the stages a build needs are found before any variable has a value.
pub(super) fn has_variable(from: &str) -> bool {
    from.find('$').is_some_and(|i| i + 1 < from.len())
}

/// The file name ADD gives a download: the last segment of the URL path, `__unnamed__` when
/// there is none (as BuildKit does).
fn url_filename(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let path = rest.find('/').map_or("", |i| &rest[i..]);
    match path.trim_end_matches('/').rsplit('/').next() {
        Some(base) if !base.is_empty() && base != "." => base.to_string(),
        _ => "__unnamed__".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_variables() {
        assert!(has_variable("$X"));
        assert!(has_variable("${X}"));
        assert!(has_variable("a$b"));
        assert!(!has_variable("build"));
        assert!(!has_variable("a$"));
    }

    #[test]
    fn url_file_names() {
        assert_eq!(
            url_filename("https://example.com/a/b.tar.gz?x=1"),
            "b.tar.gz"
        );
        assert_eq!(url_filename("http://example.com/dir/"), "dir");
        assert_eq!(url_filename("http://example.com"), "__unnamed__");
        assert_eq!(url_filename("http://example.com/"), "__unnamed__");
    }
}
