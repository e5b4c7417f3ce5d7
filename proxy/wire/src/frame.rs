use bytes::{Buf, Bytes, BytesMut};

use crate::WireError;

/// One whole regular message: its type byte and its raw bytes (type byte, length and body), so a
/// proxy can forward it without re-encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub tag: u8,
    raw: Bytes,
}

/// Bytes before the body: the type byte and the 4-byte length.
const HEADER_LEN: usize = 5;

impl Frame {
    /// Builds a frame from complete encoded bytes (as written by [`crate::encode`]).
    ///
    /// # Panics
    /// If `raw` is shorter than a header; encoders never produce that.
    pub fn from_encoded(raw: Bytes) -> Frame {
        assert!(raw.len() >= HEADER_LEN, "an encoded message has a header");
        Frame { tag: raw[0], raw }
    }

    /// The message as it travels on the wire.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    pub fn into_raw(self) -> Bytes {
        self.raw
    }

    /// The message body, after the type byte and the length.
    pub fn body(&self) -> &[u8] {
        &self.raw[HEADER_LEN..]
    }

    /// Length of the whole message on the wire.
    pub fn wire_len(&self) -> usize {
        self.raw.len()
    }
}

/// Takes one regular (post-startup) message off the front of `buf`.
///
/// Returns `Ok(None)` while the message is incomplete, leaving `buf` untouched. A declared length
/// below 4 or above `max_len` (counting the length field, as Postgres does) is refused before any
/// allocation, so a peer cannot make the caller reserve memory it never sends.
pub fn decode_frame(buf: &mut BytesMut, max_len: usize) -> Result<Option<Frame>, WireError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let declared = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    let len = usize::try_from(declared).map_err(|_| WireError::BadLength(declared.into()))?;
    if len < 4 {
        return Err(WireError::BadLength(declared.into()));
    }
    if len > max_len {
        return Err(WireError::TooLong { len, max: max_len });
    }
    let total = len + 1;
    if buf.len() < total {
        // Reserve what the rest of this (bounded) message needs so the next read fills it.
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    let raw = buf.split_to(total).freeze();
    Ok(Some(Frame { tag: raw[0], raw }))
}

/// Reads a length word at the front of `buf` without consuming it.
pub(crate) fn peek_len(buf: &BytesMut) -> Option<i32> {
    (buf.len() >= 4).then(|| (&buf[..4]).get_i32())
}
