//! Reload: SIGHUP, `POST /v1/reload` and the console's `RELOAD` all come here. The file is read
//! and validated whole, the running keyring must open every sealed value in it, and everything
//! built from it (users, tenancy rules, providers, prices) is built before anything is swapped;
//! so an invalid file changes nothing and says why.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::auth::AdminAuth;
use crate::config::{ADMIN_TOKEN_CONTEXT, Config};
use crate::ledger::{BudgetSpec, Ledger};
use crate::llm::{EgressLive, EgressShared};
use crate::metrics::Metrics;
use crate::pg::{PgLive, PgShared};
use crate::secrets::{Secrets, reachable_sealed_values};

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ReloadReport {
    /// Settings that differ from the running ones but apply only after a restart.
    pub restart_required: Vec<&'static str>,
    /// Budgets written to the ledger because the file changed them.
    pub budgets_updated: Vec<String>,
}

/// Why a reload was refused; the running config stays.
#[derive(Debug, Clone)]
pub struct ReloadError {
    pub reason: String,
    /// The ledger could not take the new budgets or revocations (try again once it answers).
    pub ledger: bool,
}

impl ReloadError {
    fn ledger(reason: String) -> ReloadError {
        ReloadError {
            reason,
            ledger: true,
        }
    }
}

impl From<String> for ReloadError {
    fn from(reason: String) -> ReloadError {
        ReloadError {
            reason,
            ledger: false,
        }
    }
}

impl std::fmt::Display for ReloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

pub struct Reloader {
    path: PathBuf,
    /// The config the process started with: what restart-only settings still run on.
    started: Arc<Config>,
    current: ArcSwap<Config>,
    auth: ArcSwap<AdminAuth>,
    secrets: Arc<Secrets>,
    pg: Arc<PgShared>,
    egress: Option<Arc<EgressShared>>,
    metrics: Arc<Metrics>,
    /// One reload at a time.
    running: tokio::sync::Mutex<()>,
}

impl Reloader {
    pub fn new(
        path: PathBuf,
        config: Arc<Config>,
        secrets: Arc<Secrets>,
        pg: Arc<PgShared>,
        egress: Option<Arc<EgressShared>>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Reloader> {
        let auth = admin_auth(&config, &secrets)?;
        Ok(Reloader {
            path,
            started: config.clone(),
            current: ArcSwap::new(config),
            auth: ArcSwap::from_pointee(auth),
            secrets,
            pg,
            egress,
            metrics,
            running: tokio::sync::Mutex::new(()),
        })
    }

    pub fn config(&self) -> Arc<Config> {
        self.current.load_full()
    }

    pub fn auth(&self) -> Arc<AdminAuth> {
        self.auth.load_full()
    }

    pub fn secrets(&self) -> &Secrets {
        &self.secrets
    }

    /// Reads the file again and swaps it in, or refuses it with the reason and keeps the
    /// running config.
    pub async fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let _one = self.running.lock().await;
        let result = self.try_reload().await;
        match &result {
            Ok(report) => {
                self.metrics.reloads_ok.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    restart_required = ?report.restart_required,
                    budgets_updated = report.budgets_updated.len(),
                    "config reloaded"
                );
            }
            Err(reason) => {
                self.metrics.reloads_failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(%reason, "config reload refused; the running config stays");
            }
        }
        result
    }

    async fn try_reload(&self) -> Result<ReloadReport, ReloadError> {
        let new = Arc::new(Config::load(&self.path).map_err(|e| e.to_string())?);
        let old = self.config();
        self.secrets
            .prove(&reachable_sealed_values(&new))
            .map_err(|e| {
                format!("{e} (the running keyring is kept until a restart; a new key needs one)")
            })?;
        let restart_required = restart_only_changes(&self.started, &new);
        let pg_live = PgLive::new(
            new.clone(),
            self.secrets.clone(),
            self.pg.tenancy_counters.clone(),
        )
        .map_err(|e| format!("{e:#}"))?;
        let egress_live = match (&self.egress, &new.llm) {
            (Some(_), Some(_)) => {
                Some(EgressLive::new(new.clone(), &self.secrets).map_err(|e| format!("{e:#}"))?)
            }
            _ => None,
        };
        let auth = admin_auth(&new, &self.secrets).map_err(|e| format!("{e:#}"))?;
        // The ledger next: revocations first (a key revoked in the file must not work a moment
        // longer than needed), then budgets. If the ledger cannot take them, nothing is swapped.
        let mut budgets_updated = Vec::new();
        if let (Some(egress), Some(_)) = (&self.egress, &egress_live) {
            let ledger = egress.ledger();
            for key in new.llm.iter().flat_map(|l| &l.revoked_keys) {
                let known = old
                    .llm
                    .as_ref()
                    .is_some_and(|l| l.revoked_keys.contains(key));
                if !known {
                    ledger.revoke_key(key).await.map_err(|e| {
                        ReloadError::ledger(format!(
                            "revoking key {key}: {e}; nothing else was changed"
                        ))
                    })?;
                }
            }
            budgets_updated = sync_budgets(ledger.as_ref(), &old, &new)
                .await
                .map_err(ReloadError::ledger)?;
        }
        // Built, checked and written: the swaps cannot fail.
        self.pg.reload(pg_live);
        if let (Some(egress), Some(live)) = (&self.egress, egress_live) {
            egress.reload(live);
        }
        self.metrics.llm_tenants.set_cap(new.admin.tenant_label_cap);
        self.auth.store(Arc::new(auth));
        self.current.store(new);
        Ok(ReloadReport {
            restart_required,
            budgets_updated,
        })
    }
}

