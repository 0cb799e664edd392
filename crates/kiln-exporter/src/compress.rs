//! Layer blobs in the compression an export asks for, and the exported manifest built from them.
//!
//! Builds store layers as plain tar blobs (blob digest = diffID). An export (push, `type=oci`,
//! `type=docker`, `kiln save`) derives its own manifest from the local one, each layer replaced
//! by a blob in the requested compression: the blob held when acceptable, else one compressed
//! earlier (recorded in [`BlobVariants`]), else one compressed now and recorded. Without
//! `force`, an already-compressed blob is kept whatever its compression, as BuildKit does.
//!
//! Compression is parallel and its output depends only on the input and the level, never on
//! the number of threads, so that builds are reproducible:
//! - gzip: the tar is cut into blocks of a fixed size, each compressed on its own into a
//!   complete gzip member (mtime 0); the members concatenated are one valid gzip stream (RFC
//!   1952 allows several members, and every gunzip, Go's and Docker's included, reads them).
//!   Chosen over a pigz-style shared dictionary because independent members need no ordering
//!   between workers and lose well under 1% at 1 MiB blocks.
//! - zstd: the same scheme with frames of `ZSTD_BLOCK` input bytes, each compressed by one
//!   thread; concatenated frames are one valid zstd stream. libzstd's own multithreaded mode was
//!   used before, but its output changed with timing under load (a unit test caught it), and a
//!   build is only reproducible if its bytes depend on its input alone.

use std::collections::BTreeMap;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use kiln_content::ContentStore;
use kiln_oci::media_type::{self, LayerCompression};
use kiln_oci::{Digest, parse_digest};
use serde::{Deserialize, Serialize};

use crate::{Error, Result, atomic_write, image, io_err};

/// gzip member size: large enough that restarting the 32 KiB window costs nothing measurable.
const GZIP_BLOCK: usize = 1 << 20;
/// zstd frame size: larger than gzip's, since zstd's window reaches further back.
const ZSTD_BLOCK: usize = 4 << 20;
pub const DEFAULT_GZIP_LEVEL: i32 = 6;
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

/// The compression of exported layer blobs (`compression=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    Uncompressed,
    Gzip,
    Zstd,
}

impl Compression {
    fn name(self) -> &'static str {
        match self {
            Compression::Uncompressed => "uncompressed",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }

    fn of(c: LayerCompression) -> Compression {
        match c {
            LayerCompression::None => Compression::Uncompressed,
            LayerCompression::Gzip => Compression::Gzip,
            LayerCompression::Zstd => Compression::Zstd,
        }
    }
}

/// `compression=`, `compression-level=`, `force-compression=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompressionOpts {
    pub kind: Compression,
    pub level: Option<i32>,
    pub force: bool,
}

impl Default for CompressionOpts {
    fn default() -> Self {
        CompressionOpts {
            kind: Compression::Gzip,
            level: None,
            force: false,
        }
    }
}

impl CompressionOpts {
    fn level(&self) -> i32 {
        match (self.kind, self.level) {
            (_, Some(l)) => l,
            (Compression::Zstd, None) => DEFAULT_ZSTD_LEVEL,
            _ => DEFAULT_GZIP_LEVEL,
        }
    }

    /// The record key of a variant made with these options.
    fn key(&self) -> String {
        match self.kind {
            Compression::Uncompressed => "uncompressed".into(),
            // `-f`: zstd in independent frames (earlier records hold libzstd's multithreaded
            // output, which must not be taken for this one).
            Compression::Zstd => format!("zstd-{}-f", self.level()),
            k => format!("{}-{}", k.name(), self.level()),
        }
    }
}

/// How an export derives its manifest from the local one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportOpts {
    pub compression: CompressionOpts,
    /// OCI media types (`oci-mediatypes=`); a zstd layer makes the manifest OCI regardless.
    pub oci: bool,
    /// `rewrite-timestamp=true` with `SOURCE_DATE_EPOCH`: file times in layers clamped to it.
    pub rewrite_timestamp: Option<i64>,
    /// `annotation.KEY=VALUE` / `annotation-manifest.KEY=VALUE`: annotations of the manifest.
    pub manifest_annotations: BTreeMap<String, String>,
    /// How many leading layers came from the base image: `rewrite-timestamp` leaves them as
    /// pulled, as BuildKit rewrites only the layers a build made.
    pub base_layers: usize,
}

