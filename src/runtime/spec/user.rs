//! The process user: uid, gid and additional gids from the request or the image's User,
//! with names resolved in the image's own /etc/passwd and /etc/group (containerd's
//! `WithUser`, `WithUsername`, `WithAdditionalGIDs`).

use std::collections::HashSet;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use oci_spec::runtime::User;

use super::SpecError;

/// /etc/passwd or /etc/group files larger than this are refused.
const MAX_DB_BYTES: u64 = 16 << 20;

/// One line of an /etc/passwd file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
}

/// One line of an /etc/group file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

// The parsers are hand-written: both formats are one colon-separated record per line,
// and the crates that know them (nix::unistd::User, uzers) query the host's NSS
// database, not a file inside a container's rootfs.

/// Parses /etc/passwd text (`name:password:uid:gid:gecos:home:shell`); lines that do
/// not parse are skipped, as libc does.
fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 4 || f[0].is_empty() {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: f[2].trim().parse().ok()?,
                gid: f[3].trim().parse().ok()?,
            })
        })
        .collect()
}

/// Parses /etc/group text (`name:password:gid:member,member`).
fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 3 || f[0].is_empty() {
                return None;
            }
            Some(GroupEntry {
                name: f[0].to_string(),
                gid: f[2].trim().parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .map(str::trim)
                            .filter(|s| !s.is_empty())
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// Reads `rel` (e.g. `etc/passwd`) inside `rootfs` without ever leaving it: it is opened
/// with openat2(RESOLVE_IN_ROOT), so symlinks (absolute ones included) resolve as if
/// `rootfs` were `/`, as containerd's RootPath does; where openat2 is missing (Linux <
/// 5.6) each component is opened with O_NOFOLLOW, so any symlink on the way is refused.
/// Only regular files are read (a FIFO cannot block us), at most 16 MiB. A missing file
/// is `Ok(None)`.
fn read_rootfs_file(rootfs: &Path, rel: &str) -> Result<Option<String>, SpecError> {
    use nix::errno::Errno;
    use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};

    let path = rootfs.join(rel);
    let fail = |reason: String| SpecError::RootfsFile {
        path: path.clone(),
        reason,
    };
    let root = match std::fs::File::open(rootfs) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(fail(format!("opening the rootfs: {e}"))),
    };
    let flags = OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK;
    let how = OpenHow::new()
        .flags(flags)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = match openat2(root.as_raw_fd(), rel, how) {
        Ok(fd) => Ok(fd),
        // ENOSYS: Linux < 5.6; EPERM: a seccomp filter (e.g. an older Docker's, when
        // wharf itself runs in a container) that does not know openat2.
        Err(Errno::ENOSYS) | Err(Errno::EPERM) => open_nofollow(root.as_raw_fd(), rel, flags),
        Err(e) => Err(e),
    };
    const LOOP: &str = "too many or refused symlinks (none may lead out of the rootfs)";
    const NOTDIR: &str = "a parent is not a directory (or, without openat2, a symlink)";
    let fd = match fd {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(None),
        Err(Errno::ELOOP) => return Err(fail(LOOP.into())),
        Err(Errno::ENOTDIR) => return Err(fail(NOTDIR.into())),
        Err(e) => return Err(fail(e.desc().to_string())),
    };
    // SAFETY: openat/openat2 returned a new descriptor that nothing else owns.
    let file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let meta = file.metadata().map_err(|e| fail(e.to_string()))?;
    if !meta.is_file() {
        return Err(fail("not a regular file".into()));
    }
    let mut bytes = Vec::new();
    file.take(MAX_DB_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(e.to_string()))?;
    if bytes.len() as u64 > MAX_DB_BYTES {
        return Err(fail(format!("larger than {MAX_DB_BYTES} bytes")));
    }
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

/// Opens `rel` under the directory `root` one component at a time with O_NOFOLLOW, so
/// any symlink on the way fails (ENOTDIR for a parent, ELOOP for the file itself):
/// the fallback of [`read_rootfs_file`] where openat2 is missing.
fn open_nofollow(
    root: std::os::fd::RawFd,
    rel: &str,
    flags: nix::fcntl::OFlag,
) -> nix::Result<std::os::fd::RawFd> {
    use nix::fcntl::{openat, OFlag};
    use nix::sys::stat::Mode;
    let comps: Vec<&str> = rel.split('/').filter(|c| !c.is_empty()).collect();
    let Some((last, parents)) = comps.split_last() else {
        return Err(nix::errno::Errno::ENOENT);
    };
    let mut dir: Option<OwnedFd> = None;
    for comp in parents {
        if *comp == ".." {
            return Err(nix::errno::Errno::EXDEV);
        }
        let at = dir.as_ref().map_or(root, |d| d.as_raw_fd());
        let fd = openat(
            Some(at),
            *comp,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        // SAFETY: openat returned a new descriptor that nothing else owns.
        dir = Some(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    let at = dir.as_ref().map_or(root, |d| d.as_raw_fd());
    openat(Some(at), *last, flags | OFlag::O_NOFOLLOW, Mode::empty())
}

/// A user or group as the request or the image names it.
enum Ident {
    Id(u32),
    Name(String),
}

impl Ident {
    fn parse(s: &str) -> Ident {
        match s.parse::<u32>() {
            Ok(n) => Ident::Id(n),
            Err(_) => Ident::Name(s.to_string()),
        }
    }
}

fn id_from_i64(v: i64, field: &str) -> Result<u32, SpecError> {
    u32::try_from(v).map_err(|_| SpecError::invalid(field, format!("{v} is not a valid id")))
}

/// The user of an exec'd process (Docker's `exec --user`: `uid`, `uid:gid`, `name`,
/// `name:group`), looked up in the container's /etc/passwd and /etc/group as the
/// container's own user is.
pub fn resolve_exec_user(rootfs: &Path, user: &str) -> Result<User, SpecError> {
    resolve_user(
        rootfs,
        &crate::runtime::model::SecurityOptions::default(),
        user,
    )
}

/// The process user, as containerd: the CRI `run_as_username` or `run_as_user`, with
/// `run_as_group`; else the image's User (`uid`, `uid:gid`, `name`, `name:group`). Names
/// are looked up in the image's /etc/passwd and /etc/group. Without a group, the gid is
/// the user's from /etc/passwd (0 if the uid is not there). Additional gids: the primary
/// gid, the groups that list the user in /etc/group (unless supplemental_groups_policy is
/// Strict), then the CRI supplemental_groups.
pub(super) fn resolve_user(
    rootfs: &Path,
    sc: &crate::runtime::model::SecurityOptions,
    image_user: &str,
) -> Result<User, SpecError> {
    const F_USERNAME: &str = "linux.security_context.run_as_username";
    const F_USER: &str = "linux.security_context.run_as_user";
    const F_GROUP: &str = "linux.security_context.run_as_group";
    const F_IMAGE: &str = "image config User";

    let (user, group, user_field, group_field): (Option<Ident>, Option<Ident>, &str, &str) =
        if !sc.run_as_username.is_empty() {
            (
                Some(Ident::Name(sc.run_as_username.clone())),
                None,
                F_USERNAME,
                F_GROUP,
            )
        } else if let Some(u) = &sc.run_as_user {
            (
                Some(Ident::Id(id_from_i64(*u, F_USER)?)),
                None,
                F_USER,
                F_GROUP,
            )
        } else {
            if sc.run_as_group.is_some() {
                return Err(SpecError::invalid(
                    F_GROUP,
                    "run_as_group is set without run_as_user or run_as_username",
                ));
            }
            // A user the request gives replaces the image's.
            let image_user = if sc.user.is_empty() {
                image_user
            } else {
                sc.user.as_str()
            };
            match image_user.split_once(':') {
                Some((u, g)) => (
                    (!u.is_empty()).then(|| Ident::parse(u)),
                    (!g.is_empty()).then(|| Ident::parse(g)),
                    F_IMAGE,
                    F_IMAGE,
                ),
                None => (
                    (!image_user.is_empty()).then(|| Ident::parse(image_user)),
                    None,
                    F_IMAGE,
                    F_IMAGE,
                ),
            }
        };
    let group = match &sc.run_as_group {
        Some(g) => Some(Ident::Id(id_from_i64(*g, F_GROUP)?)),
        None => group,
    };

    let passwd = read_rootfs_file(rootfs, "etc/passwd")?;
    let users = passwd.as_deref().map(parse_passwd).unwrap_or_default();
    let group_text = read_rootfs_file(rootfs, "etc/group")?;
    let groups = group_text.as_deref().map(parse_group).unwrap_or_default();

    let entry = match &user {
        None => users.iter().find(|e| e.uid == 0),
        Some(Ident::Id(uid)) => users.iter().find(|e| e.uid == *uid),
        Some(Ident::Name(name)) => match users.iter().find(|e| &e.name == name) {
            Some(e) => Some(e),
            None => {
                let reason = if passwd.is_none() {
                    format!("user {name:?} cannot be resolved: the image has no /etc/passwd")
                } else {
                    format!("user {name:?} not found in the image's /etc/passwd")
                };
                return Err(SpecError::invalid(user_field, reason));
            }
        },
    };
    let uid = match &user {
        None => 0,
        Some(Ident::Id(uid)) => *uid,
        Some(Ident::Name(_)) => entry.map_or(0, |e| e.uid),
    };
    let gid = match &group {
        None => entry.map_or(0, |e| e.gid),
        Some(Ident::Id(gid)) => *gid,
        Some(Ident::Name(name)) => match groups.iter().find(|g| &g.name == name) {
            Some(g) => g.gid,
            None => {
                return Err(SpecError::invalid(
                    group_field,
                    format!("group {name:?} not found in the image's /etc/group"),
                ))
            }
        },
    };

    let mut additional = vec![gid];
    let strict = sc.supplemental_groups_strict;
    if let (Some(e), false) = (entry, strict) {
        additional.extend(
            groups
                .iter()
                .filter(|g| g.members.contains(&e.name))
                .map(|g| g.gid),
        );
    }
    for (i, g) in sc.supplemental_groups.iter().enumerate() {
        additional.push(id_from_i64(
            *g,
            &format!("linux.security_context.supplemental_groups[{i}]"),
        )?);
    }
    let mut seen = HashSet::new();
    additional.retain(|g| seen.insert(*g));

    let mut out = User::default();
    out.set_uid(uid);
    out.set_gid(gid);
    out.set_additional_gids(Some(additional));
    out.set_username(entry.map(|e| e.name.clone()));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::seccomp;
    use crate::runtime::spec::test_support::*;

    fn user_of(sc: &SecurityOptions, image_user: &str) -> Result<User, SpecError> {
        let root = rootfs();
        resolve_user(root.path(), sc, image_user)
    }

    #[test]
    fn user_from_image() {
        let none = SecurityOptions::default();
        let u = user_of(&none, "").unwrap();
        assert_eq!((u.uid(), u.gid()), (0, 0));
        let u = user_of(&none, "app").unwrap();
        assert_eq!((u.uid(), u.gid()), (1000, 1001));
        assert_eq!(u.additional_gids().clone().unwrap(), vec![1001, 10, 29]);
        assert_eq!(u.username().as_deref(), Some("app"));
        let u = user_of(&none, "1000").unwrap();
        assert_eq!((u.uid(), u.gid()), (1000, 1001));
        let u = user_of(&none, "4242").unwrap();
        assert_eq!((u.uid(), u.gid()), (4242, 0));
        let u = user_of(&none, "4242:77").unwrap();
        assert_eq!((u.uid(), u.gid()), (4242, 77));
        let u = user_of(&none, "app:staff").unwrap();
        assert_eq!((u.uid(), u.gid()), (1000, 50));
        assert_eq!(u.additional_gids().clone().unwrap(), vec![50, 10, 29]);
        let err = user_of(&none, "nobody").unwrap_err();
        assert!(err.to_string().contains("\"nobody\""), "{err}");
        let err = user_of(&none, "app:nogroup").unwrap_err();
        assert!(err.to_string().contains("\"nogroup\""), "{err}");
    }

    #[test]
    fn user_from_cri() {
        let mut sc = SecurityOptions {
            run_as_username: "svc".into(),
            supplemental_groups: vec![500, 10],
            ..Default::default()
        };
        let u = user_of(&sc, "app").unwrap();
        assert_eq!((u.uid(), u.gid()), (2000, 2000));
        assert_eq!(u.additional_gids().clone().unwrap(), vec![2000, 10, 500]);

        sc.run_as_username.clear();
        sc.run_as_user = Some(1000);
        sc.run_as_group = Some(3000);
        let u = user_of(&sc, "root").unwrap();
        assert_eq!((u.uid(), u.gid()), (1000, 3000));
        assert_eq!(
            u.additional_gids().clone().unwrap(),
            vec![3000, 10, 29, 500]
        );

        sc.supplemental_groups_strict = true;
        let u = user_of(&sc, "").unwrap();
        assert_eq!(u.additional_gids().clone().unwrap(), vec![3000, 500, 10]);

        let bad = SecurityOptions {
            run_as_username: "ghost".into(),
            ..Default::default()
        };
        assert_eq!(
            field(user_of(&bad, "").unwrap_err()),
            "linux.security_context.run_as_username"
        );
        let bad = SecurityOptions {
            run_as_group: Some(5),
            ..Default::default()
        };
        assert_eq!(
            field(user_of(&bad, "").unwrap_err()),
            "linux.security_context.run_as_group"
        );
        let bad = SecurityOptions {
            run_as_user: Some(-1),
            ..Default::default()
        };
        assert_eq!(
            field(user_of(&bad, "").unwrap_err()),
            "linux.security_context.run_as_user"
        );
    }

    #[test]
    fn passwd_symlink_cannot_escape_rootfs() {
        let outside = tempfile::tempdir().unwrap();
        let evil = outside.path().join("passwd");
        std::fs::write(&evil, "evil:x:4444:4444::/:/bin/sh\n").unwrap();
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        std::os::unix::fs::symlink(&evil, root.path().join("etc/passwd")).unwrap();
        let none = SecurityOptions::default();
        // The absolute target is resolved inside the rootfs (where it does not exist),
        // or refused: never read from the host.
        match resolve_user(root.path(), &none, "evil") {
            Ok(u) => panic!("resolved a user from outside the rootfs: {u:?}"),
            Err(e) => assert!(!e.to_string().contains("4444"), "{e}"),
        }
        // A symlink that stays inside works like containerd's RootPath.
        std::fs::remove_file(root.path().join("etc/passwd")).unwrap();
        std::fs::write(root.path().join("etc/passwd.real"), "in:x:7:7::/:/bin/sh\n").unwrap();
        std::os::unix::fs::symlink("/etc/passwd.real", root.path().join("etc/passwd")).unwrap();
        let inside = resolve_user(root.path(), &none, "in");
        if seccomp::host_kernel().is_some_and(|k| k >= (5, 6)) {
            // openat2(RESOLVE_IN_ROOT) is there: the symlink is followed inside.
            assert_eq!(inside.unwrap().uid(), 7);
        } else {
            // Fallback: every symlink is refused.
            assert!(inside.is_err());
        }
        // A directory (or FIFO) is refused, not read.
        std::fs::remove_file(root.path().join("etc/passwd")).unwrap();
        std::fs::create_dir(root.path().join("etc/passwd")).unwrap();
        assert!(resolve_user(root.path(), &none, "in").is_err());
    }

    #[test]
    fn fallback_open_refuses_symlinks() {
        use nix::fcntl::OFlag;
        let root = rootfs();
        let dir = std::fs::File::open(root.path()).unwrap();
        let fd = dir.as_raw_fd();
        let ok = open_nofollow(fd, "etc/passwd", OFlag::O_RDONLY | OFlag::O_CLOEXEC).unwrap();
        // SAFETY: a new descriptor from open_nofollow.
        drop(unsafe { OwnedFd::from_raw_fd(ok) });
        std::os::unix::fs::symlink("passwd", root.path().join("etc/link")).unwrap();
        assert_eq!(
            open_nofollow(fd, "etc/link", OFlag::O_RDONLY),
            Err(nix::errno::Errno::ELOOP)
        );
        std::os::unix::fs::symlink("etc", root.path().join("etc2")).unwrap();
        assert_eq!(
            open_nofollow(fd, "etc2/passwd", OFlag::O_RDONLY),
            Err(nix::errno::Errno::ENOTDIR)
        );
        assert_eq!(
            open_nofollow(fd, "etc/missing", OFlag::O_RDONLY),
            Err(nix::errno::Errno::ENOENT)
        );
    }
}
