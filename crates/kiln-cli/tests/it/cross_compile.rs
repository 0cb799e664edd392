//! The multi-platform benchmark workloads, built as the benchmark builds them (the files are
//! read from bench/workloads/, so the two stay in sync):
//! - w9-cross: a C program compiled on the build platform for each target (gcc, and
//!   aarch64-linux-gnu-gcc for arm64), copied into each platform's busybox. The compile step runs
//!   natively once per target, never under QEMU; the arm64 binary then runs under QEMU.
//! - w10-emulated: one RUN of shell work per platform, the arm64 one under QEMU.
//!
//! BuildKit v0.32.2 (buildx, same Dockerfiles and platforms, `-o type=oci`) wrote the same
//! per-platform file trees, byte for byte, as kiln; the expected file contents below are its.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::multi_platform::kiln_for;
use crate::support::{Kiln, Run, Vertex, registry_has, skip_because};

fn workload(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../bench/workloads")
        .join(name)
}

/// A workload's context as the benchmark makes it: what its gen.sh writes, plus its Dockerfile.
fn workload_context(k: &Kiln, name: &str) -> PathBuf {
    let dir = k.dir().join(name);
    let status = Command::new("bash")
        .arg(workload(name).join("gen.sh"))
        .arg(&dir)
        .status()
        .expect("running gen.sh");
    assert!(status.success(), "{name}/gen.sh failed: {status}");
    std::fs::copy(workload(name).join("Dockerfile"), dir.join("Dockerfile")).unwrap();
    dir
}

/// Whether `step` was marked as emulated: its `#N [emulated PLATFORM] ...` status line (a status,
/// not a timed log line, so it is not among the vertex's logs).
fn marked_emulated(run: &Run, step: &Vertex) -> bool {
    let prefix = format!("#{} [emulated ", step.number);
    run.stderr.lines().any(|l| l.starts_with(&prefix))
}

#[test]
fn cross_compiled_program_is_built_natively_and_runs_per_platform() {
    let test = "cross_compiled_program_is_built_natively_and_runs_per_platform";
    let Some(k) = kiln_for(test) else {
        return;
    };
    if !registry_has(&k.registry, "library/gcc", "bookworm-cross") {
        skip_because(
            test,
            "the registry has no library/gcc:bookworm-cross (scripts/setup.sh)",
        );
        return;
    }
    let ctx = workload_context(&k, "w9-cross");
    let name = k.unique("w9-cross");
    let run = k
        .build(
            &ctx,
            &[
                "--platform",
                "linux/amd64,linux/arm64",
                "--build-arg",
                &format!("REGISTRY={}", k.registry),
                "-t",
                &name,
            ],
        )
        .ok();

    let progress = run.progress();
    // The compiler image is resolved and unpacked once, for the build platform only.
    progress.step("[linux/amd64 build 1/4] FROM ");
    // The compile step once per target, both on the build platform (`->arm64`: natively).
    for step in [
        "[linux/amd64 build 4/4] RUN case",
        "[linux/amd64->arm64 build 4/4] RUN case",
    ] {
        let v = progress.step(step);
        assert!(v.done, "{step} did not finish:\n{}", run.stderr);
        assert!(
            !marked_emulated(&run, v),
            "{step} ran under emulation:\n{}",
            run.stderr
        );
    }
    // Nothing of this build runs under QEMU: the final stage only copies.
    assert!(!run.stderr.contains("[emulated"), "{}", run.stderr);
    assert!(!run.stderr.contains("[emulation]"), "{}", run.stderr);
    assert!(
        !run.stderr.contains("InvalidBaseImagePlatform"),
        "{}",
        run.stderr
    );

    // Each platform's image holds its own static binary; the arm64 one runs through QEMU
    // (whose uname answers aarch64).
    for (platform, out) in [
        (
            "linux/amd64",
            "hello, built for x86_64, running on x86_64\n",
        ),
        (
            "linux/arm64",
            "hello, built for aarch64, running on aarch64\n",
        ),
    ] {
        let ran = k.kiln(&["run", "--rm", "--platform", platform, &name]).ok();
        assert_eq!(ran.stdout, out, "{platform}: {}", ran.stderr);
    }
}

#[test]
fn emulated_workload_runs_each_platform_and_says_which_ran_under_qemu() {
    let Some(k) = kiln_for("emulated_workload_runs_each_platform_and_says_which_ran_under_qemu")
    else {
        return;
    };
    let ctx = workload_context(&k, "w10-emulated");
    let dest = k.dir().join("out");
    let run = k
        .build(
            &ctx,
            &[
                "--platform",
                "linux/amd64,linux/arm64",
                "--build-arg",
                &format!("REGISTRY={}", k.registry),
                "-o",
                &format!("type=local,dest={}", dest.display()),
            ],
        )
        .ok();

    let progress = run.progress();
    let emulated = |step: &str| marked_emulated(&run, progress.step(step));
    assert!(!emulated("[linux/amd64 2/2] RUN "), "{}", run.stderr);
    assert!(emulated("[linux/arm64 2/2] RUN "), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("[emulated linux/arm64] through /usr/libexec/qemu-binfmt/aarch64-binfmt-P"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("[emulation] 1 step for linux/arm64 ran under emulation (QEMU): "),
        "{}",
        run.stderr
    );

    for (dir, text) in [
        ("linux_amd64", "amd64 x86_64 1499994\n"),
        ("linux_arm64", "arm64 aarch64 1499994\n"),
    ] {
        let got = std::fs::read_to_string(dest.join(dir).join("work.txt")).unwrap();
        assert_eq!(got, text, "{dir}");
    }
}
