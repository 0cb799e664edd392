//! Push to and pull from a real `docker-registry` (Debian's distribution build) on loopback:
//! plain, through a `docker.io` mirror entry, with htpasswd basic auth, with TLS and client
//! certificates from a CA the test makes, and behind a proxy that injects 500s and dropped
//! connections.
//!
//! Skipped with a message when the binary is missing, unless `KILN_TEST_REQUIRE_EXTERNAL=1`.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kiln_oci::{Digest, Platform, Reference, media_type};
use kiln_registry::{
    BlobPush, Cause, Client, Credential, Error, HostConfig, KeyPair, RegistryConfig, RetryPolicy,
    StaticCredentials,
};
use kiln_test::{Fault, FaultProxy, RegistryOptions, TestRegistry};
use support::{TestImage, digest_of, index_of};

async fn start_registry() -> Option<TestRegistry> {
    TestRegistry::start(RegistryOptions::default())
}

async fn push_image(
    client: &Client,
    reference: &Reference,
    image: &TestImage,
    dir: &std::path::Path,
) {
    for (digest, bytes) in [
        (&image.layer_digest, &image.layer),
        (&image.config_digest, &image.config),
    ] {
        let path = dir.join(digest.replace(':', "-"));
        std::fs::write(&path, bytes).unwrap();
        let digest = kiln_oci::parse_digest(digest).unwrap();
        client
            .push_blob(reference, &digest, bytes.len() as u64, &path)
            .await
            .unwrap();
        assert!(client.blob_exists(reference, &digest).await.unwrap());
    }
    let by_digest = reference.with_digest(&image.digest);
    let pushed = client
        .push_manifest(&by_digest, &image.media_type, &image.manifest)
        .await
        .unwrap();
    assert_eq!(pushed.to_string(), image.digest);
}

#[tokio::test]
async fn push_then_pull_through_docker_io_mirror() {
    let Some(registry) = start_registry().await else {
        return;
    };
    let host = registry.host.clone();
    let mut config = RegistryConfig::new();
    config.insert(
        host.clone(),
        HostConfig {
            http: true,
            ..Default::default()
        },
    );
    config.insert(
        "docker.io".into(),
        HostConfig {
            mirrors: vec![host.clone()],
            ..Default::default()
        },
    );
    let client = Client::new(config).unwrap();
    let work = tempfile::tempdir().unwrap();

    // Two single-platform images and an index over them, pushed straight to the registry.
    let amd64 = TestImage::new("linux/amd64", false);
    let arm64 = TestImage::new("linux/arm64", true);
    let direct: Reference = format!("{host}/library/kiln-test:multi").parse().unwrap();
    let missing = kiln_oci::parse_digest(&amd64.layer_digest).unwrap();
    assert!(!client.blob_exists(&direct, &missing).await.unwrap());
    push_image(&client, &direct, &amd64, work.path()).await;
    push_image(&client, &direct, &arm64, work.path()).await;
    let (index, index_digest) =
        index_of(&[("linux/amd64", &amd64), ("linux/arm64", &arm64)], false);
    let pushed = client
        .push_manifest(&direct, media_type::OCI_INDEX, &index)
        .await
        .unwrap();
    assert_eq!(pushed.to_string(), index_digest);

    // Pulled as if from Docker Hub: only the mirror can answer, there is no internet.
    let hub: Reference = "kiln-test:multi".parse().unwrap();
    let want: Platform = "linux/arm64".parse().unwrap();
    let resolved = client.resolve(&hub, &want).await.unwrap();
    assert_eq!(resolved.digest.to_string(), arm64.digest);
    assert_eq!(
        resolved.index_digest.map(|d| d.to_string()),
        Some(index_digest.clone())
    );
    assert_eq!(resolved.media_type, media_type::DOCKER_MANIFEST);
    assert_eq!(resolved.config_bytes, arm64.config);
    assert_eq!(resolved.config.architecture().to_string(), "arm64");

    let layer = &resolved.manifest.layers()[0];
    let mut out = Vec::new();
    client.fetch_blob(&hub, layer, &mut out).await.unwrap();
    assert_eq!(out, arm64.layer);
    assert_eq!(digest_of(&out), layer.digest().to_string());

    // By digest too, and the amd64 side of the index.
    let by_digest: Reference = format!("kiln-test@{index_digest}").parse().unwrap();
    let resolved = client
        .resolve(&by_digest, &"linux/amd64".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(resolved.digest.to_string(), amd64.digest);
    assert_eq!(resolved.media_type, media_type::OCI_MANIFEST);

    // A tag the registry does not have: the registry's error code reaches the caller.
    let err = client
        .resolve(&"kiln-test:absent".parse().unwrap(), &want)
        .await
        .unwrap_err();
    let chain = format!("{:?}", anyhow::Error::from(err));
    assert!(
        chain.contains("failed to resolve `docker.io/library/kiln-test:absent`"),
        "{chain}"
    );
    // The mirror's answer is kept alongside the (unreachable) registry's.
    assert!(
        chain.contains(&format!("all mirrors failed ({host}: docker.io/library/kiln-test:absent: not found: GET http://{host}/v2/library/kiln-test/manifests/absent returned 404 Not Found: MANIFEST_UNKNOWN")),
        "{chain}"
    );
}

fn http(host: &str) -> (String, HostConfig) {
    (
        host.to_string(),
        HostConfig {
            http: true,
            ..Default::default()
        },
    )
}

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        attempts: 4,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
    }
}

