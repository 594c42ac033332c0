//! CRI messages to the core's types (`crate::runtime::model`) and back, as CRI-O's
//! `server/cri/types`: everything Kubernetes-specific is read here (metadata and the
//! names made from it, the CRI's enum numbers, the deprecated `seccomp_profile_path`,
//! the `io.kubernetes.cri.*` annotations of the OCI spec), so the core never sees a CRI
//! message. Values the CRI allows but the core cannot represent (an unknown enum
//! number) are refused here, naming the field.

use k8s_cri::v1 as cri;

use crate::runtime::model::{
    Capabilities, ContainerSpec, Device, DnsConfig, HugepageLimit, Mount, NamespaceMode,
    NamespaceModes, PodSpec, PortMapping, Propagation, Protocol, Resources, Seccomp,
    SecurityOptions,
};
use crate::runtime::RuntimeError;

type Result<T> = std::result::Result<T, RuntimeError>;

/// The unique name of a pod in the CRI namespace (kubelet's rule: a new attempt is a
/// new pod).
pub(super) fn pod_name(meta: &cri::PodSandboxMetadata) -> String {
    format!(
        "{}_{}_{}_{}",
        meta.name, meta.namespace, meta.uid, meta.attempt
    )
}

/// The unique name of a container in the CRI namespace.
pub(super) fn container_name(
    meta: &cri::ContainerMetadata,
    pod: &cri::PodSandboxMetadata,
) -> String {
    format!(
        "{}_{}_{}_{}_{}",
        meta.name, pod.name, pod.namespace, pod.uid, meta.attempt
    )
}

/// A CRI enum value the core knows, or InvalidArgument naming `field` and the number.
fn known<T, E>(
    parsed: std::result::Result<T, E>,
    value: i32,
    field: impl FnOnce() -> String,
    what: &str,
) -> Result<T> {
    parsed.map_err(|_| RuntimeError::invalid(field(), format!("unknown {what} {value}")))
}

fn namespace_mode(value: i32, field: &str) -> Result<NamespaceMode> {
    match cri::NamespaceMode::try_from(value) {
        Ok(cri::NamespaceMode::Pod) => Ok(NamespaceMode::Pod),
        Ok(cri::NamespaceMode::Container) => Ok(NamespaceMode::Container),
        Ok(cri::NamespaceMode::Node) => Ok(NamespaceMode::Node),
        Ok(cri::NamespaceMode::Target) => Ok(NamespaceMode::Target),
        Err(_) => Err(RuntimeError::invalid(
            field,
            format!("unknown mode {value}"),
        )),
    }
}

fn namespace_modes(options: &cri::NamespaceOption, field: &str) -> Result<NamespaceModes> {
    Ok(NamespaceModes {
        network: namespace_mode(options.network, &format!("{field}.network"))?,
        ipc: namespace_mode(options.ipc, &format!("{field}.ipc"))?,
        pid: namespace_mode(options.pid, &format!("{field}.pid"))?,
        target_id: options.target_id.clone(),
    })
}

