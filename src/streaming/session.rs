//! The protocol-neutral half of the streaming server: an exec or attach session
//! between a client's streams (whatever carries them: SPDY, WebSocket, later Docker's
//! hijacked HTTP) and a container's monitor, and port-forward's per-connection copy.
//! Transports only turn their wire format into the byte streams here and report the
//! [`Outcome`] back in theirs.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::engine::Engine;
use crate::runtime::monitor_control::{AttachStreams, Control, Event, Events, ExecRequest};

/// What a one-time URL was issued for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamRequest {
    Exec {
        namespace: String,
        container_id: String,
        cmd: Vec<String>,
        stdin: bool,
        stdout: bool,
        stderr: bool,
        tty: bool,
    },
    Attach {
        namespace: String,
        container_id: String,
        stdin: bool,
        stdout: bool,
        stderr: bool,
        tty: bool,
    },
    PortForward {
        namespace: String,
        pod_id: String,
    },
}

impl StreamRequest {
    /// The URL path segment: `exec`, `attach` or `portforward`.
    pub fn kind(&self) -> &'static str {
        match self {
            StreamRequest::Exec { .. } => "exec",
            StreamRequest::Attach { .. } => "attach",
            StreamRequest::PortForward { .. } => "portforward",
        }
    }

    /// The streams a remote command takes: (stdin, stdout, stderr, tty).
    pub fn streams(&self) -> (bool, bool, bool, bool) {
        match self {
            StreamRequest::Exec {
                stdin,
                stdout,
                stderr,
                tty,
                ..
            }
            | StreamRequest::Attach {
                stdin,
                stdout,
                stderr,
                tty,
                ..
            } => (*stdin, *stdout, *stderr && !*tty, *tty),
            StreamRequest::PortForward { .. } => (false, false, false, false),
        }
    }
}

/// When a session last moved a byte; the idle timeout closes it after a quiet spell.
#[derive(Debug, Clone)]
pub struct Activity {
    start: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            start: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl Activity {
    pub fn touch(&self) {
        let now = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(now, Ordering::Relaxed);
    }

    /// Resolves once nothing happened for `timeout`.
    pub async fn idle(&self, timeout: Duration) {
        loop {
            let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let quiet_until = self.start + last + timeout;
            if Instant::now() >= quiet_until {
                return;
            }
            tokio::time::sleep_until(quiet_until.into()).await;
        }
    }
}

pub type Reader = Pin<Box<dyn AsyncRead + Send>>;
pub type Writer = Pin<Box<dyn AsyncWrite + Send>>;

/// A remote command's streams as the transport delivers them.
#[derive(Default)]
pub struct Streams {
    pub stdin: Option<Reader>,
    pub stdout: Option<Writer>,
    pub stderr: Option<Writer>,
    /// JSON `{"Width":w,"Height":h}` objects, one after another (kubelet's resize
    /// stream and channel).
    pub resize: Option<Reader>,
}

/// How a remote command ended, for the transport's error stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The command exited (exec) or the container did (attach).
    Exited(i32),
    /// It could not run, or failed on the way: the message for the client.
    Failed(String),
    /// The client went (its streams broke): nothing to report.
    ClientGone,
}

#[derive(Debug, Deserialize)]
struct TerminalSize {
    #[serde(rename = "Width")]
    width: u16,
    #[serde(rename = "Height")]
    height: u16,
}

/// Reads the next terminal size off a resize stream; None at its end or on bad JSON.
struct ResizeReader {
    reader: Reader,
    buffer: Vec<u8>,
}

