//! The daemon's side of the monitor control channel (the protocol and the monitor's
//! side are in [`crate::monitor::control`]): connect to a running container's monitor,
//! attach to its stdio, feed its stdin, resize its TTY, signal it.
//!
//! A [`Session`] is one connection. Its [`Control`] (cheap to clone, usable from
//! several tasks) sends requests; its [`Events`] yields what the container writes and
//! finally its exit. A reader task per session takes the monitor's frames off the
//! socket; when [`Events`] is not read, that task stops reading too and the monitor
//! disconnects the session once its queue for it is full (a slow reader never stalls
//! the container). Dropping every `Control` closes the connection (keep one while
//! reading events), which for a client attached with stdin ends its input (closing
//! the container's stdin with `stdin_once`).
//!
//! Nothing here depends on the daemon's state: a wharfd restarted after `kill -9`
//! connects to the monitors of the containers that kept running.

use std::collections::HashMap;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

use crate::error::{ErrorKind, HasKind};
use crate::monitor::control::proto::{self, event, request};
use crate::monitor::control::{self, frame};

use super::records::ContainerState;
use super::service::{Result, Runtime, RuntimeError};

/// How long the monitor may take to answer a request (hello included).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Output events read ahead of the consumer.
const EVENT_QUEUE: usize = 64;
/// Frames queued for the writer task; senders wait while it is full (stdin
/// backpressure: the monitor stops reading a client while the container's stdin
/// buffer is full).
const FRAME_QUEUE: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(
        "container {id}: no monitor serves a control channel at {}: the container is \
         not running, or its monitor was started by a wharf without the channel",
        path.display()
    )]
    NoChannel { id: String, path: PathBuf },
    #[error("container {id}: {step}: {source}")]
    Io {
        id: String,
        step: &'static str,
        source: io::Error,
    },
    #[error("container {id}: {step}: the monitor did not answer within {timeout:?}")]
    Timeout {
        id: String,
        step: &'static str,
        timeout: Duration,
    },
    #[error("container {id}: {step}: {message}")]
    Refused {
        id: String,
        step: &'static str,
        code: proto::Code,
        message: String,
    },
    #[error("container {id}: {step}: unexpected answer from the monitor: {message}")]
    Protocol {
        id: String,
        step: &'static str,
        message: String,
    },
    #[error("container {id}: {step}: the monitor closed the connection")]
    Closed { id: String, step: &'static str },
}

impl HasKind for ControlError {
    fn kind(&self) -> ErrorKind {
        match self {
            ControlError::NoChannel { .. } => ErrorKind::FailedPrecondition,
            ControlError::Timeout { .. } => ErrorKind::DeadlineExceeded,
            ControlError::Refused { code, .. } => match code {
                proto::Code::InvalidArgument => ErrorKind::InvalidArgument,
                proto::Code::FailedPrecondition
                | proto::Code::UnsupportedVersion
                | proto::Code::ExecFailed => ErrorKind::FailedPrecondition,
                proto::Code::Ok | proto::Code::ProtocolError | proto::Code::Internal => {
                    ErrorKind::Internal
                }
            },
            ControlError::Closed { .. } => ErrorKind::Unavailable,
            ControlError::Io { .. } | ControlError::Protocol { .. } => ErrorKind::Internal,
        }
    }
}

/// Which of the container's streams an attach takes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AttachStreams {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// An exec session's process: what it runs and which of its streams the client takes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecRequest {
    pub cmd: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
    /// The terminal's first size (width, height).
    pub size: Option<(u16, u16)>,
    /// `KEY=value` entries added to (or replacing those of) the container's env.
    pub env: Vec<String>,
    /// Another user than the container's (`uid[:gid]` or names, Docker's `--user`).
    pub user: String,
    /// Another working directory than the container's (absolute).
    pub working_dir: String,
}

/// Where a container's output stood when an attach took effect: what came before is
/// in its log up to `log_offset` bytes, and then in the `*_pending` bytes (the start of
/// a line the log does not have yet); what comes after arrives as [`Event`]s. So an
/// attach that shows the log first shows each byte once (Docker's `attach?logs=1`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttachPoint {
    /// The log file's size; None from a monitor that predates this (then the log's
    /// size when the attach was answered is the best guess).
    pub log_offset: Option<u64>,
    pub stdout_pending: Vec<u8>,
    pub stderr_pending: Vec<u8>,
}

