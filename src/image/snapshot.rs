//! Snapshots: unpacked layers keyed by chain ID, used as overlayfs lower directories,
//! and container root filesystems mounted on top of them.
//!
//! Layout under `<wharf root>/snapshots`:
//! ```text
//! layers/<chain id hex>/fs   a committed layer (the overlay lowerdir); never modified
//! tmp/<unique>/fs            a layer being unpacked, or one being deleted
//! ```
//! A layer is unpacked into `tmp/<unique>/fs`, the filesystem is synced once
//! (`syncfs`), and `tmp/<unique>` is renamed to `layers/<hex>`: a committed layer is
//! always complete. Removal renames it back into `tmp` before deleting, so a crash never
//! leaves a half-deleted committed layer; whatever a crash leaves in `tmp` is deleted by
//! [`Snapshotter::open`].
//!
//! Snapshots are shared by every image whose layers share the chain (the chain ID of a
//! layer covers it and every layer below it).

use std::collections::HashSet;
use std::ffi::CString;
use std::fs::{self, DirBuilder, File};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::libc;
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshots: {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("invalid snapshot chain id {0:?}: expected sha256:<64 lowercase hex digits>")]
    InvalidChainId(String),
    #[error("snapshot {0} not found")]
    NotFound(String),
    #[error("mounting the container rootfs at {}: {message}", target.display())]
    Mount { target: PathBuf, message: String },
    #[error("unmounting the container rootfs at {}: {source}", target.display())]
    Unmount { target: PathBuf, source: io::Error },
}

impl crate::error::HasKind for SnapshotError {
    fn kind(&self) -> crate::error::ErrorKind {
        match self {
            SnapshotError::NotFound(_) => crate::error::ErrorKind::NotFound,
            _ => crate::error::ErrorKind::Internal,
        }
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SnapshotError + 'a {
    move |source| SnapshotError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The hex part of a chain ID (`sha256:<64 lowercase hex>`).
fn chain_hex(chain_id: &str) -> Result<&str, SnapshotError> {
    chain_id
        .strip_prefix("sha256:")
        .filter(|hex| {
            hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        })
        .ok_or_else(|| SnapshotError::InvalidChainId(chain_id.to_string()))
}

fn is_hex64(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A name no other live or past `tmp` entry of this process or another one has.
fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "{prefix}{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

pub struct Snapshotter {
    root: PathBuf,
    layers: PathBuf,
    tmp: PathBuf,
}

impl std::fmt::Debug for Snapshotter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshotter")
            .field("root", &self.root)
            .finish()
    }
}

/// A layer being unpacked: removed when dropped, unless committed.
#[derive(Debug)]
pub struct PendingSnapshot {
    /// `tmp/<unique>`
    dir: PathBuf,
    /// `tmp/<unique>/fs`
    fs: PathBuf,
    committed: bool,
}

impl PendingSnapshot {
    /// The directory to unpack the layer into.
    pub fn path(&self) -> &Path {
        &self.fs
    }
}

impl Drop for PendingSnapshot {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        match fs::remove_dir_all(&self.dir) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => tracing::warn!(
                path = %self.dir.display(),
                error = %err,
                "cannot remove an uncommitted snapshot (removed at the next start)"
            ),
        }
    }
}

