//! OCI test images built from Debian's static busybox.
//!
//! Every image is written as a proper OCI image layout in its own temp dir
//! (`oci-layout`, `index.json`, `blobs/sha256/<hex>`), with gzip-compressed
//! layers, an OCI image config whose `rootfs.diff_ids` are the sha256 of the
//! *uncompressed* layer tars, and an OCI image manifest.
//!
//! Builds are reproducible: tar headers use a fixed mtime, gzip headers carry
//! no timestamp, and JSON documents are serialized with sorted keys, so the
//! same inputs always give the same digests.
//!
//! Entry points:
//! - [`busybox_image`], [`whiteout_image`], [`config_image`]: ready-made images;
//! - [`ImageBuilder`] + [`LayerBuilder`]: craft any other image (many layers,
//!   odd or malicious tar entries, broken configs via `edit_config_json`);
//! - [`image_index`] / [`image_index_for`]: OCI image indexes for
//!   multi-platform tests (push with `Registry::push_index`);
//! - [`whiteout_expected`] + [`assert_rootfs_matches`]: what a correctly
//!   unpacked `whiteout_image()` rootfs looks like;
//! - [`extract_rootfs_reference`]: a small reference unpacker (applies
//!   whiteouts) to compare the runtime's unpacker against.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use oci_spec::image::{
    Config, ConfigBuilder, Descriptor, DescriptorBuilder, HistoryBuilder,
    ImageConfigurationBuilder, ImageIndexBuilder, ImageManifestBuilder, MediaType, Platform,
    PlatformBuilder, RootFsBuilder,
};
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use tempfile::TempDir;

/// `application/vnd.oci.image.manifest.v1+json`
pub const MEDIA_TYPE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// `application/vnd.oci.image.index.v1+json`
pub const MEDIA_TYPE_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// `application/vnd.oci.image.config.v1+json`
pub const MEDIA_TYPE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// `application/vnd.oci.image.layer.v1.tar+gzip`
pub const MEDIA_TYPE_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// `application/vnd.oci.image.layer.v1.tar`
pub const MEDIA_TYPE_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// Docker schema 2 manifest.
pub const DOCKER_MEDIA_TYPE_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_MEDIA_TYPE_MANIFEST_LIST: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image config.
pub const DOCKER_MEDIA_TYPE_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker gzip layer.
pub const DOCKER_MEDIA_TYPE_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Docker uncompressed layer.
pub const DOCKER_MEDIA_TYPE_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";

/// Default PATH of every fixture image.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Fixed mtime (2023-11-14T22:13:20Z) of every tar entry, for reproducible digests.
pub const FIXED_MTIME: u64 = 1_700_000_000;
/// Fixed `created` timestamp of every image config.
pub const FIXED_CREATED: &str = "2023-11-14T22:13:20Z";
/// The busybox binary put into the base layer.
pub const BUSYBOX_PATH: &str = "/bin/busybox";

/// The non-root user present in the base layer's /etc/passwd.
pub const WHARF_USER: &str = "wharf";
pub const WHARF_UID: u32 = 1000;
pub const WHARF_GID: u32 = 1000;
/// A supplementary group of `wharf` in the base layer's /etc/group.
pub const STAFF_GID: u32 = 50;

/// /etc/passwd of the base layer.
pub const ETC_PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
wharf:x:1000:1000:wharf:/home/wharf:/bin/sh\n\
nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
/// /etc/group of the base layer.
pub const ETC_GROUP: &str = "root:x:0:\n\
staff:x:50:wharf\n\
wharf:x:1000:\n\
nogroup:x:65534:\n";

/// Label set by [`config_image`].
pub const CONFIG_IMAGE_LABEL: (&str, &str) = ("org.wharf.test.fixture", "config-image");
/// Greeting env var set by [`config_image`].
pub const CONFIG_IMAGE_GREETING: &str = "GREETING=hello from wharf";

// ---------------------------------------------------------------------------
// small helpers

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The hex part of a `sha256:<hex>` digest (panics on other algorithms).
pub fn digest_hex(digest: &str) -> &str {
    let hex = digest
        .strip_prefix("sha256:")
        .unwrap_or_else(|| panic!("not a sha256 digest: {digest:?}"));
    assert!(
        hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
        "malformed sha256 digest: {digest:?}"
    );
    hex
}

/// This machine's OCI architecture name (GOARCH spelling).
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => panic!("unsupported host architecture {other}"),
    }
}

/// This machine's OCI OS name.
pub fn host_os() -> &'static str {
    "linux"
}

/// gzip-compress deterministically (no mtime or file name in the header).
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(
        Vec::with_capacity(data.len() / 2),
        flate2::Compression::fast(),
    );
    enc.write_all(data).expect("gzip write");
    enc.finish().expect("gzip finish")
}

/// Decompress a gzip stream.
pub fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() * 2);
    GzDecoder::new(data)
        .read_to_end(&mut out)
        .expect("gunzip: invalid gzip stream");
    out
}

