//! `kiln load`: reads a `docker save` archive (legacy `manifest.json` with `<id>/layer.tar`, or
//! Docker 25's OCI layout) or an OCI image layout tarball, from a file or a pipe, in one pass.
//! Every file goes into the content store as it streams by; afterwards the images are resolved
//! from `index.json` (names from `io.containerd.image.name` / `org.opencontainers.image.ref.name`)
//! or `manifest.json` (`RepoTags`). Each blob must hash to its name, each descriptor's size must
//! match, and every layer must be one the applier would unpack (checked as it streams by, see
//! `layercheck.rs`) and hash (uncompressed) to its config's diff ID. A refused archive leaves
//! no blob it brought in the content store.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use kiln_content::ContentStore;
use kiln_oci::media_type::{self, LayerCompression};
use kiln_oci::{Digest, ImageIndex, ImageManifest, Platform, Reference, Sha256Writer};
use serde::Deserialize;

use crate::docker::{MANIFEST_FILE, ManifestEntry};
use crate::layercheck::{LayerScan, copy_checking_layer};
use crate::oci::{ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME, INDEX_FILE};
use crate::{Error, MAX_METADATA_SIZE, Result};

/// An image found in an archive, its blobs in the content store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedImage {
    /// A single-platform manifest, or an index whose every platform's image the archive holds
    /// (an index missing some is resolved to `platform`).
    pub manifest: Digest,
    /// The image ID (for an index, its default platform's: this machine's, else the first).
    pub config: Digest,
    /// The names the archive gives it (may be empty).
    pub names: Vec<Reference>,
}

/// What the archive held at one path.
enum Stored {
    Blob { digest: Digest, size: u64 },
    Link(String),
}

/// Reads an archive from `input` (`source` names it in errors) into `content`, choosing
/// `platform`'s manifest where the archive holds an index.
pub fn load_archive<R: Read>(
    content: &ContentStore,
    input: R,
    source: &Path,
    platform: &Platform,
) -> Result<Vec<LoadedImage>> {
    let l = Loader {
        content,
        source: source.to_path_buf(),
        scans: RefCell::default(),
        added: RefCell::default(),
    };
    let loaded = l.load(input, platform);
    if loaded.is_err() {
        // Another process may have stored the same blob meanwhile; it would fetch or load it
        // again, as after a `kiln prune`.
        for digest in l.added.borrow().iter() {
            let _ = content.delete(digest);
        }
    }
    loaded
}

struct Loader<'a> {
    content: &'a ContentStore,
    source: PathBuf,
    /// Each stored file read as a layer, with the first archive path that held it.
    scans: RefCell<HashMap<Digest, (String, LayerScan)>>,
    /// Blobs this load put in the store that were not there before.
    added: RefCell<Vec<Digest>>,
}