impl ExportOpts {
    /// The local store's own form: held blobs as they are, OCI media types.
    pub fn store() -> ExportOpts {
        ExportOpts {
            compression: CompressionOpts {
                kind: Compression::Uncompressed,
                level: None,
                force: false,
            },
            oci: true,
            ..ExportOpts::default()
        }
    }
}

/// The manifest an export wrote into the content store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedImage {
    pub manifest: Digest,
    pub size: u64,
    pub media_type: String,
    pub config: Digest,
}

/// Records of blobs made from a layer: `<dir>/<diffID hex>/<key>.json` holding the blob's digest
/// and size, where the key is `gzip-6`, `zstd-3-f`, `uncompressed` or `rewrite-<epoch>` (a tar
/// with its times clamped). Written atomically; a record whose blob is gone is ignored.
#[derive(Debug, Clone)]
pub struct BlobVariants {
    dir: PathBuf,
}

#[derive(Debug, Serialize, Deserialize)]
struct VariantRecord {
    digest: String,
    size: u64,
}

impl BlobVariants {
    pub fn open(dir: &Path) -> Result<BlobVariants> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        Ok(BlobVariants {
            dir: dir.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn record_path(&self, diff_id: &Digest, key: &str) -> PathBuf {
        self.dir.join(diff_id.digest()).join(format!("{key}.json"))
    }

    /// The blob recorded for `diff_id` under `key`, if it is still in the store at its size.
    fn get(&self, content: &ContentStore, diff_id: &Digest, key: &str) -> Option<(Digest, u64)> {
        let bytes = std::fs::read(self.record_path(diff_id, key)).ok()?;
        let record: VariantRecord = serde_json::from_slice(&bytes).ok()?;
        let digest = parse_digest(&record.digest).ok()?;
        (content.size(&digest).ok()?? == record.size).then_some((digest, record.size))
    }

    fn put(&self, diff_id: &Digest, key: &str, digest: &Digest, size: u64) -> Result<()> {
        let path = self.record_path(diff_id, key);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        let record = VariantRecord {
            digest: digest.to_string(),
            size,
        };
        atomic_write(&path, &serde_json::to_vec(&record).unwrap_or_default())
    }

    /// Every layer with records, and the blobs they name (present or not).
    pub fn list(&self) -> Vec<(Digest, Vec<Digest>)> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for entry in rd.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(diff_id) = parse_digest(&format!("sha256:{name}")) else {
                continue;
            };
            let blobs = self.blobs_of(&diff_id);
            out.push((diff_id, blobs));
        }
        out.sort_by(|a, b| a.0.digest().cmp(b.0.digest()));
        out
    }

    /// The blobs recorded for a layer, by its diffID (a plain layer's blob digest).
    pub fn blobs_of(&self, diff_id: &Digest) -> Vec<Digest> {
        let dir = self.dir.join(diff_id.digest());
        let mut out = Vec::new();
        for rec in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if let Ok(bytes) = std::fs::read(rec.path())
                && let Ok(r) = serde_json::from_slice::<VariantRecord>(&bytes)
                && let Ok(d) = parse_digest(&r.digest)
            {
                out.push(d);
            }
        }
        out
    }

    /// Forgets every record of `diff_id` (the blobs stay; the caller removes those).
    pub fn remove(&self, diff_id: &Digest) -> Result<()> {
        let dir = self.dir.join(diff_id.digest());
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(dir)(e)),
            _ => Ok(()),
        }
    }
}

/// A layer as a manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LayerBlob {
    digest: Digest,
    size: u64,
    compression: Compression,
}

/// The parts of a local image an export derives its manifest from.
struct LocalImage {
    doc: serde_json::Value,
    config_digest: Digest,
    config_bytes: Vec<u8>,
    diff_ids: Vec<Digest>,
    /// Per layer, its blob as held; `None` for a layer of an unknown media type (kept as is).
    held: Vec<Option<LayerBlob>>,
}

