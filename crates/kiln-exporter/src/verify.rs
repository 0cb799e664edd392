//! Checks an OCI image layout tarball: every blob hashes to its name, every descriptor reached
//! from `index.json` (manifests, configs, layers) names a blob of the stated size, each config's
//! diff IDs match its gzip or plain tar layers, and a docker `manifest.json`, when present,
//! points at entries that exist. Blobs are streamed, never held in memory.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use kiln_oci::media_type::{self, LayerCompression};
use kiln_oci::{Digest, ImageIndex, ImageManifest, Sha256Writer, parse_digest};
use serde::Deserialize;

use crate::docker::{MANIFEST_FILE, ManifestEntry};
use crate::oci::{
    ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME, INDEX_FILE, LAYOUT_FILE, LayoutHeader,
};
use crate::{Error, MAX_METADATA_SIZE, Result, io_err};

/// What an archive holds, once it has verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// `index.json`'s descriptors, in order.
    pub refs: Vec<LayoutRef>,
    /// Every image manifest reached from `index.json` (through nested indexes too).
    pub manifests: Vec<ManifestSummary>,
    /// Number of blobs under `blobs/`.
    pub blobs: usize,
    /// Layers whose diff ID could not be checked (zstd or unknown compression).
    pub unchecked_diff_ids: usize,
    /// The docker `manifest.json`, when the archive has one.
    pub docker_manifest: Option<Vec<ManifestEntry>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutRef {
    pub digest: Digest,
    pub media_type: String,
    /// `io.containerd.image.name`.
    pub image_name: Option<String>,
    /// `org.opencontainers.image.ref.name`.
    pub ref_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestSummary {
    pub digest: Digest,
    pub media_type: String,
    pub config: Digest,
    pub layers: Vec<Digest>,
}

/// One regular file of the archive.
struct Entry {
    digest: Digest,
    size: u64,
    /// Kept only for small files that look like JSON (manifests, configs, layout files).
    bytes: Option<Vec<u8>>,
}

/// Verifies the OCI image layout tarball at `path`; see the module docs for what is checked.
pub fn verify_oci_archive(path: &Path) -> Result<Summary> {
    let v = Verifier {
        path: path.to_path_buf(),
    };
    let entries = v.scan()?;

    let layout = v.json::<LayoutHeader>(&entries, LAYOUT_FILE)?;
    if layout.image_layout_version != "1.0.0" {
        return Err(v.invalid(format!(
            "unsupported `imageLayoutVersion` `{}`",
            layout.image_layout_version
        )));
    }
    let index = v.json::<ImageIndex>(&entries, INDEX_FILE)?;

    let mut summary = Summary {
        refs: Vec::new(),
        manifests: Vec::new(),
        blobs: entries.keys().filter(|p| p.starts_with("blobs/")).count(),
        unchecked_diff_ids: 0,
        docker_manifest: None,
    };
    // Layer digest → expected diff ID and compression, checked in a second streaming pass.
    let mut diff_ids: BTreeMap<String, (String, Option<LayerCompression>)> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for desc in index.manifests() {
        let annotation = |key: &str| {
            desc.annotations()
                .as_ref()
                .and_then(|a| a.get(key).cloned())
        };
        summary.refs.push(LayoutRef {
            digest: desc.digest().clone(),
            media_type: desc.media_type().to_string(),
            image_name: annotation(ANNOTATION_IMAGE_NAME),
            ref_name: annotation(ANNOTATION_REF_NAME),
        });
        v.walk(
            &entries,
            desc.digest(),
            desc.size(),
            desc.media_type().as_ref(),
            0,
            &mut seen,
            &mut summary,
            &mut diff_ids,
        )?;
    }

    if entries.contains_key(MANIFEST_FILE) {
        let docker = v.json::<Vec<ManifestEntry>>(&entries, MANIFEST_FILE)?;
        for image in &docker {
            for p in std::iter::once(&image.config).chain(&image.layers) {
                if !entries.contains_key(normalize(p)) {
                    return Err(v.invalid(format!("`{MANIFEST_FILE}` names missing entry `{p}`")));
                }
            }
            let config = &entries[normalize(&image.config)];
            if !summary.manifests.iter().any(|m| m.config == config.digest) {
                return Err(v.invalid(format!(
                    "`{MANIFEST_FILE}` config `{}` is not the config of any manifest",
                    image.config
                )));
            }
        }
        summary.docker_manifest = Some(docker);
    }

    summary.unchecked_diff_ids = v.check_diff_ids(&diff_ids)?;
    Ok(summary)
}

struct Verifier {
    path: PathBuf,
}

impl Verifier {
    fn invalid(&self, reason: impl Into<String>) -> Error {
        Error::InvalidArchive {
            path: self.path.clone(),
            reason: reason.into(),
        }
    }

    fn open(&self) -> Result<tar::Archive<File>> {
        let file = File::open(&self.path).map_err(io_err(&self.path))?;
        Ok(tar::Archive::new(file))
    }

    /// First pass: hash every regular file and check blobs hash to their names.
    fn scan(&self) -> Result<BTreeMap<String, Entry>> {
        let mut archive = self.open()?;
        let mut entries = BTreeMap::new();
        for entry in archive.entries().map_err(io_err(&self.path))? {
            let mut entry = entry.map_err(io_err(&self.path))?;
            let kind = entry.header().entry_type();
            let raw = entry.path().map_err(io_err(&self.path))?;
            let name = raw.to_string_lossy().into_owned();
            if kind.is_dir() || kind == tar::EntryType::XGlobalHeader {
                continue;
            }
            if !kind.is_file() {
                return Err(self.invalid(format!("entry `{name}` is not a regular file")));
            }
            let name = normalize(&name).to_string();
            let size = entry.size();
            let mut head = [0u8; 1];
            let n = entry.read(&mut head).map_err(io_err(&self.path))?;
            let looks_json = n == 1 && (head[0] == b'{' || head[0] == b'[');
            // Keep small JSON documents to parse later; only hash everything else.
            let (digest, bytes) = if looks_json && size <= MAX_METADATA_SIZE {
                let mut bytes = head[..n].to_vec();
                entry.read_to_end(&mut bytes).map_err(io_err(&self.path))?;
                (kiln_oci::sha256(&bytes), Some(bytes))
            } else {
                let mut hash = Sha256Writer::new(io::sink());
                io::Write::write_all(&mut hash, &head[..n]).map_err(io_err(&self.path))?;
                io::copy(&mut entry, &mut hash).map_err(io_err(&self.path))?;
                (hash.finish().1, None)
            };
            entries.insert(
                name.clone(),
                Entry {
                    digest: digest.clone(),
                    size,
                    bytes,
                },
            );
            if let Some(rest) = name.strip_prefix("blobs/") {
                let expected = rest
                    .split_once('/')
                    .and_then(|(alg, hex)| parse_digest(&format!("{alg}:{hex}")).ok())
                    .ok_or_else(|| self.invalid(format!("blob path `{name}` is not a digest")))?;
                if expected != digest {
                    return Err(Error::DigestMismatch {
                        expected,
                        actual: digest,
                    });
                }
            }
        }
        Ok(entries)
    }

    fn json<T: for<'de> Deserialize<'de>>(
        &self,
        entries: &BTreeMap<String, Entry>,
        name: &str,
    ) -> Result<T> {
        let bytes = entries
            .get(name)
            .ok_or_else(|| self.invalid(format!("missing `{name}`")))?
            .bytes
            .as_deref()
            .ok_or_else(|| self.invalid(format!("`{name}` is not a small JSON document")))?;
        serde_json::from_slice(bytes).map_err(|e| self.invalid(format!("`{name}`: {e}")))
    }

    /// The blob a descriptor names, checked for presence and size.
    fn blob<'a>(
        &self,
        entries: &'a BTreeMap<String, Entry>,
        digest: &Digest,
        size: u64,
    ) -> Result<&'a Entry> {
        let path = format!("blobs/{}/{}", digest.algorithm().as_ref(), digest.digest());
        let entry = entries
            .get(&path)
            .ok_or_else(|| self.invalid(format!("blob `{digest}` is missing")))?;
        if entry.size != size {
            return Err(Error::SizeMismatch {
                digest: digest.clone(),
                expected: size,
                actual: entry.size,
            });
        }
        Ok(entry)
    }

    #[allow(clippy::too_many_arguments)]
    fn walk(
        &self,
        entries: &BTreeMap<String, Entry>,
        digest: &Digest,
        size: u64,
        media_type: &str,
        depth: usize,
        seen: &mut BTreeSet<String>,
        summary: &mut Summary,
        diff_ids: &mut BTreeMap<String, (String, Option<LayerCompression>)>,
    ) -> Result<()> {
        let entry = self.blob(entries, digest, size)?;
        if !seen.insert(digest.to_string()) {
            return Ok(());
        }
        let Some(bytes) = entry.bytes.as_deref() else {
            if media_type::is_index(media_type) || media_type::is_manifest(media_type) {
                return Err(self.invalid(format!("manifest `{digest}` is not a JSON document")));
            }
            return Ok(());
        };
        if media_type::is_index(media_type) {
            if depth >= 4 {
                return Err(Error::IndexTooDeep(digest.clone()));
            }
            let index: ImageIndex = serde_json::from_slice(bytes)
                .map_err(|e| self.invalid(format!("index `{digest}`: {e}")))?;
            for child in index.manifests() {
                self.walk(
                    entries,
                    child.digest(),
                    child.size(),
                    child.media_type().as_ref(),
                    depth + 1,
                    seen,
                    summary,
                    diff_ids,
                )?;
            }
        } else if media_type::is_manifest(media_type) {
            let manifest: ImageManifest = serde_json::from_slice(bytes)
                .map_err(|e| self.invalid(format!("manifest `{digest}`: {e}")))?;
            let config = manifest.config();
            let config_entry = self.blob(entries, config.digest(), config.size())?;
            for layer in manifest.layers() {
                self.blob(entries, layer.digest(), layer.size())?;
            }
            let config_type = config.media_type().to_string();
            if config_type == media_type::OCI_CONFIG || config_type == media_type::DOCKER_CONFIG {
                let bytes = config_entry.bytes.as_deref().ok_or_else(|| {
                    self.invalid(format!("config `{}` is not JSON", config.digest()))
                })?;
                let ids = crate::config_diff_ids(bytes)
                    .map_err(|e| self.invalid(format!("config `{}`: {e}", config.digest())))?;
                if ids.len() != manifest.layers().len() {
                    return Err(self.invalid(format!(
                        "config `{}` has {} diff IDs for {} layers",
                        config.digest(),
                        ids.len(),
                        manifest.layers().len()
                    )));
                }
                for (layer, id) in manifest.layers().iter().zip(ids) {
                    let compression = media_type::layer_compression(layer.media_type().as_ref());
                    diff_ids.insert(layer.digest().to_string(), (id, compression));
                }
            }
            summary.manifests.push(ManifestSummary {
                digest: digest.clone(),
                media_type: media_type.to_string(),
                config: config.digest().clone(),
                layers: manifest
                    .layers()
                    .iter()
                    .map(|l| l.digest().clone())
                    .collect(),
            });
        }
        Ok(())
    }

    /// Second pass: decompress gzip and plain layers and compare them with their diff IDs.
    /// Returns how many layers could not be checked.
    fn check_diff_ids(
        &self,
        diff_ids: &BTreeMap<String, (String, Option<LayerCompression>)>,
    ) -> Result<usize> {
        let mut unchecked = diff_ids
            .values()
            .filter(|(_, c)| !matches!(c, Some(LayerCompression::Gzip | LayerCompression::None)))
            .count();
        if diff_ids.len() == unchecked {
            return Ok(unchecked);
        }
        let mut archive = self.open()?;
        let mut checked = BTreeSet::new();
        for entry in archive.entries().map_err(io_err(&self.path))? {
            let entry = entry.map_err(io_err(&self.path))?;
            let raw = entry.path().map_err(io_err(&self.path))?;
            let name = normalize(&raw.to_string_lossy()).to_string();
            let Some(key) = name
                .strip_prefix("blobs/")
                .and_then(|rest| rest.split_once('/'))
                .map(|(alg, hex)| format!("{alg}:{hex}"))
            else {
                continue;
            };
            let Some((expected, compression)) = diff_ids.get(&key) else {
                continue;
            };
            if !checked.insert(key.clone()) {
                continue;
            }
            let mut hash = Sha256Writer::new(io::sink());
            let copied = match compression {
                Some(LayerCompression::Gzip) => {
                    io::copy(&mut flate2::read::MultiGzDecoder::new(entry), &mut hash)
                }
                Some(LayerCompression::None) => io::copy(&mut { entry }, &mut hash),
                _ => continue,
            };
            copied.map_err(|e| self.invalid(format!("layer `{key}` does not decompress: {e}")))?;
            let (_, actual, _) = hash.finish();
            if actual.to_string() != *expected {
                return Err(self.invalid(format!(
                    "layer `{key}` has diff ID `{actual}`, its config says `{expected}`"
                )));
            }
        }
        // A layer in no blob entry was already reported missing by the first pass.
        unchecked += diff_ids.len() - unchecked - checked.len();
        Ok(unchecked)
    }
}

fn normalize(path: &str) -> &str {
    path.trim_start_matches("./")
}
