//! Links, addresses and routes of the built-in bridge network, over rtnetlink.
//!
//! The host side uses one long-lived connection. The pod side is configured over a
//! connection opened inside the pod's network namespace: a netlink socket belongs to
//! the namespace it was created in, so a short-lived thread enters the namespace,
//! opens the socket and does the work there; the daemon's own threads never change
//! namespace.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::Path;

use futures_util::TryStreamExt;
use ipnet::{Ipv4Net, Ipv6Net};
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags};
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute};
use rtnetlink::{
    Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder,
};

#[derive(Debug, thiserror::Error)]
#[error("{context}: {message}")]
pub struct NetlinkError {
    pub context: String,
    pub message: String,
    /// The errno of a netlink error reply.
    pub errno: Option<i32>,
}

type Result<T> = std::result::Result<T, NetlinkError>;

fn failed(context: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let context = context.into();
    move |err| {
        let errno = match &err {
            rtnetlink::Error::NetlinkError(msg) => Some(msg.raw_code().abs()),
            _ => None,
        };
        let message = match errno {
            Some(errno) => std::io::Error::from_raw_os_error(errno).to_string(),
            None => err.to_string(),
        };
        NetlinkError {
            context,
            message,
            errno,
        }
    }
}

fn io_failed(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> NetlinkError {
    let context = context.into();
    move |err| NetlinkError {
        context,
        errno: err.raw_os_error(),
        message: err.to_string(),
    }
}

const ENODEV: i32 = nix::libc::ENODEV;
const EEXIST: i32 = nix::libc::EEXIST;
/// The kernel's routing table of local and broadcast addresses.
const RT_TABLE_LOCAL: u8 = 255;

/// A route-netlink connection in the daemon's network namespace.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens a connection; must be called inside the tokio runtime, which drives it.
    pub fn connect() -> Result<Netlink> {
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(io_failed("opening a route netlink socket"))?;
        tokio::spawn(connection);
        Ok(Netlink { handle })
    }

    pub async fn link_index(&self, name: &str) -> Result<Option<u32>> {
        link_index(&self.handle, name).await
    }

    /// Creates the bridge unless it exists, gives it `gateway/prefix` unless it has it,
    /// and brings it up. Returns its index.
    pub async fn ensure_bridge(&self, name: &str, gateway: Ipv4Net, mtu: u32) -> Result<u32> {
        let index = match self.link_index(name).await? {
            Some(index) => index,
            None => {
                let mut bridge = LinkBridge::new(name).up();
                if mtu != 0 {
                    bridge = bridge.mtu(mtu);
                }
                let created = self.handle.link().add(bridge.build()).execute().await;
                if let Err(err) = created {
                    let err = failed(format!("creating bridge {name}"))(err);
                    // Another daemon may have made it at the same moment.
                    if err.errno != Some(EEXIST) {
                        return Err(err);
                    }
                }
                self.link_index(name).await?.ok_or_else(|| NetlinkError {
                    context: format!("bridge {name}"),
                    message: "vanished right after it was created".into(),
                    errno: None,
                })?
            }
        };
        let has_gateway = self.ipv4_addresses(Some(index)).await?.contains(&gateway);
        if !has_gateway {
            let added = self
                .handle
                .address()
                .add(index, IpAddr::V4(gateway.addr()), gateway.prefix_len())
                .execute()
                .await;
            if let Err(err) = added {
                let err = failed(format!("adding {gateway} to bridge {name}"))(err);
                if err.errno != Some(EEXIST) {
                    return Err(err);
                }
            }
        }
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(failed(format!("bringing bridge {name} up")))?;
        Ok(index)
    }

    /// Gives the bridge `gateway/prefix` (IPv6, without duplicate address detection,
    /// so pods can use it at once) unless it has it.
    pub async fn ensure_ipv6_address(
        &self,
        name: &str,
        index: u32,
        gateway: Ipv6Net,
    ) -> Result<()> {
        add_ipv6(&self.handle, index, gateway)
            .await
            .map_err(failed(format!("adding {gateway} to bridge {name}")))
            .or_else(|err| match err.errno {
                Some(EEXIST) => Ok(()),
                _ => Err(err),
            })
    }

    /// The IPv4 addresses (with their prefixes) of one link, or of all links.
    pub async fn ipv4_addresses(&self, link: Option<u32>) -> Result<Vec<Ipv4Net>> {
        let mut request = self.handle.address().get();
        if let Some(index) = link {
            request = request.set_link_index_filter(index);
        }
        let mut stream = request.execute();
        let mut found = Vec::new();
        while let Some(message) = stream
            .try_next()
            .await
            .map_err(failed("listing addresses"))?
        {
            if link.is_some_and(|index| message.header.index != index) {
                continue;
            }
            for attribute in &message.attributes {
                if let AddressAttribute::Address(IpAddr::V4(ip)) = attribute {
                    if let Ok(net) = Ipv4Net::new(*ip, message.header.prefix_len) {
                        found.push(net);
                    }
                }
            }
        }
        Ok(found)
    }

    /// Subnets the host already uses: its IPv4 routes (except default routes, the local
    /// table and routes through `except_link`) and the subnets of its addresses on other
    /// links. A new bridge subnet must avoid all of them.
    pub async fn subnets_in_use(&self, except_link: Option<u32>) -> Result<Vec<Ipv4Net>> {
        let mut in_use = Vec::new();
        let mut routes = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        while let Some(route) = routes.try_next().await.map_err(failed("listing routes"))? {
            let prefix = route.header.destination_prefix_length;
            if prefix == 0 || route.header.table == RT_TABLE_LOCAL {
                continue;
            }
            let mut destination = None;
            let mut through_except = false;
            for attribute in &route.attributes {
                match attribute {
                    RouteAttribute::Destination(RouteAddress::Inet(ip)) => destination = Some(*ip),
                    RouteAttribute::Oif(index) => through_except = Some(*index) == except_link,
                    RouteAttribute::Table(table) if *table == u32::from(RT_TABLE_LOCAL) => {
                        through_except = true
                    }
                    _ => {}
                }
            }
            if through_except {
                continue;
            }
            if let Some(net) = destination.and_then(|ip| Ipv4Net::new(ip, prefix).ok()) {
                in_use.push(net.trunc());
            }
        }
        let mut addresses = self.handle.address().get().execute();
        while let Some(message) = addresses
            .try_next()
            .await
            .map_err(failed("listing addresses"))?
        {
            if Some(message.header.index) == except_link {
                continue;
            }
            for attribute in &message.attributes {
                if let AddressAttribute::Address(IpAddr::V4(ip)) = attribute {
                    if let Ok(net) = Ipv4Net::new(*ip, message.header.prefix_len) {
                        in_use.push(net.trunc());
                    }
                }
            }
        }
        Ok(in_use)
    }

    /// Creates a veth pair: `host` enslaved to the bridge and up, its peer created
    /// directly inside the namespace `netns` as `ifname` (down until configured there).
    pub async fn add_veth(
        &self,
        host: &str,
        bridge_index: u32,
        netns: &Path,
        ifname: &str,
        mtu: u32,
    ) -> Result<()> {
        let netns_file = std::fs::File::open(netns).map_err(io_failed(format!(
            "opening network namespace {}",
            netns.display()
        )))?;
        let mut peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(ifname.to_string())
            .setns_by_fd(netns_file.as_raw_fd());
        let mut veth = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(host.to_string())
            .controller(bridge_index)
            .up();
        if mtu != 0 {
            peer = peer.mtu(mtu);
            veth = veth.mtu(mtu);
        }
        let veth = veth
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())))
            .build();
        let added = self.handle.link().add(veth).execute().await;
        drop(netns_file);
        added.map_err(failed(format!(
            "creating veth {host} with peer {ifname} in {}",
            netns.display()
        )))
    }

    /// Deletes a link by name; a missing link is fine.
    pub async fn delete_link(&self, name: &str) -> Result<()> {
        let Some(index) = self.link_index(name).await? else {
            return Ok(());
        };
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(err) => {
                let err = failed(format!("deleting link {name}"))(err);
                if err.errno == Some(ENODEV) {
                    Ok(())
                } else {
                    Err(err)
                }
            }
        }
    }
}

