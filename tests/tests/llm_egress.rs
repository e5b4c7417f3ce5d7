//! LLM egress, black box: the `sentinel` binary between a plain HTTP client and the mock
//! provider (real OpenAI and Anthropic wire formats, JSON and SSE).
//!
//! - Calls are metered exactly from the provider's usage (JSON, chat SSE with the injected usage
//!   chunk hidden, Responses SSE, Anthropic SSE with cumulative deltas, embeddings) and priced in
//!   micro-dollars.
//! - The provider sees Sentinel's real key, never the tenant's virtual key or org headers.
//! - Over budget → 402 in the provider's own error shape with `x-should-retry: false`, and the
//!   provider is never contacted; narrower per-model budgets hold too.
//! - Bad keys → 401, bad requests → 400/404/413, rates → 429 with `retry-after`.
//! - Every failure path settles once: upstream errors, cut streams, hangs, client disconnects;
//!   an unreachable provider charges nothing.
//! - Concurrent calls never spend past the limit.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use sentinel_tests::llm::{
    ANTHROPIC_KEY, CLAUDE, Charge, EMBED, GPT, LlmSetup, OPENAI_KEY, charges, http_client,
    wait_port,
};
use sentinel_tests::mock_llm::MockLlm;
use sentinel_tests::{Auth, SentinelConfig, SentinelProcess, free_port};
use serde_json::{Value, json};

struct Egress {
    sentinel: SentinelProcess,
    config: SentinelConfig,
    base: String,
    client: reqwest::Client,
}

async fn start(mock_url: &str, setup: impl FnOnce(LlmSetup) -> LlmSetup) -> Result<Egress> {
    let setup = setup(LlmSetup::new(mock_url).tenant("acme", "1.00", &[]));
    let config = SentinelConfig::with_upstream("127.0.0.1", free_port())
        .user("app", Auth::Trust, "app")
        .llm(&setup);
    let sentinel = SentinelProcess::start_with(&config).await?;
    wait_port(setup.port).await?;
    Ok(Egress {
        sentinel,
        config,
        base: setup.base_url(),
        client: http_client(),
    })
}

impl Egress {
    fn key(&self, tenant: &str) -> String {
        self.config
            .virtual_key(tenant, &format!("{tenant}-key"))
            .expect("the test config mints virtual keys")
    }

    fn post(&self, path: &str, tenant: &str, body: &Value) -> reqwest::RequestBuilder {
        self.client
            .post(format!("{}{path}", self.base))
            .bearer_auth(self.key(tenant))
            .json(body)
    }

    fn anthropic(&self, tenant: &str, body: &Value) -> reqwest::RequestBuilder {
        self.client
            .post(format!("{}/v1/messages", self.base))
            .header("x-api-key", self.key(tenant))
            .header("anthropic-version", "2023-06-01")
            .json(body)
    }

    /// Waits until Sentinel has logged `n` settlements, and returns them.
    async fn charges(&self, n: usize) -> Result<Vec<Charge>> {
        let started = std::time::Instant::now();
        loop {
            let found = charges(&self.sentinel.logs());
            if found.len() >= n {
                return Ok(found);
            }
            ensure!(
                started.elapsed() < Duration::from_secs(10),
                "{} settlements logged, {n} expected; log:\n{}",
                found.len(),
                self.sentinel.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn chat(model: &str, stream: bool, max_tokens: u64) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "user", "content": "Say hello to the tenant."}],
        "max_tokens": max_tokens,
        "stream": stream,
    })
}

fn message(stream: bool, max_tokens: u64) -> Value {
    json!({
        "model": CLAUDE,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": "Say hello."}],
        "stream": stream,
    })
}

async fn text(response: reqwest::Response) -> Result<(u16, reqwest::header::HeaderMap, String)> {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    Ok((
        status,
        headers,
        response.text().await.context("reading the body")?,
    ))
}

