//! Applying one OCI image layer to a directory, in the format the overlayfs snapshots
//! use (containerd's `archive.Apply` with `OverlayConvertWhiteout`, moby's
//! `pkg/archive`).
//!
//! The layer stream is decompressed on the fly, hashed (its `diff_id`) and applied entry
//! by entry; no temporary copy of the layer is made. The filesystem writes are done
//! here with `*at` system calls relative to directory file descriptors, never through
//! `tar::Entry::unpack_in`, so that this module alone decides what may be written where.
//!
//! # What an entry becomes
//! - regular files, directories, symlinks, hard links, character and block devices and
//!   fifos, with their mode (including setuid, setgid and sticky bits), numeric uid/gid
//!   (`lchown`, no name lookup), extended attributes from PAX `SCHILY.xattr.*` records
//!   and mtime (directories get theirs at the end, deepest first, since creating their
//!   children changes it);
//! - `<dir>/.wh.<name>` (an OCI whiteout) becomes a 0/0 character device at
//!   `<dir>/<name>`, and `<dir>/.wh..wh..opq` sets `trusted.overlay.opaque=y` on `<dir>`:
//!   overlayfs' own format. Whiteouts apply to the layers below only: when `<name>` was
//!   already written by this layer, it is kept (the OCI spec: "files that are present in
//!   the same layer as a whiteout file can only be hidden by whiteout files in subsequent
//!   layers"). Other `.wh..wh.*` entries (AUFS metadata) are skipped.
//! - an entry whose path exists already (written earlier in this layer) replaces it:
//!   the old one is removed first, except that a directory over a directory keeps the
//!   directory and takes the new metadata. A directory replacing a whiteout gets the
//!   opaque attribute, so that it does not show the content of the directory it deleted.
//! - a hard link entry only creates the link: the inode's mode, owner, xattrs and times
//!   are those of the entry it links to (as GNU tar and moby do; containerd re-applies
//!   the link header's mode, which archivers write identical anyway).
//! - entries that resolve to the destination itself (`./`, `/`) are skipped, as in
//!   containerd; PAX global headers are skipped; other entry types are an error.
//!
//! # Safety: nothing outside `dest` is ever created, modified or deleted
//! - A path with a `..` component (in an entry name or a hard link target) is rejected:
//!   the error names the entry. Such paths have no legitimate use in a layer.
//! - Absolute paths are taken as relative to `dest` (the leading `/` is stripped), as
//!   containerd and moby do: `/etc/passwd` is `dest/etc/passwd`.
//! - Parent directories are resolved one component at a time from a file descriptor of
//!   `dest`, with `openat(O_PATH | O_NOFOLLOW | O_DIRECTORY)`. A symlink met in a parent
//!   component is followed as if `dest` were the root directory (like containerd's
//!   `fs.RootPath` and securejoin): an absolute target restarts from `dest`, and `..` in
//!   a target stops at `dest`. So `evil -> /` followed by `evil/etc/x` writes
//!   `dest/etc/x`. Missing parents are created (mode 0755, owned by root).
//! - The last component is never followed: an existing entry there is removed (never
//!   written through), files are created with `O_CREAT | O_EXCL | O_NOFOLLOW`, and owner,
//!   times and xattrs are set on the entry itself (`AT_SYMLINK_NOFOLLOW`, `lsetxattr`).
//! - A hard link target is resolved the same way (inside `dest`); a target that does not
//!   exist there is an error. `linkat` does not follow a symlink target, so a link can
//!   never reach a file outside.
//! - A symlink entry may point anywhere: it is only stored, and is never followed out of
//!   `dest` by later entries.
//! - Extended attributes in the `trusted.overlay.` namespace are not taken from the
//!   archive (logged and skipped): they would change how overlayfs reads the layer
//!   (redirects, metacopy, opacity) behind the whiteout conversion's back. All other
//!   xattrs, `security.*` included (file capabilities), are applied as containerd does;
//!   a filesystem without xattr support (`ENOTSUP`) and `user.*` xattrs on entries that
//!   cannot have them (`EPERM` on symlinks and devices) are logged and skipped.
//! - Entry paths longer than `PATH_MAX` (4096 bytes) are rejected, which bounds the
//!   directory depth.
//!
//! Nothing else writes into `dest` while a layer is applied (it is a fresh directory
//! under the snapshotter's `tmp`), which is what makes the component-by-component
//! resolution sufficient. On error the caller deletes `dest`.
//!
//! No file is fsynced here: the snapshot commit syncs the whole filesystem once.

use std::ffi::CStr;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use nix::libc;
use sha2::{Digest, Sha256};

/// Media types of layers that can be applied, and their compression.
const MEDIA_TYPES: &[(&str, Compression)] = &[
    ("application/vnd.oci.image.layer.v1.tar", Compression::None),
    (
        "application/vnd.oci.image.layer.v1.tar+gzip",
        Compression::Gzip,
    ),
    (
        "application/vnd.oci.image.layer.v1.tar+zstd",
        Compression::Zstd,
    ),
    (
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        Compression::None,
    ),
    (
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        Compression::Gzip,
    ),
    (
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
        Compression::Zstd,
    ),
    (
        "application/vnd.docker.image.rootfs.diff.tar",
        Compression::None,
    ),
    (
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        Compression::Gzip,
    ),
    (
        "application/vnd.docker.image.rootfs.diff.tar.zstd",
        Compression::Zstd,
    ),
    (
        "application/vnd.docker.image.rootfs.foreign.diff.tar",
        Compression::None,
    ),
    (
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        Compression::Gzip,
    ),
];

/// Longest entry path accepted (Linux `PATH_MAX`).
const PATH_MAX: usize = 4096;
/// Symlinks followed while resolving one path, as the kernel's `MAXSYMLINKS`.
const MAX_SYMLINKS: u32 = 40;
/// Buffer between the compressed stream and the decompressor.
const INPUT_BUFFER: usize = 256 * 1024;
/// Buffer between the decompressed stream and the tar parser (headers are 512 bytes).
const TAR_BUFFER: usize = 256 * 1024;
/// Buffer for copying file contents.
const COPY_BUFFER: usize = 1024 * 1024;

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const WHITEOUT_META_PREFIX: &[u8] = b".wh..wh.";
const WHITEOUT_OPAQUE: &[u8] = b".wh..wh..opq";
const OVERLAY_OPAQUE_XATTR: &CStr = c"trusted.overlay.opaque";
const OVERLAY_XATTR_PREFIX: &[u8] = b"trusted.overlay.";
const PAX_XATTR_PREFIX: &[u8] = b"SCHILY.xattr.";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// From an OCI or Docker layer media type (`application/vnd.oci.image.layer.v1.tar`,
    /// `...tar+gzip`, `...tar+zstd`, the nondistributable variants,
    /// `application/vnd.docker.image.rootfs.diff.tar.gzip`,
    /// `application/vnd.docker.image.rootfs.foreign.diff.tar.gzip`, ...).
    pub fn from_media_type(media_type: &str) -> Result<Compression, UnpackError> {
        let trimmed = media_type.trim();
        MEDIA_TYPES
            .iter()
            .find(|(known, _)| known.eq_ignore_ascii_case(trimmed))
            .map(|(_, compression)| *compression)
            .ok_or_else(|| UnpackError::UnsupportedMediaType {
                media_type: media_type.to_string(),
            })
    }
}

