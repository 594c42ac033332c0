//! The built-in bridge network: what the CNI `bridge` + `host-local` + `portmap`
//! plugins do, done inside wharfd without spawning a process per plugin.
//!
//! - a Linux bridge (default `wharf0`) holding the gateway address of the subnet;
//! - per pod a veth pair made with rtnetlink: the host end enslaved to the bridge, the
//!   other end created directly inside the pod's network namespace as `eth0`, given
//!   its address and a default route through the gateway;
//! - IPAM: leases are store records (`network` namespace, kind `lease`, id
//!   `<network>/<ip>`, name `<network>/<pod>/<ifname>`), so the database enforces that
//!   no address and no attachment is leased twice; leases survive restarts and are
//!   deleted on detach;
//! - iptables rules for masquerade, host ports (DNAT, from 127.0.0.1 too) and isolation
//!   from other wharf bridges (see [`firewall`]);
//! - published ports (Docker's `-p`): host ports added to an attachment while its
//!   container runs, chosen free of other attachments' ports and of host sockets
//!   ([`hostports`]), kept in the lease beside the pod's own host ports.
//!
//! Crash safety: the lease (with the pod's host ports) is stored before any link or
//! rule is made, and detach removes rules, then the veth, then the lease. A crash at
//! any point leaves a lease that a later detach (which the pod record owes) cleans up.

mod firewall;
mod hostports;
mod ipam;
mod netlink;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::sync::Arc;

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use sha2::Digest;

use super::{Attachment, CniResult, PortMapping};
use crate::store::{Kind, Store, StoreError, NETWORK_NAMESPACE};

pub use firewall::FirewallError;
pub use ipam::{choose_subnet, gateway6, overlaps, IpamError};
pub use netlink::NetlinkError;

/// The network as configured (`[network.bridge]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeSpec {
    /// The bridge link name, also the network's name.
    pub bridge: String,
    /// None: chosen among the defaults, avoiding the host's routes, and remembered.
    pub subnet: Option<Ipv4Net>,
    pub masquerade: bool,
    pub ip_forward: bool,
    pub mtu: u32,
    /// The bridge's own address; None: the subnet's first host.
    pub gateway: Option<Ipv4Addr>,
    /// Where dynamic addresses come from; None: the whole subnet.
    pub ip_range: Option<Ipv4Net>,
    /// No traffic leaves the bridge (no default route, no masquerade), as Docker's
    /// `--internal` networks.
    pub internal: bool,
    /// Pod MACs derived from their address (02:42 + the IPv4 bytes), as dockerd's.
    pub mac_from_ip: bool,
    /// An IPv6 subnet beside the IPv4 one (Docker's `--ipv6`): each pod gets an
    /// address of it too, and the bridge its gateway. No NAT and no firewall rules
    /// for IPv6, as dockerd 20.10 without ip6tables.
    pub subnet6: Option<Ipv6Net>,
    /// The bridge's IPv6 address; None: the subnet's first host.
    pub gateway6: Option<Ipv6Addr>,
}

impl BridgeSpec {
    /// A spec with the built-in defaults for what only user-defined networks set.
    pub fn basic(
        bridge: String,
        subnet: Option<Ipv4Net>,
        masquerade: bool,
        ip_forward: bool,
        mtu: u32,
    ) -> BridgeSpec {
        BridgeSpec {
            bridge,
            subnet,
            masquerade,
            ip_forward,
            mtu,
            gateway: None,
            ip_range: None,
            internal: false,
            mac_from_ip: false,
            subnet6: None,
            gateway6: None,
        }
    }

    fn gateway_of(&self, subnet: &Ipv4Net) -> Ipv4Addr {
        self.gateway.unwrap_or_else(|| ipam::gateway(subnet))
    }

    /// The IPv6 subnet and the bridge's address in it, when the network has IPv6.
    fn ipv6(&self) -> Option<(Ipv6Net, Ipv6Addr)> {
        let subnet = self.subnet6?.trunc();
        Some((
            subnet,
            self.gateway6.unwrap_or_else(|| ipam::gateway6(&subnet)),
        ))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("bridge network {network}: {source}")]
    Netlink {
        network: String,
        source: NetlinkError,
    },
    #[error("bridge network {network}: {source}")]
    Firewall {
        network: String,
        source: FirewallError,
    },
    #[error("bridge network {network}: {source}")]
    Ipam { network: String, source: IpamError },
    #[error("bridge network {network}: host port {host_port}/{protocol}{} is already allocated to pod {holder}", host_ip_suffix(.host_ip))]
    PortInUse {
        network: String,
        host_port: u16,
        protocol: String,
        host_ip: String,
        holder: String,
    },
    #[error("bridge network {network}: cannot publish host port {}:{host_port}/{protocol} of pod {pod}: {reason}", any_ip(.host_ip))]
    HostPortTaken {
        network: String,
        pod: String,
        host_ip: String,
        host_port: u16,
        protocol: String,
        reason: String,
    },
    #[error("bridge network {network}: cannot publish a host port of pod {pod}: every port of {first}-{last}/{protocol}{} is taken", host_ip_suffix(.host_ip))]
    NoFreeHostPort {
        network: String,
        pod: String,
        first: u16,
        last: u16,
        protocol: String,
        host_ip: String,
    },
    #[error("bridge network {network}: no free subnet: every default candidate (10.88.0.0/16 to 10.127.0.0/16) overlaps a host route or address; set network.bridge.subnet")]
    NoSubnet { network: String },
    #[error("bridge network {network}: invalid {field}: {reason}")]
    InvalidRequest {
        network: String,
        field: &'static str,
        reason: String,
    },
    #[error("bridge network {network}: {reason}")]
    NotAttached { network: String, reason: String },
    #[error("bridge network {network}: {reason}")]
    Internal { network: String, reason: String },
    #[error("bridge network {network}: cannot write {path}: {source}")]
    Sysctl {
        network: String,
        path: String,
        source: std::io::Error,
    },
    #[error("bridge network {network}: lease store: {source}")]
    Store { network: String, source: StoreError },
}

