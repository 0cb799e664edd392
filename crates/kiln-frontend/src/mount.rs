//! `RUN --mount` values: `type=...,key=value,...` as in BuildKit's Dockerfile reference.

use kiln_llb::CacheSharing;

/// One parsed `--mount`. Values are already expanded; `target` is as written (the caller makes
/// it absolute against the working directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunMount {
    Bind {
        target: String,
        source: String,
        from: Option<String>,
        readwrite: bool,
    },
    Cache {
        id: Option<String>,
        target: String,
        readonly: bool,
        sharing: CacheSharing,
        mode: u32,
        uid: u32,
        gid: u32,
        /// The stage or image whose `source` path seeds a new cache dir.
        from: Option<String>,
        source: String,
    },
    Tmpfs {
        target: String,
        size: Option<u64>,
    },
    Secret {
        id: Option<String>,
        target: Option<String>,
        env: Option<String>,
        required: bool,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    Ssh {
        /// Defaults to `default`.
        id: Option<String>,
        /// Defaults to `/run/buildkit/ssh_agent.N`, N counting the RUN's ssh mounts.
        target: Option<String>,
        required: bool,
        mode: u32,
        uid: u32,
        gid: u32,
    },
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Bind,
    Cache,
    Tmpfs,
    Secret,
    Ssh,
}

fn parse_bool(key: &str, value: Option<&str>) -> Result<bool, String> {
    match value {
        None => Ok(true),
        Some(v) => v
            .parse::<bool>()
            .map_err(|_| format!("invalid value `{v}` for `{key}`")),
    }
}

fn parse_u32(key: &str, value: &str, radix: u32) -> Result<u32, String> {
    u32::from_str_radix(value, radix).map_err(|_| format!("invalid value `{value}` for `{key}`"))
}

