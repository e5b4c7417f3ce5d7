//! Attempts to escape or forge the tenant context, table-driven.
//!
//! Every case asserts the exact SQLSTATE (and, where the spec fixes it, the message), that the
//! connection stays usable, and, through oracles that bypass Sentinel, that NOTHING RAN:
//!
//! - the Postgres log: the app role runs with `log_statement = 'all'`, and every attempt carries
//!   a unique probe comment, so an attempt that reached Postgres at all (executed, or refused by
//!   Postgres itself, which logs the statement with its error) shows up in the server log;
//! - a snapshot of everything an attempt could change, taken by the superuser before and after:
//!   the rows of `items`, `tenants`, `marker`; ENABLE/FORCE RLS flags; policies; per-role and
//!   per-database settings (`pg_db_role_setting`); the test's roles, their attributes and
//!   memberships; functions and their `SET` clauses; `postgresql.auto.conf` (`ALTER SYSTEM`);
//! - the server connection itself: the pool has one server connection, and a probe client on it
//!   (or, for a bound connection, the client itself) must still run as the app role with no
//!   leftover tenant;
//! - case-specific checks (a file that `COPY … TO PROGRAM` would have created).
//!
//! The app role is given every privilege that makes these attempts *succeed* in Postgres when
//! they get through (membership of a BYPASSRLS role, CREATEROLE, ownership of the database, of a
//! table with forced RLS and of a function, `SET` and `ALTER SYSTEM` on `app.tenant_id`,
//! `pg_execute_server_program`, TRUNCATE), so a same-SQLSTATE refusal by Postgres cannot pass for
//! a refusal by Sentinel: the log and snapshot oracles tell them apart.

use std::path::PathBuf;

use anyhow::{Context, Result, bail, ensure};
use sentinel_tests::clients::{simple_rows, sqlstate};
use sentinel_tests::names::{quote_ident, random_secret};
use sentinel_tests::tenancy::{
    CONTEXT_REQUIRED, TOKEN_USER, TenancyDb, TenancyEnv, connect, describe_error, is_unset,
    startup_options, try_connect, within,
};
use sentinel_tests::{SentinelConfig, SentinelProcess, shared_cluster};
use tokio_postgres::Client;
use tokio_postgres::types::{ToSql, Type};

const TENANTS: &[&str] = &["acme", "globex", "initech"];
/// The tenant bound connections are bound to; attempts try to reach [`OTHER`].
const BOUND: &str = "acme";
const OTHER: &str = "globex";

// === fixture ===

/// The BYPASSRLS role the app role is made a member of ([`create_peer`]).
fn peer_role(tdb: &TenancyDb) -> String {
    format!("{}_peer", tdb.db.role)
}

/// Creates [`peer_role`]: it may read `items`, and the app role is a member.
async fn create_peer(tdb: &TenancyDb) -> Result<()> {
    tdb.superuser_batch(&format!(
        "CREATE ROLE {p} NOLOGIN BYPASSRLS; GRANT SELECT ON items TO {p}; GRANT {p} TO {a};",
        p = quote_ident(&peer_role(tdb)),
        a = quote_ident(&tdb.db.role)
    ))
    .await
}

/// The RLS fixture, plus every privilege that would let an escape attempt succeed in Postgres.
async fn start_env(
    prefix: &str,
    configure: impl FnOnce(SentinelConfig) -> SentinelConfig,
) -> Result<TenancyEnv> {
    let pg = shared_cluster().await?;
    let tdb = TenancyDb::create(pg, prefix, TENANTS).await?;
    create_peer(&tdb).await?;
    let app = quote_ident(&tdb.db.role);
    {
        // Grants on a parameter update one cluster-wide catalog row: tests setting up at the
        // same time would fail with "tuple concurrently updated".
        static PARAMETER_GRANTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        let _one_at_a_time = PARAMETER_GRANTS.lock().await;
        tdb.superuser_batch(&format!(
            "GRANT SET ON PARAMETER app.tenant_id TO {app};
             GRANT ALTER SYSTEM ON PARAMETER app.tenant_id TO {app};"
        ))
        .await?;
    }
    tdb.superuser_batch(&format!(
        "ALTER ROLE {app} CREATEROLE;
         GRANT pg_execute_server_program TO {app};
         GRANT TRUNCATE ON items, tenants, marker TO {app};
         CREATE TABLE app_notes (tenant_id text NOT NULL, body text);
         ALTER TABLE app_notes ENABLE ROW LEVEL SECURITY;
         ALTER TABLE app_notes FORCE ROW LEVEL SECURITY;
         CREATE POLICY app_notes_tenant ON app_notes
             USING (tenant_id = nullif(current_setting('app.tenant_id', true), ''));
         ALTER TABLE app_notes OWNER TO {app};
         CREATE FUNCTION app_fn() RETURNS int LANGUAGE sql AS 'SELECT 1';
         ALTER FUNCTION app_fn() OWNER TO {app};
         ALTER ROLE {app} SET log_statement = 'all';"
    ))
    .await?;
    TenancyEnv::start(tdb, configure).await
}

