//! What the image commands print: `docker images` rows with `--digests`/`--no-trunc`/`--format`,
//! `docker history` rows, and an image's config and layers read back from the content store.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use kiln_content::ContentStore;
use kiln_oci::{Digest, ImageConfig};

use crate::store::{ImageRecord, familiar_name};
use crate::table::{human_duration, human_size};
use crate::{Error, Result, image};

/// The Docker CLI's tabwriter settings: minimum cell width 10, padding 3.
const MIN_WIDTH: usize = 10;
const PADDING: usize = 3;

/// Aligns rows as the Docker CLI's tabwriter does; the last column is not padded.
pub fn format_table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0usize; columns];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max((cell.chars().count() + PADDING).max(MIN_WIDTH));
        }
    }
    let mut out = String::new();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            out.push_str(cell);
            if i + 1 < row.len() {
                out.extend(std::iter::repeat_n(' ', widths[i] - cell.chars().count()));
            }
        }
        out.push('\n');
    }
    out
}

/// How `kiln images` shows rows.
#[derive(Debug, Clone, Copy, Default)]
pub struct ImagesView {
    pub digests: bool,
    pub no_trunc: bool,
}

/// The image ID as shown: 12 hex digits, or the whole `sha256:…` with `--no-trunc`.
pub fn short_id(id: &Digest, no_trunc: bool) -> String {
    if no_trunc {
        id.to_string()
    } else {
        id.digest().chars().take(12).collect()
    }
}

/// The values a `--format` template can name, Docker's field names.
pub fn image_fields(
    r: &ImageRecord,
    now: DateTime<Utc>,
    no_trunc: bool,
) -> BTreeMap<&'static str, String> {
    let (repo, tag) = familiar_name(&r.name);
    let mut f = BTreeMap::new();
    f.insert("Repository", repo);
    f.insert("Tag", tag);
    f.insert("ID", short_id(&r.config, no_trunc));
    f.insert("Digest", r.manifest.to_string());
    f.insert(
        "CreatedSince",
        match r.created {
            Some(t) => format!("{} ago", human_duration(now - t)),
            None => "N/A".into(),
        },
    );
    f.insert(
        "CreatedAt",
        r.created
            .map(|t| t.format("%Y-%m-%d %H:%M:%S %z UTC").to_string())
            .unwrap_or_default(),
    );
    f.insert("Size", human_size(r.size));
    f
}

/// `docker images` with `--digests` and `--no-trunc`.
pub fn images_table(records: &[ImageRecord], now: DateTime<Utc>, view: ImagesView) -> String {
    let mut header = vec!["REPOSITORY", "TAG"];
    if view.digests {
        header.push("DIGEST");
    }
    header.extend(["IMAGE ID", "CREATED", "SIZE"]);
    let mut rows = vec![header.into_iter().map(String::from).collect::<Vec<_>>()];
    for r in records {
        let mut f = image_fields(r, now, view.no_trunc);
        let mut row = vec![f.remove("Repository"), f.remove("Tag")];
        if view.digests {
            row.push(f.remove("Digest"));
        }
        row.extend([f.remove("ID"), f.remove("CreatedSince"), f.remove("Size")]);
        rows.push(row.into_iter().map(Option::unwrap_or_default).collect());
    }
    format_table(&rows)
}

/// `kiln images --tree`, as `docker image ls --tree` lays it out: each image, and under a
/// multi-platform one a row per platform with its own ID (config digest) and size.
pub fn images_tree(records: &[(ImageRecord, Vec<crate::PlatformImage>)], no_trunc: bool) -> String {
    let mut rows = vec![vec![
        "IMAGE".to_string(),
        "ID".into(),
        "CONTENT SIZE".into(),
    ]];
    for (r, platforms) in records {
        let (repo, tag) = familiar_name(&r.name);
        rows.push(vec![
            format!("{repo}:{tag}"),
            short_id(&r.config, no_trunc),
            human_size(r.size),
        ]);
        for (i, p) in platforms.iter().enumerate() {
            let branch = if i + 1 == platforms.len() {
                "└─"
            } else {
                "├─"
            };
            rows.push(vec![
                format!("{branch} {}", p.platform),
                short_id(&p.config, no_trunc),
                human_size(p.size),
            ]);
        }
    }
    format_table(&rows)
}

/// A column's header in `table` templates, as the Docker CLI names them.
fn header(field: &str) -> String {
    match field {
        "ID" => "IMAGE ID".into(),
        "CreatedSince" => "CREATED".into(),
        "CreatedAt" => "CREATED AT".into(),
        "CreatedBy" => "CREATED BY".into(),
        other => other.to_ascii_uppercase(),
    }
}

