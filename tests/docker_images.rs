//! Image archives through the Docker API with the real `docker` CLI (issue 18): `docker
//! save` (to a file and to a pipe) and `docker load` back, checked against the format
//! `docker save` of dockerd 20.10 writes; `docker load` of an OCI image layout; `docker
//! import` of a root filesystem tarball with `--change`; and hostile archives (path
//! traversal, escaping links, digest mismatches, missing files, a tar bomb), each refused
//! with a message naming what is wrong, leaving images, blobs and snapshots as they were.

mod support;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use serde_json::{json, Value};
use support::docker::{raw_http_bytes, DockerEnv};
use support::images::{
    base_layer, canonical_json, digest_hex, gunzip, gzip, image_index, sha256_digest, ImageBuilder,
    LayerBuilder, OciImage, MEDIA_TYPE_INDEX, MEDIA_TYPE_MANIFEST,
};
use support::pods::unique;

/// One entry of an archive a test builds or reads.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Item {
    File(Vec<u8>),
    Dir,
    Symlink(String),
}

/// A tar of `entries`, names written raw (so that hostile ones can be), in order.
fn tar_of(entries: &[(String, Item)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, item) in entries {
        let mut header = tar::Header::new_old();
        assert!(name.len() <= 100, "{name}");
        header.as_mut_bytes()[..name.len()].copy_from_slice(name.as_bytes());
        header.set_mode(0o644);
        header.set_mtime(0);
        let data: &[u8] = match item {
            Item::File(data) => {
                header.set_entry_type(tar::EntryType::Regular);
                data
            }
            Item::Dir => {
                header.set_entry_type(tar::EntryType::Directory);
                &[]
            }
            Item::Symlink(target) => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.as_old_mut().linkname[..target.len()].copy_from_slice(target.as_bytes());
                &[]
            }
        };
        header.set_size(data.len() as u64);
        header.set_cksum();
        builder.append(&header, data).expect("append");
    }
    builder.into_inner().expect("finish tar")
}

/// Every entry of a tar archive, by path (directories end with `/`).
fn read_tar(bytes: &[u8]) -> BTreeMap<String, Item> {
    let mut archive = tar::Archive::new(bytes);
    let mut out = BTreeMap::new();
    for entry in archive.entries().expect("tar entries") {
        let mut entry = entry.expect("tar entry");
        let path = String::from_utf8(entry.path_bytes().into_owned()).expect("UTF-8 path");
        let item = match entry.header().entry_type() {
            tar::EntryType::Directory => Item::Dir,
            tar::EntryType::Symlink => Item::Symlink(
                String::from_utf8(entry.link_name_bytes().expect("link").into_owned()).unwrap(),
            ),
            _ => {
                let mut data = Vec::new();
                entry.read_to_end(&mut data).expect("entry data");
                Item::File(data)
            }
        };
        out.insert(path, item);
    }
    out
}

fn file<'a>(entries: &'a BTreeMap<String, Item>, path: &str) -> &'a [u8] {
    match entries.get(path) {
        Some(Item::File(data)) => data,
        other => panic!(
            "{path} is {other:?}, not a file; entries: {:?}",
            entries.keys()
        ),
    }
}

/// An image's layer tars (uncompressed).
fn layer_tars(image: &OciImage) -> Vec<Vec<u8>> {
    image
        .layers
        .iter()
        .map(|layer| {
            let blob = image.read_blob(&layer.digest);
            if layer.media_type.ends_with("gzip") {
                gunzip(&blob)
            } else {
                blob
            }
        })
        .collect()
}

/// A docker-archive of `images` (each with its tags) as `docker save` lays it out.
fn docker_archive(images: &[(&OciImage, &[&str])]) -> Vec<(String, Item)> {
    let mut entries = Vec::new();
    let mut manifest = Vec::new();
    for (image, tags) in images {
        let mut layers = Vec::new();
        for (tar, info) in layer_tars(image).into_iter().zip(&image.layers) {
            let id = digest_hex(&info.diff_id).to_string();
            entries.push((format!("{id}/"), Item::Dir));
            entries.push((format!("{id}/VERSION"), Item::File(b"1.0".to_vec())));
            entries.push((format!("{id}/layer.tar"), Item::File(tar)));
            layers.push(format!("{id}/layer.tar"));
        }
        let config = format!("{}.json", digest_hex(&image.config_digest));
        entries.push((config.clone(), Item::File(image.config.clone())));
        manifest.push(json!({"Config": config, "RepoTags": tags, "Layers": layers}));
    }
    entries.push((
        "manifest.json".to_string(),
        Item::File(serde_json::to_vec(&manifest).unwrap()),
    ));
    entries
}

