//! A registry with `auth: token` (Docker Hub's scheme): kiln logs in, pushes and pulls with
//! bearer tokens from the test's token server, asking for the scopes each operation needs.

use std::io::Write;
use std::path::PathBuf;

use kiln_test::{RegistryOptions, TestRegistry};

use crate::support::{Kiln, Run};

const USER: &str = "kiln";
const PASSWORD: &str = "t0ken pass";

struct Setup {
    k: Kiln,
    registry: TestRegistry,
    docker_config: PathBuf,
}

impl Setup {
    fn new(test: &str) -> Option<Setup> {
        let k = Kiln::new(test)?;
        let registry = TestRegistry::start(RegistryOptions {
            token: Some((USER.into(), PASSWORD.into())),
            ..Default::default()
        })?;
        let mut config = std::fs::OpenOptions::new()
            .append(true)
            .open(&k.config)
            .unwrap();
        writeln!(config, "\n[registry.\"{}\"]\nhttp = true", registry.host).unwrap();
        let docker_config = k.dir().join("docker");
        std::fs::create_dir_all(&docker_config).unwrap();
        Some(Setup {
            k,
            registry,
            docker_config,
        })
    }

    fn kiln(&self, args: &[&str]) -> Run {
        let out = self
            .k
            .command(args)
            .env("DOCKER_CONFIG", &self.docker_config)
            .output()
            .unwrap();
        Run {
            args: args.iter().map(|a| a.to_string()).collect(),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// The scopes of each granted token request, one string per request.
    fn granted_scopes(&self) -> Vec<Vec<String>> {
        let server = self.registry.token_server.as_ref().unwrap();
        server
            .requests()
            .into_iter()
            .filter(|r| r.granted)
            .map(|r| {
                assert_eq!(r.service.as_deref(), Some(kiln_test::SERVICE));
                r.scopes
            })
            .collect()
    }
}

fn no_panic(run: &Run) {
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
}

#[test]
fn token_auth_login_push_mount_and_pull() {
    let Some(s) = Setup::new("token_auth_login_push_mount_and_pull") else {
        return;
    };
    let host = s.registry.host.clone();
    s.kiln(&["pull", "busybox:latest"]).ok();
    let app = format!("{host}/team/app:v1");
    s.kiln(&["tag", "busybox:latest", &app]).ok();

    // Anonymous tokens grant nothing here.
    let denied = s.kiln(&["push", &app]).failed();
    no_panic(&denied);

    let wrong = s
        .kiln(&["login", "-u", USER, "-p", "wrong", &host])
        .failed();
    no_panic(&wrong);
    assert!(wrong.stderr.contains("login to"), "{}", wrong.stderr);
    assert!(
        wrong.stderr.contains("401") || wrong.stderr.contains("nauthorized"),
        "{}",
        wrong.stderr
    );

    let ok = s.kiln(&["login", "-u", USER, "-p", PASSWORD, &host]).ok();
    assert!(ok.stdout.contains("Login Succeeded"), "{}", ok.stdout);

    s.kiln(&["push", &app]).ok();
    let push_scope = "repository:team/app:pull,push".to_string();
    assert!(
        s.granted_scopes().iter().any(|r| r.contains(&push_scope)),
        "{:?}",
        s.granted_scopes()
    );

    // The same layers into another repository: mounted, with one token for both.
    let other = format!("{host}/team/other:v1");
    s.kiln(&["tag", &app, &other]).ok();
    let mounted = s.kiln(&["push", &other]).ok();
    assert!(
        mounted.stderr.contains("mounted from another repository"),
        "{}",
        mounted.stderr
    );
    let both = [
        "repository:team/other:pull,push".to_string(),
        "repository:team/app:pull".to_string(),
    ];
    assert!(
        s.granted_scopes()
            .iter()
            .any(|r| both.iter().all(|b| r.contains(b))),
        "{:?}",
        s.granted_scopes()
    );

    // Pulled back into an empty store through a pull-only token.
    s.kiln(&["rmi", &app, &other]).ok();
    let pulled = s.kiln(&["pull", &app]).ok();
    no_panic(&pulled);
    assert!(
        s.granted_scopes()
            .iter()
            .any(|r| r.contains(&"repository:team/app:pull".to_string())),
        "{:?}",
        s.granted_scopes()
    );
    let listed = s.kiln(&["images"]).ok();
    assert!(listed.stdout.contains("team/app"), "{}", listed.stdout);
}