impl Snapshotter {
    /// Creates `<root>/layers` and `<root>/tmp`; removes anything a crash left in `tmp`.
    pub fn open(root: &Path) -> Result<Snapshotter, SnapshotError> {
        let snapshotter = Snapshotter {
            root: root.to_path_buf(),
            layers: root.join("layers"),
            tmp: root.join("tmp"),
        };
        for dir in [&snapshotter.root, &snapshotter.layers, &snapshotter.tmp] {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io_err("creating", dir))?;
        }
        let leftovers =
            fs::read_dir(&snapshotter.tmp).map_err(io_err("reading", &snapshotter.tmp))?;
        for leftover in leftovers {
            let leftover = leftover.map_err(io_err("reading", &snapshotter.tmp))?;
            let path = leftover.path();
            tracing::warn!(path = %path.display(), "removing a snapshot left by an interrupted unpack or removal");
            let removed = if leftover.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            removed.map_err(io_err("removing", &path))?;
        }
        Ok(snapshotter)
    }

    /// OCI chain IDs: `chain[0] = diff_ids[0]`,
    /// `chain[n] = "sha256:" + hex(sha256(chain[n-1] + " " + diff_ids[n]))`.
    pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
        let mut chain: Vec<String> = Vec::with_capacity(diff_ids.len());
        for diff_id in diff_ids {
            let next = match chain.last() {
                None => diff_id.clone(),
                Some(parent) => {
                    let mut hasher = Sha256::new();
                    hasher.update(parent.as_bytes());
                    hasher.update(b" ");
                    hasher.update(diff_id.as_bytes());
                    format!("sha256:{}", hex::encode(hasher.finalize()))
                }
            };
            chain.push(next);
        }
        chain
    }

    /// Whether the layer with this chain ID is committed.
    pub fn exists(&self, chain_id: &str) -> bool {
        chain_hex(chain_id).is_ok() && self.layer_dir(chain_id).is_dir()
    }

    /// The committed layer's directory, an overlay lowerdir: `<root>/layers/<hex>/fs`.
    /// (For a malformed chain ID, a path that never exists.)
    pub fn layer_dir(&self, chain_id: &str) -> PathBuf {
        match chain_hex(chain_id) {
            Ok(hex) => self.layers.join(hex).join("fs"),
            Err(_) => self.layers.join("invalid-chain-id").join("fs"),
        }
    }

    /// A fresh, empty directory under `tmp` to unpack a layer into; removed when the
    /// returned value is dropped, unless committed.
    pub fn prepare(&self) -> Result<PendingSnapshot, SnapshotError> {
        let dir = loop {
            let dir = self.tmp.join(unique_name(""));
            match DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => break dir,
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(err) => return Err(io_err("creating", &dir)(err)),
            }
        };
        let pending = PendingSnapshot {
            fs: dir.join("fs"),
            dir,
            committed: false,
        };
        fs::create_dir(&pending.fs).map_err(io_err("creating", &pending.fs))?;
        // The layer root's mode, whatever the umask.
        fs::set_permissions(&pending.fs, fs::Permissions::from_mode(0o755))
            .map_err(io_err("chmod", &pending.fs))?;
        Ok(pending)
    }

    /// Syncs the filesystem, then renames the pending snapshot to `layers/<hex>`. If that
    /// chain ID was committed meanwhile (a concurrent pull), the pending one is discarded
    /// and `Ok` is returned.
    pub fn commit(
        &self,
        mut pending: PendingSnapshot,
        chain_id: &str,
    ) -> Result<(), SnapshotError> {
        let hex = chain_hex(chain_id)?;
        // What the layer uses, recorded once here so that usage() need not walk it.
        let (bytes, inodes) = walk_usage(&pending.dir, None)?;
        let record = pending.dir.join(USAGE_FILE);
        fs::write(&record, format!("{bytes} {inodes}\n")).map_err(io_err("writing", &record))?;
        let fs_dir = File::open(&pending.fs).map_err(io_err("opening", &pending.fs))?;
        // SAFETY: plain syscall on an open fd.
        if unsafe { libc::syncfs(fs_dir.as_raw_fd()) } != 0 {
            return Err(io_err("syncing the filesystem of", &pending.fs)(
                io::Error::last_os_error(),
            ));
        }
        drop(fs_dir);
        let committed = self.layers.join(hex);
        match rename_noreplace(&pending.dir, &committed) {
            Ok(()) => {
                pending.committed = true;
                sync_dir(&self.layers)?;
                tracing::debug!(chain_id, "snapshot committed");
                crate::crash_point::reached("snapshot.after_commit");
                Ok(())
            }
            Err(err) if matches!(err.raw_os_error(), Some(libc::EEXIST | libc::ENOTEMPTY)) => {
                tracing::debug!(
                    chain_id,
                    "snapshot committed concurrently; discarding this one"
                );
                drop(pending);
                Ok(())
            }
            Err(err) => Err(io_err("committing", &committed)(err)),
        }
    }

    /// Removes a committed layer; idempotent. The layer is first renamed into `tmp`, so
    /// that a crash never leaves a half-deleted committed layer.
    pub fn remove(&self, chain_id: &str) -> Result<(), SnapshotError> {
        let hex = chain_hex(chain_id)?;
        let committed = self.layers.join(hex);
        let trash = self.tmp.join(unique_name(&format!("remove-{hex}-")));
        match fs::rename(&committed, &trash) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(err) => return Err(io_err("removing", &committed)(err)),
        }
        sync_dir(&self.layers)?;
        crate::crash_point::reached("snapshot.remove.after_rename");
        fs::remove_dir_all(&trash).map_err(io_err("removing", &trash))?;
        tracing::debug!(chain_id, "snapshot removed");
        Ok(())
    }

    /// Committed chain IDs, sorted.
    pub fn list(&self) -> Result<Vec<String>, SnapshotError> {
        let mut chain_ids = Vec::new();
        for entry in fs::read_dir(&self.layers).map_err(io_err("reading", &self.layers))? {
            let entry = entry.map_err(io_err("reading", &self.layers))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if is_hex64(name) && entry.path().join("fs").is_dir() {
                chain_ids.push(format!("sha256:{name}"));
            }
        }
        chain_ids.sort();
        Ok(chain_ids)
    }

    /// Disk bytes (allocated blocks) and inodes used under the snapshot root, each inode
    /// counted once (hard links), without following symlinks or crossing into other
    /// filesystems mounted below it. A committed layer counts what its commit recorded
    /// (`layers/<hex>/usage`), so this does not walk every file of every image
    /// (ImageFsInfo calls it); only a layer without the record is walked.
    pub fn usage(&self) -> Result<(u64, u64), SnapshotError> {
        walk_usage(&self.root, Some(&self.layers))
    }

    /// Disk bytes of the committed layer `chain_id` (what its commit recorded, or a walk
    /// of it when it has no record); None when it is not there.
    pub fn layer_usage(&self, chain_id: &str) -> Option<u64> {
        let dir = self.layers.join(chain_hex(chain_id).ok()?);
        if let Some((bytes, _)) = read_usage(&dir) {
            return Some(bytes);
        }
        walk_usage(&dir, None).ok().map(|(bytes, _)| bytes)
    }
}

