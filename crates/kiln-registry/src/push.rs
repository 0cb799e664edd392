use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;

use futures::{Stream, StreamExt};

use kiln_oci::{Digest, Reference};
use reqwest::header::{
    CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, HeaderMap, HeaderValue, LOCATION, RANGE,
};
use reqwest::{Method, StatusCode};
use tokio_util::io::ReaderStream;

use crate::auth::{mount_scope, pull_scope, push_scope};
use crate::client::{BodyFn, Client, check_status};
use crate::config::Endpoint;
use crate::error::{Cause, Error, Mismatch, Result};
use crate::pull::{parse_sha256, sha256_string};

impl Client {
    /// Does the reference's registry (never a mirror) hold `digest` in the reference's
    /// repository?
    pub async fn blob_exists(&self, reference: &Reference, digest: &Digest) -> Result<bool> {
        let ep = self.hosts.upstream(reference.registry());
        let scope = pull_scope(reference.repository());
        let exists = self
            .head_blob(&ep, &scope, reference, digest)
            .await
            .map_err(|source| Error::BlobExists {
                reference: reference.to_string(),
                digest: digest.clone(),
                source: Box::new(source),
            })?;
        if exists {
            self.remember_blob(reference, digest);
        }
        Ok(exists)
    }

    async fn head_blob(
        &self,
        ep: &Endpoint,
        scope: &str,
        reference: &Reference,
        digest: &Digest,
    ) -> std::result::Result<bool, Cause> {
        let url = ep.url(&format!("/v2/{}/blobs/{digest}", reference.repository()));
        let response = self
            .send(ep, scope, Method::HEAD, &url, &HeaderMap::new(), None, true)
            .await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(false);
        }
        check_status(&Method::HEAD, &url, response).await?;
        Ok(true)
    }

    /// Makes blob `digest` (the file at `path`) present in the reference's repository: nothing
    /// when a HEAD finds it there, a cross-repository mount when another repository of the
    /// registry is known to hold it (see [`Client::remember_blob`]), else an upload. Blobs
    /// larger than the host's `chunk_size` go up in chunks, and a transient failure resumes at
    /// the offset the registry reports (or restarts when it cannot say). At most the host's
    /// `max_concurrent_uploads` run at once.
    pub async fn push_blob(
        &self,
        reference: &Reference,
        digest: &Digest,
        size: u64,
        path: &Path,
    ) -> Result<BlobPush> {
        let pushed = self
            .push_blob_inner(reference, digest, size, path)
            .await
            .map_err(|source| Error::PushBlob {
                reference: reference.to_string(),
                digest: digest.clone(),
                source: Box::new(source),
            })?;
        self.remember_blob(reference, digest);
        Ok(pushed)
    }

    async fn push_blob_inner(
        &self,
        reference: &Reference,
        digest: &Digest,
        size: u64,
        path: &Path,
    ) -> std::result::Result<BlobPush, Cause> {
        parse_sha256(digest.as_ref())?;
        let ep = self.hosts.upstream(reference.registry());
        let scope = push_scope(reference.repository());
        if self.head_blob(&ep, &scope, reference, digest).await? {
            return Ok(BlobPush::Exists);
        }
        let read_err = |source| Cause::ReadFile {
            path: path.to_path_buf(),
            source,
        };
        let on_disk = tokio::fs::metadata(path).await.map_err(read_err)?.len();
        if on_disk != size {
            return Err(Cause::Mismatch {
                object: "blob file",
                digest: digest.to_string(),
                source: Mismatch::Size {
                    expected: size,
                    actual: on_disk,
                },
            });
        }
        let _slot = self.upload_slot(reference.registry()).await;
        let mut session = None;
        for from in self.blob_sources.candidates(
            reference.registry(),
            reference.repository(),
            digest.as_ref(),
        ) {
            match self.mount(&ep, reference, digest, &from).await {
                Ok(Mount::Mounted) => return Ok(BlobPush::Mounted),
                // The registry started an ordinary upload instead; use it.
                Ok(Mount::Started(location)) => {
                    session = Some(Session {
                        location,
                        offset: 0,
                    });
                    break;
                }
                Err(cause) => {
                    tracing::debug!(%digest, from, error = %cause, "blob mount failed");
                }
            }
        }
        let (chunk_size, _) = self.hosts.upload_settings(reference.registry());
        let chunked = chunk_size > 0 && size > chunk_size;
        let attempts = self.retry.attempts.max(1);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = if chunked {
                self.upload_chunked(
                    &ep,
                    &scope,
                    reference,
                    digest,
                    size,
                    path,
                    chunk_size,
                    &mut session,
                )
                .await
            } else {
                self.upload_monolithic(&ep, &scope, reference, digest, size, path, session.take())
                    .await
            };
            match result {
                Ok(()) => return Ok(BlobPush::Uploaded),
                Err(cause) if cause.is_retryable() && attempt < attempts => {
                    tracing::debug!(%digest, attempt, error = %cause, "retrying blob upload");
                    tokio::time::sleep(self.retry.backoff(attempt)).await;
                    // Ask the registry how much of the session it kept; without an answer the
                    // next attempt starts a new one.
                    if let Some(old) = session.take() {
                        session = self.upload_status(&ep, &scope, &old.location).await;
                        tracing::debug!(%digest, resumed_at = ?session.as_ref().map(|s| s.offset), "upload status");
                    }
                }
                Err(cause) => return Err(cause),
            }
        }
    }

    /// Uploads a blob while it is being made, for a push that compresses a layer as it goes:
    /// a new upload session takes `body` in one streamed `PATCH` (chunked transfer encoding, as
    /// `docker push` sends it), and once `made` gives the finished blob's digest, size and
    /// file, a `PUT ?digest=` closes it. No `HEAD` or mount first: the digest is not known
    /// yet. If anything fails on the way the stream is dropped (so its maker should carry on
    /// into its file) and, once `made` is ready, the file goes up through
    /// [`Client::push_blob`] with its retries and resumption. `Ok(None)` when `made` gives
    /// nothing (the maker failed and reports why); the session is then cancelled. Takes one of
    /// the host's `max_concurrent_uploads` slots while it streams.
    pub async fn push_blob_streamed<S>(
        &self,
        reference: &Reference,
        body: S,
        made: impl Future<Output = Option<MadeBlob>> + Send,
    ) -> Result<Option<(MadeBlob, BlobPush)>>
    where
        S: Stream<Item = std::io::Result<Vec<u8>>> + Send + 'static,
    {
        let ep = self.hosts.upstream(reference.registry());
        let scope = push_scope(reference.repository());
        let slot = self.upload_slot(reference.registry()).await;
        let (location, streamed) = self.stream_upload(&ep, &scope, reference, body).await;
        let Some(blob) = made.await else {
            if let Some(location) = location {
                self.cancel_upload(&ep, &scope, &location).await;
            }
            return Ok(None);
        };
        let finished = match streamed {
            Ok((location, Some(end))) if end + 1 != blob.size => Err(Cause::InvalidResponse {
                url: location.to_string(),
                reason: format!(
                    "the upload holds 0-{end} after the whole blob of {} bytes",
                    blob.size
                ),
            }),
            Ok((location, _)) => {
                self.finish_upload(&ep, &scope, location, &blob.digest, None)
                    .await
            }
            Err(cause) => Err(cause),
        };
        match finished {
            Ok(()) => {
                self.remember_blob(reference, &blob.digest);
                Ok(Some((blob, BlobPush::Uploaded)))
            }
            Err(cause) => {
                tracing::debug!(digest = %blob.digest, error = %crate::error::chain(&cause), "streamed upload failed; uploading the file");
                // push_blob takes a slot of its own.
                drop(slot);
                let pushed = self
                    .push_blob(reference, &blob.digest, blob.size, &blob.path)
                    .await?;
                Ok(Some((blob, pushed)))
            }
        }
    }

    /// `POST` a session and `PATCH` the whole stream into it. Returns the session's location
    /// when it was opened, and the location for the closing `PUT` with the end of the range
    /// the registry reports holding. The stream is dropped before this returns, whatever
    /// became of the request.
    async fn stream_upload<S>(
        &self,
        ep: &Endpoint,
        scope: &str,
        reference: &Reference,
        body: S,
    ) -> (
        Option<url::Url>,
        std::result::Result<(url::Url, Option<u64>), Cause>,
    )
    where
        S: Stream<Item = std::io::Result<Vec<u8>>> + Send + 'static,
    {
        // The request reads the stream through this slot; emptying it drops the stream even
        // if the HTTP stack kept the body alive after the request ended.
        type Slot<S> = Arc<Mutex<Option<Pin<Box<S>>>>>;
        let shared: Slot<S> = Arc::new(Mutex::new(Some(Box::pin(body))));
        let result = async {
            let location = self
                .start_upload(ep, scope, reference)
                .await
                .map_err(|c| (None, c))?;
            let reader = shared.clone();
            let stream = futures::stream::poll_fn(move |cx| {
                let mut slot = reader.lock().unwrap_or_else(|e| e.into_inner());
                match slot.as_mut() {
                    Some(s) => s.poll_next_unpin(cx),
                    None => Poll::Ready(Some(Err(std::io::Error::other("upload abandoned")))),
                }
            });
            let once = Mutex::new(Some(reqwest::Body::wrap_stream(stream)));
            let url = location.to_string();
            let body = move || {
                once.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take()
                    .ok_or_else(|| Cause::StreamReplay { url: url.clone() })
            };
            let response = self
                .patch(ep, scope, &location, HeaderMap::new(), &body)
                .await
                .map_err(|cause| (Some(location.clone()), cause))?;
            let next =
                location_of(&response, &location).map_err(|c| (Some(location.clone()), c))?;
            Ok::<_, (Option<url::Url>, Cause)>((location, next, range_end(&response)))
        }
        .await;
        drop(shared.lock().unwrap_or_else(|e| e.into_inner()).take());
        match result {
            Ok((opened, next, end)) => (Some(opened), Ok((next, end))),
            Err((opened, cause)) => (opened, Err(cause)),
        }
    }

    /// `DELETE <location>`: best effort, the registry expires abandoned sessions anyway.
    async fn cancel_upload(&self, ep: &Endpoint, scope: &str, location: &url::Url) {
        let result = self
            .send(
                ep,
                scope,
                Method::DELETE,
                location.as_str(),
                &HeaderMap::new(),
                None,
                false,
            )
            .await;
        if let Err(cause) = result {
            tracing::debug!(%location, error = %cause, "cancelling an upload failed");
        }
    }

    /// `POST .../blobs/uploads/?mount=DIGEST&from=REPO`.
    async fn mount(
        &self,
        ep: &Endpoint,
        reference: &Reference,
        digest: &Digest,
        from: &str,
    ) -> std::result::Result<Mount, Cause> {
        let mut url =
            url::Url::parse(&ep.url(&format!("/v2/{}/blobs/uploads/", reference.repository())))
                .map_err(|e| Cause::InvalidResponse {
                    url: reference.to_string(),
                    reason: e.to_string(),
                })?;
        url.query_pairs_mut()
            .append_pair("mount", digest.as_ref())
            .append_pair("from", from);
        let scope = mount_scope(reference.repository(), from);
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
        let response = self
            .send_ok(ep, &scope, Method::POST, url.as_str(), &headers, None, true)
            .await?;
        if response.status() == StatusCode::CREATED {
            return Ok(Mount::Mounted);
        }
        Ok(Mount::Started(location(&response, url.as_str())?))
    }

    /// `POST .../blobs/uploads/`: a new upload session.
    async fn start_upload(
        &self,
        ep: &Endpoint,
        scope: &str,
        reference: &Reference,
    ) -> std::result::Result<url::Url, Cause> {
        let url = ep.url(&format!("/v2/{}/blobs/uploads/", reference.repository()));
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
        let response = self
            .send_ok(ep, scope, Method::POST, &url, &headers, None, true)
            .await?;
        location(&response, &url)
    }

    /// The whole blob in the closing PUT.
    #[allow(clippy::too_many_arguments)]
    async fn upload_monolithic(
        &self,
        ep: &Endpoint,
        scope: &str,
        reference: &Reference,
        digest: &Digest,
        size: u64,
        path: &Path,
        session: Option<Session>,
    ) -> std::result::Result<(), Cause> {
        // A failed PUT may have left part of the body in the session, so it is never reused.
        let location = match session {
            Some(s) => s.location,
            None => self.start_upload(ep, scope, reference).await?,
        };
        let body = file_body(path, 0, size);
        self.finish_upload(ep, scope, location, digest, Some((size, &body)))
            .await
    }

    /// PATCHes of `chunk_size` from `session`'s offset (a new session when there is none),
    /// then the closing PUT. `session` tracks progress so a failure can resume.
    #[allow(clippy::too_many_arguments)]
    async fn upload_chunked(
        &self,
        ep: &Endpoint,
        scope: &str,
        reference: &Reference,
        digest: &Digest,
        size: u64,
        path: &Path,
        chunk_size: u64,
        session: &mut Option<Session>,
    ) -> std::result::Result<(), Cause> {
        let Session {
            mut location,
            mut offset,
        } = match session.take() {
            Some(s) => s,
            None => Session {
                location: self.start_upload(ep, scope, reference).await?,
                offset: 0,
            },
        };
        while offset < size {
            *session = Some(Session {
                location: location.clone(),
                offset,
            });
            let len = chunk_size.min(size - offset);
            location = self
                .patch_chunk(ep, scope, &location, path, offset, len)
                .await?;
            offset += len;
        }
        *session = Some(Session {
            location: location.clone(),
            offset,
        });
        self.finish_upload(ep, scope, location, digest, None)
            .await?;
        *session = None;
        Ok(())
    }

    /// One PATCH of upload data to `location` (non-idempotent, so never retried here).
    async fn patch(
        &self,
        ep: &Endpoint,
        scope: &str,
        location: &url::Url,
        mut headers: HeaderMap,
        body: BodyFn<'_>,
    ) -> std::result::Result<reqwest::Response, Cause> {
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        self.send_ok(
            ep,
            scope,
            Method::PATCH,
            location.as_str(),
            &headers,
            Some(body),
            false,
        )
        .await
    }

    async fn patch_chunk(
        &self,
        ep: &Endpoint,
        scope: &str,
        location: &url::Url,
        path: &Path,
        offset: u64,
        len: u64,
    ) -> std::result::Result<url::Url, Cause> {
        let end = offset + len - 1;
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
        headers.insert(
            CONTENT_RANGE,
            HeaderValue::from_str(&format!("{offset}-{end}")).map_err(|e| {
                Cause::InvalidResponse {
                    url: location.to_string(),
                    reason: e.to_string(),
                }
            })?,
        );
        let body = file_body(path, offset, len);
        let response = self.patch(ep, scope, location, headers, &body).await?;
        // The registry must now hold exactly up to the chunk's end.
        if let Some(held) = range_end(&response)
            && held != end
        {
            return Err(Cause::InvalidResponse {
                url: location.to_string(),
                reason: format!("after bytes {offset}-{end} the upload holds 0-{held}"),
            });
        }
        location_of(&response, location)
    }

    /// `PUT <location>?digest=`, with the remaining bytes or none.
    async fn finish_upload(
        &self,
        ep: &Endpoint,
        scope: &str,
        mut location: url::Url,
        digest: &Digest,
        body: Option<(u64, BodyFn<'_>)>,
    ) -> std::result::Result<(), Cause> {
        location
            .query_pairs_mut()
            .append_pair("digest", digest.as_ref());
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        headers.insert(
            CONTENT_LENGTH,
            HeaderValue::from(body.as_ref().map_or(0, |(len, _)| *len)),
        );
        let response = self
            .send_ok(
                ep,
                scope,
                Method::PUT,
                location.as_str(),
                &headers,
                body.map(|(_, b)| b),
                false,
            )
            .await?;
        check_digest_header(&response, digest.as_ref(), "blob")
    }

    /// `GET <location>`: how much of the session the registry holds, as a session to resume;
    /// `None` when it cannot say (the session is gone or the answer is unusable).
    async fn upload_status(
        &self,
        ep: &Endpoint,
        scope: &str,
        location: &url::Url,
    ) -> Option<Session> {
        let response = self
            .send_ok(
                ep,
                scope,
                Method::GET,
                location.as_str(),
                &HeaderMap::new(),
                None,
                true,
            )
            .await
            .ok()?;
        // `0-0` means nothing or one byte: start over rather than guess.
        let offset = range_end(&response).filter(|end| *end > 0)? + 1;
        let location = location_of(&response, location).ok()?;
        Some(Session { location, offset })
    }

    /// PUTs a manifest under the reference's tag (or digest, when it has no tag) and returns
    /// the manifest's digest.
    pub async fn push_manifest(
        &self,
        reference: &Reference,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<Digest> {
        let err = |source| Error::PushManifest {
            reference: reference.to_string(),
            source: Box::new(source),
        };
        let actual = sha256_string(bytes);
        let digest = parse_sha256(&actual).map_err(err)?;
        if let Some(named) = reference.digest()
            && named != actual
        {
            return Err(err(Cause::Mismatch {
                object: "manifest",
                digest: named.to_string(),
                source: Mismatch::Digest { actual },
            }));
        }
        let target = reference.tag().unwrap_or(digest.as_ref());
        let ep = self.hosts.upstream(reference.registry());
        let scope = push_scope(reference.repository());
        let url = ep.url(&format!(
            "/v2/{}/manifests/{target}",
            reference.repository()
        ));
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_str(media_type)
                .map_err(|_| err(Cause::UnsupportedMediaType(media_type.to_string())))?,
        );
        let owned = bytes::Bytes::copy_from_slice(bytes);
        let body = move || Ok(reqwest::Body::from(owned.clone()));
        let response = self
            .send_ok(&ep, &scope, Method::PUT, &url, &headers, Some(&body), true)
            .await
            .map_err(err)?;
        check_digest_header(&response, digest.as_ref(), "manifest").map_err(err)?;
        Ok(digest)
    }
}

