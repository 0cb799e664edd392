//! `kiln builder create`: a new builder, a node appended to one, or a node changed, checked
//! as buildx checks them (its texts for its errors).

use std::collections::BTreeMap;

use kiln_oci::Platform;

use crate::{
    Builder, DEFAULT, DRIVERS, EMBEDDED, Error, Node, REMOTE, Result, Store, validate_name,
};

/// What `kiln builder create` was given.
#[derive(Debug, Default, Clone)]
pub struct CreateRequest {
    pub name: Option<String>,
    pub driver: Option<String>,
    pub endpoint: Option<String>,
    /// `--driver-opt`s, each `k=v[,k=v...]`.
    pub driver_opts: Vec<String>,
    /// `--platform`s, each `p[,q...]`.
    pub platforms: Vec<String>,
    pub append: bool,
    pub node: Option<String>,
}

/// The builder as saved, and whether an existing node was changed (buildx warns then).
#[derive(Debug)]
pub struct Created {
    pub builder: Builder,
    pub changed_node: bool,
}

/// The `--driver-opt` keys each driver takes.
fn known_opts(driver: &str) -> &'static [&'static str] {
    match driver {
        REMOTE => &["cacert", "cert", "key", "servername"],
        _ => &[],
    }
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::Invalid(msg.into())
}

fn parse_opts(flags: &[String]) -> Result<BTreeMap<String, String>> {
    let mut opts = BTreeMap::new();
    for item in flags.iter().flat_map(|f| f.split(',')) {
        let Some((k, v)) = item.split_once('=') else {
            return Err(invalid(format!("invalid value \"{item}\", expecting k=v")));
        };
        opts.insert(k.trim().to_string(), v.to_string());
    }
    Ok(opts)
}

fn parse_platforms(flags: &[String]) -> Result<Option<Vec<Platform>>> {
    let mut out: Vec<Platform> = Vec::new();
    for p in flags.iter().flat_map(|f| f.split(',')).map(str::trim) {
        if p.is_empty() {
            continue;
        }
        let parsed: Platform = p.parse().map_err(|_| {
            invalid(format!(
                "\"{p}\": cannot parse platform specifier: invalid argument"
            ))
        })?;
        if !out.contains(&parsed) {
            out.push(parsed);
        }
    }
    Ok((!out.is_empty()).then_some(out))
}

/// A remote node's address: kilnd listens on unix sockets and TCP.
fn check_endpoint(endpoint: &str) -> Result<()> {
    let scheme = endpoint.split_once("://").map_or("", |(s, _)| s);
    match scheme {
        "unix" | "tcp" => Ok(()),
        // BuildKit's other transports: real, but kilnd does not serve them.
        "ssh" | "docker-container" | "kube-pod" | "npipe" | "podman-container"
        | "nerdctl-container" => Err(invalid(format!(
            "remote endpoint {endpoint}: the {scheme}:// scheme is not supported yet (kilnd listens on unix:// and tcp://)"
        ))),
        _ => Err(invalid(format!("unrecognized url scheme {scheme}"))),
    }
}

/// buildx's remote driver: any TLS option turns TLS on, which then needs the CA, and a client
/// certificate needs its key (and the other way round).
fn check_tls(opts: &BTreeMap<String, String>) -> std::result::Result<(), String> {
    if !["cacert", "cert", "key", "servername"]
        .iter()
        .any(|k| opts.contains_key(*k))
    {
        return Ok(());
    }
    let has = |k: &str| opts.get(k).is_some_and(|v| !v.is_empty());
    let mut missing = Vec::new();
    if !has("cacert") {
        missing.push("cacert");
    }
    if has("cert") != has("key") {
        missing.push(if has("cert") { "key" } else { "cert" });
    }
    if missing.is_empty() {
        return Ok(());
    }
    Err(format!(
        "tls enabled, but missing keys {}",
        missing.join(", ")
    ))
}

/// A name buildx would not make up either: `builderN`, the first one free.
fn fresh_name(store: &Store) -> Result<String> {
    let taken: Vec<String> = store.list()?.into_iter().map(|b| b.name).collect();
    Ok((0..)
        .map(|i| format!("builder{i}"))
        .find(|n| !taken.contains(n))
        .expect("a free name"))
}

