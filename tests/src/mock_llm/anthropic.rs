//! Anthropic Messages (`POST /v1/messages`, JSON and SSE) and `POST /v1/messages/count_tokens`.
//!
//! The stream: `message_start` (input and cache usage, `output_tokens: 1`), `content_block_start`,
//! `ping`, text deltas, `content_block_stop`, `message_delta` with the *cumulative* output count
//! (twice with `x-mock-double-delta: 1`, the first partial, so a meter that sums deltas instead
//! of overwriting over-counts), `message_stop`.

use serde_json::{Value, json};

use super::errors;
use super::record::Usage;
use super::reply::{Reply, Request};
use super::scenario::Scenario;
use super::stream::{Event, Script};

/// `message_start` reports this many output tokens, as the real API does.
const START_OUTPUT_TOKENS: u64 = 1;

pub(crate) fn messages(req: &Request<'_>, s: &Scenario) -> Reply {
    // Anthropic has no reasoning breakdown in `usage`; report (and record) none.
    let usage = s.reported_usage().map(|u| Usage {
        reasoning_tokens: 0,
        ..u
    });
    let message = |content: Value, stop_reason: Option<&str>, usage: Option<Usage>| {
        let mut m = json!({
            "id": format!("msg_mock{:06}", req.seq),
            "type": "message",
            "role": "assistant",
            "model": req.model(),
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": null,
        });
        if let Some(u) = &usage {
            m["usage"] = usage_json(u);
        }
        m
    };

    if !req.stream() {
        let body = message(
            json!([{"type": "text", "text": s.text()}]),
            Some("end_turn"),
            usage,
        );
        return Reply::ok(body, usage);
    }

    let at = |kind: &'static str, mut fields: Value| {
        fields["type"] = kind.into();
        Event::named(kind, fields)
    };
    let head_usage = usage.map(|u| Usage {
        output_tokens: START_OUTPUT_TOKENS,
        ..u
    });
    let head = vec![
        at(
            "message_start",
            json!({"message": message(json!([]), None, head_usage)}),
        ),
        at(
            "content_block_start",
            json!({"index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        at("ping", json!({})),
    ];
    let body = s
        .pieces()
        .into_iter()
        .map(|text| {
            at(
                "content_block_delta",
                json!({"index": 0, "delta": {"type": "text_delta", "text": text}}),
            )
        })
        .collect();
    let delta = |stop_reason: Option<&str>, output_tokens: Option<u64>| {
        let mut d = json!({"delta": {"stop_reason": stop_reason, "stop_sequence": null}});
        if let Some(n) = output_tokens {
            d["usage"] = json!({"output_tokens": n});
        }
        at("message_delta", d)
    };
    let output = usage.map(|u| u.output_tokens);
    let mut tail = vec![at("content_block_stop", json!({"index": 0}))];
    if s.double_delta {
        tail.push(delta(None, output.map(|n| n / 2)));
    }
    tail.push(delta(Some("end_turn"), output));
    tail.push(at("message_stop", json!({})));

    Reply::Sse(Script {
        head,
        body,
        tail,
        error_tail: vec![Event::named("error", errors::anthropic_stream_error())],
        numbered: false,
        usage,
        head_usage,
    })
}

/// `POST /v1/messages/count_tokens`: `{"input_tokens": N}`; free, so no usage is recorded.
pub(crate) fn count_tokens(s: &Scenario) -> Reply {
    Reply::ok(json!({"input_tokens": s.usage.input_tokens}), None)
}

/// Messages `usage`: `input_tokens` excludes the cache reads and writes, which are separate.
fn usage_json(u: &Usage) -> Value {
    json!({
        "input_tokens": u.input_tokens,
        "cache_creation_input_tokens": u.cache_write_tokens,
        "cache_read_input_tokens": u.cached_tokens,
        "cache_creation": {
            "ephemeral_5m_input_tokens": u.cache_write_tokens,
            "ephemeral_1h_input_tokens": 0,
        },
        "output_tokens": u.output_tokens,
        "service_tier": "standard",
    })
}
