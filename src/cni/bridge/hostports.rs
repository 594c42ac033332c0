//! Choosing host ports to publish (Docker's `-p`): a port is free when no other
//! attachment publishes it on an overlapping address and no host socket uses it there
//! (a listening TCP socket, a bound unconnected UDP one), read from `/proc/net`. Ports
//! with no host port given come from the host's ephemeral range
//! (`/proc/sys/net/ipv4/ip_local_port_range`), as dockerd's port allocator takes them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{ports_clash, protocol_name, PortMapping};

/// The range dockerd falls back to when the kernel's cannot be read.
const DEFAULT_EPHEMERAL: (u16, u16) = (49153, 60999);

/// The host's ephemeral port range.
pub(super) fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| parse_range(&text))
        .unwrap_or(DEFAULT_EPHEMERAL)
}

fn parse_range(text: &str) -> Option<(u16, u16)> {
    let mut words = text.split_whitespace();
    let first: u16 = words.next()?.parse().ok()?;
    let last: u16 = words.next()?.parse().ok()?;
    (first > 0 && first <= last).then_some((first, last))
}

/// A host socket holding a port: its local address and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct HostSocket {
    pub ip: IpAddr,
    pub port: u16,
}

/// The host sockets that hold ports of `protocol` (tcp: listening; udp: unconnected).
/// Unreadable tables count as empty (sctp has none here).
pub(super) fn host_sockets(protocol: &str) -> Vec<HostSocket> {
    let (files, state) = match protocol_name(protocol).as_str() {
        "tcp" => (["/proc/net/tcp", "/proc/net/tcp6"], "0A"),
        "udp" => (["/proc/net/udp", "/proc/net/udp6"], "07"),
        _ => return Vec::new(),
    };
    files
        .iter()
        .filter_map(|file| std::fs::read_to_string(file).ok())
        .flat_map(|text| parse_sockets(&text, state))
        .collect()
}

/// The `local_address` of the rows of a `/proc/net/{tcp,udp}{,6}` table in `state`.
fn parse_sockets(text: &str, state: &str) -> Vec<HostSocket> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let local = fields.nth(1)?;
            let _remote = fields.next()?;
            if fields.next()? != state {
                return None;
            }
            let (ip, port) = local.split_once(':')?;
            Some(HostSocket {
                ip: parse_proc_ip(ip)?,
                port: u16::from_str_radix(port, 16).ok()?,
            })
        })
        .collect()
}

/// An address as /proc/net prints it: 32-bit words in host byte order, in hex.
fn parse_proc_ip(hex: &str) -> Option<IpAddr> {
    let word = |i: usize| -> Option<[u8; 4]> {
        let value = u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16).ok()?;
        Some(value.to_ne_bytes())
    };
    match hex.len() {
        8 => Some(IpAddr::V4(Ipv4Addr::from(word(0)?))),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            Some(IpAddr::V6(Ipv6Addr::from(bytes)))
        }
        _ => None,
    }
}

/// Whether a host socket is reached by traffic to `host_ip` (empty or 0.0.0.0: every
/// IPv4 address) on its port: sockets on IPv6 addresses other than `::` and mapped
/// IPv4 ones never see the IPv4 traffic the DNAT rule takes.
pub(super) fn socket_clash(socket: &HostSocket, host_ip: &str, port: u16) -> bool {
    if socket.port != port {
        return false;
    }
    let socket_v4 = match socket.ip {
        IpAddr::V4(ip) => Some(ip),
        IpAddr::V6(ip) if ip.is_unspecified() => Some(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(ip) => ip.to_ipv4_mapped(),
    };
    let Some(socket_v4) = socket_v4 else {
        return false;
    };
    let wanted: Ipv4Addr = match host_ip {
        "" => Ipv4Addr::UNSPECIFIED,
        text => match text.parse() {
            Ok(ip) => ip,
            Err(_) => return false,
        },
    };
    wanted.is_unspecified() || socket_v4.is_unspecified() || wanted == socket_v4
}

/// Why a host port cannot be published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Taken {
    /// Published by another attachment (its container ID).
    Published(String),
    /// A host socket uses it.
    HostSocket(IpAddr),
}

