//! Files of a build on disk: extracting a tar stream (plain or compressed) safely
//! (what ADD does with a local archive); paths resolved within a root the way dockerd's
//! `FollowSymlinkInScope` does (a symlink, absolute or with `..`, never leaves an
//! image's root filesystem); the checksum of what a `COPY --from` copies (the classic
//! builder's cache key: contents, names, modes and link targets, not times); and the
//! copy itself, with the owner and mode a COPY asks for. The build context itself is
//! an index over its spooled tar ([`super::index`]), with the same rules.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

/// Most symlinks followed while resolving one path (Linux's own limit is 40 per
/// lookup; dockerd's `FollowSymlinkInScope` allows 255).
const MAX_SYMLINKS: usize = 255;

/// What is wrong with a context or a copy: the input's fault unless `Io`.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("{0}")]
    Invalid(String),
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

impl ContextError {
    fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ContextError + 'a {
        move |source| ContextError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Extracts the context tar (`input`, plain, gzip, bzip2, xz or zstd) into `dir`.
/// Entries with an absolute path or a `..` component, or under a symlink the archive
/// made, are refused, naming the entry; links are kept as links (resolved in scope
/// when a COPY reads them). With `owners` (an ADD of a local archive), the entries keep
/// their owners. Written here rather than with `tar::Entry::unpack_in`, which resolves
/// every path to check it (a `readlink` per component and entry: a third of a cached
/// rebuild's time): `dir` is new and only this extraction writes into it, so the
/// symlinks it made are the only ones a path could go through.
pub fn extract(input: impl Read, dir: &Path, owners: bool) -> Result<u64, ContextError> {
    fs::create_dir_all(dir).map_err(ContextError::io("creating", dir))?;
    let reader = crate::image::archive::decompress_whole(input)
        .map_err(|err| ContextError::Invalid(format!("reading the build context: {err}")))?;
    let mut archive = tar::Archive::new(reader);
    let invalid = |err: io::Error| {
        ContextError::Invalid(format!(
            "the build context is not a valid tar archive: {err}"
        ))
    };
    let mut links: HashSet<PathBuf> = HashSet::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut bytes = 0u64;
    for entry in archive.entries().map_err(invalid)? {
        let mut entry = entry.map_err(invalid)?;
        let raw = entry.path_bytes().into_owned();
        let name = crate::image::bounded(&String::from_utf8_lossy(&raw), crate::image::MAX_ECHO);
        let rel = inside(&raw, &links).map_err(|why| {
            ContextError::Invalid(format!(
                "the build context entry {name:?} points outside the context ({why})"
            ))
        })?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        let target = dir.join(&rel);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(ContextError::io("creating", parent))?;
        }
        let header = entry.header();
        let mode = header.mode().unwrap_or(0o644) & 0o7777;
        let mtime = header.mtime().unwrap_or(0);
        let (uid, gid) = (
            header.uid().unwrap_or(0) as u32,
            header.gid().unwrap_or(0) as u32,
        );
        let kind = header.entry_type();
        let own = |path: &Path| -> Result<(), ContextError> {
            if owners {
                std::os::unix::fs::lchown(path, Some(uid), Some(gid))
                    .map_err(ContextError::io("chown of", path))?;
            }
            Ok(())
        };
        match kind {
            tar::EntryType::Directory => {
                fs::create_dir_all(&target).map_err(ContextError::io("creating", &target))?;
                fs::set_permissions(&target, fs::Permissions::from_mode(mode))
                    .map_err(ContextError::io("chmod of", &target))?;
                own(&target)?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                replace_non_dir(&target)?;
                // O_EXCL: never through a link.
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode)
                    .open(&target)
                    .map_err(ContextError::io("creating", &target))?;
                loop {
                    let n = entry.read(&mut buf).map_err(invalid)?;
                    if n == 0 {
                        break;
                    }
                    io::Write::write_all(&mut file, &buf[..n])
                        .map_err(ContextError::io("writing", &target))?;
                    bytes += n as u64;
                }
                file.set_permissions(fs::Permissions::from_mode(mode))
                    .map_err(ContextError::io("chmod of", &target))?;
                let modified = std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime);
                file.set_modified(modified)
                    .map_err(ContextError::io("setting the time of", &target))?;
                own(&target)?;
            }
            tar::EntryType::Symlink => {
                let link = entry
                    .link_name_bytes()
                    .map(|l| l.into_owned())
                    .unwrap_or_default();
                replace_non_dir(&target)?;
                std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&link), &target)
                    .map_err(ContextError::io("creating", &target))?;
                own(&target)?;
                links.insert(rel);
            }
            tar::EntryType::Link => {
                let link = entry
                    .link_name_bytes()
                    .map(|l| l.into_owned())
                    .unwrap_or_default();
                let source = inside(&link, &links).map_err(|why| {
                    ContextError::Invalid(format!(
                        "the build context entry {name:?} links outside the context ({why})"
                    ))
                })?;
                replace_non_dir(&target)?;
                fs::hard_link(dir.join(&source), &target)
                    .map_err(ContextError::io("linking", &target))?;
            }
            // Devices, FIFOs and the like have no place in a build context.
            _ => {}
        }
    }
    Ok(bytes)
}

