//! What a step's cache key was computed from, in parts a person can read: kept beside the key so
//! that a later miss of the same step can say which part changed (`kiln build --explain`).
//! The key itself stays the single sha256 of lib.rs's `key`; this is a description of it.

use std::collections::{BTreeMap, BTreeSet};

use kiln_llb::{ExecOp, Op};
use kiln_oci::Digest;
use serde::{Deserialize, Serialize};

/// At most this many paths (or directory groups) are stored for one selection of context files:
/// a 20,000-file context is summarised by directories instead.
pub const MAX_LISTED: usize = 2048;

/// How many changed paths one reason names before "and N more".
pub const MAX_SHOWN: usize = 10;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KeyInputs {
    /// The op in one line: RUN's command, COPY's sources and destination, FROM's reference.
    pub command: String,
    /// Named options beside the command (working directory, user, `--chown`...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
    /// RUN's environment (ENV and ARG values in scope).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// RUN's mounts, one canonical line each (`type=secret,id=x,target=...`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<String>,
    /// FROM: the reference pinned by digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The platform an image is pulled for or a RUN is emulated for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// The steps whose results this one reads, by role (`parent`, `source`, `mount /x`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<InputKey>,
    /// Context files read, by who reads them (`COPY`, `bind mount /src`), once summarised.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, FileSummary>,
    /// The same, every path with its entry digest, until [`KeyInputs::summarise`]: a cached
    /// step whose key is the recorded one never pays for the summary.
    #[serde(skip)]
    pub(crate) listed: BTreeMap<String, ListedFiles>,
    /// Content fetched to key the step (an ADD download's digest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// sha256 of the whole op: catches options not listed above.
    pub op: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputKey {
    pub role: String,
    /// The input step's progress name, to say which one changed.
    pub name: String,
    pub key: Digest,
}

/// Every selected context path with its entry digest ([`entry_digest`]).
pub type ListedFiles = Vec<(String, [u8; 8])>;

/// The context files a selection holds, as path → short digest of (mode, bytes or link target).
/// Beyond [`MAX_LISTED`] entries the paths are grouped by their first `depth` components (a
/// group's digest covers every entry below it), the deepest grouping that fits.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FileSummary {
    pub count: u64,
    /// 0: every path is listed; else entries are directory groups of this depth.
    #[serde(default)]
    pub depth: u32,
    pub entries: BTreeMap<String, String>,
}

impl FileSummary {
    /// `files`: every selected path (relative to the context) with its entry digest.
    pub fn new(mut files: ListedFiles) -> Self {
        files.sort();
        files.dedup();
        let count = files.len() as u64;
        if files.len() <= MAX_LISTED {
            return Self {
                count,
                depth: 0,
                entries: files.into_iter().map(|(p, h)| (p, hex(&h))).collect(),
            };
        }
        let max_depth = files
            .iter()
            .map(|(p, _)| p.split('/').count())
            .max()
            .unwrap_or(1);
        for depth in (1..max_depth).rev() {
            let groups: BTreeSet<&str> = files.iter().map(|(p, _)| group(p, depth)).collect();
            if groups.len() <= MAX_LISTED {
                let mut entries: BTreeMap<String, sha2::Sha256> = BTreeMap::new();
                for (p, h) in &files {
                    use sha2::Digest as _;
                    let g = entries.entry(group(p, depth).to_string()).or_default();
                    g.update(p.as_bytes());
                    g.update([0]);
                    g.update(h);
                }
                return Self {
                    count,
                    depth: depth as u32,
                    entries: entries
                        .into_iter()
                        .map(|(k, h)| {
                            use sha2::Digest as _;
                            (k, hex(&h.finalize()[..8]))
                        })
                        .collect(),
                };
            }
        }
        // Too many entries even in the top directory: only the count is kept.
        Self {
            count,
            depth: u32::MAX,
            entries: BTreeMap::new(),
        }
    }

