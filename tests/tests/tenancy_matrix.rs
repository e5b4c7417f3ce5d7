//! The tenant-context matrix: every source (token, startup, comment, set) × protocol (simple,
//! extended one-shot, unnamed statement, named prepared, pipelined) × transaction shape
//! (autocommit, explicit transaction, savepoint + ROLLBACK TO + another statement).
//!
//! Each cell runs on a fresh client against a Sentinel with a pool of ONE server connection
//! (every cell, and the probe client between cells, share that server), and asserts:
//! - every read returns exactly the cell tenant's rows, compared with the oracle's view of that
//!   tenant (a superuser connection straight to Postgres), plus what the cell itself inserted;
//! - the setting the server saw on every row, and `current_setting('app.tenant_id', true)` read
//!   inside the transaction, is the cell's tenant;
//! - an insert made through the context lands in that tenant (`tenant_id` comes from the
//!   server's setting, so a wrong context would show as a wrong tenant, not as an RLS error);
//! - the set source's `set_config` forms are answered like Postgres (one row, one column named
//!   `set_config`, the value);
//! - afterwards, a probe client with no tenant sees no setting and is refused
//!   (`tenant context required`), and so is the cell's own client when its source holds only for
//!   a transaction; a connection-bound client (token, startup) keeps its tenant.
//!
//! One combination is meaningless as stated and is replaced, not skipped: the set source in
//! autocommit under `scope = "transaction"` sets nothing that outlives its own statement (that
//! behaviour is asserted in tenancy_sources.rs), so the set × autocommit cells run against a
//! second Sentinel with `scope = "session"`, where the tenant lasts until reset.
//!
//! All cells run even when some fail; the test reports every failing cell with its label.

use std::collections::BTreeSet;

use anyhow::{Context, Result, bail, ensure};
use sentinel_tests::tenancy::{
    ItemRow, Op, Out, Proto, SetForm, StatementCache, TOKEN_USER, Tag, TagStyle, TenancyDb,
    assert_no_context, describe_error, run_ops, simple_scalar, within,
};
use sentinel_tests::{SentinelProcess, TenancyScope, shared_cluster};
use tokio_postgres::Client;

const TENANTS: &[&str] = &[
    "acme",
    "globex",
    "initech",
    "umbrella-co",
    "stark_ind",
    "t-1000",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Token,
    Startup,
    Comment,
    Set,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Autocommit,
    Explicit,
    Savepoint,
}

const SOURCES: [Source; 4] = [Source::Token, Source::Startup, Source::Comment, Source::Set];
const SHAPES: [Shape; 3] = [Shape::Autocommit, Shape::Explicit, Shape::Savepoint];

struct Env {
    tdb: TenancyDb,
    /// `scope = "transaction"` (the default): every cell but set × autocommit.
    txn: SentinelProcess,
    txn_cfg: sentinel_tests::SentinelConfig,
    /// `scope = "session"`: set × autocommit.
    session: SentinelProcess,
    session_cfg: sentinel_tests::SentinelConfig,
}

