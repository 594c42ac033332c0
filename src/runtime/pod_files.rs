//! The files of a pod that its containers bind-mount: `hostname`, `hosts` and
//! `resolv.conf` in the pod's state directory, written when the pod is made, and
//! resolv.conf rewritten when the CNI result brings DNS.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::model::DnsConfig;

use super::pod_validation::{check_dns_config, given_dns_config};
use super::service::{Result, RuntimeError};
use crate::cni::Dns;

/// Writes `hostname`, `hosts` and `resolv.conf` into the pod directory `dir`.
pub(super) fn write_pod_files(
    dir: &Path,
    hostname: &str,
    host_network: bool,
    dns: Option<&DnsConfig>,
) -> Result<()> {
    write_file(&dir.join("hostname"), format!("{hostname}\n").as_bytes())?;
    write_file(&dir.join("hosts"), &hosts_file(host_network, hostname)?)?;
    write_file(&dir.join("resolv.conf"), &resolv_conf(dns)?)?;
    Ok(())
}

/// Replaces the pod's resolv.conf at `path` once the CNI result is known, when the
/// result's DNS changes it (see [`resolv_conf_with_network`]).
pub(super) fn update_resolv_conf(
    path: &Path,
    dns: Option<&DnsConfig>,
    network_name: &str,
    network_dns: &Dns,
) -> Result<()> {
    if let Some(text) = resolv_conf_with_network(dns, network_name, network_dns)? {
        crate::state_file::replace(path, &text, 0o644)
            .map_err(RuntimeError::io(format!("replacing {}", path.display())))?;
    }
    Ok(())
}

/// Replaces the pod's resolv.conf at `path` for the embedded DNS of user-defined
/// networks, as dockerd writes it: `nameserver 127.0.0.11`, the search domains (the
/// pod's, else the host's) and the options with `ndots:0`. The servers (the pod's, else
/// the host's) are where the embedded DNS forwards.
pub(super) fn write_embedded_dns_resolv_conf(path: &Path, dns: Option<&DnsConfig>) -> Result<()> {
    let (searches, mut options) = match given_dns_config(dns) {
        Some(dns) => {
            check_dns_config(dns)?;
            (dns.searches.clone(), dns.options.clone())
        }
        None => {
            let host = host_resolv_conf()?;
            let host = String::from_utf8_lossy(&host);
            let mut searches = Vec::new();
            let mut options = Vec::new();
            for line in host.lines() {
                let mut words = line.split_whitespace();
                match words.next() {
                    Some("search" | "domain") => searches = words.map(str::to_string).collect(),
                    Some("options") => options.extend(words.map(str::to_string)),
                    _ => {}
                }
            }
            (searches, options)
        }
    };
    options.retain(|o| !o.starts_with("ndots:"));
    options.push("ndots:0".into());
    let mut text = String::from("nameserver 127.0.0.11\n");
    if !searches.is_empty() {
        text.push_str(&format!("search {}\n", searches.join(" ")));
    }
    text.push_str(&format!("options {}\n", options.join(" ")));
    crate::state_file::replace(path, text.as_bytes(), 0o644)
        .map_err(RuntimeError::io(format!("replacing {}", path.display())))
}

fn write_file(path: &Path, contents: &[u8]) -> Result<()> {
    let mut file = std::fs::File::create(path)
        .map_err(RuntimeError::io(format!("creating {}", path.display())))?;
    file.write_all(contents)
        .map_err(RuntimeError::io(format!("writing {}", path.display())))?;
    file.set_permissions(std::fs::Permissions::from_mode(0o644))
        .map_err(RuntimeError::io(format!("chmod {}", path.display())))
}

/// Replaces the pod's /etc/hosts at `path` for a front end that manages it (Docker's
/// links and extra hosts): the base file as [`hosts_file`] makes it, `entries` (address,
/// names) after it, and the pod's own address with its hostname last, as dockerd
/// writes it (127.0.1.1 without an address). Regenerated before each start, so a
/// write cut by a crash is made whole by the next.
pub(super) fn write_hosts_with(
    path: &Path,
    host_network: bool,
    hostname: &str,
    own_ip: Option<&str>,
    entries: &[(String, String)],
) -> Result<()> {
    let mut text = String::from_utf8_lossy(&hosts_file(host_network, "")?).into_owned();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    for (ip, names) in entries {
        text.push_str(&format!("{ip}\t{names}\n"));
    }
    if !host_network && !hostname.is_empty() {
        text.push_str(&format!("{}\t{hostname}\n", own_ip.unwrap_or("127.0.1.1")));
    }
    // In place, not by a rename: a created container has bind-mounted this inode.
    write_file(path, text.as_bytes())
}

