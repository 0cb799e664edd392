//! The end of a build: the image config and manifest for the solved layer chain, names in the
//! local store, and archives.

use kiln_oci::media_type::{self, LayerCompression};
use kiln_oci::{Digest, ImageConfig, Reference};
use kiln_progress::Progress;
use kiln_worker::{LayerRef, Value};

use crate::build::BuildRequest;
use crate::output::ExporterKind;
use crate::{Engine, Result};

impl Engine {
    /// Writes config and manifest for `value` and sends them to the request's outputs (the
    /// rootfs ones from `rootfs`, the solved chain, whose layers are all in the layer store);
    /// returns (manifest digest, config digest, every name the image got). The first
    /// `base_layers` layers are the base image's (`rewrite-timestamp` leaves them alone).
    pub(crate) async fn export(
        &self,
        value: &Value,
        rootfs: &Value,
        image: ImageConfig,
        req: &BuildRequest,
        base_layers: usize,
        progress: &Progress,
    ) -> Result<(Digest, Digest, Vec<String>)> {
        let opts_of = |o: &crate::output::Output| {
            let mut opts = o.export_opts(req.epoch());
            opts.base_layers = base_layers;
            opts
        };
        let v = progress.vertex("exporting to image");
        v.status("exporting layers");
        // local, tar and cacheonly outputs need no layer blobs (the rootfs comes from the
        // layer store), so a base image's are not pulled for them.
        if req.outputs.is_empty() || req.outputs.iter().any(|o| o.kind.is_image()) {
            self.fetch_missing_blobs(value.layers(), &v).await?;
        }
        let (manifest, config) = self.write_image(value.layers(), image, req.tags.first())?;
        v.status(&format!("exporting manifest {manifest} done"));
        v.status(&format!("exporting config {config} done"));
        v.status(&format!("writing image {config} done"));

        // Options of the image output that shape the stored image (times rewritten, media
        // types, annotations): the store names the derived manifest, its layers as held.
        let store_opts = req
            .outputs
            .iter()
            .find(|o| o.kind == ExporterKind::Image)
            .map(|o| {
                let mut opts = opts_of(o);
                opts.compression = kiln_exporter::compress::ExportOpts::store().compression;
                opts
            })
            .filter(|o| {
                let mut plain = kiln_exporter::compress::ExportOpts::store();
                plain.base_layers = o.base_layers;
                *o != plain
            });
        let (manifest, config) = match store_opts {
            Some(opts) => {
                let e = self.exported_manifest(&manifest, &opts).await?;
                (e.manifest, e.config)
            }
            None => (manifest, config),
        };
        let (names, pushed) = self
            .export_names(&manifest, value.layers(), req, base_layers, progress, &v)
            .await?;
        // The first archive's manifest, when nothing was pushed (`-o type=oci` describes it).
        let mut archived = None;
        for output in &req.outputs {
            if matches!(output.kind, ExporterKind::Local | ExporterKind::Tar) {
                let what = match output.kind {
                    ExporterKind::Local => "exporting to client directory",
                    _ => "exporting to client tarball",
                };
                let rv = progress.vertex(what);
                if output.platform_split == Some(true) {
                    // Asked for with one platform too: its tree under `linux_amd64/`.
                    let dir = crate::export_rootfs::platform_dir(
                        &req.platform
                            .clone()
                            .unwrap_or_else(kiln_oci::Platform::host),
                    );
                    self.export_rootfs_split(&[(dir, rootfs.layers())], output, &rv)
                        .await?;
                } else {
                    self.export_rootfs(rootfs.layers(), output, &rv).await?;
                }
                rv.done();
                continue;
            }
            if let (ExporterKind::Oci | ExporterKind::Docker, Some(dest)) =
                (output.kind, &output.dest)
            {
                v.status("compressing layers");
                let exported = self.exported_manifest(&manifest, &opts_of(output)).await?;
                archived.get_or_insert((exported.manifest.clone(), exported.config.clone()));
                let manifest = &exported.manifest;
                v.status(&format!("sending tarball to {}", dest.display()));
                let tags = crate::export_names::output_names(req, output)?;
                let (content, kind) = (&self.content, output.kind);
                let opts = kiln_exporter::ArchiveOptions {
                    descriptor_annotations: output.descriptor_annotations(),
                    ..Default::default()
                };
                crate::export_rootfs::write_to_dest(dest, !output.tar, |out| {
                    if kind == ExporterKind::Oci {
                        kiln_exporter::oci::write_archive_with(
                            content, manifest, &tags, &opts, out,
                        )?;
                    } else {
                        kiln_exporter::docker::write_archive_with(
                            content, manifest, &tags, &opts, out,
                        )?;
                    }
                    Ok(())
                })?;
            }
        }
        v.done();
        // What --metadata-file describes: the pushed manifest when there is one, else the
        // archive's, else the stored one (as buildx v0.36.1 describes each).
        Ok(match (pushed, archived) {
            (Some(p), _) => (p.manifest, p.config, names),
            (None, Some((m, c))) => (m, c, names),
            (None, None) => (manifest, config, names),
        })
    }

