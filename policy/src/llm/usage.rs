//! Token usage of one call, in one shape for every provider.

/// Tokens of one call, normalised across providers. `input` excludes cache reads and cache
/// writes (OpenAI's prompt_tokens minus cached_tokens minus cache_write_tokens; Anthropic's
/// input_tokens); `output` includes reasoning tokens (reasoning is informational).
///
/// Why this split: each bucket has its own rate, and the buckets are disjoint, so pricing is
/// one multiply per bucket whatever the provider's own convention was.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    /// Uncached input tokens, priced at the input rate.
    pub input: u64,
    /// Input tokens read from the prompt cache.
    pub cached_input: u64,
    /// Input tokens written to a 5-minute cache (Anthropic) or to OpenAI's cache.
    pub cache_write_5m: u64,
    /// Input tokens written to a 1-hour cache (Anthropic).
    pub cache_write_1h: u64,
    /// Output tokens, reasoning included.
    pub output: u64,
    /// The reasoning part of `output`; not priced separately.
    pub reasoning: u64,
}

impl Usage {
    /// Every billed token: the input buckets plus output (reasoning is inside output).
    pub fn total_tokens(&self) -> u64 {
        self.input
            .saturating_add(self.cached_input)
            .saturating_add(self.cache_write_5m)
            .saturating_add(self.cache_write_1h)
            .saturating_add(self.output)
    }

    /// All input tokens, cached or not.
    pub fn total_input(&self) -> u64 {
        self.input
            .saturating_add(self.cached_input)
            .saturating_add(self.cache_write_5m)
            .saturating_add(self.cache_write_1h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn total_counts_reasoning_once() {
        let u = Usage {
            input: 10,
            cached_input: 20,
            cache_write_5m: 3,
            cache_write_1h: 4,
            output: 50,
            reasoning: 40,
        };
        assert_eq!(u.total_tokens(), 87);
        assert_eq!(u.total_input(), 37);
        let huge = Usage {
            input: u64::MAX,
            output: 1,
            ..Usage::default()
        };
        assert_eq!(huge.total_tokens(), u64::MAX);
    }
}
