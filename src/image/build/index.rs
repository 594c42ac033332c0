//! The build context as it arrived: the (decompressed) tar stream written to one
//! spool file, and an index of its entries (type, mode, time, link target, and for
//! files where their data is in the spool and its SHA-256, computed as it streamed).
//!
//! A build needs the context's files only for a COPY or ADD that the cache does not
//! have: the Dockerfile, `.dockerignore`, the COPY sources' paths (symlinks resolved
//! in scope, wildcards) and checksums all come from the index. Only the first step
//! that copies extracts the context to a directory ([`ContextIndex::materialize`]),
//! once. A cached rebuild so writes one file instead of one per context entry (on
//! ext4, creating files was two thirds of a cached rebuild's time) and reads nothing
//! twice; a large context costs disk, never memory beyond its index.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use sha2::{Digest as _, Sha256};

use super::context::ContextError;
use super::ignore::IgnoreMatcher;

/// Most symlinks followed resolving one path (as [`super::context::resolve_in_scope`]).
const MAX_SYMLINKS: usize = 255;

/// The largest Dockerfile or `.dockerignore` read into memory.
const MAX_SMALL_FILE: u64 = 16 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    File {
        offset: u64,
        size: u64,
        digest: [u8; 32],
    },
    Symlink(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: EntryKind,
    pub mode: u32,
    pub mtime: u64,
}

/// A context: its spool and index, and its extraction once made.
#[derive(Debug)]
pub struct ContextIndex {
    spool: PathBuf,
    entries: BTreeMap<String, Entry>,
    bytes: u64,
    materialized: OnceLock<Result<(), String>>,
}

/// A reader that writes what it reads to `out` (the spool).
struct Tee<R, W> {
    inner: R,
    out: W,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.out.write_all(&buf[..n])?;
        Ok(n)
    }
}

fn implicit_dir() -> Entry {
    Entry {
        kind: EntryKind::Dir,
        mode: 0o755,
        mtime: 0,
    }
}

