//! `--cache-to` and `--cache-from` as buildx writes them: CSV `KEY=VALUE` fields with a
//! `type`, or a bare reference meaning `type=registry,ref=REF`.

use kiln_oci::Reference;

use crate::output::csv_fields;

/// `mode=`: which records a cache export writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheMode {
    /// The steps whose results make up the final image's layer chain.
    #[default]
    Min,
    /// Every step the build solved, intermediate stages included.
    Max,
}

/// One `--cache-to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheExport {
    pub reference: Reference,
    pub mode: CacheMode,
    /// A failed export is a warning (the default) or, with `ignore-error=false`, the build's error.
    pub ignore_error: bool,
}

/// One `--cache-from`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheImport {
    pub reference: Reference,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid {flag} `{spec}`: {why}")]
pub struct CacheSpecError {
    flag: &'static str,
    spec: String,
    why: String,
}

/// Types buildx knows that kiln does not do yet; anything else is not a cache type at all.
const LATER_TYPES: &[&str] = &["local", "inline", "gha", "s3", "azblob"];

fn fields(flag: &'static str, spec: &str) -> Result<Vec<(String, String)>, CacheSpecError> {
    let err = |why: String| CacheSpecError {
        flag,
        spec: spec.to_string(),
        why,
    };
    let fields = csv_fields(spec).map_err(|e| err(e.to_string()))?;
    if fields.len() == 1 && !fields[0].contains('=') {
        return Ok(vec![
            ("type".into(), "registry".into()),
            ("ref".into(), fields[0].clone()),
        ]);
    }
    let mut out = Vec::new();
    for f in fields {
        let Some((k, v)) = f.split_once('=') else {
            return Err(err(format!("`{f}` is not KEY=VALUE")));
        };
        out.push((k.trim().to_ascii_lowercase(), v.to_string()));
    }
    let kind = out
        .iter()
        .find(|(k, _)| k == "type")
        .map(|(_, v)| v.as_str());
    match kind {
        Some("registry") => Ok(out),
        Some(t) if LATER_TYPES.contains(&t) => Err(err(format!(
            "cache type `{t}` is not supported yet (only `registry`)"
        ))),
        Some(t) => Err(err(format!("unknown cache type `{t}`"))),
        None => Err(err("`type` is required".into())),
    }
}

fn reference(
    flag: &'static str,
    spec: &str,
    value: Option<String>,
) -> Result<Reference, CacheSpecError> {
    let err = |why: String| CacheSpecError {
        flag,
        spec: spec.to_string(),
        why,
    };
    let value = value.ok_or_else(|| err("`ref` is required for type=registry".into()))?;
    value
        .parse()
        .map_err(|e| err(format!("invalid reference `{value}`: {e}")))
}

fn boolean(value: &str) -> Option<bool> {
    match value {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

impl CacheExport {
    pub fn parse(spec: &str) -> Result<CacheExport, CacheSpecError> {
        const FLAG: &str = "--cache-to";
        let err = |why: String| CacheSpecError {
            flag: FLAG,
            spec: spec.to_string(),
            why,
        };
        let (mut r, mut mode, mut ignore_error) = (None, CacheMode::Min, true);
        for (k, v) in fields(FLAG, spec)? {
            match k.as_str() {
                "type" => {}
                "ref" => r = Some(v),
                "mode" => {
                    mode = match v.as_str() {
                        "min" => CacheMode::Min,
                        "max" => CacheMode::Max,
                        _ => return Err(err(format!("invalid mode `{v}`: expected min or max"))),
                    }
                }
                "ignore-error" => {
                    ignore_error = boolean(&v).ok_or_else(|| {
                        err(format!(
                            "invalid ignore-error `{v}`: expected true or false"
                        ))
                    })?
                }
                "compression" | "compression-level" | "force-compression" | "oci-mediatypes"
                | "image-manifest" => {
                    return Err(err(format!("option `{k}` is not supported yet")));
                }
                _ => return Err(err(format!("unknown option `{k}`"))),
            }
        }
        Ok(CacheExport {
            reference: reference(FLAG, spec, r)?,
            mode,
            ignore_error,
        })
    }
}

impl CacheImport {
    pub fn parse(spec: &str) -> Result<CacheImport, CacheSpecError> {
        const FLAG: &str = "--cache-from";
        let mut r = None;
        for (k, v) in fields(FLAG, spec)? {
            match k.as_str() {
                "type" => {}
                "ref" => r = Some(v),
                _ => {
                    return Err(CacheSpecError {
                        flag: FLAG,
                        spec: spec.to_string(),
                        why: format!("option `{k}` is not supported yet"),
                    });
                }
            }
        }
        Ok(CacheImport {
            reference: reference(FLAG, spec, r)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_to_registry_with_its_options() {
        let e = CacheExport::parse("type=registry,ref=r.io/a/cache:x,mode=max,ignore-error=false")
            .unwrap();
        assert_eq!(e.reference.to_string(), "r.io/a/cache:x");
        assert_eq!(e.mode, CacheMode::Max);
        assert!(!e.ignore_error);
        let e = CacheExport::parse("type=registry,ref=r.io/a/cache:x").unwrap();
        assert_eq!(e.mode, CacheMode::Min);
        assert!(e.ignore_error, "a failed export is a warning by default");
        // A bare reference is a registry cache, as buildx reads it.
        let e = CacheExport::parse("r.io/a/cache:y").unwrap();
        assert_eq!(e.reference.to_string(), "r.io/a/cache:y");
    }

    #[test]
    fn cache_from_registry_and_bare_reference() {
        let i = CacheImport::parse("type=registry,ref=r.io/a/cache:x").unwrap();
        assert_eq!(i.reference.to_string(), "r.io/a/cache:x");
        let i = CacheImport::parse("r.io/a/cache:y").unwrap();
        assert_eq!(i.reference.to_string(), "r.io/a/cache:y");
    }

    #[test]
    fn unsupported_and_bad_specs_name_what_is_wrong() {
        let msg = |r: Result<CacheExport, CacheSpecError>| r.unwrap_err().to_string();
        assert!(
            msg(CacheExport::parse(
                "type=registry,ref=r.io/a:x,compression=zstd"
            ))
            .contains("option `compression` is not supported yet")
        );
        assert!(
            msg(CacheExport::parse("type=gha")).contains("cache type `gha` is not supported yet")
        );
        assert!(msg(CacheExport::parse("type=nope")).contains("unknown cache type `nope`"));
        assert!(msg(CacheExport::parse("type=registry")).contains("`ref` is required"));
        assert!(
            msg(CacheExport::parse("type=registry,ref=r.io/a:x,mode=all")).contains("invalid mode")
        );
        assert!(
            msg(CacheExport::parse("type=registry,ref=r.io/a:x,bogus=1"))
                .contains("unknown option `bogus`")
        );
        assert!(
            CacheImport::parse("type=registry,ref=r.io/a:x,digest=sha256:00")
                .unwrap_err()
                .to_string()
                .contains("option `digest` is not supported yet")
        );
        assert!(CacheImport::parse("type=registry,ref=UPPER/x").is_err());
    }
}
