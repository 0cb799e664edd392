use super::*;
use kiln_llb::{ExecOp, ExecSandbox, NetworkMode};

const YAML: &str = r#"
cdiVersion: "0.6.0"
kind: "kiln.test/dev"
containerEdits:
  env:
  - SPECWIDE=1
devices:
- name: one
  annotations:
    org.mobyproject.buildkit.device.autoallow: "true"
  containerEdits:
    env:
    - FOO=injected
    deviceNodes:
    - path: /dev/kilnnull
      hostPath: /dev/null
    mounts:
    - hostPath: /tmp
      containerPath: /host-tmp
      options: [ro, bind]
    hooks:
    - hookName: createContainer
      path: /bin/true
      args: [true, x]
    additionalGids: [44]
- name: two
  containerEdits:
    env:
    - TWO=2
    - FOO=two
"#;

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
            devices: requests(devices),
            ..ExecSandbox::default()
        },
        platform: None,
    }));
    def.add(op, vec![], "run");
    def
}

fn requests(devices: &[(&str, bool)]) -> Vec<DeviceRequest> {
    devices
        .iter()
        .map(|(n, r)| DeviceRequest {
            name: n.to_string(),
            required: *r,
        })
        .collect()
}

fn registry(auto_allowed: &[&str]) -> (tempfile::TempDir, Registry) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("kiln.yaml"), YAML).unwrap();
    let allowed: Vec<String> = auto_allowed.iter().map(|s| s.to_string()).collect();
    let r = Registry::load(&[dir.path()], &allowed).unwrap();
    (dir, r)
}

fn env_of(r: &Registry, devices: &[(&str, bool)]) -> Vec<String> {
    r.edits(&requests(devices))
        .unwrap()
        .iter()
        .flat_map(|e| e.env.clone())
        .collect()
}

#[test]
fn without_specs_devices_are_unregistered() {
    let empty = tempfile::tempdir().unwrap();
    let r = Registry::load(&[empty.path(), Path::new("/nonexistent/cdi")], &[]).unwrap();
    assert!(r.is_empty());
    check(
        &def(&[("/dev/fuse", false), ("vendor.com/x=y", false)]),
        &r,
        false,
    )
    .unwrap();
    let err = check(&def(&[("a", false), ("/dev/fuse", true)]), &r, false).unwrap_err();
    assert_eq!(
        err.to_string(),
        "required device \"/dev/fuse\" is not registered"
    );
}

/// Names as BuildKit v0.32.2 resolves them (checked with the oracle and this spec).
#[test]
fn names_kinds_and_wildcards() {
    let (_d, r) = registry(&[]);
    assert_eq!(
        env_of(&r, &[("kiln.test/dev=one", false)]),
        ["SPECWIDE=1", "FOO=injected"]
    );
    // The kind alone is its first device; `*` is every device, each once.
    assert_eq!(
        env_of(&r, &[("kiln.test/dev", false)]),
        ["SPECWIDE=1", "FOO=injected"]
    );
    assert_eq!(
        env_of(
            &r,
            &[("kiln.test/dev=*", false), ("kiln.test/dev=two", false)]
        ),
        [
            "SPECWIDE=1",
            "FOO=injected",
            "SPECWIDE=1",
            "TWO=2",
            "FOO=two"
        ]
    );
    assert!(env_of(&r, &[("kiln.test/dev=nope", false), ("nokind", false)]).is_empty());
    let err = r
        .edits(&requests(&[("kiln.test/dev=nope", true)]))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "required device \"kiln.test/dev=nope\" is not registered"
    );
}

#[test]
fn registered_devices_need_the_entitlement_unless_auto_allowed() {
    let (_d, r) = registry(&[]);
    check(&def(&[("kiln.test/dev=one", true)]), &r, false).unwrap();
    let err = check(&def(&[("kiln.test/dev=*", false)]), &r, false).unwrap_err();
    assert_eq!(
        err.to_string(),
        "device kiln.test/dev=two is requested by the build but not allowed"
    );
    check(&def(&[("kiln.test/dev=*", false)]), &r, true).unwrap();
    // buildkitd.toml's cdi.autoAllowed, by kind or by name.
    for allowed in ["kiln.test/dev", "kiln.test/dev=two"] {
        let (_d, r) = registry(&[allowed]);
        check(&def(&[("kiln.test/dev=two", false)]), &r, false).unwrap();
    }
}

#[test]
fn edits_apply_to_the_container() {
    let (_d, r) = registry(&[]);
    let edits = r
        .edits(&requests(&[
            ("kiln.test/dev=one", false),
            ("kiln.test/dev=two", false),
        ]))
        .unwrap();
    let mut env = vec!["PATH=/bin".to_string(), "FOO=base".to_string()];
    let mut mounts = Vec::new();
    let mut sandbox = kiln_executor::Sandbox::default();
    let mut user = kiln_executor::User::default();
    apply(
        &edits,
        Applied {
            env: &mut env,
            mounts: &mut mounts,
            sandbox: &mut sandbox,
            user: &mut user,
        },
    )
    .unwrap();
    assert_eq!(env, ["PATH=/bin", "SPECWIDE=1", "TWO=2", "FOO=two"]);
    assert_eq!(
        sandbox.devices,
        [kiln_executor::DeviceNode {
            path: "/dev/kilnnull".into(),
            kind: 'c',
            major: 1,
            minor: 3,
            file_mode: Some(0o666),
            uid: None,
            gid: None,
            permissions: "rwm".into(),
        }]
    );
    assert_eq!(
        mounts,
        [kiln_executor::Mount::Bind {
            source: "/tmp".into(),
            destination: "/host-tmp".into(),
            readonly: true,
        }]
    );
    assert_eq!(sandbox.hooks.len(), 1);
    assert_eq!(sandbox.hooks[0].stage, "createContainer");
    assert_eq!(user.additional_gids, [44]);
}

#[test]
fn a_later_dir_wins_and_bad_specs_name_their_file() {
    let (first, _) = registry(&[]);
    let second = tempfile::tempdir().unwrap();
    std::fs::write(
        second.path().join("over.json"),
        r#"{"cdiVersion":"0.6.0","kind":"kiln.test/dev","devices":[{"name":"two","containerEdits":{"env":["OVER=1"]}}]}"#,
    )
    .unwrap();
    let r = Registry::load(&[first.path(), second.path()], &[]).unwrap();
    assert_eq!(env_of(&r, &[("kiln.test/dev=two", false)]), ["OVER=1"]);

    for (text, why) in [
        ("kind: a.com/b\ndevices: []\n", "no cdiVersion"),
        ("cdiVersion: 0.6.0\nkind: nokind\n", "invalid kind"),
        (
            "cdiVersion: 0.6.0\nkind: a.com/b\ndevices:\n- name: x\n  containerEdits:\n    intelRdt: {closID: x}\n",
            "`intelRdt` is not supported yet",
        ),
        ("cdiVersion: [\n", "CDI spec"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bad.yml"), text).unwrap();
        let err = Registry::load(&[dir.path()], &[]).unwrap_err().to_string();
        assert!(
            err.contains("bad.yml") && err.contains(why),
            "{text}: {err}"
        );
    }
}
