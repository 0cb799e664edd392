use kiln_oci::media_type::{self, is_index, is_manifest};
use kiln_oci::{
    Descriptor, Digest, ImageConfiguration, ImageIndex, ImageManifest, Platform, Reference,
};
use reqwest::header::{ACCEPT, HeaderMap, HeaderValue};
use reqwest::{Method, Response};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::auth::pull_scope;
use crate::client::{Client, read_body};
use crate::config::Endpoint;
use crate::error::{Cause, Error, Mismatch, Result};

/// A manifest or index larger than this is refused (containerd uses the same bound).
const MAX_MANIFEST: u64 = 4 * 1024 * 1024;
/// Image configs are JSON with history and env; anything near this is hostile.
const MAX_CONFIG: u64 = 16 * 1024 * 1024;
/// Indexes pointing at indexes are legal; bound the chain.
const MAX_INDEX_DEPTH: usize = 4;

const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";

/// A reference resolved down to one platform's image.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The reference as asked, normalised (`docker.io/library/x:tag`).
    pub reference: Reference,
    /// Digest of the platform manifest.
    pub digest: Digest,
    /// Digest of the index or manifest list the reference named, if it named one.
    pub index_digest: Option<Digest>,
    pub manifest: ImageManifest,
    pub manifest_bytes: Vec<u8>,
    pub media_type: String,
    pub config: ImageConfiguration,
    pub config_bytes: Vec<u8>,
}

/// A manifest or index exactly as the registry sent it, digest verified.
#[derive(Debug, Clone)]
pub struct RawManifest {
    pub digest: Digest,
    pub media_type: String,
    pub bytes: Vec<u8>,
}

struct Fetched {
    bytes: Vec<u8>,
    media_type: String,
    digest: Digest,
}

/// What went wrong across the endpoints of one pull: each mirror's failure in one line, and the
/// registry's own in full (it is what the user asked for; mirrors are a detail).
#[derive(Default)]
struct Failures {
    mirrors: Vec<String>,
    registry: Option<Cause>,
}

impl Failures {
    fn record(&mut self, ep: &Endpoint, cause: Cause) {
        if ep.mirror {
            self.mirrors
                .push(format!("{}: {}", ep.host, cause.one_line()));
        } else {
            self.registry = Some(cause);
        }
    }

    fn into_cause(self, reference: &Reference) -> Cause {
        let cause = self.registry.unwrap_or_else(|| Cause::InvalidResponse {
            url: reference.to_string(),
            reason: "no endpoints".into(),
        });
        cause.after_mirrors(self.mirrors)
    }
}

impl Client {
    /// Resolves a tag or digest to the manifest for `platform`: follows OCI indexes and Docker
    /// manifest lists, accepts OCI and Docker schema 2 manifests, and verifies the manifest and
    /// config digests. Mirrors are tried first, in order; the error reported is the registry's.
    pub async fn resolve(&self, reference: &Reference, platform: &Platform) -> Result<Resolved> {
        let mut failures = Failures::default();
        for ep in self.hosts.pull_endpoints(reference.registry()) {
            match self.resolve_at(&ep, reference, platform).await {
                Ok(resolved) => return Ok(resolved),
                // The endpoint served the index: its platforms are the answer, as containerd
                // matches platforms after resolving on the first host that has the tag.
                Err(cause @ Cause::PlatformNotFound { .. }) => {
                    return Err(Error::Resolve {
                        reference: reference.to_string(),
                        source: Box::new(cause),
                    });
                }
                Err(cause) => {
                    tracing::debug!(host = %ep.host, mirror = ep.mirror, %reference, error = %cause, "resolve failed");
                    failures.record(&ep, cause);
                }
            }
        }
        Err(Error::Resolve {
            reference: reference.to_string(),
            source: Box::new(failures.into_cause(reference)),
        })
    }

