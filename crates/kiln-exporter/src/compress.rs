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

use kiln_content::ContentStore;
use kiln_oci::media_type::{self, LayerCompression};
use kiln_oci::{Digest, parse_digest};
use serde::{Deserialize, Serialize};

use crate::{Error, Result, atomic_write, image, io_err};

mod clamp;
mod codec;

pub use clamp::clamp_tar_times;
pub use codec::compress;
use codec::parallel_map;

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

#[cfg(test)]
mod tests {
    use super::*;
    use clamp::tests::tar_with_times;
    use codec::GZIP_BLOCK;
    use codec::tests::sample;

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