/// What the monitor said of the container when the session began.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// The protocol version of this session.
    pub version: u32,
    pub stdin: bool,
    pub stdin_once: bool,
    pub tty: bool,
    pub stdin_open: bool,
    pub running: bool,
}

/// What the container does, as an attached session sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// The init exited (`exit_code` is 128 + signal when killed); the last event.
    Exit {
        exit_code: i32,
        signal: Option<i32>,
    },
}

/// Requests waiting for their reply, shared with the reader task.
#[derive(Default)]
struct Pending {
    waiting: HashMap<u64, oneshot::Sender<proto::Reply>>,
    closed: bool,
}

struct Inner {
    id: String,
    info: SessionInfo,
    /// Whole frames for the writer task: queueing one is cancel-safe, so a caller
    /// dropped half-way never leaves half a frame on the socket.
    frames: mpsc::Sender<Vec<u8>>,
    pending: Arc<Mutex<Pending>>,
    next_id: AtomicU64,
    /// An exec session's directory in the bundle, removed with the session.
    exec_dir: Mutex<Option<PathBuf>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let dir = self.exec_dir.get_mut().map(Option::take);
        if let Ok(Some(dir)) = dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Writes the session's frames in order. When every `Control` is gone (the queue
/// closes), it shuts the connection both ways, so the monitor and the reader task let
/// go of it at once (a write shutdown alone would leave an attached session open
/// until the container next wrote).
async fn write_frames(mut writer: OwnedWriteHalf, mut frames: mpsc::Receiver<Vec<u8>>) {
    while let Some(frame) = frames.recv().await {
        if writer.write_all(&frame).await.is_err() {
            break;
        }
    }
    use std::os::fd::AsRawFd;
    let fd = AsRef::<UnixStream>::as_ref(&writer).as_raw_fd();
    let _ = nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Both);
}

/// Sends requests on a session; clones share the connection.
#[derive(Clone)]
pub struct Control {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("container", &self.inner.id)
            .finish_non_exhaustive()
    }
}

/// The events of a session, in the order the monitor sent them.
pub struct Events {
    rx: mpsc::Receiver<std::result::Result<Event, ControlError>>,
}

/// One connection to a container's monitor.
pub struct Session {
    pub control: Control,
    pub events: Events,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("container", &self.control.inner.id)
            .field("info", &self.control.inner.info)
            .finish_non_exhaustive()
    }
}

impl Session {
    pub fn info(&self) -> &SessionInfo {
        self.control.info()
    }

    pub fn into_parts(self) -> (Control, Events) {
        (self.control, self.events)
    }
}

impl Events {
    /// The next event; None after `Exit`, or after an error that ended the session.
    pub async fn next(&mut self) -> Option<std::result::Result<Event, ControlError>> {
        self.rx.recv().await
    }
}

