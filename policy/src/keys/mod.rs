//! Keys and secrets: the master keyring, the per-environment salt, purpose-bound sub-keys, sealed
//! values, and the signed credentials Sentinel mints (tenant tokens, virtual LLM keys, admin
//! tokens).
//!
//! Why: Sentinel holds upstream database passwords and LLM provider API keys and can mint tenant
//! identities. None of that may sit in source or in a config file in the clear, a leak of one
//! derived key must expose nothing else, and a key rotation must break nothing.
//!
//! Pure like the rest of the crate: randomness comes in as an `RngCore + CryptoRng`, the time as
//! unix seconds. No I/O, no clock, no globals.
//!
//! # Pieces
//!
//! - [`MasterKey`]: 32 to 64 random bytes, given as standard base64. Short or visibly non-random
//!   keys are refused with a message that says to run `sentinel keys new`.
//! - [`Keyring`]: master keys with ids ([`KeyId`], `[a-z0-9]{1,16}`). Text form:
//!   `k2:<base64>,k1:<base64>` (commas or newlines between entries); **the first entry is the
//!   current key**. New values are sealed and new credentials signed with the current key; older
//!   keys still open and verify what they made until they are dropped.
//! - [`EnvSalt`]: 32 random bytes per environment, given as standard base64, never a constant.
//! - [`derive()`]: HKDF-SHA256(salt = environment salt, IKM = master key, info = the [`Purpose`]'s
//!   label, such as `sentinel/v1/seal`) → a 32-byte [`SubKey`]. One sub-key per purpose.
//! - Sealed values ([`seal()`], [`open`], [`needs_reseal`], [`reseal`]):
//!   `sealed:v1:<key id>:<base64url(nonce ‖ ciphertext ‖ tag)>`, XChaCha20-Poly1305 with a random
//!   24-byte nonce under the sealing sub-key, bound to the format version, the key id and a
//!   context string naming the field.
//! - Credentials (HMAC-SHA256 under the sub-key of their kind, verified in constant time):
//!   - tenant token `stk1.<tenant>.<expires_at or 0>.<key id>.<mac>`;
//!   - virtual LLM key `sk-stn-<tenant>.<virtual key id>.<key id>.<mac>`;
//!   - admin token `sat1.<name>.<expires_at or 0>.<key id>.<mac>`.
//!
//!   See the `token` functions for the field rules.
//!
//! # Rotation
//!
//! 1. `with_new_current(k2, new key)`: the ring is `[k2, k1]`; everything still opens.
//! 2. Re-seal every value for which [`needs_reseal`] is true ([`reseal`]).
//! 3. `without(k1)`: the ring is `[k2]`. Credentials signed with `k1` stop verifying here.
//!
//! Secret types ([`MasterKey`], [`SubKey`], [`Keyring`], [`EnvSalt`]) wipe their bytes on drop and
//! print as `<redacted>`; [`KeyError`] messages never carry key material, credentials or
//! plaintexts.

mod derive;
mod entropy;
mod error;
mod master;
mod salt;
mod seal;
mod token;

pub use derive::{Purpose, SUBKEY_LEN, SubKey, derive};
pub use error::{KeyError, TokenKind};
pub use master::{
    GENERATED_MASTER_KEY_LEN, KeyId, Keyring, MAX_KEY_ID_LEN, MAX_MASTER_KEY_LEN,
    MIN_MASTER_KEY_LEN, MasterKey,
};
pub use salt::{EnvSalt, SALT_LEN};
pub use seal::{
    MAX_SEALED_PLAINTEXT, SEALED_PREFIX, is_sealed, needs_reseal, open, reseal, seal, sealed_key_id,
};
pub use token::{
    AdminClaims, MAX_FIELD_LEN, MAX_TOKEN_LEN, TenantClaims, VirtualKeyClaims, issue_admin_token,
    issue_tenant_token, issue_virtual_key, new_virtual_key_id, verify_admin_token,
    verify_tenant_token, verify_virtual_key,
};
