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
mod tests;
