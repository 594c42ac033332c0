//! What the store keeps about pods and containers: the core's spec of each (see
//! `model.rs`), its state, and an opaque extension that belongs to the front end of
//! the object's namespace (the CRI keeps its original request there, protobuf-encoded,
//! so every field kubelet sent is answered back unchanged, as containerd's container
//! extensions do). Both are base64 in the JSON record.

use std::path::PathBuf;

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::model::{ContainerSpec, PodSpec};
use super::monitor::MonitorInfo;
use super::namespaces::PodNamespaces;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PodState {
    /// Recorded before kernel objects are made; a restart finding it cleans up.
    Creating,
    Ready,
    NotReady,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerState {
    Creating,
    Created,
    Running,
    Exited,
    /// The monitor vanished without recording an exit.
    Unknown,
}

/// A process identified across daemon restarts: pid plus start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRef {
    pub pid: i32,
    pub start_time: u64,
}

/// The object namespace of records stored before records named theirs (only the CRI
/// front end existed then).
fn cri_namespace() -> String {
    crate::store::CRI_NAMESPACE.to_string()
}

/// A record that lives in an object namespace (`k8s.io` for the CRI, `docker` for the
/// Docker API): front ends see only their own namespace's objects.
pub trait InNamespace {
    fn namespace(&self) -> &str;
}

impl InNamespace for PodRecord {
    fn namespace(&self) -> &str {
        &self.namespace
    }
}

impl InNamespace for ContainerRecord {
    fn namespace(&self) -> &str {
        &self.namespace
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodRecord {
    pub id: String,
    /// The object namespace the pod belongs to.
    #[serde(default = "cri_namespace")]
    pub namespace: String,
    pub state: PodState,
    pub spec: PodSpec,
    /// The front end's own data (the CRI: its `PodSandboxConfig`, protobuf-encoded).
    #[serde(with = "bytes_b64", default)]
    pub extension: Vec<u8>,
    pub runtime_handler: String,
    pub created_at: i64,
    /// Pinned network / IPC / UTS namespaces (None where the host's are used).
    pub namespaces: PodNamespaces,
    /// The pod's PID namespace holder (POD pid mode).
    pub pid_holder: Option<ProcessRef>,
    pub cgroup_parent: String,
    /// The pod's state dir: pins, hostname, hosts, resolv.conf, shm.
    pub dir: PathBuf,
    /// Whether `dir/shm` is a tmpfs wharf mounted (not host IPC).
    pub shm_mounted: bool,
    /// The pod's CNI attachment; recorded before ADD runs, so a crash in between still
    /// leads to a DEL.
    #[serde(default)]
    pub network: Option<PodNetwork>,
}

/// A pod's attachment to a CNI network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodNetwork {
    /// The network's name (from its config list).
    pub name: String,
    pub ifname: String,
    pub phase: NetworkPhase,
    /// Pod IPs from the ADD result, IPv4 first.
    pub ips: Vec<String>,
    /// The MAC address of its interface in the pod (empty if the result had none).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkPhase {
    /// ADD is running (or was, when wharfd crashed): DEL is still owed.
    Attaching,
    Attached,
    /// DEL ran; it runs once.
    Detached,
}

/// A stored record, or a front end's extension of it, that does not decode: an error
/// naming the object, never an empty config in its place.
#[derive(Debug, thiserror::Error)]
#[error("the stored config of {kind} {id} cannot be decoded: {reason}")]
pub struct CorruptRecord {
    pub kind: &'static str,
    pub id: String,
    pub reason: String,
}

impl crate::error::HasKind for CorruptRecord {
    fn kind(&self) -> crate::error::ErrorKind {
        crate::error::ErrorKind::Internal
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    /// The object namespace: always its pod's.
    #[serde(default = "cri_namespace")]
    pub namespace: String,
    pub pod_id: String,
    pub state: ContainerState,
    /// What the container was made with (resources updated by UpdateContainerResources).
    pub spec: ContainerSpec,
    /// The front end's own data (the CRI: its `ContainerConfig`, protobuf-encoded).
    #[serde(with = "bytes_b64", default)]
    pub extension: Vec<u8>,
    /// The image as the request named it, and the resolved image ID and digest ref.
    pub image: String,
    pub image_id: String,
    pub image_ref: String,
    /// Snapshot chain IDs of the rootfs, held against image GC while the container lives.
    pub chain_ids: Vec<String>,
    pub runtime_handler: String,
    pub stop_signal: Option<String>,
    pub log_path: String,
    pub bundle: PathBuf,
    pub created_at: i64,
    pub started_at: i64,
    pub finished_at: i64,
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
    pub monitor: Option<MonitorInfo>,
    /// Restarts by the restart policy since the last start through the API.
    #[serde(default)]
    pub restart_count: u32,
    /// Stopped through the API: `always` and `unless-stopped` leave it stopped.
    #[serde(default)]
    pub stopped_by_user: bool,
    /// Frozen (Docker's pause); only while running.
    #[serde(default)]
    pub paused: bool,
    /// The host ports its `published_ports` got at its last start; empty once they
    /// are withdrawn (it exited, or was stopped).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub published_ports: Vec<super::model::PortMapping>,
}

/// Nanoseconds since the epoch, now.
pub fn now_nanos() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX)
}

/// An RFC 3339 time (the monitor's `finished_at`) as nanoseconds since the epoch.
pub fn parse_time(text: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()?
        .timestamp_nanos_opt()
}

mod bytes_b64 {
    use super::*;

    pub fn serialize<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_json() {
        let spec = PodSpec {
            name: "web_default_u1_2".into(),
            hostname: "web-0".into(),
            ..Default::default()
        };
        let record = PodRecord {
            id: "abc".into(),
            namespace: "k8s.io".into(),
            state: PodState::Ready,
            spec,
            extension: vec![1, 2, 3],
            runtime_handler: String::new(),
            created_at: 1,
            namespaces: PodNamespaces::default(),
            pid_holder: None,
            cgroup_parent: "/x".into(),
            dir: PathBuf::from("/run/wharf/pods/abc"),
            shm_mounted: true,
            network: None,
        };
        let json = serde_json::to_string(&record).unwrap();
        let back: PodRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back, record);
        // Records stored before they named their namespace are the CRI's.
        let mut old: serde_json::Value = serde_json::from_str(&json).unwrap();
        old.as_object_mut().unwrap().remove("namespace");
        let back: PodRecord = serde_json::from_value(old).unwrap();
        assert_eq!(back.namespace, "k8s.io");
        // A record without its spec is an error, not an empty spec.
        let mut old: serde_json::Value = serde_json::from_str(&json).unwrap();
        old.as_object_mut().unwrap().remove("spec");
        let err = serde_json::from_value::<PodRecord>(old).unwrap_err();
        assert!(err.to_string().contains("spec"), "{err}");
    }

    #[test]
    fn rfc3339_times() {
        assert_eq!(
            parse_time("1970-01-01T00:00:01.000000002Z"),
            Some(1_000_000_002)
        );
        assert_eq!(parse_time("garbage"), None);
    }
}
