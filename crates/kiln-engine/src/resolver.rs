//! How the frontend learns about base images: from the registry (through mirrors), saving the
//! manifest and config in the content store so the worker never asks twice; when the registry
//! does not have it, from the local image store, as `docker build` finds local images. With
//! `--offline` the registry is never asked: the local image store, then what the reference
//! resolved to in an earlier build (`resolved.rs`).

use futures::FutureExt;
use futures::future::BoxFuture;
use kiln_content::ContentStore;
use kiln_exporter::ImageStore;
use kiln_frontend::{BoxError, ImageResolver, ResolvedImage};
use kiln_oci::{ImageConfig, ImageManifest, Platform, Reference};
use kiln_progress::Progress;

pub(crate) struct EngineResolver<'a> {
    pub registry: &'a kiln_registry::Client,
    pub content: &'a ContentStore,
    pub images: &'a ImageStore,
    pub progress: &'a Progress,
    /// `--pull`: the registry's answer or an error, never the local image store.
    pub pull: bool,
    /// Several platforms in one build: progress names the platform of each lookup, as BuildKit
    /// (`[linux/arm64 internal] load metadata for ...`).
    pub multi_platform: bool,
    /// `--offline`: the local image store and earlier lookups only.
    pub offline: bool,
    /// Where registry lookups are remembered, for later offline builds.
    pub records: crate::resolved::ResolvedRecords,
    /// `--pin FILE`: references resolved to the digest the file gives instead of their tag.
    pub pins: Option<&'a crate::pin::Pins>,
    /// One lookup per image and platform in a build, however many stages name it.
    pub seen: std::sync::Mutex<std::collections::HashMap<(String, Platform), ResolvedImage>>,
}

impl<'a> EngineResolver<'a> {
    /// The resolver of one build on `engine`: `--pull` from `req`, the pins it loaded.
    pub(crate) fn for_build(
        engine: &'a crate::Engine,
        req: &crate::BuildRequest,
        pins: Option<&'a crate::pin::Pins>,
        progress: &'a Progress,
        multi_platform: bool,
    ) -> Self {
        EngineResolver {
            pull: req.pull,
            registry: &engine.registry,
            content: &engine.content,
            images: &engine.images,
            offline: engine.offline,
            records: crate::resolved::ResolvedRecords::new(&engine.root),
            pins,
            progress,
            multi_platform,
            seen: Default::default(),
        }
    }
}

