//! Image layers: a pinned image's chain, pulled and unpacked only when a step needs its files.

use super::*;

impl LlbWorker {
    /// The layer chain of an image pinned by digest; nothing is pulled yet.
    pub async fn image(&self, pinned: &str) -> Result<Value> {
        let reference: Reference = pinned
            .parse()
            .map_err(|_| Error::Reference(pinned.to_string()))?;
        let digest = reference
            .digest()
            .and_then(|d| kiln_oci::parse_digest(d).ok())
            .ok_or_else(|| Error::Reference(pinned.to_string()))?;
        let bytes = match self.content.read(&digest) {
            Ok(b) => b,
            Err(_) => {
                let resolved = self
                    .registry
                    .resolve(&reference, &kiln_oci::Platform::host())
                    .await?;
                self.content
                    .put(&resolved.manifest_bytes, Some(&resolved.digest))?;
                self.content.put(&resolved.config_bytes, None)?;
                resolved.manifest_bytes
            }
        };
        let manifest: ImageManifest =
            serde_json::from_slice(&bytes).map_err(|_| Error::Manifest(pinned.to_string()))?;
        let config_digest = manifest.config().digest().clone();
        let config_bytes = match self.content.read(&config_digest) {
            Ok(b) => b,
            Err(_) => {
                let mut w = self.content.async_writer()?;
                self.registry
                    .fetch_blob(&reference, manifest.config(), &mut w)
                    .await?;
                w.commit(Some(&config_digest)).await?;
                self.content.read(&config_digest)?
            }
        };
        let config: kiln_oci::ImageConfig = serde_json::from_slice(&config_bytes)
            .map_err(|_| Error::Manifest(pinned.to_string()))?;
        if config.rootfs.diff_ids.len() != manifest.layers().len() {
            return Err(Error::Manifest(pinned.to_string()));
        }
        let mut layers = Vec::new();
        for (desc, diff_id) in manifest.layers().iter().zip(&config.rootfs.diff_ids) {
            layers.push(LayerRef {
                diff_id: Some(
                    kiln_oci::parse_digest(diff_id)
                        .map_err(|_| Error::Manifest(pinned.to_string()))?,
                ),
                blob: Some(desc.digest().clone()),
                size: desc.size(),
                media_type: desc.media_type().to_string(),
                source: Some(pinned.to_string()),
            });
        }
        Ok(Value::Rootfs { layers })
    }

    /// Makes sure every layer of a chain is unpacked; returns their dirs, topmost first.
    pub async fn materialize(
        &self,
        layers: &[LayerRef],
        progress: &Vertex,
    ) -> Result<Vec<PathBuf>> {
        let mut dirs = Vec::new();
        for layer in layers {
            let Some(diff_id) = &layer.diff_id else {
                continue;
            };
            if !self.layers.contains(diff_id) {
                let lock = self
                    .unpacking
                    .lock()
                    .entry(diff_id.clone())
                    .or_default()
                    .clone();
                let _guard = lock.lock().await;
                if !self.layers.contains(diff_id) {
                    self.unpack(layer, diff_id, progress).await?;
                }
                // In place now: later users find the layer without the lock.
                self.unpacking.lock().remove(diff_id);
            }
            dirs.push(self.layers.dir(diff_id));
        }
        dirs.reverse();
        // Two steps with identical changes share a layer dir; overlayfs refuses a lowerdir
        // listed twice (ELOOP). The topmost copy alone gives the same view.
        let mut seen = std::collections::HashSet::new();
        dirs.retain(|d| seen.insert(d.clone()));
        Ok(dirs)
    }

    pub(crate) async fn unpack(
        &self,
        layer: &LayerRef,
        diff_id: &Digest,
        progress: &Vertex,
    ) -> Result<()> {
        let blob = layer
            .blob
            .clone()
            .ok_or_else(|| Error::Manifest(format!("layer {diff_id} has no blob")))?;
        if !self.content.contains(&blob) {
            progress.status(&format!("pulling {blob}"));
            crate::blobsource::fetch_layer_blob(
                &self.registry,
                &self.blob_stores,
                &self.content,
                layer,
                &blob,
            )
            .await?;
        }
        progress.status(&format!("extracting {blob}"));
        let (content, layers, media_type, diff_id) = (
            self.content.clone(),
            self.layers.clone(),
            layer.media_type.clone(),
            diff_id.clone(),
        );
        tokio::task::spawn_blocking(move || -> Result<()> {
            let file = content.open_blob(&blob)?;
            layers.unpack(std::io::BufReader::new(file), &media_type, Some(&diff_id))?;
            Ok(())
        })
        .await??;
        Ok(())
    }
}
