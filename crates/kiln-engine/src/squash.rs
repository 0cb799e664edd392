//! `kiln build --squash`, the classic builder's flag (BuildKit never had it): the layers the
//! final stage adds on top of its base are merged into one, as `docker build --squash` does.
//! The stage's history entries are kept, all marked `empty_layer`, and one entry is added for
//! the merged layer, with docker's comment (`merge <image ID> to <base>`, or
//! `create new from <image ID>` over `scratch`), where the image ID is the unsquashed one's.

use std::io::Read;

use kiln_oci::media_type::{self, LayerCompression};
use kiln_oci::{History, ImageConfig};
use kiln_progress::Progress;
use kiln_worker::{LayerRef, Value};

use crate::{Engine, Error, Result};

impl Engine {
    /// The image with the layers above its first `base_history` history entries merged.
    pub(crate) async fn squash(
        &self,
        value: &Value,
        mut image: ImageConfig,
        base: &str,
        base_history: usize,
        progress: &Progress,
    ) -> Result<(Value, ImageConfig)> {
        let layers = value.layers();
        // History entries with a layer line up with the chain, as the exporter writes them.
        let base_layers = image.history[..base_history.min(image.history.len())]
            .iter()
            .filter(|h| !h.empty_layer)
            .count();
        if base_layers > layers.len() {
            return Err(Error::Unsupported(
                "`--squash`: the base image's history does not line up with its layers".into(),
            ));
        }
        let tail: Vec<&LayerRef> = layers[base_layers..]
            .iter()
            .filter(|l| l.diff_id.is_some())
            .collect();
        if tail.is_empty() {
            return Ok((value.clone(), image));
        }
        let v = progress.vertex("squashing layers");
        let tail_owned: Vec<LayerRef> = tail.iter().map(|l| (*l).clone()).collect();
        self.fetch_missing_blobs(&tail_owned, &v).await?;
        let (_, unsquashed) = self.write_image(layers, image.clone(), None)?;

        let content = &self.content;
        let open = |i: usize| -> kiln_snapshot::Result<Box<dyn Read>> {
            let layer = &tail[i];
            let blob = layer
                .blob
                .as_ref()
                .or(layer.diff_id.as_ref())
                .expect("a layer");
            let file = content
                .open_blob(blob)
                .map_err(|source| kiln_snapshot::Error::Content { source })?;
            Ok(match media_type::layer_compression(&layer.media_type) {
                Some(LayerCompression::Gzip) => Box::new(flate2::read::MultiGzDecoder::new(file)),
                Some(LayerCompression::None) | None => Box::new(file),
                Some(_) => {
                    return Err(kiln_snapshot::Error::MediaType(layer.media_type.clone()));
                }
            })
        };
        let writer = content.writer()?;
        let writer = kiln_snapshot::squash_layers(tail.len(), open, writer)?;
        let (digest, size) = writer.commit(None)?;
        v.done();

        let mut squashed: Vec<LayerRef> = layers[..base_layers].to_vec();
        squashed.push(LayerRef {
            diff_id: Some(digest.clone()),
            blob: Some(digest),
            size,
            media_type: media_type::OCI_LAYER_TAR.to_string(),
            source: None,
        });
        let created = image
            .history
            .last()
            .and_then(|h| h.created.clone())
            .or_else(|| image.created.clone());
        for h in image.history.iter_mut().skip(base_history) {
            h.empty_layer = true;
        }
        let comment = if base == "scratch" {
            format!("create new from {unsquashed}")
        } else {
            format!("merge {unsquashed} to {base}")
        };
        image.history.push(History {
            created,
            comment: Some(comment),
            ..Default::default()
        });
        Ok((Value::Rootfs { layers: squashed }, image))
    }
}
