//! What ADD adds to COPY: local tar archives extracted into the destination (downloads are
//! in http.rs).

use std::fs;
use std::io::{self, Read, Seek};
use std::path::Path;

use kiln_snapshot::archive;

use crate::fsutil::{Source, SourceError};

/// A reader over the decompressed bytes of `file` (gzip, bzip2, xz, zstd or none, by its
/// first bytes).
fn open_decompressed(mut file: fs::File) -> io::Result<Box<dyn Read + Send>> {
    let mut magic = [0u8; 6];
    let n = read_up_to(&mut file, &mut magic)?;
    file.rewind()?;
    Ok(archive::decompress(
        Box::new(file),
        archive::compression_of(&magic[..n]),
    ))
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Whether the source, a regular file, is a tar archive, possibly compressed. It is opened as
/// COPY opens files (from its root, following no link).
pub(crate) fn is_archive(source: &Source) -> bool {
    let Ok(meta) = source.metadata() else {
        return false;
    };
    if !meta.is_file() {
        return false;
    }
    let check = || -> io::Result<bool> {
        let mut r = open_decompressed(source.open_file()?)?;
        let mut block = [0u8; 512];
        let n = read_up_to(&mut r, &mut block)?;
        Ok(archive::is_tar_header(&block[..n]))
    };
    check().unwrap_or(false)
}

/// Extracts the archive at `path` into the new empty directory `dir` with the layer applier
/// (`kiln_snapshot::extract_archive`, as pulled and loaded layers are unpacked): device nodes
/// and fifos are made as such, an entry replaces what has its path (a directory merges into a
/// directory), and no entry is written outside `dir` or through a symlink (`..` above the root
/// and links leaving it are refused, a leading `/` is the root). The caller then copies `dir`
/// into the image with the same root-confined copy as COPY.
pub(crate) fn extract(source: &Source, dir: &Path) -> Result<(), SourceError> {
    let path = &source.abs;
    let io_err = |source| SourceError::Io {
        path: path.to_path_buf(),
        source,
    };
    fs::create_dir_all(dir).map_err(io_err)?;
    source
        .open_file()
        .and_then(open_decompressed)
        .map_err(io_err)
        .and_then(|reader| {
            kiln_snapshot::extract_archive(reader, dir).map_err(|source| SourceError::Archive {
                path: path.to_path_buf(),
                source: Box::new(source),
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_bytes() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o640);
        h.set_uid(1000);
        h.set_gid(1000);
        h.set_mtime(1_000_000);
        h.set_cksum();
        b.append_data(&mut h, "dir/file.txt", &b"abc"[..]).unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn detects_compressed_tars_but_not_text() {
        let tmp = tempfile::tempdir().unwrap();
        let plain = tmp.path().join("a.tar");
        fs::write(&plain, tar_bytes()).unwrap();
        assert!(is_archive(&Source::file(&plain)));

        let gz = tmp.path().join("a.tar.gz");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut enc, &tar_bytes()).unwrap();
        fs::write(&gz, enc.finish().unwrap()).unwrap();
        assert!(is_archive(&Source::file(&gz)));

        let bz = tmp.path().join("a.tar.bz2");
        let mut enc = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
        io::Write::write_all(&mut enc, &tar_bytes()).unwrap();
        fs::write(&bz, enc.finish().unwrap()).unwrap();
        assert!(is_archive(&Source::file(&bz)));

        let xz = tmp.path().join("a.tar.xz");
        let mut out = Vec::new();
        lzma_rs::xz_compress(&mut io::Cursor::new(tar_bytes()), &mut out).unwrap();
        fs::write(&xz, out).unwrap();
        assert!(is_archive(&Source::file(&xz)));
        let out = tmp.path().join("out-xz");
        extract(&Source::file(&xz), &out).unwrap();
        assert_eq!(fs::read(out.join("dir/file.txt")).unwrap(), b"abc");

        let zst = tmp.path().join("a.tar.zst");
        fs::write(&zst, zstd::encode_all(&tar_bytes()[..], 3).unwrap()).unwrap();
        assert!(
            is_archive(&Source::file(&zst)),
            "ADD unpacks zstd, as BuildKit v0.32.2"
        );
        let out = tmp.path().join("out-zst");
        extract(&Source::file(&zst), &out).unwrap();
        assert_eq!(fs::read(out.join("dir/file.txt")).unwrap(), b"abc");

        let text = tmp.path().join("a.txt");
        fs::write(&text, "just text\n".repeat(100)).unwrap();
        assert!(!is_archive(&Source::file(&text)));

        let out = tmp.path().join("out");
        extract(&Source::file(&gz), &out).unwrap();
        assert_eq!(fs::read(out.join("dir/file.txt")).unwrap(), b"abc");
        let meta = fs::metadata(out.join("dir/file.txt")).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!((meta.mode() & 0o7777, meta.uid()), (0o640, 1000));
    }

    /// Appends an entry with its name and link name written verbatim (the tar crate's own
    /// setters refuse `..`).
    fn raw(
        b: &mut tar::Builder<Vec<u8>>,
        kind: tar::EntryType,
        name: &str,
        link: &str,
        data: &[u8],
    ) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_mode(0o640);
        h.set_uid(1000);
        h.set_gid(2000);
        h.set_mtime(1_000_000);
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, data).unwrap();
        h
    }

    fn extract_bytes(
        bytes: Vec<u8>,
    ) -> (
        tempfile::TempDir,
        std::path::PathBuf,
        Result<(), SourceError>,
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let archive = tmp.path().join("a.tar");
        fs::write(&archive, bytes).unwrap();
        let out = tmp.path().join("out");
        let result = extract(&Source::file(&archive), &out);
        (tmp, out, result)
    }

    #[test]
    fn device_nodes_and_fifos_stay_what_they_are() {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Char);
        h.set_device_major(1).unwrap();
        h.set_device_minor(3).unwrap();
        h.set_mode(0o620);
        h.set_uid(1000);
        h.set_gid(2000);
        h.set_mtime(1_000_000);
        h.set_size(0);
        b.append_data(&mut h, "dev/null", io::empty()).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Block);
        h.set_device_major(7).unwrap();
        h.set_device_minor(9).unwrap();
        h.set_mode(0o600);
        h.set_size(0);
        b.append_data(&mut h, "dev/loop9", io::empty()).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Fifo);
        h.set_mode(0o644);
        h.set_uid(1000);
        h.set_gid(2000);
        h.set_size(0);
        b.append_data(&mut h, "run/fifo", io::empty()).unwrap();
        let (_tmp, out, result) = extract_bytes(b.into_inner().unwrap());
        result.unwrap();

        let null = fs::symlink_metadata(out.join("dev/null")).unwrap();
        assert!(null.file_type().is_char_device());
        let rdev = null.rdev();
        assert_eq!((libc::major(rdev), libc::minor(rdev)), (1, 3));
        assert_eq!(
            (null.mode() & 0o7777, null.uid(), null.gid()),
            (0o620, 1000, 2000)
        );
        assert_eq!(null.mtime(), 1_000_000);
        let block = fs::symlink_metadata(out.join("dev/loop9")).unwrap();
        assert!(block.file_type().is_block_device());
        let rdev = block.rdev();
        assert_eq!((libc::major(rdev), libc::minor(rdev)), (7, 9));
        let fifo = fs::symlink_metadata(out.join("run/fifo")).unwrap();
        assert!(fifo.file_type().is_fifo());
        assert_eq!((fifo.mode() & 0o7777, fifo.uid()), (0o644, 1000));
    }

    /// As BuildKit (containerd's archive package) unpacks it: a directory entry replaces a
    /// file of its path, a file entry replaces a directory (and all below it).
    #[test]
    fn later_entries_replace_earlier_ones_of_another_kind() {
        use tar::EntryType::{Directory, Regular};
        let mut b = tar::Builder::new(Vec::new());
        raw(&mut b, Regular, "x", "", b"file");
        raw(&mut b, Directory, "x/", "", b"");
        raw(&mut b, Regular, "x/y", "", b"y");
        raw(&mut b, Directory, "d/", "", b"");
        raw(&mut b, Regular, "d/inner", "", b"inner");
        raw(&mut b, Regular, "d", "", b"now a file");
        let (_tmp, out, result) = extract_bytes(b.into_inner().unwrap());
        result.unwrap();
        assert!(out.join("x").is_dir());
        assert_eq!(fs::read(out.join("x/y")).unwrap(), b"y");
        assert_eq!(fs::read(out.join("d")).unwrap(), b"now a file");
    }

    #[test]
    fn links_and_whiteout_names_are_kept_as_written() {
        use tar::EntryType::{Link, Regular, Symlink};
        let mut b = tar::Builder::new(Vec::new());
        raw(&mut b, Regular, "f", "", b"data");
        raw(&mut b, Link, "hard", "f", b"");
        raw(&mut b, Symlink, "abs", "/etc/passwd", b"");
        // Not a layer: `.wh.` names are ordinary files, not whiteouts.
        raw(&mut b, Regular, ".wh.keep", "", b"w");
        // A leading `/` is the root, as in BuildKit and docker.
        raw(&mut b, Regular, "/rooted", "", b"r");
        let (_tmp, out, result) = extract_bytes(b.into_inner().unwrap());
        result.unwrap();
        use std::os::unix::fs::MetadataExt;
        let (f, hard) = (
            fs::metadata(out.join("f")).unwrap(),
            fs::metadata(out.join("hard")).unwrap(),
        );
        assert_eq!((f.ino(), f.nlink()), (hard.ino(), 2));
        assert_eq!(
            fs::read_link(out.join("abs")).unwrap(),
            Path::new("/etc/passwd")
        );
        assert_eq!(fs::read(out.join(".wh.keep")).unwrap(), b"w");
        assert_eq!(fs::read(out.join("rooted")).unwrap(), b"r");
    }

    #[test]
    fn entries_climbing_out_are_refused_naming_the_entry() {
        use tar::EntryType::{Link, Regular};
        for (kind, name, link) in [
            (Regular, "../up", ""),
            (Regular, "a/../../up", ""),
            (Link, "h", "../../etc/passwd"),
        ] {
            let mut b = tar::Builder::new(Vec::new());
            raw(&mut b, kind, name, link, b"");
            let (tmp, _out, result) = extract_bytes(b.into_inner().unwrap());
            let err = result.unwrap_err();
            let SourceError::Archive { source, .. } = &err else {
                panic!("{err:?}");
            };
            assert!(
                matches!(source.as_ref(), kiln_snapshot::Error::BadEntry { path, .. } if path == name),
                "{source:?}"
            );
            assert!(!tmp.path().join("up").exists());
        }
    }

    #[test]
    fn entries_escaping_the_directory_are_not_written() {
        let tmp = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        // A symlink pointing out, then a file written through it.
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "link", tmp.path()).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_cksum();
        b.append_data(&mut h, "link/escaped", &b"x"[..]).unwrap();
        let archive = tmp.path().join("evil.tar");
        fs::write(&archive, b.into_inner().unwrap()).unwrap();
        let out = tmp.path().join("out");
        let _ = extract(&Source::file(&archive), &out);
        assert!(!tmp.path().join("escaped").exists());
    }
}
