//! The SQL statement classifier: what a query text means for the tenant context.
//!
//! Why: Sentinel must know, before it forwards a query, whether the query touches tenant data
//! (then a tenant context is required and injected), whether it is one of the tenant-setting
//! statements the proxy answers itself, or whether it tries to step outside the context (`SET
//! ROLE`, `set_config` of the tenant setting hidden in an expression, disabling RLS, …). Tag-based
//! or regex-based detection is what let tenant leaks through in other proxies, so:
//!
//! - every text is parsed with `pg_query` (Postgres' own grammar); what does not parse is
//!   refused ([`VerdictKind::Unparsable`]), never forwarded unchecked;
//! - the whole parse tree is walked generically (every node of every type, via a serde copy of
//!   the protobuf AST), so a relation or a `set_config` is found in a CTE, a subquery, a join,
//!   `RETURNING`, `MERGE`, `COPY (…)`, `EXPLAIN ANALYZE` or a `CALL` argument alike;
//! - anything unknown counts against the query: a function that is not a `pg_catalog` built-in
//!   needs a tenant, a `set_config` whose setting name is not a literal is refused.
//!
//! Parsing costs tens of microseconds, so the proxy asks a [`VerdictCache`], keyed by the text
//! without comments: the steady state is one comment strip, a hash and a lookup.
//!
//! Pure: no I/O, no clock, no global state besides the built-in function list.
//!
//! # Pieces
//!
//! - `verdict`: [`Rules`], [`Verdict`], [`VerdictKind`], [`TxEffects`], [`TenantCommand`],
//!   [`Arg`].
//! - `forbidden`: [`Forbidden`], each reason with its client message, metric label and SQLSTATE.
//! - `classify`: [`classify()`], combining the statements of a text by precedence.
//! - `tree`: the generic copy of the protobuf AST (serde).
//! - `walk`: the iterative walk over every node, with CTE scopes.
//! - `calls`: function calls (`set_config`, built-ins, dynamic SQL, advisory locks).
//! - `refuse`: statement types refused wherever they appear, nested `SET` clauses.
//! - `statement`: top-level facts (transaction control, no transaction block, session state).
//! - `tenant_command`: the standalone tenant `SET`/`RESET`/`set_config` forms.
//! - `literal`: reading constants from the tree.
//! - `builtins`: the `pg_catalog` function names of Postgres 15 (`builtins.txt`).
//! - `cache`: [`VerdictCache`], [`CacheStats`].

mod builtins;
mod cache;
mod calls;
mod classify;
mod forbidden;
mod literal;
mod refuse;
mod statement;
mod tenant_command;
mod tree;
mod verdict;
mod walk;

pub use cache::{CacheStats, MAX_CACHED_LEN, VerdictCache};
pub use classify::classify;
pub use forbidden::Forbidden;
pub use verdict::{
    Arg, Rules, SENTINEL_TENANT_SETTING, TenantCommand, TxEffects, Verdict, VerdictKind,
};
