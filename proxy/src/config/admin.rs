//! `[admin]`: the admin port (metrics, health, the JSON API) and the Postgres console.

use std::net::SocketAddr;

use serde::Deserialize;

use super::{ConfigError, SealedField, check_sealed, invalid};

/// The sealing context of `[admin] tokens_sealed`.
pub const ADMIN_TOKEN_CONTEXT: &str = "admin.tokens";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Where the admin HTTP service listens. Loopback by default; in a pod, `0.0.0.0:9930` so
    /// the kubelet's probes and Prometheus reach it. Default: "127.0.0.1:9930".
    pub listen: SocketAddr,
    /// Whether `GET /metrics` is served without a token (scrapers rarely carry one).
    /// `/healthz` and `/readyz` never need one; everything under `/v1` always does.
    /// Default: true.
    pub metrics_public: bool,
    /// Tenants named in per-tenant metric labels at most; the others are summed under
    /// `tenant="other"`. Per-tenant detail is in `GET /v1/tenants/{id}`. Default: 20.
    pub tenant_label_cap: usize,
    /// Static bearer tokens, each sealed for the context `admin.tokens` (`sentinel seal
    /// --context admin.tokens`) and compared in constant time. Tokens minted with `sentinel
    /// admin-token issue` need no entry. Default: [].
    pub tokens_sealed: Vec<String>,
    /// Names of minted admin tokens (`sentinel admin-token issue --name …`) that are refused
    /// although their signature holds. Default: [].
    pub revoked_names: Vec<String>,
    /// Users of `[[postgres.users]]` who may open the console: the virtual database
    /// `sentinel` on the Postgres port (`SHOW POOLS`, `RELOAD`, …). Default: [].
    pub console_users: Vec<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9930)),
            metrics_public: true,
            tenant_label_cap: 20,
            tokens_sealed: Vec::new(),
            revoked_names: Vec::new(),
            console_users: Vec::new(),
        }
    }
}

impl AdminConfig {
    pub(super) fn validate(&self, users: &[super::UserConfig]) -> Result<(), ConfigError> {
        for (i, token) in self.tokens_sealed.iter().enumerate() {
            check_sealed(token).map_err(|e| invalid(format!("admin.tokens_sealed[{i}]"), e))?;
        }
        for name in &self.console_users {
            match users.iter().find(|u| &u.name == name) {
                None => {
                    return Err(invalid(
                        "admin.console_users",
                        format!("{name:?} is not one of postgres.users"),
                    ));
                }
                // A trust or tenant-token user would let in anyone on a trusted network, or
                // anyone holding a tenant token.
                Some(u) if u.auth != super::ClientAuth::ScramSha256 => {
                    return Err(invalid(
                        "admin.console_users",
                        format!("{name:?} must log in with auth = \"scram-sha-256\""),
                    ));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    pub(super) fn sealed_fields(&self, out: &mut Vec<SealedField>) {
        for (i, token) in self.tokens_sealed.iter().enumerate() {
            out.push(SealedField {
                field: format!("admin.tokens_sealed[{i}]"),
                context: ADMIN_TOKEN_CONTEXT.to_owned(),
                value: token.clone(),
            });
        }
    }
}
