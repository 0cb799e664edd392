//! Cache mounts that travel (`--cache-to ...,cache-mounts=ID`): what a RUN wrote into a cache
//! mount on one data root is there, mtimes kept, when a changed RUN mounts it on another root
//! with `--cache-from` (its dir empty or absent); unselected and oversized mounts stay home; a
//! root that never mounts the cache fetches nothing and still re-exports it; a cache whose
//! mount blob is gone leaves the RUN an empty cache dir.

use std::time::Duration;

use serde_json::Value;

use crate::cache_export::{blob_in_store, registry_manifest};
use crate::support::{Kiln, http_get};

const WRITE: &str = "FROM busybox\n\
    RUN --mount=type=cache,id=tc,target=/c echo kept > /c/f && mkdir -p /c/d && \
    echo deep > /c/d/g && touch -d @1600000000 /c/f\n\
    RUN --mount=type=cache,id=other,target=/o echo home > /o/n\n";

/// The config of the cache manifest at `repo:tag`.
fn cache_config(registry: &str, repo: &str, tag: &str) -> (Value, Value) {
    let manifest = registry_manifest(registry, repo, tag);
    let digest = manifest["config"]["digest"]
        .as_str()
        .expect("config digest");
    let (status, body) = http_get(
        registry,
        &format!("/v2/{repo}/blobs/{digest}"),
        &[],
        Duration::from_secs(10),
    )
    .expect("fetching the cache config");
    assert_eq!(status, 200, "{body}");
    (
        manifest,
        serde_json::from_str(&body).expect("cache config JSON"),
    )
}

