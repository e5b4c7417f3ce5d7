//! Each tenant source on its own, and the replies Sentinel makes itself, checked against Postgres.
//!
//! - no tenant: `42501 tenant context required` with a HINT; the connection stays usable; in
//!   the extended protocol everything up to Sync is discarded; inside a transaction block the
//!   transaction fails as Postgres would fail it;
//! - token: a token from the policy crate and one printed by `sentinel token issue` log in and
//!   bind the connection; tampered, expired, foreign and garbage tokens are refused with 28P01;
//! - startup: `options=-c sentinel.tenant=…` and the bare startup parameter bind the connection
//!   and never reach Postgres as a setting; a bad id, an untrusted network and a switched-off
//!   source are refused at login with 28000;
//! - comment: leading, trailing, URL-encoded and multi-key sqlcommenter tags; the tag holds for
//!   its transaction (even across ROLLBACK TO a savepoint taken before it), then is gone; a
//!   multi-statement query shares its tag; `comment_key` is honoured;
//! - set: every intercepted form is answered byte for byte as Postgres answers it (compared on
//!   raw connections), `SET` outside a block warns and sets nothing under
//!   `scope = "transaction"`, and under `scope = "session"` the tenant lasts until changed or
//!   reset, including through a reused prepared `set_config($1)`;
//! - per-tenant `statement_timeout` is applied with the tenant and only to it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use sentinel_policy::keys::{EnvSalt, Keyring, issue_tenant_token};
use sentinel_tests::clients::{db_message, simple_rows, sqlstate};
use sentinel_tests::config::{new_keyring_text, new_salt};
use sentinel_tests::raw::{
    Fields, RawConn, Reply, Step, Until, Wire, first_difference, first_error, q, reply_rows, step,
};
use sentinel_tests::sentinel::run_sentinel;
use sentinel_tests::tenancy::{
    CONTEXT_REQUIRED, STEP_TIMEOUT, TOKEN_USER, TenancyDb, TenancyEnv, assert_no_context,
    describe_error, expect_code, expect_context_required, simple_scalar, startup_options,
    try_connect,
};
use sentinel_tests::{SentinelConfig, TenancyScope, shared_cluster};
use tokio_postgres::Client;

const TENANTS: &[&str] = &["acme", "globex", "initech"];
const TEXT_OID: u32 = 25;

/// The fixture with [`TENANTS`] and a Sentinel in front of it.
async fn start(
    prefix: &str,
    configure: impl FnOnce(SentinelConfig) -> SentinelConfig,
) -> Result<TenancyEnv> {
    let tdb = TenancyDb::create(shared_cluster().await?, prefix, TENANTS).await?;
    TenancyEnv::start(tdb, configure).await
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `SELECT count(*) FROM items` on `c`, which must succeed.
async fn count_items(c: &Client, what: &str) -> Result<i64> {
    let row = c
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .map_err(|e| anyhow::anyhow!("{what}: {}", describe_error(&e)))?;
    Ok(row.get(0))
}

/// A bound client sees exactly `tenant`'s rows, in autocommit and in a transaction, and the
/// setting inside its transactions is `tenant`.
async fn assert_bound(env: &TenancyEnv, c: &Client, tenant: &str, what: &str) -> Result<()> {
    let want = env.tdb.oracle_count(tenant).await?;
    let n = count_items(c, what).await?;
    ensure!(
        n == want,
        "{what}: counts {n} rows; the oracle says {tenant} has {want}"
    );
    let rows = c
        .query("SELECT DISTINCT tenant_id FROM items", &[])
        .await
        .map_err(|e| anyhow::anyhow!("{what}: {}", describe_error(&e)))?;
    let seen: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    ensure!(seen == [tenant], "{what}: sees tenants {seen:?}");
    let msgs = c
        .simple_query("BEGIN; SELECT current_setting('app.tenant_id', true); COMMIT")
        .await
        .map_err(|e| anyhow::anyhow!("{what}: {}", describe_error(&e)))?;
    let setting = simple_rows(&msgs)
        .into_iter()
        .next()
        .and_then(|r| r.into_iter().next())
        .flatten();
    ensure!(
        setting.as_deref() == Some(tenant),
        "{what}: the setting inside a transaction is {setting:?}"
    );
    Ok(())
}

// === no tenant ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_context_is_refused_with_a_hint_and_the_connection_stays_usable() -> Result<()> {
    let env = start("tennoctx", |c| c).await?;
    let c = env.plain().await?;
    for sql in [
        "SELECT * FROM items",
        "INSERT INTO items (tenant_id, v) VALUES ('acme', 'x')",
        "UPDATE items SET v = v",
        "DELETE FROM items",
        "SELECT tenant_rows()",
        "SELECT t.id FROM tenants t JOIN items i ON i.tenant_id = t.id",
    ] {
        expect_context_required(sql, c.simple_query(sql).await)?;
        let one = simple_scalar(&c, "SELECT 1").await?;
        ensure!(
            one.as_deref() == Some("1"),
            "after {sql:?}: SELECT 1 gave {one:?}"
        );
    }
    // Extended protocol through tokio-postgres.
    expect_context_required(
        "extended",
        c.query("SELECT * FROM items WHERE id > $1", &[&0i32]).await,
    )?;
    let one: i32 = c.query_one("SELECT 1", &[]).await?.get(0);
    ensure!(one == 1);

    // Raw extended: the refusal discards everything up to Sync, as Postgres does.
    let mut raw = env.raw(&[]).await?;
    let replies = raw
        .exchange(
            &Wire::new()
                .parse("", "SELECT v FROM items", &[])
                .bind("", "", &[])
                .execute("", 0)
                .parse("", "SELECT 'not reached'", &[])
                .bind("", "", &[])
                .execute("", 0)
                .sync(),
            Until::Ready(1),
        )
        .await?;
    let errors: Vec<&Reply> = replies
        .iter()
        .filter(|r| matches!(r, Reply::Error(_)))
        .collect();
    ensure!(
        errors.len() == 1,
        "one ErrorResponse expected before Sync: {replies:?}"
    );
    let err = first_error(&replies).context("no error")?;
    ensure!(
        err.code == "42501" && err.message == CONTEXT_REQUIRED && err.hint.is_some(),
        "extended refusal: {err:?}"
    );
    ensure!(
        !replies
            .iter()
            .any(|r| matches!(r, Reply::Row(_) | Reply::Complete(_))),
        "something after the refusal ran before Sync: {replies:?}"
    );
    ensure!(
        replies.last() == Some(&Reply::Ready('I')),
        "the batch ends with {:?}, not ReadyForQuery(I): {replies:?}",
        replies.last()
    );
    let after = raw.query("SELECT 'usable'").await?;
    ensure!(
        reply_rows(&after) == vec![vec![Some("usable".to_owned())]],
        "after the refusal: {after:?}"
    );
    Ok(())
}

