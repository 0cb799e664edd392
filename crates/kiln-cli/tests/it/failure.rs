//! A failing RUN: the error names the step, line and exit code, nothing is left behind, and the
//! fixed Dockerfile builds straight away.

use crate::support::Kiln;

#[test]
fn failing_run_reports_and_cleans_up() {
    let Some(k) = Kiln::new("failing_run_reports_and_cleans_up") else {
        return;
    };
    let broken = "FROM busybox\nRUN echo setup\nRUN echo before && exit 3\nRUN echo after\n";
    let ctx = k.context("ctx", &[("Dockerfile", broken)]);

    let run = k.build(&ctx, &[]).failed();
    let err = &run.stderr;
    assert!(
        err.contains("ERROR: failed to solve: [3/4] RUN echo before && exit 3:"),
        "the error names the step:\n{err}"
    );
    assert!(
        err.contains("process \"/bin/sh -c echo before && exit 3\" did not complete successfully"),
        "{err}"
    );
    assert!(err.contains("exit code: 3"), "{err}");
    assert!(
        err.contains("Dockerfile:3"),
        "the error gives the line:\n{err}"
    );
    assert!(
        err.contains("3 | RUN echo before && exit 3"),
        "the snippet shows the line:\n{err}"
    );
    let p = run.progress();
    let step = p.step("RUN echo before");
    assert_eq!(step.logs, vec!["before"], "{err}");
    assert!(
        step.error
            .as_deref()
            .is_some_and(|e| e.contains("exit code: 3")),
        "{err}"
    );
    assert!(
        !err.contains("after"),
        "a step after the failure ran:\n{err}"
    );
    k.assert_clean();

    // Fixed: builds at once, reusing the step before the failure.
    std::fs::write(ctx.join("Dockerfile"), broken.replace("exit 3", "exit 0")).unwrap();
    let tag = k.unique("fixed");
    let p = k.build(&ctx, &["-t", &tag]).ok().progress();
    assert!(p.step("RUN echo setup").cached, "{}", p.raw());
    assert!(
        p.step("RUN echo after").logs.iter().any(|l| l == "after"),
        "{}",
        p.raw()
    );
}
