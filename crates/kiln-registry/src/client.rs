use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::{Method, Response, StatusCode};

use crate::auth::{AuthCache, Authorization};
use crate::config::{Endpoint, Hosts, RegistryConfig};
use crate::credentials::{Anonymous, CredentialStore};
use crate::error::{Cause, RegistryErrors, Result};

/// How hard to retry idempotent requests that failed with a 5xx, a 429 or a broken connection.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Total tries, including the first.
    pub attempts: u32,
    /// Wait before the second try; doubled for each later one.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 4,
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// An OCI distribution client over HTTP(S), with mirrors, auth and retries.
pub struct Client {
    pub(crate) hosts: Hosts,
    pub(crate) credentials: Arc<dyn CredentialStore>,
    pub(crate) auth: AuthCache,
    pub(crate) retry: RetryPolicy,
    /// Repositories known to hold a blob, per registry, for cross-repository mounts.
    pub(crate) blob_sources: BlobSources,
    /// Bounds blob uploads in flight per registry.
    pub(crate) upload_slots: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>,
    /// Refuse every request (`kiln build --offline`).
    pub(crate) offline: bool,
}

/// digest → (registry, repository) pairs, most recent last.
#[derive(Debug, Default)]
pub(crate) struct BlobSources(std::sync::Mutex<HashMap<String, Vec<(String, String)>>>);

