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

#[tokio::test]
async fn an_uncompressed_base_layer_pulls() {
    // Its blob digest is its diff ID and so its chain ID: the pull takes one lock for
    // both (the locks are not reentrant; two would wait on each other forever).
    support::daemon::require_root();
    let registry = Registry::start().await;
    let base = support::images::gunzip(&support::images::base_layer().blob);
    let image = ImageBuilder::new()
        .layer_blob(LayerBlob::uncompressed(base))
        .build();
    registry.push("test/plain", "latest", &image).await;
    let root = tempfile::tempdir().unwrap();
    let service = open_service(root.path());
    let reference = format!("{}/test/plain:latest", registry.host());
    let pulled = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        service.pull(CRI_NAMESPACE, &reference, &Credentials::Anonymous),
    )
    .await
    .expect("the pull finished")
    .expect("pull");
    assert_eq!(pulled.layers[0].digest, pulled.layers[0].chain_id);
}

#[tokio::test]
async fn saved_images_load_into_another_root_and_imports_run_through_the_core() {
    // What the `wharf` CLI will use: save to any writer, load and import from any reader.
    support::daemon::require_root();
    let registry = Registry::start().await;
    let image = ImageBuilder::busybox()
        .layer(LayerBuilder::new().file("etc/motd", "saved\n"))
        .build();
    registry.push("test/saved", "v1", &image).await;
    let root = tempfile::tempdir().unwrap();
    let service = open_service(root.path());
    let reference = format!("{}/test/saved:v1", registry.host());
    service
        .pull(CRI_NAMESPACE, &reference, &Credentials::Anonymous)
        .await
        .expect("pull");
    let archive = service
        .save(CRI_NAMESPACE, std::slice::from_ref(&reference))
        .expect("save");
    let bytes = tokio::task::spawn_blocking(move || {
        let mut bytes = Vec::new();
        archive.write_to(&mut bytes).expect("write the archive");
        bytes
    })
    .await
    .unwrap();

    let other_root = tempfile::tempdir().unwrap();
    let other = open_service(other_root.path());
    let report = other
        .load(CRI_NAMESPACE, std::io::Cursor::new(bytes))
        .await
        .expect("load");
    assert_eq!(report.images.len(), 1);
    assert_eq!(report.images[0].id, image.config_digest);
    assert_eq!(report.images[0].tags, vec![reference.clone()]);
    assert_eq!(report.images[0].layers.len(), 2, "both layers unpacked");
    let loaded = other.get(CRI_NAMESPACE, &reference).expect("loaded image");
    for layer in &loaded.layers {
        // Layers of a docker-archive are stored uncompressed: the blob is the diff ID.
        assert_eq!(layer.digest, layer.diff_id);
        assert!(other.snapshots().exists(&layer.chain_id));
        assert!(other.content().exists(&layer.digest));
    }
    let motd = other
        .snapshots()
        .layer_dir(&loaded.layers[1].chain_id)
        .join("etc/motd");
    assert_eq!(std::fs::read_to_string(motd).unwrap(), "saved\n");

    // Import: one layer, the changes in its config.
    let tarball = support::images::base_layer().blob.clone();
    let imported = other
        .import(
            CRI_NAMESPACE,
            std::io::Cursor::new(tarball),
            wharf::image::archive::ImportOptions {
                reference: Some("imported/base".into()),
                message: None,
                changes: vec!["CMD [\"sh\"]".into(), "USER 1000".into()],
                source: "-".into(),
            },
        )
        .await
        .expect("import");
    assert_eq!(imported.repo_tags, vec!["docker.io/imported/base:latest"]);
    assert_eq!(imported.user, "1000");
    assert_eq!(
        imported.layers[0].diff_id,
        support::images::base_layer().diff_id
    );
    let config: serde_json::Value =
        serde_json::from_slice(&other.config_json(&imported).unwrap()).unwrap();
    assert_eq!(config["config"]["Cmd"], serde_json::json!(["sh"]));
    assert_eq!(config["comment"], serde_json::json!("Imported from -"));
}
