//! Environment variables this crate reads, in one place.

/// Path (or name to look up on `PATH`) of the runc binary to use.
pub(crate) const RUNC: &str = "KILN_RUNC";