impl crate::error::HasKind for BridgeError {
    fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            BridgeError::InvalidRequest { .. } => ErrorKind::InvalidArgument,
            BridgeError::PortInUse { .. } | BridgeError::HostPortTaken { .. } => {
                ErrorKind::AlreadyExists
            }
            BridgeError::NoFreeHostPort { .. } => ErrorKind::ResourceExhausted,
            BridgeError::Ipam { source, .. } => source.kind(),
            BridgeError::NoSubnet { .. } => ErrorKind::ResourceExhausted,
            BridgeError::Store { source, .. } => source.kind(),
            BridgeError::NotAttached { .. } => ErrorKind::NotFound,
            BridgeError::Netlink { .. }
            | BridgeError::Internal { .. }
            | BridgeError::Firewall { .. }
            | BridgeError::Sysctl { .. } => ErrorKind::Internal,
        }
    }
}

/// A binding's host address as dockerd writes it: 0.0.0.0 for every address.
fn any_ip(host_ip: &str) -> &str {
    if host_ip.is_empty() {
        "0.0.0.0"
    } else {
        host_ip
    }
}

fn host_ip_suffix(host_ip: &str) -> String {
    if host_ip.is_empty() {
        String::new()
    } else {
        format!(" on {host_ip}")
    }
}

/// One address lease: who has it, through which host link, with which host ports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Lease {
    network: String,
    ip: Ipv4Addr,
    container_id: String,
    ifname: String,
    host_veth: String,
    #[serde(default)]
    ports: Vec<PortMapping>,
    /// Published while the pod's container runs ([`BridgeNetwork::publish`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    published: Vec<PortMapping>,
    /// The IPv6 address, on a network with IPv6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ip6: Option<Ipv6Addr>,
}

/// A port to publish: `mapping.host_port` is the first host port that will do,
/// `host_port_last` the last (0: only the first); a host port of 0 means any port of the
/// host's ephemeral range.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishRequest {
    pub mapping: PortMapping,
    pub host_port_last: u16,
}

impl Lease {
    fn id(&self) -> String {
        format!("{}/{}", self.network, self.ip)
    }
}

/// The addresses an attachment asks for: IPv4, IPv6.
type Requested = (Option<Ipv4Addr>, Option<Ipv6Addr>);

/// The subnet remembered for a network whose subnet was chosen automatically.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct NetworkRecord {
    bridge: String,
    subnet: Ipv4Net,
}

/// What setup established; valid while the bridge exists.
#[derive(Debug, Clone, Copy)]
struct Ready {
    subnet: Ipv4Net,
    bridge_index: u32,
}

#[derive(Default)]
struct State {
    netlink: Option<netlink::Netlink>,
    ready: Option<Ready>,
    pool: Option<ipam::Pool>,
    /// (container id, ifname) -> lease.
    leases: HashMap<(String, String), Lease>,
}

pub struct BridgeNetwork {
    spec: BridgeSpec,
    store: Arc<Store>,
    iptables: firewall::Iptables,
    /// Setup and address allocation; held only for in-memory and store work plus the
    /// first setup, never across a pod's link configuration.
    state: tokio::sync::Mutex<State>,
}

impl std::fmt::Debug for BridgeNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BridgeNetwork")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

impl BridgeNetwork {
    /// Loads the network's leases; nothing on the host is touched until first use.
    pub fn new(spec: BridgeSpec, store: Arc<Store>) -> Result<BridgeNetwork, BridgeError> {
        let mut state = State::default();
        let records = store
            .list::<Lease>(Some(NETWORK_NAMESPACE), Kind::Lease)
            .map_err(|source| BridgeError::Store {
                network: spec.bridge.clone(),
                source,
            })?;
        for record in records {
            let lease = record.value;
            if lease.network == spec.bridge {
                state
                    .leases
                    .insert((lease.container_id.clone(), lease.ifname.clone()), lease);
            }
        }
        Ok(BridgeNetwork {
            spec,
            store,
            iptables: firewall::Iptables::default(),
            state: tokio::sync::Mutex::new(state),
        })
    }

