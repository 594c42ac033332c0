//! Network configuration: loading the conf dir, validating a list, and building the
//! JSON each plugin reads on stdin.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde_json::{Map, Value};

use super::RuntimeConfig;

/// A CNI spec version, `major.minor.patch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32, pub u32, pub u32);

impl Version {
    pub const V0_3_0: Version = Version(0, 3, 0);
    pub const V0_4_0: Version = Version(0, 4, 0);
    pub const V1_1_0: Version = Version(1, 1, 0);

    /// Parses `1.0.0`; a missing patch (`0.4`) counts as 0.
    pub fn parse(text: &str) -> Option<Version> {
        let mut parts = text.trim().split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        let patch = match parts.next() {
            Some(p) => p.parse().ok()?,
            None => 0,
        };
        if parts.next().is_some() {
            return None;
        }
        Some(Version(major, minor, patch))
    }

    /// The versions whose configs and results this runtime understands.
    pub fn is_supported(self) -> bool {
        SUPPORTED_VERSIONS.contains(&self)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// Every published spec version up to 1.1.0 (1.1.0 only adds STATUS and GC on top of
/// 1.0.0's result format, and STATUS is the part we use).
pub const SUPPORTED_VERSIONS: [Version; 7] = [
    Version(0, 1, 0),
    Version(0, 2, 0),
    Version(0, 3, 0),
    Version(0, 3, 1),
    Version(0, 4, 0),
    Version(1, 0, 0),
    Version(1, 1, 0),
];

/// One plugin of a network configuration list.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginConfig {
    /// The plugin's `type`: the executable's file name in the plugin dirs.
    pub plugin_type: String,
    /// Capabilities the plugin declares with `true` (e.g. `portMappings`).
    pub capabilities: BTreeSet<String>,
    /// The plugin's configuration object as written.
    pub raw: Map<String, Value>,
}

/// A validated network configuration list (a `.conf` file is wrapped into one).
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfigList {
    pub name: String,
    /// The version spoken with the plugins (from `cniVersion`, or the highest supported
    /// entry of `cniVersions`).
    pub cni_version: String,
    pub version: Version,
    /// `disableCheck: true`: CHECK succeeds without running the plugins.
    pub disable_check: bool,
    pub plugins: Vec<PluginConfig>,
    /// The file it was loaded from.
    pub source: PathBuf,
    /// The list as JSON, with `cniVersion` resolved: what the result cache keeps so DEL
    /// runs the same chain as the ADD.
    pub raw: Value,
}

impl NetworkConfigList {
    /// Validates a configuration list (`.conflist`).
    pub fn from_list(value: Value, source: &Path) -> Result<NetworkConfigList, String> {
        let Value::Object(mut object) = value else {
            return Err("not a JSON object".into());
        };
        let name = match object.get("name") {
            Some(Value::String(name)) => name.clone(),
            Some(_) => return Err("\"name\" is not a string".into()),
            None => return Err("\"name\" is missing".into()),
        };
        validate_network_name(&name)?;
        let version = resolve_version(&object)?;
        let cni_version = version.to_string();
        object.insert("cniVersion".into(), Value::String(cni_version.clone()));
        let disable_check = match object.get("disableCheck") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            // Some writers quote booleans; libcni accepts "true" too.
            Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
            Some(_) => return Err("\"disableCheck\" is not a boolean".into()),
        };
        let plugins = match object.get("plugins") {
            Some(Value::Array(plugins)) if !plugins.is_empty() => plugins,
            Some(Value::Array(_)) => return Err("\"plugins\" is empty".into()),
            Some(_) => return Err("\"plugins\" is not an array".into()),
            None => return Err("\"plugins\" is missing".into()),
        };
        let plugins = plugins
            .iter()
            .enumerate()
            .map(|(index, plugin)| {
                PluginConfig::parse(plugin).map_err(|reason| format!("plugin {index}: {reason}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(NetworkConfigList {
            name,
            cni_version,
            version,
            disable_check,
            plugins,
            source: source.to_path_buf(),
            raw: Value::Object(object),
        })
    }

    /// Wraps a single-plugin configuration (`.conf` / `.json`) into a list, as libcni's
    /// `ConfListFromConf` does.
    pub fn from_single(value: Value, source: &Path) -> Result<NetworkConfigList, String> {
        let Value::Object(object) = &value else {
            return Err("not a JSON object".into());
        };
        if !object.contains_key("type") {
            return Err(if object.contains_key("plugins") {
                "has \"plugins\" but no \"type\": a configuration list must be named .conflist"
                    .into()
            } else {
                "\"type\" is missing".into()
            });
        }
        let mut list = Map::new();
        for key in ["cniVersion", "cniVersions", "name"] {
            if let Some(v) = object.get(key) {
                list.insert(key.into(), v.clone());
            }
        }
        list.insert("plugins".into(), Value::Array(vec![value]));
        NetworkConfigList::from_list(Value::Object(list), source)
    }

    /// Parses a file's bytes by its extension.
    pub fn from_file_bytes(bytes: &[u8], source: &Path) -> Result<NetworkConfigList, String> {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|err| format!("invalid JSON: {err}"))?;
        if source.extension().is_some_and(|ext| ext == "conflist") {
            NetworkConfigList::from_list(value, source)
        } else {
            NetworkConfigList::from_single(value, source)
        }
    }