/// Connects to the monitor of container `id` whose bundle is `bundle`, and says hello.
pub async fn connect(bundle: &Path, id: &str) -> std::result::Result<Session, ControlError> {
    let dir = control::control_dir(bundle);
    let path = dir.join(control::SOCKET_NAME);
    let io_error = |step: &'static str| {
        let id = id.to_string();
        move |source: io::Error| ControlError::Io { id, step, source }
    };
    let no_channel = || ControlError::NoChannel {
        id: id.to_string(),
        path: path.clone(),
    };
    let gone = |err: &io::Error| {
        matches!(
            err.kind(),
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
        )
    };
    let mut stream = {
        let dir_fd = match control::open_dir(&dir) {
            Ok(fd) => fd,
            Err(err) if gone(&err) => return Err(no_channel()),
            Err(err) => return Err(io_error("opening the control directory")(err)),
        };
        // Through the directory fd: the bundle path may be longer than sun_path.
        let short = control::short_path(dir_fd.as_fd(), control::SOCKET_NAME);
        // A full accept backlog (a burst of sessions) answers EAGAIN: try again
        // shortly, for a while, as the monitor accepts in its loop.
        let mut attempts = 0;
        loop {
            match UnixStream::connect(&short).await {
                Ok(stream) => break stream,
                Err(err) if gone(&err) => return Err(no_channel()),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock && attempts < 100 => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(err) => return Err(io_error("connecting to its monitor")(err)),
            }
        }
    };
    let hello = proto::Request {
        id: 0,
        kind: Some(request::Kind::Hello(proto::Hello {
            min_version: control::MIN_VERSION,
            max_version: control::MAX_VERSION,
        })),
    };
    let mut buffer = Vec::new();
    frame::encode(&hello, &mut buffer);
    let step = "hello";
    let answer = tokio::time::timeout(REQUEST_TIMEOUT, async {
        stream.write_all(&buffer).await?;
        read_frame::<proto::Event, _>(&mut stream).await
    })
    .await
    .map_err(|_| ControlError::Timeout {
        id: id.to_string(),
        step,
        timeout: REQUEST_TIMEOUT,
    })?
    .map_err(io_error(step))?;
    let info = match answer.and_then(|event| event.kind) {
        Some(event::Kind::Hello(hello)) => SessionInfo {
            version: hello.version,
            stdin: hello.stdin,
            stdin_once: hello.stdin_once,
            tty: hello.tty,
            stdin_open: hello.stdin_open,
            running: hello.running,
        },
        Some(event::Kind::Reply(reply)) => return Err(refused(id, step, reply)),
        None => {
            return Err(ControlError::Closed {
                id: id.to_string(),
                step,
            })
        }
        Some(other) => {
            return Err(ControlError::Protocol {
                id: id.to_string(),
                step,
                message: format!("{other:?} instead of a hello"),
            })
        }
    };
    if !(control::MIN_VERSION..=control::MAX_VERSION).contains(&info.version) {
        return Err(ControlError::Protocol {
            id: id.to_string(),
            step,
            message: format!("the monitor chose protocol version {}", info.version),
        });
    }
    let (reader, writer) = stream.into_split();
    let pending = Arc::new(Mutex::new(Pending::default()));
    let (tx, rx) = mpsc::channel(EVENT_QUEUE);
    tokio::spawn(read_events(id.to_string(), reader, pending.clone(), tx));
    let (frames, queued) = mpsc::channel(FRAME_QUEUE);
    tokio::spawn(write_frames(writer, queued));
    Ok(Session {
        control: Control {
            inner: Arc::new(Inner {
                id: id.to_string(),
                info,
                frames,
                pending,
                next_id: AtomicU64::new(1),
                exec_dir: Mutex::new(None),
            }),
        },
        events: Events { rx },
    })
}

fn refused(id: &str, step: &'static str, reply: proto::Reply) -> ControlError {
    ControlError::Refused {
        id: id.to_string(),
        step,
        code: proto::Code::try_from(reply.code).unwrap_or(proto::Code::Internal),
        message: reply.message,
    }
}

/// One frame off `reader`; None at a clean end of the stream.
async fn read_frame<M: Message + Default, R: AsyncRead + Unpin>(
    reader: &mut R,
) -> io::Result<Option<M>> {
    let mut header = [0u8; frame::HEADER];
    match reader.read_exact(&mut header).await {
        Ok(_) => {}
        Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(err) => return Err(err),
    }
    let len =
        frame::body_len(header).map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))?;
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).await?;
    M::decode(body.as_slice())
        .map(Some)
        .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))
}

/// The session's reader: replies to their requests, output and exit to `tx`.
async fn read_events<R: AsyncRead + Unpin>(
    id: String,
    mut reader: R,
    pending: Arc<Mutex<Pending>>,
    tx: mpsc::Sender<std::result::Result<Event, ControlError>>,
) {
    let step = "reading from the monitor";
    let mut exited = false;
    let end = loop {
        let event = match read_frame::<proto::Event, _>(&mut reader).await {
            Ok(Some(event)) => event,
            // A reset is the monitor closing too (it dropped this session, or exited).
            Ok(None) => break None,
            Err(err) if err.kind() == io::ErrorKind::ConnectionReset => break None,
            Err(source) => {
                break Some(ControlError::Io {
                    id: id.clone(),
                    step,
                    source,
                })
            }
        };
        let event = match event.kind {
            Some(event::Kind::Reply(reply)) => {
                let waiting = lock(&pending).waiting.remove(&reply.id);
                if let Some(waiting) = waiting {
                    let _ = waiting.send(reply);
                }
                continue;
            }
            Some(event::Kind::Output(output)) => match proto::Stream::try_from(output.stream) {
                Ok(proto::Stream::Stderr) => Event::Stderr(output.data),
                _ => Event::Stdout(output.data),
            },
            Some(event::Kind::Exit(exit)) => {
                exited = true;
                Event::Exit {
                    exit_code: exit.exit_code,
                    signal: (exit.signal != 0).then_some(exit.signal),
                }
            }
            Some(event::Kind::Hello(_)) | None => continue,
        };
        // When nobody reads events any more, replies still matter.
        let _ = tx.send(Ok(event)).await;
    };
    {
        let mut pending = lock(&pending);
        pending.closed = true;
        // Dropping the senders tells every waiting request the session is over.
        pending.waiting.clear();
    }
    let end = end.or_else(|| {
        (!exited).then(|| ControlError::Closed {
            id: id.clone(),
            step,
        })
    });
    if let Some(err) = end {
        let _ = tx.send(Err(err)).await;
    }
}

