//! A corpus case: its TOML file, the recording beside it, and the build inputs it describes
//! (context, Dockerfile, secrets) written out to a directory.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use serde::Deserialize;

/// The time every context entry gets (2021-01-01T00:00:00Z), so that what COPY keeps of it is
/// the same in every run and below [`super::DETERMINISTIC_BEFORE`].
pub const CONTEXT_MTIME: i64 = 1_609_459_200;

/// `tests/oracle/cases` in this repository.
pub fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/oracle/cases")
        .canonicalize()
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/oracle/cases"))
}

/// One `<name>.toml` (schema: tests/oracle/README.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Spec {
    pub description: String,
    pub dockerfile: String,
    #[serde(default)]
    pub args: BTreeMap<String, String>,
    pub target: Option<String>,
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    pub epoch: Option<i64>,
    pub dockerfile_name: Option<String>,
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    #[serde(default)]
    pub entry: Vec<Entry>,
    pub expect_error: Option<String>,
    pub xfail: Option<String>,
    /// Several platforms: one multi-platform build (`--platform a,b`), compared per platform.
    #[serde(default)]
    pub platforms: Vec<String>,
}

/// A context entry that `files` cannot express: a mode, a directory, a link.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub path: String,
    pub content: Option<String>,
    /// Binary content (an archive for ADD, say), base64.
    pub base64: Option<String>,
    pub mode: Option<u32>,
    #[serde(default)]
    pub dir: bool,
    pub symlink: Option<String>,
    pub hardlink: Option<String>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct Case {
    pub name: String,
    /// The `.toml` file.
    pub path: PathBuf,
    pub spec: Spec,
}

/// Where [`Case::materialize`] wrote a case's inputs.
#[derive(Debug)]
pub struct Workspace {
    pub context: PathBuf,
    /// The directory holding the Dockerfile (outside the context).
    pub dockerfile_dir: PathBuf,
    pub dockerfile: PathBuf,
    /// (id, file) for each secret.
    pub secrets: Vec<(String, PathBuf)>,
}

/// Every case in `dir`, sorted by name; only `names` when not empty (each must exist).
pub fn load_cases(dir: &Path, names: &[String]) -> Result<Vec<Case>> {
    let mut cases = Vec::new();
    let listing = std::fs::read_dir(dir)
        .with_context(|| format!("reading the corpus `{}`", dir.display()))?;
    for item in listing {
        let path = item?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .with_context(|| format!("case file name `{}`", path.display()))?
            .to_string();
        if !names.is_empty() && !names.contains(&name) {
            continue;
        }
        cases.push(Case::load(&path, name)?);
    }
    cases.sort_by(|a, b| a.name.cmp(&b.name));
    for name in names {
        ensure!(
            cases.iter().any(|c| &c.name == name),
            "no case `{name}` in `{}`",
            dir.display()
        );
    }
    Ok(cases)
}

