//! A container's read-write layer (its overlayfs upper dir) read as an image layer:
//! what changed against the image ([`changes`], `docker diff`), the layer tar with OCI
//! whiteouts ([`write_tar`] with a [`LayerSource`], `docker commit`, see
//! [`commit`](self::commit)), its size ([`size`], `SizeRw`), and a tar of a whole
//! mounted root filesystem ([`write_tar`] alone, `docker export`).
//!
//! The trees read here belong to a container, which may be running and may swap any of
//! its files for a symlink at any moment. Every walk goes from directory fd to
//! directory fd (`openat` with `O_NOFOLLOW | O_DIRECTORY`, `fstatat` with
//! `AT_SYMLINK_NOFOLLOW`), and a file is opened with `O_NOFOLLOW` and checked with
//! `fstat` to be the regular file that was listed: nothing is resolved through a
//! symlink, so no read leaves the tree, whatever the container does meanwhile. The
//! lower dirs (committed snapshots, never modified) are read by path.
//!
//! What counts as a change follows dockerd's overlay2 driver (moby
//! `pkg/archive/changes.go`, `OverlayChanges`): every entry of the upper dir is a change,
//! `A` when the lower layers do not have it, `C` when they do (a directory only when its
//! size, mode or mtime differ), `D` for a whiteout (a 0/0 character device); the parent
//! of an added or deleted path is reported `C` once, in walk order (sorted, parents
//! first). An opaque directory (`trusted.overlay.opaque=y`, a directory removed and made
//! again) is reported as `C` (or `A`) with a `D` for each entry of the lower layers it
//! hides, which is what dockerd's naive diff reports (moby's overlay walk reports the
//! directory itself as deleted and keeps quiet about its old entries).
//!
//! Mount points the runtime creates in the upper dir when the image lacks them
//! (`/etc/hosts`, `/etc/resolv.conf`, ...: [`RUNTIME_MOUNTPOINTS`], dockerd's "init
//! layer") are not changes and are not committed, nor are directories that hold only
//! them, so a fresh container's diff is empty, as with dockerd.
//!
//! Not handled: overlayfs `redirect_dir` and `metacopy` (a renamed directory or a
//! metadata-only copy-up keeps its data in a lower layer, which an upper-dir walk cannot
//! see). wharf mounts without them and both are off by default in the kernel; a commit
//! that meets one fails, naming the path, instead of writing a layer without the data.

pub mod commit;
mod sys;

use std::collections::{BTreeSet, HashMap};
use std::ffi::{CStr, CString, OsStr};
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use nix::libc;

/// Mount points a container's runtime makes in its root filesystem when the image
/// lacks them: dockerd keeps them in the container's "init layer", below the
/// read-write layer, so they are neither changes nor committed.
pub const RUNTIME_MOUNTPOINTS: &[&str] = &[
    "/.dockerenv",
    "/dev/console",
    "/dev/pts",
    "/dev/shm",
    "/etc/hostname",
    "/etc/hosts",
    "/etc/mtab",
    "/etc/resolv.conf",
    "/proc",
    "/sys",
];

/// The diff ID of a layer without entries (a tar of just its two zero blocks): a commit
/// that changed nothing adds no layer (dockerd's `layer.IsEmpty`).
pub const EMPTY_LAYER_DIFF_ID: &str =
    "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef";

const OPAQUE_XATTR: &CStr = c"trusted.overlay.opaque";
const REDIRECT_XATTR: &CStr = c"trusted.overlay.redirect";
const METACOPY_XATTR: &CStr = c"trusted.overlay.metacopy";
/// The one xattr a layer keeps (file capabilities), as dockerd's archive does.
const CAPABILITY_XATTR: &CStr = c"security.capability";
const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// What happened to a path, with Docker's numbers (`Kind` of `/containers/{id}/changes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Modified,
    Added,
    Deleted,
}

impl ChangeKind {
    /// 0 modified, 1 added, 2 deleted (moby's `archive.ChangeType`).
    pub fn code(self) -> u8 {
        match self {
            ChangeKind::Modified => 0,
            ChangeKind::Added => 1,
            ChangeKind::Deleted => 2,
        }
    }

    /// `C`, `A`, `D`, as `docker diff` prints them.
    pub fn letter(self) -> char {
        match self {
            ChangeKind::Modified => 'C',
            ChangeKind::Added => 'A',
            ChangeKind::Deleted => 'D',
        }
    }
}

/// One changed path (absolute, inside the container).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub path: String,
    pub kind: ChangeKind,
}

