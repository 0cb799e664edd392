//! `--output` exporters other than the image archives: `local` and `tar` (the target's final
//! root filesystem), `cacheonly`, and the image exporter's `name`, `push`, `unpack` options.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::support::Kiln;

/// A final stage on busybox whose later steps delete a file, replace a directory (an opaque
/// directory in overlay terms) and make links, so every kind of change reaches the rootfs.
const ROOTFS_DOCKERFILE: &str = "FROM busybox
RUN mkdir -p /out/old /out/sub && echo gone > /out/gone && echo old > /out/old/stale \\
 && echo app > /out/app && chmod 750 /out/app && chown 123:456 /out/app
RUN rm /out/gone && rm -rf /out/old && mkdir /out/old && echo fresh > /out/old/new \\
 && ln -s app /out/link && ln /out/app /out/hard && echo kept > /out/sub/file
";

fn names(k: &Kiln) -> String {
    k.kiln(&["images", "--format", "{{.Repository}}:{{.Tag}}"])
        .ok()
        .stdout
}

#[test]
fn local_output_writes_the_final_rootfs() {
    let Some(k) = Kiln::new("local_output_writes_the_final_rootfs") else {
        return;
    };
    let ctx = k.context("ctx", &[("Dockerfile", ROOTFS_DOCKERFILE)]);
    let dest = k.dir().join("dist");
    // BuildKit merges into an existing directory: what the image lacks stays.
    std::fs::create_dir_all(dest.join("out")).unwrap();
    std::fs::write(dest.join("untouched"), "mine\n").unwrap();
    std::fs::write(dest.join("out/app"), "to be replaced\n").unwrap();
    let name = k.unique("local");
    let spec = format!("type=local,dest={}", dest.display());
    k.build(&ctx, &["-t", &name, "--output", &spec]).ok();

    let out = dest.join("out");
    assert_eq!(std::fs::read_to_string(out.join("app")).unwrap(), "app\n");
    let app = std::fs::symlink_metadata(out.join("app")).unwrap();
    assert_eq!(app.permissions().mode() & 0o7777, 0o750);
    assert_eq!((app.uid(), app.gid()), (123, 456), "owners kept as root");
    let hard = std::fs::symlink_metadata(out.join("hard")).unwrap();
    assert_eq!(hard.ino(), app.ino(), "the hardlink is a hardlink");
    assert_eq!(
        std::fs::read_link(out.join("link")).unwrap(),
        Path::new("app")
    );
    assert!(!out.join("gone").exists(), "a deleted file is absent");
    assert!(!out.join("old/stale").exists(), "a replaced dir's files");
    assert_eq!(
        std::fs::read_to_string(out.join("old/new")).unwrap(),
        "fresh\n"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("sub/file")).unwrap(),
        "kept\n"
    );
    // The base image's files are there too, and nothing of overlay's bookkeeping.
    assert!(dest.join("bin/busybox").is_file());
    assert!(dest.join("bin/sh").exists());
    assert_eq!(
        std::fs::read_to_string(dest.join("untouched")).unwrap(),
        "mine\n"
    );
    // Only an image output names an image.
    assert!(!names(&k).contains(&name), "{}", names(&k));
}

#[test]
fn local_shorthand_exports_a_scratch_stage() {
    let Some(k) = Kiln::new("local_shorthand_exports_a_scratch_stage") else {
        return;
    };
    let ctx = k.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM busybox AS build\nRUN mkdir /bin2 && echo '#!/bin/sh' > /bin2/app && chmod 755 /bin2/app\n\
             FROM scratch AS out\nCOPY --from=build /bin2/app /\n",
        )],
    );
    let dest = k.dir().join("dist");
    let dest_arg = dest.to_string_lossy().into_owned();
    k.build(&ctx, &["-o", &dest_arg]).ok();
    let entries: Vec<String> = std::fs::read_dir(&dest)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(entries, ["app"]);
    let md = std::fs::metadata(dest.join("app")).unwrap();
    assert_eq!(md.permissions().mode() & 0o777, 0o755);
    assert_eq!(
        std::fs::read_to_string(dest.join("app")).unwrap(),
        "#!/bin/sh\n"
    );
    assert_eq!(names(&k).trim(), "", "no image named");
}

/// (path, type, mode, uid, link target, data) of each entry.
type TarEntry = (tar::EntryType, u32, u64, String, Vec<u8>);