/// An OCI image layout of `image` with `index` as its index.json (plus `extra` blobs).
fn oci_archive(image: &OciImage, index: &Value, extra: &[&[u8]]) -> Vec<(String, Item)> {
    let mut entries = vec![
        (
            "oci-layout".to_string(),
            Item::File(br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
        ),
        ("index.json".to_string(), Item::File(canonical_json(index))),
        ("blobs/".to_string(), Item::Dir),
        ("blobs/sha256/".to_string(), Item::Dir),
    ];
    let mut digests = vec![image.manifest_digest.clone()];
    digests.extend(image.blob_digests());
    for digest in digests {
        entries.push((
            format!("blobs/sha256/{}", digest_hex(&digest)),
            Item::File(image.read_blob(&digest)),
        ));
    }
    for blob in extra {
        entries.push((
            format!("blobs/sha256/{}", digest_hex(&sha256_digest(blob))),
            Item::File(blob.to_vec()),
        ));
    }
    entries
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write archive");
    path.to_string_lossy().into_owned()
}

/// What a failed load must leave as it was: the images, the blobs and the snapshots;
/// and no spool left in the ingest directory.
fn state(docker: &DockerEnv) -> (String, Vec<String>, Vec<String>) {
    let root = &docker.env.daemon.paths.root;
    assert_eq!(
        support::entries(&root.join("content/ingest")),
        Vec::<String>::new(),
        "a spool was left behind"
    );
    let mut images: Vec<String> = docker
        .ok(&[
            "images",
            "--no-trunc",
            "--format",
            "{{.ID}} {{.Repository}}:{{.Tag}}",
        ])
        .lines()
        .map(str::to_string)
        .collect();
    images.sort();
    (
        images.join("\n"),
        support::entries(&root.join("content/sha256")),
        support::entries(&root.join("snapshots/layers")),
    )
}

#[tokio::test]
async fn save_to_a_file_rmi_load_and_run() {
    let docker = DockerEnv::start_pulled().await;
    let image = docker.image.clone();
    let other = format!("{}/saved:v1", unique("wharf-test"));
    docker.ok(&["tag", &image, &other]);
    let id = docker.ok(&["image", "inspect", "-f", "{{.Id}}", &image]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("saved.tar");
    let path_str = path.to_string_lossy().into_owned();
    docker.ok(&["save", "-o", &path_str, &image, &other]);

    // The format `docker save` of dockerd 20.10 writes.
    let entries = read_tar(&std::fs::read(&path).unwrap());
    let manifest: Value = serde_json::from_slice(file(&entries, "manifest.json")).unwrap();
    let items = manifest.as_array().expect("manifest.json is a list");
    assert_eq!(items.len(), 1, "{manifest}");
    let item = &items[0];
    let hex = id.trim_start_matches("sha256:");
    assert_eq!(item["Config"], json!(format!("{hex}.json")));
    assert_eq!(item["RepoTags"], json!([image, other]));
    let config_bytes = file(&entries, &format!("{hex}.json"));
    assert_eq!(sha256_digest(config_bytes), id);
    let config: Value = serde_json::from_slice(config_bytes).unwrap();
    let diff_ids = config["rootfs"]["diff_ids"].as_array().unwrap();
    let layers = item["Layers"].as_array().unwrap();
    assert_eq!(layers.len(), diff_ids.len());
    for (layer, diff_id) in layers.iter().zip(diff_ids) {
        let layer = layer.as_str().unwrap();
        let (layer_id, rest) = layer.split_once('/').unwrap();
        assert_eq!(rest, "layer.tar");
        assert_eq!(layer_id.len(), 64);
        // layer.tar is the uncompressed layer: its digest is the diff ID.
        assert_eq!(&json!(sha256_digest(file(&entries, layer))), diff_id);
        assert_eq!(file(&entries, &format!("{layer_id}/VERSION")), b"1.0");
        let v1: Value =
            serde_json::from_slice(file(&entries, &format!("{layer_id}/json"))).unwrap();
        assert_eq!(v1["id"], json!(layer_id));
        assert_eq!(entries.get(&format!("{layer_id}/")), Some(&Item::Dir));
    }
    let top = layers
        .last()
        .unwrap()
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap();
    let repositories: Value = serde_json::from_slice(file(&entries, "repositories")).unwrap();
    let (repo, tag) = other.rsplit_once(':').unwrap();
    assert_eq!(repositories[repo][tag], json!(top), "{repositories}");

    // rmi both names: the image is gone, then load brings it back, same ID and names.
    docker.ok(&["rmi", &image, &other]);
    assert_eq!(docker.ok(&["images", "-q"]), "");
    let loaded = docker.ok(&["load", "-i", &path_str]);
    assert!(
        loaded.contains(&format!("Loaded image: {image}")),
        "{loaded}"
    );
    assert!(
        loaded.contains(&format!("Loaded image: {other}")),
        "{loaded}"
    );
    assert_eq!(
        docker.ok(&["image", "inspect", "-f", "{{.Id}}", &other]),
        id
    );
    let out = docker.ok(&["run", "--rm", &other, "echo", "loaded and running"]);
    assert_eq!(out, "loaded and running");

    // Saving by ID names no tag; wharf reads its own archive back.
    let by_id = dir.path().join("by-id.tar");
    docker.ok(&["save", "-o", &by_id.to_string_lossy(), &id[7..19]]);
    let entries = read_tar(&std::fs::read(&by_id).unwrap());
    let manifest: Value = serde_json::from_slice(file(&entries, "manifest.json")).unwrap();
    assert_eq!(manifest[0]["RepoTags"], Value::Null, "{manifest}");
    assert!(!entries.contains_key("repositories"));
    let again = docker.ok(&["load", "-i", &by_id.to_string_lossy()]);
    assert_eq!(again, format!("Loaded image ID: {id}"));

    // Two images sharing the base layer: as dockerd, the second layer.tar of the same
    // content (under another v1 ID: the top layer of one, not of the other) is a
    // symlink to the first; wharf's load follows it.
    let fresh = ImageBuilder::busybox()
        .layer(LayerBuilder::new().file("fresh", "on the same base\n"))
        .build();
    let fresh_name = format!("{}:1", unique("fresh"));
    let fresh_tar = write(
        dir.path(),
        "fresh.tar",
        &tar_of(&docker_archive(&[(&fresh, &[fresh_name.as_str()])])),
    );
    docker.ok(&["load", "-i", &fresh_tar]);
    let both = dir.path().join("both.tar");
    docker.ok(&["save", "-o", &both.to_string_lossy(), &other, &fresh_name]);
    let entries = read_tar(&std::fs::read(&both).unwrap());
    let links: Vec<(&String, &String)> = entries
        .iter()
        .filter_map(|(path, item)| match item {
            Item::Symlink(target) => Some((path, target)),
            _ => None,
        })
        .collect();
    assert_eq!(links.len(), 1, "{:?}", entries.keys());
    let (link, target) = links[0];
    assert!(link.ends_with("/layer.tar"), "{link}");
    assert!(
        target.starts_with("../") && target.ends_with("/layer.tar"),
        "{target}"
    );
    docker.ok(&["rmi", &other, &fresh_name]);
    let loaded = docker.ok(&["load", "-i", &both.to_string_lossy()]);
    assert_eq!(
        loaded,
        format!("Loaded image: {other}\nLoaded image: {fresh_name}")
    );
    assert_eq!(
        docker.ok(&["run", "--rm", &fresh_name, "cat", "/fresh"]),
        "on the same base"
    );

    // Names docker save cannot find: dockerd's messages.
    let nowhere = dir.path().join("nowhere.tar");
    let nowhere = nowhere.to_string_lossy();
    let err = docker.fails(&["save", "-o", &nowhere, "no-such-image:1"]);
    assert!(err.contains("reference does not exist"), "{err}");
    let err = docker.fails(&["save", "-o", &nowhere, "no-such-repository"]);
    assert!(err.contains("No such image: no-such-repository"), "{err}");
}

#[tokio::test]
async fn save_and_load_through_pipes() {
    let docker = DockerEnv::start_pulled().await;
    let image = docker.image.clone();
    let id = docker.ok(&["image", "inspect", "-f", "{{.Id}}", &image]);
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("saved.tar");
    let run = docker.shell(&format!("\"$DOCKER\" save {image} > {}", saved.display()));
    assert_eq!(run.status, 0, "{}", run.stderr);
    docker.ok(&["rmi", &image]);

    // Plain, then gzip-compressed, through stdin.
    let run = docker.shell(&format!("cat {} | \"$DOCKER\" load", saved.display()));
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert_eq!(run.stdout.trim(), format!("Loaded image: {image}"));
    docker.ok(&["rmi", &image]);
    let run = docker.shell(&format!(
        "\"$DOCKER\" image ls -q >/dev/null && gzip -c {} | \"$DOCKER\" load",
        saved.display()
    ));
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert_eq!(
        docker.ok(&["image", "inspect", "-f", "{{.Id}}", &image]),
        id
    );

    // save | load in one pipe, of an image that is there (as pulled: its record keeps
    // its registry manifest and gzip layer): loads again, same ID, and the uncompressed
    // layer the load stored is not kept.
    docker.ok(&["rmi", &image]);
    let pull = docker.ok(&["pull", "-q", &image]);
    assert!(pull.contains(&image), "{pull}");
    let blobs = support::entries(&docker.env.daemon.paths.root.join("content/sha256"));
    let run = docker.shell(&format!("\"$DOCKER\" save {image} | \"$DOCKER\" load"));
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert_eq!(run.stdout.trim(), format!("Loaded image: {image}"));
    assert_eq!(
        support::entries(&docker.env.daemon.paths.root.join("content/sha256")),
        blobs
    );
    let out = docker.ok(&["run", "--rm", &image, "echo", "piped"]);
    assert_eq!(out, "piped");

    // Not quiet: dockerd's progress messages, one per layer unpacked (the busybox base
    // layer is there already, the CRI pulled it).
    let fresh = ImageBuilder::busybox()
        .layer(LayerBuilder::new().file("fresh", "fresh"))
        .build();
    let archive = tar_of(&docker_archive(&[(&fresh, &["progress/fresh:1"])]));
    let (status, head, body) = raw_http_bytes(
        &docker.socket(),
        "POST",
        "/v1.41/images/load?quiet=0",
        "application/x-tar",
        &archive,
    );
    assert_eq!(status, 200, "{body}");
    assert!(head
        .to_ascii_lowercase()
        .contains("content-type: application/json"));
    let messages: Vec<Value> = body
        .split("\r\n")
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).expect("a JSON message"))
        .collect();
    let short = &digest_hex(&fresh.layers[1].diff_id)[..12];
    assert_eq!(messages.len(), 2, "{body}");
    assert_eq!(messages[0]["status"], json!("Loading layer"), "{body}");
    assert_eq!(messages[0]["id"], json!(short), "{body}");
    assert_eq!(
        messages[1],
        json!({"stream": "Loaded image: progress/fresh:1\n"})
    );
}