/// Serialize with object keys sorted at every level, compact. HashMaps inside
/// oci-spec types (labels, exposed ports, annotations) would otherwise make
/// digests differ from build to build.
pub fn canonical_json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    let value = serde_json::to_value(value).expect("serialize to JSON value");
    serde_json::to_vec(&sort_keys(value)).expect("serialize JSON")
}

fn sort_keys(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let sorted: BTreeMap<String, Value> =
                map.into_iter().map(|(k, v)| (k, sort_keys(v))).collect();
            Value::Object(sorted.into_iter().collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sort_keys).collect()),
        other => other,
    }
}

/// Path to the static busybox, panicking with an install hint when absent.
pub fn busybox_path() -> &'static Path {
    super::require_installed(BUSYBOX_PATH, "busybox-static")
}

/// Applet paths from `busybox --list-full` (relative, sorted, without
/// `bin/busybox` itself and without top-level entries such as `linuxrc`).
pub fn busybox_applets() -> Vec<String> {
    let out = std::process::Command::new(busybox_path())
        .arg("--list-full")
        .output()
        .expect("run busybox --list-full");
    assert!(
        out.status.success(),
        "busybox --list-full failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut applets: Vec<String> = String::from_utf8(out.stdout)
        .expect("busybox applet list is not UTF-8")
        .lines()
        .map(|l| l.trim().trim_start_matches('/').to_string())
        .filter(|l| !l.is_empty() && l.contains('/') && l != "bin/busybox")
        .collect();
    applets.sort();
    applets.dedup();
    applets
}

// ---------------------------------------------------------------------------
// layers

#[derive(Clone, Debug)]
enum EntryKind {
    Dir,
    File(Vec<u8>),
    Symlink(Vec<u8>),
    Hardlink(Vec<u8>),
    Fifo,
    CharDevice(u32, u32),
    BlockDevice(u32, u32),
    /// Anything: the caller picks the entry type, link name and data.
    Raw(tar::EntryType, Vec<u8>, Vec<u8>),
}

#[derive(Clone, Debug)]
struct TarEntry {
    /// Raw path bytes as written into the archive (never sanitized).
    path: Vec<u8>,
    kind: EntryKind,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
}

/// Builds one layer tar. Entries are written in the order they are added;
/// parent directories are *not* added implicitly (add them yourself, like a
/// real image builder would). Paths are written byte-for-byte (no
/// sanitizing), so `raw`/`file` with `../x` or `/abs` paths produce malicious
/// archives on purpose. Paths longer than 100 bytes use GNU long-name entries.
#[derive(Clone, Debug, Default)]
pub struct LayerBuilder {
    entries: Vec<TarEntry>,
}

impl LayerBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    fn push(mut self, path: &str, kind: EntryKind, mode: u32, uid: u64, gid: u64) -> Self {
        self.entries.push(TarEntry {
            path: path.as_bytes().to_vec(),
            kind,
            mode,
            uid,
            gid,
            mtime: FIXED_MTIME,
        });
        self
    }

    /// Directory, mode 0755, root-owned. A trailing `/` is added to the name.
    pub fn dir(self, path: &str) -> Self {
        self.dir_with(path, 0o755, 0, 0)
    }

    pub fn dir_with(self, path: &str, mode: u32, uid: u64, gid: u64) -> Self {
        let name = format!("{}/", path.trim_end_matches('/'));
        self.push(&name, EntryKind::Dir, mode, uid, gid)
    }

    /// Regular file, mode 0644, root-owned.
    pub fn file(self, path: &str, content: impl Into<Vec<u8>>) -> Self {
        self.file_with(path, content, 0o644, 0, 0)
    }

    /// Regular file, mode 0755, root-owned.
    pub fn executable(self, path: &str, content: impl Into<Vec<u8>>) -> Self {
        self.file_with(path, content, 0o755, 0, 0)
    }

    pub fn file_with(
        self,
        path: &str,
        content: impl Into<Vec<u8>>,
        mode: u32,
        uid: u64,
        gid: u64,
    ) -> Self {
        self.push(path, EntryKind::File(content.into()), mode, uid, gid)
    }

    /// Symlink `path` -> `target` (mode 0777, root-owned).
    pub fn symlink(self, path: &str, target: &str) -> Self {
        let kind = EntryKind::Symlink(target.as_bytes().to_vec());
        self.push(path, kind, 0o777, 0, 0)
    }

    /// Hard link `path` -> `target` (target is an archive path, e.g. `bin/busybox`).
    pub fn hardlink(self, path: &str, target: &str) -> Self {
        let kind = EntryKind::Hardlink(target.as_bytes().to_vec());
        self.push(path, kind, 0o644, 0, 0)
    }

    pub fn fifo(self, path: &str, mode: u32) -> Self {
        self.push(path, EntryKind::Fifo, mode, 0, 0)
    }

    pub fn char_device(self, path: &str, major: u32, minor: u32, mode: u32) -> Self {
        self.push(path, EntryKind::CharDevice(major, minor), mode, 0, 0)
    }

    pub fn block_device(self, path: &str, major: u32, minor: u32, mode: u32) -> Self {
        self.push(path, EntryKind::BlockDevice(major, minor), mode, 0, 0)
    }

    /// Whiteout for `path`: `dir/name` becomes `dir/.wh.name`.
    pub fn whiteout(self, path: &str) -> Self {
        let path = path.trim_end_matches('/');
        let wh = match path.rsplit_once('/') {
            Some((dir, name)) => format!("{dir}/.wh.{name}"),
            None => format!(".wh.{path}"),
        };
        self.file(&wh, Vec::new())
    }

    /// Opaque-directory marker: `dir/.wh..wh..opq`.
    pub fn opaque(self, dir: &str) -> Self {
        let marker = format!("{}/.wh..wh..opq", dir.trim_end_matches('/'));
        self.file(&marker, Vec::new())
    }

    /// Any entry, bytes exactly as given: for crafting hostile archives
    /// (`../../etc/x`, absolute paths, symlinks escaping the rootfs, odd types).
    pub fn raw(
        mut self,
        path: &[u8],
        entry_type: tar::EntryType,
        link_name: &[u8],
        data: &[u8],
        mode: u32,
    ) -> Self {
        self.entries.push(TarEntry {
            path: path.to_vec(),
            kind: EntryKind::Raw(entry_type, link_name.to_vec(), data.to_vec()),
            mode,
            uid: 0,
            gid: 0,
            mtime: FIXED_MTIME,
        });
        self
    }

    /// Change uid/gid of the entry added last.
    pub fn owned_by(mut self, uid: u64, gid: u64) -> Self {
        let last = self.entries.last_mut().expect("owned_by: no entry yet");
        last.uid = uid;
        last.gid = gid;
        self
    }

    /// Change the mtime of the entry added last.
    pub fn mtime(mut self, mtime: u64) -> Self {
        let last = self.entries.last_mut().expect("mtime: no entry yet");
        last.mtime = mtime;
        self
    }

    /// The uncompressed tar.
    pub fn tar(&self) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for entry in &self.entries {
            append_entry(&mut builder, entry);
        }
        builder.into_inner().expect("finish tar")
    }

    /// Tar + gzip, as a layer blob.
    pub fn build(&self) -> LayerBlob {
        LayerBlob::gzip(self.tar())
    }

    /// Uncompressed layer blob (`...layer.v1.tar` media type).
    pub fn build_uncompressed(&self) -> LayerBlob {
        LayerBlob::uncompressed(self.tar())
    }
}