fn tar_entries(bytes: &[u8]) -> BTreeMap<String, TarEntry> {
    let mut found = BTreeMap::new();
    let mut archive = tar::Archive::new(bytes);
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().to_string_lossy().into_owned();
        let h = e.header().clone();
        let link = e
            .link_name()
            .unwrap()
            .map(|l| l.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        let path = path
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_string();
        found.insert(
            path,
            (
                h.entry_type(),
                h.mode().unwrap() & 0o7777,
                h.uid().unwrap(),
                link,
                data,
            ),
        );
    }
    found
}

fn check_rootfs_tar(entries: &BTreeMap<String, TarEntry>) {
    let app = &entries["out/app"];
    assert_eq!((app.0, app.1, app.2), (tar::EntryType::Regular, 0o750, 123));
    assert_eq!(app.4, b"app\n");
    let hard = &entries["out/hard"];
    assert_eq!((hard.0, hard.3.as_str()), (tar::EntryType::Link, "out/app"));
    let link = &entries["out/link"];
    assert_eq!((link.0, link.3.as_str()), (tar::EntryType::Symlink, "app"));
    assert!(!entries.contains_key("out/gone"));
    assert!(!entries.contains_key("out/old/stale"));
    assert!(entries.contains_key("out/old/new"));
    assert!(entries.contains_key("bin/busybox"));
    assert!(
        !entries.keys().any(|p| p.contains(".wh.")),
        "no whiteouts in a rootfs"
    );
}

#[test]
fn tar_output_to_a_file_and_to_stdout() {
    let Some(k) = Kiln::new("tar_output_to_a_file_and_to_stdout") else {
        return;
    };
    let ctx = k.context("ctx", &[("Dockerfile", ROOTFS_DOCKERFILE)]);
    let dest = k.dir().join("rootfs.tar");
    let spec = format!("type=tar,dest={}", dest.display());
    k.build(&ctx, &["--output", &spec]).ok();
    let from_file = std::fs::read(&dest).unwrap();
    check_rootfs_tar(&tar_entries(&from_file));

    // `-o -`: the tarball on standard output (a pipe here), progress on stderr.
    let out = k
        .command(&["build", "--progress", "plain", "-o", "-"])
        .arg(&ctx)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, from_file, "the same rootfs, byte for byte");
    assert_eq!(names(&k).trim(), "");
}