/// What applying a layer found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackStats {
    /// `sha256:<hex>` of the uncompressed tar stream (all of it, up to EOF).
    pub diff_id: String,
    pub uncompressed_bytes: u64,
    /// Tar entries read (whiteouts and skipped entries included).
    pub entries: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error(
        "unsupported layer media type {media_type:?} (supported: {})",
        supported_media_types()
    )]
    UnsupportedMediaType { media_type: String },
    #[error("layer destination {}: {source}", path.display())]
    Destination { path: PathBuf, source: io::Error },
    #[error("reading the layer stream: {0}")]
    Stream(#[source] io::Error),
    #[error("tar entry {path:?}: reading its data: {source}")]
    EntryData { path: String, source: io::Error },
    #[error("tar entry {path:?}: {reason}")]
    InvalidEntry { path: String, reason: String },
    #[error("tar entry {path:?}: {op}: {source}")]
    Apply {
        path: String,
        op: String,
        source: io::Error,
    },
    #[error("{what} exceeds the limit of {limit} (config key {key})")]
    Limit {
        what: &'static str,
        limit: u64,
        key: &'static str,
    },
}

/// What one layer (and the image it belongs to) may unpack to. Past a limit the layer
/// is refused with [`UnpackError::Limit`].
#[derive(Clone, Debug)]
pub struct Limits {
    /// Tar entries in the layer (`registry.max_entries_per_layer`).
    pub max_entries: u64,
    /// Unpacked bytes of the layer (`registry.max_unpacked_bytes_per_layer`): the
    /// uncompressed tar stream, plus the zeros a sparse entry expands to.
    pub max_bytes: u64,
    /// Unpacked bytes of all layers of the image (`registry.max_unpacked_bytes_per_image`).
    pub max_image_bytes: u64,
    /// What the image's layers unpacked so far: shared by the layers of one pull.
    pub image_bytes: Arc<AtomicU64>,
}

impl Limits {
    /// No limit at all.
    pub fn unlimited() -> Limits {
        Limits {
            max_entries: u64::MAX,
            max_bytes: u64::MAX,
            max_image_bytes: u64::MAX,
            image_bytes: Arc::new(AtomicU64::new(0)),
        }
    }
}

/// Counts unpacked bytes against [`Limits`]; remembers the first limit passed, so
/// that whatever error the reader then sees (a tar error, a short read), the limit is
/// what is reported.
struct Budget {
    limits: Limits,
    layer_bytes: AtomicU64,
    exceeded: Mutex<Option<UnpackError>>,
}

impl Budget {
    fn new(limits: Limits) -> Budget {
        Budget {
            limits,
            layer_bytes: AtomicU64::new(0),
            exceeded: Mutex::new(None),
        }
    }

    fn add(&self, n: u64) -> io::Result<()> {
        let layer = self
            .layer_bytes
            .fetch_add(n, Ordering::Relaxed)
            .saturating_add(n);
        let image = self
            .limits
            .image_bytes
            .fetch_add(n, Ordering::Relaxed)
            .saturating_add(n);
        let passed = if layer > self.limits.max_bytes {
            Some(UnpackError::Limit {
                what: "unpacked size of the layer (bytes)",
                limit: self.limits.max_bytes,
                key: "registry.max_unpacked_bytes_per_layer",
            })
        } else if image > self.limits.max_image_bytes {
            Some(UnpackError::Limit {
                what: "unpacked size of the image (bytes)",
                limit: self.limits.max_image_bytes,
                key: "registry.max_unpacked_bytes_per_image",
            })
        } else {
            None
        };
        match passed {
            None => Ok(()),
            Some(error) => {
                let message = error.to_string();
                if let Ok(mut exceeded) = self.exceeded.lock() {
                    exceeded.get_or_insert(error);
                }
                Err(io::Error::other(message))
            }
        }
    }

    fn entry(&self, entries: u64) -> Result<(), UnpackError> {
        if entries > self.limits.max_entries {
            return Err(UnpackError::Limit {
                what: "number of tar entries in the layer",
                limit: self.limits.max_entries,
                key: "registry.max_entries_per_layer",
            });
        }
        Ok(())
    }

    fn exceeded(&self) -> Option<UnpackError> {
        self.exceeded.lock().ok().and_then(|mut e| e.take())
    }
}

fn supported_media_types() -> String {
    MEDIA_TYPES
        .iter()
        .map(|(media_type, _)| *media_type)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Input bytes (an entry path, a link target) as errors show them: bounded.
fn lossy(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(super::MAX_ECHO + 4)];
    let text = String::from_utf8_lossy(cut);
    if bytes.len() > super::MAX_ECHO {
        let short = super::bounded(&text, super::MAX_ECHO);
        // bounded() counted the cut text: say how long the input was.
        match short.rfind("… (") {
            Some(at) => format!("{}… ({} bytes)", &short[..at], bytes.len()),
            None => short,
        }
    } else {
        text.into_owned()
    }
}

/// A stream error as errors show it: the tar reader's messages can quote a header's
/// path, which a hostile layer makes as long as it likes.
fn stream_err(err: io::Error) -> UnpackError {
    let message = err.to_string();
    if message.len() > 2 * super::MAX_ECHO {
        UnpackError::Stream(io::Error::new(
            err.kind(),
            super::bounded(&message, 2 * super::MAX_ECHO),
        ))
    } else {
        UnpackError::Stream(err)
    }
}

fn invalid(path: &[u8], reason: impl Into<String>) -> UnpackError {
    UnpackError::InvalidEntry {
        path: lossy(path),
        reason: reason.into(),
    }
}

fn apply_err(path: &[u8], op: impl Into<String>, source: io::Error) -> UnpackError {
    UnpackError::Apply {
        path: lossy(path),
        op: op.into(),
        source,
    }
}

/// Reads the (compressed) layer stream to EOF, decompressing on the fly (no temporary
/// copy), and applies it to `dest` (an existing, empty directory). Synchronous: run it
/// on a blocking thread. Reading continues past the tar end-of-archive marker to the end
/// of the stream, so that the caller's digest of the compressed stream covers all of it
/// and the diff_id covers the whole uncompressed stream.
pub fn apply_layer(
    reader: impl Read,
    compression: Compression,
    dest: &Path,
) -> Result<UnpackStats, UnpackError> {
    apply_layer_limited(reader, compression, dest, Limits::unlimited())
}

/// [`apply_layer`] within `limits`: past one, the layer is refused with
/// [`UnpackError::Limit`] (the caller removes what was written).
pub fn apply_layer_limited(
    reader: impl Read,
    compression: Compression,
    dest: &Path,
    limits: Limits,
) -> Result<UnpackStats, UnpackError> {
    let budget = Arc::new(Budget::new(limits));
    let result = apply_compressed(reader, compression, dest, &budget);
    match budget.exceeded() {
        Some(limit) => Err(limit),
        None => result,
    }
}

