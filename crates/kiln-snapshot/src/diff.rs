//! Serialises an overlay-format directory (an upper dir or a stored layer) as an OCI layer tar.
//!
//! The output depends only on the tree: entries in depth-first order with siblings sorted by
//! name (parents before children), owner, mode and mtime (whole seconds) from each file, xattrs
//! as sorted PAX `SCHILY.xattr.*` records, no user or group names, and files sharing an inode
//! written once and then as hardlinks. Whiteouts carry fixed metadata because overlayfs stamps
//! them with the time of the deletion, which says nothing about the content.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::{self, File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use tar::{EntryType, Header};

use crate::entry::{OPAQUE_MARKER, WHITEOUT_PREFIX};
use crate::xattr::{self, OPAQUE};
use crate::{Error, Result};

/// Writes the tar of `root` into `out` and returns `out` once the archive is finished.
pub(crate) fn write_tar<W: Write>(root: &Path, out: W) -> Result<W> {
    let mut builder = tar::Builder::new(out);
    append_tree(&mut builder, root, Path::new(""))?;
    builder.into_inner().map_err(|source| Error::Diff {
        path: root.to_path_buf(),
        source,
    })
}

/// Several trees in one tar, each under its own directory (`linux_amd64/...`), that directory
/// written first as root's, mode 0755, at time 0 (as BuildKit's tar exporter splits platforms).
pub(crate) fn write_trees_tar<W: Write>(trees: &[(PathBuf, String)], out: W) -> Result<W> {
    let mut builder = tar::Builder::new(out);
    for (root, prefix) in trees {
        let mut header = Header::new_gnu();
        header.set_entry_type(EntryType::Directory);
        header.set_mode(0o755);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_size(0);
        builder
            .append_data(&mut header, format!("{prefix}/"), io::empty())
            .map_err(|source| Error::Diff {
                path: root.clone(),
                source,
            })?;
        append_tree(&mut builder, root, Path::new(prefix))?;
    }
    builder.into_inner().map_err(|source| Error::Diff {
        path: trees.first().map(|t| t.0.clone()).unwrap_or_default(),
        source,
    })
}

/// Appends the tree under `root`, its paths under `prefix` (empty: at the top).
fn append_tree<W: Write>(builder: &mut tar::Builder<W>, root: &Path, prefix: &Path) -> Result<()> {
    let mut inodes: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let walk = walkdir::WalkDir::new(root)
        .min_depth(1)
        .follow_links(false)
        .sort_by(|a, b| a.file_name().cmp(b.file_name()));
    for entry in walk {
        let entry = entry.map_err(|e| {
            let path = e.path().unwrap_or(root).to_path_buf();
            Error::Diff {
                path,
                source: e.into(),
            }
        })?;
        let path = entry.path();
        let rel = prefix.join(path.strip_prefix(root).map_err(|_| Error::Diff {
            path: path.to_path_buf(),
            source: io::Error::other("walked outside the layer root"),
        })?);
        let ctx = |source: io::Error| Error::Diff {
            path: path.to_path_buf(),
            source,
        };
        let md = fs::symlink_metadata(path).map_err(ctx)?;
        write_entry(builder, path, &rel, &md, &mut inodes).map_err(ctx)?;
    }
    Ok(())
}

fn write_entry<W: Write>(
    builder: &mut tar::Builder<W>,
    path: &Path,
    rel: &Path,
    md: &Metadata,
    inodes: &mut HashMap<(u64, u64), PathBuf>,
) -> io::Result<()> {
    let ft = md.file_type();
    if ft.is_char_device() && md.rdev() == 0 {
        let mut name = OsString::from(WHITEOUT_PREFIX);
        name.push(rel.file_name().unwrap_or_default());
        return append_marker(builder, &rel.with_file_name(name));
    }
    if ft.is_socket() {
        // Sockets cannot be represented in a tar; they are runtime leftovers anyway.
        tracing::debug!(path = %path.display(), "skipping socket in layer diff");
        return Ok(());
    }

    let mut header = Header::new_gnu();
    header.set_uid(u64::from(md.uid()));
    header.set_gid(u64::from(md.gid()));
    header.set_mode(md.mode() & 0o7777);
    header.set_mtime(u64::try_from(md.mtime()).unwrap_or(0));
    header.set_size(0);

    if ft.is_file() && md.nlink() > 1 {
        if let Some(first) = inodes.get(&(md.dev(), md.ino())) {
            header.set_entry_type(EntryType::Link);
            return builder.append_link(&mut header, rel, first);
        }
        inodes.insert((md.dev(), md.ino()), rel.to_path_buf());
    }

    let mut opaque = false;
    let mut xattrs = Vec::new();
    for (name, value) in xattr::list(path)? {
        if name == OPAQUE {
            opaque = value == b"y";
        }
        if !xattr::is_overlay_private(&name) {
            xattrs.push((format!("SCHILY.xattr.{name}"), value));
        }
    }
    builder.append_pax_extensions(xattrs.iter().map(|(k, v)| (k.as_str(), v.as_slice())))?;

    if ft.is_dir() {
        header.set_entry_type(EntryType::Directory);
        // A trailing slash is how Docker and GNU tar spell directories.
        let mut name = rel.as_os_str().to_os_string().into_vec();
        name.push(b'/');
        builder.append_data(
            &mut header,
            PathBuf::from(OsString::from_vec(name)),
            io::empty(),
        )?;
        if opaque {
            append_marker(builder, &rel.join(OPAQUE_MARKER))?;
        }
    } else if ft.is_file() {
        header.set_entry_type(EntryType::Regular);
        header.set_size(md.len());
        let file = File::open(path)?;
        builder.append_data(&mut header, rel, Exact::new(file, md.len()))?;
    } else if ft.is_symlink() {
        header.set_entry_type(EntryType::Symlink);
        let target = fs::read_link(path)?;
        builder.append_link(&mut header, rel, target)?;
    } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
        header.set_entry_type(if ft.is_char_device() {
            EntryType::Char
        } else if ft.is_block_device() {
            EntryType::Block
        } else {
            EntryType::Fifo
        });
        if !ft.is_fifo() {
            header.set_device_major(rustix::fs::major(md.rdev()))?;
            header.set_device_minor(rustix::fs::minor(md.rdev()))?;
        }
        builder.append_data(&mut header, rel, io::empty())?;
    }
    Ok(())
}