fn lock(pending: &Mutex<Pending>) -> std::sync::MutexGuard<'_, Pending> {
    pending.lock().unwrap_or_else(|p| p.into_inner())
}

impl Control {
    pub fn info(&self) -> &SessionInfo {
        &self.inner.info
    }

    pub fn container_id(&self) -> &str {
        &self.inner.id
    }

    async fn send(
        &self,
        step: &'static str,
        request: &proto::Request,
    ) -> std::result::Result<(), ControlError> {
        let mut buffer = Vec::new();
        frame::encode(request, &mut buffer);
        // Waits while the queue is full; fails once the connection is gone.
        self.inner
            .frames
            .send(buffer)
            .await
            .map_err(|_| ControlError::Closed {
                id: self.inner.id.clone(),
                step,
            })
    }

    /// Sends a request and waits for its reply.
    async fn call(
        &self,
        step: &'static str,
        kind: request::Kind,
    ) -> std::result::Result<(), ControlError> {
        self.call_for_reply(step, kind).await.map(drop)
    }

    async fn call_for_reply(
        &self,
        step: &'static str,
        kind: request::Kind,
    ) -> std::result::Result<proto::Reply, ControlError> {
        let closed = || ControlError::Closed {
            id: self.inner.id.clone(),
            step,
        };
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = lock(&self.inner.pending);
            if pending.closed {
                return Err(closed());
            }
            pending.waiting.insert(id, tx);
        }
        let request = proto::Request {
            id,
            kind: Some(kind),
        };
        if let Err(err) = self.send(step, &request).await {
            lock(&self.inner.pending).waiting.remove(&id);
            return Err(err);
        }
        let reply = match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => return Err(closed()),
            Err(_) => {
                lock(&self.inner.pending).waiting.remove(&id);
                return Err(ControlError::Timeout {
                    id: self.inner.id.clone(),
                    step,
                    timeout: REQUEST_TIMEOUT,
                });
            }
        };
        if reply.code == proto::Code::Ok as i32 {
            Ok(reply)
        } else {
            Err(refused(&self.inner.id, step, reply))
        }
    }

    /// Attaches this session to the container's streams: output comes as [`Event`]s,
    /// and with `stdin` [`Control::write_stdin`] feeds the container. Returns where the
    /// container's output stood as the attach took effect.
    pub async fn attach(
        &self,
        streams: AttachStreams,
    ) -> std::result::Result<AttachPoint, ControlError> {
        let reply = self
            .call_for_reply(
                "attaching",
                request::Kind::Attach(proto::Attach {
                    stdin: streams.stdin,
                    stdout: streams.stdout,
                    stderr: streams.stderr,
                }),
            )
            .await?;
        Ok(AttachPoint {
            log_offset: reply.log_offset,
            stdout_pending: reply.stdout_pending,
            stderr_pending: reply.stderr_pending,
        })
    }

    /// Makes this session an exec session: the monitor runs `runtime` (argv up to its
    /// subcommand) to exec the process in `dir/process.json`; returns its host pid once
    /// it runs. Output and the exit that follow are the exec'd process's.
    async fn exec(
        &self,
        runtime: Vec<String>,
        dir: &Path,
        request: &ExecRequest,
    ) -> std::result::Result<i32, ControlError> {
        let (width, height) = request.size.unwrap_or((0, 0));
        let reply = self
            .call_for_reply(
                "starting the exec",
                request::Kind::Exec(proto::Exec {
                    runtime,
                    dir: dir.to_string_lossy().into_owned(),
                    stdin: request.stdin,
                    stdout: request.stdout,
                    stderr: request.stderr,
                    tty: request.tty,
                    width: width.into(),
                    height: height.into(),
                }),
            )
            .await?;
        Ok(reply.pid)
    }

    /// Sends `data` to the container's stdin (needs an attach with stdin). Input sent
    /// after the container's stdin was closed is dropped.
    pub async fn write_stdin(&self, data: &[u8]) -> std::result::Result<(), ControlError> {
        for chunk in data.chunks(frame::MAX_DATA) {
            let request = proto::Request {
                id: 0,
                kind: Some(request::Kind::Input(chunk.to_vec())),
            };
            self.send("writing stdin", &request).await?;
        }
        Ok(())
    }

    /// This session has no more input. With `stdin_once` that closes the container's
    /// stdin (for the first session to end it); otherwise stdin stays open for others.
    pub async fn end_stdin(&self) -> std::result::Result<(), ControlError> {
        let request = proto::Request {
            id: 0,
            kind: Some(request::Kind::InputEnd(proto::InputEnd {})),
        };
        self.send("ending stdin", &request).await
    }

    /// Closes the container's stdin (after the input already sent): EOF to the
    /// container, or the terminal's EOF character with a TTY.
    pub async fn close_stdin(&self) -> std::result::Result<(), ControlError> {
        self.call(
            "closing stdin",
            request::Kind::CloseStdin(proto::CloseStdin {}),
        )
        .await
    }

    /// Sets the window size of the container's TTY.
    pub async fn resize(&self, width: u16, height: u16) -> std::result::Result<(), ControlError> {
        self.call(
            "resizing the terminal",
            request::Kind::Resize(proto::Resize {
                width: width.into(),
                height: height.into(),
            }),
        )
        .await
    }

    /// Sends `signal` to the container's init (the monitor's child, so never to a
    /// recycled pid).
    pub async fn signal(&self, signal: i32) -> std::result::Result<(), ControlError> {
        self.call(
            "signalling the init",
            request::Kind::Signal(proto::Signal { signal }),
        )
        .await
    }
}

