//! `docker load`: a docker-archive or an OCI image layout into the image service, all
//! or nothing (see the module above for the order of the checks).

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Value};

use super::spool::{self, Spool, SpooledFile};
use super::{echo, has_explicit_tag, ArchiveError, Detected, MAX_JSON};
use crate::image::content::digest_hex;
use crate::image::platform::Platform;
use crate::image::registry::{
    parse_manifest, ImageReference, ParsedManifest, MEDIA_TYPE_DOCKER_MANIFEST,
    MEDIA_TYPE_DOCKER_MANIFEST_LIST, MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_OCI_MANIFEST,
};
use crate::image::snapshot::Snapshotter;
use crate::image::unpack::{self, Compression};
use crate::image::{blocking, Image, ImageError, ImageService, Layer};

/// What a load stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    pub images: Vec<LoadedImage>,
}

/// One image of a load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedImage {
    /// The config digest.
    pub id: String,
    /// Normalized `registry/repository:tag`s the archive gave it.
    pub tags: Vec<String>,
    /// Layers this load unpacked (the others were there already): diff ID and the size
    /// of the layer as the archive held it.
    pub layers: Vec<(String, u64)>,
    /// Tags that moved to this image from another one: the tag and the other image's ID.
    pub moved_tags: Vec<(String, String)>,
}

/// An image of the archive, checked, before anything is stored.
#[derive(Debug)]
struct Planned {
    id: String,
    config: Vec<u8>,
    manifest: Vec<u8>,
    manifest_digest: String,
    manifest_media_type: String,
    layers: Vec<PlannedLayer>,
    tags: Vec<String>,
    user: String,
}

#[derive(Debug, Clone)]
struct PlannedLayer {
    file: SpooledFile,
    media_type: String,
    compression: Compression,
    diff_id: String,
    chain_id: String,
}

impl ImageService {
    /// Loads the archive `input` (a docker-archive or an OCI image layout tarball,
    /// plain, gzip or zstd) into `namespace`. Reading is blocking (the input is read on
    /// a blocking thread). On any error nothing is tagged and what the load had stored
    /// is garbage-collected.
    pub async fn load(
        &self,
        namespace: &str,
        input: impl Read + Send + 'static,
    ) -> Result<LoadReport, ImageError> {
        let result = self.load_inner(namespace, input).await;
        if let Err(error) = &result {
            tracing::info!(%error, "image load refused");
            if let Err(gc) = self.gc().await {
                tracing::warn!(error = %gc, "cleaning up after a failed load");
            }
        }
        result
    }

