//! An OCI distribution client: resolves references to platform manifests, streams and verifies
//! blobs, pushes blobs and manifests, and handles registry auth, mirrors and retries.
//!
//! It knows the network and the distribution API only: blobs go to and come from caller-supplied
//! writers and files, so it never sees the content store, snapshots or builds.

mod auth;
mod client;
mod config;
mod cred_helper;
mod credentials;
mod error;
mod login;
mod pull;
mod push;

pub use client::{Client, RetryPolicy};
pub use config::{DEFAULT_CHUNK_SIZE, DEFAULT_MAX_UPLOADS, HostConfig, KeyPair, RegistryConfig};
pub use credentials::{
    Anonymous, Credential, CredentialStore, DockerConfigCredentials, StaticCredentials,
    remove_credential, save_credential, server_key,
};
pub use error::{
    Cause, ConfigError, CredentialsError, Error, HelperError, Mismatch, RegistryError,
    RegistryErrors, Result,
};
pub use pull::{RawManifest, Resolved};
pub use push::{BlobPush, MadeBlob};
