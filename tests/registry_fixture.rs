//! Tests of the shared test fixtures: the local registry and the busybox
//! OCI images everything else builds on.

mod support;

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;

use reqwest::header::ACCEPT;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use support::images::{
    self, busybox_image, config_image, sha256_digest, whiteout_image, ImageBuilder, LayerBuilder,
    OciImage, MEDIA_TYPE_CONFIG, MEDIA_TYPE_INDEX, MEDIA_TYPE_LAYER_GZIP, MEDIA_TYPE_MANIFEST,
};
use support::registry::{Registry, RegistryOptions, MANIFEST_ACCEPT};

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).expect("valid JSON")
}

/// Everything a puller would fetch for `repo:tag` matches `image`.
async fn assert_pullable(registry: &Registry, repo: &str, tag: &str, image: &OciImage) -> Value {
    let (body, content_type, digest) = registry.get_manifest(repo, tag).await;
    assert_eq!(content_type, MEDIA_TYPE_MANIFEST);
    assert_eq!(digest, image.manifest_digest, "Docker-Content-Digest");
    assert_eq!(
        sha256_digest(&body),
        image.manifest_digest,
        "sha256 of body"
    );
    assert_eq!(body, image.manifest);

    let manifest = json(&body);
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(manifest["mediaType"], MEDIA_TYPE_MANIFEST);
    let mut descriptors = vec![manifest["config"].clone()];
    descriptors.extend(
        manifest["layers"]
            .as_array()
            .expect("layers")
            .iter()
            .cloned(),
    );
    for desc in &descriptors {
        let digest = desc["digest"].as_str().expect("descriptor digest");
        let size = desc["size"].as_u64().expect("descriptor size");
        let blob = registry.get_blob(repo, digest).await;
        assert_eq!(sha256_digest(&blob), digest, "blob content vs digest");
        assert_eq!(
            blob.len() as u64,
            size,
            "blob size vs descriptor of {digest}"
        );
    }
    assert_eq!(manifest["config"]["mediaType"], MEDIA_TYPE_CONFIG);
    for layer in manifest["layers"].as_array().unwrap() {
        assert_eq!(layer["mediaType"], MEDIA_TYPE_LAYER_GZIP);
    }
    manifest
}