impl LocalImage {
    fn read(content: &ContentStore, manifest: &Digest) -> Result<LocalImage> {
        let bytes = image::read_metadata(content, manifest)?;
        let doc: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|source| Error::InvalidManifest {
                digest: manifest.clone(),
                source,
            })?;
        let media = doc["mediaType"]
            .as_str()
            .unwrap_or(media_type::OCI_MANIFEST);
        if !media_type::is_manifest(media) {
            return Err(Error::NotAManifest {
                digest: manifest.clone(),
                media_type: media.to_string(),
            });
        }
        let bad = |why: &str| bad_manifest(manifest, why);
        let config_digest = doc["config"]["digest"]
            .as_str()
            .and_then(|d| parse_digest(d).ok())
            .ok_or_else(|| bad("manifest has no config digest"))?;
        let config_bytes = image::read_metadata(content, &config_digest)?;
        let diff_ids: Vec<Digest> = crate::config_diff_ids(&config_bytes)
            .map_err(|source| Error::InvalidConfig {
                digest: config_digest.clone(),
                source,
            })?
            .iter()
            .map(|d| parse_digest(d).map_err(|_| bad("config lists an invalid diff ID")))
            .collect::<Result<_>>()?;
        let held: Vec<Option<LayerBlob>> = doc["layers"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|l| {
                let digest = l["digest"].as_str().and_then(|d| parse_digest(d).ok());
                let comp = l["mediaType"]
                    .as_str()
                    .and_then(media_type::layer_compression);
                match (digest, comp) {
                    (Some(digest), Some(c)) => Ok(Some(LayerBlob {
                        digest,
                        size: l["size"].as_u64().unwrap_or(0),
                        compression: Compression::of(c),
                    })),
                    (Some(_), None) => Ok(None),
                    (None, _) => Err(bad("a layer has no digest")),
                }
            })
            .collect::<Result<_>>()?;
        if held.len() != diff_ids.len() {
            return Err(bad(
                "the manifest's layers and the config's diff IDs differ in number",
            ));
        }
        Ok(LocalImage {
            doc,
            config_digest,
            config_bytes,
            diff_ids,
            held,
        })
    }

    /// `(index, held blob, diff ID)` of each layer an export may replace.
    fn jobs(&self) -> Vec<(usize, LayerBlob, Digest)> {
        self.held
            .iter()
            .zip(&self.diff_ids)
            .enumerate()
            .filter_map(|(i, (h, d))| h.clone().map(|h| (i, h, d.clone())))
            .collect()
    }
}

fn bad_manifest(manifest: &Digest, why: &str) -> Error {
    Error::InvalidArchive {
        path: PathBuf::from(manifest.to_string()),
        reason: why.to_string(),
    }
}

/// A layer an export with given options would compress now: no acceptable blob of it exists.
#[derive(Debug, Clone)]
pub struct PendingLayer {
    held: LayerBlob,
    diff_id: Digest,
    opts: CompressionOpts,
}

impl PendingLayer {
    /// The diff ID of the layer (after `rewrite-timestamp`, when asked for).
    pub fn diff_id(&self) -> &Digest {
        &self.diff_id
    }

    /// Compresses the layer into the content store exactly as [`export_image`] would, and
    /// records the blob so that exports find it; every compressed byte is also written to
    /// `tee` as it is made (for an upload that runs meanwhile). Returns the blob's digest and
    /// size. A failing `tee` fails the compression, so a tee that may go away should swallow
    /// its own errors.
    pub fn compress_into(
        &self,
        content: &ContentStore,
        variants: &BlobVariants,
        tee: impl Write,
    ) -> Result<(Digest, u64)> {
        let blob = compress_layer(
            content,
            variants,
            &self.held,
            &self.diff_id,
            &self.opts,
            tee,
        )?;
        Ok((blob.digest, blob.size))
    }
}

/// The layers of the local image `manifest` that [`export_image`] with `opts` would compress
/// now, in manifest order. `rewrite_timestamp` layers are rewritten (and recorded) first, as
/// the export would.
pub fn pending_layers(
    content: &ContentStore,
    variants: &BlobVariants,
    manifest: &Digest,
    opts: &ExportOpts,
) -> Result<Vec<PendingLayer>> {
    let local = LocalImage::read(content, manifest)?;
    let jobs = local.jobs();
    let results = parallel_map(&jobs, |(i, held, diff_id)| {
        let (held, diff_id) = match opts.rewrite_timestamp {
            Some(epoch) if *i >= opts.base_layers => {
                rewritten(content, variants, held, diff_id, epoch)?
            }
            _ => (held.clone(), diff_id.clone()),
        };
        Ok(
            match existing_blob(content, variants, &held, &diff_id, &opts.compression) {
                Some(_) => None,
                None => Some(PendingLayer {
                    held,
                    diff_id,
                    opts: opts.compression,
                }),
            },
        )
    })?;
    Ok(results.into_iter().flatten().collect())
}

