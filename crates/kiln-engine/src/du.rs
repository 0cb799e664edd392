//! Disk usage of a data directory (`kiln du`); prune.rs removes what it lists.
//!
//! What is counted, as `docker buildx du` lists it: one row per cache record (`regular` for a
//! step's result, sized by the layer the step made; `source.image` for a base image, sized by
//! its layers), one per cache mount (`exec.cachemount`), and one per layer or layer blob that
//! nothing references any more. Tagged images are summed apart and never pruned, nor anything
//! they reference. Sizes are apparent file sizes: an unpacked layer dir plus its blob. A blob
//! still being written (or left half-written by a killed kiln) counts as `partial`.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use kiln_oci::Digest;
use kiln_worker::{Value, cachemount};

use crate::{Engine, Result, io};

/// What a row of `kiln du` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UsageKind {
    /// A build step's cached result.
    Regular,
    /// A base image's layers, pulled for `FROM`.
    SourceImage,
    /// A `RUN --mount=type=cache` directory.
    CacheMount,
    /// A layer dir or blob that no record or image references.
    Unreferenced,
    /// A blob being written to the content store's `ingest/`, or left there by a killed kiln.
    Partial,
}

impl UsageKind {
    /// The name `--filter type=` and `du --verbose` use (BuildKit's where it has one).
    pub fn name(self) -> &'static str {
        match self {
            UsageKind::Regular => "regular",
            UsageKind::SourceImage => "source.image",
            UsageKind::CacheMount => "exec.cachemount",
            UsageKind::Unreferenced => "unreferenced",
            UsageKind::Partial => "partial",
        }
    }

    pub fn parse(s: &str) -> Option<UsageKind> {
        [
            UsageKind::Regular,
            UsageKind::SourceImage,
            UsageKind::CacheMount,
            UsageKind::Unreferenced,
            UsageKind::Partial,
        ]
        .into_iter()
        .find(|k| k.name() == s)
    }
}

/// One row of `kiln du`.
#[derive(Debug, Clone)]
pub struct UsageRecord {
    pub id: String,
    pub kind: UsageKind,
    pub size: u64,
    /// Whether a tagged image also uses what the row counts (pruning it frees nothing).
    pub shared: bool,
    /// Whether a running step holds it.
    pub in_use: bool,
    pub last_used: Option<SystemTime>,
    pub description: String,
    pub(crate) target: Target,
}

impl UsageRecord {
    pub fn reclaimable(&self) -> bool {
        !self.shared && !self.in_use
    }
}

#[derive(Debug, Clone)]
pub(crate) enum Target {
    Record(PathBuf),
    CacheMount(cachemount::CacheMountEntry),
    Layer,
    Blob(Digest),
    /// A file in the content store's `ingest/`, by name.
    Ingest(String),
}

/// What `kiln du` reports.
#[derive(Debug, Clone, Default)]
pub struct DiskUsage {
    /// Oldest use first.
    pub records: Vec<UsageRecord>,
    /// Tagged images: how many names, and the bytes of what they reference (blobs and
    /// unpacked layers), counted once.
    pub images: usize,
    pub images_size: u64,
}

impl DiskUsage {
    /// Bytes of the build cache, what several rows share counted once.
    pub fn total(&self) -> u64 {
        self.records.iter().map(|r| r.size).sum()
    }

    pub fn reclaimable(&self) -> u64 {
        self.records
            .iter()
            .filter(|r| r.reclaimable())
            .map(|r| r.size)
            .sum()
    }

    pub fn shared(&self) -> u64 {
        self.records
            .iter()
            .filter(|r| r.shared)
            .map(|r| r.size)
            .sum()
    }
}

/// Sizes of unpacked layer dirs, remembered in `cache/layer-sizes.json` between runs: a layer
/// dir never changes once in place (it is named by its content), so each is walked once, and
/// `kiln du` and the GC after every build stay cheap on a large store. Only a cache: a lost or
/// damaged file means walking again.
struct LayerSizes {
    path: PathBuf,
    known: BTreeMap<String, u64>,
    /// The sizes of the dirs looked at this time: what is saved.
    seen: BTreeMap<String, u64>,
}