impl Runtime {
    /// Connects to the monitor of a created or running container (for resize, signal,
    /// close stdin, or a later attach). A created container's monitor is there
    /// already: Docker attaches before it starts, so as to miss no output.
    pub async fn monitor_session(&self, namespace: &str, query: &str) -> Result<Session> {
        let container = self
            .find_container(namespace, query)
            .ok_or_else(|| RuntimeError::NotFound(format!("container {query:?}")))?;
        if !matches!(
            container.state,
            ContainerState::Created | ContainerState::Running
        ) {
            return Err(RuntimeError::FailedPrecondition(format!(
                "container {} is not running (state {:?}): no monitor to talk to",
                container.id, container.state
            )));
        }
        Ok(connect(&container.bundle, &container.id).await?)
    }

    /// Starts an exec session: `request.cmd` runs in the running container with its
    /// process settings (user, env, capabilities, seccomp, cgroup: as ExecSync), its
    /// stdio held by the container's monitor. The session's events are the exec'd
    /// process's output and then its exit; [`Control::write_stdin`],
    /// [`Control::end_stdin`] (its stdin's EOF), [`Control::resize`] and
    /// [`Control::signal`] act on it. Dropping the session before the exit kills the
    /// process. Returns the session and the process's host pid.
    pub async fn exec(
        &self,
        namespace: &str,
        query: &str,
        request: &ExecRequest,
    ) -> Result<(Session, i32)> {
        if request.cmd.is_empty() {
            return Err(RuntimeError::invalid("cmd", "is empty"));
        }
        if request.tty && request.stderr {
            return Err(RuntimeError::invalid(
                "stderr",
                "an exec with a TTY has all its output on stdout",
            ));
        }
        if !(request.stdin || request.stdout || request.stderr) {
            return Err(RuntimeError::invalid(
                "stdin, stdout, stderr",
                "an exec must take at least one of its streams",
            ));
        }
        let container = self.running(namespace, query)?;
        if container.paused {
            return Err(RuntimeError::FailedPrecondition(format!(
                "Container {} is paused, unpause the container before exec",
                container.id
            )));
        }
        let runtime = self.oci_runtime(&container.runtime_handler)?;
        exec(
            &container.bundle,
            &container.id,
            runtime.command_prefix(),
            request,
        )
        .await
    }

