//! The monitor's side of the control channel (see [`super`] for the protocol): the
//! listening socket, the connected clients and the container's stdin, all driven by
//! the watcher's poll loop ([`crate::monitor::watch`]). Nothing here blocks: sockets
//! and the stdin pipe are non-blocking, and every buffer is bounded.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{accept4, getsockopt, recv, send, sockopt, MsgFlags, SockFlag};
use nix::unistd::Pid;

use super::exec::{self, ExecFd, ExecProcess, ExecState};
use super::frame;
use super::proto::{self, event, request, Code, Event, Request};

/// Input for the container's stdin kept while it does not read; clients attached with
/// stdin are not read while this much is waiting.
pub const STDIN_BUFFER: usize = 64 * 1024;
/// Output queued for one client; a client that falls further behind is disconnected.
pub const CLIENT_BUFFER: usize = 1024 * 1024;
/// Connections served at once; more are closed as they come.
pub const MAX_CLIENTS: usize = 64;
/// How long the monitor, exiting, still tries to deliver `Exit` and queued output.
const FINISH_TIMEOUT: Duration = Duration::from_secs(1);

/// How the container's stdin was set up at create.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StdinMode {
    /// The container asked for stdin (CRI `stdin`).
    pub enabled: bool,
    /// Closed when the first client attached with stdin ends (CRI `stdin_once`).
    pub once: bool,
}

impl StdinMode {
    /// `none`, `open` or `once` (the watcher's `--stdin`).
    pub fn name(self) -> &'static str {
        match (self.enabled, self.once) {
            (false, _) => "none",
            (true, false) => "open",
            (true, true) => "once",
        }
    }

    pub fn parse(name: &str) -> Option<StdinMode> {
        match name {
            "none" => Some(StdinMode::default()),
            "open" => Some(StdinMode {
                enabled: true,
                once: false,
            }),
            "once" => Some(StdinMode {
                enabled: true,
                once: true,
            }),
            _ => None,
        }
    }
}

/// The container's stdin as the monitor feeds it: the write end of its stdin pipe, or
/// (with a TTY) the PTY master, which the monitor owns beside it.
#[derive(Debug)]
pub struct Input {
    pub mode: StdinMode,
    pub tty: bool,
    pipe: Option<OwnedFd>,
    /// Input is still accepted (not closed, the container not gone).
    open: bool,
    /// Close the pipe once `pending` is written.
    closing: bool,
    pending: Vec<u8>,
}

impl Input {
    /// `pipe` is the write end of the stdin pipe (None with a TTY or without stdin).
    pub fn new(mode: StdinMode, tty: bool, pipe: Option<OwnedFd>) -> Input {
        Input {
            mode,
            tty,
            open: mode.enabled && (tty || pipe.is_some()),
            pipe,
            closing: false,
            pending: Vec::new(),
        }
    }

    pub fn pipe(&self) -> Option<&OwnedFd> {
        self.pipe.as_ref()
    }

    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Input is waiting to be written.
    pub fn wants_write(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Clients attached with stdin are not read until this clears.
    pub fn is_full(&self) -> bool {
        self.pending.len() >= STDIN_BUFFER
    }

    /// The data for the container's stdin, written on the next [`Input::flush`];
    /// dropped once stdin is closed (as Docker drops it).
    fn push(&mut self, data: &[u8]) {
        if self.open {
            self.pending.extend_from_slice(data);
        }
    }

    /// Closes the container's stdin after what is pending: the pipe's write end, or on
    /// a TTY the terminal's EOF character (closing the master would hang it up).
    pub fn close(&mut self, pty: Option<BorrowedFd<'_>>) {
        if !self.open {
            return;
        }
        self.open = false;
        if self.tty {
            self.pending.push(pty.map_or(4, veof));
        } else {
            self.closing = true;
            if self.pending.is_empty() {
                self.pipe = None;
            }
        }
    }

    /// Writes what it can of the pending input (non-blocking).
    pub fn flush(&mut self, pty: Option<BorrowedFd<'_>>) {
        while !self.pending.is_empty() {
            let fd = if self.tty {
                pty
            } else {
                self.pipe.as_ref().map(AsFd::as_fd)
            };
            let Some(fd) = fd else {
                self.pending.clear();
                break;
            };
            match nix::unistd::write(fd, &self.pending) {
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => break,
                // EPIPE: nobody reads the container's stdin any more; EIO: the
                // terminal is gone.
                Err(_) => {
                    self.container_gone();
                    break;
                }
            }
        }
        if self.pending.is_empty() && self.closing {
            self.pipe = None;
        }
    }

    /// The container's init exited: nothing will read stdin again.
    pub fn container_gone(&mut self) {
        self.pending = Vec::new();
        self.pipe = None;
        self.open = false;
    }
}

/// The terminal's EOF character (VEOF), ^D when it cannot be read.
fn veof(pty: BorrowedFd<'_>) -> u8 {
    // SAFETY: termios is plain data that tcgetattr fills in.
    let mut termios: nix::libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: a valid fd and a valid pointer to a termios.
    if unsafe { nix::libc::tcgetattr(pty.as_raw_fd(), &mut termios) } == 0 {
        let c = termios.c_cc[nix::libc::VEOF];
        if c != 0 {
            return c;
        }
    }
    4
}

/// Sets the window size of the terminal whose master is `pty`.
pub(super) fn set_window_size(pty: BorrowedFd<'_>, width: u16, height: u16) -> std::io::Result<()> {
    let size = nix::libc::winsize {
        ws_row: height,
        ws_col: width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer.
    if unsafe { nix::libc::ioctl(pty.as_raw_fd(), nix::libc::TIOCSWINSZ, &size) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// What a request may touch in the monitor.
pub struct Context<'a> {
    pub container_id: &'a str,
    pub input: &'a mut Input,
    pub pty: Option<BorrowedFd<'a>>,
    pub init_pid: Pid,
    /// The init has not exited.
    pub running: bool,
    /// Where the container's output stands (told to a client as it attaches).
    pub output: Option<OutputPosition<'a>>,
}

/// The container's log file, and what each stream wrote since its last logged line
/// (the rest of a line the log has not got yet).
pub struct OutputPosition<'a> {
    pub log: BorrowedFd<'a>,
    pub stdout_pending: &'a [u8],
    pub stderr_pending: &'a [u8],
}

impl OutputPosition<'_> {
    /// The log's size now, and the pending bytes of the streams `attach` takes.
    fn for_attach(&self, attach: &proto::Attach) -> (Option<u64>, Vec<u8>, Vec<u8>) {
        let size = nix::sys::stat::fstat(self.log.as_raw_fd())
            .ok()
            .and_then(|stat| u64::try_from(stat.st_size).ok());
        // Pending text is below the log's line limit; a frame carries it only when it
        // fits with room to spare (else the client does without it).
        let pending = |wanted: bool, bytes: &[u8]| {
            if wanted && bytes.len() <= frame::MAX_DATA {
                bytes.to_vec()
            } else {
                Vec::new()
            }
        };
        (
            size,
            pending(attach.stdout, self.stdout_pending),
            pending(attach.stderr, self.stderr_pending),
        )
    }
}

/// One connection.
#[derive(Debug)]
struct Client {
    fd: OwnedFd,
    /// Received, not yet decoded.
    received: Vec<u8>,
    /// Frames not yet sent.
    queued: Vec<u8>,
    version: Option<u32>,
    attach: Option<proto::Attach>,
    /// The exec session this connection runs.
    exec: Option<Box<ExecProcess>>,
    /// This client's input ended (InputEnd, or its stdin attach ended otherwise).
    input_ended: bool,
    /// The peer will send nothing more.
    read_closed: bool,
    /// Close once `queued` is sent.
    closing: bool,
    /// Close now.
    gone: bool,
}

impl Client {
    fn new(fd: OwnedFd) -> Client {
        Client {
            fd,
            received: Vec::new(),
            queued: Vec::new(),
            version: None,
            attach: None,
            exec: None,
            input_ended: false,
            read_closed: false,
            closing: false,
            gone: false,
        }
    }

