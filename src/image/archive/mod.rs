//! Image archives: `docker save` / `docker load` tarballs and `docker import` of a root
//! filesystem tarball, in the core so that both the Docker API and the `wharf` CLI can
//! use them.
//!
//! # Formats
//! - **docker-archive** (what `docker save` of dockerd 20.10 writes, [`save`]):
//!   `manifest.json` (`[{"Config","RepoTags","Layers"}]`), `repositories` (the legacy
//!   `{"repo":{"tag":"<top layer id>"}}`), the config blob as `<hex>.json`, and per layer
//!   a directory named by its v1 layer ID holding `VERSION` ("1.0"), `json` (the v1
//!   layer config) and `layer.tar`, the layer uncompressed (its sha256 is the diff ID).
//!   A layer whose content was already written under another ID is a symlink to the
//!   first `layer.tar`, as dockerd writes it.
//! - **OCI image layout** (loaded only): `oci-layout`, `index.json`, `blobs/sha256/<hex>`.
//!   Image names come from the index entries' `io.containerd.image.name` annotation, or
//!   `org.opencontainers.image.ref.name` when it is a whole reference (a bare tag such
//!   as `latest` names no repository: the image is loaded untagged). Nested indexes are
//!   resolved to this host's platform.
//!
//! # Loading ([`load`]) is all or nothing
//! The input (plain, gzip or zstd) is spooled first, each regular entry into a file of
//! its own in the content store's ingest directory, hashed while written (a
//! [`spool::Spool`]); nothing is extracted by path, so no entry can write anywhere.
//! Entries with a `..` component, an absolute path, a link leaving the archive, or a
//! type other than file, directory and link are refused, naming the entry. Limits: each
//! entry at most `registry.max_unpacked_bytes_per_layer` bytes, the whole (decompressed)
//! archive at most `registry.max_unpacked_bytes_per_image`, at most
//! `registry.max_entries_per_layer` entries, a tar header (PAX or GNU long name) at most
//! 1 MiB; layers are unpacked within the same limits as a pull's.
//! Then every image is checked before anything is stored: JSON files, digests of OCI
//! blobs against their names and descriptors, layer counts against the config's
//! `rootfs.diff_ids`; then each layer is unpacked into a snapshot (or, if its chain is
//! already there, hashed) and its diff ID compared with the config's. Only then are
//! blobs moved into the content store (a rename) and image records written, tags last.
//! A failure anywhere returns an [`ArchiveError`] (InvalidArgument) and leaves no tag; a
//! garbage collection removes the snapshots it committed.

mod import;
mod load;
mod save;
mod spool;

use std::io::{self, Read};

use super::unpack::{Compression, UnpackError};

pub use import::{ImportOptions, RemoteTarball};
pub use load::{LoadReport, LoadedImage};
pub use save::SaveArchive;

/// Docker schema 2 media types of the manifests wharf writes for loaded and imported
/// images (as containerd's importer does).
const MEDIA_TYPE_DOCKER_MANIFEST: &str = super::registry::MEDIA_TYPE_DOCKER_MANIFEST;
const MEDIA_TYPE_DOCKER_CONFIG: &str = super::registry::MEDIA_TYPE_DOCKER_CONFIG;

/// Longest JSON file (manifest.json, index.json, a config, a manifest) read from an
/// archive: they are held in memory.
const MAX_JSON: u64 = 32 << 20;

/// What is wrong with an archive (or a tarball to import). Every variant is the input's
/// fault: InvalidArgument, a 400 in the Docker API.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{0}")]
    Invalid(String),
    #[error("invalid archive entry {path:?}: {reason}")]
    Entry { path: String, reason: String },
    #[error("{what} exceeds the limit of {limit} (config key {key})")]
    Limit {
        what: String,
        limit: u64,
        key: &'static str,
    },
    #[error("layer {path}: {source}")]
    Layer { path: String, source: UnpackError },
    #[error("reading the archive: {0}")]
    Read(String),
    /// `docker import URL`: the GET failed (dockerd's words).
    #[error("{0}")]
    Download(String),
    /// dockerd's message for a name `docker save` cannot find.
    /// Our own storage failed while reading the input (not the input's fault).
    #[error(transparent)]
    Internal(crate::image::content::ContentError),
    #[error("No such image: {0}")]
    NoSuchImage(String),
    /// dockerd's message for a tag or digest reference `docker save` cannot find.
    #[error("reference does not exist")]
    NoSuchReference(String),
}

