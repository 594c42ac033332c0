//! Images: pull from registries into the content store and snapshots, list, inspect,
//! remove, garbage-collect. A pull is containerd's "fetch blobs into content, then apply
//! layers into snapshots", except that each layer is unpacked while it downloads.
//!
//! Image records live in the metadata store (kind `image`, id = config digest, as
//! containerd's CRI image IDs), and are mirrored in memory so that List/Status never
//! touch the disk.

pub mod archive;
pub mod build;
pub mod changes;
pub mod content;
mod metrics;
pub mod platform;
pub mod progress;
pub mod registry;
pub mod rwlayer;
pub mod snapshot;
pub mod unpack;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use bytes::{Buf, Bytes};
use futures_util::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use crate::config::RegistryConfig;
use crate::events::{Event, EventBus, EventKind};
use crate::store::{Kind, Store, StoreError};
use content::{ContentError, ContentStore};
use progress::{LayerState, Outcome, Progress, ProgressSink};
use registry::{
    Credentials, ImageReference, LayerDescriptor, Platform, PushBlob, RegistryClient,
    RegistryError, ResolvedImage,
};
use snapshot::{SnapshotError, Snapshotter};
use unpack::{Compression, UnpackError};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Content(#[from] ContentError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("layer {digest}: {source}")]
    Unpack { digest: String, source: UnpackError },
    #[error("image {0:?} not found")]
    NotFound(String),
    #[error("image {reference}: {message}")]
    InvalidImage { reference: String, message: String },
    #[error("layer {digest} unpacks to {actual}, but the image config lists diff_id {expected}")]
    DiffIdMismatch {
        digest: String,
        expected: String,
        actual: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A load, save or import refused its input.
    #[error(transparent)]
    Archive(#[from] archive::ArchiveError),
    #[error("image operation failed: {0}")]
    Task(String),
    #[error(
        "image {reference} has {layers} layers, more than the {limit} of \
         registry.max_layers_per_image (overlayfs cannot stack many more)"
    )]
    TooManyLayers {
        reference: String,
        layers: usize,
        limit: usize,
    },
}

impl crate::error::HasKind for ImageError {
    fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            ImageError::Registry(registry) => registry.kind(),
            ImageError::Content(content) => content.kind(),
            ImageError::NotFound(_) => ErrorKind::NotFound,
            // A configured limit: a quota, as RESOURCE_EXHAUSTED means; kubelet reports
            // it as ErrImagePull with the message, like any pull failure.
            err if err.is_limit() => ErrorKind::ResourceExhausted,
            ImageError::TooManyLayers { .. } => ErrorKind::ResourceExhausted,
            // A full disk while a layer unpacks: retried once there is room.
            err @ ImageError::Unpack { .. } if out_of_space_in_chain(err) => {
                ErrorKind::ResourceExhausted
            }
            ImageError::InvalidImage { .. } | ImageError::Unpack { .. } => {
                ErrorKind::FailedPrecondition
            }
            ImageError::DiffIdMismatch { .. } => ErrorKind::DataLoss,
            ImageError::Store(store) => store.kind(),
            ImageError::Archive(archive) => archive.kind(),
            ImageError::Snapshot(snapshot) => snapshot.kind(),
            ImageError::Task(_) => ErrorKind::Internal,
        }
    }
}

impl ImageError {
    /// A configured limit refused the image.
    pub fn is_limit(&self) -> bool {
        match self {
            ImageError::Archive(archive) => archive.is_limit(),
            _ => matches!(
                self,
                ImageError::TooManyLayers { .. }
                    | ImageError::Unpack {
                        source: UnpackError::Limit { .. },
                        ..
                    }
            ),
        }
    }
}

/// Whether `error`, or an error it was caused by, is a write that found no space.
fn out_of_space_in_chain(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(err) = current {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if content::out_of_space(io) {
                return true;
            }
        }
        current = err.source();
    }
    false
}

/// How much of any text taken from input (a registry's answer, a layer's entry path)
/// errors and logs show.
pub const MAX_ECHO: usize = 256;

/// `text` cut to at most `max` bytes (at a character boundary) plus "…" when longer:
/// what errors and logs echo of untrusted input.
pub fn bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &text[..end], text.len())
}

/// `docker.io/library/busybox:latest` -> `busybox:latest`: a reference in Docker's
/// familiar form, as `docker images` and `docker save`'s manifest show names.
pub fn familiar(reference: &str) -> String {
    if let Some(rest) = reference.strip_prefix("docker.io/") {
        return rest.strip_prefix("library/").unwrap_or(rest).to_string();
    }
    reference.to_string()
}

/// One layer of a stored image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layer {
    pub digest: String,
    pub size: u64,
    pub media_type: String,
    pub diff_id: String,
    pub chain_id: String,
}

/// An image as recorded: what CRI and Docker image calls report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// The config digest: the image ID.
    pub id: String,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    pub manifest_digest: String,
    pub manifest_media_type: String,
    /// The index (manifest list) digest when the image was resolved through one.
    pub index_digest: Option<String>,
    pub layers: Vec<Layer>,
    /// Bytes of all blobs (layers, config, manifest), as containerd counts it.
    pub size: u64,
    /// The config's `User` (e.g. "1000", "wharf", "1000:1000").
    pub user: String,
    pub pinned: bool,
    /// The image this one was committed on (a build step's parent), as dockerd's
    /// image store records it: intermediate images of a build are found by it (the
    /// build cache), hidden from a plain list, and removed with their last child.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
}

impl Image {
    /// The references by which the image can be found, tags first.
    fn references(&self) -> impl Iterator<Item = &String> {
        self.repo_tags.iter().chain(self.repo_digests.iter())
    }

