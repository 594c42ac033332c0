//! The core image service in-process (what the CRI and Docker front-ends call), against
//! a real local registry: push, and garbage collection racing pulls.

mod support;

use std::sync::Arc;

use support::images::{busybox_image, digest_hex, ImageBuilder, LayerBlob, LayerBuilder};
use support::registry::Registry;
use wharf::config::RegistryConfig;
use wharf::image::registry::Credentials;
use wharf::image::ImageService;
use wharf::store::{Store, CRI_NAMESPACE};

fn open_service(root: &std::path::Path) -> Arc<ImageService> {
    let store = Arc::new(Store::open(root).expect("open store"));
    Arc::new(ImageService::open(root, store, &RegistryConfig::default()).expect("open images"))
}

#[tokio::test]
async fn pushed_image_pulls_back_identical_and_mounts_shared_blobs() {
    support::daemon::require_root();
    let registry = Registry::start().await;
    let image = busybox_image();
    registry.push("test/busybox", "latest", &image).await;
    let root = tempfile::tempdir().unwrap();
    let service = open_service(root.path());
    let source = format!("{}/test/busybox:latest", registry.host());
    service
        .pull(CRI_NAMESPACE, &source, &Credentials::Anonymous)
        .await
        .expect("pull");

    let target = format!("{}/pushed/busybox:v1", registry.host());
    let digest = service
        .push(CRI_NAMESPACE, &source, &target, &Credentials::Anonymous)
        .await
        .expect("push");
    assert_eq!(digest, image.manifest_digest);
    let (manifest, _, served_digest) = registry.get_manifest("pushed/busybox", "v1").await;
    assert_eq!(served_digest, image.manifest_digest);
    assert_eq!(manifest, image.manifest, "byte-identical manifest");

    // The layer was mounted from the repository it was pulled from, not uploaded.
    let layer = &image.layers[0].digest;
    let log = registry.log();
    assert!(
        log.lines()
            .any(|l| l.contains("POST /v2/pushed/busybox/blobs/uploads/")
                && l.contains(&format!("mount=sha256%3A{}", digest_hex(layer)))
                && l.contains("from=test%2Fbusybox")),
        "no cross-repository mount of {layer} in the registry log:\n{log}"
    );

    // Pulled back into an empty root: same image ID and manifest.
    let other_root = tempfile::tempdir().unwrap();
    let fresh = open_service(other_root.path());
    let pulled = fresh
        .pull(CRI_NAMESPACE, &target, &Credentials::Anonymous)
        .await
        .expect("pull back");
    assert_eq!(pulled.id, image.config_digest);
    assert_eq!(pulled.manifest_digest, image.manifest_digest);

    // Pushing again uploads nothing new.
    let uploads_before = registry
        .log()
        .matches("PUT /v2/pushed/busybox/blobs/uploads/")
        .count();
    service
        .push(CRI_NAMESPACE, &source, &target, &Credentials::Anonymous)
        .await
        .expect("second push");
    let uploads_after = registry
        .log()
        .matches("PUT /v2/pushed/busybox/blobs/uploads/")
        .count();
    assert_eq!(
        uploads_before, uploads_after,
        "existing blobs were uploaded again"
    );

    let err = service
        .push(
            CRI_NAMESPACE,
            "no/such:image",
            &target,
            &Credentials::Anonymous,
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no/such:image"), "{err}");
}

#[tokio::test]
async fn garbage_collection_during_a_pull_keeps_what_the_pull_uses() {
    support::daemon::require_root();
    let registry = Registry::start().await;
    let mut builder = ImageBuilder::busybox();
    for i in 0..3u8 {
        let tar = LayerBuilder::new()
            .dir("data")
            .file(&format!("data/part{i}"), vec![i; 16 << 20])
            .tar();
        builder = builder.layer_blob(LayerBlob::uncompressed(tar));
    }
    let image = builder.build();
    registry.push("test/gc", "latest", &image).await;
    let root = tempfile::tempdir().unwrap();
    let service = open_service(root.path());

    let reference = format!("{}/test/gc:latest", registry.host());
    let pulling = {
        let service = service.clone();
        tokio::spawn(async move {
            service
                .pull(CRI_NAMESPACE, &reference, &Credentials::Anonymous)
                .await
        })
    };
    let mut collections = 0;
    while !pulling.is_finished() {
        service.gc().await.expect("gc");
        collections += 1;
        tokio::task::yield_now().await;
    }
    let pulled = pulling.await.unwrap().expect("pull survives concurrent GC");
    assert!(collections > 1, "GC ran during the pull");
    for layer in &pulled.layers {
        assert!(
            service.content().exists(&layer.digest),
            "blob {} kept",
            layer.digest
        );
        assert!(
            service.snapshots().exists(&layer.chain_id),
            "snapshot {} kept",
            layer.chain_id
        );
    }
    let stats = service.gc().await.unwrap();
    assert_eq!(
        stats,
        Default::default(),
        "nothing of a stored image is garbage"
    );
    let blobs = std::fs::read_dir(root.path().join("content/sha256"))
        .unwrap()
        .count();
    assert_eq!(blobs, image.layers.len() + 2, "layers + config + manifest");
    assert!(service.content().exists(&image.config_digest));
}
