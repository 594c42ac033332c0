//! CDI (Container Device Interface): the device specs found in `[cdi] spec_dirs`, and the
//! edits a container's requested devices make to its OCI spec. Both front ends reach it
//! through the core: the CRI's `CDI_devices` and `cdi.k8s.io/` annotations and the
//! Docker API's `DeviceRequests` (`--gpus`, `--device vendor.com/class=name`) all end as
//! the names in `ContainerSpec::cdi_devices`.
//!
//! Parsing, schema and version validation (CDI 0.3.0 onward) and the OCI edits come from
//! the `container-device-interface` crate. Discovery does not use its `Cache`, for what
//! it does that CDI users would not expect:
//! - its directory scan stops at the first bad spec file, so one malformed file would hide
//!   every other device; here a bad file is skipped and reported ([`CdiScan::errors`]);
//! - its name and annotation helpers print to stdout (the daemon's stdout is not a log);
//! - its OCI generator appends an env var the spec already has instead of replacing it,
//!   so CDI env is merged here, replacing the image's value as the Go reference does.
//!
//! So this module scans the dirs itself (the top level of each, `.json` and `.yaml`
//! files, as the Go reference), keeps parsed specs by path and content (every request
//! re-reads the small spec files and parses only the changed ones: a spec a device plugin
//! writes after wharfd started works at once), resolves priorities (a later dir
//! overrides an earlier one; two files of one dir defining the same device make it
//! unusable, and both files are reported), and refuses requested devices whose edits
//! conflict (the same container path or env var given different values).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use container_device_interface as cdi;
use oci_spec::runtime::Spec;

use crate::error::{ErrorKind, HasKind};

/// The annotation prefix kubelet's device plugins used before `CDI_devices` (values:
/// comma-separated qualified device names).
pub const ANNOTATION_PREFIX: &str = "cdi.k8s.io/";

/// Why requested CDI devices cannot be given to a container. All are the request's
/// fault or the spec's, so the front ends answer InvalidArgument / 400.
#[derive(Debug, thiserror::Error)]
pub enum CdiError {
    /// Not `vendor.com/class=name`.
    #[error("CDI device {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    /// No usable spec defines it.
    #[error("{0}")]
    Unknown(String),
    /// Two requested devices set one thing differently.
    #[error("CDI devices {first:?} and {second:?} conflict: {what}")]
    Conflict {
        first: String,
        second: String,
        what: String,
    },
    /// A device's edits cannot be applied (its host node is missing, ...).
    #[error("CDI device {name:?}: {reason}")]
    Edits { name: String, reason: String },
}

impl HasKind for CdiError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::InvalidArgument
    }
}

/// A spec file that was skipped, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecFileError {
    pub path: PathBuf,
    pub message: String,
}

struct ParsedFile {
    /// What was parsed: a file rewritten within one mtime tick is still seen.
    content: Vec<u8>,
    spec: Result<Arc<cdi::spec::Spec>, String>,
}

/// The spec dirs and what was last parsed from them.
pub struct CdiRegistry {
    dirs: Vec<PathBuf>,
    parsed: Mutex<HashMap<PathBuf, ParsedFile>>,
}

impl std::fmt::Debug for CdiRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CdiRegistry")
            .field("dirs", &self.dirs)
            .finish_non_exhaustive()
    }
}

struct Defined {
    spec: Arc<cdi::spec::Spec>,
    priority: usize,
    /// Another file of the same dir defines it too.
    clash: Option<String>,
}

/// The devices defined in the spec dirs at one moment.
pub struct CdiScan {
    dirs: Vec<PathBuf>,
    devices: BTreeMap<String, Defined>,
    errors: Vec<SpecFileError>,
}

/// One usable device, for listings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedDevice {
    /// `vendor.com/class=name`.
    pub name: String,
    pub spec_path: PathBuf,
}

