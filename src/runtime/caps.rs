//! Linux capabilities of a container process: Docker's default set, CRI add/drop (names
//! with or without `CAP_`, `ALL` as containerd reads it) and privileged mode.

use std::collections::HashSet;

use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilities};

/// Every capability wharf knows, with its name without the `CAP_` prefix, in the
/// kernel's numbering: the capability at index N is bit N of a capability mask.
pub const ALL: &[(&str, Capability)] = &[
    ("CHOWN", Capability::Chown),
    ("DAC_OVERRIDE", Capability::DacOverride),
    ("DAC_READ_SEARCH", Capability::DacReadSearch),
    ("FOWNER", Capability::Fowner),
    ("FSETID", Capability::Fsetid),
    ("KILL", Capability::Kill),
    ("SETGID", Capability::Setgid),
    ("SETUID", Capability::Setuid),
    ("SETPCAP", Capability::Setpcap),
    ("LINUX_IMMUTABLE", Capability::LinuxImmutable),
    ("NET_BIND_SERVICE", Capability::NetBindService),
    ("NET_BROADCAST", Capability::NetBroadcast),
    ("NET_ADMIN", Capability::NetAdmin),
    ("NET_RAW", Capability::NetRaw),
    ("IPC_LOCK", Capability::IpcLock),
    ("IPC_OWNER", Capability::IpcOwner),
    ("SYS_MODULE", Capability::SysModule),
    ("SYS_RAWIO", Capability::SysRawio),
    ("SYS_CHROOT", Capability::SysChroot),
    ("SYS_PTRACE", Capability::SysPtrace),
    ("SYS_PACCT", Capability::SysPacct),
    ("SYS_ADMIN", Capability::SysAdmin),
    ("SYS_BOOT", Capability::SysBoot),
    ("SYS_NICE", Capability::SysNice),
    ("SYS_RESOURCE", Capability::SysResource),
    ("SYS_TIME", Capability::SysTime),
    ("SYS_TTY_CONFIG", Capability::SysTtyConfig),
    ("MKNOD", Capability::Mknod),
    ("LEASE", Capability::Lease),
    ("AUDIT_WRITE", Capability::AuditWrite),
    ("AUDIT_CONTROL", Capability::AuditControl),
    ("SETFCAP", Capability::Setfcap),
    ("MAC_OVERRIDE", Capability::MacOverride),
    ("MAC_ADMIN", Capability::MacAdmin),
    ("SYSLOG", Capability::Syslog),
    ("WAKE_ALARM", Capability::WakeAlarm),
    ("BLOCK_SUSPEND", Capability::BlockSuspend),
    ("AUDIT_READ", Capability::AuditRead),
    ("PERFMON", Capability::Perfmon),
    ("BPF", Capability::Bpf),
    ("CHECKPOINT_RESTORE", Capability::CheckpointRestore),
];

/// Docker's (and containerd's) default capabilities of a container.
pub const DEFAULT: &[Capability] = &[
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// The capability called `name` (`SYS_ADMIN`, `CAP_SYS_ADMIN`, any case); `None` if unknown.
pub fn parse(name: &str) -> Option<Capability> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    ALL.iter().find(|(n, _)| *n == bare).map(|(_, c)| *c)
}

/// The `CAP_`-prefixed name of `cap`.
pub fn name(cap: Capability) -> String {
    ALL.iter()
        .find(|(_, c)| *c == cap)
        .map(|(n, _)| format!("CAP_{n}"))
        .unwrap_or_else(|| format!("{cap:?}"))
}

/// Why a capability list was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapabilityError {
    /// A name that is no Linux capability.
    #[error("{field}: unknown capability {name:?}")]
    Unknown { field: &'static str, name: String },
    /// A capability asked for by name that wharfd itself does not hold, so it cannot
    /// grant it (the kernel refuses a capset beyond the caller's bounding set).
    #[error(
        "{field}: {name} cannot be granted: wharfd does not hold it (it is not in \
         wharfd's capability bounding set on this host)"
    )]
    NotHeld { field: &'static str, name: String },
}

const ADD_FIELD: &str = "linux.security_context.capabilities.add_capabilities";
const DROP_FIELD: &str = "linux.security_context.capabilities.drop_capabilities";

/// The capabilities of `mask` (bit N = capability N, as `CapBnd` in /proc/PID/status).
pub fn from_mask(mask: u64) -> HashSet<Capability> {
    ALL.iter()
        .enumerate()
        .filter(|(bit, _)| mask & (1 << bit) != 0)
        .map(|(_, (_, cap))| *cap)
        .collect()
}

/// The capability set of a container, limited to `held` (wharfd's own bounding set: it
/// can grant nothing else). Privileged: all of `held`. Otherwise Docker's default set
/// (what of it is held) changed as containerd does: `ALL` in `add` first (every held
/// capability), `ALL` in `drop` next, then each named addition (refused when not
/// held), then each named drop (so add ALL + drop CHOWN = all held but CHOWN).
pub fn compute(
    privileged: bool,
    add: &[String],
    drop: &[String],
    held: &HashSet<Capability>,
) -> Result<HashSet<Capability>, CapabilityError> {
    if privileged {
        return Ok(held.clone());
    }
    let is_all = |s: &String| s.trim().eq_ignore_ascii_case("ALL");
    let mut set: HashSet<Capability> = DEFAULT
        .iter()
        .filter(|cap| held.contains(cap))
        .copied()
        .collect();
    if add.iter().any(is_all) {
        set = held.clone();
    }
    if drop.iter().any(is_all) {
        set.clear();
    }
    for name in add.iter().filter(|s| !is_all(s)) {
        let cap = parse(name).ok_or_else(|| CapabilityError::Unknown {
            field: ADD_FIELD,
            name: name.clone(),
        })?;
        if !held.contains(&cap) {
            return Err(CapabilityError::NotHeld {
                field: ADD_FIELD,
                name: self::name(cap),
            });
        }
        set.insert(cap);
    }
    for name in drop.iter().filter(|s| !is_all(s)) {
        let cap = parse(name).ok_or_else(|| CapabilityError::Unknown {
            field: DROP_FIELD,
            name: name.clone(),
        })?;
        set.remove(&cap);
    }
    Ok(set)
}

