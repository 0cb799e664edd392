//! Reaching a daemon: `unix:///path` or `tcp://host:port`, the latter with TLS when files are
//! given (the daemon asks for a client certificate).

use std::path::PathBuf;

use hyper_util::rt::TokioIo;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity, Uri};

use crate::Error;

/// A daemon's address and, for TCP, the TLS files to reach it with.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub address: String,
    pub tls: Option<TlsFiles>,
}

/// `--driver-opt cacert=,cert=,key=,servername=` of a remote builder.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    /// The CA the daemon's certificate must chain to.
    pub ca_cert: Option<PathBuf>,
    /// The client's certificate and key.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// The name the daemon's certificate must have; the address's host when `None`.
    pub server_name: Option<String>,
}

/// Opens a channel to the daemon.
pub async fn connect(endpoint: &Endpoint) -> Result<Channel, Error> {
    let address = endpoint.address.clone();
    let fail = |reason: String| Error::Connect {
        address: address.clone(),
        reason,
    };
    if let Some(path) = endpoint.address.strip_prefix("unix://") {
        let path = PathBuf::from(path);
        // The URI is unused: every connection is the socket.
        return tonic::transport::Endpoint::from_static("http://kilnd")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    let s = tokio::net::UnixStream::connect(&path).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(s))
                }
            }))
            .await
            .map_err(|e| fail(error_chain(&e)));
    }
    let Some(hostport) = endpoint.address.strip_prefix("tcp://") else {
        return Err(fail("expected unix:///PATH or tcp://HOST:PORT".into()));
    };
    let scheme = if endpoint.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let mut ep = tonic::transport::Endpoint::from_shared(format!("{scheme}://{hostport}"))
        .map_err(|e| fail(e.to_string()))?;
    if let Some(files) = &endpoint.tls {
        let read = |p: &PathBuf| {
            std::fs::read(p).map_err(|e| fail(format!("reading `{}`: {e}", p.display())))
        };
        let mut tls = ClientTlsConfig::new();
        if let Some(ca) = &files.ca_cert {
            tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        match (&files.cert, &files.key) {
            (Some(c), Some(k)) => tls = tls.identity(Identity::from_pem(read(c)?, read(k)?)),
            (None, None) => {}
            _ => {
                return Err(fail(
                    "a client certificate needs its key, and a key its certificate".into(),
                ));
            }
        }
        let host = hostport.rsplit_once(':').map_or(hostport, |(h, _)| h);
        tls = tls.domain_name(
            files
                .server_name
                .clone()
                .unwrap_or_else(|| host.to_string()),
        );
        ep = ep.tls_config(tls).map_err(|e| fail(error_chain(&e)))?;
    }
    ep.connect().await.map_err(|e| fail(error_chain(&e)))
}

/// An error and its causes on one line.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(&format!(": {c}"));
        cause = c.source();
    }
    s
}
