//! Report-only mode (`[tenancy] enforce = false`), black box.
//!
//! Every statement Sentinel would refuse is instead logged (one WARN line `statement would be
//! refused (report-only: tenancy.enforce = false)` with `reason=`, `sqlstate=` and
//! `fingerprint=`), counted, and forwarded to Postgres as sent; Postgres then runs it or fails
//! it with an error of its own.
//!
//! A table of refusal kinds (no tenant in each protocol, each forbidden statement, two tenants in
//! one transaction, a connection bound to another tenant, tags that are not valid, unparsable
//! SQL, the function call message) runs through a report-only Sentinel. For each case:
//!
//! - Sentinel did not answer with a refusal of its own: the client got success or an error that
//!   came from Postgres (it carries Postgres's source location, `routine`, which Sentinel's own
//!   errors never do, and none of Sentinel's refusal wording), and it is the outcome the table
//!   expects of Postgres (ran, or failed with that SQLSTATE);
//! - the statement reached Postgres: each carries a unique probe comment, and the app role runs
//!   with `log_statement = 'all'`, so the probe shows in the server log;
//! - Sentinel logged exactly one `would be refused` line for it, with the expected reason label,
//!   SQLSTATE and a 16-digit hex fingerprint; the lines per label over the whole run match the
//!   table too;
//! - the one server connection is clean afterwards (no tenant, no other role).
//!
//! After the table, the admin port's `GET /metrics` agrees: `sentinel_tenancy_would_refuse_total`
//! per `reason` is the number of cases with that label (each sends its statement once), the same
//! as the report lines per reason in the log, and sums to the number of cases;
//! `sentinel_tenancy_refusals_total` is absent or zero for every reason.
//!
//! Nothing here runs what could reach beyond the test's own database: the statements Postgres
//! would run with more privileges (`ALTER SYSTEM`, `COPY … PROGRAM`, `CREATE ROLE`, …) are
//! left without them, so Postgres refuses them itself; what Postgres runs, runs on a table the
//! app role owns and inside a transaction that is rolled back.
//!
//! A control: an enforcing Sentinel on the same database refuses the first case (42501,
//! `tenant context required`) and logs and counts it as refused
//! (`sentinel_tenancy_refusals_total{reason="no_context"} 1`), not as reported.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use sentinel_tests::clients::{simple_rows, sqlstate};
use sentinel_tests::names::{quote_ident, random_secret};
use sentinel_tests::raw::{Reply, Wire};
use sentinel_tests::shared_cluster;
use sentinel_tests::tenancy::{
    CONTEXT_REQUIRED, TOKEN_USER, TenancyDb, TenancyEnv, connect, describe_error,
    expect_context_required, is_unset, within,
};
use tokio_postgres::Client;
use tokio_postgres::types::{ToSql, Type};

const TENANTS: &[&str] = &["acme", "globex"];
const BOUND: &str = "acme";

/// The text of the report line.
const REPORTED: &str = "statement would be refused (report-only: tenancy.enforce = false)";
/// The text of the log line of an enforced refusal.
const REFUSED: &str = "statement refused";

/// Wording of Sentinel's own refusals; none may reach a client in report-only mode.
const SENTINEL_WORDING: &[&str] = &[
    CONTEXT_REQUIRED,
    "Sentinel",
    "two different tenants",
    "bound to a tenant",
    "cannot act for another",
    "invalid tenant id",
    "send it separately",
];

// === fixture ===

/// The RLS fixture, plus a tenant table the app role owns (so RLS and policy DDL on it run in
/// Postgres) and `log_statement = 'all'` for the app role (the probe oracle).
async fn create_db(prefix: &str) -> Result<TenancyDb> {
    let pg = shared_cluster().await?;
    let tdb = TenancyDb::create(pg, prefix, TENANTS).await?;
    let app = quote_ident(&tdb.db.role);
    tdb.superuser_batch(&format!(
        "CREATE TABLE app_notes (tenant_id text NOT NULL, body text);
         ALTER TABLE app_notes ENABLE ROW LEVEL SECURITY;
         ALTER TABLE app_notes FORCE ROW LEVEL SECURITY;
         CREATE POLICY app_notes_tenant ON app_notes
             USING (tenant_id = nullif(current_setting('app.tenant_id', true), ''));
         ALTER TABLE app_notes OWNER TO {app};
         ALTER ROLE {app} SET log_statement = 'all';"
    ))
    .await?;
    Ok(tdb)
}

// === cases ===

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Conn {
    /// The app role, SCRAM, no tenant.
    Plain,
    /// The tenant-token user, bound to [`BOUND`].
    Token,
}

#[derive(Debug, Clone)]
enum Attempt {
    /// A simple Query.
    Simple(String),
    /// tokio-postgres `query(sql, params)`: a named statement prepared, then bound and executed.
    Extended(String, Vec<String>),
    /// `query_typed`: the unnamed statement, text parameters.
    Unnamed(String, Vec<String>),
    /// The fast-path FunctionCall message, calling `version()` (oid 89), on a raw connection.
    FunctionCall,
}

