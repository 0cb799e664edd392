//! Every environment variable kiln reads, in one place.

use std::path::{Path, PathBuf};

/// The data directory when nothing names one.
pub const DEFAULT_ROOT: &str = "/var/lib/kiln";

/// `--root`, else `KILN_ROOT`, else /var/lib/kiln (without the config's `root`: see
/// [`root_and_config`]).
pub fn data_root(flag: Option<&Path>) -> PathBuf {
    root_flag(flag).unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT))
}

fn root_flag(flag: Option<&Path>) -> Option<PathBuf> {
    flag.map(Path::to_path_buf)
        .or_else(|| std::env::var_os("KILN_ROOT").map(PathBuf::from))
}

/// The config file and the data directory: `--root`, else `KILN_ROOT`, else the config's
/// `root`, else /var/lib/kiln. The config itself is found as [`config_path`] says, its
/// default location under the root named by flag or environment (or the default root).
pub fn root_and_config(
    root: Option<&Path>,
    config: Option<&Path>,
) -> anyhow::Result<(PathBuf, kiln_engine::Config)> {
    let named = root_flag(root);
    let lookup = named.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT));
    let (path, required) = config_path(config, &lookup);
    let config = kiln_engine::Config::load(&path, required)?;
    let root = named
        .or_else(|| config.root.clone())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT));
    Ok((root, config))
}

/// `--config` or `KILN_CONFIG` (must exist), else `<root>/kiln.toml` (optional).
pub fn config_path(flag: Option<&Path>, root: &Path) -> (PathBuf, bool) {
    match flag
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("KILN_CONFIG").map(PathBuf::from))
    {
        Some(p) => (p, true),
        None => (root.join("kiln.toml"), false),
    }
}

/// `SOURCE_DATE_EPOCH`, the reproducible-builds convention for the time written into images.
pub fn source_date_epoch() -> Option<i64> {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse().ok())
}