impl LayerSizes {
    fn load(cache_dir: &Path) -> LayerSizes {
        let path = cache_dir.join("layer-sizes.json");
        let known = fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        LayerSizes {
            path,
            known,
            seen: BTreeMap::new(),
        }
    }

    /// The size of the layer dir `dir` (0 when it is not there).
    fn of(&mut self, dir: &Path) -> u64 {
        let Some(name) = dir.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            return 0;
        };
        if let Some(&size) = self.seen.get(&name) {
            return size;
        }
        if !dir.is_dir() {
            return 0;
        }
        let size = match self.known.get(&name) {
            Some(&size) => size,
            None => dir_size(dir),
        };
        self.seen.insert(name, size);
        size
    }

    /// Writes the sizes back when they changed: a temp file (`.tmp-*`, cleared by
    /// `Engine::open` if a kill leaves it) renamed over the old one, last writer winning.
    fn save(self) {
        if self.seen == self.known {
            return;
        }
        let Some(dir) = self.path.parent() else {
            return;
        };
        let tmp = dir.join(format!(".tmp-sizes-{:016x}", rand::random::<u64>()));
        let written = fs::create_dir_all(dir)
            .and_then(|()| fs::write(&tmp, serde_json::to_vec(&self.seen).unwrap_or_default()))
            .and_then(|()| fs::rename(&tmp, &self.path));
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
    }
}

/// The layers, blobs and identities referenced by the tagged images.
#[derive(Default)]
pub(crate) struct Refs {
    pub(crate) diff_ids: HashSet<Digest>,
    pub(crate) blobs: HashSet<Digest>,
}

fn dir_size(path: &Path) -> u64 {
    let mut total = 0;
    let mut todo = vec![path.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                todo.push(e.path());
            } else {
                total += m.len();
            }
        }
    }
    total
}

pub(crate) fn hex_entries(dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<_> = rd
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .filter(|(n, _)| n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit()))
        .collect();
    out.sort();
    out
}

pub(crate) fn sha(hex: &str) -> Option<Digest> {
    kiln_oci::parse_digest(&format!("sha256:{hex}")).ok()
}

fn short(d: &Digest) -> String {
    d.digest().chars().take(12).collect()
}

/// The digests a manifest, index or config names, recursively through the content store.
fn image_refs(engine: &Engine, manifest: &Digest, refs: &mut Refs) {
    if !refs.blobs.insert(manifest.clone()) {
        return;
    }
    let Ok(bytes) = engine.content.read(manifest) else {
        return;
    };
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return;
    };
    let digest_of = |v: &serde_json::Value| {
        v.get("digest")
            .and_then(|d| d.as_str())
            .and_then(|d| kiln_oci::parse_digest(d).ok())
    };
    for child in json["manifests"].as_array().into_iter().flatten() {
        if let Some(d) = digest_of(child) {
            image_refs(engine, &d, refs);
        }
    }
    for layer in json["layers"].as_array().into_iter().flatten() {
        if let Some(d) = digest_of(layer) {
            refs.blobs.insert(d);
        }
    }
    if let Some(config) = digest_of(&json["config"]) {
        refs.blobs.insert(config.clone());
        if let Ok(cfg) = engine.content.read(&config)
            && let Ok(cfg) = serde_json::from_slice::<serde_json::Value>(&cfg)
        {
            for d in cfg["rootfs"]["diff_ids"].as_array().into_iter().flatten() {
                if let Some(d) = d.as_str().and_then(|d| kiln_oci::parse_digest(d).ok()) {
                    refs.diff_ids.insert(d);
                }
            }
        }
    }
}

/// A cache record as read from `cache/<key>`.
pub(crate) struct CacheRecord {
    key: String,
    path: PathBuf,
    last_used: Option<SystemTime>,
    layers: Vec<kiln_worker::LayerRef>,
}

