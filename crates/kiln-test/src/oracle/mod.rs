//! The differential corpus (tests/oracle): cases, their build inputs, the canonical JSON of an
//! image that BuildKit's recordings and kiln's results are compared in, and the comparison.
//! `cargo xtask oracle record` writes the recordings with BuildKit; kiln-cli's
//! `oracle_corpus_matches_buildkit` test compares kiln with them. See docs/oracle.md.

mod bases;
mod canon;
mod case;

use serde_json::{Map, Value};

pub use bases::{BASES, BaseImage, Bases};
pub use canon::{DETERMINISTIC_BEFORE, canonicalize, layer_entries};
pub use case::{CONTEXT_MTIME, Case, Entry, Spec, Workspace, corpus_dir, load_cases};

/// How many differing JSON paths a report shows per case.
pub const DIFF_LINES: usize = 10;

/// The architecture name of this machine in OCI's words.
pub fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// `value` as recorded: keys sorted, two-space indent, one trailing newline.
pub fn to_canonical_string(value: &Value) -> String {
    let mut s = serde_json::to_string_pretty(&sorted(value)).expect("JSON values serialize");
    s.push('\n');
    s
}

fn sorted(value: &Value) -> Value {
    match value {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let mut out = Map::new();
            for k in keys {
                out.insert(k.clone(), sorted(&m[k]));
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

/// The lines of a failed build's output that say why: those starting with `error:` or
/// containing `ERROR`, without their `#N ` progress prefix.
pub fn error_lines(output: &str) -> String {
    let lines: Vec<&str> = output
        .lines()
        .map(str::trim_end)
        .filter(|l| l.trim_start().starts_with("error:") || l.contains("ERROR"))
        .map(
            |l| match l.strip_prefix('#').and_then(|r| r.split_once(' ')) {
                Some((n, rest)) if n.chars().all(|c| c.is_ascii_digit()) => rest,
                _ => l,
            },
        )
        .collect();
    if lines.is_empty() {
        let all: Vec<&str> = output.lines().filter(|l| !l.trim().is_empty()).collect();
        all[all.len().saturating_sub(5)..].join("\n")
    } else {
        lines.join("\n")
    }
}

/// The recording of a build that failed with `output`.
pub fn error_record(output: &str) -> Value {
    let mut m = Map::new();
    m.insert("error".into(), Value::String(error_lines(output)));
    Value::Object(m)
}

/// The JSON paths where `actual` (kiln) differs from `expected` (BuildKit), one line each.
/// Arrays of layer entries are matched by path, so one missing file is one line.
pub fn diff(expected: &Value, actual: &Value) -> Vec<String> {
    let mut out = Vec::new();
    diff_at("", expected, actual, &mut out);
    out
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 160 {
        let cut: String = s.chars().take(157).collect();
        format!("{cut}...")
    } else {
        s
    }
}

fn entry_key(v: &Value) -> Option<String> {
    let obj = v.as_object()?;
    let path = obj.get("path")?.as_str()?;
    Some(match obj.get("type").and_then(Value::as_str) {
        Some(t @ ("whiteout" | "opaque")) => format!("{path} ({t})"),
        _ => path.to_string(),
    })
}

fn diff_at(at: &str, expected: &Value, actual: &Value, out: &mut Vec<String>) {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            let mut keys: Vec<&String> = e.keys().chain(a.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let here = format!("{at}.{k}");
                match (e.get(k), a.get(k)) {
                    (Some(x), Some(y)) => diff_at(&here, x, y, out),
                    (Some(x), None) => {
                        out.push(format!("{here}: BuildKit {}, kiln absent", short(x)))
                    }
                    (None, Some(y)) => {
                        out.push(format!("{here}: BuildKit absent, kiln {}", short(y)))
                    }
                    (None, None) => {}
                }
            }
        }
        (Value::Array(e), Value::Array(a))
            if !e.is_empty()
                && !a.is_empty()
                && e.iter().chain(a).all(|v| entry_key(v).is_some()) =>
        {
            fn keyed(list: &[Value]) -> Vec<(String, &Value)> {
                let mut m: Vec<(String, &Value)> = Vec::new();
                let mut seen: std::collections::HashMap<String, usize> = Default::default();
                for v in list {
                    let k = entry_key(v).expect("checked above");
                    let n = seen.entry(k.clone()).or_insert(0);
                    m.push((if *n == 0 { k } else { format!("{k}#{n}") }, v));
                    *n += 1;
                }
                m
            }
            let (e, a) = (keyed(e), keyed(a));
            let mut keys: Vec<&String> = e.iter().chain(&a).map(|(k, _)| k).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let here = format!("{at}[{k:?}]");
                let x = e.iter().find(|(p, _)| p == k).map(|(_, v)| *v);
                let y = a.iter().find(|(p, _)| p == k).map(|(_, v)| *v);
                match (x, y) {
                    (Some(x), Some(y)) => diff_at(&here, x, y, out),
                    (Some(x), None) => out.push(format!("{here}: only in BuildKit {}", short(x))),
                    (None, Some(y)) => out.push(format!("{here}: only in kiln {}", short(y))),
                    (None, None) => {}
                }
            }
        }
        (Value::Array(e), Value::Array(a)) => {
            for i in 0..e.len().max(a.len()) {
                let here = format!("{at}[{i}]");
                match (e.get(i), a.get(i)) {
                    (Some(x), Some(y)) => diff_at(&here, x, y, out),
                    (Some(x), None) => out.push(format!("{here}: only in BuildKit {}", short(x))),
                    (None, Some(y)) => out.push(format!("{here}: only in kiln {}", short(y))),
                    (None, None) => {}
                }
            }
        }
        (x, y) if x == y => {}
        (x, y) => out.push(format!(
            "{}: BuildKit {}, kiln {}",
            if at.is_empty() { "." } else { at },
            short(x),
            short(y)
        )),
    }
}

