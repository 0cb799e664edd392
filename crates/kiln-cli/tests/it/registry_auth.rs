//! `kiln login`, `kiln logout` and `kiln push` against private registries: htpasswd basic auth
//! with credentials in Docker's config.json or behind a credential helper (Docker's protocol,
//! a script the test writes), and pushes that mount layers instead of uploading them.

use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;

use kiln_test::{RegistryOptions, TestRegistry};

use crate::support::{Kiln, Run};

const USER: &str = "kiln";
const PASSWORD: &str = "s3cret pass";

/// A kiln whose config also reaches `registry` over plain HTTP, and a Docker config dir
/// whose config.json starts as `docker_config`.
struct Setup {
    k: Kiln,
    registry: TestRegistry,
    docker_config: PathBuf,
    bin: PathBuf,
}

impl Setup {
    fn new(test: &str, config_json: &str) -> Option<Setup> {
        let k = Kiln::new(test)?;
        let registry = TestRegistry::start(RegistryOptions {
            htpasswd: Some((USER.into(), PASSWORD.into())),
            ..Default::default()
        })?;
        let mut config = std::fs::OpenOptions::new()
            .append(true)
            .open(&k.config)
            .unwrap();
        writeln!(config, "\n[registry.\"{}\"]\nhttp = true", registry.host).unwrap();
        let docker_config = k.dir().join("docker");
        std::fs::create_dir_all(&docker_config).unwrap();
        std::fs::write(docker_config.join("config.json"), config_json).unwrap();
        let bin = k.dir().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        kiln_test::write_credential_helper(&bin, "kilntest");
        Some(Setup {
            k,
            registry,
            docker_config,
            bin,
        })
    }

