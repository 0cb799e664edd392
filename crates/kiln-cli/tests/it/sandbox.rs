//! The RUN sandbox from the outside: network modes, entitlements, escape attempts that must
//! fail, what `--security=insecure` unlocks, `--add-host`, `--ulimit`, `--shm-size`, and how a
//! killed step is reported. Every probe prints `ESCAPED-<what>` only when it succeeds.

use crate::support::Kiln;

/// The log lines of the one step whose name contains `needle`.
fn logs(run: &crate::support::Run, needle: &str) -> Vec<String> {
    run.progress().step(needle).logs.clone()
}

fn escaped(lines: &[String]) -> Vec<&String> {
    lines.iter().filter(|l| l.contains("ESCAPED-")).collect()
}

#[test]
fn network_none_has_only_loopback_and_no_route_out() {
    let Some(k) = Kiln::new("network_none_has_only_loopback_and_no_route_out") else {
        return;
    };
    let reg = &k.registry;
    let dockerfile = format!(
        "FROM busybox\n\
         RUN --network=none ip -o link; echo routes:; cat /proc/net/route; \
         wget -q -O- http://{reg}/v2/ && echo ESCAPED-net; echo none-done\n\
         RUN wget -q -O- http://{reg}/v2/ && echo && echo default-reached\n"
    );
    let ctx = k.context("ctx", &[("Dockerfile", &dockerfile)]);
    let run = k.build(&ctx, &[]).ok();
    let none = logs(&run, "--network=none");
    assert!(none.iter().any(|l| l == "none-done"), "{none:?}");
    assert!(escaped(&none).is_empty(), "{none:?}");
    // stdout and stderr interleave in any order, so lines are picked by their shape.
    let links: Vec<&String> = none.iter().filter(|l| l.contains("link/")).collect();
    assert_eq!(links.len(), 1, "only loopback: {none:?}");
    assert!(
        links[0].contains("lo:") && links[0].contains("UP"),
        "{none:?}"
    );
    // /proc/net/route: its header and no route.
    let routes: Vec<&String> = none.iter().filter(|l| l.contains('\t')).collect();
    assert_eq!(routes.len(), 1, "{none:?}");
    assert!(routes[0].starts_with("Iface"), "{none:?}");
    assert!(
        none.iter().any(|l| l.contains("Connection refused")),
        "{none:?}"
    );
    // The default network is the host's: the same registry is reachable. (No `wget -T`: this
    // busybox's wget crashes with it, sandbox or not.)
    let default = logs(&run, "default-reached");
    assert!(
        default.iter().any(|l| l == "default-reached"),
        "{default:?}"
    );
}

#[test]
fn host_network_and_insecure_need_entitlements() {
    let Some(k) = Kiln::new("host_network_and_insecure_need_entitlements") else {
        return;
    };
    let host = "FROM busybox\nRUN --network=host echo host-ok\n";
    let ctx = k.context("host", &[("Dockerfile", host)]);
    let err = k.build(&ctx, &[]).failed().stderr;
    assert!(err.contains("`--allow network.host`"), "{err}");
    assert!(err.contains("Dockerfile:2"), "{err}");
    assert!(err.contains("2 | RUN --network=host echo host-ok"), "{err}");
    let run = k.build(&ctx, &["--allow", "network.host"]).ok();
    assert!(logs(&run, "host-ok").iter().any(|l| l == "host-ok"));

    let insecure = "FROM busybox\nRUN --security=insecure echo insecure-ok\n";
    let ctx = k.context("insecure", &[("Dockerfile", insecure)]);
    let err = k.build(&ctx, &[]).failed().stderr;
    assert!(err.contains("`--allow security.insecure`"), "{err}");
    assert!(err.contains("2 | RUN --security=insecure"), "{err}");
    let err = k.build(&ctx, &["--allow", "network.host"]).failed().stderr;
    assert!(err.contains("`--allow security.insecure`"), "{err}");

    // The config may withhold an entitlement, as buildkitd's `insecure-entitlements`.
    let mut config = std::fs::read_to_string(&k.config).unwrap();
    config.insert_str(0, "insecure-entitlements = [\"network.host\"]\n");
    std::fs::write(&k.config, config).unwrap();
    let err = k
        .build(&ctx, &["--allow", "security.insecure"])
        .failed()
        .stderr;
    assert!(err.contains("insecure-entitlements"), "{err}");
    let err = k.build(&ctx, &["--allow", "bogus"]).failed().stderr;
    assert!(err.contains("invalid --allow"), "{err}");
}