/// The pod a `RunPodSandbox` asks for.
pub(super) fn pod_spec(config: &cri::PodSandboxConfig) -> Result<PodSpec> {
    let meta = config
        .metadata
        .as_ref()
        .ok_or_else(|| RuntimeError::invalid("config.metadata", "is missing"))?;
    if meta.name.is_empty() {
        return Err(RuntimeError::invalid("config.metadata.name", "is empty"));
    }
    let linux = config.linux.clone().unwrap_or_default();
    let sc = linux.security_context.unwrap_or_default();
    let namespaces = namespace_modes(
        &sc.namespace_options.unwrap_or_default(),
        "config.linux.security_context.namespace_options",
    )?;
    let mut port_mappings = Vec::new();
    for (i, m) in config.port_mappings.iter().enumerate() {
        let protocol = known(
            cri::Protocol::try_from(m.protocol),
            m.protocol,
            || format!("config.port_mappings[{i}].protocol"),
            "protocol",
        )?;
        let protocol = match protocol {
            cri::Protocol::Tcp => Protocol::Tcp,
            cri::Protocol::Udp => Protocol::Udp,
            cri::Protocol::Sctp => Protocol::Sctp,
        };
        port_mappings.push(PortMapping {
            protocol,
            container_port: m.container_port,
            host_port: m.host_port,
            host_ip: m.host_ip.clone(),
        });
    }
    Ok(PodSpec {
        name: pod_name(meta),
        hostname: config.hostname.clone(),
        log_directory: config.log_directory.clone(),
        dns: config.dns_config.as_ref().map(|d| DnsConfig {
            servers: d.servers.clone(),
            searches: d.searches.clone(),
            options: d.options.clone(),
        }),
        port_mappings,
        labels: config.labels.clone(),
        annotations: config.annotations.clone(),
        cgroup_parent: linux.cgroup_parent,
        sysctls: linux.sysctls,
        namespaces,
        privileged: sc.privileged,
        network_args: vec![
            ("K8S_POD_NAMESPACE".into(), meta.namespace.clone()),
            ("K8S_POD_NAME".into(), meta.name.clone()),
            ("K8S_POD_UID".into(), meta.uid.clone()),
        ],
        networks: Vec::new(),
        loopback_only: false,
        mac_address: String::new(),
    })
}

/// The container a `CreateContainer` asks for in pod `pod_id` (whose metadata names
/// it). The OCI spec gets the request's annotations plus containerd's
/// `io.kubernetes.cri.*` ones.
pub(super) fn container_spec(
    config: &cri::ContainerConfig,
    pod_id: &str,
    pod_meta: &cri::PodSandboxMetadata,
) -> Result<ContainerSpec> {
    let meta = config
        .metadata
        .as_ref()
        .ok_or_else(|| RuntimeError::invalid("config.metadata", "is missing"))?;
    if meta.name.is_empty() {
        return Err(RuntimeError::invalid("config.metadata.name", "is empty"));
    }
    let image = config
        .image
        .as_ref()
        .map(|i| i.image.clone())
        .unwrap_or_default();
    let linux = config.linux.clone().unwrap_or_default();
    let mut mounts = Vec::new();
    for (i, m) in config.mounts.iter().enumerate() {
        let propagation = known(
            cri::MountPropagation::try_from(m.propagation),
            m.propagation,
            || format!("mounts[{i}].propagation"),
            "propagation",
        )?;
        let propagation = match propagation {
            cri::MountPropagation::PropagationPrivate => Propagation::Private,
            cri::MountPropagation::PropagationHostToContainer => Propagation::HostToContainer,
            cri::MountPropagation::PropagationBidirectional => Propagation::Bidirectional,
        };
        mounts.push(Mount {
            container_path: m.container_path.clone(),
            host_path: m.host_path.clone(),
            readonly: m.readonly,
            recursive_read_only: m.recursive_read_only,
            propagation,
            selinux_relabel: m.selinux_relabel,
            image: m
                .image
                .as_ref()
                .map(|i| i.image.clone())
                .unwrap_or_default(),
            id_mapped: !m.uid_mappings.is_empty() || !m.gid_mappings.is_empty(),
            ..Default::default()
        });
    }
    // CDI devices: the CRI field (kubelet 1.28+) and the older `cdi.k8s.io/`
    // annotations; a device named by both is applied once.
    let mut cdi_devices = Vec::new();
    for (i, device) in config.cdi_devices.iter().enumerate() {
        crate::device::check_name(&device.name).map_err(|err| {
            RuntimeError::invalid(format!("CDI_devices[{i}].name"), err.to_string())
        })?;
        cdi_devices.push(device.name.clone());
    }
    let annotated = crate::device::names_from_annotations(&config.annotations)
        .map_err(|err| RuntimeError::invalid("annotations", err.to_string()))?;
    for name in annotated {
        if !cdi_devices.contains(&name) {
            cdi_devices.push(name);
        }
    }
    let mut annotations = config.annotations.clone();
    annotations.insert(
        "io.kubernetes.cri.container-type".into(),
        "container".into(),
    );
    annotations.insert("io.kubernetes.cri.sandbox-id".into(), pod_id.to_string());
    annotations.insert("io.kubernetes.cri.container-name".into(), meta.name.clone());
    if let Some(img) = &config.image {
        annotations.insert("io.kubernetes.cri.image-name".into(), img.image.clone());
    }
    Ok(ContainerSpec {
        healthcheck: None,
        requested_id: None,
        name: container_name(meta, pod_meta),
        image,
        command: config.command.clone(),
        args: config.args.clone(),
        working_dir: config.working_dir.clone(),
        env: config
            .envs
            .iter()
            .map(|kv| (kv.key.clone(), kv.value.clone()))
            .collect(),
        mounts,
        devices: config
            .devices
            .iter()
            .map(|d| Device {
                container_path: d.container_path.clone(),
                host_path: d.host_path.clone(),
                permissions: d.permissions.clone(),
            })
            .collect(),
        cdi_devices,
        labels: config.labels.clone(),
        annotations,
        log_path: config.log_path.clone(),
        // kubelet rotates CRI logs itself (ReopenContainerLog).
        log_rotation: None,
        stdin: config.stdin,
        stdin_once: config.stdin_once,
        tty: config.tty,
        auto_remove: false,
        restart: Default::default(),
        stop_signal: None,
        resources: linux.resources.as_ref().map(resources),
        security: security_options(&linux.security_context.unwrap_or_default())?,
        published_ports: Vec::new(),
    })
}

