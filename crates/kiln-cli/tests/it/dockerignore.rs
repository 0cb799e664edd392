//! .dockerignore: excluded files never reach the image; `!` re-includes; copying an excluded
//! file by name fails.

use crate::support::Kiln;

#[test]
fn dockerignore_excludes_and_reincludes() {
    let Some(k) = Kiln::new("dockerignore_excludes_and_reincludes") else {
        return;
    };
    let ctx = k.context(
        "ctx",
        &[
            ("Dockerfile", "FROM busybox\nWORKDIR /app\nCOPY . .\n"),
            (
                ".dockerignore",
                "# comment\n*.log\n!keep.log\nsecret.txt\nbuild/\n",
            ),
            ("app.txt", "app\n"),
            ("debug.log", "noise\n"),
            ("keep.log", "kept\n"),
            ("secret.txt", "hunter2\n"),
            ("build/out.bin", "binary\n"),
            // `*.log` matches at the context root only.
            ("sub/nested.log", "nested\n"),
        ],
    );
    let tag = k.unique("ignore");
    k.build(&ctx, &["-t", &tag]).ok();
    let ls = k.kiln(&["run", &tag, "find", "/app"]).ok();
    let mut found: Vec<&str> = ls.stdout.lines().collect();
    found.sort();
    assert_eq!(
        found,
        vec![
            "/app",
            "/app/.dockerignore",
            "/app/Dockerfile",
            "/app/app.txt",
            "/app/keep.log",
            "/app/sub",
            "/app/sub/nested.log"
        ]
    );
    let kept = k.kiln(&["run", &tag, "cat", "/app/keep.log"]).ok();
    assert_eq!(kept.stdout, "kept\n");

    // Naming an excluded file is an error, not an empty copy.
    std::fs::write(
        ctx.join("Secret.Dockerfile"),
        "FROM busybox\nCOPY secret.txt .\n",
    )
    .unwrap();
    let failed = k
        .build(
            &ctx,
            &["-f", &ctx.join("Secret.Dockerfile").to_string_lossy()],
        )
        .failed();
    assert!(failed.stderr.contains("not found"), "{}", failed.stderr);
    assert!(failed.stderr.contains("secret.txt"), "{}", failed.stderr);
    assert!(!failed.stderr.contains("hunter2"), "{}", failed.stderr);
}
