//! Address management of a built-in bridge network: which addresses of the subnet are
//! free, and the choice of a default subnet no host route uses. Pure logic; the leases
//! themselves are kept in the store by the caller.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

/// The subnets tried, in order, when none is configured (podman's default first).
pub fn default_subnet_candidates() -> impl Iterator<Item = Ipv4Net> {
    (88u8..=127).filter_map(|second| Ipv4Net::new(Ipv4Addr::new(10, second, 0, 0), 16).ok())
}

/// The first candidate that overlaps none of `in_use` (the host's routes and addresses).
pub fn choose_subnet(
    candidates: impl IntoIterator<Item = Ipv4Net>,
    in_use: &[Ipv4Net],
) -> Option<Ipv4Net> {
    candidates
        .into_iter()
        .find(|candidate| !in_use.iter().any(|used| overlaps(candidate, used)))
}

pub fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The gateway (the bridge's own address): the subnet's first host.
pub fn gateway(subnet: &Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + 1)
}

/// The IPv6 gateway (the bridge's own address): the subnet's first host (`::1`).
pub fn gateway6(subnet: &Ipv6Net) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(subnet.network()) + 1)
}

/// An IPv6 address for a new attachment: `requested` when it is a host address of
/// `subnet` that is free, else the lowest free one above the gateway (dockerd hands
/// out a user network's IPv6 addresses in order). `used` holds the addresses taken,
/// with their holders.
pub fn pick6(
    subnet: &Ipv6Net,
    gateway: Ipv6Addr,
    requested: Option<Ipv6Addr>,
    used: &BTreeMap<Ipv6Addr, String>,
) -> Result<Ipv6Addr, IpamError> {
    if let Some(ip) = requested {
        if !subnet.contains(&ip) || ip == subnet.network() || ip == gateway {
            return Err(IpamError::OutOfRange6 {
                ip,
                subnet: *subnet,
            });
        }
        if let Some(holder) = used.get(&ip) {
            return Err(IpamError::Taken6 {
                ip,
                holder: holder.clone(),
            });
        }
        return Ok(ip);
    }
    let first = u128::from(subnet.network()) + 1;
    let last = u128::from(subnet.broadcast());
    // The used set is small: a free address is found within its size plus two tries.
    let tries = used.len() as u128 + 2;
    (first..=last)
        .take(usize::try_from(tries).unwrap_or(usize::MAX))
        .map(Ipv6Addr::from)
        .find(|ip| *ip != gateway && !used.contains_key(ip))
        .ok_or(IpamError::Exhausted6 {
            subnet: *subnet,
            used: used.len(),
        })
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    #[error("no free address left in {subnet} ({used} in use)")]
    Exhausted { subnet: Ipv4Net, used: usize },
    #[error("requested address {ip} is not a pod address of {subnet}")]
    OutOfRange { ip: Ipv4Addr, subnet: Ipv4Net },
    #[error("requested address {ip} is already in use by {holder}")]
    Taken { ip: Ipv4Addr, holder: String },
    #[error("no free IPv6 address left in {subnet} ({used} in use)")]
    Exhausted6 { subnet: Ipv6Net, used: usize },
    #[error("requested address {ip} is not a pod address of {subnet}")]
    OutOfRange6 { ip: Ipv6Addr, subnet: Ipv6Net },
    #[error("requested address {ip} is already in use by {holder}")]
    Taken6 { ip: Ipv6Addr, holder: String },
}

impl crate::error::HasKind for IpamError {
    fn kind(&self) -> crate::error::ErrorKind {
        match self {
            IpamError::Exhausted { .. } | IpamError::Exhausted6 { .. } => {
                crate::error::ErrorKind::ResourceExhausted
            }
            // A requested address or range that cannot be had.
            _ => crate::error::ErrorKind::InvalidArgument,
        }
    }
}

/// The addresses in use in one subnet and where the last allocation stopped; new
/// addresses are handed out round-robin (as CNI host-local does), so a released address
/// is not reused at once while stale ARP entries or connections may still point at it.
#[derive(Debug, Clone)]
pub struct Pool {
    subnet: Ipv4Net,
    gateway: Ipv4Addr,
    /// Dynamic addresses come from here (within the subnet).
    range: Ipv4Net,
    used: BTreeMap<Ipv4Addr, String>,
    last: Option<Ipv4Addr>,
}

impl Pool {
    pub fn new(subnet: Ipv4Net) -> Pool {
        Pool {
            subnet,
            gateway: gateway(&subnet),
            range: subnet,
            used: BTreeMap::new(),
            last: None,
        }
    }

    /// The bridge's address is not the subnet's first host.
    pub fn with_gateway(mut self, gateway: Ipv4Addr) -> Pool {
        self.gateway = gateway;
        self
    }

    /// Dynamic addresses only from `range` (Docker's `--ip-range`).
    pub fn with_range(mut self, range: Option<Ipv4Net>) -> Pool {
        if let Some(range) = range.filter(|r| overlaps(r, &self.subnet)) {
            self.range = range;
        }
        self
    }

    /// Records an existing lease (loaded from the store).
    pub fn mark_used(&mut self, ip: Ipv4Addr, holder: &str) {
        self.used.insert(ip, holder.to_string());
        if self.last.is_none_or(|last| ip > last) {
            self.last = Some(ip);
        }
    }

    pub fn release(&mut self, ip: Ipv4Addr) {
        self.used.remove(&ip);
    }

    #[cfg(test)]
    pub fn holder(&self, ip: Ipv4Addr) -> Option<&str> {
        self.used.get(&ip).map(String::as_str)
    }

