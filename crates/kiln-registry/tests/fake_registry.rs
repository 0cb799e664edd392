//! The client against an in-process fake registry: auth flows, platform selection, digest
//! checks, mirrors, retries and pushes.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use kiln_oci::{Descriptor, Platform, Reference, media_type};
use kiln_registry::{
    BlobPush, Cause, Client, Credential, Error, HostConfig, RegistryConfig, RetryPolicy,
    StaticCredentials,
};
use support::{Auth, Fake, TestImage, digest_of, index_of};

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        attempts: 3,
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
    }
}

fn http_hosts(hosts: &[&str]) -> RegistryConfig {
    hosts
        .iter()
        .map(|h| {
            (
                h.to_string(),
                HostConfig {
                    http: true,
                    ..Default::default()
                },
            )
        })
        .collect()
}

fn client_for(hosts: &[&str]) -> Client {
    Client::new(http_hosts(hosts))
        .unwrap()
        .with_retry(fast_retry())
}

fn reference(fake: &Fake, repo_tag: &str) -> Reference {
    format!("{}/{repo_tag}", fake.host()).parse().unwrap()
}

fn amd64() -> Platform {
    "linux/amd64".parse().unwrap()
}

fn creds_for(host: &str, user: &str, pass: &str) -> Arc<StaticCredentials> {
    Arc::new(StaticCredentials(HashMap::from([(
        host.to_string(),
        Credential::Basic {
            username: user.into(),
            password: pass.into(),
        },
    )])))
}

#[tokio::test]
async fn bearer_challenge_fetches_token_and_retries() {
    let fake = Fake::start(Auth::Bearer {
        expires_in: 300,
        basic: None,
    })
    .await;
    let image = TestImage::new("linux/amd64", false);
    let digest = fake.put_image("app", "v1", &image);
    let client = client_for(&[&fake.host()]);

    let resolved = client
        .resolve(&reference(&fake, "app:v1"), &amd64())
        .await
        .unwrap();
    assert_eq!(resolved.digest.to_string(), digest);
    assert_eq!(resolved.config_bytes, image.config);
    assert_eq!(resolved.index_digest, None);

    let log = fake.log();
    assert_eq!(
        fake.calls(),
        [
            "GET /v2/app/manifests/v1",
            "GET /token",
            "GET /v2/app/manifests/v1",
            format!("GET /v2/app/blobs/{}", image.config_digest).as_str(),
        ]
    );
    assert_eq!(log[0].authorization, None);
    assert!(log[1].query.contains("scope=repository%3Aapp%3Apull"));
    assert!(log[1].query.contains("service=fake"));
    assert_eq!(log[1].authorization, None, "anonymous token request");
    assert_eq!(log[2].authorization.as_deref(), Some("Bearer tok-1"));
    assert_eq!(log[3].authorization.as_deref(), Some("Bearer tok-1"));
}

#[tokio::test]
async fn tokens_are_cached_per_scope_until_they_expire() {
    for (expires_in, want_token_requests) in [(300, 2), (1, 6)] {
        let fake = Fake::start(Auth::Bearer {
            expires_in,
            basic: None,
        })
        .await;
        let image = TestImage::new("linux/amd64", false);
        fake.put_image("a", "v1", &image);
        fake.put_image("b", "v1", &image);
        let client = client_for(&[&fake.host()]);
        for repo in ["a:v1", "a:v1", "b:v1"] {
            client
                .resolve(&reference(&fake, repo), &amd64())
                .await
                .unwrap();
        }
        // Long-lived: one token per repository scope. Short-lived: one per request, fetched up
        // front because the realm is known after the first challenge.
        assert_eq!(
            fake.token_requests().len(),
            want_token_requests,
            "expires_in={expires_in}: {:?}",
            fake.calls()
        );
        let challenges = fake
            .log()
            .iter()
            .filter(|l| l.path.starts_with("/v2/") && l.authorization.is_none())
            .count();
        assert_eq!(challenges, 1, "only the first request goes unauthenticated");
    }
}