/// What Postgres does with the statement once Sentinel has let it through.
#[derive(Debug, Clone, Copy)]
enum Pg {
    /// Runs it.
    Runs,
    /// Fails it with this SQLSTATE.
    Fails(&'static str),
    /// Fails it; the SQLSTATE depends on the installation (`LOAD` of a library that may not be
    /// installed).
    FailsAnyhow,
}

#[derive(Debug, Clone)]
struct Case {
    name: String,
    conn: Conn,
    /// Simple queries run first; each must succeed and report nothing.
    setup: Vec<String>,
    attempt: Attempt,
    /// The `reason=` label and `sqlstate=` of the report line.
    label: &'static str,
    code: &'static str,
    pg: Pg,
}

fn case(name: &str, attempt: Attempt, label: &'static str, code: &'static str, pg: Pg) -> Case {
    Case {
        name: name.to_owned(),
        conn: Conn::Plain,
        setup: Vec::new(),
        attempt,
        label,
        code,
        pg,
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

    fn on(mut self, conn: Conn) -> Case {
        self.conn = conn;
        self
    }
}

/// The cases: `app` is the app role, `owner` the (NOLOGIN) owner of the fixture's tables.
fn cases(app: &str, owner: &str) -> Vec<Case> {
    use Pg::{Fails, FailsAnyhow, Runs};
    let tx = ["BEGIN"];
    let acme_tx = ["BEGIN", "/*tenant='acme'*/ SELECT count(*) FROM items"];
    let mut v = vec![
        // --- no tenant context ---
        case(
            "a read of a tenant table, simple protocol",
            simple("SELECT count(*) FROM items"),
            "no_context",
            "42501",
            Runs,
        ),
        case(
            "a read of a tenant table, extended protocol (named statement)",
            Attempt::Extended(
                "SELECT count(*) FROM items WHERE v <> $1".to_owned(),
                vec!["x".to_owned()],
            ),
            "no_context",
            "42501",
            Runs,
        ),
        case(
            "a read of a tenant table, extended protocol (unnamed statement)",
            Attempt::Unnamed(
                "SELECT count(*) FROM items WHERE v <> $1".to_owned(),
                vec!["x".to_owned()],
            ),
            "no_context",
            "42501",
            Runs,
        ),
        case(
            "a user-defined function",
            simple("SELECT tenant_rows()"),
            "no_context",
            "42501",
            Runs,
        ),
        // RLS's WITH CHECK fails it: Postgres's own 42501, not Sentinel's.
        case(
            "an insert into a tenant table",
            simple("INSERT INTO items (tenant_id, v) VALUES ('acme', 'report-only')"),
            "no_context",
            "42501",
            Fails("42501"),
        ),
        // --- forbidden statements Postgres runs ---
        case(
            "SET LOCAL ROLE (to oneself)",
            simple(&format!("SET LOCAL ROLE {}", quote_ident(app))),
            "set_role",
            "42501",
            Runs,
        )
        .setup(&tx),
        case(
            "SET LOCAL SESSION AUTHORIZATION (to oneself)",
            simple(&format!(
                "SET LOCAL SESSION AUTHORIZATION {}",
                quote_ident(app)
            )),
            "session_authorization",
            "42501",
            Runs,
        )
        .setup(&tx),
        case(
            "set_config of the tenant as a second select target",
            simple("SELECT 1, set_config('app.tenant_id', 'globex', true)"),
            "tenant_setting_write",
            "42501",
            Runs,
        ),
        case(
            "set_config with a computed setting name",
            simple("SELECT set_config('app.' || 'tenant_id', 'globex', true)"),
            "dynamic_setting_name",
            "42501",
            Runs,
        ),
        case(
            "SET LOCAL of the tenant before a read in one query",
            simple("SET LOCAL app.tenant_id = 'globex'; SELECT count(*) FROM items"),
            "tenant_setting_in_multi_statement",
            "42501",
            Runs,
        ),
        case(
            "CREATE FUNCTION",
            simple("CREATE FUNCTION report_only_fn() RETURNS int LANGUAGE sql AS 'SELECT 1'"),
            "function_definition",
            "42501",
            Runs,
        )
        .setup(&tx),
        case(
            "ALTER TABLE … DISABLE ROW LEVEL SECURITY",
            simple("ALTER TABLE app_notes DISABLE ROW LEVEL SECURITY"),
            "rls_disable",
            "42501",
            Runs,
        )
        .setup(&tx),
        case(
            "CREATE POLICY",
            simple("CREATE POLICY report_only_pol ON app_notes USING (true)"),
            "policy_ddl",
            "42501",
            Runs,
        )
        .setup(&tx),
        case(
            "DO block",
            simple("DO $$ BEGIN PERFORM 1; END $$"),
            "do_block",
            "42501",
            Runs,
        ),
        case(
            "TRUNCATE of a table the app role owns",
            simple("TRUNCATE app_notes"),
            "truncate",
            "42501",
            Runs,
        )
        .setup(&tx),
        case(
            "query_to_xml",
            simple("SELECT query_to_xml('SELECT 1', true, false, '')"),
            "dynamic_sql",
            "42501",
            Runs,
        ),
        // --- forbidden statements Postgres refuses itself (the app role lacks the privilege) ---
        case(
            "SET ROLE to a role the app role is not a member of, extended protocol",
            Attempt::Extended(format!("SET ROLE {}", quote_ident(owner)), vec![]),
            "set_role",
            "42501",
            Fails("42501"),
        ),
        case(
            "CREATE ROLE",
            simple(&format!(
                "CREATE ROLE {} LOGIN",
                quote_ident(&format!("{app}_x"))
            )),
            "role_ddl",
            "42501",
            Fails("42501"),
        ),
        case(
            "ALTER FUNCTION … SET app.tenant_id (not the owner)",
            simple("ALTER FUNCTION tenant_rows() SET app.tenant_id = 'globex'"),
            "function_sets_tenant",
            "42501",
            Fails("42501"),
        ),
        case(
            "ALTER SYSTEM SET app.tenant_id",
            simple("ALTER SYSTEM SET app.tenant_id = 'globex'"),
            "alter_system",
            "42501",
            Fails("42501"),
        ),
        case(
            "LOAD a library",
            simple("LOAD 'auto_explain'"),
            "load",
            "42501",
            FailsAnyhow,
        ),
        case(
            "COPY … TO PROGRAM",
            simple("COPY (SELECT 1) TO PROGRAM 'true'"),
            "copy_program",
            "42501",
            Fails("42501"),
        ),
        case(
            "DEALLOCATE of a name reserved for Sentinel",
            simple("DEALLOCATE sentinel_report_only_probe"),
            "reserved_name",
            "42501",
            Fails("26000"),
        ),
        // --- tenants that disagree ---
        case(
            "two tenants in one transaction (comment tags), simple protocol",
            simple("/*tenant='globex'*/ SELECT count(*) FROM items"),
            "two_tenants",
            "42501",
            Runs,
        )
        .setup(&acme_tx),
        case(
            "two tenants in one transaction (comment tags), unnamed statement",
            Attempt::Unnamed(
                "/*tenant='globex'*/ SELECT count(*) FROM items".to_owned(),
                vec![],
            ),
            "two_tenants",
            "42501",
            Runs,
        )
        .setup(&acme_tx),
        case(
            "two tenants in one transaction (a comment tag, then SET LOCAL)",
            simple("SET LOCAL app.tenant_id = 'globex'"),
            "two_tenants",
            "42501",
            Runs,
        )
        .setup(&acme_tx),
        case(
            "a comment tag for another tenant on a token-bound connection",
            simple("/*tenant='globex'*/ SELECT count(*) FROM items"),
            "bound_switch",
            "42501",
            Runs,
        )
        .on(Conn::Token),
        case(
            "SET of another tenant on a token-bound connection",
            simple("SET app.tenant_id = 'globex'"),
            "bound_switch",
            "42501",
            Runs,
        )
        .on(Conn::Token),
        case(
            "two tags for different tenants in one statement",
            simple("/*tenant='acme'*/ SELECT count(*) FROM items /*action='x',tenant='globex'*/"),
            "conflicting_tenants",
            "42501",
            Runs,
        ),
        case(
            "a statement needing the tenant after the end of its transaction, in one query",
            simple(
                "/*tenant='acme'*/ SELECT count(*) FROM items; COMMIT; SELECT count(*) FROM items",
            ),
            "tenant_after_transaction_end",
            "42501",
            Runs,
        )
        .setup(&tx),
        // --- tags that are not valid ---
        case(
            "an invalid tenant id in a comment tag",
            simple("/*tenant='..%2Fx'*/ SELECT count(*) FROM items"),
            "invalid_tenant_id",
            "28000",
            Runs,
        ),
        // --- what does not parse ---
        case(
            "unparsable SQL",
            simple("SELEC count(*) FROM items"),
            "unparsable",
            "42601",
            Fails("42601"),
        ),
        case(
            "an unterminated string literal",
            simple("SELECT 'abc FROM items"),
            "unparsable",
            "42601",
            Fails("42601"),
        ),
        // --- the function call protocol message ---
        case(
            "the FunctionCall message",
            Attempt::FunctionCall,
            "function_call",
            "42501",
            Runs,
        ),
    ];
    for (i, c) in v.iter_mut().enumerate() {
        c.name = format!("#{i:02} {}", c.name);
    }
    v
}

// === the report lines ===

/// One `would be refused` (or `refused`) log line, its fields.
#[derive(Debug, Clone)]
struct LogLine {
    reason: String,
    sqlstate: String,
    fingerprint: String,
    text: String,
}

/// The value of `name=` in a tracing text line (quotes removed), after the message.
fn field(line: &str, name: &str) -> Option<String> {
    let needle = format!(" {name}=");
    let at = line.rfind(&needle)? + needle.len();
    let rest = &line[at..];
    let value = match rest.strip_prefix('"') {
        Some(quoted) => quoted.split('"').next().unwrap_or_default(),
        None => rest.split_whitespace().next().unwrap_or_default(),
    };
    Some(value.to_owned())
}

/// The lines of `logs` with `message`, parsed.
fn lines_with(logs: &str, message: &str) -> Vec<LogLine> {
    logs.lines()
        .filter(|l| l.contains(message))
        .map(|l| LogLine {
            reason: field(l, "reason").unwrap_or_default(),
            sqlstate: field(l, "sqlstate").unwrap_or_default(),
            fingerprint: field(l, "fingerprint").unwrap_or_default(),
            text: l.to_owned(),
        })
        .collect()
}

/// The reasons whose report cannot name a statement by its fingerprint: text that does not
/// parse has none, and the function call message carries no SQL.
const UNFINGERPRINTED: &[&str] = &["unparsable", "function_call"];

/// The log text written after the first `from` bytes.
fn since(logs: &str, from: usize) -> String {
    logs.get(from..).unwrap_or_default().to_owned()
}

fn is_fingerprint(s: &str) -> bool {
    s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Report lines per `reason=` over all of `logs`.
fn per_reason(logs: &str, message: &str) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for line in lines_with(logs, message) {
        *counts.entry(line.reason).or_default() += 1;
    }
    counts
}

// === the admin port's metrics ===

/// The counter of statements report-only mode let through, by `reason`.
const WOULD_REFUSE_TOTAL: &str = "sentinel_tenancy_would_refuse_total";
/// The counter of enforced refusals, by `reason`.
const REFUSALS_TOTAL: &str = "sentinel_tenancy_refusals_total";

/// One sample line of the Prometheus text exposition: `name{label="value",…} value [timestamp]`.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// The sample lines of a text exposition (format 0.0.4); comments (`# HELP`, `# TYPE`) and
/// blank lines are skipped. Label values are unescaped (`\\`, `\"`, `\n`).
fn parse_exposition(text: &str) -> Result<Vec<Sample>> {
    let mut samples = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let sample =
            parse_sample(line).with_context(|| format!("exposition line {}: {line:?}", n + 1))?;
        samples.push(sample);
    }
    Ok(samples)
}

fn parse_sample(line: &str) -> Result<Sample> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .context("no value")?;
    let name = &line[..name_end];
    ensure!(
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
        "bad metric name {name:?}"
    );
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        let mut chars = after_brace.char_indices();
        loop {
            // A label name, or the closing brace (of `{}`, or after a trailing comma).
            let mut key = String::new();
            let closed = loop {
                let (i, c) = chars.next().context("unterminated label set")?;
                match c {
                    '}' if key.is_empty() => break Some(i),
                    '=' if !key.is_empty() => break None,
                    c if c.is_ascii_alphanumeric() || c == '_' => key.push(c),
                    c => bail!("unexpected {c:?} in a label name"),
                }
            };
            if let Some(i) = closed {
                rest = &after_brace[i + 1..];
                break;
            }
            ensure!(
                matches!(chars.next(), Some((_, '"'))),
                "label {key:?}: value not quoted"
            );
            let mut value = String::new();
            loop {
                match chars.next().context("unterminated label value")?.1 {
                    '"' => break,
                    '\\' => match chars.next().context("dangling escape")?.1 {
                        'n' => value.push('\n'),
                        c @ ('\\' | '"') => value.push(c),
                        c => bail!("unknown escape \\{c}"),
                    },
                    c => value.push(c),
                }
            }
            ensure!(
                labels.insert(key.clone(), value).is_none(),
                "label {key:?} twice"
            );
            // A comma before the next label, or the closing brace.
            match chars.next().context("unterminated label set")? {
                (_, ',') => {}
                (i, '}') => {
                    rest = &after_brace[i + 1..];
                    break;
                }
                (_, c) => bail!("unexpected {c:?} after a label value"),
            }
        }
    }
    let mut fields = rest.split_whitespace();
    let value = fields.next().context("no value")?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse::<f64>().with_context(|| format!("value {v:?}"))?,
    };
    if let Some(ts) = fields.next() {
        ts.parse::<i64>()
            .with_context(|| format!("timestamp {ts:?}"))?;
    }
    ensure!(fields.next().is_none(), "trailing text");
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// The samples of the counter `name`, each labelled with `label` only, as `label value → count`;
/// zero counts are left out (a counter that is absent and one that is zero say the same).
fn counter_by(samples: &[Sample], name: &str, label: &str) -> Result<BTreeMap<String, u64>> {
    let mut counts = BTreeMap::new();
    for s in samples.iter().filter(|s| s.name == name) {
        let key = match (s.labels.get(label), s.labels.len()) {
            (Some(v), 1) => v.clone(),
            _ => bail!("{name}: labels {:?}, expected only {label:?}", s.labels),
        };
        ensure!(
            s.value >= 0.0 && s.value.fract() == 0.0 && s.value < 2f64.powi(53),
            "{name}{{{label}={key:?}}}: {} is not a count",
            s.value
        );
        ensure!(
            counts.insert(key.clone(), s.value as u64).is_none(),
            "{name}{{{label}={key:?}}} twice"
        );
    }
    counts.retain(|_, n| *n > 0);
    Ok(counts)
}

