//! Packet filter rules of the built-in bridge networks, through the `iptables` and
//! `iptables-restore` commands (the nf_tables or legacy backend, whichever the host's
//! iptables uses), as Docker and the CNI plugins do: rules then sit beside theirs and
//! kube-proxy's in the same tables, and operators see them with `iptables -S`.
//!
//! Chains (shared by every wharf network on the host, each rule tagged with a comment
//! naming its network or pod):
//! - nat `WHARF-HOSTPORTS`, jumped to from PREROUTING and OUTPUT for local destination
//!   addresses: one DNAT rule per host port of a pod;
//! - nat `WHARF-POSTROUTING`: per network, masquerade of outbound pod traffic, of
//!   host-port traffic from 127.0.0.0/8 (the bridge has `route_localnet`), and of
//!   host-port traffic one pod sends to another (or itself) on the same bridge;
//! - filter `WHARF-FORWARD`, first in FORWARD: isolation, then accepts for the
//!   network's traffic (so a FORWARD policy of DROP does not cut pods off);
//! - filter `WHARF-ISOLATION-1` / `-2` (Docker's two-stage scheme): a packet leaving a
//!   wharf bridge for a different wharf bridge is dropped.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;
use tokio::io::AsyncWriteExt;

use crate::cni::PortMapping;

const HOSTPORTS: &str = "WHARF-HOSTPORTS";
const POSTROUTING: &str = "WHARF-POSTROUTING";
const FORWARD: &str = "WHARF-FORWARD";
const ISOLATION_1: &str = "WHARF-ISOLATION-1";
const ISOLATION_2: &str = "WHARF-ISOLATION-2";

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("cannot run {program}: {source} (install the Debian package iptables)")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed: {output}")]
    Failed { command: String, output: String },
    #[error("host port mapping {0}")]
    BadMapping(String),
}

type Result<T> = std::result::Result<T, FirewallError>;

/// The two programs, found in the usual sbin directories.
#[derive(Debug, Clone)]
pub struct Iptables {
    iptables: PathBuf,
    restore: PathBuf,
}

impl Default for Iptables {
    fn default() -> Self {
        Iptables {
            iptables: find_program("iptables"),
            restore: find_program("iptables-restore"),
        }
    }
}

