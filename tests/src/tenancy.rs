//! Fixtures for the tenant-context tests (`tests/tests/tenancy_*.rs`).
//!
//! - [`TenancyDb`]: a test database with row-level security the way DESIGN.md describes it: an
//!   owner role (NOLOGIN) owns the tables; the app role that Sentinel logs in as (the
//!   [`TestDb`] role, which owns the *database* but no table, is neither superuser nor
//!   BYPASSRLS) has DML grants. `tenants` is global; `items` is a tenant table with `ENABLE` +
//!   `FORCE ROW LEVEL SECURITY` and the fail-closed policy
//!   `tenant_id = nullif(current_setting('app.tenant_id', true), '')`; `marker` is a global table
//!   that probes insert into. Seeded with [`SEEDED_PER_TENANT`] rows per tenant.
//! - The oracle: a superuser connection straight to Postgres (it bypasses RLS and Sentinel), with
//!   helpers that read what each tenant really has.
//! - [`Proto`] and [`Op`]: one small language for "run these statements in this protocol" that
//!   the matrix and the load test share: simple Query, extended (tokio-postgres one-shot
//!   statements with parameters), the unnamed statement (`query_typed`), named prepared
//!   statements reused, and pipelined requests on one client.
//! - [`TenancyEnv`]: a [`TenancyDb`] with a Sentinel in front of it, and raw connections
//!   ([`crate::raw::RawConn`]) through it and straight to Postgres, for what tokio-postgres
//!   cannot do or show: the bare `sentinel.tenant` startup parameter, cleartext (token) passwords,
//!   and the exact replies (command tags, notices, row descriptions, ReadyForQuery status).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, SimpleQueryMessage, Statement};

use crate::clients::{connect_dsn, simple_rows, sqlstate};
use crate::config::{Auth, SentinelConfig};
use crate::names::{conninfo_quote, quote_ident, quote_literal};
use crate::pg::{PgCluster, TestDb};
use crate::raw::RawConn;
use crate::sentinel::SentinelProcess;

/// The setting the policies read (Sentinel's default `[tenancy] setting`).
pub const SETTING: &str = "app.tenant_id";

/// The exact message of a refusal for want of a tenant.
pub const CONTEXT_REQUIRED: &str = "tenant context required";

/// Rows seeded into `items` per tenant.
pub const SEEDED_PER_TENANT: usize = 3;

/// The `auth = "tenant-token"` user [`TenancyEnv`] configures.
pub const TOKEN_USER: &str = "tenant_app";

/// The global tables of the fixture (for `[tenancy] global_tables`).
pub const GLOBAL_TABLES: &[&str] = &["tenants", "marker"];

/// The query every tenant-data read uses: the tenant's rows plus, on each row, the setting as the
/// server saw it inside the same transaction. `$1` is an int (0 reads everything visible).
pub const ITEMS_QUERY: &str = "SELECT id, tenant_id, v, current_setting('app.tenant_id', true) \
                               AS ctx FROM items WHERE id > $1 ORDER BY id";

/// Reads the setting inside the current transaction.
pub const SETTING_QUERY: &str = "SELECT current_setting('app.tenant_id', true) AS ctx";

/// Inserts one row into the tenant the *server* believes is current (so a row that lands in the
/// wrong tenant shows a wrong context, not just an RLS error). `$1` is the row's note.
pub const INSERT_QUERY: &str = "INSERT INTO items (tenant_id, v) VALUES \
                                (current_setting('app.tenant_id'), $1) RETURNING tenant_id";

/// How long one protocol step may take before a test calls it hung.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(15);

// === the database ===

/// A test database with RLS-protected tenant data; see the module docs.
#[derive(Debug, Clone)]
pub struct TenancyDb {
    pub pg: &'static PgCluster,
    /// The database and the app role (`db.role`) Sentinel logs in as.
    pub db: TestDb,
    /// The NOLOGIN role that owns the tables.
    pub owner: String,
    /// The seeded tenants.
    pub tenants: Vec<String>,
}

