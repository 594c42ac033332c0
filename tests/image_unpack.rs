//! Layer unpacking (`wharf::image::unpack`) and snapshots / container root filesystems
//! (`wharf::image::snapshot`) against real tar layers built by the fixtures, including
//! hand-crafted malicious ones. Needs root (device nodes, chown, trusted.* xattrs,
//! overlay mounts).

mod support;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use nix::libc;
use sha2::{Digest as _, Sha256};
use tar::EntryType;
use tempfile::TempDir;

use support::images::{
    assert_rootfs_matches, base_layer, busybox_applets, gzip, sha256_digest, whiteout_expected,
    whiteout_image, LayerBlob, LayerBuilder, OciImage, BUSYBOX_PATH, ETC_PASSWD, FIXED_MTIME,
    WHARF_GID, WHARF_UID,
};
use wharf::image::snapshot::{mount_rootfs, unmount_rootfs, SnapshotError, Snapshotter};
use wharf::image::unpack::{
    apply_layer, apply_layer_limited, Compression, Limits, UnpackError, UnpackStats,
};

// ---------------------------------------------------------------------------
// helpers

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests need root (device nodes, chown, trusted.* xattrs, overlay mounts)"
    );
}

fn tempdir() -> TempDir {
    tempfile::Builder::new()
        .prefix("wharf-unpack-test-")
        .tempdir()
        .expect("temp dir")
}

/// Counts the bytes read through it, to check that the unpacker reads to EOF.
struct Counting<'a> {
    data: &'a [u8],
    read: &'a AtomicUsize,
}

impl Read for Counting<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.data.read(buf)?;
        self.read.fetch_add(n, Ordering::Relaxed);
        Ok(n)
    }
}

/// Applies `blob` (compressed per `compression`) into `dest` and checks, on success,
/// that every byte of the blob was read.
fn apply_bytes(
    blob: &[u8],
    compression: Compression,
    dest: &Path,
) -> Result<UnpackStats, UnpackError> {
    let read = AtomicUsize::new(0);
    let result = apply_layer(
        Counting {
            data: blob,
            read: &read,
        },
        compression,
        dest,
    );
    if result.is_ok() {
        assert_eq!(
            read.load(Ordering::Relaxed),
            blob.len(),
            "the layer stream was not read to EOF"
        );
    }
    result
}

fn apply_blob(blob: &LayerBlob, dest: &Path) -> Result<UnpackStats, UnpackError> {
    let compression = Compression::from_media_type(&blob.media_type).expect("media type");
    apply_bytes(&blob.blob, compression, dest)
}

fn new_dest(parent: &Path, name: &str) -> PathBuf {
    let dest = parent.join(name);
    fs::create_dir_all(&dest).expect("create dest");
    dest
}

fn lgetxattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let c_path = CString::new(path.as_os_str().as_bytes()).expect("path");
    let c_name = CString::new(name).expect("name");
    let mut buf = vec![0u8; 65536];
    // SAFETY: valid NUL-terminated strings and a buffer of the given length.
    let n = unsafe {
        libc::lgetxattr(
            c_path.as_ptr(),
            c_name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        let err = io::Error::last_os_error();
        assert_eq!(
            err.raw_os_error(),
            Some(libc::ENODATA),
            "lgetxattr {} {name}: {err}",
            path.display()
        );
        return None;
    }
    buf.truncate(n as usize);
    Some(buf)
}

fn llistxattr(path: &Path) -> Vec<String> {
    let c_path = CString::new(path.as_os_str().as_bytes()).expect("path");
    let mut buf = vec![0u8; 65536];
    // SAFETY: valid NUL-terminated string and a buffer of the given length.
    let n = unsafe { libc::llistxattr(c_path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(
        n >= 0,
        "llistxattr {}: {}",
        path.display(),
        io::Error::last_os_error()
    );
    buf.truncate(n as usize);
    let mut names: Vec<String> = buf
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect();
    names.sort();
    names
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .mode()
        & 0o7777
}

fn is_whiteout(path: &Path) -> bool {
    fs::symlink_metadata(path)
        .map(|m| m.file_type().is_char_device() && m.rdev() == 0)
        .unwrap_or(false)
}

fn is_mounted(path: &Path) -> bool {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let path = path.to_string_lossy();
    mountinfo
        .lines()
        .any(|line| line.split(' ').nth(4) == Some(path.as_ref()))
}

/// Unmounts a rootfs when dropped, even when the test panics.
struct MountGuard(PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        if let Err(err) = unmount_rootfs(&self.0) {
            eprintln!("cleanup: unmount {}: {err}", self.0.display());
        }
    }
}

fn mount(
    snapshots: &Snapshotter,
    chain: &[String],
    container_dir: &Path,
    target: &Path,
    readonly: bool,
) -> MountGuard {
    mount_rootfs(snapshots, chain, container_dir, target, readonly)
        .unwrap_or_else(|e| panic!("mount_rootfs: {e}"));
    MountGuard(target.to_path_buf())
}

/// Everything observable about the tree under `root` (not following symlinks), keyed
/// by relative path; `skip` (and what is below it) is left out. Used to prove that
/// nothing outside a layer's destination changed.
fn listing(root: &Path, skip: Option<&Path>) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        if Some(path.as_path()) == skip {
            continue;
        }
        let meta = fs::symlink_metadata(&path).expect("lstat");
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            let mut children: Vec<PathBuf> = fs::read_dir(&path)
                .expect("read_dir")
                .map(|e| e.expect("entry").path())
                .collect();
            children.sort();
            stack.extend(children);
            "dir".to_string()
        } else if ft.is_symlink() {
            format!("symlink -> {:?}", fs::read_link(&path).expect("readlink"))
        } else if ft.is_file() {
            let content = fs::read(&path).expect("read");
            format!("file {}", hex::encode(Sha256::digest(&content)))
        } else {
            format!("special {:o} rdev {}", meta.mode() & 0o170000, meta.rdev())
        };
        let key = path.strip_prefix(root).expect("under root").to_path_buf();
        let value = format!(
            "{kind} mode {:o} {}:{} nlink {} mtime {}.{} xattrs {:?}",
            meta.mode() & 0o7777,
            meta.uid(),
            meta.gid(),
            meta.nlink(),
            meta.mtime(),
            meta.mtime_nsec(),
            llistxattr(&path)
        );
        out.insert(key, value);
    }
    out
}

