//! `--cache-to`/`--cache-from` `type=s3` against moto's S3 server and `type=azblob` against
//! Azurite, both started on loopback per test: a cache written from one data root makes every
//! step CACHED on an empty one, fetching its manifest and config but no layer (the servers'
//! request logs say what was fetched); credentials come from the attributes or the
//! environment; an unreachable bucket is a warning unless `ignore-error=false`.

use kiln_test::{AZURITE_ACCOUNT, AZURITE_KEY, AzuriteServer, MotoServer};
use serde_json::Value;

use crate::support::{Kiln, Run};

const DOCKERFILE: &str = "FROM busybox\nCOPY a /a\nRUN echo built > /b && cat /a >> /b\n";
const EPOCH: &str = "--build-arg=SOURCE_DATE_EPOCH=1700000000";

/// `kiln build --progress plain ARGS... CTX` with extra environment variables.
fn build_with_env(k: &Kiln, ctx: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut all = vec!["build", "--progress", "plain"];
    all.extend_from_slice(args);
    let ctx = ctx.to_string_lossy().into_owned();
    all.push(&ctx);
    let mut cmd = k.command(&all);
    for (key, value) in env {
        cmd.env(key, value);
    }
    k.run(cmd)
}

fn context(k: &Kiln) -> std::path::PathBuf {
    k.context(
        "ctx",
        &[("Dockerfile", DOCKERFILE), ("a", "from the context\n")],
    )
}