impl TenancyDb {
    /// Creates the database, roles, tables and policies, and seeds [`SEEDED_PER_TENANT`] rows for
    /// each tenant (`v` = `<tenant>-seed-<i>`).
    pub async fn create(pg: &'static PgCluster, prefix: &str, tenants: &[&str]) -> Result<Self> {
        let db = pg.test_db(prefix).await?;
        let owner = format!("{}_own", db.role);
        let su = pg.connect_superuser(&db.name).await?;
        let app = quote_ident(&db.role);
        let own = quote_ident(&owner);
        let setup = format!(
            "CREATE ROLE {own} NOLOGIN NOSUPERUSER NOBYPASSRLS;
             GRANT USAGE, CREATE ON SCHEMA public TO {own};
             SET ROLE {own};
             CREATE TABLE tenants (id text PRIMARY KEY, name text NOT NULL);
             CREATE TABLE items (
                 id serial PRIMARY KEY,
                 tenant_id text NOT NULL,
                 v text NOT NULL
             );
             CREATE INDEX items_tenant_idx ON items (tenant_id);
             ALTER TABLE items ENABLE ROW LEVEL SECURITY;
             ALTER TABLE items FORCE ROW LEVEL SECURITY;
             CREATE POLICY items_tenant ON items
                 USING (tenant_id = nullif(current_setting('app.tenant_id', true), ''))
                 WITH CHECK (tenant_id = nullif(current_setting('app.tenant_id', true), ''));
             CREATE TABLE marker (note text NOT NULL);
             CREATE FUNCTION tenant_rows() RETURNS bigint LANGUAGE sql STABLE
                 AS 'SELECT count(*) FROM items';
             GRANT SELECT, INSERT, UPDATE, DELETE ON items, tenants, marker TO {app};
             GRANT USAGE, SELECT ON SEQUENCE items_id_seq TO {app};
             GRANT EXECUTE ON FUNCTION tenant_rows() TO {app};
             RESET ROLE;"
        );
        su.batch_execute(&setup)
            .await
            .context("creating the RLS schema")?;
        let mut seed = String::new();
        for t in tenants {
            seed.push_str(&format!(
                "INSERT INTO tenants VALUES ({0}, {0});",
                quote_literal(t)
            ));
            for i in 0..SEEDED_PER_TENANT {
                seed.push_str(&format!(
                    "INSERT INTO items (tenant_id, v) VALUES ({}, {});",
                    quote_literal(t),
                    quote_literal(&format!("{t}-seed-{i}"))
                ));
            }
        }
        su.batch_execute(&seed).await.context("seeding tenants")?;
        let out = Self {
            pg,
            db,
            owner,
            tenants: tenants.iter().map(|t| (*t).to_owned()).collect(),
        };
        out.check_rls_preconditions().await?;
        Ok(out)
    }