/// Derives the manifest `opts` asks for from the local image `manifest`, compressing (in
/// parallel) the layers that need it, and stores it (and its config, when `rewrite_timestamp`
/// changed the diffIDs) in `content`.
pub fn export_image(
    content: &ContentStore,
    variants: &BlobVariants,
    manifest: &Digest,
    opts: &ExportOpts,
) -> Result<ExportedImage> {
    let LocalImage {
        mut doc,
        config_digest,
        config_bytes,
        diff_ids,
        held,
    } = LocalImage::read(content, manifest)?;
    let bad = |why: &str| bad_manifest(manifest, why);
    let jobs: Vec<(usize, LayerBlob, Digest)> = held
        .iter()
        .zip(&diff_ids)
        .enumerate()
        .filter_map(|(i, (h, d))| h.clone().map(|h| (i, h, d.clone())))
        .collect();
    let results = parallel_map(&jobs, |(i, held, diff_id)| {
        let (held, diff_id) = match opts.rewrite_timestamp {
            Some(epoch) if *i >= opts.base_layers => {
                rewritten(content, variants, held, diff_id, epoch)?
            }
            _ => (held.clone(), diff_id.clone()),
        };
        let blob = layer_blob(content, variants, &held, &diff_id, &opts.compression)?;
        Ok((diff_id, blob))
    })?;

    let oci = opts.oci
        || results
            .iter()
            .any(|(_, b)| b.compression == Compression::Zstd)
        || held.iter().any(|h| {
            h.as_ref()
                .is_some_and(|h| h.compression == Compression::Zstd)
        });
    let mut new_diff_ids = diff_ids.clone();
    let layers = doc["layers"]
        .as_array_mut()
        .ok_or_else(|| bad("no layers"))?;
    for ((i, _, _), (diff_id, blob)) in jobs.iter().zip(results) {
        new_diff_ids[*i] = diff_id;
        let l = &mut layers[*i];
        l["mediaType"] = layer_media_type(blob.compression, oci).into();
        l["digest"] = blob.digest.to_string().into();
        l["size"] = blob.size.into();
    }
    let config = if new_diff_ids != diff_ids {
        let mut cfg: serde_json::Value =
            serde_json::from_slice(&config_bytes).map_err(|source| Error::InvalidConfig {
                digest: config_digest.clone(),
                source,
            })?;
        cfg["rootfs"]["diff_ids"] = new_diff_ids
            .iter()
            .map(|d| serde_json::Value::from(d.to_string()))
            .collect();
        let cfg_bytes = serde_json::to_vec(&cfg).unwrap_or_default();
        let digest = put(content, &cfg_bytes)?;
        doc["config"]["digest"] = digest.to_string().into();
        doc["config"]["size"] = cfg_bytes.len().into();
        digest
    } else {
        config_digest
    };
    let (manifest_type, config_type) = if oci {
        (media_type::OCI_MANIFEST, media_type::OCI_CONFIG)
    } else {
        (media_type::DOCKER_MANIFEST, media_type::DOCKER_CONFIG)
    };
    doc["mediaType"] = manifest_type.into();
    doc["config"]["mediaType"] = config_type.into();
    if !opts.manifest_annotations.is_empty() {
        let mut all: BTreeMap<String, serde_json::Value> = doc["annotations"]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        for (k, v) in &opts.manifest_annotations {
            all.insert(k.clone(), v.clone().into());
        }
        doc["annotations"] = serde_json::to_value(all).unwrap_or_default();
    }
    let out = serde_json::to_vec(&doc).unwrap_or_default();
    let digest = put(content, &out)?;
    Ok(ExportedImage {
        manifest: digest,
        size: out.len() as u64,
        media_type: manifest_type.to_string(),
        config,
    })
}

fn put(content: &ContentStore, bytes: &[u8]) -> Result<Digest> {
    content.put(bytes, None).map_err(|source| Error::ReadBlob {
        digest: kiln_oci::sha256(bytes),
        source: Box::new(source),
    })
}

