//! Framing of the control channel: each message is a 4-byte big-endian length followed
//! by that many bytes of one protobuf message. Used by the monitor (non-blocking
//! buffers) and by wharfd (async reads, `runtime::monitor_control`).

use prost::Message;

/// The largest frame body either side accepts. Input and output chunks are at most
/// [`MAX_DATA`] bytes, so every legitimate frame is far below it.
pub const MAX_FRAME: usize = 256 * 1024;
/// The largest chunk of stdin or output carried by one frame.
pub const MAX_DATA: usize = 32 * 1024;
/// Bytes of the length prefix.
pub const HEADER: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes is over the limit of {MAX_FRAME}")]
    TooLarge(usize),
    #[error("undecodable frame: {0}")]
    Decode(#[from] prost::DecodeError),
}

/// Appends `message` as one frame to `out`.
pub fn encode<M: Message>(message: &M, out: &mut Vec<u8>) {
    let len = message.encoded_len();
    out.reserve(HEADER + len);
    // A frame over u32::MAX cannot be built: bodies are bounded by MAX_FRAME.
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    // Encoding into a Vec cannot run out of room.
    let _ = message.encode(out);
}

/// The body length a header announces, checked against [`MAX_FRAME`].
pub fn body_len(header: [u8; HEADER]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    Ok(len)
}

/// Decodes the first complete frame of `buffer`: the message and how many bytes it
/// took, or None while the frame is incomplete.
pub fn decode<M: Message + Default>(buffer: &[u8]) -> Result<Option<(M, usize)>, FrameError> {
    let Some(header) = buffer.get(..HEADER) else {
        return Ok(None);
    };
    let mut prefix = [0u8; HEADER];
    prefix.copy_from_slice(header);
    let len = body_len(prefix)?;
    let Some(body) = buffer.get(HEADER..HEADER + len) else {
        return Ok(None);
    };
    Ok(Some((M::decode(body)?, HEADER + len)))
}

#[cfg(test)]
mod tests {
    use super::super::proto::{self, request, Request};
    use super::*;

    fn input(data: &[u8]) -> Request {
        Request {
            id: 0,
            kind: Some(request::Kind::Input(data.to_vec())),
        }
    }

    #[test]
    fn frames_round_trip_one_by_one() {
        let mut stream = Vec::new();
        let hello = Request {
            id: 7,
            kind: Some(request::Kind::Hello(proto::Hello {
                min_version: 1,
                max_version: 3,
            })),
        };
        encode(&hello, &mut stream);
        encode(&input(b"abc"), &mut stream);
        // An empty message is a frame of length 0.
        encode(&proto::InputEnd {}, &mut stream);
        assert_eq!(&stream[..4], &(hello.encoded_len() as u32).to_be_bytes());

        let (first, used) = decode::<Request>(&stream)
            .expect("decode")
            .expect("complete");
        assert_eq!(first, hello);
        let rest = &stream[used..];
        let (second, used2) = decode::<Request>(rest).expect("decode").expect("complete");
        assert_eq!(second, input(b"abc"));
        let (third, used3) = decode::<proto::InputEnd>(&rest[used2..])
            .expect("decode")
            .expect("complete");
        assert_eq!(third, proto::InputEnd {});
        assert_eq!(used3, HEADER);
        assert_eq!(used + used2 + used3, stream.len());
    }

    #[test]
    fn partial_frames_wait_for_more_bytes() {
        let mut stream = Vec::new();
        encode(&input(&[1u8; 100]), &mut stream);
        for cut in 0..stream.len() {
            assert!(
                decode::<Request>(&stream[..cut]).expect("decode").is_none(),
                "a frame cut at {cut} bytes was decoded"
            );
        }
        assert!(decode::<Request>(&stream).expect("decode").is_some());
    }

    #[test]
    fn oversized_and_garbage_frames_are_errors() {
        let mut huge = ((MAX_FRAME + 1) as u32).to_be_bytes().to_vec();
        huge.extend_from_slice(&[0u8; 8]);
        assert!(matches!(
            decode::<Request>(&huge),
            Err(FrameError::TooLarge(n)) if n == MAX_FRAME + 1
        ));
        // Field 1 (id) with the wire type of a length-delimited field, truncated.
        let garbage = [0, 0, 0, 2, 0x0a, 0x05];
        assert!(matches!(
            decode::<Request>(&garbage),
            Err(FrameError::Decode(_))
        ));
    }

    #[test]
    fn unknown_fields_are_skipped() {
        // A newer peer's Request: field 99 (varint) that this build does not know.
        let mut body = Vec::new();
        Request {
            id: 5,
            kind: Some(request::Kind::CloseStdin(proto::CloseStdin {})),
        }
        .encode(&mut body)
        .expect("encode");
        body.extend_from_slice(&[0x98, 0x06, 0x01]);
        let mut stream = (body.len() as u32).to_be_bytes().to_vec();
        stream.extend_from_slice(&body);
        let (request, _) = decode::<Request>(&stream)
            .expect("decode")
            .expect("complete");
        assert_eq!(request.id, 5);
        assert!(matches!(
            request.kind,
            Some(request::Kind::CloseStdin(proto::CloseStdin {}))
        ));
    }
}