#[test]
fn tar_to_a_terminal_is_refused() {
    let Some(k) = Kiln::new("tar_to_a_terminal_is_refused") else {
        return;
    };
    let ctx = k.context("ctx", &[("Dockerfile", "FROM busybox\n")]);
    // script(1) gives kiln a pseudo-terminal as standard output.
    let Some(script) = crate::support::find_program("script") else {
        crate::support::skip_because("tar_to_a_terminal_is_refused", "script is not installed");
        return;
    };
    let cmd = format!(
        "{} --root {} --config {} build -o - {}",
        crate::support::KILN,
        k.root.display(),
        k.config.display(),
        ctx.display()
    );
    let out = std::process::Command::new(script)
        .args(["-qec", &cmd, "/dev/null"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("dest file is required for tar exporter. refusing to write to console"),
        "{text}"
    );
}

#[test]
fn cacheonly_builds_and_exports_nothing() {
    let Some(k) = Kiln::new("cacheonly_builds_and_exports_nothing") else {
        return;
    };
    let ctx = k.context(
        "ctx",
        &[("Dockerfile", "FROM busybox\nRUN echo built > /built\n")],
    );
    let name = k.unique("cacheonly");
    let run = k
        .build(&ctx, &["-t", &name, "--output", "type=cacheonly"])
        .ok();
    assert!(
        !run.progress().step("RUN echo built").cached,
        "{}",
        run.stderr
    );
    assert_eq!(names(&k).trim(), "", "nothing named");
    // The cache it filled serves the next build.
    let run = k.build(&ctx, &["-t", &name]).ok();
    assert!(
        run.progress().step("RUN echo built").cached,
        "{}",
        run.stderr
    );
    assert!(names(&k).contains(&name));
}

/// `kiln inspect NAME`, the one image's object.
fn inspect(k: &Kiln, name: &str) -> serde_json::Value {
    let out = k.kiln(&["inspect", name]).ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    v[0].clone()
}

fn metadata(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// The busybox layer's diffID: an image with no step that mounts it never unpacks it.
fn base_layer_unpacked(k: &Kiln, name: &str) -> bool {
    let layer = inspect(k, name)["RootFS"]["Layers"][0]
        .as_str()
        .unwrap()
        .to_string();
    let hex = layer.trim_start_matches("sha256:");
    k.root.join("layers").join(hex).is_dir()
}

#[test]
fn image_output_names_pushes_and_unpacks() {
    let Some(k) = Kiln::new("image_output_names_pushes_and_unpacks") else {
        return;
    };
    let ctx = k.context("ctx", &[("Dockerfile", "FROM busybox\nENV BUILT=1\n")]);
    let repo = format!("{}/kiln-it/{}", k.registry, k.unique("names"));
    let (a, b, c) = (
        format!("{repo}:a"),
        format!("{repo}:b"),
        format!("{repo}:c"),
    );

    // No unpack: the base layer stays a blob (control for the check below).
    let plain = k.unique("plain");
    k.build(&ctx, &["-t", &plain]).ok();
    assert!(!base_layer_unpacked(&k, &plain));

    let meta = k.dir().join("meta.json");
    let spec = format!(r#"type=image,"name={b},{c}",push=true,unpack=true"#);
    let meta_arg = meta.to_string_lossy().into_owned();
    k.build(
        &ctx,
        &["-t", &a, "--output", &spec, "--metadata-file", &meta_arg],
    )
    .ok();
    let listed = names(&k);
    for n in [&a, &b, &c] {
        assert!(listed.contains(n.as_str()), "{n} in {listed}");
        let tag = n.rsplit(':').next().unwrap();
        let path = repo.split_once('/').unwrap().1;
        assert!(
            crate::support::registry_has(&k.registry, path, tag),
            "{n} pushed"
        );
    }
    assert_eq!(metadata(&meta)["image.name"], format!("{a},{b},{c}"));
    assert!(
        base_layer_unpacked(&k, &a),
        "unpack=true unpacks every layer"
    );
}

#[test]
fn registry_output_and_push_flag() {
    let Some(k) = Kiln::new("registry_output_and_push_flag") else {
        return;
    };
    let ctx = k.context("ctx", &[("Dockerfile", "FROM busybox\nRUN echo x > /x\n")]);
    let path = format!("kiln-it/{}", k.unique("registry"));
    let repo = format!("{}/{path}", k.registry);
    let spec = format!("type=registry,name={repo}:one");
    k.build(&ctx, &["--output", &spec]).ok();
    assert!(crate::support::registry_has(&k.registry, &path, "one"));
    let two = format!("{repo}:two");
    k.build(&ctx, &["--push", "-t", &two]).ok();
    assert!(crate::support::registry_has(&k.registry, &path, "two"));
    // A registry output with no name at all is refused as buildx refuses it.
    let run = k.build(&ctx, &["--output", "type=registry"]).failed();
    assert!(
        run.stderr
            .contains("tag is needed when pushing to registry"),
        "{}",
        run.stderr
    );
    // buildx: `--push` sets push=true on a first image output (its name= counts as a tag) and
    // refuses other exporters.
    let three = format!("type=image,name={repo}:three");
    k.build(&ctx, &["--push", "-o", &three]).ok();
    assert!(crate::support::registry_has(&k.registry, &path, "three"));
    let run = k
        .build(&ctx, &["--push", "-t", &two, "-o", "type=tar,dest=x.tar"])
        .failed();
    assert!(
        run.stderr
            .contains("push and \"tar\" output can't be used together"),
        "{}",
        run.stderr
    );
}

#[test]
fn push_by_digest_and_name_canonical() {
    let Some(k) = Kiln::new("push_by_digest_and_name_canonical") else {
        return;
    };
    let ctx = k.context("ctx", &[("Dockerfile", "FROM busybox\nRUN echo d > /d\n")]);
    let path = format!("kiln-it/{}", k.unique("bydigest"));
    let repo = format!("{}/{path}", k.registry);
    let meta = k.dir().join("meta.json");
    let meta_arg = meta.to_string_lossy().into_owned();
    let spec = format!("type=image,name={repo}:t,push=true,push-by-digest=true");
    k.build(&ctx, &["--output", &spec, "--metadata-file", &meta_arg])
        .ok();
    let m = metadata(&meta);
    let digest = m["containerimage.digest"].as_str().unwrap().to_string();
    assert!(digest.starts_with("sha256:"), "{m}");
    assert!(crate::support::registry_has(&k.registry, &path, &digest));
    assert!(
        !crate::support::registry_has(&k.registry, &path, "t"),
        "pushed by digest only: no tag"
    );

    let spec = format!("type=image,name={repo}:nc,name-canonical=true");
    k.build(&ctx, &["--output", &spec, "--metadata-file", &meta_arg])
        .ok();
    let m = metadata(&meta);
    let canonical = format!("{repo}@{}", m["containerimage.digest"].as_str().unwrap());
    assert_eq!(m["image.name"], format!("{repo}:nc,{canonical}"));
    let id = inspect(&k, &canonical)["Id"].clone();
    assert_eq!(id, inspect(&k, &format!("{repo}:nc"))["Id"]);
    assert_eq!(id, m["containerimage.config.digest"]);
}

#[test]
fn several_outputs_in_one_build() {
    let Some(k) = Kiln::new("several_outputs_in_one_build") else {
        return;
    };
    let ctx = k.context("ctx", &[("Dockerfile", ROOTFS_DOCKERFILE)]);
    let name = k.unique("several");
    let (tar, oci, dir) = (
        k.dir().join("rootfs.tar"),
        k.dir().join("image.tar"),
        k.dir().join("dist"),
    );
    let run = k
        .build(
            &ctx,
            &[
                "--output",
                &format!("type=docker,name={name}"),
                "--output",
                &format!("type=tar,dest={}", tar.display()),
                "--output",
                &format!("type=oci,dest={}", oci.display()),
                "--output",
                &format!("type=local,dest={}", dir.display()),
            ],
        )
        .ok();
    assert!(names(&k).contains(&name), "{}", run.stderr);
    check_rootfs_tar(&tar_entries(&std::fs::read(&tar).unwrap()));
    kiln_exporter::verify::verify_oci_archive(&oci).expect("the OCI archive verifies");
    assert_eq!(
        std::fs::read_to_string(dir.join("out/app")).unwrap(),
        "app\n"
    );
}

/// Every regular file of a tar held in memory.
fn tar_files(bytes: &[u8]) -> BTreeMap<String, Vec<u8>> {
    tar_entries(bytes)
        .into_iter()
        .filter(|(_, e)| e.0 == tar::EntryType::Regular)
        .map(|(p, e)| (p, e.4))
        .collect()
}

/// Every regular file under `dir`, by relative path.
fn dir_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut found = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                let rel = e
                    .path()
                    .strip_prefix(dir)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                found.insert(rel, std::fs::read(e.path()).unwrap());
            }
        }
    }
    found
}