impl BlobSources {
    pub fn add(&self, registry: &str, repository: &str, digest: &str) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let repos = map.entry(digest.to_string()).or_default();
        repos.retain(|(r, n)| !(r == registry && n == repository));
        repos.push((registry.to_string(), repository.to_string()));
    }

    /// Other repositories of `registry` known to hold `digest`, most recent first.
    pub fn candidates(&self, registry: &str, repository: &str, digest: &str) -> Vec<String> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(digest)
            .map(|repos| {
                repos
                    .iter()
                    .rev()
                    .filter(|(r, n)| r == registry && n != repository)
                    .map(|(_, n)| n.clone())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("hosts", &self.hosts)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

/// Builds a fresh request body for each attempt (a file stream cannot be replayed).
pub(crate) type BodyFn<'a> =
    &'a (dyn Fn() -> std::result::Result<reqwest::Body, Cause> + Send + Sync);

/// The largest error body kept for the error message.
const MAX_ERROR_BODY: usize = 64 * 1024;

impl Client {
    /// A client with anonymous access; fails only on unusable configuration (bad CA files,
    /// mirrors written as URLs).
    pub fn new(config: RegistryConfig) -> Result<Client> {
        Ok(Client {
            hosts: Hosts::new(config)?,
            credentials: Arc::new(Anonymous),
            auth: AuthCache::default(),
            retry: RetryPolicy::default(),
            blob_sources: BlobSources::default(),
            upload_slots: Default::default(),
            offline: false,
        })
    }

    /// A client for the same registries that sends nothing: every request fails with
    /// [`Cause::Offline`] naming it (`kiln build --offline`).
    pub fn offline(config: RegistryConfig) -> Result<Client> {
        Ok(Client {
            offline: true,
            ..Client::new(config)?
        })
    }

    /// Records that `reference`'s repository holds blob `digest` (say, the image it names was
    /// pulled from there), so a push to another repository of that registry can mount the blob
    /// instead of uploading it.
    pub fn remember_blob(&self, reference: &kiln_oci::Reference, digest: &kiln_oci::Digest) {
        self.blob_sources.add(
            reference.registry(),
            reference.repository(),
            digest.as_ref(),
        );
    }

    /// A slot for one blob upload to `registry`; at most the host's `max_concurrent_uploads`
    /// are handed out at once.
    pub(crate) async fn upload_slot(
        &self,
        registry: &str,
    ) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let semaphore = {
            let mut slots = self.upload_slots.lock().unwrap_or_else(|e| e.into_inner());
            slots
                .entry(registry.to_string())
                .or_insert_with(|| {
                    Arc::new(tokio::sync::Semaphore::new(
                        self.hosts.upload_settings(registry).1,
                    ))
                })
                .clone()
        };
        // Never closed, so this fails only in theory; then the upload goes unbounded.
        semaphore.acquire_owned().await.ok()
    }

    pub fn with_credentials(self, credentials: Arc<dyn CredentialStore>) -> Client {
        Client {
            credentials,
            ..self
        }
    }

    pub fn with_retry(self, retry: RetryPolicy) -> Client {
        Client { retry, ..self }
    }

    /// Lets this client reach `registry` as `docker manifest --insecure` does: over HTTPS
    /// without verifying its certificate, or over plain HTTP when it does not answer HTTPS
    /// (asked once, on `/v2/`). Nothing changes for a registry the config already reaches over
    /// plain HTTP.
    pub async fn allow_insecure(&self, registry: &str) {
        if self.hosts.configured_http(registry) {
            return;
        }
        let url = format!("https://{}/v2/", crate::config::dial_host(registry));
        // Any HTTP answer (401 included) means HTTPS works; no answer means plain HTTP.
        let https = self
            .hosts
            .unverified_client()
            .get(&url)
            .timeout(std::time::Duration::from_secs(15))
            .send()
            .await
            .is_ok();
        tracing::debug!(registry, https, "insecure registry probed");
        self.hosts.set_insecure(registry, !https);
    }

    #[allow(clippy::too_many_arguments)]
    /// Sends one logical request: answers auth challenges once, and when `retry` is set tries
    /// again on transient failures. Returns whatever response came last; callers check status.
    pub(crate) async fn send(
        &self,
        ep: &Endpoint,
        scope: &str,
        method: Method,
        url: &str,
        headers: &HeaderMap,
        body: Option<BodyFn<'_>>,
        retry: bool,
    ) -> std::result::Result<Response, Cause> {
        if self.offline {
            return Err(Cause::Offline {
                method: method.to_string(),
                url: url.to_string(),
            });
        }
        if !allowed_url(ep, url) {
            return Err(Cause::HttpNotAllowed {
                url: url.to_string(),
            });
        }
        let credential = self.credentials.get(&ep.cred_host);
        let attempts = if retry { self.retry.attempts.max(1) } else { 1 };
        let mut attempt = 0;
        // Set once a challenge has been answered; the answer is reused for later attempts.
        let mut answered: Option<Authorization> = None;
        loop {
            attempt += 1;
            let result = self
                .send_once(
                    ep,
                    scope,
                    &method,
                    url,
                    headers,
                    body,
                    credential.as_ref(),
                    answered.as_ref(),
                )
                .await;
            let retryable = match &result {
                Ok(resp) if resp.status() == StatusCode::UNAUTHORIZED && answered.is_none() => {
                    attempt -= 1;
                    answered = Some(
                        self.auth
                            .handle_challenge(ep, scope, url, resp, credential.as_ref())
                            .await?,
                    );
                    continue;
                }
                Ok(resp) => {
                    resp.status().is_server_error()
                        || resp.status() == StatusCode::TOO_MANY_REQUESTS
                }
                Err(cause) => cause.is_retryable(),
            };
            if !retryable || attempt >= attempts {
                return result;
            }
            let wait = self.retry.backoff(attempt);
            tracing::debug!(%method, url, attempt, ?wait, "retrying registry request");
            tokio::time::sleep(wait).await;
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn send_once(
        &self,
        ep: &Endpoint,
        scope: &str,
        method: &Method,
        url: &str,
        headers: &HeaderMap,
        body: Option<BodyFn<'_>>,
        credential: Option<&crate::credentials::Credential>,
        answered: Option<&Authorization>,
    ) -> std::result::Result<Response, Cause> {
        let mut request = ep
            .client
            .request(method.clone(), url)
            .headers(headers.clone());
        // Upload locations may point elsewhere; our token is only for the registry itself.
        if same_host(ep, url) {
            let authorization = match answered {
                Some(a) => a.clone(),
                None => self.auth.authorization(ep, scope, credential).await?,
            };
            request = match authorization {
                Authorization::None => request,
                Authorization::Bearer(token) => request.bearer_auth(token),
                Authorization::Basic(user, password) => request.basic_auth(user, Some(password)),
            };
        }
        if let Some(body) = body {
            request = request.body(body()?);
        }
        request.send().await.map_err(|source| Cause::Transport {
            method: method.to_string(),
            url: url.to_string(),
            source,
        })
    }

    /// Sends and requires a 2xx (or one of `also_ok`), turning anything else into
    /// [`Cause::Status`] with the registry's error body.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn send_ok(
        &self,
        ep: &Endpoint,
        scope: &str,
        method: Method,
        url: &str,
        headers: &HeaderMap,
        body: Option<BodyFn<'_>>,
        retry: bool,
    ) -> std::result::Result<Response, Cause> {
        let response = self
            .send(ep, scope, method.clone(), url, headers, body, retry)
            .await?;
        check_status(&method, url, response).await
    }
}

pub(crate) async fn check_status(
    method: &Method,
    url: &str,
    response: Response,
) -> std::result::Result<Response, Cause> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = read_limited(response, MAX_ERROR_BODY).await;
    Err(Cause::Status {
        method: method.to_string(),
        url: url.to_string(),
        status,
        errors: RegistryErrors::parse(&body),
    })
}

/// Reads at most `limit` bytes of a body, ignoring errors: only for diagnostics.
async fn read_limited(mut response: Response, limit: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        out.extend_from_slice(&chunk);
        if out.len() >= limit {
            out.truncate(limit);
            break;
        }
    }
    out
}