    /// The fixture itself must be sound, or every "isolation holds" would be vacuous: the app
    /// role is not superuser / BYPASSRLS / owner, `items` has ENABLE + FORCE, and the app role
    /// sees nothing without the setting and exactly one tenant with it (directly, no Sentinel).
    async fn check_rls_preconditions(&self) -> Result<()> {
        let su = self.oracle().await?;
        let row = su
            .query_one(
                "SELECT r.rolsuper, r.rolbypassrls, c.relrowsecurity, c.relforcerowsecurity,
                        pg_get_userbyid(c.relowner) = r.rolname
                   FROM pg_roles r, pg_class c
                  WHERE r.rolname = $1 AND c.oid = 'public.items'::regclass",
                &[&self.db.role],
            )
            .await?;
        let flags: (bool, bool, bool, bool, bool) =
            (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
        ensure!(
            flags == (false, false, true, true, false),
            "fixture: (super, bypassrls, rls, force, app owns items) = {flags:?}"
        );
        let direct = self.db.connect().await?;
        let n: i64 = direct
            .query_one("SELECT count(*) FROM items", &[])
            .await?
            .get(0);
        ensure!(
            n == 0,
            "fixture: the app role sees {n} rows without a tenant"
        );
        if let Some(t) = self.tenants.first() {
            direct
                .batch_execute(&format!(
                    "BEGIN; SET LOCAL app.tenant_id = {}",
                    quote_literal(t)
                ))
                .await?;
            let n: i64 = direct
                .query_one("SELECT count(*) FROM items", &[])
                .await?
                .get(0);
            direct.batch_execute("ROLLBACK").await?;
            ensure!(
                n == SEEDED_PER_TENANT as i64,
                "fixture: the app role sees {n} rows as {t}"
            );
        }
        Ok(())
    }

    /// A superuser connection straight to the database: sees every tenant's rows.
    pub async fn oracle(&self) -> Result<Client> {
        self.pg.connect_superuser(&self.db.name).await
    }

    /// Runs SQL as the superuser in the database (fixture changes).
    pub async fn superuser_batch(&self, sql: &str) -> Result<()> {
        let su = self.oracle().await?;
        su.batch_execute(sql)
            .await
            .with_context(|| format!("as superuser: {sql}"))
    }

    /// A Sentinel config with tenancy on (every key spelled out by
    /// [`SentinelConfig::tenancy`]), the fixture's global tables, and the app role as a SCRAM
    /// user (its own name and password).
    pub fn config(&self) -> SentinelConfig {
        SentinelConfig::new(self.pg)
            .tenancy()
            .tenancy_global_tables(GLOBAL_TABLES)
            .user_for(&self.db, Auth::Scram(&self.db.password))
    }

    /// Connection string through `sentinel` as the app role, plus `extra` `key=value` pairs.
    pub fn dsn(&self, sentinel: &SentinelProcess, extra: &str) -> String {
        format!(
            "{} {extra}",
            sentinel.dsn(&self.db.role, &self.db.password, &self.db.name)
        )
    }

    /// Connects through Sentinel as the app role with no tenant.
    pub async fn plain(&self, sentinel: &SentinelProcess) -> Result<Client> {
        connect(&self.dsn(sentinel, "")).await
    }

    /// Connects through Sentinel as the app role with `options=-c sentinel.tenant=<tenant>`.
    pub async fn startup(&self, sentinel: &SentinelProcess, tenant: &str) -> Result<Client> {
        connect(&self.dsn(sentinel, &startup_options(tenant))).await
    }

    /// Connects through Sentinel as the tenant-token user `user` with `token` as the password.
    pub async fn token(
        &self,
        sentinel: &SentinelProcess,
        user: &str,
        token: &str,
    ) -> Result<Client> {
        connect(&sentinel.dsn(user, token, &self.db.name)).await
    }

    /// `(id, tenant_id, v)` of a tenant's rows, by id, as the oracle sees them.
    pub async fn oracle_items(&self, tenant: &str) -> Result<Vec<(i32, String, String)>> {
        let su = self.oracle().await?;
        let rows = su
            .query(
                "SELECT id, tenant_id, v FROM items WHERE tenant_id = $1 ORDER BY id",
                &[&tenant],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    /// How many rows a tenant has, as the oracle sees it.
    pub async fn oracle_count(&self, tenant: &str) -> Result<i64> {
        Ok(self.oracle_items(tenant).await?.len() as i64)
    }

    /// Row count per tenant, as the oracle sees it.
    pub async fn oracle_counts(&self) -> Result<BTreeMap<String, i64>> {
        let su = self.oracle().await?;
        let rows = su
            .query(
                "SELECT tenant_id, count(*) FROM items GROUP BY tenant_id",
                &[],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}

// === Sentinel in front of it ===

/// A [`TenancyDb`] with a Sentinel in front of it. Dropping it prints Sentinel's last log lines,
/// which the test harness shows only for a failed test.
pub struct TenancyEnv {
    pub tdb: TenancyDb,
    pub cfg: SentinelConfig,
    pub sentinel: SentinelProcess,
}

impl TenancyEnv {
    /// Starts Sentinel with [`TenancyDb::config`], a pool of one server connection (so that
    /// clients share it) and the tenant-token user [`TOKEN_USER`], then `configure`.
    pub async fn start(
        tdb: TenancyDb,
        configure: impl FnOnce(SentinelConfig) -> SentinelConfig,
    ) -> Result<Self> {
        let cfg = configure(
            tdb.config()
                .pool_size(1)
                .tenant_token_user_for(TOKEN_USER, &tdb.db),
        );
        let sentinel = SentinelProcess::start_with(&cfg).await?;
        Ok(Self { tdb, cfg, sentinel })
    }

    /// Connects through Sentinel as the app role with no tenant.
    pub async fn plain(&self) -> Result<Client> {
        self.tdb.plain(&self.sentinel).await
    }

    /// A raw connection through Sentinel as the app role, with extra startup parameters.
    pub async fn raw(&self, extra: &[(&str, &str)]) -> Result<RawConn> {
        let mut params = vec![
            ("user", self.tdb.db.role.as_str()),
            ("database", self.tdb.db.name.as_str()),
        ];
        params.extend_from_slice(extra);
        RawConn::connect(
            self.sentinel.port(),
            &params,
            &self.tdb.db.password,
            STEP_TIMEOUT,
        )
        .await
    }

    /// A raw connection through Sentinel as [`TOKEN_USER`], with `token` as the (cleartext)
    /// password.
    pub async fn raw_token(&self, token: &str) -> Result<RawConn> {
        let params = [
            ("user", TOKEN_USER),
            ("database", self.tdb.db.name.as_str()),
        ];
        RawConn::connect(self.sentinel.port(), &params, token, STEP_TIMEOUT).await
    }

    /// A raw connection straight to Postgres as the app role (the oracle for reply shapes).
    pub async fn raw_direct(&self) -> Result<RawConn> {
        let params = [
            ("user", self.tdb.db.role.as_str()),
            ("database", self.tdb.db.name.as_str()),
        ];
        RawConn::connect(
            self.tdb.pg.port(),
            &params,
            &self.tdb.db.password,
            STEP_TIMEOUT,
        )
        .await
    }
}

impl Drop for TenancyEnv {
    fn drop(&mut self) {
        self.sentinel.print_log_tail("Sentinel", 40);
    }
}

/// `options='-c sentinel.tenant=<tenant>'` for a DSN.
pub fn startup_options(tenant: &str) -> String {
    format!(
        "options={}",
        conninfo_quote(&format!("-c sentinel.tenant={tenant}"))
    )
}

/// Connects (within [`STEP_TIMEOUT`]), the error saying where.
pub async fn connect(dsn: &str) -> Result<Client> {
    let redacted: String = dsn
        .split(' ')
        .filter(|p| !p.starts_with("password="))
        .collect::<Vec<_>>()
        .join(" ");
    within("connecting", connect_dsn(dsn))
        .await?
        .with_context(|| format!("connecting with {redacted}"))
}

/// Tries to connect; the driver's error is kept (to check SQLSTATEs of refused logins).
pub async fn try_connect(dsn: &str) -> Result<Result<Client, tokio_postgres::Error>> {
    within("connecting", connect_dsn(dsn)).await
}

// === small helpers ===

/// Fails with `what` if `fut` takes longer than [`STEP_TIMEOUT`].
pub async fn within<F: Future>(what: &str, fut: F) -> Result<F::Output> {
    tokio::time::timeout(STEP_TIMEOUT, fut)
        .await
        .map_err(|_| anyhow::anyhow!("{what}: no answer within {STEP_TIMEOUT:?} (hung)"))
}

/// `Ok` if `res` failed with SQLSTATE `code`; the error is returned for further checks.
pub fn expect_code<T>(
    what: &str,
    res: Result<T, tokio_postgres::Error>,
    code: &str,
) -> Result<tokio_postgres::Error> {
    match res {
        Ok(_) => bail!("{what}: expected SQLSTATE {code}, but it succeeded"),
        Err(e) => {
            ensure!(
                sqlstate(&e) == code,
                "{what}: expected SQLSTATE {code}, got {}: {}",
                sqlstate(&e),
                describe_error(&e)
            );
            Ok(e)
        }
    }
}

/// `Ok` if `res` is the "no tenant" refusal: 42501, message exactly [`CONTEXT_REQUIRED`], a hint.
pub fn expect_context_required<T>(what: &str, res: Result<T, tokio_postgres::Error>) -> Result<()> {
    let e = expect_code(what, res, "42501")?;
    let db = e
        .as_db_error()
        .with_context(|| format!("{what}: not a server error: {e}"))?;
    ensure!(
        db.message() == CONTEXT_REQUIRED,
        "{what}: 42501 but the message is {:?}, not {CONTEXT_REQUIRED:?}",
        db.message()
    );
    ensure!(
        db.hint().is_some_and(|h| !h.trim().is_empty()),
        "{what}: the refusal has no HINT naming the sources"
    );
    Ok(())
}

/// Severity, SQLSTATE, message and hint of a driver error, for failure messages.
pub fn describe_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!(
            "{} {} {:?} (hint: {:?})",
            d.severity(),
            d.code().code(),
            d.message(),
            d.hint()
        ),
        None => format!("{e:?}"),
    }
}

/// Whether a setting value means "no tenant" (`''` once set in a session, NULL before).
pub fn is_unset(v: &Option<String>) -> bool {
    v.as_deref().is_none_or(str::is_empty)
}

/// The first column of the first row of a simple query.
pub async fn simple_scalar(c: &Client, sql: &str) -> Result<Option<String>> {
    let msgs = within(sql, c.simple_query(sql))
        .await?
        .with_context(|| sql.to_owned())?;
    Ok(simple_rows(&msgs)
        .into_iter()
        .next()
        .and_then(|r| r.into_iter().next())
        .flatten())
}

/// Asserts that a client has no tenant: inside a transaction the setting is unset, and a read of
/// tenant data is refused with [`CONTEXT_REQUIRED`]. Leaves the client idle.
pub async fn assert_no_context(c: &Client, what: &str) -> Result<()> {
    let msgs = within(what, c.simple_query(&format!("BEGIN; {SETTING_QUERY}")))
        .await?
        .with_context(|| format!("{what}: BEGIN; read the setting"))?;
    let seen = simple_rows(&msgs)
        .into_iter()
        .next()
        .and_then(|r| r.into_iter().next())
        .flatten();
    within(what, c.batch_execute("ROLLBACK"))
        .await?
        .with_context(|| format!("{what}: ROLLBACK"))?;
    ensure!(
        is_unset(&seen),
        "{what}: a client with no tenant runs with app.tenant_id = {seen:?}"
    );
    let res = within(what, c.simple_query("SELECT count(*) FROM items")).await?;
    expect_context_required(&format!("{what}: read with no tenant"), res)
}

/// Awaits all futures, polling them in order (so requests a future sends on its first poll go out
/// in that order, which is what pipelining on one tokio-postgres client needs).
pub async fn join_all<'a, T>(
    mut futs: Vec<Pin<Box<dyn Future<Output = T> + Send + 'a>>>,
) -> Vec<T> {
    let mut out: Vec<Option<T>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in futs.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => out[i] = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

// === statements in a protocol ===

/// How a client sends its statements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// Simple Query messages (`simple_query` / `batch_execute`); parameters inlined.
    Simple,
    /// tokio-postgres `query(&str, params)`: a one-shot named statement (Parse/Describe/Sync,
    /// then Bind/Execute/Sync, then Close).
    Extended,
    /// `query_typed`: the unnamed statement, Parse/Bind/Describe/Execute/Sync in one batch.
    Unnamed,
    /// `prepare` once, then Bind/Execute of the named statement each time.
    Prepared,
    /// Every op of a run sent before any reply is read (unnamed-statement batches, and simple
    /// Queries for control statements, all in flight at once on one client).
    Pipelined,
}

impl Proto {
    pub const ALL: [Proto; 5] = [
        Proto::Simple,
        Proto::Extended,
        Proto::Unnamed,
        Proto::Prepared,
        Proto::Pipelined,
    ];
}

/// How a sqlcommenter tag is written into a statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagStyle {
    /// `/*tenant='t'*/ SELECT …`
    Leading,
    /// `SELECT … /*action='list',tenant='t'*/` (sqlcommenter: appended, keys sorted).
    Trailing,
    /// Trailing, with every value URL-encoded (`%2D` for `-`, `%20` for a space, …).
    TrailingEncoded,
}

/// A tenant tag on a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag {
    pub tenant: String,
    pub style: TagStyle,
}

