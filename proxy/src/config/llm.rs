//! `[llm]`: the egress proxy for the apps' OpenAI and Anthropic SDKs — providers, prices,
//! budgets, rate limits and timeouts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use sentinel_policy::budget::Period;
use sentinel_policy::llm::{Micros, ModelPrice, PriceBook, Tokenizer};

use super::{ConfigError, PasswordSource, SealedField, check_sealed, invalid};

/// What the egress does while the ledger's database is unreachable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LedgerOutage {
    /// New calls are refused (503): no spend that the ledger cannot hold (fail closed).
    #[default]
    Refuse,
    /// New calls are served from the budget this replica already holds (its live lease), and
    /// refused once that is used up.
    UseLease,
}

/// What a provider speaks, which picks its paths, auth header and error shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderKind {
    /// api.openai.com: `Authorization: Bearer`.
    Openai,
    /// api.anthropic.com: `x-api-key`, `anthropic-version`.
    Anthropic,
    /// Groq, Azure OpenAI, vLLM and others that speak OpenAI's API.
    OpenaiCompatible,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmConfig {
    /// The egress listener; apps set `OPENAI_BASE_URL=http://<listen>/v1` and
    /// `ANTHROPIC_BASE_URL=http://<listen>`.
    #[serde(default = "defaults::listen")]
    pub listen: SocketAddr,
    /// Largest request body accepted (a prompt with images can be large).
    #[serde(default = "defaults::max_request_bytes")]
    pub max_request_bytes: usize,
    /// Upstream TCP (and TLS) connect timeout, per attempt.
    #[serde(default = "defaults::connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// From the request sent to the response head.
    #[serde(default = "defaults::first_byte_timeout", with = "humantime_serde")]
    pub first_byte_timeout: Duration,
    /// Longest silence between two chunks of a response.
    #[serde(default = "defaults::idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Longest call from start to last byte.
    #[serde(default = "defaults::total_timeout", with = "humantime_serde")]
    pub total_timeout: Duration,
    /// Attempts after a failed connect (nothing reached the provider), with backoff and jitter.
    #[serde(default = "defaults::connect_retries")]
    pub connect_retries: u32,
    /// How long a hold lives without a settlement before the sweeper charges it; longer than
    /// `total_timeout`.
    #[serde(default = "defaults::reservation_ttl", with = "humantime_serde")]
    pub reservation_ttl: Duration,
    /// While the ledger's database is unreachable: `refuse` (503) or `use-lease`.
    #[serde(default)]
    pub ledger_outage: LedgerOutage,
    /// Virtual key ids refused even though their MAC verifies.
    #[serde(default)]
    pub revoked_keys: Vec<String>,
    /// The providers calls are forwarded to; a request's `model` picks the provider that lists
    /// it.
    #[serde(default)]
    pub providers: Vec<ProviderConfig>,
    /// Prices of models beyond (or instead of) the shipped price book.
    #[serde(default)]
    pub prices: BTreeMap<String, PriceConfig>,
    /// Budgets and limits per tenant.
    #[serde(default)]
    pub tenants: BTreeMap<String, TenantLlmConfig>,
    /// For tenants not listed under `tenants`; without it they are refused (402).
    #[serde(default)]
    pub tenant_defaults: Option<TenantLlmConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// A name for logs, metrics and the sealing context (`llm.providers.<name>.api_key`).
    pub name: String,
    /// The API the provider speaks.
    pub kind: ProviderKind,
    /// What replaces Sentinel's `/v1`: `https://api.openai.com/v1`,
    /// `https://api.anthropic.com/v1`, `http://vllm:8000/v1`.
    pub base_url: String,
    /// The models routed here; each priced (shipped book or `[llm.prices]`) and listed once.
    pub models: Vec<String>,
    /// The provider's API key sealed with the master keyring (`sentinel seal --context
    /// llm.providers.<name>.api_key`). Exactly one of `api_key_sealed`, `api_key_env` and
    /// `api_key_file` is required.
    #[serde(default)]
    pub api_key_sealed: Option<String>,
    /// An environment variable holding the API key, or a sealed value; read at start and on
    /// reload.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// A file holding the API key (its trailing newline dropped), or a sealed value; read at
    /// start and on reload.
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
    /// The header carrying the key for `openai-compatible` providers that do not use
    /// `Authorization: Bearer` (Azure: `api-key`).
    #[serde(default)]
    pub api_key_header: Option<String>,
    /// Extra CA certificates (PEM) to trust for this upstream, beside the public roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// A model's prices in USD per million tokens, and its limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceConfig {
    /// Uncached input, in USD per million tokens: a decimal string such as `"2.50"`, at most 6
    /// decimal places.
    pub input: String,
    /// Input read from the provider's prompt cache. Default: `input`.
    #[serde(default)]
    pub cached_input: Option<String>,
    /// Input written to a 5-minute prompt cache (OpenAI's cache writes are priced here too).
    /// Default: `input`.
    #[serde(default)]
    pub cache_write_5m: Option<String>,
    /// Input written to a 1-hour prompt cache. Default: `cache_write_5m`.
    #[serde(default)]
    pub cache_write_1h: Option<String>,
    /// Output, reasoning included, in USD per million tokens.
    pub output: String,
    /// Most input tokens the model accepts; a request's input bound is clamped to it.
    pub context_window: u64,
    /// Most output tokens the model produces; a request's output bound (its own limit, or
    /// `default_output_tokens`) is clamped to it.
    pub max_output_tokens: u64,
    /// The output bound when a request names none. Default: `max_output_tokens`.
    #[serde(default)]
    pub default_output_tokens: Option<u64>,
    /// How input is counted: `o200k`, `cl100k` (OpenAI's tokenizers) or `bytes` (one token per
    /// byte, a firm bound for any tokenizer). Default: `bytes`.
    #[serde(default = "defaults::tokenizer")]
    pub tokenizer: Tokenizer,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantLlmConfig {
    /// The budget in USD per period, e.g. `"25.00"`.
    pub budget_usd: String,
    /// When spend starts again from zero. Days and months begin at midnight in `[ledger]
    /// time_zone` (in UTC with the memory backend).
    #[serde(default)]
    pub period: Period,
    /// Fraction of the budget past which spend is reported as near the limit.
    #[serde(default = "defaults::soft_threshold")]
    pub soft_threshold: f64,
    /// Narrower budgets for single models, in USD per period.
    #[serde(default)]
    pub model_budgets_usd: BTreeMap<String, String>,
    /// Requests per minute; 0: unlimited.
    #[serde(default)]
    pub requests_per_minute: u32,
    /// Tokens (input bound + output bound) per minute; 0: unlimited.
    #[serde(default)]
    pub tokens_per_minute: u64,
}

impl ProviderConfig {
    pub fn api_key_context(&self) -> String {
        format!("llm.providers.{}.api_key", self.name)
    }

    pub fn api_key(&self) -> PasswordSource {
        PasswordSource::from_fields(
            self.api_key_sealed.as_deref(),
            self.api_key_env.as_deref(),
            self.api_key_file.as_deref(),
            self.api_key_context(),
        )
    }
}

impl PriceConfig {
    fn to_price(&self, field: &str) -> Result<ModelPrice, ConfigError> {
        let usd = |name: &str, v: &str| {
            Micros::parse_usd(v).map_err(|e| invalid(format!("{field}.{name}"), e.to_string()))
        };
        let input = usd("input", &self.input)?;
        let cache_write_5m = match &self.cache_write_5m {
            Some(v) => usd("cache_write_5m", v)?,
            None => input,
        };
        let price = ModelPrice {
            input,
            cached_input: match &self.cached_input {
                Some(v) => usd("cached_input", v)?,
                None => input,
            },
            cache_write_5m,
            cache_write_1h: match &self.cache_write_1h {
                Some(v) => usd("cache_write_1h", v)?,
                None => cache_write_5m,
            },
            output: usd("output", &self.output)?,
            context_window: self.context_window,
            max_output_tokens: self.max_output_tokens,
            default_output_tokens: self.default_output_tokens.unwrap_or(self.max_output_tokens),
            tokenizer: self.tokenizer,
        };
        if price.context_window == 0 || price.max_output_tokens == 0 {
            return Err(invalid(
                field,
                "context_window and max_output_tokens must be positive",
            ));
        }
        if price.default_output_tokens > price.max_output_tokens {
            return Err(invalid(
                format!("{field}.default_output_tokens"),
                "must not exceed max_output_tokens",
            ));
        }
        Ok(price)
    }
}

impl TenantLlmConfig {
    /// The budget limit and per-model limits in micro-dollars.
    pub fn limits(&self, field: &str) -> Result<(Micros, Vec<(String, Micros)>), ConfigError> {
        let limit = Micros::parse_usd(&self.budget_usd)
            .map_err(|e| invalid(format!("{field}.budget_usd"), e.to_string()))?;
        let models = self
            .model_budgets_usd
            .iter()
            .map(|(model, usd)| {
                Micros::parse_usd(usd)
                    .map(|m| (model.clone(), m))
                    .map_err(|e| {
                        invalid(format!("{field}.model_budgets_usd.{model}"), e.to_string())
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok((limit, models))
    }

    /// Checks the budget fields (from the config file or the admin API), naming `field`.
    pub fn validate(&self, field: &str) -> Result<(), ConfigError> {
        self.limits(field)?;
        if !(0.0..=1.0).contains(&self.soft_threshold) {
            return Err(invalid(
                format!("{field}.soft_threshold"),
                "must be between 0 and 1",
            ));
        }
        Ok(())
    }
}

impl LlmConfig {
    /// The shipped price book with `[llm.prices]` on top. `validate` has checked every entry.
    pub fn price_book(&self) -> Result<PriceBook, ConfigError> {
        let mut book = PriceBook::defaults();
        for (model, price) in &self.prices {
            book.insert(
                model.clone(),
                price.to_price(&format!("llm.prices.{model}"))?,
            );
        }
        Ok(book)
    }

    /// The provider serving `model`, if any.
    pub fn provider_for(&self, model: &str) -> Option<&ProviderConfig> {
        self.providers
            .iter()
            .find(|p| p.models.iter().any(|m| m == model))
    }

    pub fn tenant(&self, tenant: &str) -> Option<&TenantLlmConfig> {
        self.tenants.get(tenant).or(self.tenant_defaults.as_ref())
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.max_request_bytes < 1024 || self.max_request_bytes > (256 << 20) {
            return Err(invalid(
                "llm.max_request_bytes",
                "must be between 1024 and 256 MiB",
            ));
        }
        for (name, d) in [
            ("connect_timeout", self.connect_timeout),
            ("first_byte_timeout", self.first_byte_timeout),
            ("idle_timeout", self.idle_timeout),
            ("total_timeout", self.total_timeout),
        ] {
            if d.is_zero() {
                return Err(invalid(format!("llm.{name}"), "must be positive"));
            }
        }
        if self.reservation_ttl <= self.total_timeout {
            return Err(invalid(
                "llm.reservation_ttl",
                "must be longer than llm.total_timeout, or holds of calls still running would \
                 be swept",
            ));
        }
        if self.connect_retries > 10 {
            return Err(invalid("llm.connect_retries", "must be at most 10"));
        }
        let book = self.price_book()?;
        let mut routed = std::collections::HashMap::new();
        for (i, p) in self.providers.iter().enumerate() {
            let field = |name: &str| format!("llm.providers[{i}].{name}");
            if p.name.is_empty()
                || !p
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(invalid(
                    field("name"),
                    "must be letters, digits, '-' or '_'",
                ));
            }
            if self.providers[..i].iter().any(|q| q.name == p.name) {
                return Err(invalid(
                    field("name"),
                    format!("{:?} is listed twice", p.name),
                ));
            }
            let url = p.base_url.trim_end_matches('/');
            if !(url.starts_with("https://") || url.starts_with("http://"))
                || url.contains('?')
                || url.contains('#')
            {
                return Err(invalid(
                    field("base_url"),
                    "must be an http:// or https:// URL without query or fragment",
                ));
            }
            let sources = [
                p.api_key_sealed.is_some(),
                p.api_key_env.is_some(),
                p.api_key_file.is_some(),
            ];
            if sources.iter().filter(|s| **s).count() != 1 {
                return Err(invalid(
                    field("api_key_sealed"),
                    "exactly one of api_key_sealed, api_key_env, api_key_file is required",
                ));
            }
            if let Some(value) = &p.api_key_sealed {
                check_sealed(value).map_err(|reason| invalid(field("api_key_sealed"), reason))?;
            }
            if p.api_key_header.is_some() && p.kind != ProviderKind::OpenaiCompatible {
                return Err(invalid(
                    field("api_key_header"),
                    "only for kind = \"openai-compatible\"",
                ));
            }
            if let Some(h) = &p.api_key_header
                && http::HeaderName::from_bytes(h.as_bytes()).is_err()
            {
                return Err(invalid(field("api_key_header"), "not a valid header name"));
            }
            if p.models.is_empty() {
                return Err(invalid(field("models"), "list at least one model"));
            }
            for model in &p.models {
                if book.get(model).is_none() {
                    return Err(invalid(
                        field("models"),
                        format!(
                            "model {model:?} has no price: add [llm.prices.\"{model}\"] (Sentinel \
                             never guesses a price)"
                        ),
                    ));
                }
                if let Some(other) = routed.insert(model.as_str(), p.name.as_str()) {
                    return Err(invalid(
                        field("models"),
                        format!("model {model:?} is also routed to provider {other:?}"),
                    ));
                }
            }
        }
        for (tenant, t) in &self.tenants {
            t.validate(&format!("llm.tenants.{tenant}"))?;
        }
        if let Some(t) = &self.tenant_defaults {
            t.validate("llm.tenant_defaults")?;
        }
        Ok(())
    }

    pub(super) fn sealed_fields(&self, out: &mut Vec<SealedField>) {
        for (i, p) in self.providers.iter().enumerate() {
            if let Some(value) = &p.api_key_sealed {
                out.push(SealedField {
                    field: format!("llm.providers[{i}].api_key_sealed"),
                    context: p.api_key_context(),
                    value: value.clone(),
                });
            }
        }
    }
}

mod defaults {
    use super::*;

    pub fn listen() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 8480))
    }
    pub fn max_request_bytes() -> usize {
        32 << 20
    }
    pub fn connect_timeout() -> Duration {
        Duration::from_secs(5)
    }
    pub fn first_byte_timeout() -> Duration {
        Duration::from_secs(120)
    }
    pub fn idle_timeout() -> Duration {
        Duration::from_secs(120)
    }
    pub fn total_timeout() -> Duration {
        Duration::from_secs(600)
    }
    pub fn connect_retries() -> u32 {
        2
    }
    pub fn reservation_ttl() -> Duration {
        Duration::from_secs(900)
    }
    pub fn tokenizer() -> Tokenizer {
        Tokenizer::Bytes
    }
    pub fn soft_threshold() -> f64 {
        0.8
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const BASE: &str = r#"
[keys]
salt = "46TaY3MHFe+hUwfJlWEhphIPQoXgmg2UV42DWWLQDEk="

[postgres.upstream]
host = "127.0.0.1"

[[postgres.users]]
name = "app"
auth = "trust"

[llm]
[[llm.providers]]
name = "openai"
kind = "openai"
base_url = "https://api.openai.com/v1"
models = ["gpt-4o-mini"]
api_key_env = "OPENAI_API_KEY"

[llm.tenants.acme]
budget_usd = "10"

[ledger]
backend = "memory"
"#;

    fn error(text: &str) -> String {
        Config::parse(text).expect_err("invalid").to_string()
    }

    #[test]
    fn a_valid_section_has_defaults_and_prices() {
        let c = Config::parse(BASE).expect("valid");
        let llm = c.llm.as_ref().expect("[llm]");
        assert_eq!(llm.listen.port(), 8480);
        assert!(llm.price_book().expect("book").get("gpt-4o-mini").is_some());
        assert_eq!(
            llm.provider_for("gpt-4o-mini").map(|p| p.name.as_str()),
            Some("openai")
        );
        assert!(llm.provider_for("gpt-4o").is_none());
        let (limit, models) = llm
            .tenant("acme")
            .expect("acme")
            .limits("t")
            .expect("limits");
        assert_eq!((limit.0, models.len()), (10_000_000, 0));
        assert!(
            llm.tenant("other").is_none(),
            "no defaults: unlisted tenants have no budget"
        );
    }

    #[test]
    fn every_mistake_is_named() {
        let cases = [
            (
                BASE.replace("[\"gpt-4o-mini\"]", "[\"gpt-9\"]"),
                "has no price",
            ),
            (
                BASE.replace(
                    "api_key_env = \"OPENAI_API_KEY\"",
                    "api_key_env = \"A\"\napi_key_file = \"/k\"",
                ),
                "exactly one of",
            ),
            (
                BASE.replace(
                    "api_key_env = \"OPENAI_API_KEY\"",
                    "api_key_sealed = \"sk-plain\"",
                ),
                "sealed",
            ),
            (
                BASE.replace("https://api.openai.com/v1", "ftp://x"),
                "base_url",
            ),
            (
                BASE.replace("budget_usd = \"10\"", "budget_usd = \"ten\""),
                "llm.tenants.acme.budget_usd",
            ),
            (
                BASE.replace(
                    "budget_usd = \"10\"",
                    "budget_usd = \"10\"\nsoft_threshold = 1.5",
                ),
                "soft_threshold",
            ),
            (
                BASE.replace("[llm]", "[llm]\nreservation_ttl = \"1m\""),
                "reservation_ttl",
            ),
            (
                BASE.replace("[llm]", "[llm]\nfirst_byte_timeout = \"0s\""),
                "first_byte_timeout",
            ),
            (
                format!(
                    "{BASE}\n[[llm.providers]]\nname = \"other\"\nkind = \"openai-compatible\"\nbase_url = \
                     \"http://vllm/v1\"\nmodels = [\"gpt-4o-mini\"]\napi_key_env = \"K\"\n"
                ),
                "also routed",
            ),
            (
                format!(
                    "{BASE}\n[llm.prices.cheap]\ninput = \"1\"\noutput = \"-2\"\ncontext_window = 10\nmax_output_tokens = 5\n"
                ),
                "llm.prices.cheap.output",
            ),
            (
                BASE.replace(
                    "kind = \"openai\"",
                    "kind = \"openai\"\napi_key_header = \"api-key\"",
                ),
                "api_key_header",
            ),
        ];
        for (text, want) in cases {
            let err = error(&text);
            assert!(err.contains(want), "{want:?} not in {err:?}");
        }
    }

    #[test]
    fn sealed_provider_keys_are_listed_for_the_keyring_check() {
        let text = BASE.replace(
            "api_key_env = \"OPENAI_API_KEY\"",
            "api_key_sealed = \"sealed:v1:k1:AAAA\"",
        );
        let c = Config::parse(&text).expect("valid");
        let fields = c.sealed_fields();
        assert_eq!(fields.len(), 1);
        assert_eq!(fields[0].context, "llm.providers.openai.api_key");
    }
}
