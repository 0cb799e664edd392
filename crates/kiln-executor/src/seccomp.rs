//! The default seccomp profile: in effect Docker's default. Everything not listed fails with
//! EPERM; the listed syscalls are allowed, some only when the container holds a capability, on
//! an architecture, or with given arguments. Conditions are evaluated here, against the spec's
//! capability set, as Docker does when it builds a container's spec.
//!
//! runc skips names its libseccomp does not know, so the table may name syscalls newer than it.

use oci_spec::OciSpecError;
use oci_spec::runtime::{
    Arch, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder,
    LinuxSeccompBuilder, LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};

const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

/// Namespace flags a process may not ask `clone` for without `CAP_SYS_ADMIN`: NEWNS, NEWCGROUP,
/// NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET.
const CLONE_NS_FLAGS: u64 =
    0x0002_0000 | 0x0200_0000 | 0x0400_0000 | 0x0800_0000 | 0x1000_0000 | 0x2000_0000 | 0x4000_0000;
const AF_VSOCK: u64 = 40;

/// When a group of syscalls applies.
#[derive(Clone, Copy)]
enum When {
    Always,
    /// The container holds this capability.
    Cap(Capability),
    /// The container lacks this capability.
    NoCap(Capability),
    /// The host is one of these (Rust `target_arch` names).
    Arch(&'static [&'static str]),
}

#[derive(Clone, Copy)]
enum Args {
    Any,
    /// Argument `index` equals one of the values (one rule per value, as libseccomp ORs rules).
    OneOf(usize, &'static [u64]),
    /// `args[index] & mask == 0`.
    MaskedZero(usize, u64),
    /// `args[index] != value`.
    Not(usize, u64),
}

#[derive(Clone, Copy)]
enum Action {
    Allow,
    Errno(u32),
}

struct Group {
    names: &'static [&'static str],
    when: When,
    args: Args,
    action: Action,
}

const fn allow(names: &'static [&'static str], when: When) -> Group {
    Group {
        names,
        when,
        args: Args::Any,
        action: Action::Allow,
    }
}

