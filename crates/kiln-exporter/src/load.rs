//! `kiln load`: reads a `docker save` archive (legacy `manifest.json` with `<id>/layer.tar`, or
//! Docker 25's OCI layout) or an OCI image layout tarball, from a file or a pipe, in one pass.
//! Every file goes into the content store as it streams by; afterwards the images are resolved
//! from `index.json` (names from `io.containerd.image.name` / `org.opencontainers.image.ref.name`)
//! or `manifest.json` (`RepoTags`). Each blob must hash to its name, each descriptor's size must
//! match, and every gzip or plain layer must hash (uncompressed) to its config's diff ID.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use kiln_content::ContentStore;
use kiln_oci::media_type::{self, LayerCompression};
use kiln_oci::{Digest, ImageIndex, ImageManifest, Platform, Reference, Sha256Writer};
use serde::Deserialize;

use crate::docker::{MANIFEST_FILE, ManifestEntry};
use crate::oci::{ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME, INDEX_FILE};
use crate::{Error, MAX_METADATA_SIZE, Result};

/// An image found in an archive, its blobs in the content store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedImage {
    /// A single-platform manifest (an index is resolved to `platform`).
    pub manifest: Digest,
    /// The image ID.
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
    };
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

struct Loader<'a> {
    content: &'a ContentStore,
    source: PathBuf,
}

