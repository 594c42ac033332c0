//! The OCI runtime spec of a container, from its [`ContainerSpec`] (the core's
//! model, which every front end builds), the pod it joins and its image's config. Pure: nothing is mounted, created or started here; the
//! only reads are the image's /etc/passwd and /etc/group (for user names), the daemon's
//! own /proc/self/oom_score_adj and, for `Localhost` seccomp profiles, the profile file.
//!
//! The rules follow containerd's CRI plugin (and Docker's defaults where containerd takes
//! them from Docker): see each helper for the rule it applies.
//!
//! As containerd's `spec_opts` (`internal/cri/opts/spec_linux_opts.go`), the spec is
//! assembled by [`container_spec`] from small builders, one file per concern, each
//! tested alone beside its code:
//! - `image.rs`: [`ImageDefaults`], the image config's entrypoint, cmd, env, ...;
//! - `process.rs`: the `process` (args, env, cwd, terminal, rlimits, oom_score_adj,
//!   capabilities);
//! - `user.rs`: the process user, resolved in the image's /etc/passwd and /etc/group;
//! - `mounts.rs`: the default mounts, the pod's files, the CRI mounts and propagation;
//! - `namespaces.rs`: namespaces and sysctls ([`check_sysctls`]);
//! - `resources.rs`: the cgroups path and [`resources()`] (CPU, memory, swap, hugepages,
//!   pids);
//! - `devices.rs`: the device cgroup rules and the CRI devices;
//! - `security.rs`: the seccomp profile and the masked and read-only paths.
//!
//! This file holds the assembly, its inputs ([`PodContext`], [`SpecOptions`]) and
//! [`SpecError`]. The builders run in a fixed order, so a request with several invalid
//! fields always reports the same one.

use std::collections::HashMap;
use std::path::PathBuf;

use oci_spec::runtime::{Linux, Root, Spec};

use super::model::ContainerSpec;
use super::{caps, seccomp};

mod devices;
mod image;
mod mounts;
mod namespaces;
mod process;
mod resources;
mod security;
mod user;

pub use image::ImageDefaults;
pub use namespaces::check_sysctls;
pub use process::process_args;
pub use resources::{host_hugetlb_supported, host_swap_limit_supported, resources};
pub use security::{DEFAULT_MASKED_PATHS, DEFAULT_READONLY_PATHS};
pub use user::resolve_exec_user;

/// The OCI runtime spec version wharf writes.
pub const OCI_VERSION: &str = "1.2.0";

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

/// Where the pod's shared things live (prepared by the pod code).
#[derive(Debug, Clone, Default)]
pub struct PodContext {
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
    /// The host has a hugetlb cgroup controller ([`host_hugetlb_supported`]): without
    /// one, the zero hugepage limits kubelet sends for every page size are dropped (as
    /// runc skips controllers that are not mounted) and any other limit is refused.
    pub hugetlb: bool,
    /// For TARGET pid mode: the PID namespace of the target container
    /// (`namespace_options.target_id`), resolved by the caller.
    pub target_pid_ns_path: Option<PathBuf>,
    /// wharfd's own capability bounding set (`CapBnd`): no container gets more. None:
    /// every capability wharf knows.
    pub bounding_capabilities: Option<u64>,
}

