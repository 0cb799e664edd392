//! The parallel compressors: gzip members and zstd frames over fixed-size blocks, each block
//! compressed on its own, so the output depends only on the input and the level (see the
//! module docs of `compress`).

use std::io::{self, Read, Write};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::Compression;

/// gzip member size: large enough that restarting the 32 KiB window costs nothing measurable.
pub(super) const GZIP_BLOCK: usize = 1 << 20;
/// zstd frame size: larger than gzip's, since zstd's window reaches further back.
const ZSTD_BLOCK: usize = 4 << 20;

/// Compresses `input` into `out`; the bytes depend only on the input, `kind` and `level`.
pub fn compress(
    mut input: impl Read,
    out: &mut impl Write,
    kind: Compression,
    level: i32,
) -> io::Result<()> {
    match kind {
        Compression::Uncompressed => io::copy(&mut input, out).map(drop),
        Compression::Gzip => gzip_members(input, out, level, threads()),
        Compression::Zstd => zstd_frames(input, out, level, threads()),
    }
}

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// gzip as independent members of `GZIP_BLOCK` input bytes each, `workers` at a time.
fn gzip_members(
    input: impl Read,
    out: &mut impl Write,
    level: i32,
    workers: usize,
) -> io::Result<()> {
    let level = flate2::Compression::new(level.clamp(0, 9) as u32);
    in_blocks(input, out, GZIP_BLOCK, workers, |b| {
        let level = match block_mode(b) {
            BlockMode::Store => flate2::Compression::none(),
            BlockMode::HuffmanOnly if level.level() > 0 => return gzip_huffman_only(b),
            _ => level,
        };
        let mut gz = flate2::GzBuilder::new().write(Vec::with_capacity(b.len() / 2), level);
        gz.write_all(b)?;
        gz.finish()
    })
}

/// zstd as independent frames of `ZSTD_BLOCK` input bytes each (with their checksums),
/// `workers` at a time.
fn zstd_frames(
    input: impl Read,
    out: &mut impl Write,
    level: i32,
    workers: usize,
) -> io::Result<()> {
    in_blocks(input, out, ZSTD_BLOCK, workers, |b| {
        let mut enc = zstd::stream::write::Encoder::new(Vec::with_capacity(b.len() / 2), level)?;
        enc.include_checksum(true)?;
        enc.write_all(b)?;
        enc.finish()
    })
}

/// Cuts `input` into blocks of `size` bytes and writes each one compressed on its own by
/// `compress`, `workers` blocks at a time, in order. An empty input is one empty block, so the
/// output is still a valid stream.
fn in_blocks(
    mut input: impl Read,
    out: &mut impl Write,
    size: usize,
    workers: usize,
    compress: impl Fn(&Vec<u8>) -> io::Result<Vec<u8>> + Sync,
) -> io::Result<()> {
    let batch = workers.max(1) * 4;
    let mut wrote_any = false;
    loop {
        let mut blocks = Vec::with_capacity(batch);
        let mut at_end = false;
        while blocks.len() < batch {
            let block = read_block(&mut input, size)?;
            at_end = block.len() < size;
            if !block.is_empty() {
                blocks.push(block);
            }
            if at_end {
                break;
            }
        }
        if blocks.is_empty() && wrote_any {
            break;
        }
        if blocks.is_empty() {
            blocks.push(Vec::new());
        }
        for c in parallel_map(&blocks, &compress)? {
            out.write_all(&c)?;
        }
        wrote_any = true;
        if at_end {
            break;
        }
    }
    Ok(())
}

/// How a block is best deflated, judged from four 16 KiB samples: the bytes alone decide, so the
/// output stays reproducible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlockMode {
    /// Neither level 1 nor Huffman coding shrinks any sample by 2% (random or already
    /// compressed data): stored, as small and ten times faster than a search for matches that
    /// are not there.
    Store,
    /// Matches shrink no sample by 3% more than Huffman coding alone does (base64, hex,
    /// uniformly random text): Huffman coding only, about as small and several times faster
    /// than level 6, whose match search finds nothing to use.
    HuffmanOnly,
    Deflate,
}

fn block_mode(block: &[u8]) -> BlockMode {
    const SAMPLE: usize = 16 << 10;
    if block.len() < 4 * SAMPLE {
        return BlockMode::Deflate;
    }
    let samples = (0..4).map(|i| {
        let start = i * (block.len() - SAMPLE) / 3;
        &block[start..start + SAMPLE]
    });
    let mut store = true;
    let mut huffman = true;
    for sample in samples {
        let mut enc = flate2::write::DeflateEncoder::new(
            Vec::with_capacity(SAMPLE + 64),
            flate2::Compression::fast(),
        );
        let Ok(fast) = enc.write_all(sample).and_then(|()| enc.finish()) else {
            return BlockMode::Deflate;
        };
        // zlib-rs' level 1 codes with fixed Huffman tables, so it cannot shrink text such as
        // base64 whose gain is all in the coding: Huffman coding alone is measured as well.
        let huff = huffman_only(sample, -15).map_or(usize::MAX, |o| o.len());
        store &= fast.len().min(huff) * 100 >= sample.len() * 98;
        huffman &= fast.len() * 100 >= huff * 97;
    }
    if store {
        BlockMode::Store
    } else if huffman {
        BlockMode::HuffmanOnly
    } else {
        BlockMode::Deflate
    }
}