/// Syscalls every container may make: files, memory, signals, sockets, time, IPC, scheduling.
#[rustfmt::skip]
const BASE: &[&str] = &[
    "accept", "accept4", "access", "adjtimex", "alarm", "bind", "brk", "cachestat", "capget",
    "capset", "chdir", "chmod", "chown", "chown32", "clock_adjtime", "clock_adjtime64",
    "clock_getres", "clock_getres_time64", "clock_gettime", "clock_gettime64", "clock_nanosleep",
    "clock_nanosleep_time64", "close", "close_range", "connect", "copy_file_range", "creat",
    "dup", "dup2", "dup3", "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old",
    "epoll_pwait", "epoll_pwait2", "epoll_wait", "epoll_wait_old", "eventfd", "eventfd2",
    "execve", "execveat", "exit", "exit_group", "faccessat", "faccessat2", "fadvise64",
    "fadvise64_64", "fallocate", "fanotify_mark", "fchdir", "fchmod", "fchmodat", "fchmodat2",
    "fchown", "fchown32", "fchownat", "fcntl", "fcntl64", "fdatasync", "fgetxattr", "flistxattr",
    "flock", "fork", "fremovexattr", "fsetxattr", "fstat", "fstat64", "fstatat64", "fstatfs",
    "fstatfs64", "fsync", "ftruncate", "ftruncate64", "futex", "futex_requeue", "futex_time64",
    "futex_wait", "futex_waitv", "futex_wake", "futimesat", "get_robust_list", "get_thread_area",
    "getcpu", "getcwd", "getdents", "getdents64", "getegid", "getegid32", "geteuid",
    "geteuid32", "getgid", "getgid32", "getgroups", "getgroups32", "getitimer", "getpeername",
    "getpgid", "getpgrp", "getpid", "getppid", "getpriority", "getrandom", "getresgid",
    "getresgid32", "getresuid", "getresuid32", "getrlimit", "getrusage", "getsid",
    "getsockname", "getsockopt", "gettid", "gettimeofday", "getuid", "getuid32", "getxattr",
    "inotify_add_watch", "inotify_init", "inotify_init1", "inotify_rm_watch", "io_cancel",
    "io_destroy", "io_getevents", "io_pgetevents", "io_pgetevents_time64", "io_setup",
    "io_submit", "ioctl", "ioprio_get", "ioprio_set", "ipc", "kill", "landlock_add_rule",
    "landlock_create_ruleset", "landlock_restrict_self", "lchown", "lchown32", "lgetxattr",
    "link", "linkat", "listen", "listxattr", "llistxattr", "_llseek", "lremovexattr", "lseek",
    "lsetxattr", "lstat", "lstat64", "madvise", "map_shadow_stack", "membarrier",
    "memfd_create", "memfd_secret", "mincore", "mkdir", "mkdirat", "mknod", "mknodat", "mlock",
    "mlock2", "mlockall", "mmap", "mmap2", "mprotect", "mq_getsetattr", "mq_notify", "mq_open",
    "mq_timedreceive", "mq_timedreceive_time64", "mq_timedsend", "mq_timedsend_time64",
    "mq_unlink", "mremap", "msgctl", "msgget", "msgrcv", "msgsnd", "msync", "munlock",
    "munlockall", "munmap", "nanosleep", "newfstatat", "_newselect", "open", "openat",
    "openat2", "pause", "pidfd_open", "pidfd_send_signal", "pipe", "pipe2", "pkey_alloc",
    "pkey_free", "pkey_mprotect", "poll", "ppoll", "ppoll_time64", "prctl", "pread64", "preadv",
    "preadv2", "prlimit64", "process_mrelease", "pselect6", "pselect6_time64", "pwrite64",
    "pwritev", "pwritev2", "read", "readahead", "readlink", "readlinkat", "readv", "recv",
    "recvfrom", "recvmmsg", "recvmmsg_time64", "recvmsg", "remap_file_pages", "removexattr",
    "rename", "renameat", "renameat2", "restart_syscall", "rmdir", "rseq", "rt_sigaction",
    "rt_sigpending", "rt_sigprocmask", "rt_sigqueueinfo", "rt_sigreturn", "rt_sigsuspend",
    "rt_sigtimedwait", "rt_sigtimedwait_time64", "rt_tgsigqueueinfo", "sched_get_priority_max",
    "sched_get_priority_min", "sched_getaffinity", "sched_getattr", "sched_getparam",
    "sched_getscheduler", "sched_rr_get_interval", "sched_rr_get_interval_time64",
    "sched_setaffinity", "sched_setattr", "sched_setparam", "sched_setscheduler", "sched_yield",
    "seccomp", "select", "semctl", "semget", "semop", "semtimedop", "semtimedop_time64", "send",
    "sendfile", "sendfile64", "sendmmsg", "sendmsg", "sendto", "set_robust_list",
    "set_thread_area", "set_tid_address", "setfsgid", "setfsgid32", "setfsuid", "setfsuid32",
    "setgid", "setgid32", "setgroups", "setgroups32", "setitimer", "setpgid", "setpriority",
    "setregid", "setregid32", "setresgid", "setresgid32", "setresuid", "setresuid32",
    "setreuid", "setreuid32", "setrlimit", "setsid", "setsockopt", "setuid", "setuid32",
    "setxattr", "shmat", "shmctl", "shmdt", "shmget", "shutdown", "sigaltstack", "signalfd",
    "signalfd4", "sigprocmask", "sigreturn", "socketcall", "socketpair", "splice", "stat",
    "stat64", "statfs", "statfs64", "statx", "symlink", "symlinkat", "sync", "sync_file_range",
    "syncfs", "sysinfo", "tee", "tgkill", "time", "timer_create", "timer_delete",
    "timer_getoverrun", "timer_gettime", "timer_gettime64", "timer_settime", "timer_settime64",
    "timerfd_create", "timerfd_gettime", "timerfd_gettime64", "timerfd_settime",
    "timerfd_settime64", "times", "tkill", "truncate", "truncate64", "ugetrlimit", "umask",
    "uname", "unlink", "unlinkat", "utime", "utimensat", "utimensat_time64", "utimes", "vfork",
    "vmsplice", "wait4", "waitid", "waitpid", "write", "writev",
    // Safe since Linux 4.8, where ptrace can no longer bypass seccomp; kiln needs newer anyway.
    "process_vm_readv", "process_vm_writev", "ptrace",
];

