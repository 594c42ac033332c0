//! The wharfd process: prepares its directories, takes the root lock, opens the store,
//! serves the CRI socket, and shuts down cleanly on SIGTERM/SIGINT.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};

use crate::config::Config;
use crate::cri::{self, CriServer};
use crate::docker;
use crate::engine::{Engine, EngineError};

mod in_flight;
pub mod limit;
pub mod memory;
pub mod notify;

use in_flight::InFlight;

/// The lock file in the root dir that keeps a second daemon off the same data.
pub const LOCK_FILE: &str = "wharfd.lock";

/// API sockets are root-only by default: owner root, group root, mode 0660.
const SOCKET_MODE: u32 = 0o660;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot create directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} exists and is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("cannot open lock file {path}: {source}")]
    LockFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("another wharfd{holder} is already running on root {root} (lock {lock} is held)")]
    AlreadyRunning {
        root: PathBuf,
        lock: PathBuf,
        holder: String,
    },
    #[error("socket {path} is in use by another process; stop it or choose another {key}")]
    SocketInUse { path: PathBuf, key: &'static str },
    #[error("cannot create socket {path}: {source}")]
    Socket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("cannot install signal handler: {0}")]
    Signal(std::io::Error),
    #[error("CRI server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("CRI server task failed: {0}")]
    ServerTask(tokio::task::JoinError),
    #[error("Docker API server failed: {0}")]
    DockerServe(std::io::Error),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("docker.group: {group:?}: {message}")]
    Group { group: String, message: String },
    #[error("cannot listen on {what} {address}: {source}")]
    Bind {
        what: &'static str,
        address: String,
        source: std::io::Error,
    },
}