/// The OCI runtime spec of a container: `config` merged with `image`'s defaults, inside
/// `pod`.
pub fn container_spec(
    config: &ContainerSpec,
    pod: &PodContext,
    image: &ImageDefaults,
    opts: &SpecOptions,
) -> Result<Spec, SpecError> {
    let sc = &config.security;
    let privileged = sc.privileged;

    if opts.container_id.is_empty() || opts.container_id.contains('/') {
        return Err(SpecError::invalid(
            "container id",
            format!("{:?} is not a valid container id", opts.container_id),
        ));
    }

    // process (the capabilities also shape the seccomp profile)
    let (process, cap_set) = process::process(config, pod, image, opts)?;

    // mounts and namespaces
    let (mounts, rootfs_propagation) = mounts::mounts(config, pod, privileged, sc.readonly_rootfs)?;
    let namespaces = namespaces::namespaces(sc, pod, opts)?;
    let sysctls = namespaces::sysctls(pod)?;

    // resources
    let mut resources = resources::resources(config.resources.as_ref(), opts)?;
    let (devices, device_allows) = devices::devices(config)?;
    let mut rules = devices::device_rules(privileged);
    if !privileged {
        rules.extend(device_allows);
    }
    resources.set_devices(Some(rules));

    let seccomp = security::seccomp_profile(sc, privileged, &cap_set, opts)?;
    let (masked, readonly) = security::masked_and_readonly_paths(sc, privileged);

    let mut linux = Linux::default();
    linux.set_uid_mappings(None);
    linux.set_gid_mappings(None);
    linux.set_sysctl(Some(sysctls));
    linux.set_resources(Some(resources));
    linux.set_cgroups_path(Some(resources::cgroups_path(
        &pod.cgroup_parent,
        &opts.container_id,
    )?));
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
    spec.set_annotations(Some(config.annotations.clone()));
    spec.set_linux(Some(linux));
    Ok(spec)
}

/// Fixtures shared by the builders' tests: a CRI config, a pod, image
/// defaults, options and a rootfs with /etc/passwd and /etc/group.
#[cfg(test)]
mod test_support {
    use std::path::Path;

    pub(super) use crate::runtime::model::*;

    use super::*;

    pub(super) fn image() -> ImageDefaults {
        ImageDefaults {
            entrypoint: vec!["/entry".into()],
            cmd: vec!["cmd1".into(), "cmd2".into()],
            env: vec!["PATH=/image/bin".into(), "A=image".into(), "B=image".into()],
            working_dir: "/work".into(),
            user: String::new(),
            stop_signal: Some("SIGQUIT".into()),
            volumes: Vec::new(),
        }
    }

    pub(super) fn rootfs() -> tempfile::TempDir {
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

    pub(super) fn opts(root: &Path) -> SpecOptions {
        SpecOptions {
            rootfs: root.to_path_buf(),
            container_id: "c1".into(),
            restrict_oom_score_adj: false,
            seccomp_profile_root: root.join("seccomp"),
            cgroup_v2: false,
            swap_limit: true,
            hugetlb: true,
            pids_limit: None,
            target_pid_ns_path: None,
            bounding_capabilities: None,
        }
    }

    pub(super) fn pod() -> PodContext {
        PodContext {
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

    pub(super) fn config() -> ContainerSpec {
        ContainerSpec {
            name: "web".into(),
            image: "busybox:latest".into(),
            ..Default::default()
        }
    }

    pub(super) fn sc(cfg: &mut ContainerSpec) -> &mut SecurityOptions {
        &mut cfg.security
    }

    pub(super) fn build(cfg: &ContainerSpec) -> Result<Spec, SpecError> {
        let root = rootfs();
        container_spec(cfg, &pod(), &image(), &opts(root.path()))
    }

    pub(super) fn field(err: SpecError) -> String {
        match err {
            SpecError::InvalidArgument { field, .. } | SpecError::Unsupported { field, .. } => {
                field
            }
            other => panic!("not a field error: {other}"),
        }
    }

    pub(super) fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::test_support::*;
    use super::*;

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
        cfg.resources = Some(Resources {
            memory_limit_in_bytes: 64 << 20,
            cpu_shares: 256,
            oom_score_adj: 500,
            ..Default::default()
        });
        sc(&mut cfg).run_as_username = "user".into();
        sc(&mut cfg).readonly_rootfs = true;
        sc(&mut cfg).seccomp = Seccomp::RuntimeDefault;
        sc(&mut cfg).namespaces.pid = NamespaceMode::Container;
        let run = |cfg: &ContainerSpec, name: &str| -> String {
            let pod = PodContext {
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
        sc(&mut cfg).seccomp = Seccomp::Unconfined;
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
        assert_eq!(
            a,
            &HashMap::from([("user.note".to_string(), "x".to_string())])
        );
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
