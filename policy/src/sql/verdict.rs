//! What the classifier decides about one query text, and the rules it decides by.
//!
//! Plain data: the proxy matches on [`VerdictKind`] and reads the flags; nothing here parses.

use super::forbidden::Forbidden;

/// The custom setting every app may use to name its tenant besides the configured one.
pub const SENTINEL_TENANT_SETTING: &str = "sentinel.tenant";

/// What the classifier needs from config. Built once; cheap to share behind an `Arc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// The setting the RLS policies read, e.g. `app.tenant_id`. Compared case-insensitively, as
    /// Postgres compares setting names.
    pub tenant_setting: String,
    /// Relations that never need a tenant: `table` (in any schema) or `schema.table`, spelled as
    /// Postgres stores them (unquoted names folded to lower case). Compared exactly.
    pub global_tables: Vec<String>,
    /// Whether `DO` blocks may run (default: no, they are refused). A `DO` body is PL/pgSQL the
    /// proxy cannot see into.
    pub allow_do: bool,
    /// Whether `CREATE [OR REPLACE] FUNCTION|PROCEDURE` may run (default: no). A function's body
    /// is SQL the proxy cannot see into, and once it exists any statement may call it: a body
    /// that sets the tenant setting, run by a statement that needs the tenant, would switch
    /// tenants inside the transaction. Migrations create functions as bypass users.
    pub allow_functions: bool,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            tenant_setting: "app.tenant_id".to_owned(),
            global_tables: Vec::new(),
            allow_do: false,
            allow_functions: false,
        }
    }
}

impl Rules {
    /// True for the configured tenant setting and for [`SENTINEL_TENANT_SETTING`], in any case.
    pub fn is_tenant_setting(&self, name: &str) -> bool {
        name.eq_ignore_ascii_case(&self.tenant_setting)
            || name.eq_ignore_ascii_case(SENTINEL_TENANT_SETTING)
    }

    /// True when `schema.name` (`schema` empty when unqualified) is one of the global tables.
    /// An unqualified entry matches the name in any schema; a qualified entry only that schema.
    pub fn is_global_table(&self, schema: &str, name: &str) -> bool {
        self.global_tables
            .iter()
            .any(|entry| match entry.rsplit_once('.') {
                Some((s, n)) => n == name && s == schema,
                None => entry == name,
            })
    }
}

/// The classifier's answer for one query text (all its statements).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// What the proxy must do with the text.
    pub kind: VerdictKind,
    /// Relations the text touches, as written (`schema.name` or `name`), deduplicated and
    /// sorted. CTE references are not relations. Empty when unparsable.
    pub relations: Vec<String>,
    /// The `pg_query` fingerprint of the text: equal for texts that differ only in comments,
    /// whitespace and literal values. 0 when unparsable.
    pub fingerprint: u64,
    /// How many statements the text holds (0 for an empty text; 0 when unparsable).
    pub statements: usize,
    /// A statement that cannot run inside a transaction block (`VACUUM`, `CREATE INDEX
    /// CONCURRENTLY`, `CREATE DATABASE`, `ALTER SYSTEM`, `DISCARD ALL`, …): the proxy must not
    /// prefix anything to this text.
    pub no_transaction_block: bool,
    /// Something that leaves state on the server connection past the transaction: a session
    /// `SET`, `set_config(…, false)`, a session advisory lock, `LISTEN`, `PREPARE`, a `WITH HOLD`
    /// cursor, a temporary object, `LOAD`. The proxy must clean up (or refuse) before the server
    /// connection serves another client.
    pub session_state: bool,
    /// Transaction control in the text.
    pub tx: TxEffects,
    /// Whether the verdict may depend on the values of the text's constants. False only for
    /// plain DML (`SELECT`, `INSERT`, `UPDATE`, `DELETE`, `MERGE`) without a `set_config` call:
    /// their verdict is the same for any values, so texts that differ only in constants may
    /// share it (see [`VerdictCache`](super::VerdictCache)).
    pub constants_matter: bool,
}

impl Verdict {
    /// True when the proxy must have a tenant context before it forwards the text.
    pub fn needs_tenant(&self) -> bool {
        matches!(self.kind, VerdictKind::NeedsTenant)
    }
}

/// Transaction control statements in a text.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct TxEffects {
    /// A `BEGIN` / `START TRANSACTION` (or `COMMIT|ROLLBACK AND CHAIN`) appears.
    pub begins: bool,
    /// A `COMMIT`, `END`, `ROLLBACK`, `ABORT`, `PREPARE TRANSACTION`, `COMMIT PREPARED` or
    /// `ROLLBACK PREPARED` appears.
    pub ends: bool,
    /// A `ROLLBACK TO [SAVEPOINT]` appears: it undoes a `set_config(…, true)` made after the
    /// savepoint.
    pub rolls_back_to_savepoint: bool,
    /// In a multi-statement text, a statement that needs a tenant comes after one that ends a
    /// transaction, rolls back to a savepoint or resets every setting: the context injected at
    /// the start does not cover it.
    pub tenant_after_end: bool,
    /// A `RESET ALL` appears: it resets the tenant setting on the server too.
    pub resets_settings: bool,
    /// Every statement is transaction control (`BEGIN`, `COMMIT`, `SAVEPOINT`, `SET TRANSACTION`,
    /// …): nothing may run before it in its transaction (an isolation level must be set before
    /// the first query), and it reads no tenant data.
    pub control_only: bool,
}

