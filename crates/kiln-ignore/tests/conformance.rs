//! Drives the moby/patternmatcher vectors in `tests/conformance/` (see its README).

use std::path::Path;

use kiln_ignore::{MatchInfo, Matcher, read_patterns};
use serde::Deserialize;

#[derive(Deserialize)]
struct File<T> {
    cases: Vec<T>,
}

fn load<T: for<'de> Deserialize<'de>>(name: &str) -> Vec<T> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/conformance")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let file: File<T> = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    file.cases
}

fn strings(v: &[String]) -> Vec<String> {
    v.to_vec()
}

/// Go's `path.Clean`, for the legacy preamble (kept independent of the crate's own).
fn go_clean(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." if parts.last().is_some_and(|p| *p != "..") => {
                parts.pop();
            }
            ".." if rooted => {}
            _ => parts.push(part),
        }
    }
    let joined = parts.join("/");
    if rooted {
        format!("/{joined}")
    } else if joined.is_empty() {
        ".".into()
    } else {
        joined
    }
}

#[derive(Deserialize)]
struct Case {
    api: String,
    patterns: Vec<String>,
    path: String,
    #[serde(rename = "match")]
    matched: bool,
    error: Option<String>,
    platform: String,
    repeat: Option<usize>,
    origin: String,
}

/// Every entry point patternmatcher's tests compare: the one-shot call, a walk feeding each
/// parent's results to its children, and the parent-results call with no parent information.
fn all_entry_points(m: &Matcher, path: &str) -> Result<bool, String> {
    let direct = m.matches(path).map_err(|e| e.to_string())?;
    let (no_info, _) = m
        .matches_with_parent(path, &MatchInfo::default())
        .map_err(|e| e.to_string())?;
    let parent = match path.rfind('/') {
        Some(i) => go_clean(&path[..=i]),
        None => ".".into(),
    };
    let mut info = MatchInfo::default();
    if parent != "." {
        let dirs: Vec<&str> = parent.split('/').collect();
        for i in 0..dirs.len() {
            let prefix = dirs[..=i].join("/");
            // Upstream ignores errors from the intermediate steps too.
            if let Ok((_, next)) = m.matches_with_parent(&prefix, &info) {
                info = next;
            }
        }
    }
    let (walked, _) = m
        .matches_with_parent(path, &info)
        .map_err(|e| e.to_string())?;
    if direct != no_info || direct != walked {
        return Err(format!(
            "entry points disagree: direct={direct} no_info={no_info} walked={walked}"
        ));
    }
    Ok(direct)
}

fn run_case(case: &Case) -> Result<bool, String> {
    let matcher = Matcher::new(&strings(&case.patterns)).map_err(|e| e.to_string())?;
    let mut result = Ok(false);
    for _ in 0..case.repeat.unwrap_or(1) {
        result = match case.api.as_str() {
            "parent" => all_entry_points(&matcher, &case.path),
            "legacy" => {
                let path = go_clean(&case.path);
                if path == "." {
                    Ok(false)
                } else {
                    all_entry_points(&matcher, &path)
                }
            }
            other => panic!("unknown api {other}"),
        };
        if case.error.is_some() && result.is_ok() {
            break;
        }
    }
    result
}

#[test]
fn cases() {
    let cases: Vec<Case> = load("cases.json");
    let mut failures = Vec::new();
    let mut ran = 0;
    for case in &cases {
        if case.platform != "any" && case.platform != "unix" {
            continue;
        }
        ran += 1;
        let got = run_case(case);
        let ok = match (&case.error, &got) {
            (Some(_), Err(_)) => true,
            (None, Ok(m)) => *m == case.matched,
            _ => false,
        };
        if !ok {
            failures.push(format!(
                "[{}] {:?} vs {:?}: want match={} error={:?}, got {:?}",
                case.origin, case.patterns, case.path, case.matched, case.error, got
            ));
        }
    }
    assert_eq!(ran, 138, "case count");
    assert!(
        failures.is_empty(),
        "{} of {ran} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[derive(Deserialize)]
struct PatternListCase {
    origin: String,
    patterns: Vec<String>,
    ok: bool,
    pattern_count: Option<usize>,
    has_exclusions: Option<bool>,
}

#[test]
fn pattern_list() {
    let cases: Vec<PatternListCase> = load("pattern-list.json");
    assert!(!cases.is_empty());
    for case in &cases {
        let built = Matcher::new(&case.patterns);
        assert_eq!(
            built.is_ok(),
            case.ok,
            "[{}] {:?}",
            case.origin,
            case.patterns
        );
        let Ok(m) = built else { continue };
        if let Some(count) = case.pattern_count {
            assert_eq!(m.rules().len(), count, "[{}] pattern_count", case.origin);
        }
        if let Some(excl) = case.has_exclusions {
            assert_eq!(m.has_exceptions(), excl, "[{}] has_exclusions", case.origin);
        }
    }
}

#[derive(Deserialize)]
struct IgnoreFileCase {
    content: Option<String>,
    expected: Vec<String>,
}

#[test]
fn ignorefile() {
    let cases: Vec<IgnoreFileCase> = load("ignorefile.json");
    assert!(!cases.is_empty());
    for case in &cases {
        let got: Vec<String> = match &case.content {
            None => Vec::new(),
            Some(content) => read_patterns(content)
                .into_iter()
                .map(|l| l.pattern)
                .collect(),
        };
        assert_eq!(got, case.expected, "content {:?}", case.content);
    }
}
