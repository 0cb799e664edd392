//! `type=azblob`: BuildKit's attributes (cache/remotecache/azblob) and the `MicrosoftAzure`
//! store they open. Keys are joined as paths, as BuildKit does: `<prefix>/<blobs_prefix>/<digest>`.

use std::sync::Arc;

use base64::Engine as _;
use object_store::azure::MicrosoftAzureBuilder;

use super::{ObjectCache, Secret, names};
use crate::{Error, Result};

/// A parsed `type=azblob` cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AzblobCache {
    /// `https://ACCOUNT.blob.core.windows.net`, or an emulator's `http://HOST:PORT/ACCOUNT`.
    pub account_url: String,
    pub account_name: String,
    pub container: String,
    pub prefix: String,
    pub blobs_prefix: String,
    pub manifests_prefix: String,
    pub names: Vec<String>,
    secret_access_key: Option<Secret>,
}

impl std::fmt::Display for AzblobCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}",
            self.account_url.trim_end_matches('/'),
            self.container
        )?;
        if !self.prefix.is_empty() {
            write!(f, "/{}", self.prefix.trim_matches('/'))?;
        }
        Ok(())
    }
}

/// `filepath.Join` of key parts: empty parts and separators doubled by them drop out.
fn join(parts: &[&str]) -> String {
    parts
        .iter()
        .flat_map(|p| p.split('/'))
        .filter(|s| !s.is_empty() && *s != ".")
        .collect::<Vec<_>>()
        .join("/")
}

impl AzblobCache {
    /// The attributes besides `type`, `mode`, `ignore-error` and the compression ones.
    pub(crate) const KEYS: &[&str] = &[
        "account_url",
        "account_name",
        "container",
        "prefix",
        "blobs_prefix",
        "manifests_prefix",
        "name",
        "secret_access_key",
    ];

