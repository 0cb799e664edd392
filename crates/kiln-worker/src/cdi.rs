//! CDI devices for `RUN --device`. BuildKit (0.20+) looks each name up in the CDI specs of
//! `/etc/cdi` and `/var/run/cdi` when it loads the build: a name no spec registers is skipped,
//! or fails the build when the RUN marks it `required`; a registered one needs the `device`
//! entitlement (or the spec's autoallow annotation) and its container edits are applied.
//!
//! kiln has no CDI registry yet. With no spec on the host it behaves as BuildKit does there:
//! every device is unregistered. With specs present it cannot tell whether a name is registered
//! without reading them, and it cannot inject a device, so a RUN asking for one is refused
//! rather than silently run without it.

use std::path::{Path, PathBuf};

use kiln_llb::{Definition, DeviceRequest, Op};

/// Where CDI specs live, as the CDI library's defaults that BuildKit uses.
pub const SPEC_DIRS: [&str; 2] = ["/etc/cdi", "/var/run/cdi"];

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("required device \"{0}\" is not registered")]
    NotRegistered(String),
    #[error(
        "device \"{name}\" may be registered by the CDI specs in `{}`, but CDI devices are not \
         supported yet",
        spec.display()
    )]
    CdiUnsupported { name: String, spec: PathBuf },
}

/// Checks every device the build's RUNs ask for, before anything runs (BuildKit checks them
/// when it loads the build's definition). Unregistered optional devices are dropped by the
/// executor, which gets none.
pub fn check(def: &Definition, spec_dirs: &[&Path]) -> Result<(), DeviceError> {
    let requests: Vec<&DeviceRequest> = def
        .nodes()
        .filter_map(|(_, n)| match &n.op {
            Op::Exec(e) => Some(e.sandbox.devices.iter()),
            _ => None,
        })
        .flatten()
        .collect();
    let Some(first) = requests.first() else {
        return Ok(());
    };
    if let Some(spec) = spec_dirs.iter().find_map(|d| first_spec(d)) {
        return Err(DeviceError::CdiUnsupported {
            name: first.name.clone(),
            spec,
        });
    }
    match requests.iter().find(|d| d.required) {
        Some(d) => Err(DeviceError::NotRegistered(d.name.clone())),
        None => Ok(()),
    }
}

/// A CDI spec file in `dir` (`*.json`, `*.yaml`, `*.yml`), if any; a missing or unreadable
/// dir has none.
fn first_spec(dir: &Path) -> Option<PathBuf> {
    let mut specs: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| matches!(e, "json" | "yaml" | "yml"))
        })
        .collect();
    specs.sort();
    specs.into_iter().next()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_llb::{ExecOp, ExecSandbox, NetworkMode};

    fn def(devices: &[(&str, bool)]) -> Definition {
        let mut def = Definition::new();
        let op = Op::Exec(Box::new(ExecOp {
            args: vec!["true".into()],
            env: vec![],
            cwd: "/".into(),
            user: String::new(),
            network: NetworkMode::Host,
            mounts: vec![],
            caches: vec![],
            tmpfs: vec![],
            secrets: vec![],
            ssh: vec![],
            sandbox: ExecSandbox {
                devices: devices
                    .iter()
                    .map(|(n, r)| DeviceRequest {
                        name: n.to_string(),
                        required: *r,
                    })
                    .collect(),
                ..ExecSandbox::default()
            },
        }));
        def.add(op, vec![], "run");
        def
    }

    #[test]
    fn without_specs_devices_are_unregistered() {
        let empty = tempfile::tempdir().unwrap();
        let dirs = [empty.path(), Path::new("/nonexistent/cdi")];
        check(&def(&[]), &dirs).unwrap();
        check(
            &def(&[("/dev/fuse", false), ("vendor.com/x=y", false)]),
            &dirs,
        )
        .unwrap();
        let err = check(&def(&[("a", false), ("/dev/fuse", true)]), &dirs).unwrap_err();
        assert_eq!(
            err.to_string(),
            "required device \"/dev/fuse\" is not registered"
        );
    }

    #[test]
    fn specs_on_the_host_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("README"), "").unwrap();
        check(&def(&[("x", false)]), &[dir.path()]).unwrap();
        std::fs::write(dir.path().join("vendor.yaml"), "cdiVersion: 0.6.0").unwrap();
        let err = check(&def(&[("x", false)]), &[dir.path()]).unwrap_err();
        assert!(err.to_string().contains("not supported yet"), "{err}");
        assert!(err.to_string().contains("vendor.yaml"), "{err}");
    }
}
