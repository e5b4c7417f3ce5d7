//! The one error type of the key module. Every message is safe to show an operator or a client:
//! none carries key material, a token, a sealed value or a plaintext. Key ids are not secret and
//! may appear.

use std::fmt;

use super::master::KeyId;

/// How to make a key, repeated in every message about a bad or missing one.
macro_rules! how_to_make_one {
    () => {
        "; make one with `sentinel keys new`"
    };
}

/// Which kind of signed credential an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenKind {
    /// `stk1.…`: a tenant token, used as a Postgres password or a signed comment.
    Tenant,
    /// `sk-stn-…`: a virtual LLM API key for a tenant.
    VirtualKey,
    /// `sat1.…`: a bearer token for the admin port.
    Admin,
}

impl TokenKind {
    /// Every kind, in a fixed order.
    pub const ALL: [TokenKind; 3] = [TokenKind::Tenant, TokenKind::VirtualKey, TokenKind::Admin];

    /// The text every credential of this kind starts with.
    pub const fn prefix(self) -> &'static str {
        match self {
            TokenKind::Tenant => "stk1.",
            TokenKind::VirtualKey => "sk-stn-",
            TokenKind::Admin => "sat1.",
        }
    }

    /// The kind whose prefix `text` starts with, if any. Says nothing about validity.
    pub fn sniff(text: &str) -> Option<TokenKind> {
        TokenKind::ALL
            .into_iter()
            .find(|kind| text.starts_with(kind.prefix()))
    }
}

impl fmt::Display for TokenKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TokenKind::Tenant => "tenant token",
            TokenKind::VirtualKey => "virtual LLM key",
            TokenKind::Admin => "admin token",
        })
    }
}

/// Everything that can go wrong with keys, sealed values and tokens.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    // === master keys and keyrings ===
    /// No master key at all.
    #[error("no master key is configured{}", how_to_make_one!())]
    MissingMasterKey,
    /// The master key text is not base64.
    #[error("master key is not valid base64 (standard alphabet){}", how_to_make_one!())]
    MasterKeyNotBase64,
    /// Fewer than 32 bytes.
    #[error("master key is {len} bytes; it must be at least 32 random bytes{}", how_to_make_one!())]
    MasterKeyTooShort { len: usize },
    /// More than 64 bytes.
    #[error("master key is {len} bytes; at most 64 are accepted{}", how_to_make_one!())]
    MasterKeyTooLong { len: usize },
    /// The bytes are visibly not random.
    #[error("master key is not random enough ({reason}){}", how_to_make_one!())]
    MasterKeyLowEntropy { reason: &'static str },
    /// A key id outside `[a-z0-9]{1,16}`.
    #[error("a key id must be 1 to 16 characters of a-z and 0-9 (e.g. `k1`)")]
    InvalidKeyId,
    /// A keyring entry that is not `id:base64`.
    #[error(
        "keyring entry {entry} is not `id:base64` (e.g. `k2:…`); entries are separated by commas \
         or newlines and the first one is the current key"
    )]
    KeyringEntryMalformed { entry: usize },
    /// A keyring entry whose id or key is refused; `reason` says why.
    #[error("keyring entry {entry}: {reason}")]
    KeyringEntry { entry: usize, reason: Box<KeyError> },
    /// Two entries with one id.
    #[error("key id `{id}` appears twice in the keyring")]
    DuplicateKeyId { id: KeyId },
    /// Two entries with the same key bytes: a rotation that did not rotate.
    #[error("keys `{first}` and `{second}` in the keyring are the same key")]
    DuplicateKey { first: KeyId, second: KeyId },
    /// A sealed value names a key the keyring does not hold.
    #[error("key `{id}` is not in the keyring (was it dropped before everything was re-sealed?)")]
    UnknownKeyId { id: KeyId },
    /// `Keyring::without` was asked to drop the current key.
    #[error("key `{id}` is the current key and cannot be dropped; rotate to a new key first")]
    CannotDropCurrent { id: KeyId },
    /// The random number generator produced a visibly non-random key, repeatedly.
    #[error("could not generate a random key: the random number generator looks broken")]
    RandomnessFailure,

    // === environment salt ===
    /// The salt text is not base64.
    #[error("environment salt is not valid base64 (standard alphabet){}", how_to_make_one!())]
    SaltNotBase64,
    /// Not exactly 32 bytes.
    #[error(
        "environment salt is {len} bytes; it must be exactly 32 random bytes{}",
        how_to_make_one!()
    )]
    SaltWrongLength { len: usize },
    /// The bytes are visibly not random.
    #[error("environment salt is not random enough ({reason}){}", how_to_make_one!())]
    SaltLowEntropy { reason: &'static str },

    // === sealed values ===
    /// Not `sealed:v1:<key id>:<base64url>`.
    #[error(
        "not a sealed value: expected `sealed:v1:<key id>:<data>` as printed by `sentinel seal`"
    )]
    SealedMalformed,
    /// `sealed:vN:…` with a version this build does not read.
    #[error("sealed value has a format version this build does not read (it reads v1)")]
    SealedUnsupportedVersion,
    /// Too short to hold a nonce and a tag.
    #[error("sealed value is truncated")]
    SealedTruncated,
    /// The AEAD tag does not verify. Tampering, another key, another salt and another context
    /// are indistinguishable by design.
    #[error(
        "sealed value does not open: it was altered, or sealed with another key, another \
         environment salt or for another field"
    )]
    OpenFailed,
    /// A plaintext over the sealing limit.
    #[error("secret is {len} bytes; at most {max} bytes can be sealed")]
    PlaintextTooLarge { len: usize, max: usize },

    // === tokens and virtual keys ===
    /// Not in the format of its kind.
    #[error("{kind} is malformed")]
    TokenMalformed { kind: TokenKind },
    /// A credential of another kind, e.g. a virtual LLM key used as a database password.
    #[error("a {found} was presented where a {expected} is expected")]
    TokenWrongKind {
        expected: TokenKind,
        found: TokenKind,
    },
    /// Signed with a key id the keyring does not hold.
    #[error("{kind} was signed with a key that is not in the keyring")]
    TokenUnknownKey { kind: TokenKind },
    /// The MAC does not verify.
    #[error(
        "{kind} is not valid: its signature does not match (altered, or issued for another \
         environment)"
    )]
    TokenBadSignature { kind: TokenKind },
    /// Past its expiry.
    #[error("{kind} has expired")]
    TokenExpired { kind: TokenKind },
    /// A tenant id outside `[A-Za-z0-9_-]{1,64}`.
    #[error("a tenant id in a token must be 1 to 64 characters of A-Z, a-z, 0-9, `_` and `-`")]
    InvalidTenant,
    /// An admin token name outside `[A-Za-z0-9_-]{1,64}`.
    #[error("an admin token name must be 1 to 64 characters of A-Z, a-z, 0-9, `_` and `-`")]
    InvalidName,
    /// A virtual key id outside `[A-Za-z0-9_-]{1,64}`.
    #[error("a virtual key id must be 1 to 64 characters of A-Z, a-z, 0-9, `_` and `-`")]
    InvalidVirtualKeyId,
    /// `Some(0)` as an expiry: 0 is the wire form of "never".
    #[error("an expiry must be a unix time after 0; use no expiry for a token that never expires")]
    InvalidExpiry,
}

