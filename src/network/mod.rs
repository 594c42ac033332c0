//! User-defined networks: the engine's registry of bridge networks that clients create
//! and remove (Docker's `docker network create`), each its own Linux bridge and subnet
//! served by the built-in bridge code ([`crate::cni::bridge`]), with its endpoints
//! (a pod's attachment: interface, address, aliases) and the embedded DNS server that
//! resolves them ([`dns`]).
//!
//! Persistence (all in the store, so `kill -9` loses nothing):
//! - a network: object namespace of its creator, kind `network`, id = 64 hex digits,
//!   name = the network's name (the database's unique index refuses a taken name);
//! - an endpoint: same namespace, kind `endpoint`, id `<network id>/<pod id>`, name
//!   `<network id>/<container name>` (one attachment per pod and name per network);
//! - its address: a lease of the network's bridge (see the bridge module).
//!
//! Order of steps (each retried by [`NetworkRegistry::recover`] after a crash): connect
//! stores the endpoint (unattached), then attaches (lease, veth), then marks it
//! attached; disconnect detaches, then deletes the endpoint; create stores the network
//! before its bridge exists (made on first use); remove deletes rules and the bridge,
//! then the record. At start-up, endpoints of pods that are gone or never finished
//! attaching are detached and deleted, leases on a network's bridge without an
//! endpoint are released, and DNS servers are started again.

pub mod dns;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::cni::bridge::{self, BridgeError, BridgeNetwork, BridgeSpec};
use crate::cni::Attachment;
use crate::error::{ErrorKind, HasKind};
use crate::events::{Event, EventBus, EventKind};
use crate::store::{Kind, Store, StoreError};

/// Names no user network may take: Docker's predefined networks.
pub const PREDEFINED: &[&str] = &["bridge", "host", "none"];
/// The Docker option naming the bridge link.
pub const OPTION_BRIDGE_NAME: &str = "com.docker.network.bridge.name";
/// The Docker option setting the MTU.
pub const OPTION_MTU: &str = "com.docker.network.driver.mtu";

/// The subnets user networks get when none is given: wharf's own pool (the built-in
/// bridge takes 10.88-10.127), /16s from 10.128.0.0 on.
fn subnet_pool() -> impl Iterator<Item = Ipv4Net> {
    (128u8..=254).filter_map(|second| Ipv4Net::new(Ipv4Addr::new(10, second, 0, 0), 16).ok())
}

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("network {0} not found")]
    NotFound(String),
    #[error("network with name {0} already exists")]
    NameTaken(String),
    #[error("{0} is a pre-defined network and cannot be {1}")]
    Predefined(String, &'static str),
    #[error("{0}")]
    Invalid(String),
    #[error("plugin \"{0}\" not found")]
    UnknownDriver(String),
    #[error("Pool overlaps with other one on this address space")]
    Overlap { subnet: String, other: String },
    #[error("error while removing network: network {name} id {id} has active endpoints")]
    InUse { name: String, id: String },
    #[error("endpoint with name {name} already exists in network {network}")]
    EndpointExists { name: String, network: String },
    #[error("container {container} is not connected to network {network}")]
    NotConnected { container: String, network: String },
    #[error("network {network}: no free subnet in wharf's pool (10.128.0.0/16 to 10.254.0.0/16); give one with --subnet")]
    NoSubnet { network: String },
    #[error("network {network}: {source}")]
    Bridge {
        network: String,
        source: Box<BridgeError>,
    },
    #[error("network {network}: {step}: {source}")]
    Store {
        network: String,
        step: &'static str,
        source: Box<StoreError>,
    },
}

impl HasKind for NetworkError {
    fn kind(&self) -> ErrorKind {
        match self {
            NetworkError::NotFound(_) | NetworkError::UnknownDriver(_) => ErrorKind::NotFound,
            NetworkError::NameTaken(_) => ErrorKind::AlreadyExists,
            NetworkError::Predefined(..)
            | NetworkError::Overlap { .. }
            | NetworkError::EndpointExists { .. } => ErrorKind::PermissionDenied,
            NetworkError::Invalid(_) => ErrorKind::InvalidArgument,
            NetworkError::InUse { .. } | NetworkError::NotConnected { .. } => {
                ErrorKind::FailedPrecondition
            }
            NetworkError::NoSubnet { .. } => ErrorKind::ResourceExhausted,
            NetworkError::Bridge { source, .. } => source.kind(),
            NetworkError::Store { source, .. } => source.kind(),
        }
    }
}

type Result<T> = std::result::Result<T, NetworkError>;

/// What a client asks for in a create (strings as given; checked here).
#[derive(Debug, Clone, Default)]
pub struct NetworkSpec {
    pub name: String,
    /// Empty: bridge.
    pub driver: String,
    pub subnet: Option<String>,
    pub gateway: Option<String>,
    pub ip_range: Option<String>,
    pub internal: bool,
    pub attachable: bool,
    pub enable_ipv6: bool,
    /// The IPv6 subnet and gateway (with `enable_ipv6`).
    pub subnet6: Option<String>,
    pub gateway6: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub options: BTreeMap<String, String>,
}

/// A stored user-defined network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkRecord {
    pub id: String,
    pub name: String,
    pub driver: String,
    /// Nanoseconds since the Unix epoch.
    pub created: i64,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    /// Whether the subnet was given (IPAM Config shows it either way).
    #[serde(default)]
    pub ip_range: Option<Ipv4Net>,
    pub internal: bool,
    pub attachable: bool,
    pub labels: BTreeMap<String, String>,
    pub options: BTreeMap<String, String>,
    /// The Linux bridge.
    pub bridge: String,
    pub mtu: u32,
    /// IPv6 (Docker's `EnableIPv6`): the subnet and the bridge's address in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet6: Option<Ipv6Net>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway6: Option<Ipv6Addr>,
}

