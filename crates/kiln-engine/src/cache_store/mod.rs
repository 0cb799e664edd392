//! `--cache-to`/`--cache-from` `type=s3` and `type=azblob`: kiln's cache manifest
//! (cache_format.rs, the one registry and local caches hold) and its blobs as objects of a
//! bucket, where BuildKit puts its own: blobs at `<blobs prefix><digest>`, the manifest at
//! `<manifests prefix><name>` for each name. The transport is `object_store`'s `ObjectStore`
//! (s3.rs and azblob.rs only turn the attributes into one); this file is the layout on top.
//! Imports read the manifest and config only; layers come through the opened store, registered
//! with the worker, when a step or an export needs them.

mod azblob;
mod s3;

use std::collections::HashMap;
use std::path::Path as FsPath;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use kiln_oci::Digest;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub use azblob::AzblobCache;
pub use s3::S3Cache;

use crate::cache_format::{CacheConfig, Imported, MAX_CONFIG_BYTES, config_of};
use crate::{Engine, Error, Result};

/// Blobs up to this size go up in one request; larger ones in parts of this size.
const PART_SIZE: usize = 16 << 20;

/// Retries of a failed request: as the AWS SDK's standard mode (3 attempts), so a wrong
/// endpoint fails in seconds, not object_store's default 3 minutes.
pub(crate) fn retry() -> object_store::RetryConfig {
    object_store::RetryConfig {
        max_retries: 2,
        retry_timeout: Duration::from_secs(30),
        ..Default::default()
    }
}

/// A secret attribute: compared and cloned, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub(crate) String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// `name=`: the manifests an export writes (each) and an import reads (each, the first
/// name's records winning); `;` separates them, as BuildKit.
pub(crate) fn names(value: Option<String>) -> std::result::Result<Vec<String>, String> {
    let Some(value) = value else {
        return Ok(vec!["buildkit".into()]);
    };
    let names: Vec<String> = value.split(';').map(str::to_string).collect();
    if names.iter().any(|n| n.is_empty()) {
        return Err(format!("invalid name `{value}`: empty manifest name"));
    }
    Ok(names)
}

/// The `true`/`false` of a boolean attribute, naming it when it is neither.
pub(crate) fn boolean(key: &str, value: &str) -> std::result::Result<bool, String> {
    match value {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(format!("invalid {key} `{value}`: expected true or false")),
    }
}

/// An object key as `object_store` takes it, or why it is not one (an empty segment, `..`).
fn object_path(key: &str) -> std::result::Result<Path, String> {
    Path::parse(key).map_err(|e| format!("invalid object key `{key}`: {e}"))
}

/// An opened bucket cache.
pub(crate) struct ObjectCache {
    store: Arc<dyn ObjectStore>,
    /// How messages name it, also the `source` id its imported layers carry.
    id: String,
    /// The key prefixes blobs and manifests get (prefix included).
    blobs: String,
    manifests: String,
    names: Vec<String>,
    pub(crate) parallelism: usize,
    /// A blob older than this is uploaded again (when held), so an expiry rule on the bucket
    /// sees it used; `None`: never.
    touch_refresh: Option<Duration>,
}

/// A store failure as one line: `what`, then the innermost cause (object_store's messages
/// repeat their sources, and a server's XML body spans lines).
fn store_error(what: String) -> impl FnOnce(object_store::Error) -> Error {
    move |e| Error::Usage(format!("{what}: {}", innermost(&e)))
}

/// As [`store_error`] for a PUT: answered 404, it can only mean the bucket or container is
/// missing, which Azure's message does not say.
fn upload_error(what: String) -> impl FnOnce(object_store::Error) -> Error {
    move |e| match e {
        object_store::Error::NotFound { .. } => Error::Usage(format!(
            "{what}: the bucket or container does not exist ({})",
            innermost(&e)
        )),
        e => store_error(what)(e),
    }
}

fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause
        .to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

impl ObjectCache {
    fn blob_key(&self, blob: &Digest) -> Result<Path> {
        object_path(&format!("{}{blob}", self.blobs)).map_err(Error::Usage)
    }

    fn manifest_key(&self, name: &str) -> Result<Path> {
        object_path(&format!("{}{name}", self.manifests)).map_err(Error::Usage)
    }