/// Runs the daemon until SIGTERM or SIGINT. Returns once in-flight calls have finished
/// (or `cri.shutdown_timeout_secs` passed) and the sockets are removed. `notifier`
/// (systemd's `$NOTIFY_SOCKET`) is told `READY=1` once the APIs serve and
/// `STOPPING=1` when the shutdown begins.
pub async fn run(config: Config, notifier: Option<notify::Notifier>) -> Result<(), DaemonError> {
    raise_open_file_limit();
    let config = Arc::new(config);
    create_dir(&config.root, 0o711)?;
    create_dir(&config.state, 0o711)?;
    let _lock = RootLock::acquire(&config.root)?;

    let engine = Engine::open(config.clone(), &[cri::prepare_store]).await?;

    let mut terminate = signal(SignalKind::terminate()).map_err(DaemonError::Signal)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(DaemonError::Signal)?;

    let socket = ServedSocket::bind(&config.cri.socket, "cri.socket", 0)?;
    let docker_gid = match (config.docker.enabled, &config.docker.group) {
        (true, Some(group)) => docker_group(group)?,
        _ => 0,
    };
    let docker_socket = if config.docker.enabled {
        match ServedSocket::bind(&config.docker_socket(), "docker.socket", docker_gid) {
            Ok(socket) => Some(socket),
            Err(err) => {
                socket.remove();
                return Err(err);
            }
        }
    } else {
        None
    };
    // One count for both APIs: shutdown and the memory trimmer wait for every call.
    let in_flight = InFlight::default();
    let (docker_stop_tx, docker_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (docker_stop_tx_tcp, _) = tokio::sync::broadcast::channel::<()>(1);
    // One front end (its exec instances, its housekeeping) for every Docker listener.
    let docker_front = config
        .docker
        .enabled
        .then(|| docker::DockerServer::new(engine.clone()));
    let mut docker_server = match (&docker_socket, &docker_front) {
        (Some(docker_socket), Some(front)) => {
            let listener =
                limit::LimitedListener::new(docker_socket.listener()?, docker_limit(&config));
            let server = front.clone();
            Some(tokio::spawn(docker::serve(
                listener,
                server,
                in_flight.layer(),
                async {
                    let _ = docker_stop_rx.await;
                },
            )))
        }
        _ => None,
    };
    // The streaming server: its URLs name the address actually bound (port 0 picks).
    let streaming_config = &config.cri.streaming;
    // Checked with the rest of the configuration at load; parsed again here.
    let streaming_ip = streaming_config.ip().map_err(|err| DaemonError::Bind {
        what: "cri.streaming.address",
        address: streaming_config.address.clone(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, err.to_string()),
    })?;
    let streaming_listener = tokio::net::TcpListener::bind((streaming_ip, streaming_config.port))
        .await
        .map_err(|source| DaemonError::Bind {
            what: "cri.streaming.address",
            address: format!("{}:{}", streaming_config.address, streaming_config.port),
            source,
        })?;
    let streaming_address =
        streaming_listener
            .local_addr()
            .map_err(|source| DaemonError::Bind {
                what: "cri.streaming.address",
                address: format!("{}:{}", streaming_config.address, streaming_config.port),
                source,
            })?;
    let streaming_tls = match (
        &streaming_config.tls_cert_file,
        &streaming_config.tls_key_file,
    ) {
        (Some(cert), Some(key)) => Some(crate::tls::acceptor(crate::tls::TlsFiles {
            section: "cri.streaming",
            cert,
            key,
            client_ca: None,
        })?),
        _ => None,
    };
    let streaming =
        crate::streaming::StreamingServer::new(engine.clone(), streaming_config, streaming_address);
    let (streaming_stop_tx, streaming_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let streaming_server = tokio::spawn(crate::streaming::serve(
        streaming_listener,
        streaming_tls,
        streaming.clone(),
        async {
            let _ = streaming_stop_rx.await;
        },
    ));
    // The Docker API's TCP hosts (plain on loopback, else mutual TLS), each sharing
    // the in-flight accounting and the shutdown.
    let mut docker_tcp = Vec::new();
    if config.docker.enabled {
        let acceptor = match (&config.docker.tls_cert_file, &config.docker.tls_key_file) {
            (Some(cert), Some(key)) => Some(crate::tls::acceptor(crate::tls::TlsFiles {
                section: "docker",
                cert,
                key,
                client_ca: config.docker.tls_ca_file.as_deref(),
            })?),
            _ => None,
        };
        let hosts = config.docker.tcp_hosts().map_err(|err| DaemonError::Bind {
            what: "docker.hosts",
            address: config.docker.hosts.join(", "),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, err.to_string()),
        })?;
        for address in hosts {
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .map_err(|source| DaemonError::Bind {
                    what: "docker.hosts",
                    address: address.to_string(),
                    source,
                })?;
            let Some(server) = docker_front.clone() else {
                break;
            };
            let stop = docker_stop_tx_tcp.subscribe();
            let shutdown = async move {
                let mut stop = stop;
                let _ = stop.recv().await;
            };
            let task = match &acceptor {
                Some(acceptor) => {
                    let listener = crate::tls::TlsListener::new(listener, acceptor.clone())
                        .map_err(|source| DaemonError::Bind {
                            what: "docker.hosts",
                            address: address.to_string(),
                            source,
                        })?;
                    let listener = limit::LimitedListener::new(listener, docker_limit(&config));
                    tokio::spawn(docker::serve(listener, server, in_flight.layer(), shutdown))
                }
                None => {
                    let listener = limit::LimitedListener::new(listener, docker_limit(&config));
                    tokio::spawn(docker::serve(listener, server, in_flight.layer(), shutdown))
                }
            };
            tracing::info!(%address, tls = acceptor.is_some(), "Docker API listening on TCP");
            docker_tcp.push(task);
        }
    }
    // The Prometheus listener.
    let (metrics_stop_tx, metrics_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let metrics_address = match config.metrics.listen_address() {
        Ok(address) => address,
        Err(err) => {
            return Err(DaemonError::Bind {
                what: "metrics.address",
                address: config.metrics.address.clone().unwrap_or_default(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, err.to_string()),
            })
        }
    };
    let mut metrics_listening = None;
    if let Some((address, configured)) = metrics_address {
        match tokio::net::TcpListener::bind(address).await {
            Ok(listener) => {
                metrics_listening = listener.local_addr().ok();
                tokio::spawn(crate::metrics::serve(
                    listener,
                    engine.metrics.clone(),
                    async {
                        let _ = metrics_stop_rx.await;
                    },
                ));
            }
            Err(source) if configured => {
                return Err(DaemonError::Bind {
                    what: "metrics.address",
                    address: address.to_string(),
                    source,
                })
            }
            Err(err) => tracing::warn!(
                %address,
                "the metrics listener is off: cannot listen on its default address ({err}); \
                 set [metrics] address"
            ),
        }
    }
    let cri_metrics = crate::metrics::ApiLayer::cri(engine.metrics.api.clone());
    let (runtime_service, image_service) = cri::services(CriServer::new(engine, streaming));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tonic::transport::Server::builder()
        .layer(in_flight.layer())
        .layer(cri_metrics)
        .add_service(runtime_service)
        .add_service(image_service)
        .serve_with_incoming_shutdown(
            limit::limited_incoming(
                socket.listener()?,
                limit::ConnectionLimit::new(config.cri.max_connections, "[cri] max_connections"),
            ),
            async {
                let _ = stop_rx.await;
            },
        );
    let mut server = tokio::spawn(server);
    let trimmer = tokio::spawn(memory::trim_when_idle(
        in_flight.clone(),
        memory::CHECK_EVERY,
        memory::TRIM_ABOVE,
        memory::free_heap_bytes,
        memory::trim_heap,
    ));
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        root = %config.root.display(),
        state = %config.state.display(),
        cri_socket = %config.cri.socket.display(),
        docker_socket = %docker_socket.as_ref().map(|s| s.path.display().to_string()).unwrap_or_default(),
        streaming = %streaming_address,
        metrics = %metrics_listening.map(|a| a.to_string()).unwrap_or_default(),
        "wharfd is ready"
    );
    if let Some(notifier) = &notifier {
        notifier.notify_or_warn("READY=1\nSTATUS=serving");
    }
    crate::crash_point::serving();
    let docker_failed = async {
        match docker_server.as_mut() {
            Some(server) => server.await,
            None => std::future::pending().await,
        }
    };

    let signal_name = tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
        result = &mut server => {
            // The server stopped by itself: an accept error. Clean up and report it.
            trimmer.abort();
            remove_sockets(&socket, docker_socket.as_ref());
            return match result {
                Ok(Ok(())) => Ok(()),
                Ok(Err(err)) => Err(err.into()),
                Err(join) => Err(DaemonError::ServerTask(join)),
            };
        }
        result = docker_failed => {
            trimmer.abort();
            remove_sockets(&socket, docker_socket.as_ref());
            return match result {
                Ok(Ok(())) => Ok(()),
                Ok(Err(err)) => Err(DaemonError::DockerServe(err)),
                Err(join) => Err(DaemonError::ServerTask(join)),
            };
        }
    };
    let timeout = Duration::from_secs(config.cri.shutdown_timeout_secs);
    if let Some(notifier) = &notifier {
        notifier.notify_or_warn("STOPPING=1\nSTATUS=finishing in-flight calls");
    }
    tracing::info!(
        signal = signal_name,
        timeout_secs = timeout.as_secs(),
        "shutting down: no new connections, finishing in-flight calls"
    );
    trimmer.abort();
    // New connections stop now, whatever the drain does next.
    remove_sockets(&socket, docker_socket.as_ref());
    let _ = stop_tx.send(());
    let _ = docker_stop_tx.send(());
    let _ = docker_stop_tx_tcp.send(());
    drop(docker_tcp);
    let _ = streaming_stop_tx.send(());
    drop(streaming_server);
    let _ = metrics_stop_tx.send(());
    // Wait for the calls being handled, not for idle connections: clients keep those
    // open, and they are closed when the process exits.
    tokio::select! {
        result = &mut server => match result {
            Ok(Ok(())) => tracing::info!("all connections closed"),
            Ok(Err(err)) => tracing::warn!(error = %err, "CRI server ended with an error"),
            Err(err) => tracing::warn!(error = %err, "CRI server task failed"),
        },
        _ = in_flight.wait_idle() => tracing::info!("all in-flight calls finished"),
        _ = tokio::time::sleep(timeout) => {
            tracing::warn!("in-flight calls did not finish within the shutdown timeout; exiting anyway");
        }
        _ = terminate.recv() => tracing::warn!("second SIGTERM: exiting without waiting"),
        _ = interrupt.recv() => tracing::warn!("second SIGINT: exiting without waiting"),
    }
    tracing::info!("wharfd stopped");
    Ok(())
}

