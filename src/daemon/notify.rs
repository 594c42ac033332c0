//! systemd's readiness protocol (`sd_notify(3)`), for `Type=notify` units
//! (deploy/systemd/wharfd.service): `READY=1` once both API sockets accept, so
//! `systemctl start wharfd` returns, and units ordered after wharfd (kubelet) start,
//! only when wharfd serves; `STOPPING=1` when a shutdown begins. A datagram of
//! `KEY=VALUE` lines to the socket systemd names in `$NOTIFY_SOCKET`: a path, or an
//! abstract address written with a leading `@`.

use std::ffi::OsString;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// The variable systemd sets for a `Type=notify` service.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Where readiness is reported.
#[derive(Debug)]
pub struct Notifier {
    address: SocketAddr,
    /// As `$NOTIFY_SOCKET` read, for messages.
    name: String,
}

impl Notifier {
    /// Takes `$NOTIFY_SOCKET` out of the environment, so the monitors and containers
    /// wharfd starts do not inherit it (only the main process may notify: systemd's
    /// `NotifyAccess=main`). None without it; a value that is no socket address is
    /// reported on stderr and ignored (wharfd still starts). Call it before any other
    /// thread exists: it changes the process environment.
    pub fn take_from_env() -> Option<Notifier> {
        let value = std::env::var_os(NOTIFY_SOCKET)?;
        std::env::remove_var(NOTIFY_SOCKET);
        match Notifier::parse(&value) {
            Ok(notifier) => Some(notifier),
            Err(err) => {
                eprintln!("wharfd: ignoring {NOTIFY_SOCKET}={value:?}: {err}");
                None
            }
        }
    }

    /// A notifier for `value`, as `$NOTIFY_SOCKET` gives it.
    pub fn parse(value: &OsString) -> std::io::Result<Notifier> {
        let bytes = value.as_bytes();
        let address = match bytes.split_first() {
            None => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "empty socket address",
                ))
            }
            Some((b'@', name)) => SocketAddr::from_abstract_name(name)?,
            Some((b'/', _)) => SocketAddr::from_pathname(value)?,
            Some(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "neither an absolute path nor an abstract address (@name)",
                ))
            }
        };
        Ok(Notifier {
            address,
            name: value.to_string_lossy().into_owned(),
        })
    }

    /// Sends `state` (`KEY=VALUE` lines, e.g. `READY=1`).
    pub fn notify(&self, state: &str) -> std::io::Result<()> {
        let socket = UnixDatagram::unbound()?;
        let sent = socket.send_to_addr(state.as_bytes(), &self.address)?;
        if sent != state.len() {
            return Err(std::io::Error::other(format!(
                "sent {sent} of {} bytes",
                state.len()
            )));
        }
        Ok(())
    }

    /// Sends `state`, logging (not failing) when systemd cannot be told: the daemon
    /// serves either way, and systemd's start timeout reports a missed `READY=1`.
    pub fn notify_or_warn(&self, state: &str) {
        match self.notify(state) {
            Ok(()) => tracing::debug!(socket = %self.name, state, "told systemd"),
            Err(err) => tracing::warn!(
                socket = %self.name,
                state,
                error = %err,
                "cannot tell systemd ({NOTIFY_SOCKET})"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier::parse(&path.clone().into_os_string()).unwrap();
        notifier.notify("READY=1\nSTATUS=serving").unwrap();
        let mut buf = [0u8; 64];
        let len = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=serving");
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        let name = format!("wharf-notify-test-{}", std::process::id());
        let listener =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        let notifier = Notifier::parse(&OsString::from(format!("@{name}"))).unwrap();
        notifier.notify("STOPPING=1").unwrap();
        let mut buf = [0u8; 64];
        let len = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"STOPPING=1");
    }

    #[test]
    fn a_relative_or_empty_address_is_refused() {
        for value in ["", "run/notify"] {
            let err = Notifier::parse(&OsString::from(value)).unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{value:?}");
        }
    }

    #[test]
    fn a_missing_socket_is_an_error_to_report() {
        let dir = tempfile::tempdir().unwrap();
        let notifier = Notifier::parse(&dir.path().join("gone").into_os_string()).unwrap();
        assert!(notifier.notify("READY=1").is_err());
    }
}
