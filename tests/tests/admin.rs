//! The admin port, black box: the `sentinel` binary with a real Postgres and the mock LLM
//! provider, driven over HTTP (reqwest) and the console (psql).
//!
//! - Every JSON endpoint with no token, a wrong or expired token, a minted one, and bad input.
//! - The kill switch: a blocked tenant's LLM calls get 403 without reaching the provider, and
//!   with `db` its database statements end its session; unblock lifts both.
//! - `/readyz` follows the upstream Postgres.
//! - The console: each SHOW answers rows with the expected columns and values; PAUSE/RESUME.
//! - Reload (API, SIGHUP, console): a valid change applies without dropping a connection; an
//!   invalid file is refused with the reason and the old config keeps running.
//! - SIGTERM during a transaction and an LLM stream: both finish, new work is refused, exit 0.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use reqwest::StatusCode;
use sentinel_tests::clients::{connect_dsn, psql, sqlstate};
use sentinel_tests::llm::{GPT, LlmSetup, http_client, wait_port};
use sentinel_tests::mock_llm::MockLlm;
use sentinel_tests::{
    Auth, PgCluster, SentinelConfig, SentinelProcess, TestDb, run_sentinel, shared_cluster,
};
use serde_json::{Value, json};

const CONSOLE_USER: &str = "ops";
const CONSOLE_PASSWORD: &str = "console-secret";

struct Admin {
    sentinel: SentinelProcess,
    config: SentinelConfig,
    db: TestDb,
    llm_base: String,
    url: String,
    token: String,
    http: reqwest::Client,
}

/// Sentinel with the database's role as a SCRAM user, a console user, and LLM egress with
/// tenants `acme` ($1.00) and `globex`, in front of `mock`.
async fn start(
    pg: &PgCluster,
    mock: &MockLlm,
    configure: impl FnOnce(SentinelConfig) -> SentinelConfig,
) -> Result<Admin> {
    let db = pg.test_db("admin").await?;
    let setup = LlmSetup::new(&mock.base_url())
        .tenant("acme", "1.00", &[])
        .tenant("globex", "1.00", &[]);
    let config = configure(
        SentinelConfig::new(pg)
            .user_for(&db, Auth::Scram(&db.password))
            .user(CONSOLE_USER, Auth::Scram(CONSOLE_PASSWORD), &db.role)
            .option("admin", "console_users", "[\"ops\"]")
            .llm(&setup),
    );
    let sentinel = SentinelProcess::start_with(&config).await?;
    wait_port(setup.port).await?;
    let token = admin_token(&sentinel, &config, "ops", None).await?;
    Ok(Admin {
        url: config.admin_url(),
        sentinel,
        config,
        db,
        llm_base: setup.base_url(),
        token,
        http: http_client(),
    })
}

/// `sentinel admin-token issue` against the running config.
async fn admin_token(
    sentinel: &SentinelProcess,
    config: &SentinelConfig,
    name: &str,
    ttl: Option<&str>,
) -> Result<String> {
    let path = sentinel.config_path().display().to_string();
    let mut args = vec!["admin-token", "issue", "--config", &path, "--name", name];
    if let Some(ttl) = ttl {
        args.extend(["--ttl", ttl]);
    }
    let out = run_sentinel(&args, &config.env_pairs(), None).await?.ok()?;
    let token = out.stdout.trim().to_owned();
    ensure!(token.starts_with("sat1."), "not an admin token: {token}");
    Ok(token)
}

impl Admin {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> Result<(StatusCode, reqwest::header::HeaderMap, Value)> {
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req
                .header("content-type", "application/json")
                .body(body.to_owned());
        }
        let resp = req.send().await.with_context(|| path.to_owned())?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await?;
        let json = serde_json::from_str(&text)
            .with_context(|| format!("{path} answered {status} with non-JSON: {text}"))?;
        Ok((status, headers, json))
    }

    async fn get(&self, path: &str) -> Result<(StatusCode, Value)> {
        let (s, _, v) = self
            .call(reqwest::Method::GET, path, Some(&self.token), None)
            .await?;
        Ok((s, v))
    }

    async fn post(&self, path: &str, body: Option<&str>) -> Result<(StatusCode, Value)> {
        let (s, _, v) = self
            .call(reqwest::Method::POST, path, Some(&self.token), body)
            .await?;
        Ok((s, v))
    }

    async fn app_client(&self) -> Result<tokio_postgres::Client> {
        Ok(connect_dsn(
            &self
                .sentinel
                .dsn(&self.db.role, &self.db.password, &self.db.name),
        )
        .await?)
    }

    async fn chat(&self, tenant: &str) -> Result<reqwest::Response> {
        let key = self.config.virtual_key(tenant, &format!("{tenant}-key"))?;
        Ok(self
            .http
            .post(format!("{}/v1/chat/completions", self.llm_base))
            .bearer_auth(key)
            .json(&json!({"model": GPT, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100}))
            .send()
            .await?)
    }

    /// The `/metrics` text.
    async fn metrics(&self) -> Result<String> {
        let resp = self
            .http
            .get(format!("{}/metrics", self.url))
            .send()
            .await?;
        Ok(resp.text().await?)
    }

    async fn console(&self, sql: &str) -> Result<std::process::Output> {
        psql(
            self.sentinel.port(),
            CONSOLE_USER,
            CONSOLE_PASSWORD,
            "sentinel",
            sql,
        )
        .await
    }
}

