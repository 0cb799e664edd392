//! Registry authentication: parsing `WWW-Authenticate`, fetching bearer tokens and caching
//! them per (host, scope).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::config::Endpoint;
use crate::credentials::Credential;
use crate::error::{Cause, RegistryErrors};

/// `repository:NAME:pull`.
pub(crate) fn pull_scope(repository: &str) -> String {
    format!("repository:{repository}:pull")
}

/// `repository:NAME:pull,push`.
pub(crate) fn push_scope(repository: &str) -> String {
    format!("repository:{repository}:pull,push")
}

/// Pushing to `repository` with a blob mounted from `from`: one token for both, as the
/// registry checks pull access on the source.
pub(crate) fn mount_scope(repository: &str, from: &str) -> String {
    format!("{} {}", push_scope(repository), pull_scope(from))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Challenge {
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
    Basic,
}

/// Parses one `WWW-Authenticate` value; `None` for schemes we do not speak.
pub(crate) fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let params = parse_params(rest);
    Some(Challenge::Bearer {
        realm: params.get("realm")?.clone(),
        service: params.get("service").cloned(),
        scope: params.get("scope").cloned(),
    })
}

/// `key="value", key=value` pairs; quoted values may hold commas (`pull,push`).
fn parse_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars
            .by_ref()
            .take_while(|c| *c != '=')
            .collect::<String>()
            .trim()
            .to_ascii_lowercase();
        if key.is_empty() {
            return out;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| *c != ',') {
                value.push(c);
            }
            value = value.trim().to_string();
        }
        out.insert(key, value);
    }
}

#[derive(Debug)]
struct CachedToken {
    token: String,
    expires_at: Instant,
}

/// What the client has learnt about each host's auth.
#[derive(Debug, Default)]
pub(crate) struct AuthCache {
    tokens: Mutex<HashMap<(String, String), CachedToken>>,
    /// Bearer challenges seen per host, so later scopes fetch a token before the first request.
    realms: Mutex<HashMap<String, Challenge>>,
    basic_hosts: Mutex<HashSet<String>>,
}

/// What to attach to a request.
#[derive(Clone)]
pub(crate) enum Authorization {
    None,
    Bearer(String),
    Basic(String, String),
}

/// Tokens are dropped this long before the registry says they expire, to allow for clock skew
/// and for the request in flight.
const EXPIRY_MARGIN: Duration = Duration::from_secs(5);
/// The distribution spec's default token lifetime.
const DEFAULT_EXPIRES_IN: u64 = 60;

impl AuthCache {
    pub fn cached_token(&self, host: &str, scope: &str) -> Option<String> {
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        let key = (host.to_string(), scope.to_string());
        match tokens.get(&key) {
            Some(t) if t.expires_at > Instant::now() => Some(t.token.clone()),
            Some(_) => {
                tokens.remove(&key);
                None
            }
            None => None,
        }
    }