    pub fn name(&self) -> &str {
        &self.spec.bridge
    }

    /// Sets the network up if it is not (bridge, address, sysctls, rules); the error
    /// says what is missing, for NetworkReady.
    pub async fn ready(&self) -> Result<(), BridgeError> {
        let mut state = self.state.lock().await;
        self.ensure_ready(&mut state).await.map(drop)
    }

    /// Attaches one pod interface; returns a CNI 1.0 result as the bridge plugin would.
    pub async fn add(&self, attachment: &Attachment) -> Result<CniResult, BridgeError> {
        let network = &self.spec.bridge;
        let requested_ip = self.requested_ip(attachment)?;
        let mac = match attachment.capability_args.mac.as_deref() {
            None | Some("") => None,
            Some(text) => {
                Some(
                    netlink::parse_mac(text).ok_or_else(|| BridgeError::InvalidRequest {
                        network: network.clone(),
                        field: "mac",
                        reason: format!("{text:?} is not a MAC address like 02:42:0a:58:00:05"),
                    })?,
                )
            }
        };
        let (ready, lease, netlink) = {
            let mut state = self.state.lock().await;
            let ready = self.ensure_ready(&mut state).await?;
            let lease = self.lease(&mut state, attachment, requested_ip)?;
            let netlink = self.netlink(&mut state)?;
            (ready, lease, netlink)
        };
        match self.plumb(&netlink, ready, &lease, attachment, mac).await {
            Ok(mac) => self.result(ready, &lease, attachment, &mac),
            Err(err) => {
                tracing::warn!(network = %network, container_id = %attachment.container_id, error = %err, "bridge attach failed; undoing it");
                if let Err(undo) = self.del(attachment).await {
                    tracing::warn!(network = %network, container_id = %attachment.container_id, error = %undo, "undoing a failed bridge attach failed too; a later detach retries");
                }
                Err(err)
            }
        }
    }

    /// Detaches one pod interface: host-port rules, the veth, then the lease. Nothing
    /// leased is fine (never attached, or already detached).
    pub async fn del(&self, attachment: &Attachment) -> Result<(), BridgeError> {
        let key = (attachment.container_id.clone(), attachment.ifname.clone());
        let (lease, netlink) = {
            let mut state = self.state.lock().await;
            let Some(lease) = state.leases.get(&key).cloned() else {
                return Ok(());
            };
            (lease, self.netlink(&mut state)?)
        };
        if !lease.ports.is_empty() || !lease.published.is_empty() {
            self.iptables
                .remove_host_ports(&lease.container_id)
                .await
                .map_err(|source| self.firewall_error(source))?;
        }
        netlink
            .delete_link(&lease.host_veth)
            .await
            .map_err(|source| self.netlink_error(source))?;
        let mut state = self.state.lock().await;
        self.store
            .update(|tx| tx.delete(NETWORK_NAMESPACE, Kind::Lease, &lease.id()))
            .map_err(|source| self.store_error(source))?;
        if let Some(pool) = state.pool.as_mut() {
            pool.release(lease.ip);
        }
        state.leases.remove(&key);
        tracing::info!(network = %self.spec.bridge, container_id = %lease.container_id, ip = %lease.ip, "bridge detach done");
        Ok(())
    }

    /// Releases the leases (links and rules too) of attachments whose owner is not in
    /// `owned`: left when a pod record was deleted although its detach failed.
    pub async fn release_unowned(&self, owned: &std::collections::HashSet<String>) {
        let unowned: Vec<Lease> = {
            let state = self.state.lock().await;
            state
                .leases
                .values()
                .filter(|lease| !owned.contains(&lease.container_id))
                .cloned()
                .collect()
        };
        for lease in unowned {
            tracing::warn!(network = %self.spec.bridge, container_id = %lease.container_id, ip = %lease.ip, "releasing a lease no pod owns");
            let attachment = Attachment {
                container_id: lease.container_id.clone(),
                ifname: lease.ifname.clone(),
                ..Default::default()
            };
            if let Err(err) = self.del(&attachment).await {
                tracing::error!(network = %self.spec.bridge, container_id = %lease.container_id, error = %err, "cannot release an unowned lease");
            }
        }
    }

    /// The subnet, once the network is set up.
    pub async fn current_subnet(&self) -> Option<Ipv4Net> {
        self.state.lock().await.ready.map(|r| r.subnet)
    }

    /// The (container id, ifname, ip) of every lease.
    pub async fn leases(&self) -> Vec<(String, String, Ipv4Addr)> {
        let state = self.state.lock().await;
        state
            .leases
            .values()
            .map(|l| (l.container_id.clone(), l.ifname.clone(), l.ip))
            .collect()
    }