    async fn load_inner(
        &self,
        namespace: &str,
        input: impl Read + Send + 'static,
    ) -> Result<LoadReport, ImageError> {
        let limits = spool::Limits {
            max_entry_bytes: self.unpack_limits.max_bytes,
            max_total_bytes: self.unpack_limits.max_image_bytes,
            max_entries: self.unpack_limits.max_entries,
        };
        let dir = self.content.spool_dir()?;
        let spool = Arc::new(blocking(move || Spool::read(input, dir, &limits)).await?);
        let planned = {
            let spool = spool.clone();
            let platform = self.platform.clone();
            let max_layers = self.max_layers_per_image;
            blocking(move || plan(&spool, &platform, max_layers)).await?
        };
        let lease = self.leases.take(
            planned
                .iter()
                .flat_map(|image| {
                    image
                        .layers
                        .iter()
                        .flat_map(|l| [l.file.digest.clone(), l.chain_id.clone()])
                        .chain([image.id.clone(), image.manifest_digest.clone()])
                })
                .collect(),
        );

        // Every layer unpacked (or its diff ID checked) before any blob is stored.
        let mut unpacked: Vec<Vec<(String, u64)>> = vec![Vec::new(); planned.len()];
        let mut checked: HashSet<(String, String)> = HashSet::new();
        for (image, unpacked) in planned.iter().zip(unpacked.iter_mut()) {
            let limits = unpack::Limits {
                image_bytes: Default::default(),
                ..self.unpack_limits.clone()
            };
            for (index, layer) in image.layers.iter().enumerate() {
                if !checked.insert((layer.file.digest.clone(), layer.chain_id.clone())) {
                    continue;
                }
                if self.load_layer(layer, index, &limits).await? {
                    unpacked.push((layer.diff_id.clone(), layer.file.size));
                }
            }
        }
        for image in &planned {
            let content = self.content.clone();
            let layers = image.layers.clone();
            let blobs = [
                (image.id.clone(), image.config.clone()),
                (image.manifest_digest.clone(), image.manifest.clone()),
            ];
            blocking(move || {
                for layer in &layers {
                    content.commit_spooled(&layer.file.path, &layer.file.digest)?;
                }
                blobs
                    .iter()
                    .try_for_each(|(digest, data)| content.write_blob(digest, data))
            })
            .await?;
        }
        drop(spool);

        let mut report = LoadReport::default();
        let mut kept_old_records = false;
        for (image, layers) in planned.into_iter().zip(unpacked) {
            // An image already here keeps its record (and blobs): the ones this load
            // stored for it are garbage then.
            kept_old_records |= self
                .get(namespace, &image.id)
                .is_some_and(|old| old.manifest_digest != image.manifest_digest);
            let moved_tags = image
                .tags
                .iter()
                .filter_map(|tag| {
                    self.get(namespace, tag)
                        .filter(|other| other.id != image.id)
                        .map(|other| (tag.clone(), other.id))
                })
                .collect();
            let size = image.layers.iter().map(|l| l.file.size).sum::<u64>()
                + image.config.len() as u64
                + image.manifest.len() as u64;
            let record = Image {
                id: image.id.clone(),
                repo_tags: image.tags.clone(),
                repo_digests: Vec::new(),
                manifest_digest: image.manifest_digest,
                manifest_media_type: image.manifest_media_type,
                index_digest: None,
                layers: image
                    .layers
                    .into_iter()
                    .map(|l| Layer {
                        digest: l.file.digest,
                        size: l.file.size,
                        media_type: l.media_type,
                        diff_id: l.diff_id,
                        chain_id: l.chain_id,
                    })
                    .collect(),
                size,
                user: image.user,
                pinned: false,
                parent: None,
            };
            let recorded = self.record_pulled(namespace, record).await?;
            self.image_event(namespace, "load", &recorded.id, &recorded.id);
            tracing::info!(image = %recorded.id, tags = ?image.tags, "loaded image");
            report.images.push(LoadedImage {
                id: recorded.id,
                tags: image.tags,
                layers,
                moved_tags,
            });
        }
        drop(lease);
        if kept_old_records {
            self.gc().await?;
        }
        Ok(report)
    }

