//! Tests of the policy engine on synthetic rows and a fixed clock (a module of `gc_policy.rs`).

use super::*;
use crate::du::Target;

const HOUR: Duration = Duration::from_secs(3600);

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fn row(id: &str, kind: UsageKind, size: u64, age: Duration) -> UsageRecord {
    UsageRecord {
        id: id.into(),
        kind,
        size,
        shared: false,
        in_use: false,
        last_used: Some(now() - age),
        description: format!("row {id}"),
        target: Target::Layer,
    }
}

fn ids(rows: &[UsageRecord], plan: &[Planned]) -> Vec<String> {
    plan.iter().map(|p| rows[p.index].id.clone()).collect()
}

fn run(rules: &[PruneRule], rows: &[UsageRecord], free: u64) -> Vec<Planned> {
    let disk = DiskStat {
        total: 1 << 40,
        free,
    };
    let internal = |r: &UsageRecord| r.kind == UsageKind::SourceImage;
    plan(rules, rows, now(), disk, &internal, &|_| false)
}

/// Oldest first, as `kiln du` lists them.
fn rows() -> Vec<UsageRecord> {
    let mut shared = row("shared", UsageKind::Regular, 400, 90 * HOUR);
    shared.shared = true;
    let mut busy = row("busy", UsageKind::CacheMount, 50, 80 * HOUR);
    busy.in_use = true;
    vec![
        row("base", UsageKind::SourceImage, 1000, 100 * HOUR),
        shared,
        busy,
        row("mount", UsageKind::CacheMount, 300, 72 * HOUR),
        row("old", UsageKind::Regular, 200, 50 * HOUR),
        row("mid", UsageKind::Regular, 200, 10 * HOUR),
        row("new", UsageKind::Regular, 100, HOUR),
    ]
}

#[test]
fn keep_duration_alone_removes_everything_older() {
    let rows = rows();
    let rule = PruneRule {
        name: "r".into(),
        keep_duration: Some(48 * HOUR),
        ..Default::default()
    };
    let p = run(std::slice::from_ref(&rule), &rows, 0);
    // Not the base image (internal), the shared row, nor the cache mount in use.
    assert_eq!(ids(&rows, &p), ["mount", "old"]);
    assert!(
        p[1].reason.contains("unused for 2d2h (keepDuration 2d)"),
        "{}",
        p[1].reason
    );
    assert_eq!(p[1].rule, "r");
    let all = PruneRule { all: true, ..rule };
    let p = run(&[all], &rows, 0);
    assert_eq!(ids(&rows, &p), ["base", "shared", "mount", "old"]);
}

#[test]
fn max_used_space_removes_least_recently_used_until_under_it() {
    let rows = rows();
    // Unshared build cache: 1000 + 50 + 300 + 200 + 200 + 100 = 1850.
    let rule = PruneRule {
        name: "cap".into(),
        max_used_space: 1500,
        ..Default::default()
    };
    let p = run(std::slice::from_ref(&rule), &rows, 0);
    // 1850 -> mount (1550) -> old (1350 < 1500): done; base is internal, shared and busy stay.
    assert_eq!(ids(&rows, &p), ["mount", "old"]);
    assert!(
        p[0].reason.contains("build cache 1.85kB >= 1.5kB"),
        "{}",
        p[0].reason
    );
    // Reserved space wins over a lower max.
    let reserved = PruneRule {
        reserved_space: 1600,
        ..rule.clone()
    };
    assert_eq!(ids(&rows, &run(&[reserved], &rows, 0)), ["mount"]);
    // Under the cap: nothing.
    let roomy = PruneRule {
        max_used_space: 5000,
        ..rule
    };
    assert!(run(&[roomy], &rows, 0).is_empty());
}

#[test]
fn min_free_space_frees_the_shortfall() {
    let rows = rows();
    let rule = PruneRule {
        name: "free".into(),
        min_free_space: 10_000,
        ..Default::default()
    };
    // 9500 free: 500 short, so the cache goes below 1350 (BuildKit stops once under it).
    assert_eq!(
        ids(&rows, &run(std::slice::from_ref(&rule), &rows, 9500)),
        ["mount", "old", "mid"]
    );
    // Enough free: nothing, even with no other cap.
    assert!(run(&[rule], &rows, 20_000).is_empty());
}

#[test]
fn filters_select_and_rules_run_in_order() {
    let rows = rows();
    let mounts = PruneRule {
        name: "mounts".into(),
        filters: vec!["type==exec.cachemount".parse().unwrap()],
        ..Default::default()
    };
    let rest = PruneRule {
        name: "rest".into(),
        filters: vec![
            "id~=^(old|mid)$".parse().unwrap(),
            "description==row new".parse().unwrap(),
        ],
        keep_duration: Some(5 * HOUR),
        ..Default::default()
    };
    let p = run(&[mounts, rest], &rows, 0);
    assert_eq!(ids(&rows, &p), ["mount", "old", "mid"]);
    assert_eq!(p[0].rule, "mounts");
    assert!(p[0].reason.contains("matches `type==exec.cachemount`"));
    assert_eq!(p[2].rule, "rest");

    let f: Filter = "type!=regular,private".parse().unwrap();
    let picked: Vec<_> = rows
        .iter()
        .filter(|r| f.matches(r))
        .map(|r| &r.id)
        .collect();
    assert_eq!(picked, ["base", "busy", "mount"]);
    let inuse: Filter = "inuse".parse().unwrap();
    assert!(inuse.matches(&rows[2]) && !inuse.matches(&rows[3]));
    for bad in ["size>1", "type", "shared==true", "id~=(", ""] {
        assert!(bad.parse::<Filter>().is_err(), "{bad}");
    }
}

#[test]
fn default_policies_keep_a_small_fresh_cache() {
    let rows = rows();
    let rules = crate::gc_config::GcConfig::default().rules(DiskStat {
        total: 100_000_000_000,
        free: 90_000_000_000,
    });
    assert!(run(&rules, &rows, 90_000_000_000).is_empty());
}

#[test]
fn held_rows_stay() {
    let rows = rows();
    let rule = PruneRule {
        name: "all".into(),
        all: true,
        ..Default::default()
    };
    let disk = DiskStat::default();
    let p = plan(&[rule], &rows, now(), disk, &|_| false, &|r| r.id == "old");
    assert_eq!(ids(&rows, &p), ["base", "shared", "mount", "mid", "new"]);
}

#[test]
fn short_durations() {
    assert_eq!(short_duration(Duration::from_secs(90)), "1m30s");
    assert_eq!(short_duration(Duration::from_secs(50 * 3600 + 60)), "2d2h");
    assert_eq!(short_duration(Duration::from_secs(3600)), "1h");
    assert_eq!(short_duration(Duration::ZERO), "0s");
}
