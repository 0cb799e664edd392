//! Overlayfs mounts for build steps, and cleanup of mounts a crash left behind.

use std::cmp::Reverse;
use std::ffi::{CString, OsString};
use std::fs;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use rustix::fd::OwnedFd;
use rustix::fs::CWD;
use rustix::io::Errno;
use rustix::mount::{
    FsMountFlags, FsOpenFlags, MountAttrFlags, MountFlags, MoveMountFlags, UnmountFlags,
};

use crate::{Error, Result, io_err};

/// A mounted overlay. Dropping it unmounts, falling back to a lazy detach when busy.
#[derive(Debug)]
pub struct OverlayMount {
    target: PathBuf,
    /// Created for an overlay with no layers (overlayfs needs at least one lower dir).
    empty_lower: Option<PathBuf>,
    mounted: bool,
}

impl OverlayMount {
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Unmounts now, reporting failure (a busy mount is still detached lazily).
    pub fn unmount(mut self) -> Result<()> {
        self.release()
    }

    fn release(&mut self) -> Result<()> {
        if std::mem::take(&mut self.mounted) {
            match rustix::mount::unmount(&self.target, UnmountFlags::empty()) {
                // EINVAL: no longer a mount point (someone cleaned up already).
                Ok(()) | Err(Errno::INVAL) => {}
                Err(e) => {
                    rustix::mount::unmount(&self.target, UnmountFlags::DETACH).map_err(|_| {
                        Error::Unmount {
                            target: self.target.clone(),
                            source: e.into(),
                        }
                    })?;
                }
            }
        }
        if let Some(dir) = self.empty_lower.take() {
            fs::remove_dir(&dir).map_err(io_err(dir))?;
        }
        Ok(())
    }
}

impl Drop for OverlayMount {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            tracing::warn!(target = %self.target.display(), error = %e, "failed to unmount overlay");
        }
    }
}