    /// Fetches the manifest or index a reference names as the registry serves it, without
    /// following an index to a platform (what `imagetools inspect --raw` shows). Mirrors first.
    pub async fn fetch_manifest_raw(&self, reference: &Reference) -> Result<RawManifest> {
        let (target, expected) = match reference.digest() {
            Some(d) => (
                d.to_string(),
                Some(parse_sha256(d).map_err(|c| Error::Resolve {
                    reference: reference.to_string(),
                    source: Box::new(c),
                })?),
            ),
            None => (reference.tag().unwrap_or("latest").to_string(), None),
        };
        let mut failures = Failures::default();
        for ep in self.hosts.pull_endpoints(reference.registry()) {
            match self
                .fetch_manifest(&ep, reference, &target, expected.as_ref(), None)
                .await
            {
                Ok(f) => {
                    return Ok(RawManifest {
                        digest: f.digest,
                        media_type: f.media_type,
                        bytes: f.bytes,
                    });
                }
                Err(cause) => failures.record(&ep, cause),
            }
        }
        Err(Error::Resolve {
            reference: reference.to_string(),
            source: Box::new(failures.into_cause(reference)),
        })
    }

    async fn resolve_at(
        &self,
        ep: &Endpoint,
        reference: &Reference,
        platform: &Platform,
    ) -> std::result::Result<Resolved, Cause> {
        let (target, expected) = match reference.digest() {
            Some(d) => (d.to_string(), Some(parse_sha256(d)?)),
            None => (reference.tag().unwrap_or("latest").to_string(), None),
        };
        let mut fetched = self
            .fetch_manifest(ep, reference, &target, expected.as_ref(), None)
            .await?;
        let mut index_digest = None;
        let mut depth = 0;
        while is_index(&fetched.media_type) {
            depth += 1;
            if depth > MAX_INDEX_DEPTH {
                return Err(Cause::IndexTooDeep(MAX_INDEX_DEPTH));
            }
            let index: ImageIndex =
                serde_json::from_slice(&fetched.bytes).map_err(|source| Cause::Json {
                    object: "image index",
                    source,
                })?;
            let chosen = select_platform(&index, platform)?;
            index_digest.get_or_insert(fetched.digest.clone());
            fetched = self
                .fetch_manifest(
                    ep,
                    reference,
                    chosen.digest().as_ref(),
                    Some(chosen.digest()),
                    Some(chosen),
                )
                .await?;
        }
        if !is_manifest(&fetched.media_type) {
            return Err(Cause::UnsupportedMediaType(fetched.media_type));
        }
        let manifest: ImageManifest =
            serde_json::from_slice(&fetched.bytes).map_err(|source| Cause::Json {
                object: "image manifest",
                source,
            })?;
        let config_desc = manifest.config();
        if config_desc.size() > MAX_CONFIG {
            return Err(Cause::TooLarge {
                object: "image config",
                size: config_desc.size(),
                limit: MAX_CONFIG,
            });
        }
        let mut config_bytes = Vec::new();
        self.fetch_blob_at(ep, reference, config_desc, &mut config_bytes)
            .await
            .map_err(|e| match e {
                BlobError::Cause(cause) => cause,
                BlobError::Mismatch(source) => Cause::Mismatch {
                    object: "image config",
                    digest: config_desc.digest().to_string(),
                    source,
                },
                // Writing to a Vec cannot fail.
                BlobError::Write(e) => Cause::InvalidResponse {
                    url: reference.to_string(),
                    reason: e.to_string(),
                },
            })?;
        let config: ImageConfiguration =
            serde_json::from_slice(&config_bytes).map_err(|source| Cause::Json {
                object: "image config",
                source,
            })?;
        Ok(Resolved {
            reference: reference.clone(),
            digest: fetched.digest,
            index_digest,
            manifest,
            manifest_bytes: fetched.bytes,
            media_type: fetched.media_type,
            config,
            config_bytes,
        })
    }

