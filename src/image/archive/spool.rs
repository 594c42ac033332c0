//! An archive read once from its stream into a [`Spool`]: each regular entry in a file of
//! its own (hashed while written), links and directories remembered by path. Nothing is
//! extracted by the entry's path, so no entry can reach outside the spool; paths that
//! would leave an extracted archive are refused all the same, as dockerd refuses them.

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::rc::Rc;

use sha2::{Digest as _, Sha256};

use super::{components, echo, sniff, whole_stream, ArchiveError};
use crate::image::content::{ContentError, SpoolDir};

/// How much of a stream one tar header (with its PAX records or GNU long name) may take:
/// Go's archive/tar allows 1 MiB of such data.
const MAX_HEADER_BYTES: u64 = (1 << 20) + 64 * 1024;
/// Links followed while resolving one path, as the kernel's `MAXSYMLINKS`.
const MAX_LINKS: u32 = 40;

/// What an archive may hold.
#[derive(Debug, Clone)]
pub(super) struct Limits {
    /// Bytes of one entry (`registry.max_unpacked_bytes_per_layer`).
    pub max_entry_bytes: u64,
    /// Bytes of the whole decompressed stream (`registry.max_unpacked_bytes_per_image`).
    pub max_total_bytes: u64,
    /// Entries (`registry.max_entries_per_layer`).
    pub max_entries: u64,
}

/// A regular entry, spooled.
#[derive(Debug, Clone)]
pub(super) struct SpooledFile {
    /// Its path in the archive (for messages).
    pub name: String,
    /// The spool file.
    pub path: PathBuf,
    /// `sha256:<hex>` of its bytes.
    pub digest: String,
    pub size: u64,
}

#[derive(Debug)]
enum Node {
    File(SpooledFile),
    /// A symlink or hard link, its target as a path from the archive's root.
    Link(String),
    Dir,
}

/// A whole archive, spooled. Dropping it removes the spool files that were not
/// committed to the content store.
#[derive(Debug)]
pub(super) struct Spool {
    dir: SpoolDir,
    nodes: HashMap<String, Node>,
}

/// Counts the stream against the limits. `header_budget` is set while the tar reader
/// looks for the next entry (headers, PAX records, long names, padding) and lifted
/// while an entry's data is copied.
struct Guard<R> {
    inner: R,
    total: u64,
    max_total: u64,
    header_budget: Rc<Cell<Option<u64>>>,
    exceeded: Rc<Cell<Option<&'static str>>>,
}

impl<R: Read> Read for Guard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.total += n as u64;
        if self.total > self.max_total {
            self.exceeded.set(Some("total"));
            return Err(io::Error::other("the archive is too large"));
        }
        if let Some(left) = self.header_budget.get() {
            match left.checked_sub(n as u64) {
                Some(left) => self.header_budget.set(Some(left)),
                None => {
                    self.exceeded.set(Some("header"));
                    return Err(io::Error::other("a tar header is too large"));
                }
            }
        }
        Ok(n)
    }
}

