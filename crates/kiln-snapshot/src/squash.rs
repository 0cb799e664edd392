//! `--squash`: several layer tars, bottom first, merged into one layer tar that applied on the
//! same base gives the same tree. An entry is kept from the highest layer that has its path;
//! what a higher layer deletes (a whiteout), makes opaque or replaces with a non-directory
//! hides what lower layers have under it; whiteouts and opaque markers are kept, since they
//! act on the base below. A lower whiteout of a path a higher layer makes a directory again
//! becomes an opaque marker on it, so the base's contents stay deleted.
//!
//! Two passes: headers only, top layer first, to decide; then the kept entries, bottom layer
//! first and in each layer's order, so parents and hard-link targets come before what needs
//! them.

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

use tar::EntryType;

use crate::entry::{OPAQUE_MARKER, WHITEOUT_PREFIX};
use crate::{Error, Result};

/// What the second pass does with one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Decision {
    Keep,
    Skip,
    /// Write an opaque marker in this directory instead (a whiteout of a path a higher layer
    /// re-creates as a directory).
    OpaqueIn(PathBuf),
}

/// What an entry is, as the first pass needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Whiteout { target: PathBuf },
    Opaque { dir: PathBuf },
    Dir,
    Other,
}

/// A layer path without `./`, trailing slashes or empty components.
fn clean(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect()
}

fn kind(path: &Path, entry_type: EntryType) -> Kind {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let parent = path.parent().map(Path::to_path_buf).unwrap_or_default();
    if name == OPAQUE_MARKER {
        Kind::Opaque { dir: parent }
    } else if let Some(target) = name.strip_prefix(WHITEOUT_PREFIX) {
        Kind::Whiteout {
            target: parent.join(target),
        }
    } else if entry_type == EntryType::Directory {
        Kind::Dir
    } else {
        Kind::Other
    }
}

/// Decisions for every entry of every layer (bottom first), from `kinds[layer][entry]`.
fn decide(kinds: &[Vec<(PathBuf, Kind)>]) -> Vec<Vec<Decision>> {
    // Paths kept from higher layers (true: a directory), deleted ones, opaque directories.
    let mut seen: HashMap<PathBuf, bool> = HashMap::new();
    let mut deleted: HashSet<PathBuf> = HashSet::new();
    let mut opaque: HashSet<PathBuf> = HashSet::new();
    // Whether a higher layer hides `p`: deleted it or an ancestor, replaced an ancestor with a
    // non-directory, or made an ancestor (the root included) opaque.
    let hidden = |p: &Path,
                  seen: &HashMap<PathBuf, bool>,
                  deleted: &HashSet<PathBuf>,
                  opaque: &HashSet<PathBuf>| {
        deleted.contains(p)
            || p.ancestors().skip(1).any(|a| {
                opaque.contains(a)
                    || !a.as_os_str().is_empty()
                        && (deleted.contains(a) || seen.get(a) == Some(&false))
            })
    };
    let mut out: Vec<Vec<Decision>> = kinds
        .iter()
        .map(|l| vec![Decision::Skip; l.len()])
        .collect();
    for (layer, entries) in kinds.iter().enumerate().rev() {
        // Within a layer, its own whiteouts and markers act on lower layers only.
        let mut layer_deleted = Vec::new();
        let mut layer_opaque = Vec::new();
        for (i, (path, k)) in entries.iter().enumerate() {
            out[layer][i] = match k {
                Kind::Whiteout { target } => {
                    if hidden(target, &seen, &deleted, &opaque) {
                        Decision::Skip
                    } else {
                        match seen.get(target) {
                            Some(true) if !opaque.contains(target) => {
                                layer_opaque.push(target.clone());
                                Decision::OpaqueIn(target.clone())
                            }
                            Some(_) => Decision::Skip,
                            None => {
                                layer_deleted.push(target.clone());
                                Decision::Keep
                            }
                        }
                    }
                }
                Kind::Opaque { dir } => {
                    if hidden(path, &seen, &deleted, &opaque) || opaque.contains(dir) {
                        Decision::Skip
                    } else {
                        layer_opaque.push(dir.clone());
                        Decision::Keep
                    }
                }
                Kind::Dir | Kind::Other => {
                    if seen.contains_key(path) || hidden(path, &seen, &deleted, &opaque) {
                        Decision::Skip
                    } else {
                        Decision::Keep
                    }
                }
            };
        }
        for (i, (path, k)) in entries.iter().enumerate() {
            if out[layer][i] == Decision::Keep && matches!(k, Kind::Dir | Kind::Other) {
                seen.insert(path.clone(), *k == Kind::Dir);
            }
        }
        deleted.extend(layer_deleted);
        opaque.extend(layer_opaque);
    }
    out
}