impl CdiRegistry {
    pub fn new(dirs: Vec<PathBuf>) -> CdiRegistry {
        CdiRegistry {
            dirs,
            parsed: Mutex::new(HashMap::new()),
        }
    }

    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// The dirs as they are now (blocking: reads the files that changed).
    pub fn scan(&self) -> CdiScan {
        let mut errors = Vec::new();
        let mut specs = Vec::new();
        let mut seen = HashSet::new();
        let mut parsed = self.parsed.lock().unwrap_or_else(|e| e.into_inner());
        for (priority, dir) in self.dirs.iter().enumerate() {
            let entries = match std::fs::read_dir(dir) {
                Ok(entries) => entries,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                Err(err) => {
                    errors.push(SpecFileError {
                        path: dir.clone(),
                        message: format!("listing the spec dir: {err}"),
                    });
                    continue;
                }
            };
            let mut paths: Vec<PathBuf> = entries
                .filter_map(|entry| entry.ok().map(|entry| entry.path()))
                .filter(|path| is_spec_file(path))
                .collect();
            paths.sort();
            for path in paths {
                if !path.is_file() {
                    continue;
                }
                let content = match std::fs::read(&path) {
                    Ok(content) => content,
                    Err(err) => {
                        errors.push(SpecFileError {
                            path,
                            message: format!("reading the spec: {err}"),
                        });
                        continue;
                    }
                };
                if parsed.get(&path).is_none_or(|p| p.content != content) {
                    let spec = cdi::spec::read_spec(&path, priority as i32)
                        .map(Arc::new)
                        .map_err(|err| format!("{err:#}"));
                    if let Err(message) = &spec {
                        tracing::warn!(path = %path.display(), "CDI spec skipped: {message}");
                    }
                    parsed.insert(path.clone(), ParsedFile { content, spec });
                }
                seen.insert(path.clone());
                match &parsed[&path].spec {
                    Ok(spec) => specs.push((priority, spec.clone())),
                    Err(message) => errors.push(SpecFileError {
                        path: path.clone(),
                        message: message.clone(),
                    }),
                }
            }
        }
        parsed.retain(|path, _| seen.contains(path));
        drop(parsed);

        let mut devices: BTreeMap<String, Defined> = BTreeMap::new();
        for (priority, spec) in specs {
            let kind = format!("{}/{}", spec.get_vendor(), spec.get_class());
            for name in spec.devices.keys() {
                let qualified = format!("{kind}={name}");
                match devices.get_mut(&qualified) {
                    Some(old) if old.priority == priority => {
                        old.clash = Some(spec.get_path());
                    }
                    Some(old) if old.priority > priority => {}
                    _ => {
                        devices.insert(
                            qualified,
                            Defined {
                                spec: spec.clone(),
                                priority,
                                clash: None,
                            },
                        );
                    }
                }
            }
        }
        devices.retain(|name, defined| match &defined.clash {
            Some(other) => {
                let message = format!(
                    "device {name} is defined both here and in {other} (same spec dir): neither is used"
                );
                errors.push(SpecFileError {
                    path: PathBuf::from(defined.spec.get_path()),
                    message,
                });
                false
            }
            None => true,
        });
        CdiScan {
            dirs: self.dirs.clone(),
            devices,
            errors,
        }
    }

    /// The edits `names` make (none for no names; blocking when there are some).
    pub fn resolve(&self, names: &[String]) -> Result<DeviceEdits, CdiError> {
        if names.is_empty() {
            return Ok(DeviceEdits::default());
        }
        self.scan().resolve(names)
    }
}

fn is_spec_file(path: &Path) -> bool {
    path.extension()
        .and_then(|ext| ext.to_str())
        .is_some_and(|ext| ext.eq_ignore_ascii_case("json") || ext.eq_ignore_ascii_case("yaml"))
}

/// Checks `vendor.com/class=name` (the CDI syntax: vendor and class of letters, digits,
/// `.`, `-`, `_`; the name also `:`; each starting and ending with a letter or digit).
pub fn check_name(name: &str) -> Result<(), CdiError> {
    let invalid = |reason: &str| {
        Err(CdiError::InvalidName {
            name: crate::image::bounded(name, crate::image::MAX_ECHO).to_string(),
            reason: format!("{reason} (a CDI device is named vendor.com/class=name)"),
        })
    };
    let Some((kind, device)) = name.split_once('=') else {
        return invalid("no '='");
    };
    let Some((vendor, class)) = kind.split_once('/') else {
        return invalid("no vendor/class before '='");
    };
    let part = |text: &str, extra: &[char]| {
        !text.is_empty()
            && text.starts_with(|c: char| c.is_ascii_alphanumeric())
            && text.ends_with(|c: char| c.is_ascii_alphanumeric())
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c) || extra.contains(&c))
    };
    if !part(vendor, &['.']) {
        return invalid(
            "the vendor is empty or has characters other than letters, digits, '.', '-', '_'",
        );
    }
    if !part(class, &['.']) {
        return invalid(
            "the class is empty or has characters other than letters, digits, '.', '-', '_'",
        );
    }
    if !part(device, &['.', ':']) {
        return invalid(
            "the device is empty or has characters other than letters, digits, '.', ':', '-', '_'",
        );
    }
    Ok(())
}