#[tokio::test]
async fn token_service_gets_basic_credentials() {
    let fake = Fake::start(Auth::Bearer {
        expires_in: 300,
        basic: Some(("alice".into(), "pw".into())),
    })
    .await;
    let image = TestImage::new("linux/amd64", true);
    fake.put_image("app", "v1", &image);

    let anonymous = client_for(&[&fake.host()]);
    let err = anonymous
        .resolve(&reference(&fake, "app:v1"), &amd64())
        .await
        .unwrap_err();
    let Error::Resolve { source, .. } = &err else {
        panic!("unexpected {err:?}")
    };
    assert!(matches!(**source, Cause::Token { .. }), "{source:?}");
    assert!(format!("{:?}", anyhow::Error::from(err)).contains("DENIED: bad credentials"));

    let client =
        client_for(&[&fake.host()]).with_credentials(creds_for(&fake.host(), "alice", "pw"));
    let resolved = client
        .resolve(&reference(&fake, "app:v1"), &amd64())
        .await
        .unwrap();
    assert_eq!(resolved.media_type, media_type::DOCKER_MANIFEST);
    let token_req = fake.token_requests().pop().unwrap();
    assert!(token_req.query.contains("account=alice"));
    assert!(token_req.authorization.unwrap().starts_with("Basic "));
}

#[tokio::test]
async fn basic_challenge_sends_credentials() {
    let fake = Fake::start(Auth::Basic("bob".into(), "secret".into())).await;
    let image = TestImage::new("linux/amd64", false);
    fake.put_image("app", "v1", &image);

    let err = client_for(&[&fake.host()])
        .resolve(&reference(&fake, "app:v1"), &amd64())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Resolve { source, .. } if matches!(**source, Cause::NoCredentials { .. })),
        "{err:?}"
    );

    let wrong =
        client_for(&[&fake.host()]).with_credentials(creds_for(&fake.host(), "bob", "nope"));
    let err = wrong
        .resolve(&reference(&fake, "app:v1"), &amd64())
        .await
        .unwrap_err();
    assert!(
        format!("{:?}", anyhow::Error::from(err)).contains("401 Unauthorized"),
        "wrong password surfaces the 401"
    );

    let fake = Fake::start(Auth::Basic("bob".into(), "secret".into())).await;
    fake.put_image("app", "v1", &image);
    let client =
        client_for(&[&fake.host()]).with_credentials(creds_for(&fake.host(), "bob", "secret"));
    client
        .resolve(&reference(&fake, "app:v1"), &amd64())
        .await
        .unwrap();
    let log = fake.log();
    assert_eq!(log.len(), 3, "{:?}", fake.calls());
    assert_eq!(log[0].authorization, None);
    // After the challenge the host is known to want basic auth: sent up front from then on.
    for l in &log[1..] {
        assert!(l.authorization.as_deref().unwrap().starts_with("Basic "));
    }
}

#[tokio::test]
async fn manifest_list_selects_platform_including_variant() {
    for docker in [false, true] {
        let fake = Fake::start(Auth::None).await;
        let platforms = [
            "linux/amd64",
            "linux/arm/v6",
            "linux/arm/v7",
            "linux/arm64/v8",
        ];
        let images: Vec<TestImage> = platforms
            .iter()
            .map(|p| TestImage::new(p, docker))
            .collect();
        for img in &images {
            fake.put_image("multi", &img.digest, img);
        }
        let entries: Vec<(&str, &TestImage)> = platforms.iter().copied().zip(&images).collect();
        let (index, index_digest) = index_of(&entries, docker);
        let index_mt = if docker {
            media_type::DOCKER_MANIFEST_LIST
        } else {
            media_type::OCI_INDEX
        };
        fake.put_manifest("multi", "latest", index_mt, &index);
        let client = client_for(&[&fake.host()]);

        for (want, expect) in [
            ("linux/arm/v7", 2),
            ("linux/arm/v6", 1),
            ("linux/arm64", 3),
            ("linux/amd64", 0),
        ] {
            let resolved = client
                .resolve(&reference(&fake, "multi"), &want.parse().unwrap())
                .await
                .unwrap();
            assert_eq!(resolved.digest.to_string(), images[expect].digest, "{want}");
            assert_eq!(
                resolved.index_digest.as_ref().map(ToString::to_string),
                Some(index_digest.clone())
            );
            assert_eq!(resolved.manifest_bytes, images[expect].manifest);
            assert_eq!(resolved.media_type, images[expect].media_type);
            let env = resolved.config.config().as_ref().unwrap().env().clone();
            assert_eq!(env, Some(vec![format!("PLATFORM={}", platforms[expect])]));
        }
        let err = client
            .resolve(
                &reference(&fake, "multi"),
                &"linux/riscv64".parse().unwrap(),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::Resolve { source, .. } if matches!(**source, Cause::PlatformNotFound { .. })),
            "{err:?}"
        );
    }
}

