//! Sealed values: secrets (upstream passwords, provider API keys) encrypted for the config file
//! and the ledger.
//!
//! Format: `sealed:v1:<key id>:<base64url, no padding, of nonce ‖ ciphertext ‖ tag>`.
//!
//! - AEAD: XChaCha20-Poly1305 with a random 24-byte nonce (random nonces of that size never
//!   collide in practice), keyed with the `Sealing` sub-key of the named master key.
//! - Associated data: `sentinel/sealed/v1` ‖ 0x00 ‖ key id ‖ 0x00 ‖ context. The context names the
//!   field a value belongs to (e.g. `upstream.main.password`), so a value sealed for one field does
//!   not open in another, and the version and key id cannot be swapped.
//! - Any change to the text, a truncation, another key, another environment salt or another context
//!   fails with a [`KeyError`], never with garbage.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use rand::{CryptoRng, RngCore};
use zeroize::Zeroizing;

use super::derive::{Purpose, derive};
use super::error::KeyError;
use super::master::{KeyId, Keyring, MasterKey, is_key_id};
use super::salt::EnvSalt;

/// What every sealed value starts with.
pub const SEALED_PREFIX: &str = "sealed:";
/// The one format version this build writes and reads.
const VERSION: &str = "v1";
/// Bytes of XChaCha20 nonce in front of the ciphertext.
const NONCE_LEN: usize = 24;
/// Bytes of Poly1305 tag after the ciphertext.
const TAG_LEN: usize = 16;
/// Largest secret that can be sealed. Secrets are passwords and API keys; a limit keeps a config
/// file from carrying megabytes of ciphertext.
pub const MAX_SEALED_PLAINTEXT: usize = 64 * 1024;
/// Label at the start of the associated data.
const AAD_LABEL: &[u8] = b"sentinel/sealed/v1";

/// True when `value` is meant as a sealed value (it starts with `sealed:`), whether or not it is
/// well formed. Config uses it to refuse plaintext secrets.
pub fn is_sealed(value: &str) -> bool {
    value.starts_with(SEALED_PREFIX)
}

/// Seals `plaintext` for the field named `context` with the keyring's current key.
pub fn seal(
    keyring: &Keyring,
    salt: &EnvSalt,
    plaintext: &[u8],
    context: &str,
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<String, KeyError> {
    if plaintext.len() > MAX_SEALED_PLAINTEXT {
        return Err(KeyError::PlaintextTooLarge {
            len: plaintext.len(),
            max: MAX_SEALED_PLAINTEXT,
        });
    }
    let (id, master) = keyring.current();
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    let aad = associated_data(id.as_str(), context);
    let ciphertext = cipher(master, salt)
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad: &aad,
            },
        )
        .map_err(|_| KeyError::PlaintextTooLarge {
            len: plaintext.len(),
            max: MAX_SEALED_PLAINTEXT,
        })?;
    let mut data = Vec::with_capacity(NONCE_LEN + ciphertext.len());
    data.extend_from_slice(&nonce);
    data.extend_from_slice(&ciphertext);
    Ok(format!(
        "{SEALED_PREFIX}{VERSION}:{id}:{}",
        URL_SAFE_NO_PAD.encode(&data)
    ))
}

/// Opens a sealed value made for the field named `context` with whichever key of the ring it
/// names.
pub fn open(
    keyring: &Keyring,
    salt: &EnvSalt,
    sealed: &str,
    context: &str,
) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let (id, data) = parse(sealed)?;
    let master = keyring.get(id).ok_or_else(|| unknown(id))?;
    let data = URL_SAFE_NO_PAD
        .decode(data)
        .map_err(|_| KeyError::SealedMalformed)?;
    if data.len() < NONCE_LEN + TAG_LEN {
        return Err(KeyError::SealedTruncated);
    }
    let (nonce, ciphertext) = data.split_at(NONCE_LEN);
    let aad = associated_data(id, context);
    cipher(master, salt)
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad: &aad,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| KeyError::OpenFailed)
}

/// The id of the key a sealed value names, without opening it.
pub fn sealed_key_id(sealed: &str) -> Result<KeyId, KeyError> {
    let (id, _) = parse(sealed)?;
    KeyId::new(id)
}