    /// GETs `manifests/<target>` and checks it against `expected` (and `descriptor`'s size),
    /// or against the registry's `Docker-Content-Digest` when fetched by tag.
    async fn fetch_manifest(
        &self,
        ep: &Endpoint,
        reference: &Reference,
        target: &str,
        expected: Option<&Digest>,
        descriptor: Option<&Descriptor>,
    ) -> std::result::Result<Fetched, Cause> {
        let url = ep.url(&format!(
            "/v2/{}/manifests/{target}",
            reference.repository()
        ));
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static(MANIFEST_ACCEPT));
        let scope = pull_scope(reference.repository());
        let response = self
            .send_ok(ep, &scope, Method::GET, &url, &headers, None, true)
            .await
            .map_err(|cause| match cause {
                Cause::Status { status, .. } if status == reqwest::StatusCode::NOT_FOUND => {
                    let named = if reference.tag() == Some(target) {
                        reference.clone()
                    } else {
                        reference.with_digest(target)
                    };
                    Cause::NotFound {
                        reference: named.to_string(),
                        source: Box::new(cause),
                    }
                }
                cause => cause,
            })?;
        let content_type = header_str(&response, reqwest::header::CONTENT_TYPE)
            .map(|ct| ct.split(';').next().unwrap_or("").trim().to_string());
        let header_digest = header_str(&response, "docker-content-digest");
        let bytes = read_body(response, &url, "manifest", MAX_MANIFEST).await?;
        let actual = sha256_string(&bytes);
        let mismatch = |source| Cause::Mismatch {
            object: "manifest",
            digest: expected
                .map(ToString::to_string)
                .unwrap_or_else(|| format!("{}:{target}", reference.repository())),
            source,
        };
        if let Some(desc) = descriptor
            && desc.size() != bytes.len() as u64
        {
            return Err(mismatch(Mismatch::Size {
                expected: desc.size(),
                actual: bytes.len() as u64,
            }));
        }
        if let Some(expected) = expected {
            if expected.as_ref() != actual {
                return Err(mismatch(Mismatch::Digest { actual }));
            }
        } else if let Some(header) = header_digest.filter(|h| h.starts_with("sha256:"))
            && header != actual
        {
            return Err(mismatch(Mismatch::Header { actual: header }));
        }
        let digest = match expected {
            Some(d) => d.clone(),
            None => parse_sha256(&actual)?,
        };
        let media_type = manifest_media_type(
            content_type.as_deref(),
            descriptor.map(|d| d.media_type().to_string()).as_deref(),
            &bytes,
        );
        Ok(Fetched {
            bytes,
            media_type,
            digest,
        })
    }

    /// Streams a blob to `out`, verifying size and digest. Mirrors are tried in order until one
    /// starts sending; a blob that fails verification is [`Error::DigestMismatch`] and what was
    /// written must be discarded by the caller.
    pub async fn fetch_blob<W: AsyncWrite + Unpin>(
        &self,
        reference: &Reference,
        descriptor: &Descriptor,
        out: &mut W,
    ) -> Result<()> {
        let digest = descriptor.digest();
        let mut failures = Failures::default();
        for ep in self.hosts.pull_endpoints(reference.registry()) {
            let mut counting = CountingWriter {
                inner: &mut *out,
                written: 0,
            };
            match self
                .fetch_blob_at(&ep, reference, descriptor, &mut counting)
                .await
            {
                Ok(()) => {
                    self.remember_blob(reference, digest);
                    return Ok(());
                }
                Err(BlobError::Mismatch(source)) => {
                    return Err(Error::DigestMismatch {
                        reference: reference.to_string(),
                        digest: digest.clone(),
                        source,
                    });
                }
                Err(BlobError::Write(source)) => {
                    return Err(Error::WriteBlob {
                        reference: reference.to_string(),
                        digest: digest.clone(),
                        source,
                    });
                }
                // Once bytes are out, another host cannot take over: `out` cannot rewind.
                Err(BlobError::Cause(cause)) if counting.written > 0 => {
                    return Err(Error::FetchBlob {
                        reference: reference.to_string(),
                        digest: digest.clone(),
                        source: Box::new(cause),
                    });
                }
                Err(BlobError::Cause(cause)) => {
                    tracing::debug!(host = %ep.host, mirror = ep.mirror, %digest, error = %cause, "blob fetch failed");
                    failures.record(&ep, cause);
                }
            }
        }
        Err(Error::FetchBlob {
            reference: reference.to_string(),
            digest: digest.clone(),
            source: Box::new(failures.into_cause(reference)),
        })
    }

    async fn fetch_blob_at<W: AsyncWrite + Unpin>(
        &self,
        ep: &Endpoint,
        reference: &Reference,
        descriptor: &Descriptor,
        out: &mut W,
    ) -> std::result::Result<(), BlobError> {
        let digest = descriptor.digest();
        let expected_hex = parse_sha256(digest.as_ref())?.digest().to_string();
        let url = ep.url(&format!("/v2/{}/blobs/{digest}", reference.repository()));
        let scope = pull_scope(reference.repository());
        let mut response = self
            .send_ok(ep, &scope, Method::GET, &url, &HeaderMap::new(), None, true)
            .await?;
        let expected_size = descriptor.size();
        let mut hasher = Sha256::new();
        let mut size: u64 = 0;
        while let Some(chunk) = response.chunk().await.map_err(|source| Cause::Body {
            url: url.clone(),
            source,
        })? {
            size += chunk.len() as u64;
            if size > expected_size {
                return Err(BlobError::Mismatch(Mismatch::Size {
                    expected: expected_size,
                    actual: size,
                }));
            }
            hasher.update(&chunk);
            out.write_all(&chunk).await.map_err(BlobError::Write)?;
        }
        if size != expected_size {
            return Err(BlobError::Mismatch(Mismatch::Size {
                expected: expected_size,
                actual: size,
            }));
        }
        let actual_hex = hex::encode(hasher.finalize());
        if actual_hex != expected_hex {
            return Err(BlobError::Mismatch(Mismatch::Digest {
                actual: format!("sha256:{actual_hex}"),
            }));
        }
        out.flush().await.map_err(BlobError::Write)?;
        Ok(())
    }
}