impl Env {
    fn sentinel(
        &self,
        source: Source,
        shape: Shape,
    ) -> (&SentinelProcess, &sentinel_tests::SentinelConfig) {
        if source == Source::Set && shape == Shape::Autocommit {
            (&self.session, &self.session_cfg)
        } else {
            (&self.txn, &self.txn_cfg)
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for (name, s) in [
            ("scope=transaction", &self.txn),
            ("scope=session", &self.session),
        ] {
            s.print_log_tail(&format!("Sentinel ({name})"), 30);
        }
    }
}

async fn start_env() -> Result<Env> {
    let pg = shared_cluster().await?;
    let tdb = TenancyDb::create(pg, "tenmatrix", TENANTS).await?;
    let base = |scope| {
        tdb.config()
            .pool_size(1)
            .tenancy_scope(scope)
            .tenant_token_user_for(TOKEN_USER, &tdb.db)
    };
    let txn_cfg = base(TenancyScope::Transaction);
    let session_cfg = base(TenancyScope::Session);
    let txn = SentinelProcess::start_with(&txn_cfg).await?;
    let session = SentinelProcess::start_with(&session_cfg).await?;
    Ok(Env {
        tdb,
        txn,
        txn_cfg,
        session,
        session_cfg,
    })
}

/// The set-source statement of a cell: every form gets used somewhere in the matrix.
fn set_form(proto: Proto, shape: Shape) -> SetForm {
    match (shape, proto) {
        // scope = "session": session-level forms.
        (Shape::Autocommit, Proto::Simple) => SetForm::Set,
        (Shape::Autocommit, Proto::Extended) => SetForm::SetConfig { local: false },
        (Shape::Autocommit, Proto::Unnamed) => SetForm::SetSentinel,
        (Shape::Autocommit, Proto::Prepared) => SetForm::SetConfig { local: false },
        (Shape::Autocommit, Proto::Pipelined) => SetForm::SetConfig { local: false },
        // scope = "transaction", inside a transaction block.
        (Shape::Explicit, Proto::Simple) => SetForm::SetLocal,
        (Shape::Explicit, Proto::Extended) => SetForm::Set,
        (Shape::Explicit, Proto::Unnamed) => SetForm::SetConfig { local: true },
        (Shape::Explicit, Proto::Prepared) => SetForm::SetConfig { local: true },
        (Shape::Explicit, Proto::Pipelined) => SetForm::SetLocalSentinel,
        (Shape::Savepoint, Proto::Simple) => SetForm::SetSentinel,
        (Shape::Savepoint, Proto::Extended) => SetForm::SetConfig { local: false },
        (Shape::Savepoint, Proto::Unnamed) => SetForm::SetLocal,
        (Shape::Savepoint, Proto::Prepared) => SetForm::SetConfig { local: true },
        (Shape::Savepoint, Proto::Pipelined) => SetForm::SetConfig { local: true },
    }
}

/// How the comment source tags its statements in each protocol.
fn tag_style(proto: Proto) -> TagStyle {
    match proto {
        Proto::Simple | Proto::Prepared => TagStyle::Leading,
        Proto::Extended | Proto::Pipelined => TagStyle::Trailing,
        Proto::Unnamed => TagStyle::TrailingEncoded,
    }
}

/// An op and what it must return.
struct Step {
    op: Op,
    expect: Expect,
}

enum Expect {
    Done,
    /// The tenant's rows as the oracle had them at the start of the cell, plus these notes.
    Items {
        extra: Vec<String>,
    },
    Setting,
    SetConfigReply,
    Inserted,
}

/// The ops of one cell. `note` makes the cell's inserted rows recognizable.
fn cell_steps(source: Source, proto: Proto, shape: Shape, tenant: &str, note: &str) -> Vec<Step> {
    let tag = |first: bool| -> Option<Tag> {
        // Autocommit: every statement is its own transaction, so each carries the tag. In a
        // transaction block, only the first statement after BEGIN does: the tag holds for the
        // rest of the transaction.
        (source == Source::Comment && (first || shape == Shape::Autocommit))
            .then(|| Tag::new(tenant, tag_style(proto)))
    };
    let set_ctx = (source == Source::Set).then(|| {
        let form = set_form(proto, shape);
        Step {
            op: Op::SetCtx {
                tenant: tenant.to_owned(),
                form,
            },
            expect: if matches!(form, SetForm::SetConfig { .. }) {
                Expect::SetConfigReply
            } else {
                Expect::Done
            },
        }
    });
    let select = |first: bool, extra: &[&str]| Step {
        op: Op::Select { tag: tag(first) },
        expect: Expect::Items {
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
        },
    };
    let ctl = |sql: &str| Step {
        op: Op::ctl(sql),
        expect: Expect::Done,
    };
    let kept = format!("{note}-kept");
    let undone = format!("{note}-rolledback");
    let mut steps = Vec::new();
    match shape {
        Shape::Autocommit => {
            steps.extend(set_ctx);
            steps.push(select(true, &[]));
            steps.push(Step {
                op: Op::Insert {
                    tag: tag(true),
                    note: kept.clone(),
                },
                expect: Expect::Inserted,
            });
            steps.push(select(true, &[&kept]));
            steps.push(Step {
                op: Op::Setting { tag: tag(true) },
                expect: Expect::Setting,
            });
        }
        Shape::Explicit => {
            steps.push(ctl("BEGIN"));
            steps.extend(set_ctx);
            steps.push(select(true, &[]));
            steps.push(Step {
                op: Op::Setting { tag: None },
                expect: Expect::Setting,
            });
            steps.push(Step {
                op: Op::Insert {
                    tag: None,
                    note: kept.clone(),
                },
                expect: Expect::Inserted,
            });
            steps.push(select(false, &[&kept]));
            steps.push(ctl("COMMIT"));
        }
        Shape::Savepoint => {
            steps.push(ctl("BEGIN"));
            steps.extend(set_ctx);
            steps.push(select(true, &[]));
            steps.push(ctl("SAVEPOINT sp1"));
            steps.push(Step {
                op: Op::Insert {
                    tag: None,
                    note: undone.clone(),
                },
                expect: Expect::Inserted,
            });
            steps.push(select(false, &[&undone]));
            steps.push(ctl("ROLLBACK TO SAVEPOINT sp1"));
            steps.push(select(false, &[]));
            steps.push(Step {
                op: Op::Setting { tag: None },
                expect: Expect::Setting,
            });
            steps.push(Step {
                op: Op::Insert {
                    tag: None,
                    note: kept.clone(),
                },
                expect: Expect::Inserted,
            });
            steps.push(select(false, &[&kept]));
            steps.push(ctl("COMMIT"));
        }
    }
    steps
}

/// Connects a client for the cell's source.
async fn cell_client(env: &Env, source: Source, shape: Shape, tenant: &str) -> Result<Client> {
    let (sentinel, cfg) = env.sentinel(source, shape);
    match source {
        Source::Token => {
            let token = cfg.tenant_token(tenant, None)?;
            env.tdb.token(sentinel, TOKEN_USER, &token).await
        }
        Source::Startup => env.tdb.startup(sentinel, tenant).await,
        Source::Comment | Source::Set => env.tdb.plain(sentinel).await,
    }
}

/// Checks one op's result against its expectation.
fn check_step(
    i: usize,
    step: &Step,
    res: &Result<Out, tokio_postgres::Error>,
    tenant: &str,
    baseline: &[(i32, String, String)],
) -> Result<()> {
    let what = format!("op {i} ({})", step.op.describe());
    let out = match res {
        Ok(out) => out,
        Err(e) => bail!("{what} failed: {}", describe_error(e)),
    };
    match (&step.expect, out) {
        (Expect::Done, _) => Ok(()),
        (Expect::Items { extra }, Out::Items(rows)) => {
            check_items(&what, rows, tenant, baseline, extra)
        }
        (Expect::Setting, Out::Setting(v)) => {
            ensure!(
                v.as_deref() == Some(tenant),
                "{what}: current_setting('app.tenant_id', true) inside the transaction is {v:?}, \
                 not {tenant:?}"
            );
            Ok(())
        }
        (Expect::SetConfigReply, Out::SetConfigReply { columns, values }) => {
            ensure!(
                columns == &["set_config".to_owned()] && values == &[Some(tenant.to_owned())],
                "{what}: set_config was answered with columns {columns:?} and values {values:?}; \
                 Postgres answers one text column `set_config` with the value {tenant:?}"
            );
            Ok(())
        }
        (Expect::Inserted, Out::Inserted(t)) => {
            ensure!(
                t == tenant,
                "{what}: the row was inserted into tenant {t:?}, not {tenant:?}"
            );
            Ok(())
        }
        (_, other) => bail!("{what}: unexpected output {other:?}"),
    }
}

fn check_items(
    what: &str,
    rows: &[ItemRow],
    tenant: &str,
    baseline: &[(i32, String, String)],
    extra: &[String],
) -> Result<()> {
    let foreign: Vec<&ItemRow> = rows.iter().filter(|r| r.tenant_id != tenant).collect();
    ensure!(
        foreign.is_empty(),
        "{what}: rows of other tenants are visible as {tenant}: {foreign:?}"
    );
    let bad_ctx: Vec<&ItemRow> = rows
        .iter()
        .filter(|r| r.ctx.as_deref() != Some(tenant))
        .collect();
    ensure!(
        bad_ctx.is_empty(),
        "{what}: rows were read with app.tenant_id other than {tenant:?}: {bad_ctx:?}"
    );
    let got: BTreeSet<&str> = rows.iter().map(|r| r.v.as_str()).collect();
    let mut want: BTreeSet<&str> = baseline.iter().map(|(_, _, v)| v.as_str()).collect();
    want.extend(extra.iter().map(String::as_str));
    ensure!(
        got == want && rows.len() == want.len(),
        "{what}: read {} rows {got:?}; the oracle's rows of {tenant} (plus this transaction's) \
         are {want:?}",
        rows.len()
    );
    Ok(())
}

/// Runs one cell; every failure is returned as an error naming what failed.
/// One cell of the matrix.
struct Cell<'a> {
    source: Source,
    proto: Proto,
    shape: Shape,
    tenant: &'a str,
    note: String,
}

