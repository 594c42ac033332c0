//! Committing a container's read-write layer as a new image (`docker commit`), as
//! dockerd's `CommitImage` does: the upper dir becomes one more layer on the container's
//! image (none when nothing changed), the image config is the parent's with the new
//! `config`, `container_config`, diff ID and history entry, and the new image is
//! recorded (untagged, or tagged as asked: the tag moves off any image that had it,
//! which stays, as a dangling image).
//!
//! The layer is written once as a gzip tar to a file beside a pending snapshot (so a
//! crash leaves nothing the next start does not remove), unpacked from that file into
//! the snapshot (the same code as a pulled layer, so the new snapshot is exactly what a
//! pull of the pushed image would make), then stored in the content store. Leases keep
//! the parent's and the new blobs and snapshots from garbage collection until the
//! image is recorded.

use std::fs::File;
use std::io::{self, BufWriter, Write};

use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use super::{LayerSource, EMPTY_LAYER_DIFF_ID};
use crate::image::content::{sha256_digest, ContentError};
use crate::image::snapshot::{PendingSnapshot, Snapshotter};
use crate::image::unpack::{self, Compression};
use crate::image::{blocking, check_diff_id, Image, ImageError, ImageService, Layer};
use crate::store::Kind;

const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// What the front end decides of a committed image.
#[derive(Debug, Clone, Default)]
pub struct CommitOptions {
    /// The container committed (the config's `container`).
    pub container_id: String,
    pub author: String,
    pub comment: String,
    /// The image config's `config` (Cmd, Env, Labels, ...).
    pub config: Value,
    /// The config's `container_config`: the container's own configuration.
    pub container_config: Value,
    /// The history entry's `created_by` (dockerd: the container's command).
    pub created_by: String,
    /// A tag for the image (`repo:tag`), or none.
    pub reference: Option<String>,
}

/// A writer that hashes and counts what passes through it.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> Hashing<W> {
    fn new(inner: W) -> Hashing<W> {
        Hashing {
            inner,
            hasher: Sha256::new(),
            written: 0,
        }
    }

    fn finish(self) -> (String, u64, W) {
        (
            format!("sha256:{}", hex::encode(self.hasher.finalize())),
            self.written,
            self.inner,
        )
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// What a new image is made of, before its config and manifest are written.
struct Child<'a> {
    parent: Option<&'a Image>,
    parent_config: &'a [u8],
    parent_layers: Vec<Layer>,
    /// OCI media types (the parent's format), else Docker schema 2.
    oci: bool,
    new_layer: Option<Layer>,
    /// The new layer's files, when it was built (not reused).
    built: Option<BuiltLayer>,
    created: String,
}

/// The new layer, unpacked into a pending snapshot, its blob in a file beside it.
struct BuiltLayer {
    pending: PendingSnapshot,
    blob: std::path::PathBuf,
    digest: String,
    size: u64,
    diff_id: String,
}

/// Writes the layer of `layer` (without `skip`) and unpacks it; `None` when it is
/// empty.
fn build_layer(
    snapshots: &Snapshotter,
    layer: &LayerSource,
    skip: &[&str],
) -> Result<Option<BuiltLayer>, ImageError> {
    let failed = |what: &str, err: io::Error| {
        ImageError::Task(format!(
            "{what} of the container's layer {}: {err}",
            layer.upper.display()
        ))
    };
    let pending = snapshots.prepare()?;
    let blob = pending
        .path()
        .parent()
        .unwrap_or(pending.path())
        .join("layer.tar.gz");
    let file = File::create(&blob).map_err(|err| failed("writing the tar", err))?;
    let compressed = Hashing::new(BufWriter::with_capacity(256 * 1024, file));
    let gzip = flate2::write::GzEncoder::new(compressed, flate2::Compression::default());
    let tar = super::write_tar(&layer.upper, Some((layer, skip)), Hashing::new(gzip))
        .map_err(|err| failed("reading", err))?;
    let (diff_id, _, gzip) = tar.finish();
    if diff_id == EMPTY_LAYER_DIFF_ID {
        return Ok(None);
    }
    let compressed = gzip.finish().map_err(|err| failed("compressing", err))?;
    let (digest, size, mut file) = compressed.finish();
    file.flush().map_err(|err| failed("writing the tar", err))?;
    drop(file);
    let reader = File::open(&blob).map_err(|err| failed("reading the tar", err))?;
    let stats = unpack::apply_layer(
        io::BufReader::new(reader),
        Compression::Gzip,
        pending.path(),
    )
    .map_err(|source| ImageError::Unpack {
        digest: digest.clone(),
        source,
    })?;
    if stats.diff_id != diff_id {
        return Err(ImageError::DiffIdMismatch {
            digest,
            expected: diff_id,
            actual: stats.diff_id,
        });
    }
    Ok(Some(BuiltLayer {
        pending,
        blob,
        digest,
        size,
        diff_id,
    }))
}

