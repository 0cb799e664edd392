//! The image-store commands as `docker` has them: `images` filters, `rmi`, `save`, `load`,
//! `inspect` and `history`. Images are named by reference or by ID (the config digest, or a
//! unique prefix of it), as the Docker CLI accepts them.

use std::io::{Read, Write};
use std::path::Path;

use chrono::{DateTime, Utc};
use kiln_exporter::load::LoadedImage;
use kiln_exporter::save::{SaveFormat, SaveImage};
use kiln_exporter::view::{ImageDetails, image_details};
use kiln_exporter::{ArchiveOptions, ImageRecord, familiar_name};
use kiln_oci::{Digest, Platform, Reference};

use crate::{Engine, Error, Result};

/// `kiln images --filter` terms. Different keys must all hold; several `reference` terms
/// match when any does, several `label` terms only when all do, as in Docker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageFilter {
    pub references: Vec<String>,
    pub dangling: Option<bool>,
    pub before: Option<String>,
    pub since: Option<String>,
    pub labels: Vec<(String, Option<String>)>,
}

impl ImageFilter {
    /// Parses `KEY=VALUE` terms.
    pub fn parse(terms: &[String]) -> Result<ImageFilter> {
        let mut f = ImageFilter::default();
        for term in terms {
            let (key, value) = term.split_once('=').ok_or_else(|| {
                Error::Usage(format!(
                    "bad format of filter `{term}` (expected name=value)"
                ))
            })?;
            match key.to_ascii_lowercase().as_str() {
                "reference" => f.references.push(value.to_string()),
                "dangling" => {
                    f.dangling = Some(match value.to_ascii_lowercase().as_str() {
                        "true" | "1" => true,
                        "false" | "0" => false,
                        _ => {
                            return Err(Error::Usage(format!(
                                "invalid filter `dangling={value}`: expected true or false"
                            )));
                        }
                    })
                }
                "before" => f.before = Some(value.to_string()),
                "since" => f.since = Some(value.to_string()),
                "label" => f.labels.push(match value.split_once('=') {
                    Some((k, v)) => (k.to_string(), Some(v.to_string())),
                    None => (value.to_string(), None),
                }),
                _ => return Err(Error::Usage(format!("invalid filter `{key}`"))),
            }
        }
        Ok(f)
    }
}

/// An image the user named, with every name it has in the store.
#[derive(Debug, Clone)]
pub struct FoundImage {
    /// The image ID.
    pub config: Digest,
    pub manifest: Digest,
    /// The name used to find it, when it was found by name rather than by ID.
    pub by_name: Option<Reference>,
    /// All names of this image (same ID), in store order.
    pub records: Vec<ImageRecord>,
}

/// What `rmi` did, in Docker's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RmiEvent {
    Untagged(String),
    Deleted(Digest),
}

impl Engine {
    /// The platforms' images of a multi-platform record (`kiln images --tree`); empty for a
    /// single-platform image.
    pub fn platform_images(
        &self,
        record: &ImageRecord,
    ) -> Result<Vec<kiln_exporter::PlatformImage>> {
        Ok(self.images.platform_images(record)?)
    }

    /// Named images that pass `filter`, newest first.
    pub fn list_images(&self, filter: &ImageFilter) -> Result<Vec<ImageRecord>> {
        let records = self.images.list()?;
        let created_of = |s: &str| -> Result<Option<DateTime<Utc>>> {
            let found = self.find_image(s)?;
            Ok(found.records.first().and_then(|r| r.created))
        };
        let before = filter.before.as_deref().map(created_of).transpose()?;
        let since = filter.since.as_deref().map(created_of).transpose()?;
        let mut out = Vec::new();
        for r in records {
            if !filter.references.is_empty()
                && !filter
                    .references
                    .iter()
                    .any(|p| reference_matches(p, &r.name))
            {
                continue;
            }
            if let Some(dangling) = filter.dangling
                && dangling != r.name.tag().is_none()
            {
                continue;
            }
            if let Some(limit) = before
                && !matches!((r.created, limit), (Some(c), Some(l)) if c < l)
            {
                continue;
            }
            if let Some(limit) = since
                && !matches!((r.created, limit), (Some(c), Some(l)) if c > l)
            {
                continue;
            }
            if !filter.labels.is_empty() {
                let details = image_details(&self.content, &r.manifest)?;
                let labels = details.config.config.labels.unwrap_or_default();
                let all = filter.labels.iter().all(|(k, v)| match v {
                    Some(v) => labels.get(k) == Some(v),
                    None => labels.contains_key(k),
                });
                if !all {
                    continue;
                }
            }
            out.push(r);
        }
        Ok(out)
    }