/// A size such as `1024`, `64k`, `10m`, `1g` (binary units, as BuildKit's tmpfs `size`).
fn parse_size(value: &str) -> Result<u64, String> {
    let err = || format!("invalid value `{value}` for `size`");
    let lower = value.trim().to_ascii_lowercase();
    let lower = lower.strip_suffix('b').unwrap_or(&lower);
    let (num, mult) = match lower.char_indices().last() {
        Some((i, 'k')) => (&lower[..i], 1u64 << 10),
        Some((i, 'm')) => (&lower[..i], 1 << 20),
        Some((i, 'g')) => (&lower[..i], 1 << 30),
        _ => (lower, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(err)
}

/// Parses one `--mount` value; `expand` expands variables in each value, as BuildKit does.
pub fn parse(
    value: &str,
    mut expand: impl FnMut(&str) -> Result<String, String>,
) -> Result<RunMount, String> {
    let fields: Vec<&str> = value.split(',').filter(|f| !f.is_empty()).collect();
    let mut kind = Kind::Bind;
    for f in &fields {
        if let Some(t) = f.strip_prefix("type=") {
            kind = match t.to_ascii_lowercase().as_str() {
                "bind" => Kind::Bind,
                "cache" => Kind::Cache,
                "tmpfs" => Kind::Tmpfs,
                "secret" => Kind::Secret,
                "ssh" => Kind::Ssh,
                other => return Err(format!("unsupported mount type `{other}`")),
            };
        }
    }
    let (mut target, mut source, mut from, mut id, mut env) = (None, None, None, None, None);
    let (mut readonly, mut readwrite, mut required) = (None, false, false);
    let mut sharing = CacheSharing::Shared;
    let mut size = None;
    let (mut mode, mut uid, mut gid) = (None, 0, 0);
    for f in fields {
        let (key, raw) = match f.split_once('=') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v)),
            None => (f.trim().to_ascii_lowercase(), None),
        };
        // As BuildKit: the stages a build needs are found before variables have values.
        if key == "from" && raw.is_some_and(|v| v.find('$').is_some_and(|i| i + 1 < v.len())) {
            return Err(
                "'from' doesn't support variable expansion, define alias stage instead".into(),
            );
        }
        let value = match raw {
            Some(v) => Some(expand(v.trim_matches('"'))?),
            None => None,
        };
        let need = |v: Option<String>| v.ok_or_else(|| format!("`{key}` needs a value"));
        let bad = || format!("unexpected key `{key}` for this mount type");
        match key.as_str() {
            "type" => {}
            "target" | "dst" | "destination" => target = Some(need(value)?),
            "source" | "src" if matches!(kind, Kind::Bind | Kind::Cache) => {
                source = Some(need(value)?)
            }
            "from" if kind == Kind::Bind || kind == Kind::Cache => from = Some(need(value)?),
            "ro" | "readonly" => readonly = Some(parse_bool(&key, value.as_deref())?),
            "rw" | "readwrite" => readwrite = parse_bool(&key, value.as_deref())?,
            "id" if matches!(kind, Kind::Cache | Kind::Secret | Kind::Ssh) => {
                id = Some(need(value)?)
            }
            "sharing" if kind == Kind::Cache => {
                sharing = match need(value)?.as_str() {
                    "shared" => CacheSharing::Shared,
                    "private" => CacheSharing::Private,
                    "locked" => CacheSharing::Locked,
                    other => return Err(format!("unsupported sharing value `{other}`")),
                }
            }
            "mode" if matches!(kind, Kind::Cache | Kind::Secret | Kind::Ssh) => {
                mode = Some(parse_u32(&key, &need(value)?, 8)?)
            }
            "uid" if matches!(kind, Kind::Cache | Kind::Secret | Kind::Ssh) => {
                uid = parse_u32(&key, &need(value)?, 10)?
            }
            "gid" if matches!(kind, Kind::Cache | Kind::Secret | Kind::Ssh) => {
                gid = parse_u32(&key, &need(value)?, 10)?
            }
            "size" if kind == Kind::Tmpfs => size = Some(parse_size(&need(value)?)?),
            "env" if kind == Kind::Secret => env = Some(need(value)?),
            "required" if matches!(kind, Kind::Secret | Kind::Ssh) => {
                required = parse_bool(&key, value.as_deref())?
            }
            "source" | "src" | "from" | "id" | "sharing" | "mode" | "uid" | "gid" | "size"
            | "env" | "required" => return Err(bad()),
            _ => return Err(format!("unexpected key `{key}` in `--mount`")),
        }
    }
    let target = target.filter(|t| !t.is_empty());
    let needs_target = || "mount target must be specified".to_string();
    Ok(match kind {
        Kind::Bind => RunMount::Bind {
            target: target.ok_or_else(needs_target)?,
            source: source.unwrap_or_default(),
            from,
            readwrite: readwrite || readonly == Some(false),
        },
        Kind::Cache => RunMount::Cache {
            id: id.filter(|i| !i.is_empty()),
            target: target.ok_or_else(needs_target)?,
            readonly: readonly.unwrap_or(false),
            sharing,
            mode: mode.unwrap_or(0o755),
            uid,
            gid,
            from: from.filter(|f| !f.is_empty()),
            source: source.unwrap_or_default(),
        },
        Kind::Tmpfs => RunMount::Tmpfs {
            target: target.ok_or_else(needs_target)?,
            size,
        },
        Kind::Secret => RunMount::Secret {
            id,
            target,
            env,
            required,
            mode: mode.unwrap_or(0o400),
            uid,
            gid,
        },
        Kind::Ssh => RunMount::Ssh {
            id: id.filter(|i| !i.is_empty()),
            target,
            required,
            mode: mode.unwrap_or(0o600),
            uid,
            gid,
        },
    })
}

