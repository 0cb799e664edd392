//! A small HTTP/1.1 file server on loopback for tests that fetch over HTTP (URL build contexts,
//! `ADD https://…`): routes with a status, headers and body; files with an `ETag` and
//! `Last-Modified` that answer conditional requests with 304; redirects; bodies served slowly or
//! cut short; and a log of the requests received, to assert what a client sent.
//!
//! Each connection is answered once and closed (`Connection: close`), which every client copes
//! with and keeps the server simple.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use sha2::Digest as _;

/// How a route's body goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// All at once.
    Whole,
    /// In `chunk`-byte pieces with `delay` between them.
    Slow { chunk: usize, delay: Duration },
    /// `Content-Length` announces the whole body but only the first `after` bytes are sent
    /// before the connection closes.
    Truncated { after: usize },
}

/// One route's answer.
#[derive(Debug, Clone)]
pub struct Route {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub delivery: Delivery,
    /// Answer `If-None-Match` / `If-Modified-Since` matching these headers with 304.
    pub conditional: bool,
}

impl Route {
    pub fn new(status: u16, content_type: Option<&str>, body: impl Into<Vec<u8>>) -> Route {
        Route {
            status,
            headers: content_type
                .map(|c| vec![("Content-Type".to_string(), c.to_string())])
                .unwrap_or_default(),
            body: body.into(),
            delivery: Delivery::Whole,
            conditional: false,
        }
    }

    /// A file: 200 with a strong `ETag` (the body's sha256) and a fixed `Last-Modified`,
    /// answering conditional requests that match with 304.
    pub fn file(content_type: Option<&str>, body: impl Into<Vec<u8>>) -> Route {
        let mut r = Route::new(200, content_type, body);
        let etag = format!("\"{}\"", hex::encode(sha2::Sha256::digest(&r.body)));
        r.headers.push(("ETag".into(), etag));
        r.headers
            .push(("Last-Modified".into(), LAST_MODIFIED.to_string()));
        r.conditional = true;
        r
    }

