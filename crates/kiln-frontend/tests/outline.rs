//! `--call outline` and `--call targets` against buildx v0.36.1's output, recorded byte for
//! byte in `tests/corpus/outline/<case>/{outline,targets}.{txt,json}` (an `options` file holds
//! `target=NAME` and `build-arg=K=V` lines). Cases avoid two secrets or args on one line, where
//! BuildKit's order comes from a map. `KILN_BLESS=1` rewrites the expectations from kiln.

use std::collections::BTreeMap;
use std::path::Path;

#[test]
fn outline_and_targets_match_buildx() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/outline");
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    cases.sort();
    assert!(cases.len() >= 4, "{cases:?}");
    let bless = std::env::var_os("KILN_BLESS").is_some();
    let mut failures = Vec::new();
    for case in cases {
        let source = std::fs::read_to_string(case.join("Dockerfile")).unwrap();
        let mut target = None;
        let mut build_args = BTreeMap::new();
        if let Ok(opts) = std::fs::read_to_string(case.join("options")) {
            for line in opts.lines() {
                if let Some(t) = line.strip_prefix("target=") {
                    target = Some(t.to_string());
                } else if let Some((k, v)) = line
                    .strip_prefix("build-arg=")
                    .and_then(|kv| kv.split_once('='))
                {
                    build_args.insert(k.to_string(), v.to_string());
                }
            }
        }
        let df = kiln_dockerfile::parse(&source).unwrap();
        let outline = kiln_frontend::outline(&df, &source, &build_args, target.as_deref()).unwrap();
        let targets = kiln_frontend::targets(&df, &source);
        for (file, got) in [
            ("outline.txt", outline.to_text()),
            ("outline.json", outline.to_json()),
            ("targets.txt", targets.to_text()),
            ("targets.json", targets.to_json()),
        ] {
            let path = case.join(file);
            if bless {
                std::fs::write(&path, &got).unwrap();
                continue;
            }
            let want = std::fs::read_to_string(&path).unwrap();
            if want != got {
                failures.push(format!(
                    "{}:\n--- want\n{want}--- got\n{got}",
                    path.display()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
