//! Builders as buildx stores them, so the files read the same: `instances/NAME` (a JSON
//! builder with its nodes), `current` (which one `kiln build` uses), `defaults/` and
//! `activity/NAME` under one directory (docs/builders.md). The `default` builder is kiln's
//! embedded engine: it is never stored and always present.

mod create;
mod endpoint;
mod store;

pub use create::{CreateRequest, Created};
pub use endpoint::{Endpoint, Target, TlsFiles};
pub use store::Store;

use std::collections::BTreeMap;

use kiln_oci::Platform;
use serde::{Deserialize, Serialize};

/// The builder that is always there: the embedded engine.
pub const DEFAULT: &str = "default";
/// The engine in this process, on the data root (`--root`).
pub const EMBEDDED: &str = "embedded";
/// A kilnd reached at an address.
pub const REMOTE: &str = "remote";
/// The drivers `--driver` takes.
pub const DRIVERS: [&str; 2] = [EMBEDDED, REMOTE];

/// One builder, with buildx's field names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Builder {
    pub name: String,
    pub driver: String,
    pub nodes: Vec<Node>,
    #[serde(default)]
    pub dynamic: bool,
}

/// One node of a builder: where it runs and what it was told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Node {
    pub name: String,
    pub endpoint: String,
    /// Fixed with `--platform` (listed with `*`); `None`: what the node reports.
    #[serde(default)]
    pub platforms: Option<Vec<Platform>>,
    #[serde(default)]
    pub driver_opts: Option<BTreeMap<String, String>>,
    /// buildx's, kept as read so a file buildx wrote survives a rewrite by kiln.
    #[serde(default)]
    pub flags: Option<serde_json::Value>,
    #[serde(default)]
    pub files: Option<serde_json::Value>,
}

impl Builder {
    /// The `default` builder: the embedded engine, one node named as docker names its own.
    pub fn default_builder() -> Builder {
        Builder {
            name: DEFAULT.into(),
            driver: EMBEDDED.into(),
            nodes: vec![Node {
                name: DEFAULT.into(),
                endpoint: DEFAULT.into(),
                platforms: None,
                driver_opts: None,
                flags: None,
                files: None,
            }],
            dynamic: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Texts are buildx's where it has one.
    #[error("{0}")]
    Invalid(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{path}` is not a builder buildx or kiln wrote: {source}")]
    Corrupt {
        path: std::path::PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

/// buildx's rule for builder names.
pub fn validate_name(name: &str) -> Result<()> {
    let ok = name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !ok {
        return Err(Error::Invalid(format!(
            "invalid name {name}, name needs to start with a letter and may not contain symbols, except ._-"
        )));
    }
    Ok(())
}
