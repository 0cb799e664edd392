//! The canonical form of an image in an OCI archive: what both tools must agree on, without
//! what differs by design (digests, compression, the build's clock).

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::Bases;

/// File times before this (2024-01-01T00:00:00Z) are deterministic (the context's, a base's,
/// an epoch's) and recorded; later ones are the build's clock and left out.
pub const DETERMINISTIC_BEFORE: u64 = 1_704_067_200;

/// The image config's `config` fields that are compared.
const CONFIG_FIELDS: &[&str] = &[
    "User",
    "Env",
    "Entrypoint",
    "Cmd",
    "WorkingDir",
    "ExposedPorts",
    "Volumes",
    "Labels",
    "Healthcheck",
    "StopSignal",
    "Shell",
    "OnBuild",
    "ArgsEscaped",
];

/// The canonical JSON of the image in the OCI archive `archive` (`--output type=oci`). A
/// multi-platform image is `{"platforms": {"linux/amd64": IMAGE, ...}}`, each platform's image
/// in the canonical form of a single one.
pub fn canonicalize(archive: &Path, bases: &Bases) -> Result<Value> {
    let blobs = read_archive(archive)?;
    let index: Value = serde_json::from_slice(
        blobs
            .get("index.json")
            .context("the archive has no index.json")?,
    )
    .context("parsing index.json")?;
    match find_manifests(&blobs, &index)?.as_slice() {
        [(_, only)] => canonical_image(&blobs, only, bases),
        several => {
            let mut platforms = Map::new();
            for (platform, manifest) in several {
                let platform = platform
                    .clone()
                    .context("an index entry of a multi-platform image without a platform")?;
                let image = canonical_image(&blobs, manifest, bases)
                    .with_context(|| format!("the {platform} image"))?;
                ensure!(
                    platforms.insert(platform.clone(), image).is_none(),
                    "two images for {platform}"
                );
            }
            Ok(json!({ "platforms": platforms }))
        }
    }
}

/// The canonical JSON of one image manifest of the archive.
fn canonical_image(
    blobs: &HashMap<String, Vec<u8>>,
    manifest: &Value,
    bases: &Bases,
) -> Result<Value> {
    let config_digest = manifest
        .pointer("/config/digest")
        .and_then(Value::as_str)
        .context("the manifest has no config")?;
    let config: Value =
        serde_json::from_slice(blob(blobs, config_digest)?).context("parsing the image config")?;

    let mut out = Map::new();
    let mut cfg = Map::new();
    if let Some(inner) = config.get("config").and_then(Value::as_object) {
        for field in CONFIG_FIELDS {
            match inner.get(*field) {
                None | Some(Value::Null) => {}
                Some(v) => {
                    cfg.insert(field.to_string(), v.clone());
                }
            }
        }
    }
    for field in ["os", "architecture", "variant"] {
        if let Some(v) = config.get(field).filter(|v| !v.is_null()) {
            cfg.insert(field.to_string(), v.clone());
        }
    }
    out.insert("config".into(), Value::Object(cfg));

    let diff_ids = super::bases::diff_ids(&config);
    let skip = bases.base_of(&diff_ids).map_or(0, |b| b.history_len);
    let history: Vec<Value> = config
        .get("history")
        .and_then(Value::as_array)
        .map(|h| h.iter().skip(skip).map(history_entry).collect())
        .unwrap_or_default();
    out.insert("history".into(), Value::Array(history));

    let layers = manifest
        .get("layers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    ensure!(
        layers.len() == diff_ids.len(),
        "the manifest has {} layers, the config {} diff_ids",
        layers.len(),
        diff_ids.len()
    );
    let mut canon_layers = Vec::new();
    for (layer, diff_id) in layers.iter().zip(&diff_ids) {
        if let Some(label) = bases.label(diff_id) {
            canon_layers.push(Value::String(label.to_string()));
            continue;
        }
        let digest = layer
            .get("digest")
            .and_then(Value::as_str)
            .context("a layer without digest")?;
        let entries = layer_entries(blob(blobs, digest)?)
            .with_context(|| format!("reading the layer {digest}"))?;
        canon_layers.push(Value::Array(entries));
    }
    out.insert("layers".into(), Value::Array(canon_layers));
    Ok(Value::Object(out))
}

