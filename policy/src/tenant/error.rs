//! The one error type of the tenant module.
//!
//! Every message is safe to show a client: none carries the query text, and none carries a tenant
//! value, because no value reaches an error before it has been validated (a value that matched the
//! pattern is not an error). Config errors ([`TenantError::InvalidPattern`],
//! [`TenantError::InvalidTagKey`]) are for the operator and may quote the configured text.

use std::fmt;

/// Which quoted construct or comment the query text leaves open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unterminated {
    /// `'…`, `E'…`, `B'…`, `X'…`, `N'…`, `U&'…`.
    StringLiteral,
    /// `"…`, `U&"…`.
    QuotedIdentifier,
    /// `$$…` or `$tag$…`.
    DollarQuotedString,
    /// `/* …` (nesting counted).
    BlockComment,
}

impl fmt::Display for Unterminated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Unterminated::StringLiteral => "string literal",
            Unterminated::QuotedIdentifier => "quoted identifier",
            Unterminated::DollarQuotedString => "dollar-quoted string",
            Unterminated::BlockComment => "block comment",
        })
    }
}

/// Everything that can go wrong with tenant ids, their pattern and tenant tags in comments.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TenantError {
    /// A tenant id that the configured pattern (or the fixed safe character set) refuses. The
    /// value itself is never echoed.
    #[error("invalid tenant id: {reason}")]
    InvalidTenantId {
        /// Why, in words that never quote the value.
        reason: &'static str,
    },
    /// Two comments, or two pairs of one comment, name different tenants.
    #[error("conflicting tenant tags: one statement names two different tenants")]
    ConflictingTenants,
    /// A comment that tries to carry a tenant tag but is not well-formed sqlcommenter.
    #[error("malformed tenant tag: {reason}; expected /*{key}='<tenant id>'*/")]
    MalformedTenantTag {
        /// The tag key that was looked for (from config, not from the query).
        key: String,
        /// What is wrong, in fixed words.
        reason: &'static str,
    },
    /// The query text ends inside a string, quoted identifier or block comment, so no comment in it
    /// can be trusted.
    #[error("unterminated {what} starting at byte {offset} of the query")]
    Unterminated {
        /// What is left open.
        what: Unterminated,
        /// Byte offset where it starts.
        offset: usize,
    },
    /// Config: the tenant id pattern is refused.
    #[error("invalid tenant id_pattern: {reason}")]
    InvalidPattern {
        /// Why; may quote the configured pattern or the regex compiler's message.
        reason: String,
    },
    /// Config: the tenant tag key is empty or has characters outside `[A-Za-z0-9_.-]`.
    #[error(
        "invalid tenant tag key: it must be 1 to 64 characters of A-Z, a-z, 0-9, `_`, `.`, `-`"
    )]
    InvalidTagKey,
}

impl TenantError {
    /// The SQLSTATE to answer a client with, or `None` for a config error (which never reaches a
    /// client: Sentinel refuses to start or to reload with it).
    pub const fn sqlstate(&self) -> Option<&'static str> {
        match self {
            TenantError::InvalidTenantId { .. } => Some("28000"),
            TenantError::ConflictingTenants => Some("42501"),
            TenantError::MalformedTenantTag { .. } => Some("42501"),
            TenantError::Unterminated { .. } => Some("42601"),
            TenantError::InvalidPattern { .. } => None,
            TenantError::InvalidTagKey => None,
        }
    }

    /// A fixed label for metrics (refusals by reason).
    pub const fn label(&self) -> &'static str {
        match self {
            TenantError::InvalidTenantId { .. } => "invalid_tenant_id",
            TenantError::ConflictingTenants => "conflicting_tenants",
            TenantError::MalformedTenantTag { .. } => "malformed_tenant_tag",
            TenantError::Unterminated { .. } => "unterminated_sql",
            TenantError::InvalidPattern { .. } => "invalid_id_pattern",
            TenantError::InvalidTagKey => "invalid_tag_key",
        }
    }

    /// True for errors in the configuration rather than in a client's input.
    pub const fn is_config_error(&self) -> bool {
        self.sqlstate().is_none()
    }
}
