//! OpenAI Embeddings (`POST /v1/embeddings`) and the models list (`GET /v1/models`).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use super::record::Usage;
use super::reply::{Reply, Request};
use super::scenario::Scenario;

/// Small vectors keep bodies small; a request's `dimensions` overrides it.
const DEFAULT_DIMENSIONS: u64 = 8;
const MAX_DIMENSIONS: u64 = 4096;

/// One vector per input. `encoding_format: "base64"` (the openai Python SDK's default) gets the
/// vector as base64 of little-endian f32s, as the real API sends it. Only input tokens are
/// reported.
pub(crate) fn reply(req: &Request<'_>, s: &Scenario) -> Reply {
    let inputs = match req.json.get("input") {
        // A single input given as token ids.
        Some(Value::Array(items)) if items.first().is_some_and(Value::is_number) => 1,
        Some(Value::Array(items)) => items.len(),
        _ => 1,
    };
    let dims = req
        .json
        .get("dimensions")
        .and_then(Value::as_u64)
        .unwrap_or(DEFAULT_DIMENSIONS)
        .clamp(1, MAX_DIMENSIONS);
    let base64 = req.json.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let data: Vec<Value> = (0..inputs as u64)
        .map(|index| {
            let vector = vector(index, dims);
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|f| f.to_le_bytes()).collect();
                Value::String(STANDARD.encode(bytes))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    let usage = s.reported_usage().map(|u| Usage {
        input_tokens: u.input_tokens,
        ..Usage::default()
    });
    let mut body = json!({"object": "list", "data": data, "model": req.model()});
    if let Some(u) = &usage {
        body["usage"] = json!({"prompt_tokens": u.input_tokens, "total_tokens": u.input_tokens});
    }
    Reply::ok(body, usage)
}

/// A deterministic vector per input index, values in [-0.5, 0.5).
fn vector(index: u64, dims: u64) -> Vec<f32> {
    (0..dims)
        .map(|j| ((index * 31 + j * 7) % 97) as f32 / 97.0 - 0.5)
        .collect()
}

/// `GET /v1/models`: a fixed list.
pub(crate) fn models(created: u64) -> Reply {
    let data: Vec<Value> = ["gpt-4o", "gpt-4o-mini", "gpt-4.1", "text-embedding-3-small"]
        .iter()
        .map(|id| json!({"id": id, "object": "model", "created": created, "owned_by": "openai"}))
        .collect();
    Reply::ok(json!({"object": "list", "data": data}), None)
}
