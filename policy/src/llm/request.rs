//! Reading a request body once: the fields that bound its cost, and the one rewrite Sentinel
//! makes (asking a chat stream for its usage).
//!
//! Why validate here: a malformed bound (`n: 0`, `max_tokens: -1`, `stream: "yes"`) would make
//! the estimate meaningless; refusing it before reserving is cheaper than learning from the
//! provider's 400 after.

use serde_json::{Map, Value};

use super::api::Api;

/// Most choices a chat request may ask for (OpenAI's own limit).
pub const MAX_N: u64 = 128;

/// What Sentinel needs to know of a request body, parsed once.
#[derive(Clone, Debug)]
pub struct RequestInfo {
    /// The API the body was sent to (decides which fields mean what).
    pub api: Api,
    /// The `model` field, as sent.
    pub model: String,
    /// `stream: true`.
    pub stream: bool,
    /// Chat completions only: the client's own `stream_options.include_usage` (None when
    /// absent).
    pub include_usage: Option<bool>,
    /// Choices (chat `n`, default 1; others 1).
    pub n: u64,
    /// Chat: `max_completion_tokens`, else `max_tokens` (the larger when both are set, since
    /// which one a provider honours varies); Responses: `max_output_tokens`; Messages:
    /// `max_tokens`; None for embeddings.
    pub max_output: Option<u64>,
    /// The parsed body (kept to estimate and to rewrite).
    pub body: Value,
}

/// Why a body was refused before the call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Not JSON; the message has serde's line and column.
    #[error("request body is not valid JSON: {0}")]
    BadJson(String),
    /// JSON, but not an object.
    #[error("request body must be a JSON object")]
    NotAnObject,
    /// No `model`, or an empty one.
    #[error("request body has no `model`")]
    MissingModel,
    /// A field with a value that cannot be used.
    #[error("invalid `{field}`: {why}")]
    BadField { field: &'static str, why: String },
}

/// Reads `body` as sent to `api`.
pub fn parse_request(api: Api, body: &[u8]) -> Result<RequestInfo, RequestError> {
    let body: Value =
        serde_json::from_slice(body).map_err(|e| RequestError::BadJson(e.to_string()))?;
    let obj = body.as_object().ok_or(RequestError::NotAnObject)?;

    let model = match obj.get("model") {
        None | Some(Value::Null) => return Err(RequestError::MissingModel),
        Some(Value::String(s)) if s.is_empty() => return Err(RequestError::MissingModel),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(bad("model", "must be a string")),
    };
    let stream = match obj.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(bad("stream", "must be true or false")),
    };

    let (include_usage, n, max_output) = match api {
        Api::ChatCompletions => {
            let n = count(obj, "n")?.unwrap_or(1);
            if n > MAX_N {
                return Err(bad("n", format!("must be at most {MAX_N}")));
            }
            let max = match (
                count(obj, "max_completion_tokens")?,
                count(obj, "max_tokens")?,
            ) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            (include_usage_of(obj)?, n, max)
        }
        Api::Responses => (None, 1, count(obj, "max_output_tokens")?),
        Api::Messages => (None, 1, count(obj, "max_tokens")?),
        Api::Embeddings => (None, 1, None),
    };

    Ok(RequestInfo {
        api,
        model,
        stream,
        include_usage,
        n,
        max_output,
        body,
    })
}

/// For a streamed chat completion whose client did not set include_usage=true: returns the body
/// with `stream_options.include_usage = true` added (keeping any other stream_options fields),
/// serialized. Returns None when no rewrite is needed (not chat, not streaming, or already true).
/// If the client explicitly set include_usage=false, still inject true (the meter then hides the
/// usage chunk from the client). So: hide the usage chunk exactly when this returns `Some`.
pub fn with_usage_requested(info: &RequestInfo) -> Option<Vec<u8>> {
    if info.api != Api::ChatCompletions || !info.stream || info.include_usage == Some(true) {
        return None;
    }
    let mut body = info.body.clone();
    let obj = body.as_object_mut()?;
    let options = obj
        .entry("stream_options")
        .or_insert_with(|| Value::Object(Map::new()));
    if !options.is_object() {
        // Only `null` gets here (parse_request refused anything else).
        *options = Value::Object(Map::new());
    }
    options
        .as_object_mut()?
        .insert("include_usage".to_owned(), Value::Bool(true));
    // Serializing a `Value` cannot fail (its keys are strings).
    serde_json::to_vec(&body).ok()
}

