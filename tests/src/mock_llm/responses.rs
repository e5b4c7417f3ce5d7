//! OpenAI Responses (`POST /v1/responses`), JSON and SSE.
//!
//! The stream uses named events, each with `type` and `sequence_number`; usage travels only in
//! the terminal `response.completed` (`response.usage`). The full event sequence is sent, since
//! the SDK's stream helper tracks items and content parts, not only text deltas.

use serde_json::{Value, json};

use super::record::Usage;
use super::reply::{Reply, Request};
use super::scenario::Scenario;
use super::stream::{Event, Script};

const SERVER_ERROR: &str =
    "The server had an error while processing your request. Sorry about that!";

pub(crate) fn reply(req: &Request<'_>, s: &Scenario) -> Reply {
    let usage = s.reported_usage();
    let item_id = format!("msg_mock{:06}", req.seq);
    let text = s.text();
    let response = |status: &str, output: Value, usage: Option<&Usage>| {
        json!({
            "id": format!("resp_mock{:06}", req.seq),
            "object": "response",
            "created_at": req.created,
            "status": status,
            "background": false,
            "error": null,
            "incomplete_details": null,
            "instructions": req.json.get("instructions").cloned().unwrap_or(Value::Null),
            "max_output_tokens": req.json.get("max_output_tokens").cloned().unwrap_or(Value::Null),
            "model": req.model(),
            "output": output,
            "parallel_tool_calls": true,
            "previous_response_id": null,
            "reasoning": {"effort": null, "summary": null},
            "service_tier": "default",
            "store": true,
            "temperature": 1.0,
            "text": {"format": {"type": "text"}},
            "tool_choice": "auto",
            "tools": [],
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": usage.map(usage_json),
            "user": null,
            "metadata": {},
        })
    };
    let part = |text: &str| json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []});
    let message = |status: &str, content: Value| {
        json!({
            "id": item_id,
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": content,
        })
    };
    let done_message = message("completed", json!([part(&text)]));

    if !req.stream() {
        let body = response("completed", json!([done_message]), usage.as_ref());
        return Reply::ok(body, usage);
    }

    let at = |kind: &'static str, mut fields: Value| {
        fields["type"] = kind.into();
        Event::named(kind, fields)
    };
    let in_progress = response("in_progress", json!([]), None);
    let head = vec![
        at("response.created", json!({"response": in_progress})),
        at("response.in_progress", json!({"response": in_progress})),
        at(
            "response.output_item.added",
            json!({"output_index": 0, "item": message("in_progress", json!([]))}),
        ),
        at(
            "response.content_part.added",
            json!({"item_id": item_id, "output_index": 0, "content_index": 0, "part": part("")}),
        ),
    ];
    let body = s
        .pieces()
        .into_iter()
        .map(|delta| {
            at(
                "response.output_text.delta",
                json!({
                    "item_id": item_id,
                    "output_index": 0,
                    "content_index": 0,
                    "delta": delta,
                    "logprobs": [],
                }),
            )
        })
        .collect();
    let tail = vec![
        at(
            "response.output_text.done",
            json!({
                "item_id": item_id,
                "output_index": 0,
                "content_index": 0,
                "text": text,
                "logprobs": [],
            }),
        ),
        at(
            "response.content_part.done",
            json!({"item_id": item_id, "output_index": 0, "content_index": 0, "part": part(&text)}),
        ),
        at(
            "response.output_item.done",
            json!({"output_index": 0, "item": done_message}),
        ),
        at(
            "response.completed",
            json!({"response": response("completed", json!([done_message]), usage.as_ref())}),
        ),
    ];
    let mut failed = response("failed", json!([]), None);
    failed["error"] = json!({"code": "server_error", "message": SERVER_ERROR});
    let error_tail = vec![
        at(
            "error",
            json!({"code": "server_error", "message": SERVER_ERROR, "param": null}),
        ),
        at("response.failed", json!({"response": failed})),
    ];

    Reply::Sse(Script {
        head,
        body,
        tail,
        error_tail,
        numbered: true,
        usage,
        head_usage: None,
    })
}

/// Responses `usage`. `cache_write_tokens` is newer and optional, so it is sent only when set.
fn usage_json(u: &Usage) -> Value {
    let mut input_details = json!({"cached_tokens": u.cached_tokens});
    if u.cache_write_tokens > 0 {
        input_details["cache_write_tokens"] = u.cache_write_tokens.into();
    }
    json!({
        "input_tokens": u.input_tokens,
        "input_tokens_details": input_details,
        "output_tokens": u.output_tokens,
        "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
        "total_tokens": u.input_tokens + u.output_tokens,
    })
}