    /// Unpacks one layer of a load into its snapshot, or, if the snapshot exists,
    /// checks the layer's diff ID all the same (the blob is stored with the image).
    /// Returns whether it unpacked.
    async fn load_layer(
        &self,
        layer: &PlannedLayer,
        index: usize,
        limits: &unpack::Limits,
    ) -> Result<bool, ImageError> {
        let _locks = self.lock_layer(&layer.file.digest, &layer.chain_id).await;
        let mismatch = |actual: &str| {
            ArchiveError::invalid(format!(
                "invalid diffID for layer {index}: expected {:?}, got {actual:?}",
                layer.diff_id
            ))
        };
        let layer_err = |source| ArchiveError::Layer {
            path: echo(&layer.file.name),
            source,
        };
        if self.snapshots.exists(&layer.chain_id) {
            if layer.compression == Compression::None && layer.file.digest == layer.diff_id {
                return Ok(false);
            }
            let path = layer.file.path.clone();
            let compression = layer.compression;
            let max = limits.max_bytes;
            let actual = blocking(move || diff_id_of(&path, compression, max))
                .await
                .map_err(|err| match err {
                    ImageError::Unpack { source, .. } => layer_err(source).into(),
                    other => other,
                })?;
            if actual != layer.diff_id {
                return Err(mismatch(&actual).into());
            }
            return Ok(false);
        }
        let pending = self.snapshots.prepare()?;
        let dir = pending.path().to_path_buf();
        let path = layer.file.path.clone();
        let compression = layer.compression;
        let limits = limits.clone();
        let stats = tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(&path).map_err(unpack::UnpackError::Stream)?;
            unpack::apply_layer_limited(std::io::BufReader::new(file), compression, &dir, limits)
        })
        .await
        .map_err(|err| ImageError::Task(err.to_string()))?
        .map_err(layer_err)?;
        if stats.diff_id != layer.diff_id {
            return Err(mismatch(&stats.diff_id).into());
        }
        self.commit_snapshot(pending, &layer.chain_id).await?;
        Ok(true)
    }
}

/// The sha256 of a layer file's uncompressed stream, reading at most `max` bytes of it.
fn diff_id_of(
    path: &std::path::Path,
    compression: Compression,
    max: u64,
) -> Result<String, ImageError> {
    use sha2::{Digest as _, Sha256};
    let stream_err = |err| ImageError::Unpack {
        digest: String::new(),
        source: unpack::UnpackError::Stream(err),
    };
    let file = std::fs::File::open(path).map_err(stream_err)?;
    let mut data = super::decompressed(file, compression)
        .map_err(stream_err)?
        .take(max.saturating_add(1));
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = data.read(&mut buf).map_err(stream_err)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        hasher.update(&buf[..n]);
    }
    if total > max {
        return Err(ImageError::Unpack {
            digest: String::new(),
            source: unpack::UnpackError::Limit {
                what: "unpacked size of the layer (bytes)",
                limit: max,
                key: "registry.max_unpacked_bytes_per_layer",
            },
        });
    }
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
}

/// The images of a spooled archive, every one checked, nothing stored.
fn plan(
    spool: &Spool,
    platform: &Platform,
    max_layers: usize,
) -> Result<Vec<Planned>, ArchiveError> {
    if spool.contains("manifest.json") {
        docker_archive(spool, max_layers)
    } else if spool.contains("index.json") {
        oci_layout(spool, platform, max_layers)
    } else {
        Err(ArchiveError::invalid(
            "invalid archive: it has neither manifest.json (an archive of docker save) nor \
             index.json (an OCI image layout)",
        ))
    }
}

