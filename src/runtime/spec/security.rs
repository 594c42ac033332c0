//! Confinement beyond capabilities: the seccomp profile (containerd's `WithSeccomp`)
//! and the masked and read-only paths (`WithMaskedPaths`, `WithReadonlyPaths`).

use std::collections::HashSet;

use oci_spec::runtime::{Capability, LinuxSeccomp};

use super::{SpecError, SpecOptions};
use crate::runtime::model::{Seccomp, SecurityOptions};
use crate::runtime::seccomp;

/// Docker's (and containerd's) masked paths.
pub const DEFAULT_MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Docker's (and containerd's) read-only paths.
pub const DEFAULT_READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The masked and read-only paths: none for a privileged container; else the request's,
/// or Docker's defaults where it gives none.
pub(super) fn masked_and_readonly_paths(
    sc: &SecurityOptions,
    privileged: bool,
) -> (Vec<String>, Vec<String>) {
    if privileged {
        (Vec::new(), Vec::new())
    } else {
        let masked = if sc.masked_paths.is_empty() {
            DEFAULT_MASKED_PATHS.iter().map(|s| s.to_string()).collect()
        } else {
            sc.masked_paths.clone()
        };
        let readonly = if sc.readonly_paths.is_empty() {
            DEFAULT_READONLY_PATHS
                .iter()
                .map(|s| s.to_string())
                .collect()
        } else {
            sc.readonly_paths.clone()
        };
        (masked, readonly)
    }
}

/// The seccomp profile, as containerd: none for privileged containers; `RuntimeDefault`
/// -> wharf's default profile for the final capability set; `Unconfined` -> none;
/// `Localhost` -> the JSON file. (The CRI front end reads an unset `seccomp` as
/// Unconfined, as containerd does unless configured otherwise; kubelet sends
/// RuntimeDefault when its `seccompDefault` is on. Docker's default is RuntimeDefault.)
pub(super) fn seccomp_profile(
    sc: &SecurityOptions,
    privileged: bool,
    caps: &HashSet<Capability>,
    opts: &SpecOptions,
) -> Result<Option<LinuxSeccomp>, SpecError> {
    if privileged {
        return Ok(None);
    }
    match &sc.seccomp {
        Seccomp::Unconfined => Ok(None),
        Seccomp::RuntimeDefault => Ok(Some(seccomp::default_profile(caps))),
        Seccomp::Localhost(reference) => {
            let path = seccomp::localhost_path(reference, &opts.seccomp_profile_root)?;
            Ok(Some(seccomp::load_profile(
                &path,
                seccomp::host_arch(),
                seccomp::host_kernel(),
                caps,
            )?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::spec::container_spec;
    use crate::runtime::spec::test_support::*;
    use oci_spec::runtime::LinuxSeccompAction;
    use std::path::Path;

    #[test]
    fn masked_paths_default_override_privileged() {
        let spec = build(&config()).unwrap();
        let l = spec.linux().as_ref().unwrap();
        let masked = l.masked_paths().clone().unwrap();
        assert!(masked.contains(&"/proc/kcore".to_string()));
        assert!(masked.contains(&"/sys/firmware".to_string()));
        assert!(l
            .readonly_paths()
            .clone()
            .unwrap()
            .contains(&"/proc/sys".to_string()));
        assert!(
            l.seccomp().is_none(),
            "unset seccomp is unconfined, as containerd"
        );

        let mut cfg = config();
        sc(&mut cfg).masked_paths = s(&["/proc/x"]);
        let spec = build(&cfg).unwrap();
        assert_eq!(
            spec.linux()
                .as_ref()
                .unwrap()
                .masked_paths()
                .clone()
                .unwrap(),
            s(&["/proc/x"])
        );

        let mut cfg = config();
        sc(&mut cfg).privileged = true;
        sc(&mut cfg).seccomp = Seccomp::RuntimeDefault;
        let spec = build(&cfg).unwrap();
        let l = spec.linux().as_ref().unwrap();
        assert!(l.masked_paths().clone().unwrap().is_empty());
        assert!(l.readonly_paths().clone().unwrap().is_empty());
        assert!(l.seccomp().is_none());
        let devices = l.resources().as_ref().unwrap().devices().clone().unwrap();
        assert_eq!(devices.len(), 1);
        assert!(devices[0].allow());
        let sys = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.destination() == Path::new("/sys"))
            .unwrap();
        assert!(sys.options().as_ref().unwrap().contains(&"rw".to_string()));
    }

    #[test]
    fn seccomp_in_spec() {
        let mut cfg = config();
        sc(&mut cfg).seccomp = Seccomp::RuntimeDefault;
        let spec = build(&cfg).unwrap();
        let profile = spec.linux().as_ref().unwrap().seccomp().clone().unwrap();
        assert_eq!(
            seccomp::evaluate(&profile, "mount", &[]).0,
            LinuxSeccompAction::ScmpActErrno
        );
        assert_eq!(
            seccomp::evaluate(&profile, "read", &[]).0,
            LinuxSeccompAction::ScmpActAllow
        );

        sc(&mut cfg).capabilities = Capabilities {
            add: s(&["SYS_ADMIN"]),
            ..Default::default()
        };
        let spec = build(&cfg).unwrap();
        let profile = spec.linux().as_ref().unwrap().seccomp().clone().unwrap();
        assert_eq!(
            seccomp::evaluate(&profile, "mount", &[]).0,
            LinuxSeccompAction::ScmpActAllow
        );

        // Localhost, relative to the profile root
        let root = rootfs();
        let o = opts(root.path());
        std::fs::create_dir_all(&o.seccomp_profile_root).unwrap();
        std::fs::write(
            o.seccomp_profile_root.join("p.json"),
            r#"{"defaultAction":"SCMP_ACT_LOG"}"#,
        )
        .unwrap();
        let mut cfg = config();
        sc(&mut cfg).seccomp = Seccomp::Localhost("p.json".into());
        let spec = container_spec(&cfg, &pod(), &image(), &o).unwrap();
        let profile = spec.linux().as_ref().unwrap().seccomp().clone().unwrap();
        assert_eq!(profile.default_action(), LinuxSeccompAction::ScmpActLog);

        sc(&mut cfg).seccomp = Seccomp::Localhost("missing.json".into());
        let err = container_spec(&cfg, &pod(), &image(), &o).unwrap_err();
        assert!(matches!(err, SpecError::Seccomp(_)));
        assert!(err.to_string().contains("missing.json"), "{err}");
    }
}