fn set_name_field(field: &mut [u8; 100], bytes: &[u8]) {
    field.fill(0);
    let n = bytes.len().min(100);
    field[..n].copy_from_slice(&bytes[..n]);
}

fn append_long_name(builder: &mut tar::Builder<Vec<u8>>, ty: tar::EntryType, bytes: &[u8]) {
    let mut data = bytes.to_vec();
    data.push(0);
    let mut header = tar::Header::new_gnu();
    set_name_field(&mut header.as_old_mut().name, b"././@LongLink");
    header.set_entry_type(ty);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_size(data.len() as u64);
    header.set_cksum();
    builder
        .append(&header, data.as_slice())
        .expect("append GNU long name");
}

fn append_entry(builder: &mut tar::Builder<Vec<u8>>, entry: &TarEntry) {
    let mut header = tar::Header::new_gnu();
    let (ty, link, data): (tar::EntryType, &[u8], &[u8]) = match &entry.kind {
        EntryKind::Dir => (tar::EntryType::Directory, b"", b""),
        EntryKind::File(content) => (tar::EntryType::Regular, b"", content),
        EntryKind::Symlink(target) => (tar::EntryType::Symlink, target, b""),
        EntryKind::Hardlink(target) => (tar::EntryType::Link, target, b""),
        EntryKind::Fifo => (tar::EntryType::Fifo, b"", b""),
        EntryKind::CharDevice(..) => (tar::EntryType::Char, b"", b""),
        EntryKind::BlockDevice(..) => (tar::EntryType::Block, b"", b""),
        EntryKind::Raw(ty, link, data) => (*ty, link, data),
    };
    if entry.path.len() > 100 {
        append_long_name(builder, tar::EntryType::GNULongName, &entry.path);
    }
    if link.len() > 100 {
        append_long_name(builder, tar::EntryType::GNULongLink, link);
    }
    header.set_entry_type(ty);
    set_name_field(&mut header.as_old_mut().name, &entry.path);
    set_name_field(&mut header.as_old_mut().linkname, link);
    header.set_mode(entry.mode);
    header.set_uid(entry.uid);
    header.set_gid(entry.gid);
    header.set_mtime(entry.mtime);
    header.set_size(data.len() as u64);
    if let EntryKind::CharDevice(major, minor) | EntryKind::BlockDevice(major, minor) = entry.kind {
        header.set_device_major(major).expect("device major");
        header.set_device_minor(minor).expect("device minor");
    }
    header.set_cksum();
    builder.append(&header, data).expect("append tar entry");
}

