//! Checking layers on the way into the store (`kiln load`, `kiln import`): the bytes are copied
//! to the store and, in the same pass, decompressed and read by the layer checker
//! (`kiln_snapshot::check_layer_tar`), which refuses what the applier would refuse. A layer
//! that can never be unpacked is refused when it arrives, not on first use, and a big layer
//! is read once.

use std::io::{self, Read, Write};

use kiln_oci::media_type::LayerCompression;
use kiln_oci::{Digest, Sha256Writer};

/// What a stored file's bytes are, read as a layer.
#[derive(Debug)]
pub enum LayerScan {
    /// A plain, gzip or zstd tar the applier would unpack, with its diff ID (the digest of the
    /// uncompressed tar).
    Layer {
        compression: LayerCompression,
        diff_id: Digest,
    },
    /// Not one: what the checker refused (for a file that is no layer at all, such as a
    /// config, this is simply its verdict, unused).
    Refused(kiln_snapshot::Error),
}

/// Copies all of `input` into `out`, reading it as a layer on the way. Errors are those of
/// reading `input` or writing `out`; a refused layer is a [`LayerScan::Refused`].
pub fn copy_checking_layer(input: impl Read, out: impl Write) -> io::Result<LayerScan> {
    let mut tee = Tee {
        input,
        out,
        failed: None,
    };
    let mut magic = [0u8; 4];
    let scan = match read_up_to(&mut tee, &mut magic) {
        Ok(n) => scan(&magic[..n], io::Cursor::new(&magic[..n]).chain(&mut tee)),
        // Only the copy can fail here; its error is returned below.
        Err(source) => LayerScan::Refused(kiln_snapshot::Error::ReadTar { source }),
    };
    if let Some(e) = tee.failed.take() {
        return Err(e);
    }
    io::copy(&mut tee, &mut io::sink())?;
    match tee.failed.take() {
        Some(e) => Err(e),
        None => Ok(scan),
    }
}

fn scan(magic: &[u8], bytes: impl Read) -> LayerScan {
    let compression = match magic {
        [0x1f, 0x8b, ..] => LayerCompression::Gzip,
        [0x28, 0xb5, 0x2f, 0xfd] => LayerCompression::Zstd,
        _ => LayerCompression::None,
    };
    let bytes = io::BufReader::new(bytes);
    let decoded: Box<dyn Read + '_> = match compression {
        LayerCompression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(bytes)),
        LayerCompression::Zstd => match zstd::stream::read::Decoder::with_buffer(bytes) {
            Ok(d) => Box::new(d),
            Err(source) => return LayerScan::Refused(kiln_snapshot::Error::ReadTar { source }),
        },
        LayerCompression::None => Box::new(bytes),
    };
    let mut hashing = HashingReader {
        inner: decoded,
        hash: Sha256Writer::new(io::sink()),
    };
    if let Err(e) = kiln_snapshot::check_layer_tar(&mut hashing) {
        return LayerScan::Refused(e);
    }
    // What follows the end-of-archive marker counts towards the diff ID too.
    if let Err(source) = io::copy(&mut hashing, &mut io::sink()) {
        return LayerScan::Refused(kiln_snapshot::Error::ReadTar { source });
    }
    LayerScan::Layer {
        compression,
        diff_id: hashing.hash.finish().1,
    }
}

/// Reads `input`, writing every byte read to `out`; remembers the first failure of either so
/// that the checker's errors are not taken for the copy's.
struct Tee<R, W> {
    input: R,
    out: W,
    failed: Option<io::Error>,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.failed.is_some() {
            return Err(io::Error::other("the copy failed"));
        }
        let n = match self.input.read(buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
            Err(e) => {
                self.failed = Some(e);
                return Err(io::Error::other("the copy failed"));
            }
        };
        if let Err(e) = self.out.write_all(&buf[..n]) {
            self.failed = Some(e);
            return Err(io::Error::other("the copy failed"));
        }
        Ok(n)
    }
}

struct HashingReader<R> {
    inner: R,
    hash: Sha256Writer<io::Sink>,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.write_all(&buf[..n])?;
        Ok(n)
    }
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(bytes).unwrap();
        gz.finish().unwrap()
    }

    #[test]
    fn copies_everything_and_gives_the_diff_id_of_each_compression() {
        let plain = tar(&[("etc/hostname", b"box\n")]);
        let zstd = zstd::encode_all(plain.as_slice(), 1).unwrap();
        for (bytes, compression) in [
            (plain.clone(), LayerCompression::None),
            (gzip(&plain), LayerCompression::Gzip),
            (zstd, LayerCompression::Zstd),
        ] {
            let mut out = Vec::new();
            let scan = copy_checking_layer(bytes.as_slice(), &mut out).unwrap();
            assert_eq!(out, bytes);
            let LayerScan::Layer {
                compression: c,
                diff_id,
            } = scan
            else {
                panic!("{scan:?}");
            };
            assert_eq!((c, diff_id), (compression, kiln_oci::sha256(&plain)));
        }
    }

    #[test]
    fn a_refused_layer_is_still_copied_whole() {
        let bad = gzip(&tar(&[("../../etc/cron.d/x", b"* * * * * root sh\n")]));
        let mut out = Vec::new();
        let scan = copy_checking_layer(bad.as_slice(), &mut out).unwrap();
        assert_eq!(out, bad);
        let LayerScan::Refused(kiln_snapshot::Error::BadEntry { path, reason }) = scan else {
            panic!("{scan:?}");
        };
        assert_eq!(path, "../../etc/cron.d/x");
        assert!(reason.contains("leaves the root"), "{reason}");

        let json = br#"{"architecture":"amd64"}"#;
        let mut out = Vec::new();
        let scan = copy_checking_layer(&json[..], &mut out).unwrap();
        assert_eq!(out, json);
        assert!(matches!(scan, LayerScan::Refused(_)), "{scan:?}");
    }

    #[test]
    fn a_gzip_layer_cut_short_is_refused() {
        let whole = gzip(&tar(&[("f", &[7u8; 10_000])]));
        let cut = &whole[..whole.len() / 2];
        let scan = copy_checking_layer(cut, io::sink()).unwrap();
        assert!(matches!(scan, LayerScan::Refused(_)), "{scan:?}");
    }
}
