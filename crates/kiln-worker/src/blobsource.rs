//! Where a layer blob missing from the content store comes from: its `source`, a registry
//! reference (`host/repo@sha256:…`), an OCI image layout directory on this machine
//! (`oci-layout://DIR`, a local cache import) or a cache's object store (`cache-store:ID`, an
//! S3 or Azure Blob cache import, opened by the engine and registered in [`BlobStores`]). Both
//! the worker (unpacking a layer a step needs) and exports (which need every blob) fetch
//! through here.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use futures::future::BoxFuture;
use kiln_content::ContentStore;
use kiln_oci::{Descriptor, Digest, MediaType, Reference};
use kiln_solver::WorkerError;

use crate::{Error, LayerRef, Result};

/// The `source` prefix of a layer kept in an OCI layout directory.
pub const LAYOUT_SOURCE: &str = "oci-layout://";

/// The `source` prefix of a layer kept in a cache's object store (see [`BlobStore`]).
pub const STORE_SOURCE: &str = "cache-store:";

/// Blobs by digest in a store the worker does not know how to reach itself (S3, Azure Blob):
/// the engine opens it for a `--cache-from` and registers it under the source its records name.
pub trait BlobStore: Send + Sync {
    /// Streams `blob`'s bytes into `w`; the caller checks them against the digest.
    fn fetch<'a>(
        &'a self,
        blob: &'a Digest,
        w: &'a mut (dyn tokio::io::AsyncWrite + Unpin + Send),
    ) -> BoxFuture<'a, std::result::Result<(), WorkerError>>;
}

/// The object stores this engine opened, by the `source` (after [`STORE_SOURCE`]) their
/// records name. Records saved by an earlier process name stores it opened: a store not
/// registered now makes such a record a miss unless its blobs are held locally.
#[derive(Default)]
pub struct BlobStores(parking_lot::RwLock<HashMap<String, Arc<dyn BlobStore>>>);

impl BlobStores {
    pub fn register(&self, id: &str, store: Arc<dyn BlobStore>) {
        self.0.write().insert(id.to_string(), store);
    }

    fn get(&self, id: &str) -> Option<Arc<dyn BlobStore>> {
        self.0.read().get(id).cloned()
    }
}

/// Whether `source` may still give `blob`: a layout directory must hold its file (a local
/// cache re-exported or deleted since makes the record a miss, not a failed step), an object
/// store must be open in this process; a registry (or an open store) is only asked when the
/// blob is needed.
pub(crate) fn available(stores: &BlobStores, source: &str, blob: &Digest) -> bool {
    if let Some(id) = source.strip_prefix(STORE_SOURCE) {
        return stores.get(id).is_some();
    }
    match source.strip_prefix(LAYOUT_SOURCE) {
        Some(dir) => PathBuf::from(dir)
            .join("blobs/sha256")
            .join(blob.digest())
            .is_file(),
        None => true,
    }
}