/// The record of a committed layer's usage, next to its `fs`.
const USAGE_FILE: &str = "usage";

fn read_usage(layer_dir: &Path) -> Option<(u64, u64)> {
    let text = fs::read_to_string(layer_dir.join(USAGE_FILE)).ok()?;
    let mut words = text.split_whitespace();
    let bytes = words.next()?.parse().ok()?;
    let inodes = words.next()?.parse().ok()?;
    Some((bytes, inodes))
}

/// What [`Snapshotter::usage`] counts, for the tree at `top`; directories directly
/// under `layers` with a usage record count the record instead of being walked.
fn walk_usage(top: &Path, layers: Option<&Path>) -> Result<(u64, u64), SnapshotError> {
    let root = fs::symlink_metadata(top).map_err(io_err("stat", top))?;
    let dev = root.dev();
    let mut seen: HashSet<u64> = HashSet::new();
    seen.insert(root.ino());
    let mut bytes = root.blocks() * 512;
    let mut recorded_inodes = 0u64;
    let mut stack = vec![top.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            // Removed meanwhile (a pending snapshot dropped, a layer removed).
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(err) => return Err(io_err("reading", &dir)(err)),
        };
        let in_layers = layers.is_some_and(|layers| dir == layers);
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                Err(err) => return Err(io_err("reading", &dir)(err)),
            };
            if in_layers {
                if let Some((layer_bytes, layer_inodes)) = read_usage(&entry.path()) {
                    bytes += layer_bytes;
                    recorded_inodes += layer_inodes;
                    continue;
                }
            }
            // DirEntry::metadata does not follow symlinks.
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                Err(err) => return Err(io_err("stat", &entry.path())(err)),
            };
            if meta.dev() != dev {
                continue;
            }
            if seen.insert(meta.ino()) {
                bytes += meta.blocks() * 512;
            }
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    Ok((bytes, seen.len() as u64 + recorded_inodes))
}

/// `rename(2)` that fails with `EEXIST` instead of replacing `to`.
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    let from_c = path_cstring(from)?;
    let to_c = path_cstring(to)?;
    // SAFETY: both paths are NUL-terminated.
    let ret = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from_c.as_ptr(),
            libc::AT_FDCWD,
            to_c.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if ret == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EINVAL) {
        return Err(err);
    }
    // A filesystem without RENAME_NOREPLACE: a plain rename fails on a non-empty
    // directory (and a committed layer always holds `fs`).
    if to.exists() {
        return Err(io::Error::from_raw_os_error(libc::EEXIST));
    }
    fs::rename(from, to)
}