    /// A redirect to `location` (absolute, or a path on this server).
    pub fn redirect(status: u16, location: &str) -> Route {
        let mut r = Route::new(status, None, Vec::new());
        r.headers.push(("Location".into(), location.to_string()));
        r
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Route {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn delivered(mut self, delivery: Delivery) -> Route {
        self.delivery = delivery;
        self
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The `Last-Modified` of [`Route::file`]s.
pub const LAST_MODIFIED: &str = "Wed, 21 Oct 2015 07:28:00 GMT";

/// A request the server received.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Header names lowercased.
    pub headers: HashMap<String, String>,
    /// The status it was answered with.
    pub status: u16,
}

#[derive(Default)]
struct State {
    routes: HashMap<String, Route>,
    /// What a path without a route gets; 404 when unset.
    fallback: Option<Route>,
    log: Vec<Request>,
}

/// The server; stops when dropped.
pub struct HttpServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// Listens on a free port of 127.0.0.1.
    pub fn start() -> io::Result<HttpServer> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let state = state.clone();
                    std::thread::spawn(move || {
                        let _ = answer(conn, &state);
                    });
                }
            })
        };
        Ok(HttpServer {
            addr,
            state,
            stop,
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/path` (`path` starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Serves `route` at `path` (replacing what was there).
    pub fn route(&self, path: &str, route: Route) {
        self.lock().routes.insert(path.to_string(), route);
    }

    /// Serves `route` at every path that has no route of its own.
    pub fn fallback(&self, route: Route) {
        self.lock().fallback = Some(route);
    }

    /// The requests received so far, oldest first.
    pub fn requests(&self) -> Vec<Request> {
        self.lock().log.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn answer(conn: TcpStream, state: &Mutex<State>) -> io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Ok(());
    };
    let (method, target) = (method.to_string(), target.to_string());
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let path = target.split('?').next().unwrap_or("/").to_string();
    let route = {
        let state = state.lock().unwrap_or_else(|e| e.into_inner());
        state.routes.get(&path).or(state.fallback.as_ref()).cloned()
    };
    let route = route.unwrap_or_else(|| {
        Route::new(
            404,
            Some("text/plain; charset=utf-8"),
            "404 page not found\n",
        )
    });
    let not_modified = route.conditional
        && (headers
            .get("if-none-match")
            .is_some_and(|v| Some(v.as_str()) == route.header("etag"))
            || (!headers.contains_key("if-none-match")
                && headers
                    .get("if-modified-since")
                    .is_some_and(|v| Some(v.as_str()) == route.header("last-modified"))));
    let status = if not_modified { 304 } else { route.status };
    state
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .log
        .push(Request {
            method: method.clone(),
            path,
            headers,
            status,
        });
    let mut out = conn;
    let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (k, v) in &route.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    let body: &[u8] = if not_modified || method == "HEAD" {
        &[]
    } else {
        &route.body
    };
    if !not_modified {
        head.push_str(&format!("Content-Length: {}\r\n", route.body.len()));
    }
    head.push_str("Connection: close\r\n\r\n");
    out.write_all(head.as_bytes())?;
    match route.delivery {
        Delivery::Whole => out.write_all(body)?,
        Delivery::Slow { chunk, delay } => {
            for piece in body.chunks(chunk.max(1)) {
                out.write_all(piece)?;
                out.flush()?;
                std::thread::sleep(delay);
            }
        }
        Delivery::Truncated { after } => out.write_all(&body[..after.min(body.len())])?,
    }
    out.flush()?;
    out.shutdown(std::net::Shutdown::Both)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        304 => "Not Modified",
        404 => "Not Found",
        500 => "Internal Server Error",
        _ => "Status",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn get(server: &HttpServer, path: &str, extra: &str) -> (u16, String, Vec<u8>) {
        let mut s = TcpStream::connect(server.addr()).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n").unwrap();
        let mut all = Vec::new();
        let _ = s.read_to_end(&mut all);
        let split = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8_lossy(&all[..split]).into_owned();
        let status = head[9..12].parse().unwrap();
        (status, head, all[split + 4..].to_vec())
    }

    #[test]
    fn files_revalidate_redirects_point_and_truncated_bodies_stop_short() {
        let server = HttpServer::start().unwrap();
        server.route("/f", Route::file(Some("text/plain"), "hello"));
        server.route("/r", Route::redirect(302, "/f"));
        server.route(
            "/cut",
            Route::new(200, None, vec![7u8; 100]).delivered(Delivery::Truncated { after: 10 }),
        );
        let (status, head, body) = get(&server, "/f", "");
        assert_eq!((status, body.as_slice()), (200, &b"hello"[..]));
        let etag = head
            .lines()
            .find_map(|l| l.strip_prefix("ETag: "))
            .unwrap()
            .to_string();
        let (status, _, body) = get(&server, "/f", &format!("If-None-Match: {etag}\r\n"));
        assert_eq!((status, body.len()), (304, 0));
        let (status, _, _) = get(&server, "/f", "If-None-Match: \"other\"\r\n");
        assert_eq!(status, 200);
        let (status, _, _) = get(
            &server,
            "/f",
            &format!("If-Modified-Since: {LAST_MODIFIED}\r\n"),
        );
        assert_eq!(status, 304);
        let (status, head, _) = get(&server, "/r", "");
        assert_eq!(status, 302);
        assert!(head.contains("Location: /f"), "{head}");
        let (_, head, body) = get(&server, "/cut", "");
        assert!(head.contains("Content-Length: 100"));
        assert_eq!(body.len(), 10);
        assert_eq!(get(&server, "/nothing", "").0, 404);
        let log = server.requests();
        assert_eq!(log.len(), 7);
        assert_eq!(log[1].headers["if-none-match"], etag);
        assert_eq!(log[1].status, 304);
    }
}