/// Opens `[admin] tokens_sealed`.
fn admin_auth(config: &Config, secrets: &Secrets) -> anyhow::Result<AdminAuth> {
    let token_digests = config
        .admin
        .tokens_sealed
        .iter()
        .enumerate()
        .map(|(i, t)| {
            secrets
                .open_text(t, ADMIN_TOKEN_CONTEXT)
                .map(|t| Sha256::digest(t.as_bytes()).into())
                .map_err(|e| anyhow::anyhow!("admin.tokens_sealed[{i}]: {e}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(AdminAuth {
        token_digests,
        revoked_names: config.admin.revoked_names.clone(),
    })
}

/// The settings that differ and that only a restart applies.
pub fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let same =
        |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") == format!("{b:?}");
    let mut out = Vec::new();
    let checks: [(&'static str, bool); 11] = [
        (
            "process.threads",
            old.process.threads == new.process.threads,
        ),
        (
            "process.upgrade_socket",
            old.process.upgrade_socket == new.process.upgrade_socket,
        ),
        (
            "postgres.listen",
            old.postgres.listen == new.postgres.listen,
        ),
        (
            "postgres.upstream",
            same(&old.postgres.upstream, &new.postgres.upstream),
        ),
        ("postgres.tls", same(&old.postgres.tls, &new.postgres.tls)),
        (
            "postgres.server_connect_timeout",
            old.postgres.server_connect_timeout == new.postgres.server_connect_timeout,
        ),
        ("keys", same(&old.keys, &new.keys)),
        ("llm", old.llm.is_some() == new.llm.is_some()),
        (
            "llm.listen",
            old.llm.as_ref().map(|l| l.listen) == new.llm.as_ref().map(|l| l.listen)
                || old.llm.is_none() != new.llm.is_none(),
        ),
        ("ledger", same(&old.ledger, &new.ledger)),
        ("admin.listen", old.admin.listen == new.admin.listen),
    ];
    for (name, unchanged) in checks {
        if !unchanged {
            out.push(name);
        }
    }
    out
}

/// Writes to the ledger the configured budgets the new file changed (others keep what the
/// admin API may have set since).
async fn sync_budgets(
    ledger: &dyn Ledger,
    old: &Config,
    new: &Config,
) -> Result<Vec<String>, String> {
    let (Some(old_llm), Some(new_llm)) = (&old.llm, &new.llm) else {
        return Ok(Vec::new());
    };
    let mut updated = Vec::new();
    for (tenant, t) in &new_llm.tenants {
        let spec = BudgetSpec::from_config(t, &format!("llm.tenants.{tenant}"))
            .map_err(|e| format!("{e:#}"))?;
        let before = old_llm
            .tenants
            .get(tenant)
            .and_then(|t| BudgetSpec::from_config(t, "").ok());
        if before.as_ref() != Some(&spec) {
            ledger.set_budget(tenant, spec).await.map_err(|e| {
                format!(
                    "writing the budget of {tenant}: {e}; the config was not swapped (budgets \
                     written before this one stay written)"
                )
            })?;
            updated.push(tenant.clone());
        }
    }
    Ok(updated)
}

/// Reloads on SIGHUP (`systemctl reload`).
pub struct SighupReload {
    reloader: Arc<Reloader>,
}

impl SighupReload {
    pub fn new(reloader: Arc<Reloader>) -> SighupReload {
        SighupReload { reloader }
    }
}

#[async_trait]
impl BackgroundService for SighupReload {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hangups = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::hangup(),
        ) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP: reload through the admin port");
                return;
            }
        };
        loop {
            tokio::select! {
                got = hangups.recv() => {
                    if got.is_none() {
                        return;
                    }
                    tracing::info!("SIGHUP: reloading the config");
                    let _ = self.reloader.reload().await;
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}
