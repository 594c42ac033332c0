//! GetContainerEvents: kubelet's evented PLEG. A server stream of the `k8s.io`
//! namespace's container events from the engine's event bus (create, start, die,
//! destroy become CREATED, STARTED, STOPPED, DELETED), each with its pod sandbox's
//! status and the statuses of the pod's containers attached, as containerd sends them.
//!
//! Several subscribers each get every event. A subscriber that falls behind the bus's
//! buffer (256 events) loses the oldest ones, logged, and never blocks the runtime;
//! kubelet's evented PLEG relists when it notices, as it does with containerd.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_cri::v1 as cri;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tonic::Status;

use super::{container, pod_sandbox, CriServer, NAMESPACE};
use crate::events::{Event, EventKind};

/// Responses queued for one subscriber's gRPC stream.
const STREAM_QUEUE: usize = 64;

fn event_type(action: &str) -> Option<cri::ContainerEventType> {
    Some(match action {
        "create" => cri::ContainerEventType::ContainerCreatedEvent,
        "start" => cri::ContainerEventType::ContainerStartedEvent,
        "die" => cri::ContainerEventType::ContainerStoppedEvent,
        "destroy" => cri::ContainerEventType::ContainerDeletedEvent,
        _ => return None,
    })
}

/// The response for `event`, with the statuses as they are now.
fn response(
    server: &CriServer,
    event: &Event,
    kind: cri::ContainerEventType,
    pods: &mut HashMap<String, String>,
) -> cri::ContainerEventResponse {
    let pod_id = match server.runtime.container(&event.id) {
        Some(c) => {
            pods.insert(event.id.clone(), c.pod_id.clone());
            Some(c.pod_id)
        }
        None => pods.remove(&event.id),
    };
    let pod_sandbox_status = pod_id.as_ref().and_then(|pod_id| {
        pod_sandbox::pod_sandbox_status(
            server,
            cri::PodSandboxStatusRequest {
                pod_sandbox_id: pod_id.clone(),
                verbose: false,
            },
        )
        .ok()
        .and_then(|r| r.status)
    });
    let mut containers = Vec::new();
    if let Some(pod_id) = &pod_id {
        let mut ids = Vec::new();
        server.runtime.for_each_container(NAMESPACE, |c| {
            if &c.pod_id == pod_id {
                ids.push(c.id.clone());
            }
        });
        for id in ids {
            let status = container::container_status(
                server,
                cri::ContainerStatusRequest {
                    container_id: id,
                    verbose: false,
                },
            );
            if let Some(status) = status.ok().and_then(|r| r.status) {
                containers.push(status);
            }
        }
    }
    cri::ContainerEventResponse {
        container_id: event.id.clone(),
        container_event_type: kind as i32,
        created_at: event.time,
        pod_sandbox_status,
        containers_statuses: containers,
    }
}

pub(super) fn get_container_events(
    server: Arc<CriServer>,
) -> mpsc::Receiver<Result<cri::ContainerEventResponse, Status>> {
    let (tx, rx) = mpsc::channel(STREAM_QUEUE);
    // Only what happens from now on (the replayed past is for Docker's `since`).
    let (_past, mut events) = server.events.subscribe();
    tokio::spawn(async move {
        let mut pods = HashMap::new();
        loop {
            let event = match events.recv().await {
                Ok(event) => event,
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(
                        missed,
                        "GetContainerEvents: a subscriber fell behind; events dropped"
                    );
                    continue;
                }
                Err(RecvError::Closed) => return,
            };
            if event.namespace != NAMESPACE || event.kind != EventKind::Container {
                continue;
            }
            let Some(kind) = event_type(&event.action) else {
                continue;
            };
            let response = response(&server, &event, kind, &mut pods);
            // The subscriber is gone: so is this task.
            if tx.send(Ok(response)).await.is_err() {
                return;
            }
        }
    });
    rx
}
