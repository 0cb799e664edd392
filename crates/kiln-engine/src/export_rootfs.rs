//! `--output type=local` and `type=tar`: the target's final root filesystem, not an image.
//!
//! The chain is mounted as an overlay (so whiteouts and opaque directories are already
//! applied) and its merged view is streamed as a tar: into a file or standard output for `tar`,
//! or through a pipe into the extractor for `local`, so no copy of the tree is staged.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use kiln_progress::Vertex;
use kiln_worker::LayerRef;

use crate::output::{ExporterKind, Output};
use crate::{Engine, Error, Result, io};

impl Engine {
    /// Writes the root filesystem of `layers` where `output` (local or tar) says.
    pub(crate) async fn export_rootfs(
        &self,
        layers: &[LayerRef],
        output: &Output,
        v: &Vertex,
    ) -> Result<()> {
        let Some(dest) = output.dest.clone() else {
            return Err(Error::Usage(format!(
                "type={} needs dest=",
                output.kind.name()
            )));
        };
        let worker = self.worker(None);
        let step = worker.prepare(layers, v).await?;
        let rootfs = step.rootfs();
        let kind = output.kind;
        v.status(&format!("copying files to {}", dest.display()));
        tokio::task::spawn_blocking(move || match kind {
            ExporterKind::Local => write_dir(&rootfs, &dest),
            _ => write_tarball(&rootfs, &dest),
        })
        .await??;
        // Unmounted only now that nothing reads the merged view.
        drop(step);
        Ok(())
    }
}

/// `dest=-` is standard output.
fn write_tarball(rootfs: &Path, dest: &Path) -> Result<()> {
    if dest == Path::new("-") {
        let out = BufWriter::new(std::io::stdout().lock());
        let mut out = kiln_snapshot::write_tree_tar(rootfs, out)?;
        return out
            .flush()
            .map_err(io("writing the tar to standard output"));
    }
    let what = || format!("writing `{}`", dest.display());
    let file = std::fs::File::create(dest).map_err(io(what()))?;
    let result = (|| {
        let mut out = kiln_snapshot::write_tree_tar(rootfs, BufWriter::new(file))?;
        out.flush().map_err(io(what()))?;
        out.get_ref().sync_all().map_err(io(what()))
    })();
    if result.is_err() {
        // A truncated tarball must not pass for the output.
        let _ = std::fs::remove_file(dest);
    }
    result
}

/// Merges the tree into `dest` (created if missing), as BuildKit's local exporter does:
/// files already there and not in the image stay.
fn write_dir(rootfs: &Path, dest: &Path) -> Result<()> {
    std::fs::create_dir_all(dest).map_err(io(format!("creating `{}`", dest.display())))?;
    let (reader, writer) = std::io::pipe().map_err(io("creating a pipe"))?;
    let rootfs: PathBuf = rootfs.to_path_buf();
    std::thread::scope(|s| {
        let producer = s.spawn(move || {
            kiln_snapshot::write_tree_tar(&rootfs, BufWriter::with_capacity(256 * 1024, writer))
                .and_then(|mut w| {
                    w.flush().map_err(|source| kiln_snapshot::Error::Diff {
                        path: rootfs.clone(),
                        source,
                    })
                })
        });
        let mut reader = std::io::BufReader::with_capacity(256 * 1024, reader);
        let extracted = kiln_snapshot::extract_tar(&mut reader, dest).and_then(|()| {
            // The zero blocks after the end marker: the writer must not see a closed pipe.
            std::io::copy(&mut reader, &mut std::io::sink())
                .map(drop)
                .map_err(|source| kiln_snapshot::Error::ReadTar { source })
        });
        drop(reader);
        let produced = producer
            .join()
            .map_err(|_| Error::Usage("the tar writer thread panicked".into()))?;
        // The extractor's error explains a writer's broken pipe, so it comes first.
        extracted?;
        produced?;
        Ok(())
    })
}
