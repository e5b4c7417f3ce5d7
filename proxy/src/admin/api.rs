//! The JSON endpoints under `/v1`. Every answer is JSON; bad input is a 400 whose `error` says
//! what is wrong.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Admin, views};
use crate::config::TenantLlmConfig;
use crate::ledger::{BudgetSpec, LedgerError};
use sentinel_policy::budget::Period;

/// An answer: status and JSON body.
pub type Answer = (u16, Value);

/// Recent usage events listed per tenant.
const RECENT_USAGE: usize = 20;

pub fn error(status: u16, message: impl Into<String>) -> Answer {
    (status, json!({ "error": message.into() }))
}

/// Tenant ids in paths: what virtual keys and tenant tokens can carry.
fn check_tenant(id: &str) -> Result<(), Answer> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'));
    if ok {
        Ok(())
    } else {
        Err(error(
            400,
            "a tenant id is 1 to 128 characters of A-Z, a-z, 0-9, '_', '-', '.' and ':'",
        ))
    }
}

fn ledger_error(e: LedgerError) -> Answer {
    match e {
        LedgerError::Unavailable(reason) => error(503, format!("ledger unavailable: {reason}")),
        other => error(500, other.to_string()),
    }
}

pub async fn tenant(admin: &Admin, id: &str) -> Answer {
    if let Err(answer) = check_tenant(id) {
        return answer;
    }
    let block = admin.blocks.get(id);
    let mut body = json!({
        "tenant": id,
        "blocked": block,
    });
    if let Some(egress) = &admin.egress {
        let ledger = egress.ledger();
        let budgets = match ledger.balance(id).await {
            Ok(b) => b,
            Err(e) => return ledger_error(e),
        };
        let since = budgets.iter().map(|b| b.period_start).min().unwrap_or(0);
        let usage = match ledger.usage(id, since, RECENT_USAGE).await {
            Ok(u) => u,
            Err(e) => return ledger_error(e),
        };
        body["budgets"] = json!(budgets);
        body["recent_usage"] = json!(usage);
        body["refusals"] = json!(admin.metrics.tenant_refusals(id));
    } else {
        body["budgets"] = json!([]);
        body["recent_usage"] = json!([]);
        body["refusals"] = json!({});
    }
    (200, body)
}

/// `PUT /v1/tenants/{id}/budget`: the fields of `[llm.tenants.<id>]` that the ledger holds.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BudgetBody {
    budget_usd: String,
    #[serde(default)]
    period: Period,
    #[serde(default = "default_soft_threshold")]
    soft_threshold: f64,
    #[serde(default)]
    model_budgets_usd: BTreeMap<String, String>,
}

fn default_soft_threshold() -> f64 {
    0.8
}

pub async fn set_budget(admin: &Admin, id: &str, body: &Bytes) -> Answer {
    if let Err(answer) = check_tenant(id) {
        return answer;
    }
    let Some(egress) = &admin.egress else {
        return error(404, "the LLM egress proxy is not enabled ([llm] is absent)");
    };
    let body: BudgetBody = match serde_json::from_slice(body) {
        Ok(b) => b,
        Err(e) => return error(400, format!("invalid budget: {e}")),
    };
    let config = TenantLlmConfig {
        budget_usd: body.budget_usd,
        period: body.period,
        soft_threshold: body.soft_threshold,
        model_budgets_usd: body.model_budgets_usd,
        requests_per_minute: 0,
        tokens_per_minute: 0,
    };
    let spec = match BudgetSpec::from_config(&config, "budget") {
        Ok(s) => s,
        Err(e) => return error(400, format!("{e:#}")),
    };
    let ledger = egress.ledger();
    // A model budget once set is held in the ledger with its spend and holds: it can be changed,
    // not dropped, here.
    let current = match ledger.balance(id).await {
        Ok(b) => b,
        Err(e) => return ledger_error(e),
    };
    let dropped: Vec<&str> = current
        .iter()
        .filter_map(|b| b.model.as_deref())
        .filter(|m| !spec.models.iter().any(|(model, _)| model == m))
        .collect();
    if !dropped.is_empty() {
        return error(
            400,
            format!(
                "model_budgets_usd must keep {} (a model budget can be changed, not removed, \
                 through the API)",
                dropped.join(", ")
            ),
        );
    }
    if let Err(e) = ledger.set_budget(id, spec).await {
        return ledger_error(e);
    }
    tracing::info!(tenant = id, "budget set through the admin API");
    match ledger.balance(id).await {
        Ok(budgets) => (200, json!({ "tenant": id, "budgets": budgets })),
        Err(e) => ledger_error(e),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct BlockBody {
    /// Also refuse the tenant's database statements.
    #[serde(default)]
    db: bool,
}

pub async fn block(admin: &Admin, id: &str, body: &Bytes) -> Answer {
    if let Err(answer) = check_tenant(id) {
        return answer;
    }
    let body: BlockBody = if body.iter().all(u8::is_ascii_whitespace) {
        BlockBody::default()
    } else {
        match serde_json::from_slice(body) {
            Ok(b) => b,
            Err(e) => return error(400, format!("invalid block request: {e}")),
        }
    };
    // Here at once, whatever becomes of sharing it: a kill switch fails closed.
    let block = admin.blocks.block(id, body.db);
    tracing::warn!(
        tenant = id,
        db = body.db,
        "tenant blocked through the admin API"
    );
    if let Some(egress) = &admin.egress
        && let Err(e) = egress.ledger().set_block(id, Some(&block)).await
    {
        admin.blocks.pin(id);
        return error(
            503,
            format!("blocked on this replica only; the ledger could not share it: {e}"),
        );
    }
    (200, json!({ "tenant": id, "blocked": block }))
}

pub async fn unblock(admin: &Admin, id: &str) -> Answer {
    if let Err(answer) = check_tenant(id) {
        return answer;
    }
    // The ledger first: lifted here but not there, the next refresh would block again.
    if let Some(egress) = &admin.egress
        && let Err(e) = egress.ledger().set_block(id, None).await
    {
        return error(503, format!("not unblocked: {e}"));
    }
    let was = admin.blocks.unblock(id);
    tracing::warn!(
        tenant = id,
        was_blocked = was,
        "tenant unblocked through the admin API"
    );
    (
        200,
        json!({ "tenant": id, "blocked": null, "was_blocked": was }),
    )
}

pub fn pools(admin: &Admin) -> Answer {
    (200, json!({ "pools": views::pools(&admin.pg) }))
}

pub fn clients(admin: &Admin) -> Answer {
    (200, json!({ "clients": views::clients(&admin.pg) }))
}

pub async fn reload(admin: &Admin) -> Answer {
    match admin.reloader.reload().await {
        Ok(report) => (200, json!({ "reloaded": true, "report": report })),
        Err(e) => (
            if e.ledger { 503 } else { 400 },
            json!({ "reloaded": false, "error": e.reason }),
        ),
    }
}