/// One layer blob: the bytes stored in the registry plus its diff_id.
#[derive(Clone, Debug)]
pub struct LayerBlob {
    /// Blob bytes as pushed (gzip-compressed unless media type says tar).
    pub blob: Vec<u8>,
    pub media_type: String,
    /// `sha256:` of `blob`.
    pub digest: String,
    /// `sha256:` of the uncompressed tar.
    pub diff_id: String,
    /// Size of the uncompressed tar.
    pub uncompressed_size: u64,
}

impl LayerBlob {
    pub fn gzip(tar: Vec<u8>) -> Self {
        let blob = gzip(&tar);
        Self {
            digest: sha256_digest(&blob),
            diff_id: sha256_digest(&tar),
            uncompressed_size: tar.len() as u64,
            media_type: MEDIA_TYPE_LAYER_GZIP.to_string(),
            blob,
        }
    }

    pub fn uncompressed(tar: Vec<u8>) -> Self {
        let digest = sha256_digest(&tar);
        Self {
            diff_id: digest.clone(),
            digest,
            uncompressed_size: tar.len() as u64,
            media_type: MEDIA_TYPE_LAYER_TAR.to_string(),
            blob: tar,
        }
    }

    /// Arbitrary bytes with an arbitrary media type and diff_id (for
    /// corrupt-layer tests).
    pub fn custom(blob: Vec<u8>, media_type: &str, diff_id: &str) -> Self {
        Self {
            digest: sha256_digest(&blob),
            diff_id: diff_id.to_string(),
            uncompressed_size: 0,
            media_type: media_type.to_string(),
            blob,
        }
    }
}

/// The busybox base rootfs layer (see module docs), built from scratch on
/// every call. Prefer [`base_layer`], which caches it.
pub fn build_base_layer() -> LayerBlob {
    let busybox = std::fs::read(busybox_path()).expect("read busybox");
    let mut layer = LayerBuilder::new()
        .dir("bin")
        .dir("dev")
        .dir("etc")
        .dir("home")
        .dir_with("home/wharf", 0o755, WHARF_UID.into(), WHARF_GID.into())
        .dir_with("proc", 0o555, 0, 0)
        .dir_with("root", 0o700, 0, 0)
        .dir("sbin")
        .dir_with("sys", 0o555, 0, 0)
        .dir_with("tmp", 0o1777, 0, 0)
        .dir("usr")
        .dir("usr/bin")
        .dir("usr/sbin")
        .executable("bin/busybox", busybox)
        .file("etc/passwd", ETC_PASSWD)
        .file("etc/group", ETC_GROUP);
    for applet in busybox_applets() {
        layer = layer.symlink(&applet, "/bin/busybox");
    }
    layer.build()
}

/// The busybox base layer, built once per test binary.
pub fn base_layer() -> &'static LayerBlob {
    static BASE: OnceLock<LayerBlob> = OnceLock::new();
    BASE.get_or_init(build_base_layer)
}

// ---------------------------------------------------------------------------
// images

/// Digest, diff_id, size and media type of one layer of an [`OciImage`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerInfo {
    pub digest: String,
    pub diff_id: String,
    /// Size of the (compressed) blob, as in the manifest descriptor.
    pub size: u64,
    pub media_type: String,
}

/// A built OCI image, stored as an OCI image layout in a temp dir that lives
/// as long as this value.
#[derive(Debug)]
pub struct OciImage {
    dir: TempDir,
    pub manifest: Vec<u8>,
    /// `sha256:<hex>` of `manifest`.
    pub manifest_digest: String,
    pub config: Vec<u8>,
    /// `sha256:<hex>` of `config`.
    pub config_digest: String,
    pub layers: Vec<LayerInfo>,
    /// [`MEDIA_TYPE_MANIFEST`], or [`DOCKER_MEDIA_TYPE_MANIFEST`] for
    /// [`ImageBuilder::docker_schema2`] images: the Content-Type to push with.
    pub manifest_media_type: String,
    pub architecture: String,
    pub os: String,
}

impl OciImage {
    /// Root of the OCI image layout (`oci-layout`, `index.json`, `blobs/`).
    pub fn layout_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.dir
            .path()
            .join("blobs/sha256")
            .join(digest_hex(digest))
    }

    /// Bytes of any blob of this image (manifest, config or layer).
    pub fn read_blob(&self, digest: &str) -> Vec<u8> {
        let path = self.blob_path(digest);
        std::fs::read(&path).unwrap_or_else(|e| panic!("read blob {}: {e}", path.display()))
    }

    /// Config then layers: the blobs a registry push uploads.
    pub fn blob_digests(&self) -> Vec<String> {
        std::iter::once(self.config_digest.clone())
            .chain(self.layers.iter().map(|l| l.digest.clone()))
            .collect()
    }

    pub fn config_json(&self) -> Value {
        serde_json::from_slice(&self.config).expect("config is JSON")
    }

    pub fn manifest_json(&self) -> Value {
        serde_json::from_slice(&self.manifest).expect("manifest is JSON")
    }

    pub fn platform(&self) -> Platform {
        PlatformBuilder::default()
            .architecture(self.architecture.as_str())
            .os(self.os.as_str())
            .build()
            .expect("platform")
    }

    /// Descriptor of the manifest (no platform).
    pub fn manifest_descriptor(&self) -> Descriptor {
        Descriptor::new(
            MediaType::from(self.manifest_media_type.as_str()),
            self.manifest.len() as u64,
            parse_digest(&self.manifest_digest),
        )
    }
}

