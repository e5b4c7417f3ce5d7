//! `/_mock/…`: inspection and setup over HTTP, for tests in another process (Python) that run
//! the `mock_llm` binary. These requests are not recorded.
//!
//! - `GET /_mock/requests`: the recorded requests ([`RecordedRequest::to_json`]).
//! - `GET /_mock/usage`: the total usage of completed responses.
//! - `POST /_mock/clear`: forget the recorded requests.
//! - `GET` / `POST /_mock/defaults`: the scenario used where no `x-mock-*` header says
//!   otherwise (a JSON [`Scenario`]; missing fields, nested ones included, take the built-in
//!   defaults, so `{"usage": {"input_tokens": 5}}` keeps the default output count).
//!
//! [`RecordedRequest::to_json`]: super::RecordedRequest::to_json

use axum::Json;
use axum::body::Body;
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse as _, Response};
use serde_json::Value;

use super::scenario::Scenario;
use super::server::Shared;

pub(crate) const PREFIX: &str = "/_mock/";

/// Control bodies are tiny.
const MAX_BODY: usize = 1 << 20;

pub(crate) async fn handle(shared: &Shared, parts: &Parts, body: Body) -> Response {
    match (parts.method.as_str(), parts.uri.path()) {
        ("GET", "/_mock/requests") => {
            let records = shared.recorder.snapshot();
            Json(Value::Array(records.iter().map(|r| r.to_json()).collect())).into_response()
        }
        ("GET", "/_mock/usage") => Json(shared.recorder.total_usage()).into_response(),
        ("POST", "/_mock/clear") => {
            shared.recorder.clear();
            StatusCode::NO_CONTENT.into_response()
        }
        ("GET", "/_mock/defaults") => Json(shared.defaults()).into_response(),
        ("POST", "/_mock/defaults") => {
            let parsed = match axum::body::to_bytes(body, MAX_BODY).await {
                Ok(bytes) if bytes.is_empty() => Ok(Scenario::default()),
                Ok(bytes) => patch_defaults(&bytes),
                Err(err) => Err(err.to_string()),
            };
            match parsed {
                Ok(scenario) => {
                    shared.set_defaults(scenario.clone());
                    Json(scenario).into_response()
                }
                Err(message) => (StatusCode::BAD_REQUEST, message).into_response(),
            }
        }
        _ => (StatusCode::NOT_FOUND, "unknown mock control endpoint").into_response(),
    }
}

/// The built-in defaults with `patch` merged in, field by field.
fn patch_defaults(patch: &[u8]) -> Result<Scenario, String> {
    let patch: Value = serde_json::from_slice(patch).map_err(|e| e.to_string())?;
    let mut merged = serde_json::to_value(Scenario::default()).map_err(|e| e.to_string())?;
    merge(&mut merged, patch);
    serde_json::from_value(merged).map_err(|e| e.to_string())
}

fn merge(base: &mut Value, patch: Value) {
    match (base, patch) {
        (Value::Object(base), Value::Object(patch)) => {
            for (key, value) in patch {
                merge(base.entry(key).or_insert(Value::Null), value);
            }
        }
        (base, patch) => *base = patch,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock_llm::Fail;

    #[test]
    fn defaults_patch_keeps_unnamed_fields() {
        let s = patch_defaults(br#"{"usage": {"input_tokens": 5}, "fail": "cut"}"#)
            .expect("a valid patch");
        assert_eq!(s.usage.input_tokens, 5);
        assert_eq!(
            s.usage.output_tokens,
            Scenario::default().usage.output_tokens
        );
        assert_eq!(s.fail, Some(Fail::Cut));
        assert!(patch_defaults(br#"{"fail": "nope"}"#).is_err());
    }
}
