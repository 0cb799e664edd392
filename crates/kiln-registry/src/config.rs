use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::error::{ConfigError, Error, Result};

/// Settings for one registry host, shaped like a `[registry."host"]` table of buildkitd.toml.
/// A misspelt key is an error, not a setting silently lost.
#[derive(Deserialize, Default, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// Hosts tried in order before this one when pulling; each mirror's own entry (if any)
    /// says how to reach it.
    #[serde(default)]
    pub mirrors: Vec<String>,
    /// Talk plain HTTP to this host.
    #[serde(default)]
    pub http: bool,
    /// Skip TLS certificate verification.
    #[serde(default)]
    pub insecure: bool,
    /// Extra PEM root certificates.
    #[serde(default)]
    pub ca: Vec<PathBuf>,
    /// A client certificate and key (PEM) for mutual TLS.
    #[serde(default)]
    pub keypair: Vec<KeyPair>,
    /// Blobs larger than this many bytes are uploaded in chunks of this size (PATCH with
    /// `Content-Range`), so a failed upload resumes where the registry got to; 0 uploads every
    /// blob in one request. Default [`DEFAULT_CHUNK_SIZE`].
    #[serde(default)]
    pub chunk_size: Option<u64>,
    /// Blob uploads in flight to this registry at once. Default [`DEFAULT_MAX_UPLOADS`].
    #[serde(default)]
    pub max_concurrent_uploads: Option<usize>,
}

/// A `[[registry."host".keypair]]` entry, as buildkitd.toml writes it.
#[derive(Deserialize, Default, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct KeyPair {
    pub key: PathBuf,
    pub cert: PathBuf,
}

/// Large enough that a chunk's round trip costs little, small enough that a resumed upload
/// resends little.
pub const DEFAULT_CHUNK_SIZE: u64 = 32 * 1024 * 1024;
/// As docker and BuildKit push: a few layers at a time per registry.
pub const DEFAULT_MAX_UPLOADS: usize = 4;

/// Host settings keyed by registry host (`docker.io`, `127.0.0.1:5001`, ...).
pub type RegistryConfig = BTreeMap<String, HostConfig>;

/// Where Docker Hub's API actually lives.
const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// One place to send distribution API requests to.
#[derive(Clone, Debug)]
pub(crate) struct Endpoint {
    /// `host[:port]` as dialled.
    pub host: String,
    pub http: bool,
    pub client: reqwest::Client,
    pub mirror: bool,
    /// The name credentials are looked up by: the registry (`docker.io`) or the mirror host.
    pub cred_host: String,
}

impl Endpoint {
    pub fn url(&self, path: &str) -> String {
        let scheme = if self.http { "http" } else { "https" };
        format!("{scheme}://{}{path}", self.host)
    }
}

/// The configuration turned into HTTP clients. Building a TLS client loads the system's root
/// certificates (about 100 ms here), so clients are built on first use, and hosts the config
/// marks `http = true` get a client that loads none: a fully cached build against a local
/// plain-HTTP mirror never pays for TLS.
#[derive(Debug)]
pub(crate) struct Hosts {
    config: RegistryConfig,
    default_client: std::sync::OnceLock<reqwest::Client>,
    plain_client: std::sync::OnceLock<reqwest::Client>,
    /// Verifies no certificate: for hosts allowed `--insecure` that answer HTTPS.
    unverified_client: std::sync::OnceLock<reqwest::Client>,
    clients: HashMap<String, reqwest::Client>,
    /// Hosts one call allowed without TLS verification (`--insecure`): whether each is
    /// reached over plain HTTP (it did not answer HTTPS) rather than unverified HTTPS.
    insecure: std::sync::Mutex<HashMap<String, bool>>,
}

impl Hosts {
    pub fn new(config: RegistryConfig) -> Result<Self> {
        let mut clients = HashMap::new();
        for (host, cfg) in &config {
            let err = |source| Error::Config {
                host: host.clone(),
                source,
            };
            for mirror in &cfg.mirrors {
                if !is_host(mirror) {
                    return Err(err(ConfigError::Mirror(mirror.clone())));
                }
            }
            if cfg.insecure || !cfg.ca.is_empty() || !cfg.keypair.is_empty() {
                clients.insert(host.clone(), build_client(cfg).map_err(err)?);
            }
        }
        Ok(Self {
            config,
            default_client: std::sync::OnceLock::new(),
            plain_client: std::sync::OnceLock::new(),
            unverified_client: std::sync::OnceLock::new(),
            clients,
            insecure: Default::default(),
        })
    }

    /// Whether the config already says to talk plain HTTP to `host`.
    pub fn configured_http(&self, host: &str) -> bool {
        self.config.get(host).is_some_and(|c| c.http)
    }

