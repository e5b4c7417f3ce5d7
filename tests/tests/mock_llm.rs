//! The mock LLM provider itself, over raw HTTP/1.1: the wire formats the SDKs and Sentinel rely
//! on, and the staged failures.

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use sentinel_tests::mock_llm::{MockLlm, Outcome, Usage};

const OPENAI_KEY: &str = "sk-real-openai";
const ANTHROPIC_KEY: &str = "sk-ant-real";
const WAIT: Duration = Duration::from_secs(5);

/// A response as read off the socket.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// The body ended as framed (last chunk, or `content-length` bytes) rather than by a close.
    complete: bool,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    /// SSE events as (event name, data).
    fn events(&self) -> Vec<(Option<String>, String)> {
        self.text()
            .split("\n\n")
            .filter(|e| !e.trim().is_empty())
            .map(|event| {
                let mut name = None;
                let mut data = String::new();
                for line in event.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        name = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push_str(v);
                    }
                }
                (name, data)
            })
            .collect()
    }

    /// The JSON data of every event but `[DONE]`.
    fn event_json(&self) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|(_, d)| d != "[DONE]")
            .map(|(_, d)| serde_json::from_str(&d).expect("JSON event data"))
            .collect()
    }
}

fn request_bytes(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> Vec<u8> {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut req = format!("{method} {path} HTTP/1.1\r\nhost: mock\r\nconnection: close\r\n");
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() {
        req.push_str(&format!(
            "content-type: application/json\r\ncontent-length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(&body);
    req.into_bytes()
}

/// One request on a fresh connection, read until the server closes it.
async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> Reply {
    let mut conn = TcpStream::connect(addr).await.expect("connect to the mock");
    conn.write_all(&request_bytes(method, path, headers, body))
        .await
        .expect("send the request");
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    // A reset after an abort ends the read like a close does.
    while let Ok(n) = conn.read(&mut buf).await {
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
    }
    parse(&raw)
}

fn parse(raw: &[u8]) -> Reply {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete response head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let rest = &raw[split + 4..];
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut reply = Reply {
        status,
        headers,
        body: Vec::new(),
        complete: false,
    };
    if reply.header("transfer-encoding") == Some("chunked") {
        let (body, complete) = dechunk(rest);
        reply.body = body;
        reply.complete = complete;
    } else {
        let length: Option<usize> = reply.header("content-length").and_then(|v| v.parse().ok());
        reply.body = rest.to_vec();
        reply.complete = length.is_none_or(|l| rest.len() >= l);
    }
    reply
}

/// The chunked body, and whether the terminating zero-size chunk arrived.
fn dechunk(mut raw: &[u8]) -> (Vec<u8>, bool) {
    let mut body = Vec::new();
    loop {
        let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") else {
            return (body, false);
        };
        let size_text = String::from_utf8_lossy(&raw[..eol]).into_owned();
        let Ok(size) = usize::from_str_radix(size_text.trim(), 16) else {
            return (body, false);
        };
        if size == 0 {
            return (body, true);
        }
        let data = &raw[eol + 2..];
        if data.len() < size {
            body.extend_from_slice(data);
            return (body, false);
        }
        body.extend_from_slice(&data[..size]);
        raw = data.get(size + 2..).unwrap_or_default();
    }
}

fn openai_auth() -> String {
    format!("Bearer {OPENAI_KEY}")
}

async fn chat(mock: &MockLlm, extra: &[(&str, &str)], body: Value) -> Reply {
    let auth = openai_auth();
    let mut headers = vec![("authorization", auth.as_str())];
    headers.extend_from_slice(extra);
    send(
        mock.addr(),
        "POST",
        "/v1/chat/completions",
        &headers,
        Some(&body),
    )
    .await
}

async fn messages(mock: &MockLlm, extra: &[(&str, &str)], body: Value) -> Reply {
    let mut headers = vec![
        ("x-api-key", ANTHROPIC_KEY),
        ("anthropic-version", "2023-06-01"),
    ];
    headers.extend_from_slice(extra);
    send(mock.addr(), "POST", "/v1/messages", &headers, Some(&body)).await
}

fn chat_body(stream: bool, include_usage: Option<bool>) -> Value {
    let mut body = json!({
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": stream,
    });
    if let Some(include) = include_usage {
        body["stream_options"] = json!({"include_usage": include});
    }
    body
}

fn anthropic_body(stream: bool) -> Value {
    json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "hi"}],
        "stream": stream,
    })
}

