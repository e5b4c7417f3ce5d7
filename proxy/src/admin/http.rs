//! The admin HTTP service: a pingora app on `[admin] listen`, so its listening socket is handed
//! over in a zero-downtime upgrade like the others.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;

use super::api::{self, Answer, error};
use super::{Admin, ready, render};

/// Largest request body read (budgets and block requests are tiny).
const MAX_BODY: usize = 64 << 10;

pub struct AdminHttp {
    admin: Arc<Admin>,
}

impl AdminHttp {
    pub fn new(admin: Arc<Admin>) -> AdminHttp {
        AdminHttp { admin }
    }
}

enum Reply {
    Json(Answer),
    Metrics(String),
}

#[async_trait]
impl ServeHttp for AdminHttp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let head = session.req_header();
        let method = head.method.clone();
        let path = head.uri.path().to_owned();
        let authorization = head
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let reply = self
            .route(session, &method, &path, authorization.as_deref())
            .await;
        let (status, content_type, body, allow) = match reply {
            Reply::Metrics(text) => (
                200,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                text.into_bytes(),
                None,
            ),
            Reply::Json((status, body)) => {
                let allow = body
                    .get("allow")
                    .and_then(|a| a.as_str())
                    .map(str::to_owned);
                (
                    status,
                    "application/json",
                    body.to_string().into_bytes(),
                    allow,
                )
            }
        };
        if status >= 400 {
            tracing::info!(%method, path, status, "admin request refused");
        }
        let mut builder = Response::builder()
            .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
            .header(http::header::CONTENT_TYPE, content_type)
            .header(http::header::CONTENT_LENGTH, body.len())
            .header(http::header::CACHE_CONTROL, "no-store");
        if status == 401 {
            builder = builder.header(http::header::WWW_AUTHENTICATE, "Bearer realm=\"sentinel\"");
        }
        if let Some(allow) = allow {
            builder = builder.header(http::header::ALLOW, allow);
        }
        builder
            .body(body)
            .unwrap_or_else(|_| Response::new(Vec::new()))
    }
}

impl AdminHttp {
    async fn route(
        &self,
        session: &mut ServerSession,
        method: &Method,
        path: &str,
        authorization: Option<&str>,
    ) -> Reply {
        let admin = &self.admin;
        let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
        // Unauthenticated: probes, and the metrics unless they are made private.
        match segments.as_slice() {
            ["healthz"] => {
                return Reply::Json(
                    only(method, &Method::GET).unwrap_or((200, json!({ "status": "ok" }))),
                );
            }
            ["readyz"] => {
                if let Some(answer) = only(method, &Method::GET) {
                    return Reply::Json(answer);
                }
                let (ok, reason, checks) = ready::readiness(admin).await;
                let body = json!({ "ready": ok, "reason": reason, "checks": checks });
                return Reply::Json((if ok { 200 } else { 503 }, body));
            }
            ["metrics"] => {
                if let Some(answer) = only(method, &Method::GET) {
                    return Reply::Json(answer);
                }
                if !admin.reloader.config().admin.metrics_public
                    && let Err(answer) = self.authorize(authorization, method, path)
                {
                    return Reply::Json(answer);
                }
                return Reply::Metrics(render::render(admin));
            }
            ["v1", ..] => {}
            _ => return Reply::Json(error(404, format!("no such endpoint: {path}"))),
        }
        match self.authorize(authorization, method, path) {
            Err(answer) => return Reply::Json(answer),
            // Who changed what stays in the log.
            Ok(name) if method != Method::GET => {
                tracing::info!(admin = name, %method, path, "admin request");
            }
            Ok(_) => {}
        }
        let body = match read_body(session).await {
            Ok(b) => b,
            Err(answer) => return Reply::Json(answer),
        };
        let answer = match (segments.as_slice(), method) {
            (["v1", "tenants", id], &Method::GET) => api::tenant(admin, id).await,
            (["v1", "tenants", id, "budget"], &Method::PUT) => {
                api::set_budget(admin, id, &body).await
            }
            (["v1", "tenants", id, "block"], &Method::POST) => api::block(admin, id, &body).await,
            (["v1", "tenants", id, "unblock"], &Method::POST) => api::unblock(admin, id).await,
            (["v1", "pools"], &Method::GET) => api::pools(admin),
            (["v1", "clients"], &Method::GET) => api::clients(admin),
            (["v1", "reload"], &Method::POST) => api::reload(admin).await,
            (["v1", "tenants", _], _) => not_allowed("GET"),
            (["v1", "tenants", _, "budget"], _) => not_allowed("PUT"),
            (["v1", "tenants", _, "block" | "unblock"], _) => not_allowed("POST"),
            (["v1", "pools" | "clients"], _) => not_allowed("GET"),
            (["v1", "reload"], _) => not_allowed("POST"),
            _ => error(404, format!("no such endpoint: {path}")),
        };
        Reply::Json(answer)
    }

    /// The token's name, or a 401.
    fn authorize(
        &self,
        authorization: Option<&str>,
        method: &Method,
        path: &str,
    ) -> Result<String, Answer> {
        let reloader = &self.admin.reloader;
        match reloader.auth().check(authorization, reloader.secrets()) {
            Ok(name) => {
                tracing::debug!(admin = name, %method, path, "admin request");
                Ok(name)
            }
            Err(why) => Err(error(401, why)),
        }
    }
}

/// None when `method` is the one allowed; a 405 otherwise.
fn only(method: &Method, allowed: &Method) -> Option<Answer> {
    (method != allowed).then(|| not_allowed(allowed.as_str()))
}

fn not_allowed(allow: &str) -> Answer {
    (
        405,
        json!({ "error": format!("method not allowed; use {allow}"), "allow": allow }),
    )
}

async fn read_body(session: &mut ServerSession) -> Result<Bytes, Answer> {
    let mut body = BytesMut::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_BODY {
                    return Err(error(
                        413,
                        format!("request body larger than {MAX_BODY} bytes"),
                    ));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body.freeze()),
            Err(e) => return Err(error(400, format!("cannot read the request body: {e}"))),
        }
    }
}