/// True when `sealed` is sealed with a key other than the keyring's current one, so a rotation
/// should re-seal it. False for a value that does not parse: [`open`] says what is wrong with it.
pub fn needs_reseal(keyring: &Keyring, sealed: &str) -> bool {
    parse(sealed).is_ok_and(|(id, _)| id != keyring.current_id().as_str())
}

/// Opens `sealed` and seals the plaintext again with the current key, for the same `context`.
pub fn reseal(
    keyring: &Keyring,
    salt: &EnvSalt,
    sealed: &str,
    context: &str,
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<String, KeyError> {
    let plaintext = open(keyring, salt, sealed, context)?;
    seal(keyring, salt, &plaintext, context, rng)
}

/// Splits `sealed:v1:<id>:<data>` into the key id and the base64 data, checking the prefix, the
/// version and the id's shape.
fn parse(sealed: &str) -> Result<(&str, &str), KeyError> {
    let rest = sealed
        .strip_prefix(SEALED_PREFIX)
        .ok_or(KeyError::SealedMalformed)?;
    let (version, rest) = rest.split_once(':').ok_or(KeyError::SealedMalformed)?;
    if version != VERSION {
        let looks_versioned = version.len() > 1
            && version.starts_with('v')
            && version[1..].bytes().all(|b| b.is_ascii_digit());
        return Err(if looks_versioned {
            KeyError::SealedUnsupportedVersion
        } else {
            KeyError::SealedMalformed
        });
    }
    let (id, data) = rest.split_once(':').ok_or(KeyError::SealedMalformed)?;
    if !is_key_id(id) || data.is_empty() {
        return Err(KeyError::SealedMalformed);
    }
    Ok((id, data))
}

/// `sentinel/sealed/v1` ‖ 0 ‖ key id ‖ 0 ‖ context. The id never holds a 0 byte and the context
/// comes last, so distinct (id, context) pairs give distinct data.
fn associated_data(id: &str, context: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(AAD_LABEL.len() + id.len() + context.len() + 2);
    aad.extend_from_slice(AAD_LABEL);
    aad.push(0);
    aad.extend_from_slice(id.as_bytes());
    aad.push(0);
    aad.extend_from_slice(context.as_bytes());
    aad
}

/// The AEAD keyed with the sealing sub-key of `master`. The cipher wipes its key copy on drop.
fn cipher(master: &MasterKey, salt: &EnvSalt) -> XChaCha20Poly1305 {
    let key = derive(master, salt, Purpose::Sealing);
    XChaCha20Poly1305::new(Key::from_slice(key.as_bytes()))
}

fn unknown(id: &str) -> KeyError {
    match KeyId::new(id) {
        Ok(id) => KeyError::UnknownKeyId { id },
        Err(_) => KeyError::SealedMalformed,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    #[test]
    fn only_the_sealing_sub_key_opens() {
        let mut rng = StdRng::seed_from_u64(21);
        let ring = Keyring::generate(KeyId::new("k1").unwrap(), &mut rng).unwrap();
        let salt = EnvSalt::generate(&mut rng).unwrap();
        let sealed = seal(&ring, &salt, b"hunter2", "upstream.main.password", &mut rng).unwrap();
        let (id, data) = parse(&sealed).unwrap();
        let data = URL_SAFE_NO_PAD.decode(data).unwrap();
        let (nonce, ciphertext) = data.split_at(NONCE_LEN);
        let aad = associated_data(id, "upstream.main.password");
        for purpose in Purpose::ALL {
            let key = derive(ring.current().1, &salt, purpose);
            let opened = XChaCha20Poly1305::new(Key::from_slice(key.as_bytes())).decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            );
            assert_eq!(opened.is_ok(), purpose == Purpose::Sealing, "{purpose:?}");
        }
    }

    #[test]
    fn associated_data_binds_version_id_and_context() {
        assert_eq!(
            associated_data("k1", "a.b"),
            b"sentinel/sealed/v1\0k1\0a.b".to_vec()
        );
        assert_ne!(associated_data("k1", "x"), associated_data("k12", "x"));
    }
}