/// The CDI device names in `cdi.k8s.io/` annotations (each value: comma-separated
/// names), in key order.
pub fn names_from_annotations(
    annotations: &HashMap<String, String>,
) -> Result<Vec<String>, CdiError> {
    let mut keys: Vec<&String> = annotations
        .keys()
        .filter(|key| key.starts_with(ANNOTATION_PREFIX))
        .collect();
    keys.sort();
    let mut names = Vec::new();
    for key in keys {
        for name in annotations[key].split(',').map(str::trim) {
            check_name(name).map_err(|err| CdiError::InvalidName {
                name: name.to_string(),
                reason: format!("in annotation {key}: {err}"),
            })?;
            names.push(name.to_string());
        }
    }
    Ok(names)
}

impl CdiScan {
    /// The usable devices, by name.
    pub fn devices(&self) -> Vec<ListedDevice> {
        self.devices
            .iter()
            .map(|(name, defined)| ListedDevice {
                name: name.clone(),
                spec_path: PathBuf::from(defined.spec.get_path()),
            })
            .collect()
    }

    /// Spec files (and dirs) that were skipped.
    pub fn errors(&self) -> &[SpecFileError] {
        &self.errors
    }

    fn searched(&self) -> String {
        let dirs: Vec<String> = self.dirs.iter().map(|d| d.display().to_string()).collect();
        dirs.join(", ")
    }

    fn unknown(&self, name: &str) -> CdiError {
        let kind = name.split_once('=').map_or(name, |(kind, _)| kind);
        let prefix = format!("{kind}=");
        let mut message = if self.devices.keys().any(|d| d.starts_with(&prefix)) {
            format!(
                "unknown CDI device {name:?}: the specs for {kind} in {} do not define it",
                self.searched()
            )
        } else {
            let mut message = format!("no CDI spec for {kind} in {}", self.searched());
            if kind.starts_with("nvidia.com/") {
                message.push_str(": generate one, e.g. with `nvidia-ctk cdi generate`");
            }
            message
        };
        if !self.errors.is_empty() {
            let skipped: Vec<String> = self
                .errors
                .iter()
                .map(|e| format!("{}: {}", e.path.display(), e.message))
                .collect();
            message.push_str(&format!(" (skipped spec files: {})", skipped.join("; ")));
        }
        CdiError::Unknown(message)
    }

    /// The first `count` devices of `kind` (`--gpus N`), leaving out `all`: numbered
    /// names in numeric order, then the others by name.
    pub fn first_devices(&self, kind: &str, count: usize) -> Result<Vec<String>, CdiError> {
        let prefix = format!("{kind}=");
        let mut names: Vec<&str> = self
            .devices
            .keys()
            .filter_map(|name| name.strip_prefix(&prefix))
            .filter(|device| *device != "all")
            .collect();
        if names.is_empty() {
            return Err(self.unknown(&format!("{kind}=0")));
        }
        names.sort_by_key(|device| {
            (
                device.parse::<u64>().unwrap_or(u64::MAX),
                device.to_string(),
            )
        });
        if names.len() < count {
            return Err(CdiError::Unknown(format!(
                "{count} {kind} devices were asked for, the CDI specs in {} define {}: {}",
                self.searched(),
                names.len(),
                names.join(", ")
            )));
        }
        Ok(names[..count]
            .iter()
            .map(|device| format!("{prefix}{device}"))
            .collect())
    }

