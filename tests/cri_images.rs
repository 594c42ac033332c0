//! CRI ImageService against a real wharfd and a real local registry.

mod support;

use support::entries;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::{
    AuthConfig, ImageFilter, ImageFsInfoRequest, ImageSpec, ImageStatusRequest, ListImagesRequest,
    PullImageRequest, RemoveImageRequest,
};
use support::daemon::Daemon;
use support::images::{
    assert_rootfs_matches, busybox_image, config_image, digest_hex, image_index_for,
    whiteout_expected, whiteout_image, ImageBuilder, LayerBlob, LayerBuilder, OciImage,
};
use support::registry::Registry;
use tonic::transport::Channel;
use tonic::Code;

type Client = ImageServiceClient<Channel>;

fn spec(image: &str) -> Option<ImageSpec> {
    Some(ImageSpec {
        image: image.to_string(),
        ..ImageSpec::default()
    })
}

async fn pull(client: &mut Client, image: &str) -> Result<String, tonic::Status> {
    pull_with(client, image, None).await
}

async fn pull_with(
    client: &mut Client,
    image: &str,
    auth: Option<AuthConfig>,
) -> Result<String, tonic::Status> {
    client
        .pull_image(PullImageRequest {
            image: spec(image),
            auth,
            sandbox_config: None,
        })
        .await
        .map(|r| r.into_inner().image_ref)
}

async fn status(client: &mut Client, image: &str) -> Option<k8s_cri::v1::Image> {
    client
        .image_status(ImageStatusRequest {
            image: spec(image),
            verbose: false,
        })
        .await
        .expect("ImageStatus")
        .into_inner()
        .image
}

async fn list(client: &mut Client) -> Vec<k8s_cri::v1::Image> {
    client
        .list_images(ListImagesRequest { filter: None })
        .await
        .expect("ListImages")
        .into_inner()
        .images
}

async fn remove(client: &mut Client, image: &str) {
    client
        .remove_image(RemoveImageRequest { image: spec(image) })
        .await
        .expect("RemoveImage");
}

fn blobs_dir(daemon: &Daemon) -> PathBuf {
    daemon.paths.root.join("content/sha256")
}

fn layers_dir(daemon: &Daemon) -> PathBuf {
    daemon.paths.root.join("snapshots/layers")
}

