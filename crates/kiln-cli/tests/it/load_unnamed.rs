//! `kiln load` of images without a name (saved by ID: an OCI layout without
//! `org.opencontainers.image.ref.name`, a docker archive with `"RepoTags": null`): loaded,
//! listed as `<none>`, usable by ID, and no longer listed so once named.

use std::io::Read;
use std::path::Path;

use crate::support::Kiln;

fn listed(k: &Kiln) -> Vec<String> {
    k.kiln(&["images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}"])
        .ok()
        .stdout
        .lines()
        .map(String::from)
        .collect()
}

/// A copy of the docker archive `from` as older Docker writes one for an image saved by ID:
/// `manifest.json` with `"RepoTags": null` and no OCI `index.json` beside it.
fn legacy_unnamed(from: &Path, to: &Path) {
    let mut input = tar::Archive::new(std::fs::File::open(from).unwrap());
    let mut out = tar::Builder::new(std::fs::File::create(to).unwrap());
    for e in input.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().to_string_lossy().into_owned();
        if path == "index.json" || path == "oci-layout" {
            continue;
        }
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        if path == "manifest.json" {
            let mut m: serde_json::Value = serde_json::from_slice(&data).unwrap();
            m[0]["RepoTags"] = serde_json::Value::Null;
            data = serde_json::to_vec(&m).unwrap();
        }
        let mut h = e.header().clone();
        h.set_size(data.len() as u64);
        h.set_cksum();
        out.append(&h, data.as_slice()).unwrap();
    }
    out.finish().unwrap();
}

#[test]
fn load_of_unnamed_images_lists_none_and_runs_by_id() {
    let Some(k) = Kiln::new("load_of_unnamed_images_lists_none_and_runs_by_id") else {
        return;
    };
    let ctx = k.context(
        "ctx",
        &[("Dockerfile", "FROM busybox\nRUN echo unnamed > /marker\n")],
    );
    let name = k.unique("unnamed");
    let iid = k.dir().join("iid");
    k.build(&ctx, &["-t", &name, "--iidfile", &iid.to_string_lossy()])
        .ok();
    let id = std::fs::read_to_string(&iid).unwrap();
    let short = id.trim_start_matches("sha256:")[..12].to_string();
    let (docker, oci, legacy) = (
        k.dir().join("docker.tar"),
        k.dir().join("oci.tar"),
        k.dir().join("legacy.tar"),
    );
    k.kiln(&["save", "-o", &docker.to_string_lossy(), &short])
        .ok();
    k.kiln(&[
        "save",
        "--format",
        "oci",
        "-o",
        &oci.to_string_lossy(),
        &short,
    ])
    .ok();
    legacy_unnamed(&docker, &legacy);

    for archive in [&oci, &docker, &legacy] {
        let Some(fresh) = Kiln::new("load_of_unnamed_images_lists_none_and_runs_by_id") else {
            return;
        };
        fresh.kiln(&["load", "-i", &archive.to_string_lossy()]).ok();
        assert_eq!(
            listed(&fresh),
            [format!("<none>:<none> {short}")],
            "{}",
            archive.display()
        );
        let inspect: serde_json::Value =
            serde_json::from_str(&fresh.kiln(&["inspect", &short]).ok().stdout).unwrap();
        assert_eq!(inspect[0]["Id"], id.as_str());
        assert_eq!(inspect[0]["RepoTags"], serde_json::json!([]));
        assert_eq!(inspect[0]["RepoDigests"], serde_json::json!([]));
        let ran = fresh.kiln(&["run", "--rm", &short, "cat", "/marker"]).ok();
        assert_eq!(ran.stdout, "unnamed\n");
        // Named, it is no longer `<none>`.
        fresh.kiln(&["tag", &short, "named:1"]).ok();
        assert_eq!(listed(&fresh), [format!("named:1 {short}")]);
    }
    // Loaded where it already has a name: no `<none>` line beside it.
    k.kiln(&["load", "-i", &oci.to_string_lossy()]).ok();
    assert!(
        !listed(&k).iter().any(|l| l.starts_with("<none>")),
        "{:?}",
        listed(&k)
    );
}
