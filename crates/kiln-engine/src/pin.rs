//! `kiln build --pin FILE`: the digests a build's image references resolve to, kept in a JSON
//! file so later builds use exactly those images whatever their tags point at now.
//!
//! ```json
//! {
//!   "images": {
//!     "docker.io/library/busybox:latest": { "linux/amd64": "sha256:…" }
//!   }
//! }
//! ```
//!
//! A reference (and platform) listed is resolved to that manifest digest; one the file lacks is
//! resolved as usual and added, and the file is rewritten after a successful build. References
//! written with a digest are pinned already and are not listed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kiln_oci::{Digest, Platform, Reference};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PinFile {
    /// Reference (full form, `registry/repository:tag`) → platform → image manifest digest.
    images: BTreeMap<String, BTreeMap<String, Digest>>,
}

/// The pins of one build: what the file said, and what the build added.
#[derive(Debug)]
pub(crate) struct Pins {
    path: PathBuf,
    file: PinFile,
    /// As read, to write the file only when something was added.
    read: Option<PinFile>,
}

impl Pins {
    /// Reads `path`; a missing file is an empty one (written after the build).
    pub(crate) fn load(path: &Path) -> Result<Pins> {
        let read = match std::fs::read(path) {
            Ok(bytes) => Some(serde_json::from_slice::<PinFile>(&bytes).map_err(|e| {
                Error::Usage(format!(
                    "--pin file `{}` is not a kiln pin file: {e} (expected {{\"images\": \
                     {{\"REFERENCE\": {{\"OS/ARCH\": \"sha256:…\"}}}}}})",
                    path.display()
                ))
            })?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(crate::io(format!(
                    "reading --pin file `{}`",
                    path.display()
                ))(e));
            }
        };
        Ok(Pins {
            path: path.to_path_buf(),
            file: read.clone().unwrap_or_default(),
            read,
        })
    }

    /// The digest `reference` is pinned to for `platform`, if the file lists it.
    pub(crate) fn get(&self, reference: &Reference, platform: &Platform) -> Option<Digest> {
        self.file
            .images
            .get(&reference.whole())?
            .get(&platform.to_string())
            .cloned()
    }

    /// Records what a reference without a digest resolved to, unless already pinned.
    pub(crate) fn add(&mut self, reference: &Reference, platform: &Platform, digest: &Digest) {
        if reference.digest().is_some() {
            return;
        }
        self.file
            .images
            .entry(reference.whole())
            .or_default()
            .entry(platform.to_string())
            .or_insert_with(|| digest.clone());
    }

    /// Writes the file if the build added a pin (or it did not exist).
    pub(crate) fn save(&self) -> Result<()> {
        if self.read.as_ref() == Some(&self.file) {
            return Ok(());
        }
        let mut bytes = serde_json::to_vec_pretty(&self.file).expect("pins serialise");
        bytes.push(b'\n');
        crate::write_file_atomically(&self.path, |w| {
            w.write_all(&bytes)
                .map_err(crate::io(format!("writing `{}`", self.path.display())))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_are_read_added_and_written_only_when_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pins.json");
        let amd = Platform::new("linux", "amd64", None);
        let arm = Platform::new("linux", "arm64", None);
        let busybox: Reference = "busybox".parse().unwrap();
        let (one, two) = (kiln_oci::sha256(b"1"), kiln_oci::sha256(b"2"));

        let mut pins = Pins::load(&path).unwrap();
        assert_eq!(pins.get(&busybox, &amd), None);
        pins.add(&busybox, &amd, &one);
        // A reference with a digest pins itself.
        pins.add(&busybox.with_digest(two.as_ref()), &amd, &two);
        pins.save().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            format!(
                "{{\n  \"images\": {{\n    \"docker.io/library/busybox:latest\": {{\n      \"linux/amd64\": \"{one}\"\n    }}\n  }}\n}}\n"
            )
        );

        let mut pins = Pins::load(&path).unwrap();
        assert_eq!(pins.get(&busybox, &amd), Some(one.clone()));
        // A moved tag does not replace a pin; another platform is added.
        pins.add(&busybox, &amd, &two);
        pins.add(&busybox, &arm, &two);
        assert_eq!(pins.get(&busybox, &amd), Some(one.clone()));
        pins.save().unwrap();
        let pins = Pins::load(&path).unwrap();
        assert_eq!(pins.get(&busybox, &arm), Some(two));

        std::fs::write(&path, "{\"images\": {\"x\": \"y\"}}").unwrap();
        let err = Pins::load(&path).unwrap_err().to_string();
        assert!(err.contains("is not a kiln pin file"), "{err}");
    }
}