    /// The JSON a plugin reads on stdin: its own configuration with the list's `name`
    /// and `cniVersion`, the previous result when chaining, and a `runtimeConfig` with
    /// only the capabilities it declares (libcni's `buildOneConfig`).
    pub fn plugin_stdin(
        &self,
        plugin: &PluginConfig,
        prev_result: Option<&Value>,
        runtime: &RuntimeConfig,
    ) -> Vec<u8> {
        let mut object = plugin.raw.clone();
        object.insert("name".into(), Value::String(self.name.clone()));
        object.insert("cniVersion".into(), Value::String(self.cni_version.clone()));
        if let Some(prev) = prev_result {
            object.insert("prevResult".into(), prev.clone());
        }
        let runtime_config = runtime_config_json(runtime, &plugin.capabilities);
        if !runtime_config.is_empty() {
            object.insert("runtimeConfig".into(), Value::Object(runtime_config));
        }
        // Serializing a Value cannot fail.
        serde_json::to_vec(&Value::Object(object)).unwrap_or_default()
    }
}

impl PluginConfig {
    fn parse(value: &Value) -> Result<PluginConfig, String> {
        let Value::Object(raw) = value else {
            return Err("not a JSON object".into());
        };
        let plugin_type = match raw.get("type") {
            Some(Value::String(t)) => t.clone(),
            Some(_) => return Err("\"type\" is not a string".into()),
            None => return Err("\"type\" is missing".into()),
        };
        // The type is joined to the plugin dirs: it must be a plain file name.
        if plugin_type.is_empty()
            || plugin_type.contains('/')
            || plugin_type.contains('\0')
            || plugin_type == "."
            || plugin_type == ".."
        {
            return Err(format!(
                "invalid plugin type {plugin_type:?}: must be a file name"
            ));
        }
        let capabilities = match raw.get("capabilities") {
            None | Some(Value::Null) => BTreeSet::new(),
            Some(Value::Object(caps)) => caps
                .iter()
                .filter(|(_, v)| v.as_bool() == Some(true))
                .map(|(k, _)| k.clone())
                .collect(),
            Some(_) => {
                return Err(format!(
                    "plugin {plugin_type}: \"capabilities\" is not an object"
                ))
            }
        };
        Ok(PluginConfig {
            plugin_type,
            capabilities,
            raw: raw.clone(),
        })
    }
}

/// `cniVersion`, or the highest supported entry of `cniVersions` (spec 1.1).
fn resolve_version(object: &Map<String, Value>) -> Result<Version, String> {
    if let Some(Value::Array(versions)) = object.get("cniVersions") {
        let best = versions
            .iter()
            .filter_map(|v| v.as_str().and_then(Version::parse))
            .filter(|v| v.is_supported())
            .max();
        if let Some(best) = best {
            return Ok(best);
        }
        if !object.contains_key("cniVersion") {
            return Err("none of \"cniVersions\" is supported (0.1.0 .. 1.1.0)".into());
        }
    }
    let text = match object.get("cniVersion") {
        Some(Value::String(v)) => v,
        Some(_) => return Err("\"cniVersion\" is not a string".into()),
        None => return Err("\"cniVersion\" is missing".into()),
    };
    match Version::parse(text) {
        Some(v) if v.is_supported() => Ok(v),
        Some(_) => Err(format!(
            "unsupported cniVersion {text:?} (supported: 0.1.0 .. 1.1.0)"
        )),
        None => Err(format!("invalid cniVersion {text:?}")),
    }
}

/// The spec's network name rule, `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`; the name is also
/// part of the cache file name, so this keeps it a plain file name component.
fn validate_network_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "invalid network name {name:?}: must match [a-zA-Z0-9][a-zA-Z0-9_.-]*"
        ))
    }
}