/// What [`Client::push_blob`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobPush {
    /// The repository already had the blob.
    Exists,
    /// Mounted from another repository of the registry; nothing was uploaded.
    Mounted,
    Uploaded,
}

/// A blob made while it was streamed, as [`Client::push_blob_streamed`] needs it at the end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MadeBlob {
    pub digest: Digest,
    pub size: u64,
    /// The blob's file, for an upload again from the start.
    pub path: PathBuf,
}

/// An upload session: where to send the next request, and how many bytes the registry holds.
struct Session {
    location: url::Url,
    offset: u64,
}

enum Mount {
    Mounted,
    Started(url::Url),
}

/// A body of `len` bytes of the file at `path` from `offset`, built anew for each attempt.
fn file_body(
    path: &Path,
    offset: u64,
    len: u64,
) -> impl Fn() -> std::result::Result<reqwest::Body, Cause> + Send + Sync + '_ {
    move || {
        use std::io::{Seek, SeekFrom};
        let read_err = |source| Cause::ReadFile {
            path: path.to_path_buf(),
            source,
        };
        let mut file = std::fs::File::open(path).map_err(read_err)?;
        file.seek(SeekFrom::Start(offset)).map_err(read_err)?;
        let reader = tokio::fs::File::from_std(file);
        let stream = ReaderStream::new(tokio::io::AsyncReadExt::take(reader, len));
        Ok(reqwest::Body::wrap_stream(stream))
    }
}