fn apply_compressed(
    reader: impl Read,
    compression: Compression,
    dest: &Path,
    budget: &Arc<Budget>,
) -> Result<UnpackStats, UnpackError> {
    match compression {
        Compression::None => {
            let (stats, mut rest) = apply_stream(reader, dest, budget)?;
            drain(&mut rest)?;
            Ok(stats)
        }
        Compression::Gzip => {
            // Multi-member, as Go's gzip reader (and so docker and containerd) reads.
            let decoder =
                flate2::read::MultiGzDecoder::new(BufReader::with_capacity(INPUT_BUFFER, reader));
            let (stats, decoder) = apply_stream(decoder, dest, budget)?;
            drain(&mut decoder.into_inner())?;
            Ok(stats)
        }
        Compression::Zstd => {
            let decoder = zstd::stream::read::Decoder::with_buffer(BufReader::with_capacity(
                INPUT_BUFFER,
                reader,
            ))
            .map_err(stream_err)?;
            let (stats, decoder) = apply_stream(decoder, dest, budget)?;
            drain(&mut decoder.finish())?;
            Ok(stats)
        }
    }
}

fn drain(reader: &mut impl Read) -> Result<u64, UnpackError> {
    io::copy(reader, &mut io::sink()).map_err(stream_err)
}

/// Hashes and counts what is read through it.
struct Digester<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
    budget: Arc<Budget>,
}

impl<R: Read> Read for Digester<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.budget.add(n as u64)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Applies the uncompressed tar stream `tar` and reads it to EOF; returns the stats and
/// the reader, for the caller to drain what lies below it.
fn apply_stream<R: Read>(
    tar: R,
    dest: &Path,
    budget: &Arc<Budget>,
) -> Result<(UnpackStats, R), UnpackError> {
    let digester = Digester {
        inner: tar,
        hasher: Sha256::new(),
        bytes: 0,
        budget: budget.clone(),
    };
    let mut archive = tar::Archive::new(BufReader::with_capacity(TAR_BUFFER, digester));
    let mut unpacker = Unpacker::new(dest, budget.clone())?;
    let mut entries = 0u64;
    for entry in archive.entries().map_err(stream_err)? {
        let mut entry = entry.map_err(stream_err)?;
        entries += 1;
        budget.entry(entries)?;
        unpacker.apply(&mut entry)?;
    }
    unpacker.finish()?;
    // Past the end-of-archive marker: padding and anything else up to EOF.
    let mut rest = archive.into_inner();
    drain(&mut rest)?;
    let digester = rest.into_inner();
    let stats = UnpackStats {
        diff_id: format!("sha256:{}", hex::encode(digester.hasher.finalize())),
        uncompressed_bytes: digester.bytes,
        entries,
    };
    Ok((stats, digester.inner))
}

/// Normalizes a path from the archive into `out`: components joined by `/`, without
/// empty or `.` components (so a leading `/` is dropped). Rejects `..` components, NUL
/// bytes and paths longer than `PATH_MAX`.
fn normalize(raw: &[u8], out: &mut Vec<u8>) -> Result<(), &'static str> {
    out.clear();
    if raw.len() > PATH_MAX {
        return Err("path is longer than 4096 bytes");
    }
    if raw.contains(&0) {
        return Err("path contains a NUL byte");
    }
    for component in raw.split(|b| *b == b'/') {
        match component {
            b"" | b"." => continue,
            b".." => return Err("path has a `..` component (it could reach outside the layer)"),
            _ => {}
        }
        if !out.is_empty() {
            out.push(b'/');
        }
        out.extend_from_slice(component);
    }
    Ok(())
}

/// Splits a normalized path into (parent, name).
fn split_parent(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|b| *b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

/// A NUL-terminated copy of `name` in `buf`.
fn cstr<'b>(buf: &'b mut Vec<u8>, name: &[u8]) -> io::Result<&'b CStr> {
    buf.clear();
    buf.extend_from_slice(name);
    buf.push(0);
    CStr::from_bytes_with_nul(buf).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn errno(err: &io::Error) -> i32 {
    err.raw_os_error().unwrap_or(0)
}

/// Metadata of one entry, from its header and PAX records.
struct Meta {
    uid: u32,
    gid: u32,
    /// Permission bits, setuid/setgid/sticky included.
    mode: u32,
    mtime: libc::timespec,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Meta {
    fn times(&self) -> [libc::timespec; 2] {
        [self.mtime, self.mtime]
    }
}

fn read_meta<R: Read>(entry: &mut tar::Entry<'_, R>, path: &[u8]) -> Result<Meta, UnpackError> {
    let header = entry.header();
    let field = |name: &str, value: io::Result<u64>| -> Result<u64, UnpackError> {
        value.map_err(|err| invalid(path, format!("bad {name} field in header: {err}")))
    };
    let uid = field("uid", header.uid())?;
    let gid = field("gid", header.gid())?;
    let mode = header
        .mode()
        .map_err(|err| invalid(path, format!("bad mode field in header: {err}")))?;
    let mtime = field("mtime", header.mtime())?;
    let mut meta = Meta {
        uid: u32::try_from(uid).map_err(|_| invalid(path, format!("uid {uid} is too large")))?,
        gid: u32::try_from(gid).map_err(|_| invalid(path, format!("gid {gid} is too large")))?,
        mode: mode & 0o7777,
        mtime: libc::timespec {
            tv_sec: i64::try_from(mtime).unwrap_or(i64::MAX),
            tv_nsec: 0,
        },
        xattrs: Vec::new(),
    };
    // The tar crate applies PAX uid, gid, size, path and linkpath; xattrs and
    // sub-second mtimes are read here.
    if let Some(extensions) = entry.pax_extensions().map_err(stream_err)? {
        for extension in extensions {
            let extension = extension.map_err(stream_err)?;
            let key = extension.key_bytes();
            if let Some(name) = key.strip_prefix(PAX_XATTR_PREFIX) {
                if name.starts_with(OVERLAY_XATTR_PREFIX) {
                    tracing::warn!(
                        entry = %lossy(path),
                        xattr = %lossy(name),
                        "ignoring an overlayfs xattr from the layer archive"
                    );
                    continue;
                }
                meta.xattrs
                    .push((name.to_vec(), extension.value_bytes().to_vec()));
            } else if key == b"mtime" {
                if let Some(time) = parse_pax_time(extension.value_bytes()) {
                    meta.mtime = time;
                }
            }
        }
    }
    Ok(meta)
}

/// A PAX time: decimal seconds with an optional fraction ("1700000000.5").
fn parse_pax_time(value: &[u8]) -> Option<libc::timespec> {
    let value = std::str::from_utf8(value).ok()?;
    let (secs, frac) = value.split_once('.').unwrap_or((value, ""));
    let tv_sec: i64 = secs.parse().ok()?;
    let mut tv_nsec: i64 = 0;
    let digits = frac.bytes().take(9).collect::<Vec<u8>>();
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    for i in 0..9 {
        tv_nsec = tv_nsec * 10 + digits.get(i).map_or(0, |d| i64::from(d - b'0'));
    }
    if tv_sec < 0 && tv_nsec > 0 {
        // "-1.25" is 1.25 s before the epoch.
        return Some(libc::timespec {
            tv_sec: tv_sec - 1,
            tv_nsec: 1_000_000_000 - tv_nsec,
        });
    }
    Some(libc::timespec { tv_sec, tv_nsec })
}

/// A directory whose mtime is set at the end.
struct DirTime {
    /// Resolved path, relative to `dest`.
    path: Vec<u8>,
    ino: u64,
    mtime: libc::timespec,
}

/// The parent directory of the previous entry: tar entries come grouped by directory.
struct CachedParent {
    /// The normalized parent path of the entry (as in the archive).
    key: Vec<u8>,
    /// False once anything was removed: a removal may have changed what `key` resolves
    /// to. The fd stays open until replaced, since it may be in use.
    valid: bool,
    fd: OwnedFd,
    /// Where `key` resolved to, relative to `dest` (no symlinks in it).
    resolved: Vec<u8>,
}

struct Unpacker<'d> {
    dest: &'d Path,
    root: OwnedFd,
    parent: Option<CachedParent>,
    dirs: Vec<DirTime>,
    path: Vec<u8>,
    name_buf: Vec<u8>,
    copy_buf: Vec<u8>,
    budget: Arc<Budget>,
}

