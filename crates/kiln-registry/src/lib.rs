//! An OCI distribution client: resolves references to platform manifests, streams and verifies
//! blobs, pushes blobs and manifests, and handles registry auth, mirrors and retries.
//!
//! It knows the network and the distribution API only: blobs go to and come from caller-supplied
//! writers and files, so it never sees the content store, snapshots or builds.

mod auth;
mod client;
mod config;
mod credentials;
mod error;
mod pull;
mod push;

pub use client::{Client, RetryPolicy};
pub use config::{HostConfig, RegistryConfig};
pub use credentials::{
    Anonymous, Credential, CredentialStore, DockerConfigCredentials, StaticCredentials,
};
pub use error::{
    Cause, ConfigError, CredentialsError, Error, Mismatch, RegistryError, RegistryErrors, Result,
};
pub use pull::{RawManifest, Resolved};