enum BlobError {
    Cause(Cause),
    Mismatch(Mismatch),
    Write(std::io::Error),
}

impl From<Cause> for BlobError {
    fn from(cause: Cause) -> Self {
        BlobError::Cause(cause)
    }
}

/// Remembers whether anything reached the caller's writer.
struct CountingWriter<'a, W> {
    inner: &'a mut W,
    written: u64,
}

impl<W: AsyncWrite + Unpin> AsyncWrite for CountingWriter<'_, W> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let poll = std::pin::Pin::new(&mut *self.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &poll {
            self.written += *n as u64;
        }
        poll
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}

/// Picks the first entry of `index` whose platform satisfies `want`; failing that, for 32-bit
/// arm, the newest older variant it can run (v7 runs v6 and v5 images), as containerd's
/// default matcher does.
fn select_platform<'a>(
    index: &'a ImageIndex,
    want: &Platform,
) -> std::result::Result<&'a Descriptor, Cause> {
    let mut available = Vec::new();
    let mut fallback: Option<(u32, &Descriptor)> = None;
    let want_arm = arm_variant(want);
    for desc in index.manifests() {
        let Some(p) = desc.platform() else { continue };
        let candidate = Platform::new(
            &p.os().to_string(),
            &p.architecture().to_string(),
            p.variant().as_deref(),
        );
        if want.matches(&candidate) {
            return Ok(desc);
        }
        if let (Some(w), Some(c)) = (want_arm, arm_variant(&candidate))
            && candidate.os == want.os
            && c < w
            && fallback.is_none_or(|(best, _)| c > best)
        {
            fallback = Some((c, desc));
        }
        available.push(candidate.to_string());
    }
    if let Some((_, desc)) = fallback {
        return Ok(desc);
    }
    Err(Cause::PlatformNotFound {
        platform: want.to_string(),
        available: if available.is_empty() {
            "none".into()
        } else {
            available.join(", ")
        },
    })
}

/// `N` of a 32-bit `arm/vN` platform.
fn arm_variant(p: &Platform) -> Option<u32> {
    if p.architecture != "arm" {
        return None;
    }
    p.variant.as_deref()?.strip_prefix('v')?.parse().ok()
}

