//! Keys and secrets, black box: the `sentinel` binary's key commands (`keys new|rotate|drop|check`,
//! `seal`, `token issue`, `vkey issue`) and `sentinel run` with a master keyring, against the
//! shared Postgres cluster.
//!
//! - Sentinel refuses to start without a master key or a salt, and says how to make them.
//! - An upstream password sealed with `sentinel seal` logs Sentinel into Postgres, wherever the
//!   sealed value is kept (config, environment variable, file).
//! - Rotation end to end: sealed with k1, rotated (config re-sealed in place, keyring k2,k1),
//!   Sentinel serves with k2+k1, k1 dropped, Sentinel serves with k2 alone.
//! - A tampered, misplaced or foreign sealed value stops Sentinel before it serves, naming the
//!   field; `keys check` exits 1 on the same.
//! - Tokens and virtual keys printed by the CLI verify with the policy crate under the same
//!   keyring and salt, and under nothing else.
//! - A trace-level run through a full session prints no secret.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, ensure};
use sentinel_policy::keys::{
    EnvSalt, KeyError, Keyring, TokenKind, verify_tenant_token, verify_virtual_key,
};
use sentinel_tests::config::{MASTER_KEY_ENV, new_keyring_text, new_salt};
use sentinel_tests::sentinel::{CliOutput, run_sentinel};
use sentinel_tests::{
    Auth, PgCluster, SentinelConfig, SentinelProcess, TestDb, connect_via_sentinel, shared_cluster,
};

// === helpers ===

/// A temp dir for config files and the like.
fn workdir() -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix("sentinel-keys-test-")
        .tempdir()
        .context("creating a temp dir")
}

fn path_str(path: &Path) -> String {
    path.display().to_string()
}

/// Runs `sentinel <args…> --config <config>` with the keyring `ring` (if any) in the environment.
async fn cli(
    args: &[&str],
    config: &Path,
    ring: Option<&str>,
    stdin: Option<&str>,
) -> Result<CliOutput> {
    let mut argv: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    argv.push("--config".to_owned());
    argv.push(path_str(config));
    let env: Vec<(&str, &str)> = ring.map(|r| (MASTER_KEY_ENV, r)).into_iter().collect();
    run_sentinel(&argv, &env, stdin.map(str::as_bytes)).await
}

/// `sentinel seal --for-user <user>` of `secret`: the sealed value.
async fn seal_for(config: &Path, ring: &str, user: &str, secret: &str) -> Result<String> {
    let out = cli(
        &["seal", "--for-user", user],
        config,
        Some(ring),
        Some(secret),
    )
    .await?
    .ok()?;
    let sealed = out.stdout.trim().to_owned();
    ensure!(sealed.starts_with("sealed:v1:"), "{out:?}");
    ensure!(!out.all().contains(secret), "seal printed the secret");
    Ok(sealed)
}

/// The base64 of every key in a keyring text.
fn key_material(ring: &str) -> Vec<String> {
    ring.split(',')
        .filter_map(|e| e.split_once(':').map(|(_, k)| k.trim().to_owned()))
        .collect()
}

/// The keyring on the `SENTINEL_MASTER_KEY=` line of a command's stdout.
fn printed_keyring(out: &CliOutput) -> Result<String> {
    out.stdout
        .lines()
        .find_map(|l| l.strip_prefix("SENTINEL_MASTER_KEY="))
        .map(str::to_owned)
        .with_context(|| format!("no SENTINEL_MASTER_KEY= line in {out:?}"))
}

fn key_ids(ring: &str) -> Result<Vec<String>> {
    Ok(Keyring::parse(ring)?
        .ids()
        .map(|id| id.to_string())
        .collect())
}

