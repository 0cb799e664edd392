//! A directory output (`-o type=local`) as a tar stream for the client: modes, owners, times,
//! symlinks, special files and hard links kept, so the client's unpacked tree is the one the
//! exporter wrote.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

pub fn pack_dir(src: &Path, dst: &Path) -> io::Result<()> {
    let mut b = tar::Builder::new(File::create(dst)?);
    b.follow_symlinks(false);
    // The first path of each multiply linked file; later ones become hard links to it.
    let mut seen: HashMap<(u64, u64), PathBuf> = HashMap::new();
    for e in walkdir::WalkDir::new(src)
        .min_depth(1)
        .follow_links(false)
        .sort_by_file_name()
    {
        let e = e.map_err(io::Error::other)?;
        let rel = e.path().strip_prefix(src).map_err(io::Error::other)?;
        let meta = e.path().symlink_metadata()?;
        if meta.is_file() && meta.nlink() > 1 {
            if let Some(first) = seen.get(&(meta.dev(), meta.ino())) {
                let mut h = tar::Header::new_gnu();
                h.set_metadata(&meta);
                h.set_entry_type(tar::EntryType::Link);
                h.set_size(0);
                b.append_link(&mut h, rel, first)?;
                continue;
            }
            seen.insert((meta.dev(), meta.ino()), rel.to_path_buf());
        }
        b.append_path_with_name(e.path(), rel)?;
    }
    b.into_inner()?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_hard_links_and_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("d")).unwrap();
        std::fs::write(src.join("d/a"), b"x").unwrap();
        std::fs::hard_link(src.join("d/a"), src.join("b")).unwrap();
        std::os::unix::fs::symlink("d/a", src.join("l")).unwrap();
        let tar_path = dir.path().join("out.tar");
        pack_dir(&src, &tar_path).unwrap();
        let out = dir.path().join("out");
        tar::Archive::new(File::open(&tar_path).unwrap())
            .unpack(&out)
            .unwrap();
        let (a, b) = (
            std::fs::metadata(out.join("d/a")).unwrap(),
            std::fs::metadata(out.join("b")).unwrap(),
        );
        assert_eq!(a.ino(), b.ino(), "b is a hard link to d/a");
        assert_eq!(std::fs::read_link(out.join("l")).unwrap(), Path::new("d/a"));
    }
}