impl Engine {
    /// What a record references: its layers and blobs, and for pulled layers the manifest and
    /// config of the image they come from (the metadata a base image's record stands for).
    pub(crate) fn record_refs(&self, r: &CacheRecord, refs: &mut Refs) {
        for l in &r.layers {
            refs.diff_ids.extend(l.diff_id.clone());
            refs.blobs.extend(l.blob.clone());
            let pinned = l.source.as_deref().and_then(|s| s.rsplit_once('@'));
            if let Some(d) = pinned.and_then(|(_, d)| kiln_oci::parse_digest(d).ok())
                && !refs.blobs.contains(&d)
            {
                image_refs(self, &d, refs);
            }
        }
    }

    pub(crate) fn cache_records(&self) -> Vec<CacheRecord> {
        let mut out = Vec::new();
        for (key, path) in hex_entries(&self.root.join("cache")) {
            let Ok(bytes) = fs::read(&path) else { continue };
            let Ok(value) = serde_json::from_slice::<Value>(&bytes) else {
                continue;
            };
            out.push(CacheRecord {
                key,
                last_used: fs::metadata(&path).and_then(|m| m.modified()).ok(),
                path,
                layers: value.layers().to_vec(),
            });
        }
        out
    }

    pub(crate) fn image_refs(&self) -> Result<(usize, Refs)> {
        let images = self.images.list()?;
        let mut refs = Refs::default();
        for image in &images {
            // An index keeps every platform's image.
            image_refs(
                self,
                image.index.as_ref().unwrap_or(&image.manifest),
                &mut refs,
            );
        }
        self.add_variants(&mut refs);
        Ok((images.len(), refs))
    }

    /// The size of a layer as stored here: its unpacked dir, its blob and the blobs exports
    /// made from it (compressed, or with times rewritten).
    fn layer_size(&self, diff_id: &Digest, blob: Option<&Digest>, sizes: &mut LayerSizes) -> u64 {
        let unpacked = sizes.of(&self.layers.dir(diff_id));
        let mut blobs: Vec<Digest> = self.variants.blobs_of(diff_id);
        blobs.retain(|b| Some(b) != blob);
        blobs.extend(blob.cloned());
        let packed: u64 = blobs
            .iter()
            .map(|b| self.content.size(b).ok().flatten().unwrap_or(0))
            .sum();
        unpacked + packed
    }

    /// Adds the blobs exports made from the referenced layers: they live as long as the layer.
    pub(crate) fn add_variants(&self, refs: &mut Refs) {
        for d in &refs.diff_ids {
            refs.blobs.extend(self.variants.blobs_of(d));
        }
    }

