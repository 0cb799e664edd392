//! Downloads for URL contexts and `-f URL`: redirects bounded, the size capped, the body
//! told apart as an archive, a Dockerfile or an HTML page.

use std::io;
use std::path::Path;

use super::{SNIFF_LEN, human_bytes};
use crate::{Engine, Error, Result, io};

/// Redirects a download follows, as Go's HTTP client (BuildKit's) does.
const MAX_REDIRECTS: usize = 10;

impl Engine {
    fn http_client(&self) -> Result<reqwest::Client> {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::limited(MAX_REDIRECTS))
            .build()
            .map_err(|e| Error::Usage(format!("cannot make an HTTP client: {e}")))
    }

    /// Downloads `url` whole into memory (a Dockerfile), within the size cap.
    pub(super) async fn download(&self, url: &str) -> Result<Fetched> {
        let mut out = Vec::new();
        let mut fetched = self.fetch(url, &mut out).await?;
        fetched.head = out;
        Ok(fetched)
    }

    /// Downloads `url` into the file `path`, within the size cap.
    pub(super) async fn download_to(&self, url: &str, path: &Path) -> Result<Fetched> {
        let mut file =
            std::fs::File::create(path).map_err(io(format!("creating `{}`", path.display())))?;
        self.fetch(url, &mut file).await
    }

    async fn fetch(&self, url: &str, out: &mut (dyn io::Write + Send)) -> Result<Fetched> {
        let failed = |e: reqwest::Error| Error::Remote {
            url: url.to_string(),
            reason: error_chain(&e),
        };
        let mut resp = self.http_client()?.get(url).send().await.map_err(failed)?;
        let status = resp.status();
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if !status.is_success() {
            return Err(Error::Remote {
                url: url.to_string(),
                reason: format!("the server answered {status}"),
            });
        }
        let cap = self.remote_context_max_bytes;
        let too_big = || Error::Remote {
            url: url.to_string(),
            reason: format!(
                "larger than {} (`remote-context-max-bytes` in the config file)",
                human_bytes(cap)
            ),
        };
        if resp.content_length().is_some_and(|n| n > cap) {
            return Err(too_big());
        }
        let mut head = Vec::new();
        let mut size = 0u64;
        while let Some(chunk) = resp.chunk().await.map_err(failed)? {
            size += chunk.len() as u64;
            if size > cap {
                return Err(too_big());
            }
            if head.len() < SNIFF_LEN {
                let take = (SNIFF_LEN - head.len()).min(chunk.len());
                head.extend_from_slice(&chunk[..take]);
            }
            out.write_all(&chunk)
                .map_err(io(format!("saving the download of `{url}`")))?;
        }
        out.flush()
            .map_err(io(format!("saving the download of `{url}`")))?;
        Ok(Fetched {
            head,
            size,
            status: status.as_u16(),
            content_type,
        })
    }
}

/// What a download brought: its first bytes (all of them for [`Engine::download`]).
pub(super) struct Fetched {
    pub(super) head: Vec<u8>,
    pub(super) size: u64,
    pub(super) status: u16,
    pub(super) content_type: Option<String>,
}

/// The text of a downloaded file that is not an archive, read as a Dockerfile, unless it is an
/// HTML page (an error page served with 200, say) or not text at all. Whatever the server calls
/// it, archive magic decided first (docker's `application/octet-stream` case); BuildKit would
/// parse an HTML page as a Dockerfile and fail on `<html>`.
pub(super) fn plain_text(url: &str, fetched: &Fetched, body: Vec<u8>) -> Result<String> {
    let mime = fetched
        .content_type
        .as_deref()
        .and_then(|c| c.split(';').next())
        .map(|c| c.trim().to_ascii_lowercase());
    let start = String::from_utf8_lossy(&fetched.head[..fetched.head.len().min(64)])
        .trim_start()
        .to_ascii_lowercase();
    let html = mime.as_deref() == Some("text/html")
        || start.starts_with("<!doctype html")
        || start.starts_with("<html");
    if html {
        return Err(Error::Remote {
            url: url.to_string(),
            reason: format!(
                "the server answered {} with an HTML page ({}), not a Dockerfile or a tar archive",
                fetched.status,
                mime.as_deref().unwrap_or("no Content-Type")
            ),
        });
    }
    String::from_utf8(body).map_err(|_| Error::Remote {
        url: url.to_string(),
        reason: format!(
            "neither a tar archive nor a text Dockerfile (Content-Type {})",
            mime.as_deref().unwrap_or("not given")
        ),
    })
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}