/// An empty regular file standing for a whiteout or an opaque directory.
fn append_marker<W: Write>(builder: &mut tar::Builder<W>, rel: &Path) -> io::Result<()> {
    let mut header = Header::new_gnu();
    header.set_entry_type(EntryType::Regular);
    header.set_size(0);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    builder.append_data(&mut header, rel, io::empty())
}

/// Reads exactly `len` bytes of a file going into a tar entry: a file that shrank while it was
/// read would otherwise leave a short entry and a corrupt tar behind it.
pub struct Exact<R> {
    inner: io::Take<R>,
    remaining: u64,
}

impl<R: Read> Exact<R> {
    pub fn new(inner: R, len: u64) -> Self {
        Self {
            inner: inner.take(len),
            remaining: len,
        }
    }
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && self.remaining > 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shrank while it was being read",
            ));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_reader_refuses_short_files() {
        let mut r = Exact::new(&b"abc"[..], 5);
        let mut out = Vec::new();
        let err = r.read_to_end(&mut out).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        let mut r = Exact::new(&b"abcdef"[..], 4);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"abcd");
    }

    #[test]
    fn entries_are_sorted_parents_first() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("b/c")).unwrap();
        fs::write(root.join("b/c/z"), b"z").unwrap();
        fs::write(root.join("b.txt"), b"x").unwrap();
        fs::write(root.join("a"), b"a").unwrap();
        let tar = write_tar(root, Vec::new()).unwrap();
        let mut ar = tar::Archive::new(&tar[..]);
        let names: Vec<String> = ar
            .entries()
            .unwrap()
            .map(|e| {
                e.unwrap()
                    .path()
                    .unwrap()
                    .display()
                    .to_string()
                    .trim_end_matches('/')
                    .to_string()
            })
            .collect();
        assert_eq!(names, ["a", "b", "b/c", "b/c/z", "b.txt"]);
    }

    #[test]
    fn trees_go_under_their_directories_hard_links_too() {
        let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        fs::write(one.path().join("arch"), b"x86_64\n").unwrap();
        fs::hard_link(one.path().join("arch"), one.path().join("same")).unwrap();
        fs::write(two.path().join("arch"), b"aarch64\n").unwrap();
        let trees = [
            (one.path().to_path_buf(), "linux_amd64".to_string()),
            (two.path().to_path_buf(), "linux_arm64".to_string()),
        ];
        let tar = write_trees_tar(&trees, Vec::new()).unwrap();
        let mut ar = tar::Archive::new(&tar[..]);
        let entries: Vec<(String, EntryType, String, u64)> = ar
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let link = e
                    .link_name()
                    .unwrap()
                    .map(|l| l.display().to_string())
                    .unwrap_or_default();
                let mut body = String::new();
                e.read_to_string(&mut body).unwrap();
                let name = e.path().unwrap().display().to_string();
                let kind = e.header().entry_type();
                let mtime = e.header().mtime().unwrap();
                (name, kind, format!("{link}{body}"), mtime)
            })
            .collect();
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "linux_amd64/",
                "linux_amd64/arch",
                "linux_amd64/same",
                "linux_arm64/",
                "linux_arm64/arch"
            ]
        );
        assert_eq!(entries[0].1, EntryType::Directory);
        assert_eq!(entries[0].3, 0);
        assert_eq!(entries[1].2, "x86_64\n");
        assert_eq!(entries[2].1, EntryType::Link);
        assert_eq!(entries[2].2, "linux_amd64/arch");
        assert_eq!(entries[4].2, "aarch64\n");
    }
}
