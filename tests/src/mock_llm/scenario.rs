//! Per-request knobs: how much usage to report, how to stream, which failure to stage.
//!
//! A test picks them with `x-mock-*` request headers (the SDKs can send extra headers, and a
//! proxy forwards them), falling back to the mock's defaults ([`Scenario::default`], or whatever
//! a test set with `MockLlm::set_defaults` / `POST /_mock/defaults` when it cannot send headers).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};

use super::record::Usage;

/// The request headers the mock reads.
pub mod header {
    /// Input tokens to report (OpenAI `prompt_tokens`/`input_tokens`; Anthropic `input_tokens`).
    pub const INPUT_TOKENS: &str = "x-mock-input-tokens";
    /// Output tokens to report; also the number of words in the generated text (capped).
    pub const OUTPUT_TOKENS: &str = "x-mock-output-tokens";
    /// OpenAI `cached_tokens`; Anthropic `cache_read_input_tokens`.
    pub const CACHED_TOKENS: &str = "x-mock-cached-tokens";
    /// Anthropic `cache_creation_input_tokens`; OpenAI `cache_write_tokens` (sent only when > 0).
    pub const CACHE_WRITE_TOKENS: &str = "x-mock-cache-write-tokens";
    /// OpenAI `reasoning_tokens` (a part of the output tokens).
    pub const REASONING_TOKENS: &str = "x-mock-reasoning-tokens";
    /// Number of content pieces in a stream (default 3).
    pub const CHUNKS: &str = "x-mock-chunks";
    /// `1`: Anthropic streams send two `message_delta` events (partial, then final count).
    pub const DOUBLE_DELTA: &str = "x-mock-double-delta";
    /// The failure to stage; see [`super::Fail`].
    pub const FAIL: &str = "x-mock-fail";
    /// Milliseconds for `slow-first-byte` / `stall-mid-stream`; for other modes a delay before
    /// the response head.
    pub const DELAY_MS: &str = "x-mock-delay-ms";
    /// The `retry-after` seconds sent with a 429 (default 1).
    pub const RETRY_AFTER: &str = "x-mock-retry-after";
    /// Milliseconds between streamed writes (default 5).
    pub const CHUNK_DELAY_MS: &str = "x-mock-chunk-delay-ms";
}

/// Words of generated text are capped so a test can report a huge token count cheaply.
const MAX_WORDS: u64 = 2000;

/// A staged failure (header `x-mock-fail`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Fail {
    /// `400`…`599`: that status with a provider-shaped error body (429 adds `retry-after`).
    Status(u16),
    /// `slow-first-byte`: wait before sending the response head.
    SlowFirstByte,
    /// `cut`: send about half the response, then drop the connection.
    Cut,
    /// `error-after-200`: a 200 stream that turns into an error event, then ends.
    ErrorAfter200,
    /// `hang`: never answer (until the client goes away).
    Hang,
    /// `stall-mid-stream`: a couple of chunks, then silence, then the rest.
    StallMidStream,
    /// `no-usage`: a normal answer without any usage.
    NoUsage,
}

impl FromStr for Fail {
    type Err = String;

    fn from_str(s: &str) -> Result<Fail, String> {
        let fail = match s.trim() {
            "slow-first-byte" => Fail::SlowFirstByte,
            "cut" => Fail::Cut,
            "error-after-200" => Fail::ErrorAfter200,
            "hang" => Fail::Hang,
            "stall-mid-stream" => Fail::StallMidStream,
            "no-usage" => Fail::NoUsage,
            other => match other.parse::<u16>() {
                Ok(code @ 400..=599) => Fail::Status(code),
                _ => return Err(format!("unknown {}: {other:?}", header::FAIL)),
            },
        };
        Ok(fail)
    }
}

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fail::Status(code) => write!(f, "{code}"),
            Fail::SlowFirstByte => f.write_str("slow-first-byte"),
            Fail::Cut => f.write_str("cut"),
            Fail::ErrorAfter200 => f.write_str("error-after-200"),
            Fail::Hang => f.write_str("hang"),
            Fail::StallMidStream => f.write_str("stall-mid-stream"),
            Fail::NoUsage => f.write_str("no-usage"),
        }
    }
}

impl TryFrom<String> for Fail {
    type Error = String;
    fn try_from(s: String) -> Result<Fail, String> {
        s.parse()
    }
}

impl From<Fail> for String {
    fn from(f: Fail) -> String {
        f.to_string()
    }
}

/// Everything that shapes one answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Scenario {
    /// The usage to report (see [`Usage`] for what each field means per provider).
    pub usage: Usage,
    /// Content pieces in a stream.
    pub chunks: usize,
    /// Anthropic: two `message_delta` events, the first with half the output count.
    pub double_delta: bool,
    pub fail: Option<Fail>,
    /// See [`header::DELAY_MS`].
    pub delay_ms: Option<u64>,
    /// `retry-after` seconds on a 429.
    pub retry_after: u64,
    /// Pause between streamed writes.
    pub chunk_delay_ms: u64,
}

