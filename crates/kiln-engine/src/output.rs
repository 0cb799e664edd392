//! `--output` (buildx's exporter specs): the exporters and their options, parsed once here so
//! the CLI and the daemon accept the same syntax.

use std::fmt;
use std::path::PathBuf;

/// The exporter an output runs (`type=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExporterKind {
    /// The local image store (`name=`, `push=true`, `unpack`).
    Image,
    /// The image exporter with `push=true`.
    Registry,
    /// The final root filesystem into a directory (`dest=DIR`).
    Local,
    /// The final root filesystem as a tarball (`dest=FILE|-`).
    Tar,
    /// An OCI image layout (`dest=FILE|-`, `tar=false` for a directory).
    Oci,
    /// A tarball `docker load` accepts (`dest=FILE|-`); without a dest, the local store.
    Docker,
    /// Nothing but the build cache.
    CacheOnly,
}

impl ExporterKind {
    pub fn name(self) -> &'static str {
        match self {
            ExporterKind::Image => "image",
            ExporterKind::Registry => "registry",
            ExporterKind::Local => "local",
            ExporterKind::Tar => "tar",
            ExporterKind::Oci => "oci",
            ExporterKind::Docker => "docker",
            ExporterKind::CacheOnly => "cacheonly",
        }
    }

    /// Whether the exporter writes an image (config, manifest, layer blobs).
    pub fn is_image(self) -> bool {
        matches!(
            self,
            ExporterKind::Image | ExporterKind::Registry | ExporterKind::Oci | ExporterKind::Docker
        )
    }
}

/// How layer blobs are compressed for an output (`compression=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerCompressionKind {
    Uncompressed,
    Gzip,
    Zstd,
}

/// Which object an `annotation*.KEY=VALUE` option annotates (BuildKit's prefixes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnnotationTarget {
    /// `annotation.` and `annotation-manifest.`: the image manifest.
    Manifest,
    /// `annotation-index.`: the image index.
    Index,
    /// `annotation-manifest-descriptor.`: the manifest's descriptor in the index.
    ManifestDescriptor,
    /// `annotation-index-descriptor.`: the index's descriptor in an OCI layout's index.json.
    IndexDescriptor,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Annotation {
    pub target: AnnotationTarget,
    /// `annotation-manifest[linux/arm64].KEY`: only the manifest of that platform.
    pub platform: Option<String>,
    pub key: String,
    pub value: String,
}

/// One `--output`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub kind: ExporterKind,
    /// `dest=`; `-` is standard output.
    pub dest: Option<PathBuf>,
    /// `name=` (several separated by commas, in quotes): names besides `-t`.
    pub names: Vec<String>,
    /// `push=true` (always for `type=registry`).
    pub push: bool,
    pub push_by_digest: bool,
    pub name_canonical: bool,
    /// `unpack=true`: unpack the image's layers in the store at once.
    pub unpack: bool,
    /// `tar=false` for `type=oci|docker`: a directory instead of a tarball.
    pub tar: bool,
    pub compression: Option<LayerCompressionKind>,
    pub compression_level: Option<i32>,
    pub force_compression: bool,
    /// `oci-mediatypes=`: `None` is the exporter's default.
    pub oci_mediatypes: Option<bool>,
    pub annotations: Vec<Annotation>,
    pub rewrite_timestamp: bool,
    /// `platform-split=` of `type=local|tar`: each platform's tree in its own directory
    /// (`linux_amd64/`); `None` is buildx's default, split when there are several platforms.
    pub platform_split: Option<bool>,
}

impl Output {
    /// An output of `kind` with every option at its default.
    pub fn new(kind: ExporterKind) -> Output {
        Output {
            kind,
            dest: None,
            names: Vec::new(),
            push: kind == ExporterKind::Registry,
            push_by_digest: false,
            name_canonical: false,
            unpack: false,
            tar: true,
            compression: None,
            compression_level: None,
            force_compression: false,
            oci_mediatypes: None,
            annotations: Vec::new(),
            rewrite_timestamp: false,
            platform_split: None,
        }
    }

