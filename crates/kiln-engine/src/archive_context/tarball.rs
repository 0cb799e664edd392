//! Reading a context tarball: archive or Dockerfile from the first bytes, decompression by
//! magic bytes (gzip, bzip2, xz, zstd), the spool file, and unpacking what is selected from it.

use std::io::{self, BufReader, Read, Write as _};
use std::path::Path;
use std::sync::Arc;

use super::Selection;
use crate::{Error, Result, io};

/// How many bytes decide between an archive and a Dockerfile, as buildx peeks stdin.
pub const SNIFF_LEN: usize = 1024;

/// The compression of an archive, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Bzip2,
    Xz,
    Zstd,
}

/// Whether `head` (the first [`SNIFF_LEN`] bytes, or all there is) starts an archive, and how it
/// is compressed: a compression's magic bytes, or a tar header with a valid checksum. Anything
/// else is read as a Dockerfile, as docker reads stdin.
pub fn sniff_archive(head: &[u8]) -> Option<Compression> {
    const MAGIC: [(&[u8], Compression); 4] = [
        (&[0x1f, 0x8b, 0x08], Compression::Gzip),
        (b"BZh", Compression::Bzip2),
        (&[0xfd, b'7', b'z', b'X', b'Z', 0x00], Compression::Xz),
        (&[0x28, 0xb5, 0x2f, 0xfd], Compression::Zstd),
    ];
    if let Some((_, c)) = MAGIC.iter().find(|(m, _)| head.starts_with(m)) {
        return Some(*c);
    }
    is_tar_header(head).then_some(Compression::None)
}

/// A valid checksum in the first 512-byte block: the `ustar` magic alone is not enough, and
/// v7 archives lack it.
pub(super) fn is_tar_header(head: &[u8]) -> bool {
    let Some(block) = head.get(..512) else {
        return false;
    };
    if block.iter().all(|b| *b == 0) {
        return false;
    }
    let field = String::from_utf8_lossy(&block[148..156]);
    let Ok(expected) = u32::from_str_radix(field.trim_matches(|c: char| c == ' ' || c == '\0'), 8)
    else {
        return false;
    };
    let sum: u32 = block
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u32::from(*b)
            }
        })
        .sum();
    sum == expected
}

/// Decompresses `reader` as its first bytes say into the file `spool`; returns the bytes read
/// and whether the tar holds a symlink or hardlink. `name` says where the archive came from.
pub(super) fn spool_tar(
    reader: Box<dyn Read + Send>,
    spool: &Path,
    name: &str,
) -> Result<(u64, bool)> {
    let counted = Counted {
        inner: reader,
        n: Arc::new(std::sync::atomic::AtomicU64::new(0)),
    };
    let n = counted.n.clone();
    let (head, reader) = peek(Box::new(counted), SNIFF_LEN)
        .map_err(io(format!("reading the context archive from {name}")))?;
    let compression = sniff_archive(&head)
        .ok_or_else(|| Error::Usage(format!("{name} is neither a tar archive nor a Dockerfile")))?;
    let bad = |e: io::Error| Error::ContextArchive {
        name: name.to_string(),
        source: Box::new(e),
    };
    let (head, mut tar) = peek(decompress(reader, compression), 512).map_err(bad)?;
    if !is_tar_header(&head) {
        return Err(bad(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a tar archive once decompressed",
        )));
    }
    let file =
        std::fs::File::create(spool).map_err(io(format!("creating `{}`", spool.display())))?;
    let mut out = io::BufWriter::with_capacity(1 << 20, file);
    io::copy(&mut tar, &mut out).map_err(bad)?;
    out.flush().map_err(bad)?;
    // One pass over the headers (seeking past the data) to find links, and to refuse a tar
    // cut short before anything is unpacked.
    let file = std::fs::File::open(spool).map_err(io(format!("reading `{}`", spool.display())))?;
    let mut archive = tar::Archive::new(file);
    let mut links = false;
    for entry in archive.entries_with_seek().map_err(bad)? {
        let entry = entry.map_err(bad)?;
        links |= matches!(
            entry.header().entry_type(),
            tar::EntryType::Symlink | tar::EntryType::Link
        );
    }
    Ok((n.load(std::sync::atomic::Ordering::Relaxed), links))
}

/// Unpacks from the spooled tar into `dir` the entries `select` picks.
pub(super) fn unpack_spool(spool: &Path, dir: &Path, name: &str, select: &Selection) -> Result<()> {
    let file = std::fs::File::open(spool).map_err(io(format!("reading `{}`", spool.display())))?;
    let reader = BufReader::with_capacity(1 << 20, file);
    let keep = |comps: &[std::ffi::OsString]| match select {
        Selection::All => true,
        Selection::Prefixes(prefixes) => prefixes.iter().any(|p| {
            let n = p.len().min(comps.len());
            p[..n].iter().zip(&comps[..n]).all(|(a, b)| a.as_str() == b)
        }),
    };
    kiln_snapshot::extract_context_filtered(reader, dir, &keep).map_err(|source| {
        Error::ContextArchive {
            name: name.to_string(),
            source: Box::new(source),
        }
    })
}

struct Counted {
    inner: Box<dyn Read + Send>,
    n: Arc<std::sync::atomic::AtomicU64>,
}

impl Read for Counted {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.n
            .fetch_add(k as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(k)
    }
}

