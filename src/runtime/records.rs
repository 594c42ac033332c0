//! What the store keeps about pods and containers. The CRI configs are kept as their
//! protobuf encoding (base64 in the JSON record), so every field kubelet sent is
//! answered back unchanged without mirroring the CRI types in serde structs.

use std::path::PathBuf;

use base64::Engine;
use k8s_cri::v1 as cri;
use prost::Message;
use serde::{Deserialize, Serialize};

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
    /// `PodSandboxConfig`, protobuf-encoded.
    #[serde(with = "proto_b64")]
    pub config: Vec<u8>,
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

/// A stored config that does not decode: an error naming the object, never an empty
/// config in its place.
#[derive(Debug, thiserror::Error)]
#[error("the stored config of {kind} {id} cannot be decoded: {source}")]
pub struct CorruptRecord {
    pub kind: &'static str,
    pub id: String,
    #[source]
    pub source: prost::DecodeError,
}

impl crate::error::HasKind for CorruptRecord {
    fn kind(&self) -> crate::error::ErrorKind {
        crate::error::ErrorKind::Internal
    }
}

fn decode<T: Message + Default>(
    kind: &'static str,
    id: &str,
    bytes: &[u8],
) -> Result<T, CorruptRecord> {
    T::decode(bytes).map_err(|source| CorruptRecord {
        kind,
        id: id.to_string(),
        source,
    })
}

impl PodRecord {
    pub fn config(&self) -> Result<cri::PodSandboxConfig, CorruptRecord> {
        decode("pod sandbox", &self.id, &self.config)
    }

    /// Only what ListPodSandbox returns, decoded from the stored config: the other
    /// fields (DNS, ports, the whole Linux config) are skipped, not built, on a call
    /// kubelet makes every second for every pod.
    pub fn list_fields(&self) -> Result<PodListFields, CorruptRecord> {
        decode("pod sandbox", &self.id, &self.config)
    }
}

/// The fields of `cri::PodSandboxConfig` a pod list shows (same tags).
#[derive(Clone, PartialEq, prost::Message)]
pub struct PodListFields {
    #[prost(message, optional, tag = "1")]
    pub metadata: Option<cri::PodSandboxMetadata>,
    #[prost(map = "string, string", tag = "6")]
    pub labels: std::collections::HashMap<String, String>,
    #[prost(map = "string, string", tag = "7")]
    pub annotations: std::collections::HashMap<String, String>,
}

/// The fields of `cri::ContainerConfig` a container list shows (same tags).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerListFields {
    #[prost(message, optional, tag = "1")]
    pub metadata: Option<cri::ContainerMetadata>,
    #[prost(map = "string, string", tag = "9")]
    pub labels: std::collections::HashMap<String, String>,
    #[prost(map = "string, string", tag = "10")]
    pub annotations: std::collections::HashMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    /// The object namespace: always its pod's.
    #[serde(default = "cri_namespace")]
    pub namespace: String,
    pub pod_id: String,
    pub state: ContainerState,
    /// `ContainerConfig`, protobuf-encoded (resources updated by
    /// UpdateContainerResources).
    #[serde(with = "proto_b64")]
    pub config: Vec<u8>,
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
}

impl ContainerRecord {
    pub fn config(&self) -> Result<cri::ContainerConfig, CorruptRecord> {
        decode("container", &self.id, &self.config)
    }

    /// Only what ListContainers returns (command, env, mounts, ... are skipped).
    pub fn list_fields(&self) -> Result<ContainerListFields, CorruptRecord> {
        decode("container", &self.id, &self.config)
    }
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

mod proto_b64 {
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
    fn config_round_trips_through_json() {
        let config = cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: "web".into(),
                uid: "u1".into(),
                namespace: "default".into(),
                attempt: 2,
            }),
            hostname: "web-0".into(),
            ..Default::default()
        };
        let record = PodRecord {
            id: "abc".into(),
            namespace: "k8s.io".into(),
            state: PodState::Ready,
            config: config.encode_to_vec(),
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
        assert_eq!(back.config().unwrap(), config);
        assert_eq!(back, record);
        // Records stored before they named their namespace are the CRI's.
        let mut old: serde_json::Value = serde_json::from_str(&json).unwrap();
        old.as_object_mut().unwrap().remove("namespace");
        let back: PodRecord = serde_json::from_value(old).unwrap();
        assert_eq!(back.namespace, "k8s.io");
    }

    #[test]
    fn a_corrupt_config_is_an_error_naming_the_object() {
        let record = ContainerRecord {
            id: "c1".into(),
            namespace: "k8s.io".into(),
            pod_id: "p1".into(),
            state: ContainerState::Created,
            // A length-delimited field (metadata) longer than what follows.
            config: vec![0x0a, 0x7f, 0x01],
            image: String::new(),
            image_id: String::new(),
            image_ref: String::new(),
            chain_ids: Vec::new(),
            runtime_handler: String::new(),
            stop_signal: None,
            log_path: String::new(),
            bundle: PathBuf::new(),
            created_at: 0,
            started_at: 0,
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            monitor: None,
        };
        let err = record.config().unwrap_err();
        assert!(err.to_string().contains("container c1"), "{err}");
        assert!(record.list_fields().is_err());
    }

    #[test]
    fn list_fields_match_the_full_configs() {
        let labels: std::collections::HashMap<String, String> =
            [("app".to_string(), "web".to_string())].into();
        let annotations: std::collections::HashMap<String, String> =
            [("note".to_string(), "x".to_string())].into();
        let pod = cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: "web".into(),
                uid: "u1".into(),
                namespace: "default".into(),
                attempt: 2,
            }),
            hostname: "web-0".into(),
            labels: labels.clone(),
            annotations: annotations.clone(),
            port_mappings: vec![cri::PortMapping {
                host_port: 8080,
                ..Default::default()
            }],
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: "/kubepods".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let fields = PodListFields::decode(pod.encode_to_vec().as_slice()).unwrap();
        assert_eq!(fields.metadata, pod.metadata);
        assert_eq!(
            (fields.labels, fields.annotations),
            (labels.clone(), annotations.clone())
        );

        let container = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: "app".into(),
                attempt: 1,
            }),
            command: vec!["sleep".into()],
            envs: vec![cri::KeyValue {
                key: "A".into(),
                value: "1".into(),
            }],
            labels: labels.clone(),
            annotations: annotations.clone(),
            log_path: "app.log".into(),
            ..Default::default()
        };
        let fields = ContainerListFields::decode(container.encode_to_vec().as_slice()).unwrap();
        assert_eq!(fields.metadata, container.metadata);
        assert_eq!((fields.labels, fields.annotations), (labels, annotations));
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
