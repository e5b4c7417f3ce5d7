//! Which of the SDK paths a request is for.

use http::Method;
use sentinel_policy::llm::{Api, Family};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// A metered call.
    Call(Api),
    /// Anthropic's free token count: forwarded without a reservation.
    CountTokens,
    /// `GET /v1/models`: answered by Sentinel with the models it routes.
    Models,
}

/// The route of `method path` (path without its query), if it is one Sentinel serves.
pub fn route(method: &Method, path: &str) -> Option<Route> {
    let path = path.trim_end_matches('/');
    match (method, path) {
        (&Method::POST, "/v1/chat/completions") => Some(Route::Call(Api::ChatCompletions)),
        (&Method::POST, "/v1/responses") => Some(Route::Call(Api::Responses)),
        (&Method::POST, "/v1/embeddings") => Some(Route::Call(Api::Embeddings)),
        (&Method::POST, "/v1/messages") => Some(Route::Call(Api::Messages)),
        (&Method::POST, "/v1/messages/count_tokens") => Some(Route::CountTokens),
        (&Method::GET, "/v1/models") => Some(Route::Models),
        _ => None,
    }
}

/// Whose error shape a request on `path` expects, even when the path is not served.
pub fn family_of_path(path: &str) -> Family {
    if path.starts_with("/v1/messages") {
        Family::Anthropic
    } else {
        Family::OpenAi
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn sdk_paths() {
        assert_eq!(
            route(&Method::POST, "/v1/chat/completions"),
            Some(Route::Call(Api::ChatCompletions))
        );
        assert_eq!(
            route(&Method::POST, "/v1/messages/"),
            Some(Route::Call(Api::Messages))
        );
        assert_eq!(
            route(&Method::POST, "/v1/messages/count_tokens"),
            Some(Route::CountTokens)
        );
        assert_eq!(route(&Method::GET, "/v1/models"), Some(Route::Models));
        assert_eq!(route(&Method::GET, "/v1/chat/completions"), None);
        assert_eq!(route(&Method::POST, "/v1/files"), None);
        assert_eq!(family_of_path("/v1/messages/batches"), Family::Anthropic);
        assert_eq!(family_of_path("/v2/whatever"), Family::OpenAi);
    }
}
