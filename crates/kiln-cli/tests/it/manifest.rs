//! `kiln manifest create/annotate/inspect/push/rm` against the test registry, which holds
//! `library/busybox:multi-amd64`, `:multi-arm64` (single-platform) and `:multi` (an index).

use kiln_test::{RegistryOptions, TestRegistry};

use crate::support::{Kiln, registry_has};

#[test]
fn manifest_list_from_two_images_is_annotated_pushed_and_removed() {
    let Some(k) = Kiln::new("manifest_list_from_two_images_is_annotated_pushed_and_removed") else {
        return;
    };
    let src = format!("{}/library/busybox", k.registry);
    let amd = format!("{src}:multi-amd64");
    let arm = format!("{src}:multi-arm64");
    // Another repository: push must copy both manifests (and their blobs) over.
    let list = format!("{}/kiln-it/{}:v1", k.registry, k.unique("manifest"));

    let created = k.kiln(&["manifest", "create", &list, &amd, &arm]).ok();
    assert!(created.stdout.contains(&list), "{}", created.stdout);
    let again = k.kiln(&["manifest", "create", &list, &amd]).failed().stderr;
    assert!(again.contains("--amend"), "{again}");
    // --amend re-resolves an entry in place: still two entries.
    k.kiln(&["manifest", "create", "--amend", &list, &amd]).ok();

    k.kiln(&[
        "manifest",
        "annotate",
        "--variant",
        "v8",
        "--os-features",
        "f1,f2",
        &list,
        &arm,
    ])
    .ok();
    let inspected: serde_json::Value =
        serde_json::from_str(&k.kiln(&["manifest", "inspect", &list]).ok().stdout).unwrap();
    let entries = inspected["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{inspected}");
    let arm_entry = entries
        .iter()
        .find(|m| m["platform"]["architecture"] == "arm64")
        .expect("an arm64 entry");
    assert_eq!(arm_entry["platform"]["variant"], "v8");
    assert_eq!(arm_entry["platform"]["os.features"][1], "f2");

    // One entry, verbose: the stored reference and the manifest itself.
    let one: serde_json::Value = serde_json::from_str(
        &k.kiln(&["manifest", "inspect", "-v", &list, &amd])
            .ok()
            .stdout,
    )
    .unwrap();
    assert!(
        one["Ref"]
            .as_str()
            .unwrap()
            .contains("library/busybox@sha256:"),
        "{one}"
    );
    assert_eq!(one["Descriptor"]["platform"]["architecture"], "amd64");
    assert!(
        one["OCIManifest"]["layers"].is_array() || one["SchemaV2Manifest"]["layers"].is_array()
    );
    // An image that is not in the list.
    let multi = format!("{src}:multi");
    let err = k
        .kiln(&["manifest", "annotate", "--os", "linux", &list, &multi])
        .failed()
        .stderr;
    assert!(err.contains(&format!("does not exist in {list}")), "{err}");

    let digest = k.kiln(&["manifest", "push", "--purge", &list]).ok().stdout;
    let digest = digest.trim();
    assert!(digest.starts_with("sha256:"), "{digest}");
    let raw = k
        .kiln(&["imagetools", "inspect", "--raw", &list])
        .ok()
        .stdout;
    assert_eq!(
        format!("sha256:{}", kiln_oci::sha256_hex(raw.trim_end().as_bytes())),
        digest
    );
    let pushed: serde_json::Value = serde_json::from_str(&raw).unwrap();
    let platforms: Vec<String> = pushed["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["platform"]["architecture"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(platforms.len(), 2);
    assert!(platforms.contains(&"amd64".to_string()) && platforms.contains(&"arm64".to_string()));
    // The arm64 half was copied into the list's repository: it resolves from there.
    k.kiln(&["pull", "--platform", "linux/arm64", &list]).ok();

    // --purge removed the local list; inspect now reads the registry's copy.
    let gone = k.kiln(&["manifest", "rm", &list]).failed().stderr;
    assert!(gone.contains("no such manifest"), "{gone}");
    let remote: serde_json::Value =
        serde_json::from_str(&k.kiln(&["manifest", "inspect", &list]).ok().stdout).unwrap();
    assert_eq!(remote, pushed);
}

#[test]
fn manifest_create_from_an_index_takes_its_manifests() {
    let Some(k) = Kiln::new("manifest_create_from_an_index_takes_its_manifests") else {
        return;
    };
    let index = format!("{}/library/busybox:multi", k.registry);
    let list = format!("{}/kiln-it/{}:idx", k.registry, k.unique("manifest-idx"));
    let want: serde_json::Value = serde_json::from_str(
        &k.kiln(&["imagetools", "inspect", "--raw", &index])
            .ok()
            .stdout,
    )
    .unwrap();
    k.kiln(&["manifest", "create", &list, &index]).ok();
    let got: serde_json::Value =
        serde_json::from_str(&k.kiln(&["manifest", "inspect", &list]).ok().stdout).unwrap();
    let digests = |v: &serde_json::Value| {
        let mut d: Vec<String> = v["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["digest"].as_str().unwrap().to_string())
            .collect();
        d.sort();
        d
    };
    assert_eq!(digests(&got), digests(&want));
    k.kiln(&["manifest", "rm", &list]).ok();
    let err = k.kiln(&["manifest", "push", &list]).failed().stderr;
    assert!(err.contains(&format!("no such manifest: {list}")), "{err}");
    let err = k
        .kiln(&["manifest", "annotate", "--arch", "arm", &list, &index])
        .failed()
        .stderr;
    assert!(err.contains("no such manifest"), "{err}");
    // Neither a local list nor in the registry.
    let missing = format!("{}/kiln-it/{}:none", k.registry, k.unique("manifest-none"));
    let err = k.kiln(&["manifest", "inspect", &missing]).failed().stderr;
    assert!(
        err.contains(&format!("no such manifest: {missing}")),
        "{err}"
    );
}

#[test]
fn manifest_insecure_reaches_plain_http_and_unverified_tls_registries() {
    let Some(k) = Kiln::new("manifest_insecure_reaches_plain_http_and_unverified_tls_registries")
    else {
        return;
    };
    let Some(tls) = TestRegistry::start(RegistryOptions {
        tls: true,
        ..Default::default()
    }) else {
        return;
    };
    let ca = &tls.tls.as_ref().expect("a TLS registry").ca;
    // Push an image to the TLS registry while the config trusts its CA.
    let plain = format!("[registry.\"{}\"]\nhttp = true\n", k.registry);
    std::fs::write(
        &k.config,
        format!(
            "{plain}\n[registry.\"{}\"]\nca = [\"{}\"]\n",
            tls.host,
            ca.display()
        ),
    )
    .unwrap();
    let amd = format!("{}/library/busybox:multi-amd64", k.registry);
    let arm = format!("{}/library/busybox:multi-arm64", k.registry);
    let on_tls = format!("{}/kiln-it/insecure:v1", tls.host);
    k.kiln(&["pull", &amd]).ok();
    k.kiln(&["tag", &amd, &on_tls]).ok();
    k.kiln(&["push", &on_tls]).ok();

    // Now a config that says nothing about either registry.
    std::fs::write(&k.config, "").unwrap();
    // The test registry speaks plain HTTP: HTTPS fails, --insecure falls back to HTTP.
    let multi = format!("{}/library/busybox:multi", k.registry);
    k.kiln(&["manifest", "inspect", &multi]).failed();
    let index: serde_json::Value = serde_json::from_str(
        &k.kiln(&["manifest", "inspect", "--insecure", &multi])
            .ok()
            .stdout,
    )
    .unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 2, "{index}");
    let repo = format!("kiln-it/{}", k.unique("manifest-insecure"));
    let list = format!("{}/{repo}:v1", k.registry);
    k.kiln(&["manifest", "create", &list, &amd, &arm]).failed();
    k.kiln(&["manifest", "create", "--insecure", &list, &amd, &arm])
        .ok();
    k.kiln(&["manifest", "push", &list]).failed();
    let digest = k
        .kiln(&["manifest", "push", "--insecure", &list])
        .ok()
        .stdout;
    assert!(digest.trim().starts_with("sha256:"), "{digest}");
    assert!(registry_has(&k.registry, &repo, "v1"));

    // The TLS registry's certificate is not trusted any more: --insecure skips the check.
    let refused = k.kiln(&["manifest", "inspect", &on_tls]).failed();
    assert!(refused.stderr.contains("https://"), "{}", refused.stderr);
    let one: serde_json::Value = serde_json::from_str(
        &k.kiln(&["manifest", "inspect", "--insecure", &on_tls])
            .ok()
            .stdout,
    )
    .unwrap();
    assert!(one["layers"].is_array(), "{one}");
}
