//! Where a build goes: the embedded engine, or a kilnd's address with its TLS files. The
//! shape is what the kilnd client takes, so a remote build is one call away.

use std::path::PathBuf;

use kiln_oci::Platform;

use crate::{Builder, EMBEDDED, Error, Node, Result, Store};

/// The client side of mutual TLS, from the node's `--driver-opt`s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub servername: Option<String>,
}

/// A kilnd: `unix:///path` or `tcp://host:port`, and TLS when the node has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub address: String,
    pub tls: Option<TlsFiles>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Embedded,
    Remote(Endpoint),
}

impl Node {
    pub fn endpoint(&self) -> Endpoint {
        let opt = |k: &str| {
            self.driver_opts
                .as_ref()
                .and_then(|o| o.get(k))
                .filter(|v| !v.is_empty())
                .cloned()
        };
        Endpoint {
            address: self.endpoint.clone(),
            // `create` refused TLS options without the CA.
            tls: opt("cacert").map(|ca| TlsFiles {
                ca: ca.into(),
                cert: opt("cert").map(Into::into),
                key: opt("key").map(Into::into),
                servername: opt("servername"),
            }),
        }
    }

    /// Does this node take a build for `platforms`? A node without fixed platforms takes any.
    fn serves(&self, platforms: &[Platform]) -> bool {
        match &self.platforms {
            None => true,
            Some(fixed) => platforms
                .iter()
                .all(|want| fixed.iter().any(|p| want.matches(p))),
        }
    }
}

impl Builder {
    /// Where a build for `platforms` runs: the first node that fixed them all, else the first
    /// node with no fixed platforms, else the first node (also when none are asked for).
    pub fn target(&self, platforms: &[Platform]) -> Result<Target> {
        if self.driver == EMBEDDED {
            return Ok(Target::Embedded);
        }
        let fixed =
            |n: &&Node| !platforms.is_empty() && n.platforms.is_some() && n.serves(platforms);
        let node = self
            .nodes
            .iter()
            .find(fixed)
            .or_else(|| self.nodes.iter().find(|n| n.platforms.is_none()))
            .or_else(|| self.nodes.first())
            .ok_or_else(|| Error::Invalid(format!("builder \"{}\" has no nodes", self.name)))?;
        Ok(Target::Remote(node.endpoint()))
    }
}

impl Store {
    /// The builder a command uses: `name` (`--builder`, `KILN_BUILDER`), else the current one.
    pub fn resolve(&self, name: Option<&str>) -> Result<Builder> {
        match name {
            Some(n) => self.require(n),
            None => self.require(&self.current()?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CreateRequest;

    #[test]
    fn resolves_to_the_node_for_the_platforms() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::new(dir.path());
        assert_eq!(
            s.resolve(None).unwrap().target(&[]).unwrap(),
            Target::Embedded
        );
        s.create(CreateRequest {
            name: Some("r".into()),
            endpoint: Some("tcp://10.0.0.1:1234".into()),
            driver_opts: vec!["cacert=/ca.pem,cert=/c.pem,key=/k.pem,servername=kilnd".into()],
            ..Default::default()
        })
        .unwrap();
        s.create(CreateRequest {
            name: Some("r".into()),
            append: true,
            endpoint: Some("unix:///run/arm.sock".into()),
            platforms: vec!["linux/arm64".into()],
            ..Default::default()
        })
        .unwrap();
        let r = s.resolve(Some("r")).unwrap();
        let arm: Platform = "linux/arm64".parse().unwrap();
        assert_eq!(
            r.target(std::slice::from_ref(&arm)).unwrap(),
            Target::Remote(Endpoint {
                address: "unix:///run/arm.sock".into(),
                tls: None
            })
        );
        assert_eq!(
            r.target(&[]).unwrap(),
            Target::Remote(Endpoint {
                address: "tcp://10.0.0.1:1234".into(),
                tls: Some(TlsFiles {
                    ca: "/ca.pem".into(),
                    cert: Some("/c.pem".into()),
                    key: Some("/k.pem".into()),
                    servername: Some("kilnd".into()),
                })
            })
        );
        assert_eq!(
            s.resolve(Some("zz")).unwrap_err().to_string(),
            "no builder \"zz\" found"
        );
    }
}