    /// A client that accepts any certificate (`--insecure`).
    pub fn unverified_client(&self) -> reqwest::Client {
        self.unverified_client
            .get_or_init(|| {
                base_builder()
                    .tls_danger_accept_invalid_certs(true)
                    .build()
                    .unwrap_or_default()
            })
            .clone()
    }

    /// Reaches `host` from now on without verifying its certificate, or over plain HTTP when
    /// `http`.
    pub fn set_insecure(&self, host: &str, http: bool) {
        self.insecure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(host.to_string(), http);
    }

    fn endpoint(&self, key: &str, dial: &str, mirror: bool) -> Endpoint {
        let cred_host = key.to_string();
        let cfg = self.config.get(key);
        let insecure = self
            .insecure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .copied();
        let http = cfg.is_some_and(|c| c.http) || insecure == Some(true);
        let client = match self.clients.get(key) {
            _ if insecure == Some(false) && !http => self.unverified_client(),
            Some(c) => c.clone(),
            None if http => self
                .plain_client
                .get_or_init(|| {
                    base_builder()
                        .tls_certs_only(Vec::new())
                        .build()
                        .unwrap_or_default()
                })
                .clone(),
            None => self
                .default_client
                .get_or_init(|| base_builder().build().unwrap_or_default())
                .clone(),
        };
        Endpoint {
            host: dial.to_string(),
            http,
            client,
            mirror,
            cred_host,
        }
    }

    /// (chunk size, concurrent uploads) for pushes to `registry`.
    pub fn upload_settings(&self, registry: &str) -> (u64, usize) {
        let cfg = self.config.get(registry);
        (
            cfg.and_then(|c| c.chunk_size).unwrap_or(DEFAULT_CHUNK_SIZE),
            cfg.and_then(|c| c.max_concurrent_uploads)
                .unwrap_or(DEFAULT_MAX_UPLOADS)
                .max(1),
        )
    }

    /// The registry itself, where pushes go.
    pub fn upstream(&self, registry: &str) -> Endpoint {
        self.endpoint(registry, dial_host(registry), false)
    }

    /// Mirrors in configured order, then the registry: where pulls go.
    pub fn pull_endpoints(&self, registry: &str) -> Vec<Endpoint> {
        let mut out: Vec<Endpoint> = self
            .config
            .get(registry)
            .map(|c| c.mirrors.as_slice())
            .unwrap_or_default()
            .iter()
            .map(|m| self.endpoint(m, m, true))
            .collect();
        out.push(self.upstream(registry));
        out
    }
}

/// The host a registry's API is dialled at.
pub(crate) fn dial_host(registry: &str) -> &str {
    if registry == DOCKER_HUB || registry == "index.docker.io" {
        DOCKER_HUB_API
    } else {
        registry
    }
}

fn is_host(s: &str) -> bool {
    !s.is_empty() && !s.contains('/') && !s.contains('@') && !s.contains(char::is_whitespace)
}

fn build_client(cfg: &HostConfig) -> std::result::Result<reqwest::Client, ConfigError> {
    let mut certs = Vec::new();
    for path in &cfg.ca {
        let pem = fs_err::read(path).map_err(|source| ConfigError::ReadCa {
            path: path.clone(),
            source,
        })?;
        certs.extend(
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|source| ConfigError::ParseCa {
                path: path.clone(),
                source,
            })?,
        );
    }
    let mut builder = base_builder()
        .tls_certs_merge(certs)
        .tls_danger_accept_invalid_certs(cfg.insecure);
    match cfg.keypair.as_slice() {
        [] => {}
        [pair] => builder = builder.identity(load_identity(pair)?),
        _ => return Err(ConfigError::TooManyKeyPairs),
    }
    builder.build().map_err(ConfigError::Client)
}

/// rustls takes the certificate chain and the key as one PEM buffer.
fn load_identity(pair: &KeyPair) -> std::result::Result<reqwest::Identity, ConfigError> {
    let read = |path: &PathBuf| {
        fs_err::read(path).map_err(|source| ConfigError::ReadKeyPair {
            path: path.clone(),
            source,
        })
    };
    let mut pem = read(&pair.cert)?;
    pem.push(b'\n');
    pem.extend(read(&pair.key)?);
    reqwest::Identity::from_pem(&pem).map_err(|source| ConfigError::ParseKeyPair {
        cert: pair.cert.clone(),
        key: pair.key.clone(),
        source,
    })
}

fn base_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(30))
        .read_timeout(Duration::from_secs(120))
        .redirect(redirect_policy())
}