#[tokio::test]
async fn resolve_by_digest_detects_tampered_manifest_and_config() {
    let fake = Fake::start(Auth::None).await;
    let image = TestImage::new("linux/amd64", false);
    fake.put_image("app", "v1", &image);
    let client = client_for(&[&fake.host()]);
    let by_digest = reference(&fake, &format!("app@{}", image.digest));
    client.resolve(&by_digest, &amd64()).await.unwrap();

    // The registry serves different bytes under the digest.
    let mut tampered = image.manifest.clone();
    tampered.push(b' ');
    fake.put_manifest("app", &image.digest, &image.media_type, &tampered);
    let err = client.resolve(&by_digest, &amd64()).await.unwrap_err();
    assert!(err.is_digest_mismatch(), "{err:?}");

    // A config blob that does not hash to the manifest's config digest.
    fake.put_blob(&image.config_digest, b"{\"architecture\":\"evil\"}");
    let err = client
        .resolve(&reference(&fake, "app:v1"), &amd64())
        .await
        .unwrap_err();
    assert!(err.is_digest_mismatch(), "{err:?}");
    assert!(
        format!("{:?}", anyhow::Error::from(err)).contains("image config"),
        "error names the config"
    );
}

#[tokio::test]
async fn fetch_blob_verifies_digest_and_size() {
    let fake = Fake::start(Auth::None).await;
    let client = client_for(&[&fake.host()]);
    let r = reference(&fake, "app:v1");
    let good = b"hello layer".to_vec();
    let desc = |bytes: &[u8]| {
        Descriptor::new(
            media_type::OCI_LAYER_GZIP.into(),
            bytes.len() as u64,
            kiln_oci::parse_digest(&digest_of(bytes)).unwrap(),
        )
    };
    fake.put_blob(&digest_of(&good), &good);
    let mut out = Vec::new();
    client.fetch_blob(&r, &desc(&good), &mut out).await.unwrap();
    assert_eq!(out, good);

    // Same length, different bytes.
    let d = desc(b"hello LAYER");
    fake.put_blob(d.digest().as_ref(), &good);
    let err = client
        .fetch_blob(&r, &d, &mut Vec::new())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::DigestMismatch { digest, .. } if digest == d.digest()),
        "{err:?}"
    );

    // Longer than the descriptor says.
    let d = desc(b"short");
    fake.put_blob(d.digest().as_ref(), b"short but longer");
    let err = client
        .fetch_blob(&r, &d, &mut Vec::new())
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            Error::DigestMismatch {
                source: kiln_registry::Mismatch::Size { expected: 5, .. },
                ..
            }
        ),
        "{err:?}"
    );

    // Missing blob: registry error code in the cause chain.
    let err = client
        .fetch_blob(&r, &desc(b"absent"), &mut Vec::new())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::FetchBlob { .. }));
    assert!(format!("{:?}", anyhow::Error::from(err)).contains("BLOB_UNKNOWN"));
}

