//! An HTTP/1.1 proxy for fault tests: forwards each request to a registry on a fresh
//! connection (`Connection: close`), logs `METHOD path?query`, and on request answers chosen
//! requests with a 500 or drops the connection halfway through their body, without
//! forwarding them.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Read the whole request, answer 500, forward nothing.
    ServerError,
    /// Read about half of the body (256 KiB of a chunked one), then close the connection.
    Drop,
}

#[derive(Debug, Clone)]
struct Rule {
    method: String,
    path_contains: String,
    /// Matching requests to let through before faulting.
    skip: usize,
    /// Faults left to inject.
    times: usize,
    fault: Fault,
}

/// A running proxy; stops accepting when dropped.
pub struct FaultProxy {
    /// `127.0.0.1:PORT`.
    pub host: String,
    log: Arc<Mutex<Vec<String>>>,
    rules: Arc<Mutex<Vec<Rule>>>,
    stop: Arc<AtomicBool>,
    uploads: Arc<InFlight>,
}

/// Upload requests (PATCH or PUT under `/blobs/uploads/`) being forwarded now, and the most
/// at once; each is held a little before forwarding so that concurrent ones overlap.
#[derive(Default)]
struct InFlight {
    now: std::sync::atomic::AtomicUsize,
    max: std::sync::atomic::AtomicUsize,
}

impl FaultProxy {
    pub fn start(upstream: &str) -> Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let host = listener.local_addr()?.to_string();
        let proxy = FaultProxy {
            host: host.clone(),
            log: Arc::default(),
            rules: Arc::default(),
            stop: Arc::default(),
            uploads: Arc::default(),
        };
        let (log, rules, stop) = (proxy.log.clone(), proxy.rules.clone(), proxy.stop.clone());
        let uploads = proxy.uploads.clone();
        let upstream = upstream.to_string();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (log, rules, upstream) = (log.clone(), rules.clone(), upstream.clone());
                let uploads = uploads.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, &upstream, &log, &rules, &uploads);
                });
            }
        });
        Ok(proxy)
    }

    /// Injects `fault` into `times` requests whose method is `method` and whose path contains
    /// `path_contains`, after letting `skip` of them through.
    pub fn fail(&self, method: &str, path_contains: &str, skip: usize, times: usize, fault: Fault) {
        self.rules
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Rule {
                method: method.to_string(),
                path_contains: path_contains.to_string(),
                skip,
                times,
                fault,
            });
    }

    /// `METHOD path?query` of every request seen, faulted ones included (marked ` !500` or
    /// ` !drop`).
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The most upload requests that were in flight at once.
    pub fn max_concurrent_uploads(&self) -> usize {
        self.uploads.max.load(Ordering::SeqCst)
    }

    pub fn clear_log(&self) {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(&self.host);
    }
}

struct Head {
    method: String,
    target: String,
    lines: Vec<String>,
    content_length: Option<u64>,
    chunked: bool,
}

fn read_head(reader: &mut impl BufRead) -> Result<Option<Head>> {
    let mut request_line = String::new();
    if reader.read_line(&mut request_line)? == 0 {
        return Ok(None);
    }
    let mut parts = request_line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        bail!("bad request line {request_line:?}");
    };
    let mut head = Head {
        method: method.to_string(),
        target: target.to_string(),
        lines: Vec::new(),
        content_length: None,
        chunked: false,
    };
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end().to_string();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').unwrap_or((&line, ""));
        let name = name.trim().to_ascii_lowercase();
        let value = value.trim();
        match name.as_str() {
            "content-length" => head.content_length = value.parse().ok(),
            "transfer-encoding" => head.chunked = value.eq_ignore_ascii_case("chunked"),
            "connection" => continue,
            _ => {}
        }
        head.lines.push(line);
    }
    Ok(Some(head))
}

