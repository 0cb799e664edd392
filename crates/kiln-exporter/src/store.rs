//! The local image store: names (full references) → manifest digests, with what `docker images`
//! shows cached beside them. One JSON file holds all names; writers take an exclusive `flock`
//! on a lock file for the read-modify-write and replace the file atomically, so concurrent kiln
//! processes never lose each other's tags and readers need no lock.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use kiln_content::ContentStore;
use kiln_oci::{Digest, Platform, Reference, media_type};
use serde::{Deserialize, Serialize};

use crate::image;
use crate::{Error, Result, atomic_write, io_err};

const STATE_FILE: &str = "images.json";
const LOCK_FILE: &str = "images.lock";
const STATE_VERSION: u32 = 1;

/// A named image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRecord {
    pub name: Reference,
    pub manifest: Digest,
    /// The config digest, which is what Docker calls the image ID.
    pub config: Digest,
    /// From the config's `created`.
    pub created: Option<DateTime<Utc>>,
    /// Config plus compressed layer blob sizes, roughly what `docker images` reports.
    pub size: u64,
    pub tagged_at: DateTime<Utc>,
    /// The index the name points at, when it names several platforms' images; `manifest` and
    /// `config` are then those of its default platform (this machine's, else the first).
    pub index: Option<Digest>,
}

/// One platform's image in a multi-platform record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformImage {
    pub platform: Platform,
    pub manifest: Digest,
    pub config: Digest,
    pub size: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    version: u32,
    images: BTreeMap<String, StoredImage>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredImage {
    manifest: Digest,
    config: Digest,
    #[serde(default)]
    created: Option<DateTime<Utc>>,
    size: u64,
    tagged_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    index: Option<Digest>,
}

#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
    content: ContentStore,
}

impl ImageStore {
    /// Opens (creating if needed) the store at `root`; its blobs live in `content`.
    pub fn open(root: &Path, content: ContentStore) -> Result<ImageStore> {
        std::fs::create_dir_all(root).map_err(io_err(root))?;
        Ok(ImageStore {
            root: root.to_path_buf(),
            content,
        })
    }

    pub fn content(&self) -> &ContentStore {
        &self.content
    }

    /// Points `name` at the image whose manifest is `manifest`, replacing any existing tag.
    /// The manifest, its config and its layers must be in the content store. `manifest` may be
    /// an index (several platforms): every platform's image must then be there, and the record
    /// keeps the index beside its default platform's manifest.
    pub fn tag(&self, name: &Reference, manifest: &Digest) -> Result<()> {
        let bytes = image::read_metadata(&self.content, manifest)?;
        let (index, default, size) =
            if media_type::is_index(&image::sniff_media_type(manifest, &bytes)?) {
                let entries = image::index_entries(manifest, &bytes)?;
                let mut seen = std::collections::HashSet::new();
                let mut size = 0;
                for (_, child) in &entries {
                    let m = image::read_manifest(&self.content, child)?;
                    for d in std::iter::once(m.config()).chain(m.layers().iter()) {
                        let s = image::check_descriptor(&self.content, d)?;
                        if seen.insert(d.digest().clone()) {
                            size += s;
                        }
                    }
                }
                let default = image::default_entry(&entries)
                    .ok_or_else(|| Error::EmptyIndex(manifest.clone()))?;
                (Some(manifest.clone()), default, size)
            } else {
                let m = image::read_manifest(&self.content, manifest)?;
                let mut size = image::check_descriptor(&self.content, m.config())?;
                for layer in m.layers() {
                    size += image::check_descriptor(&self.content, layer)?;
                }
                (None, manifest.clone(), size)
            };
        let m = image::read_manifest(&self.content, &default)?;
        let config = m.config();
        let created = image::read_created(&self.content, config)?;
        let record = StoredImage {
            manifest: default,
            config: config.digest().clone(),
            created,
            size,
            tagged_at: Utc::now(),
            index,
        };
        let _lock = self.lock()?;
        let mut state = self.load()?;
        // A name replaces the stand-in an unnamed load left.
        if let Some(dangling) = dangling_name(manifest).filter(|d| d != name) {
            state.images.remove(&dangling.whole());
        }
        state.images.insert(name.whole(), record);
        self.save(&state)
    }

