//! Automatic GC after builds (`[[worker.oci.gcpolicy]]`), `kiln prune --dry-run` against a real
//! prune, and `kiln du`'s GC POLICY column (issue 17).

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::support::Kiln;

/// Appends `extra` to the test's config (the registry mirror stays).
fn configure(k: &Kiln, extra: &str) {
    let mut text = std::fs::read_to_string(&k.config).unwrap();
    text.push_str(extra);
    std::fs::write(&k.config, text).unwrap();
}

/// The ids of `kind` rows in `kiln du --verbose`.
fn ids_of(k: &Kiln, kind: &str) -> BTreeSet<String> {
    let verbose = k.kiln(&["du", "--verbose"]).ok().stdout;
    verbose
        .split("\n\n")
        .filter(|row| row.contains(&format!("Type:\t\t{kind}\n")))
        .filter_map(|row| row.lines().next()?.strip_prefix("ID:\t\t"))
        .map(str::to_string)
        .collect()
}

/// Every path under `root` (the lock and the tmp dir aside).
fn files_under(root: &std::path::Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = e.path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if rel == "tmp" || rel == "engine.lock" {
                continue;
            }
            if e.file_type().unwrap().is_dir() {
                todo.push(path);
            }
            out.insert(rel);
        }
    }
    out
}

/// The first column of a table's rows (after its header, up to the first blank line).
fn table_ids(text: &str, header: &str) -> BTreeSet<String> {
    let after = text.split_once(header).map_or("", |(_, t)| t);
    after
        .lines()
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[test]
fn gc_after_a_build_removes_old_records_and_keeps_recent_ones() {
    let Some(k) = Kiln::new("gc_after_a_build_removes_old_records_and_keeps_recent_ones") else {
        return;
    };
    // Anything unused for 3 seconds goes while the build cache is over 1 KiB (it always is).
    configure(
        &k,
        "\n[worker.oci]\n[[worker.oci.gcpolicy]]\nkeepDuration = \"3s\"\nmaxUsedSpace = \"1KB\"\n",
    );
    let one = k.context(
        "one",
        &[("Dockerfile", "FROM busybox\nRUN echo one > /one\n")],
    );
    let two = k.context(
        "two",
        &[("Dockerfile", "FROM busybox\nRUN echo two > /two\n")],
    );
    k.build(&one, &[]).ok();
    // Just made: the GC after the build kept them.
    let first = ids_of(&k, "regular");
    assert!(!first.is_empty());
    assert_eq!(ids_of(&k, "source.image").len(), 1);

    std::thread::sleep(Duration::from_secs(4));
    k.build(&two, &[]).ok();
    let second = ids_of(&k, "regular");
    assert!(
        second.is_disjoint(&first),
        "the first build's records outlived the GC: {first:?} in {second:?}"
    );
    assert!(!second.is_empty(), "the second build's records went too");
    // Base images go only with `all = true`.
    assert_eq!(ids_of(&k, "source.image").len(), 1);
    // And their layers went with them: nothing is left unreferenced but manifests and configs.
    let du = k.kiln(&["du", "--verbose"]).ok().stdout;
    assert!(!du.contains("Description:\tunpacked layer"), "{du}");

    // The first build's step runs again; the second's is cached.
    let p = k.build(&one, &[]).ok().progress();
    assert!(!p.step("RUN echo one").cached, "{}", p.raw());
    let p = k.build(&two, &[]).ok().progress();
    assert!(p.step("RUN echo two").cached, "{}", p.raw());
    k.assert_clean();
}

#[test]
fn prune_dry_run_deletes_nothing_and_lists_what_prune_removes() {
    let Some(k) = Kiln::new("prune_dry_run_deletes_nothing_and_lists_what_prune_removes") else {
        return;
    };
    configure(&k, "\n[worker.oci]\ngc = false\n");
    let ctx = k.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN --mount=type=cache,id=dry,target=/c echo x >> /c/n && cp /c/n /n\nRUN echo b > /b\n",
        )],
    );
    k.build(&ctx, &[]).ok();
    // (After a `du`, which leaves `cache/layer-sizes.json`.)
    let du_before = ids_of(&k, "regular");
    let before = files_under(&k.root);

    let dry = k.kiln(&["prune", "--dry-run"]).ok().stdout;
    assert!(
        dry.starts_with("Would delete (dry run: nothing was deleted):\n"),
        "{dry}"
    );
    let header = "ID";
    let planned = table_ids(&dry, header);
    assert!(planned.len() >= 3, "two steps and a cache mount: {dry}");
    assert!(
        dry.contains("exec.cachemount") && dry.contains("regular"),
        "{dry}"
    );
    for col in ["SHARED", "RULE", "REASON", "LAST ACCESSED"] {
        assert!(dry.contains(col), "{dry}");
    }
    // Not the base image without --all.
    assert!(!dry.contains("source.image"), "{dry}");
    assert_eq!(
        files_under(&k.root),
        before,
        "the dry run deleted something"
    );
    assert_eq!(ids_of(&k, "regular"), du_before);

    // A dry run of `until` older than anything here: nothing.
    let none = k
        .kiln(&["prune", "--dry-run", "--filter", "until=1h"])
        .ok()
        .stdout;
    assert!(table_ids(&none, header).is_empty(), "{none}");
    // Under a space limit, the least recently used row goes first, and says why.
    let capped = k
        .kiln(&["prune", "--dry-run", "--max-used-space", "1"])
        .ok()
        .stdout;
    assert!(!table_ids(&capped, header).is_empty(), "{capped}");
    assert!(capped.contains("(its space limits)"), "{capped}");
    let roomy = k
        .kiln(&["prune", "--dry-run", "--max-used-space", "1GB"])
        .ok()
        .stdout;
    assert!(table_ids(&roomy, header).is_empty(), "{roomy}");
    let bad = k
        .kiln(&["prune", "--dry-run", "--max-used-space", "10%"])
        .failed();
    assert!(
        bad.stderr.contains("invalid --max-used-space `10%`"),
        "{}",
        bad.stderr
    );

    let real = k.kiln(&["prune", "-f"]).ok().stdout;
    let removed: BTreeSet<String> = real
        .split_once("Deleted build cache objects:\n")
        .map_or("", |(_, t)| t)
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    assert_eq!(planned, removed, "dry run:\n{dry}\nprune:\n{real}");
    let total = |t: &str| t.lines().last().unwrap().to_string();
    assert_eq!(total(&dry), total(&real));
    k.assert_clean();
}

