//! Linux capabilities of a container process: Docker's default set, CRI add/drop (names
//! with or without `CAP_`, `ALL` as containerd reads it) and privileged mode.

use std::collections::HashSet;

use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilities};

/// Every capability wharf knows, with its name without the `CAP_` prefix.
pub const ALL: &[(&str, Capability)] = &[
    ("AUDIT_CONTROL", Capability::AuditControl),
    ("AUDIT_READ", Capability::AuditRead),
    ("AUDIT_WRITE", Capability::AuditWrite),
    ("BLOCK_SUSPEND", Capability::BlockSuspend),
    ("BPF", Capability::Bpf),
    ("CHECKPOINT_RESTORE", Capability::CheckpointRestore),
    ("CHOWN", Capability::Chown),
    ("DAC_OVERRIDE", Capability::DacOverride),
    ("DAC_READ_SEARCH", Capability::DacReadSearch),
    ("FOWNER", Capability::Fowner),
    ("FSETID", Capability::Fsetid),
    ("IPC_LOCK", Capability::IpcLock),
    ("IPC_OWNER", Capability::IpcOwner),
    ("KILL", Capability::Kill),
    ("LEASE", Capability::Lease),
    ("LINUX_IMMUTABLE", Capability::LinuxImmutable),
    ("MAC_ADMIN", Capability::MacAdmin),
    ("MAC_OVERRIDE", Capability::MacOverride),
    ("MKNOD", Capability::Mknod),
    ("NET_ADMIN", Capability::NetAdmin),
    ("NET_BIND_SERVICE", Capability::NetBindService),
    ("NET_BROADCAST", Capability::NetBroadcast),
    ("NET_RAW", Capability::NetRaw),
    ("PERFMON", Capability::Perfmon),
    ("SETFCAP", Capability::Setfcap),
    ("SETGID", Capability::Setgid),
    ("SETPCAP", Capability::Setpcap),
    ("SETUID", Capability::Setuid),
    ("SYS_ADMIN", Capability::SysAdmin),
    ("SYS_BOOT", Capability::SysBoot),
    ("SYS_CHROOT", Capability::SysChroot),
    ("SYS_MODULE", Capability::SysModule),
    ("SYS_NICE", Capability::SysNice),
    ("SYS_PACCT", Capability::SysPacct),
    ("SYS_PTRACE", Capability::SysPtrace),
    ("SYS_RAWIO", Capability::SysRawio),
    ("SYS_RESOURCE", Capability::SysResource),
    ("SYS_TIME", Capability::SysTime),
    ("SYS_TTY_CONFIG", Capability::SysTtyConfig),
    ("SYSLOG", Capability::Syslog),
    ("WAKE_ALARM", Capability::WakeAlarm),
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

/// Why a capability list was refused: the CRI field and the unknown name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownCapability {
    pub field: &'static str,
    pub name: String,
}

/// The capability set of a container: all of them when privileged, else Docker's default
/// set changed as containerd does: `ALL` in `add` first, `ALL` in `drop` next, then
/// each named addition, then each named drop (so add ALL + drop CHOWN = all but CHOWN).
pub fn compute(
    privileged: bool,
    add: &[String],
    drop: &[String],
) -> Result<HashSet<Capability>, UnknownCapability> {
    let all: HashSet<Capability> = ALL.iter().map(|(_, c)| *c).collect();
    if privileged {
        return Ok(all);
    }
    let is_all = |s: &String| s.trim().eq_ignore_ascii_case("ALL");
    let mut set: HashSet<Capability> = DEFAULT.iter().copied().collect();
    if add.iter().any(is_all) {
        set = all;
    }
    if drop.iter().any(is_all) {
        set.clear();
    }
    for name in add.iter().filter(|s| !is_all(s)) {
        set.insert(parse(name).ok_or_else(|| UnknownCapability {
            field: "linux.security_context.capabilities.add_capabilities",
            name: name.clone(),
        })?);
    }
    for name in drop.iter().filter(|s| !is_all(s)) {
        let cap = parse(name).ok_or_else(|| UnknownCapability {
            field: "linux.security_context.capabilities.drop_capabilities",
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

    #[test]
    fn parse_names() {
        assert_eq!(parse("CAP_SYS_ADMIN"), Some(Capability::SysAdmin));
        assert_eq!(parse("sys_admin"), Some(Capability::SysAdmin));
        assert_eq!(parse("NOPE"), None);
        assert_eq!(name(Capability::NetRaw), "CAP_NET_RAW");
    }

    #[test]
    fn default_set() {
        let set = compute(false, &[], &[]).unwrap();
        assert_eq!(set.len(), 14);
        assert!(set.contains(&Capability::Chown));
        assert!(!set.contains(&Capability::SysAdmin));
    }

    #[test]
    fn add_drop_all() {
        let set = compute(false, &s(&["SYS_ADMIN", "CAP_NET_ADMIN"]), &s(&["CHOWN"])).unwrap();
        assert!(set.contains(&Capability::SysAdmin));
        assert!(set.contains(&Capability::NetAdmin));
        assert!(!set.contains(&Capability::Chown));

        let set = compute(false, &s(&["ALL"]), &s(&["CHOWN"])).unwrap();
        assert_eq!(set.len(), ALL.len() - 1);
        assert!(!set.contains(&Capability::Chown));

        let set = compute(false, &s(&["NET_BIND_SERVICE"]), &s(&["all"])).unwrap();
        assert_eq!(set.len(), 1);
        assert!(set.contains(&Capability::NetBindService));
    }

    #[test]
    fn unknown_and_privileged() {
        let err = compute(false, &s(&["CAP_FLY"]), &[]).unwrap_err();
        assert_eq!(err.name, "CAP_FLY");
        assert!(err.field.ends_with("add_capabilities"));
        let err = compute(false, &[], &s(&["WALK"])).unwrap_err();
        assert!(err.field.ends_with("drop_capabilities"));

        let set = compute(true, &[], &s(&["ALL"])).unwrap();
        assert_eq!(set.len(), ALL.len());
    }

    #[test]
    fn linux_sets() {
        let set = compute(false, &[], &[]).unwrap();
        let amb: HashSet<Capability> = [Capability::NetBindService, Capability::SysAdmin].into();
        let lc = to_linux(&set, &amb);
        assert_eq!(lc.bounding().as_ref().unwrap().len(), 14);
        assert_eq!(lc.ambient().as_ref().unwrap().len(), 1);
        assert_eq!(lc.inheritable().as_ref().unwrap().len(), 1);
    }
}