impl Tag {
    pub fn new(tenant: &str, style: TagStyle) -> Self {
        Self {
            tenant: tenant.to_owned(),
            style,
        }
    }

    /// `sql` with this tag.
    pub fn apply(&self, sql: &str) -> String {
        match self.style {
            TagStyle::Leading => format!("/*tenant='{}'*/ {sql}", self.tenant),
            TagStyle::Trailing => format!("{sql} /*action='list',tenant='{}'*/", self.tenant),
            TagStyle::TrailingEncoded => format!(
                "{sql} /*action='list%20items',tenant='{}'*/",
                url_encode_all(&self.tenant)
            ),
        }
    }
}

/// `%XX` for every byte that is not an ASCII letter or digit.
pub fn url_encode_all(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Optionally tagged SQL.
fn tagged(tag: &Option<Tag>, sql: &str) -> String {
    match tag {
        Some(t) => t.apply(sql),
        None => sql.to_owned(),
    }
}

/// How the `set` source is spoken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetForm {
    /// `SET app.tenant_id = 't'`
    Set,
    /// `SET LOCAL app.tenant_id = 't'`
    SetLocal,
    /// `SET sentinel.tenant = 't'`
    SetSentinel,
    /// `SET LOCAL sentinel.tenant = 't'`
    SetLocalSentinel,
    /// `SELECT set_config('app.tenant_id', 't', is_local)`: the value as a literal in the
    /// simple protocol, as the bind parameter `$1` in the others (except [`Proto::Pipelined`],
    /// where it stays a literal).
    SetConfig { local: bool },
}