/// The unexpanded `from=` of a `--mount` value, to find the stages a build needs.
pub fn from_of(value: &str) -> Option<String> {
    value
        .split(',')
        .find_map(|f| f.strip_prefix("from="))
        .map(|f| f.trim_matches('"').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(v: &str) -> Result<RunMount, String> {
        parse(v, |s| Ok(s.replace("$DIR", "/expanded")))
    }

    #[test]
    fn from_is_never_expanded() {
        let err = p("target=/src,from=$DIR").unwrap_err();
        assert!(
            err.contains("'from' doesn't support variable expansion"),
            "{err}"
        );
        assert!(p("target=/src,from=build$").is_ok());
    }

    #[test]
    fn bind_is_the_default_type_and_read_only() {
        assert_eq!(
            p("target=/src,source=sub,from=build").unwrap(),
            RunMount::Bind {
                target: "/src".into(),
                source: "sub".into(),
                from: Some("build".into()),
                readwrite: false,
            }
        );
        match p("type=bind,dst=/x,rw").unwrap() {
            RunMount::Bind { readwrite, .. } => assert!(readwrite),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn cache_defaults_and_options() {
        assert_eq!(
            p("type=cache,target=$DIR").unwrap(),
            RunMount::Cache {
                id: None,
                target: "/expanded".into(),
                readonly: false,
                sharing: CacheSharing::Shared,
                mode: 0o755,
                uid: 0,
                gid: 0,
                from: None,
                source: String::new(),
            }
        );
        assert_eq!(
            p("type=cache,id=x,target=/c,sharing=locked,mode=0700,uid=1,gid=2,ro").unwrap(),
            RunMount::Cache {
                id: Some("x".into()),
                target: "/c".into(),
                readonly: true,
                sharing: CacheSharing::Locked,
                mode: 0o700,
                uid: 1,
                gid: 2,
                from: None,
                source: String::new(),
            }
        );
        match p("type=cache,target=/c,from=build,source=/out").unwrap() {
            RunMount::Cache { from, source, .. } => {
                assert_eq!(from.as_deref(), Some("build"));
                assert_eq!(source, "/out");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ssh_defaults_and_options() {
        assert_eq!(
            p("type=ssh").unwrap(),
            RunMount::Ssh {
                id: None,
                target: None,
                required: false,
                mode: 0o600,
                uid: 0,
                gid: 0,
            }
        );
        assert_eq!(
            p("type=ssh,id=gh,target=/s,required,mode=0644,uid=5,gid=6").unwrap(),
            RunMount::Ssh {
                id: Some("gh".into()),
                target: Some("/s".into()),
                required: true,
                mode: 0o644,
                uid: 5,
                gid: 6,
            }
        );
        assert!(p("type=ssh,source=/x").is_err());
        assert!(p("type=ssh,env=X").is_err());
    }

    #[test]
    fn tmpfs_size_units() {
        assert_eq!(
            p("type=tmpfs,target=/t,size=64k").unwrap(),
            RunMount::Tmpfs {
                target: "/t".into(),
                size: Some(65536),
            }
        );
        assert!(p("type=tmpfs,target=/t,size=lots").is_err());
    }

    #[test]
    fn secret_defaults() {
        assert_eq!(
            p("type=secret,id=tok,env=TOKEN,required=true").unwrap(),
            RunMount::Secret {
                id: Some("tok".into()),
                target: None,
                env: Some("TOKEN".into()),
                required: true,
                mode: 0o400,
                uid: 0,
                gid: 0,
            }
        );
    }

    #[test]
    fn bad_keys_and_types_are_errors() {
        assert!(
            p("type=bind,target=/x,bogus=1")
                .unwrap_err()
                .contains("bogus")
        );
        assert!(p("type=tmpfs,target=/x,id=a").unwrap_err().contains("id"));
        assert!(p("type=cache,target=/x,sharing=maybe").is_err());
        assert!(p("type=nfs,target=/x").unwrap_err().contains("nfs"));
        assert!(p("type=bind,source=x").unwrap_err().contains("target"));
        assert!(p("type=cache,target=/x,mode=9").is_err());
    }
}