impl crate::error::HasKind for ArchiveError {
    fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            ArchiveError::NoSuchImage(_) | ArchiveError::NoSuchReference(_) => ErrorKind::NotFound,
            ArchiveError::Layer {
                source: UnpackError::Destination { .. },
                ..
            }
            | ArchiveError::Internal(_) => ErrorKind::Internal,
            ArchiveError::Download(_) => ErrorKind::Unavailable,
            _ => ErrorKind::InvalidArgument,
        }
    }
}

impl ArchiveError {
    fn invalid(message: impl Into<String>) -> ArchiveError {
        ArchiveError::Invalid(message.into())
    }

    /// A limit of the configuration refused the input.
    pub fn is_limit(&self) -> bool {
        matches!(
            self,
            ArchiveError::Limit { .. }
                | ArchiveError::Layer {
                    source: UnpackError::Limit { .. },
                    ..
                }
        )
    }
}

/// Input text (a path, a name) as errors show it.
fn echo(text: &str) -> String {
    super::bounded(text, super::MAX_ECHO)
}

/// How a stream is compressed, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Detected {
    Plain,
    Gzip,
    Zstd,
    Bzip2,
    Xz,
}

impl Detected {
    fn of(head: &[u8]) -> Detected {
        if head.starts_with(&[0x1f, 0x8b]) {
            Detected::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Detected::Zstd
        } else if head.starts_with(b"BZh") {
            Detected::Bzip2
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
            Detected::Xz
        } else {
            Detected::Plain
        }
    }

    /// The compression of a layer inside an archive, or an error naming what wharf cannot
    /// store as a layer blob.
    fn compression(self, what: &str) -> Result<Compression, ArchiveError> {
        match self {
            Detected::Plain => Ok(Compression::None),
            Detected::Gzip => Ok(Compression::Gzip),
            Detected::Zstd => Ok(Compression::Zstd),
            Detected::Bzip2 | Detected::Xz => Err(ArchiveError::invalid(format!(
                "{what} is compressed with {}, which wharf does not read in a layer (use \
                 gzip, zstd or no compression)",
                if self == Detected::Bzip2 {
                    "bzip2"
                } else {
                    "xz"
                }
            ))),
        }
    }
}

/// A stream whose first bytes were read, put back in front of the rest.
type Sniffed<R> = io::Chain<io::Cursor<Vec<u8>>, R>;

/// Reads the first bytes of `reader` (up to 6, fewer at EOF) to tell its compression;
/// returns it with a reader that yields the whole stream again.
fn sniff<R: Read>(mut reader: R) -> io::Result<(Detected, Sniffed<R>)> {
    let mut head = vec![0u8; 6];
    let mut filled = 0;
    while filled < head.len() {
        match reader.read(&mut head[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        }
    }
    head.truncate(filled);
    Ok((Detected::of(&head), io::Cursor::new(head).chain(reader)))
}

/// `reader` decompressed as `compression` says.
fn decompressed<'a, R: Read + 'a>(
    reader: R,
    compression: Compression,
) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match compression {
        Compression::None => Box::new(reader),
        // Multi-member, as Go's gzip reader reads.
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(
            io::BufReader::with_capacity(256 * 1024, reader),
        )),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(reader)?),
    })
}