impl SetForm {
    fn sql(self, tenant: &str, proto: Proto) -> String {
        let lit = quote_literal(tenant);
        match self {
            SetForm::Set => format!("SET app.tenant_id = {lit}"),
            SetForm::SetLocal => format!("SET LOCAL app.tenant_id = {lit}"),
            SetForm::SetSentinel => format!("SET sentinel.tenant = {lit}"),
            SetForm::SetLocalSentinel => format!("SET LOCAL sentinel.tenant = {lit}"),
            SetForm::SetConfig { local } => {
                let value = if uses_params(proto) {
                    "$1".to_owned()
                } else {
                    lit
                };
                format!("SELECT set_config('app.tenant_id', {value}, {local})")
            }
        }
    }
}

fn uses_params(proto: Proto) -> bool {
    matches!(proto, Proto::Extended | Proto::Unnamed | Proto::Prepared)
}

/// One statement of a run.
#[derive(Debug, Clone)]
pub enum Op {
    /// A statement whose reply is not looked at (BEGIN, SAVEPOINT, COMMIT, …).
    Ctl(String),
    /// The `set` source.
    SetCtx { tenant: String, form: SetForm },
    /// [`ITEMS_QUERY`], optionally tagged.
    Select { tag: Option<Tag> },
    /// [`SETTING_QUERY`], optionally tagged.
    Setting { tag: Option<Tag> },
    /// [`INSERT_QUERY`] with this note, optionally tagged.
    Insert { tag: Option<Tag>, note: String },
}

