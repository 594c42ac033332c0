//! Server side of SPDY/3.1, as spoken by Kubernetes CRI streaming clients.
//!
//! `kubectl exec/attach/port-forward`, `crictl` and client-go talk to the runtime's
//! streaming server over an HTTP connection upgraded to `SPDY/3.1`, using
//! `github.com/moby/spdystream` (wrapped by k8s.io/apimachinery's, now k8s.io/streaming's,
//! `httpstream/spdy`). No usable Rust crate implements SPDY/3.1, so this module is a
//! hand-written, self-contained implementation of the subset those clients use.
//!
//! # What is implemented
//! * The frame codec (parse and write) for every SPDY/3 frame: SYN_STREAM, SYN_REPLY,
//!   RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE and DATA. Unknown control
//!   frame types (e.g. CREDENTIAL) are skipped, as the spec says. Lengths are checked: a
//!   control frame over 1 MiB, a header block over 1 MiB decompressed or over 1000
//!   headers, a fixed-size frame of the wrong size or a stream id of 0 ends the session
//!   with GOAWAY(PROTOCOL_ERROR). DATA frames are bounded by their 24-bit length (16 MiB).
//! * Header blocks as in SPDY/3: 32-bit counts and lengths, lowercase names (we lowercase
//!   what we send and what we read), several values of one name joined by NUL, compressed
//!   with one zlib stream per direction for the whole connection, primed with the SPDY/3
//!   dictionary, each block ending with a SYNC_FLUSH: byte-compatible with spdystream's
//!   `compress/zlib` framer (see the test decoding blocks captured from it).
//! * The server role: the client opens streams (odd ids, increasing; anything else gets
//!   RST_STREAM(PROTOCOL_ERROR) and the connection goes on, as in spdystream), the
//!   application answers each with SYN_REPLY ([`IncomingStream::accept`]) or RST_STREAM
//!   ([`IncomingStream::reset`]). The server never opens streams (the codec could).
//!   Priorities, associated streams and HEADERS frames are parsed and ignored, as
//!   client-go never relies on them.
//! * PING: client pings (odd ids) are echoed, as spdystream does. GOAWAY from the client
//!   stops new streams (they are refused) while open ones run until the client closes
//!   the TCP connection, which spdystream does once its streams are gone.
//!   [`Session::close`] writes what is queued, then GOAWAY(OK), then closes. Over 1024
//!   open streams, new ones are refused (REFUSED_STREAM).
//!
//! # Flow control
//! spdystream implements none: it parses WINDOW_UPDATE and SETTINGS and drops them, never
//! sends WINDOW_UPDATE, and writes each `Write` as one DATA frame whatever the window.
//! Hence:
//! * Sending: we do not enforce the client's window (a spdystream client would never
//!   open it again after the first 64 KiB, and kubelet's spdystream server does not
//!   either). SETTINGS and WINDOW_UPDATE from the client are accepted and ignored; what
//!   we send is limited by TCP backpressure alone, through one writer with a bounded
//!   queue (1 MiB of DATA).
//! * Receiving: we assume SPDY/3.1's default 64 KiB stream and session windows (we send
//!   no SETTINGS, as kubelet sends none) and send WINDOW_UPDATEs: per stream for what the
//!   application has read, for the session (stream 0) for what was taken off the socket,
//!   each once 32 KiB are due. A conforming client therefore never stalls and never
//!   overruns a stream's buffer; spdystream ignores the updates (they parse cleanly).
//! * Each stream buffers up to 256 KiB of incoming data (more than the window). A
//!   conforming client never fills it, so a slow reader never holds up other streams.
//!   When a client ignores windows (spdystream does) and a stream's reader falls behind
//!   by more than that, reading from the socket waits for that reader, the TCP
//!   backpressure kubelet's spdystream server applies too (its per-stream delivery is
//!   unbuffered). Data for streams that were reset or dropped is discarded, never waited on.
//!
//! # Lifecycle
//! One task drives the connection (reading and writing). A [`Stream`] reads EOF at the
//! client's FIN or RST_STREAM, or when the connection ends (like spdystream's `Read`), and
//! writes fail with `BrokenPipe` once the stream is reset or the connection is closing.
//! `poll_shutdown` sends an empty DATA frame with FIN. Dropping a stream that is not
//! closed both ways sends RST_STREAM(CANCEL), what kubelet does on teardown (client-go's
//! `connection.Close` resets every stream); dropping an [`IncomingStream`] unanswered
//! refuses it. The task ends when the connection ends, after [`Session::close`], or once
//! the [`Session`], every stream and the receiver of incoming streams are all dropped.
//! [`Session::server`] must be called within a tokio runtime.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{mpsc, watch, Notify};
use tracing::{debug, trace, warn};

const VERSION: u16 = 3;
const TYPE_SYN_STREAM: u16 = 1;
const TYPE_SYN_REPLY: u16 = 2;
const TYPE_RST_STREAM: u16 = 3;
const TYPE_SETTINGS: u16 = 4;
const TYPE_PING: u16 = 6;
const TYPE_GOAWAY: u16 = 7;
const TYPE_HEADERS: u16 = 8;
const TYPE_WINDOW_UPDATE: u16 = 9;
const FLAG_FIN: u8 = 0x01;
const FLAG_UNIDIRECTIONAL: u8 = 0x02;
const ID_MASK: u32 = 0x7fff_ffff;
/// The largest length a frame header can carry (24 bits).
const MAX_FRAME_LEN: usize = 0xff_ffff;
/// Control frames we accept (SYN_STREAM with its compressed headers is the big one).
pub const MAX_CONTROL_FRAME_LEN: usize = 1 << 20;
/// Decompressed header block limit.
pub const MAX_HEADER_BLOCK: usize = 1 << 20;
/// Headers (name/value pairs) in one block.
pub const MAX_HEADER_COUNT: usize = 1000;
/// SETTINGS id of INITIAL_WINDOW_SIZE.
pub const SETTINGS_INITIAL_WINDOW_SIZE: u32 = 7;
/// SPDY/3.1's default stream and session window: what we assume the client grants us.
pub const DEFAULT_WINDOW: u32 = 64 * 1024;
const WINDOW_UPDATE_THRESHOLD: usize = DEFAULT_WINDOW as usize / 2;
/// Per-stream buffer of received, unread data.
const RECV_BUFFER: usize = 256 * 1024;
/// DATA bytes (plus a nominal cost per control frame) queued for the writer at most.
const SEND_BUDGET: usize = 1 << 20;
const CONTROL_COST: usize = 64;
/// Largest DATA frame we send.
const MAX_DATA_CHUNK: usize = 64 * 1024;
/// Bytes gathered into one socket write.
const WRITE_BATCH: usize = 256 * 1024;
/// Streams open at once (client-go uses at most 5 per exec); more are refused.
const MAX_STREAMS: usize = 1024;
const INCOMING_QUEUE: usize = 64;
/// How long closing waits for queued frames to reach the socket.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Header name/value pairs, names lowercase; a name appears once per value.
pub type Headers = Vec<(String, String)>;
type Res<T> = Result<T, SpdyError>;

/// What went wrong on a SPDY connection.
#[derive(Debug, thiserror::Error)]
pub enum SpdyError {
    #[error("SPDY connection I/O: {0}")]
    Io(#[from] io::Error),
    #[error("SPDY connection ended in the middle of a frame")]
    Truncated,
    #[error("unsupported SPDY version {0} (only SPDY/3 is spoken)")]
    UnsupportedVersion(u16),
    /// A malformed or oversized frame, or a bad header block.
    #[error("invalid SPDY {frame} frame (stream {stream}): {reason}")]
    Invalid {
        frame: &'static str,
        stream: u32,
        reason: String,
    },
    #[error("the SPDY connection is closed")]
    ConnectionClosed,
}

fn invalid(frame: &'static str, stream: u32, reason: impl Into<String>) -> SpdyError {
    let reason = reason.into();
    SpdyError::Invalid {
        frame,
        stream,
        reason,
    }
}

/// RST_STREAM status code (SPDY/3 section 2.6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResetStatus(pub u32);

#[allow(dead_code)] // the whole table, used or not
impl ResetStatus {
    pub const PROTOCOL_ERROR: Self = Self(1);
    pub const INVALID_STREAM: Self = Self(2);
    pub const REFUSED_STREAM: Self = Self(3);
    pub const UNSUPPORTED_VERSION: Self = Self(4);
    pub const CANCEL: Self = Self(5);
    pub const INTERNAL_ERROR: Self = Self(6);
    pub const FLOW_CONTROL_ERROR: Self = Self(7);
    pub const STREAM_IN_USE: Self = Self(8);
    pub const STREAM_ALREADY_CLOSED: Self = Self(9);
    pub const INVALID_CREDENTIALS: Self = Self(10);
    pub const FRAME_TOO_LARGE: Self = Self(11);
}

/// GOAWAY status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoAwayStatus(pub u32);

#[allow(dead_code)] // the whole table, used or not
impl GoAwayStatus {
    pub const OK: Self = Self(0);
    pub const PROTOCOL_ERROR: Self = Self(1);
    pub const INTERNAL_ERROR: Self = Self(2);
}

/// A SPDY/3 frame. `id` is a stream id (a ping id in `Ping`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// `assoc`: associated-to stream; `pri`: priority (0-7); `uni`: UNIDIRECTIONAL flag.
    SynStream {
        id: u32,
        assoc: u32,
        pri: u8,
        slot: u8,
        fin: bool,
        uni: bool,
        headers: Headers,
    },
    SynReply {
        id: u32,
        fin: bool,
        headers: Headers,
    },
    RstStream {
        id: u32,
        status: ResetStatus,
    },
    /// `clear`: the CLEAR_SETTINGS flag; entries are (flags, id, value).
    Settings {
        clear: bool,
        entries: Vec<(u8, u32, u32)>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good: u32,
        status: GoAwayStatus,
    },
    Headers {
        id: u32,
        fin: bool,
        headers: Headers,
    },
    WindowUpdate {
        id: u32,
        delta: u32,
    },
    Data {
        id: u32,
        fin: bool,
        data: Bytes,
    },
    /// A control frame of a type this codec does not know; ignored by the session.
    Unknown {
        ty: u16,
        flags: u8,
        payload: Bytes,
    },
}

