//! Dockerfile language kiln once refused where BuildKit v0.32.2 builds (issue 14): ADD's
//! `--unpack`, the flags COPY does not have, `RUN --device`, stages named only by an ONBUILD
//! trigger, `--from` with variables, and `# syntax=` naming Docker's Dockerfile frontend. Each
//! expectation is what the BuildKit v0.32.2 oracle did with the same Dockerfile.

use std::collections::BTreeSet;
use std::path::Path;

use crate::support::Kiln;

/// Every path under `dir`, relative, sorted.
fn tree(dir: &Path) -> BTreeSet<String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            out.insert(p.strip_prefix(root).unwrap().display().to_string());
            if p.is_dir() && !p.is_symlink() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(dir, dir, &mut out);
    out
}

/// A tar holding `t/inner.txt`, plain and gzipped.
fn archives() -> (Vec<u8>, Vec<u8>) {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(6);
    header.set_mode(0o644);
    header.set_mtime(1_700_000_000);
    header.set_cksum();
    builder
        .append_data(&mut header, "t/inner.txt", &b"inner\n"[..])
        .unwrap();
    let plain = builder.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &plain).unwrap();
    (plain, gz.finish().unwrap())
}

/// Builds a failing Dockerfile and returns stderr, checking the error points at `line`.
fn refused(k: &Kiln, name: &str, dockerfile: &str, line: usize, extra: &[&str]) -> String {
    let ctx = k.context(name, &[("Dockerfile", dockerfile), ("a.txt", "a\n")]);
    let err = k.build(&ctx, extra).failed().stderr;
    let text = dockerfile.lines().nth(line - 1).unwrap();
    assert!(
        err.contains(&format!("{line} | {text}")),
        "{name}: not located at line {line}:\n{err}"
    );
    err
}

#[test]
fn issue_14_add_unpack_and_copy_only_flags() {
    let Some(k) = Kiln::new("issue_14_add_unpack_and_copy_only_flags") else {
        return;
    };
    let (plain, gz) = archives();
    let tar_addr = crate::language::serve(Box::leak(plain.clone().into_boxed_slice()));
    let gz_addr = crate::language::serve(Box::leak(gz.clone().into_boxed_slice()));
    // As the oracle: a download is unpacked only with --unpack(=true); a local archive unless
    // --unpack=false.
    let dockerfile = format!(
        "FROM scratch
ADD --unpack=true http://{gz_addr}/arch.tar.gz /u1/
ADD --unpack http://{tar_addr}/arch.tar /u2/
ADD http://{tar_addr}/arch.tar /u3/
ADD --unpack=false arch.tar /u4/
ADD arch.tar.gz /u5/
ADD --unpack=true arch.tar /u6/
"
    );
    let ctx = k.context("unpack", &[("Dockerfile", &dockerfile)]);
    std::fs::write(ctx.join("arch.tar"), &plain).unwrap();
    std::fs::write(ctx.join("arch.tar.gz"), &gz).unwrap();
    let out = k.dir().join("out");
    let dest = format!("type=local,dest={}", out.display());
    k.build(&ctx, &["--output", &dest]).ok();
    let mut expected = BTreeSet::new();
    for u in ["u1", "u2", "u5", "u6"] {
        for p in ["", "/t", "/t/inner.txt"] {
            expected.insert(format!("{u}{p}"));
        }
    }
    for u in ["u3", "u4"] {
        expected.insert(u.to_string());
        expected.insert(format!("{u}/arch.tar"));
    }
    assert_eq!(tree(&out), expected);

    // BuildKit's COPY has none of ADD's source flags: they are unknown flags, not features.
    for (i, flag) in ["--checksum=sha256:abc", "--unpack", "--keep-git-dir=true"]
        .iter()
        .enumerate()
    {
        let dockerfile = format!("FROM busybox\nCOPY {flag} a.txt /a\n");
        let err = refused(&k, &format!("copy{i}"), &dockerfile, 2, &[]);
        let name = flag.split('=').next().unwrap();
        assert!(err.contains(&format!("unknown flag: {name}")), "{err}");
        assert!(!err.contains("not supported yet"), "{err}");
    }
    let cases = [
        (
            "ADD --unpack=maybe a.txt /x",
            "expecting boolean value for flag --unpack, not: maybe",
        ),
        (
            "ADD --checksum=sha256:0000000000000000000000000000000000000000000000000000000000000000 a.txt /a",
            "checksum requires HTTP(S) or Git sources",
        ),
    ];
    for (i, (line, message)) in cases.iter().enumerate() {
        let err = refused(
            &k,
            &format!("add{i}"),
            &format!("FROM busybox\n{line}\n"),
            2,
            &[],
        );
        assert!(err.contains(message), "{line}:\n{err}");
    }
    // --keep-git-dir on a local source changes nothing, as in BuildKit.
    let ctx = k.context(
        "keep",
        &[
            (
                "Dockerfile",
                "FROM scratch\nADD --keep-git-dir=true a.txt /a\n",
            ),
            ("a.txt", "a\n"),
        ],
    );
    let out = k.dir().join("keep-out");
    let dest = format!("type=local,dest={}", out.display());
    k.build(&ctx, &["--output", &dest]).ok();
    assert_eq!(std::fs::read_to_string(out.join("a")).unwrap(), "a\n");
    k.assert_clean();
}

