//! Golden conversions: each `corpus/convert/<case>/Dockerfile` is converted with a fake image
//! resolver and a fixed `created` time; `Definition::dump(root)` must equal `llb.txt` and the
//! image config (pretty JSON) `config.json`. An optional `opts.txt` holds `target=NAME` and
//! `build-arg=KEY=VALUE` lines. `KILN_BLESS=1` rewrites the expected files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use futures::FutureExt;
use futures::future::BoxFuture;
use kiln_frontend::{BoxError, BuildOpts, ImageResolver, ResolvedImage};
use kiln_oci::{ImageConfig, Platform, Reference};

const CREATED: &str = "2024-01-02T03:04:05Z";

/// Every image is busybox-like: one layer, `sh` as Cmd, pinned by a digest derived from its
/// name so different images stay distinguishable.
struct FakeResolver;

impl ImageResolver for FakeResolver {
    fn resolve<'a>(
        &'a self,
        reference: &'a Reference,
        platform: &'a Platform,
    ) -> BoxFuture<'a, Result<ResolvedImage, BoxError>> {
        async move {
            if reference.repository().contains("missing") {
                return Err(format!("`{}` not found", reference.whole()).into());
            }
            let digest = kiln_oci::sha256(reference.whole().as_bytes());
            let config: ImageConfig = serde_json::from_value(serde_json::json!({
                "created": "2023-05-18T22:34:17Z",
                "architecture": platform.architecture,
                "os": platform.os,
                "config": {
                    "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                    "Cmd": ["sh"],
                },
                "rootfs": {"type": "layers", "diff_ids": [kiln_oci::sha256(b"base layer").to_string()]},
                "history": [
                    {"created": "2023-05-18T22:34:17Z", "created_by": "/bin/sh -c #(nop) ADD file:base in / "},
                    {"created": "2023-05-18T22:34:17Z", "created_by": "/bin/sh -c #(nop)  CMD [\"sh\"]", "empty_layer": true},
                ],
            }))?;
            let pinned = format!(
                "{}/{}:{}@{digest}",
                reference.registry(),
                reference.repository(),
                reference.tag().unwrap_or("latest")
            );
            Ok(ResolvedImage { pinned, config })
        }
        .boxed()
    }
}

fn opts(case: &Path) -> BuildOpts {
    let mut build_args = BTreeMap::new();
    let mut target = None;
    let mut run = kiln_frontend::RunOpts::default();
    if let Ok(text) = std::fs::read_to_string(case.join("opts.txt")) {
        for line in text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            match line.split_once('=') {
                Some(("target", t)) => target = Some(t.to_string()),
                Some(("build-arg", kv)) => {
                    let (k, v) = kv.split_once('=').expect("build-arg=KEY=VALUE");
                    build_args.insert(k.to_string(), v.to_string());
                }
                Some(("allow", e)) => {
                    run.entitlements.insert(e.parse().expect("an entitlement"));
                }
                _ => panic!("{}: bad opts.txt line `{line}`", case.display()),
            }
        }
    }
    BuildOpts {
        dockerfile_name: "Dockerfile".into(),
        build_args,
        target,
        platform: Platform::new("linux", "amd64", None),
        excludes: Vec::new(),
        created: CREATED.into(),
        no_cache_filter: Vec::new(),
        named_contexts: Default::default(),
        multi_platform: false,
        run,
    }
}

fn cases() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/convert");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("a corpus entry").path())
        .filter(|p| p.join("Dockerfile").is_file())
        .collect();
    cases.sort();
    cases
}