/// A pod's attachment to a network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Endpoint {
    /// 64 hex digits.
    pub id: String,
    pub network_id: String,
    pub pod_id: String,
    /// The front end's ID for what is attached (Docker: the container's ID).
    pub owner_id: String,
    /// The attached container's name.
    pub name: String,
    /// Network-scoped aliases the client gave.
    pub aliases: Vec<String>,
    /// Further names that resolve to it (the front end's: name, short ID).
    pub dns_names: Vec<String>,
    pub ifname: String,
    pub netns: PathBuf,
    /// Asked for (IPAMConfig.IPv4Address).
    pub requested_ip: Option<Ipv4Addr>,
    /// Set once attached.
    pub ip: Option<Ipv4Addr>,
    /// Asked for (IPAMConfig.IPv6Address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_ip6: Option<Ipv6Addr>,
    /// Set once attached, on a network with IPv6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<Ipv6Addr>,
    pub mac: String,
    pub attached: bool,
    /// Resolvers the embedded DNS forwards to for this pod (empty: the host's).
    #[serde(default)]
    pub upstreams: Vec<String>,
    /// Container-scoped aliases: (linked name, alias) that only this endpoint's pod
    /// resolves on this network (Docker's `--link` on a user-defined network).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<(String, String)>,
}

impl Endpoint {
    fn key(network_id: &str, pod_id: &str) -> String {
        format!("{network_id}/{pod_id}")
    }

    /// Whether `name` (lower-case, no trailing dot) names this endpoint.
    fn answers_to(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
            || self.aliases.iter().any(|a| a.eq_ignore_ascii_case(name))
            || self.dns_names.iter().any(|a| a.eq_ignore_ascii_case(name))
    }
}

/// What connecting a pod asks.
#[derive(Debug, Clone, Default)]
pub struct EndpointRequest {
    /// Name, ID or unique ID prefix.
    pub network: String,
    pub pod_id: String,
    pub owner_id: String,
    pub name: String,
    pub aliases: Vec<String>,
    pub dns_names: Vec<String>,
    pub ipv4: Option<Ipv4Addr>,
    /// A static IPv6 address (on a network with IPv6).
    pub ipv6: Option<Ipv6Addr>,
    pub netns: PathBuf,
    pub ifname: String,
    pub upstreams: Vec<String>,
    /// The interface's MAC address (`aa:bb:cc:dd:ee:ff`); None: a random one.
    pub mac: Option<String>,
    /// Container-scoped aliases: (linked name, alias).
    pub links: Vec<(String, String)>,
}

/// A network with its endpoints, as list and inspect show it.
#[derive(Debug, Clone)]
pub struct NetworkView {
    pub record: NetworkRecord,
    pub endpoints: Vec<Endpoint>,
}

struct UserNetwork {
    namespace: String,
    record: NetworkRecord,
    bridge: BridgeNetwork,
}

/// What lookups read (the DNS servers too): never held across an await.
#[derive(Default)]
struct Tables {
    networks: HashMap<String, Arc<UserNetwork>>,
    /// By `<network id>/<pod id>`.
    endpoints: HashMap<String, Endpoint>,
}

pub(crate) struct Shared {
    tables: RwLock<Tables>,
}

impl Shared {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Tables> {
        self.tables.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Tables> {
        self.tables.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The addresses `name` has for `pod`: the endpoints named so on the networks the
    /// pod is on (`name` may carry `.<network name>`), IPv4 and IPv6. None: not a name
    /// of ours.
    pub(crate) fn lookup(&self, pod: &str, name: &str) -> Option<Vec<IpAddr>> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let tables = self.read();
        let mine: Vec<&Arc<UserNetwork>> = tables
            .endpoints
            .values()
            .filter(|e| e.pod_id == pod)
            .filter_map(|e| tables.networks.get(&e.network_id))
            .collect();
        let mut found = false;
        let mut ips = Vec::new();
        for network in mine {
            let suffix = format!(".{}", network.record.name.to_ascii_lowercase());
            let short = name.strip_suffix(&suffix);
            // A link alias of the asking pod stands for the linked name.
            let linked = tables
                .endpoints
                .get(&Endpoint::key(&network.record.id, pod))
                .and_then(|own| {
                    own.links.iter().find(|(_, alias)| {
                        alias.eq_ignore_ascii_case(&name)
                            || short.is_some_and(|s| alias.eq_ignore_ascii_case(s))
                    })
                })
                .map(|(target, _)| target.to_ascii_lowercase());
            let (name, short) = match &linked {
                Some(target) => (target.clone(), None),
                None => (name.clone(), short),
            };
            for endpoint in tables
                .endpoints
                .values()
                .filter(|e| e.network_id == network.record.id)
            {
                if endpoint.answers_to(&name) || short.is_some_and(|s| endpoint.answers_to(s)) {
                    found = true;
                    let addresses = endpoint
                        .ip
                        .map(IpAddr::V4)
                        .into_iter()
                        .chain(endpoint.ip6.map(IpAddr::V6));
                    for ip in addresses {
                        if !ips.contains(&ip) {
                            ips.push(ip);
                        }
                    }
                }
            }
        }
        found.then_some(ips)
    }

