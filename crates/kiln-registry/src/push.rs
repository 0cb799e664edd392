use std::path::Path;

use kiln_oci::{Digest, Reference};
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderValue, LOCATION};
use reqwest::{Method, StatusCode};
use tokio_util::io::ReaderStream;

use crate::auth::{pull_scope, push_scope};
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
        self.head_blob(&ep, &scope, reference, digest)
            .await
            .map_err(|source| Error::BlobExists {
                reference: reference.to_string(),
                digest: digest.clone(),
                source: Box::new(source),
            })
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

    /// Uploads the file at `path` as blob `digest` to the reference's registry, unless it is
    /// already there. The upload is monolithic (POST, then PUT `?digest=`); a transient failure
    /// restarts it with a new upload session.
    pub async fn push_blob(
        &self,
        reference: &Reference,
        digest: &Digest,
        size: u64,
        path: &Path,
    ) -> Result<()> {
        self.push_blob_inner(reference, digest, size, path)
            .await
            .map_err(|source| Error::PushBlob {
                reference: reference.to_string(),
                digest: digest.clone(),
                source: Box::new(source),
            })
    }

    async fn push_blob_inner(
        &self,
        reference: &Reference,
        digest: &Digest,
        size: u64,
        path: &Path,
    ) -> std::result::Result<(), Cause> {
        parse_sha256(digest.as_ref())?;
        let ep = self.hosts.upstream(reference.registry());
        let scope = push_scope(reference.repository());
        if self.head_blob(&ep, &scope, reference, digest).await? {
            return Ok(());
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
        let body = move || {
            let file = std::fs::File::open(path).map_err(read_err)?;
            let stream = ReaderStream::new(tokio::fs::File::from_std(file));
            Ok(reqwest::Body::wrap_stream(stream))
        };
        let attempts = self.retry.attempts.max(1);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self
                .upload_once(&ep, &scope, reference, digest, size, &body)
                .await
            {
                Err(cause) if cause.is_retryable() && attempt < attempts => {
                    tracing::debug!(%digest, attempt, error = %cause, "retrying blob upload");
                    tokio::time::sleep(self.retry.backoff(attempt)).await;
                }
                result => return result,
            }
        }
    }

    async fn upload_once(
        &self,
        ep: &Endpoint,
        scope: &str,
        reference: &Reference,
        digest: &Digest,
        size: u64,
        body: BodyFn<'_>,
    ) -> std::result::Result<(), Cause> {
        let start_url = ep.url(&format!("/v2/{}/blobs/uploads/", reference.repository()));
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
        let started = self
            .send_ok(ep, scope, Method::POST, &start_url, &headers, None, false)
            .await?;
        let location = started
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Cause::InvalidResponse {
                url: start_url.clone(),
                reason: "upload started without a `Location`".into(),
            })?;
        let mut put_url = url::Url::parse(&start_url)
            .and_then(|base| base.join(location))
            .map_err(|e| Cause::InvalidResponse {
                url: start_url.clone(),
                reason: format!("invalid upload location `{location}`: {e}"),
            })?;
        put_url
            .query_pairs_mut()
            .append_pair("digest", digest.as_ref());
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        headers.insert(CONTENT_LENGTH, HeaderValue::from(size));
        let response = self
            .send_ok(
                ep,
                scope,
                Method::PUT,
                put_url.as_str(),
                &headers,
                Some(body),
                false,
            )
            .await?;
        check_digest_header(&response, digest.as_ref(), "blob")
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
