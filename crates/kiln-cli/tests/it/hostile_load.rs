//! `kiln load` and `kiln import` of layers that could never be unpacked (`..` paths, links
//! leaving the root, truncated or non-tar data): refused at once, naming the layer and the
//! entry, with nothing of the archive left in the store (no blob, no image, no name).

use std::collections::BTreeSet;
use std::path::Path;

use crate::support::Kiln;

/// A layer tar whose entry names and link names are written verbatim.
fn layer(entries: &[(tar::EntryType, &str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (kind, name, link) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_mode(0o644);
        let data: &[u8] = if *kind == tar::EntryType::Regular {
            b"* * * * * root sh -c pwned\n"
        } else {
            b""
        };
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

/// A `docker save` archive whose only layer, `0123/layer.tar`, is `layer`.
fn docker_archive(layer: &[u8]) -> Vec<u8> {
    kiln_test::docker_save_archive("0123/layer.tar", layer).0
}

fn blobs(root: &Path) -> BTreeSet<String> {
    match std::fs::read_dir(root.join("content/blobs/sha256")) {
        Ok(dir) => dir
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => BTreeSet::new(),
    }
}

fn images(k: &Kiln) -> String {
    k.kiln(&["images", "--format", "{{.Repository}}:{{.Tag}}"])
        .ok()
        .stdout
}

#[test]
fn load_and_import_refuse_layers_that_cannot_be_unpacked() {
    let Some(k) = Kiln::new("load_and_import_refuse_layers_that_cannot_be_unpacked") else {
        return;
    };
    use tar::EntryType::{Link, Regular};
    let honest = layer(&[(Regular, "etc/cron.d/ok", "")]);
    let mut truncated = honest.clone();
    truncated.truncate(520);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "dotdot",
            layer(&[(Regular, "../../etc/cron.d/x", "")]),
            "../../etc/cron.d/x",
        ),
        (
            "hardlink",
            layer(&[(Regular, "f", ""), (Link, "h", "../../../etc/shadow")]),
            "`h`",
        ),
        ("truncated", truncated, "`etc/cron.d/ok`"),
        (
            "garbage",
            b"not a tar at all\n".repeat(64),
            "failed to read layer tar",
        ),
    ];
    let before = blobs(&k.root);
    let listed = images(&k);
    for (what, bytes, entry) in &cases {
        let archive = k.dir().join(format!("{what}.tar"));
        std::fs::write(&archive, docker_archive(bytes)).unwrap();
        let run = k.kiln(&["load", "-i", &archive.to_string_lossy()]).failed();
        let digest = kiln_oci::sha256(bytes).to_string();
        assert!(
            run.stderr.contains(&digest) && run.stderr.contains("0123/layer.tar"),
            "{what}: the layer is named: {}",
            run.stderr
        );
        assert!(run.stderr.contains(entry), "{what}: {}", run.stderr);
        assert_eq!(blobs(&k.root), before, "{what}: no blob kept");
        assert_eq!(images(&k), listed, "{what}: no image named");

        let layer_tar = k.dir().join(format!("{what}-rootfs.tar"));
        std::fs::write(&layer_tar, bytes).unwrap();
        let run = k
            .kiln(&["import", &layer_tar.to_string_lossy(), "imported:1"])
            .failed();
        assert!(
            run.stderr.contains(&*layer_tar.to_string_lossy()),
            "{what}: {}",
            run.stderr
        );
        assert!(run.stderr.contains(entry), "{what}: {}", run.stderr);
        assert_eq!(blobs(&k.root), before, "{what}: import kept no blob");
        assert_eq!(images(&k), listed, "{what}: import named nothing");
    }
    // The same archive with an honest layer loads, and imports.
    let archive = k.dir().join("honest.tar");
    std::fs::write(&archive, docker_archive(&honest)).unwrap();
    k.kiln(&["load", "-i", &archive.to_string_lossy()]).ok();
    assert!(images(&k).contains("hostile:1"), "{}", images(&k));
    let rootfs = k.dir().join("honest-rootfs.tar");
    std::fs::write(&rootfs, &honest).unwrap();
    k.kiln(&["import", &rootfs.to_string_lossy(), "imported:1"])
        .ok();
    assert!(images(&k).contains("imported:1"));
    k.assert_clean();
}