    /// What changed from `old` to `self`, in words, at most [`MAX_SHOWN`] paths named.
    pub fn changes(&self, old: &FileSummary) -> Vec<String> {
        if self.depth != old.depth || self.depth == u32::MAX {
            return vec![format!(
                "context files changed ({} entries before, {} now; too many to compare by path)",
                old.count, self.count
            )];
        }
        let what = |p: &str| {
            if self.depth == 0 {
                p.to_string()
            } else {
                format!("files under {p}/")
            }
        };
        let mut out = Vec::new();
        for (path, hash) in &self.entries {
            match old.entries.get(path) {
                Some(h) if h == hash => {}
                Some(_) => out.push(format!("{} changed", what(path))),
                None => out.push(format!("{} added", what(path))),
            }
        }
        for path in old.entries.keys() {
            if !self.entries.contains_key(path) {
                out.push(format!("{} removed", what(path)));
            }
        }
        if out.len() > MAX_SHOWN {
            let more = out.len() - MAX_SHOWN;
            out.truncate(MAX_SHOWN);
            out.push(format!("and {more} more"));
        }
        out
    }
}

/// `a/b/c` at depth 2 → `a/b`; a path shallower than `depth` is its own group.
fn group(path: &str, depth: usize) -> &str {
    match path.match_indices('/').nth(depth - 1) {
        Some((i, _)) => &path[..i],
        None => path,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl KeyInputs {
    /// Turns the listed context files into their bounded summaries (for comparing or storing).
    pub fn summarise(&mut self) {
        for (who, files) in std::mem::take(&mut self.listed) {
            self.files.insert(who, FileSummary::new(files));
        }
    }
}

/// The digest one context entry contributes: its mode and its bytes' digest or link target.
pub(crate) fn entry_digest(mode: u32, content: &[u8]) -> [u8; 8] {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(mode.to_le_bytes());
    h.update(content);
    let full = h.finalize();
    let mut out = [0; 8];
    out.copy_from_slice(&full[..8]);
    out
}

/// The parts of `op` a person can compare; files, content and inputs are added by the caller.
pub(crate) fn describe(op: &Op) -> KeyInputs {
    let json = serde_json::to_vec(op).expect("ops serialise");
    let mut k = KeyInputs {
        op: kiln_oci::sha256(&json).to_string(),
        ..Default::default()
    };
    match op {
        Op::Scratch => k.command = "scratch".into(),
        Op::Image {
            reference,
            platform,
        } => {
            k.command = "FROM".into();
            k.image = Some(reference.clone());
            k.platform = Some(platform.to_string());
        }
        Op::Local { name, excludes } => {
            k.command = format!("local {name}");
            k.options.insert("excludes".into(), excludes.join(","));
        }
        Op::Exec(exec) => describe_exec(exec, &mut k),
        Op::Copy(c) => {
            k.command = format!("{} -> {}", c.sources.join(" "), c.dest);
            let mut opt = |name: &str, v: Option<String>| {
                if let Some(v) = v {
                    k.options.insert(name.into(), v);
                }
            };
            opt("--chown", c.chown.clone());
            opt("--chmod", c.chmod.map(|m| format!("{m:o}")));
            opt("--chmod", c.chmod_symbolic.clone());
            opt(
                "--exclude",
                (!c.exclude.is_empty()).then(|| c.exclude.join(",")),
            );
            opt("--parents", c.parents.then(|| "true".into()));
            opt("unpack archives", c.unpack.then(|| "true".into()));
        }
        Op::Mkdir(m) => {
            k.command = format!("mkdir {}", m.path);
            k.options.insert("user".into(), m.user.clone());
        }
        Op::Mkfile(m) => {
            let paths: Vec<&str> = m.files.iter().map(|f| f.path.as_str()).collect();
            k.command = format!("inline files {}", paths.join(" "));
        }
        Op::Http(h) => {
            k.command = format!("download {}", h.url);
            if let Some(c) = &h.checksum {
                k.options.insert("--checksum".into(), c.clone());
            }
        }
        Op::Git(g) => k.command = format!("git {}#{}", g.remote, g.reference),
    }
    k
}

fn describe_exec(exec: &ExecOp, k: &mut KeyInputs) {
    // `/bin/sh -c CMD` shows as CMD, as the Dockerfile wrote it.
    k.command = match exec.args.as_slice() {
        [sh, c, cmd] if sh == "/bin/sh" && c == "-c" => cmd.clone(),
        args => serde_json::to_string(args).expect("strings serialise"),
    };
    for e in &exec.env {
        let (name, value) = e.split_once('=').unwrap_or((e, ""));
        k.env.insert(name.to_string(), value.to_string());
    }
    k.options
        .insert("working directory".into(), exec.cwd.clone());
    k.options.insert("user".into(), exec.user.clone());
    k.options.insert(
        "network".into(),
        format!("{:?}", exec.network).to_lowercase(),
    );
    let sandbox = serde_json::to_string(&exec.sandbox).expect("sandbox serialises");
    if sandbox != "{}" {
        k.options.insert("sandbox".into(), sandbox);
    }
    k.platform = exec.platform.as_ref().map(|p| p.to_string());
    for m in &exec.mounts {
        k.mounts.push(format!(
            "type=bind,target={},source={}{}",
            m.target,
            m.source,
            if m.readonly { ",ro" } else { ",rw" }
        ));
    }
    for c in &exec.caches {
        k.mounts.push(format!(
            "type=cache,id={},target={},sharing={},mode={:o},uid={},gid={}{}{}",
            c.id,
            c.target,
            format!("{:?}", c.sharing).to_lowercase(),
            c.mode,
            c.uid,
            c.gid,
            if c.source.is_empty() {
                String::new()
            } else {
                format!(",source={}", c.source)
            },
            if c.readonly { ",ro" } else { "" }
        ));
    }
    for t in &exec.tmpfs {
        let size = t.size.map(|s| format!(",size={s}")).unwrap_or_default();
        k.mounts
            .push(format!("type=tmpfs,target={}{size}", t.target));
    }
    for s in &exec.secrets {
        let mut line = format!("type=secret,id={}", s.id);
        if let Some(t) = &s.target {
            line.push_str(&format!(",target={t}"));
        }
        if let Some(e) = &s.env {
            line.push_str(&format!(",env={e}"));
        }
        line.push_str(&format!(
            ",required={},mode={:o},uid={},gid={}",
            s.required, s.mode, s.uid, s.gid
        ));
        k.mounts.push(line);
    }
    for s in &exec.ssh {
        k.mounts.push(format!(
            "type=ssh,id={},target={},required={},mode={:o},uid={},gid={}",
            s.id, s.target, s.required, s.mode, s.uid, s.gid
        ));
    }
}

/// How `explain` names a RUN's environment variable and whether it may show its value.
pub struct Variables<'a> {
    /// Names declared with ARG in the step's scope (the others come from ENV).
    pub args: &'a BTreeSet<String>,
    /// Whether a value must not be shown (the name looks like a secret).
    pub secret: &'a dyn Fn(&str) -> bool,
}

/// Why a step whose inputs were `old` has other inputs `new`, one reason per line. Empty when
/// nothing this record covers differs.
pub fn explain(old: &KeyInputs, new: &KeyInputs, vars: &Variables<'_>) -> Vec<String> {
    let mut out = Vec::new();
    if old.command != new.command {
        out.push(format!(
            "command changed: `{}` -> `{}`",
            old.command, new.command
        ));
    }
    if old.image != new.image {
        out.push(format!(
            "base image changed: {} -> {}",
            old.image.as_deref().unwrap_or("none"),
            new.image.as_deref().unwrap_or("none")
        ));
    }
    if old.platform != new.platform {
        out.push(format!(
            "platform changed: {} -> {}",
            old.platform.as_deref().unwrap_or("this machine's"),
            new.platform.as_deref().unwrap_or("this machine's")
        ));
    }
    let names: BTreeSet<&String> = old.env.keys().chain(new.env.keys()).collect();
    for name in names {
        let (a, b) = (old.env.get(name), new.env.get(name));
        if a == b {
            continue;
        }
        let kind = if vars.args.contains(name) {
            "ARG"
        } else {
            "ENV"
        };
        if (vars.secret)(name) {
            out.push(format!(
                "{kind} {name} changed (value hidden: the name looks like a secret)"
            ));
            continue;
        }
        let show = |v: Option<&String>| v.map_or("unset".to_string(), |v| format!("{v:?}"));
        out.push(format!("{kind} {name} changed: {} -> {}", show(a), show(b)));
    }
    let names: BTreeSet<&String> = old.options.keys().chain(new.options.keys()).collect();
    for name in names {
        let (a, b) = (old.options.get(name), new.options.get(name));
        if a != b {
            let show = |v: Option<&String>| v.map_or("none".to_string(), |v| format!("{v:?}"));
            out.push(format!("{name} changed: {} -> {}", show(a), show(b)));
        }
    }
    for m in &old.mounts {
        if !new.mounts.contains(m) {
            out.push(format!("mount removed: {m}"));
        }
    }
    for m in &new.mounts {
        if !old.mounts.contains(m) {
            out.push(format!("mount added: {m}"));
        }
    }
    if old.content != new.content {
        out.push("the downloaded content changed".into());
    }
    for (who, files) in &new.files {
        match old.files.get(who) {
            Some(before) => {
                for change in files.changes(before) {
                    out.push(format!("{change} (read by {who})"));
                }
            }
            None => out.push(format!("{who} now reads context files")),
        }
    }
    for input in &new.inputs {
        match old.inputs.iter().find(|i| i.role == input.role) {
            Some(before) if before.key == input.key => {}
            Some(_) => out.push(format!("{} step changed: {}", input.role, input.name)),
            None => out.push(format!("new {}: {}", input.role, input.name)),
        }
    }
    if out.is_empty() && old.op != new.op {
        out.push("other options of the instruction changed".into());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(files: &[(&str, u8)]) -> FileSummary {
        FileSummary::new(
            files
                .iter()
                .map(|(p, h)| (p.to_string(), [*h; 8]))
                .collect(),
        )
    }

    #[test]
    fn small_selections_name_each_changed_path() {
        let old = summary(&[("app/main.py", 1), ("app/util.py", 2), ("gone", 3)]);
        let new = summary(&[("app/main.py", 9), ("app/util.py", 2), ("new", 4)]);
        assert_eq!(
            new.changes(&old),
            vec!["app/main.py changed", "new added", "gone removed"]
        );
    }

    #[test]
    fn large_selections_are_grouped_by_directory_and_capped() {
        let files = |changed: &str| -> Vec<(String, [u8; 8])> {
            (0..3000)
                .map(|i| {
                    let p = format!("d{}/f{i}", i % 20);
                    let h = if p.starts_with(changed) {
                        [7; 8]
                    } else {
                        [1; 8]
                    };
                    (p, h)
                })
                .collect()
        };
        let old = FileSummary::new(files("none"));
        let new = FileSummary::new(files("d3/"));
        assert_eq!(new.depth, 1);
        assert_eq!(new.entries.len(), 20);
        assert_eq!(new.changes(&old), vec!["files under d3/ changed"]);
        let many = summary(
            &(0..15u8)
                .map(|i| {
                    (
                        [
                            "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n",
                            "o",
                        ][i as usize],
                        i,
                    )
                })
                .collect::<Vec<_>>(),
        );
        let none = summary(&[]);
        let c = many.changes(&none);
        assert_eq!(c.len(), MAX_SHOWN + 1);
        assert_eq!(c.last().unwrap(), "and 5 more");
    }

    #[test]
    fn secret_values_are_hidden() {
        let mut old = KeyInputs::default();
        let mut new = KeyInputs::default();
        old.env.insert("API_TOKEN".into(), "a".into());
        new.env.insert("API_TOKEN".into(), "b".into());
        old.env.insert("V".into(), "1".into());
        new.env.insert("V".into(), "2".into());
        let args = BTreeSet::from(["V".to_string()]);
        let vars = Variables {
            args: &args,
            secret: &|n| n.contains("TOKEN"),
        };
        assert_eq!(
            explain(&old, &new, &vars),
            vec![
                "ENV API_TOKEN changed (value hidden: the name looks like a secret)",
                "ARG V changed: \"1\" -> \"2\"",
            ]
        );
    }
}