impl Op {
    pub fn ctl(sql: &str) -> Op {
        Op::Ctl(sql.to_owned())
    }

    /// A short description for messages.
    pub fn describe(&self) -> String {
        match self {
            Op::Ctl(sql) => sql.clone(),
            Op::SetCtx { tenant, form } => format!("set source {form:?} to {tenant}"),
            Op::Select { tag } => format!("select items{}", tag_note(tag)),
            Op::Setting { tag } => format!("read the setting{}", tag_note(tag)),
            Op::Insert { tag, note } => format!("insert {note:?}{}", tag_note(tag)),
        }
    }
}

fn tag_note(tag: &Option<Tag>) -> String {
    match tag {
        Some(t) => format!(" (tagged {}, {:?})", t.tenant, t.style),
        None => String::new(),
    }
}

/// A row of [`ITEMS_QUERY`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemRow {
    pub id: i32,
    pub tenant_id: String,
    pub v: String,
    /// The setting on the server while the row was read.
    pub ctx: Option<String>,
}

/// What an op returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Out {
    Done,
    Items(Vec<ItemRow>),
    Setting(Option<String>),
    /// The reply to a `set_config` form: column names and the rows' first values.
    SetConfigReply {
        columns: Vec<String>,
        values: Vec<Option<String>>,
    },
    /// The `tenant_id` the insert returned.
    Inserted(String),
}

/// The result of one op: its output or the server's error.
pub type OpResult = Result<Out, tokio_postgres::Error>;

/// Statements prepared by a [`Proto::Prepared`] client, by text.
#[derive(Default)]
pub struct StatementCache {
    map: HashMap<String, Statement>,
}

