//! The console socket: how a container created with a TTY hands its PTY master to the
//! monitor. runc, crun (`--console-socket PATH`) and libcontainer
//! (`with_console_socket`) connect to a UNIX socket and send the master with
//! SCM_RIGHTS while they create the container; the monitor listens before the create
//! and takes the fd after it.
//!
//! runc connects to the path as given, so it must fit in `sun_path`: the monitor gives
//! `/proc/<monitor pid>/fd/<dirfd>/console.sock`, which does whatever the bundle path.

use std::io::{self, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    accept4, bind, listen, recvmsg, socket, AddressFamily, Backlog, ControlMessageOwned, MsgFlags,
    SockFlag, SockType, UnixAddr,
};
use nix::sys::stat::Mode;

/// A listening UNIX socket at `<dir>/<name>`, created through `dir_fd` (so the path
/// fits in `sun_path`) with mode 0600.
pub fn listen_in(dir_fd: &OwnedFd, name: &str, backlog: i32) -> io::Result<OwnedFd> {
    let socket = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    let path = super::short_path(dir_fd.as_fd(), name);
    let address = UnixAddr::new(&path)?;
    // The socket file is created with the umask's mode: 0600 from the start.
    let old = nix::sys::stat::umask(Mode::from_bits_truncate(0o177));
    let bound = bind(socket.as_raw_fd(), &address);
    nix::sys::stat::umask(old);
    bound?;
    listen(&socket, Backlog::new(backlog).unwrap_or(Backlog::MAXCONN))?;
    Ok(socket)
}

/// Creates `<bundle>/control` (0700, emptied of stale sockets) and opens it as an
/// O_PATH fd.
pub fn prepare_dir(bundle: &Path) -> io::Result<(PathBuf, OwnedFd)> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let dir = super::control_dir(bundle);
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
            for name in [super::SOCKET_NAME, super::CONSOLE_SOCKET_NAME] {
                match std::fs::remove_file(dir.join(name)) {
                    Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
                    _ => {}
                }
            }
        }
        Err(err) => return Err(err),
    }
    let fd = super::open_dir(&dir)?;
    Ok((dir, fd))
}

/// The console socket of one create: listening before the runtime runs.
pub struct ConsoleSocket {
    listener: OwnedFd,
    /// What the runtime is given: through this process's fd table, short.
    path: PathBuf,
    file: PathBuf,
}

impl ConsoleSocket {
    /// Listens at `<dir>/console.sock`; `dir_fd` must stay open until [`Self::receive`].
    pub fn listen(dir: &Path, dir_fd: &OwnedFd) -> io::Result<ConsoleSocket> {
        Self::listen_named(dir, dir_fd, super::CONSOLE_SOCKET_NAME)
    }

    /// Listens at `<dir>/<name>` (an exec's console socket has a name of its own).
    pub fn listen_named(dir: &Path, dir_fd: &OwnedFd, name: &str) -> io::Result<ConsoleSocket> {
        let listener = listen_in(dir_fd, name, 1)?;
        let path = PathBuf::from(format!(
            "/proc/{}/fd/{}/{name}",
            std::process::id(),
            dir_fd.as_raw_fd(),
        ));
        Ok(ConsoleSocket {
            listener,
            path,
            file: dir.join(name),
        })
    }

