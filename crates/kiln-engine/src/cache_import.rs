//! `--cache-from`: fetch a kiln cache manifest and its config (from a registry, an OCI
//! layout directory or a bucket, cache_store/) and hand the solver their records. Only
//! metadata is read here; a record's layers point at the cache and are fetched when a step
//! needs their files or an export needs their blobs (`kiln_worker::fetch_layer_blob`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use kiln_oci::{Descriptor, Digest, MediaType, Platform, Reference};
use kiln_progress::Progress;
use kiln_solver::{CacheStore, FileCacheStore, LayeredCacheStore};
use kiln_worker::{LayerRef, Value};

use crate::cache_format::{CONFIG_MEDIA_TYPE, CacheConfig, Imported, config_of};
use crate::cache_spec::{CacheImport, CacheLocation};
use crate::cache_store::BucketCache;
use crate::{Engine, Error, Result};

/// The records of each import, in order, for the solver, and the cache mounts of all of them
/// for the worker (the first import naming an identity wins, as the first record would).
pub(crate) fn split(
    imported: Vec<Imported>,
) -> (Vec<HashMap<Digest, Value>>, HashMap<String, LayerRef>) {
    let mut mounts = HashMap::new();
    let records = imported
        .into_iter()
        .map(|i| {
            for (identity, layer) in i.mounts {
                mounts.entry(identity).or_insert(layer);
            }
            i.records
        })
        .collect();
    (records, mounts)
}

impl Engine {
    /// The cache a build's solver looks keys up in: this root's records, then those of every
    /// `--cache-from` (imported once for all `platforms`: a cache holds the records of all of
    /// them, and an image with an inline cache gives each platform's). Also returns the cache
    /// mounts the imports carry, for the worker.
    pub(crate) async fn open_build_cache(
        &self,
        imports: &[CacheImport],
        platforms: &[Platform],
        progress: &Progress,
    ) -> Result<(Arc<dyn CacheStore<Value>>, HashMap<String, LayerRef>)> {
        let local: Arc<dyn CacheStore<Value>> = Arc::new(
            FileCacheStore::open(self.root.join("cache"))
                .map_err(crate::io("opening the cache records"))?,
        );
        if imports.is_empty() {
            return Ok((local, HashMap::new()));
        }
        let (records, mounts) = split(self.import_caches(imports, platforms, progress).await);
        Ok((Arc::new(LayeredCacheStore::new(local, records)), mounts))
    }

