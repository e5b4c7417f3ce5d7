//! Provider-style credential checks, so a test can prove Sentinel swapped the app's key for the
//! real one (and in the header the provider expects).

use axum::http::HeaderMap;

use super::errors::{self, ApiError};
use super::route::Provider;

/// The API keys the mock accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    /// Expected in `authorization: Bearer <key>` on OpenAI routes.
    pub openai: String,
    /// Expected in `x-api-key: <key>` or `authorization: Bearer <key>` on Anthropic routes.
    pub anthropic: String,
}

impl Default for Keys {
    fn default() -> Keys {
        Keys {
            openai: "sk-real-openai".to_owned(),
            anthropic: "sk-ant-real".to_owned(),
        }
    }
}

/// Accepts the request or returns the provider's own 401/400.
pub(crate) fn check(
    provider: Provider,
    headers: &HeaderMap,
    keys: &Keys,
    request_id: &str,
) -> Result<(), ApiError> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    match provider {
        Provider::OpenAi => match get("authorization").and_then(|v| v.strip_prefix("Bearer ")) {
            None => Err(errors::openai(
                401,
                "invalid_request_error",
                None,
                "You didn't provide an API key. You need to provide your API key in an \
                 Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            )),
            Some(key) if key.trim() == keys.openai => Ok(()),
            Some(key) => Err(errors::openai(
                401,
                "invalid_request_error",
                Some("invalid_api_key"),
                &format!(
                    "Incorrect API key provided: {}. You can find your API key at \
                     https://platform.openai.com/account/api-keys.",
                    mask(key)
                ),
            )),
        },
        Provider::Anthropic => {
            let unauthorized = |message: &str| {
                Err(errors::anthropic(
                    401,
                    "authentication_error",
                    message,
                    request_id,
                ))
            };
            // The SDK sends an API key as `x-api-key` or (newer versions) as a bearer token;
            // every credential present must be the real key, so a leaked one is caught.
            let bearer = get("authorization").and_then(|v| v.strip_prefix("Bearer "));
            let presented: Vec<&str> = [get("x-api-key"), bearer].into_iter().flatten().collect();
            if presented.is_empty() {
                return unauthorized("x-api-key header is required");
            }
            if presented.iter().any(|key| key.trim() != keys.anthropic) {
                return unauthorized("invalid x-api-key");
            }
            if get("anthropic-version").is_none() {
                return Err(errors::anthropic(
                    400,
                    "invalid_request_error",
                    "anthropic-version: header is required",
                    request_id,
                ));
            }
            Ok(())
        }
    }
}

/// OpenAI echoes a masked key; never echo a whole one, even a test's.
fn mask(key: &str) -> String {
    let head: String = key.chars().take(6).collect();
    let tail: String = key
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("{head}***{tail}")
}
