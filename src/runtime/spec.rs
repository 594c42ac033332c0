//! The OCI runtime spec of a container, from the CRI CreateContainer request, the pod it
//! joins and its image's config. Pure: nothing is mounted, created or started here; the
//! only reads are the image's /etc/passwd and /etc/group (for user names), the daemon's
//! own /proc/self/oom_score_adj and, for `Localhost` seccomp profiles, the profile file.
//!
//! The rules follow containerd's CRI plugin (and Docker's defaults where containerd takes
//! them from Docker): see each helper for the rule it applies.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use k8s_cri::v1 as cri;
use oci_spec::runtime::{
    Capability, Linux, LinuxCpu, LinuxDevice, LinuxDeviceCgroup, LinuxDeviceType,
    LinuxHugepageLimit, LinuxMemory, LinuxNamespace, LinuxNamespaceType, LinuxPids, LinuxResources,
    LinuxSeccomp, Mount, Process, Root, Spec, User,
};

use super::{caps, seccomp};

/// The OCI runtime spec version wharf writes.
pub const OCI_VERSION: &str = "1.2.0";

/// PATH given to a container whose image sets none (containerd's default).
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// /etc/passwd or /etc/group files larger than this are refused.
const MAX_DB_BYTES: u64 = 16 << 20;

/// Why a container spec could not be generated. `InvalidArgument` and `Unsupported` name
/// the CRI field (`linux.security_context.run_as_username`, `mounts[2].host_path`, ...).
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// A field of the request is invalid; the front-ends answer InvalidArgument / 400.
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    /// A valid request wharf cannot serve yet (e.g. TARGET pid namespace without the
    /// target's namespace path, user namespaces).
    #[error("{field}: not supported: {reason}")]
    Unsupported { field: String, reason: String },
    /// The image config JSON could not be read.
    #[error("image config: {0}")]
    ImageConfig(String),
    /// A file of the image's rootfs (/etc/passwd, /etc/group) could not be read.
    #[error("image rootfs {path}: {reason}")]
    RootfsFile { path: PathBuf, reason: String },
    /// Capabilities that are unknown (InvalidArgument) or that wharfd cannot grant
    /// (FailedPrecondition).
    #[error(transparent)]
    Capability(#[from] caps::CapabilityError),
    /// A `Localhost` seccomp profile could not be used.
    #[error("linux.security_context.seccomp: {0}")]
    Seccomp(#[from] seccomp::SeccompError),
    /// A host file wharf reads for the spec (/proc/self/oom_score_adj) failed.
    #[error("reading {path}: {source}")]
    Host {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl crate::error::HasKind for SpecError {
    fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            SpecError::Host { .. } => ErrorKind::Internal,
            SpecError::Capability(caps::CapabilityError::NotHeld { .. }) => {
                ErrorKind::FailedPrecondition
            }
            _ => ErrorKind::InvalidArgument,
        }
    }
}

impl SpecError {
    fn invalid(field: impl Into<String>, reason: impl Into<String>) -> SpecError {
        SpecError::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Image config fields that matter for a container (from the OCI image config JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageDefaults {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub stop_signal: Option<String>,
}

#[derive(serde::Deserialize, Default)]
struct ConfigFile {
    #[serde(default)]
    config: Option<ConfigSection>,
}

#[derive(serde::Deserialize, Default)]
struct ConfigSection {
    #[serde(rename = "Entrypoint", default)]
    entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    cmd: Option<Vec<String>>,
    #[serde(rename = "Env", default)]
    env: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    working_dir: Option<String>,
    #[serde(rename = "User", default)]
    user: Option<String>,
    #[serde(rename = "StopSignal", default)]
    stop_signal: Option<String>,
}

impl ImageDefaults {
    /// Reads the fields from an OCI (or Docker) image config JSON document.
    pub fn from_config_json(json: &[u8]) -> Result<ImageDefaults, SpecError> {
        let file: ConfigFile =
            serde_json::from_slice(json).map_err(|e| SpecError::ImageConfig(e.to_string()))?;
        let c = file.config.unwrap_or_default();
        Ok(ImageDefaults {
            entrypoint: c.entrypoint.unwrap_or_default(),
            cmd: c.cmd.unwrap_or_default(),
            env: c.env.unwrap_or_default(),
            working_dir: c.working_dir.unwrap_or_default(),
            user: c.user.unwrap_or_default(),
            stop_signal: c.stop_signal.filter(|s| !s.is_empty()),
        })
    }
}

/// Where the pod's shared things live (prepared by the pod code).
#[derive(Debug, Clone, Default)]
pub struct PodContext {
    /// The pod sandbox's ID (annotation `io.kubernetes.cri.sandbox-id`).
    pub sandbox_id: String,
    /// Hostname of the pod's UTS namespace.
    pub hostname: String,
    /// The pod's network namespace; None = host network.
    pub netns_path: Option<PathBuf>,
    /// The pod's IPC namespace; None = host IPC.
    pub ipc_ns_path: Option<PathBuf>,
    /// The pod's UTS namespace; None = host UTS (then no hostname is set).
    pub uts_ns_path: Option<PathBuf>,
    /// The pod's PID namespace, joined in POD pid mode; None = a new one per container.
    pub pid_ns_path: Option<PathBuf>,
    /// The cgroup the pod's containers go under (kubelet's `cgroup_parent`).
    pub cgroup_parent: String,
    /// The pod's /dev/shm (bind-mounted); None = a private tmpfs per container.
    pub shm_path: Option<PathBuf>,
    /// The pod's /etc/resolv.conf, bind-mounted when given.
    pub resolv_conf: Option<PathBuf>,
    /// The pod's /etc/hosts, bind-mounted when given.
    pub hosts: Option<PathBuf>,
    /// The pod's /etc/hostname, bind-mounted when given.
    pub hostname_file: Option<PathBuf>,
    /// The pod's sysctls (PodSandboxConfig.linux.sysctls), applied to every container.
    pub sysctls: HashMap<String, String>,
}

/// How the spec is generated on this host, beyond the request.
#[derive(Debug, Clone, Default)]
pub struct SpecOptions {
    /// The container's root filesystem (mounted by the image service).
    pub rootfs: PathBuf,
    /// The container's ID (names its cgroup).
    pub container_id: String,
    /// Never give a container an oom_score_adj below the daemon's own (containerd's
    /// `restrict_oom_score_adj`, for daemons that cannot lower it).
    pub restrict_oom_score_adj: bool,
    /// Where relative `Localhost` seccomp profiles are looked up.
    pub seccomp_profile_root: PathBuf,
    /// The host uses cgroup v2 for containers: give each a cgroup namespace.
    pub cgroup_v2: bool,
    /// pids limit: the CRI has no per-container one (kubelet limits the pod cgroup), so
    /// this serves the Docker API's `PidsLimit`. None or <= 0 = no limit.
    pub pids_limit: Option<i64>,
    /// The host can limit swap (cgroup v1 swap accounting, or v2 `memory.swap.max`; see
    /// [`host_swap_limit_supported`]): then swap is set with the memory limit.
    pub swap_limit: bool,
    /// For TARGET pid mode: the PID namespace of the target container
    /// (`namespace_options.target_id`), resolved by the caller.
    pub target_pid_ns_path: Option<PathBuf>,
    /// wharfd's own capability bounding set (`CapBnd`): no container gets more. None:
    /// every capability wharf knows.
    pub bounding_capabilities: Option<u64>,
}

/// The OCI runtime spec of a container: `config` (the CRI request) merged with `image`'s
/// defaults, inside `pod`.
pub fn container_spec(
    config: &cri::ContainerConfig,
    pod: &PodContext,
    image: &ImageDefaults,
    opts: &SpecOptions,
) -> Result<Spec, SpecError> {
    let linux_cfg = config.linux.clone().unwrap_or_default();
    let sc = linux_cfg.security_context.unwrap_or_default();
    let privileged = sc.privileged;

    if opts.container_id.is_empty() || opts.container_id.contains('/') {
        return Err(SpecError::invalid(
            "container id",
            format!("{:?} is not a valid container id", opts.container_id),
        ));
    }

    // process
    let args = process_args(config, image)?;
    let env = process_env(config, image, &pod.hostname);
    let cwd = working_dir(config, image)?;
    let user = resolve_user(&opts.rootfs, &sc, &image.user)?;
    let cap_cfg = sc.capabilities.clone().unwrap_or_default();
    let held = caps::from_mask(opts.bounding_capabilities.unwrap_or(u64::MAX));
    let cap_set = caps::compute(
        privileged,
        &cap_cfg.add_capabilities,
        &cap_cfg.drop_capabilities,
        &held,
    )?;
    let mut ambient = HashSet::new();
    for name in &cap_cfg.add_ambient_capabilities {
        ambient.insert(caps::parse(name).ok_or_else(|| {
            SpecError::invalid(
                "linux.security_context.capabilities.add_ambient_capabilities",
                format!("unknown capability {name:?}"),
            )
        })?);
    }
    let oom_score_adj = match &linux_cfg.resources {
        Some(r) => Some(oom_score_adj(r.oom_score_adj, opts.restrict_oom_score_adj)?),
        None => None,
    };

    let mut process = Process::default();
    process.set_terminal(Some(config.tty));
    process.set_user(user);
    process.set_args(Some(args));
    process.set_env(Some(env));
    process.set_cwd(cwd);
    process.set_capabilities(Some(caps::to_linux(&cap_set, &ambient)));
    // No rlimits: the container inherits the monitor's, as containerd 2 does (the old
    // 1024 open files default was too low for many programs).
    process.set_rlimits(None);
    // Unset rather than false: libcontainer loads a seccomp filter before dropping
    // capabilities only when the field is absent (a filter needs CAP_SYS_ADMIN or
    // no_new_privs to load), which is what runc does for false too.
    process.set_no_new_privileges(sc.no_new_privs.then_some(true));
    process.set_oom_score_adj(oom_score_adj);
    process.set_apparmor_profile(None);
    process.set_selinux_label(None);

    // mounts and namespaces
    let (mounts, rootfs_propagation) = mounts(config, pod, privileged, sc.readonly_rootfs)?;
    let namespaces = namespaces(&sc, pod, opts)?;
    let sysctls = sysctls(pod)?;

    // resources
    let mut resources = resources(linux_cfg.resources.as_ref(), opts)?;
    let (devices, device_allows) = devices(config)?;
    let mut rules = device_rules(privileged);
    if !privileged {
        rules.extend(device_allows);
    }
    resources.set_devices(Some(rules));

    let seccomp = seccomp_profile(&sc, privileged, &cap_set, opts)?;

    let (masked, readonly) = if privileged {
        (Vec::new(), Vec::new())
    } else {
        let masked = if sc.masked_paths.is_empty() {
            DEFAULT_MASKED_PATHS.iter().map(|s| s.to_string()).collect()
        } else {
            sc.masked_paths.clone()
        };
        let readonly = if sc.readonly_paths.is_empty() {
            DEFAULT_READONLY_PATHS
                .iter()
                .map(|s| s.to_string())
                .collect()
        } else {
            sc.readonly_paths.clone()
        };
        (masked, readonly)
    };

    let mut linux = Linux::default();
    linux.set_uid_mappings(None);
    linux.set_gid_mappings(None);
    linux.set_sysctl(Some(sysctls));
    linux.set_resources(Some(resources));
    linux.set_cgroups_path(Some(cgroups_path(&pod.cgroup_parent, &opts.container_id)?));
    linux.set_namespaces(Some(namespaces));
    linux.set_devices((!devices.is_empty()).then_some(devices));
    linux.set_seccomp(seccomp);
    linux.set_rootfs_propagation(rootfs_propagation);
    linux.set_masked_paths(Some(masked));
    linux.set_readonly_paths(Some(readonly));
    linux.set_mount_label(None);

    let mut root = Root::default();
    root.set_path(opts.rootfs.clone());
    root.set_readonly(Some(sc.readonly_rootfs));

    let mut annotations = config.annotations.clone();
    annotations.insert(
        "io.kubernetes.cri.container-type".into(),
        "container".into(),
    );
    annotations.insert(
        "io.kubernetes.cri.sandbox-id".into(),
        pod.sandbox_id.clone(),
    );
    if let Some(meta) = &config.metadata {
        annotations.insert("io.kubernetes.cri.container-name".into(), meta.name.clone());
    }
    if let Some(img) = &config.image {
        annotations.insert("io.kubernetes.cri.image-name".into(), img.image.clone());
    }

    let mut spec = Spec::default();
    spec.set_version(OCI_VERSION.to_string());
    spec.set_root(Some(root));
    spec.set_mounts(Some(mounts));
    spec.set_process(Some(process));
    spec.set_hostname(
        pod.uts_ns_path
            .as_ref()
            .filter(|_| !pod.hostname.is_empty())
            .map(|_| pod.hostname.clone()),
    );
    spec.set_annotations(Some(annotations));
    spec.set_linux(Some(linux));
    Ok(spec)
}

/// containerd's rule: `command` set -> command + args; else `args` set -> image
/// Entrypoint + args; else Entrypoint + Cmd. An empty result is an error.
fn process_args(
    config: &cri::ContainerConfig,
    image: &ImageDefaults,
) -> Result<Vec<String>, SpecError> {
    let args: Vec<String> = if !config.command.is_empty() {
        config.command.iter().chain(&config.args).cloned().collect()
    } else if !config.args.is_empty() {
        image
            .entrypoint
            .iter()
            .chain(&config.args)
            .cloned()
            .collect()
    } else {
        image.entrypoint.iter().chain(&image.cmd).cloned().collect()
    };
    if args.is_empty() {
        return Err(SpecError::invalid(
            "command",
            "no command specified: command and args are empty and the image has no Entrypoint or Cmd",
        ));
    }
    Ok(args)
}

fn env_key(entry: &str) -> &str {
    entry.split_once('=').map_or(entry, |(k, _)| k)
}

/// Sets `entry` in `env`, replacing an entry with the same key in place.
fn set_env(env: &mut Vec<String>, entry: String) {
    let key = env_key(&entry).to_string();
    match env.iter_mut().find(|e| env_key(e) == key) {
        Some(existing) => *existing = entry,
        None => env.push(entry),
    }
}

/// Environment: a default PATH and HOSTNAME (as containerd), then the image's Env, then
/// the CRI envs; a later entry replaces an earlier one with the same key.
fn process_env(
    config: &cri::ContainerConfig,
    image: &ImageDefaults,
    hostname: &str,
) -> Vec<String> {
    let mut env = vec![DEFAULT_PATH.to_string()];
    if !hostname.is_empty() {
        env.push(format!("HOSTNAME={hostname}"));
    }
    for entry in &image.env {
        set_env(&mut env, entry.clone());
    }
    for kv in &config.envs {
        set_env(&mut env, format!("{}={}", kv.key, kv.value));
    }
    env
}

/// cwd: the CRI working_dir (must be absolute), else the image's WorkingDir, else "/".
fn working_dir(config: &cri::ContainerConfig, image: &ImageDefaults) -> Result<PathBuf, SpecError> {
    if !config.working_dir.is_empty() {
        if !config.working_dir.starts_with('/') {
            return Err(SpecError::invalid(
                "working_dir",
                format!("{:?} is not an absolute path", config.working_dir),
            ));
        }
        return Ok(PathBuf::from(&config.working_dir));
    }
    if !image.working_dir.is_empty() {
        return Ok(Path::new("/").join(image.working_dir.trim_start_matches('/')));
    }
    Ok(PathBuf::from("/"))
}

// ---- users and groups ----------------------------------------------------------------

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

/// The process user, as containerd: the CRI `run_as_username` or `run_as_user`, with
/// `run_as_group`; else the image's User (`uid`, `uid:gid`, `name`, `name:group`). Names
/// are looked up in the image's /etc/passwd and /etc/group. Without a group, the gid is
/// the user's from /etc/passwd (0 if the uid is not there). Additional gids: the primary
/// gid, the groups that list the user in /etc/group (unless supplemental_groups_policy is
/// Strict), then the CRI supplemental_groups.
fn resolve_user(
    rootfs: &Path,
    sc: &cri::LinuxContainerSecurityContext,
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
                Some(Ident::Id(id_from_i64(u.value, F_USER)?)),
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
        Some(g) => Some(Ident::Id(id_from_i64(g.value, F_GROUP)?)),
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
    let strict = sc.supplemental_groups_policy == cri::SupplementalGroupsPolicy::Strict as i32;
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

// ---- mounts --------------------------------------------------------------------------

/// Docker's (and containerd's) masked paths.
pub const DEFAULT_MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Docker's (and containerd's) read-only paths.
pub const DEFAULT_READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

fn mount(dest: &str, typ: &str, source: &Path, options: &[&str]) -> Mount {
    let mut m = Mount::default();
    m.set_destination(PathBuf::from(dest));
    m.set_typ(Some(typ.to_string()));
    m.set_source(Some(source.to_path_buf()));
    m.set_options(Some(options.iter().map(|s| s.to_string()).collect()));
    m
}

/// `path` without `.` components and trailing slashes, for comparing destinations.
fn normalize(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}

/// The mounts: the default set, /dev/shm, the pod's /etc files, then the CRI mounts
/// (sorted so parents come before children). A CRI mount over a destination of the
/// first groups replaces it. Also returns the rootfs propagation the CRI mounts need
/// (shared for BIDIRECTIONAL, slave for HOST_TO_CONTAINER, as containerd; recursive in
/// every runtime, and spelled as the OCI spec allows: libcontainer refuses `rshared`).
fn mounts(
    config: &cri::ContainerConfig,
    pod: &PodContext,
    privileged: bool,
    readonly_rootfs: bool,
) -> Result<(Vec<Mount>, Option<String>), SpecError> {
    let sys_mode = if privileged { "rw" } else { "ro" };
    let mut base = vec![
        mount(
            "/proc",
            "proc",
            Path::new("proc"),
            &["nosuid", "noexec", "nodev"],
        ),
        mount(
            "/dev",
            "tmpfs",
            Path::new("tmpfs"),
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            Path::new("devpts"),
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            Path::new("mqueue"),
            &["nosuid", "noexec", "nodev"],
        ),
        mount(
            "/sys",
            "sysfs",
            Path::new("sysfs"),
            &["nosuid", "noexec", "nodev", sys_mode],
        ),
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            Path::new("cgroup"),
            &["nosuid", "noexec", "nodev", "relatime", sys_mode],
        ),
    ];
    base.push(match &pod.shm_path {
        Some(p) => mount("/dev/shm", "bind", p, &["rbind", "rprivate", "rw"]),
        None => mount(
            "/dev/shm",
            "tmpfs",
            Path::new("shm"),
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
    });
    let etc_mode = if readonly_rootfs { "ro" } else { "rw" };
    for (dest, src) in [
        ("/etc/hostname", &pod.hostname_file),
        ("/etc/hosts", &pod.hosts),
        ("/etc/resolv.conf", &pod.resolv_conf),
    ] {
        if let Some(src) = src {
            base.push(mount(dest, "bind", src, &["rbind", "rprivate", etc_mode]));
        }
    }

    let mut user_mounts: Vec<Mount> = Vec::new();
    let mut propagation: Option<&str> = None;
    for (i, m) in config.mounts.iter().enumerate() {
        let cfield = format!("mounts[{i}].container_path");
        let hfield = format!("mounts[{i}].host_path");
        let dest = Path::new(&m.container_path);
        if !dest.is_absolute() {
            return Err(SpecError::invalid(
                cfield,
                format!("{:?} is not an absolute path", m.container_path),
            ));
        }
        if dest.components().any(|c| c == Component::ParentDir) {
            return Err(SpecError::invalid(
                cfield,
                format!("{:?} contains '..'", m.container_path),
            ));
        }
        if m.image.as_ref().is_some_and(|img| !img.image.is_empty()) {
            return Err(SpecError::Unsupported {
                field: format!("mounts[{i}].image"),
                reason: "image volume mounts".into(),
            });
        }
        if !m.uid_mappings.is_empty() || !m.gid_mappings.is_empty() {
            return Err(SpecError::Unsupported {
                field: format!("mounts[{i}].uid_mappings"),
                reason: "id-mapped mounts".into(),
            });
        }
        let src = Path::new(&m.host_path);
        if !src.is_absolute() {
            return Err(SpecError::invalid(
                hfield,
                format!("{:?} is not an absolute path", m.host_path),
            ));
        }
        let prop = match cri::MountPropagation::try_from(m.propagation) {
            Ok(cri::MountPropagation::PropagationPrivate) => "rprivate",
            Ok(cri::MountPropagation::PropagationHostToContainer) => {
                if propagation.is_none() {
                    propagation = Some("slave");
                }
                "rslave"
            }
            Ok(cri::MountPropagation::PropagationBidirectional) => {
                propagation = Some("shared");
                "rshared"
            }
            Err(_) => {
                return Err(SpecError::invalid(
                    format!("mounts[{i}].propagation"),
                    format!("unknown propagation {}", m.propagation),
                ))
            }
        };
        let mut options = vec!["rbind", prop];
        if m.recursive_read_only {
            if !m.readonly || prop != "rprivate" {
                return Err(SpecError::invalid(
                    format!("mounts[{i}].recursive_read_only"),
                    "needs readonly and PROPAGATION_PRIVATE",
                ));
            }
            options.push("rro");
        } else {
            options.push(if m.readonly { "ro" } else { "rw" });
        }
        // selinux_relabel is ignored: wharf does not run with SELinux labels.
        user_mounts.push(mount(&m.container_path, "bind", src, &options));
    }

    let user_dests: HashSet<PathBuf> = user_mounts
        .iter()
        .map(|m| normalize(m.destination()))
        .collect();
    base.retain(|m| !user_dests.contains(&normalize(m.destination())));
    user_mounts.sort_by_key(|m| normalize(m.destination()).components().count());
    base.extend(user_mounts);
    Ok((base, propagation.map(str::to_string)))
}

// ---- namespaces, sysctls, cgroups ----------------------------------------------------

fn namespace(typ: LinuxNamespaceType, path: Option<&PathBuf>) -> LinuxNamespace {
    let mut ns = LinuxNamespace::default();
    ns.set_typ(typ);
    ns.set_path(path.cloned());
    ns
}

/// Namespaces: a new mount namespace; network, IPC and UTS of the pod (none = host);
/// PID per the container's NamespaceOption (POD: the pod's, CONTAINER: new, NODE: host,
/// TARGET: the target's, which the caller resolves); a new cgroup namespace on cgroup v2.
fn namespaces(
    sc: &cri::LinuxContainerSecurityContext,
    pod: &PodContext,
    opts: &SpecOptions,
) -> Result<Vec<LinuxNamespace>, SpecError> {
    const F_PID: &str = "linux.security_context.namespace_options.pid";
    let ns_opts = sc.namespace_options.clone().unwrap_or_default();
    if let Some(userns) = &ns_opts.userns_options {
        if userns.mode != cri::NamespaceMode::Node as i32 {
            return Err(SpecError::Unsupported {
                field: "linux.security_context.namespace_options.userns_options".into(),
                reason: "user namespaces".into(),
            });
        }
    }
    let mut out = vec![namespace(LinuxNamespaceType::Mount, None)];
    if let Some(p) = &pod.netns_path {
        out.push(namespace(LinuxNamespaceType::Network, Some(p)));
    }
    if let Some(p) = &pod.ipc_ns_path {
        out.push(namespace(LinuxNamespaceType::Ipc, Some(p)));
    }
    if let Some(p) = &pod.uts_ns_path {
        out.push(namespace(LinuxNamespaceType::Uts, Some(p)));
    }
    match cri::NamespaceMode::try_from(ns_opts.pid) {
        Ok(cri::NamespaceMode::Pod) => {
            out.push(namespace(LinuxNamespaceType::Pid, pod.pid_ns_path.as_ref()));
        }
        Ok(cri::NamespaceMode::Container) => out.push(namespace(LinuxNamespaceType::Pid, None)),
        Ok(cri::NamespaceMode::Node) => {}
        Ok(cri::NamespaceMode::Target) => match &opts.target_pid_ns_path {
            Some(p) => out.push(namespace(LinuxNamespaceType::Pid, Some(p))),
            None => {
                return Err(SpecError::Unsupported {
                    field: F_PID.into(),
                    reason: format!(
                        "TARGET pid mode (target_id {:?}) needs the target container's PID \
                         namespace, which was not resolved",
                        ns_opts.target_id
                    ),
                })
            }
        },
        Err(_) => {
            return Err(SpecError::invalid(
                F_PID,
                format!("unknown mode {}", ns_opts.pid),
            ));
        }
    }
    if opts.cgroup_v2 {
        out.push(namespace(LinuxNamespaceType::Cgroup, None));
    }
    Ok(out)
}

/// The pod's sysctls, which must be namespaced (see [`check_sysctls`]).
fn sysctls(pod: &PodContext) -> Result<HashMap<String, String>, SpecError> {
    check_sysctls(
        &pod.sysctls,
        pod.netns_path.is_some(),
        pod.ipc_ns_path.is_some(),
    )?;
    Ok(pod.sysctls.clone())
}

/// Sysctls a pod may set (RunPodSandbox checks them before anything is made, the spec
/// again): only namespaced ones, as runc allows them. IPC ones (kernel.shm*,
/// kernel.msg*, kernel.sem, fs.mqueue.*) need the pod's IPC namespace; net.* and
/// kernel.domainname the pod's network (and UTS) namespace. A key is dot-separated
/// words: a `/` or an empty or `..` part could name another file under /proc/sys
/// (`net.ipv4/../../kernel/panic` is kernel.panic). Anything else would change the host.
pub fn check_sysctls(
    sysctls: &HashMap<String, String>,
    pod_network_ns: bool,
    pod_ipc_ns: bool,
) -> Result<(), SpecError> {
    let mut keys: Vec<&String> = sysctls.keys().collect();
    keys.sort();
    for key in keys {
        let field = format!("linux.sysctls[{key:?}]");
        let well_formed = !key.contains('/')
            && key
                .split('.')
                .all(|part| !part.is_empty() && part != ".." && !part.contains('\0'));
        if !well_formed {
            return Err(SpecError::invalid(
                field,
                "not a sysctl name: dot-separated words, without '/' or '..'",
            ));
        }
        let ipc = key.starts_with("kernel.shm")
            || key.starts_with("kernel.msg")
            || key == "kernel.sem"
            || key.starts_with("fs.mqueue.");
        let net = key.starts_with("net.") || key == "kernel.domainname";
        if ipc {
            if !pod_ipc_ns {
                return Err(SpecError::invalid(
                    field,
                    "IPC sysctls are not allowed with host IPC",
                ));
            }
        } else if net {
            if !pod_network_ns {
                return Err(SpecError::invalid(
                    field,
                    "network and UTS sysctls are not allowed with host network",
                ));
            }
        } else {
            return Err(SpecError::invalid(
                field,
                "not a namespaced sysctl: it would change the host",
            ));
        }
    }
    Ok(())
}

/// `{cgroup_parent}/wharf-{container_id}` (cgroupfs driver); an empty parent is `/wharf`.
fn cgroups_path(parent: &str, id: &str) -> Result<PathBuf, SpecError> {
    let parent = if parent.is_empty() { "/wharf" } else { parent };
    if Path::new(parent)
        .components()
        .any(|c| c == Component::ParentDir)
    {
        return Err(SpecError::invalid(
            "linux.cgroup_parent",
            format!("{parent:?} contains '..'"),
        ));
    }
    let parent = parent.trim_end_matches('/');
    let parent = if parent.starts_with('/') {
        parent.to_string()
    } else {
        format!("/{parent}")
    };
    Ok(PathBuf::from(format!("{parent}/wharf-{id}")))
}

/// The daemon's own oom_score_adj.
fn current_oom_score_adj() -> Result<i64, SpecError> {
    let path = PathBuf::from("/proc/self/oom_score_adj");
    let text = std::fs::read_to_string(&path).map_err(|source| SpecError::Host {
        path: path.clone(),
        source,
    })?;
    text.trim().parse().map_err(|_| SpecError::Host {
        path,
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not a number"),
    })
}

/// The container's oom_score_adj: the request (-1000..=1000), raised to the daemon's own
/// when `restrict` is set (a process cannot lower it without CAP_SYS_RESOURCE).
fn oom_score_adj(requested: i64, restrict: bool) -> Result<i32, SpecError> {
    if !(-1000..=1000).contains(&requested) {
        return Err(SpecError::invalid(
            "linux.resources.oom_score_adj",
            format!("{requested} is outside -1000..1000"),
        ));
    }
    let mut value = requested;
    if restrict {
        value = value.max(current_oom_score_adj()?);
    }
    // In range -1000..=1000, so it fits.
    Ok(value as i32)
}

/// Whether the host's cgroups can limit swap, as containerd checks before setting it
/// (runc fails to write a swap limit the kernel does not account): cgroup v1 with
/// `memory.memsw.limit_in_bytes`, or cgroup v2 with `memory.swap.max` in a child cgroup.
pub fn host_swap_limit_supported() -> bool {
    let root = Path::new("/sys/fs/cgroup");
    if root.join("memory/memory.memsw.limit_in_bytes").exists() {
        return true;
    }
    if !root.join("cgroup.controllers").exists() {
        return false;
    }
    std::fs::read_dir(root)
        .map(|dirs| {
            dirs.flatten()
                .any(|d| d.path().join("memory.swap.max").exists())
        })
        .unwrap_or(false)
}

/// linux.resources from the CRI resources: CPU shares/quota/period, cpuset, memory
/// limit (when the host can limit swap: swap = limit unless memory_swap_limit_in_bytes
/// is set, so the container cannot swap, as containerd), hugepage limits, the cgroup v2 `unified` map, pids limit from
/// the options.
pub fn resources(
    res: Option<&cri::LinuxContainerResources>,
    opts: &SpecOptions,
) -> Result<LinuxResources, SpecError> {
    let mut out = LinuxResources::default();
    if let Some(limit) = opts.pids_limit.filter(|l| *l > 0) {
        let mut pids = LinuxPids::default();
        pids.set_limit(limit);
        out.set_pids(Some(pids));
    }
    let Some(r) = res else {
        return Ok(out);
    };
    let nonneg = |v: i64, field: &str| -> Result<Option<u64>, SpecError> {
        match v {
            0 => Ok(None),
            v if v > 0 => Ok(Some(v as u64)),
            v => Err(SpecError::invalid(
                format!("linux.resources.{field}"),
                format!("{v} is negative"),
            )),
        }
    };
    let mut cpu = LinuxCpu::default();
    cpu.set_shares(nonneg(r.cpu_shares, "cpu_shares")?);
    cpu.set_period(nonneg(r.cpu_period, "cpu_period")?);
    cpu.set_quota((r.cpu_quota != 0).then_some(r.cpu_quota));
    cpu.set_cpus((!r.cpuset_cpus.is_empty()).then(|| r.cpuset_cpus.clone()));
    cpu.set_mems((!r.cpuset_mems.is_empty()).then(|| r.cpuset_mems.clone()));
    if cpu != LinuxCpu::default() {
        out.set_cpu(Some(cpu));
    }
    if let Some(limit) = nonneg(r.memory_limit_in_bytes, "memory_limit_in_bytes")? {
        let limit = limit as i64;
        let mut mem = LinuxMemory::default();
        mem.set_limit(Some(limit));
        if opts.swap_limit {
            let swap = if r.memory_swap_limit_in_bytes != 0 {
                r.memory_swap_limit_in_bytes
            } else {
                limit
            };
            mem.set_swap(Some(swap));
        }
        out.set_memory(Some(mem));
    }
    if !r.hugepage_limits.is_empty() {
        let mut pages = Vec::new();
        for (i, h) in r.hugepage_limits.iter().enumerate() {
            if h.page_size.is_empty() {
                return Err(SpecError::invalid(
                    format!("linux.resources.hugepage_limits[{i}].page_size"),
                    "empty page size",
                ));
            }
            let limit = i64::try_from(h.limit).map_err(|_| {
                SpecError::invalid(
                    format!("linux.resources.hugepage_limits[{i}].limit"),
                    format!("{} is too large", h.limit),
                )
            })?;
            let mut p = LinuxHugepageLimit::default();
            p.set_page_size(h.page_size.clone());
            p.set_limit(limit);
            pages.push(p);
        }
        out.set_hugepage_limits(Some(pages));
    }
    if !r.unified.is_empty() {
        out.set_unified(Some(r.unified.clone()));
    }
    Ok(out)
}

fn device_rule(
    allow: bool,
    typ: LinuxDeviceType,
    major: Option<i64>,
    minor: Option<i64>,
    access: &str,
) -> LinuxDeviceCgroup {
    let mut d = LinuxDeviceCgroup::default();
    d.set_allow(allow);
    d.set_typ(Some(typ));
    d.set_major(major);
    d.set_minor(minor);
    d.set_access(Some(access.to_string()));
    d
}

/// The device cgroup: everything for a privileged container; otherwise deny all, then
/// allow mknod of any device and use of the standard nodes (null, zero, full, random,
/// urandom, tty, console, ptmx, pts, tun), as containerd's default.
fn device_rules(privileged: bool) -> Vec<LinuxDeviceCgroup> {
    use LinuxDeviceType::{A, B, C};
    if privileged {
        return vec![device_rule(true, A, None, None, "rwm")];
    }
    let mut rules = vec![
        device_rule(false, A, None, None, "rwm"),
        device_rule(true, C, None, None, "m"),
        device_rule(true, B, None, None, "m"),
    ];
    for (major, minor) in [
        (1, 3),
        (1, 5),
        (1, 7),
        (1, 8),
        (1, 9),
        (5, 0),
        (5, 1),
        (5, 2),
        (10, 200),
    ] {
        rules.push(device_rule(true, C, Some(major), Some(minor), "rwm"));
    }
    rules.push(device_rule(true, C, Some(136), None, "rwm"));
    rules
}

/// The CRI devices: each host device node (followed if a symlink, as kubelet passes
/// /dev paths) becomes a device node at `container_path` with the host node's type,
/// numbers and mode, and a device cgroup rule allowing `permissions` (a subset of
/// "rwm", default "rwm").
fn devices(
    config: &cri::ContainerConfig,
) -> Result<(Vec<LinuxDevice>, Vec<LinuxDeviceCgroup>), SpecError> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut nodes = Vec::new();
    let mut rules = Vec::new();
    for (i, d) in config.devices.iter().enumerate() {
        let dest = Path::new(&d.container_path);
        if !dest.is_absolute() || dest.components().any(|c| c == Component::ParentDir) {
            return Err(SpecError::invalid(
                format!("devices[{i}].container_path"),
                format!(
                    "{:?} must be an absolute path without '..'",
                    d.container_path
                ),
            ));
        }
        let hfield = format!("devices[{i}].host_path");
        let meta = std::fs::metadata(&d.host_path)
            .map_err(|e| SpecError::invalid(&hfield, format!("{:?}: {e}", d.host_path)))?;
        let typ = if meta.file_type().is_char_device() {
            LinuxDeviceType::C
        } else if meta.file_type().is_block_device() {
            LinuxDeviceType::B
        } else {
            return Err(SpecError::invalid(
                hfield,
                format!("{:?} is not a device node", d.host_path),
            ));
        };
        let perms = if d.permissions.is_empty() {
            "rwm"
        } else {
            d.permissions.as_str()
        };
        if !perms.chars().all(|c| "rwm".contains(c)) {
            return Err(SpecError::invalid(
                format!("devices[{i}].permissions"),
                format!("{perms:?} is not a subset of \"rwm\""),
            ));
        }
        let major = nix::sys::stat::major(meta.rdev()) as i64;
        let minor = nix::sys::stat::minor(meta.rdev()) as i64;
        let mut node = LinuxDevice::default();
        node.set_path(dest.to_path_buf());
        node.set_typ(typ);
        node.set_major(major);
        node.set_minor(minor);
        node.set_file_mode(Some(meta.mode() & 0o7777));
        node.set_uid(Some(0));
        node.set_gid(Some(0));
        nodes.push(node);
        rules.push(device_rule(true, typ, Some(major), Some(minor), perms));
    }
    Ok((nodes, rules))
}

/// The seccomp profile, as containerd: none for privileged containers; `RuntimeDefault`
/// -> wharf's default profile for the final capability set; `Unconfined` -> none;
/// `Localhost` -> the JSON file. When the CRI leaves `seccomp` unset (and the deprecated
/// `seccomp_profile_path` too), the container is unconfined, as containerd does unless
/// configured otherwise; kubelet sends RuntimeDefault when its `seccompDefault` is on.
fn seccomp_profile(
    sc: &cri::LinuxContainerSecurityContext,
    privileged: bool,
    caps: &HashSet<Capability>,
    opts: &SpecOptions,
) -> Result<Option<LinuxSeccomp>, SpecError> {
    use cri::security_profile::ProfileType;
    if privileged {
        return Ok(None);
    }
    let load = |reference: &str| -> Result<Option<LinuxSeccomp>, SpecError> {
        let path = seccomp::localhost_path(reference, &opts.seccomp_profile_root)?;
        Ok(Some(seccomp::load_profile(
            &path,
            seccomp::host_arch(),
            seccomp::host_kernel(),
            caps,
        )?))
    };
    if let Some(profile) = &sc.seccomp {
        if profile.profile_type != ProfileType::Localhost as i32
            && !profile.localhost_ref.is_empty()
        {
            return Err(SpecError::invalid(
                "linux.security_context.seccomp.localhost_ref",
                "may only be set when profile_type is Localhost",
            ));
        }
        return match ProfileType::try_from(profile.profile_type) {
            Ok(ProfileType::RuntimeDefault) => Ok(Some(seccomp::default_profile(caps))),
            Ok(ProfileType::Unconfined) => Ok(None),
            Ok(ProfileType::Localhost) => load(&profile.localhost_ref),
            Err(_) => Err(SpecError::invalid(
                "linux.security_context.seccomp.profile_type",
                format!("unknown profile type {}", profile.profile_type),
            )),
        };
    }
    #[allow(deprecated)]
    let old = sc.seccomp_profile_path.as_str();
    match old {
        "" | "unconfined" => Ok(None),
        "runtime/default" | "docker/default" => Ok(Some(seccomp::default_profile(caps))),
        other if other.starts_with("localhost/") => load(other),
        other => Err(SpecError::invalid(
            "linux.security_context.seccomp_profile_path",
            format!("unknown profile {other:?}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::LinuxSeccompAction;

    fn image() -> ImageDefaults {
        ImageDefaults {
            entrypoint: vec!["/entry".into()],
            cmd: vec!["cmd1".into(), "cmd2".into()],
            env: vec!["PATH=/image/bin".into(), "A=image".into(), "B=image".into()],
            working_dir: "/work".into(),
            user: String::new(),
            stop_signal: Some("SIGQUIT".into()),
        }
    }

    fn rootfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\n\
             # comment\n\
             app:x:1000:1001::/home/app:/bin/sh\n\
             bad:line\n\
             svc:x:2000:2000::/:/bin/false\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("etc/group"),
            "root:x:0:\napp:x:1001:\nwheel:x:10:app,svc\naudio:x:29:app\nstaff:x:50:\n",
        )
        .unwrap();
        dir
    }

    fn opts(root: &Path) -> SpecOptions {
        SpecOptions {
            rootfs: root.to_path_buf(),
            container_id: "c1".into(),
            restrict_oom_score_adj: false,
            seccomp_profile_root: root.join("seccomp"),
            cgroup_v2: false,
            swap_limit: true,
            pids_limit: None,
            target_pid_ns_path: None,
            bounding_capabilities: None,
        }
    }

    fn pod() -> PodContext {
        PodContext {
            sandbox_id: "pod1".into(),
            hostname: "podhost".into(),
            netns_path: Some("/run/wharf/netns/pod1".into()),
            ipc_ns_path: Some("/run/wharf/ipcns/pod1".into()),
            uts_ns_path: Some("/run/wharf/utsns/pod1".into()),
            pid_ns_path: Some("/proc/123/ns/pid".into()),
            cgroup_parent: "/kubepods/pod1".into(),
            shm_path: Some("/run/wharf/shm/pod1".into()),
            resolv_conf: Some("/run/wharf/pods/pod1/resolv.conf".into()),
            hosts: Some("/run/wharf/pods/pod1/hosts".into()),
            hostname_file: None,
            sysctls: HashMap::new(),
        }
    }

    fn config() -> cri::ContainerConfig {
        cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: "web".into(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: "busybox:latest".into(),
                ..Default::default()
            }),
            linux: Some(cri::LinuxContainerConfig::default()),
            ..Default::default()
        }
    }

    fn sc(cfg: &mut cri::ContainerConfig) -> &mut cri::LinuxContainerSecurityContext {
        cfg.linux
            .get_or_insert_with(Default::default)
            .security_context
            .get_or_insert_with(Default::default)
    }

    fn build(cfg: &cri::ContainerConfig) -> Result<Spec, SpecError> {
        let root = rootfs();
        container_spec(cfg, &pod(), &image(), &opts(root.path()))
    }

    fn field(err: SpecError) -> String {
        match err {
            SpecError::InvalidArgument { field, .. } | SpecError::Unsupported { field, .. } => {
                field
            }
            other => panic!("not a field error: {other}"),
        }
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn image_defaults_from_json() {
        let json = br#"{"architecture":"amd64","config":{"Entrypoint":["/bin/sh","-c"],
            "Cmd":null,"Env":["PATH=/bin"],"WorkingDir":"/srv","User":"1000:1000",
            "StopSignal":"SIGTERM"},"rootfs":{"type":"layers","diff_ids":[]}}"#;
        let d = ImageDefaults::from_config_json(json).unwrap();
        assert_eq!(d.entrypoint, s(&["/bin/sh", "-c"]));
        assert!(d.cmd.is_empty());
        assert_eq!(d.working_dir, "/srv");
        assert_eq!(d.user, "1000:1000");
        assert_eq!(d.stop_signal.as_deref(), Some("SIGTERM"));
        assert_eq!(
            ImageDefaults::from_config_json(b"{}").unwrap(),
            ImageDefaults::default()
        );
        assert!(ImageDefaults::from_config_json(b"[").is_err());
    }

    #[test]
    fn args_merge() {
        let img = image();
        let mut c = config();
        assert_eq!(
            process_args(&c, &img).unwrap(),
            s(&["/entry", "cmd1", "cmd2"])
        );
        c.args = s(&["a1"]);
        assert_eq!(process_args(&c, &img).unwrap(), s(&["/entry", "a1"]));
        c.command = s(&["/bin/echo"]);
        assert_eq!(process_args(&c, &img).unwrap(), s(&["/bin/echo", "a1"]));
        c.args.clear();
        assert_eq!(process_args(&c, &img).unwrap(), s(&["/bin/echo"]));
        let err = process_args(&config(), &ImageDefaults::default()).unwrap_err();
        assert!(err.to_string().contains("no command specified"), "{err}");
        assert_eq!(field(err), "command");
    }

    #[test]
    fn env_override_and_cwd() {
        let mut c = config();
        c.envs = vec![
            cri::KeyValue {
                key: "A".into(),
                value: "cri".into(),
            },
            cri::KeyValue {
                key: "C".into(),
                value: "x=y".into(),
            },
        ];
        let env = process_env(&c, &image(), "podhost");
        assert_eq!(
            env,
            s(&[
                "PATH=/image/bin",
                "HOSTNAME=podhost",
                "A=cri",
                "B=image",
                "C=x=y"
            ])
        );
        let env = process_env(&config(), &ImageDefaults::default(), "");
        assert_eq!(env, s(&[DEFAULT_PATH]));

        assert_eq!(working_dir(&c, &image()).unwrap(), PathBuf::from("/work"));
        assert_eq!(
            working_dir(&c, &ImageDefaults::default()).unwrap(),
            PathBuf::from("/")
        );
        c.working_dir = "/cri".into();
        assert_eq!(working_dir(&c, &image()).unwrap(), PathBuf::from("/cri"));
        c.working_dir = "rel".into();
        assert_eq!(field(working_dir(&c, &image()).unwrap_err()), "working_dir");
    }

    fn user_of(
        sc: &cri::LinuxContainerSecurityContext,
        image_user: &str,
    ) -> Result<User, SpecError> {
        let root = rootfs();
        resolve_user(root.path(), sc, image_user)
    }

    #[test]
    fn user_from_image() {
        let none = cri::LinuxContainerSecurityContext::default();
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
        let mut sc = cri::LinuxContainerSecurityContext {
            run_as_username: "svc".into(),
            supplemental_groups: vec![500, 10],
            ..Default::default()
        };
        let u = user_of(&sc, "app").unwrap();
        assert_eq!((u.uid(), u.gid()), (2000, 2000));
        assert_eq!(u.additional_gids().clone().unwrap(), vec![2000, 10, 500]);

        sc.run_as_username.clear();
        sc.run_as_user = Some(cri::Int64Value { value: 1000 });
        sc.run_as_group = Some(cri::Int64Value { value: 3000 });
        let u = user_of(&sc, "root").unwrap();
        assert_eq!((u.uid(), u.gid()), (1000, 3000));
        assert_eq!(
            u.additional_gids().clone().unwrap(),
            vec![3000, 10, 29, 500]
        );

        sc.supplemental_groups_policy = cri::SupplementalGroupsPolicy::Strict as i32;
        let u = user_of(&sc, "").unwrap();
        assert_eq!(u.additional_gids().clone().unwrap(), vec![3000, 500, 10]);

        let bad = cri::LinuxContainerSecurityContext {
            run_as_username: "ghost".into(),
            ..Default::default()
        };
        assert_eq!(
            field(user_of(&bad, "").unwrap_err()),
            "linux.security_context.run_as_username"
        );
        let bad = cri::LinuxContainerSecurityContext {
            run_as_group: Some(cri::Int64Value { value: 5 }),
            ..Default::default()
        };
        assert_eq!(
            field(user_of(&bad, "").unwrap_err()),
            "linux.security_context.run_as_group"
        );
        let bad = cri::LinuxContainerSecurityContext {
            run_as_user: Some(cri::Int64Value { value: -1 }),
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
        let none = cri::LinuxContainerSecurityContext::default();
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

    fn caps_of(spec: &Spec) -> HashSet<Capability> {
        let p = spec.process().as_ref().unwrap();
        p.capabilities()
            .as_ref()
            .unwrap()
            .bounding()
            .clone()
            .unwrap()
            .into_iter()
            .collect()
    }

    #[test]
    fn capabilities_in_spec() {
        let spec = build(&config()).unwrap();
        let set = caps_of(&spec);
        assert_eq!(set.len(), 14);
        assert!(set.contains(&Capability::NetRaw));
        let c = spec
            .process()
            .as_ref()
            .unwrap()
            .capabilities()
            .clone()
            .unwrap();
        assert!(c.inheritable().as_ref().unwrap().is_empty());
        assert!(c.ambient().as_ref().unwrap().is_empty());

        let mut cfg = config();
        sc(&mut cfg).capabilities = Some(cri::Capability {
            add_capabilities: s(&["CAP_SYS_ADMIN"]),
            drop_capabilities: s(&["NET_RAW"]),
            add_ambient_capabilities: vec![],
        });
        let set = caps_of(&build(&cfg).unwrap());
        assert!(set.contains(&Capability::SysAdmin));
        assert!(!set.contains(&Capability::NetRaw));

        sc(&mut cfg).capabilities = Some(cri::Capability {
            add_capabilities: s(&["CAP_TELEPORT"]),
            ..Default::default()
        });
        let err = build(&cfg).unwrap_err();
        assert!(err.to_string().contains("CAP_TELEPORT"), "{err}");

        sc(&mut cfg).capabilities = None;
        sc(&mut cfg).privileged = true;
        assert_eq!(caps_of(&build(&cfg).unwrap()).len(), caps::ALL.len());
    }

    #[test]
    fn masked_paths_default_override_privileged() {
        let spec = build(&config()).unwrap();
        let l = spec.linux().as_ref().unwrap();
        let masked = l.masked_paths().clone().unwrap();
        assert!(masked.contains(&"/proc/kcore".to_string()));
        assert!(masked.contains(&"/sys/firmware".to_string()));
        assert!(l
            .readonly_paths()
            .clone()
            .unwrap()
            .contains(&"/proc/sys".to_string()));
        assert!(
            l.seccomp().is_none(),
            "unset seccomp is unconfined, as containerd"
        );

        let mut cfg = config();
        sc(&mut cfg).masked_paths = s(&["/proc/x"]);
        let spec = build(&cfg).unwrap();
        assert_eq!(
            spec.linux()
                .as_ref()
                .unwrap()
                .masked_paths()
                .clone()
                .unwrap(),
            s(&["/proc/x"])
        );

        let mut cfg = config();
        sc(&mut cfg).privileged = true;
        sc(&mut cfg).seccomp = Some(cri::SecurityProfile {
            profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
            localhost_ref: String::new(),
        });
        let spec = build(&cfg).unwrap();
        let l = spec.linux().as_ref().unwrap();
        assert!(l.masked_paths().clone().unwrap().is_empty());
        assert!(l.readonly_paths().clone().unwrap().is_empty());
        assert!(l.seccomp().is_none());
        let devices = l.resources().as_ref().unwrap().devices().clone().unwrap();
        assert_eq!(devices.len(), 1);
        assert!(devices[0].allow());
        let sys = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.destination() == Path::new("/sys"))
            .unwrap();
        assert!(sys.options().as_ref().unwrap().contains(&"rw".to_string()));
    }

    fn find<'a>(spec: &'a Spec, dest: &str) -> Vec<&'a Mount> {
        spec.mounts()
            .as_ref()
            .unwrap()
            .iter()
            .filter(|m| m.destination() == Path::new(dest))
            .collect()
    }

    #[test]
    fn mounts_defaults_and_cri() {
        let spec = build(&config()).unwrap();
        for d in [
            "/proc",
            "/dev",
            "/dev/pts",
            "/dev/mqueue",
            "/sys",
            "/sys/fs/cgroup",
            "/dev/shm",
            "/etc/hosts",
            "/etc/resolv.conf",
        ] {
            assert_eq!(find(&spec, d).len(), 1, "{d}");
        }
        assert!(find(&spec, "/etc/hostname").is_empty());
        let shm = find(&spec, "/dev/shm")[0];
        assert_eq!(shm.typ().as_deref(), Some("bind"));
        assert!(find(&spec, "/sys")[0]
            .options()
            .as_ref()
            .unwrap()
            .contains(&"ro".to_string()));

        let mut cfg = config();
        let m = |c: &str, h: &str, ro: bool, p: cri::MountPropagation| cri::Mount {
            container_path: c.into(),
            host_path: h.into(),
            readonly: ro,
            propagation: p as i32,
            ..Default::default()
        };
        cfg.mounts = vec![
            m(
                "/data/sub",
                "/host/sub",
                false,
                cri::MountPropagation::PropagationPrivate,
            ),
            m(
                "/data",
                "/host/data",
                true,
                cri::MountPropagation::PropagationHostToContainer,
            ),
            m(
                "/shared",
                "/host/shared",
                false,
                cri::MountPropagation::PropagationBidirectional,
            ),
            m(
                "/etc/hosts",
                "/my/hosts",
                true,
                cri::MountPropagation::PropagationPrivate,
            ),
        ];
        let spec = build(&cfg).unwrap();
        let opts_of = |d: &str| find(&spec, d)[0].options().clone().unwrap();
        assert_eq!(opts_of("/data"), s(&["rbind", "rslave", "ro"]));
        assert_eq!(opts_of("/data/sub"), s(&["rbind", "rprivate", "rw"]));
        assert_eq!(opts_of("/shared"), s(&["rbind", "rshared", "rw"]));
        let hosts = find(&spec, "/etc/hosts");
        assert_eq!(hosts.len(), 1);
        assert_eq!(hosts[0].source().as_deref(), Some(Path::new("/my/hosts")));
        let order: Vec<&Path> = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| m.destination().as_path())
            .collect();
        let pos = |d: &str| order.iter().position(|p| *p == Path::new(d)).unwrap();
        assert!(pos("/data") < pos("/data/sub"));
        assert_eq!(
            spec.linux()
                .as_ref()
                .unwrap()
                .rootfs_propagation()
                .as_deref(),
            Some("shared")
        );

        let mut cfg = config();
        cfg.mounts = vec![
            m(
                "/ok",
                "/host",
                false,
                cri::MountPropagation::PropagationPrivate,
            ),
            m(
                "rel/path",
                "/host",
                false,
                cri::MountPropagation::PropagationPrivate,
            ),
        ];
        assert_eq!(field(build(&cfg).unwrap_err()), "mounts[1].container_path");
        cfg.mounts[1] = m(
            "/a/../etc",
            "/host",
            false,
            cri::MountPropagation::PropagationPrivate,
        );
        assert_eq!(field(build(&cfg).unwrap_err()), "mounts[1].container_path");
        cfg.mounts[1] = m(
            "/a",
            "host",
            false,
            cri::MountPropagation::PropagationPrivate,
        );
        assert_eq!(field(build(&cfg).unwrap_err()), "mounts[1].host_path");

        // no pod shm: a private tmpfs
        let root = rootfs();
        let mut p = pod();
        p.shm_path = None;
        let spec = container_spec(&config(), &p, &image(), &opts(root.path())).unwrap();
        assert_eq!(find(&spec, "/dev/shm")[0].typ().as_deref(), Some("tmpfs"));
    }

    #[test]
    fn cri_devices() {
        let mut cfg = config();
        cfg.devices = vec![cri::Device {
            container_path: "/dev/mynull".into(),
            host_path: "/dev/null".into(),
            permissions: "rw".into(),
        }];
        let spec = build(&cfg).unwrap();
        let l = spec.linux().as_ref().unwrap();
        let dev = &l.devices().clone().unwrap()[0];
        assert_eq!(dev.path(), Path::new("/dev/mynull"));
        assert_eq!(
            (dev.typ(), dev.major(), dev.minor()),
            (LinuxDeviceType::C, 1, 3)
        );
        let rules = l.resources().as_ref().unwrap().devices().clone().unwrap();
        let last = rules.last().unwrap();
        assert!(last.allow());
        assert_eq!((last.major(), last.minor()), (Some(1), Some(3)));
        assert_eq!(last.access().as_deref(), Some("rw"));

        cfg.devices[0].permissions = "rwx".into();
        assert_eq!(field(build(&cfg).unwrap_err()), "devices[0].permissions");
        cfg.devices[0].permissions.clear();
        cfg.devices[0].host_path = "/etc/hostname-nope".into();
        assert_eq!(field(build(&cfg).unwrap_err()), "devices[0].host_path");
        cfg.devices[0].host_path = "/proc/self/status".into();
        assert_eq!(field(build(&cfg).unwrap_err()), "devices[0].host_path");
    }

    fn ns_of(spec: &Spec) -> Vec<(LinuxNamespaceType, Option<PathBuf>)> {
        spec.linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .clone()
            .unwrap()
            .into_iter()
            .map(|n| (n.typ(), n.path().clone()))
            .collect()
    }

    #[test]
    fn namespaces_per_pid_mode_and_host_network() {
        let set_pid = |mode: cri::NamespaceMode| {
            let mut cfg = config();
            sc(&mut cfg).namespace_options = Some(cri::NamespaceOption {
                pid: mode as i32,
                ..Default::default()
            });
            cfg
        };
        let spec = build(&set_pid(cri::NamespaceMode::Pod)).unwrap();
        let ns = ns_of(&spec);
        assert!(ns.contains(&(LinuxNamespaceType::Mount, None)));
        assert!(ns.contains(&(LinuxNamespaceType::Pid, Some("/proc/123/ns/pid".into()))));
        assert!(ns.contains(&(
            LinuxNamespaceType::Network,
            Some("/run/wharf/netns/pod1".into())
        )));
        assert!(!ns.iter().any(|(t, _)| *t == LinuxNamespaceType::Cgroup));
        assert_eq!(spec.hostname().as_deref(), Some("podhost"));

        let ns = ns_of(&build(&set_pid(cri::NamespaceMode::Container)).unwrap());
        assert!(ns.contains(&(LinuxNamespaceType::Pid, None)));
        let ns = ns_of(&build(&set_pid(cri::NamespaceMode::Node)).unwrap());
        assert!(!ns.iter().any(|(t, _)| *t == LinuxNamespaceType::Pid));
        let err = build(&set_pid(cri::NamespaceMode::Target)).unwrap_err();
        assert_eq!(field(err), "linux.security_context.namespace_options.pid");

        let root = rootfs();
        let mut o = opts(root.path());
        o.target_pid_ns_path = Some("/proc/9/ns/pid".into());
        o.cgroup_v2 = true;
        let mut p = pod();
        p.netns_path = None;
        p.uts_ns_path = None;
        let spec = container_spec(&set_pid(cri::NamespaceMode::Target), &p, &image(), &o).unwrap();
        let ns = ns_of(&spec);
        assert!(ns.contains(&(LinuxNamespaceType::Pid, Some("/proc/9/ns/pid".into()))));
        assert!(!ns.iter().any(|(t, _)| *t == LinuxNamespaceType::Network));
        assert!(!ns.iter().any(|(t, _)| *t == LinuxNamespaceType::Uts));
        assert!(ns.contains(&(LinuxNamespaceType::Cgroup, None)));
        assert_eq!(spec.hostname(), &None);
    }

    #[test]
    fn resources_in_spec() {
        let mut cfg = config();
        cfg.linux.as_mut().unwrap().resources = Some(cri::LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 50_000,
            cpu_shares: 512,
            memory_limit_in_bytes: 64 << 20,
            cpuset_cpus: "0-1".into(),
            hugepage_limits: vec![cri::HugepageLimit {
                page_size: "2MB".into(),
                limit: 4 << 20,
            }],
            unified: [("memory.high".to_string(), "50M".to_string())].into(),
            ..Default::default()
        });
        let spec = build(&cfg).unwrap();
        let l = spec.linux().as_ref().unwrap();
        let r = l.resources().as_ref().unwrap();
        let cpu = r.cpu().as_ref().unwrap();
        assert_eq!(
            (cpu.shares(), cpu.quota(), cpu.period()),
            (Some(512), Some(50_000), Some(100_000))
        );
        assert_eq!(cpu.cpus().as_deref(), Some("0-1"));
        let mem = r.memory().unwrap();
        assert_eq!(mem.limit(), Some(64 << 20));
        assert_eq!(mem.swap(), Some(64 << 20));
        assert_eq!(r.hugepage_limits().as_ref().unwrap()[0].limit(), 4 << 20);
        assert_eq!(r.unified().as_ref().unwrap()["memory.high"], "50M");
        assert!(r.pids().is_none());
        assert_eq!(
            l.cgroups_path().as_deref(),
            Some(Path::new("/kubepods/pod1/wharf-c1"))
        );
        assert_eq!(spec.process().as_ref().unwrap().oom_score_adj(), Some(0));

        let root = rootfs();
        let mut o = opts(root.path());
        o.swap_limit = false;
        let spec = container_spec(&cfg, &pod(), &image(), &o).unwrap();
        let r = spec.linux().as_ref().unwrap().resources().clone().unwrap();
        assert_eq!(r.memory().unwrap().swap(), None);
        let _ = host_swap_limit_supported();

        cfg.linux
            .as_mut()
            .unwrap()
            .resources
            .as_mut()
            .unwrap()
            .memory_limit_in_bytes = -5;
        assert_eq!(
            field(build(&cfg).unwrap_err()),
            "linux.resources.memory_limit_in_bytes"
        );

        let root = rootfs();
        let mut o = opts(root.path());
        o.pids_limit = Some(64);
        let spec = container_spec(&config(), &pod(), &image(), &o).unwrap();
        let pids = spec
            .linux()
            .as_ref()
            .unwrap()
            .resources()
            .as_ref()
            .unwrap()
            .pids()
            .unwrap();
        assert_eq!(pids.limit(), 64);
    }

    #[test]
    fn oom_score_adj_restricted() {
        let current = current_oom_score_adj().unwrap();
        assert_eq!(
            oom_score_adj(-1000, true).unwrap() as i64,
            current.max(-1000)
        );
        assert!(oom_score_adj(-1000, true).unwrap() as i64 >= current);
        assert_eq!(oom_score_adj(1000, true).unwrap(), 1000);
        assert_eq!(oom_score_adj(-1000, false).unwrap(), -1000);
        assert!(oom_score_adj(1001, false).is_err());
        let mut cfg = config();
        cfg.linux.as_mut().unwrap().resources = Some(cri::LinuxContainerResources {
            oom_score_adj: -999,
            ..Default::default()
        });
        let root = rootfs();
        let mut o = opts(root.path());
        o.restrict_oom_score_adj = true;
        let spec = container_spec(&cfg, &pod(), &image(), &o).unwrap();
        let got = spec.process().as_ref().unwrap().oom_score_adj().unwrap() as i64;
        assert_eq!(got, current.max(-999));
    }

    #[test]
    fn sysctl_validation() {
        let root = rootfs();
        let mut p = pod();
        p.sysctls = [
            ("net.ipv4.ip_forward".to_string(), "1".to_string()),
            ("kernel.shmmax".to_string(), "1000".to_string()),
            ("fs.mqueue.msg_max".to_string(), "20".to_string()),
        ]
        .into();
        let spec = container_spec(&config(), &p, &image(), &opts(root.path())).unwrap();
        assert_eq!(
            spec.linux()
                .as_ref()
                .unwrap()
                .sysctl()
                .as_ref()
                .unwrap()
                .len(),
            3
        );

        let mut bad = p.clone();
        bad.sysctls.insert("kernel.panic".into(), "1".into());
        let err = container_spec(&config(), &bad, &image(), &opts(root.path())).unwrap_err();
        assert_eq!(field(err), "linux.sysctls[\"kernel.panic\"]");

        let mut host = p.clone();
        host.netns_path = None;
        let err = container_spec(&config(), &host, &image(), &opts(root.path())).unwrap_err();
        assert_eq!(field(err), "linux.sysctls[\"net.ipv4.ip_forward\"]");

        for key in [
            "net.ipv4/../../kernel/panic",
            "net.ipv4..ip_forward",
            "net.ipv4.conf.all.forwarding.",
            "net...",
        ] {
            let err = check_sysctls(&[(key.to_string(), "1".to_string())].into(), true, true)
                .unwrap_err();
            assert_eq!(field(err), format!("linux.sysctls[{key:?}]"));
        }
        check_sysctls(
            &[("kernel.domainname".to_string(), "x".to_string())].into(),
            true,
            false,
        )
        .unwrap();
    }

    #[test]
    fn seccomp_in_spec() {
        let mut cfg = config();
        sc(&mut cfg).seccomp = Some(cri::SecurityProfile {
            profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
            localhost_ref: String::new(),
        });
        let spec = build(&cfg).unwrap();
        let profile = spec.linux().as_ref().unwrap().seccomp().clone().unwrap();
        assert_eq!(
            seccomp::evaluate(&profile, "mount", &[]).0,
            LinuxSeccompAction::ScmpActErrno
        );
        assert_eq!(
            seccomp::evaluate(&profile, "read", &[]).0,
            LinuxSeccompAction::ScmpActAllow
        );

        sc(&mut cfg).capabilities = Some(cri::Capability {
            add_capabilities: s(&["SYS_ADMIN"]),
            ..Default::default()
        });
        let spec = build(&cfg).unwrap();
        let profile = spec.linux().as_ref().unwrap().seccomp().clone().unwrap();
        assert_eq!(
            seccomp::evaluate(&profile, "mount", &[]).0,
            LinuxSeccompAction::ScmpActAllow
        );

        // Localhost, relative to the profile root
        let root = rootfs();
        let o = opts(root.path());
        std::fs::create_dir_all(&o.seccomp_profile_root).unwrap();
        std::fs::write(
            o.seccomp_profile_root.join("p.json"),
            r#"{"defaultAction":"SCMP_ACT_LOG"}"#,
        )
        .unwrap();
        let mut cfg = config();
        sc(&mut cfg).seccomp = Some(cri::SecurityProfile {
            profile_type: cri::security_profile::ProfileType::Localhost as i32,
            localhost_ref: "p.json".into(),
        });
        let spec = container_spec(&cfg, &pod(), &image(), &o).unwrap();
        let profile = spec.linux().as_ref().unwrap().seccomp().clone().unwrap();
        assert_eq!(profile.default_action(), LinuxSeccompAction::ScmpActLog);

        sc(&mut cfg).seccomp.as_mut().unwrap().profile_type =
            cri::security_profile::ProfileType::Unconfined as i32;
        let err = container_spec(&cfg, &pod(), &image(), &o).unwrap_err();
        assert_eq!(field(err), "linux.security_context.seccomp.localhost_ref");
        sc(&mut cfg).seccomp.as_mut().unwrap().profile_type =
            cri::security_profile::ProfileType::Localhost as i32;

        sc(&mut cfg).seccomp.as_mut().unwrap().localhost_ref = "missing.json".into();
        let err = container_spec(&cfg, &pod(), &image(), &o).unwrap_err();
        assert!(matches!(err, SpecError::Seccomp(_)));
        assert!(err.to_string().contains("missing.json"), "{err}");
    }

    /// Runs a generated spec with the real runc: the default seccomp profile loads and
    /// an ordinary program runs, while unshare(CLONE_NEWUSER) is denied by the filter
    /// (no capability is needed for it, so only seccomp can refuse it). Needs root,
    /// runc and a static /bin/busybox, which ./scripts/test installs.
    #[test]
    fn runc_runs_generated_spec() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test runs a container with runc: run it as root (./scripts/test)"
        );
        assert!(
            std::process::Command::new("runc")
                .arg("--version")
                .output()
                .is_ok(),
            "runc is missing: install the Debian package runc (./scripts/test does)"
        );
        assert!(
            Path::new("/bin/busybox").is_file(),
            "/bin/busybox is missing: install the Debian package busybox-static (./scripts/test does)"
        );
        let base = tempfile::tempdir().unwrap();
        let rootfs = base.path().join("rootfs");
        for d in ["bin", "etc", "proc", "sys", "dev", "tmp"] {
            std::fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        std::fs::write(
            rootfs.join("etc/passwd"),
            "root:x:0:0::/:/bin/sh\nuser:x:1000:1000::/:/bin/sh\n",
        )
        .unwrap();
        let mut cfg = config();
        cfg.command = s(&["/bin/busybox", "sh", "-c"]);
        cfg.args = s(&["/bin/busybox id -u; /bin/busybox unshare -U /bin/busybox true \
             && echo UNSHARE_ALLOWED || echo UNSHARE_DENIED; /bin/busybox mkdir /tmp/x 2>&1; /bin/busybox cat /sys/fs/cgroup/memory/memory.limit_in_bytes \
             /sys/fs/cgroup/memory.max 2>/dev/null; echo DONE"]);
        cfg.linux.as_mut().unwrap().resources = Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 64 << 20,
            cpu_shares: 256,
            oom_score_adj: 500,
            ..Default::default()
        });
        sc(&mut cfg).run_as_username = "user".into();
        sc(&mut cfg).readonly_rootfs = true;
        sc(&mut cfg).seccomp = Some(cri::SecurityProfile {
            profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
            localhost_ref: String::new(),
        });
        sc(&mut cfg).namespace_options = Some(cri::NamespaceOption {
            pid: cri::NamespaceMode::Container as i32,
            ..Default::default()
        });
        let run = |cfg: &cri::ContainerConfig, name: &str| -> String {
            let pod = PodContext {
                sandbox_id: "runc-test".into(),
                cgroup_parent: format!("/wharf-spec-test-{}", std::process::id()),
                ..Default::default()
            };
            let mut o = opts(&rootfs);
            o.container_id = format!("{name}-{}", std::process::id());
            o.swap_limit = host_swap_limit_supported();
            o.cgroup_v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
            let spec = container_spec(cfg, &pod, &image(), &o).unwrap();
            spec.save(base.path().join("config.json")).unwrap();
            let out = std::process::Command::new("runc")
                .arg("--root")
                .arg(base.path().join("state"))
                .args(["run", "--bundle"])
                .arg(base.path())
                .arg(&o.container_id)
                .output()
                .unwrap();
            // runc removes the container's cgroup; remove the parent this test made.
            if let Ok(dirs) = std::fs::read_dir("/sys/fs/cgroup") {
                for d in dirs.flatten() {
                    let _ = std::fs::remove_dir(
                        d.path().join(pod.cgroup_parent.trim_start_matches('/')),
                    );
                }
            }
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            let stderr = String::from_utf8_lossy(&out.stderr);
            eprintln!("runc stdout: {stdout}stderr: {stderr}");
            assert!(out.status.success(), "runc failed: {stdout} {stderr}");
            stdout
        };
        let stdout = run(&cfg, "default");
        assert!(stdout.starts_with("1000\n"), "{stdout}");
        assert!(stdout.contains("UNSHARE_DENIED"), "{stdout}");
        assert!(stdout.contains("Read-only file system"), "{stdout}");
        assert!(stdout.contains(&(64u64 << 20).to_string()), "{stdout}");
        // The control: without the filter the same call succeeds, so it was seccomp.
        sc(&mut cfg).seccomp.as_mut().unwrap().profile_type =
            cri::security_profile::ProfileType::Unconfined as i32;
        let stdout = run(&cfg, "unconfined");
        assert!(stdout.contains("UNSHARE_ALLOWED"), "{stdout}");
    }

    #[test]
    fn annotations_and_serialization() {
        let mut cfg = config();
        cfg.annotations.insert("user.note".into(), "x".into());
        sc(&mut cfg).readonly_rootfs = true;
        sc(&mut cfg).no_new_privs = true;
        cfg.tty = true;
        let spec = build(&cfg).unwrap();
        let a = spec.annotations().as_ref().unwrap();
        assert_eq!(a["io.kubernetes.cri.container-type"], "container");
        assert_eq!(a["io.kubernetes.cri.sandbox-id"], "pod1");
        assert_eq!(a["io.kubernetes.cri.container-name"], "web");
        assert_eq!(a["user.note"], "x");
        assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(true));
        let p = spec.process().as_ref().unwrap();
        assert_eq!(p.no_new_privileges(), Some(true));
        assert_eq!(p.terminal(), Some(true));

        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(json["ociVersion"], OCI_VERSION);
        assert_eq!(json["process"]["cwd"], "/work");
        assert!(json["linux"]["resources"]["devices"].is_array());
        let back: Spec = serde_json::from_value(json).unwrap();
        assert_eq!(back, spec);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        spec.save(&path).unwrap();
        assert_eq!(Spec::load(&path).unwrap(), spec);
    }
}
