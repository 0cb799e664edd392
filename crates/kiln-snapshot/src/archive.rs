//! Archives as `docker build` takes them (a context tarball, an archive ADD unpacks): the
//! compression read from the first bytes (gzip, bzip2, xz, zstd, else none), whether a block is
//! a tar header, and a streaming decompressor for each.

use std::io::{self, BufReader, Read};

/// The compression of an archive, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Bzip2,
    Xz,
    Zstd,
}

/// Whether `head` (the first bytes, 1024 as buildx peeks, or all there is) starts an archive, and how it
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
pub fn is_tar_header(head: &[u8]) -> bool {
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

/// The compression `magic` (an archive's first bytes) names; `None` for anything else.
pub fn compression_of(magic: &[u8]) -> Compression {
    sniff_archive(magic)
        .filter(|c| *c != Compression::None)
        .unwrap_or(Compression::None)
}

/// A reader of `reader`'s bytes decompressed as `c` says; a decoder that cannot start fails
/// on the first read.
pub fn decompress(reader: Box<dyn Read + Send>, c: Compression) -> Box<dyn Read + Send> {
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
    fn every_compression_decompresses() {
        let tar = tar_bytes();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut gz, &tar).unwrap();
        let gz = gz.finish().unwrap();
        let mut bz = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
        io::Write::write_all(&mut bz, &tar).unwrap();
        let bz = bz.finish().unwrap();
        let mut xz = Vec::new();
        lzma_rs::xz_compress(&mut &tar[..], &mut xz).unwrap();
        let zst = zstd::encode_all(&tar[..], 1).unwrap();
        for bytes in [&tar, &gz, &bz, &xz, &zst] {
            let c = compression_of(bytes);
            let mut out = Vec::new();
            decompress(Box::new(io::Cursor::new(bytes.clone())), c)
                .read_to_end(&mut out)
                .unwrap();
            assert_eq!(out, tar, "{c:?}");
        }
        assert_eq!(compression_of(b"plain text"), Compression::None);
    }
}
