//! The LLM egress's pure hot path (`sentinel_policy::llm`), in the order a call runs it:
//!
//! - `llm/estimate`: reading the request body (`parse_request`) and bounding its cost
//!   (`estimate`) for a typical chat request (~2 KB of prompt text) and a large one (~100 KB),
//!   with the o200k tokenizer and with the Bytes tokenizer (one token per byte, Claude's), so the
//!   difference is the BPE; `parse_request` alone, to split JSON from tokenizing; and
//!   `with_usage_requested`, the body rewrite a streamed chat call without `include_usage` gets.
//! - `llm/stream`: `SseParser::push` + `StreamMeter::on_event` over a whole stream, one push per
//!   event as a provider flushes them: an OpenAI chat stream of 200 content chunks (usage asked
//!   for by Sentinel, so its usage chunk is hidden) and an Anthropic Messages stream of 200
//!   text deltas. Per stream; the element throughput is events per second, per event = 1/that.
//! - `llm/usage_from_json`: the usage of a non-streamed chat response (~3 KB).
//!
//! The tokenizers are built once (`Tokenizers::load`, ~100 ms), outside every timed loop, as the
//! proxy builds them once at start. Texts are deterministic English-like prose, so BPE counts are
//! realistic (about 4–5 bytes per token).

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sentinel_policy::llm::{
    Api, Forward, Micros, ModelPrice, SseParser, StreamMeter, Tokenizer, Tokenizers, estimate,
    parse_request, usage_from_json, with_usage_requested,
};
use serde_json::{Value, json};

/// The proxy's per-event limit (`proxy/src/llm/exchange.rs`).
const MAX_EVENT_BYTES: usize = 8 << 20;

/// Content chunks in each bench stream.
const STREAM_CHUNKS: usize = 200;

const WORDS: &[&str] = &[
    "the",
    "customer",
    "order",
    "was",
    "shipped",
    "to",
    "a",
    "warehouse",
    "in",
    "Rotterdam",
    "and",
    "invoice",
    "should",
    "include",
    "tax",
    "for",
    "each",
    "line",
    "item",
    "please",
    "summarize",
    "following",
    "report",
    "quarterly",
    "revenue",
    "grew",
    "by",
    "percent",
    "while",
    "operating",
    "costs",
    "remained",
    "flat",
    "compared",
    "with",
    "last",
    "year",
    "our",
    "team",
    "expects",
    "demand",
    "increase",
    "next",
    "quarter",
    "because",
    "of",
    "new",
    "contracts",
    "signed",
    "Europe",
    "Asia",
    "however",
    "supply",
    "chain",
    "delays",
    "could",
    "affect",
    "delivery",
    "dates",
    "management",
    "recommends",
    "caution",
    "analysts",
    "note",
    "that",
    "margins",
    "improved",
    "significantly",
    "after",
    "restructuring",
    "program",
    "completed",
    "March",
    "2025",
    "data",
    "shows",
    "3.5",
    "million",
    "units",
    "sold",
    "across",
    "regions",
];

/// Deterministic English-like prose of about `bytes` bytes: sentences of 6–19 words, a
/// paragraph break every few sentences.
fn prose(bytes: usize, seed: u64) -> String {
    let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    let mut next = move |n: usize| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        usize::try_from(state >> 33).unwrap_or(0) % n
    };
    let mut out = String::with_capacity(bytes + 64);
    let mut sentence = 0;
    while out.len() < bytes {
        let len = 6 + next(14);
        for w in 0..len {
            let word = WORDS[next(WORDS.len())];
            if w == 0 {
                let mut chars = word.chars();
                if let Some(first) = chars.next() {
                    out.extend(first.to_uppercase());
                    out.push_str(chars.as_str());
                }
            } else {
                out.push(' ');
                out.push_str(word);
                if next(9) == 0 {
                    out.push(',');
                }
            }
        }
        out.push('.');
        sentence += 1;
        out.push_str(if sentence % 5 == 0 { "\n\n" } else { " " });
    }
    out
}

/// A streamed chat request as an SDK sends it: a system prompt, a few turns, one tool, and the
/// last user message carrying `user_text`.
fn chat_request(system: &str, user_text: &str) -> Vec<u8> {
    let body = json!({
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": "What did the last report say about shipping delays?"},
            {"role": "assistant", "content": "It said supply chain delays could affect delivery \
                dates in Europe next quarter; management recommends caution."},
            {"role": "user", "content": user_text},
        ],
        "tools": [{
            "type": "function",
            "function": {
                "name": "lookup_order",
                "description": "Look up an order by its id and return its status and lines.",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "order_id": {"type": "string", "description": "The order id, e.g. O-1042"},
                        "include_lines": {"type": "boolean"}
                    },
                    "required": ["order_id"]
                }
            }
        }],
        "temperature": 0.2,
        "max_tokens": 1024,
        "stream": true,
    });
    serde_json::to_vec(&body).expect("a JSON value serializes")
}

