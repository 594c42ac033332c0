//! PullImage against a hostile registry: a hand-served HTTP server on loopback
//! (`support::hostile`) answering with crafted challenges, redirects and layers, and a
//! real wharfd. Each test asserts the CRI code, a bounded message naming the problem,
//! that no connection reached a host wharf must not contact, and that nothing partial
//! is left in the content store or the snapshots.

mod support;

use support::entries;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::{AuthConfig, ImageSpec, ListImagesRequest, PullImageRequest};
use serde_json::json;
use support::daemon::Daemon;
use support::hostile::{HostileServer, Response, Routes};
use support::images::{
    digest_hex, host_arch, sha256_digest, ImageBuilder, LayerBuilder, OciImage, MEDIA_TYPE_CONFIG,
    MEDIA_TYPE_LAYER_GZIP, MEDIA_TYPE_MANIFEST,
};
use support::registry::Registry;
use tonic::transport::Channel;
use tonic::Code;

type Client = ImageServiceClient<Channel>;

/// Longest message any refusal here may have: far below what gRPC clients accept.
const MAX_MESSAGE: usize = 2048;

async fn pull(
    client: &mut Client,
    image: &str,
    auth: Option<AuthConfig>,
) -> Result<String, tonic::Status> {
    client
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: image.to_string(),
                ..ImageSpec::default()
            }),
            auth,
            sandbox_config: None,
        })
        .await
        .map(|r| r.into_inner().image_ref)
}

fn alice() -> Option<AuthConfig> {
    Some(AuthConfig {
        username: "alice".to_string(),
        password: "s3cret".to_string(),
        ..AuthConfig::default()
    })
}

/// `Basic base64("alice:s3cret")`
const ALICE_BASIC: &str = "Basic YWxpY2U6czNjcmV0";

/// The refusal: its code, a bounded message containing each of `needles`.
fn assert_refused(err: &tonic::Status, code: Code, needles: &[&str]) {
    assert_eq!(err.code(), code, "{err:?}");
    assert!(
        err.message().len() <= MAX_MESSAGE,
        "message of {} bytes: {}",
        err.message().len(),
        &err.message()[..300.min(err.message().len())]
    );
    for needle in needles {
        assert!(
            err.message().contains(needle),
            "{needle:?} not in {:?}",
            err.message()
        );
    }
}

/// No image listed, no blob other than `allowed` in the content store, no ingest, no
/// snapshot, nothing being unpacked.
async fn assert_nothing_stored(daemon: &Daemon, client: &mut Client) {
    let images = client
        .list_images(ListImagesRequest { filter: None })
        .await
        .expect("ListImages")
        .into_inner()
        .images;
    assert!(images.is_empty(), "{images:?}");
    let root = &daemon.paths.root;
    for dir in [
        "content/sha256",
        "content/ingest",
        "snapshots/layers",
        "snapshots/tmp",
    ] {
        assert_eq!(entries(&root.join(dir)), Vec::<String>::new(), "{dir}");
    }
}

/// A small one-layer image.
fn small_image(name: &str) -> OciImage {
    ImageBuilder::new()
        .layer(LayerBuilder::new().file("hello", format!("hello from {name}")))
        .build()
}

// ---------------------------------------------------------------------------
// 1. token realms