fn security_options(sc: &cri::LinuxContainerSecurityContext) -> Result<SecurityOptions> {
    let options = sc.namespace_options.clone().unwrap_or_default();
    let capabilities = sc.capabilities.clone().unwrap_or_default();
    Ok(SecurityOptions {
        privileged: sc.privileged,
        readonly_rootfs: sc.readonly_rootfs,
        no_new_privs: sc.no_new_privs,
        capabilities: Capabilities {
            add: capabilities.add_capabilities,
            drop: capabilities.drop_capabilities,
            add_ambient: capabilities.add_ambient_capabilities,
        },
        run_as_user: sc.run_as_user.as_ref().map(|v| v.value),
        run_as_group: sc.run_as_group.as_ref().map(|v| v.value),
        run_as_username: sc.run_as_username.clone(),
        user: String::new(),
        supplemental_groups: sc.supplemental_groups.clone(),
        supplemental_groups_strict: sc.supplemental_groups_policy
            == cri::SupplementalGroupsPolicy::Strict as i32,
        namespaces: NamespaceModes {
            pid: namespace_mode(options.pid, "linux.security_context.namespace_options.pid")?,
            target_id: options.target_id.clone(),
            ..Default::default()
        },
        user_namespace: options
            .userns_options
            .as_ref()
            .is_some_and(|u| u.mode != cri::NamespaceMode::Node as i32),
        seccomp: seccomp(sc)?,
        masked_paths: sc.masked_paths.clone(),
        readonly_paths: sc.readonly_paths.clone(),
    })
}

/// The seccomp profile: `seccomp`, else the deprecated `seccomp_profile_path`; unset is
/// Unconfined (containerd's default).
fn seccomp(sc: &cri::LinuxContainerSecurityContext) -> Result<Seccomp> {
    use cri::security_profile::ProfileType;
    if let Some(profile) = &sc.seccomp {
        if profile.profile_type != ProfileType::Localhost as i32
            && !profile.localhost_ref.is_empty()
        {
            return Err(RuntimeError::invalid(
                "linux.security_context.seccomp.localhost_ref",
                "may only be set when profile_type is Localhost",
            ));
        }
        return match ProfileType::try_from(profile.profile_type) {
            Ok(ProfileType::RuntimeDefault) => Ok(Seccomp::RuntimeDefault),
            Ok(ProfileType::Unconfined) => Ok(Seccomp::Unconfined),
            Ok(ProfileType::Localhost) => Ok(Seccomp::Localhost(profile.localhost_ref.clone())),
            Err(_) => Err(RuntimeError::invalid(
                "linux.security_context.seccomp.profile_type",
                format!("unknown profile type {}", profile.profile_type),
            )),
        };
    }
    #[allow(deprecated)]
    let old = sc.seccomp_profile_path.as_str();
    match old {
        "" | "unconfined" => Ok(Seccomp::Unconfined),
        "runtime/default" | "docker/default" => Ok(Seccomp::RuntimeDefault),
        other if other.starts_with("localhost/") => Ok(Seccomp::Localhost(other.to_string())),
        other => Err(RuntimeError::invalid(
            "linux.security_context.seccomp_profile_path",
            format!(
                "unknown profile {:?}",
                crate::image::bounded(other, crate::image::MAX_ECHO)
            ),
        )),
    }
}