/// Copies a request body of either framing from `from` to `to`, returning its length.
fn copy_body(head: &Head, from: &mut impl BufRead, to: &mut impl Write) -> Result<u64> {
    if !head.chunked {
        let len = head.content_length.unwrap_or(0);
        let copied = std::io::copy(&mut from.take(len), to)?;
        if copied != len {
            bail!("body ended after {copied} of {len} bytes");
        }
        return Ok(len);
    }
    let mut total = 0;
    loop {
        let mut size_line = String::new();
        from.read_line(&mut size_line)?;
        to.write_all(size_line.as_bytes())?;
        let size = u64::from_str_radix(size_line.trim().split(';').next().unwrap_or(""), 16)
            .context("chunk size")?;
        if size == 0 {
            // Trailers, then the empty line.
            loop {
                let mut line = String::new();
                from.read_line(&mut line)?;
                to.write_all(line.as_bytes())?;
                if line.trim_end().is_empty() {
                    return Ok(total);
                }
            }
        }
        std::io::copy(&mut from.take(size + 2), to)?;
        total += size;
    }
}

fn serve(
    client: TcpStream,
    upstream: &str,
    log: &Mutex<Vec<String>>,
    rules: &Mutex<Vec<Rule>>,
    uploads: &InFlight,
) -> Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut writer = client;
    while let Some(head) = read_head(&mut reader)? {
        let fault = {
            let mut rules = rules.lock().unwrap_or_else(|e| e.into_inner());
            rules
                .iter_mut()
                .find(|r| {
                    r.times > 0 && r.method == head.method && head.target.contains(&r.path_contains)
                })
                .and_then(|r| {
                    if r.skip > 0 {
                        r.skip -= 1;
                        None
                    } else {
                        r.times -= 1;
                        Some(r.fault)
                    }
                })
        };
        let mark = match fault {
            Some(Fault::ServerError) => " !500",
            Some(Fault::Drop) => " !drop",
            None => "",
        };
        log.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(format!("{} {}{mark}", head.method, head.target));
        match fault {
            Some(Fault::ServerError) => {
                copy_body(&head, &mut reader, &mut std::io::sink())?;
                writer.write_all(
                    b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n\
                      Content-Length: 2\r\n\r\n{}",
                )?;
                continue;
            }
            Some(Fault::Drop) => {
                if head.chunked {
                    // A streamed body has no length: up to 256 KiB of it (all of a shorter one).
                    let _ = copy_body(&head, &mut reader, &mut Cutoff(256 << 10));
                } else {
                    let half = head.content_length.unwrap_or(0) / 2;
                    std::io::copy(&mut (&mut reader).take(half), &mut std::io::sink())?;
                }
                let _ = writer.shutdown(Shutdown::Both);
                return Ok(());
            }
            None => {}
        }
        let is_upload = matches!(head.method.as_str(), "PATCH" | "PUT")
            && head.target.contains("/blobs/uploads/");
        let _guard = is_upload.then(|| {
            let now = uploads.now.fetch_add(1, Ordering::SeqCst) + 1;
            uploads.max.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(30));
            Leave(&uploads.now)
        });
        let mut up = TcpStream::connect(upstream)?;
        let mut out = format!("{} {} HTTP/1.1\r\n", head.method, head.target);
        for line in &head.lines {
            out.push_str(line);
            out.push_str("\r\n");
        }
        out.push_str("Connection: close\r\n\r\n");
        up.write_all(out.as_bytes())?;
        copy_body(&head, &mut reader, &mut up)?;
        // The registry closes after its answer; the client then opens a new connection.
        std::io::copy(&mut up, &mut writer)?;
        let _ = writer.shutdown(Shutdown::Both);
        return Ok(());
    }
    Ok(())
}

/// A sink that fails once it has taken its fill.
struct Cutoff(usize);

impl Write for Cutoff {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0 == 0 {
            return Err(std::io::Error::other("enough"));
        }
        let n = buf.len().min(self.0);
        self.0 -= n;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Counts an upload as finished however `serve` returns.
struct Leave<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