#[derive(Deserialize)]
struct ManifestItem {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

fn docker_archive(spool: &Spool, max_layers: usize) -> Result<Vec<Planned>, ArchiveError> {
    let bytes = spool.read_small("manifest.json", MAX_JSON)?;
    let items: Vec<ManifestItem> = serde_json::from_slice(&bytes)
        .map_err(|err| ArchiveError::invalid(format!("invalid archive: manifest.json: {err}")))?;
    let mut planned = Vec::new();
    for item in items {
        let config_file = spool.file(&item.config)?;
        let config = spool.read_small(&item.config, MAX_JSON)?;
        let id = config_file.digest.clone();
        let diff_ids = image_config(&config, &item.config)?;
        if item.layers.len() != diff_ids.len() {
            return Err(ArchiveError::invalid(format!(
                "invalid manifest, layers length mismatch: expected {}, got {}",
                item.layers.len(),
                diff_ids.len()
            )));
        }
        check_layer_count(&id, diff_ids.len(), max_layers)?;
        let chain_ids = Snapshotter::chain_ids(&diff_ids);
        let mut layers = Vec::new();
        for ((path, diff_id), chain_id) in item.layers.iter().zip(diff_ids).zip(chain_ids) {
            let file = spool.file(path)?.clone();
            let detected = detect_file(&file)?;
            let compression = detected.compression(&format!("layer {}", echo(path)))?;
            let media_type = match compression {
                Compression::None => "application/vnd.docker.image.rootfs.diff.tar",
                Compression::Gzip => "application/vnd.docker.image.rootfs.diff.tar.gzip",
                Compression::Zstd => "application/vnd.docker.image.rootfs.diff.tar.zstd",
            };
            layers.push(PlannedLayer {
                file,
                media_type: media_type.to_string(),
                compression,
                diff_id,
                chain_id,
            });
        }
        let mut tags = Vec::new();
        for tag in item.repo_tags.unwrap_or_default() {
            let invalid = || ArchiveError::invalid(format!("invalid tag {:?}", echo(&tag)));
            if !has_explicit_tag(&tag) {
                return Err(invalid());
            }
            let reference = ImageReference::parse(&tag).map_err(|_| invalid())?;
            let normalized = reference
                .repo_tag()
                .filter(|_| reference.digest().is_none())
                .ok_or_else(invalid)?;
            if !tags.contains(&normalized) {
                tags.push(normalized);
            }
        }
        let manifest = docker_manifest(&id, config.len(), &layers);
        planned.push(Planned {
            manifest_digest: crate::image::content::sha256_digest(&manifest),
            manifest,
            manifest_media_type: super::MEDIA_TYPE_DOCKER_MANIFEST.to_string(),
            user: user_of(&config),
            id,
            config,
            layers,
            tags,
        });
    }
    Ok(planned)
}

/// The Docker schema 2 manifest of a loaded image (as containerd's importer makes).
fn docker_manifest(config_digest: &str, config_size: usize, layers: &[PlannedLayer]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": super::MEDIA_TYPE_DOCKER_MANIFEST,
        "config": {
            "mediaType": super::MEDIA_TYPE_DOCKER_CONFIG,
            "size": config_size,
            "digest": config_digest,
        },
        "layers": layers.iter().map(|l| json!({
            "mediaType": l.media_type,
            "size": l.file.size,
            "digest": l.file.digest,
        })).collect::<Vec<_>>(),
    }))
    .unwrap_or_default()
}

/// Checks an image config (JSON, an OS this host runs) and returns its diff IDs.
fn image_config(config: &[u8], name: &str) -> Result<Vec<String>, ArchiveError> {
    let invalid = |reason: String| {
        ArchiveError::invalid(format!("invalid image config {}: {reason}", echo(name)))
    };
    let value: Value =
        serde_json::from_slice(config).map_err(|err| invalid(format!("not JSON: {err}")))?;
    let os = value.get("os").and_then(Value::as_str).unwrap_or("");
    if !(os.is_empty() || os == "linux") {
        return Err(ArchiveError::invalid(format!(
            "cannot load {} image on linux",
            echo(os)
        )));
    }
    let diff_ids = value
        .pointer("/rootfs/diff_ids")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("it has no rootfs.diff_ids".to_string()))?;
    diff_ids
        .iter()
        .map(|d| {
            let d = d
                .as_str()
                .ok_or_else(|| invalid("rootfs.diff_ids holds a non-string".to_string()))?;
            digest_hex(d).map_err(|err| invalid(err.to_string()))?;
            Ok(d.to_string())
        })
        .collect()
}

