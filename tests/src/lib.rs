//! Black-box test harness (see the suites in `tests/tests/`).
//!
//! The suites treat Sentinel as a black box: they start a real, throwaway Postgres cluster
//! ([`pg::PgCluster`]), run the `sentinel` binary as a child process ([`sentinel::SentinelProcess`])
//! with a config rendered by [`config::SentinelConfig`], and talk to both with real clients
//! ([`clients`]) or at the protocol level ([`raw`]). Isolation is checked through a direct "oracle" connection that bypasses Sentinel.
//!
//! Nothing here needs root, but when the tests run as root (as CI does) Postgres is run as the
//! `postgres` OS user, because `initdb` and `postgres` refuse to run as root.

pub mod clients;
pub mod config;
pub mod llm;
pub mod mock_llm;
pub mod names;
pub mod pg;
pub mod raw;
pub mod reaper;
pub mod sentinel;
pub mod tenancy;

pub use clients::{connect_direct, connect_via_sentinel};
pub use config::{Auth, PoolMode, SentinelConfig, TenancyScope};
pub use pg::{PgCluster, TestDb, shared_cluster};
pub use sentinel::{CliOutput, SentinelProcess, free_port, run_sentinel};