impl ContextIndex {
    /// Reads the context tar (plain or compressed) from `input` into the spool file
    /// `spool`, indexing it. Entries with an absolute path or a `..` component, or
    /// under a symlink the archive made, are refused, naming the entry.
    pub fn receive(input: impl Read, spool: &Path) -> Result<ContextIndex, ContextError> {
        let io_err = |what: &'static str| {
            move |source: io::Error| ContextError::Io {
                what,
                path: spool.to_path_buf(),
                source,
            }
        };
        if let Some(parent) = spool.parent() {
            fs::create_dir_all(parent).map_err(io_err("creating the directory of"))?;
        }
        let file = File::create(spool).map_err(io_err("creating"))?;
        let reader = crate::image::archive::decompress_whole(input)
            .map_err(|err| ContextError::Invalid(format!("reading the build context: {err}")))?;
        let tee = Tee {
            inner: reader,
            out: BufWriter::with_capacity(256 * 1024, file),
        };
        let mut archive = tar::Archive::new(tee);
        let invalid = |err: io::Error| {
            ContextError::Invalid(format!(
                "the build context is not a valid tar archive: {err}"
            ))
        };
        let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
        let mut links: BTreeSet<String> = BTreeSet::new();
        let mut bytes = 0u64;
        let mut buf = vec![0u8; 256 * 1024];
        for entry in archive.entries().map_err(invalid)? {
            let mut entry = entry.map_err(invalid)?;
            let raw = entry.path_bytes().into_owned();
            let name =
                crate::image::bounded(&String::from_utf8_lossy(&raw), crate::image::MAX_ECHO);
            let outside = |why: String| {
                ContextError::Invalid(format!(
                    "the build context entry {name:?} points outside the context ({why})"
                ))
            };
            let parts = crate::image::archive::components(&raw).map_err(outside)?;
            if parts.is_empty() {
                continue;
            }
            for i in 1..parts.len() {
                let ancestor = parts[..i].join("/");
                if links.contains(&ancestor) {
                    return Err(outside(format!("through the symlink {ancestor}")));
                }
                entries.entry(ancestor).or_insert_with(implicit_dir);
            }
            let path = parts.join("/");
            let header = entry.header();
            let mode = header.mode().unwrap_or(0o644) & 0o7777;
            let mtime = header.mtime().unwrap_or(0);
            let kind = match header.entry_type() {
                tar::EntryType::Directory => EntryKind::Dir,
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let offset = entry.raw_file_position();
                    let mut hasher = Sha256::new();
                    let mut size = 0u64;
                    loop {
                        let n = entry.read(&mut buf).map_err(invalid)?;
                        if n == 0 {
                            break;
                        }
                        hasher.update(&buf[..n]);
                        size += n as u64;
                    }
                    bytes += size;
                    EntryKind::File {
                        offset,
                        size,
                        digest: hasher.finalize().into(),
                    }
                }
                tar::EntryType::Symlink => {
                    let target = entry
                        .link_name_bytes()
                        .map(|l| l.into_owned())
                        .unwrap_or_default();
                    links.insert(path.clone());
                    EntryKind::Symlink(target)
                }
                tar::EntryType::Link => {
                    let target = entry
                        .link_name_bytes()
                        .map(|l| l.into_owned())
                        .unwrap_or_default();
                    let target = crate::image::archive::components(&target)
                        .map_err(outside)?
                        .join("/");
                    match entries.get(&target) {
                        Some(Entry {
                            kind: kind @ EntryKind::File { .. },
                            ..
                        }) => kind.clone(),
                        _ => {
                            return Err(ContextError::Invalid(format!(
                                "the build context entry {name:?} is a hard link to \
                                 {target:?}, which is not a file before it"
                            )))
                        }
                    }
                }
                // Devices, FIFOs and the like have no place in a build context.
                _ => continue,
            };
            if matches!(kind, EntryKind::Dir) {
                if let Some(existing) = entries.get_mut(&path) {
                    if existing.kind == EntryKind::Dir {
                        existing.mode = mode;
                        existing.mtime = mtime;
                        continue;
                    }
                }
            }
            if !matches!(kind, EntryKind::Symlink(_)) {
                links.remove(&path);
            }
            if !matches!(kind, EntryKind::Dir) {
                // A file or link replacing a directory replaces what was in it (as an
                // extraction would), so nothing is left to be written through a link.
                let prefix = format!("{path}/");
                let under: Vec<String> = entries
                    .range(prefix.clone()..)
                    .take_while(|(p, _)| p.starts_with(&prefix))
                    .map(|(p, _)| p.clone())
                    .collect();
                for p in under {
                    entries.remove(&p);
                    links.remove(&p);
                }
            }
            entries.insert(path, Entry { kind, mode, mtime });
        }
        let mut tee = archive.into_inner();
        // What is left of the stream (the end-of-archive blocks) is not needed.
        tee.out.flush().map_err(io_err("writing"))?;
        Ok(ContextIndex {
            spool: spool.to_path_buf(),
            entries,
            bytes,
            materialized: OnceLock::new(),
        })
    }

    /// The bytes of the context's files.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn get(&self, path: &str) -> Option<&Entry> {
        if path.is_empty() {
            return None;
        }
        self.entries.get(path)
    }

    /// The contents of a small file of the context (the Dockerfile, `.dockerignore`).
    pub fn read_small(&self, path: &str) -> Result<Option<Vec<u8>>, ContextError> {
        let Some(Entry {
            kind: EntryKind::File { offset, size, .. },
            ..
        }) = self.get(path)
        else {
            return Ok(None);
        };
        if *size > MAX_SMALL_FILE {
            return Err(ContextError::Invalid(format!(
                "{path} is {size} bytes: more than the {MAX_SMALL_FILE} a build reads"
            )));
        }
        let mut data = vec![0u8; *size as usize];
        self.read_at(*offset, &mut data)?;
        Ok(Some(data))
    }

    fn read_at(&self, offset: u64, data: &mut [u8]) -> Result<(), ContextError> {
        let io_err = |source| ContextError::Io {
            what: "reading",
            path: self.spool.clone(),
            source,
        };
        let mut file = File::open(&self.spool).map_err(io_err)?;
        file.seek(SeekFrom::Start(offset)).map_err(io_err)?;
        file.read_exact(data).map_err(io_err)
    }

    /// Drops what `ignore` excludes (the parents of what an exception keeps stay).
    pub fn apply_ignore(&mut self, ignore: &IgnoreMatcher) {
        self.entries.retain(|path, _| !ignore.excluded(path));
        let kept: Vec<String> = self.entries.keys().cloned().collect();
        for path in kept {
            let parts: Vec<&str> = path.split('/').collect();
            for i in 1..parts.len() {
                self.entries
                    .entry(parts[..i].join("/"))
                    .or_insert_with(implicit_dir);
            }
        }
    }

    /// `path` resolved inside the context as if it were `/` (the rule of
    /// [`super::context::resolve_in_scope`]): the context-relative path, `""` for the
    /// root.
    pub fn resolve(&self, path: &str, follow_last: bool) -> Result<String, ContextError> {
        let mut resolved: Vec<String> = Vec::new();
        let mut pending: Vec<String> = path.split('/').rev().map(str::to_string).collect();
        let mut followed = 0;
        while let Some(part) = pending.pop() {
            match part.as_str() {
                "" | "." => continue,
                ".." => {
                    resolved.pop();
                    continue;
                }
                _ => {}
            }
            let last = pending.iter().all(|p| p.is_empty() || p == ".");
            resolved.push(part);
            let candidate = resolved.join("/");
            if let Some(Entry {
                kind: EntryKind::Symlink(target),
                ..
            }) = self.entries.get(&candidate)
            {
                if last && !follow_last {
                    continue;
                }
                followed += 1;
                if followed > MAX_SYMLINKS {
                    return Err(ContextError::Invalid(format!(
                        "too many symlinks resolving {path:?}"
                    )));
                }
                resolved.pop();
                let target = String::from_utf8_lossy(target).into_owned();
                if target.starts_with('/') {
                    resolved.clear();
                }
                pending.extend(target.split('/').rev().map(str::to_string));
            }
        }
        Ok(resolved.join("/"))
    }

    /// The context paths matching `pattern` (Go's `filepath.Match` per path, as
    /// [`super::context::glob`]): a matching directory is taken whole.
    pub fn glob(&self, pattern: &str) -> Result<Vec<String>, ContextError> {
        let pattern = pattern.trim_start_matches("./").trim_start_matches('/');
        let compiled = glob::Pattern::new(pattern)
            .map_err(|err| ContextError::Invalid(format!("invalid pattern {pattern:?}: {err}")))?;
        let options = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: false,
        };
        let mut found: Vec<String> = Vec::new();
        for path in self.entries.keys() {
            if found.iter().any(|dir| {
                path.len() > dir.len()
                    && path.starts_with(dir.as_str())
                    && path.as_bytes()[dir.len()] == b'/'
            }) {
                continue;
            }
            if compiled.matches_with(path, options) {
                found.push(path.clone());
            }
        }
        found.sort();
        Ok(found)
    }

    /// The names directly under `dir` (`""`: the root), sorted.
    fn children(&self, dir: &str) -> Vec<&str> {
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        let mut names: Vec<&str> = self
            .entries
            .range(prefix.clone()..)
            .take_while(|(path, _)| path.starts_with(&prefix))
            .map(|(path, _)| &path[prefix.len()..])
            .filter(|rest| !rest.is_empty() && !rest.contains('/'))
            .collect();
        names.sort_unstable();
        names
    }

    /// The classic builder's checksum of a COPY source (`file:<hex>`, `dir:<hex>`):
    /// names, types, permission bits, link targets and contents, not times.
    pub fn checksum(&self, path: &str) -> Result<String, ContextError> {
        let mut hasher = Sha256::new();
        let dir =
            path.is_empty() || matches!(self.get(path).map(|e| &e.kind), Some(EntryKind::Dir));
        self.hash_entry(path, "", &mut hasher)?;
        let kind = if dir { "dir" } else { "file" };
        Ok(format!("{kind}:{}", hex::encode(hasher.finalize())))
    }

    fn hash_entry(&self, path: &str, rel: &str, hasher: &mut Sha256) -> Result<(), ContextError> {
        let (kind, mode) = match self.get(path) {
            Some(entry) => (&entry.kind, entry.mode),
            None if path.is_empty() => (&EntryKind::Dir, 0o755),
            None => {
                return Err(ContextError::Invalid(format!(
                    "{path} is not in the build context"
                )))
            }
        };
        let letter = match kind {
            EntryKind::Dir => 'd',
            EntryKind::File { .. } => 'f',
            EntryKind::Symlink(_) => 'l',
        };
        hasher.update(format!("{rel}\0{letter}\0{mode:o}\0").as_bytes());
        match kind {
            EntryKind::Symlink(target) => hasher.update(target),
            EntryKind::File { size, digest, .. } => {
                hasher.update(size.to_le_bytes());
                hasher.update(digest);
            }
            EntryKind::Dir => {
                for name in self.children(path) {
                    let child = if path.is_empty() {
                        name.to_string()
                    } else {
                        format!("{path}/{name}")
                    };
                    self.hash_entry(&child, &format!("{rel}/{name}"), hasher)?;
                }
            }
        }
        hasher.update(b"\n");
        Ok(())
    }

    /// Extracts the (ignore-filtered) context into `dir`, once; later calls return
    /// the first one's result.
    pub fn materialize(&self, dir: &Path) -> Result<(), ContextError> {
        self.materialized
            .get_or_init(|| self.extract_to(dir).map_err(|err| err.to_string()))
            .clone()
            .map_err(ContextError::Invalid)
    }

    fn extract_to(&self, dir: &Path) -> Result<(), ContextError> {
        let io = |what: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| ContextError::Io { what, path, source }
        };
        fs::create_dir_all(dir).map_err(io("creating", dir))?;
        let mut spool = File::open(&self.spool).map_err(io("reading", &self.spool))?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut dirs = Vec::new();
        // Sorted: a parent comes before what is in it.
        for (path, entry) in &self.entries {
            let target = dir.join(path);
            match &entry.kind {
                EntryKind::Dir => {
                    fs::create_dir_all(&target).map_err(io("creating", &target))?;
                    dirs.push((target, entry.mode));
                }
                EntryKind::Symlink(link) => {
                    std::os::unix::fs::symlink(
                        <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(link),
                        &target,
                    )
                    .map_err(io("creating", &target))?;
                }
                EntryKind::File { offset, size, .. } => {
                    let mut file = fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(entry.mode)
                        .open(&target)
                        .map_err(io("creating", &target))?;
                    spool
                        .seek(SeekFrom::Start(*offset))
                        .map_err(io("reading", &self.spool))?;
                    let mut left = *size;
                    while left > 0 {
                        let want = left.min(buf.len() as u64) as usize;
                        spool
                            .read_exact(&mut buf[..want])
                            .map_err(io("reading", &self.spool))?;
                        file.write_all(&buf[..want])
                            .map_err(io("writing", &target))?;
                        left -= want as u64;
                    }
                    file.set_permissions(fs::Permissions::from_mode(entry.mode))
                        .map_err(io("chmod of", &target))?;
                    file.set_modified(
                        std::time::UNIX_EPOCH + std::time::Duration::from_secs(entry.mtime),
                    )
                    .map_err(io("setting the time of", &target))?;
                }
            }
        }
        for (target, mode) in dirs {
            fs::set_permissions(&target, fs::Permissions::from_mode(mode))
                .map_err(io("chmod of", &target))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::build::test_dir as temp;

    fn tar_of(entries: &[(&str, &str)], links: &[(&str, &str)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, data) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_mtime(1_000);
            builder
                .append_data(&mut header, name, data.as_bytes())
                .unwrap();
        }
        for (name, target) in links {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_size(0);
            builder.append_link(&mut header, name, target).unwrap();
        }
        builder.into_inner().unwrap()
    }

    #[test]
    fn index_resolves_globs_and_checksums_like_the_files() {
        let tmp = temp("index");
        let root = tmp.path().to_path_buf();
        let data = tar_of(
            &[
                ("Dockerfile", "FROM x\n"),
                ("src/a.txt", "alpha"),
                ("src/b.txt", "beta"),
                ("secret/key", "k"),
                ("secret/keep", "kept"),
            ],
            &[("abs", "/src"), ("up", "../../src/a.txt"), ("loop", "loop")],
        );
        let mut index = ContextIndex::receive(&data[..], &root.join("ctx.tar")).unwrap();
        assert_eq!(index.bytes(), 7 + 5 + 4 + 1 + 4);
        assert_eq!(
            index.read_small("Dockerfile").unwrap().unwrap(),
            b"FROM x\n"
        );
        assert_eq!(index.resolve("abs/a.txt", true).unwrap(), "src/a.txt");
        assert_eq!(index.resolve("up", true).unwrap(), "src/a.txt");
        assert_eq!(index.resolve("up", false).unwrap(), "up");
        assert_eq!(index.resolve("../../x", true).unwrap(), "x");
        assert!(index.resolve("loop", true).is_err());
        assert_eq!(
            index.glob("src/*.txt").unwrap(),
            vec!["src/a.txt", "src/b.txt"]
        );
        assert_eq!(index.glob("s*").unwrap(), vec!["secret", "src"]);
        index.apply_ignore(&IgnoreMatcher::parse("secret\n!secret/keep\n").unwrap());
        assert!(index.get("secret/key").is_none());
        assert!(index.get("secret/keep").is_some());
        assert!(index.get("secret").is_some());
        let sum = index.checksum("src").unwrap();
        assert!(sum.starts_with("dir:"));
        assert!(index.checksum("src/a.txt").unwrap().starts_with("file:"));
        // The same files again, another time: the same checksum; other contents: not.
        let again = ContextIndex::receive(&data[..], &root.join("again.tar")).unwrap();
        assert_eq!(again.checksum("src").unwrap(), sum);
        let other = tar_of(&[("src/a.txt", "ALPHA"), ("src/b.txt", "beta")], &[]);
        let other = ContextIndex::receive(&other[..], &root.join("other.tar")).unwrap();
        assert_ne!(other.checksum("src").unwrap(), sum);
        // Extracted once, as indexed.
        let dir = root.join("ctx");
        index.materialize(&dir).unwrap();
        index.materialize(&dir).unwrap();
        assert_eq!(fs::read(dir.join("src/b.txt")).unwrap(), b"beta");
        assert!(dir.join("secret/keep").is_file() && !dir.join("secret/key").exists());
        assert_eq!(fs::read_link(dir.join("abs")).unwrap(), Path::new("/src"));
    }

    #[test]
    fn entries_cannot_leave_the_context() {
        let tmp = temp("leave");
        let root = tmp.path().to_path_buf();
        let data = tar_of(&[("out/x", "hi")], &[("out", "/etc")]);
        // The link comes after the file here: it replaces the directory and what was
        // in it; the other order is refused.
        let index = ContextIndex::receive(&data[..], &root.join("a.tar")).unwrap();
        assert!(index.get("out/x").is_none());
        assert!(matches!(
            index.get("out").unwrap().kind,
            EntryKind::Symlink(_)
        ));
        let mut builder = tar::Builder::new(Vec::new());
        let mut link = tar::Header::new_gnu();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_size(0);
        builder.append_link(&mut link, "out", "/etc").unwrap();
        let mut file = tar::Header::new_gnu();
        file.set_size(2);
        file.set_mode(0o644);
        builder
            .append_data(&mut file, "out/passwd", &b"hi"[..])
            .unwrap();
        let data = builder.into_inner().unwrap();
        let err = ContextIndex::receive(&data[..], &root.join("b.tar")).unwrap_err();
        assert!(err.to_string().contains("through the symlink out"), "{err}");
    }
}
