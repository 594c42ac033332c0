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

/// The programs, found in the usual sbin directories.
#[derive(Debug, Clone)]
pub struct Iptables {
    iptables: PathBuf,
    save: PathBuf,
    restore: PathBuf,
}

impl Default for Iptables {
    fn default() -> Self {
        Iptables {
            iptables: find_program("iptables"),
            save: find_program("iptables-save"),
            restore: find_program("iptables-restore"),
        }
    }
}

/// What `program args` printed, without input.
async fn output_of(program: &std::path::Path, args: &[&str]) -> Result<std::process::Output> {
    tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|source| FirewallError::Spawn {
            program: program.display().to_string(),
            source,
        })
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

impl Rule {
    /// The rule as an iptables-restore line (`-A chain words`, or `-I chain 1 words`),
    /// words with spaces quoted as iptables-save quotes them.
    fn restore_line(&self) -> String {
        let op = if self.first { "-I" } else { "-A" };
        let position = if self.first { " 1" } else { "" };
        format!("{op} {}{position} {}", self.chain, quoted_words(&self.spec))
    }

    /// The line iptables-save shows for it, if it prints the words as written.
    fn saved_line(&self) -> String {
        format!("-A {} {}", self.chain, quoted_words(&self.spec))
    }
}

fn quoted_words(words: &[String]) -> String {
    words
        .iter()
        .map(|w| {
            if w.contains(' ') {
                format!("\"{w}\"")
            } else {
                w.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// What `iptables-save` printed.
struct Saved {
    text: String,
}

impl Saved {
    /// The lines of `table`'s section.
    fn section(&self, table: &str) -> impl Iterator<Item = &str> {
        let header = format!("*{table}");
        self.text
            .lines()
            .skip_while(move |l| *l != header)
            .skip(1)
            .take_while(|l| *l != "COMMIT")
    }

    fn has_chain(&self, table: &str, chain: &str) -> bool {
        let prefix = format!(":{chain} ");
        self.section(table).any(|l| l.starts_with(&prefix))
    }

    fn has_rule(&self, rule: &Rule) -> bool {
        let line = rule.saved_line();
        self.section(rule.table).any(|l| l == line)
    }

    /// The `-A` lines of `table`.
    fn rules<'a>(&'a self, table: &'a str) -> impl Iterator<Item = &'a str> {
        self.section(table).filter(|l| l.starts_with("-A "))
    }
}

/// An iptables-restore script, by table (in the order first used).
#[derive(Default)]
struct Script {
    tables: Vec<(&'static str, Vec<String>)>,
}

impl Script {
    fn line(&mut self, table: &'static str, line: String) {
        match self.tables.iter_mut().find(|(t, _)| *t == table) {
            Some((_, lines)) => lines.push(line),
            None => self.tables.push((table, vec![line])),
        }
    }

    fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }

    fn text(&self) -> String {
        self.tables
            .iter()
            .map(|(table, lines)| format!("*{table}\n{}\nCOMMIT\n", lines.join("\n")))
            .collect()
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
        let mut with_wait = vec!["-w"];
        with_wait.extend(args);
        output_of(&self.iptables, &with_wait).await
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

    /// Sets up the shared chains and the rules of one network; idempotent, so it runs
    /// whenever a network is (re)initialized. One `iptables-save` tells what is there
    /// and one `iptables-restore` adds the rest in one transaction (a process per rule
    /// was most of a network's first attach); a rule the save does not show in the
    /// words it is written with is checked with `iptables -C` before it is added.
    pub async fn ensure_network(
        &self,
        bridge: &str,
        subnet: Ipv4Net,
        masquerade: bool,
        internal: bool,
    ) -> Result<()> {
        let saved = self.save_all().await?;
        let mut script = Script::default();
        for (table, chain) in [
            ("nat", HOSTPORTS),
            ("nat", POSTROUTING),
            ("filter", FORWARD),
            ("filter", ISOLATION_1),
            ("filter", ISOLATION_2),
        ] {
            if !saved.has_chain(table, chain) {
                script.line(table, format!(":{chain} - [0:0]"));
            }
        }
        let local = ["-m", "addrtype", "--dst-type", "LOCAL", "-j", HOSTPORTS];
        let mut jumps = [
            rule("nat", "PREROUTING", &local),
            rule("nat", "OUTPUT", &local),
            rule("nat", "POSTROUTING", &["-j", POSTROUTING]),
            rule("filter", "FORWARD", &["-j", FORWARD]),
            rule("filter", FORWARD, &["-j", ISOLATION_1]),
        ];
        jumps[3].first = true;
        jumps[4].first = true;
        // A network none of whose rules is there (a new one) needs no checks.
        let comment = format!("--comment \"{}\"", network_comment(bridge));
        let new_network = !saved.text.contains(&comment);
        let rules = network_rules(bridge, subnet, masquerade, internal);
        let wanted = jumps.iter().map(|r| (r, false));
        for (rule, surely_absent) in wanted.chain(rules.iter().map(|r| (r, new_network))) {
            if saved.has_rule(rule) {
                continue;
            }
            if !surely_absent && self.exists(rule).await? {
                continue;
            }
            script.line(rule.table, rule.restore_line());
        }
        if script.is_empty() {
            return Ok(());
        }
        self.restore(&script.text()).await
    }

    /// Removes every rule tagged with the network's comment (the shared chains and
    /// their jumps stay); none is fine. One save, one restore.
    pub async fn remove_network(&self, bridge: &str) -> Result<()> {
        let saved = self.save_all().await?;
        let quoted = format!("--comment \"{}\"", network_comment(bridge));
        let mut script = Script::default();
        for (table, chains) in [
            ("nat", &[POSTROUTING, HOSTPORTS][..]),
            ("filter", &[FORWARD, ISOLATION_1, ISOLATION_2][..]),
        ] {
            for line in saved.rules(table) {
                let in_chain = chains.iter().any(|c| {
                    line.strip_prefix("-A ")
                        .is_some_and(|l| l.starts_with(&format!("{c} ")))
                });
                if in_chain && line.contains(&quoted) {
                    script.line(table, format!("-D {}", &line[3..]));
                }
            }
        }
        if script.is_empty() {
            return Ok(());
        }
        self.restore(&script.text()).await
    }

    /// Every table's rules, as `iptables-save` prints them.
    async fn save_all(&self) -> Result<Saved> {
        let output = output_of(&self.save, &[]).await?;
        if !output.status.success() {
            return Err(FirewallError::Failed {
                command: self.save.display().to_string(),
                output: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            });
        }
        Ok(Saved {
            text: String::from_utf8_lossy(&output.stdout).into_owned(),
        })
    }

    /// Whether `rule` is there (`iptables -C`).
    async fn exists(&self, rule: &Rule) -> Result<bool> {
        let spec: Vec<&str> = rule.spec.iter().map(String::as_str).collect();
        let mut check = vec!["-t", rule.table, "-C", rule.chain];
        check.extend(&spec);
        Ok(self.run(&check).await?.status.success())
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
    // The tag before the target, where iptables-save prints matches: a rule reads
    // back as written (`Saved::has_rule`).
    let with_tag = |table, chain, spec: &[&str]| {
        let target = spec.iter().position(|w| *w == "-j").unwrap_or(spec.len());
        let mut words: Vec<&str> = spec[..target].to_vec();
        words.extend(tag);
        words.extend(&spec[target..]);
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
    fn a_save_tells_chains_and_rules_by_table() {
        let saved = Saved {
            text: "*filter\n:FORWARD DROP [0:0]\n:WHARF-FORWARD - [0:0]\n\
                   -A FORWARD -j WHARF-FORWARD\nCOMMIT\n*nat\n:POSTROUTING ACCEPT [0:0]\n\
                   -A WHARF-POSTROUTING -s 10.1.2.0/24 ! -o wh0 -m comment --comment \"wharf network wh0\" -j MASQUERADE\n\
                   COMMIT\n"
                .to_string(),
        };
        assert!(saved.has_chain("filter", FORWARD));
        assert!(!saved.has_chain("nat", FORWARD));
        let mut jump = rule("filter", "FORWARD", &["-j", FORWARD]);
        assert!(saved.has_rule(&jump));
        jump.first = true;
        assert_eq!(jump.restore_line(), "-I FORWARD 1 -j WHARF-FORWARD");
        let tagged = network_rules("wh0", "10.1.2.0/24".parse().unwrap(), true, false);
        assert!(saved.has_rule(&tagged[0]), "{}", tagged[0].saved_line());
        assert!(!saved.has_rule(&tagged[1]));
        assert_eq!(saved.rules("nat").count(), 1);
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