fn read_err(source: io::Error) -> Error {
    Error::ReadTar { source }
}

fn write_err(path: &Path) -> impl Fn(io::Error) -> Error + '_ {
    move |source| Error::Diff {
        path: path.to_path_buf(),
        source,
    }
}

/// Merges the layer tars `open(0..count)` (bottom first, each opened twice) into one layer tar
/// written to `out`, which is returned once the archive is finished.
pub fn squash_layers<R: Read, W: Write>(
    count: usize,
    mut open: impl FnMut(usize) -> Result<R>,
    out: W,
) -> Result<W> {
    let mut kinds = Vec::with_capacity(count);
    for layer in 0..count {
        let mut archive = tar::Archive::new(open(layer)?);
        let mut entries = Vec::new();
        for entry in archive.entries().map_err(read_err)? {
            let entry = entry.map_err(read_err)?;
            let path = clean(&entry.path().map_err(read_err)?);
            let k = kind(&path, entry.header().entry_type());
            entries.push((path, k));
        }
        kinds.push(entries);
    }
    let decisions = decide(&kinds);

    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    for (layer, decided) in decisions.iter().enumerate() {
        let mut archive = tar::Archive::new(open(layer)?);
        for (entry, decision) in archive.entries().map_err(read_err)?.zip(decided) {
            let mut entry = entry.map_err(read_err)?;
            let path = clean(&entry.path().map_err(read_err)?);
            match decision {
                Decision::Skip => {}
                Decision::OpaqueIn(dir) => {
                    let marker = dir.join(OPAQUE_MARKER);
                    let mut header = entry.header().clone();
                    header.set_entry_type(EntryType::Regular);
                    header.set_size(0);
                    builder
                        .append_data(&mut header, &marker, io::empty())
                        .map_err(write_err(&marker))?;
                }
                Decision::Keep => copy_entry(&mut builder, &mut entry, &path)?,
            }
        }
    }
    builder.into_inner().map_err(write_err(Path::new("")))
}

