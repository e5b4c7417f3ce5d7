//! A provider's answer before the wire: a JSON body or an SSE script.

use serde_json::Value;

use super::errors::ApiError;
use super::record::Usage;
use super::stream::Script;

/// What an endpoint answers; `server` turns it into timed writes and headers.
#[derive(Debug)]
pub(crate) enum Reply {
    /// A JSON body with the usage it reports.
    Json {
        status: u16,
        body: Value,
        usage: Option<Usage>,
    },
    /// An SSE stream (status 200).
    Sse(Script),
}

impl Reply {
    pub(crate) fn ok(body: Value, usage: Option<Usage>) -> Reply {
        Reply::Json {
            status: 200,
            body,
            usage,
        }
    }
}

impl From<ApiError> for Reply {
    fn from(err: ApiError) -> Reply {
        Reply::Json {
            status: err.status,
            body: err.body,
            usage: None,
        }
    }
}

/// What every endpoint needs to know about the request.
#[derive(Debug)]
pub(crate) struct Request<'a> {
    /// The JSON body (`Null` for `GET`).
    pub json: &'a Value,
    /// The mock's sequence number for this request, used to build ids.
    pub seq: u64,
    /// Unix seconds.
    pub created: u64,
}

impl Request<'_> {
    /// The model named by the request (echoed back, as the providers do).
    pub(crate) fn model(&self) -> &str {
        self.json
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or("mock-model")
    }

    pub(crate) fn stream(&self) -> bool {
        self.json.get("stream").and_then(Value::as_bool) == Some(true)
    }
}