/// /etc/hosts of a pod: the host's for host-network pods, else localhost entries and
/// the pod's hostname (kubelet mounts its own managed file over this for k8s pods).
fn hosts_file(host_network: bool, hostname: &str) -> Result<Vec<u8>> {
    if host_network {
        return std::fs::read("/etc/hosts").or_else(|err| match err.kind() {
            std::io::ErrorKind::NotFound => Ok(Vec::new()),
            _ => Err(RuntimeError::Io {
                context: "reading /etc/hosts".into(),
                source: err,
            }),
        });
    }
    let mut text = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\n\
         ff02::2\tip6-allrouters\n",
    );
    if !hostname.is_empty() {
        text.push_str(&format!("127.0.1.1\t{hostname}\n"));
    }
    Ok(text.into_bytes())
}

/// /etc/resolv.conf of a pod: from the CRI `DNSConfig` when given (as containerd writes
/// it), else the host's.
fn resolv_conf(dns: Option<&DnsConfig>) -> Result<Vec<u8>> {
    let Some(dns) = given_dns_config(dns) else {
        return host_resolv_conf();
    };
    check_dns_config(dns)?;
    let mut text = String::new();
    if !dns.searches.is_empty() {
        text.push_str(&format!("search {}\n", dns.searches.join(" ")));
    }
    for server in &dns.servers {
        text.push_str(&format!("nameserver {server}\n"));
    }
    if !dns.options.is_empty() {
        text.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    Ok(text.into_bytes())
}

fn host_resolv_conf() -> Result<Vec<u8>> {
    std::fs::read(HOST_RESOLV_CONF).or_else(|err| match err.kind() {
        std::io::ErrorKind::NotFound => Ok(Vec::new()),
        _ => Err(RuntimeError::Io {
            context: format!("reading {HOST_RESOLV_CONF}"),
            source: err,
        }),
    })
}

const HOST_RESOLV_CONF: &str = "/etc/resolv.conf";

/// The pod's resolv.conf once the CNI result is known, or `None` when the result does
/// not change what [`resolv_conf`] wrote.
///
/// containerd (`setupSandboxFiles` in internal/cri/server/podsandbox/sandbox_run_linux.go)
/// and CRI-O (`server/sandbox_run_linux.go`) never read a result's `dns`: resolv.conf is
/// the CRI `DNSConfig`, or a copy of the host's when there is none (kubelet ignoring CNI
/// DNS is intended: kubernetes/kubernetes#72019). So a given `DNSConfig` wins here too.
/// Without one, the result's DNS is merged as podman does (libpod `generateResolvConf`
/// with the CNI backend): the network's nameservers first, then the host's; the
/// network's search domains replace the host's `search`/`domain` lines; everything
/// else of the host's file (options, sortlist) is kept. The result's `domain` and
/// `options` are not used (podman's network status carries neither).
fn resolv_conf_with_network(
    dns: Option<&DnsConfig>,
    network_name: &str,
    network: &Dns,
) -> Result<Option<Vec<u8>>> {
    if given_dns_config(dns).is_some()
        || (network.nameservers.is_empty() && network.search.is_empty())
    {
        return Ok(None);
    }
    check_result_dns(network_name, network)?;
    let host = host_resolv_conf()?;
    Ok(Some(
        merge_resolv_conf(&String::from_utf8_lossy(&host), network).into_bytes(),
    ))
}

/// `host` (a resolv.conf) with the network's nameservers put first and its search
/// domains, if any, replacing the host's.
fn merge_resolv_conf(host: &str, network: &Dns) -> String {
    let mut host_servers = Vec::new();
    let mut host_search = Vec::new();
    let mut rest = Vec::new();
    for line in host.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => host_servers.extend(words.next().map(str::to_string)),
            Some("search") | Some("domain") => host_search.push(line),
            _ => rest.push(line),
        }
    }
    let mut text = String::new();
    if network.search.is_empty() {
        for line in host_search {
            text.push_str(line);
            text.push('\n');
        }
    } else {
        text.push_str(&format!("search {}\n", network.search.join(" ")));
    }
    let mut servers: Vec<&String> = Vec::new();
    for server in network.nameservers.iter().chain(&host_servers) {
        if !servers.contains(&server) {
            servers.push(server);
        }
    }
    for server in servers {
        text.push_str(&format!("nameserver {server}\n"));
    }
    for line in rest {
        text.push_str(line);
        text.push('\n');
    }
    text
}