/// Fails naming which secret appears in `text`; never prints the secret itself.
fn assert_no_secrets(what: &str, text: &str, secrets: &[(&str, &str)]) -> Result<()> {
    for (name, value) in secrets {
        ensure!(!value.is_empty(), "empty secret {name} in the check list");
        ensure!(
            !text.contains(value),
            "{what} contains the {name} ({} bytes of output)",
            text.len()
        );
    }
    Ok(())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Starts Sentinel on `config_toml` with `ring`, checks a query as `user`, stops it.
async fn serves(config_toml: &str, ring: &str, user: &str, password: &str, db: &str) -> Result<()> {
    let mut sentinel = SentinelProcess::start(config_toml, &[(MASTER_KEY_ENV, ring)]).await?;
    let result = query_current_user(&sentinel, user, password, db).await;
    let logs = sentinel.logs();
    sentinel.kill().await?;
    let who = result.with_context(|| format!("sentinel logs:\n{logs}"))?;
    ensure!(who == user, "current_user is {who}, not {user}");
    Ok(())
}

async fn query_current_user(
    sentinel: &SentinelProcess,
    user: &str,
    password: &str,
    db: &str,
) -> Result<String> {
    let client = connect_via_sentinel(sentinel, user, password, db).await?;
    let row = client.query_one("SELECT current_user::text", &[]).await?;
    Ok(row.get(0))
}

/// A database, and a config with one SCRAM user for it and no upstream password yet.
async fn db_and_config(prefix: &str) -> Result<(&'static PgCluster, TestDb, SentinelConfig)> {
    let pg = shared_cluster().await?;
    let db = pg.test_db(prefix).await?;
    let cfg = SentinelConfig::new(pg).user(&db.role, Auth::Scram("client-pw-0"), &db.role);
    Ok((pg, db, cfg))
}

// === the harness's keys ===

#[test]
fn harness_gives_every_config_fresh_keys() -> Result<()> {
    let a = SentinelConfig::with_upstream("127.0.0.1", 5432);
    let b = SentinelConfig::with_upstream("127.0.0.1", 5432);
    let (ring_a, ring_b) = (
        a.master_key_text().context("no key")?,
        b.master_key_text().context("no key")?,
    );
    assert_ne!(ring_a, ring_b);
    assert_eq!(key_ids(ring_a)?, ["k1"]);
    let (salt_a, salt_b) = (
        a.salt_base64().context("no salt")?,
        b.salt_base64().context("no salt")?,
    );
    assert_ne!(salt_a, salt_b);
    EnvSalt::from_base64(&salt_a)?;

    let rendered: toml::Value = toml::from_str(&a.render())?;
    assert_eq!(rendered["keys"]["salt"].as_str(), Some(salt_a.as_str()));
    assert!(rendered["keys"].get("master_key_file").is_none());
    assert!(
        a.env()
            .iter()
            .any(|(k, v)| k == MASTER_KEY_ENV && v == ring_a)
    );
    assert!(
        !a.render().contains(&key_material(ring_a)[0]),
        "the key is in the TOML"
    );

    // Overrides.
    let ring = new_keyring_text("k9");
    let salt = new_salt();
    let c = a.clone().master_key(&ring).salt(&salt);
    assert_eq!(c.master_key_text(), Some(ring.as_str()));
    assert_eq!(
        c.env().iter().filter(|(k, _)| k == MASTER_KEY_ENV).count(),
        1
    );
    assert_eq!(c.salt_base64(), Some(salt.clone()));
    let d = c.clone().master_key_file(Path::new("/run/keys/master"));
    assert_eq!(d.master_key_text(), None);
    let rendered: toml::Value = toml::from_str(&d.render())?;
    assert_eq!(
        rendered["keys"]["master_key_file"].as_str(),
        Some("/run/keys/master")
    );
    let e = c.without_salt().without_master_key();
    assert!(!e.render().contains("[keys]"), "{}", e.render());
    assert_eq!(e.master_key_text(), None);
    Ok(())
}

// === refusing to start ===

#[tokio::test]
async fn refuses_to_start_without_a_master_key() -> Result<()> {
    let dir = workdir()?;
    let config = dir.path().join("sentinel.toml");
    let cfg = SentinelConfig::with_upstream("127.0.0.1", 5432).user("app", Auth::Trust, "app");
    let ring = cfg.master_key_text().context("no key")?.to_owned();
    let salt = cfg.salt_base64().context("no salt")?;
    cfg.write_to(&config)?;

    let out = cli(&["run"], &config, None, None).await?;
    ensure!(!out.success(), "started without a master key: {out:?}");
    let all = out.all();
    assert!(all.contains("sentinel keys new"), "{all}");
    assert!(all.contains(MASTER_KEY_ENV), "{all}");
    assert!(all.contains("master_key_file"), "{all}");
    assert_no_secrets(
        "the refusal",
        &all,
        &[("master key", &key_material(&ring)[0]), ("salt", &salt)],
    )?;

    // A key that is not a key is refused the same way, and not echoed.
    for bad in [
        "k1:c2hvcnQ=",
        "hunter2hunter2hunter2hunter2hunter2hunter2",
        "k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    ] {
        let out = cli(&["run"], &config, Some(bad), None).await?;
        ensure!(!out.success(), "started with a bad master key: {out:?}");
        let all = out.all();
        assert!(all.contains("sentinel keys new"), "{all}");
        assert!(all.contains(MASTER_KEY_ENV), "{all}");
        assert!(!all.contains(bad), "the bad key was echoed: {all}");
    }

    // A key file that does not exist; and a key file and the variable at once.
    let file_cfg = cfg.clone().master_key_file(&dir.path().join("missing.key"));
    file_cfg.write_to(&config)?;
    let out = cli(&["run"], &config, None, None).await?;
    ensure!(!out.success(), "{out:?}");
    assert!(out.stderr.contains("master_key_file"), "{}", out.stderr);
    let out = cli(&["run"], &config, Some(&ring), None).await?;
    ensure!(!out.success(), "{out:?}");
    assert!(out.stderr.contains("both"), "{}", out.stderr);
    assert_no_secrets(
        "the refusal",
        &out.all(),
        &[("master key", &key_material(&ring)[0])],
    )?;
    Ok(())
}

#[tokio::test]
async fn refuses_to_start_without_a_salt() -> Result<()> {
    let dir = workdir()?;
    let config = dir.path().join("sentinel.toml");
    let cfg = SentinelConfig::with_upstream("127.0.0.1", 5432)
        .user("app", Auth::Trust, "app")
        .without_salt();
    let ring = cfg.master_key_text().context("no key")?.to_owned();
    cfg.write_to(&config)?;
    let out = cli(&["run"], &config, Some(&ring), None).await?;
    ensure!(!out.success(), "started without a salt: {out:?}");
    let all = out.all();
    assert!(all.contains("keys.salt"), "{all}");
    assert!(all.contains("sentinel keys new"), "{all}");
    assert_no_secrets(
        "the refusal",
        &all,
        &[("master key", &key_material(&ring)[0])],
    )?;

    // check-config says the same, without needing a key.
    let out = cli(&["check-config"], &config, None, None).await?;
    ensure!(!out.success(), "{out:?}");
    assert!(out.stderr.contains("keys.salt"), "{}", out.stderr);
    Ok(())
}

// === keys new, seal, and logging in with sealed passwords ===

#[tokio::test]
async fn keys_new_output_parses_and_works() -> Result<()> {
    let out = run_sentinel(&["keys", "new", "--id", "k7"], &[], None)
        .await?
        .ok()?;
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", out.stdout);
    let ring = lines[0]
        .strip_prefix("SENTINEL_MASTER_KEY=")
        .context("line 1")?;
    assert_eq!(key_ids(ring)?, ["k7"]);
    let salt_line: toml::Table = toml::from_str(lines[1])?;
    let salt = salt_line["salt"]
        .as_str()
        .context("line 2 is `salt = \"…\"`")?;
    EnvSalt::from_base64(salt)?;
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
    assert!(out.stderr.contains("[keys]"), "{}", out.stderr);

    // Two runs never repeat.
    let again = run_sentinel(&["keys", "new"], &[], None).await?.ok()?;
    assert_ne!(again.stdout, out.stdout);
    assert!(again.stdout.starts_with("SENTINEL_MASTER_KEY=k1:"));

    // They work: a Sentinel with them logs into Postgres with a password sealed under them.
    let (_, db, cfg) = db_and_config("keysnew").await?;
    let cfg = cfg.master_key(ring).salt(salt);
    let dir = workdir()?;
    let config = dir.path().join("sentinel.toml");
    cfg.write_to(&config)?;
    let sealed = seal_for(&config, ring, &db.role, &db.password).await?;
    assert!(sealed.starts_with("sealed:v1:k7:"), "{sealed}");
    let cfg = cfg.server_password_sealed(&sealed);
    serves(&cfg.render(), ring, &db.role, "client-pw-0", &db.name).await?;
    Ok(())
}

#[tokio::test]
async fn sealed_upstream_passwords_log_in_from_config_env_and_file() -> Result<()> {
    let pg = shared_cluster().await?;
    let (a, b, c) = (
        pg.test_db("sealcfg").await?,
        pg.test_db("sealenv").await?,
        pg.test_db("sealfile").await?,
    );
    let dir = workdir()?;
    let config = dir.path().join("sentinel.toml");
    let base = SentinelConfig::new(pg)
        .user(&a.role, Auth::Scram("pw-a"), &a.role)
        .user(&b.role, Auth::Scram("pw-b"), &b.role)
        .user(&c.role, Auth::Scram("pw-c"), &c.role);
    let ring = base.master_key_text().context("no key")?.to_owned();
    base.write_to(&config)?;
    let sealed_a = seal_for(&config, &ring, &a.role, &a.password).await?;
    let sealed_b = seal_for(&config, &ring, &b.role, &b.password).await?;
    let sealed_c = seal_for(&config, &ring, &c.role, &c.password).await?;
    // The same secret sealed twice gives two values (random nonces).
    assert_ne!(
        sealed_a,
        seal_for(&config, &ring, &a.role, &a.password).await?
    );

    let password_file = dir.path().join("c.password");
    std::fs::write(&password_file, format!("{sealed_c}\n"))?;
    let cfg = SentinelConfig::new(pg)
        .master_key(&ring)
        .salt(&base.salt_base64().context("no salt")?)
        .user(&a.role, Auth::Scram("pw-a"), &a.role)
        .server_password_sealed(&sealed_a)
        .user(&b.role, Auth::Scram("pw-b"), &b.role)
        .server_password_env("SENTINEL_TEST_SEALED_B")
        .env_var("SENTINEL_TEST_SEALED_B", &sealed_b)
        .user(&c.role, Auth::Scram("pw-c"), &c.role)
        .server_password_file(&password_file);
    let rendered = cfg.render();
    for db in [&a, &b, &c] {
        assert!(
            !rendered.contains(&db.password),
            "a password is in the TOML"
        );
    }
    let sentinel = SentinelProcess::start_with(&cfg).await?;
    for (db, pw) in [(&a, "pw-a"), (&b, "pw-b"), (&c, "pw-c")] {
        let who = query_current_user(&sentinel, &db.role, pw, &db.name)
            .await
            .with_context(|| format!("as {}; logs:\n{}", db.role, sentinel.logs()))?;
        assert_eq!(who, db.role);
    }
    let logs = sentinel.logs();
    assert!(logs.contains("keyring loaded"), "{logs}");
    for db in [&a, &b, &c] {
        assert!(
            !logs.contains(&db.password),
            "an upstream password is in the logs"
        );
    }

    // keys check sees all three.
    let cfg_file = dir.path().join("all.toml");
    cfg.write_to(&cfg_file)?;
    let out = run_sentinel(
        &["keys", "check", "--config", &path_str(&cfg_file)],
        &cfg.env_pairs(),
        None,
    )
    .await?
    .ok()?;
    assert!(
        out.stdout.contains("opens all 3 sealed value(s)"),
        "{}",
        out.stdout
    );
    Ok(())
}

#[tokio::test]
async fn seal_refuses_empty_input_and_unknown_users() -> Result<()> {
    let dir = workdir()?;
    let config = dir.path().join("sentinel.toml");
    let cfg = SentinelConfig::with_upstream("127.0.0.1", 5432).user("app", Auth::Trust, "app");
    let ring = cfg.master_key_text().context("no key")?.to_owned();
    cfg.write_to(&config)?;
    let out = cli(
        &["seal", "--for-user", "app"],
        &config,
        Some(&ring),
        Some("\n"),
    )
    .await?;
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("no secret on stdin"), "{}", out.stderr);
    let out = cli(
        &["seal", "--for-user", "nobody"],
        &config,
        Some(&ring),
        Some("pw\n"),
    )
    .await?;
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(
        out.stderr
            .contains("--context postgres.users.nobody.server_password"),
        "{}",
        out.stderr
    );
    // Any context: what it prints opens for that context only.
    let out = cli(
        &["seal", "--context", "llm.providers.openai.api_key"],
        &config,
        Some(&ring),
        Some("sk-test-123\n"),
    )
    .await?
    .ok()?;
    let sealed = out.stdout.trim();
    let keyring = Keyring::parse(&ring)?;
    let salt = EnvSalt::from_base64(&cfg.salt_base64().context("no salt")?)?;
    let opened =
        sentinel_policy::keys::open(&keyring, &salt, sealed, "llm.providers.openai.api_key")?;
    assert_eq!(opened.as_slice(), b"sk-test-123");
    assert!(
        sentinel_policy::keys::open(
            &keyring,
            &salt,
            sealed,
            "postgres.users.app.server_password"
        )
        .is_err()
    );
    // Without a key, nothing is sealed.
    let out = cli(&["seal", "--for-user", "app"], &config, None, Some("pw\n")).await?;
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    Ok(())
}