/// A refusal inside a transaction block leaves the block failed, exactly like an error from
/// Postgres would: ReadyForQuery `E`, later statements refused with 25P02, ROLLBACK ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusal_inside_a_transaction_fails_it_like_postgres() -> Result<()> {
    let env = start("tenabort", |c| c).await?;
    let mut raw = env.raw(&[]).await?;
    let r = raw.query("BEGIN").await?;
    ensure!(r.last() == Some(&Reply::Ready('T')), "BEGIN: {r:?}");
    let r = raw.query("SELECT * FROM items").await?;
    ensure!(
        first_error(&r).map(|e| e.code.as_str()) == Some("42501")
            && r.last() == Some(&Reply::Ready('E')),
        "refused read in a transaction: {r:?} (Postgres would end with ReadyForQuery E)"
    );
    let r = raw.query("SELECT 1").await?;
    ensure!(
        first_error(&r).map(|e| e.code.as_str()) == Some("25P02")
            && r.last() == Some(&Reply::Ready('E')),
        "a statement in the failed transaction: {r:?}"
    );
    let r = raw.query("ROLLBACK").await?;
    ensure!(
        r == vec![Reply::Complete("ROLLBACK".to_owned()), Reply::Ready('I')],
        "ROLLBACK: {r:?}"
    );
    Ok(())
}

// === token ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_source_binds_the_connection_and_bad_tokens_are_refused() -> Result<()> {
    let env = start("tentoken", |c| c).await?;
    let token = env.cfg.tenant_token("acme", None)?;
    let c = env.tdb.token(&env.sentinel, TOKEN_USER, &token).await?;
    assert_bound(&env, &c, "acme", "token acme").await?;
    // A token with an expiry in the future.
    let token = env.cfg.tenant_token("initech", Some(unix_now() + 3600))?;
    let c = env.tdb.token(&env.sentinel, TOKEN_USER, &token).await?;
    assert_bound(&env, &c, "initech", "token initech (expiring)").await?;

    // A token printed by the CLI.
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("sentinel.toml");
    env.cfg.write_to(&path)?;
    let out = run_sentinel(
        &[
            "token",
            "issue",
            "--config",
            &path.display().to_string(),
            "--tenant",
            "globex",
            "--ttl",
            "1h",
        ],
        &env.cfg.env_pairs(),
        None,
    )
    .await?
    .ok()?;
    let cli_token = out.stdout.trim().to_owned();
    ensure!(
        cli_token.starts_with("stk1.globex."),
        "the CLI printed {cli_token:?}"
    );
    let c = env.tdb.token(&env.sentinel, TOKEN_USER, &cli_token).await?;
    assert_bound(&env, &c, "globex", "CLI token globex").await?;

    // Refused tokens: 28P01 at login.
    let good = env.cfg.tenant_token("acme", None)?;
    let mut tampered = good.clone();
    let last = tampered.pop().context("empty token")?;
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    let swapped = good.replacen("stk1.acme.", "stk1.globex.", 1);
    let expired = env.cfg.tenant_token("acme", Some(unix_now() - 60))?;
    let foreign = issue_tenant_token(
        &Keyring::parse(&new_keyring_text("k1"))?,
        &EnvSalt::from_base64(&new_salt())?,
        "acme",
        None,
    )?;
    for (what, tok) in [
        ("a tampered MAC", tampered.as_str()),
        ("another tenant's name under acme's MAC", swapped.as_str()),
        ("an expired token", expired.as_str()),
        ("a token of another keyring and salt", foreign.as_str()),
        ("not a token", "hunter2"),
        ("an empty password", ""),
    ] {
        let res = try_connect(&env.sentinel.dsn(TOKEN_USER, tok, &env.tdb.db.name)).await?;
        let e = expect_code(what, res, "28P01")?;
        let sev = e
            .as_db_error()
            .map(|d| d.severity().to_owned())
            .unwrap_or_default();
        ensure!(sev == "FATAL", "{what}: refused with severity {sev:?}");
    }
    // The cleartext exchange itself, at the protocol level.
    let mut raw = env.raw_token(&good).await?;
    let r = raw.query("SELECT count(*) FROM items").await?;
    ensure!(
        reply_rows(&r) == vec![vec![Some(env.tdb.oracle_count("acme").await?.to_string())]],
        "raw token login: {r:?}"
    );
    Ok(())
}