impl Spool {
    /// Reads the whole archive `input` (plain, gzip, zstd, bzip2 or xz) into `dir`. Synchronous: run
    /// it on a blocking thread.
    pub fn read(input: impl Read, dir: SpoolDir, limits: &Limits) -> Result<Spool, ArchiveError> {
        let (detected, input) = sniff(input).map_err(read_err)?;
        let stream = whole_stream(detected, input).map_err(read_err)?;
        let header_budget = Rc::new(Cell::new(Some(MAX_HEADER_BYTES)));
        let exceeded = Rc::new(Cell::new(None));
        let guard = Guard {
            inner: stream,
            total: 0,
            max_total: limits.max_total_bytes,
            header_budget: header_budget.clone(),
            exceeded: exceeded.clone(),
        };
        let mut spool = Spool {
            dir,
            nodes: HashMap::new(),
        };
        let limit_error = |which: Option<&'static str>| match which {
            Some("total") => Some(ArchiveError::Limit {
                what: "the decompressed archive (bytes)".to_string(),
                limit: limits.max_total_bytes,
                key: "registry.max_unpacked_bytes_per_image",
            }),
            Some(_) => Some(ArchiveError::Limit {
                what: "a tar header with its PAX records or long name (bytes)".to_string(),
                limit: MAX_HEADER_BYTES,
                key: "(fixed)",
            }),
            None => None,
        };
        let result = spool.read_entries(guard, &header_budget, limits);
        match (result, limit_error(exceeded.get())) {
            (Err(_), Some(limit)) => Err(limit),
            (result, _) => result.map(|()| spool),
        }
    }

    fn read_entries(
        &mut self,
        guard: impl Read,
        header_budget: &Rc<Cell<Option<u64>>>,
        limits: &Limits,
    ) -> Result<(), ArchiveError> {
        let mut archive = tar::Archive::new(guard);
        let mut entries = archive.entries().map_err(read_err)?;
        let mut count = 0u64;
        loop {
            header_budget.set(Some(MAX_HEADER_BYTES));
            let Some(entry) = entries.next() else { break };
            header_budget.set(None);
            let mut entry = entry.map_err(read_err)?;
            count += 1;
            if count > limits.max_entries {
                return Err(ArchiveError::Limit {
                    what: "the number of entries in the archive".to_string(),
                    limit: limits.max_entries,
                    key: "registry.max_entries_per_layer",
                });
            }
            let raw_path = entry.path_bytes().into_owned();
            let name = String::from_utf8_lossy(&raw_path).into_owned();
            let entry_err = |reason: String| ArchiveError::Entry {
                path: echo(&name),
                reason,
            };
            let parts = components(&raw_path).map_err(entry_err)?;
            let kind = entry.header().entry_type();
            if parts.is_empty() {
                // The archive's root (`./`): nothing to remember.
                if kind.is_dir() {
                    continue;
                }
                return Err(entry_err("an entry without a name".to_string()));
            }
            let key = parts.join("/");
            let node = match kind {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let size = entry.size();
                    if size > limits.max_entry_bytes {
                        return Err(ArchiveError::Limit {
                            what: format!("archive entry {:?} ({size} bytes)", echo(&name)),
                            limit: limits.max_entry_bytes,
                            key: "registry.max_unpacked_bytes_per_layer",
                        });
                    }
                    Node::File(self.spool_file(&mut entry, &key)?)
                }
                tar::EntryType::Directory => Node::Dir,
                tar::EntryType::Symlink => {
                    let target = entry
                        .link_name_bytes()
                        .map(|t| t.into_owned())
                        .unwrap_or_default();
                    Node::Link(symlink_target(&parts, &target).map_err(entry_err)?)
                }
                tar::EntryType::Link => {
                    let target = entry
                        .link_name_bytes()
                        .map(|t| t.into_owned())
                        .unwrap_or_default();
                    let target = components(&target)
                        .map_err(|reason| entry_err(format!("hard link target: {reason}")))?;
                    if target.is_empty() {
                        return Err(entry_err("a hard link to nothing".to_string()));
                    }
                    Node::Link(target.join("/"))
                }
                tar::EntryType::XGlobalHeader => continue,
                other => {
                    return Err(entry_err(format!(
                        "unsupported entry type {other:?} (an image archive holds files, \
                         directories and links)"
                    )))
                }
            };
            self.nodes.insert(key, node);
        }
        Ok(())
    }

    fn spool_file(&self, entry: &mut impl Read, key: &str) -> Result<SpooledFile, ArchiveError> {
        let (file, path) = self.dir.create().map_err(internal)?;
        let mut out = io::BufWriter::with_capacity(256 * 1024, file);
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = match entry.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(read_err(err)),
            };
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])
                .map_err(|err| internal(io_err(&path, err)))?;
            size += n as u64;
        }
        out.flush().map_err(|err| internal(io_err(&path, err)))?;
        Ok(SpooledFile {
            name: key.to_string(),
            path,
            digest: format!("sha256:{}", hex::encode(hasher.finalize())),
            size,
        })
    }

    /// Whether `path` names something (after links), a directory implied by the paths
    /// of its entries included.
    pub fn contains(&self, path: &str) -> bool {
        self.resolve(path).is_ok_and(|key| {
            self.nodes.contains_key(&key) || {
                let prefix = format!("{key}/");
                self.nodes.keys().any(|k| k.starts_with(&prefix))
            }
        })
    }

    /// The regular file at `path` (a path from a manifest: links are followed within
    /// the archive).
    pub fn file(&self, path: &str) -> Result<&SpooledFile, ArchiveError> {
        let key = self.resolve(path)?;
        match self.nodes.get(&key) {
            Some(Node::File(file)) => Ok(file),
            Some(_) => Err(ArchiveError::invalid(format!(
                "{:?} in the archive is not a file",
                echo(path)
            ))),
            None => Err(ArchiveError::invalid(format!(
                "{:?} is not in the archive",
                echo(path)
            ))),
        }
    }

    /// The bytes of the file at `path`, which must be at most `max` bytes.
    pub fn read_small(&self, path: &str, max: u64) -> Result<Vec<u8>, ArchiveError> {
        let file = self.file(path)?;
        if file.size > max {
            return Err(ArchiveError::invalid(format!(
                "{:?} is {} bytes, more than the {max} such a file may have",
                echo(path),
                file.size
            )));
        }
        std::fs::read(&file.path).map_err(|err| internal(io_err(&file.path, err)))
    }

    /// `path` with every link on the way replaced by its target: a key of `nodes` (or a
    /// path that is not there).
    fn resolve(&self, path: &str) -> Result<String, ArchiveError> {
        let parts = components(path.as_bytes()).map_err(|reason| {
            ArchiveError::invalid(format!("invalid path {:?}: {reason}", echo(path)))
        })?;
        let mut rest: VecDeque<String> = parts.into();
        let mut current: Vec<String> = Vec::new();
        let mut hops = 0;
        while let Some(part) = rest.pop_front() {
            current.push(part);
            if let Some(Node::Link(target)) = self.nodes.get(&current.join("/")) {
                hops += 1;
                if hops > MAX_LINKS {
                    return Err(ArchiveError::invalid(format!(
                        "too many links resolving {:?}",
                        echo(path)
                    )));
                }
                current.clear();
                for part in target.split('/').rev() {
                    rest.push_front(part.to_string());
                }
            }
        }
        Ok(current.join("/"))
    }
}