#[tokio::test]
async fn json_chat_is_metered_exactly_and_the_provider_sees_only_the_real_key() -> Result<()> {
    let mock = MockLlm::start().await;
    let egress = start(&mock.base_url(), |s| s).await?;
    let response = egress
        .post("/v1/chat/completions", "acme", &chat(GPT, false, 600))
        .header("openai-organization", "org-tenant")
        .header("openai-project", "proj-tenant")
        .header("x-mock-input-tokens", "1000")
        .header("x-mock-cached-tokens", "200")
        .header("x-mock-output-tokens", "500")
        .send()
        .await?;
    let (status, headers, body) = text(response).await?;
    ensure!(status == 200, "{status}: {body}");
    ensure!(headers.contains_key("x-sentinel-request-id"));
    let body: Value = serde_json::from_str(&body)?;
    ensure!(
        body["usage"]["prompt_tokens"] == 1000,
        "usage passed through: {body}"
    );
    ensure!(body["choices"][0]["message"]["content"].is_string());

    let seen = mock.last_request().context("the provider got the call")?;
    ensure!(seen.header("authorization") == Some(&*format!("Bearer {OPENAI_KEY}")));
    for gone in ["openai-organization", "openai-project", "x-api-key"] {
        ensure!(seen.header(gone).is_none(), "{gone} reached the provider");
    }
    ensure!(
        !seen.body_text().contains("sk-stn-"),
        "the virtual key reached the provider"
    );
    // (1000 - 200) × $1 + 200 × $0.50 + 500 × $2 per million tokens = 1,900 µ$.
    let charged = egress.charges(1).await?;
    ensure!(
        charged[0]
            == Charge {
                tenant: "acme".into(),
                micros: 1_900,
                outcome: "ok".into(),
                estimated: false
            },
        "{charged:?}"
    );
    Ok(())
}

#[tokio::test]
async fn chat_streams_are_metered_and_the_injected_usage_chunk_stays_hidden() -> Result<()> {
    let mock = MockLlm::start().await;
    let egress = start(&mock.base_url(), |s| s).await?;

    // The client did not ask for usage: Sentinel asks for it and hides the extra chunk.
    let (status, _, body) = text(
        egress
            .post("/v1/chat/completions", "acme", &chat(GPT, true, 100))
            .header("x-mock-input-tokens", "10")
            .header("x-mock-output-tokens", "20")
            .send()
            .await?,
    )
    .await?;
    ensure!(status == 200, "{status}: {body}");
    ensure!(body.trim_end().ends_with("data: [DONE]"), "{body}");
    ensure!(
        !body.contains("\"choices\":[]"),
        "the usage-only chunk reached the client: {body}"
    );
    let sent = mock.last_request().context("the provider got the call")?;
    let asked = &sent.json.context("a JSON body")?["stream_options"]["include_usage"];
    ensure!(
        *asked == json!(true),
        "include_usage was not injected: {asked}"
    );

    // The client asked: it gets the chunk.
    let mut asked = chat(GPT, true, 100);
    asked["stream_options"] = json!({"include_usage": true});
    let (_, _, body) = text(
        egress
            .post("/v1/chat/completions", "acme", &asked)
            .header("x-mock-input-tokens", "10")
            .header("x-mock-output-tokens", "20")
            .send()
            .await?,
    )
    .await?;
    ensure!(body.contains("\"prompt_tokens\":10"), "{body}");

    let charged = egress.charges(2).await?;
    // 10 × $1 + 20 × $2 per million = 50 µ$, each.
    ensure!(
        charged.iter().all(|c| c.micros == 50 && !c.estimated),
        "{charged:?}"
    );
    Ok(())
}

#[tokio::test]
async fn anthropic_usage_is_the_last_cumulative_delta_never_the_sum() -> Result<()> {
    let mock = MockLlm::start().await;
    let egress = start(&mock.base_url(), |s| s).await?;
    for stream in [false, true] {
        let (status, _, body) = text(
            egress
                .anthropic("acme", &message(stream, 100))
                .header("x-mock-input-tokens", "100")
                .header("x-mock-output-tokens", "50")
                .header("x-mock-cached-tokens", "20")
                .header("x-mock-cache-write-tokens", "10")
                .header("x-mock-double-delta", "1")
                .send()
                .await?,
        )
        .await?;
        ensure!(status == 200, "{status}: {body}");
        if stream {
            ensure!(body.contains("event: message_stop"), "{body}");
        }
    }
    let seen = mock.last_request().context("the provider got the call")?;
    ensure!(seen.header("x-api-key") == Some(ANTHROPIC_KEY));
    ensure!(seen.header("anthropic-version") == Some("2023-06-01"));
    // 100 × $3 + 20 × $0.30 + 10 × $3.75 + 50 × $15 per million = 1,093.5 → 1,094 µ$ (rounded up).
    let charged = egress.charges(2).await?;
    ensure!(
        charged.iter().all(|c| c.micros == 1_094 && !c.estimated),
        "{charged:?}"
    );
    Ok(())
}

