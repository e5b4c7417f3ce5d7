//! The Postgres ledger, black box: Sentinel processes sharing budgets in a real Postgres, checked
//! through a direct connection to the ledger's tables.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use sentinel_tests::llm::{GPT, LlmSetup, charges, http_client, wait_port};
use sentinel_tests::mock_llm::MockLlm;
use sentinel_tests::{Auth, SentinelConfig, SentinelProcess, TestDb, free_port, shared_cluster};
use serde_json::json;

/// The `[ledger]` lines for `db` (its owner role keeps the ledger in these tests).
fn ledger_lines(db: &TestDb, spool: &std::path::Path) -> String {
    format!(
        "backend = \"postgres\"\nhost = \"127.0.0.1\"\nport = {}\ndatabase = \"{}\"\nuser = \"{}\"\n\
         password_env = \"SENTINEL_TEST_LEDGER_PASSWORD\"\nlease_ttl = \"3s\"\nspool_path = \"{}\"\n",
        db.port,
        db.name,
        db.role,
        spool.display()
    )
}

async fn start(
    db: &TestDb,
    mock: &MockLlm,
    spool: &std::path::Path,
    tenant_budget: &str,
) -> Result<(SentinelProcess, SentinelConfig, u16)> {
    let setup = LlmSetup::new(&mock.base_url())
        .tenant("acme", tenant_budget, &[])
        .ledger(&ledger_lines(db, spool));
    let config = SentinelConfig::with_upstream("127.0.0.1", free_port())
        .user("app", Auth::Trust, "app")
        .env_var("SENTINEL_TEST_LEDGER_PASSWORD", &db.password)
        .llm(&setup);
    let sentinel = SentinelProcess::start_with(&config).await?;
    wait_port(setup.port).await?;
    Ok((sentinel, config, setup.port))
}

fn chat(max_tokens: u64) -> serde_json::Value {
    json!({"model": GPT, "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens})
}

#[tokio::test]
async fn usage_is_recorded_and_budgets_hold_in_postgres() -> Result<()> {
    let pg = shared_cluster().await?;
    let db = pg.test_db("ledger_basic").await?;
    let mock = MockLlm::start().await;
    let dir = tempfile::tempdir()?;
    let spool = dir.path().join("usage.spool");
    // 1,000 µ$: each call holds about 220 µ$ and costs 220 µ$.
    let (sentinel, config, port) = start(&db, &mock, &spool, "0.001000").await?;
    let key = config.virtual_key("acme", "k1")?;
    let client = http_client();
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let response = client
            .post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
            .bearer_auth(&key)
            .header("x-mock-input-tokens", "20")
            .header("x-mock-output-tokens", "100")
            .json(&chat(100))
            .send()
            .await?;
        statuses.push(response.status().as_u16());
        let _ = response.text().await;
    }
    let ok = statuses.iter().filter(|s| **s == 200).count();
    ensure!(
        ok >= 3 && statuses.contains(&402),
        "{statuses:?}\n{}",
        sentinel.logs()
    );
    ensure!(mock.request_count() == ok);

    // The usage reaches the database: one row per call, spend is their sum.
    let oracle = db.connect().await?;
    let started = std::time::Instant::now();
    loop {
        let n: i64 = oracle
            .query_one(
                "SELECT count(*) FROM sentinel.usage_events WHERE outcome = 'ok'",
                &[],
            )
            .await?
            .get(0);
        if n as usize == ok {
            break;
        }
        ensure!(
            started.elapsed() < Duration::from_secs(10),
            "{n} events recorded, {ok} expected\n{}",
            sentinel.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let row = oracle
        .query_one(
            "SELECT spent, limit_micros, (SELECT sum(charged)::bigint FROM sentinel.usage_events) FROM sentinel.budgets WHERE tenant = 'acme' AND scope = ''",
            &[],
        )
        .await?;
    let (spent, limit, charged): (i64, i64, Option<i64>) = (row.get(0), row.get(1), row.get(2));
    ensure!(spent == 220 * ok as i64, "spent {spent} for {ok} calls");
    ensure!(
        charged == Some(spent),
        "events {charged:?} vs spent {spent}"
    );
    ensure!(spent <= limit);
    let logged: u64 = charges(&sentinel.logs()).iter().map(|c| c.micros).sum();
    ensure!(logged as i64 == spent, "log says {logged}, ledger {spent}");
    ensure!(
        !spool.exists() || std::fs::metadata(&spool)?.len() == 0,
        "recorded usage left in the spool"
    );
    Ok(())
}