    /// Finds an image by name (`busybox`, `busybox:1`, `busybox@sha256:…`) or by ID
    /// (`sha256:<hex>` or a unique hex prefix, at least one digit).
    pub fn find_image(&self, s: &str) -> Result<FoundImage> {
        let records = self.images.list()?;
        let by_id = |prefix: &str| -> Result<FoundImage> {
            let mut configs: Vec<&Digest> = records
                .iter()
                .map(|r| &r.config)
                .filter(|c| c.digest().starts_with(prefix))
                .collect();
            configs.sort_by_key(|d| d.to_string());
            configs.dedup();
            match configs.as_slice() {
                [] => Err(Error::NoSuchImage(s.to_string())),
                [one] => Ok(self.found(&records, (*one).clone(), None)),
                _ => Err(Error::Usage(format!(
                    "image ID prefix `{s}` is ambiguous: use more of the ID"
                ))),
            }
        };
        if let Some(hex) = s.strip_prefix("sha256:") {
            return by_id(hex);
        }
        if let Ok(name) = s.parse::<Reference>() {
            if let Some(r) = records.iter().find(|r| r.name == name) {
                let mut found = self.found(&records, r.config.clone(), Some(name.clone()));
                found.manifest = r.manifest.clone();
                return Ok(found);
            }
            // `repo@sha256:…` names the image of that repository with that manifest.
            if let Some(d) = name.digest()
                && let Some(r) = records.iter().find(|r| {
                    r.name.registry() == name.registry()
                        && r.name.repository() == name.repository()
                        && r.manifest.to_string() == d
                })
            {
                let mut found = self.found(&records, r.config.clone(), None);
                found.manifest = r.manifest.clone();
                return Ok(found);
            }
        }
        if !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return by_id(&s.to_ascii_lowercase());
        }
        Err(Error::NoSuchImage(s.to_string()))
    }

    fn found(
        &self,
        records: &[ImageRecord],
        config: Digest,
        by_name: Option<Reference>,
    ) -> FoundImage {
        let mine: Vec<ImageRecord> = records
            .iter()
            .filter(|r| r.config == config)
            .cloned()
            .collect();
        FoundImage {
            manifest: mine
                .first()
                .map(|r| r.manifest.clone())
                .unwrap_or_else(|| config.clone()),
            config,
            by_name,
            records: mine,
        }
    }

    /// `docker rmi IMAGE`: by name, removes that name; by ID, removes every name of the image.
    /// An image's last name is kept while a container uses the image, and an ID whose names span
    /// several repositories is refused, unless `force`. Only names go: blobs and layers stay
    /// until `kiln prune`.
    pub fn remove_image(&self, image: &str, force: bool) -> Result<Vec<RmiEvent>> {
        let found = self.find_image(image)?;
        let short = &found.config.digest()[..12];
        let user = self.container_using(&found.config);
        let mut events = Vec::new();
        match &found.by_name {
            Some(name) => {
                let last = found.records.len() == 1;
                if last
                    && !force
                    && let Some(c) = &user
                {
                    return Err(Error::Conflict(format!(
                        "unable to remove repository reference `{image}` (must force) - container {} is using its referenced image {short}",
                        short_str(c)
                    )));
                }
                self.images.remove(name)?;
                events.push(RmiEvent::Untagged(display_name(name)));
                if last {
                    events.push(RmiEvent::Deleted(found.config.clone()));
                }
            }
            None => {
                let mut repos: Vec<(String, String)> = found
                    .records
                    .iter()
                    .map(|r| {
                        (
                            r.name.registry().to_string(),
                            r.name.repository().to_string(),
                        )
                    })
                    .collect();
                repos.dedup();
                if !force && repos.len() > 1 {
                    return Err(Error::Conflict(format!(
                        "unable to delete {short} (must be forced) - image is referenced in multiple repositories"
                    )));
                }
                if !force && let Some(c) = &user {
                    return Err(Error::Conflict(format!(
                        "unable to delete {short} (must be forced) - image is being used by container {}",
                        short_str(c)
                    )));
                }
                for r in &found.records {
                    self.images.remove(&r.name)?;
                    events.push(RmiEvent::Untagged(display_name(&r.name)));
                }
                events.push(RmiEvent::Deleted(found.config.clone()));
            }
        }
        Ok(events)
    }

    /// The first container (under `<root>/containers/<id>/config.json`) whose `image_id` is
    /// `config`.
    fn container_using(&self, config: &Digest) -> Option<String> {
        self.containers_using(config).into_iter().next()
    }

    /// The containers (under `<root>/containers/<id>/config.json`) whose `image_id` is
    /// `config`, by ID. Unreadable entries are skipped: they belong to containers being created
    /// or removed, which hold no claim yet or any more.
    pub(crate) fn containers_using(&self, config: &Digest) -> Vec<String> {
        let dir = self.root.join("containers");
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut ids: Vec<_> = entries.flatten().collect();
        ids.sort_by_key(|e| e.file_name());
        ids.into_iter()
            .filter_map(|e| {
                let bytes = std::fs::read(e.path().join("config.json")).ok()?;
                let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
                (v.get("image_id")?.as_str()? == config.as_ref())
                    .then(|| e.file_name().to_string_lossy().into_owned())
            })
            .collect()
    }

    /// `docker save`: the images, each under the name it was asked by (none when asked by ID).
    pub fn save<W: Write>(&self, images: &[String], format: SaveFormat, out: W) -> Result<W> {
        let mut list: Vec<SaveImage> = Vec::new();
        // Multi-platform names: (where in `list`, the record naming the index).
        let mut indexes = Vec::new();
        for s in images {
            let found = self.find_image(s)?;
            let record = match &found.by_name {
                Some(n) => found.records.iter().find(|r| &r.name == n),
                None => found.records.first(),
            }
            .filter(|r| r.index.is_some())
            .cloned();
            if let Some(record) = record {
                // Both formats carry the index; the docker format's manifest.json also lists
                // this machine's image of it, as `docker save` does.
                indexes.push((list.len(), record));
                list.push(SaveImage {
                    manifest: found.manifest,
                    names: found.by_name.into_iter().collect(),
                });
                continue;
            }
            let names: Vec<Reference> = found.by_name.into_iter().collect();
            match list.iter_mut().find(|i| i.manifest == found.manifest) {
                Some(i) => {
                    for n in names {
                        if !i.names.contains(&n) {
                            i.names.push(n);
                        }
                    }
                }
                None => list.push(SaveImage {
                    manifest: found.manifest,
                    names,
                }),
            }
        }
        // Saved as pushed: gzip layers (compressed once, then reused), the format's media types.
        let opts = kiln_exporter::compress::ExportOpts {
            oci: format == SaveFormat::Oci,
            ..Default::default()
        };
        for (i, image) in list.iter_mut().enumerate() {
            if let Some((_, record)) = indexes.iter().find(|(at, _)| *at == i) {
                // Each platform's image as pushed, under a new index.
                let mut entries = Vec::new();
                let platforms = self.images.platforms(record)?;
                for (platform, manifest) in &platforms {
                    let exported = self.exported_manifest_blocking(manifest, &opts)?;
                    let size = self.content.read(&exported)?.len() as u64;
                    let media_type = kiln_oci::media_type::OCI_MANIFEST.to_string();
                    entries.push((exported, media_type, size, platform));
                }
                image.manifest = self.write_index(&entries)?.0;
                continue;
            }
            image.manifest = self.exported_manifest_blocking(&image.manifest, &opts)?;
        }
        Ok(kiln_exporter::save::write_save_archive(
            &self.content,
            &list,
            format,
            &ArchiveOptions::default(),
            out,
        )?)
    }

    /// `docker load`: stores every image of the archive (this machine's platform where it holds
    /// an index) and names it as the archive does.
    pub fn load<R: Read>(&self, input: R, source: &Path) -> Result<Vec<LoadedImage>> {
        let loaded =
            kiln_exporter::load::load_archive(&self.content, input, source, &Platform::host())?;
        for img in &loaded {
            for name in &img.names {
                self.images.tag(name, &img.manifest)?;
            }
            // Kept without a name, usable by ID, listed as `<none>` (as `docker load` does),
            // unless an image with that ID is named already: the same image to Docker, even when
            // the archive's manifest differs from the stored one (compressed layers).
            if img.names.is_empty() {
                let dangling = kiln_exporter::dangling_name(&img.manifest)
                    .ok_or_else(|| Error::Reference(img.manifest.to_string()))?;
                if self.images.get(&dangling)?.is_none()
                    && !self
                        .images
                        .list()?
                        .iter()
                        .any(|r| r.manifest == img.manifest || r.config == img.config)
                {
                    self.images.tag(&dangling, &img.manifest)?;
                }
            }
        }
        Ok(loaded)
    }

    /// The image's manifest and config, for `history`.
    pub fn image_details(&self, image: &str) -> Result<(FoundImage, ImageDetails)> {
        let found = self.find_image(image)?;
        let details = image_details(&self.content, &found.manifest)?;
        Ok((found, details))
    }
}

