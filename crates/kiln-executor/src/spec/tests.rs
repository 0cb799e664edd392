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
