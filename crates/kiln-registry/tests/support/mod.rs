//! A small in-process distribution API server for tests: manifests and blobs in memory,
//! optional bearer or basic auth, injectable failures, and a log of every request.

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use kiln_oci::media_type;

#[derive(Clone, Debug)]
pub enum Auth {
    None,
    /// Token service at `/token`; `basic` makes it demand those credentials.
    Bearer {
        expires_in: u64,
        basic: Option<(String, String)>,
    },
    Basic(String, String),
}

#[derive(Clone, Debug)]
pub struct Logged {
    /// Position across all fakes sharing one counter, to check ordering between servers.
    pub seq: usize,
    pub method: String,
    pub path: String,
    pub query: String,
    pub authorization: Option<String>,
}

/// (repository, tag or digest) → (media type, bytes).
pub type Manifests = HashMap<(String, String), (String, Vec<u8>)>;

pub struct Fake {
    addr: OnceLock<SocketAddr>,
    pub auth: Auth,
    pub manifests: Mutex<Manifests>,
    pub blobs: Mutex<HashMap<String, Vec<u8>>>,
    pub log: Mutex<Vec<Logged>>,
    /// Statuses returned, in order, to the next registry (non-token) requests.
    pub fail: Mutex<VecDeque<u16>>,
    seq: Arc<AtomicUsize>,
    uploads: AtomicUsize,
    /// When set, blobs belong to repositories (as in a real registry): HEAD and GET find only
    /// blobs uploaded to, mounted into or put in that repository.
    pub strict_repos: std::sync::atomic::AtomicBool,
    pub repo_blobs: Mutex<std::collections::HashSet<(String, String)>>,
}

impl Fake {
    pub async fn start(auth: Auth) -> Arc<Fake> {
        Self::start_with_counter(auth, Arc::new(AtomicUsize::new(0))).await
    }

    pub async fn start_with_counter(auth: Auth, seq: Arc<AtomicUsize>) -> Arc<Fake> {
        let fake = Arc::new(Fake {
            addr: OnceLock::new(),
            auth,
            manifests: Mutex::default(),
            blobs: Mutex::default(),
            log: Mutex::default(),
            fail: Mutex::default(),
            seq,
            uploads: AtomicUsize::new(0),
            strict_repos: Default::default(),
            repo_blobs: Mutex::default(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        fake.addr.set(listener.local_addr().unwrap()).unwrap();
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(fake.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        fake
    }

    pub fn host(&self) -> String {
        self.addr.get().unwrap().to_string()
    }

    pub fn log(&self) -> Vec<Logged> {
        self.log.lock().unwrap().clone()
    }

    /// `METHOD path` of every logged request, token requests included.
    pub fn calls(&self) -> Vec<String> {
        self.log()
            .iter()
            .map(|l| format!("{} {}", l.method, l.path))
            .collect()
    }

    pub fn token_requests(&self) -> Vec<Logged> {
        self.log()
            .into_iter()
            .filter(|l| l.path == "/token")
            .collect()
    }

    pub fn put_manifest(&self, repo: &str, reference: &str, media_type: &str, bytes: &[u8]) {
        self.manifests.lock().unwrap().insert(
            (repo.to_string(), reference.to_string()),
            (media_type.to_string(), bytes.to_vec()),
        );
    }

    pub fn put_blob(&self, digest: &str, bytes: &[u8]) {
        self.blobs
            .lock()
            .unwrap()
            .insert(digest.to_string(), bytes.to_vec());
    }

    /// Stores an image (config + one layer) under `repo:tag` and by digest; returns the
    /// manifest digest.
    pub fn put_image(&self, repo: &str, tag: &str, image: &TestImage) -> String {
        self.put_blob(&image.config_digest, &image.config);
        self.put_blob(&image.layer_digest, &image.layer);
        self.put_manifest(repo, tag, &image.media_type, &image.manifest);
        self.put_manifest(repo, &image.digest, &image.media_type, &image.manifest);
        image.digest.clone()
    }
}

pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", kiln_oci::sha256_hex(bytes))
}

/// A one-layer image whose config names its platform.
pub struct TestImage {
    pub layer: Vec<u8>,
    pub layer_digest: String,
    pub config: Vec<u8>,
    pub config_digest: String,
    pub manifest: Vec<u8>,
    pub media_type: String,
    pub digest: String,
}

impl TestImage {
    pub fn new(platform: &str, docker: bool) -> TestImage {
        let parts: Vec<&str> = platform.split('/').collect();
        let layer = format!("layer for {platform}").into_bytes();
        let layer_digest = digest_of(&layer);
        let mut config = serde_json::json!({
            "architecture": parts[1],
            "os": parts[0],
            "config": {"Env": [format!("PLATFORM={platform}")]},
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        });
        if let Some(v) = parts.get(2) {
            config["variant"] = serde_json::json!(v);
        }
        let config = serde_json::to_vec(&config).unwrap();
        let config_digest = digest_of(&config);
        let (mt, config_mt, layer_mt) = if docker {
            (
                media_type::DOCKER_MANIFEST,
                media_type::DOCKER_CONFIG,
                media_type::DOCKER_LAYER_GZIP,
            )
        } else {
            (
                media_type::OCI_MANIFEST,
                media_type::OCI_CONFIG,
                media_type::OCI_LAYER_GZIP,
            )
        };
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": mt,
            "config": {"mediaType": config_mt, "digest": config_digest, "size": config.len()},
            "layers": [{"mediaType": layer_mt, "digest": layer_digest, "size": layer.len()}],
        }))
        .unwrap();
        TestImage {
            digest: digest_of(&manifest),
            layer_digest,
            layer,
            config_digest,
            config,
            manifest,
            media_type: mt.to_string(),
        }
    }
}