    /// Addresses a pod may get: neither the network, the gateway nor the broadcast
    /// address.
    fn assignable(&self, ip: Ipv4Addr) -> bool {
        self.subnet.contains(&ip)
            && ip != self.subnet.network()
            && ip != self.gateway
            && ip != self.subnet.broadcast()
    }

    /// Picks `requested` if given (it must be free), else the next free address after
    /// the last one handed out. Does not mark it used: the caller does once the lease is
    /// stored.
    pub fn pick(&self, requested: Option<Ipv4Addr>) -> Result<Ipv4Addr, IpamError> {
        if let Some(ip) = requested {
            if !self.assignable(ip) {
                return Err(IpamError::OutOfRange {
                    ip,
                    subnet: self.subnet,
                });
            }
            if let Some(holder) = self.used.get(&ip) {
                return Err(IpamError::Taken {
                    ip,
                    holder: holder.clone(),
                });
            }
            return Ok(ip);
        }
        let first = u32::from(self.range.network()).max(u32::from(self.subnet.network()) + 1);
        let last = u32::from(self.range.broadcast()).min(u32::from(self.subnet.broadcast()) - 1);
        let exhausted = IpamError::Exhausted {
            subnet: self.subnet,
            used: self.used.len(),
        };
        if first > last {
            return Err(exhausted);
        }
        let start = match self.last {
            Some(ip) if u32::from(ip) >= first && u32::from(ip) < last => u32::from(ip) + 1,
            _ => first,
        };
        (start..=last)
            .chain(first..start)
            .map(Ipv4Addr::from)
            .find(|ip| !self.used.contains_key(ip) && *ip != self.gateway)
            .ok_or(exhausted)
    }

    /// Marks `ip` as handed out to `holder` (after its lease was stored).
    pub fn assign(&mut self, ip: Ipv4Addr, holder: &str) {
        self.used.insert(ip, holder.to_string());
        self.last = Some(ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn the_default_subnet_avoids_host_routes() {
        let in_use = [
            net("10.88.0.0/16"),
            net("10.0.0.0/15"),
            net("192.168.1.0/24"),
        ];
        assert_eq!(
            choose_subnet(default_subnet_candidates(), &in_use),
            Some(net("10.89.0.0/16"))
        );
        // A wide host route covering all candidates leaves none.
        assert_eq!(
            choose_subnet(default_subnet_candidates(), &[net("10.0.0.0/8")]),
            None
        );
        // A small route inside a candidate rules the whole candidate out.
        assert_eq!(
            choose_subnet(default_subnet_candidates(), &[net("10.88.7.0/24")]),
            Some(net("10.89.0.0/16"))
        );
        // The default route is not an overlap.
        assert_eq!(
            choose_subnet(default_subnet_candidates(), &[]),
            Some(net("10.88.0.0/16"))
        );
    }

    #[test]
    fn addresses_go_round_robin_and_skip_reserved_ones() {
        let mut pool = Pool::new(net("10.9.0.0/29"));
        // .0 network, .1 gateway, .7 broadcast: .2 to .6 are for pods.
        let mut got = Vec::new();
        for i in 0..5 {
            let ip = pool.pick(None).unwrap();
            pool.assign(ip, &format!("pod{i}"));
            got.push(ip.to_string());
        }
        assert_eq!(
            got,
            ["10.9.0.2", "10.9.0.3", "10.9.0.4", "10.9.0.5", "10.9.0.6"]
        );
        assert!(matches!(
            pool.pick(None),
            Err(IpamError::Exhausted { used: 5, .. })
        ));
        pool.release("10.9.0.3".parse().unwrap());
        assert_eq!(pool.pick(None).unwrap().to_string(), "10.9.0.3");
        pool.release("10.9.0.5".parse().unwrap());
        pool.assign("10.9.0.3".parse().unwrap(), "again");
        // After .3 the search goes on upwards, not back to the start.
        assert_eq!(pool.pick(None).unwrap().to_string(), "10.9.0.5");
    }

    #[test]
    fn a_released_address_is_not_reused_at_once() {
        let mut pool = Pool::new(net("10.9.0.0/24"));
        let a = pool.pick(None).unwrap();
        pool.assign(a, "a");
        pool.release(a);
        let b = pool.pick(None).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn loaded_leases_continue_after_the_highest() {
        let mut pool = Pool::new(net("10.9.0.0/24"));
        pool.mark_used("10.9.0.7".parse().unwrap(), "x");
        pool.mark_used("10.9.0.3".parse().unwrap(), "y");
        assert_eq!(pool.pick(None).unwrap().to_string(), "10.9.0.8");
        assert_eq!(pool.holder("10.9.0.3".parse().unwrap()), Some("y"));
    }

    #[test]
    fn requested_addresses_are_checked() {
        let mut pool = Pool::new(net("10.9.0.0/24"));
        pool.assign("10.9.0.9".parse().unwrap(), "pod-a");
        assert_eq!(
            pool.pick(Some("10.9.0.20".parse().unwrap()))
                .unwrap()
                .to_string(),
            "10.9.0.20"
        );
        for bad in ["10.9.0.1", "10.9.0.0", "10.9.0.255", "10.9.1.4"] {
            assert!(
                matches!(
                    pool.pick(Some(bad.parse().unwrap())),
                    Err(IpamError::OutOfRange { .. })
                ),
                "{bad}"
            );
        }
        let taken = pool.pick(Some("10.9.0.9".parse().unwrap())).unwrap_err();
        assert!(taken.to_string().contains("pod-a"), "{taken}");
    }
}
