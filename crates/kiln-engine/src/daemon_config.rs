//! buildkitd.toml's daemon keys: `root`, `debug`, `[grpc]`, `[grpc.tls]`, `[history]`, and
//! `[worker.oci]`'s `platforms` (docs/config.md). kilnd serves on `[grpc]`; the embedded mode
//! reads the rest. Checks are made while deserializing so an error keeps the key's line.

use std::path::PathBuf;
use std::time::Duration;

use kiln_oci::Platform;
use serde::{Deserialize, Deserializer};

use crate::gc_config::GoDuration;

/// `[grpc]`: where kilnd listens (`unix:///run/kiln/kilnd.sock`, `tcp://0.0.0.0:1234`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcConfig {
    #[serde(default)]
    pub address: Vec<String>,
    /// `[grpc.tls]`: mutual TLS on TCP addresses.
    #[serde(default)]
    pub tls: Option<GrpcTls>,
}

/// `[grpc.tls]`: the server's certificate and key, and the CA client certificates must chain to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcTls {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub ca: Option<PathBuf>,
}

/// BuildKit's build history defaults: two days, 50 records.
pub const HISTORY_MAX_AGE: Duration = Duration::from_secs(48 * 3600);
pub const HISTORY_MAX_ENTRIES: u64 = 50;

/// `[history]`. kiln keeps no build history yet, so only BuildKit's defaults are accepted: a
/// setting that would change nothing is fine, one that would is "not supported yet".
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HistoryConfig {
    #[serde(default, deserialize_with = "history_max_age")]
    pub max_age: Option<Duration>,
    #[serde(default, deserialize_with = "history_max_entries")]
    pub max_entries: Option<u64>,
}

fn history_max_age<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let GoDuration(age) = GoDuration::deserialize(d)?;
    match age {
        Some(a) if a != HISTORY_MAX_AGE => Err(serde::de::Error::custom(format!(
            "maxAge {}s: build history is not supported yet (only the default, {}s, is accepted)",
            a.as_secs(),
            HISTORY_MAX_AGE.as_secs()
        ))),
        a => Ok(a),
    }
}

fn history_max_entries<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let n = u64::deserialize(d)?;
    if n != HISTORY_MAX_ENTRIES {
        return Err(serde::de::Error::custom(format!(
            "maxEntries {n}: build history is not supported yet (only the default, {HISTORY_MAX_ENTRIES}, is accepted)"
        )));
    }
    Ok(Some(n))
}

/// `debug = true` asks for debug logs, which kiln does not write yet.
pub(crate) fn debug<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    let on = bool::deserialize(d)?;
    if on {
        return Err(serde::de::Error::custom(
            "debug = true: debug logging is not supported yet",
        ));
    }
    Ok(on)
}

