//! `kiln manifest`: manifest lists kept in the data directory until pushed, as `docker
//! manifest` keeps them in `~/.docker/manifests`. One directory per list under
//! `<root>/manifests/`, one JSON file per entry (docker's `ImageManifest` shape: `Ref`,
//! `Descriptor`, `Raw`), listed in file-name order as docker reads them.

use std::fs;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use kiln_oci::Reference;
use kiln_oci::media_type::{self, is_index};
use serde_json::{Value, json};

use crate::imagetools::{pinned, same_repository};
use crate::{Engine, Error, Result};

/// What `manifest annotate` changes in an entry's platform; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct PlatformAnnotation {
    pub os: Option<String>,
    pub arch: Option<String>,
    pub variant: Option<String>,
    pub os_version: Option<String>,
    pub os_features: Vec<String>,
}

/// What `manifest inspect` found: JSON text laid out as docker prints it.
#[derive(Debug)]
pub struct Inspected(String);

impl Inspected {
    pub fn text(&self) -> &str {
        &self.0
    }

    fn of(v: &impl serde::Serialize) -> Result<Inspected> {
        Ok(Inspected(String::from_utf8(pretty(v)?).unwrap_or_default()))
    }
}

/// Docker's layout: three-space indentation (also the bytes of a pushed list).
fn pretty(v: &impl serde::Serialize) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"   ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    v.serialize(&mut ser).map_err(|e| Error::Invalid {
        what: "manifest JSON".into(),
        source: Box::new(e),
    })?;
    Ok(out)
}

/// A list as docker writes it, fields in its order.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct ListDoc {
    schema_version: u32,
    media_type: String,
    manifests: Vec<ListEntry>,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct ListEntry {
    media_type: String,
    size: u64,
    digest: String,
    platform: PlatformSpec,
}

#[derive(serde::Serialize, serde::Deserialize, Default)]
struct PlatformSpec {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    os_version: String,
    #[serde(rename = "os.features", default, skip_serializing_if = "Vec::is_empty")]
    os_features: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    variant: String,
}

fn no_such(list: &Reference) -> Error {
    Error::Usage(format!("no such manifest: {}", list.whole()))
}

/// A file-safe, collision-free name for a reference (`/`, `:` and `@` are escaped).
fn file_safe(r: &Reference) -> String {
    r.whole()
        .replace('%', "%25")
        .replace('/', "%2F")
        .replace(':', "%3A")
        .replace('@', "%40")
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { what, source }
}

impl Engine {
    fn list_dir(&self, list: &Reference) -> PathBuf {
        self.root().join("manifests").join(file_safe(list))
    }

