//! The Kubernetes CRI front-end: tonic services for `runtime.v1.RuntimeService` and
//! `runtime.v1.ImageService`. Handlers translate CRI messages into core calls and core
//! errors into `tonic::Status` (in `status.rs`, the one place that mapping lives).
//!
//! The code for an RPC is found by its name, one file per group (as CRI-O's `server/`):
//! - `runtime_service.rs`, `image_service.rs`: the tonic service impls, which only
//!   dispatch each RPC to its handler (and answer UNIMPLEMENTED for those not done);
//! - `pod_sandbox.rs`: Run/Stop/Remove/Status/List PodSandbox;
//! - `container.rs`: Create/Start/Stop/Remove/List/Status Container,
//!   UpdateContainerResources, ReopenContainerLog;
//! - `exec.rs`: ExecSync;
//! - `runtime_info.rs`: Version, Status, RuntimeConfig;
//! - `image.rs`: List/Status/Pull/Remove Image, ImageFsInfo;
//! - `convert.rs`: CRI messages to the core's types (`runtime::model`) and back;
//! - `records.rs`: the CRI's extension of pod and container records (the request as
//!   kubelet sent it) and the upgrade of records stored before the core had its types;
//! - `status.rs`: core error kinds to gRPC codes; `client.rs`: a channel to a CRI socket.

/// Implements a CRI service trait from its handwritten methods, answering every RPC
/// listed under `pending` with UNIMPLEMENTED and a message naming it, until its issue
/// lands. (One macro instead of a dozen identical method bodies.)
macro_rules! cri_service {
    (
        impl $trait:path as $service:literal for $ty:ty;
        pending { $($method:ident($req:ident) -> $resp:ident;)* }
        $($implemented:tt)*
    ) => {
        #[tonic::async_trait]
        impl $trait for $ty {
            $($implemented)*
            $(
                async fn $method(
                    &self,
                    _request: tonic::Request<k8s_cri::v1::$req>,
                ) -> Result<tonic::Response<k8s_cri::v1::$resp>, tonic::Status> {
                    Err($crate::cri::status::not_implemented(
                        $service,
                        stringify!($req).trim_end_matches("Request"),
                    ))
                }
            )*
        }
    };
}

mod bandwidth;
mod client;
mod container;
mod convert;
mod events;
mod exec;
mod image;
mod image_service;
mod metrics;
mod pod_sandbox;
mod records;
mod runtime_info;
mod runtime_service;
mod stats;
mod status;

use std::collections::HashMap;
use std::sync::Arc;

use k8s_cri::v1::image_service_server::ImageServiceServer;
use k8s_cri::v1::runtime_service_server::RuntimeServiceServer;

use crate::engine::Engine;

pub use client::{connect, DaemonCondition, DaemonStatus, DaemonVersion};
/// The calls the `wharf` CLI makes.
pub mod cli_calls {
    pub use super::client::{status, version};
}
pub use records::{upgrade_legacy_records, UpgradeError};

/// The name reported by `Version`.
pub const RUNTIME_NAME: &str = "wharf";
/// The object namespace of everything made through the CRI (containerd's name for it):
/// CRI calls see only its objects, and the Docker API will have its own.
pub const NAMESPACE: &str = crate::store::CRI_NAMESPACE;
/// The CRI API version wharf serves.
pub const RUNTIME_API_VERSION: &str = "v1";

/// What the CRI handlers share: the engine (its services are reached through it, e.g.
/// `server.runtime`).
#[derive(Debug)]
pub struct CriServer {
    engine: Arc<Engine>,
    /// The previous CPU sample of each container and pod, for nano-cores.
    cpu_samples: stats::CpuSamples,
    /// Where Exec, Attach and PortForward URLs lead.
    streaming: Arc<crate::streaming::StreamingServer>,
    /// Decoded list fields of pods and containers (ListPodSandbox, ListContainers).
    pod_fields: records::ListFieldCache<records::PodListFields>,
    container_fields: records::ListFieldCache<records::ContainerListFields>,
}

impl CriServer {
    pub fn new(
        engine: Arc<Engine>,
        streaming: Arc<crate::streaming::StreamingServer>,
    ) -> Arc<CriServer> {
        Arc::new(CriServer {
            engine,
            cpu_samples: Default::default(),
            streaming,
            pod_fields: Default::default(),
            container_fields: Default::default(),
        })
    }
}

impl std::ops::Deref for CriServer {
    type Target = Engine;

    fn deref(&self) -> &Engine {
        &self.engine
    }
}

/// Both CRI services, ready to add to a tonic router.
pub fn services(
    server: Arc<CriServer>,
) -> (
    RuntimeServiceServer<runtime_service::Runtime>,
    ImageServiceServer<image_service::Images>,
) {
    (
        RuntimeServiceServer::new(runtime_service::Runtime(server.clone())),
        ImageServiceServer::new(image_service::Images(server)),
    )
}

/// What the CRI front end needs done on the store before the runtime loads it (see
/// [`crate::engine::StorePreparation`]).
pub fn prepare_store(store: &crate::store::Store) -> Result<(), String> {
    upgrade_legacy_records(store)
        .map(drop)
        .map_err(|err| err.to_string())
}

/// Whether `labels` has every key-value pair of a List filter's `label_selector`.
fn labels_match(labels: &HashMap<String, String>, selector: &HashMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// `items` in the order of their keys (`keys[n]` = (key, index in `items`), equal keys
/// in index order), each item moved twice. A sort of the items themselves (a few
/// hundred bytes each) moved each n log n times: the largest cost of a list of 500 pods.
fn ordered_by_key<T>(items: Vec<T>, mut keys: Vec<(i64, usize)>) -> Vec<T> {
    keys.sort_unstable();
    let mut slots: Vec<Option<T>> = items.into_iter().map(Some).collect();
    keys.into_iter()
        .filter_map(|(_, index)| slots.get_mut(index).and_then(Option::take))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::ordered_by_key;

    #[test]
    fn items_come_in_key_order_and_equal_keys_in_list_order() {
        let items = vec!["c", "a1", "b", "a2"];
        let keys = vec![(3, 0), (1, 1), (2, 2), (1, 3)];
        assert_eq!(ordered_by_key(items, keys), vec!["a1", "a2", "b", "c"]);
        assert!(ordered_by_key(Vec::<u8>::new(), Vec::new()).is_empty());
    }
}
