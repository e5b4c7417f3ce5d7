//! A mock LLM provider speaking the real OpenAI and Anthropic wire formats.
//!
//! Black-box tests put Sentinel's LLM egress proxy between a client (raw HTTP, or the official
//! Python SDKs) and this mock, then compare what Sentinel charged with the usage the mock
//! reported ([`MockLlm::total_usage`]) and check what Sentinel forwarded
//! ([`MockLlm::requests`]). Each request picks its usage and any staged failure with `x-mock-*`
//! headers (see [`header`] and [`Fail`]): errors, slow or hanging answers, streams that stall,
//! turn into errors after their 200, or are cut off.
//!
//! Routes: `POST /v1/chat/completions`, `POST /v1/responses`, `POST /v1/embeddings`,
//! `GET /v1/models` (OpenAI: `authorization: Bearer <key>`), `POST /v1/messages`,
//! `POST /v1/messages/count_tokens` (Anthropic: `x-api-key` or a bearer token, and
//! `anthropic-version`); anything else is a 404 in OpenAI's error shape. `/_mock/…` is for tests
//! in other processes, through the `mock_llm` binary.

mod anthropic;
mod auth;
mod chat;
mod control;
mod embeddings;
mod errors;
mod record;
mod reply;
mod responses;
mod route;
mod scenario;
mod server;
mod stream;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use axum::serve::ListenerExt as _;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use auth::Keys;
pub use record::{Outcome, RecordedRequest, Usage};
pub use route::{Provider, Route};
pub use scenario::{Fail, Scenario, header};

use record::Recorder;
use server::Shared;

/// A running mock on `127.0.0.1`. Dropping it stops the server: pending and streaming answers
/// are aborted.
#[derive(Debug)]
pub struct MockLlm {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
}

impl MockLlm {
    /// Starts on a free port with the default keys (`sk-real-openai`, `sk-ant-real`).
    pub async fn start() -> MockLlm {
        MockLlm::start_on(0, Keys::default())
            .await
            .expect("mock LLM: bind 127.0.0.1:0")
    }

    /// Starts on a free port, accepting only these keys.
    pub async fn start_with_keys(openai_key: &str, anthropic_key: &str) -> MockLlm {
        let keys = Keys {
            openai: openai_key.to_owned(),
            anthropic: anthropic_key.to_owned(),
        };
        MockLlm::start_on(0, keys)
            .await
            .expect("mock LLM: bind 127.0.0.1:0")
    }

    /// Starts on `port` (0: any free port). Must run inside a Tokio runtime, which serves it.
    pub async fn start_on(port: u16, keys: Keys) -> std::io::Result<MockLlm> {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        // Streamed writes are small and paced; Nagle would merge them and hide chunk boundaries.
        let listener = listener.tap_io(|tcp| {
            if let Err(err) = tcp.set_nodelay(true) {
                eprintln!("mock LLM: TCP_NODELAY: {err}");
            }
        });
        let (stop, shutdown) = watch::channel(false);
        let shared = Arc::new(Shared {
            recorder: Arc::new(Recorder::default()),
            keys,
            defaults: Mutex::new(Scenario::default()),
            shutdown: shutdown.clone(),
        });
        let app = server::router(shared.clone());
        let mut signal = shutdown;
        tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = signal.wait_for(|stop| *stop).await;
                })
                .await;
            if let Err(err) = served {
                eprintln!("mock LLM server on {addr}: {err}");
            }
        });
        Ok(MockLlm { addr, shared, stop })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`: the Anthropic SDK's `base_url` (it adds `/v1/messages`).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://127.0.0.1:PORT/v1`: the OpenAI SDK's `base_url`.
    pub fn openai_base_url(&self) -> String {
        format!("{}/v1", self.base_url())
    }

    /// Every request received since start (or the last [`MockLlm::clear`]), in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.recorder.snapshot()
    }

    pub fn last_request(&self) -> Option<RecordedRequest> {
        self.requests().pop()
    }

    pub fn request_count(&self) -> usize {
        self.shared.recorder.len()
    }

    /// Forgets the recorded requests (and so their usage).
    pub fn clear(&self) {
        self.shared.recorder.clear();
    }

    /// The usage reported to clients, summed over completed responses (see [`Usage`] for the
    /// per-provider meaning of each field).
    pub fn total_usage(&self) -> Usage {
        self.shared.recorder.total_usage()
    }

    /// The scenario for requests that send no `x-mock-*` header (headers still override it).
    pub fn set_defaults(&self, scenario: Scenario) {
        self.shared.set_defaults(scenario);
    }

    /// Polls the recorded requests until `done` holds for them, e.g. until a stream's outcome
    /// is known after the client went away; fails after `timeout`.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        done: impl Fn(&[RecordedRequest]) -> bool,
    ) -> Result<Vec<RecordedRequest>> {
        let deadline = Instant::now() + timeout;
        loop {
            let requests = self.requests();
            if done(&requests) {
                return Ok(requests);
            }
            if Instant::now() >= deadline {
                let outcomes: Vec<_> = requests
                    .iter()
                    .map(|r| (r.method.as_str(), r.path.as_str(), r.status, r.outcome))
                    .collect();
                bail!("mock LLM: condition not met within {timeout:?}; requests: {outcomes:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for MockLlm {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}