// === startup ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_source_binds_the_connection_and_is_never_forwarded() -> Result<()> {
    let env = start("tenstartup", |c| c).await?;
    let c = env.tdb.startup(&env.sentinel, "globex").await?;
    assert_bound(&env, &c, "globex", "options -c sentinel.tenant=globex").await?;
    let msgs = c
        .simple_query("BEGIN; SELECT current_setting('sentinel.tenant', true); COMMIT")
        .await?;
    let seen = simple_rows(&msgs)
        .into_iter()
        .next()
        .and_then(|r| r.into_iter().next())
        .flatten();
    ensure!(
        seen.is_none() || seen.as_deref() == Some(""),
        "sentinel.tenant reached Postgres as a setting: {seen:?}"
    );

    // The bare startup parameter.
    let mut raw = env.raw(&[("sentinel.tenant", "initech")]).await?;
    let r = raw.query("SELECT DISTINCT tenant_id FROM items").await?;
    ensure!(
        reply_rows(&r) == vec![vec![Some("initech".to_owned())]],
        "startup parameter sentinel.tenant=initech: {r:?}"
    );

    // Bad ids are refused at login.
    for bad in ["../x", "a'b", &"a".repeat(200)] {
        let res = try_connect(&env.tdb.dsn(&env.sentinel, &startup_options(bad))).await?;
        let e = expect_code(&format!("startup tenant {bad:?}"), res, "28000")?;
        ensure!(
            e.as_db_error().is_some_and(|d| d.severity() == "FATAL"),
            "startup tenant {bad:?}: not FATAL: {}",
            describe_error(&e)
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_source_only_from_trusted_networks_and_only_when_on() -> Result<()> {
    let untrusted = start("tenstartnet", |c| {
        c.tenancy_startup_networks(&["10.0.0.0/8"])
    })
    .await?;
    let res = try_connect(
        &untrusted
            .tdb
            .dsn(&untrusted.sentinel, &startup_options("acme")),
    )
    .await?;
    expect_code("startup tenant from outside startup_networks", res, "28000")?;
    let params = [
        ("user", untrusted.tdb.db.role.as_str()),
        ("database", untrusted.tdb.db.name.as_str()),
        ("sentinel.tenant", "acme"),
    ];
    match RawConn::login(
        untrusted.sentinel.port(),
        &params,
        &untrusted.tdb.db.password,
        STEP_TIMEOUT,
    )
    .await?
    {
        Ok(_) => bail!("the bare startup parameter from an untrusted network was accepted"),
        Err(f) => ensure!(
            f.code == "28000" && f.severity == "FATAL",
            "the bare startup parameter from an untrusted network: {f:?}"
        ),
    }
    // The same client without a startup tenant is fine (and has no tenant).
    let c = untrusted.plain().await?;
    assert_no_context(&c, "no startup tenant").await?;

    let off = start("tenstartoff", |c| {
        c.tenancy_sources(&["token", "comment", "set"])
    })
    .await?;
    let res = try_connect(&off.tdb.dsn(&off.sentinel, &startup_options("acme"))).await?;
    expect_code("startup tenant with the startup source off", res, "28000")?;
    Ok(())
}

/// `options=-c app.tenant_id=<t>` names the setting the policies read rather than the startup
/// source. Sentinel may refuse it at login (42501 or 28000) or take it as the startup source; it
/// must never pass it on as a plain session setting. So: where it is accepted, the connection is
/// startup-bound (its tenant in every transaction, a switch refused, nothing left on the server
/// for the next client); where the startup source would be refused (source off, untrusted
/// network), it gives the connection no tenant at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_options_naming_the_setting_itself_are_not_a_back_door() -> Result<()> {
    const SPOOF: &str = "options='-c app.tenant_id=globex'";
    let env = start("tenstartguc", |c| c).await?;
    match try_connect(&env.tdb.dsn(&env.sentinel, SPOOF)).await? {
        Err(e) => ensure!(
            ["42501", "28000"].contains(&sqlstate(&e).as_str()),
            "-c app.tenant_id refused with {}",
            describe_error(&e)
        ),
        Ok(c) => {
            assert_bound(&env, &c, "globex", "accepted -c app.tenant_id=globex").await?;
            let res = c.simple_query("SET app.tenant_id = 'acme'").await;
            let e = expect_code("switching away from -c app.tenant_id=globex", res, "42501")?;
            ensure!(
                db_message(&e).contains("bound"),
                "the switch was refused with {:?}, which does not say the connection is bound",
                db_message(&e)
            );
            drop(c);
            let probe = env.plain().await?;
            assert_no_context(&probe, "the next client on the same server").await?;
        }
    }
    let off = start("tenstartguc", |c| {
        c.tenancy_sources(&["token", "comment", "set"])
    })
    .await?;
    let untrusted = start("tenstartguc", |c| {
        c.tenancy_startup_networks(&["10.0.0.0/8"])
    })
    .await?;
    for (name, e) in [
        ("startup source off", &off),
        ("untrusted network", &untrusted),
    ] {
        match try_connect(&e.tdb.dsn(&e.sentinel, SPOOF)).await? {
            Err(err) => ensure!(
                ["42501", "28000"].contains(&sqlstate(&err).as_str()),
                "{name}: -c app.tenant_id refused with {}",
                describe_error(&err)
            ),
            Ok(c) => assert_no_context(&c, &format!("{name}: -c app.tenant_id=globex")).await?,
        }
    }
    Ok(())
}

// === comment ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comment_source_forms_and_lifetime() -> Result<()> {
    let env = start("tencomment", |c| c).await?;
    let c = env.plain().await?;
    let acme = env.tdb.oracle_count("acme").await?;
    for sql in [
        "/*tenant='acme'*/ SELECT count(*) FROM items",
        "SELECT count(*) FROM items /*tenant='acme'*/",
        "SELECT count(*) FROM items /*action='list',controller='items',tenant='acme'*/",
        "SELECT count(*) FROM items /*action='list%20items',tenant='%61cme'*/",
        "SELECT count(*) FROM items /*action='list+items',tenant='acme',traceparent='00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01'*/",
        "SELECT count(*) /*tenant='acme'*/ FROM items",
        "-- a line comment first\n/*tenant='acme'*/ SELECT count(*) FROM items",
        "/* a plain comment */ SELECT count(*) FROM items /*tenant='acme'*/;",
    ] {
        let n: i64 = c
            .query_one(sql, &[])
            .await
            .map_err(|e| anyhow::anyhow!("{sql:?}: {}", describe_error(&e)))?
            .get(0);
        ensure!(n == acme, "{sql:?}: {n} rows; acme has {acme}");
        let msgs = c
            .simple_query(sql)
            .await
            .map_err(|e| anyhow::anyhow!("{sql:?} (simple): {}", describe_error(&e)))?;
        let n = simple_rows(&msgs)
            .into_iter()
            .next()
            .and_then(|r| r.into_iter().next())
            .flatten();
        ensure!(
            n == Some(acme.to_string()),
            "{sql:?} (simple): {n:?}; acme has {acme}"
        );
    }

    // The tag holds for its transaction, then is gone.
    c.batch_execute("BEGIN").await?;
    let n: i64 = c
        .query_one("/*tenant='globex'*/ SELECT count(*) FROM items", &[])
        .await?
        .get(0);
    let m: i64 = c
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .map_err(|e| anyhow::anyhow!("untagged, same transaction: {}", describe_error(&e)))?
        .get(0);
    let s: Option<String> = c
        .query_one("SELECT current_setting('app.tenant_id', true)", &[])
        .await?
        .get(0);
    c.batch_execute("COMMIT").await?;
    let globex = env.tdb.oracle_count("globex").await?;
    ensure!(
        n == globex && m == globex,
        "tagged {n}, untagged {m}; globex has {globex}"
    );
    ensure!(
        s.as_deref() == Some("globex"),
        "setting in the transaction: {s:?}"
    );
    assert_no_context(&c, "after the tagged transaction").await?;

    // A multi-statement simple query is one transaction: the tag covers every statement.
    let msgs = c
        .simple_query(
            "/*tenant='initech'*/ SELECT count(*) FROM items; SELECT count(*) FROM items; \
             SELECT current_setting('app.tenant_id', true)",
        )
        .await
        .map_err(|e| anyhow::anyhow!("multi-statement: {}", describe_error(&e)))?;
    let initech = env.tdb.oracle_count("initech").await?.to_string();
    let rows = simple_rows(&msgs);
    ensure!(
        rows == vec![
            vec![Some(initech.clone())],
            vec![Some(initech.clone())],
            vec![Some("initech".to_owned())]
        ],
        "multi-statement query tagged initech: {rows:?}"
    );
    assert_no_context(&c, "after the multi-statement query").await?;
    Ok(())
}