    /// The platforms of the index `name` points at, with their manifests; empty for a name
    /// of one image.
    pub fn platforms(&self, record: &ImageRecord) -> Result<Vec<(Platform, Digest)>> {
        let Some(index) = &record.index else {
            return Ok(Vec::new());
        };
        let bytes = image::read_metadata(&self.content, index)?;
        image::index_entries(index, &bytes)
    }

    /// Each platform's image of the index `record` points at: platform, manifest, config and
    /// size (config plus layers); empty for a single-platform image.
    pub fn platform_images(&self, record: &ImageRecord) -> Result<Vec<PlatformImage>> {
        let mut out = Vec::new();
        for (platform, manifest) in self.platforms(record)? {
            let m = image::read_manifest(&self.content, &manifest)?;
            let size = std::iter::once(m.config())
                .chain(m.layers().iter())
                .map(|d| d.size())
                .sum();
            out.push(PlatformImage {
                platform,
                manifest,
                config: m.config().digest().clone(),
                size,
            });
        }
        Ok(out)
    }

    /// `name`'s image for `platform`: for an index, its manifest for that platform (an error
    /// lists the platforms it has); a single image is returned whatever its platform.
    pub fn get_platform(
        &self,
        name: &Reference,
        platform: &Platform,
    ) -> Result<Option<ImageRecord>> {
        let Some(mut record) = self.get(name)? else {
            return Ok(None);
        };
        let entries = self.platforms(&record)?;
        if entries.is_empty() {
            return Ok(Some(record));
        }
        let Some((_, manifest)) = entries.iter().find(|(p, _)| platform.matches(p)) else {
            return Err(Error::NoPlatform {
                name: name.whole(),
                platform: platform.to_string(),
                available: entries
                    .iter()
                    .map(|(p, _)| p.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        let m = image::read_manifest(&self.content, manifest)?;
        record.manifest = manifest.clone();
        record.config = m.config().digest().clone();
        record.created = image::read_created(&self.content, m.config())?;
        Ok(Some(record))
    }

    pub fn get(&self, name: &Reference) -> Result<Option<ImageRecord>> {
        let state = self.load()?;
        let key = name.whole();
        match state.images.get(&key) {
            Some(stored) => Ok(Some(self.record(&key, stored)?)),
            None => Ok(None),
        }
    }

    /// Every named image, newest first (by creation time, then tagging time, then name), as
    /// `docker images` orders them.
    pub fn list(&self) -> Result<Vec<ImageRecord>> {
        let state = self.load()?;
        let mut records = state
            .images
            .iter()
            .map(|(key, stored)| self.record(key, stored))
            .collect::<Result<Vec<_>>>()?;
        records.sort_by(|a, b| {
            b.created
                .cmp(&a.created)
                .then(b.tagged_at.cmp(&a.tagged_at))
                .then_with(|| a.name.whole().cmp(&b.name.whole()))
        });
        Ok(records)
    }

    /// Removes a name; `false` when there was no such name. Blobs are left to garbage collection.
    pub fn remove(&self, name: &Reference) -> Result<bool> {
        let _lock = self.lock()?;
        let mut state = self.load()?;
        if state.images.remove(&name.whole()).is_none() {
            return Ok(false);
        }
        self.save(&state)?;
        Ok(true)
    }

    fn state_path(&self) -> PathBuf {
        self.root.join(STATE_FILE)
    }

    fn record(&self, key: &str, stored: &StoredImage) -> Result<ImageRecord> {
        let name = key.parse().map_err(|_| Error::CorruptStoreName {
            path: self.state_path(),
            name: key.to_string(),
        })?;
        Ok(ImageRecord {
            name,
            manifest: stored.manifest.clone(),
            config: stored.config.clone(),
            created: stored.created,
            size: stored.size,
            tagged_at: stored.tagged_at,
            index: stored.index.clone(),
        })
    }

    fn load(&self) -> Result<State> {
        let path = self.state_path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(State::default()),
            Err(e) => return Err(Error::Io { path, source: e }),
        };
        serde_json::from_slice(&bytes).map_err(|source| Error::CorruptStore { path, source })
    }

    fn save(&self, state: &State) -> Result<()> {
        let state = State {
            version: STATE_VERSION,
            images: state.images.clone(),
        };
        let path = self.state_path();
        let bytes = serde_json::to_vec_pretty(&state).map_err(|source| Error::CorruptStore {
            path: path.clone(),
            source,
        })?;
        atomic_write(&path, &bytes)
    }

    /// An exclusive lock over the store, held until the returned file is dropped.
    fn lock(&self) -> Result<File> {
        let path = self.root.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive).map_err(|e| {
            Error::Io {
                path,
                source: e.into(),
            }
        })?;
        Ok(file)
    }
}

/// The repository an image loaded without a name is kept under, by manifest digest (as
/// Docker's containerd image store keeps one); listed as `<none>:<none>`.
const DANGLING_REPOSITORY: &str = "library/moby-dangling";

/// The name kept for the unnamed image whose manifest is `manifest`.
pub fn dangling_name(manifest: &Digest) -> Option<Reference> {
    format!("docker.io/{DANGLING_REPOSITORY}@{manifest}")
        .parse()
        .ok()
}

/// Whether `r` is a [`dangling_name`].
pub fn is_dangling(r: &Reference) -> bool {
    r.registry() == "docker.io" && r.repository() == DANGLING_REPOSITORY && r.tag().is_none()
}

/// A name the way Docker shows it: `hello:latest` for `docker.io/library/hello:latest`,
/// `user/app` for Docker Hub users, the registry kept for everything else. A name with only a
/// digest has tag `<none>`.
pub fn familiar_name(r: &Reference) -> (String, String) {
    if is_dangling(r) {
        return ("<none>".into(), "<none>".into());
    }
    let repo = match (r.registry(), r.repository()) {
        // Docker drops `library/` only for one-component official names.
        ("docker.io", repo) => match repo.strip_prefix("library/") {
            Some(short) if !short.contains('/') => short.to_string(),
            _ => repo.to_string(),
        },
        ("", repo) => repo.to_string(),
        (registry, repo) => format!("{registry}/{repo}"),
    };
    let tag = r.tag().unwrap_or("<none>").to_string();
    (repo, tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn familiar_names_follow_docker() {
        let cases = [
            ("hello-world-flask", "hello-world-flask", "latest"),
            ("docker.io/library/python:3.11", "python", "3.11"),
            ("user/app:v1", "user/app", "v1"),
            ("library/x/y:z", "library/x/y", "z"),
            ("127.0.0.1:5000/a/b:c", "127.0.0.1:5000/a/b", "c"),
            ("ghcr.io/o/r:t", "ghcr.io/o/r", "t"),
        ];
        for (input, repo, tag) in cases {
            let r: Reference = input.parse().unwrap();
            assert_eq!(
                familiar_name(&r),
                (repo.to_string(), tag.to_string()),
                "{input}"
            );
        }
        let d = kiln_oci::sha256(b"x");
        let r: Reference = format!("busybox@{d}").parse().unwrap();
        assert_eq!(familiar_name(&r), ("busybox".into(), "<none>".into()));
        let dangling = dangling_name(&d).unwrap();
        assert!(is_dangling(&dangling) && !is_dangling(&r));
        assert_eq!(familiar_name(&dangling), ("<none>".into(), "<none>".into()));
    }

    /// A one-layer image for `arch` in `content`: its manifest's digest and size.
    fn image(content: &ContentStore, arch: &str) -> (Digest, usize) {
        let layer = content
            .put(format!("layer of {arch}").as_bytes(), None)
            .unwrap();
        let config = serde_json::json!({
            "architecture": arch, "os": "linux",
            "created": "2026-01-01T00:00:00Z",
            "rootfs": {"type": "layers", "diff_ids": [layer.to_string()]},
            "config": {},
        });
        let config = serde_json::to_vec(&config).unwrap();
        let config_digest = content.put(&config, None).unwrap();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media_type::OCI_MANIFEST,
            "config": {"mediaType": media_type::OCI_CONFIG, "digest": config_digest.to_string(), "size": config.len()},
            "layers": [{"mediaType": media_type::OCI_LAYER_TAR, "digest": layer.to_string(), "size": 9 + arch.len()}],
        });
        let manifest = serde_json::to_vec(&manifest).unwrap();
        (content.put(&manifest, None).unwrap(), manifest.len())
    }

    #[test]
    fn a_name_keeps_an_index_with_its_platforms() {
        let dir = tempfile::tempdir().unwrap();
        let content = ContentStore::open(dir.path().join("content")).unwrap();
        let store = ImageStore::open(&dir.path().join("images"), content.clone()).unwrap();
        // arm64 first: the default is still this machine's platform when the index has it.
        let host = Platform::host();
        let other = if host.architecture == "arm64" {
            "amd64"
        } else {
            "arm64"
        };
        let (foreign, foreign_size) = image(&content, other);
        let (native, native_size) = image(&content, &host.architecture);
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media_type::OCI_INDEX,
            "manifests": [
                {"mediaType": media_type::OCI_MANIFEST, "digest": foreign.to_string(), "size": foreign_size,
                 "platform": {"os": "linux", "architecture": other}},
                {"mediaType": media_type::OCI_MANIFEST, "digest": native.to_string(), "size": native_size,
                 "platform": {"os": "linux", "architecture": host.architecture}},
            ],
        });
        let index = content
            .put(&serde_json::to_vec(&index).unwrap(), None)
            .unwrap();
        let name: Reference = "multi:1".parse().unwrap();
        store.tag(&name, &index).unwrap();

