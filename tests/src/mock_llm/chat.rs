//! OpenAI Chat Completions (`POST /v1/chat/completions`), JSON and SSE.
//!
//! The stream follows the real one: no event names, a role chunk, content deltas, a finish
//! chunk, then — only when the request asked with `stream_options.include_usage` — `"usage":
//! null` on every chunk and one extra chunk with `"choices": []` and the usage, then
//! `data: [DONE]`.

use serde_json::{Value, json};

use super::errors;
use super::record::Usage;
use super::reply::{Reply, Request};
use super::scenario::Scenario;
use super::stream::{Event, Script};

/// More choices than this is a test bug, not a scenario.
const MAX_N: u64 = 16;

pub(crate) fn reply(req: &Request<'_>, s: &Scenario) -> Reply {
    let n = req
        .json
        .get("n")
        .and_then(Value::as_u64)
        .unwrap_or(1)
        .clamp(1, MAX_N);
    let usage = s.reported_usage();
    let frame = |object: &str| {
        json!({
            "id": format!("chatcmpl-mock{:06}", req.seq),
            "object": object,
            "created": req.created,
            "model": req.model(),
            "service_tier": "default",
            "system_fingerprint": "fp_mock",
        })
    };

    if !req.stream() {
        let text = s.text();
        let choices: Vec<Value> = (0..n)
            .map(|i| {
                json!({
                    "index": i,
                    "message": {
                        "role": "assistant",
                        "content": text,
                        "refusal": null,
                        "annotations": [],
                    },
                    "logprobs": null,
                    "finish_reason": "stop",
                })
            })
            .collect();
        let mut body = frame("chat.completion");
        body["choices"] = choices.into();
        if let Some(u) = &usage {
            body["usage"] = usage_json(u);
        }
        return Reply::ok(body, usage);
    }

    let include_usage = req
        .json
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        == Some(true);
    let chunk = |index: u64, delta: Value, finish: Option<&str>| {
        let mut c = frame("chat.completion.chunk");
        c["choices"] = json!([{
            "index": index,
            "delta": delta,
            "logprobs": null,
            "finish_reason": finish,
        }]);
        if include_usage {
            c["usage"] = Value::Null;
        }
        Event::data(c)
    };

    let head = (0..n)
        .map(|i| {
            chunk(
                i,
                json!({"role": "assistant", "content": "", "refusal": null}),
                None,
            )
        })
        .collect();
    let body = s
        .pieces()
        .into_iter()
        .flat_map(|piece| (0..n).map(move |i| (i, piece.clone())))
        .map(|(i, piece)| chunk(i, json!({"content": piece}), None))
        .collect();
    let mut tail: Vec<Event> = (0..n).map(|i| chunk(i, json!({}), Some("stop"))).collect();
    let usage = usage.filter(|_| include_usage);
    if let Some(u) = &usage {
        let mut last = frame("chat.completion.chunk");
        last["choices"] = json!([]);
        last["usage"] = usage_json(u);
        tail.push(Event::data(last));
    }
    tail.push(Event::done());

    Reply::Sse(Script {
        head,
        body,
        tail,
        error_tail: vec![Event::data(errors::openai_stream_error())],
        numbered: false,
        usage,
        head_usage: None,
    })
}

/// Chat `usage`. `cache_write_tokens` is newer and optional, so it is sent only when set.
fn usage_json(u: &Usage) -> Value {
    let mut prompt_details = json!({"cached_tokens": u.cached_tokens, "audio_tokens": 0});
    if u.cache_write_tokens > 0 {
        prompt_details["cache_write_tokens"] = u.cache_write_tokens.into();
    }
    json!({
        "prompt_tokens": u.input_tokens,
        "completion_tokens": u.output_tokens,
        "total_tokens": u.input_tokens + u.output_tokens,
        "prompt_tokens_details": prompt_details,
        "completion_tokens_details": {
            "reasoning_tokens": u.reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    })
}
