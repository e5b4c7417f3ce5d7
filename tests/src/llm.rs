//! Egress test support: an `[llm]` section pointing at a mock provider, virtual keys made with
//! the config's own keyring, an HTTP client, and the charges Sentinel logs when it settles.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use sentinel_policy::keys::{EnvSalt, Keyring, issue_virtual_key};

use crate::config::SentinelConfig;
use crate::sentinel::free_port;

/// The real keys Sentinel holds for the mock provider (the mock's defaults).
pub const OPENAI_KEY: &str = "sk-real-openai";
pub const ANTHROPIC_KEY: &str = "sk-ant-real";

/// A test model on the OpenAI side: $1 in, $0.50 cached, $2 out per million tokens, counted with
/// o200k, output bound 1000 (500 when the request names none).
pub const GPT: &str = "mock-gpt";
/// An embeddings model: $0.10 per million input tokens.
pub const EMBED: &str = "mock-embed";
/// A test model on the Anthropic side: $3 in, $0.30 cache read, $3.75 cache write, $15 out,
/// counted by bytes, output bound 4096.
pub const CLAUDE: &str = "mock-claude";

/// The `[llm]` section of a test config.
#[derive(Debug, Clone)]
pub struct LlmSetup {
    pub port: u16,
    mock_url: String,
    tenants: Vec<String>,
    options: Vec<(String, String)>,
    defaults: Option<String>,
    ledger: String,
}

impl LlmSetup {
    /// Providers `openai` (models [`GPT`], [`EMBED`], and `gpt-4o-mini` from the shipped price
    /// book) and `anthropic` ([`CLAUDE`], `claude-haiku-4-5`) at the mock's base URL, on a free
    /// port, with short timeouts so failure tests are quick.
    pub fn new(mock_base_url: &str) -> LlmSetup {
        LlmSetup {
            port: free_port(),
            mock_url: mock_base_url.trim_end_matches('/').to_owned(),
            tenants: Vec::new(),
            options: vec![
                ("connect_timeout".into(), "\"1s\"".into()),
                ("first_byte_timeout".into(), "\"3s\"".into()),
                ("idle_timeout".into(), "\"3s\"".into()),
                ("total_timeout".into(), "\"20s\"".into()),
                ("connect_retries".into(), "1".into()),
            ],
            defaults: None,
            ledger: "backend = \"memory\"".to_owned(),
        }
    }

    /// `[llm.tenants.<name>]` with `budget_usd` and any extra raw TOML lines
    /// (`requests_per_minute = 2`, `model_budgets_usd = { ... }`).
    pub fn tenant(mut self, name: &str, budget_usd: &str, extra: &[&str]) -> Self {
        let mut t = format!("\n[llm.tenants.{name}]\nbudget_usd = \"{budget_usd}\"\n");
        for line in extra {
            let _ = writeln!(t, "{line}");
        }
        self.tenants.push(t);
        self
    }

    /// `[llm.tenant_defaults]` with `budget_usd`.
    pub fn tenant_defaults(mut self, budget_usd: &str) -> Self {
        self.defaults = Some(format!(
            "\n[llm.tenant_defaults]\nbudget_usd = \"{budget_usd}\"\n"
        ));
        self
    }

    /// Sets `key = <raw TOML>` in `[llm]`.
    pub fn option(mut self, key: &str, raw: &str) -> Self {
        self.options.retain(|(k, _)| k != key);
        self.options.push((key.to_owned(), raw.to_owned()));
        self
    }

    /// `http://127.0.0.1:<port>`: Anthropic SDKs' base URL; OpenAI's adds `/v1`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Replaces the `[ledger]` section (default: `backend = "memory"`), e.g. with a Postgres
    /// ledger's raw TOML lines.
    pub fn ledger(mut self, lines: &str) -> Self {
        self.ledger = lines.to_owned();
        self
    }