    /// Removes the network from the host: its rules, then the bridge. Leases must be
    /// gone first (the caller checks); a missing bridge or rule is fine, so a removal
    /// interrupted by a crash can run again.
    pub async fn remove(&self) -> Result<(), BridgeError> {
        let mut state = self.state.lock().await;
        let netlink = self.netlink(&mut state)?;
        // Independent, and each mostly a wait on the kernel (an nftables commit, a
        // device's unregistering, which holds its thread in the netlink send): the
        // link on a task of its own, so both run at once.
        let link = {
            let bridge = self.spec.bridge.clone();
            tokio::spawn(async move { netlink.delete_link(&bridge).await })
        };
        let rules = self.iptables.remove_network(&self.spec.bridge).await;
        let link = link.await.map_err(|err| BridgeError::Internal {
            network: self.spec.bridge.clone(),
            reason: format!("deleting the bridge link: the task failed: {err}"),
        })?;
        rules.map_err(|source| self.firewall_error(source))?;
        link.map_err(|source| self.netlink_error(source))?;
        state.ready = None;
        state.pool = None;
        tracing::info!(network = %self.spec.bridge, "bridge network removed");
        Ok(())
    }

    /// CHECK: the lease exists and its host link is on the bridge.
    pub async fn check(&self, attachment: &Attachment) -> Result<(), BridgeError> {
        let key = (attachment.container_id.clone(), attachment.ifname.clone());
        let (lease, netlink) = {
            let mut state = self.state.lock().await;
            let lease = state.leases.get(&key).cloned();
            (lease, self.netlink(&mut state)?)
        };
        let missing = |reason: String| BridgeError::NotAttached {
            network: self.spec.bridge.clone(),
            reason,
        };
        let lease = lease.ok_or_else(|| {
            missing(format!(
                "container {} interface {} has no lease",
                attachment.container_id, attachment.ifname
            ))
        })?;
        match netlink.link_index(&lease.host_veth).await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(missing(format!("host link {} is gone", lease.host_veth))),
            Err(source) => Err(self.netlink_error(source)),
        }
    }

    /// Publishes host ports for an attached pod interface, replacing what it published
    /// before: each request gets the first free port of its range (tried from a random
    /// point of it), free meaning no other attachment holds it on an overlapping
    /// address and no host socket uses it. The lease is stored before the rules are
    /// written (one atomic change), so a crash leaves what a detach removes. Returns
    /// the mappings made, in the order asked.
    pub async fn publish(
        &self,
        attachment: &Attachment,
        requests: &[PublishRequest],
    ) -> Result<Vec<PortMapping>, BridgeError> {
        self.publish_beside(attachment, requests, Vec::new()).await
    }

    /// [`publish`](Self::publish), with `elsewhere` (host ports other networks hold, and
    /// whose) counted as taken: one host port is DNATed into one network only.
    pub async fn publish_beside(
        &self,
        attachment: &Attachment,
        requests: &[PublishRequest],
        elsewhere: Vec<(PortMapping, String)>,
    ) -> Result<Vec<PortMapping>, BridgeError> {
        let key = (attachment.container_id.clone(), attachment.ifname.clone());
        let mut state = self.state.lock().await;
        let mut lease =
            state
                .leases
                .get(&key)
                .cloned()
                .ok_or_else(|| BridgeError::NotAttached {
                    network: self.spec.bridge.clone(),
                    reason: format!(
                        "container {} interface {} has no lease to publish ports on",
                        attachment.container_id, attachment.ifname
                    ),
                })?;
        let mut held = elsewhere;
        for other in state.leases.values() {
            let own = other.container_id == lease.container_id && other.ifname == lease.ifname;
            let mut ports: Vec<&PortMapping> = other.ports.iter().collect();
            if !own {
                ports.extend(&other.published);
            }
            held.extend(
                ports
                    .into_iter()
                    .map(|p| (p.clone(), other.container_id.clone())),
            );
        }
        let chosen = self.choose_host_ports(&lease.container_id, requests, &mut held)?;
        let before = lease.clone();
        lease.published = chosen.clone();
        self.save_lease(&lease)?;
        state.leases.insert(key.clone(), lease.clone());
        let all: Vec<PortMapping> = lease
            .ports
            .iter()
            .chain(&lease.published)
            .cloned()
            .collect();
        if let Err(source) = self
            .iptables
            .set_host_ports(&lease.container_id, lease.ip, &all)
            .await
        {
            if let Err(undo) = self.save_lease(&before) {
                tracing::warn!(network = %self.spec.bridge, container_id = %lease.container_id, error = %undo, "restoring the lease after failed host-port rules");
            }
            state.leases.insert(key, before);
            return Err(self.firewall_error(source));
        }
        tracing::info!(network = %self.spec.bridge, container_id = %lease.container_id, ports = ?chosen, "host ports published");
        Ok(chosen)
    }

    /// The host ports this network holds (the pods' own and those published), with
    /// the pod holding each.
    pub async fn held_host_ports(&self) -> Vec<(PortMapping, String)> {
        let state = self.state.lock().await;
        state
            .leases
            .values()
            .flat_map(|lease| {
                lease
                    .ports
                    .iter()
                    .chain(&lease.published)
                    .map(|p| (p.clone(), lease.container_id.clone()))
            })
            .collect()
    }

    /// Withdraws what [`publish`](Self::publish) made for the interface (the pod's own
    /// host ports stay). Nothing published, or no lease, is fine.
    pub async fn unpublish(&self, attachment: &Attachment) -> Result<(), BridgeError> {
        let key = (attachment.container_id.clone(), attachment.ifname.clone());
        let mut state = self.state.lock().await;
        let Some(mut lease) = state.leases.get(&key).cloned() else {
            return Ok(());
        };
        if lease.published.is_empty() {
            return Ok(());
        }
        // Rules first: a crash after them leaves a lease that a detach cleans up.
        self.iptables
            .set_host_ports(&lease.container_id, lease.ip, &lease.ports)
            .await
            .map_err(|source| self.firewall_error(source))?;
        lease.published.clear();
        self.save_lease(&lease)?;
        state.leases.insert(key, lease.clone());
        tracing::info!(network = %self.spec.bridge, container_id = %lease.container_id, "published host ports withdrawn");
        Ok(())
    }

    /// Picks a free host port for each request; `held` has what is taken (and gets what
    /// is chosen).
    fn choose_host_ports(
        &self,
        pod: &str,
        requests: &[PublishRequest],
        held: &mut Vec<(PortMapping, String)>,
    ) -> Result<Vec<PortMapping>, BridgeError> {
        let mut sockets: HashMap<String, Vec<hostports::HostSocket>> = HashMap::new();
        let mut chosen = Vec::with_capacity(requests.len());
        for request in requests {
            let wanted = &request.mapping;
            let protocol = protocol_name(&wanted.protocol);
            let host_ip = match wanted.host_ip.trim() {
                "0.0.0.0" => String::new(),
                ip => ip.to_string(),
            };
            if !host_ip.is_empty() && host_ip.parse::<Ipv4Addr>().is_err() {
                return Err(BridgeError::InvalidRequest {
                    network: self.spec.bridge.clone(),
                    field: "host_ip",
                    reason: format!(
                        "{host_ip:?} is not an IPv4 address (the built-in bridge network is IPv4 only)"
                    ),
                });
            }
            if !matches!(protocol.as_str(), "tcp" | "udp" | "sctp") {
                return Err(BridgeError::InvalidRequest {
                    network: self.spec.bridge.clone(),
                    field: "protocol",
                    reason: format!("unknown protocol {protocol:?}"),
                });
            }
            let (first, last) = if wanted.host_port == 0 {
                hostports::ephemeral_range()
            } else {
                (
                    wanted.host_port,
                    request.host_port_last.max(wanted.host_port),
                )
            };
            let sockets = sockets
                .entry(protocol.clone())
                .or_insert_with(|| hostports::host_sockets(&protocol));
            let mut last_reason = None;
            let mut picked = None;
            for port in hostports::candidates(first, last, hostports::random_start()) {
                let candidate = PortMapping {
                    host_port: port,
                    container_port: wanted.container_port,
                    protocol: protocol.clone(),
                    host_ip: host_ip.clone(),
                };
                match hostports::taken_by(&candidate, held, sockets) {
                    None => {
                        picked = Some(candidate);
                        break;
                    }
                    Some(taken) => last_reason = Some(taken),
                }
            }
            let Some(mapping) = picked else {
                return Err(match (first == last, last_reason) {
                    (true, Some(taken)) => BridgeError::HostPortTaken {
                        network: self.spec.bridge.clone(),
                        pod: pod.to_string(),
                        host_ip,
                        host_port: first,
                        protocol,
                        reason: taken.to_string(),
                    },
                    _ => BridgeError::NoFreeHostPort {
                        network: self.spec.bridge.clone(),
                        pod: pod.to_string(),
                        first,
                        last,
                        protocol,
                        host_ip,
                    },
                });
            };
            held.push((mapping.clone(), pod.to_string()));
            chosen.push(mapping);
        }
        Ok(chosen)
    }

    fn save_lease(&self, lease: &Lease) -> Result<(), BridgeError> {
        self.store
            .update(|tx| tx.replace(NETWORK_NAMESPACE, Kind::Lease, &lease.id(), lease))
            .map(drop)
            .map_err(|source| self.store_error(source))
    }

    fn netlink(&self, state: &mut State) -> Result<netlink::Netlink, BridgeError> {
        if let Some(netlink) = &state.netlink {
            return Ok(netlink.clone());
        }
        let netlink = netlink::Netlink::connect().map_err(|source| self.netlink_error(source))?;
        state.netlink = Some(netlink.clone());
        Ok(netlink)
    }

    /// Returns the set-up network, setting it up when it is not (first use, or the
    /// bridge was deleted behind wharfd's back).
    async fn ensure_ready(&self, state: &mut State) -> Result<Ready, BridgeError> {
        let netlink = self.netlink(state)?;
        if let Some(ready) = state.ready {
            let index = netlink
                .link_index(&self.spec.bridge)
                .await
                .map_err(|source| self.netlink_error(source))?;
            if index == Some(ready.bridge_index) {
                return Ok(ready);
            }
            tracing::warn!(network = %self.spec.bridge, "the bridge is gone; setting it up again");
            state.ready = None;
        }
        let subnet = self.subnet(&netlink).await?;
        let gateway = Ipv4Net::new(self.spec.gateway_of(&subnet), subnet.prefix_len())
            .unwrap_or_else(|_| Ipv4Net::from(self.spec.gateway_of(&subnet)));
        let bridge_index = netlink
            .ensure_bridge(&self.spec.bridge, gateway, self.spec.mtu)
            .await
            .map_err(|source| self.netlink_error(source))?;
        if let Some((subnet6, gateway6)) = self.spec.ipv6() {
            self.sysctl(
                &format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", self.spec.bridge),
                "0",
            )?;
            let address = Ipv6Net::new(gateway6, subnet6.prefix_len())
                .unwrap_or_else(|_| Ipv6Net::from(gateway6));
            netlink
                .ensure_ipv6_address(&self.spec.bridge, bridge_index, address)
                .await
                .map_err(|source| self.netlink_error(source))?;
        }
        // Host ports reached from 127.0.0.1 are routed to the bridge after DNAT.
        self.sysctl(
            &format!(
                "/proc/sys/net/ipv4/conf/{}/route_localnet",
                self.spec.bridge
            ),
            "1",
        )?;
        if self.spec.ip_forward {
            self.sysctl("/proc/sys/net/ipv4/ip_forward", "1")?;
        }
        self.iptables
            .ensure_network(
                &self.spec.bridge,
                subnet,
                self.spec.masquerade && !self.spec.internal,
                self.spec.internal,
            )
            .await
            .map_err(|source| self.firewall_error(source))?;
        let mut pool = ipam::Pool::new(subnet)
            .with_gateway(self.spec.gateway_of(&subnet))
            .with_range(self.spec.ip_range);
        for lease in state.leases.values() {
            pool.mark_used(lease.ip, &lease.container_id);
        }
        state.pool = Some(pool);
        let ready = Ready {
            subnet,
            bridge_index,
        };
        state.ready = Some(ready);
        tracing::info!(network = %self.spec.bridge, %subnet, gateway = %gateway.addr(), "bridge network ready");
        Ok(ready)
    }

    /// The configured subnet; else the one remembered in the store; else the one on an
    /// existing bridge; else the first default candidate no host route overlaps (then
    /// remembered).
    async fn subnet(&self, netlink: &netlink::Netlink) -> Result<Ipv4Net, BridgeError> {
        if let Some(subnet) = self.spec.subnet {
            return Ok(subnet.trunc());
        }
        let remembered = self
            .store
            .get::<NetworkRecord>(NETWORK_NAMESPACE, Kind::Network, &self.spec.bridge)
            .map_err(|source| self.store_error(source))?;
        if let Some(record) = remembered {
            return Ok(record.value.subnet);
        }
        let existing = netlink
            .link_index(&self.spec.bridge)
            .await
            .map_err(|source| self.netlink_error(source))?;
        let on_bridge = match existing {
            Some(index) => netlink
                .ipv4_addresses(Some(index))
                .await
                .map_err(|source| self.netlink_error(source))?
                .first()
                .map(Ipv4Net::trunc),
            None => None,
        };
        let subnet = match on_bridge {
            Some(subnet) => subnet,
            None => {
                let in_use = netlink
                    .subnets_in_use(existing)
                    .await
                    .map_err(|source| self.netlink_error(source))?;
                ipam::choose_subnet(ipam::default_subnet_candidates(), &in_use).ok_or_else(
                    || BridgeError::NoSubnet {
                        network: self.spec.bridge.clone(),
                    },
                )?
            }
        };
        let record = NetworkRecord {
            bridge: self.spec.bridge.clone(),
            subnet,
        };
        self.store
            .update(|tx| {
                tx.insert(
                    NETWORK_NAMESPACE,
                    Kind::Network,
                    &self.spec.bridge,
                    None,
                    &record,
                )
            })
            .map_err(|source| self.store_error(source))?;
        Ok(subnet)
    }

    fn requested_ip(&self, attachment: &Attachment) -> Result<Requested, BridgeError> {
        let mut requested = None;
        let mut requested6 = None;
        for text in &attachment.capability_args.ips {
            let host = text.split('/').next().unwrap_or_default();
            match host.parse::<IpAddr>() {
                Ok(IpAddr::V4(ip)) if requested.is_none() => requested = Some(ip),
                Ok(IpAddr::V4(_)) => {
                    return Err(BridgeError::InvalidRequest {
                        network: self.spec.bridge.clone(),
                        field: "ips",
                        reason: "more than one IPv4 address requested".into(),
                    })
                }
                Ok(IpAddr::V6(ip)) if self.spec.subnet6.is_some() && requested6.is_none() => {
                    requested6 = Some(ip)
                }
                _ => {
                    return Err(BridgeError::InvalidRequest {
                        network: self.spec.bridge.clone(),
                        field: "ips",
                        reason: format!(
                            "{text:?} is not an IPv4 address, nor one IPv6 address on a network with IPv6"
                        ),
                    })
                }
            }
        }
        Ok((requested, requested6))
    }

    /// Picks and stores the pod's lease (refusing host ports another pod holds).
    fn lease(
        &self,
        state: &mut State,
        attachment: &Attachment,
        (requested, requested6): Requested,
    ) -> Result<Lease, BridgeError> {
        let network = &self.spec.bridge;
        let ports = attachment.capability_args.port_mappings.clone();
        for wanted in &ports {
            for lease in state.leases.values() {
                let mut held = lease.ports.iter().chain(&lease.published);
                if let Some(taken) = held.find(|p| ports_clash(p, wanted)) {
                    return Err(BridgeError::PortInUse {
                        network: network.clone(),
                        host_port: wanted.host_port,
                        protocol: protocol_name(&wanted.protocol),
                        host_ip: taken.host_ip.clone(),
                        holder: lease.container_id.clone(),
                    });
                }
            }
        }
        let ip6 = match self.spec.ipv6() {
            None => None,
            Some((subnet, gateway)) => {
                let used = state
                    .leases
                    .values()
                    .filter_map(|l| Some((l.ip6?, l.container_id.clone())))
                    .collect();
                Some(
                    ipam::pick6(&subnet, gateway, requested6, &used).map_err(|source| {
                        BridgeError::Ipam {
                            network: network.clone(),
                            source,
                        }
                    })?,
                )
            }
        };
        let pool = state.pool.as_mut().ok_or_else(|| BridgeError::Internal {
            network: network.clone(),
            reason: "address pool used before the network was set up".into(),
        })?;
        let ip = pool.pick(requested).map_err(|source| BridgeError::Ipam {
            network: network.clone(),
            source,
        })?;
        let lease = Lease {
            network: network.clone(),
            ip,
            container_id: attachment.container_id.clone(),
            ifname: attachment.ifname.clone(),
            host_veth: host_veth_name(&attachment.container_id, &attachment.ifname),
            ports,
            published: Vec::new(),
            ip6,
        };
        let name = format!("{network}/{}/{}", lease.container_id, lease.ifname);
        self.store
            .update(|tx| {
                tx.insert(
                    NETWORK_NAMESPACE,
                    Kind::Lease,
                    &lease.id(),
                    Some(&name),
                    &lease,
                )
            })
            .map_err(|source| self.store_error(source))?;
        pool.assign(ip, &lease.container_id);
        state.leases.insert(
            (lease.container_id.clone(), lease.ifname.clone()),
            lease.clone(),
        );
        Ok(lease)
    }

    /// Makes the links, addresses, route and host-port rules of a stored lease.
    async fn plumb(
        &self,
        netlink: &netlink::Netlink,
        ready: Ready,
        lease: &Lease,
        attachment: &Attachment,
        mac: Option<[u8; 6]>,
    ) -> Result<String, BridgeError> {
        let netns = attachment.netns.clone();
        netlink
            .add_veth(
                &lease.host_veth,
                ready.bridge_index,
                &netns,
                &attachment.ifname,
                self.spec.mtu,
            )
            .await
            .map_err(|source| self.netlink_error(source))?;
        let address = Ipv4Net::new(lease.ip, ready.subnet.prefix_len())
            .unwrap_or_else(|_| Ipv4Net::from(lease.ip));
        let gateway = (!self.spec.internal).then(|| self.spec.gateway_of(&ready.subnet));
        let octets = lease.ip.octets();
        let mac = mac.or(self
            .spec
            .mac_from_ip
            .then_some([0x02, 0x42, octets[0], octets[1], octets[2], octets[3]]));
        let ifname = attachment.ifname.clone();
        let ipv6 = match (self.spec.ipv6(), lease.ip6) {
            (Some((subnet6, gateway6)), Some(ip6)) => Some((
                Ipv6Net::new(ip6, subnet6.prefix_len()).unwrap_or_else(|_| Ipv6Net::from(ip6)),
                (!self.spec.internal).then_some(gateway6),
            )),
            _ => None,
        };
        let configured = tokio::task::spawn_blocking(move || {
            netlink::configure_pod_side(&netns, &ifname, address, gateway, mac, ipv6)
        })
        .await
        .unwrap_or_else(|join| {
            Err(NetlinkError {
                context: "configuring the pod interface".into(),
                message: join.to_string(),
                errno: None,
            })
        })
        .map_err(|source| self.netlink_error(source))?;
        self.iptables
            .add_host_ports(&lease.container_id, lease.ip, &lease.ports)
            .await
            .map_err(|source| self.firewall_error(source))?;
        tracing::info!(network = %self.spec.bridge, container_id = %lease.container_id, ip = %lease.ip, "bridge attach done");
        Ok(configured.mac)
    }

    fn result(
        &self,
        ready: Ready,
        lease: &Lease,
        attachment: &Attachment,
        mac: &str,
    ) -> Result<CniResult, BridgeError> {
        let gateway = self.spec.gateway_of(&ready.subnet);
        let mut ips = vec![serde_json::json!({
            "address": format!("{}/{}", lease.ip, ready.subnet.prefix_len()),
            "gateway": gateway.to_string(),
            "interface": 2,
        })];
        let mut routes = vec![serde_json::json!({"dst": "0.0.0.0/0", "gw": gateway.to_string()})];
        if let (Some((subnet6, gateway6)), Some(ip6)) = (self.spec.ipv6(), lease.ip6) {
            ips.push(serde_json::json!({
                "address": format!("{ip6}/{}", subnet6.prefix_len()),
                "gateway": gateway6.to_string(),
                "interface": 2,
            }));
            routes.push(serde_json::json!({"dst": "::/0", "gw": gateway6.to_string()}));
        }
        let raw = serde_json::json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": self.spec.bridge},
                {"name": lease.host_veth},
                {"name": attachment.ifname, "mac": mac, "sandbox": path_text(&attachment.netns)},
            ],
            "ips": ips,
            "routes": routes,
            "dns": {},
        });
        CniResult::parse(raw, "1.0.0").map_err(|reason| BridgeError::Internal {
            network: self.spec.bridge.clone(),
            reason: format!("building the attach result: {reason}"),
        })
    }

    fn sysctl(&self, path: &str, value: &str) -> Result<(), BridgeError> {
        if std::fs::read_to_string(path).is_ok_and(|current| current.trim() == value) {
            return Ok(());
        }
        std::fs::write(path, value).map_err(|source| BridgeError::Sysctl {
            network: self.spec.bridge.clone(),
            path: path.to_string(),
            source,
        })
    }

    fn netlink_error(&self, source: NetlinkError) -> BridgeError {
        BridgeError::Netlink {
            network: self.spec.bridge.clone(),
            source,
        }
    }

    fn firewall_error(&self, source: FirewallError) -> BridgeError {
        BridgeError::Firewall {
            network: self.spec.bridge.clone(),
            source,
        }
    }

    fn store_error(&self, source: StoreError) -> BridgeError {
        BridgeError::Store {
            network: self.spec.bridge.clone(),
            source,
        }
    }
}

