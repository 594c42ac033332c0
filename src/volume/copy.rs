//! Copy-up: a new (empty) volume mounted where the image has content gets a copy of
//! that content first, with owners, modes and times, as dockerd's
//! `CopyImagePathContent`. The source is looked up inside the container's rootfs with
//! every symlink resolved within it, so no image can make the copy read the host.

use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// `path` (absolute, as the container sees it) inside `root`, symlinks resolved as if
/// `root` were `/` (never leaving it). None when it does not exist.
pub fn resolve_in_root(root: &Path, path: &str) -> io::Result<Option<PathBuf>> {
    let mut pending: Vec<std::ffi::OsString> = Path::new(path)
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let mut resolved: Vec<std::ffi::OsString> = Vec::new();
    let mut hops = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let mut candidate = root.to_path_buf();
        candidate.extend(resolved.iter());
        candidate.push(&part);
        let meta = match std::fs::symlink_metadata(&candidate) {
            Ok(meta) => meta,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err),
        };
        if meta.file_type().is_symlink() {
            hops += 1;
            if hops > 40 {
                return Err(io::Error::other(format!(
                    "too many symlinks resolving {path}"
                )));
            }
            let target = std::fs::read_link(&candidate)?;
            if target.is_absolute() {
                resolved.clear();
            }
            for c in target.components().rev() {
                match c {
                    Component::Normal(n) => pending.push(n.to_os_string()),
                    Component::ParentDir => pending.push("..".into()),
                    _ => {}
                }
            }
            continue;
        }
        resolved.push(part);
    }
    let mut out = root.to_path_buf();
    out.extend(resolved.iter());
    Ok(Some(out))
}

fn is_empty_dir(dir: &Path) -> io::Result<bool> {
    Ok(std::fs::read_dir(dir)?.next().is_none())
}

/// Copies the content of directory `source` into `dest` when `dest` is empty, then
/// gives `dest` the owner and mode of `source`. Returns whether it copied. A source
/// that is not a directory copies nothing.
pub fn copy_up(source: &Path, dest: &Path) -> io::Result<bool> {
    let meta = std::fs::symlink_metadata(source)?;
    if !meta.is_dir() || !is_empty_dir(dest)? {
        return Ok(false);
    }
    copy_dir_contents(source, dest)?;
    std::os::unix::fs::lchown(dest, Some(meta.uid()), Some(meta.gid()))?;
    std::fs::set_permissions(dest, std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    Ok(true)
}

fn copy_dir_contents(source: &Path, dest: &Path) -> io::Result<()> {
    let device = std::fs::symlink_metadata(source)?.dev();
    // Hard links within the copy stay hard links: (dev, inode) -> first copy.
    let mut links: std::collections::HashMap<(u64, u64), PathBuf> = Default::default();
    let mut dirs: Vec<(PathBuf, std::fs::Metadata)> = Vec::new();
    let mut stack = vec![(source.to_path_buf(), dest.to_path_buf())];
    while let Some((from_dir, to_dir)) = stack.pop() {
        for entry in std::fs::read_dir(&from_dir)? {
            let entry = entry?;
            let from = entry.path();
            let to = to_dir.join(entry.file_name());
            let meta = std::fs::symlink_metadata(&from)?;
            let kind = meta.file_type();
            if kind.is_dir() {
                std::fs::create_dir(&to)?;
                // Another filesystem mounted in the rootfs is not the image's content.
                if meta.dev() == device {
                    stack.push((from, to.clone()));
                }
                dirs.push((to, meta));
                continue;
            }
            if meta.nlink() > 1 && !kind.is_symlink() {
                if let Some(first) = links.get(&(meta.dev(), meta.ino())) {
                    std::fs::hard_link(first, &to)?;
                    continue;
                }
                links.insert((meta.dev(), meta.ino()), to.clone());
            }
            if kind.is_symlink() {
                std::os::unix::fs::symlink(std::fs::read_link(&from)?, &to)?;
            } else if kind.is_file() {
                std::fs::copy(&from, &to)?;
            } else {
                let mode = nix::sys::stat::Mode::from_bits_truncate(meta.mode() & 0o7777);
                let sflag =
                    nix::sys::stat::SFlag::from_bits_truncate(meta.mode() & nix::libc::S_IFMT);
                nix::sys::stat::mknod(&to, sflag, mode, meta.rdev()).map_err(io::Error::from)?;
            }
            finish(&to, &meta)?;
        }
    }
    // Directories last, deepest first: writing into them changed their times.
    for (dir, meta) in dirs.iter().rev() {
        finish(dir, meta)?;
    }
    Ok(())
}

/// Owner, mode (not for symlinks) and modification time of `meta` on `path`.
fn finish(path: &Path, meta: &std::fs::Metadata) -> io::Result<()> {
    std::os::unix::fs::lchown(path, Some(meta.uid()), Some(meta.gid()))?;
    if !meta.file_type().is_symlink() {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    }
    let time = nix::sys::time::TimeSpec::new(meta.mtime(), meta.mtime_nsec());
    nix::sys::stat::utimensat(
        None,
        path,
        &time,
        &time,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("real/data")).unwrap();
        std::os::unix::fs::symlink("/real", r.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../../etc", r.join("escape")).unwrap();
        assert_eq!(
            resolve_in_root(r, "/abs/data").unwrap(),
            Some(r.join("real/data"))
        );
        // ".." stops at the root: /etc of the root, which does not exist.
        assert_eq!(resolve_in_root(r, "/escape").unwrap(), None);
        assert_eq!(resolve_in_root(r, "/missing").unwrap(), None);
    }

    #[test]
    fn copies_into_an_empty_dir_only() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        std::fs::create_dir(src.path().join("sub")).unwrap();
        std::fs::write(src.path().join("sub/f"), "hello").unwrap();
        std::fs::set_permissions(
            src.path().join("sub/f"),
            std::fs::Permissions::from_mode(0o640),
        )
        .unwrap();
        std::os::unix::fs::symlink("sub/f", src.path().join("link")).unwrap();
        assert!(copy_up(src.path(), dst.path()).unwrap());
        assert_eq!(
            std::fs::read_to_string(dst.path().join("sub/f")).unwrap(),
            "hello"
        );
        let mode = std::fs::metadata(dst.path().join("sub/f")).unwrap().mode();
        assert_eq!(mode & 0o777, 0o640);
        assert_eq!(
            std::fs::read_link(dst.path().join("link")).unwrap(),
            Path::new("sub/f")
        );
        // Not empty any more: nothing is copied again.
        std::fs::write(src.path().join("new"), "x").unwrap();
        assert!(!copy_up(src.path(), dst.path()).unwrap());
        assert!(!dst.path().join("new").exists());
    }
}
