//! CDI devices for `RUN --device`, as BuildKit (0.20+) provides them: the specs (JSON or YAML)
//! in the configured directories register devices `vendor/class=name`; a RUN asks for one by
//! that name, by its kind alone (the first device of the kind) or `kind=*` (every device of the
//! kind). A name no spec registers is skipped, or fails the build when marked `required`; a
//! registered device needs the `device` entitlement unless its spec or device annotation
//! `org.mobyproject.buildkit.device.autoallow` is true. The spec's container edits and the
//! device's (env, device nodes, mounts, hooks) are applied to the RUN's container.
//!
//! The CDI spec is small and has no maintained Rust implementation, so the parts kiln applies
//! are read here with serde.

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use kiln_llb::{Definition, DeviceRequest, Op};
use serde::Deserialize;

/// Where CDI specs live by default, as the CDI library's defaults; a later directory's spec
/// wins over an earlier one's for the same device.
pub const SPEC_DIRS: [&str; 2] = ["/etc/cdi", "/var/run/cdi"];

const AUTOALLOW: &str = "org.mobyproject.buildkit.device.autoallow";

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("required device \"{0}\" is not registered")]
    NotRegistered(String),
    #[error("device {0} is requested by the build but not allowed")]
    NotAllowed(String),
    #[error("CDI spec `{}`: {why}", path.display())]
    Spec { path: PathBuf, why: String },
    #[error("applying CDI device edits: {0}")]
    Edit(String),
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpecFile {
    #[serde(default)]
    cdi_version: String,
    kind: String,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    devices: Vec<DeviceSpec>,
    #[serde(default)]
    container_edits: ContainerEdits,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeviceSpec {
    name: String,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    container_edits: ContainerEdits,
}

/// What a spec or a device adds to a container.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ContainerEdits {
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub device_nodes: Vec<DeviceNode>,
    #[serde(default)]
    pub mounts: Vec<MountSpec>,
    #[serde(default)]
    pub hooks: Vec<HookSpec>,
    #[serde(default, rename = "additionalGids")]
    pub additional_gids: Vec<u32>,
    /// Edits kiln does not apply; a spec that uses them is refused rather than half applied.
    #[serde(default)]
    intel_rdt: Option<serde_json::Value>,
    #[serde(default)]
    net_devices: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DeviceNode {
    pub path: String,
    #[serde(default)]
    pub host_path: Option<String>,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub major: Option<i64>,
    #[serde(default)]
    pub minor: Option<i64>,
    #[serde(default)]
    pub file_mode: Option<u32>,
    #[serde(default)]
    pub permissions: Option<String>,
    #[serde(default)]
    pub uid: Option<u32>,
    #[serde(default)]
    pub gid: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MountSpec {
    pub host_path: String,
    pub container_path: String,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub options: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HookSpec {
    pub hook_name: String,
    pub path: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub timeout: Option<i64>,
}

/// One registered device: its qualified name, whether it needs no entitlement, and the
/// edits (its spec's, then its own).
#[derive(Debug, Clone)]
struct Device {
    name: String,
    auto_allow: bool,
    edits: Vec<ContainerEdits>,
}

/// The devices the specs register, read when a build starts (BuildKit reads them when it
/// loads a build).
#[derive(Debug, Clone, Default)]
pub struct Registry {
    /// In name order, which is the order `kind` alone picks from.
    devices: Vec<Device>,
}

impl Registry {
    /// Reads every `*.json`, `*.yaml` and `*.yml` in `dirs` (missing dirs have none). A spec
    /// that cannot be read or uses what kiln cannot apply fails the load, naming the file.
    /// `auto_allowed`: kinds or device names that need no entitlement (buildkitd.toml's
    /// `cdi.autoAllowed`).
    pub fn load(dirs: &[&Path], auto_allowed: &[String]) -> Result<Self, DeviceError> {
        let mut by_name: BTreeMap<String, Device> = BTreeMap::new();
        for dir in dirs {
            for path in spec_files(dir) {
                for mut device in read_spec(&path)? {
                    let kind = device.name.split_once('=').map_or("", |(k, _)| k);
                    device.auto_allow |=
                        auto_allowed.iter().any(|a| *a == device.name || a == kind);
                    by_name.insert(device.name.clone(), device);
                }
            }
        }
        Ok(Self {
            devices: by_name.into_values().collect(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// The devices a request names, or an error for a required one no spec registers. An
    /// optional one that is not registered gives none.
    fn find(&self, request: &DeviceRequest) -> Result<Vec<&Device>, DeviceError> {
        let (kind, name) = match request.name.split_once('=') {
            Some((k, n)) => (k, Some(n)),
            None => (request.name.as_str(), None),
        };
        let mut of_kind = self
            .devices
            .iter()
            .filter(|d| d.name.split_once('=').is_some_and(|(k, _)| k == kind));
        let found: Vec<&Device> = match name {
            None => of_kind.next().into_iter().collect(),
            Some("*") => of_kind.collect(),
            Some(_) => self
                .devices
                .iter()
                .filter(|d| d.name == request.name)
                .collect(),
        };
        if found.is_empty() && request.required {
            return Err(DeviceError::NotRegistered(request.name.clone()));
        }
        Ok(found)
    }

    /// The edits for an exec's devices, the spec's before the device's, each device once.
    pub fn edits(&self, requests: &[DeviceRequest]) -> Result<Vec<ContainerEdits>, DeviceError> {
        let mut seen = Vec::new();
        let mut out = Vec::new();
        for request in requests {
            for device in self.find(request)? {
                if seen.contains(&device.name) {
                    continue;
                }
                seen.push(device.name.clone());
                out.extend(device.edits.iter().cloned());
            }
        }
        Ok(out)
    }
}

/// Checks every device the build's RUNs ask for before anything runs, as BuildKit does when
/// it loads the build: required ones must be registered, registered ones allowed (`--allow
/// device` or autoallow).
pub fn check(def: &Definition, registry: &Registry, allowed: bool) -> Result<(), DeviceError> {
    for (_, node) in def.nodes() {
        let Op::Exec(e) = &node.op else { continue };
        for request in &e.sandbox.devices {
            for device in registry.find(request)? {
                if !device.auto_allow && !allowed {
                    return Err(DeviceError::NotAllowed(device.name.clone()));
                }
            }
        }
    }
    Ok(())
}

fn spec_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut specs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| matches!(e, "json" | "yaml" | "yml"))
        })
        .collect();
    specs.sort();
    specs
}

fn read_spec(path: &Path) -> Result<Vec<Device>, DeviceError> {
    let fail = |why: String| DeviceError::Spec {
        path: path.to_path_buf(),
        why,
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    // YAML is a superset of JSON, so one parser reads both.
    let spec: SpecFile = serde_yaml_ng::from_str(&text).map_err(|e| fail(e.to_string()))?;
    if spec.cdi_version.is_empty() {
        return Err(fail("no cdiVersion".into()));
    }
    let Some((vendor, class)) = spec.kind.split_once('/') else {
        return Err(fail(format!("invalid kind \"{}\": no vendor", spec.kind)));
    };
    if vendor.is_empty() || class.is_empty() || class.contains('/') {
        return Err(fail(format!("invalid kind \"{}\"", spec.kind)));
    }
    unsupported(&spec.container_edits).map_err(&fail)?;
    let spec_allows = is_true(spec.annotations.get(AUTOALLOW));
    let mut out = Vec::new();
    for d in spec.devices {
        if d.name.is_empty() || d.name.contains(['=', '/']) {
            return Err(fail(format!("invalid device name \"{}\"", d.name)));
        }
        unsupported(&d.container_edits).map_err(&fail)?;
        out.push(Device {
            name: format!("{}={}", spec.kind, d.name),
            auto_allow: is_true(d.annotations.get(AUTOALLOW)).unwrap_or(false)
                || spec_allows.unwrap_or(false),
            edits: vec![spec.container_edits.clone(), d.container_edits],
        });
    }
    Ok(out)
}

/// The device annotation overrides the spec's, as BuildKit merges them.
fn is_true(v: Option<&String>) -> Option<bool> {
    v.and_then(|v| match v.to_ascii_lowercase().as_str() {
        "1" | "t" | "true" => Some(true),
        "0" | "f" | "false" => Some(false),
        _ => None,
    })
}

fn unsupported(e: &ContainerEdits) -> Result<(), String> {
    let used = [("intelRdt", &e.intel_rdt), ("netDevices", &e.net_devices)]
        .into_iter()
        .find(|(_, v)| v.as_ref().is_some_and(|v| !v.is_null()));
    match used {
        Some((what, _)) => Err(format!("container edit `{what}` is not supported yet")),
        None => Ok(()),
    }
}

/// A device node as the container gets it: what the spec leaves out is taken from the host
/// node, as the CDI library fills it in.
pub fn resolve_node(node: &DeviceNode) -> std::io::Result<kiln_executor::DeviceNode> {
    let host = node.host_path.as_deref().unwrap_or(&node.path);
    let meta = if node.kind.is_none() || node.major.is_none() || node.file_mode.is_none() {
        Some(std::fs::metadata(host)?)
    } else {
        None
    };
    let from_host = |what: &str| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("`{host}` is not a device node ({what})"),
        )
    };
    let kind = match (&node.kind, &meta) {
        (Some(k), _) => k.chars().next().ok_or_else(|| from_host("empty type"))?,
        (None, Some(m)) if m.file_type().is_char_device() => 'c',
        (None, Some(m)) if m.file_type().is_block_device() => 'b',
        (None, Some(m)) if m.file_type().is_fifo() => 'p',
        _ => return Err(from_host("not a character or block device or fifo")),
    };
    let rdev = meta.as_ref().map(|m| m.rdev()).unwrap_or(0);
    Ok(kiln_executor::DeviceNode {
        path: node.path.clone(),
        kind,
        major: node.major.unwrap_or(libc::major(rdev) as i64),
        minor: node.minor.unwrap_or(libc::minor(rdev) as i64),
        file_mode: node
            .file_mode
            .or_else(|| meta.as_ref().map(|m| m.permissions().mode() & 0o7777)),
        uid: node.uid,
        gid: node.gid,
        permissions: node
            .permissions
            .clone()
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "rwm".into()),
    })
}

/// What the edits add to one container.
pub struct Applied<'a> {
    pub env: &'a mut Vec<String>,
    pub mounts: &'a mut Vec<kiln_executor::Mount>,
    pub sandbox: &'a mut kiln_executor::Sandbox,
    pub user: &'a mut kiln_executor::User,
}

