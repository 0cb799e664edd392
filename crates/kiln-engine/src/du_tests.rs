//! Tests of `kiln du` and `kiln prune` (a module of `du.rs`).

use super::*;
use crate::prune::{PruneRequest, parse_duration, parse_size};
use std::time::Duration;

#[test]
fn sizes_and_durations() {
    assert_eq!(parse_size("1024"), Some(1024));
    assert_eq!(parse_size("512k"), Some(512 << 10));
    assert_eq!(parse_size("10MB"), Some(10 << 20));
    assert_eq!(parse_size("1.5gb"), Some(3 << 29));
    assert_eq!(parse_size("lots"), None);
    assert_eq!(parse_duration("24h"), Some(Duration::from_secs(86400)));
    assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
    assert_eq!(parse_duration("10"), None);
    assert_eq!(parse_duration("5x"), None);
}

/// A record over one layer dir of `size` bytes, last used `age` ago.
fn record(root: &Path, name: &str, size: usize, age: Duration) -> (PathBuf, PathBuf) {
    let diff_id = kiln_oci::sha256(name.as_bytes());
    let layer = root.join("layers").join(diff_id.digest());
    fs::create_dir_all(&layer).unwrap();
    fs::write(layer.join("data"), vec![b'x'; size]).unwrap();
    let value = Value::Rootfs {
        layers: vec![kiln_worker::LayerRef {
            diff_id: Some(diff_id),
            blob: None,
            size: 0,
            media_type: String::new(),
            source: None,
        }],
    };
    let key = root
        .join("cache")
        .join(kiln_oci::sha256_hex(format!("key-{name}").as_bytes()));
    fs::create_dir_all(key.parent().unwrap()).unwrap();
    fs::write(&key, serde_json::to_vec(&value).unwrap()).unwrap();
    let f = fs::File::options().write(true).open(&key).unwrap();
    f.set_modified(SystemTime::now() - age).unwrap();
    (key, layer)
}

#[test]
fn keep_storage_removes_least_recently_used_first() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let engine = match Engine::open(&root, crate::Config::default()) {
        Ok(e) => e,
        Err(e) if std::env::var("KILN_TEST_REQUIRE_EXTERNAL").as_deref() != Ok("1") => {
            eprintln!("skipping: cannot open an engine here: {e}");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let hour = Duration::from_secs(3600);
    let (old_key, old_layer) = record(&root, "old", 1000, 3 * hour);
    let (mid_key, mid_layer) = record(&root, "mid", 1000, 2 * hour);
    let (new_key, new_layer) = record(&root, "new", 1000, Duration::ZERO);
    let usage = engine.disk_usage().unwrap();
    assert_eq!(usage.total(), 3000);
    assert_eq!(usage.records[0].kind, UsageKind::Regular);

    // `until` spares what was used recently; keep-storage takes the oldest first.
    let report = engine
        .prune(&PruneRequest {
            until: Some(90 * 60 * Duration::from_secs(1)),
            keep_storage: Some(1500),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(report.reclaimed, 2000);
    assert!(!old_key.exists() && !old_layer.exists());
    assert!(!mid_key.exists() && !mid_layer.exists());
    assert!(new_key.exists() && new_layer.exists());

    let report = engine
        .prune(&PruneRequest {
            until: Some(hour),
            ..Default::default()
        })
        .unwrap();
    assert!(report.removed.is_empty());
    assert!(new_key.exists() && new_layer.exists());
}

#[test]
fn kinds_round_trip() {
    for k in [
        UsageKind::Regular,
        UsageKind::SourceImage,
        UsageKind::CacheMount,
        UsageKind::Unreferenced,
        UsageKind::Partial,
    ] {
        assert_eq!(UsageKind::parse(k.name()), Some(k));
    }
    assert_eq!(UsageKind::parse("bogus"), None);
}

/// Issue 13: partial blobs in `ingest/` count in `kiln du` (in the total); `kiln prune`
/// removes one a killed writer left and keeps one a live writer holds.
#[test]
fn issue_13_du_counts_and_prune_removes_stale_ingest() {
    use std::io::Write as _;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let engine = match Engine::open(&root, crate::Config::default()) {
        Ok(e) => e,
        Err(e) if std::env::var("KILN_TEST_REQUIRE_EXTERNAL").as_deref() != Ok("1") => {
            eprintln!("skipping: cannot open an engine here: {e}");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let ingest = root.join("content/ingest");
    // Left while this engine runs by another kiln that was killed, and one being written.
    fs::write(ingest.join("00000000deadbeef"), vec![0u8; 5000]).unwrap();
    let mut live = engine.content.writer().unwrap();
    live.write_all(&[1u8; 300]).unwrap();
    live.flush().unwrap();

    let usage = engine.disk_usage().unwrap();
    let partial: Vec<_> = usage
        .records
        .iter()
        .filter(|r| r.kind == UsageKind::Partial)
        .collect();
    assert_eq!(partial.len(), 2, "{partial:?}");
    let stale = partial.iter().find(|r| r.id == "00000000deadbeef").unwrap();
    assert!(stale.reclaimable() && stale.size == 5000, "{stale:?}");
    let held = partial.iter().find(|r| r.id != "00000000deadbeef").unwrap();
    assert!(held.in_use && held.size == 300, "{held:?}");
    assert_eq!(usage.total(), 5300);
    assert_eq!(usage.reclaimable(), 5000);

    let report = engine.prune(&PruneRequest::default()).unwrap();
    assert_eq!(report.reclaimed, 5000);
    assert_eq!(report.removed.len(), 1);
    assert!(!ingest.join("00000000deadbeef").exists());
    assert!(
        ingest.join(&held.id).exists(),
        "a live writer's file was pruned"
    );

    // The live writer is undisturbed: it commits, and nothing is left in ingest.
    let (digest, size) = live.commit(None).unwrap();
    assert_eq!(size, 300);
    assert!(engine.content.contains(&digest));
    assert_eq!(fs::read_dir(&ingest).unwrap().count(), 0);
    assert_eq!(engine.disk_usage().unwrap().total(), 300);
}

#[test]
fn a_prune_request_is_one_rule() {
    let req = PruneRequest {
        all: true,
        until: Some(Duration::from_secs(60)),
        kinds: vec![UsageKind::Regular, UsageKind::CacheMount],
        ids: vec!["ab.".into()],
        keep_storage: Some(10),
        max_used_space: Some(20),
        min_free_space: None,
    };
    let rule = req.rule();
    assert!(rule.all);
    assert_eq!(rule.keep_duration, Some(Duration::from_secs(60)));
    assert_eq!(
        (
            rule.reserved_space,
            rule.max_used_space,
            rule.min_free_space
        ),
        (10, 20, 0)
    );
    let filters: Vec<String> = rule.filters.iter().map(|f| f.to_string()).collect();
    // Any kind with any id prefix; the prefix is literal.
    assert_eq!(
        filters,
        [
            "type==regular,id~=^ab\\.",
            "type==exec.cachemount,id~=^ab\\."
        ]
    );
    let mut row = UsageRecord {
        id: "ab.cd".into(),
        kind: UsageKind::CacheMount,
        size: 1,
        shared: false,
        in_use: false,
        last_used: None,
        description: String::new(),
        target: Target::Layer,
    };
    assert!(rule.filters.iter().any(|f| f.matches(&row)));
    row.id = "abxcd".into();
    assert!(!rule.filters.iter().any(|f| f.matches(&row)));
    assert!(PruneRequest::default().rule().filters.is_empty());
}
