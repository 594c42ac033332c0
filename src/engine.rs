//! The engine: everything the front ends share, built once by the daemon. The CRI
//! server, the Docker API, the streaming and the metrics listeners each hold the
//! same `Arc<Engine>` and call its core services; none of them owns state of its own.

use std::sync::Arc;

use crate::config::Config;
use crate::events::EventBus;
use crate::image::{ImageError, ImageService};
use crate::metrics::{Metrics, MetricsError};
use crate::runtime::{Runtime, RuntimeError};
use crate::store::{Store, StoreError};
use crate::volume::{VolumeError, VolumeService};

/// The core services behind every front end.
#[derive(Debug)]
pub struct Engine {
    pub config: Arc<Config>,
    /// Metadata of every object namespace.
    pub store: Arc<Store>,
    /// Images: pulls, the content store, snapshots.
    pub images: Arc<ImageService>,
    /// Pods and containers, with their networks.
    pub runtime: Arc<Runtime>,
    /// Named and anonymous volumes (the Docker API's).
    pub volumes: Arc<VolumeService>,
    /// What happens to containers and images.
    pub events: Arc<EventBus>,
    /// The Prometheus registry of all of the above, and the front ends' call metrics.
    pub metrics: Arc<Metrics>,
}

/// Why the engine could not be built.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("opening the volumes: {0}")]
    Volume(#[from] VolumeError),
    #[error("recovering pods and containers: {0}")]
    Runtime(#[from] RuntimeError),
    #[error("preparing the stored records: {0}")]
    Records(String),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
}

/// Work a front end needs done on the store before the runtime loads its records (the
/// CRI's upgrade of records from before the core had its own types).
pub type StorePreparation = fn(&Store) -> Result<(), String>;

impl Engine {
    /// Opens the store, the image service and the runtime (which recovers the pods and
    /// containers of the last run) on `config`'s root and state dirs; `preparations` run
    /// on the store first.
    pub async fn open(
        config: Arc<Config>,
        preparations: &[StorePreparation],
    ) -> Result<Arc<Engine>, EngineError> {
        // Opening blocks briefly (a migration at most); nothing is being served yet.
        let store = Store::open(&config.root)?;
        store.set_meta("last_started_version", env!("CARGO_PKG_VERSION"))?;
        for prepare in preparations {
            prepare(&store).map_err(EngineError::Records)?;
        }
        let store = Arc::new(store);
        let events = Arc::new(EventBus::default());
        let images = Arc::new(
            ImageService::open(&config.root, store.clone(), &config.registry)?
                .with_events(events.clone()),
        );
        let volumes =
            Arc::new(VolumeService::open(&config.root, store.clone())?.with_events(events.clone()));
        let runtime = Runtime::open(
            config.clone(),
            store.clone(),
            images.clone(),
            volumes.clone(),
            events.clone(),
        )
        .await?;
        // Blobs and layers that nothing references any more: a crash between an
        // image's removal and its garbage collection left them. Containers hold
        // their layers from Runtime::open on. (Not otherwise: the verified blobs of a
        // pull a crash cut stay, so that its retry resumes.)
        let collect = if images.gc_pending() {
            images.gc().await
        } else {
            Ok(Default::default())
        };
        match collect {
            Ok(stats) if stats.blobs_removed + stats.snapshots_removed > 0 => tracing::info!(
                blobs = stats.blobs_removed,
                snapshots = stats.snapshots_removed,
                "removed image data nothing references"
            ),
            Ok(_) => {}
            Err(err) => tracing::warn!("image garbage collection at start: {err}"),
        }
        let mut collectors = store.metric_collectors();
        collectors.extend(images.metric_collectors());
        collectors.extend(runtime.metric_collectors());
        let metrics = Arc::new(Metrics::new(collectors, runtime.clone(), events.clone())?);
        Ok(Arc::new(Engine {
            config,
            store,
            images,
            runtime,
            volumes,
            events,
            metrics,
        }))
    }
}
