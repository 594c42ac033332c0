//! PortForward's dial: a TCP connection to `localhost:<port>` inside a pod's network
//! namespace, for the streaming server to copy a client's stream into.
//!
//! The socket is created on a short-lived thread that entered the pod's network
//! namespace (a socket belongs to the namespace it was created in, for its whole
//! life), then handed to tokio to connect: no process is started (no socat, no
//! nsenter), and no tokio worker ever changes namespace. As kubelet dials
//! `localhost`, both 127.0.0.1 and ::1 are tried, so listeners on either family are
//! reached.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, FromRawFd, IntoRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::sched::{setns, CloneFlags};
use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
use tokio::net::{TcpSocket, TcpStream};

use super::records::PodState;
use super::service::{Result, Runtime, RuntimeError};

impl Runtime {
    /// Connects to `port` on the loopback of the ready pod `pod_query` (its network
    /// namespace, or the host's for a host-network pod).
    pub async fn port_forward_dial(
        &self,
        namespace: &str,
        pod_query: &str,
        port: u16,
    ) -> Result<TcpStream> {
        let pod = self
            .find_pod(namespace, pod_query)
            .ok_or_else(|| RuntimeError::NotFound(format!("pod sandbox {pod_query:?}")))?;
        if pod.state != PodState::Ready {
            return Err(RuntimeError::FailedPrecondition(format!(
                "pod sandbox {} is not ready (state {:?}): nothing to forward to",
                pod.id, pod.state
            )));
        }
        dial_localhost(pod.namespaces.network.as_deref(), port)
            .await
            .map_err(|source| RuntimeError::Io {
                context: format!("forwarding port {port} to pod sandbox {}", pod.id),
                source,
            })
    }
}

/// Connects to `localhost:port` in the network namespace pinned at `netns` (the
/// current one when None): 127.0.0.1 first, then ::1.
pub async fn dial_localhost(netns: Option<&Path>, port: u16) -> std::io::Result<TcpStream> {
    let (v4, v6) = sockets_in(netns.map(Path::to_path_buf)).await?;
    let mut errors = Vec::new();
    for (socket, address) in [
        (v4, SocketAddr::from((Ipv4Addr::LOCALHOST, port))),
        (v6, SocketAddr::from((Ipv6Addr::LOCALHOST, port))),
    ] {
        let Some(socket) = socket else { continue };
        // SAFETY: a fresh TCP socket fd that nothing else owns.
        let socket = unsafe { TcpSocket::from_raw_fd(socket.into_raw_fd()) };
        match socket.connect(address).await {
            Ok(stream) => return Ok(stream),
            Err(err) => errors.push(format!("dial {address}: {err}")),
        }
    }
    if errors.is_empty() {
        errors.push("no IPv4 or IPv6 socket could be made".into());
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::ConnectionRefused,
        errors.join("; "),
    ))
}

/// Creates an IPv4 and an IPv6 TCP socket (non-blocking) inside `netns`. A family the
/// namespace lacks (IPv6 disabled) gives None for it.
async fn sockets_in(netns: Option<PathBuf>) -> std::io::Result<(Option<OwnedFd>, Option<OwnedFd>)> {
    let in_host = netns.is_none();
    let make = move || -> std::io::Result<(Option<OwnedFd>, Option<OwnedFd>)> {
        if let Some(path) = &netns {
            let file = std::fs::File::open(path).map_err(|err| {
                std::io::Error::new(err.kind(), format!("opening {}: {err}", path.display()))
            })?;
            setns(file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|errno| {
                std::io::Error::other(format!(
                    "entering the network namespace {}: {errno}",
                    path.display()
                ))
            })?;
        }
        let tcp = |family| {
            socket(
                family,
                SockType::Stream,
                SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
                None,
            )
        };
        let v4 = tcp(AddressFamily::Inet)?;
        let v6 = tcp(AddressFamily::Inet6).ok();
        Ok((Some(v4), v6))
    };
    if in_host {
        return make();
    }
    // A thread of its own: its namespace dies with it.
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("wharf-portfwd".into())
        .spawn(move || {
            let _ = tx.send(make());
        })?;
    rx.await
        .map_err(|_| std::io::Error::other("the namespace thread ended without an answer"))?
}