#[test]
fn issue_14_run_device_without_cdi_specs() {
    let Some(k) = Kiln::new("issue_14_run_device_without_cdi_specs") else {
        return;
    };
    // Specs from an empty dir only, whatever this host has in /etc/cdi.
    let specs = k.dir().join("no-specs");
    std::fs::create_dir_all(&specs).unwrap();
    cdi_config(&k, &specs, &[]);
    // No spec registers a device: optional ones are skipped (the step runs without them),
    // with or without `--allow device`.
    let dockerfile = "FROM busybox
RUN --device=/dev/fuse --device=vendor.com/class=foo ls /dev > /devs
RUN --device=name=nvidia.com/gpu=all,required=false echo ran > /ran
";
    let ctx = k.context("optional", &[("Dockerfile", dockerfile)]);
    for (i, extra) in [&[][..], &["--allow", "device"][..]].iter().enumerate() {
        let out = k.dir().join(format!("out{i}"));
        let dest = format!("type=local,dest={}", out.display());
        let mut args = vec!["--output", &dest];
        args.extend_from_slice(extra);
        k.build(&ctx, &args).ok();
        let devs = std::fs::read_to_string(out.join("devs")).unwrap();
        assert!(!devs.lines().any(|l| l == "fuse"), "{devs}");
        assert_eq!(std::fs::read_to_string(out.join("ran")).unwrap(), "ran\n");
    }

    // A required one fails the build before anything runs, with BuildKit's words.
    let dockerfile = "FROM busybox\nRUN echo first-step\nRUN --device=/dev/fuse,required ls\n";
    let ctx = k.context("required", &[("Dockerfile", dockerfile)]);
    let err = k.build(&ctx, &[]).failed().stderr;
    assert!(
        err.contains("required device \"/dev/fuse\" is not registered"),
        "{err}"
    );
    assert!(!err.contains("first-step"), "a step ran:\n{err}");

    // The value is parsed as BuildKit parses it, and never expanded.
    let err = refused(
        &k,
        "syntax",
        "FROM busybox\nRUN --device=a,b true\n",
        2,
        &[],
    );
    assert!(
        err.contains("invalid field 'b' must be a key=value pair"),
        "{err}"
    );
    let ctx = k.context(
        "literal",
        &[(
            "Dockerfile",
            "FROM busybox\nARG D=x\nRUN --device=$D,required true\n",
        )],
    );
    let err = k.build(&ctx, &[]).failed().stderr;
    assert!(
        err.contains("required device \"$D\" is not registered"),
        "{err}"
    );
    k.assert_clean();
}

