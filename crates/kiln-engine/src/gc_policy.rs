//! The prune policy engine: which `kiln du` rows a list of rules removes, as BuildKit's cache
//! manager applies `[[worker.oci.gcpolicy]]` and `buildx prune`'s options. Pure: rows, a clock
//! and the disk's figures in, a plan out; prune.rs carries the plan out.
//!
//! Rules run in order, each on what the earlier ones left. A rule selects rows by filter, by
//! `all` (without it: no base images, no manifests or configs, nothing a tagged image shares)
//! and by `keepDuration` (only rows unused for longer). With no space limit it removes every
//! selected row; with one it removes selected rows least recently used first while the build
//! cache (what no tagged image shares) is at or over the limit.

use std::time::{Duration, SystemTime};

use crate::du::{UsageKind, UsageRecord};

/// One prune rule, with space limits in bytes (0: none), as BuildKit's `PruneInfo`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PruneRule {
    /// Shown in dry runs and reports: `gcpolicy[1]`, `default[2]`, `prune`.
    pub name: String,
    pub all: bool,
    /// A row is selected when any filter matches it; no filters select every row.
    pub filters: Vec<Filter>,
    /// Only rows unused for longer than this.
    pub keep_duration: Option<Duration>,
    /// Never prune the build cache below this.
    pub reserved_space: u64,
    /// Prune down to this.
    pub max_used_space: u64,
    /// Prune until the disk has this much free (not below `reserved_space`).
    pub min_free_space: u64,
}

/// The data root's filesystem, as BuildKit's `disk.DiskStat`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DiskStat {
    pub total: u64,
    pub free: u64,
}

impl DiskStat {
    /// statvfs of the filesystem holding `path`; zeros when it cannot be read (percentages then
    /// fall back to BuildKit's 2 GB).
    pub fn of(path: &std::path::Path) -> DiskStat {
        match rustix::fs::statvfs(path) {
            Ok(s) => DiskStat {
                total: s.f_frsize.saturating_mul(s.f_blocks),
                free: s.f_frsize.saturating_mul(s.f_bfree),
            },
            Err(_) => DiskStat::default(),
        }
    }
}

/// One row the plan removes, and why.
#[derive(Debug, Clone)]
pub struct Planned {
    /// Index into the rows given to [`plan`].
    pub index: usize,
    /// The rule's name.
    pub rule: String,
    pub reason: String,
}

/// The filter fields BuildKit's prune filters know and kiln's rows have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Id,
    Type,
    Description,
    InUse,
    Shared,
    Private,
    Mutable,
    Immutable,
}

#[derive(Debug, Clone)]
enum Clause {
    Eq(Field, String),
    Ne(Field, String),
    Matches(Field, regex::Regex),
    /// A bare boolean field: `inuse`, `shared`...
    Is(Field),
}

/// A containerd-style filter: comma-separated clauses that must all match (`type==regular`,
/// `id~=^ab`, `description!=x`, `shared`).
#[derive(Debug, Clone)]
pub struct Filter {
    text: String,
    clauses: Vec<Clause>,
}

impl PartialEq for Filter {
    fn eq(&self, other: &Filter) -> bool {
        self.text == other.text
    }
}

impl std::fmt::Display for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::str::FromStr for Filter {
    type Err = String;

    fn from_str(text: &str) -> Result<Filter, String> {
        let mut clauses = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (field, op, value) = match ["==", "!=", "~="]
                .iter()
                .filter_map(|op| part.find(op).map(|i| (i, *op)))
                .min()
            {
                Some((i, op)) => (&part[..i], Some(op), &part[i + 2..]),
                None => (part, None, ""),
            };
            let field = match field.trim() {
                "id" => Field::Id,
                "type" => Field::Type,
                "description" => Field::Description,
                "inuse" => Field::InUse,
                "shared" => Field::Shared,
                "private" => Field::Private,
                "mutable" => Field::Mutable,
                "immutable" => Field::Immutable,
                other if op.is_none() && other.contains(|c: char| !c.is_ascii_alphanumeric()) => {
                    return Err(format!(
                        "filter `{part}`: expected FIELD==VALUE, FIELD!=VALUE, FIELD~=REGEX or a boolean field"
                    ));
                }
                other => {
                    return Err(format!(
                        "filter `{part}`: field `{other}` is not supported yet (kiln filters on id, type, description, inuse, shared, private, mutable, immutable)"
                    ));
                }
            };
            let boolean = matches!(
                field,
                Field::InUse | Field::Shared | Field::Private | Field::Mutable | Field::Immutable
            );
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            clauses.push(match (op, boolean) {
                (None, true) => Clause::Is(field),
                (None, false) => {
                    return Err(format!(
                        "filter `{part}`: expected an operator (==, != or ~=) and a value"
                    ));
                }
                (Some(_), true) => {
                    return Err(format!(
                        "filter `{part}`: `{}` takes no value",
                        field_name(field)
                    ));
                }
                (Some("=="), false) => Clause::Eq(field, value.to_string()),
                (Some("!="), false) => Clause::Ne(field, value.to_string()),
                (Some(_), false) => Clause::Matches(
                    field,
                    regex::Regex::new(value)
                        .map_err(|e| format!("filter `{part}`: invalid regular expression: {e}"))?,
                ),
            });
        }
        if clauses.is_empty() {
            return Err("empty filter".to_string());
        }
        Ok(Filter {
            text: text.to_string(),
            clauses,
        })
    }
}

