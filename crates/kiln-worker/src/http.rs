//! ADD from http(s): the body is streamed into the content store (never held in memory) and the
//! URL's validators are remembered, so the next build asks with `If-None-Match` /
//! `If-Modified-Since` and a `304 Not Modified` reuses the stored body without downloading it,
//! as BuildKit's HTTP source revalidates its cached ETags.

use std::path::PathBuf;
use std::time::SystemTime;

use kiln_content::ContentStore;
use kiln_oci::Digest;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt as _;

use crate::Error;

/// A downloaded file: its body is the blob `digest` in the content store.
#[derive(Debug, Clone)]
pub(crate) struct Download {
    pub digest: Digest,
    pub last_modified: Option<SystemTime>,
    /// Whether the server answered 304 and the stored body was used.
    pub revalidated: bool,
}

/// What the last download of a URL left: its validators and its body's digest.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    url: String,
    etag: Option<String>,
    last_modified: Option<String>,
    digest: Digest,
}

/// Where the records live: one JSON file per URL under `dir`, named by the URL's digest.
pub(crate) struct Records {
    pub dir: PathBuf,
}

impl Records {
    fn path(&self, url: &str) -> PathBuf {
        let key = kiln_oci::sha256_hex(url.as_bytes());
        self.dir.join(format!("{key}.json"))
    }

    /// The record of `url`, if its body is still in the store (a pruned body means a plain
    /// download again).
    fn get(&self, url: &str, content: &ContentStore) -> Option<Record> {
        let text = std::fs::read(self.path(url)).ok()?;
        let r: Record = serde_json::from_slice(&text).ok()?;
        (r.url == url && content.contains(&r.digest)).then_some(r)
    }

    /// Writes the record through a temp file, so a killed build leaves the old one or the new.
    fn put(&self, r: &Record) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let path = self.path(&r.url);
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, serde_json::to_vec(r).expect("records serialise"))?;
        std::fs::rename(&tmp, &path)
    }
}

fn header(resp: &reqwest::Response, name: reqwest::header::HeaderName) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn parse_date(v: Option<&String>) -> Option<SystemTime> {
    v.and_then(|v| httpdate::parse_http_date(v).ok())
}

/// Downloads `url` into `content`, or revalidates the previous download of it.
pub(crate) async fn download(
    client: &reqwest::Client,
    content: &ContentStore,
    records: &Records,
    url: &str,
) -> Result<Download, Error> {
    let err = |source| Error::Http {
        url: url.to_string(),
        source,
    };
    let previous = records.get(url, content);
    let mut req = client.get(url);
    if let Some(p) = &previous {
        if let Some(etag) = &p.etag {
            req = req.header(reqwest::header::IF_NONE_MATCH, etag);
        }
        if let Some(lm) = &p.last_modified {
            req = req.header(reqwest::header::IF_MODIFIED_SINCE, lm);
        }
    }
    let mut resp = req.send().await.map_err(err)?;
    if resp.status() == reqwest::StatusCode::NOT_MODIFIED
        && let Some(p) = previous
    {
        return Ok(Download {
            last_modified: parse_date(p.last_modified.as_ref()),
            digest: p.digest,
            revalidated: true,
        });
    }
    if !resp.status().is_success() {
        return Err(Error::HttpStatus {
            url: url.to_string(),
            status: resp.status().as_u16(),
        });
    }
    let etag = header(&resp, reqwest::header::ETAG);
    let last_modified = header(&resp, reqwest::header::LAST_MODIFIED);
    let store = |e: std::io::Error| Error::Io {
        what: format!("storing the download of `{url}`"),
        source: e,
    };
    let mut w = content.async_writer()?;
    while let Some(chunk) = resp.chunk().await.map_err(err)? {
        w.write_all(&chunk).await.map_err(store)?;
    }
    let (digest, _) = w.commit(None).await?;
    let record = Record {
        url: url.to_string(),
        etag,
        last_modified,
        digest: digest.clone(),
    };
    // A record that cannot be written costs a full download next time, nothing more.
    let _ = records.put(&record);
    Ok(Download {
        last_modified: parse_date(record.last_modified.as_ref()),
        digest,
        revalidated: false,
    })
}