/// `stream_options.include_usage`, None when absent or null.
fn include_usage_of(obj: &Map<String, Value>) -> Result<Option<bool>, RequestError> {
    let options = match obj.get("stream_options") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(o)) => o,
        Some(_) => return Err(bad("stream_options", "must be an object")),
    };
    match options.get("include_usage") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(bad("stream_options.include_usage", "must be true or false")),
    }
}

/// A positive integer field, None when absent or null.
fn count(obj: &Map<String, Value>, field: &'static str) -> Result<Option<u64>, RequestError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(num)) => match num.as_u64() {
            Some(0) => Err(bad(field, "must be at least 1")),
            Some(v) => Ok(Some(v)),
            None if num.as_i64().is_some() => Err(bad(field, "must not be negative")),
            None => Err(bad(field, "must be an integer")),
        },
        Some(_) => Err(bad(field, "must be an integer")),
    }
}

fn bad(field: &'static str, why: impl Into<String>) -> RequestError {
    RequestError::BadField {
        field,
        why: why.into(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(api: Api, v: Value) -> Result<RequestInfo, RequestError> {
        parse_request(api, v.to_string().as_bytes())
    }

    #[test]
    fn reads_chat_fields() {
        let info = parse(
            Api::ChatCompletions,
            json!({"model": "gpt-4o", "messages": [], "n": 3, "max_tokens": 100,
                   "stream": true, "stream_options": {"include_usage": false}}),
        )
        .expect("valid");
        assert_eq!(info.model, "gpt-4o");
        assert!(info.stream);
        assert_eq!(info.include_usage, Some(false));
        assert_eq!(info.n, 3);
        assert_eq!(info.max_output, Some(100));

        let info = parse(
            Api::ChatCompletions,
            json!({"model": "m", "max_completion_tokens": 50, "max_tokens": 20, "n": null}),
        )
        .expect("valid");
        assert_eq!((info.n, info.max_output, info.stream), (1, Some(50), false));
        assert_eq!(info.include_usage, None);

        let info = parse(
            Api::ChatCompletions,
            json!({"model": "m", "max_completion_tokens": 20, "max_tokens": 50}),
        )
        .expect("valid");
        assert_eq!(info.max_output, Some(50));
    }

    #[test]
    fn reads_the_other_apis_bounds() {
        let r = parse(
            Api::Responses,
            json!({"model": "m", "max_output_tokens": 7, "n": 5, "max_tokens": 9}),
        )
        .expect("valid");
        assert_eq!((r.n, r.max_output), (1, Some(7)));
        let m = parse(
            Api::Messages,
            json!({"model": "claude", "max_tokens": 1024}),
        )
        .expect("valid");
        assert_eq!(m.max_output, Some(1024));
        let e = parse(
            Api::Embeddings,
            json!({"model": "e", "input": "x", "max_tokens": 3}),
        )
        .expect("valid");
        assert_eq!((e.n, e.max_output), (1, None));
    }

    #[test]
    fn refuses_bad_json_with_position() {
        let err =
            parse_request(Api::ChatCompletions, b"{\"model\": \"m\",\n  oops}").expect_err("bad");
        match &err {
            RequestError::BadJson(msg) => assert!(msg.contains("line 2 column"), "{msg}"),
            other => panic!("{other:?}"),
        }
        assert!(
            err.to_string()
                .starts_with("request body is not valid JSON")
        );
        assert_eq!(
            parse_request(Api::Messages, b"[1, 2]").expect_err("array"),
            RequestError::NotAnObject
        );
    }

    #[test]
    fn refuses_missing_model() {
        for body in [
            json!({"messages": []}),
            json!({"model": ""}),
            json!({"model": null}),
        ] {
            assert_eq!(
                parse(Api::ChatCompletions, body).expect_err("no model"),
                RequestError::MissingModel
            );
        }
        assert!(matches!(
            parse(Api::ChatCompletions, json!({"model": 4})),
            Err(RequestError::BadField { field: "model", .. })
        ));
    }

    #[test]
    fn refuses_bad_fields() {
        let cases = [
            (json!({"model": "m", "n": 0}), "n", "at least 1"),
            (json!({"model": "m", "n": 129}), "n", "at most 128"),
            (json!({"model": "m", "n": 1.5}), "n", "integer"),
            (
                json!({"model": "m", "max_tokens": -1}),
                "max_tokens",
                "negative",
            ),
            (
                json!({"model": "m", "max_tokens": "10"}),
                "max_tokens",
                "integer",
            ),
            (
                json!({"model": "m", "max_completion_tokens": 2.0}),
                "max_completion_tokens",
                "integer",
            ),
            (
                json!({"model": "m", "stream": "yes"}),
                "stream",
                "true or false",
            ),
            (
                json!({"model": "m", "stream_options": 1}),
                "stream_options",
                "object",
            ),
            (
                json!({"model": "m", "stream_options": {"include_usage": 1}}),
                "stream_options.include_usage",
                "true or false",
            ),
        ];
        for (body, want_field, want_why) in cases {
            match parse(Api::ChatCompletions, body.clone()) {
                Err(RequestError::BadField { field, why }) => {
                    assert_eq!(field, want_field, "{body}");
                    assert!(why.contains(want_why), "{body}: {why}");
                }
                other => panic!("{body}: {other:?}"),
            }
        }
        assert!(matches!(
            parse(Api::Messages, json!({"model": "c", "max_tokens": -5})),
            Err(RequestError::BadField {
                field: "max_tokens",
                ..
            })
        ));
    }

    fn rewritten(v: Value) -> Option<Value> {
        let info = parse(Api::ChatCompletions, v).expect("valid");
        with_usage_requested(&info).map(|b| serde_json::from_slice(&b).expect("json"))
    }

    #[test]
    fn usage_request_keeps_other_fields() {
        let out = rewritten(json!({
            "model": "gpt-4o", "stream": true, "temperature": 0.5,
            "messages": [{"role": "user", "content": "hi"}],
            "stream_options": {"include_obfuscation": false}
        }))
        .expect("rewritten");
        assert_eq!(
            out,
            json!({
                "model": "gpt-4o", "stream": true, "temperature": 0.5,
                "messages": [{"role": "user", "content": "hi"}],
                "stream_options": {"include_obfuscation": false, "include_usage": true}
            })
        );
    }

    #[test]
    fn usage_request_adds_or_overrides() {
        let out = rewritten(json!({"model": "m", "stream": true})).expect("rewritten");
        assert_eq!(out["stream_options"], json!({"include_usage": true}));
        let out = rewritten(json!({"model": "m", "stream": true, "stream_options": null}))
            .expect("rewritten");
        assert_eq!(out["stream_options"], json!({"include_usage": true}));
        let out = rewritten(
            json!({"model": "m", "stream": true, "stream_options": {"include_usage": false}}),
        )
        .expect("rewritten");
        assert_eq!(out["stream_options"], json!({"include_usage": true}));
    }

    #[test]
    fn usage_request_not_needed() {
        assert_eq!(
            rewritten(
                json!({"model": "m", "stream": true, "stream_options": {"include_usage": true}})
            ),
            None
        );
        assert_eq!(rewritten(json!({"model": "m", "stream": false})), None);
        assert_eq!(rewritten(json!({"model": "m"})), None);
        let info = parse(Api::Responses, json!({"model": "m", "stream": true})).expect("valid");
        assert_eq!(with_usage_requested(&info), None);
        let info = parse(Api::Messages, json!({"model": "m", "stream": true})).expect("valid");
        assert_eq!(with_usage_requested(&info), None);
    }
}