/// Removes the API sockets (those still ours): no new connection from here on.
fn remove_sockets(cri: &ServedSocket, docker: Option<&ServedSocket>) {
    cri.remove();
    if let Some(docker) = docker {
        docker.remove();
    }
}

fn create_dir(path: &Path, mode: u32) -> Result<(), DaemonError> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(DaemonError::NotADirectory {
            path: path.to_path_buf(),
        }),
        Err(_) => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(path)
            .map_err(|source| DaemonError::CreateDir {
                path: path.to_path_buf(),
                source,
            }),
    }
}

/// An exclusive `flock` on `<root>/wharfd.lock`, held for the daemon's lifetime. The
/// kernel releases it when the process dies, so a crash never leaves a stale lock.
struct RootLock {
    _file: File,
}

impl RootLock {
    fn acquire(root: &Path) -> Result<RootLock, DaemonError> {
        let path = root.join(LOCK_FILE);
        let lock_err = |source| DaemonError::LockFile {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(lock_err)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(DaemonError::AlreadyRunning {
                    root: root.to_path_buf(),
                    lock: path,
                    holder: if holder.is_empty() {
                        String::new()
                    } else {
                        format!(" (pid {holder})")
                    },
                });
            }
            Err(std::fs::TryLockError::Error(err)) => return Err(lock_err(err)),
        }
        // Record our pid for the message a second daemon prints.
        file.set_len(0).map_err(lock_err)?;
        file.rewind().map_err(lock_err)?;
        writeln!(file, "{}", std::process::id()).map_err(lock_err)?;
        Ok(RootLock { _file: file })
    }
}

