//! A step's root filesystem: an overlay over its input chain, committed into the next layer.

use super::*;

impl LlbWorker {
    /// Mounts `layers` with a fresh upper dir for a step.
    pub async fn prepare(&self, layers: &[LayerRef], progress: &Vertex) -> Result<Step> {
        let lowers = self.materialize(layers, progress).await?;
        self.mount_step(&lowers, layers.to_vec())
    }

    /// An overlay with a fresh upper dir over plain directories (topmost first).
    pub(crate) fn overlay(&self, lowers: &[PathBuf]) -> Result<Step> {
        self.mount_step(lowers, Vec::new())
    }

    /// A step directory with its overlay of `lowers` mounted; `layers` is the chain they are.
    pub(crate) fn mount_step(&self, lowers: &[PathBuf], layers: Vec<LayerRef>) -> Result<Step> {
        let dir = self
            .scratch
            .join(format!("step-{:016x}", rand::random::<u64>()));
        let (upper, work, merged) = (dir.join("upper"), dir.join("work"), dir.join("merged"));
        for d in [&upper, &work, &merged] {
            fs::create_dir_all(d).map_err(io(format!("creating `{}`", d.display())))?;
        }
        let mut step = Step {
            dir,
            mount: None,
            layers,
        };
        step.mount = Some(mount_scratch_overlay(lowers, &upper, &work, &merged)?);
        Ok(step)
    }

    /// Unmounts the step and turns its upper dir into the next layer of the chain.
    pub(crate) async fn commit(&self, mut step: Step) -> Result<Value> {
        if let Some(m) = step.mount.take() {
            m.unmount()?;
        }
        let upper = step.dir.join("upper");
        let lowers: Vec<PathBuf> = step
            .layers
            .iter()
            .rev()
            .filter_map(|l| l.diff_id.as_ref().map(|d| self.layers.dir(d)))
            .collect();
        fsutil::prune_unchanged_dirs(&upper, &lowers).map_err(io("reading the step's changes"))?;
        let empty = fs::read_dir(&upper)
            .map_err(io("reading the step's changes"))?
            .next()
            .is_none();
        let mut layers = std::mem::take(&mut step.layers);
        if empty {
            layers.push(LayerRef {
                diff_id: None,
                blob: None,
                size: 0,
                media_type: String::new(),
                source: None,
            });
        } else {
            let (store, content) = (self.layers.clone(), self.content.clone());
            // The step's overlay was volatile: the layer must reach the disk before it is kept.
            let blob = tokio::task::spawn_blocking(move || {
                sync_filesystem(&upper)?;
                store.commit_upper(&upper, &content, Compression::Uncompressed)
            })
            .await??;
            layers.push(LayerRef {
                diff_id: Some(blob.diff_id),
                blob: Some(blob.digest),
                size: blob.size,
                media_type: blob.media_type,
                source: None,
            });
        }
        Ok(Value::Rootfs { layers })
    }
}

/// A mounted root filesystem with a private upper dir (a build step's or a container's);
/// dropping it unmounts and removes it, so a cancelled build leaves nothing behind.
pub struct Step {
    pub(crate) dir: PathBuf,
    pub(crate) mount: Option<OverlayMount>,
    pub(crate) layers: Vec<LayerRef>,
}

impl Step {
    /// The merged view: the container's root.
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("merged")
    }
}

impl Drop for Step {
    fn drop(&mut self) {
        drop(self.mount.take());
        let _ = fs::remove_dir_all(&self.dir);
    }
}
