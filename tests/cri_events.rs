//! GetContainerEvents (kubelet's evented PLEG) with a gRPC client: a container's whole
//! life in order, with its pod's status attached, to two subscribers at once.

mod support;

use std::time::Duration;

use k8s_cri::v1 as cri;
use support::pods::PodEnv;

async fn next_of(
    stream: &mut tonic::Streaming<cri::ContainerEventResponse>,
    id: &str,
) -> cri::ContainerEventResponse {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(20), stream.message())
            .await
            .expect("an event within 20 s")
            .expect("the stream")
            .expect("not ended");
        if event.container_id == id {
            return event;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn container_events_in_order_to_two_subscribers() {
    let mut env = PodEnv::start().await;
    let mut first = env
        .rt
        .clone()
        .get_container_events(cri::GetEventsRequest {})
        .await
        .expect("GetContainerEvents")
        .into_inner();
    let mut second = env
        .rt
        .clone()
        .get_container_events(cri::GetEventsRequest {})
        .await
        .expect("GetContainerEvents")
        .into_inner();
    let pod = env.pod_config("events");
    let pod_id = env.run_pod(&pod).await;
    let config = env.container_config("main", &["sleep", "600"]);
    let id = env.run(&pod_id, &pod, &config).await;
    env.stop_container(&id, 0).await;
    env.remove_container(&id).await;
    use cri::ContainerEventType as T;
    for stream in [&mut first, &mut second] {
        let mut kinds = Vec::new();
        for _ in 0..4 {
            let event = next_of(stream, &id).await;
            kinds.push(T::try_from(event.container_event_type).expect("a known type"));
            assert!(event.created_at > 0);
            if kinds.len() < 4 {
                let status = event.pod_sandbox_status.as_ref().expect("the pod's status");
                assert_eq!(status.id, pod_id);
                assert!(
                    event.containers_statuses.iter().any(|c| c.id == id),
                    "{:?}",
                    event.containers_statuses
                );
            }
        }
        assert_eq!(
            kinds,
            [
                T::ContainerCreatedEvent,
                T::ContainerStartedEvent,
                T::ContainerStoppedEvent,
                T::ContainerDeletedEvent
            ]
        );
    }
    env.remove_pod(&pod_id).await;
}