/// The config a `FROM scratch` build starts from: this machine's platform, no layers.
fn scratch_config() -> Vec<u8> {
    let platform = crate::image::platform::Platform::host();
    let mut config = json!({
        "architecture": platform.architecture,
        "os": platform.os,
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": []},
    });
    if let Some(variant) = platform.variant {
        config["variant"] = json!(variant);
    }
    serde_json::to_vec(&config).unwrap_or_default()
}

/// The parent's config with the new image's fields (moby's `NewChildImage`).
fn child_config(
    parent: &[u8],
    options: &CommitOptions,
    diff_id: Option<&str>,
    created: &str,
) -> Result<Value, String> {
    let mut config: Value =
        serde_json::from_slice(parent).map_err(|err| format!("the config is not JSON: {err}"))?;
    let object = config
        .as_object_mut()
        .ok_or("the config is not a JSON object")?;
    for key in ["id", "parent", "docker_version", "author", "comment"] {
        object.remove(key);
    }
    object.insert("created".into(), json!(created));
    object.insert("config".into(), options.config.clone());
    object.insert("container".into(), json!(options.container_id));
    object.insert("container_config".into(), options.container_config.clone());
    if !options.author.is_empty() {
        object.insert("author".into(), json!(options.author));
    }
    // dockerd keeps the comment in the history; inspect shows the last one. The top
    // level field (Docker's v1 image) is what this daemon's inspect reads.
    if !options.comment.is_empty() {
        object.insert("comment".into(), json!(options.comment));
    }
    let rootfs = object
        .entry("rootfs")
        .or_insert_with(|| json!({"type": "layers", "diff_ids": []}));
    if let Some(diff_id) = diff_id {
        match rootfs.get_mut("diff_ids").and_then(Value::as_array_mut) {
            Some(ids) => ids.push(json!(diff_id)),
            None => rootfs["diff_ids"] = json!([diff_id]),
        }
    }
    let mut entry = json!({ "created": created, "created_by": options.created_by });
    if !options.author.is_empty() {
        entry["author"] = json!(options.author);
    }
    if !options.comment.is_empty() {
        entry["comment"] = json!(options.comment);
    }
    if diff_id.is_none() {
        entry["empty_layer"] = json!(true);
    }
    match object.get_mut("history").and_then(Value::as_array_mut) {
        Some(history) => history.push(entry),
        None => {
            object.insert("history".into(), json!([entry]));
        }
    }
    Ok(config)
}

/// The manifest of the new image, in its parent's format (Docker schema 2 or OCI).
fn manifest(oci: bool, config: &[u8], layers: &[Layer]) -> (String, Vec<u8>) {
    let (media_type, config_type) = if oci {
        (OCI_MANIFEST, OCI_CONFIG)
    } else {
        (DOCKER_MANIFEST, DOCKER_CONFIG)
    };
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {
            "mediaType": config_type,
            "digest": sha256_digest(config),
            "size": config.len(),
        },
        "layers": layers.iter().map(|l| json!({
            "mediaType": l.media_type,
            "digest": l.digest,
            "size": l.size,
        })).collect::<Vec<_>>(),
    });
    let bytes = serde_json::to_vec(&manifest).unwrap_or_default();
    (media_type.to_string(), bytes)
}

