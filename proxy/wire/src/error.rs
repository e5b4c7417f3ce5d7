use thiserror::Error;

/// Why bytes could not be decoded. Every variant means the peer broke the protocol: a proxy
/// answers 08P01 and closes the connection.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WireError {
    #[error("message length {len} exceeds the limit of {max} bytes")]
    TooLong { len: usize, max: usize },
    #[error("invalid message length {0}")]
    BadLength(i64),
    #[error("unsupported protocol version {major}.{minor}")]
    UnsupportedVersion { major: u16, minor: u16 },
    #[error("invalid cancel key length {0}")]
    BadCancelKey(usize),
    #[error("malformed {message} message: {reason}")]
    Malformed {
        message: &'static str,
        reason: &'static str,
    },
    #[error("unexpected message type {0:?}")]
    UnexpectedTag(char),
}

impl WireError {
    pub(crate) fn malformed(message: &'static str, reason: &'static str) -> Self {
        WireError::Malformed { message, reason }
    }
}
