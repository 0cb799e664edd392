//! `[worker.oci]`'s garbage collection keys, read as buildkitd.toml writes them, and BuildKit's
//! default policies when none are set (docs/config.md has the numbers).

use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::gc_policy::{DiskStat, Filter, PruneRule};

/// `[worker]`: only `oci` (kiln has one worker).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    #[serde(default)]
    pub oci: GcConfig,
}

/// `[worker.oci]`'s keys: GC, and `max-parallelism`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcConfig {
    /// The most RUN and file ops running at once across every build of the engine; unset or
    /// 0: no limit (BuildKit's meaning of 0).
    #[serde(default, rename = "max-parallelism")]
    pub max_parallelism: Option<usize>,
    /// `false`: no automatic GC after builds (`kiln prune` still works).
    pub gc: Option<bool>,
    /// Deprecated in BuildKit for `reservedSpace`, still read.
    #[serde(default)]
    pub gckeepstorage: DiskSpace,
    #[serde(default, rename = "reservedSpace")]
    pub reserved_space: DiskSpace,
    #[serde(default, rename = "maxUsedSpace")]
    pub max_used_space: DiskSpace,
    #[serde(default, rename = "minFreeSpace")]
    pub min_free_space: DiskSpace,
    #[serde(default)]
    pub gcpolicy: Vec<GcPolicy>,
}

/// One `[[worker.oci.gcpolicy]]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GcPolicy {
    #[serde(default)]
    pub all: bool,
    #[serde(default)]
    pub filters: Vec<FilterSpec>,
    #[serde(default)]
    pub keep_duration: GoDuration,
    /// Deprecated in BuildKit for `reservedSpace`, still read.
    #[serde(default)]
    pub keep_bytes: DiskSpace,
    #[serde(default)]
    pub reserved_space: DiskSpace,
    #[serde(default)]
    pub max_used_space: DiskSpace,
    #[serde(default)]
    pub min_free_space: DiskSpace,
}

/// A disk space as BuildKit reads it: bytes (`512000000`), a size with a binary unit
/// (`"512MB"` is 512 MiB, as docker's `RAMInBytes`), or a percentage of the disk (`"10%"`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskSpace {
    pub bytes: u64,
    pub percentage: u64,
}

/// BuildKit's fallback when the disk's size is unknown: 2 GB.
const DEFAULT_CAP: u64 = 2_000_000_000;

impl DiskSpace {
    pub const fn bytes(bytes: u64) -> DiskSpace {
        DiskSpace {
            bytes,
            percentage: 0,
        }
    }

    pub const fn percent(percentage: u64) -> DiskSpace {
        DiskSpace {
            bytes: 0,
            percentage,
        }
    }

    pub fn is_unset(&self) -> bool {
        *self == DiskSpace::default()
    }

    /// In bytes on `disk`; a percentage is rounded up to whole GB (10^9) per started GiB of
    /// the share, as BuildKit rounds it.
    pub fn as_bytes(&self, disk: DiskStat) -> u64 {
        if self.bytes != 0 {
            return self.bytes;
        }
        if self.percentage == 0 {
            return 0;
        }
        if disk.total == 0 {
            return DEFAULT_CAP;
        }
        let share = (disk.total as u128 * self.percentage as u128 / 100) as u64;
        (share / (1 << 30) + 1) * 1_000_000_000
    }

    pub fn parse(text: &str) -> Result<DiskSpace, String> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(DiskSpace::default());
        }
        if let Some(p) = text.strip_suffix('%') {
            return match p.trim().parse::<u64>() {
                Ok(p) if p <= 100 => Ok(DiskSpace::percent(p)),
                _ => Err(format!(
                    "invalid disk space `{text}`: a percentage is a whole number from 0 to 100"
                )),
            };
        }
        ram_in_bytes(text).map(DiskSpace::bytes).ok_or_else(|| {
            format!("invalid disk space `{text}`: expected bytes, a size such as 512MB, or a percentage such as 10%")
        })
    }
}

/// docker's `units.RAMInBytes`: `NUMBER[ ][kmgtp][i][b]`, case-insensitive, binary units.
fn ram_in_bytes(text: &str) -> Option<u64> {
    let digits = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (num, unit) = text.split_at(digits);
    if num.is_empty() || !num.starts_with(|c: char| c.is_ascii_digit()) || num.ends_with('.') {
        return None;
    }
    let n: f64 = num.parse().ok()?;
    let unit = unit.strip_prefix(' ').unwrap_or(unit).to_ascii_lowercase();
    let unit = unit.strip_suffix('b').unwrap_or(&unit);
    let unit = unit.strip_suffix('i').unwrap_or(unit);
    let shift = match unit {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        "p" => 50,
        _ => return None,
    };
    let v = n * (1u64 << shift) as f64;
    (v < u64::MAX as f64).then_some(v as u64)
}

