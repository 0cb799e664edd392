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

/// `--builder`, else `KILN_BUILDER` (an empty one is unset, as buildx reads `BUILDX_BUILDER`).
pub fn builder_name(flag: Option<&str>) -> Option<String> {
    flag.map(str::to_string)
        .or_else(|| std::env::var("KILN_BUILDER").ok())
        .filter(|n| !n.is_empty())
}

/// Where builders are stored: `KILN_BUILDER_CONFIG_DIR`, else `~/.kiln/buildx` (buildx's
/// layout under kiln's own directory, so kiln and docker never see each other's builders).
pub fn builder_config_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KILN_BUILDER_CONFIG_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".kiln").join("buildx")
}

/// `SOURCE_DATE_EPOCH`, the reproducible-builds convention for the time written into images.
pub fn source_date_epoch() -> Option<i64> {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse().ok())
}