#[test]
fn issue_14_onbuild_triggers_name_stages() {
    let Some(k) = Kiln::new("issue_14_onbuild_triggers_name_stages") else {
        return;
    };
    let cases = [
        // The stage the trigger names comes before the stage defining the trigger...
        "FROM busybox AS helper
RUN echo hi > /hi
FROM busybox AS base
ONBUILD COPY --from=helper /hi /hi
FROM base
RUN cat /hi > /copied
",
        // ... or after it, as long as it precedes the stage running the trigger.
        "FROM busybox AS base
ONBUILD COPY --from=helper /hi /hi
FROM busybox AS helper
RUN echo hi > /hi
FROM base
RUN cat /hi > /copied
",
        // A bind mount in a triggered RUN.
        "FROM busybox AS helper
RUN echo hi > /hi
FROM busybox AS base
ONBUILD RUN --mount=from=helper,target=/h cat /h/hi > /copied
FROM base
",
    ];
    for (i, dockerfile) in cases.iter().enumerate() {
        let ctx = k.context(&format!("case{i}"), &[("Dockerfile", dockerfile)]);
        let out = k.dir().join(format!("out{i}"));
        let dest = format!("type=local,dest={}", out.display());
        k.build(&ctx, &["--output", &dest]).ok();
        assert_eq!(
            std::fs::read_to_string(out.join("copied")).unwrap(),
            "hi\n",
            "case {i}"
        );
    }

    // A stage defined after the one running the trigger is an error at that stage's FROM.
    let dockerfile = "FROM busybox AS base
ONBUILD COPY --from=helper /hi /hi
FROM base AS final
FROM busybox AS helper
";
    let err = refused(&k, "later", dockerfile, 3, &["--target", "final"]);
    assert!(err.contains("helper"), "{err}");
    assert!(!err.contains("not supported yet"), "{err}");

    // The triggers of a pulled image name the building Dockerfile's stages.
    let repo = format!("{}/kiln-it/{}", k.registry, k.unique("onbuild"));
    let ctx = k.context(
        "base-image",
        &[(
            "Dockerfile",
            "FROM busybox\nONBUILD COPY --from=helper /hi /hi\n",
        )],
    );
    k.build(&ctx, &["--push", "-t", &format!("{repo}:1")]).ok();
    let dockerfile = format!(
        "FROM busybox AS helper\nRUN echo from-helper > /hi\nFROM {repo}:1\nRUN cat /hi > /copied\n"
    );
    let ctx = k.context("child", &[("Dockerfile", &dockerfile)]);
    let out = k.dir().join("out-image");
    let dest = format!("type=local,dest={}", out.display());
    k.build(&ctx, &["--output", &dest]).ok();
    assert_eq!(
        std::fs::read_to_string(out.join("copied")).unwrap(),
        "from-helper\n"
    );
    k.assert_clean();
}

#[test]
fn issue_14_from_variables_are_refused_as_buildkit() {
    let Some(k) = Kiln::new("issue_14_from_variables_are_refused_as_buildkit") else {
        return;
    };
    let copy = "FROM busybox AS helper
FROM busybox
ARG X=helper
COPY --from=$X /bin/true /t
";
    let err = refused(&k, "copy", copy, 4, &[]);
    assert!(
        err.contains("variable expansion is not supported for --from, define a new stage with FROM using ARG from global scope as a workaround"),
        "{err}"
    );
    let mount = "FROM busybox AS helper
FROM busybox
ARG X=helper
RUN --mount=from=$X,target=/h true
";
    let err = refused(&k, "mount", mount, 4, &[]);
    assert!(
        err.contains("'from' doesn't support variable expansion, define alias stage instead"),
        "{err}"
    );
    k.assert_clean();
}

#[test]
fn issue_14_syntax_directive_runs_builtin_frontend() {
    let Some(k) = Kiln::new("issue_14_syntax_directive_runs_builtin_frontend") else {
        return;
    };
    // Floating tags are the built-in frontend's own release: nothing to say.
    for (i, syntax) in [
        "docker/dockerfile:1",
        "docker/dockerfile:1-labs",
        "docker/dockerfile:labs",
    ]
    .iter()
    .enumerate()
    {
        let dockerfile = format!("# syntax={syntax}\nFROM busybox\nRUN echo ok\n");
        let ctx = k.context(&format!("floating{i}"), &[("Dockerfile", &dockerfile)]);
        let run = k.build(&ctx, &[]).ok();
        assert!(!run.stderr.contains("syntax="), "{syntax}:\n{}", run.stderr);
    }
    // A pinned version builds too, with a warning that the built-in frontend ran it.
    let dockerfile = "# syntax=docker/dockerfile:1.4\nFROM busybox\nRUN echo ok\n";
    let ctx = k.context("pinned", &[("Dockerfile", dockerfile)]);
    let run = k.build(&ctx, &[]).ok();
    assert!(
        run.stderr.contains(
            "`# syntax=docker/dockerfile:1.4` is run by kiln's built-in Dockerfile frontend"
        ),
        "{}",
        run.stderr
    );
    // Any other frontend image is refused.
    let dockerfile = "# syntax=example.com/my/frontend:1\nFROM busybox\n";
    let ctx = k.context("foreign", &[("Dockerfile", dockerfile)]);
    let err = k.build(&ctx, &[]).failed().stderr;
    assert!(
        err.contains("example.com/my/frontend:1") && err.contains("not supported yet"),
        "{err}"
    );
    k.assert_clean();
}