#[tokio::test]
async fn mirrors_are_tried_in_order_then_upstream() {
    let seq = Arc::new(AtomicUsize::new(0));
    let broken = Fake::start_with_counter(Auth::None, seq.clone()).await;
    let empty = Fake::start_with_counter(Auth::None, seq.clone()).await;
    let upstream = Fake::start_with_counter(Auth::None, seq.clone()).await;
    let image = TestImage::new("linux/amd64", false);
    upstream.put_image("library/app", "v1", &image);
    // Every request to the first mirror fails (retries included).
    broken.fail.lock().unwrap().extend([500; 32]);

    let mut config = http_hosts(&[&broken.host(), &empty.host(), &upstream.host()]);
    config.get_mut(&upstream.host()).unwrap().mirrors = vec![broken.host(), empty.host()];
    let client = Client::new(config).unwrap().with_retry(fast_retry());
    let r = reference(&upstream, "library/app:v1");
    let resolved = client.resolve(&r, &amd64()).await.unwrap();
    assert_eq!(resolved.digest.to_string(), image.digest);

    let last_broken = broken.log().iter().map(|l| l.seq).max().unwrap();
    let empty_log = empty.log();
    assert_eq!(empty.calls(), ["GET /v2/library/app/manifests/v1"]);
    assert!(last_broken < empty_log[0].seq);
    assert!(empty_log[0].seq < upstream.log()[0].seq);
    assert_eq!(broken.log().len(), 3, "5xx retried per the policy");

    // Once a mirror has the image it serves the blobs too, and upstream is not asked.
    empty.put_image("library/app", "v1", &image);
    let before = upstream.log().len();
    let resolved = client.resolve(&r, &amd64()).await.unwrap();
    let layer = &resolved.manifest.layers()[0];
    let mut out = Vec::new();
    client.fetch_blob(&r, layer, &mut out).await.unwrap();
    assert_eq!(out, image.layer);
    assert_eq!(upstream.log().len(), before);
    assert!(
        empty
            .calls()
            .contains(&format!("GET /v2/library/app/blobs/{}", image.layer_digest))
    );

    // Pushes ignore mirrors.
    let digest = client
        .push_manifest(&r, &image.media_type, &image.manifest)
        .await
        .unwrap();
    assert_eq!(digest.to_string(), image.digest);
    assert!(
        upstream
            .calls()
            .contains(&"PUT /v2/library/app/manifests/v1".to_string())
    );
    assert!(!empty.calls().iter().any(|c| c.starts_with("PUT")));
}

#[tokio::test]
async fn docker_io_mirror_serves_library_images() {
    let mirror = Fake::start(Auth::None).await;
    let image = TestImage::new("linux/amd64", false);
    mirror.put_image("library/python", "3.11-slim", &image);
    let mut config = http_hosts(&[&mirror.host()]);
    config.insert(
        "docker.io".into(),
        HostConfig {
            mirrors: vec![mirror.host()],
            ..Default::default()
        },
    );
    let client = Client::new(config).unwrap();
    let r: Reference = "python:3.11-slim".parse().unwrap();
    let resolved = client.resolve(&r, &amd64()).await.unwrap();
    assert_eq!(
        resolved.reference.to_string(),
        "docker.io/library/python:3.11-slim"
    );
    assert_eq!(
        mirror.calls()[0],
        "GET /v2/library/python/manifests/3.11-slim"
    );
}

#[tokio::test]
async fn plain_http_is_refused_unless_configured() {
    let fake = Fake::start(Auth::None).await;
    let image = TestImage::new("linux/amd64", false);
    fake.put_image("app", "v1", &image);
    let client = Client::new(RegistryConfig::new())
        .unwrap()
        .with_retry(fast_retry());
    let err = client
        .resolve(&reference(&fake, "app:v1"), &amd64())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Resolve { .. }), "{err:?}");
    assert!(
        fake.log().is_empty(),
        "no plain HTTP request reached the server: {:?}",
        fake.calls()
    );
    let err = client
        .blob_exists(
            &reference(&fake, "app:v1"),
            &kiln_oci::parse_digest(&image.layer_digest).unwrap(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::BlobExists { .. }));
    assert!(fake.log().is_empty());
}

