//! `kiln prune` and automatic GC: removing the build cache `kiln du` lists (see du.rs for what
//! it counts) by the rules of gc_policy.rs.
//!
//! Pruning removes the planned cache records and cache mounts, then (only when no other kiln
//! uses the data directory: the engine lock taken exclusively, and no other build of this
//! process running) the layer dirs and blobs no remaining record or tagged image references.
//! A cache mount a running step holds is skipped, and so is a partial blob a live writer holds
//! (see `kiln_content::partial`). Each removal is a rename or an unlink, so a prune killed
//! half-way leaves nothing `Engine::open` does not clear.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use kiln_worker::cachemount;

use crate::du::{Target, UsageKind, UsageRecord, hex_entries, is_metadata_blob, sha};
use crate::gc_policy::{DiskStat, Filter, PruneRule, plan};
use crate::{Engine, Error, Result, io};

/// `kiln prune`'s choices, as `docker buildx prune` takes them.
#[derive(Debug, Clone, Default)]
pub struct PruneRequest {
    /// Also base images' layers (`source.image`), manifests and configs, and rows a tagged
    /// image shares; by default only step results, cache mounts and unreferenced data go.
    pub all: bool,
    /// Only what was last used longer ago than this.
    pub until: Option<Duration>,
    /// Only these kinds (any of them); empty for every kind `all` allows.
    pub kinds: Vec<UsageKind>,
    /// Only rows whose id starts with one of these.
    pub ids: Vec<String>,
    /// `--reserved-space` (`--keep-storage`): never prune the build cache below this many
    /// bytes; least recently used rows go first.
    pub keep_storage: Option<u64>,
    /// `--max-used-space`: prune the build cache down to this.
    pub max_used_space: Option<u64>,
    /// `--min-free-space`: prune until the disk has this much free.
    pub min_free_space: Option<u64>,
}

impl PruneRequest {
    /// The one rule this request is, as buildx sends a prune to BuildKit.
    pub fn rule(&self) -> PruneRule {
        let kinds: Vec<Option<&UsageKind>> = if self.kinds.is_empty() {
            vec![None]
        } else {
            self.kinds.iter().map(Some).collect()
        };
        let ids: Vec<Option<&String>> = if self.ids.is_empty() {
            vec![None]
        } else {
            self.ids.iter().map(Some).collect()
        };
        // Any kind and any id prefix: one filter per pair.
        let mut filters = Vec::new();
        for k in &kinds {
            for id in &ids {
                let mut clauses = Vec::new();
                if let Some(k) = k {
                    clauses.push(format!("type=={}", k.name()));
                }
                if let Some(id) = id {
                    clauses.push(format!("id~=^{}", regex::escape(id)));
                }
                if !clauses.is_empty() {
                    filters.push(
                        clauses
                            .join(",")
                            .parse::<Filter>()
                            .expect("kinds and escaped prefixes make valid filters"),
                    );
                }
            }
        }
        PruneRule {
            name: "prune".into(),
            all: self.all,
            filters,
            keep_duration: self.until.filter(|d| !d.is_zero()),
            reserved_space: self.keep_storage.unwrap_or(0),
            max_used_space: self.max_used_space.unwrap_or(0),
            min_free_space: self.min_free_space.unwrap_or(0),
        }
    }
}

/// How a prune runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct PruneOptions {
    /// Plan only: report what would go, delete nothing.
    pub dry_run: bool,
    /// Start no removal after this (automatic GC's bound); what is left waits for the next one.
    pub deadline: Option<Instant>,
}

/// One row a prune removed (or, in a dry run, would remove), and why.
#[derive(Debug, Clone)]
pub struct Pruned {
    pub record: UsageRecord,
    /// The rule's name (`prune`, `gcpolicy[0]`, `default[2]`).
    pub rule: String,
    pub reason: String,
}

/// What a prune removed.
#[derive(Debug, Clone, Default)]
pub struct PruneReport {
    pub removed: Vec<Pruned>,
    /// Bytes freed (rows a tagged image shares free nothing).
    pub reclaimed: u64,
    /// Set when other kiln processes were running: layers and blobs were left for later.
    pub gc_skipped: bool,
    pub dry_run: bool,
    /// Planned rows left because the deadline passed.
    pub deferred: usize,
}

impl Engine {
    /// `kiln prune`: removes the build cache `req` selects; never tagged images or what they
    /// reference, never what a running build holds.
    pub fn prune(&self, req: &PruneRequest) -> Result<PruneReport> {
        self.prune_rules(&[req.rule()], PruneOptions::default())
    }

