//! Multi-stage builds: COPY --from by name and by index, --target pruning, unknown targets.

use crate::support::Kiln;

const DOCKERFILE: &str = "FROM busybox AS base
RUN echo base > /base.txt

FROM busybox AS broken
RUN echo broken-ran && exit 1

FROM busybox AS other
RUN echo other > /other.txt

FROM base AS final
COPY --from=other /other.txt /o.txt
COPY --from=0 /base.txt /b.txt
CMD [\"cat\", \"/o.txt\", \"/b.txt\"]
";

#[test]
fn multi_stage_copy_from_and_target() {
    let Some(k) = Kiln::new("multi_stage_copy_from_and_target") else {
        return;
    };
    let ctx = k.context("ctx", &[("Dockerfile", DOCKERFILE)]);

    // The last stage needs `base` and `other` (both run), never `broken`.
    let tag = k.unique("multi");
    let built = k.build(&ctx, &["-t", &tag]).ok();
    let p = built.progress();
    assert!(
        !p.raw().contains("broken"),
        "the unneeded stage appeared:\n{}",
        p.raw()
    );
    assert!(!p.step("[base 2/2] RUN echo base").cached, "{}", p.raw());
    assert!(!p.step("[other 2/2] RUN echo other").cached, "{}", p.raw());
    assert!(
        p.steps().iter().any(|v| v.name.starts_with("[final ")),
        "{}",
        p.raw()
    );
    let out = k.kiln(&["run", &tag]).ok();
    assert_eq!(out.stdout, "other\nbase\n");

    // --target other: only that stage.
    let other = k.unique("other");
    let p = k
        .build(&ctx, &["--target", "other", "-t", &other])
        .ok()
        .progress();
    assert!(
        p.steps().iter().all(|v| v.name.contains("other")),
        "{}",
        p.raw()
    );
    assert!(!p.raw().contains("broken"), "{}", p.raw());
    let out = k.kiln(&["run", &other, "cat", "/other.txt"]).ok();
    assert_eq!(out.stdout, "other\n");
    let out = k.kiln(&["run", &other, "ls", "/"]).ok();
    assert!(
        !out.stdout.lines().any(|l| l == "base.txt"),
        "{}",
        out.stdout
    );

    // --target broken really runs the failing stage (so the pruning above is meaningful).
    let failed = k.build(&ctx, &["--target", "broken"]).failed();
    assert!(failed.stderr.contains("broken-ran"), "{}", failed.stderr);
    k.assert_clean();

    // An unknown target names the valid ones.
    let unknown = k.build(&ctx, &["--target", "nope"]).failed();
    assert!(unknown.stderr.contains("nope"), "{}", unknown.stderr);
    assert!(
        unknown.stderr.contains("base, broken, other, final"),
        "{}",
        unknown.stderr
    );
}
