//! One configured provider: its base URL, its real API key and an HTTP client to it.
//!
//! Sentinel owns the upstream exchange rather than letting pingora forward the request, because
//! the cost bound needs the whole body before anything reaches the provider, and pingora only
//! shows a body after it has connected and sent the request head (pingora issues #780, #816). So
//! a refused call never touches the provider, and a retry after a failed connect can resend the
//! body, whatever its size.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use rand::Rng as _;
use zeroize::Zeroizing;

use crate::config::{LlmConfig, ProviderConfig, ProviderKind};
use crate::secrets::Secrets;

/// The Anthropic API version sent when the client names none.
const DEFAULT_ANTHROPIC_VERSION: &str = "2023-06-01";
/// First retry delay after a failed connect; doubles per attempt, with jitter.
const BACKOFF_BASE: Duration = Duration::from_millis(100);

/// Headers of the client's request never sent upstream: its credentials and organisation (the
/// provider sees Sentinel's key only), hop-by-hop headers, and those Sentinel sets itself.
const DROPPED: &[&str] = &[
    "authorization",
    "x-api-key",
    "api-key",
    "openai-organization",
    "openai-project",
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
    "accept-encoding",
    "cookie",
];

pub struct Upstream {
    pub name: String,
    pub kind: ProviderKind,
    base_url: String,
    key: Zeroizing<String>,
    key_header: HeaderName,
    client: reqwest::Client,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("base_url", &self.base_url)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// Why a send failed, which decides what the tenant is charged.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be made: the request never reached the provider.
    Connect(String),
    /// The request was sent and no response head came in time.
    FirstByte,
    /// The request may have reached the provider.
    Failed(String),
}

