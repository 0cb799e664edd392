//! Dockerfile errors point at file:line:col with the line and a caret; features not built yet
//! say so.

use crate::support::Kiln;

#[test]
fn unknown_instruction_is_located_with_a_hint() {
    let Some(k) = Kiln::new("unknown_instruction_is_located_with_a_hint") else {
        return;
    };
    let ctx = k.context(
        "ctx",
        &[("Dockerfile", "FROM busybox\nRUN true\nCOPPY a b\n")],
    );
    let err = k.build(&ctx, &[]).failed().stderr;
    assert!(err.contains("unknown instruction: COPPY"), "{err}");
    assert!(err.contains("did you mean COPY?"), "{err}");
    assert!(err.contains("Dockerfile:3:1"), "{err}");
    let line = err
        .lines()
        .position(|l| l.ends_with("3 | COPPY a b"))
        .unwrap_or_else(|| panic!("no snippet:\n{err}"));
    let caret = err.lines().nth(line + 1).unwrap_or_default();
    assert!(
        caret.trim_end().ends_with("| ^^^^^"),
        "caret under COPPY:\n{err}"
    );
    assert_eq!(
        err.matches("unknown instruction").count(),
        1,
        "the error is printed once:\n{err}"
    );
    assert!(!err.contains("RUN true"), "nothing ran:\n{err}");
}

#[test]
fn unsupported_features_say_not_supported_yet() {
    let Some(k) = Kiln::new("unsupported_features_say_not_supported_yet") else {
        return;
    };
    let cases = [(
        "ADD https://example.com/repo.git?fetch-by-commit /src",
        "query `fetch-by-commit`",
    )];
    for (i, (line, what)) in cases.iter().enumerate() {
        let dockerfile = format!("FROM busybox\n{line}\nRUN echo after\n");
        let ctx = k.context(
            &format!("ctx{i}"),
            &[("Dockerfile", &dockerfile), ("a.txt", "a\n")],
        );
        let err = k.build(&ctx, &[]).failed().stderr;
        assert!(
            err.contains(&format!("{what} is not supported yet")),
            "{line}:\n{err}"
        );
        assert!(err.contains("Dockerfile:2:1"), "{line}:\n{err}");
        assert!(err.contains(&format!("2 | {line}")), "{line}:\n{err}");
        assert_eq!(
            err.matches("not supported yet").count(),
            1,
            "printed once:\n{err}"
        );
        assert!(
            !err.contains("RUN echo after"),
            "{line}: a step ran:\n{err}"
        );
    }

    let ctx = k.context("cache", &[("Dockerfile", "FROM busybox\n")]);
    let err = k.build(&ctx, &["--cache-to", "type=gha"]).failed().stderr;
    assert!(
        err.contains("--cache-to") && err.contains("not supported yet"),
        "{err}"
    );
}