async fn link_index(handle: &Handle, name: &str) -> Result<Option<u32>> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(link)) => Ok(Some(link.header.index)),
        Ok(None) => Ok(None),
        Err(err) => {
            let err = failed(format!("looking up link {name}"))(err);
            if err.errno == Some(ENODEV) {
                Ok(None)
            } else {
                Err(err)
            }
        }
    }
}

/// What the pod side got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInterface {
    pub mac: String,
}

/// An IPv6 address without duplicate address detection (the network hands addresses
/// out itself, and a tentative address would refuse traffic for a second).
async fn add_ipv6(
    handle: &Handle,
    index: u32,
    address: Ipv6Net,
) -> std::result::Result<(), rtnetlink::Error> {
    let mut request = handle
        .address()
        .add(index, IpAddr::V6(address.addr()), address.prefix_len());
    request
        .message_mut()
        .attributes
        .push(AddressAttribute::Flags(AddressFlags::Nodad));
    request.execute().await
}

/// Adds a default route; one already there (a second network's interface finds the
/// first's) is kept.
async fn add_default_route(
    handle: &Handle,
    route: rtnetlink::packet_route::route::RouteMessage,
    via: &str,
) -> Result<()> {
    match handle.route().add(route).execute().await {
        Ok(()) => Ok(()),
        Err(err) => {
            let err = failed(format!("adding the default route {via}"))(err);
            if err.errno == Some(EEXIST) {
                Ok(())
            } else {
                Err(err)
            }
        }
    }
}

