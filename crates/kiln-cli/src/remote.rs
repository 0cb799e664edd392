//! `kiln build --host ADDR` (or `KILN_HOST`): the same flags, sent to a kilnd through
//! kiln-client; the result comes back as the engine's, so the rest of `kiln build` is shared.

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use kiln_progress::Progress;

use crate::args::BuildArgs;
use crate::stdin::Stdin;

/// What `kiln build` has parsed already, for the daemon.
pub struct Parsed<'a> {
    pub stdin: &'a Stdin,
    pub build_args: &'a BTreeMap<String, String>,
    pub labels: &'a BTreeMap<String, String>,
    pub secrets: BTreeMap<String, Vec<u8>>,
    pub outputs: &'a [kiln_engine::Output],
    pub platforms: Vec<String>,
    pub no_cache_filter: Vec<String>,
    pub run: &'a kiln_engine::RunOpts,
}

/// Where a remote build goes: `--host` with `--tlscacert/--tlscert/--tlskey`.
pub fn host_endpoint(host: &str, b: &BuildArgs) -> kiln_client::Endpoint {
    let tls = (b.tlscacert.is_some() || b.tlscert.is_some() || b.tlskey.is_some()).then(|| {
        kiln_client::TlsFiles {
            ca_cert: b.tlscacert.clone(),
            cert: b.tlscert.clone(),
            key: b.tlskey.clone(),
            server_name: None,
        }
    });
    kiln_client::Endpoint {
        address: host.to_string(),
        tls,
    }
}

/// A remote builder's node (`kiln builder create --driver remote`), as the client reaches it.
pub fn builder_endpoint(e: kiln_builder::Endpoint) -> kiln_client::Endpoint {
    kiln_client::Endpoint {
        address: e.address,
        tls: e.tls.map(|t| kiln_client::TlsFiles {
            ca_cert: Some(t.ca),
            cert: t.cert,
            key: t.key,
            server_name: t.servername,
        }),
    }
}

pub async fn build(
    endpoint: &kiln_client::Endpoint,
    b: &BuildArgs,
    p: Parsed<'_>,
    progress: &Progress,
) -> Result<kiln_client::Outcome> {
    let unsupported =
        |what: &str| -> Result<()> { bail!("{what} with a remote builder is not supported yet") };
    if p.stdin.archive.is_some() {
        unsupported("a context archive on stdin")?;
    }
    if !p.stdin.context.is_dir() {
        unsupported("a URL or Git context")?;
    }
    if !b.build_context.is_empty() {
        unsupported("--build-context")?;
    }
    if !b.ssh.is_empty() {
        unsupported("--ssh")?;
    }
    if b.explain {
        unsupported("--explain")?;
    }
    if b.offline {
        unsupported("--offline")?;
    }
    if b.pin.is_some() {
        unsupported("--pin")?;
    }
    let dockerfile_path = p
        .stdin
        .dockerfile
        .clone()
        .unwrap_or_else(|| p.stdin.context.join("Dockerfile"));
    let dockerfile_name = dockerfile_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "Dockerfile".into());
    let dockerfile_text = match &p.stdin.text {
        Some(t) => t.clone(),
        None => std::fs::read_to_string(&dockerfile_path).map_err(|source| {
            // The engine's own words for it, as the embedded build says.
            kiln_engine::Error::Io {
                what: format!(
                    "failed to read the Dockerfile `{}`",
                    dockerfile_path.display()
                ),
                source,
            }
        })?,
    };
    // The environment the cache specs read, recorded while they are parsed as embedded.
    let cache_env = std::cell::RefCell::new(std::collections::BTreeMap::new());
    let recording = |key: &str| {
        let v = std::env::var(key).ok();
        if let Some(v) = &v {
            cache_env.borrow_mut().insert(key.to_string(), v.clone());
        }
        v
    };
    for s in &b.cache_from {
        kiln_engine::CacheImport::parse_with_env(s, &recording)?;
    }
    for s in &b.cache_to {
        kiln_engine::CacheExport::parse_with_env(s, &recording)?;
    }
    let start = kiln_client::Start {
        cache_env: cache_env.into_inner(),
        dockerfile_name,
        dockerfile_text,
        target: b.target.clone().unwrap_or_default(),
        build_args: p.build_args.clone().into_iter().collect(),
        tags: b.tag.clone(),
        outputs: b.output.clone(),
        push: b.push,
        load: b.load,
        annotations: b.annotation.clone(),
        platforms: p.platforms,
        no_cache: b.no_cache,
        no_cache_filter: p.no_cache_filter,
        labels: p.labels.clone().into_iter().collect(),
        cache_from: b.cache_from.clone(),
        cache_to: b.cache_to.clone(),
        secret_ids: p.secrets.keys().cloned().collect(),
        pull: b.pull,
        squash: b.squash,
        run_opts_json: serde_json::to_vec(p.run)?,
        source_date_epoch: crate::env::source_date_epoch(),
        ..Default::default()
    };
    // The daemon assembles the same outputs from the same flags: those with a destination
    // come back here.
    let outputs = p
        .outputs
        .iter()
        .map(|o| {
            o.dest.as_ref().map(|dest| kiln_client::Output {
                dest: dest.clone(),
                dir: o.writes_directory(),
            })
        })
        .collect();
    let request = kiln_client::Request {
        context: p.stdin.context.clone(),
        start,
        secrets: p.secrets,
        outputs,
    };
    Ok(kiln_client::build(endpoint, request, progress).await?)
}
