//! The LLM egress proxy: the apps' OpenAI and Anthropic SDKs point their base URL here.
//!
//! Every call is authenticated by a tenant's virtual key, bounded in cost before it leaves
//! (the whole body is read and estimated first), held against the tenant's budget in the ledger
//! (402 in the provider's own error shape when it does not fit), forwarded with the provider's
//! real key, metered from the JSON response or the SSE stream as it passes, and settled exactly
//! once on every path.
//!
//! - [`route`]: which SDK path a request is for;
//! - [`auth`]: the virtual key in `Authorization` or `x-api-key`;
//! - [`exchange`]: one request from head to settlement;
//! - [`upstream`]: a provider, its real key and the HTTP client to it;
//! - [`settle`]: the exactly-once settlement guard;
//! - [`limits`]: per-tenant request and token rates;
//! - [`error`]: statuses and provider-shaped error bodies;
//! - [`stats`]: counters for the admin port.

mod auth;
mod error;
mod exchange;
mod limits;
mod route;
mod settle;
mod stats;
mod upstream;

use std::sync::Arc;

use async_trait::async_trait;
use pingora::proxy::{ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use sentinel_policy::llm::{PriceBook, Tokenizers};

use crate::config::{Config, LlmConfig};
use crate::ledger::Ledger;
use crate::secrets::Secrets;

pub use error::EgressError;
use limits::RateLimits;
pub use stats::EgressStats;
use upstream::Upstream;

/// What every egress request shares: config, keys, ledger, prices, tokenizers, providers.
pub struct EgressShared {
    config: Arc<Config>,
    secrets: Arc<Secrets>,
    ledger: Arc<dyn Ledger>,
    prices: PriceBook,
    tokenizers: Arc<Tokenizers>,
    upstreams: Vec<Upstream>,
    limits: RateLimits,
    pub stats: EgressStats,
}

impl EgressShared {
    /// Builds the egress side of a config that has an `[llm]` section: opens every provider
    /// key and loads the tokenizers, so a bad key fails the start, not the first call.
    pub fn new(
        config: Arc<Config>,
        secrets: Arc<Secrets>,
        ledger: Arc<dyn Ledger>,
    ) -> anyhow::Result<EgressShared> {
        let llm = config
            .llm
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("no [llm] section"))?;
        let prices = llm.price_book()?;
        let upstreams = llm
            .providers
            .iter()
            .map(|p| Upstream::new(p, llm, &secrets))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let tokenizers = Arc::new(Tokenizers::load()?);
        Ok(EgressShared {
            config,
            secrets,
            ledger,
            prices,
            tokenizers,
            upstreams,
            limits: RateLimits::default(),
            stats: EgressStats::default(),
        })
    }

    fn llm(&self) -> &LlmConfig {
        // `new` refused a config without [llm].
        self.config
            .llm
            .as_ref()
            .expect("egress runs with an [llm] section")
    }

    fn upstream_for(&self, model: &str) -> Option<&Upstream> {
        let name = &self.llm().provider_for(model)?.name;
        self.upstreams.iter().find(|u| &u.name == name)
    }
}

/// The pingora service: every request is answered in `request_filter` (see [`upstream`] for
/// why Sentinel sends upstream itself), so pingora's own upstream phases never run.
pub struct Egress {
    shared: Arc<EgressShared>,
}

impl Egress {
    pub fn new(shared: Arc<EgressShared>) -> Egress {
        Egress { shared }
    }
}

#[async_trait]
impl ProxyHttp for Egress {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn request_filter(&self, session: &mut Session, _ctx: &mut ()) -> pingora::Result<bool> {
        exchange::serve(&self.shared, session).await?;
        Ok(true)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut (),
    ) -> pingora::Result<Box<HttpPeer>> {
        // request_filter answers every request.
        Err(pingora::Error::explain(
            pingora::ErrorType::InternalError,
            "egress requests are answered in request_filter",
        ))
    }
}