    fn has_stdin(&self) -> bool {
        self.attach.as_ref().is_some_and(|a| a.stdin)
    }

    /// Not read while its input waits: the container's stdin buffer, or its exec's.
    fn input_paused(&self, container_stdin_full: bool) -> bool {
        match &self.exec {
            Some(exec) => exec.input.is_full(),
            None => container_stdin_full && self.has_stdin(),
        }
    }

    /// An exec's output is read only while this client keeps up (backpressure on
    /// the process, as a pipe gives).
    fn takes_exec_output(&self) -> bool {
        !self.gone && self.queued.len() < CLIENT_BUFFER / 2
    }

    fn reply_exec(&mut self, id: u64, result: Result<i32, (Code, String)>) {
        let (code, message, pid) = match result {
            Ok(pid) => (Code::Ok, String::new(), pid),
            Err((code, message)) => (code, message, 0),
        };
        self.queue(&Event {
            kind: Some(event::Kind::Reply(proto::Reply {
                id,
                code: code as i32,
                message,
                pid,
                ..Default::default()
            })),
        });
    }

    fn wants(&self, stream: proto::Stream) -> bool {
        !self.gone
            && self.attach.as_ref().is_some_and(|a| match stream {
                proto::Stream::Stdout => a.stdout,
                proto::Stream::Stderr => a.stderr,
            })
    }

    fn queue(&mut self, event: &Event) {
        frame::encode(event, &mut self.queued);
    }

    fn reply(&mut self, id: u64, result: Result<(), (Code, String)>) {
        let (code, message) = match result {
            Ok(()) => (Code::Ok, String::new()),
            Err((code, message)) => (code, message),
        };
        self.queue(&Event {
            kind: Some(event::Kind::Reply(proto::Reply {
                id,
                code: code as i32,
                message,
                pid: 0,
                ..Default::default()
            })),
        });
    }

    /// Answers a request that breaks the protocol, and closes after the answer.
    fn protocol_error(&mut self, id: u64, message: String) {
        self.reply(id, Err((Code::ProtocolError, message)));
        self.closing = true;
    }

    /// Sends what is queued, as far as the socket takes it now.
    fn flush(&mut self) {
        while !self.queued.is_empty() && !self.gone {
            match send(
                self.fd.as_raw_fd(),
                &self.queued,
                MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(n) => {
                    self.queued.drain(..n);
                }
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => return,
                Err(_) => self.drop_now(),
            }
        }
        if self.queued.is_empty() && self.closing {
            self.drop_now();
        }
    }

    fn drop_now(&mut self) {
        self.gone = true;
        self.queued = Vec::new();
        self.received = Vec::new();
    }
}

/// The listening socket and its clients.
#[derive(Debug)]
pub struct Server {
    listener: OwnedFd,
    /// The socket file, removed when the monitor finishes.
    path: PathBuf,
    uid: u32,
    clients: Vec<Client>,
    /// Execs whose client went while the runtime was still starting them: their
    /// process is killed once the runtime says which it is.
    abandoned: Vec<ExecProcess>,
    /// Children reaped while an exec was starting that no one claimed yet: an exec'd
    /// process can exit before its runtime does (bounded).
    early_exits: Vec<(Pid, i32, Option<i32>)>,
    /// Names exec console sockets apart.
    exec_serial: u64,
}

/// Exits kept for execs still starting.
const MAX_EARLY_EXITS: usize = 256;

/// What to poll for: the listener, client `index`, or an fd of client `index`'s exec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Listener,
    Client(usize),
    Exec(usize, ExecFd),
}