    /// From the attributes (`get`) and, for what they leave out, the environment BuildKit reads
    /// (`BUILDKIT_AZURE_STORAGE_*`); without `secret_access_key`, `AZURE_STORAGE_ACCOUNT_KEY`.
    pub(crate) fn parse(
        get: impl Fn(&str) -> Option<String>,
        env: impl Fn(&str) -> Option<String>,
    ) -> std::result::Result<AzblobCache, String> {
        let account_url = get("account_url")
            .or_else(|| env("BUILDKIT_AZURE_STORAGE_ACCOUNT_URL"))
            .filter(|u| !u.is_empty())
            .ok_or("`account_url` (or $BUILDKIT_AZURE_STORAGE_ACCOUNT_URL) is required for type=azblob")?;
        let url = url::Url::parse(&account_url)
            .map_err(|e| format!("invalid account_url `{account_url}`: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(format!(
                "invalid account_url `{account_url}`: expected https://ACCOUNT.blob.core.windows.net"
            ));
        }
        // As BuildKit: the attribute, the environment, else the host's first label.
        let account_name = get("account_name")
            .or_else(|| env("BUILDKIT_AZURE_STORAGE_ACCOUNT_NAME"))
            .unwrap_or_else(|| {
                url.host_str()
                    .unwrap_or_default()
                    .split('.')
                    .next()
                    .unwrap_or_default()
                    .to_string()
            });
        if account_name.is_empty() {
            return Err("no account name: give `account_name`".into());
        }
        let container = get("container")
            .or_else(|| env("BUILDKIT_AZURE_STORAGE_CONTAINER"))
            .unwrap_or_else(|| "buildkit-cache".into());
        if container.is_empty() || container.contains('/') {
            return Err(format!("invalid container `{container}`"));
        }
        let secret = get("secret_access_key")
            .or_else(|| env("AZURE_STORAGE_ACCOUNT_KEY"))
            .filter(|k| !k.is_empty());
        Ok(AzblobCache {
            account_url: account_url.trim_end_matches('/').to_string(),
            account_name,
            container,
            prefix: get("prefix")
                .or_else(|| env("BUILDKIT_AZURE_STORAGE_PREFIX"))
                .unwrap_or_default(),
            blobs_prefix: get("blobs_prefix").unwrap_or_else(|| "blobs".into()),
            manifests_prefix: get("manifests_prefix").unwrap_or_else(|| "manifests".into()),
            names: names(get("name"))?,
            secret_access_key: secret.map(Secret),
        })
    }

    /// Creates the container when it is missing, as BuildKit's exporter does. object_store has
    /// no call for it, so this one request is signed here (Shared Key, which needs the account
    /// key); with other credentials the container must exist.
    pub(crate) async fn ensure_container(&self) -> Result<()> {
        let Some(key) = &self.secret_access_key else {
            return Ok(());
        };
        let failed =
            |why: String| Error::Usage(format!("failed to create the container {}: {why}", self));
        let key = base64::engine::general_purpose::STANDARD
            .decode(&key.0)
            .map_err(|_| failed("secret_access_key is not base64".into()))?;
        let url = url::Url::parse(&format!(
            "{}/{}?restype=container",
            self.account_url, self.container
        ))
        .map_err(|e| failed(e.to_string()))?;
        let date = httpdate::fmt_http_date(std::time::SystemTime::now());
        const VERSION: &str = "2021-08-06";
        // Verb, eleven empty standard headers (Content-Length 0 is written empty), the x-ms-
        // headers, then the resource: the account and the URL's path, and the query.
        let to_sign = format!(
            "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{VERSION}\n/{}{}\nrestype:container",
            self.account_name,
            url.path()
        );
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &key);
        let signature = base64::engine::general_purpose::STANDARD
            .encode(aws_lc_rs::hmac::sign(&key, to_sign.as_bytes()).as_ref());
        let response = reqwest::Client::new()
            .put(url)
            .header("x-ms-date", &date)
            .header("x-ms-version", VERSION)
            .header(
                "Authorization",
                format!("SharedKey {}:{signature}", self.account_name),
            )
            .header("Content-Length", "0")
            .timeout(std::time::Duration::from_secs(30))
            .send()
            .await
            .map_err(|e| failed(kiln_solver::error_chain(&e)))?;
        match response.status().as_u16() {
            // Created, or there already.
            201 | 409 => Ok(()),
            status => {
                let body = response.text().await.unwrap_or_default();
                Err(failed(format!(
                    "HTTP {status}: {}",
                    body.split_whitespace().collect::<Vec<_>>().join(" ")
                )))
            }
        }
    }

    pub(crate) fn open(&self) -> Result<ObjectCache> {
        // Without a key, the credentials object_store finds in the environment (a service
        // principal's AZURE_CLIENT_*, workload or managed identity), as Azure's default chain.
        let mut builder = MicrosoftAzureBuilder::from_env()
            .with_account(&self.account_name)
            .with_container_name(&self.container)
            .with_endpoint(self.account_url.clone())
            .with_allow_http(self.account_url.starts_with("http://"))
            .with_retry(super::retry());
        if let Some(key) = &self.secret_access_key {
            builder = builder.with_access_key(&key.0);
        }
        let store = builder.build().map_err(|e| Error::Invalid {
            what: format!("Azure Blob Storage cache {self}"),
            source: Box::new(e),
        })?;
        let dir = |sub: &str| {
            let joined = join(&[&self.prefix, sub]);
            if joined.is_empty() {
                joined
            } else {
                format!("{joined}/")
            }
        };
        Ok(ObjectCache {
            store: Arc::new(store),
            id: self.to_string(),
            blobs: dir(&self.blobs_prefix),
            manifests: dir(&self.manifests_prefix),
            names: self.names.clone(),
            parallelism: 4,
            touch_refresh: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(
        attrs: &[(&str, &str)],
        env: &[(&str, &str)],
    ) -> std::result::Result<AzblobCache, String> {
        AzblobCache::parse(super::super::lookup(attrs), super::super::lookup(env))
    }

    #[test]
    fn account_from_the_url_and_buildkits_defaults() {
        let c = parse(
            &[
                ("account_url", "https://acct.blob.core.windows.net/"),
                ("secret_access_key", "a2V5"),
            ],
            &[],
        )
        .unwrap();
        assert_eq!(c.account_name, "acct");
        assert_eq!(c.container, "buildkit-cache");
        assert_eq!(c.names, ["buildkit"]);
        let opened = c.open().unwrap();
        assert_eq!(opened.blobs, "blobs/");
        assert_eq!(opened.manifests, "manifests/");
        assert_eq!(
            opened.id,
            "https://acct.blob.core.windows.net/buildkit-cache"
        );
        assert!(
            !format!("{c:?}").contains("a2V5"),
            "secrets are not printed"
        );
    }

    #[test]
    fn environment_fills_what_attributes_leave_out() {
        let c = parse(
            &[("prefix", "/team/")],
            &[
                (
                    "BUILDKIT_AZURE_STORAGE_ACCOUNT_URL",
                    "http://127.0.0.1:10000/devstoreaccount1",
                ),
                ("BUILDKIT_AZURE_STORAGE_ACCOUNT_NAME", "devstoreaccount1"),
                ("BUILDKIT_AZURE_STORAGE_CONTAINER", "c"),
                ("AZURE_STORAGE_ACCOUNT_KEY", "a2V5"),
            ],
        )
        .unwrap();
        assert_eq!(c.account_name, "devstoreaccount1");
        assert_eq!(c.container, "c");
        assert_eq!(c.secret_access_key, Some(Secret("a2V5".into())));
        let opened = c.open().unwrap();
        assert_eq!(opened.blobs, "team/blobs/", "joined as paths");
    }

    #[test]
    fn bad_attributes_are_named() {
        let err = |attrs: &[(&str, &str)]| parse(attrs, &[]).unwrap_err();
        assert!(err(&[]).contains("`account_url`"));
        assert!(err(&[("account_url", "acct")]).contains("invalid account_url `acct`"));
        let url = ("account_url", "https://a.blob.core.windows.net");
        assert!(err(&[url, ("container", "a/b")]).contains("invalid container `a/b`"));
        assert!(err(&[url, ("name", ";")]).contains("empty manifest name"));
    }
}
