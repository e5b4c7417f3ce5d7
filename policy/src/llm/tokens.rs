//! Token counters for the estimate.
//!
//! Why load once: building a BPE table parses a ~4 MB rank file (tens to hundreds of
//! milliseconds); the proxy builds [`Tokenizers`] at start and shares it.

use tiktoken_rs::CoreBPE;

use super::price::Tokenizer;

/// Token counters built once at start (loading a BPE takes a moment) and shared.
pub struct Tokenizers {
    o200k: CoreBPE,
    cl100k: CoreBPE,
}

/// A tokenizer that could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EstimateError {
    /// The embedded BPE table failed to load (a broken build, not a runtime condition).
    #[error("cannot load the {name} tokenizer: {why}")]
    Load { name: &'static str, why: String },
}

impl Tokenizers {
    /// Builds the `o200k_base` and `cl100k_base` tables (embedded in the binary).
    pub fn load() -> Result<Tokenizers, EstimateError> {
        Ok(Tokenizers {
            o200k: load("o200k_base", tiktoken_rs::o200k_base())?,
            cl100k: load("cl100k_base", tiktoken_rs::cl100k_base())?,
        })
    }

    /// Upper bound of the tokens of `text` under `t` (Bytes: text.len()). For the BPE
    /// tokenizers, the exact count of the text encoded on its own (special-token text counted
    /// as ordinary text, as providers treat user content), except that whitespace runs over
    /// 4 KiB count one token per byte.
    pub fn count(&self, t: Tokenizer, text: &str) -> u64 {
        let bpe = match t {
            Tokenizer::Bytes => return len_u64(text.len()),
            Tokenizer::O200k => &self.o200k,
            Tokenizer::Cl100k => &self.cl100k,
        };
        if text.len() <= LONG_WHITESPACE {
            return bpe_count(bpe, text);
        }
        // Long whitespace runs are counted by bytes and cut out of what the regex sees.
        let mut total = 0u64;
        let mut from = 0; // start of the text not counted yet
        let mut run = None; // start of the current whitespace run
        // A non-space sentinel at the end closes a trailing run.
        for (i, c) in text.char_indices().chain([(text.len(), '.')]) {
            if c.is_whitespace() {
                run.get_or_insert(i);
            } else if let Some(start) = run.take()
                && i - start > LONG_WHITESPACE
            {
                total = total
                    .saturating_add(bpe_count(bpe, &text[from..start]))
                    .saturating_add(len_u64(i - start))
                    .saturating_add(CUT_SLACK);
                from = i;
            }
        }
        total.saturating_add(bpe_count(bpe, &text[from..]))
    }
}

/// Whitespace runs longer than this (bytes) are counted one token per byte instead of being
/// tokenized: tiktoken's regex (`\s+(?!\S)`, run by fancy-regex's backtracking VM) overflows its
/// stack on runs of some hundred thousand spaces, and tiktoken-rs then panics.
const LONG_WHITESPACE: usize = 4_096;

/// Tokens added where a long whitespace run is cut out: the pieces on either side of the cut
/// may tokenize differently than they would joined (a space gluing to the next word).
const CUT_SLACK: u64 = 2;

/// BPE tokens of `text`. Should tiktoken still panic on some input, the byte length (an upper
/// bound: no token is shorter than a byte) is used instead of failing the request.
fn bpe_count(bpe: &CoreBPE, text: &str) -> u64 {
    if text.is_empty() {
        return 0;
    }
    let counted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        bpe.encode_ordinary(text).len()
    }));
    len_u64(counted.unwrap_or(text.len()))
}

impl std::fmt::Debug for Tokenizers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokenizers { o200k_base, cl100k_base }")
    }
}

/// `usize` → `u64` (lossless on every supported target; saturating otherwise).
pub(crate) fn len_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// A BPE table or the reason it did not load (tiktoken-rs errors are `anyhow`; only their text
/// is kept, so this crate need not depend on anyhow).
fn load<E: std::fmt::Display>(
    name: &'static str,
    table: Result<CoreBPE, E>,
) -> Result<CoreBPE, EstimateError> {
    table.map_err(|e| EstimateError::Load {
        name,
        why: e.to_string(),
    })
}

/// One set of tokenizers for all tests of the module (loading takes a moment).
#[cfg(test)]
pub(crate) fn shared_for_tests() -> &'static Tokenizers {
    static TOKENIZERS: std::sync::LazyLock<Tokenizers> =
        std::sync::LazyLock::new(|| Tokenizers::load().expect("embedded tables load"));
    &TOKENIZERS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_counts() {
        let t = shared_for_tests();
        assert_eq!(t.count(Tokenizer::O200k, "hello world"), 2);
        assert_eq!(t.count(Tokenizer::Cl100k, "hello world"), 2);
        assert_eq!(t.count(Tokenizer::Bytes, "hello world"), 11);
        assert_eq!(t.count(Tokenizer::Bytes, "héllo"), 6);
        assert_eq!(t.count(Tokenizer::O200k, ""), 0);
        // Special-token text is ordinary text: more than the one special token.
        assert!(t.count(Tokenizer::O200k, "<|endoftext|>") > 1);
    }

    #[test]
    fn bpe_never_exceeds_bytes() {
        let t = shared_for_tests();
        for text in [
            "a",
            "the quick brown fox",
            "数据库连接",
            "🦀🦀🦀",
            "    \n\n\t  x",
        ] {
            for tk in [Tokenizer::O200k, Tokenizer::Cl100k] {
                assert!(
                    t.count(tk, text) <= t.count(Tokenizer::Bytes, text),
                    "{text}"
                );
            }
        }
    }

    #[test]
    fn long_whitespace_runs_do_not_reach_the_regex() {
        let t = shared_for_tests();
        // Plain tiktoken panics on this (fancy-regex stack overflow).
        let text = format!("hello{}x", " \t".repeat(512 * 1024));
        for tk in [Tokenizer::O200k, Tokenizer::Cl100k] {
            let n = t.count(tk, &text);
            assert!(n >= 1 << 20, "{n}");
            assert!(n <= 1 + (1 << 20) + 1 + CUT_SLACK, "{n}");
        }
        let trailing = format!("hello{}", " ".repeat(1 << 20));
        assert_eq!(
            t.count(Tokenizer::O200k, &trailing),
            1 + (1 << 20) + CUT_SLACK
        );
        // Runs up to the limit are tokenized as usual: 4_096 spaces are far fewer tokens.
        let short = format!("a{}b", " ".repeat(LONG_WHITESPACE));
        assert!(t.count(Tokenizer::O200k, &short) < 100);
    }

    #[test]
    fn shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Tokenizers>();
    }
}
