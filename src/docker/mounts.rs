//! A create's mounts, as dockerd 20.10 reads them: `HostConfig.Binds` (`-v`, the
//! linux parser's `src:dst[:mode]`), `HostConfig.Mounts` (`--mount`), `VolumesFrom`
//! and the anonymous volumes of `Config.Volumes` and the image's `VOLUME`s, into the
//! core's mounts (a volume is named there; the runtime makes or finds it). Also the
//! `Mounts` of inspect and list (dockerd's `MountPoint`). Errors are dockerd's.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::error::ApiError;
use crate::runtime::model::{Mount, MountKind, Propagation, TmpfsOptions, VolumeSource};

fn bounded(text: &str) -> String {
    crate::image::bounded(text, crate::image::MAX_ECHO)
}

/// A JSON `null` read as the type's default (docker-py sends `"Source": null`).
pub fn null_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// `HostConfig.Mounts[]` (the API's `mount.Mount`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ApiMount {
    #[serde(rename = "Type", deserialize_with = "null_default")]
    pub kind: String,
    #[serde(deserialize_with = "null_default")]
    pub source: String,
    #[serde(deserialize_with = "null_default")]
    pub target: String,
    #[serde(deserialize_with = "null_default")]
    pub read_only: bool,
    #[serde(deserialize_with = "null_default")]
    pub consistency: String,
    pub bind_options: Option<BindOptions>,
    pub volume_options: Option<VolumeOptions>,
    pub tmpfs_options: Option<ApiTmpfsOptions>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct BindOptions {
    #[serde(deserialize_with = "null_default")]
    pub propagation: String,
    #[serde(deserialize_with = "null_default")]
    pub non_recursive: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct VolumeOptions {
    #[serde(deserialize_with = "null_default")]
    pub no_copy: bool,
    pub labels: Option<HashMap<String, String>>,
    pub driver_config: Option<DriverConfig>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct DriverConfig {
    #[serde(deserialize_with = "null_default")]
    pub name: String,
    pub options: Option<HashMap<String, String>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ApiTmpfsOptions {
    #[serde(deserialize_with = "null_default")]
    pub size_bytes: i64,
    #[serde(deserialize_with = "null_default")]
    pub mode: u32,
}

/// The linux parser's modes: one each of rw/ro, z/Z, a propagation, nocopy and a
/// consistency.
fn valid_mode(mode: &str) -> bool {
    if mode.is_empty() {
        return true;
    }
    let mut counts = [0u8; 5];
    for option in mode.split(',') {
        let slot = match option {
            "rw" | "ro" => 0,
            "z" | "Z" => 1,
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" => 2,
            "nocopy" => 3,
            "consistent" | "cached" | "delegated" => 4,
            _ => return false,
        };
        counts[slot] += 1;
    }
    counts.iter().all(|c| *c <= 1)
}

fn propagation_of(word: &str) -> Option<Propagation> {
    match word {
        "private" | "rprivate" => Some(Propagation::Private),
        "slave" | "rslave" => Some(Propagation::HostToContainer),
        "shared" | "rshared" => Some(Propagation::Bidirectional),
        _ => None,
    }
}

/// The checks every mount's target gets (dockerd's `validateMountConfig`).
fn check_target(kind: &str, target: &str) -> Result<(), String> {
    let config = |err: String| format!("invalid mount config for type {kind:?}: {err}");
    if target.is_empty() {
        return Err(config("field Target must not be empty".into()));
    }
    if target == "/" {
        return Err(config(
            "invalid specification: destination can't be '/'".into(),
        ));
    }
    if !target.starts_with('/') {
        return Err(config(format!(
            "invalid mount path: '{}' mount path must be absolute",
            bounded(target)
        )));
    }
    Ok(())
}

/// One `Binds` entry: `/host:/ctr[:mode]` (a bind), `name:/ctr[:mode]` (a named
/// volume, made if missing), `/ctr` (an anonymous volume). `volume_driver` is
/// `HostConfig.VolumeDriver`.
pub fn parse_bind(raw: &str, volume_driver: &str) -> Result<Mount, ApiError> {
    let invalid_spec = || format!("invalid volume specification: '{}'", bounded(raw));
    let parts: Vec<&str> = raw.split(':').collect();
    let (source, target, mode) = match parts.as_slice() {
        [target] => ("", *target, ""),
        [_, second] if valid_mode(second) => return Err(ApiError::bad_request(invalid_spec())),
        [source, target] => (*source, *target, ""),
        [source, target, mode] => (*source, *target, *mode),
        _ => return Err(ApiError::bad_request(invalid_spec())),
    };
    if !valid_mode(mode) {
        return Err(ApiError::bad_request(format!(
            "invalid mode: {}",
            bounded(mode)
        )));
    }
    let is_bind = source.starts_with('/');
    let kind = if is_bind { "bind" } else { "volume" };
    let with_spec = |err: String| ApiError::bad_request(format!("{}: {err}", invalid_spec()));
    check_target(kind, target).map_err(with_spec)?;
    let words: Vec<&str> = mode.split(',').filter(|w| !w.is_empty()).collect();
    let readonly = words.contains(&"ro");
    let propagation = words.iter().find_map(|w| propagation_of(w));
    let mut mount = Mount {
        container_path: target.to_string(),
        readonly,
        mode: mode.to_string(),
        ..Default::default()
    };
    if is_bind {
        mount.host_path = source.to_string();
        mount.propagation = propagation.unwrap_or_default();
        mount.selinux_relabel = words.iter().any(|w| matches!(*w, "z" | "Z"));
        return Ok(mount);
    }
    if propagation.is_some() {
        return Err(with_spec(
            "invalid mount config for type \"volume\": field BindOptions must not be specified"
                .into(),
        ));
    }
    if mount.mode.is_empty() {
        mount.mode = "z".to_string();
    }
    mount.volume = Some(VolumeSource {
        name: source.to_string(),
        driver: volume_driver.to_string(),
        no_copy: words.contains(&"nocopy"),
        ..Default::default()
    });
    Ok(mount)
}

/// One `HostConfig.Mounts` entry. A bind's source must exist (unlike `-v`'s).
pub fn parse_api_mount(m: &ApiMount, volume_driver: &str) -> Result<Mount, ApiError> {
    let kind = m.kind.as_str();
    let config =
        |err: &str| ApiError::bad_request(format!("invalid mount config for type {kind:?}: {err}"));
    if !matches!(kind, "bind" | "volume" | "tmpfs") {
        return Err(config("mount type unknown"));
    }
    check_target(kind, &m.target).map_err(ApiError::bad_request)?;
    let mut mount = Mount {
        container_path: m.target.clone(),
        readonly: m.read_only,
        ..Default::default()
    };
    match kind {
        "bind" => {
            if m.source.is_empty() {
                return Err(config("field Source must not be empty"));
            }
            if m.volume_options.is_some() {
                return Err(config("field VolumeOptions must not be specified"));
            }
            if m.tmpfs_options.is_some() {
                return Err(config("field TmpfsOptions must not be specified"));
            }
            let propagation = m
                .bind_options
                .as_ref()
                .map(|o| o.propagation.as_str())
                .unwrap_or_default();
            if !propagation.is_empty() {
                mount.propagation = propagation_of(propagation).ok_or_else(|| {
                    config(&format!(
                        "invalid propagation mode: {}",
                        bounded(propagation)
                    ))
                })?;
            }
            if !m.source.starts_with('/') {
                return Err(config(&format!(
                    "invalid mount path: '{}' mount path must be absolute",
                    bounded(&m.source)
                )));
            }
            if std::fs::symlink_metadata(&m.source).is_err() {
                return Err(config(&format!(
                    "bind source path does not exist: {}",
                    bounded(&m.source)
                )));
            }
            mount.host_path = m.source.clone();
        }
        "volume" => {
            if m.bind_options.is_some() {
                return Err(config("field BindOptions must not be specified"));
            }
            if m.tmpfs_options.is_some() {
                return Err(config("field TmpfsOptions must not be specified"));
            }
            if m.source.is_empty() && m.read_only {
                return Err(config(
                    "must not set ReadOnly mode when using anonymous volumes",
                ));
            }
            let options = m.volume_options.clone().unwrap_or_default();
            let driver = options.driver_config.clone().unwrap_or_default();
            mount.mode = "z".to_string();
            mount.volume = Some(VolumeSource {
                name: m.source.clone(),
                driver: if driver.name.is_empty() {
                    volume_driver.to_string()
                } else {
                    driver.name
                },
                labels: options.labels,
                options: driver.options,
                anonymous: false,
                no_copy: options.no_copy,
                made: false,
            });
        }
        _ => {
            if m.bind_options.is_some() {
                return Err(config("field BindOptions must not be specified"));
            }
            if m.volume_options.is_some() {
                return Err(config("field VolumeOptions must not be specified"));
            }
            if !m.source.is_empty() {
                return Err(config("field Source must not be specified"));
            }
            let options = m.tmpfs_options.clone().unwrap_or_default();
            if options.size_bytes < 0 {
                return Err(config(&format!(
                    "invalid tmpfs size: {} (must not be negative)",
                    options.size_bytes
                )));
            }
            mount.tmpfs = Some(TmpfsOptions {
                size_bytes: options.size_bytes,
                mode: options.mode & 0o7777,
                ..Default::default()
            });
        }
    }
    Ok(mount)
}

fn normalized(path: &str) -> String {
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        "/".to_string()
    } else {
        trimmed.to_string()
    }
}

/// `Binds` and `Mounts` together; a destination twice is dockerd's
/// "Duplicate mount point".
pub fn explicit_mounts(
    binds: &[String],
    api_mounts: &[ApiMount],
    volume_driver: &str,
) -> Result<Vec<Mount>, ApiError> {
    let mut mounts = Vec::new();
    let mut seen = HashSet::new();
    for bind in binds {
        let mount = parse_bind(bind, volume_driver)?;
        if !seen.insert(normalized(&mount.container_path)) {
            return Err(ApiError::bad_request(format!(
                "Duplicate mount point: {}",
                bounded(&mount.container_path)
            )));
        }
        mounts.push(mount);
    }
    for api_mount in api_mounts {
        let mount = parse_api_mount(api_mount, volume_driver)?;
        if !seen.insert(normalized(&mount.container_path)) {
            return Err(ApiError::bad_request(format!(
                "Duplicate mount point: {}",
                bounded(&mount.container_path)
            )));
        }
        mounts.push(mount);
    }
    Ok(mounts)
}

/// `HostConfig.Tmpfs` (`--tmpfs /path[:opts]`): a tmpfs at each path, over any other
/// mount there (dockerd's precedence), with the options after Docker's defaults.
pub fn add_tmpfs_flags(
    mounts: &mut Vec<Mount>,
    tmpfs: Option<&HashMap<String, String>>,
) -> Result<(), ApiError> {
    let Some(tmpfs) = tmpfs else {
        return Ok(());
    };
    let mut paths: Vec<&String> = tmpfs.keys().collect();
    paths.sort();
    for path in paths {
        if path == "/" {
            return Err(ApiError::bad_request(
                "invalid specification: destination can't be '/'",
            ));
        }
        if !path.starts_with('/') {
            return Err(ApiError::bad_request(format!(
                "invalid mount path: '{}' mount path must be absolute",
                bounded(path)
            )));
        }
        let data = tmpfs.get(path).map(String::as_str).unwrap_or_default();
        let dest = normalized(path);
        mounts.retain(|m| normalized(&m.container_path) != dest);
        mounts.push(Mount {
            container_path: path.clone(),
            tmpfs: Some(TmpfsOptions {
                options: data
                    .split(',')
                    .filter(|o| !o.is_empty())
                    .map(str::to_string)
                    .collect(),
                flag: true,
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    Ok(())
}

/// A `VolumesFrom` entry: the container's name or ID and whether it asks read-only
/// (dockerd's `ParseVolumesFrom`: no propagation or copy mode there).
pub fn parse_volumes_from(entry: &str) -> Result<(&str, bool), ApiError> {
    if entry.is_empty() {
        return Err(ApiError::bad_request(
            "volumes-from specification cannot be an empty string",
        ));
    }
    let (name, mode) = entry.split_once(':').unwrap_or((entry, ""));
    let words: Vec<&str> = mode.split(',').collect();
    let refused = words
        .iter()
        .any(|w| propagation_of(w).is_some() || *w == "nocopy");
    if !valid_mode(mode) || refused {
        return Err(ApiError::bad_request(format!(
            "invalid mode: {}",
            bounded(mode)
        )));
    }
    Ok((name, words.contains(&"ro")))
}

/// The mounts another container lends (`--volumes-from`): its binds and volumes (not
/// its tmpfs), read-only when it has them so or `readonly` asks, never copied up again.
pub fn lent_mounts(from: &[Mount], readonly: bool) -> Vec<Mount> {
    from.iter()
        .filter(|m| m.kind() != MountKind::Tmpfs)
        .cloned()
        .map(|mut m| {
            m.readonly |= readonly;
            m.mode = String::new();
            if let Some(volume) = m.volume.as_mut() {
                volume.no_copy = true;
                volume.made = false;
            }
            m
        })
        .collect()
}

/// Everything a container mounts, in dockerd's order of precedence: `VolumesFrom`
/// (later sources win), then `explicit` (Binds and Mounts) over them, then an
/// anonymous volume for each of `anonymous` (Config.Volumes and the image's VOLUMEs)
/// not mounted already.
pub fn merge(
    lent: Vec<Mount>,
    explicit: Vec<Mount>,
    anonymous: &[String],
    volume_driver: &str,
) -> Vec<Mount> {
    let explicit_dests: HashSet<String> = explicit
        .iter()
        .map(|m| normalized(&m.container_path))
        .collect();
    let mut by_dest: Vec<Mount> = Vec::new();
    for m in lent {
        let dest = normalized(&m.container_path);
        if explicit_dests.contains(&dest) {
            continue;
        }
        by_dest.retain(|other| normalized(&other.container_path) != dest);
        by_dest.push(m);
    }
    by_dest.extend(explicit);
    for path in anonymous {
        if path.is_empty() {
            continue;
        }
        let dest = normalized(path);
        if by_dest
            .iter()
            .any(|m| normalized(&m.container_path) == dest)
        {
            continue;
        }
        by_dest.push(Mount {
            container_path: path.clone(),
            volume: Some(VolumeSource {
                driver: volume_driver.to_string(),
                anonymous: true,
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    by_dest
}

/// The paths of `Config.Volumes` (`-v /ctr` lands there), checked as dockerd checks
/// a destination.
pub fn config_volumes(volumes: Option<&HashMap<String, Value>>) -> Result<Vec<String>, ApiError> {
    let mut paths: Vec<String> = volumes
        .map(|v| v.keys().cloned().collect())
        .unwrap_or_default();
    paths.sort();
    for path in &paths {
        check_target("volume", path).map_err(|err| {
            ApiError::bad_request(format!(
                "invalid volume specification: '{}': {err}",
                bounded(path)
            ))
        })?;
    }
    Ok(paths)
}

/// dockerd's `MountPoint` JSON of a container's mount (None for a `--tmpfs` one,
/// which dockerd shows in `HostConfig.Tmpfs` only).
pub fn mount_point_json(m: &Mount) -> Option<Value> {
    if m.tmpfs.as_ref().is_some_and(|t| t.flag) {
        return None;
    }
    Some(match (&m.volume, &m.tmpfs) {
        (Some(volume), _) => json!({
            "Type": "volume",
            "Name": volume.name,
            "Source": m.host_path,
            "Destination": m.container_path,
            "Driver": if volume.driver.is_empty() { "local" } else { volume.driver.as_str() },
            "Mode": m.mode,
            "RW": !m.readonly,
            "Propagation": "",
        }),
        (None, Some(_)) => json!({
            "Type": "tmpfs",
            "Source": "",
            "Destination": m.container_path,
            "Mode": m.mode,
            "RW": !m.readonly,
            "Propagation": "",
        }),
        (None, None) => json!({
            "Type": "bind",
            "Source": m.host_path,
            "Destination": m.container_path,
            "Mode": m.mode,
            "RW": !m.readonly,
            "Propagation": match m.propagation {
                Propagation::Private => "rprivate",
                Propagation::HostToContainer => "rslave",
                Propagation::Bidirectional => "rshared",
            },
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_as_the_linux_parser_reads_them() {
        let m = parse_bind("/srv:/data:ro,z,rshared", "").unwrap();
        assert_eq!(m.host_path, "/srv");
        assert!(m.readonly);
        assert_eq!(m.propagation, Propagation::Bidirectional);
        assert_eq!(m.mode, "ro,z,rshared");
        let m = parse_bind("data:/data", "").unwrap();
        assert_eq!(m.volume.as_ref().unwrap().name, "data");
        assert_eq!(m.mode, "z");
        let m = parse_bind("/data", "").unwrap();
        assert_eq!(m.volume.as_ref().unwrap().name, "");
        let m = parse_bind("data:/data:nocopy", "").unwrap();
        assert!(m.volume.unwrap().no_copy);
        let err = |raw: &str| parse_bind(raw, "").unwrap_err().message;
        assert_eq!(err("/data:ro"), "invalid volume specification: '/data:ro'");
        assert_eq!(err("a:b:c:d"), "invalid volume specification: 'a:b:c:d'");
        assert_eq!(err("/a:/b:bogus"), "invalid mode: bogus");
        assert_eq!(err("/a:/b:ro,rw"), "invalid mode: ro,rw");
        assert_eq!(
            err("/a:rel"),
            "invalid volume specification: '/a:rel': invalid mount config for type \"bind\": \
             invalid mount path: 'rel' mount path must be absolute"
        );
        assert!(err("/a:/").contains("destination can't be '/'"));
        assert!(err("v:/x:rshared").contains("field BindOptions must not be specified"));
    }

    #[test]
    fn api_mounts_as_dockerd_checks_them() {
        let mount = |json: Value| parse_api_mount(&serde_json::from_value(json).unwrap(), "");
        let m = mount(json!({"Type": "tmpfs", "Target": "/t",
            "TmpfsOptions": {"SizeBytes": 1048576, "Mode": 448}}))
        .unwrap();
        assert_eq!(m.tmpfs.unwrap().size_bytes, 1048576);
        let m = mount(json!({"Type": "volume", "Source": "v", "Target": "/v",
            "VolumeOptions": {"NoCopy": true}}))
        .unwrap();
        assert!(m.volume.unwrap().no_copy);
        // docker-py's nulls.
        let m = mount(json!({"Type": "volume", "Source": null, "Target": "/a",
            "ReadOnly": false, "Consistency": null}))
        .unwrap();
        assert_eq!(m.volume.unwrap().name, "");
        let err = |json| mount(json).unwrap_err().message;
        assert_eq!(
            err(json!({"Type": "bind", "Source": "/no/such/dir", "Target": "/x"})),
            "invalid mount config for type \"bind\": bind source path does not exist: /no/such/dir"
        );
        assert_eq!(
            err(json!({"Type": "nfs", "Target": "/x"})),
            "invalid mount config for type \"nfs\": mount type unknown"
        );
        assert!(
            err(json!({"Type": "volume", "Target": "/x", "ReadOnly": true}))
                .contains("anonymous volumes")
        );
        assert!(err(json!({"Type": "tmpfs", "Source": "x", "Target": "/x"}))
            .contains("field Source must not be specified"));
        assert!(err(json!({"Type": "bind", "Source": "/", "Target": "/x",
            "BindOptions": {"Propagation": "bogus"}}))
        .contains("invalid propagation mode: bogus"));
    }

    #[test]
    fn merge_order_and_duplicates() {
        let explicit = explicit_mounts(&["/a:/data".into()], &[], "").unwrap();
        let lent = vec![
            parse_bind("/l:/data", "").unwrap(),
            parse_bind("/l:/other", "").unwrap(),
        ];
        let all = merge(lent, explicit, &["/data".into(), "/anon".into()], "");
        let dests: Vec<&str> = all.iter().map(|m| m.container_path.as_str()).collect();
        assert_eq!(dests, vec!["/other", "/data", "/anon"]);
        assert_eq!(all[1].host_path, "/a");
        assert!(all[2].volume.as_ref().unwrap().anonymous);
        let err = explicit_mounts(&["/a:/d".into(), "v:/d/".into()], &[], "").unwrap_err();
        assert_eq!(err.message, "Duplicate mount point: /d/");
        assert_eq!(parse_volumes_from("c:ro").unwrap(), ("c", true));
        assert_eq!(parse_volumes_from("c").unwrap(), ("c", false));
        assert!(parse_volumes_from("c:bad").is_err());
        assert!(parse_volumes_from("c:rshared").is_err());
        assert!(parse_volumes_from("c:nocopy").is_err());
        assert!(parse_volumes_from("").is_err());
    }
}
