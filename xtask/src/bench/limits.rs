//! What the hardware allows for the same work, measured with the stock tools, so each builder's
//! figure can be read against it: hashing, compressing, copying the W4 context, a bare runc run.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, ensure};
use serde::Serialize;

use super::measure;

#[derive(Debug, Serialize)]
pub struct Limit {
    pub name: String,
    pub secs: f64,
    /// Throughput or another reading of the figure.
    pub rate: String,
}

pub fn measure(w4_context: &Path, dir: &Path) -> Result<Vec<Limit>> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    let log = dir.join("limits.log");
    let tar = dir.join("w4.tar");
    measure::quiet(
        Command::new("tar")
            .arg("-cf")
            .arg(&tar)
            .arg("-C")
            .arg(w4_context)
            .arg("."),
        &log,
    )?;
    let bytes = std::fs::metadata(&tar)?.len() as f64;
    let mb = bytes / 1e6;
    let mut out = Vec::new();
    let mut throughput = |name: &str, script: String| -> Result<()> {
        let s = measure::run(Command::new("sh").arg("-c").arg(script), &log)?;
        out.push(Limit {
            name: format!("{name} ({mb:.0} MB)"),
            secs: s.secs,
            rate: format!("{:.0} MB/s", mb / s.secs),
        });
        Ok(())
    };
    let t = tar.display();
    throughput(
        "sha256sum of the W4 context tar",
        format!("sha256sum {t} >/dev/null"),
    )?;
    let x = dir.join("w4-extracted");
    throughput(
        "tar -x of the W4 context tar",
        format!(
            "rm -rf {x} && mkdir {x} && tar -xf {t} -C {x}",
            x = x.display()
        ),
    )?;
    std::fs::remove_dir_all(&x)?;
    throughput("gzip -6, one core", format!("gzip -6 -c {t} >/dev/null"))?;
    throughput(
        "zstd -3, one core",
        format!("zstd -q -3 -T1 -c {t} >/dev/null"),
    )?;
    throughput(
        "zstd -3, all cores",
        format!("zstd -q -3 -T0 -c {t} >/dev/null"),
    )?;
    throughput(
        "tar stream of the W4 context",
        format!("tar -cf - -C {} . | cat >/dev/null", w4_context.display()),
    )?;
    let copy = dir.join("copy");
    let s = measure::run(
        Command::new("cp").arg("-a").arg(w4_context).arg(&copy),
        &log,
    )?;
    out.push(Limit {
        name: "cp -a of the W4 context".into(),
        secs: s.secs,
        rate: format!("{:.0} MB/s", mb / s.secs),
    });
    std::fs::remove_dir_all(&copy)?;
    std::fs::remove_file(&tar)?;
    out.push(runc_true(dir, &log)?);
    Ok(out)
}

/// Start-to-exit of `runc run` for a container whose rootfs is a static busybox: the floor under
/// every RUN step. Median of five.
fn runc_true(dir: &Path, log: &Path) -> Result<Limit> {
    let bundle = dir.join("bundle");
    let bin = bundle.join("rootfs/bin");
    std::fs::create_dir_all(&bin)?;
    let busybox = Path::new("/bin/busybox");
    ensure!(
        busybox.exists(),
        "no /bin/busybox (Debian's busybox-static)"
    );
    std::fs::copy(busybox, bin.join("busybox"))?;
    std::os::unix::fs::symlink("busybox", bin.join("true"))?;
    measure::quiet(Command::new("runc").arg("spec").current_dir(&bundle), log)?;
    let config = bundle.join("config.json");
    let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&config)?)?;
    spec["process"]["terminal"] = false.into();
    spec["process"]["args"] = serde_json::json!(["/bin/true"]);
    std::fs::write(&config, serde_json::to_vec(&spec)?)?;
    let mut secs = Vec::new();
    for i in 0..6 {
        let id = format!("kiln-bench-{}-{i}", std::process::id());
        let s = measure::run(
            Command::new("runc")
                .args(["run", "--bundle"])
                .arg(&bundle)
                .arg(&id),
            log,
        )
        .context("runc run")?;
        if i > 0 {
            secs.push(s.secs);
        }
    }
    std::fs::remove_dir_all(&bundle)?;
    Ok(Limit {
        name: "runc run of `true` (busybox rootfs)".into(),
        secs: measure::median(&secs),
        rate: "start to exit".into(),
    })
}