fn user_of(config: &[u8]) -> String {
    serde_json::from_slice::<Value>(config)
        .ok()
        .and_then(|c| {
            c.pointer("/config/User")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_default()
}

fn check_layer_count(id: &str, layers: usize, max_layers: usize) -> Result<(), ArchiveError> {
    if layers > max_layers {
        return Err(ArchiveError::Limit {
            what: format!("the number of layers of image {id} ({layers})"),
            limit: max_layers as u64,
            key: "registry.max_layers_per_image",
        });
    }
    Ok(())
}

/// How a spooled layer file is compressed.
fn detect_file(file: &SpooledFile) -> Result<Detected, ArchiveError> {
    let mut head = [0u8; 6];
    let mut opened = std::fs::File::open(&file.path).map_err(|source| {
        ArchiveError::Internal(crate::image::content::ContentError::Io {
            path: file.path.clone(),
            source,
        })
    })?;
    let mut filled = 0;
    while filled < head.len() {
        match opened.read(&mut head[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(source) => {
                return Err(ArchiveError::Internal(
                    crate::image::content::ContentError::Io {
                        path: file.path.clone(),
                        source,
                    },
                ))
            }
        }
    }
    Ok(Detected::of(&head[..filled]))
}

#[derive(Deserialize)]
struct RawPlatform {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
}

#[derive(Deserialize)]
struct RawDescriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    #[serde(default)]
    digest: String,
    #[serde(default)]
    size: i64,
    #[serde(default)]
    annotations: Option<HashMap<String, String>>,
    #[serde(default)]
    platform: Option<RawPlatform>,
}

#[derive(Deserialize)]
struct RawIndex {
    #[serde(default)]
    manifests: Vec<RawDescriptor>,
}

impl RawDescriptor {
    fn platform(&self) -> Option<Platform> {
        self.platform
            .as_ref()
            .map(|p| Platform::new(&p.os, &p.architecture, p.variant.as_deref()))
    }

    fn is_manifest(&self) -> bool {
        matches!(
            self.media_type.as_str(),
            MEDIA_TYPE_OCI_MANIFEST | MEDIA_TYPE_DOCKER_MANIFEST
        )
    }

    fn is_index(&self) -> bool {
        matches!(
            self.media_type.as_str(),
            MEDIA_TYPE_OCI_INDEX | MEDIA_TYPE_DOCKER_MANIFEST_LIST
        )
    }
}

fn oci_layout(
    spool: &Spool,
    platform: &Platform,
    max_layers: usize,
) -> Result<Vec<Planned>, ArchiveError> {
    if spool.contains("oci-layout") {
        let layout = spool.read_small("oci-layout", 64 << 10)?;
        let version = serde_json::from_slice::<Value>(&layout).ok().and_then(|v| {
            v.get("imageLayoutVersion")
                .and_then(Value::as_str)
                .map(str::to_string)
        });
        if version.is_none() {
            return Err(ArchiveError::invalid(
                "invalid OCI image layout: oci-layout has no imageLayoutVersion",
            ));
        }
    }
    let index: RawIndex = serde_json::from_slice(&spool.read_small("index.json", MAX_JSON)?)
        .map_err(|err| {
            ArchiveError::invalid(format!("invalid OCI image layout: index.json: {err}"))
        })?;
    let mut planned = Vec::new();
    let mut other_platforms = Vec::new();
    for desc in &index.manifests {
        let name = oci_name(desc)?;
        let manifest = if desc.is_manifest() {
            match desc.platform() {
                Some(offered) if platform.rank(&offered).is_none() => {
                    other_platforms.push(offered.to_string());
                    continue;
                }
                _ => desc,
            }
        } else if desc.is_index() {
            let nested: RawIndex =
                serde_json::from_slice(&blob(spool, desc, MAX_JSON)?).map_err(|err| {
                    ArchiveError::invalid(format!("index {}: {err}", echo(&desc.digest)))
                })?;
            let best = nested
                .manifests
                .iter()
                .enumerate()
                .filter(|(_, entry)| entry.is_manifest())
                .filter_map(|(i, entry)| match entry.platform() {
                    Some(offered) => platform.rank(&offered).map(|rank| (rank, i, entry)),
                    None => Some((u32::MAX, i, entry)),
                })
                .min_by_key(|(rank, i, _)| (*rank, *i));
            match best {
                Some((_, _, entry)) => {
                    // The nested index is what the layout names.
                    let nested_manifest = entry;
                    planned.push(oci_image(spool, nested_manifest, name, max_layers)?);
                    continue;
                }
                None => {
                    other_platforms.extend(
                        nested
                            .manifests
                            .iter()
                            .filter_map(RawDescriptor::platform)
                            .map(|p| p.to_string()),
                    );
                    continue;
                }
            }
        } else {
            // Artifacts, attestations: nothing to run.
            continue;
        };
        planned.push(oci_image(spool, manifest, name, max_layers)?);
    }
    if planned.is_empty() {
        return Err(ArchiveError::invalid(if other_platforms.is_empty() {
            "invalid OCI image layout: index.json lists no image manifest".to_string()
        } else {
            other_platforms.sort();
            other_platforms.dedup();
            format!(
                "no image for platform {platform} in the OCI image layout; it offers: {}",
                other_platforms.join(", ")
            )
        }));
    }
    Ok(planned)
}

/// The name an OCI index entry gives its image: `io.containerd.image.name`, else
/// `org.opencontainers.image.ref.name` when it is a whole reference (not a bare tag).
fn oci_name(desc: &RawDescriptor) -> Result<Option<String>, ArchiveError> {
    let Some(annotations) = &desc.annotations else {
        return Ok(None);
    };
    let name = match (
        annotations.get("io.containerd.image.name"),
        annotations.get("org.opencontainers.image.ref.name"),
    ) {
        (Some(name), _) => name,
        (None, Some(name)) if name.contains(['/', ':']) => name,
        _ => return Ok(None),
    };
    let invalid =
        || ArchiveError::invalid(format!("invalid image name {:?} in index.json", echo(name)));
    let reference = ImageReference::parse(name).map_err(|_| invalid())?;
    if reference.digest().is_some() {
        // A digest names no tag to give the image.
        return Ok(None);
    }
    reference.repo_tag().map(Some).ok_or_else(invalid)
}

/// The blob a descriptor names, checked against its digest and size.
fn blob_file<'a>(spool: &'a Spool, desc: &RawDescriptor) -> Result<&'a SpooledFile, ArchiveError> {
    let hex = digest_hex(&desc.digest).map_err(|_| {
        ArchiveError::invalid(format!(
            "invalid descriptor digest {:?} (only sha256 digests are read)",
            echo(&desc.digest)
        ))
    })?;
    let path = format!("blobs/sha256/{hex}");
    let file = spool.file(&path)?;
    if file.digest != desc.digest {
        return Err(ArchiveError::invalid(format!(
            "blob {path} failed verification: its content hashes to {}",
            file.digest
        )));
    }
    if u64::try_from(desc.size).ok() != Some(file.size) {
        return Err(ArchiveError::invalid(format!(
            "blob {path} is {} bytes, but its descriptor says {}",
            file.size, desc.size
        )));
    }
    Ok(file)
}