/// Deflate with Huffman coding only (zlib's Z_HUFFMAN_ONLY), which flate2 does not expose; its
/// zlib-rs backend does. `window_bits`: -15 for raw deflate, 31 for a gzip member.
fn huffman_only(input: &[u8], window_bits: i32) -> io::Result<Vec<u8>> {
    use zlib_rs::{DeflateConfig, Method, Strategy, compress_bound, compress_slice};
    let mut out = vec![0u8; compress_bound(input.len()) + 64];
    let config = DeflateConfig {
        level: 6,
        method: Method::Deflated,
        window_bits,
        mem_level: 8,
        strategy: Strategy::HuffmanOnly,
    };
    let (written, rc) = compress_slice(&mut out, input, config);
    if rc != zlib_rs::ReturnCode::Ok {
        return Err(io::Error::other(format!("deflate (Huffman only): {rc:?}")));
    }
    let n = written.len();
    out.truncate(n);
    Ok(out)
}

fn gzip_huffman_only(block: &[u8]) -> io::Result<Vec<u8>> {
    huffman_only(block, 31)
}

fn read_block(input: &mut impl Read, size: usize) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(size);
    input.take(size as u64).read_to_end(&mut buf)?;
    Ok(buf)
}

/// Maps `f` over `items` on up to `threads()` scoped threads, keeping the order; the first
/// error wins.
pub(super) fn parallel_map<T: Sync, R: Send, E: Send>(
    items: &[T],
    f: impl Fn(&T) -> std::result::Result<R, E> + Sync,
) -> std::result::Result<Vec<R>, E> {
    if items.len() <= 1 {
        return items.iter().map(&f).collect();
    }
    let next = AtomicUsize::new(0);
    let slots: Vec<Mutex<Option<std::result::Result<R, E>>>> =
        items.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..threads().min(items.len()) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    let r = f(item);
                    if let Ok(mut slot) = slots[i].lock() {
                        *slot = Some(r);
                    }
                }
            });
        }
    });
    slots
        .into_iter()
        .map(|m| {
            m.into_inner()
                .ok()
                .flatten()
                .expect("every index is taken by a worker")
        })
        .collect()
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Compressible but not trivial: text-like runs mixed with pseudo-random bytes.
    pub(crate) fn sample(len: usize) -> Vec<u8> {
        let mut x: u64 = 0x9e3779b97f4a7c15;
        (0..len)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if (i / 4096) % 3 == 0 {
                    (x & 0xff) as u8
                } else {
                    b"the quick brown fox "[i % 20]
                }
            })
            .collect()
    }

    #[test]
    fn gzip_members_decode_and_do_not_depend_on_workers() {
        let data = sample(5 * GZIP_BLOCK + 1234);
        let mut outs = Vec::new();
        for workers in [1, 2, 3, 8] {
            let mut out = Vec::new();
            gzip_members(&data[..], &mut out, 6, workers).unwrap();
            outs.push(out);
        }
        assert!(outs.iter().all(|o| *o == outs[0]));
        let mut back = Vec::new();
        flate2::read::MultiGzDecoder::new(&outs[0][..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
        // Six members: five full blocks and the tail.
        let members = outs[0].windows(3).filter(|w| *w == [0x1f, 0x8b, 8]).count();
        assert!(members >= 6, "{members}");
    }

    #[test]
    fn match_poor_text_gets_huffman_coding_only_and_stays_as_small() {
        // Like base64 of random bytes: 64 symbols, no repeats for matches to use.
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut x: u64 = 0x853c49e6748fea9b;
        let text: Vec<u8> = (0..2 * GZIP_BLOCK + 999)
            .map(|i| {
                if i % 77 == 76 {
                    return b'\n';
                }
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                ALPHABET[(x % 64) as usize]
            })
            .collect();
        assert_eq!(block_mode(&text[..GZIP_BLOCK]), BlockMode::HuffmanOnly);
        let mut outs = Vec::new();
        for workers in [1, 2] {
            let mut out = Vec::new();
            gzip_members(&text[..], &mut out, 6, workers).unwrap();
            outs.push(out);
        }
        assert_eq!(outs[0], outs[1], "independent of the workers");
        let mut back = Vec::new();
        flate2::read::MultiGzDecoder::new(&outs[0][..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, text);
        let mut level6 = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        level6.write_all(&text).unwrap();
        let level6 = level6.finish().unwrap();
        assert!(
            outs[0].len() * 100 <= level6.len() * 102,
            "Huffman only {} against level 6 {}",
            outs[0].len(),
            level6.len()
        );
    }

    #[test]
    fn random_blocks_are_stored_and_text_is_compressed() {
        let mut x: u64 = 0x2545f4914f6cdd1d;
        let random: Vec<u8> = (0..GZIP_BLOCK)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert_eq!(block_mode(&random), BlockMode::Store);
        assert_eq!(block_mode(&sample(GZIP_BLOCK)), BlockMode::Deflate);
        let mut data = random.clone();
        data.extend(sample(GZIP_BLOCK));
        let mut out = Vec::new();
        gzip_members(&data[..], &mut out, 6, 2).unwrap();
        // Stored: a few bytes over the input; the text block shrinks.
        assert!(out.len() < random.len() + GZIP_BLOCK / 2, "{}", out.len());
        let mut back = Vec::new();
        flate2::read::MultiGzDecoder::new(&out[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn empty_input_is_one_gzip_member() {
        let mut out = Vec::new();
        gzip_members(&b""[..], &mut out, 6, 2).unwrap();
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&out[..])
            .read_to_end(&mut back)
            .unwrap();
        assert!(back.is_empty());
    }

    #[test]
    fn zstd_output_does_not_depend_on_workers() {
        // Several frames, more than one batch at 1 worker.
        let data = sample(40 << 20);
        let mut outs = Vec::new();
        for workers in [1, 2, 4] {
            let mut out = Vec::new();
            zstd_frames(&data[..], &mut out, 3, workers).unwrap();
            outs.push(out);
        }
        assert!(outs.iter().all(|o| *o == outs[0]));
        assert_eq!(zstd::decode_all(&outs[0][..]).unwrap(), data);
    }
}