/// The read-write layer of a container: its upper dir and its image's layers.
#[derive(Debug, Clone)]
pub struct LayerSource {
    /// The overlay upper dir.
    pub upper: PathBuf,
    /// The image's layer directories, top-most first (overlay lowerdir order).
    pub lowers: Vec<PathBuf>,
}

/// Whether `path` is one of `skip` or below one.
fn skipped(skip: &[&str], path: &str) -> bool {
    skip.iter().any(|s| {
        path == *s
            || (path.len() > s.len() && path.starts_with(s) && path.as_bytes()[s.len()] == b'/')
    })
}

/// Whether some path of `skip` lies below the directory `path`.
fn holds_skipped(skip: &[&str], path: &str) -> bool {
    skip.iter().any(|s| {
        s.len() > path.len() + 1 && s.starts_with(path) && s.as_bytes()[path.len()] == b'/'
    })
}

/// `parent` + "/" + `name` (the root's children: "/name").
fn child_path(parent: &str, name: &[u8]) -> String {
    format!("{parent}/{}", String::from_utf8_lossy(name))
}

fn parent_of(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

// ---------------------------------------------------------------------------
// Lower layers: the merged view of the image, by overlayfs's lookup rules.

/// What the lower layers hold at a name of a directory whose merged lower view is
/// `dirs` (top-most first): the top-most entry's metadata and, for a directory, the
/// directories that make up its merged view. Whiteouts hide what is below them, a
/// non-directory ends the merge, an opaque directory is the last one merged.
fn lower_lookup(
    dirs: &[PathBuf],
    name: &OsStr,
) -> io::Result<Option<(fs::Metadata, Vec<PathBuf>)>> {
    let mut found: Option<fs::Metadata> = None;
    let mut merged = Vec::new();
    for dir in dirs {
        let path = dir.join(name);
        let meta = match fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(err) if matches!(err.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
                continue
            }
            Err(err) => return Err(err),
        };
        if meta.file_type().is_char_device() && meta.rdev() == 0 {
            break;
        }
        if !meta.is_dir() {
            if found.is_none() {
                found = Some(meta);
            }
            break;
        }
        let opaque = sys::lgetxattr(&path, OPAQUE_XATTR)?.as_deref() == Some(b"y");
        if found.is_none() {
            found = Some(meta);
        }
        merged.push(path);
        if opaque {
            break;
        }
    }
    Ok(found.map(|meta| (meta, merged)))
}

/// The names the merged lower directory `dirs` shows.
fn lower_names(dirs: &[PathBuf]) -> io::Result<BTreeSet<Vec<u8>>> {
    let mut all = BTreeSet::new();
    for dir in dirs {
        for entry in fs::read_dir(dir)? {
            all.insert(entry?.file_name().as_bytes().to_vec());
        }
    }
    let mut visible = BTreeSet::new();
    for name in all {
        if lower_lookup(dirs, OsStr::from_bytes(&name))?.is_some() {
            visible.insert(name);
        }
    }
    Ok(visible)
}

/// moby's `sameFsTime`: equal seconds, and equal nanoseconds unless one has none.
fn same_time(a: (i64, i64), b: (i64, i64)) -> bool {
    a.0 == b.0 && (a.1 == 0 || b.1 == 0 || a.1 == b.1)
}

/// A directory of the upper dir that the lower layers have alike (dockerd's test: size,
/// mode and mtime).
fn same_dir(upper: &sys::Stat, lower: &fs::Metadata) -> bool {
    upper.size == lower.size()
        && upper.mode == lower.mode()
        && same_time(
            (upper.mtime, upper.mtime_nsec),
            (lower.mtime(), lower.mtime_nsec()),
        )
}

/// Whether the upper directory `dir` (at `path`) exists only to hold runtime mount
/// points: everything in it is skipped, or such a directory.
fn holds_only_mountpoints(dir: &OwnedFd, path: &str, skip: &[&str]) -> io::Result<bool> {
    if !holds_skipped(skip, path) {
        return Ok(false);
    }
    let names = sys::names(dir)?;
    if names.is_empty() {
        return Ok(false);
    }
    for name in names {
        let child = child_path(path, name.as_bytes());
        if skipped(skip, &child) {
            continue;
        }
        if !holds_skipped(skip, &child) {
            return Ok(false);
        }
        let stat = sys::stat_at(dir, &name)?;
        if !stat.is_dir() {
            return Ok(false);
        }
        let sub = sys::open_dir_at(dir, &name)?;
        if !holds_only_mountpoints(&sub, &child, skip)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Whether an upper directory that holds only runtime mount points is left out: when
/// the image lacks it (the runtime made it), or has it with the same mode and owner.
fn mountpoint_holder(
    dir: &OwnedFd,
    path: &str,
    stat: &sys::Stat,
    lower: Option<&fs::Metadata>,
    skip: &[&str],
) -> io::Result<bool> {
    let alike =
        lower.is_none_or(|m| m.mode() == stat.mode && m.uid() == stat.uid && m.gid() == stat.gid);
    Ok(alike && holds_only_mountpoints(dir, path, skip)?)
}

fn vanished(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR))
}

