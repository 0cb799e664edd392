//! Where a layer blob missing from the content store comes from: its `source`, a registry
//! reference (`host/repo@sha256:…`) or an OCI image layout directory on this machine
//! (`oci-layout://DIR`, a local cache import). Both the worker (unpacking a layer a step needs)
//! and exports (which need every blob) fetch through here.

use std::path::PathBuf;

use kiln_content::ContentStore;
use kiln_oci::{Descriptor, Digest, MediaType, Reference};

use crate::{Error, LayerRef, Result};

/// The `source` prefix of a layer kept in an OCI layout directory.
pub const LAYOUT_SOURCE: &str = "oci-layout://";

/// Whether `source` may still give `blob`: a layout directory must hold its file (a local
/// cache re-exported or deleted since makes the record a miss, not a failed step); a registry
/// is only asked when the blob is needed.
pub(crate) fn available(source: &str, blob: &Digest) -> bool {
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
    content: &ContentStore,
    layer: &LayerRef,
    blob: &Digest,
) -> Result<()> {
    let source = layer
        .source
        .as_deref()
        .ok_or_else(|| Error::Content(kiln_content::Error::NotFound(blob.clone())))?;
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
        let source = format!("{LAYOUT_SOURCE}{}", layout.display());

        let good = kiln_oci::sha256(b"hello");
        std::fs::write(layout.join("blobs/sha256").join(good.digest()), b"hello").unwrap();
        fetch_layer_blob(&registry, &content, &layer(&source, &good), &good)
            .await
            .unwrap();
        assert_eq!(content.read(&good).unwrap(), b"hello");

        let bad = kiln_oci::sha256(b"other");
        std::fs::write(layout.join("blobs/sha256").join(bad.digest()), b"tampered").unwrap();
        assert!(
            fetch_layer_blob(&registry, &content, &layer(&source, &bad), &bad)
                .await
                .is_err()
        );
        assert!(!content.contains(&bad));

        assert!(available(&source, &good));
        assert!(!available(&source, &kiln_oci::sha256(b"missing")));
        assert!(
            available("r.io/a@sha256:00", &good),
            "a registry is asked only when needed"
        );

        let missing = kiln_oci::sha256(b"missing");
        let err = fetch_layer_blob(&registry, &content, &layer(&source, &missing), &missing)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("reading cache blob"), "{err}");
    }
}