fn history_entry(h: &Value) -> Value {
    let mut m = Map::new();
    for field in ["created_by", "comment"] {
        if let Some(v) = h.get(field).filter(|v| !v.is_null()) {
            m.insert(field.into(), v.clone());
        }
    }
    m.insert(
        "empty_layer".into(),
        Value::Bool(
            h.get("empty_layer")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        ),
    );
    Value::Object(m)
}

/// Every file of the archive by name (`index.json`, `blobs/sha256/...`).
fn read_archive(path: &Path) -> Result<HashMap<String, Vec<u8>>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("opening `{}`", path.display()))?;
    let mut archive = tar::Archive::new(file);
    let mut files = HashMap::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = normalize(&entry.path()?.to_string_lossy());
        let mut data = Vec::new();
        entry.read_to_end(&mut data)?;
        files.insert(name, data);
    }
    Ok(files)
}

fn blob<'a>(blobs: &'a HashMap<String, Vec<u8>>, digest: &str) -> Result<&'a [u8]> {
    let (alg, hex) = digest
        .split_once(':')
        .with_context(|| format!("digest `{digest}`"))?;
    blobs
        .get(&format!("blobs/{alg}/{hex}"))
        .map(Vec::as_slice)
        .with_context(|| format!("the archive has no blob {digest}"))
}

/// The image manifests an index leads to, with their platforms (`os/arch[/variant]`, when the
/// descriptor names one); attestation manifests are not images. One entry that is itself an
/// index (buildctl's OCI archive of a multi-platform build) leads to its entries.
fn find_manifests(
    blobs: &HashMap<String, Vec<u8>>,
    index: &Value,
) -> Result<Vec<(Option<String>, Value)>> {
    let images: Vec<&Value> = index
        .get("manifests")
        .and_then(Value::as_array)
        .context("an index without manifests")?
        .iter()
        .filter(|m| {
            m.pointer("/annotations/vnd.docker.reference.type")
                .and_then(Value::as_str)
                != Some("attestation-manifest")
                && m.pointer("/platform/architecture").and_then(Value::as_str) != Some("unknown")
        })
        .collect();
    ensure!(!images.is_empty(), "the archive holds no image");
    let mut found = Vec::new();
    for desc in &images {
        let digest = desc
            .get("digest")
            .and_then(Value::as_str)
            .context("a descriptor without digest")?;
        let doc: Value = serde_json::from_slice(blob(blobs, digest)?)?;
        if doc.get("manifests").is_some() {
            ensure!(images.len() == 1, "an index among several images");
            return find_manifests(blobs, &doc);
        }
        found.push((platform_of(desc), doc));
    }
    Ok(found)
}

fn platform_of(desc: &Value) -> Option<String> {
    let p = desc.get("platform")?;
    let mut s = format!(
        "{}/{}",
        p.get("os")?.as_str()?,
        p.get("architecture")?.as_str()?
    );
    if let Some(v) = p.get("variant").and_then(Value::as_str) {
        s = format!("{s}/{v}");
    }
    Some(s)
}

/// `./a/b/`, `/a/b` → `a/b`; the root is `.`.
fn normalize(path: &str) -> String {
    let mut p = path;
    loop {
        if let Some(rest) = p.strip_prefix("./") {
            p = rest;
        } else if let Some(rest) = p.strip_prefix('/') {
            p = rest;
        } else {
            break;
        }
    }
    let p = p.trim_end_matches('/');
    if p.is_empty() || p == "." {
        ".".to_string()
    } else {
        p.to_string()
    }
}

/// A layer blob (gzip, possibly multi-member; zstd; or plain tar, told by its first bytes)
/// as sorted canonical entries.
pub fn layer_entries(data: &[u8]) -> Result<Vec<Value>> {
    let reader: Box<dyn Read + '_> = if data.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(data))
    } else if data.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::new(data)?)
    } else {
        Box::new(data)
    };
    let mut archive = tar::Archive::new(reader);
    let mut entries = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        entries.push(canonical_entry(&mut entry)?);
    }
    entries.sort_by(|a, b| {
        let key = |v: &Value| (v["path"].as_str().unwrap_or("").to_string(), v.to_string());
        key(a).cmp(&key(b))
    });
    Ok(entries)
}