#[test]
fn run_cannot_escape_the_sandbox() {
    let Some(k) = Kiln::new("run_cannot_escape_the_sandbox") else {
        return;
    };
    // A host file outside the rootfs, with contents no image has.
    let name = k.unique("kiln-host-marker");
    let secret = format!("contents of {name} only the host knows");
    let marker = std::env::temp_dir().join(format!("{name}.txt"));
    std::fs::write(&marker, &secret).unwrap();
    let m = marker.display();
    let dockerfile = format!(
        "FROM busybox\n\
         RUN cat {m} && echo ESCAPED-hostfile; \
         cat /proc/1/root{m} && echo ESCAPED-proc-root; \
         mkdir -p /mnt/p; mount -t proc proc /mnt/p && echo ESCAPED-mount-proc; \
         mount --bind /bin /mnt/p && echo ESCAPED-mount-bind; \
         mount -t tmpfs t /mnt/p && echo ESCAPED-mount-tmpfs; \
         echo junk > /probe.ko; insmod /probe.ko && echo ESCAPED-insmod; \
         echo kiln > /proc/sys/kernel/domainname && echo ESCAPED-proc-sys; \
         cat /sys/kernel/uevent_helper > /u; cat /u > /sys/kernel/uevent_helper && echo ESCAPED-sys; \
         unshare -U true && echo ESCAPED-unshare-user; \
         unshare -n true && echo ESCAPED-unshare-net; \
         mknod /sda b 8 0 && head -c1 /sda && echo ESCAPED-block-device; \
         grep -E '^(Seccomp|NoNewPrivs|CapEff):' /proc/self/status; \
         echo pid1=$(cat /proc/1/comm); ps -o comm | sort -u | tr '\\n' ' '; echo; \
         echo hostname=$(hostname); echo probes-done\n"
    );
    let ctx = k.context("ctx", &[("Dockerfile", &dockerfile)]);
    let run = k.build(&ctx, &[]);
    let _ = std::fs::remove_file(&marker);
    let run = run.ok();
    let lines = logs(&run, "probes-done");
    let text = lines.join("\n");
    assert!(lines.iter().any(|l| l == "probes-done"), "{text}");
    assert!(escaped(&lines).is_empty(), "{text}");
    assert!(
        !run.stderr.contains(&secret),
        "the host file leaked:\n{text}"
    );
    // insmod reached the kernel and was refused, rather than failing to read its file.
    assert!(
        text.contains("insmod: can't insert '/probe.ko': Operation not permitted"),
        "{text}"
    );
    assert!(text.contains("Seccomp:\t2"), "{text}");
    assert!(text.contains("NoNewPrivs:\t1"), "{text}");
    // Docker's default capability set: 0x00000000a80425fb.
    assert!(text.contains("CapEff:\t00000000a80425fb"), "{text}");
    // A private PID namespace: the shell is PID 1, and kiln and runc, running on the host
    // right now, are not visible.
    assert!(text.contains("pid1=sh"), "{text}");
    let procs = lines
        .iter()
        .find(|l| l.starts_with("COMMAND"))
        .unwrap_or_else(|| panic!("no ps output: {text}"));
    assert!(!procs.contains("kiln") && !procs.contains("runc"), "{text}");
    assert!(text.contains("hostname=buildkitsandbox"), "{text}");
}

#[test]
fn insecure_mode_can_mount() {
    let Some(k) = Kiln::new("insecure_mode_can_mount") else {
        return;
    };
    let dockerfile = "FROM busybox\n\
         RUN --security=insecure mkdir -p /mnt/p && mount -t tmpfs t /mnt/p && \
         touch /mnt/p/x && echo mounted && umount /mnt/p && \
         unshare -U true && echo unshared && grep Seccomp: /proc/self/status\n";
    let ctx = k.context("ctx", &[("Dockerfile", dockerfile)]);
    let run = k.build(&ctx, &["--allow", "security.insecure"]).ok();
    let lines = logs(&run, "--security=insecure");
    let text = lines.join("\n");
    assert!(text.contains("mounted"), "{text}");
    assert!(text.contains("unshared"), "{text}");
    assert!(text.contains("Seccomp:\t0"), "{text}");
}