#[tokio::test]
async fn push_and_pull_busybox() {
    let registry = Registry::start().await;
    assert_eq!(registry.host(), format!("127.0.0.1:{}", registry.port()));
    let image = busybox_image();
    registry.push("test/busybox", "latest", &image).await;

    let manifest = assert_pullable(&registry, "test/busybox", "latest", &image).await;
    assert_eq!(manifest["layers"].as_array().unwrap().len(), 1);
    assert_eq!(manifest["config"]["digest"], image.config_digest.as_str());

    // by digest too, and the raw Accept/Content-Type dance of a puller
    let resp = registry
        .request(
            Method::GET,
            &format!("/v2/test/busybox/manifests/{}", image.manifest_digest),
        )
        .header(ACCEPT, MEDIA_TYPE_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["docker-content-digest"],
        image.manifest_digest.as_str()
    );
    assert_eq!(
        resp.bytes().await.unwrap().as_ref(),
        image.manifest.as_slice()
    );

    let config = json(
        &registry
            .get_blob("test/busybox", &image.config_digest)
            .await,
    );
    assert_eq!(config["architecture"], images::host_arch());
    assert_eq!(config["os"], "linux");
    assert_eq!(config["config"]["Cmd"], serde_json::json!(["sh"]));
    assert_eq!(
        config["config"]["Env"],
        serde_json::json!([images::DEFAULT_PATH])
    );
    assert_eq!(config["rootfs"]["type"], "layers");
    assert_eq!(
        config["rootfs"]["diff_ids"],
        serde_json::json!([image.layers[0].diff_id])
    );

    // pushing again skips existing blobs and is idempotent
    registry.push("test/busybox", "again", &image).await;
    assert_eq!(
        registry.tags("test/busybox").await,
        vec!["again".to_string(), "latest".to_string()]
    );
    // unknown things are 404s
    let resp = registry
        .request(Method::GET, "/v2/test/busybox/manifests/nope")
        .header(ACCEPT, MANIFEST_ACCEPT)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn push_whiteout_and_config_images() {
    let registry = Registry::start().await;
    let whiteout = whiteout_image();
    let config = config_image();
    registry.push("test/whiteout", "v1", &whiteout).await;
    registry.push("test/config", "v1", &config).await;

    let m = assert_pullable(&registry, "test/whiteout", "v1", &whiteout).await;
    assert_eq!(m["layers"].as_array().unwrap().len(), 3);
    assert_eq!(whiteout.layers.len(), 3);
    // layer 1 is the shared busybox base
    assert_eq!(whiteout.layers[0].digest, busybox_image().layers[0].digest);

    let m = assert_pullable(&registry, "test/config", "v1", &config).await;
    assert_eq!(m["layers"].as_array().unwrap().len(), 1);

    let c = json(
        &registry
            .get_blob("test/config", &config.config_digest)
            .await,
    );
    let rc = &c["config"];
    assert_eq!(rc["User"], "wharf");
    assert_eq!(
        rc["Env"],
        serde_json::json!([images::DEFAULT_PATH, "GREETING=hello from wharf"])
    );
    assert_eq!(rc["WorkingDir"], "/home/wharf");
    assert_eq!(rc["Entrypoint"], serde_json::json!(["/bin/sh", "-c"]));
    assert_eq!(rc["Cmd"], serde_json::json!(["echo $GREETING"]));
    assert_eq!(
        rc["Labels"][images::CONFIG_IMAGE_LABEL.0],
        images::CONFIG_IMAGE_LABEL.1
    );
    assert_eq!(rc["ExposedPorts"], serde_json::json!({"8080/tcp": {}}));
    assert_eq!(rc["StopSignal"], "SIGTERM");
}

#[tokio::test]
async fn push_docker_schema2_image() {
    let registry = Registry::start().await;
    let image = ImageBuilder::busybox().docker_schema2().build();
    assert_eq!(
        image.manifest_media_type,
        images::DOCKER_MEDIA_TYPE_MANIFEST
    );
    // same layer blob as the OCI image, different manifest
    assert_eq!(image.layers[0].digest, busybox_image().layers[0].digest);
    assert_ne!(image.manifest_digest, busybox_image().manifest_digest);
    registry.push("test/docker", "latest", &image).await;

    let (body, content_type, digest) = registry.get_manifest("test/docker", "latest").await;
    assert_eq!(content_type, images::DOCKER_MEDIA_TYPE_MANIFEST);
    assert_eq!(digest, image.manifest_digest);
    assert_eq!(body, image.manifest);
    let m = json(&body);
    assert_eq!(m["mediaType"], images::DOCKER_MEDIA_TYPE_MANIFEST);
    assert_eq!(m["config"]["mediaType"], images::DOCKER_MEDIA_TYPE_CONFIG);
    assert_eq!(
        m["layers"][0]["mediaType"],
        images::DOCKER_MEDIA_TYPE_LAYER_GZIP
    );
    let layer = registry
        .get_blob("test/docker", &image.layers[0].digest)
        .await;
    assert_eq!(layer.len() as u64, image.layers[0].size);
    assert_valid_layout(&image);
}

struct TarItem {
    kind: tar::EntryType,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    link: Option<String>,
    data: Vec<u8>,
}

fn read_tar(tar_bytes: &[u8]) -> BTreeMap<String, TarItem> {
    let mut out = BTreeMap::new();
    let mut archive = tar::Archive::new(tar_bytes);
    for entry in archive.entries().expect("tar entries") {
        let mut entry = entry.expect("tar entry");
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let h = entry.header().clone();
        let link = entry
            .link_name()
            .unwrap()
            .map(|l| l.to_string_lossy().into_owned());
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        let item = TarItem {
            kind: h.entry_type(),
            mode: h.mode().unwrap(),
            uid: h.uid().unwrap(),
            gid: h.gid().unwrap(),
            mtime: h.mtime().unwrap(),
            link,
            data,
        };
        assert!(
            out.insert(path.trim_end_matches('/').to_string(), item)
                .is_none(),
            "duplicate entry {path}"
        );
    }
    out
}

fn layer_tar(image: &OciImage, i: usize) -> Vec<u8> {
    let blob = image.read_blob(&image.layers[i].digest);
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(blob.as_slice())
        .read_to_end(&mut tar)
        .expect("layer is gzip");
    tar
}

#[test]
fn base_layer_contents() {
    let image = busybox_image();
    let tar = layer_tar(&image, 0);
    // diff_id = sha256 of the uncompressed stream, as recorded in the config
    let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(&tar)));
    assert_eq!(diff_id, image.layers[0].diff_id);
    assert_eq!(
        image.config_json()["rootfs"]["diff_ids"][0],
        diff_id.as_str()
    );
    assert_ne!(image.layers[0].digest, diff_id, "layer must be compressed");

    let entries = read_tar(&tar);
    let busybox = &entries["bin/busybox"];
    assert_eq!(busybox.kind, tar::EntryType::Regular);
    assert_eq!(busybox.mode, 0o755);
    assert_eq!(busybox.data, std::fs::read("/bin/busybox").unwrap());

    for link in ["bin/sh", "usr/bin/env", "bin/ls", "bin/cat"] {
        let e = entries
            .get(link)
            .unwrap_or_else(|| panic!("{link} missing"));
        assert_eq!(e.kind, tar::EntryType::Symlink, "{link}");
        assert_eq!(e.link.as_deref(), Some("/bin/busybox"), "{link}");
    }
    let applets = images::busybox_applets();
    assert!(applets.len() > 100, "only {} applets", applets.len());
    for applet in &applets {
        assert!(entries.contains_key(applet.as_str()), "{applet} missing");
    }

    let passwd = String::from_utf8(entries["etc/passwd"].data.clone()).unwrap();
    assert!(
        passwd.contains("root:x:0:0:root:/root:/bin/sh\n"),
        "{passwd}"
    );
    assert!(
        passwd.contains("wharf:x:1000:1000:wharf:/home/wharf:/bin/sh\n"),
        "{passwd}"
    );
    assert!(passwd.contains("nobody:x:65534:65534:"), "{passwd}");
    let group = String::from_utf8(entries["etc/group"].data.clone()).unwrap();
    assert!(group.contains("wharf:x:1000:"), "{group}");
    assert!(group.contains("staff:x:50:wharf"), "{group}");

    let dir = |p: &str| {
        let e = entries.get(p).unwrap_or_else(|| panic!("{p} missing"));
        assert_eq!(e.kind, tar::EntryType::Directory, "{p}");
        (e.mode, e.uid, e.gid)
    };
    assert_eq!(dir("tmp"), (0o1777, 0, 0));
    assert_eq!(dir("root"), (0o700, 0, 0));
    assert_eq!(dir("home/wharf"), (0o755, 1000, 1000));
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev",
    ] {
        dir(d);
    }
    // every entry has the fixed mtime and every parent precedes its children
    let mut archive = tar::Archive::new(tar.as_slice());
    let mut seen = std::collections::HashSet::new();
    for entry in archive.entries().unwrap() {
        let entry = entry.unwrap();
        assert_eq!(entry.header().mtime().unwrap(), images::FIXED_MTIME);
        let path = entry.path().unwrap().into_owned();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            assert!(
                seen.contains(parent),
                "{} before its parent",
                path.display()
            );
        }
        seen.insert(path);
    }
    assert!(entries.values().all(|e| e.mtime == images::FIXED_MTIME));
}