    /// The merged edits of `names` (each applied once), refusing unknown names and
    /// conflicts; device nodes get their host node's type, numbers and mode where the
    /// spec leaves them out.
    pub fn resolve(&self, names: &[String]) -> Result<DeviceEdits, CdiError> {
        let mut unique: Vec<&String> = Vec::new();
        for name in names {
            check_name(name)?;
            if !unique.contains(&name) {
                unique.push(name);
            }
        }
        let mut merged = cdi::container_edits::ContainerEdits::new();
        let mut env: Vec<String> = Vec::new();
        let mut specs_applied: HashSet<String> = HashSet::new();
        // What each container path / env var was set to, and by which device.
        let mut claims: HashMap<String, (String, serde_json::Value)> = HashMap::new();
        for name in unique {
            let defined = self
                .devices
                .get(name.as_str())
                .ok_or_else(|| self.unknown(name))?;
            let device_name = name.split_once('=').map_or("", |(_, device)| device);
            let device = defined
                .spec
                .devices
                .get(device_name)
                .ok_or_else(|| self.unknown(name))?;
            let mut own = cdi::container_edits::ContainerEdits::new();
            let path = defined.spec.get_path();
            if specs_applied.insert(path) {
                if let Some(spec_edits) = &defined.spec.cdi_spec.container_edits {
                    append(&mut own, spec_edits.clone(), name)?;
                }
            }
            append(&mut own, device.edits().container_edits, name)?;
            let edits = &mut own.container_edits;
            for node in edits.device_nodes.iter_mut().flatten() {
                fill_from_host(node).map_err(|reason| CdiError::Edits {
                    name: name.clone(),
                    reason,
                })?;
            }
            for (key, value) in claims_of(edits) {
                match claims.get(&key) {
                    Some((owner, old)) if old != &value && owner != name => {
                        return Err(CdiError::Conflict {
                            first: owner.clone(),
                            second: name.clone(),
                            what: format!("both set {key}"),
                        });
                    }
                    _ => {
                        claims.insert(key, (name.clone(), value));
                    }
                }
            }
            for var in edits.env.take().unwrap_or_default() {
                set_env(&mut env, var);
            }
            append(&mut merged, own.container_edits, name)?;
        }
        Ok(DeviceEdits {
            edits: Some(merged),
            env,
            names: names.join(", "),
        })
    }
}

fn append(
    to: &mut cdi::container_edits::ContainerEdits,
    edits: cdi::specs::config::ContainerEdits,
    name: &str,
) -> Result<(), CdiError> {
    to.append(cdi::container_edits::ContainerEdits {
        container_edits: edits,
    })
    .map_err(|err| CdiError::Edits {
        name: name.to_string(),
        reason: format!("{err:#}"),
    })
}

/// The container paths and env vars `edits` set, with what they set them to. The
/// crate keeps the node and mount fields private, so they are read through serde.
fn claims_of(edits: &cdi::specs::config::ContainerEdits) -> Vec<(String, serde_json::Value)> {
    let mut claims = Vec::new();
    for node in edits.device_nodes.iter().flatten() {
        let value = serde_json::to_value(node).unwrap_or_default();
        if let Some(path) = value.get("path").and_then(|p| p.as_str()) {
            claims.push((format!("the device node {path}"), value.clone()));
        }
    }
    for mount in edits.mounts.iter().flatten() {
        let value = serde_json::to_value(mount).unwrap_or_default();
        if let Some(path) = value.get("containerPath").and_then(|p| p.as_str()) {
            claims.push((format!("the mount at {path}"), value.clone()));
        }
    }
    for var in edits.env.iter().flatten() {
        let (key, value) = var.split_once('=').unwrap_or((var, ""));
        claims.push((format!("the env var {key}"), serde_json::json!(value)));
    }
    claims
}

/// The host node's type, major/minor (when the spec gives no major) and file mode (when
/// it gives none): the container's node is made like the host's.
fn fill_from_host(node: &mut cdi::specs::config::DeviceNode) -> Result<(), String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let fields = serde_json::to_value(&*node).unwrap_or_default();
    let path = fields.get("path").and_then(|p| p.as_str()).unwrap_or("");
    let host = fields
        .get("hostPath")
        .and_then(|p| p.as_str())
        .filter(|p| !p.is_empty())
        .unwrap_or(path)
        .to_string();
    if !path.starts_with('/') || path.split('/').any(|c| c == "..") {
        return Err(format!(
            "device node path {path:?} must be absolute without '..'"
        ));
    }
    let given_type = fields.get("type").and_then(|t| t.as_str()).unwrap_or("");
    if given_type == "p" || (!given_type.is_empty() && node.major.is_some()) {
        return Ok(());
    }
    let meta = std::fs::metadata(&host).map_err(|err| format!("host device node {host}: {err}"))?;
    let file_type = meta.file_type();
    if !(file_type.is_char_device() || file_type.is_block_device() || file_type.is_fifo()) {
        return Err(format!("host path {host} is not a device node"));
    }
    if node.file_mode.is_none() {
        node.file_mode = Some(meta.mode() & 0o7777);
    }
    Ok(())
}

