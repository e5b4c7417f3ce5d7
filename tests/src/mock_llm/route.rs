//! Which provider endpoint a request is for.

use serde::Serialize;

/// Whose API (and so whose auth, error shape and headers) a request gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    OpenAi,
    Anthropic,
}

/// The endpoints the mock serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Route {
    /// `POST /v1/chat/completions`
    ChatCompletions,
    /// `POST /v1/responses`
    Responses,
    /// `POST /v1/embeddings`
    Embeddings,
    /// `GET /v1/models`
    Models,
    /// `POST /v1/messages`
    Messages,
    /// `POST /v1/messages/count_tokens`
    CountTokens,
}

impl Route {
    /// The route for `method` and `path`; `None` means 404.
    pub fn find(method: &str, path: &str) -> Option<Route> {
        let route = match (method, path) {
            ("POST", "/v1/chat/completions") => Route::ChatCompletions,
            ("POST", "/v1/responses") => Route::Responses,
            ("POST", "/v1/embeddings") => Route::Embeddings,
            ("GET", "/v1/models") => Route::Models,
            ("POST", "/v1/messages") => Route::Messages,
            ("POST", "/v1/messages/count_tokens") => Route::CountTokens,
            _ => return None,
        };
        Some(route)
    }

    pub fn provider(self) -> Provider {
        match self {
            Route::Messages | Route::CountTokens => Provider::Anthropic,
            _ => Provider::OpenAi,
        }
    }

    /// Whether the request must carry a JSON body.
    pub(crate) fn has_body(self) -> bool {
        self != Route::Models
    }

    /// Top-level fields the real API rejects a request without.
    pub(crate) fn required_fields(self) -> &'static [&'static str] {
        match self {
            Route::ChatCompletions => &["model", "messages"],
            Route::Responses => &["model"],
            Route::Embeddings => &["model", "input"],
            Route::Models => &[],
            Route::Messages => &["model", "messages", "max_tokens"],
            Route::CountTokens => &["model", "messages"],
        }
    }
}