// === rotation ===

#[tokio::test]
async fn rotation_end_to_end() -> Result<()> {
    let (_, db, cfg) = db_and_config("rotate").await?;
    let k1 = cfg.master_key_text().context("no key")?.to_owned();
    let dir = workdir()?;
    let config = dir.path().join("sentinel.toml");
    cfg.write_to(&config)?;
    let sealed = seal_for(&config, &k1, &db.role, &db.password).await?;
    assert!(sealed.starts_with("sealed:v1:k1:"), "{sealed}");
    let with_k1 = format!(
        "# Operator's comment: keep me.\n{}",
        cfg.clone().server_password_sealed(&sealed).render()
    );
    std::fs::write(&config, &with_k1)?;
    serves(&with_k1, &k1, &db.role, "client-pw-0", &db.name).await?;

    // Rotate: a new current key k2, the config re-sealed in place, k1 kept.
    let out = cli(&["keys", "rotate", "--id", "k2"], &config, Some(&k1), None)
        .await?
        .ok()?;
    let k2k1 = printed_keyring(&out)?;
    assert_eq!(key_ids(&k2k1)?, ["k2", "k1"]);
    assert_eq!(key_material(&k2k1)[1], key_material(&k1)[0], "k1 changed");
    let rotated = std::fs::read_to_string(&config)?;
    assert!(
        rotated.starts_with("# Operator's comment: keep me.\n"),
        "{rotated}"
    );
    assert!(!rotated.contains(&sealed));
    assert!(rotated.contains("sealed:v1:k2:"), "{rotated}");
    let (old_lines, new_lines): (Vec<&str>, Vec<&str>) =
        (with_k1.lines().collect(), rotated.lines().collect());
    assert_eq!(old_lines.len(), new_lines.len());
    let changed: Vec<(&&str, &&str)> = old_lines
        .iter()
        .zip(&new_lines)
        .filter(|(a, b)| a != b)
        .collect();
    assert_eq!(
        changed.len(),
        1,
        "more than the sealed value changed: {changed:?}"
    );
    assert!(
        changed[0].0.starts_with("server_password_sealed = "),
        "{changed:?}"
    );
    assert_no_secrets(
        "rotate's output",
        &out.all(),
        &[("upstream password", &db.password)],
    )?;

    // k2+k1 opens the old config and the re-sealed one; k1 alone no longer opens the new one.
    serves(&with_k1, &k2k1, &db.role, "client-pw-0", &db.name).await?;
    serves(&rotated, &k2k1, &db.role, "client-pw-0", &db.name).await?;
    let out = cli(&["run"], &config, Some(&k1), None).await?;
    ensure!(
        !out.success(),
        "started with k1 alone on a config sealed with k2: {out:?}"
    );
    assert!(
        out.stderr
            .contains("postgres.users[0].server_password_sealed"),
        "{}",
        out.stderr
    );
    cli(&["keys", "check"], &config, Some(&k2k1), None)
        .await?
        .ok()?;

    // k1 cannot be dropped while anything reachable is still sealed with it.
    let stale = dir.path().join("stale.toml");
    std::fs::write(&stale, &with_k1)?;
    let out = cli(&["keys", "drop", "--id", "k1"], &stale, Some(&k2k1), None).await?;
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(
        out.stderr
            .contains("postgres.users[0].server_password_sealed is still sealed with key `k1`"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.is_empty(), "{out:?}");
    // The current key can never be dropped.
    let out = cli(&["keys", "drop", "--id", "k2"], &config, Some(&k2k1), None).await?;
    assert_eq!(out.code(), Some(1), "{out:?}");

    // Drop k1: Sentinel serves with k2 alone.
    let out = cli(&["keys", "drop", "--id", "k1"], &config, Some(&k2k1), None)
        .await?
        .ok()?;
    let k2 = printed_keyring(&out)?;
    assert_eq!(key_ids(&k2)?, ["k2"]);
    assert_eq!(key_material(&k2)[0], key_material(&k2k1)[0]);
    assert_eq!(
        std::fs::read_to_string(&config)?,
        rotated,
        "drop changed the config"
    );
    serves(&rotated, &k2, &db.role, "client-pw-0", &db.name).await?;
    cli(&["keys", "check"], &config, Some(&k2), None)
        .await?
        .ok()?;
    // And the config sealed with k1 no longer opens.
    let out = cli(&["keys", "check"], &stale, Some(&k2), None).await?;
    assert_eq!(out.code(), Some(1), "{out:?}");
    Ok(())
}

#[tokio::test]
async fn rotation_rewrites_the_master_key_file_and_password_files() -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let pg = shared_cluster().await?;
    let (a, b) = (pg.test_db("rotfile").await?, pg.test_db("rotpwfile").await?);
    let dir = workdir()?;
    let config = dir.path().join("sentinel.toml");
    let key_file = dir.path().join("master.key");
    let k1 = new_keyring_text("k1");
    // The line `keys new` prints works as a key file as it is.
    std::fs::write(
        &key_file,
        format!("# sentinel master keyring\nSENTINEL_MASTER_KEY={k1}\n"),
    )?;
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600))?;
    let base = SentinelConfig::new(pg)
        .master_key_file(&key_file)
        .user(&a.role, Auth::Scram("pw-a"), &a.role)
        .user(&b.role, Auth::Scram("pw-b"), &b.role);
    base.write_to(&config)?;
    let sealed_a = seal_with_file(&config, &a).await?;
    let sealed_b = seal_with_file(&config, &b).await?;
    let pw_file = dir.path().join("b.password");
    std::fs::write(&pw_file, format!("{sealed_b}\n"))?;
    let cfg = base
        .clone()
        .server_password_sealed_for(&a.role, &sealed_a)
        .server_password_file_for(&b.role, &pw_file);
    cfg.write_to(&config)?;

    let out = run_sentinel(
        &["keys", "rotate", "--config", &path_str(&config)],
        &[],
        None,
    )
    .await?
    .ok()?;
    assert!(
        out.stdout.is_empty(),
        "the keyring was printed although it lives in a file: {out:?}"
    );
    let ring = std::fs::read_to_string(&key_file)?;
    assert_eq!(
        key_ids(ring.trim())?,
        ["k2", "k1"],
        "k2 is the default next id"
    );
    let mode = std::fs::metadata(&key_file)?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(std::fs::read_to_string(&config)?.contains("sealed:v1:k2:"));
    assert!(std::fs::read_to_string(&pw_file)?.starts_with("sealed:v1:k2:"));

    let out = run_sentinel(
        &["keys", "drop", "--id", "k1", "--config", &path_str(&config)],
        &[],
        None,
    )
    .await?
    .ok()?;
    assert!(out.stdout.is_empty(), "{out:?}");
    assert_eq!(key_ids(std::fs::read_to_string(&key_file)?.trim())?, ["k2"]);

    let sentinel = SentinelProcess::start(&std::fs::read_to_string(&config)?, &[]).await?;
    for (db, pw) in [(&a, "pw-a"), (&b, "pw-b")] {
        let who = query_current_user(&sentinel, &db.role, pw, &db.name)
            .await
            .with_context(|| format!("as {}; logs:\n{}", db.role, sentinel.logs()))?;
        assert_eq!(who, db.role);
    }
    Ok(())
}