fn sync_dir(dir: &Path) -> Result<(), SnapshotError> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io_err("syncing", dir))
}

fn path_cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// Mounts a writable container rootfs at `target` (created if missing): an overlay with
/// the layers of `chain` as lower directories (`chain[0]` is the base layer, the last
/// lowerdir in overlay order) and `upper` and `work` directories inside `container_dir`
/// (created if missing; an existing upper dir is reused, so a container keeps its
/// changes across restarts).
///
/// With `readonly`, no upper dir is used: an overlay of the lower dirs only (two or
/// more layers), or a read-only bind mount of the single layer. A chain of zero layers
/// mounts the (empty) upper dir itself.
///
/// The lower dirs are passed one by one with the new mount API
/// (`fsconfig(FSCONFIG_SET_STRING, "lowerdir+", ..)`, Linux 6.8+), so the number of
/// layers is not limited by the one page of classic mount(2) options. On older kernels,
/// classic mount(2) is used when the options fit in a page; when they do not, the lower
/// dirs are passed as `/proc/self/fd/<n>` of `O_PATH` descriptors, about 16 bytes per
/// layer (enough for more than 200 layers). containerd solves the same limit
/// differently: it rewrites the lowerdirs relative to their common parent directory and
/// calls mount(2) from a helper process that has `chdir`ed there (a thread cannot
/// `chdir` alone in a multi-threaded daemon).
pub fn mount_rootfs(
    snapshotter: &Snapshotter,
    chain: &[String],
    container_dir: &Path,
    target: &Path,
    readonly: bool,
) -> Result<(), SnapshotError> {
    let mut lowers = Vec::with_capacity(chain.len());
    for chain_id in chain.iter().rev() {
        chain_hex(chain_id)?;
        if !snapshotter.exists(chain_id) {
            return Err(SnapshotError::NotFound(chain_id.clone()));
        }
        lowers.push(snapshotter.layer_dir(chain_id));
    }
    DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(container_dir)
        .map_err(io_err("creating", container_dir))?;
    fs::create_dir_all(target).map_err(io_err("creating", target))?;
    let upper = container_dir.join("upper");
    let work = container_dir.join("work");
    let mount_err = |message: String| SnapshotError::Mount {
        target: target.to_path_buf(),
        message,
    };
    if lowers.is_empty() || !readonly {
        create_dir_mode(&upper, 0o755)?;
    }
    if lowers.is_empty() {
        return bind_mount(&upper, target, readonly)
            .map_err(|err| mount_err(format!("bind mount of {}: {err}", upper.display())));
    }
    if readonly {
        if let [single] = lowers.as_slice() {
            return bind_mount(single, target, true).map_err(|err| {
                mount_err(format!(
                    "read-only bind mount of {}: {err}",
                    single.display()
                ))
            });
        }
        return mount_overlay(&lowers, None, target, true).map_err(mount_err);
    }
    create_dir_mode(&work, 0o711)?;
    mount_overlay(&lowers, Some((&upper, &work)), target, false).map_err(mount_err)
}

fn create_dir_mode(dir: &Path, mode: u32) -> Result<(), SnapshotError> {
    match DirBuilder::new().mode(mode).create(dir) {
        Ok(()) => {
            fs::set_permissions(dir, fs::Permissions::from_mode(mode)).map_err(io_err("chmod", dir))
        }
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(err) => Err(io_err("creating", dir)(err)),
    }
}

/// Unmounts the rootfs at `target`; not mounted (or missing) is `Ok`. A busy mount is
/// detached lazily (`MNT_DETACH`), with a warning.
pub fn unmount_rootfs(target: &Path) -> Result<(), SnapshotError> {
    let unmount_err = |source: io::Error| SnapshotError::Unmount {
        target: target.to_path_buf(),
        source,
    };
    let c_target = path_cstring(target).map_err(unmount_err)?;
    // Loop: the same target may have been mounted more than once.
    for _ in 0..16 {
        // SAFETY: `c_target` is NUL-terminated.
        if unsafe { libc::umount2(c_target.as_ptr(), 0) } == 0 {
            continue;
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINVAL | libc::ENOENT) => return Ok(()),
            Some(libc::EBUSY) => {
                tracing::warn!(target = %target.display(), "rootfs busy: detaching it lazily");
                // SAFETY: `c_target` is NUL-terminated.
                if unsafe { libc::umount2(c_target.as_ptr(), libc::MNT_DETACH) } != 0 {
                    return Err(unmount_err(io::Error::last_os_error()));
                }
            }
            _ => return Err(unmount_err(err)),
        }
    }
    Err(unmount_err(io::Error::other(
        "still mounted after 16 unmounts",
    )))
}

