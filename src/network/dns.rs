//! The embedded DNS server of user-defined networks, as Docker's 127.0.0.11: inside
//! each attached pod's network namespace, wharfd holds a UDP and a TCP socket bound to
//! 127.0.0.11:53 and answers them from its own tokio runtime. No process per pod:
//! a short-lived thread enters the namespace (setns), binds the sockets and ends; the
//! sockets stay bound in that namespace and are served like any other.
//!
//! Answers (from the registry's live tables, so a disconnect withdraws a name at
//! once): A and AAAA records for the names of the endpoints on the networks the asking
//! pod is on (container name, network aliases, short ID, also as `<name>.<network>`);
//! an empty NOERROR for other types of those names (and AAAA on IPv4-only networks);
//! PTR for their addresses (in-addr.arpa and ip6.arpa). Everything else is forwarded, as it came, to the pod's
//! own DNS servers (`--dns`) or else the host's (/etc/resolv.conf), from the host's
//! namespace; SERVFAIL if none answers.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, PTR};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

use super::Shared;

/// Docker's embedded DNS address.
pub const ADDRESS: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 11);
const TTL: u32 = 600;
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);
const HOST_RESOLV_CONF: &str = "/etc/resolv.conf";

/// The running servers, one per pod.
pub(crate) struct Servers {
    shared: Arc<Shared>,
    running: Mutex<HashMap<String, Vec<JoinHandle<()>>>>,
}