/// A pod interface's IPv6 address and the default route's gateway (None: no route).
pub type PodIpv6 = Option<(Ipv6Net, Option<Ipv6Addr>)>;

/// Configures `ifname` inside `netns`: an optional MAC, the address, up, and a default
/// route through `gateway` (if given and there is none yet); the same for IPv6 when
/// `ipv6` is given. Blocking (runs on its own thread); call it from a blocking task.
pub fn configure_pod_side(
    netns: &Path,
    ifname: &str,
    address: Ipv4Net,
    gateway: Option<Ipv4Addr>,
    mac: Option<[u8; 6]>,
    ipv6: PodIpv6,
) -> Result<PodInterface> {
    let netns_file = std::fs::File::open(netns).map_err(io_failed(format!(
        "opening network namespace {}",
        netns.display()
    )))?;
    let ifname = ifname.to_string();
    let context = format!("configuring {ifname} in {}", netns.display());
    let thread = std::thread::Builder::new()
        .name("wharf-netns".into())
        .spawn(move || -> Result<PodInterface> {
            // This thread alone enters the namespace, and ends right after.
            nix::sched::setns(&netns_file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(
                |errno| NetlinkError {
                    context: "entering the pod network namespace".into(),
                    message: errno.desc().to_string(),
                    errno: Some(errno as i32),
                },
            )?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .map_err(io_failed("starting a netlink runtime"))?;
            if ipv6.is_some() {
                // This thread's /proc/sys/net is the pod's: IPv6 on for the interface.
                let path = format!("/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6");
                if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() != "0") {
                    std::fs::write(&path, "0").map_err(io_failed(format!("writing {path}")))?;
                }
            }
            runtime.block_on(configure_in_namespace(&ifname, address, gateway, mac, ipv6))
        })
        .map_err(io_failed(context.clone()))?;
    thread.join().unwrap_or_else(|_| {
        Err(NetlinkError {
            context,
            message: "the namespace thread panicked".into(),
            errno: None,
        })
    })
}

async fn configure_in_namespace(
    ifname: &str,
    address: Ipv4Net,
    gateway: Option<Ipv4Addr>,
    mac: Option<[u8; 6]>,
    ipv6: PodIpv6,
) -> Result<PodInterface> {
    let (connection, handle, _) = rtnetlink::new_connection().map_err(io_failed(
        "opening a route netlink socket in the pod namespace",
    ))?;
    tokio::spawn(connection);
    let index = link_index(&handle, ifname)
        .await?
        .ok_or_else(|| NetlinkError {
            context: format!("pod interface {ifname}"),
            message: "not found in the pod network namespace".into(),
            errno: Some(ENODEV),
        })?;
    let mut link = LinkUnspec::new_with_index(index).up();
    if let Some(mac) = mac {
        link = link.address(mac.to_vec());
    }
    handle
        .link()
        .set(link.build())
        .execute()
        .await
        .map_err(failed(format!("bringing {ifname} up")))?;
    handle
        .address()
        .add(index, IpAddr::V4(address.addr()), address.prefix_len())
        .execute()
        .await
        .map_err(failed(format!("adding {address} to {ifname}")))?;
    // A second network's interface finds the first's default route in place: kept.
    if let Some(gateway) = gateway {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gateway)
            .output_interface(index)
            .build();
        add_default_route(&handle, route, &format!("via {gateway}")).await?;
    }
    if let Some((address6, gateway6)) = ipv6 {
        add_ipv6(&handle, index, address6)
            .await
            .map_err(failed(format!("adding {address6} to {ifname}")))?;
        if let Some(gateway6) = gateway6 {
            let route = RouteMessageBuilder::<Ipv6Addr>::new()
                .gateway(gateway6)
                .output_interface(index)
                .build();
            add_default_route(&handle, route, &format!("via {gateway6}")).await?;
        }
    }
    let mut links = handle.link().get().match_index(index).execute();
    let mut mac = String::new();
    if let Some(link) = links
        .try_next()
        .await
        .map_err(failed(format!("reading {ifname}")))?
    {
        for attribute in link.attributes {
            if let LinkAttribute::Address(bytes) = attribute {
                mac = bytes
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(":");
            }
        }
    }
    Ok(PodInterface { mac })
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_strictly() {
        assert_eq!(
            parse_mac("02:42:ac:11:00:02"),
            Some([0x02, 0x42, 0xac, 0x11, 0x00, 0x02])
        );
        for bad in [
            "02:42:ac:11:00",
            "02:42:ac:11:00:02:03",
            "2:42:ac:11:00:02",
            "zz:42:ac:11:00:02",
            "",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }
}