/// Writes `bytes` as a blob file and returns (digest, size, path).
fn blob_file(dir: &std::path::Path, bytes: &[u8]) -> (Digest, u64, std::path::PathBuf) {
    let digest = kiln_oci::parse_digest(&digest_of(bytes)).unwrap();
    let path = dir.join(digest.digest());
    std::fs::write(&path, bytes).unwrap();
    (digest, bytes.len() as u64, path)
}

/// Bytes that do not compress into a pattern a registry could special-case.
fn noise(len: usize, seed: u8) -> Vec<u8> {
    let mut x = u32::from(seed).wrapping_mul(2_654_435_761) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

#[tokio::test]
async fn htpasswd_basic_auth_push_pull_and_login() {
    let Some(registry) = TestRegistry::start(RegistryOptions {
        htpasswd: Some(("kiln".into(), "s3cret".into())),
        ..Default::default()
    }) else {
        return;
    };
    let host = registry.host.clone();
    let config: RegistryConfig = [http(&host)].into_iter().collect();
    let creds = |password: &str| {
        Arc::new(StaticCredentials(HashMap::from([(
            host.clone(),
            Credential::Basic {
                username: "kiln".into(),
                password: password.into(),
            },
        )])))
    };
    let client = Client::new(config.clone())
        .unwrap()
        .with_credentials(creds("s3cret"));
    let work = tempfile::tempdir().unwrap();
    let image = TestImage::new("linux/amd64", true);
    let reference: Reference = format!("{host}/private/app:v1").parse().unwrap();
    push_image(&client, &reference, &image, work.path()).await;
    let resolved = client
        .resolve(&reference, &"linux/amd64".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(resolved.digest.to_string(), image.digest);

    // Anonymous: the registry's basic challenge finds no credentials.
    let anonymous = Client::new(config.clone()).unwrap();
    let err = anonymous
        .resolve(&reference, &"linux/amd64".parse().unwrap())
        .await
        .unwrap_err();
    let Error::Resolve { source, .. } = &err else {
        panic!("{err:?}")
    };
    assert!(matches!(**source, Cause::NoCredentials { .. }), "{err:?}");

    client
        .login(
            &host,
            &Credential::Basic {
                username: "kiln".into(),
                password: "s3cret".into(),
            },
        )
        .await
        .unwrap();
    let err = anonymous
        .login(
            &host,
            &Credential::Basic {
                username: "kiln".into(),
                password: "wrong".into(),
            },
        )
        .await
        .unwrap_err();
    assert!(format!("{:?}", anyhow::Error::from(err)).contains("401"));
    let wrong = Client::new(config)
        .unwrap()
        .with_credentials(creds("wrong"));
    assert!(
        wrong
            .resolve(&reference, &"linux/amd64".parse().unwrap())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn tls_with_a_test_ca_and_client_certificates() {
    let Some(registry) = TestRegistry::start(RegistryOptions {
        tls: true,
        client_certs: true,
        ..Default::default()
    }) else {
        return;
    };
    let certs = registry.tls.clone().unwrap();
    let host = registry.host.clone();
    let keypair = KeyPair {
        key: certs.client_key.clone(),
        cert: certs.client_cert.clone(),
    };
    let client_with = |cfg: HostConfig| {
        Client::new([(host.clone(), cfg)].into_iter().collect())
            .unwrap()
            .with_retry(RetryPolicy {
                attempts: 1,
                ..fast_retry()
            })
    };
    let full = client_with(HostConfig {
        ca: vec![certs.ca.clone()],
        keypair: vec![keypair.clone()],
        ..Default::default()
    });
    let work = tempfile::tempdir().unwrap();
    let image = TestImage::new("linux/arm/v7", false);
    let reference: Reference = format!("{host}/secure/app:v1").parse().unwrap();
    push_image(&full, &reference, &image, work.path()).await;
    let arm: Platform = "linux/arm/v7".parse().unwrap();
    let resolved = full.resolve(&reference, &arm).await.unwrap();
    assert_eq!(resolved.digest.to_string(), image.digest);

    // `insecure` skips verifying the server, but the registry still wants our certificate.
    let insecure = client_with(HostConfig {
        insecure: true,
        keypair: vec![keypair],
        ..Default::default()
    });
    insecure.resolve(&reference, &arm).await.unwrap();

    // Without the CA the server is not trusted; without the key pair we are not.
    let no_ca = client_with(HostConfig::default());
    let err = no_ca.resolve(&reference, &arm).await.unwrap_err();
    assert!(format!("{:?}", anyhow::Error::from(err)).contains("certificate"));
    let no_cert = client_with(HostConfig {
        ca: vec![certs.ca.clone()],
        ..Default::default()
    });
    assert!(no_cert.resolve(&reference, &arm).await.is_err());
    // Plain HTTP to a TLS registry fails too, rather than silently downgrading.
    assert!(
        client_with(HostConfig {
            http: true,
            ..Default::default()
        })
        .resolve(&reference, &arm)
        .await
        .is_err()
    );
}

/// A registry behind a fault-injecting proxy, with uploads chunked every `chunk` bytes.
fn proxied(registry: &TestRegistry, chunk: u64, uploads: usize) -> (FaultProxy, Client) {
    let proxy = FaultProxy::start(&registry.host).unwrap();
    let config: RegistryConfig = [(
        proxy.host.clone(),
        HostConfig {
            http: true,
            chunk_size: Some(chunk),
            max_concurrent_uploads: Some(uploads),
            ..Default::default()
        },
    )]
    .into_iter()
    .collect();
    let client = Client::new(config).unwrap().with_retry(fast_retry());
    (proxy, client)
}

/// Fetches the blob `digest` back through `client` and checks it is `bytes`.
async fn assert_reads_back(
    client: &Client,
    reference: &Reference,
    digest: &Digest,
    size: u64,
    bytes: &[u8],
) {
    let desc = kiln_oci::Descriptor::new(media_type::OCI_LAYER_GZIP.into(), size, digest.clone());
    let mut back = Vec::new();
    client
        .fetch_blob(reference, &desc, &mut back)
        .await
        .unwrap();
    assert_eq!(back, bytes);
}

fn count(log: &[String], prefix: &str) -> usize {
    log.iter().filter(|l| l.starts_with(prefix)).count()
}

#[tokio::test]
async fn chunked_upload_resumes_after_a_500_and_a_dropped_connection() {
    let Some(registry) = start_registry().await else {
        return;
    };
    let (proxy, client) = proxied(&registry, 1000, 4);
    let work = tempfile::tempdir().unwrap();
    let bytes = noise(4500, 1);
    let (digest, size, path) = blob_file(work.path(), &bytes);
    let reference: Reference = format!("{}/chunked/blob:x", proxy.host).parse().unwrap();

    // The second chunk gets a 500, the fourth loses its connection halfway: neither reaches
    // the registry, which keeps what it had, so both resume from there.
    proxy.fail("PATCH", "/blobs/uploads/", 1, 1, Fault::ServerError);
    proxy.fail("PATCH", "/blobs/uploads/", 2, 1, Fault::Drop);
    let pushed = client
        .push_blob(&reference, &digest, size, &path)
        .await
        .unwrap();
    assert_eq!(pushed, BlobPush::Uploaded);
    let log = proxy.log();
    assert_eq!(count(&log, "POST "), 1, "one upload session: {log:#?}");
    assert_eq!(
        count(&log, "PATCH "),
        7,
        "five chunks, two of them twice: {log:#?}"
    );
    assert_eq!(
        count(&log, "GET /v2/chunked/blob/blobs/uploads/"),
        2,
        "{log:#?}"
    );
    assert_eq!(count(&log, "PUT "), 1, "{log:#?}");

    assert_reads_back(&client, &reference, &digest, size, &bytes).await;
}

#[tokio::test]
async fn monolithic_upload_restarts_after_failures_and_manifest_put_is_retried() {
    let Some(registry) = start_registry().await else {
        return;
    };
    let (proxy, client) = proxied(&registry, 0, 4);
    let work = tempfile::tempdir().unwrap();
    let image = TestImage::new("linux/amd64", false);
    let reference: Reference = format!("{}/mono/app:v1", proxy.host).parse().unwrap();
    proxy.fail("PUT", "/blobs/uploads/", 0, 1, Fault::Drop);
    proxy.fail("PUT", "/blobs/uploads/", 0, 1, Fault::ServerError);
    proxy.fail("PUT", "/manifests/", 0, 1, Fault::ServerError);
    push_image(&client, &reference, &image, work.path()).await;
    let log = proxy.log();
    // Each failed PUT costs a new session: 2 blobs + 2 restarts.
    assert_eq!(count(&log, "POST "), 4, "{log:#?}");
    assert_eq!(count(&log, "PUT /v2/mono/app/manifests/"), 2, "{log:#?}");
    let resolved = client
        .resolve(
            &reference.with_digest(&image.digest),
            &"linux/amd64".parse().unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resolved.config_bytes, image.config);
}

#[tokio::test]
async fn failing_uploads_fail_cleanly_and_leave_no_manifest() {
    let Some(registry) = start_registry().await else {
        return;
    };
    let (proxy, client) = proxied(&registry, 0, 4);
    let work = tempfile::tempdir().unwrap();
    let image = TestImage::new("linux/amd64", false);
    let reference: Reference = format!("{}/broken/app:v1", proxy.host).parse().unwrap();
    proxy.fail("PUT", "/blobs/uploads/", 0, 100, Fault::ServerError);
    let (digest, size, path) = blob_file(work.path(), &image.layer);
    let err = client
        .push_blob(&reference, &digest, size, &path)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::PushBlob { digest: d, .. } if *d == digest),
        "{err:?}"
    );
    assert!(format!("{err:?}").contains("500"), "{err:?}");
    assert_eq!(count(&proxy.log(), "PUT "), 4, "every attempt used");

    // Even asked to, the registry refuses a manifest whose blobs it lacks.
    let err = client
        .push_manifest(&reference, &image.media_type, &image.manifest)
        .await
        .unwrap_err();
    assert!(
        format!("{err:?}").contains("MANIFEST_BLOB_UNKNOWN")
            || format!("{err:?}").contains("BLOB_UNKNOWN"),
        "{err:?}"
    );
    let direct: Reference = format!("{}/broken/app:v1", registry.host).parse().unwrap();
    let plain = Client::new([http(&registry.host)].into_iter().collect()).unwrap();
    assert!(
        plain
            .resolve(&direct, &"linux/amd64".parse().unwrap())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn mounts_across_repositories_and_bounds_parallel_uploads() {
    let Some(registry) = start_registry().await else {
        return;
    };
    let (proxy, client) = proxied(&registry, 0, 2);
    let work = tempfile::tempdir().unwrap();
    let blobs: Vec<_> = (0..6u8)
        .map(|i| blob_file(work.path(), &noise(2000, i + 10)))
        .collect();
    let base: Reference = format!("{}/lib/base:1", proxy.host).parse().unwrap();
    let pushes = blobs
        .iter()
        .map(|(d, s, p)| client.push_blob(&base, d, *s, p));
    let results = futures::future::try_join_all(pushes).await.unwrap();
    assert!(results.iter().all(|r| *r == BlobPush::Uploaded));
    // Six uploads asked for at once; never more than two reach the registry together.
    let most = proxy.max_concurrent_uploads();
    assert!((1..=2).contains(&most), "{most} uploads at once");

    proxy.clear_log();
    let app: Reference = format!("{}/lib/app:1", proxy.host).parse().unwrap();
    for (d, s, p) in &blobs {
        assert_eq!(
            client.push_blob(&app, d, *s, p).await.unwrap(),
            BlobPush::Mounted
        );
    }
    let log = proxy.log();
    assert_eq!(
        count(&log, "POST /v2/lib/app/blobs/uploads/?mount=sha256%3A"),
        6,
        "{log:#?}"
    );
    assert!(
        log.iter()
            .all(|l| l.contains("from=lib%2Fbase") || !l.starts_with("POST"))
    );
    assert_eq!(count(&log, "PUT "), 0, "{log:#?}");
    // And the second push of the same blobs finds them all there.
    proxy.clear_log();
    for (d, s, p) in &blobs {
        assert_eq!(
            client.push_blob(&app, d, *s, p).await.unwrap(),
            BlobPush::Exists
        );
    }
    assert!(proxy.log().iter().all(|l| l.starts_with("HEAD ")));
}

/// Pushes `bytes` with `push_blob_streamed`, fed by a stand-in for a compressor: it writes them
/// into a file in 64 KiB pieces, sending each into the upload's stream too (and carries on into
/// the file when the stream is gone), then gives the finished blob (`None` with `fail`, before
/// the end).
async fn push_made(
    client: &Client,
    reference: &Reference,
    dir: &std::path::Path,
    bytes: Vec<u8>,
    fail: bool,
) -> kiln_registry::Result<Option<(kiln_registry::MadeBlob, BlobPush)>> {
    use std::io::Write;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let path = dir.join("made");
    std::thread::spawn(move || {
        let mut file = std::fs::File::create(&path).unwrap();
        let pieces: Vec<&[u8]> = bytes.chunks(64 << 10).collect();
        let stop = if fail { pieces.len() / 2 } else { pieces.len() };
        for piece in &pieces[..stop] {
            file.write_all(piece).unwrap();
            let _ = tx.blocking_send(piece.to_vec());
        }
        drop(tx);
        let made = (!fail).then(|| kiln_registry::MadeBlob {
            digest: kiln_oci::parse_digest(&digest_of(&bytes)).unwrap(),
            size: bytes.len() as u64,
            path,
        });
        let _ = done_tx.send(made);
    });
    let stream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|o| o.map(Ok)));
    client
        .push_blob_streamed(reference, stream, async { done_rx.await.ok().flatten() })
        .await
}

#[tokio::test]
async fn streamed_upload_is_one_patch_then_the_put() {
    let Some(registry) = start_registry().await else {
        return;
    };
    let (proxy, client) = proxied(&registry, 1 << 20, 4);
    let work = tempfile::tempdir().unwrap();
    let bytes = noise(3 << 20, 7);
    let reference: Reference = format!("{}/streamed/ok:x", proxy.host).parse().unwrap();
    let (blob, pushed) = push_made(&client, &reference, work.path(), bytes.clone(), false)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pushed, BlobPush::Uploaded);
    let log = proxy.log();
    assert_eq!(count(&log, "HEAD "), 0, "{log:#?}");
    assert_eq!(count(&log, "POST "), 1, "{log:#?}");
    assert_eq!(count(&log, "PATCH "), 1, "one streamed PATCH: {log:#?}");
    assert_eq!(count(&log, "PUT "), 1, "{log:#?}");
    assert_reads_back(&client, &reference, &blob.digest, blob.size, &bytes).await;
}

#[tokio::test]
async fn streamed_upload_dropped_mid_patch_goes_up_again_from_the_file() {
    let Some(registry) = start_registry().await else {
        return;
    };
    let (proxy, client) = proxied(&registry, 1 << 20, 4);
    let work = tempfile::tempdir().unwrap();
    let reference: Reference = format!("{}/streamed/drop:v1", proxy.host).parse().unwrap();
    // A 3 MiB layer, streamed; the registry's end of the PATCH goes away after 256 KiB.
    let bytes = noise(3 << 20, 8);
    let layer_digest = digest_of(&bytes);
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{layer_digest}"]}}}}"#
    )
    .into_bytes();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_MANIFEST,
        "config": {"mediaType": media_type::OCI_CONFIG, "digest": digest_of(&config), "size": config.len()},
        "layers": [{"mediaType": media_type::OCI_LAYER_GZIP, "digest": layer_digest, "size": bytes.len()}],
    });
    let manifest = serde_json::to_vec(&manifest).unwrap();
    proxy.fail("PATCH", "/blobs/uploads/", 0, 1, Fault::Drop);
    let (blob, pushed) = push_made(&client, &reference, work.path(), bytes.clone(), false)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pushed, BlobPush::Uploaded);
    assert_eq!(blob.digest.to_string(), layer_digest);
    let log = proxy.log();
    assert!(
        log.iter()
            .any(|l| l.starts_with("PATCH ") && l.ends_with("!drop")),
        "{log:#?}"
    );
    // Then push_blob's way, from the file: HEAD, a new session, chunks of 1 MiB, the PUT.
    assert_eq!(count(&log, "HEAD "), 1, "{log:#?}");
    assert_eq!(count(&log, "POST "), 2, "{log:#?}");
    assert_eq!(count(&log, "PUT "), 1, "{log:#?}");

    // The image's config and manifest after it: the registry serves the whole image.
    let (cd, cs, cp) = blob_file(work.path(), &config);
    client.push_blob(&reference, &cd, cs, &cp).await.unwrap();
    client
        .push_manifest(&reference, media_type::OCI_MANIFEST, &manifest)
        .await
        .unwrap();
    let resolved = client
        .resolve(&reference, &"linux/amd64".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(resolved.config_bytes, config);
    assert_reads_back(&client, &reference, &blob.digest, blob.size, &bytes).await;
}

#[tokio::test]
async fn streamed_upload_whose_maker_fails_is_cancelled() {
    let Some(registry) = start_registry().await else {
        return;
    };
    let (proxy, client) = proxied(&registry, 1 << 20, 4);
    let work = tempfile::tempdir().unwrap();
    let reference: Reference = format!("{}/streamed/fail:x", proxy.host).parse().unwrap();
    let pushed = push_made(&client, &reference, work.path(), noise(1 << 20, 9), true)
        .await
        .unwrap();
    assert_eq!(pushed, None);
    let log = proxy.log();
    assert_eq!(count(&log, "PUT "), 0, "never closed: {log:#?}");
    assert_eq!(count(&log, "DELETE "), 1, "cancelled: {log:#?}");
}