    /// Parses buildx's syntax: `type=oci,dest=out.tar`, a bare path (`-o out` is `type=local`),
    /// or `-` (a tar on standard output). Values may be quoted CSV fields (`"name=a,b"`).
    pub fn parse(spec: &str) -> Result<Output, OutputError> {
        let err = |why: String| OutputError {
            spec: spec.to_string(),
            why,
        };
        let fields = csv_fields(spec).map_err(|e| err(e.to_string()))?;
        if fields.len() == 1 && !fields[0].contains('=') {
            let (kind, dest) = if fields[0] == "-" {
                (ExporterKind::Tar, "-")
            } else {
                (ExporterKind::Local, fields[0].as_str())
            };
            let mut out = Output::new(kind);
            out.dest = Some(PathBuf::from(dest));
            return Ok(out);
        }
        let mut kind = None;
        let mut options = Vec::new();
        for field in &fields {
            let Some((key, value)) = field.split_once('=') else {
                return Err(err(format!("`{field}` is not KEY=VALUE")));
            };
            let key = key.trim().to_ascii_lowercase();
            if key == "type" {
                kind = Some(match value {
                    "image" => ExporterKind::Image,
                    "registry" => ExporterKind::Registry,
                    "local" => ExporterKind::Local,
                    "tar" => ExporterKind::Tar,
                    "oci" => ExporterKind::Oci,
                    "docker" => ExporterKind::Docker,
                    "cacheonly" => ExporterKind::CacheOnly,
                    other => return Err(err(format!("unknown exporter type `{other}`"))),
                });
            } else {
                options.push((key, value.to_string()));
            }
        }
        // buildx: without a type, a dest makes it `local`.
        let kind = match kind {
            Some(k) => k,
            None if options.iter().any(|(k, _)| k == "dest") => ExporterKind::Local,
            None => return Err(err("missing `type=`".into())),
        };
        let mut out = Output::new(kind);
        for (key, value) in options {
            let flag = |v: &str| match v {
                "" | "true" => Ok(true),
                "false" => Ok(false),
                other => Err(err(format!("`{key}` takes true or false, not `{other}`"))),
            };
            match key.as_str() {
                "dest" => out.dest = Some(PathBuf::from(value)),
                "name" => out.names.extend(
                    value
                        .split(',')
                        .map(str::trim)
                        .filter(|n| !n.is_empty())
                        .map(String::from),
                ),
                "push" => out.push = flag(&value)?,
                "push-by-digest" => out.push_by_digest = flag(&value)?,
                "name-canonical" => out.name_canonical = flag(&value)?,
                "unpack" => out.unpack = flag(&value)?,
                "tar" => out.tar = flag(&value)?,
                "compression" => {
                    out.compression = Some(match value.as_str() {
                        "uncompressed" => LayerCompressionKind::Uncompressed,
                        "gzip" => LayerCompressionKind::Gzip,
                        "zstd" => LayerCompressionKind::Zstd,
                        other => {
                            return Err(err(format!(
                                "unknown compression `{other}`: expected uncompressed, gzip or zstd"
                            )));
                        }
                    })
                }
                "compression-level" => {
                    out.compression_level =
                        Some(value.parse().map_err(|_| {
                            err(format!("compression-level `{value}` is not a number"))
                        })?)
                }
                "force-compression" => out.force_compression = flag(&value)?,
                "oci-mediatypes" => out.oci_mediatypes = Some(flag(&value)?),
                "rewrite-timestamp" => out.rewrite_timestamp = flag(&value)?,
                "platform-split" => out.platform_split = Some(flag(&value)?),
                k if k.starts_with("annotation") => out
                    .annotations
                    .push(parse_annotation(k, &value).map_err(err)?),
                other => return Err(err(format!("unknown option `{other}`"))),
            }
        }
        // `type=docker` without a dest loads the image into kiln's store, as `--load` does.
        if matches!(
            kind,
            ExporterKind::Local | ExporterKind::Tar | ExporterKind::Oci
        ) && out.dest.is_none()
        {
            return Err(err(format!("type={} needs dest=", kind.name())));
        }
        if let Some(level) = out.compression_level {
            let max = match out.compression {
                Some(LayerCompressionKind::Zstd) => 22,
                _ => 9,
            };
            if !(0..=max).contains(&level) {
                return Err(err(format!(
                    "compression-level {level} is out of range (0 to {max})"
                )));
            }
        }
        Ok(out)
    }

