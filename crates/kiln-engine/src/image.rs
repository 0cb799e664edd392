//! Image commands around builds: import a rootfs tarball, tag, push.

use std::io::{BufReader, Read};
use std::path::PathBuf;

use futures::FutureExt;
use futures::future::BoxFuture;
use kiln_exporter::compress::{ExportOpts, ExportedImage};
use kiln_exporter::layercheck::LayerScan;
use kiln_frontend::{BoxError, BuildOpts, ImageResolver, ResolvedImage};
use kiln_oci::media_type::LayerCompression;
use kiln_oci::{Digest, History, ImageManifest, Platform, Reference};
use kiln_progress::Progress;
use kiln_worker::LayerRef;

use crate::{Engine, Error, Result, io};

#[derive(Debug, Clone)]
pub struct ImportRequest {
    /// A tar (plain or gzip) of a root filesystem.
    pub tarball: PathBuf,
    pub name: Reference,
    /// Dockerfile instructions applied to the config, as `docker import --change`.
    pub changes: Vec<String>,
    pub platform: Option<Platform>,
    /// Seconds since the epoch to write as the image's time (`SOURCE_DATE_EPOCH`).
    pub source_date_epoch: Option<i64>,
}

/// `--change` lines may not refer to other images.
struct NoImages;

impl ImageResolver for NoImages {
    fn resolve<'a>(
        &'a self,
        r: &'a Reference,
        _: &'a Platform,
    ) -> BoxFuture<'a, std::result::Result<ResolvedImage, BoxError>> {
        let msg = format!("`{}`: --change cannot use other images", r.whole());
        async move { Err(msg.into()) }.boxed()
    }
}

impl Engine {
    /// Creates a one-layer image from a rootfs tarball, like `docker import`.
    pub async fn import(&self, req: ImportRequest) -> Result<Digest> {
        let platform = req.platform.clone().unwrap_or_else(Platform::host);
        let dockerfile = format!("FROM scratch\n{}\n", req.changes.join("\n"));
        let opts = BuildOpts {
            dockerfile_name: "--change".into(),
            build_args: Default::default(),
            target: None,
            platform: platform.clone(),
            excludes: Vec::new(),
            created: crate::build::created_time(req.source_date_epoch),
            no_cache_filter: Vec::new(),
            named_contexts: Default::default(),
            multi_platform: false,
            run: Default::default(),
        };
        let converted = kiln_frontend::convert(&dockerfile, &opts, &NoImages).await?;
        let mut image = converted.image;
        image.history.insert(
            0,
            History {
                created: Some(opts.created.clone()),
                created_by: Some(format!("kiln import {}", req.tarball.display())),
                comment: Some("imported".into()),
                ..Default::default()
            },
        );

        let content = self.content.clone();
        let tarball = req.tarball.clone();
        let layer = tokio::task::spawn_blocking(move || -> Result<LayerRef> {
            let what = format!("reading `{}`", tarball.display());
            let file = std::fs::File::open(&tarball).map_err(io(what.clone()))?;
            let mut reader = BufReader::new(file);
            let mut magic = [0u8; 2];
            let peeked = reader.fill_buf_peek(&mut magic).map_err(io(what.clone()))?;
            let mut input: Box<dyn Read> = if peeked == 2 && magic == [0x1f, 0x8b] {
                Box::new(flate2::read::MultiGzDecoder::new(reader))
            } else {
                Box::new(reader)
            };
            // Stored uncompressed like a build step's layer: the blob digest is the diffID.
            // Checked on the way in: a tarball the layer applier would refuse is not stored.
            let mut blob = std::io::BufWriter::new(content.writer()?);
            let scan = kiln_exporter::layercheck::copy_checking_layer(&mut input, &mut blob)
                .map_err(io(what.clone()))?;
            let refused = |source| Error::RefusedImport {
                path: tarball.clone(),
                source: Box::new(source),
            };
            match scan {
                LayerScan::Layer {
                    compression: LayerCompression::None,
                    ..
                } => {}
                LayerScan::Layer { .. } => {
                    return Err(Error::Unsupported(format!(
                        "`{}` is zstd-compressed: import takes a plain or gzip tar",
                        tarball.display()
                    )));
                }
                LayerScan::Refused(source) => return Err(refused(source)),
            }
            let blob = blob.into_inner().map_err(|e| io(what)(e.into_error()))?;
            let (digest, size) = blob.commit(None)?;
            Ok(LayerRef {
                diff_id: Some(digest.clone()),
                blob: Some(digest),
                size,
                media_type: kiln_oci::media_type::DOCKER_LAYER_TAR.into(),
                source: None,
            })
        })
        .await??;
        let (manifest, _) = self.write_image(&[layer], image, None)?;
        self.images.tag(&req.name, &manifest)?;
        Ok(manifest)
    }