impl EngineResolver<'_> {
    async fn resolve_inner(
        &self,
        reference: &Reference,
        platform: &Platform,
    ) -> std::result::Result<ResolvedImage, BoxError> {
        let key = (reference.whole(), platform.clone());
        if let Some(found) = self.seen.lock().expect("resolver lock").get(&key) {
            return Ok(found.clone());
        }
        let resolved = self.lookup(reference, platform).await?;
        self.seen
            .lock()
            .expect("resolver lock")
            .insert(key, resolved.clone());
        Ok(resolved)
    }

    /// Every image this resolver resolved: (reference as named, platform, manifest digest).
    pub(crate) fn resolved(&self) -> Vec<(Reference, Platform, kiln_oci::Digest)> {
        self.seen
            .lock()
            .expect("resolver lock")
            .iter()
            .filter_map(|((name, platform), r)| {
                let digest = r.pinned.rsplit_once('@')?.1;
                Some((
                    name.parse().ok()?,
                    platform.clone(),
                    kiln_oci::parse_digest(digest).ok()?,
                ))
            })
            .collect()
    }

    async fn lookup(
        &self,
        reference: &Reference,
        platform: &Platform,
    ) -> std::result::Result<ResolvedImage, BoxError> {
        // A pinned reference is that digest whatever the tag says now; no lookup at all when
        // the content store has its manifest and config.
        let pinned = self.pins.and_then(|p| p.get(reference, platform));
        let reference = &match &pinned {
            Some(d) => reference.with_digest(d.as_ref()),
            None => reference.clone(),
        };
        if let Some(d) = &pinned
            && let Some(found) = self.stored(reference, d)?
        {
            return Ok(found);
        }
        let vertex = self.progress.vertex(format!(
            "[{}internal] load metadata for {}",
            if self.multi_platform {
                format!("{platform} ")
            } else {
                String::new()
            },
            reference.whole()
        ));
        if self.offline {
            return match self.offline_lookup(reference, platform)? {
                Some(found) => {
                    vertex.done();
                    Ok(found)
                }
                None => {
                    let err = Offline {
                        reference: reference.whole(),
                        platform: platform.to_string(),
                    };
                    vertex.error(&err.to_string());
                    Err(Box::new(err))
                }
            };
        }
        match self.registry.resolve(reference, platform).await {
            Ok(r) => {
                self.content.put(&r.manifest_bytes, Some(&r.digest))?;
                self.content.put(&r.config_bytes, None)?;
                self.records.put(reference, platform, &r.digest);
                let config: ImageConfig = serde_json::from_slice(&r.config_bytes)?;
                vertex.done();
                Ok(ResolvedImage {
                    pinned: pin(reference, &r.digest),
                    config,
                })
            }
            Err(registry_err) if self.pull => {
                vertex.error(&kiln_solver::error_chain(&registry_err));
                Err(Box::new(registry_err))
            }
            Err(registry_err) => match self.local(reference, platform)? {
                Some(found) => {
                    vertex.done();
                    Ok(found)
                }
                None => {
                    vertex.error(&kiln_solver::error_chain(&registry_err));
                    Err(Box::new(registry_err))
                }
            },
        }
    }

    /// The local image store's image of that name, else what an earlier build resolved it to
    /// (its manifest and config still in the content store).
    fn offline_lookup(
        &self,
        reference: &Reference,
        platform: &Platform,
    ) -> Result<Option<ResolvedImage>, BoxError> {
        if let Some(found) = self.local(reference, platform)? {
            return Ok(Some(found));
        }
        match self.records.get(reference, platform) {
            Some(manifest) => self.stored(reference, &manifest),
            None => Ok(None),
        }
    }

    /// The image manifest `manifest` as `reference`, if the content store has it and its config.
    fn stored(
        &self,
        reference: &Reference,
        manifest: &kiln_oci::Digest,
    ) -> Result<Option<ResolvedImage>, BoxError> {
        let Ok(bytes) = self.content.read(manifest) else {
            return Ok(None);
        };
        let Ok(parsed) = serde_json::from_slice::<ImageManifest>(&bytes) else {
            return Ok(None);
        };
        let Ok(config) = self.content.read(parsed.config().digest()) else {
            return Ok(None);
        };
        Ok(Some(ResolvedImage {
            pinned: pin(reference, manifest),
            config: serde_json::from_slice(&config)?,
        }))
    }

    fn local(
        &self,
        reference: &Reference,
        platform: &Platform,
    ) -> Result<Option<ResolvedImage>, BoxError> {
        // A name of several platforms' images gives the one asked for.
        let Some(record) = self.images.get_platform(reference, platform)? else {
            return Ok(None);
        };
        let manifest: ImageManifest =
            serde_json::from_slice(&self.content.read(&record.manifest)?)?;
        let config: ImageConfig =
            serde_json::from_slice(&self.content.read(manifest.config().digest())?)?;
        Ok(Some(ResolvedImage {
            pinned: pin(reference, &record.manifest),
            config,
        }))
    }
}

/// A base image `--offline` cannot find on this machine.
#[derive(Debug, thiserror::Error)]
#[error(
    "`{reference}` ({platform}) is not on this machine (in the local image store, or kept from \
     an earlier build) and --offline does not use the network: pull it first (`kiln pull \
     --platform {platform} {reference}`) or build without --offline"
)]
pub(crate) struct Offline {
    reference: String,
    platform: String,
}

/// `registry/repo:tag@digest`.
pub(crate) fn pin(reference: &Reference, digest: &kiln_oci::Digest) -> String {
    let base = format!("{}/{}", reference.registry(), reference.repository());
    match reference.tag() {
        Some(tag) => format!("{base}:{tag}@{digest}"),
        None => format!("{base}@{digest}"),
    }
}

impl ImageResolver for EngineResolver<'_> {
    fn resolve<'a>(
        &'a self,
        reference: &'a Reference,
        platform: &'a Platform,
    ) -> BoxFuture<'a, std::result::Result<ResolvedImage, BoxError>> {
        self.resolve_inner(reference, platform).boxed()
    }
}
