//! Tenant context enforcement in the Postgres front: what the session asks before it forwards a
//! statement, and what it injects so the statement runs with the caller's tenant.
//!
//! The decisions are pure and live in `sentinel_policy` (the SQL classifier and its verdict
//! cache, tenant ids, comment tags, the per-connection [`TenantContext`]); this module holds
//! what every session shares ([`Tenancy`]), the refusals a client can get ([`Refusal`]), the text
//! and messages Sentinel injects ([`inject`]) and the answers it gives to the tenant commands it
//! intercepts ([`local`]).

pub mod inject;
pub mod local;
mod refusal;
pub mod state;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use sentinel_policy::sql::{Rules, Verdict, VerdictCache, VerdictKind};
use sentinel_policy::tenant::{
    SetScope, TenantContext, TenantId, TenantIdPattern, blank_tagged_comments,
    tenant_id_from_comments, tenant_tag,
};

use crate::config::{Scope, Source, TenancyConfig};
use crate::secrets::Secrets;
pub use refusal::Refusal;
use sentinel_policy::keys::verify_tenant_token;
use state::Refused;

/// A statement's verdict and the tenant its comment names, looked up once per statement text.
#[derive(Debug, Clone)]
pub struct Checked {
    pub verdict: Arc<Verdict>,
    pub tag: Option<TenantId>,
}

/// What every session shares for tenancy. Built from the config.
pub struct Tenancy {
    pub config: TenancyConfig,
    pub pattern: TenantIdPattern,
    pub verdicts: VerdictCache,
    /// `SELECT pg_catalog.set_config(...)` text per tenant with a `statement_timeout`, keyed by
    /// tenant id; others use the plain form.
    timeouts: BTreeMap<String, String>,
    hint: String,
    counters: Arc<TenancyCounters>,
    /// The comment key of a signed tenant tag (`<comment_key>_token`).
    token_key: String,
    /// Verifies signed tags.
    secrets: Arc<Secrets>,
}

/// Cache hits, misses, bypassed statements and refusals, as last logged.
type Stats = (u64, u64, u64, BTreeMap<&'static str, u64>);

/// What tenancy counts for the metrics. Outlives reloads, so counters only go up.
#[derive(Default)]
pub struct TenancyCounters {
    refusals: Mutex<BTreeMap<&'static str, u64>>,
    would_refuse: Mutex<BTreeMap<&'static str, u64>>,
    pub bypassed: AtomicU64,
    /// Verdict cache hits and misses of configs a reload replaced.
    retired_hits: AtomicU64,
    retired_misses: AtomicU64,
    last_stats: Mutex<Option<Stats>>,
}

impl TenancyCounters {
    /// Refusals so far, by reason label.
    pub fn refusals(&self) -> BTreeMap<&'static str, u64> {
        self.refusals.lock().clone()
    }

    /// Statements report-only mode let through that enforcement would have refused.
    pub fn would_refuse(&self) -> BTreeMap<&'static str, u64> {
        self.would_refuse.lock().clone()
    }

    /// Verdict cache hits and misses, over `current` and every config it replaced.
    pub fn cache(&self, current: &Tenancy) -> (u64, u64) {
        let stats = current.verdicts.stats();
        (
            stats.hits + self.retired_hits.load(Ordering::Relaxed),
            stats.misses + self.retired_misses.load(Ordering::Relaxed),
        )
    }

    /// Keeps the cache counts of a config a reload replaced.
    pub fn retire(&self, old: &Tenancy) {
        let stats = old.verdicts.stats();
        self.retired_hits.fetch_add(stats.hits, Ordering::Relaxed);
        self.retired_misses
            .fetch_add(stats.misses, Ordering::Relaxed);
    }
}

