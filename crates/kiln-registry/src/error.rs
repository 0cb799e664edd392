use std::fmt;
use std::path::PathBuf;

use kiln_oci::Digest;
use serde::Deserialize;

/// What went wrong, named by the operation and the object it was about. The network-level reason
/// is the `#[source]`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid registry configuration for `{host}`")]
    Config {
        host: String,
        #[source]
        source: ConfigError,
    },
    #[error("failed to read registry credentials from `{path}`")]
    Credentials {
        path: PathBuf,
        #[source]
        source: CredentialsError,
    },
    #[error("failed to save registry credentials for `{host}` to `{path}`")]
    SaveCredentials {
        host: String,
        path: PathBuf,
        #[source]
        source: CredentialsError,
    },
    #[error("login to `{registry}` failed")]
    Login {
        registry: String,
        #[source]
        source: Box<Cause>,
    },
    #[error("failed to resolve `{reference}`")]
    Resolve {
        reference: String,
        #[source]
        source: Box<Cause>,
    },
    #[error("failed to fetch blob `{digest}` of `{reference}`")]
    FetchBlob {
        reference: String,
        digest: Digest,
        #[source]
        source: Box<Cause>,
    },
    /// The blob's bytes do not hash to (or are not as long as) its descriptor says; the caller
    /// must discard what was written.
    #[error("blob `{digest}` of `{reference}` does not match its descriptor")]
    DigestMismatch {
        reference: String,
        digest: Digest,
        #[source]
        source: Mismatch,
    },
    #[error("failed to write blob `{digest}` of `{reference}`")]
    WriteBlob {
        reference: String,
        digest: Digest,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to check for blob `{digest}` in `{reference}`")]
    BlobExists {
        reference: String,
        digest: Digest,
        #[source]
        source: Box<Cause>,
    },
    #[error("failed to push blob `{digest}` to `{reference}`")]
    PushBlob {
        reference: String,
        digest: Digest,
        #[source]
        source: Box<Cause>,
    },
    #[error("failed to push manifest to `{reference}`")]
    PushManifest {
        reference: String,
        #[source]
        source: Box<Cause>,
    },
}

