//! The registry client (`wharf::image::registry`) against real registries on loopback:
//! the docker-registry fixture (plain, htpasswd), a token-auth registry with our own
//! token server, mirrors, a flaky proxy for retries and resumed downloads.

mod support;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use oci_spec::image::PlatformBuilder;
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use support::images::{
    self, busybox_image, config_image, image_index_for, sha256_digest, ImageBuilder, LayerBlob,
    LayerBuilder, OciImage, DOCKER_MEDIA_TYPE_MANIFEST, DOCKER_MEDIA_TYPE_MANIFEST_LIST,
    MEDIA_TYPE_MANIFEST,
};
use support::registry::Registry;
use support::token_server::{TokenRegistry, TokenServer, SERVICE};
use wharf::config::RegistryConfig;
use wharf::image::registry::{
    ClientOptions, Credentials, ImageReference, Platform, PushBlob, RegistryClient, RegistryError,
    ResolvedImage,
};

// ---------------------------------------------------------------------------
// helpers

fn client() -> RegistryClient {
    RegistryClient::new(&RegistryConfig::default())
}

/// Short backoff so retry tests stay fast.
fn fast_options() -> ClientOptions {
    ClientOptions {
        retry_base_delay: Duration::from_millis(20),
        ..ClientOptions::default()
    }
}

fn reference(s: &str) -> ImageReference {
    ImageReference::parse(s).unwrap_or_else(|e| panic!("parse {s}: {e}"))
}

fn at(registry: &Registry, repo_tag: &str) -> ImageReference {
    reference(&format!("{}/{repo_tag}", registry.host()))
}

fn basic(username: &str, password: &str) -> Credentials {
    Credentials::Basic {
        username: username.to_string(),
        password: password.to_string(),
    }
}