        let listed = store.list().unwrap();
        assert_eq!(listed.len(), 1);
        let record = store.get(&name).unwrap().unwrap();
        assert_eq!(record.index.as_ref(), Some(&index));
        assert_eq!(record.manifest, native);
        let platforms: Vec<String> = store
            .platforms(&record)
            .unwrap()
            .iter()
            .map(|(p, _)| p.to_string())
            .collect();
        assert_eq!(platforms, [format!("linux/{other}"), host.to_string()]);
        let picked = store
            .get_platform(&name, &Platform::new("linux", other, None))
            .unwrap()
            .unwrap();
        assert_eq!(picked.manifest, foreign);
        assert_ne!(picked.config, record.config);
        let err = store
            .get_platform(&name, &Platform::new("linux", "s390x", None))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "image `docker.io/library/multi:1` has no image for linux/s390x (it has \
                 linux/{other}, {host})"
            )
        );
        // Every platform's blobs must be there.
        let missing = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media_type::OCI_INDEX,
            "manifests": [{"mediaType": media_type::OCI_MANIFEST, "digest": kiln_oci::sha256(b"gone").to_string(),
                           "size": 4, "platform": {"os": "linux", "architecture": "riscv64"}}],
        });
        let missing = content
            .put(&serde_json::to_vec(&missing).unwrap(), None)
            .unwrap();
        assert!(store.tag(&name, &missing).is_err());
        assert_eq!(store.get(&name).unwrap().unwrap().index, Some(index));
    }

    #[test]
    fn missing_state_file_is_an_empty_store_and_garbage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let content = ContentStore::open(dir.path().join("content")).unwrap();
        let store = ImageStore::open(&dir.path().join("images"), content).unwrap();
        assert!(store.list().unwrap().is_empty());
        std::fs::write(dir.path().join("images").join(STATE_FILE), b"{nope").unwrap();
        assert!(matches!(store.list(), Err(Error::CorruptStore { .. })));
    }
}