#[tokio::test]
async fn responses_and_embeddings_are_metered() -> Result<()> {
    let mock = MockLlm::start().await;
    let egress = start(&mock.base_url(), |s| s).await?;
    for stream in [false, true] {
        let body =
            json!({"model": GPT, "input": "Hello", "max_output_tokens": 100, "stream": stream});
        let (status, _, text_body) = text(
            egress
                .post("/v1/responses", "acme", &body)
                .header("x-mock-input-tokens", "40")
                .header("x-mock-output-tokens", "30")
                .send()
                .await?,
        )
        .await?;
        ensure!(status == 200, "{status}: {text_body}");
    }
    let body = json!({"model": EMBED, "input": ["one", "two"]});
    let (status, _, text_body) = text(
        egress
            .post("/v1/embeddings", "acme", &body)
            .header("x-mock-input-tokens", "1000")
            .send()
            .await?,
    )
    .await?;
    ensure!(status == 200, "{status}: {text_body}");
    let charged = egress.charges(3).await?;
    let micros: Vec<u64> = charged.iter().map(|c| c.micros).collect();
    // Responses: 40 × $1 + 30 × $2 = 100 µ$; embeddings: 1000 × $0.10 = 100 µ$.
    ensure!(micros == [100, 100, 100], "{charged:?}");
    Ok(())
}

#[tokio::test]
async fn over_budget_is_402_in_the_provider_shape_and_never_reaches_the_provider() -> Result<()> {
    let mock = MockLlm::start().await;
    let egress = start(&mock.base_url(), |s| {
        s.tenant("poor", "0.000100", &[]).tenant(
            "narrow",
            "1.00",
            &["model_budgets_usd = { \"mock-claude\" = \"0.000500\" }"],
        )
    })
    .await?;

    let (status, headers, body) = text(
        egress
            .post("/v1/chat/completions", "poor", &chat(GPT, false, 100))
            .send()
            .await?,
    )
    .await?;
    ensure!(status == 402, "{status}: {body}");
    ensure!(headers.get("x-should-retry").is_some_and(|v| v == "false"));
    let body: Value = serde_json::from_str(&body)?;
    ensure!(body["error"]["type"] == "insufficient_quota", "{body}");
    ensure!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("budget")),
        "{body}"
    );

    let (status, _, body) = text(
        egress
            .anthropic("poor", &message(false, 100))
            .send()
            .await?,
    )
    .await?;
    ensure!(status == 402, "{status}: {body}");
    let body: Value = serde_json::from_str(&body)?;
    ensure!(
        body["type"] == "error" && body["error"]["type"] == "billing_error",
        "{body}"
    );

    // The model's own budget is narrower than the tenant's.
    let (status, _, body) = text(
        egress
            .anthropic("narrow", &message(false, 100))
            .send()
            .await?,
    )
    .await?;
    ensure!(status == 402 && body.contains(CLAUDE), "{status}: {body}");
    ensure!(
        mock.request_count() == 0,
        "a refused call reached the provider"
    );
    let (status, _, body) = text(
        egress
            .post("/v1/chat/completions", "narrow", &chat(GPT, false, 100))
            .send()
            .await?,
    )
    .await?;
    ensure!(status == 200, "other models still pass: {status}: {body}");
    ensure!(mock.request_count() == 1);
    Ok(())
}