/// The media type of a layer in a Docker or an OCI manifest (zstd exists in OCI terms only).
pub fn layer_media_type(c: Compression, oci: bool) -> &'static str {
    match (c, oci) {
        (Compression::Uncompressed, false) => media_type::DOCKER_LAYER_TAR,
        (Compression::Gzip, false) => media_type::DOCKER_LAYER_GZIP,
        (Compression::Uncompressed, true) => media_type::OCI_LAYER_TAR,
        (Compression::Gzip, true) => media_type::OCI_LAYER_GZIP,
        (Compression::Zstd, _) => media_type::OCI_LAYER_ZSTD,
    }
}

/// The blob for `diff_id` in the compression `opts` asks for (see the module's rules).
fn layer_blob(
    content: &ContentStore,
    variants: &BlobVariants,
    held: &LayerBlob,
    diff_id: &Digest,
    opts: &CompressionOpts,
) -> Result<LayerBlob> {
    match existing_blob(content, variants, held, diff_id, opts) {
        Some(blob) => Ok(blob),
        None => compress_layer(content, variants, held, diff_id, opts, io::sink()),
    }
}

/// The blob an export can use without compressing: the held one when acceptable, the plain
/// tar, or a variant recorded earlier. `None`: it must be compressed now.
fn existing_blob(
    content: &ContentStore,
    variants: &BlobVariants,
    held: &LayerBlob,
    diff_id: &Digest,
    opts: &CompressionOpts,
) -> Option<LayerBlob> {
    let same_level = opts.level.is_none() || !opts.force;
    if held.compression == opts.kind && same_level
        || !opts.force && held.compression != Compression::Uncompressed
    {
        return Some(held.clone());
    }
    if opts.kind == Compression::Uncompressed
        && let Some(size) = content.size(diff_id).ok().flatten()
    {
        return Some(LayerBlob {
            digest: diff_id.clone(),
            size,
            compression: Compression::Uncompressed,
        });
    }
    let (digest, size) = variants.get(content, diff_id, &opts.key())?;
    Some(LayerBlob {
        digest,
        size,
        compression: opts.kind,
    })
}

/// Compresses the held blob into a new blob, recorded under `opts`' key; `tee` gets a copy of
/// every byte written.
fn compress_layer(
    content: &ContentStore,
    variants: &BlobVariants,
    held: &LayerBlob,
    diff_id: &Digest,
    opts: &CompressionOpts,
    tee: impl Write,
) -> Result<LayerBlob> {
    let input = open_tar(content, held)?;
    let blob = content.writer().map_err(|source| Error::ReadBlob {
        digest: held.digest.clone(),
        source: Box::new(source),
    })?;
    let mut out = BufWriter::with_capacity(256 * 1024, Tee { blob, tee });
    let write_err = |source: io::Error| Error::WriteArchive {
        path: format!("{} ({})", diff_id, opts.kind.name()),
        source,
    };
    compress(input, &mut out, opts.kind, opts.level()).map_err(write_err)?;
    let Tee { blob, tee } = out.into_inner().map_err(|e| write_err(e.into_error()))?;
    // The tee's end of stream: whoever reads it now waits for the digest only.
    drop(tee);
    let (digest, size) = blob.commit(None).map_err(|source| Error::ReadBlob {
        digest: diff_id.clone(),
        source: Box::new(source),
    })?;
    variants.put(diff_id, &opts.key(), &digest, size)?;
    Ok(LayerBlob {
        digest,
        size,
        compression: opts.kind,
    })
}

/// Writes to the blob, then the same bytes to `tee`.
struct Tee<W> {
    blob: kiln_content::BlobWriter,
    tee: W,
}

impl<W: Write> Write for Tee<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.blob.write(buf)?;
        self.tee.write_all(&buf[..n])?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.blob.flush()?;
        self.tee.flush()
    }
}

