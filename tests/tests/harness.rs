//! The harness's own tests, against Postgres directly: if these fail, no black-box suite result
//! means anything. None of them needs the sentinel binary (a stand-in plays its part).

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use sentinel_tests::clients::{self, connect_direct, try_connect_direct};
use sentinel_tests::config::{Auth, PoolMode, SentinelConfig, duration_str, scram_verifier};
use sentinel_tests::names::quote_literal;
use sentinel_tests::pg::{PgCluster, running_as_root, shared_cluster};
use sentinel_tests::sentinel::{SentinelProcess, free_port, locate_sentinel_binary};
use tokio_postgres::error::SqlState;

async fn scalar_string(client: &tokio_postgres::Client, sql: &str) -> Result<String> {
    let rows = client.simple_query(sql).await.context(sql.to_owned())?;
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .with_context(|| format!("{sql} returned no row"))
}

#[tokio::test]
async fn shared_cluster_is_started_once_per_binary() -> Result<()> {
    let a = shared_cluster().await?;
    let b = shared_cluster().await?;
    assert!(std::ptr::eq(a, b), "two calls gave two clusters");
    assert_ne!(a.port(), 0);
    Ok(())
}

#[tokio::test]
async fn cluster_settings_are_the_fast_private_ones() -> Result<()> {
    let pg = shared_cluster().await?;
    let su = pg.connect_superuser("postgres").await?;
    assert_eq!(scalar_string(&su, "SHOW fsync").await?, "off");
    assert_eq!(scalar_string(&su, "SHOW synchronous_commit").await?, "off");
    assert_eq!(scalar_string(&su, "SHOW full_page_writes").await?, "off");
    assert_eq!(scalar_string(&su, "SHOW max_connections").await?, "200");
    assert_eq!(
        scalar_string(&su, "SHOW listen_addresses").await?,
        "127.0.0.1"
    );
    assert_eq!(
        scalar_string(&su, "SHOW port").await?,
        pg.port().to_string()
    );
    assert_eq!(
        scalar_string(&su, "SHOW unix_socket_directories").await?,
        pg.socket_dir().display().to_string()
    );
    assert_eq!(
        scalar_string(&su, "SHOW password_encryption").await?,
        "scram-sha-256"
    );
    assert!(
        scalar_string(&su, "SELECT version()")
            .await?
            .starts_with("PostgreSQL 15"),
        "not Postgres 15"
    );
    // SCRAM everywhere in pg_hba.conf: no trust, no md5.
    let hba = std::fs::read_to_string(pg.data_dir().join("pg_hba.conf"))?;
    let methods: Vec<&str> = hba
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().last())
        .collect();
    assert!(!methods.is_empty());
    assert!(
        methods.iter().all(|m| *m == "scram-sha-256"),
        "pg_hba methods: {methods:?}"
    );
    Ok(())
}

#[tokio::test]
async fn test_db_is_private_and_not_superuser() -> Result<()> {
    let pg = shared_cluster().await?;
    let db = pg.test_db("harness").await?;
    assert_eq!(db.name, db.role);

    let client = db.connect().await?;
    assert_eq!(
        scalar_string(&client, "SELECT current_user").await?,
        db.role
    );
    assert_eq!(
        scalar_string(&client, "SELECT current_database()").await?,
        db.name
    );
    assert_eq!(
        scalar_string(
            &client,
            "SELECT rolsuper::text FROM pg_roles WHERE rolname = current_user"
        )
        .await?,
        "false"
    );
    client
        .batch_execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1), (2), (3)")
        .await?;
    let n: i64 = client
        .query_one("SELECT count(*) FROM t", &[])
        .await?
        .get(0);
    assert_eq!(n, 3);

    // The role owns the database; the password is stored as a SCRAM verifier.
    let su = pg.connect_superuser("postgres").await?;
    let owner: String = su
        .query_one(
            "SELECT pg_get_userbyid(datdba)::text FROM pg_database WHERE datname = $1",
            &[&db.name],
        )
        .await?
        .get(0);
    assert_eq!(owner, db.role);
    let stored: String = su
        .query_one(
            "SELECT rolpassword FROM pg_authid WHERE rolname = $1",
            &[&db.role],
        )
        .await?
        .get(0);
    assert!(stored.starts_with("SCRAM-SHA-256$4096:"), "{stored}");

    // A wrong password is refused by SCRAM with 28P01.
    let err = try_connect_direct(pg, &db.role, "wrong-password", &db.name)
        .await
        .err()
        .context("a wrong password was accepted")?;
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD), "{err}");

    // Two test dbs never collide.
    let other = pg.test_db("harness").await?;
    assert_ne!(other.name, db.name);
    let other_client = connect_direct(pg, &other.role, &other.password, &other.name).await?;
    let err = other_client
        .simple_query(&format!("SELECT 1 FROM {}.public.t", db.name))
        .await
        .err()
        .context("cross-database reference worked")?;
    assert_eq!(err.code(), Some(&SqlState::FEATURE_NOT_SUPPORTED), "{err}");
    Ok(())
}

