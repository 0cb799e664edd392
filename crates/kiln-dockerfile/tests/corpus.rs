//! Golden corpus: `tests/corpus/parse/<case>/Dockerfile` must parse to `expected.txt`, and
//! `tests/corpus/parse-fail/<case>/Dockerfile` must fail with the rendered error in
//! `expected.txt`. `KILN_BLESS=1` rewrites the expectations.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

fn cases(kind: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(kind);
    let mut dirs: Vec<PathBuf> = fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    dirs
}

fn bless() -> bool {
    std::env::var_os("KILN_BLESS").is_some_and(|v| v == "1")
}

/// Compares `got` with the case's `expected.txt`, or rewrites it when blessing.
fn check(case: &Path, got: &str, failures: &mut Vec<String>) {
    let path = case.join("expected.txt");
    if bless() {
        fs::write(&path, got).unwrap();
        return;
    }
    match fs::read_to_string(&path) {
        Ok(want) if want == got => {}
        Ok(want) => failures.push(format!(
            "{}:\n--- want\n{want}\n--- got\n{got}",
            case.display()
        )),
        Err(e) => failures.push(format!("{}: {e} (run with KILN_BLESS=1)", path.display())),
    }
}

fn dump(df: &kiln_dockerfile::Dockerfile) -> String {
    let d = &df.directives;
    let mut out = format!(
        "directives: syntax={:?} escape={:?} check={:?}\n",
        d.syntax, d.escape, d.check
    );
    for w in &df.warnings {
        let l = w.location;
        let _ = writeln!(
            out,
            "warning {}-{}: {}",
            l.start_line, l.end_line, w.message
        );
    }
    for i in &df.instructions {
        let l = i.location;
        let _ = writeln!(
            out,
            "== {}-{}:{} {} {:?}",
            l.start_line, l.end_line, l.column, i.keyword, i.original
        );
        if !i.comments.is_empty() {
            let _ = writeln!(out, "comments: {:?}", i.comments);
        }
        let _ = writeln!(out, "{:#?}", i.kind);
    }
    out
}

#[test]
fn parse_corpus() {
    let mut failures = Vec::new();
    let cases = cases("parse");
    assert!(!cases.is_empty());
    for case in &cases {
        let src = fs::read_to_string(case.join("Dockerfile")).unwrap();
        match kiln_dockerfile::parse(&src) {
            Ok(df) => check(case, &dump(&df), &mut failures),
            Err(e) => failures.push(format!(
                "{}: {}",
                case.display(),
                e.render("Dockerfile", &src)
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn parse_fail_corpus() {
    let mut failures = Vec::new();
    let cases = cases("parse-fail");
    assert!(!cases.is_empty());
    for case in &cases {
        let src = fs::read_to_string(case.join("Dockerfile")).unwrap();
        match kiln_dockerfile::parse(&src) {
            Ok(df) => failures.push(format!("{}: parsed: {df:?}", case.display())),
            Err(e) => check(case, &e.render("Dockerfile", &src), &mut failures),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
