use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;

use crate::cred_helper::Helper;
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

/// Docker's `config.json`: `auths`, and the `credsStore` / `credHelpers` credential helpers,
/// read once when loaded. Helpers are asked on first use of a host and their answers kept.
#[derive(Debug, Default)]
pub struct DockerConfigCredentials {
    auths: HashMap<String, Credential>,
    creds_store: Option<String>,
    /// Normalised host → helper name.
    cred_helpers: HashMap<String, String>,
    asked: Mutex<HashMap<String, Option<Credential>>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConfigFile {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
    #[serde(default)]
    creds_store: Option<String>,
    #[serde(default)]
    cred_helpers: HashMap<String, String>,
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
        Ok(Self {
            auths,
            creds_store: file.creds_store.filter(|s| !s.is_empty()),
            cred_helpers: file
                .cred_helpers
                .into_iter()
                .filter(|(_, helper)| !helper.is_empty())
                .map(|(host, helper)| (normalize_key(&host), helper))
                .collect(),
            asked: Mutex::default(),
        })
    }

    /// The helper Docker would use for `host`: its `credHelpers` entry, else `credsStore`.
    fn helper_for(&self, host: &str) -> Option<&str> {
        self.cred_helpers
            .get(host)
            .or(self.creds_store.as_ref())
            .map(String::as_str)
    }
}

impl CredentialStore for DockerConfigCredentials {
    fn get(&self, host: &str) -> Option<Credential> {
        let host = normalize_key(host);
        if let Some(helper) = self.helper_for(&host) {
            let mut asked = self.asked.lock().unwrap_or_else(|e| e.into_inner());
            let answer = asked.entry(host.clone()).or_insert_with(|| {
                // As docker does, a failing helper means no credentials, not a failed pull.
                Helper::new(helper)
                    .get(&server_key(&host))
                    .unwrap_or_else(|e| {
                        tracing::warn!(%host, error = %crate::error::chain(&e), "credential helper failed");
                        None
                    })
            });
            if answer.is_some() {
                return answer.clone();
            }
        }
        self.auths.get(&host).cloned()
    }
}

/// The key Docker stores a registry's credentials under: Docker Hub's v1 URL, else the host.
pub fn server_key(registry: &str) -> String {
    match normalize_key(registry).as_str() {
        "docker.io" => "https://index.docker.io/v1/".to_string(),
        _ => registry.to_string(),
    }
}

/// Saves `credential` for `registry` in the Docker config file at `path`, as `docker login`
/// does: through the credential helper when one is configured for the host (leaving an empty
/// `auths` entry), else base64 in `auths`. Other contents of the file are kept.
pub fn save_credential(path: &Path, registry: &str, credential: &Credential) -> Result<()> {
    let err = |source| Error::SaveCredentials {
        host: registry.to_string(),
        path: path.to_path_buf(),
        source,
    };
    let mut doc = read_document(path).map_err(err)?;
    let key = server_key(registry);
    let current =
        DockerConfigCredentials::from_json(&serde_json::to_vec(&doc).map_err(|e| err(e.into()))?)
            .map_err(err)?;
    let entry = match current.helper_for(&normalize_key(registry)) {
        Some(helper) => {
            Helper::new(helper).store(&key, credential).map_err(err)?;
            serde_json::json!({})
        }
        None => match credential {
            Credential::Basic { username, password } => {
                serde_json::json!({"auth": STANDARD.encode(format!("{username}:{password}"))})
            }
            Credential::IdentityToken { token } => serde_json::json!({"identitytoken": token}),
        },
    };
    let auths = doc
        .as_object_mut()
        .ok_or(CredentialsError::NotAnObject("config.json"))
        .map_err(err)?
        .entry("auths")
        .or_insert_with(|| serde_json::json!({}));
    let auths = auths
        .as_object_mut()
        .ok_or(CredentialsError::NotAnObject("auths"))
        .map_err(err)?;
    // Drop other spellings of the same host so the new entry is the one read back.
    auths.retain(|k, _| normalize_key(k) != normalize_key(registry));
    auths.insert(key, entry);
    write_document(path, &doc).map_err(err)
}

/// Removes `registry`'s credentials from the file at `path` and from its helper, as `docker
/// logout`. Returns whether the file had an entry for it.
pub fn remove_credential(path: &Path, registry: &str) -> Result<bool> {
    let err = |source| Error::SaveCredentials {
        host: registry.to_string(),
        path: path.to_path_buf(),
        source,
    };
    if !path.exists() {
        return Ok(false);
    }
    let mut doc = read_document(path).map_err(err)?;
    let current =
        DockerConfigCredentials::from_json(&serde_json::to_vec(&doc).map_err(|e| err(e.into()))?)
            .map_err(err)?;
    let host = normalize_key(registry);
    if let Some(helper) = current.helper_for(&host) {
        Helper::new(helper)
            .erase(&server_key(registry))
            .map_err(err)?;
    }
    let mut removed = false;
    if let Some(auths) = doc.get_mut("auths").and_then(|a| a.as_object_mut()) {
        let before = auths.len();
        auths.retain(|k, _| normalize_key(k) != host);
        removed = auths.len() != before;
    }
    if removed {
        write_document(path, &doc).map_err(err)?;
    }
    Ok(removed)
}

fn read_document(path: &Path) -> std::result::Result<serde_json::Value, CredentialsError> {
    match fs_err::read(path) {
        Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => Ok(serde_json::json!({})),
        Ok(bytes) => Ok(serde_json::from_slice(&bytes)?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(serde_json::json!({})),
        Err(e) => Err(e.into()),
    }
}

/// Writes through a temp file and a rename, owner-only, so a crash never leaves half a file
/// and other users never read the secrets.
fn write_document(
    path: &Path,
    doc: &serde_json::Value,
) -> std::result::Result<(), CredentialsError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let tmp = dir.join(format!(".config.json.tmp-{}", std::process::id()));
    let mut bytes = serde_json::to_vec_pretty(doc)?;
    bytes.push(b'\n');
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    std::io::Write::write_all(&mut file, &bytes)?;
    file.sync_all()?;
    fs_err::rename(&tmp, path)?;
    Ok(())
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
    fn save_and_remove_keep_the_rest_of_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("config.json");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(
            &path,
            r#"{"auths":{"http://R.example/v2/":{"auth":"eDp5"},"keep.io":{"auth":"eDp5"}},"psFormat":"table"}"#,
        )
        .unwrap();
        let cred = Credential::Basic {
            username: "u".into(),
            password: "p:w".into(),
        };
        save_credential(&path, "r.example", &cred).unwrap();
        save_credential(&path, "docker.io", &cred).unwrap();
        let doc: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(doc["psFormat"], "table");
        let keys: Vec<&String> = doc["auths"].as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            ["https://index.docker.io/v1/", "keep.io", "r.example"]
        );
        let creds = DockerConfigCredentials::from_path(&path).unwrap();
        assert_eq!(creds.get("r.example"), Some(cred.clone()));
        assert_eq!(creds.get("registry-1.docker.io"), Some(cred));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        assert!(remove_credential(&path, "r.example").unwrap());
        assert!(!remove_credential(&path, "r.example").unwrap());
        let creds = DockerConfigCredentials::from_path(&path).unwrap();
        assert_eq!(creds.get("r.example"), None);
        assert!(creds.get("keep.io").is_some());
        assert!(!remove_credential(&dir.path().join("absent.json"), "r.example").unwrap());
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