    /// Every blob digest the image needs.
    fn blobs(&self) -> impl Iterator<Item = &String> {
        [&self.id, &self.manifest_digest]
            .into_iter()
            .chain(self.index_digest.iter())
            .chain(self.layers.iter().map(|l| &l.digest))
    }

    /// Snapshot chain IDs, base layer first.
    pub fn chain_ids(&self) -> Vec<String> {
        self.layers.iter().map(|l| l.chain_id.clone()).collect()
    }
}

/// In-memory view of one namespace's images.
#[derive(Default)]
struct Index {
    by_id: HashMap<String, Image>,
    /// Tag or digest reference -> image id.
    by_ref: HashMap<String, String>,
}

impl Index {
    fn insert(&mut self, image: Image) {
        for reference in image.references() {
            self.by_ref.insert(reference.clone(), image.id.clone());
        }
        self.by_id.insert(image.id.clone(), image);
    }

    fn remove(&mut self, id: &str) -> Option<Image> {
        let image = self.by_id.remove(id)?;
        for reference in image.references() {
            if self.by_ref.get(reference).map(String::as_str) == Some(id) {
                self.by_ref.remove(reference);
            }
        }
        Some(image)
    }

    fn children<'a>(&'a self, id: &'a str) -> impl Iterator<Item = &'a Image> + 'a {
        self.by_id
            .values()
            .filter(move |image| image.parent.as_deref() == Some(id))
    }

    /// Finds an image by full ID, unique ID prefix (with or without `sha256:`), or a
    /// tag / digest reference (normalized as Docker does).
    fn find(&self, query: &str) -> Option<&Image> {
        if let Some(image) = self.by_id.get(query) {
            return Some(image);
        }
        if let Ok(reference) = ImageReference::parse(query) {
            if let Some(id) = self.by_ref.get(&reference.to_string()) {
                return self.by_id.get(id);
            }
        }
        let hex = query.strip_prefix("sha256:").unwrap_or(query);
        if hex.len() >= 12 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let mut matches = self
                .by_id
                .values()
                .filter(|image| image.id["sha256:".len()..].starts_with(hex));
            if let (Some(image), None) = (matches.next(), matches.next()) {
                return Some(image);
            }
        }
        None
    }
}

/// Blobs and snapshots that an in-flight pull is using: garbage collection skips them.
#[derive(Default)]
struct Leases {
    held: Mutex<HashMap<String, usize>>,
}

struct Lease<'a> {
    leases: &'a Leases,
    keys: Vec<String>,
}

impl Leases {
    fn take(&self, keys: Vec<String>) -> Lease<'_> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        for key in &keys {
            *held.entry(key.clone()).or_default() += 1;
        }
        Lease { leases: self, keys }
    }

    fn contains(&self, key: &str) -> bool {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(key)
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let mut held = self.leases.held.lock().unwrap_or_else(|p| p.into_inner());
        for key in &self.keys {
            if let Some(count) = held.get_mut(key) {
                *count -= 1;
                if *count == 0 {
                    held.remove(key);
                }
            }
        }
    }
}

/// How long a refused pull waits before its second garbage collection (see `pull`).
const REFUSED_PULL_SETTLE: std::time::Duration = std::time::Duration::from_millis(250);

/// Store meta key, "1" from an image record's removal until a garbage collection
/// completes after it ([`ImageService::gc_pending`]).
const GC_PENDING: &str = "image_gc_pending";

/// What a garbage collection removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcStats {
    pub blobs_removed: usize,
    pub snapshots_removed: usize,
}

pub struct ImageService {
    store: Arc<Store>,
    content: Arc<ContentStore>,
    snapshots: Arc<Snapshotter>,
    registry: RegistryClient,
    /// Which image of a multi-platform index a pull picks.
    platform: Platform,
    max_concurrent_downloads: usize,
    max_layers_per_image: usize,
    /// Per-layer limits; `image_bytes` is replaced for each pull.
    unpack_limits: unpack::Limits,
    namespaces: RwLock<HashMap<String, Index>>,
    leases: Leases,
    /// Snapshot chains that containers' root filesystems use, by container ID: GC keeps
    /// them even after their image is removed (as containerd's container snapshots do).
    holds: std::sync::Mutex<HashMap<String, Vec<String>>>,
    /// Serializes record updates and GC decisions (not downloads).
    records: tokio::sync::Mutex<()>,
    /// Where pulls, tags and removals are announced.
    events: Arc<EventBus>,
    metrics: metrics::ImageMetrics,
}

impl std::fmt::Debug for ImageService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageService").finish_non_exhaustive()
    }
}

impl ImageService {
    /// Opens the content store and snapshotter under `root` and loads image records.
    pub fn open(
        root: &Path,
        store: Arc<Store>,
        registry_config: &RegistryConfig,
    ) -> Result<ImageService, ImageError> {
        let content = Arc::new(ContentStore::open(&root.join("content"))?);
        let snapshots = Arc::new(Snapshotter::open(&root.join("snapshots"))?);
        let mut namespaces: HashMap<String, Index> = HashMap::new();
        for record in store.list::<Image>(None, Kind::Image)? {
            namespaces
                .entry(record.namespace)
                .or_default()
                .insert(record.value);
        }
        let platform = match &registry_config.platform {
            Some(platform) => Platform::parse(platform).map_err(RegistryError::from)?,
            None => Platform::host(),
        };
        Ok(ImageService {
            store,
            content,
            snapshots,
            registry: RegistryClient::new(registry_config),
            platform,
            max_concurrent_downloads: registry_config.max_concurrent_downloads.max(1),
            max_layers_per_image: registry_config.max_layers_per_image,
            unpack_limits: unpack::Limits {
                max_entries: registry_config.max_entries_per_layer,
                max_bytes: registry_config.max_unpacked_bytes_per_layer,
                max_image_bytes: registry_config.max_unpacked_bytes_per_image,
                image_bytes: Default::default(),
            },
            namespaces: RwLock::new(namespaces),
            leases: Leases::default(),
            holds: std::sync::Mutex::new(HashMap::new()),
            events: Arc::new(EventBus::default()),
            records: tokio::sync::Mutex::new(()),
            metrics: metrics::ImageMetrics::new(),
        })
    }