    /// The entries of a local list, in docker's order (by file name); `None` if there is none.
    fn read_list(&self, list: &Reference) -> Result<Option<Vec<(PathBuf, Value)>>> {
        let dir = self.list_dir(list);
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(format!("reading `{}`", dir.display()))(e)),
        };
        let mut paths: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        paths.sort();
        let mut out = Vec::new();
        for p in paths {
            let bytes = fs::read(&p).map_err(io(format!("reading `{}`", p.display())))?;
            let v: Value = serde_json::from_slice(&bytes).map_err(|e| Error::Invalid {
                what: format!("manifest list entry `{}`", p.display()),
                source: Box::new(e),
            })?;
            out.push((p, v));
        }
        Ok(Some(out))
    }

    fn write_entry(path: &Path, entry: &Value) -> Result<()> {
        let bytes = serde_json::to_vec(entry).map_err(|e| Error::Invalid {
            what: "manifest list entry".into(),
            source: Box::new(e),
        })?;
        crate::write_file_atomically(path, |w| {
            w.write_all(&bytes)
                .map_err(io(format!("writing `{}`", path.display())))
        })
    }

    /// `manifest ... --insecure`: for the rest of this engine's life (one command), the
    /// registries of `names` are reached without TLS verification, or over plain HTTP when
    /// they do not answer HTTPS, as docker's `--insecure` does.
    pub async fn manifest_allow_insecure(&self, names: &[&Reference]) {
        let mut seen = std::collections::HashSet::new();
        for name in names {
            if seen.insert(name.registry()) {
                self.registry.allow_insecure(name.registry()).await;
            }
        }
    }

    /// `manifest create`: resolves each source in the registry and stores it as an entry of
    /// `list`; an index contributes each of its manifests.
    pub async fn manifest_create(
        &self,
        list: &Reference,
        sources: &[Reference],
        amend: bool,
    ) -> Result<()> {
        let dir = self.list_dir(list);
        if dir.exists() && !amend {
            return Err(Error::Usage(format!(
                "refusing to amend an existing manifest list with no --amend flag: {}",
                list.whole()
            )));
        }
        // Everything is resolved before anything is written, so a bad source leaves no list.
        let mut entries = Vec::new();
        for src in sources {
            let raw = self.registry.fetch_manifest_raw(src).await?;
            let found = self.entries_of(src, &raw).await?;
            if is_index(&raw.media_type) {
                for desc in found {
                    let digest = desc["digest"].as_str().unwrap_or_default();
                    let child = pinned(src, digest)?;
                    let child_raw = self.registry.fetch_manifest_raw(&child).await?;
                    if is_index(&child_raw.media_type) {
                        return Err(Error::Unsupported(format!(
                            "`{child}` is a nested index: not supported yet in a manifest list"
                        )));
                    }
                    entries.push((child, desc, child_raw.bytes));
                }
            } else {
                let pinned_src = pinned(src, raw.digest.as_ref())?;
                for desc in found {
                    entries.push((pinned_src.clone(), desc, raw.bytes.clone()));
                }
            }
        }
        fs::create_dir_all(&dir).map_err(io(format!("creating `{}`", dir.display())))?;
        for (r, desc, raw) in entries {
            let entry = json!({
                "Ref": r.whole(),
                "Descriptor": desc,
                "Raw": base64::engine::general_purpose::STANDARD.encode(&raw),
            });
            Self::write_entry(&dir.join(format!("{}.json", file_safe(&r))), &entry)?;
        }
        Ok(())
    }

    /// The entry of `list` for `manifest` (a name or name@digest): matched by digest when the
    /// reference has one, else by the resolved digest of the name.
    async fn find_entry(&self, list: &Reference, manifest: &Reference) -> Result<(PathBuf, Value)> {
        let entries = self.read_list(list)?.ok_or_else(|| no_such(list))?;
        let digest = match manifest.digest() {
            Some(d) => d.to_string(),
            None => {
                let raw = self.registry.fetch_manifest_raw(manifest).await?;
                raw.digest.to_string()
            }
        };
        entries
            .into_iter()
            .find(|(_, v)| {
                v["Descriptor"]["digest"] == digest.as_str()
                    && v["Ref"]
                        .as_str()
                        .and_then(|r| r.parse::<Reference>().ok())
                        .is_some_and(|r| same_repository(&r, manifest))
            })
            .ok_or_else(|| {
                Error::Usage(format!(
                    "manifest for image {} does not exist in {}",
                    manifest.whole(),
                    list.whole()
                ))
            })
    }

    /// `manifest annotate`: sets platform fields of one entry.
    pub async fn manifest_annotate(
        &self,
        list: &Reference,
        manifest: &Reference,
        a: &PlatformAnnotation,
    ) -> Result<()> {
        let (path, mut entry) = self.find_entry(list, manifest).await?;
        let p = &mut entry["Descriptor"]["platform"];
        if !p.is_object() {
            *p = json!({});
        }
        for (key, value) in [
            ("os", &a.os),
            ("architecture", &a.arch),
            ("variant", &a.variant),
            ("os.version", &a.os_version),
        ] {
            if let Some(v) = value {
                p[key] = json!(v);
            }
        }
        if !a.os_features.is_empty() {
            p["os.features"] = json!(a.os_features);
        }
        Self::write_entry(&path, &entry)
    }

    /// `manifest inspect [LIST] MANIFEST`: a local list (or one entry of it) first, else what
    /// the registry holds.
    pub async fn manifest_inspect(
        &self,
        list: Option<&Reference>,
        manifest: &Reference,
        verbose: bool,
    ) -> Result<Inspected> {
        if let Some(list) = list {
            let (_, entry) = self.find_entry(list, manifest).await?;
            return if verbose {
                Inspected::of(&verbose_entry(entry)?)
            } else {
                Inspected::of(&raw_json(&entry)?)
            };
        }
        if let Some(entries) = self.read_list(manifest)? {
            let entries: Vec<Value> = entries.into_iter().map(|(_, v)| v).collect();
            if verbose {
                let all: Vec<Verbose> = entries
                    .into_iter()
                    .map(verbose_entry)
                    .collect::<Result<_>>()?;
                return Inspected::of(&all);
            }
            return Inspected::of(&list_document(&entries)?);
        }
        let raw = match self.registry.fetch_manifest_raw(manifest).await {
            Ok(raw) => raw,
            Err(kiln_registry::Error::Resolve { source, .. })
                if matches!(*source, kiln_registry::Cause::NotFound { .. }) =>
            {
                return Err(no_such(manifest));
            }
            Err(e) => return Err(e.into()),
        };
        let doc: Value = serde_json::from_slice(&raw.bytes).map_err(|e| Error::Invalid {
            what: format!("manifest of `{manifest}`"),
            source: Box::new(e),
        })?;
        if !verbose {
            return Inspected::of(&doc);
        }
        // Verbose: each manifest with its reference and descriptor, as docker shows them.
        let found = self.entries_of(manifest, &raw).await?;
        let mut out = Vec::new();
        for desc in found {
            let digest = desc["digest"].as_str().unwrap_or_default();
            let r = pinned(manifest, digest)?;
            let bytes = if is_index(&raw.media_type) {
                self.registry.fetch_manifest_raw(&r).await?.bytes
            } else {
                raw.bytes.clone()
            };
            out.push(verbose_entry(json!({
                "Ref": r.whole(),
                "Descriptor": desc,
                "Raw": base64::engine::general_purpose::STANDARD.encode(&bytes),
            }))?);
        }
        if is_index(&raw.media_type) {
            Inspected::of(&out)
        } else {
            Inspected::of(&out.pop())
        }
    }

    /// `manifest push`: makes every entry's manifest present in `list`'s repository, then
    /// pushes the list. Returns its digest. `purge` removes the local list afterwards.
    pub async fn manifest_push(&self, list: &Reference, purge: bool) -> Result<String> {
        let entries = self.read_list(list)?.ok_or_else(|| no_such(list))?;
        let entries: Vec<Value> = entries.into_iter().map(|(_, v)| v).collect();
        if entries.is_empty() {
            return Err(no_such(list));
        }
        for e in &entries {
            let src: Reference = e["Ref"]
                .as_str()
                .unwrap_or_default()
                .parse()
                .map_err(|_| Error::Reference(e["Ref"].to_string()))?;
            if !same_repository(&src, list) {
                let digest = e["Descriptor"]["digest"].as_str().unwrap_or_default();
                self.copy_manifest(&src, digest, list).await?;
            }
        }
        let doc = list_document(&entries)?;
        let bytes = pretty(&doc)?;
        self.registry
            .push_manifest(list, &doc.media_type, &bytes)
            .await?;
        if purge {
            self.manifest_rm(list)?;
        }
        Ok(kiln_oci::sha256(&bytes).to_string())
    }

    /// `manifest rm`: deletes the local list.
    pub fn manifest_rm(&self, list: &Reference) -> Result<()> {
        let dir = self.list_dir(list);
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(no_such(list)),
            Err(e) => Err(io(format!("removing `{}`", dir.display()))(e)),
        }
    }
}