async fn fetch_all(
    client: &RegistryClient,
    image: &ResolvedImage,
    digest: &str,
    size: u64,
    credentials: &Credentials,
) -> Result<Vec<u8>, RegistryError> {
    let mut stream = client.fetch_blob(image, digest, size, credentials).await?;
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

/// Everything `resolved` says matches the fixture image, and every layer streams back
/// with the right bytes.
async fn assert_resolved(
    client: &RegistryClient,
    resolved: &ResolvedImage,
    image: &OciImage,
    credentials: &Credentials,
) {
    assert_eq!(resolved.manifest_digest, image.manifest_digest);
    assert_eq!(resolved.manifest, image.manifest);
    assert_eq!(resolved.manifest_media_type, image.manifest_media_type);
    assert_eq!(resolved.config_digest, image.config_digest);
    assert_eq!(resolved.config, image.config);
    let layers: Vec<(String, u64, String)> = resolved
        .layers
        .iter()
        .map(|l| (l.digest.clone(), l.size, l.media_type.clone()))
        .collect();
    let expected: Vec<(String, u64, String)> = image
        .layers
        .iter()
        .map(|l| (l.digest.clone(), l.size, l.media_type.clone()))
        .collect();
    assert_eq!(layers, expected);
    for layer in &resolved.layers {
        let bytes = fetch_all(client, resolved, &layer.digest, layer.size, credentials)
            .await
            .unwrap_or_else(|e| panic!("fetch {}: {e}", layer.digest));
        assert_eq!(sha256_digest(&bytes), layer.digest);
        assert_eq!(bytes, image.read_blob(&layer.digest));
    }
}

fn expect_err<T: std::fmt::Debug>(result: Result<T, RegistryError>, what: &str) -> RegistryError {
    match result {
        Ok(value) => panic!("{what}: expected an error, got {value:?}"),
        Err(e) => e,
    }
}

/// Neither Display nor Debug of `err` contains any of `secrets`.
fn assert_no_secret(err: &RegistryError, secrets: &[&str]) {
    let text = format!("{err} / {err:?}");
    for secret in secrets {
        assert!(
            !text.contains(secret),
            "secret {secret:?} leaked in: {text}"
        );
    }
}

fn oci_platform(arch: &str, variant: Option<&str>) -> oci_spec::image::Platform {
    let mut builder = PlatformBuilder::default().architecture(arch).os("linux");
    if let Some(variant) = variant {
        builder = builder.variant(variant);
    }
    builder.build().expect("platform")
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    port
}

/// `(method, uri, status)` of each line of the registry's access log
/// (`127.0.0.1 - - [date] "GET /v2/... HTTP/1.1" 200 ...`).
fn access_log(log: &str) -> Vec<(String, String, u16)> {
    log.lines()
        .filter_map(|line| {
            let start = line.find("] \"")? + 3;
            let rest = &line[start..];
            let (request, after) = rest.split_once('"')?;
            let mut parts = request.split(' ');
            let method = parts.next()?.to_string();
            let uri = parts.next()?.to_string();
            let status = after.split_whitespace().next()?.parse().ok()?;
            Some((method, uri, status))
        })
        .collect()
}

/// Requests `method` whose URI starts with `uri_prefix`.
fn log_requests(log: &str, method: &str, uri_prefix: &str) -> usize {
    access_log(log)
        .iter()
        .filter(|(m, uri, _)| m == method && uri.starts_with(uri_prefix))
        .count()
}

/// `GET /v2/` pings.
fn log_pings(log: &str) -> usize {
    access_log(log)
        .iter()
        .filter(|(m, uri, _)| m == "GET" && uri == "/v2/")
        .count()
}

/// Successful (201) cross-repository mounts into `repo` from `from`.
fn log_mounts(log: &str, repo: &str, from: &str) -> usize {
    let prefix = format!("/v2/{repo}/blobs/uploads/?mount=");
    let from = format!("from={}", from.replace('/', "%2F"));
    access_log(log)
        .iter()
        .filter(|(m, uri, status)| {
            m == "POST" && uri.starts_with(&prefix) && uri.contains(&from) && *status == 201
        })
        .count()
}

fn push_blobs(image: &OciImage) -> Vec<PushBlob> {
    image
        .blob_digests()
        .into_iter()
        .map(|digest| PushBlob {
            size: std::fs::metadata(image.blob_path(&digest))
                .expect("blob file")
                .len(),
            path: image.blob_path(&digest),
            digest,
        })
        .collect()
}

fn blob_data_path(registry: &Registry, digest: &str) -> std::path::PathBuf {
    let hex = images::digest_hex(digest);
    registry
        .storage_dir()
        .join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data")
}

/// Flip one byte in the middle of a blob stored in the registry (same size).
fn corrupt_blob(registry: &Registry, digest: &str) {
    let path = blob_data_path(registry, digest);
    let mut data = std::fs::read(&path).expect("read stored blob");
    let middle = data.len() / 2;
    data[middle] ^= 0xff;
    std::fs::write(&path, data).expect("write stored blob");
}

// ---------------------------------------------------------------------------
// references

#[test]
fn references_are_normalized_as_docker_does() {
    let r = reference("busybox");
    assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
    assert_eq!(r.registry(), "docker.io");
    assert_eq!(r.repository(), "library/busybox");
    assert_eq!(r.tag(), Some("latest"));
    assert_eq!(
        r.repo_tag().as_deref(),
        Some("docker.io/library/busybox:latest")
    );

    let r = reference("localhost:5000/a/b:t");
    assert_eq!(
        (r.registry(), r.repository(), r.tag()),
        ("localhost:5000", "a/b", Some("t"))
    );

    let digest = format!("sha256:{}", "ab".repeat(32));
    let r = reference(&format!("x@{digest}"));
    assert_eq!(r.to_string(), format!("docker.io/library/x@{digest}"));
    assert_eq!(r.digest(), Some(digest.as_str()));
    assert_eq!(r.tag(), None);
    assert_eq!(
        reference("busybox:1.36").with_digest(&digest).to_string(),
        format!("docker.io/library/busybox@{digest}")
    );

    for bad in [
        "UPPER/case",
        "a:b:c",
        "",
        "x@sha256:1234",
        "x@sha256:",
        "busybox:",
    ] {
        match ImageReference::parse(bad) {
            Err(e @ RegistryError::InvalidReference { .. }) => {
                assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
            }
            other => panic!("{bad:?}: expected InvalidReference, got {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------
// pull

#[tokio::test]
async fn resolve_by_tag_and_by_digest_then_stream_blobs() {
    let registry = Registry::start().await;
    let image = busybox_image();
    registry.push("test/busybox", "latest", &image).await;
    let client = client();
    let anonymous = Credentials::Anonymous;
    let pings = log_pings(&registry.log());

    let by_tag = client
        .resolve(
            &at(&registry, "test/busybox:latest"),
            &anonymous,
            &Platform::host(),
        )
        .await
        .expect("resolve by tag");
    assert_eq!(by_tag.index_digest, None);
    assert_eq!(by_tag.endpoint, registry.url());
    assert_eq!(by_tag.manifest_media_type, MEDIA_TYPE_MANIFEST);
    assert_eq!(
        by_tag.repo_digest(),
        format!("{}/test/busybox@{}", registry.host(), image.manifest_digest)
    );
    assert_resolved(&client, &by_tag, &image, &anonymous).await;

    let by_digest = client
        .resolve(
            &at(
                &registry,
                &format!("test/busybox@{}", image.manifest_digest),
            ),
            &anonymous,
            &Platform::host(),
        )
        .await
        .expect("resolve by digest");
    assert_resolved(&client, &by_digest, &image, &anonymous).await;
    // one /v2/ ping for the session, not one per request; two manifests, two configs
    // and two layer fetches. The registry logs a request after answering it: wait (a
    // few seconds at most) for the last line before counting.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while log_requests(&registry.log(), "GET", "/v2/test/busybox/blobs/") < 4
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let log = registry.log();
    assert_eq!(log_pings(&log) - pings, 1, "{log}");
    assert_eq!(log_requests(&log, "GET", "/v2/test/busybox/manifests/"), 2);
    assert_eq!(log_requests(&log, "GET", "/v2/test/busybox/blobs/"), 4);

    // Docker schema 2 media types too
    let docker = ImageBuilder::busybox().docker_schema2().build();
    registry.push("test/docker", "v2", &docker).await;
    let resolved = client
        .resolve(
            &at(&registry, "test/docker:v2"),
            &anonymous,
            &Platform::host(),
        )
        .await
        .expect("resolve docker schema 2");
    assert_eq!(resolved.manifest_media_type, DOCKER_MEDIA_TYPE_MANIFEST);
    assert_resolved(&client, &resolved, &docker, &anonymous).await;

    // unknown tag, unknown repository: NotFound naming registry and repository
    for missing in ["test/busybox:nope", "test/nothing:latest"] {
        let err = expect_err(
            client
                .resolve(&at(&registry, missing), &anonymous, &Platform::host())
                .await,
            missing,
        );
        assert!(err.is_not_found(), "{missing}: {err:?}");
        let msg = err.to_string();
        assert!(msg.contains(&registry.host()), "{msg}");
        assert!(
            msg.contains(missing.split(':').next().unwrap_or_default()),
            "{msg}"
        );
    }
}

#[tokio::test]
async fn multi_platform_index_picks_the_platform() {
    let registry = Registry::start().await;
    let amd64 = ImageBuilder::busybox().platform("amd64", "linux").build();
    let arm64 = ImageBuilder::busybox()
        .platform("arm64", "linux")
        .annotation("variant", "arm64")
        .build();
    let index = image_index_for(&[
        (&amd64, oci_platform("amd64", None)),
        (&arm64, oci_platform("arm64", Some("v8"))),
    ]);
    registry
        .push_index("test/multi", "latest", &[&amd64, &arm64], &index)
        .await;
    let client = client();
    let anonymous = Credentials::Anonymous;
    let tag = at(&registry, "test/multi:latest");

    let host = client
        .resolve(&tag, &anonymous, &Platform::host())
        .await
        .expect("resolve for host");
    let expected = if Platform::host().architecture == "arm64" {
        &arm64
    } else {
        &amd64
    };
    assert_eq!(host.index_digest.as_deref(), Some(index.digest.as_str()));
    assert_eq!(
        host.repo_digest(),
        format!("{}/test/multi@{}", registry.host(), index.digest)
    );
    assert_resolved(&client, &host, expected, &anonymous).await;

    let arm = client
        .resolve(
            &tag,
            &anonymous,
            &Platform::parse("linux/arm64").expect("platform"),
        )
        .await
        .expect("resolve arm64");
    assert_eq!(arm.manifest_digest, arm64.manifest_digest);

    // by the index digest
    let by_digest = client
        .resolve(
            &at(&registry, &format!("test/multi@{}", index.digest)),
            &anonymous,
            &Platform::new("linux", "amd64", None),
        )
        .await
        .expect("resolve index by digest");
    assert_eq!(by_digest.manifest_digest, amd64.manifest_digest);
    assert_eq!(
        by_digest.index_digest.as_deref(),
        Some(index.digest.as_str())
    );

    let err = expect_err(
        client
            .resolve(
                &tag,
                &anonymous,
                &Platform::parse("linux/s390x").expect("platform"),
            )
            .await,
        "s390x",
    );
    match &err {
        RegistryError::PlatformNotFound { wanted, available } => {
            assert_eq!(wanted, "linux/s390x");
            assert_eq!(available, &["linux/amd64", "linux/arm64/v8"]);
        }
        other => panic!("expected PlatformNotFound, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("linux/amd64, linux/arm64/v8"), "{msg}");

    // a Docker manifest list works the same
    let docker_amd64 = ImageBuilder::busybox()
        .docker_schema2()
        .platform("amd64", "linux")
        .build();
    let docker_arm64 = ImageBuilder::busybox()
        .docker_schema2()
        .platform("arm64", "linux")
        .build();
    let list = image_index_for(&[
        (&docker_amd64, oci_platform("amd64", None)),
        (&docker_arm64, oci_platform("arm64", None)),
    ]);
    let mut list_json: serde_json::Value = serde_json::from_slice(&list.bytes).expect("index JSON");
    list_json["mediaType"] = DOCKER_MEDIA_TYPE_MANIFEST_LIST.into();
    let list_bytes = serde_json::to_vec(&list_json).expect("list JSON");
    for image in [&docker_amd64, &docker_arm64] {
        registry
            .push("test/list", &image.manifest_digest, image)
            .await;
    }
    let list_digest = registry
        .put_manifest(
            "test/list",
            "latest",
            DOCKER_MEDIA_TYPE_MANIFEST_LIST,
            &list_bytes,
        )
        .await;
    let resolved = client
        .resolve(
            &at(&registry, "test/list:latest"),
            &anonymous,
            &Platform::new("linux", "arm64", Some("v8")),
        )
        .await
        .expect("resolve manifest list");
    assert_eq!(resolved.index_digest.as_deref(), Some(list_digest.as_str()));
    assert_eq!(resolved.manifest_digest, docker_arm64.manifest_digest);
    assert_eq!(resolved.manifest_media_type, DOCKER_MEDIA_TYPE_MANIFEST);
}

// ---------------------------------------------------------------------------
// auth

#[tokio::test]
async fn basic_auth_registry() {
    const PASSWORD: &str = "s3cret-Basic-pw";
    const WRONG: &str = "wrong-pw-7f3a9";
    let registry = Registry::start_with_basic_auth("wharf", PASSWORD).await;
    let image = busybox_image();
    registry.push("private/busybox", "latest", &image).await;
    let client = client();
    let tag = at(&registry, "private/busybox:latest");

    let err = expect_err(
        client
            .resolve(&tag, &Credentials::Anonymous, &Platform::host())
            .await,
        "anonymous",
    );
    assert!(
        matches!(&err, RegistryError::Unauthorized { registry: r } if *r == registry.host()),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!("authentication failed for registry {}", registry.host())
    );

    let good = basic("wharf", PASSWORD);
    let resolved = client
        .resolve(&tag, &good, &Platform::host())
        .await
        .expect("resolve with credentials");
    assert_resolved(&client, &resolved, &image, &good).await;

    // The same client, other credentials: nothing cached from the good ones helps.
    for (what, credentials) in [
        ("wrong password", basic("wharf", WRONG)),
        ("wrong user", basic("nobody", PASSWORD)),
        (
            "identity token",
            Credentials::IdentityToken(WRONG.to_string()),
        ),
        (
            "registry token",
            Credentials::RegistryToken(WRONG.to_string()),
        ),
    ] {
        let err = expect_err(
            client.resolve(&tag, &credentials, &Platform::host()).await,
            what,
        );
        assert!(
            matches!(err, RegistryError::Unauthorized { .. }),
            "{what}: {err:?}"
        );
        assert_no_secret(&err, &[WRONG, PASSWORD]);
        // and a blob fetch with them fails too
        let err = expect_err(
            fetch_all(
                &client,
                &resolved,
                &image.layers[0].digest,
                image.layers[0].size,
                &credentials,
            )
            .await,
            what,
        );
        assert!(
            matches!(err, RegistryError::Unauthorized { .. }),
            "{what}: {err:?}"
        );
        assert_no_secret(&err, &[WRONG, PASSWORD]);
    }
    // and the good credentials still work afterwards
    client
        .resolve(&tag, &good, &Platform::host())
        .await
        .expect("resolve again with credentials");
}

#[tokio::test]
async fn bearer_token_flow() {
    const PASSWORD: &str = "alice-Token-pw";
    const REFRESH: &str = "refresh-Token-9d2c";
    let plain = Registry::start().await;
    let image = busybox_image();
    plain.push("test/busybox", "latest", &image).await;
    let tokens = TokenServer::start("alice", PASSWORD, REFRESH).await;
    let registry = TokenRegistry::start(&plain.storage_dir(), &tokens).await;
    let client = client();
    let tag = reference(&format!("{}/test/busybox:latest", registry.host()));
    let pull_scope = vec!["repository:test/busybox:pull".to_string()];

    // anonymous: an empty token, then the registry refuses
    let err = expect_err(
        client
            .resolve(&tag, &Credentials::Anonymous, &Platform::host())
            .await,
        "anonymous",
    );
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err:?}");
    assert!(err.to_string().contains(&registry.host()), "{err}");

    // Basic credentials exchanged for a pull token
    tokens.clear_requests();
    let alice = basic("alice", PASSWORD);
    let resolved = client
        .resolve(&tag, &alice, &Platform::host())
        .await
        .unwrap_or_else(|e| {
            panic!(
                "resolve with a token: {e}\nregistry log:\n{}",
                registry.log()
            )
        });
    assert_resolved(&client, &resolved, &image, &alice).await;
    let requests = tokens.requests();
    assert!(!requests.is_empty());
    for request in &requests {
        assert_eq!(
            (request.method.as_str(), request.grant.as_str()),
            ("GET", "basic")
        );
        assert_eq!(request.scopes, pull_scope, "a pull asks for pull only");
        assert_eq!(request.service, SERVICE);
        assert!(request.granted);
    }
    // one token for the resolve and all the blob fetches
    assert_eq!(requests.len(), 1, "{requests:?}");

    // identity token: OAuth2 refresh_token grant
    tokens.clear_requests();
    let identity = Credentials::IdentityToken(REFRESH.to_string());
    let resolved = client
        .resolve(&tag, &identity, &Platform::host())
        .await
        .expect("resolve with an identity token");
    assert_resolved(&client, &resolved, &image, &identity).await;
    let requests = tokens.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(
        (requests[0].method.as_str(), requests[0].grant.as_str()),
        ("POST", "refresh_token")
    );
    assert_eq!(requests[0].scopes, pull_scope);

    // a registry token is sent as is
    let token = tokens.issue(&["repository:test/busybox:pull"]);
    tokens.clear_requests();
    let bearer = Credentials::RegistryToken(token.clone());
    let resolved = client
        .resolve(&tag, &bearer, &Platform::host())
        .await
        .expect("resolve with a registry token");
    assert_resolved(&client, &resolved, &image, &bearer).await;
    assert!(
        tokens.requests().is_empty(),
        "no token request with a registry token"
    );

    // wrong secrets: Unauthorized, never echoed
    for (what, credentials) in [
        ("wrong password", basic("alice", "not-the-Password")),
        (
            "wrong identity token",
            Credentials::IdentityToken("not-the-Refresh".into()),
        ),
        (
            "token for another repository",
            Credentials::RegistryToken(tokens.issue(&["repository:other/repo:pull"])),
        ),
    ] {
        let err = expect_err(
            client.resolve(&tag, &credentials, &Platform::host()).await,
            what,
        );
        assert!(
            matches!(err, RegistryError::Unauthorized { .. }),
            "{what}: {err:?}"
        );
        assert_no_secret(
            &err,
            &[
                "not-the-Password",
                "not-the-Refresh",
                PASSWORD,
                REFRESH,
                &token,
            ],
        );
    }

    // push: pull,push on the target plus pull on the mount source
    tokens.clear_requests();
    let target = reference(&format!("{}/pushed/img:v1", registry.host()));
    let digest = client
        .push(
            &target,
            &alice,
            &image.manifest,
            &image.manifest_media_type,
            &push_blobs(&image),
            &["test/busybox".to_string()],
        )
        .await
        .unwrap_or_else(|e| panic!("push with a token: {e}\nregistry log:\n{}", registry.log()));
    assert_eq!(digest, image.manifest_digest);
    let requests = tokens.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(
        requests[0].scopes,
        [
            "repository:pushed/img:pull,push".to_string(),
            "repository:test/busybox:pull".to_string()
        ]
    );
    let log = registry.log();
    assert!(
        log_mounts(&log, "pushed/img", "test/busybox") >= 1,
        "no cross-repository mount in the log:\n{log}"
    );
    assert_eq!(log_requests(&log, "PATCH", "/v2/pushed/img/"), 0, "{log}");
    let back = client
        .resolve(&target, &identity, &Platform::host())
        .await
        .expect("pull the pushed image back");
    assert_eq!(back.manifest_digest, image.manifest_digest);
}

// ---------------------------------------------------------------------------
// mirrors

#[tokio::test]
async fn docker_hub_mirror_serves_short_names() {
    let mirror = Registry::start().await;
    let image = busybox_image();
    mirror.push("library/busybox", "latest", &image).await;
    let dead = format!("http://127.0.0.1:{}", closed_port());
    let config = RegistryConfig {
        mirrors: [("docker.io".to_string(), vec![dead.clone(), mirror.url()])]
            .into_iter()
            .collect(),
        ..RegistryConfig::default()
    };
    let client = RegistryClient::new(&config);
    let anonymous = Credentials::Anonymous;

    let resolved = client
        .resolve(&reference("busybox"), &anonymous, &Platform::host())
        .await
        .expect("resolve busybox through the mirror");
    assert_eq!(
        resolved.endpoint,
        mirror.url(),
        "served by the second mirror"
    );
    assert_eq!(
        resolved.reference.to_string(),
        "docker.io/library/busybox:latest"
    );
    assert_resolved(&client, &resolved, &image, &anonymous).await;
    // containerd's ?ns= tells the mirror which registry is mirrored
    let log = mirror.log();
    assert!(
        log.contains("/v2/library/busybox/manifests/latest?ns=docker.io"),
        "no ?ns=docker.io in the mirror log:\n{log}"
    );
}

#[tokio::test]
async fn failing_mirrors_fall_through_to_the_registry() {
    let origin = Registry::start().await;
    let empty_mirror = Registry::start().await;
    let image = busybox_image();
    origin.push("test/busybox", "latest", &image).await;
    let dead_mirror_url = format!("http://127.0.0.1:{}", closed_port());
    let config = RegistryConfig {
        mirrors: [(
            origin.host(),
            vec![dead_mirror_url.clone(), empty_mirror.url()],
        )]
        .into_iter()
        .collect(),
        ..RegistryConfig::default()
    };
    let client = RegistryClient::new(&config);
    let resolved = client
        .resolve(
            &at(&origin, "test/busybox:latest"),
            &Credentials::Anonymous,
            &Platform::host(),
        )
        .await
        .expect("resolve past a dead and an empty mirror");
    assert_eq!(resolved.endpoint, origin.url());
    assert_resolved(&client, &resolved, &image, &Credentials::Anonymous).await;
    assert!(
        empty_mirror
            .log()
            .contains("/v2/test/busybox/manifests/latest?ns=127.0.0.1"),
        "the empty mirror was not asked:\n{}",
        empty_mirror.log()
    );

    // the origin's own error wins when nobody has the image
    let err = expect_err(
        client
            .resolve(
                &at(&origin, "test/busybox:gone"),
                &Credentials::Anonymous,
                &Platform::host(),
            )
            .await,
        "missing everywhere",
    );
    assert!(
        matches!(err.cause(), RegistryError::NotFound { registry, .. } if *registry == origin.host()),
        "{err:?}"
    );
    assert!(err.is_not_found());
    // ... and the message says what every endpoint answered
    let message = err.to_string();
    for endpoint in [
        dead_mirror_url.as_str(),
        &empty_mirror.url(),
        &origin.host(),
    ] {
        assert!(message.contains(endpoint), "{endpoint} in {message}");
    }
}

// ---------------------------------------------------------------------------
// verification

#[tokio::test]
async fn corrupted_blobs_are_rejected_naming_the_digest() {
    let registry = Registry::start().await;
    let image = busybox_image();
    registry.push("test/busybox", "latest", &image).await;
    let client = client();
    let anonymous = Credentials::Anonymous;
    let tag = at(&registry, "test/busybox:latest");
    let resolved = client
        .resolve(&tag, &anonymous, &Platform::host())
        .await
        .expect("resolve");
    let layer = &image.layers[0];

    // the caller's size is wrong
    let err = expect_err(
        fetch_all(
            &client,
            &resolved,
            &layer.digest,
            layer.size + 1,
            &anonymous,
        )
        .await,
        "wrong size",
    );
    assert!(
        matches!(&err, RegistryError::SizeMismatch { digest, .. } if *digest == layer.digest),
        "{err:?}"
    );

    // the registry serves other bytes
    corrupt_blob(&registry, &layer.digest);
    let err = expect_err(
        fetch_all(&client, &resolved, &layer.digest, layer.size, &anonymous).await,
        "corrupted layer",
    );
    match &err {
        RegistryError::DigestMismatch { expected, actual } => {
            assert_eq!(expected, &layer.digest);
            assert_ne!(actual, &layer.digest);
        }
        other => panic!("expected DigestMismatch, got {other:?}"),
    }
    assert!(err.to_string().contains(&layer.digest), "{err}");

    // a corrupted config fails the resolve
    corrupt_blob(&registry, &image.config_digest);
    let err = expect_err(
        client.resolve(&tag, &anonymous, &Platform::host()).await,
        "corrupted config",
    );
    assert!(
        matches!(&err, RegistryError::DigestMismatch { expected, .. } if *expected == image.config_digest),
        "{err:?}"
    );

    // a digest nobody has
    let other = sha256_digest(b"some other content");
    let err = expect_err(
        client
            .resolve(
                &at(&registry, &format!("test/busybox@{other}")),
                &anonymous,
                &Platform::host(),
            )
            .await,
        "unknown digest",
    );
    assert!(err.is_not_found(), "{err:?}");
    assert!(err.to_string().contains(&other), "{err}");
}

#[tokio::test]
async fn a_tag_pointing_at_other_content_fails_the_digest_check() {
    // The registry answers for digest A with the manifest of B: what a lying or broken
    // mirror would do. Simulated by storing B's bytes under A's blob path.
    let registry = Registry::start().await;
    let image_a = busybox_image();
    let image_b = config_image();
    registry.push("test/a", "latest", &image_a).await;
    registry.push("test/b", "latest", &image_b).await;
    std::fs::write(
        blob_data_path(&registry, &image_a.manifest_digest),
        &image_b.manifest,
    )
    .expect("swap manifest bytes");
    let err = expect_err(
        client()
            .resolve(
                &at(&registry, &format!("test/a@{}", image_a.manifest_digest)),
                &Credentials::Anonymous,
                &Platform::host(),
            )
            .await,
        "swapped manifest",
    );
    match &err {
        RegistryError::DigestMismatch { expected, actual } => {
            assert_eq!(expected, &image_a.manifest_digest);
            assert_eq!(actual, &image_b.manifest_digest);
        }
        other => panic!("expected DigestMismatch, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// push

#[tokio::test]
async fn push_then_pull_back_identical() {
    let registry = Registry::start().await;
    let image = config_image();
    let client = client();
    let anonymous = Credentials::Anonymous;
    let blobs = push_blobs(&image);
    let target = at(&registry, "pushed/img:v1");

    let digest = client
        .push(
            &target,
            &anonymous,
            &image.manifest,
            &image.manifest_media_type,
            &blobs,
            &[],
        )
        .await
        .expect("push");
    assert_eq!(digest, image.manifest_digest);
    let back = client
        .resolve(&target, &anonymous, &Platform::host())
        .await
        .expect("pull back");
    assert_resolved(&client, &back, &image, &anonymous).await;
    let log = registry.log();
    let uploads = log_requests(&log, "POST", "/v2/pushed/img/blobs/uploads/");
    assert_eq!(uploads, blobs.len(), "one upload per blob:\n{log}");
    assert_eq!(
        log_requests(&log, "PATCH", "/v2/pushed/img/"),
        0,
        "small blobs go in one PUT"
    );

    // again: every blob is there, nothing is uploaded
    let digest = client
        .push(
            &target,
            &anonymous,
            &image.manifest,
            &image.manifest_media_type,
            &blobs,
            &[],
        )
        .await
        .expect("push again");
    assert_eq!(digest, image.manifest_digest);
    let log = registry.log();
    assert_eq!(
        log_requests(&log, "POST", "/v2/pushed/img/blobs/uploads/"),
        uploads,
        "a second push uploaded blobs:\n{log}"
    );
    assert!(log_requests(&log, "HEAD", "/v2/pushed/img/blobs/") >= 2 * blobs.len());

    // another repository of the same registry: blobs are mounted, not uploaded
    let other = at(&registry, "pushed/other:v1");
    client
        .push(
            &other,
            &anonymous,
            &image.manifest,
            &image.manifest_media_type,
            &blobs,
            &[
                format!("{}/pushed/img:v1", registry.host()),
                "elsewhere.io/x".into(),
            ],
        )
        .await
        .expect("push with mounts");
    let log = registry.log();
    assert_eq!(
        log_mounts(&log, "pushed/other", "pushed/img"),
        blobs.len(),
        "every blob mounted:\n{log}"
    );
    assert_eq!(
        log_requests(&log, "PUT", "/v2/pushed/other/blobs/uploads/"),
        0,
        "{log}"
    );
    assert_eq!(log_requests(&log, "PATCH", "/v2/pushed/other/"), 0, "{log}");
    let back = client
        .resolve(&other, &anonymous, &Platform::host())
        .await
        .expect("pull the mounted image");
    assert_resolved(&client, &back, &image, &anonymous).await;

    // by digest, no tag
    let by_digest = at(
        &registry,
        &format!("pushed/bydigest@{}", image.manifest_digest),
    );
    client
        .push(
            &by_digest,
            &anonymous,
            &image.manifest,
            &image.manifest_media_type,
            &blobs,
            &["pushed/img".into()],
        )
        .await
        .expect("push by digest");
    client
        .resolve(&by_digest, &anonymous, &Platform::host())
        .await
        .expect("pull by digest");
}

#[tokio::test]
async fn large_blobs_are_pushed_in_chunks() {
    let registry = Registry::start().await;
    // ~300 KiB of incompressible bytes, uploaded in 64 KiB chunks
    let mut state = 0x9e3779b97f4a7c15u64;
    let noise: Vec<u8> = (0..300 * 1024)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let big = LayerBlob::uncompressed(LayerBuilder::new().file("noise.bin", noise).tar());
    let image = ImageBuilder::busybox().layer_blob(big.clone()).build();
    let client = RegistryClient::with_options(
        &RegistryConfig::default(),
        ClientOptions {
            chunked_upload_threshold: 64 * 1024,
            upload_chunk_size: 64 * 1024,
            ..ClientOptions::default()
        },
    );
    let target = at(&registry, "pushed/chunked:v1");
    let digest = client
        .push(
            &target,
            &Credentials::Anonymous,
            &image.manifest,
            &image.manifest_media_type,
            &push_blobs(&image),
            &[],
        )
        .await
        .expect("chunked push");
    assert_eq!(digest, image.manifest_digest);
    let log = registry.log();
    // the big layer and the busybox base layer (~1 MB) are both above the threshold
    let expected_chunks = (big.blob.len() as u64).div_ceil(64 * 1024);
    let patches = log_requests(&log, "PATCH", "/v2/pushed/chunked/blobs/uploads/");
    assert!(
        patches as u64 >= expected_chunks,
        "{patches} PATCH requests, expected at least {expected_chunks}:\n{log}"
    );
    let back = client
        .resolve(&target, &Credentials::Anonymous, &Platform::host())
        .await
        .expect("pull back");
    assert_resolved(&client, &back, &image, &Credentials::Anonymous).await;
}

#[tokio::test]
async fn push_refuses_a_blob_file_of_the_wrong_size() {
    let registry = Registry::start().await;
    let image = busybox_image();
    let mut blobs = push_blobs(&image);
    blobs[1].size += 1;
    let err = expect_err(
        client()
            .push(
                &at(&registry, "pushed/bad:v1"),
                &Credentials::Anonymous,
                &image.manifest,
                &image.manifest_media_type,
                &blobs,
                &[],
            )
            .await,
        "wrong size",
    );
    assert!(
        matches!(&err, RegistryError::SizeMismatch { digest, .. } if *digest == blobs[1].digest),
        "{err:?}"
    );
    let log = registry.log();
    assert_eq!(
        log_requests(&log, "PUT", "/v2/pushed/bad/manifests/"),
        0,
        "{log}"
    );
}

// ---------------------------------------------------------------------------
// retries

/// A TCP proxy in front of a registry that answers the first `failures` connections
/// with `503`, and can cut one response short after a byte budget.
struct FlakyProxy {
    port: u16,
    failures: Arc<AtomicUsize>,
    served_503: Arc<AtomicUsize>,
    /// Bytes of responses still allowed before one connection is cut (0: off).
    cut_after: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FlakyProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn read_head(stream: &mut TcpStream) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(1) => buf.push(byte[0]),
            _ => return,
        }
    }
}

impl FlakyProxy {
    async fn start(upstream: u16, failures: usize) -> FlakyProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        let failures = Arc::new(AtomicUsize::new(failures));
        let served_503 = Arc::new(AtomicUsize::new(0));
        let cut_after = Arc::new(AtomicU64::new(0));
        let (f, s, c) = (failures.clone(), served_503.clone(), cut_after.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let (f, s, c) = (f.clone(), s.clone(), c.clone());
                tokio::spawn(async move {
                    let fail = f
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok();
                    if fail {
                        read_head(&mut client).await;
                        s.fetch_add(1, Ordering::SeqCst);
                        let _ = client
                            .write_all(
                                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                            )
                            .await;
                        return;
                    }
                    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                        return;
                    };
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut server_read, mut server_write) = server.into_split();
                    let up = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
                        let _ = server_write.shutdown().await;
                    });
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = match server_read.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let budget = c.load(Ordering::SeqCst);
                        if budget > 0 {
                            if (n as u64) >= budget {
                                c.store(0, Ordering::SeqCst);
                                let _ = client_write.write_all(&buf[..budget as usize]).await;
                                break; // cut this connection
                            }
                            c.fetch_sub(n as u64, Ordering::SeqCst);
                        }
                        if client_write.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    up.abort();
                });
            }
        });
        FlakyProxy {
            port,
            failures,
            served_503,
            cut_after,
            task,
        }
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

#[tokio::test]
async fn transient_errors_are_retried_with_backoff() {
    let registry = Registry::start().await;
    let image = busybox_image();
    registry.push("test/busybox", "latest", &image).await;
    let proxy = FlakyProxy::start(registry.port(), 2).await;
    let reference = reference(&format!("{}/test/busybox:latest", proxy.host()));
    let config = RegistryConfig {
        max_attempts: 3,
        ..RegistryConfig::default()
    };
    let client = RegistryClient::with_options(&config, fast_options());
    let resolved = client
        .resolve(&reference, &Credentials::Anonymous, &Platform::host())
        .await
        .expect("resolve after two 503s");
    assert_eq!(proxy.served_503.load(Ordering::SeqCst), 2);
    assert_resolved(&client, &resolved, &image, &Credentials::Anonymous).await;

    // one attempt only: the 503 is the answer
    let once = RegistryClient::with_options(
        &RegistryConfig {
            max_attempts: 1,
            ..RegistryConfig::default()
        },
        fast_options(),
    );
    proxy.failures.store(1, Ordering::SeqCst);
    let err = expect_err(
        once.resolve(&reference, &Credentials::Anonymous, &Platform::host())
            .await,
        "single attempt",
    );
    assert!(
        matches!(&err, RegistryError::Transport { registry, message } if *registry == proxy.host() && message.contains("503")),
        "{err:?}"
    );

    // a 404 is not retried
    let before = log_requests(&registry.log(), "GET", "/v2/test/busybox/manifests/missing");
    assert_eq!(before, 0);
    let err = expect_err(
        client
            .resolve(
                &reference_at(&proxy.host(), "test/busybox:missing"),
                &Credentials::Anonymous,
                &Platform::host(),
            )
            .await,
        "missing tag",
    );
    assert!(err.is_not_found(), "{err:?}");
    assert_eq!(
        log_requests(&registry.log(), "GET", "/v2/test/busybox/manifests/missing"),
        1,
        "a 404 must not be retried"
    );
}

fn reference_at(host: &str, repo_tag: &str) -> ImageReference {
    reference(&format!("{host}/{repo_tag}"))
}

#[tokio::test]
async fn an_interrupted_download_resumes_where_it_stopped() {
    let registry = Registry::start().await;
    let image = busybox_image();
    registry.push("test/busybox", "latest", &image).await;
    let proxy = FlakyProxy::start(registry.port(), 0).await;
    let client = RegistryClient::with_options(&RegistryConfig::default(), fast_options());
    let resolved = client
        .resolve(
            &reference_at(&proxy.host(), "test/busybox:latest"),
            &Credentials::Anonymous,
            &Platform::host(),
        )
        .await
        .expect("resolve");
    let layer = &image.layers[0];
    assert!(
        layer.size > 200_000,
        "the base layer is large enough to cut"
    );
    proxy.cut_after.store(100_000, Ordering::SeqCst);
    let bytes = fetch_all(
        &client,
        &resolved,
        &layer.digest,
        layer.size,
        &Credentials::Anonymous,
    )
    .await
    .expect("download across a cut connection");
    assert_eq!(
        proxy.cut_after.load(Ordering::SeqCst),
        0,
        "the connection was cut"
    );
    assert_eq!(bytes.len() as u64, layer.size);
    assert_eq!(
        format!("sha256:{}", hex::encode(Sha256::digest(&bytes))),
        layer.digest
    );
    // The registry logs the cut request only once it notices the broken
    // connection, which may come after the resumed request has finished.
    let blob_uri = format!("/v2/test/busybox/blobs/{}", layer.digest);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut log = registry.log();
    while log_requests(&log, "GET", &blob_uri) < 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        log = registry.log();
    }
    assert_eq!(
        log_requests(&log, "GET", &blob_uri),
        2,
        "one request, one resumed request:\n{log}"
    );
}