#[tokio::test]
async fn oci_layout_tarballs_load() {
    let docker = DockerEnv::start().await;
    let image = ImageBuilder::busybox()
        .layer(LayerBuilder::new().file("etc/oci-message", "from an OCI layout\n"))
        .with_config(|c| {
            c.set_cmd(Some(vec![
                "cat".to_string(),
                "/etc/oci-message".to_string(),
            ]));
        })
        .build();
    let dir = tempfile::tempdir().unwrap();
    let name = format!("localhost/{}:v1", unique("oci-loaded"));
    let descriptor = |annotations: Value| {
        json!({
            "mediaType": MEDIA_TYPE_MANIFEST,
            "digest": image.manifest_digest,
            "size": image.manifest.len(),
            "annotations": annotations,
        })
    };

    // The name from org.opencontainers.image.ref.name (a whole reference).
    let index = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_INDEX,
        "manifests": [descriptor(json!({"org.opencontainers.image.ref.name": name}))],
    });
    let path = write(
        dir.path(),
        "oci.tar",
        &tar_of(&oci_archive(&image, &index, &[])),
    );
    let loaded = docker.ok(&["load", "-i", &path]);
    assert_eq!(loaded, format!("Loaded image: {name}"));
    assert_eq!(
        docker.ok(&["image", "inspect", "-f", "{{.Id}}", &name]),
        image.config_digest
    );
    assert_eq!(docker.ok(&["run", "--rm", &name]), "from an OCI layout");

    // io.containerd.image.name wins over a bare tag in ref.name (Docker 25's layout);
    // gzip-compressed.
    let other = format!("localhost/{}:v2", unique("oci-loaded"));
    let index = json!({
        "schemaVersion": 2,
        "manifests": [descriptor(json!({
            "io.containerd.image.name": other,
            "org.opencontainers.image.ref.name": "v2",
        }))],
    });
    let path = write(
        dir.path(),
        "oci.tar.gz",
        &gzip(&tar_of(&oci_archive(&image, &index, &[]))),
    );
    assert_eq!(
        docker.ok(&["load", "-i", &path]),
        format!("Loaded image: {other}")
    );

    // A bare tag names no repository: the image is loaded by ID only. Through a nested
    // index, resolved to this host's platform.
    let nested = image_index(&[&image]);
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": MEDIA_TYPE_INDEX,
            "digest": nested.digest,
            "size": nested.bytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": "latest"},
        }],
    });
    let path = write(
        dir.path(),
        "nested.tar",
        &tar_of(&oci_archive(&image, &index, &[&nested.bytes])),
    );
    assert_eq!(
        docker.ok(&["load", "-i", &path]),
        format!("Loaded image ID: {}", image.config_digest)
    );
    let listed = docker.ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    let mut listed: Vec<&str> = listed.lines().collect();
    listed.sort();
    let mut expected = vec![name.as_str(), other.as_str()];
    expected.sort();
    assert_eq!(listed, expected);

    // What wharf saves of an OCI-loaded image (gzip layers) loads back.
    let saved = dir.path().join("resaved.tar");
    docker.ok(&["save", "-o", &saved.to_string_lossy(), &name]);
    docker.ok(&["rmi", &name, &other]);
    assert_eq!(docker.ok(&["images", "-q"]), "");
    docker.ok(&["load", "-i", &saved.to_string_lossy()]);
    assert_eq!(docker.ok(&["run", "--rm", &name]), "from an OCI layout");
}

