//! Many builds at once on one `kiln_engine::Engine`, as kilnd runs them: a step two builds
//! need at once runs once, `max-parallelism` holds across builds, and the stores stay whole.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln_engine::{BuildRequest, BuildResult, Config, Engine};
use kiln_progress::{Mode, Progress};

use crate::support::{self, Kiln};

/// The test's engine on its data root, with `extra` appended to its config.
fn engine(k: &Kiln, extra: &str) -> Engine {
    let text = std::fs::read_to_string(&k.config).unwrap() + extra;
    let config = Config::parse(&text).expect("the test config parses");
    Engine::open(&k.root, config).expect("opening the engine")
}

fn request(context: &Path, tag: &str) -> BuildRequest {
    BuildRequest {
        context: context.to_path_buf(),
        tags: vec![tag.parse().expect("a valid tag")],
        ..Default::default()
    }
}

/// Plain progress written to a buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn progress(&self) -> Progress {
        Progress::new(Mode::Plain, Box::new(self.clone()))
    }
    fn parsed(&self) -> support::Progress {
        support::Progress::parse(&String::from_utf8_lossy(&self.0.lock().unwrap()))
    }
}

/// Builds `reqs` at once on `engine`, each in its own task; each result with its progress
/// output.
fn build_all(
    engine: &Arc<Engine>,
    reqs: Vec<BuildRequest>,
) -> Vec<(kiln_engine::Result<BuildResult>, support::Progress)> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tasks: Vec<_> = reqs
            .into_iter()
            .map(|req| {
                let engine = engine.clone();
                tokio::spawn(async move {
                    let out = Captured::default();
                    let progress = out.progress();
                    let r = engine.build(req, &progress).await;
                    progress.finish();
                    (r, out.parsed())
                })
            })
            .collect();
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.expect("the build task ends"));
        }
        results
    })
}

/// The layer digests of an image's manifest, from the store.
fn layers(k: &Kiln, manifest: &kiln_oci::Digest) -> Vec<String> {
    let path = k.root.join("content/blobs/sha256").join(manifest.digest());
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

/// What a cache mount of `id` holds in `file` (the dir is `cache-mounts/<id>-<hash>`).
fn cache_mount_file(k: &Kiln, id: &str, file: &str) -> String {
    let dirs = cache_mount_dirs(k, id);
    assert_eq!(dirs.len(), 1, "one cache mount dir of `{id}`: {dirs:?}");
    std::fs::read_to_string(dirs[0].join(file)).unwrap_or_default()
}

/// The same, or "" while the cache mount is not made yet.
fn cache_mount_file_if_any(k: &Kiln, id: &str, file: &str) -> String {
    match &cache_mount_dirs(k, id)[..] {
        [dir] => std::fs::read_to_string(dir.join(file)).unwrap_or_default(),
        _ => String::new(),
    }
}

fn cache_mount_dirs(k: &Kiln, id: &str) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(k.root.join("cache-mounts")) else {
        return Vec::new();
    };
    entries
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(&format!("{id}-"))
        })
        .collect()
}

/// Issue 18: two builds need the same RUN (same cache key) at once: it runs once (the cache
/// mount it appends to has one line), both builds succeed, both images have its layer, and the
/// build that waited shows the step running, its output, then DONE.
#[test]
fn issue_18_a_step_two_builds_need_at_once_runs_once() {
    let Some(k) = Kiln::new("issue_18_a_step_two_builds_need_at_once_runs_once") else {
        return;
    };
    let run = "RUN --mount=type=cache,id=shared18,target=/c \
               sh -c 'echo step-output && echo ran >> /c/log && echo built > /built && sleep 1'\n";
    let a = k.context(
        "a",
        &[("Dockerfile", &format!("FROM busybox\n{run}LABEL which=a\n"))],
    );
    let b = k.context(
        "b",
        &[("Dockerfile", &format!("FROM busybox\n{run}LABEL which=b\n"))],
    );
    let engine = Arc::new(engine(&k, ""));
    let (ta, tb) = (k.unique("shared-a"), k.unique("shared-b"));
    let started = Instant::now();
    let results = build_all(&engine, vec![request(&a, &ta), request(&b, &tb)]);
    let took = started.elapsed();
    let mut images = Vec::new();
    for (r, p) in &results {
        let r = r.as_ref().unwrap_or_else(|e| panic!("{e}\n{}", p.raw()));
        let step = p.step("RUN --mount");
        assert!(step.done && !step.cached, "{}", p.raw());
        // The build that joined shows the step's output as the one running it does (the
        // line written before it joined replayed).
        assert_eq!(step.logs, ["step-output"], "{}", p.raw());
        images.push(layers(&k, &r.manifest));
    }
    assert_eq!(cache_mount_file(&k, "shared18", "log"), "ran\n", "ran once");
    assert_eq!(images[0], images[1], "both images have the RUN's layer");
    assert_eq!(images[0].len(), 2, "busybox's layer and the RUN's");
    eprintln!("two builds sharing a 1 s step took {took:?}");
    drop(engine);
}