    /// Attaches to the streams of a created or running container through its
    /// monitor. Asking for stdin of a container created without it is
    /// InvalidArgument; a container that has exited is FailedPrecondition. (CRI
    /// Attach, which wants a running container, checks that itself.)
    pub async fn attach(
        &self,
        namespace: &str,
        query: &str,
        streams: AttachStreams,
    ) -> Result<Session> {
        Ok(self.attach_at(namespace, query, streams).await?.0)
    }

    /// [`Runtime::attach`], and where the container's output stood as it took effect.
    pub async fn attach_at(
        &self,
        namespace: &str,
        query: &str,
        streams: AttachStreams,
    ) -> Result<(Session, AttachPoint)> {
        let session = self.monitor_session(namespace, query).await?;
        let point = session.control.attach(streams).await?;
        Ok((session, point))
    }
}

/// Starts an exec session in the running container `id` whose bundle is `bundle`,
/// with `runtime` (its program and the arguments before its subcommand, as
/// [`super::oci::OciRuntime::command_prefix`] gives them): what [`Runtime::exec`] does
/// once it found the container. Returns the session and the exec'd process's host pid.
pub async fn exec(
    bundle: &Path,
    id: &str,
    runtime: Vec<String>,
    request: &ExecRequest,
) -> Result<(Session, i32)> {
    let session = connect(bundle, id).await?;
    if session.info().version < 2 {
        return Err(RuntimeError::FailedPrecondition(format!(
            "container {id}: its monitor was started by an older wharf, without exec \
             sessions (control protocol version {}): restart the container to exec in it",
            session.info().version
        )));
    }
    let exec_id = super::service::new_id()?;
    let dir = bundle.join("exec").join(&exec_id[..16]);
    // Removed with the session, however it ends.
    *session
        .control
        .inner
        .exec_dir
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = Some(dir.clone());
    let owned_bundle = bundle.to_path_buf();
    let (owned_request, process_dir) = (request.clone(), dir.clone());
    super::service::blocking(move || {
        write_exec_process(&owned_bundle, &process_dir, &owned_request)
    })
    .await?;
    let pid = session.control.exec(runtime, &dir, request).await?;
    Ok((session, pid))
}

