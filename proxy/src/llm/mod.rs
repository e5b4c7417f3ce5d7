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

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::proxy::{ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use sentinel_policy::llm::{PriceBook, Tokenizers};

use crate::admin::Blocks;
use crate::config::{Config, LlmConfig};
use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::secrets::Secrets;

pub use error::EgressError;
use limits::RateLimits;
pub use stats::EgressStats;
use upstream::Upstream;

/// What a reload replaces: the config, prices and providers. A call takes the current one when
/// it starts and keeps it to its end.
pub struct EgressLive {
    config: Arc<Config>,
    prices: PriceBook,
    upstreams: Vec<Upstream>,
}

impl EgressLive {
    /// Builds the egress side of a config that has an `[llm]` section: opens every provider
    /// key, so a bad key fails the start (or the reload), not the first call.
    pub fn new(config: Arc<Config>, secrets: &Secrets) -> anyhow::Result<EgressLive> {
        let llm = config
            .llm
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("no [llm] section"))?;
        let prices = llm.price_book()?;
        let upstreams = llm
            .providers
            .iter()
            .map(|p| Upstream::new(p, llm, secrets))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(EgressLive {
            config,
            prices,
            upstreams,
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

/// What every egress request shares: keys, ledger, tokenizers, rate limits, counters, and the
/// reloadable [`EgressLive`].
pub struct EgressShared {
    live: ArcSwap<EgressLive>,
    secrets: Arc<Secrets>,
    ledger: Arc<dyn Ledger>,
    tokenizers: Arc<Tokenizers>,
    limits: RateLimits,
    blocks: Arc<Blocks>,
    metrics: Arc<Metrics>,
    pub stats: EgressStats,
}

impl EgressShared {
    /// Also loads the tokenizers.
    pub fn new(
        config: Arc<Config>,
        secrets: Arc<Secrets>,
        ledger: Arc<dyn Ledger>,
        blocks: Arc<Blocks>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<EgressShared> {
        let live = EgressLive::new(config, &secrets)?;
        let tokenizers = Arc::new(Tokenizers::load()?);
        Ok(EgressShared {
            live: ArcSwap::from_pointee(live),
            secrets,
            ledger,
            tokenizers,
            limits: RateLimits::default(),
            blocks,
            metrics,
            stats: EgressStats::default(),
        })
    }

    /// Swaps in a reloaded config for the calls that start from now on.
    pub fn reload(&self, live: EgressLive) {
        self.live.store(Arc::new(live));
    }

    pub fn ledger(&self) -> &Arc<dyn Ledger> {
        &self.ledger
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