#[test]
fn add_host_ulimit_and_shm_size_reach_every_run() {
    let Some(k) = Kiln::new("add_host_ulimit_and_shm_size_reach_every_run") else {
        return;
    };
    let dockerfile = "FROM busybox\n\
         RUN cat /etc/hosts; echo nofile=$(ulimit -Sn):$(ulimit -Hn); grep /dev/shm /proc/mounts\n";
    let ctx = k.context("ctx", &[("Dockerfile", dockerfile)]);
    let run = k
        .build(
            &ctx,
            &[
                "--add-host",
                "db.internal:10.1.2.3",
                "--add-host",
                "v6host:fd00::1",
                "--ulimit",
                "nofile=1024:2048",
                "--shm-size",
                "16m",
            ],
        )
        .ok();
    let text = logs(&run, "RUN cat /etc/hosts").join("\n");
    assert!(text.contains("10.1.2.3\tdb.internal"), "{text}");
    assert!(text.contains("fd00::1\tv6host"), "{text}");
    assert!(text.contains("nofile=1024:2048"), "{text}");
    assert!(text.contains("size=16384k"), "{text}");

    // They are part of the step's cache key: changing one reruns the step.
    let p = k
        .build(&ctx, &["--add-host", "db.internal:10.1.2.4"])
        .ok()
        .progress();
    let step = p.step("RUN cat /etc/hosts");
    assert!(!step.cached, "{}", p.raw());
    assert!(
        step.logs.iter().any(|l| l == "10.1.2.4\tdb.internal"),
        "{}",
        p.raw()
    );
    let err = k.build(&ctx, &["--ulimit", "bogus=1"]).failed().stderr;
    assert!(err.contains("invalid --ulimit"), "{err}");
}

#[test]
fn killed_step_reports_the_signal() {
    let Some(k) = Kiln::new("killed_step_reports_the_signal") else {
        return;
    };
    let dockerfile = "FROM busybox\nRUN echo before-kill; sleep 30 & kill -9 $!; wait $!\n";
    let ctx = k.context("ctx", &[("Dockerfile", dockerfile)]);
    let err = k.build(&ctx, &[]).failed().stderr;
    assert!(
        err.contains("exit code: 137: killed by signal 9 (SIGKILL)"),
        "{err}"
    );
    assert!(!err.contains("out of memory"), "{err}");
    assert!(err.contains("Dockerfile:2"), "{err}");
    assert!(err.contains("before-kill"), "the output tail:\n{err}");
}

#[test]
fn seccomp_blocks_keyctl_but_glibc_threads_and_spawns_work() {
    let Some(k) = Kiln::new("seccomp_blocks_keyctl_but_glibc_threads_and_spawns_work") else {
        return;
    };
    let keyctl = match std::env::consts::ARCH {
        "x86_64" => 250,
        "aarch64" => 219,
        other => {
            eprintln!("skipping: no keyctl syscall number for {other}");
            return;
        }
    };
    // keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, create): Docker's profile refuses
    // the kernel keyring, which is not namespaced. glibc 2.36 creates threads and spawns
    // processes with clone3, which the profile answers with ENOSYS so glibc falls back to clone.
    let probe = format!(
        "import ctypes, os, subprocess, threading\n\
         libc = ctypes.CDLL(None, use_errno=True)\n\
         r = libc.syscall({keyctl}, 0, -3, 1)\n\
         print('keyctl', 'EPERM' if r == -1 and ctypes.get_errno() == 1 else 'allowed')\n\
         r = libc.syscall(1000)\n\
         print('unknown', 'ENOSYS' if r == -1 and ctypes.get_errno() == 38 else 'other')\n\
         t = threading.Thread(target=print, args=('thread-ok',)); t.start(); t.join()\n\
         print(subprocess.run(['echo', 'spawn-ok'], capture_output=True, text=True).stdout.strip())\n"
    );
    let dockerfile = "FROM python:3.11-slim\n\
         COPY probe.py /probe.py\n\
         RUN python3 /probe.py\n\
         RUN --security=insecure python3 /probe.py && echo insecure\n";
    let ctx = k.context("ctx", &[("Dockerfile", dockerfile), ("probe.py", &probe)]);
    let run = k.build(&ctx, &["--allow", "security.insecure"]).ok();
    let sandboxed = logs(&run, "RUN python3 /probe.py");
    assert_eq!(
        sandboxed,
        ["keyctl EPERM", "unknown ENOSYS", "thread-ok", "spawn-ok"],
        "{}",
        run.stderr
    );
    let insecure = logs(&run, "--security=insecure");
    assert!(
        insecure.iter().any(|l| l == "keyctl allowed"),
        "{insecure:?}"
    );
}
