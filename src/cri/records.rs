//! The CRI's extension of pod and container records: the request kubelet sent
//! (`PodSandboxConfig`, `ContainerConfig`), protobuf-encoded, so Status and List answer
//! every field back unchanged (as containerd keeps its CRI metadata in container
//! extensions). Also the one-time upgrade of records stored before the core had its
//! own types, when the CRI config was the whole record.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use base64::Engine as _;
use k8s_cri::v1 as cri;
use prost::Message;
use serde_json::Value;

use crate::runtime::records::CorruptRecord;
use crate::runtime::{ContainerRecord, PodRecord};
use crate::store::{Kind, Store, StoreError};

fn decode<T: Message + Default>(
    kind: &'static str,
    id: &str,
    bytes: &[u8],
) -> Result<T, CorruptRecord> {
    T::decode(bytes).map_err(|err| CorruptRecord {
        kind,
        id: id.to_string(),
        reason: err.to_string(),
    })
}

/// The fields of `cri::PodSandboxConfig` a pod list shows (same tags): the others
/// (DNS, ports, the whole Linux config) are skipped, not built, on a call kubelet
/// makes every second for every pod.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct PodListFields {
    #[prost(message, optional, tag = "1")]
    pub metadata: Option<cri::PodSandboxMetadata>,
    #[prost(map = "string, string", tag = "6")]
    pub labels: HashMap<String, String>,
    #[prost(map = "string, string", tag = "7")]
    pub annotations: HashMap<String, String>,
}

/// The fields of `cri::ContainerConfig` a container list shows (same tags).
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct ContainerListFields {
    #[prost(message, optional, tag = "1")]
    pub metadata: Option<cri::ContainerMetadata>,
    #[prost(map = "string, string", tag = "9")]
    pub labels: HashMap<String, String>,
    #[prost(map = "string, string", tag = "10")]
    pub annotations: HashMap<String, String>,
}

/// The decoded list fields of pods or containers, by ID. A create's config never
/// changes after it, and kubelet lists every pod and container every second: each is
/// decoded once (its fields are then cloned into each answer). Entries of objects
/// that are gone are dropped after a list that saw fewer objects than entries.
pub(super) struct ListFieldCache<T> {
    entries: Mutex<HashMap<String, Arc<T>>>,
}

impl<T> std::fmt::Debug for ListFieldCache<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let entries = self.entries.lock().map(|e| e.len()).unwrap_or_default();
        f.debug_struct("ListFieldCache")
            .field("entries", &entries)
            .finish()
    }
}

impl<T> Default for ListFieldCache<T> {
    fn default() -> Self {
        ListFieldCache {
            entries: Mutex::new(HashMap::new()),
        }
    }
}

/// One list's hold on a [`ListFieldCache`].
pub(super) struct ListFields<'a, T> {
    cache: &'a ListFieldCache<T>,
    entries: MutexGuard<'a, HashMap<String, Arc<T>>>,
    kind: &'static str,
    /// Objects this list went over (filtered out or not).
    visited: usize,
}

impl<T> ListFieldCache<T> {
    /// Locked for one list (taken before the runtime's records: always in that order).
    pub(super) fn hold(&self, kind: &'static str) -> ListFields<'_, T> {
        ListFields {
            cache: self,
            entries: self.entries.lock().unwrap_or_else(|p| p.into_inner()),
            kind,
            visited: 0,
        }
    }
}

impl<T: Message + Default> ListFields<'_, T> {
    /// About how many objects the list will go over: what the cache holds.
    pub(super) fn expected(&self) -> usize {
        self.entries.len()
    }

    /// Counts one object the list went over.
    pub(super) fn visit(&mut self) {
        self.visited += 1;
    }

    /// The fields of object `id`, stored as `bytes`.
    pub(super) fn get(&mut self, id: &str, bytes: &[u8]) -> Result<Arc<T>, CorruptRecord> {
        if let Some(fields) = self.entries.get(id) {
            return Ok(fields.clone());
        }
        let fields = Arc::new(decode::<T>(self.kind, id, bytes)?);
        self.entries.insert(id.to_string(), fields.clone());
        Ok(fields)
    }

