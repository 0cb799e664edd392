//! Runs one command and measures its wall time and the peak resident memory of its process tree.

use std::fs::File;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

/// One timed run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    pub secs: f64,
    /// Peak resident set of the measured processes, in KiB, when known.
    pub max_rss_kib: Option<u64>,
}

impl Sample {
    /// Two runs measured as one figure (a build then its export, say).
    pub fn plus(self, other: Sample) -> Sample {
        Sample {
            secs: self.secs + other.secs,
            max_rss_kib: match (self.max_rss_kib, other.max_rss_kib) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            },
        }
    }
}

/// Runs `cmd` to completion with its output appended to `log`; fails, quoting the log's tail, when
/// it exits non-zero. The peak memory comes from `wait4`, which reports the largest resident set
/// among the child and every descendant it waited for: kiln and buildah with their runc children.
/// A pause before each measured command, for the kernel's deferred work after the previous one
/// (cgroup and namespace teardown of another tool's containers, RCU callbacks) to finish.
const SETTLE: std::time::Duration = std::time::Duration::from_millis(500);

pub fn run(cmd: &mut Command, log: &Path) -> Result<Sample> {
    run_in(cmd, log, None)
}

/// [`run`] with the command's stdin read from the file `stdin` (opened untimed).
pub fn run_in(cmd: &mut Command, log: &Path, stdin: Option<&Path>) -> Result<Sample> {
    let input = match stdin {
        Some(p) => Stdio::from(File::open(p).with_context(|| format!("opening {}", p.display()))?),
        None => Stdio::null(),
    };
    let out = File::options().create(true).append(true).open(log)?;
    // Untimed: write back what the previous command left dirty (often another tool's build), so
    // that the kernel's writeback of it does not land inside this measurement.
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    std::thread::sleep(SETTLE);
    let start = Instant::now();
    let child = cmd
        .stdin(input)
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    let (status, rss) = wait4(child.id())?;
    let secs = start.elapsed().as_secs_f64();
    if status != 0 {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(15)..].join("\n");
        let status = std::process::ExitStatus::from_raw(status);
        bail!(
            "{cmd:?} failed ({status}); the end of {}:\n{tail}",
            log.display()
        );
    }
    Ok(Sample {
        secs,
        max_rss_kib: Some(rss),
    })
}

/// Like [`run`] but untimed and without memory: for set-up steps.
pub fn quiet(cmd: &mut Command, log: &Path) -> Result<()> {
    run(cmd, log).map(|_| ())
}

/// Waits for `pid` with `wait4`, which std's `Child::wait` does not expose; returns the raw wait
/// status and the peak resident set in KiB.
fn wait4(pid: u32) -> Result<(i32, u64)> {
    let pid = libc::pid_t::try_from(pid)?;
    let mut status = 0;
    // SAFETY: an all-zero `rusage` is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `status` and `usage` are valid for writes for the duration of the call.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            break;
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err).context("wait4");
        }
    }
    Ok((status, u64::try_from(usage.ru_maxrss).unwrap_or(0)))
}

/// Resets a long-running process's peak-RSS counter (`VmHWM`), so that a later [`peak_rss`]
/// reads the peak of one run only.
pub fn reset_peak_rss(pid: u32) -> Result<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").context("resetting VmHWM")
}

/// A process's peak resident set since start or the last [`reset_peak_rss`], in KiB.
pub fn peak_rss(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc/PID/status")
}

/// The median of `xs` (which must not be empty).
pub fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn run_measures_a_child_and_reports_failure() {
        let dir = std::env::temp_dir().join(format!("xtask-measure-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("log");
        // A grandchild whose buffer is 64 MiB: its peak must show in the figure.
        let s = run(
            Command::new("sh").args(["-c", "dd if=/dev/zero of=/dev/null bs=64M count=1; true"]),
            &log,
        )
        .unwrap();
        assert!(s.max_rss_kib.unwrap() > 32 * 1024, "{s:?}");
        assert!(s.secs > 0.0);
        let e = run(Command::new("sh").args(["-c", "echo boom; exit 3"]), &log).unwrap_err();
        assert!(format!("{e:#}").contains("boom"), "{e:#}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
