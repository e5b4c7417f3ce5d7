//! Turning an answer into timed writes, and the response body that performs them.
//!
//! Writes are paced (a few ms apart) and some SSE events are split across two writes, so a
//! proxy's incremental parser really sees events straddle chunk boundaries. Staged failures
//! (`cut`, `stall-mid-stream`, `error-after-200`) are applied here, the same way for every
//! provider: each provider only says which events are preamble, content and ending.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use futures_util::Stream;
use futures_util::stream::{self, BoxStream, StreamExt as _};
use serde_json::Value;
use tokio::sync::watch;

use super::record::{Guard, Outcome, Usage};
use super::scenario::{Fail, Scenario};

/// A pause long enough for the server to flush what it has been given (it flushes whenever the
/// body has nothing ready): between the halves of a split write, and before an abort.
const PAUSE: Duration = Duration::from_millis(2);

/// How many content events a stream sends before an injected error or stall ("a couple").
const EVENTS_BEFORE_TROUBLE: usize = 2;

/// One SSE event.
#[derive(Clone, Debug)]
pub(crate) struct Event {
    name: Option<&'static str>,
    data: Option<Value>,
}

impl Event {
    /// `data: {json}` (OpenAI chat).
    pub(crate) fn data(data: Value) -> Event {
        Event {
            name: None,
            data: Some(data),
        }
    }

    /// `event: name` + `data: {json}` (Responses, Anthropic).
    pub(crate) fn named(name: &'static str, data: Value) -> Event {
        Event {
            name: Some(name),
            data: Some(data),
        }
    }

    /// `data: [DONE]`.
    pub(crate) fn done() -> Event {
        Event {
            name: None,
            data: None,
        }
    }

    fn encode(&self) -> Bytes {
        let data = self
            .data
            .as_ref()
            .map_or_else(|| "[DONE]".to_owned(), Value::to_string);
        match self.name {
            Some(name) => format!("event: {name}\ndata: {data}\n\n"),
            None => format!("data: {data}\n\n"),
        }
        .into()
    }
}

/// A stream as the provider would send it, in parts the failure modes cut between.
#[derive(Clone, Debug, Default)]
pub(crate) struct Script {
    /// Before any content (role chunk, `message_start`, `response.created`, …).
    pub head: Vec<Event>,
    /// One event per content piece.
    pub body: Vec<Event>,
    /// The normal ending (finish, usage, `[DONE]`, `message_stop`, …).
    pub tail: Vec<Event>,
    /// What replaces the rest of the stream under `error-after-200`.
    pub error_tail: Vec<Event>,
    /// Set a running `sequence_number` on every event (Responses API).
    pub numbered: bool,
    /// The usage a complete stream reports.
    pub usage: Option<Usage>,
    /// The usage already told by `head` (Anthropic's `message_start`).
    pub head_usage: Option<Usage>,
}

/// One thing the response body does.
#[derive(Clone, Debug)]
pub(crate) enum Step {
    Write(Bytes),
    Sleep(Duration),
    /// Fail the body, which makes the server drop the connection mid-response.
    Abort,
}

impl Script {
    /// The writes for `scenario`'s failure mode, and the usage the client ends up told.
    pub(crate) fn plan(self, scenario: &Scenario) -> (Vec<Step>, Option<Usage>) {
        let Script {
            head,
            mut body,
            tail,
            error_tail,
            numbered,
            usage,
            head_usage,
        } = self;
        let few = EVENTS_BEFORE_TROUBLE.min(body.len());
        // `None` in the event list marks the stall.
        let (events, abort, usage): (Vec<Option<Event>>, bool, Option<Usage>) = match scenario.fail
        {
            Some(Fail::Cut) => {
                body.truncate(body.len().div_ceil(2));
                (chain([head, body]), true, head_usage)
            }
            Some(Fail::ErrorAfter200) => {
                body.truncate(few);
                (chain([head, body, error_tail]), false, head_usage)
            }
            Some(Fail::StallMidStream) => {
                let rest = body.split_off(few);
                let mut events = chain([head, body]);
                events.push(None);
                events.extend(chain([rest, tail]));
                (events, false, usage)
            }
            _ => (chain([head, body, tail]), false, usage),
        };

        let mut steps = Vec::new();
        let mut seq = 0u64;
        for (i, event) in events.into_iter().enumerate() {
            let Some(mut event) = event else {
                steps.push(Step::Sleep(scenario.stall()));
                continue;
            };
            if numbered && let Some(Value::Object(data)) = &mut event.data {
                data.insert("sequence_number".to_owned(), seq.into());
                seq += 1;
            }
            if i > 0 {
                steps.push(Step::Sleep(scenario.chunk_delay()));
            }
            push_write(&mut steps, event.encode(), i % 2 == 1);
        }
        if abort {
            abort_after_flush(&mut steps);
        }
        (steps, usage)
    }
}