impl KeyError {
    /// A fixed, low-cardinality label for metrics and logs.
    pub const fn label(&self) -> &'static str {
        match self {
            KeyError::MissingMasterKey => "missing_master_key",
            KeyError::MasterKeyNotBase64 => "master_key_not_base64",
            KeyError::MasterKeyTooShort { .. } => "master_key_too_short",
            KeyError::MasterKeyTooLong { .. } => "master_key_too_long",
            KeyError::MasterKeyLowEntropy { .. } => "master_key_low_entropy",
            KeyError::InvalidKeyId => "invalid_key_id",
            KeyError::KeyringEntryMalformed { .. } => "keyring_entry_malformed",
            KeyError::KeyringEntry { .. } => "keyring_entry",
            KeyError::DuplicateKeyId { .. } => "duplicate_key_id",
            KeyError::DuplicateKey { .. } => "duplicate_key",
            KeyError::UnknownKeyId { .. } => "unknown_key_id",
            KeyError::CannotDropCurrent { .. } => "cannot_drop_current",
            KeyError::RandomnessFailure => "randomness_failure",
            KeyError::SaltNotBase64 => "salt_not_base64",
            KeyError::SaltWrongLength { .. } => "salt_wrong_length",
            KeyError::SaltLowEntropy { .. } => "salt_low_entropy",
            KeyError::SealedMalformed => "sealed_malformed",
            KeyError::SealedUnsupportedVersion => "sealed_unsupported_version",
            KeyError::SealedTruncated => "sealed_truncated",
            KeyError::OpenFailed => "open_failed",
            KeyError::PlaintextTooLarge { .. } => "plaintext_too_large",
            KeyError::TokenMalformed { .. } => "token_malformed",
            KeyError::TokenWrongKind { .. } => "token_wrong_kind",
            KeyError::TokenUnknownKey { .. } => "token_unknown_key",
            KeyError::TokenBadSignature { .. } => "token_bad_signature",
            KeyError::TokenExpired { .. } => "token_expired",
            KeyError::InvalidTenant => "invalid_tenant",
            KeyError::InvalidName => "invalid_name",
            KeyError::InvalidVirtualKeyId => "invalid_virtual_key_id",
            KeyError::InvalidExpiry => "invalid_expiry",
        }
    }

    /// True when a client presented a credential that is refused (maps to `28P01` / HTTP 401);
    /// false for operator errors in keys, salts, sealed config values or issuing arguments.
    pub const fn is_credential_rejection(&self) -> bool {
        match self {
            KeyError::TokenMalformed { .. }
            | KeyError::TokenWrongKind { .. }
            | KeyError::TokenUnknownKey { .. }
            | KeyError::TokenBadSignature { .. }
            | KeyError::TokenExpired { .. } => true,
            KeyError::MissingMasterKey
            | KeyError::MasterKeyNotBase64
            | KeyError::MasterKeyTooShort { .. }
            | KeyError::MasterKeyTooLong { .. }
            | KeyError::MasterKeyLowEntropy { .. }
            | KeyError::InvalidKeyId
            | KeyError::KeyringEntryMalformed { .. }
            | KeyError::KeyringEntry { .. }
            | KeyError::DuplicateKeyId { .. }
            | KeyError::DuplicateKey { .. }
            | KeyError::UnknownKeyId { .. }
            | KeyError::CannotDropCurrent { .. }
            | KeyError::RandomnessFailure
            | KeyError::SaltNotBase64
            | KeyError::SaltWrongLength { .. }
            | KeyError::SaltLowEntropy { .. }
            | KeyError::SealedMalformed
            | KeyError::SealedUnsupportedVersion
            | KeyError::SealedTruncated
            | KeyError::OpenFailed
            | KeyError::PlaintextTooLarge { .. }
            | KeyError::InvalidTenant
            | KeyError::InvalidName
            | KeyError::InvalidVirtualKeyId
            | KeyError::InvalidExpiry => false,
        }
    }
}