    pub fn render(&self) -> String {
        let mut out = format!("\n[ledger]\n{}\n", self.ledger);
        let _ = write!(out, "\n[llm]\nlisten = \"127.0.0.1:{}\"\n", self.port);
        for (k, v) in &self.options {
            let _ = writeln!(out, "{k} = {v}");
        }
        let _ = write!(
            out,
            r#"
[[llm.providers]]
name = "openai"
kind = "openai"
base_url = "{url}/v1"
models = ["{GPT}", "{EMBED}", "gpt-4o-mini"]
api_key_env = "SENTINEL_TEST_OPENAI_KEY"

[[llm.providers]]
name = "anthropic"
kind = "anthropic"
base_url = "{url}/v1"
models = ["{CLAUDE}", "claude-haiku-4-5"]
api_key_env = "SENTINEL_TEST_ANTHROPIC_KEY"

[llm.prices.{GPT}]
input = "1"
cached_input = "0.5"
output = "2"
context_window = 100000
max_output_tokens = 1000
default_output_tokens = 500
tokenizer = "o200k"

[llm.prices.{EMBED}]
input = "0.1"
output = "0"
context_window = 8192
max_output_tokens = 1
tokenizer = "cl100k"

[llm.prices.{CLAUDE}]
input = "3"
cached_input = "0.3"
cache_write_5m = "3.75"
cache_write_1h = "6"
output = "15"
context_window = 200000
max_output_tokens = 4096
tokenizer = "bytes"
"#,
            url = self.mock_url
        );
        for t in &self.tenants {
            out.push_str(t);
        }
        if let Some(d) = &self.defaults {
            out.push_str(d);
        }
        out
    }
}

impl SentinelConfig {
    /// Adds the egress section and the provider keys' environment variables.
    pub fn llm(self, setup: &LlmSetup) -> Self {
        self.env_var("SENTINEL_TEST_OPENAI_KEY", OPENAI_KEY)
            .env_var("SENTINEL_TEST_ANTHROPIC_KEY", ANTHROPIC_KEY)
            .extra_toml(&setup.render())
    }

    /// A virtual LLM key (`sk-stn-…`) for `tenant` with key id `key_id`, as `sentinel vkey
    /// issue` would print it.
    pub fn virtual_key(&self, tenant: &str, key_id: &str) -> anyhow::Result<String> {
        let ring = self
            .master_key_text()
            .ok_or_else(|| anyhow::anyhow!("this config has no SENTINEL_MASTER_KEY keyring"))?;
        let keyring = Keyring::parse(ring)?;
        let salt = EnvSalt::from_base64(
            &self
                .salt_base64()
                .ok_or_else(|| anyhow::anyhow!("this config has no [keys] salt"))?,
        )?;
        Ok(issue_virtual_key(&keyring, &salt, tenant, key_id)?)
    }
}

/// An HTTP client for the egress port (plain HTTP on loopback; TLS set up all the same, since
/// the client needs a TLS backend to be built).
pub fn http_client() -> reqwest::Client {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("the test HTTP client builds")
}

/// One settlement as Sentinel logged it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    pub tenant: String,
    pub micros: u64,
    pub outcome: String,
    pub estimated: bool,
}

/// Every `settled` line of Sentinel's log, in order.
pub fn charges(log: &str) -> Vec<Charge> {
    log.lines()
        .filter(|l| l.contains(" settled"))
        .filter_map(|l| {
            let field = |name: &str| {
                let at = l.find(&format!("{name}="))? + name.len() + 1;
                let rest = &l[at..];
                let end = rest.find([' ', '}', ':']).unwrap_or(rest.len());
                Some(rest[..end].trim_matches('"').to_owned())
            };
            let usd = field("charged")?;
            let usd = usd.trim_start_matches('$');
            let (whole, frac) = usd.split_once('.')?;
            let micros = whole.parse::<u64>().ok()? * 1_000_000 + frac.parse::<u64>().ok()?;
            Some(Charge {
                tenant: field("tenant")?,
                micros,
                outcome: field("outcome").unwrap_or_default(),
                estimated: field("estimated").as_deref() == Some("true"),
            })
        })
        .collect()
}

/// Waits until something accepts TCP on 127.0.0.1:`port`.
pub async fn wait_port(port: u16) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(20) {
            anyhow::bail!("nothing listens on port {port}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_are_read_from_text_logs() {
        let log = "2026-12-02T16:00:00Z  INFO llm{request_id=sen_1 path=/v1/chat/completions tenant=acme model=mock-gpt provider=openai reserved=$0.001010 charged=$0.000050}: sentinel::llm::exchange: settled input=10 cached=0 output=20 estimated=false outcome=\"ok\"\nother line\n";
        let c = charges(log);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].tenant, "acme");
        assert_eq!(c[0].micros, 50);
        assert!(!c[0].estimated);
    }
}