/// A layer's tar with extra raw tar entries appended (built with `tar::Builder`,
/// e.g. with PAX records that `LayerBuilder` cannot write).
fn tar_with_extra(layer: &LayerBuilder, extra: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
    let mut bytes = layer.tar();
    // tar::Builder ends an archive with two zero blocks: append before them.
    assert!(bytes.len() >= 1024 && bytes[bytes.len() - 1024..].iter().all(|b| *b == 0));
    bytes.truncate(bytes.len() - 1024);
    let mut builder = tar::Builder::new(bytes);
    extra(&mut builder);
    builder.into_inner().expect("finish tar")
}

fn header(kind: EntryType, mode: u32, size: u64) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(FIXED_MTIME);
    header.set_size(size);
    header
}

fn unique(label: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "wharf-{label}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

// ---------------------------------------------------------------------------
// regular layers

#[test]
fn busybox_base_layer() {
    require_root();
    let layer = base_layer();
    let dir = tempdir();
    let dest = new_dest(dir.path(), "fs");
    let stats = apply_blob(layer, &dest).expect("apply the busybox layer");
    assert_eq!(stats.diff_id, layer.diff_id);
    assert_eq!(stats.uncompressed_bytes, layer.uncompressed_size);
    let applets = busybox_applets();
    // 13 dirs + busybox + passwd + group + one symlink per applet
    assert_eq!(stats.entries, 16 + applets.len() as u64);

    let busybox = dest.join("bin/busybox");
    assert_eq!(
        fs::read(&busybox).expect("read bin/busybox"),
        fs::read(BUSYBOX_PATH).expect("read host busybox")
    );
    let meta = fs::symlink_metadata(&busybox).expect("lstat busybox");
    assert!(meta.is_file());
    assert_eq!(meta.mode() & 0o7777, 0o755);
    assert_eq!((meta.uid(), meta.gid()), (0, 0));
    assert_eq!(meta.mtime() as u64, FIXED_MTIME);

    assert!(!applets.is_empty());
    for applet in &applets {
        let path = dest.join(applet);
        assert_eq!(
            fs::read_link(&path).unwrap_or_else(|e| panic!("{applet}: {e}")),
            Path::new("/bin/busybox"),
            "{applet}"
        );
        let meta = fs::symlink_metadata(&path).expect("lstat applet");
        assert_eq!(meta.mtime() as u64, FIXED_MTIME, "{applet} mtime");
    }
    assert_eq!(
        fs::read_to_string(dest.join("etc/passwd")).expect("passwd"),
        ETC_PASSWD
    );

    let tmp = fs::symlink_metadata(dest.join("tmp")).expect("tmp");
    assert!(tmp.is_dir());
    assert_eq!(tmp.mode() & 0o7777, 0o1777);
    assert_eq!(mode(&dest.join("root")), 0o700);
    assert_eq!(mode(&dest.join("proc")), 0o555);
    let home = fs::symlink_metadata(dest.join("home/wharf")).expect("home/wharf");
    assert_eq!((home.uid(), home.gid()), (WHARF_UID, WHARF_GID));
    // Directory mtimes survive the creation of their children.
    for dir in ["bin", "usr/bin", "usr/sbin", "sbin", "etc", "home", "tmp"] {
        let meta = fs::symlink_metadata(dest.join(dir)).expect("dir");
        assert_eq!(meta.mtime() as u64, FIXED_MTIME, "{dir} mtime");
    }
    // the layer root keeps its own metadata (no "./" entry here)
    assert_eq!(mode(&dest), 0o755);
}

/// A layer with one of every kind of entry and the metadata that must survive.
fn special_layer() -> Vec<u8> {
    let layer = LayerBuilder::new()
        .dir("bin")
        .executable("bin/tool", "#!/bin/sh\necho tool\n")
        // LayerBuilder writes hard links with mode 0644: the link must not change the
        // inode's mode.
        .hardlink("bin/tool-link", "bin/tool")
        .file_with("bin/suid", "suid", 0o4755, 0, 0)
        .file_with("bin/sgid", "sgid", 0o2755, WHARF_UID.into(), 50)
        .dir_with("shared", 0o1777, 0, 0)
        .dir("dev")
        .char_device("dev/null", 1, 3, 0o666)
        .block_device("dev/loop0", 7, 0, 0o660)
        .fifo("dev/pipe", 0o640)
        .file_with("owned", "owned", 0o600, 1234, 5678)
        .mtime(1_600_000_000)
        .symlink("link-to-tool", "bin/tool")
        .hardlink("hard-to-symlink", "link-to-tool")
        .dir("xattr");
    tar_with_extra(&layer, |b| {
        let xattrs: [(&str, &[u8]); 5] = [
            ("SCHILY.xattr.user.wharf", b"1"),
            ("SCHILY.xattr.user.empty", b""),
            ("SCHILY.xattr.trusted.wharf", b"t\0binary"),
            // never taken from an archive
            ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
            ("SCHILY.xattr.trusted.overlay.redirect", b"/bin"),
        ];
        b.append_pax_extensions(xattrs).expect("pax");
        let mut h = header(EntryType::Regular, 0o644, 4);
        b.append_data(&mut h, "xattr/file", &b"data"[..])
            .expect("append");

        b.append_pax_extensions([("SCHILY.xattr.user.wharf", &b"dir"[..])])
            .expect("pax");
        let mut h = header(EntryType::Directory, 0o750, 0);
        b.append_data(&mut h, "xattr/dir/", io::empty())
            .expect("append");

        // user.* cannot be set on a symlink (ignored, as containerd does); trusted.* can.
        b.append_pax_extensions([
            ("SCHILY.xattr.user.wharf", &b"1"[..]),
            ("SCHILY.xattr.trusted.wharf", &b"link"[..]),
        ])
        .expect("pax");
        let mut h = header(EntryType::Symlink, 0o777, 0);
        b.append_link(&mut h, "xattr/link", "file").expect("append");

        // sub-second mtime from a PAX record
        b.append_pax_extensions([("mtime", &b"1700000000.25"[..])])
            .expect("pax");
        let mut h = header(EntryType::Regular, 0o644, 7);
        b.append_data(&mut h, "xattr/precise", &b"precise"[..])
            .expect("append");
    })
}

fn check_special(dest: &Path) {
    let tool = fs::symlink_metadata(dest.join("bin/tool")).expect("tool");
    let link = fs::symlink_metadata(dest.join("bin/tool-link")).expect("tool-link");
    assert_eq!(tool.ino(), link.ino(), "hard link shares the inode");
    assert_eq!(tool.nlink(), 2);
    assert_eq!(tool.mode() & 0o7777, 0o755);
    assert_eq!(
        fs::read_to_string(dest.join("bin/tool-link")).expect("read link"),
        "#!/bin/sh\necho tool\n"
    );
    assert_eq!(mode(&dest.join("bin/suid")), 0o4755);
    let sgid = fs::symlink_metadata(dest.join("bin/sgid")).expect("sgid");
    assert_eq!(sgid.mode() & 0o7777, 0o2755, "setgid survives the chown");
    assert_eq!((sgid.uid(), sgid.gid()), (WHARF_UID, 50));
    assert_eq!(mode(&dest.join("shared")), 0o1777);

    let null = fs::symlink_metadata(dest.join("dev/null")).expect("null");
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), libc::makedev(1, 3));
    assert_eq!(null.mode() & 0o7777, 0o666);
    let loop0 = fs::symlink_metadata(dest.join("dev/loop0")).expect("loop0");
    assert!(loop0.file_type().is_block_device());
    assert_eq!(loop0.rdev(), libc::makedev(7, 0));
    assert_eq!(loop0.mode() & 0o7777, 0o660);
    let pipe = fs::symlink_metadata(dest.join("dev/pipe")).expect("pipe");
    assert!(pipe.file_type().is_fifo());
    assert_eq!(pipe.mode() & 0o7777, 0o640);

    let owned = fs::symlink_metadata(dest.join("owned")).expect("owned");
    assert_eq!((owned.uid(), owned.gid()), (1234, 5678));
    assert_eq!(owned.mode() & 0o7777, 0o600);
    assert_eq!(owned.mtime(), 1_600_000_000);

    let symlink = fs::symlink_metadata(dest.join("link-to-tool")).expect("symlink");
    let hard = fs::symlink_metadata(dest.join("hard-to-symlink")).expect("hard");
    assert!(
        hard.file_type().is_symlink(),
        "a hard link to a symlink is the symlink"
    );
    assert_eq!(hard.ino(), symlink.ino());

    let file = dest.join("xattr/file");
    assert_eq!(lgetxattr(&file, "user.wharf").as_deref(), Some(&b"1"[..]));
    assert_eq!(lgetxattr(&file, "user.empty").as_deref(), Some(&b""[..]));
    assert_eq!(
        lgetxattr(&file, "trusted.wharf").as_deref(),
        Some(&b"t\0binary"[..])
    );
    assert_eq!(lgetxattr(&file, "trusted.overlay.opaque"), None);
    assert_eq!(lgetxattr(&file, "trusted.overlay.redirect"), None);
    let xdir = dest.join("xattr/dir");
    assert_eq!(lgetxattr(&xdir, "user.wharf").as_deref(), Some(&b"dir"[..]));
    assert_eq!(mode(&xdir), 0o750);
    let xlink = dest.join("xattr/link");
    assert_eq!(
        lgetxattr(&xlink, "trusted.wharf").as_deref(),
        Some(&b"link"[..])
    );
    assert_eq!(lgetxattr(&xlink, "user.wharf"), None);
    let precise = fs::symlink_metadata(dest.join("xattr/precise")).expect("precise");
    assert_eq!(
        (precise.mtime(), precise.mtime_nsec()),
        (1_700_000_000, 250_000_000)
    );
}

