//! `kiln logs`: reads a container's json-lines log (written by the monitor), optionally
//! following it until the container stops.

use std::io::Read;
use std::time::Duration;

use crate::Result;
use crate::container::Containers;

#[derive(Debug, Clone, Default)]
pub struct LogOptions {
    /// Keep printing new output until the container stops.
    pub follow: bool,
    /// Only the last N lines of what is there already.
    pub tail: Option<usize>,
    /// Prefix each line with the time it was written.
    pub timestamps: bool,
}

/// Which stream a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    Stdout,
    Stderr,
}

impl Containers {
    /// Hands each log line of the container to `out`, in order.
    pub async fn logs(
        &self,
        query: &str,
        opts: &LogOptions,
        out: &mut (dyn FnMut(LogStream, &[u8]) + Send),
    ) -> Result<()> {
        let id = self.lookup(query)?;
        let path = self.log_path(&id);
        let mut file = match std::fs::File::open(&path) {
            Ok(f) => Some(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(crate::io(format!("opening `{}`", path.display()))(e)),
        };
        let mut pending = Vec::new();
        let mut first = true;
        loop {
            // Checked before reading, so what the container wrote before it stopped is read.
            let running = opts.follow && self.is_monitored(&id);
            if let Some(f) = file.as_mut() {
                f.read_to_end(&mut pending)
                    .map_err(crate::io(format!("reading `{}`", path.display())))?;
            } else if running {
                // The monitor creates the log when the container starts.
                file = std::fs::File::open(&path).ok();
            }
            let complete = pending
                .iter()
                .rposition(|b| *b == b'\n')
                .map_or(0, |n| n + 1);
            let text = String::from_utf8_lossy(&pending[..complete]).into_owned();
            pending.drain(..complete);
            let mut lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
            if first && let Some(n) = opts.tail {
                lines.drain(..lines.len().saturating_sub(n));
            }
            first = false;
            for line in lines {
                let Ok(record) = serde_json::from_str::<serde_json::Value>(line) else {
                    continue;
                };
                let stream = match record["stream"].as_str() {
                    Some("stderr") => LogStream::Stderr,
                    _ => LogStream::Stdout,
                };
                let log = record["log"].as_str().unwrap_or_default();
                if opts.timestamps {
                    let time = record["time"].as_str().unwrap_or_default();
                    out(stream, format!("{time} {log}").as_bytes());
                } else {
                    out(stream, log.as_bytes());
                }
            }
            if !running {
                return Ok(());
            }
            // The next read goes on from where this one ended; the monitor only appends.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