/// `GET /metrics` on the Sentinel's admin port, parsed. Retries while the port does not accept
/// connections yet (the harness waits for the Postgres port only).
async fn scrape(env: &TenancyEnv) -> Result<Vec<Sample>> {
    let url = format!("{}/metrics", env.cfg.admin_url());
    let http = sentinel_tests::llm::http_client();
    let deadline = Instant::now() + Duration::from_secs(10);
    let resp = loop {
        match within("GET /metrics", http.get(&url).send()).await? {
            Ok(resp) => break resp,
            Err(e) if e.is_connect() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e).with_context(|| format!("GET {url}")),
        }
    };
    let status = resp.status();
    let body = within("the /metrics body", resp.text()).await??;
    ensure!(status == 200, "GET {url}: {status}: {body}");
    let samples = parse_exposition(&body).with_context(|| format!("GET {url}:\n{body}"))?;
    // A guard against reading "absent" out of an answer that is not Sentinel's metrics at all.
    ensure!(
        samples.iter().any(|s| s.name == "sentinel_build_info"),
        "GET {url}: no sentinel_build_info sample:\n{body}"
    );
    Ok(samples)
}

/// The parser on the shapes the admin port writes (and the escapes the format allows).
#[test]
fn the_exposition_parser_reads_samples() -> Result<()> {
    let text = "# HELP sentinel_x_total Things.\n\
                # TYPE sentinel_x counter\n\
                sentinel_x_total{reason=\"no_context\"} 3\n\
                sentinel_x_total{reason=\"a\\\"b\\\\c\\nd\",} 1 1700000000000\n\
                sentinel_up 1\n\
                sentinel_h_bucket{le=\"+Inf\"} 2\n\
                sentinel_g -0.5\n\
                # EOF\n";
    let samples = parse_exposition(text)?;
    ensure!(samples.len() == 5, "{samples:?}");
    let counts = counter_by(&samples, "sentinel_x_total", "reason")?;
    let want: BTreeMap<String, u64> = [("no_context".to_owned(), 3), ("a\"b\\c\nd".to_owned(), 1)]
        .into_iter()
        .collect();
    ensure!(counts == want, "{counts:?}");
    ensure!(samples[2].labels.is_empty() && samples[2].value == 1.0);
    ensure!(samples[3].labels["le"] == "+Inf" && samples[3].value == 2.0);
    ensure!(counter_by(&samples, "sentinel_absent_total", "reason")?.is_empty());
    // Not counts, or not labelled as asked: errors, not a silent zero.
    ensure!(counter_by(&samples, "sentinel_g", "reason").is_err());
    ensure!(counter_by(&samples, "sentinel_h_bucket", "reason").is_err());
    for bad in [
        "sentinel_x_total{reason=\"x} 1",
        "sentinel_x_total{reason=x} 1",
        "sentinel_x_total{a=\"1\"b=\"2\"} 1",
        "sentinel_x_total{=\"1\"} 1",
        "sentinel_x_total{reason=\"x\"}",
        "sentinel_x_total 1 2 3",
        "sentinel_x_total one",
    ] {
        ensure!(parse_exposition(bad).is_err(), "{bad:?} parsed");
    }
    Ok(())
}