    /// The blob's size and age when the bucket has it (a HEAD).
    async fn head(&self, blob: &Digest) -> Result<Option<(u64, Duration)>> {
        let key = self.blob_key(blob)?;
        match self.store.head(&key).await {
            Ok(meta) => {
                let age = (chrono::Utc::now() - meta.last_modified)
                    .to_std()
                    .unwrap_or_default();
                Ok(Some((meta.size, age)))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(store_error(format!("failed to check {key} in {}", self.id))(e)),
        }
    }

    pub(crate) async fn has(&self, blob: &Digest) -> Result<bool> {
        Ok(self.head(blob).await?.is_some())
    }

    /// Uploads the file at `path` as `blob` unless the bucket has it (and it is not older than
    /// `touch_refresh`); whether it was uploaded.
    pub(crate) async fn put_blob(&self, blob: &Digest, path: &FsPath) -> Result<bool> {
        if let Some((_, age)) = self.head(blob).await?
            && self.touch_refresh.is_none_or(|refresh| age <= refresh)
        {
            return Ok(false);
        }
        let key = self.blob_key(blob)?;
        let failed = || format!("failed to upload {key} to {}", self.id);
        let what = format!("reading `{}`", path.display());
        let mut file = tokio::fs::File::open(path)
            .await
            .map_err(crate::io(what.clone()))?;
        let size = file
            .metadata()
            .await
            .map_err(crate::io(what.clone()))?
            .len();
        if size <= PART_SIZE as u64 {
            let mut bytes = Vec::with_capacity(size as usize);
            file.read_to_end(&mut bytes)
                .await
                .map_err(crate::io(what))?;
            self.store
                .put(&key, PutPayload::from(bytes))
                .await
                .map_err(upload_error(failed()))?;
            return Ok(true);
        }
        let upload = self
            .store
            .put_multipart(&key)
            .await
            .map_err(upload_error(failed()))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = match file.read(&mut buf).await {
                Ok(n) => n,
                Err(e) => {
                    let _ = writer.abort().await;
                    return Err(crate::io(what)(e));
                }
            };
            if n == 0 {
                break;
            }
            writer
                .wait_for_capacity(2)
                .await
                .map_err(upload_error(failed()))?;
            writer.write(&buf[..n]);
        }
        writer.finish().await.map_err(upload_error(failed()))?;
        Ok(true)
    }

    /// Writes the manifest under every name; the last write of a name wins, as BuildKit.
    pub(crate) async fn put_manifest(&self, bytes: &[u8]) -> Result<()> {
        for name in &self.names {
            let key = self.manifest_key(name)?;
            self.store
                .put(&key, PutPayload::from(bytes.to_vec()))
                .await
                .map_err(upload_error(format!(
                    "failed to upload the cache manifest {key} to {}",
                    self.id
                )))?;
        }
        Ok(())
    }

    /// An object of at most `max` bytes, `None` when the bucket has no such key.
    async fn get_small(&self, key: &Path, max: u64) -> Result<Option<Vec<u8>>> {
        let failed = || format!("failed to read {key} from {}", self.id);
        let got = match self.store.get(key).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(store_error(failed())(e)),
        };
        if got.meta.size > max {
            return Err(Error::Usage(format!(
                "{key} in {} is larger than {max} bytes",
                self.id
            )));
        }
        let bytes = got.bytes().await.map_err(store_error(failed()))?;
        Ok(Some(bytes.to_vec()))
    }

    /// The records (and cache mounts) of every name's manifest, the first name's winning where
    /// keys meet. Records' layers name this store as their source.
    async fn records(&self) -> Result<Imported> {
        let invalid = |why: String| Error::Usage(format!("{} is not a kiln cache: {why}", self.id));
        let source = format!("{}{}", kiln_worker::STORE_SOURCE, self.id);
        let mut all = Imported {
            records: HashMap::new(),
            mounts: HashMap::new(),
        };
        let mut missing = Vec::new();
        for name in &self.names {
            let key = self.manifest_key(name)?;
            let Some(manifest) = self.get_small(&key, MAX_CONFIG_BYTES).await? else {
                missing.push(key.to_string());
                continue;
            };
            let (config, size) =
                config_of(&manifest).map_err(|why| invalid(format!("{key}: {why}")))?;
            let config_key = self.blob_key(&config)?;
            let bytes = self
                .get_small(&config_key, size)
                .await?
                .ok_or_else(|| invalid(format!("{key} names {config_key}, which is missing")))?;
            if kiln_oci::sha256(&bytes) != config {
                return Err(invalid(format!("{config_key}: digest mismatch")));
            }
            let imported = CacheConfig::records(&bytes, &source).map_err(invalid)?;
            for (k, v) in imported.records {
                all.records.entry(k).or_insert(v);
            }
            for (k, v) in imported.mounts {
                all.mounts.entry(k).or_insert(v);
            }
        }
        if missing.len() == self.names.len() {
            return Err(Error::Usage(format!(
                "no cache manifest in {} (looked for {})",
                self.id,
                missing.join(", ")
            )));
        }
        Ok(all)
    }
}