impl Server {
    /// Serves `listener` (non-blocking, listening), whose socket file is `path`.
    pub fn new(listener: OwnedFd, path: PathBuf) -> Server {
        Server {
            listener,
            path,
            uid: nix::unistd::geteuid().as_raw(),
            clients: Vec::new(),
            abandoned: Vec::new(),
            early_exits: Vec::new(),
            exec_serial: 0,
        }
    }

    pub fn listener(&self) -> &OwnedFd {
        &self.listener
    }

    /// The fds to poll and what for. A client attached with stdin is not read while
    /// the stdin buffer is full; hang-ups are reported anyway.
    pub fn poll_fds(&self, stdin_full: bool) -> Vec<(BorrowedFd<'_>, PollFlags, Source)> {
        let mut fds = Vec::with_capacity(1 + self.clients.len());
        fds.push((self.listener.as_fd(), PollFlags::POLLIN, Source::Listener));
        for (index, client) in self.clients.iter().enumerate() {
            let mut flags = PollFlags::empty();
            let paused = client.input_paused(stdin_full);
            if !client.read_closed && !paused {
                flags |= PollFlags::POLLIN;
            }
            if !client.queued.is_empty() {
                flags |= PollFlags::POLLOUT;
            }
            fds.push((client.fd.as_fd(), flags, Source::Client(index)));
            if let Some(exec) = &client.exec {
                let reads = client.takes_exec_output();
                for (fd, which) in [
                    (&exec.stdout, ExecFd::Stdout),
                    (&exec.stderr, ExecFd::Stderr),
                    (&exec.pty, ExecFd::Pty),
                ] {
                    let Some(fd) = fd else { continue };
                    let mut flags = PollFlags::empty();
                    if reads {
                        flags |= PollFlags::POLLIN;
                    }
                    if which == ExecFd::Pty && exec.input.wants_write() {
                        flags |= PollFlags::POLLOUT;
                    }
                    fds.push((fd.as_fd(), flags, Source::Exec(index, which)));
                }
                if let Some(pipe) = exec.input.pipe() {
                    if exec.input.wants_write() {
                        let source = Source::Exec(index, ExecFd::StdinPipe);
                        fds.push((pipe.as_fd(), PollFlags::POLLOUT, source));
                    }
                }
            }
        }
        fds
    }