#[tokio::test]
async fn transient_failures_are_retried() {
    let fake = Fake::start(Auth::None).await;
    let image = TestImage::new("linux/amd64", false);
    fake.put_image("app", "v1", &image);
    fake.fail.lock().unwrap().extend([503, 502]);
    let client = client_for(&[&fake.host()]);
    client
        .resolve(&reference(&fake, "app:v1"), &amd64())
        .await
        .unwrap();
    assert_eq!(
        fake.calls()
            .iter()
            .filter(|c| c.contains("/manifests/"))
            .count(),
        3
    );

    fake.fail.lock().unwrap().extend([503; 3]);
    let err = client
        .resolve(&reference(&fake, "app:v1"), &amd64())
        .await
        .unwrap_err();
    let chain = format!("{:?}", anyhow::Error::from(err));
    assert!(chain.contains("503 Service Unavailable"), "{chain}");
    assert!(chain.contains("UNAVAILABLE: injected failure"), "{chain}");

    // Not-found is final: no retry.
    let before = fake.log().len();
    client
        .resolve(&reference(&fake, "app:missing"), &amd64())
        .await
        .unwrap_err();
    assert_eq!(fake.log().len(), before + 1);
}

#[tokio::test]
async fn push_uploads_missing_blobs_only() {
    let fake = Fake::start(Auth::Bearer {
        expires_in: 300,
        basic: None,
    })
    .await;
    let client = client_for(&[&fake.host()]);
    let r = reference(&fake, "pushed:v1");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("layer");
    let bytes = b"layer bytes to push".repeat(1000);
    std::fs::write(&path, &bytes).unwrap();
    let digest = kiln_oci::parse_digest(&digest_of(&bytes)).unwrap();

    assert!(!client.blob_exists(&r, &digest).await.unwrap());
    client
        .push_blob(&r, &digest, bytes.len() as u64, &path)
        .await
        .unwrap();
    assert_eq!(fake.blobs.lock().unwrap()[digest.as_ref()], bytes);
    assert!(client.blob_exists(&r, &digest).await.unwrap());
    let push_tokens: Vec<_> = fake
        .token_requests()
        .into_iter()
        .filter(|t| t.query.contains("pull%2Cpush"))
        .collect();
    assert_eq!(push_tokens.len(), 1, "{:?}", fake.calls());

    let before = fake.log().len();
    client
        .push_blob(&r, &digest, bytes.len() as u64, &path)
        .await
        .unwrap();
    assert_eq!(
        fake.calls()[before..],
        [format!("HEAD /v2/pushed/blobs/{digest}")],
        "present blob is not uploaded again"
    );

    // A size that disagrees with the file is refused before uploading.
    let other = kiln_oci::parse_digest(&digest_of(b"x")).unwrap();
    let err = client.push_blob(&r, &other, 1, &path).await.unwrap_err();
    assert!(err.is_digest_mismatch(), "{err:?}");

    // Manifest push by tag; by a digest that does not match the bytes is refused.
    let image = TestImage::new("linux/amd64", false);
    let pushed = client
        .push_manifest(&r, &image.media_type, &image.manifest)
        .await
        .unwrap();
    assert_eq!(pushed.to_string(), image.digest);
    let stored = fake.manifests.lock().unwrap()[&("pushed".to_string(), "v1".to_string())].clone();
    assert_eq!(stored, (image.media_type.clone(), image.manifest.clone()));
    let wrong = reference(&fake, &format!("pushed@{}", digest_of(b"other")));
    let err = client
        .push_manifest(&wrong, &image.media_type, &image.manifest)
        .await
        .unwrap_err();
    assert!(err.is_digest_mismatch(), "{err:?}");
}