/// The `runtimeConfig` object for a plugin declaring `capabilities`, in the shapes of
/// the CNI conventions document. Empty values are left out, as libcni does for
/// capability args the runtime did not set.
pub(crate) fn runtime_config_json(
    runtime: &RuntimeConfig,
    capabilities: &BTreeSet<String>,
) -> Map<String, Value> {
    let mut out = Map::new();
    let wants = |cap: &str| capabilities.contains(cap);
    if wants("portMappings") && !runtime.port_mappings.is_empty() {
        let mappings = runtime
            .port_mappings
            .iter()
            .map(|m| {
                let mut entry = Map::new();
                entry.insert("hostPort".into(), m.host_port.into());
                entry.insert("containerPort".into(), m.container_port.into());
                let protocol = if m.protocol.is_empty() {
                    "tcp".to_string()
                } else {
                    m.protocol.to_ascii_lowercase()
                };
                entry.insert("protocol".into(), protocol.into());
                if !m.host_ip.is_empty() {
                    entry.insert("hostIP".into(), m.host_ip.clone().into());
                }
                Value::Object(entry)
            })
            .collect();
        out.insert("portMappings".into(), Value::Array(mappings));
    }
    if wants("bandwidth") {
        if let Some(bw) = &runtime.bandwidth {
            let mut entry = Map::new();
            for (key, value) in [
                ("ingressRate", bw.ingress_rate),
                ("ingressBurst", bw.ingress_burst),
                ("egressRate", bw.egress_rate),
                ("egressBurst", bw.egress_burst),
            ] {
                if value > 0 {
                    entry.insert(key.into(), value.into());
                }
            }
            if !entry.is_empty() {
                out.insert("bandwidth".into(), Value::Object(entry));
            }
        }
    }
    if wants("ips") && !runtime.ips.is_empty() {
        out.insert("ips".into(), runtime.ips.clone().into());
    }
    if wants("mac") {
        if let Some(mac) = runtime.mac.as_ref().filter(|m| !m.is_empty()) {
            out.insert("mac".into(), mac.clone().into());
        }
    }
    if wants("dns") {
        if let Some(dns) = &runtime.dns {
            // The conventions' runtimeConfig shape differs from a result's DNS.
            let mut entry = Map::new();
            if !dns.nameservers.is_empty() {
                entry.insert("servers".into(), dns.nameservers.clone().into());
            }
            if !dns.search.is_empty() {
                entry.insert("searches".into(), dns.search.clone().into());
            }
            if !dns.options.is_empty() {
                entry.insert("options".into(), dns.options.clone().into());
            }
            if !entry.is_empty() {
                out.insert("dns".into(), Value::Object(entry));
            }
        }
    }
    out
}

/// What identifies a conf dir entry's content without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStamp {
    pub name: OsString,
    pub inode: u64,
    pub modified: Option<SystemTime>,
    pub len: u64,
}

/// The candidate config files of `dir` (`.conflist`, `.conf`, `.json`; regular files,
/// symlinks followed), in lexical order of their names. `Ok(None)` when the dir does
/// not exist.
pub(crate) fn list_candidates(dir: &Path) -> std::io::Result<Option<Vec<FileStamp>>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err),
    };
    let mut stamps = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let path = dir.join(&name);
        let wanted = path
            .extension()
            .is_some_and(|ext| ext == "conflist" || ext == "conf" || ext == "json");
        if !wanted {
            continue;
        }
        // A dangling symlink or a file removed meanwhile is simply not a candidate.
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        stamps.push(FileStamp {
            name,
            inode: meta.ino(),
            modified: meta.modified().ok(),
            len: meta.len(),
        });
    }
    stamps.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Some(stamps))
}

