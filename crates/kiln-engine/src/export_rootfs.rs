//! `--output type=local` and `type=tar`: the target's final root filesystem, not an image.
//!
//! The chain is mounted as an overlay (so whiteouts and opaque directories are already
//! applied) and its merged view is streamed as a tar: into a file or standard output for `tar`,
//! or through a pipe into the extractor for `local`, so no copy of the tree is staged.

use std::collections::HashMap;
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
        tokio::task::spawn_blocking(move || {
            write_to_dest(&dest, kind == ExporterKind::Local, |out| {
                kiln_snapshot::write_tree_tar(&rootfs, out)?;
                Ok(())
            })
        })
        .await??;
        // Unmounted only now that nothing reads the merged view.
        drop(step);
        Ok(())
    }
}

impl Engine {
    /// `type=local|tar` of a multi-platform build: each platform's root filesystem under its
    /// own directory (`linux_amd64/`, `linux_arm_v7/`), as buildx's default `platform-split`.
    pub(crate) async fn export_rootfs_split(
        &self,
        trees: &[(String, &[LayerRef])],
        output: &Output,
        v: &Vertex,
    ) -> Result<()> {
        let Some(dest) = output.dest.clone() else {
            return Err(Error::Usage(format!(
                "type={} needs dest=",
                output.kind.name()
            )));
        };
        if output.kind == ExporterKind::Local && dest != Path::new("-") {
            for (dir, layers) in trees {
                let mut one = output.clone();
                one.dest = Some(dest.join(dir));
                self.export_rootfs(layers, &one, v).await?;
            }
            return Ok(());
        }
        // One tar: every platform's overlay mounted while it is written.
        let worker = self.worker(None);
        let mut steps = Vec::new();
        for (dir, layers) in trees {
            let step = worker.prepare(layers, v).await?;
            steps.push((step.rootfs(), dir.clone(), step));
        }
        let roots: Vec<(std::path::PathBuf, String)> = steps
            .iter()
            .map(|(root, dir, _)| (root.clone(), dir.clone()))
            .collect();
        v.status(&format!("copying files to {}", dest.display()));
        let as_dir = output.kind == ExporterKind::Local;
        tokio::task::spawn_blocking(move || {
            write_to_dest(&dest, as_dir, |out| {
                kiln_snapshot::write_trees_tar(&roots, out)?;
                Ok(())
            })
        })
        .await??;
        drop(steps);
        Ok(())
    }
}

impl Engine {
    /// `type=local,platform-split=false` of a multi-platform build: every platform's root
    /// filesystem merged into `dest`, as BuildKit's local exporter merges them: directories
    /// merge, and any other path (file, link, device) that two platforms have is an error
    /// naming both, even with the same content. `trees` are (platform, layers); all of them are
    /// checked before anything is written (BuildKit may have written some already).
    pub(crate) async fn export_rootfs_merged(
        &self,
        trees: &[(String, &[LayerRef])],
        output: &Output,
        v: &Vertex,
    ) -> Result<()> {
        let dest = match output.dest.clone() {
            Some(d) if d != Path::new("-") => d,
            Some(_) => {
                return Err(Error::Unsupported(
                    "--output type=local,dest=-,platform-split=false for several platforms is \
                     not supported yet"
                        .into(),
                ));
            }
            None => return Err(Error::Usage("type=local needs dest=".into())),
        };
        let worker = self.worker(None);
        let mut steps = Vec::new();
        for (platform, layers) in trees {
            let step = worker.prepare(layers, v).await?;
            steps.push((step.rootfs(), platform.clone(), step));
        }
        let roots: Vec<(PathBuf, String)> = steps
            .iter()
            .map(|(root, platform, _)| (root.clone(), platform.clone()))
            .collect();
        v.status(&format!("copying files to {}", dest.display()));
        tokio::task::spawn_blocking(move || {
            let mut owner: HashMap<PathBuf, &str> = HashMap::new();
            for (root, platform) in &roots {
                let paths = non_dir_paths(root)
                    .map_err(io(format!("reading the {platform} root filesystem")))?;
                for path in paths {
                    if let Some(first) = owner.insert(path.clone(), platform) {
                        // BuildKit's words.
                        return Err(Error::Usage(format!(
                            "cannot overwrite {} from {first} with {platform} when split option \
                             is disabled",
                            path.display()
                        )));
                    }
                }
            }
            for (root, _) in &roots {
                write_to_dest(&dest, true, |out| {
                    kiln_snapshot::write_tree_tar(root, out)?;
                    Ok(())
                })?;
            }
            Ok(())
        })
        .await??;
        drop(steps);
        Ok(())
    }
}