impl Loader<'_> {
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
            let mut writer = self.content.writer().map_err(|e| self.store_err(e))?;
            io::copy(&mut entry, &mut writer).map_err(self.read_err())?;
            let (digest, size) = writer.commit(None).map_err(|e| self.store_err(e))?;
            if let Some(expected) = blob_name(&name)
                && expected != digest
            {
                return Err(Error::DigestMismatch {
                    expected,
                    actual: digest,
                });
            }
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
            let manifest = self.pick_manifest(
                files,
                desc.digest(),
                desc.size(),
                desc.media_type().as_ref(),
                platform,
                0,
            )?;
            let config = self.check_manifest(files, &manifest)?;
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
            let actual = match compression {
                Some(LayerCompression::None) => blob.clone(),
                Some(LayerCompression::Gzip) => self.gunzip_digest(blob)?,
                // zstd and unknown layers cannot be checked here; `kiln run` checks on unpack.
                _ => continue,
            };
            if actual.to_string() != *id {
                return Err(self.invalid(format!(
                    "layer `{blob}` has diff ID `{actual}`, its config says `{id}`"
                )));
            }
        }
        Ok(())
    }

    fn gunzip_digest(&self, blob: &Digest) -> Result<Digest> {
        let file = self
            .content
            .open_blob(blob)
            .map_err(|source| Error::ReadBlob {
                digest: blob.clone(),
                source: Box::new(source),
            })?;
        let mut gz = flate2::read::MultiGzDecoder::new(io::BufReader::new(file));
        let mut hash = Sha256Writer::new(io::sink());
        io::copy(&mut gz, &mut hash)
            .map_err(|e| self.invalid(format!("layer `{blob}` does not decompress: {e}")))?;
        Ok(hash.finish().1)
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
        let manifest = self
            .content
            .put(&bytes, None)
            .map_err(|e| self.store_err(e))?;
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
mod tests {
    use super::*;
    use crate::ArchiveOptions;
    use crate::save::{SaveFormat, SaveImage, write_save_archive};

    fn tar_gz(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (p, data) in files {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, p, *data).unwrap();
        }
        let tar = b.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut gz, &tar).unwrap();
        gz.finish().unwrap()
    }

    /// A one-layer image in `content`; returns (manifest, config).
    fn image(content: &ContentStore, file: &[u8]) -> (Digest, Digest) {
        let layer = tar_gz(&[("hello.txt", file)]);
        let mut gz = flate2::read::GzDecoder::new(layer.as_slice());
        let mut tar = Vec::new();
        gz.read_to_end(&mut tar).unwrap();
        let diff_id = kiln_oci::sha256(&tar);
        let layer_digest = content.put(&layer, None).unwrap();
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [diff_id.to_string()]},
        }))
        .unwrap();
        let config_digest = content.put(&config, None).unwrap();
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media_type::DOCKER_MANIFEST,
            "config": {"mediaType": media_type::DOCKER_CONFIG, "digest": config_digest.to_string(), "size": config.len()},
            "layers": [{"mediaType": media_type::DOCKER_LAYER_GZIP, "digest": layer_digest.to_string(), "size": layer.len()}],
        }))
        .unwrap();
        (content.put(&manifest, None).unwrap(), config_digest)
    }

    fn store() -> (tempfile::TempDir, ContentStore) {
        let dir = tempfile::tempdir().unwrap();
        let content = ContentStore::open(dir.path().join("c")).unwrap();
        (dir, content)
    }

    #[test]
    fn save_then_load_round_trips_both_formats_with_names() {
        let (_d, src) = store();
        let (m1, c1) = image(&src, b"one");
        let (m2, c2) = image(&src, b"two");
        let images = vec![
            SaveImage {
                manifest: m1.clone(),
                names: vec!["a:1".parse().unwrap(), "b/c:2".parse().unwrap()],
            },
            SaveImage {
                manifest: m2.clone(),
                names: vec![],
            },
        ];
        for format in [SaveFormat::Docker, SaveFormat::Oci] {
            let bytes = write_save_archive(
                &src,
                &images,
                format,
                &ArchiveOptions::default(),
                Vec::new(),
            )
            .unwrap();
            let (_d2, dst) = store();
            let loaded = load_archive(
                &dst,
                bytes.as_slice(),
                Path::new("x.tar"),
                &Platform::host(),
            )
            .unwrap();
            assert_eq!(loaded.len(), 2, "{format:?}");
            assert_eq!(loaded[0].manifest, m1);
            assert_eq!(loaded[0].config, c1);
            let names: Vec<String> = loaded[0].names.iter().map(|n| n.whole()).collect();
            assert_eq!(
                names,
                ["docker.io/library/a:1", "docker.io/b/c:2"],
                "{format:?}"
            );
            assert_eq!(loaded[1].config, c2);
            assert!(loaded[1].names.is_empty());
        }
    }

    #[test]
    fn legacy_docker_archive_with_symlinked_layer_loads_and_bad_diff_id_fails() {
        let (_d, content) = store();
        let layer = {
            let mut b = tar::Builder::new(Vec::new());
            let mut h = tar::Header::new_ustar();
            h.set_size(2);
            h.set_mode(0o644);
            b.append_data(&mut h, "f", &b"hi"[..]).unwrap();
            b.into_inner().unwrap()
        };
        let diff = kiln_oci::sha256(&layer);
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [diff.to_string(), diff.to_string()]},
        }))
        .unwrap();
        let config_name = format!("{}.json", kiln_oci::sha256_hex(&config));
        let manifest = serde_json::to_vec(&serde_json::json!([{
            "Config": config_name, "RepoTags": ["legacy:v1"],
            "Layers": ["aaa/layer.tar", "bbb/layer.tar"],
        }]))
        .unwrap();
        let archive = |config: &[u8]| {
            let mut b = tar::Builder::new(Vec::new());
            let mut add = |p: &str, d: &[u8]| {
                let mut h = tar::Header::new_ustar();
                h.set_size(d.len() as u64);
                h.set_mode(0o644);
                b.append_data(&mut h, p, d).unwrap();
            };
            add("aaa/layer.tar", &layer);
            add(&config_name, config);
            add("manifest.json", &manifest);
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, "bbb/layer.tar", "../aaa/layer.tar")
                .unwrap();
            b.into_inner().unwrap()
        };
        let loaded = load_archive(
            &content,
            archive(&config).as_slice(),
            Path::new("-"),
            &Platform::host(),
        )
        .unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].names[0].whole(), "docker.io/library/legacy:v1");
        let m = crate::image::read_manifest(&content, &loaded[0].manifest).unwrap();
        assert_eq!(m.layers().len(), 2);
        assert_eq!(m.layers()[1].digest(), &diff);

        let bad =
            String::from_utf8(config.clone())
                .unwrap()
                .replacen(&diff.digest()[..8], "00000000", 1);
        let err = load_archive(
            &content,
            archive(bad.as_bytes()).as_slice(),
            Path::new("-"),
            &Platform::host(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("invalid archive"), "{err}");
    }

    #[test]
    fn a_blob_that_does_not_match_its_name_is_refused() {
        let (_d, content) = store();
        let wrong = kiln_oci::sha256(b"something else");
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(3);
        h.set_mode(0o644);
        b.append_data(&mut h, crate::archive::blob_path(&wrong), &b"abc"[..])
            .unwrap();
        let bytes = b.into_inner().unwrap();
        let err = load_archive(
            &content,
            bytes.as_slice(),
            Path::new("-"),
            &Platform::host(),
        )
        .unwrap_err();
        assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
    }

    #[test]
    fn paths_are_cleaned_and_may_not_escape() {
        assert_eq!(clean(Path::new("./a/./b/../c")).unwrap(), "a/c");
        assert_eq!(clean(Path::new("/abs/x")).unwrap(), "abs/x");
        assert!(clean(Path::new("../x")).is_none());
    }
}