/// `[worker.oci] platforms`: each one parsed, so a typo is refused at its line.
pub(crate) fn platforms<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<Platform>>, D::Error> {
    let names = Vec::<String>::deserialize(d)?;
    let mut out: Vec<Platform> = Vec::new();
    for n in &names {
        let p: Platform = n.parse().map_err(serde::de::Error::custom)?;
        if !out.contains(&p) {
            out.push(p);
        }
    }
    if out.is_empty() {
        return Err(serde::de::Error::custom(
            "platforms is empty: list at least one, or leave it unset to detect them",
        ));
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;
    use crate::Config;

    /// The whole error as the CLI prints it: the file, then toml's line and key.
    fn load_error(text: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kiln.toml");
        std::fs::write(&path, text).unwrap();
        let e = Config::load(&path, true).unwrap_err();
        let mut out = e.to_string();
        let mut cause = e.source();
        while let Some(c) = cause {
            out.push_str(&format!("\n{c}"));
            cause = c.source();
        }
        out
    }

    #[test]
    fn root_and_debug() {
        let c = Config::parse("root = \"/data/kiln\"\ndebug = false\n").unwrap();
        assert_eq!(c.root, Some(PathBuf::from("/data/kiln")));
        assert!(!c.debug);
        assert_eq!(Config::parse("").unwrap().root, None);
        let e = load_error("root = \"/x\"\ndebug = true\n");
        assert!(e.contains("kiln.toml") && e.contains("line 2"), "{e}");
        assert!(e.contains("debug logging is not supported yet"), "{e}");
        let e = load_error("root = 3\n");
        assert!(e.contains("line 1") && e.contains("root"), "{e}");
    }

    #[test]
    fn grpc_addresses_and_tls() {
        let c = Config::parse(
            "[grpc]\naddress = [\"unix:///run/kiln/kilnd.sock\", \"tcp://0.0.0.0:1234\"]\n\
             [grpc.tls]\ncert = \"/etc/kiln/tls.crt\"\nkey = \"/etc/kiln/tls.key\"\nca = \"/etc/kiln/ca.crt\"\n",
        )
        .unwrap();
        assert_eq!(
            c.grpc.address,
            ["unix:///run/kiln/kilnd.sock", "tcp://0.0.0.0:1234"]
        );
        let tls = c.grpc.tls.unwrap();
        assert_eq!(tls.cert, Some(PathBuf::from("/etc/kiln/tls.crt")));
        assert_eq!(tls.key, Some(PathBuf::from("/etc/kiln/tls.key")));
        assert_eq!(tls.ca, Some(PathBuf::from("/etc/kiln/ca.crt")));
        assert_eq!(Config::parse("").unwrap().grpc, GrpcConfig::default());
        let e = load_error("[grpc]\naddress = [\"tcp://x:1\"]\n\n[grpc.tls]\ncrt = \"/a\"\n");
        assert!(e.contains("line 5") && e.contains("crt"), "{e}");
        let e = load_error("[grpc]\naddress = \"tcp://x:1\"\n");
        assert!(e.contains("line 2") && e.contains("address"), "{e}");
    }

    #[test]
    fn history_accepts_only_buildkits_defaults() {
        let c = Config::parse("[history]\nmaxAge = 172800\nmaxEntries = 50\n").unwrap();
        assert_eq!(c.history.max_age, Some(HISTORY_MAX_AGE));
        assert_eq!(c.history.max_entries, Some(50));
        assert!(Config::parse("[history]\nmaxAge = \"48h\"\n").is_ok());
        let e = load_error("[history]\nmaxAge = 3600\n");
        assert!(
            e.contains("line 2") && e.contains("maxAge 3600s") && e.contains("not supported yet"),
            "{e}"
        );
        let e = load_error("[history]\nmaxEntries = 10\n");
        assert!(
            e.contains("maxEntries 10") && e.contains("not supported yet"),
            "{e}"
        );
        let e = load_error("[history]\nmaxentries = 50\n");
        assert!(e.contains("line 2") && e.contains("maxentries"), "{e}");
    }

    #[test]
    fn worker_platforms_and_max_parallelism() {
        let c = Config::parse(
            "[worker.oci]\nplatforms = [\"linux/arm64\", \"linux/amd64\", \"linux/arm64/v8\"]\nmax-parallelism = 4\n",
        )
        .unwrap();
        let names: Vec<String> = c
            .worker
            .oci
            .platforms
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            names,
            ["linux/arm64", "linux/amd64"],
            "normalised, deduplicated"
        );
        assert_eq!(c.worker.oci.max_parallelism, Some(4));
        let e = load_error("[worker.oci]\ngc = true\nplatforms = [\"linux\"]\n");
        assert!(
            e.contains("line 3") && e.contains("invalid platform `linux`"),
            "{e}"
        );
        let e = load_error("[worker.oci]\nplatforms = []\n");
        assert!(e.contains("platforms is empty"), "{e}");
        let e = load_error("[worker.oci]\nmax-parallelism = -1\n");
        assert!(e.contains("line 2") && e.contains("max-parallelism"), "{e}");
        let e = load_error("[worker.oci]\nmaxParallelism = 2\n");
        assert!(e.contains("line 2") && e.contains("maxParallelism"), "{e}");
    }

    #[test]
    fn unknown_keys_name_the_key_and_line_in_every_section() {
        for (text, line, key) in [
            ("bogus = 1\n", 1, "bogus"),
            ("[registry.\"r\"]\nmirors = []\n", 2, "mirors"),
            ("[cdi]\nspecdirs = []\n", 2, "specdirs"),
            ("[worker.oci]\ngcc = true\n", 2, "gcc"),
            ("[worker.containerd]\nenabled = true\n", 1, "containerd"),
            ("[[worker.oci.gcpolicy]]\nkeep = 1\n", 2, "keep"),
            ("[grpc]\nuid = 0\n", 2, "uid"),
        ] {
            let e = load_error(text);
            assert!(
                e.contains("kiln.toml") && e.contains(&format!("line {line}")) && e.contains(key),
                "{text:?}: {e}"
            );
        }
    }
}
