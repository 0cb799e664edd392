use std::io::Write;
use std::os::unix::fs::MetadataExt;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::*;

fn digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

fn header(path: &str, kind: tar::EntryType, mode: u32, mtime: u64, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_path(path).unwrap();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(mtime);
    h.set_size(size);
    h
}

/// Appends `h` (checksummed) and `data`.
fn put<W: Write>(b: &mut tar::Builder<W>, mut h: tar::Header, data: &[u8]) {
    h.set_cksum();
    b.append(&h, data).unwrap();
}

const OLD: u64 = 1_609_459_200;
const NEW: u64 = 1_800_000_000;

/// A layer with a directory, files (one setuid, one with an xattr), a hard link, a symlink, a
/// whiteout and an opaque directory.
fn first_layer() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = header("./etc/", tar::EntryType::Directory, 0o755, OLD, 0);
    put(&mut b, h.clone(), &[]);
    h = header("./etc/a", tar::EntryType::Regular, 0o644, NEW, 5);
    h.set_uid(1000);
    h.set_gid(50);
    put(&mut b, h.clone(), &b"hello"[..]);
    h = header("./etc/b", tar::EntryType::Link, 0o644, NEW, 0);
    h.set_link_name("./etc/a").unwrap();
    put(&mut b, h.clone(), &[][..]);
    h = header("etc/c", tar::EntryType::Symlink, 0o777, OLD, 0);
    h.set_link_name("a").unwrap();
    put(&mut b, h.clone(), &[][..]);
    // PAX extensions apply to the next entry.
    b.append_pax_extensions([("SCHILY.xattr.user.k", &b"v"[..])])
        .unwrap();
    h = header("bin/su", tar::EntryType::Regular, 0o4755, OLD, 2);
    put(&mut b, h.clone(), &b"su"[..]);
    h = header("bin/x", tar::EntryType::Regular, 0o755, OLD, 0);
    put(&mut b, h.clone(), &[][..]);
    h = header("etc/.wh.old", tar::EntryType::Regular, 0o600, NEW, 0);
    put(&mut b, h.clone(), &[][..]);
    h = header("var/.wh..wh..opq", tar::EntryType::Regular, 0o600, NEW, 0);
    put(&mut b, h.clone(), &[][..]);
    h = header(".wh.top", tar::EntryType::Regular, 0o600, NEW, 0);
    put(&mut b, h.clone(), &[][..]);
    b.into_inner().unwrap()
}

fn second_layer() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let h = header("dev/fifo", tar::EntryType::Fifo, 0o644, OLD, 0);
    put(&mut b, h.clone(), &[][..]);
    let mut h = header("dev/null", tar::EntryType::Char, 0o666, OLD, 0);
    h.set_device_major(1).unwrap();
    h.set_device_minor(3).unwrap();
    put(&mut b, h.clone(), &[][..]);
    b.into_inner().unwrap()
}

/// gzip as two members, as kiln writes it.
fn gzip_two_members(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for half in [&data[..data.len() / 2], &data[data.len() / 2..]] {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(half).unwrap();
        out.extend(e.finish().unwrap());
    }
    out
}

/// An OCI archive of an image on `busybox:latest` (one base layer, two history entries) with
/// the two layers above, and its Bases.
fn archive(dir: &std::path::Path) -> (std::path::PathBuf, Bases) {
    let base = b"base layer bytes".to_vec();
    let l1 = first_layer();
    let l2 = second_layer();
    let l1_blob = gzip_two_members(&l1);
    let l2_blob = zstd::encode_all(&l2[..], 3).unwrap();
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"], "Entrypoint": null, "User": "1000"},
        "rootfs": {"type": "layers", "diff_ids": [digest(&base), digest(&l1), digest(&l2)]},
        "history": [
            {"created_by": "import"},
            {"created_by": "CMD [\"sh\"]", "empty_layer": true},
            {"created_by": "COPY . /", "comment": "buildkit.dockerfile.v0"},
            {"created_by": "USER 1000", "empty_layer": true},
            {"created_by": "RUN mknod"},
        ],
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "config": {"digest": digest(&config), "size": config.len()},
        "layers": [
            {"digest": digest(&base), "size": base.len()},
            {"digest": digest(&l1_blob), "size": l1_blob.len()},
            {"digest": digest(&l2_blob), "size": l2_blob.len()},
        ],
    }))
    .unwrap();
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{"digest": digest(&manifest), "size": manifest.len()}],
    }))
    .unwrap();
    let path = dir.join("image.tar");
    let mut b = tar::Builder::new(std::fs::File::create(&path).unwrap());
    for data in [&base, &l1_blob, &l2_blob, &config, &manifest] {
        let name = format!("blobs/sha256/{}", &digest(data)[7..]);
        let h = header(&name, tar::EntryType::Regular, 0o444, 0, data.len() as u64);
        put(&mut b, h.clone(), &data[..]);
    }
    let h = header(
        "index.json",
        tar::EntryType::Regular,
        0o644,
        0,
        index.len() as u64,
    );
    put(&mut b, h.clone(), &index[..]);
    b.finish().unwrap();
    let bases = Bases::new(vec![BaseImage {
        name: "busybox:latest".into(),
        diff_ids: vec![digest(&base)],
        history_len: 2,
    }]);
    (path, bases)
}

