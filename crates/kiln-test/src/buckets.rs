//! Object storage servers for the s3 and azblob cache tests, each on a free loopback port with
//! its own state, killed on drop: moto's S3 server (`moto_server`) and Azurite's blob service
//! (`azurite-blob`). Both log one line per request, which tests read to count what was fetched.
//! scripts/setup.sh installs them under $KILN_DEV (a venv in `moto/`, npm in `node/`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Azurite's well-known development account and key.
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

fn kiln_dev() -> PathBuf {
    std::env::var_os("KILN_DEV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/kiln-dev"))
}

/// `name` where setup.sh installs it, else on PATH.
fn program(installed: &str, name: &str) -> Option<PathBuf> {
    let path = kiln_dev().join(installed).join(name);
    if path.is_file() {
        return Some(path);
    }
    crate::find_program(name)
}

/// A server process with its log, killed when dropped.
struct Server {
    child: Child,
    dir: tempfile::TempDir,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(
        program: &Path,
        args: &[&str],
        what: &str,
        dir: tempfile::TempDir,
        port: u16,
    ) -> Result<Server> {
        let log = std::fs::File::create(dir.path().join("server.log"))?;
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawning {}", program.display()))?;
        let mut server = Server {
            child,
            dir,
            addr: format!("127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(&server.addr).is_err() {
            if let Ok(Some(status)) = server.child.try_wait() {
                bail!("{what} exited with {status}:\n{}", server.log());
            }
            if Instant::now() > deadline {
                bail!(
                    "{what} did not listen on {}:\n{}",
                    server.addr,
                    server.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(server)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// One HTTP/1.1 request to `addr`; the status and body.
fn request(addr: &str, head: &str) -> Result<(u16, String)> {
    let mut conn = TcpStream::connect(addr)?;
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    conn.write_all(head.as_bytes())?;
    let mut out = Vec::new();
    conn.read_to_end(&mut out)?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no HTTP status in {text:?}"))?;
    Ok((status, text))
}

/// The request lines of a server's log whose method is `method` and path contains `needle`.
fn requests(log: &str, method: &str, needle: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains(&format!("{method} /")) && l.contains(needle))
        .map(str::to_string)
        .collect()
}

/// moto's S3 server. It takes any credentials; region `us-east-1`.
pub struct MotoServer {
    server: Server,
}

impl MotoServer {
    /// Starts one, or returns `None` (after saying why) when `moto_server` is not installed;
    /// panics instead when externals are required.
    pub fn start() -> Option<MotoServer> {
        let program = program("moto/bin", "moto_server");
        if crate::skip_without(
            "moto_server (scripts/setup.sh installs it)",
            program.is_none(),
        ) {
            return None;
        }
        Some(Self::try_start(&program.expect("checked")).expect("starting moto_server"))
    }

    fn try_start(program: &Path) -> Result<MotoServer> {
        let dir = tempfile::Builder::new().prefix("kiln-moto-").tempdir()?;
        let port = free_port()?;
        let server = Server::start(
            program,
            &["-H", "127.0.0.1", "-p", &port.to_string()],
            "moto_server",
            dir,
            port,
        )?;
        Ok(MotoServer { server })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    /// Creates `bucket` (moto checks no signature).
    pub fn create_bucket(&self, bucket: &str) {
        let (status, body) = request(
            &self.server.addr,
            &format!(
                "PUT /{bucket} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                self.server.addr
            ),
        )
        .expect("creating the bucket");
        assert_eq!(status, 200, "creating bucket {bucket}: {body}");
    }

    /// The object `bucket/key` as text, `None` when it is missing. moto refuses anonymous
    /// reads of private objects but checks no signature, so any credential does.
    pub fn get_object(&self, bucket: &str, key: &str) -> Option<String> {
        let (status, text) = request(
            &self.server.addr,
            &format!(
                "GET /{bucket}/{key} HTTP/1.1\r\nHost: {}\r\nAuthorization: AWS4-HMAC-SHA256 \
                 Credential=AK/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, \
                 Signature=00\r\nConnection: close\r\n\r\n",
                self.server.addr
            ),
        )
        .expect("reading from moto");
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string());
        match status {
            200 => body,
            404 => None,
            _ => panic!("GET {bucket}/{key}: {text}"),
        }
    }

    /// The `METHOD /PATH` lines logged for requests whose path contains `needle`.
    pub fn requests(&self, method: &str, needle: &str) -> Vec<String> {
        requests(&self.server.log(), method, needle)
    }
}

/// Azurite's blob service, with the development account.
pub struct AzuriteServer {
    server: Server,
}

impl AzuriteServer {
    /// Starts one, or returns `None` (after saying why) when `azurite-blob` is not installed;
    /// panics instead when externals are required.
    pub fn start() -> Option<AzuriteServer> {
        let program = program("node/node_modules/.bin", "azurite-blob");
        if crate::skip_without(
            "azurite-blob (scripts/setup.sh installs it)",
            program.is_none(),
        ) {
            return None;
        }
        Some(Self::try_start(&program.expect("checked")).expect("starting azurite-blob"))
    }

    fn try_start(program: &Path) -> Result<AzuriteServer> {
        let dir = tempfile::Builder::new().prefix("kiln-azurite-").tempdir()?;
        let port = free_port()?;
        let location = dir.path().join("data");
        std::fs::create_dir_all(&location)?;
        let server = Server::start(
            program,
            &[
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                &port.to_string(),
                "--location",
                &location.to_string_lossy(),
                "--skipApiVersionCheck",
            ],
            "azurite-blob",
            dir,
            port,
        )?;
        Ok(AzuriteServer { server })
    }

    /// The account URL: `http://127.0.0.1:PORT/devstoreaccount1`.
    pub fn account_url(&self) -> String {
        format!("http://{}/{AZURITE_ACCOUNT}", self.server.addr)
    }

    /// The `METHOD /PATH` lines logged for requests whose path contains `needle`.
    pub fn requests(&self, method: &str, needle: &str) -> Vec<String> {
        requests(&self.server.log(), method, needle)
    }
}
