//! Sub-keys: HKDF-SHA256 (RFC 5869) of the master key, salted with the environment salt, with one
//! fixed `info` label per purpose. A sub-key leaked from one purpose reveals neither the master
//! key nor any other purpose's sub-key, and a credential made for one purpose never verifies for
//! another.

use std::fmt;

use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::master::MasterKey;
use super::salt::EnvSalt;

/// Bytes in a sub-key.
pub const SUBKEY_LEN: usize = 32;

// HKDF-SHA256 can expand to at most 255 hash lengths.
const _: () = assert!(SUBKEY_LEN <= 255 * 32);

/// What a sub-key is for. Each purpose has its own HKDF `info` label; the labels are part of the
/// stored formats and never change (a new scheme gets a new label, e.g. `sentinel/v2/…`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Purpose {
    /// AEAD key for sealed values (upstream passwords, provider API keys).
    Sealing,
    /// MAC key for tenant tokens (`stk1.…`).
    TenantToken,
    /// MAC key for virtual LLM keys (`sk-stn-…`).
    VirtualKey,
    /// MAC key for admin tokens (`sat1.…`).
    AdminToken,
}

impl Purpose {
    /// Every purpose.
    pub const ALL: [Purpose; 4] = [
        Purpose::Sealing,
        Purpose::TenantToken,
        Purpose::VirtualKey,
        Purpose::AdminToken,
    ];

    /// The HKDF `info` label of this purpose.
    pub const fn info(self) -> &'static [u8] {
        match self {
            Purpose::Sealing => b"sentinel/v1/seal",
            Purpose::TenantToken => b"sentinel/v1/tenant-token",
            Purpose::VirtualKey => b"sentinel/v1/virtual-key",
            Purpose::AdminToken => b"sentinel/v1/admin-token",
        }
    }
}

/// A derived key for one purpose, wiped on drop, never printed.
pub struct SubKey(Zeroizing<[u8; SUBKEY_LEN]>);

impl SubKey {
    pub(crate) fn as_bytes(&self) -> &[u8; SUBKEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for SubKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SubKey(<redacted>)")
    }
}

/// `HKDF-SHA256(salt = environment salt, IKM = master key, info = purpose label, L = 32)`.
pub fn derive(master: &MasterKey, salt: &EnvSalt, purpose: Purpose) -> SubKey {
    let mut okm = Zeroizing::new([0u8; SUBKEY_LEN]);
    match hkdf_sha256(
        salt.as_bytes(),
        master.as_bytes(),
        purpose.info(),
        okm.as_mut(),
    ) {
        Ok(()) => SubKey(okm),
        // HKDF-SHA256 only refuses outputs over 8160 bytes; the assertion above pins 32.
        Err(hkdf::InvalidLength) => unreachable!("a 32-byte HKDF-SHA256 output is always valid"),
    }
}

/// HKDF-SHA256 extract-then-expand into `okm`: the one place the key module calls HKDF, checked
/// against the RFC 5869 vectors.
fn hkdf_sha256(
    salt: &[u8],
    ikm: &[u8],
    info: &[u8],
    okm: &mut [u8],
) -> Result<(), hkdf::InvalidLength> {
    Hkdf::<Sha256>::new(Some(salt), ikm).expand(info, okm)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn hex(text: &str) -> Vec<u8> {
        let text: String = text.split_whitespace().collect();
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    /// RFC 5869 appendix A, test cases 1 to 3 (SHA-256): (IKM, salt, info, PRK, OKM).
    const RFC5869: [(&str, &str, &str, &str, &str); 3] = [
        (
            "0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b",
            "000102030405060708090a0b0c",
            "f0f1f2f3f4f5f6f7f8f9",
            "077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5",
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf
             34007208d5b887185865",
        ),
        (
            "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f
             202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f
             404142434445464748494a4b4c4d4e4f",
            "606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f
             808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f
             a0a1a2a3a4a5a6a7a8a9aaabacadaeaf",
            "b0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1c2c3c4c5c6c7c8c9cacbcccdcecf
             d0d1d2d3d4d5d6d7d8d9dadbdcdddedfe0e1e2e3e4e5e6e7e8e9eaebecedeeef
             f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff",
            "06a6b88c5853361a06104c9ceb35b45cef760014904671014a193f40c15fc244",
            "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c
             59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71
             cc30c58179ec3e87c14c01d5c1f3434f1d87",
        ),
        (
            "0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b",
            "",
            "",
            "19ef24a32c717b167f33a91d6f648bdf96596776afdb6377ac434c1c293ccb04",
            "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d
             9d201395faa4b61a96c8",
        ),
    ];

    #[test]
    fn rfc5869_sha256_vectors() {
        for (case, (ikm, salt, info, prk, okm)) in RFC5869.into_iter().enumerate() {
            let (ikm, salt, info, prk, okm) = (hex(ikm), hex(salt), hex(info), hex(prk), hex(okm));
            let (got_prk, _) = Hkdf::<Sha256>::extract(Some(&salt), &ikm);
            assert_eq!(got_prk.as_slice(), prk, "case {} PRK", case + 1);
            let mut got = vec![0u8; okm.len()];
            hkdf_sha256(&salt, &ikm, &info, &mut got).unwrap();
            assert_eq!(got, okm, "case {} OKM", case + 1);
        }
    }

    #[test]
    fn labels_are_distinct_and_keys_differ_per_purpose_and_salt() {
        let mut rng = StdRng::seed_from_u64(3);
        let master = MasterKey::generate(&mut rng).unwrap();
        let salt = EnvSalt::generate(&mut rng).unwrap();
        let other_salt = EnvSalt::generate(&mut rng).unwrap();
        let mut seen = Vec::new();
        for purpose in Purpose::ALL {
            assert!(!seen.contains(&purpose.info().to_vec()));
            seen.push(purpose.info().to_vec());
            let key = derive(&master, &salt, purpose);
            assert_eq!(key.as_bytes(), derive(&master, &salt, purpose).as_bytes());
            assert_ne!(
                key.as_bytes(),
                derive(&master, &other_salt, purpose).as_bytes()
            );
            for other in Purpose::ALL.into_iter().filter(|&p| p != purpose) {
                assert_ne!(key.as_bytes(), derive(&master, &salt, other).as_bytes());
            }
        }
    }

    #[test]
    fn derive_is_hkdf_of_master_with_salt_and_label() {
        let mut rng = StdRng::seed_from_u64(4);
        let master = MasterKey::generate(&mut rng).unwrap();
        let salt = EnvSalt::generate(&mut rng).unwrap();
        let mut want = [0u8; 32];
        Hkdf::<Sha256>::new(Some(salt.as_bytes()), master.as_bytes())
            .expand(b"sentinel/v1/seal", &mut want)
            .unwrap();
        assert_eq!(derive(&master, &salt, Purpose::Sealing).as_bytes(), &want);
    }

    #[test]
    fn debug_is_redacted() {
        let mut rng = StdRng::seed_from_u64(5);
        let key = derive(
            &MasterKey::generate(&mut rng).unwrap(),
            &EnvSalt::generate(&mut rng).unwrap(),
            Purpose::TenantToken,
        );
        assert_eq!(format!("{key:?}"), "SubKey(<redacted>)");
    }
}
