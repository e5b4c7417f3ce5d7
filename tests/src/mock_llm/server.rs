//! The HTTP side: one handler that records each request, checks it like the provider would,
//! stages the scenario's failure, and writes the provider's answer.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::header::{
    ACCEPT_ENCODING, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER,
};
use axum::http::request::Parts;
use axum::response::Response;
use serde_json::Value;
use tokio::sync::watch;

use super::auth::{self, Keys};
use super::errors::{self, ApiError};
use super::record::{Guard, Outcome, RecordedRequest, Recorder};
use super::reply::{self, Reply};
use super::route::{Provider, Route};
use super::scenario::{Fail, Scenario};
use super::stream::{self, json_steps};
use super::{anthropic, chat, control, embeddings, responses};

/// Larger request bodies are a test bug; the real APIs cap lower still.
const MAX_BODY: usize = 64 << 20;

/// State shared by every connection.
#[derive(Debug)]
pub(crate) struct Shared {
    pub recorder: Arc<Recorder>,
    pub keys: Keys,
    /// The scenario used where a request sends no `x-mock-*` header.
    pub defaults: Mutex<Scenario>,
    /// Turns `true` when the mock stops: pending waits end and open bodies abort.
    pub shutdown: watch::Receiver<bool>,
}

impl Shared {
    pub(crate) fn defaults(&self) -> Scenario {
        self.defaults
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn set_defaults(&self, scenario: Scenario) {
        *self.defaults.lock().unwrap_or_else(PoisonError::into_inner) = scenario;
    }

    /// Resolves after `pause`, or early (returning `false`) when the mock stops.
    async fn sleep(&self, pause: Duration) -> bool {
        let mut shutdown = self.shutdown.clone();
        tokio::select! {
            () = tokio::time::sleep(pause) => true,
            _ = shutdown.wait_for(|stop| *stop) => false,
        }
    }
}

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new().fallback(handle).with_state(shared)
}

async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    if parts.uri.path().starts_with(control::PREFIX) {
        return control::handle(&shared, &parts, body).await;
    }
    let read = axum::body::to_bytes(body, MAX_BODY).await;
    let body = read.as_ref().cloned().unwrap_or_default();
    let (seq, route) = record(&shared, &parts, &body);
    let mut guard = Guard::new(shared.recorder.clone(), seq);
    if let Err(err) = read {
        // Most likely the client went away mid-upload; the guard's drop records that.
        let err = errors::openai(400, "invalid_request_error", None, &err.to_string());
        return plain_error(err);
    }
    let request_id = format!("req_mock{seq:012}");
    let provider = route.map_or(Provider::OpenAi, Route::provider);
    let Some((reply, scenario)) = decide(&shared, &parts, route, &body, seq, &request_id).await
    else {
        guard.finish(Outcome::Aborted);
        return plain_error(errors::for_status(provider, 503, &request_id));
    };
    respond(&shared, provider, reply, &scenario, guard, &request_id, seq)
}

/// Appends the request to the log; returns its sequence number and route.
fn record(shared: &Shared, parts: &Parts, body: &Bytes) -> (u64, Option<Route>) {
    let route = Route::find(parts.method.as_str(), parts.uri.path());
    let headers = parts
        .headers
        .iter()
        .map(|(name, value)| {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            (name.as_str().to_owned(), value)
        })
        .collect();
    let accept_gzip = parts
        .headers
        .get_all(ACCEPT_ENCODING)
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| v.contains("gzip")));
    let seq = shared.recorder.push(RecordedRequest {
        id: 0,
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers,
        body: body.clone(),
        json: serde_json::from_slice(body).ok(),
        route,
        status: 0,
        stream: false,
        usage: None,
        outcome: Outcome::InFlight,
        accept_gzip,
    });
    (seq, route)
}

