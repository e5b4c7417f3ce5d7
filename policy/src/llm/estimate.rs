//! The firm upper bound of a request's cost, reserved before the call.
//!
//! Why an upper bound and not a guess: the reservation is what keeps a budget from being
//! overshot by calls in flight. Every rule below errs high: the whole body is counted (keys,
//! parameters and tool schemas too), images count a fixed ceiling, input is priced at the
//! dearest input rate, output at its requested (or model) maximum. When the input cannot be
//! sized from the body at all (a file or document by reference, a stored prompt or previous
//! response, a provider-hosted tool that feeds results back as input), the bound is the model's
//! context window.
//!
//! The context window is the ceiling because a request above it is refused by the provider and
//! costs nothing. Hosted tools that loop several model turns can bill more input than one window;
//! that is outside what a body can bound and is reconciled on settle.

use serde_json::{Map, Number, Value};

use super::api::Api;
use super::money::Micros;
use super::price::{ModelPrice, Tokenizer};
use super::request::RequestInfo;
use super::tokens::{Tokenizers, len_u64};

/// Tokens counted for one image, whatever its size or encoding. Above what OpenAI's tile
/// formula (at most ~1,100 for gpt-4o high detail), its patch formula (~2,500 for the mini
/// models) and Anthropic's (~1,600 at the 1.15 MP limit) charge for one image.
pub const IMAGE_TOKENS: u64 = 3_000;

/// Tokens a chat template adds around each message (role and separators).
pub const MESSAGE_TOKENS: u64 = 4;

/// Tokens that prime the reply (`<|start|>assistant<|message|>`).
pub const PRIMING_TOKENS: u64 = 3;

/// Most text (bytes) one estimate tokenizes; strings beyond it count one token per byte. Keeps
/// the CPU of an estimate bounded whatever the body (tokenizing costs ~50 ms per MiB of prose
/// and up to ~20× that for pathological text); 1 MiB of prose is already ~250K tokens, past most
/// context windows.
pub const MAX_TOKENIZED_BYTES: usize = 1 << 20;

/// A request's cost bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Estimate {
    /// Input tokens, at most the model's context window.
    pub input_tokens: u64,
    /// Output tokens, already × n.
    pub output_tokens: u64,
    /// Both priced with no cache discount, rounded up.
    pub cost: Micros,
}

/// The firm upper bound of a request's cost:
/// - input: every string of the JSON body counted with the model's tokenizer (keys too), +1
///   token per JSON value for structure, plus [`MESSAGE_TOKENS`] per message and
///   [`PRIMING_TOKENS`]; images count [`IMAGE_TOKENS`] each instead of their text; base64
///   documents and files one token per byte; embeddings token arrays their length (each input
///   clamped to the window, since a batch may exceed it); then clamped to the context window;
/// - output: `min(max_output or default_output_tokens, max_output_tokens) × n`; embeddings 0;
/// - cost: input at the highest of the input and cache-write rates, output at the output rate.
pub fn estimate(
    api: Api,
    info: &RequestInfo,
    price: &ModelPrice,
    tokenizers: &Tokenizers,
) -> Estimate {
    let input_tokens = match api {
        Api::Embeddings => embedding_input(&info.body, price, tokenizers),
        Api::ChatCompletions | Api::Responses | Api::Messages => {
            let mut counter = Counter::new(tokenizers, price.tokenizer);
            let counted = counter
                .value(&info.body)
                .saturating_add(template_overhead(api, &info.body));
            if counter.unbounded || refers_to_stored_input(api, &info.body) {
                price.context_window
            } else {
                counted.min(price.context_window)
            }
        }
    };
    let output_tokens = match api {
        Api::Embeddings => 0,
        Api::ChatCompletions | Api::Responses | Api::Messages => info
            .max_output
            .unwrap_or(price.default_output_tokens)
            .min(price.max_output_tokens)
            .saturating_mul(info.n.max(1)),
    };
    Estimate {
        input_tokens,
        output_tokens,
        cost: price.bound_cost(input_tokens, output_tokens),
    }
}

/// Walks a body, counting tokens and noting input that cannot be sized.
struct Counter<'a> {
    tokenizers: &'a Tokenizers,
    tokenizer: Tokenizer,
    /// Set when the body refers to input by reference (file id, URL of a document).
    unbounded: bool,
    /// Bytes left to tokenize before strings count by bytes ([`MAX_TOKENIZED_BYTES`]).
    budget: usize,
}

impl<'a> Counter<'a> {
    fn new(tokenizers: &'a Tokenizers, tokenizer: Tokenizer) -> Self {
        Counter {
            tokenizers,
            tokenizer,
            unbounded: false,
            budget: MAX_TOKENIZED_BYTES,
        }
    }

    /// Tokens of one JSON value: its text plus one for structure.
    fn value(&mut self, v: &Value) -> u64 {
        let inner = match v {
            Value::Null | Value::Bool(_) => 0,
            Value::Number(n) => number_len(n),
            Value::String(s) => self.text(s),
            Value::Array(items) => items
                .iter()
                .fold(0u64, |sum, item| sum.saturating_add(self.value(item))),
            Value::Object(map) => self.object(map),
        };
        inner.saturating_add(1)
    }

    fn text(&mut self, s: &str) -> u64 {
        match self.budget.checked_sub(s.len()) {
            Some(left) => {
                self.budget = left;
                self.tokenizers.count(self.tokenizer, s)
            }
            None => len_u64(s.len()),
        }
    }

