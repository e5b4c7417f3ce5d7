//! Every way an egress request can fail, each with its HTTP status, a message safe to show the
//! caller, a fixed metric label, and the body shape of the provider the SDK expects.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use sentinel_policy::llm::Family;
use serde_json::json;

use crate::ledger::LedgerError;

#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error("no such route: {method} {path}")]
    NotFound { method: String, path: String },
    #[error("{0}")]
    BadRequest(String),
    #[error("model {0:?} is not available through this gateway")]
    UnknownModel(String),
    #[error("request body larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    Budget(LedgerError),
    #[error("rate limit: {what} per minute for this tenant; retry in {retry_after} s")]
    RateLimited {
        what: &'static str,
        retry_after: u64,
    },
    #[error("this tenant's LLM calls are blocked by an operator")]
    Blocked,
    #[error("budget ledger unavailable; the call was not sent")]
    LedgerUnavailable,
    #[error("upstream {provider} unreachable: {reason}")]
    Unreachable { provider: String, reason: String },
    #[error("upstream {provider} timed out ({what})")]
    Timeout {
        provider: String,
        what: &'static str,
    },
}

impl EgressError {
    pub fn status(&self) -> u16 {
        match self {
            EgressError::NotFound { .. } => 404,
            EgressError::BadRequest(_) | EgressError::UnknownModel(_) => 400,
            EgressError::TooLarge { .. } => 413,
            EgressError::Unauthorized(_) => 401,
            EgressError::Blocked => 403,
            EgressError::Budget(_) => 402,
            EgressError::RateLimited { .. } => 429,
            EgressError::LedgerUnavailable => 503,
            EgressError::Unreachable { .. } => 502,
            EgressError::Timeout { .. } => 504,
        }
    }

    /// The outcome label of metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            EgressError::NotFound { .. } => "not_found",
            EgressError::BadRequest(_) => "bad_request",
            EgressError::UnknownModel(_) => "unknown_model",
            EgressError::TooLarge { .. } => "too_large",
            EgressError::Unauthorized(_) => "unauthorized",
            EgressError::Blocked => "blocked",
            EgressError::Budget(_) => "over_budget",
            EgressError::RateLimited { .. } => "rate_limited",
            EgressError::LedgerUnavailable => "ledger_unavailable",
            EgressError::Unreachable { .. } => "unreachable",
            EgressError::Timeout { .. } => "timeout",
        }
    }

    /// (OpenAI `type`, OpenAI `code`, Anthropic `type`).
    fn kinds(&self) -> (&'static str, Option<&'static str>, &'static str) {
        match self {
            EgressError::NotFound { .. } => ("invalid_request_error", None, "not_found_error"),
            EgressError::BadRequest(_) => ("invalid_request_error", None, "invalid_request_error"),
            EgressError::UnknownModel(_) => (
                "invalid_request_error",
                Some("model_not_found"),
                "invalid_request_error",
            ),
            EgressError::TooLarge { .. } => ("invalid_request_error", None, "request_too_large"),
            EgressError::Unauthorized(_) => (
                "invalid_request_error",
                Some("invalid_api_key"),
                "authentication_error",
            ),
            EgressError::Blocked => ("permission_denied", None, "permission_error"),
            EgressError::Budget(_) => (
                "insufficient_quota",
                Some("budget_exceeded"),
                "billing_error",
            ),
            EgressError::RateLimited { .. } => (
                "rate_limit_exceeded",
                Some("rate_limit_exceeded"),
                "rate_limit_error",
            ),
            EgressError::LedgerUnavailable | EgressError::Unreachable { .. } => {
                ("server_error", None, "api_error")
            }
            EgressError::Timeout { .. } => ("timeout", None, "timeout_error"),
        }
    }

    /// The response: status, the provider-shaped JSON body, and the headers SDKs act on.
    pub fn response(&self, family: Family, request_id: &str) -> (Box<ResponseHeader>, Bytes) {
        let (openai_type, openai_code, anthropic_type) = self.kinds();
        let message = self.to_string();
        let body = match family {
            Family::OpenAi => json!({"error": {
                "message": message, "type": openai_type, "param": null, "code": openai_code,
            }}),
            Family::Anthropic => json!({
                "type": "error",
                "error": {"type": anthropic_type, "message": message},
                "request_id": request_id,
            }),
        };
        let body = Bytes::from(body.to_string());
        let mut header = response_header(self.status());
        let _ = header.insert_header("content-type", "application/json");
        let _ = header.insert_header("content-length", body.len().to_string());
        let _ = header.insert_header("x-request-id", request_id);
        match self {
            // SDKs retry 402 only when told to; say plainly that a retry cannot help.
            EgressError::Budget(_) | EgressError::Unauthorized(_) | EgressError::Blocked => {
                let _ = header.insert_header("x-should-retry", "false");
            }
            EgressError::RateLimited { retry_after, .. } => {
                let _ = header.insert_header("retry-after", retry_after.to_string());
            }
            _ => {}
        }
        (Box::new(header), body)
    }
}

/// A response head with `status`, which must be a valid status code (all callers pass a
/// constant or a code that came from a parsed response).
pub fn response_header(status: u16) -> ResponseHeader {
    ResponseHeader::build(status, Some(8))
        .or_else(|_| ResponseHeader::build(502, Some(8)))
        .expect("502 is a valid status")
}
