//! `--cache-to` and `--cache-from` as buildx writes them: CSV `KEY=VALUE` fields with a
//! `type`, or a bare reference meaning `type=registry,ref=REF`.

use std::path::PathBuf;

use kiln_exporter::compress::{Compression, CompressionOpts};
use kiln_oci::{Digest, Reference};

use crate::cache_store::{AzblobCache, S3Cache};
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

/// Where a cache goes or comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheLocation {
    /// `type=registry,ref=R`.
    Registry(Reference),
    /// `type=local,dest=DIR` / `src=DIR`: an OCI image layout directory.
    Local(PathBuf),
    /// `--cache-to type=inline`: in the image's config (imported as `type=registry`).
    Inline,
    /// `type=s3`: objects of an S3 bucket (cache_store/s3.rs).
    S3(Box<S3Cache>),
    /// `type=azblob`: blobs of an Azure Blob Storage container (cache_store/azblob.rs).
    Azblob(Box<AzblobCache>),
}

impl std::fmt::Display for CacheLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CacheLocation::Registry(r) => write!(f, "{r}"),
            CacheLocation::Local(dir) => write!(f, "local:{}", dir.display()),
            CacheLocation::Inline => f.write_str("inline"),
            CacheLocation::S3(c) => write!(f, "{c}"),
            CacheLocation::Azblob(c) => write!(f, "{c}"),
        }
    }
}

/// `cache-mounts=`: which `RUN --mount=type=cache` contents travel with the cache.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum CacheMounts {
    /// None (the default: BuildKit exports none).
    #[default]
    None,
    /// `cache-mounts=all`: every cache mount a RUN of the build has.
    All,
    /// `cache-mounts=ID1;ID2`: those ids (an id defaults to the mount's target path).
    Ids(Vec<String>),
}

impl CacheMounts {
    pub fn includes(&self, id: &str) -> bool {
        match self {
            CacheMounts::None => false,
            CacheMounts::All => true,
            CacheMounts::Ids(ids) => ids.iter().any(|i| i == id),
        }
    }
}

/// `cache-mounts-max=` by default: a cache mount larger than this is not exported.
pub const DEFAULT_CACHE_MOUNTS_MAX: u64 = 512 << 20;

/// One `--cache-to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheExport {
    pub location: CacheLocation,
    pub mode: CacheMode,
    /// A failed export is a warning (the default) or, with `ignore-error=false`, the build's error.
    pub ignore_error: bool,
    /// `compression=`, `compression-level=`, `force-compression=` (gzip by default, as BuildKit).
    pub compression: CompressionOpts,
    /// `cache-mounts=` (kiln's own: BuildKit never exports cache mounts).
    pub cache_mounts: CacheMounts,
    /// `cache-mounts-max=`: the most bytes of files one exported cache mount may hold.
    pub cache_mounts_max: u64,
    /// `oci-mediatypes=` (true by default): false writes Docker media types.
    pub oci: bool,
    /// `image-manifest=`: the cache as an image manifest (the default, as BuildKit's since
    /// v0.21) or as BuildKit's older index that lists the blobs directly (the default when
    /// `oci-mediatypes=false`, which an image manifest cannot have).
    pub image_manifest: bool,
    /// `tag=` of `type=local`: the name of the layout's index entry (`latest` by default).
    pub tag: String,
}

/// The index entry name of a local cache when `tag=` gives none (as BuildKit's).
pub const DEFAULT_LOCAL_TAG: &str = "latest";

/// A `tag=` value, as a registry tag is spelled.
fn valid_tag(tag: &str) -> bool {
    let mut chars = tag.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && tag.len() <= 128
}

/// One `--cache-from`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheImport {
    pub location: CacheLocation,
    /// `digest=`: the cache manifest to use, instead of what the layout's index names.
    pub digest: Option<Digest>,
    /// `tag=` of `type=local`: the index entry to use (`latest` by default).
    pub tag: String,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid {flag} `{spec}`: {why}")]