#[tokio::test]
async fn import_a_tarball_with_changes_and_run_it() {
    let docker = DockerEnv::start().await;
    let dir = tempfile::tempdir().unwrap();
    // The busybox root filesystem, gzip-compressed, as a tarball to import.
    let rootfs = write(dir.path(), "rootfs.tar.gz", &base_layer().blob);
    let name = format!("{}:v1", unique("imported"));
    let id = docker.ok(&[
        "import",
        "--change",
        "ENV GREETING=hi WHO=\"the importer\"",
        "--change",
        "WORKDIR /tmp",
        "--change",
        r#"CMD ["/bin/sh", "-c", "echo $GREETING from $WHO in $(pwd)"]"#,
        "--message",
        "imported by the test",
        &rootfs,
        &name,
    ]);
    assert!(id.starts_with("sha256:") && id.len() == 71, "{id}");
    assert_eq!(
        docker.ok(&["run", "--rm", &name]),
        "hi from the importer in /tmp"
    );
    let inspected = docker.ok(&[
        "image",
        "inspect",
        "-f",
        "{{.Id}} {{.Comment}} {{.Config.WorkingDir}} {{len .RootFS.Layers}}",
        &name,
    ]);
    assert_eq!(inspected, format!("{id} imported by the test /tmp 1"));
    let history = docker.ok(&["history", "--no-trunc", "--format", "{{.Comment}}", &name]);
    assert_eq!(history, "imported by the test");

    // From stdin, uncompressed, with an ENTRYPOINT; the default tag is latest.
    let tar = write(dir.path(), "rootfs.tar", &gunzip(&base_layer().blob));
    let repo = unique("imported-stdin");
    let run = docker.shell(&format!(
        "\"$DOCKER\" import --change 'ENTRYPOINT [\"echo\", \"entry:\"]' - {repo} < {tar}"
    ));
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert_eq!(
        docker.ok(&["run", "--rm", &format!("{repo}:latest"), "arg"]),
        "entry: arg"
    );
    let comment = docker.ok(&["image", "inspect", "-f", "{{.Comment}}", &repo]);
    assert_eq!(comment, "Imported from -");

    // A change that is not allowed, and a digest as the name: refused, nothing made.
    let before = docker.ok(&["images", "-q", "--no-trunc"]);
    let err = docker.fails(&["import", "--change", "RUN rm -rf /", &rootfs, "refused:1"]);
    assert!(err.contains("run is not a valid change command"), "{err}");
    let err = docker.fails(&["import", "--change", "EXPOSE nope", &rootfs, "refused:2"]);
    assert!(err.contains("invalid containerPort: nope"), "{err}");
    let garbage = write(dir.path(), "garbage.tar", &[7u8; 4096]);
    let err = docker.fails(&["import", &garbage, "refused:3"]);
    assert!(err.contains("Error response from daemon"), "{err}");
    assert_eq!(docker.ok(&["images", "-q", "--no-trunc"]), before);
    assert_eq!(
        support::entries(&docker.env.daemon.paths.root.join("content/ingest")),
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn hostile_archives_are_refused_and_change_nothing() {
    // Layers of at most 8 MiB (the busybox layer is about 2 MiB).
    let docker =
        DockerEnv::start_with_config("[registry]\nmax_unpacked_bytes_per_layer = 8388608\n").await;
    let pulled = docker.image.clone();
    docker.ok(&["pull", "-q", &pulled]);
    let fresh = ImageBuilder::busybox()
        .layer(LayerBuilder::new().file("fresh", "a new layer"))
        .build();
    let tampered = ImageBuilder::busybox()
        .layer(LayerBuilder::new().file("tampered", "what the config says"))
        .build();
    let dir = tempfile::tempdir().unwrap();
    let good = docker_archive(&[(&fresh, &["hostile/fresh:1"])]);
    let fresh_top = format!("{}/layer.tar", digest_hex(&fresh.layers[1].diff_id));
    let before = state(&docker);

    let mut cases: Vec<(&str, Vec<u8>, String)> = Vec::new();
    let with = |extra: (String, Item)| {
        let mut entries = good.clone();
        entries.insert(0, extra);
        tar_of(&entries)
    };
    cases.push((
        "path traversal",
        with(("../evil".into(), Item::File(b"x".to_vec()))),
        r#"invalid archive entry "../evil": the path has a ".." component"#.into(),
    ));
    cases.push((
        "absolute path",
        with(("/etc/evil".into(), Item::File(b"x".to_vec()))),
        r#"invalid archive entry "/etc/evil": an absolute path"#.into(),
    ));
    cases.push((
        "escaping symlink",
        with(("link".into(), Item::Symlink("../../../etc/passwd".into()))),
        r#"invalid archive entry "link": symlink target "../../../etc/passwd" leaves the archive"#
            .into(),
    ));
    // The top layer of the fresh image is a link to a file outside the archive.
    let mut entries = good.clone();
    for (name, item) in &mut entries {
        if *name == fresh_top {
            *item = Item::Symlink("/etc/shadow".into());
        }
    }
    cases.push((
        "layer linked out",
        tar_of(&entries),
        "symlink target \"/etc/shadow\" is absolute".into(),
    ));
    // A second image whose layer is not what its config's diff_ids say: the first
    // image's new layer is unpacked, then everything is undone.
    let mut entries = docker_archive(&[
        (&fresh, &["hostile/fresh:1"]),
        (&tampered, &["hostile/tampered:1"]),
    ]);
    let tampered_top = format!("{}/layer.tar", digest_hex(&tampered.layers[1].diff_id));
    for (name, item) in &mut entries {
        if *name == tampered_top {
            *item = Item::File(LayerBuilder::new().file("tampered", "something else").tar());
        }
    }
    cases.push((
        "diff ID mismatch",
        tar_of(&entries),
        format!(
            "invalid diffID for layer 1: expected {:?}",
            tampered.layers[1].diff_id
        ),
    ));
    // manifest.json names a layer the archive lacks.
    let entries: Vec<(String, Item)> = good
        .iter()
        .filter(|(name, _)| *name != fresh_top)
        .cloned()
        .collect();
    cases.push((
        "missing layer",
        tar_of(&entries),
        format!("{fresh_top:?} is not in the archive"),
    ));
    cases.push((
        "manifest.json not JSON",
        tar_of(&[("manifest.json".into(), Item::File(b"{nope".to_vec()))]),
        "invalid archive: manifest.json:".into(),
    ));
    cases.push((
        "neither format",
        tar_of(&[("hello".into(), Item::File(b"x".to_vec()))]),
        "neither manifest.json".into(),
    ));
    // An OCI layout whose layer blob is not what its name says.
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": MEDIA_TYPE_MANIFEST,
            "digest": fresh.manifest_digest,
            "size": fresh.manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": "hostile/oci:1"},
        }],
    });
    let mut entries = oci_archive(&fresh, &index, &[]);
    let blob_path = format!("blobs/sha256/{}", digest_hex(&fresh.layers[1].digest));
    for (name, item) in &mut entries {
        if *name == blob_path {
            *item = Item::File(gzip(b"not the layer"));
        }
    }
    cases.push((
        "OCI blob digest mismatch",
        tar_of(&entries),
        format!("blob {blob_path} failed verification: its content hashes to"),
    ));
    // A tar bomb: a 12 MiB layer (zeros: the gzip-compressed archive is small).
    let bomb_layer = LayerBuilder::new().file("zeros", vec![0u8; 12 << 20]).tar();
    let bomb_image = ImageBuilder::busybox()
        .layer_blob(support::images::LayerBlob::uncompressed(bomb_layer))
        .build();
    let bomb = gzip(&tar_of(&docker_archive(&[(
        &bomb_image,
        &["hostile/bomb:1"],
    )])));
    assert!(bomb.len() < 4 << 20, "{}", bomb.len());
    cases.push((
        "tar bomb",
        bomb,
        "exceeds the limit of 8388608 (config key registry.max_unpacked_bytes_per_layer)".into(),
    ));

    for (what, archive, expected) in &cases {
        let path = write(dir.path(), "hostile.tar", archive);
        let err = docker.fails(&["load", "-i", &path]);
        assert!(
            err.contains("Error response from daemon") && err.contains(expected.as_str()),
            "{what}: {err}\n(wanted {expected})"
        );
        assert_eq!(state(&docker), before, "{what} left something behind");
    }

    // The status is 400, with dockerd's {"message"}.
    let (status, _, body) = raw_http_bytes(
        &docker.socket(),
        "POST",
        "/v1.41/images/load",
        "application/x-tar",
        &cases[0].1,
    );
    assert_eq!(status, 400, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("../evil"),
        "{body}"
    );

    // The good archive loads, and runs.
    let path = write(dir.path(), "good.tar", &tar_of(&good));
    assert_eq!(
        docker.ok(&["load", "-i", &path]),
        "Loaded image: hostile/fresh:1"
    );
    assert_eq!(
        docker.ok(&["run", "--rm", "hostile/fresh:1", "cat", "/fresh"]),
        "a new layer"
    );
}