const GROUPS: &[Group] = &[
    allow(BASE, When::Always),
    // Sockets of every family but vsock, which reaches the host of a VM.
    Group {
        names: &["socket"],
        when: When::Always,
        args: Args::Not(0, AF_VSOCK),
        action: Action::Allow,
    },
    // Only the personalities programs really set: Linux, UNAME26, PER_LINUX32, and the query.
    Group {
        names: &["personality"],
        when: When::Always,
        args: Args::OneOf(0, &[0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff]),
        action: Action::Allow,
    },
    allow(
        &["arch_prctl", "modify_ldt"],
        When::Arch(&["x86_64", "x86"]),
    ),
    allow(
        &[
            "arm_fadvise64_64",
            "arm_sync_file_range",
            "sync_file_range2",
            "breakpoint",
            "cacheflush",
            "set_tls",
        ],
        When::Arch(&["aarch64", "arm"]),
    ),
    allow(&["open_by_handle_at"], When::Cap(Capability::DacReadSearch)),
    allow(
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "name_to_handle_at",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
        When::Cap(Capability::SysAdmin),
    ),
    // Without CAP_SYS_ADMIN, clone may make threads and processes but no namespaces.
    Group {
        names: &["clone"],
        when: When::NoCap(Capability::SysAdmin),
        args: Args::MaskedZero(0, CLONE_NS_FLAGS),
        action: Action::Allow,
    },
    // clone3 passes its flags in memory, out of seccomp's reach: ENOSYS makes libc fall back
    // to clone, which is filtered above.
    Group {
        names: &["clone3"],
        when: When::NoCap(Capability::SysAdmin),
        args: Args::Any,
        action: Action::Errno(ENOSYS),
    },
    allow(&["reboot"], When::Cap(Capability::SysBoot)),
    allow(&["chroot"], When::Cap(Capability::SysChroot)),
    allow(
        &["delete_module", "init_module", "finit_module"],
        When::Cap(Capability::SysModule),
    ),
    allow(&["acct"], When::Cap(Capability::SysPacct)),
    allow(
        &["kcmp", "pidfd_getfd", "process_madvise"],
        When::Cap(Capability::SysPtrace),
    ),
    allow(&["iopl", "ioperm"], When::Cap(Capability::SysRawio)),
    allow(
        &["settimeofday", "stime", "clock_settime", "clock_settime64"],
        When::Cap(Capability::SysTime),
    ),
    allow(&["vhangup"], When::Cap(Capability::SysTtyConfig)),
    allow(
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
        When::Cap(Capability::SysNice),
    ),
    allow(&["syslog"], When::Cap(Capability::Syslog)),
    allow(&["bpf"], When::Cap(Capability::Bpf)),
    allow(&["perf_event_open"], When::Cap(Capability::Perfmon)),
];

/// The seccomp architectures of this host: the native one and those it can also run.
fn architectures() -> Vec<Arch> {
    match std::env::consts::ARCH {
        "x86_64" => vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32],
        "x86" => vec![Arch::ScmpArchX86],
        "aarch64" => vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm],
        "arm" => vec![Arch::ScmpArchArm],
        "riscv64" => vec![Arch::ScmpArchRiscv64],
        "s390x" => vec![Arch::ScmpArchS390x, Arch::ScmpArchS390],
        "powerpc64" => vec![Arch::ScmpArchPpc64le],
        _ => vec![Arch::ScmpArchNative],
    }
}

/// The profile for a container holding `caps` (its bounding set).
pub(crate) fn default_profile(caps: &[Capability]) -> Result<LinuxSeccomp, OciSpecError> {
    let arch = std::env::consts::ARCH;
    let mut syscalls = Vec::new();
    for g in GROUPS {
        let applies = match g.when {
            When::Always => true,
            When::Cap(c) => caps.contains(&c),
            When::NoCap(c) => !caps.contains(&c),
            When::Arch(arches) => arches.contains(&arch),
        };
        if applies {
            syscalls.extend(rules(g)?);
        }
    }
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActErrno)
        .default_errno_ret(EPERM)
        .architectures(architectures())
        .syscalls(syscalls)
        .build()
}