impl Tenancy {
    pub fn new(
        config: &TenancyConfig,
        secrets: Arc<Secrets>,
        counters: Arc<TenancyCounters>,
    ) -> anyhow::Result<Tenancy> {
        let pattern = config.id_pattern()?;
        let rules = Rules {
            tenant_setting: config.setting.clone(),
            global_tables: config.global_tables.clone(),
            allow_do: config.allow_do,
            allow_functions: config.allow_functions,
        };
        let verdicts = VerdictCache::new(config.verdict_cache_size, Arc::new(rules));
        let timeouts = config
            .tenants
            .iter()
            .filter(|(_, t)| !t.statement_timeout.is_zero())
            .map(|(id, t)| (id.clone(), format!("{}ms", t.statement_timeout.as_millis())))
            .collect();
        Ok(Tenancy {
            hint: hint(config),
            config: config.clone(),
            pattern,
            verdicts,
            timeouts,
            counters,
            token_key: format!("{}_token", config.comment_key),
            secrets,
        })
    }

    /// Whether `user`'s statements are checked at all.
    pub fn applies_to(&self, user: &str) -> bool {
        self.config.enabled && !self.config.bypass_users.iter().any(|u| u == user)
    }

    pub fn context(&self, bound: Option<TenantId>) -> TenantContext {
        let scope = match self.config.scope {
            Scope::Transaction => SetScope::Transaction,
            Scope::Session => SetScope::Session,
        };
        TenantContext::new(bound, scope)
    }

    /// Classifies a statement text and reads its tenant tag. Statements that can never run
    /// (unparsable, forbidden) are refused here, with the fingerprint of the text (0 when it
    /// does not parse).
    pub fn check(&self, sql: &str) -> Result<Checked, Refused> {
        let verdict = self.verdicts.verdict(sql);
        let refuse = |refusal| Err((refusal, verdict.fingerprint));
        match &verdict.kind {
            VerdictKind::Unparsable { message, .. } => {
                return refuse(Refusal::Unparsable(message.clone()));
            }
            VerdictKind::Forbidden(reason) => return refuse(Refusal::Forbidden(*reason)),
            VerdictKind::TenantCommand(_) if !self.config.allows(Source::Set) => {
                return refuse(Refusal::SetSourceOff);
            }
            _ => {}
        }
        let tag = if self.config.allows(Source::Comment) {
            match self.comment_tenant(sql) {
                Ok(tag) => tag,
                Err(refusal) => return refuse(refusal),
            }
        } else {
            None
        };
        Ok(Checked { verdict, tag })
    }

    /// The tenant a statement's comments name: a bare id, or with `signed_comments` a tenant
    /// token (whose signature and expiry are checked here, on every statement).
    fn comment_tenant(&self, sql: &str) -> Result<Option<TenantId>, Refusal> {
        if !self.config.signed_comments {
            return tenant_id_from_comments(sql, &self.config.comment_key, &self.pattern)
                .map_err(Refusal::Tag);
        }
        if tenant_tag(sql, &self.config.comment_key)
            .map_err(Refusal::Tag)?
            .is_some()
        {
            return Err(Refusal::UnsignedTag);
        }
        let Some(token) = tenant_tag(sql, &self.token_key).map_err(Refusal::Tag)? else {
            return Ok(None);
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let claims = verify_tenant_token(self.secrets.keyring(), self.secrets.salt(), &token, now)
            .map_err(|e| {
                tracing::info!(reason = e.label(), "tenant token in a comment refused");
                Refusal::BadCommentToken
            })?;
        self.parse_tenant(&claims.tenant).map(Some)
    }

    /// With `signed_comments`, the text with the comments that carry tenant tokens blanked out
    /// (same length: positions do not move); `None` when there is nothing to blank.
    pub fn redact(&self, sql: &str) -> Option<String> {
        if !self.config.signed_comments {
            return None;
        }
        blank_tagged_comments(sql, &self.token_key)
    }

    pub fn parse_tenant(&self, value: &str) -> Result<TenantId, Refusal> {
        self.pattern
            .parse(value)
            .map_err(|_| Refusal::InvalidTenant)
    }

    /// The HINT of a `tenant context required` refusal: the sources that are switched on.
    pub fn hint(&self) -> &str {
        &self.hint
    }

    /// The `statement_timeout` to set with `tenant`, if one is configured.
    pub fn statement_timeout(&self, tenant: &TenantId) -> Option<&str> {
        self.timeouts.get(tenant.as_str()).map(String::as_str)
    }

    /// Counts a refusal and logs it with the statement's fingerprint (never its text).
    pub fn refused(&self, refusal: &Refusal, fingerprint: u64, user: &str) {
        *self
            .counters
            .refusals
            .lock()
            .entry(refusal.label())
            .or_insert(0) += 1;
        tracing::info!(
            user,
            reason = refusal.label(),
            sqlstate = refusal.sqlstate(),
            fingerprint = format_args!("{fingerprint:016x}"),
            "statement refused"
        );
    }

    /// Counts and logs what would have been refused, in report-only mode (`enforce = false`).
    pub fn reported(&self, refusal: &Refusal, fingerprint: u64, user: &str) {
        *self
            .counters
            .would_refuse
            .lock()
            .entry(refusal.label())
            .or_insert(0) += 1;
        tracing::warn!(
            user,
            reason = refusal.label(),
            sqlstate = refusal.sqlstate(),
            fingerprint = format_args!("{fingerprint:016x}"),
            "statement would be refused (report-only: tenancy.enforce = false)"
        );
    }

    /// Refusals so far (or, in report-only mode, statements that would have been refused), by
    /// reason label.
    pub fn refusal_counts(&self) -> BTreeMap<&'static str, u64> {
        let mut counts = self.counters.refusals();
        for (reason, n) in self.counters.would_refuse() {
            *counts.entry(reason).or_insert(0) += n;
        }
        counts
    }