impl Default for Scenario {
    fn default() -> Scenario {
        Scenario {
            usage: Usage {
                input_tokens: 10,
                output_tokens: 20,
                ..Usage::default()
            },
            chunks: 3,
            double_delta: false,
            fail: None,
            delay_ms: None,
            retry_after: 1,
            chunk_delay_ms: 5,
        }
    }
}

impl Scenario {
    /// `defaults` overridden by any `x-mock-*` headers; an unparsable header is an error so a
    /// typo in a test fails loudly instead of silently using the default.
    pub fn from_headers(defaults: &Scenario, headers: &HeaderMap) -> Result<Scenario, String> {
        let mut s = defaults.clone();
        let u = &mut s.usage;
        for (name, slot) in [
            (header::INPUT_TOKENS, &mut u.input_tokens),
            (header::OUTPUT_TOKENS, &mut u.output_tokens),
            (header::CACHED_TOKENS, &mut u.cached_tokens),
            (header::CACHE_WRITE_TOKENS, &mut u.cache_write_tokens),
            (header::REASONING_TOKENS, &mut u.reasoning_tokens),
            (header::RETRY_AFTER, &mut s.retry_after),
            (header::CHUNK_DELAY_MS, &mut s.chunk_delay_ms),
        ] {
            if let Some(v) = parse(headers, name)? {
                *slot = v;
            }
        }
        if let Some(v) = parse(headers, header::CHUNKS)? {
            s.chunks = v;
        }
        if let Some(v) = parse::<u8>(headers, header::DOUBLE_DELTA)? {
            s.double_delta = v != 0;
        }
        if let Some(v) = parse(headers, header::DELAY_MS)? {
            s.delay_ms = Some(v);
        }
        if let Some(v) = parse(headers, header::FAIL)? {
            s.fail = Some(v);
        }
        Ok(s)
    }

    pub(crate) fn fails(&self, fail: Fail) -> bool {
        self.fail == Some(fail)
    }

    /// The usage the answer reports, or `None` under `no-usage`.
    pub(crate) fn reported_usage(&self) -> Option<Usage> {
        (!self.fails(Fail::NoUsage)).then_some(self.usage)
    }

    pub(crate) fn chunk_delay(&self) -> Duration {
        Duration::from_millis(self.chunk_delay_ms)
    }

    /// How long a stalled stream stays silent.
    pub(crate) fn stall(&self) -> Duration {
        Duration::from_millis(self.delay_ms.unwrap_or(10_000))
    }

    /// How long to wait before the response head, if at all.
    pub(crate) fn head_delay(&self) -> Option<Duration> {
        match (self.fail, self.delay_ms) {
            (Some(Fail::SlowFirstByte), ms) => Some(Duration::from_millis(ms.unwrap_or(3_000))),
            (Some(Fail::StallMidStream), _) => None,
            (_, ms) => ms.map(Duration::from_millis),
        }
    }

    /// The generated text in `chunks` pieces: `output_tokens` words (capped) "word0 word1 …",
    /// deterministic so tests and estimators can count them.
    pub fn pieces(&self) -> Vec<String> {
        let words = self.usage.output_tokens.min(MAX_WORDS);
        let chunks = self.chunks.max(1) as u64;
        (0..chunks)
            .map(|k| {
                let (from, to) = (k * words / chunks, (k + 1) * words / chunks);
                (from..to)
                    .map(|w| {
                        if w == 0 {
                            "word0".to_owned()
                        } else {
                            format!(" word{w}")
                        }
                    })
                    .collect()
            })
            .collect()
    }

    /// The whole generated text.
    pub fn text(&self) -> String {
        self.pieces().concat()
    }
}

fn parse<T: FromStr>(headers: &HeaderMap, name: &str) -> Result<Option<T>, String> {
    let Some(value) = headers.get(name) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| format!("{name}: not ASCII"))?
        .trim();
    text.parse()
        .map(Some)
        .map_err(|_| format!("{name}: cannot parse {text:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cover_all_words_once() {
        let s = Scenario {
            chunks: 4,
            usage: Usage {
                output_tokens: 10,
                ..Usage::default()
            },
            ..Scenario::default()
        };
        let pieces = s.pieces();
        assert_eq!(pieces.len(), 4);
        assert_eq!(s.text().split(' ').count(), 10);
        assert!(s.text().starts_with("word0 word1"));
        assert!(s.text().ends_with("word9"));
    }

    #[test]
    fn headers_override_defaults() {
        let mut h = HeaderMap::new();
        h.insert(header::INPUT_TOKENS, "7".parse().expect("header value"));
        h.insert(header::FAIL, "429".parse().expect("header value"));
        let s = Scenario::from_headers(&Scenario::default(), &h).expect("valid headers");
        assert_eq!(s.usage.input_tokens, 7);
        assert_eq!(s.usage.output_tokens, 20);
        assert_eq!(s.fail, Some(Fail::Status(429)));
        h.insert(header::FAIL, "explode".parse().expect("header value"));
        assert!(Scenario::from_headers(&Scenario::default(), &h).is_err());
    }
}