impl Upstream {
    pub fn new(
        config: &ProviderConfig,
        llm: &LlmConfig,
        secrets: &Secrets,
    ) -> anyhow::Result<Upstream> {
        let key = secrets
            .read_password(&config.api_key())
            .map_err(|e| anyhow::anyhow!("llm provider {}: API key: {e}", config.name))?
            .ok_or_else(|| anyhow::anyhow!("llm provider {}: no API key", config.name))?;
        let key_header = match (config.kind, &config.api_key_header) {
            (ProviderKind::Anthropic, _) => HeaderName::from_static("x-api-key"),
            (_, Some(h)) => HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes())?,
            (_, None) => http::header::AUTHORIZATION,
        };
        let tls = tls_config(config.ca_file.as_deref())
            .map_err(|e| anyhow::anyhow!("llm provider {}: TLS: {e}", config.name))?;
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(llm.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_keepalive(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()?;
        Ok(Upstream {
            name: config.name.clone(),
            kind: config.kind,
            base_url: config.base_url.trim_end_matches('/').to_owned(),
            key,
            key_header,
            client,
        })
    }

    /// The upstream URL for a request on Sentinel's `path` (which starts with `/v1`).
    fn url(&self, path: &str, query: Option<&str>) -> String {
        let rest = path.strip_prefix("/v1").unwrap_or(path);
        match query {
            Some(q) if !q.is_empty() => format!("{}{rest}?{q}", self.base_url),
            _ => format!("{}{rest}", self.base_url),
        }
    }

    /// The headers sent upstream: the client's, less [`DROPPED`], plus the real key.
    fn headers(&self, client: &HeaderMap) -> Result<HeaderMap, SendError> {
        let mut out = HeaderMap::with_capacity(client.len() + 3);
        for (name, value) in client {
            if !DROPPED.contains(&name.as_str()) {
                out.append(name.clone(), value.clone());
            }
        }
        let key = if self.key_header == http::header::AUTHORIZATION {
            Zeroizing::new(format!("Bearer {}", self.key.as_str()))
        } else {
            Zeroizing::new(self.key.as_str().to_owned())
        };
        let mut key = HeaderValue::from_str(&key).map_err(|_| {
            SendError::Connect("the configured API key is not a valid header value".into())
        })?;
        key.set_sensitive(true);
        out.insert(self.key_header.clone(), key);
        // Usage must be readable: no compressed bodies.
        out.insert(
            http::header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        if self.kind == ProviderKind::Anthropic && !out.contains_key("anthropic-version") {
            out.insert(
                "anthropic-version",
                HeaderValue::from_static(DEFAULT_ANTHROPIC_VERSION),
            );
        }
        Ok(out)
    }

    /// POSTs the request and waits for the response head, retrying only failed connects (with
    /// exponential backoff and jitter), within `first_byte` per attempt.
    pub async fn send(
        &self,
        path: &str,
        query: Option<&str>,
        client_headers: &HeaderMap,
        body: Bytes,
        retries: u32,
        first_byte: Duration,
    ) -> Result<reqwest::Response, SendError> {
        let url = self.url(path, query);
        let headers = self.headers(client_headers)?;
        let mut attempt = 0;
        loop {
            let request = self
                .client
                .post(&url)
                .headers(headers.clone())
                .body(body.clone());
            match tokio::time::timeout(first_byte, request.send()).await {
                Ok(Ok(response)) => return Ok(response),
                Ok(Err(e)) if e.is_connect() => {
                    if attempt >= retries {
                        return Err(SendError::Connect(error_chain(&e)));
                    }
                    let backoff = BACKOFF_BASE * 2u32.pow(attempt);
                    let jitter = rand::thread_rng().gen_range(0.5..=1.0);
                    tracing::debug!(attempt, error = %error_chain(&e), "upstream connect failed; retrying");
                    tokio::time::sleep(backoff.mul_f64(jitter)).await;
                    attempt += 1;
                }
                Ok(Err(e)) => return Err(SendError::Failed(error_chain(&e))),
                Err(_) => return Err(SendError::FirstByte),
            }
        }
    }
}

/// A reqwest error with its causes, which say what actually went wrong (refused, DNS, TLS).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// rustls with the public web roots, plus the provider's own CA when configured.
fn tls_config(ca_file: Option<&Path>) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            roots.add(cert?)?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn upstream(kind: ProviderKind, header: HeaderName) -> Upstream {
        Upstream {
            name: "p".into(),
            kind,
            base_url: "https://api.example.com/v1".into(),
            key: Zeroizing::new("sk-real".into()),
            key_header: header,
            client: reqwest::Client::builder()
                .tls_backend_preconfigured(tls_config(None).unwrap())
                .build()
                .unwrap(),
        }
    }

    #[test]
    fn urls_replace_the_v1_prefix() {
        let u = upstream(ProviderKind::Openai, http::header::AUTHORIZATION);
        assert_eq!(
            u.url("/v1/chat/completions", None),
            "https://api.example.com/v1/chat/completions"
        );
        assert_eq!(
            u.url("/v1/chat/completions", Some("api-version=2024-10-21")),
            "https://api.example.com/v1/chat/completions?api-version=2024-10-21"
        );
    }

    #[test]
    fn client_credentials_never_go_upstream() {
        let mut client = HeaderMap::new();
        for (k, v) in [
            ("authorization", "Bearer sk-stn-tenant"),
            ("x-api-key", "sk-stn-tenant"),
            ("openai-organization", "org-1"),
            ("openai-project", "proj-1"),
            ("accept-encoding", "gzip, br"),
            ("anthropic-beta", "tools-2024"),
            ("content-type", "application/json"),
            ("x-stainless-retry-count", "0"),
        ] {
            client.insert(k, v.parse().unwrap());
        }
        let openai = upstream(ProviderKind::Openai, http::header::AUTHORIZATION)
            .headers(&client)
            .unwrap();
        assert_eq!(openai["authorization"], "Bearer sk-real");
        for gone in ["x-api-key", "openai-organization", "openai-project"] {
            assert!(!openai.contains_key(gone), "{gone}");
        }
        assert_eq!(openai["accept-encoding"], "identity");
        assert_eq!(openai["anthropic-beta"], "tools-2024");
        assert_eq!(openai["x-stainless-retry-count"], "0");
        assert!(!openai.contains_key("anthropic-version"));

        let anthropic = upstream(
            ProviderKind::Anthropic,
            HeaderName::from_static("x-api-key"),
        )
        .headers(&client)
        .unwrap();
        assert_eq!(anthropic["x-api-key"], "sk-real");
        assert!(!anthropic.contains_key("authorization"));
        assert_eq!(anthropic["anthropic-version"], DEFAULT_ANTHROPIC_VERSION);

        let azure = upstream(
            ProviderKind::OpenaiCompatible,
            HeaderName::from_static("api-key"),
        )
        .headers(&client)
        .unwrap();
        assert_eq!(azure["api-key"], "sk-real");
        assert!(!azure.contains_key("authorization"));
    }
}
