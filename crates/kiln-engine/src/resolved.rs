//! What each image reference resolved to last, per platform (`<root>/resolved/`): written on
//! every registry lookup of a build, read by `kiln build --offline` when the name is not in the
//! local image store, so a base image a build used before is found without the network.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use kiln_oci::{Digest, Platform, Reference};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    reference: String,
    platform: String,
    /// The platform's image manifest (never an index).
    manifest: Digest,
}

pub(crate) struct ResolvedRecords {
    dir: PathBuf,
}

impl ResolvedRecords {
    pub(crate) fn new(root: &Path) -> Self {
        Self {
            dir: root.join("resolved"),
        }
    }

    fn path(&self, reference: &Reference, platform: &Platform) -> PathBuf {
        let id = kiln_oci::sha256(format!("{}\0{platform}", reference.whole()).as_bytes());
        self.dir.join(format!("{}.json", id.digest()))
    }

    /// The manifest `reference` resolved to for `platform` last time, if ever.
    pub(crate) fn get(&self, reference: &Reference, platform: &Platform) -> Option<Digest> {
        let bytes = fs::read(self.path(reference, platform)).ok()?;
        let r: Record = serde_json::from_slice(&bytes).ok()?;
        (r.reference == reference.whole()).then_some(r.manifest)
    }

    /// Remembers a lookup; failing costs only an offline build that cannot find it.
    pub(crate) fn put(&self, reference: &Reference, platform: &Platform, manifest: &Digest) {
        let record = Record {
            reference: reference.whole(),
            platform: platform.to_string(),
            manifest: manifest.clone(),
        };
        let path = self.path(reference, platform);
        let tmp = self
            .dir
            .join(format!(".tmp-{:016x}", rand::random::<u64>()));
        let write = || -> std::io::Result<()> {
            fs::create_dir_all(&self.dir)?;
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec(&record)?)?;
            fs::rename(&tmp, &path)
        };
        if write().is_err() {
            let _ = fs::remove_file(&tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lookup_is_kept_per_reference_and_platform() {
        let dir = tempfile::tempdir().unwrap();
        let records = ResolvedRecords::new(dir.path());
        let r: Reference = "busybox:1".parse().unwrap();
        let amd = Platform::new("linux", "amd64", None);
        let arm = Platform::new("linux", "arm64", None);
        let d = kiln_oci::sha256(b"m");
        assert_eq!(records.get(&r, &amd), None);
        records.put(&r, &amd, &d);
        assert_eq!(records.get(&r, &amd), Some(d.clone()));
        assert_eq!(records.get(&r, &arm), None);
        assert_eq!(records.get(&"busybox:2".parse().unwrap(), &amd), None);
    }
}