fn parse_digest(digest: &str) -> oci_spec::image::Digest {
    digest.parse().expect("valid digest")
}

type JsonEdit = Box<dyn FnOnce(&mut Value)>;

/// Builds an [`OciImage`]. Starts with no layers and a config holding only
/// `Env=[PATH=...]`; use [`ImageBuilder::busybox`] to start from the base layer.
pub struct ImageBuilder {
    layers: Vec<(LayerBlob, String)>,
    config: Config,
    architecture: String,
    os: String,
    config_edits: Vec<JsonEdit>,
    manifest_edits: Vec<JsonEdit>,
    annotations: BTreeMap<String, String>,
    docker: bool,
}

impl Default for ImageBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ImageBuilder {
    pub fn new() -> Self {
        Self {
            layers: Vec::new(),
            config: ConfigBuilder::default()
                .env(vec![DEFAULT_PATH.to_string()])
                .build()
                .expect("config"),
            architecture: host_arch().to_string(),
            os: host_os().to_string(),
            config_edits: Vec::new(),
            manifest_edits: Vec::new(),
            annotations: BTreeMap::new(),
            docker: false,
        }
    }

    /// The busybox base layer plus `Cmd ["sh"]`.
    pub fn busybox() -> Self {
        let mut b = Self::new().base_layer();
        b.config.set_cmd(Some(vec!["sh".to_string()]));
        b
    }

    /// Append the (cached) busybox base layer.
    pub fn base_layer(self) -> Self {
        self.layer_blob_described(base_layer().clone(), "busybox base rootfs")
    }

    /// Append a gzip layer built from `layer`.
    pub fn layer(self, layer: LayerBuilder) -> Self {
        let n = self.layers.len() + 1;
        self.layer_blob_described(layer.build(), &format!("layer {n}"))
    }

    /// Append a prebuilt blob (uncompressed, corrupt, custom media type...).
    pub fn layer_blob(self, blob: LayerBlob) -> Self {
        let n = self.layers.len() + 1;
        self.layer_blob_described(blob, &format!("layer {n}"))
    }

    fn layer_blob_described(mut self, blob: LayerBlob, created_by: &str) -> Self {
        self.layers.push((blob, created_by.to_string()));
        self
    }

    /// Replace the runtime config (`User`, `Env`, `Cmd`, ...).
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Edit the runtime config in place.
    pub fn with_config(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(&mut self.config);
        self
    }

    /// Architecture/OS recorded in the config (and index platforms). The
    /// layers still hold this machine's busybox.
    pub fn platform(mut self, architecture: &str, os: &str) -> Self {
        self.architecture = architecture.to_string();
        self.os = os.to_string();
        self
    }

    /// Use Docker schema 2 media types (manifest, config, layers) instead of
    /// OCI ones, like images pushed by `docker push`.
    pub fn docker_schema2(mut self) -> Self {
        self.docker = true;
        self
    }

