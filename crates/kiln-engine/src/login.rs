//! `kiln login` / `kiln logout`: Docker's config.json, so docker and kiln share credentials.

use kiln_registry::{Credential, DockerConfigCredentials};

use crate::{Config, Error, Result};

/// The registry a `docker login SERVER` argument names: `docker.io` when absent, and a URL
/// (`https://r.example/v2/`) reduced to its host.
pub fn login_server(server: Option<&str>) -> String {
    let Some(server) = server.filter(|s| !s.is_empty()) else {
        return "docker.io".into();
    };
    let host = server
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = host.split('/').next().unwrap_or(host).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".into()
        }
        _ => host,
    }
}

fn config_path() -> Result<std::path::PathBuf> {
    DockerConfigCredentials::default_path().ok_or_else(|| Error::Invalid {
        what: "docker config location".into(),
        source: "neither DOCKER_CONFIG nor HOME is set".into(),
    })
}

/// Checks `username`/`password` against `registry` (with the config's TLS and HTTP settings
/// for it), then saves them where docker would: its credential helper or config.json.
/// Returns the file written.
pub async fn login(
    config: &Config,
    registry: &str,
    username: &str,
    password: &str,
) -> Result<std::path::PathBuf> {
    let credential = Credential::Basic {
        username: username.to_string(),
        password: password.to_string(),
    };
    let client = kiln_registry::Client::new(config.registry.clone())?;
    client.login(registry, &credential).await?;
    let path = config_path()?;
    kiln_registry::save_credential(&path, registry, &credential)?;
    Ok(path)
}

/// Forgets `registry`'s credentials; returns whether there were any in config.json.
pub fn logout(registry: &str) -> Result<bool> {
    Ok(kiln_registry::remove_credential(&config_path()?, registry)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_as_docker_names_them() {
        assert_eq!(login_server(None), "docker.io");
        assert_eq!(
            login_server(Some("https://index.docker.io/v1/")),
            "docker.io"
        );
        assert_eq!(login_server(Some("Registry-1.Docker.io")), "docker.io");
        assert_eq!(
            login_server(Some("http://127.0.0.1:5000/v2/")),
            "127.0.0.1:5000"
        );
        assert_eq!(login_server(Some("ghcr.io")), "ghcr.io");
    }
}