#[test]
fn whiteout_layers_and_reference_unpack() {
    let image = whiteout_image();
    let l2 = read_tar(&layer_tar(&image, 1));
    assert_eq!(l2["data/gonedir/inner.txt"].data, b"inner");
    assert_eq!(l2["data/replaced.txt"].data, b"old");
    let l3 = read_tar(&layer_tar(&image, 2));
    for marker in [
        "data/.wh.gone.txt",
        "data/.wh.gonedir",
        "data/opaque/.wh..wh..opq",
    ] {
        let e = l3.get(marker).unwrap_or_else(|| panic!("{marker} missing"));
        assert_eq!(e.kind, tar::EntryType::Regular);
        assert!(e.data.is_empty());
    }
    assert_eq!(l3["data/replaced.txt"].data, b"new");
    assert_eq!(l3["data/opaque/new.txt"].data, b"new file");
    for (i, layer) in image.layers.iter().enumerate() {
        assert_eq!(
            sha256_digest(&layer_tar(&image, i)),
            layer.diff_id,
            "diff_id of layer {i}"
        );
    }
    assert_eq!(
        image.config_json()["rootfs"]["diff_ids"],
        serde_json::json!(image
            .layers
            .iter()
            .map(|l| l.diff_id.clone())
            .collect::<Vec<_>>())
    );

    // the documented expectations hold for a reference unpack...
    let root = tempfile::tempdir().unwrap();
    images::extract_rootfs_reference(&image, root.path());
    images::assert_rootfs_matches(root.path(), &images::whiteout_expected());
    for (path, content) in images::whiteout_expected_files() {
        let got = std::fs::read_to_string(root.path().join(path)).ok();
        assert_eq!(got.as_deref(), content, "{path}");
    }
    let tmp_mode = std::fs::metadata(root.path().join("tmp"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(tmp_mode & 0o7777, 0o1777);
    assert_eq!(
        std::fs::read_link(root.path().join("bin/sh")).unwrap(),
        std::path::Path::new("/bin/busybox")
    );

    // ...and fail when whiteouts are ignored (the check can fail)
    let naive = tempfile::tempdir().unwrap();
    for i in 0..image.layers.len() {
        tar::Archive::new(layer_tar(&image, i).as_slice())
            .unpack(naive.path())
            .unwrap();
    }
    let result = std::panic::catch_unwind(|| {
        images::assert_rootfs_matches(naive.path(), &images::whiteout_expected())
    });
    assert!(result.is_err(), "naive unpack must not match expectations");
}

#[tokio::test]
async fn basic_auth_registry() {
    let registry = Registry::start_with_basic_auth("wharf-user", "s3cret-pass").await;
    let resp = registry
        .request_anonymous(Method::GET, "/v2/")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let challenge = resp.headers()["www-authenticate"].to_str().unwrap();
    assert!(challenge.starts_with("Basic "), "{challenge}");

    let resp = registry
        .request_anonymous(Method::GET, "/v2/")
        .basic_auth("wharf-user", Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    let resp = registry.request(Method::GET, "/v2/").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    let image = busybox_image();
    registry.push("private/busybox", "latest", &image).await;
    assert_pullable(&registry, "private/busybox", "latest", &image).await;
    let resp = registry
        .request_anonymous(Method::GET, "/v2/private/busybox/manifests/latest")
        .header(ACCEPT, MANIFEST_ACCEPT)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    // the password never shows up in Debug output
    let debug = format!("{registry:?}");
    assert!(!debug.contains("s3cret-pass"), "{debug}");
    assert!(debug.contains("wharf-user"), "{debug}");
}

fn assert_valid_layout(image: &OciImage) {
    let dir = image.layout_dir();
    let layout = json(&std::fs::read(dir.join("oci-layout")).unwrap());
    assert_eq!(layout["imageLayoutVersion"], "1.0.0");
    let index = json(&std::fs::read(dir.join("index.json")).unwrap());
    assert_eq!(index["schemaVersion"], 2);
    assert_eq!(index["mediaType"], MEDIA_TYPE_INDEX);
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 1);
    assert_eq!(manifests[0]["digest"], image.manifest_digest.as_str());
    assert_eq!(
        manifests[0]["mediaType"],
        image.manifest_media_type.as_str()
    );
    assert_eq!(manifests[0]["size"], image.manifest.len() as u64);
    assert_eq!(
        manifests[0]["platform"]["architecture"],
        images::host_arch()
    );
    assert_eq!(manifests[0]["platform"]["os"], "linux");

    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir.join("blobs/sha256")).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        let bytes = std::fs::read(entry.path()).unwrap();
        assert_eq!(hex::encode(Sha256::digest(&bytes)), name, "blob file name");
        names.push(format!("sha256:{name}"));
    }
    names.sort();
    let mut want = image.blob_digests();
    want.push(image.manifest_digest.clone());
    want.sort();
    want.dedup();
    assert_eq!(names, want, "blobs in the layout");

    // the manifest on disk references exactly these blobs with right sizes
    let manifest = json(&image.read_blob(&image.manifest_digest));
    assert_eq!(manifest["config"]["digest"], image.config_digest.as_str());
    assert_eq!(manifest["config"]["size"], image.config.len() as u64);
    for (desc, layer) in manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .zip(&image.layers)
    {
        assert_eq!(desc["digest"], layer.digest.as_str());
        assert_eq!(desc["size"], layer.size);
        assert_eq!(
            std::fs::metadata(image.blob_path(&layer.digest))
                .unwrap()
                .len(),
            layer.size
        );
    }
}