impl Servers {
    pub(crate) fn new(shared: Arc<Shared>) -> Servers {
        Servers {
            shared,
            running: Mutex::new(HashMap::new()),
        }
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<JoinHandle<()>>>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the server of `pod` unless it runs.
    pub(crate) async fn ensure(&self, pod: &str, netns: &Path) -> std::io::Result<()> {
        if self.running().contains_key(pod) {
            return Ok(());
        }
        let netns = netns.to_path_buf();
        let (udp, tcp) = tokio::task::spawn_blocking(move || bind_in_namespace(&netns))
            .await
            .map_err(std::io::Error::other)??;
        let udp = Arc::new(tokio::net::UdpSocket::from_std(udp)?);
        let tcp = tokio::net::TcpListener::from_std(tcp)?;
        let handles = vec![
            tokio::spawn(serve_udp(udp, self.shared.clone(), pod.to_string())),
            tokio::spawn(serve_tcp(tcp, self.shared.clone(), pod.to_string())),
        ];
        let mut running = self.running();
        if running.contains_key(pod) {
            // Raced with another start: keep that one.
            handles.iter().for_each(JoinHandle::abort);
        } else {
            running.insert(pod.to_string(), handles);
            tracing::debug!(pod = %pod, "embedded DNS serving 127.0.0.11:53");
        }
        Ok(())
    }

    /// Stops the server of `pod` (its sockets close, releasing the namespace).
    pub(crate) fn stop(&self, pod: &str) {
        if let Some(handles) = self.running().remove(pod) {
            handles.iter().for_each(JoinHandle::abort);
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        for handles in self.running().values() {
            handles.iter().for_each(JoinHandle::abort);
        }
    }
}

/// Binds 127.0.0.11:53 (UDP and TCP) inside `netns`, from a thread of its own.
fn bind_in_namespace(
    netns: &Path,
) -> std::io::Result<(std::net::UdpSocket, std::net::TcpListener)> {
    let file = std::fs::File::open(netns).map_err(|err| {
        std::io::Error::new(
            err.kind(),
            format!("opening network namespace {}: {err}", netns.display()),
        )
    })?;
    let thread = std::thread::Builder::new()
        .name("wharf-dns-bind".into())
        .spawn(move || -> std::io::Result<_> {
            // This thread alone enters the namespace, and ends right after.
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)?;
            let address = SocketAddr::new(IpAddr::V4(ADDRESS), 53);
            let udp = std::net::UdpSocket::bind(address)?;
            udp.set_nonblocking(true)?;
            let tcp = std::net::TcpListener::bind(address)?;
            tcp.set_nonblocking(true)?;
            Ok((udp, tcp))
        })?;
    thread
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the namespace thread panicked")))
}

async fn serve_udp(socket: Arc<tokio::net::UdpSocket>, shared: Arc<Shared>, pod: String) {
    let mut buf = vec![0u8; 4096];
    loop {
        let (len, peer) = match socket.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(err) => {
                tracing::warn!(pod = %pod, "embedded DNS: receiving: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let query = buf[..len].to_vec();
        let socket = socket.clone();
        let shared = shared.clone();
        let pod = pod.clone();
        tokio::spawn(async move {
            if let Some(reply) = answer(&shared, &pod, &query, false).await {
                let _ = socket.send_to(&reply, peer).await;
            }
        });
    }
}

async fn serve_tcp(listener: tokio::net::TcpListener, shared: Arc<Shared>, pod: String) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let shared = shared.clone();
        let pod = pod.clone();
        tokio::spawn(async move {
            loop {
                let Ok(len) = stream.read_u16().await else {
                    return;
                };
                let mut query = vec![0u8; usize::from(len)];
                if stream.read_exact(&mut query).await.is_err() {
                    return;
                }
                let Some(reply) = answer(&shared, &pod, &query, true).await else {
                    return;
                };
                let Ok(len) = u16::try_from(reply.len()) else {
                    return;
                };
                if stream.write_u16(len).await.is_err() || stream.write_all(&reply).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// The reply to one query; None when it is not a query worth answering.
async fn answer(shared: &Shared, pod: &str, query: &[u8], tcp: bool) -> Option<Vec<u8>> {
    let request = Message::from_vec(query).ok()?;
    if request.message_type() != MessageType::Query {
        return None;
    }
    if let Some(reply) = local_answer(shared, pod, &request) {
        return reply.to_vec().ok();
    }
    let upstreams = upstreams(shared, pod);
    for upstream in &upstreams {
        let forwarded = if tcp {
            forward_tcp(*upstream, query).await
        } else {
            forward_udp(*upstream, query).await
        };
        match forwarded {
            Ok(reply) => return Some(reply),
            Err(err) => tracing::debug!(pod = %pod, %upstream, "embedded DNS: forwarding: {err}"),
        }
    }
    Message::error_msg(request.id(), request.op_code(), ResponseCode::ServFail)
        .add_queries(request.queries().to_vec())
        .to_vec()
        .ok()
}

/// The answer from the networks' names, if the name is one of theirs.
fn local_answer(shared: &Shared, pod: &str, request: &Message) -> Option<Message> {
    let query = request.queries().first()?;
    let name = query.name().to_ascii();
    let mut reply = Message::new();
    reply
        .set_id(request.id())
        .set_message_type(MessageType::Response)
        .set_op_code(request.op_code())
        .set_recursion_desired(request.recursion_desired())
        .set_recursion_available(true)
        .add_query(query.clone());
    if query.query_type() == RecordType::PTR {
        let ip = ptr_address(&name)?;
        let target = shared.reverse(pod, ip)?;
        let target = Name::from_ascii(format!("{target}.")).ok()?;
        reply.add_answer(Record::from_rdata(
            query.name().clone(),
            TTL,
            RData::PTR(PTR(target)),
        ));
        return Some(reply);
    }
    let ips = shared.lookup(pod, &name)?;
    for ip in ips {
        let data = match (query.query_type(), ip) {
            (RecordType::A, IpAddr::V4(ip)) => RData::A(A(ip)),
            (RecordType::AAAA, IpAddr::V6(ip)) => RData::AAAA(AAAA(ip)),
            _ => continue,
        };
        reply.add_answer(Record::from_rdata(query.name().clone(), TTL, data));
    }
    Some(reply)
}

/// `4.3.2.1.in-addr.arpa.` -> 1.2.3.4; the 32 nibbles of `ip6.arpa.` -> an IPv6 address.
fn ptr_address(name: &str) -> Option<IpAddr> {
    let lower = name.trim_end_matches('.').to_ascii_lowercase();
    if let Some(nibbles) = lower.strip_suffix(".ip6.arpa") {
        let digits: Vec<u32> = nibbles
            .split('.')
            .map(|n| {
                (n.len() == 1)
                    .then(|| n.chars().next()?.to_digit(16))
                    .flatten()
            })
            .collect::<Option<_>>()?;
        if digits.len() != 32 {
            return None;
        }
        let value = digits
            .iter()
            .rev()
            .fold(0u128, |acc, d| (acc << 4) | u128::from(*d));
        return Some(IpAddr::V6(std::net::Ipv6Addr::from(value)));
    }
    let reversed = lower.strip_suffix(".in-addr.arpa")?;
    let mut octets: Vec<u8> = reversed
        .split('.')
        .map(|o| o.parse().ok())
        .collect::<Option<Vec<u8>>>()?;
    if octets.len() != 4 {
        return None;
    }
    octets.reverse();
    Some(IpAddr::V4(Ipv4Addr::new(
        octets[0], octets[1], octets[2], octets[3],
    )))
}

/// The pod's own servers, or the host's (loopback ones work: wharfd forwards from the
/// host's namespace).
fn upstreams(shared: &Shared, pod: &str) -> Vec<SocketAddr> {
    let mut servers = shared.upstreams(pod);
    if servers.is_empty() {
        servers = std::fs::read_to_string(HOST_RESOLV_CONF)
            .map(|text| nameservers(&text))
            .unwrap_or_default();
    }
    servers
        .iter()
        .filter_map(|s| s.parse::<IpAddr>().ok())
        .filter(|ip| *ip != IpAddr::V4(ADDRESS))
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

fn nameservers(resolv_conf: &str) -> Vec<String> {
    resolv_conf
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next().map(str::to_string))
                .flatten()
        })
        .collect()
}

async fn forward_udp(upstream: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let local: SocketAddr = if upstream.is_ipv4() {
        "0.0.0.0:0".parse().map_err(std::io::Error::other)?
    } else {
        "[::]:0".parse().map_err(std::io::Error::other)?
    };
    let socket = tokio::net::UdpSocket::bind(local).await?;
    socket.connect(upstream).await?;
    socket.send(query).await?;
    let mut buf = vec![0u8; 65535];
    let len = tokio::time::timeout(UPSTREAM_TIMEOUT, socket.recv(&mut buf))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer"))??;
    buf.truncate(len);
    Ok(buf)
}

async fn forward_tcp(upstream: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(upstream).await?;
        let len = u16::try_from(query.len()).map_err(std::io::Error::other)?;
        stream.write_u16(len).await?;
        stream.write_all(query).await?;
        let len = stream.read_u16().await?;
        let mut reply = vec![0u8; usize::from(len)];
        stream.read_exact(&mut reply).await?;
        Ok(reply)
    };
    tokio::time::timeout(UPSTREAM_TIMEOUT, exchange)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reverse_names_parse() {
        assert_eq!(
            ptr_address("5.0.18.10.in-addr.arpa."),
            Some(IpAddr::V4(Ipv4Addr::new(10, 18, 0, 5)))
        );
        assert_eq!(ptr_address("5.0.18.in-addr.arpa."), None);
        assert_eq!(ptr_address("example.com."), None);
        let ip6: std::net::Ipv6Addr = "fd00:0:1::3".parse().unwrap();
        let nibbles: Vec<String> = (0..32)
            .map(|i| format!("{:x}", (u128::from(ip6) >> (4 * i)) & 0xf))
            .collect();
        assert_eq!(
            ptr_address(&format!("{}.ip6.arpa.", nibbles.join("."))),
            Some(IpAddr::V6(ip6))
        );
        assert_eq!(ptr_address("3.0.ip6.arpa."), None);
    }

    #[test]
    fn nameservers_come_from_resolv_conf() {
        let text =
            "# comment\nsearch example\nnameserver 10.0.0.2\nnameserver ::1\noptions ndots:1\n";
        assert_eq!(nameservers(text), vec!["10.0.0.2", "::1"]);
    }

    #[tokio::test]
    async fn unknown_names_are_forwarded_and_known_ones_answered() {
        use hickory_proto::op::Query;
        // A fake upstream on loopback that answers every query with 1.2.3.4.
        let upstream = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let upstream_addr = upstream.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 512];
            let (len, peer) = upstream.recv_from(&mut buf).await.unwrap();
            let request = Message::from_vec(&buf[..len]).unwrap();
            let mut reply = Message::new();
            reply
                .set_id(request.id())
                .set_message_type(MessageType::Response)
                .add_query(request.queries()[0].clone())
                .add_answer(Record::from_rdata(
                    request.queries()[0].name().clone(),
                    5,
                    RData::A(A(Ipv4Addr::new(1, 2, 3, 4))),
                ));
            upstream
                .send_to(&reply.to_vec().unwrap(), peer)
                .await
                .unwrap();
        });
        let mut query = Message::new();
        query.set_id(7).add_query(Query::query(
            Name::from_ascii("example.test.").unwrap(),
            RecordType::A,
        ));
        let bytes = query.to_vec().unwrap();
        let reply = forward_udp(upstream_addr, &bytes).await.unwrap();
        let reply = Message::from_vec(&reply).unwrap();
        assert_eq!(reply.id(), 7);
        assert_eq!(reply.answers().len(), 1);
    }
}
