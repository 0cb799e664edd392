//! The corpus' base images as the local registry serves them: their layers' diff_ids become
//! labels (`base:busybox:latest`), so a recording made where the seeded busybox is one build
//! of busybox compares where it is another.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// The bases cases may use (repository, tag), seeded by scripts/setup.sh.
pub const BASES: &[(&str, &str)] = &[
    ("library/busybox", "latest"),
    ("library/busybox", "bare"),
    ("library/busybox", "users"),
    // busybox:multi's two images, tagged apart by setup.sh.
    ("library/busybox", "multi-amd64"),
    ("library/busybox", "multi-arm64"),
];

/// One base image: what its label is, its layers and how many history entries it has.
#[derive(Debug, Clone)]
pub struct BaseImage {
    /// `busybox:latest`
    pub name: String,
    pub diff_ids: Vec<String>,
    pub history_len: usize,
}

#[derive(Debug, Clone, Default)]
pub struct Bases {
    images: Vec<BaseImage>,
    labels: HashMap<String, String>,
}

impl Bases {
    pub fn new(images: Vec<BaseImage>) -> Bases {
        let mut labels = HashMap::new();
        for image in &images {
            for (i, d) in image.diff_ids.iter().enumerate() {
                let label = if image.diff_ids.len() == 1 {
                    format!("base:{}", image.name)
                } else {
                    format!("base:{}#{i}", image.name)
                };
                labels.entry(d.clone()).or_insert(label);
            }
        }
        Bases { images, labels }
    }

    /// Asks the registry at `addr` (plain HTTP) for each of [`BASES`].
    pub fn from_registry(addr: &str) -> Result<Bases> {
        let mut images = Vec::new();
        for (repo, tag) in BASES {
            images.push(
                fetch_base(addr, repo, tag)
                    .with_context(|| format!("reading the base `{repo}:{tag}` from {addr}"))?,
            );
        }
        Ok(Bases::new(images))
    }

    /// The label of a layer, when it is a base's.
    pub fn label(&self, diff_id: &str) -> Option<&str> {
        self.labels.get(diff_id).map(String::as_str)
    }

    /// The base an image with these diff_ids starts from: the longest whose layers are its
    /// leading layers.
    pub fn base_of(&self, diff_ids: &[String]) -> Option<&BaseImage> {
        self.images
            .iter()
            .filter(|b| !b.diff_ids.is_empty() && diff_ids.starts_with(&b.diff_ids))
            .max_by_key(|b| b.diff_ids.len())
    }
}

const MANIFEST_TYPES: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";

fn fetch_base(addr: &str, repo: &str, tag: &str) -> Result<BaseImage> {
    let mut manifest: Value =
        serde_json::from_slice(&get(addr, &format!("/v2/{repo}/manifests/{tag}"))?)?;
    if let Some(list) = manifest.get("manifests").and_then(Value::as_array) {
        let chosen = list
            .iter()
            .find(|m| {
                m.pointer("/platform/os").and_then(Value::as_str) == Some("linux")
                    && m.pointer("/platform/architecture").and_then(Value::as_str)
                        == Some(super::host_architecture())
            })
            .or_else(|| list.first())
            .context("an empty manifest list")?;
        let digest = chosen["digest"]
            .as_str()
            .context("a manifest without digest")?;
        manifest = serde_json::from_slice(&get(addr, &format!("/v2/{repo}/manifests/{digest}"))?)?;
    }
    let config_digest = manifest
        .pointer("/config/digest")
        .and_then(Value::as_str)
        .context("a manifest without config")?;
    let config: Value =
        serde_json::from_slice(&get(addr, &format!("/v2/{repo}/blobs/{config_digest}"))?)?;
    let diff_ids = diff_ids(&config);
    let history_len = config
        .get("history")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    Ok(BaseImage {
        name: format!("{}:{tag}", repo.trim_start_matches("library/")),
        diff_ids,
        history_len,
    })
}

/// A plain HTTP/1.0 GET on loopback; the body of a 200 answer.
/// An image config's `rootfs.diff_ids`.
pub(super) fn diff_ids(config: &Value) -> Vec<String> {
    config
        .pointer("/rootfs/diff_ids")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|d| d.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn get(addr: &str, path: &str) -> Result<Vec<u8>> {
    let timeout = Duration::from_secs(20);
    let sock = addr.parse().with_context(|| format!("address `{addr}`"))?;
    let mut stream = TcpStream::connect_timeout(&sock, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: {MANIFEST_TYPES}\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("an HTTP answer without headers")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        bail!("GET {path}: {}", head.lines().next().unwrap_or(""));
    }
    Ok(raw[split + 4..].to_vec())
}