/// `sentinel seal --for-user` with the keyring from the config's key file.
async fn seal_with_file(config: &Path, db: &TestDb) -> Result<String> {
    let out = run_sentinel(
        &[
            "seal",
            "--for-user",
            &db.role,
            "--config",
            &path_str(config),
        ],
        &[],
        Some(db.password.as_bytes()),
    )
    .await?
    .ok()?;
    Ok(out.stdout.trim().to_owned())
}

// === refusing bad sealed values ===

#[tokio::test]
async fn tampered_misplaced_or_foreign_sealed_values_refuse_to_start() -> Result<()> {
    let (_, db, cfg) = db_and_config("tamper").await?;
    let ring = cfg.master_key_text().context("no key")?.to_owned();
    let dir = workdir()?;
    let config = dir.path().join("sentinel.toml");
    let cfg = cfg.user("other", Auth::Scram("x"), &db.role);
    cfg.write_to(&config)?;
    let sealed = seal_for(&config, &ring, &db.role, &db.password).await?;

    let good = cfg.clone().server_password_sealed_for(&db.role, &sealed);
    good.write_to(&config)?;
    let out = cli(&["keys", "check"], &config, Some(&ring), None).await?;
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(out.stdout.starts_with("ok:"), "{}", out.stdout);

    // One character of the ciphertext changed.
    let last = sealed.chars().last().context("empty")?;
    let flipped = format!(
        "{}{}",
        &sealed[..sealed.len() - 1],
        if last == 'A' { 'B' } else { 'A' }
    );
    // The value of one user moved to another.
    let cases = [
        (
            "tampered",
            cfg.clone().server_password_sealed_for(&db.role, &flipped),
            "postgres.users[0].server_password_sealed",
        ),
        (
            "moved",
            cfg.clone().server_password_sealed_for("other", &sealed),
            "postgres.users[1].server_password_sealed",
        ),
        (
            "other salt",
            good.clone().salt(&new_salt()),
            "postgres.users[0].server_password_sealed",
        ),
        (
            "truncated",
            cfg.clone()
                .server_password_sealed_for(&db.role, &sealed[..30]),
            "postgres.users[0].server_password_sealed",
        ),
    ];
    for (what, bad, field) in cases {
        bad.write_to(&config)?;
        let out = cli(&["run"], &config, Some(&ring), None).await?;
        ensure!(!out.success(), "{what}: started: {out:?}");
        assert!(out.stderr.contains(field), "{what}: {}", out.stderr);
        assert_no_secrets(
            what,
            &out.all(),
            &[
                ("upstream password", &db.password),
                ("master key", &key_material(&ring)[0]),
            ],
        )?;
        let out = cli(&["keys", "check"], &config, Some(&ring), None).await?;
        assert_eq!(out.code(), Some(1), "{what}: {out:?}");
        assert!(out.stderr.contains(field), "{what}: {}", out.stderr);
    }

    // Another keyring altogether.
    good.write_to(&config)?;
    let out = cli(&["run"], &config, Some(&new_keyring_text("k1")), None).await?;
    ensure!(!out.success(), "started with a foreign key: {out:?}");
    assert!(
        out.stderr
            .contains("postgres.users[0].server_password_sealed: sealed value does not open"),
        "{}",
        out.stderr
    );

    // A plaintext password where a sealed value belongs is a config error naming the field.
    let plain = cfg.server_password_sealed_for(&db.role, &db.password);
    plain.write_to(&config)?;
    let out = cli(&["check-config"], &config, None, None).await?;
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(
        out.stderr
            .contains("postgres.users[0].server_password_sealed: must be a sealed value"),
        "{}",
        out.stderr
    );
    assert_no_secrets(
        "check-config",
        &out.all(),
        &[("upstream password", &db.password)],
    )?;
    Ok(())
}

