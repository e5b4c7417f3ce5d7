//! One egress request, from its head to its settlement.
//!
//! Order matters: route and authenticate on the head; read the whole body (bounded); parse it and
//! find the model's provider and price; bound the cost; check the tenant's rates; hold the bound
//! in the ledger — all before any byte goes upstream. Then forward, relay the response while
//! metering it, and settle: the provider's usage when it came, otherwise at least the input bound
//! plus the output already streamed; a release only when the provider never got the request.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use pingora::proxy::Session;
use rand::Rng as _;
use sentinel_policy::keys::verify_virtual_key;
use sentinel_policy::llm::{
    Api, Estimate, Forward, Micros, ModelPrice, RequestInfo, SseParser, StreamMeter, Usage,
    estimate, parse_request, usage_from_json, with_usage_requested,
};
use serde_json::json;
use tracing::{Instrument as _, field};

use super::auth::credential;
use super::error::{EgressError, response_header};
use super::limits::{Limit, Throttled};
use super::route::{Route, family_of_path, route};
use super::settle::Settlement;
use super::upstream::{SendError, Upstream};
use super::{EgressLive, EgressShared};
use crate::config::ProviderKind;
use crate::ledger::{LedgerError, ReserveRequest};
use crate::metrics::Metrics;

/// Largest SSE event accepted from a provider.
const MAX_EVENT_BYTES: usize = 8 << 20;
/// Request bodies above this are estimated on a blocking thread.
const BLOCKING_ESTIMATE_ABOVE: usize = 64 << 10;
/// Largest non-streamed response body buffered for metering.
const MAX_JSON_RESPONSE: usize = 64 << 20;
/// Response headers of the provider not passed to the client (hop-by-hop, or reframed here).
const RESPONSE_DROPPED: &[&str] = &[
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "proxy-connection",
    "trailer",
    "upgrade",
];

/// Serves one request. `Err` only when the client must see a broken response (the head was
/// already sent and the upstream failed mid-body): pingora then closes the connection without
/// ending the body, as the provider's own failure would.
pub async fn serve(shared: &EgressShared, session: &mut Session) -> pingora::Result<()> {
    let request_id = new_request_id();
    let path = session.req_header().uri.path().to_owned();
    let span = tracing::info_span!(
        "llm",
        request_id = %request_id,
        path = %path,
        tenant = field::Empty,
        model = field::Empty,
        provider = field::Empty,
        reserved = field::Empty,
        charged = field::Empty,
        outcome = field::Empty,
    );
    shared
        .stats
        .in_flight
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let live = shared.live.load_full();
    let result = async {
        let mut call = Call {
            shared,
            live: &live,
            tenant: None,
            request_id: &request_id,
            started: Instant::now(),
        };
        let result = call.handle(session).await;
        let (label, broken) = match result {
            Ok(outcome) => (outcome.label, outcome.broken),
            Err(e) => {
                let family = family_of_path(&path);
                tracing::info!(status = e.status(), error = %e, "refused");
                if let Some(tenant) = &call.tenant {
                    shared.metrics.llm_refused(tenant, e.label());
                }
                let (header, body) = e.response(family, &request_id);
                let written = async {
                    session.write_response_header(header, false).await?;
                    session.write_response_body(Some(body), true).await
                }
                .await;
                if let Err(write) = written {
                    tracing::debug!(error = %write, "client gone before the error was written");
                }
                (e.label(), false)
            }
        };
        tracing::Span::current().record("outcome", label);
        shared.stats.outcome(label);
        if broken {
            Err(pingora::Error::explain(
                pingora::ErrorType::ReadError,
                "upstream failed mid-response",
            ))
        } else {
            Ok(())
        }
    }
    .instrument(span)
    .await;
    shared
        .stats
        .in_flight
        .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    result
}

/// `sen_` and 24 random hex digits: the reservation id and the idempotency key of the usage.
fn new_request_id() -> String {
    let n: u128 = rand::thread_rng().r#gen();
    format!("sen_{:024x}", n >> 32)
}

struct Outcome {
    label: &'static str,
    /// The response was cut short after its head.
    broken: bool,
}

impl Outcome {
    fn done(label: &'static str) -> Outcome {
        Outcome {
            label,
            broken: false,
        }
    }
}

