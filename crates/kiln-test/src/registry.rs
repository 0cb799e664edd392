//! A private `docker-registry` (Debian's build of distribution) per test, on a free loopback
//! port with its own storage: plain, with htpasswd basic auth, or with TLS from a CA the test
//! generates (optionally requiring client certificates).

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

#[derive(Debug, Default, Clone)]
pub struct RegistryOptions {
    /// Require basic auth with this user and password (an htpasswd file, bcrypt).
    pub htpasswd: Option<(String, String)>,
    /// Serve HTTPS with a certificate from a CA made for this registry.
    pub tls: bool,
    /// With `tls`, also require a client certificate signed by that CA.
    pub client_certs: bool,
    /// Require bearer tokens from a [`TokenServer`] started for this user and password.
    pub token: Option<(String, String)>,
}

/// A running registry, killed when dropped.
pub struct TestRegistry {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub host: String,
    dir: tempfile::TempDir,
    pub tls: Option<Certificates>,
    /// With `token`, the server the registry sends clients to.
    pub token_server: Option<crate::TokenServer>,
}

/// PEM files under the registry's directory.
#[derive(Debug, Clone)]
pub struct Certificates {
    pub ca: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TestRegistry {
    /// Starts a registry, or returns `None` (after saying why) when `docker-registry` or,
    /// for TLS, `openssl` is not installed; panics instead when externals are required.
    pub fn start(options: RegistryOptions) -> Option<TestRegistry> {
        let mut needed = vec!["docker-registry"];
        if options.tls || options.token.is_some() {
            needed.push("openssl");
        }
        for program in needed {
            if crate::skip_without(
                &format!("`{program}` on PATH"),
                crate::find_program(program).is_none(),
            ) {
                return None;
            }
        }
        Some(Self::try_start(options).expect("starting docker-registry"))
    }

    fn try_start(options: RegistryOptions) -> Result<TestRegistry> {
        let dir = tempfile::Builder::new()
            .prefix("kiln-registry-")
            .tempdir()?;
        // Take a free port from the kernel; the registry binds it right after.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let host = format!("127.0.0.1:{port}");
        let mut yaml = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  \
             delete:\n    enabled: true\nhttp:\n  addr: {host}\n",
            dir.path().join("storage").display()
        );
        let mut tls = None;
        if options.tls {
            let certs = make_certificates(dir.path())?;
            yaml.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                dir.path().join("server.pem").display(),
                dir.path().join("server.key").display()
            ));
            if options.client_certs {
                yaml.push_str(&format!("    clientcas:\n      - {}\n", certs.ca.display()));
            }
            tls = Some(certs);
        }
        if let Some((user, password)) = &options.htpasswd {
            let hash = bcrypt::hash(password, 4).context("hashing the password")?;
            let file = dir.path().join("htpasswd");
            std::fs::write(&file, format!("{user}:{hash}\n"))?;
            yaml.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: kiln-test\n    path: {}\n",
                file.display()
            ));
        }
        let mut token_server = None;
        if let Some((user, password)) = &options.token {
            let server = crate::TokenServer::start(dir.path(), user, password)?;
            yaml.push_str(&format!(
                "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    \
                 rootcertbundle: {}\n",
                server.realm,
                crate::SERVICE,
                crate::ISSUER,
                server.cert.display()
            ));
            token_server = Some(server);
        }
        let config = dir.path().join("config.yml");
        std::fs::write(&config, yaml)?;
        let log = std::fs::File::create(dir.path().join("registry.log"))?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("spawning docker-registry")?;
        let mut registry = TestRegistry {
            child,
            host,
            dir,
            tls,
            token_server,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&registry.host).is_err() {
            if let Ok(Some(status)) = registry.child.try_wait() {
                bail!("docker-registry exited with {status}:\n{}", registry.log());
            }
            if Instant::now() > deadline {
                bail!("docker-registry did not listen on {}", registry.host);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(registry)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What the registry wrote to stderr, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, all from `openssl`.
fn make_certificates(dir: &Path) -> Result<Certificates> {
    let openssl = |args: &[&str]| crate::openssl(dir, args);
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509", "-days", "2", "-subj", "/CN=kiln test CA"];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
    openssl(&ca)?;
    for (name, cn, ext) in [
        (
            "server",
            "127.0.0.1",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        ),
        (
            "client",
            "kiln test client",
            "extendedKeyUsage=clientAuth\n",
        ),
    ] {
        let extfile = format!("{name}.ext");
        std::fs::write(
            dir.join(&extfile),
            format!("basicConstraints=CA:FALSE\n{ext}"),
        )?;
        let (key, csr, pem) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        let subj = format!("/CN={cn}");
        let mut req = vec!["req", "-new", "-subj", &subj];
        req.extend(ec);
        req.extend(["-keyout", &key, "-out", &csr]);
        openssl(&req)?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &extfile,
            "-out",
            &pem,
        ])?;
    }
    Ok(Certificates {
        ca: dir.join("ca.pem"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client.key"),
    })
}