    /// The image service's metrics, for the engine's registry.
    pub fn metric_collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        self.metrics.collectors()
    }

    /// Announces pulls, tags and removals on `events` (the engine's bus).
    pub fn with_events(mut self, events: Arc<EventBus>) -> ImageService {
        self.events = events;
        self
    }

    fn image_event(&self, namespace: &str, action: &str, id: &str, name: &str) {
        self.events.publish(
            Event::new(namespace, EventKind::Image, action, id).with("name", name.to_string()),
        );
    }

    pub fn snapshots(&self) -> &Snapshotter {
        &self.snapshots
    }

    pub fn content(&self) -> &ContentStore {
        &self.content
    }

    /// Every image of `namespace`, from memory.
    pub fn list(&self, namespace: &str) -> Vec<Image> {
        let namespaces = self.namespaces.read().unwrap_or_else(|p| p.into_inner());
        let mut images: Vec<Image> = namespaces
            .get(namespace)
            .map(|index| index.by_id.values().cloned().collect())
            .unwrap_or_default();
        images.sort_by(|a, b| a.id.cmp(&b.id));
        images
    }

    /// The images committed on `parent` (by full ID).
    pub fn children(&self, namespace: &str, parent: &str) -> Vec<Image> {
        let namespaces = self.namespaces.read().unwrap_or_else(|p| p.into_inner());
        namespaces
            .get(namespace)
            .map(|index| index.children(parent).cloned().collect())
            .unwrap_or_default()
    }

    /// Finds an image by ID, ID prefix, tag or digest reference, from memory.
    pub fn get(&self, namespace: &str, query: &str) -> Option<Image> {
        let namespaces = self.namespaces.read().unwrap_or_else(|p| p.into_inner());
        namespaces.get(namespace)?.find(query).cloned()
    }

    /// The image's config JSON from the content store.
    pub fn config_json(&self, image: &Image) -> Result<Vec<u8>, ImageError> {
        Ok(self.content.read(&image.id)?)
    }

    /// Pulls `reference` for this host's platform; returns the stored image.
    pub async fn pull(
        &self,
        namespace: &str,
        reference: &str,
        credentials: &Credentials,
    ) -> Result<Image, ImageError> {
        self.pull_with_progress(namespace, reference, credentials, &ProgressSink::none())
            .await
    }

    /// `pull`, reporting each layer's progress to `progress`.
    pub async fn pull_with_progress(
        &self,
        namespace: &str,
        reference: &str,
        credentials: &Credentials,
        progress: &ProgressSink,
    ) -> Result<Image, ImageError> {
        let started = std::time::Instant::now();
        let result = self
            .pull_inner(namespace, reference, credentials, progress)
            .await;
        match &result {
            Ok(_) => {
                self.metrics.pulls.with_label_values(&["success"]).inc();
                self.metrics
                    .pull_seconds
                    .observe(started.elapsed().as_secs_f64());
            }
            Err(error) => {
                use crate::error::HasKind as _;
                self.metrics
                    .pulls
                    .with_label_values(&[error.kind().as_str()])
                    .inc();
            }
        }
        if let Err(error) = &result {
            if error.is_limit() || out_of_space_in_chain(error) {
                // A refused image leaves nothing: the layers it did unpack go too (the
                // pull's lease is gone; other pulls' layers keep theirs). So does one
                // that filled the disk: the space comes back. (Other failures keep
                // what was verified, so a retry resumes.)
                if let Err(gc) = self.gc().await {
                    tracing::warn!(%reference, error = %gc, "cleaning up after a refused pull");
                }
                // A blob commit or an unpack of another layer of this pull that was
                // already running on a blocking thread cannot be cancelled and may land
                // after that collection: collect once more when it has had time to.
                tokio::time::sleep(REFUSED_PULL_SETTLE).await;
                if let Err(gc) = self.gc().await {
                    tracing::warn!(%reference, error = %gc, "cleaning up after a refused pull");
                }
            }
        }
        if let Ok(image) = &result {
            self.image_event(namespace, "pull", reference, &image.id);
        }
        result
    }

    async fn pull_inner(
        &self,
        namespace: &str,
        reference: &str,
        credentials: &Credentials,
        progress: &ProgressSink,
    ) -> Result<Image, ImageError> {
        let reference = ImageReference::parse(reference)?;
        let resolved = self
            .registry
            .resolve(&reference, credentials, &self.platform)
            .await?;
        if resolved.layers.len() > self.max_layers_per_image {
            return Err(ImageError::TooManyLayers {
                reference: reference.to_string(),
                layers: resolved.layers.len(),
                limit: self.max_layers_per_image,
            });
        }
        let layers = layers_of(&resolved)?;
        let limits = unpack::Limits {
            image_bytes: Default::default(),
            ..self.unpack_limits.clone()
        };
        let _lease = self.leases.take(
            layers
                .iter()
                .flat_map(|l| [l.digest.clone(), l.chain_id.clone()])
                .chain([
                    resolved.config_digest.clone(),
                    resolved.manifest_digest.clone(),
                ])
                .collect(),
        );
        progress.report(Progress::Layers(
            layers
                .iter()
                .map(|layer| LayerState {
                    digest: layer.digest.clone(),
                    size: layer.size,
                    present: self.content.exists(&layer.digest)
                        && self.snapshots.exists(&layer.chain_id),
                })
                .collect(),
        ));
        // Collected first: a lazy `map` closure here makes the future not `Send`.
        let fetches: Vec<_> = layers
            .iter()
            .map(|layer| self.ensure_layer(&resolved, layer, credentials, &limits, progress))
            .collect();
        futures_util::stream::iter(fetches)
            .buffer_unordered(self.max_concurrent_downloads)
            .try_collect::<Vec<()>>()
            .await?;
        {
            let content = self.content.clone();
            let blobs = [
                (resolved.config_digest.clone(), resolved.config.clone()),
                (resolved.manifest_digest.clone(), resolved.manifest.clone()),
            ];
            blocking(move || {
                blobs
                    .iter()
                    .try_for_each(|(digest, data)| content.write_blob(digest, data))
            })
            .await?;
        }
        let user = serde_json::from_slice::<serde_json::Value>(&resolved.config)
            .ok()
            .and_then(|config| config["config"]["User"].as_str().map(str::to_string))
            .unwrap_or_default();
        let repo_digest = reference.with_digest(
            resolved
                .index_digest
                .as_deref()
                .unwrap_or(&resolved.manifest_digest),
        );
        let size = layers.iter().map(|l| l.size).sum::<u64>()
            + resolved.config.len() as u64
            + resolved.manifest.len() as u64;
        let pulled = Image {
            id: resolved.config_digest.clone(),
            repo_tags: reference.repo_tag().into_iter().collect(),
            repo_digests: vec![repo_digest.to_string()],
            manifest_digest: resolved.manifest_digest.clone(),
            manifest_media_type: resolved.manifest_media_type.clone(),
            index_digest: resolved.index_digest.clone(),
            layers,
            size,
            user,
            pinned: false,
            parent: None,
        };
        self.record_pulled(namespace, pulled).await
    }

    /// Downloads one layer into the content store while unpacking it into a snapshot;
    /// skips whatever is already there. Concurrent pulls of one layer fetch it once.
    async fn ensure_layer(
        &self,
        resolved: &ResolvedImage,
        layer: &Layer,
        credentials: &Credentials,
        limits: &unpack::Limits,
        progress: &ProgressSink,
    ) -> Result<(), ImageError> {
        // Locks on the blob and on the snapshot: garbage collection takes the same ones
        // before deleting, so what is seen here as present stays present.
        let _locks = self.lock_layer(&layer.digest, &layer.chain_id).await;
        let have_blob = self.content.exists(&layer.digest);
        let have_snapshot = self.snapshots.exists(&layer.chain_id);
        if have_blob && have_snapshot {
            progress.done(&layer.digest, Outcome::Exists);
            return Ok(());
        }
        let digest = || layer.digest.clone();
        let compression = Compression::from_media_type(&layer.media_type).map_err(|source| {
            ImageError::Unpack {
                digest: layer.digest.clone(),
                source,
            }
        })?;
        if have_blob {
            // Only the snapshot is missing (removed, or a crash before its commit):
            // unpack from the stored blob.
            progress.report(Progress::Extracting { digest: digest() });
            let pending = self.snapshots.prepare()?;
            let blob = self.content.path(&layer.digest)?;
            let file = std::fs::File::open(&blob)
                .map_err(|source| ContentError::Io { path: blob, source })?;
            let dir = pending.path().to_path_buf();
            let limits = limits.clone();
            let timer = self.metrics.unpack_seconds.clone();
            let stats = join_unpack(
                tokio::task::spawn_blocking(move || {
                    timed_unpack(&timer, || {
                        unpack::apply_layer_limited(
                            std::io::BufReader::new(file),
                            compression,
                            &dir,
                            limits,
                        )
                    })
                }),
                &layer.digest,
            )
            .await?;
            check_diff_id(layer, &stats.diff_id)?;
            self.commit_snapshot(pending, &layer.chain_id).await?;
            progress.done(&layer.digest, Outcome::Pulled);
            return Ok(());
        }

        // Download into the content store; unless the snapshot exists, feed the same
        // bytes to an unpacker on a blocking thread as they arrive.
        let pending = if have_snapshot {
            None
        } else {
            Some(self.snapshots.prepare()?)
        };
        let (chunks_tx, chunks_rx) = tokio::sync::mpsc::channel::<Bytes>(32);
        let unpacker = pending.as_ref().map(|pending| {
            let dir = pending.path().to_path_buf();
            let limits = limits.clone();
            let timer = self.metrics.unpack_seconds.clone();
            tokio::task::spawn_blocking(move || {
                timed_unpack(&timer, || {
                    unpack::apply_layer_limited(
                        ChannelReader::new(chunks_rx),
                        compression,
                        &dir,
                        limits,
                    )
                })
            })
        });
        let mut ingest = self.content.ingest(&layer.digest, Some(layer.size))?;
        let unpacking = unpacker.is_some();
        let downloaded = async {
            let mut stream = self
                .registry
                .fetch_blob(resolved, &layer.digest, layer.size, credentials)
                .await?;
            let mut transferred = progress.transfer(&layer.digest, layer.size);
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                ingest.write(&chunk)?;
                transferred.add(chunk.len() as u64);
                self.metrics.pull_bytes.inc_by(chunk.len() as u64);
                if unpacking && chunks_tx.send(chunk).await.is_err() {
                    // The unpacker stopped early: its error is reported below.
                    break;
                }
            }
            Ok::<(), ImageError>(())
        }
        .await;
        drop(chunks_tx);
        if downloaded.is_ok() {
            progress.report(Progress::Verifying { digest: digest() });
            progress.report(Progress::Downloaded { digest: digest() });
            if unpacking {
                progress.report(Progress::Extracting { digest: digest() });
            }
        }
        // Always wait for the unpacker, even when the download failed: the pending
        // snapshot must not be removed while it is still writing into it.
        let unpacked = match unpacker {
            Some(unpacker) => Some(join_unpack(unpacker, &layer.digest).await),
            None => None,
        };
        downloaded?;
        if let Some(unpacked) = unpacked {
            check_diff_id(layer, &unpacked?.diff_id)?;
        }
        // Verifies size and digest: a mismatch stores nothing, and the pending
        // snapshot is dropped with it.
        blocking(move || ingest.commit()).await?;
        if let Some(pending) = pending {
            self.commit_snapshot(pending, &layer.chain_id).await?;
        }
        progress.done(&layer.digest, Outcome::Pulled);
        Ok(())
    }

    /// Locks a layer's blob and its snapshot chain (garbage collection takes the same
    /// locks). An uncompressed base layer's blob digest is its chain ID: one lock then,
    /// as the digest locks are not reentrant.
    async fn lock_layer(
        &self,
        digest: &str,
        chain_id: &str,
    ) -> (
        tokio::sync::OwnedMutexGuard<()>,
        Option<tokio::sync::OwnedMutexGuard<()>>,
    ) {
        let blob = self.content.lock_digest(digest).await;
        let chain = if chain_id == digest {
            None
        } else {
            Some(self.content.lock_digest(chain_id).await)
        };
        (blob, chain)
    }

    /// Commits on the blocking pool: a commit runs syncfs, which can take a while on a
    /// busy disk and must not stall the async workers serving other calls.
    async fn commit_snapshot(
        &self,
        pending: snapshot::PendingSnapshot,
        chain_id: &str,
    ) -> Result<(), ImageError> {
        let snapshots = self.snapshots.clone();
        let chain_id = chain_id.to_string();
        blocking(move || snapshots.commit(pending, &chain_id)).await?;
        Ok(())
    }

    /// Records a pulled image: its references move to it from any image that had them,
    /// and an image left with no reference is dropped (as containerd's CRI does), except
    /// where untagged images are kept ([`keeps_untagged`]).
    async fn record_pulled(&self, namespace: &str, pulled: Image) -> Result<Image, ImageError> {
        let _records = self.records.lock().await;
        let mut updated: Vec<Image> = Vec::new();
        let mut dropped: Vec<String> = Vec::new();
        let image = {
            let namespaces = self.namespaces.read().unwrap_or_else(|p| p.into_inner());
            let index = namespaces.get(namespace);
            let mut image = index
                .and_then(|index| index.by_id.get(&pulled.id).cloned())
                .unwrap_or_else(|| pulled.clone());
            merge_refs(&mut image.repo_tags, &pulled.repo_tags);
            merge_refs(&mut image.repo_digests, &pulled.repo_digests);
            if let Some(index) = index {
                for other in index.by_id.values().filter(|other| other.id != pulled.id) {
                    let mut other = other.clone();
                    let before = other.repo_tags.len();
                    other
                        .repo_tags
                        .retain(|tag| !pulled.repo_tags.contains(tag));
                    if other.repo_tags.len() != before {
                        if other.references().next().is_none() && !keeps_untagged(namespace) {
                            dropped.push(other.id.clone());
                        } else {
                            updated.push(other);
                        }
                    }
                }
            }
            image
        };
        let is_new = self.get(namespace, &image.id).is_none();
        if !dropped.is_empty() {
            self.store.set_meta(GC_PENDING, "1")?;
        }
        self.store.update(|tx| -> Result<(), StoreError> {
            if is_new {
                tx.insert(namespace, Kind::Image, &image.id, None, &image)?;
            } else {
                tx.replace(namespace, Kind::Image, &image.id, &image)?;
            }
            for other in &updated {
                tx.replace(namespace, Kind::Image, &other.id, other)?;
            }
            for id in &dropped {
                tx.delete(namespace, Kind::Image, id)?;
            }
            Ok(())
        })?;
        let mut namespaces = self.namespaces.write().unwrap_or_else(|p| p.into_inner());
        let index = namespaces.entry(namespace.to_string()).or_default();
        for id in dropped.iter().chain(updated.iter().map(|i| &i.id)) {
            index.remove(id);
        }
        for other in updated {
            index.insert(other);
        }
        index.remove(&image.id);
        index.insert(image.clone());
        Ok(image)
    }

    /// Checks `credentials` against `registry` (`docker login`); stores nothing (the
    /// client keeps credentials and sends them with each pull or push).
    pub async fn login(&self, registry: &str, credentials: &Credentials) -> Result<(), ImageError> {
        Ok(self.registry.login(registry, credentials).await?)
    }

    /// Pushes a stored image to `target` (a tag or digest reference). Blobs come from
    /// the content store; ones the registry has are skipped, and ones under another
    /// name of this image on the same registry are mounted instead of uploaded.
    /// Returns the manifest digest, which equals the stored one: a pushed image pulls
    /// back identical.
    pub async fn push(
        &self,
        namespace: &str,
        query: &str,
        target: &str,
        credentials: &Credentials,
    ) -> Result<String, ImageError> {
        self.push_with_progress(namespace, query, target, credentials, &ProgressSink::none())
            .await
    }

    /// `push`, reporting each blob's progress to `progress`.
    pub async fn push_with_progress(
        &self,
        namespace: &str,
        query: &str,
        target: &str,
        credentials: &Credentials,
        progress: &ProgressSink,
    ) -> Result<String, ImageError> {
        let image = self
            .get(namespace, query)
            .ok_or_else(|| ImageError::NotFound(query.to_string()))?;
        let target = ImageReference::parse(target)?;
        let manifest = self.content.read(&image.manifest_digest)?;
        let blob = |digest: &str, size: u64| -> Result<PushBlob, ImageError> {
            Ok(PushBlob {
                digest: digest.to_string(),
                size,
                path: self.content.path(digest)?,
            })
        };
        let config_size = self
            .content
            .size(&image.id)
            .ok_or_else(|| ContentError::NotFound(image.id.clone()))?;
        let mut blobs = vec![blob(&image.id, config_size)?];
        for layer in &image.layers {
            blobs.push(blob(&layer.digest, layer.size)?);
        }
        // Repositories that have some of these layers: this image's other names, and
        // those of images that share a layer with it (a committed or built image's
        // base), as dockerd mounts from a layer's known sources.
        let digests: HashSet<&str> = image.layers.iter().map(|l| l.digest.as_str()).collect();
        let sharing: Vec<Image> = self
            .list(namespace)
            .into_iter()
            .filter(|other| {
                other.id == image.id
                    || other
                        .layers
                        .iter()
                        .any(|l| digests.contains(l.digest.as_str()))
            })
            .collect();
        let mount_from: Vec<String> = sharing
            .iter()
            .flat_map(|other| other.references())
            .filter_map(|r| ImageReference::parse(r).ok())
            .filter(|r| r.registry() == target.registry() && r.repository() != target.repository())
            .map(|r| r.repository().to_string())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let digest = self
            .registry
            .push_with_progress(
                &target,
                credentials,
                &manifest,
                &image.manifest_media_type,
                &blobs,
                &mount_from,
                progress,
            )
            .await?;
        tracing::info!(image = %image.id, target = %target, %digest, "pushed image");
        self.image_event(namespace, "push", &target.to_string(), &image.id);
        Ok(digest)
    }

    /// Removes an image reference. A tag or digest reference of an image that has
    /// others only untags; an ID (or the last reference) removes the image. Returns
    /// false if nothing matched (removal is idempotent, as in containerd's CRI).
    /// Blobs and snapshots no image needs any more are garbage-collected.
    pub async fn remove(&self, namespace: &str, query: &str) -> Result<bool, ImageError> {
        Ok(self.remove_pruning(namespace, query, None).await?.is_some())
    }

    /// [`Self::remove`], and when the image goes and `prune_parents` is given,
    /// dockerd's parent pruning: each parent up the chain that is then untagged, has no
    /// other child and is not `in_use` (by a container) goes too (a build's steps). All
    /// in one store transaction, so a crash removes the whole chain or none of it.
    /// Returns None if nothing matched, else the IDs of the parents removed.
    pub async fn remove_pruning(
        &self,
        namespace: &str,
        query: &str,
        prune_parents: Option<&(dyn Fn(&str) -> bool + Sync)>,
    ) -> Result<Option<Vec<String>>, ImageError> {
        let mut pruned = Vec::new();
        {
            let _records = self.records.lock().await;
            let Some(image) = self.get(namespace, query) else {
                return Ok(None);
            };
            let normalized = ImageReference::parse(query).ok().map(|r| r.to_string());
            let mut remaining = image.clone();
            let by_reference = normalized
                .as_ref()
                .filter(|r| image.references().any(|own| own == *r));
            if let Some(reference) = by_reference {
                remaining.repo_tags.retain(|t| t != reference);
                remaining.repo_digests.retain(|d| d != reference);
            } else {
                remaining.repo_tags.clear();
                remaining.repo_digests.clear();
            }
            // A tag removed from an image that still has other tags only untags; the
            // digest references alone do not keep an image whose last tag is removed.
            // An image with children (a build's steps) stays as their untagged parent,
            // as dockerd keeps it.
            let has_children = {
                let namespaces = self.namespaces.read().unwrap_or_else(|p| p.into_inner());
                namespaces
                    .get(namespace)
                    .is_some_and(|index| index.children(&image.id).next().is_some())
            };
            let keep = !remaining.repo_tags.is_empty() || has_children;
            if let (false, Some(in_use)) = (keep, prune_parents) {
                let namespaces = self.namespaces.read().unwrap_or_else(|p| p.into_inner());
                if let Some(index) = namespaces.get(namespace) {
                    let mut gone = vec![image.id.clone()];
                    let mut next = image.parent.clone();
                    while let Some(parent) = next.take().and_then(|id| index.by_id.get(&id)) {
                        let prunable = parent.repo_tags.is_empty()
                            && parent.repo_digests.is_empty()
                            && !in_use(&parent.id)
                            && index.children(&parent.id).all(|c| gone.contains(&c.id));
                        if !prunable {
                            break;
                        }
                        gone.push(parent.id.clone());
                        pruned.push(parent.id.clone());
                        next = parent.parent.clone();
                    }
                }
            }
            if !keep || !pruned.is_empty() {
                self.store.set_meta(GC_PENDING, "1")?;
            }
            self.store.update(|tx| {
                if keep {
                    tx.replace(namespace, Kind::Image, &image.id, &remaining)?;
                } else {
                    tx.delete(namespace, Kind::Image, &image.id)?;
                }
                for parent in &pruned {
                    tx.delete(namespace, Kind::Image, parent)?;
                }
                Ok::<_, ImageError>(())
            })?;
            let mut namespaces = self.namespaces.write().unwrap_or_else(|p| p.into_inner());
            if let Some(index) = namespaces.get_mut(namespace) {
                index.remove(&image.id);
                if keep {
                    index.insert(remaining);
                }
                for parent in &pruned {
                    index.remove(parent);
                }
            }
            drop(namespaces);
            self.image_event(namespace, "untag", &image.id, query);
            if !keep {
                self.image_event(namespace, "delete", &image.id, query);
            }
            for parent in &pruned {
                self.image_event(namespace, "delete", parent, parent);
            }
        }
        self.gc().await?;
        Ok(Some(pruned))
    }

    /// Tags the image `query` names as `reference` (normalized as Docker does; a tag,
    /// not a digest). The tag moves off any other image that had it; an image left
    /// with no tag keeps its digests and is not removed (as `docker tag` leaves it).
    pub async fn tag(
        &self,
        namespace: &str,
        query: &str,
        reference: &str,
    ) -> Result<Image, ImageError> {
        let parsed = ImageReference::parse(reference)?;
        let tag = parsed
            .repo_tag()
            .filter(|_| parsed.digest().is_none())
            .ok_or_else(|| ImageError::InvalidImage {
                reference: bounded(reference, MAX_ECHO),
                message: "a tag must name a repository and a tag, not a digest".into(),
            })?;
        let _records = self.records.lock().await;
        let image = self
            .get(namespace, query)
            .ok_or_else(|| ImageError::NotFound(bounded(query, MAX_ECHO)))?;
        if image.repo_tags.contains(&tag) {
            return Ok(image);
        }
        let previous = self
            .get(namespace, &tag)
            .filter(|other| other.id != image.id)
            .map(|mut other| {
                other.repo_tags.retain(|t| t != &tag);
                other
            });
        let mut tagged = image.clone();
        tagged.repo_tags.push(tag);
        self.store.update(|tx| {
            if let Some(other) = &previous {
                tx.replace(namespace, Kind::Image, &other.id, other)?;
            }
            tx.replace(namespace, Kind::Image, &tagged.id, &tagged)
        })?;
        let mut namespaces = self.namespaces.write().unwrap_or_else(|p| p.into_inner());
        let index = namespaces.entry(namespace.to_string()).or_default();
        if let Some(other) = previous {
            index.remove(&other.id);
            index.insert(other);
        }
        index.remove(&tagged.id);
        index.insert(tagged.clone());
        drop(namespaces);
        self.image_event(namespace, "tag", &tagged.id, reference);
        Ok(tagged)
    }

    /// Keeps `chain_ids` from GC for container `holder` until [`Self::release`].
    pub fn hold(&self, holder: &str, chain_ids: Vec<String>) {
        let mut holds = self.holds.lock().unwrap_or_else(|p| p.into_inner());
        holds.insert(holder.to_string(), chain_ids);
    }

    /// Drops `holder`'s hold; returns whether some released chain is no longer part of
    /// any image (then a GC would free it).
    pub fn release(&self, holder: &str) -> bool {
        let released = {
            let mut holds = self.holds.lock().unwrap_or_else(|p| p.into_inner());
            holds.remove(holder).unwrap_or_default()
        };
        let namespaces = self.namespaces.read().unwrap_or_else(|p| p.into_inner());
        released.iter().any(|chain| {
            !namespaces
                .values()
                .flat_map(|index| index.by_id.values())
                .any(|image| image.layers.iter().any(|l| &l.chain_id == chain))
        })
    }

    /// Deletes blobs and snapshots that no image (in any namespace), no container and
    /// no in-flight pull references.
    pub async fn gc(&self) -> Result<GcStats, ImageError> {
        let _records = self.records.lock().await;
        // Removals mark themselves under the records lock, which this collection
        // holds to its end: it collects every removal marked before it.
        let pending = self.gc_pending();
        let (blobs, chains): (HashSet<String>, HashSet<String>) = {
            let namespaces = self.namespaces.read().unwrap_or_else(|p| p.into_inner());
            let images = namespaces.values().flat_map(|index| index.by_id.values());
            let mut blobs = HashSet::new();
            let mut chains = HashSet::new();
            for image in images {
                blobs.extend(image.blobs().cloned());
                chains.extend(image.chain_ids());
            }
            let holds = self.holds.lock().unwrap_or_else(|p| p.into_inner());
            chains.extend(holds.values().flatten().cloned());
            (blobs, chains)
        };
        let mut stats = GcStats::default();
        for (digest, _) in self.content.list()? {
            if !blobs.contains(&digest) && !self.leases.contains(&digest) {
                let _writer = self.content.lock_digest(&digest).await;
                let content = self.content.clone();
                if !self.leases.contains(&digest)
                    && blocking(move || content.delete(&digest)).await?
                {
                    stats.blobs_removed += 1;
                }
            }
        }
        for chain_id in self.snapshots.list()? {
            if !chains.contains(&chain_id) && !self.leases.contains(&chain_id) {
                let _writer = self.content.lock_digest(&chain_id).await;
                if !self.leases.contains(&chain_id) {
                    // Removing a layer deletes a whole tree: off the async workers.
                    let snapshots = self.snapshots.clone();
                    blocking(move || snapshots.remove(&chain_id)).await?;
                    stats.snapshots_removed += 1;
                }
            }
        }
        if stats != GcStats::default() {
            tracing::info!(
                blobs = stats.blobs_removed,
                snapshots = stats.snapshots_removed,
                "image garbage collection"
            );
        }
        if pending {
            self.store.set_meta(GC_PENDING, "0")?;
        }
        Ok(stats)
    }

    /// Whether an image was removed and no garbage collection completed since (a crash
    /// in between left data that nothing references: the next start collects it).
    /// Only then: a start must keep the verified blobs of a pull a crash cut, so that
    /// its retry resumes.
    pub fn gc_pending(&self) -> bool {
        self.store
            .meta(GC_PENDING)
            .ok()
            .flatten()
            .is_some_and(|v| v == "1")
    }

    /// Bytes and inodes used by images on disk (content store and snapshots).
    pub fn usage(&self) -> Result<(u64, u64), ImageError> {
        let (content_bytes, content_inodes) = self.content.usage()?;
        let (snapshot_bytes, snapshot_inodes) = self.snapshots.usage()?;
        Ok((
            content_bytes + snapshot_bytes,
            content_inodes + snapshot_inodes,
        ))
    }
}