// ---------------------------------------------------------------------------
// Changes

/// The changes of a container's read-write layer against its image, in dockerd's order
/// (see the module docs); `skip` lists paths that are never changes
/// ([`RUNTIME_MOUNTPOINTS`]).
pub fn changes(layer: &LayerSource, skip: &[&str]) -> io::Result<Vec<Change>> {
    let root = sys::open_dir(&layer.upper)?;
    let mut walk = ChangeWalk {
        skip,
        changes: Vec::new(),
        changed_dirs: Default::default(),
    };
    walk.dir(&root, "", &layer.lowers, false)?;
    Ok(walk.changes)
}

struct ChangeWalk<'a> {
    skip: &'a [&'a str],
    changes: Vec<Change>,
    changed_dirs: std::collections::HashSet<String>,
}

impl ChangeWalk<'_> {
    fn record(&mut self, path: String, kind: ChangeKind) {
        if kind != ChangeKind::Modified {
            let parent = parent_of(&path);
            if parent != "/" && !self.changed_dirs.contains(parent) {
                self.changed_dirs.insert(parent.to_string());
                self.changes.push(Change {
                    path: parent.to_string(),
                    kind: ChangeKind::Modified,
                });
            }
        }
        self.changes.push(Change { path, kind });
    }

    /// The entries of the upper directory `fd` at `path` ("" for the root), whose
    /// merged lower view is `lower`; an opaque one also reports what it hides.
    fn dir(&mut self, fd: &OwnedFd, path: &str, lower: &[PathBuf], opaque: bool) -> io::Result<()> {
        let names = sys::names(fd)?;
        let mut items: Vec<(Vec<u8>, Option<CString>)> = names
            .into_iter()
            .map(|name| (name.as_bytes().to_vec(), Some(name)))
            .collect();
        if opaque && !lower.is_empty() {
            let present: BTreeSet<Vec<u8>> = items.iter().map(|(n, _)| n.clone()).collect();
            for hidden in lower_names(lower)? {
                if !present.contains(&hidden) {
                    items.push((hidden, None));
                }
            }
            items.sort();
        }
        for (name, upper) in items {
            let child = child_path(path, &name);
            if skipped(self.skip, &child) {
                continue;
            }
            match upper {
                Some(cname) => self.entry(fd, &cname, child, lower)?,
                None => self.record(child, ChangeKind::Deleted),
            }
        }
        Ok(())
    }

    fn entry(
        &mut self,
        fd: &OwnedFd,
        name: &CStr,
        path: String,
        lower: &[PathBuf],
    ) -> io::Result<()> {
        let stat = match sys::stat_at(fd, name) {
            Ok(stat) => stat,
            Err(err) if vanished(&err) => return Ok(()),
            Err(err) => return Err(err),
        };
        if stat.is_whiteout() {
            self.record(path, ChangeKind::Deleted);
            return Ok(());
        }
        let found = lower_lookup(lower, OsStr::from_bytes(name.to_bytes()))?;
        if !stat.is_dir() {
            let kind = if found.is_some() {
                ChangeKind::Modified
            } else {
                ChangeKind::Added
            };
            self.record(path, kind);
            return Ok(());
        }
        let dir = match sys::open_dir_at(fd, name) {
            Ok(dir) => dir,
            Err(err) if vanished(&err) => return Ok(()),
            Err(err) => return Err(err),
        };
        let opaque = sys::fgetxattr(&dir, OPAQUE_XATTR)?.as_deref() == Some(b"y");
        let (lower_meta, lower_dirs) = match found {
            Some((meta, dirs)) => (Some(meta), dirs),
            None => (None, Vec::new()),
        };
        if mountpoint_holder(&dir, &path, &stat, lower_meta.as_ref(), self.skip)? {
            return Ok(());
        }
        let kind = match &lower_meta {
            None => Some(ChangeKind::Added),
            Some(meta) if meta.is_dir() && !opaque && same_dir(&stat, meta) => None,
            Some(_) => Some(ChangeKind::Modified),
        };
        if let Some(kind) = kind {
            self.changed_dirs.insert(path.clone());
            self.record(path.clone(), kind);
        }
        self.dir(&dir, &path, &lower_dirs, opaque)
    }
}

// ---------------------------------------------------------------------------
// Size