/// Compares `actual` with `case/file`, or writes it when blessing; returns a failure message.
fn check(case: &Path, file: &str, actual: &str, bless: bool) -> Option<String> {
    let path = case.join(file);
    if bless {
        std::fs::write(&path, actual).expect("writing a blessed file");
        return None;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    (expected != actual).then(|| {
        format!("{}: {file} differs (KILN_BLESS=1 rewrites)\n--- expected\n{expected}\n+++ actual\n{actual}", case.display())
    })
}

#[tokio::test]
async fn convert_corpus() {
    let bless = std::env::var("KILN_BLESS").as_deref() == Ok("1");
    let cases = cases();
    assert!(cases.len() >= 10, "the corpus lost cases: {cases:?}");
    let mut failures = Vec::new();
    for case in &cases {
        let source =
            std::fs::read_to_string(case.join("Dockerfile")).expect("reading the Dockerfile");
        let converted = match kiln_frontend::convert(&source, &opts(case), &FakeResolver).await {
            Ok(c) => c,
            Err(e) => {
                failures.push(format!("{}: conversion failed: {e}", case.display()));
                continue;
            }
        };
        let llb = converted.definition.dump(converted.root);
        let config =
            serde_json::to_string_pretty(&converted.image).expect("configs serialise") + "\n";
        failures.extend(check(case, "llb.txt", &llb, bless));
        failures.extend(check(case, "config.json", &config, bless));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// A circle of stages is refused with every instruction of the circle shown, the closing one
/// first, as BuildKit v0.32.2 lists them (lines 6, 4, 2 here).
#[tokio::test]
async fn a_circle_of_stages_shows_each_of_its_lines() {
    let source = "FROM busybox AS a\nCOPY --from=b /x /x\nFROM busybox AS b\nCOPY --from=c /y /y\nFROM busybox AS c\nCOPY --from=a /z /z\n";
    let opts = opts(Path::new("/nonexistent"));
    let err = match kiln_frontend::convert(source, &opts, &FakeResolver).await {
        Ok(_) => panic!("a circle of stages converted"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.starts_with("error: circular dependency detected on stage: a\n"),
        "{err}"
    );
    let lines: Vec<usize> = err
        .lines()
        .filter_map(|l| l.trim().strip_prefix("--> Dockerfile:"))
        .map(|l| l.split(':').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(lines, [6, 4, 2], "{err}");
}

/// `--explain`'s step identities: the stage (by name, or `stage-I`) and the step's number in it,
/// FROM being 1; instructions that make no step (ARG, ENV) take no number, and an ARG in scope
/// is listed for the steps after it. Both stages' FROM busybox are one node (one step, as in
/// progress), which keeps the first stage's identity.
#[tokio::test]
async fn step_ids_name_stage_and_step_number() {
    let source = "FROM busybox\nRUN echo a\nFROM busybox AS app\nARG V\nENV E=1\nCOPY --from=0 /a /a\nRUN echo $V\n";
    let case = Path::new("/nonexistent");
    let converted = kiln_frontend::convert(source, &opts(case), &FakeResolver)
        .await
        .unwrap();
    let mut ids: Vec<(String, String, Vec<String>)> = converted
        .steps
        .iter()
        .map(|(node, info)| {
            (
                info.id.clone(),
                converted.definition.node(*node).name.clone(),
                info.args.iter().cloned().collect(),
            )
        })
        .collect();
    ids.sort();
    let expected: Vec<(String, String, Vec<String>)> = [
        ("app/2", "[app 2/3] COPY --from=0 /a /a", vec!["V"]),
        ("app/3", "[app 3/3] RUN echo $V", vec!["V"]),
        (
            "stage-0/1",
            "[stage-0 1/2] FROM docker.io/library/busybox:latest@",
            vec![],
        ),
        ("stage-0/2", "[stage-0 2/2] RUN echo a", vec![]),
    ]
    .into_iter()
    .map(|(id, name, args)| {
        (
            id.to_string(),
            name.to_string(),
            args.into_iter().map(str::to_string).collect(),
        )
    })
    .collect();
    assert_eq!(ids.len(), expected.len(), "{ids:#?}");
    for (got, want) in ids.iter().zip(&expected) {
        assert_eq!(got.0, want.0, "{ids:#?}");
        assert!(got.1.starts_with(&want.1), "{ids:#?}");
        assert_eq!(got.2, want.2, "{ids:#?}");
    }
}