#[tokio::test]
async fn keys_check_exit_codes() -> Result<()> {
    let dir = workdir()?;
    let config = dir.path().join("sentinel.toml");
    let cfg = SentinelConfig::with_upstream("127.0.0.1", 5432).user("app", Auth::Trust, "app");
    let ring = cfg.master_key_text().context("no key")?.to_owned();
    cfg.write_to(&config)?;
    let out = cli(&["keys", "check"], &config, Some(&ring), None).await?;
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(
        out.stdout.contains("opens all 0 sealed value(s)"),
        "{}",
        out.stdout
    );
    let out = cli(&["keys", "check"], &config, None, None).await?;
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("sentinel keys new"), "{}", out.stderr);
    let out = cli(
        &["keys", "check"],
        &dir.path().join("missing.toml"),
        Some(&ring),
        None,
    )
    .await?;
    assert_eq!(out.code(), Some(1), "{out:?}");
    Ok(())
}

// === tokens and virtual keys ===

#[tokio::test]
async fn tokens_and_virtual_keys_verify_with_the_same_keyring_and_salt() -> Result<()> {
    let dir = workdir()?;
    let config = dir.path().join("sentinel.toml");
    let cfg = SentinelConfig::with_upstream("127.0.0.1", 5432).user("app", Auth::Trust, "app");
    let ring_text = cfg.master_key_text().context("no key")?.to_owned();
    cfg.write_to(&config)?;
    let keyring = Keyring::parse(&ring_text)?;
    let salt = EnvSalt::from_base64(&cfg.salt_base64().context("no salt")?)?;
    let other_salt = EnvSalt::from_base64(&new_salt())?;

    let before = unix_now();
    let out = cli(
        &["token", "issue", "--tenant", "acme", "--ttl", "1h"],
        &config,
        Some(&ring_text),
        None,
    )
    .await?
    .ok()?;
    let token = out.stdout.trim();
    assert_eq!(out.stdout.lines().count(), 1, "{}", out.stdout);
    assert!(token.starts_with("stk1.acme."), "{token}");
    assert!(!out.stderr.contains(token), "the token is on stderr too");
    let claims = verify_tenant_token(&keyring, &salt, token, unix_now())?;
    assert_eq!(claims.tenant, "acme");
    let at = claims.expires_at.context("no expiry")?;
    assert!(
        (before + 3600..=unix_now() + 3600).contains(&at),
        "expires at {at}"
    );
    assert_eq!(
        verify_tenant_token(&keyring, &salt, token, at),
        Err(KeyError::TokenExpired {
            kind: TokenKind::Tenant
        })
    );
    assert!(verify_tenant_token(&keyring, &other_salt, token, unix_now()).is_err());
    assert!(
        verify_tenant_token(
            &Keyring::parse(&new_keyring_text("k1"))?,
            &salt,
            token,
            unix_now()
        )
        .is_err()
    );

    let out = cli(
        &["token", "issue", "--tenant", "beta"],
        &config,
        Some(&ring_text),
        None,
    )
    .await?
    .ok()?;
    let forever = verify_tenant_token(&keyring, &salt, out.stdout.trim(), u64::MAX - 1)?;
    assert_eq!(
        (forever.tenant.as_str(), forever.expires_at),
        ("beta", None)
    );

    let out = cli(
        &["vkey", "issue", "--tenant", "acme"],
        &config,
        Some(&ring_text),
        None,
    )
    .await?
    .ok()?;
    let vkey = out.stdout.trim();
    assert!(vkey.starts_with("sk-stn-acme."), "{vkey}");
    let claims = verify_virtual_key(&keyring, &salt, vkey)?;
    assert_eq!(claims.tenant, "acme");
    assert_eq!(claims.key_id.len(), 22, "{}", claims.key_id);
    assert!(
        out.stderr.contains(&claims.key_id),
        "the key id is not shown: {}",
        out.stderr
    );
    let out = cli(
        &["vkey", "issue", "--tenant", "acme"],
        &config,
        Some(&ring_text),
        None,
    )
    .await?
    .ok()?;
    let second = verify_virtual_key(&keyring, &salt, out.stdout.trim())?;
    assert_ne!(second.key_id, claims.key_id);
    // A virtual key is not a tenant token.
    assert!(matches!(
        verify_tenant_token(&keyring, &salt, vkey, unix_now()),
        Err(KeyError::TokenWrongKind { .. })
    ));
    assert!(verify_virtual_key(&keyring, &other_salt, vkey).is_err());

    // Refusals.
    for args in [
        &["token", "issue", "--tenant", "a.b"][..],
        &["token", "issue", "--tenant", "acme", "--ttl", "0s"],
        &["vkey", "issue", "--tenant", ""],
    ] {
        let out = cli(args, &config, Some(&ring_text), None).await?;
        assert_ne!(out.code(), Some(0), "{args:?}: {out:?}");
        assert!(out.stdout.is_empty(), "{args:?}: {out:?}");
    }
    let out = cli(&["token", "issue", "--tenant", "acme"], &config, None, None).await?;
    assert_eq!(out.code(), Some(1), "{out:?}");
    Ok(())
}