/// Bytes of the files of the upper dir, each inode once, directories and `skip` left
/// out (dockerd's `SizeRw`, moby `directory.Size`).
pub fn size(upper: &Path, skip: &[&str]) -> io::Result<u64> {
    fn walk(
        fd: &OwnedFd,
        path: &str,
        skip: &[&str],
        seen: &mut std::collections::HashSet<(u64, u64)>,
    ) -> io::Result<u64> {
        let mut total = 0;
        for name in sys::names(fd)? {
            let child = child_path(path, name.as_bytes());
            if skipped(skip, &child) {
                continue;
            }
            let stat = match sys::stat_at(fd, &name) {
                Ok(stat) => stat,
                Err(err) if vanished(&err) => continue,
                Err(err) => return Err(err),
            };
            if stat.is_dir() {
                match sys::open_dir_at(fd, &name) {
                    Ok(dir) => total += walk(&dir, &child, skip, seen)?,
                    Err(err) if vanished(&err) => {}
                    Err(err) => return Err(err),
                }
            } else if stat.size > 0 && seen.insert((stat.dev, stat.ino)) {
                total += stat.size;
            }
        }
        Ok(total)
    }
    let root = sys::open_dir(upper)?;
    walk(&root, "", skip, &mut Default::default())
}

// ---------------------------------------------------------------------------
// Tar

/// Writes a tar of the tree at `root` to `out` (entries named relative to it, parents
/// before children, sorted; the root itself left out), as dockerd's archives: hard
/// links as links, sockets left out, `security.capability` kept.
///
/// With `layer` (then `root` is its upper dir), the tar is the layer: whiteouts become
/// `.wh.<name>` files, opaque directories get a `.wh..wh..opq` entry, and `skip`
/// (with directories that hold only those) is left out.
pub fn write_tar<W: Write>(
    root: &Path,
    layer: Option<(&LayerSource, &[&str])>,
    out: W,
) -> io::Result<W> {
    let fd = sys::open_dir(root)?;
    let mut builder = tar::Builder::new(out);
    let lowers = layer.map(|(l, _)| l.lowers.clone()).unwrap_or_default();
    let mut walk = TarWalk {
        builder: &mut builder,
        skip: layer.map(|(_, skip)| skip).unwrap_or(&[]),
        layer: layer.is_some(),
        links: HashMap::new(),
    };
    walk.dir(&fd, "", Path::new(""), &lowers)?;
    builder.into_inner()
}

struct TarWalk<'a, W: Write> {
    builder: &'a mut tar::Builder<W>,
    skip: &'a [&'a str],
    layer: bool,
    /// (dev, ino) of files with several links -> the first name archived.
    links: HashMap<(u64, u64), Vec<u8>>,
}

fn header(stat: &sys::Stat, kind: tar::EntryType) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(stat.mode & 0o7777);
    header.set_uid(u64::from(stat.uid));
    header.set_gid(u64::from(stat.gid));
    header.set_mtime(stat.mtime.max(0) as u64);
    header.set_size(0);
    header
}

/// One PAX record: `<length> <key>=<value>\n`, the length counting itself.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let base = key.len() + value.len() + 3;
    let mut len = base + 1;
    while len != base + len.to_string().len() {
        len = base + len.to_string().len();
    }
    let mut record = format!("{len} {key}=").into_bytes();
    record.extend_from_slice(value);
    record.push(b'\n');
    record
}

/// Appends a link entry (symbolic or hard) whose target is `target` byte for byte (the
/// tar crate's own `append_link` rewrites it as a path: `/` would become `//`), with a
/// GNU long-link entry before it when the target is longer than the header's field.
fn append_link<W: Write>(
    builder: &mut tar::Builder<W>,
    header: &mut tar::Header,
    path: &Path,
    target: &[u8],
) -> io::Result<()> {
    let field_len = header.as_old().linkname.len();
    if target.len() > field_len {
        let mut long = tar::Header::new_gnu();
        long.as_mut_bytes()[..13].copy_from_slice(b"././@LongLink");
        long.set_mode(0o644);
        long.set_uid(0);
        long.set_gid(0);
        long.set_mtime(0);
        long.set_size(target.len() as u64 + 1);
        long.set_entry_type(tar::EntryType::GNULongLink);
        long.set_cksum();
        builder.append(&long, target.chain(&[0u8][..]))?;
    }
    let field = &mut header.as_old_mut().linkname;
    field.fill(0);
    let n = target.len().min(field_len);
    field[..n].copy_from_slice(&target[..n]);
    builder.append_data(header, path, io::empty())
}

