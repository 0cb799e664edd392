//! `kiln build --call outline` and `--call targets`: what a Dockerfile takes (build args with
//! their values and doc comments, secrets and SSH agents its RUN mounts use) and which stages
//! it has, worked out from the parsed Dockerfile alone, as BuildKit's subrequests answer
//! `frontend.outline` and `frontend.targets`. Text and JSON as buildx v0.36.1 prints them.

use std::collections::{BTreeMap, BTreeSet};

use kiln_dockerfile::instructions::doc_comment;
use kiln_dockerfile::shell::ShellLex;

use kiln_dockerfile::{Dockerfile, Instruction, InstructionKind, Location};
use serde::Serialize;

use crate::mount::RunMount;
use crate::split::split;

/// The answer to `--call outline`, fields in buildx's JSON order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Outline {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<OutlineArg>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<OutlineMount>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ssh: Vec<OutlineMount>,
    /// The Dockerfile, base64 (JSON only).
    pub sources: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutlineArg {
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub value: String,
    pub location: SourceLocation,
}

/// A secret or an SSH agent a RUN mounts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutlineMount {
    pub name: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub required: bool,
    pub location: SourceLocation,
}

/// The answer to `--call targets`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Targets {
    pub targets: Vec<Target>,
    pub sources: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Target {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub default: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// The FROM image as written, variables unexpanded.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub base: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub platform: String,
    pub location: SourceLocation,
}

/// BuildKit's `pb.Location`: a range per line of the instruction, lines only (characters are
/// 0 and left out).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceLocation {
    ranges: Vec<Range>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
struct Range {
    start: Line,
    end: Line,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
struct Line {
    line: usize,
}

impl SourceLocation {
    fn of(loc: &Location) -> Self {
        SourceLocation {
            ranges: (loc.start_line..=loc.end_line.max(loc.start_line))
                .map(|line| Range {
                    start: Line { line },
                    end: Line { line },
                })
                .collect(),
        }
    }

    fn line(&self) -> usize {
        self.ranges.first().map_or(0, |r| r.start.line)
    }
}

/// The stages as `--call targets` lists them: all of them, the last one the default.
pub fn targets(dockerfile: &Dockerfile, source: &str) -> Targets {
    let (_, stages) = split(dockerfile);
    let last = stages.len().saturating_sub(1);
    let targets = stages
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let name = s.name.clone().unwrap_or_default();
            Target {
                description: doc_comment(&s.from.comments, &name).unwrap_or_default(),
                name,
                default: i == last,
                base: s.image.to_string(),
                platform: s.platform.unwrap_or_default().to_string(),
                location: SourceLocation::of(&s.from.location),
            }
        })
        .collect();
    Targets {
        targets,
        sources: vec![base64(source)],
    }
}

#[derive(Debug, Clone)]
struct ArgInfo {
    value: Option<String>,
    description: String,
    location: SourceLocation,
    /// Args its default refers to.
    deps: BTreeSet<String>,
}

/// What one stage declares and uses, BuildKit's outline capture.
#[derive(Debug, Clone, Default)]
struct Capture {
    all: BTreeMap<String, ArgInfo>,
    used: BTreeSet<String>,
    secrets: Vec<OutlineMount>,
    ssh: Vec<OutlineMount>,
}

impl Capture {
    fn mark_used(&mut self, names: impl IntoIterator<Item = String>) {
        let mut todo: Vec<String> = names.into_iter().collect();
        while let Some(n) = todo.pop() {
            if let Some(a) = self.all.get(&n) {
                todo.extend(a.deps.iter().filter(|d| !self.used.contains(*d)).cloned());
            }
            self.used.insert(n);
        }
    }
}

/// Adds a mount to a list: the first use gives the location, any use can make it required.
fn add_mount(list: &mut Vec<OutlineMount>, name: String, required: bool, loc: &Location) {
    match list.iter_mut().find(|m| m.name == name) {
        Some(m) => m.required |= required,
        None => list.push(OutlineMount {
            name,
            required,
            location: SourceLocation::of(loc),
        }),
    }
}

