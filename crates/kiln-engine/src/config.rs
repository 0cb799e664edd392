//! The config file, shaped like buildkitd.toml (see docs/config.md):
//!
//! ```toml
//! [registry."docker.io"]
//! mirrors = ["127.0.0.1:5001"]
//!
//! [registry."127.0.0.1:5001"]
//! http = true
//! ```

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use kiln_registry::{Anonymous, CredentialStore, DockerConfigCredentials, RegistryConfig};
use serde::Deserialize;

use crate::{Entitlement, Error, Result};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub registry: RegistryConfig,
    /// Entitlements builds may ask for with `--allow`, as buildkitd.toml's key. Unset: all of
    /// them, since kiln has no daemon and whoever runs it already runs it as root.
    #[serde(default, rename = "insecure-entitlements")]
    pub insecure_entitlements: Option<Vec<String>>,
    /// kiln's own: `false` makes COPY from the context create its files in the step's overlay
    /// and diff them, as other steps do, instead of streaming its layer from the context.
    #[serde(default, rename = "copy-stream")]
    pub copy_stream: Option<bool>,
    /// The address `--add-host NAME:host-gateway` maps to, as dockerd's `host-gateway-ip`.
    /// kiln has no bridge to derive it from: without it, `host-gateway` is an error.
    #[serde(default, rename = "host-gateway-ip")]
    pub host_gateway_ip: Option<std::net::IpAddr>,
    /// kiln's own: the most bytes a URL build context (or `-f URL`) may download; larger ones
    /// fail. Unset: [`REMOTE_CONTEXT_MAX_BYTES`].
    #[serde(default, rename = "remote-context-max-bytes")]
    pub remote_context_max_bytes: Option<u64>,
    /// CDI devices for `RUN --device`, as buildkitd.toml's `[cdi]`.
    #[serde(default)]
    pub cdi: CdiConfig,
    /// `[worker.oci]`: garbage collection (`gc`, `gcpolicy`...), as buildkitd.toml's.
    #[serde(default)]
    pub worker: crate::gc_config::WorkerConfig,
    /// `[grpc]`: where kilnd listens, as buildkitd.toml's; the embedded mode ignores it.
    #[serde(default)]
    pub grpc: GrpcConfig,
}

/// `[grpc]` and `[grpc.tls]` (docs/config.md, docs/kilnd.md).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcConfig {
    /// `unix:///path` or `tcp://host:port`, each listened on.
    #[serde(default)]
    pub address: Vec<String>,
    #[serde(default)]
    pub tls: Option<GrpcTlsConfig>,
}

/// The daemon's certificate and key, and the CA its clients' certificates must chain to.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcTlsConfig {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    pub ca: std::path::PathBuf,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CdiConfig {
    /// No devices at all: every `RUN --device` is unregistered.
    #[serde(default)]
    pub disabled: bool,
    /// Where specs are read; [`kiln_worker::cdi::SPEC_DIRS`] when unset.
    #[serde(default)]
    pub spec_dirs: Option<Vec<std::path::PathBuf>>,
    /// Kinds or device names that need no `--allow device`.
    #[serde(default)]
    pub auto_allowed: Vec<String>,
}

/// The default download cap of a URL context: 1 GiB.
pub const REMOTE_CONTEXT_MAX_BYTES: u64 = 1 << 30;

impl Config {
    /// Reads a config file; a missing file is an error only when `required`.
    pub fn load(path: &Path, required: bool) -> Result<Config> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(Config::default());
            }
            Err(e) => {
                return Err(Error::Config {
                    path: path.to_path_buf(),
                    source: Box::new(e),
                });
            }
        };
        Self::parse(&text).map_err(|source| Error::Config {
            path: path.to_path_buf(),
            source,
        })
    }

    pub fn parse(text: &str) -> std::result::Result<Config, crate::BoxError> {
        let config: Config = toml::from_str(text)?;
        for name in config.insecure_entitlements.iter().flatten() {
            name.parse::<Entitlement>()?;
        }
        Ok(config)
    }

    /// The entitlements builds may be granted; unknown names were refused by `parse`.
    pub(crate) fn insecure_entitlements(&self) -> BTreeSet<Entitlement> {
        match &self.insecure_entitlements {
            None => Entitlement::ALL.into_iter().collect(),
            Some(names) => names.iter().filter_map(|n| n.parse().ok()).collect(),
        }
    }

    /// Docker's credentials (`~/.docker/config.json`) when present, so `docker login` works.
    pub(crate) fn credentials(&self) -> Arc<dyn CredentialStore> {
        match DockerConfigCredentials::load_default() {
            Ok(c) => Arc::new(c),
            Err(_) => Arc::new(Anonymous),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mirrors_and_http() {
        let c = Config::parse(
            "[registry.\"docker.io\"]\nmirrors = [\"127.0.0.1:5001\"]\n[registry.\"127.0.0.1:5001\"]\nhttp = true\n",
        )
        .unwrap();
        assert_eq!(c.registry["docker.io"].mirrors, vec!["127.0.0.1:5001"]);
        assert!(c.registry["127.0.0.1:5001"].http);
        assert!(
            Config::parse("[registri]\n").is_err(),
            "unknown sections are refused"
        );
    }

    #[test]
    fn insecure_entitlements_default_to_all_and_are_checked() {
        let all = Config::parse("").unwrap().insecure_entitlements();
        assert_eq!(all.len(), Entitlement::ALL.len());
        let c = Config::parse("insecure-entitlements = [\"network.host\"]\n").unwrap();
        assert_eq!(
            c.insecure_entitlements().into_iter().collect::<Vec<_>>(),
            [Entitlement::NetworkHost]
        );
        assert!(Config::parse("insecure-entitlements = [\"device\"]\n").is_ok());
        assert!(Config::parse("insecure-entitlements = [\"network.none\"]\n").is_err());
    }

    #[test]
    fn parses_tls_keypairs_and_upload_settings_as_buildkitd_toml_writes_them() {
        let c = Config::parse(
            r#"
[registry."r.example:5000"]
insecure = true
ca = ["/etc/kiln/ca.pem"]
chunk_size = 1048576
max_concurrent_uploads = 8

[[registry."r.example:5000".keypair]]
key = "/etc/kiln/client.key"
cert = "/etc/kiln/client.pem"
"#,
        )
        .unwrap();
        let host = &c.registry["r.example:5000"];
        assert!(host.insecure);
        assert_eq!(host.ca, [std::path::PathBuf::from("/etc/kiln/ca.pem")]);
        assert_eq!(host.keypair.len(), 1);
        assert_eq!(
            host.keypair[0].cert,
            std::path::Path::new("/etc/kiln/client.pem")
        );
        assert_eq!(host.chunk_size, Some(1 << 20));
        assert_eq!(host.max_concurrent_uploads, Some(8));
        assert!(
            Config::parse("[[registry.\"r\".keypair]]\nkey = \"k\"\n").is_err(),
            "a key pair needs both files"
        );
    }
}