    /// The records of every `--cache-from`, in the order given, fetched at the same time. One
    /// that cannot be read is a warning (as BuildKit goes on without it), not the build's error.
    pub(crate) async fn import_caches(
        &self,
        imports: &[CacheImport],
        platforms: &[Platform],
        progress: &Progress,
    ) -> Vec<Imported> {
        let each = imports.iter().map(|i| async move {
            let v = progress.vertex(format!("importing cache manifest from {}", i.location));
            let records = match &i.location {
                CacheLocation::Registry(r) => self.import_registry_cache(r, platforms).await,
                CacheLocation::Local(dir) => import_local_cache(dir, i.digest.as_ref(), &i.tag),
                CacheLocation::S3(c) => self.import_bucket_cache(BucketCache::S3(c)).await,
                CacheLocation::Azblob(c) => self.import_bucket_cache(BucketCache::Azblob(c)).await,
                CacheLocation::Inline => Err(Error::Usage(
                    "an inline cache is imported with `type=registry,ref=IMAGE`".into(),
                )),
            };
            match records {
                Ok(records) => {
                    v.done();
                    Some(records)
                }
                Err(e) => {
                    let message = format!(
                        "failed to import cache from {}: {}",
                        i.location,
                        kiln_solver::error_chain(&e)
                    );
                    v.error(&message);
                    progress.warn(message);
                    None
                }
            }
        });
        futures::future::join_all(each)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// A kiln cache manifest, or an image whose config carries an inline cache
    /// (cache_inline.rs; an index is narrowed to the build's platform).
    async fn import_registry_cache(
        &self,
        reference: &Reference,
        platforms: &[Platform],
    ) -> Result<Imported> {
        let raw = self.registry.fetch_manifest_raw(reference).await?;
        let invalid = |why: String| Error::Usage(format!("{reference} is not a kiln cache: {why}"));
        let (digest, size) = match config_of(&raw.bytes) {
            Ok(config) => config,
            Err(why) if is_image(&raw.bytes) => {
                let records = self
                    .import_inline_caches(reference, platforms)
                    .await?
                    .ok_or_else(|| invalid(format!("{why}, and the image has no inline cache")))?;
                return Ok(Imported {
                    records,
                    mounts: HashMap::new(),
                });
            }
            Err(why) => return Err(invalid(why)),
        };
        let desc = Descriptor::new(MediaType::from(CONFIG_MEDIA_TYPE), size, digest);
        let mut bytes = Vec::new();
        self.registry
            .fetch_blob(reference, &desc, &mut bytes)
            .await?;
        // Layers are pulled by this manifest's digest: a tag moved by a later export does not
        // change what this build's records point at.
        let pinned = reference.with_digest(raw.digest.as_ref());
        CacheConfig::records(&bytes, &pinned.to_string()).map_err(invalid)
    }

    /// The inline records of the image for each platform, merged (an index gives each
    /// platform's image); `None` when no platform's image has any.
    async fn import_inline_caches(
        &self,
        reference: &Reference,
        platforms: &[Platform],
    ) -> Result<Option<HashMap<Digest, Value>>> {
        let mut all: Option<HashMap<Digest, Value>> = None;
        for platform in platforms {
            if let Some(records) = self.import_inline_cache(reference, platform).await? {
                all.get_or_insert_with(HashMap::new).extend(records);
            }
        }
        Ok(all)
    }

    async fn import_inline_cache(
        &self,
        reference: &Reference,
        platform: &Platform,
    ) -> Result<Option<HashMap<Digest, Value>>> {
        let resolved = self.registry.resolve(reference, platform).await?;
        let config: serde_json::Value = serde_json::from_slice(&resolved.config_bytes)
            .map_err(|e| Error::Usage(format!("{reference}: invalid image config: {e}")))?;
        let layers: Vec<(Digest, u64, String)> = resolved
            .manifest
            .layers()
            .iter()
            .map(|d| (d.digest().clone(), d.size(), d.media_type().to_string()))
            .collect();
        let pinned = reference.with_digest(resolved.digest.as_ref());
        crate::cache_inline::inline_records(&config, &layers, &pinned.to_string())
            .map_err(|why| Error::Usage(format!("{reference}: invalid inline cache: {why}")))
    }
}

/// Whether a manifest is an image's (or an index of images), which may hold an inline cache.
fn is_image(manifest: &[u8]) -> bool {
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(manifest) else {
        return false;
    };
    let config_type = doc["config"]["mediaType"].as_str().unwrap_or_default();
    config_type == kiln_oci::media_type::OCI_CONFIG
        || config_type == kiln_oci::media_type::DOCKER_CONFIG
        || doc["manifests"].is_array()
}

/// A cache in an OCI layout directory: the manifest `digest=` names, else the index entry
/// named `tag` (`latest` by default), else, for `latest`, the index's only entry.
fn import_local_cache(dir: &Path, digest: Option<&Digest>, tag: &str) -> Result<Imported> {
    let shown = dir.display();
    let invalid = |why: String| Error::Usage(format!("{shown} is not a kiln cache: {why}"));
    let manifest = match digest {
        Some(d) => d.clone(),
        None => {
            let path = dir.join("index.json");
            let bytes = std::fs::read(&path)
                .map_err(|e| invalid(format!("could not read {}: {e}", path.display())))?;
            let index: serde_json::Value = serde_json::from_slice(&bytes)
                .map_err(|e| invalid(format!("{}: {e}", path.display())))?;
            let entries = index["manifests"].as_array().cloned().unwrap_or_default();
            let tagged = entries.iter().find(|m| {
                m["annotations"]["org.opencontainers.image.ref.name"].as_str() == Some(tag)
            });
            let entry = match (tagged, entries.as_slice()) {
                (Some(m), _) => m,
                (None, [m]) if tag == crate::cache_spec::DEFAULT_LOCAL_TAG => m,
                _ => {
                    return Err(invalid(format!(
                        "its index.json has no entry tagged `{tag}`"
                    )));
                }
            };
            entry["digest"]
                .as_str()
                .and_then(|d| kiln_oci::parse_digest(d).ok())
                .ok_or_else(|| invalid("its index.json names no valid digest".into()))?
        }
    };
    let manifest_bytes =
        read_blob(dir, &manifest, crate::cache_format::MAX_CONFIG_BYTES).map_err(invalid)?;
    let (config, size) = config_of(&manifest_bytes).map_err(invalid)?;
    let config_bytes = read_blob(dir, &config, size).map_err(invalid)?;
    // Layers are copied out of the directory by path when needed; an absolute one, so a later
    // change of working directory does not matter.
    let abs = std::fs::canonicalize(dir).map_err(|e| invalid(e.to_string()))?;
    let source = format!("{}{}", kiln_worker::LAYOUT_SOURCE, abs.display());
    CacheConfig::records(&config_bytes, &source).map_err(invalid)
}

/// A small blob of a layout, at most `max` bytes, checked against its digest.
fn read_blob(dir: &Path, digest: &Digest, max: u64) -> std::result::Result<Vec<u8>, String> {
    use std::io::Read;
    let path = dir.join("blobs/sha256").join(digest.digest());
    let file = std::fs::File::open(&path).map_err(|e| format!("blob {digest}: {e}"))?;
    let mut bytes = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("blob {digest}: {e}"))?;
    if bytes.len() as u64 > max {
        return Err(format!("blob {digest} is larger than {max} bytes"));
    }
    if kiln_oci::sha256(&bytes) != *digest {
        return Err(format!("blob {digest}: digest mismatch"));
    }
    Ok(bytes)
}
