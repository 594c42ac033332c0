//! `wharf-monitor archive stat|get|put --root ROOTFS --path PATH`: copies files out of
//! and into a container's root filesystem (Docker's `docker cp`, the archive
//! endpoints) from a process chrooted into that root filesystem.
//!
//! # Why a chroot, in a process of its own
//!
//! A path inside a container is the container's to define: any component may be a
//! symlink, and the container may swap one while a copy runs (moby's CVE-2018-15664,
//! fixed there the same way: `chrootarchive`). Resolving the path from the host and
//! walking it with ordinary file calls can be steered out of the rootfs between the
//! check and the use. After `chroot(rootfs)` every absolute symlink, `..` and swapped
//! component resolves inside the rootfs, by the kernel, for the whole copy. wharfd is
//! multi-threaded and never forks, so the chroot happens in this short-lived process
//! (spawned like every monitor), whose whole job is the copy.
//!
//! - `stat`: one JSON line on stdout: `{"name","size","mode","mtime","linkTarget"}`,
//!   `mode` as Go's `os.FileMode` (Docker's `X-Docker-Container-Path-Stat`).
//! - `get`: a tar of PATH on stdout, its top entry named as PATH's last component (the
//!   contents of a directory when PATH ends in `/.`); symlinks are archived as links,
//!   never followed below PATH.
//! - `put`: a tar on stdin extracted into the directory PATH; entries that would leave
//!   it (`..`, absolute names) are refused by the tar crate's `unpack_in`, and even a
//!   link to `/` only reaches the container's root.
//!
//! Errors: a message on stderr and exit 1 (not found: exit 2, not a directory: 3), so
//! the daemon can answer 404 / 400 as dockerd.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

#[derive(Debug, Args)]
pub struct ArchiveArgs {
    /// The container's root filesystem (its bundle's rootfs mount).
    #[arg(long)]
    pub root: PathBuf,
    /// The path inside the container.
    #[arg(long)]
    pub path: String,
    /// The container's volumes and bind mounts, as JSON `[{"source", "destination",
    /// "readonly"}]` in mount order: mounted over the root filesystem (in a mount
    /// namespace of this process's own) before the chroot, so a copy reaches a volume
    /// where the container sees it.
    #[arg(long)]
    pub mounts: Option<String>,
    #[command(subcommand)]
    pub action: ArchiveAction,
}

#[derive(Debug, Subcommand)]
pub enum ArchiveAction {
    /// Describe PATH (JSON on stdout).
    Stat,
    /// Write a tar of PATH to stdout.
    Get,
    /// Extract the tar on stdin into the directory PATH.
    Put {
        /// Refuse to replace a directory with a non-directory or the reverse.
        #[arg(long)]
        no_overwrite_dir_non_dir: bool,
    },
}

/// Exit codes the daemon maps to HTTP statuses.
pub const EXIT_FAILED: i32 = 1;
pub const EXIT_NOT_FOUND: i32 = 2;
pub const EXIT_NOT_A_DIRECTORY: i32 = 3;

struct Failure {
    code: i32,
    message: String,
}

fn failed(message: impl Into<String>) -> Failure {
    Failure {
        code: EXIT_FAILED,
        message: message.into(),
    }
}

fn io_failure(what: &str, path: &str, err: std::io::Error) -> Failure {
    let code = if err.kind() == std::io::ErrorKind::NotFound {
        EXIT_NOT_FOUND
    } else {
        EXIT_FAILED
    };
    Failure {
        code,
        message: format!("{what} {path}: {err}"),
    }
}

pub fn main(args: ArchiveArgs) -> i32 {
    match run(args) {
        Ok(()) => 0,
        Err(failure) => {
            let _ = writeln!(std::io::stderr(), "{}", failure.message);
            failure.code
        }
    }
}

/// A host directory or file the container has mounted at `destination`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ArchiveMount {
    pub source: PathBuf,
    pub destination: String,
    pub readonly: bool,
}

