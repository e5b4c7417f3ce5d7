//! `sentinel audit`, black box: the binary against real schemas on the shared Postgres cluster.
//!
//! - A deliberately unsafe schema: every kind of finding is reported, once per object, with its
//!   code and object, in text and in JSON; safe tables, global tables, tables the role cannot
//!   reach and users in `bypass_users` are not; exit status 1.
//! - The reference schema of `deploy/rls.sql` (loaded with psql, demo data too): no findings,
//!   exit status 0.
//! - A wrong or missing upstream password, an unknown user: exit status 2 with a message that
//!   names the problem and holds no password.
//! - Upstream TLS (`verify-full` with `ca_file`) works.
//! - `sentinel run` with `tenancy.audit_on_start`: `refuse` exits 1 with the findings in the
//!   log; `warn` logs them and serves.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use sentinel_tests::names::{quote_ident, random_secret, unique_name};
use sentinel_tests::pg::pg_bin_dir;
use sentinel_tests::sentinel::{CliOutput, run_sentinel};
use sentinel_tests::{Auth, PgCluster, SentinelConfig, SentinelProcess, TestDb, shared_cluster};
use serde_json::Value;

// === helpers ===

/// A login role with a password, made by the superuser with extra `attributes`
/// (e.g. `BYPASSRLS`). Roles are cluster-wide: the name is unique to this run.
async fn role(pg: &PgCluster, prefix: &str, attributes: &str) -> Result<(String, String)> {
    let name = unique_name(prefix);
    let password = random_secret(24);
    pg.create_role(&name, &password).await?;
    if !attributes.is_empty() {
        let admin = pg.connect_superuser("postgres").await?;
        admin
            .batch_execute(&format!("ALTER ROLE {} {attributes}", quote_ident(&name)))
            .await
            .with_context(|| format!("ALTER ROLE {name} {attributes}"))?;
    }
    Ok((name, password))
}

/// `sentinel audit --config <cfg> <args…>`, with the config's environment (keyring, passwords).
async fn audit(cfg: &SentinelConfig, args: &[&str]) -> Result<CliOutput> {
    let dir = tempfile::Builder::new()
        .prefix("sentinel-audit-test-")
        .tempdir()?;
    let path = dir.path().join("sentinel.toml");
    cfg.write_to(&path)?;
    let mut argv = vec!["audit".to_owned(), "--config".to_owned()];
    argv.push(path.display().to_string());
    argv.extend(args.iter().map(|a| (*a).to_owned()));
    run_sentinel(&argv, &cfg.env_pairs(), None).await
}

/// The findings of a `--format json` report.
fn json_findings(out: &CliOutput) -> Result<Vec<Value>> {
    let report: Value = serde_json::from_str(&out.stdout)
        .with_context(|| format!("--format json printed no JSON: {out:?}"))?;
    ensure!(report["audited"].is_array(), "no audited list: {report}");
    report["findings"]
        .as_array()
        .cloned()
        .with_context(|| format!("no findings list: {report}"))
}

/// A string field of a finding ("" if missing).
fn field<'a>(finding: &'a Value, name: &str) -> &'a str {
    finding[name].as_str().unwrap_or_default()
}

/// How many findings have this code, object and user.
fn count(findings: &[Value], code: &str, object: &str, user: &str) -> usize {
    findings
        .iter()
        .filter(|f| {
            field(f, "code") == code && field(f, "object") == object && field(f, "user") == user
        })
        .count()
}

fn has(findings: &[Value], code: &str, object: &str, user: &str) -> bool {
    count(findings, code, object, user) > 0
}

/// `deploy/<name>` of this repository.
fn deploy_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("deploy")
        .join(name)
}