impl<'d> Unpacker<'d> {
    fn new(dest: &'d Path, budget: Arc<Budget>) -> Result<Unpacker<'d>, UnpackError> {
        let mut buf = Vec::new();
        let root = cstr(&mut buf, dest.as_os_str().as_bytes())
            .and_then(|c| {
                sys::openat(
                    libc::AT_FDCWD,
                    c,
                    libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
                    0,
                )
            })
            .map_err(|source| UnpackError::Destination {
                path: dest.to_path_buf(),
                source,
            })?;
        Ok(Unpacker {
            dest,
            root,
            parent: None,
            dirs: Vec::new(),
            path: Vec::with_capacity(256),
            name_buf: Vec::with_capacity(256),
            copy_buf: vec![0; COPY_BUFFER],
            budget,
        })
    }

    fn apply<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let kind = entry.header().entry_type();
        let raw_type = entry.header().as_bytes()[156];
        {
            let raw = entry.path_bytes();
            if let Err(reason) = normalize(&raw, &mut self.path) {
                return Err(invalid(&raw, reason));
            }
        }
        let path = std::mem::take(&mut self.path);
        let result = self.apply_normalized(entry, kind, raw_type, &path);
        self.path = path;
        result
    }

    fn apply_normalized<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        kind: tar::EntryType,
        raw_type: u8,
        path: &[u8],
    ) -> Result<(), UnpackError> {
        use tar::EntryType as T;
        if matches!(
            kind,
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink
        ) {
            tracing::debug!(entry = %lossy(path), ?kind, "skipping tar metadata entry");
            return Ok(());
        }
        if path.is_empty() {
            tracing::debug!(?kind, "skipping tar entry for the layer root");
            return Ok(());
        }
        let (parent, name) = split_parent(path);
        if name.starts_with(WHITEOUT_PREFIX) {
            return self.whiteout(entry, path, parent, name);
        }
        // Old (V7) archives mark directories with a trailing slash on a regular entry.
        let is_dir =
            kind == T::Directory || (raw_type == 0 && entry.path_bytes().last() == Some(&b'/'));
        let meta = read_meta(entry, path)?;
        if is_dir {
            let parent_fd = self.parent_dir(path, parent)?;
            return self.directory(parent_fd, path, name, &meta, false);
        }
        match kind {
            T::Regular | T::Continuous | T::GNUSparse => {
                let parent_fd = self.parent_dir(path, parent)?;
                self.regular_file(entry, parent_fd, path, name, &meta)
            }
            T::Symlink => {
                let target = match entry.link_name_bytes() {
                    Some(target) if !target.is_empty() => target.into_owned(),
                    _ => return Err(invalid(path, "symlink without a target")),
                };
                if target.contains(&0) {
                    return Err(invalid(path, "symlink target contains a NUL byte"));
                }
                let parent_fd = self.parent_dir(path, parent)?;
                self.symlink(parent_fd, path, name, &target, &meta)
            }
            T::Link => {
                let target = match entry.link_name_bytes() {
                    Some(target) => target.into_owned(),
                    None => return Err(invalid(path, "hard link without a target")),
                };
                self.hardlink(path, parent, name, &target)
            }
            T::Char | T::Block | T::Fifo => {
                let header = entry.header();
                let (file_type, dev) = if kind == T::Fifo {
                    (libc::S_IFIFO, 0)
                } else {
                    let number = |n: io::Result<Option<u32>>| {
                        n.map_err(|err| invalid(path, format!("bad device number: {err}")))
                            .map(Option::unwrap_or_default)
                    };
                    let major = number(header.device_major())?;
                    let minor = number(header.device_minor())?;
                    let file_type = if kind == T::Char {
                        libc::S_IFCHR
                    } else {
                        libc::S_IFBLK
                    };
                    (file_type, libc::makedev(major, minor))
                };
                let parent_fd = self.parent_dir(path, parent)?;
                self.node(parent_fd, path, name, file_type, dev, &meta)
            }
            other => Err(invalid(
                path,
                format!(
                    "unsupported tar entry type {:?} ({other:?})",
                    raw_type as char
                ),
            )),
        }
    }

    /// The fd of the directory that holds `path` (its normalized parent `parent`),
    /// created if missing. Valid until the next call.
    fn parent_dir(&mut self, path: &[u8], parent: &[u8]) -> Result<RawFd, UnpackError> {
        if let Some(cached) = &self.parent {
            if cached.valid && cached.key == parent {
                return Ok(cached.fd.as_raw_fd());
            }
        }
        let (fd, resolved) = self
            .resolve(parent, true)
            .map_err(|err| apply_err(path, "resolving the parent directory", err))?;
        let raw = fd.as_raw_fd();
        match &mut self.parent {
            Some(cached) => {
                cached.key.clear();
                cached.key.extend_from_slice(parent);
                cached.valid = true;
                cached.fd = fd;
                cached.resolved = resolved;
            }
            None => {
                self.parent = Some(CachedParent {
                    key: parent.to_vec(),
                    valid: true,
                    fd,
                    resolved,
                })
            }
        }
        Ok(raw)
    }

    /// Resolves `rel` (normalized, relative to `dest`) to a directory inside `dest`,
    /// following symlinks as if `dest` were the root; with `create`, missing directories
    /// are made (0755). Returns the directory's `O_PATH` fd and its symlink-free path
    /// relative to `dest`.
    fn resolve(&self, rel: &[u8], create: bool) -> io::Result<(OwnedFd, Vec<u8>)> {
        // (fd, length of `resolved` before this component)
        let mut stack: Vec<(OwnedFd, usize)> = Vec::new();
        let mut resolved: Vec<u8> = Vec::with_capacity(rel.len());
        // Components still to walk, last one first.
        let mut todo: Vec<Vec<u8>> = rel
            .split(|b| *b == b'/')
            .rev()
            .filter(|c| !c.is_empty())
            .map(<[u8]>::to_vec)
            .collect();
        let mut links = 0;
        let mut buf = Vec::new();
        while let Some(component) = todo.pop() {
            match component.as_slice() {
                b"" | b"." => continue,
                b".." => {
                    // Only from symlink targets; stops at `dest`.
                    if let Some((_, len)) = stack.pop() {
                        resolved.truncate(len);
                    }
                    continue;
                }
                _ => {}
            }
            let cur = stack
                .last()
                .map_or(self.root.as_raw_fd(), |(fd, _)| fd.as_raw_fd());
            let name = cstr(&mut buf, &component)?;
            match sys::openat(
                cur,
                name,
                libc::O_PATH | libc::O_NOFOLLOW | libc::O_DIRECTORY | libc::O_CLOEXEC,
                0,
            ) {
                Ok(fd) => {
                    let len = resolved.len();
                    if len > 0 {
                        resolved.push(b'/');
                    }
                    resolved.extend_from_slice(&component);
                    stack.push((fd, len));
                }
                Err(err) if errno(&err) == libc::ENOENT && create => {
                    match sys::mkdirat(cur, name, 0o755) {
                        Ok(()) => {}
                        Err(err) if errno(&err) == libc::EEXIST => {}
                        Err(err) => return Err(err),
                    }
                    // Walk it again now that it exists.
                    todo.push(component);
                }
                Err(err) if matches!(errno(&err), libc::ENOTDIR | libc::ELOOP) => {
                    let stat = sys::fstatat(cur, name, libc::AT_SYMLINK_NOFOLLOW)?;
                    if stat.st_mode & libc::S_IFMT != libc::S_IFLNK {
                        return Err(err);
                    }
                    links += 1;
                    if links > MAX_SYMLINKS {
                        return Err(io::Error::from_raw_os_error(libc::ELOOP));
                    }
                    let target = sys::readlinkat(cur, name)?;
                    if target.first() == Some(&b'/') {
                        stack.clear();
                        resolved.clear();
                    }
                    todo.extend(
                        target
                            .split(|b| *b == b'/')
                            .rev()
                            .filter(|c| !c.is_empty())
                            .map(<[u8]>::to_vec),
                    );
                }
                Err(err) => return Err(err),
            }
        }
        let fd = match stack.pop() {
            Some((fd, _)) => fd,
            None => self.root.try_clone()?,
        };
        Ok((fd, resolved))
    }

    /// `dest/<resolved parent>/<name>`: a path without symlinks in its parents, for the
    /// path-only calls (`lsetxattr`).
    fn full_path(&self, resolved_parent: &[u8], name: &[u8]) -> PathBuf {
        let mut full = self.dest.to_path_buf();
        if !resolved_parent.is_empty() {
            full.push(std::ffi::OsStr::from_bytes(resolved_parent));
        }
        full.push(std::ffi::OsStr::from_bytes(name));
        full
    }

    fn cached_resolved(&self) -> Vec<u8> {
        self.parent
            .as_ref()
            .map(|p| p.resolved.clone())
            .unwrap_or_default()
    }

    /// Removes whatever is at `parent/name` (recursively for a directory, never
    /// following symlinks).
    fn remove_existing(&mut self, parent: RawFd, name: &CStr) -> io::Result<()> {
        if let Some(cached) = &mut self.parent {
            cached.valid = false;
        }
        let stat = match sys::fstatat(parent, name, libc::AT_SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            Err(err) if errno(&err) == libc::ENOENT => return Ok(()),
            Err(err) => return Err(err),
        };
        if stat.st_mode & libc::S_IFMT == libc::S_IFDIR {
            remove_tree(parent, name)
        } else {
            sys::unlinkat(parent, name, 0)
        }
    }

    fn regular_file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        parent: RawFd,
        path: &[u8],
        name: &[u8],
        meta: &Meta,
    ) -> Result<(), UnpackError> {
        let mut name_buf = std::mem::take(&mut self.name_buf);
        let result = (|| {
            let cname = cstr(&mut name_buf, name).map_err(|e| apply_err(path, "name", e))?;
            let flags =
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
            let fd = match sys::openat(parent, cname, flags, 0o600) {
                Err(err) if errno(&err) == libc::EEXIST => {
                    self.remove_existing(parent, cname)
                        .map_err(|e| apply_err(path, "removing the existing entry", e))?;
                    sys::openat(parent, cname, flags, 0o600)
                }
                other => other,
            }
            .map_err(|e| apply_err(path, "creating the file", e))?;
            let mut file = File::from(fd);
            // A sparse entry expands to more than the stream holds: the zeros count.
            let stored = entry.header().entry_size().unwrap_or(0);
            let mut written = 0u64;
            loop {
                let n =
                    entry
                        .read(&mut self.copy_buf)
                        .map_err(|source| UnpackError::EntryData {
                            path: lossy(path),
                            source,
                        })?;
                if n == 0 {
                    break;
                }
                file.write_all(&self.copy_buf[..n])
                    .map_err(|e| apply_err(path, "writing the file", e))?;
                let before = written.saturating_sub(stored);
                written += n as u64;
                let holes = written.saturating_sub(stored) - before;
                if holes > 0 {
                    self.budget
                        .add(holes)
                        .map_err(|e| apply_err(path, "sparse data", e))?;
                }
            }
            let fd = file.as_raw_fd();
            // chown before chmod: chown clears setuid/setgid; xattrs after chown, which
            // clears security.capability.
            sys::fchown(fd, meta.uid, meta.gid).map_err(|e| apply_err(path, "chown", e))?;
            set_xattrs_fd(fd, path, meta)?;
            sys::fchmod(fd, meta.mode).map_err(|e| apply_err(path, "chmod", e))?;
            sys::futimens(fd, &meta.times()).map_err(|e| apply_err(path, "setting times", e))?;
            Ok(())
        })();
        self.name_buf = name_buf;
        result
    }

    fn directory(
        &mut self,
        parent: RawFd,
        path: &[u8],
        name: &[u8],
        meta: &Meta,
        opaque: bool,
    ) -> Result<(), UnpackError> {
        let mut name_buf = std::mem::take(&mut self.name_buf);
        let result = (|| {
            let cname = cstr(&mut name_buf, name).map_err(|e| apply_err(path, "name", e))?;
            let mut opaque = opaque;
            match sys::mkdirat(parent, cname, 0o700) {
                Ok(()) => {}
                Err(err) if errno(&err) == libc::EEXIST => {
                    let stat = sys::fstatat(parent, cname, libc::AT_SYMLINK_NOFOLLOW)
                        .map_err(|e| apply_err(path, "stat of the existing entry", e))?;
                    let file_type = stat.st_mode & libc::S_IFMT;
                    if file_type != libc::S_IFDIR {
                        // A directory replacing a whiteout made by this layer: the
                        // directory below is deleted, this one must not show its content.
                        opaque |= file_type == libc::S_IFCHR && stat.st_rdev == 0;
                        self.remove_existing(parent, cname)
                            .map_err(|e| apply_err(path, "removing the existing entry", e))?;
                        sys::mkdirat(parent, cname, 0o700)
                            .map_err(|e| apply_err(path, "creating the directory", e))?;
                    }
                }
                Err(err) => return Err(apply_err(path, "creating the directory", err)),
            }
            let dir = sys::openat(
                parent,
                cname,
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0,
            )
            .map_err(|e| apply_err(path, "opening the directory", e))?;
            let fd = dir.as_raw_fd();
            sys::fchown(fd, meta.uid, meta.gid).map_err(|e| apply_err(path, "chown", e))?;
            set_xattrs_fd(fd, path, meta)?;
            if opaque {
                sys::fsetxattr(fd, OVERLAY_OPAQUE_XATTR, b"y")
                    .map_err(|e| apply_err(path, "setting trusted.overlay.opaque", e))?;
            }
            sys::fchmod(fd, meta.mode).map_err(|e| apply_err(path, "chmod", e))?;
            let stat = sys::fstat(fd).map_err(|e| apply_err(path, "stat", e))?;
            let mut resolved = self.cached_resolved();
            if !resolved.is_empty() {
                resolved.push(b'/');
            }
            resolved.extend_from_slice(name);
            self.dirs.push(DirTime {
                path: resolved,
                ino: stat.st_ino,
                mtime: meta.mtime,
            });
            Ok(())
        })();
        self.name_buf = name_buf;
        result
    }

    fn symlink(
        &mut self,
        parent: RawFd,
        path: &[u8],
        name: &[u8],
        target: &[u8],
        meta: &Meta,
    ) -> Result<(), UnpackError> {
        let mut name_buf = std::mem::take(&mut self.name_buf);
        let result = (|| {
            let mut target_buf = Vec::with_capacity(target.len() + 1);
            let ctarget =
                cstr(&mut target_buf, target).map_err(|e| apply_err(path, "symlink target", e))?;
            let cname = cstr(&mut name_buf, name).map_err(|e| apply_err(path, "name", e))?;
            match sys::symlinkat(ctarget, parent, cname) {
                Err(err) if errno(&err) == libc::EEXIST => {
                    self.remove_existing(parent, cname)
                        .map_err(|e| apply_err(path, "removing the existing entry", e))?;
                    sys::symlinkat(ctarget, parent, cname)
                }
                other => other,
            }
            .map_err(|e| apply_err(path, "creating the symlink", e))?;
            self.finish_at(parent, cname, path, name, meta, false)
        })();
        self.name_buf = name_buf;
        result
    }

    fn node(
        &mut self,
        parent: RawFd,
        path: &[u8],
        name: &[u8],
        file_type: libc::mode_t,
        dev: libc::dev_t,
        meta: &Meta,
    ) -> Result<(), UnpackError> {
        let mut name_buf = std::mem::take(&mut self.name_buf);
        let result = (|| {
            let cname = cstr(&mut name_buf, name).map_err(|e| apply_err(path, "name", e))?;
            let mode = file_type | 0o600;
            match sys::mknodat(parent, cname, mode, dev) {
                Err(err) if errno(&err) == libc::EEXIST => {
                    self.remove_existing(parent, cname)
                        .map_err(|e| apply_err(path, "removing the existing entry", e))?;
                    sys::mknodat(parent, cname, mode, dev)
                }
                other => other,
            }
            .map_err(|e| apply_err(path, "creating the device node or fifo", e))?;
            self.finish_at(parent, cname, path, name, meta, true)
        })();
        self.name_buf = name_buf;
        result
    }

    /// Owner, xattrs, mode (unless a symlink) and times of an entry that cannot be
    /// opened (symlink, device, fifo), without following it.
    fn finish_at(
        &self,
        parent: RawFd,
        cname: &CStr,
        path: &[u8],
        name: &[u8],
        meta: &Meta,
        chmod: bool,
    ) -> Result<(), UnpackError> {
        sys::fchownat(parent, cname, meta.uid, meta.gid, libc::AT_SYMLINK_NOFOLLOW)
            .map_err(|e| apply_err(path, "chown", e))?;
        if !meta.xattrs.is_empty() {
            let resolved = self.parent.as_ref().map_or(&[][..], |p| &p.resolved[..]);
            let full = self.full_path(resolved, name);
            let mut buf = Vec::new();
            let cpath = cstr(&mut buf, full.as_os_str().as_bytes())
                .map_err(|e| apply_err(path, "path", e))?;
            for (key, value) in &meta.xattrs {
                let mut key_buf = Vec::new();
                let ckey = cstr(&mut key_buf, key)
                    .map_err(|e| apply_err(path, format!("xattr {}", lossy(key)), e))?;
                if let Err(err) = sys::lsetxattr(cpath, ckey, value) {
                    xattr_error(path, key, err, false)?;
                }
            }
        }
        if chmod {
            // Not a symlink (just created), so following is harmless.
            sys::fchmodat(parent, cname, meta.mode, 0).map_err(|e| apply_err(path, "chmod", e))?;
        }
        sys::utimensat(parent, cname, &meta.times(), libc::AT_SYMLINK_NOFOLLOW)
            .map_err(|e| apply_err(path, "setting times", e))
    }

    fn hardlink(
        &mut self,
        path: &[u8],
        parent: &[u8],
        name: &[u8],
        raw_target: &[u8],
    ) -> Result<(), UnpackError> {
        let mut target = Vec::with_capacity(raw_target.len());
        normalize(raw_target, &mut target).map_err(|reason| {
            invalid(
                path,
                format!("hard link target {:?}: {reason}", lossy(raw_target)),
            )
        })?;
        if target.is_empty() {
            return Err(invalid(path, "hard link to the layer root"));
        }
        if target == path {
            return Err(invalid(path, "hard link to itself"));
        }
        let (target_parent, target_name) = split_parent(&target);
        let not_found = |err: io::Error| {
            if errno(&err) == libc::ENOENT {
                invalid(
                    path,
                    format!(
                        "hard link target {:?} does not exist in the layer",
                        lossy(raw_target)
                    ),
                )
            } else {
                apply_err(
                    path,
                    format!("resolving hard link target {:?}", lossy(raw_target)),
                    err,
                )
            }
        };
        let (target_dir, _) = self.resolve(target_parent, false).map_err(not_found)?;
        let mut target_buf = Vec::new();
        let ctarget = cstr(&mut target_buf, target_name).map_err(|e| apply_err(path, "name", e))?;
        // The target must exist before anything is removed for the link.
        let stat = sys::fstatat(target_dir.as_raw_fd(), ctarget, libc::AT_SYMLINK_NOFOLLOW)
            .map_err(not_found)?;
        if stat.st_mode & libc::S_IFMT == libc::S_IFDIR {
            return Err(invalid(
                path,
                format!("hard link target {:?} is a directory", lossy(raw_target)),
            ));
        }
        let parent_fd = self.parent_dir(path, parent)?;
        let mut name_buf = std::mem::take(&mut self.name_buf);
        let result = (|| {
            let cname = cstr(&mut name_buf, name).map_err(|e| apply_err(path, "name", e))?;
            // Flags 0: a symlink target is linked itself, never followed.
            match sys::linkat(target_dir.as_raw_fd(), ctarget, parent_fd, cname, 0) {
                Err(err) if errno(&err) == libc::EEXIST => {
                    self.remove_existing(parent_fd, cname)
                        .map_err(|e| apply_err(path, "removing the existing entry", e))?;
                    sys::linkat(target_dir.as_raw_fd(), ctarget, parent_fd, cname, 0)
                }
                other => other,
            }
            .map_err(|e| {
                apply_err(
                    path,
                    format!("creating the hard link to {:?}", lossy(raw_target)),
                    e,
                )
            })
        })();
        self.name_buf = name_buf;
        result
    }

    fn whiteout<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        path: &[u8],
        parent: &[u8],
        name: &[u8],
    ) -> Result<(), UnpackError> {
        if name == WHITEOUT_OPAQUE {
            let parent_fd = self.parent_dir(path, parent)?;
            let dir = sys::openat(
                parent_fd,
                c".",
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
                0,
            )
            .map_err(|e| apply_err(path, "opening the opaque directory", e))?;
            return sys::fsetxattr(dir.as_raw_fd(), OVERLAY_OPAQUE_XATTR, b"y")
                .map_err(|e| apply_err(path, "setting trusted.overlay.opaque", e));
        }
        if name.starts_with(WHITEOUT_META_PREFIX) {
            tracing::debug!(entry = %lossy(path), "skipping whiteout metadata entry");
            return Ok(());
        }
        let original = &name[WHITEOUT_PREFIX.len()..];
        if original.is_empty() || original == b"." || original == b".." {
            return Err(invalid(path, "whiteout for an invalid name"));
        }
        let meta = read_meta(entry, path)?;
        let parent_fd = self.parent_dir(path, parent)?;
        let mut name_buf = std::mem::take(&mut self.name_buf);
        let result = (|| {
            let cname = cstr(&mut name_buf, original).map_err(|e| apply_err(path, "name", e))?;
            match sys::mknodat(parent_fd, cname, libc::S_IFCHR, libc::makedev(0, 0)) {
                Ok(()) => {}
                // Written earlier by this layer: a whiteout only hides lower layers.
                Err(err) if errno(&err) == libc::EEXIST => return Ok(()),
                Err(err) => return Err(apply_err(path, "creating the whiteout device", err)),
            }
            sys::fchownat(
                parent_fd,
                cname,
                meta.uid,
                meta.gid,
                libc::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(|e| apply_err(path, "chown of the whiteout device", e))
        })();
        self.name_buf = name_buf;
        result
    }

    /// Sets directory mtimes, deepest first, once their content is written.
    fn finish(mut self) -> Result<(), UnpackError> {
        let mut dirs = std::mem::take(&mut self.dirs);
        // Stable: for a directory given twice, the later entry wins.
        dirs.sort_by_key(|d| std::cmp::Reverse(d.path.iter().filter(|b| **b == b'/').count()));
        let mut buf = Vec::new();
        for dir in &dirs {
            let (parent, name) = split_parent(&dir.path);
            let parent_fd = match self.resolve(parent, false) {
                Ok((fd, _)) => fd,
                // Removed later in the layer.
                Err(err) if matches!(errno(&err), libc::ENOENT | libc::ENOTDIR) => continue,
                Err(err) => return Err(apply_err(&dir.path, "resolving the directory", err)),
            };
            let cname = cstr(&mut buf, name).map_err(|e| apply_err(&dir.path, "name", e))?;
            match sys::fstatat(parent_fd.as_raw_fd(), cname, libc::AT_SYMLINK_NOFOLLOW) {
                Ok(stat)
                    if stat.st_mode & libc::S_IFMT == libc::S_IFDIR && stat.st_ino == dir.ino => {}
                // Replaced or removed later in the layer.
                Ok(_) => continue,
                Err(err) if errno(&err) == libc::ENOENT => continue,
                Err(err) => return Err(apply_err(&dir.path, "stat of the directory", err)),
            }
            sys::utimensat(
                parent_fd.as_raw_fd(),
                cname,
                &[dir.mtime, dir.mtime],
                libc::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(|e| apply_err(&dir.path, "setting times", e))?;
        }
        Ok(())
    }
}

fn set_xattrs_fd(fd: RawFd, path: &[u8], meta: &Meta) -> Result<(), UnpackError> {
    let mut buf = Vec::new();
    for (key, value) in &meta.xattrs {
        let ckey =
            cstr(&mut buf, key).map_err(|e| apply_err(path, format!("xattr {}", lossy(key)), e))?;
        if let Err(err) = sys::fsetxattr(fd, ckey, value) {
            xattr_error(path, key, err, true)?;
        }
    }
    Ok(())
}

/// Whether a failed setxattr is ignored (as containerd does) or an error.
fn xattr_error(
    path: &[u8],
    key: &[u8],
    err: io::Error,
    reg_or_dir: bool,
) -> Result<(), UnpackError> {
    let code = errno(&err);
    let unsupported = code == libc::ENOTSUP || code == libc::EOPNOTSUPP;
    // user.* xattrs exist only on regular files and directories.
    let user_on_special = code == libc::EPERM && !reg_or_dir && key.starts_with(b"user.");
    if unsupported || user_on_special {
        tracing::warn!(
            entry = %lossy(path),
            xattr = %lossy(key),
            error = %err,
            "ignoring an xattr the filesystem does not take"
        );
        return Ok(());
    }
    Err(apply_err(
        path,
        format!("setting xattr {}", lossy(key)),
        err,
    ))
}

/// Removes the directory `parent/name` and everything below it, never following symlinks.
fn remove_tree(parent: RawFd, name: &CStr) -> io::Result<()> {
    let dir = sys::openat(
        parent,
        name,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        0,
    )?;
    for (child, is_dir) in sys::read_dir(dir.try_clone()?)? {
        if is_dir == Some(true) {
            remove_tree(dir.as_raw_fd(), &child)?;
            continue;
        }
        match sys::unlinkat(dir.as_raw_fd(), &child, 0) {
            // An unknown d_type that is a directory after all.
            Err(err) if errno(&err) == libc::EISDIR => remove_tree(dir.as_raw_fd(), &child)?,
            other => other?,
        }
    }
    drop(dir);
    sys::unlinkat(parent, name, libc::AT_REMOVEDIR)
}

/// Thin safe wrappers over the `*at` system calls used here.
mod sys {
    use std::ffi::{CStr, CString};
    use std::io;
    use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd, RawFd};

    use nix::libc;

    /// The names in directory `dir` (`.` and `..` left out), each with whether it is a
    /// directory (`None`: the filesystem does not say).
    pub fn read_dir(dir: OwnedFd) -> io::Result<Vec<(CString, Option<bool>)>> {
        let raw = dir.into_raw_fd();
        // SAFETY: `raw` is an open directory fd; fdopendir takes it over on success.
        let stream = unsafe { libc::fdopendir(raw) };
        if stream.is_null() {
            let err = io::Error::last_os_error();
            // SAFETY: still ours when fdopendir failed.
            unsafe { libc::close(raw) };
            return Err(err);
        }
        let mut names = Vec::new();
        let result = loop {
            nix::errno::Errno::clear();
            // SAFETY: `stream` is a valid DIR* until closedir below.
            let entry = unsafe { libc::readdir64(stream) };
            if entry.is_null() {
                let err = io::Error::last_os_error();
                break if err.raw_os_error() == Some(0) {
                    Ok(())
                } else {
                    Err(err)
                };
            }
            // SAFETY: readdir64 returned a valid entry with a NUL-terminated name.
            let (name, d_type) =
                unsafe { (CStr::from_ptr((*entry).d_name.as_ptr()), (*entry).d_type) };
            if name == c"." || name == c".." {
                continue;
            }
            let is_dir = match d_type {
                libc::DT_DIR => Some(true),
                libc::DT_UNKNOWN => None,
                _ => Some(false),
            };
            names.push((name.to_owned(), is_dir));
        };
        // SAFETY: `stream` is valid and closed once.
        unsafe { libc::closedir(stream) };
        result.map(|()| names)
    }

    fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
        if ret < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(ret)
        }
    }

    pub fn openat(
        dir: RawFd,
        name: &CStr,
        flags: libc::c_int,
        mode: libc::mode_t,
    ) -> io::Result<OwnedFd> {
        // SAFETY: `name` is NUL-terminated; the fd returned is owned by nothing else.
        let fd = check(unsafe { libc::openat(dir, name.as_ptr(), flags, mode) })?;
        // SAFETY: a fresh fd from openat.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    pub fn mkdirat(dir: RawFd, name: &CStr, mode: libc::mode_t) -> io::Result<()> {
        // SAFETY: `name` is NUL-terminated.
        check(unsafe { libc::mkdirat(dir, name.as_ptr(), mode) }).map(drop)
    }

    pub fn fstatat(dir: RawFd, name: &CStr, flags: libc::c_int) -> io::Result<libc::stat> {
        let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: `name` is NUL-terminated, `stat` is valid for writes.
        check(unsafe { libc::fstatat(dir, name.as_ptr(), stat.as_mut_ptr(), flags) })?;
        // SAFETY: initialized by a successful fstatat.
        Ok(unsafe { stat.assume_init() })
    }

    pub fn fstat(fd: RawFd) -> io::Result<libc::stat> {
        let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: `stat` is valid for writes.
        check(unsafe { libc::fstat(fd, stat.as_mut_ptr()) })?;
        // SAFETY: initialized by a successful fstat.
        Ok(unsafe { stat.assume_init() })
    }

    pub fn readlinkat(dir: RawFd, name: &CStr) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
        // SAFETY: `buf` is valid for `buf.len()` bytes.
        let n = unsafe { libc::readlinkat(dir, name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        buf.truncate(n as usize);
        Ok(buf)
    }

    pub fn symlinkat(target: &CStr, dir: RawFd, name: &CStr) -> io::Result<()> {
        // SAFETY: both strings are NUL-terminated.
        check(unsafe { libc::symlinkat(target.as_ptr(), dir, name.as_ptr()) }).map(drop)
    }

    pub fn linkat(
        old_dir: RawFd,
        old: &CStr,
        new_dir: RawFd,
        new: &CStr,
        flags: libc::c_int,
    ) -> io::Result<()> {
        // SAFETY: both names are NUL-terminated.
        check(unsafe { libc::linkat(old_dir, old.as_ptr(), new_dir, new.as_ptr(), flags) })
            .map(drop)
    }

    pub fn mknodat(
        dir: RawFd,
        name: &CStr,
        mode: libc::mode_t,
        dev: libc::dev_t,
    ) -> io::Result<()> {
        // SAFETY: `name` is NUL-terminated.
        check(unsafe { libc::mknodat(dir, name.as_ptr(), mode, dev) }).map(drop)
    }

    pub fn unlinkat(dir: RawFd, name: &CStr, flags: libc::c_int) -> io::Result<()> {
        // SAFETY: `name` is NUL-terminated.
        check(unsafe { libc::unlinkat(dir, name.as_ptr(), flags) }).map(drop)
    }

    pub fn fchownat(
        dir: RawFd,
        name: &CStr,
        uid: u32,
        gid: u32,
        flags: libc::c_int,
    ) -> io::Result<()> {
        // SAFETY: `name` is NUL-terminated.
        check(unsafe { libc::fchownat(dir, name.as_ptr(), uid, gid, flags) }).map(drop)
    }

    pub fn fchown(fd: RawFd, uid: u32, gid: u32) -> io::Result<()> {
        // SAFETY: plain syscall on an fd.
        check(unsafe { libc::fchown(fd, uid, gid) }).map(drop)
    }

    pub fn fchmod(fd: RawFd, mode: u32) -> io::Result<()> {
        // SAFETY: plain syscall on an fd.
        check(unsafe { libc::fchmod(fd, mode) }).map(drop)
    }

    pub fn fchmodat(dir: RawFd, name: &CStr, mode: u32, flags: libc::c_int) -> io::Result<()> {
        // SAFETY: `name` is NUL-terminated.
        check(unsafe { libc::fchmodat(dir, name.as_ptr(), mode, flags) }).map(drop)
    }

    pub fn utimensat(
        dir: RawFd,
        name: &CStr,
        times: &[libc::timespec; 2],
        flags: libc::c_int,
    ) -> io::Result<()> {
        // SAFETY: `name` is NUL-terminated, `times` points to two timespecs.
        check(unsafe { libc::utimensat(dir, name.as_ptr(), times.as_ptr(), flags) }).map(drop)
    }

    pub fn futimens(fd: RawFd, times: &[libc::timespec; 2]) -> io::Result<()> {
        // SAFETY: `times` points to two timespecs.
        check(unsafe { libc::futimens(fd, times.as_ptr()) }).map(drop)
    }

    pub fn fsetxattr(fd: RawFd, name: &CStr, value: &[u8]) -> io::Result<()> {
        // SAFETY: `name` is NUL-terminated, `value` valid for its length.
        check(unsafe { libc::fsetxattr(fd, name.as_ptr(), value.as_ptr().cast(), value.len(), 0) })
            .map(drop)
    }

    pub fn lsetxattr(path: &CStr, name: &CStr, value: &[u8]) -> io::Result<()> {
        // SAFETY: strings are NUL-terminated, `value` valid for its length.
        check(unsafe {
            libc::lsetxattr(
                path.as_ptr(),
                name.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        })
        .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types() {
        use Compression::*;
        for (media_type, want) in [
            ("application/vnd.oci.image.layer.v1.tar", None),
            ("application/vnd.oci.image.layer.v1.tar+gzip", Gzip),
            ("application/vnd.oci.image.layer.v1.tar+zstd", Zstd),
            (
                "application/vnd.oci.image.layer.nondistributable.v1.tar",
                None,
            ),
            (
                "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                Gzip,
            ),
            (
                "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
                Zstd,
            ),
            ("application/vnd.docker.image.rootfs.diff.tar.gzip", Gzip),
            (
                "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
                Gzip,
            ),
            ("application/vnd.docker.image.rootfs.diff.tar", None),
        ] {
            assert_eq!(
                Compression::from_media_type(media_type).unwrap(),
                want,
                "{media_type}"
            );
        }
        let err = Compression::from_media_type("application/vnd.oci.image.layer.v1.tar+bzip2")
            .unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("application/vnd.oci.image.layer.v1.tar+bzip2"),
            "{message}"
        );
        assert!(
            message.contains("application/vnd.oci.image.layer.v1.tar+zstd"),
            "{message}"
        );
        assert!(matches!(err, UnpackError::UnsupportedMediaType { .. }));
    }

    #[test]
    fn normalizes_paths() {
        let mut out = Vec::new();
        for (raw, want) in [
            ("a/b/c", "a/b/c"),
            ("./a//b/", "a/b"),
            ("/etc/passwd", "etc/passwd"),
            ("///x", "x"),
            ("./", ""),
            ("/", ""),
            ("a..b/..c", "a..b/..c"),
        ] {
            normalize(raw.as_bytes(), &mut out).unwrap();
            assert_eq!(out, want.as_bytes(), "{raw}");
        }
        for raw in ["..", "../x", "a/../../x", "a/..", "/../x"] {
            assert!(normalize(raw.as_bytes(), &mut out).is_err(), "{raw}");
        }
        assert!(normalize(b"a\0b", &mut out).is_err());
        assert!(normalize(&vec![b'a'; 4097], &mut out).is_err());
    }

    #[test]
    fn pax_times() {
        let t = parse_pax_time(b"1700000000.123456789").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec), (1_700_000_000, 123_456_789));
        let t = parse_pax_time(b"1700000000.5").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec), (1_700_000_000, 500_000_000));
        let t = parse_pax_time(b"42").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec), (42, 0));
        let t = parse_pax_time(b"-1.25").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec), (-2, 750_000_000));
        assert!(parse_pax_time(b"x").is_none());
    }

    #[test]
    fn splits_parents() {
        assert_eq!(split_parent(b"a/b/c"), (&b"a/b"[..], &b"c"[..]));
        assert_eq!(split_parent(b"c"), (&b""[..], &b"c"[..]));
    }
}