/// The bytes of a small blob (index, manifest, config), checked.
fn blob(spool: &Spool, desc: &RawDescriptor, max: u64) -> Result<Vec<u8>, ArchiveError> {
    let file = blob_file(spool, desc)?;
    spool.read_small(&file.name, max)
}

fn oci_image(
    spool: &Spool,
    desc: &RawDescriptor,
    name: Option<String>,
    max_layers: usize,
) -> Result<Planned, ArchiveError> {
    let manifest = blob(spool, desc, MAX_JSON)?;
    let parsed = parse_manifest(&manifest, &desc.digest)
        .map_err(|err| ArchiveError::invalid(err.to_string()))?;
    let ParsedManifest::Image {
        media_type,
        config,
        layers,
    } = parsed
    else {
        return Err(ArchiveError::invalid(format!(
            "manifest {} is an index",
            desc.digest
        )));
    };
    let config_desc = RawDescriptor {
        media_type: config.media_type.clone(),
        digest: config.digest.clone(),
        size: i64::try_from(config.size).unwrap_or(-1),
        annotations: None,
        platform: None,
    };
    let config_bytes = blob(spool, &config_desc, MAX_JSON)?;
    let diff_ids = image_config(&config_bytes, &config.digest)?;
    if diff_ids.len() != layers.len() {
        return Err(ArchiveError::invalid(format!(
            "invalid manifest {}: it has {} layers but its config lists {} diff_ids",
            desc.digest,
            layers.len(),
            diff_ids.len()
        )));
    }
    check_layer_count(&config.digest, layers.len(), max_layers)?;
    let chain_ids = Snapshotter::chain_ids(&diff_ids);
    let mut planned_layers = Vec::new();
    for ((layer, diff_id), chain_id) in layers.into_iter().zip(diff_ids).zip(chain_ids) {
        let layer_desc = RawDescriptor {
            media_type: layer.media_type.clone(),
            digest: layer.digest.clone(),
            size: i64::try_from(layer.size).unwrap_or(-1),
            annotations: None,
            platform: None,
        };
        let file = blob_file(spool, &layer_desc)?.clone();
        let compression = Compression::from_media_type(&layer.media_type)
            .map_err(|err| ArchiveError::invalid(err.to_string()))?;
        planned_layers.push(PlannedLayer {
            file,
            media_type: layer.media_type,
            compression,
            diff_id,
            chain_id,
        });
    }
    Ok(Planned {
        id: config.digest,
        user: user_of(&config_bytes),
        config: config_bytes,
        manifest_digest: desc.digest.clone(),
        manifest,
        manifest_media_type: media_type,
        layers: planned_layers,
        tags: name.into_iter().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn descriptor(annotations: &[(&str, &str)]) -> RawDescriptor {
        RawDescriptor {
            media_type: MEDIA_TYPE_OCI_MANIFEST.to_string(),
            digest: String::new(),
            size: 0,
            annotations: Some(
                annotations
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            platform: None,
        }
    }

    #[test]
    fn oci_names_come_from_whole_references() {
        let name = |a: &[(&str, &str)]| oci_name(&descriptor(a)).unwrap();
        assert_eq!(
            name(&[("org.opencontainers.image.ref.name", "localhost/app:v1")]),
            Some("localhost/app:v1".to_string())
        );
        assert_eq!(
            name(&[("org.opencontainers.image.ref.name", "busybox:1")]),
            Some("docker.io/library/busybox:1".to_string())
        );
        // A bare tag names no repository.
        assert_eq!(
            name(&[("org.opencontainers.image.ref.name", "latest")]),
            None
        );
        assert_eq!(
            name(&[
                (
                    "io.containerd.image.name",
                    "docker.io/library/busybox:latest"
                ),
                ("org.opencontainers.image.ref.name", "latest"),
            ]),
            Some("docker.io/library/busybox:latest".to_string())
        );
        assert_eq!(name(&[]), None);
        assert!(oci_name(&descriptor(&[("io.containerd.image.name", "Bad Name")])).is_err());
    }

    #[test]
    fn configs_must_be_linux_images_with_diff_ids() {
        let ok = br#"{"os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"]}}"#;
        assert_eq!(image_config(ok, "c.json").unwrap().len(), 1);
        let windows = br#"{"os":"windows","rootfs":{"type":"layers","diff_ids":[]}}"#;
        assert_eq!(
            image_config(windows, "c.json").unwrap_err().to_string(),
            "cannot load windows image on linux"
        );
        let bad_digest = br#"{"rootfs":{"diff_ids":["sha256:../../x"]}}"#;
        assert!(image_config(bad_digest, "c.json").is_err());
        let none = br#"{"os":"linux"}"#;
        assert!(image_config(none, "c.json")
            .unwrap_err()
            .to_string()
            .contains("no rootfs.diff_ids"));
        assert!(image_config(b"{", "c.json").is_err());
    }
}
