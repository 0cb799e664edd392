//! A token server for `docker-registry` configured with `auth: token`, the protocol Docker Hub
//! and most hosted registries speak: `GET /token?service=S&scope=S1&scope=S2` with optional
//! basic credentials returns a JWT (ES256, its certificate in the `x5c` header, the registry
//! trusting that certificate through `rootcertbundle`) granting the requested actions to a
//! user with the right password, and nothing to an anonymous one. Every request is recorded so
//! tests can check the scopes a client asked for.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Result;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

/// The `service` and `iss` the registry is configured to expect.
pub const SERVICE: &str = "kiln-test-registry";
pub const ISSUER: &str = "kiln-test-token-issuer";

/// One request the server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// The user of the basic credentials, when some were sent.
    pub user: Option<String>,
    /// Whether those credentials were right (a token was issued).
    pub granted: bool,
    pub service: Option<String>,
    /// Each `scope` parameter as sent.
    pub scopes: Vec<String>,
}

/// A running token server, stopped when dropped.
pub struct TokenServer {
    /// `http://127.0.0.1:PORT/token`.
    pub realm: String,
    /// The certificate whose key signs the tokens (PEM), for `rootcertbundle`.
    pub cert: PathBuf,
    requests: Arc<Mutex<Vec<TokenRequest>>>,
    stop: Arc<AtomicBool>,
    addr: String,
    thread: Option<JoinHandle<()>>,
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(&self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl TokenServer {
    /// Starts a server for `user`/`password`, its key and certificate made by `openssl` in `dir`.
    pub fn start(dir: &Path, user: &str, password: &str) -> Result<TokenServer> {
        let (key, cert_der, cert) = make_key(dir)?;
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?.to_string();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let signer = Signer {
            key,
            x5c: STANDARD.encode(cert_der),
            user: user.to_string(),
            password: password.to_string(),
        };
        let thread = {
            let (requests, stop) = (requests.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(stream) = stream {
                        // One request per connection; a broken client only loses its own.
                        let _ = signer.serve(stream, &requests);
                    }
                }
            })
        };
        Ok(TokenServer {
            realm: format!("http://{addr}/token"),
            cert,
            requests,
            stop,
            addr,
            thread: Some(thread),
        })
    }

    /// Every request answered so far, in order.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

struct Signer {
    key: EcdsaKeyPair,
    x5c: String,
    user: String,
    password: String,
}

impl Signer {
    fn serve(&self, stream: TcpStream, log: &Mutex<Vec<TokenRequest>>) -> Result<()> {
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let target = line.split(' ').nth(1).unwrap_or("/").to_string();
        let mut basic = None;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.trim().eq_ignore_ascii_case("authorization")
                && let Some(b64) = value.trim().strip_prefix("Basic ")
            {
                let decoded = String::from_utf8(STANDARD.decode(b64.trim())?)?;
                basic = decoded
                    .split_once(':')
                    .map(|(u, p)| (u.to_string(), p.to_string()));
            }
        }
        let query = target.split_once('?').map(|(_, q)| q).unwrap_or("");
        let mut request = TokenRequest {
            user: basic.as_ref().map(|(u, _)| u.clone()),
            granted: false,
            service: None,
            scopes: Vec::new(),
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v);
            match k {
                "service" => request.service = Some(v),
                "scope" => request.scopes.push(v),
                _ => {}
            }
        }
        let mut out = stream;
        let response = match &basic {
            Some((u, p)) if *u != self.user || *p != self.password => {
                let body = r#"{"errors":[{"code":"UNAUTHORIZED","message":"invalid username or password"}]}"#;
                format!(
                    "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
            }
            _ => {
                request.granted = basic.is_some();
                let token = self.token(&request)?;
                let body = serde_json::json!({
                    "token": token,
                    "access_token": token,
                    "expires_in": 300,
                })
                .to_string();
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
            }
        };
        if let Ok(mut l) = log.lock() {
            l.push(request);
        }
        out.write_all(response.as_bytes())?;
        out.flush()?;
        Ok(())
    }

    /// A JWT granting every requested action to a user with the right password, nothing to an
    /// anonymous one.
    fn token(&self, request: &TokenRequest) -> Result<String> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let access: Vec<serde_json::Value> = if request.granted {
            request
                .scopes
                .iter()
                .flat_map(|s| s.split(' '))
                .filter_map(|scope| {
                    let (kind, rest) = scope.split_once(':')?;
                    let (name, actions) = rest.rsplit_once(':')?;
                    Some(serde_json::json!({
                        "type": kind,
                        "name": name,
                        "actions": actions.split(',').collect::<Vec<_>>(),
                    }))
                })
                .collect()
        } else {
            Vec::new()
        };
        let header = serde_json::json!({"typ": "JWT", "alg": "ES256", "x5c": [self.x5c]});
        let claims = serde_json::json!({
            "iss": ISSUER,
            "sub": request.user.clone().unwrap_or_default(),
            "aud": request.service.clone().unwrap_or_else(|| SERVICE.to_string()),
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": format!("{now}-{}", request.scopes.len()),
            "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self
            .key
            .sign(&SystemRandom::new(), signing_input.as_bytes())
            .map_err(|_| anyhow::anyhow!("signing the token failed"))?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        ))
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A P-256 key and a self-signed certificate for it: (key, certificate DER, certificate PEM).
fn make_key(dir: &Path) -> Result<(EcdsaKeyPair, Vec<u8>, PathBuf)> {
    let openssl = |args: &[&str]| crate::openssl(dir, args);
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=kiln test token issuer",
        "-keyout",
        "token.key",
        "-out",
        "token.pem",
    ])?;
    openssl(&[
        "pkcs8",
        "-topk8",
        "-nocrypt",
        "-in",
        "token.key",
        "-outform",
        "DER",
        "-out",
        "token.key.der",
    ])?;
    openssl(&[
        "x509",
        "-in",
        "token.pem",
        "-outform",
        "DER",
        "-out",
        "token.der",
    ])?;
    let pkcs8 = std::fs::read(dir.join("token.key.der"))?;
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8)
        .map_err(|e| anyhow::anyhow!("reading the token key: {e}"))?;
    Ok((
        key,
        std::fs::read(dir.join("token.der"))?,
        dir.join("token.pem"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_decoded() {
        assert_eq!(
            percent_decode("repository%3Aa%2Fb%3Apull%2Cpush"),
            "repository:a/b:pull,push"
        );
        assert_eq!(percent_decode("a+b%2"), "a b%2");
    }
}