    /// Ends the list. When it went over fewer objects than there are entries, some
    /// objects are gone: `live` (the IDs that exist, gathered once the lock is
    /// released) says which entries stay.
    pub(super) fn done(self, live: impl FnOnce() -> HashSet<String>) {
        let stale = self.entries.len() > self.visited;
        let cache = self.cache;
        drop(self);
        if stale {
            let live = live();
            cache
                .entries
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|id, _| live.contains(id));
        }
    }
}

pub(super) fn pod_config(pod: &PodRecord) -> Result<cri::PodSandboxConfig, CorruptRecord> {
    decode("pod sandbox", &pod.id, &pod.extension)
}

pub(super) fn pod_list_fields(pod: &PodRecord) -> Result<PodListFields, CorruptRecord> {
    decode("pod sandbox", &pod.id, &pod.extension)
}

pub(super) fn container_config(
    container: &ContainerRecord,
) -> Result<cri::ContainerConfig, CorruptRecord> {
    decode("container", &container.id, &container.extension)
}

pub(super) fn container_list_fields(
    container: &ContainerRecord,
) -> Result<ContainerListFields, CorruptRecord> {
    decode("container", &container.id, &container.extension)
}

/// Why a record stored before the core had its own types could not be upgraded.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("upgrading the stored {kind} {id}: {reason}")]
    Record {
        kind: Kind,
        id: String,
        reason: String,
    },
}

