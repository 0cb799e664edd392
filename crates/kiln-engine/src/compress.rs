//! What exports ask of the compressed-blob cache (`kiln_exporter::compress`): options from an
//! `--output`, and exported manifests derived off the async runtime.

use kiln_exporter::compress::{self, Compression, CompressionOpts, ExportOpts, ExportedImage};
use kiln_oci::Digest;

use crate::build::BuildRequest;
use crate::output::{AnnotationTarget, LayerCompressionKind, Output};
use crate::{Engine, Result};

impl Output {
    /// The export options of this output; `source_date_epoch` is what `rewrite-timestamp`
    /// clamps to (without one it does nothing, as in BuildKit).
    pub fn export_opts(&self, source_date_epoch: Option<i64>) -> ExportOpts {
        let kind = match self.compression {
            None | Some(LayerCompressionKind::Gzip) => Compression::Gzip,
            Some(LayerCompressionKind::Uncompressed) => Compression::Uncompressed,
            Some(LayerCompressionKind::Zstd) => Compression::Zstd,
        };
        ExportOpts {
            compression: CompressionOpts {
                kind,
                level: self.compression_level,
                force: self.force_compression,
            },
            // BuildKit v0.32: OCI media types by default, for every exporter.
            oci: self.oci_mediatypes.unwrap_or(true),
            rewrite_timestamp: source_date_epoch.filter(|_| self.rewrite_timestamp),
            // Set by the build, which knows its base image.
            base_layers: 0,
            manifest_annotations: self
                .annotations
                .iter()
                .filter(|a| a.target == AnnotationTarget::Manifest && a.platform.is_none())
                .map(|a| (a.key.clone(), a.value.clone()))
                .collect(),
        }
    }
}

impl BuildRequest {
    /// `SOURCE_DATE_EPOCH`: the build argument when given (buildx passes the environment
    /// variable as one), else the caller's value.
    pub fn epoch(&self) -> Option<i64> {
        self.build_args
            .get("SOURCE_DATE_EPOCH")
            .and_then(|v| v.trim().parse().ok())
            .or(self.source_date_epoch)
    }
}

impl Engine {
    /// The manifest `opts` asks for, derived from the local image `manifest`; compresses the
    /// layers that have no blob of that kind yet (on blocking threads, in parallel).
    pub(crate) async fn exported_manifest(
        &self,
        manifest: &Digest,
        opts: &ExportOpts,
    ) -> Result<ExportedImage> {
        let (content, variants) = (self.content.clone(), self.variants.clone());
        let (manifest, opts) = (manifest.clone(), opts.clone());
        Ok(tokio::task::spawn_blocking(move || {
            compress::export_image(&content, &variants, &manifest, &opts)
        })
        .await??)
    }

    /// [`Engine::exported_manifest`] for callers off the runtime (`kiln save`); an index (a
    /// loaded multi-platform image) is kept as it is.
    pub(crate) fn exported_manifest_blocking(
        &self,
        manifest: &Digest,
        opts: &ExportOpts,
    ) -> Result<Digest> {
        match compress::export_image(&self.content, &self.variants, manifest, opts) {
            Ok(e) => Ok(e.manifest),
            Err(kiln_exporter::Error::NotAManifest { .. }) => Ok(manifest.clone()),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_options_map_to_export_options() {
        let o = Output::parse("type=oci,dest=a").unwrap();
        let e = o.export_opts(Some(5));
        assert!(e.oci);
        assert_eq!(e.compression, CompressionOpts::default());
        assert_eq!(e.rewrite_timestamp, None);
        let o = Output::parse(
            "type=docker,dest=a,compression=zstd,compression-level=9,force-compression=true,rewrite-timestamp=true,annotation.k=v,oci-mediatypes=false",
        )
        .unwrap();
        let e = o.export_opts(Some(5));
        assert_eq!(
            e.compression,
            CompressionOpts {
                kind: Compression::Zstd,
                level: Some(9),
                force: true
            }
        );
        assert!(!e.oci);
        assert_eq!(e.rewrite_timestamp, Some(5));
        assert_eq!(e.manifest_annotations["k"], "v");
        assert_eq!(o.export_opts(None).rewrite_timestamp, None);
    }
}