/// Writes `dir/process.json`: the container's own process with `cmd` as its args
/// (ExecSync's settings), a terminal when `tty` (and `TERM=xterm` unless the container
/// sets TERM, as Docker, containerd and CRI-O do).
fn write_exec_process(bundle: &Path, dir: &Path, request: &ExecRequest) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let (tty, size) = (request.tty, request.size);
    let spec = oci_spec::runtime::Spec::load(bundle.join("config.json"))
        .map_err(|e| RuntimeError::Internal(format!("reading config.json: {e}")))?;
    let mut process = spec.process().clone().unwrap_or_default();
    process.set_args(Some(request.cmd.clone()));
    if !request.env.is_empty() {
        let mut env = process.env().clone().unwrap_or_default();
        for entry in &request.env {
            let key = entry.split_once('=').map_or(entry.as_str(), |(k, _)| k);
            if key.is_empty() {
                return Err(RuntimeError::invalid(
                    "env",
                    format!("{entry:?} is not KEY=value"),
                ));
            }
            env.retain(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) != key);
            env.push(entry.clone());
        }
        process.set_env(Some(env));
    }
    if !request.working_dir.is_empty() {
        if !request.working_dir.starts_with('/') {
            return Err(RuntimeError::invalid(
                "working_dir",
                format!("{:?} is not an absolute path", request.working_dir),
            ));
        }
        process.set_cwd(PathBuf::from(&request.working_dir));
    }
    if !request.user.is_empty() {
        let rootfs = spec
            .root()
            .as_ref()
            .map(|root| bundle.join(root.path()))
            .unwrap_or_else(|| bundle.join("rootfs"));
        process.set_user(super::spec::resolve_exec_user(&rootfs, &request.user)?);
    }
    process.set_terminal(Some(tty));
    // The first size is the terminal's before the process runs (runc, and wharf's own
    // runtime, apply it when they make the terminal).
    let console_size = match size {
        Some((width, height)) if tty => Some(
            oci_spec::runtime::BoxBuilder::default()
                .width(u64::from(width))
                .height(u64::from(height))
                .build()
                .map_err(|e| RuntimeError::Internal(format!("the console size: {e}")))?,
        ),
        _ => None,
    };
    process.set_console_size(console_size);
    if tty {
        let mut env = process.env().clone().unwrap_or_default();
        if !env.iter().any(|e| e.starts_with("TERM=")) {
            env.push("TERM=xterm".into());
        }
        process.set_env(Some(env));
    }
    let json = serde_json::to_vec(&process)
        .map_err(|e| RuntimeError::Internal(format!("encoding the exec's process: {e}")))?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(RuntimeError::io(format!("creating {}", dir.display())))?;
    let file = dir.join(control::exec::PROCESS_FILE);
    std::fs::write(&file, json).map_err(RuntimeError::io(format!("writing {}", file.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn frames_of(events: &[proto::Event]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for event in events {
            frame::encode(event, &mut bytes);
        }
        bytes
    }

    /// The reader hands replies to their requests and output in order, and reports a
    /// connection that ends without an exit.
    #[tokio::test]
    async fn reader_dispatches_replies_and_events() {
        let bytes = frames_of(&[
            proto::Event {
                kind: Some(event::Kind::Output(proto::Output {
                    stream: proto::Stream::Stdout as i32,
                    data: b"out".to_vec(),
                })),
            },
            proto::Event {
                kind: Some(event::Kind::Reply(proto::Reply {
                    id: 7,
                    code: proto::Code::FailedPrecondition as i32,
                    message: "no".into(),
                    pid: 0,
                    ..Default::default()
                })),
            },
            proto::Event {
                kind: Some(event::Kind::Output(proto::Output {
                    stream: proto::Stream::Stderr as i32,
                    data: b"err".to_vec(),
                })),
            },
        ])
        .await;
        let pending = Arc::new(Mutex::new(Pending::default()));
        let (reply_tx, reply_rx) = oneshot::channel();
        lock(&pending).waiting.insert(7, reply_tx);
        let (tx, mut rx) = mpsc::channel(8);
        read_events("c1".into(), bytes.as_slice(), pending.clone(), tx).await;
        let reply = reply_rx.await.expect("reply delivered");
        assert_eq!(reply.message, "no");
        assert_eq!(
            rx.recv().await.expect("event").expect("ok"),
            Event::Stdout(b"out".to_vec())
        );
        assert_eq!(
            rx.recv().await.expect("event").expect("ok"),
            Event::Stderr(b"err".to_vec())
        );
        let end = rx
            .recv()
            .await
            .expect("end")
            .expect_err("closed without exit");
        assert!(matches!(end, ControlError::Closed { .. }), "{end}");
        assert_eq!(end.kind(), ErrorKind::Unavailable);
        assert!(lock(&pending).closed);
    }

    #[tokio::test]
    async fn exit_ends_the_events_cleanly() {
        let bytes = frames_of(&[proto::Event {
            kind: Some(event::Kind::Exit(proto::Exit {
                exit_code: 137,
                signal: 9,
            })),
        }])
        .await;
        let (tx, mut rx) = mpsc::channel(8);
        read_events("c1".into(), bytes.as_slice(), Arc::default(), tx).await;
        assert_eq!(
            rx.recv().await.expect("event").expect("ok"),
            Event::Exit {
                exit_code: 137,
                signal: Some(9)
            }
        );
        assert!(rx.recv().await.is_none());
    }

    #[test]
    fn refusals_keep_their_kind() {
        let refused = |code| {
            refused(
                "c1",
                "attaching",
                proto::Reply {
                    id: 1,
                    code: code as i32,
                    message: "why".into(),
                    pid: 0,
                    ..Default::default()
                },
            )
        };
        let err = refused(proto::Code::InvalidArgument);
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert_eq!(err.to_string(), "container c1: attaching: why");
        assert_eq!(
            refused(proto::Code::FailedPrecondition).kind(),
            ErrorKind::FailedPrecondition
        );
        assert_eq!(
            refused(proto::Code::UnsupportedVersion).kind(),
            ErrorKind::FailedPrecondition
        );
    }

    /// A bundle without a monitor (an exited container, or one from before the
    /// channel): FailedPrecondition naming the container and the socket.
    #[tokio::test]
    async fn no_monitor_is_a_failed_precondition() {
        let bundle = tempfile::tempdir().expect("tempdir");
        let err = connect(bundle.path(), "c1").await.expect_err("no socket");
        assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
        assert!(err.to_string().contains("container c1"), "{err}");
        assert!(err.to_string().contains("monitor.sock"), "{err}");
    }
}
