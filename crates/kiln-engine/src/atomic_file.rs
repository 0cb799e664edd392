//! Archives written to a user's path (`--output type=oci|docker|tar,dest=FILE`, `kiln save -o
//! FILE`) appear whole or not at all: they are written beside the destination as
//! `.FILE.kiln-tmp-<random>`, synced, and renamed over it, so a failed or killed export leaves
//! the old FILE (or none), never a truncated one. The temp file is `flock`ed while written; a
//! later write to the same destination removes the ones killed runs left.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use kiln_content::partial;

use crate::{Result, io};

/// Removes the temp file unless disarmed: on an error, a panic or an abandoned write.
struct TempGuard(Option<PathBuf>);

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(tmp) = self.0.take() {
            let _ = fs::remove_file(tmp);
        }
    }
}

/// Runs `produce` into the file `dest`, replacing it only once everything was written and
/// synced. A destination that exists and is not a regular file (`/dev/null`, a FIFO) is
/// written in place, as nothing can be renamed over it; a symlink is followed.
pub fn write_file_atomically<T>(
    dest: &Path,
    produce: impl FnOnce(&mut dyn Write) -> Result<T>,
) -> Result<T> {
    let what = |p: &Path| format!("writing `{}`", p.display());
    let dest = match fs::symlink_metadata(dest) {
        Ok(m) if m.file_type().is_symlink() => fs::canonicalize(dest).unwrap_or(dest.into()),
        _ => dest.to_path_buf(),
    };
    if let Ok(m) = fs::metadata(&dest)
        && !m.is_file()
        && !m.is_dir()
    {
        let file = OpenOptions::new()
            .write(true)
            .open(&dest)
            .map_err(io(what(&dest)))?;
        let mut out = BufWriter::new(file);
        let value = produce(&mut out)?;
        out.flush().map_err(io(what(&dest)))?;
        return Ok(value);
    }
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| io(what(&dest))(std::io::ErrorKind::InvalidInput.into()))?;
    let prefix = format!(".{name}.kiln-tmp-");
    // What killed writes to this destination left (never a live writer's): best effort.
    let _ = partial::remove_stale(&dir, &prefix);
    let (tmp, file) = partial::create_locked(&dir, &prefix)
        .map_err(io(format!("creating a file in `{}`", dir.display())))?;
    let mut guard = TempGuard(Some(tmp.clone()));
    let mut out = BufWriter::with_capacity(256 * 1024, file);
    let value = produce(&mut out)?;
    out.flush().map_err(io(what(&tmp)))?;
    let file = out
        .into_inner()
        .map_err(|e| io(what(&tmp))(e.into_error()))?;
    file.sync_all().map_err(io(what(&tmp)))?;
    fs::rename(&tmp, &dest).map_err(io(what(&dest)))?;
    guard.0 = None;
    // The directory entry too; the lock goes with `file`, after the rename.
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(io(format!("syncing `{}`", dir.display())))?;
    drop(file);
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn replaces_only_when_complete() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.tar");
        fs::write(&dest, b"old archive").unwrap();

        // Fails half-way: the old file stays as it was, and no temp file is left.
        let err = write_file_atomically(&dest, |w| {
            w.write_all(&[1u8; 300_000]).unwrap();
            Err::<(), _>(Error::Usage("the exporter failed".into()))
        })
        .unwrap_err();
        assert!(matches!(err, Error::Usage(_)), "{err:?}");
        assert_eq!(fs::read(&dest).unwrap(), b"old archive");
        assert_eq!(names(dir.path()), ["out.tar"]);

        // While it writes, the destination is still the old file.
        let n = write_file_atomically(&dest, |w| {
            w.write_all(b"new ").unwrap();
            assert_eq!(fs::read(&dest).unwrap(), b"old archive");
            assert_eq!(names(dir.path()).len(), 2);
            w.write_all(b"archive").unwrap();
            Ok(7)
        })
        .unwrap();
        assert_eq!(n, 7);
        assert_eq!(fs::read(&dest).unwrap(), b"new archive");
        assert_eq!(names(dir.path()), ["out.tar"]);
    }

    #[test]
    fn stale_temp_files_go_and_a_missing_dir_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("img.tar");
        // Left by a killed export (no one holds it), and someone else's file.
        fs::write(
            dir.path().join(".img.tar.kiln-tmp-0123456789abcdef"),
            b"torn",
        )
        .unwrap();
        fs::write(dir.path().join(".other.kiln-tmp-0123456789abcdef"), b"x").unwrap();
        write_file_atomically(&dest, |w| {
            w.write_all(b"whole").unwrap();
            Ok(())
        })
        .unwrap();
        assert_eq!(
            names(dir.path()),
            [".other.kiln-tmp-0123456789abcdef", "img.tar"]
        );

        let missing = dir.path().join("no/such/dir/x.tar");
        let err = write_file_atomically(&missing, |_| Ok(())).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err:?}");
    }

    #[test]
    fn a_device_is_written_in_place() {
        let dev_null = Path::new("/dev/null");
        if !dev_null.exists() {
            return;
        }
        write_file_atomically(dev_null, |w| {
            w.write_all(b"discarded").unwrap();
            Ok(())
        })
        .unwrap();
        assert!(!fs::metadata(dev_null).unwrap().is_file());
    }
}