    /// The name of `ip` for `pod` (`<container>.<network>`), on a network it is on.
    pub(crate) fn reverse(&self, pod: &str, ip: IpAddr) -> Option<String> {
        let tables = self.read();
        let mine: HashSet<&str> = tables
            .endpoints
            .values()
            .filter(|e| e.pod_id == pod)
            .map(|e| e.network_id.as_str())
            .collect();
        tables
            .endpoints
            .values()
            .filter(|e| {
                mine.contains(e.network_id.as_str())
                    && (e.ip.map(IpAddr::V4) == Some(ip) || e.ip6.map(IpAddr::V6) == Some(ip))
            })
            .find_map(|e| {
                let network = tables.networks.get(&e.network_id)?;
                Some(format!("{}.{}", e.name, network.record.name))
            })
    }

    /// The resolvers to forward to for `pod`.
    pub(crate) fn upstreams(&self, pod: &str) -> Vec<String> {
        self.read()
            .endpoints
            .values()
            .find(|e| e.pod_id == pod && !e.upstreams.is_empty())
            .map(|e| e.upstreams.clone())
            .unwrap_or_default()
    }
}

pub struct NetworkRegistry {
    store: Arc<Store>,
    events: Arc<EventBus>,
    ip_forward: bool,
    /// The built-in bridge's link name (not to be taken by a user network).
    builtin_bridge: String,
    shared: Arc<Shared>,
    /// Create, remove, connect and disconnect run one at a time.
    ops: tokio::sync::Mutex<()>,
    dns: dns::Servers,
}

impl std::fmt::Debug for NetworkRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetworkRegistry").finish_non_exhaustive()
    }
}

fn random_id() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(hex::encode(bytes))
}

