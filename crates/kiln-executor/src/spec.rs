//! Generation of the runtime spec (`config.json`) with Docker/BuildKit defaults.

use std::path::{Path, PathBuf};

use oci_spec::OciSpecError;
use oci_spec::runtime::{
    Capabilities, Capability, HookBuilder, HooksBuilder, LinuxBuilder, LinuxCapabilitiesBuilder,
    LinuxCpuBuilder, LinuxDeviceBuilder, LinuxDeviceCgroupBuilder, LinuxDeviceType,
    LinuxMemoryBuilder, LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxResourcesBuilder, Mount as OciMount, MountBuilder, PosixRlimit, PosixRlimitBuilder,
    PosixRlimitType, ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
    get_default_maskedpaths, get_default_readonly_paths,
};

use crate::{DEFAULT_PATH, Mount, Network, ProcessSpec, Rlimit, Sandbox, Security};

/// Destinations of the default mounts whose mount points live in the rootfs.
pub(crate) const DEFAULT_MOUNT_POINTS: &[&str] =
    &["/proc", "/dev", "/sys", "/etc/hosts", "/etc/resolv.conf"];

/// Docker's default capability set.
pub(crate) const DEFAULT_CAPS: &[Capability] = &[
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

/// Every capability with its bit number, for `--security=insecure`.
const ALL_CAPS: &[(Capability, u32)] = &[
    (Capability::AuditControl, 30),
    (Capability::AuditRead, 37),
    (Capability::AuditWrite, 29),
    (Capability::BlockSuspend, 36),
    (Capability::Bpf, 39),
    (Capability::CheckpointRestore, 40),
    (Capability::Chown, 0),
    (Capability::DacOverride, 1),
    (Capability::DacReadSearch, 2),
    (Capability::Fowner, 3),
    (Capability::Fsetid, 4),
    (Capability::IpcLock, 14),
    (Capability::IpcOwner, 15),
    (Capability::Kill, 5),
    (Capability::Lease, 28),
    (Capability::LinuxImmutable, 9),
    (Capability::MacAdmin, 33),
    (Capability::MacOverride, 32),
    (Capability::Mknod, 27),
    (Capability::NetAdmin, 12),
    (Capability::NetBindService, 10),
    (Capability::NetBroadcast, 11),
    (Capability::NetRaw, 13),
    (Capability::Perfmon, 38),
    (Capability::Setfcap, 31),
    (Capability::Setgid, 6),
    (Capability::Setpcap, 8),
    (Capability::Setuid, 7),
    (Capability::SysAdmin, 21),
    (Capability::SysBoot, 22),
    (Capability::SysChroot, 18),
    (Capability::SysModule, 16),
    (Capability::SysNice, 23),
    (Capability::SysPacct, 20),
    (Capability::SysPtrace, 19),
    (Capability::SysRawio, 17),
    (Capability::SysResource, 24),
    (Capability::SysTime, 25),
    (Capability::SysTtyConfig, 26),
    (Capability::Syslog, 34),
    (Capability::WakeAlarm, 35),
];

/// The capabilities `--security=insecure` grants: every one this process may pass on (its
/// bounding set), as runc fails to start a container asking for more.
fn insecure_caps() -> Vec<Capability> {
    let bounding = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapBnd:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(u64::MAX);
    ALL_CAPS
        .iter()
        .filter(|(_, bit)| bounding & (1 << bit) != 0)
        .map(|(cap, _)| *cap)
        .collect()
}

/// Masked beside oci-spec's defaults, as Docker does: RAPL energy counters leak what other
/// processes compute (CVE-2020-8694).
const EXTRA_MASKED_PATHS: &[&str] = &["/sys/devices/virtual/powercap"];

/// `/dev/shm`'s size when the caller sets none: Docker's 64 MiB.
const DEFAULT_SHM_SIZE: u64 = 64 * 1024 * 1024;

pub(crate) struct SpecInput<'a> {
    /// The container id (the last component of a cgroup path under `--cgroup-parent`).
    pub id: &'a str,
    pub rootfs: &'a Path,
    pub process: &'a ProcessSpec,
    /// Final environment (see [`finalize_env`]).
    pub env: Vec<String>,
    pub mounts: &'a [Mount],
    pub hosts: &'a Path,
    pub resolv_conf: &'a Path,
    pub network: Network,
    pub readonly_rootfs: bool,
    pub sandbox: &'a Sandbox,
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
    let insecure = input.sandbox.security == Security::Insecure;
    let cap_list = if insecure {
        insecure_caps()
    } else {
        DEFAULT_CAPS.to_vec()
    };
    let caps: Capabilities = cap_list.iter().copied().collect();
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
        .no_new_privileges(!insecure)
        .rlimits(rlimits(&input.sandbox.rlimits)?)
        .build()?;

    let shm_size = input.sandbox.shm_size.unwrap_or(DEFAULT_SHM_SIZE);
    let mut mounts = default_mounts(input.hosts, input.resolv_conf, shm_size, insecure)?;
    for m in input.mounts {
        mounts.push(extra_mount(m)?);
    }

    let mut ns_types = vec![
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
    ];
    match input.network {
        // The host's network namespace: no network namespace of our own.
        Network::Host => {}
        // A new one, where runc brings up `lo` and nothing else.
        Network::None => ns_types.push(LinuxNamespaceType::Network),
    }
    let namespaces = ns_types
        .into_iter()
        .map(|t| LinuxNamespaceBuilder::default().typ(t).build())
        .collect::<Result<Vec<LinuxNamespace>, _>>()?;
    // Devices: deny all, then runc appends its defaults (null, zero, full, random, urandom,
    // tty, console, ptmx, pts), Docker's set. Insecure allows every device, as --privileged.
    let mut devices = vec![
        LinuxDeviceCgroupBuilder::default()
            .allow(insecure)
            .access("rwm")
            .build()?,
    ];
    let mut nodes = Vec::new();
    for d in &input.sandbox.devices {
        let typ = match d.kind {
            'b' => LinuxDeviceType::B,
            'p' => LinuxDeviceType::P,
            'u' => LinuxDeviceType::U,
            _ => LinuxDeviceType::C,
        };
        let mut node = LinuxDeviceBuilder::default()
            .path(PathBuf::from(&d.path))
            .typ(typ)
            .major(d.major)
            .minor(d.minor);
        if let Some(mode) = d.file_mode {
            node = node.file_mode(mode);
        }
        if let Some(uid) = d.uid {
            node = node.uid(uid);
        }
        if let Some(gid) = d.gid {
            node = node.gid(gid);
        }
        nodes.push(node.build()?);
        if typ != LinuxDeviceType::P {
            devices.push(
                LinuxDeviceCgroupBuilder::default()
                    .allow(true)
                    .typ(typ)
                    .major(d.major)
                    .minor(d.minor)
                    .access(d.permissions.clone())
                    .build()?,
            );
        }
    }
    let resources = cgroup_resources(input.sandbox, devices)?;
    // Without a cgroup parent no cgroups path: runc picks its default, which works on v1 and
    // v2. With one, `/<parent>/<id>` (cgroupfs paths, as runc's default driver takes them).
    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .resources(resources);
    if !nodes.is_empty() {
        linux = linux.devices(nodes);
    }
    if let Some(parent) = &input.sandbox.cgroup_parent {
        let parent = parent.trim_matches('/');
        let path = if parent.is_empty() {
            format!("/{}", input.id)
        } else {
            format!("/{parent}/{}", input.id)
        };
        linux = linux.cgroups_path(PathBuf::from(path));
    }
    linux = if insecure {
        linux.masked_paths(Vec::new()).readonly_paths(Vec::new())
    } else {
        let mut masked = get_default_maskedpaths();
        masked.extend(EXTRA_MASKED_PATHS.iter().map(|p| p.to_string()));
        linux
            .masked_paths(masked)
            .readonly_paths(get_default_readonly_paths())
            .seccomp(crate::seccomp::default_profile(&cap_list)?)
    };
    let linux = linux.build()?;

    let mut spec = SpecBuilder::default();
    if !input.sandbox.hooks.is_empty() {
        spec = spec.hooks(hooks(&input.sandbox.hooks)?);
    }
    spec.version("1.0.2")
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

/// The OCI hooks by stage, each stage's in the given order.
fn hooks(list: &[crate::Hook]) -> Result<oci_spec::runtime::Hooks, OciSpecError> {
    let mut by_stage: std::collections::BTreeMap<&str, Vec<oci_spec::runtime::Hook>> =
        Default::default();
    for h in list {
        let mut hook = HookBuilder::default()
            .path(PathBuf::from(&h.path))
            .args(h.args.clone())
            .env(h.env.clone());
        if let Some(t) = h.timeout {
            hook = hook.timeout(t);
        }
        by_stage
            .entry(h.stage.as_str())
            .or_default()
            .push(hook.build()?);
    }
    let mut hooks = HooksBuilder::default();
    for (stage, list) in by_stage {
        hooks = match stage {
            "prestart" =>
            {
                #[allow(deprecated)]
                hooks.prestart(list)
            }
            "createRuntime" => hooks.create_runtime(list),
            "createContainer" => hooks.create_container(list),
            "startContainer" => hooks.start_container(list),
            "poststart" => hooks.poststart(list),
            "poststop" => hooks.poststop(list),
            other => {
                return Err(OciSpecError::Other(format!("unknown hook stage `{other}`")));
            }
        };
    }
    hooks.build()
}

/// The device rules plus the memory and CPU limits of the sandbox.
fn cgroup_resources(
    sandbox: &Sandbox,
    devices: Vec<oci_spec::runtime::LinuxDeviceCgroup>,
) -> Result<oci_spec::runtime::LinuxResources, OciSpecError> {
    let mut resources = LinuxResourcesBuilder::default().devices(devices);
    let r = &sandbox.resources;
    if sandbox.memory_limit.is_some() || r.memory_swap.is_some() {
        let mut memory = LinuxMemoryBuilder::default();
        if let Some(limit) = sandbox.memory_limit {
            memory = memory.limit(i64::try_from(limit).unwrap_or(i64::MAX));
        }
        if let Some(swap) = r.memory_swap {
            memory = memory.swap(swap);
        }
        resources = resources.memory(memory.build()?);
    }
    let has_cpu = r.cpu_quota.is_some()
        || r.cpu_period.is_some()
        || r.cpu_shares.is_some()
        || r.cpuset_cpus.is_some()
        || r.cpuset_mems.is_some();
    if has_cpu {
        let mut cpu = LinuxCpuBuilder::default();
        if let Some(q) = r.cpu_quota {
            cpu = cpu.quota(q);
        }
        if let Some(p) = r.cpu_period {
            cpu = cpu.period(p);
        }
        if let Some(s) = r.cpu_shares {
            cpu = cpu.shares(s);
        }
        if let Some(c) = &r.cpuset_cpus {
            cpu = cpu.cpus(c.clone());
        }
        if let Some(m) = &r.cpuset_mems {
            cpu = cpu.mems(m.clone());
        }
        resources = resources.cpu(cpu.build()?);
    }
    resources.build()
}

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Result<OciMount, OciSpecError> {
    MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
        .build()
}

fn rlimits(limits: &[Rlimit]) -> Result<Vec<PosixRlimit>, OciSpecError> {
    limits
        .iter()
        .map(|l| {
            let typ = rlimit_type(&l.name)
                .ok_or_else(|| OciSpecError::Other(format!("unknown ulimit `{}`", l.name)))?;
            PosixRlimitBuilder::default()
                .typ(typ)
                .soft(l.soft)
                .hard(l.hard)
                .build()
        })
        .collect()
}

/// The resource a Docker `--ulimit` name limits (see [`crate::RLIMIT_NAMES`]).
fn rlimit_type(name: &str) -> Option<PosixRlimitType> {
    Some(match name {
        "core" => PosixRlimitType::RlimitCore,
        "cpu" => PosixRlimitType::RlimitCpu,
        "data" => PosixRlimitType::RlimitData,
        "fsize" => PosixRlimitType::RlimitFsize,
        "locks" => PosixRlimitType::RlimitLocks,
        "memlock" => PosixRlimitType::RlimitMemlock,
        "msgqueue" => PosixRlimitType::RlimitMsgqueue,
        "nice" => PosixRlimitType::RlimitNice,
        "nofile" => PosixRlimitType::RlimitNofile,
        "nproc" => PosixRlimitType::RlimitNproc,
        "rss" => PosixRlimitType::RlimitRss,
        "rtprio" => PosixRlimitType::RlimitRtprio,
        "rttime" => PosixRlimitType::RlimitRttime,
        "sigpending" => PosixRlimitType::RlimitSigpending,
        "stack" => PosixRlimitType::RlimitStack,
        _ => return None,
    })
}

fn default_mounts(
    hosts: &Path,
    resolv_conf: &Path,
    shm_size: u64,
    insecure: bool,
) -> Result<Vec<OciMount>, OciSpecError> {
    let ro_file = ["rbind", "ro", "nosuid", "nodev", "noexec"];
    let shm_size = format!("size={shm_size}");
    let sys_mode = if insecure { "rw" } else { "ro" };
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
            &["nosuid", "noexec", "nodev", "mode=1777", &shm_size],
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
            &["nosuid", "noexec", "nodev", sys_mode],
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

/// `/etc/hosts`: localhost, the hostname, then `extra` (`--add-host`) in order.
pub(crate) fn hosts_file(hostname: &str, extra: &[(String, String)]) -> String {
    let mut s = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    if !hostname.is_empty() && hostname != "localhost" {
        s.push_str(&format!("127.0.0.1\t{hostname}\n"));
    }
    for (name, address) in extra {
        s.push_str(&format!("{address}\t{name}\n"));
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
            id: "c1",
            rootfs: Path::new("/r"),
            process: &p,
            env: finalize_env(&p.env, "/", false),
            mounts: &extra,
            hosts: Path::new("/b/hosts"),
            resolv_conf: Path::new("/b/resolv.conf"),
            network: Network::Host,
            readonly_rootfs: false,
            sandbox: &Sandbox::default(),
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
        assert_eq!(json["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(
            json["linux"]["resources"]["devices"],
            serde_json::json!([{"allow": false, "access": "rwm"}])
        );
        let shm = json["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/dev/shm")
            .unwrap();
        assert!(
            shm["options"]
                .as_array()
                .unwrap()
                .contains(&format!("size={DEFAULT_SHM_SIZE}").into())
        );

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
    fn insecure_network_none_and_limits() {
        let p = process();
        let sandbox = Sandbox {
            security: Security::Insecure,
            extra_hosts: vec![],
            rlimits: vec![Rlimit {
                name: "nofile".into(),
                soft: 1024,
                hard: 2048,
            }],
            shm_size: Some(1 << 20),
            memory_limit: Some(1 << 30),
            resources: crate::Resources {
                memory_swap: Some(-1),
                cpu_quota: Some(50000),
                cpu_period: Some(100000),
                cpu_shares: Some(512),
                cpuset_cpus: Some("0".into()),
                cpuset_mems: None,
            },
            cgroup_parent: Some("/kiln.slice/".into()),
            devices: vec![crate::DeviceNode {
                path: "/dev/kilnnull".into(),
                kind: 'c',
                major: 1,
                minor: 3,
                file_mode: Some(0o666),
                uid: None,
                gid: Some(5),
                permissions: "rw".into(),
            }],
            hooks: vec![crate::Hook {
                stage: "createContainer".into(),
                path: "/bin/true".into(),
                args: vec!["true".into()],
                env: vec![],
                timeout: Some(5),
            }],
        };
        let spec = build(SpecInput {
            id: "c1",
            rootfs: Path::new("/r"),
            process: &p,
            env: vec![],
            mounts: &[],
            hosts: Path::new("/b/hosts"),
            resolv_conf: Path::new("/b/resolv.conf"),
            network: Network::None,
            readonly_rootfs: false,
            sandbox: &sandbox,
        })
        .unwrap();
        let json = serde_json::to_value(&spec).unwrap();
        let linux = &json["linux"];
        assert!(linux.get("seccomp").is_none(), "insecure has no seccomp");
        assert_eq!(linux["maskedPaths"], serde_json::json!([]));
        assert_eq!(linux["readonlyPaths"], serde_json::json!([]));
        assert_eq!(linux["resources"]["devices"][0]["allow"], true);
        assert_eq!(linux["cgroupsPath"], "/kiln.slice/c1");
        // A CDI device: its node and a cgroup rule for it; its hook by stage.
        let node = &linux["devices"][0];
        assert_eq!(
            (&node["path"], &node["type"], &node["major"], &node["minor"]),
            (&"/dev/kilnnull".into(), &"c".into(), &1.into(), &3.into())
        );
        assert_eq!(
            (&node["fileMode"], &node["gid"]),
            (&0o666.into(), &5.into())
        );
        let rule = &linux["resources"]["devices"][1];
        assert_eq!(
            (
                &rule["allow"],
                &rule["type"],
                &rule["major"],
                &rule["access"]
            ),
            (&true.into(), &"c".into(), &1.into(), &"rw".into())
        );
        assert_eq!(json["hooks"]["createContainer"][0]["path"], "/bin/true");
        assert_eq!(json["hooks"]["createContainer"][0]["timeout"], 5);
        assert_eq!(linux["resources"]["memory"]["limit"], 1 << 30);
        assert_eq!(linux["resources"]["memory"]["swap"], -1);
        let cpu = &linux["resources"]["cpu"];
        assert_eq!(
            (&cpu["quota"], &cpu["period"], &cpu["shares"], &cpu["cpus"]),
            (&50000.into(), &100000.into(), &512.into(), &"0".into())
        );
        assert!(cpu.get("mems").is_none());
        assert_eq!(linux["resources"]["memory"]["limit"], 1 << 30);
        assert!(
            linux["namespaces"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n["type"] == "network")
        );
        let bounding = json["process"]["capabilities"]["bounding"]
            .as_array()
            .unwrap();
        assert!(bounding.contains(&"CAP_SYS_ADMIN".into()));
        assert_eq!(bounding.len(), insecure_caps().len());
        assert!(bounding.len() > DEFAULT_CAPS.len());
        assert_eq!(json["process"]["noNewPrivileges"], false);
        assert_eq!(
            json["process"]["rlimits"],
            serde_json::json!([{"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 2048}])
        );
        let mounts = json["mounts"].as_array().unwrap();
        let sys = mounts.iter().find(|m| m["destination"] == "/sys").unwrap();
        assert!(sys["options"].as_array().unwrap().contains(&"rw".into()));
        let shm = mounts
            .iter()
            .find(|m| m["destination"] == "/dev/shm")
            .unwrap();
        assert!(
            shm["options"]
                .as_array()
                .unwrap()
                .contains(&"size=1048576".into())
        );
    }

    #[test]
    fn every_ulimit_name_maps_to_a_resource() {
        for name in crate::RLIMIT_NAMES {
            assert!(rlimit_type(name).is_some(), "{name}");
        }
        assert!(rlimit_type("files").is_none());
    }

    #[test]
    fn hosts_file_names_the_hostname() {
        let h = hosts_file("buildkitsandbox", &[]);
        assert!(h.contains("127.0.0.1\tlocalhost\n"));
        assert!(h.lines().any(|l| l == "127.0.0.1\tbuildkitsandbox"));
        assert!(!hosts_file("", &[]).lines().any(|l| l.ends_with('\t')));
        let extra = [("db.local".to_string(), "10.0.0.5".to_string())];
        assert!(hosts_file("h", &extra).ends_with("10.0.0.5\tdb.local\n"));
    }
}
