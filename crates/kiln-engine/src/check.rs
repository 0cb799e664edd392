//! `kiln build --check`: parse and lint a Dockerfile without building anything.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use kiln_oci::Platform;

use crate::{Error, Result, io};

pub struct CheckRequest<'a> {
    pub context: &'a Path,
    /// The Dockerfile; `None` means `<context>/Dockerfile`.
    pub dockerfile: Option<&'a Path>,
    pub build_args: &'a BTreeMap<String, String>,
    pub target: Option<&'a str>,
    pub platform: Option<&'a Platform>,
    /// The Dockerfile's text when read from stdin (`-f -`).
    pub dockerfile_text: Option<&'a str>,
}

/// What `--check` prints, and how many warnings it found.
pub struct CheckReport {
    pub text: String,
    pub warnings: usize,
}

/// Lints every stage, as BuildKit's `--call=check` does: no registry access, nothing built.
/// `json`: the report as `--call check,format=json` prints it.
pub fn check(req: &CheckRequest<'_>, json: bool) -> Result<CheckReport> {
    if !req.context.exists()
        && req
            .context
            .to_str()
            .and_then(kiln_frontend::parse_git_ref)
            .is_some()
    {
        return Err(Error::Io {
            what: "`--check` of a Git URL context is not supported yet".into(),
            source: std::io::ErrorKind::Unsupported.into(),
        });
    }
    let (name, source) = read_dockerfile(req)?;
    let ignore_path = req.context.join(".dockerignore");
    let ignore =
        match std::fs::read_to_string(&ignore_path) {
            Ok(text) => Some(kiln_ignore::Matcher::from_dockerignore(&text).map_err(|e| {
                Error::Invalid {
                    what: format!("`{}`", ignore_path.display()),
                    source: Box::new(e),
                }
            })?),
            Err(_) => None,
        };
    let dockerfile = parse(&name, &source)?;
    let opts = kiln_frontend::LintOptions {
        build_args: Some(req.build_args),
        target: req.target,
        platform: req.platform,
        ignore: ignore.as_ref(),
        images: None,
        all_stages: true,
    };
    let report = kiln_frontend::lint(&dockerfile, &source, &opts).map_err(|e| Error::Invalid {
        what: "check options".into(),
        source: Box::new(e),
    })?;
    if json {
        return Ok(CheckReport {
            warnings: report.warnings.len(),
            text: report.to_json(&name, &source),
        });
    }
    let mut text = String::new();
    if report.warnings.is_empty() {
        text.push_str("Check complete, no warnings found.\n");
    } else {
        for w in &report.warnings {
            text.push('\n');
            text.push_str(&w.render(&name, &source));
        }
        let n = report.warnings.len();
        let verb = if n == 1 {
            "warning has"
        } else {
            "warnings have"
        };
        let _ = writeln!(text, "Check complete, {n} {verb} been found!");
    }
    Ok(CheckReport {
        warnings: report.warnings.len(),
        text,
    })
}

/// `--call outline` or `--call targets`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subrequest {
    Outline,
    Targets,
}

/// What `--call outline|targets` prints, as text or (`format=json`) JSON, as buildx does.
/// Like `--check`, only the Dockerfile is read: nothing is resolved or built.
pub fn subrequest(req: &CheckRequest<'_>, what: Subrequest, json: bool) -> Result<String> {
    let (name, source) = read_dockerfile(req)?;
    let dockerfile = parse(&name, &source)?;
    Ok(match what {
        Subrequest::Targets => {
            let t = kiln_frontend::targets(&dockerfile, &source);
            if json { t.to_json() } else { t.to_text() }
        }
        Subrequest::Outline => {
            let o = kiln_frontend::outline(&dockerfile, &source, req.build_args, req.target)
                .map_err(Error::Usage)?;
            if json { o.to_json() } else { o.to_text() }
        }
    })
}

/// The Dockerfile's name (for messages) and text: given, or read from `-f` or the context.
fn read_dockerfile(req: &CheckRequest<'_>) -> Result<(String, String)> {
    let path = req
        .dockerfile
        .map(Path::to_path_buf)
        .unwrap_or_else(|| req.context.join("Dockerfile"));
    let name = path
        .file_name()
        .map_or_else(|| "Dockerfile".into(), |n| n.to_string_lossy().into_owned());
    let source = match req.dockerfile_text {
        Some(text) => text.to_string(),
        None => std::fs::read_to_string(&path).map_err(io(format!(
            "failed to read the Dockerfile `{}`",
            path.display()
        )))?,
    };
    Ok((name, source))
}

fn parse(name: &str, source: &str) -> Result<kiln_dockerfile::Dockerfile> {
    kiln_dockerfile::parse(source).map_err(|e| {
        Error::Frontend(kiln_frontend::Error::Dockerfile {
            rendered: e.render(name, source),
        })
    })
}