    fn store_token(&self, host: &str, scope: &str, token: String, lifetime: Duration) {
        let Some(expires_at) = Instant::now().checked_add(lifetime.saturating_sub(EXPIRY_MARGIN))
        else {
            return;
        };
        self.tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                (host.to_string(), scope.to_string()),
                CachedToken { token, expires_at },
            );
    }

    fn known_realm(&self, host: &str) -> Option<Challenge> {
        self.realms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(host)
            .cloned()
    }

    fn is_basic(&self, host: &str) -> bool {
        self.basic_hosts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(host)
    }

    /// The authorization for a request to `ep` under `scope`, fetching a token up front when the
    /// host is known to want one.
    pub async fn authorization(
        &self,
        ep: &Endpoint,
        scope: &str,
        credential: Option<&Credential>,
    ) -> Result<Authorization, Cause> {
        if let Some(token) = self.cached_token(&ep.host, scope) {
            return Ok(Authorization::Bearer(token));
        }
        if let Some(challenge) = self.known_realm(&ep.host) {
            let token = self.fetch_token(ep, scope, &challenge, credential).await?;
            return Ok(Authorization::Bearer(token));
        }
        if self.is_basic(&ep.host)
            && let Some(Credential::Basic { username, password }) = credential
        {
            return Ok(Authorization::Basic(username.clone(), password.clone()));
        }
        Ok(Authorization::None)
    }

    /// Reacts to a 401: remembers the challenge and returns what the retry should send. An
    /// error means retrying the request is pointless.
    pub async fn handle_challenge(
        &self,
        ep: &Endpoint,
        scope: &str,
        url: &str,
        response: &reqwest::Response,
        credential: Option<&Credential>,
    ) -> Result<Authorization, Cause> {
        let challenges: Vec<Challenge> = response
            .headers()
            .get_all(reqwest::header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(parse_challenge)
            .collect();
        let bearer = challenges
            .iter()
            .find(|c| matches!(c, Challenge::Bearer { .. }));
        if let Some(challenge) = bearer {
            self.realms
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(ep.host.clone(), challenge.clone());
            // Used directly: a token shorter-lived than the cache margin is never cached.
            let token = self.fetch_token(ep, scope, challenge, credential).await?;
            return Ok(Authorization::Bearer(token));
        }
        if challenges.contains(&Challenge::Basic) {
            let Some(Credential::Basic { username, password }) = credential else {
                return Err(Cause::NoCredentials {
                    url: url.to_string(),
                    host: ep.cred_host.clone(),
                });
            };
            self.basic_hosts
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(ep.host.clone());
            return Ok(Authorization::Basic(username.clone(), password.clone()));
        }
        Err(Cause::InvalidResponse {
            url: url.to_string(),
            reason: "401 without a usable WWW-Authenticate challenge".into(),
        })
    }

    async fn fetch_token(
        &self,
        ep: &Endpoint,
        scope: &str,
        challenge: &Challenge,
        credential: Option<&Credential>,
    ) -> Result<String, Cause> {
        let Challenge::Bearer {
            realm,
            service,
            scope: challenge_scope,
        } = challenge
        else {
            return Err(Cause::InvalidResponse {
                url: ep.url("/v2/"),
                reason: "expected a bearer challenge".into(),
            });
        };
        let token_err = |source: Cause| Cause::Token {
            realm: realm.clone(),
            source: Box::new(source),
        };
        let mut url = url::Url::parse(realm).map_err(|e| {
            token_err(Cause::InvalidResponse {
                url: realm.clone(),
                reason: format!("invalid realm: {e}"),
            })
        })?;
        // Credentials must not cross the network in clear unless the registry itself is HTTP.
        if url.scheme() != "https" && !(url.scheme() == "http" && ep.http) {
            return Err(token_err(Cause::HttpNotAllowed { url: realm.clone() }));
        }
        // `scope` may hold several, space-separated; each is its own `scope` parameter.
        let mut scopes: Vec<String> = scope
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        if let Some(s) = challenge_scope
            .as_ref()
            .filter(|s| !s.is_empty() && !scopes.contains(s))
        {
            scopes.push(s.clone());
        }
        let request = match credential {
            Some(Credential::IdentityToken { token }) => {
                let mut form = url::form_urlencoded::Serializer::new(String::new());
                form.append_pair("grant_type", "refresh_token")
                    .append_pair("refresh_token", token)
                    .append_pair("client_id", "kiln");
                if !scopes.is_empty() {
                    form.append_pair("scope", &scopes.join(" "));
                }
                if let Some(service) = service {
                    form.append_pair("service", service);
                }
                ep.client
                    .post(url.as_str())
                    .header(
                        reqwest::header::CONTENT_TYPE,
                        "application/x-www-form-urlencoded",
                    )
                    .body(form.finish())
            }
            other => {
                {
                    let mut query = url.query_pairs_mut();
                    if let Some(service) = service {
                        query.append_pair("service", service);
                    }
                    for s in &scopes {
                        query.append_pair("scope", s);
                    }
                    if let Some(Credential::Basic { username, .. }) = other {
                        query.append_pair("account", username);
                    }
                }
                let request = ep.client.get(url.as_str());
                match other {
                    Some(Credential::Basic { username, password }) => {
                        request.basic_auth(username, Some(password))
                    }
                    _ => request,
                }
            }
        };
        let method = if matches!(credential, Some(Credential::IdentityToken { .. })) {
            "POST"
        } else {
            "GET"
        };
        let response = request.send().await.map_err(|source| {
            token_err(Cause::Transport {
                method: method.into(),
                url: realm.clone(),
                source,
            })
        })?;
        let status = response.status();
        let body = response.bytes().await.map_err(|source| {
            token_err(Cause::Body {
                url: realm.clone(),
                source,
            })
        })?;
        if !status.is_success() {
            return Err(token_err(Cause::Status {
                method: method.into(),
                url: realm.clone(),
                status,
                errors: RegistryErrors::parse(&body),
            }));
        }
        let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|source| {
            token_err(Cause::Json {
                object: "token response",
                source,
            })
        })?;
        let token = parsed
            .token
            .or(parsed.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                token_err(Cause::InvalidResponse {
                    url: realm.clone(),
                    reason: "no `token` or `access_token`".into(),
                })
            })?;
        let lifetime = token_lifetime(
            parsed.expires_in,
            parsed.issued_at.as_deref(),
            chrono::Utc::now(),
        );
        self.store_token(&ep.host, scope, token.clone(), lifetime);
        Ok(token)
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    issued_at: Option<String>,
}