    /// The rules automatic GC applies: the config's `[[worker.oci.gcpolicy]]`, else BuildKit's
    /// defaults for the data root's disk; none with `gc = false`.
    pub fn gc_rules(&self) -> Vec<PruneRule> {
        self.gc.rules(DiskStat::of(&self.root))
    }

    /// Automatic GC (and `kiln prune --gc`): [`Engine::gc_rules`] applied.
    pub fn gc(&self, opts: PruneOptions) -> Result<PruneReport> {
        let rules = self.gc_rules();
        if rules.is_empty() {
            return Ok(PruneReport {
                dry_run: opts.dry_run,
                ..Default::default()
            });
        }
        self.prune_rules(&rules, opts)
    }

    /// Applies `rules` in order (see gc_policy.rs).
    pub fn prune_rules(&self, rules: &[PruneRule], opts: PruneOptions) -> Result<PruneReport> {
        // Alone (the engine lock taken exclusively, no build of ours running), nothing can be
        // between "layer written" and "record saved": unreferenced data is garbage. Other
        // kilns block in `Engine::open` meanwhile.
        let locked = rustix::fs::flock(
            &self._lock,
            rustix::fs::FlockOperation::NonBlockingLockExclusive,
        )
        .is_ok();
        let alone = locked && self.builds_running() == 0;
        let result = self.prune_locked(rules, opts, alone);
        // A failed conversion may have dropped the shared lock, and success made it exclusive:
        // either way, back to shared.
        rustix::fs::flock(&self._lock, rustix::fs::FlockOperation::LockShared)
            .map_err(|e| io("locking the data directory")(e.into()))?;
        result
    }

    /// What `rules` would remove now, as `kiln du` shows it: planned as a prune alone on the
    /// data directory would (unreferenced data included), without taking the lock.
    pub fn plan_rules(&self, rules: &[PruneRule], rows: &[UsageRecord]) -> Vec<crate::Planned> {
        let internal = |r: &UsageRecord| self.internal(r);
        plan(
            rules,
            rows,
            SystemTime::now(),
            DiskStat::of(&self.root),
            &internal,
            &|_| false,
        )
    }

    /// Rows only `all` removes besides shared ones: base images' records, and the manifests
    /// and configs the frontend may read offline.
    fn internal(&self, r: &UsageRecord) -> bool {
        r.kind == UsageKind::SourceImage
            || matches!(&r.target, Target::Blob(d) if is_metadata_blob(&self.content.path(d)))
    }

    fn prune_locked(
        &self,
        rules: &[PruneRule],
        opts: PruneOptions,
        alone: bool,
    ) -> Result<PruneReport> {
        if alone && !opts.dry_run {
            cachemount::remove_stale(&self.root).map_err(io("removing stale cache mounts"))?;
        }
        let usage = self.disk_usage()?;
        let internal = |r: &UsageRecord| self.internal(r);
        // Unreferenced data goes with the collection below, which needs to be alone.
        let held = |r: &UsageRecord| !alone && matches!(r.target, Target::Layer | Target::Blob(_));
        let planned = plan(
            rules,
            &usage.records,
            SystemTime::now(),
            DiskStat::of(&self.root),
            &internal,
            &held,
        );
        let mut report = PruneReport {
            gc_skipped: !alone,
            dry_run: opts.dry_run,
            ..Default::default()
        };
        let mut removed_records = false;
        let mut by_all = false;
        for p in planned {
            let row = &usage.records[p.index];
            if opts.deadline.is_some_and(|d| Instant::now() >= d) {
                report.deferred += 1;
                continue;
            }
            let done = opts.dry_run
                || match &row.target {
                    Target::Record(path) => {
                        removed_records = true;
                        match fs::remove_file(path) {
                            Ok(()) => true,
                            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
                            Err(e) => {
                                return Err(io(format!("removing `{}`", path.display()))(e));
                            }
                        }
                    }
                    Target::CacheMount(m) => cachemount::remove(m)
                        .map_err(io(format!("removing the cache mount `{}`", m.id)))?,
                    Target::Layer | Target::Blob(_) => true,
                    // Only when no live writer holds it (checked again under its lock).
                    Target::Ingest(name) => self.content.remove_ingest(name)?,
                };
            if done {
                by_all |= rules.iter().any(|r| r.name == p.rule && r.all);
                // A shared row's data stays with the image that uses it: nothing is freed.
                report.reclaimed += if row.shared { 0 } else { row.size };
                report.removed.push(Pruned {
                    record: row.clone(),
                    rule: p.rule,
                    reason: p.reason,
                });
            }
        }
        // Past the deadline the layers go with a later prune (they show as unreferenced).
        let late = opts.deadline.is_some_and(|d| Instant::now() >= d);
        if alone && !opts.dry_run && !late {
            self.collect(by_all, &report, removed_records)?;
        }
        Ok(report)
    }

