//! The per-environment salt: 32 random bytes made once per environment (`sentinel keys new`) and
//! stored beside the ledger. It enters every key derivation, so tokens and sealed values of one
//! environment are worthless in another even under the same master key. There is no default and
//! no constant: a salt is always parsed or generated.

use std::fmt;

use base64::Engine as _;
use rand::{CryptoRng, RngCore};
use zeroize::Zeroize;

use super::entropy::weakness;
use super::error::KeyError;
use super::master::STANDARD_LENIENT;

/// Bytes in an environment salt.
pub const SALT_LEN: usize = 32;

/// How often `generate` draws again on visibly non-random bytes before it gives up.
const GENERATE_ATTEMPTS: usize = 4;

/// A per-environment salt of exactly 32 random bytes. Not a secret in the HKDF sense, but kept
/// out of logs all the same (`Debug` is redacted) and wiped on drop.
#[derive(Clone)]
pub struct EnvSalt([u8; SALT_LEN]);

impl EnvSalt {
    /// Parses standard base64 (padded or not, surrounding whitespace ignored).
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        let bytes = STANDARD_LENIENT
            .decode(text.trim())
            .map_err(|_| KeyError::SaltNotBase64)?;
        Self::from_bytes(&bytes)
    }

    /// Exactly 32 bytes that do not look visibly non-random.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let array: [u8; SALT_LEN] = bytes
            .try_into()
            .map_err(|_| KeyError::SaltWrongLength { len: bytes.len() })?;
        if let Some(reason) = weakness(&array) {
            return Err(KeyError::SaltLowEntropy { reason });
        }
        Ok(EnvSalt(array))
    }

    /// A new random salt.
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> Result<Self, KeyError> {
        let mut bytes = [0u8; SALT_LEN];
        for _ in 0..GENERATE_ATTEMPTS {
            rng.fill_bytes(&mut bytes);
            if weakness(&bytes).is_none() {
                return Ok(EnvSalt(bytes));
            }
        }
        Err(KeyError::RandomnessFailure)
    }

    /// Standard padded base64, the form `sentinel keys new` prints and the ledger stores.
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.0)
    }

    pub(crate) fn as_bytes(&self) -> &[u8; SALT_LEN] {
        &self.0
    }
}

impl Drop for EnvSalt {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for EnvSalt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EnvSalt(<redacted>)")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let salt = EnvSalt::generate(&mut StdRng::seed_from_u64(1)).unwrap();
        let text = salt.to_base64();
        assert_eq!(
            EnvSalt::from_base64(&text).unwrap().as_bytes(),
            salt.as_bytes()
        );
        assert_eq!(
            EnvSalt::from_base64(text.trim_end_matches('='))
                .unwrap()
                .as_bytes(),
            salt.as_bytes()
        );
        assert!(!format!("{salt:?}").contains(text.trim_end_matches('=')));
        assert_eq!(
            EnvSalt::from_base64("%%").unwrap_err(),
            KeyError::SaltNotBase64
        );
        assert_eq!(
            EnvSalt::from_bytes(&salt.as_bytes()[..31]).unwrap_err(),
            KeyError::SaltWrongLength { len: 31 }
        );
        let err = EnvSalt::from_bytes(&[0; 32]).unwrap_err();
        assert_eq!(err.label(), "salt_low_entropy");
        assert!(err.to_string().contains("sentinel keys new"));
    }
}