/// The media type from the response, else the descriptor that pointed here, else the body's
/// own `mediaType`, else guessed from its shape (OCI allows omitting `mediaType`).
fn manifest_media_type(
    content_type: Option<&str>,
    descriptor: Option<&str>,
    body: &[u8],
) -> String {
    let known = |m: &&str| is_index(m) || is_manifest(m);
    if let Some(m) = content_type.filter(known).or(descriptor.filter(known)) {
        return m.to_string();
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
        config: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Probe>(body) {
        Ok(Probe {
            media_type: Some(m),
            ..
        }) => m,
        Ok(Probe {
            manifests: Some(_), ..
        }) => media_type::OCI_INDEX.to_string(),
        Ok(Probe {
            config: Some(_), ..
        }) => media_type::OCI_MANIFEST.to_string(),
        _ => content_type
            .unwrap_or("application/octet-stream")
            .to_string(),
    }
}

fn header_str(response: &Response, name: impl reqwest::header::AsHeaderName) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

pub(crate) fn sha256_string(bytes: &[u8]) -> String {
    format!("sha256:{}", kiln_oci::sha256_hex(bytes))
}

pub(crate) fn parse_sha256(s: &str) -> std::result::Result<Digest, Cause> {
    kiln_oci::parse_digest(s).map_err(|_| Cause::UnsupportedDigest(s.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(entries: &[(&str, &str, Option<&str>)]) -> ImageIndex {
        let manifests: Vec<serde_json::Value> = entries
            .iter()
            .enumerate()
            .map(|(i, (os, arch, variant))| {
                let mut platform = serde_json::json!({"os": os, "architecture": arch});
                if let Some(v) = variant {
                    platform["variant"] = serde_json::json!(v);
                }
                serde_json::json!({
                    "mediaType": media_type::OCI_MANIFEST,
                    "digest": sha256_string(format!("m{i}").as_bytes()),
                    "size": i + 1,
                    "platform": platform,
                })
            })
            .collect();
        serde_json::from_value(serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media_type::OCI_INDEX,
            "manifests": manifests,
        }))
        .unwrap()
    }

    #[test]
    fn selects_platform_with_variant() {
        let idx = index(&[
            ("linux", "amd64", None),
            ("linux", "arm", Some("v6")),
            ("linux", "arm", Some("v7")),
            ("linux", "arm64", Some("v8")),
            ("unknown", "unknown", None),
        ]);
        let pick = |p: &str| select_platform(&idx, &p.parse().unwrap()).map(|d| d.size());
        assert_eq!(pick("linux/amd64").unwrap(), 1);
        assert_eq!(pick("linux/arm/v7").unwrap(), 3);
        assert_eq!(pick("linux/arm/v6").unwrap(), 2);
        assert_eq!(pick("linux/arm64").unwrap(), 4);
        assert_eq!(pick("linux/arm64/v8").unwrap(), 4);
        assert_eq!(pick("linux/aarch64").unwrap(), 4);
        let err = pick("linux/s390x").unwrap_err();
        assert_eq!(
            err.to_string(),
            "no match for platform in manifest: not found (wanted linux/s390x; the index has \
             linux/amd64, linux/arm/v6, linux/arm/v7, linux/arm64, unknown/unknown)"
        );
    }

    #[test]
    fn arm_falls_back_to_the_newest_older_variant() {
        let idx = index(&[
            ("linux", "arm", Some("v5")),
            ("linux", "arm", Some("v6")),
            ("linux", "arm64", None),
        ]);
        let pick = |p: &str| select_platform(&idx, &p.parse().unwrap()).map(|d| d.size());
        assert_eq!(pick("linux/arm/v7").unwrap(), 2);
        assert_eq!(pick("linux/arm/v6").unwrap(), 2);
        assert_eq!(pick("linux/arm/v5").unwrap(), 1);
        let only_v7 = index(&[("linux", "arm", Some("v7"))]);
        assert!(select_platform(&only_v7, &"linux/arm/v6".parse().unwrap()).is_err());
        // An arm64 request never takes a 32-bit image.
        let only_arm = index(&[("linux", "arm", Some("v7"))]);
        assert!(select_platform(&only_arm, &"linux/arm64".parse().unwrap()).is_err());
    }

    #[test]
    fn media_type_falls_back_to_body() {
        let body = br#"{"schemaVersion":2,"config":{}}"#;
        assert_eq!(
            manifest_media_type(Some("application/json"), None, body),
            media_type::OCI_MANIFEST
        );
        let body = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert_eq!(manifest_media_type(None, None, body), media_type::OCI_INDEX);
        let body = format!(r#"{{"mediaType":"{}"}}"#, media_type::DOCKER_MANIFEST_LIST);
        assert_eq!(
            manifest_media_type(Some("text/plain"), None, body.as_bytes()),
            media_type::DOCKER_MANIFEST_LIST
        );
        assert_eq!(
            manifest_media_type(Some(media_type::DOCKER_MANIFEST), None, b"{}"),
            media_type::DOCKER_MANIFEST
        );
        assert_eq!(
            manifest_media_type(None, Some(media_type::OCI_MANIFEST), b"{}"),
            media_type::OCI_MANIFEST
        );
    }
}