    /// The options of this output that kiln parses but does not implement yet, as the error a
    /// build fails with before it starts.
    pub fn unsupported(&self) -> Option<String> {
        let stores = crate::export_names::stores_image(self);
        let what = if self.push && !stores {
            format!("--output type={},push=true", self.kind.name())
        } else if !self.names.is_empty() && !stores && !self.kind.is_image() {
            format!("--output type={},name=", self.kind.name())
        } else if self.push_by_digest && !stores {
            format!("--output type={},push-by-digest", self.kind.name())
        } else if self.name_canonical && !stores {
            format!("--output type={},name-canonical", self.kind.name())
        } else if self.unpack && !stores {
            format!("--output type={},unpack", self.kind.name())
        } else if self.platform_split.is_some()
            && !matches!(self.kind, ExporterKind::Local | ExporterKind::Tar)
        {
            format!("--output type={},platform-split", self.kind.name())
        } else if !self.tar && self.kind != ExporterKind::Oci {
            format!("--output type={},tar=false", self.kind.name())
        } else if let Some(opt) = self.image_option().filter(|_| !self.kind.is_image()) {
            // Options that shape an image mean nothing to a rootfs or cache-only output.
            format!("--output type={},{opt}", self.kind.name())
        } else if self.dest.is_some()
            && matches!(
                self.kind,
                ExporterKind::Image | ExporterKind::Registry | ExporterKind::CacheOnly
            )
        {
            format!("--output type={},dest=", self.kind.name())
        } else {
            return None;
        };
        Some(format!("{what} is not supported yet"))
    }
}

/// The annotations of `outputs` checked against a single-platform build for `platform`, as
/// BuildKit checks them: index annotations need an index (a multi-platform build), a
/// platform-qualified one must name the platform built (it then applies unqualified), and
/// descriptor annotations need OCI media types.
pub(crate) fn check_annotations(
    outputs: &mut [Output],
    platform: &kiln_oci::Platform,
) -> Result<(), String> {
    for o in outputs {
        for a in &mut o.annotations {
            if matches!(
                a.target,
                AnnotationTarget::Index | AnnotationTarget::IndexDescriptor
            ) {
                return Err("index annotations not supported for single platform export".into());
            }
            if a.target == AnnotationTarget::ManifestDescriptor && o.oci_mediatypes == Some(false) {
                return Err("cannot export annotations with \"oci-mediatypes=false\"".into());
            }
            if let Some(p) = a.platform.take() {
                let wanted: kiln_oci::Platform = p
                    .parse()
                    .map_err(|_| format!("invalid annotation platform `{p}`"))?;
                if !wanted.matches(platform) || !platform.matches(&wanted) {
                    return Err(format!(
                        "invalid annotation: no platform {p} found in source"
                    ));
                }
            }
        }
    }
    Ok(())
}

impl Output {
    /// `annotation-manifest-descriptor.KEY=VALUE`: annotations of the image's descriptor where
    /// an index lists it (an OCI layout's `index.json`).
    pub fn descriptor_annotations(&self) -> std::collections::BTreeMap<String, String> {
        self.annotations
            .iter()
            .filter(|a| a.target == AnnotationTarget::ManifestDescriptor)
            .map(|a| (a.key.clone(), a.value.clone()))
            .collect()
    }
}

/// buildx's `--annotation [TYPE[PLATFORM]:]KEY=VALUE` (TYPE defaults to `manifest`), as the
/// exporter option it stands for.
pub fn parse_annotation_flag(spec: &str) -> Result<Annotation, OutputError> {
    let err = |why: String| OutputError {
        spec: spec.to_string(),
        why,
    };
    let (left, value) = spec
        .split_once('=')
        .ok_or_else(|| err("expected [TYPE[PLATFORM]:]KEY=VALUE".into()))?;
    // A `:` before the `=` separates the type, unless it belongs to the key (`a:b=c` has
    // no known type, so it is a key).
    let option = match left.split_once(':') {
        Some((ty, key)) => {
            let (name, platform) = ty.split_once('[').unwrap_or((ty, ""));
            match name {
                "manifest" | "index" | "manifest-descriptor" | "index-descriptor" => {
                    let platform = if platform.is_empty() {
                        String::new()
                    } else {
                        format!("[{platform}")
                    };
                    format!("annotation-{name}{platform}.{key}")
                }
                _ => format!("annotation.{left}"),
            }
        }
        None => format!("annotation.{left}"),
    };
    parse_annotation(&option, value).map_err(err)
}

