//! `ADD special.tar /`: device nodes and fifos in a local archive reach the image as what they
//! are (with their numbers, mode and owner), and a directory entry replaces a file of its path,
//! as BuildKit unpacks such an archive. Checked in a `type=tar` rootfs and in the layer of a
//! `type=oci` image.

use std::collections::BTreeMap;
use std::io::Read;

use crate::support::{Kiln, read_tar};

/// What a tar entry is: (type, mode, device major/minor, uid, gid).
type Seen = (tar::EntryType, u32, Option<(u32, u32)>, u64, u64);

fn special_tar() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut add =
        |kind: tar::EntryType, path: &str, mode: u32, dev: Option<(u32, u32)>, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_uid(1000);
            h.set_gid(2000);
            h.set_mtime(1_000_000);
            h.set_size(data.len() as u64);
            if let Some((major, minor)) = dev {
                h.set_device_major(major).unwrap();
                h.set_device_minor(minor).unwrap();
            }
            b.append_data(&mut h, path, data).unwrap();
        };
    use tar::EntryType::{Char, Directory, Fifo, Regular};
    add(Directory, "dev/", 0o755, None, b"");
    add(Char, "dev/null", 0o620, Some((1, 3)), b"");
    add(Directory, "run/", 0o755, None, b"");
    add(Fifo, "run/fifo", 0o640, None, b"");
    add(Regular, "x", 0o644, None, b"a file first");
    add(Directory, "x/", 0o750, None, b"");
    add(Regular, "x/y", 0o644, None, b"y");
    b.into_inner().unwrap()
}

fn entries(tar_bytes: impl Read) -> BTreeMap<String, Seen> {
    let mut out = BTreeMap::new();
    let mut archive = tar::Archive::new(tar_bytes);
    for e in archive.entries().unwrap() {
        let e = e.unwrap();
        let h = e.header();
        let path = e.path().unwrap().to_string_lossy().into_owned();
        let path = path
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_string();
        let kind = h.entry_type();
        let dev = matches!(kind, tar::EntryType::Char | tar::EntryType::Block).then(|| {
            (
                h.device_major().unwrap().unwrap(),
                h.device_minor().unwrap().unwrap(),
            )
        });
        out.insert(
            path,
            (
                kind,
                h.mode().unwrap() & 0o7777,
                dev,
                h.uid().unwrap(),
                h.gid().unwrap(),
            ),
        );
    }
    out
}

fn check(seen: &BTreeMap<String, Seen>, what: &str) {
    assert_eq!(
        seen.get("dev/null"),
        Some(&(tar::EntryType::Char, 0o620, Some((1, 3)), 1000, 2000)),
        "{what}: {seen:?}"
    );
    assert_eq!(
        seen.get("run/fifo"),
        Some(&(tar::EntryType::Fifo, 0o640, None, 1000, 2000)),
        "{what}: {seen:?}"
    );
    assert_eq!(
        seen.get("x").map(|s| (s.0, s.1)),
        Some((tar::EntryType::Directory, 0o750)),
        "{what}: {seen:?}"
    );
    assert_eq!(
        seen.get("x/y").map(|s| s.0),
        Some(tar::EntryType::Regular),
        "{what}"
    );
}

#[test]
fn add_of_a_local_tar_keeps_devices_and_fifos() {
    let Some(k) = Kiln::new("add_of_a_local_tar_keeps_devices_and_fifos") else {
        return;
    };
    let ctx = k.context(
        "ctx",
        &[("Dockerfile", "FROM scratch\nADD special.tar /\n")],
    );
    std::fs::write(ctx.join("special.tar"), special_tar()).unwrap();

    let rootfs = k.dir().join("rootfs.tar");
    k.build(
        &ctx,
        &["-o", &format!("type=tar,dest={}", rootfs.display())],
    )
    .ok();
    check(&entries(std::fs::File::open(&rootfs).unwrap()), "type=tar");

    let oci = k.dir().join("image.tar");
    k.build(&ctx, &["-o", &format!("type=oci,dest={}", oci.display())])
        .ok();
    let files = read_tar(&oci).unwrap();
    let (manifest, _) = crate::export_oci::layout_image(&files);
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "{manifest}");
    let hex = layers[0]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:");
    let blob = &files[&format!("blobs/sha256/{hex}")];
    let layer = entries(flate2::read::MultiGzDecoder::new(blob.as_slice()));
    check(&layer, "the oci layer");
    k.assert_clean();
}