#[tokio::test]
async fn create_role_and_database_explicitly() -> Result<()> {
    let pg = shared_cluster().await?;
    let role = sentinel_tests::names::unique_name("explicit");
    let db = format!("{role}_db");
    pg.create_role(&role, "pw with 'quotes' and spaces").await?;
    pg.create_database(&db, &role).await?;
    let client = connect_direct(pg, &role, "pw with 'quotes' and spaces", &db).await?;
    assert_eq!(scalar_string(&client, "SELECT current_user").await?, role);
    Ok(())
}

#[tokio::test]
async fn harness_scram_verifiers_are_accepted_by_postgres() -> Result<()> {
    // The verifiers SentinelConfig writes must be real SCRAM-SHA-256 verifiers: Postgres takes
    // a pre-hashed one as a password and must then accept the cleartext password at login.
    let pg = shared_cluster().await?;
    let db = pg.test_db("verifier").await?;
    let verifier = scram_verifier("client-secret");
    assert!(verifier.starts_with("SCRAM-SHA-256$4096:"), "{verifier}");
    let su = pg.connect_superuser("postgres").await?;
    su.batch_execute(&format!(
        "ALTER ROLE {} PASSWORD {}",
        db.role,
        quote_literal(&verifier)
    ))
    .await?;
    let client = connect_direct(pg, &db.role, "client-secret", &db.name).await?;
    assert_eq!(scalar_string(&client, "SELECT 1").await?, "1");
    let err = try_connect_direct(pg, &db.role, &db.password, &db.name)
        .await
        .err()
        .context("the old password still works")?;
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD));
    Ok(())
}

