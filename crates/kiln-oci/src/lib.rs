//! OCI vocabulary shared by every kiln crate: digests, image references, platforms and media
//! types. The spec structs come from `oci-spec`; this crate adds the small pieces kiln needs on
//! top (hashing helpers, platform matching) and must not know about files, the network or builds.

mod digest;
mod image;
pub mod media_type;
mod platform;
mod reference;

pub use digest::{Sha256Writer, sha256, sha256_hex};
pub use image::{History, ImageConfig, RootFs, RunConfig};
pub use oci_spec::image::{
    Descriptor, Digest, ImageConfiguration, ImageIndex, ImageManifest, MediaType,
};
pub use platform::Platform;
pub use reference::Reference;

/// Re-export of the spec crate for the structs this crate does not name.
pub use oci_spec;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid platform `{0}`: expected os/arch[/variant]")]
    Platform(String),
    #[error("invalid digest `{0}`")]
    Digest(String),
    #[error("invalid reference format `{reference}`: {reason}")]
    Reference { reference: String, reason: String },
}

pub type Result<T> = std::result::Result<T, Error>;

/// Parses `sha256:<64 hex>` into a digest, refusing any other algorithm or length.
pub fn parse_digest(s: &str) -> Result<Digest> {
    let hex_part = s
        .strip_prefix("sha256:")
        .ok_or_else(|| Error::Digest(s.to_string()))?;
    if hex_part.len() != 64
        || !hex_part
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        return Err(Error::Digest(s.to_string()));
    }
    s.parse().map_err(|_| Error::Digest(s.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_digest_accepts_sha256_only() {
        let d = sha256(b"");
        assert_eq!(parse_digest(d.as_ref()).unwrap(), d);
        assert!(parse_digest("sha512:abcd").is_err());
        assert!(parse_digest("sha256:ABCD").is_err());
        assert!(parse_digest("sha256:../../etc/passwd").is_err());
    }

    #[test]
    fn reference_normalises_docker_hub_names() {
        let r: Reference = "python:3.11-slim".parse().unwrap();
        assert_eq!(r.registry(), "docker.io");
        assert_eq!(r.repository(), "library/python");
        assert_eq!(r.tag(), Some("3.11-slim"));
        let r: Reference = "hello-world-flask".parse().unwrap();
        assert_eq!(r.tag(), Some("latest"));
        let r: Reference = "127.0.0.1:5001/a/b:c".parse().unwrap();
        assert_eq!(r.registry(), "127.0.0.1:5001");
        assert_eq!(r.repository(), "a/b");
    }
}