/// An archive path as a relative path that stays inside the extraction: no `..`, not
/// absolute, not under one of the symlinks the archive made.
fn inside(raw: &[u8], links: &HashSet<PathBuf>) -> Result<PathBuf, String> {
    let parts = crate::image::archive::components(raw)?;
    let mut rel = PathBuf::new();
    for (i, part) in parts.iter().enumerate() {
        rel.push(part);
        if i + 1 < parts.len() && links.contains(&rel) {
            return Err(format!("through the symlink {}", rel.display()));
        }
    }
    Ok(rel)
}

/// Removes what is at `path` unless it is a directory (an entry given twice: the
/// last wins, as tar's).
fn replace_non_dir(path: &Path) -> Result<(), ContextError> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => Err(ContextError::Invalid(format!(
            "the build context replaces the directory {} with a file",
            path.display()
        ))),
        Ok(_) => fs::remove_file(path).map_err(ContextError::io("replacing", path)),
        Err(_) => Ok(()),
    }
}

/// `path` (absolute or relative, `/`-separated) resolved inside `root` as if `root`
/// were `/`: `..` stops at the root, and each symlink met on the way (the last
/// component's too when `follow_last`) is followed within the root. What does not
/// exist is kept as named.
pub fn resolve_in_scope(
    root: &Path,
    path: &str,
    follow_last: bool,
) -> Result<PathBuf, ContextError> {
    let mut resolved: Vec<Vec<u8>> = Vec::new();
    let mut pending: Vec<Vec<u8>> = path
        .split('/')
        .rev()
        .map(|c| c.as_bytes().to_vec())
        .collect();
    let mut followed = 0;
    while let Some(part) = pending.pop() {
        match part.as_slice() {
            b"" | b"." => continue,
            b".." => {
                resolved.pop();
                continue;
            }
            _ => {}
        }
        let last = pending.iter().all(|p| p.is_empty() || p == b".");
        let mut candidate = root.to_path_buf();
        for c in resolved.iter().chain(std::iter::once(&part)) {
            candidate.push(std::ffi::OsStr::from_bytes(c));
        }
        let is_link = fs::symlink_metadata(&candidate)
            .map(|m| m.file_type().is_symlink())
            .unwrap_or(false);
        if is_link && (!last || follow_last) {
            followed += 1;
            if followed > MAX_SYMLINKS {
                return Err(ContextError::Invalid(format!(
                    "too many symlinks resolving {path:?}"
                )));
            }
            let target =
                fs::read_link(&candidate).map_err(ContextError::io("reading", &candidate))?;
            let target = target.as_os_str().as_bytes();
            if target.starts_with(b"/") {
                resolved.clear();
            }
            pending.extend(target.split(|b| *b == b'/').rev().map(<[u8]>::to_vec));
            continue;
        }
        resolved.push(part);
    }
    let mut out = root.to_path_buf();
    for c in &resolved {
        out.push(std::ffi::OsStr::from_bytes(c));
    }
    Ok(out)
}