/// A tag that moves to a new image leaves the old one untagged (`<none>`), as dockerd
/// does; the image filters (dangling, reference patterns, before, since) and `docker
/// image prune` see it.
#[tokio::test]
async fn untagged_images_stay_until_pruned() {
    let docker = DockerEnv::start_pulled().await;
    let name = unique("untag");
    let target = format!("wharf-test/{}:v1", unique("app"));
    let commit = |content: &str| -> String {
        docker.ok(&[
            "run",
            "--name",
            &name,
            &docker.image,
            "sh",
            "-c",
            &format!("echo {content} > /marker"),
        ]);
        let id = docker.ok(&["commit", &name, &target]);
        docker.ok(&["rm", &name]);
        id
    };
    let first = commit("one");
    // Created times have a one-second resolution in the filters.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let second = commit("two");
    assert_ne!(first, second);
    let dangling = docker.ok(&["images", "--filter", "dangling=true", "--no-trunc", "-q"]);
    assert_eq!(dangling, first, "the first image is kept untagged");
    let listed = docker.ok(&[
        "images",
        "-a",
        "--format",
        "{{.ID}} {{.Repository}}:{{.Tag}}",
    ]);
    assert!(
        listed
            .lines()
            .any(|l| first.contains(l.split(' ').next().unwrap_or("-"))
                && l.ends_with("<none>:<none>")),
        "{listed}"
    );
    // reference patterns: `*` does not cross `/`.
    let by_pattern = docker.ok(&[
        "images",
        "--filter",
        "reference=wharf-test/*",
        "--no-trunc",
        "-q",
    ]);
    assert_eq!(by_pattern, second);
    let by_star = docker.ok(&["images", "--filter", "reference=*", "-q"]);
    assert!(by_star.is_empty(), "{by_star}");
    let since = docker.ok(&[
        "images",
        "--filter",
        &format!("since={}", docker.image),
        "--no-trunc",
        "-q",
    ]);
    assert!(since.contains(&second) && since.contains(&first), "{since}");
    let before = docker.ok(&[
        "images",
        "--filter",
        &format!("before={target}"),
        "--no-trunc",
        "-q",
    ]);
    assert!(
        before.contains(&first) && !before.contains(&second),
        "{before}"
    );
    let err = docker.fails(&["images", "--filter", "before=no-such-image:1"]);
    assert!(err.contains("No such image"), "{err}");
    let err = docker.fails(&["images", "--filter", "bogus=1"]);
    assert!(err.contains("invalid filter 'bogus'"), "{err}");

    let pruned = docker.ok(&["image", "prune", "-f"]);
    assert!(pruned.contains(&first), "{pruned}");
    assert!(docker
        .ok(&["images", "--filter", "dangling=true", "-q"])
        .is_empty());
    assert_eq!(
        docker.ok(&["run", "--rm", &target, "cat", "/marker"]),
        "two"
    );
    docker.ok(&["rmi", &target]);
}