impl Case {
    pub fn load(path: &Path, name: String) -> Result<Case> {
        ensure!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
            "case name `{name}` is not kebab case"
        );
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading `{}`", path.display()))?;
        let spec: Spec =
            toml::from_str(&text).with_context(|| format!("parsing `{}`", path.display()))?;
        for e in &spec.entry {
            let kinds = [
                e.content.is_some(),
                e.base64.is_some(),
                e.dir,
                e.symlink.is_some(),
                e.hardlink.is_some(),
            ];
            ensure!(
                kinds.iter().filter(|k| **k).count() == 1,
                "{}: entry `{}` needs exactly one of content, base64, dir, symlink, hardlink",
                path.display(),
                e.path
            );
            ensure!(
                e.mode.is_none() || e.content.is_some() || e.base64.is_some() || e.dir,
                "{}: entry `{}`: mode is for files and directories",
                path.display(),
                e.path
            );
        }
        Ok(Case {
            name,
            path: path.to_path_buf(),
            spec,
        })
    }

    /// `<name>.json` beside the case.
    pub fn recording_path(&self) -> PathBuf {
        self.path.with_extension("json")
    }

    /// The recorded result, if there is one.
    pub fn recording(&self) -> Result<Option<serde_json::Value>> {
        let path = self.recording_path();
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                Ok(Some(serde_json::from_str(&text).with_context(|| {
                    format!("parsing `{}`", path.display())
                })?))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading `{}`", path.display())),
        }
    }

    pub fn dockerfile_name(&self) -> &str {
        self.spec.dockerfile_name.as_deref().unwrap_or("Dockerfile")
    }

    /// Writes the context, the Dockerfile and the secrets under `dir` (which must exist).
    pub fn materialize(&self, dir: &Path) -> Result<Workspace> {
        let context = dir.join("context");
        let dockerfile_dir = dir.join("dockerfile");
        let secrets_dir = dir.join("secrets");
        for d in [&context, &dockerfile_dir, &secrets_dir] {
            std::fs::create_dir_all(d)?;
            set_mode(d, 0o755)?;
        }
        for (path, content) in &self.spec.files {
            let file = join_inside(&context, path)?;
            create_parents(&context, &file)?;
            std::fs::write(&file, content).with_context(|| format!("writing `{path}`"))?;
            set_mode(&file, 0o644)?;
        }
        for e in &self.spec.entry {
            let file = join_inside(&context, &e.path)?;
            create_parents(&context, &file)?;
            if let Some(content) = &e.content {
                std::fs::write(&file, content).with_context(|| format!("writing `{}`", e.path))?;
                set_mode(&file, e.mode.unwrap_or(0o644))?;
            } else if let Some(b64) = &e.base64 {
                use base64::Engine;
                let data = base64::engine::general_purpose::STANDARD
                    .decode(b64.split_whitespace().collect::<String>())
                    .with_context(|| format!("decoding `{}`", e.path))?;
                std::fs::write(&file, data).with_context(|| format!("writing `{}`", e.path))?;
                set_mode(&file, e.mode.unwrap_or(0o644))?;
            } else if e.dir {
                std::fs::create_dir_all(&file)?;
                set_mode(&file, e.mode.unwrap_or(0o755))?;
            } else if let Some(target) = &e.symlink {
                std::os::unix::fs::symlink(target, &file)
                    .with_context(|| format!("linking `{}`", e.path))?;
            } else if let Some(existing) = &e.hardlink {
                std::fs::hard_link(join_inside(&context, existing)?, &file)
                    .with_context(|| format!("linking `{}` to `{existing}`", e.path))?;
            }
            if e.uid.is_some() || e.gid.is_some() {
                std::os::unix::fs::lchown(&file, e.uid, e.gid)
                    .with_context(|| format!("chown `{}`", e.path))?;
            }
        }
        set_times(&context)?;

        let dockerfile = dockerfile_dir.join(self.dockerfile_name());
        std::fs::write(&dockerfile, &self.spec.dockerfile)?;
        let mut secrets = Vec::new();
        for (id, content) in &self.spec.secrets {
            let file = secrets_dir.join(id);
            std::fs::write(&file, content)?;
            set_mode(&file, 0o600)?;
            secrets.push((id.clone(), file));
        }
        Ok(Workspace {
            context,
            dockerfile_dir,
            dockerfile,
            secrets,
        })
    }

    /// buildctl's arguments after `--addr A` for this case, writing an OCI archive to `out`.
    pub fn buildctl_args(&self, ws: &Workspace, out: &Path) -> Vec<String> {
        // No cache: BuildKit's cache keys leave out file times, so a layer cached from an
        // earlier recording (of another context's times) would be recorded instead.
        let mut args = vec![
            "build".to_string(),
            "--no-cache".into(),
            "--progress".into(),
            "plain".into(),
            "--frontend".into(),
            "dockerfile.v0".into(),
            "--local".into(),
            format!("context={}", ws.context.display()),
            "--local".into(),
            format!("dockerfile={}", ws.dockerfile_dir.display()),
            "--opt".into(),
            format!("filename={}", self.dockerfile_name()),
        ];
        if let Some(target) = &self.spec.target {
            args.extend(["--opt".into(), format!("target={target}")]);
        }
        for (k, v) in &self.spec.args {
            args.extend(["--opt".into(), format!("build-arg:{k}={v}")]);
        }
        for (id, file) in &ws.secrets {
            args.extend(["--secret".into(), format!("id={id},src={}", file.display())]);
        }
        if !self.spec.platforms.is_empty() {
            args.extend([
                "--opt".into(),
                format!("platform={}", self.spec.platforms.join(",")),
            ]);
        }
        args.extend(["--output".into(), self.output(out)]);
        args
    }

    /// `kiln build`'s flags for this case (after `build --progress plain`, before the context).
    pub fn kiln_flags(&self, ws: &Workspace, out: &Path) -> Vec<String> {
        let mut args = vec!["-f".to_string(), ws.dockerfile.display().to_string()];
        if let Some(target) = &self.spec.target {
            args.extend(["--target".into(), target.clone()]);
        }
        for (k, v) in &self.spec.args {
            args.extend(["--build-arg".into(), format!("{k}={v}")]);
        }
        for (id, file) in &ws.secrets {
            args.extend(["--secret".into(), format!("id={id},src={}", file.display())]);
        }
        if !self.spec.platforms.is_empty() {
            args.extend(["--platform".into(), self.spec.platforms.join(",")]);
        }
        args.extend(["-o".into(), self.output(out)]);
        args
    }

    /// `SOURCE_DATE_EPOCH` for both tools: set to `epoch`, or removed from the environment.
    pub fn source_date_epoch(&self) -> Option<String> {
        self.spec.epoch.map(|e| e.to_string())
    }

    fn output(&self, out: &Path) -> String {
        let mut s = format!("type=oci,dest={}", out.display());
        if self.spec.epoch.is_some() {
            s.push_str(",rewrite-timestamp=true");
        }
        s
    }
}