/// Runs `ops` on `client` in `proto`: sequentially (stopping at the first error, whose index is
/// returned with it), or all at once for [`Proto::Pipelined`] (every result returned).
pub async fn run_ops(
    client: &Client,
    proto: Proto,
    ops: &[Op],
    cache: &mut StatementCache,
) -> Result<Vec<OpResult>> {
    if proto == Proto::Pipelined {
        let futs: Vec<Pin<Box<dyn Future<Output = OpResult> + Send + '_>>> =
            ops.iter().map(|op| pipelined_op(client, op)).collect();
        return within("a pipeline", join_all(futs)).await;
    }
    let mut out = Vec::with_capacity(ops.len());
    for op in ops {
        let res = within(&op.describe(), run_op(client, proto, op, cache)).await?;
        let failed = res.is_err();
        out.push(res);
        if failed {
            break;
        }
    }
    Ok(out)
}

fn item_rows_typed(rows: &[tokio_postgres::Row]) -> Vec<ItemRow> {
    rows.iter()
        .map(|r| ItemRow {
            id: r.get(0),
            tenant_id: r.get(1),
            v: r.get(2),
            ctx: r.get(3),
        })
        .collect()
}

fn item_rows_simple(msgs: &[SimpleQueryMessage]) -> Vec<ItemRow> {
    simple_rows(msgs)
        .into_iter()
        .map(|r| {
            let col = |i: usize| r.get(i).cloned().flatten();
            ItemRow {
                id: col(0).and_then(|s| s.parse().ok()).unwrap_or(-1),
                tenant_id: col(1).unwrap_or_default(),
                v: col(2).unwrap_or_default(),
                ctx: col(3),
            }
        })
        .collect()
}

fn simple_columns(msgs: &[SimpleQueryMessage]) -> Vec<String> {
    msgs.iter()
        .find_map(|m| match m {
            SimpleQueryMessage::RowDescription(cols) => {
                Some(cols.iter().map(|c| c.name().to_owned()).collect())
            }
            SimpleQueryMessage::Row(row) => {
                Some(row.columns().iter().map(|c| c.name().to_owned()).collect())
            }
            _ => None,
        })
        .unwrap_or_default()
}

fn first_values_typed(rows: &[tokio_postgres::Row]) -> Vec<Option<String>> {
    rows.iter().map(|r| r.get::<_, Option<String>>(0)).collect()
}

fn set_config_reply_typed(rows: &[tokio_postgres::Row]) -> Out {
    Out::SetConfigReply {
        columns: rows
            .first()
            .map(|r| r.columns().iter().map(|c| c.name().to_owned()).collect())
            .unwrap_or_default(),
        values: first_values_typed(rows),
    }
}

/// A statement in `proto` with `params` (inlined for the simple protocol by the caller).
async fn typed(
    client: &Client,
    proto: Proto,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
    types: &[Type],
    cache: &mut StatementCache,
) -> Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
    match proto {
        // The simple protocol inlines its parameters and never gets here; were it to, the
        // extended protocol is the nearest thing.
        Proto::Extended | Proto::Simple => client.query(sql, params).await,
        Proto::Unnamed | Proto::Pipelined => {
            let with_types: Vec<(&(dyn ToSql + Sync), Type)> = params
                .iter()
                .zip(types)
                .map(|(p, t)| (*p, t.clone()))
                .collect();
            client.query_typed(sql, &with_types).await
        }
        Proto::Prepared => {
            let st = match cache.map.get(sql) {
                Some(st) => st.clone(),
                None => {
                    let st = client.prepare_typed(sql, types).await?;
                    cache.map.insert(sql.to_owned(), st.clone());
                    st
                }
            };
            client.query(&st, params).await
        }
    }
}