#[test]
fn du_shows_which_rows_the_policy_removes() {
    let Some(k) = Kiln::new("du_shows_which_rows_the_policy_removes") else {
        return;
    };
    // Cache mounts unused for 4 seconds.
    configure(
        &k,
        "\n[[worker.oci.gcpolicy]]\nkeepDuration = 4\nfilters = [\"type==exec.cachemount\"]\n",
    );
    let ctx = k.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN --mount=type=cache,id=pol,target=/c echo 12345 > /c/n\n",
        )],
    );
    k.build(&ctx, &[]).ok();
    let du = k.kiln(&["du"]).ok().stdout;
    assert!(du.lines().next().unwrap().ends_with("GC POLICY"), "{du}");
    assert!(du.contains("By GC policy:\t0B"), "{du}");
    std::thread::sleep(Duration::from_secs(5));

    let du = k.kiln(&["du"]).ok().stdout;
    let row = |kind: &str| {
        du.lines()
            .find(|l| l.split_whitespace().nth(1) == Some(kind))
            .unwrap_or_else(|| panic!("no {kind} row: {du}"))
            .to_string()
    };
    assert!(row("exec.cachemount").ends_with("gcpolicy[0]"), "{du}");
    assert!(row("regular").ends_with("keep"), "{du}");
    assert!(row("source.image").ends_with("keep"), "{du}");
    assert!(du.contains("By GC policy:\t6B"), "{du}");
    let verbose = k.kiln(&["du", "--verbose"]).ok().stdout;
    assert!(
        verbose.contains("GC policy:\tremove by gcpolicy[0]: unused for ")
            && verbose.contains("(keepDuration 4s), matches `type==exec.cachemount`"),
        "{verbose}"
    );

    // `prune --gc` applies the same policy.
    let pruned = k.kiln(&["prune", "--gc", "-f"]).ok().stdout;
    assert_eq!(ids_of(&k, "exec.cachemount").len(), 0, "{pruned}");
    assert!(!ids_of(&k, "regular").is_empty());
    k.assert_clean();
}

#[test]
fn bad_gc_settings_name_the_file_line_and_column() {
    let Some(k) = Kiln::new("bad_gc_settings_name_the_file_line_and_column") else {
        return;
    };
    configure(&k, "\n[worker.oci]\nreservedSpace = \"10 parsecs\"\n");
    let out = k.kiln(&["du"]).failed();
    let config = k.config.display().to_string();
    assert!(out.stderr.contains(&config), "{}", out.stderr);
    assert!(
        out.stderr.contains("invalid disk space `10 parsecs`"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains(", column "), "{}", out.stderr);
}

#[test]
fn gc_after_one_build_leaves_a_running_build_whole() {
    let Some(k) = Kiln::new("gc_after_one_build_leaves_a_running_build_whole") else {
        return;
    };
    // Everything goes, base images included, whatever its age: only what is held stays.
    configure(&k, "\n[[worker.oci.gcpolicy]]\nall = true\n");
    // The held build's step waits for a file the test creates in the (bind-mounted) context.
    let held = k.context(
        "held",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN --mount=type=cache,id=held,target=/c --mount=target=/ctx touch /c/started && while [ ! -e /ctx/go ]; do sleep 0.05; done && echo held > /held\n",
        )],
    );
    let quick = k.context(
        "quick",
        &[("Dockerfile", "FROM busybox\nRUN echo quick > /quick\n")],
    );
    let tag = k.unique("held");
    let mut build = k
        .command(&["build", "--progress", "plain", "-t", &tag])
        .arg(&held)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mounts = k.root.join("cache-mounts");
    let started = || {
        std::fs::read_dir(&mounts)
            .map(|rd| rd.flatten().any(|e| e.path().join("started").exists()))
            .unwrap_or(false)
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    while !started() {
        assert!(
            build.try_wait().unwrap().is_none(),
            "the build ended before its step started"
        );
        assert!(Instant::now() < deadline, "the step never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    // This build's GC runs while the other one holds its cache mount and the base image.
    k.build(&quick, &[]).ok();
    // It did remove what nobody holds: every record, the base image's too.
    assert!(ids_of(&k, "regular").is_empty());
    assert!(ids_of(&k, "source.image").is_empty());
    assert!(started(), "the cache mount in use was removed");
    let layers = std::fs::read_dir(k.root.join("layers")).unwrap().count();
    assert!(layers > 0, "layers went while another build ran");

    std::fs::write(held.join("go"), "").unwrap();
    let status = crate::support::wait_timeout(&mut build, Duration::from_secs(300)).unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(build.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(status.success(), "{err}");
    let out = k.kiln(&["run", "--rm", &tag, "cat", "/held"]).ok();
    assert_eq!(out.stdout, "held\n");
    k.assert_clean();
}
