//! Hostile tarballs: nothing may land outside the layer, and nothing half-done stays behind.

use std::fs;
use std::path::Path;

use kiln_oci::media_type;
use kiln_snapshot::{Error, LayerStore};
use tar::{EntryType, Header};

/// Appends an entry with the name and link name written verbatim, bypassing the checks the tar
/// crate's own path setters would apply.
fn raw(b: &mut tar::Builder<Vec<u8>>, kind: EntryType, name: &str, link: &str, data: &[u8]) {
    let mut h = Header::new_gnu();
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
    h.set_entry_type(kind);
    h.set_mode(if kind == EntryType::Directory {
        0o755
    } else {
        0o644
    });
    h.set_size(data.len() as u64);
    h.set_cksum();
    b.append(&h, data).unwrap();
}

fn build(entries: &[(EntryType, &str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (kind, name, link) in entries {
        let data: &[u8] = if *kind == EntryType::Regular {
            b"pwned"
        } else {
            b""
        };
        raw(&mut b, *kind, name, link, data);
    }
    b.into_inner().unwrap()
}

/// Unpacks `tar`, expecting a refusal naming `entry`, and checks the store is left empty.
fn refused(store_root: &Path, tar: &[u8], entry: &str) {
    let store = LayerStore::open(store_root).unwrap();
    let err = store
        .unpack(tar, media_type::OCI_LAYER_TAR, None)
        .unwrap_err();
    assert!(
        matches!(err, Error::BadEntry { ref path, .. } if path == entry),
        "expected refusal of `{entry}`, got {err:?}"
    );
    assert!(err.to_string().contains(entry));
    assert_eq!(
        fs::read_dir(store_root).unwrap().count(),
        0,
        "no layer and no temp dir left"
    );
}

#[test]
fn dotdot_paths_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let tar = build(&[
        (EntryType::Regular, "ok", ""),
        (EntryType::Regular, "../escape", ""),
    ]);
    refused(&store, &tar, "../escape");
    let tar = build(&[(EntryType::Regular, "a/../../../escape", "")]);
    refused(&store, &tar, "a/../../../escape");
    assert!(!store.join("escape").exists());
    assert!(!tmp.path().join("escape").exists());
}

/// A leading `/` names the layer root, as docker's applier reads it: the entry lands inside.
#[test]
fn absolute_paths_land_inside_the_layer() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    let name = format!("{}/x", outside.display());
    fs::create_dir(&outside).unwrap();
    let tar = build(&[
        (EntryType::Regular, &name, ""),
        (EntryType::Regular, "/../../y", ""),
    ]);
    let store = LayerStore::open(&tmp.path().join("store")).unwrap();
    let layer = store
        .unpack(tar.as_slice(), media_type::OCI_LAYER_TAR, None)
        .unwrap();
    let dir = store.dir(&layer);
    assert_eq!(
        fs::read(dir.join(name.trim_start_matches('/'))).unwrap(),
        b"pwned"
    );
    assert_eq!(fs::read(dir.join("y")).unwrap(), b"pwned");
    assert!(!outside.join("x").exists());
    assert!(!Path::new("/y").exists());
}

#[test]
fn writing_through_symlinks_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let target = outside.display().to_string();
    let store = tmp.path().join("store");

    let tar = build(&[
        (EntryType::Symlink, "a", &target),
        (EntryType::Regular, "a/x", ""),
    ]);
    refused(&store, &tar, "a/x");
    let tar = build(&[
        (EntryType::Symlink, "a", &target),
        (EntryType::Directory, "a/sub/", ""),
    ]);
    refused(&store, &tar, "a/sub/");
    // A relative link climbing out, then a deeper write.
    let tar = build(&[
        (EntryType::Directory, "d/", ""),
        (EntryType::Symlink, "d/up", "../../../../../../../.."),
        (EntryType::Regular, "d/up/tmp/x", ""),
    ]);
    refused(&store, &tar, "d/up/tmp/x");
    // Whiteouts go through the same checks.
    let tar = build(&[
        (EntryType::Symlink, "a", &target),
        (EntryType::Regular, "a/.wh.victim", ""),
    ]);
    fs::write(outside.join("victim"), b"keep me").unwrap();
    refused(&store, &tar, "a/.wh.victim");
    assert_eq!(fs::read(outside.join("victim")).unwrap(), b"keep me");
    fs::remove_file(outside.join("victim")).unwrap();

    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
}

#[test]
fn hardlinks_outside_the_layer_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let tar = build(&[(EntryType::Link, "p", "/etc/passwd")]);
    refused(&store, &tar, "p");
    let tar = build(&[(EntryType::Link, "p", "../../etc/passwd")]);
    refused(&store, &tar, "p");
    let tar = build(&[
        (EntryType::Symlink, "s", "/etc"),
        (EntryType::Link, "p", "s/passwd"),
    ]);
    refused(&store, &tar, "p");
    let tar = build(&[(EntryType::Link, "p", "missing")]);
    refused(&store, &tar, "p");
}

#[test]
fn smuggled_overlay_xattrs_are_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let store = LayerStore::open(tmp.path()).unwrap();
    let mut b = tar::Builder::new(Vec::new());
    b.append_pax_extensions([
        ("SCHILY.xattr.trusted.overlay.redirect", &b"/etc"[..]),
        ("SCHILY.xattr.user.fine", &b"yes"[..]),
    ])
    .unwrap();
    raw(&mut b, EntryType::Directory, "d/", "", b"");
    let tar = b.into_inner().unwrap();
    let id = store
        .unpack(&tar[..], media_type::OCI_LAYER_TAR, None)
        .unwrap();
    assert_eq!(
        crate::common::xattrs(&store.dir(&id).join("d")),
        vec![("user.fine".to_string(), b"yes".to_vec())]
    );
}

#[test]
fn later_entries_replace_earlier_ones_without_following_them() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("f"), b"original").unwrap();
    let store = LayerStore::open(&tmp.path().join("store")).unwrap();
    // A symlink to an outside file, then a regular file of the same name: the link is
    // replaced, the outside file untouched.
    let target = outside.join("f").display().to_string();
    let tar = build(&[
        (EntryType::Symlink, "f", &target),
        (EntryType::Regular, "f", ""),
    ]);
    let id = store
        .unpack(&tar[..], media_type::OCI_LAYER_TAR, None)
        .unwrap();
    assert_eq!(fs::read(store.dir(&id).join("f")).unwrap(), b"pwned");
    assert_eq!(fs::read(outside.join("f")).unwrap(), b"original");
}
