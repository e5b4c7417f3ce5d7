//! Pure decisions for Sentinel. No sockets, no runtime, no clock read directly: everything a
//! decision needs comes in as an argument, so every rule can be tested on its own.
//!
//! The tenancy, SQL-classification and money modules land here with their issues; the crate
//! exists from the start so the crate graph (`sentinel` depends on this, never the other way) is
//! fixed before any of them.
//!
//! - [`budget`]: budget periods and the reserve/settle arithmetic every ledger backend shares.
//! - [`keys`]: master keyring, environment salt, HKDF sub-keys, sealed values, tenant tokens,
//!   virtual LLM keys and admin tokens.
//! - [`llm`]: LLM egress metering: money, prices, request bounds, cost estimates, the SSE
//!   parser and the stream usage meters.
//! - [`tenant`]: tenant ids and their pattern, the SQL comment lexer, sqlcommenter tenant tags.
//! - [`sql`]: the statement classifier (needs a tenant, free, forbidden, tenant command,
//!   unparsable) over `pg_query`'s parse tree, and the verdict cache.

pub mod budget;
pub mod keys;
pub mod llm;
pub mod sql;
pub mod tenant;