/// Mounts an overlay of `lowers` (topmost first) under `upper` at `target`, with `work` as
/// overlayfs's work dir (empty, on the same filesystem as `upper`).
///
/// Each lower is passed as its own `lowerdir+` option through the new mount API, so deep stacks
/// do not hit the one-page limit of a classic option string; without that API (old kernels,
/// seccomp filters) a classic `lowerdir=a:b:c` mount is made instead. With no lowers, an empty
/// directory next to `work` stands in and is removed on unmount.
pub fn mount_overlay(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<OverlayMount> {
    mount(lowers, upper, work, target, false)
}

/// [`mount_overlay`] for a build step's scratch upper dir: overlayfs's `volatile` option (Linux
/// 5.10+; a plain mount where the kernel lacks it), so the unmount does not `syncfs` the whole
/// upper filesystem. That sync flushed every dirty page on the disk, other processes' too, and
/// was most of a small step's cost; the caller makes the upper dir durable with
/// [`sync_filesystem`] when it keeps it (a step that changed nothing has nothing to keep).
pub fn mount_scratch_overlay(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<OverlayMount> {
    mount(lowers, upper, work, target, true)
}

fn mount(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
    volatile: bool,
) -> Result<OverlayMount> {
    let mut mount = OverlayMount {
        target: target.to_path_buf(),
        empty_lower: None,
        mounted: false,
    };
    let stand_in;
    let lowers = if lowers.is_empty() {
        let dir = empty_lower_for(work)?;
        match fs::create_dir(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(Error::Io {
                    path: dir,
                    source: e,
                });
            }
            _ => {}
        }
        mount.empty_lower = Some(dir.clone());
        stand_in = [dir];
        &stand_in[..]
    } else {
        lowers
    };
    match mount_new_api(lowers, upper, work, target, volatile) {
        Ok(()) => {}
        Err(Attempt::Unsupported) => mount_classic(lowers, upper, work, target, volatile)?,
        Err(Attempt::Failed(e)) => return Err(e),
    }
    mount.mounted = true;
    Ok(mount)
}

/// Flushes the filesystem holding `path` (`syncfs`), as a non-volatile overlay unmount does.
pub fn sync_filesystem(path: &Path) -> Result<()> {
    let fd = rustix::fs::open(
        path,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| Error::Io {
        path: path.to_path_buf(),
        source: e.into(),
    })?;
    rustix::fs::syncfs(&fd).map_err(|e| Error::Io {
        path: path.to_path_buf(),
        source: e.into(),
    })
}

fn empty_lower_for(work: &Path) -> Result<PathBuf> {
    let (Some(parent), Some(name)) = (work.parent(), work.file_name()) else {
        return Err(Error::MountPath(work.to_path_buf()));
    };
    let mut name = name.to_os_string();
    name.push(".empty-lower");
    Ok(parent.join(name))
}

/// Overlay features that would make an upper dir unreadable as a plain diff: a renamed
/// directory recorded as a redirect xattr, a copied-up file holding only metadata, an inode
/// index tying the upper dir to one set of lowers. Kernel defaults vary by build config.
const FIXED_OPTIONS: [(&str, &str); 3] = [
    ("redirect_dir", "off"),
    ("metacopy", "off"),
    ("index", "off"),
];

enum Attempt {
    /// The kernel lacks the new mount API or `lowerdir+`: try the classic way.
    Unsupported,
    Failed(Error),
}

fn mount_new_api(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
    volatile: bool,
) -> std::result::Result<(), Attempt> {
    let fs =
        rustix::mount::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC).map_err(|e| match e {
            Errno::NOSYS | Errno::PERM => Attempt::Unsupported,
            e => Attempt::Failed(mount_err(target, None, e)),
        })?;
    let failed = |e: Errno| Attempt::Failed(mount_err(target, kernel_log(&fs), e));
    rustix::mount::fsconfig_set_string(&fs, "source", "overlay").map_err(failed)?;
    for lower in lowers {
        rustix::mount::fsconfig_set_string(&fs, "lowerdir+", lower.as_path()).map_err(|e| {
            let log = kernel_log(&fs);
            // Kernels before 6.8 reject the key itself.
            if e == Errno::INVAL && log.as_deref().is_some_and(|m| m.contains("lowerdir+")) {
                Attempt::Unsupported
            } else {
                Attempt::Failed(mount_err(target, log, e))
            }
        })?;
    }
    rustix::mount::fsconfig_set_string(&fs, "upperdir", upper).map_err(failed)?;
    rustix::mount::fsconfig_set_string(&fs, "workdir", work).map_err(failed)?;
    for (key, value) in FIXED_OPTIONS {
        rustix::mount::fsconfig_set_string(&fs, key, value).map_err(failed)?;
    }
    // A kernel without the option refuses the key; the mount is then simply durable.
    if volatile {
        let _ = rustix::mount::fsconfig_set_flag(&fs, "volatile");
    }
    rustix::mount::fsconfig_create(&fs).map_err(failed)?;
    let mnt = rustix::mount::fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, MountAttrFlags::empty())
        .map_err(failed)?;
    rustix::mount::move_mount(
        &mnt,
        "",
        CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|e| Attempt::Failed(mount_err(target, None, e)))
}

/// What the kernel logged on a filesystem context (`e overlay: ...` lines), if anything.
fn kernel_log(fs: &OwnedFd) -> Option<String> {
    let mut messages = Vec::new();
    let mut buf = [0u8; 1024];
    while let Ok(n) = rustix::io::read(fs, &mut buf[..]) {
        if n == 0 {
            break;
        }
        messages.push(String::from_utf8_lossy(&buf[..n]).trim_end().to_string());
    }
    (!messages.is_empty()).then(|| messages.join("; "))
}

fn mount_classic(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
    volatile: bool,
) -> Result<()> {
    // The classic option string splits on `,` and `:`; refuse rather than escape.
    let plain = |p: &Path| -> Result<String> {
        match p.to_str() {
            Some(s) if !s.contains([',', ':', '\\']) => Ok(s.to_string()),
            _ => Err(Error::MountPath(p.to_path_buf())),
        }
    };
    let lowerdir = lowers
        .iter()
        .map(|l| plain(l))
        .collect::<Result<Vec<_>>>()?
        .join(":");
    let mut options = format!(
        "lowerdir={lowerdir},upperdir={},workdir={}",
        plain(upper)?,
        plain(work)?
    );
    for (key, value) in FIXED_OPTIONS {
        options.push_str(&format!(",{key}={value}"));
    }
    let classic = |options: String| {
        let options = CString::new(options).map_err(|_| Error::MountPath(upper.to_path_buf()))?;
        rustix::mount::mount(
            "overlay",
            target,
            "overlay",
            MountFlags::empty(),
            options.as_c_str(),
        )
        .map_err(|e| mount_err(target, None, e))
    };
    if volatile && classic(format!("{options},volatile")).is_ok() {
        return Ok(());
    }
    classic(options)
}