/// A kiln cache manifest: kiln's config and one layer per blob; the blob digests.
fn check_manifest(manifest: &Value) -> (String, Vec<String>) {
    assert_eq!(
        manifest["config"]["mediaType"], "application/vnd.kiln.cache.config.v1+json",
        "{manifest}"
    );
    let layers: Vec<String> = manifest["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l["digest"].as_str().expect("digest").to_string())
        .collect();
    assert_eq!(layers.len(), 3, "busybox, COPY and RUN: {manifest}");
    let config = manifest["config"]["digest"].as_str().unwrap().to_string();
    (config, layers)
}

#[test]
fn s3_cache_makes_every_step_cached_on_an_empty_root() {
    let Some(a) = Kiln::new("s3_cache_makes_every_step_cached_on_an_empty_root") else {
        return;
    };
    let Some(s3) = MotoServer::start() else {
        return;
    };
    let bucket = "kiln-cache";
    s3.create_bucket(bucket);
    let ctx = context(&a);
    let endpoint = s3.endpoint();
    let location = format!(
        "type=s3,bucket={bucket},region=us-east-1,endpoint_url={endpoint},use_path_style=true,\
         prefix=team/,name=main;branch"
    );
    let run = a
        .build(
            &ctx,
            &[
                EPOCH,
                "--cache-to",
                &format!("{location},mode=max,access_key_id=AK,secret_access_key=SK"),
            ],
        )
        .ok();
    assert_eq!(run.progress().rebuilt().len(), 3, "{}", run.stderr);
    assert!(
        run.stderr.contains("exporting cache to Amazon S3"),
        "{}",
        run.stderr
    );
    // BuildKit's keys: `<prefix>manifests/<name>` for each name, `<prefix>blobs/<digest>`.
    let get = |key: &str| {
        s3.get_object(bucket, key)
            .unwrap_or_else(|| panic!("{key} missing"))
    };
    let manifest: Value = serde_json::from_str(&get("team/manifests/main")).unwrap();
    assert_eq!(get("team/manifests/branch"), get("team/manifests/main"));
    let (config, layers) = check_manifest(&manifest);
    for blob in layers.iter().chain([&config]) {
        assert_eq!(
            s3.requests("PUT", &format!("/team/blobs/{blob}")).len(),
            1,
            "{blob}"
        );
    }

    // An empty root, credentials and region from the environment: every step CACHED, the
    // manifest and config read, no layer.
    let b = Kiln::new("s3_cache_makes_every_step_cached_on_an_empty_root (b)").unwrap();
    let gets_before = s3.requests("GET", "/team/blobs/").len();
    let from = format!(
        "type=s3,bucket={bucket},endpoint_url={endpoint},use_path_style=true,prefix=team/,name=main"
    );
    let env = [
        ("AWS_ACCESS_KEY_ID", "AK"),
        ("AWS_SECRET_ACCESS_KEY", "SK"),
        ("AWS_REGION", "us-east-1"),
    ];
    let run = build_with_env(
        &b,
        &ctx,
        &[EPOCH, "--cache-from", &from, "-o", "type=cacheonly"],
        &env,
    )
    .ok();
    let progress = run.progress();
    assert_eq!(progress.steps().len(), 3, "{}", run.stderr);
    assert!(progress.rebuilt().is_empty(), "{}", run.stderr);
    let fetched = s3.requests("GET", "/team/blobs/");
    assert_eq!(
        fetched.len() - gets_before,
        1,
        "the config only: {fetched:#?}"
    );
    assert!(fetched.last().unwrap().contains(&config), "{fetched:#?}");

    // A build that needs the files pulls the layers from the bucket.
    let c = Kiln::new("s3_cache_makes_every_step_cached_on_an_empty_root (c)").unwrap();
    let dockerfile = format!("{DOCKERFILE}RUN cat /b\n");
    let ctx2 = c.context(
        "ctx2",
        &[("Dockerfile", &dockerfile), ("a", "from the context\n")],
    );
    let run = build_with_env(&c, &ctx2, &[EPOCH, "--cache-from", &from], &env).ok();
    let progress = run.progress();
    assert_eq!(
        progress.rebuilt().len(),
        1,
        "only the new RUN: {}",
        run.stderr
    );
    for layer in &layers {
        assert!(
            !s3.requests("GET", &format!("/team/blobs/{layer}"))
                .is_empty(),
            "{layer} was not pulled"
        );
    }

    // Exporting again uploads no blob: they are there (HEAD).
    let puts = s3.requests("PUT", "/team/blobs/").len();
    let run = a
        .build(
            &ctx,
            &[
                EPOCH,
                "--cache-to",
                &format!("{location},mode=max,access_key_id=AK,secret_access_key=SK"),
            ],
        )
        .ok();
    assert!(!run.stderr.contains("writing layer"), "{}", run.stderr);
    assert_eq!(s3.requests("PUT", "/team/blobs/").len(), puts);
    // touch_refresh=0s: every blob is older than that, so those kiln holds go up again.
    a.build(
        &ctx,
        &[
            EPOCH,
            "--cache-to",
            &format!("{location},mode=max,access_key_id=AK,secret_access_key=SK,touch_refresh=0s"),
        ],
    )
    .ok();
    assert_eq!(s3.requests("PUT", "/team/blobs/").len(), puts + 4);

    // A bucket that does not exist is not created (nor by BuildKit): the export says so.
    let run = a
        .build(
            &ctx,
            &[
                "--cache-to",
                &format!(
                    "type=s3,bucket=kiln-missing,region=us-east-1,endpoint_url={endpoint},\
                     use_path_style=true,access_key_id=AK,secret_access_key=SK,ignore-error=false"
                ),
            ],
        )
        .failed();
    assert!(
        run.stderr
            .contains("the bucket or container does not exist")
            && run.stderr.contains("NoSuchBucket"),
        "{}",
        run.stderr
    );
}

#[test]
fn azblob_cache_makes_every_step_cached_on_an_empty_root() {
    let Some(a) = Kiln::new("azblob_cache_makes_every_step_cached_on_an_empty_root") else {
        return;
    };
    let Some(az) = AzuriteServer::start() else {
        return;
    };
    // Not created beforehand: the export creates it, as BuildKit's does.
    let container = "kiln-cache";
    let ctx = context(&a);
    let account_url = az.account_url();
    let location = format!(
        "type=azblob,account_url={account_url},account_name={AZURITE_ACCOUNT},\
         container={container},prefix=team"
    );
    let run = a
        .build(
            &ctx,
            &[
                EPOCH,
                "--cache-to",
                &format!("{location},mode=max,secret_access_key={AZURITE_KEY}"),
            ],
        )
        .ok();
    assert_eq!(run.progress().rebuilt().len(), 3, "{}", run.stderr);
    assert!(
        run.stderr.contains("exporting cache to Azure Blob Storage"),
        "{}",
        run.stderr
    );
    let created = az.requests(
        "PUT",
        &format!("/{AZURITE_ACCOUNT}/{container}?restype=container"),
    );
    assert!(
        created.len() == 1 && created[0].contains("\" 201"),
        "{created:#?}"
    );
    let blob_path = format!("/{AZURITE_ACCOUNT}/{container}/team/blobs/");
    let manifest_path = format!("/{AZURITE_ACCOUNT}/{container}/team/manifests/buildkit");
    assert_eq!(az.requests("PUT", &manifest_path).len(), 1);
    let uploads = az.requests("PUT", &blob_path);
    assert_eq!(uploads.len(), 4, "3 layers and the config: {uploads:#?}");

    // An empty root, the key and account from the environment: all CACHED, one blob read.
    let b = Kiln::new("azblob_cache_makes_every_step_cached_on_an_empty_root (b)").unwrap();
    let from = format!("type=azblob,account_url={account_url},container={container},prefix=team");
    let env = [
        ("AZURE_STORAGE_ACCOUNT_KEY", AZURITE_KEY),
        ("BUILDKIT_AZURE_STORAGE_ACCOUNT_NAME", AZURITE_ACCOUNT),
    ];
    let run = build_with_env(
        &b,
        &ctx,
        &[EPOCH, "--cache-from", &from, "-o", "type=cacheonly"],
        &env,
    )
    .ok();
    let progress = run.progress();
    assert_eq!(progress.steps().len(), 3, "{}", run.stderr);
    assert!(progress.rebuilt().is_empty(), "{}", run.stderr);
    assert_eq!(az.requests("GET", &manifest_path).len(), 1);
    let fetched = az.requests("GET", &blob_path);
    assert_eq!(fetched.len(), 1, "the config only: {fetched:#?}");

    // Exporting again uploads no blob.
    let run = a
        .build(
            &ctx,
            &[
                EPOCH,
                "--cache-to",
                &format!("{location},mode=max,secret_access_key={AZURITE_KEY}"),
            ],
        )
        .ok();
    assert!(!run.stderr.contains("writing layer"), "{}", run.stderr);
    assert_eq!(az.requests("PUT", &blob_path).len(), 4);
}

#[test]
fn unreachable_bucket_is_a_warning_unless_ignore_error_is_false() {
    let Some(k) = Kiln::new("unreachable_bucket_is_a_warning_unless_ignore_error_is_false") else {
        return;
    };
    let ctx = k.context("ctx", &[("Dockerfile", "FROM busybox\nRUN echo x > /x\n")]);
    let nowhere = "type=s3,bucket=b,region=us-east-1,endpoint_url=http://127.0.0.1:1,\
                   use_path_style=true,access_key_id=AK,secret_access_key=SK";
    let run = k
        .build(&ctx, &["--cache-from", nowhere, "--cache-to", nowhere])
        .ok();
    assert!(
        run.stderr
            .contains("failed to import cache from s3://b/ at http://127.0.0.1:1"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("failed to export cache to s3://b/ at http://127.0.0.1:1"),
        "{}",
        run.stderr
    );
    let run = k
        .build(
            &ctx,
            &["--cache-to", &format!("{nowhere},ignore-error=false")],
        )
        .failed();
    assert!(
        run.stderr.contains("failed to check") && run.stderr.contains("Connection refused"),
        "{}",
        run.stderr
    );

    // A bad attribute is named before anything runs.
    let run = k
        .build(
            &ctx,
            &[
                "--cache-to",
                "type=s3,bucket=b,region=r,upload_parallelism=0",
            ],
        )
        .failed();
    assert!(
        run.stderr.contains("invalid upload_parallelism `0`"),
        "{}",
        run.stderr
    );
}