/// The first valid network config among `candidates`; broken ones are skipped with a
/// warning naming the file and why.
pub(crate) fn load_first(dir: &Path, candidates: &[FileStamp]) -> Option<NetworkConfigList> {
    for stamp in candidates {
        let path = dir.join(&stamp.name);
        let parsed = std::fs::read(&path)
            .map_err(|err| format!("cannot read: {err}"))
            .and_then(|bytes| NetworkConfigList::from_file_bytes(&bytes, &path));
        match parsed {
            Ok(list) => return Some(list),
            Err(reason) => {
                tracing::warn!(file = %path.display(), %reason, "skipping CNI network config")
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cni::{Bandwidth, Dns, PortMapping};
    use serde_json::json;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    fn load(dir: &Path) -> Option<NetworkConfigList> {
        let candidates = list_candidates(dir).unwrap().unwrap();
        load_first(dir, &candidates)
    }

    const LIST: &str = r#"{"cniVersion":"1.0.0","name":"LISTNAME","plugins":[{"type":"bridge"},{"type":"portmap","capabilities":{"portMappings":true}}]}"#;

    #[test]
    fn version_parsing_and_order() {
        assert_eq!(Version::parse("1.0.0"), Some(Version(1, 0, 0)));
        assert_eq!(Version::parse("0.4"), Some(Version(0, 4, 0)));
        assert_eq!(Version::parse("x.1"), None);
        assert_eq!(Version::parse("1.0.0.1"), None);
        assert!(Version(0, 4, 0) < Version(1, 0, 0));
        assert!(Version(0, 3, 1) < Version::V0_4_0);
        assert!(!Version(2, 0, 0).is_supported());
    }

    #[test]
    fn lexically_first_valid_file_wins() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "20-b.conflist", &LIST.replace("LISTNAME", "b"));
        write(dir.path(), "10-a.conflist", &LIST.replace("LISTNAME", "a"));
        write(
            dir.path(),
            "05-ignored.txt",
            &LIST.replace("LISTNAME", "txt"),
        );
        std::fs::create_dir(dir.path().join("00-dir.conflist")).unwrap();
        let list = load(dir.path()).unwrap();
        assert_eq!(list.name, "a");
        assert_eq!(list.source, dir.path().join("10-a.conflist"));
        assert_eq!(list.plugins.len(), 2);
        assert_eq!(list.plugins[1].plugin_type, "portmap");
        assert!(list.plugins[1].capabilities.contains("portMappings"));
    }

    #[test]
    fn broken_files_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "01-json.conflist", "{not json");
        write(
            dir.path(),
            "02-noplugins.conflist",
            r#"{"cniVersion":"1.0.0","name":"x","plugins":[]}"#,
        );
        write(
            dir.path(),
            "03-noname.conflist",
            r#"{"cniVersion":"1.0.0","plugins":[{"type":"bridge"}]}"#,
        );
        write(
            dir.path(),
            "04-noversion.conflist",
            r#"{"name":"x","plugins":[{"type":"bridge"}]}"#,
        );
        write(
            dir.path(),
            "05-notype.conflist",
            r#"{"cniVersion":"1.0.0","name":"x","plugins":[{"bridge":"br0"}]}"#,
        );
        write(
            dir.path(),
            "06-slash.conflist",
            r#"{"cniVersion":"1.0.0","name":"x","plugins":[{"type":"../../bin/sh"}]}"#,
        );
        write(
            dir.path(),
            "07-future.conflist",
            r#"{"cniVersion":"9.0.0","name":"x","plugins":[{"type":"bridge"}]}"#,
        );
        write(
            dir.path(),
            "08-badname.conflist",
            r#"{"cniVersion":"1.0.0","name":"a/b","plugins":[{"type":"bridge"}]}"#,
        );
        write(
            dir.path(),
            "09-list-as-conf.conf",
            &LIST.replace("LISTNAME", "misnamed"),
        );
        write(
            dir.path(),
            "10-good.conflist",
            &LIST.replace("LISTNAME", "good"),
        );
        let list = load(dir.path()).unwrap();
        assert_eq!(list.name, "good");
    }

    #[test]
    fn validation_reasons_name_the_problem() {
        let p = Path::new("/x.conflist");
        let err = NetworkConfigList::from_list(
            json!({"cniVersion":"1.0.0","name":"n","plugins":[{"type":"ok"},{"type":"a/b"}]}),
            p,
        )
        .unwrap_err();
        assert!(err.contains("plugin 1") && err.contains("a/b"), "{err}");
        let err = NetworkConfigList::from_list(json!({"name":"n","plugins":[{"type":"x"}]}), p)
            .unwrap_err();
        assert!(err.contains("cniVersion"), "{err}");
        let err =
            NetworkConfigList::from_list(json!({"cniVersion":"1.0.0","name":"n"}), p).unwrap_err();
        assert!(err.contains("plugins"), "{err}");
    }

    #[test]
    fn single_conf_is_wrapped_into_a_list() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "10-single.conf",
            r#"{"cniVersion":"0.4.0","name":"single","type":"bridge","bridge":"br9"}"#,
        );
        let list = load(dir.path()).unwrap();
        assert_eq!(list.name, "single");
        assert_eq!(list.cni_version, "0.4.0");
        assert_eq!(list.plugins.len(), 1);
        assert_eq!(list.plugins[0].plugin_type, "bridge");
        assert_eq!(list.raw["plugins"][0]["bridge"], "br9");
        assert_eq!(list.raw["name"], "single");
    }

    #[test]
    fn cni_versions_picks_the_highest_supported() {
        let list = NetworkConfigList::from_list(
            json!({"cniVersions":["0.4.0","1.1.0","2.0.0"],"name":"n","plugins":[{"type":"x"}]}),
            Path::new("/x.conflist"),
        )
        .unwrap();
        assert_eq!(list.cni_version, "1.1.0");
        assert_eq!(list.raw["cniVersion"], "1.1.0");
    }

    #[test]
    fn missing_or_empty_dir() {
        let dir = tempfile::tempdir().unwrap();
        assert!(list_candidates(&dir.path().join("nope")).unwrap().is_none());
        assert!(load(dir.path()).is_none());
    }

    #[test]
    fn stdin_injects_name_version_prev_result_and_declared_capabilities_only() {
        let list = NetworkConfigList::from_list(
            json!({"cniVersion":"1.0.0","name":"net","disableCheck":true,"plugins":[
                {"type":"bridge","cniVersion":"0.3.1","runtimeConfig":{"stale":1}},
                {"type":"portmap","capabilities":{"portMappings":true,"bandwidth":false}},
                {"type":"all","capabilities":{"portMappings":true,"bandwidth":true,"ips":true,"mac":true,"dns":true}}
            ]}),
            Path::new("/x.conflist"),
        )
        .unwrap();
        assert!(list.disable_check);
        let runtime = RuntimeConfig {
            port_mappings: vec![PortMapping {
                host_port: 8080,
                container_port: 80,
                protocol: "TCP".into(),
                host_ip: String::new(),
            }],
            bandwidth: Some(Bandwidth {
                ingress_rate: 1000,
                ingress_burst: 2000,
                egress_rate: 0,
                egress_burst: 0,
            }),
            ips: vec!["10.0.0.5/24".into()],
            mac: Some("02:00:00:00:00:01".into()),
            dns: Some(Dns {
                nameservers: vec!["10.0.0.1".into()],
                domain: None,
                search: vec!["svc.local".into()],
                options: vec![],
            }),
        };
        let prev = json!({"cniVersion":"1.0.0","ips":[]});

        let bridge: Value =
            serde_json::from_slice(&list.plugin_stdin(&list.plugins[0], None, &runtime)).unwrap();
        assert_eq!(bridge["name"], "net");
        assert_eq!(bridge["cniVersion"], "1.0.0", "the list's version wins");
        assert!(bridge.get("prevResult").is_none());
        // No capability declared: nothing injected, the plugin's own value stays.
        assert_eq!(bridge["runtimeConfig"], json!({"stale":1}));

        let portmap: Value =
            serde_json::from_slice(&list.plugin_stdin(&list.plugins[1], Some(&prev), &runtime))
                .unwrap();
        assert_eq!(portmap["prevResult"], prev);
        assert_eq!(
            portmap["runtimeConfig"],
            json!({"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}]})
        );

        let all: Value =
            serde_json::from_slice(&list.plugin_stdin(&list.plugins[2], None, &runtime)).unwrap();
        assert_eq!(
            all["runtimeConfig"],
            json!({
                "portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}],
                "bandwidth":{"ingressRate":1000,"ingressBurst":2000},
                "ips":["10.0.0.5/24"],
                "mac":"02:00:00:00:00:01",
                "dns":{"servers":["10.0.0.1"],"searches":["svc.local"]}
            })
        );

        // Declared but not set: no runtimeConfig at all.
        let empty: Value = serde_json::from_slice(&list.plugin_stdin(
            &list.plugins[1],
            None,
            &RuntimeConfig::default(),
        ))
        .unwrap();
        assert!(empty.get("runtimeConfig").is_none());
    }

    #[test]
    fn host_ip_is_passed_when_set() {
        let runtime = RuntimeConfig {
            port_mappings: vec![PortMapping {
                host_port: 53,
                container_port: 5353,
                protocol: "udp".into(),
                host_ip: "127.0.0.1".into(),
            }],
            ..Default::default()
        };
        let caps = BTreeSet::from(["portMappings".to_string()]);
        assert_eq!(
            Value::Object(runtime_config_json(&runtime, &caps)),
            json!({"portMappings":[{"hostPort":53,"containerPort":5353,"protocol":"udp","hostIP":"127.0.0.1"}]})
        );
    }
}