impl Loader<'_> {
    fn load<R: Read>(&self, input: R, platform: &Platform) -> Result<Vec<LoadedImage>> {
        let l = self;
        let files = l.ingest(input)?;
        let has = |p: &str| files.contains_key(p);
        let mut images = if has(INDEX_FILE) {
            l.images_in_index(&files, platform)?
        } else if has(MANIFEST_FILE) {
            Vec::new()
        } else {
            return Err(l.invalid(format!(
                "neither `{MANIFEST_FILE}` nor `{INDEX_FILE}` found: not an image archive"
            )));
        };
        if has(MANIFEST_FILE) {
            let entries: Vec<ManifestEntry> = l.json(&files, MANIFEST_FILE)?;
            for entry in &entries {
                let names = entry
                    .repo_tags
                    .iter()
                    .map(|t| {
                        t.parse::<Reference>()
                            .map_err(|e| l.invalid(format!("`{MANIFEST_FILE}` names `{t}`: {e}")))
                    })
                    .collect::<Result<Vec<_>>>()?;
                let config = l.resolve(&files, &entry.config)?.0;
                // Docker 25 writes both files; the OCI side already loaded the image, so the
                // legacy entry only adds its tags.
                if let Some(img) = images.iter_mut().find(|i| i.config == config) {
                    for n in names {
                        if !img.names.contains(&n) {
                            img.names.push(n);
                        }
                    }
                    continue;
                }
                let mut img = l.image_of_docker_entry(&files, entry)?;
                img.names = names;
                images.push(img);
            }
        }
        Ok(images)
    }

    fn invalid(&self, reason: impl Into<String>) -> Error {
        Error::InvalidArchive {
            path: self.source.clone(),
            reason: reason.into(),
        }
    }

    fn read_err(&self) -> impl FnOnce(io::Error) -> Error + '_ {
        move |e| self.invalid(format!("reading the archive: {e}"))
    }

    /// Streams every regular file into the content store; records symlinks (`docker save`
    /// links repeated layers) to resolve later.
    fn ingest<R: Read>(&self, input: R) -> Result<BTreeMap<String, Stored>> {
        let mut archive = tar::Archive::new(input);
        let mut files = BTreeMap::new();
        for entry in archive.entries().map_err(self.read_err())? {
            let mut entry = entry.map_err(self.read_err())?;
            let kind = entry.header().entry_type();
            let name = clean(&entry.path().map_err(self.read_err())?)
                .ok_or_else(|| self.invalid("an entry's path leaves the archive"))?;
            if kind.is_symlink() || kind.is_hard_link() {
                let target = entry
                    .link_name()
                    .map_err(self.read_err())?
                    .ok_or_else(|| self.invalid(format!("link `{name}` has no target")))?;
                // Symlinks are relative to their directory, hard links to the archive root.
                let base = if kind.is_symlink() {
                    Path::new(&name)
                        .parent()
                        .unwrap_or(Path::new(""))
                        .join(target)
                } else {
                    target.into_owned()
                };
                let target = clean(&base)
                    .ok_or_else(|| self.invalid(format!("link `{name}` leaves the archive")))?;
                files.insert(name, Stored::Link(target));
                continue;
            }
            if !kind.is_file() {
                continue;
            }
            let writer = self.content.writer().map_err(|e| self.store_err(e))?;
            let mut hashed = Sha256Writer::new(writer);
            let scan = copy_checking_layer(&mut entry, &mut hashed).map_err(self.read_err())?;
            let (writer, digest, _) = hashed.finish();
            if let Some(expected) = blob_name(&name)
                && expected != digest
            {
                return Err(Error::DigestMismatch {
                    expected,
                    actual: digest,
                });
            }
            let fresh = !self.content.contains(&digest);
            let (digest, size) = writer
                .commit(Some(&digest))
                .map_err(|e| self.store_err(e))?;
            if fresh {
                self.added.borrow_mut().push(digest.clone());
            }
            self.scans
                .borrow_mut()
                .entry(digest.clone())
                .or_insert((name.clone(), scan));
            files.insert(name, Stored::Blob { digest, size });
        }
        Ok(files)
    }

    fn store_err(&self, e: kiln_content::Error) -> Error {
        self.invalid(format!("storing a blob: {e}"))
    }

    /// The blob at `path`, following links (a bounded number of times).
    fn resolve(&self, files: &BTreeMap<String, Stored>, path: &str) -> Result<(Digest, u64)> {
        let mut path = clean(Path::new(path))
            .ok_or_else(|| self.invalid(format!("path `{path}` leaves the archive")))?;
        for _ in 0..8 {
            match files.get(&path) {
                Some(Stored::Blob { digest, size }) => return Ok((digest.clone(), *size)),
                Some(Stored::Link(target)) => path = target.clone(),
                None => return Err(self.invalid(format!("missing `{path}`"))),
            }
        }
        Err(self.invalid(format!("too many links at `{path}`")))
    }

    fn json<T: for<'de> Deserialize<'de>>(
        &self,
        files: &BTreeMap<String, Stored>,
        path: &str,
    ) -> Result<T> {
        let (digest, _) = self.resolve(files, path)?;
        let bytes = self.metadata(&digest)?;
        serde_json::from_slice(&bytes).map_err(|e| self.invalid(format!("`{path}`: {e}")))
    }

    fn metadata(&self, digest: &Digest) -> Result<Vec<u8>> {
        crate::image::read_metadata(self.content, digest)
    }

    /// The blob a descriptor names, present at the stated size.
    fn blob(&self, files: &BTreeMap<String, Stored>, digest: &Digest, size: u64) -> Result<()> {
        let path = crate::archive::blob_path(digest);
        let (_, actual) = self
            .resolve(files, &path)
            .map_err(|_| self.invalid(format!("blob `{digest}` is missing")))?;
        if actual != size {
            return Err(Error::SizeMismatch {
                digest: digest.clone(),
                expected: size,
                actual,
            });
        }
        Ok(())
    }

    fn images_in_index(
        &self,
        files: &BTreeMap<String, Stored>,
        platform: &Platform,
    ) -> Result<Vec<LoadedImage>> {
        let index: ImageIndex = self.json(files, INDEX_FILE)?;
        let mut images: Vec<LoadedImage> = Vec::new();
        for desc in index.manifests() {
            let annotation = |key: &str| {
                desc.annotations()
                    .as_ref()
                    .and_then(|a| a.get(key).cloned())
            };
            // A bare tag in `ref.name` is not a name; a full reference is (as containerd reads it).
            let name = annotation(ANNOTATION_IMAGE_NAME).or_else(|| {
                annotation(ANNOTATION_REF_NAME).filter(|n| n.contains(':') || n.contains('/'))
            });
            let name = name
                .map(|n| {
                    n.parse::<Reference>()
                        .map_err(|e| self.invalid(format!("`{INDEX_FILE}` names `{n}`: {e}")))
                })
                .transpose()?;
            let (manifest, config) = match self.whole_index(files, desc)? {
                Some(kept) => kept,
                None => {
                    let manifest = self.pick_manifest(
                        files,
                        desc.digest(),
                        desc.size(),
                        desc.media_type().as_ref(),
                        platform,
                        0,
                    )?;
                    let config = self.check_manifest(files, &manifest)?;
                    (manifest, config)
                }
            };
            match images.iter_mut().find(|i| i.manifest == manifest) {
                Some(img) => img.names.extend(name),
                None => images.push(LoadedImage {
                    manifest,
                    config,
                    names: name.into_iter().collect(),
                }),
            }
        }
        Ok(images)
    }

    /// An index whose every entry is a platform's image complete in the archive, kept whole
    /// (as Docker's containerd image store loads one): its digest and the config of its image
    /// for this machine (else its first). `None` when `desc` is no index, or the index lacks an
    /// image's blobs (`docker save --platform`) or holds anything but platform images
    /// (attestations): then one platform's image is loaded.
    fn whole_index(
        &self,
        files: &BTreeMap<String, Stored>,
        desc: &kiln_oci::Descriptor,
    ) -> Result<Option<(Digest, Digest)>> {
        let digest = desc.digest();
        if !media_type::is_index(desc.media_type().as_ref()) {
            return Ok(None);
        }
        self.blob(files, digest, desc.size())?;
        let bytes = self.metadata(digest)?;
        let index: ImageIndex =
            serde_json::from_slice(&bytes).map_err(|source| Error::InvalidManifest {
                digest: digest.clone(),
                source,
            })?;
        let entries = crate::image::index_entries(digest, &bytes)?;
        if entries.is_empty()
            || entries.len() != index.manifests().len()
            || entries.iter().any(|(p, _)| p.os == "unknown")
        {
            return Ok(None);
        }
        let present = |d: &Digest, size: u64| {
            self.resolve(files, &crate::archive::blob_path(d))
                .is_ok_and(|(_, actual)| actual == size)
        };
        for child in index.manifests() {
            if !present(child.digest(), child.size()) {
                return Ok(None);
            }
            let m = crate::image::read_manifest(self.content, child.digest())?;
            if !std::iter::once(m.config())
                .chain(m.layers())
                .all(|d| present(d.digest(), d.size()))
            {
                return Ok(None);
            }
        }
        let mut default_config = None;
        let default = crate::image::default_entry(&entries);
        for (_, manifest) in &entries {
            let config = self.check_manifest(files, manifest)?;
            if Some(manifest) == default.as_ref() {
                default_config = Some(config);
            }
        }
        Ok(default_config.map(|c| (digest.clone(), c)))
    }

    /// Follows indexes down to the manifest for `platform`.
    fn pick_manifest(
        &self,
        files: &BTreeMap<String, Stored>,
        digest: &Digest,
        size: u64,
        media_type: &str,
        platform: &Platform,
        depth: usize,
    ) -> Result<Digest> {
        self.blob(files, digest, size)?;
        let bytes = self.metadata(digest)?;
        let media_type = if media_type.is_empty() {
            crate::image::sniff_media_type(digest, &bytes)?
        } else {
            media_type.to_string()
        };
        if media_type::is_manifest(&media_type) {
            return Ok(digest.clone());
        }
        if !media_type::is_index(&media_type) {
            return Err(Error::NotAManifest {
                digest: digest.clone(),
                media_type,
            });
        }
        if depth >= 4 {
            return Err(Error::IndexTooDeep(digest.clone()));
        }
        let index: ImageIndex =
            serde_json::from_slice(&bytes).map_err(|source| Error::InvalidManifest {
                digest: digest.clone(),
                source,
            })?;
        let mut available = Vec::new();
        for child in index.manifests() {
            let Some(p) = child.platform() else { continue };
            let candidate = Platform::new(
                &p.os().to_string(),
                &p.architecture().to_string(),
                p.variant().as_deref(),
            );
            if platform.matches(&candidate) {
                return self.pick_manifest(
                    files,
                    child.digest(),
                    child.size(),
                    child.media_type().as_ref(),
                    platform,
                    depth + 1,
                );
            }
            available.push(candidate.to_string());
        }
        Err(self.invalid(format!(
            "index `{digest}` has no image for `{platform}` (it has: {})",
            available.join(", ")
        )))
    }

    /// Checks a manifest's config and layers (presence, sizes, diff IDs); returns the config.
    fn check_manifest(&self, files: &BTreeMap<String, Stored>, digest: &Digest) -> Result<Digest> {
        let manifest = crate::image::read_manifest(self.content, digest)?;
        let config = manifest.config();
        self.blob(files, config.digest(), config.size())?;
        for layer in manifest.layers() {
            self.blob(files, layer.digest(), layer.size())?;
        }
        let layers: Vec<(Digest, Option<LayerCompression>)> = manifest
            .layers()
            .iter()
            .map(|l| {
                (
                    l.digest().clone(),
                    media_type::layer_compression(l.media_type().as_ref()),
                )
            })
            .collect();
        self.check_diff_ids(config.digest(), &layers)?;
        Ok(config.digest().clone())
    }

    fn check_diff_ids(
        &self,
        config: &Digest,
        layers: &[(Digest, Option<LayerCompression>)],
    ) -> Result<()> {
        let bytes = self.metadata(config)?;
        let ids = crate::config_diff_ids(&bytes).map_err(|source| Error::InvalidConfig {
            digest: config.clone(),
            source,
        })?;
        if ids.len() != layers.len() {
            return Err(self.invalid(format!(
                "config `{config}` has {} diff IDs for {} layers",
                ids.len(),
                layers.len()
            )));
        }
        for ((blob, compression), id) in layers.iter().zip(&ids) {
            // Layers of unknown media types are refused by the layer store on first use.
            let Some(declared) = compression else {
                continue;
            };
            let actual = self.layer_diff_id(blob, *declared)?;
            if actual.to_string() != *id {
                return Err(self.invalid(format!(
                    "layer `{blob}` has diff ID `{actual}`, its config says `{id}`"
                )));
            }
        }
        Ok(())
    }

    /// The diff ID of the layer blob `blob`, refusing a layer the applier would refuse or whose
    /// bytes are not compressed as its media type says.
    fn layer_diff_id(&self, blob: &Digest, declared: LayerCompression) -> Result<Digest> {
        let mut scans = self.scans.borrow_mut();
        match scans.get(blob) {
            None => return Err(self.invalid(format!("blob `{blob}` is missing"))),
            Some((
                _,
                LayerScan::Layer {
                    compression,
                    diff_id,
                },
            )) => {
                if *compression == declared {
                    return Ok(diff_id.clone());
                }
                return Err(self.invalid(format!(
                    "layer `{blob}` is {} but its media type says {}",
                    compression_name(*compression),
                    compression_name(declared)
                )));
            }
            Some((_, LayerScan::Refused(_))) => {}
        }
        // The load fails here, so the verdict is not needed again.
        match scans.remove(blob) {
            Some((path, LayerScan::Refused(source))) => Err(Error::RefusedLayer {
                digest: blob.clone(),
                path,
                source: Box::new(source),
            }),
            _ => Err(self.invalid(format!("blob `{blob}` is missing"))),
        }
    }

    /// A legacy `manifest.json` entry: the config and layer files become a Docker schema 2
    /// manifest, each layer described as gzip or plain tar by its first bytes.
    fn image_of_docker_entry(
        &self,
        files: &BTreeMap<String, Stored>,
        entry: &ManifestEntry,
    ) -> Result<LoadedImage> {
        let (config, config_size) = self.resolve(files, &entry.config)?;
        if config_size > MAX_METADATA_SIZE {
            return Err(Error::MetadataTooLarge {
                digest: config,
                size: config_size,
            });
        }
        let mut layers = Vec::new();
        let mut descs = Vec::new();
        for path in &entry.layers {
            let (digest, size) = self.resolve(files, path)?;
            let compression = self.sniff_compression(&digest)?;
            let mt = match compression {
                LayerCompression::Gzip => media_type::DOCKER_LAYER_GZIP,
                LayerCompression::None => media_type::DOCKER_LAYER_TAR,
                LayerCompression::Zstd => {
                    return Err(self.invalid(format!(
                        "layer `{path}` is zstd-compressed; docker archives with zstd layers are not supported yet"
                    )));
                }
            };
            descs.push(
                serde_json::json!({"mediaType": mt, "digest": digest.to_string(), "size": size}),
            );
            layers.push((digest, Some(compression)));
        }
        self.check_diff_ids(&config, &layers)?;
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media_type::DOCKER_MANIFEST,
            "config": {
                "mediaType": media_type::DOCKER_CONFIG,
                "digest": config.to_string(),
                "size": config_size,
            },
            "layers": descs,
        });
        let bytes = serde_json::to_vec(&manifest).unwrap_or_default();
        let fresh = !self.content.contains(&kiln_oci::sha256(&bytes));
        let manifest = self
            .content
            .put(&bytes, None)
            .map_err(|e| self.store_err(e))?;
        if fresh {
            self.added.borrow_mut().push(manifest.clone());
        }
        // Parse it back: the store only names manifests it can read.
        let _: ImageManifest =
            serde_json::from_slice(&bytes).map_err(|source| Error::InvalidManifest {
                digest: manifest.clone(),
                source,
            })?;
        Ok(LoadedImage {
            manifest,
            config,
            names: Vec::new(),
        })
    }

    fn sniff_compression(&self, digest: &Digest) -> Result<LayerCompression> {
        let mut file = self
            .content
            .open_blob(digest)
            .map_err(|source| Error::ReadBlob {
                digest: digest.clone(),
                source: Box::new(source),
            })?;
        let mut magic = [0u8; 4];
        let mut n = 0;
        while n < magic.len() {
            match file.read(&mut magic[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) => return Err(self.read_err()(e)),
            }
        }
        Ok(match &magic[..n] {
            [0x1f, 0x8b, ..] => LayerCompression::Gzip,
            [0x28, 0xb5, 0x2f, 0xfd] => LayerCompression::Zstd,
            _ => LayerCompression::None,
        })
    }
}

fn compression_name(c: LayerCompression) -> &'static str {
    match c {
        LayerCompression::None => "a plain tar",
        LayerCompression::Gzip => "gzip",
        LayerCompression::Zstd => "zstd",
    }
}

/// `a/./b/../c` → `a/c`; `None` when the path climbs out of the archive.
fn clean(path: &Path) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::Prefix(_) => return None,
        }
    }
    Some(parts.join("/"))
}

/// The digest a `blobs/<alg>/<hex>` path claims.
fn blob_name(path: &str) -> Option<Digest> {
    let rest = path.strip_prefix("blobs/")?;
    let (alg, hex) = rest.split_once('/')?;
    kiln_oci::parse_digest(&format!("{alg}:{hex}")).ok()
}

#[cfg(test)]
mod tests;