/// Points the test's config at `spec_dirs` for CDI, as buildkitd.toml's `[cdi]` does.
fn cdi_config(k: &Kiln, spec_dirs: &Path, auto_allowed: &[&str]) {
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&k.config)
        .unwrap();
    writeln!(
        f,
        "\n[cdi]\nspecDirs = [{:?}]\nautoAllowed = {:?}",
        spec_dirs.display().to_string(),
        auto_allowed
    )
    .unwrap();
}

/// A CDI spec's devices reach the RUN that asks for them, as BuildKit v0.32.2 gave them with
/// the same spec (recorded with the oracle): the spec's and the device's env, a device node
/// made from the host's /dev/null (c 1:3, its mode), a read-only bind mount; a device without
/// autoallow needs `--allow device`; `kind` alone is its first device, `kind=*` every one.
#[test]
fn issue_14_run_device_with_cdi_specs() {
    let Some(k) = Kiln::new("issue_14_run_device_with_cdi_specs") else {
        return;
    };
    let specs = k.dir().join("cdi");
    let host = k.dir().join("cdih");
    std::fs::create_dir_all(&specs).unwrap();
    std::fs::create_dir_all(&host).unwrap();
    std::fs::write(host.join("data.txt"), "hostfile\n").unwrap();
    let spec = format!(
        r#"cdiVersion: "0.6.0"
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
      permissions: rw
    mounts:
    - hostPath: {}
      containerPath: /cdih
      options: [ro, bind]
- name: two
  containerEdits:
    env:
    - TWO=2
"#,
        host.display()
    );
    std::fs::write(specs.join("kiln-test.yaml"), spec).unwrap();
    cdi_config(&k, &specs, &[]);

    let dockerfile = r#"FROM busybox
RUN --device=kiln.test/dev=one sh -c 'echo "$SPECWIDE $FOO" > /env; ls -ln /dev/kilnnull | cut -c1-10 > /mode; stat -c "%t:%T" /dev/kilnnull > /devno; cat /cdih/data.txt > /data; grep " /cdih " /proc/mounts | cut -d" " -f4 | cut -d, -f1 > /ro; echo x > /dev/kilnnull'
RUN --device=kiln.test/dev sh -c 'echo "$FOO" > /kind'
"#;
    let ctx = k.context("one", &[("Dockerfile", dockerfile)]);
    let out = k.dir().join("out");
    let dest = format!("type=local,dest={}", out.display());
    k.build(&ctx, &["--output", &dest]).ok();
    let read = |f: &str| std::fs::read_to_string(out.join(f)).unwrap();
    assert_eq!(read("env"), "1 injected\n");
    assert_eq!(read("mode"), "crw-rw-rw-\n");
    assert_eq!(read("devno"), "1:3\n");
    assert_eq!(read("data"), "hostfile\n");
    assert_eq!(read("ro"), "ro\n");
    assert_eq!(read("kind"), "injected\n");
    assert!(!out.join("cdih").exists() && !out.join("dev/kilnnull").exists());

    // `two` has no autoallow: refused before anything runs, allowed with `--allow device`.
    let dockerfile = "FROM busybox\nRUN echo first-step\nRUN --device=kiln.test/dev=* sh -c 'echo $FOO $TWO > /all'\n";
    let ctx = k.context("all", &[("Dockerfile", dockerfile)]);
    let err = k.build(&ctx, &[]).failed().stderr;
    assert!(
        err.contains("device kiln.test/dev=two is requested by the build but not allowed"),
        "{err}"
    );
    assert!(!err.contains("first-step"), "a step ran:\n{err}");
    let out = k.dir().join("all-out");
    let dest = format!("type=local,dest={}", out.display());
    k.build(&ctx, &["--output", &dest, "--allow", "device"])
        .ok();
    assert_eq!(
        std::fs::read_to_string(out.join("all")).unwrap(),
        "injected 2\n"
    );

    // Unregistered names: optional skipped, required refused.
    let ctx = k.context(
        "nope",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN --device=kiln.test/dev=nope true\nRUN --device=kiln.test/dev=nope,required true\n",
        )],
    );
    let err = k.build(&ctx, &[]).failed().stderr;
    assert!(
        err.contains("required device \"kiln.test/dev=nope\" is not registered"),
        "{err}"
    );

    // A broken spec fails only builds that ask for a device, naming the file.
    std::fs::write(specs.join("zz-broken.yaml"), "cdiVersion: [\n").unwrap();
    let plain = k.context("plain", &[("Dockerfile", "FROM busybox\nRUN true\n")]);
    k.build(&plain, &[]).ok();
    let err = k.build(&ctx, &[]).failed().stderr;
    assert!(err.contains("zz-broken.yaml"), "{err}");
    k.assert_clean();
}
