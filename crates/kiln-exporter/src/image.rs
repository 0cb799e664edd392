//! Reading an image's manifest, config and blob list out of the content store.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use kiln_content::ContentStore;
use kiln_oci::{Descriptor, Digest, ImageIndex, ImageManifest, Platform, media_type};
use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::{Error, MAX_METADATA_SIZE, Result};

/// How deep image indexes may nest before we stop following them (guards against cycles).
const MAX_INDEX_DEPTH: usize = 4;

/// A manifest or index blob: what a descriptor pointing at it needs.
#[derive(Debug, Clone)]
pub(crate) struct RootBlob {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
}

/// The few config fields this crate needs; parsed leniently so Docker-era configs load too.
#[derive(Debug, Default, Deserialize)]
struct ConfigDoc {
    created: Option<String>,
}

/// Every blob reachable from a root manifest or index, deduplicated and in digest order.
#[derive(Debug)]
pub(crate) struct Graph {
    pub root: RootBlob,
    pub blobs: BTreeMap<String, (Digest, u64)>,
}

/// The blob's size; an absent blob is an error.
pub(crate) fn blob_size(content: &ContentStore, digest: &Digest) -> Result<u64> {
    content
        .size(digest)
        .map_err(|source| Error::ReadBlob {
            digest: digest.clone(),
            source: Box::new(source),
        })?
        .ok_or_else(|| Error::MissingBlob(digest.clone()))
}

/// Checks that the blob a descriptor names is present with the size it claims.
pub(crate) fn check_descriptor(content: &ContentStore, desc: &Descriptor) -> Result<u64> {
    let actual = blob_size(content, desc.digest())?;
    if actual != desc.size() {
        return Err(Error::SizeMismatch {
            digest: desc.digest().clone(),
            expected: desc.size(),
            actual,
        });
    }
    Ok(actual)
}

/// Reads a small JSON blob (manifest, index, config), refusing anything implausibly large.
pub(crate) fn read_metadata(content: &ContentStore, digest: &Digest) -> Result<Vec<u8>> {
    let size = blob_size(content, digest)?;
    if size > MAX_METADATA_SIZE {
        return Err(Error::MetadataTooLarge {
            digest: digest.clone(),
            size,
        });
    }
    content.read(digest).map_err(|source| Error::ReadBlob {
        digest: digest.clone(),
        source: Box::new(source),
    })
}

/// The media type of a manifest-like document: its own `mediaType`, else guessed from its shape
/// (OCI made the field optional).
pub(crate) fn sniff_media_type(digest: &Digest, bytes: &[u8]) -> Result<String> {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        manifests: Option<IgnoredAny>,
    }
    let probe: Probe = serde_json::from_slice(bytes).map_err(|source| Error::InvalidManifest {
        digest: digest.clone(),
        source,
    })?;
    Ok(match (probe.media_type, probe.manifests) {
        (Some(mt), _) => mt,
        (None, Some(_)) => media_type::OCI_INDEX.to_string(),
        (None, None) => media_type::OCI_MANIFEST.to_string(),
    })
}

fn parse_manifest(digest: &Digest, bytes: &[u8]) -> Result<ImageManifest> {
    serde_json::from_slice(bytes).map_err(|source| Error::InvalidManifest {
        digest: digest.clone(),
        source,
    })
}

/// Reads a single-platform manifest; an index or anything else is refused.
pub(crate) fn read_manifest(content: &ContentStore, digest: &Digest) -> Result<ImageManifest> {
    let bytes = read_metadata(content, digest)?;
    let media_type = sniff_media_type(digest, &bytes)?;
    if !media_type::is_manifest(&media_type) {
        return Err(Error::NotAManifest {
            digest: digest.clone(),
            media_type,
        });
    }
    parse_manifest(digest, &bytes)
}