/// The tar stream of a held blob, decompressed.
fn open_tar(content: &ContentStore, held: &LayerBlob) -> Result<Box<dyn Read + Send>> {
    let file = content
        .open_blob(&held.digest)
        .map_err(|source| Error::ReadBlob {
            digest: held.digest.clone(),
            source: Box::new(source),
        })?;
    let file = io::BufReader::with_capacity(256 * 1024, file);
    Ok(match held.compression {
        Compression::Uncompressed => Box::new(file),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(file)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(file).map_err(io_err(content.root()))?,
        ),
    })
}

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
fn parallel_map<T: Sync, R: Send, E: Send>(
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

/// The layer with its file times clamped to `epoch` (`rewrite-timestamp`): the held blob when
/// no time was later, else a new plain tar blob, recorded under `rewrite-<epoch>`.
fn rewritten(
    content: &ContentStore,
    variants: &BlobVariants,
    held: &LayerBlob,
    diff_id: &Digest,
    epoch: i64,
) -> Result<(LayerBlob, Digest)> {
    let key = format!("rewrite-{epoch}");
    if let Some((digest, size)) = variants.get(content, diff_id, &key) {
        if digest == *diff_id {
            return Ok((held.clone(), diff_id.clone()));
        }
        let blob = LayerBlob {
            digest: digest.clone(),
            size,
            compression: Compression::Uncompressed,
        };
        return Ok((blob, digest));
    }
    let input = open_tar(content, held)?;
    let blob = content.writer().map_err(|source| Error::ReadBlob {
        digest: held.digest.clone(),
        source: Box::new(source),
    })?;
    let write_err = |source: io::Error| Error::WriteArchive {
        path: format!("{diff_id} (rewrite-timestamp)"),
        source,
    };
    let mut out = BufWriter::with_capacity(256 * 1024, blob);
    let changed =
        clamp_tar_times(input, &mut out, u64::try_from(epoch).unwrap_or(0)).map_err(write_err)?;
    let blob = out.into_inner().map_err(|e| write_err(e.into_error()))?;
    if !changed {
        // Dropping the writer discards the copy.
        drop(blob);
        if let Some(size) = content.size(diff_id).ok().flatten() {
            variants.put(diff_id, &key, diff_id, size)?;
        }
        return Ok((held.clone(), diff_id.clone()));
    }
    let (digest, size) = blob.commit(None).map_err(|source| Error::ReadBlob {
        digest: diff_id.clone(),
        source: Box::new(source),
    })?;
    variants.put(diff_id, &key, &digest, size)?;
    Ok((
        LayerBlob {
            digest: digest.clone(),
            size,
            compression: Compression::Uncompressed,
        },
        digest,
    ))
}

/// Copies a tar stream, clamping each header's mtime (and a GNU header's atime and ctime, and
/// PAX `mtime`/`atime`/`ctime` records) to `epoch`; everything else is copied byte for byte.
/// Returns whether anything changed.
pub fn clamp_tar_times(mut input: impl Read, out: &mut impl Write, epoch: u64) -> io::Result<bool> {
    let mut changed = false;
    let mut block = [0u8; 512];
    loop {
        if !read_full(&mut input, &mut block)? {
            return Ok(changed);
        }
        if block.iter().all(|&b| b == 0) {
            // The end marker: the rest (more zero blocks) is copied as it is.
            out.write_all(&block)?;
            io::copy(&mut input, out)?;
            return Ok(changed);
        }
        let typeflag = block[156];
        let size = octal_field(&block[124..136]).ok_or_else(|| bad_tar("invalid size field"))?;
        let header_only = matches!(typeflag, b'1' | b'2' | b'3' | b'4' | b'5' | b'6');
        let data_len = if header_only { 0 } else { size };
        let padded = data_len.div_ceil(512) * 512;
        changed |= clamp_field(&mut block[136..148], epoch);
        if &block[257..265] == b"ustar  \0" {
            changed |= clamp_field(&mut block[345..357], epoch);
            changed |= clamp_field(&mut block[357..369], epoch);
        }
        if matches!(typeflag, b'x' | b'g') {
            let mut data = vec![0u8; padded as usize];
            input.read_exact(&mut data)?;
            data.truncate(size as usize);
            let (records, pax_changed) = clamp_pax(&data, epoch)?;
            if pax_changed {
                changed = true;
                set_octal(&mut block[124..136], records.len() as u64);
            }
            set_checksum(&mut block);
            out.write_all(&block)?;
            out.write_all(&records)?;
            let pad = records.len().div_ceil(512) * 512 - records.len();
            out.write_all(&vec![0u8; pad])?;
            continue;
        }
        set_checksum(&mut block);
        out.write_all(&block)?;
        let copied = io::copy(&mut (&mut input).take(padded), out)?;
        if copied != padded {
            return Err(bad_tar("truncated entry"));
        }
    }
}

fn bad_tar(why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("invalid layer tar: {why}"),
    )
}