struct Call<'a> {
    shared: &'a EgressShared,
    live: &'a EgressLive,
    /// Known once the virtual key is checked.
    tenant: Option<String>,
    request_id: &'a str,
    started: Instant,
}

/// What a metered call knows when it settles.
struct Metered<'a> {
    price: &'a ModelPrice,
    estimate: Estimate,
    tenant: String,
    limit: Limit,
}

impl Call<'_> {
    async fn handle(&mut self, session: &mut Session) -> Result<Outcome, EgressError> {
        let shared = self.shared;
        let live = self.live;
        let llm = live.llm();
        let head = session.req_header();
        let method = head.method.clone();
        let path = head.uri.path().to_owned();
        let query = head.uri.query().map(str::to_owned);
        let route = route(&method, &path).ok_or_else(|| EgressError::NotFound {
            method: method.to_string(),
            path: path.clone(),
        })?;

        let key = credential(&head.headers)?;
        let claims = verify_virtual_key(shared.secrets.keyring(), shared.secrets.salt(), key)
            .map_err(|_| EgressError::Unauthorized("invalid virtual key"))?;
        if shared
            .ledger
            .is_revoked(&claims.key_id)
            .await
            .map_err(|_| EgressError::LedgerUnavailable)?
        {
            return Err(EgressError::Unauthorized(
                "this virtual key has been revoked",
            ));
        }
        let tenant = claims.tenant;
        tracing::Span::current().record("tenant", tenant.as_str());
        self.tenant = Some(tenant.clone());
        if shared.blocks.llm_blocked(&tenant) {
            Metrics::count(&shared.metrics.blocked_llm);
            return Err(EgressError::Blocked);
        }

        let api = match route {
            Route::Models => return self.models(session).await,
            Route::Call(api) => api,
            Route::CountTokens => Api::Messages,
        };
        let body = read_body(session, llm.max_request_bytes).await?;
        let info = parse_request(api, &body).map_err(|e| EgressError::BadRequest(e.to_string()))?;
        tracing::Span::current().record("model", info.model.as_str());
        let upstream = live
            .upstream_for(&info.model)
            .filter(|u| (u.kind == ProviderKind::Anthropic) == (api == Api::Messages))
            .ok_or_else(|| EgressError::UnknownModel(info.model.clone()))?;
        tracing::Span::current().record("provider", upstream.name.as_str());
        if route == Route::CountTokens {
            return self
                .count_tokens(session, upstream, &path, query.as_deref(), body)
                .await;
        }
        let price = live
            .prices
            .get(&info.model)
            .ok_or_else(|| EgressError::UnknownModel(info.model.clone()))?;
        let (info, bound) = if body.len() > BLOCKING_ESTIMATE_ABOVE {
            // Tokenizing a large prompt takes milliseconds: off the event loop.
            let (tokenizers, price) = (shared.tokenizers.clone(), price.clone());
            tokio::task::spawn_blocking(move || {
                let bound = estimate(api, &info, &price, &tokenizers);
                (info, bound)
            })
            .await
            .map_err(|_| EgressError::BadRequest("the request could not be estimated".into()))?
        } else {
            let bound = estimate(api, &info, price, &shared.tokenizers);
            (info, bound)
        };
        let limit = llm.tenant(&tenant).map_or(
            Limit {
                requests_per_minute: 0,
                tokens_per_minute: 0,
            },
            |t| Limit {
                requests_per_minute: t.requests_per_minute,
                tokens_per_minute: t.tokens_per_minute,
            },
        );
        let bound_tokens = bound.input_tokens + bound.output_tokens;
        shared
            .limits
            .admit(&tenant, limit, bound_tokens, Instant::now())
            .map_err(|Throttled { what, retry_after }| EgressError::RateLimited {
                what,
                retry_after,
            })?;
        let reservation = shared
            .ledger
            .reserve(ReserveRequest {
                tenant: tenant.clone(),
                model: info.model.clone(),
                amount: bound.cost,
                request_id: self.request_id.to_owned(),
                ttl: llm.reservation_ttl,
            })
            .await;
        let reservation = match reservation {
            Ok(r) => r,
            Err(e) => {
                shared.limits.refund(&tenant, limit, bound_tokens);
                return Err(match e {
                    LedgerError::Unavailable(reason) => {
                        tracing::error!(%reason, "ledger unavailable: call refused");
                        EgressError::LedgerUnavailable
                    }
                    other => EgressError::Budget(other),
                });
            }
        };
        tracing::Span::current().record("reserved", field::display(bound.cost));
        shared
            .stats
            .reserved_micros
            .fetch_add(bound.cost.0, std::sync::atomic::Ordering::Relaxed);
        shared
            .stats
            .reservations
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if reservation.near_limit {
            tracing::warn!(remaining = %reservation.remaining, "tenant budget past its soft threshold");
        }
        let settlement = Settlement::new(
            shared.ledger.clone(),
            reservation.id,
            bound.cost,
            &tenant,
            &info.model,
            &upstream.name,
        );
        let metered = Metered {
            price,
            estimate: bound,
            tenant,
            limit,
        };
        self.forward(
            session,
            upstream,
            &path,
            query.as_deref(),
            api,
            &info,
            body,
            settlement,
            metered,
        )
        .await
    }

    /// `GET /v1/models`: the models this gateway routes, in OpenAI's list shape.
    async fn models(&self, session: &mut Session) -> Result<Outcome, EgressError> {
        let data: Vec<_> = self
            .live
            .llm()
            .providers
            .iter()
            .flat_map(|p| p.models.iter().map(move |m| (m, &p.name)))
            .map(|(model, provider)| {
                json!({"id": model, "object": "model", "created": 0, "owned_by": provider})
            })
            .collect();
        let body = Bytes::from(json!({"object": "list", "data": data}).to_string());
        let _ = write_json(session, 200, body, self.request_id).await;
        Ok(Outcome::done("ok"))
    }

    /// Anthropic's token count is free: forwarded and relayed without a reservation.
    async fn count_tokens(
        &self,
        session: &mut Session,
        upstream: &Upstream,
        path: &str,
        query: Option<&str>,
        body: Bytes,
    ) -> Result<Outcome, EgressError> {
        let llm = self.live.llm();
        let headers = session.req_header().headers.clone();
        let response = upstream
            .send(
                path,
                query,
                &headers,
                body,
                llm.connect_retries,
                llm.first_byte_timeout,
            )
            .await
            .map_err(|e| send_error(upstream, e))?;
        let status = response.status().as_u16();
        let deadline = self.started + llm.total_timeout;
        let (body, _) = read_response(response, llm.idle_timeout, deadline).await;
        let _ = write_json(session, status, body.freeze(), self.request_id).await;
        Ok(Outcome::done(if status < 400 {
            "ok"
        } else {
            "upstream_error"
        }))
    }

    #[allow(clippy::too_many_arguments)]
    async fn forward(
        &self,
        session: &mut Session,
        upstream: &Upstream,
        path: &str,
        query: Option<&str>,
        api: Api,
        info: &RequestInfo,
        body: Bytes,
        mut settlement: Settlement,
        metered: Metered<'_>,
    ) -> Result<Outcome, EgressError> {
        let llm = self.live.llm();
        let deadline = self.started + llm.total_timeout;
        let hide_usage_chunk =
            api == Api::ChatCompletions && info.stream && info.include_usage != Some(true);
        let body = with_usage_requested(info).map_or(body, Bytes::from);
        let headers = session.req_header().headers.clone();
        self.shared
            .metrics
            .llm_added_latency
            .observe(self.started.elapsed());
        let first_byte = llm.first_byte_timeout.min(remaining(deadline));
        let sent = upstream
            .send(path, query, &headers, body, llm.connect_retries, first_byte)
            .await;
        let response = match sent {
            Ok(r) => r,
            Err(SendError::Connect(reason)) => {
                settlement.release().await;
                self.shared.limits.refund(
                    &metered.tenant,
                    metered.limit,
                    metered.estimate.input_tokens + metered.estimate.output_tokens,
                );
                return Err(EgressError::Unreachable {
                    provider: upstream.name.clone(),
                    reason,
                });
            }
            Err(e) => {
                settlement.mark_sent();
                self.settle(settlement, &metered, None, 0, "timeout").await;
                return Err(send_error(upstream, e));
            }
        };
        settlement.mark_sent();
        let status = response.status().as_u16();
        let event_stream = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        let mut head = response_header(status);
        for (name, value) in response.headers() {
            if !RESPONSE_DROPPED.contains(&name.as_str()) {
                let _ = head.append_header(name.clone(), value.clone());
            }
        }
        let _ = head.insert_header("x-sentinel-request-id", self.request_id);

        if !event_stream {
            let (body, cut) = read_response(response, llm.idle_timeout, deadline).await;
            if let Some(cut) = cut {
                // Nothing was sent to the client yet: it gets a clean error.
                self.settle(settlement, &metered, None, 0, cut).await;
                return Err(match cut {
                    "timeout" => EgressError::Timeout {
                        provider: upstream.name.clone(),
                        what: "response body",
                    },
                    _ => EgressError::Unreachable {
                        provider: upstream.name.clone(),
                        reason: "the response body was cut short".into(),
                    },
                });
            }
            let usage = (status < 300)
                .then(|| usage_from_json(api, &body))
                .flatten();
            let label = match (status < 300, usage.is_some()) {
                (true, true) => "ok",
                (true, false) => "no_usage",
                (false, _) => "upstream_error",
            };
            let _ = head.insert_header("content-length", body.len().to_string());
            let written = async {
                session.write_response_header(Box::new(head), false).await?;
                session.write_response_body(Some(body.freeze()), true).await
            }
            .await;
            let label = if written.is_err() && label == "ok" {
                "client_gone"
            } else {
                label
            };
            match usage {
                Some(usage) => self.settle_exact(settlement, &metered, usage, label).await,
                None => self.settle(settlement, &metered, None, 0, label).await,
            }
            return Ok(Outcome::done(label));
        }

        let _ = head.insert_header("transfer-encoding", "chunked");
        if session
            .write_response_header(Box::new(head), false)
            .await
            .is_err()
        {
            self.settle(settlement, &metered, None, 0, "client_gone")
                .await;
            return Ok(Outcome::done("client_gone"));
        }
        let mut parser = SseParser::new(MAX_EVENT_BYTES);
        let mut meter = StreamMeter::new(api, hide_usage_chunk);
        let mut response = response;
        let label = loop {
            let wait = llm.idle_timeout.min(remaining(deadline));
            let chunk = match tokio::time::timeout(wait, response.chunk()).await {
                Ok(Ok(Some(chunk))) => chunk,
                Ok(Ok(None)) => {
                    // An unterminated last event is still metered and forwarded as it came.
                    let mut out = BytesMut::new();
                    for event in parser.finish() {
                        if meter.on_event(&event) == Forward::Yes {
                            out.extend_from_slice(&event.raw);
                        }
                    }
                    let end = session
                        .write_response_body((!out.is_empty()).then(|| out.freeze()), true)
                        .await;
                    break match (end.is_ok(), meter.error().is_some(), status < 300) {
                        (false, _, _) => "client_gone",
                        (true, true, _) => "stream_error",
                        (true, false, true) => "ok",
                        (true, false, false) => "upstream_error",
                    };
                }
                Ok(Err(_)) => break "upstream_cut",
                Err(_) => break "timeout",
            };
            let events = match parser.push(&chunk) {
                Ok(events) => events,
                Err(e) => {
                    tracing::warn!(error = %e, "provider stream unreadable");
                    break "upstream_cut";
                }
            };
            let mut out = BytesMut::new();
            for event in &events {
                if meter.on_event(event) == Forward::Yes {
                    out.extend_from_slice(&event.raw);
                }
            }
            if !out.is_empty()
                && session
                    .write_response_body(Some(out.freeze()), false)
                    .await
                    .is_err()
            {
                // The client left: stop the generation (dropping the response closes it) and
                // charge what was produced.
                break "client_gone";
            }
        };
        drop(response);
        let usage = meter.usage();
        if let (Some(usage), true, None) = (usage, meter.finished(), meter.error()) {
            self.settle_exact(settlement, &metered, usage, label).await;
        } else {
            // Text past the meter's cap counts one token per byte.
            let beyond_cap = meter
                .output_bytes()
                .saturating_sub(meter.output_text().len() as u64);
            let streamed = self
                .shared
                .tokenizers
                .count(metered.price.tokenizer, meter.output_text())
                + beyond_cap;
            self.settle(settlement, &metered, usage, streamed, label)
                .await;
        }
        Ok(Outcome {
            label,
            broken: matches!(label, "upstream_cut" | "timeout"),
        })
    }

    /// Charges the provider's reported usage.
    async fn settle_exact(
        &self,
        settlement: Settlement,
        m: &Metered<'_>,
        usage: Usage,
        label: &'static str,
    ) {
        let cost = m.price.cost(&usage);
        self.finish(settlement, m, usage, cost, label, false).await;
    }

    /// Charges without complete usage: at least the input bound plus the `streamed_tokens`
    /// already sent, or the partial usage the provider reported if that costs more.
    async fn settle(
        &self,
        settlement: Settlement,
        m: &Metered<'_>,
        partial: Option<Usage>,
        streamed_tokens: u64,
        label: &'static str,
    ) {
        let floor = Usage {
            input: m.estimate.input_tokens,
            output: streamed_tokens,
            ..Usage::default()
        };
        let mut usage = floor;
        let mut cost = m.price.cost(&floor);
        if let Some(mut partial) = partial {
            partial.output = partial.output.max(streamed_tokens);
            let partial_cost = m.price.cost(&partial);
            if partial_cost > cost {
                usage = partial;
                cost = partial_cost;
            }
        }
        self.finish(settlement, m, usage, cost, label, true).await;
    }

    async fn finish(
        &self,
        settlement: Settlement,
        m: &Metered<'_>,
        usage: Usage,
        cost: Micros,
        label: &'static str,
        estimated: bool,
    ) {
        let span = tracing::Span::current();
        span.record("charged", field::display(cost));
        self.shared.stats.charged(&usage, cost);
        self.shared.metrics.llm_tenants.add(&m.tenant, 1, cost.0);
        let used = usage.total_tokens();
        let bound = m.estimate.input_tokens + m.estimate.output_tokens;
        self.shared
            .limits
            .refund(&m.tenant, m.limit, bound.saturating_sub(used));
        tracing::info!(
            input = usage.input,
            cached = usage.cached_input,
            output = usage.output,
            estimated,
            outcome = label,
            elapsed_ms = self.started.elapsed().as_millis() as u64,
            "settled"
        );
        settlement.charge(usage, cost, label, estimated).await;
    }
}

fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

fn send_error(upstream: &Upstream, e: SendError) -> EgressError {
    match e {
        SendError::Connect(reason) | SendError::Failed(reason) => EgressError::Unreachable {
            provider: upstream.name.clone(),
            reason,
        },
        SendError::FirstByte => EgressError::Timeout {
            provider: upstream.name.clone(),
            what: "first byte",
        },
    }
}

/// The whole request body, refused past `limit` (by its declared length first, before reading).
async fn read_body(session: &mut Session, limit: usize) -> Result<Bytes, EgressError> {
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(EgressError::TooLarge { limit });
    }
    let mut body = BytesMut::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > limit {
                    return Err(EgressError::TooLarge { limit });
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body.freeze()),
            Err(e) => {
                return Err(EgressError::BadRequest(format!(
                    "could not read the request body: {e}"
                )));
            }
        }
    }
}

/// A whole upstream body within the idle and total limits; the second value says why it is
/// incomplete (`upstream_cut`, `timeout`), if it is.
async fn read_response(
    mut response: reqwest::Response,
    idle: Duration,
    deadline: Instant,
) -> (BytesMut, Option<&'static str>) {
    let mut body = BytesMut::new();
    loop {
        match tokio::time::timeout(idle.min(remaining(deadline)), response.chunk()).await {
            Ok(Ok(Some(chunk))) => {
                if body.len() + chunk.len() > MAX_JSON_RESPONSE {
                    return (body, Some("upstream_cut"));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(Ok(None)) => return (body, None),
            Ok(Err(_)) => return (body, Some("upstream_cut")),
            Err(_) => return (body, Some("timeout")),
        }
    }
}

async fn write_json(
    session: &mut Session,
    status: u16,
    body: Bytes,
    request_id: &str,
) -> pingora::Result<()> {
    let mut head = response_header(status);
    let _ = head.insert_header("content-type", "application/json");
    let _ = head.insert_header("content-length", body.len().to_string());
    let _ = head.insert_header("x-sentinel-request-id", request_id);
    session.write_response_header(Box::new(head), false).await?;
    session.write_response_body(Some(body), true).await
}
