//! The admin port: Prometheus metrics, health and readiness, the JSON API (tenants and their
//! budgets, pools, clients, reload, the kill switch), and the reload machinery that SIGHUP, the
//! API and the console's RELOAD share.
//!
//! - [`http`]: the pingora HTTP service and its routes;
//! - [`auth`]: bearer tokens;
//! - [`api`]: the JSON endpoints;
//! - [`render`]: the `/metrics` text;
//! - [`reload`]: validate a config whole, then swap it in;
//! - [`views`]: pools and clients as rows, shared by the JSON API and the console.

mod api;
mod auth;
mod http;
mod ready;
pub mod reload;
mod render;
pub mod views;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::SystemTime;

pub use crate::blocks::{Block, Blocks};
pub use http::AdminHttp;
pub use reload::{ReloadError, ReloadReport, Reloader, SighupReload};

use crate::ledger::postgres::PgLedger;
use crate::llm::EgressShared;
use crate::metrics::Metrics;
use crate::pg::PgShared;

/// Everything the admin port reads and steers.
pub struct Admin {
    pub pg: Arc<PgShared>,
    pub egress: Option<Arc<EgressShared>>,
    pub pg_ledger: Option<Arc<PgLedger>>,
    pub metrics: Arc<Metrics>,
    pub blocks: Arc<Blocks>,
    pub reloader: Arc<Reloader>,
    pub started: SystemTime,
    /// Set when graceful shutdown begins: `/readyz` answers 503 from then on.
    pub draining: AtomicBool,
    pub ready_cache: ready::ReadyCache,
}
