//! A model's prices and limits, and pricing a [`Usage`].
//!
//! Why round up: the ledger must never under-charge, and a call is priced once; rounding each
//! call up costs at most one micro-dollar.

use super::money::Micros;
use super::usage::Usage;

/// Tokens per price unit: prices are per one million tokens.
const TOKENS_PER_UNIT: u128 = 1_000_000;

/// Prices in micro-dollars per one million tokens, and the model's limits.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct ModelPrice {
    /// Uncached input.
    pub input: Micros,
    /// Input read from the prompt cache.
    pub cached_input: Micros,
    /// Input written to a 5-minute cache (OpenAI cache writes are priced here too).
    pub cache_write_5m: Micros,
    /// Input written to a 1-hour cache.
    pub cache_write_1h: Micros,
    /// Output, reasoning included.
    pub output: Micros,
    /// Max input tokens the model accepts: a request above it is refused by the provider, so
    /// no estimate needs to go higher.
    pub context_window: u64,
    /// Clamp for requested output.
    pub max_output_tokens: u64,
    /// Output bound when the request names none (OpenAI chat/responses); must be
    /// <= `max_output_tokens`. Equal to it is the firm bound; lower trades firmness for headroom.
    pub default_output_tokens: u64,
    /// How input is counted before the call.
    pub tokenizer: Tokenizer,
}

/// How to count a model's tokens before the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Tokenizer {
    /// tiktoken `o200k_base` (gpt-4o, gpt-4.1, gpt-5, o-series).
    O200k,
    /// tiktoken `cl100k_base` (gpt-4, gpt-3.5, text-embedding-3).
    Cl100k,
    /// No public tokenizer (Claude): the documented conservative bound, one token per UTF-8
    /// byte (no tokenizer emits a token of less than one byte).
    Bytes,
}

/// A price that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PriceError {
    /// `default_output_tokens` above `max_output_tokens`.
    #[error("default_output_tokens ({default}) is above max_output_tokens ({max})")]
    DefaultAboveMax { default: u64, max: u64 },
    /// A zero context window would make every estimate zero.
    #[error("context_window must be at least 1")]
    NoContextWindow,
}

impl ModelPrice {
    /// Cost of `usage`, rounded UP to the next micro-dollar (sum in u128 of tokens × rate, then
    /// ceil-divide by 1_000_000).
    pub fn cost(&self, usage: &Usage) -> Micros {
        priced(&[
            (usage.input, self.input),
            (usage.cached_input, self.cached_input),
            (usage.cache_write_5m, self.cache_write_5m),
            (usage.cache_write_1h, self.cache_write_1h),
            (usage.output, self.output),
        ])
    }

    /// The highest rate any input token can be billed at (uncached or a cache write), so a
    /// bound priced with it holds whatever the provider caches.
    pub fn max_input_rate(&self) -> Micros {
        self.input.max(self.cache_write_5m).max(self.cache_write_1h)
    }

    /// Cost bound of `input` and `output` tokens: input at [`Self::max_input_rate`], no cache
    /// discount, rounded up.
    pub fn bound_cost(&self, input: u64, output: u64) -> Micros {
        priced(&[(input, self.max_input_rate()), (output, self.output)])
    }

    /// Checks the limits agree with each other (for config loading).
    pub fn validate(&self) -> Result<(), PriceError> {
        if self.default_output_tokens > self.max_output_tokens {
            return Err(PriceError::DefaultAboveMax {
                default: self.default_output_tokens,
                max: self.max_output_tokens,
            });
        }
        if self.context_window == 0 {
            return Err(PriceError::NoContextWindow);
        }
        Ok(())
    }
}

/// Σ tokens × rate per million, rounded up, saturating at `u64::MAX`.
fn priced(parts: &[(u64, Micros)]) -> Micros {
    let sum: u128 = parts
        .iter()
        .map(|&(tokens, rate)| u128::from(tokens) * u128::from(rate.0))
        .sum();
    Micros(u64::try_from(sum.div_ceil(TOKENS_PER_UNIT)).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// gpt-4o-mini-like: $0.15 in, $0.075 cached, $0.60 out.
    fn mini() -> ModelPrice {
        ModelPrice {
            input: Micros(150_000),
            cached_input: Micros(75_000),
            cache_write_5m: Micros(150_000),
            cache_write_1h: Micros(150_000),
            output: Micros(600_000),
            context_window: 128_000,
            max_output_tokens: 16_384,
            default_output_tokens: 16_384,
            tokenizer: Tokenizer::O200k,
        }
    }

    #[test]
    fn one_token_rounds_up_to_one_micro() {
        let u = Usage {
            input: 1,
            ..Usage::default()
        };
        // 1 × 150_000 / 1_000_000 = 0.15 micro → 1.
        assert_eq!(mini().cost(&u), Micros(1));
        assert_eq!(mini().cost(&Usage::default()), Micros::ZERO);
    }

    #[test]
    fn exact_figures() {
        let u = Usage {
            input: 1_000,
            ..Usage::default()
        };
        assert_eq!(mini().cost(&u), Micros(150));
        assert_eq!(mini().cost(&u).to_string(), "$0.000150");
        // 1_000 in + 500 cached + 2_000 out = 150 + 37.5 + 1_200 = 1_387.5 → 1_388.
        let u = Usage {
            input: 1_000,
            cached_input: 500,
            output: 2_000,
            reasoning: 1_500,
            ..Usage::default()
        };
        assert_eq!(mini().cost(&u), Micros(1_388));
        // The fractions are summed before rounding: 3 × 0.15 = 0.45 → 1, not 3.
        let u = Usage {
            input: 1,
            cache_write_5m: 1,
            cache_write_1h: 1,
            ..Usage::default()
        };
        assert_eq!(mini().cost(&u), Micros(1));
    }

    #[test]
    fn huge_usage_saturates() {
        let u = Usage {
            output: u64::MAX,
            ..Usage::default()
        };
        let mut p = mini();
        p.output = Micros(u64::MAX);
        assert_eq!(p.cost(&u), Micros(u64::MAX));
    }

    #[test]
    fn bound_uses_the_highest_input_rate() {
        let mut p = mini();
        p.cache_write_1h = Micros(300_000);
        assert_eq!(p.max_input_rate(), Micros(300_000));
        assert_eq!(p.bound_cost(1_000, 1_000), Micros(300 + 600));
    }

    #[test]
    fn validate_checks_limits() {
        assert_eq!(mini().validate(), Ok(()));
        let mut p = mini();
        p.default_output_tokens = 20_000;
        assert!(matches!(
            p.validate(),
            Err(PriceError::DefaultAboveMax {
                default: 20_000,
                max: 16_384
            })
        ));
        p.default_output_tokens = 1;
        p.context_window = 0;
        assert_eq!(p.validate(), Err(PriceError::NoContextWindow));
    }

    #[test]
    fn tokenizer_names_are_snake_case() {
        let json = serde_json::to_string(&Tokenizer::O200k).expect("serialize");
        assert_eq!(json, "\"o200k\"");
        let back: Tokenizer = serde_json::from_str("\"bytes\"").expect("deserialize");
        assert_eq!(back, Tokenizer::Bytes);
    }
}
