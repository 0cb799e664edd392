//! Build checks: `kiln build --check` lints without building and exits 1 on warnings; a normal
//! build lists the warnings at the end, and `# check=error=true` fails it.

use crate::support::Kiln;

const BAD: &str = "FROM busybox\n\nFROM busybox AS Builder\nCMD echo hi\n";

#[test]
fn check_prints_warnings_and_builds_nothing() {
    let Some(k) = Kiln::new("check_prints_warnings_and_builds_nothing") else {
        return;
    };
    let ctx = k.context("bad", &[("Dockerfile", BAD)]);
    for flag in ["--check", "--call=check"] {
        let run = k.build(&ctx, &[flag]);
        assert_eq!(run.code, Some(1), "{flag}:\n{}\n{}", run.stdout, run.stderr);
        let out = &run.stdout;
        assert!(
            out.contains(
                "WARNING: StageNameCasing - https://docs.docker.com/go/dockerfile/rule/stage-name-casing/\n\
                 Stage name 'Builder' should be lowercase\n\
                 Dockerfile:3\n\
                 --------------------\n"
            ),
            "{flag}:\n{out}"
        );
        assert!(
            out.contains("   3 | >>> FROM busybox AS Builder\n"),
            "{out}"
        );
        assert!(
            out.contains("WARNING: JSONArgsRecommended") && out.contains("Dockerfile:4\n"),
            "{out}"
        );
        assert!(
            out.contains("Check complete, 2 warnings have been found!"),
            "{out}"
        );
        // Nothing was resolved or run.
        assert!(!run.stderr.contains("FROM docker.io"), "{}", run.stderr);
    }
    // `format=json`: buildx's JSON, the same warnings, exit 1.
    let run = k.build(&ctx, &["--call=check,format=json"]);
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    let json: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let rules: Vec<&str> = json["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["ruleName"].as_str().unwrap())
        .collect();
    assert_eq!(rules, ["StageNameCasing", "JSONArgsRecommended"], "{json}");
    assert_eq!(
        json["warnings"][0]["location"]["ranges"][0]["start"]["line"],
        3
    );
    assert_eq!(json["sources"][0]["filename"], "Dockerfile");
    let images = k.kiln(&["images", "-q"]).ok();
    assert!(images.stdout.trim().is_empty(), "{}", images.stdout);

    let ctx = k.context(
        "good",
        &[(
            "Dockerfile",
            "FROM busybox AS builder\nCMD [\"echo\", \"hi\"]\n",
        )],
    );
    let run = k.build(&ctx, &["--check"]).ok();
    assert_eq!(run.stdout, "Check complete, no warnings found.\n");

    // The .dockerignore of the context feeds CopyIgnoredFile.
    let ctx = k.context(
        "ignored",
        &[
            ("Dockerfile", "FROM busybox\nCOPY notes.txt /\n"),
            (".dockerignore", "notes.txt\n"),
            ("notes.txt", "x\n"),
        ],
    );
    let run = k.build(&ctx, &["--check"]).failed();
    assert!(
        run.stdout
            .contains("Attempting to Copy file \"notes.txt\" that is excluded by .dockerignore"),
        "{}",
        run.stdout
    );
    k.assert_clean();
}

#[test]
fn build_lists_warnings_and_error_true_fails() {
    let Some(k) = Kiln::new("build_lists_warnings_and_error_true_fails") else {
        return;
    };
    let ctx = k.context("warn", &[("Dockerfile", BAD)]);
    let run = k.build(&ctx, &[]).ok();
    assert!(
        run.stderr.contains("2 warnings found:\n")
            && run
                .stderr
                .contains(" - StageNameCasing: Stage name 'Builder' should be lowercase (line 3)\n")
            && run.stderr.contains(
                " - JSONArgsRecommended: JSON arguments recommended for CMD to prevent unintended behavior related to OS signals (line 4)\n"
            ),
        "{}",
        run.stderr
    );

    let strict = format!("# check=error=true\n{BAD}");
    let ctx = k.context("strict", &[("Dockerfile", &strict)]);
    let run = k.build(&ctx, &[]).failed();
    assert!(
        run.stderr
            .contains("lint violation found for rules: JSONArgsRecommended, StageNameCasing"),
        "{}",
        run.stderr
    );
    k.assert_clean();
}
