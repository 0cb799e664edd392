use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;

use crate::error::{CredentialsError, Error, Result};

/// A secret for one registry host.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// Sent as HTTP basic auth, to the registry or to its token service.
    Basic { username: String, password: String },
    /// An OAuth2 refresh token (`identitytoken` in Docker's config.json), exchanged at the
    /// token service.
    IdentityToken { token: String },
}

// Keeps secrets out of logs and error reports.
impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
            Credential::IdentityToken { .. } => f
                .debug_struct("IdentityToken")
                .field("token", &"<redacted>")
                .finish(),
        }
    }
}

/// Where the client gets credentials; inject your own to use a keychain or a test fixture.
pub trait CredentialStore: Send + Sync {
    /// Credentials for `host`, a registry name as written in references (`docker.io`,
    /// `127.0.0.1:5000`) or a mirror host. Called on the async path, so it must not block long.
    fn get(&self, host: &str) -> Option<Credential>;
}

/// No credentials at all: every request is anonymous.
#[derive(Debug, Default, Clone, Copy)]
pub struct Anonymous;

impl CredentialStore for Anonymous {
    fn get(&self, _host: &str) -> Option<Credential> {
        None
    }
}

/// Fixed credentials per host; handy for tests and for callers that already hold secrets.
#[derive(Debug, Default, Clone)]
pub struct StaticCredentials(pub HashMap<String, Credential>);

impl CredentialStore for StaticCredentials {
    fn get(&self, host: &str) -> Option<Credential> {
        self.0.get(host).cloned()
    }
}

/// The `auths` section of Docker's `config.json`, read once when loaded.
#[derive(Debug, Default, Clone)]
pub struct DockerConfigCredentials {
    auths: HashMap<String, Credential>,
}

#[derive(Deserialize)]
struct ConfigFile {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
}

#[derive(Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

impl DockerConfigCredentials {
    /// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
    pub fn default_path() -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
            return Some(PathBuf::from(dir).join("config.json"));
        }
        std::env::var_os("HOME")
            .filter(|d| !d.is_empty())
            .map(|home| PathBuf::from(home).join(".docker").join("config.json"))
    }

    /// Loads the file at [`Self::default_path`]; a missing file means no credentials.
    pub fn load_default() -> Result<Self> {
        match Self::default_path() {
            Some(path) if path.exists() => Self::from_path(&path),
            _ => Ok(Self::default()),
        }
    }

    pub fn from_path(path: &Path) -> Result<Self> {
        let err = |source| Error::Credentials {
            path: path.to_path_buf(),
            source,
        };
        let bytes = fs_err::read(path).map_err(|e| err(e.into()))?;
        Self::from_json(&bytes).map_err(err)
    }

    fn from_json(bytes: &[u8]) -> std::result::Result<Self, CredentialsError> {
        let file: ConfigFile = serde_json::from_slice(bytes)?;
        let mut auths = HashMap::new();
        for (key, entry) in file.auths {
            let host = normalize_key(&key);
            let credential = if let Some(token) = entry.identitytoken.filter(|t| !t.is_empty()) {
                Credential::IdentityToken { token }
            } else if let Some(auth) = entry.auth.filter(|a| !a.is_empty()) {
                decode_auth(&auth).ok_or_else(|| CredentialsError::Auth { host: key.clone() })?
            } else if let (Some(username), Some(password)) = (entry.username, entry.password) {
                Credential::Basic { username, password }
            } else {
                continue;
            };
            auths.insert(host, credential);
        }
        Ok(Self { auths })
    }
}

impl CredentialStore for DockerConfigCredentials {
    fn get(&self, host: &str) -> Option<Credential> {
        self.auths.get(&normalize_key(host)).cloned()
    }
}

/// Docker writes keys as URLs (`https://index.docker.io/v1/`) or bare hosts; compare hosts,
/// with Docker Hub's several names folded into `docker.io`.
fn normalize_key(key: &str) -> String {
    let host = key
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = host.split('/').next().unwrap_or(host);
    match host {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".to_string()
        }
        other => other.to_ascii_lowercase(),
    }
}

fn decode_auth(auth: &str) -> Option<Credential> {
    let raw = STANDARD.decode(auth.trim()).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (username, password) = text.split_once(':')?;
    Some(Credential::Basic {
        username: username.to_string(),
        password: password.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_auths_identity_tokens_and_hub_aliases() {
        let json = format!(
            r#"{{"auths":{{
                "https://index.docker.io/v1/":{{"auth":"{}"}},
                "127.0.0.1:5000":{{"auth":"{}","identitytoken":"refresh-me"}},
                "ghcr.io":{{}}
            }},"credsStore":"desktop"}}"#,
            STANDARD.encode("alice:s3cr:et"),
            STANDARD.encode("bob:pw"),
        );
        let creds = DockerConfigCredentials::from_json(json.as_bytes()).unwrap();
        assert_eq!(
            creds.get("docker.io"),
            Some(Credential::Basic {
                username: "alice".into(),
                password: "s3cr:et".into()
            })
        );
        assert_eq!(
            creds.get("127.0.0.1:5000"),
            Some(Credential::IdentityToken {
                token: "refresh-me".into()
            })
        );
        assert_eq!(creds.get("ghcr.io"), None);
        assert_eq!(creds.get("quay.io"), None);
    }

    #[test]
    fn bad_auth_field_names_the_host() {
        let err =
            DockerConfigCredentials::from_json(br#"{"auths":{"r.io":{"auth":"bm9jb2xvbg=="}}}"#)
                .unwrap_err();
        assert_eq!(
            err.to_string(),
            "`auths.r.io.auth` is not base64 `user:password`"
        );
    }

    #[test]
    fn from_path_reads_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(
            &path,
            format!(
                r#"{{"auths":{{"r.io":{{"auth":"{}"}}}}}}"#,
                STANDARD.encode("u:p")
            ),
        )
        .unwrap();
        let creds = DockerConfigCredentials::from_path(&path).unwrap();
        assert!(matches!(creds.get("r.io"), Some(Credential::Basic { .. })));
        let missing = DockerConfigCredentials::from_path(&dir.path().join("nope.json"));
        assert!(matches!(missing, Err(Error::Credentials { .. })));
    }

    #[test]
    fn debug_hides_secrets() {
        let c = Credential::Basic {
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