impl ImageService {
    /// Commits the read-write layer `layer` of a container made from the image
    /// `parent_id` (in `namespace`; `None` for a build's `FROM scratch`) as a new image;
    /// `skip` lists the runtime's mount points (see [`super::RUNTIME_MOUNTPOINTS`]).
    /// Returns the new image, tagged as `options.reference` asks; its parent is
    /// recorded (dockerd's `Parent`).
    pub async fn commit(
        &self,
        namespace: &str,
        parent_id: Option<&str>,
        layer: LayerSource,
        skip: &'static [&'static str],
        options: CommitOptions,
    ) -> Result<Image, ImageError> {
        let parent = match parent_id {
            Some(parent_id) => Some(self.get(namespace, parent_id).ok_or_else(|| {
                ImageError::InvalidImage {
                    reference: parent_id.to_string(),
                    message: "the container's image was removed: a commit needs its \
                                      config and layers"
                        .to_string(),
                }
            })?),
            None => None,
        };
        // The parent's blobs and snapshots stay while the new image refers to them.
        let _parent_lease = self.leases.take(
            parent
                .iter()
                .flat_map(|parent| parent.blobs().cloned().chain(parent.chain_ids()))
                .collect(),
        );
        let parent_config = match &parent {
            Some(parent) => self.content.read(&parent.id)?,
            None => scratch_config(),
        };
        let parent_layers = parent
            .as_ref()
            .map(|p| p.layers.clone())
            .unwrap_or_default();
        // Docker's format unless the parent is an OCI image (dockerd 20.10 pushes
        // schema 2).
        let oci = parent
            .as_ref()
            .is_some_and(|p| p.manifest_media_type != DOCKER_MANIFEST);
        let snapshots = self.snapshots.clone();
        let built = blocking(move || build_layer(&snapshots, &layer, skip)).await?;
        let new_layer = built.as_ref().map(|built| {
            let mut diff_ids: Vec<String> =
                parent_layers.iter().map(|l| l.diff_id.clone()).collect();
            diff_ids.push(built.diff_id.clone());
            Layer {
                digest: built.digest.clone(),
                size: built.size,
                media_type: if oci { OCI_LAYER } else { DOCKER_LAYER }.to_string(),
                diff_id: built.diff_id.clone(),
                chain_id: Snapshotter::chain_ids(&diff_ids).pop().unwrap_or_default(),
            }
        });
        let created = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        let child = Child {
            parent: parent.as_ref(),
            parent_config: &parent_config,
            parent_layers,
            oci,
            new_layer,
            built,
            created,
        };
        self.record_child(namespace, child, options).await
    }

    /// A build step's image made of what exists already (`cache_from`): the image
    /// `parent_id` (or none: scratch) and `layer` (another image's, on the same chain),
    /// with the history entry's time `created`.
    pub async fn derive(
        &self,
        namespace: &str,
        parent_id: Option<&str>,
        layer: Option<Layer>,
        created: String,
        options: CommitOptions,
    ) -> Result<Image, ImageError> {
        let parent = match parent_id {
            Some(id) => Some(
                self.get(namespace, id)
                    .ok_or_else(|| ImageError::NotFound(id.to_string()))?,
            ),
            None => None,
        };
        let _lease = self.leases.take(
            parent
                .iter()
                .flat_map(|parent| parent.blobs().cloned().chain(parent.chain_ids()))
                .chain(
                    layer
                        .iter()
                        .flat_map(|l| [l.digest.clone(), l.chain_id.clone()]),
                )
                .collect(),
        );
        if let Some(layer) = &layer {
            if !self.content.exists(&layer.digest) || !self.snapshots.exists(&layer.chain_id) {
                return Err(ImageError::NotFound(format!(
                    "the layer {} of a cache image",
                    layer.digest
                )));
            }
        }
        let parent_config = match &parent {
            Some(parent) => self.content.read(&parent.id)?,
            None => scratch_config(),
        };
        let oci = parent
            .as_ref()
            .is_some_and(|p| p.manifest_media_type != DOCKER_MANIFEST);
        let child = Child {
            parent: parent.as_ref(),
            parent_config: &parent_config,
            parent_layers: parent
                .as_ref()
                .map(|p| p.layers.clone())
                .unwrap_or_default(),
            oci,
            new_layer: layer,
            built: None,
            created,
        };
        self.record_child(namespace, child, options).await
    }

    /// Writes the config and manifest of a child image and records it (tagged as
    /// `options.reference` asks).
    async fn record_child(
        &self,
        namespace: &str,
        child: Child<'_>,
        options: CommitOptions,
    ) -> Result<Image, ImageError> {
        let Child {
            parent,
            parent_config,
            parent_layers,
            oci,
            new_layer,
            built,
            created,
        } = child;
        let mut layers = parent_layers;
        let config = child_config(
            parent_config,
            &options,
            new_layer.as_ref().map(|l| l.diff_id.as_str()),
            &created,
        )
        .map_err(|message| ImageError::InvalidImage {
            reference: parent.map_or("scratch".to_string(), |p| p.id.clone()),
            message,
        })?;
        let config = serde_json::to_vec(&config)
            .map_err(|err| ImageError::Task(format!("encoding the image config: {err}")))?;
        if let Some(layer) = &new_layer {
            layers.push(layer.clone());
        }
        let (manifest_type, manifest) = manifest(oci, &config, &layers);
        let config_digest = sha256_digest(&config);
        let manifest_digest = sha256_digest(&manifest);
        let _lease = self.leases.take(
            [config_digest.clone(), manifest_digest.clone()]
                .into_iter()
                .chain(
                    new_layer
                        .iter()
                        .flat_map(|l| [l.digest.clone(), l.chain_id.clone()]),
                )
                .collect(),
        );
        if let (Some(built), Some(layer)) = (built, &new_layer) {
            self.store_layer(built, layer).await?;
        }
        {
            let content = self.content.clone();
            let blobs = [
                (config_digest.clone(), config.clone()),
                (manifest_digest.clone(), manifest.clone()),
            ];
            blocking(move || {
                blobs
                    .iter()
                    .try_for_each(|(digest, data)| content.write_blob(digest, data))
            })
            .await?;
        }
        let user = serde_json::from_slice::<Value>(&config)
            .ok()
            .and_then(|c| c["config"]["User"].as_str().map(str::to_string))
            .unwrap_or_default();
        let image = Image {
            id: config_digest,
            repo_tags: Vec::new(),
            repo_digests: Vec::new(),
            manifest_digest,
            manifest_media_type: manifest_type,
            index_digest: None,
            size: layers.iter().map(|l| l.size).sum::<u64>()
                + config.len() as u64
                + manifest.len() as u64,
            layers,
            user,
            pinned: false,
            parent: parent.map(|p| p.id.clone()),
        };
        self.record_committed(namespace, &image).await?;
        tracing::info!(image = %image.id, container = %options.container_id, "committed a container");
        match &options.reference {
            Some(reference) => self.tag(namespace, &image.id, reference).await,
            None => Ok(image),
        }
    }

    /// Stores the new layer's blob and commits its snapshot.
    async fn store_layer(&self, built: BuiltLayer, layer: &Layer) -> Result<(), ImageError> {
        let _blob = self.content.lock_digest(&layer.digest).await;
        let _snapshot = self.content.lock_digest(&layer.chain_id).await;
        let content = self.content.clone();
        let snapshots = self.snapshots.clone();
        let layer = layer.clone();
        blocking(move || -> Result<(), ImageError> {
            let BuiltLayer {
                pending,
                blob,
                digest,
                size,
                diff_id,
            } = built;
            check_diff_id(&layer, &diff_id)?;
            if !content.exists(&digest) {
                let mut ingest = content.ingest(&digest, Some(size))?;
                let mut file = File::open(&blob).map_err(|source| ContentError::Io {
                    path: blob.clone(),
                    source,
                })?;
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    let n =
                        io::Read::read(&mut file, &mut buf).map_err(|source| ContentError::Io {
                            path: blob.clone(),
                            source,
                        })?;
                    if n == 0 {
                        break;
                    }
                    ingest.write(&buf[..n])?;
                }
                ingest.commit()?;
            }
            // The blob file must not become part of the committed snapshot.
            std::fs::remove_file(&blob)
                .map_err(|source| ContentError::Io { path: blob, source })?;
            if snapshots.exists(&layer.chain_id) {
                drop(pending);
            } else {
                snapshots.commit(pending, &layer.chain_id)?;
            }
            Ok(())
        })
        .await
    }

    /// Records a committed image (untagged). The same config again (the same changes
    /// within the same nanosecond) is the same image: nothing to record.
    async fn record_committed(&self, namespace: &str, image: &Image) -> Result<(), ImageError> {
        let _records = self.records.lock().await;
        if self.get(namespace, &image.id).is_some() {
            return Ok(());
        }
        self.store
            .update(|tx| tx.insert(namespace, Kind::Image, &image.id, None, image))?;
        let mut namespaces = self.namespaces.write().unwrap_or_else(|p| p.into_inner());
        namespaces
            .entry(namespace.to_string())
            .or_default()
            .insert(image.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_config_as_new_child_image() {
        let parent = br#"{"architecture":"amd64","os":"linux","config":{"Cmd":["sh"]},
            "rootfs":{"type":"layers","diff_ids":["sha256:a"]},
            "history":[{"created":"2020-01-01T00:00:00Z","created_by":"ADD x"}],
            "docker_version":"20.10","id":"old"}"#;
        let options = CommitOptions {
            container_id: "c1".into(),
            author: "me".into(),
            comment: "why".into(),
            config: json!({"Cmd": ["cat", "/x"]}),
            container_config: json!({"Cmd": ["sh"]}),
            created_by: "sh".into(),
            reference: None,
        };
        let config =
            child_config(parent, &options, Some("sha256:b"), "2024-01-01T00:00:00Z").unwrap();
        assert_eq!(
            config["rootfs"]["diff_ids"],
            json!(["sha256:a", "sha256:b"])
        );
        assert_eq!(config["config"]["Cmd"], json!(["cat", "/x"]));
        assert_eq!(config["container"], "c1");
        assert_eq!(config["author"], "me");
        assert_eq!(config["architecture"], "amd64");
        assert!(config.get("id").is_none() && config.get("docker_version").is_none());
        let history = config["history"].as_array().unwrap();
        assert_eq!(history.len(), 2);
        assert_eq!(
            history[1],
            json!({"created": "2024-01-01T00:00:00Z", "created_by": "sh", "author": "me",
                   "comment": "why"})
        );
        let empty = child_config(parent, &options, None, "2024-01-01T00:00:00Z").unwrap();
        assert_eq!(empty["rootfs"]["diff_ids"], json!(["sha256:a"]));
        assert_eq!(empty["history"][1]["empty_layer"], true);
    }
}
