//! Builds the seccomp shim (`shim/seccomp_shim.rs`): a static program without a C library that
//! runs inside any image. It cannot be a normal workspace binary: it needs its own entry point and
//! link flags, so it is compiled here with the same rustc and embedded with `include_bytes!`.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(kiln_seccomp_shim)");
    println!("cargo::rerun-if-changed=shim/seccomp_shim.rs");
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if os != "linux" || !matches!(arch.as_str(), "x86_64" | "aarch64") {
        // Elsewhere runc compiles the profile itself, as it always did.
        return;
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let target = std::env::var("TARGET").expect("cargo sets TARGET");
    let status = Command::new(rustc)
        .args([
            "--edition",
            "2024",
            "--crate-type",
            "bin",
            "--target",
            &target,
        ])
        .args([
            "-C",
            "panic=abort",
            "-C",
            "opt-level=s",
            "-C",
            "debuginfo=0",
        ])
        .args([
            "-C",
            "relocation-model=static",
            "-C",
            "target-feature=+crt-static",
        ])
        .args(["-C", "link-arg=-nostartfiles", "-C", "link-arg=-nostdlib"])
        .args(["-C", "link-arg=-static", "-C", "strip=symbols"])
        .arg("-o")
        .arg(out.join("kiln-seccomp-shim"))
        .arg("shim/seccomp_shim.rs")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .status()
        .expect("running rustc for the seccomp shim");
    assert!(status.success(), "building the seccomp shim failed");
    println!("cargo::rustc-cfg=kiln_seccomp_shim");
}