/// The outline of `target` (the last stage when `None`): the build args it and the stages it
/// needs declare (global ones only where a FROM or a stage ARG uses them) with their values
/// under `build_args`, and the secrets and agents their RUNs mount, each sorted by line.
pub fn outline(
    dockerfile: &Dockerfile,
    source: &str,
    build_args: &BTreeMap<String, String>,
    target: Option<&str>,
) -> std::result::Result<Outline, String> {
    let lex = ShellLex::new(dockerfile.directives.escape);
    let (meta, stages) = split(dockerfile);
    if stages.is_empty() {
        return Err("the Dockerfile has no FROM instruction".into());
    }
    // Global args: values as the build would see them.
    let mut global = Capture::default();
    let mut meta_env: BTreeMap<String, String> = BTreeMap::new();
    for ins in meta {
        if let InstructionKind::Arg(args) = &ins.kind {
            for (name, default) in args {
                let info = arg_info(&lex, ins, name, default.as_deref(), build_args, &meta_env);
                if let Some(v) = &info.value {
                    meta_env.insert(name.clone(), v.clone());
                }
                global.all.insert(name.clone(), info);
            }
        }
    }
    let target = match target {
        None => stages.len() - 1,
        Some(t) => {
            let t = t.to_ascii_lowercase();
            stages
                .iter()
                .position(|s| s.name.as_deref() == Some(t.as_str()))
                .ok_or_else(|| format!("target stage `{t}` could not be found"))?
        }
    };
    let stage_ref = |current: usize, name: &str| -> Option<usize> {
        let lower = name.to_ascii_lowercase();
        stages[..current]
            .iter()
            .position(|s| s.name.as_deref() == Some(lower.as_str()))
            .or_else(|| name.parse::<usize>().ok().filter(|i| *i < current))
    };
    // Each needed stage's capture, and its base and dependencies in BuildKit's walk order.
    let mut captures: BTreeMap<usize, (Capture, Option<usize>, Vec<usize>)> = BTreeMap::new();
    let mut todo = vec![target];
    while let Some(i) = todo.pop() {
        if captures.contains_key(&i) {
            continue;
        }
        let stage = &stages[i];
        let mut cap = global.clone();
        cap.used.clear();
        let from = lex
            .process_word_with_matches(stage.image, &meta_env)
            .map_err(|e| e.to_string())?;
        cap.mark_used(from.matched.iter().cloned());
        if let Some(p) = stage.platform
            && let Ok(p) = lex.process_word_with_matches(p, &meta_env)
        {
            cap.mark_used(p.matched.iter().cloned());
        }
        let base = stage_ref(i, &from.result);
        let mut deps = Vec::new();
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        for ins in &stage.instructions {
            match &ins.kind {
                InstructionKind::Arg(args) => {
                    for (name, default) in args {
                        let mut info =
                            arg_info(&lex, ins, name, default.as_deref(), build_args, &env);
                        // A redeclared global without a default or a build arg keeps the
                        // global's value, comment and location, as BuildKit reports it.
                        if default.is_none()
                            && info.value.is_none()
                            && let Some(g) = global.all.get(name)
                        {
                            info = g.clone();
                        }
                        if let Some(v) = &info.value {
                            env.insert(name.clone(), v.clone());
                        }
                        cap.all.insert(name.clone(), info);
                        cap.mark_used([name.clone()]);
                    }
                }
                InstructionKind::Env(pairs) => {
                    for (k, v) in pairs {
                        let v = lex.process_word(v, &env).unwrap_or_default();
                        env.insert(k.clone(), v);
                    }
                }
                InstructionKind::Copy(args) => {
                    if let Some(dep) = args.from.as_deref().and_then(|f| stage_ref(i, f)) {
                        deps.push(dep);
                    }
                }
                InstructionKind::Run { mounts, .. } => {
                    for m in mounts {
                        if let Some(dep) = crate::mount::from_of(m).and_then(|f| stage_ref(i, &f)) {
                            deps.push(dep);
                        }
                        let parsed = crate::mount::parse(m, |w| {
                            lex.process_word(w, &env).map_err(|e| e.to_string())
                        });
                        match parsed {
                            Ok(RunMount::Secret {
                                id,
                                target,
                                required,
                                ..
                            }) => {
                                let name = id.or_else(|| {
                                    target.map(|t| {
                                        t.rsplit('/').next().unwrap_or_default().to_string()
                                    })
                                });
                                if let Some(name) = name {
                                    add_mount(&mut cap.secrets, name, required, &ins.location);
                                }
                            }
                            Ok(RunMount::Ssh { id, required, .. }) => {
                                let name = id.unwrap_or_else(|| "default".into());
                                add_mount(&mut cap.ssh, name, required, &ins.location);
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        todo.extend(base);
        todo.extend(deps.iter().copied());
        captures.insert(i, (cap, base, deps));
    }

    // The target's own, then its base's, then its dependencies', each name once.
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    walk(target, &captures, &mut seen, &mut order);
    let mut args = Vec::new();
    let mut secrets = Vec::new();
    let mut ssh = Vec::new();
    let (mut seen_args, mut seen_secrets, mut seen_ssh) =
        (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    for i in order {
        let cap = &captures[&i].0;
        for name in &cap.used {
            if let Some(a) = cap.all.get(name)
                && seen_args.insert(name.clone())
            {
                args.push(OutlineArg {
                    name: name.clone(),
                    description: a.description.clone(),
                    value: a.value.clone().unwrap_or_default(),
                    location: a.location.clone(),
                });
            }
        }
        for s in &cap.secrets {
            if seen_secrets.insert(s.name.clone()) {
                secrets.push(s.clone());
            }
        }
        for s in &cap.ssh {
            if seen_ssh.insert(s.name.clone()) {
                ssh.push(s.clone());
            }
        }
    }
    // By line; ties keep the order above (BuildKit's order there is a map's, so random).
    args.sort_by_key(|a| a.location.line());
    secrets.sort_by_key(|s| s.location.line());
    ssh.sort_by_key(|s| s.location.line());
    let stage = &stages[target];
    let name = stage.name.clone().unwrap_or_default();
    Ok(Outline {
        description: doc_comment(&stage.from.comments, &name).unwrap_or_default(),
        name,
        args,
        secrets,
        ssh,
        sources: vec![base64(source)],
    })
}

type Captures = BTreeMap<usize, (Capture, Option<usize>, Vec<usize>)>;

fn walk(i: usize, captures: &Captures, seen: &mut BTreeSet<usize>, order: &mut Vec<usize>) {
    if !seen.insert(i) {
        return;
    }
    order.push(i);
    let (_, base, deps) = &captures[&i];
    if let Some(b) = base {
        walk(*b, captures, seen, order);
    }
    for d in deps {
        walk(*d, captures, seen, order);
    }
}

/// One declared arg: its value (a build arg, else its default expanded in `scope`), its doc
/// comment and the args its default uses.
fn arg_info(
    lex: &ShellLex,
    ins: &Instruction,
    name: &str,
    default: Option<&str>,
    build_args: &BTreeMap<String, String>,
    scope: &BTreeMap<String, String>,
) -> ArgInfo {
    let expanded = default.map(|d| lex.process_word_with_matches(d, scope));
    let deps = match &expanded {
        Some(Ok(r)) => r.matched.clone(),
        _ => BTreeSet::new(),
    };
    let value = match build_args.get(name) {
        Some(v) => Some(v.clone()),
        None => match expanded {
            Some(Ok(r)) => Some(r.result),
            Some(Err(_)) => default.map(str::to_string),
            None => None,
        },
    };
    ArgInfo {
        value,
        description: doc_comment(&ins.comments, name).unwrap_or_default(),
        location: SourceLocation::of(&ins.location),
        deps,
    }
}

pub(crate) fn base64(text: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Go's `text/tabwriter` with no minimum width, `padding` spaces and cells ended by `\t`:
/// every column but the last is padded to its widest cell plus `padding`.
fn table(rows: &[Vec<String>], padding: usize) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0; columns];
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(row.len().saturating_sub(1)) {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            out.push_str(cell);
            if i + 1 < row.len() {
                let pad = widths[i] + padding - cell.chars().count();
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push('\n');
    }
    out
}

impl Outline {
    /// buildx's text: the target, then tables of args, secrets and agents, each followed by an
    /// empty line, the empty ones left out.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        if !self.name.is_empty() || !self.description.is_empty() {
            let name = if self.name.is_empty() {
                "(default)"
            } else {
                &self.name
            };
            let mut rows = vec![vec!["TARGET:".to_string(), name.to_string()]];
            if !self.description.is_empty() {
                rows.push(vec!["DESCRIPTION:".into(), self.description.clone()]);
            }
            out.push_str(&table(&rows, 1));
            out.push('\n');
        }
        if !self.args.is_empty() {
            let mut rows = vec![vec![
                "BUILD ARG".to_string(),
                "VALUE".into(),
                "DESCRIPTION".into(),
            ]];
            rows.extend(
                self.args
                    .iter()
                    .map(|a| vec![a.name.clone(), a.value.clone(), a.description.clone()]),
            );
            out.push_str(&table(&rows, 3));
            out.push('\n');
        }
        for (title, list) in [("SECRET", &self.secrets), ("SSH", &self.ssh)] {
            if list.is_empty() {
                continue;
            }
            let mut rows = vec![vec![title.to_string(), "REQUIRED".into()]];
            rows.extend(list.iter().map(|m| {
                let required = if m.required { "true" } else { "" };
                vec![m.name.clone(), required.to_string()]
            }));
            out.push_str(&table(&rows, 3));
            out.push('\n');
        }
        out
    }

    /// buildx's JSON: two-space indent, a final newline, HTML characters escaped as Go does.
    pub fn to_json(&self) -> String {
        go_json(self)
    }
}

impl Targets {
    /// buildx's text: a table of names (the default marked) and descriptions.
    pub fn to_text(&self) -> String {
        let mut rows = vec![vec!["TARGET".to_string(), "DESCRIPTION".into()]];
        for t in &self.targets {
            let name = match (t.name.is_empty(), t.default) {
                (true, true) => "(default)".to_string(),
                (false, true) => format!("{} (default)", t.name),
                _ => t.name.clone(),
            };
            rows.push(vec![name, t.description.clone()]);
        }
        table(&rows, 1)
    }

    pub fn to_json(&self) -> String {
        go_json(self)
    }
}

/// JSON as Go's `json.MarshalIndent(v, "", "  ")` writes it, plus the newline buildx adds.
pub(crate) fn go_json<T: Serialize>(value: &T) -> String {
    let text = serde_json::to_string_pretty(value).expect("outline types serialize");
    let mut out = String::with_capacity(text.len() + 1);
    for c in text.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Dockerfile {
        kiln_dockerfile::parse(text).unwrap()
    }

    #[test]
    fn base64_matches_the_standard_alphabet() {
        assert_eq!(base64(""), "");
        assert_eq!(base64("f"), "Zg==");
        assert_eq!(base64("fo"), "Zm8=");
        assert_eq!(base64("foo"), "Zm9v");
        assert_eq!(base64("FROM a\n"), "RlJPTSBhCg==");
    }

    #[test]
    fn tables_pad_all_but_the_last_column() {
        let rows = vec![
            vec!["SECRET".to_string(), "REQUIRED".into()],
            vec!["s1".into(), "true".into()],
            vec!["s2".into(), String::new()],
        ];
        assert_eq!(
            table(&rows, 3),
            "SECRET   REQUIRED\ns1       true\ns2       \n"
        );
    }

    #[test]
    fn global_args_count_only_where_used() {
        let df = "ARG UNUSED=x\nARG BASE=busybox\nFROM ${BASE} AS a\n# V the version\nARG V=1\n";
        let o = outline(&parse(df), df, &BTreeMap::new(), None).unwrap();
        let names: Vec<_> = o.args.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["BASE", "V"]);
        assert_eq!(o.args[1].description, "the version");
        assert_eq!(o.name, "a");
        let args = BTreeMap::from([("V".to_string(), "2".to_string())]);
        let o = outline(&parse(df), df, &args, None).unwrap();
        assert_eq!(o.args[1].value, "2");
    }

    #[test]
    fn html_characters_are_escaped_as_go_does() {
        let t = Targets {
            targets: vec![],
            sources: vec!["<&>".into()],
        };
        assert!(t.to_json().contains("\\u003c\\u0026\\u003e"));
    }
}
