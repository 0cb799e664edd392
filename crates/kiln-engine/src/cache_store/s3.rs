//! `type=s3`: BuildKit's attributes (cache/remotecache/s3) and the `AmazonS3` store they open.
//! Keys are concatenated as BuildKit does: `<prefix><blobs_prefix><digest>`.

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;

use super::{ObjectCache, Secret, boolean, names};
use crate::{Error, Result};

/// BuildKit's default `touch_refresh`.
const TOUCH_REFRESH: Duration = Duration::from_secs(24 * 3600);

/// A parsed `type=s3` cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Cache {
    pub bucket: String,
    pub region: String,
    pub endpoint_url: Option<String>,
    pub use_path_style: bool,
    pub prefix: String,
    pub blobs_prefix: String,
    pub manifests_prefix: String,
    pub names: Vec<String>,
    access_key_id: Option<String>,
    secret_access_key: Option<Secret>,
    session_token: Option<Secret>,
    pub upload_parallelism: usize,
    pub touch_refresh: Duration,
}

impl std::fmt::Display for S3Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.prefix)?;
        if let Some(endpoint) = &self.endpoint_url {
            write!(f, " at {endpoint}")?;
        }
        Ok(())
    }
}

impl S3Cache {
    /// The attributes besides `type`, `mode`, `ignore-error` and the compression ones.
    pub(crate) const KEYS: &[&str] = &[
        "bucket",
        "region",
        "endpoint_url",
        "use_path_style",
        "prefix",
        "blobs_prefix",
        "manifests_prefix",
        "name",
        "access_key_id",
        "secret_access_key",
        "session_token",
        "upload_parallelism",
        "touch_refresh",
    ];

    /// From the attributes (`get`) and, for what they leave out, the environment as BuildKit
    /// reads it (`env`): `AWS_BUCKET`, `AWS_REGION`, then the AWS credential variables.
    pub(crate) fn parse(
        get: impl Fn(&str) -> Option<String>,
        env: impl Fn(&str) -> Option<String>,
    ) -> std::result::Result<S3Cache, String> {
        let bucket = get("bucket")
            .or_else(|| env("AWS_BUCKET"))
            .filter(|b| !b.is_empty())
            .ok_or("`bucket` (or $AWS_BUCKET) is required for type=s3")?;
        let region = get("region")
            .or_else(|| env("AWS_REGION"))
            .filter(|r| !r.is_empty())
            .ok_or("`region` (or $AWS_REGION) is required for type=s3")?;
        let endpoint_url = get("endpoint_url").filter(|e| !e.is_empty());
        if let Some(e) = &endpoint_url {
            let url =
                url::Url::parse(e).map_err(|why| format!("invalid endpoint_url `{e}`: {why}"))?;
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                return Err(format!(
                    "invalid endpoint_url `{e}`: expected http(s)://HOST"
                ));
            }
        }
        let use_path_style = match get("use_path_style") {
            Some(v) => boolean("use_path_style", &v)?,
            None => false,
        };
        let upload_parallelism = match get("upload_parallelism") {
            Some(v) => v.parse::<usize>().ok().filter(|n| *n > 0).ok_or(format!(
                "invalid upload_parallelism `{v}`: expected a positive integer"
            ))?,
            None => 4,
        };
        let touch_refresh = match get("touch_refresh") {
            Some(v) => go_duration(&v).ok_or(format!(
                "invalid touch_refresh `{v}`: expected a duration like 24h or 90m"
            ))?,
            None => TOUCH_REFRESH,
        };
        // Both keys from the attributes, or the environment's credentials (buildx passes the
        // client's on the same way).
        let (access_key_id, secret_access_key, session_token) =
            match (get("access_key_id"), get("secret_access_key")) {
                (Some(id), Some(secret)) if !id.is_empty() && !secret.is_empty() => {
                    (Some(id), Some(secret), get("session_token"))
                }
                (Some(_), None) | (None, Some(_)) => {
                    return Err("`access_key_id` and `secret_access_key` go together".to_string());
                }
                _ => (
                    env("AWS_ACCESS_KEY_ID"),
                    env("AWS_SECRET_ACCESS_KEY"),
                    env("AWS_SESSION_TOKEN"),
                ),
            };
        Ok(S3Cache {
            bucket,
            region,
            endpoint_url,
            use_path_style,
            prefix: get("prefix").unwrap_or_default(),
            blobs_prefix: get("blobs_prefix").unwrap_or_else(|| "blobs/".into()),
            manifests_prefix: get("manifests_prefix").unwrap_or_else(|| "manifests/".into()),
            names: names(get("name"))?,
            access_key_id,
            secret_access_key: secret_access_key.map(Secret),
            session_token: session_token.filter(|t| !t.is_empty()).map(Secret),
            upload_parallelism,
            touch_refresh,
        })
    }

    pub(crate) fn open(&self) -> Result<ObjectCache> {
        // The rest of the environment (web identity, container credentials, AWS_ENDPOINT...)
        // as the AWS SDK reads it; the attributes win.
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&self.bucket)
            .with_region(&self.region)
            .with_retry(super::retry());
        if let (Some(id), Some(secret)) = (&self.access_key_id, &self.secret_access_key) {
            builder = builder
                .with_access_key_id(id)
                .with_secret_access_key(&secret.0);
            if let Some(token) = &self.session_token {
                builder = builder.with_token(&token.0);
            }
        }
        builder = match &self.endpoint_url {
            // Path style: `ENDPOINT/BUCKET/KEY`.
            Some(endpoint) if self.use_path_style => builder
                .with_endpoint(endpoint)
                .with_virtual_hosted_style_request(false),
            // Virtual-hosted style: the bucket is the endpoint's first host label.
            Some(endpoint) => {
                let mut url = url::Url::parse(endpoint).expect("checked when parsed");
                let host = format!("{}.{}", self.bucket, url.host_str().unwrap_or_default());
                url.set_host(Some(&host)).map_err(|e| {
                    Error::Usage(format!(
                        "endpoint_url `{endpoint}` with bucket `{}`: {e}",
                        self.bucket
                    ))
                })?;
                builder
                    .with_endpoint(url.as_str().trim_end_matches('/'))
                    .with_virtual_hosted_style_request(true)
            }
            None => builder.with_virtual_hosted_style_request(!self.use_path_style),
        };
        if self
            .endpoint_url
            .as_deref()
            .is_some_and(|e| e.starts_with("http://"))
        {
            builder = builder.with_allow_http(true);
        }
        let store = builder.build().map_err(|e| Error::Invalid {
            what: format!("S3 cache {self}"),
            source: Box::new(e),
        })?;
        Ok(ObjectCache {
            store: Arc::new(store),
            id: self.to_string(),
            blobs: format!("{}{}", self.prefix, self.blobs_prefix),
            manifests: format!("{}{}", self.prefix, self.manifests_prefix),
            names: self.names.clone(),
            parallelism: self.upload_parallelism,
            touch_refresh: Some(self.touch_refresh),
        })
    }
}

