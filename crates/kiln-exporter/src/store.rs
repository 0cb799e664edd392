//! The local image store: names (full references) → manifest digests, with what `docker images`
//! shows cached beside them. One JSON file holds all names; writers take an exclusive `flock`
//! on a lock file for the read-modify-write and replace the file atomically, so concurrent kiln
//! processes never lose each other's tags and readers need no lock.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use kiln_content::ContentStore;
use kiln_oci::{Digest, Reference};
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
    /// The manifest, its config and its layers must be in the content store.
    pub fn tag(&self, name: &Reference, manifest: &Digest) -> Result<()> {
        let m = image::read_manifest(&self.content, manifest)?;
        let config = m.config();
        let mut size = image::check_descriptor(&self.content, config)?;
        for layer in m.layers() {
            size += image::check_descriptor(&self.content, layer)?;
        }
        let created = image::read_created(&self.content, config)?;
        let record = StoredImage {
            manifest: manifest.clone(),
            config: config.digest().clone(),
            created,
            size,
            tagged_at: Utc::now(),
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
