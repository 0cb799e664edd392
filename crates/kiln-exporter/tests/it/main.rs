//! Integration tests: images built by hand into a temp content store, then named, exported and
//! checked (and loaded into a private dockerd when one is installed).

mod docker;
mod docker_load;
mod oci;
mod store;
mod support;
