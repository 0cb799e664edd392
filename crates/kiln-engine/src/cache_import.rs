//! `--cache-from type=registry`: fetch a kiln cache manifest and its config, and hand the
//! solver their records. Only metadata is fetched here; a record's layers point at the cache
//! repository and are pulled when a step needs their files or an export needs their blobs.

use std::collections::HashMap;

use kiln_oci::{Descriptor, Digest, MediaType, Reference};
use kiln_progress::Progress;
use kiln_worker::Value;

use crate::cache_format::{CONFIG_MEDIA_TYPE, CacheConfig, MAX_CONFIG_BYTES};
use crate::cache_spec::CacheImport;
use crate::{Engine, Error, Result};

impl Engine {
    /// The records of every `--cache-from`, in the order given, fetched at the same time. One
    /// that cannot be read is a warning (as BuildKit goes on without it), not the build's error.
    pub(crate) async fn import_caches(
        &self,
        imports: &[CacheImport],
        progress: &Progress,
    ) -> Vec<HashMap<Digest, Value>> {
        let each = imports.iter().map(|i| async move {
            let v = progress.vertex(format!("importing cache manifest from {}", i.reference));
            match self.import_registry_cache(&i.reference).await {
                Ok(records) => {
                    v.done();
                    Some(records)
                }
                Err(e) => {
                    let message = format!(
                        "failed to import cache from {}: {}",
                        i.reference,
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

    async fn import_registry_cache(&self, reference: &Reference) -> Result<HashMap<Digest, Value>> {
        let raw = self.registry.fetch_manifest_raw(reference).await?;
        let invalid = |why: String| Error::Usage(format!("{reference} is not a kiln cache: {why}"));
        let manifest: serde_json::Value =
            serde_json::from_slice(&raw.bytes).map_err(|e| invalid(format!("manifest: {e}")))?;
        let config = &manifest["config"];
        let media_type = config["mediaType"].as_str().unwrap_or_default();
        if media_type != CONFIG_MEDIA_TYPE {
            return Err(invalid(format!(
                "its config is `{media_type}`, not `{CONFIG_MEDIA_TYPE}`"
            )));
        }
        let digest = config["digest"]
            .as_str()
            .and_then(|d| kiln_oci::parse_digest(d).ok())
            .ok_or_else(|| invalid("the config digest is missing or invalid".into()))?;
        let size = config["size"]
            .as_u64()
            .filter(|s| *s <= MAX_CONFIG_BYTES)
            .ok_or_else(|| invalid("the config size is missing or too large".into()))?;
        let desc = Descriptor::new(MediaType::from(CONFIG_MEDIA_TYPE), size, digest);
        let mut bytes = Vec::new();
        self.registry
            .fetch_blob(reference, &desc, &mut bytes)
            .await?;
        let config: CacheConfig =
            serde_json::from_slice(&bytes).map_err(|e| invalid(format!("config: {e}")))?;
        // Layers are pulled by this manifest's digest: a tag moved by a later export does not
        // change what this build's records point at.
        let pinned = reference.with_digest(raw.digest.as_ref());
        config.into_records(&pinned.to_string()).map_err(invalid)
    }
}
