//! CRI container log lines, as kubelet reads them:
//! `<RFC3339Nano UTC timestamp> <stdout|stderr> <F|P> <text>\n`.
//!
//! `F` marks a full line (the newline ended it and is not part of `text`); `P` a partial
//! one: a line longer than the maximum is cut into chunks of exactly `max_line` bytes
//! tagged `P`, and its last chunk is tagged `F`. Text still buffered when a stream ends
//! is written as `F` (containerd does the same). Each line goes out in one `write`.

use std::io::{self, Write};

use chrono::{DateTime, SecondsFormat, Utc};

/// Which of the container's output streams a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// `2026-11-23T10:00:00.123456789Z`: always 9 fractional digits, as containerd writes
/// (Go's RFC3339Nano would trim trailing zeros; fixed width sorts and parses alike).
pub fn format_timestamp(time: &DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

/// Splits two output streams into CRI log lines and writes them to `sink`.
pub struct CriLogWriter<W: Write> {
    sink: W,
    max_line: usize,
    stdout_pending: Vec<u8>,
    stderr_pending: Vec<u8>,
    // Reused for formatting so each line is one write without a fresh allocation.
    scratch: Vec<u8>,
    /// Bytes in the sink (its size when it was set, plus what was written since).
    size: u64,
    /// With a size limit (Docker's `max-size`), lines stop going out once the sink
    /// holds this much: [`CriLogWriter::full`] says so, the caller rotates.
    limit: Option<u64>,
}

impl<W: Write> CriLogWriter<W> {
    /// `max_line` is clamped to at least 1 byte.
    pub fn new(sink: W, max_line: usize) -> Self {
        Self {
            sink,
            max_line: max_line.max(1),
            stdout_pending: Vec::new(),
            stderr_pending: Vec::new(),
            scratch: Vec::new(),
            size: 0,
            limit: None,
        }
    }

    /// Holds lines back once the sink has `limit` bytes (of which it has `size` now).
    pub fn set_limit(&mut self, limit: Option<u64>, size: u64) {
        self.limit = limit;
        self.size = size;
    }

    /// The sink reached the limit: complete lines wait in the buffers until the sink
    /// is replaced (rotation) and the writer is fed again.
    pub fn full(&self) -> bool {
        self.limit.is_some_and(|limit| self.size >= limit)
    }

    /// Swaps the sink (log reopen after rotation), which holds `size` bytes, and
    /// returns the old one.
    pub fn replace_sink(&mut self, sink: W, size: u64) -> W {
        self.size = size;
        std::mem::replace(&mut self.sink, sink)
    }

    pub fn sink(&self) -> &W {
        &self.sink
    }

    /// What `stream` wrote since its last complete line: not in the log yet.
    pub fn pending(&self, stream: Stream) -> &[u8] {
        match stream {
            Stream::Stdout => &self.stdout_pending,
            Stream::Stderr => &self.stderr_pending,
        }
    }

    /// Feeds bytes read from `stream`; complete lines (and overlong chunks) are written
    /// with timestamp `now`. On a write error the text is still consumed (a full disk
    /// must not make the monitor buffer without bound); the first error is returned.
    pub fn write_output(
        &mut self,
        stream: Stream,
        data: &[u8],
        now: &DateTime<Utc>,
    ) -> io::Result<()> {
        let timestamp = format_timestamp(now);
        let max_line = self.max_line;
        let limit = self.limit.unwrap_or(u64::MAX);
        let mut size = self.size;
        let (pending, sink, scratch) = self.parts(stream);
        pending.extend_from_slice(data);

        let mut first_error = None;
        let mut consumed = 0;
        loop {
            if size >= limit {
                break;
            }
            let rest = &pending[consumed..];
            let (text, tag, advance) = match rest.iter().position(|&b| b == b'\n') {
                Some(newline) if newline <= max_line => (&rest[..newline], Tag::Full, newline + 1),
                _ if rest.len() > max_line => (&rest[..max_line], Tag::Partial, max_line),
                _ => break,
            };
            match write_line(sink, scratch, &timestamp, stream, tag, text) {
                Ok(()) => size += scratch.len() as u64,
                Err(err) => {
                    first_error.get_or_insert(err);
                }
            }
            consumed += advance;
        }
        pending.drain(..consumed);
        self.size = size;
        first_error.map_or(Ok(()), Err)
    }

    /// Writes whatever `stream` left without a newline as a full line (stream ended).
    pub fn flush_stream(&mut self, stream: Stream, now: &DateTime<Utc>) -> io::Result<()> {
        let timestamp = format_timestamp(now);
        let (pending, sink, scratch) = self.parts(stream);
        if pending.is_empty() {
            return Ok(());
        }
        let result = write_line(sink, scratch, &timestamp, stream, Tag::Full, pending);
        let written = scratch.len() as u64;
        pending.clear();
        if result.is_ok() {
            self.size += written;
        }
        result
    }

    fn parts(&mut self, stream: Stream) -> (&mut Vec<u8>, &mut W, &mut Vec<u8>) {
        let pending = match stream {
            Stream::Stdout => &mut self.stdout_pending,
            Stream::Stderr => &mut self.stderr_pending,
        };
        (pending, &mut self.sink, &mut self.scratch)
    }
}

#[derive(Clone, Copy)]
enum Tag {
    Full,
    Partial,
}

fn write_line<W: Write>(
    sink: &mut W,
    scratch: &mut Vec<u8>,
    timestamp: &str,
    stream: Stream,
    tag: Tag,
    text: &[u8],
) -> io::Result<()> {
    scratch.clear();
    scratch.extend_from_slice(timestamp.as_bytes());
    scratch.push(b' ');
    scratch.extend_from_slice(stream.name().as_bytes());
    scratch.extend_from_slice(match tag {
        Tag::Full => b" F ",
        Tag::Partial => b" P ",
    });
    scratch.extend_from_slice(text);
    scratch.push(b'\n');
    // One write(2) for the whole line on a regular O_APPEND file; write_all only loops
    // on a short write (disk full).
    sink.write_all(scratch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 23, 10, 0, 0)
            .single()
            .expect("valid date")
            + chrono::Duration::nanoseconds(123_456_789)
    }

    const TS: &str = "2026-11-23T10:00:00.123456789Z";

    fn lines(writer: &CriLogWriter<Vec<u8>>) -> Vec<String> {
        String::from_utf8(writer.sink().clone())
            .expect("utf8")
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn lines_wait_at_the_limit_until_the_sink_is_replaced() {
        let mut w = CriLogWriter::new(Vec::new(), 64);
        let line = format!("{TS} stdout F 0123456789\n").len() as u64;
        w.set_limit(Some(2 * line), 0);
        w.write_output(Stream::Stdout, b"0123456789\n".repeat(5).as_slice(), &at())
            .expect("write");
        assert!(w.full());
        assert_eq!(lines(&w).len(), 2, "two lines fit");
        let first = w.replace_sink(Vec::new(), 0);
        assert_eq!(first.len() as u64, 2 * line);
        w.write_output(Stream::Stdout, b"", &at()).expect("write");
        assert_eq!(lines(&w).len(), 2, "two more");
        w.replace_sink(Vec::new(), 0);
        w.write_output(Stream::Stdout, b"", &at()).expect("write");
        assert_eq!(lines(&w).len(), 1, "the last");
        assert!(!w.full());
    }

    #[test]
    fn short_lines_are_full() {
        let mut w = CriLogWriter::new(Vec::new(), 16);
        w.write_output(Stream::Stdout, b"hello\nworld\n", &at())
            .expect("write");
        assert_eq!(
            lines(&w),
            [
                format!("{TS} stdout F hello"),
                format!("{TS} stdout F world")
            ]
        );
    }

    #[test]
    fn line_split_across_reads_is_joined() {
        let mut w = CriLogWriter::new(Vec::new(), 16);
        w.write_output(Stream::Stdout, b"hel", &at())
            .expect("write");
        assert!(w.sink().is_empty());
        w.write_output(Stream::Stdout, b"lo\n", &at())
            .expect("write");
        assert_eq!(lines(&w), [format!("{TS} stdout F hello")]);
    }

    #[test]
    fn exact_max_length_line_is_one_full_line() {
        let mut w = CriLogWriter::new(Vec::new(), 8);
        // The newline arrives in a later read: the line must not be cut at 8 bytes.
        w.write_output(Stream::Stdout, b"12345678", &at())
            .expect("write");
        assert!(w.sink().is_empty());
        w.write_output(Stream::Stdout, b"\n", &at()).expect("write");
        assert_eq!(lines(&w), [format!("{TS} stdout F 12345678")]);
    }

    #[test]
    fn long_line_is_split_into_partials_then_full() {
        let mut w = CriLogWriter::new(Vec::new(), 4);
        w.write_output(Stream::Stderr, b"aaaabbbbcc\n", &at())
            .expect("write");
        assert_eq!(
            lines(&w),
            [
                format!("{TS} stderr P aaaa"),
                format!("{TS} stderr P bbbb"),
                format!("{TS} stderr F cc"),
            ]
        );
    }

    #[test]
    fn long_line_without_newline_emits_partials_as_it_grows() {
        let mut w = CriLogWriter::new(Vec::new(), 4);
        w.write_output(Stream::Stdout, b"aaaab", &at())
            .expect("write");
        assert_eq!(lines(&w), [format!("{TS} stdout P aaaa")]);
        w.write_output(Stream::Stdout, b"bbb\n", &at())
            .expect("write");
        assert_eq!(
            lines(&w),
            [format!("{TS} stdout P aaaa"), format!("{TS} stdout F bbbb")]
        );
    }

    #[test]
    fn multiple_of_max_ends_with_full_chunk_not_empty_line() {
        let mut w = CriLogWriter::new(Vec::new(), 4);
        w.write_output(Stream::Stdout, b"aaaabbbb\n", &at())
            .expect("write");
        assert_eq!(
            lines(&w),
            [format!("{TS} stdout P aaaa"), format!("{TS} stdout F bbbb")]
        );
    }

    #[test]
    fn trailing_text_at_eof_is_full() {
        let mut w = CriLogWriter::new(Vec::new(), 16);
        w.write_output(Stream::Stdout, b"done\nno newline", &at())
            .expect("write");
        w.flush_stream(Stream::Stdout, &at()).expect("flush");
        w.flush_stream(Stream::Stderr, &at()).expect("flush");
        assert_eq!(
            lines(&w),
            [
                format!("{TS} stdout F done"),
                format!("{TS} stdout F no newline")
            ]
        );
    }

    #[test]
    fn interleaved_streams_keep_separate_buffers() {
        let mut w = CriLogWriter::new(Vec::new(), 16);
        w.write_output(Stream::Stdout, b"out-", &at())
            .expect("write");
        w.write_output(Stream::Stderr, b"err-", &at())
            .expect("write");
        w.write_output(Stream::Stderr, b"line\n", &at())
            .expect("write");
        w.write_output(Stream::Stdout, b"line\n", &at())
            .expect("write");
        assert_eq!(
            lines(&w),
            [
                format!("{TS} stderr F err-line"),
                format!("{TS} stdout F out-line")
            ]
        );
    }

    #[test]
    fn empty_line_is_a_full_line_with_empty_text() {
        let mut w = CriLogWriter::new(Vec::new(), 16);
        w.write_output(Stream::Stdout, b"\n", &at()).expect("write");
        assert_eq!(
            String::from_utf8(w.sink().clone()).expect("utf8"),
            format!("{TS} stdout F \n")
        );
    }

    #[test]
    fn timestamp_is_rfc3339_utc_with_nine_digits() {
        let now = Utc::now();
        let text = format_timestamp(&now);
        let parsed = DateTime::parse_from_rfc3339(&text).expect("rfc3339");
        assert_eq!(parsed.with_timezone(&Utc), now);
        assert!(text.ends_with('Z'), "{text}");
        let fraction = text
            .split_once('.')
            .map(|(_, f)| f.trim_end_matches('Z'))
            .expect("fraction");
        assert_eq!(fraction.len(), 9, "{text}");
        assert!(fraction.bytes().all(|b| b.is_ascii_digit()), "{text}");
        // Whole seconds still get nine zeros.
        let whole = Utc
            .with_ymd_and_hms(2026, 1, 2, 3, 4, 5)
            .single()
            .expect("date");
        assert_eq!(format_timestamp(&whole), "2026-01-02T03:04:05.000000000Z");
    }

    #[test]
    fn write_errors_do_not_keep_text_buffered() {
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::from_raw_os_error(28))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut w = CriLogWriter::new(Full, 4);
        assert!(w
            .write_output(Stream::Stdout, b"a\nbbbbbbbb\n", &at())
            .is_err());
        assert!(w.stdout_pending.is_empty());
    }
}
