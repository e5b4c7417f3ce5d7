//! Money as integer micro-dollars.
//!
//! Why integers: budgets are compared and summed millions of times; floats drift (LiteLLM's
//! float spend shows the noise) and a budget check must be exact. One micro-dollar is below any
//! price step that matters, and `u64` holds about 18 trillion dollars.

use std::fmt;

/// Micro-dollars per dollar.
const PER_USD: u64 = 1_000_000;

/// Decimal places a USD amount may carry.
const DECIMALS: usize = 6;

/// Integer micro-dollars (1 USD = 1_000_000). Never floats.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(transparent)]
pub struct Micros(pub u64);

impl Micros {
    /// Nothing.
    pub const ZERO: Micros = Micros(0);

    /// Sum, stuck at `u64::MAX` rather than wrapping (a budget must never turn small).
    pub fn saturating_add(self, o: Micros) -> Micros {
        Micros(self.0.saturating_add(o.0))
    }

    /// Difference, stuck at zero.
    pub fn saturating_sub(self, o: Micros) -> Micros {
        Micros(self.0.saturating_sub(o.0))
    }

    /// Whole dollars from integer dollars, saturating (for config defaults and tests).
    pub fn from_usd(dollars: u64) -> Micros {
        Micros(dollars.saturating_mul(PER_USD))
    }

    /// Parses a decimal USD amount like "10", "0.25", "1.250000" (at most 6 decimals; no sign,
    /// no exponent, no spaces, digits on both sides of a dot).
    pub fn parse_usd(s: &str) -> Result<Micros, MoneyError> {
        let err = |why| MoneyError {
            input: s.chars().take(40).collect(),
            why,
        };
        let (whole, frac) = match s.split_once('.') {
            Some((w, f)) => (w, f),
            None => (s, ""),
        };
        if whole.is_empty() {
            return Err(err("no digits before the decimal point"));
        }
        if s.contains('.') && frac.is_empty() {
            return Err(err("no digits after the decimal point"));
        }
        if !whole.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err(
                "only digits and one decimal point are allowed (no sign, exponent or spaces)",
            ));
        }
        if frac.len() > DECIMALS {
            return Err(err(
                "more than 6 decimal places (the unit is one micro-dollar)",
            ));
        }
        let too_large = || err("amount too large");
        let whole: u64 = whole.parse().map_err(|_| too_large())?;
        // `frac` is at most 6 digits: scale it to micro-dollars.
        let mut micros: u64 = 0;
        for b in frac.bytes().chain(std::iter::repeat(b'0')).take(DECIMALS) {
            micros = micros * 10 + u64::from(b - b'0');
        }
        whole
            .checked_mul(PER_USD)
            .and_then(|w| w.checked_add(micros))
            .map(Micros)
            .ok_or_else(too_large)
    }
}

impl fmt::Display for Micros {
    /// `$12.345678`: always six decimals, so amounts line up and round-trip through
    /// [`Micros::parse_usd`] (after the `$`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "${}.{:06}", self.0 / PER_USD, self.0 % PER_USD)
    }
}

/// A USD amount that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid USD amount {input:?}: {why}")]
pub struct MoneyError {
    /// The text (its first 40 characters).
    input: String,
    /// What is wrong with it.
    why: &'static str,
}

impl MoneyError {
    /// What is wrong, without the input.
    pub fn why(&self) -> &'static str {
        self.why
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_whole_and_fractional_amounts() {
        assert_eq!(Micros::parse_usd("10"), Ok(Micros(10_000_000)));
        assert_eq!(Micros::parse_usd("0.25"), Ok(Micros(250_000)));
        assert_eq!(Micros::parse_usd("1.250000"), Ok(Micros(1_250_000)));
        assert_eq!(Micros::parse_usd("0.000001"), Ok(Micros(1)));
        assert_eq!(Micros::parse_usd("0"), Ok(Micros::ZERO));
        assert_eq!(Micros::parse_usd("007.5"), Ok(Micros(7_500_000)));
        assert_eq!(
            Micros::parse_usd("18446744073709.551615"),
            Ok(Micros(u64::MAX))
        );
    }

    #[test]
    fn refuses_malformed_amounts() {
        for (text, why) in [
            ("", "no digits before"),
            (".5", "no digits before"),
            ("5.", "no digits after"),
            ("-1", "only digits"),
            ("+1", "only digits"),
            ("1e3", "only digits"),
            (" 1", "only digits"),
            ("1.2.3", "only digits"),
            ("1,5", "only digits"),
            ("0.0000001", "more than 6"),
            ("18446744073709.551616", "too large"),
            ("99999999999999999999", "too large"),
        ] {
            let err = Micros::parse_usd(text).expect_err(text);
            assert!(err.why().contains(why), "{text}: {err}");
            assert!(err.to_string().contains(&format!("{text:?}")), "{err}");
        }
    }

    #[test]
    fn displays_six_decimals() {
        assert_eq!(Micros(150).to_string(), "$0.000150");
        assert_eq!(Micros(12_345_678).to_string(), "$12.345678");
        assert_eq!(Micros::ZERO.to_string(), "$0.000000");
        assert_eq!(Micros::from_usd(3).to_string(), "$3.000000");
    }

    #[test]
    fn display_round_trips_through_parse() {
        for m in [0, 1, 999_999, 1_000_000, 123_456_789, u64::MAX] {
            let shown = Micros(m).to_string();
            let back = Micros::parse_usd(shown.trim_start_matches('$'));
            assert_eq!(back, Ok(Micros(m)), "{shown}");
        }
    }

    #[test]
    fn arithmetic_saturates() {
        assert_eq!(Micros(u64::MAX).saturating_add(Micros(1)), Micros(u64::MAX));
        assert_eq!(Micros(1).saturating_sub(Micros(2)), Micros::ZERO);
        assert_eq!(Micros(5).saturating_add(Micros(7)), Micros(12));
    }

    #[test]
    fn serializes_as_a_bare_integer() {
        let json = serde_json::to_string(&Micros(42)).expect("serialize");
        assert_eq!(json, "42");
        let back: Micros = serde_json::from_str("42").expect("deserialize");
        assert_eq!(back, Micros(42));
    }
}