#[test]
fn special_files_and_metadata_survive() {
    require_root();
    let tar = special_layer();
    let dir = tempdir();
    let dest = new_dest(dir.path(), "fs");
    let stats = apply_bytes(&tar, Compression::None, &dest).expect("apply");
    assert_eq!(stats.diff_id, sha256_digest(&tar));
    check_special(&dest);
}

#[test]
fn gzip_zstd_and_uncompressed_layers_agree() {
    require_root();
    let mut tar = special_layer();
    // Archivers pad to a 10 KiB record: the diff_id covers the padding too.
    tar.resize(tar.len().div_ceil(10240) * 10240 + 10240, 0);
    let diff_id = sha256_digest(&tar);
    let half = tar.len() / 2;
    let mut multi_member = gzip(&tar[..half]);
    multi_member.extend(gzip(&tar[half..]));
    let variants: Vec<(&str, Compression, Vec<u8>)> = vec![
        ("uncompressed", Compression::None, tar.clone()),
        ("gzip", Compression::Gzip, gzip(&tar)),
        ("gzip, two members", Compression::Gzip, multi_member),
        (
            "zstd",
            Compression::Zstd,
            zstd::encode_all(&tar[..], 3).expect("zstd"),
        ),
    ];
    let dir = tempdir();
    let mut trees = Vec::new();
    for (i, (name, compression, blob)) in variants.iter().enumerate() {
        let dest = new_dest(dir.path(), &format!("fs{i}"));
        let stats =
            apply_bytes(blob, *compression, &dest).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(stats.diff_id, diff_id, "{name}");
        assert_eq!(stats.uncompressed_bytes, tar.len() as u64, "{name}");
        check_special(&dest);
        // everything but the destination directory itself (created by the test)
        let tree: BTreeMap<PathBuf, String> = listing(&dest, None)
            .into_iter()
            .filter(|(path, _)| !path.as_os_str().is_empty())
            .collect();
        trees.push((name, tree));
    }
    for (name, tree) in &trees[1..] {
        assert_eq!(tree, &trees[0].1, "{name} differs from uncompressed");
    }
    // the media types the registry hands out map to these
    assert_eq!(
        Compression::from_media_type("application/vnd.oci.image.layer.v1.tar+zstd").unwrap(),
        Compression::Zstd
    );
    // corrupt data is an error, not a partial success
    let mut corrupt = gzip(&tar);
    let len = corrupt.len();
    corrupt[len / 2] ^= 0xff;
    let dest = new_dest(dir.path(), "corrupt");
    assert!(apply_bytes(&corrupt, Compression::Gzip, &dest).is_err());
    let dest = new_dest(dir.path(), "truncated");
    assert!(apply_bytes(&tar[..tar.len() / 3], Compression::None, &dest).is_err());
}

