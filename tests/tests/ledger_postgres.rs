//! The Postgres ledger, black box: Sentinel processes sharing budgets in a real Postgres, checked
//! through a direct connection to the ledger's tables.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use futures::StreamExt as _;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use sentinel_tests::llm::{GPT, LlmSetup, charges, http_client, wait_port};
use sentinel_tests::mock_llm::MockLlm;
use sentinel_tests::{
    Auth, PgCluster, SentinelConfig, SentinelProcess, TestDb, free_port, run_sentinel,
    shared_cluster,
};
use serde_json::json;
use tokio_postgres::Client;
use tokio_postgres::types::ToSql;

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

// ---------------------------------------------------------------------------------------------
// Shared-ledger tests: several replicas, crashes, outages, sweeps, period rollover.
// ---------------------------------------------------------------------------------------------

/// The multi-process tests take turns: on a small machine, four Sentinels under load per test
/// are plenty, and heartbeats that starve for CPU would make leases expire for the wrong reason.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Input tokens the mock reports in the load tests: below what Sentinel counts for the tiny
/// request bodies, so a call's cost never exceeds its hold.
const INPUT: u64 = 10;

/// mock-gpt's price in micro-dollars: $1/M input, $2/M output, nothing cached.
fn gpt_cost(input: u64, output: u64) -> i64 {
    (input + 2 * output) as i64
}

/// What a correct meter charges for the mock's completed responses.
fn mock_price(mock: &MockLlm) -> i64 {
    mock.requests()
        .iter()
        .filter(|r| r.completed())
        .filter_map(|r| r.usage)
        .map(|u| gpt_cost(u.input_tokens, u.output_tokens))
        .sum()
}

fn usd(micros: u64) -> String {
    format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
}

fn ledger_lines_tz(db: &TestDb, spool: &Path, time_zone: &str) -> String {
    format!("{}time_zone = \"{time_zone}\"\n", ledger_lines(db, spool))
}

/// `LIKE` pattern of the replica ids of process `pid` (`<host>-<pid>-<8 hex digits>`).
fn replica_of(pid: u32) -> String {
    format!("%-{pid}-________")
}

/// Sentinel processes sharing one ledger database and one keyring and salt, so one virtual key
/// works on all of them; each has its own ports and spool.
struct Fleet {
    base: SentinelConfig,
    db: TestDb,
    mock_url: String,
    tenants: Vec<(String, String, Vec<String>)>,
    time_zone: String,
    /// Extra `[llm]` options, and the members' `[ledger] lease_ttl`.
    llm_options: Vec<(String, String)>,
    lease_ttl: &'static str,
    dir: tempfile::TempDir,
    members: Vec<Member>,
}

struct Member {
    process: SentinelProcess,
    port: u16,
    spool: PathBuf,
}

impl Fleet {
    fn new(db: &TestDb, mock: &MockLlm) -> Result<Fleet> {
        let base = SentinelConfig::with_upstream("127.0.0.1", free_port())
            .user("app", Auth::Trust, "app")
            .env_var("SENTINEL_TEST_LEDGER_PASSWORD", &db.password);
        Ok(Fleet {
            base,
            db: db.clone(),
            mock_url: mock.base_url(),
            tenants: Vec::new(),
            time_zone: "UTC".to_owned(),
            llm_options: Vec::new(),
            lease_ttl: "3s",
            dir: tempfile::tempdir()?,
            members: Vec::new(),
        })
    }

    fn tenant(mut self, name: &str, budget_usd: &str, extra: &[&str]) -> Fleet {
        self.tenants.push((
            name.to_owned(),
            budget_usd.to_owned(),
            extra.iter().map(|s| (*s).to_owned()).collect(),
        ));
        self
    }

    fn key(&self, tenant: &str) -> Result<String> {
        self.base.virtual_key(tenant, "k1")
    }

    /// Sets `key = <raw TOML>` in every member's `[llm]`.
    fn llm_option(mut self, key: &str, raw: &str) -> Fleet {
        self.llm_options.push((key.to_owned(), raw.to_owned()));
        self
    }

    fn config(&self, spool: &Path) -> (SentinelConfig, u16) {
        let mut setup = LlmSetup::new(&self.mock_url);
        for (name, budget, extra) in &self.tenants {
            let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
            setup = setup.tenant(name, budget, &extra);
        }
        for (k, v) in &self.llm_options {
            setup = setup.option(k, v);
        }
        let lines = ledger_lines_tz(&self.db, spool, &self.time_zone).replace(
            "lease_ttl = \"3s\"",
            &format!("lease_ttl = \"{}\"", self.lease_ttl),
        );
        let setup = setup.ledger(&lines);
        let config = self.base.clone().listen_port(free_port()).llm(&setup);
        (config, setup.port)
    }

    /// Starts one more member with a spool of its own; returns its index.
    async fn spawn(&mut self) -> Result<usize> {
        let spool = self
            .dir
            .path()
            .join(format!("usage-{}.spool", self.members.len()));
        self.spawn_on(spool).await
    }

    /// Starts one more member on `spool` (e.g. a dead member's, to replay it).
    async fn spawn_on(&mut self, spool: PathBuf) -> Result<usize> {
        let (config, port) = self.config(&spool);
        let process = SentinelProcess::start_with(&config).await?;
        wait_port(port).await?;
        self.members.push(Member {
            process,
            port,
            spool,
        });
        Ok(self.members.len() - 1)
    }

    fn ports(&self) -> Vec<u16> {
        self.members.iter().map(|m| m.port).collect()
    }

    fn pid(&self, i: usize) -> u32 {
        self.members[i].process.pid()
    }

    /// Every member's log, each under a heading.
    fn logs(&self) -> String {
        let mut out = String::new();
        for (i, m) in self.members.iter().enumerate() {
            out.push_str(&format!(
                "===== member {i} (pid {}) =====\n{}",
                m.process.pid(),
                m.process.logs()
            ));
        }
        out
    }

    /// The last lines of every member's log (for failure messages that stay readable).
    fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for (i, m) in self.members.iter().enumerate() {
            let logs = m.process.logs();
            let all: Vec<&str> = logs.lines().collect();
            let tail = &all[all.len().saturating_sub(lines)..];
            out.push_str(&format!(
                "===== member {i} (pid {}), last {} lines =====\n{}\n",
                m.process.pid(),
                tail.len(),
                tail.join("\n")
            ));
        }
        out
    }
}

/// One call's answer as the client saw it.
#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    request_id: Option<String>,
    body: String,
    /// The whole body arrived (a JSON body parsed, or a stream reached `[DONE]`).
    complete: bool,
}

