//! A cap on the connections each API socket holds open (`[cri] max_connections`,
//! `[docker] max_connections`), so clients that connect and stay (slow, idle or
//! hostile) cannot spend the descriptors wharfd needs for its own work. A connection
//! past the cap is answered with a clear error and closed: the Docker API's with an
//! HTTP 503 naming the limit (the docker CLI prints its message), the CRI's calls
//! with gRPC's UNAVAILABLE and the same message (crictl: "rpc error: code =
//! Unavailable desc = too many connections: ...").

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Refused connections answered at once, at most; more are closed unanswered.
const MAX_ANSWERING: usize = 64;

/// The open connections of one socket, and how many it may hold.
#[derive(Debug, Clone)]
pub struct ConnectionLimit {
    open: Arc<AtomicUsize>,
    /// Refusals being answered: past [`MAX_ANSWERING`] a connection is closed at
    /// once, so a flood cannot spend descriptors on its answers either.
    answering: Arc<AtomicUsize>,
    max: usize,
    /// The setting that holds `max`, for the error.
    setting: &'static str,
}

impl ConnectionLimit {
    pub fn new(max: usize, setting: &'static str) -> ConnectionLimit {
        ConnectionLimit {
            open: Arc::new(AtomicUsize::new(0)),
            answering: Arc::new(AtomicUsize::new(0)),
            max: max.max(1),
            setting,
        }
    }

    /// Counts `io` in, or gives it back when the socket holds `max` already.
    pub fn admit<Io>(&self, io: Io) -> Result<Counted<Io>, Io> {
        let admitted = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < self.max).then_some(open + 1)
            })
            .is_ok();
        if admitted {
            Ok(Counted {
                io,
                open: self.open.clone(),
            })
        } else {
            Err(io)
        }
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    fn message(&self) -> String {
        format!(
            "too many connections: wharfd holds {} open on this socket (the limit, {}); \
             close idle clients or raise it",
            self.max, self.setting
        )
    }

    /// Answers a connection past the cap with an HTTP/1.1 503 and closes it.
    pub fn refuse_http<Io>(&self, io: Io)
    where
        Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let body = serde_json::json!({ "message": self.message() }).to_string();
        let response = format!(
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let Some(answering) = self.start_answer() else {
            return;
        };
        tokio::spawn(async move {
            answer_and_close(io, response.into_bytes()).await;
            drop(answering);
        });
    }

    /// Counts a refusal about to be answered (and logs it); None when
    /// [`MAX_ANSWERING`] are under way: the caller then drops the connection.
    fn start_answer(&self) -> Option<Counted<()>> {
        let admitted = self
            .answering
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_ANSWERING).then_some(n + 1)
            })
            .is_ok();
        if admitted {
            // (Not when a flood has this many under way: no log line per connection.)
            tracing::warn!(
                limit = self.max,
                setting = self.setting,
                "refused a connection: too many open"
            );
        }
        admitted.then(|| Counted {
            io: (),
            open: self.answering.clone(),
        })
    }

    /// Answers a gRPC connection past the cap: every call it makes within 5 s fails
    /// with UNAVAILABLE and a message naming the limit (a trailers-only response, which
    /// any gRPC client reports as the call's error), then it is closed.
    pub fn refuse_grpc<Io>(&self, io: Io)
    where
        Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Some(answering) = self.start_answer() else {
            return;
        };
        let message = self.message();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(
                move |_request: hyper::Request<hyper::body::Incoming>| {
                    let response = hyper::Response::builder()
                        .status(200)
                        .header("content-type", "application/grpc")
                        .header("grpc-status", "14") // UNAVAILABLE
                        .header("grpc-message", message.as_str())
                        .body(http_body_util::Empty::<bytes::Bytes>::new());
                    std::future::ready(response)
                },
            );
            let connection =
                hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(io), service);
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), connection).await;
            drop(answering);
        });
    }
}

/// Reads what the client sends first (its request, or HTTP/2's preface: answering
/// before it wrote would fail its write and hide the answer), writes `answer`, and
/// drains until the client hangs up (unread bytes would turn the close into a reset).
/// Each step is bounded: a client that does nothing is not waited for.
async fn answer_and_close<Io: AsyncRead + AsyncWrite + Unpin>(mut io: Io, answer: Vec<u8>) {
    use tokio::io::AsyncReadExt;
    use tokio::time::{timeout, Duration};
    let mut buf = [0u8; 4096];
    let _ = timeout(Duration::from_secs(2), io.read(&mut buf)).await;
    let _ = timeout(Duration::from_secs(5), io.write_all(&answer)).await;
    let _ = io.flush().await;
    let drain = async {
        loop {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    };
    let _ = timeout(Duration::from_secs(2), drain).await;
    let _ = io.shutdown().await;
}

/// A connection counted against its socket's limit until it is dropped.
#[derive(Debug)]
pub struct Counted<Io> {
    io: Io,
    open: Arc<AtomicUsize>,
}

impl<Io> Drop for Counted<Io> {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<Io: AsyncRead + Unpin> AsyncRead for Counted<Io> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<Io: AsyncWrite + Unpin> AsyncWrite for Counted<Io> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl<Io: tonic::transport::server::Connected> tonic::transport::server::Connected for Counted<Io> {
    type ConnectInfo = Io::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// A Docker API listener that holds at most `limit` connections open.
pub struct LimitedListener<L> {
    inner: L,
    limit: ConnectionLimit,
}

impl<L> LimitedListener<L> {
    pub fn new(inner: L, limit: ConnectionLimit) -> LimitedListener<L> {
        LimitedListener { inner, limit }
    }
}

impl<L> axum::serve::Listener for LimitedListener<L>
where
    L: axum::serve::Listener,
    L::Io: Send,
{
    type Io = Counted<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (io, addr) = self.inner.accept().await;
            match self.limit.admit(io) {
                Ok(counted) => return (counted, addr),
                Err(io) => self.limit.refuse_http(io),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// The CRI socket's connections, counted; those past the limit are refused.
pub fn limited_incoming(
    listener: tokio::net::UnixListener,
    limit: ConnectionLimit,
) -> impl futures_util::Stream<Item = std::io::Result<Counted<tokio::net::UnixStream>>> {
    futures_util::stream::unfold((listener, limit), |(listener, limit)| async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => match limit.admit(stream) {
                    Ok(counted) => return Some((Ok(counted), (listener, limit))),
                    Err(stream) => limit.refuse_grpc(stream),
                },
                Err(err) => return Some((Err(err), (listener, limit))),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_past_the_limit_are_given_back_until_one_closes() {
        let limit = ConnectionLimit::new(2, "[docker] max_connections");
        let first = limit.admit(1).expect("first");
        let _second = limit.admit(2).expect("second");
        assert_eq!(limit.admit(3).unwrap_err(), 3);
        assert_eq!(limit.open(), 2);
        drop(first);
        assert!(limit.admit(4).is_ok());
    }
}