fn field_name(f: Field) -> &'static str {
    match f {
        Field::Id => "id",
        Field::Type => "type",
        Field::Description => "description",
        Field::InUse => "inuse",
        Field::Shared => "shared",
        Field::Private => "private",
        Field::Mutable => "mutable",
        Field::Immutable => "immutable",
    }
}

impl Filter {
    pub fn matches(&self, r: &UsageRecord) -> bool {
        let text = |f: Field| -> &str {
            match f {
                Field::Id => &r.id,
                Field::Type => r.kind.name(),
                _ => &r.description,
            }
        };
        self.clauses.iter().all(|c| match c {
            Clause::Eq(f, v) => text(*f) == v,
            Clause::Ne(f, v) => text(*f) != v,
            Clause::Matches(f, re) => re.is_match(text(*f)),
            Clause::Is(f) => match f {
                Field::InUse => r.in_use,
                Field::Shared => r.shared,
                Field::Private => !r.shared,
                // A cache mount is the only thing a step writes into after it was made.
                Field::Mutable => r.kind == UsageKind::CacheMount,
                _ => r.kind != UsageKind::CacheMount,
            },
        })
    }
}

/// BuildKit's `calculateKeepBytes`: the build cache size a rule prunes down to (`Some(0)`: no
/// limit), or `None` when the rule has nothing to do (only `minFreeSpace`, and the disk has it
/// free: BuildKit then still removes one row, kiln none).
fn keep_bytes(total: u64, disk: DiskStat, rule: &PruneRule) -> Option<u64> {
    if rule.max_used_space == 0 && rule.reserved_space == 0 && rule.min_free_space == 0 {
        return Some(0);
    }
    let mut keep = rule.max_used_space;
    let excess = rule.min_free_space.saturating_sub(disk.free);
    if excess > 0 {
        let fit = total.saturating_sub(excess);
        keep = if keep == 0 { fit } else { keep.min(fit) };
    } else if rule.min_free_space != 0 && keep == 0 {
        return None;
    }
    Some(keep.max(rule.reserved_space))
}

/// What `rules` remove from `rows` (oldest use first, as `kiln du` lists them) at `now`.
/// `internal` marks rows only `all` removes besides shared ones (base images, manifests and
/// configs); `held` marks rows that must stay whatever the rule (in use, or data only a prune
/// alone on the data directory may take).
pub fn plan(
    rules: &[PruneRule],
    rows: &[UsageRecord],
    now: SystemTime,
    disk: DiskStat,
    internal: &dyn Fn(&UsageRecord) -> bool,
    held: &dyn Fn(&UsageRecord) -> bool,
) -> Vec<Planned> {
    let mut gone = vec![false; rows.len()];
    let mut out = Vec::new();
    for rule in rules {
        // The build cache: what pruning can free (rows a tagged image shares free nothing).
        let mut total: u64 = rows
            .iter()
            .zip(&gone)
            .filter(|(r, g)| !**g && !r.shared)
            .map(|(r, _)| r.size)
            .sum();
        let Some(keep) = keep_bytes(total, disk, rule) else {
            continue;
        };
        for (i, r) in rows.iter().enumerate() {
            if keep != 0 && total < keep {
                break;
            }
            if gone[i] || r.in_use || held(r) {
                continue;
            }
            if !rule.all && (r.shared || internal(r)) {
                continue;
            }
            let age = r.last_used.and_then(|t| now.duration_since(t).ok());
            // Used within keepDuration (or stamped in the future): kept. Never used: eligible.
            if let (Some(min), Some(_)) = (rule.keep_duration, r.last_used)
                && age.is_none_or(|a| a < min)
            {
                continue;
            }
            if !rule.filters.is_empty() && !rule.filters.iter().any(|f| f.matches(r)) {
                continue;
            }
            let mut why = Vec::new();
            if let Some(min) = rule.keep_duration {
                // `kiln prune`'s rule comes from `--filter until=`.
                let key = if rule.name == "prune" {
                    "until"
                } else {
                    "keepDuration"
                };
                why.push(format!(
                    "unused for {} ({key} {})",
                    age.map_or("ever".into(), short_duration),
                    short_duration(min)
                ));
            }
            if keep != 0 {
                why.push(format!(
                    "build cache {} >= {} (its space limits)",
                    crate::human_size(total),
                    crate::human_size(keep)
                ));
            }
            if let Some(f) = rule.filters.iter().find(|f| f.matches(r)) {
                why.push(format!("matches `{f}`"));
            }
            if why.is_empty() {
                why.push("selected".into());
            }
            gone[i] = true;
            if !r.shared {
                total = total.saturating_sub(r.size);
            }
            out.push(Planned {
                index: i,
                rule: rule.name.clone(),
                reason: why.join(", "),
            });
        }
    }
    out
}

/// `90s`, `3h20m`, `2d4h`: the two largest units.
pub fn short_duration(d: Duration) -> String {
    let s = d.as_secs();
    let parts = [
        (s / 86400, "d"),
        (s / 3600 % 24, "h"),
        (s / 60 % 60, "m"),
        (s % 60, "s"),
    ];
    let first = parts.iter().position(|(n, _)| *n > 0).unwrap_or(3);
    parts[first..]
        .iter()
        .take(2)
        .filter(|(n, _)| *n > 0 || first == 3)
        .map(|(n, u)| format!("{n}{u}"))
        .collect()
}

#[cfg(test)]
#[path = "gc_policy_tests.rs"]
mod tests;