fn canonical_entry<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Value> {
    let path = normalize(&entry.path()?.to_string_lossy());
    let (dir, base) = match path.rsplit_once('/') {
        Some((d, b)) => (d.to_string(), b.to_string()),
        None => (".".to_string(), path.clone()),
    };
    if base == ".wh..wh..opq" {
        return Ok(json!({"path": dir, "type": "opaque"}));
    }
    if let Some(name) = base.strip_prefix(".wh.") {
        let p = if dir == "." {
            name.to_string()
        } else {
            format!("{dir}/{name}")
        };
        return Ok(json!({"path": p, "type": "whiteout"}));
    }

    let mut xattrs = BTreeMap::new();
    let mut pax_mtime = None;
    if let Some(exts) = entry.pax_extensions()? {
        for ext in exts {
            let ext = ext?;
            let key = ext.key().unwrap_or("");
            if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                let value = match std::str::from_utf8(ext.value_bytes()) {
                    Ok(s) => s.to_string(),
                    Err(_) => format!("hex:{}", hex::encode(ext.value_bytes())),
                };
                xattrs.insert(name.to_string(), value);
            } else if key == "mtime" {
                pax_mtime = ext
                    .value()
                    .ok()
                    .and_then(|v| v.split('.').next())
                    .and_then(|s| s.parse::<i64>().ok());
            }
        }
    }

    let header = entry.header().clone();
    let kind = header.entry_type();
    let mut m = Map::new();
    m.insert("path".into(), Value::String(path));
    let type_name = match kind {
        tar::EntryType::Regular | tar::EntryType::Continuous => "file",
        tar::EntryType::Directory => "dir",
        tar::EntryType::Symlink => "symlink",
        tar::EntryType::Link => "hardlink",
        tar::EntryType::Char => "char",
        tar::EntryType::Block => "block",
        tar::EntryType::Fifo => "fifo",
        other => bail!("unexpected tar entry type {other:?}"),
    };
    m.insert("type".into(), type_name.into());
    m.insert(
        "mode".into(),
        Value::String(format!("{:04o}", header.mode()? & 0o7777)),
    );
    m.insert("uid".into(), header.uid()?.into());
    m.insert("gid".into(), header.gid()?.into());
    let mtime = match pax_mtime {
        Some(t) => t,
        None => header.mtime()? as i64,
    };
    if (0..DETERMINISTIC_BEFORE as i64).contains(&mtime) {
        m.insert("mtime".into(), mtime.into());
    }
    match kind {
        tar::EntryType::Symlink => {
            let target = entry
                .link_name()?
                .map(|t| t.to_string_lossy().into_owned())
                .unwrap_or_default();
            m.insert("target".into(), target.into());
        }
        tar::EntryType::Link => {
            let target = entry
                .link_name()?
                .map(|t| normalize(&t.to_string_lossy()))
                .unwrap_or_default();
            m.insert("target".into(), target.into());
        }
        tar::EntryType::Char | tar::EntryType::Block => {
            m.insert("major".into(), header.device_major()?.unwrap_or(0).into());
            m.insert("minor".into(), header.device_minor()?.unwrap_or(0).into());
        }
        _ => {}
    }
    if type_name == "file" {
        let mut hasher = Sha256::new();
        let mut buf = [0u8; 64 * 1024];
        let mut size = 0u64;
        loop {
            let n = entry.read(&mut buf)?;
            if n == 0 {
                break;
            }
            size += n as u64;
            hasher.update(&buf[..n]);
        }
        m.insert("size".into(), size.into());
        m.insert(
            "sha256".into(),
            Value::String(hex::encode(hasher.finalize())),
        );
    }
    if !xattrs.is_empty() {
        m.insert(
            "xattrs".into(),
            Value::Object(
                xattrs
                    .into_iter()
                    .map(|(k, v)| (k, Value::String(v)))
                    .collect(),
            ),
        );
    }
    Ok(Value::Object(m))
}