/// Writes `entry` at `path` with its header, extended attributes and data.
fn copy_entry<R: Read, W: Write>(
    builder: &mut tar::Builder<W>,
    entry: &mut tar::Entry<'_, R>,
    path: &Path,
) -> Result<()> {
    let err = write_err(path);
    let mut xattrs: Vec<(String, Vec<u8>)> = Vec::new();
    if let Some(pax) = entry.pax_extensions().map_err(read_err)? {
        for ext in pax {
            let ext = ext.map_err(read_err)?;
            if let Ok(key) = ext.key()
                && (key.starts_with("SCHILY.xattr.") || key.starts_with("LIBARCHIVE.xattr."))
            {
                xattrs.push((key.to_string(), ext.value_bytes().to_vec()));
            }
        }
    }
    if !xattrs.is_empty() {
        builder
            .append_pax_extensions(xattrs.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
            .map_err(&err)?;
    }
    let mut header = entry.header().clone();
    let entry_type = header.entry_type();
    if matches!(entry_type, EntryType::Symlink | EntryType::Link) {
        let target = entry
            .link_name()
            .map_err(read_err)?
            .map(|t| t.into_owned())
            .unwrap_or_default();
        let target = if entry_type == EntryType::Link {
            clean(&target)
        } else {
            target
        };
        builder
            .append_link(&mut header, path, target)
            .map_err(&err)?;
    } else {
        builder
            .append_data(&mut header, path, entry)
            .map_err(&err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(entries: &[(&str, Kind)]) -> Vec<(PathBuf, Kind)> {
        entries
            .iter()
            .map(|(p, k)| (PathBuf::from(p), k.clone()))
            .collect()
    }

    fn wh(target: &str) -> (String, Kind) {
        let t = Path::new(target);
        let name = format!(
            "{}{}",
            WHITEOUT_PREFIX,
            t.file_name().unwrap().to_str().unwrap()
        );
        (
            t.with_file_name(name).to_string_lossy().into_owned(),
            Kind::Whiteout {
                target: t.to_path_buf(),
            },
        )
    }

    #[test]
    fn the_highest_layer_wins_and_deletions_hide_lower_entries() {
        let (wh_a, wh_a_kind) = wh("etc/a");
        let lower = k(&[
            ("etc", Kind::Dir),
            ("etc/a", Kind::Other),
            ("etc/b", Kind::Other),
            ("tmp", Kind::Dir),
            ("tmp/x", Kind::Other),
        ]);
        let upper = k(&[
            ("etc", Kind::Dir),
            (wh_a.as_str(), wh_a_kind),
            ("etc/b", Kind::Other),
            ("tmp", Kind::Other),
        ]);
        let d = decide(&[lower, upper]);
        use Decision::*;
        // Lower: etc (shadowed), etc/a (deleted), etc/b (replaced), tmp, tmp/x (tmp is a file).
        assert_eq!(d[0], [Skip, Skip, Skip, Skip, Skip]);
        // Upper: the whiteout stays for the base's etc/a.
        assert_eq!(d[1], [Keep, Keep, Keep, Keep]);
    }

    #[test]
    fn a_recreated_directory_becomes_opaque() {
        let (wh_d, wh_d_kind) = wh("d");
        let lower = k(&[(wh_d.as_str(), wh_d_kind)]);
        let upper = k(&[("d", Kind::Dir), ("d/new", Kind::Other)]);
        let d = decide(&[lower, upper]);
        assert_eq!(d[0], [Decision::OpaqueIn(PathBuf::from("d"))]);
        assert_eq!(d[1], [Decision::Keep, Decision::Keep]);
    }

    #[test]
    fn an_opaque_directory_hides_lower_children() {
        let lower = k(&[("d", Kind::Dir), ("d/old", Kind::Other), ("e", Kind::Other)]);
        let upper = k(&[
            ("d", Kind::Dir),
            ("d/.wh..wh..opq", Kind::Opaque { dir: "d".into() }),
            ("d/new", Kind::Other),
        ]);
        let d = decide(&[lower, upper]);
        use Decision::*;
        assert_eq!(d[0], [Skip, Skip, Keep]);
        assert_eq!(d[1], [Keep, Keep, Keep]);
    }

    #[test]
    fn merged_tar_applies_like_the_layers() {
        fn layer(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
            let mut b = tar::Builder::new(Vec::new());
            build(&mut b);
            b.into_inner().unwrap()
        }
        fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, path, data).unwrap();
        }
        let l1 = layer(|b| {
            file(b, "a", b"one");
            file(b, "gone", b"x");
        });
        let l2 = layer(|b| {
            file(b, "a", b"two");
            file(b, ".wh.gone", b"");
            file(b, ".wh.base", b"");
        });
        let layers = [l1, l2];
        let out = squash_layers(2, |i| Ok(layers[i].as_slice()), Vec::new()).unwrap();
        let mut names = Vec::new();
        let mut archive = tar::Archive::new(out.as_slice());
        for e in archive.entries().unwrap() {
            let mut e = e.unwrap();
            let mut data = String::new();
            e.read_to_string(&mut data).unwrap();
            names.push(format!("{}={data}", e.path().unwrap().display()));
        }
        assert_eq!(names, ["a=two", ".wh.gone=", ".wh.base="]);
    }
}
