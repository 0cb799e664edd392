//! Conversion errors that suggest a fix: a stage name with a typo where an image or stage is
//! expected, and an unknown `--target`.

use std::collections::BTreeMap;

use futures::FutureExt;
use futures::future::BoxFuture;
use kiln_frontend::{BoxError, BuildOpts, ImageResolver, ResolvedImage};
use kiln_oci::{ImageConfig, Platform, Reference};

/// Knows only busybox; every other name fails as a missing image would.
struct BusyboxOnly;

impl ImageResolver for BusyboxOnly {
    fn resolve<'a>(
        &'a self,
        reference: &'a Reference,
        _platform: &'a Platform,
    ) -> BoxFuture<'a, Result<ResolvedImage, BoxError>> {
        async move {
            if reference.repository() != "library/busybox" {
                return Err(format!("`{}` not found", reference.whole()).into());
            }
            Ok(ResolvedImage {
                pinned: format!("{}@{}", reference.whole(), kiln_oci::sha256(b"busybox")),
                config: ImageConfig::default(),
            })
        }
        .boxed()
    }
}

async fn error(source: &str, target: Option<&str>) -> String {
    let opts = BuildOpts {
        dockerfile_name: "Dockerfile".into(),
        build_args: BTreeMap::new(),
        target: target.map(str::to_string),
        platform: Platform::new("linux", "amd64", None),
        excludes: Vec::new(),
        created: "2024-01-02T03:04:05Z".into(),
        no_cache_filter: Vec::new(),
        named_contexts: Default::default(),
        multi_platform: false,
        run: Default::default(),
    };
    match kiln_frontend::convert(source, &opts, &BusyboxOnly).await {
        Ok(_) => panic!("converting should fail:\n{source}"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn from_a_misspelt_stage_suggests_it() {
    let err = error("FROM busybox AS builder\nRUN true\nFROM bulider\n", None).await;
    assert!(err.contains("did you mean the stage `builder`?"), "{err}");
    assert!(err.contains("Dockerfile:3"), "{err}");
}

#[tokio::test]
async fn copy_from_a_misspelt_stage_suggests_it() {
    let err = error(
        "FROM busybox AS builder\nRUN true\nFROM busybox\nCOPY --from=bulider /x /x\n",
        None,
    )
    .await;
    assert!(err.contains("did you mean the stage `builder`?"), "{err}");
    assert!(err.contains("Dockerfile:4"), "{err}");
}

#[tokio::test]
async fn an_unrelated_missing_image_gets_no_suggestion() {
    let err = error("FROM busybox AS builder\nFROM postgres\n", None).await;
    assert!(err.contains("failed to resolve"), "{err}");
    assert!(!err.contains("did you mean"), "{err}");
}

#[tokio::test]
async fn a_misspelt_target_suggests_the_stage() {
    let err = error(
        "FROM busybox AS builder\nFROM busybox AS final\n",
        Some("bulider"),
    )
    .await;
    assert!(err.contains("(did you mean builder?)"), "{err}");
    assert!(err.contains("valid stages: builder, final"), "{err}");
}