#[test]
fn oci_layouts_are_valid() {
    assert_valid_layout(&busybox_image());
    assert_valid_layout(&whiteout_image());
    assert_valid_layout(&config_image());
}

#[test]
fn builds_are_reproducible() {
    let a = busybox_image();
    let b = busybox_image();
    assert_eq!(a.manifest_digest, b.manifest_digest);
    assert_ne!(a.layout_dir(), b.layout_dir());
    assert_eq!(
        whiteout_image().manifest_digest,
        whiteout_image().manifest_digest
    );
    assert_eq!(
        config_image().manifest_digest,
        config_image().manifest_digest
    );
    assert_ne!(config_image().manifest_digest, a.manifest_digest);
    // the cached base layer equals a fresh build of it
    let fresh = images::build_base_layer();
    assert_eq!(fresh.digest, a.layers[0].digest);
    assert_eq!(fresh.diff_id, a.layers[0].diff_id);
}

#[test]
fn image_builder_crafts_custom_images() {
    let long = format!("deep/{}/file.txt", "d".repeat(120));
    let image = ImageBuilder::new()
        .base_layer()
        .layer(
            LayerBuilder::new()
                .dir("deep")
                .file(&long, "long")
                .raw(
                    b"../escape.txt",
                    tar::EntryType::Regular,
                    b"",
                    b"evil",
                    0o644,
                )
                .symlink("etc/evil-link", "../../../../etc/shadow")
                .file_with("home/wharf/mine", "x", 0o600, 1000, 1000),
        )
        .layer(LayerBuilder::new().file("a", "1"))
        .with_config(|c| {
            c.set_cmd(Some(vec!["true".into()]));
        })
        .platform("arm64", "linux")
        .build();
    assert_eq!(image.layers.len(), 3);
    let config = image.config_json();
    assert_eq!(config["architecture"], "arm64");
    assert_eq!(config["config"]["Cmd"], serde_json::json!(["true"]));

    // hostile and long names survive byte-for-byte (GNU long names)
    let tar = layer_tar(&image, 1);
    let mut archive = tar::Archive::new(tar.as_slice());
    let paths: Vec<Vec<u8>> = archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path_bytes().into_owned())
        .collect();
    assert!(paths.contains(&b"../escape.txt".to_vec()));
    assert!(paths.contains(&long.as_bytes().to_vec()));
    let entries = read_tar(&tar);
    assert_eq!(entries["home/wharf/mine"].uid, 1000);
    assert_eq!(entries["home/wharf/mine"].mode, 0o600);

    // config edits change the config digest and are reflected in the manifest
    let broken = ImageBuilder::busybox()
        .edit_config_json(|v| v["rootfs"]["diff_ids"][0] = "sha256:00".into())
        .build();
    assert_eq!(broken.config_json()["rootfs"]["diff_ids"][0], "sha256:00");
    assert_eq!(
        broken.manifest_json()["config"]["digest"],
        broken.config_digest.as_str()
    );
}