fn bind_mount(source: &Path, target: &Path, readonly: bool) -> io::Result<()> {
    use nix::mount::{mount, MsFlags};
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )?;
    if readonly {
        let remount = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        if let Err(err) = mount(None::<&str>, target, None::<&str>, remount, None::<&str>) {
            let _ = nix::mount::umount2(target, nix::mount::MntFlags::empty());
            return Err(err.into());
        }
    }
    Ok(())
}

/// Why the new mount API could not mount the overlay.
enum NewApiError {
    /// This kernel lacks fsopen(2) or overlay's `lowerdir+` (before 6.8).
    Unsupported,
    Failed(String),
}

/// Mounts an overlay of `lowers` (top-most first) at `target`.
fn mount_overlay(
    lowers: &[PathBuf],
    upper: Option<(&Path, &Path)>,
    target: &Path,
    readonly: bool,
) -> Result<(), String> {
    match mount_overlay_new_api(lowers, upper, target, readonly) {
        Ok(()) => Ok(()),
        Err(NewApiError::Failed(message)) => Err(message),
        Err(NewApiError::Unsupported) => {
            tracing::debug!("no overlay lowerdir+ support: using classic mount(2)");
            mount_overlay_classic(lowers, upper, target, readonly)
        }
    }
}

mod newapi {
    //! The new mount API (Linux 5.2+), by raw system calls: neither nix 0.29 nor libc
    //! wrap them.
    use std::ffi::CStr;
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    use nix::libc;

    fn fd_result(ret: libc::c_long) -> io::Result<OwnedFd> {
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = libc::c_int::try_from(ret).map_err(|_| io::Error::other("fd out of range"))?;
        // SAFETY: a fresh fd returned by the kernel, owned by nothing else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    pub fn fsopen(fs_name: &CStr) -> io::Result<OwnedFd> {
        // SAFETY: `fs_name` is NUL-terminated.
        fd_result(unsafe {
            libc::syscall(libc::SYS_fsopen, fs_name.as_ptr(), libc::FSOPEN_CLOEXEC)
        })
    }

