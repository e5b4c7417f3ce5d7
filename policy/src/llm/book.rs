//! The price book: model name → [`ModelPrice`], with shipped defaults.
//!
//! Why exact names only: a price guessed from a name prefix (`gpt-4o` for `gpt-4o-audio…`) can
//! be off by an order of magnitude in either direction; an unknown model is refused or priced by
//! config, never guessed. Defaults are a convenience: prices move, so config overrides them.

use std::collections::BTreeMap;

use super::money::Micros;
use super::price::{ModelPrice, Tokenizer};

/// model name → price. Exact names only: an unknown model is never guessed.
#[derive(Clone, Debug, Default)]
pub struct PriceBook {
    /// Sorted, so listings are stable.
    prices: BTreeMap<String, ModelPrice>,
}

impl PriceBook {
    /// The shipped defaults (USD per 1M tokens, from LLM-GATEWAYS.md §6 and the providers'
    /// pricing pages as of 2026): current OpenAI and Anthropic models, under their aliases and
    /// dated snapshot names. OpenAI cache writes cost the input rate; embeddings have no output.
    /// The output default equals the model's maximum, so the estimate stays a firm bound.
    pub fn defaults() -> PriceBook {
        let mut book = PriceBook::default();
        for (names, price) in default_prices() {
            for name in names {
                book.insert(*name, price.clone());
            }
        }
        book
    }

    /// The price of exactly `model`.
    pub fn get(&self, model: &str) -> Option<&ModelPrice> {
        self.prices.get(model)
    }

    /// Adds or replaces the price of `model`.
    pub fn insert(&mut self, model: impl Into<String>, price: ModelPrice) {
        self.prices.insert(model.into(), price);
    }

    /// Every model and its price, sorted by name.
    pub fn models(&self) -> impl Iterator<Item = (&str, &ModelPrice)> {
        self.prices
            .iter()
            .map(|(name, price)| (name.as_str(), price))
    }

    /// How many models are priced.
    pub fn len(&self) -> usize {
        self.prices.len()
    }

    /// Whether no model is priced.
    pub fn is_empty(&self) -> bool {
        self.prices.is_empty()
    }
}

/// `$x` per million tokens in micro-dollars, from millionths of a dollar (`usd(0, 150_000)` is
/// $0.15).
const fn usd(whole: u64, micros: u64) -> Micros {
    Micros(whole * 1_000_000 + micros)
}

/// An OpenAI chat/responses model: cache writes at the input rate, output default = max.
fn openai(
    input: Micros,
    cached: Micros,
    output: Micros,
    context_window: u64,
    max_output: u64,
) -> ModelPrice {
    ModelPrice {
        input,
        cached_input: cached,
        cache_write_5m: input,
        cache_write_1h: input,
        output,
        context_window,
        max_output_tokens: max_output,
        default_output_tokens: max_output,
        tokenizer: Tokenizer::O200k,
    }
}

/// An OpenAI embedding model: one rate, no output, max input per item.
fn embedding(input: Micros) -> ModelPrice {
    ModelPrice {
        input,
        cached_input: input,
        cache_write_5m: input,
        cache_write_1h: input,
        output: Micros::ZERO,
        context_window: 8_191,
        max_output_tokens: 0,
        default_output_tokens: 0,
        tokenizer: Tokenizer::Cl100k,
    }
}

/// An Anthropic model: 200K context, 64K output, counted by bytes.
fn anthropic(
    input: Micros,
    cache_read: Micros,
    write_5m: Micros,
    write_1h: Micros,
    output: Micros,
) -> ModelPrice {
    ModelPrice {
        input,
        cached_input: cache_read,
        cache_write_5m: write_5m,
        cache_write_1h: write_1h,
        output,
        context_window: 200_000,
        max_output_tokens: 64_000,
        default_output_tokens: 64_000,
        tokenizer: Tokenizer::Bytes,
    }
}