fn find_program(name: &str) -> PathBuf {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .map(|dir| PathBuf::from(dir).join(name))
        .find(|path| path.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// A rule: its table, chain and match/target words.
struct Rule {
    table: &'static str,
    chain: &'static str,
    spec: Vec<String>,
    /// Inserted first in the chain instead of appended.
    first: bool,
}

fn rule(table: &'static str, chain: &'static str, spec: &[&str]) -> Rule {
    Rule {
        table,
        chain,
        spec: spec.iter().map(|s| s.to_string()).collect(),
        first: false,
    }
}

fn network_comment(bridge: &str) -> String {
    format!("wharf network {bridge}")
}

fn pod_comment(pod: &str) -> String {
    format!("wharf pod {pod}")
}

impl Iptables {
    async fn run(&self, args: &[&str]) -> Result<std::process::Output> {
        tokio::process::Command::new(&self.iptables)
            .arg("-w")
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(|source| FirewallError::Spawn {
                program: self.iptables.display().to_string(),
                source,
            })
    }

    async fn run_ok(&self, args: &[&str]) -> Result<String> {
        let output = self.run(args).await?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(FirewallError::Failed {
                command: format!("iptables {}", args.join(" ")),
                output: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            })
        }
    }

    /// Applies `script` (iptables-save format) without flushing anything else.
    async fn restore(&self, script: &str) -> Result<()> {
        let mut child = tokio::process::Command::new(&self.restore)
            .args(["-w", "--noflush"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|source| FirewallError::Spawn {
                program: self.restore.display().to_string(),
                source,
            })?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(script.as_bytes())
                .await
                .map_err(|source| FirewallError::Spawn {
                    program: self.restore.display().to_string(),
                    source,
                })?;
        }
        let output = child
            .wait_with_output()
            .await
            .map_err(|source| FirewallError::Spawn {
                program: self.restore.display().to_string(),
                source,
            })?;
        if output.status.success() {
            Ok(())
        } else {
            Err(FirewallError::Failed {
                command: format!("iptables-restore --noflush <<< {:?}", script.trim()),
                output: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            })
        }
    }

    async fn ensure_chain(&self, table: &str, chain: &str) -> Result<()> {
        let output = self.run(&["-t", table, "-N", chain]).await?;
        // Exit status 1 with "Chain already exists" is the expected steady state.
        if output.status.success()
            || self
                .run(&["-t", table, "-S", chain])
                .await?
                .status
                .success()
        {
            Ok(())
        } else {
            Err(FirewallError::Failed {
                command: format!("iptables -t {table} -N {chain}"),
                output: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            })
        }
    }

    /// Adds `rule` unless an identical one exists.
    async fn ensure_rule(&self, rule: &Rule) -> Result<()> {
        let spec: Vec<&str> = rule.spec.iter().map(String::as_str).collect();
        let mut check = vec!["-t", rule.table, "-C", rule.chain];
        check.extend(&spec);
        if self.run(&check).await?.status.success() {
            return Ok(());
        }
        let mut add = vec!["-t", rule.table];
        if rule.first {
            add.extend(["-I", rule.chain, "1"]);
        } else {
            add.extend(["-A", rule.chain]);
        }
        add.extend(&spec);
        self.run_ok(&add).await.map(drop)
    }

    /// Sets up the shared chains and the rules of one network; idempotent, so it runs
    /// whenever a network is (re)initialized.
    pub async fn ensure_network(
        &self,
        bridge: &str,
        subnet: Ipv4Net,
        masquerade: bool,
        internal: bool,
    ) -> Result<()> {
        for (table, chain) in [
            ("nat", HOSTPORTS),
            ("nat", POSTROUTING),
            ("filter", FORWARD),
            ("filter", ISOLATION_1),
            ("filter", ISOLATION_2),
        ] {
            self.ensure_chain(table, chain).await?;
        }
        let local = ["-m", "addrtype", "--dst-type", "LOCAL", "-j", HOSTPORTS];
        let mut jumps = vec![
            rule("nat", "PREROUTING", &local),
            rule("nat", "OUTPUT", &local),
            rule("nat", "POSTROUTING", &["-j", POSTROUTING]),
            rule("filter", "FORWARD", &["-j", FORWARD]),
            rule("filter", FORWARD, &["-j", ISOLATION_1]),
        ];
        jumps[3].first = true;
        jumps[4].first = true;
        for jump in &jumps {
            self.ensure_rule(jump).await?;
        }
        for rule in network_rules(bridge, subnet, masquerade, internal) {
            self.ensure_rule(&rule).await?;
        }
        Ok(())
    }

    /// Removes every rule tagged with the network's comment (the shared chains and
    /// their jumps stay); none is fine.
    pub async fn remove_network(&self, bridge: &str) -> Result<()> {
        let comment = network_comment(bridge);
        for table in ["nat", "filter"] {
            let chains: &[&str] = if table == "nat" {
                &[POSTROUTING, HOSTPORTS]
            } else {
                &[FORWARD, ISOLATION_1, ISOLATION_2]
            };
            let mut deletes = Vec::new();
            for chain in chains {
                deletes.extend(self.tagged_rules(table, chain, &comment).await?);
            }
            if !deletes.is_empty() {
                self.restore(&format!("*{table}\n{}\nCOMMIT\n", deletes.join("\n")))
                    .await?;
            }
        }
        Ok(())
    }

    /// DNAT rules for a pod's host ports, all in one atomic change.
    pub async fn add_host_ports(
        &self,
        pod: &str,
        ip: Ipv4Addr,
        ports: &[PortMapping],
    ) -> Result<()> {
        if ports.is_empty() {
            return Ok(());
        }
        let mut script = String::from("*nat\n");
        for mapping in ports {
            script.push_str(&format!(
                "-A {HOSTPORTS} {}\n",
                host_port_rule(pod, ip, mapping)?.join(" ")
            ));
        }
        script.push_str("COMMIT\n");
        self.restore(&script).await
    }

    /// Makes `ports` the host-port rules of `pod`, in one atomic change: its rules that
    /// exist are deleted and the given ones added (none: every rule of the pod goes).
    pub async fn set_host_ports(
        &self,
        pod: &str,
        ip: Ipv4Addr,
        ports: &[PortMapping],
    ) -> Result<()> {
        let mut lines = self
            .tagged_rules("nat", HOSTPORTS, &pod_comment(pod))
            .await?;
        for mapping in ports {
            lines.push(format!(
                "-A {HOSTPORTS} {}",
                host_port_rule(pod, ip, mapping)?.join(" ")
            ));
        }
        if lines.is_empty() {
            return Ok(());
        }
        self.restore(&format!("*nat\n{}\nCOMMIT\n", lines.join("\n")))
            .await
    }

    /// Removes every host-port rule of `pod`; none is fine.
    pub async fn remove_host_ports(&self, pod: &str) -> Result<()> {
        let deletes = self
            .tagged_rules("nat", HOSTPORTS, &pod_comment(pod))
            .await?;
        if deletes.is_empty() {
            return Ok(());
        }
        self.restore(&format!("*nat\n{}\nCOMMIT\n", deletes.join("\n")))
            .await
    }

    /// `-D` lines (iptables-save syntax) for the rules of `chain` tagged `comment`. A
    /// missing chain has none.
    async fn tagged_rules(&self, table: &str, chain: &str, comment: &str) -> Result<Vec<String>> {
        let output = self.run(&["-t", table, "-S", chain]).await?;
        if !output.status.success() {
            return Ok(Vec::new());
        }
        let quoted = format!("--comment \"{comment}\"");
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|line| line.starts_with("-A ") && line.contains(&quoted))
            .map(|line| format!("-D {}", &line[3..]))
            .collect())
    }
}

