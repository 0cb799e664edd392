//! Cache rules on a busybox build: what invalidates a step and what does not.

use std::time::{Duration, SystemTime};

use crate::support::Kiln;

const DOCKERFILE: &str = "FROM busybox
WORKDIR /app
COPY requirements.txt .
RUN echo installing && cat requirements.txt > /deps.txt
COPY . .
RUN cat main.txt
";

#[test]
fn cache_rules() {
    let Some(k) = Kiln::new("cache_rules") else {
        return;
    };
    let ctx = k.context(
        "ctx",
        &[
            ("Dockerfile", DOCKERFILE),
            ("requirements.txt", "flask\n"),
            ("main.txt", "version one\n"),
        ],
    );
    let tag = k.unique("cache");
    let build = |extra: &[&str]| {
        let mut args = vec!["-t", tag.as_str()];
        args.extend_from_slice(extra);
        k.build(&ctx, &args).ok().progress()
    };

    let first = build(&[]);
    assert_eq!(first.steps().len(), 6, "{}", first.raw());
    let run = first.step("RUN cat main.txt");
    assert!(
        !run.cached && run.logs.iter().any(|l| l == "version one"),
        "{}",
        first.raw()
    );

    // (a) Nothing changed: every step is a cache hit.
    let again = build(&[]);
    assert_eq!(again.steps().len(), 6, "{}", again.raw());
    assert!(
        again.rebuilt().is_empty(),
        "rebuilt {:?}:\n{}",
        again.rebuilt(),
        again.raw()
    );

    // (b) A file only `COPY . .` reads: the earlier COPY and RUN stay cached.
    std::fs::write(ctx.join("main.txt"), "version two\n").unwrap();
    let edited = build(&[]);
    for cached in [
        "FROM",
        "WORKDIR /app",
        "COPY requirements.txt",
        "RUN echo installing",
    ] {
        assert!(
            edited.step(cached).cached,
            "{cached} should be cached:\n{}",
            edited.raw()
        );
    }
    assert_eq!(edited.rebuilt().len(), 2, "{}", edited.raw());
    assert!(!edited.step("COPY . .").cached);
    let run = edited.step("RUN cat main.txt");
    assert!(
        run.logs.iter().any(|l| l == "version two"),
        "{}",
        edited.raw()
    );

    // (c) A new mtime alone changes nothing.
    let later = SystemTime::now() + Duration::from_secs(3600);
    for f in ["requirements.txt", "main.txt", "Dockerfile"] {
        std::fs::File::options()
            .write(true)
            .open(ctx.join(f))
            .unwrap()
            .set_modified(later)
            .unwrap();
    }
    let touched = build(&[]);
    assert!(
        touched.rebuilt().is_empty(),
        "rebuilt {:?}:\n{}",
        touched.rebuilt(),
        touched.raw()
    );

    // (d) --no-cache runs every step again.
    let fresh = build(&["--no-cache"]);
    assert_eq!(fresh.steps().len(), 6, "{}", fresh.raw());
    let cached: Vec<&str> = fresh
        .steps()
        .iter()
        .filter(|v| v.cached)
        .map(|v| v.name.as_str())
        .collect();
    assert!(
        cached.is_empty(),
        "--no-cache still used the cache for {cached:?}:\n{}",
        fresh.raw()
    );
    assert!(
        fresh
            .step("RUN echo installing")
            .logs
            .iter()
            .any(|l| l == "installing"),
        "{}",
        fresh.raw()
    );

    // (e) A mode change invalidates the COPY that reads the file, and the image has the mode.
    let path = ctx.join("requirements.txt");
    let mut perms = std::fs::metadata(&path).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&path, perms).unwrap();
    let chmodded = build(&[]);
    assert!(chmodded.step("WORKDIR /app").cached, "{}", chmodded.raw());
    assert!(
        !chmodded.step("COPY requirements.txt").cached,
        "{}",
        chmodded.raw()
    );
    assert!(
        !chmodded.step("RUN echo installing").cached,
        "{}",
        chmodded.raw()
    );
    let mode = k
        .kiln(&["run", &tag, "stat", "-c", "%a", "/app/requirements.txt"])
        .ok();
    assert_eq!(mode.stdout.trim(), "755");
}