/// Runs a psql script file against the test database as its owner.
async fn psql_file(db: &TestDb, file: &Path, vars: &[(&str, &str)]) -> Result<()> {
    let mut cmd = tokio::process::Command::new(pg_bin_dir().join("psql"));
    cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
        .arg("-p")
        .arg(db.port.to_string())
        .arg("-U")
        .arg(&db.role)
        .arg("-d")
        .arg(&db.name);
    for (k, v) in vars {
        cmd.arg("-v").arg(format!("{k}={v}"));
    }
    cmd.arg("-f")
        .arg(file)
        .env("PGPASSWORD", &db.password)
        .env_remove("PGSERVICE")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = cmd.output().await.context("running psql")?;
    ensure!(
        out.status.success(),
        "psql -f {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// An unsafe schema in a fresh database, and the roles around it.
struct Unsafe {
    db: TestDb,
    app: (String, String),
    bypass: (String, String),
    superuser: (String, String),
}

/// Builds a schema with one of each problem, and a few objects that are fine:
///
/// - `notes`: no RLS, the app role can read it → `no_rls`;
/// - `app_owned`: owned by the app role, RLS enabled, not forced → `owner_without_force`;
/// - `open_policy`: RLS with a permissive `USING (true)` policy → `policy_ignores_setting`;
/// - `other_column`: RLS with a policy on another column → `policy_ignores_setting`;
/// - `notes_view`: a view without security_invoker → `view_not_security_invoker`;
/// - `peek()`: a SECURITY DEFINER function (executable by PUBLIC) → `security_definer_function`;
/// - `safe`: ENABLE + FORCE, a policy on app.tenant_id, plus a restrictive one → nothing;
/// - `countries`: no RLS, but in global_tables → nothing;
/// - `private_stuff`: no RLS, but the app role has no rights on it → nothing;
/// - `safe_view`: security_invoker → nothing.
async fn unsafe_schema(pg: &PgCluster) -> Result<Unsafe> {
    let db = pg.test_db("audit_unsafe").await?;
    let app = role(pg, "audit_app", "").await?;
    let bypass = role(pg, "audit_bypass", "BYPASSRLS").await?;
    let superuser = role(pg, "audit_su", "SUPERUSER").await?;
    let a = quote_ident(&app.0);
    let b = quote_ident(&bypass.0);
    let owner = db.connect().await?;
    owner
        .batch_execute(&format!(
            "
            CREATE TABLE notes (id int, tenant_id text, body text);
            GRANT SELECT ON notes TO {a}, {b};

            CREATE TABLE open_policy (id int, tenant_id text);
            ALTER TABLE open_policy ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
            CREATE POLICY everyone ON open_policy USING (true);
            GRANT SELECT, INSERT ON open_policy TO {a};

            CREATE TABLE other_column (id int, tenant_id text, owner_name text);
            ALTER TABLE other_column ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
            CREATE POLICY by_owner ON other_column USING (owner_name = current_user);
            GRANT SELECT ON other_column TO {a};

            CREATE TABLE safe (id int, tenant_id text, deleted bool NOT NULL DEFAULT false);
            ALTER TABLE safe ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
            CREATE POLICY tenant ON safe
                USING (tenant_id = (SELECT nullif(current_setting('app.tenant_id', true), '')))
                WITH CHECK (tenant_id = (SELECT nullif(current_setting('app.tenant_id', true), '')));
            CREATE POLICY not_deleted ON safe AS RESTRICTIVE USING (NOT deleted);
            GRANT SELECT, INSERT, UPDATE, DELETE ON safe TO {a};

            CREATE VIEW notes_view AS SELECT id, tenant_id FROM safe;
            GRANT SELECT ON notes_view TO {a};
            CREATE VIEW safe_view WITH (security_invoker = on) AS SELECT id, tenant_id FROM safe;
            GRANT SELECT ON safe_view TO {a};

            CREATE FUNCTION peek() RETURNS bigint SECURITY DEFINER LANGUAGE sql
                AS 'SELECT count(*) FROM safe';

            CREATE TABLE countries (code text PRIMARY KEY);
            GRANT SELECT ON countries TO {a};

            CREATE TABLE private_stuff (id int, tenant_id text);
            "
        ))
        .await
        .context("creating the unsafe schema")?;
    // A table owned by the app role: made by the superuser, who can give it away.
    let admin = pg.connect_superuser(&db.name).await?;
    admin
        .batch_execute(&format!(
            "
            CREATE TABLE app_owned (id int, tenant_id text);
            ALTER TABLE app_owned OWNER TO {a};
            ALTER TABLE app_owned ENABLE ROW LEVEL SECURITY;
            CREATE POLICY tenant ON app_owned
                USING (tenant_id = current_setting('app.tenant_id', true));
            "
        ))
        .await
        .context("creating the table owned by the app role")?;
    Ok(Unsafe {
        db,
        app,
        bypass,
        superuser,
    })
}

/// A config with the three audited users, plus the owner as a bypass user.
fn unsafe_config(pg: &PgCluster, s: &Unsafe) -> SentinelConfig {
    SentinelConfig::new(pg)
        .option("tenancy", "enabled", "true")
        .option("tenancy", "global_tables", "[\"public.countries\"]")
        .option(
            "tenancy",
            "bypass_users",
            &format!("[{}]", toml::Value::String(s.db.role.clone())),
        )
        .user(&s.app.0, Auth::Trust, &s.app.0)
        .server_password(&s.app.1)
        .user(&s.bypass.0, Auth::Trust, &s.bypass.0)
        .server_password(&s.bypass.1)
        .user(&s.superuser.0, Auth::Trust, &s.superuser.0)
        .server_password(&s.superuser.1)
        .user(&s.db.role, Auth::Trust, &s.db.role)
        .server_password(&s.db.password)
}

// === tests ===

#[tokio::test(flavor = "multi_thread")]
async fn unsafe_schema_reports_each_finding() -> Result<()> {
    let pg = shared_cluster().await?;
    let s = unsafe_schema(pg).await?;
    let cfg = unsafe_config(pg, &s);
    let (app, bypass, su) = (
        s.app.0.as_str(),
        s.bypass.0.as_str(),
        s.superuser.0.as_str(),
    );

    let out = audit(&cfg, &["--database", &s.db.name, "--format", "json"]).await?;
    ensure!(out.code() == Some(1), "exit status with findings: {out:?}");
    let findings = json_findings(&out)?;
    let expected = [
        ("no_rls", "table public.notes".to_owned(), app),
        (
            "owner_without_force",
            "table public.app_owned".to_owned(),
            app,
        ),
        (
            "policy_ignores_setting",
            "policy everyone on public.open_policy".to_owned(),
            app,
        ),
        (
            "policy_ignores_setting",
            "policy by_owner on public.other_column".to_owned(),
            app,
        ),
        (
            "view_not_security_invoker",
            "view public.notes_view".to_owned(),
            app,
        ),
        (
            "security_definer_function",
            "function public.peek()".to_owned(),
            app,
        ),
        ("bypassrls", format!("role {bypass}"), bypass),
        ("no_rls", "table public.notes".to_owned(), bypass),
        ("superuser", format!("role {su}"), su),
    ];
    for (code, object, user) in &expected {
        ensure!(
            has(&findings, code, object, user),
            "no {code} for {object} (user {user}) in {findings:#?}"
        );
    }
    // Exactly once each, and every finding has a fix and the database.
    for (code, object, user) in &expected {
        let n = count(&findings, code, object, user);
        ensure!(
            n == 1,
            "{code} for {object} (user {user}) reported {n} times"
        );
    }
    for f in &findings {
        ensure!(!field(f, "fix").is_empty(), "no fix: {f}");
        ensure!(field(f, "database") == s.db.name, "database: {f}");
    }
    // What is fine is not reported.
    for object in [
        "table public.safe",
        "table public.countries",
        "table public.private_stuff",
        "view public.safe_view",
        "policy tenant on public.safe",
        "policy not_deleted on public.safe",
    ] {
        ensure!(
            !findings.iter().any(|f| field(f, "object") == object),
            "{object} reported: {findings:#?}"
        );
    }
    // The superuser gets that one finding only; the bypass user (the owner) is not audited.
    ensure!(
        findings.iter().filter(|f| field(f, "user") == su).count() == 1,
        "{findings:#?}"
    );
    ensure!(
        !findings.iter().any(|f| field(f, "user") == s.db.role),
        "a bypass user was audited: {findings:#?}"
    );
    ensure!(
        !out.all().contains(&s.app.1) && !out.all().contains(&s.superuser.1),
        "a password was printed"
    );

    // The same in text: one line per finding with its code and object, then its fix.
    let out = audit(&cfg, &["--database", &s.db.name]).await?;
    ensure!(out.code() == Some(1), "{out:?}");
    for (code, object, user) in &expected {
        ensure!(
            out.stdout
                .lines()
                .any(|l| l.starts_with(&format!("{code}: {object} (user {user},"))),
            "no line for {code} {object} (user {user}):\n{}",
            out.stdout
        );
    }
    ensure!(
        out.stdout
            .contains("    fix: ALTER TABLE public.app_owned FORCE ROW LEVEL SECURITY")
    );
    ensure!(
        out.stdout
            .contains(&format!("{} findings in ", findings.len())),
        "{}",
        out.stdout
    );

    // --user: that user only.
    let out = audit(
        &cfg,
        &[
            "--database",
            &s.db.name,
            "--user",
            bypass,
            "--format",
            "json",
        ],
    )
    .await?;
    ensure!(out.code() == Some(1), "{out:?}");
    let only = json_findings(&out)?;
    ensure!(
        !only.is_empty() && only.iter().all(|f| field(f, "user") == bypass),
        "{only:#?}"
    );
    ensure!(has(&only, "bypassrls", &format!("role {bypass}"), bypass));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn reference_schema_has_no_findings() -> Result<()> {
    let pg = shared_cluster().await?;
    let db = pg.test_db("audit_ref").await?;
    let (app, app_password) = role(pg, "audit_refapp", "").await?;
    psql_file(&db, &deploy_file("rls.sql"), &[("app_role", &app)]).await?;
    // Idempotent enough to run twice, and the demo data loads as the owner.
    psql_file(&db, &deploy_file("rls.sql"), &[("app_role", &app)]).await?;
    psql_file(&db, &deploy_file("rls-demo-data.sql"), &[]).await?;

    let cfg = SentinelConfig::new(pg)
        .option("tenancy", "enabled", "true")
        .option("tenancy", "global_tables", "[\"tenants\"]")
        .user(&app, Auth::Trust, &app)
        .server_password(&app_password);
    let out = audit(&cfg, &["--database", &db.name]).await?;
    ensure!(
        out.code() == Some(0),
        "deploy/rls.sql has findings: {out:?}"
    );
    ensure!(
        out.stdout
            .contains(&format!("no findings in {app} as {app} on {}", db.name)),
        "{out:?}"
    );
    let out = audit(&cfg, &["--database", &db.name, "--format", "json"]).await?;
    ensure!(out.code() == Some(0), "{out:?}");
    ensure!(json_findings(&out)?.is_empty(), "{out:?}");

    // The schema does what the audit says: the app role sees one tenant's rows at a time.
    let client = sentinel_tests::clients::connect_dsn(&sentinel_tests::clients::dsn(
        "127.0.0.1",
        pg.port(),
        &app,
        &app_password,
        &db.name,
    ))
    .await?;
    let none = client.query("SELECT * FROM tasks", &[]).await?;
    ensure!(none.is_empty(), "tasks visible without a tenant");
    let rows = client
        .simple_query(
            "BEGIN; SELECT set_config('app.tenant_id', 'acme', true); \
             SELECT DISTINCT tenant_id FROM tasks; COMMIT",
        )
        .await?;
    let tenants: Vec<String> = rows
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                r.try_get("tenant_id").ok().flatten().map(str::to_owned)
            }
            _ => None,
        })
        .collect();
    ensure!(tenants == ["acme"], "acme sees {tenants:?}");

    // Without global_tables, the tenants table is reported (it has no RLS).
    let cfg = cfg.remove_option("tenancy", "global_tables");
    let out = audit(&cfg, &["--database", &db.name, "--format", "json"]).await?;
    ensure!(out.code() == Some(1), "{out:?}");
    let findings = json_findings(&out)?;
    ensure!(
        findings.len() == 1 && has(&findings, "no_rls", "table public.tenants", &app),
        "{findings:#?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_exit_2_without_passwords() -> Result<()> {
    let pg = shared_cluster().await?;
    let db = pg.test_db("audit_err").await?;
    let wrong = format!("wrong-{}", random_secret(16));
    let cfg = SentinelConfig::new(pg)
        .user(&db.role, Auth::Trust, &db.role)
        .server_password(&wrong);

    let out = audit(&cfg, &[]).await?;
    ensure!(out.code() == Some(2), "wrong password: {out:?}");
    ensure!(
        out.stderr.contains("password authentication failed") && out.stderr.contains(&db.role),
        "{out:?}"
    );
    ensure!(
        !out.all().contains(&wrong) && !out.all().contains(&db.password),
        "a password was printed"
    );
    ensure!(out.stdout.is_empty(), "{out:?}");

    let out = audit(&cfg, &["--format", "json"]).await?;
    ensure!(
        out.code() == Some(2) && !out.all().contains(&wrong),
        "{out:?}"
    );

    // A password variable that is not set.
    let cfg = SentinelConfig::new(pg)
        .user(&db.role, Auth::Trust, &db.role)
        .server_password_env("SENTINEL_AUDIT_TEST_UNSET");
    let out = audit(&cfg, &[]).await?;
    ensure!(
        out.code() == Some(2)
            && out
                .stderr
                .contains("environment variable SENTINEL_AUDIT_TEST_UNSET is not set"),
        "{out:?}"
    );

    // A user that is not configured.
    let out = audit(&cfg, &["--user", "nobody"]).await?;
    ensure!(
        out.code() == Some(2)
            && out
                .stderr
                .contains("\"nobody\" is not one of postgres.users"),
        "{out:?}"
    );

    // Nothing listening upstream.
    let cfg = SentinelConfig::with_upstream("127.0.0.1", sentinel_tests::free_port())
        .user(&db.role, Auth::Trust, &db.role)
        .server_password(&db.password);
    let out = audit(&cfg, &[]).await?;
    ensure!(
        out.code() == Some(2) && out.stderr.contains("cannot log in to 127.0.0.1:"),
        "{out:?}"
    );
    Ok(())
}

/// Runs `openssl <args…>` in `dir`.
async fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = tokio::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .await
        .context("running openssl")?;
    ensure!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A CA (`<name>-ca.pem`) and a server certificate for `localhost` signed by it (`<name>.pem`,
/// key `<name>.key`): rustls, unlike libpq, refuses a self-signed CA certificate as the server's.
async fn ca_and_server_cert(dir: &Path, name: &str) -> Result<()> {
    let (ca, ca_key) = (format!("{name}-ca.pem"), format!("{name}-ca.key"));
    let (cert, key, csr) = (
        format!("{name}.pem"),
        format!("{name}.key"),
        format!("{name}.csr"),
    );
    let ext = format!("{name}.ext");
    std::fs::write(
        dir.join(&ext),
        "subjectAltName = DNS:localhost\nbasicConstraints = CA:FALSE\n\
         keyUsage = digitalSignature, keyEncipherment\nextendedKeyUsage = serverAuth\n",
    )?;
    #[rustfmt::skip]
    let ca_args = [
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-subj", "/CN=sentinel test CA", "-keyout", &ca_key, "-out", &ca,
    ];
    openssl(dir, &ca_args).await?;
    #[rustfmt::skip]
    let csr_args = [
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
        "-keyout", &key, "-out", &csr,
    ];
    openssl(dir, &csr_args).await?;
    #[rustfmt::skip]
    let sign_args = [
        "x509", "-req", "-days", "2", "-in", &csr, "-CA", &ca, "-CAkey", &ca_key,
        "-CAcreateserial", "-extfile", &ext, "-out", &cert,
    ];
    openssl(dir, &sign_args).await
}

/// `tls = "verify-full"`: the upstream here is a Sentinel with TLS towards its clients, in front
/// of the cluster (which has no TLS of its own).
#[tokio::test(flavor = "multi_thread")]
async fn upstream_tls_verify_full() -> Result<()> {
    let dir = tempfile::tempdir()?;
    ca_and_server_cert(dir.path(), "server").await?;
    ca_and_server_cert(dir.path(), "other").await?;
    let path =
        |name: &str| toml::Value::String(dir.path().join(name).display().to_string()).to_string();

    let pg = shared_cluster().await?;
    let db = pg.test_db("audit_tls").await?;
    let front = SentinelConfig::new(pg)
        .user_for(&db, Auth::Scram(&db.password))
        .option("postgres.tls", "cert_file", &path("server.pem"))
        .option("postgres.tls", "key_file", &path("server.key"));
    let front = SentinelProcess::start_with(&front).await?;

    let cfg = SentinelConfig::with_upstream("localhost", front.port())
        .upstream_tls("verify-full")
        .option("postgres.upstream", "ca_file", &path("server-ca.pem"))
        .user(&db.role, Auth::Trust, &db.role)
        .server_password(&db.password);
    let out = audit(&cfg, &[]).await?;
    ensure!(
        out.code() == Some(0),
        "audit over TLS: {out:?}\nfront logs:\n{}",
        front.logs()
    );

    // Another CA: the server's certificate does not verify.
    let cfg = cfg.option("postgres.upstream", "ca_file", &path("other-ca.pem"));
    let out = audit(&cfg, &[]).await?;
    ensure!(
        out.code() == Some(2) && out.stderr.contains("invalid peer certificate"),
        "{out:?}"
    );

    // A CA file without a certificate.
    std::fs::write(dir.path().join("empty.pem"), "")?;
    let cfg = cfg.option("postgres.upstream", "ca_file", &path("empty.pem"));
    let out = audit(&cfg, &[]).await?;
    ensure!(
        out.code() == Some(2) && out.stderr.contains("no certificate found"),
        "{out:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_on_start() -> Result<()> {
    let pg = shared_cluster().await?;
    let owner = pg.test_db("audit_start").await?;
    // The database a user's pools (and its audit) default to is named like the user.
    let (app, app_password) = role(pg, "audit_startapp", "").await?;
    pg.create_database(&app, &owner.role).await?;
    let client = sentinel_tests::clients::connect_dsn(&sentinel_tests::clients::dsn(
        "127.0.0.1",
        pg.port(),
        &owner.role,
        &owner.password,
        &app,
    ))
    .await?;
    client
        .batch_execute(&format!(
            "CREATE TABLE leaky (id int, tenant_id text); GRANT SELECT ON leaky TO {}",
            quote_ident(&app)
        ))
        .await?;
    let base = SentinelConfig::new(pg)
        .option("tenancy", "enabled", "true")
        .user(&app, Auth::Trust, &app)
        .server_password(&app_password);

    // refuse: exits 1 before serving, the finding in its log.
    let cfg = base
        .clone()
        .option("tenancy", "audit_on_start", "\"refuse\"");
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("sentinel.toml");
    cfg.write_to(&path)?;
    let run = run_sentinel(
        &["run", "--config", &path.display().to_string()],
        &cfg.env_pairs(),
        None,
    )
    .await?;
    ensure!(run.code() == Some(1), "refuse: {run:?}");
    ensure!(
        run.stderr.contains("no_rls") && run.stderr.contains("table public.leaky"),
        "{run:?}"
    );
    ensure!(run.stderr.contains("refusing to start"), "{run:?}");

    // warn: logs it and serves.
    let cfg = base.clone().option("tenancy", "audit_on_start", "\"warn\"");
    let sentinel = SentinelProcess::start_with(&cfg).await?;
    sentinel
        .wait_for_log("table public.leaky", Duration::from_secs(10))
        .await?;
    ensure!(sentinel.logs().contains("no_rls"), "{}", sentinel.logs());
    ensure!(
        !sentinel.logs().contains(&app_password),
        "a password was logged"
    );
    Ok(())
}