fn rules(g: &Group) -> Result<Vec<LinuxSyscall>, OciSpecError> {
    let names: Vec<String> = g.names.iter().map(|n| n.to_string()).collect();
    let arg = |index: usize, value: u64, value_two: u64, op| -> Result<_, OciSpecError> {
        LinuxSeccompArgBuilder::default()
            .index(index)
            .value(value)
            .value_two(value_two)
            .op(op)
            .build()
    };
    let arg_sets: Vec<Option<Vec<LinuxSeccompArg>>> = match g.args {
        Args::Any => vec![None],
        Args::OneOf(i, values) => values
            .iter()
            .map(|v| Ok(Some(vec![arg(i, *v, 0, LinuxSeccompOperator::ScmpCmpEq)?])))
            .collect::<Result<_, OciSpecError>>()?,
        Args::MaskedZero(i, mask) => vec![Some(vec![arg(
            i,
            mask,
            0,
            LinuxSeccompOperator::ScmpCmpMaskedEq,
        )?])],
        Args::Not(i, v) => vec![Some(vec![arg(i, v, 0, LinuxSeccompOperator::ScmpCmpNe)?])],
    };
    arg_sets
        .into_iter()
        .map(|args| {
            let mut b = LinuxSyscallBuilder::default().names(names.clone());
            b = match g.action {
                Action::Allow => b.action(LinuxSeccompAction::ScmpActAllow),
                Action::Errno(errno) => b.action(LinuxSeccompAction::ScmpActErrno).errno_ret(errno),
            };
            if let Some(args) = args {
                b = b.args(args);
            }
            b.build()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule_for<'a>(p: &'a LinuxSeccomp, name: &str) -> Vec<&'a LinuxSyscall> {
        p.syscalls()
            .as_deref()
            .unwrap_or_default()
            .iter()
            .filter(|s| s.names().iter().any(|n| n == name))
            .collect()
    }

    #[test]
    fn default_caps_deny_namespaces_mounts_and_modules() {
        let p = default_profile(&[Capability::Chown, Capability::SysChroot]).unwrap();
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(p.default_errno_ret(), Some(EPERM));
        for denied in [
            "mount",
            "umount2",
            "unshare",
            "setns",
            "init_module",
            "finit_module",
            "keyctl",
            "add_key",
            "request_key",
            "kexec_load",
            "open_by_handle_at",
            "bpf",
            "reboot",
        ] {
            assert!(rule_for(&p, denied).is_empty(), "{denied} is allowed");
        }
        assert_eq!(
            rule_for(&p, "chroot").len(),
            1,
            "CAP_SYS_CHROOT allows chroot"
        );
        assert_eq!(rule_for(&p, "read").len(), 1);
        let clone = rule_for(&p, "clone");
        assert_eq!(clone.len(), 1);
        let arg = clone[0].args().as_ref().unwrap()[0];
        assert_eq!(arg.op(), LinuxSeccompOperator::ScmpCmpMaskedEq);
        assert_eq!(arg.value(), CLONE_NS_FLAGS);
        let clone3 = rule_for(&p, "clone3");
        assert_eq!(clone3[0].errno_ret(), Some(ENOSYS));
        assert_eq!(rule_for(&p, "personality").len(), 5);
    }

    #[test]
    fn capabilities_unlock_their_syscalls() {
        let p = default_profile(&[Capability::SysAdmin, Capability::SysModule]).unwrap();
        for allowed in ["mount", "unshare", "setns", "finit_module"] {
            assert!(!rule_for(&p, allowed).is_empty(), "{allowed} is denied");
        }
        let clone = rule_for(&p, "clone");
        assert_eq!(clone.len(), 1);
        assert!(
            clone[0].args().is_none(),
            "clone is unrestricted with CAP_SYS_ADMIN"
        );
        assert!(
            rule_for(&p, "clone3")
                .iter()
                .all(|r| r.action() == LinuxSeccompAction::ScmpActAllow)
        );
    }

    #[test]
    fn profile_serialises_as_runc_expects() {
        let p = default_profile(&[]).unwrap();
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(json["defaultErrnoRet"], 1);
        assert!(!json["architectures"].as_array().unwrap().is_empty());
        let socket = json["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["names"][0] == "socket")
            .unwrap();
        assert_eq!(socket["args"][0]["op"], "SCMP_CMP_NE");
        assert_eq!(socket["args"][0]["value"], AF_VSOCK);
    }
}