fn set_env(env: &mut Vec<String>, var: String) {
    let key = var
        .split_once('=')
        .map_or(var.as_str(), |(key, _)| key)
        .to_string();
    match env
        .iter_mut()
        .find(|old| old.split_once('=').map_or(old.as_str(), |(k, _)| k) == key)
    {
        Some(old) => *old = var,
        None => env.push(var),
    }
}

/// The resolved edits of a container's CDI devices.
#[derive(Debug, Clone, Default)]
pub struct DeviceEdits {
    edits: Option<cdi::container_edits::ContainerEdits>,
    env: Vec<String>,
    /// The devices, for errors.
    names: String,
}

impl DeviceEdits {
    /// Applies them to `spec`: device nodes with their device-cgroup allow rules, mounts,
    /// hooks, extra groups, and env (replacing a var the spec already has).
    pub fn apply(&self, spec: &mut Spec) -> Result<(), CdiError> {
        let Some(edits) = &self.edits else {
            return Ok(());
        };
        edits.clone().apply(spec).map_err(|err| CdiError::Edits {
            name: self.names.clone(),
            reason: format!("applying the edits: {err:#}"),
        })?;
        if !self.env.is_empty() {
            if let Some(process) = spec.process_mut() {
                let mut env = process.env().clone().unwrap_or_default();
                for var in &self.env {
                    set_env(&mut env, var.clone());
                }
                process.set_env(Some(env));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxDeviceType, ProcessBuilder};

    fn write(dir: &Path, file: &str, text: &str) {
        std::fs::write(dir.join(file), text).unwrap();
    }

    fn spec(kind: &str, devices: &str) -> String {
        format!(
            "cdiVersion: \"0.6.0\"\nkind: \"{kind}\"\ncontainerEdits:\n  env: [\"SPEC_WIDE=1\"]\ndevices:\n{devices}"
        )
    }

    fn oci() -> Spec {
        let mut spec = Spec::default();
        spec.set_process(Some(
            ProcessBuilder::default()
                .env(vec!["PATH=/bin".to_string(), "MODE=image".to_string()])
                .build()
                .unwrap(),
        ));
        spec
    }

    #[test]
    fn later_dirs_override_and_bad_files_are_skipped_not_fatal() {
        let low = tempfile::tempdir().unwrap();
        let high = tempfile::tempdir().unwrap();
        write(
            low.path(),
            "a.yaml",
            &spec(
                "example.com/dev",
                "  - name: one\n    containerEdits:\n      env: [\"WHO=low\"]\n  - name: two\n    containerEdits:\n      env: [\"WHO=low2\"]\n",
            ),
        );
        write(
            high.path(),
            "b.json",
            r#"{"cdiVersion":"0.5.0","kind":"example.com/dev","devices":[{"name":"one","containerEdits":{"env":["WHO=high"]}}]}"#,
        );
        write(high.path(), "broken.yaml", "cdiVersion: [not a spec");
        write(high.path(), "notes.txt", "ignored");
        let registry = CdiRegistry::new(vec![low.path().into(), high.path().into()]);
        let scan = registry.scan();
        let names: Vec<String> = scan.devices().into_iter().map(|d| d.name).collect();
        assert_eq!(names, ["example.com/dev=one", "example.com/dev=two"]);
        assert_eq!(scan.errors().len(), 1, "{:?}", scan.errors());
        assert_eq!(scan.errors()[0].path, high.path().join("broken.yaml"));
        assert_eq!(
            scan.devices()[0].spec_path,
            high.path().join("b.json"),
            "the later dir wins"
        );
        let mut target = oci();
        registry
            .resolve(&["example.com/dev=one".to_string()])
            .unwrap()
            .apply(&mut target)
            .unwrap();
        let env = target.process().as_ref().unwrap().env().clone().unwrap();
        assert!(env.contains(&"WHO=high".to_string()), "{env:?}");
    }

    #[test]
    fn same_device_twice_in_one_dir_is_unusable_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let device = "  - name: x\n    containerEdits:\n      env: [\"A=1\"]\n";
        write(dir.path(), "1.yaml", &spec("example.com/dup", device));
        write(dir.path(), "2.yaml", &spec("example.com/dup", device));
        let registry = CdiRegistry::new(vec![dir.path().into()]);
        let scan = registry.scan();
        assert!(scan.devices().is_empty());
        assert!(
            scan.errors()[0].message.contains("defined both"),
            "{:?}",
            scan.errors()
        );
    }

    #[test]
    fn new_and_changed_files_are_seen_without_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let registry = CdiRegistry::new(vec![dir.path().join("later"), dir.path().into()]);
        let name = vec!["example.com/late=d".to_string()];
        let err = registry.resolve(&name).unwrap_err().to_string();
        assert!(err.contains("no CDI spec for example.com/late in"), "{err}");
        assert!(err.contains(&dir.path().display().to_string()), "{err}");
        let device = "  - name: d\n    containerEdits:\n      env: [\"V=1\"]\n";
        write(dir.path(), "late.yaml", &spec("example.com/late", device));
        registry.resolve(&name).unwrap();
        write(
            dir.path(),
            "late.yaml",
            &spec(
                "example.com/late",
                "  - name: e\n    containerEdits:\n      env: [\"V=2\"]\n",
            ),
        );
        let err = registry.resolve(&name).unwrap_err().to_string();
        assert!(err.contains("do not define it"), "{err}");
    }

