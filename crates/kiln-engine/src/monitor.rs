//! The monitor: the one process that owns a running container. `kiln run -d` re-executes kiln
//! as a detached monitor; a foreground `kiln run` is its own monitor. It mounts the rootfs,
//! binds published ports, runs runc, writes the output to the log, records the exit, unmounts,
//! and with `--rm` removes the container. It holds `monitor.lock` throughout.

use std::fs::File;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use kiln_executor::{ExitStatus, Mount, Network, ProcessSpec, Stdio, User};

use crate::container::{ContainerError, ContainerState, Containers, Status};
use crate::{Result, io, proxy_linux};

/// Where the container's stdio goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attach {
    /// Only to the log (`-d`).
    Detached,
    /// To the log and to this process's stdout and stderr; stdin is empty.
    Foreground,
    /// This process's stdin, stdout and stderr (`-i`, and a terminal with `-t`); not logged.
    Interactive { tty: bool },
}

/// Told once whether the container started (`Err` carries why not).
pub type Ready = Box<dyn FnOnce(std::result::Result<(), String>) + Send>;

impl Containers {
    /// Runs container `id` until it exits and returns its exit code (128+N for signal N).
    /// Dropping the future kills the container and cleans up as an exit does.
    pub async fn monitor(&self, id: &str, attach: Attach, ready: Option<Ready>) -> Result<i32> {
        let _lock = self.lock(id)?;
        let config = self.config(id)?;
        let mut ready = ready;
        let previous = self.state(id)?;
        let dir = self.container_dir(id);
        let rootfs = dir.join("rootfs");

        // Declared first, dropped last: records the exit and removes after everything else.
        let mut finish = Finish {
            store: self,
            id: id.to_string(),
            auto_remove: config.auto_remove,
            state: ContainerState {
                error: None,
                ..previous
            },
            code: None,
        };
        let setup = (|| -> Result<_> {
            let mount = kiln_snapshot::mount_overlay(
                &config.lowers,
                &rootfs.join("upper"),
                &rootfs.join("work"),
                &rootfs.join("merged"),
            )?;
            let listeners = proxy_linux::bind(&config.ports)
                .map_err(io(format!("publishing the ports of `{}`", config.name)))?;
            Ok((mount, listeners))
        })();
        let (_mount, listeners) = match setup {
            Ok(s) => s,
            Err(e) => {
                let message = error_chain(&e);
                finish.state.error = Some(message.clone());
                tell(&mut ready, Err(message));
                return Err(e);
            }
        };
        finish.state.status = Status::Running;
        finish.state.started_at = Some(Utc::now());
        finish.state.finished_at = None;
        finish.state.exit_code = None;
        finish.state.ports = listeners.iter().map(|(p, _)| *p).collect();
        self.write_state(id, &finish.state)?;

        let log = Arc::new(Mutex::new(LogWriter::open(&self.log_path(id))?));
        let stdio = match attach {
            Attach::Interactive { .. } => Stdio::Inherit,
            Attach::Detached | Attach::Foreground => {
                let tee = attach == Attach::Foreground;
                let sink = |stream: &'static str| -> kiln_executor::OutputSink {
                    let log = log.clone();
                    Box::new(move |bytes: &[u8]| {
                        log.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .write(stream, bytes);
                        if tee {
                            // The terminal going away must not stop the container.
                            let _ = if stream == "stdout" {
                                std::io::stdout().write_all(bytes)
                            } else {
                                std::io::stderr().write_all(bytes)
                            };
                        }
                    })
                };
                Stdio::Capture {
                    stdout: sink("stdout"),
                    stderr: sink("stderr"),
                }
            }
        };
        let merged = rootfs.join("merged");
        let run = self.executor().run(kiln_executor::RunRequest {
            id: id.to_string(),
            rootfs: &merged,
            process: ProcessSpec {
                args: config.args.clone(),
                env: config.env.clone(),
                cwd: config.cwd.clone(),
                user: User {
                    uid: config.uid,
                    gid: config.gid,
                    additional_gids: config.additional_gids.clone(),
                },
                hostname: config.hostname.clone(),
                terminal: matches!(attach, Attach::Interactive { tty: true }),
            },
            mounts: config
                .volumes
                .iter()
                .map(|v| Mount::Bind {
                    source: v.source.clone(),
                    destination: v.destination.clone(),
                    readonly: v.readonly,
                })
                .collect(),
            stdio,
            network: if config.private_network() {
                Network::None
            } else {
                Network::Host
            },
            readonly_rootfs: false,
            // Docker's default confinement, the same as a RUN step's.
            sandbox: Default::default(),
        });
        let pid_file = self.executor().pid_file(id).unwrap_or_default();
        let _ = std::fs::remove_file(&pid_file);
        tokio::pin!(run);
        let mut listeners = Some(listeners);
        // Dropped (stopping the proxies) when the container ends.
        let mut _proxies = None;
        let mut started = false;
        let status = loop {
            tokio::select! {
                r = &mut run => break r,
                _ = tokio::time::sleep(Duration::from_millis(20)), if !started => {
                    // Started once runc wrote the pid file: the namespaces exist.
                    // Before that, the shim may still find the command missing.
                    let pid = read_pid(&pid_file);
                    let Some(pid) = pid.filter(|p| kiln_executor::command_started(*p)) else {
                        continue;
                    };
                    if let Some(listeners) = listeners.take().filter(|l| !l.is_empty()) {
                        // Missing when the process has exited already: nothing to publish then.
                        if let Ok(netns) = File::open(format!("/proc/{pid}/ns/net")) {
                            _proxies = Some(proxy_linux::serve(listeners, netns).map_err(io(
                                format!("publishing the ports of `{}`", config.name),
                            ))?);
                        }
                    }
                    started = true;
                    tell(&mut ready, Ok(()));
                }
            }
        };
        drop(_proxies);
        let not_started = matches!(status, Ok(ExitStatus::NotStarted { .. }));
        let code = match status {
            Ok(status) => status.code(),
            Err(e) => {
                let e = crate::Error::from(e);
                let message = error_chain(&e);
                finish.state.error = Some(message.clone());
                tell(&mut ready, Err(message));
                return Err(e);
            }
        };
        log.lock().unwrap_or_else(|e| e.into_inner()).flush();
        finish.code = Some(code);
        let created = read_pid(&pid_file).is_some();
        let _ = std::fs::remove_file(&pid_file);
        if not_started || (!started && !created) {
            // runc could not create it (bad mount, user) or the command could not be executed:
            // say why.
            let tail = log_tail(&self.log_path(id), 5);
            tell(&mut ready, Err(format!("exit code {code}: {tail}")));
            return Err(ContainerError::Start {
                id: id.to_string(),
                message: format!("exit code {code}"),
            }
            .into());
        }
        tell(&mut ready, Ok(()));
        Ok(code)
    }
}