    /// `kiln ARGS` with DOCKER_CONFIG and the helper on PATH, `stdin` fed in.
    fn kiln(&self, args: &[&str], stdin: &str) -> Run {
        let path = format!(
            "{}:{}",
            self.bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut child = self
            .k
            .command(args)
            .env("DOCKER_CONFIG", &self.docker_config)
            .env("PATH", path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        Run {
            args: args.iter().map(|a| a.to_string()).collect(),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn config_json(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.docker_config.join("config.json")).unwrap())
            .unwrap()
    }

    fn helper_calls(&self) -> String {
        std::fs::read_to_string(self.bin.join("kilntest-calls.log")).unwrap_or_default()
    }

    /// busybox (from the shared registry) tagged as `repo:tag` on the private registry.
    fn local_image(&self, repo: &str) -> String {
        self.kiln(&["pull", "busybox:latest"], "").ok();
        let name = format!("{}/{repo}", self.registry.host);
        self.kiln(&["tag", "busybox:latest", &name], "").ok();
        name
    }
}

fn login(s: &Setup, password: &str) -> Run {
    s.kiln(
        &["login", "-u", USER, "--password-stdin", &s.registry.host],
        &format!("{password}\n"),
    )
}

fn registry_has_tag(registry: &TestRegistry, repo: &str, tag: &str) -> bool {
    // Straight to the registry with the password: what is stored, whatever kiln believes.
    let auth = base64_basic(USER, PASSWORD);
    let accept = "application/vnd.docker.distribution.manifest.v2+json, \
                  application/vnd.oci.image.manifest.v1+json";
    matches!(
        crate::support::http_get(
            &registry.host,
            &format!("/v2/{repo}/manifests/{tag}"),
            &[("Accept", accept), ("Authorization", &auth)],
            std::time::Duration::from_secs(10),
        ),
        Ok((200, _))
    )
}

fn base64_basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

#[test]
fn login_push_logout_through_a_credential_helper() {
    let Some(s) = Setup::new(
        "login_push_logout_through_a_credential_helper",
        r#"{"credsStore":"kilntest"}"#,
    ) else {
        return;
    };
    let host = s.registry.host.clone();
    let name = s.local_image("team/app:v1");

    // Without credentials the push is refused, and nothing is stored.
    let denied = s.kiln(&["push", &name], "").failed();
    assert!(
        denied.stderr.contains("requires authentication"),
        "{}",
        denied.stderr
    );

    // A wrong password is checked against the registry before anything is saved.
    let wrong = login(&s, "wrong").failed();
    assert!(wrong.stderr.contains("login to"), "{}", wrong.stderr);
    assert!(!s.helper_calls().contains("store"), "{}", s.helper_calls());

    let ok = login(&s, PASSWORD).ok();
    assert!(ok.stdout.contains("Login Succeeded"), "{}", ok.stdout);
    assert!(
        s.helper_calls().contains(&format!("store {host}\n")),
        "{}",
        s.helper_calls()
    );
    // The helper holds the secret; config.json only names the registry, as docker leaves it.
    let config = s.config_json();
    assert_eq!(config["auths"][&host], serde_json::json!({}), "{config}");
    assert_eq!(config["credsStore"], "kilntest");

    let pushed = s.kiln(&["push", &name], "").ok();
    assert!(
        pushed.stdout.trim().starts_with("sha256:"),
        "{}",
        pushed.stdout
    );
    assert!(
        s.helper_calls().contains(&format!("get {host}\n")),
        "{}",
        s.helper_calls()
    );
    assert!(registry_has_tag(&s.registry, "team/app", "v1"));

    let out = s.kiln(&["logout", &host], "").ok();
    assert!(
        out.stdout.contains("Removing login credentials"),
        "{}",
        out.stdout
    );
    assert!(s.helper_calls().contains(&format!("erase {host}\n")));
    assert!(s.config_json()["auths"].get(&host).is_none());
    let again = s.kiln(&["push", &name], "").failed();
    assert!(
        again.stderr.contains("requires authentication"),
        "{}",
        again.stderr
    );
    let out = s.kiln(&["logout", &host], "").ok();
    assert!(out.stdout.contains("Not logged in"), "{}", out.stdout);
}

#[test]
fn login_writes_auths_and_push_mounts_shared_layers() {
    let Some(s) = Setup::new(
        "login_writes_auths_and_push_mounts_shared_layers",
        r#"{"psFormat":"table"}"#,
    ) else {
        return;
    };
    let host = s.registry.host.clone();
    let insecure = s
        .kiln(&["login", "-u", USER, "-p", PASSWORD, &host], "")
        .ok();
    assert!(
        insecure.stderr.contains("--password-stdin"),
        "{}",
        insecure.stderr
    );
    let config = s.config_json();
    assert_eq!(config["psFormat"], "table", "other settings kept");
    let auth = config["auths"][&host]["auth"].as_str().unwrap().to_string();
    assert_eq!(format!("Basic {auth}"), base64_basic(USER, PASSWORD));
    assert!(s.helper_calls().is_empty());

    let base = s.local_image("lib/base:1");
    s.kiln(&["push", &base], "").ok();
    // The same layers under another repository: mounted, not uploaded again.
    let app = format!("{host}/lib/app:1");
    s.kiln(&["tag", &base, &app], "").ok();
    let pushed = s.kiln(&["push", &app], "").ok();
    assert!(
        pushed.stderr.contains("mounted from another repository"),
        "{}",
        pushed.stderr
    );
    assert!(registry_has_tag(&s.registry, "lib/app", "1"));
    // Pushed again: everything is there already.
    let again = s.kiln(&["push", &app], "").ok();
    assert!(again.stderr.contains("already exists"), "{}", again.stderr);
    assert!(!again.stderr.contains("mounted"), "{}", again.stderr);

    // Pulled back by digest, with the saved credentials.
    let digest = again.stdout.trim().to_string();
    let by_digest = format!("{host}/lib/app@{digest}");
    let pulled = s.kiln(&["pull", &by_digest], "").ok();
    assert_eq!(pulled.stdout.trim(), digest);
}
