//! The image exporter's names: `-t` and `name=` in the local store, `name-canonical`
//! (`repo@digest` too), `push=true` / `type=registry` (by tag, or by digest only with
//! `push-by-digest`), and `unpack=true`.

use kiln_oci::{Digest, Reference};
use kiln_progress::{Progress, Vertex};
use kiln_worker::LayerRef;

use kiln_exporter::compress::ExportedImage;

use crate::build::BuildRequest;
use crate::output::{ExporterKind, Output};
use crate::{Engine, Error, Result};

/// Whether `output` puts the image in kiln's store (`type=docker` without a dest is `--load`).
pub(crate) fn stores_image(output: &Output) -> bool {
    matches!(output.kind, ExporterKind::Image | ExporterKind::Registry)
        || output.kind == ExporterKind::Docker && output.dest.is_none()
}

/// The names of one output: the build's `-t` tags, then its own `name=`, each once.
pub(crate) fn output_names(req: &BuildRequest, output: &Output) -> Result<Vec<Reference>> {
    let mut names: Vec<Reference> = req.tags.clone();
    for n in &output.names {
        let r: Reference = n.parse().map_err(|_| Error::Reference(n.clone()))?;
        if !names.contains(&r) {
            names.push(r);
        }
    }
    Ok(names)
}

/// `repo@digest` for `name`.
pub(crate) fn canonical(name: &Reference, manifest: &Digest) -> Result<Reference> {
    let s = format!("{}/{}@{manifest}", name.registry(), name.repository());
    s.parse().map_err(|_| Error::Reference(s))
}

impl Engine {
    /// Names, pushes and unpacks the image `manifest` for every output that stores it; returns
    /// every name given, in order, as buildx lists them in `image.name`, and the last manifest
    /// pushed (its layers compressed as the output asks).
    pub(crate) async fn export_names(
        &self,
        manifest: &Digest,
        layers: &[LayerRef],
        req: &BuildRequest,
        base_layers: usize,
        progress: &Progress,
        v: &Vertex,
    ) -> Result<(Vec<String>, Option<ExportedImage>)> {
        let default = [Output::new(ExporterKind::Image)];
        let outputs = if req.outputs.is_empty() {
            &default[..]
        } else {
            &req.outputs[..]
        };
        let mut all = Vec::new();
        let mut push = Vec::new();
        for output in outputs.iter().filter(|o| stores_image(o)) {
            let names = output_names(req, output)?;
            if output.push && names.is_empty() {
                // buildx's words.
                return Err(Error::Usage(
                    "tag is needed when pushing to registry".into(),
                ));
            }
            for name in &names {
                self.images.tag(name, manifest)?;
                v.status(&format!("naming to {} done", name.whole()));
                all.push(name.whole());
                if output.name_canonical {
                    let c = canonical(name, manifest)?;
                    self.images.tag(&c, manifest)?;
                    v.status(&format!("naming to {} done", c.whole()));
                    all.push(c.whole());
                }
                // By digest only (push-by-digest): the repository gets the manifest, no tag.
                let target = (name.clone(), output.push_by_digest);
                if output.push && !push.iter().any(|(t, _)| *t == target) {
                    let mut opts = output.export_opts(req.epoch());
                    opts.base_layers = base_layers;
                    push.push((target, opts));
                }
            }
            if output.unpack {
                v.status("unpacking layers");
                self.worker(None).materialize(layers, v).await?;
            }
        }
        let mut pushed = None;
        for ((name, by_digest), opts) in &push {
            pushed = Some(
                self.push_manifest_as(name, manifest, opts, *by_digest, progress)
                    .await?,
            );
        }
        let mut seen = std::collections::HashSet::new();
        all.retain(|n| seen.insert(n.clone()));
        Ok((all, pushed))
    }
}