    /// Logs the verdict cache's hit rate and the refusals by reason, when they changed since the
    /// last time (until the admin port serves them as metrics).
    pub fn log_stats(&self) {
        let cache = self.verdicts.stats();
        let refusals = self.refusal_counts();
        let bypassed = self.counters.bypassed.load(Ordering::Relaxed);
        let snapshot = (cache.hits, cache.misses, bypassed, refusals.clone());
        let mut last = self.counters.last_stats.lock();
        if last.as_ref() == Some(&snapshot) {
            return;
        }
        *last = Some(snapshot);
        tracing::info!(
            verdict_cache_hits = cache.hits,
            verdict_cache_misses = cache.misses,
            verdict_cache_entries = cache.entries,
            verdict_cache_hit_rate = format_args!("{:.3}", cache.hit_rate()),
            bypassed,
            refusals = ?refusals,
            "tenancy stats"
        );
    }

    /// Logs a statement of a bypass user with its fingerprint.
    pub fn bypass(&self, sql: &str, user: &str) {
        self.counters.bypassed.fetch_add(1, Ordering::Relaxed);
        let verdict = self.verdicts.verdict(sql);
        tracing::info!(
            user,
            fingerprint = format_args!("{:016x}", verdict.fingerprint),
            "statement of a bypass user, not checked"
        );
    }
}

fn hint(config: &TenancyConfig) -> String {
    let mut ways = Vec::new();
    let mut sources = config.sources.clone();
    // The per-statement sources first: they are what an app without a bound connection uses.
    sources.sort_by_key(|s| match s {
        Source::Comment => 0,
        Source::Set => 1,
        Source::Token => 2,
        Source::Startup => 3,
    });
    sources.dedup();
    for source in &sources {
        ways.push(match source {
            Source::Comment if config.signed_comments => format!(
                "a sqlcommenter tag /*{}_token='<token from sentinel token issue>'*/ in the query",
                config.comment_key
            ),
            Source::Comment => format!(
                "a sqlcommenter tag such as /*{}='<tenant>'*/ in the query",
                config.comment_key
            ),
            Source::Set => match config.scope {
                Scope::Transaction => format!(
                    "SET LOCAL {} = '<tenant>' inside the transaction",
                    config.setting
                ),
                Scope::Session => format!("SET {} = '<tenant>'", config.setting),
            },
            Source::Token => "a tenant token as the connection's password".to_owned(),
            Source::Startup => "the startup parameter sentinel.tenant".to_owned(),
        });
    }
    format!("give the tenant with {}", ways.join(", or "))
}