    /// Removes layer dirs and blobs nothing references any more: what the removed rows counted,
    /// and what the records just removed left unreferenced. Manifests and configs (base images'
    /// metadata the frontend may read offline) go only with `--all`.
    fn collect(&self, all: bool, report: &PruneReport, records_went: bool) -> Result<()> {
        if all {
            // `--explain`'s step records and `--offline`'s earlier resolutions: small files
            // whose loss costs a "first build of this step" and a lookup; `--all` takes them
            // with the base images they name.
            for dir in ["step-keys", "resolved"] {
                for path in plain_files(&self.root.join(dir)) {
                    fs::remove_file(&path).map_err(io(format!("removing `{}`", path.display())))?;
                }
            }
        }
        let (_, image_refs) = self.image_refs()?;
        let mut keep = image_refs;
        for r in self.cache_records() {
            self.record_refs(&r, &mut keep);
        }
        self.add_variants(&mut keep);
        let (keep_layers, keep_blobs) = (keep.diff_ids, keep.blobs);
        // Records of blobs made from layers nothing references: the blobs go below. Only when
        // this pass removed something: a variant (a push's timestamp-rewritten layer, say) is
        // keyed by a layer no record names, and a pass that removed nothing must not cost the
        // next push its compressed blobs.
        if records_went || !report.removed.is_empty() {
            for (diff_id, _) in self.variants.list() {
                if !keep_layers.contains(&diff_id) {
                    self.variants.remove(&diff_id)?;
                }
            }
        }
        let chosen: BTreeMap<String, &UsageRecord> = report
            .removed
            .iter()
            .map(|r| (r.record.id.clone(), &r.record))
            .collect();
        for (hex, path) in hex_entries(self.layers.root()) {
            let Some(d) = sha(&hex) else { continue };
            let picked = chosen.contains_key(&hex);
            if keep_layers.contains(&d) || !(picked || records_went) {
                continue;
            }
            // Renamed to a temp name first: a killed prune leaves only what `open` clears.
            let tmp = self
                .layers
                .root()
                .join(format!(".tmp-gc-{:016x}", rand::random::<u64>()));
            fs::rename(&path, &tmp).map_err(io(format!("removing `{}`", path.display())))?;
            fs::remove_dir_all(&tmp).map_err(io(format!("removing `{}`", tmp.display())))?;
        }
        for (hex, path) in hex_entries(&self.content.root().join("blobs/sha256")) {
            let Some(d) = sha(&hex) else { continue };
            let picked = chosen.contains_key(&hex);
            if keep_blobs.contains(&d) || !(picked || records_went) {
                continue;
            }
            if !picked && !all && is_metadata_blob(&path) {
                continue;
            }
            self.content.delete(&d).map_err(Error::Content)?;
        }
        Ok(())
    }
}

/// Parses `--keep-storage` sizes: `1024`, `512k`, `10MB`, `1.5gb`; units are binary (k = 1024),
/// as docker reads them.
pub fn parse_size(s: &str) -> Option<u64> {
    let lower = s.trim().to_ascii_lowercase();
    let lower = lower.strip_suffix('b').unwrap_or(&lower);
    let lower = lower.strip_suffix('i').unwrap_or(lower);
    let (num, mult) = match lower.chars().last()? {
        'k' => (&lower[..lower.len() - 1], 1u64 << 10),
        'm' => (&lower[..lower.len() - 1], 1 << 20),
        'g' => (&lower[..lower.len() - 1], 1 << 30),
        't' => (&lower[..lower.len() - 1], 1 << 40),
        _ => (lower, 1),
    };
    let n: f64 = num.trim().parse().ok()?;
    (n >= 0.0).then_some((n * mult as f64) as u64)
}

/// Parses `--filter until=` durations: `24h`, `90m`, `1h30m`, `45s`, `2d`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let mut total = 0u64;
    let mut num = String::new();
    for c in s.trim().chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num.parse().ok()?;
        num.clear();
        total += n * match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return None,
        };
    }
    if !num.is_empty() {
        return None;
    }
    Some(Duration::from_secs(total))
}

/// The files directly in `dir` (none when it is missing), temp files included.
fn plain_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.path())
        .collect()
}