/// The core's resources from the CRI's.
pub(super) fn resources(r: &cri::LinuxContainerResources) -> Resources {
    Resources {
        cpu_period: r.cpu_period,
        cpu_quota: r.cpu_quota,
        cpu_shares: r.cpu_shares,
        memory_limit_in_bytes: r.memory_limit_in_bytes,
        oom_score_adj: r.oom_score_adj,
        cpuset_cpus: r.cpuset_cpus.clone(),
        cpuset_mems: r.cpuset_mems.clone(),
        hugepage_limits: r
            .hugepage_limits
            .iter()
            .map(|h| HugepageLimit {
                page_size: h.page_size.clone(),
                limit: h.limit,
            })
            .collect(),
        unified: r.unified.clone(),
        memory_swap_limit_in_bytes: r.memory_swap_limit_in_bytes,
        // The CRI has none per container: kubelet limits the pod's cgroup.
        pids_limit: 0,
    }
}

/// The CRI's resources from the core's (for ContainerStatus).
pub(super) fn cri_resources(r: &Resources) -> cri::LinuxContainerResources {
    cri::LinuxContainerResources {
        cpu_period: r.cpu_period,
        cpu_quota: r.cpu_quota,
        cpu_shares: r.cpu_shares,
        memory_limit_in_bytes: r.memory_limit_in_bytes,
        oom_score_adj: r.oom_score_adj,
        cpuset_cpus: r.cpuset_cpus.clone(),
        cpuset_mems: r.cpuset_mems.clone(),
        hugepage_limits: r
            .hugepage_limits
            .iter()
            .map(|h| cri::HugepageLimit {
                page_size: h.page_size.clone(),
                limit: h.limit,
            })
            .collect(),
        unified: r.unified.clone(),
        memory_swap_limit_in_bytes: r.memory_swap_limit_in_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod_meta() -> cri::PodSandboxMetadata {
        cri::PodSandboxMetadata {
            name: "web".into(),
            uid: "u1".into(),
            namespace: "default".into(),
            attempt: 1,
        }
    }

    #[test]
    fn names_include_uid_and_attempt() {
        assert_eq!(pod_name(&pod_meta()), "web_default_u1_1");
        let meta = cri::ContainerMetadata {
            name: "app".into(),
            attempt: 2,
        };
        assert_eq!(container_name(&meta, &pod_meta()), "app_web_default_u1_2");
    }

    #[test]
    fn pod_spec_from_config() {
        let config = cri::PodSandboxConfig {
            metadata: Some(pod_meta()),
            hostname: "web-0".into(),
            port_mappings: vec![cri::PortMapping {
                protocol: cri::Protocol::Udp as i32,
                container_port: 53,
                host_port: 5353,
                host_ip: String::new(),
            }],
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: "/kubepods".into(),
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        network: cri::NamespaceMode::Node as i32,
                        pid: cri::NamespaceMode::Container as i32,
                        ..Default::default()
                    }),
                    privileged: true,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let spec = pod_spec(&config).unwrap();
        assert_eq!(spec.name, "web_default_u1_1");
        assert_eq!(spec.port_mappings[0].protocol, Protocol::Udp);
        assert_eq!(spec.namespaces.network, NamespaceMode::Node);
        assert_eq!(spec.namespaces.ipc, NamespaceMode::Pod);
        assert_eq!(spec.namespaces.pid, NamespaceMode::Container);
        assert!(spec.privileged);
        assert_eq!(spec.cgroup_parent, "/kubepods");
        assert!(spec
            .network_args
            .contains(&("K8S_POD_UID".to_string(), "u1".to_string())));

        let mut bad = config.clone();
        bad.port_mappings[0].protocol = 9;
        let err = pod_spec(&bad).unwrap_err().to_string();
        assert!(err.contains("config.port_mappings[0].protocol"), "{err}");
        let mut bad = config;
        bad.metadata = None;
        assert!(pod_spec(&bad).is_err());
    }

    #[test]
    fn container_spec_from_config() {
        let config = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: "app".into(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: "busybox".into(),
                ..Default::default()
            }),
            envs: vec![cri::KeyValue {
                key: "A".into(),
                value: "1".into(),
            }],
            annotations: [("user.note".to_string(), "x".to_string())].into(),
            mounts: vec![cri::Mount {
                container_path: "/data".into(),
                host_path: "/srv".into(),
                propagation: cri::MountPropagation::PropagationBidirectional as i32,
                ..Default::default()
            }],
            stdin: true,
            tty: true,
            linux: Some(cri::LinuxContainerConfig {
                resources: Some(cri::LinuxContainerResources {
                    memory_limit_in_bytes: 1 << 20,
                    ..Default::default()
                }),
                security_context: Some(cri::LinuxContainerSecurityContext {
                    run_as_user: Some(cri::Int64Value { value: 1000 }),
                    seccomp: Some(cri::SecurityProfile {
                        profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
                        localhost_ref: String::new(),
                    }),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        };
        let spec = container_spec(&config, "pod1", &pod_meta()).unwrap();
        assert_eq!(spec.name, "app_web_default_u1_0");
        assert_eq!(spec.env, vec![("A".to_string(), "1".to_string())]);
        assert_eq!(spec.mounts[0].propagation, Propagation::Bidirectional);
        assert!(spec.stdin && spec.tty && !spec.stdin_once);
        assert_eq!(spec.security.run_as_user, Some(1000));
        assert_eq!(spec.security.seccomp, Seccomp::RuntimeDefault);
        let a = &spec.annotations;
        assert_eq!(a["io.kubernetes.cri.container-type"], "container");
        assert_eq!(a["io.kubernetes.cri.sandbox-id"], "pod1");
        assert_eq!(a["io.kubernetes.cri.container-name"], "app");
        assert_eq!(a["io.kubernetes.cri.image-name"], "busybox");
        assert_eq!(a["user.note"], "x");
        let limits = spec.resources.as_ref().unwrap();
        assert_eq!(
            cri_resources(limits),
            config.linux.as_ref().unwrap().resources.clone().unwrap()
        );

        let mut bad = config.clone();
        bad.mounts[0].propagation = 7;
        let err = container_spec(&bad, "pod1", &pod_meta())
            .unwrap_err()
            .to_string();
        assert!(err.contains("mounts[0].propagation"), "{err}");

        let mut bad = config.clone();
        let sc = bad
            .linux
            .as_mut()
            .unwrap()
            .security_context
            .as_mut()
            .unwrap();
        sc.seccomp.as_mut().unwrap().localhost_ref = "p.json".into();
        let err = container_spec(&bad, "pod1", &pod_meta())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("linux.security_context.seccomp.localhost_ref"),
            "{err}"
        );

        let mut old = config;
        let sc = old
            .linux
            .as_mut()
            .unwrap()
            .security_context
            .as_mut()
            .unwrap();
        sc.seccomp = None;
        #[allow(deprecated)]
        {
            sc.seccomp_profile_path = "localhost/p.json".into();
        }
        let spec = container_spec(&old, "pod1", &pod_meta()).unwrap();
        assert_eq!(
            spec.security.seccomp,
            Seccomp::Localhost("localhost/p.json".into())
        );
    }
}