/// The default table: names sharing a price, then the price.
fn default_prices() -> Vec<(&'static [&'static str], ModelPrice)> {
    let gpt5 = (400_000, 128_000);
    let gpt41 = (1_047_576, 32_768);
    let gpt4o = (128_000, 16_384);
    vec![
        (
            &["gpt-5", "gpt-5-2025-08-07"][..],
            openai(usd(1, 250_000), usd(0, 125_000), usd(10, 0), gpt5.0, gpt5.1),
        ),
        (
            &["gpt-5-mini", "gpt-5-mini-2025-08-07"],
            openai(usd(0, 250_000), usd(0, 25_000), usd(2, 0), gpt5.0, gpt5.1),
        ),
        (
            &["gpt-5-nano", "gpt-5-nano-2025-08-07"],
            openai(
                usd(0, 50_000),
                usd(0, 5_000),
                usd(0, 400_000),
                gpt5.0,
                gpt5.1,
            ),
        ),
        (
            &["gpt-4.1", "gpt-4.1-2025-04-14"],
            openai(usd(2, 0), usd(0, 500_000), usd(8, 0), gpt41.0, gpt41.1),
        ),
        (
            &["gpt-4.1-mini", "gpt-4.1-mini-2025-04-14"],
            openai(
                usd(0, 400_000),
                usd(0, 100_000),
                usd(1, 600_000),
                gpt41.0,
                gpt41.1,
            ),
        ),
        (
            &["gpt-4.1-nano", "gpt-4.1-nano-2025-04-14"],
            openai(
                usd(0, 100_000),
                usd(0, 25_000),
                usd(0, 400_000),
                gpt41.0,
                gpt41.1,
            ),
        ),
        (
            &["gpt-4o", "gpt-4o-2024-08-06", "gpt-4o-2024-11-20"],
            openai(
                usd(2, 500_000),
                usd(1, 250_000),
                usd(10, 0),
                gpt4o.0,
                gpt4o.1,
            ),
        ),
        (
            &["gpt-4o-mini", "gpt-4o-mini-2024-07-18"],
            openai(
                usd(0, 150_000),
                usd(0, 75_000),
                usd(0, 600_000),
                gpt4o.0,
                gpt4o.1,
            ),
        ),
        (&["text-embedding-3-small"], embedding(usd(0, 20_000))),
        (&["text-embedding-3-large"], embedding(usd(0, 130_000))),
        (
            &["claude-opus-4-5", "claude-opus-4-5-20251101"],
            anthropic(
                usd(5, 0),
                usd(0, 500_000),
                usd(6, 250_000),
                usd(10, 0),
                usd(25, 0),
            ),
        ),
        (
            &["claude-sonnet-4-5", "claude-sonnet-4-5-20250929"],
            anthropic(
                usd(3, 0),
                usd(0, 300_000),
                usd(3, 750_000),
                usd(6, 0),
                usd(15, 0),
            ),
        ),
        (
            &["claude-haiku-4-5", "claude-haiku-4-5-20251001"],
            anthropic(
                usd(1, 0),
                usd(0, 100_000),
                usd(1, 250_000),
                usd(2, 0),
                usd(5, 0),
            ),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::Usage;

    #[test]
    fn defaults_are_valid_and_exact_names_only() {
        let book = PriceBook::defaults();
        assert!(book.len() >= 20, "{}", book.len());
        for (name, price) in book.models() {
            assert_eq!(price.validate(), Ok(()), "{name}");
            assert!(price.output > Micros::ZERO || name.starts_with("text-embedding"));
        }
        assert!(book.get("gpt-4o-mini").is_some());
        assert!(book.get("gpt-4o-mini-2099-01-01").is_none());
        assert!(book.get("GPT-4O").is_none());
        assert!(book.get("gpt-4").is_none());
        let names: Vec<_> = book.models().map(|(n, _)| n).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(names, sorted);
    }

    #[test]
    fn default_figures() {
        let book = PriceBook::defaults();
        let get = |m: &str| book.get(m).cloned().expect(m);

        let mini = get("gpt-4o-mini");
        assert_eq!(
            (mini.input, mini.cached_input, mini.output),
            (Micros(150_000), Micros(75_000), Micros(600_000))
        );
        assert_eq!(
            (mini.context_window, mini.max_output_tokens),
            (128_000, 16_384)
        );
        assert_eq!(mini.tokenizer, Tokenizer::O200k);

        let g5 = get("gpt-5-mini");
        assert_eq!(
            (g5.input, g5.cached_input, g5.output),
            (Micros(250_000), Micros(25_000), Micros(2_000_000))
        );
        assert_eq!(
            (get("gpt-5").context_window, get("gpt-5").max_output_tokens),
            (400_000, 128_000)
        );

        let emb = get("text-embedding-3-small");
        assert_eq!(
            (emb.input, emb.output, emb.tokenizer),
            (Micros(20_000), Micros::ZERO, Tokenizer::Cl100k)
        );
        assert_eq!(get("text-embedding-3-large").input, Micros(130_000));

        let sonnet = get("claude-sonnet-4-5");
        assert_eq!(sonnet, get("claude-sonnet-4-5-20250929"));
        assert_eq!(
            (
                sonnet.input,
                sonnet.cached_input,
                sonnet.cache_write_5m,
                sonnet.cache_write_1h,
                sonnet.output
            ),
            (
                Micros(3_000_000),
                Micros(300_000),
                Micros(3_750_000),
                Micros(6_000_000),
                Micros(15_000_000)
            )
        );
        assert_eq!(
            (sonnet.context_window, sonnet.max_output_tokens),
            (200_000, 64_000)
        );
        assert_eq!(sonnet.tokenizer, Tokenizer::Bytes);
        assert_eq!(get("claude-opus-4-5").cache_write_5m, Micros(6_250_000));
        assert_eq!(get("claude-haiku-4-5").output, Micros(5_000_000));
    }

    #[test]
    fn insert_overrides_a_default() {
        let mut book = PriceBook::defaults();
        let mut p = book.get("gpt-4o").cloned().expect("gpt-4o");
        p.input = Micros(1);
        book.insert("gpt-4o", p.clone());
        assert_eq!(book.get("gpt-4o"), Some(&p));
        let u = Usage {
            input: 1_000_000,
            ..Usage::default()
        };
        assert_eq!(p.cost(&u), Micros(1));
        assert!(PriceBook::default().is_empty());
    }
}