#[tokio::test]
async fn mount_from_a_repository_known_to_hold_the_blob() {
    let fake = Fake::start(Auth::Bearer {
        expires_in: 300,
        basic: None,
    })
    .await;
    fake.strict_repos
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let client = client_for(&[&fake.host()]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("layer");
    let bytes = b"shared base layer".repeat(100);
    std::fs::write(&path, &bytes).unwrap();
    let digest = kiln_oci::parse_digest(&digest_of(&bytes)).unwrap();
    let size = bytes.len() as u64;

    let base = reference(&fake, "team/base:1");
    let pushed = client.push_blob(&base, &digest, size, &path).await.unwrap();
    assert_eq!(pushed, BlobPush::Uploaded);

    // The client remembers where it pushed the blob: the next repository mounts it.
    let app = reference(&fake, "team/app:1");
    let before = fake.log().len();
    let pushed = client.push_blob(&app, &digest, size, &path).await.unwrap();
    assert_eq!(pushed, BlobPush::Mounted);
    let log = fake.log()[before..].to_vec();
    let mount = log
        .iter()
        .find(|l| l.method == "POST")
        .expect("a mount request");
    assert_eq!(mount.path, "/v2/team/app/blobs/uploads/");
    assert!(
        mount.query.contains("mount=sha256%3A") && mount.query.contains("from=team%2Fbase"),
        "{}",
        mount.query
    );
    assert!(
        !log.iter().any(|l| l.method == "PUT" || l.method == "PATCH"),
        "nothing uploaded: {:?}",
        fake.calls()
    );
    // One token for push to the target and pull from the source.
    let tokens: Vec<String> = fake.token_requests().into_iter().map(|t| t.query).collect();
    assert!(
        tokens.iter().any(|q| {
            q.contains("scope=repository%3Ateam%2Fapp%3Apull%2Cpush")
                && q.contains("scope=repository%3Ateam%2Fbase%3Apull")
        }),
        "{tokens:?}"
    );
    assert!(client.blob_exists(&app, &digest).await.unwrap());

    // A source that does not hold the blob: the registry starts an upload, which is used.
    let other_bytes = b"other".repeat(10);
    let other_path = dir.path().join("other");
    std::fs::write(&other_path, &other_bytes).unwrap();
    let other = kiln_oci::parse_digest(&digest_of(&other_bytes)).unwrap();
    client.remember_blob(&reference(&fake, "team/nowhere:x"), &other);
    let pushed = client
        .push_blob(&app, &other, other_bytes.len() as u64, &other_path)
        .await
        .unwrap();
    assert_eq!(pushed, BlobPush::Uploaded);
    assert!(client.blob_exists(&app, &other).await.unwrap());
}

#[tokio::test]
async fn login_checks_credentials_at_the_token_service_or_the_registry() {
    let bearer = Fake::start(Auth::Bearer {
        expires_in: 300,
        basic: Some(("alice".into(), "right".into())),
    })
    .await;
    let basic = Fake::start(Auth::Basic("bob".into(), "right".into())).await;
    let open = Fake::start(Auth::None).await;
    let client = client_for(&[&bearer.host(), &basic.host(), &open.host()]);
    let cred = |user: &str, pass: &str| Credential::Basic {
        username: user.into(),
        password: pass.into(),
    };

    client
        .login(&bearer.host(), &cred("alice", "right"))
        .await
        .unwrap();
    let token = bearer.token_requests().pop().unwrap();
    assert!(!token.query.contains("scope="), "{}", token.query);
    let err = client
        .login(&bearer.host(), &cred("alice", "wrong"))
        .await
        .unwrap_err();
    let chain = format!("{:?}", anyhow::Error::from(err));
    assert!(
        chain.contains("login to") && chain.contains("401"),
        "{chain}"
    );

    client
        .login(&basic.host(), &cred("bob", "right"))
        .await
        .unwrap();
    let err = client
        .login(&basic.host(), &cred("bob", "wrong"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Login { .. }), "{err:?}");

    client.login(&open.host(), &cred("x", "y")).await.unwrap();
}