/// The classic builder's checksum of a COPY source (`file:<hex>` or `dir:<hex>`):
/// relative names, types, permission bits, link targets and file contents, in name
/// order; times and owners are left out, so a touched file still hits the cache.
pub fn checksum(path: &Path) -> Result<String, ContextError> {
    let meta = fs::symlink_metadata(path).map_err(ContextError::io("reading", path))?;
    let mut hasher = Sha256::new();
    hash_entry(path, "", &meta, &mut hasher)?;
    let kind = if meta.is_dir() { "dir" } else { "file" };
    Ok(format!("{kind}:{}", hex::encode(hasher.finalize())))
}

fn hash_entry(
    path: &Path,
    rel: &str,
    meta: &fs::Metadata,
    hasher: &mut Sha256,
) -> Result<(), ContextError> {
    let kind = if meta.is_dir() {
        'd'
    } else if meta.file_type().is_symlink() {
        'l'
    } else if meta.is_file() {
        'f'
    } else {
        'o'
    };
    hasher.update(format!("{rel}\0{kind}\0{:o}\0", meta.mode() & 0o7777).as_bytes());
    if meta.file_type().is_symlink() {
        let target = fs::read_link(path).map_err(ContextError::io("reading", path))?;
        hasher.update(target.as_os_str().as_bytes());
    } else if meta.is_file() {
        hasher.update(meta.len().to_le_bytes());
        let mut file = fs::File::open(path).map_err(ContextError::io("reading", path))?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = file
                .read(&mut buf)
                .map_err(ContextError::io("reading", path))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
    } else if meta.is_dir() {
        let mut names: Vec<_> = fs::read_dir(path)
            .map_err(ContextError::io("reading", path))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(ContextError::io("reading", path))?;
        names.sort();
        for name in names {
            let child = path.join(&name);
            let child_meta =
                fs::symlink_metadata(&child).map_err(ContextError::io("reading", &child))?;
            let child_rel = format!("{rel}/{}", name.to_string_lossy());
            hash_entry(&child, &child_rel, &child_meta, hasher)?;
        }
    }
    hasher.update(b"\n");
    Ok(())
}

/// The owner and mode a COPY gives what it copies.
#[derive(Debug, Clone, Copy)]
pub struct CopyAs {
    pub uid: u32,
    pub gid: u32,
    /// `--chmod`: replaces the permission bits of every file and directory copied.
    pub mode: Option<u32>,
}