impl Output {
    /// The first option given that only an image exporter uses.
    fn image_option(&self) -> Option<&'static str> {
        [
            (self.compression.is_some(), "compression"),
            (self.compression_level.is_some(), "compression-level"),
            (self.force_compression, "force-compression"),
            (self.oci_mediatypes.is_some(), "oci-mediatypes"),
            (self.rewrite_timestamp, "rewrite-timestamp"),
            (!self.annotations.is_empty(), "annotation"),
        ]
        .into_iter()
        .find_map(|(set, name)| set.then_some(name))
    }
}

/// `annotation[-TARGET][[PLATFORM]].KEY` = `value`.
fn parse_annotation(key: &str, value: &str) -> Result<Annotation, String> {
    let rest = &key["annotation".len()..];
    let (target_part, name) = rest
        .split_once('.')
        .ok_or_else(|| format!("`{key}` has no annotation key (annotation.KEY=VALUE)"))?;
    let (target_part, platform) = match target_part.split_once('[') {
        Some((t, p)) => {
            let p = p
                .strip_suffix(']')
                .ok_or_else(|| format!("`{key}`: unclosed `[`"))?;
            (t, Some(p.to_string()))
        }
        None => (target_part, None),
    };
    let target = match target_part {
        "" | "-manifest" => AnnotationTarget::Manifest,
        "-index" => AnnotationTarget::Index,
        "-manifest-descriptor" => AnnotationTarget::ManifestDescriptor,
        "-index-descriptor" => AnnotationTarget::IndexDescriptor,
        other => return Err(format!("unknown annotation type `annotation{other}`")),
    };
    if name.is_empty() {
        return Err(format!("`{key}` has an empty annotation key"));
    }
    Ok(Annotation {
        target,
        platform,
        key: name.to_string(),
        value: value.to_string(),
    })
}

/// The fields of one CSV record, as buildx reads `--output` (Go's encoding/csv).
pub(crate) fn csv_fields(spec: &str) -> Result<Vec<String>, csv::Error> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(spec.as_bytes());
    match reader.records().next() {
        Some(record) => Ok(record?.iter().map(String::from).collect()),
        None => Ok(Vec::new()),
    }
}

/// A `--output` that cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputError {
    pub spec: String,
    pub why: String,
}

impl fmt::Display for OutputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid --output `{}`: {}", self.spec, self.why)
    }
}