impl Store {
    /// Creates or extends a builder as `kiln builder create` asks.
    pub fn create(&self, req: CreateRequest) -> Result<Created> {
        let _lock = self.lock()?;
        let name = match &req.name {
            Some(n) => {
                validate_name(n)?;
                if n == DEFAULT {
                    return Err(invalid(
                        "default is a reserved name and cannot be used to identify builder instance",
                    ));
                }
                n.clone()
            }
            None => fresh_name(self)?,
        };
        let existing = self.get(&name)?;
        if let Some(d) = &req.driver
            && !DRIVERS.contains(&d.as_str())
        {
            return Err(invalid(format!(
                "failed to find driver \"{d}\" (known drivers: {})",
                DRIVERS.join(", ")
            )));
        }
        match &existing {
            None if req.append => {
                return Err(invalid(format!(
                    "failed to find instance \"{name}\" for append"
                )));
            }
            Some(_) if !req.append && req.node.is_none() => {
                return Err(invalid(format!(
                    "existing instance for \"{name}\" but no append mode, specify the node name to make changes for existing instances"
                )));
            }
            _ => {}
        }
        let driver = match (&req.driver, &existing, &req.endpoint) {
            (Some(d), Some(b), _) if *d != b.driver => {
                return Err(invalid(format!(
                    "existing instance for \"{name}\" but has mismatched driver \"{}\"",
                    b.driver
                )));
            }
            (Some(d), _, _) => d.clone(),
            (None, Some(b), _) => b.driver.clone(),
            (None, None, Some(_)) => REMOTE.to_string(),
            (None, None, None) => EMBEDDED.to_string(),
        };
        let mut builder = existing.unwrap_or_else(|| Builder {
            name: name.clone(),
            driver: driver.clone(),
            nodes: Vec::new(),
            dynamic: false,
        });
        let node_name = match &req.node {
            Some(n) => {
                validate_name(n)?;
                n.clone()
            }
            None => (0..)
                .map(|i| format!("{name}{i}"))
                .find(|n| builder.nodes.iter().all(|x| &x.name != n))
                .expect("a free node name"),
        };
        let init_err = |msg: String| {
            invalid(format!(
                "failed to initialize builder {name} ({node_name}): {msg}"
            ))
        };
        let opts = parse_opts(&req.driver_opts)?;
        if let Some(bad) = opts
            .keys()
            .find(|k| !known_opts(&driver).contains(&k.as_str()))
        {
            return Err(init_err(format!(
                "invalid driver option {bad} for {driver} driver"
            )));
        }
        let platforms = parse_platforms(&req.platforms)?;
        let endpoint = match driver.as_str() {
            REMOTE => {
                let e = req
                    .endpoint
                    .clone()
                    .ok_or_else(|| invalid("no remote endpoint provided"))?;
                check_endpoint(&e)?;
                check_tls(&opts).map_err(init_err)?;
                e
            }
            _ => {
                if let Some(e) = &req.endpoint {
                    return Err(invalid(format!(
                        "embedded builders run in kiln itself and take no endpoint (got {e}); use --driver remote for a kilnd"
                    )));
                }
                if builder.nodes.iter().any(|n| n.name != node_name) {
                    return Err(invalid(format!(
                        "embedded builder \"{name}\" has one node: several nodes are for remote builders"
                    )));
                }
                EMBEDDED.to_string()
            }
        };
        if driver == REMOTE
            && builder
                .nodes
                .iter()
                .any(|n| n.name != node_name && n.endpoint == endpoint)
        {
            return Err(invalid(format!("invalid duplicate endpoint {endpoint}")));
        }
        let node = Node {
            name: node_name.clone(),
            endpoint,
            platforms,
            driver_opts: (!opts.is_empty()).then_some(opts),
            flags: None,
            files: None,
        };
        let changed_node = match builder.nodes.iter_mut().find(|n| n.name == node_name) {
            Some(n) => {
                *n = node;
                true
            }
            None => {
                builder.nodes.push(node);
                false
            }
        };
        self.save(&builder)?;
        Ok(Created {
            builder,
            changed_node,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(name: &str, endpoint: Option<&str>) -> CreateRequest {
        CreateRequest {
            name: Some(name.into()),
            driver: Some(REMOTE.into()),
            endpoint: endpoint.map(Into::into),
            ..Default::default()
        }
    }

    fn err(store: &Store, r: CreateRequest) -> String {
        store.create(r).unwrap_err().to_string()
    }

    #[test]
    fn errors_are_buildx_texts() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::new(dir.path());
        let opt = |o: &str| CreateRequest {
            driver_opts: vec![o.into()],
            ..req("z", Some("tcp://1.2.3.4:1"))
        };
        assert_eq!(
            err(&s, opt("bogus=1")),
            "failed to initialize builder z (z0): invalid driver option bogus for remote driver"
        );
        assert_eq!(
            err(&s, opt("cacert")),
            "invalid value \"cacert\", expecting k=v"
        );
        assert_eq!(
            err(&s, opt("cert=/c")),
            "failed to initialize builder z (z0): tls enabled, but missing keys cacert, key"
        );
        assert_eq!(
            err(&s, opt("servername=x")),
            "failed to initialize builder z (z0): tls enabled, but missing keys cacert"
        );
        assert_eq!(err(&s, req("z", None)), "no remote endpoint provided");
        assert_eq!(
            err(&s, req("z", Some("http://h:1"))),
            "unrecognized url scheme http"
        );
        assert!(err(&s, req("z", Some("ssh://u@h"))).contains("not supported yet"));
        assert_eq!(
            err(&s, req("1x", Some("tcp://h:1"))),
            "invalid name 1x, name needs to start with a letter and may not contain symbols, except ._-"
        );
        assert_eq!(
            err(&s, req("default", Some("tcp://h:1"))),
            "default is a reserved name and cannot be used to identify builder instance"
        );
        let mut nope = req("z", Some("tcp://h:1"));
        nope.driver = Some("nope".into());
        assert_eq!(
            err(&s, nope),
            "failed to find driver \"nope\" (known drivers: embedded, remote)"
        );
        let mut bad = req("z", Some("tcp://h:1"));
        bad.platforms = vec!["linux/bogus/x/y".into()];
        assert_eq!(
            err(&s, bad),
            "\"linux/bogus/x/y\": cannot parse platform specifier: invalid argument"
        );
        assert!(s.list().unwrap().is_empty(), "nothing was saved");
    }

    #[test]
    fn append_and_change_nodes() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::new(dir.path());
        let mut first = req("a", Some("tcp://1.2.3.4:1"));
        first.driver_opts = vec!["cacert=/ca.pem,cert=/c.pem".into(), "key=/k.pem".into()];
        first.platforms = vec!["linux/amd64,linux/arm64".into()];
        let a = s.create(first).unwrap().builder;
        assert_eq!(a.nodes[0].name, "a0");
        assert_eq!(a.nodes[0].driver_opts.as_ref().unwrap().len(), 3);
        assert_eq!(
            err(&s, req("a", Some("tcp://9.9.9.9:1"))),
            "existing instance for \"a\" but no append mode, specify the node name to make changes for existing instances"
        );
        let mut append = req("a", Some("tcp://8.8.8.8:1"));
        append.append = true;
        let c = s.create(append.clone()).unwrap();
        assert_eq!(c.builder.nodes[1].name, "a1");
        assert!(!c.changed_node);
        append.node = Some("a0".into());
        assert_eq!(
            err(&s, append),
            "invalid duplicate endpoint tcp://8.8.8.8:1"
        );
        let mut change = req("a", Some("tcp://7.7.7.7:1"));
        change.node = Some("a0".into());
        let c = s.create(change).unwrap();
        assert!(c.changed_node);
        assert_eq!(c.builder.nodes[0].endpoint, "tcp://7.7.7.7:1");
        let mut missing = req("n", Some("tcp://h:1"));
        missing.append = true;
        assert_eq!(err(&s, missing), "failed to find instance \"n\" for append");
        // No name: a free one; no driver: embedded without an address.
        let e = s.create(CreateRequest::default()).unwrap().builder;
        assert_eq!(
            (e.name.as_str(), e.driver.as_str()),
            ("builder0", "embedded")
        );
        let r = s
            .create(CreateRequest {
                endpoint: Some("unix:///run/kilnd.sock".into()),
                ..Default::default()
            })
            .unwrap()
            .builder;
        assert_eq!((r.name.as_str(), r.driver.as_str()), ("builder1", "remote"));
    }
}