/// Copies `src` (a file, link or directory, not followed) to `dst`, which must not be
/// an existing directory when `src` is not one; a directory's entries are merged into
/// an existing `dst` directory, whose own owner and mode stay.
pub fn copy_path(src: &Path, dst: &Path, copy_as: CopyAs) -> Result<u64, ContextError> {
    let meta = fs::symlink_metadata(src).map_err(ContextError::io("reading", src))?;
    let mut copied = 0;
    if meta.is_dir() {
        match fs::symlink_metadata(dst) {
            Ok(existing) if existing.is_dir() => {}
            Ok(_) => {
                fs::remove_file(dst).map_err(ContextError::io("replacing", dst))?;
                make_dir(dst, &meta, copy_as)?;
            }
            Err(_) => make_dir(dst, &meta, copy_as)?,
        }
        let mut names: Vec<_> = fs::read_dir(src)
            .map_err(ContextError::io("reading", src))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(ContextError::io("reading", src))?;
        names.sort();
        for name in names {
            copied += copy_path(&src.join(&name), &dst.join(&name), copy_as)?;
        }
        set_times(dst, &meta)?;
        return Ok(copied);
    }
    if let Ok(existing) = fs::symlink_metadata(dst) {
        if existing.is_dir() {
            return Err(ContextError::Invalid(format!(
                "cannot copy {} over the directory {}",
                src.display(),
                dst.display()
            )));
        }
        fs::remove_file(dst).map_err(ContextError::io("replacing", dst))?;
    }
    if meta.file_type().is_symlink() {
        let target = fs::read_link(src).map_err(ContextError::io("reading", src))?;
        std::os::unix::fs::symlink(&target, dst).map_err(ContextError::io("creating", dst))?;
        std::os::unix::fs::lchown(dst, Some(copy_as.uid), Some(copy_as.gid))
            .map_err(ContextError::io("chown of", dst))?;
        set_times(dst, &meta)?;
        return Ok(0);
    }
    if !meta.is_file() {
        return Err(ContextError::Invalid(format!(
            "{} is not a regular file, directory or symlink: COPY copies only those",
            src.display()
        )));
    }
    copied += fs::copy(src, dst).map_err(ContextError::io("copying to", dst))?;
    std::os::unix::fs::lchown(dst, Some(copy_as.uid), Some(copy_as.gid))
        .map_err(ContextError::io("chown of", dst))?;
    let mode = copy_as.mode.unwrap_or(meta.mode() & 0o7777);
    fs::set_permissions(dst, fs::Permissions::from_mode(mode))
        .map_err(ContextError::io("chmod of", dst))?;
    set_times(dst, &meta)?;
    Ok(copied)
}

fn make_dir(dst: &Path, meta: &fs::Metadata, copy_as: CopyAs) -> Result<(), ContextError> {
    fs::create_dir(dst).map_err(ContextError::io("creating", dst))?;
    std::os::unix::fs::lchown(dst, Some(copy_as.uid), Some(copy_as.gid))
        .map_err(ContextError::io("chown of", dst))?;
    let mode = copy_as.mode.unwrap_or(meta.mode() & 0o7777);
    fs::set_permissions(dst, fs::Permissions::from_mode(mode))
        .map_err(ContextError::io("chmod of", dst))
}

/// Gives `dst` the access and modification times of `meta` (links not followed).
fn set_times(dst: &Path, meta: &fs::Metadata) -> Result<(), ContextError> {
    use nix::sys::stat::{utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    let atime = TimeSpec::new(meta.atime(), meta.atime_nsec());
    let mtime = TimeSpec::new(meta.mtime(), meta.mtime_nsec());
    utimensat(None, dst, &atime, &mtime, UtimensatFlags::NoFollowSymlink)
        .map_err(|errno| ContextError::io("setting the times of", dst)(io::Error::from(errno)))
}

/// Creates the missing directories of `dir` (inside a root filesystem, already
/// resolved), owned by `uid:gid` with mode 0755, as the classic builder's
/// `MkdirAllAndChownNew` does; existing ones are left as they are.
pub fn make_dirs(dir: &Path, uid: u32, gid: u32) -> Result<(), ContextError> {
    if fs::symlink_metadata(dir).is_ok() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        make_dirs(parent, uid, gid)?;
    }
    fs::create_dir(dir).map_err(ContextError::io("creating", dir))?;
    std::os::unix::fs::lchown(dir, Some(uid), Some(gid))
        .map_err(ContextError::io("chown of", dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
        .map_err(ContextError::io("chmod of", dir))
}

/// A `--chown` value (`user`, `user:group`, names or numbers) as numeric IDs, names
/// looked up in the root filesystem's `/etc/passwd` and `/etc/group`; a user alone
/// gives the same number as its group, as the classic builder does.
pub fn chown_ids(rootfs: &Path, spec: &str) -> Result<(u32, u32), ContextError> {
    let (user, group) = match spec.split_once(':') {
        Some((user, group)) => (user, Some(group)),
        None => (spec, None),
    };
    let lookup = |file: &str, name: &str| -> Result<u32, ContextError> {
        if let Ok(id) = name.parse::<u32>() {
            return Ok(id);
        }
        let path = resolve_in_scope(rootfs, file, true)?;
        let text = fs::read_to_string(&path).unwrap_or_default();
        text.lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split(':').collect();
                (fields.len() > 2 && fields[0] == name).then(|| fields[2].parse::<u32>().ok())
            })
            .flatten()
            .next()
            .ok_or_else(|| {
                ContextError::Invalid(format!(
                    "unable to convert uid/gid chown string to host mapping: can't find \
                     {} {name:?} in {file}",
                    if file.ends_with("passwd") {
                        "uid for user"
                    } else {
                        "gid for group"
                    }
                ))
            })
    };
    let uid = lookup("/etc/passwd", user)?;
    let gid = match group {
        Some(group) => lookup("/etc/group", group)?,
        None => uid,
    };
    Ok((uid, gid))
}

