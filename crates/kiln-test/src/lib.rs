//! Support code for kiln's test suites (not published): finding the external tools the real
//! tests run against, the rule for what happens when one is missing, and the differential
//! corpus' machinery ([`oracle`]).

mod buckets;
mod dockerd;
pub mod http;
pub mod oracle;
mod proxy;
mod registry;
mod token;

use std::path::PathBuf;

pub use buckets::{AZURITE_ACCOUNT, AZURITE_KEY, AzuriteServer, MotoServer};
pub use dockerd::Dockerd;
pub use http::{Delivery, HttpServer, LAST_MODIFIED, Route};
pub use proxy::{Fault, FaultProxy};
pub use registry::{Certificates, RegistryOptions, TestRegistry};
pub use token::{ISSUER, SERVICE, TokenRequest, TokenServer};

/// The first `name` on PATH.
pub fn find_program(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}

/// Whether external tools are required (`KILN_TEST_REQUIRE_EXTERNAL=1`, as in CI).
pub fn externals_required() -> bool {
    std::env::var("KILN_TEST_REQUIRE_EXTERNAL").as_deref() == Ok("1")
}

/// Whether a test needing `what` should skip: prints why and returns true, or panics when
/// externals are required.
pub fn skip_without(what: &str, missing: bool) -> bool {
    if !missing {
        return false;
    }
    if externals_required() {
        panic!("{what} is required (KILN_TEST_REQUIRE_EXTERNAL=1) but not available");
    }
    eprintln!("skipping: {what} is not available");
    true
}

/// Writes `docker-credential-<name>` into `dir`: a credential helper speaking Docker's
/// protocol that keeps one JSON file per server under `dir/<name>-store/` and appends
/// `ACTION SERVER` to `dir/<name>-calls.log`. Put `dir` first on PATH to use it.
pub fn write_credential_helper(dir: &std::path::Path, name: &str) -> PathBuf {
    let path = dir.join(format!("docker-credential-{name}"));
    let script = format!(
        r#"#!/bin/sh
store="{dir}/{name}-store"
mkdir -p "$store"
input=$(cat)
case "$1" in
store) server=$(printf '%s' "$input" | sed 's/.*"ServerURL":"\([^"]*\)".*/\1/') ;;
*) server="$input" ;;
esac
echo "$1 $server" >> "{dir}/{name}-calls.log"
file="$store/$(printf '%s' "$server" | tr '/:' '__')"
case "$1" in
get) if [ -f "$file" ]; then cat "$file"; else echo "credentials not found in native keychain"; exit 1; fi ;;
store) printf '%s' "$input" > "$file" ;;
erase) if [ -f "$file" ]; then rm "$file"; else echo "credentials not found in native keychain"; exit 1; fi ;;
*) echo "unknown action $1"; exit 1 ;;
esac
"#,
        dir = dir.display(),
    );
    write_executable(&path, &script);
    path
}

/// Writes an executable script at `path` that this process can run at once.
///
/// Writing it with `std::fs::write` races with other test threads: a thread that forks while
/// our write descriptor is open hands a copy of it to its child until that child execs, and
/// executing the script in that window fails with ETXTBSY ("Text file busy"). So the
/// executable is written by a child process (`install`), whose descriptor no thread of ours
/// can inherit.
pub fn write_executable(path: &std::path::Path, contents: &str) {
    let staged = path.with_file_name(format!(
        ".{}.staged",
        path.file_name().expect("a file path").to_string_lossy()
    ));
    std::fs::write(&staged, contents).expect("staging the script");
    let status = std::process::Command::new("install")
        .arg("-m")
        .arg("0755")
        .arg(&staged)
        .arg(path)
        .status()
        .expect("running install");
    assert!(status.success(), "install {} failed", path.display());
    std::fs::remove_file(&staged).expect("removing the staged script");
}

/// Runs `openssl ARGS` in `dir` (the tests' certificates and keys come from the CLI).
pub(crate) fn openssl(dir: &std::path::Path, args: &[&str]) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .context("running openssl")?;
    if !out.status.success() {
        anyhow::bail!(
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A legacy `docker save` archive (`manifest.json`) of one image named `hostile:1` whose only
/// layer, stored at `layer_path`, is `layer` (its diff ID in the config is the layer's digest,
/// so only a check of the layer itself can refuse it); and the config's bytes.
pub fn docker_save_archive(layer_path: &str, layer: &[u8]) -> (Vec<u8>, Vec<u8>) {
    use sha2::Digest as _;
    let hex = |b: &[u8]| hex::encode(sha2::Sha256::digest(b));
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", hex(layer))]},
    }))
    .expect("a config");
    let config_name = format!("{}.json", hex(&config));
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": config_name, "RepoTags": ["hostile:1"], "Layers": [layer_path],
    }]))
    .expect("a manifest");
    let mut b = tar::Builder::new(Vec::new());
    for (p, d) in [
        (layer_path, layer),
        (config_name.as_str(), &config[..]),
        ("manifest.json", &manifest[..]),
    ] {
        let mut h = tar::Header::new_ustar();
        h.set_size(d.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, p, d).expect("an archive in memory");
    }
    (b.into_inner().expect("an archive in memory"), config)
}