/// Puts `layer`'s blob into the content store from its source; the store refuses bytes that do
/// not hash to the blob's digest.
pub async fn fetch_layer_blob(
    registry: &kiln_registry::Client,
    stores: &BlobStores,
    content: &ContentStore,
    layer: &LayerRef,
    blob: &Digest,
) -> Result<()> {
    let source = layer
        .source
        .as_deref()
        .ok_or_else(|| Error::Content(kiln_content::Error::NotFound(blob.clone())))?;
    if let Some(id) = source.strip_prefix(STORE_SOURCE) {
        let store = stores.get(id).ok_or_else(|| Error::BlobStore {
            store: id.to_string(),
            blob: blob.clone(),
            source: "the cache is not imported in this build (--cache-from)".into(),
        })?;
        let mut w = content.async_writer()?;
        store
            .fetch(blob, &mut w)
            .await
            .map_err(|source| Error::BlobStore {
                store: id.to_string(),
                blob: blob.clone(),
                source,
            })?;
        w.commit(Some(blob)).await?;
        return Ok(());
    }
    if let Some(dir) = source.strip_prefix(LAYOUT_SOURCE) {
        // The digest names the file: a parsed sha256 hex cannot leave `blobs/sha256`.
        let path = PathBuf::from(dir).join("blobs/sha256").join(blob.digest());
        let (content, blob) = (content.clone(), blob.clone());
        return tokio::task::spawn_blocking(move || -> Result<()> {
            let what = format!("reading cache blob `{}`", path.display());
            let mut file = std::fs::File::open(&path).map_err(crate::io(what.clone()))?;
            let mut w = content.writer()?;
            std::io::copy(&mut file, &mut w).map_err(crate::io(what))?;
            w.commit(Some(&blob))?;
            Ok(())
        })
        .await?;
    }
    let reference: Reference = source
        .parse()
        .map_err(|_| Error::Reference(source.to_string()))?;
    let desc = Descriptor::new(
        MediaType::from(layer.media_type.as_str()),
        layer.size,
        blob.clone(),
    );
    let mut w = content.async_writer()?;
    registry.fetch_blob(&reference, &desc, &mut w).await?;
    w.commit(Some(blob)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(source: &str, blob: &Digest) -> LayerRef {
        LayerRef {
            diff_id: Some(blob.clone()),
            blob: Some(blob.clone()),
            size: 5,
            media_type: kiln_oci::media_type::OCI_LAYER_TAR.into(),
            source: Some(source.into()),
        }
    }

    #[tokio::test]
    async fn copies_from_a_layout_and_refuses_wrong_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let layout = dir.path().join("layout");
        std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
        let content = ContentStore::open(dir.path().join("content")).unwrap();
        let registry = kiln_registry::Client::new(Default::default()).unwrap();
        let stores = BlobStores::default();
        let source = format!("{LAYOUT_SOURCE}{}", layout.display());

        let good = kiln_oci::sha256(b"hello");
        std::fs::write(layout.join("blobs/sha256").join(good.digest()), b"hello").unwrap();
        fetch_layer_blob(&registry, &stores, &content, &layer(&source, &good), &good)
            .await
            .unwrap();
        assert_eq!(content.read(&good).unwrap(), b"hello");

        let bad = kiln_oci::sha256(b"other");
        std::fs::write(layout.join("blobs/sha256").join(bad.digest()), b"tampered").unwrap();
        assert!(
            fetch_layer_blob(&registry, &stores, &content, &layer(&source, &bad), &bad)
                .await
                .is_err()
        );
        assert!(!content.contains(&bad));

        assert!(available(&stores, &source, &good));
        assert!(!available(&stores, &source, &kiln_oci::sha256(b"missing")));
        assert!(
            available(&stores, "r.io/a@sha256:00", &good),
            "a registry is asked only when needed"
        );

        let missing = kiln_oci::sha256(b"missing");
        let err = fetch_layer_blob(
            &registry,
            &stores,
            &content,
            &layer(&source, &missing),
            &missing,
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("reading cache blob"), "{err}");
    }

    /// A store that serves one blob's bytes, whatever digest is asked for.
    struct Fixed(&'static [u8]);

    impl BlobStore for Fixed {
        fn fetch<'a>(
            &'a self,
            _blob: &'a Digest,
            w: &'a mut (dyn tokio::io::AsyncWrite + Unpin + Send),
        ) -> BoxFuture<'a, std::result::Result<(), WorkerError>> {
            Box::pin(async move {
                tokio::io::AsyncWriteExt::write_all(w, self.0).await?;
                Ok(())
            })
        }
    }

    #[tokio::test]
    async fn fetches_from_a_registered_store_and_checks_the_digest() {
        let dir = tempfile::tempdir().unwrap();
        let content = ContentStore::open(dir.path().join("content")).unwrap();
        let registry = kiln_registry::Client::new(Default::default()).unwrap();
        let stores = BlobStores::default();
        let source = format!("{STORE_SOURCE}s3://bucket/blobs/");
        let good = kiln_oci::sha256(b"hello");
        assert!(
            !available(&stores, &source, &good),
            "a store not opened in this process is a miss"
        );
        let err = fetch_layer_blob(&registry, &stores, &content, &layer(&source, &good), &good)
            .await
            .unwrap_err();
        let chain = kiln_solver::error_chain(&err);
        assert!(chain.contains("not imported"), "{chain}");

        stores.register("s3://bucket/blobs/", Arc::new(Fixed(b"hello")));
        assert!(available(&stores, &source, &good));
        fetch_layer_blob(&registry, &stores, &content, &layer(&source, &good), &good)
            .await
            .unwrap();
        assert_eq!(content.read(&good).unwrap(), b"hello");
        let bad = kiln_oci::sha256(b"other");
        assert!(
            fetch_layer_blob(&registry, &stores, &content, &layer(&source, &bad), &bad)
                .await
                .is_err()
        );
        assert!(!content.contains(&bad));
    }
}