// === nothing secret in the logs ===

#[tokio::test]
async fn trace_level_session_prints_no_secret() -> Result<()> {
    let (_, db, cfg) = db_and_config("trace").await?;
    let client_password = "client-Secret-7f3a9c";
    let cfg = SentinelConfig::new(shared_cluster().await?)
        .master_key(cfg.master_key_text().context("no key")?)
        .user(&db.role, Auth::Scram(client_password), &db.role)
        .pool_size(2)
        .env_var("RUST_LOG", "trace");
    let ring = cfg.master_key_text().context("no key")?.to_owned();
    let dir = workdir()?;
    let config = dir.path().join("sentinel.toml");
    cfg.write_to(&config)?;
    let sealed = seal_for(&config, &ring, &db.role, &db.password).await?;
    let cfg = cfg.server_password_sealed(&sealed);
    cfg.write_to(&config)?;
    let token = cli(
        &["token", "issue", "--tenant", "acme", "--ttl", "1h"],
        &config,
        Some(&ring),
        None,
    )
    .await?
    .ok()?
    .stdout
    .trim()
    .to_owned();
    let vkey = cli(
        &["vkey", "issue", "--tenant", "acme"],
        &config,
        Some(&ring),
        None,
    )
    .await?
    .ok()?
    .stdout
    .trim()
    .to_owned();

    let mut sentinel = SentinelProcess::start_with(&cfg).await?;
    {
        // A full session: SCRAM login, simple and extended queries, a transaction, an error.
        let client = connect_via_sentinel(&sentinel, &db.role, client_password, &db.name).await?;
        client
            .batch_execute("CREATE TABLE t (id int, v text); INSERT INTO t VALUES (1, 'one')")
            .await?;
        let row = client
            .query_one("SELECT v FROM t WHERE id = $1", &[&1i32])
            .await?;
        assert_eq!(row.get::<_, String>(0), "one");
        client
            .batch_execute("BEGIN; UPDATE t SET v = 'uno'; COMMIT")
            .await?;
        assert!(
            client
                .simple_query("SELECT * FROM missing_table")
                .await
                .is_err()
        );
        // A second client in parallel needs a second upstream login.
        let other = connect_via_sentinel(&sentinel, &db.role, client_password, &db.name).await?;
        let (x, y) = tokio::join!(
            client.query_one("SELECT pg_sleep(0.2)::text", &[]),
            other.query_one("SELECT pg_sleep(0.2)::text", &[])
        );
        x?;
        y?;
        // A failed login.
        assert!(
            connect_via_sentinel(&sentinel, &db.role, "wrong-password", &db.name)
                .await
                .is_err()
        );
    }
    sentinel.signal(libc::SIGTERM)?;
    sentinel.wait_exit(Duration::from_secs(30)).await?;
    let logs = sentinel.logs();
    ensure!(
        logs.contains("TRACE"),
        "not a trace-level run ({} bytes):\n{logs}",
        logs.len()
    );
    assert!(logs.contains("keyring loaded"), "{logs}");
    // The upstream logins were traced, with the password source redacted.
    assert!(logs.contains("reading the upstream password"), "{logs}");
    assert!(logs.contains("<redacted>"), "{logs}");
    assert!(!logs.contains(&sealed), "the sealed value is in the log");

    let mut secrets: Vec<(&str, &str)> = vec![
        ("client password", client_password),
        ("upstream password (the sealed plaintext)", &db.password),
        ("tenant token", &token),
        ("virtual key", &vkey),
    ];
    let material = key_material(&ring);
    for key in &material {
        secrets.push(("master key", key));
    }
    assert_no_secrets("the trace-level log", &logs, &secrets)?;
    Ok(())
}