#[tokio::test]
async fn psql_helper_runs_the_real_client() -> Result<()> {
    let pg = shared_cluster().await?;
    let db = pg.test_db("psql").await?;
    let out = clients::psql(pg.port(), &db.role, &db.password, &db.name, "SELECT 40 + 2").await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
    let out = clients::psql(pg.port(), &db.role, "nope", &db.name, "SELECT 1").await?;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("password authentication failed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[tokio::test]
async fn two_clusters_in_parallel_are_independent() -> Result<()> {
    let (a, b) = tokio::join!(PgCluster::start(), PgCluster::start());
    let (a, b) = (a?, b?);
    assert_ne!(a.port(), b.port());
    assert_ne!(a.root_dir(), b.root_dir());
    assert_ne!(a.superuser_password(), b.superuser_password());

    let ca = a.connect_superuser("postgres").await?;
    let cb = b.connect_superuser("postgres").await?;
    ca.batch_execute("CREATE TABLE only_in_a (x int)").await?;
    let in_b: bool = cb
        .query_one("SELECT to_regclass('only_in_a') IS NOT NULL", &[])
        .await?
        .get(0);
    assert!(
        !in_b,
        "a table created in cluster a is visible in cluster b"
    );

    // Dropping a cluster stops its server and removes its directory; the other keeps running.
    let (a_root, a_port) = (a.root_dir().to_path_buf(), a.port());
    drop(ca);
    drop(a);
    assert!(!a_root.exists(), "{} still exists", a_root.display());
    let refused = tokio::net::TcpStream::connect(("127.0.0.1", a_port)).await;
    assert!(refused.is_err(), "port {a_port} still accepts connections");
    assert_eq!(scalar_string(&cb, "SELECT 7").await?, "7");
    Ok(())
}

#[tokio::test]
async fn restart_keeps_data_and_port() -> Result<()> {
    let pg = PgCluster::start().await?;
    let port = pg.port();
    let db = pg.test_db("restart").await?;
    let client = db.connect().await?;
    client
        .batch_execute("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('before')")
        .await?;

    pg.restart().await?;
    assert_eq!(pg.port(), port);
    // The old connection died with the old server.
    assert!(client.simple_query("SELECT 1").await.is_err());
    let client = db.connect().await?;
    assert_eq!(
        scalar_string(&client, "SELECT v FROM kept").await?,
        "before"
    );

    // stop() really stops; start_again() brings it back on the same port.
    drop(client);
    pg.stop().await?;
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
    );
    pg.start_again().await?;
    let client = db.connect().await?;
    assert_eq!(
        scalar_string(&client, "SELECT v FROM kept").await?,
        "before"
    );
    Ok(())
}

#[tokio::test]
async fn server_files_belong_to_the_postgres_user_when_root() -> Result<()> {
    let pg = shared_cluster().await?;
    let meta = std::fs::metadata(pg.data_dir())?;
    if running_as_root() {
        assert_ne!(meta.uid(), 0, "the data dir is owned by root");
        let su = pg.connect_superuser("postgres").await?;
        // The server runs as the data dir's owner (postgres refuses anything else).
        assert_eq!(
            scalar_string(&su, "SHOW data_directory").await?,
            pg.data_dir().display().to_string()
        );
    } else {
        assert_eq!(meta.uid(), rustix::process::geteuid().as_raw());
    }
    Ok(())
}

#[test]
fn free_port_can_be_bound() -> Result<()> {
    let port = free_port();
    assert_ne!(port, 0);
    let listener = std::net::TcpListener::bind(("127.0.0.1", port))?;
    assert_eq!(listener.local_addr()?.port(), port);
    Ok(())
}

#[test]
fn durations_render_like_the_config_expects() {
    assert_eq!(duration_str(Duration::from_secs(5)), "5s");
    assert_eq!(duration_str(Duration::from_millis(250)), "250ms");
    assert_eq!(duration_str(Duration::ZERO), "0s");
}

/// Every `key` in a table of the example config, for comparison with the rendered one.
fn keys(value: &toml::Value) -> Vec<String> {
    let mut out: Vec<String> = value
        .as_table()
        .map(|t| {
            t.iter()
                .filter(|(_, v)| !v.is_table() && (!v.is_array() || is_scalar_array(v)))
                .map(|(k, _)| k.clone())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn is_scalar_array(v: &toml::Value) -> bool {
    v.as_array()
        .is_some_and(|a| a.iter().all(|e| !e.is_table()))
}

#[test]
fn config_renders_every_key_of_the_example() -> Result<()> {
    let example_path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/sentinel.example.toml");
    let example: toml::Value = toml::from_str(&std::fs::read_to_string(&example_path)?)?;

    let cfg = SentinelConfig::with_upstream("127.0.0.1", 5999)
        .user("app", Auth::Scram("pw"), "app_server")
        .server_password("server-secret")
        .user("ops", Auth::Trust, "ops")
        .pool_size(4)
        .pool_mode(PoolMode::Session)
        .query_timeout(Duration::from_millis(250))
        .trust_networks(&["127.0.0.1/32"]);
    let rendered: toml::Value = toml::from_str(&cfg.render()).context(cfg.render())?;

    for table in [&["process"][..], &["postgres"], &["postgres", "upstream"]] {
        let pick = |v: &toml::Value| {
            table
                .iter()
                .try_fold(v, |v, k| v.get(k))
                .cloned()
                .unwrap_or(toml::Value::Boolean(false))
        };
        let (want, got) = (keys(&pick(&example)), keys(&pick(&rendered)));
        for k in &want {
            ensure!(
                got.contains(k),
                "rendered [{}] lacks {k}:\n{}",
                table.join("."),
                cfg.render()
            );
        }
    }
    let example_user = &example["postgres"]["users"][0];
    let app = &rendered["postgres"]["users"][0];
    for k in keys(example_user) {
        ensure!(app.get(&k).is_some(), "rendered user lacks {k}");
    }

    assert_eq!(
        rendered["postgres"]["listen"].as_str(),
        Some(format!("127.0.0.1:{}", cfg.port()).as_str())
    );
    assert_eq!(
        rendered["postgres"]["upstream"]["port"].as_integer(),
        Some(5999)
    );
    assert_eq!(rendered["postgres"]["pool_size"].as_integer(), Some(4));
    assert_eq!(rendered["postgres"]["pool_mode"].as_str(), Some("session"));
    assert_eq!(
        rendered["postgres"]["query_timeout"].as_str(),
        Some("250ms")
    );
    assert_eq!(app["server_user"].as_str(), Some("app_server"));
    assert_eq!(app["auth"].as_str(), Some("scram-sha-256"));
    let verifier = app["scram_verifier"].as_str().context("no verifier")?;
    assert!(verifier.starts_with("SCRAM-SHA-256$4096:"));
    assert!(
        !cfg.render().contains("server-secret"),
        "a password leaked into the TOML"
    );
    let var = app["server_password_env"].as_str().context("no env var")?;
    assert!(
        cfg.env()
            .iter()
            .any(|(k, v)| k == var && v == "server-secret"),
        "{:?}",
        cfg.env()
    );
    let ops = &rendered["postgres"]["users"][1];
    assert_eq!(ops["auth"].as_str(), Some("trust"));
    assert!(ops.get("scram_verifier").is_none());
    assert!(ops.get("server_password_env").is_none());
    Ok(())
}

#[test]
fn config_accepts_options_it_does_not_know_yet() -> Result<()> {
    let cfg = SentinelConfig::with_upstream("127.0.0.1", 5432)
        .option("postgres", "future_knob", "true")
        .option("postgres.tls", "cert_file", "\"/x.crt\"")
        .extra_toml("[future]\nlisten = \"127.0.0.1:0\"")
        .user(
            "app",
            Auth::Verifier("SCRAM-SHA-256$4096:abc$def:ghi"),
            "app",
        );
    let rendered: toml::Value = toml::from_str(&cfg.render()).context(cfg.render())?;
    assert_eq!(rendered["postgres"]["future_knob"].as_bool(), Some(true));
    assert_eq!(
        rendered["postgres"]["tls"]["cert_file"].as_str(),
        Some("/x.crt")
    );
    assert_eq!(rendered["future"]["listen"].as_str(), Some("127.0.0.1:0"));
    assert_eq!(
        rendered["postgres"]["users"][0]["scram_verifier"].as_str(),
        Some("SCRAM-SHA-256$4096:abc$def:ghi")
    );
    Ok(())
}

#[test]
fn sentinel_binary_is_found_beside_the_test_profile() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let profile = tmp.path().join("target/debug");
    let deps = profile.join("deps");
    std::fs::create_dir_all(&deps)?;
    let exe = deps.join("harness-0123456789abcdef");

    let err = locate_sentinel_binary(None, &exe)
        .err()
        .context("found a binary that does not exist")?;
    assert!(err.to_string().contains("cargo build -p sentinel"), "{err}");

    std::fs::write(profile.join("sentinel"), "")?;
    assert_eq!(
        locate_sentinel_binary(None, &exe)?,
        profile.join("sentinel")
    );

    let custom = tmp.path().join("custom-sentinel");
    let err = locate_sentinel_binary(Some(custom.clone()), &exe)
        .err()
        .context("a missing SENTINEL_BIN was accepted")?;
    assert!(err.to_string().contains("SENTINEL_BIN"), "{err}");
    std::fs::write(&custom, "")?;
    assert_eq!(locate_sentinel_binary(Some(custom.clone()), &exe)?, custom);
    Ok(())
}

/// A stand-in for the sentinel binary: reads `run --config <file>` like the real one, listens
/// on `[postgres] listen`, echoes an env var, and exits 7 on SIGTERM.
const STAND_IN: &str = r#"#!/usr/bin/env python3
import os, signal, socket, sys, tomllib
assert sys.argv[1:3] == ["run", "--config"], sys.argv
with open(sys.argv[3], "rb") as f:
    cfg = tomllib.load(f)
host, port = cfg["postgres"]["listen"].rsplit(":", 1)
def term(*_):
    print("got SIGTERM", flush=True)
    os._exit(7)
signal.signal(signal.SIGTERM, term)
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((host, int(port)))
s.listen()
print("listening", os.environ.get("STAND_IN_GREETING"), flush=True)
print("to stderr", file=sys.stderr, flush=True)
while True:
    conn, _ = s.accept()
    conn.close()
"#;

fn write_script(dir: &Path, name: &str, text: &str) -> Result<std::path::PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, text)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

#[tokio::test]
async fn sentinel_process_runs_waits_signals_and_captures_logs() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let bin = write_script(tmp.path(), "stand-in", STAND_IN)?;
    let cfg = SentinelConfig::with_upstream("127.0.0.1", 5432);
    let mut process = SentinelProcess::start_binary(
        &bin,
        &cfg.render(),
        &[("STAND_IN_GREETING", "hello-from-env")],
    )
    .await?;
    assert_eq!(process.port(), cfg.port());
    assert!(process.is_running());
    assert!(process.pid() > 0);
    process
        .wait_for_log("to stderr", Duration::from_secs(10))
        .await?;
    let logs = process.logs();
    assert!(logs.contains("listening hello-from-env"), "{logs}");
    assert_eq!(
        std::fs::read_to_string(process.config_path())?,
        cfg.render()
    );
    tokio::net::TcpStream::connect(process.addr()).await?;

    process.signal(libc::SIGTERM)?;
    let status = process.wait_exit(Duration::from_secs(10)).await?;
    assert_eq!(status.code(), Some(7));
    assert!(process.logs().contains("got SIGTERM"), "{}", process.logs());
    assert!(!process.is_running());
    assert!(
        process.signal(libc::SIGTERM).is_err(),
        "signalled an exited process"
    );
    Ok(())
}

#[tokio::test]
async fn sentinel_process_that_dies_at_startup_reports_its_output() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let bin = write_script(
        tmp.path(),
        "dies",
        "#!/bin/sh\necho \"boom: bad config $3\" >&2\nexit 3\n",
    )?;
    let cfg = SentinelConfig::with_upstream("127.0.0.1", 5432);
    let err = SentinelProcess::start_binary(&bin, &cfg.render(), &[])
        .await
        .err()
        .context("a process that exited was reported as started")?;
    let msg = format!("{err:#}");
    assert!(msg.contains("boom: bad config"), "{msg}");
    assert!(msg.contains("sentinel.toml"), "{msg}");
    assert!(msg.contains("exit status: 3"), "{msg}");
    Ok(())
}

#[tokio::test]
async fn sentinel_process_rejects_a_config_without_a_usable_port() -> Result<()> {
    let err = SentinelProcess::start_binary(
        Path::new("/bin/true"),
        "[postgres]\nlisten = \"127.0.0.1:0\"\n",
        &[],
    )
    .await
    .err()
    .context("port 0 accepted")?;
    assert!(err.to_string().contains("port 0"), "{err}");
    Ok(())
}