    /// An object: content parts that are not text get their own rule.
    fn object(&mut self, map: &Map<String, Value>) -> u64 {
        match map.get("type").and_then(Value::as_str) {
            // OpenAI chat `image_url`, Responses `input_image`, Anthropic `image`: whatever the
            // encoding (data URL, http URL, file id), one image.
            Some("image_url" | "input_image" | "image") => IMAGE_TOKENS,
            // Anthropic document block.
            Some("document") => self.fields(map, |c, key, v| match key {
                "source" => Some(c.document_source(v)),
                _ => None,
            }),
            // OpenAI chat file part: `{"type":"file","file":{file_data|file_id, filename}}`.
            Some("file") => self.fields(map, |c, key, v| match (key, v) {
                ("file", Value::Object(file)) => Some(c.file(file)),
                _ => None,
            }),
            // Responses `input_file`: `file_data`, `file_id` or `file_url` inline.
            Some("input_file") => self.file(map),
            _ => self.fields(map, |_, _, _| None),
        }
    }

    /// Keys and values of `map`; `special` may count a value its own way.
    fn fields(
        &mut self,
        map: &Map<String, Value>,
        mut special: impl FnMut(&mut Self, &str, &Value) -> Option<u64>,
    ) -> u64 {
        map.iter().fold(0u64, |sum, (key, v)| {
            let value = match special(self, key, v) {
                Some(tokens) => tokens.saturating_add(1),
                None => self.value(v),
            };
            sum.saturating_add(self.text(key)).saturating_add(value)
        })
    }

    /// A file object: inline data one token per byte, a reference unbounded.
    fn file(&mut self, map: &Map<String, Value>) -> u64 {
        self.fields(map, |c, key, v| match (key, v) {
            ("file_data", Value::String(data)) => Some(len_u64(data.len())),
            ("file_id" | "file_url", Value::String(_)) => {
                c.unbounded = true;
                Some(0)
            }
            _ => None,
        })
    }

    /// An Anthropic document `source`: base64 one token per byte, text and content counted,
    /// a URL or file id unbounded.
    fn document_source(&mut self, source: &Value) -> u64 {
        let Value::Object(map) = source else {
            return self.value(source);
        };
        match map.get("type").and_then(Value::as_str) {
            Some("base64") => self.fields(map, |_, key, v| match (key, v) {
                ("data", Value::String(data)) => Some(len_u64(data.len())),
                _ => None,
            }),
            Some("url" | "file") => {
                self.unbounded = true;
                0
            }
            _ => self.fields(map, |_, _, _| None),
        }
    }
}

/// The chat-template tokens: per message, and once to prime the reply.
fn template_overhead(api: Api, body: &Value) -> u64 {
    let messages = match api {
        Api::ChatCompletions | Api::Messages => body.get("messages"),
        Api::Responses => body.get("input"),
        Api::Embeddings => None,
    };
    let count = messages.and_then(Value::as_array).map_or(1, Vec::len);
    len_u64(count)
        .saturating_mul(MESSAGE_TOKENS)
        .saturating_add(PRIMING_TOKENS)
}

/// Whether the provider adds input the body does not carry: a stored prompt, a previous
/// response or conversation (Responses), MCP servers or a container (Messages), web search
/// options (chat), or a hosted tool whose results are fed back as input.
fn refers_to_stored_input(api: Api, body: &Value) -> bool {
    let stored: &[&str] = match api {
        Api::Responses => &["previous_response_id", "conversation", "prompt"],
        Api::Messages => &["mcp_servers", "container"],
        // Search models add the pages they read as input.
        Api::ChatCompletions => &["web_search_options"],
        Api::Embeddings => &[],
    };
    if stored
        .iter()
        .any(|key| body.get(key).is_some_and(|v| !v.is_null()))
    {
        return true;
    }
    body.get("tools")
        .and_then(Value::as_array)
        .is_some_and(|tools| tools.iter().any(is_hosted_tool))
}

/// A tool the provider runs itself and whose output becomes model input.
fn is_hosted_tool(tool: &Value) -> bool {
    const HOSTED: [&str; 8] = [
        "web_search",
        "web_fetch",
        "file_search",
        "code_execution",
        "code_interpreter",
        "mcp",
        "image_generation",
        "tool_search",
    ];
    tool.get("type")
        .and_then(Value::as_str)
        .is_some_and(|kind| HOSTED.iter().any(|h| kind.starts_with(h)))
}

/// Embeddings are billed on the input only; each item is limited to the window on its own, so
/// the batch is not clamped as a whole.
fn embedding_input(body: &Value, price: &ModelPrice, tokenizers: &Tokenizers) -> u64 {
    let window = price.context_window;
    let mut counter = Counter::new(tokenizers, price.tokenizer);
    let mut item = |v: &Value| -> u64 {
        let tokens = match v {
            Value::String(s) => counter.text(s),
            // Pre-tokenized input: one token per integer.
            Value::Array(ids) => len_u64(ids.len()),
            other => counter.value(other),
        };
        tokens.min(window)
    };
    match body.get("input") {
        Some(Value::Array(items)) if items.iter().all(Value::is_number) => {
            len_u64(items.len()).min(window)
        }
        Some(Value::Array(items)) => items
            .iter()
            .fold(0u64, |sum, v| sum.saturating_add(item(v))),
        Some(v) => item(v),
        None => 0,
    }
}

/// Tokens of a number: the length of its text (no token is shorter than one byte).
fn number_len(n: &Number) -> u64 {
    if let Some(u) = n.as_u64() {
        u64::from(u.checked_ilog10().unwrap_or(0) + 1)
    } else if let Some(i) = n.as_i64() {
        u64::from(i.unsigned_abs().checked_ilog10().unwrap_or(0) + 2)
    } else {
        len_u64(n.to_string().len())
    }
}

#[cfg(test)]
mod tests;
