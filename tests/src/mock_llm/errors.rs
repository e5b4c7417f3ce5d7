//! Error bodies in each provider's exact shape, so the SDKs raise the same exceptions they would
//! against the real API.

use serde_json::{Value, json};

use super::route::Provider;

/// A provider error: status plus the body the provider would send.
#[derive(Clone, Debug)]
pub(crate) struct ApiError {
    pub status: u16,
    pub body: Value,
}

/// OpenAI: `{"error": {"message", "type", "param", "code"}}`.
pub(crate) fn openai(status: u16, kind: &str, code: Option<&str>, message: &str) -> ApiError {
    ApiError {
        status,
        body: json!({"error": {"message": message, "type": kind, "param": null, "code": code}}),
    }
}

/// Anthropic: `{"type": "error", "error": {"type", "message"}, "request_id"}`.
pub(crate) fn anthropic(status: u16, kind: &str, message: &str, request_id: &str) -> ApiError {
    ApiError {
        status,
        body: json!({
            "type": "error",
            "error": {"type": kind, "message": message},
            "request_id": request_id,
        }),
    }
}

/// A staged `x-mock-fail: <status>` error with the type the provider uses for that status.
pub(crate) fn for_status(provider: Provider, status: u16, request_id: &str) -> ApiError {
    match provider {
        Provider::OpenAi => {
            let (kind, code, message) = match status {
                400 => ("invalid_request_error", None, "Invalid request (mock)."),
                401 => (
                    "invalid_request_error",
                    Some("invalid_api_key"),
                    "Incorrect API key provided (mock).",
                ),
                403 => ("permission_error", None, "Permission denied (mock)."),
                404 => ("invalid_request_error", None, "Not found (mock)."),
                429 => (
                    "requests",
                    Some("rate_limit_exceeded"),
                    "Rate limit reached for requests (mock).",
                ),
                s if s < 500 => ("invalid_request_error", None, "Request failed (mock)."),
                _ => (
                    "server_error",
                    None,
                    "The server had an error while processing your request. Sorry about that!",
                ),
            };
            openai(status, kind, code, message)
        }
        Provider::Anthropic => {
            let (kind, message) = match status {
                400 => ("invalid_request_error", "Invalid request (mock)."),
                401 => ("authentication_error", "invalid x-api-key"),
                402 => ("billing_error", "Billing error (mock)."),
                403 => ("permission_error", "Permission denied (mock)."),
                404 => ("not_found_error", "Not found (mock)."),
                413 => (
                    "request_too_large",
                    "Request exceeds the maximum size (mock).",
                ),
                429 => (
                    "rate_limit_error",
                    "Number of requests has exceeded your rate limit (mock).",
                ),
                s if s < 500 => ("invalid_request_error", "Request failed (mock)."),
                504 => ("timeout_error", "Request timed out (mock)."),
                529 => ("overloaded_error", "Overloaded"),
                _ => ("api_error", "Internal server error"),
            };
            anthropic(status, kind, message, request_id)
        }
    }
}

/// The body of an OpenAI chat mid-stream error (`data: {"error": …}`).
pub(crate) fn openai_stream_error() -> Value {
    json!({"error": {
        "message": "The server had an error while processing your request. Sorry about that!",
        "type": "server_error",
        "param": null,
        "code": null,
    }})
}

/// The body of an Anthropic `event: error` after a 200.
pub(crate) fn anthropic_stream_error() -> Value {
    json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
}
