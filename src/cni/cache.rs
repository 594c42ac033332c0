//! The result cache: one JSON file per attachment, so DEL and CHECK run with what the
//! ADD used even after a restart or a config change.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::RuntimeConfig;

pub const KIND: &str = "wharfCniCacheV1";

/// `<cache_dir>/<network>-<container id>-<ifname>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheEntry {
    pub kind: String,
    pub network_name: String,
    pub container_id: String,
    pub if_name: String,
    pub netns: PathBuf,
    pub cni_args: Vec<(String, String)>,
    pub capability_args: RuntimeConfig,
    /// The configuration list the ADD ran.
    pub config: Value,
    /// The ADD's final result; `None` while the ADD is in flight (or was rolled back
    /// without a successful DEL), so a DEL after a crash still runs the chain.
    pub result: Option<Value>,
}

pub fn entry_path(cache_dir: &Path, network: &str, container_id: &str, ifname: &str) -> PathBuf {
    cache_dir.join(format!("{network}-{container_id}-{ifname}.json"))
}

/// Writes `entry` atomically (a temp file renamed into place; not fsynced: the cache is
/// in the state dir, see `crate::state_file`).
pub fn write(cache_dir: &Path, entry: &CacheEntry) -> std::io::Result<PathBuf> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(cache_dir)?;
    let path = entry_path(
        cache_dir,
        &entry.network_name,
        &entry.container_id,
        &entry.if_name,
    );
    let bytes = serde_json::to_vec(entry).map_err(std::io::Error::other)?;
    crate::state_file::replace(&path, &bytes, 0o600)?;
    Ok(path)
}

/// Reads one entry; `Ok(None)` when there is none.
pub fn read(path: &Path) -> Result<Option<CacheEntry>, String> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(format!("cannot read: {err}")),
    };
    let entry: CacheEntry =
        serde_json::from_slice(&bytes).map_err(|err| format!("invalid JSON: {err}"))?;
    if entry.kind != KIND {
        return Err(format!("unknown cache entry kind {:?}", entry.kind));
    }
    Ok(Some(entry))
}

/// Removes an entry; a missing one is fine.
pub fn remove(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(err),
        _ => Ok(()),
    }
}

/// Every cache file that may belong to (`container_id`, `ifname`) whatever the network
/// name: the network may have been renamed or removed since the ADD. The caller checks
/// the content (names can contain '-', so the suffix alone is not proof).
pub fn candidates(
    cache_dir: &Path,
    container_id: &str,
    ifname: &str,
) -> std::io::Result<Vec<PathBuf>> {
    let suffix = format!("-{container_id}-{ifname}.json");
    let entries = match std::fs::read_dir(cache_dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with('.') && name.len() > suffix.len() && name.ends_with(&suffix) {
            found.push(entry.path());
        }
    }
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cni::PortMapping;
    use serde_json::json;

    fn entry(network: &str, container_id: &str, result: Option<Value>) -> CacheEntry {
        CacheEntry {
            kind: KIND.into(),
            network_name: network.into(),
            container_id: container_id.into(),
            if_name: "eth0".into(),
            netns: "/run/netns/x".into(),
            cni_args: vec![("K8S_POD_NAME".into(), "p".into())],
            capability_args: RuntimeConfig {
                port_mappings: vec![PortMapping {
                    host_port: 80,
                    container_port: 8080,
                    protocol: "tcp".into(),
                    host_ip: String::new(),
                }],
                ..Default::default()
            },
            config: json!({"cniVersion":"1.0.0","name":network,"plugins":[{"type":"bridge"}]}),
            result,
        }
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let cache_dir = dir.path().join("results");
        let written = entry("net", "abc", Some(json!({"cniVersion":"1.0.0","ips":[]})));
        let path = write(&cache_dir, &written).unwrap();
        assert_eq!(path, cache_dir.join("net-abc-eth0.json"));
        assert_eq!(read(&path).unwrap(), Some(written.clone()));
        // Nothing but the entry is left behind.
        let names: Vec<_> = std::fs::read_dir(&cache_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec!["net-abc-eth0.json"]);
        // Overwrite (the pending entry replaced by the final one).
        let pending = entry("net", "abc", None);
        write(&cache_dir, &pending).unwrap();
        assert_eq!(read(&path).unwrap(), Some(pending));
        remove(&path).unwrap();
        remove(&path).unwrap();
        assert_eq!(read(&path).unwrap(), None);
    }

    #[test]
    fn candidates_match_by_suffix_across_networks() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &entry("old-net", "abc", None)).unwrap();
        write(dir.path(), &entry("new", "abc", None)).unwrap();
        write(dir.path(), &entry("new", "xabc", None)).unwrap();
        write(dir.path(), &entry("new", "other", None)).unwrap();
        let found = candidates(dir.path(), "abc", "eth0").unwrap();
        assert_eq!(
            found,
            vec![
                dir.path().join("new-abc-eth0.json"),
                dir.path().join("old-net-abc-eth0.json"),
            ]
        );
        assert!(candidates(&dir.path().join("none"), "abc", "eth0")
            .unwrap()
            .is_empty());
    }

    #[test]
    fn garbage_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x-a-eth0.json");
        std::fs::write(&path, "{").unwrap();
        assert!(read(&path).unwrap_err().contains("invalid JSON"));
        std::fs::write(
            &path,
            serde_json::to_vec(&CacheEntry {
                kind: "other".into(),
                ..entry("x", "a", None)
            })
            .unwrap(),
        )
        .unwrap();
        assert!(read(&path).unwrap_err().contains("kind"));
    }
}
