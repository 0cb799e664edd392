//! `kiln build --explain`: each kind of change to a step's cache key is named against the
//! same step's previous key, in the `explain` section on stderr and under `kiln.explain` in the
//! metadata file. BuildKit has no such feature, so there is nothing of it to compare with.

use std::path::Path;

use serde_json::Value;

use crate::support::{Kiln, Run};

/// `kiln build --explain --metadata-file M EXTRA... CTX`; returns the run and `kiln.explain`.
fn build(k: &Kiln, ctx: &Path, extra: &[&str]) -> (Run, Vec<Value>) {
    let meta = k.dir().join("meta.json");
    let _ = std::fs::remove_file(&meta);
    let mut args = vec!["--explain", "--metadata-file", meta.to_str().unwrap()];
    args.extend_from_slice(extra);
    let run = k.build(ctx, &args).ok();
    assert!(
        run.stderr
            .contains("explain: why steps did not come from the cache"),
        "{}",
        run.stderr
    );
    let meta: Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
    let steps = meta["kiln.explain"]
        .as_array()
        .unwrap_or_else(|| panic!("no kiln.explain in {meta}"))
        .clone();
    (run, steps)
}

/// The reasons given for the step whose name contains `needle`.
#[track_caller]
fn reasons(steps: &[Value], needle: &str) -> Vec<String> {
    let step = steps
        .iter()
        .find(|s| s["step"].as_str().unwrap().contains(needle))
        .unwrap_or_else(|| panic!("no explained step `{needle}` in {steps:#?}"));
    step["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect()
}

#[track_caller]
fn names(steps: &[Value]) -> Vec<String> {
    steps
        .iter()
        .map(|s| s["step"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn explain_context_file_edit() {
    let Some(k) = Kiln::new("explain_context_file_edit") else {
        return;
    };
    let ctx = k.context(
        "ctx",
        &[
            ("Dockerfile", "FROM busybox\nCOPY app/ /app/\nRUN ls /app\n"),
            ("app/main.py", "print(1)\n"),
            ("app/util.py", "x = 1\n"),
        ],
    );
    let (run, first) = build(&k, &ctx, &[]);
    assert_eq!(first.len(), 3, "{}", run.stderr);
    for s in &first {
        assert_eq!(
            s["reasons"],
            serde_json::json!(["first build of this step"]),
            "{first:#?}"
        );
    }
    let (_, again) = build(&k, &ctx, &[]);
    assert!(again.is_empty(), "{again:#?}");

    std::fs::write(ctx.join("app/main.py"), "print(2)\n").unwrap();
    std::fs::write(ctx.join("app/new.py"), "\n").unwrap();
    let (run, edited) = build(&k, &ctx, &[]);
    assert_eq!(
        names(&edited),
        ["[2/3] COPY app/ /app/", "[3/3] RUN ls /app"],
        "{}",
        run.stderr
    );
    assert_eq!(
        reasons(&edited, "COPY"),
        [
            "app/main.py changed (read by COPY)",
            "app/new.py added (read by COPY)"
        ]
    );
    assert_eq!(
        reasons(&edited, "RUN ls"),
        ["parent step changed: [2/3] COPY app/ /app/"]
    );
    assert!(
        run.stderr
            .contains("  [2/3] COPY app/ /app/\n    - app/main.py changed (read by COPY)\n"),
        "{}",
        run.stderr
    );
}

#[test]
fn explain_build_arg_change() {
    let Some(k) = Kiln::new("explain_build_arg_change") else {
        return;
    };
    let ctx = k.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM busybox\nARG VERSION=1 API_TOKEN\nRUN echo $VERSION $API_TOKEN > /v\n",
        )],
    );
    build(&k, &ctx, &["--build-arg", "API_TOKEN=a"]);
    let (_, steps) = build(
        &k,
        &ctx,
        &["--build-arg", "VERSION=2", "--build-arg", "API_TOKEN=b"],
    );
    assert_eq!(names(&steps), ["[2/2] RUN echo $VERSION $API_TOKEN > /v"]);
    // A value whose name looks like a secret is not shown.
    assert_eq!(
        reasons(&steps, "RUN"),
        [
            "ARG API_TOKEN changed (value hidden: the name looks like a secret)",
            "ARG VERSION changed: \"1\" -> \"2\"",
        ]
    );
}

#[test]
fn explain_env_change_in_an_earlier_instruction() {
    let Some(k) = Kiln::new("explain_env_change_in_an_earlier_instruction") else {
        return;
    };
    let dockerfile =
        |v: &str| format!("FROM busybox\nENV MODE={v}\nRUN echo $MODE > /m\nRUN cat /m\n");
    let ctx = k.context("ctx", &[("Dockerfile", &dockerfile("debug"))]);
    build(&k, &ctx, &[]);
    std::fs::write(ctx.join("Dockerfile"), dockerfile("release")).unwrap();
    let (_, steps) = build(&k, &ctx, &[]);
    assert_eq!(
        names(&steps),
        ["[2/3] RUN echo $MODE > /m", "[3/3] RUN cat /m"]
    );
    assert_eq!(
        reasons(&steps, "RUN echo"),
        ["ENV MODE changed: \"debug\" -> \"release\""]
    );
    // The later RUN sees the same variable, and a parent that changed.
    assert_eq!(
        reasons(&steps, "RUN cat"),
        [
            "ENV MODE changed: \"debug\" -> \"release\"",
            "parent step changed: [2/3] RUN echo $MODE > /m"
        ]
    );
}

#[test]
fn explain_base_image_digest_change() {
    let Some(k) = Kiln::new("explain_base_image_digest_change") else {
        return;
    };
    let base = format!("{}/{}:v", k.registry, k.unique("explain-base"));
    let push_base = |content: &str| k.push_marked_base(&base, content);
    push_base("one");
    let ctx = k.context(
        "ctx",
        &[("Dockerfile", &format!("FROM {base}\nRUN cat /base\n"))],
    );
    build(&k, &ctx, &[]);
    push_base("two");
    let (run, steps) = build(&k, &ctx, &[]);
    assert_eq!(steps.len(), 2, "{}", run.stderr);
    let from = reasons(&steps, "FROM");
    assert_eq!(from.len(), 1, "{from:?}");
    let (old, new) = from[0]
        .strip_prefix("base image changed: ")
        .and_then(|r| r.split_once(" -> "))
        .unwrap_or_else(|| panic!("{from:?}"));
    assert!(old.contains(":v@sha256:") && new.contains(":v@sha256:") && old != new);
    assert!(
        reasons(&steps, "RUN cat")[0].starts_with("parent step changed: [1/2] FROM "),
        "{steps:#?}"
    );
}

#[test]
fn explain_mount_change() {
    let Some(k) = Kiln::new("explain_mount_change") else {
        return;
    };
    let dockerfile = |id: &str| {
        format!(
            "FROM busybox\nRUN --mount=type=cache,id={id},target=/c --mount=type=secret,id=s{id} ls /c\n"
        )
    };
    let ctx = k.context("ctx", &[("Dockerfile", &dockerfile("a"))]);
    build(&k, &ctx, &[]);
    std::fs::write(ctx.join("Dockerfile"), dockerfile("b")).unwrap();
    let (_, steps) = build(&k, &ctx, &[]);
    assert_eq!(
        reasons(&steps, "RUN"),
        [
            "mount removed: type=cache,id=a,target=/c,sharing=shared,mode=755,uid=0,gid=0",
            "mount removed: type=secret,id=sa,target=/run/secrets/sa,required=false,mode=400,uid=0,gid=0",
            "mount added: type=cache,id=b,target=/c,sharing=shared,mode=755,uid=0,gid=0",
            "mount added: type=secret,id=sb,target=/run/secrets/sb,required=false,mode=400,uid=0,gid=0",
        ]
    );
}

#[test]
fn explain_platform_change() {
    let Some(k) = crate::multi_platform::kiln_for("explain_platform_change") else {
        return;
    };
    let ctx = k.context(
        "ctx",
        &[
            ("Dockerfile", "FROM busybox:multi\nCOPY f /f\n"),
            ("f", "x\n"),
        ],
    );
    build(&k, &ctx, &["--platform", "linux/amd64"]);
    let (_, steps) = build(&k, &ctx, &["--platform", "linux/arm64"]);
    let from = reasons(&steps, "FROM");
    assert_eq!(from.len(), 2, "{from:?}");
    assert!(from[0].starts_with("base image changed: "), "{from:?}");
    assert_eq!(from[1], "platform changed: linux/amd64 -> linux/arm64");
    assert_eq!(
        reasons(&steps, "COPY f"),
        [format!(
            "parent step changed: {}",
            names(&steps)
                .into_iter()
                .find(|n| n.contains("FROM"))
                .unwrap()
        )]
    );
}

#[test]
fn explain_run_text_change() {
    let Some(k) = Kiln::new("explain_run_text_change") else {
        return;
    };
    let ctx = k.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN echo one > /x\nRUN cat /x\n",
        )],
    );
    build(&k, &ctx, &[]);
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM busybox\nRUN echo two > /x\nRUN cat /x\n",
    )
    .unwrap();
    let (_, steps) = build(&k, &ctx, &[]);
    assert_eq!(
        reasons(&steps, "RUN echo"),
        ["command changed: `echo one > /x` -> `echo two > /x`"]
    );
    assert_eq!(
        reasons(&steps, "RUN cat"),
        ["parent step changed: [2/3] RUN echo two > /x"]
    );
}

/// `kiln prune --all` takes the step records with the cache: the next miss is a first build.
#[test]
fn explain_records_go_with_prune_all() {
    let Some(k) = Kiln::new("explain_records_go_with_prune_all") else {
        return;
    };
    let ctx = k.context(
        "ctx",
        &[("Dockerfile", "FROM busybox\nRUN echo one > /one\n")],
    );
    build(&k, &ctx, &[]);
    let records = |dir: &str| {
        std::fs::read_dir(k.root.join(dir))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    assert!(records("step-keys") > 0);
    assert!(records("resolved") > 0);
    k.kiln(&["prune", "-a", "-f"]).ok();
    assert_eq!(records("step-keys"), 0);
    assert_eq!(records("resolved"), 0);
    let (_, steps) = build(&k, &ctx, &[]);
    assert_eq!(
        reasons(&steps, "RUN echo one"),
        ["first build of this step"],
        "{steps:#?}"
    );
}