    /// The path to give the runtime (`--console-socket`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Takes the PTY master the runtime sent (it has exited or is about to: the master
    /// is sent during create), waiting at most `timeout`. The master comes back
    /// non-blocking and close-on-exec.
    pub fn receive(self, timeout: Duration) -> io::Result<OwnedFd> {
        let deadline = Instant::now() + timeout;
        let connection = loop {
            match accept4(
                self.listener.as_raw_fd(),
                SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            ) {
                // SAFETY: accept4 returned a new fd that nothing else owns.
                Ok(fd) => break unsafe { OwnedFd::from_raw_fd(fd) },
                Err(Errno::EAGAIN | Errno::EINTR) => {}
                Err(errno) => return Err(errno.into()),
            }
            wait_readable(&self.listener, deadline, "the runtime never connected")?;
        };
        let master = loop {
            let mut name = [0u8; 256];
            let mut iov = [IoSliceMut::new(&mut name)];
            let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
            match recvmsg::<()>(
                connection.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(message) => {
                    let mut received = None;
                    for cmsg in message.cmsgs()? {
                        if let ControlMessageOwned::ScmRights(fds) = cmsg {
                            for fd in fds {
                                // SAFETY: the kernel installed this fd for us.
                                let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                                received.get_or_insert(fd);
                            }
                        }
                    }
                    match received {
                        Some(fd) => break fd,
                        None if message.bytes == 0 => {
                            return Err(io::Error::other(
                                "the runtime closed the console socket without sending the PTY",
                            ))
                        }
                        None => continue,
                    }
                }
                Err(Errno::EAGAIN | Errno::EINTR) => {
                    wait_readable(&connection, deadline, "the runtime sent no PTY master")?
                }
                Err(errno) => return Err(errno.into()),
            }
        };
        nix::fcntl::fcntl(
            master.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )?;
        Ok(master)
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.file);
    }
}

fn wait_readable(fd: &OwnedFd, deadline: Instant, what: &str) -> io::Result<()> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::Error::new(io::ErrorKind::TimedOut, what.to_string()));
    }
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    match poll(
        &mut fds,
        PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX),
    ) {
        Ok(_) | Err(Errno::EINTR) => Ok(()),
        Err(errno) => Err(errno.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{connect, sendmsg, ControlMessage};
    use std::io::IoSlice;

    /// A deep directory, far over sun_path: the console socket still works, and the fd
    /// sent arrives.
    #[test]
    fn receives_an_fd_through_a_long_path() {
        let root = tempfile::tempdir().expect("tempdir");
        let mut deep = root.path().to_path_buf();
        for _ in 0..6 {
            deep.push("a-directory-name-that-makes-the-path-long");
        }
        std::fs::create_dir_all(&deep).expect("mkdir");
        assert!(deep.as_os_str().len() > 200);
        let (dir, dir_fd) = prepare_dir(&deep).expect("control dir");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&dir).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let console = ConsoleSocket::listen(&dir, &dir_fd).expect("listen");
        let file_mode = std::fs::metadata(dir.join(super::super::CONSOLE_SOCKET_NAME))
            .expect("socket file")
            .permissions()
            .mode();
        assert_eq!(file_mode & 0o777, 0o600);
        assert!(console.path().as_os_str().len() < 108);

        let (sent_read, sent_write) = nix::unistd::pipe().expect("pipe");
        let client = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .expect("socket");
        connect(
            client.as_raw_fd(),
            &UnixAddr::new(console.path()).expect("addr"),
        )
        .expect("connect through /proc/<pid>/fd");
        let fds = [sent_write.as_raw_fd()];
        sendmsg::<UnixAddr>(
            client.as_raw_fd(),
            &[IoSlice::new(b"/dev/ptmx")],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .expect("sendmsg");
        drop(sent_write);
        let received = console.receive(Duration::from_secs(5)).expect("receive");
        nix::unistd::write(&received, b"x").expect("write through the received fd");
        let mut byte = [0u8; 1];
        assert_eq!(nix::unistd::read(sent_read.as_raw_fd(), &mut byte), Ok(1));
        assert_eq!(&byte, b"x");
        assert!(
            !dir.join(super::super::CONSOLE_SOCKET_NAME).exists(),
            "the console socket is removed once used"
        );
    }

    #[test]
    fn no_connection_times_out() {
        let root = tempfile::tempdir().expect("tempdir");
        let (dir, dir_fd) = prepare_dir(root.path()).expect("control dir");
        let console = ConsoleSocket::listen(&dir, &dir_fd).expect("listen");
        let err = console
            .receive(Duration::from_millis(50))
            .expect_err("nothing sent");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
