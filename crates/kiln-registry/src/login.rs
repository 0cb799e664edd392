//! Checking credentials against a registry before they are saved, as `docker login` does.

use reqwest::{Method, StatusCode};

use crate::auth::Authorization;
use crate::client::{Client, check_status};
use crate::credentials::Credential;
use crate::error::{Cause, Error, Result};

impl Client {
    /// Verifies `credential` for `registry` (`docker.io`, `host:port`): `GET /v2/`, and on a
    /// challenge a token from the realm (bearer) or the same request with basic auth; success
    /// means the registry accepted them. A registry that needs no auth accepts anything.
    pub async fn login(&self, registry: &str, credential: &Credential) -> Result<()> {
        self.login_inner(registry, credential)
            .await
            .map_err(|source| Error::Login {
                registry: registry.to_string(),
                source: Box::new(source),
            })
    }

    async fn login_inner(
        &self,
        registry: &str,
        credential: &Credential,
    ) -> std::result::Result<(), Cause> {
        let ep = self.hosts.upstream(registry);
        let url = ep.url("/v2/");
        let transport = |source| Cause::Transport {
            method: "GET".into(),
            url: url.clone(),
            source,
        };
        let response = ep.client.get(&url).send().await.map_err(transport)?;
        if response.status() != StatusCode::UNAUTHORIZED {
            check_status(&Method::GET, &url, response).await?;
            return Ok(());
        }
        // No scope: the token only proves who we are, as docker's login asks for it.
        let answer = self
            .auth
            .handle_challenge(&ep, "", &url, &response, Some(credential))
            .await?;
        let request = ep.client.get(&url);
        let request = match answer {
            Authorization::None => request,
            Authorization::Bearer(token) => request.bearer_auth(token),
            Authorization::Basic(user, password) => request.basic_auth(user, Some(password)),
        };
        let response = request.send().await.map_err(transport)?;
        check_status(&Method::GET, &url, response).await?;
        Ok(())
    }
}