fn type_name(ty: u16) -> &'static str {
    match ty {
        TYPE_SYN_STREAM => "SYN_STREAM",
        TYPE_SYN_REPLY => "SYN_REPLY",
        TYPE_RST_STREAM => "RST_STREAM",
        TYPE_SETTINGS => "SETTINGS",
        TYPE_PING => "PING",
        TYPE_GOAWAY => "GOAWAY",
        TYPE_HEADERS => "HEADERS",
        TYPE_WINDOW_UPDATE => "WINDOW_UPDATE",
        _ => "unknown control",
    }
}

fn nonzero(frame: &'static str, id: u32) -> Res<u32> {
    match id {
        0 => Err(invalid(frame, 0, "stream id 0")),
        id => Ok(id),
    }
}

/// Parses frames; owns the zlib stream of the peer's header blocks.
pub struct FrameDecoder(Decompress);

impl Default for FrameDecoder {
    fn default() -> Self {
        Self(Decompress::new(true))
    }
}

impl FrameDecoder {
    /// Takes one frame off the front of `src`; `Ok(None)` while it is incomplete.
    pub fn decode(&mut self, src: &mut BytesMut) -> Res<Option<Frame>> {
        let mut head = match src.get(..8) {
            Some(head) => head,
            None => return Ok(None),
        };
        let (word0, word1) = (head.get_u32(), head.get_u32());
        let (flags, len) = ((word1 >> 24) as u8, (word1 & 0xff_ffff) as usize);
        let (control, ty) = (word0 & 0x8000_0000 != 0, (word0 & 0xffff) as u16);
        if control && len > MAX_CONTROL_FRAME_LEN {
            let reason = format!("{len} bytes, over the {MAX_CONTROL_FRAME_LEN}-byte limit");
            return Err(invalid(type_name(ty), 0, reason));
        }
        if src.len() < 8 + len {
            src.reserve(8 + len - src.len());
            return Ok(None);
        }
        src.advance(8);
        let payload = src.split_to(len).freeze();
        if !control {
            let (id, fin, data) = (
                nonzero("DATA", word0 & ID_MASK)?,
                flags & FLAG_FIN != 0,
                payload,
            );
            return Ok(Some(Frame::Data { id, fin, data }));
        }
        let version = ((word0 >> 16) & 0x7fff) as u16;
        if version != VERSION {
            return Err(SpdyError::UnsupportedVersion(version));
        }
        self.decode_control(ty, flags, payload).map(Some)
    }

    fn decode_control(&mut self, ty: u16, flags: u8, payload: Bytes) -> Res<Frame> {
        let (name, fin, mut b) = (type_name(ty), flags & FLAG_FIN != 0, &payload[..]);
        let (min, exact) = match ty {
            TYPE_SYN_STREAM => (10, false),
            TYPE_SYN_REPLY | TYPE_HEADERS | TYPE_SETTINGS => (4, false),
            TYPE_PING => (4, true),
            TYPE_RST_STREAM | TYPE_GOAWAY | TYPE_WINDOW_UPDATE => (8, true),
            _ => (0, false),
        };
        if b.len() < min || (exact && b.len() != min) {
            return Err(invalid(name, 0, format!("payload of {} bytes", b.len())));
        }
        Ok(match ty {
            TYPE_SYN_STREAM => {
                let (id, assoc) = (b.get_u32() & ID_MASK, b.get_u32() & ID_MASK);
                let (pri, slot) = (b.get_u8() >> 5, b.get_u8());
                let headers = self.inflate(b, name, id)?;
                let (id, uni) = (nonzero(name, id)?, flags & FLAG_UNIDIRECTIONAL != 0);
                Frame::SynStream {
                    id,
                    assoc,
                    pri,
                    slot,
                    fin,
                    uni,
                    headers,
                }
            }
            TYPE_SYN_REPLY | TYPE_HEADERS => {
                let id = b.get_u32() & ID_MASK;
                let headers = self.inflate(b, name, id)?;
                let id = nonzero(name, id)?;
                match ty {
                    TYPE_SYN_REPLY => Frame::SynReply { id, fin, headers },
                    _ => Frame::Headers { id, fin, headers },
                }
            }
            TYPE_RST_STREAM => {
                let (id, status) = (b.get_u32() & ID_MASK, ResetStatus(b.get_u32()));
                let id = nonzero(name, id)?;
                Frame::RstStream { id, status }
            }
            TYPE_SETTINGS => {
                let n = b.get_u32() as usize;
                if n > b.len() / 8 || b.len() != n * 8 {
                    return Err(invalid(name, 0, "entry count does not match the length"));
                }
                let entry = |w: u32, value| ((w >> 24) as u8, w & 0xff_ffff, value);
                let entries = (0..n).map(|_| entry(b.get_u32(), b.get_u32())).collect();
                let clear = fin;
                Frame::Settings { clear, entries }
            }
            TYPE_PING => Frame::Ping { id: b.get_u32() },
            TYPE_GOAWAY => {
                let (last_good, status) = (b.get_u32() & ID_MASK, GoAwayStatus(b.get_u32()));
                Frame::GoAway { last_good, status }
            }
            TYPE_WINDOW_UPDATE => {
                let (id, delta) = (b.get_u32() & ID_MASK, b.get_u32() & ID_MASK);
                Frame::WindowUpdate { id, delta }
            }
            ty => Frame::Unknown { ty, flags, payload },
        })
    }

    /// Decompresses one header block (the rest of the frame) and parses it.
    fn inflate(&mut self, input: &[u8], frame: &'static str, id: u32) -> Res<Headers> {
        let zlib = |e: flate2::DecompressError| invalid(frame, id, format!("header block: {e}"));
        let mut out = Vec::with_capacity((input.len() * 4).clamp(256, MAX_HEADER_BLOCK + 1));
        let (mut pos, flush) = (0, FlushDecompress::Sync);
        loop {
            let (in0, out0) = (self.0.total_in(), out.len());
            let res = self.0.decompress_vec(&input[pos..], &mut out, flush);
            pos += (self.0.total_in() - in0) as usize;
            match res {
                Ok(Status::StreamEnd) if pos < input.len() => {
                    return Err(invalid(frame, id, "header block: zlib stream end"));
                }
                Err(e) if e.needs_dictionary().is_some() => {
                    self.0.set_dictionary(DICTIONARY).map_err(zlib)?;
                    continue;
                }
                res => res.map_err(zlib)?,
            };
            if out.len() > MAX_HEADER_BLOCK {
                let reason = format!("header block over {MAX_HEADER_BLOCK} bytes decompressed");
                return Err(invalid(frame, id, reason));
            }
            let full = out.len() == out.capacity();
            if pos >= input.len() && !full {
                return parse_header_block(&out, frame, id);
            }
            if full {
                out.reserve(out.len().min(MAX_HEADER_BLOCK + 1 - out.len()).max(256));
            } else if self.0.total_in() == in0 && out.len() == out0 {
                return Err(invalid(frame, id, "header block: zlib made no progress"));
            }
        }
    }
}

