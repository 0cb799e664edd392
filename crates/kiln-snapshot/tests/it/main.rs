//! Integration tests against the real filesystem, overlayfs and GNU tar (we run as root).

mod common;
mod hostile;
mod overlay;
mod roundtrip;
