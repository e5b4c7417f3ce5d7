//! Signed credentials: tenant tokens, virtual LLM keys and admin tokens. Each is plain text with a
//! kind prefix, dot-separated fields, the id of the master key that signed it and an HMAC-SHA256
//! over everything before the MAC:
//!
//! ```text
//! tenant token     stk1.<tenant>.<expires_at or 0>.<key id>.<mac>
//! virtual LLM key  sk-stn-<tenant>.<virtual key id>.<key id>.<mac>
//! admin token      sat1.<name>.<expires_at or 0>.<key id>.<mac>
//! ```
//!
//! - `tenant`, `name` and `virtual key id` are `[A-Za-z0-9_-]{1,64}`; `key id` is `[a-z0-9]{1,16}`;
//!   `expires_at` is unix seconds in canonical decimal, `0` for "never"; `mac` is the 32-byte tag
//!   in base64url without padding (43 characters). No field can hold a `.`, so a credential splits
//!   into its fields one way only.
//! - DESIGN's `stk1.<tenant>.<mac>` gained the expiry and key id fields: tokens can expire, and a
//!   token signed before a rotation verifies while its key is still in the keyring.
//! - The MAC key is the sub-key derived for the credential's kind (`TenantToken`, `VirtualKey`,
//!   `AdminToken`) from the master key and the environment salt, and the MAC covers the prefix. A
//!   credential of one kind, or from another environment, never verifies as another, even when
//!   rewritten into the other's format.
//! - Verification checks the format, then the key id, then the MAC (constant time), then the
//!   expiry: a token is valid while `now < expires_at`. Errors never contain the credential.
//! - Virtual keys do not expire; they are revoked by their virtual key id, a random id from
//!   [`new_virtual_key_id`] that the ledger keeps a revocation list of.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::digest::Key;
use hmac::{Hmac, Mac};
use rand::{CryptoRng, RngCore};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::derive::{Purpose, SUBKEY_LEN, derive};
use super::error::{KeyError, TokenKind};
use super::master::{Keyring, MasterKey, is_key_id};
use super::salt::EnvSalt;

type HmacSha256 = Hmac<Sha256>;

/// Longest credential accepted for verification; every valid one is shorter (about 200 bytes at
/// most). Longer input is refused before any work.
pub const MAX_TOKEN_LEN: usize = 256;
/// Longest tenant id, admin token name or virtual key id.
pub const MAX_FIELD_LEN: usize = 64;
/// Bytes of MAC, and its length in base64url without padding.
const MAC_LEN: usize = 32;
const MAC_B64_LEN: usize = 43;
/// Random bytes in a virtual key id.
const VIRTUAL_KEY_ID_BYTES: usize = 16;

/// What a valid tenant token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantClaims {
    pub tenant: String,
    /// Unix seconds after which the token is refused; `None` for never.
    pub expires_at: Option<u64>,
}

/// What a valid virtual LLM key says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualKeyClaims {
    pub tenant: String,
    /// The random id of this virtual key, checked against the ledger's revocations. Not the id of
    /// a master key.
    pub key_id: String,
}

/// What a valid admin token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminClaims {
    pub name: String,
    /// Unix seconds after which the token is refused; `None` for never.
    pub expires_at: Option<u64>,
}

// === tenant tokens ===

/// `stk1.<tenant>.<expires_at or 0>.<key id>.<mac>`, signed with the current key.
pub fn issue_tenant_token(
    keyring: &Keyring,
    salt: &EnvSalt,
    tenant: &str,
    expires_at: Option<u64>,
) -> Result<String, KeyError> {
    if !is_field(tenant) {
        return Err(KeyError::InvalidTenant);
    }
    let expiry = expiry_field(expires_at)?;
    Ok(sign(TokenKind::Tenant, keyring, salt, [tenant, &expiry]))
}

/// Checks a tenant token at unix time `now`.
pub fn verify_tenant_token(
    keyring: &Keyring,
    salt: &EnvSalt,
    token: &str,
    now: u64,
) -> Result<TenantClaims, KeyError> {
    let kind = TokenKind::Tenant;
    let [tenant, expiry] = verify(kind, keyring, salt, token)?;
    let expires_at = check_expiry(kind, expiry, now)?;
    Ok(TenantClaims {
        tenant: tenant.to_owned(),
        expires_at,
    })
}

// === virtual LLM keys ===

