//! `kiln imagetools create/inspect` against the test registry: two single-platform images
//! (imported with `--platform`, pushed) become one index, which `kiln pull` then resolves.

use crate::support::Kiln;

#[test]
fn imagetools_creates_appends_and_inspects_an_index() {
    let Some(k) = Kiln::new("imagetools_creates_appends_and_inspects_an_index") else {
        return;
    };
    let rootfs = k.context("rootfs", &[("hello", "from an imported rootfs\n")]);
    let tarball = k.dir().join("rootfs.tar");
    let status = std::process::Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(&tarball)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
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