    /// Pulls an image for this machine's platform into the local store, as `docker pull`.
    pub async fn pull(&self, name: &Reference, progress: &Progress) -> Result<Digest> {
        self.pull_platform(name, &Platform::host(), progress).await
    }

    /// Downloads `platform`'s image where `name` is an index (`kiln pull --platform`).
    pub async fn pull_platform(
        &self,
        name: &Reference,
        platform: &Platform,
        progress: &Progress,
    ) -> Result<Digest> {
        let v = progress.vertex(format!("pulling {}", name.whole()));
        let r = self.registry.resolve(name, platform).await?;
        self.content.put(&r.manifest_bytes, Some(&r.digest))?;
        self.content.put(&r.config_bytes, None)?;
        let pinned = crate::resolver::pin(name, &r.digest);
        let worker = self.worker(None);
        let layers = worker.image(&pinned).await?;
        self.fetch_missing_blobs(layers.layers(), &v).await?;
        // Extracted now, as `docker pull` does, so that the first RUN or `kiln run` on it does
        // not wait for it (a build's own FROM extracts when a step first needs the rootfs).
        worker.materialize(layers.layers(), &v).await?;
        self.images.tag(name, &r.digest)?;
        v.status(&format!("digest: {}", r.digest));
        v.done();
        Ok(r.digest)
    }

    /// Gives the image `src` another name.
    pub fn tag(&self, src: &str, dst: &Reference) -> Result<()> {
        // By name or by ID, as `docker tag` takes either.
        let found = self.find_image(src)?;
        // A name of several platforms' images: the new name gets the whole index.
        let record = match &found.by_name {
            Some(n) => found.records.iter().find(|r| &r.name == n),
            None => found.records.first(),
        };
        let target = record
            .and_then(|r| r.index.clone())
            .unwrap_or_else(|| found.manifest.clone());
        self.images.tag(dst, &target)?;
        Ok(())
    }

    /// The manifest of a local image.
    pub(crate) fn local_manifest(
        &self,
        name: &Reference,
    ) -> Result<(Digest, ImageManifest, Vec<u8>)> {
        let record = self
            .images
            .get(name)?
            .ok_or_else(|| Error::NoSuchImage(name.whole()))?;
        let bytes = self.content.read(&record.manifest)?;
        let manifest: ImageManifest =
            serde_json::from_slice(&bytes).map_err(|e| Error::Invalid {
                what: format!("manifest of `{}`", name.whole()),
                source: Box::new(e),
            })?;
        Ok((record.manifest, manifest, bytes))
    }

    /// Pushes a local image to its registry with gzip layers and OCI media types, as a build's
    /// push makes them (`kiln push`); see [`Engine::push_with`].
    pub async fn push(&self, name: &Reference, progress: &Progress) -> Result<Digest> {
        let opts = ExportOpts {
            oci: true,
            ..ExportOpts::default()
        };
        Ok(self.push_with(name, &opts, progress).await?.manifest)
    }

    /// Pushes a local image to its registry as `opts` exports it; see
    /// [`Engine::push_manifest_as`]. Returns the pushed manifest.
    pub async fn push_with(
        &self,
        name: &Reference,
        opts: &ExportOpts,
        progress: &Progress,
    ) -> Result<ExportedImage> {
        let record = self
            .images
            .get(name)?
            .ok_or_else(|| Error::NoSuchImage(name.whole()))?;
        if record.index.is_some() {
            // Every platform's manifest by digest, then the index under the tag, last.
            let mut pushed = Vec::new();
            let platforms = self.images.platforms(&record)?;
            for (platform, manifest) in &platforms {
                let e = self
                    .push_manifest_as(name, manifest, opts, true, progress)
                    .await?;
                pushed.push((e.manifest, e.media_type, e.size, platform));
            }
            let (index, size, media_type) = self.write_index(&pushed)?;
            let bytes = self.content.read(&index)?;
            let v = progress.vertex(format!("pushing {}", name.whole()));
            let digest = self
                .registry
                .push_manifest(name, media_type, &bytes)
                .await?;
            v.status(&format!(
                "pushing manifest list for {}@{digest} done",
                name.whole()
            ));
            v.done();
            return Ok(ExportedImage {
                manifest: digest,
                size,
                media_type: media_type.to_string(),
                config: record.config,
            });
        }
        let (local, _, _) = self.local_manifest(name)?;
        self.push_manifest_as(name, &local, opts, false, progress)
            .await
    }