#[test]
fn oci_layout_directory_and_archives_on_stdout() {
    let Some(k) = Kiln::new("oci_layout_directory_and_archives_on_stdout") else {
        return;
    };
    let ctx = k.context("ctx", &[("Dockerfile", "FROM busybox\nRUN echo o > /o\n")]);
    let name = k.unique("layout");
    let (archive, layout) = (k.dir().join("image.tar"), k.dir().join("layout"));
    k.build(
        &ctx,
        &[
            "-t",
            &name,
            "--output",
            &format!("type=oci,dest={}", archive.display()),
            "--output",
            &format!("type=oci,tar=false,dest={}", layout.display()),
        ],
    )
    .ok();
    let in_dir = dir_files(&layout);
    let (manifest, config) = crate::export_oci::layout_image(&in_dir);
    assert_eq!(
        manifest["layers"].as_array().unwrap().len(),
        config["rootfs"]["diff_ids"].as_array().unwrap().len()
    );
    let in_tar = tar_files(&std::fs::read(&archive).unwrap());
    assert_eq!(
        in_dir.keys().collect::<Vec<_>>(),
        in_tar.keys().collect::<Vec<_>>(),
        "the directory holds what the tarball holds"
    );
    assert!(
        in_dir == in_tar,
        "the same bytes in the directory and the tarball"
    );

    // dest=- for oci and docker: the archive on standard output.
    for (kind, check) in [("oci", "index.json"), ("docker", "manifest.json")] {
        let out = k
            .command(&[
                "build",
                "--progress",
                "plain",
                "-t",
                &name,
                "--output",
                &format!("type={kind},dest=-"),
            ])
            .arg(&ctx)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let files = tar_files(&out.stdout);
        assert!(files.contains_key(check), "{kind}: {:?}", files.keys());
        let saved = k.dir().join(format!("stdout-{kind}.tar"));
        std::fs::write(&saved, &out.stdout).unwrap();
        if kind == "oci" {
            kiln_exporter::verify::verify_oci_archive(&saved).expect("the OCI archive verifies");
        } else {
            k.kiln(&["load", "-i", &saved.to_string_lossy()]).ok();
        }
    }
}

