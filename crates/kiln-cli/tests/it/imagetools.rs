//! `kiln imagetools create/inspect` against the test registry: two single-platform images
//! (imported with `--platform`, pushed) become one index, which `kiln pull` then resolves.

use std::path::{Path, PathBuf};

use crate::support::{Kiln, registry_has, skip_because};

/// `rootfs` as a tarball in the test's dir, for `kiln import`.
fn rootfs_tarball(k: &Kiln, rootfs: &Path) -> PathBuf {
    let tarball = k.dir().join("rootfs.tar");
    let status = std::process::Command::new("tar")
        .arg("-C")
        .arg(rootfs)
        .arg("-cf")
        .arg(&tarball)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
    tarball
}

#[test]
fn imagetools_creates_appends_and_inspects_an_index() {
    let Some(k) = Kiln::new("imagetools_creates_appends_and_inspects_an_index") else {
        return;
    };
    let rootfs = k.context("rootfs", &[("hello", "from an imported rootfs\n")]);
    let tarball = rootfs_tarball(&k, &rootfs);
    let tar = tarball.to_string_lossy().into_owned();
    let repo = format!("{}/{}", k.registry, k.unique("kiln-it-imagetools"));
    let amd = format!("{repo}/single:amd64");
    // A different repository: create must copy its manifest and blobs over.
    let arm = format!(
        "{}/{}:arm64",
        k.registry,
        k.unique("kiln-it-imagetools-arm")
    );
    let mut digests = Vec::new();
    for (name, platform) in [(&amd, "linux/amd64"), (&arm, "linux/arm64")] {
        k.kiln(&["import", "--platform", platform, &tar, name]).ok();
        digests.push(k.kiln(&["push", name]).ok().stdout.trim().to_string());
    }

    let multi = format!("{repo}/multi:v1");
    let created = k
        .kiln(&[
            "imagetools",
            "create",
            "-t",
            &multi,
            "--annotation",
            "index:org.opencontainers.image.description=two platforms",
            &amd,
            &arm,
        ])
        .ok();
    let index_digest = created.stdout.trim().to_string();
    assert!(index_digest.starts_with("sha256:"), "{}", created.stdout);

    let raw = k
        .kiln(&["imagetools", "inspect", "--raw", &multi])
        .ok()
        .stdout;
    assert_eq!(
        format!("sha256:{}", kiln_oci::sha256_hex(raw.trim_end().as_bytes())),
        index_digest,
        "--raw prints the bytes the registry holds"
    );
    let index: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    assert_eq!(
        index["annotations"]["org.opencontainers.image.description"],
        "two platforms"
    );
    let entries = index["manifests"].as_array().unwrap();
    let got: Vec<(String, String)> = entries
        .iter()
        .map(|m| {
            (
                m["digest"].as_str().unwrap().to_string(),
                m["platform"]["architecture"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (digests[0].clone(), "amd64".to_string()),
            (digests[1].clone(), "arm64".to_string())
        ]
    );

    let text = k.kiln(&["imagetools", "inspect", &multi]).ok().stdout;
    assert!(text.starts_with(&format!("Name:      {multi}\n")), "{text}");
    assert!(
        text.contains(&format!("Digest:    {index_digest}\n")),
        "{text}"
    );
    assert!(text.contains("  Platform:  linux/amd64\n"), "{text}");
    assert!(text.contains("  Platform:  linux/arm64\n"), "{text}");
    assert!(
        // Named as buildx names it: the name asked, tag kept.
        text.contains(&format!("  Name:      {multi}@{}\n", digests[1])),
        "the arm64 manifest was copied into the index's repository: {text}"
    );

    // The index resolves to this machine's image when pulled, and the copied arm64 manifest
    // is pullable from the index's repository by digest.
    let pulled = k.kiln(&["pull", &multi]).ok().stdout;
    assert_eq!(pulled.trim(), digests[0]);
    let pulled_arm = k
        .kiln(&["pull", "--platform", "linux/arm64", &multi])
        .ok()
        .stdout;
    assert_eq!(pulled_arm.trim(), digests[1]);
    let none = k
        .kiln(&["pull", "--platform", "linux/s390x", &multi])
        .failed()
        .stderr;
    assert!(none.contains("s390x"), "{none}");
    let single = k
        .kiln(&[
            "imagetools",
            "inspect",
            "--raw",
            &format!("{repo}/multi@{}", digests[1]),
        ])
        .ok()
        .stdout;
    assert!(single.contains("\"layers\""), "{single}");

    // --append keeps the existing entries; a single image first, then the other appended.
    let list = format!("{repo}/list:v1");
    k.kiln(&["imagetools", "create", "-t", &list, &amd]).ok();
    let one: serde_json::Value = serde_json::from_str(
        &k.kiln(&["imagetools", "inspect", "--raw", &list])
            .ok()
            .stdout,
    )
    .unwrap();
    assert_eq!(one["manifests"].as_array().unwrap().len(), 1);
    // kiln pushes OCI manifests (BuildKit v0.32's default), which make an OCI index.
    assert_eq!(
        one["mediaType"], "application/vnd.oci.image.index.v1+json",
        "OCI manifests make an OCI index"
    );
    k.kiln(&["imagetools", "create", "--append", "-t", &list, &arm])
        .ok();
    let two: serde_json::Value = serde_json::from_str(
        &k.kiln(&["imagetools", "inspect", "--raw", &list])
            .ok()
            .stdout,
    )
    .unwrap();
    let archs: Vec<&str> = two["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["platform"]["architecture"].as_str().unwrap())
        .collect();
    assert_eq!(archs, ["amd64", "arm64"]);

    // --dry-run prints the index and pushes nothing.
    let dry = format!("{repo}/dry:v1");
    let printed = k
        .kiln(&["imagetools", "create", "--dry-run", "-t", &dry, &amd, &arm])
        .ok()
        .stdout;
    assert!(printed.contains("\"manifests\""), "{printed}");
    let missing = k.kiln(&["imagetools", "inspect", &dry]).failed();
    assert!(missing.stderr.contains("dry"), "{}", missing.stderr);
}

fn view(e: &[(String, u64, String)]) -> Vec<(&str, u64, &str)> {
    e.iter()
        .map(|(d, s, p)| (d.as_str(), *s, p.as_str()))
        .collect()
}

/// An index as buildx v0.36.1 writes it for `imagetools create` (recorded: the same sources
/// gave buildx and kiln the same index digest): Go's field order, two-space indent.
fn buildx_index(entries: &[(&str, u64, &str)]) -> String {
    let mut out = String::from(
        "{\n  \"schemaVersion\": 2,\n  \"mediaType\": \"application/vnd.oci.image.index.v1+json\",\n  \"manifests\": [\n",
    );
    for (i, (digest, size, platform)) in entries.iter().enumerate() {
        let mut parts = platform.split('/');
        let (os, arch, variant) = (parts.next().unwrap(), parts.next().unwrap(), parts.next());
        out.push_str(&format!(
            "    {{\n      \"mediaType\": \"application/vnd.oci.image.manifest.v1+json\",\n      \"digest\": \"{digest}\",\n      \"size\": {size},\n      \"platform\": {{\n        \"architecture\": \"{arch}\",\n        \"os\": \"{os}\""
        ));
        if let Some(v) = variant {
            out.push_str(&format!(",\n        \"variant\": \"{v}\""));
        }
        out.push_str("\n      }\n    }");
        out.push_str(if i + 1 < entries.len() { ",\n" } else { "\n" });
    }
    out.push_str("  ]\n}");
    out
}

#[test]
fn imagetools_create_merges_an_index_with_a_single_image() {
    let Some(k) = Kiln::new("imagetools_create_merges_an_index_with_a_single_image") else {
        return;
    };
    if !registry_has(&k.registry, "library/busybox", "multi") {
        skip_because(
            "imagetools_create_merges_an_index_with_a_single_image",
            "the registry has no library/busybox:multi (scripts/setup.sh)",
        );
        return;
    }
    let rootfs = k.context("rootfs", &[("hello", "arm v7\n")]);
    let tarball = rootfs_tarball(&k, &rootfs);
    let repo = format!("{}/{}", k.registry, k.unique("kiln-it-imagetools-merge"));
    let armv7 = format!("{repo}/armv7:v1");
    k.kiln(&[
        "import",
        "--platform",
        "linux/arm/v7",
        &tarball.to_string_lossy(),
        &armv7,
    ])
    .ok();
    k.kiln(&["push", &armv7]).ok();
    let raw = |name: &str| {
        k.kiln(&["imagetools", "inspect", "--raw", name])
            .ok()
            .stdout
    };
    let multi = format!("{}/library/busybox:multi", k.registry);
    let index: serde_json::Value = serde_json::from_str(&raw(&multi)).unwrap();
    let mut entries: Vec<(String, u64, String)> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let p = &m["platform"];
            (
                m["digest"].as_str().unwrap().to_string(),
                m["size"].as_u64().unwrap(),
                format!(
                    "{}/{}",
                    p["os"].as_str().unwrap(),
                    p["architecture"].as_str().unwrap()
                ),
            )
        })
        .collect();
    let arm_raw = raw(&armv7);
    let arm_entry = (
        format!(
            "sha256:{}",
            kiln_oci::sha256_hex(arm_raw.trim_end().as_bytes())
        ),
        arm_raw.trim_end().len() as u64,
        "linux/arm/v7".to_string(),
    );
    entries.push(arm_entry.clone());
    // An index and a single image: the index's entries, then the image's, as buildx merges.
    let merged = format!("{repo}/merged:v1");
    let digest = k
        .kiln(&["imagetools", "create", "-t", &merged, &multi, &armv7])
        .ok()
        .stdout;
    let pushed = raw(&merged);
    assert_eq!(pushed.trim_end(), buildx_index(&view(&entries)));
    assert_eq!(
        digest.trim(),
        format!(
            "sha256:{}",
            kiln_oci::sha256_hex(pushed.trim_end().as_bytes())
        )
    );
    // Every platform resolves from the new repository (the index's manifests were copied).
    for platform in ["linux/amd64", "linux/arm64", "linux/arm/v7"] {
        k.kiln(&["pull", "--platform", platform, &merged]).ok();
    }
    // A manifest the index already has is listed once.
    let again = k
        .kiln(&[
            "imagetools",
            "create",
            "--dry-run",
            "-t",
            &merged,
            &multi,
            &format!("{}/library/busybox:multi-amd64", k.registry),
        ])
        .ok()
        .stdout;
    assert_eq!(again.trim_end(), buildx_index(&view(&entries[..2])));

    // --append of an index to a one-image index: the existing entry first.
    let app = format!("{repo}/app:v1");
    k.kiln(&["imagetools", "create", "-t", &app, &armv7]).ok();
    k.kiln(&["imagetools", "create", "--append", "-t", &app, &multi])
        .ok();
    let mut appended = vec![arm_entry];
    appended.extend(entries[..2].iter().cloned());
    assert_eq!(raw(&app).trim_end(), buildx_index(&view(&appended)));
}