/// gpt-4o's shape (128K window, 16K output), counted with `tokenizer`.
fn price(tokenizer: Tokenizer) -> ModelPrice {
    ModelPrice {
        input: Micros(2_500_000),
        cached_input: Micros(1_250_000),
        cache_write_5m: Micros(2_500_000),
        cache_write_1h: Micros(2_500_000),
        output: Micros(10_000_000),
        context_window: 128_000,
        max_output_tokens: 16_384,
        default_output_tokens: 16_384,
        tokenizer,
    }
}

fn estimate_benches(c: &mut Criterion) {
    let tokenizers = Tokenizers::load().expect("the embedded tokenizers load");
    let system = prose(600, 1);
    let typical = chat_request(&system, &prose(1_300, 2));
    let large = chat_request(&system, &prose(100_000, 3));
    let o200k = price(Tokenizer::O200k);
    let bytes = price(Tokenizer::Bytes);

    // Sanity: the bodies parse, the estimates are neither clamped nor absurd.
    for (body, lo, hi) in [(&typical, 300, 700), (&large, 18_000, 30_000)] {
        let info = parse_request(Api::ChatCompletions, body).expect("the bench body parses");
        let e = estimate(Api::ChatCompletions, &info, &o200k, &tokenizers);
        assert!(
            (lo..hi).contains(&e.input_tokens),
            "{} bytes -> {} o200k tokens",
            body.len(),
            e.input_tokens
        );
        let b = estimate(Api::ChatCompletions, &info, &bytes, &tokenizers);
        assert!(b.input_tokens > body.len() as u64 / 2 && b.input_tokens < 128_000);
        assert_eq!(e.output_tokens, 1024);
        assert!(with_usage_requested(&info).is_some());
    }

    for (name, body, big) in [("chat 2KB", &typical, false), ("chat 100KB", &large, true)] {
        let mut group = c.benchmark_group("llm/estimate");
        group.throughput(Throughput::Bytes(body.len() as u64));
        if big {
            group
                .measurement_time(Duration::from_secs(3))
                .sample_size(20);
        }
        group.bench_function(BenchmarkId::new("parse_request", name), |b| {
            b.iter(|| parse_request(Api::ChatCompletions, black_box(body)).map(|i| i.n));
        });
        for (tok, p) in [("o200k", &o200k), ("bytes", &bytes)] {
            group.bench_function(
                BenchmarkId::new(format!("parse+estimate {tok}"), name),
                |b| {
                    b.iter(|| {
                        let info = parse_request(Api::ChatCompletions, black_box(body))
                            .expect("the bench body parses");
                        estimate(Api::ChatCompletions, &info, p, &tokenizers).cost
                    });
                },
            );
        }
        let info = parse_request(Api::ChatCompletions, body).expect("the bench body parses");
        group.bench_function(BenchmarkId::new("with_usage_requested", name), |b| {
            b.iter(|| with_usage_requested(black_box(&info)).map(|v| v.len()));
        });
        group.finish();
    }
}

/// An OpenAI chat stream as sent when `include_usage` was asked for: a role chunk,
/// `STREAM_CHUNKS` content chunks, a finish chunk, the usage chunk (`choices: []`), `[DONE]`.
/// One `Vec` per event (as flushed by the provider).
fn openai_stream() -> Vec<Vec<u8>> {
    let words = prose(STREAM_CHUNKS * 8, 4);
    let pieces: Vec<String> = words
        .split(' ')
        .take(STREAM_CHUNKS)
        .map(|w| format!(" {w}"))
        .collect();
    let frame = |choices: Value, usage: Value| {
        let chunk = json!({
            "id": "chatcmpl-BxYz4kq2Vd7f0oLr8mHcT1aNwE3sU",
            "object": "chat.completion.chunk",
            "created": 1_750_000_000,
            "model": "gpt-4o-2024-08-06",
            "service_tier": "default",
            "system_fingerprint": "fp_07871e2ad8",
            "choices": choices,
            "usage": usage,
            "obfuscation": "aZ3k",
        });
        format!("data: {chunk}\n\n").into_bytes()
    };
    let choice = |delta: Value, finish: Value| json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]);
    let mut events = vec![frame(
        choice(
            json!({"role": "assistant", "content": "", "refusal": null}),
            Value::Null,
        ),
        Value::Null,
    )];
    for piece in &pieces {
        events.push(frame(
            choice(json!({"content": piece}), Value::Null),
            Value::Null,
        ));
    }
    events.push(frame(choice(json!({}), json!("stop")), Value::Null));
    events.push(frame(
        json!([]),
        json!({
            "prompt_tokens": 512, "completion_tokens": STREAM_CHUNKS, "total_tokens": 712,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
        }),
    ));
    events.push(b"data: [DONE]\n\n".to_vec());
    events
}