/// The per-network rules, tagged with the network's comment.
fn network_rules(bridge: &str, subnet: Ipv4Net, masquerade: bool, internal: bool) -> Vec<Rule> {
    let subnet = subnet.to_string();
    let comment = network_comment(bridge);
    let tag = ["-m", "comment", "--comment", comment.as_str()];
    let with_tag = |table, chain, spec: &[&str]| {
        let mut words: Vec<&str> = spec.to_vec();
        words.extend(tag);
        rule(table, chain, &words)
    };
    let mut rules = Vec::new();
    if internal {
        // Docker's internal networks: nothing in or out through other interfaces.
        rules.push(with_tag(
            "filter",
            ISOLATION_1,
            &["-i", bridge, "!", "-o", bridge, "-j", "DROP"],
        ));
        rules.push(with_tag(
            "filter",
            ISOLATION_1,
            &["!", "-i", bridge, "-o", bridge, "-j", "DROP"],
        ));
    }
    if masquerade {
        rules.push(with_tag(
            "nat",
            POSTROUTING,
            &["-s", &subnet, "!", "-o", bridge, "-j", "MASQUERADE"],
        ));
    }
    rules.extend([
        with_tag(
            "nat",
            POSTROUTING,
            &["-s", "127.0.0.0/8", "-o", bridge, "-j", "MASQUERADE"],
        ),
        with_tag(
            "nat",
            POSTROUTING,
            &[
                "-s",
                &subnet,
                "-o",
                bridge,
                "-m",
                "conntrack",
                "--ctstate",
                "DNAT",
                "-j",
                "MASQUERADE",
            ],
        ),
        with_tag(
            "filter",
            ISOLATION_1,
            &["-i", bridge, "!", "-o", bridge, "-j", ISOLATION_2],
        ),
        with_tag("filter", ISOLATION_2, &["-o", bridge, "-j", "DROP"]),
        with_tag(
            "filter",
            FORWARD,
            &[
                "-o",
                bridge,
                "-m",
                "conntrack",
                "--ctstate",
                "RELATED,ESTABLISHED,DNAT",
                "-j",
                "ACCEPT",
            ],
        ),
        with_tag("filter", FORWARD, &["-i", bridge, "-j", "ACCEPT"]),
    ]);
    rules
}