    #[test]
    fn names_are_checked_and_nvidia_gets_a_hint() {
        for bad in [
            "",
            "gpu",
            "nvidia.com/gpu",
            "nvidia.com=0",
            "/gpu=0",
            "a/b=-x",
            "a b/c=d",
        ] {
            let err = check_name(bad).unwrap_err().to_string();
            assert!(err.contains("vendor.com/class=name"), "{bad}: {err}");
        }
        check_name("nvidia.com/gpu=GPU-0a1b:2").unwrap();
        let registry = CdiRegistry::new(vec!["/nonexistent-cdi-dir".into()]);
        let err = registry
            .resolve(&["nvidia.com/gpu=all".into()])
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "no CDI spec for nvidia.com/gpu in /nonexistent-cdi-dir: generate one, e.g. with `nvidia-ctk cdi generate`"
        );
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    }

    #[test]
    fn annotations_give_names_and_refuse_bad_ones() {
        let mut annotations = HashMap::new();
        annotations.insert("other".to_string(), "x".to_string());
        annotations.insert("cdi.k8s.io/b".to_string(), "v.com/c=2".to_string());
        annotations.insert(
            "cdi.k8s.io/a".to_string(),
            "v.com/c=0,v.com/c=1".to_string(),
        );
        assert_eq!(
            names_from_annotations(&annotations).unwrap(),
            ["v.com/c=0", "v.com/c=1", "v.com/c=2"]
        );
        annotations.insert("cdi.k8s.io/c".to_string(), "bogus".to_string());
        let err = names_from_annotations(&annotations)
            .unwrap_err()
            .to_string();
        assert!(err.contains("cdi.k8s.io/c"), "{err}");
    }

    #[test]
    fn nodes_take_host_numbers_and_mode_and_conflicts_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "devs.yaml",
            &spec(
                "example.com/node",
                "  - name: a\n    containerEdits:\n      env: [\"MODE=a\"]\n      deviceNodes:\n        - path: /dev/fake\n          hostPath: /dev/null\n  - name: b\n    containerEdits:\n      deviceNodes:\n        - path: /dev/fake\n          hostPath: /dev/zero\n  - name: missing\n    containerEdits:\n      deviceNodes:\n        - path: /dev/gone\n          hostPath: /nonexistent/node\n",
            ),
        );
        let registry = CdiRegistry::new(vec![dir.path().into()]);
        let mut target = oci();
        // The same device twice is applied once.
        registry
            .resolve(&["example.com/node=a".into(), "example.com/node=a".into()])
            .unwrap()
            .apply(&mut target)
            .unwrap();
        let linux = target.linux().as_ref().unwrap();
        let node = &linux.devices().as_ref().unwrap()[0];
        assert_eq!(
            (node.typ(), node.major(), node.minor()),
            (LinuxDeviceType::C, 1, 3)
        );
        assert_eq!(node.file_mode(), Some(0o666));
        let rules = linux
            .resources()
            .as_ref()
            .unwrap()
            .devices()
            .clone()
            .unwrap();
        assert!(rules
            .iter()
            .any(|r| r.allow() && r.major() == Some(1) && r.minor() == Some(3)));
        let env = target.process().as_ref().unwrap().env().clone().unwrap();
        assert_eq!(
            env,
            ["PATH=/bin", "MODE=a", "SPEC_WIDE=1"],
            "replaced, not appended"
        );

        let err = registry
            .resolve(&["example.com/node=a".into(), "example.com/node=b".into()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("conflict") && err.contains("/dev/fake"),
            "{err}"
        );
        let err = registry
            .resolve(&["example.com/node=missing".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/node"), "{err}");
    }
}