impl Error {
    /// Is this (or its cause) content that did not match its digest or size?
    pub fn is_digest_mismatch(&self) -> bool {
        match self {
            Error::DigestMismatch { .. } => true,
            Error::Resolve { source, .. }
            | Error::FetchBlob { source, .. }
            | Error::PushBlob { source, .. }
            | Error::PushManifest { source, .. } => source.is_mismatch(),
            _ => false,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("mirror `{0}` must be a host[:port], without scheme or path")]
    Mirror(String),
    #[error("failed to read CA certificate `{path}`")]
    ReadCa {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid CA certificate `{path}`")]
    ParseCa {
        path: PathBuf,
        #[source]
        source: reqwest::Error,
    },
    #[error("failed to read the client key pair `{path}`")]
    ReadKeyPair {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid client key pair (cert `{cert}`, key `{key}`)")]
    ParseKeyPair {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: reqwest::Error,
    },
    #[error("more than one `keypair` per host is not supported yet")]
    TooManyKeyPairs,
    #[error("failed to build the HTTP client")]
    Client(#[source] reqwest::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("invalid JSON")]
    Json(#[from] serde_json::Error),
    #[error("`auths.{host}.auth` is not base64 `user:password`")]
    Auth { host: String },
    #[error("`{0}` is not a JSON object")]
    NotAnObject(&'static str),
    #[error("credential helper `{program}` failed")]
    Helper {
        program: String,
        #[source]
        source: HelperError,
    },
}

/// Why a `docker-credential-*` helper call failed.
#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    #[error("failed to run it")]
    Spawn(#[source] std::io::Error),
    #[error("it exited with {status}: {output}")]
    Exit {
        status: std::process::ExitStatus,
        output: String,
    },
    #[error("it printed invalid JSON")]
    Json(#[source] serde_json::Error),
}

/// Why a content check failed.
#[derive(Debug, thiserror::Error)]
pub enum Mismatch {
    #[error("expected {expected} bytes, got {actual}")]
    Size { expected: u64, actual: u64 },
    #[error("content hashes to `{actual}`")]
    Digest { actual: String },
    #[error("registry reported digest `{actual}`")]
    Header { actual: String },
}

/// The network- or protocol-level reason behind an [`Error`].
#[derive(Debug, thiserror::Error)]
pub enum Cause {
    #[error("{method} {url} returned {status}{errors}")]
    Status {
        method: String,
        url: String,
        status: reqwest::StatusCode,
        errors: RegistryErrors,
    },
    /// The registry has no manifest by that name: BuildKit's words, the HTTP answer as source.
    #[error("{reference}: not found")]
    NotFound {
        reference: String,
        #[source]
        source: Box<Cause>,
    },
    #[error("{method} {url} failed")]
    Transport {
        method: String,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("failed to read the response body of {url}")]
    Body {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("failed to get a token from `{realm}`")]
    Token {
        realm: String,
        #[source]
        source: Box<Cause>,
    },
    #[error("invalid response from {url}: {reason}")]
    InvalidResponse { url: String, reason: String },
    #[error("{url} requires authentication but no credentials are configured for `{host}`")]
    NoCredentials { url: String, host: String },
    #[error("plain HTTP to `{url}` is not allowed; set `http = true` for its host")]
    HttpNotAllowed { url: String },
    #[error("{object} `{digest}` does not match its descriptor")]
    Mismatch {
        object: &'static str,
        digest: String,
        #[source]
        source: Mismatch,
    },
    #[error("unsupported digest `{0}`: only sha256 is supported")]
    UnsupportedDigest(String),
    /// A client made with [`crate::Client::offline`] was asked to reach a registry.
    #[error(
        "{method} {url} not sent: the network is not used with --offline (pull the image \
         first, or build without --offline)"
    )]
    Offline { method: String, url: String },
    #[error("unsupported manifest media type `{0}`")]
    UnsupportedMediaType(String),
    #[error("{object} is {size} bytes, more than the {limit} byte limit")]
    TooLarge {
        object: &'static str,
        size: u64,
        limit: u64,
    },
    #[error("invalid {object} JSON")]
    Json {
        object: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// BuildKit's words first (containerd's), then what was asked for and what there is.
    #[error(
        "no match for platform in manifest: not found (wanted {platform}; the index has {available})"
    )]
    PlatformNotFound { platform: String, available: String },
    #[error("image indexes nested more than {0} deep")]
    IndexTooDeep(usize),
    /// The registry's failure, after every mirror failed first.
    #[error("all mirrors failed ({}), then the registry", mirrors.join("; "))]
    AfterMirrors {
        /// `host: reason` per mirror, in the order tried.
        mirrors: Vec<String>,
        #[source]
        source: Box<Cause>,
    },
    #[error("failed to read `{path}`")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A streamed body is consumed by its first request (an auth challenge asked for another).
    #[error("the streamed body of {url} cannot be sent twice")]
    StreamReplay { url: String },
}

impl Cause {
    fn is_mismatch(&self) -> bool {
        match self {
            Cause::Mismatch { .. } => true,
            Cause::AfterMirrors { source, .. } => source.is_mismatch(),
            _ => false,
        }
    }

    /// Folds the mirrors' failures into the registry's, so neither is lost.
    pub(crate) fn after_mirrors(self, mirrors: Vec<String>) -> Cause {
        if mirrors.is_empty() {
            self
        } else {
            Cause::AfterMirrors {
                mirrors,
                source: Box::new(self),
            }
        }
    }

    /// This cause and its sources on one line, for summarising a mirror's failure.
    pub(crate) fn one_line(&self) -> String {
        chain(self)
    }

    /// Worth another attempt: server errors, rate limits and broken connections.
    pub(crate) fn is_retryable(&self) -> bool {
        match self {
            Cause::Status { status, .. } => {
                status.is_server_error() || *status == reqwest::StatusCode::TOO_MANY_REQUESTS
            }
            // `is_request` covers connections reset or closed mid-exchange.
            Cause::Transport { source, .. } => {
                source.is_connect() || source.is_timeout() || source.is_request()
            }
            Cause::Body { source, .. } => source.is_body() || source.is_timeout(),
            _ => false,
        }
    }
}

/// An error and its sources on one line.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(e) = next {
        out.push_str(": ");
        out.push_str(&e.to_string());
        next = e.source();
    }
    out
}

/// The `errors` array of a distribution-spec error body; empty when the body was not one.
#[derive(Debug, Default, Deserialize)]
pub struct RegistryErrors {
    #[serde(default)]
    pub errors: Vec<RegistryError>,
}

#[derive(Debug, Deserialize)]
pub struct RegistryError {
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub message: String,
}

impl RegistryErrors {
    pub(crate) fn parse(body: &[u8]) -> Self {
        serde_json::from_slice(body).unwrap_or_default()
    }
}

impl fmt::Display for RegistryErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            f.write_str(if i == 0 { ": " } else { "; " })?;
            match (e.code.is_empty(), e.message.is_empty()) {
                (false, false) => write!(f, "{}: {}", e.code, e.message)?,
                (false, true) => f.write_str(&e.code)?,
                _ => f.write_str(&e.message)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_cause_shows_registry_errors() {
        let body = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{}},{"code":"DENIED","message":""}]}"#;
        let cause = Cause::Status {
            method: "GET".into(),
            url: "http://r/v2/a/manifests/b".into(),
            status: reqwest::StatusCode::NOT_FOUND,
            errors: RegistryErrors::parse(body),
        };
        assert_eq!(
            cause.to_string(),
            "GET http://r/v2/a/manifests/b returned 404 Not Found: MANIFEST_UNKNOWN: manifest unknown; DENIED"
        );
        assert!(!cause.is_retryable());
    }

    #[test]
    fn non_json_error_body_is_ignored() {
        assert!(
            RegistryErrors::parse(b"<html>bad gateway</html>")
                .errors
                .is_empty()
        );
        let cause = Cause::Status {
            method: "GET".into(),
            url: "u".into(),
            status: reqwest::StatusCode::BAD_GATEWAY,
            errors: RegistryErrors::parse(b"<html>"),
        };
        assert_eq!(cause.to_string(), "GET u returned 502 Bad Gateway");
        assert!(cause.is_retryable());
    }
}
