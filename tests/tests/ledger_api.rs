//! The Postgres ledger's administration, in-process against a real Postgres: set a limit, read
//! spent / reserved / remaining, list a tenant's usage since a period's start, revoke keys.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use pingora::services::background::BackgroundService;
use sentinel::config::Config;
use sentinel::ledger::postgres::PgLedger;
use sentinel::ledger::{
    BudgetSpec, Ledger, ReservationId, ReserveRequest, SystemClock, UsageEvent,
};
use sentinel::secrets::Secrets;
use sentinel_policy::budget::Period;
use sentinel_policy::keys::{EnvSalt, Keyring};
use sentinel_policy::llm::{Micros, Usage};
use sentinel_tests::config::{new_keyring_text, new_salt};
use sentinel_tests::shared_cluster;

fn event(tenant: &str, id: &str, cost: u64, at: u64) -> UsageEvent {
    UsageEvent {
        request_id: id.into(),
        tenant: tenant.into(),
        model: "mock-gpt".into(),
        provider: "openai".into(),
        usage: Usage {
            input: 10,
            output: 20,
            ..Usage::default()
        },
        cost: Micros(cost),
        outcome: "ok".into(),
        estimated: false,
        at_unix: at,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_are_set_read_and_listed_through_the_ledger() -> Result<()> {
    let pg = shared_cluster().await?;
    let db = pg.test_db("ledger_api").await?;
    let dir = tempfile::tempdir()?;
    let salt = new_salt();
    let text = format!(
        r#"
[keys]
salt = "{salt}"
[postgres.upstream]
host = "127.0.0.1"
port = {port}
[[postgres.users]]
name = "app"
auth = "trust"
[llm]
[[llm.providers]]
name = "openai"
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
models = ["gpt-4o-mini"]
api_key_env = "UNUSED_KEY"
[ledger]
database = "{name}"
user = "{role}"
password_file = "{pwfile}"
spool_path = "{spool}"
lease_ttl = "3s"
"#,
        port = db.port,
        name = db.name,
        role = db.role,
        pwfile = dir.path().join("pw").display(),
        spool = dir.path().join("usage.spool").display(),
    );
    std::fs::write(dir.path().join("pw"), &db.password)?;
    let config = Config::parse(&text)?;
    let ledger_config = config.ledger.clone().context("[ledger]")?;
    let secrets = Secrets::new(
        Keyring::parse(&new_keyring_text("k1"))?,
        EnvSalt::from_base64(&salt)?,
    );
    let (ledger, worker) = PgLedger::new(
        &config,
        &ledger_config,
        &secrets,
        Arc::new(SystemClock),
        Vec::new(),
        None,
    )?;
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    let worker = Arc::new(worker);
    let running = worker.clone();
    tokio::spawn(async move { running.start(shutdown).await });

    // No budget yet: nothing to show, and a reservation is refused.
    ensure!(ledger.balance("acme").await?.is_empty());
    let refused = ledger
        .reserve(ReserveRequest {
            tenant: "acme".into(),
            model: "gpt-4o-mini".into(),
            amount: Micros(10),
            request_id: "r0".into(),
            ttl: Duration::from_secs(60),
        })
        .await;
    ensure!(refused.is_err(), "{refused:?}");

    ledger
        .set_budget(
            "acme",
            BudgetSpec {
                limit: Micros(1_000),
                period: Period::Month,
                soft_threshold: 0.5,
                models: vec![("gpt-4o".into(), Micros(300))],
            },
        )
        .await?;
    let held = ledger
        .reserve(ReserveRequest {
            tenant: "acme".into(),
            model: "gpt-4o".into(),
            amount: Micros(200),
            request_id: "r1".into(),
            ttl: Duration::from_secs(60),
        })
        .await?;
    let balance = ledger.balance("acme").await?;
    ensure!(balance.len() == 2, "{balance:?}");
    ensure!(
        balance[0].model.is_none() && balance[0].reserved == Micros(200),
        "{balance:?}"
    );
    ensure!(balance[1].model.as_deref() == Some("gpt-4o") && balance[1].remaining == Micros(100));
    let now = sentinel::ledger::Clock::now(&SystemClock);
    ledger
        .settle(&held.id, event("acme", "r1", 150, now))
        .await?;
    // Usage reaches the database through the worker.
    let mut listed = Vec::new();
    for _ in 0..100 {
        listed = ledger.usage("acme", now.saturating_sub(5), 10).await?;
        if !listed.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ensure!(
        listed.len() == 1 && listed[0].cost == Micros(150),
        "{listed:?}"
    );
    ensure!(
        ledger.usage("acme", now + 3600, 10).await?.is_empty(),
        "a later period has none"
    );
    let balance = ledger.balance("acme").await?;
    ensure!(
        (balance[0].spent, balance[0].reserved, balance[0].remaining)
            == (Micros(150), Micros::ZERO, Micros(850)),
        "{balance:?}"
    );
    ensure!(!balance[0].near_limit);

    // A new limit keeps what was spent.
    ledger
        .set_budget(
            "acme",
            BudgetSpec {
                limit: Micros(200),
                period: Period::Month,
                soft_threshold: 0.5,
                models: Vec::new(),
            },
        )
        .await?;
    let balance = ledger.balance("acme").await?;
    ensure!(
        (balance[0].limit, balance[0].spent, balance[0].remaining)
            == (Micros(200), Micros(150), Micros(50)),
        "{balance:?}"
    );
    ensure!(
        balance[0].near_limit,
        "150 of 200 is past the 0.5 threshold"
    );
    ensure!(matches!(
        ledger
            .settle(&ReservationId("r1".into()), event("acme", "r1", 1, now))
            .await,
        Ok(sentinel::ledger::Settled::Already)
    ));

    ensure!(!ledger.is_revoked("vk-1").await?);
    ledger.revoke_key("vk-1").await?;
    ensure!(ledger.is_revoked("vk-1").await?);
    Ok(())
}
