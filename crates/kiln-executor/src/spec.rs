//! Generation of the runtime spec (`config.json`) with Docker/BuildKit defaults.

use std::path::Path;

use oci_spec::OciSpecError;
use oci_spec::runtime::{
    Capabilities, Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxNamespace,
    LinuxNamespaceBuilder, LinuxNamespaceType, Mount as OciMount, MountBuilder, ProcessBuilder,
    RootBuilder, Spec, SpecBuilder, UserBuilder, get_default_maskedpaths,
    get_default_readonly_paths,
};

use crate::{DEFAULT_PATH, Mount, Network, ProcessSpec};

/// Destinations of the default mounts whose mount points live in the rootfs.
pub(crate) const DEFAULT_MOUNT_POINTS: &[&str] =
    &["/proc", "/dev", "/sys", "/etc/hosts", "/etc/resolv.conf"];

/// Docker's default capability set.
const DEFAULT_CAPS: &[Capability] = &[
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

pub(crate) struct SpecInput<'a> {
    pub rootfs: &'a Path,
    pub process: &'a ProcessSpec,
    /// Final environment (see [`finalize_env`]).
    pub env: Vec<String>,
    pub mounts: &'a [Mount],
    pub hosts: &'a Path,
    pub resolv_conf: &'a Path,
    pub network: Network,
    pub readonly_rootfs: bool,
}

/// Adds `PATH`, `HOME` and, with a terminal, `TERM` when the caller did not set them.
pub(crate) fn finalize_env(env: &[String], home: &str, terminal: bool) -> Vec<String> {
    let has = |key: &str| {
        env.iter()
            .any(|e| e.split_once('=').is_some_and(|(k, _)| k == key))
    };
    let mut out = env.to_vec();
    if !has("PATH") {
        out.push(format!("PATH={DEFAULT_PATH}"));
    }
    if !has("HOME") {
        out.push(format!("HOME={home}"));
    }
    if terminal && !has("TERM") {
        out.push("TERM=xterm".to_string());
    }
    out
}

pub(crate) fn build(input: SpecInput<'_>) -> Result<Spec, OciSpecError> {
    let p = input.process;
    let caps: Capabilities = DEFAULT_CAPS.iter().copied().collect();
    // Inheritable and ambient stay empty (CVE-2022-24769), as in Docker and containerd.
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .inheritable(Capabilities::new())
        .ambient(Capabilities::new())
        .build()?;
    let user = UserBuilder::default()
        .uid(p.user.uid)
        .gid(p.user.gid)
        .additional_gids(p.user.additional_gids.clone())
        .umask(0o022u32)
        .build()?;
    let process = ProcessBuilder::default()
        .terminal(p.terminal)
        .user(user)
        .args(p.args.clone())
        .env(input.env)
        .cwd(p.cwd.clone())
        .capabilities(capabilities)
        .no_new_privileges(true)
        // No rlimits: the process inherits ours, as Docker containers inherit dockerd's.
        .rlimits(Vec::new())
        .build()?;

    let mut mounts = default_mounts(input.hosts, input.resolv_conf)?;
    for m in input.mounts {
        mounts.push(extra_mount(m)?);
    }

    let mut ns_types = vec![
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
    ];
    // Host: no network namespace of our own. A new one gets loopback up from runc.
    if input.network == Network::None {
        ns_types.push(LinuxNamespaceType::Network);
    }
    let namespaces = ns_types
        .into_iter()
        .map(|t| LinuxNamespaceBuilder::default().typ(t).build())
        .collect::<Result<Vec<LinuxNamespace>, _>>()?;
    // No cgroups path and no resources: runc picks its default, which works on v1 and v2.
    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .masked_paths(get_default_maskedpaths())
        .readonly_paths(get_default_readonly_paths())
        .build()?;

    SpecBuilder::default()
        .version("1.0.2")
        .root(
            RootBuilder::default()
                .path(input.rootfs)
                .readonly(input.readonly_rootfs)
                .build()?,
        )
        .hostname(p.hostname.clone())
        .process(process)
        .mounts(mounts)
        .linux(linux)
        .build()
}

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Result<OciMount, OciSpecError> {
    MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
        .build()
}

fn default_mounts(hosts: &Path, resolv_conf: &Path) -> Result<Vec<OciMount>, OciSpecError> {
    let ro_file = ["rbind", "ro", "nosuid", "nodev", "noexec"];
    Ok(vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        )?,
        MountBuilder::default()
            .destination("/etc/hosts")
            .typ("bind")
            .source(hosts)
            .options(ro_file.map(String::from).to_vec())
            .build()?,
        MountBuilder::default()
            .destination("/etc/resolv.conf")
            .typ("bind")
            .source(resolv_conf)
            .options(ro_file.map(String::from).to_vec())
            .build()?,
    ])
}

fn extra_mount(m: &Mount) -> Result<OciMount, OciSpecError> {
    match m {
        Mount::Bind {
            source,
            destination,
            readonly,
        } => MountBuilder::default()
            .destination(destination)
            .typ("bind")
            .source(source)
            .options(vec![
                "rbind".to_string(),
                if *readonly { "ro" } else { "rw" }.to_string(),
            ])
            .build(),
        Mount::Tmpfs { destination, size } => {
            let mut options = vec![
                "nosuid".to_string(),
                "nodev".to_string(),
                "mode=1777".to_string(),
            ];
            if let Some(size) = size {
                options.push(format!("size={size}"));
            }
            MountBuilder::default()
                .destination(destination)
                .typ("tmpfs")
                .source("tmpfs")
                .options(options)
                .build()
        }
    }
}