/// The paths under `root` that are not directories (files, symlinks, devices, fifos), relative
/// to it; symlinks are not followed.
fn non_dir_paths(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut dirs = vec![PathBuf::new()];
    while let Some(rel) = dirs.pop() {
        for entry in std::fs::read_dir(root.join(&rel))? {
            let entry = entry?;
            let path = rel.join(entry.file_name());
            if entry.file_type()?.is_dir() {
                dirs.push(path);
            } else {
                out.push(path);
            }
        }
    }
    Ok(out)
}

/// `linux/arm/v7` → `linux_arm_v7`: a platform's directory in a split rootfs export.
pub(crate) fn platform_dir(p: &kiln_oci::Platform) -> String {
    p.to_string().replace('/', "_")
}

/// Runs `produce` (a tar writer) into `dest`: standard output for `-`, the directory `dest`
/// when `as_dir` (the tar extracted as it streams, merged with what is there, as BuildKit's
/// local and `tar=false` exporters do), else the file `dest`, replaced only once complete (a
/// failed or killed export leaves the old file; see `atomic_file`).
pub(crate) fn write_to_dest(
    dest: &Path,
    as_dir: bool,
    produce: impl FnOnce(&mut dyn Write) -> Result<()> + Send,
) -> Result<()> {
    if dest == Path::new("-") {
        let mut out = BufWriter::new(std::io::stdout().lock());
        produce(&mut out)?;
        return out.flush().map_err(io("writing to standard output"));
    }
    if as_dir {
        return write_dir(dest, produce);
    }
    crate::atomic_file::write_file_atomically(dest, produce)
}

fn write_dir(dest: &Path, produce: impl FnOnce(&mut dyn Write) -> Result<()> + Send) -> Result<()> {
    std::fs::create_dir_all(dest).map_err(io(format!("creating `{}`", dest.display())))?;
    let (reader, writer) = std::io::pipe().map_err(io("creating a pipe"))?;
    std::thread::scope(|s| {
        let producer = s.spawn(move || {
            let mut out = BufWriter::with_capacity(256 * 1024, writer);
            produce(&mut out)?;
            out.flush().map_err(io("writing to the extractor"))
        });
        let mut reader = std::io::BufReader::with_capacity(256 * 1024, reader);
        let extracted = kiln_snapshot::extract_tar(&mut reader, dest).and_then(|()| {
            // The zero blocks after the end marker: the writer must not see a closed pipe.
            std::io::copy(&mut reader, &mut std::io::sink())
                .map(drop)
                .map_err(|source| kiln_snapshot::Error::ReadTar { source })
        });
        // Closing the pipe stops a writer the extractor gave up on.
        drop(reader);
        let produced = producer
            .join()
            .map_err(|_| Error::Usage("the tar writer thread panicked".into()))?;
        // The extractor's error explains a writer's broken pipe, so it comes first.
        extracted?;
        produced
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_dir_paths_lists_files_and_links_not_dirs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/b/f"), "x").unwrap();
        std::fs::write(dir.path().join("top"), "y").unwrap();
        std::os::unix::fs::symlink("/nowhere", dir.path().join("a/link")).unwrap();
        std::os::unix::fs::symlink("a", dir.path().join("dirlink")).unwrap();
        let mut got = non_dir_paths(dir.path()).unwrap();
        got.sort();
        let want: Vec<PathBuf> = ["a/b/f", "a/link", "dirlink", "top"]
            .iter()
            .map(PathBuf::from)
            .collect();
        assert_eq!(got, want);
    }
}