#[tokio::test]
async fn credentials_go_to_a_plain_http_token_realm_only_on_the_registry_host() {
    // A host wharf must never send credentials to: another loopback address, so that
    // a connection would be seen (it stands for http://10.255.255.1/token).
    let forbidden = HostileServer::forbidden("127.0.0.2:0").await;
    let tokens = HostileServer::start("127.0.0.1:0", |req| {
        if req.header("authorization") == Some(ALICE_BASIC) {
            Response::new(200)
                .header("Content-Type", "application/json")
                .body(r#"{"token":"good-token","expires_in":300}"#)
        } else {
            Response::new(401)
        }
    })
    .await;
    let image = small_image("realm");
    let routes = Routes::for_image("evil/realm", "latest", &image);
    let realm = Arc::new(Mutex::new(format!("http://{}/token", forbidden.host())));
    let challenge = realm.clone();
    let registry = HostileServer::start("127.0.0.1:0", move |req| {
        if req.header("authorization") == Some("Bearer good-token") {
            return routes.serve(req);
        }
        let realm = challenge.lock().unwrap().clone();
        Response::registry_error(401, "UNAUTHORIZED").header(
            "WWW-Authenticate",
            &format!(r#"Bearer realm="{realm}",service="evil""#),
        )
    })
    .await;
    let daemon = Daemon::start().await;
    let mut client = daemon.image_client().await;
    let reference = format!("{}/evil/realm:latest", registry.host());

    let err = pull(&mut client, &reference, alice()).await.unwrap_err();
    let forbidden_realm = format!("http://{}/token", forbidden.host());
    assert_refused(
        &err,
        Code::FailedPrecondition,
        &[&forbidden_realm, "token realm", &registry.host()],
    );
    assert!(!err.message().contains("s3cret"));
    assert_eq!(forbidden.connections(), 0, "credentials went to the realm");
    assert_nothing_stored(&daemon, &mut client).await;

    // A realm on a private address that does not exist: refused by name, at once.
    *realm.lock().unwrap() = "http://10.255.255.1/token".to_string();
    let started = Instant::now();
    let err = pull(&mut client, &reference, alice()).await.unwrap_err();
    assert_refused(
        &err,
        Code::FailedPrecondition,
        &["http://10.255.255.1/token"],
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "it tried to connect"
    );

    // The registry's own host (another port) may have a plain-HTTP realm: the pull
    // goes through, with the credentials sent there.
    *realm.lock().unwrap() = format!("http://{}/token", tokens.host());
    pull(&mut client, &reference, alice())
        .await
        .expect("pull with a token from the registry's own host");
    assert!(tokens
        .requests()
        .iter()
        .any(|r| r.header("authorization") == Some(ALICE_BASIC)));
    assert_eq!(forbidden.connections(), 0);
}

// ---------------------------------------------------------------------------
// 2. blob redirects

#[tokio::test]
async fn blob_redirects_are_followed_only_within_the_policy() {
    let image = small_image("redirect");
    let layer = image.layers[0].digest.clone();
    let layer_bytes = image.read_blob(&layer);
    let forbidden = HostileServer::forbidden("127.0.0.1:0").await;
    let cdn = HostileServer::start("127.0.0.1:0", move |req| {
        if req.route().starts_with("/cdn/") {
            Response::new(200).body(layer_bytes.clone())
        } else {
            Response::new(404)
        }
    })
    .await;
    let target = Arc::new(Mutex::new(String::new()));
    let (to, routes, forbidden_url) = (
        target.clone(),
        Routes::for_image("evil/redirect", "latest", &image),
        forbidden.url(),
    );
    let blob_route = format!("/v2/evil/redirect/blobs/{layer}");
    let registry = HostileServer::start("127.0.0.1:0", move |req| {
        // Basic auth, so that requests carry the registry's Authorization header.
        if req.header("authorization") != Some(ALICE_BASIC) {
            return Response::registry_error(401, "UNAUTHORIZED")
                .header("WWW-Authenticate", r#"Basic realm="evil""#);
        }
        if req.route() == blob_route {
            return Response::redirect(307, &to.lock().unwrap());
        }
        // a chain of redirects on the registry itself; the sixth goes to `forbidden`
        if let Some(n) = req.route().strip_prefix("/hop/") {
            let n: u32 = n.parse().unwrap_or(0);
            return if n >= 5 {
                Response::redirect(302, &format!("{forbidden_url}/too-far"))
            } else {
                Response::redirect(302, &format!("/hop/{}", n + 1))
            };
        }
        routes.serve(req)
    })
    .await;
    let daemon = Daemon::start().await;
    let mut client = daemon.image_client().await;
    let reference = format!("{}/evil/redirect:latest", registry.host());

    // A loopback registry may not send wharf into the private network, nor to a
    // public address (neither is connected to: refused by the URL), nor to another
    // scheme.
    for (location, reason) in [
        (
            "http://10.255.255.1/blob",
            "may not send wharf to a private address",
        ),
        (
            "https://203.0.113.9/blob",
            "may not send wharf to a public address",
        ),
        ("file:///etc/shadow", "not http or https"),
    ] {
        *target.lock().unwrap() = location.to_string();
        let started = Instant::now();
        let err = pull(&mut client, &reference, alice()).await.unwrap_err();
        assert_refused(
            &err,
            Code::FailedPrecondition,
            &[&format!("refused redirect to {location}"), reason],
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{location}: it tried to connect"
        );
        assert_nothing_stored(&daemon, &mut client).await;
    }

    // At most 5 hops: the sixth is not followed, so `forbidden` sees no connection.
    *target.lock().unwrap() = format!("{}/hop/1", registry.url());
    let err = pull(&mut client, &reference, alice()).await.unwrap_err();
    assert_refused(
        &err,
        Code::FailedPrecondition,
        &[
            "more than 5 redirects",
            &format!("refused redirect to {}/too-far", forbidden.url()),
        ],
    );
    assert_eq!(forbidden.connections(), 0);
    assert_nothing_stored(&daemon, &mut client).await;

    // A redirect that is followed but fails: the error names the URL that failed, not
    // only the registry.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let dead = format!("http://127.0.0.1:{closed}/cdn/{}", digest_hex(&layer));
    *target.lock().unwrap() = dead.clone();
    let err = pull(&mut client, &reference, alice()).await.unwrap_err();
    assert_refused(&err, Code::Unavailable, &[&dead]);
    assert_nothing_stored(&daemon, &mut client).await;

    // Another host of the same class (a CDN on loopback): followed, and the registry's
    // Authorization header does not go along.
    *target.lock().unwrap() = format!("{}/cdn/{}", cdn.url(), digest_hex(&layer));
    pull(&mut client, &reference, alice())
        .await
        .expect("pull through a CDN redirect");
    let cdn_requests = cdn.requests();
    assert_eq!(cdn_requests.len(), 1, "{cdn_requests:?}");
    assert_eq!(cdn_requests[0].header("authorization"), None);
    assert!(registry
        .requests()
        .iter()
        .any(|r| r.route().contains("/blobs/") && r.header("authorization").is_some()));
}

// ---------------------------------------------------------------------------
// 3. bounded errors

#[tokio::test]
async fn a_huge_entry_path_gives_a_bounded_error() {
    let long = "x".repeat(1 << 20);
    let image = ImageBuilder::new()
        .layer(LayerBuilder::new().file(&long, "data"))
        .build();
    let layer = image.layers[0].digest.clone();
    let routes = Routes::for_image("evil/long", "latest", &image);
    let registry = HostileServer::start("127.0.0.1:0", move |req| routes.serve(req)).await;
    let daemon = Daemon::start().await;
    let mut client = daemon.image_client().await;
    let err = pull(
        &mut client,
        &format!("{}/evil/long:latest", registry.host()),
        None,
    )
    .await
    .unwrap_err();
    assert_refused(
        &err,
        Code::FailedPrecondition,
        &[&layer, "tar entry", "xxxxxxxx…", "(1048576 bytes)"],
    );
    assert!(err.message().len() < 1024, "{}", err.message().len());
    assert_nothing_stored(&daemon, &mut client).await;
    // the log does not carry it either
    let log = daemon.log();
    assert!(
        !log.contains(&"x".repeat(4096)),
        "the daemon log echoes the whole path"
    );
}

/// Exhaustion: a layer blob that does not end where its manifest says (a stream with no
/// Content-Length that never ends; a Content-Length one byte past the size) is cut or
/// refused at the manifest's size. The pull fails naming the digest and both sizes,
/// nothing is stored, and wharf hung up after about the declared size, not the stream.
#[tokio::test]
async fn a_blob_past_its_manifest_size_is_cut_there() {
    let endless_image = small_image("endless");
    let longer_image = small_image("longer");
    let serve_past = |image: &OciImage, endless: bool| {
        let digest = image.layers[0].digest.clone();
        let mut body = image.read_blob(&digest);
        if !endless {
            body.push(0);
        }
        (digest, body, endless)
    };
    let past = [
        serve_past(&endless_image, true),
        serve_past(&longer_image, false),
    ];
    let routes = Routes::for_image("evil/endless", "latest", &endless_image).image(
        "evil/longer",
        "latest",
        &longer_image,
    );
    let registry = HostileServer::start("127.0.0.1:0", move |req| {
        for (digest, body, endless) in &past {
            if req.route().ends_with(&format!("/blobs/{digest}")) {
                let mut response = Response::new(200)
                    .header("Content-Type", MEDIA_TYPE_LAYER_GZIP)
                    .body(body.clone());
                response.endless = *endless;
                return response;
            }
        }
        routes.serve(req)
    })
    .await;
    let daemon = Daemon::start().await;
    let mut client = daemon.image_client().await;
    for (repo, image) in [
        ("evil/endless", &endless_image),
        ("evil/longer", &longer_image),
    ] {
        let layer = &image.layers[0];
        let started = std::time::Instant::now();
        let err = pull(
            &mut client,
            &format!("{}/{repo}:latest", registry.host()),
            None,
        )
        .await
        .unwrap_err();
        assert_refused(
            &err,
            Code::DataLoss,
            &[&layer.digest, &format!("expected {}", layer.size)],
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "{repo}: refused in {:?}",
            started.elapsed()
        );
        assert_nothing_stored(&daemon, &mut client).await;
    }
    let sent = support::hostile::ENDLESS_SENT.load(std::sync::atomic::Ordering::SeqCst);
    eprintln!("the endless blob: wharf hung up after the server had sent {sent} bytes");
    assert!(
        sent < 64 << 20,
        "wharf read {sent} bytes of the endless blob before it hung up"
    );
}

// ---------------------------------------------------------------------------
// 4. limits

/// A manifest of `layers` layers (never served: they must not be fetched) and its config.
fn deep_image(layers: usize) -> (Vec<u8>, Vec<u8>) {
    let diff_ids: Vec<String> = (0..layers)
        .map(|i| sha256_digest(format!("diff {i}").as_bytes()))
        .collect();
    let config = serde_json::to_vec(&json!({
        "architecture": host_arch(),
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_MANIFEST,
        "config": {
            "mediaType": MEDIA_TYPE_CONFIG,
            "digest": sha256_digest(&config),
            "size": config.len(),
        },
        "layers": (0..layers).map(|i| json!({
            "mediaType": MEDIA_TYPE_LAYER_GZIP,
            "digest": sha256_digest(format!("layer {i}").as_bytes()),
            "size": 100,
        })).collect::<Vec<_>>(),
    }))
    .unwrap();
    (manifest, config)
}

/// No layer of `repo` was asked for: only its config blob.
fn assert_only_config_fetched(registry: &HostileServer, repo: &str, config_digest: &str) {
    let prefix = format!("/v2/{repo}/blobs/");
    for request in registry.requests() {
        if let Some(digest) = request.route().strip_prefix(&prefix) {
            assert_eq!(
                digest, config_digest,
                "a layer of the refused image was fetched"
            );
        }
    }
}

#[tokio::test]
async fn limits_refuse_an_image_and_leave_nothing() {
    let (deep_manifest, deep_config) = deep_image(5);
    let deep_config_digest = sha256_digest(&deep_config);
    let many_entries = (0..150).fold(LayerBuilder::new(), |layer, i| {
        layer.file(&format!("f{i}"), "x")
    });
    let entries_image = ImageBuilder::new().layer(many_entries).build();
    // 8 MiB of zeros: a few KiB of gzip
    let bomb_image = ImageBuilder::new()
        .layer(LayerBuilder::new().file("zeros", vec![0u8; 8 << 20]))
        .build();
    // four layers of 900 KiB: each within the layer limit, together past the image's
    let wide_image = (0..4)
        .fold(ImageBuilder::new(), |image, i| {
            image.layer(LayerBuilder::new().file(&format!("part{i}"), vec![i as u8; 900 << 10]))
        })
        .build();
    let routes = Routes::new()
        .manifest("evil/deep", "latest", MEDIA_TYPE_MANIFEST, deep_manifest)
        .blob(deep_config)
        .image("evil/entries", "latest", &entries_image)
        .image("evil/bomb", "latest", &bomb_image)
        .image("evil/wide", "latest", &wide_image);
    let registry = HostileServer::start("127.0.0.1:0", move |req| routes.serve(req)).await;
    let daemon = Daemon::start_with_config(
        "[registry]\n\
         max_layers_per_image = 4\n\
         max_entries_per_layer = 100\n\
         max_unpacked_bytes_per_layer = 1048576\n\
         max_unpacked_bytes_per_image = 3145728\n",
    )
    .await;
    let mut client = daemon.image_client().await;
    let at = |repo: &str| format!("{}/{repo}:latest", registry.host());

    let err = pull(&mut client, &at("evil/deep"), None).await.unwrap_err();
    assert_refused(
        &err,
        Code::ResourceExhausted,
        &["5 layers", "registry.max_layers_per_image", "evil/deep"],
    );
    assert_only_config_fetched(&registry, "evil/deep", &deep_config_digest);
    assert_nothing_stored(&daemon, &mut client).await;

    let err = pull(&mut client, &at("evil/entries"), None)
        .await
        .unwrap_err();
    assert_refused(
        &err,
        Code::ResourceExhausted,
        &[
            &entries_image.layers[0].digest,
            "registry.max_entries_per_layer",
            "100",
        ],
    );
    assert_nothing_stored(&daemon, &mut client).await;

    let err = pull(&mut client, &at("evil/bomb"), None).await.unwrap_err();
    assert_refused(
        &err,
        Code::ResourceExhausted,
        &[
            &bomb_image.layers[0].digest,
            "registry.max_unpacked_bytes_per_layer",
            "1048576",
        ],
    );
    assert_nothing_stored(&daemon, &mut client).await;

    let err = pull(&mut client, &at("evil/wide"), None).await.unwrap_err();
    assert_refused(
        &err,
        Code::ResourceExhausted,
        &["registry.max_unpacked_bytes_per_image", "3145728"],
    );
    // the layers that did unpack are gone too
    assert_nothing_stored(&daemon, &mut client).await;
}

/// The default: an image deeper than overlayfs (and containerd) allows is refused
/// before any layer is fetched.
#[tokio::test]
async fn an_image_of_129_layers_is_refused_by_default() {
    let (manifest, config) = deep_image(129);
    let config_digest = sha256_digest(&config);
    let routes = Routes::new()
        .manifest("evil/deeper", "latest", MEDIA_TYPE_MANIFEST, manifest)
        .blob(config);
    let registry = HostileServer::start("127.0.0.1:0", move |req| routes.serve(req)).await;
    let daemon = Daemon::start().await;
    let mut client = daemon.image_client().await;
    let err = pull(
        &mut client,
        &format!("{}/evil/deeper:latest", registry.host()),
        None,
    )
    .await
    .unwrap_err();
    assert_refused(
        &err,
        Code::ResourceExhausted,
        &["129 layers", "128", "registry.max_layers_per_image"],
    );
    assert_only_config_fetched(&registry, "evil/deeper", &config_digest);
    assert_nothing_stored(&daemon, &mut client).await;
}

// ---------------------------------------------------------------------------
// issue 15: which failure a pull reports when every endpoint fails

#[tokio::test]
async fn not_found_on_a_mirror_beats_an_unreachable_registry() {
    let mirror = Registry::start().await;
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let origin = format!("127.0.0.1:{closed}");
    let daemon = Daemon::start_with_config(&format!(
        "[registry.mirrors]\n\"{origin}\" = [\"{}\"]\n",
        mirror.url()
    ))
    .await;
    let mut client = daemon.image_client().await;
    let err = pull(
        &mut client,
        &format!("{origin}/library/busybox:does-not-exist"),
        None,
    )
    .await
    .unwrap_err();
    assert_refused(
        &err,
        Code::NotFound,
        &[
            "does-not-exist not found",
            &mirror.url(),
            &format!("registry {origin} unreachable"),
        ],
    );
    assert_nothing_stored(&daemon, &mut client).await;
}

/// Bytes in use on the filesystem at `path` (statvfs).
fn used_bytes(path: &std::path::Path) -> u64 {
    let stat = nix::sys::statvfs::statvfs(path).expect("statvfs");
    (stat.blocks() - stat.blocks_free()) * stat.fragment_size()
}

/// Exhaustion: the disk fills during a pull (wharf's root on a 24 MiB tmpfs, an image
/// of 60 MiB to store). The pull fails with an error that names the layer and the
/// cause, nothing is stored or half-written, the space comes back, and the daemon
/// pulls a small image afterwards.
#[tokio::test]
async fn a_disk_that_fills_during_a_pull_fails_it_cleanly() {
    let big = ImageBuilder::new()
        .layer(LayerBuilder::new().file("small", "small"))
        .layer(LayerBuilder::new().file("big", support::incompressible(30 << 20, 24)))
        .build();
    let small = small_image("after");
    let routes =
        Routes::for_image("full/big", "latest", &big).image("full/small", "latest", &small);
    let registry = HostileServer::start("127.0.0.1:0", move |req| routes.serve(req)).await;
    let mut daemon = Daemon::start().await;
    daemon.stop();
    let root = daemon.paths.root.clone();
    std::fs::remove_dir_all(&root).expect("empty the root");
    std::fs::create_dir_all(&root).expect("make the root");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=24m,mode=0711", "wharf-full"])
        .arg(&root)
        .status()
        .expect("run mount");
    assert!(
        mounted.success(),
        "mount a 24 MiB tmpfs on {}",
        root.display()
    );
    daemon.restart().await;
    let mut client = daemon.image_client().await;
    let baseline = used_bytes(&root);

    let err = pull(
        &mut client,
        &format!("{}/full/big:latest", registry.host()),
        None,
    )
    .await
    .unwrap_err();
    assert_refused(
        &err,
        Code::ResourceExhausted,
        &[&big.layers[1].digest, "No space left on device"],
    );
    assert_nothing_stored(&daemon, &mut client).await;
    assert!(
        used_bytes(&root) <= baseline + (1 << 20),
        "the space came back: {} bytes used, {baseline} before",
        used_bytes(&root)
    );
    pull(
        &mut client,
        &format!("{}/full/small:latest", registry.host()),
        None,
    )
    .await
    .expect("a small image pulls after the disk filled");
}