/// The gid of `[docker] group` (a name in the group database, or a number).
fn docker_group(group: &str) -> Result<u32, DaemonError> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(group) {
        Ok(Some(found)) => Ok(found.gid.as_raw()),
        Ok(None) => Err(DaemonError::Group {
            group: group.to_string(),
            message: "no such group".into(),
        }),
        Err(errno) => Err(DaemonError::Group {
            group: group.to_string(),
            message: errno.to_string(),
        }),
    }
}

/// A listening UNIX socket created with its final owner and mode already set, that is
/// removed on shutdown only if the path still names it.
struct ServedSocket {
    path: PathBuf,
    listener: std::sync::Mutex<Option<std::os::unix::net::UnixListener>>,
    inode: u64,
}

impl ServedSocket {
    /// Binds `path`, owned by root and group `gid` (0: root), mode 0660.
    fn bind(path: &Path, key: &'static str, gid: u32) -> Result<ServedSocket, DaemonError> {
        let socket_err = |source| DaemonError::Socket {
            path: path.to_path_buf(),
            source,
        };
        if let Some(parent) = path.parent() {
            create_dir(parent, 0o711)?;
        }
        if std::fs::symlink_metadata(path).is_ok() {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(DaemonError::SocketInUse {
                    path: path.to_path_buf(),
                    key,
                });
            }
            // Left behind by a daemon that was killed: nobody answers on it.
            std::fs::remove_file(path).map_err(socket_err)?;
        }
        // Bind under a temporary name and rename into place once owner and mode are
        // right, so the socket is never reachable with looser permissions.
        let mut temp_name = path.as_os_str().to_os_string();
        temp_name.push(format!(".{}.tmp", std::process::id()));
        let temp = PathBuf::from(temp_name);
        let _ = std::fs::remove_file(&temp);
        let listener = std::os::unix::net::UnixListener::bind(&temp).map_err(socket_err)?;
        let prepared = std::os::unix::fs::chown(&temp, Some(0), Some(gid))
            .and_then(|()| {
                std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(SOCKET_MODE))
            })
            .and_then(|()| std::fs::rename(&temp, path));
        if let Err(err) = prepared {
            let _ = std::fs::remove_file(&temp);
            return Err(socket_err(err));
        }
        let inode = std::fs::symlink_metadata(path).map_err(socket_err)?.ino();
        listener.set_nonblocking(true).map_err(socket_err)?;
        Ok(ServedSocket {
            path: path.to_path_buf(),
            listener: std::sync::Mutex::new(Some(listener)),
            inode,
        })
    }

    fn listener(&self) -> Result<UnixListener, DaemonError> {
        let std_listener = self
            .listener
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
            .ok_or_else(|| DaemonError::Socket {
                path: self.path.clone(),
                source: std::io::Error::other("listener already taken"),
            })?;
        UnixListener::from_std(std_listener).map_err(|source| DaemonError::Socket {
            path: self.path.clone(),
            source,
        })
    }

    /// Removes the socket file unless another process has since put its own there.
    fn remove(&self) {
        match std::fs::symlink_metadata(&self.path) {
            Ok(meta) if meta.ino() == self.inode => {
                if let Err(err) = std::fs::remove_file(&self.path) {
                    tracing::warn!(path = %self.path.display(), error = %err, "cannot remove socket");
                }
            }
            _ => {}
        }
    }
}

