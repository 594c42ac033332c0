//! The spec's mounts: the default set (/proc, /dev, /sys, ...), /dev/shm, the pod's
//! /etc files, the CRI mounts and the rootfs propagation they need (containerd's
//! `WithMounts`).

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};

use crate::runtime::model::{ContainerSpec, Propagation};
use oci_spec::runtime::Mount;

use super::{PodContext, SpecError};

fn mount(dest: &str, typ: &str, source: &Path, options: &[&str]) -> Mount {
    let mut m = Mount::default();
    m.set_destination(PathBuf::from(dest));
    m.set_typ(Some(typ.to_string()));
    m.set_source(Some(source.to_path_buf()));
    m.set_options(Some(options.iter().map(|s| s.to_string()).collect()));
    m
}

/// `path` without `.` components and trailing slashes, for comparing destinations.
fn normalize(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}

/// The mounts: the default set, /dev/shm, the pod's /etc files, then the CRI mounts
/// (sorted so parents come before children). A CRI mount over a destination of the
/// first groups replaces it. Also returns the rootfs propagation the CRI mounts need
/// (shared for BIDIRECTIONAL, slave for HOST_TO_CONTAINER, as containerd; recursive in
/// every runtime, and spelled as the OCI spec allows: libcontainer refuses `rshared`).
pub(super) fn mounts(
    config: &ContainerSpec,
    pod: &PodContext,
    privileged: bool,
    readonly_rootfs: bool,
) -> Result<(Vec<Mount>, Option<String>), SpecError> {
    let sys_mode = if privileged { "rw" } else { "ro" };
    let mut base = vec![
        mount(
            "/proc",
            "proc",
            Path::new("proc"),
            &["nosuid", "noexec", "nodev"],
        ),
        mount(
            "/dev",
            "tmpfs",
            Path::new("tmpfs"),
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            Path::new("devpts"),
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            Path::new("mqueue"),
            &["nosuid", "noexec", "nodev"],
        ),
        mount(
            "/sys",
            "sysfs",
            Path::new("sysfs"),
            &["nosuid", "noexec", "nodev", sys_mode],
        ),
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            Path::new("cgroup"),
            &["nosuid", "noexec", "nodev", "relatime", sys_mode],
        ),
    ];
    base.push(match &pod.shm_path {
        Some(p) => mount("/dev/shm", "bind", p, &["rbind", "rprivate", "rw"]),
        None => mount(
            "/dev/shm",
            "tmpfs",
            Path::new("shm"),
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
    });
    let etc_mode = if readonly_rootfs { "ro" } else { "rw" };
    for (dest, src) in [
        ("/etc/hostname", &pod.hostname_file),
        ("/etc/hosts", &pod.hosts),
        ("/etc/resolv.conf", &pod.resolv_conf),
    ] {
        if let Some(src) = src {
            base.push(mount(dest, "bind", src, &["rbind", "rprivate", etc_mode]));
        }
    }

    let mut user_mounts: Vec<Mount> = Vec::new();
    let mut propagation: Option<&str> = None;
    for (i, m) in config.mounts.iter().enumerate() {
        let cfield = format!("mounts[{i}].container_path");
        let hfield = format!("mounts[{i}].host_path");
        let dest = Path::new(&m.container_path);
        if !dest.is_absolute() {
            return Err(SpecError::invalid(
                cfield,
                format!("{:?} is not an absolute path", m.container_path),
            ));
        }
        if dest.components().any(|c| c == Component::ParentDir) {
            return Err(SpecError::invalid(
                cfield,
                format!("{:?} contains '..'", m.container_path),
            ));
        }
        if !m.image.is_empty() {
            return Err(SpecError::Unsupported {
                field: format!("mounts[{i}].image"),
                reason: "image volume mounts".into(),
            });
        }
        if m.id_mapped {
            return Err(SpecError::Unsupported {
                field: format!("mounts[{i}].uid_mappings"),
                reason: "id-mapped mounts".into(),
            });
        }
        if let Some(tmpfs) = &m.tmpfs {
            // Docker's tmpfs mounts: noexec, nosuid, nodev, then size and mode.
            let mut options: Vec<String> = vec![
                "noexec".into(),
                "nosuid".into(),
                "nodev".into(),
                if m.readonly { "ro" } else { "rw" }.into(),
            ];
            if tmpfs.size_bytes < 0 {
                return Err(SpecError::invalid(
                    format!("mounts[{i}].tmpfs.size_bytes"),
                    "is negative",
                ));
            }
            if tmpfs.size_bytes > 0 {
                // dockerd's ConvertTmpfsOptions: the largest unit that divides it.
                let size = tmpfs.size_bytes;
                let text = [("g", 1i64 << 30), ("m", 1 << 20), ("k", 1 << 10)]
                    .iter()
                    .find(|(_, unit)| size % unit == 0)
                    .map(|(suffix, unit)| format!("size={}{suffix}", size / unit))
                    .unwrap_or_else(|| format!("size={size}"));
                options.push(text);
            }
            if tmpfs.mode != 0 {
                options.push(format!("mode={:o}", tmpfs.mode & 0o7777));
            }
            // Given ones last: they override the defaults (`exec`, `rw`...).
            options.extend(tmpfs.options.iter().cloned());
            let options: Vec<&str> = options.iter().map(String::as_str).collect();
            user_mounts.push(mount(
                &m.container_path,
                "tmpfs",
                Path::new("tmpfs"),
                &options,
            ));
            continue;
        }
        let src = Path::new(&m.host_path);
        if !src.is_absolute() {
            return Err(SpecError::invalid(
                hfield,
                format!("{:?} is not an absolute path", m.host_path),
            ));
        }
        let prop = match m.propagation {
            Propagation::Private => "rprivate",
            Propagation::HostToContainer => {
                if propagation.is_none() {
                    propagation = Some("slave");
                }
                "rslave"
            }
            Propagation::Bidirectional => {
                propagation = Some("shared");
                "rshared"
            }
        };
        let mut options = vec!["rbind", prop];
        if m.recursive_read_only {
            if !m.readonly || prop != "rprivate" {
                return Err(SpecError::invalid(
                    format!("mounts[{i}].recursive_read_only"),
                    "needs readonly and PROPAGATION_PRIVATE",
                ));
            }
            options.push("rro");
        } else {
            options.push(if m.readonly { "ro" } else { "rw" });
        }
        // selinux_relabel is ignored: wharf does not run with SELinux labels.
        user_mounts.push(mount(&m.container_path, "bind", src, &options));
    }

    let user_dests: HashSet<PathBuf> = user_mounts
        .iter()
        .map(|m| normalize(m.destination()))
        .collect();
    base.retain(|m| !user_dests.contains(&normalize(m.destination())));
    user_mounts.sort_by_key(|m| normalize(m.destination()).components().count());
    base.extend(user_mounts);
    Ok((base, propagation.map(str::to_string)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::spec::container_spec;
    use crate::runtime::spec::test_support::*;
    use oci_spec::runtime::Spec;

    fn find<'a>(spec: &'a Spec, dest: &str) -> Vec<&'a oci_spec::runtime::Mount> {
        spec.mounts()
            .as_ref()
            .unwrap()
            .iter()
            .filter(|m| m.destination() == Path::new(dest))
            .collect()
    }

    #[test]
    fn mounts_defaults_and_cri() {
        let spec = build(&config()).unwrap();
        for d in [
            "/proc",
            "/dev",
            "/dev/pts",
            "/dev/mqueue",
            "/sys",
            "/sys/fs/cgroup",
            "/dev/shm",
            "/etc/hosts",
            "/etc/resolv.conf",
        ] {
            assert_eq!(find(&spec, d).len(), 1, "{d}");
        }
        assert!(find(&spec, "/etc/hostname").is_empty());
        let shm = find(&spec, "/dev/shm")[0];
        assert_eq!(shm.typ().as_deref(), Some("bind"));
        assert!(find(&spec, "/sys")[0]
            .options()
            .as_ref()
            .unwrap()
            .contains(&"ro".to_string()));

        let mut cfg = config();
        let m = |c: &str, h: &str, ro: bool, p: Propagation| crate::runtime::model::Mount {
            container_path: c.into(),
            host_path: h.into(),
            readonly: ro,
            propagation: p,
            ..Default::default()
        };
        cfg.mounts = vec![
            m("/data/sub", "/host/sub", false, Propagation::Private),
            m("/data", "/host/data", true, Propagation::HostToContainer),
            m("/shared", "/host/shared", false, Propagation::Bidirectional),
            m("/etc/hosts", "/my/hosts", true, Propagation::Private),
        ];
        let spec = build(&cfg).unwrap();
        let opts_of = |d: &str| find(&spec, d)[0].options().clone().unwrap();
        assert_eq!(opts_of("/data"), s(&["rbind", "rslave", "ro"]));
        assert_eq!(opts_of("/data/sub"), s(&["rbind", "rprivate", "rw"]));
        assert_eq!(opts_of("/shared"), s(&["rbind", "rshared", "rw"]));
        let hosts = find(&spec, "/etc/hosts");
        assert_eq!(hosts.len(), 1);
        assert_eq!(hosts[0].source().as_deref(), Some(Path::new("/my/hosts")));
        let order: Vec<&Path> = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| m.destination().as_path())
            .collect();
        let pos = |d: &str| order.iter().position(|p| *p == Path::new(d)).unwrap();
        assert!(pos("/data") < pos("/data/sub"));
        assert_eq!(
            spec.linux()
                .as_ref()
                .unwrap()
                .rootfs_propagation()
                .as_deref(),
            Some("shared")
        );

        let mut cfg = config();
        cfg.mounts = vec![
            m("/ok", "/host", false, Propagation::Private),
            m("rel/path", "/host", false, Propagation::Private),
        ];
        assert_eq!(field(build(&cfg).unwrap_err()), "mounts[1].container_path");
        cfg.mounts[1] = m("/a/../etc", "/host", false, Propagation::Private);
        assert_eq!(field(build(&cfg).unwrap_err()), "mounts[1].container_path");
        cfg.mounts[1] = m("/a", "host", false, Propagation::Private);
        assert_eq!(field(build(&cfg).unwrap_err()), "mounts[1].host_path");

        // no pod shm: a private tmpfs
        let root = rootfs();
        let mut p = pod();
        p.shm_path = None;
        let spec = container_spec(&config(), &p, &image(), &opts(root.path())).unwrap();
        assert_eq!(find(&spec, "/dev/shm")[0].typ().as_deref(), Some("tmpfs"));
    }
}