/// A Go duration as `time.ParseDuration` reads the usual ones: `24h`, `1h30m`, `90s`, `1.5h`.
fn go_duration(s: &str) -> Option<Duration> {
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = s;
    let mut total = 0f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let number: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += number * seconds;
        rest = &rest[unit_len..];
    }
    Some(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(attrs: &[(&str, &str)], env: &[(&str, &str)]) -> std::result::Result<S3Cache, String> {
        S3Cache::parse(super::super::lookup(attrs), super::super::lookup(env))
    }

    #[test]
    fn defaults_are_buildkits() {
        let c = parse(&[("bucket", "b"), ("region", "us-east-1")], &[]).unwrap();
        assert_eq!(c.blobs_prefix, "blobs/");
        assert_eq!(c.manifests_prefix, "manifests/");
        assert_eq!(c.names, ["buildkit"]);
        assert_eq!(c.upload_parallelism, 4);
        assert_eq!(c.touch_refresh, TOUCH_REFRESH);
        assert!(!c.use_path_style);
        let opened = c.open().unwrap();
        assert_eq!(opened.blobs, "blobs/");
        assert_eq!(opened.id, "s3://b/");
    }

    #[test]
    fn bucket_region_and_credentials_come_from_the_environment() {
        let c = parse(
            &[("prefix", "team/")],
            &[
                ("AWS_BUCKET", "eb"),
                ("AWS_REGION", "eu-west-1"),
                ("AWS_ACCESS_KEY_ID", "AK"),
                ("AWS_SECRET_ACCESS_KEY", "SK"),
                ("AWS_SESSION_TOKEN", "T"),
            ],
        )
        .unwrap();
        assert_eq!((c.bucket.as_str(), c.region.as_str()), ("eb", "eu-west-1"));
        assert_eq!(c.access_key_id.as_deref(), Some("AK"));
        assert_eq!(c.session_token, Some(Secret("T".into())));
        assert!(!format!("{c:?}").contains("SK"), "secrets are not printed");
        // Attributes win over the environment, both keys together.
        let c = parse(
            &[
                ("bucket", "b"),
                ("region", "r"),
                ("access_key_id", "A2"),
                ("secret_access_key", "S2"),
            ],
            &[("AWS_ACCESS_KEY_ID", "AK"), ("AWS_SECRET_ACCESS_KEY", "SK")],
        )
        .unwrap();
        assert_eq!(c.access_key_id.as_deref(), Some("A2"));
        assert_eq!(c.session_token, None);
    }

    #[test]
    fn bad_attributes_are_named() {
        let err = |attrs: &[(&str, &str)]| parse(attrs, &[]).unwrap_err();
        assert!(err(&[("region", "r")]).contains("`bucket`"));
        assert!(err(&[("bucket", "b")]).contains("`region`"));
        let base = [("bucket", "b"), ("region", "r")];
        let with = |k, v| {
            let mut a = base.to_vec();
            a.push((k, v));
            err(&a)
        };
        assert!(with("use_path_style", "yes").contains("invalid use_path_style `yes`"));
        assert!(with("upload_parallelism", "0").contains("invalid upload_parallelism"));
        assert!(with("touch_refresh", "1d").contains("invalid touch_refresh `1d`"));
        assert!(with("endpoint_url", "localhost:9000").contains("invalid endpoint_url"));
        assert!(with("access_key_id", "A").contains("`secret_access_key` go together"));
        assert!(with("name", "a;;b").contains("empty manifest name"));
    }

    #[test]
    fn durations_as_go_writes_them() {
        assert_eq!(go_duration("24h"), Some(Duration::from_secs(86400)));
        assert_eq!(go_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(go_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(go_duration("0"), Some(Duration::ZERO));
        assert_eq!(go_duration(""), None);
        assert_eq!(go_duration("h"), None);
        assert_eq!(go_duration("5"), None);
    }
}