fn parse_header_block(mut b: &[u8], frame: &'static str, id: u32) -> Res<Headers> {
    fn take<'a>(b: &mut &'a [u8]) -> Option<&'a [u8]> {
        let n = b.get(..4)?.get_u32() as usize;
        let rest = b.get(4..)?;
        let s = rest.get(..n)?;
        *b = &rest[n..];
        Some(s)
    }
    let err = |reason: &str| invalid(frame, id, format!("header block: {reason}"));
    let count = b.get(..4).ok_or_else(|| err("truncated"))?.get_u32() as usize;
    b.advance(4);
    if count > MAX_HEADER_COUNT {
        return Err(err(&format!("{count} headers (limit {MAX_HEADER_COUNT})")));
    }
    let mut headers = Vec::with_capacity(count);
    for _ in 0..count {
        let name = take(&mut b).ok_or_else(|| err("truncated"))?;
        let value = take(&mut b).ok_or_else(|| err("truncated"))?;
        let name = match std::str::from_utf8(name) {
            Ok("") => return Err(err("empty header name")),
            Ok(name) => name.to_ascii_lowercase(),
            Err(_) => return Err(err("header name is not UTF-8")),
        };
        for v in String::from_utf8_lossy(value).split('\0') {
            if headers.len() == MAX_HEADER_COUNT {
                return Err(err("too many header values"));
            }
            headers.push((name.clone(), v.to_owned()));
        }
    }
    if !b.is_empty() {
        return Err(err("bytes after the last header"));
    }
    Ok(headers)
}

/// Uncompressed header block: names lowercased, values of one name joined by NUL.
fn build_header_block<S: AsRef<str>>(
    headers: &[(S, S)],
    frame: &'static str,
    id: u32,
) -> Res<Vec<u8>> {
    let mut groups: Headers = Vec::new();
    for (name, value) in headers {
        let (name, value) = (name.as_ref().to_ascii_lowercase(), value.as_ref());
        match groups.iter_mut().find(|(n, _)| *n == name) {
            _ if name.is_empty() => return Err(invalid(frame, id, "empty header name")),
            Some((_, v)) => *v = format!("{v}\0{value}"),
            None => groups.push((name, value.to_owned())),
        }
    }
    let mut raw = Vec::new();
    raw.put_u32(groups.len() as u32);
    for s in groups.iter().flat_map(|(n, v)| [n, v]) {
        if groups.len() > MAX_HEADER_COUNT || raw.len() + 4 + s.len() > MAX_HEADER_BLOCK {
            return Err(invalid(frame, id, "header block over the limits"));
        }
        raw.put_u32(s.len() as u32);
        raw.put_slice(s.as_bytes());
    }
    Ok(raw)
}

/// Writes frames; owns the zlib stream of our header blocks.
pub struct FrameEncoder {
    deflate: Compress,
    primed: bool,
}

impl Default for FrameEncoder {
    fn default() -> Self {
        let (deflate, primed) = (Compress::new(Compression::default(), true), false);
        Self { deflate, primed }
    }
}

impl FrameEncoder {
    /// Appends `frame` to `dst` (nothing is appended on error).
    pub fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Res<()> {
        let start = dst.len();
        let res = self.encode_inner(frame, dst, start);
        if res.is_err() {
            dst.truncate(start);
        }
        res
    }

    fn encode_inner(&mut self, f: &Frame, dst: &mut BytesMut, start: usize) -> Res<()> {
        dst.put_u64(0); // the frame header, filled in below
        let (word0, flags) = match f {
            Frame::Data { id, fin, data } => {
                dst.put_slice(data);
                (nonzero("DATA", *id & ID_MASK)?, u8::from(*fin))
            }
            Frame::SynStream {
                id,
                assoc,
                pri,
                slot,
                fin,
                uni,
                headers,
            } => {
                dst.put_u32(*id & ID_MASK);
                dst.put_u32(*assoc & ID_MASK);
                dst.put_u8((*pri & 7) << 5);
                dst.put_u8(*slot);
                let raw = build_header_block(headers, "SYN_STREAM", *id)?;
                self.deflate(&raw, "SYN_STREAM", *id, dst)?;
                (TYPE_SYN_STREAM.into(), u8::from(*fin) | u8::from(*uni) << 1)
            }
            Frame::SynReply { id, fin, headers } | Frame::Headers { id, fin, headers } => {
                let ty = match f {
                    Frame::SynReply { .. } => TYPE_SYN_REPLY,
                    _ => TYPE_HEADERS,
                };
                dst.put_u32(*id & ID_MASK);
                let raw = build_header_block(headers, type_name(ty), *id)?;
                self.deflate(&raw, type_name(ty), *id, dst)?;
                (ty.into(), u8::from(*fin))
            }
            Frame::RstStream { id, status } => {
                dst.put_u32(*id & ID_MASK);
                dst.put_u32(status.0);
                (TYPE_RST_STREAM.into(), 0)
            }
            Frame::Settings { clear, entries } => {
                dst.put_u32(entries.len() as u32);
                for (flags, id, value) in entries {
                    dst.put_u32(u32::from(*flags) << 24 | (id & 0xff_ffff));
                    dst.put_u32(*value);
                }
                (TYPE_SETTINGS.into(), u8::from(*clear))
            }
            Frame::Ping { id } => {
                dst.put_u32(*id);
                (TYPE_PING.into(), 0)
            }
            Frame::GoAway { last_good, status } => {
                dst.put_u32(*last_good & ID_MASK);
                dst.put_u32(status.0);
                (TYPE_GOAWAY.into(), 0)
            }
            Frame::WindowUpdate { id, delta } => {
                dst.put_u32(*id & ID_MASK);
                dst.put_u32(*delta & ID_MASK);
                (TYPE_WINDOW_UPDATE.into(), 0)
            }
            Frame::Unknown { ty, flags, payload } => {
                dst.put_slice(payload);
                (u32::from(*ty), *flags)
            }
        };
        let len = dst.len() - start - 8;
        if len > MAX_FRAME_LEN {
            let reason = format!("{len} bytes, over the {MAX_FRAME_LEN}-byte limit");
            return Err(invalid("outgoing", 0, reason));
        }
        let word0 = match f {
            Frame::Data { .. } => word0,
            _ => 0x8000_0000 | u32::from(VERSION) << 16 | word0,
        };
        let header = u64::from(word0) << 32 | u64::from(flags) << 24 | len as u64;
        dst[start..start + 8].copy_from_slice(&header.to_be_bytes());
        Ok(())
    }

