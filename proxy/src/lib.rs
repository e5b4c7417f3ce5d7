//! Sentinel: a sidecar that makes cross-tenant data access through Postgres and unbudgeted LLM
//! spend impossible. This library holds everything; `main.rs` only calls [`cli::main`].

pub mod admin;
pub mod app;
pub mod audit;
pub mod blocks;
pub mod cli;
pub mod config;
mod drain;
pub mod ledger;
pub mod llm;
pub mod metrics;
pub mod pg;
pub mod secrets;
mod telemetry;