/// `busybox:latest` for Docker Hub names, the full name elsewhere, as Docker prints names.
fn display_name(r: &Reference) -> String {
    let (repo, tag) = familiar_name(r);
    match (r.tag(), r.digest()) {
        (Some(_), _) => format!("{repo}:{tag}"),
        (None, Some(d)) => format!("{repo}@{d}"),
        (None, None) => repo,
    }
}

fn short_str(s: &str) -> &str {
    &s[..s.len().min(12)]
}

/// Docker's `reference=` filter: a glob (`*` and `?` stop at `/`) against the familiar
/// `repo:tag`, or against the familiar repository alone.
fn reference_matches(pattern: &str, name: &Reference) -> bool {
    let (repo, tag) = familiar_name(name);
    glob(pattern.as_bytes(), format!("{repo}:{tag}").as_bytes())
        || glob(pattern.as_bytes(), repo.as_bytes())
}

/// Go's `path.Match` without character classes: `*` is any run of non-`/`, `?` one non-`/`.
fn glob(p: &[u8], s: &[u8]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => {
            let mut i = 0;
            loop {
                if glob(rest, &s[i..]) {
                    return true;
                }
                if i == s.len() || s[i] == b'/' {
                    return false;
                }
                i += 1;
            }
        }
        Some((b'?', rest)) => {
            matches!(s.split_first(), Some((c, tail)) if *c != b'/' && glob(rest, tail))
        }
        Some((c, rest)) => matches!(s.split_first(), Some((d, tail)) if c == d && glob(rest, tail)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_globs_match_familiar_names() {
        let r = |s: &str| s.parse::<Reference>().unwrap();
        assert!(reference_matches("busybox", &r("busybox:latest")));
        assert!(reference_matches("busybox:latest", &r("busybox")));
        assert!(reference_matches("busy*", &r("busybox:1.36")));
        assert!(reference_matches("busybox:1.*", &r("busybox:1.36")));
        assert!(!reference_matches("busybox:2*", &r("busybox:1.36")));
        assert!(
            !reference_matches("*", &r("team/app:v1")),
            "`*` stops at `/`"
        );
        assert!(reference_matches("*/*", &r("team/app:v1")));
        assert!(reference_matches(
            "127.0.0.1:5000/a/*:v?",
            &r("127.0.0.1:5000/a/b:v1")
        ));
    }

    #[test]
    fn filters_parse_like_docker() {
        let terms: Vec<String> = [
            "reference=a*",
            "dangling=false",
            "label=x",
            "label=k=v",
            "since=busybox",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let f = ImageFilter::parse(&terms).unwrap();
        assert_eq!(f.references, ["a*"]);
        assert_eq!(f.dangling, Some(false));
        assert_eq!(
            f.labels,
            [
                ("x".to_string(), None),
                ("k".to_string(), Some("v".to_string()))
            ]
        );
        assert_eq!(f.since.as_deref(), Some("busybox"));
        assert!(ImageFilter::parse(&["nope=1".to_string()]).is_err());
        assert!(ImageFilter::parse(&["dangling=maybe".to_string()]).is_err());
        assert!(ImageFilter::parse(&["reference".to_string()]).is_err());
    }
}