#[tokio::test]
async fn chat_json_reports_the_usage_asked_for() {
    let mock = MockLlm::start().await;
    let reply = chat(
        &mock,
        &[
            ("x-mock-input-tokens", "123"),
            ("x-mock-output-tokens", "45"),
            ("x-mock-cached-tokens", "7"),
            ("x-mock-reasoning-tokens", "3"),
            ("accept-encoding", "gzip, deflate"),
        ],
        json!({"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}], "n": 2}),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert!(reply.header("x-request-id").is_some());
    assert!(reply.header("content-encoding").is_none());
    let body = reply.json();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "gpt-4.1");
    assert_eq!(body["choices"].as_array().map(Vec::len), Some(2));
    assert_eq!(body["choices"][1]["message"]["role"], "assistant");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    let usage = &body["usage"];
    assert_eq!(usage["prompt_tokens"], 123);
    assert_eq!(usage["completion_tokens"], 45);
    assert_eq!(usage["total_tokens"], 168);
    assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 7);
    assert_eq!(usage["completion_tokens_details"]["reasoning_tokens"], 3);

    let requests = mock
        .wait_until(WAIT, |r| r.len() == 1 && r[0].completed())
        .await
        .expect("the response completes");
    let rec = &requests[0];
    assert_eq!(rec.path, "/v1/chat/completions");
    assert_eq!(rec.header("Authorization"), Some(openai_auth().as_str()));
    assert!(rec.accept_gzip);
    assert_eq!(rec.json.as_ref().map(|j| j["n"].clone()), Some(json!(2)));
    let expected = Usage {
        input_tokens: 123,
        output_tokens: 45,
        cached_tokens: 7,
        cache_write_tokens: 0,
        reasoning_tokens: 3,
    };
    assert_eq!(rec.usage, Some(expected));
    assert_eq!(mock.total_usage(), expected);
}

#[tokio::test]
async fn chat_stream_has_the_usage_chunk_only_when_asked() {
    let mock = MockLlm::start().await;
    for include in [None, Some(false), Some(true)] {
        let reply = chat(&mock, &[("x-mock-chunks", "4")], chat_body(true, include)).await;
        assert_eq!(reply.status, 200);
        assert!(reply.complete);
        assert_eq!(
            reply.header("content-type"),
            Some("text/event-stream; charset=utf-8")
        );
        assert!(
            reply.text().ends_with("data: [DONE]\n\n"),
            "{}",
            reply.text()
        );
        let chunks = reply.event_json();
        let content: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(content.split(' ').count(), 20, "{content}");
        let usage_chunks: Vec<&Value> = chunks
            .iter()
            .filter(|c| c["choices"] == json!([]))
            .collect();
        if include == Some(true) {
            assert_eq!(usage_chunks.len(), 1);
            assert_eq!(usage_chunks[0]["usage"]["prompt_tokens"], 10);
            assert_eq!(usage_chunks[0]["usage"]["completion_tokens"], 20);
            assert!(std::ptr::eq(usage_chunks[0], &chunks[chunks.len() - 1]));
            assert!(
                chunks[..chunks.len() - 1]
                    .iter()
                    .all(|c| c.get("usage") == Some(&Value::Null))
            );
        } else {
            assert!(usage_chunks.is_empty());
            assert!(chunks.iter().all(|c| c.get("usage").is_none()));
        }
    }
    let requests = mock
        .wait_until(WAIT, |r| r.len() == 3 && r.iter().all(|r| r.completed()))
        .await
        .expect("all streams complete");
    assert_eq!(requests[0].usage, None);
    assert!(requests[2].stream);
    assert_eq!(mock.total_usage().output_tokens, 20);
}

#[tokio::test]
async fn anthropic_stream_message_delta_usage_is_cumulative() {
    let mock = MockLlm::start().await;
    let reply = messages(
        &mock,
        &[
            ("x-mock-input-tokens", "50"),
            ("x-mock-output-tokens", "30"),
            ("x-mock-cached-tokens", "11"),
            ("x-mock-cache-write-tokens", "5"),
            ("x-mock-double-delta", "1"),
        ],
        anthropic_body(true),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(reply.header("request-id").is_some());
    assert!(reply.complete);
    let events = reply.events();
    let names: Vec<&str> = events.iter().filter_map(|(n, _)| n.as_deref()).collect();
    assert_eq!(names.first(), Some(&"message_start"));
    assert_eq!(names.last(), Some(&"message_stop"));
    assert!(names.contains(&"ping"));
    assert_eq!(
        names
            .iter()
            .filter(|n| **n == "content_block_delta")
            .count(),
        3
    );
    let data = reply.event_json();
    assert!(
        events
            .iter()
            .zip(&data)
            .all(|((name, _), d)| name.as_deref() == d["type"].as_str())
    );
    let start = &data[0]["message"]["usage"];
    assert_eq!(start["input_tokens"], 50);
    assert_eq!(start["cache_read_input_tokens"], 11);
    assert_eq!(start["cache_creation_input_tokens"], 5);
    assert_eq!(start["output_tokens"], 1);
    let deltas: Vec<&Value> = data
        .iter()
        .filter(|d| d["type"] == "message_delta")
        .map(|d| &d["usage"]["output_tokens"])
        .collect();
    assert_eq!(deltas, [&json!(15), &json!(30)]);

    mock.wait_until(WAIT, |r| r.len() == 1 && r[0].completed())
        .await
        .expect("the stream completes");
    let total = mock.total_usage();
    assert_eq!(
        total,
        Usage {
            input_tokens: 50,
            output_tokens: 30,
            cached_tokens: 11,
            cache_write_tokens: 5,
            reasoning_tokens: 0,
        }
    );
}

#[tokio::test]
async fn wrong_credentials_get_the_providers_own_errors() {
    let mock = MockLlm::start_with_keys("sk-good", "sk-ant-good").await;
    let body = chat_body(false, None);
    let wrong = send(
        mock.addr(),
        "POST",
        "/v1/chat/completions",
        &[("authorization", "Bearer sk-bad-key-1234")],
        Some(&body),
    )
    .await;
    assert_eq!(wrong.status, 401);
    let err = &wrong.json()["error"];
    assert_eq!(err["type"], "invalid_request_error");
    assert_eq!(err["code"], "invalid_api_key");
    assert_eq!(err["param"], Value::Null);
    assert!(
        !err["message"]
            .as_str()
            .unwrap_or_default()
            .contains("sk-bad-key-1234")
    );

    let anthropic = anthropic_body(false);
    let wrong = send(
        mock.addr(),
        "POST",
        "/v1/messages",
        &[
            ("x-api-key", "sk-ant-bad"),
            ("anthropic-version", "2023-06-01"),
        ],
        Some(&anthropic),
    )
    .await;
    assert_eq!(wrong.status, 401);
    let body = wrong.json();
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "authentication_error");
    assert!(
        body["request_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("req_"))
    );

    // Newer Anthropic SDKs send the API key as a bearer token; every credential sent must match.
    let mut statuses = Vec::new();
    for auth in [
        &[("authorization", "Bearer sk-ant-good")][..],
        &[("authorization", "Bearer sk-good")],
        &[
            ("x-api-key", "sk-ant-good"),
            ("authorization", "Bearer sk-stn-virtual"),
        ],
    ] {
        let mut headers = auth.to_vec();
        headers.push(("anthropic-version", "2023-06-01"));
        let reply = send(
            mock.addr(),
            "POST",
            "/v1/messages",
            &headers,
            Some(&anthropic),
        )
        .await;
        statuses.push(reply.status);
    }
    assert_eq!(statuses, [200, 401, 401]);

    let no_version = send(
        mock.addr(),
        "POST",
        "/v1/messages",
        &[("x-api-key", "sk-ant-good")],
        Some(&anthropic),
    )
    .await;
    assert_eq!(no_version.status, 400);
    assert_eq!(no_version.json()["error"]["type"], "invalid_request_error");

    let ok = send(
        mock.addr(),
        "POST",
        "/v1/messages",
        &[
            ("x-api-key", "sk-ant-good"),
            ("anthropic-version", "2023-06-01"),
        ],
        Some(&anthropic),
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.json()["usage"]["output_tokens"], 20);

    let unknown = send(mock.addr(), "GET", "/v1/nope", &[], None).await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json()["error"]["type"], "invalid_request_error");
    assert_eq!(mock.request_count(), 8);
}

#[tokio::test]
async fn cut_stream_ends_without_done_and_cut_json_is_short() {
    let mock = MockLlm::start().await;
    let reply = chat(
        &mock,
        &[("x-mock-fail", "cut"), ("x-mock-chunks", "6")],
        chat_body(true, Some(true)),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert!(!reply.complete, "the chunked body has no last chunk");
    let text = reply.text();
    assert!(!text.contains("[DONE]"), "{text}");
    assert!(!text.contains("\"finish_reason\":\"stop\""), "{text}");
    assert!(text.contains("word0"));

    let reply = chat(&mock, &[("x-mock-fail", "cut")], chat_body(false, None)).await;
    assert_eq!(reply.status, 200);
    assert!(!reply.complete, "fewer bytes than content-length");
    assert!(serde_json::from_slice::<Value>(&reply.body).is_err());

    let requests = mock
        .wait_until(WAIT, |r| {
            r.len() == 2 && r.iter().all(|r| r.outcome != Outcome::InFlight)
        })
        .await
        .expect("both responses end");
    assert!(requests.iter().all(|r| r.outcome == Outcome::Aborted));
    assert_eq!(mock.total_usage(), Usage::default());
}

#[tokio::test]
async fn anthropic_cut_and_error_after_200() {
    let mock = MockLlm::start().await;
    let cut = messages(
        &mock,
        &[("x-mock-fail", "cut"), ("x-mock-chunks", "4")],
        anthropic_body(true),
    )
    .await;
    assert!(!cut.complete);
    let text = cut.text();
    assert!(text.starts_with("event: message_start\n"), "{text}");
    assert!(
        !text.contains("message_delta") && !text.contains("message_stop"),
        "{text}"
    );

    let err = messages(
        &mock,
        &[("x-mock-fail", "error-after-200")],
        anthropic_body(true),
    )
    .await;
    assert_eq!(err.status, 200);
    assert!(err.complete);
    let events = err.events();
    let (name, data) = events.last().expect("events");
    assert_eq!(name.as_deref(), Some("error"));
    let data: Value = serde_json::from_str(data).expect("JSON");
    assert_eq!(data["error"]["type"], "overloaded_error");
    assert!(!err.text().contains("message_stop"));

    let requests = mock
        .wait_until(WAIT, |r| {
            r.len() == 2 && r.iter().all(|r| r.outcome != Outcome::InFlight)
        })
        .await
        .expect("both responses end");
    assert_eq!(requests[0].outcome, Outcome::Aborted);
    assert_eq!(requests[1].outcome, Outcome::Completed);
    // Only message_start's usage reached the client.
    assert_eq!(
        requests[1].usage.map(|u| (u.input_tokens, u.output_tokens)),
        Some((10, 1))
    );
}

#[tokio::test]
async fn staged_statuses_carry_provider_bodies_and_retry_after() {
    let mock = MockLlm::start().await;
    let limited = chat(
        &mock,
        &[("x-mock-fail", "429"), ("x-mock-retry-after", "7")],
        chat_body(false, None),
    )
    .await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.header("retry-after"), Some("7"));
    assert_eq!(limited.json()["error"]["code"], "rate_limit_exceeded");

    let overloaded = messages(&mock, &[("x-mock-fail", "529")], anthropic_body(false)).await;
    assert_eq!(overloaded.status, 529);
    assert_eq!(overloaded.json()["error"]["type"], "overloaded_error");

    let broken = chat(
        &mock,
        &[("x-mock-fail", "500")],
        chat_body(true, Some(true)),
    )
    .await;
    assert_eq!(broken.status, 500);
    assert_eq!(broken.json()["error"]["type"], "server_error");

    let typo = chat(&mock, &[("x-mock-fail", "explode")], chat_body(false, None)).await;
    assert_eq!(typo.status, 400);
    assert_eq!(mock.total_usage(), Usage::default());
}

#[tokio::test]
async fn client_going_away_mid_stream_is_recorded() {
    let mock = MockLlm::start().await;
    let auth = openai_auth();
    let body = chat_body(true, Some(true));
    let mut conn = TcpStream::connect(mock.addr()).await.expect("connect");
    let req = request_bytes(
        "POST",
        "/v1/chat/completions",
        &[
            ("authorization", &auth),
            ("x-mock-fail", "stall-mid-stream"),
            ("x-mock-delay-ms", "30000"),
        ],
        Some(&body),
    );
    conn.write_all(&req).await.expect("send");
    let mut buf = vec![0u8; 4096];
    let n = conn.read(&mut buf).await.expect("read the head");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    mock.wait_until(WAIT, |r| r.len() == 1 && r[0].status == 200)
        .await
        .expect("the stream started");
    drop(conn);
    let requests = mock
        .wait_until(WAIT, |r| r[0].outcome != Outcome::InFlight)
        .await
        .expect("the disconnect is noticed");
    assert!(requests[0].disconnected());
    assert_eq!(mock.total_usage(), Usage::default());

    // A hanging request: the client gives up, the mock notices.
    let mut conn = TcpStream::connect(mock.addr()).await.expect("connect");
    let req = request_bytes(
        "POST",
        "/v1/chat/completions",
        &[("authorization", &auth), ("x-mock-fail", "hang")],
        Some(&body),
    );
    conn.write_all(&req).await.expect("send");
    mock.wait_until(WAIT, |r| r.len() == 2)
        .await
        .expect("the request arrives");
    drop(conn);
    let requests = mock
        .wait_until(WAIT, |r| r[1].outcome != Outcome::InFlight)
        .await
        .expect("the disconnect is noticed");
    assert!(requests[1].disconnected());
    assert_eq!(requests[1].status, 0);
}

#[tokio::test]
async fn responses_stream_embeddings_models_and_count_tokens() {
    let mock = MockLlm::start().await;
    let auth = openai_auth();
    let headers = [
        ("authorization", auth.as_str()),
        ("x-mock-input-tokens", "9"),
    ];

    let body = json!({"model": "gpt-4.1", "input": "hi", "stream": true});
    let reply = send(mock.addr(), "POST", "/v1/responses", &headers, Some(&body)).await;
    assert_eq!(reply.status, 200);
    let events = reply.events();
    assert_eq!(events[0].0.as_deref(), Some("response.created"));
    assert_eq!(
        events
            .iter()
            .filter(|(n, _)| n.as_deref() == Some("response.output_text.delta"))
            .count(),
        3
    );
    let data = reply.event_json();
    let seqs: Vec<u64> = data
        .iter()
        .filter_map(|d| d["sequence_number"].as_u64())
        .collect();
    assert_eq!(seqs, (0..data.len() as u64).collect::<Vec<_>>());
    let done = data.last().expect("events");
    assert_eq!(done["type"], "response.completed");
    assert_eq!(done["response"]["usage"]["input_tokens"], 9);
    assert_eq!(done["response"]["usage"]["output_tokens"], 20);
    assert_eq!(
        done["response"]["output"][0]["content"][0]["type"],
        "output_text"
    );

    let body = json!({"model": "text-embedding-3-small", "input": ["a", "b"], "encoding_format": "base64", "dimensions": 4});
    let reply = send(mock.addr(), "POST", "/v1/embeddings", &headers, Some(&body)).await;
    assert_eq!(reply.status, 200);
    let body = reply.json();
    assert_eq!(body["data"].as_array().map(Vec::len), Some(2));
    assert_eq!(body["usage"]["prompt_tokens"], 9);
    let encoded = body["data"][1]["embedding"].as_str().expect("base64 text");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .expect("valid base64");
    assert_eq!(bytes.len(), 4 * 4);

    let models = send(mock.addr(), "GET", "/v1/models", &headers, None).await;
    assert_eq!(models.status, 200);
    assert_eq!(models.json()["object"], "list");

    let count = send(
        mock.addr(),
        "POST",
        "/v1/messages/count_tokens",
        &[
            ("x-api-key", ANTHROPIC_KEY),
            ("anthropic-version", "2023-06-01"),
            ("x-mock-input-tokens", "42"),
        ],
        Some(&anthropic_body(false)),
    )
    .await;
    assert_eq!(count.json(), json!({"input_tokens": 42}));

    let usage = send(mock.addr(), "GET", "/_mock/usage", &[], None).await;
    assert_eq!(usage.json()["input_tokens"], 18);
    let recorded = send(mock.addr(), "GET", "/_mock/requests", &[], None).await;
    let recorded = recorded.json();
    assert_eq!(recorded.as_array().map(Vec::len), Some(4));
    assert_eq!(recorded[3]["headers"]["x-mock-input-tokens"], "42");
    assert_eq!(recorded[0]["disconnected"], false);
    let cleared = send(mock.addr(), "POST", "/_mock/clear", &[], None).await;
    assert_eq!(cleared.status, 204);
    assert_eq!(mock.request_count(), 0);
}

#[tokio::test]
async fn dropping_the_mock_ends_pending_answers() {
    let mock = MockLlm::start().await;
    let addr = mock.addr();
    let auth = openai_auth();
    let body = chat_body(false, None);
    let pending = tokio::spawn(async move {
        send(
            addr,
            "POST",
            "/v1/chat/completions",
            &[("authorization", &auth), ("x-mock-fail", "hang")],
            Some(&body),
        )
        .await
    });
    mock.wait_until(WAIT, |r| r.len() == 1)
        .await
        .expect("the request arrives");
    drop(mock);
    let reply = tokio::time::timeout(WAIT, pending)
        .await
        .expect("the hanging answer ends when the mock drops")
        .expect("the client task");
    assert_eq!(reply.status, 503);
    let closed = async {
        while TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(WAIT, closed)
        .await
        .expect("the listener closes");
}