#[tokio::test]
async fn pull_by_tag_then_list_status_and_fs_info() {
    let registry = Registry::start().await;
    let image = config_image();
    registry.push("test/config", "v1", &image).await;
    let daemon = Daemon::start().await;
    let mut client = daemon.image_client().await;

    let reference = format!("{}/test/config:v1", registry.host());
    let image_ref = pull(&mut client, &reference).await.expect("PullImage");
    assert_eq!(
        image_ref, image.config_digest,
        "image ref is the config digest"
    );

    let listed = list(&mut client).await;
    assert_eq!(listed.len(), 1);
    let status = status(&mut client, &reference)
        .await
        .expect("image is present");
    assert_eq!(status.id, image.config_digest);
    assert_eq!(status.repo_tags, vec![reference.clone()]);
    assert_eq!(
        status.repo_digests,
        vec![format!(
            "{}/test/config@{}",
            registry.host(),
            image.manifest_digest
        )]
    );
    assert_eq!(status.username, "wharf", "from the config's User");
    assert!(status.uid.is_none());
    let blob_bytes: u64 = image.layers.iter().map(|l| l.size).sum();
    assert!(status.size >= blob_bytes, "{} < {blob_bytes}", status.size);
    // Found by ID, by ID prefix and by digest reference too.
    for query in [
        image.config_digest.clone(),
        digest_hex(&image.config_digest)[..12].to_string(),
        status.repo_digests[0].clone(),
    ] {
        let found = self::status(&mut client, &query).await;
        assert_eq!(
            found.map(|i| i.id),
            Some(image.config_digest.clone()),
            "{query}"
        );
    }
    let filtered = client
        .list_images(ListImagesRequest {
            filter: Some(ImageFilter {
                image: spec(&reference),
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .images;
    assert_eq!(filtered.len(), 1);

    let verbose = client
        .image_status(ImageStatusRequest {
            image: spec(&reference),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&verbose.info["info"]).unwrap();
    assert_eq!(info["imageSpec"]["config"]["User"], "wharf");
    assert_eq!(info["imageSpec"]["config"]["WorkingDir"], "/home/wharf");

    // An absent image is a response without an image, not an error.
    assert!(self::status(&mut client, "example.invalid/none:latest")
        .await
        .is_none());

    let fs = client
        .image_fs_info(ImageFsInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    let usage = &fs.image_filesystems[0];
    assert!(usage.used_bytes.as_ref().unwrap().value >= blob_bytes);
    assert!(
        usage.inodes_used.as_ref().unwrap().value > 100,
        "busybox has ~300 entries"
    );
}

#[tokio::test]
async fn pull_by_digest_and_multi_platform_index() {
    let registry = Registry::start().await;
    let native = busybox_image();
    let foreign = ImageBuilder::busybox().platform("s390x", "linux").build();
    let index = image_index_for(&[(&native, native.platform()), (&foreign, foreign.platform())]);
    let index_digest = registry
        .push_index("test/multi", "latest", &[&native, &foreign], &index)
        .await;
    let daemon = Daemon::start().await;
    let mut client = daemon.image_client().await;

    let image_ref = pull(
        &mut client,
        &format!("{}/test/multi:latest", registry.host()),
    )
    .await
    .expect("pull through an index");
    assert_eq!(
        image_ref, native.config_digest,
        "the host platform's image was chosen"
    );
    let status = status(&mut client, &image_ref).await.unwrap();
    assert_eq!(
        status.repo_digests,
        vec![format!("{}/test/multi@{index_digest}", registry.host())],
        "repo digest is the index digest, as containerd records it"
    );

    let by_digest = format!("{}/test/multi@{}", registry.host(), native.manifest_digest);
    assert_eq!(
        pull(&mut client, &by_digest).await.unwrap(),
        native.config_digest
    );

    // The platform is configurable: this daemon picks the s390x image of the index.
    let s390x = Daemon::start_with_config("[registry]\nplatform = \"linux/s390x\"\n").await;
    let mut client = s390x.image_client().await;
    let image_ref = pull(
        &mut client,
        &format!("{}/test/multi:latest", registry.host()),
    )
    .await
    .expect("pull the configured platform");
    assert_eq!(image_ref, foreign.config_digest);
}

#[tokio::test]
async fn bad_references_and_unknown_images_are_named() {
    let registry = Registry::start().await;
    let daemon = Daemon::start().await;
    let mut client = daemon.image_client().await;

    let err = pull(&mut client, "UPPER/Case:tag").await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("UPPER/Case:tag"), "{err:?}");

    let err = pull(
        &mut client,
        &format!("{}/test/absent:nope", registry.host()),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(
        err.message().contains(&registry.host()) && err.message().contains("test/absent"),
        "{err:?}"
    );
    let err = client
        .pull_image(PullImageRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(list(&mut client).await.is_empty());
}

#[tokio::test]
async fn basic_auth_registry_needs_credentials_and_never_echoes_them() {
    let password = "pa55-word-XYZ";
    let registry = Registry::start_with_basic_auth("puller", password).await;
    registry
        .push("private/busybox", "latest", &busybox_image())
        .await;
    let daemon = Daemon::start().await;
    let mut client = daemon.image_client().await;
    let reference = format!("{}/private/busybox:latest", registry.host());

    let err = pull(&mut client, &reference).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains(&registry.host()), "{err:?}");

    let wrong = AuthConfig {
        username: "puller".into(),
        password: "wrong-password-123".into(),
        ..AuthConfig::default()
    };
    let err = pull_with(&mut client, &reference, Some(wrong))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(!err.message().contains("wrong-password-123"), "{err:?}");

    let right = AuthConfig {
        username: "puller".into(),
        password: password.into(),
        ..AuthConfig::default()
    };
    pull_with(&mut client, &reference, Some(right))
        .await
        .expect("pull with credentials");
    let log = daemon.log();
    assert!(!log.contains(password) && !log.contains("wrong-password-123"));
}

#[tokio::test]
async fn docker_hub_names_are_pulled_through_a_configured_mirror() {
    let registry = Registry::start().await;
    registry
        .push("library/busybox", "latest", &busybox_image())
        .await;
    let daemon = Daemon::start_with_config(&format!(
        "[registry.mirrors]\n\"docker.io\" = [\"{}\"]\n",
        registry.url()
    ))
    .await;
    let mut client = daemon.image_client().await;
    let image_ref = pull(&mut client, "busybox")
        .await
        .expect("pull via the mirror");
    let status = status(&mut client, "docker.io/library/busybox:latest")
        .await
        .expect("found under its normalized name");
    assert_eq!(status.id, image_ref);
    assert_eq!(status.repo_tags, vec!["docker.io/library/busybox:latest"]);
    // Short names find it too, normalized as Docker does.
    assert!(self::status(&mut client, "busybox").await.is_some());
    assert!(self::status(&mut client, "library/busybox:latest")
        .await
        .is_some());
}

#[tokio::test]
async fn concurrent_pulls_of_one_image_download_each_blob_once() {
    let registry = Registry::start().await;
    let image = busybox_image();
    registry.push("test/busybox", "latest", &image).await;
    let daemon = Daemon::start().await;
    let reference = format!("{}/test/busybox:latest", registry.host());
    let pulls = (0..4).map(|_| {
        let reference = reference.clone();
        let channel = daemon.channel();
        async move {
            let mut client = ImageServiceClient::new(channel.await);
            pull(&mut client, &reference).await
        }
    });
    for result in futures_util::future::join_all(pulls).await {
        assert_eq!(result.expect("concurrent pull"), image.config_digest);
    }
    let layer = &image.layers[0].digest;
    let log = registry.log();
    let fetches = log
        .lines()
        .filter(|line| line.contains(&format!("\"GET /v2/test/busybox/blobs/{layer}")))
        .count();
    assert_eq!(
        fetches, 1,
        "layer fetched {fetches} times; registry log:\n{log}"
    );
}

#[tokio::test]
async fn whiteout_layers_give_the_right_tree_in_a_mounted_rootfs() {
    use wharf::image::snapshot::{mount_rootfs, unmount_rootfs, Snapshotter};
    let registry = Registry::start().await;
    let image = whiteout_image();
    registry.push("test/whiteout", "latest", &image).await;
    let daemon = Daemon::start().await;
    let mut client = daemon.image_client().await;
    pull(
        &mut client,
        &format!("{}/test/whiteout:latest", registry.host()),
    )
    .await
    .expect("pull");
    let verbose = client
        .image_status(ImageStatusRequest {
            image: spec(&image.config_digest),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&verbose.info["info"]).unwrap();
    let chain: Vec<String> = info["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["chain_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(chain.len(), 3);

    let snapshots = Snapshotter::open(&daemon.paths.root.join("snapshots")).unwrap();
    let work = tempfile::tempdir().unwrap();
    let target = work.path().join("rootfs");
    std::fs::create_dir(&target).unwrap();
    mount_rootfs(
        &snapshots,
        &chain,
        &work.path().join("container"),
        &target,
        false,
    )
    .expect("mount rootfs");
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = wharf::image::snapshot::unmount_rootfs(self.0);
        }
    }
    let guard = Unmount(&target);
    assert_rootfs_matches(&target, &whiteout_expected());
    drop(guard);
    unmount_rootfs(&target).unwrap();
}

#[tokio::test]
async fn remove_untags_then_removes_and_collects_garbage() {
    let registry = Registry::start().await;
    let busybox = busybox_image();
    let config = config_image();
    registry.push("test/busybox", "one", &busybox).await;
    registry.push("test/busybox", "two", &busybox).await;
    registry.push("test/config", "latest", &config).await;
    let daemon = Daemon::start().await;
    let mut client = daemon.image_client().await;
    let one = format!("{}/test/busybox:one", registry.host());
    let two = format!("{}/test/busybox:two", registry.host());
    let other = format!("{}/test/config:latest", registry.host());
    for reference in [&one, &two, &other] {
        pull(&mut client, reference).await.expect("pull");
    }
    let image = status(&mut client, &one).await.unwrap();
    assert_eq!(image.repo_tags.len(), 2, "{image:?}");
    let shared_base = &busybox.layers[0].digest;
    assert_eq!(
        shared_base, &config.layers[0].digest,
        "fixtures share the base layer"
    );

    // Removing one of two tags only untags.
    remove(&mut client, &one).await;
    let image = status(&mut client, &two)
        .await
        .expect("still there by its other tag");
    assert_eq!(image.repo_tags, vec![two.clone()]);
    assert!(status(&mut client, &one).await.is_none());

    // Removing the last tag removes the image; the shared layer stays for the other.
    remove(&mut client, &two).await;
    assert!(status(&mut client, &busybox.config_digest).await.is_none());
    let blobs = entries(&blobs_dir(&daemon));
    assert!(blobs.contains(&digest_hex(shared_base).to_string()));
    assert!(!blobs.contains(&digest_hex(&busybox.config_digest).to_string()));
    assert!(!blobs.contains(&digest_hex(&busybox.manifest_digest).to_string()));
    assert_eq!(entries(&layers_dir(&daemon)).len(), 1);

    // Removing by ID removes the rest; nothing is left behind. Removing again is fine.
    remove(&mut client, &config.config_digest).await;
    remove(&mut client, &config.config_digest).await;
    assert!(list(&mut client).await.is_empty());
    assert_eq!(entries(&blobs_dir(&daemon)), Vec::<String>::new());
    assert_eq!(entries(&layers_dir(&daemon)), Vec::<String>::new());
}

#[tokio::test]
async fn a_corrupted_blob_is_rejected_and_nothing_is_stored() {
    let registry = Registry::start().await;
    let image = busybox_image();
    registry.push("test/corrupt", "latest", &image).await;
    let layer = &image.layers[0].digest;
    let hex = digest_hex(layer);
    let data = registry.storage_dir().join(format!(
        "docker/registry/v2/blobs/sha256/{}/{hex}/data",
        &hex[..2]
    ));
    let mut bytes = std::fs::read(&data).expect("registry blob data file");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&data, &bytes).unwrap();

    let daemon = Daemon::start().await;
    let mut client = daemon.image_client().await;
    let err = pull(
        &mut client,
        &format!("{}/test/corrupt:latest", registry.host()),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::DataLoss, "{err:?}");
    assert!(err.message().contains(layer), "{err:?}");
    assert!(list(&mut client).await.is_empty());
    assert!(!entries(&blobs_dir(&daemon)).contains(&hex.to_string()));
    assert_eq!(entries(&layers_dir(&daemon)), Vec::<String>::new());
    assert_eq!(
        entries(&daemon.paths.root.join("content/ingest")),
        Vec::<String>::new()
    );
    assert_eq!(
        entries(&daemon.paths.root.join("snapshots/tmp")),
        Vec::<String>::new()
    );
}

/// Incompressible bytes, so a layer's size is what goes over the wire.
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn big_image() -> OciImage {
    let mut builder = ImageBuilder::busybox();
    for i in 0..4u64 {
        let tar = LayerBuilder::new()
            .dir("big")
            .file(&format!("big/part{i}"), noise(24 << 20, i + 1))
            .tar();
        builder = builder.layer_blob(LayerBlob::uncompressed(tar));
    }
    builder.build()
}

#[tokio::test]
async fn kill_9_during_a_pull_leaves_no_image_and_the_retry_completes() {
    let registry = Registry::start().await;
    let image = big_image();
    registry.push("test/big", "latest", &image).await;
    let mut daemon = Daemon::start().await;
    let reference = format!("{}/test/big:latest", registry.host());

    let channel = daemon.channel().await;
    let reference_for_pull = reference.clone();
    let pulling = tokio::spawn(async move {
        let mut client = ImageServiceClient::new(channel);
        pull(&mut client, &reference_for_pull).await
    });
    // Wait until some layer data has been written, then crash the daemon.
    let ingest = daemon.paths.root.join("content/ingest");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let busy = std::fs::read_dir(&ingest)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .any(|e| e.metadata().map(|m| m.len() > 0).unwrap_or(false))
            })
            .unwrap_or(false);
        // At least one layer finished and another under way.
        if busy && !entries(&blobs_dir(&daemon)).is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the pull never started writing a layer"
        );
        assert!(
            !pulling.is_finished(),
            "the pull finished before it could be interrupted"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Layers finished before the crash must not be downloaded again by the retry.
    let committed_before_kill = entries(&blobs_dir(&daemon));
    daemon.kill9();
    assert!(
        pulling.await.unwrap().is_err(),
        "the interrupted pull failed"
    );

    daemon.restart().await;
    let mut client = daemon.image_client().await;
    assert!(
        list(&mut client).await.is_empty(),
        "no half-pulled image is listed"
    );
    assert_eq!(
        entries(&ingest),
        Vec::<String>::new(),
        "partial downloads cleaned at start"
    );
    assert_eq!(
        entries(&daemon.paths.root.join("snapshots/tmp")),
        Vec::<String>::new()
    );

    assert_eq!(
        pull(&mut client, &reference).await.expect("retry"),
        image.config_digest
    );
    assert_eq!(list(&mut client).await.len(), 1);
    assert_eq!(entries(&layers_dir(&daemon)).len(), image.layers.len());
    let log = registry.log();
    for hex in &committed_before_kill {
        let fetches = log
            .lines()
            .filter(|l| l.contains(&format!("\"GET /v2/test/big/blobs/sha256:{hex}")))
            .count();
        assert_eq!(
            fetches, 1,
            "blob {hex} was finished before the crash but fetched {fetches} times"
        );
    }
}