/// An index over `images` (each with its platform string); returns (bytes, digest).
pub fn index_of(images: &[(&str, &TestImage)], docker: bool) -> (Vec<u8>, String) {
    let manifests: Vec<serde_json::Value> = images
        .iter()
        .map(|(platform, img)| {
            let parts: Vec<&str> = platform.split('/').collect();
            let mut p = serde_json::json!({"os": parts[0], "architecture": parts[1]});
            if let Some(v) = parts.get(2) {
                p["variant"] = serde_json::json!(v);
            }
            serde_json::json!({
                "mediaType": img.media_type,
                "digest": img.digest,
                "size": img.manifest.len(),
                "platform": p,
            })
        })
        .collect();
    let mt = if docker {
        media_type::DOCKER_MANIFEST_LIST
    } else {
        media_type::OCI_INDEX
    };
    let bytes = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": mt,
        "manifests": manifests,
    }))
    .unwrap();
    let digest = digest_of(&bytes);
    (bytes, digest)
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({"errors": [{"code": code, "message": message}]});
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn basic_header(user: &str, pass: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{pass}")))
}

async fn handle(
    State(fake): State<Arc<Fake>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let path = uri.path().to_string();
    let query = uri.query().unwrap_or("").to_string();
    fake.log.lock().unwrap().push(Logged {
        seq: fake.seq.fetch_add(1, Ordering::SeqCst),
        method: method.to_string(),
        path: path.clone(),
        query: query.clone(),
        authorization: authorization.clone(),
    });

    if path == "/token" {
        return token(&fake, authorization.as_deref(), &query);
    }
    if let Some(status) = fake.fail.lock().unwrap().pop_front() {
        return error(
            StatusCode::from_u16(status).unwrap(),
            "UNAVAILABLE",
            "injected failure",
        );
    }
    match &fake.auth {
        Auth::None => {}
        Auth::Bearer { .. } => {
            let ok = authorization
                .as_deref()
                .is_some_and(|a| a.starts_with("Bearer tok-"));
            if !ok {
                let scope = repo_of(&path)
                    .map(|r| {
                        let action = if method == Method::GET || method == Method::HEAD {
                            "pull"
                        } else {
                            "pull,push"
                        };
                        format!(",scope=\"repository:{r}:{action}\"")
                    })
                    .unwrap_or_default();
                let challenge = format!(
                    "Bearer realm=\"http://{}/token\",service=\"fake\"{scope}",
                    fake.host()
                );
                let mut resp = error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "auth required");
                resp.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, challenge.parse().unwrap());
                return resp;
            }
        }
        Auth::Basic(user, pass) => {
            if authorization.as_deref() != Some(basic_header(user, pass).as_str()) {
                let mut resp = error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "auth required");
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    "Basic realm=\"fake\"".parse().unwrap(),
                );
                return resp;
            }
        }
    }
    route(&fake, &method, &path, &query, headers, body)
}