impl std::fmt::Display for Taken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Taken::Published(holder) => write!(f, "published for pod {holder}"),
            Taken::HostSocket(ip) => write!(f, "a host socket on {ip} uses it"),
        }
    }
}

/// What a candidate mapping would clash with: a published mapping (with its holder) or
/// a host socket.
pub(super) fn taken_by(
    candidate: &PortMapping,
    published: &[(PortMapping, String)],
    sockets: &[HostSocket],
) -> Option<Taken> {
    if let Some((_, holder)) = published.iter().find(|(p, _)| ports_clash(p, candidate)) {
        return Some(Taken::Published(holder.clone()));
    }
    sockets
        .iter()
        .find(|s| socket_clash(s, &candidate.host_ip, candidate.host_port))
        .map(|s| Taken::HostSocket(s.ip))
}

/// A random point to start a search of a range from (so concurrent daemons and
/// restarts do not all try the same ports first).
pub(super) fn random_start() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let hash = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    (hash ^ (hash >> 32)) as u32
}

/// The ports of `first..=last` in the order they are tried: from `start` (taken
/// modulo the range), wrapping around.
pub(super) fn candidates(first: u16, last: u16, start: u32) -> impl Iterator<Item = u16> {
    let size = u32::from(last) - u32::from(first) + 1;
    let offset = start % size;
    (0..size).map(move |i| (u32::from(first) + (offset + i) % size) as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_proc_tables_parse() {
        assert_eq!(parse_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_range("0 1"), None);
        assert_eq!(parse_range("x"), None);
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue\n   \
                   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000\n   \
                   1: 0100007F:A0B2 0100007F:1F90 01 00000000:00000000\n";
        let sockets = parse_sockets(tcp, "0A");
        assert_eq!(
            sockets,
            vec![HostSocket {
                ip: "127.0.0.1".parse().unwrap(),
                port: 8080
            }]
        );
        let tcp6 = "  sl  local_address                         remote_address                        st\n   \
                    0: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A\n";
        assert_eq!(
            parse_sockets(tcp6, "0A"),
            vec![HostSocket {
                ip: "::".parse().unwrap(),
                port: 80
            }]
        );
    }

    #[test]
    fn sockets_clash_on_overlapping_ipv4_addresses() {
        let on = |ip: &str| HostSocket {
            ip: ip.parse().unwrap(),
            port: 8080,
        };
        assert!(socket_clash(&on("127.0.0.1"), "", 8080));
        assert!(socket_clash(&on("0.0.0.0"), "127.0.0.1", 8080));
        assert!(socket_clash(&on("::"), "10.0.0.1", 8080));
        assert!(socket_clash(&on("::ffff:10.0.0.1"), "10.0.0.1", 8080));
        assert!(!socket_clash(&on("::1"), "", 8080));
        assert!(!socket_clash(&on("127.0.0.1"), "10.0.0.1", 8080));
        assert!(!socket_clash(&on("0.0.0.0"), "", 8081));
    }

    #[test]
    fn candidates_wrap_around_the_range() {
        assert_eq!(candidates(10, 12, 4).collect::<Vec<_>>(), vec![11, 12, 10]);
        assert_eq!(candidates(80, 80, 7).collect::<Vec<_>>(), vec![80]);
        assert_eq!(candidates(1, 65535, 0).count(), 65535);
    }

    #[test]
    fn taken_names_the_holder() {
        let map = |port: u16, ip: &str| PortMapping {
            host_port: port,
            container_port: 80,
            protocol: "tcp".into(),
            host_ip: ip.into(),
        };
        let published = vec![(map(8080, ""), "pod1".to_string())];
        assert_eq!(
            taken_by(&map(8080, "127.0.0.1"), &published, &[]),
            Some(Taken::Published("pod1".into()))
        );
        assert_eq!(taken_by(&map(8081, ""), &published, &[]), None);
        let sockets = [HostSocket {
            ip: "0.0.0.0".parse().unwrap(),
            port: 8081,
        }];
        assert!(matches!(
            taken_by(&map(8081, "127.0.0.1"), &published, &sockets),
            Some(Taken::HostSocket(_))
        ));
    }
}