/// An image's HEALTHCHECK runs without any `--health-*` flag; flags override each
/// setting they name and keep the image's test; `--no-healthcheck` turns it off; inspect
/// shows the merged check as dockerd does.
#[tokio::test(flavor = "multi_thread")]
async fn image_healthcheck_is_merged_with_the_request() {
    let docker = DockerEnv::start().await;
    let dir = tempfile::tempdir().unwrap();
    let tag = format!("wharf-test/{}:v1", unique("health"));
    let image = ImageBuilder::busybox()
        .edit_config_json(|config| {
            config["config"]["Healthcheck"] = json!({
                "Test": ["CMD-SHELL", "echo from-image"],
                "Interval": 200_000_000i64,
                "Timeout": 3_000_000_000i64,
                "Retries": 2,
            });
        })
        .build();
    let archive = write(
        dir.path(),
        "health.tar",
        &tar_of(&docker_archive(&[(&image, &[tag.as_str()])])),
    );
    docker.ok(&["load", "-i", &archive]);

    let plain = unique("health-image");
    docker.ok(&["run", "-d", "--name", &plain, &tag, "sleep", "600"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let status = docker.ok(&["inspect", "-f", "{{.State.Health.Status}}", &plain]);
        if status == "healthy" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never healthy: {status}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let log = docker.ok(&[
        "inspect",
        "-f",
        "{{range .State.Health.Log}}{{.Output}}{{end}}",
        &plain,
    ]);
    assert!(log.contains("from-image"), "{log}");

    // A flag overrides its own setting; the test and the others come from the image.
    let merged = unique("health-merged");
    docker.ok(&[
        "create",
        "--name",
        &merged,
        "--health-retries",
        "7",
        &tag,
        "sleep",
        "600",
    ]);
    let check = docker.ok(&[
        "inspect",
        "-f",
        "{{json .Config.Healthcheck.Test}} {{.Config.Healthcheck.Retries}} {{.Config.Healthcheck.Interval}}",
        &merged,
    ]);
    assert_eq!(check, r#"["CMD-SHELL","echo from-image"] 7 200ms"#);

    // --no-healthcheck: no check at all.
    let none = unique("health-none");
    docker.ok(&[
        "run",
        "-d",
        "--name",
        &none,
        "--no-healthcheck",
        &tag,
        "sleep",
        "600",
    ]);
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    let state = docker.ok(&["inspect", "-f", "{{json .State.Health}}", &none]);
    assert_eq!(state, "null", "no health state with --no-healthcheck");
    docker.ok(&["rm", "-f", &plain, &merged, &none]);
    docker.ok(&["rmi", &tag]);
}

/// Serves `files` (path → body) over HTTP/1.0 on a loopback port until dropped; any
/// other path is a 404 with a body. Returns the port.
async fn serve_files(files: Vec<(&'static str, Vec<u8>)>) -> (u16, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let files = std::sync::Arc::new(files);
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let files = files.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&request);
                let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                let reply = match files.iter().find(|(p, _)| *p == path) {
                    Some((_, body)) => {
                        let mut reply =
                            format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n", body.len())
                                .into_bytes();
                        reply.extend_from_slice(body);
                        reply
                    }
                    None => {
                        b"HTTP/1.0 404 Not Found\r\nContent-Length: 9\r\n\r\nno such\n\n".to_vec()
                    }
                };
                let _ = stream.write_all(&reply).await;
            });
        }
    });
    (port, task)
}