impl kiln_worker::BlobStore for ObjectCache {
    fn fetch<'a>(
        &'a self,
        blob: &'a Digest,
        w: &'a mut (dyn tokio::io::AsyncWrite + Unpin + Send),
    ) -> BoxFuture<'a, std::result::Result<(), kiln_solver::WorkerError>> {
        Box::pin(async move {
            let key = self.blob_key(blob)?;
            let mut stream = self.store.get(&key).await?.into_stream();
            while let Some(chunk) = stream.next().await {
                w.write_all(&chunk?).await?;
            }
            w.flush().await?;
            Ok(())
        })
    }
}

/// A bucket cache of either kind.
pub(crate) enum BucketCache<'a> {
    S3(&'a S3Cache),
    Azblob(&'a AzblobCache),
}

impl BucketCache<'_> {
    pub(crate) fn open(&self) -> Result<ObjectCache> {
        match self {
            BucketCache::S3(c) => c.open(),
            BucketCache::Azblob(c) => c.open(),
        }
    }

    /// Opened to write: an Azure container is created first when missing (as BuildKit does); an
    /// S3 bucket must exist (BuildKit does not create one either).
    pub(crate) async fn open_for_export(&self) -> Result<ObjectCache> {
        if let BucketCache::Azblob(c) = self {
            c.ensure_container().await?;
        }
        self.open()
    }
}

impl Engine {
    /// A `--cache-from type=s3/azblob`: the records of its manifests. The opened store is kept
    /// for the layers a step or an export will need.
    pub(crate) async fn import_bucket_cache(&self, cache: BucketCache<'_>) -> Result<Imported> {
        let opened = Arc::new(cache.open()?);
        let records = opened.records().await?;
        self.blob_stores.register(&opened.id.clone(), opened);
        Ok(records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(store: Arc<dyn ObjectStore>, names: &[&str]) -> ObjectCache {
        ObjectCache {
            store,
            id: "s3://bucket/p/".into(),
            blobs: "p/blobs/".into(),
            manifests: "p/manifests/".into(),
            names: names.iter().map(|n| n.to_string()).collect(),
            parallelism: 4,
            touch_refresh: None,
        }
    }

    #[test]
    fn names_split_on_semicolons() {
        assert_eq!(names(None).unwrap(), ["buildkit"]);
        assert_eq!(names(Some("a;b".into())).unwrap(), ["a", "b"]);
        assert!(
            names(Some("a;".into()))
                .unwrap_err()
                .contains("empty manifest name")
        );
    }

    #[tokio::test]
    async fn blobs_and_manifests_go_under_their_prefixes_once() {
        let mem = Arc::new(object_store::memory::InMemory::new());
        let c = cache(mem.clone(), &["main", "branch"]);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("blob");
        std::fs::write(&file, b"layer").unwrap();
        let blob = kiln_oci::sha256(b"layer");
        assert!(!c.has(&blob).await.unwrap());
        assert!(c.put_blob(&blob, &file).await.unwrap());
        assert!(
            !c.put_blob(&blob, &file).await.unwrap(),
            "present: not again"
        );
        let key = Path::parse(format!("p/blobs/{blob}")).unwrap();
        assert_eq!(
            mem.get(&key).await.unwrap().bytes().await.unwrap(),
            &b"layer"[..]
        );

        c.put_manifest(b"{}").await.unwrap();
        for name in ["main", "branch"] {
            let key = Path::parse(format!("p/manifests/{name}")).unwrap();
            assert!(mem.head(&key).await.is_ok(), "{name}");
        }

        let mut out = Vec::new();
        kiln_worker::BlobStore::fetch(&c, &blob, &mut out)
            .await
            .unwrap();
        assert_eq!(out, b"layer");
    }

    #[tokio::test]
    async fn a_blob_larger_than_a_part_goes_up_in_parts_whole() {
        let mem = Arc::new(object_store::memory::InMemory::new());
        let c = cache(mem.clone(), &["main"]);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("big");
        let bytes: Vec<u8> = (0..PART_SIZE + 3 * (1 << 20) + 7)
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(&file, &bytes).unwrap();
        let blob = kiln_oci::sha256(&bytes);
        assert!(c.put_blob(&blob, &file).await.unwrap());
        let mut out = Vec::new();
        kiln_worker::BlobStore::fetch(&c, &blob, &mut out)
            .await
            .unwrap();
        assert!(out == bytes, "{} bytes back of {}", out.len(), bytes.len());
    }

    #[tokio::test]
    async fn a_missing_manifest_is_an_error_naming_the_keys() {
        let mem = Arc::new(object_store::memory::InMemory::new());
        let err = cache(mem, &["a", "b"])
            .records()
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("p/manifests/a, p/manifests/b"), "{err}");
    }
}
