//! Cache mounts from an imported cache (`--cache-from` of a cache exported with
//! `cache-mounts=`): the first time a build mounts a cache whose local dir is absent or empty,
//! the dir is filled from the imported blob (a tar, compressed like a layer) before the RUN
//! starts. Nothing is fetched for a cache mount no RUN mounts, nor for one that has contents.

use std::fs;
use std::path::Path;

use kiln_llb::CacheMount;
use kiln_progress::Vertex;
use rustix::fs::FlockOperation;

use crate::cachemount::{make_cache_dir, still_named};
use crate::{LayerRef, LlbWorker, Result, io};

impl LlbWorker {
    /// Whether the cache mount `identity` is to be filled from an import: only the first time
    /// this build mounts it, so a RUN that empties its cache does not see it refilled.
    pub(crate) fn imported_mount(&self, identity: &str) -> Option<&LayerRef> {
        let layer = self.imported_mounts.get(identity)?;
        self.mounts_considered
            .lock()
            .insert(identity.to_string())
            .then_some(layer)
    }

    /// [`Self::unpack_imported_mount`], or when that fails (the cache's blob is gone, corrupt,
    /// or refused by the applier) a status line saying so and `false`, with `tmp` removed: a
    /// cache mount is only ever a speed-up, so the RUN goes on as without the import.
    pub(crate) async fn try_unpack_imported_mount(
        &self,
        tmp: &Path,
        c: &CacheMount,
        layer: &LayerRef,
        progress: &Vertex,
    ) -> bool {
        match self.unpack_imported_mount(tmp, c, layer, progress).await {
            Ok(()) => true,
            Err(e) => {
                let _ = fs::remove_dir_all(tmp);
                let mut why = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    why.push_str(&format!(": {s}"));
                    source = s.source();
                }
                progress.status(&format!(
                    "cache mount {} not imported ({why}): it starts as without the import",
                    c.id
                ));
                false
            }
        }
    }

    /// Makes `tmp` the cache dir with the imported contents: created with the mount's mode and
    /// owner, then the tar extracted into it with the layer applier's rules (nothing written
    /// outside it or through a symlink). The blob is fetched from the cache, checked against
    /// its digest, and dropped from the content store once unpacked.
    pub(crate) async fn unpack_imported_mount(
        &self,
        tmp: &Path,
        c: &CacheMount,
        layer: &LayerRef,
        progress: &Vertex,
    ) -> Result<()> {
        let Some(blob) = layer.blob.clone() else {
            return make_cache_dir(tmp, c).map_err(io(format!("creating `{}`", tmp.display())));
        };
        progress.status(&format!("importing cache mount {} ({blob})", c.id));
        let fetched = !self.content.contains(&blob);
        if fetched {
            crate::fetch_layer_blob(
                &self.registry,
                &self.blob_stores,
                &self.content,
                layer,
                &blob,
            )
            .await?;
        }
        let (content, tmp2, c2, blob2) = (
            self.content.clone(),
            tmp.to_path_buf(),
            c.clone(),
            blob.clone(),
        );
        let unpacked = tokio::task::spawn_blocking(move || -> Result<()> {
            make_cache_dir(&tmp2, &c2).map_err(io(format!("creating `{}`", tmp2.display())))?;
            let file = content.open_blob(&blob2)?;
            let mut head = [0u8; 6];
            let n = std::os::unix::fs::FileExt::read_at(&file, &mut head, 0)
                .map_err(io(format!("reading cache mount blob {blob2}")))?;
            let kind = kiln_snapshot::archive::compression_of(&head[..n]);
            let reader = kiln_snapshot::archive::decompress(Box::new(file), kind);
            kiln_snapshot::extract_tar(reader, &tmp2)?;
            Ok(())
        })
        .await?;
        if fetched {
            // Only the unpacked dir is kept: the blob would be a second copy nothing uses.
            let _ = self.content.delete(&blob);
        }
        unpacked
    }

    /// An existing but empty cache dir takes the imported contents: built aside, then renamed
    /// over the empty dir while no step holds it (a step using it keeps it as it is).
    pub(crate) async fn fill_empty_cache_dir(
        &self,
        root: &Path,
        dir: &Path,
        c: &CacheMount,
        layer: &LayerRef,
        progress: &Vertex,
    ) -> Result<()> {
        if !is_empty_dir(dir) {
            return Ok(());
        }
        let tmp = root.join(format!(".new-{:016x}", rand::random::<u64>()));
        if !self
            .try_unpack_imported_mount(&tmp, c, layer, progress)
            .await
        {
            return Ok(());
        }
        let replaced = fs::File::open(dir).ok().is_some_and(|held| {
            rustix::fs::flock(&held, FlockOperation::NonBlockingLockExclusive).is_ok()
                && still_named(&held, dir)
                && is_empty_dir(dir)
                && fs::rename(&tmp, dir).is_ok()
        });
        if !replaced {
            let _ = fs::remove_dir_all(&tmp);
        }
        Ok(())
    }
}

fn is_empty_dir(dir: &Path) -> bool {
    fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_none())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_empty_dir_counts_as_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert!(is_empty_dir(dir.path()));
        fs::write(dir.path().join("f"), b"x").unwrap();
        assert!(!is_empty_dir(dir.path()));
        assert!(!is_empty_dir(&dir.path().join("missing")));
    }
}