fn bridge_spec(record: &NetworkRecord, ip_forward: bool) -> BridgeSpec {
    BridgeSpec {
        bridge: record.bridge.clone(),
        subnet: Some(record.subnet),
        masquerade: !record.internal,
        ip_forward,
        mtu: record.mtu,
        gateway: Some(record.gateway),
        ip_range: record.ip_range,
        internal: record.internal,
        mac_from_ip: true,
        subnet6: record.subnet6,
        gateway6: record.gateway6,
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn valid_link_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

impl NetworkRegistry {
    /// Loads the stored networks and endpoints (nothing on the host is touched: each
    /// bridge is set up on first use; [`NetworkRegistry::recover`] reconciles).
    pub fn open(
        store: Arc<Store>,
        events: Arc<EventBus>,
        ip_forward: bool,
        builtin_bridge: &str,
    ) -> Result<NetworkRegistry> {
        let load = |step| {
            move |source| NetworkError::Store {
                network: "*".into(),
                step,
                source: Box::new(source),
            }
        };
        let mut tables = Tables::default();
        for record in store
            .list::<serde_json::Value>(None, Kind::Network)
            .map_err(load("loading networks"))?
        {
            // The built-in bridge remembers its subnet under kind network in the
            // network namespace, in another shape: not a user network (decoded as one,
            // it failed every start after the default bridge had been used).
            if record.namespace == crate::store::NETWORK_NAMESPACE {
                continue;
            }
            let value: NetworkRecord = serde_json::from_value(record.value).map_err(|source| {
                load("loading networks")(StoreError::Corrupt {
                    kind: Kind::Network,
                    id: record.id.clone(),
                    source,
                })
            })?;
            let bridge = BridgeNetwork::new(bridge_spec(&value, ip_forward), store.clone())
                .map_err(|source| NetworkError::Bridge {
                    network: value.name.clone(),
                    source: Box::new(source),
                })?;
            tables.networks.insert(
                value.id.clone(),
                Arc::new(UserNetwork {
                    namespace: record.namespace,
                    record: value,
                    bridge,
                }),
            );
        }
        for record in store
            .list::<Endpoint>(None, Kind::Endpoint)
            .map_err(load("loading endpoints"))?
        {
            let endpoint = record.value;
            tables.endpoints.insert(
                Endpoint::key(&endpoint.network_id, &endpoint.pod_id),
                endpoint,
            );
        }
        let shared = Arc::new(Shared {
            tables: RwLock::new(tables),
        });
        Ok(NetworkRegistry {
            store,
            events,
            ip_forward,
            builtin_bridge: builtin_bridge.to_string(),
            dns: dns::Servers::new(shared.clone()),
            shared,
            ops: tokio::sync::Mutex::new(()),
        })
    }

    fn publish(&self, namespace: &str, action: &str, record: &NetworkRecord, container: &str) {
        let mut event = Event::new(namespace, EventKind::Network, action, &record.id)
            .with("name", record.name.clone())
            .with("type", record.driver.clone());
        if !container.is_empty() {
            event = event.with("container", container);
        }
        self.events.publish(event);
    }

    /// Finds a network of `namespace` by exact name, full ID, or unique ID prefix (as
    /// dockerd does).
    fn find(&self, namespace: &str, query: &str) -> Result<Arc<UserNetwork>> {
        let tables = self.shared.read();
        let ours = || {
            tables
                .networks
                .values()
                .filter(|n| n.namespace == namespace)
        };
        if let Some(network) = ours().find(|n| n.record.name == query || n.record.id == query) {
            return Ok(network.clone());
        }
        let prefixed: Vec<_> = ours()
            .filter(|n| !query.is_empty() && n.record.id.starts_with(query))
            .collect();
        match prefixed.as_slice() {
            [one] => Ok((*one).clone()),
            _ => Err(NetworkError::NotFound(query.to_string())),
        }
    }

    /// The network and its endpoints.
    pub fn get(&self, namespace: &str, query: &str) -> Result<NetworkView> {
        let network = self.find(namespace, query)?;
        Ok(self.view(&network))
    }

    fn view(&self, network: &UserNetwork) -> NetworkView {
        let tables = self.shared.read();
        let mut endpoints: Vec<Endpoint> = tables
            .endpoints
            .values()
            .filter(|e| e.network_id == network.record.id)
            .cloned()
            .collect();
        endpoints.sort_by(|a, b| a.name.cmp(&b.name));
        NetworkView {
            record: network.record.clone(),
            endpoints,
        }
    }

    /// Every user network of `namespace`, oldest first.
    pub fn list(&self, namespace: &str) -> Vec<NetworkView> {
        let networks: Vec<Arc<UserNetwork>> = self
            .shared
            .read()
            .networks
            .values()
            .filter(|n| n.namespace == namespace)
            .cloned()
            .collect();
        let mut views: Vec<NetworkView> = networks.iter().map(|n| self.view(n)).collect();
        views.sort_by(|a, b| {
            (a.record.created, &a.record.id).cmp(&(b.record.created, &b.record.id))
        });
        views
    }

    /// The endpoints of one pod, with their networks' records.
    pub fn endpoints_of_pod(&self, pod_id: &str) -> Vec<(NetworkRecord, Endpoint)> {
        let tables = self.shared.read();
        let mut found: Vec<(NetworkRecord, Endpoint)> = tables
            .endpoints
            .values()
            .filter(|e| e.pod_id == pod_id)
            .filter_map(|e| {
                let network = tables.networks.get(&e.network_id)?;
                Some((network.record.clone(), e.clone()))
            })
            .collect();
        found.sort_by(|a, b| a.1.ifname.cmp(&b.1.ifname));
        found
    }

    /// Creates a network (its bridge is made on first attach).
    pub async fn create(&self, namespace: &str, spec: NetworkSpec) -> Result<NetworkRecord> {
        let name = spec.name.clone();
        if name.is_empty() {
            return Err(NetworkError::Invalid("network name cannot be empty".into()));
        }
        if PREDEFINED.contains(&name.as_str()) {
            return Err(NetworkError::Predefined(name, "created"));
        }
        if !valid_name(&name) || name.len() > 255 {
            return Err(NetworkError::Invalid(format!(
                "invalid network name {:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed",
                name.chars().take(80).collect::<String>()
            )));
        }
        match spec.driver.as_str() {
            "" | "bridge" => {}
            other => return Err(NetworkError::UnknownDriver(other.to_string())),
        }
        let (subnet6, gateway6) = match (spec.enable_ipv6, spec.subnet6.as_deref()) {
            (false, None) => {
                if spec.gateway6.is_some() {
                    return Err(NetworkError::Invalid(
                        "every ip-range or gateway must have a corresponding subnet".into(),
                    ));
                }
                (None, None)
            }
            (false, Some(subnet6)) => {
                return Err(NetworkError::Invalid(format!(
                    "network {name}: IPv6 subnet {subnet6} given without IPv6 enabled (--ipv6)"
                )))
            }
            (true, None) => {
                return Err(NetworkError::Invalid(format!(
                    "network {name}: IPv6 needs an IPv6 subnet (--subnet, e.g. fd00:1::/64): \
                     wharf has no default IPv6 pool, as dockerd 20.10 has none"
                )))
            }
            (true, Some(text)) => {
                let subnet6 = text
                    .parse::<Ipv6Net>()
                    .map(|n| n.trunc())
                    .map_err(|_| NetworkError::Invalid(format!("invalid CIDR address: {text}")))?;
                if subnet6.prefix_len() > 126 {
                    return Err(NetworkError::Invalid(format!(
                        "invalid subnet {subnet6}: too small for a gateway and a container (a /126 at most)"
                    )));
                }
                let gateway6 = spec
                    .gateway6
                    .as_deref()
                    .map(|text| {
                        text.parse::<Ipv6Addr>().map_err(|_| {
                            NetworkError::Invalid(format!(
                                "invalid gateway address {text:?}: not IPv6"
                            ))
                        })
                    })
                    .transpose()?;
                if let Some(gateway6) = gateway6 {
                    if !subnet6.contains(&gateway6) || gateway6 == subnet6.network() {
                        return Err(NetworkError::Invalid(format!(
                            "no matching subnet for gateway {gateway6}"
                        )));
                    }
                }
                (
                    Some(subnet6),
                    Some(gateway6.unwrap_or_else(|| bridge::gateway6(&subnet6))),
                )
            }
        };
        let parse_net = |text: &str| -> Result<Ipv4Net> {
            text.parse::<Ipv4Net>()
                .map(|n| n.trunc())
                .map_err(|_| NetworkError::Invalid(format!("invalid CIDR address: {text}")))
        };
        let subnet = spec.subnet.as_deref().map(parse_net).transpose()?;
        let ip_range = spec.ip_range.as_deref().map(parse_net).transpose()?;
        let gateway = spec
            .gateway
            .as_deref()
            .map(|text| {
                text.parse::<Ipv4Addr>().map_err(|_| {
                    NetworkError::Invalid(format!("invalid gateway address {text:?}: not IPv4"))
                })
            })
            .transpose()?;
        if subnet.is_none() && (gateway.is_some() || ip_range.is_some()) {
            return Err(NetworkError::Invalid(
                "every ip-range or gateway must have a corresponding subnet".into(),
            ));
        }
        if let Some(subnet) = subnet {
            if subnet.prefix_len() > 30 {
                return Err(NetworkError::Invalid(format!(
                    "invalid subnet {subnet}: too small for a gateway and a container (a /30 at most)"
                )));
            }
            if let Some(gateway) = gateway {
                if !subnet.contains(&gateway)
                    || gateway == subnet.network()
                    || gateway == subnet.broadcast()
                {
                    return Err(NetworkError::Invalid(format!(
                        "no matching subnet for gateway {gateway}"
                    )));
                }
            }
            if let Some(range) = ip_range {
                if !subnet.contains(&range) {
                    return Err(NetworkError::Invalid(format!(
                        "no matching subnet for range {range}"
                    )));
                }
            }
        }
        let options = spec.options.clone();
        let mtu = match options.get(OPTION_MTU) {
            None => 0,
            Some(text) => text
                .parse::<u32>()
                .ok()
                .filter(|mtu| (68..=65535).contains(mtu))
                .ok_or_else(|| {
                    NetworkError::Invalid(format!(
                        "invalid {OPTION_MTU} {text:?}: an MTU from 68 to 65535"
                    ))
                })?,
        };
        let id = random_id().map_err(|err| {
            NetworkError::Invalid(format!("network {name}: reading /dev/urandom: {err}"))
        })?;
        let bridge_name = match options.get(OPTION_BRIDGE_NAME) {
            Some(given) if !valid_link_name(given) => {
                return Err(NetworkError::Invalid(format!(
                    "invalid {OPTION_BRIDGE_NAME} {given:?}: a link name of 1 to 15 characters [a-zA-Z0-9_.-]"
                )))
            }
            Some(given) => given.clone(),
            None => format!("wh-{}", &id[..12]),
        };
        let _guard = self.ops.lock().await;
        {
            let tables = self.shared.read();
            if tables
                .networks
                .values()
                .any(|n| n.namespace == namespace && n.record.name == name)
            {
                return Err(NetworkError::NameTaken(name));
            }
            if bridge_name == self.builtin_bridge
                || tables
                    .networks
                    .values()
                    .any(|n| n.record.bridge == bridge_name)
            {
                return Err(NetworkError::Invalid(format!(
                    "bridge name {bridge_name} is already used by another network"
                )));
            }
            if let Some(subnet) = subnet {
                if let Some(other) = tables
                    .networks
                    .values()
                    .find(|n| bridge::overlaps(&n.record.subnet, &subnet))
                {
                    return Err(NetworkError::Overlap {
                        subnet: subnet.to_string(),
                        other: other.record.name.clone(),
                    });
                }
            }
            if let Some(subnet6) = subnet6 {
                let overlapping = tables.networks.values().find(|n| {
                    n.record.subnet6.is_some_and(|o| {
                        o.contains(&subnet6.network()) || subnet6.contains(&o.network())
                    })
                });
                if let Some(other) = overlapping {
                    return Err(NetworkError::Overlap {
                        subnet: subnet6.to_string(),
                        other: other.record.name.clone(),
                    });
                }
            }
        }
        let subnet = match subnet {
            Some(subnet) => subnet,
            None => {
                let mut in_use =
                    bridge::host_subnets()
                        .await
                        .map_err(|source| NetworkError::Bridge {
                            network: name.clone(),
                            source: Box::new(source),
                        })?;
                in_use.extend(
                    self.shared
                        .read()
                        .networks
                        .values()
                        .map(|n| n.record.subnet),
                );
                bridge::choose_subnet(subnet_pool(), &in_use).ok_or_else(|| {
                    NetworkError::NoSubnet {
                        network: name.clone(),
                    }
                })?
            }
        };
        let record = NetworkRecord {
            id: id.clone(),
            name: name.clone(),
            driver: "bridge".into(),
            created: crate::runtime::records::now_nanos(),
            subnet,
            gateway: gateway.unwrap_or_else(|| bridge::first_host(&subnet)),
            ip_range,
            internal: spec.internal,
            attachable: spec.attachable,
            labels: spec.labels,
            options,
            bridge: bridge_name,
            mtu,
            subnet6,
            gateway6,
        };
        self.store
            .update(|tx| tx.insert(namespace, Kind::Network, &id, Some(&name), &record))
            .map_err(|source| match source {
                StoreError::NameTaken { .. } => NetworkError::NameTaken(name.clone()),
                source => NetworkError::Store {
                    network: name.clone(),
                    step: "storing the network",
                    source: Box::new(source),
                },
            })?;
        let bridge = BridgeNetwork::new(bridge_spec(&record, self.ip_forward), self.store.clone())
            .map_err(|source| NetworkError::Bridge {
                network: name.clone(),
                source: Box::new(source),
            })?;
        self.shared.write().networks.insert(
            id.clone(),
            Arc::new(UserNetwork {
                namespace: namespace.to_string(),
                record: record.clone(),
                bridge,
            }),
        );
        tracing::info!(network = %name, id = %id, subnet = %record.subnet, bridge = %record.bridge, "network created");
        self.publish(namespace, "create", &record, "");
        Ok(record)
    }

    /// Removes a network without endpoints: rules, bridge, record.
    pub async fn remove(&self, namespace: &str, query: &str) -> Result<NetworkRecord> {
        if PREDEFINED.contains(&query) {
            return Err(NetworkError::Predefined(query.to_string(), "removed"));
        }
        let _guard = self.ops.lock().await;
        let network = self.find(namespace, query)?;
        let record = network.record.clone();
        let busy = self
            .shared
            .read()
            .endpoints
            .values()
            .any(|e| e.network_id == record.id);
        if busy {
            return Err(NetworkError::InUse {
                name: record.name.clone(),
                id: record.id.clone(),
            });
        }
        // Leases without an endpoint (a crash between the two) go first.
        for (container_id, ifname, _) in network.bridge.leases().await {
            let attachment = Attachment {
                container_id,
                ifname,
                ..Default::default()
            };
            network
                .bridge
                .del(&attachment)
                .await
                .map_err(|source| self.bridge_error(&record, source))?;
        }
        network
            .bridge
            .remove()
            .await
            .map_err(|source| self.bridge_error(&record, source))?;
        self.store
            .update(|tx| tx.delete(namespace, Kind::Network, &record.id))
            .map_err(|source| NetworkError::Store {
                network: record.name.clone(),
                step: "deleting the network record",
                source: Box::new(source),
            })?;
        self.shared.write().networks.remove(&record.id);
        tracing::info!(network = %record.name, id = %record.id, "network removed");
        self.publish(namespace, "destroy", &record, "");
        Ok(record)
    }

    fn bridge_error(&self, record: &NetworkRecord, source: BridgeError) -> NetworkError {
        NetworkError::Bridge {
            network: record.name.clone(),
            source: Box::new(source),
        }
    }

    /// Attaches a pod to a network: endpoint stored, lease and veth, names served.
    pub async fn connect(&self, namespace: &str, request: EndpointRequest) -> Result<Endpoint> {
        let _guard = self.ops.lock().await;
        let network = self.find(namespace, &request.network)?;
        let record = network.record.clone();
        let key = Endpoint::key(&record.id, &request.pod_id);
        {
            let tables = self.shared.read();
            let taken = tables.endpoints.contains_key(&key)
                || tables
                    .endpoints
                    .values()
                    .any(|e| e.network_id == record.id && e.name == request.name);
            if taken {
                return Err(NetworkError::EndpointExists {
                    name: request.name.clone(),
                    network: record.name.clone(),
                });
            }
        }
        if let Some(ip) = request.ipv4 {
            if !record.subnet.contains(&ip) {
                return Err(NetworkError::Invalid(format!(
                    "Invalid address {ip}: It does not belong to any of this network's subnets"
                )));
            }
        }
        let id = random_id().map_err(|err| {
            NetworkError::Invalid(format!(
                "endpoint on {}: reading /dev/urandom: {err}",
                record.name
            ))
        })?;
        let mut endpoint = Endpoint {
            id,
            network_id: record.id.clone(),
            pod_id: request.pod_id.clone(),
            owner_id: request.owner_id.clone(),
            name: request.name.clone(),
            aliases: request.aliases.clone(),
            dns_names: request.dns_names.clone(),
            ifname: request.ifname.clone(),
            netns: request.netns.clone(),
            requested_ip: request.ipv4,
            ip: None,
            requested_ip6: request.ipv6,
            ip6: None,
            mac: String::new(),
            attached: false,
            upstreams: request.upstreams.clone(),
            links: request.links.clone(),
        };
        let endpoint_name = format!("{}/{}", record.id, request.name);
        self.store
            .update(|tx| {
                tx.insert(
                    namespace,
                    Kind::Endpoint,
                    &key,
                    Some(&endpoint_name),
                    &endpoint,
                )
            })
            .map_err(|source| match source {
                StoreError::NameTaken { .. } | StoreError::IdTaken { .. } => {
                    NetworkError::EndpointExists {
                        name: request.name.clone(),
                        network: record.name.clone(),
                    }
                }
                source => NetworkError::Store {
                    network: record.name.clone(),
                    step: "storing the endpoint",
                    source: Box::new(source),
                },
            })?;
        let attachment = Attachment {
            container_id: request.pod_id.clone(),
            netns: request.netns.clone(),
            ifname: request.ifname.clone(),
            capability_args: crate::cni::RuntimeConfig {
                ips: request
                    .ipv4
                    .map(|ip| ip.to_string())
                    .into_iter()
                    .chain(request.ipv6.map(|ip| ip.to_string()))
                    .collect(),
                mac: request.mac.clone(),
                ..Default::default()
            },
            ..Default::default()
        };
        let added = network.bridge.add(&attachment).await;
        let result = match added {
            Ok(result) => result,
            Err(source) => {
                let _ = self
                    .store
                    .update(|tx| tx.delete(namespace, Kind::Endpoint, &key));
                return Err(self.bridge_error(&record, source));
            }
        };
        endpoint.ip = result
            .ips
            .iter()
            .find_map(|ip| ip.address.split('/').next()?.parse::<Ipv4Addr>().ok());
        endpoint.ip6 = result
            .ips
            .iter()
            .find_map(|ip| ip.address.split('/').next()?.parse::<Ipv6Addr>().ok());
        endpoint.mac = result
            .interfaces
            .iter()
            .find(|i| i.name == request.ifname)
            .and_then(|i| i.mac.clone())
            .unwrap_or_default();
        endpoint.attached = true;
        let stored = self
            .store
            .update(|tx| tx.replace(namespace, Kind::Endpoint, &key, &endpoint));
        if let Err(source) = stored {
            let _ = network.bridge.del(&attachment).await;
            let _ = self
                .store
                .update(|tx| tx.delete(namespace, Kind::Endpoint, &key));
            return Err(NetworkError::Store {
                network: record.name.clone(),
                step: "recording the attached endpoint",
                source: Box::new(source),
            });
        }
        self.shared.write().endpoints.insert(key, endpoint.clone());
        if let Err(err) = self.dns.ensure(&endpoint.pod_id, &endpoint.netns).await {
            tracing::warn!(pod = %endpoint.pod_id, network = %record.name, "embedded DNS not started: {err}");
        }
        tracing::info!(network = %record.name, pod = %endpoint.pod_id, ip = ?endpoint.ip, "endpoint attached");
        self.publish(namespace, "connect", &record, &endpoint.owner_id);
        Ok(endpoint)
    }

    /// Detaches a pod from a network (`NotConnected` when it is not attached).
    pub async fn disconnect(
        &self,
        namespace: &str,
        network: &str,
        pod_id: &str,
        container: &str,
    ) -> Result<()> {
        let _guard = self.ops.lock().await;
        let network = self.find(namespace, network)?;
        let key = Endpoint::key(&network.record.id, pod_id);
        let Some(endpoint) = self.shared.read().endpoints.get(&key).cloned() else {
            return Err(NetworkError::NotConnected {
                container: container.to_string(),
                network: network.record.name.clone(),
            });
        };
        self.detach(namespace, &network, &endpoint).await
    }

    async fn detach(
        &self,
        namespace: &str,
        network: &UserNetwork,
        endpoint: &Endpoint,
    ) -> Result<()> {
        let record = &network.record;
        let key = Endpoint::key(&record.id, &endpoint.pod_id);
        // Names go at once, before the link.
        self.shared.write().endpoints.remove(&key);
        let attachment = Attachment {
            container_id: endpoint.pod_id.clone(),
            ifname: endpoint.ifname.clone(),
            netns: endpoint.netns.clone(),
            ..Default::default()
        };
        if let Err(source) = network.bridge.del(&attachment).await {
            // Still owed: back in the table, so a retry (or recovery) finds it.
            self.shared.write().endpoints.insert(key, endpoint.clone());
            return Err(self.bridge_error(record, source));
        }
        self.store
            .update(|tx| tx.delete(namespace, Kind::Endpoint, &key))
            .map_err(|source| NetworkError::Store {
                network: record.name.clone(),
                step: "deleting the endpoint",
                source: Box::new(source),
            })?;
        let still_attached = self
            .shared
            .read()
            .endpoints
            .values()
            .any(|e| e.pod_id == endpoint.pod_id);
        if !still_attached {
            self.dns.stop(&endpoint.pod_id);
        }
        tracing::info!(network = %record.name, pod = %endpoint.pod_id, "endpoint detached");
        self.publish(namespace, "disconnect", record, &endpoint.owner_id);
        Ok(())
    }

    /// The host ports held on every user-defined network but `except` (a network ID),
    /// with the pod holding each.
    pub async fn held_host_ports(
        &self,
        except: Option<&str>,
    ) -> Vec<(crate::cni::PortMapping, String)> {
        let networks: Vec<Arc<UserNetwork>> = self
            .shared
            .read()
            .networks
            .values()
            .filter(|n| Some(n.record.id.as_str()) != except)
            .cloned()
            .collect();
        let mut held = Vec::new();
        for network in networks {
            held.extend(network.bridge.held_host_ports().await);
        }
        held
    }

    /// Publishes host ports to the pod's interface on network `network_id` (Docker's
    /// `-p` for a container on a user-defined network), `elsewhere` counting as taken.
    pub async fn publish_ports(
        &self,
        network_id: &str,
        attachment: &Attachment,
        requests: &[bridge::PublishRequest],
        elsewhere: Vec<(crate::cni::PortMapping, String)>,
    ) -> std::result::Result<Vec<crate::cni::PortMapping>, BridgeError> {
        let network = self.shared.read().networks.get(network_id).cloned();
        let Some(network) = network else {
            return Err(BridgeError::NotAttached {
                network: network_id.to_string(),
                reason: "the network is gone".to_string(),
            });
        };
        network
            .bridge
            .publish_beside(attachment, requests, elsewhere)
            .await
    }

    /// Withdraws what [`publish_ports`](Self::publish_ports) made on every network the pod is on.
    pub async fn unpublish_pod(&self, pod_id: &str) -> std::result::Result<(), BridgeError> {
        let attached: Vec<(Arc<UserNetwork>, Endpoint)> = {
            let tables = self.shared.read();
            tables
                .endpoints
                .values()
                .filter(|e| e.pod_id == pod_id)
                .filter_map(|e| Some((tables.networks.get(&e.network_id)?.clone(), e.clone())))
                .collect()
        };
        for (network, endpoint) in attached {
            let attachment = Attachment {
                container_id: endpoint.pod_id.clone(),
                netns: endpoint.netns.clone(),
                ifname: endpoint.ifname.clone(),
                ..Default::default()
            };
            network.bridge.unpublish(&attachment).await?;
        }
        Ok(())
    }

    /// A renamed container's endpoints take its new name, in the name index and in
    /// the names DNS answers to (dockerd renames the endpoint and its DNS record;
    /// docker-compose 1.x renames a container before creating its replacement).
    pub async fn rename_pod(&self, pod_id: &str, old: &str, new: &str) -> Result<()> {
        let _guard = self.ops.lock().await;
        // (namespace, network name, key, endpoint renamed)
        let mut renamed: Vec<(String, String, String, Endpoint)> = Vec::new();
        {
            let tables = self.shared.read();
            for (key, endpoint) in tables.endpoints.iter().filter(|(_, e)| e.pod_id == pod_id) {
                let Some(network) = tables.networks.get(&endpoint.network_id) else {
                    continue;
                };
                let taken = tables.endpoints.values().any(|e| {
                    e.network_id == endpoint.network_id && e.pod_id != pod_id && e.name == new
                });
                if taken {
                    return Err(NetworkError::EndpointExists {
                        name: new.to_string(),
                        network: network.record.name.clone(),
                    });
                }
                let mut endpoint = endpoint.clone();
                if endpoint.name == old {
                    endpoint.name = new.to_string();
                }
                for name in endpoint.dns_names.iter_mut().filter(|n| n.as_str() == old) {
                    *name = new.to_string();
                }
                renamed.push((
                    network.namespace.clone(),
                    network.record.name.clone(),
                    key.clone(),
                    endpoint,
                ));
            }
        }
        self.store
            .update(|tx| {
                for (namespace, _, key, endpoint) in &renamed {
                    let name = format!("{}/{}", endpoint.network_id, endpoint.name);
                    tx.rename(namespace, Kind::Endpoint, key, &name, endpoint)?;
                }
                Ok(())
            })
            .map_err(|source| {
                let networks: Vec<&str> = renamed.iter().map(|r| r.1.as_str()).collect();
                match source {
                    StoreError::NameTaken { .. } => NetworkError::EndpointExists {
                        name: new.to_string(),
                        network: networks.join(", "),
                    },
                    source => NetworkError::Store {
                        network: networks.join(", "),
                        step: "renaming the container's endpoints",
                        source: Box::new(source),
                    },
                }
            })?;
        let mut tables = self.shared.write();
        for (_, _, key, endpoint) in renamed {
            tables.endpoints.insert(key, endpoint);
        }
        Ok(())
    }

    /// Detaches a pod from every user network (its removal); nothing attached is fine.
    pub async fn detach_pod(&self, pod_id: &str) -> Result<()> {
        let _guard = self.ops.lock().await;
        self.detach_pod_locked(pod_id).await
    }

    async fn detach_pod_locked(&self, pod_id: &str) -> Result<()> {
        let endpoints: Vec<(Arc<UserNetwork>, Endpoint)> = {
            let tables = self.shared.read();
            tables
                .endpoints
                .values()
                .filter(|e| e.pod_id == pod_id)
                .filter_map(|e| Some((tables.networks.get(&e.network_id)?.clone(), e.clone())))
                .collect()
        };
        let mut first_error = None;
        for (network, endpoint) in endpoints {
            if let Err(err) = self.detach(&network.namespace, &network, &endpoint).await {
                tracing::error!(pod = %pod_id, network = %network.record.name, "detaching: {err}");
                first_error.get_or_insert(err);
            }
        }
        self.dns.stop(pod_id);
        match first_error {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    /// Start-up reconcile: endpoints of pods not in `owned` or never attached are
    /// detached; leases of user bridges without an endpoint are released; the DNS
    /// servers of attached pods start again.
    pub async fn recover(&self, owned: &HashSet<String>) {
        let _guard = self.ops.lock().await;
        let stale: Vec<String> = {
            let tables = self.shared.read();
            tables
                .endpoints
                .values()
                .filter(|e| !owned.contains(&e.pod_id) || !e.attached)
                .map(|e| e.pod_id.clone())
                .collect()
        };
        for pod in stale {
            tracing::warn!(pod = %pod, "releasing user-network endpoints of a pod that is gone or never finished attaching");
            if let Err(err) = self.detach_pod_locked(&pod).await {
                tracing::error!(pod = %pod, "cannot release its endpoints: {err}");
            }
        }
        let networks: Vec<Arc<UserNetwork>> =
            self.shared.read().networks.values().cloned().collect();
        for network in networks {
            for (pod, ifname, ip) in network.bridge.leases().await {
                let key = Endpoint::key(&network.record.id, &pod);
                if self.shared.read().endpoints.contains_key(&key) {
                    continue;
                }
                tracing::warn!(network = %network.record.name, pod = %pod, %ip, "releasing a lease without an endpoint");
                let attachment = Attachment {
                    container_id: pod.clone(),
                    ifname,
                    ..Default::default()
                };
                if let Err(err) = network.bridge.del(&attachment).await {
                    tracing::error!(network = %network.record.name, pod = %pod, "cannot release a lease: {err}");
                }
            }
        }
        let pods: Vec<(String, PathBuf)> = {
            let tables = self.shared.read();
            let mut seen = HashSet::new();
            tables
                .endpoints
                .values()
                .filter(|e| seen.insert(e.pod_id.clone()))
                .map(|e| (e.pod_id.clone(), e.netns.clone()))
                .collect()
        };
        for (pod, netns) in pods {
            if let Err(err) = self.dns.ensure(&pod, &netns).await {
                tracing::warn!(pod = %pod, "embedded DNS not started again: {err}");
            }
        }
    }

    /// Removes every network of `namespace` without endpoints (matching `keep`'s
    /// negation); returns the removed names.
    pub async fn prune(
        &self,
        namespace: &str,
        matches: impl Fn(&NetworkRecord) -> bool,
    ) -> Vec<String> {
        let candidates: Vec<NetworkView> = self
            .list(namespace)
            .into_iter()
            .filter(|v| v.endpoints.is_empty() && matches(&v.record))
            .collect();
        let mut removed = Vec::new();
        for view in candidates {
            match self.remove(namespace, &view.record.id).await {
                Ok(record) => removed.push(record.name),
                Err(NetworkError::InUse { .. }) | Err(NetworkError::NotFound(_)) => {}
                Err(err) => {
                    tracing::warn!(network = %view.record.name, "prune: {err}")
                }
            }
        }
        removed
    }
}