fn mount_err(target: &Path, detail: Option<String>, e: Errno) -> Error {
    Error::Mount {
        target: target.to_path_buf(),
        detail,
        source: e.into(),
    }
}

/// Unmounts (lazily) everything mounted strictly below `under`, deepest first, and returns how
/// many mounts went. Meant for startup, after a crash left build mounts behind.
pub fn cleanup_stale_mounts(under: &Path) -> Result<usize> {
    let under = fs::canonicalize(under).unwrap_or_else(|_| under.to_path_buf());
    let info = Path::new("/proc/self/mountinfo");
    let text = fs::read(info).map_err(io_err(info))?;
    let mut points: Vec<PathBuf> = text
        .split(|b| *b == b'\n')
        .filter_map(|line| line.split(|b| *b == b' ').nth(4))
        .map(unescape_mountinfo)
        .filter(|p| p != &under && p.starts_with(&under))
        .collect();
    points.sort_by_key(|p| Reverse(p.as_os_str().len()));
    points.dedup();
    let mut count = 0;
    for point in points {
        match rustix::mount::unmount(&point, UnmountFlags::DETACH) {
            Ok(()) => count += 1,
            // Gone already, e.g. stacked mounts on one point or detached with a parent.
            Err(Errno::INVAL | Errno::NOENT) => {}
            Err(e) => {
                return Err(Error::Unmount {
                    target: point,
                    source: e.into(),
                });
            }
        }
    }
    Ok(count)
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(field: &[u8]) -> PathBuf {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let octal = field
            .get(i + 1..i + 4)
            .filter(|d| field[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                let v = d.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                out.push(u8::try_from(v).unwrap_or(b'?'));
                i += 4;
            }
            None => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    PathBuf::from(OsString::from_vec(out))
}

#[cfg(test)]
mod tests {
    use std::os::unix::ffi::OsStrExt;

    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(
            unescape_mountinfo(br"/tmp/a\040b\134c"),
            PathBuf::from("/tmp/a b\\c")
        );
        assert_eq!(unescape_mountinfo(br"/x\04"), PathBuf::from(r"/x\04"));
        assert_eq!(
            unescape_mountinfo(b"/plain").as_os_str().as_bytes(),
            b"/plain"
        );
    }

    #[test]
    fn classic_mount_fallback_works_and_refuses_ambiguous_paths() {
        let tmp = tempfile::tempdir().unwrap();
        let d = |n: &str| {
            let p = tmp.path().join(n);
            fs::create_dir_all(&p).unwrap();
            p
        };
        let (lower, upper, work, target) = (d("lower"), d("upper"), d("work"), d("merged"));
        fs::write(lower.join("f"), b"from lower").unwrap();
        mount_classic(std::slice::from_ref(&lower), &upper, &work, &target, false).unwrap();
        let mut mount = OverlayMount {
            target: target.clone(),
            empty_lower: None,
            mounted: true,
        };
        assert_eq!(fs::read(target.join("f")).unwrap(), b"from lower");
        mount.release().unwrap();
        assert!(!target.join("f").exists());

        let odd = d("a:b");
        let err = mount_classic(&[odd], &upper, &work, &target, false).unwrap_err();
        assert!(matches!(err, Error::MountPath(_)), "{err:?}");
    }

    #[test]
    fn empty_lower_sits_next_to_work() {
        assert_eq!(
            empty_lower_for(Path::new("/a/b/work")).unwrap(),
            PathBuf::from("/a/b/work.empty-lower")
        );
        assert!(empty_lower_for(Path::new("/")).is_err());
    }
}
