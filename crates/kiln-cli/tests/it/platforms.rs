//! Building for a platform other than this machine's: base images picked per platform from an
//! index (busybox:multi, linux/amd64 + linux/arm64, seeded by scripts/setup.sh), a single-platform
//! base used for another platform with BuildKit's warning, RUN through QEMU (binfmt_misc), and
//! the error when no handler can run the platform's binaries. Expected values were recorded from
//! BuildKit v0.32.2 on the same Dockerfiles.

use std::path::Path;

use crate::multi_platform::kiln_for;

const RECORD: &str = r#"FROM busybox:multi
ARG TARGETPLATFORM TARGETARCH TARGETVARIANT BUILDPLATFORM
RUN uname -m > /arch && echo "$TARGETPLATFORM $TARGETARCH $TARGETVARIANT $BUILDPLATFORM" > /args
"#;

#[test]
fn foreign_platform_runs_through_qemu() {
    let Some(k) = kiln_for("foreign_platform_runs_through_qemu") else {
        return;
    };
    let ctx = k.context("ctx", &[("Dockerfile", RECORD)]);
    let out = k.dir().join("out");
    let spec = format!("type=local,dest={}", out.display());
    // arm64/v8 is normalised to arm64, as BuildKit does, and picks the index's arm64 image.
    let run = k
        .build(&ctx, &["--platform", "linux/arm64/v8", "-o", &spec])
        .ok();
    let read = |f: &str| std::fs::read_to_string(out.join(f)).unwrap();
    // BuildKit: "aarch64" and "linux/arm64 arm64  linux/amd64".
    assert_eq!(read("arch"), "aarch64\n");
    assert_eq!(read("args"), "linux/arm64 arm64  linux/amd64\n");
    let progress = run.progress();
    let step = progress.step("RUN uname -m");
    let marks: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with(&format!("#{} [emulated linux/arm64]", step.number)))
        .collect();
    assert_eq!(marks.len(), 2, "{}", run.stderr);
    assert!(marks[0].contains("qemu-aarch64"), "{}", marks[0]);
    assert!(marks[1].ends_with("s under QEMU"), "{}", marks[1]);
    assert!(
        run.stderr
            .contains("[emulation] 1 step for linux/arm64 ran under emulation (QEMU): "),
        "{}",
        run.stderr
    );

    // Natively nothing is marked, and the same Dockerfile gets the index's amd64 image.
    let native = k.dir().join("native");
    let spec = format!("type=local,dest={}", native.display());
    let run = k
        .build(&ctx, &["--platform", "linux/amd64", "-o", &spec])
        .ok();
    assert_eq!(
        std::fs::read_to_string(native.join("arch")).unwrap(),
        "x86_64\n"
    );
    assert!(!run.stderr.contains("emulat"), "{}", run.stderr);
    k.assert_clean();
}

#[test]
fn index_without_the_platform_names_the_ones_it_has() {
    let Some(k) = kiln_for("index_without_the_platform_names_the_ones_it_has") else {
        return;
    };
    let ctx = k.context("ctx", &[("Dockerfile", "FROM busybox:multi\nRUN true\n")]);
    let run = k.build(&ctx, &["--platform", "linux/arm/v7"]).failed();
    // BuildKit: "... failed to resolve source metadata for docker.io/library/busybox:multi: no
    // match for platform in manifest: not found". The mirror's answer is final: docker.io is
    // not asked after it.
    assert!(
        run.stderr.contains(
            "no match for platform in manifest: not found (wanted linux/arm/v7; the index has \
             linux/amd64, linux/arm64)"
        ),
        "{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("registry-1.docker.io"),
        "{}",
        run.stderr
    );
    k.assert_clean();
}

#[test]
fn single_platform_base_is_used_for_another_platform_with_a_warning() {
    let Some(k) = kiln_for("single_platform_base_is_used_for_another_platform_with_a_warning")
    else {
        return;
    };
    let ctx = k.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM busybox:multi-arm64\nRUN uname -m > /arch\n",
        )],
    );
    let out = k.dir().join("out");
    let spec = format!("type=local,dest={}", out.display());
    let run = k
        .build(&ctx, &["--platform", "linux/amd64", "-o", &spec])
        .ok();
    // As BuildKit: the arm64 image is used (its binaries run through QEMU) and the build warns.
    assert!(
        run.stderr.contains(
            "InvalidBaseImagePlatform: Base image busybox:multi-arm64 was pulled with platform \
             \"linux/arm64\", expected \"linux/amd64\" for current build (line 1)"
        ),
        "{}",
        run.stderr
    );
    assert_eq!(
        std::fs::read_to_string(out.join("arch")).unwrap(),
        "aarch64\n"
    );
    k.assert_clean();
}

#[test]
fn foreign_run_without_a_handler_stops_with_the_fix() {
    let Some(k) = kiln_for("foreign_run_without_a_handler_stops_with_the_fix") else {
        return;
    };
    // A platform whose QEMU handler this machine lacks (setup.sh registers aarch64 only).
    let Some(arch) = [
        ("riscv64", "riscv64"),
        ("s390x", "s390x"),
        ("ppc64le", "ppc64le"),
        ("mips64le", "mips64el"),
    ]
    .into_iter()
    .find(|(_, qemu)| !Path::new(&format!("/proc/sys/fs/binfmt_misc/qemu-{qemu}")).exists())
    .map(|(arch, _)| arch) else {
        eprintln!("skipping: every candidate platform has a QEMU handler here");
        return;
    };
    let ctx = k.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM busybox:multi-arm64\nRUN echo first > /first\nRUN echo second\n",
        )],
    );
    let run = k
        .build(&ctx, &["--platform", &format!("linux/{arch}")])
        .failed();
    let expected = format!(
        "RUN for linux/{arch} needs emulation on this linux/amd64 machine, but no binfmt_misc \
         handler for {arch} binaries is registered: install QEMU's user-mode emulators and \
         register them (Debian: `apt-get install qemu-user-static binfmt-support`; or `docker \
         run --privileged --rm tonistiigi/binfmt --install {arch}`)"
    );
    let progress = run.progress();
    let first = progress.step("RUN echo first");
    assert_eq!(
        first.error.as_deref(),
        Some(expected.as_str()),
        "{}",
        run.stderr
    );
    assert!(first.logs.is_empty(), "nothing ran: {:?}", first.logs);
    assert!(
        progress
            .steps()
            .iter()
            .all(|s| !s.name.contains("echo second")),
        "{}",
        run.stderr
    );
    k.assert_clean();
}