    /// Manifest annotation.
    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.annotations.insert(key.to_string(), value.to_string());
        self
    }

    /// Edit the serialized config JSON before it is hashed (wrong diff_ids, ...).
    pub fn edit_config_json(mut self, f: impl FnOnce(&mut Value) + 'static) -> Self {
        self.config_edits.push(Box::new(f));
        self
    }

    /// Edit the serialized manifest JSON before it is hashed (wrong sizes, ...).
    pub fn edit_manifest_json(mut self, f: impl FnOnce(&mut Value) + 'static) -> Self {
        self.manifest_edits.push(Box::new(f));
        self
    }

    pub fn build(self) -> OciImage {
        let dir = tempfile::Builder::new()
            .prefix("wharf-oci-image-")
            .tempdir()
            .expect("create image temp dir");
        let blobs = dir.path().join("blobs/sha256");
        std::fs::create_dir_all(&blobs).expect("create blobs dir");
        let write_blob = |digest: &str, bytes: &[u8]| {
            std::fs::write(blobs.join(digest_hex(digest)), bytes).expect("write blob");
        };

        // config
        let history = self
            .layers
            .iter()
            .map(|(_, created_by)| {
                HistoryBuilder::default()
                    .created(FIXED_CREATED)
                    .created_by(created_by.as_str())
                    .build()
                    .expect("history")
            })
            .collect::<Vec<_>>();
        let rootfs = RootFsBuilder::default()
            .typ("layers")
            .diff_ids(
                self.layers
                    .iter()
                    .map(|(l, _)| l.diff_id.clone())
                    .collect::<Vec<_>>(),
            )
            .build()
            .expect("rootfs");
        let config = ImageConfigurationBuilder::default()
            .created(FIXED_CREATED)
            .architecture(self.architecture.as_str())
            .os(self.os.as_str())
            .config(self.config)
            .rootfs(rootfs)
            .history(history)
            .build()
            .expect("image configuration");
        let config_bytes = apply_edits(canonical_json(&config), self.config_edits);
        let config_digest = sha256_digest(&config_bytes);
        write_blob(&config_digest, &config_bytes);

        // layers
        let mut layer_descs = Vec::new();
        let mut layers = Vec::new();
        for (layer, _) in &self.layers {
            write_blob(&layer.digest, &layer.blob);
            let media_type = match layer.media_type.as_str() {
                MEDIA_TYPE_LAYER_GZIP if self.docker => DOCKER_MEDIA_TYPE_LAYER_GZIP,
                MEDIA_TYPE_LAYER_TAR if self.docker => DOCKER_MEDIA_TYPE_LAYER_TAR,
                other => other,
            };
            layer_descs.push(Descriptor::new(
                MediaType::from(media_type),
                layer.blob.len() as u64,
                parse_digest(&layer.digest),
            ));
            layers.push(LayerInfo {
                digest: layer.digest.clone(),
                diff_id: layer.diff_id.clone(),
                size: layer.blob.len() as u64,
                media_type: media_type.to_string(),
            });
        }

        // manifest
        let (manifest_media_type, config_media_type) = if self.docker {
            (DOCKER_MEDIA_TYPE_MANIFEST, DOCKER_MEDIA_TYPE_CONFIG)
        } else {
            (MEDIA_TYPE_MANIFEST, MEDIA_TYPE_CONFIG)
        };
        let mut manifest = ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::from(manifest_media_type))
            .config(Descriptor::new(
                MediaType::from(config_media_type),
                config_bytes.len() as u64,
                parse_digest(&config_digest),
            ))
            .layers(layer_descs)
            .build()
            .expect("manifest");
        if !self.annotations.is_empty() {
            manifest.set_annotations(Some(self.annotations.into_iter().collect()));
        }
        let manifest_bytes = apply_edits(canonical_json(&manifest), self.manifest_edits);
        let manifest_digest = sha256_digest(&manifest_bytes);
        write_blob(&manifest_digest, &manifest_bytes);

        // layout
        std::fs::write(
            dir.path().join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .expect("write oci-layout");
        let image = OciImage {
            dir,
            manifest: manifest_bytes,
            manifest_digest,
            config: config_bytes,
            config_digest,
            layers,
            manifest_media_type: manifest_media_type.to_string(),
            architecture: self.architecture,
            os: self.os,
        };
        let mut desc = image.manifest_descriptor();
        desc.set_platform(Some(image.platform()));
        desc.set_annotations(Some(
            [(
                "org.opencontainers.image.ref.name".to_string(),
                "latest".to_string(),
            )]
            .into_iter()
            .collect(),
        ));
        let index = ImageIndexBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageIndex)
            .manifests(vec![desc])
            .build()
            .expect("layout index");
        std::fs::write(
            image.layout_dir().join("index.json"),
            canonical_json(&index),
        )
        .expect("write index.json");
        image
    }
}

fn apply_edits(bytes: Vec<u8>, edits: Vec<JsonEdit>) -> Vec<u8> {
    if edits.is_empty() {
        return bytes;
    }
    let mut value: Value = serde_json::from_slice(&bytes).expect("own JSON");
    for edit in edits {
        edit(&mut value);
    }
    serde_json::to_vec(&sort_keys(value)).expect("serialize edited JSON")
}

/// An OCI image index (bytes as pushed + digest).
#[derive(Clone, Debug)]
pub struct OciIndex {
    pub bytes: Vec<u8>,
    /// `sha256:<hex>` of `bytes`.
    pub digest: String,
}

/// Index over `images`, each with its own platform (see [`ImageBuilder::platform`]).
pub fn image_index(images: &[&OciImage]) -> OciIndex {
    let entries: Vec<(&OciImage, Platform)> = images.iter().map(|i| (*i, i.platform())).collect();
    image_index_for(&entries)
}

/// Index over `images` with explicitly given platforms.
pub fn image_index_for(images: &[(&OciImage, Platform)]) -> OciIndex {
    let manifests = images
        .iter()
        .map(|(image, platform)| {
            DescriptorBuilder::default()
                .media_type(MediaType::from(image.manifest_media_type.as_str()))
                .size(image.manifest.len() as u64)
                .digest(parse_digest(&image.manifest_digest))
                .platform(platform.clone())
                .build()
                .expect("index descriptor")
        })
        .collect::<Vec<_>>();
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(manifests)
        .build()
        .expect("image index");
    let bytes = canonical_json(&index);
    OciIndex {
        digest: sha256_digest(&bytes),
        bytes,
    }
}