/// Raises the soft limit of open files to the hard one, as Go programs (containerd,
/// dockerd) do at start: every client connection, container log and monitor channel
/// is a descriptor, and the usual soft limit (1024) is reached by a few hundred idle
/// clients, after which accept() and every open fails. Containers inherit it, as they
/// inherit containerd's.
fn raise_open_file_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::info!(from = soft, to = hard, "raised the open-file limit"),
            Err(err) => {
                tracing::warn!("cannot raise the open-file limit from {soft} to {hard}: {err}")
            }
        },
        Ok(_) => {}
        Err(err) => tracing::warn!("reading the open-file limit: {err}"),
    }
}

/// The connection cap of one Docker API listener.
fn docker_limit(config: &Config) -> limit::ConnectionLimit {
    limit::ConnectionLimit::new(config.docker.max_connections, "[docker] max_connections")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_on_same_root_is_refused_with_pid() {
        let dir = tempfile::tempdir().unwrap();
        let first = RootLock::acquire(dir.path()).unwrap();
        let err = RootLock::acquire(dir.path()).err().unwrap().to_string();
        assert!(err.contains("already running"), "{err}");
        assert!(err.contains(&std::process::id().to_string()), "{err}");
        drop(first);
        RootLock::acquire(dir.path()).unwrap();
    }

    #[test]
    fn socket_is_root_only_and_replaces_a_stale_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/cri.sock");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        // A stale socket from a killed daemon: bound once, nobody listening.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let socket = ServedSocket::bind(&path, "cri.socket", 0).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, SOCKET_MODE);
        assert_eq!((meta.uid(), meta.gid()), (0, 0));
        // Someone is listening now: a second bind is refused and the socket kept.
        let err = ServedSocket::bind(&path, "cri.socket", 0).err().unwrap();
        assert!(matches!(err, DaemonError::SocketInUse { .. }), "{err}");
        assert!(path.exists());
        socket.remove();
        assert!(!path.exists());
    }

    #[test]
    fn remove_leaves_a_socket_that_is_not_ours() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cri.sock");
        let socket = ServedSocket::bind(&path, "cri.socket", 0).unwrap();
        std::fs::remove_file(&path).unwrap();
        let _other = std::os::unix::net::UnixListener::bind(&path).unwrap();
        socket.remove();
        assert!(
            path.exists(),
            "another process's socket must survive our shutdown"
        );
    }

    #[test]
    fn a_file_where_a_directory_belongs_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("root");
        std::fs::write(&file, b"").unwrap();
        let err = create_dir(&file, 0o711).unwrap_err().to_string();
        assert!(err.contains(&file.display().to_string()) && err.contains("not a directory"));
    }
}
