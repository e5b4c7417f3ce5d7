//! What the mock saw and what it told each client.
//!
//! Tests assert on both halves: the request as Sentinel forwarded it (headers, rewritten body)
//! and the usage the mock reported back, which is what Sentinel's meter must agree with.

use std::ops::{Add, AddAssign};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::route::{Provider, Route};

/// Token counts as the mock put them on the wire, in the provider's own terms: for OpenAI
/// `input_tokens` is `prompt_tokens`/`input_tokens` and *includes* `cached_tokens`; for Anthropic
/// it is `input_tokens`, which *excludes* cache reads (`cached_tokens`) and cache writes
/// (`cache_write_tokens`). `reasoning_tokens` is part of `output_tokens` (OpenAI only).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_tokens: u64,
    pub cache_write_tokens: u64,
    pub reasoning_tokens: u64,
}

impl Add for Usage {
    type Output = Usage;
    fn add(mut self, rhs: Usage) -> Usage {
        self += rhs;
        self
    }
}

impl AddAssign for Usage {
    fn add_assign(&mut self, rhs: Usage) {
        self.input_tokens += rhs.input_tokens;
        self.output_tokens += rhs.output_tokens;
        self.cached_tokens += rhs.cached_tokens;
        self.cache_write_tokens += rhs.cache_write_tokens;
        self.reasoning_tokens += rhs.reasoning_tokens;
    }
}

/// How a response ended, as far as the mock can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Still being handled (or streamed).
    InFlight,
    /// The whole response, to its last byte, was handed to the connection.
    Completed,
    /// The client (Sentinel) went away before the response ended: the response body or the
    /// pending handler was dropped.
    ClientGone,
    /// The mock cut the connection on purpose (`x-mock-fail: cut`) or was shut down mid-response.
    Aborted,
}

/// One request the mock received, with what it answered.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// Sequence number, unique per mock (not reset by `clear`).
    pub id: u64,
    pub method: String,
    /// The path without the query string.
    pub path: String,
    pub query: Option<String>,
    /// Every header as (lowercase name, value); repeated headers keep their relative order.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// The body parsed as JSON, when it is JSON.
    pub json: Option<Value>,
    /// The provider endpoint this was routed to; `None` for unknown paths (answered 404).
    pub route: Option<Route>,
    /// The HTTP status answered (0 while none was sent yet, or never).
    pub status: u16,
    /// Whether the answer was an SSE stream.
    pub stream: bool,
    /// The usage the answer carried, merged the way the SDK would (Anthropic: `message_start`
    /// overwritten by `message_delta`); `None` when the client was never told any usage.
    pub usage: Option<Usage>,
    pub outcome: Outcome,
    /// The client asked for gzip; the mock always answers uncompressed (identity) anyway.
    pub accept_gzip: bool,
}

impl RecordedRequest {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn provider(&self) -> Option<Provider> {
        self.route.map(Route::provider)
    }

    /// The client went away before the response ended.
    pub fn disconnected(&self) -> bool {
        self.outcome == Outcome::ClientGone
    }

    pub fn completed(&self) -> bool {
        self.outcome == Outcome::Completed
    }

    /// The body as text (lossy), for assertions and the `/_mock/requests` view.
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The JSON view served at `GET /_mock/requests`. Headers become an object (repeated headers
    /// joined with ", ") because that is what a Python test wants to index.
    pub fn to_json(&self) -> Value {
        let mut headers = Map::new();
        for (name, value) in &self.headers {
            match headers.get_mut(name) {
                Some(Value::String(prev)) => {
                    prev.push_str(", ");
                    prev.push_str(value);
                }
                _ => {
                    headers.insert(name.clone(), Value::String(value.clone()));
                }
            }
        }
        json!({
            "id": self.id,
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "headers": headers,
            "body": self.body_text(),
            "json": self.json,
            "route": self.route,
            "provider": self.provider(),
            "status": self.status,
            "stream": self.stream,
            "usage": self.usage,
            "outcome": self.outcome,
            "completed": self.completed(),
            "disconnected": self.disconnected(),
            "accept_gzip": self.accept_gzip,
        })
    }
}

/// The shared, append-only log of requests. Updates address records by id, so a response that
/// ends after `clear()` updates nothing rather than the wrong record.
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    records: Mutex<Vec<RecordedRequest>>,
    next_id: AtomicU64,
}

impl Recorder {
    /// Appends `rec` under a fresh id, which it returns.
    pub(crate) fn push(&self, mut rec: RecordedRequest) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        rec.id = id;
        self.lock().push(rec);
        id
    }

    /// Notes the answer's status, shape and reported usage once it is decided.
    pub(crate) fn answered(&self, id: u64, status: u16, stream: bool, usage: Option<Usage>) {
        self.update(id, |r| {
            r.status = status;
            r.stream = stream;
            r.usage = usage;
        });
    }

    /// Sets the outcome, once: the first end observed wins (a drop after completion is not a
    /// disconnect).
    pub(crate) fn finish(&self, id: u64, outcome: Outcome) {
        self.update(id, |r| {
            if r.outcome == Outcome::InFlight {
                r.outcome = outcome;
            }
        });
    }

    pub(crate) fn snapshot(&self) -> Vec<RecordedRequest> {
        self.lock().clone()
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    pub(crate) fn clear(&self) {
        self.lock().clear();
    }

    /// Usage summed over completed responses: what a correct meter would have charged.
    pub(crate) fn total_usage(&self) -> Usage {
        self.lock()
            .iter()
            .filter(|r| r.completed())
            .filter_map(|r| r.usage)
            .fold(Usage::default(), Add::add)
    }

    fn update(&self, id: u64, f: impl FnOnce(&mut RecordedRequest)) {
        let mut records = self.lock();
        if let Some(rec) = records.iter_mut().rev().find(|r| r.id == id) {
            f(rec);
        }
    }

    /// A panicking test thread must not take every later assertion down with it.
    fn lock(&self) -> MutexGuard<'_, Vec<RecordedRequest>> {
        self.records.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Records how a response ended. Dropped before [`Guard::finish`] means the server dropped the
/// handler or the body: the client went away.
#[derive(Debug)]
pub(crate) struct Guard {
    recorder: Arc<Recorder>,
    id: u64,
    done: bool,
}

impl Guard {
    pub(crate) fn new(recorder: Arc<Recorder>, id: u64) -> Guard {
        Guard {
            recorder,
            id,
            done: false,
        }
    }

    pub(crate) fn finish(&mut self, outcome: Outcome) {
        if !self.done {
            self.done = true;
            self.recorder.finish(self.id, outcome);
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.finish(Outcome::ClientGone);
    }
}