/// Fills `buf`; false at a clean end of input.
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    let mut n = 0;
    while n < buf.len() {
        match input.read(&mut buf[n..])? {
            0 if n == 0 => return Ok(false),
            0 => return Err(bad_tar("truncated header")),
            k => n += k,
        }
    }
    Ok(true)
}

/// A numeric header field: octal digits, or base-256 when the high bit is set.
fn octal_field(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        let mut v: u64 = u64::from(field[0] & 0x7f);
        for &b in &field[1..] {
            v = v.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(v);
    }
    let s: String = field
        .iter()
        .take_while(|&&b| b != 0 && b != b' ')
        .skip_while(|&&b| b == b' ')
        .map(|&b| b as char)
        .collect();
    let s = s.trim();
    if s.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(s, 8).ok()
}

fn set_octal(field: &mut [u8], v: u64) {
    let width = field.len() - 1;
    let s = format!("{v:0width$o}");
    if s.len() <= width {
        field[..width].copy_from_slice(s.as_bytes());
        field[width] = 0;
    } else {
        // Too large for octal: base-256, as GNU tar writes it.
        field.fill(0);
        let mut x = v;
        for b in field.iter_mut().rev() {
            *b = (x & 0xff) as u8;
            x >>= 8;
        }
        field[0] |= 0x80;
    }
}

/// Clamps a time field to `epoch`; true when it changed.
fn clamp_field(field: &mut [u8], epoch: u64) -> bool {
    match octal_field(field) {
        Some(t) if t > epoch => {
            set_octal(field, epoch);
            true
        }
        _ => false,
    }
}

fn set_checksum(block: &mut [u8; 512]) {
    block[148..156].fill(b' ');
    let sum: u32 = block.iter().map(|&b| u32::from(b)).sum();
    let s = format!("{sum:06o}\0 ");
    block[148..156].copy_from_slice(s.as_bytes());
}