/// What kiln did with a case.
#[derive(Debug)]
pub enum Outcome {
    /// It built; the canonical JSON of its image.
    Image(Value),
    /// It failed (or its image could not be read); its error output.
    Failed(String),
}

/// A case's result beside its recording.
#[derive(Debug)]
pub struct Judgement {
    pub case: String,
    /// Empty when kiln matches BuildKit.
    pub differences: Vec<String>,
    pub xfail: Option<String>,
}

impl Judgement {
    pub fn matches(&self) -> bool {
        self.differences.is_empty()
    }

    /// Why the test fails on this case: kiln differs from BuildKit, or an `xfail` case
    /// matches now (its marker must go). `None` when it passes.
    pub fn failure(&self) -> Option<String> {
        match (&self.xfail, self.matches()) {
            (None, true) | (Some(_), false) => None,
            (None, false) => {
                let mut s = format!("{}: kiln differs from BuildKit:", self.case);
                for line in self.differences.iter().take(DIFF_LINES) {
                    s.push_str("\n    ");
                    s.push_str(line);
                }
                if self.differences.len() > DIFF_LINES {
                    s.push_str(&format!(
                        "\n    ... and {} more",
                        self.differences.len() - DIFF_LINES
                    ));
                }
                Some(s)
            }
            (Some(reason), true) => Some(format!(
                "{}: matches BuildKit now; remove its `xfail = {reason:?}`",
                self.case
            )),
        }
    }
}

/// Compares kiln's `outcome` for `case` with BuildKit's `recording`.
pub fn judge(case: &Case, recording: &Value, outcome: &Outcome) -> Judgement {
    let mut differences = Vec::new();
    let recorded_error = recording.get("error").and_then(Value::as_str);
    match (recorded_error, outcome) {
        (Some(err), Outcome::Image(_)) => differences.push(format!(
            "BuildKit failed ({}), kiln built an image",
            first_line(err)
        )),
        (Some(_), Outcome::Failed(out)) => {
            if let Some(want) = &case.spec.expect_error
                && !out.contains(want.as_str())
            {
                differences.push(format!(
                    "both failed, but kiln's error lacks {want:?}: {}",
                    first_line(&error_lines(out))
                ));
            }
        }
        (None, Outcome::Failed(out)) => differences.push(format!(
            "BuildKit built an image, kiln failed: {}",
            error_lines(out).replace('\n', " | ")
        )),
        (None, Outcome::Image(image)) => differences = diff(recording, image),
    }
    Judgement {
        case: case.name.clone(),
        differences,
        xfail: case.spec.xfail.clone(),
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

#[cfg(test)]
mod tests;