#[test]
fn canonical_form_of_an_archive() {
    let dir = tempfile::tempdir().unwrap();
    let (path, bases) = archive(dir.path());
    let got = canonicalize(&path, &bases).unwrap();
    let want = json!({
        "config": {"Cmd": ["sh"], "Env": ["PATH=/bin"], "User": "1000",
                   "architecture": "amd64", "os": "linux"},
        "history": [
            {"created_by": "COPY . /", "comment": "buildkit.dockerfile.v0", "empty_layer": false},
            {"created_by": "USER 1000", "empty_layer": true},
            {"created_by": "RUN mknod", "empty_layer": false},
        ],
        "layers": [
            "base:busybox:latest",
            [
                {"path": "bin/su", "type": "file", "mode": "4755", "uid": 0, "gid": 0,
                 "mtime": OLD, "size": 2, "sha256": hex::encode(Sha256::digest(b"su")),
                 "xattrs": {"user.k": "v"}},
                {"path": "bin/x", "type": "file", "mode": "0755", "uid": 0, "gid": 0,
                 "mtime": OLD, "size": 0, "sha256": hex::encode(Sha256::digest(b""))},
                {"path": "etc", "type": "dir", "mode": "0755", "uid": 0, "gid": 0, "mtime": OLD},
                {"path": "etc/a", "type": "file", "mode": "0644", "uid": 1000, "gid": 50,
                 "size": 5, "sha256": hex::encode(Sha256::digest(b"hello"))},
                {"path": "etc/b", "type": "hardlink", "mode": "0644", "uid": 0, "gid": 0,
                 "target": "etc/a"},
                {"path": "etc/c", "type": "symlink", "mode": "0777", "uid": 0, "gid": 0,
                 "mtime": OLD, "target": "a"},
                {"path": "etc/old", "type": "whiteout"},
                {"path": "top", "type": "whiteout"},
                {"path": "var", "type": "opaque"},
            ],
            [
                {"path": "dev/fifo", "type": "fifo", "mode": "0644", "uid": 0, "gid": 0,
                 "mtime": OLD},
                {"path": "dev/null", "type": "char", "mode": "0666", "uid": 0, "gid": 0,
                 "mtime": OLD, "major": 1, "minor": 3},
            ],
        ],
    });
    assert_eq!(got, want, "{}", to_canonical_string(&got));

    // Without the base known, its layer is read (here: not a tar, so an error) and the
    // history is kept whole.
    assert!(canonicalize(&path, &Bases::default()).is_err());
}

#[test]
fn canonical_string_sorts_keys() {
    let v = json!({"b": 1, "a": {"d": [1, {"z": 0, "y": 1}], "c": null}});
    assert_eq!(
        to_canonical_string(&v),
        "{\n  \"a\": {\n    \"c\": null,\n    \"d\": [\n      1,\n      {\n        \"y\": 1,\n        \"z\": 0\n      }\n    ]\n  },\n  \"b\": 1\n}\n"
    );
}

#[test]
fn diff_matches_entries_by_path() {
    let e = json!({"layers": [[
        {"path": "a", "type": "file", "mode": "0644"},
        {"path": "b", "type": "dir", "mode": "0755"},
        {"path": "c", "type": "file", "mode": "0644"},
    ]], "config": {"User": "0"}});
    let a = json!({"layers": [[
        {"path": "a", "type": "file", "mode": "0644"},
        {"path": "c", "type": "file", "mode": "0600"},
    ]], "config": {}});
    assert_eq!(
        diff(&e, &a),
        vec![
            ".config.User: BuildKit \"0\", kiln absent".to_string(),
            ".layers[0][\"b\"]: only in BuildKit {\"mode\":\"0755\",\"path\":\"b\",\"type\":\"dir\"}"
                .to_string(),
            ".layers[0][\"c\"].mode: BuildKit \"0644\", kiln \"0600\"".to_string(),
        ]
    );
    assert!(diff(&e, &e).is_empty());
}

