//! Cache mounts that travel with an exported cache (`--cache-to ...,cache-mounts=ID;ID|all`,
//! kiln's own: BuildKit never exports them). Each selected cache dir a RUN of the build has is
//! written as a tar (the layer serialiser's: entries sorted, owners, modes and mtimes kept),
//! compressed like the layers, and named in the cache config by the mount's identity; a dir
//! over `cache-mounts-max` is left out with a warning. The worker fills an absent or empty
//! cache dir from such a blob when a RUN first mounts it (kiln-worker, cachemount_import.rs).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use kiln_exporter::compress::{
    self, Compression, CompressionOpts, DEFAULT_GZIP_LEVEL, DEFAULT_ZSTD_LEVEL,
};
use kiln_llb::{NodeId, Op};
use kiln_progress::Progress;
use kiln_solver::Solved;
use kiln_worker::{LayerRef, LlbGraph, Value, cachemount};

use crate::cache_format::MountRecord;
use crate::cache_spec::CacheMounts;
use crate::{Engine, Result, io};

/// A cache mount of the build, as it would be exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BuildMount {
    pub id: String,
    /// `cachemount::identity`: what the cache config names it by.
    pub identity: String,
    /// Its dir under the data root (which may not exist: no RUN mounted it here).
    pub dir: PathBuf,
}

/// The cache mounts of the build's solved RUNs that `selected` names, each once, by identity.
/// A seeded cache (`from=`) is named with its seed's cache key, as the worker names its dir.
pub(crate) fn build_mounts(
    graph: &LlbGraph,
    solved: &[(usize, Solved<Value>)],
    selected: &CacheMounts,
    root: &Path,
) -> Vec<BuildMount> {
    let keys: HashMap<usize, &kiln_oci::Digest> =
        solved.iter().map(|(v, s)| (*v, &s.cache_key)).collect();
    let mut out: BTreeMap<String, BuildMount> = BTreeMap::new();
    for (vertex, _) in solved {
        let node = graph.def.node(NodeId(*vertex));
        let Op::Exec(exec) = &node.op else { continue };
        for c in exec.caches.iter().filter(|c| selected.includes(&c.id)) {
            let seed = match c.input {
                Some(i) => match node.inputs.get(i).and_then(|n| keys.get(&n.0)) {
                    Some(key) => Some(*key),
                    None => continue,
                },
                None => None,
            };
            let identity = cachemount::identity(c, seed);
            let dir = cachemount::dir_of(root, c, &identity);
            out.entry(identity.clone()).or_insert(BuildMount {
                id: c.id.clone(),
                identity,
                dir,
            });
        }
    }
    out.into_values().collect()
}

/// The bytes of the files under `dir` (symlinks not followed).
fn tree_size(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                todo.push(entry.path());
            } else {
                total += meta.len();
            }
        }
    }
    Ok(total)
}

impl Engine {
    /// The exported form of each build mount: its dir's tar, compressed, in the content store
    /// (the caller removes the blobs once written out). A dir over `max` bytes is a warning and
    /// left out. A dir absent here keeps what `imported` had for it (a RUN that hit the cache
    /// never mounted it), so re-exporting an imported cache does not lose its mounts.
    pub(crate) async fn export_cache_mounts(
        &self,
        mounts: &[BuildMount],
        imported: &HashMap<String, LayerRef>,
        max: u64,
        compression: &CompressionOpts,
        oci: bool,
        progress: &Progress,
    ) -> Result<(BTreeMap<String, MountRecord>, Vec<kiln_oci::Digest>)> {
        let mut records = BTreeMap::new();
        let mut made = Vec::new();
        for m in mounts {
            if !m.dir.is_dir() {
                if let Some(layer) = imported.get(&m.identity) {
                    let record = MountRecord {
                        id: m.id.clone(),
                        layer: layer.clone(),
                    };
                    records.insert(m.identity.clone(), record);
                }
                continue;
            }
            let dir = m.dir.clone();
            let size = tokio::task::spawn_blocking(move || tree_size(&dir))
                .await?
                .map_err(io(format!("measuring cache mount `{}`", m.id)))?;
            if size > max {
                progress.warn(format!(
                    "cache mount `{}` not exported: its files take {} bytes, over \
                     cache-mounts-max ({max} bytes)",
                    m.id, size
                ));
                continue;
            }
            let layer = self.tar_cache_mount(&m.dir, compression, oci).await?;
            made.extend(layer.blob.clone());
            let record = MountRecord {
                id: m.id.clone(),
                layer,
            };
            records.insert(m.identity.clone(), record);
        }
        Ok((records, made))
    }

    /// `dir` as a compressed tar blob in the content store, read under a shared lock (no
    /// `locked` or `private` step writes meanwhile). The tar streams through a pipe into the
    /// compressor, hashed on the way for its diff_id.
    async fn tar_cache_mount(
        &self,
        dir: &Path,
        compression: &CompressionOpts,
        oci: bool,
    ) -> Result<LayerRef> {
        let kind = compression.kind;
        let level = compression.level.unwrap_or(match kind {
            Compression::Zstd => DEFAULT_ZSTD_LEVEL,
            _ => DEFAULT_GZIP_LEVEL,
        });
        let (content, dir) = (self.content.clone(), dir.to_path_buf());
        tokio::task::spawn_blocking(move || -> Result<LayerRef> {
            let what = format!("exporting cache mount `{}`", dir.display());
            let _lock = cachemount::lock_shared(&dir).map_err(io(what.clone()))?;
            let (reader, writer) = std::io::pipe().map_err(io(what.clone()))?;
            let tar_dir = dir.clone();
            let tarring = std::thread::spawn(move || {
                let hashed = kiln_oci::Sha256Writer::new(writer);
                kiln_snapshot::write_tree_tar(&tar_dir, hashed).map(|w| w.finish().1)
            });
            let mut out = content.writer()?;
            let compressed = compress::compress(reader, &mut out, kind, level);
            let tarred = tarring
                .join()
                .map_err(|_| io(what.clone())(std::io::Error::other("the tar writer panicked")))?;
            // A failed compressor stops the tar with a broken pipe: its error is the cause.
            compressed.map_err(io(what))?;
            let diff_id = tarred?;
            let (blob, size) = out.commit(None)?;
            Ok(LayerRef {
                diff_id: Some(diff_id),
                blob: Some(blob),
                size,
                media_type: compress::layer_media_type(kind, oci).to_string(),
                source: None,
            })
        })
        .await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_size_counts_file_bytes_below() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/b/f"), [0u8; 1000]).unwrap();
        std::fs::write(dir.path().join("g"), [0u8; 24]).unwrap();
        assert_eq!(tree_size(dir.path()).unwrap(), 1024);
    }
}
