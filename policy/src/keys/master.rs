//! Master keys, their ids, and the keyring that holds the current key and older ones.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use rand::{CryptoRng, RngCore};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::entropy::weakness;
use super::error::KeyError;

/// Fewest bytes a master key may have.
pub const MIN_MASTER_KEY_LEN: usize = 32;
/// Most bytes a master key may have.
pub const MAX_MASTER_KEY_LEN: usize = 64;
/// Bytes in a key made by [`MasterKey::generate`].
pub const GENERATED_MASTER_KEY_LEN: usize = 32;
/// Longest key id.
pub const MAX_KEY_ID_LEN: usize = 16;

/// How often `generate` draws again when the generator hands out visibly non-random bytes before
/// it gives up. A working generator needs one draw.
const GENERATE_ATTEMPTS: usize = 4;

/// Standard base64 alphabet, padding optional, canonical trailing bits required.
pub(crate) const STANDARD_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

// === impl MasterKey ===

/// A master key: 32 to 64 random bytes, wiped from memory on drop. It is never used directly:
/// every use goes through a sub-key derived for one purpose (see `derive`).
#[derive(Clone)]
pub struct MasterKey(Zeroizing<Vec<u8>>);

impl MasterKey {
    /// Parses standard base64 (padded or not; surrounding whitespace, such as a file's final
    /// newline, is ignored) and checks the bytes like [`MasterKey::from_bytes`].
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(KeyError::MissingMasterKey);
        }
        let bytes = Zeroizing::new(
            STANDARD_LENIENT
                .decode(text)
                .map_err(|_| KeyError::MasterKeyNotBase64)?,
        );
        Self::from_bytes(&bytes)
    }

    /// Checks length (32 to 64 bytes) and refuses visibly non-random bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let len = bytes.len();
        if len < MIN_MASTER_KEY_LEN {
            return Err(KeyError::MasterKeyTooShort { len });
        }
        if len > MAX_MASTER_KEY_LEN {
            return Err(KeyError::MasterKeyTooLong { len });
        }
        if let Some(reason) = weakness(bytes) {
            return Err(KeyError::MasterKeyLowEntropy { reason });
        }
        Ok(MasterKey(Zeroizing::new(bytes.to_vec())))
    }

    /// A new key of 32 bytes from `rng`. Fails only if the generator repeatedly hands out bytes
    /// that [`MasterKey::from_bytes`] refuses, which a working generator does not.
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> Result<Self, KeyError> {
        let mut bytes = Zeroizing::new([0u8; GENERATED_MASTER_KEY_LEN]);
        for _ in 0..GENERATE_ATTEMPTS {
            rng.fill_bytes(bytes.as_mut());
            if weakness(bytes.as_ref()).is_none() {
                return Ok(MasterKey(Zeroizing::new(bytes.to_vec())));
            }
        }
        Err(KeyError::RandomnessFailure)
    }

    /// The key as standard padded base64, the form `sentinel keys new` prints.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(self.0.as_slice()))
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Constant-time equality of the key bytes.
    fn same_key(&self, other: &MasterKey) -> bool {
        self.0.as_slice().ct_eq(other.0.as_slice()).into()
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

// === impl KeyId ===

/// The short id of a master key, `[a-z0-9]{1,16}` (e.g. `k1`). Not secret: sealed values and
/// tokens carry it so the right key can be found after a rotation.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(Box<str>);

impl KeyId {
    /// Checks `id` against `[a-z0-9]{1,16}`.
    pub fn new(id: &str) -> Result<Self, KeyError> {
        if is_key_id(id) {
            Ok(KeyId(id.into()))
        } else {
            Err(KeyError::InvalidKeyId)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// True when `id` is `[a-z0-9]{1,16}`.
pub(crate) fn is_key_id(id: &str) -> bool {
    (1..=MAX_KEY_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

impl FromStr for KeyId {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        KeyId::new(s)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.0)
    }
}

// === impl Keyring ===

/// Several master keys with ids, one of them current. New values are sealed and new tokens signed
/// with the current key; anything made with an older key still opens or verifies while that key is
/// in the ring.
///
/// Text form (what `SENTINEL_MASTER_KEY` or a key file holds, see [`Keyring::parse`]):
/// `id:base64` entries separated by commas or newlines; **the first entry is the current key**.
/// `k2:<base64>,k1:<base64>` is the keyring after one rotation.
#[derive(Clone)]
pub struct Keyring {
    /// Never empty; `keys[0]` is current. Ids and key bytes are unique.
    keys: Vec<(KeyId, MasterKey)>,
}

impl Keyring {
    /// A keyring of one key, which is current.
    pub fn new(id: KeyId, key: MasterKey) -> Self {
        Keyring {
            keys: vec![(id, key)],
        }
    }

    /// A keyring of one new random key with id `id`.
    pub fn generate(id: KeyId, rng: &mut (impl RngCore + CryptoRng)) -> Result<Self, KeyError> {
        Ok(Keyring::new(id, MasterKey::generate(rng)?))
    }

    /// Parses the text form: `id:base64` entries separated by commas or newlines, surrounding
    /// whitespace and empty entries ignored, the first entry current. Ids must be unique, and so
    /// must the keys. Errors name the entry by position, never its content.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let mut keys: Vec<(KeyId, MasterKey)> = Vec::new();
        let entries: Vec<&str> = text
            .split([',', '\n'])
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .collect();
        let single = entries.len() == 1;
        for (index, entry) in entries.into_iter().enumerate() {
            let number = index + 1;
            // A lone key without an id (plain base64, as in `SENTINEL_MASTER_KEY=<base64>`) is
            // key `k1`; base64 never contains ':'.
            let (id, key) = match entry.split_once(':') {
                Some(pair) => pair,
                None if single => ("k1", entry),
                None => return Err(KeyError::KeyringEntryMalformed { entry: number }),
            };
            let in_entry = |reason: KeyError| KeyError::KeyringEntry {
                entry: number,
                reason: Box::new(reason),
            };
            let id = KeyId::new(id.trim()).map_err(in_entry)?;
            let key = MasterKey::from_base64(key).map_err(in_entry)?;
            check_unique(&keys, &id, &key)?;
            keys.push((id, key));
        }
        if keys.is_empty() {
            return Err(KeyError::MissingMasterKey);
        }
        Ok(Keyring { keys })
    }

    /// The text form, current key first, entries separated by commas, keys in padded standard
    /// base64. [`Keyring::parse`] reads it back.
    pub fn render(&self) -> Zeroizing<String> {
        // Sized up front so the string never reallocates and leaves key text behind.
        let per_entry = MAX_KEY_ID_LEN + 2 + MAX_MASTER_KEY_LEN.div_ceil(3) * 4;
        let mut out = Zeroizing::new(String::with_capacity(self.keys.len() * per_entry));
        for (i, (id, key)) in self.keys.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(id.as_str());
            out.push(':');
            out.push_str(&key.to_base64());
        }
        out
    }

    /// A copy with `key` added as the new current key; the old keys stay for opening and
    /// verifying. Refuses an id or a key already present.
    pub fn with_new_current(&self, id: KeyId, key: MasterKey) -> Result<Self, KeyError> {
        check_unique(&self.keys, &id, &key)?;
        let mut keys = Vec::with_capacity(self.keys.len() + 1);
        keys.push((id, key));
        keys.extend(self.keys.iter().cloned());
        Ok(Keyring { keys })
    }

    /// A copy without the key `id`. Refuses the current key (and so the last one) and ids that
    /// are not in the ring.
    pub fn without(&self, id: &KeyId) -> Result<Self, KeyError> {
        if self.current_id() == id {
            return Err(KeyError::CannotDropCurrent { id: id.clone() });
        }
        if !self.keys.iter().any(|(k, _)| k == id) {
            return Err(KeyError::UnknownKeyId { id: id.clone() });
        }
        Ok(Keyring {
            keys: self.keys.iter().filter(|(k, _)| k != id).cloned().collect(),
        })
    }

    /// The id of the current key.
    pub fn current_id(&self) -> &KeyId {
        &self.keys[0].0
    }

    /// The current key and its id.
    pub fn current(&self) -> (&KeyId, &MasterKey) {
        let (id, key) = &self.keys[0];
        (id, key)
    }

    /// The key with id `id`, if the ring holds it.
    pub fn get(&self, id: &str) -> Option<&MasterKey> {
        self.keys
            .iter()
            .find(|(k, _)| k.as_str() == id)
            .map(|(_, key)| key)
    }

    /// Every id, current first.
    pub fn ids(&self) -> impl Iterator<Item = &KeyId> {
        self.keys.iter().map(|(id, _)| id)
    }
}

/// Refuses `id` or `key` when `keys` already holds it.
fn check_unique(keys: &[(KeyId, MasterKey)], id: &KeyId, key: &MasterKey) -> Result<(), KeyError> {
    for (other_id, other_key) in keys {
        if other_id == id {
            return Err(KeyError::DuplicateKeyId { id: id.clone() });
        }
        if other_key.same_key(key) {
            return Err(KeyError::DuplicateKey {
                first: other_id.clone(),
                second: id.clone(),
            });
        }
    }
    Ok(())
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("current", self.current_id())
            .field("ids", &self.ids().collect::<Vec<_>>())
            .finish()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn rng() -> StdRng {
        StdRng::seed_from_u64(7)
    }

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    #[test]
    fn key_ids() {
        for ok in ["k1", "k2", "0", "abcdefghij012345"] {
            assert_eq!(KeyId::new(ok).unwrap().as_str(), ok);
        }
        for bad in ["", "K1", "k-1", "k 1", "k:1", "abcdefghij0123456", "ké"] {
            assert_eq!(KeyId::new(bad), Err(KeyError::InvalidKeyId), "{bad:?}");
        }
    }

    #[test]
    fn master_key_accepts_padded_and_unpadded_base64() {
        let key = MasterKey::generate(&mut rng()).unwrap();
        let padded = key.to_base64();
        assert!(padded.ends_with('='), "32 bytes pad to a multiple of 4");
        let unpadded = padded.trim_end_matches('=');
        for text in [
            padded.as_str(),
            unpadded,
            &format!("  {}\n", padded.as_str()),
        ] {
            let back = MasterKey::from_base64(text).unwrap();
            assert!(back.same_key(&key));
        }
        let mut long = [0u8; 64];
        rng().fill_bytes(&mut long);
        assert!(
            MasterKey::from_bytes(&long).is_ok(),
            "64 bytes are accepted"
        );
    }

    #[test]
    fn master_key_refusals_say_how_to_make_one() {
        let mut short = [0u8; 31];
        rng().fill_bytes(&mut short);
        let cases = [
            (String::new(), KeyError::MissingMasterKey),
            ("not base64!".to_owned(), KeyError::MasterKeyNotBase64),
            (b64(&short), KeyError::MasterKeyTooShort { len: 31 }),
            (
                b64(&[0u8; 32]),
                KeyError::MasterKeyLowEntropy {
                    reason: "all bytes are zero",
                },
            ),
            (
                b64(&[1, 2, 3, 4].repeat(8)),
                KeyError::MasterKeyLowEntropy {
                    reason: "a short pattern repeated",
                },
            ),
        ];
        for (text, want) in cases {
            let err = MasterKey::from_base64(&text).unwrap_err();
            assert_eq!(err, want);
            assert!(err.to_string().contains("sentinel keys new"), "{err}");
        }
        let mut long = [0u8; 65];
        rng().fill_bytes(&mut long);
        assert_eq!(
            MasterKey::from_bytes(&long).unwrap_err(),
            KeyError::MasterKeyTooLong { len: 65 }
        );
    }

    #[test]
    fn generate_refuses_a_broken_generator() {
        struct Zeros;
        impl RngCore for Zeros {
            fn next_u32(&mut self) -> u32 {
                0
            }
            fn next_u64(&mut self) -> u64 {
                0
            }
            fn fill_bytes(&mut self, dest: &mut [u8]) {
                dest.fill(0);
            }
            fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
                dest.fill(0);
                Ok(())
            }
        }
        impl CryptoRng for Zeros {}
        assert_eq!(
            MasterKey::generate(&mut Zeros).unwrap_err(),
            KeyError::RandomnessFailure
        );
    }

    #[test]
    fn keyring_text_round_trip_first_is_current() {
        let mut rng = rng();
        let k1 = MasterKey::generate(&mut rng).unwrap();
        let k2 = MasterKey::generate(&mut rng).unwrap();
        let text = format!(
            "k2:{},\n k1:{}\n",
            k2.to_base64().as_str(),
            k1.to_base64().as_str()
        );
        let ring = Keyring::parse(&text).unwrap();
        assert_eq!(ring.current_id().as_str(), "k2");
        assert!(ring.current().1.same_key(&k2));
        assert!(ring.get("k1").unwrap().same_key(&k1));
        assert!(ring.get("k3").is_none());
        let rendered = ring.render();
        assert_eq!(
            rendered.as_str(),
            format!(
                "k2:{},k1:{}",
                k2.to_base64().as_str(),
                k1.to_base64().as_str()
            )
        );
        let again = Keyring::parse(&rendered).unwrap();
        assert_eq!(
            again.ids().map(KeyId::as_str).collect::<Vec<_>>(),
            ["k2", "k1"]
        );
    }

    #[test]
    fn keyring_refusals_name_the_entry_not_its_content() {
        let mut rng = rng();
        let k1 = MasterKey::generate(&mut rng).unwrap();
        let good = format!("k1:{}", k1.to_base64().as_str());
        assert_eq!(
            Keyring::parse(" \n,").unwrap_err(),
            KeyError::MissingMasterKey
        );
        let bare = k1.to_base64();
        // A lone bare key is key k1; next to other entries an entry must name its id.
        let lone = Keyring::parse(&bare).unwrap();
        assert_eq!(lone.current_id().as_str(), "k1");
        let err = Keyring::parse(&format!("{good},{}", bare.as_str())).unwrap_err();
        assert_eq!(err, KeyError::KeyringEntryMalformed { entry: 2 });
        assert!(!err.to_string().contains(bare.as_str()));
        let err = Keyring::parse(&format!("{good},K2:{}", bare.as_str())).unwrap_err();
        assert_eq!(
            err,
            KeyError::KeyringEntry {
                entry: 2,
                reason: Box::new(KeyError::InvalidKeyId)
            }
        );
        let err = Keyring::parse(&format!("{good},k2:{}", b64(&[9u8; 40]))).unwrap_err();
        assert_eq!(err.label(), "keyring_entry");
        assert!(
            err.to_string()
                .starts_with("keyring entry 2: master key is not random enough")
        );
        let other = MasterKey::generate(&mut rng).unwrap();
        assert_eq!(
            Keyring::parse(&format!("{good},k1:{}", other.to_base64().as_str())).unwrap_err(),
            KeyError::DuplicateKeyId {
                id: KeyId::new("k1").unwrap()
            }
        );
        assert_eq!(
            Keyring::parse(&format!("{good},k2:{}", bare.as_str())).unwrap_err(),
            KeyError::DuplicateKey {
                first: KeyId::new("k1").unwrap(),
                second: KeyId::new("k2").unwrap()
            }
        );
    }

    #[test]
    fn rotation_adds_in_front_and_drops_old_keys_only() {
        let mut rng = rng();
        let k1 = KeyId::new("k1").unwrap();
        let k2 = KeyId::new("k2").unwrap();
        let ring = Keyring::generate(k1.clone(), &mut rng).unwrap();
        assert_eq!(
            ring.without(&k1).unwrap_err(),
            KeyError::CannotDropCurrent { id: k1.clone() }
        );
        let rotated = ring
            .with_new_current(k2.clone(), MasterKey::generate(&mut rng).unwrap())
            .unwrap();
        assert_eq!(rotated.ids().collect::<Vec<_>>(), [&k2, &k1]);
        assert_eq!(
            rotated
                .with_new_current(k1.clone(), MasterKey::generate(&mut rng).unwrap())
                .unwrap_err(),
            KeyError::DuplicateKeyId { id: k1.clone() }
        );
        assert_eq!(
            rotated.without(&k2).unwrap_err(),
            KeyError::CannotDropCurrent { id: k2.clone() }
        );
        let k3 = KeyId::new("k3").unwrap();
        assert_eq!(
            rotated.without(&k3).unwrap_err(),
            KeyError::UnknownKeyId { id: k3 }
        );
        let dropped = rotated.without(&k1).unwrap();
        assert_eq!(dropped.ids().collect::<Vec<_>>(), [&k2]);
    }

    #[test]
    fn debug_shows_no_key_material() {
        let ring = Keyring::generate(KeyId::new("k1").unwrap(), &mut rng()).unwrap();
        let (_, key) = ring.current();
        let b64 = key.to_base64();
        let unpadded = b64.trim_end_matches('=');
        for shown in [
            format!("{key:?}"),
            format!("{ring:?}"),
            format!("{ring:#?}"),
        ] {
            assert!(!shown.contains(unpadded), "{shown}");
            assert!(!shown.contains(&format!("{:?}", key.as_bytes())), "{shown}");
        }
        assert_eq!(format!("{key:?}"), "MasterKey(<redacted>)");
        assert_eq!(
            format!("{ring:?}"),
            "Keyring { current: KeyId(k1), ids: [KeyId(k1)] }"
        );
    }
}