/// `sk-stn-<tenant>.<virtual key id>.<key id>.<mac>`, signed with the current key. `key_id` is
/// the virtual key's own random id (see [`new_virtual_key_id`]), used to revoke it.
pub fn issue_virtual_key(
    keyring: &Keyring,
    salt: &EnvSalt,
    tenant: &str,
    key_id: &str,
) -> Result<String, KeyError> {
    if !is_field(tenant) {
        return Err(KeyError::InvalidTenant);
    }
    if !is_field(key_id) {
        return Err(KeyError::InvalidVirtualKeyId);
    }
    Ok(sign(TokenKind::VirtualKey, keyring, salt, [tenant, key_id]))
}

/// Checks a virtual LLM key. Revocation is the caller's business: look `key_id` up in the ledger.
pub fn verify_virtual_key(
    keyring: &Keyring,
    salt: &EnvSalt,
    key: &str,
) -> Result<VirtualKeyClaims, KeyError> {
    let [tenant, key_id] = verify(TokenKind::VirtualKey, keyring, salt, key)?;
    Ok(VirtualKeyClaims {
        tenant: tenant.to_owned(),
        key_id: key_id.to_owned(),
    })
}

/// A fresh random virtual key id: 16 random bytes in base64url without padding (22 characters).
pub fn new_virtual_key_id(rng: &mut (impl RngCore + CryptoRng)) -> String {
    let mut bytes = [0u8; VIRTUAL_KEY_ID_BYTES];
    rng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

// === admin tokens ===

/// `sat1.<name>.<expires_at or 0>.<key id>.<mac>`, signed with the current key. `name` says whom
/// the token was issued to (for audit logs).
pub fn issue_admin_token(
    keyring: &Keyring,
    salt: &EnvSalt,
    name: &str,
    expires_at: Option<u64>,
) -> Result<String, KeyError> {
    if !is_field(name) {
        return Err(KeyError::InvalidName);
    }
    let expiry = expiry_field(expires_at)?;
    Ok(sign(TokenKind::Admin, keyring, salt, [name, &expiry]))
}

/// Checks an admin token at unix time `now`.
pub fn verify_admin_token(
    keyring: &Keyring,
    salt: &EnvSalt,
    token: &str,
    now: u64,
) -> Result<AdminClaims, KeyError> {
    let kind = TokenKind::Admin;
    let [name, expiry] = verify(kind, keyring, salt, token)?;
    let expires_at = check_expiry(kind, expiry, now)?;
    Ok(AdminClaims {
        name: name.to_owned(),
        expires_at,
    })
}

// === shared machinery ===

const fn purpose(kind: TokenKind) -> Purpose {
    match kind {
        TokenKind::Tenant => Purpose::TenantToken,
        TokenKind::VirtualKey => Purpose::VirtualKey,
        TokenKind::Admin => Purpose::AdminToken,
    }
}

/// `[A-Za-z0-9_-]{1,64}`.
fn is_field(field: &str) -> bool {
    (1..=MAX_FIELD_LEN).contains(&field.len())
        && field
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `0` for no expiry; `Some(0)` is refused because it would read back as "never".
fn expiry_field(expires_at: Option<u64>) -> Result<String, KeyError> {
    match expires_at {
        None => Ok("0".to_owned()),
        Some(0) => Err(KeyError::InvalidExpiry),
        Some(at) => Ok(at.to_string()),
    }
}

/// Reads a canonical expiry field and refuses it when `now` has reached it.
fn check_expiry(kind: TokenKind, field: &str, now: u64) -> Result<Option<u64>, KeyError> {
    let malformed = KeyError::TokenMalformed { kind };
    if field == "0" {
        return Ok(None);
    }
    if field.starts_with('0') || !field.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed);
    }
    let at: u64 = field.parse().map_err(|_| malformed)?;
    if now >= at {
        return Err(KeyError::TokenExpired { kind });
    }
    Ok(Some(at))
}

/// `<prefix><field>.<field>….<key id>.<mac>` with the current key.
fn sign<const N: usize>(
    kind: TokenKind,
    keyring: &Keyring,
    salt: &EnvSalt,
    fields: [&str; N],
) -> String {
    let (id, master) = keyring.current();
    let mut token = String::with_capacity(MAX_TOKEN_LEN);
    token.push_str(kind.prefix());
    for field in fields {
        token.push_str(field);
        token.push('.');
    }
    token.push_str(id.as_str());
    let tag = mac(kind, master, salt, token.as_bytes())
        .finalize()
        .into_bytes();
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(tag, &mut token);
    token
}