/// A parsed `--format` template: literal text and `{{.Field}}` placeholders. Only that much of
/// Go's template language is supported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    table: bool,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Field(String),
}

impl Template {
    /// Parses `template`; a field outside `known` or any other action is an error message.
    pub fn parse(template: &str, known: &[&str]) -> std::result::Result<Template, String> {
        let (table, body) = match template.strip_prefix("table") {
            Some(rest) => (true, rest.trim_start()),
            None => (false, template),
        };
        // The Docker CLI unescapes `\t` and `\n` typed on the command line.
        let body = body.replace("\\t", "\t").replace("\\n", "\n");
        let mut parts = Vec::new();
        let mut rest = body.as_str();
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                parts.push(Part::Text(rest[..start].to_string()));
            }
            let end = rest[start..]
                .find("}}")
                .ok_or_else(|| format!("unclosed action in format `{template}`"))?;
            let action = rest[start + 2..start + end].trim();
            let field = action
                .strip_prefix('.')
                .filter(|f| known.contains(f))
                .ok_or_else(|| {
                    format!(
                        "--format action `{{{{{action}}}}}` is not supported yet (supported: {})",
                        known
                            .iter()
                            .map(|k| format!("{{{{.{k}}}}}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })?;
            parts.push(Part::Field(field.to_string()));
            rest = &rest[start + end + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(Template { table, parts })
    }

    /// Renders every row; `table` templates get a header and aligned columns.
    pub fn render(&self, rows: &[BTreeMap<&'static str, String>]) -> String {
        let line = |value: &dyn Fn(&str) -> String| -> String {
            self.parts
                .iter()
                .map(|p| match p {
                    Part::Text(t) => t.clone(),
                    Part::Field(f) => value(f),
                })
                .collect()
        };
        let mut lines: Vec<String> = Vec::new();
        if self.table {
            lines.push(line(&|f| header(f)));
        }
        for row in rows {
            lines.push(line(&|f| row.get(f).cloned().unwrap_or_default()));
        }
        if self.table {
            let cells: Vec<Vec<String>> = lines
                .iter()
                .map(|l| l.split('\t').map(String::from).collect())
                .collect();
            format_table(&cells)
        } else {
            lines.iter().map(|l| format!("{l}\n")).collect()
        }
    }
}

/// An image's manifest, config and layers, read from the content store.
#[derive(Debug, Clone)]
pub struct ImageDetails {
    pub manifest: Digest,
    pub manifest_media_type: String,
    pub config: ImageConfig,
    /// The config as stored, for fields `ImageConfig` does not name.
    pub config_json: serde_json::Value,
    /// Blob digest and compressed size of each layer, bottom first.
    pub layers: Vec<(Digest, u64)>,
}

/// Reads the manifest `manifest` and its config.
pub fn image_details(content: &ContentStore, manifest: &Digest) -> Result<ImageDetails> {
    let bytes = image::read_metadata(content, manifest)?;
    let manifest_media_type = image::sniff_media_type(manifest, &bytes)?;
    let m = image::read_manifest(content, manifest)?;
    let config_digest = m.config().digest();
    let config_bytes = image::read_metadata(content, config_digest)?;
    let invalid = |source| Error::InvalidConfig {
        digest: config_digest.clone(),
        source,
    };
    let config: ImageConfig = serde_json::from_slice(&config_bytes).map_err(invalid)?;
    let config_json = serde_json::from_slice(&config_bytes).map_err(invalid)?;
    Ok(ImageDetails {
        manifest: manifest.clone(),
        manifest_media_type,
        config,
        config_json,
        layers: m
            .layers()
            .iter()
            .map(|l| (l.digest().clone(), l.size()))
            .collect(),
    })
}

/// How `kiln history` shows rows.
#[derive(Debug, Clone, Copy, Default)]
pub struct HistoryView {
    pub no_trunc: bool,
}

/// `docker history` rows, newest first: the image ID on the top row and `<missing>` below (the
/// intermediate images have no IDs of their own), each history entry's time, command, the
/// size of its layer (compressed; 0B for entries without a layer) and comment.
pub fn history_rows(
    d: &ImageDetails,
    id: &Digest,
    now: DateTime<Utc>,
    view: HistoryView,
) -> Vec<BTreeMap<&'static str, String>> {
    let mut layers = d.layers.iter();
    let mut rows: Vec<BTreeMap<&'static str, String>> = Vec::new();
    let history: Vec<kiln_oci::History> = if d.config.history.is_empty() {
        // Configs without history (some imports) get one row per layer.
        d.layers
            .iter()
            .map(|_| kiln_oci::History::default())
            .collect()
    } else {
        d.config.history.clone()
    };
    for h in &history {
        let size = if h.empty_layer {
            0
        } else {
            layers.next().map(|(_, s)| *s).unwrap_or(0)
        };
        let created_by = h.created_by.clone().unwrap_or_default();
        let created = h
            .created
            .as_deref()
            .and_then(|c| DateTime::parse_from_rfc3339(c).ok())
            .map(|t| t.with_timezone(&Utc));
        let mut f = BTreeMap::new();
        f.insert("ID", "<missing>".to_string());
        f.insert(
            "CreatedSince",
            created
                .map(|t| format!("{} ago", human_duration(now - t)))
                .unwrap_or_else(|| "N/A".into()),
        );
        f.insert(
            "CreatedAt",
            created.map(|t| t.to_rfc3339()).unwrap_or_default(),
        );
        f.insert(
            "CreatedBy",
            if view.no_trunc {
                created_by
            } else {
                ellipsis(&created_by, 45)
            },
        );
        f.insert("Size", human_size(size));
        f.insert("Comment", h.comment.clone().unwrap_or_default());
        rows.push(f);
    }
    rows.reverse();
    if let Some(top) = rows.first_mut() {
        top.insert("ID", short_id(id, view.no_trunc));
    }
    rows
}

/// `docker history`'s table.
pub fn history_table(rows: &[BTreeMap<&'static str, String>]) -> String {
    let fields = ["ID", "CreatedSince", "CreatedBy", "Size", "Comment"];
    let mut table = vec![
        ["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"]
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>(),
    ];
    for r in rows {
        table.push(
            fields
                .iter()
                .map(|f| r.get(f).cloned().unwrap_or_default())
                .collect(),
        );
    }
    format_table(&table)
}

/// The Docker CLI's `Ellipsis`: at most `max` characters, the last one `…` when cut.
fn ellipsis(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max - 1).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_substitute_fields_and_tables_get_headers() {
        let known = ["Repository", "Tag", "ID"];
        let mut row = BTreeMap::new();
        row.insert("Repository", "busybox".to_string());
        row.insert("Tag", "latest".to_string());
        row.insert("ID", "abc".to_string());
        let t = Template::parse("{{.Repository}}:{{ .Tag }}", &known).unwrap();
        assert_eq!(t.render(&[row.clone()]), "busybox:latest\n");
        let t = Template::parse("table {{.Repository}}\\t{{.ID}}", &known).unwrap();
        assert_eq!(
            t.render(&[row]),
            "REPOSITORY   IMAGE ID\nbusybox      abc\n"
        );
        let err = Template::parse("{{json .}}", &known).unwrap_err();
        assert!(err.contains("not supported yet"), "{err}");
        assert!(Template::parse("{{.Nope}}", &known).is_err());
        assert!(Template::parse("{{.ID", &known).is_err());
    }

    #[test]
    fn history_is_newest_first_with_sizes_of_layers_only() {
        let id = kiln_oci::sha256(b"config");
        let mut config = ImageConfig::default();
        let entry = |by: &str, empty| kiln_oci::History {
            created: Some("2026-01-01T00:00:00Z".into()),
            created_by: Some(by.into()),
            empty_layer: empty,
            ..Default::default()
        };
        config.history = vec![
            entry("ADD rootfs.tar /", false),
            entry("ENV A=b", true),
            entry(&format!("RUN {}", "x".repeat(60)), false),
        ];
        let d = ImageDetails {
            manifest: kiln_oci::sha256(b"m"),
            manifest_media_type: kiln_oci::media_type::DOCKER_MANIFEST.into(),
            config,
            config_json: serde_json::json!({}),
            layers: vec![
                (kiln_oci::sha256(b"l1"), 1_500),
                (kiln_oci::sha256(b"l2"), 42),
            ],
        };
        let now = DateTime::parse_from_rfc3339("2026-01-01T02:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let rows = history_rows(&d, &id, now, HistoryView::default());
        let col = |k: &str| rows.iter().map(|r| r[k].clone()).collect::<Vec<_>>();
        assert_eq!(col("ID"), [&id.digest()[..12], "<missing>", "<missing>"]);
        assert_eq!(col("Size"), ["42B", "0B", "1.5kB"]);
        assert_eq!(col("CreatedSince")[0], "2 hours ago");
        assert_eq!(col("CreatedBy")[0].chars().count(), 45);
        assert!(col("CreatedBy")[0].ends_with('…'));
        let full = history_rows(&d, &id, now, HistoryView { no_trunc: true });
        assert_eq!(full[0]["ID"], id.to_string());
        assert_eq!(full[0]["CreatedBy"].len(), 64);
        let table = history_table(&rows);
        assert!(
            table.starts_with("IMAGE          CREATED       CREATED BY"),
            "{table}"
        );
    }
}
