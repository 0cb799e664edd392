//! A push that compresses while it uploads: each layer the requested compression has no blob
//! for yet goes to the registry as it is compressed, instead of being compressed whole first
//! (as `docker push` does). The compressor writes the content store's blob and, through a
//! bounded channel, the upload's body; it is the export's own compression
//! (`PendingLayer::compress_into`), so the blob and its record are what an export would make,
//! and the export that follows finds every layer ready.

use std::collections::HashSet;
use std::io::Write;

use kiln_exporter::compress::{self, ExportOpts, PendingLayer};
use kiln_oci::{Digest, Reference};
use kiln_progress::Vertex;
use kiln_registry::{BlobPush, MadeBlob};

use crate::{Engine, Result};

/// Compressed pieces in flight between the compressor and the upload.
const PIECES_IN_FLIGHT: usize = 8;

impl Engine {
    /// Pushes to `name`'s repository, streamed, the layers of the local image `local` that
    /// `opts` would compress now. Returns the digests of the blobs it made and pushed; the
    /// caller pushes the rest as before.
    pub(crate) async fn push_pending_layers(
        &self,
        name: &Reference,
        local: &Digest,
        opts: &ExportOpts,
        v: &Vertex,
    ) -> Result<HashSet<Digest>> {
        let (content, variants) = (self.content.clone(), self.variants.clone());
        let (manifest, o) = (local.clone(), opts.clone());
        let pending = tokio::task::spawn_blocking(move || {
            compress::pending_layers(&content, &variants, &manifest, &o)
        })
        .await??;
        if pending.is_empty() {
            return Ok(HashSet::new());
        }
        // As many layers compress at once as an export compresses (one per core).
        let limit = tokio::sync::Semaphore::new(
            std::thread::available_parallelism().map_or(1, |n| n.get()),
        );
        let pushes = pending.into_iter().map(|layer| {
            let limit = &limit;
            async move {
                let _permit = limit.acquire().await.ok();
                self.push_streamed_layer(name, layer, v).await
            }
        });
        let done = futures::future::try_join_all(pushes).await?;
        Ok(done.into_iter().flatten().collect())
    }

    /// Compresses one layer into the content store and the registry at once. The compressor
    /// runs to the end whatever the upload does (the registry client then uploads the file).
    async fn push_streamed_layer(
        &self,
        name: &Reference,
        layer: PendingLayer,
        v: &Vertex,
    ) -> Result<Option<Digest>> {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(PIECES_IN_FLIGHT);
        let (made_tx, made_rx) = tokio::sync::oneshot::channel();
        let (content, variants) = (self.content.clone(), self.variants.clone());
        let compressing = tokio::task::spawn_blocking(move || {
            let result = layer.compress_into(&content, &variants, ChannelSink(Some(tx)));
            let made = result.as_ref().ok().map(|(digest, size)| MadeBlob {
                digest: digest.clone(),
                size: *size,
                path: content.path(digest),
            });
            let _ = made_tx.send(made);
            result
        });
        let body = futures::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|p| p.map(Ok)));
        let pushed = self
            .registry
            .push_blob_streamed(name, body, async { made_rx.await.ok().flatten() })
            .await;
        // The compressor's failure explains an upload that had nothing to close.
        let (digest, _) = compressing.await??;
        let Some((blob, how)) = pushed? else {
            return Ok(None);
        };
        debug_assert_eq!(blob.digest, digest);
        v.status(&format!("{digest}: {}", push_status(how)));
        Ok(Some(digest))
    }
}

/// What a push did with a blob, as the progress shows it.
pub(crate) fn push_status(how: BlobPush) -> &'static str {
    match how {
        BlobPush::Exists => "layer already exists",
        BlobPush::Mounted => "mounted from another repository",
        BlobPush::Uploaded => "pushed",
    }
}

/// Sends every compressed piece to the upload; once the upload has gone (it failed and will
/// use the file), the rest only goes to the content store.
struct ChannelSink(Option<tokio::sync::mpsc::Sender<Vec<u8>>>);

impl Write for ChannelSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(tx) = &self.0
            && tx.blocking_send(buf.to_vec()).is_err()
        {
            self.0 = None;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