/// The first `len` bytes of `reader` (fewer at its end) and a reader that yields all of it.
pub fn peek(
    mut reader: Box<dyn Read + Send>,
    len: usize,
) -> io::Result<(Vec<u8>, Box<dyn Read + Send>)> {
    let mut head = Vec::with_capacity(len);
    (&mut reader).take(len as u64).read_to_end(&mut head)?;
    let again = io::Cursor::new(head.clone()).chain(reader);
    Ok((head, Box::new(again)))
}

fn decompress(reader: Box<dyn Read + Send>, c: Compression) -> Box<dyn Read + Send> {
    const BUF: usize = 256 << 10;
    match c {
        Compression::None => Box::new(BufReader::with_capacity(BUF, reader)),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(BufReader::with_capacity(
            BUF, reader,
        ))),
        Compression::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(BufReader::with_capacity(
            BUF, reader,
        ))),
        Compression::Zstd => match zstd::stream::read::Decoder::new(reader) {
            Ok(d) => Box::new(d),
            Err(e) => Box::new(Failed(Some(e))),
        },
        Compression::Xz => match XzReader::spawn(reader) {
            Ok(r) => Box::new(r),
            Err(e) => Box::new(Failed(Some(e))),
        },
    }
}

/// A reader that fails once with the error that stopped it being made.
struct Failed(Option<io::Error>);

impl Read for Failed {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(self
            .0
            .take()
            .unwrap_or_else(|| io::Error::other("decompression failed")))
    }
}

/// xz decompressed on a thread into a pipe (lzma-rs decodes xz only from reader to writer);
/// at the pipe's end the thread's error, if any, is this reader's.
struct XzReader {
    pipe: io::PipeReader,
    thread: Option<std::thread::JoinHandle<io::Result<()>>>,
}

impl XzReader {
    fn spawn(reader: Box<dyn Read + Send>) -> io::Result<XzReader> {
        let (pipe, mut writer) = io::pipe()?;
        let thread = std::thread::spawn(move || {
            let mut input = BufReader::with_capacity(256 << 10, reader);
            lzma_rs::xz_decompress(&mut input, &mut writer)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("xz: {e}")))
        });
        Ok(XzReader {
            pipe,
            thread: Some(thread),
        })
    }
}

impl Read for XzReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.pipe.read(buf)?;
        if n == 0
            && !buf.is_empty()
            && let Some(t) = self.thread.take()
        {
            t.join()
                .map_err(|_| io::Error::other("the xz decoder panicked"))??;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_bytes() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o644);
        h.set_path("Dockerfile").unwrap();
        h.set_cksum();
        b.append(&h, &b"abc"[..]).unwrap();
        b.into_inner().unwrap()
    }

    fn unpack_all(bytes: &[u8], dir: &Path, what: &str) -> Result<()> {
        let spool = dir.join("spool.tar");
        let ctx = dir.join("ctx");
        std::fs::create_dir(&ctx).unwrap();
        spool_tar(Box::new(io::Cursor::new(bytes.to_vec())), &spool, what)?;
        unpack_spool(&spool, &ctx, what, &Selection::All)?;
        std::fs::rename(ctx.join("Dockerfile"), dir.join("Dockerfile")).unwrap();
        Ok(())
    }

    #[test]
    fn sniffs_archives_by_magic_and_dockerfiles_are_not_archives() {
        assert_eq!(sniff_archive(&tar_bytes()), Some(Compression::None));
        assert_eq!(
            sniff_archive(&[0x1f, 0x8b, 0x08, 0]),
            Some(Compression::Gzip)
        );
        assert_eq!(sniff_archive(b"BZh91AY"), Some(Compression::Bzip2));
        assert_eq!(
            sniff_archive(&[0xfd, b'7', b'z', b'X', b'Z', 0, 0]),
            Some(Compression::Xz)
        );
        assert_eq!(
            sniff_archive(&[0x28, 0xb5, 0x2f, 0xfd, 1]),
            Some(Compression::Zstd)
        );
        assert_eq!(sniff_archive(b"FROM busybox\nRUN true\n"), None);
        assert_eq!(sniff_archive(&[0u8; 1024]), None);
        let mut bad = tar_bytes();
        bad[0] ^= 1;
        assert_eq!(sniff_archive(&bad), None, "a wrong checksum is not a tar");
    }

    #[test]
    fn every_compression_unpacks_and_a_truncated_stream_is_an_error() {
        let tar = tar_bytes();
        let gz = {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            io::Write::write_all(&mut e, &tar).unwrap();
            e.finish().unwrap()
        };
        let bz = {
            let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
            io::Write::write_all(&mut e, &tar).unwrap();
            e.finish().unwrap()
        };
        let xz = {
            let mut out = Vec::new();
            lzma_rs::xz_compress(&mut &tar[..], &mut out).unwrap();
            out
        };
        let zst = zstd::encode_all(&tar[..], 1).unwrap();
        for (what, bytes) in [
            ("tar", &tar),
            ("gz", &gz),
            ("bz2", &bz),
            ("xz", &xz),
            ("zst", &zst),
        ] {
            let dir = tempfile::tempdir().unwrap();
            unpack_all(bytes, dir.path(), what).unwrap();
            assert_eq!(
                std::fs::read(dir.path().join("Dockerfile")).unwrap(),
                b"abc",
                "{what}"
            );
            if what != "tar" {
                let dir = tempfile::tempdir().unwrap();
                let cut = bytes[..bytes.len() - 8].to_vec();
                let r = unpack_all(&cut, dir.path(), what);
                assert!(r.is_err(), "{what}: a truncated stream was accepted");
            }
        }
    }
}
