//! Docker's credential-helper protocol: `docker-credential-<name> get|store|erase`, the server
//! on stdin (as text for `get`/`erase`, as JSON for `store`), JSON on stdout.

use std::io::Write;
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use crate::credentials::Credential;
use crate::error::{CredentialsError, HelperError};

/// The user name helpers store with an identity token in `Secret`.
const TOKEN_USERNAME: &str = "<token>";

pub(crate) struct Helper {
    program: String,
}

#[derive(Serialize, Deserialize)]
struct Payload {
    #[serde(rename = "ServerURL", default)]
    server_url: String,
    #[serde(rename = "Username", default)]
    username: String,
    #[serde(rename = "Secret", default)]
    secret: String,
}

impl Helper {
    /// The helper named by `credsStore` or `credHelpers` (`desktop` → `docker-credential-desktop`).
    pub fn new(name: &str) -> Helper {
        Helper {
            program: format!("docker-credential-{name}"),
        }
    }

    /// The credential stored for `server`, or `None` when the helper has none.
    /// A helper at an explicit path, for tests.
    #[cfg(test)]
    pub fn at(program: &std::path::Path) -> Helper {
        Helper {
            program: program.display().to_string(),
        }
    }

    pub fn get(&self, server: &str) -> Result<Option<Credential>, CredentialsError> {
        let out = match self.call("get", server.as_bytes()) {
            Ok(out) => out,
            // The protocol's way of saying "none": a failure whose message says not found.
            Err(HelperError::Exit { output, .. }) if is_not_found(&output) => return Ok(None),
            Err(source) => return Err(self.err(source)),
        };
        let payload: Payload =
            serde_json::from_slice(&out).map_err(|e| self.err(HelperError::Json(e)))?;
        if payload.secret.is_empty() {
            return Ok(None);
        }
        Ok(Some(if payload.username == TOKEN_USERNAME {
            Credential::IdentityToken {
                token: payload.secret,
            }
        } else {
            Credential::Basic {
                username: payload.username,
                password: payload.secret,
            }
        }))
    }

    pub fn store(&self, server: &str, credential: &Credential) -> Result<(), CredentialsError> {
        let (username, secret) = match credential {
            Credential::Basic { username, password } => (username.clone(), password.clone()),
            Credential::IdentityToken { token } => (TOKEN_USERNAME.to_string(), token.clone()),
        };
        let payload = Payload {
            server_url: server.to_string(),
            username,
            secret,
        };
        let input = serde_json::to_vec(&payload)?;
        self.call("store", &input).map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Removes `server`'s credential; one that was not there is not an error.
    pub fn erase(&self, server: &str) -> Result<(), CredentialsError> {
        match self.call("erase", server.as_bytes()) {
            Ok(_) => Ok(()),
            Err(HelperError::Exit { output, .. }) if is_not_found(&output) => Ok(()),
            Err(e) => Err(self.err(e)),
        }
    }

    fn err(&self, source: HelperError) -> CredentialsError {
        CredentialsError::Helper {
            program: self.program.clone(),
            source,
        }
    }

    fn call(&self, action: &str, input: &[u8]) -> Result<Vec<u8>, HelperError> {
        let mut child = Command::new(&self.program)
            .arg(action)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(HelperError::Spawn)?;
        if let Some(mut stdin) = child.stdin.take() {
            // A helper that exits without reading its input reports through its status.
            let _ = stdin.write_all(input);
        }
        let out = child.wait_with_output().map_err(HelperError::Spawn)?;
        if !out.status.success() {
            let mut text = String::from_utf8_lossy(&out.stdout).trim().to_string();
            let stderr = String::from_utf8_lossy(&out.stderr);
            if !stderr.trim().is_empty() {
                if !text.is_empty() {
                    text.push_str("; ");
                }
                text.push_str(stderr.trim());
            }
            return Err(HelperError::Exit {
                status: out.status,
                output: text,
            });
        }
        Ok(out.stdout)
    }
}

fn is_not_found(output: &str) -> bool {
    output
        .to_ascii_lowercase()
        .contains("credentials not found")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_store_erase_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let helper = Helper::at(&kiln_test::write_credential_helper(dir.path(), "t"));
        let server = "https://index.docker.io/v1/";
        assert_eq!(helper.get(server).unwrap(), None);
        let basic = Credential::Basic {
            username: "alice".into(),
            password: "pa ss\"word".into(),
        };
        helper.store(server, &basic).unwrap();
        assert_eq!(helper.get(server).unwrap(), Some(basic));
        let token = Credential::IdentityToken {
            token: "refresh".into(),
        };
        helper.store("r.example:5000", &token).unwrap();
        assert_eq!(helper.get("r.example:5000").unwrap(), Some(token));
        helper.erase(server).unwrap();
        assert_eq!(helper.get(server).unwrap(), None);
        // Erasing what is not there is fine, as docker logout treats it.
        helper.erase(server).unwrap();
        let calls = std::fs::read_to_string(dir.path().join("t-calls.log")).unwrap();
        assert!(
            calls.starts_with(&format!("get {server}\nstore {server}\n")),
            "{calls}"
        );
    }

    #[test]
    fn failures_name_the_helper() {
        let missing = Helper::new("kiln-test-no-such-helper");
        let err = missing.get("r.example").unwrap_err();
        assert_eq!(
            err.to_string(),
            "credential helper `docker-credential-kiln-test-no-such-helper` failed"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("docker-credential-bad");
        kiln_test::write_executable(&path, "#!/bin/sh\necho 'not json'\n");
        let err = Helper::at(&path).get("r.example").unwrap_err();
        assert!(
            matches!(
                err,
                CredentialsError::Helper {
                    source: HelperError::Json(_),
                    ..
                }
            ),
            "{err:?}"
        );
    }
}
