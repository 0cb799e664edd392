//! Every environment variable kiln reads, in one place.

use std::path::{Path, PathBuf};

/// `--root`, else `KILN_ROOT`, else /var/lib/kiln.
pub fn data_root(flag: Option<&Path>) -> PathBuf {
    flag.map(Path::to_path_buf)
        .or_else(|| std::env::var_os("KILN_ROOT").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/var/lib/kiln"))
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