    fn deflate(&mut self, raw: &[u8], frame: &'static str, id: u32, dst: &mut BytesMut) -> Res<()> {
        let zlib = |e: flate2::CompressError| invalid(frame, id, format!("header block: {e}"));
        if !self.primed {
            self.deflate.set_dictionary(DICTIONARY).map_err(zlib)?;
            self.primed = true;
        }
        let mut out = Vec::with_capacity(raw.len() / 2 + 64);
        let (mut pos, flush) = (0, FlushCompress::Sync);
        loop {
            let in0 = self.deflate.total_in();
            let res = self.deflate.compress_vec(&raw[pos..], &mut out, flush);
            res.map_err(zlib)?;
            pos += (self.deflate.total_in() - in0) as usize;
            // The sync flush is complete once zlib stops short of the output's end.
            if pos >= raw.len() && out.len() < out.capacity() {
                dst.put_slice(&out);
                return Ok(());
            }
            out.reserve(out.capacity().max(64));
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Bytes the writer may have queued; writers wait for room.
struct Budget(Mutex<(usize, bool, Vec<Waker>)>);

impl Budget {
    /// Grants 1 to `want` (> 0) bytes, or `None` once the connection is gone.
    fn poll_acquire(&self, cx: &mut Context<'_>, want: usize) -> Poll<Option<usize>> {
        let mut guard = lock(&self.0);
        let (avail, closed, waiters) = &mut *guard;
        if *closed {
            return Poll::Ready(None);
        }
        if *avail > 0 {
            let n = want.min(*avail);
            *avail -= n;
            return Poll::Ready(Some(n));
        }
        if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
            waiters.push(cx.waker().clone());
        }
        Poll::Pending
    }

    fn release(&self, n: usize, close: bool) {
        let mut guard = lock(&self.0);
        let (avail, closed, waiters) = &mut *guard;
        *avail += n;
        *closed |= close;
        waiters.drain(..).for_each(Waker::wake);
    }
}

enum Out {
    /// A frame, and the budget to give back once it is written.
    Frame(Frame, usize),
    /// Write GOAWAY (if a status is given) after what is queued, then close.
    Close(Option<GoAwayStatus>),
}

/// State shared by the driver task and the handles.
struct Conn {
    out: mpsc::UnboundedSender<Out>,
    budget: Budget,
    closing: AtomicBool,
    last_accepted: AtomicU32,
    close_req: Notify,
    handles: AtomicUsize,
    handles_gone: Notify,
}

impl Conn {
    /// Queues a frame without waiting: for frames bounded by the number of streams.
    fn send_now(&self, frame: Frame) {
        let _ = self.out.send(Out::Frame(frame, 0));
    }

    /// Queues a control frame once the writer has room.
    async fn send_control(&self, frame: Frame) -> Res<()> {
        let cost = std::future::poll_fn(|cx| self.budget.poll_acquire(cx, CONTROL_COST)).await;
        let msg = Out::Frame(frame, cost.ok_or(SpdyError::ConnectionClosed)?);
        self.out.send(msg).map_err(|_| SpdyError::ConnectionClosed)
    }
}

/// Keeps the driver alive; counted so that it can end when the application lets go.
struct Handle(Arc<Conn>);

impl Handle {
    fn new(conn: &Arc<Conn>) -> Self {
        conn.handles.fetch_add(1, SeqCst);
        Handle(conn.clone())
    }
}

impl Clone for Handle {
    fn clone(&self) -> Self {
        Handle::new(&self.0)
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        if self.0.handles.fetch_sub(1, SeqCst) == 1 {
            self.0.handles_gone.notify_one();
        }
    }
}

/// Per-stream state shared by the driver and the stream's handle.
#[derive(Default)]
struct StreamState {
    id: u32,
    recv: Mutex<Recv>,
    /// Signalled when the reader frees buffer space (or stops reading).
    room: Notify,
    fin_sent: AtomicBool,
    reset: AtomicBool,
}

#[derive(Default)]
struct Recv {
    chunks: VecDeque<Bytes>,
    buffered: usize,
    /// No more data will be delivered: FIN, RST, connection end, or nobody reads.
    eof: bool,
    waker: Option<Waker>,
    /// Bytes read but not yet given back to the client's window.
    unacked: usize,
}

impl StreamState {
    /// Ends delivery: the reader gets what is buffered (unless `discard`), then EOF.
    fn finish_recv(&self, discard: bool) {
        let mut r = lock(&self.recv);
        r.eof = true;
        if discard {
            (r.chunks, r.buffered) = (VecDeque::new(), 0);
        }
        if let Some(w) = r.waker.take() {
            w.wake();
        }
        drop(r);
        self.room.notify_one();
    }

    /// Both directions are over, or the stream was reset: the driver can forget it.
    fn done(&self) -> bool {
        self.reset.load(SeqCst) || (self.fin_sent.load(SeqCst) && lock(&self.recv).eof)
    }

    /// Hands `data` to the reader, waiting while its buffer is full.
    async fn deliver(&self, mut data: Bytes, fin: bool) {
        while !data.is_empty() {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            {
                let mut r = lock(&self.recv);
                let space = RECV_BUFFER.saturating_sub(r.buffered);
                if r.eof {
                    trace!(stream = self.id, "DATA after the stream's end dropped");
                    return;
                } else if space > 0 {
                    let chunk = data.split_to(space.min(data.len()));
                    r.buffered += chunk.len();
                    r.chunks.push_back(chunk);
                    if let Some(w) = r.waker.take() {
                        w.wake();
                    }
                    continue;
                }
            }
            trace!(stream = self.id, "buffer full, waiting for the reader");
            room.await;
        }
        if fin {
            self.finish_recv(false);
        }
    }
}

/// Drives one SPDY/3.1 connection (server side) over an upgraded HTTP connection.
#[derive(Clone)]
pub struct Session {
    h: Handle,
    closed: watch::Receiver<bool>,
}

impl Session {
    /// Starts the connection driver task on `io`. Returns the session handle and a
    /// receiver of the streams the client opens.
    pub fn server<T>(io: T) -> (Session, mpsc::Receiver<IncomingStream>)
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (out, out_rx) = mpsc::unbounded_channel();
        let conn = Arc::new(Conn {
            out,
            budget: Budget(Mutex::new((SEND_BUDGET, false, Vec::new()))),
            closing: AtomicBool::new(false),
            last_accepted: AtomicU32::new(0),
            close_req: Notify::new(),
            handles: AtomicUsize::new(0),
            handles_gone: Notify::new(),
        });
        let (in_tx, in_rx) = mpsc::channel(INCOMING_QUEUE);
        let (closed_tx, closed) = watch::channel(false);
        let h = Handle::new(&conn);
        tokio::spawn(drive(io, conn, out_rx, in_tx, closed_tx));
        (Session { h, closed }, in_rx)
    }

    /// Sends GOAWAY and closes the connection after queued frames are written.
    pub async fn close(&self) {
        let conn = &self.h.0;
        if !conn.closing.swap(true, SeqCst) {
            let _ = conn.out.send(Out::Close(Some(GoAwayStatus::OK)));
            conn.close_req.notify_one();
        }
        self.closed().await;
    }

    /// Resolves when the connection has ended (peer closed, error, or close()).
    pub async fn closed(&self) {
        let _ = self.closed.clone().wait_for(|closed| *closed).await;
    }
}

/// A stream the client opened, waiting for the application's answer.
pub struct IncomingStream {
    pub id: u32,
    /// The SYN_STREAM's headers.
    pub headers: Headers,
    /// The client's FIN on SYN_STREAM (it will send no data).
    pub fin: bool,
    inner: Option<(Arc<StreamState>, Handle)>,
}

impl IncomingStream {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let found = self
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name));
        found.map(|(_, v)| v.as_str())
    }

    /// Answers with SYN_REPLY (the given headers) and returns the stream.
    pub async fn accept(mut self, headers: &[(&str, &str)]) -> Res<Stream> {
        let (st, h) = self.inner.take().ok_or(SpdyError::ConnectionClosed)?;
        // From here on, dropping `stream` (error, cancellation) resets the stream.
        let stream = Stream { st, h };
        build_header_block(headers, "SYN_REPLY", self.id)?;
        if stream.h.0.closing.load(SeqCst) {
            return Err(SpdyError::ConnectionClosed);
        }
        let headers = headers.iter().map(|&(n, v)| (n.into(), v.into())).collect();
        let reply = Frame::SynReply {
            id: self.id,
            fin: false,
            headers,
        };
        stream.h.0.send_control(reply).await?;
        Ok(stream)
    }

    /// Refuses with RST_STREAM (status code as in SPDY/3: REFUSED_STREAM etc.).
    pub async fn reset(mut self, status: ResetStatus) {
        if let Some((st, h)) = self.inner.take() {
            reset_stream(&st, &h.0, status);
        }
    }
}

impl Drop for IncomingStream {
    fn drop(&mut self) {
        if let Some((st, h)) = self.inner.take() {
            reset_stream(&st, &h.0, ResetStatus::REFUSED_STREAM);
        }
    }
}

fn reset_stream(st: &StreamState, conn: &Conn, status: ResetStatus) {
    st.finish_recv(true);
    if !st.reset.swap(true, SeqCst) {
        conn.send_now(Frame::RstStream { id: st.id, status });
    }
}

/// One stream: reads the client's DATA (EOF at its FIN or RST, or when the connection
/// ends), writes DATA frames; `poll_shutdown` sends FIN. Works with `tokio::io::split`.
pub struct Stream {
    st: Arc<StreamState>,
    h: Handle,
}

impl Stream {
    pub fn id(&self) -> u32 {
        self.st.id
    }

    /// Sends RST_STREAM (after the DATA already written); reads then see EOF and writes fail.
    pub async fn reset(&self, status: ResetStatus) {
        reset_stream(&self.st, &self.h.0, status);
    }