/// How long from `now` a token stays valid: `expires_in` (default 60 s) counted from
/// `issued_at` when the server sent one, so a token issued a while ago (or by a server whose
/// clock runs ahead) is dropped sooner; never longer than `expires_in` from now.
fn token_lifetime(
    expires_in: Option<u64>,
    issued_at: Option<&str>,
    now: chrono::DateTime<chrono::Utc>,
) -> Duration {
    let expires_in =
        Duration::from_secs(expires_in.filter(|s| *s > 0).unwrap_or(DEFAULT_EXPIRES_IN));
    let Some(issued) = issued_at.and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok()) else {
        return expires_in;
    };
    let age = (now - issued.with_timezone(&chrono::Utc))
        .to_std()
        .unwrap_or(Duration::ZERO);
    expires_in.saturating_sub(age)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_with_quoted_commas() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/python:pull,push""#,
        );
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/python:pull,push".into()),
            })
        );
    }

    #[test]
    fn parses_unquoted_and_basic_and_rejects_others() {
        assert_eq!(
            parse_challenge("bearer realm=http://x/token, service=reg"),
            Some(Challenge::Bearer {
                realm: "http://x/token".into(),
                service: Some("reg".into()),
                scope: None,
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Negotiate abc"), None);
        assert_eq!(parse_challenge(r#"Bearer service="no-realm""#), None);
    }

    #[test]
    fn token_cache_expires() {
        let cache = AuthCache::default();
        cache.store_token("h", "s", "long".into(), Duration::from_secs(300));
        cache.store_token("h", "short", "t".into(), Duration::from_secs(1));
        assert_eq!(cache.cached_token("h", "s").as_deref(), Some("long"));
        assert_eq!(cache.cached_token("h", "other"), None);
        assert_eq!(cache.cached_token("other", "s"), None);
        // A one-second token is within the expiry margin, so it is never served.
        assert_eq!(cache.cached_token("h", "short"), None);
    }

    #[test]
    fn scopes() {
        assert_eq!(pull_scope("library/x"), "repository:library/x:pull");
        assert_eq!(push_scope("a/b"), "repository:a/b:pull,push");
        assert_eq!(
            mount_scope("a/b", "c"),
            "repository:a/b:pull,push repository:c:pull"
        );
    }

    #[test]
    fn lifetime_counts_from_issued_at() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:10:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let secs = |e, i| token_lifetime(e, i, now).as_secs();
        assert_eq!(secs(Some(300), None), 300);
        assert_eq!(secs(None, None), 60);
        assert_eq!(secs(Some(0), None), 60);
        // Issued 4 minutes ago with a 5 minute life: one minute left.
        assert_eq!(secs(Some(300), Some("2026-01-01T00:06:00Z")), 60);
        assert_eq!(secs(Some(300), Some("2026-01-01T00:00:00Z")), 0);
        // A server clock ahead of ours never extends the life.
        assert_eq!(secs(Some(300), Some("2026-01-01T00:20:00+00:00")), 300);
        assert_eq!(secs(Some(300), Some("yesterday")), 300);
    }
}