// === running a case ===

/// What the client got: Ok, or the error as the client saw it.
enum Outcome {
    Ran,
    Error {
        code: String,
        message: String,
        /// Postgres's own errors name the source routine that raised them; Sentinel's do not.
        from_postgres: bool,
        described: String,
    },
}

fn outcome(res: Result<(), tokio_postgres::Error>) -> Outcome {
    match res {
        Ok(()) => Outcome::Ran,
        Err(e) => Outcome::Error {
            code: sqlstate(&e),
            message: e
                .as_db_error()
                .map(|d| d.message().to_owned())
                .unwrap_or_else(|| e.to_string()),
            from_postgres: e.as_db_error().is_some_and(|d| d.routine().is_some()),
            described: describe_error(&e),
        },
    }
}

async fn connect_as(env: &TenancyEnv, conn: Conn) -> Result<Client> {
    match conn {
        Conn::Plain => connect(&env.tdb.dsn(&env.sentinel, "")).await,
        Conn::Token => {
            let token = env.cfg.tenant_token(BOUND, None)?;
            connect(&env.sentinel.dsn(TOKEN_USER, &token, &env.tdb.db.name)).await
        }
    }
}

async fn attempt_on(client: &Client, attempt: &Attempt, probe: &str) -> Result<Outcome> {
    let with_probe = |sql: &str| format!("{sql} /*{probe}*/");
    Ok(outcome(match attempt {
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
        Attempt::FunctionCall => bail!("the function call goes over a raw connection"),
    }))
}