/// `/etc/hosts` for a container on the host network.
pub(crate) fn hosts_file(hostname: &str) -> String {
    let mut s = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    if !hostname.is_empty() && hostname != "localhost" {
        s.push_str(&format!("127.0.0.1\t{hostname}\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::User;
    use std::path::PathBuf;

    fn process() -> ProcessSpec {
        ProcessSpec {
            args: vec!["/bin/sh".into(), "-c".into(), "true".into()],
            env: vec!["A=1".into()],
            cwd: "/work".into(),
            user: User {
                uid: 1000,
                gid: 100,
                additional_gids: vec![10],
            },
            hostname: "buildkitsandbox".into(),
            terminal: false,
        }
    }

    #[test]
    fn env_defaults_are_added_only_when_missing() {
        let env = finalize_env(&["A=1".into()], "/root", false);
        assert_eq!(env, ["A=1", &format!("PATH={DEFAULT_PATH}"), "HOME=/root"]);
        let env = finalize_env(&["PATH=/x".into(), "HOME=/h".into()], "/root", true);
        assert_eq!(env, ["PATH=/x", "HOME=/h", "TERM=xterm"]);
        // A key that merely starts with PATH is not PATH.
        let env = finalize_env(&["PATHX=1".into()], "/", false);
        assert!(env.iter().any(|e| e.starts_with("PATH=/usr")));
    }

    #[test]
    fn spec_has_build_defaults() {
        let p = process();
        let extra = [
            Mount::Bind {
                source: PathBuf::from("/host/src"),
                destination: "/src".into(),
                readonly: true,
            },
            Mount::Tmpfs {
                destination: "/tmp".into(),
                size: Some(1024),
            },
        ];
        let spec = build(SpecInput {
            rootfs: Path::new("/r"),
            process: &p,
            env: finalize_env(&p.env, "/", false),
            mounts: &extra,
            hosts: Path::new("/b/hosts"),
            resolv_conf: Path::new("/b/resolv.conf"),
            network: Network::Host,
            readonly_rootfs: false,
        })
        .unwrap();
        let json = serde_json::to_value(&spec).unwrap();

        assert_eq!(json["root"]["path"], "/r");
        assert_eq!(json["root"]["readonly"], false);
        assert_eq!(json["hostname"], "buildkitsandbox");
        let proc_ = &json["process"];
        assert_eq!(proc_["user"]["uid"], 1000);
        assert_eq!(proc_["user"]["additionalGids"][0], 10);
        assert_eq!(proc_["noNewPrivileges"], true);
        assert_eq!(proc_["cwd"], "/work");
        let bounding = proc_["capabilities"]["bounding"].as_array().unwrap();
        assert_eq!(bounding.len(), DEFAULT_CAPS.len());
        assert!(bounding.contains(&"CAP_CHOWN".into()));
        assert!(!bounding.contains(&"CAP_SYS_ADMIN".into()));
        assert_eq!(proc_["capabilities"]["inheritable"], serde_json::json!([]));
        assert_eq!(proc_["capabilities"]["ambient"], serde_json::json!([]));
        assert_eq!(proc_["rlimits"], serde_json::json!([]));

        let ns: Vec<&str> = json["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert_eq!(ns.len(), 4);
        assert!(
            !ns.contains(&"network"),
            "host network has no net namespace"
        );
        for t in ["pid", "ipc", "uts", "mount"] {
            assert!(ns.contains(&t), "{t} missing from {ns:?}");
        }
        assert!(json["linux"]["maskedPaths"].as_array().unwrap().len() > 5);
        assert!(json["linux"].get("cgroupsPath").is_none());

        let mounts = json["mounts"].as_array().unwrap();
        let dests: Vec<&str> = mounts
            .iter()
            .map(|m| m["destination"].as_str().unwrap())
            .collect();
        for d in DEFAULT_MOUNT_POINTS {
            assert!(dests.contains(d), "{d} missing");
        }
        let sys = mounts.iter().find(|m| m["destination"] == "/sys").unwrap();
        assert!(sys["options"].as_array().unwrap().contains(&"ro".into()));
        let hosts = mounts
            .iter()
            .find(|m| m["destination"] == "/etc/hosts")
            .unwrap();
        assert_eq!(hosts["source"], "/b/hosts");
        let src = mounts.iter().find(|m| m["destination"] == "/src").unwrap();
        assert_eq!(src["options"], serde_json::json!(["rbind", "ro"]));
        let tmp = mounts.iter().find(|m| m["destination"] == "/tmp").unwrap();
        assert!(
            tmp["options"]
                .as_array()
                .unwrap()
                .contains(&"size=1024".into())
        );
    }

    #[test]
    fn network_none_gets_its_own_namespace() {
        let p = ProcessSpec {
            args: vec!["true".into()],
            env: vec![],
            cwd: "/".into(),
            user: crate::User::default(),
            hostname: "h".into(),
            terminal: false,
        };
        let spec = build(SpecInput {
            rootfs: Path::new("/r"),
            process: &p,
            env: finalize_env(&p.env, "/", false),
            mounts: &[],
            hosts: Path::new("/b/hosts"),
            resolv_conf: Path::new("/b/resolv.conf"),
            network: Network::None,
            readonly_rootfs: false,
        })
        .unwrap();
        let json = serde_json::to_value(&spec).unwrap();
        let ns = json["linux"]["namespaces"].as_array().unwrap();
        assert_eq!(ns.len(), 5);
        assert!(
            ns.iter()
                .any(|n| n["type"] == "network" && n.get("path").is_none())
        );
    }

    #[test]
    fn hosts_file_names_the_hostname() {
        let h = hosts_file("buildkitsandbox");
        assert!(h.contains("127.0.0.1\tlocalhost\n"));
        assert!(h.lines().any(|l| l == "127.0.0.1\tbuildkitsandbox"));
        assert!(!hosts_file("").lines().any(|l| l.ends_with('\t')));
    }
}