/// BuildKit's annotation targets on a single-platform build: manifest (also qualified by the
/// platform built), the manifest's descriptor in index.json; index targets and another
/// platform are refused as BuildKit refuses them.
#[test]
fn annotations_reach_the_manifest_and_its_descriptor() {
    let Some(k) = Kiln::new("annotations_reach_the_manifest_and_its_descriptor") else {
        return;
    };
    let ctx = k.context("ctx", &[("Dockerfile", "FROM busybox\nRUN echo a > /a\n")]);
    let dest = k.dir().join("annotated.tar");
    let spec = format!(
        "type=oci,dest={},annotation.org.example.plain=p,annotation[linux/amd64].org.example.qualified=q,annotation-manifest-descriptor.org.example.desc=d",
        dest.display()
    );
    let flags = [
        "--platform",
        "linux/amd64",
        "-o",
        &spec,
        "--annotation",
        "org.example.flag=f",
        "--annotation",
        "manifest-descriptor:org.example.flagdesc=fd",
    ];
    k.build(&ctx, &flags).ok();
    let files = tar_files(&std::fs::read(&dest).unwrap());
    let index: serde_json::Value = serde_json::from_slice(&files["index.json"]).unwrap();
    let desc = &index["manifests"][0];
    assert_eq!(desc["annotations"]["org.example.desc"], "d", "{index}");
    assert_eq!(desc["annotations"]["org.example.flagdesc"], "fd", "{index}");
    let digest = desc["digest"].as_str().unwrap().replace(':', "/");
    let manifest: serde_json::Value =
        serde_json::from_slice(&files[&format!("blobs/{digest}")]).unwrap();
    assert_eq!(
        manifest["annotations"]["org.example.plain"], "p",
        "{manifest}"
    );
    assert_eq!(
        manifest["annotations"]["org.example.qualified"], "q",
        "{manifest}"
    );
    assert_eq!(
        manifest["annotations"]["org.example.flag"], "f",
        "{manifest}"
    );
    assert!(manifest["annotations"].get("org.example.desc").is_none());

    for (spec, want) in [
        (
            "type=image,annotation-index.k=v",
            "index annotations not supported for single platform export",
        ),
        (
            "type=image,annotation[linux/arm64].k=v",
            "invalid annotation: no platform linux/arm64 found in source",
        ),
    ] {
        let run = k
            .build(&ctx, &["--platform", "linux/amd64", "-o", spec])
            .failed();
        assert!(run.stderr.contains(want), "{spec}: {}", run.stderr);
    }
}

/// `--metadata-file` of an `-o type=oci` build describes the manifest in the archive (here
/// zstd layers, so not the stored one), as buildx v0.36.1 does.
#[test]
fn metadata_of_an_oci_archive_names_its_manifest() {
    let Some(k) = Kiln::new("metadata_of_an_oci_archive_names_its_manifest") else {
        return;
    };
    let ctx = k.context("ctx", &[("Dockerfile", "FROM busybox\nRUN echo m > /m\n")]);
    let (oci, meta) = (k.dir().join("image.tar"), k.dir().join("meta.json"));
    let spec = format!("type=oci,dest={},compression=zstd", oci.display());
    k.build(
        &ctx,
        &[
            "--output",
            &spec,
            "--metadata-file",
            &meta.to_string_lossy(),
        ],
    )
    .ok();
    let files = crate::support::read_tar(&oci).unwrap();
    let index: serde_json::Value = serde_json::from_slice(&files["index.json"]).unwrap();
    let desc = &index["manifests"][0];
    let m = metadata(&meta);
    assert_eq!(m["containerimage.digest"], desc["digest"], "{m}");
    assert_eq!(m["containerimage.descriptor"]["digest"], desc["digest"]);
    assert_eq!(m["containerimage.descriptor"]["size"], desc["size"]);
    let hex = desc["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:");
    let manifest: serde_json::Value =
        serde_json::from_slice(&files[&format!("blobs/sha256/{hex}")]).unwrap();
    assert_eq!(
        m["containerimage.config.digest"],
        manifest["config"]["digest"]
    );
    assert!(
        manifest["layers"][1]["mediaType"]
            .as_str()
            .unwrap()
            .ends_with("+zstd"),
        "{manifest}"
    );
}