#[test]
fn cache_mount_contents_travel_to_an_empty_root() {
    let Some(a) = Kiln::new("cache_mount_contents_travel_to_an_empty_root") else {
        return;
    };
    let repo = a.unique("kiln-cache-mounts");
    let cache = format!("{}/{repo}:1", a.registry);
    let ctx = a.context("ctx", &[("Dockerfile", WRITE)]);
    let to = format!("type=registry,ref={cache},mode=max,cache-mounts=tc");
    a.build(&ctx, &["--cache-to", &to]).ok();
    let (manifest, config) = cache_config(&a.registry, &repo, "1");
    let mounts = config["mounts"].as_object().expect("mounts in the config");
    assert_eq!(mounts.len(), 1, "only the selected id: {config}");
    let tc = &mounts["tc"];
    assert_eq!(tc["id"], "tc");
    let blob = tc["blob"].as_str().expect("a blob").to_string();
    assert_eq!(
        tc["media_type"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    let listed = manifest["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .any(|l| l["digest"] == blob.as_str());
    assert!(listed, "the mount's blob is in the manifest: {manifest}");
    assert!(!blob_in_store(&a, &blob), "the export's tar is not kept");

    // An empty root, a changed RUN (so it runs): the cache mount holds A's files and mtimes;
    // the unselected mount starts empty.
    let b = Kiln::new("cache_mount_contents_travel_to_an_empty_root (b)").unwrap();
    let read = b.context(
        "read",
        &[(
            "Dockerfile",
            "FROM busybox\n\
             RUN --mount=type=cache,id=tc,target=/c cat /c/f /c/d/g > /out && \
             stat -c %Y /c/f > /mtime\n\
             RUN --mount=type=cache,id=other,target=/o ls -A /o > /olist\n",
        )],
    );
    let out = b.dir().join("out");
    let run = b
        .build(
            &read,
            &[
                "--cache-from",
                &format!("type=registry,ref={cache}"),
                "-o",
                &format!("type=local,dest={}", out.display()),
            ],
        )
        .ok();
    assert!(
        run.stderr.contains("importing cache mount tc"),
        "{}",
        run.stderr
    );
    let file = |name: &str| std::fs::read_to_string(out.join(name)).expect(name);
    assert_eq!(file("out"), "kept\ndeep\n");
    assert_eq!(file("mtime"), "1600000000\n", "mtimes travel");
    assert_eq!(file("olist"), "", "`other` was not exported");
    assert!(
        !blob_in_store(&b, &blob),
        "the unpacked dir is kept, not the blob"
    );

    // A root whose RUNs all hit the cache never mounts it: nothing fetched, no dir made, and
    // its own export keeps the imported mount.
    let c = Kiln::new("cache_mount_contents_travel_to_an_empty_root (c)").unwrap();
    let again = format!(
        "type=registry,ref={}/{repo}:2,mode=max,cache-mounts=all",
        c.registry
    );
    let run = c
        .build(
            &ctx,
            &[
                "--cache-from",
                &format!("type=registry,ref={cache}"),
                "--cache-to",
                &again,
            ],
        )
        .ok();
    assert!(run.progress().rebuilt().is_empty(), "{}", run.stderr);
    assert!(!blob_in_store(&c, &blob));
    assert!(!c.root.join("cache-mounts").exists());
    let (_, config) = cache_config(&c.registry, &repo, "2");
    assert_eq!(config["mounts"]["tc"]["blob"], blob.as_str(), "{config}");

    // Exporting the unchanged mount again uploads nothing: the same files, the same blob.
    let run = a.build(&ctx, &["--cache-to", &to]).ok();
    assert!(
        !run.stderr.contains("writing cache mount"),
        "{}",
        run.stderr
    );
    let (_, config) = cache_config(&a.registry, &repo, "1");
    assert_eq!(config["mounts"]["tc"]["blob"], blob.as_str());

    // A local cache carries it the same way, into an existing empty cache dir.
    let layout = a.dir().join("layout");
    let to_local = format!("type=local,dest={},cache-mounts=tc", layout.display());
    a.build(&ctx, &["--cache-to", &to_local]).ok();
    let d = Kiln::new("cache_mount_contents_travel_to_an_empty_root (d)").unwrap();
    // D has used the cache already, but wrote nothing: an empty dir is filled too.
    let touch = d.context(
        "touch",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN --mount=type=cache,id=tc,target=/c ls -A /c\n",
        )],
    );
    d.build(&touch, &[]).ok();
    let out = d.dir().join("out");
    d.build(
        &read,
        &[
            "--cache-from",
            &format!("type=local,src={}", layout.display()),
            "-o",
            &format!("type=local,dest={}", out.display()),
        ],
    )
    .ok();
    assert_eq!(
        std::fs::read_to_string(out.join("out")).expect("out"),
        "kept\ndeep\n"
    );

    // A cache whose mount blob is gone: the RUN still runs, on an empty cache dir.
    let blob_file = layout
        .join("blobs/sha256")
        .join(blob.strip_prefix("sha256:").expect("sha256"));
    std::fs::remove_file(&blob_file).expect("removing the mount's blob");
    let e = Kiln::new("cache_mount_contents_travel_to_an_empty_root (e)").unwrap();
    let list = e.context(
        "list",
        &[(
            "Dockerfile",
            "FROM busybox
RUN --mount=type=cache,id=tc,target=/c ls -A /c > /list
",
        )],
    );
    let out = e.dir().join("out");
    let run = e
        .build(
            &list,
            &[
                "--cache-from",
                &format!("type=local,src={}", layout.display()),
                "-o",
                &format!("type=local,dest={}", out.display()),
            ],
        )
        .ok();
    assert!(
        run.stderr.contains("cache mount tc not imported"),
        "{}",
        run.stderr
    );
    assert_eq!(std::fs::read_to_string(out.join("list")).expect("list"), "");

    // Over the cap: a warning naming the mount, and no mount exported.
    let capped = format!(
        "type=registry,ref={}/{repo}:3,mode=max,cache-mounts=tc;nope,cache-mounts-max=4",
        a.registry
    );
    let run = a.build(&ctx, &["--cache-to", &capped]).ok();
    assert!(
        run.stderr.contains("cache mount `tc` not exported"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("cache mount `nope` (cache-mounts=) is mounted by no RUN"),
        "{}",
        run.stderr
    );
    let (_, config) = cache_config(&a.registry, &repo, "3");
    assert!(config.get("mounts").is_none(), "{config}");
}