impl std::error::Error for OutputError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_dests_and_shorthands() {
        let o = Output::parse("type=oci,dest=a.tar").unwrap();
        assert_eq!(
            (o.kind, o.dest.as_deref()),
            (ExporterKind::Oci, Some("a.tar".as_ref()))
        );
        let o = Output::parse("out").unwrap();
        assert_eq!(
            (o.kind, o.dest.as_deref()),
            (ExporterKind::Local, Some("out".as_ref()))
        );
        assert_eq!(Output::parse("-").unwrap().kind, ExporterKind::Tar);
        assert_eq!(Output::parse("dest=d").unwrap().kind, ExporterKind::Local);
        assert!(Output::parse("type=registry").unwrap().push);
        assert!(Output::parse("type=oci").is_err());
        assert!(Output::parse("type=bogus").is_err());
        assert!(Output::parse("type=image,bogus=1").is_err());
    }

    #[test]
    fn quoted_names_and_options() {
        let o = Output::parse(r#"type=image,"name=r/a:1,r/b:2",push=true,compression=zstd,compression-level=19,force-compression=true,oci-mediatypes=true"#)
            .unwrap();
        assert_eq!(o.names, ["r/a:1", "r/b:2"]);
        assert!(o.push && o.force_compression);
        assert_eq!(o.compression, Some(LayerCompressionKind::Zstd));
        assert_eq!(o.compression_level, Some(19));
        assert_eq!(o.oci_mediatypes, Some(true));
        assert!(Output::parse("type=image,compression=gzip,compression-level=19").is_err());
        assert!(Output::parse("type=image,compression=lz4").is_err());
    }

    #[test]
    fn annotations_with_targets_and_platforms() {
        let o = Output::parse(
            "type=image,annotation.a=1,annotation-index.b=2,annotation-manifest[linux/arm64].c=3,annotation-manifest-descriptor.d=4",
        )
        .unwrap();
        let got: Vec<_> = o
            .annotations
            .iter()
            .map(|a| {
                (
                    a.target,
                    a.platform.as_deref(),
                    a.key.as_str(),
                    a.value.as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (AnnotationTarget::Manifest, None, "a", "1"),
                (AnnotationTarget::Index, None, "b", "2"),
                (AnnotationTarget::Manifest, Some("linux/arm64"), "c", "3"),
                (AnnotationTarget::ManifestDescriptor, None, "d", "4"),
            ]
        );
        assert!(Output::parse("type=image,annotation-bogus.x=1").is_err());
        assert!(Output::parse("type=image,annotation.=1").is_err());
    }

    #[test]
    fn annotations_are_checked_as_buildkit_checks_them() {
        let amd64: kiln_oci::Platform = "linux/amd64".parse().unwrap();
        let check = |spec: &str| {
            let mut outs = vec![Output::parse(spec).unwrap()];
            check_annotations(&mut outs, &amd64).map(|()| outs.remove(0))
        };
        let o =
            check("type=oci,dest=a,annotation[linux/amd64].k=v,annotation-manifest-descriptor.d=1")
                .unwrap();
        assert_eq!(o.annotations[0].platform, None, "applies unqualified");
        assert_eq!(
            o.descriptor_annotations().get("d").map(String::as_str),
            Some("1")
        );
        assert_eq!(
            check("type=oci,dest=a,annotation[linux/arm64].k=v").unwrap_err(),
            "invalid annotation: no platform linux/arm64 found in source"
        );
        assert_eq!(
            check("type=image,annotation-index.k=v").unwrap_err(),
            "index annotations not supported for single platform export"
        );
        assert!(
            check("type=oci,dest=a,oci-mediatypes=false,annotation-manifest-descriptor.k=v")
                .unwrap_err()
                .contains("oci-mediatypes=false")
        );
    }

    #[test]
    fn annotation_flags_are_exporter_options() {
        let a = parse_annotation_flag("org.opencontainers.image.title=T").unwrap();
        assert_eq!(
            (a.target, a.key.as_str(), a.value.as_str()),
            (
                AnnotationTarget::Manifest,
                "org.opencontainers.image.title",
                "T"
            )
        );
        let a = parse_annotation_flag("index:k=v").unwrap();
        assert_eq!(a.target, AnnotationTarget::Index);
        let a = parse_annotation_flag("manifest[linux/arm64]:k=v=w").unwrap();
        assert_eq!(
            (a.target, a.platform.as_deref(), a.value.as_str()),
            (AnnotationTarget::Manifest, Some("linux/arm64"), "v=w")
        );
        assert_eq!(
            parse_annotation_flag("manifest-descriptor:k=v")
                .unwrap()
                .target,
            AnnotationTarget::ManifestDescriptor
        );
        assert!(parse_annotation_flag("novalue").is_err());
    }

    #[test]
    fn unimplemented_options_are_named() {
        for spec in [
            "type=oci,dest=a,push=true",
            "type=local,dest=a,unpack=true",
            "type=docker,dest=a,tar=false",
            "type=local,dest=a,compression=zstd",
            "type=tar,dest=a,rewrite-timestamp=true",
            "type=image,dest=a",
            "type=oci,dest=a,platform-split=true",
        ] {
            let o = Output::parse(spec).unwrap();
            assert!(
                o.unsupported().unwrap().contains("not supported yet"),
                "{spec}"
            );
        }
        for spec in [
            "type=oci,dest=a",
            "type=local,dest=x",
            "type=tar,dest=-",
            "type=cacheonly",
            r#"type=image,"name=a,b",push=true,push-by-digest=true,name-canonical=true,unpack=true"#,
            "type=registry,name=a",
            "type=docker,name=a",
            "type=oci,dest=d,tar=false",
            "type=docker,dest=-",
            "type=oci,dest=a,compression=zstd,compression-level=9,force-compression=true",
            "type=docker,dest=a,oci-mediatypes=true,rewrite-timestamp=true,annotation.a=b",
            "type=local,dest=a,platform-split=true",
            "type=tar,dest=a,platform-split=true",
            "type=local,dest=a,platform-split=false",
            "type=tar,dest=a,platform-split=false",
        ] {
            assert_eq!(Output::parse(spec).unwrap().unsupported(), None, "{spec}");
        }
    }
}