/// Records the end of a run; with `--rm` removes the container. Runs on every path out of the
/// monitor, including a dropped future (Ctrl-C on a foreground run).
struct Finish<'a> {
    store: &'a Containers,
    id: String,
    auto_remove: bool,
    state: ContainerState,
    /// None when the run never got an exit code (setup failed, or the future was dropped).
    code: Option<i32>,
}

impl Drop for Finish<'_> {
    fn drop(&mut self) {
        if self.state.status == Status::Running {
            self.state.status = Status::Exited;
            self.state.finished_at = Some(Utc::now());
            // Dropped mid-run: the executor's guard killed it.
            self.state.exit_code = Some(self.code.unwrap_or(137));
        }
        let done = if self.auto_remove {
            self.store.remove_unmonitored(&self.id)
        } else {
            self.store.write_state(&self.id, &self.state)
        };
        if let Err(e) = done {
            tracing::warn!(id = %self.id, error = %e, "failed to record the container's exit");
        }
    }
}

fn read_pid(path: &std::path::Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn tell(ready: &mut Option<Ready>, result: std::result::Result<(), String>) {
    if let Some(f) = ready.take() {
        f(result)
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    message
}

/// Writes output as docker's json-file driver does: one JSON object per line of output, with
/// the stream and the time it arrived. Lines longer than 16 KiB are split, as docker does.
pub(crate) struct LogWriter {
    file: File,
    partial: [Vec<u8>; 2],
}

const MAX_LINE: usize = 16 * 1024;

impl LogWriter {
    fn open(path: &std::path::Path) -> Result<LogWriter> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io(format!("opening `{}`", path.display())))?;
        Ok(LogWriter {
            file,
            partial: [Vec::new(), Vec::new()],
        })
    }

    fn write(&mut self, stream: &'static str, bytes: &[u8]) {
        let i = usize::from(stream == "stderr");
        let mut rest = bytes;
        while !rest.is_empty() {
            let room = MAX_LINE - self.partial[i].len();
            let take = match rest.iter().position(|b| *b == b'\n') {
                Some(n) => n + 1,
                None => rest.len(),
            }
            .min(room);
            self.partial[i].extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.partial[i].ends_with(b"\n") || self.partial[i].len() >= MAX_LINE {
                let line = std::mem::take(&mut self.partial[i]);
                self.entry(stream, &line);
            }
        }
    }

    /// Writes what is left of unterminated lines.
    fn flush(&mut self) {
        for (i, stream) in ["stdout", "stderr"].into_iter().enumerate() {
            let line = std::mem::take(&mut self.partial[i]);
            if !line.is_empty() {
                self.entry(stream, &line);
            }
        }
    }

    fn entry(&mut self, stream: &str, line: &[u8]) {
        let record = serde_json::json!({
            "log": String::from_utf8_lossy(line),
            "stream": stream,
            "time": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        });
        let mut text = record.to_string();
        text.push('\n');
        if let Err(e) = self.file.write_all(text.as_bytes()) {
            tracing::warn!(error = %e, "failed to write the container log");
        }
    }
}

/// The last `n` lines of a container log, joined, for an error message.
fn log_tail(path: &std::path::Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<String> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["log"].as_str().map(|s| s.trim_end().to_string()))
        .collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_are_json_records_per_stream() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("container.log");
        let mut w = LogWriter::open(&path).unwrap();
        w.write("stdout", b"hel");
        w.write("stderr", b"oops\n");
        w.write("stdout", b"lo\nwor");
        w.write("stdout", b"ld");
        w.flush();
        let text = std::fs::read_to_string(&path).unwrap();
        let records: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let got: Vec<(&str, &str)> = records
            .iter()
            .map(|r| (r["stream"].as_str().unwrap(), r["log"].as_str().unwrap()))
            .collect();
        assert_eq!(
            got,
            [
                ("stderr", "oops\n"),
                ("stdout", "hello\n"),
                ("stdout", "world")
            ]
        );
        assert!(records[0]["time"].as_str().unwrap().ends_with('Z'));
        assert_eq!(log_tail(&path, 2), "hello\nworld");
    }

    #[test]
    fn long_lines_are_split() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("container.log");
        let mut w = LogWriter::open(&path).unwrap();
        w.write("stdout", &vec![b'x'; MAX_LINE + 10]);
        w.flush();
        let text = std::fs::read_to_string(&path).unwrap();
        let sizes: Vec<usize> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["log"]
                    .as_str()
                    .unwrap()
                    .len()
            })
            .collect();
        assert_eq!(sizes, [MAX_LINE, 10]);
    }
}