fn run(args: ArchiveArgs) -> Result<(), Failure> {
    if let Some(json) = &args.mounts {
        let mounts: Vec<ArchiveMount> =
            serde_json::from_str(json).map_err(|e| failed(format!("reading --mounts: {e}")))?;
        if !mounts.is_empty() {
            mount_volumes(&args.root, &mounts)?;
        }
    }
    nix::unistd::chroot(&args.root)
        .map_err(|e| failed(format!("chroot {}: {e}", args.root.display())))?;
    nix::unistd::chdir("/").map_err(|e| failed(format!("chdir / in the container: {e}")))?;
    if !args.path.starts_with('/') {
        return Err(failed(format!(
            "{:?} is not an absolute path in the container",
            args.path
        )));
    }
    match args.action {
        ArchiveAction::Stat => stat(&args.path),
        ArchiveAction::Get => get(&args.path),
        ArchiveAction::Put {
            no_overwrite_dir_non_dir,
        } => put(&args.path, no_overwrite_dir_non_dir),
    }
}

/// Mounts `mounts` over `root` in a new, private mount namespace (gone with this
/// process). Each destination is resolved inside `root` with openat2(RESOLVE_IN_ROOT),
/// so a symlink in the container cannot send a mount outside it, and the mount is made
/// on the opened descriptor (`/proc/self/fd/N`, as runc does). A destination missing
/// from the root filesystem (the container never ran) is left alone.
fn mount_volumes(root: &Path, mounts: &[ArchiveMount]) -> Result<(), Failure> {
    use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
    use nix::mount::{mount, MsFlags};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(|e| failed(format!("making a mount namespace for the copy: {e}")))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| failed(format!("making the copy's mounts private: {e}")))?;
    let root_dir = std::fs::File::open(root).map_err(|e| {
        failed(format!(
            "opening the root filesystem {}: {e}",
            root.display()
        ))
    })?;
    let open_target = |destination: &str| -> Result<Option<OwnedFd>, Failure> {
        let rel = destination.trim_start_matches('/');
        let rel = if rel.is_empty() { "." } else { rel };
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        match openat2(root_dir.as_raw_fd(), rel, how) {
            // SAFETY: openat2 returned a new descriptor that nothing else owns.
            Ok(fd) => Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) })),
            Err(nix::errno::Errno::ENOENT) => Ok(None),
            Err(e) => Err(failed(format!(
                "resolving the mount point {destination} in the container: {e}"
            ))),
        }
    };
    for volume in mounts {
        let Some(target) = open_target(&volume.destination)? else {
            continue;
        };
        let on = format!("/proc/self/fd/{}", target.as_raw_fd());
        mount(
            Some(&volume.source),
            on.as_str(),
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| {
            failed(format!(
                "mounting {} at {} for the copy: {e}",
                volume.source.display(),
                volume.destination
            ))
        })?;
        if volume.readonly {
            // The descriptor still names the covered directory: open the new mount.
            let Some(mounted) = open_target(&volume.destination)? else {
                continue;
            };
            let on = format!("/proc/self/fd/{}", mounted.as_raw_fd());
            mount(
                None::<&str>,
                on.as_str(),
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None::<&str>,
            )
            .map_err(|e| {
                failed(format!(
                    "making {} read-only for the copy: {e}",
                    volume.destination
                ))
            })?;
        }
    }
    Ok(())
}

/// An error with its cause: the tar crate's unpack errors name the entry and keep the
/// system error (read-only file system, no space...) as their source.
fn with_cause(err: &std::io::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.get_ref().and_then(|inner| inner.source());
    while let Some(next) = cause {
        text.push_str(&format!(": {next}"));
        cause = next.source();
    }
    text
}

/// Go's `os.FileMode` bits for a file type and permissions.
fn go_file_mode(meta: &std::fs::Metadata) -> u64 {
    const MODE_DIR: u64 = 1 << 31;
    const MODE_SYMLINK: u64 = 1 << 27;
    const MODE_NAMED_PIPE: u64 = 1 << 25;
    const MODE_SOCKET: u64 = 1 << 24;
    const MODE_DEVICE: u64 = 1 << 26;
    const MODE_CHAR_DEVICE: u64 = 1 << 21;
    const MODE_SETUID: u64 = 1 << 23;
    const MODE_SETGID: u64 = 1 << 22;
    const MODE_STICKY: u64 = 1 << 20;
    use std::os::unix::fs::FileTypeExt;
    let file_type = meta.file_type();
    let mode = meta.permissions().mode();
    let mut out = u64::from(mode & 0o777);
    if file_type.is_dir() {
        out |= MODE_DIR;
    } else if file_type.is_symlink() {
        out |= MODE_SYMLINK;
    } else if file_type.is_fifo() {
        out |= MODE_NAMED_PIPE;
    } else if file_type.is_socket() {
        out |= MODE_SOCKET;
    } else if file_type.is_char_device() {
        out |= MODE_DEVICE | MODE_CHAR_DEVICE;
    } else if file_type.is_block_device() {
        out |= MODE_DEVICE;
    }
    if mode & 0o4000 != 0 {
        out |= MODE_SETUID;
    }
    if mode & 0o2000 != 0 {
        out |= MODE_SETGID;
    }
    if mode & 0o1000 != 0 {
        out |= MODE_STICKY;
    }
    out
}