/// The process capabilities for `set`: bounding, effective and permitted hold the set,
/// inheritable holds only the ambient ones (the kernel needs an ambient capability to be
/// inheritable too), ambient holds `ambient` (CRI add_ambient_capabilities, restricted
/// to the set). Like containerd, nothing is inheritable or ambient by default.
pub fn to_linux(set: &HashSet<Capability>, ambient: &HashSet<Capability>) -> LinuxCapabilities {
    let caps: Capabilities = set.iter().copied().collect();
    let amb: Capabilities = ambient.intersection(set).copied().collect();
    let mut out = LinuxCapabilities::default();
    out.set_bounding(Some(caps.clone()));
    out.set_effective(Some(caps.clone()));
    out.set_permitted(Some(caps));
    out.set_inheritable(Some(amb.clone()));
    out.set_ambient(Some(amb));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn every() -> HashSet<Capability> {
        from_mask(u64::MAX)
    }

    #[test]
    fn numbering_follows_the_kernel() {
        // linux/capability.h: CAP_SYS_ADMIN 21, CAP_AUDIT_READ 37, CAP_CHECKPOINT_RESTORE 40.
        assert_eq!(ALL[21].1, Capability::SysAdmin);
        assert_eq!(ALL[37].1, Capability::AuditRead);
        assert_eq!(ALL[40].1, Capability::CheckpointRestore);
        assert_eq!(from_mask(1 << 21), [Capability::SysAdmin].into());
    }

    #[test]
    fn parse_names() {
        assert_eq!(parse("CAP_SYS_ADMIN"), Some(Capability::SysAdmin));
        assert_eq!(parse("sys_admin"), Some(Capability::SysAdmin));
        assert_eq!(parse("NOPE"), None);
        assert_eq!(name(Capability::NetRaw), "CAP_NET_RAW");
    }

    #[test]
    fn default_set() {
        let set = compute(false, &[], &[], &every()).unwrap();
        assert_eq!(set.len(), 14);
        assert!(set.contains(&Capability::Chown));
        assert!(!set.contains(&Capability::SysAdmin));
    }

    #[test]
    fn add_drop_all() {
        let set = compute(
            false,
            &s(&["SYS_ADMIN", "CAP_NET_ADMIN"]),
            &s(&["CHOWN"]),
            &every(),
        )
        .unwrap();
        assert!(set.contains(&Capability::SysAdmin));
        assert!(set.contains(&Capability::NetAdmin));
        assert!(!set.contains(&Capability::Chown));

        let set = compute(false, &s(&["ALL"]), &s(&["CHOWN"]), &every()).unwrap();
        assert_eq!(set.len(), ALL.len() - 1);
        assert!(!set.contains(&Capability::Chown));

        let set = compute(false, &s(&["NET_BIND_SERVICE"]), &s(&["all"]), &every()).unwrap();
        assert_eq!(set.len(), 1);
        assert!(set.contains(&Capability::NetBindService));
    }

    #[test]
    fn unknown_and_privileged() {
        let err = compute(false, &s(&["CAP_FLY"]), &[], &every()).unwrap_err();
        assert_eq!(
            err,
            CapabilityError::Unknown {
                field: ADD_FIELD,
                name: "CAP_FLY".into()
            }
        );
        let err = compute(false, &[], &s(&["WALK"]), &every()).unwrap_err();
        assert!(err.to_string().starts_with(DROP_FIELD));

        let set = compute(true, &[], &s(&["ALL"]), &every()).unwrap();
        assert_eq!(set.len(), ALL.len());
    }

    #[test]
    fn limited_to_what_wharfd_holds() {
        // CAP_SYS_RESOURCE (24) missing from the bounding set, as on some hosts.
        let held = from_mask(!(1 << 24));
        assert!(!held.contains(&Capability::SysResource));
        assert_eq!(held.len(), ALL.len() - 1);
        for privileged in [true, false] {
            let set = compute(privileged, &s(&["ALL"]), &[], &held).unwrap();
            assert_eq!(set, held, "privileged {privileged}");
        }
        let err = compute(false, &s(&["sys_resource"]), &[], &held).unwrap_err();
        assert_eq!(
            err,
            CapabilityError::NotHeld {
                field: ADD_FIELD,
                name: "CAP_SYS_RESOURCE".into()
            }
        );
        assert!(err.to_string().contains("bounding set"), "{err}");
        // Dropping what is not held is fine; defaults wharfd lacks are left out.
        compute(false, &[], &s(&["SYS_RESOURCE"]), &held).unwrap();
        let no_chown = from_mask(!1);
        let set = compute(false, &[], &[], &no_chown).unwrap();
        assert_eq!(set.len(), DEFAULT.len() - 1);
    }

    #[test]
    fn linux_sets() {
        let set = compute(false, &[], &[], &every()).unwrap();
        let amb: HashSet<Capability> = [Capability::NetBindService, Capability::SysAdmin].into();
        let lc = to_linux(&set, &amb);
        assert_eq!(lc.bounding().as_ref().unwrap().len(), 14);
        assert_eq!(lc.ambient().as_ref().unwrap().len(), 1);
        assert_eq!(lc.inheritable().as_ref().unwrap().len(), 1);
    }
}