/// What kind of text it is, in order of precedence (first wins when statements disagree):
/// `Unparsable`, `Forbidden`, `TenantCommand` (only alone), `NeedsTenant`, `Free`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerdictKind {
    /// Touches nothing tenant-scoped: forward as it is.
    Free,
    /// Touches a relation outside `pg_catalog`, `information_schema` and the global tables, or
    /// calls a function that is not built in, or executes a prepared statement.
    NeedsTenant,
    /// Refused for everyone but bypass users.
    Forbidden(Forbidden),
    /// A standalone tenant `SET`/`RESET`/`set_config` the proxy answers itself.
    TenantCommand(TenantCommand),
    /// The parser refused the text: answer `42601`, never forward it unchecked.
    Unparsable {
        /// The parser's message; safe to show the client (it quotes only the client's own text).
        message: String,
        /// 1-based character position of the error, when known. `pg_query`'s Rust API does not
        /// report it, so this is `None` for now.
        cursor: Option<u32>,
    },
}

/// The standalone statements that set or reset the tenant, which the proxy intercepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantCommand {
    /// `SET [SESSION|LOCAL] <tenant setting> {=|TO} <value>`: a string, identifier or number,
    /// as Postgres writes it back (`SET x = 42` gives `"42"`, `SET x TO acme` gives `"acme"`).
    Set {
        /// `SET LOCAL`.
        local: bool,
        /// The value, not yet validated as a tenant id.
        value: String,
    },
    /// `RESET <tenant setting>` or `SET [LOCAL] <tenant setting> {TO|=} DEFAULT`.
    Reset {
        /// `SET LOCAL … TO DEFAULT`.
        local: bool,
    },
    /// `SELECT [pg_catalog.]set_config('<tenant setting>', <value>, <is_local>) [[AS] alias]`
    /// with nothing else in the statement.
    SetConfig {
        /// The new value.
        value: Arg,
        /// The `is_local` argument.
        is_local: Arg,
        /// The result column's name: the alias, or `set_config`.
        column: String,
    },
}

/// One argument of a standalone `set_config` call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arg {
    /// A string literal (also a string literal cast to `text`/`varchar`/`bool`).
    Text(String),
    /// `true` / `false`.
    Bool(bool),
    /// A bind parameter `$n` (1-based).
    Param(u16),
    /// `NULL`. As `is_local`, Postgres takes it as `false`.
    Null,
}

impl Arg {
    /// The argument as a boolean the way Postgres reads `is_local`: a boolean, `NULL` (false), or
    /// a string in Postgres' boolean syntax (`t`, `true`, `yes`, `on`, `1`, unambiguous prefixes,
    /// any case, surrounding whitespace ignored). `None` for a parameter or a string that is not
    /// a boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Arg::Bool(b) => Some(*b),
            Arg::Null => Some(false),
            Arg::Param(_) => None,
            Arg::Text(text) => parse_pg_bool(text),
        }
    }
}

/// Postgres' `parse_bool`: `true`/`false`, `yes`/`no` and their prefixes, `on`/`off` (at least
/// two letters), `1`/`0`; any case; leading and trailing whitespace ignored.
fn parse_pg_bool(text: &str) -> Option<bool> {
    let t = text.trim().to_ascii_lowercase();
    if t.is_empty() {
        return None;
    }
    let prefix_of = |word: &str| word.starts_with(t.as_str());
    match t.as_str() {
        "1" => Some(true),
        "0" => Some(false),
        "on" => Some(true),
        "of" | "off" => Some(false),
        _ if prefix_of("true") || prefix_of("yes") => Some(true),
        _ if prefix_of("false") || prefix_of("no") => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pg_bool_syntax() {
        for s in ["t", "TRUE", " yes ", "y", "on", "1"] {
            assert_eq!(Arg::Text(s.into()).as_bool(), Some(true), "{s}");
        }
        for s in ["f", "False", "n", "no", "off", "of", "0"] {
            assert_eq!(Arg::Text(s.into()).as_bool(), Some(false), "{s}");
        }
        for s in ["", "o", "2", "maybe", "truee"] {
            assert_eq!(Arg::Text(s.into()).as_bool(), None, "{s}");
        }
        assert_eq!(Arg::Null.as_bool(), Some(false));
        assert_eq!(Arg::Param(1).as_bool(), None);
    }

    #[test]
    fn tenant_setting_is_case_insensitive() {
        let rules = Rules::default();
        assert!(rules.is_tenant_setting("APP.Tenant_ID"));
        assert!(rules.is_tenant_setting("Sentinel.Tenant"));
        assert!(!rules.is_tenant_setting("app.tenant"));
    }

    #[test]
    fn global_tables_match_by_schema_or_any() {
        let rules = Rules {
            global_tables: vec!["countries".into(), "ref.currencies".into()],
            ..Rules::default()
        };
        assert!(rules.is_global_table("", "countries"));
        assert!(rules.is_global_table("public", "countries"));
        assert!(rules.is_global_table("ref", "currencies"));
        assert!(!rules.is_global_table("", "currencies"));
        assert!(!rules.is_global_table("public", "currencies"));
        assert!(!rules.is_global_table("", "orders"));
    }
}