/// Issue 18: `max-parallelism = 1` holds across builds: two builds' independent 1 s RUNs run
/// one after the other (neither sees the other's marker in a shared cache mount), not at once.
#[test]
fn issue_18_max_parallelism_holds_across_builds() {
    let Some(k) = Kiln::new("issue_18_max_parallelism_holds_across_builds") else {
        return;
    };
    let engine = Arc::new(engine(&k, "\n[worker.oci]\nmax-parallelism = 1\n"));
    // busybox pulled and unpacked first, so the timing is the RUNs'.
    let warm = k.context("warm", &[("Dockerfile", "FROM busybox\nRUN true\n")]);
    for (r, p) in build_all(&engine, vec![request(&warm, &k.unique("warm"))]) {
        r.unwrap_or_else(|e| panic!("{e}\n{}", p.raw()));
    }
    let step = |name: &str| {
        format!(
            "FROM busybox\nRUN --mount=type=cache,id=par18,target=/c sh -c \
             'if [ -e /c/running ]; then echo {name} >> /c/overlap; fi; \
             touch /c/running; sleep 1; rm -f /c/running'\n"
        )
    };
    let a = k.context("a", &[("Dockerfile", &step("a"))]);
    let b = k.context("b", &[("Dockerfile", &step("b"))]);
    let started = Instant::now();
    let results = build_all(
        &engine,
        vec![
            request(&a, &k.unique("par-a")),
            request(&b, &k.unique("par-b")),
        ],
    );
    let took = started.elapsed();
    for (r, p) in &results {
        r.as_ref().unwrap_or_else(|e| panic!("{e}\n{}", p.raw()));
    }
    assert_eq!(
        cache_mount_file(&k, "par18", "overlap"),
        "",
        "RUNs overlapped"
    );
    assert!(took >= Duration::from_secs(2), "took {took:?}");
    eprintln!("two 1 s RUNs under max-parallelism=1 took {took:?}");
    drop(engine);
}

/// Issue 18: eight builds at once of four tags (two different images per tag): every build
/// succeeds, the store lists the four names, and each name's image runs.
#[test]
fn issue_18_eight_builds_of_four_tags_keep_the_store_whole() {
    let Some(k) = Kiln::new("issue_18_eight_builds_of_four_tags_keep_the_store_whole") else {
        return;
    };
    let engine = Arc::new(engine(&k, ""));
    let tags: Vec<String> = (0..4).map(|i| k.unique(&format!("many{i}"))).collect();
    let reqs = (0..8)
        .map(|i| {
            let dockerfile = format!(
                "FROM busybox\nRUN echo {} > /which\nRUN echo build{i} > /build\n",
                i % 4
            );
            let ctx = k.context(&format!("c{i}"), &[("Dockerfile", &dockerfile)]);
            request(&ctx, &tags[i % 4])
        })
        .collect();
    let started = Instant::now();
    for (r, p) in build_all(&engine, reqs) {
        r.unwrap_or_else(|e| panic!("{e}\n{}", p.raw()));
    }
    eprintln!("eight builds at once took {:?}", started.elapsed());
    drop(engine);
    let listed = k.kiln(&["images"]).ok().stdout;
    assert_eq!(listed.lines().skip(1).count(), 4, "four images:\n{listed}");
    for (i, tag) in tags.iter().enumerate() {
        let rows = listed
            .lines()
            .filter(|l| l.starts_with(tag.as_str()))
            .count();
        assert_eq!(rows, 1, "`{tag}` once in:\n{listed}");
        let out = k
            .kiln(&["run", "--rm", tag, "cat", "/which", "/build"])
            .ok();
        let build = out.stdout.lines().nth(1).unwrap_or_default().to_string();
        assert_eq!(out.stdout.lines().next(), Some(i.to_string().as_str()));
        assert!(
            build == format!("build{i}") || build == format!("build{}", i + 4),
            "{tag}: {}",
            out.stdout
        );
    }
}

