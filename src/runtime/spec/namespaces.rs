//! The spec's namespaces (the pod's network, IPC, UTS and PID ones, or new ones) and
//! sysctls, which must be namespaced (containerd's `WithPodNamespaces`, `WithSysctls`).

use std::collections::HashMap;
use std::path::PathBuf;

use crate::runtime::model::{NamespaceMode, SecurityOptions};
use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType};

use super::{PodContext, SpecError, SpecOptions};

fn namespace(typ: LinuxNamespaceType, path: Option<&PathBuf>) -> LinuxNamespace {
    let mut ns = LinuxNamespace::default();
    ns.set_typ(typ);
    ns.set_path(path.cloned());
    ns
}

/// Namespaces: a new mount namespace; network, IPC and UTS of the pod (none = host);
/// PID per the container's NamespaceOption (POD: the pod's, CONTAINER: new, NODE: host,
/// TARGET: the target's, which the caller resolves); a new cgroup namespace on cgroup v2.
pub(super) fn namespaces(
    sc: &SecurityOptions,
    pod: &PodContext,
    opts: &SpecOptions,
) -> Result<Vec<LinuxNamespace>, SpecError> {
    const F_PID: &str = "linux.security_context.namespace_options.pid";
    let ns_opts = &sc.namespaces;
    if sc.user_namespace {
        return Err(SpecError::Unsupported {
            field: "linux.security_context.namespace_options.userns_options".into(),
            reason: "user namespaces".into(),
        });
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
    match ns_opts.pid {
        NamespaceMode::Pod => {
            out.push(namespace(LinuxNamespaceType::Pid, pod.pid_ns_path.as_ref()));
        }
        NamespaceMode::Container => out.push(namespace(LinuxNamespaceType::Pid, None)),
        NamespaceMode::Node => {}
        NamespaceMode::Target => match &opts.target_pid_ns_path {
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
    }
    if opts.cgroup_v2 {
        out.push(namespace(LinuxNamespaceType::Cgroup, None));
    }
    Ok(out)
}

/// The pod's sysctls, which must be namespaced (see [`check_sysctls`]).
pub(super) fn sysctls(pod: &PodContext) -> Result<HashMap<String, String>, SpecError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::spec::container_spec;
    use crate::runtime::spec::test_support::*;
    use oci_spec::runtime::Spec;

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
        let set_pid = |mode: NamespaceMode| {
            let mut cfg = config();
            sc(&mut cfg).namespaces.pid = mode;
            cfg
        };
        let spec = build(&set_pid(NamespaceMode::Pod)).unwrap();
        let ns = ns_of(&spec);
        assert!(ns.contains(&(LinuxNamespaceType::Mount, None)));
        assert!(ns.contains(&(LinuxNamespaceType::Pid, Some("/proc/123/ns/pid".into()))));
        assert!(ns.contains(&(
            LinuxNamespaceType::Network,
            Some("/run/wharf/netns/pod1".into())
        )));
        assert!(!ns.iter().any(|(t, _)| *t == LinuxNamespaceType::Cgroup));
        assert_eq!(spec.hostname().as_deref(), Some("podhost"));

        let ns = ns_of(&build(&set_pid(NamespaceMode::Container)).unwrap());
        assert!(ns.contains(&(LinuxNamespaceType::Pid, None)));
        let ns = ns_of(&build(&set_pid(NamespaceMode::Node)).unwrap());
        assert!(!ns.iter().any(|(t, _)| *t == LinuxNamespaceType::Pid));
        let err = build(&set_pid(NamespaceMode::Target)).unwrap_err();
        assert_eq!(field(err), "linux.security_context.namespace_options.pid");

        let root = rootfs();
        let mut o = opts(root.path());
        o.target_pid_ns_path = Some("/proc/9/ns/pid".into());
        o.cgroup_v2 = true;
        let mut p = pod();
        p.netns_path = None;
        p.uts_ns_path = None;
        let spec = container_spec(&set_pid(NamespaceMode::Target), &p, &image(), &o).unwrap();
        let ns = ns_of(&spec);
        assert!(ns.contains(&(LinuxNamespaceType::Pid, Some("/proc/9/ns/pid".into()))));
        assert!(!ns.iter().any(|(t, _)| *t == LinuxNamespaceType::Network));
        assert!(!ns.iter().any(|(t, _)| *t == LinuxNamespaceType::Uts));
        assert!(ns.contains(&(LinuxNamespaceType::Cgroup, None)));
        assert_eq!(spec.hostname(), &None);
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
}