/// A plugin's DNS ends up in a file: nameservers must be IP addresses (as the spec says
/// they are) and search domains single words.
fn check_result_dns(network: &str, dns: &Dns) -> Result<()> {
    for (i, server) in dns.nameservers.iter().enumerate() {
        if server.parse::<std::net::IpAddr>().is_err() {
            return Err(RuntimeError::Internal(format!(
                "network {network}: the CNI result's dns.nameservers[{i}] {server:?} is not an IP address"
            )));
        }
    }
    for (i, domain) in dns.search.iter().enumerate() {
        if domain.is_empty() || domain.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(RuntimeError::Internal(format!(
                "network {network}: the CNI result's dns.search[{i}] {domain:?} is empty or contains whitespace"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_from_dns_config() {
        let dns = DnsConfig {
            servers: vec!["10.0.0.10".into()],
            searches: vec![
                "default.svc.cluster.local".into(),
                "svc.cluster.local".into(),
            ],
            options: vec!["ndots:5".into()],
        };
        let text = String::from_utf8(resolv_conf(Some(&dns)).unwrap()).unwrap();
        assert_eq!(
            text,
            "search default.svc.cluster.local svc.cluster.local\nnameserver 10.0.0.10\noptions ndots:5\n"
        );
        let bad = DnsConfig {
            servers: vec!["10.0.0.10\nnameserver 1.1.1.1".into()],
            ..Default::default()
        };
        assert!(resolv_conf(Some(&bad)).is_err());
    }

    #[test]
    fn result_dns_is_merged_only_without_a_dns_config() {
        let network = Dns {
            nameservers: vec!["10.77.0.53".into(), "fd77::53".into()],
            domain: Some("ignored.example".into()),
            search: vec!["net.example".into()],
            options: vec!["ignored:1".into()],
        };
        let host = "# generated\nsearch host.example\nnameserver 192.0.2.53\nnameserver 10.77.0.53\noptions edns0\n";
        assert_eq!(
            merge_resolv_conf(host, &network),
            "search net.example\nnameserver 10.77.0.53\nnameserver fd77::53\n\
             nameserver 192.0.2.53\n# generated\noptions edns0\n"
        );
        // No search domains from the network: the host's stay.
        let servers_only = Dns {
            nameservers: vec!["10.77.0.53".into()],
            ..Default::default()
        };
        assert_eq!(
            merge_resolv_conf(
                "domain host.example\nnameserver 192.0.2.53\n",
                &servers_only
            ),
            "domain host.example\nnameserver 10.77.0.53\nnameserver 192.0.2.53\n"
        );
        assert_eq!(
            merge_resolv_conf("", &network),
            "search net.example\nnameserver 10.77.0.53\nnameserver fd77::53\n"
        );
        // A CRI DNSConfig wins; an empty network DNS changes nothing.
        let given = DnsConfig {
            servers: vec!["10.96.0.10".into()],
            ..Default::default()
        };
        assert_eq!(
            resolv_conf_with_network(Some(&given), "n", &network).unwrap(),
            None
        );
        assert_eq!(
            resolv_conf_with_network(None, "n", &Dns::default()).unwrap(),
            None
        );
        let only_options = Dns {
            options: vec!["ndots:1".into()],
            ..Default::default()
        };
        assert_eq!(
            resolv_conf_with_network(None, "n", &only_options).unwrap(),
            None
        );
        assert!(resolv_conf_with_network(None, "n", &network)
            .unwrap()
            .is_some());
        assert!(
            resolv_conf_with_network(Some(&DnsConfig::default()), "n", &network)
                .unwrap()
                .is_some(),
            "an empty DNSConfig is no DNSConfig"
        );
    }

    #[test]
    fn result_dns_must_be_addresses_and_words() {
        let ok = Dns {
            nameservers: vec!["10.0.0.1".into(), "fd00::1".into()],
            search: vec!["a.example".into()],
            ..Default::default()
        };
        check_result_dns("n", &ok).unwrap();
        let bad_server = Dns {
            nameservers: vec!["10.0.0.1".into(), "10.0.0.2\nnameserver 1.1.1.1".into()],
            ..Default::default()
        };
        let err = check_result_dns("podnet", &bad_server)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("network podnet") && err.contains("dns.nameservers[1]"),
            "{err}"
        );
        let bad_search = Dns {
            search: vec!["a b".into()],
            ..Default::default()
        };
        let err = check_result_dns("podnet", &bad_search)
            .unwrap_err()
            .to_string();
        assert!(err.contains("dns.search[0]"), "{err}");
        // Checked only when used: a DNSConfig makes the result's DNS irrelevant.
        assert!(resolv_conf_with_network(None, "podnet", &bad_server).is_err());
        let given = DnsConfig {
            servers: vec!["10.96.0.10".into()],
            ..Default::default()
        };
        assert_eq!(
            resolv_conf_with_network(Some(&given), "podnet", &bad_server).unwrap(),
            None
        );
    }

    #[test]
    fn pod_hosts_file_names_the_pod() {
        let text = String::from_utf8(hosts_file(false, "web-0").unwrap()).unwrap();
        assert!(text.starts_with("127.0.0.1\tlocalhost\n"));
        assert!(text.ends_with("127.0.1.1\tweb-0\n"));
    }
}
