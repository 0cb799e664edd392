use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Error;

/// An os/arch/variant triple, normalised as BuildKit's platforms package does
/// (`arm64/v8` is `arm64`, `x86_64` is `amd64`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Self {
        let (architecture, variant) = normalize_arch(architecture, variant);
        Self {
            os: os.to_ascii_lowercase(),
            architecture,
            variant,
        }
    }

    /// The platform this process runs on.
    pub fn host() -> Self {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            other => other,
        };
        Self::new(std::env::consts::OS, arch, None)
    }

    /// Does an image built for `other` satisfy a request for `self`?
    pub fn matches(&self, other: &Platform) -> bool {
        let other = Platform::new(&other.os, &other.architecture, other.variant.as_deref());
        self.os == other.os
            && self.architecture == other.architecture
            && (self.variant.is_none() || self.variant == other.variant)
    }
}

fn normalize_arch(arch: &str, variant: Option<&str>) -> (String, Option<String>) {
    let arch = arch.to_ascii_lowercase();
    let variant = variant
        .filter(|v| !v.is_empty())
        .map(str::to_ascii_lowercase);
    match arch.as_str() {
        "x86_64" | "x86-64" | "amd64" => ("amd64".into(), variant.filter(|v| v != "v1")),
        "aarch64" | "arm64" => ("arm64".into(), variant.filter(|v| v != "v8")),
        "armhf" => ("arm".into(), Some("v7".into())),
        "armel" => ("arm".into(), Some("v6".into())),
        "arm" => ("arm".into(), Some(variant.unwrap_or_else(|| "v7".into()))),
        "i386" | "i686" => ("386".into(), variant),
        _ => (arch, variant),
    }
}

impl FromStr for Platform {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let parts: Vec<&str> = s.split('/').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(Error::Platform(s.into()));
        }
        match parts.as_slice() {
            [os, arch] => Ok(Self::new(os, arch, None)),
            [os, arch, variant] => Ok(Self::new(os, arch, Some(variant))),
            _ => Err(Error::Platform(s.into())),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_normalises() {
        let p: Platform = "linux/arm64/v8".parse().unwrap();
        assert_eq!(p.to_string(), "linux/arm64");
        let p: Platform = "linux/arm".parse().unwrap();
        assert_eq!(p.to_string(), "linux/arm/v7");
        assert!("linux".parse::<Platform>().is_err());
        assert!("linux//".parse::<Platform>().is_err());
    }

    #[test]
    fn variant_matching() {
        let want: Platform = "linux/arm/v7".parse().unwrap();
        assert!(want.matches(&"linux/arm/v7".parse().unwrap()));
        assert!(!want.matches(&"linux/arm/v6".parse().unwrap()));
        let any: Platform = "linux/amd64".parse().unwrap();
        assert!(any.matches(&Platform::new("linux", "x86_64", None)));
    }
}