fn token(fake: &Fake, authorization: Option<&str>, query: &str) -> Response {
    let Auth::Bearer { expires_in, basic } = &fake.auth else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if let Some((user, pass)) = basic
        && authorization != Some(basic_header(user, pass).as_str())
    {
        return error(StatusCode::UNAUTHORIZED, "DENIED", "bad credentials");
    }
    // No scope is fine: `docker login` asks for a token without one.
    if !query.contains("service=fake") {
        return error(StatusCode::BAD_REQUEST, "BAD", "missing service");
    }
    let n = fake.token_requests().len();
    // Alternate the field name so both spellings are exercised.
    let field = if n % 2 == 1 { "token" } else { "access_token" };
    let body = serde_json::json!({field: format!("tok-{n}"), "expires_in": expires_in});
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn repo_of(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v2/")?;
    ["/manifests/", "/blobs/"]
        .iter()
        .find_map(|m| rest.find(m).map(|i| &rest[..i]))
}

fn route(
    fake: &Fake,
    method: &Method,
    path: &str,
    query: &str,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if path == "/v2/" {
        return StatusCode::OK.into_response();
    }
    if let Some(id) = path.strip_prefix("/upload/") {
        // Monolithic upload completion: PUT /upload/<id>?digest=...
        let digest = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("digest="))
            .map(|d| d.replace("%3A", ":"))
            .unwrap_or_default();
        if *method != Method::PUT || id.is_empty() || digest_of(&body) != digest {
            return error(StatusCode::BAD_REQUEST, "DIGEST_INVALID", "digest mismatch");
        }
        fake.put_blob(&digest, &body);
        // The id is `<repo>-<n>`.
        if let Some((repo, _)) = id.rsplit_once('-') {
            fake.repo_blobs
                .lock()
                .unwrap()
                .insert((repo.to_string(), digest.clone()));
        }
        return (StatusCode::CREATED, [("docker-content-digest", digest)]).into_response();
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if let Some(repo) = rest.strip_suffix("/blobs/uploads/") {
        let param = |name: &str| {
            query
                .split('&')
                .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                .map(|v| v.replace("%3A", ":").replace("%2F", "/"))
        };
        if let (Some(digest), Some(from)) = (param("mount"), param("from")) {
            let held = fake
                .repo_blobs
                .lock()
                .unwrap()
                .contains(&(from.clone(), digest.clone()));
            if held {
                fake.repo_blobs
                    .lock()
                    .unwrap()
                    .insert((repo.to_string(), digest.clone()));
                return (
                    StatusCode::CREATED,
                    [
                        (header::LOCATION, format!("/v2/{repo}/blobs/{digest}")),
                        (
                            header::HeaderName::from_static("docker-content-digest"),
                            digest,
                        ),
                    ],
                )
                    .into_response();
            }
        }
        let n = fake.uploads.fetch_add(1, Ordering::SeqCst);
        // A relative Location with a query, as real registries send.
        let location = format!("/upload/{repo}-{n}?state=abc");
        return (StatusCode::ACCEPTED, [(header::LOCATION, location)]).into_response();
    }
    if let Some(i) = rest.find("/manifests/") {
        let key = (rest[..i].to_string(), rest[i + 11..].to_string());
        if *method == Method::PUT {
            let mt = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let digest = digest_of(&body);
            fake.put_manifest(&key.0, &key.1, &mt, &body);
            fake.put_manifest(&key.0, &digest, &mt, &body);
            return (StatusCode::CREATED, [("docker-content-digest", digest)]).into_response();
        }
        let Some((mt, bytes)) = fake.manifests.lock().unwrap().get(&key).cloned() else {
            return error(
                StatusCode::NOT_FOUND,
                "MANIFEST_UNKNOWN",
                "manifest unknown",
            );
        };
        let digest = digest_of(&bytes);
        return (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, mt),
                (
                    header::HeaderName::from_static("docker-content-digest"),
                    digest,
                ),
            ],
            bytes,
        )
            .into_response();
    }
    if let Some(i) = rest.find("/blobs/") {
        let digest = &rest[i + 7..];
        if fake.strict_repos.load(Ordering::SeqCst)
            && !fake
                .repo_blobs
                .lock()
                .unwrap()
                .contains(&(rest[..i].to_string(), digest.to_string()))
        {
            return error(StatusCode::NOT_FOUND, "BLOB_UNKNOWN", "blob unknown");
        }
        let Some(bytes) = fake.blobs.lock().unwrap().get(digest).cloned() else {
            return error(StatusCode::NOT_FOUND, "BLOB_UNKNOWN", "blob unknown");
        };
        if *method == Method::HEAD {
            return (StatusCode::OK, [(header::CONTENT_LENGTH, bytes.len())]).into_response();
        }
        return (StatusCode::OK, bytes).into_response();
    }
    StatusCode::NOT_FOUND.into_response()
}