    /// Base-image layers are only pulled when a step needs their files; an export needs them all.
    /// They come eight at a time: an image whose every step hit an imported cache has all its
    /// layers to fetch at this point.
    pub(crate) async fn fetch_missing_blobs(
        &self,
        layers: &[LayerRef],
        v: &kiln_progress::Vertex,
    ) -> Result<()> {
        use futures::StreamExt;
        let mut missing = Vec::new();
        for layer in layers {
            let (Some(blob), Some(_)) = (&layer.blob, &layer.source) else {
                continue;
            };
            if !self.content.contains(blob) && !missing.iter().any(|(b, _)| b == blob) {
                missing.push((blob.clone(), layer.clone()));
            }
        }
        // Owned items: a closure over borrowed ones makes the build's future not `Send`.
        let mut fetches = futures::stream::iter(missing.into_iter().map(|(blob, layer)| {
            v.status(&format!("pulling {blob}"));
            async move {
                kiln_worker::fetch_layer_blob(
                    &self.registry,
                    &self.blob_stores,
                    &self.content,
                    &layer,
                    &blob,
                )
                .await
            }
        }))
        .buffer_unordered(8);
        while let Some(r) = fetches.next().await {
            r?;
        }
        Ok(())
    }

    /// The empty layer (a tar of nothing but its end: 1024 zero bytes), stored uncompressed.
    fn empty_layer(&self) -> Result<LayerRef> {
        let digest = self.content.put(&[0u8; 1024], None)?;
        Ok(LayerRef {
            diff_id: Some(digest.clone()),
            blob: Some(digest),
            size: 1024,
            media_type: media_type::OCI_LAYER_TAR.to_string(),
            source: None,
        })
    }

    /// Stores the config (diff_ids and empty-layer history filled in) and a manifest.
    ///
    /// When `previous` names an image that differs from this one only in its timestamps (a
    /// rebuild that hit the cache at every step), that image is kept: the same ID, nothing written.
    pub(crate) fn write_image(
        &self,
        layers: &[LayerRef],
        mut image: ImageConfig,
        previous: Option<&Reference>,
    ) -> Result<(Digest, Digest)> {
        // A step that changed nothing is still a layer of the image, the empty tar, as BuildKit
        // v0.32 exports it (older BuildKit left it out and marked its history entry empty).
        let layers: Vec<LayerRef> = layers
            .iter()
            .map(|l| match l.diff_id {
                Some(_) => Ok(l.clone()),
                None => self.empty_layer(),
            })
            .collect::<Result<_>>()?;
        let present: Vec<&LayerRef> = layers.iter().collect();
        image.rootfs.diff_ids = present
            .iter()
            .filter_map(|l| l.diff_id.as_ref().map(|d| d.to_string()))
            .collect();
        if let Some(kept) = previous.and_then(|name| self.same_image(name, &image)) {
            return Ok(kept);
        }
        let config_bytes = serde_json::to_vec(&image).map_err(|e| crate::Error::Invalid {
            what: "image config".into(),
            source: Box::new(e),
        })?;
        let config = self.content.put(&config_bytes, None)?;

        // OCI media types, BuildKit v0.32's default for every exporter (`oci-mediatypes=false`
        // derives a Docker schema 2 manifest from this one).
        let oci = true;
        let layer_type = |mt: &str| -> String {
            match (oci, media_type::layer_compression(mt)) {
                (false, Some(LayerCompression::Gzip)) => media_type::DOCKER_LAYER_GZIP.into(),
                (false, Some(LayerCompression::None)) => media_type::DOCKER_LAYER_TAR.into(),
                (true, Some(LayerCompression::Gzip)) => media_type::OCI_LAYER_GZIP.into(),
                (true, Some(LayerCompression::None)) => media_type::OCI_LAYER_TAR.into(),
                _ => mt.to_string(),
            }
        };
        let layer_descs: Vec<serde_json::Value> = present
            .iter()
            .map(|l| {
                serde_json::json!({
                    "mediaType": layer_type(&l.media_type),
                    "digest": l.blob.as_ref().map(|d| d.to_string()),
                    "size": l.size,
                })
            })
            .collect();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": if oci { media_type::OCI_MANIFEST } else { media_type::DOCKER_MANIFEST },
            "config": {
                "mediaType": if oci { media_type::OCI_CONFIG } else { media_type::DOCKER_CONFIG },
                "digest": config.to_string(),
                "size": config_bytes.len(),
            },
            "layers": layer_descs,
        });
        let manifest_bytes = serde_json::to_vec(&manifest).expect("json values serialise");
        let manifest = self.content.put(&manifest_bytes, None)?;
        Ok((manifest, config))
    }

    /// The (manifest, config) of the image `name` if its config equals `image` but for times.
    fn same_image(&self, name: &Reference, image: &ImageConfig) -> Option<(Digest, Digest)> {
        let record = self.images.get(name).ok()??;
        let old: ImageConfig =
            serde_json::from_slice(&self.content.read(&record.config).ok()?).ok()?;
        (without_times(&old) == without_times(image)).then_some((record.manifest, record.config))
    }
}

fn without_times(image: &ImageConfig) -> ImageConfig {
    let mut image = image.clone();
    image.created = None;
    for h in &mut image.history {
        h.created = None;
    }
    image
}
