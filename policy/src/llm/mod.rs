//! LLM egress metering, pure: what a call may cost before it is sent, and what it cost after.
//!
//! Why pure: the money rules (rounding, firm bounds, cumulative versus additive usage) are where
//! gateways have lost money; here each is a function of its inputs, tested without a socket.
//! No tokio, no I/O, no clock.
//!
//! Flow for one call: [`parse_request`] reads the body once → [`PriceBook::get`] finds the
//! model's [`ModelPrice`] (exact names only) → [`estimate`] gives the firm upper bound to reserve
//! → for a chat stream [`with_usage_requested`] asks for usage → the response is metered with
//! [`usage_from_json`], or [`SseParser`] + [`StreamMeter`] for a stream → [`ModelPrice::cost`]
//! prices the [`Usage`].
//!
//! # Pieces
//!
//! - `money`: [`Micros`], integer micro-dollars, and [`MoneyError`].
//! - `api`: [`Api`], [`Family`].
//! - `usage`: [`Usage`], tokens normalised across providers.
//! - `price`: [`ModelPrice`], [`Tokenizer`], [`PriceError`]; pricing rounds up.
//! - `book`: [`PriceBook`] and its shipped defaults.
//! - `request`: [`RequestInfo`], [`parse_request`], [`with_usage_requested`], [`RequestError`].
//! - `tokens`: [`Tokenizers`] (tiktoken `o200k_base`, `cl100k_base`), [`EstimateError`].
//! - `estimate`: [`estimate`], [`Estimate`], [`IMAGE_TOKENS`].
//! - `sse`: [`SseParser`], [`SseEvent`], [`SseError`].
//! - `wire`: the providers' usage dialects (private).
//! - `meter`: [`usage_from_json`], [`StreamMeter`], [`Forward`].

mod api;
mod book;
mod estimate;
mod meter;
mod money;
mod price;
mod request;
mod sse;
mod tokens;
mod usage;
mod wire;

pub use api::{Api, Family};
pub use book::PriceBook;
pub use estimate::{
    Estimate, IMAGE_TOKENS, MAX_TOKENIZED_BYTES, MESSAGE_TOKENS, PRIMING_TOKENS, estimate,
};
pub use meter::{Forward, MAX_OUTPUT_TEXT, StreamMeter, usage_from_json};
pub use money::{Micros, MoneyError};
pub use price::{ModelPrice, PriceError, Tokenizer};
pub use request::{MAX_N, RequestError, RequestInfo, parse_request, with_usage_requested};
pub use sse::{SseError, SseEvent, SseParser};
pub use tokens::{EstimateError, Tokenizers};
pub use usage::Usage;