impl ResizeReader {
    async fn next(&mut self) -> Option<(u16, u16)> {
        loop {
            let mut stream =
                serde_json::Deserializer::from_slice(&self.buffer).into_iter::<TerminalSize>();
            match stream.next() {
                Some(Ok(size)) => {
                    let used = stream.byte_offset();
                    self.buffer.drain(..used);
                    return Some((size.width, size.height));
                }
                Some(Err(err)) if !err.is_eof() => return None,
                _ => {}
            }
            if self.buffer.len() > 64 * 1024 {
                return None;
            }
            let mut chunk = [0u8; 512];
            match self.reader.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

/// Runs an exec or attach request to its end over `streams`.
pub async fn run_remote_command(
    engine: &Engine,
    request: &StreamRequest,
    mut streams: Streams,
    activity: &Activity,
) -> Outcome {
    let mut resize = streams.resize.take().map(|reader| ResizeReader {
        reader,
        buffer: Vec::new(),
    });
    let (control, events, is_exec) = match request {
        StreamRequest::Exec {
            namespace,
            container_id,
            cmd,
            stdin,
            stdout,
            stderr,
            tty,
        } => {
            // The client sends the terminal's size first thing: start the process with
            // it rather than resize it after it has looked.
            let mut size = None;
            if *tty {
                if let Some(reader) = resize.as_mut() {
                    size = tokio::time::timeout(Duration::from_millis(250), reader.next())
                        .await
                        .ok()
                        .flatten();
                }
            }
            let exec = ExecRequest {
                cmd: cmd.clone(),
                stdin: *stdin,
                stdout: *stdout,
                stderr: *stderr && !*tty,
                tty: *tty,
                size: size.filter(|(w, h)| *w > 0 && *h > 0),
                ..Default::default()
            };
            match engine.runtime.exec(namespace, container_id, &exec).await {
                Ok((session, _pid)) => {
                    let (control, events) = session.into_parts();
                    (control, events, true)
                }
                Err(err) => return Outcome::Failed(failure_message(&err)),
            }
        }
        StreamRequest::Attach {
            namespace,
            container_id,
            stdin,
            stdout,
            stderr,
            tty,
        } => {
            let wanted = AttachStreams {
                stdin: *stdin,
                stdout: *stdout,
                stderr: *stderr && !*tty,
            };
            if let Err(err) = engine.runtime.running_container(namespace, container_id) {
                return Outcome::Failed(failure_message(&err));
            }
            match engine.runtime.attach(namespace, container_id, wanted).await {
                Ok(session) => {
                    let (control, events) = session.into_parts();
                    (control, events, false)
                }
                Err(err) => return Outcome::Failed(failure_message(&err)),
            }
        }
        StreamRequest::PortForward { .. } => {
            return Outcome::Failed("a port-forward URL is no remote command".into())
        }
    };
    activity.touch();
    let outcome = pump(control, events, &mut streams, resize, activity).await;
    // Attach reports no exit code (kubelet's does not either): the container's end is
    // the stream's.
    match outcome {
        Outcome::Exited(_) if !is_exec => Outcome::Exited(0),
        other => other,
    }
}

fn failure_message(err: &impl std::fmt::Display) -> String {
    err.to_string()
}

/// Copies the client's stdin and resizes to the monitor and its output to the client
/// until the exit (or until the client goes: dropping the session then kills an exec).
async fn pump(
    control: Control,
    mut events: Events,
    streams: &mut Streams,
    mut resize: Option<ResizeReader>,
    activity: &Activity,
) -> Outcome {
    let mut stdin = streams.stdin.take();
    let mut chunk = vec![0u8; 32 * 1024];
    loop {
        tokio::select! {
            read = async {
                match stdin.as_mut() {
                    Some(reader) => reader.read(&mut chunk).await,
                    None => std::future::pending().await,
                }
            } => {
                activity.touch();
                match read {
                    Ok(n) if n > 0 => {
                        if control.write_stdin(&chunk[..n]).await.is_err() {
                            stdin = None;
                        }
                    }
                    // EOF (or a broken stdin stream): the process's stdin ends.
                    _ => {
                        stdin = None;
                        let _ = control.end_stdin().await;
                    }
                }
            }
            size = async {
                match resize.as_mut() {
                    Some(reader) => reader.next().await,
                    None => std::future::pending().await,
                }
            } => {
                activity.touch();
                match size {
                    Some((width, height)) if width > 0 && height > 0 => {
                        // A terminal that cannot take the size keeps its own.
                        let _ = control.resize(width, height).await;
                    }
                    Some(_) => {}
                    None => resize = None,
                }
            }
            event = events.next() => {
                activity.touch();
                match event {
                    Some(Ok(Event::Stdout(data))) => {
                        if !write_all(&mut streams.stdout, &data).await {
                            return Outcome::ClientGone;
                        }
                    }
                    Some(Ok(Event::Stderr(data))) => {
                        if !write_all(&mut streams.stderr, &data).await {
                            return Outcome::ClientGone;
                        }
                    }
                    Some(Ok(Event::Exit { exit_code, .. })) => {
                        finish(streams).await;
                        return Outcome::Exited(exit_code);
                    }
                    Some(Err(err)) => {
                        finish(streams).await;
                        return Outcome::Failed(err.to_string());
                    }
                    None => {
                        finish(streams).await;
                        return Outcome::Failed("the monitor ended the session".into());
                    }
                }
            }
        }
    }
}

/// Writes to an optional stream; false when the client's stream broke.
async fn write_all(stream: &mut Option<Writer>, data: &[u8]) -> bool {
    match stream.as_mut() {
        Some(writer) => writer.write_all(data).await.is_ok() && writer.flush().await.is_ok(),
        // Output of a stream the client did not ask for is dropped.
        None => true,
    }
}

/// Ends the output streams (their FIN) after everything written.
async fn finish(streams: &mut Streams) {
    for writer in [streams.stdout.as_mut(), streams.stderr.as_mut()]
        .into_iter()
        .flatten()
    {
        let _ = writer.shutdown().await;
    }
}

/// Copies one forwarded connection both ways until both directions ended; the
/// client's end of its stream closes the connection's write side (half-close).
pub async fn copy_port_forward(
    client_read: Reader,
    client_write: Writer,
    connection: tokio::net::TcpStream,
    activity: &Activity,
) {
    let (mut pod_read, mut pod_write) = connection.into_split();
    let mut client_read = client_read;
    let mut client_write = client_write;
    let to_pod = async {
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match client_read.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    activity.touch();
                    if pod_write.write_all(&chunk[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = pod_write.shutdown().await;
    };
    let from_pod = async {
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match pod_read.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    activity.touch();
                    if client_write.write_all(&chunk[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = client_write.shutdown().await;
    };
    tokio::join!(to_pod, from_pod);
}