/// PAX records with `mtime`, `atime` and `ctime` clamped (re-encoded only when one changed).
fn clamp_pax(data: &[u8], epoch: u64) -> io::Result<(Vec<u8>, bool)> {
    let mut records = Vec::new();
    let mut rest = data;
    let mut changed = false;
    while !rest.is_empty() {
        let sp = rest
            .iter()
            .position(|&b| b == b' ')
            .ok_or_else(|| bad_tar("invalid PAX record"))?;
        let len: usize = std::str::from_utf8(&rest[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .filter(|&l| l > sp + 1 && l <= rest.len())
            .ok_or_else(|| bad_tar("invalid PAX record length"))?;
        let body = &rest[sp + 1..len - 1];
        let eq = body
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(|| bad_tar("invalid PAX record"))?;
        let (key, value) = (&body[..eq], &body[eq + 1..]);
        let mut value = value.to_vec();
        if matches!(key, b"mtime" | b"atime" | b"ctime") {
            let secs: f64 = std::str::from_utf8(&value)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0.0);
            if secs > epoch as f64 {
                value = epoch.to_string().into_bytes();
                changed = true;
            }
        }
        records.push((key.to_vec(), value));
        rest = &rest[len..];
    }
    if !changed {
        return Ok((data.to_vec(), false));
    }
    let mut out = Vec::new();
    for (k, v) in records {
        // The length counts its own digits: grow it until it is stable.
        let base = k.len() + v.len() + 3;
        let mut len = base + 1;
        while len != base + len.to_string().len() {
            len = base + len.to_string().len();
        }
        out.extend_from_slice(len.to_string().as_bytes());
        out.push(b' ');
        out.extend_from_slice(&k);
        out.push(b'=');
        out.extend_from_slice(&v);
        out.push(b'\n');
    }
    Ok((out, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Compressible but not trivial: text-like runs mixed with pseudo-random bytes.
    fn sample(len: usize) -> Vec<u8> {
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

    fn tar_with_times(mtime: u64) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o644);
        h.set_mtime(mtime);
        b.append_pax_extensions([("mtime", format!("{mtime}.5").as_bytes())])
            .unwrap();
        b.append_data(&mut h, "a/file", &b"abc"[..]).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mtime(10);
        h.set_size(0);
        b.append_data(&mut h, "old/", io::empty()).unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn clamping_rewrites_late_times_only() {
        let input = tar_with_times(2_000_000_000);
        let mut out = Vec::new();
        assert!(clamp_tar_times(&input[..], &mut out, 1_000_000_000).unwrap());
        let mut ar = tar::Archive::new(&out[..]);
        let mut seen = Vec::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().display().to_string();
            let mtime = e.header().mtime().unwrap();
            let pax_mtime = e
                .pax_extensions()
                .unwrap()
                .into_iter()
                .flatten()
                .map(|x| x.unwrap())
                .find(|x| x.key() == Ok("mtime"))
                .map(|x| x.value().unwrap().to_string());
            let mut body = Vec::new();
            e.read_to_end(&mut body).unwrap();
            seen.push((path, mtime, pax_mtime, body));
        }
        assert_eq!(
            seen,
            [
                (
                    "a/file".to_string(),
                    1_000_000_000,
                    Some("1000000000".to_string()),
                    b"abc".to_vec()
                ),
                ("old/".to_string(), 10, None, Vec::new()),
            ]
        );
        // Already old enough: nothing changes, byte for byte.
        let mut again = Vec::new();
        assert!(!clamp_tar_times(&out[..], &mut again, 1_000_000_000).unwrap());
        assert_eq!(again, out);
    }

    #[test]
    fn compressing_into_a_tee_makes_the_blob_an_export_makes() {
        let data = sample(3 * GZIP_BLOCK + 77);
        let mut made = Vec::new();
        for tee in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let content = ContentStore::open(dir.path().join("content")).unwrap();
            let variants = BlobVariants::open(&dir.path().join("variants")).unwrap();
            let diff_id = content.put(&data, None).unwrap();
            let held = LayerBlob {
                digest: diff_id.clone(),
                size: data.len() as u64,
                compression: Compression::Uncompressed,
            };
            let opts = CompressionOpts::default();
            assert_eq!(
                existing_blob(&content, &variants, &held, &diff_id, &opts),
                None
            );
            let blob = if tee {
                let pending = PendingLayer {
                    held: held.clone(),
                    diff_id: diff_id.clone(),
                    opts,
                };
                let mut copy = Vec::new();
                let (digest, size) = pending
                    .compress_into(&content, &variants, &mut copy)
                    .unwrap();
                assert_eq!(copy, content.read(&digest).unwrap());
                assert_eq!(size, copy.len() as u64);
                LayerBlob {
                    digest,
                    size,
                    compression: Compression::Gzip,
                }
            } else {
                layer_blob(&content, &variants, &held, &diff_id, &opts).unwrap()
            };
            // Recorded: the next export finds it.
            assert_eq!(
                existing_blob(&content, &variants, &held, &diff_id, &opts),
                Some(blob.clone())
            );
            made.push(blob);
        }
        assert_eq!(made[0], made[1]);
    }

    #[test]
    fn variants_are_recorded_reused_and_dropped_with_their_blob() {
        let dir = tempfile::tempdir().unwrap();
        let content = ContentStore::open(dir.path().join("content")).unwrap();
        let variants = BlobVariants::open(&dir.path().join("variants")).unwrap();
        let tar = tar_with_times(5);
        let diff_id = content.put(&tar, None).unwrap();
        let held = LayerBlob {
            digest: diff_id.clone(),
            size: tar.len() as u64,
            compression: Compression::Uncompressed,
        };
        let opts = CompressionOpts::default();
        let gz = layer_blob(&content, &variants, &held, &diff_id, &opts).unwrap();
        assert_eq!(gz.compression, Compression::Gzip);
        assert_eq!(
            variants.get(&content, &diff_id, "gzip-6"),
            Some((gz.digest.clone(), gz.size))
        );
        // A gzip blob held is kept for a zstd request unless forced.
        let zstd = CompressionOpts {
            kind: Compression::Zstd,
            ..opts
        };
        assert_eq!(
            layer_blob(&content, &variants, &gz, &diff_id, &zstd).unwrap(),
            gz
        );
        let forced = CompressionOpts {
            force: true,
            ..zstd
        };
        let z = layer_blob(&content, &variants, &gz, &diff_id, &forced).unwrap();
        assert_eq!(z.compression, Compression::Zstd);
        assert_eq!(
            zstd::decode_all(&content.read(&z.digest).unwrap()[..]).unwrap(),
            tar
        );
        content.delete(&gz.digest).unwrap();
        assert_eq!(variants.get(&content, &diff_id, "gzip-6"), None);
        assert_eq!(variants.list().len(), 1);
        variants.remove(&diff_id).unwrap();
        assert!(variants.list().is_empty());
    }
}