#[tokio::test]
async fn push_multi_platform_index() {
    let registry = Registry::start_with(RegistryOptions::new().log_level("warn")).await;
    let amd = ImageBuilder::busybox().platform("amd64", "linux").build();
    let arm = ImageBuilder::busybox().platform("arm64", "linux").build();
    assert_ne!(amd.manifest_digest, arm.manifest_digest);
    let index = images::image_index(&[&amd, &arm]);
    let digest = registry
        .push_index("test/multi", "latest", &[&amd, &arm], &index)
        .await;
    assert_eq!(digest, index.digest);

    let (body, content_type, got) = registry.get_manifest("test/multi", "latest").await;
    assert_eq!(content_type, MEDIA_TYPE_INDEX);
    assert_eq!(got, index.digest);
    let v = json(&body);
    let platforms: Vec<(String, String)> = v["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            assert_eq!(m["mediaType"], MEDIA_TYPE_MANIFEST);
            (
                m["platform"]["architecture"].as_str().unwrap().to_string(),
                m["digest"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        platforms,
        vec![
            ("amd64".to_string(), amd.manifest_digest.clone()),
            ("arm64".to_string(), arm.manifest_digest.clone()),
        ]
    );
    assert_pullable(&registry, "test/multi", &arm.manifest_digest, &arm).await;

    registry.delete_manifest("test/multi", &index.digest).await;
    let resp = registry
        .request(Method::GET, "/v2/test/multi/manifests/latest")
        .header(ACCEPT, MANIFEST_ACCEPT)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

fn pid_alive(pid: u32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok()
}

#[tokio::test]
async fn registry_stops_on_drop() {
    let registry = Registry::start().await;
    let pid = registry.pid();
    let storage = registry.storage_dir();
    assert!(pid > 0 && pid_alive(pid));
    assert!(storage.is_dir());
    let url = registry.url();
    drop(registry);
    assert!(!pid_alive(pid), "registry {pid} still running after drop");
    assert!(!storage.exists(), "temp dir not removed");
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    assert!(client.get(format!("{url}/v2/")).send().await.is_err());

    // a panicking test still stops its registry
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let cell = seen.clone();
    let result = tokio::spawn(async move {
        let registry = Registry::start().await;
        cell.store(registry.pid(), std::sync::atomic::Ordering::SeqCst);
        panic!("deliberate panic while a registry is running");
    })
    .await;
    assert!(result.unwrap_err().is_panic());
    let pid = seen.load(std::sync::atomic::Ordering::SeqCst);
    assert!(pid > 0);
    assert!(!pid_alive(pid), "registry {pid} survived a panicking test");
}