fn case(toml_text: &str) -> Case {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.toml");
    std::fs::write(&path, toml_text).unwrap();
    Case::load(&path, "x".into()).unwrap()
}

#[test]
fn materialize_writes_entries_with_fixed_times() {
    let c = case(
        r#"
description = "d"
dockerfile = "FROM scratch\n"
dockerfile-name = "Containerfile"
secrets = { tok = "s3" }
files = { "a/b/c.txt" = "hi" }
[[entry]]
path = "su"
content = "x"
mode = 0o4755
[[entry]]
path = "d"
dir = true
mode = 0o700
[[entry]]
path = "ln"
symlink = "a/b/c.txt"
[[entry]]
path = "hl"
hardlink = "su"
"#,
    );
    let dir = tempfile::tempdir().unwrap();
    let ws = c.materialize(dir.path()).unwrap();
    let meta = |p: &str| std::fs::symlink_metadata(ws.context.join(p)).unwrap();
    assert_eq!(meta("su").mode() & 0o7777, 0o4755);
    assert_eq!(meta("d").mode() & 0o7777, 0o700);
    assert_eq!(meta("a").mode() & 0o7777, 0o755);
    assert_eq!(meta("a/b/c.txt").mode() & 0o7777, 0o644);
    assert_eq!(meta("hl").ino(), meta("su").ino());
    assert!(meta("ln").file_type().is_symlink());
    for p in ["su", "d", "a", "a/b", "a/b/c.txt", "ln", "hl"] {
        assert_eq!(meta(p).mtime(), CONTEXT_MTIME, "{p}");
    }
    assert_eq!(
        std::fs::metadata(&ws.context).unwrap().mtime(),
        CONTEXT_MTIME
    );
    assert_eq!(ws.dockerfile, ws.dockerfile_dir.join("Containerfile"));
    assert_eq!(ws.secrets.len(), 1);
    let flags = c.kiln_flags(&ws, std::path::Path::new("/o.tar"));
    assert!(flags.contains(&format!("id=tok,src={}", ws.secrets[0].1.display())));
    assert_eq!(flags.last().unwrap(), "type=oci,dest=/o.tar");
}

#[test]
fn an_entry_needs_one_kind() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.toml");
    std::fs::write(
        &path,
        "description = \"d\"\ndockerfile = \"\"\n[[entry]]\npath = \"a\"\ndir = true\nsymlink = \"b\"\n",
    )
    .unwrap();
    assert!(Case::load(&path, "x".into()).is_err());
}

#[test]
fn xfail_passes_only_while_kiln_differs() {
    let image = json!({"config": {}, "history": [], "layers": []});
    let other = json!({"config": {"User": "1"}, "history": [], "layers": []});
    let plain = case("description = \"d\"\ndockerfile = \"\"\n");
    let xfail = case("description = \"d\"\ndockerfile = \"\"\nxfail = \"why\"\n");
    let same = Outcome::Image(image.clone());
    let differs = Outcome::Image(other);
    assert!(judge(&plain, &image, &same).failure().is_none());
    assert!(judge(&plain, &image, &differs).failure().is_some());
    assert!(judge(&xfail, &image, &differs).failure().is_none());
    assert!(
        judge(&xfail, &image, &same)
            .failure()
            .unwrap()
            .contains("remove its `xfail")
    );

    let err = case("description = \"d\"\ndockerfile = \"\"\nexpect-error = \"circular\"\n");
    let recorded = error_record("#1 ERROR: circular dependency\nerror: failed to solve\n");
    assert_eq!(
        recorded["error"],
        Value::from("ERROR: circular dependency\nerror: failed to solve")
    );
    assert!(
        judge(&err, &recorded, &Outcome::Failed("error: circular".into()))
            .failure()
            .is_none()
    );
    assert!(
        judge(&err, &recorded, &Outcome::Failed("error: other".into()))
            .failure()
            .is_some()
    );
    assert!(judge(&err, &recorded, &same).failure().is_some());
}
