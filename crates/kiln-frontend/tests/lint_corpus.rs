//! Golden build checks: each `corpus/lint/<case>/Dockerfile` is linted over all stages (as
//! `--check` does) and the rendered warnings must equal `expected.txt`. A case may add a
//! `dockerignore` file (named without the dot so it never filters the repository itself) and an
//! `opts.txt` with `target=NAME`, `build-arg=KEY=VALUE` and `platform=OS/ARCH` lines.
//! `KILN_BLESS=1` rewrites the expected files.

use std::collections::BTreeMap;
use std::path::Path;

use kiln_frontend::{LintOptions, lint};
use kiln_oci::Platform;

fn run_case(case: &Path) -> String {
    let source = std::fs::read_to_string(case.join("Dockerfile")).expect("Dockerfile");
    let mut build_args = BTreeMap::new();
    let mut target = None;
    let mut platform = Platform::new("linux", "amd64", None);
    if let Ok(text) = std::fs::read_to_string(case.join("opts.txt")) {
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            match line.split_once('=') {
                Some(("target", t)) => target = Some(t.to_string()),
                Some(("platform", p)) => platform = p.parse().expect("platform"),
                Some(("build-arg", kv)) => {
                    let (k, v) = kv.split_once('=').expect("build-arg=KEY=VALUE");
                    build_args.insert(k.to_string(), v.to_string());
                }
                _ => panic!("{}: bad opts.txt line `{line}`", case.display()),
            }
        }
    }
    let ignore = std::fs::read_to_string(case.join("dockerignore"))
        .ok()
        .map(|t| kiln_ignore::Matcher::from_dockerignore(&t).expect("dockerignore"));
    let dockerfile = match kiln_dockerfile::parse(&source) {
        Ok(d) => d,
        Err(e) => return e.render("Dockerfile", &source),
    };
    let opts = LintOptions {
        build_args: Some(&build_args),
        target: target.as_deref(),
        platform: Some(&platform),
        ignore: ignore.as_ref(),
        images: None,
        all_stages: true,
    };
    let report = match lint(&dockerfile, &source, &opts) {
        Ok(r) => r,
        Err(e) => return format!("{e}"),
    };
    let mut out = String::new();
    for w in &report.warnings {
        out.push_str(&w.render("Dockerfile", &source));
        out.push_str(&format!("hint: {}\n\n", w.hint));
    }
    if let Some(v) = report.violation() {
        out.push_str(&format!("error: {v}\n"));
    }
    if out.is_empty() {
        out.push_str("no warnings\n");
    }
    out
}

#[test]
fn lint_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/lint");
    let bless = std::env::var_os("KILN_BLESS").is_some();
    let mut cases: Vec<_> = std::fs::read_dir(&root)
        .expect("corpus dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.join("Dockerfile").is_file())
        .collect();
    cases.sort();
    assert!(!cases.is_empty(), "no lint cases in {}", root.display());
    let mut failed = Vec::new();
    for case in &cases {
        let got = run_case(case);
        let expected_path = case.join("expected.txt");
        if bless {
            std::fs::write(&expected_path, &got).expect("write expected.txt");
            continue;
        }
        let want = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if got != want {
            eprintln!("--- {}\n{got}", case.display());
            failed.push(
                case.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
            );
        }
    }
    assert!(
        failed.is_empty(),
        "lint cases differ (KILN_BLESS=1 rewrites): {failed:?}"
    );
}
