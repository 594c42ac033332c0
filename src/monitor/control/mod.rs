//! The monitor control channel: how wharfd talks to a running container's monitor to
//! attach to its stdio, feed its stdin, resize its terminal and signal it. CRI
//! Attach/Exec and Docker attach / `docker run -it` stand on it.
//!
//! # Transport
//!
//! A UNIX stream socket per container, served by the monitor itself (the watcher, in
//! its existing poll loop: no thread, no process): `<bundle>/control/monitor.sock`, the
//! directory 0700 and the socket 0600, both owned by root, and the monitor accepts only
//! peers with its own uid (`SO_PEERCRED`). It is no abstract socket: those are open to
//! every process of the network namespace. A bundle path can be longer than `sun_path`
//! (108 bytes) under a deep state dir, so both ends go through a directory fd:
//! `/proc/self/fd/<dirfd>/monitor.sock` always fits ([`short_path`]). The socket
//! belongs to the monitor, so a restarted wharfd just connects again.
//!
//! # Protocol (`proto/monitor_control.proto`, prost)
//!
//! Frames: a 4-byte big-endian length, then one protobuf message ([`frame`]), at most
//! [`frame::MAX_FRAME`] bytes. The client sends `Request`s, the monitor `Event`s:
//!
//! ```text
//! client                                   monitor
//! Request{hello: {min_version, max_version}} ->
//!                                          <- Event{hello: {version, stdin, tty, ...}}
//!                                             (or Reply{UNSUPPORTED_VERSION}, close)
//! Request{id, attach: {stdin, stdout, stderr}} ->
//!                                          <- Event{reply: {id, code, message}}
//! Request{input: bytes} ...   (no reply)   <- Event{output: {stream, data}} ...
//! Request{input_end}          (no reply)
//! Request{id, resize | signal | close_stdin} -> <- Event{reply: {id, code}}
//!                                          <- Event{exit: {exit_code, signal}}, close
//! ```
//!
//! Versioned: the client offers a range, the monitor picks the highest version both
//! speak or refuses with `UNSUPPORTED_VERSION` naming its own range, so a wharfd after
//! an upgrade can talk to monitors started before it, or refuse clearly. Fields are
//! only ever added; protobuf skips fields a peer does not know.
//!
//! Why protobuf and not framed JSON: stdin and output are bytes (JSON would need base64
//! and a third more bytes on every chunk), prost is already a dependency (tonic), and
//! the schema sits in `proto/` where other tools can read it.
//!
//! # Semantics
//!
//! - **stdin**: a container created with `stdin` gets a pipe whose write end the
//!   monitor holds, so its stdin stays open while nobody is attached. Input from every
//!   client attached with stdin goes in, in arrival order, through a bounded buffer
//!   ([`server::STDIN_BUFFER`]); a client is not read while the buffer is full.
//!   `CloseStdin` closes it (after what was sent); with `stdin_once` the first
//!   client attached with stdin that ends its input or disconnects closes it, as CRI
//!   and Docker do. Without `stdin`, the container's stdin is /dev/null and an attach
//!   asking for stdin is refused (`INVALID_ARGUMENT`).
//! - **TTY**: with `tty` the monitor has the runtime send it the PTY master (the
//!   runtime's console socket, [`console`]) and holds it: what the container writes
//!   goes to the CRI log as `stdout` and to attached readers, input goes into the
//!   master, `Resize` sets its window size. Closing stdin on a TTY writes the
//!   terminal's EOF character (VEOF, ^D): closing the master would hang the terminal
//!   up. An attach asking for stderr with a TTY is refused.
//! - **Several readers**: output is written to the CRI log first, as without the
//!   channel, then copied to each attached client's queue. A client whose queue passes
//!   [`server::CLIENT_BUFFER`] is disconnected: a slow reader never stalls the container
//!   or the log.
//! - **Exit**: once the init exited and its output is drained, every client past hello
//!   gets `Exit` and the connection is closed; the socket file is removed.
//! - **Exec** (version 2, [`exec`]): a connection that sends `Exec` runs a process in
//!   the container through the OCI runtime's `exec --detach` and carries that
//!   process's stdio, resize, signals and exit instead of the container's. Its output
//!   is not logged (as with every runtime) and is read only while the client keeps up.
//!   When the process exits, what it wrote is relayed for at most
//!   [`exec::EXEC_DRAIN`] (a background child holding the pipes cannot hold the
//!   session), then `Exit` and the close. A client that goes first gets its process
//!   killed (its process group) and reaped: nothing is left orphaned, also when the
//!   daemon itself is killed.

pub mod console;
pub mod exec;
pub mod frame;
pub mod server;

use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};

/// The generated protocol types (`proto/monitor_control.proto`).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/wharf.monitor.control.v1.rs"));
}

/// The protocol versions this build speaks.
pub const MIN_VERSION: u32 = 1;
/// Version 2 added exec sessions.
pub const MAX_VERSION: u32 = 2;

/// The directory in the bundle that holds the sockets (0700).
pub const CONTROL_DIR: &str = "control";
/// The control socket's name in [`CONTROL_DIR`].
pub const SOCKET_NAME: &str = "monitor.sock";
/// The console socket the runtime sends the PTY master to, during create only.
pub const CONSOLE_SOCKET_NAME: &str = "console.sock";

/// `<bundle>/control`.
pub fn control_dir(bundle: &Path) -> PathBuf {
    bundle.join(CONTROL_DIR)
}

/// `/proc/self/fd/<dir>/<name>`: a path to `name` in the directory open as `dir` that
/// fits in `sun_path` however long the directory's own path is.
pub fn short_path(dir: BorrowedFd<'_>, name: &str) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}/{name}", dir.as_raw_fd()))
}

/// Opens `dir` as an O_PATH directory fd, for [`short_path`].
pub fn open_dir(dir: &Path) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_PATH | nix::libc::O_DIRECTORY)
        .open(dir)?;
    Ok(file.into())
}
