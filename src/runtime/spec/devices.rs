//! Devices: the device cgroup rules (containerd's default allow list, or everything for
//! a privileged container) and the CRI devices, as nodes and rules (containerd's
//! `WithDevices`).

use std::path::{Component, Path};

use oci_spec::runtime::{LinuxDevice, LinuxDeviceCgroup, LinuxDeviceType};

use super::SpecError;

fn device_rule(
    allow: bool,
    typ: LinuxDeviceType,
    major: Option<i64>,
    minor: Option<i64>,
    access: &str,
) -> LinuxDeviceCgroup {
    let mut d = LinuxDeviceCgroup::default();
    d.set_allow(allow);
    d.set_typ(Some(typ));
    d.set_major(major);
    d.set_minor(minor);
    d.set_access(Some(access.to_string()));
    d
}

/// The device cgroup: everything for a privileged container; otherwise deny all, then
/// allow mknod of any device and use of the standard nodes (null, zero, full, random,
/// urandom, tty, console, ptmx, pts, tun), as containerd's default.
pub(super) fn device_rules(privileged: bool) -> Vec<LinuxDeviceCgroup> {
    use LinuxDeviceType::{A, B, C};
    if privileged {
        return vec![device_rule(true, A, None, None, "rwm")];
    }
    let mut rules = vec![
        device_rule(false, A, None, None, "rwm"),
        device_rule(true, C, None, None, "m"),
        device_rule(true, B, None, None, "m"),
    ];
    for (major, minor) in [
        (1, 3),
        (1, 5),
        (1, 7),
        (1, 8),
        (1, 9),
        (5, 0),
        (5, 1),
        (5, 2),
        (10, 200),
    ] {
        rules.push(device_rule(true, C, Some(major), Some(minor), "rwm"));
    }
    rules.push(device_rule(true, C, Some(136), None, "rwm"));
    rules
}

/// The CRI devices: each host device node (followed if a symlink, as kubelet passes
/// /dev paths) becomes a device node at `container_path` with the host node's type,
/// numbers and mode, and a device cgroup rule allowing `permissions` (a subset of
/// "rwm", default "rwm").
pub(super) fn devices(
    config: &crate::runtime::model::ContainerSpec,
) -> Result<(Vec<LinuxDevice>, Vec<LinuxDeviceCgroup>), SpecError> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut nodes = Vec::new();
    let mut rules = Vec::new();
    for (i, d) in config.devices.iter().enumerate() {
        let dest = Path::new(&d.container_path);
        if !dest.is_absolute() || dest.components().any(|c| c == Component::ParentDir) {
            return Err(SpecError::invalid(
                format!("devices[{i}].container_path"),
                format!(
                    "{:?} must be an absolute path without '..'",
                    d.container_path
                ),
            ));
        }
        let hfield = format!("devices[{i}].host_path");
        let meta = std::fs::metadata(&d.host_path)
            .map_err(|e| SpecError::invalid(&hfield, format!("{:?}: {e}", d.host_path)))?;
        let typ = if meta.file_type().is_char_device() {
            LinuxDeviceType::C
        } else if meta.file_type().is_block_device() {
            LinuxDeviceType::B
        } else {
            return Err(SpecError::invalid(
                hfield,
                format!("{:?} is not a device node", d.host_path),
            ));
        };
        let perms = if d.permissions.is_empty() {
            "rwm"
        } else {
            d.permissions.as_str()
        };
        if !perms.chars().all(|c| "rwm".contains(c)) {
            return Err(SpecError::invalid(
                format!("devices[{i}].permissions"),
                format!("{perms:?} is not a subset of \"rwm\""),
            ));
        }
        let major = nix::sys::stat::major(meta.rdev()) as i64;
        let minor = nix::sys::stat::minor(meta.rdev()) as i64;
        let mut node = LinuxDevice::default();
        node.set_path(dest.to_path_buf());
        node.set_typ(typ);
        node.set_major(major);
        node.set_minor(minor);
        node.set_file_mode(Some(meta.mode() & 0o7777));
        node.set_uid(Some(0));
        node.set_gid(Some(0));
        nodes.push(node);
        rules.push(device_rule(true, typ, Some(major), Some(minor), perms));
    }
    Ok((nodes, rules))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::spec::test_support::*;

    #[test]
    fn cri_devices() {
        let mut cfg = config();
        cfg.devices = vec![crate::runtime::model::Device {
            container_path: "/dev/mynull".into(),
            host_path: "/dev/null".into(),
            permissions: "rw".into(),
        }];
        let spec = build(&cfg).unwrap();
        let l = spec.linux().as_ref().unwrap();
        let dev = &l.devices().clone().unwrap()[0];
        assert_eq!(dev.path(), Path::new("/dev/mynull"));
        assert_eq!(
            (dev.typ(), dev.major(), dev.minor()),
            (LinuxDeviceType::C, 1, 3)
        );
        let rules = l.resources().as_ref().unwrap().devices().clone().unwrap();
        let last = rules.last().unwrap();
        assert!(last.allow());
        assert_eq!((last.major(), last.minor()), (Some(1), Some(3)));
        assert_eq!(last.access().as_deref(), Some("rw"));

        cfg.devices[0].permissions = "rwx".into();
        assert_eq!(field(build(&cfg).unwrap_err()), "devices[0].permissions");
        cfg.devices[0].permissions.clear();
        cfg.devices[0].host_path = "/etc/hostname-nope".into();
        assert_eq!(field(build(&cfg).unwrap_err()), "devices[0].host_path");
        cfg.devices[0].host_path = "/proc/self/status".into();
        assert_eq!(field(build(&cfg).unwrap_err()), "devices[0].host_path");
    }
}