/// Reads a whole body, refusing more than `limit` bytes.
pub(crate) async fn read_body(
    mut response: Response,
    url: &str,
    object: &'static str,
    limit: u64,
) -> std::result::Result<Vec<u8>, Cause> {
    if let Some(len) = response.content_length()
        && len > limit
    {
        return Err(Cause::TooLarge {
            object,
            size: len,
            limit,
        });
    }
    let mut out = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|source| Cause::Body {
        url: url.to_string(),
        source,
    })? {
        out.extend_from_slice(&chunk);
        if out.len() as u64 > limit {
            return Err(Cause::TooLarge {
                object,
                size: out.len() as u64,
                limit,
            });
        }
    }
    Ok(out)
}

fn allowed_url(ep: &Endpoint, url: &str) -> bool {
    match url::Url::parse(url) {
        Ok(u) => u.scheme() == "https" || (u.scheme() == "http" && ep.http),
        Err(_) => false,
    }
}

fn same_host(ep: &Endpoint, url: &str) -> bool {
    url::Url::parse(url).is_ok_and(|u| {
        let host = match (u.host_str(), u.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            (None, _) => return false,
        };
        host.eq_ignore_ascii_case(&ep.host)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An offline client fails every request at once, naming it, without a connection (the
    /// registry here is a port nothing listens on: a sent request would fail otherwise).
    #[tokio::test]
    async fn an_offline_client_sends_nothing() {
        let mut config = RegistryConfig::new();
        config.insert(
            "127.0.0.1:9".into(),
            crate::HostConfig {
                http: true,
                ..Default::default()
            },
        );
        let client = Client::offline(config).unwrap();
        let r: kiln_oci::Reference = "127.0.0.1:9/a/b:c".parse().unwrap();
        let err = client
            .resolve(&r, &kiln_oci::Platform::host())
            .await
            .unwrap_err();
        let text = crate::error::chain(&err);
        assert!(
            text.contains(
                "GET http://127.0.0.1:9/v2/a/b/manifests/c not sent: the network is not used with --offline"
            ),
            "{text}"
        );
    }

    /// Callers spawn these on a multi-threaded runtime.
    #[test]
    fn client_and_futures_are_send() {
        fn is_send<T: Send + Sync>(_: &T) {}
        fn future_is_send<T: Send>(_: &T) {}
        let client = Client::new(RegistryConfig::new()).unwrap();
        is_send(&client);
        let r: kiln_oci::Reference = "a/b:c".parse().unwrap();
        let p = kiln_oci::Platform::host();
        future_is_send(&client.resolve(&r, &p));
        let d = kiln_oci::sha256(b"");
        let desc = kiln_oci::Descriptor::new(kiln_oci::MediaType::ImageLayer, 0, d.clone());
        let mut out = Vec::new();
        future_is_send(&client.fetch_blob(&r, &desc, &mut out));
        future_is_send(&client.push_blob(&r, &d, 0, std::path::Path::new("x")));
        future_is_send(&client.push_manifest(&r, "m", b""));
        let stream = futures::stream::empty::<std::io::Result<Vec<u8>>>();
        future_is_send(&client.push_blob_streamed(&r, stream, async { None }));
        future_is_send(&client.blob_exists(&r, &d));
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let p = RetryPolicy {
            attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(300),
        };
        assert_eq!(p.backoff(1), Duration::from_millis(100));
        assert_eq!(p.backoff(2), Duration::from_millis(200));
        assert_eq!(p.backoff(3), Duration::from_millis(300));
        assert_eq!(p.backoff(40), Duration::from_millis(300));
    }

    #[test]
    fn http_urls_need_an_http_host() {
        let client = reqwest::Client::new();
        let ep = |http| Endpoint {
            host: "r.example:5000".into(),
            http,
            client: client.clone(),
            mirror: false,
            cred_host: "r.example:5000".into(),
        };
        assert!(!allowed_url(&ep(false), "http://r.example:5000/v2/"));
        assert!(allowed_url(&ep(true), "http://r.example:5000/v2/"));
        assert!(allowed_url(&ep(false), "https://r.example:5000/v2/"));
        assert!(same_host(&ep(false), "https://r.example:5000/upload?x=1"));
        assert!(!same_host(&ep(false), "https://cdn.example/upload"));
        assert!(!same_host(&ep(false), "https://r.example/upload"));
    }
}