#[tokio::test]
async fn bad_keys_are_401_and_bad_requests_are_refused_before_the_provider() -> Result<()> {
    let mock = MockLlm::start().await;
    let egress = start(&mock.base_url(), |s| {
        s.option("revoked_keys", "[\"gone-key\"]")
            .option("max_request_bytes", "4096")
    })
    .await?;
    let url = format!("{}/v1/chat/completions", egress.base);
    let body = chat(GPT, false, 10);
    let mut tampered = egress.key("acme");
    let last = tampered.pop().context("a key")?;
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    let foreign = SentinelConfig::with_upstream("127.0.0.1", 1).virtual_key("acme", "acme-key")?;
    // `key("gone")` is issued with key id "gone-key", which the config revokes.
    let revoked = egress.key("gone");
    for (what, key) in [
        ("missing", None),
        ("tampered", Some(tampered)),
        ("foreign keyring", Some(foreign)),
        ("revoked", Some(revoked)),
        ("provider key", Some(OPENAI_KEY.to_owned())),
    ] {
        let mut request = egress.client.post(&url).json(&body);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let (status, _, text) = text(request.send().await?).await?;
        ensure!(status == 401, "{what}: {status}: {text}");
        ensure!(text.contains("invalid_api_key"), "{what}: {text}");
    }

    let cases: Vec<(&str, reqwest::RequestBuilder, u16)> = vec![
        (
            "unknown model",
            egress.post("/v1/chat/completions", "acme", &chat("gpt-9", false, 10)),
            400,
        ),
        (
            "anthropic model on an openai path",
            egress.post("/v1/chat/completions", "acme", &chat(CLAUDE, false, 10)),
            400,
        ),
        (
            "bad JSON",
            egress
                .client
                .post(&url)
                .bearer_auth(egress.key("acme"))
                .header("content-type", "application/json")
                .body("{\"model\": "),
            400,
        ),
        (
            "too large",
            egress.post(
                "/v1/chat/completions",
                "acme",
                &json!({"model": GPT, "messages": [{"role": "user", "content": "x".repeat(5000)}]}),
            ),
            413,
        ),
        (
            "unknown path",
            egress.post("/v1/files", "acme", &json!({})),
            404,
        ),
    ];
    for (what, request, want) in cases {
        let (status, _, text) = text(request.send().await?).await?;
        ensure!(status == want, "{what}: {status}: {text}");
        ensure!(
            serde_json::from_str::<Value>(&text)?["error"]["message"].is_string(),
            "{what}: {text}"
        );
    }
    ensure!(
        mock.request_count() == 0,
        "a refused request reached the provider"
    );

    let (status, _, text) = text(
        egress
            .client
            .get(format!("{}/v1/models", egress.base))
            .bearer_auth(egress.key("acme"))
            .send()
            .await?,
    )
    .await?;
    ensure!(
        status == 200 && text.contains(GPT) && text.contains(CLAUDE),
        "{status}: {text}"
    );
    Ok(())
}

#[tokio::test]
async fn request_rate_is_limited_with_retry_after() -> Result<()> {
    let mock = MockLlm::start().await;
    let egress = start(&mock.base_url(), |s| {
        s.tenant("slow", "1.00", &["requests_per_minute = 2"])
    })
    .await?;
    for _ in 0..2 {
        let (status, _, body) = text(
            egress
                .post("/v1/chat/completions", "slow", &chat(GPT, false, 10))
                .send()
                .await?,
        )
        .await?;
        ensure!(status == 200, "{status}: {body}");
    }
    let (status, headers, body) = text(
        egress
            .post("/v1/chat/completions", "slow", &chat(GPT, false, 10))
            .send()
            .await?,
    )
    .await?;
    ensure!(status == 429, "{status}: {body}");
    let retry: u64 = headers
        .get("retry-after")
        .context("retry-after")?
        .to_str()?
        .parse()?;
    ensure!((1..=60).contains(&retry), "retry-after {retry}");
    ensure!(body.contains("rate_limit_exceeded"), "{body}");
    ensure!(mock.request_count() == 2);
    Ok(())
}

