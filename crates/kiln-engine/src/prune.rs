//! `kiln prune`: removing the build cache `kiln du` lists (see du.rs for what it counts).
//!
//! Pruning removes the selected cache records and cache mounts, then (only when no other kiln
//! uses the data directory: the engine lock taken exclusively) the layer dirs and blobs no
//! remaining record or tagged image references. A cache mount a running step holds is skipped,
//! and so is a partial blob a live writer holds (see `kiln_content::partial`).

use std::collections::BTreeMap;
use std::fs;
use std::time::{Duration, SystemTime};

use kiln_worker::cachemount;

use crate::du::{Target, UsageKind, UsageRecord, hex_entries, is_metadata_blob, sha};
use crate::{Engine, Error, Result, io};

/// `kiln prune`'s choices, as `docker builder prune` takes them.
#[derive(Debug, Clone, Default)]
pub struct PruneRequest {
    /// Also base images' layers (`source.image`); by default only step results, cache mounts
    /// and unreferenced data go.
    pub all: bool,
    /// Only what was last used longer ago than this.
    pub until: Option<Duration>,
    /// Only these kinds (any of them); empty for every kind `all` allows.
    pub kinds: Vec<UsageKind>,
    /// Only rows whose id starts with one of these.
    pub ids: Vec<String>,
    /// Keep this many bytes of build cache: remove the least recently used first, and only
    /// until the rest fits.
    pub keep_storage: Option<u64>,
}

/// What `kiln prune` removed.
#[derive(Debug, Clone, Default)]
pub struct PruneReport {
    pub removed: Vec<UsageRecord>,
    pub reclaimed: u64,
    /// Set when other kiln processes were running: layers and blobs were left for later.
    pub gc_skipped: bool,
}

impl Engine {
    /// `kiln prune`: removes the build cache `req` selects; never tagged images or what they
    /// reference, never what a running build holds.
    pub fn prune(&self, req: &PruneRequest) -> Result<PruneReport> {
        // Alone (the engine lock taken exclusively), nothing can be between "layer written" and
        // "record saved": unreferenced data is garbage. Others block in `Engine::open` meanwhile.
        let alone = rustix::fs::flock(
            &self._lock,
            rustix::fs::FlockOperation::NonBlockingLockExclusive,
        )
        .is_ok();
        let result = self.prune_locked(req, alone);
        // A failed conversion may have dropped the shared lock, and success made it exclusive:
        // either way, back to shared.
        rustix::fs::flock(&self._lock, rustix::fs::FlockOperation::LockShared)
            .map_err(|e| io("locking the data directory")(e.into()))?;
        result
    }

    fn prune_locked(&self, req: &PruneRequest, alone: bool) -> Result<PruneReport> {
        if alone {
            cachemount::remove_stale(&self.root).map_err(io("removing stale cache mounts"))?;
        }
        let usage = self.disk_usage()?;
        let now = SystemTime::now();
        let allowed = |k: UsageKind| {
            let by_all = req.all || k != UsageKind::SourceImage;
            let by_filter = req.kinds.is_empty() || req.kinds.contains(&k);
            by_all && by_filter
        };
        let mut total = usage.total();
        let mut report = PruneReport {
            gc_skipped: !alone,
            ..Default::default()
        };
        let mut removed_records = false;
        for row in &usage.records {
            if let Some(keep) = req.keep_storage
                && total <= keep
            {
                break;
            }
            let old_enough = match (req.until, row.last_used) {
                (None, _) => true,
                (Some(age), Some(t)) => now.duration_since(t).is_ok_and(|d| d >= age),
                (Some(_), None) => true,
            };
            let id_ok = req.ids.is_empty() || req.ids.iter().any(|p| row.id.starts_with(p));
            // Base images' manifests and configs, which the frontend may read offline, go
            // only with `--all`.
            let metadata = matches!(&row.target, Target::Blob(d)
                if is_metadata_blob(&self.content.path(d)));
            if row.in_use || !old_enough || !id_ok || !allowed(row.kind) || (metadata && !req.all) {
                continue;
            }
            let done = match &row.target {
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
                // Unreferenced data goes with the collection below, which needs to be alone.
                Target::Layer | Target::Blob(_) => alone,
                // Only when no live writer holds it (checked again under its lock).
                Target::Ingest(name) => self.content.remove_ingest(name)?,
            };
            if done {
                // A shared row's data stays with the image that uses it: nothing is freed.
                let freed = if row.shared { 0 } else { row.size };
                total = total.saturating_sub(freed);
                report.reclaimed += freed;
                report.removed.push(row.clone());
            }
        }
        if alone {
            self.collect(req, &report, removed_records)?;
        }
        Ok(report)
    }

    /// Removes layer dirs and blobs nothing references any more: what the removed rows counted,
    /// and what the records just removed left unreferenced. Manifests and configs (base images'
    /// metadata the frontend may read offline) go only with `--all`.
    fn collect(&self, req: &PruneRequest, report: &PruneReport, records_went: bool) -> Result<()> {
        let (_, image_refs) = self.image_refs()?;
        let mut keep = image_refs;
        for r in self.cache_records() {
            self.record_refs(&r, &mut keep);
        }
        self.add_variants(&mut keep);
        let (keep_layers, keep_blobs) = (keep.diff_ids, keep.blobs);
        // Records of blobs made from layers nothing references: the blobs go below.
        for (diff_id, _) in self.variants.list() {
            if !keep_layers.contains(&diff_id) {
                self.variants.remove(&diff_id)?;
            }
        }
        let chosen: BTreeMap<String, &UsageRecord> =
            report.removed.iter().map(|r| (r.id.clone(), r)).collect();
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
            if !picked && !req.all && is_metadata_blob(&path) {
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
