//! `[tenancy]`: how Sentinel finds each statement's tenant and what it refuses.

use std::collections::BTreeMap;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use sentinel_policy::tenant::{DEFAULT_TENANT_ID_PATTERN, DEFAULT_TENANT_KEY, TenantIdPattern};

use super::{ConfigError, invalid};

/// Where a statement's tenant may come from (DESIGN.md, "Tenant context").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The connection's password is a tenant token (`sentinel token issue`); binds the connection.
    Token,
    /// Startup parameter `sentinel.tenant` from `startup_networks`; binds the connection.
    Startup,
    /// A sqlcommenter tag in the query text; holds for that transaction.
    Comment,
    /// `SET [LOCAL] app.tenant_id = …`, `SET sentinel.tenant = …`, a standalone
    /// `SELECT set_config('app.tenant_id', …)`: intercepted and answered by Sentinel.
    Set,
}

/// How long a tenant given by the `set` source lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Until the end of the transaction it was set in; a plain `SET` outside a transaction block
    /// therefore sets nothing that outlives it.
    Transaction,
    /// Until changed or reset, applied to each transaction with `SET LOCAL` semantics.
    Session,
}

/// What `sentinel run` does with the findings of `sentinel audit` at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditOnStart {
    /// No audit at start.
    Off,
    /// Log each finding and start anyway.
    Warn,
    /// Refuse to start while there is a finding.
    Refuse,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenancyConfig {
    /// Tenant context enforcement at all. Off: Sentinel is a plain pooler.
    pub enabled: bool,
    /// On: statements without a tenant, or forbidden ones, are refused. Off (report-only): they
    /// are logged with their fingerprint and counted, and run.
    pub enforce: bool,
    /// The setting the RLS policies read.
    pub setting: String,
    /// Tenant ids must match this (anchored) pattern; ids never carry quotes, spaces or `;`.
    pub id_pattern: String,
    /// The sources in use.
    pub sources: Vec<Source>,
    /// How long a tenant from the `set` source lasts.
    pub scope: Scope,
    /// The sqlcommenter key that names the tenant (`/*tenant='acme'*/`).
    pub comment_key: String,
    /// Comments must carry a tenant token (`/*tenant_token='stk1…'*/`, key `<comment_key>_token`)
    /// instead of a bare id, so text injected into a query cannot name another tenant.
    pub signed_comments: bool,
    /// Tables that hold no tenant data: `name` (any schema) or `schema.name`.
    pub global_tables: Vec<String>,
    /// Client users whose statements are not checked (migrations, admin jobs); each bypassed
    /// statement is logged with its fingerprint.
    pub bypass_users: Vec<String>,
    /// `DO` blocks (dynamic SQL Sentinel cannot check) are refused unless this is on.
    pub allow_do: bool,
    /// `CREATE FUNCTION` / `CREATE PROCEDURE` (bodies Sentinel cannot check, callable by any
    /// later statement) are refused unless this is on; migrations run as bypass users.
    pub allow_functions: bool,
    /// Client addresses whose `sentinel.tenant` startup parameter is trusted.
    pub startup_networks: Vec<IpNet>,
    /// Statement texts whose verdicts are kept (the texts without their comments).
    pub verdict_cache_size: u64,
    /// `sentinel audit` at start: "off", "warn" or "refuse".
    pub audit_on_start: AuditOnStart,
    /// Per-tenant settings, by tenant id.
    pub tenants: BTreeMap<String, TenantConfig>,
}

impl Default for TenancyConfig {
    fn default() -> Self {
        TenancyConfig {
            enabled: true,
            enforce: true,
            setting: "app.tenant_id".to_owned(),
            id_pattern: DEFAULT_TENANT_ID_PATTERN.to_owned(),
            sources: vec![Source::Token, Source::Startup, Source::Comment, Source::Set],
            scope: Scope::Transaction,
            comment_key: DEFAULT_TENANT_KEY.to_owned(),
            signed_comments: false,
            global_tables: Vec::new(),
            bypass_users: Vec::new(),
            allow_do: false,
            allow_functions: false,
            startup_networks: vec![
                "127.0.0.1/32".parse().expect("valid network"),
                "::1/128".parse().expect("valid network"),
            ],
            verdict_cache_size: 10_000,
            audit_on_start: AuditOnStart::Off,
            tenants: BTreeMap::new(),
        }
    }
}

/// The settings of one tenant; the table's name is the tenant id, which must match
/// `id_pattern`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// `statement_timeout` set with the tenant in each of its transactions (zero: none).
    #[serde(default, with = "humantime_serde")]
    pub statement_timeout: Duration,
}

impl TenancyConfig {
    pub fn allows(&self, source: Source) -> bool {
        self.enabled && self.sources.contains(&source)
    }

    pub fn id_pattern(&self) -> Result<TenantIdPattern, ConfigError> {
        TenantIdPattern::new(&self.id_pattern)
            .map_err(|e| invalid("tenancy.id_pattern", e.to_string()))
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let pattern = self.id_pattern()?;
        if !is_setting_name(&self.setting) {
            return Err(invalid(
                "tenancy.setting",
                "must be a custom setting name with a prefix, like app.tenant_id",
            ));
        }
        if self.comment_key.is_empty()
            || !self
                .comment_key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        {
            return Err(invalid(
                "tenancy.comment_key",
                "must be 1 or more characters of A-Z, a-z, 0-9, `_`, `.`, `-`",
            ));
        }
        if self.enabled && self.sources.is_empty() {
            return Err(invalid(
                "tenancy.sources",
                "at least one source is needed while tenancy is enabled",
            ));
        }
        if self.verdict_cache_size == 0 {
            return Err(invalid("tenancy.verdict_cache_size", "must be at least 1"));
        }
        for table in &self.global_tables {
            let parts: Vec<&str> = table.split('.').collect();
            if parts.len() > 2 || parts.iter().any(|p| p.is_empty()) {
                return Err(invalid(
                    "tenancy.global_tables",
                    format!("{table:?} is not `name` or `schema.name`"),
                ));
            }
        }
        for id in self.tenants.keys() {
            if pattern.parse(id).is_err() {
                return Err(invalid(
                    format!("tenancy.tenants.{id}"),
                    "the tenant id does not match tenancy.id_pattern",
                ));
            }
        }
        Ok(())
    }
}

/// `prefix.name`, each part an identifier: what Postgres accepts as a custom setting.
fn is_setting_name(name: &str) -> bool {
    let parts: Vec<&str> = name.split('.').collect();
    parts.len() >= 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && !p.as_bytes()[0].is_ascii_digit()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setting_names() {
        assert!(is_setting_name("app.tenant_id"));
        assert!(is_setting_name("my.app.tenant"));
        assert!(!is_setting_name("tenant_id"));
        assert!(!is_setting_name("app."));
        assert!(!is_setting_name("app.tenant-id"));
        assert!(!is_setting_name("app.1x"));
    }
}
