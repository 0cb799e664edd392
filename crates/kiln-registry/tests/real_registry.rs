//! Push to and pull from a real `docker-registry` (Debian's distribution build) on loopback,
//! pulling back through a `docker.io` mirror entry.
//!
//! Skipped with a message when the binary is missing, unless `KILN_TEST_REQUIRE_EXTERNAL=1`.

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kiln_oci::{Platform, Reference, media_type};
use kiln_registry::{Client, HostConfig, RegistryConfig};
use support::{TestImage, digest_of, index_of};

/// Kills the registry when the test ends, pass or fail.
struct RegistryProcess {
    child: Child,
    host: String,
    _dir: tempfile::TempDir,
}

impl Drop for RegistryProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("docker-registry"))
        .find(|p| p.is_file())
}

async fn start_registry() -> Option<RegistryProcess> {
    let Some(binary) = find_binary() else {
        let reason = "`docker-registry` not found on PATH (Debian package docker-registry)";
        if std::env::var("KILN_TEST_REQUIRE_EXTERNAL").as_deref() == Ok("1") {
            panic!("{reason}, and KILN_TEST_REQUIRE_EXTERNAL=1");
        }
        eprintln!("skipping: {reason}");
        return None;
    };
    let dir = tempfile::tempdir().unwrap();
    // Take a free port from the kernel; the registry binds it right after.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let host = format!("127.0.0.1:{port}");
    let config = dir.path().join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: {host}\n",
            dir.path().join("storage").display()
        ),
    )
    .unwrap();
    let child = Command::new(binary)
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let process = RegistryProcess {
        child,
        host,
        _dir: dir,
    };
    let url = format!("http://{}/v2/", process.host);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(resp) = reqwest::get(&url).await
            && resp.status().is_success()
        {
            return Some(process);
        }
        assert!(Instant::now() < deadline, "registry did not start at {url}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
        chain.contains(&format!("all mirrors failed ({host}: GET http://{host}/v2/library/kiln-test/manifests/absent returned 404 Not Found: MANIFEST_UNKNOWN")),
        "{chain}"
    );
}
