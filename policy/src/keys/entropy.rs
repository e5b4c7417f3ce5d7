//! A cheap screen for key material that is visibly not random: all zero, one repeated byte, a short
//! repeated pattern, a counting sequence, few distinct byte values, or printable text (a
//! passphrase, or a hex or base64 string encoded once more). It cannot prove randomness; it catches the usual
//! mistakes. For 32 random bytes each test fails with a probability below 10⁻¹³.

/// Fewer distinct byte values than this in 32 or more bytes is refused. 32 random bytes hold about
/// 30 distinct values; fewer than 16 happens with a probability far below 10⁻²⁰.
pub(crate) const MIN_DISTINCT_BYTES: usize = 16;

/// Why `bytes` does not look random, or `None` when it passes every test.
pub(crate) fn weakness(bytes: &[u8]) -> Option<&'static str> {
    let (Some(&first), Some(_)) = (bytes.first(), bytes.get(1)) else {
        return Some("too short to judge");
    };
    if bytes.iter().all(|&b| b == 0) {
        return Some("all bytes are zero");
    }
    if bytes.iter().all(|&b| b == first) {
        return Some("one byte value repeated");
    }
    if (1..=bytes.len() / 2).any(|period| bytes.iter().zip(&bytes[period..]).all(|(a, b)| a == b)) {
        return Some("a short pattern repeated");
    }
    let step = bytes[1].wrapping_sub(first);
    if bytes.windows(2).all(|w| w[1].wrapping_sub(w[0]) == step) {
        return Some("a counting sequence");
    }
    let mut seen = [false; 256];
    for &b in bytes {
        seen[usize::from(b)] = true;
    }
    if seen.iter().filter(|&&s| s).count() < MIN_DISTINCT_BYTES {
        return Some("fewer than 16 distinct byte values");
    }
    if bytes.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        return Some(
            "printable text rather than random bytes; was a passphrase or a hex string encoded?",
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::weakness;

    /// SHA-256("abc"), a fixed stand-in for random bytes.
    const SHA256_ABC: [u8; 32] = [
        0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40, 0xde, 0x5d, 0xae, 0x22,
        0x23, 0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17, 0x7a, 0x9c, 0xb4, 0x10, 0xff, 0x61, 0xf2, 0x00,
        0x15, 0xad,
    ];

    #[test]
    fn refuses_visible_patterns() {
        assert_eq!(weakness(&[0; 32]), Some("all bytes are zero"));
        assert_eq!(weakness(&[7; 32]), Some("one byte value repeated"));
        let pattern: Vec<u8> = [0x13, 0x57, 0x9b, 0xdf].repeat(8);
        assert_eq!(weakness(&pattern), Some("a short pattern repeated"));
        let half: Vec<u8> = (0..16u8).map(|i| i.wrapping_mul(37) ^ 0xa5).collect();
        assert_eq!(weakness(&half.repeat(2)), Some("a short pattern repeated"));
        let counting: Vec<u8> = (0..32u8).collect();
        assert_eq!(weakness(&counting), Some("a counting sequence"));
        let down: Vec<u8> = (0..32u8).map(|i| 200 - 3 * i).collect();
        assert_eq!(weakness(&down), Some("a counting sequence"));
        let few = SHA256_ABC.map(|b| (b & 0x07) | 0x80);
        assert_eq!(weakness(&few), Some("fewer than 16 distinct byte values"));
        let text = b"correct horse battery staple and more words!";
        assert!(weakness(text).is_some_and(|w| w.starts_with("printable text")));
        let hex = b"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        assert!(weakness(hex).is_some());
    }

    #[test]
    fn passes_random_looking_bytes() {
        assert_eq!(weakness(&SHA256_ABC), None);
    }
}