/// Blob downloads are often redirected to a CDN; follow those, but never from HTTPS down to
/// plain HTTP.
fn redirect_policy() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let downgrade = attempt.url().scheme() == "http"
            && attempt
                .previous()
                .last()
                .is_some_and(|u| u.scheme() == "https");
        if downgrade {
            attempt.error("refusing a redirect from https to http")
        } else if attempt.previous().len() >= 10 {
            attempt.error("too many redirects")
        } else {
            attempt.follow()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml_like: &[(&str, HostConfig)]) -> RegistryConfig {
        toml_like
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn mirrors_come_first_and_use_their_own_entry() {
        let hosts = Hosts::new(config(&[
            (
                "docker.io",
                HostConfig {
                    mirrors: vec!["127.0.0.1:5001".into(), "mirror.example".into()],
                    ..Default::default()
                },
            ),
            (
                "127.0.0.1:5001",
                HostConfig {
                    http: true,
                    ..Default::default()
                },
            ),
        ]))
        .unwrap();
        let eps = hosts.pull_endpoints("docker.io");
        let urls: Vec<String> = eps.iter().map(|e| e.url("/v2/")).collect();
        assert_eq!(
            urls,
            [
                "http://127.0.0.1:5001/v2/",
                "https://mirror.example/v2/",
                "https://registry-1.docker.io/v2/"
            ]
        );
        assert_eq!(
            eps.iter().map(|e| e.mirror).collect::<Vec<_>>(),
            [true, true, false]
        );
        assert_eq!(hosts.upstream("ghcr.io").url("/v2/"), "https://ghcr.io/v2/");
    }

    #[test]
    fn insecure_hosts_use_plain_http_or_unverified_https() {
        let hosts = Hosts::new(RegistryConfig::new()).unwrap();
        assert_eq!(hosts.upstream("a:5000").url("/v2/"), "https://a:5000/v2/");
        hosts.set_insecure("a:5000", true);
        let ep = hosts.upstream("a:5000");
        assert!(ep.http);
        assert_eq!(ep.url("/v2/"), "http://a:5000/v2/");
        hosts.set_insecure("b:5000", false);
        assert_eq!(hosts.upstream("b:5000").url("/v2/"), "https://b:5000/v2/");
        // Only the hosts allowed.
        assert!(!hosts.upstream("c:5000").http);
        assert_eq!(dial_host("docker.io"), "registry-1.docker.io");
    }

    #[test]
    fn mirror_urls_are_rejected() {
        let err = Hosts::new(config(&[(
            "docker.io",
            HostConfig {
                mirrors: vec!["http://127.0.0.1:5001".into()],
                ..Default::default()
            },
        )]))
        .unwrap_err();
        assert!(matches!(
            err,
            Error::Config {
                source: ConfigError::Mirror(_),
                ..
            }
        ));
    }

    #[test]
    fn missing_ca_file_is_a_config_error() {
        let err = Hosts::new(config(&[(
            "r.example",
            HostConfig {
                ca: vec!["/nonexistent/ca.pem".into()],
                ..Default::default()
            },
        )]))
        .unwrap_err();
        assert!(matches!(
            err,
            Error::Config {
                source: ConfigError::ReadCa { .. },
                ..
            }
        ));
    }

    #[test]
    fn keypairs_are_loaded_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert, "not a certificate").unwrap();
        std::fs::write(&key, "not a key").unwrap();
        let pair = KeyPair {
            key: key.clone(),
            cert: cert.clone(),
        };
        let host = |keypair: Vec<KeyPair>| {
            Hosts::new(config(&[(
                "r.example",
                HostConfig {
                    keypair,
                    ..Default::default()
                },
            )]))
        };
        let err = host(vec![pair.clone()]).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Config {
                    source: ConfigError::ParseKeyPair { .. },
                    ..
                }
            ),
            "{err:?}"
        );
        let missing = KeyPair {
            key: dir.path().join("absent.pem"),
            cert,
        };
        assert!(matches!(
            host(vec![missing]).unwrap_err(),
            Error::Config {
                source: ConfigError::ReadKeyPair { .. },
                ..
            }
        ));
        let err = host(vec![pair.clone(), pair]).unwrap_err();
        assert!(matches!(
            err,
            Error::Config {
                source: ConfigError::TooManyKeyPairs,
                ..
            }
        ));
    }

    #[test]
    fn upload_settings_default_and_override() {
        let hosts = Hosts::new(config(&[(
            "r.example",
            HostConfig {
                chunk_size: Some(1024),
                max_concurrent_uploads: Some(0),
                ..Default::default()
            },
        )]))
        .unwrap();
        assert_eq!(hosts.upload_settings("r.example"), (1024, 1));
        assert_eq!(
            hosts.upload_settings("other"),
            (DEFAULT_CHUNK_SIZE, DEFAULT_MAX_UPLOADS)
        );
    }

    #[test]
    fn host_config_deserialises_with_defaults() {
        let cfg: HostConfig = serde_json::from_str(r#"{"mirrors":["m:5000"]}"#).unwrap();
        assert_eq!(cfg.mirrors, ["m:5000"]);
        assert!(!cfg.http && !cfg.insecure && cfg.ca.is_empty());
    }
}
