//! Tests of the GC keys of kiln.toml (a module of `gc_config.rs`).

use super::*;
use crate::Config;

const GB: u64 = 1_000_000_000;

#[test]
fn disk_spaces_and_durations_read_as_buildkit_reads_them() {
    assert_eq!(DiskSpace::parse("512MB"), Ok(DiskSpace::bytes(512 << 20)));
    assert_eq!(DiskSpace::parse("10GB"), Ok(DiskSpace::bytes(10 << 30)));
    assert_eq!(DiskSpace::parse("1.5g"), Ok(DiskSpace::bytes(3 << 29)));
    assert_eq!(DiskSpace::parse("20 KiB"), Ok(DiskSpace::bytes(20 << 10)));
    assert_eq!(DiskSpace::parse("1024"), Ok(DiskSpace::bytes(1024)));
    assert_eq!(DiskSpace::parse("10%"), Ok(DiskSpace::percent(10)));
    for bad in ["lots", "10x", "-5", "101%", "1.5%", ".5g", "10GBs"] {
        assert!(DiskSpace::parse(bad).is_err(), "{bad}");
    }
    let secs = |s| Ok(GoDuration(Some(Duration::from_secs(s))));
    assert_eq!(GoDuration::parse("48h"), secs(48 * 3600));
    assert_eq!(GoDuration::parse("1440h"), secs(1440 * 3600));
    assert_eq!(GoDuration::parse("1h30m"), secs(5400));
    assert_eq!(GoDuration::parse("1.5h"), secs(5400));
    assert_eq!(GoDuration::parse("172800"), secs(172800));
    assert_eq!(
        GoDuration::parse("300ms"),
        Ok(GoDuration(Some(Duration::from_millis(300))))
    );
    for bad in ["2d", "h", "10 h", "-1h", "1.5"] {
        assert!(GoDuration::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn percentages_round_up_to_whole_gb_per_started_gib() {
    let disk = DiskStat {
        total: 100 << 30,
        free: 0,
    };
    // 10% of 100 GiB is 10 GiB: 10 whole GiB started, plus one, in GB.
    assert_eq!(DiskSpace::percent(10).as_bytes(disk), 11 * GB);
    assert_eq!(DiskSpace::bytes(7).as_bytes(disk), 7);
    assert_eq!(DiskSpace::default().as_bytes(disk), 0);
    assert_eq!(
        DiskSpace::percent(10).as_bytes(DiskStat::default()),
        2 * GB,
        "unknown disk: BuildKit's 2 GB"
    );
}

#[test]
fn policies_parse_from_worker_oci() {
    let c = Config::parse(
        r#"
[worker.oci]
gc = true
reservedSpace = "30%"
maxUsedSpace = "60%"
minFreeSpace = "20GB"

[[worker.oci.gcpolicy]]
reservedSpace = "512MB"
maxUsedSpace = "1GB"
minFreeSpace = "10GB"
keepDuration = "48h"
filters = [ "type==source.local", "type==exec.cachemount", "type==source.git.checkout"]

[[worker.oci.gcpolicy]]
all = true
keepBytes = 1024000000
keepDuration = 172800
"#,
    )
    .unwrap();
    let gc = &c.worker.oci;
    assert_eq!(gc.reserved_space, DiskSpace::percent(30));
    let rules = gc.rules(DiskStat {
        total: 100 * GB,
        free: 50 * GB,
    });
    assert_eq!(rules.len(), 2);
    assert_eq!(rules[0].name, "gcpolicy[0]");
    assert_eq!(rules[0].reserved_space, 512 << 20);
    assert_eq!(rules[0].max_used_space, 1 << 30);
    assert_eq!(rules[0].min_free_space, 10 << 30);
    assert_eq!(rules[0].keep_duration, Some(Duration::from_secs(48 * 3600)));
    assert_eq!(rules[0].filters.len(), 3);
    assert!(!rules[0].all && rules[1].all);
    assert_eq!(rules[1].reserved_space, 1_024_000_000, "keepBytes");
    assert_eq!(rules[1].keep_duration, Some(Duration::from_secs(172800)));

    let off = Config::parse("[worker.oci]\ngc = false\n").unwrap();
    assert!(off.worker.oci.rules(DiskStat::default()).is_empty());
}

#[test]
fn bad_values_name_the_line_and_column() {
    for (text, line, what) in [
        (
            "[worker.oci]\nmaxUsedSpace = \"lots\"\n",
            2,
            "invalid disk space `lots`",
        ),
        (
            "[[worker.oci.gcpolicy]]\nall = true\nkeepDuration = \"2d\"\n",
            3,
            "invalid duration `2d`",
        ),
        (
            "[[worker.oci.gcpolicy]]\nfilters = [\"size==10\"]\n",
            2,
            "field `size` is not supported yet",
        ),
        (
            "[worker.oci]\nsnapshotter = \"overlayfs\"\n",
            2,
            "unknown field",
        ),
    ] {
        let e = Config::parse(text).unwrap_err().to_string();
        assert!(e.contains(what), "{e}");
        assert!(
            e.contains(&format!("line {line}, column")),
            "no position: {e}"
        );
    }
}

#[test]
fn defaults_follow_buildkit_from_the_disk_size() {
    let none = GcConfig::default();
    // A 50 GB disk: reserve 10% (4.66 GiB: 5 GB), keep 20% free (10 GB), use at most 80%
    // (37.25 GiB: 38 GB).
    let small = DiskStat {
        total: 50 * GB,
        free: 40 * GB,
    };
    let rules = none.rules(small);
    let names: Vec<_> = rules.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        ["default[0]", "default[1]", "default[2]", "default[3]"]
    );
    assert_eq!(rules[0].keep_duration, Some(Duration::from_secs(172800)));
    assert_eq!(rules[0].max_used_space, 512_000_000);
    assert_eq!(rules[0].reserved_space, 0);
    assert_eq!(rules[0].filters.len(), 3);
    assert_eq!(
        rules[1].keep_duration,
        Some(Duration::from_secs(60 * 86400))
    );
    for r in &rules[1..] {
        assert_eq!(r.reserved_space, DiskSpace::percent(10).as_bytes(small));
        assert_eq!(r.reserved_space, 5 * GB);
        assert_eq!(r.min_free_space, 10 * GB);
        assert_eq!(r.max_used_space, 38 * GB);
    }
    assert!(!rules[2].all && rules[3].all && rules[2].keep_duration.is_none());
    // A large disk: the byte caps.
    let big = DiskStat {
        total: 2000 * GB,
        free: 0,
    };
    let rules = none.rules(big);
    assert_eq!(rules[3].reserved_space, 10 * GB);
    assert_eq!(rules[3].max_used_space, 100 * GB);
    // gckeepstorage alone becomes the reserved space, with no other cap.
    let keep = Config::parse("[worker.oci]\ngckeepstorage = \"1GB\"\n").unwrap();
    let rules = keep.worker.oci.rules(big);
    assert_eq!(rules[2].reserved_space, 1 << 30);
    assert_eq!((rules[2].max_used_space, rules[2].min_free_space), (0, 0));
}

/// The figures BuildKit v0.32.2 showed (`buildctl debug workers -v`) for its defaults on a
/// 270,553,174,016-byte filesystem.
#[test]
fn defaults_match_the_oracle_on_a_270_gb_disk() {
    let disk = DiskStat {
        total: 270_553_174_016,
        free: 44_387_360_768,
    };
    let rules = GcConfig::default().rules(disk);
    assert_eq!(rules[0].max_used_space, 512 * 1_000_000);
    assert_eq!(
        rules[1].keep_duration,
        Some(Duration::from_secs(1440 * 3600))
    );
    for r in &rules[1..] {
        assert_eq!(
            (r.reserved_space, r.min_free_space, r.max_used_space),
            (10 * GB, 51 * GB, 100 * GB)
        );
    }
}