/// The image's creation time from its config, if it has a parseable one.
pub(crate) fn read_created(
    content: &ContentStore,
    config: &Descriptor,
) -> Result<Option<DateTime<Utc>>> {
    let bytes = read_metadata(content, config.digest())?;
    let doc: ConfigDoc = serde_json::from_slice(&bytes).map_err(|source| Error::InvalidConfig {
        digest: config.digest().clone(),
        source,
    })?;
    Ok(doc
        .created
        .and_then(|c| DateTime::parse_from_rfc3339(&c).ok())
        .map(|t| t.with_timezone(&Utc)))
}

/// Collects the root and every blob below it, checking each is present at its stated size.
pub(crate) fn collect(content: &ContentStore, root: &Digest) -> Result<Graph> {
    let bytes = read_metadata(content, root)?;
    let media_type = sniff_media_type(root, &bytes)?;
    let root_blob = RootBlob {
        digest: root.clone(),
        size: bytes.len() as u64,
        media_type: media_type.clone(),
    };
    let mut blobs = BTreeMap::new();
    insert(&mut blobs, root, root_blob.size);
    walk(content, root, &bytes, &media_type, &mut blobs, 0)?;
    Ok(Graph {
        root: root_blob,
        blobs,
    })
}

fn insert(blobs: &mut BTreeMap<String, (Digest, u64)>, digest: &Digest, size: u64) {
    blobs.insert(digest.to_string(), (digest.clone(), size));
}

fn walk(
    content: &ContentStore,
    digest: &Digest,
    bytes: &[u8],
    media_type: &str,
    blobs: &mut BTreeMap<String, (Digest, u64)>,
    depth: usize,
) -> Result<()> {
    if media_type::is_index(media_type) {
        if depth >= MAX_INDEX_DEPTH {
            return Err(Error::IndexTooDeep(digest.clone()));
        }
        let index: ImageIndex =
            serde_json::from_slice(bytes).map_err(|source| Error::InvalidManifest {
                digest: digest.clone(),
                source,
            })?;
        for child in index.manifests() {
            let size = check_descriptor(content, child)?;
            insert(blobs, child.digest(), size);
            let child_type = child.media_type().to_string();
            // Unknown children (artifacts) are carried along but not descended into.
            if media_type::is_index(&child_type) || media_type::is_manifest(&child_type) {
                let child_bytes = read_metadata(content, child.digest())?;
                walk(
                    content,
                    child.digest(),
                    &child_bytes,
                    &child_type,
                    blobs,
                    depth + 1,
                )?;
            }
        }
        Ok(())
    } else if media_type::is_manifest(media_type) {
        let manifest = parse_manifest(digest, bytes)?;
        for desc in std::iter::once(manifest.config()).chain(manifest.layers()) {
            let size = check_descriptor(content, desc)?;
            insert(blobs, desc.digest(), size);
        }
        Ok(())
    } else {
        Err(Error::NotAManifest {
            digest: digest.clone(),
            media_type: media_type.to_string(),
        })
    }
}

/// (platform, manifest) of each entry of an index that names an image manifest.
pub(crate) fn index_entries(digest: &Digest, bytes: &[u8]) -> Result<Vec<(Platform, Digest)>> {
    let index: ImageIndex =
        serde_json::from_slice(bytes).map_err(|source| Error::InvalidManifest {
            digest: digest.clone(),
            source,
        })?;
    Ok(index
        .manifests()
        .iter()
        .filter(|d| media_type::is_manifest(d.media_type().as_ref()))
        .filter_map(|d| {
            let p = d.platform().as_ref()?;
            let platform = Platform::new(
                &p.os().to_string(),
                &p.architecture().to_string(),
                p.variant().as_deref(),
            );
            Some((platform, d.digest().clone()))
        })
        .collect())
}

/// The entry a name stands for where no platform is asked: this machine's, else the first.
pub(crate) fn default_entry(entries: &[(Platform, Digest)]) -> Option<Digest> {
    let host = Platform::host();
    entries
        .iter()
        .find(|(p, _)| host.matches(p))
        .or(entries.first())
        .map(|(_, d)| d.clone())
}