/// A symlink's target as a path from the archive's root: relative to the link's
/// directory, never above the root, never absolute.
fn symlink_target(link: &[String], target: &[u8]) -> Result<String, String> {
    let text = std::str::from_utf8(target).map_err(|_| "symlink target is not UTF-8")?;
    if text.starts_with('/') {
        return Err(format!(
            "symlink target {:?} is absolute: it leaves the archive",
            echo(text)
        ));
    }
    let mut path: Vec<&str> = link[..link.len() - 1].iter().map(String::as_str).collect();
    for part in text.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if path.pop().is_none() {
                    return Err(format!(
                        "symlink target {:?} leaves the archive",
                        echo(text)
                    ));
                }
            }
            part => path.push(part),
        }
    }
    if path.is_empty() {
        return Err(format!(
            "symlink target {:?} is the archive itself",
            echo(text)
        ));
    }
    Ok(path.join("/"))
}

fn read_err(err: io::Error) -> ArchiveError {
    ArchiveError::Read(crate::image::bounded(
        &err.to_string(),
        2 * crate::image::MAX_ECHO,
    ))
}

fn io_err(path: &std::path::Path, source: io::Error) -> ContentError {
    ContentError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Our own I/O failed (the spool's disk), not the input.
fn internal(err: ContentError) -> ArchiveError {
    ArchiveError::Internal(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::content::ContentStore;

    fn limits() -> Limits {
        Limits {
            max_entry_bytes: 1 << 20,
            max_total_bytes: 8 << 20,
            max_entries: 100,
        }
    }

    fn tar_of(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        build(&mut builder);
        builder.into_inner().unwrap()
    }

    fn file(builder: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut header, path, data).unwrap();
    }

    /// A header with a raw name, written without the tar crate's path checks.
    fn raw(builder: &mut tar::Builder<Vec<u8>>, path: &str, kind: tar::EntryType, link: &str) {
        let mut header = tar::Header::new_old();
        header.as_mut_bytes()[..path.len()].copy_from_slice(path.as_bytes());
        header.set_size(0);
        header.set_mode(0o644);
        header.set_entry_type(kind);
        if !link.is_empty() {
            header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        header.set_cksum();
        builder.append(&header, io::empty()).unwrap();
    }

    fn spool(tar: &[u8], limits: &Limits) -> (tempfile::TempDir, Result<Spool, ArchiveError>) {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let result = Spool::read(tar, store.spool_dir().unwrap(), limits);
        (dir, result)
    }

    #[test]
    fn files_links_and_compression() {
        let tar = tar_of(|b| {
            file(b, "a/layer.tar", b"layer bytes");
            raw(b, "b/layer.tar", tar::EntryType::Symlink, "../a/layer.tar");
            raw(b, "c", tar::EntryType::Symlink, "b");
            raw(b, "d", tar::EntryType::Link, "a/layer.tar");
            file(b, "manifest.json", b"[]");
        });
        for input in [
            tar.clone(),
            crate::image::archive::tests_support::gzip(&tar),
            zstd::encode_all(&tar[..], 3).unwrap(),
        ] {
            let (_dir, spool) = spool(&input, &limits());
            let spool = spool.unwrap();
            let a = spool.file("a/layer.tar").unwrap();
            assert_eq!(a.size, 11);
            assert_eq!(
                a.digest,
                crate::image::content::sha256_digest(b"layer bytes")
            );
            for other in ["b/layer.tar", "./c/layer.tar", "d"] {
                assert_eq!(spool.file(other).unwrap().path, a.path, "{other}");
            }
            assert_eq!(spool.read_small("manifest.json", 10).unwrap(), b"[]");
            assert!(spool.read_small("manifest.json", 1).is_err());
            let missing = spool.file("nope/layer.tar").unwrap_err().to_string();
            assert!(
                missing.contains("\"nope/layer.tar\" is not in the archive"),
                "{missing}"
            );
            assert!(spool.file("../a/layer.tar").is_err());
            assert!(spool.contains("c"));
            assert!(!spool.contains("x"));
        }
    }

    #[test]
    fn hostile_entries_are_refused_by_name() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                tar_of(|b| raw(b, "../evil", tar::EntryType::Regular, "")),
                "\"../evil\"",
            ),
            (
                tar_of(|b| raw(b, "/etc/passwd", tar::EntryType::Regular, "")),
                "absolute",
            ),
            (
                tar_of(|b| {
                    raw(
                        b,
                        "x/layer.tar",
                        tar::EntryType::Symlink,
                        "../../etc/passwd",
                    )
                }),
                "leaves the archive",
            ),
            (
                tar_of(|b| raw(b, "x", tar::EntryType::Symlink, "/etc/passwd")),
                "absolute",
            ),
            (
                tar_of(|b| raw(b, "x", tar::EntryType::Link, "../y")),
                "hard link target",
            ),
            (
                tar_of(|b| raw(b, "dev", tar::EntryType::Char, "")),
                "unsupported entry type",
            ),
        ];
        for (tar, expected) in cases {
            let (_dir, result) = spool(&tar, &limits());
            let err = result.unwrap_err().to_string();
            assert!(err.contains(expected), "{err} (wanted {expected})");
        }
    }

    #[test]
    fn limits_refuse_bombs() {
        let big = tar_of(|b| file(b, "big", &vec![0u8; 2 << 20]));
        let (_dir, result) = spool(&big, &limits());
        let err = result.unwrap_err();
        assert!(err.is_limit(), "{err}");
        assert!(
            err.to_string()
                .contains("registry.max_unpacked_bytes_per_layer"),
            "{err}"
        );

        let many = tar_of(|b| {
            for i in 0..10 {
                file(b, &format!("f{i}"), &vec![0u8; 900 << 10]);
            }
        });
        let bomb = crate::image::archive::tests_support::gzip(&many);
        assert!(bomb.len() < 200 << 10);
        let (_dir, result) = spool(&bomb, &limits());
        let err = result.unwrap_err();
        assert!(
            err.to_string()
                .contains("registry.max_unpacked_bytes_per_image"),
            "{err}"
        );

        let entries = tar_of(|b| {
            for i in 0..101 {
                file(b, &format!("f{i}"), b"");
            }
        });
        let (_dir, result) = spool(&entries, &limits());
        assert!(result
            .unwrap_err()
            .to_string()
            .contains("registry.max_entries_per_layer"));

        // A PAX header of 2 MiB.
        let mut pax = tar::Header::new_ustar();
        let record = format!("comment={}\n", "x".repeat(2 << 20));
        let record = format!("{} {record}", record.len() + 8);
        pax.set_size(record.len() as u64);
        pax.set_entry_type(tar::EntryType::XHeader);
        pax.set_cksum();
        let huge = tar_of(|b| {
            b.append(&pax, record.as_bytes()).unwrap();
            file(b, "f", b"x");
        });
        let (_dir, result) = spool(
            &huge,
            &Limits {
                max_total_bytes: 64 << 20,
                ..limits()
            },
        );
        assert!(result.unwrap_err().to_string().contains("tar header"));
    }

    #[test]
    fn link_loops_end() {
        let tar = tar_of(|b| {
            raw(b, "a", tar::EntryType::Symlink, "b");
            raw(b, "b", tar::EntryType::Symlink, "a");
        });
        let (_dir, spool) = spool(&tar, &limits());
        let err = spool.unwrap().file("a").unwrap_err().to_string();
        assert!(err.contains("too many links"), "{err}");
    }
}