async fn post(
    client: &reqwest::Client,
    port: u16,
    key: &str,
    body: &serde_json::Value,
    headers: &[(&str, String)],
) -> Result<Answer, reqwest::Error> {
    let mut request = client
        .post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
        .bearer_auth(key)
        .json(body);
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let request_id = response
        .headers()
        .get("x-sentinel-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let streamed = body["stream"] == json!(true);
    let (body, complete) = match response.text().await {
        Ok(text) => {
            let complete = if streamed && status == 200 {
                text.contains("data: [DONE]")
            } else {
                serde_json::from_str::<serde_json::Value>(&text).is_ok()
            };
            (text, complete)
        }
        Err(_) => (String::new(), false),
    };
    Ok(Answer {
        status,
        request_id,
        body,
        complete,
    })
}

fn chat_stream(max_tokens: u64) -> serde_json::Value {
    json!({"model": GPT, "messages": [{"role": "user", "content": "hi"}],
           "max_tokens": max_tokens, "stream": true})
}

/// The usage headers of a call whose cost is close to its hold: `output` = `max_tokens`.
fn usage_headers(output: u64) -> Vec<(&'static str, String)> {
    vec![
        ("x-mock-input-tokens", INPUT.to_string()),
        ("x-mock-output-tokens", output.to_string()),
    ]
}

async fn one_i64(db: &Client, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<i64> {
    let row = db.query_one(sql, params).await.context(sql.to_owned())?;
    Ok(row.get::<_, Option<i64>>(0).unwrap_or(0))
}

/// `(limit, spent, reserved)` of a tenant's budget scope (`''` is the tenant's whole budget).
async fn budget_row(db: &Client, tenant: &str, scope: &str) -> Result<(i64, i64, i64)> {
    let row = db
        .query_one(
            "SELECT limit_micros, spent, reserved FROM sentinel.budgets WHERE tenant = $1 AND scope = $2",
            &[&tenant, &scope],
        )
        .await
        .with_context(|| format!("the budget row of {tenant:?} / {scope:?}"))?;
    Ok((row.get(0), row.get(1), row.get(2)))
}

async fn charged_sum(db: &Client, tenant: &str) -> Result<i64> {
    one_i64(
        db,
        "SELECT sum(charged)::bigint FROM sentinel.usage_events WHERE tenant = $1",
        &[&tenant],
    )
    .await
}

async fn live_leases(db: &Client) -> Result<i64> {
    one_i64(
        db,
        "SELECT count(*) FROM sentinel.leases WHERE state = 'live'",
        &[],
    )
    .await
}

/// The leases and usage events of the ledger, one line each, for failure messages.
async fn ledger_dump(db: &Client) -> Result<String> {
    let mut out = String::from("leases:\n");
    for r in db
        .query(
            "SELECT id, replica, state, amount, owed, credit,
                    to_char(created_at, 'HH24:MI:SS.MS'), to_char(expires_at, 'HH24:MI:SS.MS')
             FROM sentinel.leases ORDER BY created_at",
            &[],
        )
        .await?
    {
        out.push_str(&format!(
            "  {} {} {} amount {} owed {} credit {} created {} expires {}\n",
            r.get::<_, String>(0),
            r.get::<_, String>(1),
            r.get::<_, String>(2),
            r.get::<_, i64>(3),
            r.get::<_, i64>(4),
            r.get::<_, i64>(5),
            r.get::<_, String>(6),
            r.get::<_, String>(7),
        ));
    }
    out.push_str("usage events:\n");
    for r in db
        .query(
            "SELECT request_id, coalesce(lease_id, '-'), outcome, cost, charged, replica,
                    to_char(at, 'HH24:MI:SS')
             FROM sentinel.usage_events ORDER BY at, request_id",
            &[],
        )
        .await?
    {
        out.push_str(&format!(
            "  {} lease {} {} cost {} charged {} by {} at {}\n",
            r.get::<_, String>(0),
            r.get::<_, String>(1),
            r.get::<_, String>(2),
            r.get::<_, i64>(3),
            r.get::<_, i64>(4),
            r.get::<_, String>(5),
            r.get::<_, String>(6),
        ));
    }
    Ok(out)
}

/// Waits until the first member has migrated the ledger's schema.
async fn wait_migrated(db: &Client, fleet: &Fleet) -> Result<()> {
    eventually(
        Duration::from_secs(15),
        async || {
            Ok(one_i64(
                db,
                "SELECT count(*) FROM pg_tables WHERE schemaname = 'sentinel' AND tablename = 'migrations'",
                &[],
            )
            .await?
                == 1
                && one_i64(db, "SELECT count(*) FROM sentinel.migrations", &[]).await? >= 1)
        },
        || format!("the ledger migrated\n{}", fleet.log_tails(20)),
    )
    .await
}

/// Polls `check` every 50 ms until it holds; fails with `context()` after `timeout`.
async fn eventually(
    timeout: Duration,
    mut check: impl AsyncFnMut() -> Result<bool>,
    context: impl Fn() -> String,
) -> Result<()> {
    let started = Instant::now();
    loop {
        if check().await? {
            return Ok(());
        }
        if started.elapsed() > timeout {
            bail!("not within {timeout:?}: {}", context());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls a tenant's budget row while a load runs, noting every moment where spend (or spend
/// and holds together, or the events' charges) stood past the limit.
async fn watch_budget(
    db: TestDb,
    tenant: &'static str,
    stop: Arc<AtomicBool>,
) -> Result<(usize, Vec<String>)> {
    let oracle = db.connect().await?;
    let mut samples = 0;
    let mut bad = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let row = oracle
            .query_opt(
                "SELECT limit_micros, spent, reserved,
                        (SELECT coalesce(sum(charged), 0)::bigint FROM sentinel.usage_events WHERE tenant = $1)
                 FROM sentinel.budgets WHERE tenant = $1 AND scope = ''",
                &[&tenant],
            )
            .await?;
        if let Some(row) = row {
            let (limit, spent, reserved, charged): (i64, i64, i64, i64) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            samples += 1;
            if spent > limit || spent + reserved > limit || charged > limit {
                bad.push(format!(
                    "limit {limit}, spent {spent}, reserved {reserved}, events charged {charged}"
                ));
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((samples, bad))
}

/// The `reserved=$…` a call's settled log line shows.
fn logged_reserved(logs: &str, request_id: &str) -> Option<u64> {
    let line = logs
        .lines()
        .find(|l| l.contains(&format!("request_id={request_id} ")) && l.contains(" settled"))?;
    let at = line.find("reserved=$")? + "reserved=$".len();
    let rest = &line[at..];
    let end = rest.find([' ', '}']).unwrap_or(rest.len());
    let (whole, frac) = rest[..end].split_once('.')?;
    Some(whole.parse::<u64>().ok()? * 1_000_000 + frac.parse::<u64>().ok()?)
}

/// 1. Four replicas, one budget, 1,000 concurrent calls of random cost: the budget is never
///    overspent (not even for a moment), nearly all of it is used, refused calls never reach
///    the provider, and once the leases are idle-returned nothing stays reserved.
#[tokio::test]
async fn four_replicas_share_one_budget_under_concurrent_load() -> Result<()> {
    let _heavy = HEAVY.lock().await;
    let started = Instant::now();
    let pg = shared_cluster().await?;
    let db = pg.test_db("ledger_fleet").await?;
    let mock = MockLlm::start().await;
    let seed: u64 = rand::random();
    eprintln!("seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let calls: Vec<u64> = (0..1000).map(|_| rng.gen_range(20..=480)).collect();
    let total: u64 = calls.iter().map(|mt| INPUT + 2 * mt).sum();
    // The budget covers about 40% of what the calls would cost.
    let limit = total * 2 / 5;
    let mut fleet = Fleet::new(&db, &mock)?.tenant("acme", &usd(limit), &[]);
    for _ in 0..4 {
        fleet.spawn().await?;
    }
    let key = fleet.key("acme")?;
    let oracle = db.connect().await?;
    let ports = fleet.ports();
    let client = http_client();

    let stop = Arc::new(AtomicBool::new(false));
    let monitor = tokio::spawn(watch_budget(db.clone(), "acme", stop.clone()));
    let load_started = Instant::now();
    let answers: Vec<(usize, u64, Result<Answer, reqwest::Error>)> =
        futures::stream::iter(calls.iter().copied().enumerate())
            .map(|(i, mt)| {
                let (client, key, port) = (client.clone(), key.clone(), ports[i % 4]);
                async move {
                    let answer = post(&client, port, &key, &chat(mt), &usage_headers(mt)).await;
                    (i % 4, mt, answer)
                }
            })
            .buffer_unordered(64)
            .collect()
            .await;
    let load_took = load_started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (samples, overspent) = monitor.await??;

    let mut ok_by_member = [0i64; 4];
    let (mut ok, mut refused) = (0usize, 0usize);
    for (member, mt, answer) in &answers {
        let answer = answer
            .as_ref()
            .map_err(|e| anyhow::anyhow!("call (max_tokens {mt}) to member {member}: {e}"))?;
        match answer.status {
            200 => {
                ensure!(answer.complete, "a 200 without a whole body: {answer:?}");
                ok += 1;
                ok_by_member[*member] += 1;
            }
            402 => {
                ensure!(
                    answer.body.contains("budget_exceeded"),
                    "a 402 not in OpenAI's shape: {}",
                    answer.body
                );
                refused += 1;
            }
            other => bail!(
                "call to member {member} answered {other}: {}\n{}",
                answer.body,
                fleet.log_tails(30)
            ),
        }
    }
    eprintln!(
        "{ok} calls served, {refused} refused in {load_took:?}; {samples} budget samples; per member {ok_by_member:?}"
    );
    ensure!(
        overspent.is_empty(),
        "the budget stood past its limit at {} of {samples} samples, e.g. {:?}",
        overspent.len(),
        &overspent[..overspent.len().min(5)]
    );
    ensure!(
        refused > 0 && ok > 0,
        "{ok} served, {refused} refused: the limit should cover a part"
    );
    // Refused calls never reached the provider; served ones all completed there.
    ensure!(
        mock.request_count() == ok,
        "the mock saw {} requests for {ok} served calls",
        mock.request_count()
    );
    ensure!(mock.requests().iter().all(|r| r.completed()));

    // Every served call is recorded once, by the member that served it.
    let expected_ok = ok as i64;
    eventually(
        Duration::from_secs(15),
        async || {
            Ok(one_i64(
                &oracle,
                "SELECT count(*) FROM sentinel.usage_events WHERE outcome = 'ok'",
                &[],
            )
            .await?
                == expected_ok)
        },
        || format!("usage events for {ok} calls\n{}", fleet.log_tails(20)),
    )
    .await?;
    for (i, served) in ok_by_member.iter().enumerate() {
        let recorded = one_i64(
            &oracle,
            "SELECT count(*) FROM sentinel.usage_events WHERE outcome = 'ok' AND replica LIKE $1",
            &[&replica_of(fleet.pid(i))],
        )
        .await?;
        ensure!(
            recorded == *served,
            "member {i} served {served} calls, {recorded} recorded as its own"
        );
        ensure!(*served > 0, "member {i} served nothing: {ok_by_member:?}");
    }

    // Idle leases are returned (2 s idle, then the next heartbeat): nothing stays held.
    eventually(
        Duration::from_secs(15),
        async || {
            Ok(budget_row(&oracle, "acme", "").await?.2 == 0 && live_leases(&oracle).await? == 0)
        },
        || format!("reserved back to 0\n{}", fleet.log_tails(20)),
    )
    .await?;
    let (limit_db, spent, reserved) = budget_row(&oracle, "acme", "").await?;
    let charged = charged_sum(&oracle, "acme").await?;
    ensure!(limit_db == limit as i64);
    ensure!(reserved == 0);
    ensure!(spent <= limit_db, "spent {spent} past the limit {limit_db}");
    ensure!(charged == spent, "events charged {charged}, spent {spent}");
    ensure!(
        spent * 100 >= limit_db * 95,
        "only {spent} of {limit_db} used ({:.1}%)",
        spent as f64 * 100.0 / limit_db as f64
    );
    // Metered exactly: what the provider reported, to the micro-dollar.
    let price = mock_price(&mock);
    ensure!(
        spent == price,
        "spent {spent}, the provider's usage costs {price}"
    );
    let expired = one_i64(
        &oracle,
        "SELECT count(*) FROM sentinel.usage_events WHERE outcome = 'expired'",
        &[],
    )
    .await?;
    ensure!(
        expired == 0,
        "{expired} leases of healthy replicas were swept\n{}",
        fleet.log_tails(30)
    );
    let logs = fleet.logs();
    let logged: u64 = charges(&logs).iter().map(|c| c.micros).sum();
    ensure!(
        logged as i64 == spent,
        "the logs say {logged}, the ledger {spent}"
    );
    for needle in ["deadlock", "serialization"] {
        ensure!(!logs.contains(needle), "a log mentions {needle:?}:\n{logs}");
    }
    eprintln!(
        "used {spent} of {limit_db} ({:.2}%); took {:?}",
        spent as f64 * 100.0 / limit_db as f64,
        started.elapsed()
    );
    Ok(())
}

/// 2. A replica killed (SIGKILL) with calls in flight: its lease expires and is swept by the
///    others, nothing stays reserved, nothing is charged twice, and every call the survivors
///    served is recorded exactly once. Restarting it on its spool replays what it had settled,
///    still without a double charge.
#[tokio::test]
async fn a_killed_replica_is_swept_by_the_others_and_nothing_is_charged_twice() -> Result<()> {
    let _heavy = HEAVY.lock().await;
    let started = Instant::now();
    let pg = shared_cluster().await?;
    let db = pg.test_db("ledger_kill").await?;
    let mock = MockLlm::start().await;
    let seed: u64 = rand::random();
    eprintln!("seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    const MAX_MT: u64 = 300;
    let calls: Vec<u64> = (0..300).map(|_| rng.gen_range(20..=MAX_MT)).collect();
    let total: u64 = calls.iter().map(|mt| INPUT + 2 * mt).sum();
    let limit = total * 3 / 5;
    let mut fleet = Fleet::new(&db, &mock)?.tenant("acme", &usd(limit), &[]);
    for _ in 0..3 {
        fleet.spawn().await?;
    }
    let key = fleet.key("acme")?;
    let oracle = db.connect().await?;
    let ports = fleet.ports();
    let pids: Vec<u32> = (0..3).map(|i| fleet.pid(i)).collect();
    let victim = 0usize;
    let client = http_client();
    let inflight: Arc<[AtomicUsize; 3]> = Arc::new(Default::default());
    let issued = Arc::new(AtomicUsize::new(0));
    let dead = Arc::new(AtomicBool::new(false));

    let load = futures::stream::iter(calls.iter().copied().enumerate())
        .map(|(i, mt)| {
            let (client, key, ports) = (client.clone(), key.clone(), ports.clone());
            let (inflight, issued, dead) = (inflight.clone(), issued.clone(), dead.clone());
            async move {
                let mut member = i % 3;
                if member == victim && dead.load(Ordering::SeqCst) {
                    member = 1 + i % 2;
                }
                inflight[member].fetch_add(1, Ordering::SeqCst);
                issued.fetch_add(1, Ordering::SeqCst);
                let mut headers = usage_headers(mt);
                headers.push(("x-mock-chunks", "4".to_owned()));
                headers.push(("x-mock-chunk-delay-ms", "60".to_owned()));
                headers.push(("x-test-member", member.to_string()));
                let answer = post(&client, ports[member], &key, &chat_stream(mt), &headers).await;
                inflight[member].fetch_sub(1, Ordering::SeqCst);
                (member, mt, answer)
            }
        })
        .buffer_unordered(30)
        .collect::<Vec<_>>();
    let victim_process = &mut fleet.members[victim].process;
    let killer = async {
        let waiting = Instant::now();
        while issued.load(Ordering::SeqCst) < 60 || inflight[victim].load(Ordering::SeqCst) < 4 {
            ensure!(
                waiting.elapsed() < Duration::from_secs(30),
                "the victim never had calls in flight"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        dead.store(true, Ordering::SeqCst);
        let in_flight = inflight[victim].load(Ordering::SeqCst);
        victim_process.kill().await?;
        Ok::<_, anyhow::Error>(in_flight)
    };
    let (answers, killed) = tokio::join!(load, killer);
    let in_flight_at_kill = killed?;

    let mut served = [0i64; 3];
    let mut refused = 0;
    let mut victim_calls = 0i64;
    let mut victim_cut = 0;
    for (member, mt, answer) in &answers {
        if *member == victim {
            victim_calls += 1;
        }
        match answer {
            Ok(a) if a.status == 200 && a.complete => served[*member] += 1,
            Ok(a) if a.status == 402 => refused += 1,
            _ if *member == victim => victim_cut += 1,
            Ok(a) => bail!(
                "survivor {member} answered {} (max_tokens {mt}): {}\n{}",
                a.status,
                a.body,
                fleet.log_tails(30)
            ),
            Err(e) => bail!("survivor {member}: {e}"),
        }
    }
    eprintln!(
        "killed with {in_flight_at_kill} calls in flight on it; served {served:?}, refused {refused}, {victim_cut} cut on the victim"
    );
    ensure!(victim_cut > 0, "no call was cut by the kill");
    ensure!(served[1] > 0 && served[2] > 0);

    // The victim's lease expires (lease_ttl 3 s after its last heartbeat) and a survivor
    // sweeps it (every 2 s); the survivors' idle leases are returned.
    eventually(
        Duration::from_secs(25),
        async || {
            Ok(live_leases(&oracle).await? == 0 && budget_row(&oracle, "acme", "").await?.2 == 0)
        },
        || {
            format!(
                "the victim's lease swept and every lease returned\n{}",
                fleet.log_tails(20)
            )
        },
    )
    .await?;
    let victim_like = replica_of(pids[victim]);
    let check_totals = async |when: &str| -> Result<(i64, i64)> {
        let (limit, spent, reserved) = budget_row(&oracle, "acme", "").await?;
        let charged = charged_sum(&oracle, "acme").await?;
        ensure!(reserved == 0, "{when}: {reserved} still reserved");
        ensure!(
            charged == spent,
            "{when}: events charged {charged}, spent {spent}"
        );
        ensure!(
            spent <= limit,
            "{when}: spent {spent} past the limit {limit}"
        );
        Ok((spent, limit))
    };
    let (spent, limit_db) = check_totals("after the sweep").await?;
    let victim_expired = one_i64(
        &oracle,
        "SELECT count(*) FROM sentinel.usage_events WHERE outcome = 'expired' AND replica LIKE $1",
        &[&victim_like],
    )
    .await?;
    ensure!(
        victim_expired >= 1,
        "no expired event for the victim's lease\n{}",
        fleet.log_tails(20)
    );
    let survivors_swept = one_i64(
        &oracle,
        "SELECT count(*) FROM sentinel.leases WHERE state = 'swept' AND replica NOT LIKE $1",
        &[&victim_like],
    )
    .await?;
    ensure!(
        survivors_swept == 0,
        "{survivors_swept} leases of live replicas were swept\n{}",
        fleet.log_tails(30)
    );
    let unmatched = one_i64(
        &oracle,
        "SELECT count(*) FROM sentinel.leases l WHERE l.state = 'swept' AND
             (SELECT count(*) FROM sentinel.usage_events e
              WHERE e.lease_id = l.id AND e.outcome = 'expired') <> 1",
        &[],
    )
    .await?;
    ensure!(
        unmatched == 0,
        "{unmatched} swept leases without exactly one expired event"
    );
    // Every call a survivor served, the provider completed and the ledger recorded once.
    let requests = mock.requests();
    for member in [1usize, 2] {
        let recorded = one_i64(
            &oracle,
            "SELECT count(*) FROM sentinel.usage_events WHERE outcome = 'ok' AND replica LIKE $1",
            &[&replica_of(pids[member])],
        )
        .await?;
        let completed = requests
            .iter()
            .filter(|r| r.completed() && r.header("x-test-member") == Some(&member.to_string()))
            .count() as i64;
        ensure!(
            recorded == served[member] && completed == served[member],
            "survivor {member}: {} served, {completed} completed by the provider, {recorded} recorded",
            served[member]
        );
    }
    eprintln!("after the sweep: spent {spent} of {limit_db}");

    // The victim comes back on its spool: what it had settled but not recorded is replayed
    // against its swept lease, using up the sweeper's charge instead of charging again.
    let spool = fleet.members[victim].spool.clone();
    let back = fleet.spawn_on(spool.clone()).await?;
    eventually(
        Duration::from_secs(15),
        async || Ok(std::fs::metadata(&spool).map_or(0, |m| m.len()) == 0),
        || format!("the victim's spool replayed\n{}", fleet.log_tails(20)),
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (spent_after, _) = check_totals("after the replay").await?;
    let recorded_cost = one_i64(
        &oracle,
        "SELECT sum(cost)::bigint FROM sentinel.usage_events WHERE outcome <> 'expired'",
        &[],
    )
    .await?;
    // Replayed records carry the restarted process's replica id.
    let victim_recorded = one_i64(
        &oracle,
        "SELECT count(*) FROM sentinel.usage_events
         WHERE outcome <> 'expired' AND (replica LIKE $1 OR replica LIKE $2)",
        &[&victim_like, &replica_of(fleet.pid(back))],
    )
    .await?;
    // What the sweep may charge beyond recorded usage: the holds of the victim's calls that
    // never got a record, each at most its bound.
    let allowance = (victim_calls - victim_recorded).max(0) * (2 * MAX_MT as i64 + 100);
    eprintln!(
        "after the replay: spent {spent_after}; recorded usage {recorded_cost}; victim made {victim_calls} calls, {victim_recorded} recorded; allowance {allowance}"
    );
    ensure!(
        spent_after <= recorded_cost + allowance,
        "spent {spent_after}: more than the recorded usage {recorded_cost} plus the bounds of the \
         victim's unrecorded calls ({allowance})"
    );
    eprintln!(
        "restarted victim replayed its spool: {}",
        fleet.members[back].process.logs().contains("replaying")
    );
    eprintln!("took {:?}", started.elapsed());
    Ok(())
}

/// 2b. The sweeper charges what a dead replica's lease owed at its last heartbeat. A call that
///     was in flight at that heartbeat but settled and was recorded before the replica died is
///     already charged: the sweep must not charge it again.
#[tokio::test]
async fn a_swept_lease_does_not_charge_again_what_its_replica_recorded() -> Result<()> {
    let _heavy = HEAVY.lock().await;
    let started = Instant::now();
    let pg = shared_cluster().await?;
    let db = pg.test_db("ledger_owed").await?;
    let mock = MockLlm::start().await;
    let mut fleet = Fleet::new(&db, &mock)?.tenant("acme", "1.00", &[]);
    // The survivor: sweeps every 2 s.
    fleet.spawn().await?;
    let key = fleet.key("acme")?;
    let oracle = db.connect().await?;
    let client = http_client();
    let victim = fleet.spawn().await?;
    let port = fleet.members[victim].port;
    let pid = fleet.pid(victim);
    // In flight for 1.5 s: across at least one heartbeat (every lease_ttl / 3 = 1 s).
    let mut headers = usage_headers(100);
    headers.push(("x-mock-delay-ms", "1500".to_owned()));
    let call = {
        let (client, key) = (client.clone(), key.clone());
        tokio::spawn(async move { post(&client, port, &key, &chat(100), &headers).await })
    };
    // The heartbeat reports the call in flight as owed...
    let waiting = Instant::now();
    let (lease, owed) = loop {
        let rows = oracle
            .query(
                "SELECT id, owed FROM sentinel.leases WHERE replica LIKE $1 AND state = 'live'",
                &[&replica_of(pid)],
            )
            .await?;
        if let Some(row) = rows.first()
            && row.get::<_, i64>(1) > 0
        {
            break (row.get::<_, String>(0), row.get::<_, i64>(1));
        }
        ensure!(
            waiting.elapsed() < Duration::from_secs(10),
            "no heartbeat reported the call in flight"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let answer = call.await??;
    ensure!(answer.status == 200 && answer.complete, "{answer:?}");
    let id = answer.request_id.clone().context("x-sentinel-request-id")?;
    // ...and recording its usage takes that off again, before any later heartbeat.
    let waiting = Instant::now();
    while one_i64(
        &oracle,
        "SELECT count(*) FROM sentinel.usage_events WHERE request_id = $1",
        &[&id],
    )
    .await?
        == 0
    {
        ensure!(
            waiting.elapsed() < Duration::from_secs(10),
            "{id} never recorded"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    fleet.members[victim].process.kill().await?;
    let left: i64 = one_i64(
        &oracle,
        "SELECT owed FROM sentinel.leases WHERE id = $1",
        &[&lease],
    )
    .await?;
    ensure!(
        left == 0,
        "lease {lease} still owes {left} of the {owed} reported, after the call was recorded"
    );
    eventually(
        Duration::from_secs(15),
        async || Ok(live_leases(&oracle).await? == 0),
        || format!("the dead replicas' leases swept\n{}", fleet.log_tails(20)),
    )
    .await?;
    let (_, spent, reserved) = budget_row(&oracle, "acme", "").await?;
    let charged = charged_sum(&oracle, "acme").await?;
    let cost = one_i64(
        &oracle,
        "SELECT sum(cost)::bigint FROM sentinel.usage_events WHERE outcome = 'ok'",
        &[],
    )
    .await?;
    let price = mock_price(&mock);
    let events = oracle
        .query(
            "SELECT request_id, outcome, cost, charged FROM sentinel.usage_events ORDER BY at, request_id",
            &[],
        )
        .await?
        .iter()
        .map(|r| {
            format!(
                "{} {} cost {} charged {}",
                r.get::<_, String>(0),
                r.get::<_, String>(1),
                r.get::<_, i64>(2),
                r.get::<_, i64>(3)
            )
        })
        .collect::<Vec<_>>();
    eprintln!("events: {events:#?}");
    ensure!(reserved == 0, "{reserved} still reserved");
    ensure!(charged == spent, "events charged {charged}, spent {spent}");
    ensure!(
        cost == price,
        "recorded cost {cost}, provider usage {price}"
    );
    ensure!(
        spent == price,
        "spent {spent} for calls that cost {price}: the sweep of lease {lease} charged the {owed} \
         it owed at its last heartbeat although that call had been recorded since\n{events:#?}"
    );
    eprintln!("took {:?}", started.elapsed());
    Ok(())
}

/// 3. The ledger's database stops mid-load and comes back: calls in flight complete, their
///    usage waits in the spool and is replayed; new calls meanwhile are refused 503 without
///    reaching the provider; afterwards the ledger agrees with the provider to the micro-dollar.
#[tokio::test]
async fn a_database_outage_spools_usage_and_refuses_new_calls() -> Result<()> {
    let _heavy = HEAVY.lock().await;
    let started = Instant::now();
    let pg = PgCluster::start().await?;
    let db = pg.test_db("ledger_outage").await?;
    let mock = MockLlm::start().await;
    let mut fleet = Fleet::new(&db, &mock)?.tenant("acme", "1.00", &[]);
    let member = fleet.spawn().await?;
    let port = fleet.members[member].port;
    let spool = fleet.members[member].spool.clone();
    let key = fleet.key("acme")?;
    let client = http_client();
    let mut served = 0;
    for mt in [50, 60, 70] {
        let a = post(&client, port, &key, &chat(mt), &usage_headers(mt)).await?;
        ensure!(a.status == 200, "{a:?}");
        served += 1;
    }
    // Streams of about 5 s each, running across the outage.
    let mut streams = Vec::new();
    for i in 0..12u64 {
        let (client, key) = (client.clone(), key.clone());
        let mt = 40 + 10 * i;
        streams.push(tokio::spawn(async move {
            let mut headers = usage_headers(mt);
            headers.push(("x-mock-chunks", "20".to_owned()));
            headers.push(("x-mock-chunk-delay-ms", "250".to_owned()));
            post(&client, port, &key, &chat_stream(mt), &headers).await
        }));
    }
    mock.wait_until(Duration::from_secs(10), |r| {
        r.len() == 15 && r.iter().all(|r| r.status == 200)
    })
    .await?;
    pg.stop().await?;
    let stopped = Instant::now();
    // Within a few seconds of its last answer the ledger counts as reachable (calls may be served
    // from the lease); past that, new calls are refused.
    tokio::time::sleep(Duration::from_millis(3500).saturating_sub(stopped.elapsed())).await;
    let before = mock.request_count();
    for mt in [30, 40, 50] {
        let a = post(&client, port, &key, &chat(mt), &usage_headers(mt)).await?;
        ensure!(
            a.status == 503 && a.body.contains("ledger"),
            "a new call during the outage: {a:?}\n{}",
            fleet.log_tails(20)
        );
    }
    ensure!(
        mock.request_count() == before,
        "a refused call reached the provider"
    );
    for stream in streams {
        let a = stream.await??;
        ensure!(
            a.status == 200 && a.complete,
            "a stream in flight across the outage: {a:?}\n{}",
            fleet.log_tails(20)
        );
        served += 1;
    }
    let spooled = std::fs::metadata(&spool).map_or(0, |m| m.len());
    ensure!(
        spooled > 0,
        "usage settled during the outage is not in the spool"
    );
    eprintln!(
        "database down for {:?}; {spooled} bytes spooled",
        stopped.elapsed()
    );
    pg.start_again().await?;

    // Back: new calls are served again once the ledger has answered.
    let recovering = Instant::now();
    loop {
        let a = post(&client, port, &key, &chat(80), &usage_headers(80)).await?;
        match a.status {
            200 => {
                served += 1;
                break;
            }
            503 => ensure!(
                recovering.elapsed() < Duration::from_secs(15),
                "still 503 after the restart\n{}",
                fleet.log_tails(20)
            ),
            _ => bail!("{a:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for mt in [90, 100] {
        let a = post(&client, port, &key, &chat(mt), &usage_headers(mt)).await?;
        ensure!(a.status == 200, "{a:?}");
        served += 1;
    }
    let oracle = db.connect().await?;
    let completed = mock.requests().iter().filter(|r| r.completed()).count() as i64;
    ensure!(
        completed == served,
        "{served} served, {completed} completed by the mock"
    );
    eventually(
        Duration::from_secs(15),
        async || {
            Ok(one_i64(
                &oracle,
                "SELECT count(*) FROM sentinel.usage_events WHERE outcome = 'ok'",
                &[],
            )
            .await?
                == completed
                && std::fs::metadata(&spool).map_or(0, |m| m.len()) == 0)
        },
        || {
            format!(
                "{completed} calls recorded and the spool empty\n{}",
                fleet.log_tails(20)
            )
        },
    )
    .await?;
    eventually(
        Duration::from_secs(15),
        async || {
            Ok(live_leases(&oracle).await? == 0 && budget_row(&oracle, "acme", "").await?.2 == 0)
        },
        || format!("every lease returned\n{}", fleet.log_tails(20)),
    )
    .await?;
    let cost = one_i64(
        &oracle,
        "SELECT sum(cost)::bigint FROM sentinel.usage_events WHERE outcome = 'ok'",
        &[],
    )
    .await?;
    let price = mock_price(&mock);
    let usage = mock.total_usage();
    ensure!(
        price == gpt_cost(usage.input_tokens, usage.output_tokens),
        "per-request and total prices differ"
    );
    ensure!(
        cost == price,
        "recorded cost {cost}, the provider's usage costs {price}"
    );
    let (_, spent, _) = budget_row(&oracle, "acme", "").await?;
    let charged = charged_sum(&oracle, "acme").await?;
    let expired = oracle
        .query(
            "SELECT request_id, charged FROM sentinel.usage_events WHERE outcome = 'expired'",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
        .collect::<Vec<_>>();
    ensure!(charged == spent, "events charged {charged}, spent {spent}");
    ensure!(
        spent == price,
        "spent {spent}, but every call completed and was recorded, costing {price}; expired \
         events: {expired:?}\n{}\n{}",
        ledger_dump(&oracle).await?,
        fleet.log_tails(40)
    );
    eprintln!("took {:?}", started.elapsed());
    Ok(())
}

/// 4. 500 dead leases, four live replicas sweeping at once: each lease is swept exactly once,
///    its owed amount charged and the rest returned, without deadlocks or serialization failures.
#[tokio::test]
async fn four_replicas_sweep_500_dead_leases_each_exactly_once() -> Result<()> {
    let _heavy = HEAVY.lock().await;
    let started = Instant::now();
    let pg = shared_cluster().await?;
    let db = pg.test_db("ledger_sweep").await?;
    let mock = MockLlm::start().await;
    let mut fleet = Fleet::new(&db, &mock)?.tenant("acme", "1.00", &[]);
    for _ in 0..4 {
        fleet.spawn().await?;
    }
    let oracle = db.connect().await?;
    wait_migrated(&oracle, &fleet).await?;
    oracle
        .batch_execute(
            "INSERT INTO sentinel.budgets (tenant, scope, limit_micros, period, reserved)
                 SELECT format('sweep%s', lpad(i::text, 4, '0')), '', 10000,
                        (ARRAY['month', 'day', 'total'])[1 + i % 3], 1000
                 FROM generate_series(0, 499) i",
        )
        .await?;
    // While the test holds every one of these budget rows, the dead leases appear: each
    // member's sweep takes a batch of them (SKIP LOCKED) and waits on the budgets, so when the
    // rows are let go the four sweep at once, each holding leases the others must skip.
    let mut locker = db.connect().await?;
    let hold = locker.transaction().await?;
    hold.query(
        "SELECT 1 FROM sentinel.budgets WHERE tenant LIKE 'sweep%' FOR UPDATE",
        &[],
    )
    .await?;
    oracle
        .batch_execute(
            "INSERT INTO sentinel.leases (id, tenant, scopes, replica, amount, owed, expires_at)
                 SELECT format('dead_lease_%s', lpad(i::text, 4, '0')),
                        format('sweep%s', lpad(i::text, 4, '0')), ARRAY[''], 'dead', 1000, 300,
                        now() - interval '1 minute'
                 FROM generate_series(0, 499) i",
        )
        .await?;
    let inserted = Instant::now();
    // Let go when all four wait, and in any case well before a statement times out (5 s).
    let mut most_waiting = 0;
    while inserted.elapsed() < Duration::from_millis(3500) {
        let waiting = one_i64(
            &oracle,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'sentinel-ledger'
                 AND wait_event_type = 'Lock' AND query LIKE '%.sweep(%'",
            &[],
        )
        .await?;
        most_waiting = most_waiting.max(waiting);
        if waiting >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    hold.commit().await?;
    eprintln!(
        "{most_waiting} sweeps waited together, released after {:?}",
        inserted.elapsed()
    );
    ensure!(
        most_waiting >= 2,
        "the members' sweeps never overlapped ({most_waiting} waiting at most)\n{}",
        fleet.log_tails(20)
    );
    eventually(
        Duration::from_secs(20),
        async || {
            Ok(one_i64(
                &oracle,
                "SELECT count(*) FROM sentinel.leases WHERE state = 'live' AND expires_at < now()",
                &[],
            )
            .await?
                == 0)
        },
        || format!("every dead lease swept\n{}", fleet.log_tails(20)),
    )
    .await?;
    eprintln!("500 leases swept within {:?}", inserted.elapsed());
    let wrong_budgets = oracle
        .query(
            "SELECT tenant, spent, reserved FROM sentinel.budgets
             WHERE tenant LIKE 'sweep%' AND (reserved <> 0 OR spent <> 300) ORDER BY tenant LIMIT 5",
            &[],
        )
        .await?;
    ensure!(
        wrong_budgets.is_empty(),
        "budgets not at spent 300 / reserved 0, e.g. {:?}",
        wrong_budgets
            .iter()
            .map(|r| (
                r.get::<_, String>(0),
                r.get::<_, i64>(1),
                r.get::<_, i64>(2)
            ))
            .collect::<Vec<_>>()
    );
    ensure!(
        one_i64(
            &oracle,
            "SELECT count(*) FROM sentinel.budgets WHERE tenant LIKE 'sweep%' AND spent = 300 AND reserved = 0",
            &[],
        )
        .await?
            == 500
    );
    ensure!(
        one_i64(
            &oracle,
            "SELECT count(*) FROM sentinel.leases
             WHERE id LIKE 'dead_lease_%' AND state = 'swept' AND amount = 0 AND credit = 300",
            &[],
        )
        .await?
            == 500,
        "not every dead lease is swept with its credit"
    );
    let not_once = one_i64(
        &oracle,
        "SELECT count(*) FROM sentinel.leases l WHERE l.id LIKE 'dead_lease_%' AND
             (SELECT count(*) FROM sentinel.usage_events e
              WHERE e.lease_id = l.id AND e.outcome = 'expired' AND e.charged = 300) <> 1",
        &[],
    )
    .await?;
    ensure!(
        not_once == 0,
        "{not_once} leases without exactly one expired event"
    );
    ensure!(
        one_i64(
            &oracle,
            "SELECT sum(charged)::bigint FROM sentinel.usage_events WHERE tenant LIKE 'sweep%'",
            &[],
        )
        .await?
            == 500 * 300
    );
    // Each member logs how many it swept: together, each lease once.
    let mut per_member = Vec::new();
    for m in &fleet.members {
        let logs = m.process.logs();
        let swept: u64 = logs
            .lines()
            .filter(|l| l.contains("expired leases charged what they owed and returned"))
            .filter_map(|l| {
                let at = l.find("swept=")? + "swept=".len();
                let rest = &l[at..];
                let end = rest
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(rest.len());
                rest[..end].parse::<u64>().ok()
            })
            .sum();
        per_member.push(swept);
        for line in logs.lines() {
            let lower = line.to_ascii_lowercase();
            let serious = line.contains(" WARN ") || line.contains(" ERROR ");
            ensure!(
                !(serious
                    && (lower.contains("deadlock")
                        || lower.contains("serialization")
                        || lower.contains("ledger sweep failed"))),
                "member pid {}: {line}",
                m.process.pid()
            );
        }
    }
    eprintln!("swept per member: {per_member:?}");
    ensure!(
        per_member.iter().sum::<u64>() == 500,
        "the members' logs count {per_member:?} leases swept, not 500"
    );
    eprintln!("took {:?}", started.elapsed());
    Ok(())
}

/// `lease_take` at `now` (SQL timestamps): `(granted, short_scope, spent)`.
#[allow(clippy::too_many_arguments)]
async fn lease_take(
    db: &Client,
    lease: &str,
    tenant: &str,
    need: i64,
    want: i64,
    now: &str,
    expires: &str,
    tz: &str,
) -> Result<(i64, Option<String>, Option<i64>)> {
    let row = db
        .query_one(
            "SELECT granted, short_scope, spent FROM sentinel.lease_take(
                 $1, $2, ARRAY[''], 'clock-test', $3, $4, 0, $5::text::timestamptz,
                 $6::text::timestamptz, $7)",
            &[&lease, &tenant, &need, &want, &now, &expires, &tz],
        )
        .await?;
    Ok((row.get(0), row.get(1), row.get(2)))
}

/// `record` of an `ok` call costing `cost` at `at`, from `lease`.
#[allow(clippy::too_many_arguments)]
async fn record(
    db: &Client,
    request_id: &str,
    tenant: &str,
    lease: &str,
    cost: i64,
    at: &str,
    close: bool,
    tz: &str,
) -> Result<bool> {
    let row = db
        .query_one(
            "SELECT sentinel.record($1, $2, 'mock-gpt', 'openai', $3, 0, 0, 0, 0, 0, 0, $4, 'ok',
                 false, $5::text::timestamptz, 'clock-test', $6, $7, 0)",
            &[&request_id, &tenant, &lease, &cost, &at, &close, &tz],
        )
        .await?;
    Ok(row.get(0))
}

/// `(spent, period_start in UTC as text)` of a tenant's whole budget.
async fn period_row(db: &Client, tenant: &str) -> Result<(i64, String)> {
    let row = db
        .query_one(
            "SELECT spent, to_char(period_start AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')
             FROM sentinel.budgets WHERE tenant = $1 AND scope = ''",
            &[&tenant],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

/// 5. Period rollover with the clock given to the SQL functions: a month budget's spend starts
///    from zero exactly at the boundary (midnight UTC, or 05:00Z in New York), and an event of
///    the old month recorded after the rollover is kept but counted in neither month twice.
#[tokio::test]
async fn month_budgets_roll_over_at_the_boundary_of_their_time_zone() -> Result<()> {
    let pg = shared_cluster().await?;
    let db = pg.test_db("ledger_clock").await?;
    let mock = MockLlm::start().await;
    let fleet = Fleet::new(&db, &mock)?.tenant("acme", "1.00", &[]);
    // Migrated by `sentinel ledger migrate`: no running replica sweeps with the real clock.
    let (config, _) = fleet.config(&fleet.dir.path().join("usage.spool"));
    let path = fleet.dir.path().join("sentinel.toml");
    std::fs::write(&path, config.render())?;
    let path_text = path.display().to_string();
    run_sentinel(
        &["ledger", "migrate", "--config", path_text.as_str()],
        &config.env_pairs(),
        None,
    )
    .await?
    .ok()?;
    let oracle = db.connect().await?;
    oracle
        .batch_execute(
            "INSERT INTO sentinel.budgets (tenant, scope, limit_micros, period) VALUES
                 ('roll_utc', '', 1000, 'month'), ('roll_ny', '', 1000, 'month')",
        )
        .await?;

    // UTC: December spends 900 at its last second.
    let utc = "UTC";
    let far = "2027-02-01T00:00:00Z";
    let (granted, short, _) = lease_take(
        &oracle,
        "u1",
        "roll_utc",
        1000,
        1000,
        "2026-12-31T23:59:00Z",
        far,
        utc,
    )
    .await?;
    ensure!(granted == 1000 && short.is_none(), "{granted} {short:?}");
    ensure!(
        record(
            &oracle,
            "u-dec-1",
            "roll_utc",
            "u1",
            900,
            "2026-12-31T23:59:59Z",
            false,
            utc
        )
        .await?
    );
    ensure!(period_row(&oracle, "roll_utc").await? == (900, "2026-12-01T00:00:00Z".to_owned()));
    // Still December at 23:59:59: 900 spent and 100 held leave no room for 200.
    let (granted, short, spent) = lease_take(
        &oracle,
        "u2",
        "roll_utc",
        200,
        200,
        "2026-12-31T23:59:59Z",
        far,
        utc,
    )
    .await?;
    ensure!(
        granted == 0 && short.as_deref() == Some("") && spent == Some(900),
        "December's last second: granted {granted}, short {short:?}, spent {spent:?}"
    );
    let december_spent = period_row(&oracle, "roll_utc").await?.0;
    // January 1st 00:00:00: spend starts over, so 900 fits beside the 100 still held.
    let (granted, short, _) = lease_take(
        &oracle,
        "u3",
        "roll_utc",
        900,
        900,
        "2027-01-01T00:00:00Z",
        far,
        utc,
    )
    .await?;
    ensure!(
        granted == 900 && short.is_none(),
        "January's first second: granted {granted}, short {short:?}"
    );
    ensure!(period_row(&oracle, "roll_utc").await? == (0, "2027-01-01T00:00:00Z".to_owned()));
    // A December call recorded late (after the rollover): stored, not counted in January.
    ensure!(
        record(
            &oracle,
            "u-dec-late",
            "roll_utc",
            "u1",
            50,
            "2026-12-31T23:59:30Z",
            true,
            utc
        )
        .await?
    );
    ensure!(
        one_i64(
            &oracle,
            "SELECT cost FROM sentinel.usage_events WHERE request_id = 'u-dec-late'",
            &[]
        )
        .await?
            == 50,
        "the late December event is not stored"
    );
    ensure!(
        record(
            &oracle,
            "u-jan-1",
            "roll_utc",
            "u3",
            300,
            "2027-01-01T00:00:01Z",
            false,
            utc
        )
        .await?
    );
    // Replayed (e.g. from a spool): nothing changes.
    ensure!(
        !record(
            &oracle,
            "u-jan-1",
            "roll_utc",
            "u3",
            300,
            "2027-01-01T00:00:01Z",
            false,
            utc
        )
        .await?
    );
    let (january_spent, start) = period_row(&oracle, "roll_utc").await?;
    ensure!(start == "2027-01-01T00:00:00Z");
    let (_, _, reserved) = budget_row(&oracle, "roll_utc", "").await?;
    ensure!(
        reserved == 600,
        "held: u3's 900 less the 300 recorded; u1 closed: {reserved}"
    );
    let in_month = async |from: &str, to: &str| -> Result<i64> {
        one_i64(
            &oracle,
            "SELECT sum(charged)::bigint FROM sentinel.usage_events WHERE tenant = 'roll_utc'
                 AND at >= $1::text::timestamptz AND at < $2::text::timestamptz",
            &[&from, &to],
        )
        .await
    };
    let january_events = in_month("2027-01-01T00:00:00Z", "2027-02-01T00:00:00Z").await?;
    ensure!(
        january_spent == 300 && january_events == 300,
        "January: spent {january_spent}, its events charged {january_events} (the late December \
         event must not count)"
    );
    // New York: the month ends at 05:00Z.
    let ny = "America/New_York";
    let (granted, _, _) = lease_take(
        &oracle,
        "n1",
        "roll_ny",
        1000,
        1000,
        "2027-01-01T04:00:00Z",
        far,
        ny,
    )
    .await?;
    ensure!(granted == 1000);
    ensure!(
        record(
            &oracle,
            "n-dec-1",
            "roll_ny",
            "n1",
            800,
            "2027-01-01T04:59:59Z",
            false,
            ny
        )
        .await?
    );
    ensure!(
        period_row(&oracle, "roll_ny").await? == (800, "2026-12-01T05:00:00Z".to_owned()),
        "{:?}",
        period_row(&oracle, "roll_ny").await?
    );
    for now in ["2027-01-01T00:00:00Z", "2027-01-01T04:59:59Z"] {
        let (granted, short, spent) =
            lease_take(&oracle, "n2", "roll_ny", 300, 300, now, far, ny).await?;
        ensure!(
            granted == 0 && short.as_deref() == Some("") && spent == Some(800),
            "still December in New York at {now}: granted {granted}, short {short:?}, spent {spent:?}"
        );
    }
    let (granted, short, _) = lease_take(
        &oracle,
        "n3",
        "roll_ny",
        300,
        300,
        "2027-01-01T05:00:00Z",
        far,
        ny,
    )
    .await?;
    ensure!(
        granted == 300 && short.is_none(),
        "January in New York at 05:00Z: granted {granted}, short {short:?}"
    );
    ensure!(period_row(&oracle, "roll_ny").await? == (0, "2027-01-01T05:00:00Z".to_owned()));
    ensure!(
        record(
            &oracle,
            "n-jan-1",
            "roll_ny",
            "n3",
            100,
            "2027-01-01T05:00:01Z",
            false,
            ny
        )
        .await?
    );
    ensure!(period_row(&oracle, "roll_ny").await?.0 == 100);

    // No gap, no double count: December's events charged what December spent.
    let december_events = in_month("2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z").await?;
    let rows = oracle
        .query(
            "SELECT request_id, cost, charged, at::text FROM sentinel.usage_events
             WHERE tenant = 'roll_utc' ORDER BY at",
            &[],
        )
        .await?
        .iter()
        .map(|r| {
            format!(
                "{} cost {} charged {} at {}",
                r.get::<_, String>(0),
                r.get::<_, i64>(1),
                r.get::<_, i64>(2),
                r.get::<_, String>(3)
            )
        })
        .collect::<Vec<_>>();
    ensure!(
        december_events == december_spent,
        "December spent {december_spent}, but its events say they charged {december_events}: \
         the late event claims a charge no period counted\n{rows:#?}"
    );
    Ok(())
}

/// A tenant with a budget of its own for one model: calls to that model are held directly in
/// the database across both scopes, refused 402 naming the model when its budget is short,
/// while the tenant's other models still pass.
#[tokio::test]
async fn a_model_budget_is_held_in_the_database_across_both_scopes() -> Result<()> {
    let pg = shared_cluster().await?;
    let db = pg.test_db("ledger_model").await?;
    let mock = MockLlm::start().await;
    let mut fleet = Fleet::new(&db, &mock)?.tenant(
        "acme",
        "1.00",
        &["model_budgets_usd = { \"mock-gpt\" = \"0.000500\" }"],
    );
    let member = fleet.spawn().await?;
    let port = fleet.members[member].port;
    let key = fleet.key("acme")?;
    let oracle = db.connect().await?;
    wait_migrated(&oracle, &fleet).await?;
    let client = http_client();

    // A slow stream: while it runs, its hold is in the database, in both scopes.
    let stream = {
        let (client, key) = (client.clone(), key.clone());
        tokio::spawn(async move {
            let mut headers = usage_headers(100);
            headers[0].1 = "20".to_owned();
            headers.push(("x-mock-chunks", "10".to_owned()));
            headers.push(("x-mock-chunk-delay-ms", "150".to_owned()));
            post(&client, port, &key, &chat_stream(100), &headers).await
        })
    };
    let mut held = None;
    eventually(
        Duration::from_secs(10),
        async || {
            let rows = oracle
                .query(
                    "SELECT id, amount FROM sentinel.leases
                     WHERE state = 'live' AND scopes = ARRAY['', 'mock-gpt']",
                    &[],
                )
                .await?;
            if let Some(r) = rows.first() {
                held = Some((r.get::<_, String>(0), r.get::<_, i64>(1)));
            }
            Ok(held.is_some())
        },
        || format!("a direct hold over both scopes\n{}", fleet.log_tails(20)),
    )
    .await?;
    let (lease, amount) = held.context("held")?;
    let tenant_scope = budget_row(&oracle, "acme", "").await?;
    let model_scope = budget_row(&oracle, "acme", GPT).await?;
    ensure!(
        tenant_scope.2 == amount && model_scope.2 == amount && amount >= 220,
        "hold {amount}: tenant scope {tenant_scope:?}, model scope {model_scope:?}"
    );
    ensure!(model_scope.0 == 500);
    let a = stream.await??;
    ensure!(a.status == 200 && a.complete, "{a:?}");
    let id = a.request_id.clone().context("x-request-id")?;
    eventually(
        Duration::from_secs(10),
        async || Ok(budget_row(&oracle, "acme", GPT).await?.1 == 220),
        || format!("the stream's usage recorded\n{}", fleet.log_tails(20)),
    )
    .await?;
    ensure!(
        logged_reserved(&fleet.logs(), &id) == Some(amount as u64),
        "the hold in the database is not the call's bound: {amount}"
    );
    let row = oracle
        .query_one(
            "SELECT state, amount FROM sentinel.leases WHERE id = $1",
            &[&lease],
        )
        .await?;
    ensure!(
        (row.get::<_, String>(0), row.get::<_, i64>(1)) == ("closed".to_owned(), 0),
        "the one-call lease is not closed"
    );
    ensure!(budget_row(&oracle, "acme", GPT).await? == (500, 220, 0));
    ensure!(budget_row(&oracle, "acme", "").await?.1 == 220);

    // 220 more fits in 500; then the model's budget is short.
    let mut headers = usage_headers(100);
    headers[0].1 = "20".to_owned();
    let a = post(&client, port, &key, &chat(100), &headers).await?;
    ensure!(a.status == 200, "{a:?}");
    let before = mock.request_count();
    let a = post(&client, port, &key, &chat(100), &headers).await?;
    ensure!(
        a.status == 402 && a.body.contains("for model mock-gpt"),
        "the model's budget is short: {a:?}"
    );
    ensure!(
        mock.request_count() == before,
        "a refused call reached the provider"
    );
    // Other models still pass, against the tenant's budget only.
    let other = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
                       "max_tokens": 100});
    let a = post(&client, port, &key, &other, &headers).await?;
    ensure!(
        a.status == 200,
        "another model: {a:?}\n{}",
        fleet.log_tails(20)
    );

    eventually(
        Duration::from_secs(15),
        async || {
            Ok(
                one_i64(&oracle, "SELECT count(*) FROM sentinel.usage_events", &[]).await? == 3
                    && budget_row(&oracle, "acme", "").await?.2 == 0,
            )
        },
        || {
            format!(
                "three calls recorded and the tenant's lease returned\n{}",
                fleet.log_tails(20)
            )
        },
    )
    .await?;
    let (_, model_spent, model_reserved) = budget_row(&oracle, "acme", GPT).await?;
    let (_, tenant_spent, _) = budget_row(&oracle, "acme", "").await?;
    let other_cost = one_i64(
        &oracle,
        "SELECT sum(charged)::bigint FROM sentinel.usage_events WHERE model = 'gpt-4o-mini'",
        &[],
    )
    .await?;
    ensure!(
        model_spent == 440 && model_reserved == 0,
        "model scope spent {model_spent}, reserved {model_reserved}"
    );
    ensure!(other_cost > 0);
    ensure!(
        tenant_spent == 440 + other_cost && tenant_spent == charged_sum(&oracle, "acme").await?,
        "tenant scope spent {tenant_spent}: 440 for mock-gpt and {other_cost} for gpt-4o-mini"
    );
    Ok(())
}

/// With `ledger_outage = "use-lease"`, calls during a database outage are served from the lease
/// this replica already holds, their usage spooled and recorded after the outage; a call larger
/// than what the lease has left is refused 503.
#[tokio::test]
async fn with_use_lease_an_outage_is_served_from_the_held_lease() -> Result<()> {
    let _heavy = HEAVY.lock().await;
    let pg = PgCluster::start().await?;
    let db = pg.test_db("ledger_use_lease").await?;
    let mock = MockLlm::start().await;
    let mut fleet = Fleet::new(&db, &mock)?
        .tenant("acme", "1.00", &[])
        .llm_option("ledger_outage", "\"use-lease\"");
    // A longer lease life than the other tests, so it outlives the outage detection.
    fleet.lease_ttl = "30s";
    let member = fleet.spawn().await?;
    let port = fleet.members[member].port;
    let key = fleet.key("acme")?;
    let client = http_client();
    // Warm up: concurrent calls grow the lease to several seconds of this rate.
    let mut warm = Vec::new();
    for _ in 0..10 {
        let (client, key) = (client.clone(), key.clone());
        warm.push(tokio::spawn(async move {
            post(&client, port, &key, &chat(50), &usage_headers(50)).await
        }));
    }
    for w in warm {
        let a = w.await??;
        ensure!(a.status == 200, "{a:?}");
    }
    let oracle = db.connect().await?;
    let held = one_i64(
        &oracle,
        "SELECT coalesce(sum(amount), 0)::bigint FROM sentinel.leases WHERE state = 'live'",
        &[],
    )
    .await?;
    drop(oracle);
    pg.stop().await?;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    // Past the reachability window: served from the lease all the same.
    let a = post(&client, port, &key, &chat(20), &usage_headers(20)).await?;
    ensure!(
        a.status == 200,
        "a small call during the outage (lease held {held}): {a:?}\n{}",
        fleet.log_tails(20)
    );
    // More than the lease can hold: refused, never sent.
    let before = mock.request_count();
    let big = json!({"model": GPT, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1000, "n": 100});
    let a = post(&client, port, &key, &big, &usage_headers(10)).await?;
    ensure!(
        a.status == 503,
        "a call larger than the lease during the outage: {a:?}"
    );
    ensure!(
        mock.request_count() == before,
        "a refused call reached the provider"
    );
    pg.start_again().await?;
    let oracle = db.connect().await?;
    let completed = mock.requests().iter().filter(|r| r.completed()).count() as i64;
    eventually(
        Duration::from_secs(20),
        async || {
            Ok(one_i64(
                &oracle,
                "SELECT count(*) FROM sentinel.usage_events WHERE outcome = 'ok'",
                &[],
            )
            .await?
                == completed)
        },
        || {
            format!(
                "{completed} calls recorded after the outage\n{}",
                fleet.log_tails(20)
            )
        },
    )
    .await?;
    let cost = one_i64(
        &oracle,
        "SELECT sum(cost)::bigint FROM sentinel.usage_events WHERE outcome = 'ok'",
        &[],
    )
    .await?;
    ensure!(
        cost == mock_price(&mock),
        "recorded {cost}, provider usage {}",
        mock_price(&mock)
    );
    Ok(())
}