/// Checks the format, key id and MAC of a credential of `kind` with `N` fields and returns the
/// fields. Expiry is the caller's to check.
fn verify<'t, const N: usize>(
    kind: TokenKind,
    keyring: &Keyring,
    salt: &EnvSalt,
    token: &'t str,
) -> Result<[&'t str; N], KeyError> {
    let malformed = KeyError::TokenMalformed { kind };
    if token.len() > MAX_TOKEN_LEN {
        return Err(malformed);
    }
    let Some(rest) = token.strip_prefix(kind.prefix()) else {
        return Err(match TokenKind::sniff(token) {
            Some(found) => KeyError::TokenWrongKind {
                expected: kind,
                found,
            },
            None => malformed,
        });
    };
    let mut parts = rest.split('.');
    let mut fields = [""; N];
    for field in &mut fields {
        *field = parts
            .next()
            .filter(|f| is_field(f))
            .ok_or(malformed.clone())?;
    }
    let id = parts
        .next()
        .filter(|id| is_key_id(id))
        .ok_or(malformed.clone())?;
    let tag_b64 = parts
        .next()
        .filter(|t| t.len() == MAC_B64_LEN)
        .ok_or(malformed.clone())?;
    if parts.next().is_some() {
        return Err(malformed);
    }
    let mut tag = [0u8; MAC_LEN];
    match URL_SAFE_NO_PAD.decode_slice(tag_b64, &mut tag) {
        Ok(MAC_LEN) => {}
        _ => return Err(malformed),
    }
    let signed = &token[..token.len() - MAC_B64_LEN - 1];
    let master = keyring.get(id).ok_or(KeyError::TokenUnknownKey { kind })?;
    mac(kind, master, salt, signed.as_bytes())
        .verify_slice(&tag)
        .map_err(|_| KeyError::TokenBadSignature { kind })?;
    Ok(fields)
}

/// HMAC-SHA256 keyed with the sub-key for `kind`, fed `signed`.
///
/// HMAC pads keys shorter than the hash's 64-byte block with zeros (RFC 2104), so keying it with
/// the 32-byte sub-key followed by 32 zero bytes is HMAC with the sub-key, through the infallible
/// constructor.
fn mac(kind: TokenKind, master: &MasterKey, salt: &EnvSalt, signed: &[u8]) -> HmacSha256 {
    let sub = derive(master, salt, purpose(kind));
    let mut block = Zeroizing::new([0u8; 64]);
    block[..SUBKEY_LEN].copy_from_slice(sub.as_bytes());
    let mut mac =
        <HmacSha256 as hmac::digest::KeyInit>::new(Key::<HmacSha256>::from_slice(block.as_slice()));
    mac.update(signed);
    mac
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    #[test]
    fn padded_key_is_the_same_hmac() {
        let mut rng = StdRng::seed_from_u64(11);
        let master = MasterKey::generate(&mut rng).unwrap();
        let salt = EnvSalt::generate(&mut rng).unwrap();
        let sub = derive(&master, &salt, Purpose::TenantToken);
        let mut plain = HmacSha256::new_from_slice(sub.as_bytes()).unwrap();
        plain.update(b"stk1.acme.0.k1");
        assert_eq!(
            mac(TokenKind::Tenant, &master, &salt, b"stk1.acme.0.k1")
                .finalize()
                .into_bytes(),
            plain.finalize().into_bytes()
        );
    }

    #[test]
    fn expiry_fields_are_canonical() {
        let kind = TokenKind::Tenant;
        assert_eq!(expiry_field(None).unwrap(), "0");
        assert_eq!(expiry_field(Some(0)).unwrap_err(), KeyError::InvalidExpiry);
        assert_eq!(expiry_field(Some(u64::MAX)).unwrap(), u64::MAX.to_string());
        assert_eq!(check_expiry(kind, "0", u64::MAX).unwrap(), None);
        assert_eq!(check_expiry(kind, "100", 99).unwrap(), Some(100));
        assert_eq!(
            check_expiry(kind, "100", 100).unwrap_err(),
            KeyError::TokenExpired { kind }
        );
        for bad in ["0100", "+100", "1e3", "18446744073709551616", "00"] {
            assert_eq!(
                check_expiry(kind, bad, 0).unwrap_err(),
                KeyError::TokenMalformed { kind },
                "{bad}"
            );
        }
    }

    #[test]
    fn fields() {
        assert!(is_field("acme"));
        assert!(is_field("Tenant_42-eu"));
        assert!(is_field(&"a".repeat(64)));
        for bad in ["", "acme.eu", "acme eu", "ac/me", "acmé", &"a".repeat(65)] {
            assert!(!is_field(bad), "{bad:?}");
        }
    }
}