    pub fn set_string(fs: &OwnedFd, key: &CStr, value: &CStr) -> io::Result<()> {
        // SAFETY: key and value are NUL-terminated.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                fs.as_raw_fd(),
                libc::FSCONFIG_SET_STRING,
                key.as_ptr(),
                value.as_ptr(),
                0,
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub fn create(fs: &OwnedFd) -> io::Result<()> {
        // SAFETY: no pointers passed.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                fs.as_raw_fd(),
                libc::FSCONFIG_CMD_CREATE,
                std::ptr::null::<libc::c_char>(),
                std::ptr::null::<libc::c_char>(),
                0,
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub fn fsmount(fs: &OwnedFd, attr_flags: u64) -> io::Result<OwnedFd> {
        // SAFETY: no pointers passed.
        fd_result(unsafe {
            libc::syscall(
                libc::SYS_fsmount,
                fs.as_raw_fd(),
                libc::FSMOUNT_CLOEXEC,
                attr_flags,
            )
        })
    }

    pub fn move_mount(mount: &OwnedFd, target: &CStr) -> io::Result<()> {
        // SAFETY: both strings are NUL-terminated.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                mount.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_FDCWD,
                target.as_ptr(),
                libc::MOVE_MOUNT_F_EMPTY_PATH,
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The messages the filesystem logged into the context (e.g. "e overlay: ...").
    pub fn messages(fs: &OwnedFd) -> String {
        let mut out = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            // SAFETY: `buf` is valid for writes of its length.
            let n = unsafe { libc::read(fs.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            let message = String::from_utf8_lossy(&buf[..n as usize]).into_owned();
            out.push(message.trim_end().to_string());
        }
        out.join("; ")
    }
}

fn mount_overlay_new_api(
    lowers: &[PathBuf],
    upper: Option<(&Path, &Path)>,
    target: &Path,
    readonly: bool,
) -> Result<(), NewApiError> {
    let cstring = |path: &Path| {
        path_cstring(path).map_err(|err| NewApiError::Failed(format!("{}: {err}", path.display())))
    };
    let fs = match newapi::fsopen(c"overlay") {
        Ok(fs) => fs,
        Err(err) if err.raw_os_error() == Some(libc::ENOSYS) => {
            return Err(NewApiError::Unsupported)
        }
        Err(err) => return Err(NewApiError::Failed(format!("fsopen(overlay): {err}"))),
    };
    let failed = |what: String, err: io::Error| {
        let messages = newapi::messages(&fs);
        if messages.is_empty() {
            NewApiError::Failed(format!("{what}: {err}"))
        } else {
            NewApiError::Failed(format!("{what}: {err} ({messages})"))
        }
    };
    newapi::set_string(&fs, c"source", c"overlay")
        .map_err(|err| failed("overlay source".to_string(), err))?;
    for (i, lower) in lowers.iter().enumerate() {
        if let Err(err) = newapi::set_string(&fs, c"lowerdir+", &cstring(lower)?) {
            if i == 0 && err.raw_os_error() == Some(libc::EINVAL) {
                // "Unknown parameter 'lowerdir+'" before Linux 6.8.
                let messages = newapi::messages(&fs);
                if messages.contains("Unknown parameter") || messages.is_empty() {
                    return Err(NewApiError::Unsupported);
                }
                return Err(NewApiError::Failed(format!(
                    "lower dir {}: {err} ({messages})",
                    lower.display()
                )));
            }
            return Err(failed(format!("lower dir {}", lower.display()), err));
        }
    }
    if let Some((upper, work)) = upper {
        newapi::set_string(&fs, c"upperdir", &cstring(upper)?)
            .map_err(|err| failed(format!("upper dir {}", upper.display()), err))?;
        newapi::set_string(&fs, c"workdir", &cstring(work)?)
            .map_err(|err| failed(format!("work dir {}", work.display()), err))?;
    }
    // As containerd: layers are shared by many overlays, which the index feature
    // (verifying lower/upper pairings) does not allow.
    newapi::set_string(&fs, c"index", c"off")
        .map_err(|err| failed("index=off".to_string(), err))?;
    newapi::create(&fs).map_err(|err| {
        failed(
            format!("creating the overlay of {} layers", lowers.len()),
            err,
        )
    })?;
    let attrs = if readonly { libc::MOUNT_ATTR_RDONLY } else { 0 };
    let mount = newapi::fsmount(&fs, attrs).map_err(|err| failed("fsmount".to_string(), err))?;
    newapi::move_mount(&mount, &cstring(target)?)
        .map_err(|err| NewApiError::Failed(format!("move_mount to {}: {err}", target.display())))
}

fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096)
}

/// Overlay options for mount(2). Paths with characters the option parser gives a
/// meaning to are refused.
fn classic_options(lowers: &[String], upper: Option<(&Path, &Path)>) -> Result<String, String> {
    let check = |path: &str| {
        if path.contains([',', ':', '\\']) {
            Err(format!(
                "{path}: a ',', ':' or '\\' cannot be passed in overlay mount options"
            ))
        } else {
            Ok(())
        }
    };
    for lower in lowers {
        check(lower)?;
    }
    let mut options = format!("lowerdir={}", lowers.join(":"));
    if let Some((upper, work)) = upper {
        let upper = upper.to_string_lossy();
        let work = work.to_string_lossy();
        check(&upper)?;
        check(&work)?;
        options.push_str(&format!(",upperdir={upper},workdir={work}"));
    }
    options.push_str(",index=off");
    Ok(options)
}

fn mount_overlay_classic(
    lowers: &[PathBuf],
    upper: Option<(&Path, &Path)>,
    target: &Path,
    readonly: bool,
) -> Result<(), String> {
    let paths: Vec<String> = lowers
        .iter()
        .map(|l| l.to_string_lossy().into_owned())
        .collect();
    let options = classic_options(&paths, upper)?;
    if options.len() < page_size() {
        return classic_mount(target, &options, readonly);
    }
    // Too long for one page: name the lower dirs by O_PATH descriptors instead, kept
    // open until mount(2) has resolved them.
    let mut fds: Vec<OwnedFd> = Vec::with_capacity(lowers.len());
    for lower in lowers {
        let c = path_cstring(lower).map_err(|err| format!("{}: {err}", lower.display()))?;
        // SAFETY: `c` is NUL-terminated.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(format!(
                "{}: {}",
                lower.display(),
                io::Error::last_os_error()
            ));
        }
        // SAFETY: a fresh fd.
        fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    let short: Vec<String> = fds
        .iter()
        .map(|fd| format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .collect();
    let options = classic_options(&short, upper)?;
    if options.len() >= page_size() {
        return Err(format!(
            "{} layers do not fit in one page of overlay mount options, and this kernel \
             lacks the lowerdir+ parameter of the new mount API (Linux 6.8)",
            lowers.len()
        ));
    }
    let result = classic_mount(target, &options, readonly);
    drop(fds);
    result
}

fn classic_mount(target: &Path, options: &str, readonly: bool) -> Result<(), String> {
    use nix::mount::{mount, MsFlags};
    let flags = if readonly {
        MsFlags::MS_RDONLY
    } else {
        MsFlags::empty()
    };
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        flags,
        Some(options),
    )
    .map_err(|err| format!("mount(2) overlay with options {options:?}: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4";
    const B: &str = "sha256:2c3e1d3f5b2e4a1f3a6b7c8d9e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b";
    const C: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000001";

    #[test]
    fn chain_ids_follow_the_oci_definition() {
        assert!(Snapshotter::chain_ids(&[]).is_empty());
        let chain = Snapshotter::chain_ids(&[A.to_string(), B.to_string(), C.to_string()]);
        // Computed independently: printf '%s %s' "$A" "$B" | sha256sum, and so on.
        assert_eq!(
            chain,
            vec![A.to_string(), CHAIN_AB.to_string(), CHAIN_ABC.to_string()]
        );
    }

    const CHAIN_AB: &str =
        "sha256:76cd8da9a8de007995b33667948d46e70aedde1f17bfab2b81f1486a73fde7c3";
    const CHAIN_ABC: &str =
        "sha256:96ab3ae9ddb47e2b85f2da2c16d98dc94f2f326043356b9d83625f400f8394e3";

    #[test]
    fn chain_id_validation() {
        assert!(chain_hex(A).is_ok());
        for bad in [
            "a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4",
            "sha256:../../etc",
            "sha256:A3ED95CAEB02FFE68CDD9FD84406680AE93D633CB16422D00E8A7C22955B46D4",
            "sha512:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4",
            "sha256:a3ed",
        ] {
            assert!(chain_hex(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn snapshot_lifecycle() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("snapshots");
        let snapshots = Snapshotter::open(&root).unwrap();
        // leftovers in tmp are removed at open
        fs::create_dir_all(root.join("tmp/leftover/fs/x")).unwrap();
        let snapshots2 = Snapshotter::open(&root).unwrap();
        assert!(!root.join("tmp/leftover").exists());
        drop(snapshots2);

        assert!(!snapshots.exists(A));
        assert!(snapshots.list().unwrap().is_empty());
        let pending = snapshots.prepare().unwrap();
        fs::write(pending.path().join("file"), b"one").unwrap();
        let tmp_dir = pending.dir.clone();
        snapshots.commit(pending, A).unwrap();
        assert!(!tmp_dir.exists());
        assert!(snapshots.exists(A));
        assert_eq!(
            fs::read(snapshots.layer_dir(A).join("file")).unwrap(),
            b"one"
        );
        assert_eq!(snapshots.list().unwrap(), vec![A.to_string()]);

        // a concurrent commit of the same chain id is discarded, the first one kept
        let pending = snapshots.prepare().unwrap();
        fs::write(pending.path().join("file"), b"two").unwrap();
        let tmp_dir = pending.dir.clone();
        snapshots.commit(pending, A).unwrap();
        assert!(!tmp_dir.exists());
        assert_eq!(
            fs::read(snapshots.layer_dir(A).join("file")).unwrap(),
            b"one"
        );

        // dropped without commit: removed
        let pending = snapshots.prepare().unwrap();
        let tmp_dir = pending.dir.clone();
        fs::write(pending.path().join("file"), b"three").unwrap();
        drop(pending);
        assert!(!tmp_dir.exists());

        let (bytes, inodes) = snapshots.usage().unwrap();
        assert!(bytes > 0);
        // root, layers, tmp, <hex>, fs, file
        assert_eq!(inodes, 6);

        assert!(matches!(
            snapshots.commit(snapshots.prepare().unwrap(), "sha256:nope"),
            Err(SnapshotError::InvalidChainId(_))
        ));
        snapshots.remove(A).unwrap();
        snapshots.remove(A).unwrap();
        assert!(!snapshots.exists(A));
        assert!(snapshots.list().unwrap().is_empty());
        assert_eq!(fs::read_dir(root.join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn usage_of_a_committed_layer_is_its_record() {
        let dir = tempfile::tempdir().unwrap();
        let snapshots = Snapshotter::open(dir.path()).unwrap();
        let pending = snapshots.prepare().unwrap();
        fs::write(pending.path().join("a"), vec![1u8; 64 * 1024]).unwrap();
        snapshots.commit(pending, A).unwrap();
        let before = snapshots.usage().unwrap();
        // What is added to a committed layer (nothing ever is) is not walked: the
        // record made at commit counts.
        let fs_dir = dir
            .path()
            .join("layers")
            .join(&A["sha256:".len()..])
            .join("fs");
        fs::write(fs_dir.join("b"), vec![1u8; 1024 * 1024]).unwrap();
        assert_eq!(snapshots.usage().unwrap(), before);
        let recorded = snapshots.layer_usage(A).unwrap();
        assert!((64 * 1024..1024 * 1024).contains(&recorded), "{recorded}");
        assert_eq!(snapshots.layer_usage("sha256:nope"), None);
        // without the record, the layer is walked
        fs::remove_file(fs_dir.parent().unwrap().join(USAGE_FILE)).unwrap();
        let walked = snapshots.usage().unwrap();
        assert!(snapshots.layer_usage(A).unwrap() > 1024 * 1024);
        assert!(
            walked.0 > before.0 + 1000 * 1024 && walked.1 == before.1 + 1,
            "{walked:?}"
        );
    }

    #[test]
    fn usage_counts_hard_links_once() {
        let dir = tempfile::tempdir().unwrap();
        let snapshots = Snapshotter::open(dir.path()).unwrap();
        let pending = snapshots.prepare().unwrap();
        fs::write(pending.path().join("a"), vec![1u8; 64 * 1024]).unwrap();
        fs::hard_link(pending.path().join("a"), pending.path().join("b")).unwrap();
        std::os::unix::fs::symlink("/usr", pending.path().join("usr")).unwrap();
        snapshots.commit(pending, A).unwrap();
        let (bytes, inodes) = snapshots.usage().unwrap();
        // root, layers, tmp, <hex>, fs, a (= b), usr
        assert_eq!(inodes, 7);
        assert!((64 * 1024..1024 * 1024).contains(&bytes), "{bytes}");
    }

    /// The mount(2) fallback for kernels without `lowerdir+`, with lower dirs named by
    /// `/proc/self/fd/<n>` when the options do not fit in a page.
    #[test]
    fn classic_mount_fallback_with_fd_paths() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "mounting overlayfs needs root: run the tests as root (./scripts/test)"
        );
        let dir = tempfile::tempdir().unwrap();
        // Long lower paths: 60 layers of ~110 bytes do not fit in 4096 bytes.
        let long = dir.path().join("x".repeat(60));
        let mut lowers = Vec::new();
        for i in 0..60 {
            let lower = long.join(format!("layer-{i:03}-{}", "y".repeat(30)));
            fs::create_dir_all(&lower).unwrap();
            fs::write(lower.join("common"), format!("{i}")).unwrap();
            fs::write(lower.join(format!("only-{i}")), b"").unwrap();
            lowers.push(lower);
        }
        // top-most first
        lowers.reverse();
        let paths: Vec<String> = lowers.iter().map(|l| l.to_string_lossy().into()).collect();
        assert!(classic_options(&paths, None).unwrap().len() > page_size());
        let upper = dir.path().join("upper");
        let work = dir.path().join("work");
        fs::create_dir(&upper).unwrap();
        fs::create_dir(&work).unwrap();
        let target = dir.path().join("merged");
        fs::create_dir(&target).unwrap();
        mount_overlay_classic(&lowers, Some((&upper, &work)), &target, false).unwrap();
        let read = fs::read_to_string(target.join("common"));
        let only = (0..60).all(|i| target.join(format!("only-{i}")).exists());
        fs::write(target.join("new"), b"new").unwrap();
        unmount_rootfs(&target).unwrap();
        unmount_rootfs(&target).unwrap();
        assert_eq!(read.unwrap(), "59");
        assert!(only);
        assert!(upper.join("new").exists());
    }
}