/// `root/rel`, refusing paths that leave `root`.
fn join_inside(root: &Path, rel: &str) -> Result<PathBuf> {
    let rel = Path::new(rel.trim_start_matches('/'));
    if rel.as_os_str().is_empty()
        || rel
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        bail!(
            "context path `{}` must be relative and plain",
            rel.display()
        );
    }
    Ok(root.join(rel))
}

fn create_parents(root: &Path, file: &Path) -> Result<()> {
    let mut missing = Vec::new();
    let mut dir = file.parent();
    while let Some(d) = dir {
        if d == root || d.exists() {
            break;
        }
        missing.push(d.to_path_buf());
        dir = d.parent();
    }
    for d in missing.iter().rev() {
        std::fs::create_dir(d)?;
        set_mode(d, 0o755)?;
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod `{}`", path.display()))
}

/// Gives every entry under `root` (links themselves, not their targets), and `root`, the time
/// [`CONTEXT_MTIME`]: children before their directory, since writing a child changes it.
fn set_times(root: &Path) -> Result<()> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        let mut children: Vec<_> = std::fs::read_dir(dir)?
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<_>>()?;
        children.sort();
        for child in children {
            if std::fs::symlink_metadata(&child)?.is_dir() {
                walk(&child, out)?;
            }
            out.push(child);
        }
        Ok(())
    }
    let mut paths = Vec::new();
    walk(root, &mut paths)?;
    paths.push(root.to_path_buf());
    let t = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: CONTEXT_MTIME,
            tv_nsec: 0,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: CONTEXT_MTIME,
            tv_nsec: 0,
        },
    };
    for p in paths {
        rustix::fs::utimensat(
            rustix::fs::CWD,
            &p,
            &t,
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .with_context(|| format!("setting the time of `{}`", p.display()))?;
    }
    Ok(())
}