    /// Pushes the local manifest `local` under `name` as `opts` exports it (layers compressed
    /// once and reused by later pushes): the blobs the registry lacks, in parallel (the client
    /// bounds uploads per registry), mounted from another repository of the registry when a
    /// local image of that repository holds them; the manifest last, only once every blob is
    /// there, by tag, or by its digest only with `by_digest` (`push-by-digest`).
    pub(crate) async fn push_manifest_as(
        &self,
        name: &Reference,
        local: &Digest,
        opts: &ExportOpts,
        by_digest: bool,
        progress: &Progress,
    ) -> Result<ExportedImage> {
        // By digest, the name is known once the manifest is; the blobs go to its repository.
        let v = progress.vertex(format!(
            "pushing {}",
            if by_digest {
                format!("{}/{}", name.registry(), name.repository())
            } else {
                name.whole()
            }
        ));
        // Layers not compressed yet go up as they are compressed; the rest as below.
        let streamed = self.push_pending_layers(name, local, opts, &v).await?;
        let mut exported = self.exported_manifest(local, opts).await?;
        let name = &if by_digest {
            crate::export_names::canonical(name, &exported.manifest)?
        } else {
            name.clone()
        };
        let bytes = self.content.read(&exported.manifest)?;
        let manifest: ImageManifest =
            serde_json::from_slice(&bytes).map_err(|e| Error::Invalid {
                what: format!("manifest of `{}`", name.whole()),
                source: Box::new(e),
            })?;
        let mut blobs = vec![manifest.config().clone()];
        blobs.extend(manifest.layers().iter().cloned());
        blobs.retain(|d| !streamed.contains(d.digest()));
        self.remember_mount_sources(name, &blobs)?;
        let mut pushes = Vec::new();
        for desc in &blobs {
            let path = self.content.path(desc.digest());
            if !path.exists() {
                return Err(Error::Content(kiln_content::Error::NotFound(
                    desc.digest().clone(),
                )));
            }
            let v = &v;
            pushes.push(async move {
                let pushed = self
                    .registry
                    .push_blob(name, desc.digest(), desc.size(), &path)
                    .await?;
                let what = crate::push_stream::push_status(pushed);
                v.status(&format!("{}: {what}", desc.digest()));
                Ok::<_, Error>(())
            });
        }
        futures::future::try_join_all(pushes).await?;
        let media_type = manifest
            .media_type()
            .as_ref()
            .map(|m| m.to_string())
            .unwrap_or_else(|| kiln_oci::media_type::OCI_MANIFEST.to_string());
        let digest = self
            .registry
            .push_manifest(name, &media_type, &bytes)
            .await?;
        // By digest, the name already ends in `@digest`.
        let shown = if by_digest {
            name.whole()
        } else {
            format!("{}@{digest}", name.whole())
        };
        v.status(&format!("pushing manifest for {shown} done"));
        v.done();
        exported.manifest = digest;
        Ok(exported)
    }
}

impl Engine {
    /// Tells the registry client which repositories of `name`'s registry hold each blob, from
    /// the local images named there (pulled from or pushed to it), so pushes can mount.
    fn remember_mount_sources(
        &self,
        name: &Reference,
        blobs: &[kiln_oci::Descriptor],
    ) -> Result<()> {
        for record in self.images.list()? {
            if record.name.registry() != name.registry()
                || record.name.repository() == name.repository()
            {
                continue;
            }
            let Ok(bytes) = self.content.read(&record.manifest) else {
                continue;
            };
            let Ok(other) = serde_json::from_slice::<ImageManifest>(&bytes) else {
                continue;
            };
            // Its layers as a push of it may have compressed them.
            let variants: Vec<Digest> = other
                .layers()
                .iter()
                .flat_map(|l| self.variants.blobs_of(l.digest()))
                .collect();
            for desc in blobs {
                let held = other.config().digest() == desc.digest()
                    || other.layers().iter().any(|l| l.digest() == desc.digest())
                    || variants.contains(desc.digest());
                if held {
                    self.registry.remember_blob(&record.name, desc.digest());
                }
            }
        }
        Ok(())
    }
}

/// Peeks at the first bytes of a buffered reader without consuming them.
trait PeekExt {
    fn fill_buf_peek(&mut self, out: &mut [u8]) -> std::io::Result<usize>;
}

impl<R: Read> PeekExt for BufReader<R> {
    fn fill_buf_peek(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let buf = std::io::BufRead::fill_buf(self)?;
        let n = buf.len().min(out.len());
        out[..n].copy_from_slice(&buf[..n]);
        Ok(n)
    }
}