/// Everything an attempt could change, as one text (see the module docs).
async fn snapshot(env: &TenancyEnv) -> Result<String> {
    let su = env.tdb.oracle().await?;
    let sql = r"
SELECT concat_ws(E'\n',
 'items: ' || coalesce((SELECT string_agg(tenant_id || ':' || v, ',' ORDER BY id) FROM items), ''),
 'marker: ' || coalesce((SELECT string_agg(note, ',' ORDER BY note) FROM marker), ''),
 'tenants: ' || coalesce((SELECT string_agg(id, ',' ORDER BY id) FROM tenants), ''),
 'app_notes: ' || (SELECT count(*) FROM app_notes)::text,
 'rls: ' || coalesce((SELECT string_agg(c.relname || ':' || c.relrowsecurity || '/'
        || c.relforcerowsecurity || '/' || pg_get_userbyid(c.relowner), ',' ORDER BY c.relname)
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v')), ''),
 'policies: ' || coalesce((SELECT string_agg(p.polname || ' on ' || p.polrelid::regclass::text
        || ' ' || p.polcmd::text || ' ' || p.polpermissive || ' ' || coalesce(pg_get_expr(p.polqual, p.polrelid), '')
        || ' / ' || coalesce(pg_get_expr(p.polwithcheck, p.polrelid), ''), ',' ORDER BY p.polname)
      FROM pg_policy p), ''),
 'settings: ' || coalesce((SELECT string_agg(coalesce(r.rolname, '*') || '@'
        || coalesce(d.datname, '*') || '=' || array_to_string(s.setconfig, ';'), ',' ORDER BY 1)
      FROM pg_db_role_setting s LEFT JOIN pg_roles r ON r.oid = s.setrole
      LEFT JOIN pg_database d ON d.oid = s.setdatabase
      WHERE r.rolname = $1 OR r.rolname LIKE $1 || '\_%' OR d.datname = $2), ''),
 'roles: ' || coalesce((SELECT string_agg(rolname || ':' || rolcanlogin || '/' || rolsuper || '/'
        || rolbypassrls || '/' || rolcreaterole || '/' || rolinherit || '/' || rolconnlimit, ','
        ORDER BY rolname)
      FROM pg_roles WHERE rolname = $1 OR rolname LIKE $1 || '\_%'), ''),
 'members: ' || coalesce((SELECT string_agg(m.roleid::regrole::text || '>' || m.member::regrole::text,
        ',' ORDER BY 1)
      FROM pg_auth_members m JOIN pg_roles a ON a.oid = m.roleid JOIN pg_roles b ON b.oid = m.member
      WHERE a.rolname = $1 OR a.rolname LIKE $1 || '\_%'
         OR b.rolname = $1 OR b.rolname LIKE $1 || '\_%'), ''),
 'functions: ' || coalesce((SELECT string_agg(p.oid::regprocedure::text || ' '
        || coalesce(array_to_string(p.proconfig, ';'), '') || ' ' || p.prosecdef, ',' ORDER BY 1)
      FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
      WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')), ''),
 'auto.conf: ' || coalesce((SELECT string_agg(name || '=' || coalesce(setting, ''), ',' ORDER BY name)
      FROM pg_file_settings WHERE sourcefile LIKE '%postgresql.auto.conf'), '')
)";
    let row = su
        .query_one(sql, &[&env.tdb.db.role, &env.tdb.db.name])
        .await
        .context("the oracle snapshot")?;
    Ok(row.get(0))
}

// === cases ===

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Conn {
    /// The app role, SCRAM, no tenant.
    Plain,
    /// The tenant-token user, bound to [`BOUND`].
    Token,
    /// The app role with `options=-c sentinel.tenant=<BOUND>`, bound to it.
    Startup,
}

#[derive(Debug, Clone)]
enum Attempt {
    /// A simple Query.
    Simple(String),
    /// tokio-postgres `query(sql, params)`: a named statement prepared then executed.
    Extended(String, Vec<String>),
    /// `query_typed`: the unnamed statement, text parameters.
    Unnamed(String, Vec<String>),
    /// A login with these extra DSN pairs (no statement).
    Login(String),
}

#[derive(Debug, Clone)]
enum Msg {
    /// Any non-empty message.
    Any,
    Contains(&'static str),
    Exactly(&'static str),
}

#[derive(Debug, Clone)]
struct Case {
    label: String,
    conn: Conn,
    /// Simple queries run first; each must succeed.
    setup: Vec<String>,
    attempt: Attempt,
    code: &'static str,
    msg: Msg,
    /// A file that must not exist afterwards.
    file_absent: Option<PathBuf>,
}

fn case(label: &str, conn: Conn, attempt: Attempt, code: &'static str, msg: Msg) -> Case {
    Case {
        label: label.to_owned(),
        conn,
        setup: Vec::new(),
        attempt,
        code,
        msg,
        file_absent: None,
    }
}

fn simple(sql: &str) -> Attempt {
    Attempt::Simple(sql.to_owned())
}

impl Case {
    fn setup(mut self, stmts: &[&str]) -> Case {
        self.setup = stmts.iter().map(|s| (*s).to_owned()).collect();
        self
    }
}

/// The cases. `names`: app role, database, the BYPASSRLS peer, the table owner.
fn cases(app: &str, db: &str, peer: &str, owner: &str, tmp_file: &str) -> Vec<Case> {
    use Conn::{Plain, Startup, Token};
    use Msg::{Any, Contains, Exactly};
    let bound = Contains("bound");
    let two = Contains("two different tenants");
    let ctx = Exactly(CONTEXT_REQUIRED);
    let long_id = "a".repeat(200);
    let ident = quote_ident;
    let mut v = vec![
        // --- roles and authorization ---
        case(
            "SET ROLE to a BYPASSRLS role",
            Plain,
            simple(&format!("SET ROLE {}", ident(peer))),
            "42501",
            Any,
        ),
        case(
            "SET ROLE, then read, in one query",
            Plain,
            simple(&format!(
                "SET ROLE {}; SELECT count(*) FROM items",
                ident(peer)
            )),
            "42501",
            Any,
        ),
        case(
            "SET LOCAL ROLE in a transaction",
            Plain,
            simple(&format!("SET LOCAL ROLE {}", ident(peer))),
            "42501",
            Any,
        )
        .setup(&["BEGIN"]),
        case(
            "SET ROLE in the extended protocol",
            Plain,
            Attempt::Extended(format!("SET ROLE {}", ident(peer)), vec![]),
            "42501",
            Any,
        ),
        case("RESET ROLE", Plain, simple("RESET ROLE"), "42501", Any),
        case(
            "set_config('role', …)",
            Plain,
            simple(&format!("SELECT set_config('role', '{peer}', false)")),
            "42501",
            Any,
        ),
        case(
            "SET SESSION AUTHORIZATION",
            Plain,
            simple(&format!("SET SESSION AUTHORIZATION {}", ident(peer))),
            "42501",
            Any,
        ),
        // --- set_config of the tenant anywhere but the standalone form ---
        case(
            "set_config of the tenant in a CTE",
            Plain,
            simple(
                "WITH s AS (SELECT set_config('app.tenant_id', 'globex', false) AS t) SELECT count(*) FROM items, s",
            ),
            "42501",
            Any,
        ),
        case(
            "set_config of the tenant in a FROM subquery",
            Plain,
            simple("SELECT * FROM (SELECT set_config('app.tenant_id', 'globex', false)) AS s"),
            "42501",
            Any,
        ),
        case(
            "set_config of the tenant in WHERE",
            Plain,
            simple(
                "SELECT count(*) FROM items WHERE set_config('app.tenant_id', 'globex', true) IS NOT NULL",
            ),
            "42501",
            Any,
        ),
        case(
            "set_config of the tenant as a second select target",
            Plain,
            simple("SELECT 1, set_config('app.tenant_id', 'globex', false)"),
            "42501",
            Any,
        ),
        case(
            // The standalone `SELECT pg_catalog.set_config(...)` is the set source (intercepted,
            // never forwarded); anywhere else the schema-qualified name is refused like the bare one.
            "pg_catalog.set_config of the tenant in a subquery",
            Plain,
            simple(
                "SELECT x FROM (SELECT pg_catalog.set_config('app.tenant_id', 'globex', false) AS x) s",
            ),
            "42501",
            Any,
        ),
        case(
            "set_config of the tenant nested in coalesce",
            Plain,
            simple("SELECT coalesce(set_config('app.tenant_id', 'globex', false), '')"),
            "42501",
            Any,
        ),
        case(
            "set_config of the tenant with FROM a tenant table",
            Plain,
            simple("SELECT set_config('app.tenant_id', 'globex', false) FROM items"),
            "42501",
            Any,
        ),
        case(
            "set_config of the tenant in an INSERT's scalar subquery",
            Plain,
            simple(
                "INSERT INTO marker VALUES ((SELECT set_config('app.tenant_id', 'globex', false)))",
            ),
            "42501",
            Any,
        ),
        case(
            "set_config with the name as a bind parameter (prepared statement)",
            Plain,
            Attempt::Extended(
                "SELECT set_config($1, $2, false)".to_owned(),
                vec!["app.tenant_id".to_owned(), OTHER.to_owned()],
            ),
            "42501",
            Any,
        ),
        case(
            "set_config with the name as a bind parameter (unnamed statement)",
            Plain,
            Attempt::Unnamed(
                "SELECT set_config($1, $2, true)".to_owned(),
                vec!["app.tenant_id".to_owned(), OTHER.to_owned()],
            ),
            "42501",
            Any,
        )
        .setup(&["BEGIN"]),
        case(
            "set_config with a computed name",
            Plain,
            simple("SELECT set_config('app.' || 'tenant_id', 'globex', false)"),
            "42501",
            Any,
        ),
        case(
            "set_config with the name from a subquery",
            Plain,
            simple("SELECT set_config((SELECT 'app.tenant_id'), 'globex', false)"),
            "42501",
            Any,
        ),
        case(
            "SQL-level PREPARE of a set_config",
            Plain,
            simple("PREPARE sneaky AS SELECT set_config('app.tenant_id', 'globex', false)"),
            "42501",
            Any,
        ),
        // --- SET of the tenant inside a multi-statement query ---
        case(
            "SET of the tenant before a read in one query",
            Plain,
            simple("SET app.tenant_id = 'globex'; SELECT count(*) FROM items"),
            "42501",
            Any,
        ),
        case(
            "SET of the tenant after another statement in one query",
            Plain,
            simple("SELECT 1; SET app.tenant_id = 'globex'"),
            "42501",
            Any,
        ),
        case(
            "BEGIN; SET LOCAL; read; COMMIT in one query",
            Plain,
            simple("BEGIN; SET LOCAL app.tenant_id = 'globex'; SELECT count(*) FROM items; COMMIT"),
            "42501",
            Any,
        ),
        // --- spellings of the tenant setting, on a connection bound to acme ---
        case(
            "SET \"app.tenant_id\" (quoted) on a bound connection",
            Token,
            simple("SET \"app.tenant_id\" = 'globex'"),
            "42501",
            bound.clone(),
        ),
        case(
            "SET APP.TENANT_ID (upper case) on a bound connection",
            Token,
            simple("SET APP.TENANT_ID = 'globex'"),
            "42501",
            bound.clone(),
        ),
        case(
            "SET \"app\".\"tenant_id\" TO … on a bound connection",
            Token,
            simple("SET \"app\".\"tenant_id\" TO 'globex'"),
            "42501",
            bound.clone(),
        ),
        case(
            "set_config('APP.Tenant_Id', …) standalone on a bound connection",
            Token,
            simple("SELECT set_config('APP.Tenant_Id', 'globex', false)"),
            "42501",
            bound.clone(),
        ),
        case(
            "standalone set_config to another tenant on a token-bound connection",
            Token,
            simple("SELECT set_config('app.tenant_id', 'globex', true)"),
            "42501",
            bound.clone(),
        )
        .setup(&["BEGIN"]),
        case(
            "SET app.tenant_id to another tenant on a token-bound connection",
            Token,
            simple("SET app.tenant_id = 'globex'"),
            "42501",
            bound.clone(),
        ),
        case(
            "SET sentinel.tenant to another tenant on a startup-bound connection",
            Startup,
            simple("SET sentinel.tenant = 'globex'"),
            "42501",
            bound.clone(),
        ),
        case(
            "comment tag for another tenant on a token-bound connection",
            Token,
            simple("/*tenant='globex'*/ SELECT count(*) FROM items"),
            "42501",
            bound.clone(),
        ),
        case(
            "comment tag for another tenant on a startup-bound connection (extended)",
            Startup,
            Attempt::Extended(
                "SELECT count(*) FROM items /*tenant='globex'*/".to_owned(),
                vec![],
            ),
            "42501",
            bound.clone(),
        ),
        case(
            "RESET app.tenant_id on a bound connection",
            Token,
            simple("RESET app.tenant_id"),
            "42501",
            bound.clone(),
        ),
        // --- two tenants in one transaction ---
        case(
            "two tenants in one transaction (comment, then a tagged insert for another)",
            Plain,
            simple(
                "/*tenant='globex'*/ INSERT INTO items (tenant_id, v) VALUES ('globex', 'sneaky')",
            ),
            "42501",
            two.clone(),
        )
        .setup(&["BEGIN", "/*tenant='acme'*/ SELECT count(*) FROM items"]),
        case(
            "two tenants in one transaction (SET LOCAL, then a comment for another)",
            Plain,
            simple("/*tenant='globex'*/ SELECT count(*) FROM items"),
            "42501",
            two.clone(),
        )
        .setup(&["BEGIN", "SET LOCAL app.tenant_id = 'acme'"]),
        case(
            "two tenants in one transaction (comment, then SET for another)",
            Plain,
            simple("SET LOCAL app.tenant_id = 'globex'"),
            "42501",
            two.clone(),
        )
        .setup(&["BEGIN", "/*tenant='acme'*/ SELECT count(*) FROM items"]),
        case(
            "two tenants in one transaction (extended protocol)",
            Plain,
            Attempt::Unnamed(
                "/*tenant='globex'*/ SELECT count(*) FROM items".to_owned(),
                vec![],
            ),
            "42501",
            two.clone(),
        )
        .setup(&["BEGIN", "/*tenant='acme'*/ SELECT count(*) FROM items"]),
        case(
            "a second tag for another tenant in a trailing comment",
            Plain,
            simple("/*tenant='acme'*/ SELECT count(*) FROM items /*action='x',tenant='globex'*/"),
            "42501",
            two.clone(),
        ),
        // --- tags that are not tags ---
        case(
            "a tag inside a nested comment",
            Plain,
            simple("/* note /*tenant='globex'*/ */ SELECT count(*) FROM items"),
            "42501",
            Any,
        ),
        case(
            "a tag inside a string literal is data",
            Plain,
            simple("SELECT count(*) FROM items WHERE v = '/*tenant=''globex''*/'"),
            "42501",
            ctx.clone(),
        ),
        case(
            "a tag inside a dollar-quoted string is data",
            Plain,
            simple("SELECT count(*) FROM items WHERE v = $$/*tenant='globex'*/$$"),
            "42501",
            ctx.clone(),
        ),
        case(
            "a tag inside a quoted identifier is a name",
            Plain,
            simple("SELECT count(*) AS \"/*tenant='globex'*/\" FROM items"),
            "42501",
            ctx.clone(),
        ),
        case(
            "a tag inside a line comment is not a tag",
            Plain,
            simple("-- /*tenant='globex'*/\nSELECT count(*) FROM items"),
            "42501",
            ctx.clone(),
        ),
        case(
            "a tag inside a string literal, extended protocol",
            Plain,
            Attempt::Extended(
                "SELECT count(*) FROM items WHERE v = '/*tenant=''globex''*/'".to_owned(),
                vec![],
            ),
            "42501",
            ctx.clone(),
        ),
        // --- invalid tenant ids ---
        case(
            "invalid tenant id with a quote (comment)",
            Plain,
            simple("/*tenant='a\\'b'*/ SELECT count(*) FROM items"),
            "28000",
            Any,
        ),
        case(
            "invalid tenant id ../x (URL-encoded comment)",
            Plain,
            simple("/*tenant='..%2Fx'*/ SELECT count(*) FROM items"),
            "28000",
            Any,
        ),
        case(
            "invalid tenant id of 200 characters (comment)",
            Plain,
            simple(&format!(
                "/*tenant='{long_id}'*/ SELECT count(*) FROM items"
            )),
            "28000",
            Any,
        ),
        case(
            "invalid tenant id with a quote (SET)",
            Plain,
            simple("SET app.tenant_id = 'a''b'"),
            "28000",
            Any,
        )
        .setup(&["BEGIN"]),
        case(
            "invalid tenant id of 200 characters (SET LOCAL)",
            Plain,
            simple(&format!("SET LOCAL app.tenant_id = '{long_id}'")),
            "28000",
            Any,
        )
        .setup(&["BEGIN"]),
        case(
            "invalid tenant id ../x (set_config bind parameter)",
            Plain,
            Attempt::Extended(
                "SELECT set_config('app.tenant_id', $1, true)".to_owned(),
                vec!["../x".to_owned()],
            ),
            "28000",
            Any,
        )
        .setup(&["BEGIN"]),
        // --- lasting settings and role DDL ---
        case(
            "ALTER ROLE CURRENT_USER SET app.tenant_id",
            Plain,
            simple("ALTER ROLE CURRENT_USER SET app.tenant_id = 'globex'"),
            "42501",
            Any,
        ),
        case(
            "ALTER ROLE … IN DATABASE … SET app.tenant_id",
            Plain,
            simple(&format!(
                "ALTER ROLE {} IN DATABASE {} SET app.tenant_id = 'globex'",
                ident(app),
                ident(db)
            )),
            "42501",
            Any,
        ),
        case(
            "ALTER DATABASE … SET app.tenant_id",
            Plain,
            simple(&format!(
                "ALTER DATABASE {} SET app.tenant_id = 'globex'",
                ident(db)
            )),
            "42501",
            Any,
        ),
        case(
            "CREATE ROLE",
            Plain,
            simple(&format!(
                "CREATE ROLE {} LOGIN PASSWORD 'x'",
                ident(&format!("{app}_x"))
            )),
            "42501",
            Any,
        ),
        case(
            "ALTER ROLE … LOGIN PASSWORD on the BYPASSRLS role",
            Plain,
            simple(&format!("ALTER ROLE {} LOGIN PASSWORD 'x'", ident(peer))),
            "42501",
            Any,
        ),
        case(
            "DROP ROLE",
            Plain,
            simple(&format!("DROP ROLE {}", ident(peer))),
            "42501",
            Any,
        ),
        case(
            "GRANT the table owner's role to myself",
            Plain,
            simple(&format!("GRANT {} TO CURRENT_USER", ident(owner))),
            "42501",
            Any,
        ),
        case(
            "CREATE FUNCTION … SET app.tenant_id",
            Plain,
            simple(
                "CREATE FUNCTION sneaky_fn() RETURNS int LANGUAGE sql SET app.tenant_id = 'globex' AS 'SELECT 1'",
            ),
            "42501",
            Any,
        ),
        case(
            "CREATE FUNCTION pg_temp.… SET app.tenant_id",
            Plain,
            simple(
                "CREATE FUNCTION pg_temp.sneaky_tmp() RETURNS int LANGUAGE sql SET app.tenant_id = 'globex' AS 'SELECT 1'",
            ),
            "42501",
            Any,
        ),
        case(
            "ALTER FUNCTION … SET app.tenant_id",
            Plain,
            simple("ALTER FUNCTION app_fn() SET app.tenant_id = 'globex'"),
            "42501",
            Any,
        ),
        // --- RLS and policies (on a table the app role owns, with a tenant for good measure) ---
        case(
            "ALTER TABLE … DISABLE ROW LEVEL SECURITY",
            Plain,
            simple("/*tenant='acme'*/ ALTER TABLE app_notes DISABLE ROW LEVEL SECURITY"),
            "42501",
            Any,
        ),
        case(
            "ALTER TABLE … NO FORCE ROW LEVEL SECURITY",
            Plain,
            simple("/*tenant='acme'*/ ALTER TABLE app_notes NO FORCE ROW LEVEL SECURITY"),
            "42501",
            Any,
        ),
        case(
            "CREATE POLICY",
            Plain,
            simple("/*tenant='acme'*/ CREATE POLICY sneaky_pol ON app_notes USING (true)"),
            "42501",
            Any,
        ),
        case(
            "ALTER POLICY",
            Plain,
            simple("/*tenant='acme'*/ ALTER POLICY app_notes_tenant ON app_notes USING (true)"),
            "42501",
            Any,
        ),
        case(
            "DROP POLICY",
            Plain,
            simple("/*tenant='acme'*/ DROP POLICY app_notes_tenant ON app_notes"),
            "42501",
            Any,
        ),
        // --- server-wide and dynamic ---
        case(
            "ALTER SYSTEM SET app.tenant_id",
            Plain,
            simple("ALTER SYSTEM SET app.tenant_id = 'globex'"),
            "42501",
            Any,
        ),
        case(
            "LOAD a library",
            Plain,
            simple("LOAD 'auto_explain'"),
            "42501",
            Any,
        ),
        Case {
            file_absent: Some(PathBuf::from(tmp_file)),
            ..case(
                "COPY … TO PROGRAM",
                Plain,
                simple(&format!("COPY (SELECT 1) TO PROGRAM 'touch {tmp_file}'")),
                "42501",
                Any,
            )
        },
        case(
            "COPY … FROM PROGRAM into a global table",
            Plain,
            simple("COPY marker FROM PROGRAM 'echo sneaky'"),
            "42501",
            Any,
        ),
        case(
            "DO block setting the tenant",
            Plain,
            simple("DO $$ BEGIN PERFORM set_config('app.tenant_id', 'globex', false); END $$"),
            "42501",
            Any,
        ),
        case(
            "CREATE FUNCTION whose body sets the tenant, to call later",
            Plain,
            simple(
                "CREATE FUNCTION switch_tenant() RETURNS text LANGUAGE sql AS \
                 $$ SELECT set_config('app.tenant_id', 'globex', false) $$",
            ),
            "42501",
            Any,
        ),
        case(
            "CREATE OR REPLACE of an existing function, with a tenant",
            Plain,
            simple(
                "/*tenant='acme'*/ CREATE OR REPLACE FUNCTION app_fn() RETURNS int LANGUAGE sql \
                 AS $$ SELECT count(*)::int FROM items $$",
            ),
            "42501",
            Any,
        ),
        case(
            "DO block inside a tenant's transaction",
            Plain,
            simple("DO $$ BEGIN INSERT INTO marker VALUES ('from DO'); END $$"),
            "42501",
            Any,
        )
        .setup(&["BEGIN", "SET LOCAL app.tenant_id = 'acme'"]),
        case(
            "TRUNCATE of a tenant table, with a tenant",
            Plain,
            simple("/*tenant='acme'*/ TRUNCATE items"),
            "42501",
            Any,
        ),
        case(
            "TRUNCATE of a global table",
            Plain,
            simple("TRUNCATE tenants CASCADE"),
            "42501",
            Any,
        ),
        case(
            "query_to_xml running a set_config",
            Plain,
            simple(
                "/*tenant='acme'*/ SELECT query_to_xml('SELECT set_config(''app.tenant_id'', ''globex'', false)', true, false, '')",
            ),
            "42501",
            Any,
        ),
        case(
            "query_to_xml reading a tenant table with no tenant",
            Plain,
            simple("SELECT query_to_xml('SELECT * FROM items', true, false, '')"),
            "42501",
            Any,
        ),
        case(
            "table_to_xml of a tenant table with no tenant",
            Plain,
            simple("SELECT table_to_xml('items', true, false, '')"),
            "42501",
            Any,
        ),
        // --- no context where one seemed to be set ---
        case(
            "SET LOCAL outside a transaction leaves no tenant",
            Plain,
            simple("SELECT count(*) FROM items"),
            "42501",
            ctx.clone(),
        )
        .setup(&["SET LOCAL app.tenant_id = 'acme'"]),
        case(
            "a session SET under scope = transaction leaves no tenant (no session state)",
            Plain,
            simple("SELECT count(*) FROM items"),
            "42501",
            ctx.clone(),
        )
        .setup(&["SET app.tenant_id = 'acme'"]),
        case(
            "a standalone set_config(…, false) under scope = transaction leaves no tenant",
            Plain,
            Attempt::Unnamed("SELECT count(*) FROM items".to_owned(), vec![]),
            "42501",
            ctx.clone(),
        )
        .setup(&["SELECT set_config('app.tenant_id', 'acme', false)"]),
        case(
            "a user-defined function with no tenant",
            Plain,
            simple("SELECT tenant_rows()"),
            "42501",
            ctx.clone(),
        ),
        case(
            "a schema-qualified tenant table with no tenant",
            Plain,
            simple("SELECT count(*) FROM public.items"),
            "42501",
            ctx.clone(),
        ),
        case(
            "a tenant table in a CTE with no tenant",
            Plain,
            simple("WITH x AS (SELECT * FROM items) SELECT count(*) FROM tenants, x"),
            "42501",
            ctx.clone(),
        ),
        // --- SQL that does not parse ---
        case(
            "unparsable SQL",
            Plain,
            simple("SELEC count(*) FROM items"),
            "42601",
            Any,
        ),
        case(
            "unterminated string literal",
            Plain,
            simple("SELECT 'abc FROM items"),
            "42601",
            Any,
        ),
        // --- startup spoofing ---
        case(
            "startup options -c role=<BYPASSRLS role>",
            Plain,
            Attempt::Login(format!("options='-c role={peer}'")),
            "42501",
            Any,
        ),
        case(
            "startup options -c session_authorization=…",
            Plain,
            Attempt::Login(format!("options='-c session_authorization={peer}'")),
            "42501",
            Any,
        ),
    ];
    // Number the labels so a failure is easy to find in the table.
    for (i, c) in v.iter_mut().enumerate() {
        c.label = format!("#{i:02} {}", c.label);
    }
    v
}

// === running a case ===

async fn connect_as(
    env: &TenancyEnv,
    conn: Conn,
    extra: &str,
) -> Result<Result<Client, tokio_postgres::Error>> {
    let dsn = match conn {
        Conn::Plain => env.tdb.dsn(&env.sentinel, extra),
        Conn::Startup => env.tdb.dsn(
            &env.sentinel,
            &format!("{} {extra}", startup_options(BOUND)),
        ),
        Conn::Token => {
            let token = env.cfg.tenant_token(BOUND, None)?;
            format!(
                "{} {extra}",
                env.sentinel.dsn(TOKEN_USER, &token, &env.tdb.db.name)
            )
        }
    };
    try_connect(&dsn).await
}

async fn attempt_on(
    client: &Client,
    attempt: &Attempt,
    probe: &str,
) -> Result<Result<(), tokio_postgres::Error>> {
    let with_probe = |sql: &str| format!("{sql} /*{probe}*/");
    Ok(match attempt {
        Attempt::Simple(sql) => within("attempt", client.simple_query(&with_probe(sql)))
            .await?
            .map(drop),
        Attempt::Extended(sql, params) => {
            let p: Vec<&(dyn ToSql + Sync)> =
                params.iter().map(|s| s as &(dyn ToSql + Sync)).collect();
            within("attempt", client.query(&with_probe(sql), &p))
                .await?
                .map(drop)
        }
        Attempt::Unnamed(sql, params) => {
            let p: Vec<(&(dyn ToSql + Sync), Type)> = params
                .iter()
                .map(|s| (s as &(dyn ToSql + Sync), Type::TEXT))
                .collect();
            within("attempt", client.query_typed(&with_probe(sql), &p))
                .await?
                .map(drop)
        }
        Attempt::Login(_) => bail!("a login attempt has no statement"),
    })
}

fn check_error(e: &tokio_postgres::Error, code: &str, msg: &Msg, fatal: bool) -> Result<()> {
    ensure!(
        sqlstate(e) == code,
        "expected SQLSTATE {code}, got {}",
        describe_error(e)
    );
    let db = e.as_db_error().context("not a server error")?;
    match msg {
        Msg::Any => ensure!(!db.message().trim().is_empty(), "an empty message"),
        Msg::Contains(s) => ensure!(
            db.message().contains(s),
            "the message {:?} does not contain {s:?}",
            db.message()
        ),
        Msg::Exactly(s) => ensure!(
            db.message() == *s,
            "the message is {:?}, not {s:?}",
            db.message()
        ),
    }
    if fatal {
        ensure!(
            db.severity() == "FATAL",
            "a refused login with severity {}",
            db.severity()
        );
    }
    Ok(())
}

/// `(setting, current_user, session_user)` inside a fresh transaction on `client`.
async fn identity(client: &Client) -> Result<(Option<String>, String, String)> {
    let msgs = within(
        "identity",
        client.simple_query(
            "BEGIN; SELECT current_setting('app.tenant_id', true), current_user::text, \
             session_user::text; ROLLBACK",
        ),
    )
    .await?
    .context("reading the identity")?;
    let row = simple_rows(&msgs).into_iter().next().context("no row")?;
    let col = |i: usize| row.get(i).cloned().flatten();
    Ok((
        col(0),
        col(1).unwrap_or_default(),
        col(2).unwrap_or_default(),
    ))
}

async fn run_case(env: &TenancyEnv, probe_client: &Client, c: &Case, probe: &str) -> Result<()> {
    let app = &env.tdb.db.role;
    let before = snapshot(env).await?;
    let mut problems: Vec<String> = Vec::new();

    if let Attempt::Login(extra) = &c.attempt {
        match connect_as(env, c.conn, extra).await? {
            Ok(client) => {
                // Say what the accepted connection got, for the report.
                let seen = identity(&client).await.map_or_else(
                    |e| format!("(identity unreadable: {e:#})"),
                    |(s, cur, sess)| {
                        format!("setting {s:?}, current_user {cur}, session_user {sess}")
                    },
                );
                let read = match client.simple_query("SELECT count(*) FROM items").await {
                    Ok(m) => format!("a read of items returned {:?}", simple_rows(&m)),
                    Err(e) => format!("a read of items was refused: {}", describe_error(&e)),
                };
                problems.push(format!("the login was accepted: {seen}; {read}"));
            }
            Err(e) => {
                if let Err(err) = check_error(&e, c.code, &c.msg, true) {
                    problems.push(format!("{err:#}"));
                }
            }
        }
    } else {
        let client = connect_as(env, c.conn, "")
            .await?
            .map_err(|e| anyhow::anyhow!("connecting: {}", describe_error(&e)))?;
        for stmt in &c.setup {
            within("setup", client.simple_query(stmt))
                .await?
                .map_err(|e| anyhow::anyhow!("setup {stmt:?} failed: {}", describe_error(&e)))?;
        }
        match attempt_on(&client, &c.attempt, probe).await? {
            Ok(()) => problems.push(format!(
                "the attempt succeeded; expected SQLSTATE {}",
                c.code
            )),
            Err(e) => {
                if let Err(err) = check_error(&e, c.code, &c.msg, false) {
                    problems.push(format!("{err:#}"));
                }
            }
        }
        // The connection stays usable.
        let _ = within("rollback", client.batch_execute("ROLLBACK")).await;
        match within("usable", client.simple_query("SELECT 1")).await? {
            Ok(_) => {}
            Err(e) => problems.push(format!(
                "the connection is not usable afterwards: {}",
                describe_error(&e)
            )),
        }
        // Still the app role; a bound connection still has its tenant, a plain one none.
        match identity(&client).await {
            Ok((setting, cur, sess)) => {
                if cur != *app || sess != *app {
                    problems.push(format!(
                        "afterwards the client runs as current_user {cur}, session_user {sess}"
                    ));
                }
                let ok = match c.conn {
                    Conn::Plain => is_unset(&setting),
                    Conn::Token | Conn::Startup => setting.as_deref() == Some(BOUND),
                };
                if !ok {
                    problems.push(format!("afterwards the client's setting is {setting:?}"));
                }
            }
            Err(e) => problems.push(format!("{e:#}")),
        }
    }
    // The one server connection: a client with no tenant finds it clean.
    match identity(probe_client).await {
        Ok((setting, cur, sess)) => {
            if !is_unset(&setting) || cur != *app || sess != *app {
                problems.push(format!(
                    "the probe client then sees setting {setting:?}, current_user {cur}, \
                     session_user {sess}"
                ));
            }
        }
        Err(e) => problems.push(format!("probe client: {e:#}")),
    }
    // Nothing reached Postgres.
    let log = env.tdb.pg.log_contents();
    let hits: Vec<&str> = log.lines().filter(|l| l.contains(probe)).collect();
    if !hits.is_empty() {
        problems.push(format!(
            "the attempt reached Postgres; its log has:\n      {}",
            hits.join("\n      ")
        ));
    }
    // Nothing changed.
    let after = snapshot(env).await?;
    if after != before {
        let diff: Vec<String> = before
            .lines()
            .zip(after.lines())
            .filter(|(a, b)| a != b)
            .map(|(a, b)| format!("before: {a}\n      after:  {b}"))
            .collect();
        problems.push(format!(
            "the database changed:\n      {}",
            diff.join("\n      ")
        ));
    }
    if let Some(path) = &c.file_absent
        && path.exists()
    {
        problems.push(format!("{} was created", path.display()));
        let _ = std::fs::remove_file(path);
    }
    if problems.is_empty() {
        Ok(())
    } else {
        bail!("{}", problems.join("\n    "))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escape_attempts_are_refused_and_nothing_runs() -> Result<()> {
    let env = start_env("tenbypass", |c| c).await?;
    let owner = env.tdb.owner.clone();
    let tmp_file = std::env::temp_dir().join(format!(
        "sentinel-tenancy-probe-{}-{}",
        std::process::id(),
        random_secret(8)
    ));
    let tmp_file = tmp_file.display().to_string();
    let all = cases(
        &env.tdb.db.role,
        &env.tdb.db.name,
        &peer_role(&env.tdb),
        &owner,
        &tmp_file,
    );
    ensure!(all.len() >= 30, "only {} bypass cases", all.len());
    let probe_client = connect(&env.tdb.dsn(&env.sentinel, "")).await?;
    snapshot(&env).await?;

    // The oracles work: an allowed statement with a probe does reach the log.
    let control = format!("probe_control_{}", random_secret(10));
    within(
        "control",
        probe_client.simple_query(&format!("SELECT count(*) FROM tenants /*{control}*/")),
    )
    .await?
    .context("a read of a global table with no tenant")?;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    ensure!(
        env.tdb.pg.log_contents().contains(&control),
        "the log oracle is blind: a statement that ran is not in the Postgres log"
    );

    let mut failures = Vec::new();
    for (i, c) in all.iter().enumerate() {
        let probe = format!("probe_{i:02}_{}", random_secret(10));
        if let Err(e) = run_case(&env, &probe_client, c, &probe).await {
            failures.push(format!(
                "{} [{:?}, expected {}]\n    {e:#}",
                c.label, c.conn, c.code
            ));
        }
    }
    ensure!(
        failures.is_empty(),
        "{} of {} bypass cases failed:\n{}",
        failures.len(),
        all.len(),
        failures.join("\n")
    );
    Ok(())
}

/// Positive controls next to the refusals: what looks like an attack but is fine must work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookalikes_that_are_fine_run() -> Result<()> {
    let env = start_env("tenlook", |c| c).await?;
    let c = connect(&env.tdb.dsn(&env.sentinel, "")).await?;
    let acme = env.tdb.oracle_count(BOUND).await?;

    // A literal that looks like a tag, with a real tag: data, and only acme's rows.
    let n: i64 = c
        .query_one(
            "/*tenant='acme'*/ SELECT count(*) FROM items WHERE v <> '/*tenant=''globex''*/'",
            &[],
        )
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "tagged read with a lookalike literal: {}",
                describe_error(&e)
            )
        })?
        .get(0);
    ensure!(n == acme, "acme sees {n} rows, the oracle says {acme}");

    // The same tag twice (one statement, two comments) is one tenant.
    let n: i64 = c
        .query_one(
            "/*tenant='acme'*/ SELECT count(*) FROM items /*action='list',tenant='acme'*/",
            &[],
        )
        .await
        .map_err(|e| anyhow::anyhow!("the same tag twice: {}", describe_error(&e)))?
        .get(0);
    ensure!(
        n == acme,
        "acme (tagged twice) sees {n} rows, the oracle says {acme}"
    );

    // pg_catalog, information_schema and the global tables need no tenant.
    for sql in [
        "SELECT count(*) FROM pg_catalog.pg_class",
        "SELECT count(*) FROM information_schema.tables",
        "SELECT count(*) FROM tenants",
        "SELECT count(*) FROM public.marker",
        "SELECT now(), current_setting('app.tenant_id', true), lower('X')",
    ] {
        c.simple_query(sql)
            .await
            .map_err(|e| anyhow::anyhow!("{sql}: {}", describe_error(&e)))?;
    }
    let tenants: i64 = c
        .query_one("SELECT count(*) FROM tenants", &[])
        .await?
        .get(0);
    ensure!(
        tenants == TENANTS.len() as i64,
        "the global table shows {tenants} tenants"
    );

    // The standalone set_config form is the set source, not a forbidden set_config.
    c.batch_execute("BEGIN").await?;
    let rows = c
        .query("SELECT set_config('app.tenant_id', $1, true)", &[&BOUND])
        .await
        .map_err(|e| anyhow::anyhow!("standalone set_config: {}", describe_error(&e)))?;
    ensure!(
        rows.len() == 1 && rows[0].get::<_, Option<String>>(0).as_deref() == Some(BOUND),
        "standalone set_config answered {:?}",
        rows.iter()
            .map(|r| r.get::<_, Option<String>>(0))
            .collect::<Vec<_>>()
    );
    let n: i64 = c.query_one("SELECT count(*) FROM items", &[]).await?.get(0);
    c.batch_execute("COMMIT").await?;
    ensure!(
        n == acme,
        "after the standalone set_config acme sees {n} rows, not {acme}"
    );
    Ok(())
}

/// `bypass_users`: statements pass untouched (no tenant needed, forbidden forms allowed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bypass_users_pass_untouched() -> Result<()> {
    const MIGRATOR: &str = "migrator";
    const MIGRATOR_PW: &str = "migrator-pw";
    let pg = shared_cluster().await?;
    let tdb = TenancyDb::create(pg, "tenbyuser", TENANTS).await?;
    create_peer(&tdb).await?;
    let peer = peer_role(&tdb);
    let cfg = tdb
        .config()
        .pool_size(2)
        .user(
            MIGRATOR,
            sentinel_tests::Auth::Scram(MIGRATOR_PW),
            &tdb.db.role,
        )
        .server_password(&tdb.db.password)
        .tenancy_bypass_users(&[MIGRATOR]);
    let sentinel = SentinelProcess::start_with(&cfg).await?;
    let m = connect(&sentinel.dsn(MIGRATOR, MIGRATOR_PW, &tdb.db.name)).await?;
    let total = tdb.oracle_counts().await?.values().sum::<i64>();
    let acme = tdb.oracle_count(BOUND).await?;

    // No tenant needed: RLS (fail-closed) answers, not Sentinel.
    let n: i64 = m
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .map_err(|e| anyhow::anyhow!("bypass user, no tenant: {}", describe_error(&e)))?
        .get(0);
    ensure!(n == 0, "with no setting, RLS should show 0 rows, got {n}");
    // A set_config that is not standalone runs as written.
    let msgs = m
        .simple_query(
            "BEGIN; SELECT 1, set_config('app.tenant_id', 'acme', true); \
             SELECT count(*) FROM items; COMMIT",
        )
        .await
        .map_err(|e| anyhow::anyhow!("bypass user, inline set_config: {}", describe_error(&e)))?;
    let rows = simple_rows(&msgs);
    ensure!(
        rows.last().and_then(|r| r.first().cloned().flatten()) == Some(acme.to_string()),
        "bypass user with set_config in a select list: rows {rows:?}, want acme's {acme}"
    );
    // SET LOCAL ROLE and DO blocks run.
    let msgs = m
        .simple_query(&format!(
            "BEGIN; SET LOCAL ROLE {}; SELECT count(*) FROM items; ROLLBACK",
            quote_ident(&peer)
        ))
        .await
        .map_err(|e| anyhow::anyhow!("bypass user, SET LOCAL ROLE: {}", describe_error(&e)))?;
    let rows = simple_rows(&msgs);
    ensure!(
        rows.last().and_then(|r| r.first().cloned().flatten()) == Some(total.to_string()),
        "bypass user as the BYPASSRLS role: rows {rows:?}, want all {total}"
    );
    m.batch_execute("DO $$ BEGIN PERFORM 1; END $$")
        .await
        .map_err(|e| anyhow::anyhow!("bypass user, DO: {}", describe_error(&e)))?;

    // Meanwhile the app role is still checked.
    let app = tdb.plain(&sentinel).await?;
    sentinel_tests::tenancy::expect_context_required(
        "the app role beside a bypass user",
        app.simple_query("SELECT count(*) FROM items").await,
    )?;

    // A session-level tenant a bypass user sets never reaches the next client of the pool: every
    // server connection it used is reset before it is reused.
    m.simple_query("SELECT set_config('app.tenant_id', 'acme', false)")
        .await
        .map_err(|e| anyhow::anyhow!("bypass user, session set_config: {}", describe_error(&e)))?;
    for i in 0..4 {
        let c = tdb.plain(&sentinel).await?;
        let msgs = c
            .simple_query(
                "BEGIN; SELECT coalesce(current_setting('app.tenant_id', true), ''); COMMIT",
            )
            .await
            .map_err(|e| anyhow::anyhow!("app client {i}: {}", describe_error(&e)))?;
        let seen = simple_rows(&msgs)
            .into_iter()
            .next()
            .and_then(|r| r.into_iter().next())
            .flatten();
        ensure!(
            seen.as_deref() == Some(""),
            "app client {i} after the bypass user sees the tenant setting {seen:?}"
        );
    }
    Ok(())
}

/// `allow_do = true`: DO blocks run (with a tenant); the default refuses them (in the table above).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_do_lets_do_blocks_run() -> Result<()> {
    let env = start_env("tendo", |c| c.tenancy_allow_do(true)).await?;
    let c = connect(&env.tdb.dsn(&env.sentinel, "")).await?;
    c.batch_execute("BEGIN").await?;
    c.batch_execute("SET LOCAL app.tenant_id = 'acme'")
        .await
        .map_err(|e| anyhow::anyhow!("SET LOCAL: {}", describe_error(&e)))?;
    c.batch_execute("DO $$ BEGIN INSERT INTO marker VALUES ('from DO'); END $$")
        .await
        .map_err(|e| anyhow::anyhow!("DO with allow_do = true: {}", describe_error(&e)))?;
    c.batch_execute("COMMIT").await?;
    let su = env.tdb.oracle().await?;
    let n: i64 = su
        .query_one("SELECT count(*) FROM marker WHERE note = 'from DO'", &[])
        .await?
        .get(0);
    ensure!(n == 1, "the DO block's insert is there {n} times");
    Ok(())
}