#[test]
fn later_entries_replace_earlier_ones() {
    require_root();
    let layer = LayerBuilder::new()
        .dir_with("./", 0o700, 0, 0) // the layer root itself: ignored
        .file("a", "file first")
        .dir("a") // dir over file
        .file("a/inner", "inner")
        .dir("b")
        .file("b/inner", "inner")
        .file("b", "file over dir")
        .dir_with("c", 0o700, 0, 0)
        .file("c/kept", "kept")
        .dir_with("c", 0o751, WHARF_UID.into(), WHARF_GID.into()) // dir over dir
        .symlink("d", "/etc")
        .file("d", "file over symlink")
        .file("e", "e")
        .whiteout("e") // a whiteout hides lower layers only: e stays
        .whiteout("f")
        .file("f", "file over whiteout")
        .whiteout("g")
        .dir("g") // a dir replacing a whiteout is opaque
        .file("g/new", "new")
        .dir("h")
        .opaque("h")
        .file("h/x", "x")
        .whiteout("i")
        .file("j", "old")
        .file("j", "new")
        .fifo("k", 0o600)
        .symlink("k", "target");
    let dir = tempdir();
    let dest = new_dest(dir.path(), "fs");
    let root_mode = mode(&dest);
    apply_blob(&layer.build(), &dest).expect("apply");
    assert_eq!(mode(&dest), root_mode, "'./' entry ignored");
    assert!(dest.join("a").is_dir());
    assert_eq!(fs::read_to_string(dest.join("a/inner")).unwrap(), "inner");
    assert_eq!(fs::read_to_string(dest.join("b")).unwrap(), "file over dir");
    let c = fs::symlink_metadata(dest.join("c")).unwrap();
    assert_eq!(
        (c.mode() & 0o7777, c.uid(), c.gid()),
        (0o751, WHARF_UID, WHARF_GID)
    );
    assert_eq!(fs::read_to_string(dest.join("c/kept")).unwrap(), "kept");
    let d = fs::symlink_metadata(dest.join("d")).unwrap();
    assert!(d.is_file());
    assert_eq!(
        fs::read_to_string(dest.join("d")).unwrap(),
        "file over symlink"
    );
    assert_eq!(fs::read_to_string(dest.join("e")).unwrap(), "e");
    assert_eq!(
        fs::read_to_string(dest.join("f")).unwrap(),
        "file over whiteout"
    );
    assert!(dest.join("g").is_dir());
    assert_eq!(
        lgetxattr(&dest.join("g"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(
        lgetxattr(&dest.join("h"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(lgetxattr(&dest.join("c"), "trusted.overlay.opaque"), None);
    assert!(is_whiteout(&dest.join("i")));
    assert_eq!(fs::read_to_string(dest.join("j")).unwrap(), "new");
    assert_eq!(fs::read_link(dest.join("k")).unwrap(), Path::new("target"));
    // no whiteout entry is ever written as a file
    for (path, _) in listing(&dest, None) {
        assert!(
            !path.to_string_lossy().contains(".wh."),
            "{} written",
            path.display()
        );
    }
}

// ---------------------------------------------------------------------------
// snapshots and mounted root filesystems

/// Unpacks every layer of `image` into committed snapshots; returns the chain.
fn unpack_image(snapshots: &Snapshotter, image: &OciImage) -> Vec<String> {
    let diff_ids: Vec<String> = image.layers.iter().map(|l| l.diff_id.clone()).collect();
    let chain = Snapshotter::chain_ids(&diff_ids);
    for (layer, chain_id) in image.layers.iter().zip(&chain) {
        if snapshots.exists(chain_id) {
            continue;
        }
        let pending = snapshots.prepare().expect("prepare");
        let blob = image.read_blob(&layer.digest);
        let compression = Compression::from_media_type(&layer.media_type).expect("media type");
        let stats = apply_bytes(&blob, compression, pending.path())
            .unwrap_or_else(|e| panic!("layer {}: {e}", layer.digest));
        assert_eq!(stats.diff_id, layer.diff_id);
        snapshots.commit(pending, chain_id).expect("commit");
    }
    chain
}

#[test]
fn whiteout_image_in_a_mounted_rootfs() {
    require_root();
    let image = whiteout_image();
    let dir = tempdir();
    let snapshots = Snapshotter::open(&dir.path().join("snapshots")).expect("open");
    let chain = unpack_image(&snapshots, &image);
    assert_eq!(chain.len(), 3);
    let mut sorted = chain.clone();
    sorted.sort();
    assert_eq!(snapshots.list().expect("list"), sorted);
    assert_eq!(chain[0], image.layers[0].diff_id);

    // the raw top layer holds overlayfs whiteouts, not OCI ones
    let top = snapshots.layer_dir(&chain[2]);
    assert!(is_whiteout(&top.join("data/gone.txt")), "file whiteout");
    assert!(is_whiteout(&top.join("data/gonedir")), "dir whiteout");
    assert_eq!(
        lgetxattr(&top.join("data/opaque"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(lgetxattr(&top.join("data"), "trusted.overlay.opaque"), None);
    for (path, _) in listing(&top, None) {
        assert!(
            !path.to_string_lossy().contains(".wh."),
            "{}",
            path.display()
        );
    }

    // a writable rootfs
    let container = dir.path().join("containers/c1");
    let target = dir.path().join("rootfs");
    let guard = mount(&snapshots, &chain, &container, &target, false);
    assert!(is_mounted(&target));
    assert_rootfs_matches(&target, &whiteout_expected());
    let upper = container.join("upper");
    fs::write(target.join("data/written.txt"), "hello").expect("write into the rootfs");
    fs::write(target.join("data/keep.txt"), "changed").expect("modify a lower file");
    fs::remove_file(target.join("data/replaced.txt")).expect("delete a lower file");
    assert_eq!(
        fs::read_to_string(upper.join("data/written.txt")).expect("upper"),
        "hello"
    );
    assert_eq!(
        fs::read_to_string(upper.join("data/keep.txt")).unwrap(),
        "changed"
    );
    assert!(is_whiteout(&upper.join("data/replaced.txt")));
    for chain_id in &chain {
        let layer = snapshots.layer_dir(chain_id);
        assert!(!layer.join("data/written.txt").exists());
    }
    let layer2 = snapshots.layer_dir(&chain[1]);
    assert_eq!(
        fs::read_to_string(layer2.join("data/keep.txt")).unwrap(),
        "keep v1"
    );
    assert_eq!(
        fs::read_to_string(top.join("data/replaced.txt")).unwrap(),
        "new"
    );
    drop(guard);
    assert!(!is_mounted(&target));
    assert!(!target.join("data").exists());
    unmount_rootfs(&target).expect("unmounting twice is fine");
    unmount_rootfs(&dir.path().join("never-mounted")).expect("missing target is fine");

    // mounting again reuses the upper dir: the container keeps its changes
    let guard = mount(&snapshots, &chain, &container, &target, false);
    assert_eq!(
        fs::read_to_string(target.join("data/written.txt")).unwrap(),
        "hello"
    );
    drop(guard);

    // read-only: an overlay of the lower dirs only
    let ro_target = dir.path().join("rootfs-ro");
    let guard = mount(
        &snapshots,
        &chain,
        &dir.path().join("containers/c2"),
        &ro_target,
        true,
    );
    assert_rootfs_matches(&ro_target, &whiteout_expected());
    let err = fs::write(ro_target.join("data/new.txt"), "x").expect_err("read-only");
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    drop(guard);

    // read-only with a single layer: a read-only bind mount
    let guard = mount(
        &snapshots,
        &chain[..1],
        &dir.path().join("containers/c3"),
        &ro_target,
        true,
    );
    assert!(ro_target.join("bin/busybox").is_file());
    assert!(!ro_target.join("data").exists());
    let err = fs::write(ro_target.join("new.txt"), "x").expect_err("read-only");
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    drop(guard);
    assert!(!is_mounted(&ro_target));

    // a missing snapshot is named
    let missing = format!("sha256:{}", "0".repeat(64));
    match mount_rootfs(
        &snapshots,
        std::slice::from_ref(&missing),
        &container,
        &target,
        false,
    ) {
        Err(SnapshotError::NotFound(id)) => assert_eq!(id, missing),
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert!(!is_mounted(&target));

    let (bytes, inodes) = snapshots.usage().expect("usage");
    assert!(bytes > fs::metadata(BUSYBOX_PATH).unwrap().len(), "{bytes}");
    assert!(inodes > busybox_applets().len() as u64, "{inodes}");
    for chain_id in &chain {
        snapshots.remove(chain_id).expect("remove");
        snapshots.remove(chain_id).expect("remove twice");
        assert!(!snapshots.exists(chain_id));
    }
    assert!(snapshots.list().expect("list").is_empty());
}

#[test]
fn a_hundred_layers() {
    require_root();
    let dir = tempdir();
    let snapshots = Snapshotter::open(&dir.path().join("snapshots")).expect("open");
    let mut diff_ids = Vec::new();
    let mut pendings = Vec::new();
    for i in 0..100 {
        let tar = LayerBuilder::new()
            .dir("layers")
            .file(&format!("layers/{i:03}.txt"), i.to_string())
            .file("common.txt", format!("layer {i}"))
            .tar();
        let pending = snapshots.prepare().expect("prepare");
        let stats = apply_bytes(&tar, Compression::None, pending.path()).expect("apply");
        diff_ids.push(stats.diff_id);
        pendings.push(pending);
    }
    let chain = Snapshotter::chain_ids(&diff_ids);
    for (pending, chain_id) in pendings.into_iter().zip(&chain) {
        snapshots.commit(pending, chain_id).expect("commit");
    }
    let option_bytes: usize = chain
        .iter()
        .map(|c| snapshots.layer_dir(c).as_os_str().len() + 1)
        .sum();
    assert!(option_bytes > 4096, "lowerdirs should not fit in a page");

    let container = dir.path().join("container");
    let target = dir.path().join("rootfs");
    let guard = mount(&snapshots, &chain, &container, &target, false);
    assert_eq!(
        fs::read_to_string(target.join("common.txt")).expect("common"),
        "layer 99",
        "the top layer wins"
    );
    for i in 0..100 {
        assert_eq!(
            fs::read_to_string(target.join(format!("layers/{i:03}.txt"))).expect("layer file"),
            i.to_string()
        );
    }
    fs::write(target.join("common.txt"), "container").expect("write");
    assert_eq!(
        fs::read_to_string(container.join("upper/common.txt")).unwrap(),
        "container"
    );
    drop(guard);

    let ro_target = dir.path().join("rootfs-ro");
    let guard = mount(&snapshots, &chain, &dir.path().join("c2"), &ro_target, true);
    assert_eq!(
        fs::read_to_string(ro_target.join("common.txt")).unwrap(),
        "layer 99"
    );
    drop(guard);
    assert!(!is_mounted(&target) && !is_mounted(&ro_target));
}

// ---------------------------------------------------------------------------
// malicious layers

/// A layer destination inside a directory with sentinels:
/// ```text
/// <tmp>/outer/sentinel.txt, victim, outside-file, sentinel-dir/inner.txt
/// <tmp>/outer/dest/          the layer's destination
/// ```
struct Sandbox {
    dir: TempDir,
    outer: PathBuf,
    dest: PathBuf,
}

impl Sandbox {
    fn new() -> Sandbox {
        let dir = tempdir();
        let outer = dir.path().join("outer");
        let dest = outer.join("dest");
        fs::create_dir_all(&dest).expect("dest");
        fs::write(outer.join("sentinel.txt"), "sentinel").expect("sentinel");
        fs::write(outer.join("victim"), "victim").expect("victim");
        fs::write(outer.join("outside-file"), "outside").expect("outside-file");
        fs::create_dir(outer.join("sentinel-dir")).expect("sentinel-dir");
        fs::write(outer.join("sentinel-dir/inner.txt"), "inner").expect("inner");
        Sandbox { dir, outer, dest }
    }

    /// `outer` as a path inside `dest` (where a symlink to it resolves to).
    fn outer_in_dest(&self) -> PathBuf {
        self.dest
            .join(self.outer.strip_prefix("/").expect("absolute temp dir"))
    }

    /// Applies `layer` and asserts that nothing outside `dest` changed, and that none
    /// of `host_paths` appeared.
    fn apply(
        &self,
        layer: &LayerBuilder,
        host_paths: &[PathBuf],
    ) -> Result<UnpackStats, UnpackError> {
        for path in host_paths {
            assert!(
                fs::symlink_metadata(path).is_err(),
                "{} exists before the test",
                path.display()
            );
        }
        let before = listing(self.dir.path(), Some(&self.dest));
        assert!(before.len() >= 6);
        let result = apply_blob(&layer.build(), &self.dest);
        let after = listing(self.dir.path(), Some(&self.dest));
        assert_eq!(
            before, after,
            "something outside the layer destination changed"
        );
        for path in host_paths {
            assert!(
                fs::symlink_metadata(path).is_err(),
                "{} was created outside the layer destination",
                path.display()
            );
        }
        result
    }
}

fn assert_rejected(result: Result<UnpackStats, UnpackError>, entry: &str) -> String {
    let err = result.expect_err("the layer must be rejected");
    let message = err.to_string();
    // Errors echo at most 256 bytes of an entry path, then say how long it was.
    let named = if entry.len() > 256 {
        message.contains(&entry[..256]) && message.contains(&format!("… ({} bytes)", entry.len()))
    } else {
        message.contains(&format!("{entry:?}"))
    };
    assert!(named, "error {message:?} does not name the entry {entry:?}");
    message
}

fn file_entry(layer: LayerBuilder, path: &str) -> LayerBuilder {
    layer.raw(path.as_bytes(), EntryType::Regular, b"", b"pwned", 0o644)
}

#[test]
fn dotdot_paths_are_rejected() {
    require_root();
    for path in ["../escape", "a/../../escape", "./../escape", "/../escape"] {
        let sb = Sandbox::new();
        let host = vec![sb.outer.join("escape"), sb.dir.path().join("escape")];
        let layer = file_entry(LayerBuilder::new().dir("a"), path);
        let message = assert_rejected(sb.apply(&layer, &host), path);
        assert!(message.contains(".."), "{message}");
    }
    // through a GNU long name (> 100 bytes)
    let sb = Sandbox::new();
    let long = format!("{}{}escape", "a/".repeat(60), "../".repeat(62));
    let layer = file_entry(LayerBuilder::new(), &long);
    assert_rejected(sb.apply(&layer, &[sb.dir.path().join("escape")]), &long);
    // device nodes and fifos too
    let sb = Sandbox::new();
    let layer = LayerBuilder::new().char_device("../dev-escape", 1, 3, 0o666);
    assert_rejected(
        sb.apply(&layer, &[sb.outer.join("dev-escape")]),
        "../dev-escape",
    );
}

#[test]
fn absolute_paths_stay_inside() {
    require_root();
    let sb = Sandbox::new();
    let name = unique("escape-abs");
    let path = format!("/{name}");
    let layer =
        file_entry(LayerBuilder::new(), &path).symlink(&format!("/{name}-link"), "/etc/passwd");
    sb.apply(
        &layer,
        &[PathBuf::from(&path), PathBuf::from(format!("{path}-link"))],
    )
    .expect("absolute paths are taken relative to the layer root");
    assert_eq!(fs::read_to_string(sb.dest.join(&name)).unwrap(), "pwned");
    assert_eq!(
        fs::read_link(sb.dest.join(format!("{name}-link"))).unwrap(),
        Path::new("/etc/passwd")
    );
}

#[test]
fn symlinked_parents_resolve_inside() {
    require_root();
    // evil -> /, then evil/tmp/<name>: lands in dest/tmp/<name>
    let sb = Sandbox::new();
    let name = unique("escape-tmp");
    let layer = file_entry(
        LayerBuilder::new().symlink("evil", "/"),
        &format!("evil/tmp/{name}"),
    );
    sb.apply(&layer, &[Path::new("/tmp").join(&name)])
        .expect("resolved inside the layer");
    assert_eq!(
        fs::read_to_string(sb.dest.join("tmp").join(&name)).unwrap(),
        "pwned"
    );
    assert_eq!(fs::read_link(sb.dest.join("evil")).unwrap(), Path::new("/"));

    // evil -> ../../.., then evil/<name>: `..` stops at the layer root
    let sb = Sandbox::new();
    let name = unique("escape-rel");
    let host = vec![
        sb.outer.join(&name),
        sb.dir.path().join(&name),
        sb.dir.path().parent().unwrap().join(&name),
        Path::new("/").join(&name),
    ];
    let layer = file_entry(
        LayerBuilder::new().symlink("evil", "../../.."),
        &format!("evil/{name}"),
    );
    sb.apply(&layer, &host).expect("resolved inside the layer");
    assert_eq!(fs::read_to_string(sb.dest.join(&name)).unwrap(), "pwned");

    // a chain of symlinks, absolute and relative, to the sandbox's own directory
    let sb = Sandbox::new();
    let outer = sb.outer.to_string_lossy().into_owned();
    let layer = LayerBuilder::new()
        .symlink("hop1", &outer)
        .dir("x")
        .symlink("x/hop2", "../hop1/sentinel-dir");
    let layer = file_entry(layer, "x/hop2/inner.txt");
    sb.apply(&layer, &[]).expect("resolved inside the layer");
    assert_eq!(
        fs::read_to_string(sb.outer_in_dest().join("sentinel-dir/inner.txt")).unwrap(),
        "pwned"
    );

    // a fifo and a device through a symlink to outside
    let sb = Sandbox::new();
    let outer = sb.outer.to_string_lossy().into_owned();
    let layer = LayerBuilder::new()
        .symlink("evil", &outer)
        .fifo("evil/fifo", 0o600)
        .char_device("evil/null", 1, 3, 0o666);
    sb.apply(&layer, &[sb.outer.join("fifo"), sb.outer.join("null")])
        .expect("resolved inside the layer");
    assert!(fs::symlink_metadata(sb.outer_in_dest().join("fifo"))
        .unwrap()
        .file_type()
        .is_fifo());

    // a symlink loop is an error
    let sb = Sandbox::new();
    let layer = file_entry(
        LayerBuilder::new().symlink("a", "b").symlink("b", "a"),
        "a/x",
    );
    assert_rejected(sb.apply(&layer, &[]), "a/x");
}

#[test]
fn entries_never_write_through_a_final_symlink() {
    require_root();
    let sb = Sandbox::new();
    let outer = sb.outer.to_string_lossy().into_owned();
    let layer = LayerBuilder::new()
        // a file replacing a symlink to a host file
        .symlink("evil-file", &format!("{outer}/victim"))
        .file_with("evil-file", "pwned", 0o4777, 0, 0)
        // a directory replacing a symlink to a host directory
        .symlink("evil-dir", &format!("{outer}/sentinel-dir"))
        .dir_with("evil-dir", 0o777, 1, 1)
        // a hard link to a symlink to a host file: the symlink is linked, not its target
        .symlink("evil-link", &format!("{outer}/victim"))
        .hardlink("hard", "evil-link")
        // device and fifo over symlinks to host files
        .symlink("evil-fifo", &format!("{outer}/sentinel.txt"))
        .fifo("evil-fifo", 0o666)
        .symlink("evil-whiteout", &format!("{outer}/victim"))
        .whiteout("evil-whiteout");
    sb.apply(&layer, &[]).expect("applied inside the layer");
    assert_eq!(
        fs::read_to_string(sb.dest.join("evil-file")).unwrap(),
        "pwned"
    );
    assert!(sb.dest.join("evil-dir").is_dir());
    assert!(fs::symlink_metadata(sb.dest.join("hard"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(fs::symlink_metadata(sb.dest.join("evil-fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    // the symlink written by this layer is kept (a whiteout hides lower layers only)
    assert!(fs::symlink_metadata(sb.dest.join("evil-whiteout"))
        .unwrap()
        .file_type()
        .is_symlink());
}

#[test]
fn hard_links_cannot_reach_outside() {
    require_root();
    // ../outside-file
    let sb = Sandbox::new();
    let layer = LayerBuilder::new().hardlink("link", "../outside-file");
    let message = assert_rejected(sb.apply(&layer, &[]), "link");
    assert!(message.contains("../outside-file"), "{message}");
    assert_eq!(
        fs::metadata(sb.outer.join("outside-file")).unwrap().nlink(),
        1
    );

    // through a symlinked directory to the sandbox
    let sb = Sandbox::new();
    let outer = sb.outer.to_string_lossy().into_owned();
    let layer = LayerBuilder::new()
        .symlink("evil", &outer)
        .hardlink("link", "evil/outside-file");
    let message = assert_rejected(sb.apply(&layer, &[]), "link");
    assert!(message.contains("does not exist in the layer"), "{message}");
    assert_eq!(
        fs::metadata(sb.outer.join("outside-file")).unwrap().nlink(),
        1
    );

    // through a symlinked directory to a host file
    let sb = Sandbox::new();
    let passwd_links = fs::metadata("/etc/passwd").unwrap().nlink();
    let layer = LayerBuilder::new()
        .symlink("etc-link", "/etc")
        .hardlink("passwd", "etc-link/passwd");
    assert_rejected(sb.apply(&layer, &[]), "passwd");
    assert_eq!(fs::metadata("/etc/passwd").unwrap().nlink(), passwd_links);

    // an absolute target is inside the layer
    let sb = Sandbox::new();
    let layer = LayerBuilder::new()
        .dir("etc")
        .file("etc/passwd", "layer passwd")
        .hardlink("passwd-link", "/etc/passwd");
    sb.apply(&layer, &[]).expect("a link inside the layer");
    assert_eq!(
        fs::read_to_string(sb.dest.join("passwd-link")).unwrap(),
        "layer passwd"
    );
    assert_eq!(fs::metadata("/etc/passwd").unwrap().nlink(), passwd_links);
}

#[test]
fn whiteouts_cannot_reach_outside() {
    require_root();
    // ../.wh.victim
    let sb = Sandbox::new();
    let layer = file_entry(LayerBuilder::new(), "../.wh.victim");
    assert_rejected(sb.apply(&layer, &[]), "../.wh.victim");
    assert_eq!(
        fs::read_to_string(sb.outer.join("victim")).unwrap(),
        "victim"
    );

    // a whiteout under a symlink to the sandbox: a whiteout inside the layer
    let sb = Sandbox::new();
    let outer = sb.outer.to_string_lossy().into_owned();
    let layer = LayerBuilder::new()
        .symlink("evil", &outer)
        .whiteout("evil/victim");
    sb.apply(&layer, &[]).expect("applied inside the layer");
    assert!(is_whiteout(&sb.outer_in_dest().join("victim")));
    assert_eq!(
        fs::read_to_string(sb.outer.join("victim")).unwrap(),
        "victim"
    );

    // an opaque marker under a symlink to a host directory
    let sb = Sandbox::new();
    let outer = sb.outer.to_string_lossy().into_owned();
    let layer = LayerBuilder::new()
        .symlink("evil", &format!("{outer}/sentinel-dir"))
        .opaque("evil");
    sb.apply(&layer, &[]).expect("applied inside the layer");
    assert_eq!(
        lgetxattr(&sb.outer.join("sentinel-dir"), "trusted.overlay.opaque"),
        None
    );
    assert_eq!(
        lgetxattr(
            &sb.outer_in_dest().join("sentinel-dir"),
            "trusted.overlay.opaque"
        )
        .as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(
        fs::read_to_string(sb.outer.join("sentinel-dir/inner.txt")).unwrap(),
        "inner"
    );

    // whiteouts of `.` and `..`
    for path in [".wh..", ".wh..."] {
        let sb = Sandbox::new();
        let layer = file_entry(LayerBuilder::new(), path);
        assert_rejected(sb.apply(&layer, &[]), path);
    }
}

// ---------------------------------------------------------------------------
// limits

/// `len` zero bytes, zstd-compressed: a valid empty tar followed by zero padding, which
/// the unpacker reads to EOF (the diff_id covers it).
fn zstd_zeros(len: u64) -> Vec<u8> {
    let mut blob = Vec::new();
    let mut encoder = zstd::stream::write::Encoder::new(&mut blob, 3).expect("zstd encoder");
    io::copy(&mut io::repeat(0).take(len), &mut encoder).expect("compress");
    encoder.finish().expect("finish zstd");
    blob
}

#[test]
fn a_decompression_bomb_is_refused_at_the_limit() {
    let tmp = tempdir();
    // 1 GiB of zeros in a few dozen KiB
    let bomb = zstd_zeros(1 << 30);
    assert!(bomb.len() < 1 << 20, "{}", bomb.len());
    let limits = Limits {
        max_bytes: 64 << 20,
        ..Limits::unlimited()
    };
    let started = std::time::Instant::now();
    let err = apply_layer_limited(
        &bomb[..],
        Compression::Zstd,
        &new_dest(tmp.path(), "bomb"),
        limits.clone(),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            UnpackError::Limit {
                key: "registry.max_unpacked_bytes_per_layer",
                limit: 67108864,
                ..
            }
        ),
        "{err}"
    );
    assert!(err
        .to_string()
        .contains("registry.max_unpacked_bytes_per_layer"));
    eprintln!("refused after {:?}", started.elapsed());
    // what fits passes
    apply_layer_limited(
        &zstd_zeros(32 << 20)[..],
        Compression::Zstd,
        &new_dest(tmp.path(), "fits"),
        limits,
    )
    .expect("32 MiB within a 64 MiB limit");
}

#[test]
fn layers_of_one_image_share_the_image_limit() {
    let tmp = tempdir();
    let image = Limits {
        max_image_bytes: 100 << 20,
        ..Limits::unlimited()
    };
    let layer = zstd_zeros(60 << 20);
    apply_layer_limited(
        &layer[..],
        Compression::Zstd,
        &new_dest(tmp.path(), "one"),
        image.clone(),
    )
    .expect("first layer");
    let err = apply_layer_limited(
        &layer[..],
        Compression::Zstd,
        &new_dest(tmp.path(), "two"),
        image,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            UnpackError::Limit {
                key: "registry.max_unpacked_bytes_per_image",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn entries_past_the_limit_are_refused_and_paths_in_errors_are_bounded() {
    let tmp = tempdir();
    let layer = (0..11).fold(LayerBuilder::new(), |l, i| l.file(&format!("f{i}"), "x"));
    let err = apply_layer_limited(
        &layer.tar()[..],
        Compression::None,
        &new_dest(tmp.path(), "many"),
        Limits {
            max_entries: 10,
            ..Limits::unlimited()
        },
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            UnpackError::Limit {
                key: "registry.max_entries_per_layer",
                limit: 10,
                ..
            }
        ),
        "{err}"
    );
    // a 1 MiB entry path: the error names it, cut to 256 bytes
    let long = "y".repeat(1 << 20);
    let err = apply_layer(
        &LayerBuilder::new().file(&long, "x").tar()[..],
        Compression::None,
        &new_dest(tmp.path(), "long"),
    )
    .unwrap_err()
    .to_string();
    assert!(err.len() < 512, "{} bytes", err.len());
    assert!(
        err.contains(&format!("{}… (1048576 bytes)", "y".repeat(256))),
        "{err}"
    );
}

/// A GNU sparse entry of `real_size` bytes holding 512 bytes of data at its end.
fn sparse_layer(real_size: u64) -> Vec<u8> {
    let mut header = tar::Header::new_gnu();
    header.set_path("sparse").expect("path");
    header.set_entry_type(EntryType::GNUSparse);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(FIXED_MTIME);
    header.set_size(512);
    {
        let gnu = header.as_gnu_mut().expect("a GNU header");
        gnu.set_real_size(real_size);
        gnu.sparse[0].set_offset(real_size - 512);
        gnu.sparse[0].set_length(512);
    }
    header.set_cksum();
    let mut builder = tar::Builder::new(Vec::new());
    builder
        .append(&header, &[7u8; 512][..])
        .expect("append sparse entry");
    builder.into_inner().expect("tar")
}

#[test]
fn sparse_entries_count_their_full_size() {
    let tmp = tempdir();
    let limits = Limits {
        max_bytes: 1 << 20,
        ..Limits::unlimited()
    };
    // 512 KiB, nearly all hole: fits, and is written out in full (no sparse files)
    let dest = new_dest(tmp.path(), "small");
    apply_layer_limited(
        &sparse_layer(512 << 10)[..],
        Compression::None,
        &dest,
        limits.clone(),
    )
    .expect("a 512 KiB sparse file within 1 MiB");
    assert_eq!(fs::metadata(dest.join("sparse")).unwrap().len(), 512 << 10);
    // 64 MiB of hole in a 2 KiB tar: refused at the limit (were the holes not counted,
    // it would be written out and pass)
    let err = apply_layer_limited(
        &sparse_layer(64 << 20)[..],
        Compression::None,
        &new_dest(tmp.path(), "huge"),
        limits,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            UnpackError::Limit {
                key: "registry.max_unpacked_bytes_per_layer",
                ..
            }
        ),
        "{err}"
    );
}