/// A whole archive or tarball (what `docker load` and `docker import` read, not a layer
/// inside one) decompressed: besides gzip and zstd, bzip2 and xz, which dockerd's
/// `DecompressStream` reads there too (registries never carry them as layers).
fn whole_stream<'a, R: Read + 'a>(detected: Detected, reader: R) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match detected {
        Detected::Plain => Box::new(reader),
        Detected::Gzip => Box::new(flate2::read::MultiGzDecoder::new(
            io::BufReader::with_capacity(256 * 1024, reader),
        )),
        Detected::Zstd => Box::new(zstd::stream::read::Decoder::new(reader)?),
        // Multi-stream, as `bzip2 -c a b` and pbzip2 write and Go's reader reads.
        Detected::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(reader)),
        Detected::Xz => Box::new(liblzma::read::XzDecoder::new_multi_decoder(reader)),
    })
}

/// A whole tarball in whatever compression its first bytes tell (plain, gzip, zstd,
/// bzip2, xz), decompressed: a build context, a local archive a build ADDs.
pub fn decompress_whole<'a, R: Read + 'a>(reader: R) -> io::Result<Box<dyn Read + 'a>> {
    let (detected, reader) = sniff(reader)?;
    whole_stream(detected, reader)
}

/// Splits an archive path into its components, refusing what could leave the archive:
/// `..`, an absolute path, NUL, non-UTF-8. `.` and empty components are dropped.
pub(crate) fn components(raw: &[u8]) -> Result<Vec<String>, String> {
    let text = std::str::from_utf8(raw).map_err(|_| "the path is not UTF-8".to_string())?;
    if text.starts_with('/') {
        return Err("an absolute path".to_string());
    }
    if text.contains('\0') {
        return Err("the path contains NUL".to_string());
    }
    let mut parts = Vec::new();
    for part in text.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err("the path has a \"..\" component".to_string()),
            part => parts.push(part.to_string()),
        }
    }
    Ok(parts)
}

/// Splits the Dockerfile-style `repo[:tag]` of a reference: whether its last path
/// component names a tag.
fn has_explicit_tag(reference: &str) -> bool {
    let name = reference.split('@').next().unwrap_or(reference);
    name.rsplit('/')
        .next()
        .is_some_and(|last| last.contains(':'))
}

#[cfg(test)]
pub(crate) mod tests_support {
    pub fn gzip(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_is_told_by_magic() {
        assert_eq!(Detected::of(&[0x1f, 0x8b, 8]), Detected::Gzip);
        assert_eq!(Detected::of(&[0x28, 0xb5, 0x2f, 0xfd, 0]), Detected::Zstd);
        assert_eq!(Detected::of(b"BZh91AY"), Detected::Bzip2);
        assert_eq!(Detected::of(b"\xfd7zXZ\0"), Detected::Xz);
        assert_eq!(Detected::of(b"manif"), Detected::Plain);
        assert_eq!(Detected::of(b""), Detected::Plain);
        assert!(Detected::Xz
            .compression("layer a/layer.tar")
            .unwrap_err()
            .to_string()
            .contains("xz"));
        let (detected, mut again) = sniff(&b"\x1f\x8b rest"[..]).unwrap();
        assert_eq!(detected, Detected::Gzip);
        let mut all = Vec::new();
        again.read_to_end(&mut all).unwrap();
        assert_eq!(all, b"\x1f\x8b rest");
        let (detected, _) = sniff(&b"ab"[..]).unwrap();
        assert_eq!(detected, Detected::Plain);
    }

    #[test]
    fn paths_cannot_leave_the_archive() {
        assert_eq!(components(b"./a//b/./c").unwrap(), ["a", "b", "c"]);
        assert!(components(b"").unwrap().is_empty());
        assert!(components(b"a/../../etc").is_err());
        assert!(components(b"/etc/passwd").is_err());
        assert!(components(b"a\xff").is_err());
    }

    #[test]
    fn explicit_tags() {
        assert!(has_explicit_tag("busybox:1"));
        assert!(has_explicit_tag("127.0.0.1:5000/a/b:c"));
        assert!(!has_explicit_tag("127.0.0.1:5000/a/b"));
        assert!(!has_explicit_tag("busybox"));
        assert!(!has_explicit_tag("busybox@sha256:abc"));
    }
}
