//! Checking a layer tarball without unpacking it: everything [`crate::apply`] would refuse is
//! refused here, on the way in (`kiln load`, `kiln import`), rather than on first use.
//!
//! Entries are read with the same [`entry::parse`] as the applier (paths cleaned and kept
//! below the root, link targets, header fields, entry types, whiteout names), and the tree
//! the applier would build is tracked by path and kind only, so the structural refusals agree
//! too: an entry below a symlink or below a non-directory, a hardlink to something not (or no
//! longer) in the layer or to a directory, and data cut short by the end of the stream.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{self, Read};

use crate::entry::{self, Kind};
use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Node {
    Dir,
    Symlink,
    /// Files, device nodes, fifos and whiteouts.
    Other,
}

/// Reads the tar stream `reader` to its end-of-archive marker (or its end), checking that the
/// layer applier would unpack every entry. The caller drains what follows the marker.
pub fn check_layer_tar(reader: impl Read) -> Result<()> {
    let mut tree = Tree::default();
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().map_err(read_tar)? {
        let mut entry = entry.map_err(read_tar)?;
        let parsed = entry::parse(&mut entry, true)?;
        let declared = entry.size();
        let read = io::copy(&mut entry, &mut io::sink()).map_err(read_tar)?;
        let bad = |reason: &str| Error::BadEntry {
            path: parsed.shown.clone(),
            reason: reason.to_string(),
        };
        if read != declared {
            return Err(bad(&format!(
                "its header declares {declared} bytes, the archive ends after {read}"
            )));
        }
        tree.add(&parsed.comps, &parsed.kind).map_err(bad)?;
    }
    Ok(())
}

fn read_tar(source: io::Error) -> Error {
    Error::ReadTar { source }
}

/// The kinds of the paths the layer has made so far.
#[derive(Default)]
struct Tree {
    nodes: BTreeMap<Vec<OsString>, Node>,
}

impl Tree {
    fn add(&mut self, comps: &[OsString], kind: &Kind) -> std::result::Result<(), &'static str> {
        let Some((_, parent)) = comps.split_last() else {
            // The root: a directory or an opaque marker (anything else `parse` refused).
            return Ok(());
        };
        match kind {
            Kind::Skip => Ok(()),
            Kind::Opaque => self.walk(comps, true),
            Kind::Dir => {
                self.walk(parent, true)?;
                if self.nodes.get(comps) != Some(&Node::Dir) {
                    self.replace(comps, Node::Dir);
                }
                Ok(())
            }
            Kind::File | Kind::Node { .. } | Kind::Whiteout => {
                self.walk(parent, true)?;
                self.replace(comps, Node::Other);
                Ok(())
            }
            Kind::Symlink(_) => {
                self.walk(parent, true)?;
                self.replace(comps, Node::Symlink);
                Ok(())
            }
            Kind::Hardlink(target) => {
                let Some((_, target_parent)) = target.split_last() else {
                    return Err("hardlink to the layer root");
                };
                self.walk(target_parent, false)?;
                match self.nodes.get(target.as_slice()) {
                    None => return Err(NOT_IN_LAYER),
                    Some(Node::Dir) => return Err("hardlink target is a directory"),
                    Some(_) => {}
                }
                self.walk(parent, true)?;
                // The applier clears the entry's path before linking: a target below it goes.
                if target.starts_with(comps) {
                    return Err(NOT_IN_LAYER);
                }
                self.replace(comps, Node::Other);
                Ok(())
            }
        }
    }

    /// Follows `dirs` from the root as the applier opens them: never through a symlink or a
    /// non-directory; missing ones are made when `create`.
    fn walk(&mut self, dirs: &[OsString], create: bool) -> std::result::Result<(), &'static str> {
        for i in 1..=dirs.len() {
            match self.nodes.get(&dirs[..i]) {
                Some(Node::Dir) => {}
                Some(Node::Symlink) => return Err("its path goes through a symlink"),
                Some(Node::Other) => return Err("a parent in its path is not a directory"),
                None if create => {
                    self.nodes.insert(dirs[..i].to_vec(), Node::Dir);
                }
                None => return Err(NOT_IN_LAYER),
            }
        }
        Ok(())
    }

    /// Puts `node` at `path`, dropping whatever was there and below it.
    fn replace(&mut self, path: &[OsString], node: Node) {
        let below: Vec<Vec<OsString>> = self
            .nodes
            .range(path.to_vec()..)
            .take_while(|(k, _)| k.starts_with(path))
            .map(|(k, _)| k.clone())
            .collect();
        for k in below {
            self.nodes.remove(&k);
        }
        self.nodes.insert(path.to_vec(), node);
    }
}

const NOT_IN_LAYER: &str = "hardlink target is not in the layer";

#[cfg(test)]
mod tests {
    use super::*;
    use tar::{EntryType, Header};