/// An Anthropic Messages stream: `message_start` (with input usage), a text block of
/// `STREAM_CHUNKS` `text_delta`s with a `ping`, `message_delta` (output usage), `message_stop`.
fn anthropic_stream() -> Vec<Vec<u8>> {
    let words = prose(STREAM_CHUNKS * 8, 5);
    let event = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n").into_bytes();
    let mut events = vec![
        event(
            "message_start",
            json!({"type": "message_start", "message": {
                "id": "msg_01XFDUDYJgAACzvnptvVoYEL", "type": "message", "role": "assistant",
                "model": "claude-sonnet-4-5-20250929", "content": [], "stop_reason": null,
                "stop_sequence": null,
                "usage": {"input_tokens": 512, "cache_creation_input_tokens": 0,
                          "cache_read_input_tokens": 0, "output_tokens": 1,
                          "service_tier": "standard"}}}),
        ),
        event(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0,
                   "content_block": {"type": "text", "text": ""}}),
        ),
        event("ping", json!({"type": "ping"})),
    ];
    for w in words.split(' ').take(STREAM_CHUNKS) {
        events.push(event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
                   "delta": {"type": "text_delta", "text": format!(" {w}")}}),
        ));
    }
    events.push(event(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    events.push(event(
        "message_delta",
        json!({"type": "message_delta",
               "delta": {"stop_reason": "end_turn", "stop_sequence": null},
               "usage": {"output_tokens": STREAM_CHUNKS}}),
    ));
    events.push(event("message_stop", json!({"type": "message_stop"})));
    events
}

/// What the proxy does with one stream: parse each read, meter each event, keep the bytes to
/// forward. Returns the bytes forwarded and the meter.
fn relay(api: Api, hide_usage_chunk: bool, reads: &[Vec<u8>]) -> (usize, StreamMeter) {
    let mut parser = SseParser::new(MAX_EVENT_BYTES);
    let mut meter = StreamMeter::new(api, hide_usage_chunk);
    let mut forwarded = 0;
    for read in reads {
        for event in parser.push(read).expect("the bench stream is well-formed") {
            if meter.on_event(&event) == Forward::Yes {
                forwarded += event.raw.len();
            }
        }
    }
    (forwarded, meter)
}

fn stream_benches(c: &mut Criterion) {
    let openai = openai_stream();
    let anthropic = anthropic_stream();
    for (api, hide, reads) in [
        (Api::ChatCompletions, true, &openai),
        (Api::Messages, false, &anthropic),
    ] {
        let (forwarded, meter) = relay(api, hide, reads);
        let total: usize = reads.iter().map(Vec::len).sum();
        let usage = meter.usage().expect("the stream reports usage");
        assert_eq!((usage.input, usage.output), (512, STREAM_CHUNKS as u64));
        assert!(meter.finished() && meter.error().is_none());
        assert!(meter.output_bytes() > STREAM_CHUNKS as u64 * 2);
        let hidden = reads.iter().rev().nth(1).map_or(0, Vec::len);
        assert_eq!(forwarded, if hide { total - hidden } else { total });
    }

    let mut group = c.benchmark_group("llm/stream");
    for (name, api, hide, reads) in [
        ("openai chat", Api::ChatCompletions, true, &openai),
        ("anthropic messages", Api::Messages, false, &anthropic),
    ] {
        let bytes: usize = reads.iter().map(Vec::len).sum();
        group.throughput(Throughput::Elements(reads.len() as u64));
        group.bench_function(
            format!(
                "{name}: {} events, {} KB, push+on_event",
                reads.len(),
                bytes / 1000
            ),
            |b| b.iter(|| relay(api, hide, black_box(reads)).0),
        );
    }
    group.finish();
}

fn usage_benches(c: &mut Criterion) {
    let answer = prose(2_500, 6);
    let body = serde_json::to_vec(&json!({
        "id": "chatcmpl-BxYz4kq2Vd7f0oLr8mHcT1aNwE3sU",
        "object": "chat.completion",
        "created": 1_750_000_000,
        "model": "gpt-4o-2024-08-06",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": answer, "refusal": null,
                        "annotations": []},
            "logprobs": null,
            "finish_reason": "stop"
        }],
        "usage": {
            "prompt_tokens": 512, "completion_tokens": 540, "total_tokens": 1052,
            "prompt_tokens_details": {"cached_tokens": 256, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
        },
        "service_tier": "default",
        "system_fingerprint": "fp_07871e2ad8"
    }))
    .expect("a JSON value serializes");
    let usage = usage_from_json(Api::ChatCompletions, &body).expect("the response has usage");
    assert_eq!(
        (usage.input, usage.cached_input, usage.output),
        (256, 256, 540)
    );

    let mut group = c.benchmark_group("llm/usage_from_json");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function(format!("chat response {} KB", body.len() / 1000), |b| {
        b.iter(|| usage_from_json(Api::ChatCompletions, black_box(&body)));
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = sentinel_benches::short_run();
    targets = estimate_benches, stream_benches, usage_benches
}
criterion_main!(benches);