/// The subnets of the host's routes and addresses (what an automatically chosen subnet
/// must not overlap).
pub async fn host_subnets() -> Result<Vec<Ipv4Net>, BridgeError> {
    let wrap = |source| BridgeError::Netlink {
        network: "*".into(),
        source,
    };
    let netlink = netlink::Netlink::connect().map_err(wrap)?;
    netlink.subnets_in_use(None).await.map_err(wrap)
}

/// A subnet's first host: the default gateway.
pub fn first_host(subnet: &Ipv4Net) -> Ipv4Addr {
    ipam::gateway(subnet)
}

fn path_text(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

fn protocol_name(protocol: &str) -> String {
    if protocol.is_empty() {
        "tcp".to_string()
    } else {
        protocol.to_ascii_lowercase()
    }
}

/// Two mappings clash when protocol and host port match and their host addresses
/// overlap (empty or 0.0.0.0 means every address).
fn ports_clash(a: &PortMapping, b: &PortMapping) -> bool {
    let any = |ip: &str| ip.is_empty() || ip == "0.0.0.0";
    a.host_port == b.host_port
        && protocol_name(&a.protocol) == protocol_name(&b.protocol)
        && (any(&a.host_ip) || any(&b.host_ip) || a.host_ip == b.host_ip)
}

/// The host end's name: derived from the attachment, so a detach after a crash finds
/// it without any record of it. `wh` + 13 hex digits = 15 bytes, the kernel's limit.
fn host_veth_name(container_id: &str, ifname: &str) -> String {
    let digest = sha2::Sha256::digest(format!("{container_id}/{ifname}").as_bytes());
    format!("wh{}", &hex::encode(digest)[..13])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_link_names_are_stable_and_fit_the_kernel_limit() {
        let a = host_veth_name("0123abcd", "eth0");
        assert_eq!(a, host_veth_name("0123abcd", "eth0"));
        assert_ne!(a, host_veth_name("0123abcd", "eth1"));
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("wh"));
    }

    #[test]
    fn host_ports_clash_on_overlapping_addresses_only() {
        let map = |port: u16, protocol: &str, ip: &str| PortMapping {
            host_port: port,
            container_port: 80,
            protocol: protocol.into(),
            host_ip: ip.into(),
        };
        assert!(ports_clash(
            &map(80, "tcp", ""),
            &map(80, "TCP", "127.0.0.1")
        ));
        assert!(ports_clash(&map(80, "", "0.0.0.0"), &map(80, "tcp", "")));
        assert!(!ports_clash(&map(80, "tcp", ""), &map(80, "udp", "")));
        assert!(!ports_clash(&map(80, "tcp", ""), &map(81, "tcp", "")));
        assert!(!ports_clash(
            &map(80, "tcp", "127.0.0.1"),
            &map(80, "tcp", "127.0.0.2")
        ));
    }
}