/// The upload location a response points to, resolved against the request URL.
fn location(
    response: &reqwest::Response,
    request_url: &str,
) -> std::result::Result<url::Url, Cause> {
    let base = url::Url::parse(request_url).map_err(|e| Cause::InvalidResponse {
        url: request_url.to_string(),
        reason: e.to_string(),
    })?;
    location_of(response, &base)
}

fn location_of(
    response: &reqwest::Response,
    base: &url::Url,
) -> std::result::Result<url::Url, Cause> {
    let value = response
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| Cause::InvalidResponse {
            url: base.to_string(),
            reason: "upload response without a `Location`".into(),
        })?;
    base.join(value).map_err(|e| Cause::InvalidResponse {
        url: base.to_string(),
        reason: format!("invalid upload location `{value}`: {e}"),
    })
}

/// The end of a `Range: 0-N` header (some registries write `bytes=0-N`).
fn range_end(response: &reqwest::Response) -> Option<u64> {
    let value = response.headers().get(RANGE)?.to_str().ok()?;
    let (_, end) = value.trim_start_matches("bytes=").split_once('-')?;
    end.trim().parse().ok()
}

/// A registry that reports a different digest than we sent stored something else.
fn check_digest_header(
    response: &reqwest::Response,
    expected: &str,
    object: &'static str,
) -> std::result::Result<(), Cause> {
    match response
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
    {
        Some(actual) if actual.starts_with("sha256:") && actual != expected => {
            Err(Cause::Mismatch {
                object,
                digest: expected.to_string(),
                source: Mismatch::Header {
                    actual: actual.to_string(),
                },
            })
        }
        _ => Ok(()),
    }
}
