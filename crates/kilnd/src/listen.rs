//! The addresses kilnd listens on: unix sockets, TCP with mutual TLS (or, with `--insecure`,
//! without), and sockets inherited from systemd.

use std::os::fd::FromRawFd as _;
use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use kiln_proto::v1::builder_server::BuilderServer;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use crate::Args;
use crate::service::BuilderService;

/// The daemon's certificate, key and client CA.
pub struct TlsFiles {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

/// `--tlscert/--tlskey/--tlscacert` over `[grpc.tls]`; all three or none.
pub fn tls_files(args: &Args, config: Option<&kiln_engine::GrpcTls>) -> Result<Option<TlsFiles>> {
    let cert = args
        .tlscert
        .clone()
        .or_else(|| config.and_then(|c| c.cert.clone()));
    let key = args
        .tlskey
        .clone()
        .or_else(|| config.and_then(|c| c.key.clone()));
    let ca = args
        .tlscacert
        .clone()
        .or_else(|| config.and_then(|c| c.ca.clone()));
    match (cert, key, ca) {
        (None, None, None) => Ok(None),
        (Some(cert), Some(key), Some(ca)) => Ok(Some(TlsFiles { cert, key, ca })),
        _ => bail!(
            "TLS needs a certificate, a key and a client CA: give all of --tlscert, --tlskey \
             and --tlscacert (or `[grpc.tls] cert key ca`)"
        ),
    }
}

pub enum Kind {
    Unix(PathBuf),
    Tcp(String),
}

pub struct Listener {
    pub address: String,
    kind: Kind,
}

impl Listener {
    /// `unix:///path` or `tcp://host:port`; a TCP address needs TLS unless `insecure`.
    pub fn parse(address: &str, tls: bool, insecure: bool) -> Result<Listener> {
        let kind = if let Some(path) = address.strip_prefix("unix://") {
            if !path.starts_with('/') {
                bail!("invalid address `{address}`: a unix socket path must be absolute");
            }
            Kind::Unix(PathBuf::from(path))
        } else if let Some(hostport) = address.strip_prefix("tcp://") {
            if hostport
                .rsplit_once(':')
                .is_none_or(|(_, p)| p.parse::<u16>().is_err())
            {
                bail!("invalid address `{address}`: expected tcp://HOST:PORT");
            }
            if !tls && !insecure {
                bail!(
                    "refusing to listen on `{address}` without TLS: give --tlscert, --tlskey \
                     and --tlscacert (or `[grpc.tls]`), or --insecure to serve it in the clear"
                );
            }
            Kind::Tcp(hostport.to_string())
        } else {
            bail!("invalid address `{address}`: expected unix:///PATH or tcp://HOST:PORT");
        };
        Ok(Listener {
            address: address.to_string(),
            kind,
        })
    }

    pub async fn bind(&self, tls: Option<&TlsFiles>) -> Result<Bound> {
        match &self.kind {
            Kind::Unix(path) => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("creating `{}`", dir.display()))?;
                }
                // A socket left by a daemon that is gone; anything else there is kept.
                if std::fs::symlink_metadata(path)
                    .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
                {
                    let _ = std::fs::remove_file(path);
                }
                let l = tokio::net::UnixListener::bind(path)
                    .with_context(|| format!("listening on `{}`", self.address))?;
                // Only root (the owner) may build: the socket is the daemon's whole access check.
                std::fs::set_permissions(
                    path,
                    std::os::unix::fs::PermissionsExt::from_mode(0o660),
                )?;
                Ok(Bound::Unix(l))
            }
            Kind::Tcp(hostport) => {
                let l = tokio::net::TcpListener::bind(hostport)
                    .await
                    .with_context(|| format!("listening on `{}`", self.address))?;
                let tls = match tls {
                    Some(f) => Some(server_tls(f)?),
                    None => None,
                };
                Ok(Bound::Tcp(l, tls))
            }
        }
    }
}

fn server_tls(f: &TlsFiles) -> Result<ServerTlsConfig> {
    let read = |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading `{}`", p.display()));
    Ok(ServerTlsConfig::new()
        .identity(Identity::from_pem(read(&f.cert)?, read(&f.key)?))
        // Mutual TLS: a client without a certificate from this CA gets no connection.
        .client_ca_root(Certificate::from_pem(read(&f.ca)?))
        .client_auth_optional(false))
}

pub enum Bound {
    Unix(tokio::net::UnixListener),
    Tcp(tokio::net::TcpListener, Option<ServerTlsConfig>),
}

impl Bound {
    pub async fn serve(self, service: BuilderService) -> Result<()> {
        match self {
            Bound::Unix(l) => serve_unix_listener(l, service).await,
            Bound::Tcp(l, tls) => {
                let mut server = Server::builder();
                if let Some(tls) = tls {
                    server = server.tls_config(tls).context("configuring TLS")?;
                }
                server
                    .add_service(BuilderServer::new(service).max_decoding_message_size(64 << 20))
                    .serve_with_incoming(TcpListenerStream::new(l))
                    .await
                    .context("serving gRPC")
            }
        }
    }
}

pub async fn serve_unix_listener(
    l: tokio::net::UnixListener,
    service: BuilderService,
) -> Result<()> {
    Server::builder()
        .add_service(BuilderServer::new(service).max_decoding_message_size(64 << 20))
        .serve_with_incoming(UnixListenerStream::new(l))
        .await
        .context("serving gRPC")
}

/// systemd socket activation: `LISTEN_PID` is this process and `LISTEN_FDS` sockets start at
/// fd 3. Only unix stream sockets are taken (the shipped kilnd.socket is one).
pub fn inherited_unix_listeners() -> Result<Vec<tokio::net::UnixListener>> {
    let pid = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok());
    let n = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse::<i32>().ok());
    let (Some(pid), Some(n)) = (pid, n) else {
        return Ok(Vec::new());
    };
    if pid != std::process::id() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for fd in 3..3 + n {
        // SAFETY: systemd passed these descriptors to this process for it to own; nothing
        // else in kilnd opened or uses them.
        let std_l = unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) };
        // Not handed on to runc and the other programs kilnd starts.
        rustix::io::fcntl_setfd(&std_l, rustix::io::FdFlags::CLOEXEC)?;
        std_l.set_nonblocking(true)?;
        out.push(
            tokio::net::UnixListener::from_std(std_l).context("taking a socket from systemd")?,
        );
    }
    Ok(out)
}