/// The writes of a JSON answer: always two halves (so the body spans reads), with the staged
/// `cut` (first half only, then abort) or `stall-mid-stream` (silence between the halves).
pub(crate) fn json_steps(body: Bytes, scenario: &Scenario) -> Vec<Step> {
    let mut steps = Vec::new();
    match scenario.fail {
        Some(Fail::Cut) => {
            steps.push(Step::Write(body.slice(..body.len() / 2)));
            abort_after_flush(&mut steps);
        }
        Some(Fail::StallMidStream) => {
            let mid = body.len() / 2;
            steps.push(Step::Write(body.slice(..mid)));
            steps.push(Step::Sleep(scenario.stall()));
            steps.push(Step::Write(body.slice(mid..)));
        }
        _ => push_write(&mut steps, body, true),
    }
    steps
}

fn chain<const N: usize>(parts: [Vec<Event>; N]) -> Vec<Option<Event>> {
    parts.into_iter().flatten().map(Some).collect()
}

/// Ends with an abort, after a pause: the server drops its unflushed output when a body fails,
/// so failing right after the last write would lose that write.
fn abort_after_flush(steps: &mut Vec<Step>) {
    steps.push(Step::Sleep(PAUSE));
    steps.push(Step::Abort);
}

/// One write, or two (split mid-event, on purpose) with a pause between.
fn push_write(steps: &mut Vec<Step>, bytes: Bytes, split: bool) {
    if split && bytes.len() >= 2 {
        let mid = bytes.len() / 2;
        steps.push(Step::Write(bytes.slice(..mid)));
        steps.push(Step::Sleep(PAUSE));
        steps.push(Step::Write(bytes.slice(mid..)));
    } else {
        steps.push(Step::Write(bytes));
    }
}

/// A response body performing `steps`, recording through `guard` how it ended: all written
/// ([`Outcome::Completed`]), aborted by the mock, or dropped by the server because the client
/// went away ([`Outcome::ClientGone`], via the guard's drop).
pub(crate) fn body(steps: Vec<Step>, guard: Guard, shutdown: watch::Receiver<bool>) -> Body {
    let inner = stream::unfold(
        (steps.into_iter().peekable(), shutdown),
        |(mut steps, mut shutdown)| async move {
            loop {
                let failure = match steps.next()? {
                    Step::Write(bytes) => {
                        let last = steps.peek().is_none();
                        return Some((Ok((bytes, last)), (steps, shutdown)));
                    }
                    Step::Sleep(pause) => {
                        let stopped = tokio::select! {
                            () = tokio::time::sleep(pause) => false,
                            _ = shutdown.wait_for(|stop| *stop) => true,
                        };
                        if !stopped {
                            continue;
                        }
                        "mock LLM shut down mid-response"
                    }
                    Step::Abort => "mock LLM cut the connection on purpose",
                };
                let rest = Vec::new().into_iter().peekable();
                return Some((Err(io::Error::other(failure)), (rest, shutdown)));
            }
        },
    );
    Body::from_stream(Tracked {
        inner: inner.boxed(),
        guard,
    })
}

/// Watches the body's end (or its early drop) on behalf of the record. The last write counts
/// as the end: with a `content-length` the server stops polling once it has that many bytes.
struct Tracked {
    inner: BoxStream<'static, io::Result<(Bytes, bool)>>,
    guard: Guard,
}

impl Stream for Tracked {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let item = ready!(self.inner.poll_next_unpin(cx));
        Poll::Ready(match item {
            Some(Ok((bytes, last))) => {
                if last {
                    self.guard.finish(Outcome::Completed);
                }
                Some(Ok(bytes))
            }
            Some(Err(err)) => {
                self.guard.finish(Outcome::Aborted);
                Some(Err(err))
            }
            None => {
                self.guard.finish(Outcome::Completed);
                None
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn script(n: usize) -> Script {
        Script {
            head: vec![Event::named("start", json!({"type": "start"}))],
            body: (0..n)
                .map(|i| Event::named("delta", json!({"type": "delta", "i": i})))
                .collect(),
            tail: vec![Event::named("stop", json!({"type": "stop"}))],
            error_tail: vec![Event::named("error", json!({"type": "error"}))],
            numbered: true,
            usage: Some(Usage::default()),
            head_usage: None,
        }
    }

    fn written(steps: &[Step]) -> String {
        let mut out = Vec::new();
        for step in steps {
            if let Step::Write(b) = step {
                out.extend_from_slice(b);
            }
        }
        String::from_utf8(out).expect("utf8")
    }

    #[test]
    fn full_stream_is_numbered_and_split() {
        let (steps, usage) = script(4).plan(&Scenario::default());
        let text = written(&steps);
        let last = text.rsplit("\n\n").nth(1).expect("a last event");
        assert!(last.starts_with("event: stop\ndata: {"), "{last}");
        assert!(last.contains("\"sequence_number\":5"), "{last}");
        let writes = steps.iter().filter(|s| matches!(s, Step::Write(_))).count();
        assert!(writes > 6, "some events are split: {writes} writes");
        assert!(usage.is_some());
    }

    #[test]
    fn cut_sends_half_and_aborts() {
        let scenario = Scenario {
            fail: Some(Fail::Cut),
            ..Scenario::default()
        };
        let (steps, usage) = script(4).plan(&scenario);
        let text = written(&steps);
        assert_eq!(text.matches("event: delta").count(), 2);
        assert!(!text.contains("event: stop"));
        assert!(matches!(steps.last(), Some(Step::Abort)));
        assert!(usage.is_none());
    }
}