// ---------------------------------------------------------------------------
// ready-made images

/// One layer (the busybox base), `Cmd ["sh"]`, `Env [PATH=...]`.
pub fn busybox_image() -> OciImage {
    ImageBuilder::busybox().build()
}

/// Three layers exercising whiteouts (see [`whiteout_expected`] for the
/// resulting tree):
///
/// 1. the busybox base;
/// 2. adds `/data/keep.txt` ("keep v1"), `/data/gone.txt` ("gone"),
///    `/data/replaced.txt` ("old"), `/data/opaque/old1.txt` ("old1"),
///    `/data/opaque/old2.txt` ("old2"), `/data/gonedir/inner.txt` ("inner");
/// 3. `data/.wh.gone.txt` (delete file), `data/.wh.gonedir` (delete dir),
///    `data/replaced.txt` = "new", `data/opaque/.wh..wh..opq` (hide
///    everything below from lower layers), `data/opaque/new.txt` ("new file").
///
/// Final tree under /data:
/// ```text
/// /data/                  dir
/// /data/keep.txt          "keep v1"
/// /data/replaced.txt      "new"
/// /data/opaque/           dir
/// /data/opaque/new.txt    "new file"
/// ```
/// and no `gone.txt`, `gonedir/`, `opaque/old1.txt`, `opaque/old2.txt`, nor
/// any `.wh.*` entry. File contents have no trailing newline.
pub fn whiteout_image() -> OciImage {
    let layer2 = LayerBuilder::new()
        .dir("data")
        .file("data/keep.txt", "keep v1")
        .file("data/gone.txt", "gone")
        .file("data/replaced.txt", "old")
        .dir("data/opaque")
        .file("data/opaque/old1.txt", "old1")
        .file("data/opaque/old2.txt", "old2")
        .dir("data/gonedir")
        .file("data/gonedir/inner.txt", "inner");
    let layer3 = LayerBuilder::new()
        .dir("data")
        .whiteout("data/gone.txt")
        .whiteout("data/gonedir")
        .file("data/replaced.txt", "new")
        .dir("data/opaque")
        .opaque("data/opaque")
        .file("data/opaque/new.txt", "new file");
    ImageBuilder::busybox().layer(layer2).layer(layer3).build()
}

/// What one path of an unpacked rootfs must look like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// A regular file with exactly this content.
    File(&'static str),
    /// A non-empty regular file, content not compared.
    AnyFile,
    /// A directory.
    Dir,
    /// Nothing at all at this path (not even a dangling symlink).
    Absent,
}

/// Expected state of an unpacked `whiteout_image()` rootfs (paths are
/// relative to the rootfs).
pub fn whiteout_expected() -> Vec<(&'static str, Expect)> {
    vec![
        ("bin/busybox", Expect::AnyFile),
        ("etc/passwd", Expect::File(ETC_PASSWD)),
        ("data", Expect::Dir),
        ("data/keep.txt", Expect::File("keep v1")),
        ("data/replaced.txt", Expect::File("new")),
        ("data/gone.txt", Expect::Absent),
        ("data/.wh.gone.txt", Expect::Absent),
        ("data/gonedir", Expect::Absent),
        ("data/gonedir/inner.txt", Expect::Absent),
        ("data/.wh.gonedir", Expect::Absent),
        ("data/opaque", Expect::Dir),
        ("data/opaque/new.txt", Expect::File("new file")),
        ("data/opaque/old1.txt", Expect::Absent),
        ("data/opaque/old2.txt", Expect::Absent),
        ("data/opaque/.wh..wh..opq", Expect::Absent),
    ]
}

/// The `/data` expectations as `(path, Some(content))` for files that must
/// exist and `(path, None)` for paths that must not exist (directories
/// omitted).
pub fn whiteout_expected_files() -> Vec<(&'static str, Option<&'static str>)> {
    whiteout_expected()
        .into_iter()
        .filter(|(p, _)| p.starts_with("data/"))
        .filter_map(|(p, e)| match e {
            Expect::File(c) => Some((p, Some(c))),
            Expect::Absent => Some((p, None)),
            Expect::Dir | Expect::AnyFile => None,
        })
        .collect()
}

