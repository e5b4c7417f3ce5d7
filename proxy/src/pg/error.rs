//! Errors of the Postgres front, each mapped to the SQLSTATE, severity and message a client sees
//! and to a fixed metric label. The mapping is one exhaustive match: a new variant cannot be added
//! without deciding what the client is told.

use bytes::BytesMut;
use sentinel_wire::{WireError, encode};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum PgError {
    #[error("protocol violation: {0}")]
    Protocol(#[from] WireError),
    #[error("protocol violation: unexpected {0} message")]
    Unexpected(&'static str),
    #[error("password authentication failed for user \"{0}\"")]
    AuthFailed(String),
    #[error("user \"{user}\" may log in without a password only from a trusted address")]
    TrustRefused { user: String },
    #[error("{0}")]
    FeatureNotSupported(&'static str),
    #[error("invalid startup parameter: {0}")]
    InvalidParameter(String),
    #[error("too many client connections (max_client_conn = {0})")]
    TooManyClients(usize),
    #[error("no server connection available within pool_wait_timeout ({0:?})")]
    PoolTimeout(std::time::Duration),
    #[error("upstream Postgres unreachable: {0}")]
    UpstreamUnreachable(String),
    #[error("upstream Postgres refused Sentinel's login: {0}")]
    UpstreamLogin(String),
    #[error("upstream Postgres connection lost")]
    UpstreamLost,
    #[error("terminating connection due to idle-in-transaction timeout")]
    IdleTransactionTimeout,
    #[error("client did not finish logging in within client_login_timeout")]
    LoginTimeout,
    #[error("terminating connection: Sentinel is shutting down")]
    ShuttingDown,
    /// Postgres refused something during the session setup Sentinel does for the client
    /// (applying its startup parameters): passed on with Postgres's own code and text.
    #[error("{message}")]
    Server { code: String, message: String },
    /// Tenancy refused the login.
    #[error("{}", .0.message())]
    Tenancy(super::tenancy::Refusal),
    /// The client's socket failed: nothing can be sent to it.
    #[error("client connection: {0}")]
    ClientIo(#[source] std::io::Error),
}

impl PgError {
    pub fn sqlstate(&self) -> &str {
        match self {
            PgError::Protocol(_) | PgError::Unexpected(_) | PgError::LoginTimeout => "08P01",
            PgError::AuthFailed(_) => "28P01",
            PgError::TrustRefused { .. } => "28000",
            PgError::FeatureNotSupported(_) => "0A000",
            PgError::InvalidParameter(_) => "22023",
            PgError::TooManyClients(_) | PgError::PoolTimeout(_) => "53300",
            PgError::UpstreamUnreachable(_) | PgError::UpstreamLogin(_) | PgError::UpstreamLost => {
                "08006"
            }
            PgError::IdleTransactionTimeout => "25P03",
            PgError::ShuttingDown => "57P01",
            PgError::Server { code, .. } => code,
            PgError::Tenancy(r) => r.sqlstate(),
            PgError::ClientIo(_) => "08006",
        }
    }

    /// Fixed label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            PgError::Protocol(_) | PgError::Unexpected(_) => "protocol",
            PgError::AuthFailed(_) | PgError::TrustRefused { .. } => "auth",
            PgError::FeatureNotSupported(_) => "unsupported",
            PgError::InvalidParameter(_) => "parameter",
            PgError::TooManyClients(_) => "too_many_clients",
            PgError::PoolTimeout(_) => "pool_timeout",
            PgError::UpstreamUnreachable(_) | PgError::UpstreamLost => "upstream",
            PgError::UpstreamLogin(_) => "upstream_login",
            PgError::IdleTransactionTimeout => "idle_transaction_timeout",
            PgError::LoginTimeout => "login_timeout",
            PgError::ShuttingDown => "shutdown",
            PgError::Server { .. } => "server",
            PgError::Tenancy(_) => "tenancy",
            PgError::ClientIo(_) => "client_io",
        }
    }

    fn hint(&self) -> Option<&'static str> {
        match self {
            PgError::PoolTimeout(_) => Some(
                "all server connections are busy: raise postgres.pool_size or shorten transactions",
            ),
            PgError::TooManyClients(_) => {
                Some("raise postgres.max_client_conn or use fewer connections")
            }
            _ => None,
        }
    }

    /// Writes the ErrorResponse the client gets: `FATAL` when the connection ends with it,
    /// `ERROR` when the client may go on.
    pub fn encode(&self, buf: &mut BytesMut, severity: &str) {
        encode::error_response(
            buf,
            severity,
            self.sqlstate(),
            &self.to_string(),
            self.hint(),
        );
    }
}

pub type PgResult<T> = Result<T, PgError>;
