//! CRI stats (issue 22, first part): ContainerStats, ListContainerStats,
//! PodSandboxStats and ListPodSandboxStats against known load.

mod support;

use std::time::Duration;

use k8s_cri::v1 as cri;
use support::pods::PodEnv;

fn v(value: &Option<cri::UInt64Value>) -> u64 {
    value.as_ref().map_or(0, |v| v.value)
}

/// A container burning one CPU reads about 1e9 nano-cores; one holding 64 MiB (in
/// its /dev/shm, memory charged to it) shows it
/// in its working set; a file written shows in the writable layer; the pod's stats
/// add its containers up; filters select by pod and label; a stopped container has
/// no stats.
#[tokio::test(flavor = "multi_thread")]
async fn stats_of_known_load() {
    let mut env = PodEnv::start().await;
    let pod = env.pod_config("stats");
    let pod_id = env.run_pod(&pod).await;
    let mut burner = env.container_config("burner", &["sh", "-c", "while :; do :; done"]);
    burner.labels.insert("role".into(), "burner".into());
    let burner_id = env.run(&pod_id, &pod, &burner).await;
    let holder = env.container_config(
        "holder",
        &[
            "sh",
            "-c",
            "head -c 1048576 /dev/zero > /written; head -c 67108864 /dev/zero > /dev/shm/held; \
             touch /tmp/held; sleep 600",
        ],
    );
    let holder_id = env.run(&pod_id, &pod, &holder).await;
    support::pods::wait_for_file(
        &env.daemon
            .paths
            .state
            .join("containers")
            .join(&holder_id)
            .join("rootfs/tmp/held"),
        |_| true,
    )
    .await;

    // Two samples a few seconds apart: nano-cores between them.
    let first = env
        .rt
        .container_stats(cri::ContainerStatsRequest {
            container_id: burner_id.clone(),
        })
        .await
        .expect("ContainerStats")
        .into_inner()
        .stats
        .expect("stats");
    assert!(v(&first.cpu.as_ref().expect("cpu").usage_core_nano_seconds) > 0);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let listed = env
        .rt
        .list_container_stats(cri::ListContainerStatsRequest {
            filter: Some(cri::ContainerStatsFilter {
                pod_sandbox_id: pod_id.clone(),
                ..Default::default()
            }),
        })
        .await
        .expect("ListContainerStats")
        .into_inner()
        .stats;
    assert_eq!(listed.len(), 2, "{listed:?}");
    let burner_stats = listed
        .iter()
        .find(|s| s.attributes.as_ref().is_some_and(|a| a.id == burner_id))
        .expect("the burner");
    let nano_cores = v(&burner_stats.cpu.as_ref().expect("cpu").usage_nano_cores);
    assert!(
        (800_000_000..=1_200_000_000).contains(&nano_cores),
        "a busy loop reads {nano_cores} nano-cores, not about 1e9"
    );
    let attributes = burner_stats.attributes.as_ref().expect("attributes");
    assert_eq!(
        attributes.metadata.as_ref().expect("metadata").name,
        "burner"
    );
    assert_eq!(
        attributes.labels.get("role").map(String::as_str),
        Some("burner")
    );

    let holder_stats = listed
        .iter()
        .find(|s| s.attributes.as_ref().is_some_and(|a| a.id == holder_id))
        .expect("the holder");
    let memory = holder_stats.memory.as_ref().expect("memory");
    assert!(
        v(&memory.working_set_bytes) >= 64 << 20,
        "working set {} with 64 MiB held: {memory:?}",
        v(&memory.working_set_bytes)
    );
    assert!(v(&memory.usage_bytes) >= v(&memory.working_set_bytes));
    let layer = holder_stats
        .writable_layer
        .as_ref()
        .expect("writable layer");
    assert!(v(&layer.used_bytes) >= 1 << 20, "{layer:?}");
    assert!(v(&layer.inodes_used) >= 2, "{layer:?}");

    // By label: only the burner.
    let by_label = env
        .rt
        .list_container_stats(cri::ListContainerStatsRequest {
            filter: Some(cri::ContainerStatsFilter {
                label_selector: [("role".to_string(), "burner".to_string())].into(),
                ..Default::default()
            }),
        })
        .await
        .expect("ListContainerStats")
        .into_inner()
        .stats;
    assert_eq!(by_label.len(), 1);

    // The pod: its containers added up.
    let pod_stats = env
        .rt
        .pod_sandbox_stats(cri::PodSandboxStatsRequest {
            pod_sandbox_id: pod_id.clone(),
        })
        .await
        .expect("PodSandboxStats")
        .into_inner()
        .stats
        .expect("stats");
    let linux = pod_stats.linux.as_ref().expect("linux");
    assert_eq!(linux.containers.len(), 2);
    assert!(v(&linux.memory.as_ref().expect("memory").working_set_bytes) >= 64 << 20);
    assert!(v(&linux.process.as_ref().expect("process").process_count) >= 2);
    let listed_pods = env
        .rt
        .list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest {
            filter: Some(cri::PodSandboxStatsFilter {
                id: pod_id.clone(),
                ..Default::default()
            }),
        })
        .await
        .expect("ListPodSandboxStats")
        .into_inner()
        .stats;
    assert_eq!(listed_pods.len(), 1);

    env.stop_container(&burner_id, 0).await;
    let err = env
        .rt
        .container_stats(cri::ContainerStatsRequest {
            container_id: burner_id.clone(),
        })
        .await
        .expect_err("a stopped container");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    let err = env
        .rt
        .container_stats(cri::ContainerStatsRequest {
            container_id: "no-such".into(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    env.remove_pod(&pod_id).await;
}

/// ListMetricDescriptors and ListPodSandboxMetrics through crictl (`metricdescs`,
/// `metricsp`, a Go client): cAdvisor's families with their label keys; a busy
/// container's CPU seconds, a container holding 64 MiB in its working set, and the
/// pod's eth0 counters in the pod's own metrics.
#[tokio::test(flavor = "multi_thread")]
async fn cadvisor_metrics_through_crictl() {
    use support::go_tools::crictl_ok;
    // Declared first: removed after the daemon is gone.
    let net = support::net::TestBridge::new(7);
    let mut env = PodEnv::start_with_config(&net.config()).await;
    let socket = env.daemon.paths.cri_socket.clone();
    let descs: serde_json::Value =
        serde_json::from_str(&crictl_ok(&socket, &["metricdescs"])).expect("metricdescs JSON");
    let descriptors = descs["descriptors"].as_array().expect("descriptors");
    let find = |name: &str| {
        descriptors
            .iter()
            .find(|d| d["name"] == name)
            .unwrap_or_else(|| panic!("no descriptor {name}: {descs}"))
            .clone()
    };
    assert_eq!(
        find("container_cpu_usage_seconds_total")["labelKeys"],
        serde_json::json!(["id", "name", "image", "cpu"])
    );
    assert_eq!(
        find("container_network_receive_bytes_total")["labelKeys"],
        serde_json::json!(["id", "name", "image", "interface"])
    );
    find("container_memory_working_set_bytes");

    let pod = env.pod_config("metrics");
    let pod_id = env.run_pod(&pod).await;
    let burner = env.container_config("burner", &["sh", "-c", "while :; do :; done"]);
    let burner_id = env.run(&pod_id, &pod, &burner).await;
    let holder = env.container_config(
        "holder",
        &[
            "sh",
            "-c",
            "head -c 67108864 /dev/zero > /dev/shm/held; sleep 600",
        ],
    );
    let holder_id = env.run(&pod_id, &pod, &holder).await;
    // Over a second of CPU (whole seconds in the CRI's integers).
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let listed: serde_json::Value =
        serde_json::from_str(&crictl_ok(&socket, &["metricsp"])).expect("metricsp JSON");
    let pods = listed["podMetrics"].as_array().expect("podMetrics");
    let ours = pods
        .iter()
        .find(|p| p["podSandboxId"] == pod_id.as_str())
        .unwrap_or_else(|| panic!("no metrics of {pod_id}: {listed}"));
    let value_of = |metrics: &serde_json::Value, name: &str| -> u64 {
        metrics
            .as_array()
            .and_then(|m| m.iter().find(|m| m["name"] == name))
            .and_then(|m| {
                m["value"]["value"]
                    .as_str()
                    .map(str::to_string)
                    .or(m["value"]["value"].as_u64().map(|v| v.to_string()))
            })
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {metrics}"))
    };
    let container = |id: &str| {
        ours["containerMetrics"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["containerId"] == id))
            .map(|c| c["metrics"].clone())
            .unwrap_or_else(|| panic!("no metrics of container {id}: {ours}"))
    };
    let burner_metrics = container(&burner_id);
    assert!(
        value_of(&burner_metrics, "container_cpu_usage_seconds_total") >= 1,
        "{burner_metrics}"
    );
    let cpu = burner_metrics
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "container_cpu_usage_seconds_total")
        .unwrap();
    assert_eq!(cpu["metricType"], "COUNTER");
    assert_eq!(cpu["labelValues"][0], burner_id.as_str());
    assert_eq!(cpu["labelValues"][1], "burner");
    assert_eq!(cpu["labelValues"][3], "total");
    let holder_metrics = container(&holder_id);
    assert!(
        value_of(&holder_metrics, "container_memory_working_set_bytes") >= 64 << 20,
        "{holder_metrics}"
    );
    // The pod's own metrics: eth0, which RunPodSandbox's bridge attach gave it.
    let eth0_rx = ours["metrics"]
        .as_array()
        .and_then(|m| {
            m.iter().find(|m| {
                m["name"] == "container_network_receive_packets_total"
                    && m["labelValues"][3] == "eth0"
            })
        })
        .unwrap_or_else(|| panic!("no eth0 counters: {ours}"));
    assert_eq!(eth0_rx["labelValues"][1], "POD");
    env.stop_pod(&pod_id).await;
    env.remove_pod(&pod_id).await;
}
