//! The local driver's mounts (`type`/`device`/`o` options, as dockerd's
//! `mount.Mount`) and the mount table checks removal relies on.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

/// Mount flags by option name; every other option goes to the filesystem as data.
fn flag(option: &str) -> Option<(bool, MsFlags)> {
    let set = |f| Some((true, f));
    let clear = |f| Some((false, f));
    match option {
        "ro" => set(MsFlags::MS_RDONLY),
        "rw" => clear(MsFlags::MS_RDONLY),
        "nosuid" => set(MsFlags::MS_NOSUID),
        "suid" => clear(MsFlags::MS_NOSUID),
        "nodev" => set(MsFlags::MS_NODEV),
        "dev" => clear(MsFlags::MS_NODEV),
        "noexec" => set(MsFlags::MS_NOEXEC),
        "exec" => clear(MsFlags::MS_NOEXEC),
        "sync" => set(MsFlags::MS_SYNCHRONOUS),
        "async" => clear(MsFlags::MS_SYNCHRONOUS),
        "dirsync" => set(MsFlags::MS_DIRSYNC),
        "noatime" => set(MsFlags::MS_NOATIME),
        "atime" => clear(MsFlags::MS_NOATIME),
        "nodiratime" => set(MsFlags::MS_NODIRATIME),
        "diratime" => clear(MsFlags::MS_NODIRATIME),
        "relatime" => set(MsFlags::MS_RELATIME),
        "norelatime" => clear(MsFlags::MS_RELATIME),
        "strictatime" => set(MsFlags::MS_STRICTATIME),
        "bind" => set(MsFlags::MS_BIND),
        "rbind" => set(MsFlags::MS_BIND | MsFlags::MS_REC),
        "defaults" => Some((true, MsFlags::empty())),
        _ => None,
    }
}

/// Splits `o` into mount flags and filesystem data.
pub(super) fn parse_options(o: &str) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for option in o.split(',').filter(|o| !o.is_empty()) {
        match flag(option) {
            Some((true, f)) => flags |= f,
            Some((false, f)) => flags &= !f,
            None => data.push(option),
        }
    }
    (flags, data.join(","))
}

/// Mounts `device` (of `type`, with `o`) on `target`. A read-only bind is remounted
/// read-only, as the kernel ignores MS_RDONLY on the first bind.
pub(super) fn mount_volume(options: &HashMap<String, String>, target: &Path) -> Result<(), String> {
    let device = options
        .get("device")
        .map(String::as_str)
        .unwrap_or_default();
    if device.is_empty() {
        return Err("missing device in volume options".to_string());
    }
    let fstype = options.get("type").map(String::as_str).unwrap_or_default();
    let (flags, data) = parse_options(options.get("o").map(String::as_str).unwrap_or_default());
    let fstype_arg = (!fstype.is_empty() && fstype != "none").then_some(fstype);
    let data_arg = (!data.is_empty()).then_some(data.as_str());
    let describe = |err: nix::Error| {
        format!(
            "mount {device}:{}, flags: {:#x}, data: {data}: {err}",
            target.display(),
            flags.bits()
        )
    };
    nix::mount::mount(Some(device), target, fstype_arg, flags, data_arg).map_err(describe)?;
    if flags.contains(MsFlags::MS_BIND) && flags.contains(MsFlags::MS_RDONLY) {
        let remount = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        if let Err(err) =
            nix::mount::mount(None::<&str>, target, None::<&str>, remount, None::<&str>)
        {
            let _ = nix::mount::umount2(target, MntFlags::MNT_DETACH);
            return Err(describe(err));
        }
    }
    Ok(())
}

fn mount_points() -> std::io::Result<Vec<PathBuf>> {
    let mounts = procfs::process::Process::myself()
        .and_then(|me| me.mountinfo())
        .map_err(|err| std::io::Error::other(format!("reading /proc/self/mountinfo: {err}")))?;
    Ok(mounts.into_iter().map(|m| m.mount_point).collect())
}

fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

pub(super) fn is_mount_point(path: &Path) -> std::io::Result<bool> {
    let path = canonical(path);
    Ok(mount_points()?.contains(&path))
}

/// Whether anything is mounted on `dir` or below it.
pub(super) fn anything_mounted_under(dir: &Path) -> std::io::Result<bool> {
    let dir = canonical(dir);
    Ok(mount_points()?.iter().any(|m| m.starts_with(&dir)))
}

/// Unmounts every mount stacked on `path` (none is no error).
pub(super) fn unmount_all(path: &Path) -> std::io::Result<()> {
    for _ in 0..16 {
        if !is_mount_point(path)? {
            return Ok(());
        }
        nix::mount::umount2(path, MntFlags::MNT_DETACH).map_err(std::io::Error::from)?;
    }
    Err(std::io::Error::other("still mounted after 16 unmounts"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_and_data() {
        let (flags, data) = parse_options("size=64m,uid=1000,ro,noexec");
        assert!(flags.contains(MsFlags::MS_RDONLY | MsFlags::MS_NOEXEC));
        assert_eq!(data, "size=64m,uid=1000");
        let (flags, data) = parse_options("bind");
        assert_eq!(flags, MsFlags::MS_BIND);
        assert_eq!(data, "");
    }
}