fn merge_refs(refs: &mut Vec<String>, new: &[String]) {
    let mut set: BTreeSet<String> = refs.drain(..).collect();
    set.extend(new.iter().cloned());
    refs.extend(set);
}

/// Pairs the manifest's layers with the config's diff_ids and computes chain IDs.
fn layers_of(resolved: &ResolvedImage) -> Result<Vec<Layer>, ImageError> {
    let invalid = |message: String| ImageError::InvalidImage {
        reference: resolved.reference.to_string(),
        message,
    };
    let config: serde_json::Value = serde_json::from_slice(&resolved.config).map_err(|err| {
        invalid(format!(
            "config {} is not JSON: {err}",
            resolved.config_digest
        ))
    })?;
    let diff_ids: Vec<String> = config["rootfs"]["diff_ids"]
        .as_array()
        .ok_or_else(|| invalid("config has no rootfs.diff_ids".to_string()))?
        .iter()
        .map(|d| d.as_str().map(str::to_string))
        .collect::<Option<_>>()
        .ok_or_else(|| invalid("config rootfs.diff_ids holds a non-string".to_string()))?;
    if diff_ids.len() != resolved.layers.len() {
        return Err(invalid(format!(
            "manifest has {} layers but config lists {} diff_ids",
            resolved.layers.len(),
            diff_ids.len()
        )));
    }
    for diff_id in &diff_ids {
        content::digest_hex(diff_id).map_err(|err| invalid(err.to_string()))?;
    }
    let chain_ids = Snapshotter::chain_ids(&diff_ids);
    Ok(resolved
        .layers
        .iter()
        .zip(diff_ids)
        .zip(chain_ids)
        .map(
            |(
                (
                    LayerDescriptor {
                        digest,
                        size,
                        media_type,
                    },
                    diff_id,
                ),
                chain_id,
            )| Layer {
                digest: digest.clone(),
                size: *size,
                media_type: media_type.clone(),
                diff_id,
                chain_id,
            },
        )
        .collect())
}