/// The words of one DNAT rule (without `-A chain`), quoted for iptables-restore.
fn host_port_rule(pod: &str, ip: Ipv4Addr, mapping: &PortMapping) -> Result<Vec<String>> {
    let protocol = match mapping.protocol.to_ascii_lowercase().as_str() {
        "" | "tcp" => "tcp",
        "udp" => "udp",
        "sctp" => "sctp",
        other => {
            return Err(FirewallError::BadMapping(format!(
                "{}: unknown protocol {other:?}",
                mapping.host_port
            )))
        }
    };
    let mut words = vec!["-p".to_string(), protocol.to_string()];
    let host_ip = mapping.host_ip.trim();
    if !host_ip.is_empty() && host_ip != "0.0.0.0" {
        let addr: Ipv4Addr = host_ip.parse().map_err(|_| {
            FirewallError::BadMapping(format!(
                "{}: host_ip {host_ip:?} is not an IPv4 address (the built-in bridge network is IPv4 only)",
                mapping.host_port
            ))
        })?;
        words.extend(["-d".to_string(), format!("{addr}/32")]);
    }
    words.extend([
        "--dport".to_string(),
        mapping.host_port.to_string(),
        "-m".to_string(),
        "comment".to_string(),
        "--comment".to_string(),
        format!("\"{}\"", pod_comment(pod)),
        "-j".to_string(),
        "DNAT".to_string(),
        "--to-destination".to_string(),
        format!("{ip}:{}", mapping.container_port),
    ]);
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_rules_name_the_pod_and_address() {
        let mapping = PortMapping {
            host_port: 8080,
            container_port: 80,
            protocol: "TCP".into(),
            host_ip: "127.0.0.1".into(),
        };
        let words = host_port_rule("abc", "10.88.0.5".parse().unwrap(), &mapping).unwrap();
        assert_eq!(
            words.join(" "),
            "-p tcp -d 127.0.0.1/32 --dport 8080 -m comment --comment \"wharf pod abc\" \
             -j DNAT --to-destination 10.88.0.5:80"
        );
        let any = PortMapping {
            host_ip: "0.0.0.0".into(),
            protocol: "udp".into(),
            ..mapping.clone()
        };
        let words = host_port_rule("abc", "10.88.0.5".parse().unwrap(), &any).unwrap();
        assert!(words.starts_with(&["-p".into(), "udp".into(), "--dport".into()]));
    }

    #[test]
    fn bad_mappings_are_refused_by_name() {
        let v6 = PortMapping {
            host_port: 80,
            container_port: 80,
            protocol: "tcp".into(),
            host_ip: "::1".into(),
        };
        let err = host_port_rule("p", Ipv4Addr::LOCALHOST, &v6).unwrap_err();
        assert!(err.to_string().contains("::1"), "{err}");
        let icmp = PortMapping {
            protocol: "icmp".into(),
            host_ip: String::new(),
            ..v6
        };
        let err = host_port_rule("p", Ipv4Addr::LOCALHOST, &icmp).unwrap_err();
        assert!(err.to_string().contains("icmp"), "{err}");
    }

    #[test]
    fn network_rules_are_tagged_and_masquerade_is_optional() {
        let subnet = "10.88.0.0/16".parse().unwrap();
        let with = network_rules("wharf0", subnet, true, false);
        let without = network_rules("wharf0", subnet, false, false);
        let internal = network_rules("wharf0", subnet, false, true);
        assert_eq!(internal.len(), without.len() + 2);
        assert_eq!(with.len(), without.len() + 1);
        for rule in &with {
            assert!(rule
                .spec
                .join(" ")
                .contains("--comment wharf network wharf0"));
        }
        assert!(with[0]
            .spec
            .join(" ")
            .starts_with("-s 10.88.0.0/16 ! -o wharf0"));
    }
}