    /// Serves an fd of client `index`'s exec after poll reported `events` for it.
    pub fn exec_ready(
        &mut self,
        index: usize,
        which: ExecFd,
        events: PollFlags,
        buffer: &mut [u8],
    ) {
        let Some(client) = self.clients.get_mut(index) else {
            return;
        };
        if client.gone {
            return;
        }
        let queued = &mut client.queued;
        let Some(exec) = client.exec.as_deref_mut() else {
            return;
        };
        match which {
            ExecFd::StdinPipe => exec.input.flush(None),
            ExecFd::Pty if events.contains(PollFlags::POLLOUT) => {
                let pty = exec.pty.as_ref().map(AsFd::as_fd);
                exec.input.flush(pty);
            }
            _ => {}
        }
        if !events.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
            return;
        }
        let (slot, stream) = match which {
            ExecFd::Stdout => (&mut exec.stdout, proto::Stream::Stdout),
            ExecFd::Stderr => (&mut exec.stderr, proto::Stream::Stderr),
            ExecFd::Pty => (&mut exec.pty, proto::Stream::Stdout),
            ExecFd::StdinPipe => return,
        };
        // A few chunks at most per round, so one busy exec does not starve the rest.
        for _ in 0..4 {
            let Some(fd) = slot.as_ref() else { return };
            match exec::read_output(fd, buffer) {
                None => return,
                Some(0) => {
                    *slot = None;
                    if which == ExecFd::Pty {
                        exec.input.container_gone();
                    }
                    return;
                }
                Some(n) => {
                    for chunk in buffer[..n].chunks(frame::MAX_DATA) {
                        frame::encode(
                            &Event {
                                kind: Some(event::Kind::Output(proto::Output {
                                    stream: stream as i32,
                                    data: chunk.to_vec(),
                                })),
                            },
                            queued,
                        );
                    }
                }
            }
            if queued.len() >= CLIENT_BUFFER / 2 {
                break;
            }
        }
        client.flush();
    }

    /// Takes the pending connections; returns a note for the monitor's log, if any.
    pub fn accept(&mut self) -> Option<String> {
        loop {
            let fd = match accept4(
                self.listener.as_raw_fd(),
                SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            ) {
                // SAFETY: accept4 returned a new fd that nothing else owns.
                Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd) },
                Err(Errno::EINTR | Errno::ECONNABORTED) => continue,
                Err(Errno::EAGAIN) => return None,
                Err(errno) => return Some(format!("control socket: accept failed: {errno}")),
            };
            // The socket is root's and 0600 in a 0700 directory; refuse anyone else
            // all the same.
            let peer_uid = getsockopt(&fd, sockopt::PeerCredentials).map(|c| c.uid());
            if peer_uid != Ok(self.uid) {
                continue;
            }
            if self.clients.iter().filter(|c| !c.gone).count() >= MAX_CLIENTS {
                continue;
            }
            self.clients.push(Client::new(fd));
        }
    }

    /// Serves client `index` after poll reported `events` for it.
    pub fn client_ready(
        &mut self,
        index: usize,
        events: PollFlags,
        ctx: &mut Context<'_>,
        buffer: &mut [u8],
    ) {
        let Some(client) = self.clients.get_mut(index) else {
            return;
        };
        if client.gone {
            return;
        }
        if events.contains(PollFlags::POLLERR) || events.contains(PollFlags::POLLNVAL) {
            client.drop_now();
            return;
        }
        if events.intersects(PollFlags::POLLIN | PollFlags::POLLHUP) && !client.read_closed {
            self.read_client(index, ctx, buffer);
        }
        let Some(client) = self.clients.get_mut(index) else {
            return;
        };
        if events.contains(PollFlags::POLLHUP) {
            // Both directions are shut: nothing can be delivered any more.
            client.drop_now();
            return;
        }
        client.flush();
    }

    /// Reads what the client sent (one socket buffer at most) and serves each complete
    /// request.
    fn read_client(&mut self, index: usize, ctx: &mut Context<'_>, buffer: &mut [u8]) {
        loop {
            let client = &mut self.clients[index];
            if client.gone || client.closing || client.read_closed {
                return;
            }
            match recv(client.fd.as_raw_fd(), buffer, MsgFlags::MSG_DONTWAIT) {
                Ok(0) => {
                    client.read_closed = true;
                    // Without an attach that reads output, nothing is left to do; an
                    // exec session ends when its process does.
                    let reads = client.attach.as_ref().is_some_and(|a| a.stdout || a.stderr)
                        || client.exec.is_some();
                    if !reads {
                        client.drop_now();
                    }
                    self.end_input(index, ctx);
                    return;
                }
                Ok(n) => client.received.extend_from_slice(&buffer[..n]),
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => return,
                Err(_) => {
                    client.drop_now();
                    return;
                }
            }
            self.serve_received(index, ctx);
            if self.clients[index].input_paused(ctx.input.is_full()) {
                return;
            }
        }
    }

    fn serve_received(&mut self, index: usize, ctx: &mut Context<'_>) {
        let mut used = 0;
        loop {
            let client = &mut self.clients[index];
            if client.gone || client.closing {
                break;
            }
            match frame::decode::<Request>(&client.received[used..]) {
                Ok(Some((request, n))) => {
                    used += n;
                    self.serve(index, request, ctx);
                }
                Ok(None) => break,
                Err(err) => {
                    client.protocol_error(0, err.to_string());
                    break;
                }
            }
        }
        let client = &mut self.clients[index];
        if used > 0 && !client.gone {
            client.received.drain(..used.min(client.received.len()));
        }
    }

    fn serve(&mut self, index: usize, request: Request, ctx: &mut Context<'_>) {
        let client = &mut self.clients[index];
        let id = request.id;
        let kind = match (request.kind, client.version) {
            (Some(request::Kind::Hello(hello)), None) => {
                self.hello(index, id, hello, ctx);
                return;
            }
            (Some(request::Kind::Hello(_)), Some(_)) => {
                return client.protocol_error(id, "hello sent twice".into());
            }
            (_, None) => {
                return client.protocol_error(id, "the first request must be a hello".into());
            }
            (kind, Some(_)) => kind,
        };
        if client.exec.is_some() {
            return self.serve_exec(index, id, kind);
        }
        match kind {
            Some(request::Kind::Input(data)) => {
                if !client.has_stdin() || client.input_ended {
                    return client.protocol_error(
                        id,
                        "input sent without an attach with stdin, or after its end".into(),
                    );
                }
                ctx.input.push(&data);
            }
            Some(request::Kind::InputEnd(_)) => {
                if client.has_stdin() {
                    self.end_input(index, ctx);
                }
            }
            Some(request::Kind::Attach(attach)) => {
                let result = check_attach(&attach, client.attach.is_some(), ctx);
                if let Err(err) = result {
                    return client.reply(id, Err(err));
                }
                // Output from here on goes to this client: tell it where that is.
                let (log_offset, stdout_pending, stderr_pending) = ctx
                    .output
                    .as_ref()
                    .map(|output| output.for_attach(&attach))
                    .unwrap_or_default();
                client.attach = Some(attach);
                client.queue(&Event {
                    kind: Some(event::Kind::Reply(proto::Reply {
                        id,
                        code: Code::Ok as i32,
                        log_offset,
                        stdout_pending,
                        stderr_pending,
                        ..Default::default()
                    })),
                });
            }
            Some(request::Kind::Resize(size)) => {
                let result = resize(&size, ctx);
                client.reply(id, result);
            }
            Some(request::Kind::Signal(signal)) => {
                let result = send_signal(signal.signal, ctx);
                client.reply(id, result);
            }
            Some(request::Kind::CloseStdin(_)) => {
                let result = if ctx.input.mode.enabled {
                    ctx.input.close(ctx.pty);
                    Ok(())
                } else {
                    Err((
                        Code::InvalidArgument,
                        format!("container {} was created without stdin", ctx.container_id),
                    ))
                };
                client.reply(id, result);
            }
            Some(request::Kind::Exec(request)) => self.start_exec(index, id, &request, ctx),
            Some(request::Kind::Hello(_)) => {}
            // A newer client's request: its kind is a field this monitor skipped.
            None => client.reply(
                id,
                Err((
                    Code::InvalidArgument,
                    format!(
                        "request of a kind this monitor does not know (it speaks control \
                         protocol versions {}..={})",
                        super::MIN_VERSION,
                        super::MAX_VERSION
                    ),
                )),
            ),
        }
    }

    fn start_exec(&mut self, index: usize, id: u64, request: &proto::Exec, ctx: &Context<'_>) {
        let client = &mut self.clients[index];
        let refusal = if client.version.unwrap_or(0) < 2 {
            Some((
                Code::ProtocolError,
                "exec needs control protocol version 2".to_string(),
            ))
        } else if client.attach.is_some() {
            Some((
                Code::InvalidArgument,
                "this connection is attached to the container: exec on a connection of its \
                 own"
                .to_string(),
            ))
        } else if !ctx.running {
            Some((
                Code::FailedPrecondition,
                format!("container {} has exited", ctx.container_id),
            ))
        } else {
            None
        };
        if let Some((code, message)) = refusal {
            let protocol = code == Code::ProtocolError;
            client.reply(id, Err((code, message)));
            client.closing |= protocol;
            return;
        }
        let Some(control_dir) = self.path.parent() else {
            return client.reply(id, Err((Code::Internal, "no control directory".into())));
        };
        self.exec_serial += 1;
        match ExecProcess::spawn(request, id, ctx.container_id, control_dir, self.exec_serial) {
            // Answered once the runtime has exited.
            Ok(process) => client.exec = Some(Box::new(process)),
            Err(refusal) => client.reply(id, Err(refusal)),
        }
    }

    /// A request on an exec session: it acts on the exec'd process.
    fn serve_exec(&mut self, index: usize, id: u64, kind: Option<request::Kind>) {
        let client = &mut self.clients[index];
        let Some(exec) = client.exec.as_deref_mut() else {
            return;
        };
        let pid = match exec.state {
            ExecState::Running { pid } => Some(pid),
            _ => None,
        };
        match kind {
            Some(request::Kind::Input(data)) => {
                if !exec.input.mode.enabled || client.input_ended {
                    return client.protocol_error(
                        id,
                        "input sent to an exec without stdin, or after its end".into(),
                    );
                }
                exec.input.push(&data);
            }
            Some(request::Kind::InputEnd(_)) | Some(request::Kind::CloseStdin(_)) => {
                let pty = exec.pty.as_ref().map(AsFd::as_fd);
                exec.input.close(pty);
                client.input_ended = true;
                if let Some(request::Kind::CloseStdin(_)) = kind {
                    client.reply(id, Ok(()));
                }
            }
            Some(request::Kind::Resize(size)) => {
                let result = match exec.pty.as_ref() {
                    Some(pty) => resize_terminal(&size, pty.as_fd(), "the exec"),
                    None => Err((
                        Code::FailedPrecondition,
                        "the exec has no TTY to resize (or it has exited)".to_string(),
                    )),
                };
                client.reply(id, result);
            }
            Some(request::Kind::Signal(signal)) => {
                let result = match pid {
                    Some(pid) => signal_process(signal.signal, pid, "the exec'd process"),
                    None => Err((
                        Code::FailedPrecondition,
                        "the exec'd process is not running".to_string(),
                    )),
                };
                client.reply(id, result);
            }
            Some(request::Kind::Attach(_)) | Some(request::Kind::Exec(_)) => client.reply(
                id,
                Err((
                    Code::InvalidArgument,
                    "this connection runs an exec: attach or exec on a connection of its own"
                        .into(),
                )),
            ),
            Some(request::Kind::Hello(_)) => {}
            None => client.reply(
                id,
                Err((
                    Code::InvalidArgument,
                    "request of a kind this monitor does not know".into(),
                )),
            ),
        }
    }

    /// A child of the monitor was reaped (`exit_code` is 128 + signal when killed):
    /// an exec's runtime, or an exec'd process. Returns whether it was one of those.
    pub fn child_exited(
        &mut self,
        container_id: &str,
        pid: Pid,
        exit_code: i32,
        signal: Option<i32>,
    ) -> bool {
        for client in &mut self.clients {
            let Some(exec) = client.exec.as_deref_mut() else {
                continue;
            };
            match exec.state {
                ExecState::Starting { runtime } if runtime == pid => {
                    let started = exec.runtime_exited(container_id, exit_code);
                    let request_id = exec.request_id;
                    let early = started.as_ref().ok().and_then(|started| {
                        let at = self.early_exits.iter().position(|e| e.0 == *started)?;
                        Some(self.early_exits.swap_remove(at))
                    });
                    match &started {
                        Ok(_) => {
                            if let Some((_, code, signal)) = early {
                                exec.exited(code, signal);
                            }
                        }
                        Err(_) => exec.state = ExecState::Done,
                    }
                    client.closing |= started.is_err();
                    client.reply_exec(request_id, started.map(Pid::as_raw));
                    client.flush();
                    return true;
                }
                ExecState::Running { pid: process } if process == pid => {
                    exec.exited(exit_code, signal);
                    return true;
                }
                _ => {}
            }
        }
        if let Some(at) = self.abandoned.iter().position(
            |exec| matches!(exec.state, ExecState::Starting { runtime } if runtime == pid),
        ) {
            let mut exec = self.abandoned.swap_remove(at);
            if let Ok(process) = exec.runtime_exited(container_id, exit_code) {
                exec::kill_group(process);
            }
            return true;
        }
        let starting = self.clients.iter().any(|c| {
            c.exec
                .as_ref()
                .is_some_and(|e| matches!(e.state, ExecState::Starting { .. }))
        });
        if starting {
            if self.early_exits.len() >= MAX_EARLY_EXITS {
                self.early_exits.remove(0);
            }
            self.early_exits.push((pid, exit_code, signal));
        } else {
            self.early_exits.clear();
        }
        false
    }

    /// When the watcher must next call [`Server::tick`] (an exec draining its output).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.clients
            .iter()
            .filter_map(|c| match c.exec.as_deref()?.state {
                ExecState::Exited { deadline, .. } => Some(deadline),
                _ => None,
            })
            .min()
    }

    /// Ends the exec sessions whose process exited and whose output is drained (or
    /// whose drain time is up): the client gets `Exit`, then the connection closes.
    pub fn tick(&mut self) {
        let now = Instant::now();
        for client in &mut self.clients {
            let Some(exec) = client.exec.as_deref_mut() else {
                continue;
            };
            let ExecState::Exited {
                exit_code,
                signal,
                deadline,
            } = exec.state
            else {
                continue;
            };
            // Relay what is queued first: a client behind on output has it all before
            // the exit, unless the drain time is up.
            if exec.output_open() && now < deadline {
                continue;
            }
            exec.close_all();
            exec.state = ExecState::Done;
            client.queue(&Event {
                kind: Some(event::Kind::Exit(proto::Exit {
                    exit_code,
                    signal: signal.unwrap_or(0),
                })),
            });
            client.closing = true;
            client.flush();
        }
    }

    /// Whether an exec session is still running or draining.
    pub fn execs_active(&self) -> bool {
        self.clients.iter().any(|c| {
            c.exec
                .as_ref()
                .is_some_and(|e| !matches!(e.state, ExecState::Done))
        })
    }

    fn hello(&mut self, index: usize, id: u64, hello: proto::Hello, ctx: &Context<'_>) {
        let client = &mut self.clients[index];
        let version = hello.max_version.min(super::MAX_VERSION);
        if version < hello.min_version.max(super::MIN_VERSION) {
            client.reply(
                id,
                Err((
                    Code::UnsupportedVersion,
                    format!(
                        "this monitor speaks control protocol versions {}..={}, the client \
                         {}..={}",
                        super::MIN_VERSION,
                        super::MAX_VERSION,
                        hello.min_version,
                        hello.max_version
                    ),
                )),
            );
            client.closing = true;
            return;
        }
        client.version = Some(version);
        client.queue(&Event {
            kind: Some(event::Kind::Hello(proto::HelloReply {
                version,
                min_version: super::MIN_VERSION,
                max_version: super::MAX_VERSION,
                container_id: ctx.container_id.to_string(),
                stdin: ctx.input.mode.enabled,
                stdin_once: ctx.input.mode.once,
                tty: ctx.input.tty,
                stdin_open: ctx.input.is_open(),
                running: ctx.running,
            })),
        });
    }

    /// Client `index`'s input ended; with stdin_once that closes the container's stdin.
    fn end_input(&mut self, index: usize, ctx: &mut Context<'_>) {
        let client = &mut self.clients[index];
        if !client.has_stdin() || client.input_ended {
            return;
        }
        client.input_ended = true;
        if ctx.input.mode.once {
            ctx.input.close(ctx.pty);
        }
    }

    /// Sends `data` the container wrote on `stream` to every client attached to it. A
    /// client that has more than [`CLIENT_BUFFER`] queued is disconnected; returns how
    /// many were.
    pub fn broadcast(&mut self, stream: proto::Stream, data: &[u8]) -> usize {
        if !self.clients.iter().any(|c| c.wants(stream)) {
            return 0;
        }
        let mut encoded = Vec::with_capacity(data.len() + 16);
        for chunk in data.chunks(frame::MAX_DATA) {
            frame::encode(
                &Event {
                    kind: Some(event::Kind::Output(proto::Output {
                        stream: stream as i32,
                        data: chunk.to_vec(),
                    })),
                },
                &mut encoded,
            );
        }
        let mut dropped = 0;
        for client in self.clients.iter_mut().filter(|c| c.wants(stream)) {
            if client.queued.len() + encoded.len() > CLIENT_BUFFER {
                client.drop_now();
                dropped += 1;
                continue;
            }
            client.queued.extend_from_slice(&encoded);
            client.flush();
        }
        dropped
    }

    /// Forgets closed clients; a client attached with stdin that goes without ending
    /// its input ends it now (stdin_once).
    pub fn reap(&mut self, ctx: &mut Context<'_>) {
        for index in 0..self.clients.len() {
            if self.clients[index].gone {
                self.end_input(index, ctx);
                // An exec that outlives its client is killed (and reaped as any child).
                if let Some(mut exec) = self.clients[index].exec.take() {
                    if exec.abandon().is_some() {
                        self.abandoned.push(*exec);
                    }
                }
            }
        }
        self.clients.retain(|c| !c.gone);
    }

    /// The container has exited and its output is drained: every client past hello gets
    /// `Exit`, then what is queued is delivered for at most a second, and the socket
    /// file goes.
    pub fn finish(mut self, exit_code: i32, signal: Option<i32>) {
        let _ = std::fs::remove_file(&self.path);
        drop(self.listener);
        let exit = Event {
            kind: Some(event::Kind::Exit(proto::Exit {
                exit_code,
                signal: signal.unwrap_or(0),
            })),
        };
        for client in self.clients.iter_mut().filter(|c| !c.gone) {
            match client.exec.as_deref_mut() {
                // A session that has had its own exit is closing already.
                Some(exec) if exec.state == ExecState::Done => {}
                Some(exec) => {
                    let (exit_code, signal) = match exec.state {
                        ExecState::Exited {
                            exit_code, signal, ..
                        } => (exit_code, signal.unwrap_or(0)),
                        // Killed with the container's end.
                        _ => (128 + nix::libc::SIGKILL, nix::libc::SIGKILL),
                    };
                    exec.abandon();
                    client.queue(&Event {
                        kind: Some(event::Kind::Exit(proto::Exit { exit_code, signal })),
                    });
                }
                None if client.version.is_some() => client.queue(&exit),
                None => {}
            }
            client.closing = true;
            client.flush();
        }
        let deadline = Instant::now() + FINISH_TIMEOUT;
        loop {
            self.clients.retain(|c| !c.gone);
            let left = deadline.saturating_duration_since(Instant::now());
            if self.clients.is_empty() || left.is_zero() {
                return;
            }
            let mut fds: Vec<PollFd<'_>> = self
                .clients
                .iter()
                .map(|c| PollFd::new(c.fd.as_fd(), PollFlags::POLLOUT))
                .collect();
            let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
            if let Err(errno) = poll(&mut fds, timeout) {
                if errno != Errno::EINTR {
                    return;
                }
            }
            drop(fds);
            for client in &mut self.clients {
                client.flush();
            }
        }
    }
}