/// Whether the file at `path` is a tar archive, plain or compressed (what ADD
/// extracts instead of copying, as dockerd's `isArchivePath` decides).
pub fn is_archive(path: &Path) -> bool {
    let Ok(file) = fs::File::open(path) else {
        return false;
    };
    let Ok(reader) = crate::image::archive::decompress_whole(file) else {
        return false;
    };
    let mut archive = tar::Archive::new(reader);
    let first = archive
        .entries()
        .ok()
        .and_then(|mut entries| entries.next());
    matches!(first, Some(Ok(_)))
}

/// Whether a source name holds a wildcard (Go's `filepath.Match` syntax).
pub fn has_wildcard(source: &str) -> bool {
    source.contains(['*', '?', '['])
}

/// The paths under `root` matching `pattern` (relative, `/`-separated, Go's
/// `filepath.Match` per path): a matching directory is taken whole, not searched.
pub fn glob(root: &Path, pattern: &str) -> Result<Vec<String>, ContextError> {
    let pattern = pattern.trim_start_matches("./").trim_start_matches('/');
    let compiled = glob::Pattern::new(pattern)
        .map_err(|err| ContextError::Invalid(format!("invalid pattern {pattern:?}: {err}")))?;
    let options = glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: false,
    };
    let mut found = Vec::new();
    let mut pending = vec![String::new()];
    while let Some(prefix) = pending.pop() {
        let dir = root.join(&prefix);
        let mut names: Vec<_> = fs::read_dir(&dir)
            .map_err(ContextError::io("reading", &dir))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(ContextError::io("reading", &dir))?;
        names.sort();
        for name in names {
            let rel = format!("{prefix}{}", name.to_string_lossy());
            if compiled.matches_with(&rel, options) {
                found.push(rel);
            } else if fs::symlink_metadata(root.join(&rel)).is_ok_and(|m| m.is_dir()) {
                pending.push(format!("{rel}/"));
            }
        }
    }
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::build::test_dir as temp;

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let tmp = temp("scope");
        let root = tmp.path().to_path_buf();
        fs::create_dir_all(root.join("a/b")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../..", root.join("a/b/up")).unwrap();
        std::os::unix::fs::symlink("b", root.join("a/rel")).unwrap();
        assert_eq!(
            resolve_in_scope(&root, "abs/passwd", true).unwrap(),
            root.join("etc/passwd")
        );
        assert_eq!(
            resolve_in_scope(&root, "a/b/up/etc", true).unwrap(),
            root.join("etc")
        );
        assert_eq!(
            resolve_in_scope(&root, "../../x", true).unwrap(),
            root.join("x")
        );
        assert_eq!(
            resolve_in_scope(&root, "a/rel/c", true).unwrap(),
            root.join("a/b/c")
        );
        assert_eq!(
            resolve_in_scope(&root, "a/rel", false).unwrap(),
            root.join("a/rel")
        );
        std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
        assert!(resolve_in_scope(&root, "loop", true).is_err());
    }

    #[test]
    fn context_entries_cannot_leave_it() {
        let tmp = temp("extract");
        let root = tmp.path().to_path_buf();
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(2);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        // `append_data` refuses `..`; write the name into the header directly.
        header.as_old_mut().name[..9].copy_from_slice(b"../escape");
        header.set_cksum();
        builder.append(&header, &b"hi"[..]).unwrap();
        let data = builder.into_inner().unwrap();
        let err = extract(&data[..], &root.join("ctx"), false).unwrap_err();
        assert!(err.to_string().contains("../escape"), "{err}");
        assert!(!root.join("escape").exists());
        // A symlink the archive made cannot be written through.
        let mut builder = tar::Builder::new(Vec::new());
        let mut link = tar::Header::new_gnu();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_size(0);
        builder
            .append_link(&mut link, "out", root.join("outside"))
            .unwrap();
        let mut file = tar::Header::new_gnu();
        file.set_size(2);
        file.set_mode(0o644);
        builder.append_data(&mut file, "out/x", &b"hi"[..]).unwrap();
        let data = builder.into_inner().unwrap();
        fs::create_dir_all(root.join("outside")).unwrap();
        let err = extract(&data[..], &root.join("ctx2"), false).unwrap_err();
        assert!(err.to_string().contains("through the symlink out"), "{err}");
        assert!(!root.join("outside/x").exists());
        // A regular context: files, modes, times, links.
        let mut builder = tar::Builder::new(Vec::new());
        let mut file = tar::Header::new_gnu();
        file.set_size(3);
        file.set_mode(0o751);
        file.set_mtime(1_000_000);
        builder.append_data(&mut file, "d/f", &b"abc"[..]).unwrap();
        let mut hard = tar::Header::new_gnu();
        hard.set_entry_type(tar::EntryType::Link);
        hard.set_size(0);
        builder.append_link(&mut hard, "d/h", "d/f").unwrap();
        let data = builder.into_inner().unwrap();
        let ctx = root.join("ctx3");
        assert_eq!(extract(&data[..], &ctx, false).unwrap(), 3);
        let meta = fs::metadata(ctx.join("d/f")).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o751);
        assert_eq!(meta.mtime(), 1_000_000);
        assert_eq!(fs::read(ctx.join("d/h")).unwrap(), b"abc");
    }

    #[test]
    fn checksums_ignore_times_but_not_contents() {
        let tmp = temp("sum");
        let root = tmp.path().to_path_buf();
        fs::create_dir_all(root.join("d")).unwrap();
        fs::write(root.join("d/f"), "one").unwrap();
        let first = checksum(&root.join("d")).unwrap();
        assert!(first.starts_with("dir:"));
        let file = fs::File::options()
            .write(true)
            .open(root.join("d/f"))
            .unwrap();
        file.set_modified(std::time::SystemTime::UNIX_EPOCH)
            .unwrap();
        assert_eq!(checksum(&root.join("d")).unwrap(), first);
        fs::write(root.join("d/f"), "two").unwrap();
        assert_ne!(checksum(&root.join("d")).unwrap(), first);
        assert!(checksum(&root.join("d/f")).unwrap().starts_with("file:"));
    }

    #[test]
    fn globs_match_per_path() {
        let tmp = temp("glob");
        let root = tmp.path().to_path_buf();
        fs::create_dir_all(root.join("src/sub")).unwrap();
        fs::write(root.join("a.txt"), "").unwrap();
        fs::write(root.join("b.md"), "").unwrap();
        fs::write(root.join("src/c.txt"), "").unwrap();
        assert_eq!(glob(&root, "*.txt").unwrap(), vec!["a.txt"]);
        assert_eq!(glob(&root, "src/*.txt").unwrap(), vec!["src/c.txt"]);
        assert_eq!(glob(&root, "s*").unwrap(), vec!["src"]);
        assert!(glob(&root, "*.none").unwrap().is_empty());
    }
}