/// The one image of `root` that Docker's `manifest.json` lists: `root` itself when it is a
/// manifest; for an index, its image for this machine's platform, else its first, as `docker
/// save` (Docker 25+, containerd image store) picks it. A loader that reads only
/// `manifest.json` (Docker before the containerd store) gets that platform's image.
pub(crate) fn docker_image(content: &ContentStore, root: &Digest) -> Result<Digest> {
    let bytes = read_metadata(content, root)?;
    if !media_type::is_index(&sniff_media_type(root, &bytes)?) {
        return Ok(root.clone());
    }
    default_entry(&index_entries(root, &bytes)?).ok_or_else(|| Error::EmptyIndex(root.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_media_type_from_shape_when_field_is_absent() {
        let d = kiln_oci::sha256(b"x");
        assert_eq!(
            sniff_media_type(&d, br#"{"schemaVersion":2,"manifests":[]}"#).unwrap(),
            media_type::OCI_INDEX
        );
        assert_eq!(
            sniff_media_type(&d, br#"{"schemaVersion":2,"config":{},"layers":[]}"#).unwrap(),
            media_type::OCI_MANIFEST
        );
        assert_eq!(
            sniff_media_type(
                &d,
                format!(r#"{{"mediaType":"{}"}}"#, media_type::DOCKER_MANIFEST).as_bytes()
            )
            .unwrap(),
            media_type::DOCKER_MANIFEST
        );
        assert!(sniff_media_type(&d, b"not json").is_err());
    }

    #[test]
    fn missing_and_wrong_size_blobs_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let content = ContentStore::open(dir.path()).unwrap();
        let d = content.put(b"abc", None).unwrap();
        let ok = Descriptor::new(kiln_oci::MediaType::ImageLayer, 3, d.clone());
        assert_eq!(check_descriptor(&content, &ok).unwrap(), 3);
        let wrong = Descriptor::new(kiln_oci::MediaType::ImageLayer, 4, d);
        assert!(matches!(
            check_descriptor(&content, &wrong),
            Err(Error::SizeMismatch {
                expected: 4,
                actual: 3,
                ..
            })
        ));
        let absent = Descriptor::new(kiln_oci::MediaType::ImageLayer, 1, kiln_oci::sha256(b"z"));
        assert!(matches!(
            check_descriptor(&content, &absent),
            Err(Error::MissingBlob(_))
        ));
    }

    #[test]
    fn docker_lists_this_machines_image_of_an_index_else_its_first() {
        let dir = tempfile::tempdir().unwrap();
        let content = ContentStore::open(dir.path()).unwrap();
        let manifest = content
            .put(br#"{"schemaVersion":2,"config":{},"layers":[]}"#, None)
            .unwrap();
        assert_eq!(docker_image(&content, &manifest).unwrap(), manifest);
        let entry = |arch: &str, digest: &Digest| {
            format!(
                r#"{{"mediaType":"{}","digest":"{digest}","size":1,"platform":{{"os":"linux","architecture":"{arch}"}}}}"#,
                media_type::OCI_MANIFEST
            )
        };
        let other = kiln_oci::sha256(b"other");
        let host = Platform::host().architecture;
        let foreign = if host == "arm64" { "s390x" } else { "arm64" };
        let index = |entries: &[String]| {
            let bytes = format!(
                r#"{{"schemaVersion":2,"manifests":[{}]}}"#,
                entries.join(",")
            );
            content.put(bytes.as_bytes(), None).unwrap()
        };
        let both = index(&[entry(foreign, &other), entry(&host, &manifest)]);
        assert_eq!(docker_image(&content, &both).unwrap(), manifest);
        let foreign_only = index(&[entry(foreign, &other)]);
        assert_eq!(docker_image(&content, &foreign_only).unwrap(), other);
        let empty = index(&[]);
        assert!(matches!(
            docker_image(&content, &empty),
            Err(Error::EmptyIndex(_))
        ));
    }
}