    fn check_writable(&self) -> io::Result<()> {
        let (reset, closing) = (self.st.reset.load(SeqCst), self.h.0.closing.load(SeqCst));
        let what = match () {
            _ if reset => "was reset",
            _ if closing => "connection is closed",
            _ if self.st.fin_sent.load(SeqCst) => "was shut down",
            _ => return Ok(()),
        };
        let msg = format!("SPDY stream {what}");
        Err(io::Error::new(io::ErrorKind::BrokenPipe, msg))
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut guard = lock(&self.st.recv);
        let r = &mut *guard;
        if r.chunks.is_empty() && !r.eof {
            r.waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let mut n = 0;
        while let (true, Some(front)) = (buf.remaining() > 0, r.chunks.front_mut()) {
            let k = front.len().min(buf.remaining());
            buf.put_slice(&front[..k]);
            front.advance(k);
            if front.is_empty() {
                r.chunks.pop_front();
            }
            n += k;
        }
        r.buffered = r.buffered.saturating_sub(n);
        r.unacked += n;
        let update = r.unacked >= WINDOW_UPDATE_THRESHOLD && !r.eof;
        let (id, delta) = (self.st.id, r.unacked as u32);
        if update {
            r.unacked = 0;
        }
        drop(guard);
        self.st.room.notify_one();
        if update {
            self.h.0.send_now(Frame::WindowUpdate { id, delta });
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check_writable()?;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let conn = &self.h.0;
        let want = buf.len().min(MAX_DATA_CHUNK);
        let Some(n) = std::task::ready!(conn.budget.poll_acquire(cx, want)) else {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        };
        let (id, fin, data) = (self.st.id, false, Bytes::copy_from_slice(&buf[..n]));
        match conn.out.send(Out::Frame(Frame::Data { id, fin, data }, n)) {
            Ok(()) => Poll::Ready(Ok(n)),
            Err(_) => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.st.fin_sent.load(SeqCst) {
            self.check_writable()?;
            self.st.fin_sent.store(true, SeqCst);
            let (id, fin, data) = (self.st.id, true, Bytes::new());
            self.h.0.send_now(Frame::Data { id, fin, data });
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if self.st.fin_sent.load(SeqCst) && lock(&self.st.recv).eof {
            self.st.reset.store(true, SeqCst); // closed both ways: just forget it
            self.st.finish_recv(true);
        } else {
            reset_stream(&self.st, &self.h.0, ResetStatus::CANCEL);
        }
    }
}

/// The reading side of the connection.
struct Reader<'a> {
    conn: &'a Arc<Conn>,
    streams: &'a mut HashMap<u32, Arc<StreamState>>,
    incoming: &'a mpsc::Sender<IncomingStream>,
    last_id: u32,
    goaway_received: bool,
    session_unacked: usize,
}

impl Reader<'_> {
    async fn run<R: AsyncRead + Unpin>(&mut self, mut rd: R) -> Res<()> {
        let (mut dec, mut buf) = (FrameDecoder::default(), BytesMut::with_capacity(16 * 1024));
        loop {
            while let Some(frame) = dec.decode(&mut buf)? {
                self.handle(frame).await?;
            }
            buf.reserve(8 * 1024);
            if rd.read_buf(&mut buf).await? == 0 {
                return if buf.is_empty() {
                    Ok(())
                } else {
                    Err(SpdyError::Truncated)
                };
            }
        }
    }

    async fn handle(&mut self, frame: Frame) -> Res<()> {
        match frame {
            Frame::Data { id, fin, data } => {
                self.session_unacked += data.len();
                if self.session_unacked >= WINDOW_UPDATE_THRESHOLD {
                    let delta = std::mem::take(&mut self.session_unacked) as u32;
                    let update = Frame::WindowUpdate { id: 0, delta };
                    self.conn.send_control(update).await?;
                }
                let Some(st) = self.streams.get(&id).cloned() else {
                    trace!(stream = id, "DATA for a stream not open dropped");
                    return Ok(());
                };
                st.deliver(data, fin).await;
                if st.done() {
                    self.streams.remove(&id);
                }
            }
            Frame::SynStream {
                id, fin, headers, ..
            } => {
                trace!(stream = id, fin, ?headers, "SYN_STREAM");
                let status = if id % 2 == 0 || id <= self.last_id {
                    warn!(stream = id, "SYN_STREAM with a bad stream id");
                    ResetStatus::PROTOCOL_ERROR
                } else {
                    self.last_id = id;
                    self.streams.retain(|_, st| !st.done());
                    if self.goaway_received
                        || self.conn.closing.load(SeqCst)
                        || self.incoming.is_closed()
                        || self.streams.len() >= MAX_STREAMS
                    {
                        debug!(stream = id, "refusing stream");
                        ResetStatus::REFUSED_STREAM
                    } else {
                        self.conn.last_accepted.store(id, SeqCst);
                        let st = Arc::new(StreamState {
                            id,
                            ..Default::default()
                        });
                        if fin {
                            st.finish_recv(false);
                        }
                        self.streams.insert(id, st.clone());
                        let inner = Some((st, Handle::new(self.conn)));
                        // If nobody receives it, dropping it refuses the stream.
                        let incoming = IncomingStream {
                            id,
                            headers,
                            fin,
                            inner,
                        };
                        let _ = self.incoming.send(incoming).await;
                        return Ok(());
                    }
                };
                let reset = Frame::RstStream { id, status };
                self.conn.send_control(reset).await?;
            }
            Frame::RstStream { id, status } => {
                debug!(stream = id, status = status.0, "client reset stream");
                if let Some(st) = self.streams.remove(&id) {
                    st.reset.store(true, SeqCst);
                    st.finish_recv(false);
                }
            }
            // Client pings are odd; an even one would answer ours (we send none).
            Frame::Ping { id } if id % 2 == 1 => self.conn.send_control(Frame::Ping { id }).await?,
            Frame::GoAway { last_good, status } => {
                debug!(last_good, status = status.0, "client sent GOAWAY");
                self.goaway_received = true;
            }
            // Not acted upon: see "Flow control" in the module documentation.
            Frame::Settings { entries, .. } => {
                let window = entries.iter().find(|e| e.1 == SETTINGS_INITIAL_WINDOW_SIZE);
                debug!(?entries, ?window, "client SETTINGS ignored");
            }
            other => trace!(frame = ?other, "frame ignored"),
        }
        Ok(())
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut wr: W,
    conn: &Conn,
    mut rx: mpsc::UnboundedReceiver<Out>,
) -> Res<()> {
    let (mut enc, mut buf) = (FrameEncoder::default(), BytesMut::with_capacity(64 * 1024));
    while let Some(first) = rx.recv().await {
        let (mut next, mut release, mut close) = (Some(first), 0, false);
        while let Some(msg) = next.take() {
            match msg {
                Out::Frame(frame, cost) => {
                    release += cost;
                    enc.encode(&frame, &mut buf)?;
                }
                Out::Close(status) => {
                    if let Some(status) = status {
                        let last_good = conn.last_accepted.load(SeqCst);
                        enc.encode(&Frame::GoAway { last_good, status }, &mut buf)?;
                    }
                    close = true;
                    break;
                }
            }
            if buf.len() < WRITE_BATCH {
                next = rx.try_recv().ok();
            }
        }
        wr.write_all(&buf).await?;
        wr.flush().await?;
        buf.clear();
        conn.budget.release(release, false);
        if close {
            wr.shutdown().await?;
            break;
        }
    }
    Ok(())
}

/// Resolves once no handle is left and nobody receives incoming streams.
async fn abandoned(conn: &Conn, incoming: &mpsc::Sender<IncomingStream>) {
    loop {
        let gone = conn.handles_gone.notified();
        match (conn.handles.load(SeqCst), incoming.is_closed()) {
            (0, true) => return,
            (_, true) => gone.await,
            _ => tokio::select! {
                () = gone => {}
                () = incoming.closed() => {}
            },
        }
    }
}

async fn drive<T>(
    io: T,
    conn: Arc<Conn>,
    out_rx: mpsc::UnboundedReceiver<Out>,
    incoming: mpsc::Sender<IncomingStream>,
    closed_tx: watch::Sender<bool>,
) where
    T: AsyncRead + AsyncWrite + Send + 'static,
{
    let (rd, wr) = tokio::io::split(io);
    let mut streams = HashMap::new();
    {
        let mut reader = Reader {
            conn: &conn,
            streams: &mut streams,
            incoming: &incoming,
            last_id: 0,
            goaway_received: false,
            session_unacked: 0,
        };
        let (read, write) = (reader.run(rd), write_loop(wr, &conn, out_rx));
        let abandon = abandoned(&conn, &incoming);
        tokio::pin!(read, write, abandon);
        // Whether to wait for the writer, and the Close to queue for it (if not queued).
        let (wait, queue) = tokio::select! {
            res = &mut write => {
                if let Err(e) = res {
                    debug!(error = %e, "SPDY write failed");
                }
                (false, None)
            }
            res = &mut read => (true, Some(match res {
                Ok(()) => None,
                Err(SpdyError::Io(e)) => {
                    debug!(error = %e, "SPDY read failed");
                    None
                }
                Err(e) => {
                    warn!(error = %e, "SPDY protocol error; closing the connection");
                    Some(GoAwayStatus::PROTOCOL_ERROR)
                }
            })),
            () = conn.close_req.notified() => (true, None),
            () = &mut abandon => (true, Some(Some(GoAwayStatus::OK))),
        };
        if wait {
            conn.closing.store(true, SeqCst);
            if let Some(goaway) = queue {
                let _ = conn.out.send(Out::Close(goaway));
            }
            match tokio::time::timeout(CLOSE_GRACE, &mut write).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!(error = %e, "SPDY write failed while closing"),
                Err(_) => debug!("SPDY: queued frames not written in time; dropped"),
            }
        }
    }
    conn.closing.store(true, SeqCst);
    conn.budget.release(0, true);
    streams.values().for_each(|st| st.finish_recv(false));
    drop(incoming);
    closed_tx.send_replace(true);
}

/// The SPDY/3 header compression dictionary (SPDY/3 section 2.6.10.1).
const DICTIONARY: &[u8; 1423] = b"\
    \x00\x00\x00\x07options\x00\x00\x00\x04head\x00\x00\x00\x04post\x00\x00\x00\x03put\x00\
    \x00\x00\x06delete\x00\x00\x00\x05trace\x00\x00\x00\x06accept\x00\x00\x00\x0eaccept-char\
    set\x00\x00\x00\x0faccept-encoding\x00\x00\x00\x0faccept-language\x00\x00\x00\x0daccept-\
    ranges\x00\x00\x00\x03age\x00\x00\x00\x05allow\x00\x00\x00\x0dauthorization\x00\x00\x00\
    \x0dcache-control\x00\x00\x00\x0aconnection\x00\x00\x00\x0ccontent-base\x00\x00\x00\x10c\
    ontent-encoding\x00\x00\x00\x10content-language\x00\x00\x00\x0econtent-length\x00\x00\
    \x00\x10content-location\x00\x00\x00\x0bcontent-md5\x00\x00\x00\x0dcontent-range\x00\x00\
    \x00\x0ccontent-type\x00\x00\x00\x04date\x00\x00\x00\x04etag\x00\x00\x00\x06expect\x00\
    \x00\x00\x07expires\x00\x00\x00\x04from\x00\x00\x00\x04host\x00\x00\x00\x08if-match\x00\
    \x00\x00\x11if-modified-since\x00\x00\x00\x0dif-none-match\x00\x00\x00\x08if-range\x00\
    \x00\x00\x13if-unmodified-since\x00\x00\x00\x0dlast-modified\x00\x00\x00\x08location\x00\
    \x00\x00\x0cmax-forwards\x00\x00\x00\x06pragma\x00\x00\x00\x12proxy-authenticate\x00\x00\
    \x00\x13proxy-authorization\x00\x00\x00\x05range\x00\x00\x00\x07referer\x00\x00\x00\x0br\
    etry-after\x00\x00\x00\x06server\x00\x00\x00\x02te\x00\x00\x00\x07trailer\x00\x00\x00\
    \x11transfer-encoding\x00\x00\x00\x07upgrade\x00\x00\x00\x0auser-agent\x00\x00\x00\x04va\
    ry\x00\x00\x00\x03via\x00\x00\x00\x07warning\x00\x00\x00\x10www-authenticate\x00\x00\x00\
    \x06method\x00\x00\x00\x03get\x00\x00\x00\x06status\x00\x00\x00\x06200 OK\x00\x00\x00\
    \x07version\x00\x00\x00\x08HTTP/1.1\x00\x00\x00\x03url\x00\x00\x00\x06public\x00\x00\x00\
    \x0aset-cookie\x00\x00\x00\x0akeep-alive\x00\x00\x00\x06origin10010120120220520630030230\
    3304305306307402405406407408409410411412413414415416417502504505203 Non-Authoritative In\
    formation204 No Content301 Moved Permanently400 Bad Request401 Unauthorized403 Forbidden\
    404 Not Found500 Internal Server Error501 Not Implemented503 Service UnavailableJan Feb \
    Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT\
    chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,te\
    xt/plain,text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-\
    8859-1,utf-,*,enq=0.";

#[cfg(test)]
mod tests {
    use super::*;
    use io::ErrorKind::BrokenPipe;
    use tokio::io::{DuplexStream, ReadHalf, WriteHalf};
    use tokio::time::timeout;
    use {GoAwayStatus as G, ResetStatus as R};

    const T: Duration = Duration::from_secs(30);

    fn hs(pairs: &[(&str, &str)]) -> Headers {
        pairs.iter().map(|&(n, v)| (n.into(), v.into())).collect()
    }

    fn syn(id: u32, headers: &[(&str, &str)]) -> Frame {
        let (headers, fin, uni) = (hs(headers), false, false);
        Frame::SynStream {
            id,
            assoc: 0,
            pri: 0,
            slot: 0,
            fin,
            uni,
            headers,
        }
    }

    fn reply(id: u32, headers: &[(&str, &str)]) -> Frame {
        let (fin, headers) = (false, hs(headers));
        Frame::SynReply { id, fin, headers }
    }

    fn data(id: u32, d: &[u8], fin: bool) -> Frame {
        let data = Bytes::copy_from_slice(d);
        Frame::Data { id, fin, data }
    }

    fn rst(id: u32, status: ResetStatus) -> Frame {
        Frame::RstStream { id, status }
    }

    fn goaway(last_good: u32, status: GoAwayStatus) -> Frame {
        Frame::GoAway { last_good, status }
    }

    fn encode_all(frames: &[Frame]) -> BytesMut {
        let (mut enc, mut buf) = (FrameEncoder::default(), BytesMut::new());
        frames.iter().for_each(|f| enc.encode(f, &mut buf).unwrap());
        buf
    }

    fn decode_all(mut buf: BytesMut) -> Vec<Frame> {
        let (mut dec, mut out) = (FrameDecoder::default(), Vec::new());
        while let Some(f) = dec.decode(&mut buf).unwrap() {
            out.push(f);
        }
        assert!(buf.is_empty(), "{} bytes left", buf.len());
        out
    }

    /// The error decoding `bytes` gives, as text.
    fn decode_err(bytes: &[u8]) -> String {
        let mut dec = FrameDecoder::default();
        dec.decode(&mut bytes.into()).unwrap_err().to_string()
    }

    fn unhex(hex: &str) -> Vec<u8> {
        let byte = |i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap();
        (0..hex.len()).step_by(2).map(byte).collect()
    }

    /// A SYN_STREAM for `id` whose header block is `raw`, compressed as a client would.
    fn syn_with_block(id: u8, raw: &[u8]) -> Vec<u8> {
        let mut payload = BytesMut::from(&[0, 0, 0, id, 0, 0, 0, 0, 0, 0][..]);
        let mut enc = FrameEncoder::default();
        enc.deflate(raw, "", 1, &mut payload).unwrap();
        let len = (payload.len() as u32).to_be_bytes();
        [&[0x80, 3, 0, 1], &len[..], &payload].concat()
    }

    #[test]
    fn codec_round_trips_every_frame_type() {
        let headers = hs(&[("a", "1"), ("a", "2"), ("b", "")]);
        let frames = vec![
            syn(1, &[("streamtype", "stdout"), ("port", "8080")]),
            Frame::SynStream {
                id: 3,
                assoc: 1,
                pri: 7,
                slot: 2,
                fin: true,
                uni: true,
                headers: headers.clone(),
            },
            reply(1, &[]),
            Frame::Headers {
                id: 3,
                fin: true,
                headers,
            },
            rst(5, R::CANCEL),
            Frame::Settings {
                clear: true,
                entries: vec![(1, 7, 1 << 20), (0, 4, 9)],
            },
            Frame::Ping { id: 1 },
            goaway(9, G::PROTOCOL_ERROR),
            Frame::WindowUpdate {
                id: 0,
                delta: 65536,
            },
            data(1, b"hello", false),
            data(1, b"", true),
            Frame::Unknown {
                ty: 10,
                flags: 0,
                payload: Bytes::from_static(b"cred"),
            },
        ];
        let bytes = encode_all(&frames);
        assert_eq!(decode_all(bytes.clone()), frames);
        // Fed one byte at a time, the decoder waits for whole frames.
        let (mut dec, mut buf, mut out) = (FrameDecoder::default(), BytesMut::new(), vec![]);
        for b in bytes {
            buf.put_u8(b);
            out.extend(dec.decode(&mut buf).unwrap());
        }
        assert_eq!(out, frames);
        // Names go out lowercase, repeated names as one NUL-joined value.
        let raw = build_header_block(&hs(&[("X-A", "1"), ("x-a", "2")]), "", 1);
        assert_eq!(raw.unwrap(), b"\0\0\0\x01\0\0\0\x03x-a\0\0\0\x031\x002");
        let sent = decode_all(encode_all(&[reply(1, &[("X-A", "1"), ("x-a", "2")])]));
        assert_eq!(sent, [reply(1, &[("x-a", "1"), ("x-a", "2")])]);
    }

    /// Two SYN_STREAMs written by github.com/moby/spdystream v0.5.1's framer (Go
    /// compress/zlib, BestCompression, SPDY/3 dictionary, one context for both).
    const GO_SYN_STREAMS: &str = "80030001000000290000000100000000000078f9e3c6a7c26260606004a7b392\
        a2d4c45c6851c29a0a0a6800000000ffff800300010000001600000003000000000000c22a052a651201000000ffff";

    #[test]
    fn codec_decodes_header_blocks_compressed_by_spdystream() {
        let bytes = unhex(GO_SYN_STREAMS);
        let want = [
            syn(1, &[("streamtype", "error")]),
            syn(3, &[("streamtype", "data")]),
        ];
        assert_eq!(decode_all(bytes[..].into()), want);
        // Our first block names the same dictionary (its Adler-32 after the zlib header).
        assert_eq!(encode_all(&want)[20..24], bytes[20..24]);
    }

    #[test]
    fn codec_rejects_malformed_frames() {
        // Incomplete is not an error: the decoder waits for the rest.
        let mut partial = BytesMut::from(&[0x80, 3, 0, 3, 0, 0, 0, 8, 0, 0, 0, 1][..]);
        assert_eq!(FrameDecoder::default().decode(&mut partial).unwrap(), None);
        // Frame (hex), then what the error must say.
        let frames = "\
            800300030000000400000001 RST_STREAM frame (stream 0): payload of 4 bytes
            8003000100200000 SYN_STREAM frame (stream 0): 2097152 bytes, over the 1048576-byte
            800200060000000400000001 unsupported SPDY version 2
            0000000000000000 DATA frame (stream 0): stream id 0
            800300040000000c000000020000000700000001 SETTINGS frame (stream 0): entry count
            8003000800000006000000010102 HEADERS frame (stream 1): header block: ";
        for (bytes, want) in frames.lines().filter_map(|l| l.trim().split_once(' ')) {
            let err = decode_err(&unhex(bytes));
            assert!(err.contains(want), "{err:?} should contain {want:?}");
        }
        // SYN_STREAMs: stream id, header block (hex, before compression), the error.
        let blocks = "\
            0 00000000 SYN_STREAM frame (stream 0): stream id 0
            1 000003e9 (stream 1): header block: 1001 headers (limit 1000)
            1 0000000100000001 (stream 1): header block: truncated
            1 000000010000000000000000 (stream 1): header block: empty header name";
        for line in blocks.lines() {
            let [id, block, want] = line.trim().splitn(3, ' ').collect::<Vec<_>>()[..] else {
                panic!("{line}")
            };
            let err = decode_err(&syn_with_block(id.parse().unwrap(), &unhex(block)));
            assert!(err.contains(want), "{err:?} should contain {want:?}");
        }
        let mut huge = vec![0, 0, 0, 1, 0, 0, 0, 1, b'a', 0, 0x20, 0, 0];
        huge.resize(huge.len() + (2 << 20), b'x');
        let err = decode_err(&syn_with_block(1, &huge));
        assert!(
            err.contains("header block over 1048576 bytes decompressed"),
            "{err}"
        );
        // An unknown control type is returned (the session skips it), not an error.
        let unknown = decode_all(BytesMut::from(&[0x80, 3, 0, 0x42, 0, 0, 0, 2, 9, 9][..]));
        assert!(matches!(unknown[..], [Frame::Unknown { ty: 0x42, .. }]));
        // The encoder refuses what it cannot represent, and writes nothing then.
        let (mut out, too_big) = (BytesMut::new(), data(1, &vec![0; MAX_FRAME_LEN + 1], false));
        assert!(FrameEncoder::default().encode(&too_big, &mut out).is_err() && out.is_empty());
    }

    /// The test client: frames out, and frames in.
    struct Tx(FrameEncoder, WriteHalf<DuplexStream>);
    struct Rx(FrameDecoder, ReadHalf<DuplexStream>, BytesMut);

    impl Tx {
        async fn send(&mut self, f: Frame) {
            let mut b = BytesMut::new();
            self.0.encode(&f, &mut b).unwrap();
            self.1.write_all(&b).await.unwrap();
        }
    }

    impl Rx {
        async fn next(&mut self) -> Option<Frame> {
            loop {
                if let Some(f) = self.0.decode(&mut self.2).unwrap() {
                    return Some(f);
                }
                if self.1.read_buf(&mut self.2).await.unwrap_or(0) == 0 {
                    return None;
                }
            }
        }

        /// The next frame that is not a WINDOW_UPDATE (None: connection closed).
        async fn expect(&mut self) -> Option<Frame> {
            let next = async {
                loop {
                    match self.next().await {
                        Some(Frame::WindowUpdate { .. }) => {}
                        other => return other,
                    }
                }
            };
            timeout(T, next).await.expect("no frame came")
        }

        async fn want(&mut self, frame: Frame) {
            assert_eq!(self.expect().await, Some(frame));
        }

        async fn want_eof(&mut self) {
            assert_eq!(self.expect().await, None);
        }
    }

    fn start() -> (Session, mpsc::Receiver<IncomingStream>, Tx, Rx) {
        let (server, client) = tokio::io::duplex(64 * 1024);
        let (session, incoming) = Session::server(server);
        let (rd, wr) = tokio::io::split(client);
        let rx = Rx(FrameDecoder::default(), rd, BytesMut::new());
        (session, incoming, Tx(FrameEncoder::default(), wr), rx)
    }

    async fn open(
        tx: &mut Tx,
        rx: &mut Rx,
        inc: &mut mpsc::Receiver<IncomingStream>,
        id: u32,
    ) -> Stream {
        tx.send(syn(id, &[("streamtype", "stdout")])).await;
        let stream = inc.recv().await.unwrap().accept(&[]).await.unwrap();
        rx.want(reply(id, &[])).await;
        stream
    }

    /// Asserts that the stream reads EOF and that writing to it fails.
    async fn assert_ended(st: &mut Stream) {
        let read = timeout(T, st.read(&mut [0; 8])).await.unwrap();
        assert_eq!(read.unwrap(), 0);
        assert_eq!(st.write(b"x").await.unwrap_err().kind(), BrokenPipe);
    }

    fn pattern(from: usize, n: usize) -> Vec<u8> {
        (from..from + n).map(|i| (i % 251) as u8).collect()
    }

    #[tokio::test]
    async fn stream_echo_with_headers_and_fin() {
        let (_session, mut inc, mut tx, mut rx) = start();
        tx.send(syn(1, &[("StreamType", "stdin"), ("requestid", "7")]))
            .await;
        let is = inc.recv().await.unwrap();
        let got = (
            is.id,
            is.fin,
            is.header("streamtype"),
            is.header("RequestID"),
        );
        assert_eq!(got, (1, false, Some("stdin"), Some("7")));
        let mut st = is.accept(&[("X-Reply", "ok")]).await.unwrap();
        rx.want(reply(1, &[("x-reply", "ok")])).await;
        tx.send(data(1, b"hello", false)).await;
        tx.send(data(1, b" world", true)).await;
        let mut got = Vec::new();
        st.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello world");
        st.write_all(&got).await.unwrap();
        st.shutdown().await.unwrap();
        rx.want(data(1, b"hello world", false)).await;
        rx.want(data(1, b"", true)).await;
        assert_ended(&mut st).await;
    }

    #[tokio::test]
    async fn pings_echoed_bad_stream_ids_reset_other_frames_ignored() {
        let (_session, mut inc, mut tx, mut rx) = start();
        tx.send(Frame::Ping { id: 2 }).await; // the answer to a server ping: not echoed
        tx.send(Frame::Ping { id: 1 }).await;
        rx.want(Frame::Ping { id: 1 }).await;
        tx.send(Frame::WindowUpdate { id: 0, delta: 1000 }).await;
        tx.send(Frame::Settings {
            clear: false,
            entries: vec![(0, 7, 1)],
        })
        .await;
        tx.send(Frame::Unknown {
            ty: 10,
            flags: 0,
            payload: Bytes::new(),
        })
        .await;
        tx.send(syn(2, &[])).await; // client streams are odd
        rx.want(rst(2, R::PROTOCOL_ERROR)).await;
        let _st = open(&mut tx, &mut rx, &mut inc, 5).await;
        tx.send(syn(3, &[])).await; // and increasing
        rx.want(rst(3, R::PROTOCOL_ERROR)).await;
        tx.send(Frame::Ping { id: 3 }).await;
        rx.want(Frame::Ping { id: 3 }).await;
    }

    #[tokio::test]
    async fn resets_from_either_side() {
        let (_session, mut inc, mut tx, mut rx) = start();
        let mut st = open(&mut tx, &mut rx, &mut inc, 1).await;
        tx.send(rst(1, R::CANCEL)).await;
        assert_ended(&mut st).await;
        tx.send(syn(3, &[])).await;
        inc.recv().await.unwrap().reset(R::REFUSED_STREAM).await;
        rx.want(rst(3, R::REFUSED_STREAM)).await;
        tx.send(syn(5, &[])).await;
        drop(inc.recv().await.unwrap());
        rx.want(rst(5, R::REFUSED_STREAM)).await;
        drop(open(&mut tx, &mut rx, &mut inc, 7).await);
        rx.want(rst(7, R::CANCEL)).await;
        let mut st = open(&mut tx, &mut rx, &mut inc, 9).await;
        st.write_all(b"partial").await.unwrap();
        st.reset(R::INTERNAL_ERROR).await;
        rx.want(data(9, b"partial", false)).await;
        rx.want(rst(9, R::INTERNAL_ERROR)).await;
        assert_ended(&mut st).await;
        // Closed both ways, a dropped stream sends nothing more.
        let mut st = open(&mut tx, &mut rx, &mut inc, 11).await;
        tx.send(data(11, b"", true)).await;
        assert_eq!(st.read(&mut [0; 4]).await.unwrap(), 0);
        st.shutdown().await.unwrap();
        drop(st);
        tx.send(Frame::Ping { id: 1 }).await;
        rx.want(data(11, b"", true)).await;
        rx.want(Frame::Ping { id: 1 }).await;
    }

    #[tokio::test]
    async fn close_sends_queued_data_then_goaway() {
        let (session, mut inc, mut tx, mut rx) = start();
        let mut st = open(&mut tx, &mut rx, &mut inc, 1).await;
        st.write_all(b"bye").await.unwrap();
        timeout(T, session.close()).await.unwrap();
        timeout(T, session.closed()).await.unwrap();
        rx.want(data(1, b"bye", false)).await;
        rx.want(goaway(1, G::OK)).await;
        rx.want_eof().await;
        assert_ended(&mut st).await;
        assert!(inc.recv().await.is_none());
    }

    #[tokio::test]
    async fn client_goaway_refuses_new_streams_until_it_disconnects() {
        let (session, mut inc, mut tx, mut rx) = start();
        let mut st = open(&mut tx, &mut rx, &mut inc, 1).await;
        tx.send(goaway(0, G::OK)).await;
        tx.send(syn(3, &[])).await;
        rx.want(rst(3, R::REFUSED_STREAM)).await;
        tx.send(data(1, b"still open", false)).await;
        let mut buf = [0; 10];
        st.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"still open");
        drop((tx, rx));
        timeout(T, session.closed()).await.unwrap();
        assert_ended(&mut st).await;
    }

    #[tokio::test]
    async fn protocol_error_ends_the_session_with_goaway() {
        let (session, mut inc, mut tx, mut rx) = start();
        let mut st = open(&mut tx, &mut rx, &mut inc, 1).await;
        let bad_rst = [0x80, 3, 0, 3, 0, 0, 0, 4, 0, 0, 0, 1];
        tx.1.write_all(&bad_rst).await.unwrap();
        rx.want(goaway(1, G::PROTOCOL_ERROR)).await;
        rx.want_eof().await;
        timeout(T, session.closed()).await.unwrap();
        assert_ended(&mut st).await;
    }

    #[tokio::test]
    async fn dropping_every_handle_ends_the_driver() {
        let (session, mut inc, mut tx, mut rx) = start();
        let st = open(&mut tx, &mut rx, &mut inc, 1).await;
        drop((session, inc));
        tx.send(Frame::Ping { id: 1 }).await;
        rx.want(Frame::Ping { id: 1 }).await;
        drop(st);
        rx.want(rst(1, R::CANCEL)).await;
        rx.want(goaway(1, G::OK)).await;
        rx.want_eof().await;
    }

    #[tokio::test]
    async fn a_stream_nobody_reads_does_not_hold_up_others() {
        let (_session, mut inc, mut tx, mut rx) = start();
        let _unread = open(&mut tx, &mut rx, &mut inc, 1).await;
        let mut other = open(&mut tx, &mut rx, &mut inc, 3).await;
        tx.send(data(1, &[0; DEFAULT_WINDOW as usize], false)).await; // a full window
        tx.send(data(3, b"through", true)).await;
        let mut got = Vec::new();
        timeout(T, other.read_to_end(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, b"through");
    }

    /// Accepts `n` streams and echoes each back.
    fn echo_server(mut inc: mpsc::Receiver<IncomingStream>, n: u32) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut echoes = Vec::new();
            for _ in 0..n {
                let st = inc.recv().await.unwrap().accept(&[]).await.unwrap();
                echoes.push(tokio::spawn(async move {
                    let (mut r, mut w) = tokio::io::split(st);
                    tokio::io::copy(&mut r, &mut w).await.unwrap();
                    w.shutdown().await.unwrap();
                }));
            }
            for e in echoes {
                e.await.unwrap();
            }
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_streams_from_a_client_that_ignores_windows() {
        const STREAMS: u32 = 20;
        const EACH: usize = 300 * 1024; // more than a stream's buffer
        let (_session, inc, mut tx, mut rx) = start();
        let server = echo_server(inc, STREAMS);
        // Like spdystream: 32 KiB writes (io.Copy), with no regard for windows.
        let client = tokio::spawn(async move {
            for i in 0..STREAMS {
                tx.send(syn(2 * i + 1, &[("streamtype", "data")])).await;
            }
            for off in (0..EACH).step_by(32 * 1024) {
                let n = (EACH - off).min(32 * 1024);
                for i in 0..STREAMS {
                    let chunk = pattern(off + i as usize, n);
                    tx.send(data(2 * i + 1, &chunk, off + n == EACH)).await;
                }
            }
            tx
        });
        let (mut got, mut fins) = (HashMap::<u32, Vec<u8>>::new(), 0);
        while fins < STREAMS {
            if let Some(Frame::Data { id, fin, data }) = rx.expect().await {
                got.entry(id).or_default().extend_from_slice(&data);
                fins += u32::from(fin);
            }
        }
        for i in 0..STREAMS {
            assert!(
                got[&(2 * i + 1)] == pattern(i as usize, EACH),
                "stream {}",
                2 * i + 1
            );
        }
        timeout(T, server).await.unwrap().unwrap();
        let _tx = client.await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn large_transfer_with_a_flow_controlled_client() {
        const TOTAL: usize = 8 << 20;
        let (_session, mut inc, mut tx, mut rx) = start();
        tx.send(syn(1, &[("streamtype", "stdin")])).await;
        let server = tokio::spawn(async move {
            let st = inc.recv().await.unwrap().accept(&[]).await.unwrap();
            let (mut r, mut w) = tokio::io::split(st);
            let writer = tokio::spawn(async move {
                for off in (0..TOTAL).step_by(100_000) {
                    let chunk = pattern(off, (TOTAL - off).min(100_000));
                    w.write_all(&chunk).await.unwrap();
                }
                w.shutdown().await.unwrap();
            });
            let mut got = Vec::new();
            r.read_to_end(&mut got).await.unwrap();
            writer.await.unwrap();
            got == pattern(0, TOTAL)
        });
        // The client sends only within its windows, as SPDY/3.1 requires.
        let (updates_tx, mut updates) = mpsc::unbounded_channel::<(u32, u32)>();
        let client = tokio::spawn(async move {
            let (mut windows, mut sent) = ([65536i64; 2], 0);
            while sent < TOTAL {
                while windows[0].min(windows[1]) <= 0 {
                    let (id, delta) = updates.recv().await.unwrap();
                    windows[usize::from(id != 0)] += i64::from(delta);
                }
                let n = (TOTAL - sent)
                    .min(16 * 1024)
                    .min(windows[0].min(windows[1]) as usize);
                tx.send(data(1, &pattern(sent, n), sent + n == TOTAL)).await;
                windows.iter_mut().for_each(|w| *w -= n as i64);
                sent += n;
            }
        });
        // Reads the download, handing WINDOW_UPDATEs to the uploader all along.
        let (done_tx, done) = tokio::sync::oneshot::channel();
        let reader = tokio::spawn(async move {
            let (mut got, mut done_tx) = (Vec::with_capacity(TOTAL), Some(done_tx));
            while let Some(frame) = rx.next().await {
                match frame {
                    Frame::WindowUpdate { id, delta } => drop(updates_tx.send((id, delta))),
                    Frame::Data { fin, data, .. } => {
                        got.extend_from_slice(&data);
                        if let Some(done) = done_tx.take_if(|_| fin) {
                            done.send(std::mem::take(&mut got)).unwrap();
                        }
                    }
                    _ => {}
                }
            }
        });
        let got = timeout(T, done).await.expect("download stalled").unwrap();
        assert!(got == pattern(0, TOTAL));
        timeout(T, client).await.expect("upload stalled").unwrap();
        assert!(server.await.unwrap(), "upload corrupted");
        reader.abort();
    }
}