/// The list as pushed: an OCI index when the first entry is an OCI manifest, else a Docker
/// manifest list (the rule of docker's `manifestlist.FromDescriptors`).
fn list_document(entries: &[Value]) -> Result<ListDoc> {
    let mut manifests = Vec::new();
    for e in entries {
        let d = &e["Descriptor"];
        let platform: PlatformSpec =
            serde_json::from_value(d["platform"].clone()).unwrap_or_default();
        if platform.architecture.is_empty() || platform.os.is_empty() {
            return Err(Error::Usage(format!(
                "manifest {} must have an OS and Architecture to be pushed to a registry",
                e["Ref"].as_str().unwrap_or_default()
            )));
        }
        manifests.push(ListEntry {
            media_type: d["mediaType"].as_str().unwrap_or_default().to_string(),
            size: d["size"].as_u64().unwrap_or_default(),
            digest: d["digest"].as_str().unwrap_or_default().to_string(),
            platform,
        });
    }
    let oci = manifests
        .first()
        .is_some_and(|m| m.media_type == media_type::OCI_MANIFEST);
    Ok(ListDoc {
        schema_version: 2,
        media_type: if oci {
            media_type::OCI_INDEX
        } else {
            media_type::DOCKER_MANIFEST_LIST
        }
        .to_string(),
        manifests,
    })
}