async fn run_op(client: &Client, proto: Proto, op: &Op, cache: &mut StatementCache) -> OpResult {
    let zero: i32 = 0;
    match (op, proto) {
        (Op::Ctl(sql), Proto::Simple) => client.batch_execute(sql).await.map(|()| Out::Done),
        (Op::Ctl(sql), _) => typed(client, proto, sql, &[], &[], cache)
            .await
            .map(|_| Out::Done),
        (Op::SetCtx { tenant, form }, Proto::Simple) => {
            let msgs = client.simple_query(&form.sql(tenant, proto)).await?;
            Ok(match form {
                SetForm::SetConfig { .. } => Out::SetConfigReply {
                    columns: simple_columns(&msgs),
                    values: simple_rows(&msgs)
                        .into_iter()
                        .map(|r| r.into_iter().next().flatten())
                        .collect(),
                },
                _ => Out::Done,
            })
        }
        (Op::SetCtx { tenant, form }, _) => {
            let sql = form.sql(tenant, proto);
            let rows = if sql.contains("$1") {
                typed(client, proto, &sql, &[tenant], &[Type::TEXT], cache).await?
            } else {
                typed(client, proto, &sql, &[], &[], cache).await?
            };
            Ok(match form {
                SetForm::SetConfig { .. } => set_config_reply_typed(&rows),
                _ => Out::Done,
            })
        }
        (Op::Select { tag }, Proto::Simple) => {
            let sql = tagged(tag, &ITEMS_QUERY.replace("$1", "0"));
            let msgs = client.simple_query(&sql).await?;
            Ok(Out::Items(item_rows_simple(&msgs)))
        }
        (Op::Select { tag }, _) => {
            let sql = tagged(tag, ITEMS_QUERY);
            let rows = typed(client, proto, &sql, &[&zero], &[Type::INT4], cache).await?;
            Ok(Out::Items(item_rows_typed(&rows)))
        }
        (Op::Setting { tag }, Proto::Simple) => {
            let msgs = client.simple_query(&tagged(tag, SETTING_QUERY)).await?;
            Ok(Out::Setting(
                simple_rows(&msgs)
                    .into_iter()
                    .next()
                    .and_then(|r| r.into_iter().next())
                    .flatten(),
            ))
        }
        (Op::Setting { tag }, _) => {
            let rows = typed(client, proto, &tagged(tag, SETTING_QUERY), &[], &[], cache).await?;
            Ok(Out::Setting(
                rows.first().and_then(|r| r.get::<_, Option<String>>(0)),
            ))
        }
        (Op::Insert { tag, note }, Proto::Simple) => {
            let sql = tagged(tag, &INSERT_QUERY.replace("$1", &quote_literal(note)));
            let msgs = client.simple_query(&sql).await?;
            Ok(Out::Inserted(
                simple_rows(&msgs)
                    .into_iter()
                    .next()
                    .and_then(|r| r.into_iter().next())
                    .flatten()
                    .unwrap_or_default(),
            ))
        }
        (Op::Insert { tag, note }, _) => {
            let sql = tagged(tag, INSERT_QUERY);
            let rows = typed(client, proto, &sql, &[note], &[Type::TEXT], cache).await?;
            Ok(Out::Inserted(
                rows.first()
                    .map(|r| r.get::<_, String>(0))
                    .unwrap_or_default(),
            ))
        }
    }
}

/// One op as a future for a pipeline: control statements as simple Queries, everything else as
/// an unnamed-statement batch (so each is one write, sent on the first poll).
fn pipelined_op<'a>(
    client: &'a Client,
    op: &'a Op,
) -> Pin<Box<dyn Future<Output = OpResult> + Send + 'a>> {
    Box::pin(async move {
        let zero: i32 = 0;
        match op {
            Op::Ctl(sql) => client.batch_execute(sql).await.map(|()| Out::Done),
            Op::SetCtx { tenant, form } => {
                let sql = form.sql(tenant, Proto::Pipelined);
                match form {
                    SetForm::SetConfig { .. } => {
                        let rows = client.query_typed(&sql, &[]).await?;
                        Ok(set_config_reply_typed(&rows))
                    }
                    _ => client.batch_execute(&sql).await.map(|()| Out::Done),
                }
            }
            Op::Select { tag } => {
                let rows = client
                    .query_typed(&tagged(tag, ITEMS_QUERY), &[(&zero, Type::INT4)])
                    .await?;
                Ok(Out::Items(item_rows_typed(&rows)))
            }
            Op::Setting { tag } => {
                let rows = client.query_typed(&tagged(tag, SETTING_QUERY), &[]).await?;
                Ok(Out::Setting(
                    rows.first().and_then(|r| r.get::<_, Option<String>>(0)),
                ))
            }
            Op::Insert { tag, note } => {
                let rows = client
                    .query_typed(&tagged(tag, INSERT_QUERY), &[(note, Type::TEXT)])
                    .await?;
                Ok(Out::Inserted(
                    rows.first()
                        .map(|r| r.get::<_, String>(0))
                        .unwrap_or_default(),
                ))
            }
        }
    })
}