/// Runs blocking filesystem work on the blocking pool.
/// Whether an image that loses its last reference to another stays, untagged
/// (`<none>:<none>` until pruned): dockerd keeps them, containerd's CRI drops them.
fn keeps_untagged(namespace: &str) -> bool {
    namespace == crate::store::DOCKER_NAMESPACE
}

async fn blocking<T, E>(
    work: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, ImageError>
where
    T: Send + 'static,
    E: Into<ImageError> + Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| ImageError::Task(err.to_string()))?
        .map_err(Into::into)
}

async fn join_unpack(
    task: tokio::task::JoinHandle<Result<unpack::UnpackStats, UnpackError>>,
    digest: &str,
) -> Result<unpack::UnpackStats, ImageError> {
    task.await
        .map_err(|err| ImageError::Task(err.to_string()))?
        .map_err(|source| ImageError::Unpack {
            digest: digest.to_string(),
            source,
        })
}

fn check_diff_id(layer: &Layer, actual: &str) -> Result<(), ImageError> {
    if actual == layer.diff_id {
        Ok(())
    } else {
        Err(ImageError::DiffIdMismatch {
            digest: layer.digest.clone(),
            expected: layer.diff_id.clone(),
            actual: actual.to_string(),
        })
    }
}

/// A blocking `Read` over chunks sent from async code.
struct ChannelReader {
    chunks: tokio::sync::mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl ChannelReader {
    fn new(chunks: tokio::sync::mpsc::Receiver<Bytes>) -> ChannelReader {
        ChannelReader {
            chunks,
            current: Bytes::new(),
        }
    }
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.chunks.blocking_recv() {
                Some(chunk) => self.current = chunk,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        Ok(n)
    }
}

/// Runs an unpack, observing its time in `histogram` when it succeeds.
fn timed_unpack<T, E>(
    histogram: &prometheus::Histogram,
    unpack: impl FnOnce() -> Result<T, E>,
) -> Result<T, E> {
    let timer = histogram.start_timer();
    let result = unpack();
    if result.is_ok() {
        timer.observe_duration();
    } else {
        timer.stop_and_discard();
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{ErrorKind, HasKind};

    #[test]
    fn a_full_disk_is_resource_exhausted_wherever_the_pull_meets_it() {
        let full = || std::io::Error::from_raw_os_error(28); // ENOSPC
        let unpacking = ImageError::Unpack {
            digest: "sha256:aa".into(),
            source: UnpackError::Apply {
                path: "big".into(),
                op: "writing the file".into(),
                source: full(),
            },
        };
        assert_eq!(unpacking.kind(), ErrorKind::ResourceExhausted);
        assert!(out_of_space_in_chain(&unpacking));
        let storing = ImageError::Content(ContentError::Write {
            digest: "sha256:aa".into(),
            path: "ingest".into(),
            source: full(),
        });
        assert_eq!(storing.kind(), ErrorKind::ResourceExhausted);
        let other = ImageError::Unpack {
            digest: "sha256:aa".into(),
            source: UnpackError::Apply {
                path: "big".into(),
                op: "writing the file".into(),
                source: std::io::Error::from_raw_os_error(5), // EIO
            },
        };
        assert_eq!(other.kind(), ErrorKind::FailedPrecondition);
    }
}