impl<'de> Deserialize<'de> for DiskSpace {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<DiskSpace, D::Error> {
        match IntOrString::deserialize(d)? {
            IntOrString::Int(i) => u64::try_from(i)
                .map(DiskSpace::bytes)
                .map_err(|_| serde::de::Error::custom(format!("invalid disk space {i}"))),
            IntOrString::String(s) => DiskSpace::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum IntOrString {
    Int(i64),
    String(String),
}

/// A duration as BuildKit reads it: seconds (`172800`) or Go's syntax (`"48h"`, `"1h30m"`,
/// `"1.5h"`, `"300ms"`); Go has no day unit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GoDuration(pub Option<Duration>);

impl GoDuration {
    pub fn parse(text: &str) -> Result<GoDuration, String> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(GoDuration(None));
        }
        let bad = || {
            format!(
                "invalid duration `{text}`: expected seconds or a duration such as 48h or 1h30m"
            )
        };
        if let Ok(secs) = text.parse::<u64>() {
            return Ok(GoDuration(Some(Duration::from_secs(secs))));
        }
        let mut rest = text.strip_prefix('+').unwrap_or(text);
        let mut total = 0f64;
        while !rest.is_empty() {
            let n = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(bad)?;
            let num: f64 = rest[..n].parse().map_err(|_| bad())?;
            rest = &rest[n..];
            let u = rest
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(rest.len());
            let nanos = match &rest[..u] {
                "ns" => 1e0,
                "us" | "µs" | "μs" => 1e3,
                "ms" => 1e6,
                "s" => 1e9,
                "m" => 60e9,
                "h" => 3600e9,
                _ => return Err(bad()),
            };
            total += num * nanos;
            rest = &rest[u..];
        }
        Ok(GoDuration(Some(Duration::from_nanos(total as u64))))
    }
}

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<GoDuration, D::Error> {
        match IntOrString::deserialize(d)? {
            IntOrString::Int(i) => u64::try_from(i)
                .map(|s| GoDuration(Some(Duration::from_secs(s))))
                .map_err(|_| serde::de::Error::custom(format!("invalid duration {i}"))),
            IntOrString::String(s) => GoDuration::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

/// A `filters` entry, checked when the file is read.
#[derive(Debug, Clone, PartialEq)]
pub struct FilterSpec(pub Filter);

impl<'de> Deserialize<'de> for FilterSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<FilterSpec, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map(FilterSpec).map_err(serde::de::Error::custom)
    }
}

/// BuildKit's default caps on unix: reserve 10% of the disk (at most 10 GB), keep 20% free,
/// use at most 80% (at most 100 GB).
const RESERVE_PERCENT: u64 = 10;
const RESERVE_BYTES: u64 = 10_000_000_000;
const FREE_PERCENT: u64 = 20;
const MAX_PERCENT: u64 = 80;
const MAX_BYTES: u64 = 100_000_000_000;

impl GcConfig {
    fn caps_unset(&self) -> bool {
        self.reserved_space.is_unset()
            && self.max_used_space.is_unset()
            && self.min_free_space.is_unset()
    }

    /// The rules automatic GC applies on `disk` (none when `gc = false`): the configured
    /// policies, else BuildKit's four defaults.
    pub fn rules(&self, disk: DiskStat) -> Vec<PruneRule> {
        if self.gc == Some(false) {
            return Vec::new();
        }
        let to_rule = |name: String, p: &GcPolicy| PruneRule {
            name,
            all: p.all,
            filters: p.filters.iter().map(|f| f.0.clone()).collect(),
            keep_duration: p.keep_duration.0.filter(|d| !d.is_zero()),
            reserved_space: if p.reserved_space.is_unset() {
                p.keep_bytes.as_bytes(disk)
            } else {
                p.reserved_space.as_bytes(disk)
            },
            max_used_space: p.max_used_space.as_bytes(disk),
            min_free_space: p.min_free_space.as_bytes(disk),
        };
        if !self.gcpolicy.is_empty() {
            return self
                .gcpolicy
                .iter()
                .enumerate()
                .map(|(i, p)| to_rule(format!("gcpolicy[{i}]"), p))
                .collect();
        }
        let mut caps = self.clone();
        if caps.caps_unset() {
            caps.reserved_space = caps.gckeepstorage;
        }
        if caps.caps_unset() {
            let mut reserve = DiskSpace::percent(RESERVE_PERCENT);
            if reserve.as_bytes(disk) > RESERVE_BYTES {
                reserve = DiskSpace::bytes(RESERVE_BYTES);
            }
            let mut max = DiskSpace::percent(MAX_PERCENT);
            if max.as_bytes(disk) > MAX_BYTES {
                max = DiskSpace::bytes(MAX_BYTES);
            }
            caps.reserved_space = reserve;
            caps.min_free_space = DiskSpace::percent(FREE_PERCENT);
            caps.max_used_space = max;
        }
        let capped = |all: bool, keep: Option<Duration>| GcPolicy {
            all,
            keep_duration: GoDuration(keep),
            reserved_space: caps.reserved_space,
            max_used_space: caps.max_used_space,
            min_free_space: caps.min_free_space,
            ..Default::default()
        };
        let easy = GcPolicy {
            filters: [
                "type==source.local",
                "type==exec.cachemount",
                "type==source.git.checkout",
            ]
            .iter()
            .map(|f| FilterSpec(f.parse().expect("a valid built-in filter")))
            .collect(),
            keep_duration: GoDuration(Some(Duration::from_secs(48 * 3600))),
            max_used_space: DiskSpace::bytes(512_000_000),
            ..Default::default()
        };
        let defaults = [
            // The most easily reproduced data, unused for 2 days, when the cache passes 512 MB.
            easy,
            // Anything unused for 60 days.
            capped(false, Some(Duration::from_secs(60 * 86400))),
            // The unshared build cache under the caps.
            capped(false, None),
            // Then base images and metadata too.
            capped(true, None),
        ];
        defaults
            .iter()
            .enumerate()
            .map(|(i, p)| to_rule(format!("default[{i}]"), p))
            .collect()
    }
}

#[cfg(test)]
#[path = "gc_config_tests.rs"]
mod tests;