fn check_attach(
    attach: &proto::Attach,
    attached: bool,
    ctx: &Context<'_>,
) -> Result<(), (Code, String)> {
    let id = ctx.container_id;
    let invalid = |message: String| Err((Code::InvalidArgument, message));
    if attached {
        return invalid("this connection is already attached".into());
    }
    if !(attach.stdin || attach.stdout || attach.stderr) {
        return invalid("an attach must ask for stdin, stdout or stderr".into());
    }
    if attach.stdin && !ctx.input.mode.enabled {
        return invalid(format!(
            "container {id} was created without stdin: attach without stdin"
        ));
    }
    if attach.stderr && ctx.input.tty {
        return invalid(format!(
            "container {id} has a TTY, whose output is all on stdout: attach without stderr"
        ));
    }
    if !ctx.running {
        return Err((
            Code::FailedPrecondition,
            format!("container {id} has exited"),
        ));
    }
    if attach.stdin && !ctx.input.is_open() {
        return Err((
            Code::FailedPrecondition,
            format!("the stdin of container {id} is closed"),
        ));
    }
    Ok(())
}

fn resize(size: &proto::Resize, ctx: &Context<'_>) -> Result<(), (Code, String)> {
    let Some(pty) = ctx.pty else {
        return Err((
            Code::FailedPrecondition,
            format!("container {} has no TTY to resize", ctx.container_id),
        ));
    };
    resize_terminal(size, pty, &format!("container {}", ctx.container_id))
}