fn raw_bytes(entry: &Value) -> Result<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(entry["Raw"].as_str().unwrap_or_default())
        .map_err(|e| Error::Invalid {
            what: "manifest list entry (Raw)".into(),
            source: Box::new(e),
        })
}

fn raw_json(entry: &Value) -> Result<Value> {
    serde_json::from_slice(&raw_bytes(entry)?).map_err(|e| Error::Invalid {
        what: "manifest list entry (Raw)".into(),
        source: Box::new(e),
    })
}

/// Docker's `--verbose` shape: the stored entry plus the parsed manifest under the key its
/// type has there.
fn verbose_entry(entry: Value) -> Result<Verbose> {
    let doc = raw_json(&entry)?;
    let oci = entry["Descriptor"]["mediaType"] == media_type::OCI_MANIFEST;
    Ok(Verbose {
        reference: entry["Ref"].as_str().unwrap_or_default().to_string(),
        descriptor: entry["Descriptor"].clone(),
        raw: entry["Raw"].as_str().unwrap_or_default().to_string(),
        schema_v2: (!oci).then(|| doc.clone()),
        oci: oci.then_some(doc),
    })
}

/// One `--verbose` entry, keys in docker's order.
#[derive(serde::Serialize)]
struct Verbose {
    #[serde(rename = "Ref")]
    reference: String,
    #[serde(rename = "Descriptor")]
    descriptor: Value,
    #[serde(rename = "Raw")]
    raw: String,
    #[serde(rename = "SchemaV2Manifest", skip_serializing_if = "Option::is_none")]
    schema_v2: Option<Value>,
    #[serde(rename = "OCIManifest", skip_serializing_if = "Option::is_none")]
    oci: Option<Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(mt: &str, arch: &str) -> Value {
        json!({"Ref": "r", "Descriptor": {"mediaType": mt, "size": 1, "digest": "sha256:00",
               "platform": {"os": "linux", "architecture": arch}}, "Raw": "e30="})
    }

    #[test]
    fn list_type_follows_the_first_entry() {
        let docker = list_document(&[
            entry(media_type::DOCKER_MANIFEST, "amd64"),
            entry(media_type::OCI_MANIFEST, "arm64"),
        ])
        .unwrap();
        assert_eq!(docker.media_type, media_type::DOCKER_MANIFEST_LIST);
        let text = String::from_utf8(pretty(&docker).unwrap()).unwrap();
        assert!(
            text.starts_with("{\n   \"schemaVersion\": 2,\n   \"mediaType\""),
            "{text}"
        );
        let oci = list_document(&[entry(media_type::OCI_MANIFEST, "amd64")]).unwrap();
        assert_eq!(oci.media_type, media_type::OCI_INDEX);
        let err = list_document(&[entry(media_type::OCI_MANIFEST, "")])
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("must have an OS and Architecture"),
            "{err}"
        );
    }

    #[test]
    fn file_names_do_not_collide() {
        let a: Reference = "127.0.0.1:5000/a/b:c".parse().unwrap();
        let b: Reference = "127.0.0.1:5000/a:b-c".parse().unwrap();
        assert_ne!(file_safe(&a), file_safe(&b));
        assert!(!file_safe(&a).contains('/'));
    }

    #[test]
    fn verbose_names_the_manifest_by_type() {
        let v = verbose_entry(entry(media_type::OCI_MANIFEST, "amd64")).unwrap();
        let text = Inspected::of(&v).unwrap().0;
        assert!(
            text.starts_with("{\n   \"Ref\": \"r\",\n   \"Descriptor\""),
            "{text}"
        );
        assert!(text.ends_with("\"OCIManifest\": {}\n}"), "{text}");
        assert!(!text.contains("SchemaV2Manifest"), "{text}");
        let inspected = Inspected::of(&json!({"a": 1})).unwrap();
        assert_eq!(inspected.text(), "{\n   \"a\": 1\n}");
    }
}