/// The last component of `path` (`/` for the root).
fn base_name(path: &str) -> String {
    let trimmed = path.trim_end_matches('/');
    let trimmed = trimmed.strip_suffix("/.").unwrap_or(trimmed);
    Path::new(trimmed)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "/".to_string())
}

fn stat(path: &str) -> Result<(), Failure> {
    // The link itself (dockerd's stat does not follow the last component).
    let meta = std::fs::symlink_metadata(path).map_err(|e| io_failure("stat", path, e))?;
    let link_target = if meta.file_type().is_symlink() {
        std::fs::read_link(path)
            .map(|t| t.display().to_string())
            .unwrap_or_default()
    } else {
        String::new()
    };
    let mtime = chrono::DateTime::from_timestamp(meta.mtime(), meta.mtime_nsec() as u32)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    let json = serde_json::json!({
        "name": base_name(path),
        "size": meta.len(),
        "mode": go_file_mode(&meta),
        "mtime": mtime,
        "linkTarget": link_target,
    });
    println!("{json}");
    Ok(())
}

fn get(path: &str) -> Result<(), Failure> {
    let contents_only = path.ends_with("/.");
    let meta = std::fs::symlink_metadata(path).map_err(|e| io_failure("stat", path, e))?;
    let stdout = std::io::stdout().lock();
    let mut builder = tar::Builder::new(std::io::BufWriter::new(stdout));
    builder.follow_symlinks(false);
    let name = base_name(path);
    let result = if meta.is_dir() {
        if contents_only {
            builder.append_dir_all(".", path)
        } else {
            builder.append_dir_all(&name, path)
        }
    } else {
        builder.append_path_with_name(path, &name)
    };
    result.map_err(|e| io_failure("archiving", path, e))?;
    builder
        .into_inner()
        .and_then(|mut w| w.flush())
        .map_err(|e| failed(format!("writing the archive of {path}: {e}")))
}

fn put(path: &str, no_overwrite_dir_non_dir: bool) -> Result<(), Failure> {
    let meta = std::fs::metadata(path).map_err(|e| io_failure("stat", path, e))?;
    if !meta.is_dir() {
        return Err(Failure {
            code: EXIT_NOT_A_DIRECTORY,
            message: format!("extraction point is not a directory: {path}"),
        });
    }
    let stdin = std::io::stdin().lock();
    let mut archive = tar::Archive::new(std::io::BufReader::new(stdin));
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    let entries = archive
        .entries()
        .map_err(|e| failed(format!("reading the archive: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| failed(format!("reading the archive: {e}")))?;
        let name = entry
            .path()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        if no_overwrite_dir_non_dir {
            let target = Path::new(path).join(&name);
            if let Ok(existing) = std::fs::symlink_metadata(&target) {
                let incoming_dir = entry.header().entry_type().is_dir();
                if existing.is_dir() != incoming_dir {
                    return Err(failed(format!(
                        "cannot overwrite {} {:?} with a {}",
                        if existing.is_dir() {
                            "directory"
                        } else {
                            "non-directory"
                        },
                        target.display(),
                        if incoming_dir {
                            "directory"
                        } else {
                            "non-directory"
                        },
                    )));
                }
            }
        }
        // unpack_in refuses names with `..` or that resolve outside `path`.
        let unpacked = entry
            .unpack_in(path)
            .map_err(|e| failed(format!("extracting {name:?}: {}", with_cause(&e))))?;
        if !unpacked {
            return Err(failed(format!(
                "refusing the archive entry {name:?}: it would be written outside {path}"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_names_and_modes() {
        assert_eq!(base_name("/etc/hostname"), "hostname");
        assert_eq!(base_name("/etc/"), "etc");
        assert_eq!(base_name("/etc/."), "etc");
        assert_eq!(base_name("/"), "/");
        let dir = tempfile::tempdir().unwrap();
        let meta = std::fs::metadata(dir.path()).unwrap();
        assert_ne!(go_file_mode(&meta) & (1 << 31), 0);
    }
}