/// Clients with no tenant, one per Sentinel, that check between cells that nothing is left over.
struct Probes {
    txn: Client,
    session: Client,
}

async fn run_cell(env: &Env, probes: &Probes, cell: &Cell<'_>) -> Result<()> {
    let Cell {
        source,
        proto,
        shape,
        tenant,
        ref note,
    } = *cell;
    let baseline = env.tdb.oracle_items(tenant).await?;
    ensure!(!baseline.is_empty(), "fixture: tenant {tenant} has no rows");
    let client = cell_client(env, source, shape, tenant).await?;
    let steps = cell_steps(source, proto, shape, tenant, note);
    let ops: Vec<Op> = steps.iter().map(|s| s.op.clone()).collect();
    let mut cache = StatementCache::default();
    let results = run_ops(&client, proto, &ops, &mut cache).await?;
    let mut problems = Vec::new();
    for (i, (step, res)) in steps.iter().zip(&results).enumerate() {
        if let Err(e) = check_step(i, step, res, tenant, &baseline) {
            problems.push(format!("{e:#}"));
        }
    }
    if results.len() < steps.len() {
        problems.push(format!(
            "only {} of {} ops ran (stopped at the first error)",
            results.len(),
            steps.len()
        ));
    }
    // Whatever happened, leave no transaction open.
    let _ = within("rollback", client.batch_execute("ROLLBACK")).await;

    // Afterwards: the cell's own client.
    let after = match source {
        Source::Token | Source::Startup => {
            // Bound to the connection: the tenant stays, in a new transaction too.
            let rows = within(
                "bound read",
                client.query("SELECT count(*) FROM items", &[]),
            )
            .await?;
            match rows {
                Ok(rows) => {
                    let n: i64 = rows.first().map(|r| r.get(0)).unwrap_or(-1);
                    let want = env.tdb.oracle_count(tenant).await?;
                    if n == want {
                        Ok(())
                    } else {
                        Err(anyhow::anyhow!(
                            "after the cell, the bound client counts {n} rows; the oracle says \
                             {tenant} has {want}"
                        ))
                    }
                }
                Err(e) => Err(anyhow::anyhow!(
                    "after the cell, the bound client is refused: {}",
                    describe_error(&e)
                )),
            }
        }
        Source::Set if shape == Shape::Autocommit => {
            // scope = "session": the tenant holds until reset; then it is gone.
            let before = within(
                "session-scoped read",
                client.query("SELECT count(*) FROM items", &[]),
            )
            .await?;
            match before {
                Err(e) => Err(anyhow::anyhow!(
                    "a session-scoped tenant did not last to the next transaction: {}",
                    describe_error(&e)
                )),
                Ok(_) => {
                    within("RESET", client.batch_execute("RESET app.tenant_id"))
                        .await?
                        .context("RESET app.tenant_id")?;
                    assert_no_context(&client, "the cell's client after RESET app.tenant_id").await
                }
            }
        }
        Source::Comment | Source::Set => {
            assert_no_context(&client, "the cell's client after its transaction").await
        }
    };
    if let Err(e) = after {
        problems.push(format!("{e:#}"));
    }
    // A client with no tenant on the same (single) server connection sees nothing left over.
    for (name, probe) in [
        ("scope=transaction", &probes.txn),
        ("scope=session", &probes.session),
    ] {
        if let Err(e) = assert_no_context(probe, &format!("probe client ({name})")).await {
            problems.push(format!("{e:#}"));
        }
    }
    drop(client);
    if problems.is_empty() {
        Ok(())
    } else {
        bail!("{}", problems.join("\n    "))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_source_protocol_and_transaction_shape() -> Result<()> {
    let env = start_env().await?;
    let probes = Probes {
        txn: env.tdb.plain(&env.txn).await?,
        session: env.tdb.plain(&env.session).await?,
    };
    let mut failures = Vec::new();
    let mut cells = 0;
    for source in SOURCES {
        for proto in Proto::ALL {
            for shape in SHAPES {
                let tenant = TENANTS[cells % TENANTS.len()];
                let note = format!("cell{cells}-{tenant}");
                let scope = if source == Source::Set && shape == Shape::Autocommit {
                    "scope=session"
                } else {
                    "scope=transaction"
                };
                let label = format!(
                    "[cell {cells}: {source:?} × {proto:?} × {shape:?}, tenant {tenant}, {scope}]"
                );
                cells += 1;
                let cell = Cell {
                    source,
                    proto,
                    shape,
                    tenant,
                    note,
                };
                let res = run_cell(&env, &probes, &cell).await;
                if let Err(e) = res {
                    failures.push(format!("{label}\n    {e:#}"));
                }
            }
        }
    }
    ensure!(cells == 60, "the matrix has {cells} cells, not 4 × 5 × 3");

    // The oracle's view of what the cells wrote: each kept row in its cell's tenant, no row of a
    // rolled-back savepoint anywhere.
    let su = env.tdb.oracle().await?;
    let misplaced = su
        .query(
            "SELECT v, tenant_id FROM items WHERE v LIKE 'cell%' \
             AND v NOT LIKE '%-' || tenant_id || '-kept'",
            &[],
        )
        .await?;
    if !misplaced.is_empty() {
        let rows: Vec<(String, String)> = misplaced.iter().map(|r| (r.get(0), r.get(1))).collect();
        failures.push(format!(
            "[oracle] rows written into the wrong tenant or kept after ROLLBACK TO: {rows:?}"
        ));
    }
    let kept: i64 = su
        .query_one("SELECT count(*) FROM items WHERE v LIKE 'cell%-kept'", &[])
        .await?
        .get(0);
    if kept != 60 {
        failures.push(format!(
            "[oracle] {kept} committed cell rows, not one per cell (60)"
        ));
    }
    // No server connection is left inside a transaction.
    let idle_in_tx: i64 = su
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND usename = $2 \
             AND state LIKE 'idle in transaction%'",
            &[&env.tdb.db.name, &env.tdb.db.role],
        )
        .await?
        .get(0);
    if idle_in_tx != 0 {
        failures.push(format!(
            "[oracle] {idle_in_tx} server connections are idle in transaction after the matrix"
        ));
    }
    ensure!(
        failures.is_empty(),
        "{} of {cells} matrix cells (or oracle checks) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // The probe is still usable at the very end.
    let one = simple_scalar(&probes.txn, "SELECT 1").await?;
    ensure!(one.as_deref() == Some("1"), "probe: SELECT 1 gave {one:?}");
    Ok(())
}