/// Issue 18: the build that started a shared step is cancelled (its task aborted, as a lost
/// client's) while another waits on the step: the step finishes for the waiter, which
/// succeeds, and it ran once.
#[test]
fn issue_18_cancelling_the_starter_leaves_the_waiter_its_step() {
    let Some(k) = Kiln::new("issue_18_cancelling_the_starter_leaves_the_waiter_its_step") else {
        return;
    };
    let run = "RUN --mount=type=cache,id=cancel18,target=/c \
               sh -c 'echo early && echo ran >> /c/log && echo built > /built && sleep 2'\n";
    let a = k.context("a", &[("Dockerfile", &format!("FROM busybox\n{run}"))]);
    let b = k.context(
        "b",
        &[("Dockerfile", &format!("FROM busybox\n{run}LABEL b=1\n"))],
    );
    let engine = Arc::new(engine(&k, ""));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (ta, tb) = (k.unique("cancel-a"), k.unique("cancel-b"));
    let (r, p) = rt.block_on(async {
        let e = engine.clone();
        let first = tokio::spawn(async move {
            let progress = Progress::discard();
            e.build(request(&a, &ta), &progress).await.map(|_| ())
        });
        // The first is in its RUN (the cache mount's log has its line) when the second starts.
        let started = Instant::now();
        while cache_mount_file_if_any(&k, "cancel18", "log").is_empty() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the RUN starts"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let e = engine.clone();
        let second = tokio::spawn(async move {
            let out = Captured::default();
            let progress = out.progress();
            let r = e.build(request(&b, &tb), &progress).await;
            progress.finish();
            (r, out.parsed())
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        first.abort();
        assert!(first.await.unwrap_err().is_cancelled());
        second.await.unwrap()
    });
    let r = r.unwrap_or_else(|e| panic!("{e}\n{}", p.raw()));
    let step = p.step("RUN --mount");
    assert!(step.done && !step.cached, "{}", p.raw());
    assert_eq!(
        step.logs,
        ["early"],
        "written before it joined: {}",
        p.raw()
    );
    assert_eq!(cache_mount_file(&k, "cancel18", "log"), "ran\n", "ran once");
    assert_eq!(layers(&k, &r.manifest).len(), 2, "the RUN's layer is there");
    drop(engine);
}

/// Issue 18: a shared step that fails fails both builds with its own error, not a cancel.
#[test]
fn issue_18_a_failed_shared_step_fails_both_builds_with_its_error() {
    let Some(k) = Kiln::new("issue_18_a_failed_shared_step_fails_both_builds_with_its_error")
    else {
        return;
    };
    let run = "RUN --mount=type=cache,id=fail18,target=/c \
               sh -c 'echo ran >> /c/log && sleep 1 && exit 3'\n";
    let a = k.context("a", &[("Dockerfile", &format!("FROM busybox\n{run}"))]);
    let b = k.context("b", &[("Dockerfile", &format!("FROM busybox\n{run}"))]);
    let engine = Arc::new(engine(&k, ""));
    let results = build_all(
        &engine,
        vec![
            request(&a, &k.unique("fail-a")),
            request(&b, &k.unique("fail-b")),
        ],
    );
    for (r, p) in &results {
        let e = r.as_ref().expect_err("the build fails").to_string();
        assert!(
            e.contains("did not complete successfully: exit code: 3"),
            "{e}\n{}",
            p.raw()
        );
        assert!(p.step("RUN --mount").error.is_some(), "{}", p.raw());
    }
    assert_eq!(cache_mount_file(&k, "fail18", "log"), "ran\n", "ran once");
    drop(engine);
}