/// `docker import URL` downloads the tarball (dockerd's progress words), bzip2 and xz
/// tarballs import from a URL or stdin as gzip ones do, and a failed download or a
/// scheme other than http(s) is refused naming it, with nothing made. (Multi-threaded:
/// the file server runs while the test waits on the CLI.)
#[tokio::test(flavor = "multi_thread")]
async fn import_from_a_url_and_bzip2_xz_tarballs() {
    use std::io::Write;
    let docker = DockerEnv::start().await;
    let tar = gunzip(&base_layer().blob);
    let mut bz = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
    bz.write_all(&tar).unwrap();
    let bz = bz.finish().unwrap();
    let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 1);
    xz.write_all(&tar).unwrap();
    let xz = xz.finish().unwrap();
    let (port, server) = serve_files(vec![
        ("/rootfs.tar.bz2", bz),
        ("/rootfs.tar.gz", base_layer().blob.clone()),
    ])
    .await;

    // Through the API, to see dockerd's progress messages.
    let url = format!("http://127.0.0.1:{port}/rootfs.tar.gz");
    let repo = unique("from-url");
    let (status, _, body) = docker.http(
        "POST",
        &format!("/v1.41/images/create?fromSrc={url}&repo={repo}&tag=v1"),
        None,
    );
    assert_eq!(status, 200, "{body}");
    let messages: Vec<Value> = body
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        messages[0]["status"],
        format!("Downloading from {url}"),
        "{body}"
    );
    assert!(
        messages.iter().any(|m| m["status"] == "Importing"
            && m["progressDetail"]["total"] == base_layer().blob.len()),
        "{body}"
    );
    let id = messages.last().unwrap()["status"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(id.starts_with("sha256:"), "{body}");
    let comment = docker.ok(&[
        "image",
        "inspect",
        "-f",
        "{{.Comment}}",
        &format!("{repo}:v1"),
    ]);
    assert_eq!(comment, format!("Imported from {url}"));

    // The CLI, with a bzip2 tarball: stored decompressed, and it runs.
    let bz_name = format!("{}:v1", unique("bzip2"));
    docker.ok(&[
        "import",
        "--change",
        r#"CMD ["echo", "bzip2 ok"]"#,
        &format!("http://127.0.0.1:{port}/rootfs.tar.bz2"),
        &bz_name,
    ]);
    assert_eq!(docker.ok(&["run", "--rm", &bz_name]), "bzip2 ok");
    // xz, from stdin.
    let dir = tempfile::tempdir().unwrap();
    let xz_file = write(dir.path(), "rootfs.tar.xz", &xz);
    let xz_name = format!("{}:v1", unique("xz"));
    let run = docker.shell(&format!(
        "\"$DOCKER\" import --change 'CMD [\"echo\", \"xz ok\"]' - {xz_name} < {xz_file}"
    ));
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert_eq!(docker.ok(&["run", "--rm", &xz_name]), "xz ok");

    // Refusals: a 404, a server that is not there, another scheme.
    let before = docker.ok(&["images", "-q", "--no-trunc"]);
    let missing = format!("http://127.0.0.1:{port}/missing.tar");
    let err = docker.fails(&["import", &missing, "refused:1"]);
    assert!(
        err.contains(&format!(
            "failed to GET {missing} with status 404 Not Found: no such"
        )),
        "{err}"
    );
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let err = docker.fails(&[
        "import",
        &format!("http://127.0.0.1:{closed_port}/x.tar"),
        "refused:2",
    ]);
    assert!(err.contains("error downloading remote context"), "{err}");
    let (status, _, body) = docker.http(
        "POST",
        "/v1.41/images/create?fromSrc=file:///etc/shadow&repo=refused&tag=3",
        None,
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("only http and https"), "{body}");
    assert_eq!(docker.ok(&["images", "-q", "--no-trunc"]), before);
    server.abort();
}