/// Check `root` against `expected`. Panics listing every mismatch.
pub fn assert_rootfs_matches(root: &Path, expected: &[(&str, Expect)]) {
    let mut errors = Vec::new();
    for (path, want) in expected {
        let full = root.join(path);
        let meta = std::fs::symlink_metadata(&full);
        match (want, meta) {
            (Expect::Absent, Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
            (Expect::Absent, Ok(_)) => errors.push(format!("{path}: exists, expected absent")),
            (Expect::Dir, Ok(m)) if m.is_dir() => {}
            (Expect::AnyFile, Ok(m)) if m.is_file() && m.len() > 0 => {}
            (Expect::File(content), Ok(m)) if m.is_file() => {
                let got = std::fs::read(&full).unwrap_or_default();
                if got != content.as_bytes() {
                    errors.push(format!(
                        "{path}: content {:?}, expected {content:?}",
                        String::from_utf8_lossy(&got)
                    ));
                }
            }
            (want, Ok(m)) => {
                errors.push(format!("{path}: is {:?}, expected {want:?}", m.file_type()))
            }
            (want, Err(e)) => errors.push(format!("{path}: {e}, expected {want:?}")),
        }
    }
    assert!(
        errors.is_empty(),
        "rootfs {} does not match:\n  {}",
        root.display(),
        errors.join("\n  ")
    );
}

/// Base layer + config: `User wharf`, `Env [PATH, GREETING=hello from wharf]`,
/// `WorkingDir /home/wharf`, `Entrypoint ["/bin/sh", "-c"]`,
/// `Cmd ["echo $GREETING"]`, label [`CONFIG_IMAGE_LABEL`],
/// `ExposedPorts {"8080/tcp"}`, `StopSignal SIGTERM`.
pub fn config_image() -> OciImage {
    let config = ConfigBuilder::default()
        .user(WHARF_USER)
        .env(vec![
            DEFAULT_PATH.to_string(),
            CONFIG_IMAGE_GREETING.to_string(),
        ])
        .working_dir("/home/wharf")
        .entrypoint(vec!["/bin/sh".to_string(), "-c".to_string()])
        .cmd(vec!["echo $GREETING".to_string()])
        .labels(
            [(
                CONFIG_IMAGE_LABEL.0.to_string(),
                CONFIG_IMAGE_LABEL.1.to_string(),
            )]
            .into_iter()
            .collect::<std::collections::HashMap<_, _>>(),
        )
        .exposed_ports(vec!["8080/tcp".to_string()])
        .stop_signal("SIGTERM")
        .build()
        .expect("config");
    ImageBuilder::new().base_layer().config(config).build()
}

// ---------------------------------------------------------------------------
// reference unpacker

/// Unpack `image`'s layers into `dest` the way an OCI runtime should:
/// whiteouts (`.wh.<name>`) delete lower-layer paths, opaque markers
/// (`.wh..wh..opq`) empty a directory of lower-layer content, later entries
/// replace earlier ones, and no `.wh.` entry is materialized. Ownership is
/// applied when running as root. A test reference, not a hardened unpacker:
/// only use it on the fixture images.
pub fn extract_rootfs_reference(image: &OciImage, dest: &Path) {
    let is_root = nix::unistd::geteuid().is_root();
    for layer in &image.layers {
        let blob = image.read_blob(&layer.digest);
        let tar_bytes = if layer.media_type.ends_with("gzip") {
            gunzip(&blob)
        } else {
            blob
        };
        // pass 1: whiteouts only affect lower layers
        let mut archive = tar::Archive::new(tar_bytes.as_slice());
        for entry in archive.entries().expect("tar entries") {
            let entry = entry.expect("tar entry");
            let path = entry.path().expect("entry path").into_owned();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            let parent = dest.join(path.parent().unwrap_or(Path::new("")));
            match name.as_deref() {
                Some(".wh..wh..opq") => {
                    if let Ok(read) = std::fs::read_dir(&parent) {
                        for child in read {
                            remove_any(&child.expect("read_dir entry").path());
                        }
                    }
                }
                Some(n) if n.starts_with(".wh.") => {
                    remove_any(&parent.join(&n[4..]));
                }
                _ => {}
            }
        }
        // pass 2: everything else
        let mut archive = tar::Archive::new(tar_bytes.as_slice());
        for entry in archive.entries().expect("tar entries") {
            let mut entry = entry.expect("tar entry");
            let path = entry.path().expect("entry path").into_owned();
            if path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".wh."))
            {
                continue;
            }
            let target = dest.join(&path);
            let is_dir = entry.header().entry_type().is_dir();
            if let Ok(meta) = std::fs::symlink_metadata(&target) {
                if !(is_dir && meta.is_dir()) {
                    remove_any(&target);
                }
            }
            entry.set_preserve_permissions(true);
            entry
                .unpack_in(dest)
                .unwrap_or_else(|e| panic!("unpack {}: {e}", path.display()));
            if is_root {
                let uid = entry.header().uid().expect("uid") as u32;
                let gid = entry.header().gid().expect("gid") as u32;
                std::os::unix::fs::lchown(&target, Some(uid), Some(gid))
                    .unwrap_or_else(|e| panic!("lchown {}: {e}", target.display()));
                if !entry.header().entry_type().is_symlink() {
                    // chown clears setuid/setgid bits: restore the mode
                    let mode = entry.header().mode().expect("mode");
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode))
                        .expect("chmod");
                }
            }
        }
    }
}

fn remove_any(path: &Path) {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path).expect("remove dir"),
        Ok(_) => std::fs::remove_file(path).expect("remove file"),
        Err(_) => {}
    }
}