fn error_of(v: &Value) -> &str {
    v["error"].as_str().unwrap_or("")
}

#[tokio::test]
async fn json_api_needs_a_valid_token_and_names_bad_input() -> Result<()> {
    let pg = shared_cluster().await?;
    let mock = MockLlm::start().await;
    let admin = start(pg, &mock, |c| c).await?;
    use reqwest::Method;

    // Probes need no token.
    let (s, _, v) = admin.call(Method::GET, "/healthz", None, None).await?;
    ensure!(s == 200 && v["status"] == "ok", "{s} {v}");
    let (s, _, v) = admin.call(Method::GET, "/readyz", None, None).await?;
    ensure!(s == 200 && v["ready"] == true, "{s} {v}");

    // Every /v1 endpoint refuses a missing, malformed, forged or expired token.
    let expired = admin_token(&admin.sentinel, &admin.config, "short", Some("1s")).await?;
    let forged = format!("{}x", &admin.token[..admin.token.len() - 1]);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let endpoints = [
        (Method::GET, "/v1/tenants/acme"),
        (Method::PUT, "/v1/tenants/acme/budget"),
        (Method::POST, "/v1/tenants/acme/block"),
        (Method::POST, "/v1/tenants/acme/unblock"),
        (Method::GET, "/v1/pools"),
        (Method::GET, "/v1/clients"),
        (Method::POST, "/v1/reload"),
    ];
    for (method, path) in &endpoints {
        for token in [
            None,
            Some("not-a-token"),
            Some(forged.as_str()),
            Some(expired.as_str()),
        ] {
            let (s, headers, v) = admin.call(method.clone(), path, token, None).await?;
            ensure!(
                s == 401 && headers.contains_key("www-authenticate") && !error_of(&v).is_empty(),
                "{method} {path} with {token:?}: {s} {v}"
            );
        }
    }
    ensure!(
        !admin.sentinel.logs().contains(&admin.token[5..]),
        "a token reached the log"
    );

    // With the token.
    let _client = admin.app_client().await?;
    let (s, v) = admin.get("/v1/pools").await?;
    ensure!(s == 200, "{s} {v}");
    let pool = v["pools"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["database"] == admin.db.name.as_str()))
        .context(format!("no pool for the database: {v}"))?;
    ensure!(
        pool["user"] == admin.db.role.as_str() && pool["pool_size"] == 20,
        "{pool}"
    );
    let (s, v) = admin.get("/v1/clients").await?;
    let clients = v["clients"].as_array().context("clients")?;
    ensure!(
        s == 200
            && clients.iter().any(|c| c["user"] == admin.db.role.as_str()
                && c["database"] == admin.db.name.as_str()
                && c["state"] == "idle"
                && c["addr"] == "127.0.0.1"),
        "{v}"
    );

    let (s, v) = admin.get("/v1/tenants/acme").await?;
    let budget = &v["budgets"][0];
    ensure!(
        s == 200 && budget["limit"] == 1_000_000 && budget["spent"] == 0 && v["blocked"].is_null(),
        "{s} {v}"
    );
    // A call is charged and shows in the tenant's usage.
    let resp = admin.chat("acme").await?;
    ensure!(resp.status() == 200, "{}", resp.status());
    let _ = resp.text().await?;
    let (_, v) = admin.get("/v1/tenants/acme").await?;
    ensure!(
        v["budgets"][0]["spent"].as_u64().unwrap_or(0) > 0
            && v["recent_usage"].as_array().is_some_and(|u| u.len() == 1),
        "{v}"
    );

    // Setting a budget, with good and bad bodies.
    let put = |body: &'static str| {
        admin.call(
            Method::PUT,
            "/v1/tenants/acme/budget",
            Some(&admin.token),
            Some(body),
        )
    };
    let (s, _, v) = put(r#"{"budget_usd": "2.50", "period": "day"}"#).await?;
    ensure!(
        s == 200 && v["budgets"][0]["limit"] == 2_500_000 && v["budgets"][0]["period"] == "day",
        "{s} {v}"
    );
    for (body, says) in [
        (r#"{"budget_usd": "2.50", "limit": 3}"#, "unknown field"),
        (r#"{"budget_usd": "lots"}"#, "budget"),
        (
            r#"{"budget_usd": "1", "period": "week"}"#,
            "`day`, `month`, `total`",
        ),
        (
            r#"{"budget_usd": "1", "soft_threshold": 2}"#,
            "soft_threshold",
        ),
        ("{not json", "invalid budget"),
        ("{}", "budget_usd"),
    ] {
        let (s, _, v) = put(body).await?;
        ensure!(
            s == 400 && error_of(&v).contains(says),
            "PUT {body}: {s} {v} (should say {says:?})"
        );
    }
    let (_, v) = admin.get("/v1/tenants/acme").await?;
    ensure!(
        v["budgets"][0]["limit"] == 2_500_000,
        "a refused PUT changed the budget: {v}"
    );
    // A model budget can be changed, not dropped.
    let (s, _, v) =
        put(r#"{"budget_usd": "2.50", "model_budgets_usd": {"mock-gpt": "0.50"}}"#).await?;
    ensure!(
        s == 200 && v["budgets"].as_array().is_some_and(|b| b.len() == 2),
        "{s} {v}"
    );
    let (s, _, v) = put(r#"{"budget_usd": "2.50"}"#).await?;
    ensure!(s == 400 && error_of(&v).contains("mock-gpt"), "{s} {v}");
    let (s, _, v) =
        put(r#"{"budget_usd": "2.50", "model_budgets_usd": {"mock-gpt": "0.75"}}"#).await?;
    ensure!(s == 200, "{s} {v}");

    // Bad tenant ids, wrong methods, unknown paths.
    let (s, v) = admin.get("/v1/tenants/a%20b").await?;
    ensure!(s == 400 && error_of(&v).contains("tenant id"), "{s} {v}");
    let (s, headers, _) = admin
        .call(Method::DELETE, "/v1/pools", Some(&admin.token), None)
        .await?;
    ensure!(
        s == 405 && headers.get("allow").is_some_and(|a| a == "GET"),
        "{s} {headers:?}"
    );
    let (s, _) = admin.get("/v1/nothing").await?;
    ensure!(s == 404, "{s}");
    let (s, v) = admin
        .post("/v1/tenants/acme/block", Some("{\"database\": true}"))
        .await?;
    ensure!(
        s == 400 && error_of(&v).contains("unknown field"),
        "{s} {v}"
    );
    Ok(())
}

#[tokio::test]
async fn the_kill_switch_refuses_llm_calls_and_optionally_db_statements() -> Result<()> {
    let pg = shared_cluster().await?;
    let mock = MockLlm::start().await;
    let admin = start(pg, &mock, |c| {
        c.tenancy()
            .tenancy_global_tables(&["marker"])
            .tenancy_sources(&["comment", "startup", "set"])
    })
    .await?;
    let su = pg.connect_superuser(&admin.db.name).await?;
    su.batch_execute(&format!(
        "CREATE TABLE marker (note text); GRANT ALL ON marker TO \"{}\"",
        admin.db.role
    ))
    .await?;

    let (s, v) = admin.post("/v1/tenants/acme/block", None).await?;
    ensure!(
        s == 200 && v["blocked"]["llm"] == true && v["blocked"]["db"] == false,
        "{v}"
    );
    let before = mock.request_count();
    let resp = admin.chat("acme").await?;
    let status = resp.status();
    let body: Value = resp.json().await?;
    ensure!(
        status == 403
            && body["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("blocked"),
        "{status} {body}"
    );
    ensure!(
        mock.request_count() == before,
        "a blocked call reached the provider"
    );
    ensure!(
        admin.chat("globex").await?.status() == 200,
        "another tenant was blocked"
    );
    // LLM only: the tenant's statements still run.
    let client = admin.app_client().await?;
    client
        .simple_query("/*tenant='acme'*/ SELECT count(*) FROM marker")
        .await
        .context("an LLM-only block stopped the database")?;

    let (s, v) = admin
        .post("/v1/tenants/acme/block", Some(r#"{"db": true}"#))
        .await?;
    ensure!(s == 200 && v["blocked"]["db"] == true, "{v}");
    let err = client
        .simple_query("/*tenant='acme'*/ SELECT count(*) FROM marker")
        .await
        .err()
        .context("a db-blocked tenant's statement ran")?;
    ensure!(sqlstate(&err) == "42501", "{err:?}");
    ensure!(client.is_closed() || client.simple_query("SELECT 1").await.is_err());
    let other = admin.app_client().await?;
    other
        .simple_query("/*tenant='globex'*/ SELECT count(*) FROM marker")
        .await
        .context("another tenant's statement was refused")?;
    let (_, v) = admin.get("/v1/tenants/acme").await?;
    ensure!(
        v["blocked"]["db"] == true && v["refusals"]["blocked"] == 1,
        "{v}"
    );

    let (s, v) = admin.post("/v1/tenants/acme/unblock", None).await?;
    ensure!(s == 200 && v["was_blocked"] == true, "{v}");
    ensure!(
        admin.chat("acme").await?.status() == 200,
        "unblock did not lift the LLM block"
    );
    admin
        .app_client()
        .await?
        .simple_query("/*tenant='acme'*/ SELECT count(*) FROM marker")
        .await
        .context("unblock did not lift the database block")?;
    let metrics = admin.metrics().await?;
    ensure!(
        metrics.contains("sentinel_blocked_total{service=\"llm\"} 1")
            && metrics.contains("sentinel_blocked_total{service=\"db\"} 1"),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test]
async fn readiness_follows_the_upstream() -> Result<()> {
    // A cluster of its own: this test stops it.
    let pg = Box::leak(Box::new(PgCluster::start().await?));
    let mock = MockLlm::start().await;
    let admin = start(pg, &mock, |c| c).await?;
    let ready = || admin.call(reqwest::Method::GET, "/readyz", None, None);
    let (s, _, v) = ready().await?;
    ensure!(s == 200 && v["checks"]["postgres"] == "ok", "{s} {v}");
    pg.stop().await?;
    // Answers are cached for a second.
    eventually(
        Duration::from_secs(5),
        async || Ok(ready().await?.0 == 503),
        "readyz turns 503",
    )
    .await?;
    let (s, _, v) = ready().await?;
    ensure!(
        s == 503 && v["ready"] == false && v["reason"].as_str().unwrap_or("").contains("upstream"),
        "{s} {v}"
    );
    ensure!(
        !v.to_string().contains(&pg.port().to_string()),
        "the unauthenticated answer names the upstream address: {v}"
    );
    let (s, _, _) = admin
        .call(reqwest::Method::GET, "/healthz", None, None)
        .await?;
    ensure!(s == 200, "healthz follows the upstream: {s}");
    pg.start_again().await?;
    eventually(
        Duration::from_secs(5),
        async || Ok(ready().await?.0 == 200),
        "readyz turns 200 again",
    )
    .await?;
    Ok(())
}

/// Rows of `psql -A -t` output, split on `|`.
fn rows(out: &std::process::Output) -> Result<Vec<Vec<String>>> {
    ensure!(
        out.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.split('|').map(str::to_owned).collect())
        .collect())
}

/// The column names of a SHOW, from psql's unaligned output with headers.
async fn columns(admin: &Admin, sql: &str) -> Result<Vec<String>> {
    let out = sentinel_tests::clients::psql_with_headers(
        admin.sentinel.port(),
        CONSOLE_USER,
        CONSOLE_PASSWORD,
        "sentinel",
        sql,
    )
    .await?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    Ok(text
        .lines()
        .next()
        .unwrap_or("")
        .split('|')
        .map(str::to_owned)
        .collect())
}

#[tokio::test]
async fn the_console_shows_pools_clients_servers_stats_and_tenants() -> Result<()> {
    let pg = shared_cluster().await?;
    let mock = MockLlm::start().await;
    let admin = start(pg, &mock, |c| c).await?;
    let client = admin.app_client().await?;
    client.simple_query("SELECT 1").await?;
    let resp = admin.chat("acme").await?;
    ensure!(resp.status() == 200);
    let _ = resp.text().await?;

    let expect = [
        (
            "SHOW POOLS",
            &[
                "database",
                "user",
                "cl_active",
                "cl_waiting",
                "sv_active",
                "sv_idle",
                "pool_mode",
                "pool_size",
            ][..],
        ),
        (
            "SHOW CLIENTS",
            &[
                "type",
                "user",
                "database",
                "state",
                "addr",
                "port",
                "local_addr",
                "local_port",
                "connect_time",
                "request_time",
                "tls",
                "id",
                "server_pid",
                "tenant",
            ][..],
        ),
        (
            "SHOW SERVERS",
            &[
                "type",
                "user",
                "database",
                "state",
                "addr",
                "port",
                "connect_time",
                "remote_pid",
                "client_id",
            ][..],
        ),
        (
            "SHOW STATS",
            &[
                "database",
                "total_xact_count",
                "total_query_count",
                "total_xact_time",
                "total_query_time",
                "total_wait_time",
                "avg_xact_time",
                "avg_query_time",
                "avg_wait_time",
            ][..],
        ),
        (
            "SHOW TENANTS",
            &[
                "tenant",
                "blocked",
                "llm_requests",
                "llm_cost_microdollars",
                "llm_refusals",
            ][..],
        ),
    ];
    for (sql, want) in expect {
        let got = columns(&admin, sql).await?;
        ensure!(got == want, "{sql}: columns {got:?}, expected {want:?}");
    }

    let pools = rows(&admin.console("SHOW POOLS").await?)?;
    let pool = pools
        .iter()
        .find(|r| r[0] == admin.db.name)
        .context(format!("no pool row: {pools:?}"))?;
    ensure!(
        pool[1] == admin.db.role && pool[5] == "1" && pool[6] == "transaction" && pool[7] == "20",
        "{pool:?}"
    );
    let clients = rows(&admin.console("SHOW CLIENTS").await?)?;
    ensure!(
        clients
            .iter()
            .any(|r| r[1] == admin.db.role && r[3] == "idle" && r[4] == "127.0.0.1")
            && clients
                .iter()
                .any(|r| r[1] == CONSOLE_USER && r[2] == "sentinel"),
        "{clients:?}"
    );
    let servers = rows(&admin.console("SHOW SERVERS").await?)?;
    ensure!(
        servers.iter().any(|r| r[0] == "S"
            && r[2] == admin.db.name
            && r[3] == "idle"
            && r[7].parse::<u32>().is_ok()),
        "{servers:?}"
    );
    let stats = rows(&admin.console("SHOW STATS").await?)?;
    ensure!(
        stats.len() == 1 && stats[0][2].parse::<u64>().unwrap_or(0) >= 1,
        "{stats:?}"
    );
    let tenants = rows(&admin.console("SHOW TENANTS").await?)?;
    ensure!(
        tenants
            .iter()
            .any(|r| r[0] == "acme" && r[2] == "1" && r[3].parse::<u64>().unwrap_or(0) > 0),
        "{tenants:?}"
    );

    // PAUSE: a new transaction waits; RESUME lets it run.
    ensure!(admin.console("PAUSE").await?.status.success());
    let waiting = tokio::spawn({
        let dsn = admin
            .sentinel
            .dsn(&admin.db.role, &admin.db.password, &admin.db.name);
        async move {
            let c = connect_dsn(&dsn).await?;
            c.simple_query("SELECT 2").await?;
            anyhow::Ok(())
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    ensure!(!waiting.is_finished(), "a transaction ran while paused");
    ensure!(admin.console("RESUME").await?.status.success());
    tokio::time::timeout(Duration::from_secs(5), waiting).await???;

    let out = admin.console("SHOW NOTHING").await?;
    ensure!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("SHOW POOLS"),
        "{out:?}"
    );
    // Only console users get the console.
    let out = psql(
        admin.sentinel.port(),
        &admin.db.role,
        &admin.db.password,
        "sentinel",
        "SHOW POOLS",
    )
    .await?;
    ensure!(!out.status.success(), "a non-console user got the console");
    Ok(())
}

fn write_config(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| path.display().to_string())
}

#[tokio::test]
async fn reload_applies_a_valid_change_and_refuses_an_invalid_one() -> Result<()> {
    let pg = shared_cluster().await?;
    let mock = MockLlm::start().await;
    let admin = start(pg, &mock, |c| c).await?;
    let path = admin.sentinel.config_path().to_owned();
    let original = std::fs::read_to_string(&path)?;
    let client = admin.app_client().await?;
    client.simple_query("SELECT 1").await?;

    let other = admin_token(&admin.sentinel, &admin.config, "intern", None).await?;
    // Invalid: a typo. Refused with the reason, by the API and by SIGHUP; nothing changes.
    write_config(
        &path,
        &original.replace("pool_size = 20", "pool_size = 20\npool_sise = 5"),
    )?;
    let (s, v) = admin.post("/v1/reload", None).await?;
    ensure!(
        s == 400 && v["reloaded"] == false && error_of(&v).contains("pool_sise"),
        "{s} {v}"
    );
    admin.sentinel.signal(libc::SIGHUP)?;
    admin
        .sentinel
        .wait_for_log("config reload refused", Duration::from_secs(5))
        .await?;
    let (s, _, _) = admin
        .call(reqwest::Method::GET, "/healthz", None, None)
        .await?;
    ensure!(s == 200, "SIGHUP ended the process");
    let out = admin.console("RELOAD").await?;
    ensure!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("pool_sise"),
        "{out:?}"
    );

    // Valid: a smaller pool, a new budget, a revoked admin token name, a changed listen address
    // (reported, not applied).
    let changed = original
        .replace("pool_size = 20", "pool_size = 7")
        .replacen("budget_usd = \"1.00\"", "budget_usd = \"3.00\"", 1)
        .replace(
            "console_users = [\"ops\"]",
            "console_users = [\"ops\"]\nrevoked_names = [\"intern\"]",
        );
    let changed = changed.replace(
        &format!("listen = \"127.0.0.1:{}\"", admin.sentinel.port()),
        "listen = \"127.0.0.1:1\"",
    );
    write_config(&path, &changed)?;
    let (s, v) = admin.post("/v1/reload", None).await?;
    ensure!(s == 200 && v["reloaded"] == true, "{s} {v}");
    ensure!(
        v["report"]["restart_required"] == json!(["postgres.listen"])
            && v["report"]["budgets_updated"] == json!(["acme"]),
        "{v}"
    );
    // Applied without dropping the connection.
    client
        .simple_query("SELECT 2")
        .await
        .context("the reload dropped a connection")?;
    let (_, v) = admin.get("/v1/pools").await?;
    ensure!(
        v["pools"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["pool_size"] == 7)),
        "{v}"
    );
    let (_, v) = admin.get("/v1/tenants/acme").await?;
    ensure!(v["budgets"][0]["limit"] == 3_000_000, "{v}");
    let (s, _, _) = admin
        .call(reqwest::Method::GET, "/v1/pools", Some(&other), None)
        .await?;
    ensure!(s == 401, "a revoked admin token still works: {s}");
    // The console's RELOAD reports what needs a restart.
    let out = admin.console("RELOAD").await?;
    ensure!(
        out.status.success() && String::from_utf8_lossy(&out.stderr).contains("postgres.listen"),
        "{out:?}"
    );
    let metrics = admin.metrics().await?;
    ensure!(
        metrics.contains("sentinel_config_reloads_total{result=\"ok\"} 2")
            && metrics.contains("sentinel_config_reloads_total{result=\"error\"} 3"),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test]
async fn sigterm_lets_a_transaction_and_a_stream_finish_then_exits_0() -> Result<()> {
    let pg = shared_cluster().await?;
    let mock = MockLlm::start().await;
    let mut admin = start(pg, &mock, |c| c.shutdown_grace(Duration::from_secs(10))).await?;
    let client = admin.app_client().await?;
    client.batch_execute("BEGIN; SELECT 1").await?;
    let key = admin.config.virtual_key("acme", "acme-key")?;
    let mut stream = admin
        .http
        .post(format!("{}/v1/chat/completions", admin.llm_base))
        .bearer_auth(&key)
        .header("x-mock-chunks", "30")
        .header("x-mock-chunk-delay-ms", "50")
        .json(&json!({"model": GPT, "stream": true, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100}))
        .send()
        .await?;
    ensure!(stream.status() == 200);
    let mut body =
        String::from_utf8_lossy(&stream.chunk().await?.context("first chunk")?).into_owned();

    admin.sentinel.signal(libc::SIGTERM)?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = connect_dsn(&admin.sentinel.dsn(
        &admin.db.role,
        &admin.db.password,
        &admin.db.name,
    ))
    .await;
    ensure!(
        refused.is_err(),
        "a new connection was accepted while draining"
    );
    let refused = admin.chat("globex").await;
    ensure!(
        refused.is_err(),
        "a new LLM call was accepted while draining: {refused:?}"
    );

    // The transaction goes on and commits; the stream completes.
    client
        .batch_execute("SELECT 2; COMMIT")
        .await
        .context("the transaction was cut")?;
    while let Some(chunk) = stream.chunk().await? {
        body.push_str(&String::from_utf8_lossy(&chunk));
    }
    ensure!(
        body.trim_end().ends_with("data: [DONE]"),
        "the stream was cut: {body}"
    );
    drop(client);
    let status = admin.sentinel.wait_exit(Duration::from_secs(10)).await?;
    ensure!(status.success(), "exit status {status}");
    Ok(())
}

#[tokio::test]
async fn an_upgrade_hands_the_sockets_over_without_refusing_a_connection() -> Result<()> {
    let pg = shared_cluster().await?;
    let mock = MockLlm::start().await;
    let socket = tempfile::tempdir()?;
    let socket_path = socket.path().join("upgrade.sock");
    let mut admin = start(pg, &mock, |c| {
        c.option(
            "process",
            "upgrade_socket",
            &format!("\"{}\"", socket_path.display()),
        )
    })
    .await?;
    let dsn = admin
        .sentinel
        .dsn(&admin.db.role, &admin.db.password, &admin.db.name);
    // A transaction open on the old process, across the upgrade.
    let old_client = admin.app_client().await?;
    old_client.batch_execute("BEGIN; SELECT 1").await?;

    let mut new = admin.sentinel.start_upgrade(&admin.config.env_pairs())?;
    // Connections keep coming while the sockets change hands.
    let load = tokio::spawn({
        let dsn = dsn.clone();
        async move {
            let mut served = 0;
            let started = std::time::Instant::now();
            while started.elapsed() < Duration::from_secs(8) {
                let c = connect_dsn(&dsn)
                    .await
                    .with_context(|| format!("a connection was refused after {served}"))?;
                c.simple_query("SELECT 1").await?;
                served += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            anyhow::Ok(served)
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    admin.sentinel.signal(libc::SIGQUIT)?;
    new.wait_for_log("sentinel starting", Duration::from_secs(10))
        .await
        .with_context(|| new.logs())?;
    old_client
        .batch_execute("SELECT 2; COMMIT")
        .await
        .context("the old process cut its transaction")?;
    drop(old_client);
    let served = load.await??;
    ensure!(served > 20, "only {served} connections served");
    let status = admin.sentinel.wait_exit(Duration::from_secs(20)).await?;
    ensure!(status.success(), "the old process exited {status}");
    // The new process serves every port now.
    let c = connect_dsn(&dsn).await?;
    c.simple_query("SELECT 3").await?;
    let (s, _, _) = admin
        .call(reqwest::Method::GET, "/healthz", None, None)
        .await?;
    ensure!(s == 200, "the admin port did not move: {s}");
    ensure!(
        admin.chat("acme").await?.status() == 200,
        "the LLM port did not move"
    );
    ensure!(new.is_running(), "the new process ended");
    Ok(())
}

/// The JSON log line of `message`, parsed.
fn json_line(logs: &str, message: &str) -> Result<Value> {
    for line in logs.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value =
            serde_json::from_str(line).with_context(|| format!("not a JSON log line: {line}"))?;
        if v["fields"]["message"] == message {
            return Ok(v);
        }
    }
    anyhow::bail!("no {message:?} line in:\n{logs}")
}

#[tokio::test]
async fn json_logs_carry_the_client_and_request_spans() -> Result<()> {
    let pg = shared_cluster().await?;
    let mock = MockLlm::start().await;
    let admin = start(pg, &mock, |c| {
        c.tenancy()
            .tenancy_global_tables(&["marker"])
            .env_var("SENTINEL_LOG_FORMAT", "json")
    })
    .await?;
    let su = pg.connect_superuser(&admin.db.name).await?;
    su.batch_execute(&format!(
        "CREATE TABLE marker (note text); GRANT ALL ON marker TO \"{}\"",
        admin.db.role
    ))
    .await?;
    let client = admin.app_client().await?;
    client
        .simple_query("/*tenant='acme'*/ SELECT count(*) FROM marker")
        .await?;
    let refused = client.simple_query("SET ROLE nobody").await;
    ensure!(refused.is_err(), "a forbidden statement ran");
    let resp = admin.chat("acme").await?;
    ensure!(resp.status() == 200);
    let _ = resp.text().await?;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let logs = admin.sentinel.logs();
    let refusal = json_line(&logs, "statement refused")?;
    let span = &refusal["span"];
    ensure!(
        span["name"] == "client"
            && span["user"] == admin.db.role.as_str()
            && span["database"] == admin.db.name.as_str()
            && span["tenant"] == "acme"
            && span["client.id"].is_u64(),
        "{refusal}"
    );
    ensure!(
        refusal["fields"]["fingerprint"]
            .as_str()
            .is_some_and(|f| f.len() == 16),
        "{refusal}"
    );
    let settled = json_line(&logs, "settled")?;
    let span = &settled["span"];
    ensure!(
        span["name"] == "llm"
            && span["tenant"] == "acme"
            && span["request_id"]
                .as_str()
                .is_some_and(|r| r.starts_with("sen_")),
        "{settled}"
    );
    let key = admin.config.virtual_key("acme", "acme-key")?;
    ensure!(
        !logs.contains(&admin.db.password) && !logs.contains(&key),
        "a secret reached the log"
    );
    Ok(())
}

/// Polls `check` every 200 ms for up to `within`.
async fn eventually(
    within: Duration,
    mut check: impl AsyncFnMut() -> Result<bool>,
    what: &str,
) -> Result<()> {
    let started = std::time::Instant::now();
    while !check().await? {
        ensure!(started.elapsed() < within, "{what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

#[tokio::test]
async fn a_block_reaches_every_replica_sharing_the_postgres_ledger() -> Result<()> {
    let pg = shared_cluster().await?;
    let mock = MockLlm::start().await;
    let ledger_db = pg.test_db("adminblocks").await?;
    let spools = tempfile::tempdir()?;
    let base = SentinelConfig::new(pg)
        .user("app", Auth::Trust, "app")
        .env_var("SENTINEL_TEST_LEDGER_PASSWORD", &ledger_db.password);
    let replica = |n: usize| {
        let setup = LlmSetup::new(&mock.base_url())
            .tenant("acme", "1.00", &[])
            .ledger(&format!(
                "backend = \"postgres\"\nhost = \"127.0.0.1\"\nport = {}\ndatabase = \"{}\"\n\
                 user = \"{}\"\npassword_env = \"SENTINEL_TEST_LEDGER_PASSWORD\"\n\
                 spool_path = \"{}\"\n",
                ledger_db.port,
                ledger_db.name,
                ledger_db.role,
                spools.path().join(format!("spool-{n}")).display()
            ));
        let config = base
            .clone()
            .listen_port(sentinel_tests::free_port())
            .option(
                "admin",
                "listen",
                &format!("\"127.0.0.1:{}\"", sentinel_tests::free_port()),
            )
            .llm(&setup);
        (config, setup)
    };
    let (config_a, setup_a) = replica(1);
    let (config_b, setup_b) = replica(2);
    let a = SentinelProcess::start_with(&config_a).await?;
    // Kept running to the end of the test.
    let _b = SentinelProcess::start_with(&config_b).await?;
    wait_port(setup_a.port).await?;
    wait_port(setup_b.port).await?;
    // One token for the environment: the replicas share the keyring and salt.
    let token = admin_token(&a, &config_a, "ops", None).await?;
    let http = http_client();
    let key = config_a.virtual_key("acme", "acme-key")?;
    let chat = async |setup: &LlmSetup| -> Result<u16> {
        let resp = http
            .post(format!("{}/v1/chat/completions", setup.base_url()))
            .bearer_auth(&key)
            .json(&json!({"model": GPT, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}))
            .send()
            .await?;
        let status = resp.status().as_u16();
        let _ = resp.text().await?;
        Ok(status)
    };
    let admin_post = async |config: &SentinelConfig, path: &str| -> Result<u16> {
        let resp = http
            .post(format!("{}{path}", config.admin_url()))
            .bearer_auth(&token)
            .send()
            .await?;
        Ok(resp.status().as_u16())
    };
    ensure!(chat(&setup_b).await? == 200);

    ensure!(admin_post(&config_a, "/v1/tenants/acme/block").await? == 200);
    ensure!(
        chat(&setup_a).await? == 403,
        "the replica told was not blocked at once"
    );
    eventually(
        Duration::from_secs(10),
        async || Ok(chat(&setup_b).await? == 403),
        "the other replica blocks the tenant",
    )
    .await?;
    let oracle = ledger_db.connect().await?;
    let rows = oracle
        .query(
            "SELECT llm, db FROM sentinel.blocks WHERE tenant = 'acme'",
            &[],
        )
        .await?;
    ensure!(
        rows.len() == 1 && rows[0].get::<_, bool>(0) && !rows[0].get::<_, bool>(1),
        "the ledger does not hold the block"
    );

    ensure!(admin_post(&config_b, "/v1/tenants/acme/unblock").await? == 200);
    eventually(
        Duration::from_secs(10),
        async || Ok(chat(&setup_a).await? == 200),
        "the first replica lifts the block",
    )
    .await?;
    ensure!(chat(&setup_b).await? == 200);
    Ok(())
}

#[tokio::test]
async fn sigterm_while_paused_lets_the_waiting_clients_go_and_exits() -> Result<()> {
    let pg = shared_cluster().await?;
    let mock = MockLlm::start().await;
    let mut admin = start(pg, &mock, |c| c.shutdown_grace(Duration::from_secs(20))).await?;
    let client = admin.app_client().await?;
    client.simple_query("SELECT 1").await?;
    ensure!(admin.console("PAUSE").await?.status.success());
    let waiting = tokio::spawn(async move { client.simple_query("SELECT 2").await.err() });
    tokio::time::sleep(Duration::from_millis(300)).await;
    ensure!(!waiting.is_finished(), "a transaction ran while paused");
    let signalled = std::time::Instant::now();
    admin.sentinel.signal(libc::SIGTERM)?;
    let err = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .context("a paused client held up the shutdown")??
        .context("the paused statement ran during shutdown")?;
    ensure!(sqlstate(&err) == "57P01", "{err:?}");
    let status = admin.sentinel.wait_exit(Duration::from_secs(10)).await?;
    ensure!(
        status.success() && signalled.elapsed() < Duration::from_secs(10),
        "exit {status} after {:?} (grace 20 s)",
        signalled.elapsed()
    );
    Ok(())
}