/// The answer and the scenario to write it with, after any staged wait. `None`: the mock shut
/// down while waiting (or hanging).
async fn decide(
    shared: &Shared,
    parts: &Parts,
    route: Option<Route>,
    body: &Bytes,
    seq: u64,
    request_id: &str,
) -> Option<(Reply, Scenario)> {
    // Rejections are written whole, whatever the scenario says.
    let reject = |err: ApiError| Some((Reply::from(err), Scenario::default()));
    let Some(route) = route else {
        let message = format!("Invalid URL ({} {})", parts.method, parts.uri.path());
        return reject(errors::openai(404, "invalid_request_error", None, &message));
    };
    let provider = route.provider();
    if let Err(err) = auth::check(provider, &parts.headers, &shared.keys, request_id) {
        return reject(err);
    }
    let invalid = |message: &str| match provider {
        Provider::OpenAi => errors::openai(400, "invalid_request_error", None, message),
        Provider::Anthropic => errors::anthropic(400, "invalid_request_error", message, request_id),
    };
    let scenario = match Scenario::from_headers(&shared.defaults(), &parts.headers) {
        Ok(s) => s,
        Err(message) => return reject(invalid(&format!("mock LLM: {message}"))),
    };
    let json = if route.has_body() {
        match serde_json::from_slice::<Value>(body) {
            Ok(json @ Value::Object(_)) => json,
            _ => return reject(invalid("We could not parse the JSON body of your request.")),
        }
    } else {
        Value::Null
    };
    if let Some(missing) = route
        .required_fields()
        .iter()
        .find(|f| json.get(**f).is_none())
    {
        return reject(invalid(&format!("{missing}: Field required")));
    }

    if let Some(pause) = scenario.head_delay()
        && !shared.sleep(pause).await
    {
        return None;
    }
    let req = reply::Request {
        json: &json,
        seq,
        created: now(),
    };
    let reply = match scenario.fail {
        Some(Fail::Hang) => {
            let mut shutdown = shared.shutdown.clone();
            let _ = shutdown.wait_for(|stop| *stop).await;
            return None;
        }
        Some(Fail::Status(status)) => errors::for_status(provider, status, request_id).into(),
        // Only a stream can fail after its 200; a JSON answer fails up front instead.
        Some(Fail::ErrorAfter200) if !req.stream() => {
            errors::for_status(provider, 500, request_id).into()
        }
        _ => match route {
            Route::ChatCompletions => chat::reply(&req, &scenario),
            Route::Responses => responses::reply(&req, &scenario),
            Route::Embeddings => embeddings::reply(&req, &scenario),
            Route::Models => embeddings::models(req.created),
            Route::Messages => anthropic::messages(&req, &scenario),
            Route::CountTokens => anthropic::count_tokens(&scenario),
        },
    };
    Some((reply, scenario))
}

/// Writes `reply` the way `scenario` says, with the provider's headers, and records what the
/// client is told.
fn respond(
    shared: &Shared,
    provider: Provider,
    reply: Reply,
    scenario: &Scenario,
    guard: Guard,
    request_id: &str,
    seq: u64,
) -> Response {
    let (status, steps, usage, length) = match reply {
        Reply::Json {
            status,
            body,
            usage,
        } => {
            let bytes = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
            let length = bytes.len();
            // Half a JSON body tells the client nothing.
            let usage = usage.filter(|_| !scenario.fails(Fail::Cut));
            (status, json_steps(bytes, scenario), usage, Some(length))
        }
        Reply::Sse(script) => {
            let (steps, usage) = script.plan(scenario);
            (200, steps, usage, None)
        }
    };
    shared
        .recorder
        .answered(seq, status, length.is_none(), usage);

    let mut builder = Response::builder().status(status);
    builder = match length {
        Some(length) => builder
            .header(CONTENT_TYPE, "application/json")
            .header(CONTENT_LENGTH, length),
        None => builder
            .header(CONTENT_TYPE, "text/event-stream; charset=utf-8")
            .header(CACHE_CONTROL, "no-cache"),
    };
    for (name, value) in provider_headers(provider, request_id, status == 429) {
        builder = builder.header(name, value);
    }
    if status == 429 {
        builder = builder.header(RETRY_AFTER, scenario.retry_after);
    }
    builder
        .body(stream::body(steps, guard, shared.shutdown.clone()))
        .expect("mock LLM response headers are valid")
}

/// The request id and rate-limit headers each provider sends on every answer.
fn provider_headers(
    provider: Provider,
    request_id: &str,
    limited: bool,
) -> Vec<(&'static str, String)> {
    let remaining = |n: u64| {
        if limited {
            "0".to_owned()
        } else {
            n.to_string()
        }
    };
    match provider {
        Provider::OpenAi => vec![
            ("x-request-id", request_id.to_owned()),
            ("openai-version", "2020-10-01".to_owned()),
            ("openai-processing-ms", "7".to_owned()),
            ("x-ratelimit-limit-requests", "10000".to_owned()),
            ("x-ratelimit-limit-tokens", "30000000".to_owned()),
            ("x-ratelimit-remaining-requests", remaining(9999)),
            ("x-ratelimit-remaining-tokens", remaining(29_999_000)),
            ("x-ratelimit-reset-requests", "6ms".to_owned()),
            ("x-ratelimit-reset-tokens", "2ms".to_owned()),
        ],
        Provider::Anthropic => {
            let reset = "2030-01-01T00:00:00Z".to_owned();
            vec![
                ("request-id", request_id.to_owned()),
                ("anthropic-ratelimit-requests-limit", "4000".to_owned()),
                ("anthropic-ratelimit-requests-remaining", remaining(3999)),
                ("anthropic-ratelimit-requests-reset", reset.clone()),
                ("anthropic-ratelimit-tokens-limit", "2000000".to_owned()),
                ("anthropic-ratelimit-tokens-remaining", remaining(1_999_000)),
                ("anthropic-ratelimit-tokens-reset", reset),
            ]
        }
    }
}

/// An error answered outside the recorded flow (unreadable body, shutdown).
fn plain_error(err: ApiError) -> Response {
    let body = serde_json::to_vec(&err.body).unwrap_or_default();
    Response::builder()
        .status(err.status)
        .header(CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .expect("mock LLM response headers are valid")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