/// The tag came after the savepoint; ROLLBACK TO that savepoint does not end the transaction, so
/// the tenant holds for the statements after it (the context must not be rolled back with it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comment_tenant_survives_rollback_to_an_earlier_savepoint() -> Result<()> {
    let env = start("tensavept", |c| c).await?;
    let c = env.plain().await?;
    let acme = env.tdb.oracle_count("acme").await?;
    c.batch_execute("BEGIN; SAVEPOINT before_tag").await?;
    let n: i64 = c
        .query_one("/*tenant='acme'*/ SELECT count(*) FROM items", &[])
        .await?
        .get(0);
    ensure!(n == acme, "tagged read: {n}, acme has {acme}");
    c.batch_execute("ROLLBACK TO SAVEPOINT before_tag").await?;
    let rows = c
        .query(
            "SELECT tenant_id, current_setting('app.tenant_id', true) FROM items",
            &[],
        )
        .await
        .map_err(|e| anyhow::anyhow!("read after ROLLBACK TO: {}", describe_error(&e)))?;
    c.batch_execute("COMMIT").await?;
    let seen: Vec<(String, Option<String>)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    ensure!(
        seen.len() as i64 == acme
            && seen
                .iter()
                .all(|(t, s)| t == "acme" && s.as_deref() == Some("acme")),
        "after ROLLBACK TO the read returned {seen:?}; want acme's {acme} rows with the setting acme"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comment_key_is_configurable() -> Result<()> {
    let env = start("tencomkey", |c| c.tenancy_comment_key("tid")).await?;
    let c = env.plain().await?;
    let n: i64 = c
        .query_one("/*tid='acme'*/ SELECT count(*) FROM items", &[])
        .await
        .map_err(|e| anyhow::anyhow!("/*tid='acme'*/: {}", describe_error(&e)))?
        .get(0);
    ensure!(n == env.tdb.oracle_count("acme").await?, "tid=acme: {n}");
    expect_context_required(
        "tenant= is not the key any more",
        c.simple_query("/*tenant='acme'*/ SELECT count(*) FROM items")
            .await,
    )?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_comments_need_a_valid_token() -> Result<()> {
    let env = start("tensigned", |c| c.tenancy_signed_comments(true)).await?;
    let c = env.plain().await?;
    let acme = env.cfg.tenant_token("acme", None)?;
    let sql = format!("/*tenant_token='{acme}'*/ SELECT count(*) FROM items");
    let n: i64 = c
        .query_one(&sql, &[])
        .await
        .map_err(|e| anyhow::anyhow!("signed acme tag: {}", describe_error(&e)))?
        .get(0);
    ensure!(
        n == env.tdb.oracle_count("acme").await?,
        "signed acme: {n} rows"
    );
    // The server never sees the token (others of the role could read it in pg_stat_activity),
    // in either protocol; the rest of the text arrives unchanged.
    let seen_simple = simple_scalar(
        &c,
        &format!("/*tenant_token='{acme}'*/ SELECT current_query() FROM items LIMIT 1"),
    )
    .await?
    .unwrap_or_default();
    let seen_extended: String = c
        .query_one(
            &format!(
                "SELECT current_query() FROM items WHERE id > $1 LIMIT 1 /*tenant_token='{acme}'*/"
            ),
            &[&0i32],
        )
        .await?
        .get(0);
    for seen in [&seen_simple, &seen_extended] {
        ensure!(
            !seen.contains("stk1") && seen.contains("SELECT current_query() FROM items"),
            "the server saw {seen:?}"
        );
    }
    // A bare id is what injected text could write: refused once tags must be signed.
    let e = expect_code(
        "bare tag",
        c.simple_query("/*tenant='acme'*/ SELECT count(*) FROM items")
            .await,
        "42501",
    )?;
    ensure!(
        e.as_db_error()
            .is_some_and(|d| d.message().contains("signed_comments")),
        "bare tag: {}",
        describe_error(&e)
    );
    // A forged, another environment's or an expired token: 28000.
    let forged = format!("{}x", &acme[..acme.len() - 1]);
    let expired = env.cfg.tenant_token("acme", Some(unix_now() - 60))?;
    for (what, token) in [("forged", forged.as_str()), ("expired", expired.as_str())] {
        let sql = format!("/*tenant_token='{token}'*/ SELECT count(*) FROM items");
        expect_code(what, c.simple_query(&sql).await, "28000")?;
    }
    // Two valid tokens of different tenants in one transaction.
    let globex = env.cfg.tenant_token("globex", None)?;
    c.batch_execute("BEGIN").await?;
    c.simple_query(&format!(
        "/*tenant_token='{acme}'*/ SELECT count(*) FROM items"
    ))
    .await?;
    expect_code(
        "second tenant in the transaction",
        c.simple_query(&format!(
            "/*tenant_token='{globex}'*/ SELECT count(*) FROM items"
        ))
        .await,
        "42501",
    )?;
    c.batch_execute("ROLLBACK").await?;
    // Still usable.
    expect_context_required("no tag", c.simple_query("SELECT count(*) FROM items").await)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_could_drop_or_misplace_the_tenant() -> Result<()> {
    let env = start("tenreview", |c| c).await?;
    let c = env.plain().await?;
    // A refused query leaves nothing behind: its tag does not become the next one's tenant.
    expect_code(
        "a tenant statement after COMMIT in one text",
        c.simple_query("COMMIT; /*tenant='acme'*/ SELECT count(*) FROM items")
            .await,
        "42501",
    )?;
    expect_context_required(
        "the next query, without a tag",
        c.simple_query("SELECT count(*) FROM items").await,
    )?;
    // ROLLBACK TO or RESET ALL undo the tenant: what needs it after them in the same text is
    // refused, and a statement sent after them gets the tenant again.
    c.batch_execute("BEGIN; SAVEPOINT s").await?;
    c.simple_query("/*tenant='acme'*/ SELECT count(*) FROM items")
        .await?;
    expect_code(
        "a tenant statement after ROLLBACK TO in one text",
        c.simple_query("ROLLBACK TO s; SELECT count(*) FROM items")
            .await,
        "42501",
    )?;
    c.batch_execute("ROLLBACK").await?;
    c.batch_execute("BEGIN; SAVEPOINT s").await?;
    c.simple_query("/*tenant='acme'*/ SELECT count(*) FROM items")
        .await?;
    c.batch_execute("ROLLBACK TO s").await?;
    c.batch_execute("RESET ALL").await?;
    let n = count_items(
        &c,
        "after ROLLBACK TO and RESET ALL, in the same transaction",
    )
    .await?;
    ensure!(
        n == env.tdb.oracle_count("acme").await?,
        "after ROLLBACK TO and RESET ALL the transaction's tenant sees {n} rows"
    );
    c.batch_execute("COMMIT").await?;

    // In a failed transaction a tenant command is ignored with 25P02, as Postgres would.
    c.batch_execute("BEGIN").await?;
    expect_code("1/0", c.simple_query("SELECT 1/0").await, "22012")?;
    expect_code(
        "SET LOCAL in a failed transaction",
        c.simple_query("SET LOCAL app.tenant_id = 'acme'").await,
        "25P02",
    )?;
    c.batch_execute("ROLLBACK").await?;
    expect_context_required(
        "after the failed transaction",
        c.simple_query("SELECT count(*) FROM items").await,
    )?;

    // A connection bound to a tenant can still choose its isolation level: nothing runs before
    // BEGIN … ISOLATION LEVEL or SET TRANSACTION.
    let token = env.cfg.tenant_token("globex", None)?;
    let mut b = env.tdb.token(&env.sentinel, TOKEN_USER, &token).await?;
    for begin in [
        "BEGIN ISOLATION LEVEL SERIALIZABLE",
        "BEGIN; SET TRANSACTION ISOLATION LEVEL REPEATABLE READ",
    ] {
        b.batch_execute(begin)
            .await
            .map_err(|e| anyhow::anyhow!("{begin}: {}", describe_error(&e)))?;
        let level = simple_scalar(&b, "SHOW transaction_isolation").await?;
        ensure!(
            level.as_deref() != Some("read committed"),
            "{begin}: the level is {level:?}"
        );
        let n = count_items(&b, begin).await?;
        ensure!(
            n == env.tdb.oracle_count("globex").await?,
            "{begin}: {n} rows"
        );
        b.batch_execute("COMMIT").await?;
    }
    let t = b
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::Serializable)
        .start()
        .await;
    let t =
        t.map_err(|e| anyhow::anyhow!("build_transaction serializable: {}", describe_error(&e)))?;
    t.commit().await?;
    Ok(())
}

// === set ===

/// Runs the same steps through Sentinel and straight to Postgres and compares every reply
/// (errors and notices by severity and SQLSTATE only; ParameterStatus ignored).
async fn compare_with_postgres(
    env: &TenancyEnv,
    name: &str,
    steps: &[Step],
) -> Result<Option<String>> {
    compare_with_postgres_as(env, name, steps, None).await
}

/// [`compare_with_postgres`], logging in to Sentinel with this tenant token instead of as the
/// app role.
async fn compare_with_postgres_as(
    env: &TenancyEnv,
    name: &str,
    steps: &[Step],
    token: Option<&str>,
) -> Result<Option<String>> {
    let mut via = match token {
        None => env.raw(&[]).await?,
        Some(token) => env.raw_token(token).await?,
    };
    let mut direct = env.raw_direct().await?;
    let a = via
        .run(steps)
        .await
        .with_context(|| format!("{name}, through Sentinel"))?;
    let b = direct
        .run(steps)
        .await
        .with_context(|| format!("{name}, straight to Postgres"))?;
    let norm = |r: &Reply| (!matches!(r, Reply::ParamStatus(..))).then(|| r.codes_only());
    Ok(first_difference(&a, &b, norm).map(|diff| format!("- {name}: {diff}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_source_is_answered_exactly_like_postgres() -> Result<()> {
    let env = start("tensetreply", |c| c).await?;
    let r1 = Until::Ready(1);
    let ext_set_config = Wire::new()
        .parse(
            "",
            "SELECT set_config('app.tenant_id', $1, true)",
            &[TEXT_OID],
        )
        .bind("", "", &[Some("acme")])
        .describe_portal("")
        .execute("", 0)
        .sync();
    let named_prepare = Wire::new()
        .parse(
            "tenant_stmt",
            "SELECT set_config('app.tenant_id', $1, false)",
            &[],
        )
        .describe_statement("tenant_stmt")
        .sync();
    let typed_prepare = Wire::new()
        .parse(
            "typed_stmt",
            "SELECT set_config('app.tenant_id', $1, true)",
            &[TEXT_OID],
        )
        .describe_statement("typed_stmt")
        .sync();
    let typed_exec = Wire::new()
        .bind("", "typed_stmt", &[Some("acme")])
        .execute("", 0)
        .sync();
    let named_exec = |t: &str| {
        Wire::new()
            .bind("", "tenant_stmt", &[Some(t)])
            .execute("", 0)
            .sync()
    };
    let ext_set = Wire::new()
        .parse("", "SET app.tenant_id = 'acme'", &[])
        .bind("", "", &[])
        .describe_portal("")
        .execute("", 0)
        .sync();
    let scripts: Vec<(&str, Vec<Step>)> = vec![
        (
            "SET",
            vec![q("BEGIN"), q("SET app.tenant_id = 'acme'"), q("COMMIT")],
        ),
        (
            "SET TO",
            vec![q("BEGIN"), q("SET app.tenant_id TO 'acme'"), q("ROLLBACK")],
        ),
        (
            "SET LOCAL",
            vec![
                q("BEGIN"),
                q("SET LOCAL app.tenant_id = 'acme'"),
                q("COMMIT"),
            ],
        ),
        (
            "SET sentinel.tenant",
            vec![q("BEGIN"), q("SET sentinel.tenant = 'acme'"), q("COMMIT")],
        ),
        (
            "SET LOCAL sentinel.tenant",
            vec![
                q("BEGIN"),
                q("SET LOCAL sentinel.tenant = 'acme'"),
                q("COMMIT"),
            ],
        ),
        (
            "RESET",
            vec![q("BEGIN"), q("RESET app.tenant_id"), q("COMMIT")],
        ),
        (
            "SET TO DEFAULT",
            vec![q("BEGIN"), q("SET app.tenant_id TO DEFAULT"), q("COMMIT")],
        ),
        (
            "SET LOCAL outside a transaction block",
            vec![q("SET LOCAL app.tenant_id = 'acme'")],
        ),
        (
            "set_config, local, simple",
            vec![
                q("BEGIN"),
                q("SELECT set_config('app.tenant_id', 'acme', true)"),
                q("COMMIT"),
            ],
        ),
        (
            "set_config, session, simple",
            vec![
                q("BEGIN"),
                q("SELECT set_config('app.tenant_id', 'acme', false)"),
                q("COMMIT"),
            ],
        ),
        (
            "set_config with $1, unnamed statement",
            vec![q("BEGIN"), step(ext_set_config, r1), q("COMMIT")],
        ),
        (
            "set_config with $1, named statement described then executed twice",
            vec![
                q("BEGIN"),
                step(named_prepare, r1),
                step(named_exec("acme"), r1),
                q("COMMIT"),
                q("BEGIN"),
                step(named_exec("globex"), r1),
                q("COMMIT"),
            ],
        ),
        (
            "set_config with $1 declared text, named statement (tokio-postgres prepare_typed)",
            vec![
                q("BEGIN"),
                step(typed_prepare, r1),
                step(typed_exec, r1),
                q("COMMIT"),
            ],
        ),
        (
            "SET in the extended protocol",
            vec![q("BEGIN"), step(ext_set, r1), q("COMMIT")],
        ),
    ];
    let mut mismatches = Vec::new();
    for (name, steps) in &scripts {
        match compare_with_postgres(&env, name, steps).await {
            Ok(None) => {}
            Ok(Some(m)) => mismatches.push(m),
            Err(e) => mismatches.push(format!("- {name}: {e:#}")),
        }
    }
    ensure!(
        mismatches.is_empty(),
        "{} of {} scripts differ from Postgres:\n{}",
        mismatches.len(),
        scripts.len(),
        mismatches.join("\n")
    );

    // Never forwarded: the set forms are answered by Sentinel; nothing reached the server, so
    // a probe on the one server connection sees no setting even mid-transaction of another.
    let c = env.plain().await?;
    let probe = env.plain().await?;
    c.batch_execute("BEGIN").await?;
    c.batch_execute("SET app.tenant_id = 'acme'").await?;
    let n = count_items(&c, "after SET in a transaction").await?;
    ensure!(n == env.tdb.oracle_count("acme").await?, "after SET: {n}");
    c.batch_execute("COMMIT").await?;
    assert_no_context(&c, "after COMMIT").await?;
    assert_no_context(&probe, "the probe").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_source_under_transaction_scope() -> Result<()> {
    let env = start("tensettx", |c| c.tenancy_scope(TenancyScope::Transaction)).await?;
    let c = env.plain().await?;
    let acme = env.tdb.oracle_count("acme").await?;

    // In a block: lasts to COMMIT / ROLLBACK.
    for end in ["COMMIT", "ROLLBACK"] {
        c.batch_execute("BEGIN").await?;
        c.batch_execute("SET app.tenant_id = 'acme'").await?;
        let n = count_items(&c, "in the block").await?;
        ensure!(n == acme, "{end}: {n} rows in the block");
        c.batch_execute(end).await?;
        assert_no_context(&c, &format!("after {end}")).await?;
    }

    // Outside a block: Sentinel warns and nothing lasts.
    let mut raw = env.raw(&[]).await?;
    let r = raw.query("SET app.tenant_id = 'acme'").await?;
    let warned = r
        .iter()
        .any(|x| matches!(x, Reply::Notice(Fields { severity, .. }) if severity == "WARNING"));
    ensure!(
        warned
            && r.contains(&Reply::Complete("SET".to_owned()))
            && r.last() == Some(&Reply::Ready('I')),
        "SET outside a block under scope = transaction: {r:?} (want a WARNING, SET, ReadyForQuery I)"
    );
    let r = raw.query("SELECT count(*) FROM items").await?;
    let e = first_error(&r).context("the read after a SET outside a block was not refused")?;
    ensure!(e.code == "42501" && e.message == CONTEXT_REQUIRED, "{e:?}");
    // SET LOCAL outside a block: 25P01 warning, no effect.
    let r = raw.query("SET LOCAL app.tenant_id = 'acme'").await?;
    ensure!(
        r.iter()
            .any(|x| matches!(x, Reply::Notice(f) if f.code == "25P01" && f.severity == "WARNING")),
        "SET LOCAL outside a block: {r:?}"
    );
    let r = raw.query("SELECT count(*) FROM items").await?;
    ensure!(
        first_error(&r).map(|e| e.code.as_str()) == Some("42501"),
        "after SET LOCAL outside a block: {r:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_source_under_session_scope() -> Result<()> {
    let env = start("tensetsess", |c| c.tenancy_scope(TenancyScope::Session)).await?;
    let c = env.plain().await?;
    let probe = env.plain().await?;
    let check = |tenant: &'static str, what: &'static str| {
        let c = &c;
        let env = &env;
        let probe = &probe;
        async move {
            // Several transactions in a row, with the probe using the one server in between.
            for _ in 0..3 {
                let rows = c
                    .query("SELECT DISTINCT tenant_id, current_setting('app.tenant_id', true) FROM items", &[])
                    .await
                    .map_err(|e| anyhow::anyhow!("{what}: {}", describe_error(&e)))?;
                let seen: Vec<(String, Option<String>)> =
                    rows.iter().map(|r| (r.get(0), r.get(1))).collect();
                ensure!(
                    seen == [(tenant.to_owned(), Some(tenant.to_owned()))],
                    "{what}: saw {seen:?}"
                );
                assert_no_context(probe, &format!("probe during {what}")).await?;
            }
            let n = count_items(c, what).await?;
            ensure!(
                n == env.tdb.oracle_count(tenant).await?,
                "{what}: count {n}"
            );
            anyhow::Ok(())
        }
    };
    c.batch_execute("SET app.tenant_id = 'acme'").await?;
    check("acme", "after SET app.tenant_id = 'acme'").await?;
    c.batch_execute("SET app.tenant_id = 'globex'").await?;
    check("globex", "after changing it to globex").await?;
    c.batch_execute("RESET app.tenant_id").await?;
    assert_no_context(&c, "after RESET app.tenant_id").await?;
    c.batch_execute("SET sentinel.tenant = 'initech'").await?;
    check("initech", "after SET sentinel.tenant = 'initech'").await?;
    c.batch_execute("SET app.tenant_id TO DEFAULT").await?;
    assert_no_context(&c, "after SET app.tenant_id TO DEFAULT").await?;

    // A prepared set_config($1, false), reused for several tenants.
    let st = c
        .prepare("SELECT set_config('app.tenant_id', $1, false)")
        .await?;
    for tenant in ["acme", "globex", "acme"] {
        let rows = c.query(&st, &[&tenant]).await.map_err(|e| {
            anyhow::anyhow!("prepared set_config({tenant}): {}", describe_error(&e))
        })?;
        ensure!(
            rows.len() == 1
                && rows[0].columns()[0].name() == "set_config"
                && rows[0].get::<_, Option<String>>(0).as_deref() == Some(tenant),
            "prepared set_config({tenant}) answered {:?}",
            rows.iter()
                .map(|r| r.get::<_, Option<String>>(0))
                .collect::<Vec<_>>()
        );
        let n = count_items(&c, "after the prepared set_config").await?;
        ensure!(
            n == env.tdb.oracle_count(tenant).await?,
            "after set_config({tenant}): {n}"
        );
    }
    c.batch_execute("RESET app.tenant_id").await?;
    assert_no_context(&c, "after the last RESET").await?;
    Ok(())
}

// === per-tenant settings ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_tenant_statement_timeout_applies_to_that_tenant_only() -> Result<()> {
    let env = start("tentimeout", |c| {
        c.tenant_statement_timeout("acme", Duration::from_secs(1))
    })
    .await?;
    let c = env.plain().await?;
    let t = simple_scalar(
        &c,
        "/*tenant='acme'*/ SELECT current_setting('statement_timeout')",
    )
    .await?;
    ensure!(
        t.as_deref() == Some("1s"),
        "acme's statement_timeout is {t:?}"
    );
    let res = c
        .simple_query("/*tenant='acme'*/ SELECT pg_sleep(3), count(*) FROM items")
        .await;
    expect_code("acme's slow statement", res, "57014")?;
    let t = simple_scalar(
        &c,
        "/*tenant='globex'*/ SELECT current_setting('statement_timeout')",
    )
    .await?;
    ensure!(
        t.as_deref() == Some("0"),
        "globex's statement_timeout is {t:?}"
    );
    let n: i64 = c
        .query_one(
            "/*tenant='globex'*/ SELECT count(*) FROM items WHERE pg_sleep(0.01) IS NOT NULL",
            &[],
        )
        .await
        .map_err(|e| anyhow::anyhow!("globex: {}", describe_error(&e)))?
        .get(0);
    ensure!(n == env.tdb.oracle_count("globex").await?, "globex: {n}");
    let t = simple_scalar(&c, "SELECT current_setting('statement_timeout')").await?;
    ensure!(
        t.as_deref() == Some("0"),
        "with no tenant, statement_timeout is {t:?}"
    );
    Ok(())
}

/// The tenant is applied inside the client's own transaction, and its replies are swallowed: a
/// client sees exactly what Postgres would have sent it for the same messages (compared with a
/// direct connection, on statements whose results do not depend on the tenant). Covers the
/// simple protocol (one and several statements, a transaction with a savepoint, an error and
/// ROLLBACK TO), the unnamed statement, a pipeline of two Sync batches, a named statement used
/// in two transactions, and a token-bound connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_application_is_invisible_to_the_client() -> Result<()> {
    let env = start("teninvis", |c| c).await?;
    let r1 = Until::Ready(1);
    const EMPTY: &str = "SELECT count(*), max(v) FROM items WHERE false";
    let tagged = |sql: &str| format!("{sql} /*tenant='acme'*/");
    let ext = |sql: &str| {
        Wire::new()
            .parse("", sql, &[])
            .bind("", "", &[])
            .describe_portal("")
            .execute("", 0)
            .sync()
    };
    let two_batches = Wire(
        [
            ext(&tagged(EMPTY)).0,
            ext(&format!("{EMPTY} AND id > 0 /*tenant='acme'*/")).0,
        ]
        .concat(),
    );
    let named_prepare = Wire::new()
        .parse("empty_stmt", &tagged(EMPTY), &[])
        .describe_statement("empty_stmt")
        .sync();
    let named_exec = || {
        Wire::new()
            .bind("", "empty_stmt", &[])
            .execute("", 0)
            .sync()
    };
    let tx_with_savepoint = vec![
        q("BEGIN"),
        q(&tagged(EMPTY)),
        q("SAVEPOINT s1"),
        q("SELECT 1/0"),
        q("ROLLBACK TO SAVEPOINT s1"),
        q(EMPTY),
        q("SELECT current_setting('statement_timeout')"),
        q("COMMIT"),
    ];
    let scripts: Vec<(&str, Vec<Step>)> = vec![
        ("one tagged statement", vec![q(&tagged(EMPTY))]),
        (
            "a tagged multi-statement query",
            vec![q(&format!("/*tenant='acme'*/ {EMPTY}; SELECT 2; {EMPTY}"))],
        ),
        (
            "a transaction with a savepoint and an error",
            tx_with_savepoint.clone(),
        ),
        ("the unnamed statement", vec![step(ext(&tagged(EMPTY)), r1)]),
        (
            "two Sync batches in one write",
            vec![step(two_batches, Until::Ready(2))],
        ),
        (
            "a named statement in two transactions",
            vec![
                step(named_prepare, r1),
                step(named_exec(), r1),
                q("BEGIN"),
                step(named_exec(), r1),
                q("COMMIT"),
            ],
        ),
    ];
    let mut mismatches = Vec::new();
    for (name, steps) in &scripts {
        match compare_with_postgres(&env, name, steps).await {
            Ok(None) => {}
            Ok(Some(m)) => mismatches.push(m),
            Err(e) => mismatches.push(format!("- {name}: {e:#}")),
        }
    }
    // The same transaction on a token-bound connection (no tag needed there).
    let token = env.cfg.tenant_token("acme", None)?;
    let bound: Vec<Step> = vec![
        q("BEGIN"),
        q(EMPTY),
        q("SAVEPOINT s1"),
        q("SELECT 1/0"),
        q("ROLLBACK TO SAVEPOINT s1"),
        q(EMPTY),
        q("COMMIT"),
        q(EMPTY),
        step(ext(EMPTY), r1),
    ];
    match compare_with_postgres_as(&env, "a token-bound connection", &bound, Some(&token)).await {
        Ok(None) => {}
        Ok(Some(m)) => mismatches.push(m),
        Err(e) => mismatches.push(format!("- a token-bound connection: {e:#}")),
    }
    ensure!(
        mismatches.is_empty(),
        "{} scripts differ from Postgres:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    Ok(())
}