    /// Appends one entry with a raw name (the tar crate's own setters refuse `..`).
    fn entry(b: &mut tar::Builder<Vec<u8>>, kind: EntryType, name: &str, link: &str, data: &[u8]) {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        let raw = &mut h.as_old_mut().name;
        raw[..name.len()].copy_from_slice(name.as_bytes());
        if !link.is_empty() {
            let raw = &mut h.as_old_mut().linkname;
            raw[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    /// An entry: its type, name and link name.
    type Spec<'a> = (EntryType, &'a str, &'a str);

    fn layer(entries: &[Spec]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (kind, name, link) in entries {
            let data: &[u8] = if *kind == EntryType::Regular {
                b"data"
            } else {
                b""
            };
            entry(&mut b, *kind, name, link, data);
        }
        b.into_inner().unwrap()
    }

    fn refused(bytes: &[u8]) -> String {
        match check_layer_tar(bytes) {
            Ok(()) => "accepted".to_string(),
            Err(Error::BadEntry { path, reason }) => format!("{path}: {reason}"),
            Err(e @ Error::ReadTar { .. }) => e.to_string(),
            Err(e) => panic!("unexpected error {e:?}"),
        }
    }

    /// The entry the applier refuses when unpacking `bytes`, if any: the checker must agree.
    fn apply_refuses(bytes: &[u8]) -> Option<String> {
        let dir = tempfile::tempdir().unwrap();
        match crate::apply::apply_with(
            bytes,
            dir.path(),
            crate::apply::Options {
                owners: false,
                ..crate::apply::Options::LAYER
            },
        ) {
            Ok(()) => None,
            Err(Error::BadEntry { path, .. } | Error::Extract { path, .. }) => Some(path),
            Err(e) => Some(e.to_string()),
        }
    }

    use EntryType::{Directory as D, Link as H, Regular as F, Symlink as S};

    #[test]
    fn honest_layers_pass() {
        let bytes = layer(&[
            (D, "./", ""),
            (D, "etc/", ""),
            (F, "etc/passwd", ""),
            (H, "etc/passwd-", "etc/passwd"),
            // Absolute symlink targets are ordinary in images.
            (S, "etc/localtime", "/usr/share/zoneinfo/UTC"),
            (S, "lib", "usr/lib"),
            (F, "/abs", ""),
            (F, "a/../b", ""),
            (F, "x", ""),
            // A directory replacing a file, then a child in it.
            (D, "x/", ""),
            (F, "x/y", ""),
            (F, "dir/.wh.gone", ""),
            (F, "dir/.wh..wh..opq", ""),
            (EntryType::Char, "dev/null", ""),
            (EntryType::Fifo, "run/fifo", ""),
        ]);
        assert_eq!(refused(&bytes), "accepted");
        assert_eq!(apply_refuses(&bytes), None);
        // No entries at all is an empty layer.
        assert_eq!(refused(&[0u8; 1024]), "accepted");
        assert_eq!(refused(b""), "accepted");
    }

    #[test]
    fn each_hostile_case_is_refused_with_its_entry() {
        let cases: &[(&[Spec], &str)] = &[
            (
                &[(F, "../x", "")],
                "../x: path leaves the root through `..`",
            ),
            (
                &[(F, "a/../../etc/x", "")],
                "a/../../etc/x: path leaves the root through `..`",
            ),
            (
                &[(F, "f", ""), (H, "h", "../f")],
                "h: hardlink target: path leaves the root through `..`",
            ),
            (
                &[(H, "h", "/etc/shadow")],
                "h: hardlink target is not in the layer",
            ),
            (&[(H, "h", "./")], "h: hardlink to the layer root"),
            (
                &[(D, "d", ""), (H, "h", "d")],
                "h: hardlink target is a directory",
            ),
            (
                &[(F, "a/f", ""), (H, "a", "a/f")],
                "a: hardlink target is not in the layer",
            ),
            (
                &[(S, "link", "/etc"), (F, "link/passwd", "")],
                "link/passwd: its path goes through a symlink",
            ),
            (
                &[(F, "x", ""), (F, "x/y", "")],
                "x/y: a parent in its path is not a directory",
            ),
            (&[(S, "s", "")], "s: symlink without a target"),
            (
                &[(F, "./", "")],
                "./: the layer root can only be a directory",
            ),
            (&[(F, "d/.wh.", "")], "d/.wh.: whiteout names no file"),
            (
                &[(EntryType::new(b'Z'), "odd", "")],
                "odd: unsupported entry type `Z`",
            ),
        ];
        for (entries, expected) in cases {
            let bytes = layer(entries);
            assert_eq!(refused(&bytes), *expected, "{entries:?}");
            let entry = expected.split(": ").next().unwrap();
            assert_eq!(apply_refuses(&bytes).as_deref(), Some(entry), "{entries:?}");
        }
    }

    #[test]
    fn truncated_and_non_tar_data_is_refused() {
        let whole = layer(&[(F, "f", "")]);
        // The header declares 4 bytes; the stream stops after 2 of them.
        assert_eq!(
            refused(&whole[..514]),
            "f: its header declares 4 bytes, the archive ends after 2"
        );
        // A header whose size field is far beyond anything that follows.
        let mut h = Header::new_gnu();
        h.set_size(1 << 40);
        h.set_path("big").unwrap();
        h.set_cksum();
        let mut huge = h.as_bytes().to_vec();
        huge.extend_from_slice(&[7u8; 600]);
        assert_eq!(
            refused(&huge),
            "big: its header declares 1099511627776 bytes, the archive ends after 600"
        );
        assert_eq!(
            refused(&b"{\"not\": \"a tar\"}".repeat(64)),
            "failed to read layer tar"
        );
        // Cut inside a header block.
        assert_eq!(refused(&whole[..100]), "failed to read layer tar");
    }
}