/// Applies `edits` in order: env entries replace those of the same name, device nodes,
/// bind mounts, hooks and supplementary groups are added.
pub fn apply(edits: &[ContainerEdits], to: Applied<'_>) -> Result<(), DeviceError> {
    let fail = DeviceError::Edit;
    for e in edits {
        for kv in &e.env {
            let key = kv.split_once('=').map_or(kv.as_str(), |(k, _)| k);
            to.env
                .retain(|x| x.split_once('=').map_or(x.as_str(), |(k, _)| k) != key);
            to.env.push(kv.clone());
        }
        for node in &e.device_nodes {
            let node = resolve_node(node).map_err(|e| fail(e.to_string()))?;
            to.sandbox.devices.push(node);
        }
        for m in &e.mounts {
            if m.kind.as_deref().is_some_and(|t| t != "bind") {
                return Err(fail(format!(
                    "mount of type `{}` at `{}` is not supported yet",
                    m.kind.as_deref().unwrap_or_default(),
                    m.container_path
                )));
            }
            to.mounts.push(kiln_executor::Mount::Bind {
                source: PathBuf::from(&m.host_path),
                destination: m.container_path.clone(),
                readonly: m.options.iter().any(|o| o == "ro"),
            });
        }
        for h in &e.hooks {
            to.sandbox.hooks.push(kiln_executor::Hook {
                stage: h.hook_name.clone(),
                path: h.path.clone(),
                args: h.args.clone(),
                env: h.env.clone(),
                timeout: h.timeout,
            });
        }
        for gid in &e.additional_gids {
            if !to.user.additional_gids.contains(gid) {
                to.user.additional_gids.push(*gid);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