/// Sets the size of the terminal `pty` of `what`.
fn resize_terminal(
    size: &proto::Resize,
    pty: BorrowedFd<'_>,
    what: &str,
) -> Result<(), (Code, String)> {
    let (Ok(width), Ok(height)) = (u16::try_from(size.width), u16::try_from(size.height)) else {
        return Err((
            Code::InvalidArgument,
            format!("terminal size {}x{} is over 65535", size.width, size.height),
        ));
    };
    if width == 0 || height == 0 {
        return Err((
            Code::InvalidArgument,
            format!("terminal size {width}x{height} has a zero side"),
        ));
    }
    set_window_size(pty, width, height).map_err(|err| {
        (
            Code::Internal,
            format!("TIOCSWINSZ on the terminal of {what}: {err}"),
        )
    })
}

fn send_signal(signal: i32, ctx: &Context<'_>) -> Result<(), (Code, String)> {
    if !ctx.running {
        check_signal(signal)?;
        return Err((
            Code::FailedPrecondition,
            format!("container {} has exited", ctx.container_id),
        ));
    }
    // The init is this process's child and not reaped yet (running), so its pid is
    // still its own.
    signal_process(
        signal,
        ctx.init_pid,
        &format!("container {}", ctx.container_id),
    )
}

fn check_signal(signal: i32) -> Result<(), (Code, String)> {
    if !(1..=nix::libc::SIGRTMAX()).contains(&signal) {
        return Err((
            Code::InvalidArgument,
            format!("{signal} is not a signal number"),
        ));
    }
    Ok(())
}

