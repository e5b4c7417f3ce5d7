//! Postgres frontend/backend protocol v3 codec.
//!
//! Pure and incremental: decoders take a `BytesMut` that may hold a partial message and return
//! `Ok(None)` until a whole one is there; every length is checked against a bound before anything
//! is allocated. Messages are framed (tag + raw bytes) so a proxy can forward them untouched, and
//! parsed into typed views only where a caller needs to look inside. Encoders append to a caller's
//! buffer. Nothing here knows about sockets or runtimes.
//!
//! Reference: <https://www.postgresql.org/docs/current/protocol-message-formats.html>

mod backend;
pub mod encode;
mod error;
mod frame;
mod frontend;
mod read;
mod startup;

pub use backend::{AuthRequest, BackendMessage, ErrorFields, TransactionStatus};
pub use error::WireError;
pub use frame::{Frame, decode_frame};
pub use frontend::{BindParams, FrontendMessage, TargetKind, parse_sasl_initial_response};
pub use startup::{StartupPacket, decode_startup};

/// Largest startup-phase packet Postgres accepts (`MAX_STARTUP_PACKET_LENGTH` in
/// `src/include/libpq/pqcomm.h`).
pub const MAX_STARTUP_PACKET_LEN: usize = 10_000;

/// Request codes carried in the version field of startup-phase packets (`pqcomm.h`).
pub const SSL_REQUEST_CODE: u32 = (1234 << 16) | 5679;
pub const GSSENC_REQUEST_CODE: u32 = (1234 << 16) | 5680;
pub const CANCEL_REQUEST_CODE: u32 = (1234 << 16) | 5678;
/// Protocol 3.0 as sent in a StartupMessage.
pub const PROTOCOL_3_0: u32 = 3 << 16;

/// Cancel keys are 4 bytes up to protocol 3.1; protocol 3.2 (Postgres 18) allows up to 256.
pub const MAX_CANCEL_KEY_LEN: usize = 256;

/// Message type bytes. Frontend and backend share some letters with different meanings, so the
/// constants are split by direction.
pub mod tag {
    pub mod frontend {
        pub const BIND: u8 = b'B';
        pub const CLOSE: u8 = b'C';
        pub const COPY_DATA: u8 = b'd';
        pub const COPY_DONE: u8 = b'c';
        pub const COPY_FAIL: u8 = b'f';
        pub const DESCRIBE: u8 = b'D';
        pub const EXECUTE: u8 = b'E';
        pub const FLUSH: u8 = b'H';
        pub const FUNCTION_CALL: u8 = b'F';
        pub const PARSE: u8 = b'P';
        /// PasswordMessage, SASLInitialResponse, SASLResponse and GSSResponse share this byte.
        pub const PASSWORD: u8 = b'p';
        pub const QUERY: u8 = b'Q';
        pub const SYNC: u8 = b'S';
        pub const TERMINATE: u8 = b'X';
    }
    pub mod backend {
        pub const AUTHENTICATION: u8 = b'R';
        pub const BACKEND_KEY_DATA: u8 = b'K';
        pub const BIND_COMPLETE: u8 = b'2';
        pub const CLOSE_COMPLETE: u8 = b'3';
        pub const COMMAND_COMPLETE: u8 = b'C';
        pub const COPY_BOTH_RESPONSE: u8 = b'W';
        pub const COPY_DATA: u8 = b'd';
        pub const COPY_DONE: u8 = b'c';
        pub const COPY_IN_RESPONSE: u8 = b'G';
        pub const COPY_OUT_RESPONSE: u8 = b'H';
        pub const DATA_ROW: u8 = b'D';
        pub const EMPTY_QUERY_RESPONSE: u8 = b'I';
        pub const ERROR_RESPONSE: u8 = b'E';
        pub const FUNCTION_CALL_RESPONSE: u8 = b'V';
        pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
        pub const NO_DATA: u8 = b'n';
        pub const NOTICE_RESPONSE: u8 = b'N';
        pub const NOTIFICATION_RESPONSE: u8 = b'A';
        pub const PARAMETER_DESCRIPTION: u8 = b't';
        pub const PARAMETER_STATUS: u8 = b'S';
        pub const PARSE_COMPLETE: u8 = b'1';
        pub const PORTAL_SUSPENDED: u8 = b's';
        pub const READY_FOR_QUERY: u8 = b'Z';
        pub const ROW_DESCRIPTION: u8 = b'T';
    }
}
