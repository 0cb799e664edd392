//! Path resolution inside a rootfs treated as a chroot: every lookup goes through `openat2` with
//! `RESOLVE_IN_ROOT`, so symlinks (absolute or `..`-laden) can never escape the rootfs, whatever
//! the image or an earlier build step put there.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};

/// An open handle on a rootfs directory.
pub(crate) struct Root {
    fd: OwnedFd,
}

impl Root {
    pub(crate) fn open(path: &Path) -> io::Result<Root> {
        let fd = rustix::fs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Root { fd })
    }

    fn open_in_root(&self, path: &str, flags: OFlags) -> io::Result<OwnedFd> {
        let rel = relative(path);
        let resolve = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
        // EAGAIN means a concurrent rename raced the lookup; the kernel asks us to retry.
        let mut attempts = 0;
        loop {
            match rustix::fs::openat2(&self.fd, rel.as_str(), flags, Mode::empty(), resolve) {
                Err(rustix::io::Errno::AGAIN) if attempts < 16 => attempts += 1,
                r => return r.map_err(io::Error::from),
            }
        }
    }

    /// Opens a file for reading; `None` when it (or a parent) does not exist.
    pub(crate) fn read_file(&self, path: &str) -> io::Result<Option<File>> {
        match self.open_in_root(path, OFlags::RDONLY | OFlags::CLOEXEC) {
            Ok(fd) => Ok(Some(File::from(fd))),
            Err(e) if is_missing(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub(crate) fn exists(&self, path: &str) -> io::Result<bool> {
        match self.open_in_root(path, OFlags::PATH | OFlags::CLOEXEC) {
            Ok(_) => Ok(true),
            Err(e) if is_missing(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The paths runc will have to create to mount on `dest`, outermost first: empty when `dest`
    /// exists, `["/a/b", "/a/b/c"]` for `/a/b/c` when only `/a` exists.
    pub(crate) fn missing_components(&self, dest: &str) -> io::Result<Vec<String>> {
        let parts = clean_components(dest);
        let mut missing = Vec::new();
        let mut prefix = String::new();
        for part in &parts {
            prefix.push('/');
            prefix.push_str(part);
            if !missing.is_empty() || !self.exists(&prefix)? {
                missing.push(prefix.clone());
            }
        }
        Ok(missing)
    }

    /// Removes a mount stub runc created: an empty directory or an empty regular file. Anything
    /// else (the process wrote to it, or replaced it) is left alone.
    pub(crate) fn remove_stub(&self, path: &str) -> io::Result<()> {
        let parts = clean_components(path);
        let Some((name, parents)) = parts.split_last() else {
            return Ok(());
        };
        let parent = match self.open_in_root(
            &parents.join("/"),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        ) {
            Ok(fd) => fd,
            Err(e) if is_missing(&e) => return Ok(()),
            Err(e) => return Err(e),
        };
        let stat = match rustix::fs::statat(&parent, name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(s) => s,
            Err(rustix::io::Errno::NOENT) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let result = match FileType::from_raw_mode(stat.st_mode) {
            FileType::Directory => rustix::fs::unlinkat(&parent, name.as_str(), AtFlags::REMOVEDIR),
            FileType::RegularFile if stat.st_size == 0 => {
                rustix::fs::unlinkat(&parent, name.as_str(), AtFlags::empty())
            }
            _ => Ok(()),
        };
        match result {
            Ok(()) | Err(rustix::io::Errno::NOTEMPTY | rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

fn is_missing(e: &io::Error) -> bool {
    matches!(
        rustix::io::Errno::from_io_error(e),
        Some(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR)
    )
}

/// Lexically cleans an in-container path into its components, like runc does before mounting.
pub(crate) fn clean_components(path: &str) -> Vec<String> {
    let mut parts: Vec<String> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p.to_string()),
        }
    }
    parts
}

fn relative(path: &str) -> String {
    let parts = clean_components(path);
    if parts.is_empty() {
        ".".to_string()
    } else {
        parts.join("/")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::symlink;

    #[test]
    fn clean_components_is_lexical() {
        assert_eq!(clean_components("/a//b/./c/"), ["a", "b", "c"]);
        assert_eq!(clean_components("/../a/../../b"), ["b"]);
        assert!(clean_components("/").is_empty());
    }

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let outside = tempfile::tempdir().unwrap();
        fs_err::write(outside.path().join("secret"), "host").unwrap();
        let root_dir = tempfile::tempdir().unwrap();
        let r = root_dir.path();
        fs_err::create_dir(r.join("etc")).unwrap();
        fs_err::write(r.join("etc/inside"), "root").unwrap();
        symlink(outside.path().join("secret"), r.join("etc/abs")).unwrap();
        symlink("../../../../../../etc/inside", r.join("etc/rel")).unwrap();

        let root = Root::open(r).unwrap();
        assert!(root.read_file("/etc/abs").unwrap().is_none());
        let mut s = String::new();
        root.read_file("/etc/rel")
            .unwrap()
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "root");
        assert!(root.read_file("/etc/inside/x").unwrap().is_none());
    }

    #[test]
    fn missing_components_and_stub_removal() {
        let root_dir = tempfile::tempdir().unwrap();
        let r = root_dir.path();
        fs_err::create_dir(r.join("a")).unwrap();
        let root = Root::open(r).unwrap();
        assert!(root.missing_components("/a").unwrap().is_empty());
        assert_eq!(
            root.missing_components("/a/b/c").unwrap(),
            ["/a/b", "/a/b/c"]
        );

        fs_err::create_dir_all(r.join("a/b")).unwrap();
        fs_err::write(r.join("a/b/c"), "").unwrap();
        fs_err::write(r.join("a/b/kept"), "data").unwrap();
        root.remove_stub("/a/b/c").unwrap();
        root.remove_stub("/a/b/kept").unwrap();
        root.remove_stub("/a/b").unwrap();
        assert!(!r.join("a/b/c").exists());
        assert!(r.join("a/b/kept").exists(), "non-empty file must stay");
        root.remove_stub("/a/missing/deeper").unwrap();
    }
}