/// Sends `signal` to `pid`, a child of the monitor not yet reaped (so its own pid).
fn signal_process(signal: i32, pid: Pid, what: &str) -> Result<(), (Code, String)> {
    check_signal(signal)?;
    // SAFETY: plain syscall.
    if unsafe { nix::libc::kill(pid.as_raw(), signal) } < 0 {
        let err = std::io::Error::last_os_error();
        return Err((Code::Internal, format!("signal {signal} to {what}: {err}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdin_modes_round_trip() {
        for mode in [
            StdinMode::default(),
            StdinMode {
                enabled: true,
                once: false,
            },
            StdinMode {
                enabled: true,
                once: true,
            },
        ] {
            assert_eq!(StdinMode::parse(mode.name()), Some(mode));
        }
        assert_eq!(StdinMode::parse("sometimes"), None);
    }

    #[test]
    fn input_is_written_then_the_pipe_closed() {
        let (read, write) = nix::unistd::pipe().expect("pipe");
        let mut input = Input::new(
            StdinMode {
                enabled: true,
                once: true,
            },
            false,
            Some(write),
        );
        assert!(input.is_open());
        input.push(b"hello\n");
        input.close(None);
        assert!(!input.is_open());
        assert!(
            input.pipe().is_some(),
            "closed only after the pending input"
        );
        input.push(b"dropped");
        input.flush(None);
        assert!(input.pipe().is_none());
        let mut all = Vec::new();
        let mut chunk = [0u8; 64];
        loop {
            match nix::unistd::read(read.as_raw_fd(), &mut chunk) {
                Ok(0) => break,
                Ok(n) => all.extend_from_slice(&chunk[..n]),
                Err(errno) => panic!("read: {errno}"),
            }
        }
        assert_eq!(all, b"hello\n", "then EOF");
    }

    #[test]
    fn a_reader_that_left_closes_stdin() {
        let (read, write) = nix::unistd::pipe().expect("pipe");
        let mut input = Input::new(
            StdinMode {
                enabled: true,
                once: false,
            },
            false,
            Some(write),
        );
        drop(read);
        input.push(b"nobody reads this");
        input.flush(None);
        assert!(!input.is_open());
        assert!(!input.wants_write());
    }

    /// A server on a socket in a temporary bundle, and a connected client.
    fn serve() -> (tempfile::TempDir, Server, std::os::unix::net::UnixStream) {
        let bundle = tempfile::tempdir().expect("tempdir");
        let (dir, dir_fd) = super::super::console::prepare_dir(bundle.path()).expect("dir");
        let listener = super::super::console::listen_in(&dir_fd, super::super::SOCKET_NAME, 4)
            .expect("listen");
        let mut server = Server::new(listener, dir.join(super::super::SOCKET_NAME));
        let client = std::os::unix::net::UnixStream::connect(dir.join(super::super::SOCKET_NAME))
            .expect("connect");
        client
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        assert_eq!(server.accept(), None);
        assert_eq!(server.clients.len(), 1);
        (bundle, server, client)
    }

    /// Sends `requests`, lets the server serve them, and returns what came back, and
    /// whether the server closed the connection.
    fn exchange(
        server: &mut Server,
        client: &mut std::os::unix::net::UnixStream,
        requests: &[Request],
    ) -> (Vec<Event>, bool) {
        use std::io::{Read, Write};
        let mut bytes = Vec::new();
        for request in requests {
            frame::encode(request, &mut bytes);
        }
        client.write_all(&bytes).expect("send");
        let mut input = Input::new(StdinMode::default(), false, None);
        let mut ctx = Context {
            container_id: "c1",
            input: &mut input,
            pty: None,
            init_pid: Pid::from_raw(i32::MAX),
            running: true,
            output: None,
        };
        let mut buffer = vec![0u8; 4096];
        server.client_ready(0, PollFlags::POLLIN, &mut ctx, &mut buffer);
        server.reap(&mut ctx);
        let mut received = Vec::new();
        let mut chunk = [0u8; 4096];
        let closed = loop {
            match client.read(&mut chunk) {
                Ok(0) => break true,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
                Err(_) => break false,
            }
        };
        let mut events = Vec::new();
        let mut used = 0;
        while let Some((event, n)) = frame::decode::<Event>(&received[used..]).expect("frame") {
            events.push(event);
            used += n;
        }
        assert_eq!(used, received.len(), "half a frame");
        (events, closed)
    }

    fn hello(min_version: u32, max_version: u32) -> Request {
        Request {
            id: 0,
            kind: Some(request::Kind::Hello(proto::Hello {
                min_version,
                max_version,
            })),
        }
    }

    fn reply_of(event: &Event) -> (u64, Code, &str) {
        match &event.kind {
            Some(event::Kind::Reply(reply)) => (
                reply.id,
                Code::try_from(reply.code).expect("code"),
                reply.message.as_str(),
            ),
            other => panic!("not a reply: {other:?}"),
        }
    }

    #[test]
    fn hello_picks_the_highest_common_version() {
        let (_bundle, mut server, mut client) = serve();
        let (events, closed) = exchange(&mut server, &mut client, &[hello(1, 7)]);
        assert!(!closed);
        let [Event {
            kind: Some(event::Kind::Hello(reply)),
        }] = events.as_slice()
        else {
            panic!("not a hello: {events:?}");
        };
        assert_eq!(reply.version, super::super::MAX_VERSION);
        assert_eq!(reply.container_id, "c1");
        assert!(reply.running && !reply.stdin && !reply.tty);
    }

    #[test]
    fn versions_without_overlap_are_refused_clearly() {
        let (_bundle, mut server, mut client) = serve();
        let future = super::super::MAX_VERSION + 1;
        let (events, closed) = exchange(&mut server, &mut client, &[hello(future, future + 2)]);
        assert_eq!(events.len(), 1, "{events:?}");
        let (_, code, message) = reply_of(&events[0]);
        assert_eq!(code, Code::UnsupportedVersion);
        assert!(message.contains("versions 1..=2"), "{message}");
        assert!(closed, "the connection is closed after the refusal");
    }

    #[test]
    fn hello_comes_first_and_once() {
        let (_bundle, mut server, mut client) = serve();
        let attach = Request {
            id: 3,
            kind: Some(request::Kind::Attach(proto::Attach {
                stdout: true,
                ..Default::default()
            })),
        };
        let (events, closed) = exchange(&mut server, &mut client, &[attach]);
        assert_eq!(reply_of(&events[0]).1, Code::ProtocolError);
        assert!(closed);

        let (_bundle, mut server, mut client) = serve();
        let (events, closed) = exchange(&mut server, &mut client, &[hello(1, 1), hello(1, 1)]);
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(reply_of(&events[1]).1, Code::ProtocolError);
        assert!(closed);
    }

    #[test]
    fn refusals_keep_the_connection() {
        let (_bundle, mut server, mut client) = serve();
        let request = |id, kind| Request {
            id,
            kind: Some(kind),
        };
        let (events, closed) = exchange(
            &mut server,
            &mut client,
            &[
                hello(1, 1),
                request(
                    1,
                    request::Kind::Attach(proto::Attach {
                        stdin: true,
                        stdout: true,
                        stderr: false,
                    }),
                ),
                request(
                    2,
                    request::Kind::Resize(proto::Resize {
                        width: 80,
                        height: 24,
                    }),
                ),
                request(3, request::Kind::Signal(proto::Signal { signal: 0 })),
                request(4, request::Kind::CloseStdin(proto::CloseStdin {})),
                // A newer client's request kind: decoded without one.
                Request { id: 5, kind: None },
                request(6, request::Kind::Attach(proto::Attach::default())),
                request(
                    7,
                    request::Kind::Attach(proto::Attach {
                        stdout: true,
                        ..Default::default()
                    }),
                ),
            ],
        );
        assert!(!closed);
        let replies: Vec<(u64, Code)> = events[1..]
            .iter()
            .map(|e| {
                let (id, code, _) = reply_of(e);
                (id, code)
            })
            .collect();
        assert_eq!(
            replies,
            [
                (1, Code::InvalidArgument),
                (2, Code::FailedPrecondition),
                (3, Code::InvalidArgument),
                (4, Code::InvalidArgument),
                (5, Code::InvalidArgument),
                (6, Code::InvalidArgument),
                (7, Code::Ok),
            ]
        );
        assert!(reply_of(&events[1]).2.contains("without stdin"));
        // Input without an attach with stdin breaks the protocol.
        let input = Request {
            id: 0,
            kind: Some(request::Kind::Input(b"x".to_vec())),
        };
        let (events, closed) = exchange(&mut server, &mut client, &[input]);
        assert_eq!(reply_of(&events[0]).1, Code::ProtocolError);
        assert!(closed);
    }

    #[test]
    fn no_stdin_accepts_nothing() {
        let mut input = Input::new(StdinMode::default(), false, None);
        assert!(!input.is_open());
        input.push(b"x");
        assert!(!input.wants_write());
    }
}