#[tokio::test]
async fn failures_settle_once_with_at_least_the_input_bound() -> Result<()> {
    let mock = MockLlm::start().await;
    let egress = start(&mock.base_url(), |s| s).await?;

    // The provider answers 500: passed through, charged the input bound.
    let (status, _, body) = text(
        egress
            .post("/v1/chat/completions", "acme", &chat(GPT, false, 100))
            .header("x-mock-fail", "500")
            .send()
            .await?,
    )
    .await?;
    ensure!(status == 500 && body.contains("error"), "{status}: {body}");

    // A stream cut mid-way: the client sees it end without [DONE].
    let cut = egress
        .post("/v1/chat/completions", "acme", &chat(GPT, true, 100))
        .header("x-mock-fail", "cut")
        .send()
        .await?;
    ensure!(cut.status() == 200);
    let body = cut.text().await.unwrap_or_default();
    ensure!(!body.contains("[DONE]"), "{body}");

    // A provider that never answers: 504 after first_byte_timeout.
    let (status, _, body) = text(
        egress
            .post("/v1/chat/completions", "acme", &chat(GPT, false, 100))
            .header("x-mock-fail", "hang")
            .send()
            .await?,
    )
    .await?;
    ensure!(
        status == 504 && body.contains("timed out"),
        "{status}: {body}"
    );

    // An error event after a 200 (Anthropic).
    let (status, _, body) = text(
        egress
            .anthropic("acme", &message(true, 100))
            .header("x-mock-fail", "error-after-200")
            .send()
            .await?,
    )
    .await?;
    ensure!(
        status == 200 && body.contains("overloaded_error"),
        "{status}: {body}"
    );

    let charged = egress.charges(4).await?;
    ensure!(charged.len() == 4, "one settlement per call: {charged:?}");
    let outcomes: Vec<&str> = charged.iter().map(|c| c.outcome.as_str()).collect();
    ensure!(
        outcomes == ["upstream_error", "upstream_cut", "timeout", "stream_error"],
        "{charged:?}"
    );
    ensure!(
        charged.iter().all(|c| c.estimated && c.micros > 0),
        "never zero once sent: {charged:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_client_that_leaves_mid_stream_is_charged_what_was_streamed() -> Result<()> {
    let mock = MockLlm::start().await;
    let egress = start(&mock.base_url(), |s| s).await?;
    let mut response = egress
        .post("/v1/chat/completions", "acme", &chat(GPT, true, 1000))
        .header("x-mock-chunks", "200")
        .header("x-mock-chunk-delay-ms", "20")
        .send()
        .await?;
    ensure!(response.status() == 200);
    let first = response.chunk().await?.context("a first chunk")?;
    ensure!(!first.is_empty());
    drop(response);
    mock.wait_until(Duration::from_secs(10), |r| {
        r.first().is_some_and(|r| r.disconnected())
    })
    .await?;
    let charged = egress.charges(1).await?;
    ensure!(
        charged[0].outcome == "client_gone" && charged[0].estimated,
        "{charged:?}"
    );
    // At least the prompt's bound at $1/M: a handful of micro-dollars, never zero.
    ensure!(charged[0].micros > 0, "{charged:?}");
    Ok(())
}

#[tokio::test]
async fn an_unreachable_provider_is_502_and_charges_nothing() -> Result<()> {
    let closed = format!("http://127.0.0.1:{}", free_port());
    let egress = start(&closed, |s| s).await?;
    let (status, _, body) = text(
        egress
            .post("/v1/chat/completions", "acme", &chat(GPT, false, 100))
            .send()
            .await?,
    )
    .await?;
    ensure!(
        status == 502 && body.contains("unreachable"),
        "{status}: {body}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    ensure!(
        charges(&egress.sentinel.logs()).is_empty(),
        "a call that never left was charged"
    );
    Ok(())
}

#[tokio::test]
async fn concurrent_calls_never_spend_past_the_limit() -> Result<()> {
    let mock = MockLlm::start().await;
    // 10,000 µ$; each call's bound is a little over 200 µ$ and it costs about as much.
    let egress = start(&mock.base_url(), |s| s.tenant("shared", "0.010000", &[])).await?;
    let mut calls = Vec::new();
    for _ in 0..80 {
        let request = egress
            .post("/v1/chat/completions", "shared", &chat(GPT, false, 100))
            .header("x-mock-input-tokens", "20")
            .header("x-mock-output-tokens", "100");
        calls.push(tokio::spawn(async move {
            request.send().await.map(|r| r.status().as_u16())
        }));
    }
    let mut ok = 0;
    let mut refused = 0;
    for call in calls {
        match call.await?? {
            200 => ok += 1,
            402 => refused += 1,
            other => anyhow::bail!("unexpected status {other}"),
        }
    }
    ensure!(ok > 0 && refused > 0, "ok {ok}, refused {refused}");
    ensure!(
        mock.request_count() == ok,
        "refused calls must not reach the provider"
    );
    let charged = egress.charges(ok).await?;
    let total: u64 = charged.iter().map(|c| c.micros).sum();
    // 20 × $1 + 100 × $2 per million = 220 µ$ per call, exactly.
    ensure!(charged.iter().all(|c| c.micros == 220), "{charged:?}");
    ensure!(total <= 10_000, "spent {total} µ$ of 10,000");
    ensure!(
        total >= 5_000,
        "spent only {total} µ$ of 10,000: reservations leaked"
    );
    Ok(())
}

#[tokio::test]
async fn a_stalled_stream_times_out_and_is_charged_what_was_streamed() -> Result<()> {
    let mock = MockLlm::start().await;
    // idle_timeout is 3s in the test setup; the mock goes silent for 6s.
    let egress = start(&mock.base_url(), |s| s).await?;
    let response = egress
        .post("/v1/chat/completions", "acme", &chat(GPT, true, 100))
        .header("x-mock-fail", "stall-mid-stream")
        .header("x-mock-delay-ms", "6000")
        .send()
        .await?;
    ensure!(response.status() == 200);
    let body = response.text().await.unwrap_or_default();
    ensure!(
        !body.contains("[DONE]"),
        "a stalled stream must not look complete: {body}"
    );
    let charged = egress.charges(1).await?;
    ensure!(
        charged[0].outcome == "timeout" && charged[0].estimated && charged[0].micros > 0,
        "{charged:?}"
    );
    Ok(())
}

#[tokio::test]
async fn token_counts_pass_through_free_and_h2c_clients_are_served() -> Result<()> {
    let mock = MockLlm::start().await;
    let egress = start(&mock.base_url(), |s| s).await?;
    let (status, _, body) = text(
        egress
            .client
            .post(format!("{}/v1/messages/count_tokens", egress.base))
            .header("x-api-key", egress.key("acme"))
            .header("anthropic-version", "2023-06-01")
            .header("x-mock-input-tokens", "42")
            .json(&json!({"model": CLAUDE, "messages": [{"role": "user", "content": "Hi"}]}))
            .send()
            .await?,
    )
    .await?;
    ensure!(status == 200 && body.contains("42"), "{status}: {body}");
    ensure!(
        mock.last_request()
            .and_then(|r| r.header("x-api-key").map(str::to_owned))
            == Some(ANTHROPIC_KEY.to_owned())
    );

    // HTTP/2 with prior knowledge on the plaintext port.
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let h2 = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .http2_prior_knowledge()
        .no_proxy()
        .build()?;
    let response = h2
        .post(format!("{}/v1/chat/completions", egress.base))
        .bearer_auth(egress.key("acme"))
        .json(&chat(GPT, true, 100))
        .send()
        .await?;
    ensure!(
        response.version() == reqwest::Version::HTTP_2,
        "{:?}",
        response.version()
    );
    let body = response.text().await?;
    ensure!(body.trim_end().ends_with("data: [DONE]"), "{body}");
    // The count is free; the chat call is charged.
    let charged = egress.charges(1).await?;
    ensure!(
        charged.len() == 1 && charged[0].outcome == "ok",
        "{charged:?}"
    );
    Ok(())
}

#[tokio::test]
async fn sigterm_lets_a_stream_finish_refuses_new_calls_and_exits_0() -> Result<()> {
    let mock = MockLlm::start().await;
    let mut egress = start(&mock.base_url(), |s| s).await?;
    let mut stream = egress
        .post("/v1/chat/completions", "acme", &chat(GPT, true, 1000))
        .header("x-mock-chunks", "40")
        .header("x-mock-chunk-delay-ms", "50")
        .send()
        .await?;
    ensure!(stream.status() == 200);
    let mut body =
        String::from_utf8_lossy(&stream.chunk().await?.context("a first chunk")?).into_owned();
    egress.sentinel.signal(libc::SIGTERM)?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = http_client()
        .post(format!("{}/v1/chat/completions", egress.base))
        .bearer_auth(egress.key("acme"))
        .json(&chat(GPT, false, 10))
        .send()
        .await;
    ensure!(
        refused.is_err(),
        "a new call was accepted while draining: {refused:?}"
    );
    while let Some(chunk) = stream.chunk().await? {
        body.push_str(&String::from_utf8_lossy(&chunk));
    }
    ensure!(
        body.trim_end().ends_with("data: [DONE]"),
        "the stream was cut by the shutdown: {body}"
    );
    let status = egress.sentinel.wait_exit(Duration::from_secs(10)).await?;
    ensure!(status.success(), "exit status {status}");
    let charged = charges(&egress.sentinel.logs());
    ensure!(
        charged.len() == 1 && charged[0].outcome == "ok",
        "{charged:?}"
    );
    Ok(())
}