pub struct CacheSpecError {
    flag: &'static str,
    spec: String,
    why: String,
}

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
        Some("registry" | "local" | "s3" | "azblob") => Ok(out),
        Some("inline") if flag == "--cache-to" => Ok(out),
        Some("inline") => Err(err(
            "an inline cache is imported with `type=registry,ref=IMAGE`".into(),
        )),
        // GitHub's cache service cannot be reached from here to test a client against, so
        // kiln does not pretend to have one.
        Some("gha") => Err(err(
            "cache type `gha` is not supported yet: GitHub Actions' cache service cannot be \
             reached to test it; use `type=registry` (ghcr.io) or `type=local` with \
             actions/cache"
                .into(),
        )),
        Some(t) => Err(err(format!("unknown cache type `{t}`"))),
        None => Err(err("`type` is required".into())),
    }
}

/// The attributes a bucket cache type takes besides the common ones; none for other types.
fn bucket_keys(fields: &[(String, String)]) -> &'static [&'static str] {
    match fields
        .iter()
        .find(|(k, _)| k == "type")
        .map(|(_, v)| v.as_str())
    {
        Some("s3") => S3Cache::KEYS,
        Some("azblob") => AzblobCache::KEYS,
        _ => &[],
    }
}

/// The location the fields name: `ref` for a registry cache, `path_key` (`dest` for an
/// export, `src` for an import) for a local one, the bucket attributes (and the environment
/// where they leave something out) for s3 and azblob.
fn location(
    flag: &'static str,
    spec: &str,
    fields: &[(String, String)],
    path_key: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<CacheLocation, CacheSpecError> {
    let err = |why: String| CacheSpecError {
        flag,
        spec: spec.to_string(),
        why,
    };
    let get = |key: &str| {
        fields
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    };
    match get("type").as_deref() {
        Some("inline") => Ok(CacheLocation::Inline),
        Some("s3") => S3Cache::parse(get, env)
            .map(|c| CacheLocation::S3(Box::new(c)))
            .map_err(err),
        Some("azblob") => AzblobCache::parse(get, env)
            .map(|c| CacheLocation::Azblob(Box::new(c)))
            .map_err(err),
        Some("local") => {
            let dir = get(path_key)
                .filter(|d| !d.is_empty())
                .ok_or_else(|| err(format!("`{path_key}` is required for type=local")))?;
            Ok(CacheLocation::Local(PathBuf::from(dir)))
        }
        _ => {
            let value =
                get("ref").ok_or_else(|| err("`ref` is required for type=registry".into()))?;
            value
                .parse()
                .map(CacheLocation::Registry)
                .map_err(|e| err(format!("invalid reference `{value}`: {e}")))
        }
    }
}

/// The process environment, which s3 and azblob specs fall back on.
pub fn process_env(key: &str) -> Option<String> {
    std::env::var(key).ok()
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
        Self::parse_with_env(spec, &process_env)
    }

    /// As [`CacheExport::parse`], reading what the attributes leave out from `env` (kilnd: the
    /// values the client's environment gave).
    pub fn parse_with_env(
        spec: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<CacheExport, CacheSpecError> {
        const FLAG: &str = "--cache-to";
        let err = |why: String| CacheSpecError {
            flag: FLAG,
            spec: spec.to_string(),
            why,
        };
        let fields = fields(FLAG, spec)?;
        let local = fields.iter().any(|(k, v)| k == "type" && v == "local");
        let inline = fields.iter().any(|(k, v)| k == "type" && v == "inline");
        let bucket = bucket_keys(&fields);
        let (mut mode, mut ignore_error) = (CacheMode::Min, true);
        let mut compression = CompressionOpts::default();
        let mut cache_mounts = CacheMounts::None;
        let mut cache_mounts_max = DEFAULT_CACHE_MOUNTS_MAX;
        let (mut oci, mut image_manifest) = (true, None);
        let mut tag = DEFAULT_LOCAL_TAG.to_string();
        for (k, v) in &fields {
            match k.as_str() {
                "type" => {}
                // The image's own chain is all an inline cache can hold (BuildKit's too).
                _ if inline => {
                    return Err(err(format!(
                        "option `{k}` is not supported yet for type=inline"
                    )));
                }
                "ref" if !local && bucket.is_empty() => {}
                "dest" if local => {}
                k if bucket.contains(&k) => {}
                "mode" => {
                    mode = match v.as_str() {
                        "min" => CacheMode::Min,
                        "max" => CacheMode::Max,
                        _ => return Err(err(format!("invalid mode `{v}`: expected min or max"))),
                    }
                }
                "ignore-error" => {
                    ignore_error = boolean(v).ok_or_else(|| {
                        err(format!(
                            "invalid ignore-error `{v}`: expected true or false"
                        ))
                    })?
                }
                "compression" => {
                    compression.kind = match v.as_str() {
                        "gzip" => Compression::Gzip,
                        "zstd" => Compression::Zstd,
                        "uncompressed" => Compression::Uncompressed,
                        _ => {
                            return Err(err(format!(
                                "unknown compression `{v}`: expected uncompressed, gzip or zstd"
                            )));
                        }
                    }
                }
                "compression-level" => {
                    compression.level = Some(
                        v.parse()
                            .map_err(|_| err(format!("compression-level `{v}` is not a number")))?,
                    )
                }
                "force-compression" => {
                    compression.force = boolean(v).ok_or_else(|| {
                        err(format!(
                            "invalid force-compression `{v}`: expected true or false"
                        ))
                    })?
                }
                "cache-mounts" => {
                    let ids: Vec<String> = v
                        .split(';')
                        .map(str::trim)
                        .filter(|i| !i.is_empty())
                        .map(str::to_string)
                        .collect();
                    cache_mounts = match ids.as_slice() {
                        [] => return Err(err("`cache-mounts` names no cache mount id".into())),
                        [all] if all == "all" => CacheMounts::All,
                        _ => CacheMounts::Ids(ids),
                    }
                }
                "cache-mounts-max" => {
                    cache_mounts_max = crate::prune::parse_size(v).ok_or_else(|| {
                        err(format!(
                            "invalid cache-mounts-max `{v}`: expected a size such as 512MB"
                        ))
                    })?
                }
                "oci-mediatypes" => {
                    oci = boolean(v).ok_or_else(|| {
                        err(format!(
                            "invalid oci-mediatypes `{v}`: expected true or false"
                        ))
                    })?
                }
                "image-manifest" => {
                    image_manifest = Some(boolean(v).ok_or_else(|| {
                        err(format!(
                            "invalid image-manifest `{v}`: expected true or false"
                        ))
                    })?)
                }
                "tag" if local => {
                    if !valid_tag(v) {
                        return Err(err(format!("invalid tag `{v}`")));
                    }
                    tag = v.clone();
                }
                _ => return Err(err(format!("unknown option `{k}`"))),
            }
        }
        // BuildKit's rule and words: an image manifest has OCI media types only.
        if image_manifest == Some(true) && !oci {
            return Err(err(
                "invalid configuration for remote cache, OCI mediatypes are required for \
                 image-manifest cache format"
                    .into(),
            ));
        }
        Ok(CacheExport {
            location: location(FLAG, spec, &fields, "dest", env)?,
            mode,
            ignore_error,
            compression,
            cache_mounts,
            cache_mounts_max,
            oci,
            image_manifest: image_manifest.unwrap_or(oci),
            tag,
        })
    }
}

impl CacheImport {
    pub fn parse(spec: &str) -> Result<CacheImport, CacheSpecError> {
        Self::parse_with_env(spec, &process_env)
    }

    /// As [`CacheImport::parse`], reading what the attributes leave out from `env`.
    pub fn parse_with_env(
        spec: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<CacheImport, CacheSpecError> {
        const FLAG: &str = "--cache-from";
        let err = |why: String| CacheSpecError {
            flag: FLAG,
            spec: spec.to_string(),
            why,
        };
        let fields = fields(FLAG, spec)?;
        let local = fields.iter().any(|(k, v)| k == "type" && v == "local");
        let bucket = bucket_keys(&fields);
        let mut digest = None;
        let mut tag = DEFAULT_LOCAL_TAG.to_string();
        for (k, v) in &fields {
            match k.as_str() {
                "type" => {}
                "ref" if !local && bucket.is_empty() => {}
                k if bucket.contains(&k) => {}
                "src" if local => {}
                "tag" if local => {
                    if !valid_tag(v) {
                        return Err(err(format!("invalid tag `{v}`")));
                    }
                    tag = v.clone();
                }
                "digest" if local => {
                    digest = Some(
                        kiln_oci::parse_digest(v)
                            .map_err(|_| err(format!("invalid digest `{v}`")))?,
                    )
                }
                _ => return Err(err(format!("option `{k}` is not supported yet"))),
            }
        }
        Ok(CacheImport {
            location: location(FLAG, spec, &fields, "src", env)?,
            digest,
            tag,
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
        assert_eq!(e.location.to_string(), "r.io/a/cache:x");
        assert_eq!(e.mode, CacheMode::Max);
        assert!(!e.ignore_error);
        let e = CacheExport::parse("type=registry,ref=r.io/a/cache:x").unwrap();
        assert_eq!(e.mode, CacheMode::Min);
        assert_eq!(
            e.compression,
            CompressionOpts::default(),
            "gzip, as BuildKit"
        );
        let e = CacheExport::parse(
            "type=local,dest=d,compression=zstd,compression-level=9,force-compression=true",
        )
        .unwrap();
        assert_eq!(
            e.compression,
            CompressionOpts {
                kind: Compression::Zstd,
                level: Some(9),
                force: true
            }
        );
        assert!(e.ignore_error, "a failed export is a warning by default");
        // A bare reference is a registry cache, as buildx reads it.
        let e = CacheExport::parse("r.io/a/cache:y").unwrap();
        assert_eq!(e.location.to_string(), "r.io/a/cache:y");
    }

    #[test]
    fn media_types_manifest_form_and_tag() {
        let e = CacheExport::parse("type=registry,ref=r.io/a:x").unwrap();
        assert!(e.oci && e.image_manifest, "BuildKit v0.32's defaults");
        let e = CacheExport::parse("type=registry,ref=r.io/a:x,oci-mediatypes=false").unwrap();
        assert!(
            !e.oci && !e.image_manifest,
            "Docker types mean BuildKit's index form"
        );
        let e = CacheExport::parse("type=registry,ref=r.io/a:x,image-manifest=false").unwrap();
        assert!(e.oci && !e.image_manifest);
        let e = CacheExport::parse("type=local,dest=d,tag=v1.2_x").unwrap();
        assert_eq!(e.tag, "v1.2_x");
        assert_eq!(
            CacheExport::parse("type=local,dest=d").unwrap().tag,
            "latest"
        );
        let i = CacheImport::parse("type=local,src=d,tag=ci").unwrap();
        assert_eq!(i.tag, "ci");
        assert!(CacheImport::parse("type=registry,ref=r.io/a:x,tag=ci").is_err());
    }

    #[test]
    fn cache_mounts_and_their_cap() {
        let e = CacheExport::parse("type=registry,ref=r.io/a:x").unwrap();
        assert_eq!(e.cache_mounts, CacheMounts::None, "opt-in");
        assert_eq!(e.cache_mounts_max, 512 << 20);
        let e = CacheExport::parse("type=registry,ref=r.io/a:x,cache-mounts=all").unwrap();
        assert!(e.cache_mounts.includes("/root/.cache"));
        let e = CacheExport::parse(
            "type=local,dest=d,cache-mounts=pip;/root/.cargo,cache-mounts-max=1.5g",
        )
        .unwrap();
        assert_eq!(
            e.cache_mounts,
            CacheMounts::Ids(vec!["pip".into(), "/root/.cargo".into()])
        );
        assert!(e.cache_mounts.includes("/root/.cargo") && !e.cache_mounts.includes("npm"));
        assert_eq!(e.cache_mounts_max, 3 << 29);
        let msg = |s: &str| CacheExport::parse(s).unwrap_err().to_string();
        assert!(msg("type=local,dest=d,cache-mounts=").contains("names no cache mount id"));
        assert!(
            msg("type=local,dest=d,cache-mounts-max=lots").contains("invalid cache-mounts-max")
        );
        assert!(msg("type=inline,cache-mounts=all").contains("not supported yet for type=inline"));
    }

    #[test]
    fn cache_from_registry_and_bare_reference() {
        let i = CacheImport::parse("type=registry,ref=r.io/a/cache:x").unwrap();
        assert_eq!(i.location.to_string(), "r.io/a/cache:x");
        let i = CacheImport::parse("r.io/a/cache:y").unwrap();
        assert_eq!(i.location.to_string(), "r.io/a/cache:y");
    }

    #[test]
    fn inline_takes_no_options_and_is_no_import_type() {
        let e = CacheExport::parse("type=inline").unwrap();
        assert_eq!(e.location, CacheLocation::Inline);
        let msg = CacheExport::parse("type=inline,mode=max")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("option `mode` is not supported yet"), "{msg}");
        let msg = CacheImport::parse("type=inline").unwrap_err().to_string();
        assert!(msg.contains("type=registry,ref=IMAGE"), "{msg}");
    }

    #[test]
    fn local_dest_src_and_digest() {
        let e = CacheExport::parse("type=local,dest=/tmp/c,mode=max").unwrap();
        assert_eq!(e.location, CacheLocation::Local("/tmp/c".into()));
        assert_eq!(e.mode, CacheMode::Max);
        let d = kiln_oci::sha256(b"m");
        let i = CacheImport::parse(&format!("type=local,src=/tmp/c,digest={d}")).unwrap();
        assert_eq!(i.location, CacheLocation::Local("/tmp/c".into()));
        assert_eq!(i.digest, Some(d));
        let msg = CacheExport::parse("type=local").unwrap_err().to_string();
        assert!(msg.contains("`dest` is required"), "{msg}");
        let msg = CacheImport::parse("type=local,dest=/x")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("option `dest` is not supported yet"), "{msg}");
        let msg = CacheImport::parse("type=local,src=/x,digest=nope")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("invalid digest"), "{msg}");
        let msg = CacheExport::parse("type=registry,ref=r.io/a:x,dest=/x")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("unknown option `dest`"), "{msg}");
    }

    #[test]
    fn bucket_types_take_their_attributes_and_the_common_ones() {
        let e = CacheExport::parse(
            "type=s3,bucket=b,region=r,endpoint_url=http://127.0.0.1:9000,use_path_style=true,\
             name=a;b,mode=max,ignore-error=false,compression=zstd,upload_parallelism=2",
        )
        .unwrap();
        let CacheLocation::S3(c) = &e.location else {
            panic!("{:?}", e.location)
        };
        assert_eq!(c.names, ["a", "b"]);
        assert_eq!(c.upload_parallelism, 2);
        assert!(c.use_path_style);
        assert_eq!((e.mode, e.ignore_error), (CacheMode::Max, false));
        assert_eq!(e.location.to_string(), "s3://b/ at http://127.0.0.1:9000");
        let i = CacheImport::parse(
            "type=azblob,account_url=http://127.0.0.1:1/devstoreaccount1,\
             account_name=devstoreaccount1,container=c,prefix=p",
        )
        .unwrap();
        assert_eq!(
            i.location.to_string(),
            "http://127.0.0.1:1/devstoreaccount1/c/p"
        );
        let msg = CacheImport::parse("type=azblob,account_url=https://a.b.c,bucket=x")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("option `bucket` is not supported yet"),
            "{msg}"
        );
        let msg = CacheExport::parse("type=s3,bucket=b,region=r,use_path_style=maybe")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("invalid use_path_style `maybe`"), "{msg}");
    }

    #[test]
    fn unsupported_and_bad_specs_name_what_is_wrong() {
        let msg = |r: Result<CacheExport, CacheSpecError>| r.unwrap_err().to_string();
        assert!(
            msg(CacheExport::parse(
                "type=registry,ref=r.io/a:x,oci-mediatypes=false,image-manifest=true"
            ))
            .contains("OCI mediatypes are required for image-manifest cache format")
        );
        assert!(
            msg(CacheExport::parse("type=registry,ref=r.io/a:x,tag=x"))
                .contains("unknown option `tag`")
        );
        assert!(msg(CacheExport::parse("type=local,dest=d,tag=a/b")).contains("invalid tag"));
        assert!(
            msg(CacheExport::parse(
                "type=registry,ref=r.io/a:x,compression=lz4"
            ))
            .contains("unknown compression `lz4`")
        );
        assert!(
            msg(CacheExport::parse("type=gha")).contains("cache type `gha` is not supported yet")
                && msg(CacheExport::parse("type=gha")).contains("cannot be reached to test it")
        );
        assert!(msg(CacheExport::parse("type=nope")).contains("unknown cache type `nope`"));
        assert!(
            msg(CacheExport::parse("type=s3,bucket=b,region=r,ref=x"))
                .contains("unknown option `ref`")
        );
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