/// Reads exactly `left` bytes: a file that shrank meanwhile is padded with zeros (the
/// tar header already promised its size), one that grew is cut.
struct Exact<R> {
    inner: R,
    left: u64,
    eof: bool,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let n = if self.eof {
            0
        } else {
            self.inner.read(&mut buf[..want])?
        };
        let n = if n == 0 {
            self.eof = true;
            buf[..want].fill(0);
            want
        } else {
            n
        };
        self.left -= n as u64;
        Ok(n)
    }
}

impl<W: Write> TarWalk<'_, W> {
    /// The entries of the directory `fd`, at `path` in the tree and `rel` in the tar.
    fn dir(&mut self, fd: &OwnedFd, path: &str, rel: &Path, lower: &[PathBuf]) -> io::Result<()> {
        for name in sys::names(fd)? {
            let child = child_path(path, name.as_bytes());
            if self.layer && skipped(self.skip, &child) {
                continue;
            }
            // `path` (lossy text) is for skip checks and messages; names keep their bytes.
            let child_rel = rel.join(OsStr::from_bytes(name.to_bytes()));
            self.entry(fd, &name, &child, &child_rel, lower)?;
        }
        Ok(())
    }

    fn entry(
        &mut self,
        fd: &OwnedFd,
        name: &CStr,
        path: &str,
        raw_rel: &Path,
        lower: &[PathBuf],
    ) -> io::Result<()> {
        let stat = match sys::stat_at(fd, name) {
            Ok(stat) => stat,
            Err(err) if vanished(&err) => return Ok(()),
            Err(err) => return Err(err),
        };
        match stat.mode & libc::S_IFMT {
            libc::S_IFDIR => self.directory(fd, name, path, raw_rel, &stat, lower),
            libc::S_IFREG => self.regular(fd, name, path, raw_rel, &stat),
            libc::S_IFLNK => {
                let target = match sys::read_link_at(fd, name) {
                    Ok(target) => target,
                    Err(err) if vanished(&err) || err.raw_os_error() == Some(libc::EINVAL) => {
                        return Ok(())
                    }
                    Err(err) => return Err(err),
                };
                let mut header = header(&stat, tar::EntryType::Symlink);
                append_link(self.builder, &mut header, raw_rel, &target)
            }
            libc::S_IFCHR if self.layer && stat.rdev == 0 => {
                // An overlay whiteout: the OCI `.wh.` file.
                let mut whiteout = WHITEOUT_PREFIX.to_vec();
                whiteout.extend_from_slice(name.to_bytes());
                let mut target = raw_rel.parent().map(Path::to_path_buf).unwrap_or_default();
                target.push(OsStr::from_bytes(&whiteout));
                let mut header = header(&stat, tar::EntryType::Regular);
                header.set_mode(0o600);
                self.builder.append_data(&mut header, &target, io::empty())
            }
            kind @ (libc::S_IFCHR | libc::S_IFBLK) => {
                let entry = if kind == libc::S_IFCHR {
                    tar::EntryType::Char
                } else {
                    tar::EntryType::Block
                };
                let mut header = header(&stat, entry);
                let (major, minor) = sys::major_minor(stat.rdev);
                header.set_device_major(major)?;
                header.set_device_minor(minor)?;
                self.builder.append_data(&mut header, raw_rel, io::empty())
            }
            libc::S_IFIFO => {
                let mut header = header(&stat, tar::EntryType::Fifo);
                self.builder.append_data(&mut header, raw_rel, io::empty())
            }
            // Sockets cannot be archived (dockerd leaves them out too).
            _ => Ok(()),
        }
    }

    fn directory(
        &mut self,
        fd: &OwnedFd,
        name: &CStr,
        path: &str,
        rel: &Path,
        stat: &sys::Stat,
        lower: &[PathBuf],
    ) -> io::Result<()> {
        let dir = match sys::open_dir_at(fd, name) {
            Ok(dir) => dir,
            Err(err) if vanished(&err) => return Ok(()),
            Err(err) => return Err(err),
        };
        let mut opaque = false;
        let mut lower_dirs = Vec::new();
        if self.layer {
            if sys::fgetxattr(&dir, REDIRECT_XATTR)?.is_some() {
                return Err(io::Error::other(format!(
                    "{path} is a renamed directory (overlayfs redirect_dir): its files are in \
                     a lower layer, which a commit cannot read; turn redirect_dir off"
                )));
            }
            opaque = sys::fgetxattr(&dir, OPAQUE_XATTR)?.as_deref() == Some(b"y");
            if holds_skipped(self.skip, path) {
                let found = lower_lookup(lower, OsStr::from_bytes(name.to_bytes()))?;
                if mountpoint_holder(&dir, path, stat, found.as_ref().map(|f| &f.0), self.skip)? {
                    return Ok(());
                }
                lower_dirs = found.map(|f| f.1).unwrap_or_default();
            }
        }
        let mut header = header(stat, tar::EntryType::Directory);
        self.builder.append_data(&mut header, rel, io::empty())?;
        if opaque {
            let mut marker = header.clone();
            marker.set_entry_type(tar::EntryType::Regular);
            marker.set_mode(stat.mode & 0o777);
            self.builder.append_data(
                &mut marker,
                rel.join(OsStr::from_bytes(OPAQUE_MARKER)),
                io::empty(),
            )?;
        }
        self.dir(&dir, path, rel, &lower_dirs)
    }

    fn regular(
        &mut self,
        fd: &OwnedFd,
        name: &CStr,
        path: &str,
        rel: &Path,
        stat: &sys::Stat,
    ) -> io::Result<()> {
        if stat.nlink > 1 {
            let key = (stat.dev, stat.ino);
            if let Some(first) = self.links.get(&key) {
                let mut header = header(stat, tar::EntryType::Link);
                let first = first.clone();
                return append_link(self.builder, &mut header, rel, &first);
            }
            self.links.insert(key, rel.as_os_str().as_bytes().to_vec());
        }
        let file = match sys::open_file_at(fd, name) {
            Ok(file) => file,
            // Replaced by a symlink (O_NOFOLLOW: ELOOP) or removed meanwhile.
            Err(err) if vanished(&err) || err.raw_os_error() == Some(libc::ELOOP) => return Ok(()),
            Err(err) => return Err(err),
        };
        let now = sys::fstat(&file)?;
        if now.mode & libc::S_IFMT != libc::S_IFREG || now.ino != stat.ino || now.dev != stat.dev {
            return Ok(());
        }
        if self.layer && sys::fgetxattr(&file, METACOPY_XATTR)?.is_some() {
            return Err(io::Error::other(format!(
                "{path} is a metadata-only copy (overlayfs metacopy): its data is in a lower \
                 layer, which a commit cannot read; turn metacopy off"
            )));
        }
        if let Some(caps) = sys::fgetxattr(&file, CAPABILITY_XATTR)? {
            let records = pax_record("SCHILY.xattr.security.capability", &caps);
            let mut pax = tar::Header::new_ustar();
            pax.set_entry_type(tar::EntryType::XHeader);
            pax.set_mode(0o644);
            pax.set_size(records.len() as u64);
            let mut pax_name = b"PaxHeaders.0/".to_vec();
            pax_name.extend_from_slice(name.to_bytes());
            pax_name.truncate(99);
            pax.as_mut_bytes()[..100].fill(0);
            pax.as_mut_bytes()[..pax_name.len()].copy_from_slice(&pax_name);
            pax.set_cksum();
            self.builder.append(&pax, records.as_slice())?;
        }
        let mut header = header(&now, tar::EntryType::Regular);
        header.set_size(now.size);
        let data = Exact {
            inner: io::BufReader::with_capacity(128 * 1024, file),
            left: now.size,
            eof: false,
        };
        self.builder.append_data(&mut header, rel, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn whiteout(path: &Path) {
        let c = CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: NUL-terminated path.
        let ret = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, 0) };
        assert_eq!(
            ret,
            0,
            "mknod {}: {}",
            path.display(),
            io::Error::last_os_error()
        );
    }

    fn set_opaque(path: &Path) {
        let c = CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: NUL-terminated strings, a 1-byte value.
        let ret = unsafe {
            libc::lsetxattr(
                c.as_ptr(),
                OPAQUE_XATTR.as_ptr(),
                b"y".as_ptr().cast(),
                1,
                0,
            )
        };
        assert_eq!(
            ret,
            0,
            "setxattr {}: {}",
            path.display(),
            io::Error::last_os_error()
        );
    }

    fn copy_times(from: &Path, to: &Path) {
        let meta = fs::metadata(from).unwrap();
        let times = [
            libc::timespec {
                tv_sec: meta.atime(),
                tv_nsec: meta.atime_nsec(),
            },
            libc::timespec {
                tv_sec: meta.mtime(),
                tv_nsec: meta.mtime_nsec(),
            },
        ];
        let c = CString::new(to.as_os_str().as_bytes()).unwrap();
        // SAFETY: NUL-terminated path, two timespecs.
        let ret = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) };
        assert_eq!(ret, 0);
    }

    fn set_mtime(path: &Path, secs: i64) {
        let times = [libc::timespec {
            tv_sec: secs,
            tv_nsec: 0,
        }; 2];
        let c = CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: NUL-terminated path, two timespecs.
        let ret = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) };
        assert_eq!(ret, 0);
    }

    fn shown(changes: &[Change]) -> Vec<String> {
        changes
            .iter()
            .map(|c| format!("{} {}", c.kind.letter(), c.path))
            .collect()
    }

    /// A base layer, a second layer, and an upper dir with every kind of change.
    fn fixture() -> (tempfile::TempDir, LayerSource) {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("base");
        let top = tmp.path().join("top");
        let upper = tmp.path().join("upper");
        for dir in [&base, &top, &upper] {
            fs::create_dir(dir).unwrap();
        }
        for dir in ["etc", "usr/lib", "var/cache/old", "data", "bin"] {
            fs::create_dir_all(base.join(dir)).unwrap();
        }
        fs::write(base.join("etc/passwd"), "root\n").unwrap();
        fs::write(base.join("etc/gone"), "x").unwrap();
        fs::write(base.join("var/cache/old/a"), "a").unwrap();
        fs::write(base.join("var/cache/old/b"), "b").unwrap();
        fs::write(base.join("data/hidden"), "h").unwrap();
        fs::create_dir(top.join("data")).unwrap();
        whiteout(&top.join("data/hidden"));
        fs::write(top.join("data/kept"), "k").unwrap();

        // Upper: /etc with a new and a changed file and a deleted one; /var/cache/old
        // made again (opaque) with one new file; /new tree; runtime mount points.
        fs::create_dir(upper.join("etc")).unwrap();
        fs::write(upper.join("etc/passwd"), "root\nme\n").unwrap();
        fs::write(upper.join("etc/added"), "new").unwrap();
        whiteout(&upper.join("etc/gone"));
        fs::write(upper.join("etc/hosts"), "").unwrap();
        fs::write(upper.join("etc/resolv.conf"), "").unwrap();
        fs::create_dir_all(upper.join("var/cache/old")).unwrap();
        copy_times(&base.join("var"), &upper.join("var"));
        fs::set_permissions(
            upper.join("var"),
            fs::metadata(base.join("var")).unwrap().permissions(),
        )
        .unwrap();
        set_opaque(&upper.join("var/cache/old"));
        fs::write(upper.join("var/cache/old/a"), "again").unwrap();
        fs::create_dir_all(upper.join("new/deep")).unwrap();
        fs::write(upper.join("new/deep/file"), "f").unwrap();
        fs::create_dir(upper.join("proc")).unwrap();
        // File times are coarse (a clock tick): copies made at once may look alike.
        for (dir, secs) in [("etc", 1_000_000), ("var/cache", 2_000_000)] {
            set_mtime(&upper.join(dir), secs);
        }
        let layer = LayerSource {
            upper,
            lowers: vec![top, base],
        };
        (tmp, layer)
    }

    #[test]
    fn changes_as_dockerd_reports_them() {
        let (_tmp, layer) = fixture();
        let found = shown(&changes(&layer, RUNTIME_MOUNTPOINTS).unwrap());
        assert_eq!(
            found,
            [
                "C /etc",
                "A /etc/added",
                "D /etc/gone",
                "C /etc/passwd",
                "A /new",
                "A /new/deep",
                "A /new/deep/file",
                // /var is as in the image; /var/cache is only the copy-up parent.
                "C /var/cache",
                "C /var/cache/old",
                "C /var/cache/old/a",
                "D /var/cache/old/b",
            ],
            "{found:#?}"
        );
    }

    #[test]
    fn whiteouts_hide_lower_layers_in_lookups() {
        let (_tmp, layer) = fixture();
        let hidden = lower_lookup(&layer.lowers, OsStr::new("data"))
            .unwrap()
            .unwrap()
            .1;
        assert!(lower_lookup(&hidden, OsStr::new("hidden"))
            .unwrap()
            .is_none());
        assert!(lower_lookup(&hidden, OsStr::new("kept")).unwrap().is_some());
        assert_eq!(
            lower_names(&hidden)
                .unwrap()
                .into_iter()
                .collect::<Vec<_>>(),
            [b"kept".to_vec()]
        );
    }

    #[test]
    fn a_fresh_container_has_no_changes() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("base");
        let upper = tmp.path().join("upper");
        fs::create_dir_all(base.join("etc")).unwrap();
        fs::create_dir_all(upper.join("etc")).unwrap();
        fs::create_dir_all(upper.join("dev")).unwrap();
        fs::write(upper.join("etc/hostname"), "").unwrap();
        fs::write(upper.join("dev/console"), "").unwrap();
        fs::set_permissions(upper.join("etc"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(base.join("etc"), fs::Permissions::from_mode(0o755)).unwrap();
        let layer = LayerSource {
            upper: upper.clone(),
            lowers: vec![base],
        };
        assert_eq!(changes(&layer, RUNTIME_MOUNTPOINTS).unwrap(), []);
        let tar = write_tar(&upper, Some((&layer, RUNTIME_MOUNTPOINTS)), Vec::new()).unwrap();
        assert_eq!(tar, vec![0u8; 1024], "an empty layer");
        assert_eq!(
            crate::image::content::sha256_digest(&tar),
            EMPTY_LAYER_DIFF_ID
        );
        assert_eq!(size(&upper, RUNTIME_MOUNTPOINTS).unwrap(), 0);
    }

    fn listing(tar: &[u8]) -> Vec<String> {
        let mut archive = tar::Archive::new(tar);
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let kind = match e.header().entry_type() {
                    tar::EntryType::Directory => "dir",
                    tar::EntryType::Regular => "file",
                    tar::EntryType::Symlink => "link",
                    tar::EntryType::Link => "hard",
                    _ => "other",
                };
                format!("{kind} {}", e.path().unwrap().display())
            })
            .collect()
    }

    #[test]
    fn layer_tar_has_oci_whiteouts() {
        let (_tmp, layer) = fixture();
        std::os::unix::fs::symlink("/etc/passwd", layer.upper.join("new/link")).unwrap();
        fs::hard_link(
            layer.upper.join("new/deep/file"),
            layer.upper.join("new/hard"),
        )
        .unwrap();
        let tar = write_tar(
            &layer.upper,
            Some((&layer, RUNTIME_MOUNTPOINTS)),
            Vec::new(),
        )
        .unwrap();
        let found = listing(&tar);
        assert_eq!(
            found,
            [
                "dir etc",
                "file etc/added",
                "file etc/.wh.gone",
                "file etc/passwd",
                "dir new",
                "dir new/deep",
                "file new/deep/file",
                "hard new/hard",
                "link new/link",
                "dir var",
                "dir var/cache",
                "dir var/cache/old",
                "file var/cache/old/.wh..wh..opq",
                "file var/cache/old/a",
            ],
            "{found:#?}"
        );
        // It unpacks (as a commit's snapshot does) to the same changes.
        let unpacked = tempfile::tempdir().unwrap();
        let stats = crate::image::unpack::apply_layer(
            tar.as_slice(),
            crate::image::unpack::Compression::None,
            unpacked.path(),
        )
        .unwrap();
        assert_eq!(stats.diff_id, crate::image::content::sha256_digest(&tar));
        let meta = fs::symlink_metadata(unpacked.path().join("etc/gone")).unwrap();
        assert!(meta.file_type().is_char_device() && meta.rdev() == 0);
        assert_eq!(
            sys::lgetxattr(&unpacked.path().join("var/cache/old"), OPAQUE_XATTR).unwrap(),
            Some(b"y".to_vec())
        );
        // Files and the symlink (its target's length), the hard link once.
        assert_eq!(
            size(&layer.upper, RUNTIME_MOUNTPOINTS).unwrap(),
            8 + 3 + 5 + 1 + 11
        );
    }

    #[test]
    fn tar_never_follows_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        fs::create_dir_all(root.join("a")).unwrap();
        let outside = tmp.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("secret"), "host").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("a/escape")).unwrap();
        std::os::unix::fs::symlink("/", root.join("rootlink")).unwrap();
        let long = format!("/{}/target", "x".repeat(150));
        std::os::unix::fs::symlink(&long, root.join("long")).unwrap();
        let tar = write_tar(&root, None, Vec::new()).unwrap();
        assert_eq!(
            listing(&tar),
            ["dir a", "link a/escape", "link long", "link rootlink"]
        );
        assert!(!String::from_utf8_lossy(&tar).contains("host"));
        // Link targets byte for byte, long ones too.
        let mut archive = tar::Archive::new(tar.as_slice());
        let targets: Vec<String> = archive
            .entries()
            .unwrap()
            .filter_map(|e| {
                let e = e.unwrap();
                let target = e.link_name().unwrap()?.display().to_string();
                Some(target)
            })
            .collect();
        assert_eq!(
            targets,
            [outside.display().to_string(), long, "/".to_string()]
        );
    }

    #[test]
    fn pax_records_count_their_own_length() {
        let record = pax_record("SCHILY.xattr.security.capability", b"abc");
        let text = String::from_utf8(record.clone()).unwrap();
        let len: usize = text.split(' ').next().unwrap().parse().unwrap();
        assert_eq!(len, record.len());
        assert_eq!(sys::major_minor(libc::makedev(8, 1)), (8, 1));
        assert_eq!(sys::major_minor(libc::makedev(259, 70000)), (259, 70000));
    }
}