    /// `kiln du`: what the build cache holds, least recently used first.
    pub fn disk_usage(&self) -> Result<DiskUsage> {
        let (images, image_refs) = self.image_refs()?;
        let records = self.cache_records();
        let mut sizes = LayerSizes::load(&self.root.join("cache"));
        let mut rows = Vec::new();
        // Layers and blobs some record or image references (the rest is unreferenced).
        let mut known = Refs {
            diff_ids: image_refs.diff_ids.clone(),
            blobs: image_refs.blobs.clone(),
        };
        for r in &records {
            self.record_refs(r, &mut known);
        }
        self.add_variants(&mut known);
        let (known_layers, known_blobs) = (known.diff_ids, known.blobs);
        for r in &records {
            let is_source = !r.layers.is_empty() && r.layers.iter().all(|l| l.source.is_some());
            // A step owns the layer it made; a base image record owns all of its layers.
            let owned: Vec<&kiln_worker::LayerRef> = if is_source {
                r.layers.iter().collect()
            } else {
                r.layers.last().into_iter().collect()
            };
            let mut size = 0;
            let mut shared = false;
            let mut layers = Vec::new();
            if is_source {
                // The image's manifest and config, found again through the pinned reference.
                let mut own = Refs::default();
                self.record_refs(r, &mut own);
                for b in &own.blobs {
                    if !r.layers.iter().any(|l| l.blob.as_ref() == Some(b)) {
                        size += self.content.size(b).ok().flatten().unwrap_or(0);
                    }
                }
            }
            for l in owned {
                let Some(d) = &l.diff_id else { continue };
                size += self.layer_size(d, l.blob.as_ref(), &mut sizes);
                shared |= image_refs.diff_ids.contains(d);
                layers.push(short(d));
            }
            let description = match (is_source, layers.is_empty()) {
                (true, _) => format!(
                    "pulled {}",
                    r.layers[0].source.as_deref().unwrap_or_default()
                ),
                (false, true) => "a step that changed no files".to_string(),
                (false, false) => format!("layer {}", layers.join(", ")),
            };
            rows.push(UsageRecord {
                id: r.key.clone(),
                kind: if is_source {
                    UsageKind::SourceImage
                } else {
                    UsageKind::Regular
                },
                size,
                shared,
                in_use: false,
                last_used: r.last_used,
                description,
                target: Target::Record(r.path.clone()),
            });
        }
        let mounts = cachemount::list(&self.root).map_err(io("listing the cache mounts"))?;
        for m in mounts {
            rows.push(UsageRecord {
                id: m.name.clone(),
                kind: UsageKind::CacheMount,
                size: dir_size(&m.path),
                shared: false,
                in_use: m.in_use,
                last_used: m.last_used,
                description: format!("cache mount {}", m.id),
                target: Target::CacheMount(m),
            });
        }
        for (hex, path) in hex_entries(self.layers.root()) {
            let Some(d) = sha(&hex) else { continue };
            if !known_layers.contains(&d) {
                rows.push(UsageRecord {
                    id: hex.clone(),
                    kind: UsageKind::Unreferenced,
                    size: sizes.of(&path),
                    shared: false,
                    in_use: false,
                    last_used: fs::metadata(&path).and_then(|m| m.modified()).ok(),
                    description: "unpacked layer".into(),
                    target: Target::Layer,
                });
            }
        }
        for (hex, path) in hex_entries(&self.content.root().join("blobs/sha256")) {
            let Some(d) = sha(&hex) else { continue };
            if known_blobs.contains(&d) {
                continue;
            }
            let meta = fs::metadata(&path).ok();
            rows.push(UsageRecord {
                id: hex.clone(),
                kind: UsageKind::Unreferenced,
                size: meta.as_ref().map_or(0, |m| m.len()),
                shared: false,
                in_use: false,
                last_used: meta.and_then(|m| m.modified().ok()),
                description: if is_metadata_blob(&path) {
                    "manifest or config".into()
                } else {
                    "layer blob".into()
                },
                target: Target::Blob(d),
            });
        }
        for f in self.content.ingest_files()? {
            rows.push(UsageRecord {
                id: f.name.clone(),
                kind: UsageKind::Partial,
                size: f.size,
                shared: false,
                in_use: f.in_use,
                last_used: f.modified,
                description: if f.in_use {
                    "partial blob being written".into()
                } else {
                    "partial blob left by an interrupted write".into()
                },
                target: Target::Ingest(f.name),
            });
        }
        rows.sort_by(|a, b| a.last_used.cmp(&b.last_used).then(a.id.cmp(&b.id)));

        let mut images_size = 0;
        for d in &image_refs.diff_ids {
            images_size += sizes.of(&self.layers.dir(d));
        }
        sizes.save();
        for b in &image_refs.blobs {
            images_size += self.content.size(b).ok().flatten().unwrap_or(0);
        }
        Ok(DiskUsage {
            records: rows,
            images,
            images_size,
        })
    }
}

/// Whether a blob is JSON (a manifest, index or config) rather than a layer.
pub(crate) fn is_metadata_blob(path: &Path) -> bool {
    use std::io::Read;
    let mut first = [0u8; 1];
    fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut first))
        .is_ok()
        && first[0] == b'{'
}

#[cfg(test)]
#[path = "du_tests.rs"]
mod tests;
