use std::io::{self, Write};

use oci_spec::image::Digest;
use sha2::{Digest as _, Sha256};

/// The sha256 digest of `bytes`.
pub fn sha256(bytes: &[u8]) -> Digest {
    from_hex(&sha256_hex(bytes))
}

/// The lowercase hex sha256 of `bytes`, without the `sha256:` prefix.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn from_hex(hex: &str) -> Digest {
    format!("sha256:{hex}")
        .parse()
        .expect("a sha256 hex string is a valid digest")
}

/// A writer that hashes and counts everything written through it, so a blob is digested while
/// it streams instead of being read a second time.
pub struct Sha256Writer<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> Sha256Writer<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            written: 0,
        }
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Returns the inner writer, the digest and the byte count.
    pub fn finish(self) -> (W, Digest, u64) {
        let hex = hex::encode(self.hasher.finalize());
        (self.inner, from_hex(&hex), self.written)
    }
}

impl<W: Write> Write for Sha256Writer<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writer_matches_one_shot_hash() {
        let mut w = Sha256Writer::new(Vec::new());
        w.write_all(b"hello ").unwrap();
        w.write_all(b"world").unwrap();
        let (buf, d, n) = w.finish();
        assert_eq!(buf, b"hello world");
        assert_eq!(n, 11);
        assert_eq!(d, sha256(b"hello world"));
        assert_eq!(
            d.digest(),
            "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"
        );
    }
}