/// The FunctionCall message for `version()` (oid 89): no arguments, a text result.
async fn function_call(env: &TenancyEnv) -> Result<Outcome> {
    let mut raw = env.raw(&[]).await?;
    let mut body = Vec::new();
    body.extend_from_slice(&89_u32.to_be_bytes()); // the function
    body.extend_from_slice(&0_i16.to_be_bytes()); // argument formats
    body.extend_from_slice(&0_i16.to_be_bytes()); // arguments
    body.extend_from_slice(&0_i16.to_be_bytes()); // result format: text
    let replies = raw
        .exchange(
            &Wire::new().msg(b'F', &body),
            sentinel_tests::raw::Until::Ready(1),
        )
        .await?;
    if let Some(f) = sentinel_tests::raw::first_error(&replies) {
        return Ok(Outcome::Error {
            code: f.code.clone(),
            message: f.message.clone(),
            // The raw client keeps no routine field; the wording check still applies.
            from_postgres: true,
            described: format!("{f:?}"),
        });
    }
    ensure!(
        replies.contains(&Reply::Other('V')),
        "no FunctionCallResponse among {replies:?}"
    );
    // The connection stays usable.
    let after = raw.query("SELECT 1").await?;
    ensure!(
        sentinel_tests::raw::first_error(&after).is_none(),
        "after the function call, SELECT 1 got {after:?}"
    );
    Ok(Outcome::Ran)
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

/// Runs one case; returns what went wrong (empty: nothing).
async fn run_case(
    env: &TenancyEnv,
    probe_client: &Client,
    c: &Case,
    probe: &str,
) -> Result<Vec<String>> {
    let app = &env.tdb.db.role;
    let mut problems = Vec::new();
    let before_setup = env.sentinel.logs().len();
    let client = if matches!(c.attempt, Attempt::FunctionCall) {
        None
    } else {
        let client = connect_as(env, c.conn).await?;
        for stmt in &c.setup {
            within("setup", client.simple_query(stmt))
                .await?
                .map_err(|e| anyhow::anyhow!("setup {stmt:?} failed: {}", describe_error(&e)))?;
        }
        Some(client)
    };
    let before = env.sentinel.logs().len();
    let setup_logs = env.sentinel.logs();
    let during_setup = lines_with(
        setup_logs.get(before_setup..before).unwrap_or_default(),
        REPORTED,
    );
    if !during_setup.is_empty() {
        problems.push(format!("the setup was reported: {during_setup:?}"));
    }

    let got = match &client {
        Some(client) => attempt_on(client, &c.attempt, probe).await?,
        None => function_call(env).await?,
    };
    // Sentinel logs the report before it forwards the statement, so the line is there by the
    // time the answer is.
    let logs = env.sentinel.logs();
    let reports = lines_with(logs.get(before..).unwrap_or_default(), REPORTED);

    match (&got, c.pg) {
        (Outcome::Ran, Pg::Runs) => {}
        (Outcome::Ran, _) => problems.push(format!(
            "Postgres ran it; the table expects Postgres to fail it ({:?})",
            c.pg
        )),
        (
            Outcome::Error {
                code,
                message,
                from_postgres,
                described,
            },
            pg,
        ) => {
            if let Some(w) = SENTINEL_WORDING.iter().find(|w| message.contains(**w)) {
                problems.push(format!(
                    "the client got a refusal worded like Sentinel's ({w:?}): {described}"
                ));
            } else if !from_postgres {
                problems.push(format!(
                    "the client got an error without Postgres's source routine (Sentinel's?): \
                     {described}"
                ));
            }
            match pg {
                Pg::Runs => problems.push(format!(
                    "the table expects Postgres to run it, the client got {described}"
                )),
                Pg::Fails(want) if want != code => problems.push(format!(
                    "the table expects Postgres to fail it with {want}, the client got {described}"
                )),
                Pg::Fails(_) | Pg::FailsAnyhow => {}
            }
        }
    }

    match reports.as_slice() {
        [one] => {
            if !UNFINGERPRINTED.contains(&c.label) && one.fingerprint.bytes().all(|b| b == b'0') {
                problems.push(format!(
                    "the report line has a zero fingerprint: {}",
                    one.text
                ));
            }
            if one.reason != c.label || one.sqlstate != c.code || !is_fingerprint(&one.fingerprint)
            {
                problems.push(format!(
                    "the report line has reason={:?} sqlstate={:?} fingerprint={:?}, expected \
                     reason={:?} sqlstate={:?} and 16 hex digits: {}",
                    one.reason, one.sqlstate, one.fingerprint, c.label, c.code, one.text
                ));
            }
        }
        other => problems.push(format!(
            "{} report lines, expected exactly one:\n      {}",
            other.len(),
            other
                .iter()
                .map(|l| l.text.as_str())
                .collect::<Vec<_>>()
                .join("\n      ")
        )),
    }

    if let Some(client) = &client {
        let _ = within("rollback", client.batch_execute("ROLLBACK")).await;
        if let Err(e) = within("usable", client.simple_query("SELECT 1")).await? {
            problems.push(format!(
                "the connection is not usable afterwards: {}",
                describe_error(&e)
            ));
        }
    }
    drop(client);
    // The one server connection is clean for a client with no tenant.
    match identity(probe_client).await {
        Ok((setting, cur, sess)) => {
            if !is_unset(&setting) || cur != *app || sess != *app {
                problems.push(format!(
                    "afterwards a client with no tenant sees setting {setting:?}, current_user \
                     {cur}, session_user {sess}"
                ));
            }
        }
        Err(e) => problems.push(format!("probe client: {e:#}")),
    }
    Ok(problems)
}

/// Waits until the Postgres log has every probe; returns the ones it does not have.
async fn probes_missing(tdb: &TenancyDb, probes: &[(String, String)]) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = tdb.pg.log_contents();
        let missing: Vec<String> = probes
            .iter()
            .filter(|(_, p)| !log.contains(p.as_str()))
            .map(|(name, _)| name.clone())
            .collect();
        if missing.is_empty() || Instant::now() > deadline {
            return missing;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_only_reports_each_refusal_once_and_forwards_it() -> Result<()> {
    let tdb = create_db("tenreport").await?;
    let env = TenancyEnv::start(tdb.clone(), |c| c.tenancy_enforce(false)).await?;
    let all = cases(&tdb.db.role, &tdb.owner);
    let labels: std::collections::BTreeSet<&str> = all.iter().map(|c| c.label).collect();
    ensure!(
        labels.len() >= 20,
        "only {} distinct refusal kinds: {labels:?}",
        labels.len()
    );
    let probe_client = connect(&tdb.dsn(&env.sentinel, "")).await?;

    let mut failures = Vec::new();
    let mut probes = Vec::new();
    let mut expected: BTreeMap<&str, usize> = BTreeMap::new();
    let start = env.sentinel.logs().len();
    for (i, c) in all.iter().enumerate() {
        let probe = format!("probe_{i:02}_{}", random_secret(10));
        *expected.entry(c.label).or_default() += 1;
        match run_case(&env, &probe_client, c, &probe).await {
            Ok(problems) if problems.is_empty() => {}
            Ok(problems) => failures.push(format!("{}\n    {}", c.name, problems.join("\n    "))),
            Err(e) => failures.push(format!("{}\n    {e:#}", c.name)),
        }
        if !matches!(c.attempt, Attempt::FunctionCall) {
            probes.push((c.name.clone(), probe));
        }
    }

    // Everything Sentinel let through reached Postgres.
    for name in probes_missing(&tdb, &probes).await {
        failures.push(format!("{name}\n    its probe is not in the Postgres log"));
    }

    // The report lines over the whole run, per label.
    let logs = env.sentinel.logs();
    let mut counted: BTreeMap<&str, usize> = BTreeMap::new();
    let reports = lines_with(logs.get(start..).unwrap_or_default(), REPORTED);
    for line in &reports {
        let label = labels
            .get(line.reason.as_str())
            .copied()
            .unwrap_or("(other)");
        *counted.entry(label).or_default() += 1;
    }
    if counted != expected {
        failures.push(format!(
            "report lines per label: {counted:?}, expected {expected:?}"
        ));
    }
    // Report-only never refuses.
    let refused = lines_with(&logs, REFUSED)
        .into_iter()
        .filter(|l| !l.text.contains(REPORTED))
        .count();
    if refused > 0 {
        failures.push(format!("{refused} `{REFUSED}` lines in report-only mode"));
    }

    // The admin port counts what the log reports. Each case sends its statement once (one
    // Query, one Parse/Bind/Execute, or one FunctionCall) and its setup and the probe client's
    // checks report nothing, so the counter per reason is the table's cases with that label,
    // over the whole life of this Sentinel (it has served nothing else), and equal to the
    // report lines over its whole log.
    let samples = scrape(&env).await?;
    let want: BTreeMap<String, u64> = expected
        .iter()
        .map(|(label, n)| ((*label).to_owned(), *n as u64))
        .collect();
    let would_refuse = counter_by(&samples, WOULD_REFUSE_TOTAL, "reason")?;
    if would_refuse != want {
        failures.push(format!(
            "{WOULD_REFUSE_TOTAL} per reason: {would_refuse:?}, expected {want:?}"
        ));
    }
    let total: u64 = would_refuse.values().sum();
    if total != all.len() as u64 {
        failures.push(format!(
            "{WOULD_REFUSE_TOTAL} summed over reasons: {total}, expected {} (the refusal cases)",
            all.len()
        ));
    }
    let logged = per_reason(&logs, REPORTED);
    if would_refuse != logged {
        failures.push(format!(
            "{WOULD_REFUSE_TOTAL} per reason: {would_refuse:?}, but the log has report lines \
             {logged:?}"
        ));
    }
    // Report-only refuses nothing: the refusal counter is absent or zero for every reason.
    let refusals = counter_by(&samples, REFUSALS_TOTAL, "reason")?;
    if !refusals.is_empty() {
        failures.push(format!(
            "{REFUSALS_TOTAL} in report-only mode: {refusals:?}, expected none"
        ));
    }

    ensure!(
        failures.is_empty(),
        "{} of {} report-only cases failed:\n{}",
        failures.len(),
        all.len(),
        failures.join("\n")
    );

    // The control: enforcing, the first case is refused by Sentinel and never reaches Postgres.
    let enforcing = TenancyEnv::start(tdb.clone(), |c| c).await?;
    let first = &all[0];
    let Attempt::Simple(sql) = &first.attempt else {
        bail!("the first case is not a simple query");
    };
    let client = connect(&tdb.dsn(&enforcing.sentinel, "")).await?;
    let probe = format!("probe_enforced_{}", random_secret(10));
    expect_context_required(
        &format!("{} with enforce = true", first.name),
        client.simple_query(&format!("{sql} /*{probe}*/")).await,
    )?;
    let logs = enforcing.sentinel.logs();
    let refused = lines_with(&logs, REFUSED);
    ensure!(
        refused.len() == 1 && refused[0].reason == first.label,
        "enforcing, the refusal log lines are {refused:?}"
    );
    ensure!(
        !logs.contains(REPORTED),
        "enforcing, Sentinel logged a report-only line"
    );
    // And counts it as refused, not as reported.
    let samples = scrape(&enforcing).await?;
    let refusals = counter_by(&samples, REFUSALS_TOTAL, "reason")?;
    let want: BTreeMap<String, u64> = [(first.label.to_owned(), 1)].into_iter().collect();
    ensure!(
        refusals == want,
        "enforcing, {REFUSALS_TOTAL} per reason: {refusals:?}, expected {want:?}"
    );
    let would_refuse = counter_by(&samples, WOULD_REFUSE_TOTAL, "reason")?;
    ensure!(
        would_refuse.is_empty(),
        "enforcing, {WOULD_REFUSE_TOTAL} per reason: {would_refuse:?}, expected none"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    ensure!(
        !tdb.pg.log_contents().contains(&probe),
        "enforcing, the refused statement reached Postgres"
    );
    Ok(())
}

/// Session-level writes that Sentinel reports and lets through must not outlive the client on
/// the pooled server connection: the next client, with no tenant, must find no tenant there
/// (and, reading a tenant table, RLS's nothing). Each write runs on a Sentinel of its own, so
/// that one leak cannot mask or cause another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_writes_let_through_do_not_outlive_the_client() -> Result<()> {
    let tdb = create_db("tenrepsess").await?;
    let writes = [
        (
            Conn::Plain,
            "SELECT 1, set_config('app.tenant_id', 'globex', false)",
            "tenant_setting_write",
        ),
        (
            Conn::Plain,
            "SELECT set_config('app.' || 'tenant_id', 'globex', false)",
            "dynamic_setting_name",
        ),
        (
            Conn::Token,
            "SELECT set_config('app.tenant_id', 'globex', false)",
            "bound_switch",
        ),
        // The control: a SET's command tag marks the server for a reset.
        (Conn::Token, "SET app.tenant_id = 'globex'", "bound_switch"),
    ];
    let mut failures = Vec::new();
    for (conn, sql, label) in writes {
        let env = TenancyEnv::start(tdb.clone(), |c| c.tenancy_enforce(false)).await?;
        let before = env.sentinel.logs().len();
        let client = connect_as(&env, conn).await?;
        within(sql, client.simple_query(sql))
            .await?
            .map_err(|e| anyhow::anyhow!("{sql}: {}", describe_error(&e)))?;
        drop(client);
        let reports = lines_with(&since(&env.sentinel.logs(), before), REPORTED);
        if reports.len() != 1 || reports[0].reason != label {
            failures.push(format!(
                "{sql} [{conn:?}]: report lines {reports:?}, expected one {label}"
            ));
        }
        let next = env.plain().await?;
        let (setting, _, _) = identity(&next).await?;
        let rows = within("read", next.simple_query("SELECT count(*) FROM items"))
            .await?
            .map_err(|e| anyhow::anyhow!("the next client's read: {}", describe_error(&e)))?;
        let count = simple_rows(&rows)
            .into_iter()
            .next()
            .and_then(|r| r.into_iter().next().flatten());
        if !is_unset(&setting) || count.as_deref() != Some("0") {
            failures.push(format!(
                "{sql} [{conn:?}]: the next client, with no tenant, runs with app.tenant_id = \
                 {setting:?} and reads {count:?} rows of items (RLS with no tenant: 0)"
            ));
        }
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

/// A forbidden or unparsable unnamed statement is reported once, at its Parse, and then runs as
/// sent: its Bind is not judged by the check of the unnamed statement before it (which would
/// report it a second time, under that statement's reason and fingerprint, or set that
/// statement's tenant for it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forbidden_unnamed_statement_is_judged_on_its_own() -> Result<()> {
    let tdb = create_db("tenrepunn").await?;
    let env = TenancyEnv::start(tdb.clone(), |c| c.tenancy_enforce(false)).await?;
    let c = env.plain().await?;
    let mut failures = Vec::new();
    // (the unnamed statement before, the forbidden one, its label)
    let pairs = [
        (
            "SELECT count(*) FROM items",
            "SELECT 1, set_config('app.tenant_id', 'globex', true)",
            "tenant_setting_write",
        ),
        (
            "/*tenant='acme'*/ SELECT count(*) FROM items",
            "SELECT current_setting('app.tenant_id', true), query_to_xml('SELECT 1', true, false, '')",
            "dynamic_sql",
        ),
        (
            "SELECT count(*) FROM items",
            "SELEC current_setting('app.tenant_id', true)",
            "unparsable",
        ),
    ];
    for (first, second, label) in pairs {
        within(first, c.query_typed(first, &[]))
            .await?
            .map_err(|e| anyhow::anyhow!("{first}: {}", describe_error(&e)))?;
        let before = env.sentinel.logs().len();
        let res = within(second, c.query_typed(second, &[])).await?;
        let reports = lines_with(&since(&env.sentinel.logs(), before), REPORTED);
        if reports.len() != 1 || reports[0].reason != label {
            failures.push(format!(
                "{second:?} after {first:?}: report lines (reason, fingerprint) {:?}, expected \
                 one {label}",
                reports
                    .iter()
                    .map(|l| (l.reason.as_str(), l.fingerprint.as_str()))
                    .collect::<Vec<_>>()
            ));
        }
        if let (Ok(rows), "dynamic_sql") = (res, label) {
            let setting = rows
                .first()
                .and_then(|r| r.try_get::<_, Option<String>>(0).ok().flatten());
            if !is_unset(&setting) {
                failures.push(format!(
                    "{second:?} after {first:?}: it ran with app.tenant_id = {setting:?}, a \
                     tenant it never named"
                ));
            }
        }
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}