/// Rewrites pod and container records that hold only their CRI config (`config`, the
/// protobuf in base64: wharf before the core had its own types) as the core's spec
/// plus that config as the CRI's extension. Runs before the runtime loads its records;
/// returns how many were upgraded. A record that cannot be read is an error naming it.
pub fn upgrade_legacy_records(store: &Store) -> Result<usize, UpgradeError> {
    let pods = store.list::<Value>(None, Kind::Pod)?;
    let containers = store.list::<Value>(None, Kind::Container)?;
    let legacy = |value: &Value| value.get("spec").is_none() && value.get("config").is_some();
    if !pods.iter().chain(&containers).any(|r| legacy(&r.value)) {
        return Ok(0);
    }
    let config_bytes = |kind: Kind, id: &str, value: &Value| -> Result<Vec<u8>, UpgradeError> {
        let text = value
            .get("config")
            .and_then(Value::as_str)
            .unwrap_or_default();
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|err| UpgradeError::Record {
                kind,
                id: id.to_string(),
                reason: format!("config is not base64: {err}"),
            })
    };
    let bad = |kind: Kind, id: &str| {
        let id = id.to_string();
        move |err: &dyn std::fmt::Display| UpgradeError::Record {
            kind,
            id,
            reason: err.to_string(),
        }
    };
    let mut pod_metadata = HashMap::new();
    let mut upgraded = Vec::new();
    for record in &pods {
        let bytes = config_bytes(Kind::Pod, &record.id, &record.value)?;
        let config = cri::PodSandboxConfig::decode(bytes.as_slice())
            .map_err(|e| bad(Kind::Pod, &record.id)(&e))?;
        pod_metadata.insert(
            record.id.clone(),
            config.metadata.clone().unwrap_or_default(),
        );
        if !legacy(&record.value) {
            continue;
        }
        let spec = super::convert::pod_spec(&config).map_err(|e| bad(Kind::Pod, &record.id)(&e))?;
        upgraded.push((Kind::Pod, record, serde_json::to_value(spec), bytes));
    }
    for record in &containers {
        if !legacy(&record.value) {
            continue;
        }
        let bytes = config_bytes(Kind::Container, &record.id, &record.value)?;
        let config = cri::ContainerConfig::decode(bytes.as_slice())
            .map_err(|e| bad(Kind::Container, &record.id)(&e))?;
        let pod_id = record
            .value
            .get("pod_id")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let pod_meta = pod_metadata.get(pod_id).cloned().unwrap_or_default();
        let spec = super::convert::container_spec(&config, pod_id, &pod_meta)
            .map_err(|e| bad(Kind::Container, &record.id)(&e))?;
        upgraded.push((Kind::Container, record, serde_json::to_value(spec), bytes));
    }
    let count = upgraded.len();
    store.update(|tx| {
        for (kind, record, spec, bytes) in upgraded {
            let spec = spec.map_err(|e| bad(kind, &record.id)(&e))?;
            let mut value = record.value.clone();
            if let Some(object) = value.as_object_mut() {
                object.remove("config");
                object.insert("spec".into(), spec);
                object.insert(
                    "extension".into(),
                    base64::engine::general_purpose::STANDARD
                        .encode(&bytes)
                        .into(),
                );
            }
            tx.replace(&record.namespace, kind, &record.id, &value)?;
        }
        Ok::<(), UpgradeError>(())
    })?;
    tracing::info!(
        records = count,
        "upgraded pod and container records to the core's types"
    );
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_fields_match_the_full_configs() {
        let labels: HashMap<String, String> = [("app".to_string(), "web".to_string())].into();
        let annotations: HashMap<String, String> = [("note".to_string(), "x".to_string())].into();
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
    fn a_corrupt_extension_is_an_error_naming_the_object() {
        // A length-delimited field (metadata) longer than what follows.
        let err =
            decode::<cri::ContainerConfig>("container", "c1", &[0x0a, 0x7f, 0x01]).unwrap_err();
        assert!(err.to_string().contains("container c1"), "{err}");
        assert!(decode::<ContainerListFields>("container", "c1", &[0x0a, 0x7f, 0x01]).is_err());
    }

    #[test]
    fn legacy_records_are_upgraded_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let b64 = |bytes: Vec<u8>| base64::engine::general_purpose::STANDARD.encode(bytes);
        let pod_cfg = cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: "web".into(),
                uid: "u1".into(),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: "web-0".into(),
            ..Default::default()
        };
        let container_cfg = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: "app".into(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: "busybox".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        // The shape of records before this change (the fields that matter here).
        let pod = serde_json::json!({
            "id": "p1", "state": "ready", "config": b64(pod_cfg.encode_to_vec()),
            "runtime_handler": "", "created_at": 1,
            "namespaces": {"network": null, "ipc": null, "uts": null},
            "pid_holder": null, "cgroup_parent": "/k", "dir": "/run/x", "shm_mounted": false,
        });
        let container = serde_json::json!({
            "id": "c1", "pod_id": "p1", "state": "exited",
            "config": b64(container_cfg.encode_to_vec()),
            "image": "busybox", "image_id": "sha256:x", "image_ref": "sha256:x",
            "chain_ids": [], "runtime_handler": "", "stop_signal": null, "log_path": "",
            "bundle": "/run/x/c1", "created_at": 1, "started_at": 1, "finished_at": 2,
            "exit_code": 0, "reason": "", "message": "", "monitor": null,
        });
        store
            .update(|tx| {
                tx.insert("k8s.io", Kind::Pod, "p1", Some("web_default_u1_0"), &pod)?;
                tx.insert("k8s.io", Kind::Container, "c1", Some("app"), &container)
            })
            .unwrap();
        assert!(store.list::<PodRecord>(None, Kind::Pod).is_err());

        assert_eq!(upgrade_legacy_records(&store).unwrap(), 2);
        let pods = store.list::<PodRecord>(None, Kind::Pod).unwrap();
        assert_eq!(pods[0].value.spec.name, "web_default_u1_0");
        assert_eq!(pods[0].value.spec.hostname, "web-0");
        assert_eq!(pod_config(&pods[0].value).unwrap(), pod_cfg);
        let containers = store
            .list::<ContainerRecord>(None, Kind::Container)
            .unwrap();
        let c = &containers[0].value;
        assert_eq!(c.spec.image, "busybox");
        assert_eq!(c.spec.annotations["io.kubernetes.cri.sandbox-id"], "p1");
        assert_eq!(container_config(c).unwrap(), container_cfg);
        assert_eq!(upgrade_legacy_records(&store).unwrap(), 0);
    }
}
