//! One client's tenancy state, driven by the session: the tenant context, what the server's
//! current transaction has been given (predicted from what was sent, settled by ReadyForQuery),
//! and the tenant commands the client prepared, which live only here.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::BytesMut;
use sentinel_policy::sql::{Verdict, VerdictKind};
use sentinel_policy::tenant::{TenantContext, TenantId};
use sentinel_wire::{BindParams, TargetKind, TransactionStatus, encode};

use super::local::{LocalPortal, LocalStatement, execute, execute_simple};
use super::{Checked, Refusal, Tenancy};

/// A refusal with the fingerprint of the statement refused (0 when there is none).
pub type Refused = (Refusal, u64);

/// What to do with a simple Query.
pub enum QueryPlan {
    /// Forward it, with this prefix in front when the tenant must be set.
    Forward {
        prefix: Option<String>,
        session_state: bool,
    },
    /// A tenant command: these replies (without ReadyForQuery) instead.
    Answer(BytesMut),
}

/// What to do before forwarding a Bind.
pub struct BindPlan {
    /// Set this tenant (with this statement_timeout) first.
    pub inject: Option<(TenantId, Option<String>)>,
    pub session_state: bool,
}

pub struct TenantState {
    pub tenancy: Arc<Tenancy>,
    pub context: TenantContext,
    /// The tenant the last statement checked acts for (for the admin views and the kill
    /// switch).
    pub statement_tenant: Option<TenantId>,
    /// A transaction block is open after everything sent so far.
    block_open: bool,
    /// The tenant was sent in the current extended batch already.
    batch_injected: bool,
    /// The server reported the transaction failed: until it ends, Postgres would answer a
    /// tenant command with 25P02, and so does Sentinel.
    failed: bool,
    checked: HashMap<String, Checked>,
    unnamed_checked: Option<Checked>,
    locals: HashMap<String, Arc<LocalStatement>>,
    unnamed_local: Option<Arc<LocalStatement>>,
    portals: HashMap<String, LocalPortal>,
}

impl TenantState {
    pub fn new(tenancy: Arc<Tenancy>, bound: Option<TenantId>) -> TenantState {
        TenantState {
            context: tenancy.context(bound),
            statement_tenant: None,
            tenancy,
            block_open: false,
            batch_injected: false,
            failed: false,
            checked: HashMap::new(),
            unnamed_checked: None,
            locals: HashMap::new(),
            unnamed_local: None,
            portals: HashMap::new(),
        }
    }

    /// Whether a transaction block is open after everything sent so far.
    pub fn block_open(&self) -> bool {
        self.block_open
    }

    // === simple protocol ===

    /// A simple Query: forwarded (maybe with the tenant prefix), answered here, or refused. A
    /// refused one changes nothing.
    pub fn on_query(&mut self, sql: &str) -> Result<QueryPlan, Refused> {
        self.unchanged_if_refused(|state| state.plan_query(sql))
    }

    /// Runs `plan`, putting the tenant context back as it was if it refuses.
    fn unchanged_if_refused<T>(
        &mut self,
        plan: impl FnOnce(&mut Self) -> Result<T, Refused>,
    ) -> Result<T, Refused> {
        let saved = self.context.clone();
        let result = plan(self);
        if result.is_err() {
            self.context = saved;
        }
        result
    }

    fn plan_query(&mut self, sql: &str) -> Result<QueryPlan, Refused> {
        self.statement_tenant = None;
        // A simple Query drops the unnamed statement and portal.
        self.unnamed_local = None;
        self.unnamed_checked = None;
        self.portals.remove("");
        let checked = self.tenancy.check(sql)?;
        let verdict = checked.verdict.clone();
        let fp = verdict.fingerprint;
        if let VerdictKind::TenantCommand(command) = &verdict.kind {
            if self.failed {
                return Err((Refusal::TransactionAborted, fp));
            }
            let statement = LocalStatement::new(command.clone(), sql, Vec::new());
            let mut out = BytesMut::new();
            execute_simple(
                &self.tenancy,
                &mut self.context,
                statement,
                self.block_open,
                &mut out,
            )
            .map_err(|r| (r, fp))?;
            return Ok(QueryPlan::Answer(out));
        }
        let tenant = self.tenant_for(&checked)?;
        if verdict.tx.tenant_after_end && tenant.is_some() {
            return Err((Refusal::TenantAfterTransactionEnd, fp));
        }
        let prefix = match &tenant {
            Some(t) if Self::must_inject(&verdict) => Some(super::inject::simple_prefix(
                &self.tenancy.config.setting,
                t,
                self.tenancy.statement_timeout(t),
            )),
            _ => None,
        };
        self.apply_tx_effects(&verdict);
        if !self.block_open {
            // The query is its own transaction, which ends with it.
            self.end_transaction();
        }
        Ok(QueryPlan::Forward {
            prefix,
            session_state: verdict.session_state,
        })
    }

    /// The tenant a statement acts for; refuses one that needs a tenant and has none.
    fn tenant_for(&mut self, checked: &Checked) -> Result<Option<TenantId>, Refused> {
        let fp = checked.verdict.fingerprint;
        let tenant = self
            .context
            .for_statement(checked.tag.as_ref())
            .map_err(|e| (Refusal::Context(e), fp))?;
        if tenant.is_none() && matches!(checked.verdict.kind, VerdictKind::NeedsTenant) {
            return Err((Refusal::NoContext, fp));
        }
        self.statement_tenant.clone_from(&tenant);
        Ok(tenant)
    }

    /// Whether to set the tenant before this statement. Every statement that may read or write
    /// is given it, inside a transaction block too: what was set before may have been undone
    /// (ROLLBACK TO, RESET ALL, a BEGIN the server skipped after an error) in ways that are only
    /// certain once the server answers. Not before transaction control (an isolation level must
    /// come first, ROLLBACK must run in a failed transaction) nor statements that cannot run in a
    /// transaction block.
    fn must_inject(verdict: &Verdict) -> bool {
        verdict.statements > 0 && !verdict.no_transaction_block && !verdict.tx.control_only
    }

    fn apply_tx_effects(&mut self, verdict: &Verdict) {
        let tx = &verdict.tx;
        if tx.begins && !tx.ends {
            self.block_open = true;
        }
        if tx.ends {
            self.block_open = false;
            self.failed = false;
        }
        if tx.rolls_back_to_savepoint {
            self.failed = false;
        }
        if tx.rolls_back_to_savepoint || tx.resets_settings {
            // ROLLBACK TO may undo the set_config made after the savepoint, RESET ALL undoes it:
            // set it again.
            self.batch_injected = false;
        }
        if tx.resets_settings {
            self.context.clear_session();
        }
    }

    fn end_transaction(&mut self) {
        self.context.end_transaction();
    }

    // === extended protocol ===

    /// A Parse: refused, answered here (a tenant command), or checked and forwarded (`None`).
    pub fn on_parse(
        &mut self,
        name: &str,
        sql: &str,
        param_types: &[u8],
    ) -> Result<Option<BytesMut>, Refused> {
        // Whatever this Parse turns out to be, it replaces the statement of that name: a later
        // Bind must never be judged by the check of the one before.
        if name.is_empty() {
            self.unnamed_local = None;
            self.unnamed_checked = None;
        } else {
            self.locals.remove(name);
            self.checked.remove(name);
        }
        let checked = self.tenancy.check(sql)?;
        if let VerdictKind::TenantCommand(command) = &checked.verdict.kind {
            // The count (2 bytes) comes first, then one oid per parameter.
            let types = param_types
                .get(2..)
                .unwrap_or_default()
                .chunks_exact(4)
                .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            let statement = Arc::new(LocalStatement::new(command.clone(), sql, types));
            if name.is_empty() {
                self.unnamed_local = Some(statement);
                self.unnamed_checked = None;
            } else {
                self.locals.insert(name.to_owned(), statement);
                self.checked.remove(name);
            }
            let mut out = BytesMut::new();
            encode::parse_complete(&mut out);
            return Ok(Some(out));
        }
        if name.is_empty() {
            self.unnamed_local = None;
            self.unnamed_checked = Some(checked);
        } else {
            self.locals.remove(name);
            self.checked.insert(name.to_owned(), checked);
        }
        Ok(None)
    }

    /// Report-only mode let a refused Parse through: its Binds are not reported a second time.
    pub fn let_through(&mut self, name: &str) {
        let checked = Checked {
            verdict: reported_statement(),
            tag: None,
        };
        if name.is_empty() {
            self.unnamed_checked = Some(checked);
        } else {
            self.checked.insert(name.to_owned(), checked);
        }
    }

    /// Whether `name` is a tenant command the client prepared (answered here, never forwarded).
    pub fn is_local_statement(&self, name: &str) -> bool {
        self.local_statement(name).is_some()
    }

    fn local_statement(&self, name: &str) -> Option<&Arc<LocalStatement>> {
        if name.is_empty() {
            self.unnamed_local.as_ref()
        } else {
            self.locals.get(name)
        }
    }

    /// A Bind of a tenant command: binds it here. `None` when the statement is not one.
    pub fn local_bind(
        &mut self,
        portal: &str,
        statement: &str,
        rest: &[u8],
    ) -> Option<Result<BytesMut, Refusal>> {
        let Some(stmt) = self.local_statement(statement).cloned() else {
            self.portals.remove(portal);
            return None;
        };
        let params = match BindParams::parse(rest) {
            Ok(p) => p,
            Err(e) => return Some(Err(Refusal::Unparsable(e.to_string()))),
        };
        self.portals.insert(
            portal.to_owned(),
            LocalPortal {
                statement: stmt,
                values: params
                    .values
                    .iter()
                    .map(|v| v.map(<[u8]>::to_vec))
                    .collect(),
                formats: params.param_formats.clone(),
                result_binary: params.result_formats.first() == Some(&1),
            },
        );
        let mut out = BytesMut::new();
        encode::bind_complete(&mut out);
        Some(Ok(out))
    }

    /// A Bind of a forwarded statement: the tenant to set first, or a refusal. Statements
    /// Sentinel has no check for (unknown names) go on for the server to refuse.
    /// A Bind of a forwarded statement: the tenant to set first, or a refusal (which changes
    /// nothing). A statement Sentinel holds no check for (a name it never saw parsed, an SQL
    /// `PREPARE`d one) is taken to need the tenant.
    pub fn on_bind(&mut self, statement: &str) -> Result<BindPlan, Refused> {
        self.statement_tenant = None;
        self.unchanged_if_refused(|state| state.plan_bind(statement))
    }

    fn plan_bind(&mut self, statement: &str) -> Result<BindPlan, Refused> {
        let checked = if statement.is_empty() {
            self.unnamed_checked.clone()
        } else {
            self.checked.get(statement).cloned()
        };
        let checked = checked.unwrap_or_else(|| Checked {
            verdict: unknown_statement(),
            tag: None,
        });
        let verdict = checked.verdict.clone();
        let tenant = self.tenant_for(&checked)?;
        let mut inject = None;
        if let Some(t) = tenant
            && !self.batch_injected
            && Self::must_inject(&verdict)
        {
            self.batch_injected = true;
            let timeout = self.tenancy.statement_timeout(&t).map(str::to_owned);
            inject = Some((t, timeout));
        }
        self.apply_tx_effects(&verdict);
        if verdict.tx.ends {
            // What follows in this batch runs in a new transaction.
            self.end_transaction();
            self.batch_injected = false;
        }
        Ok(BindPlan {
            inject,
            session_state: verdict.session_state,
        })
    }

    /// Describe of a tenant command or of a portal bound to one.
    pub fn local_describe(&self, kind: TargetKind, name: &str) -> Option<BytesMut> {
        let mut out = BytesMut::new();
        match kind {
            TargetKind::Statement => self.local_statement(name)?.describe(&mut out),
            TargetKind::Portal => {
                let portal = self.portals.get(name)?;
                portal
                    .statement
                    .describe_rows(&mut out, portal.result_binary);
            }
        }
        Some(out)
    }

    /// Execute of a portal bound to a tenant command.
    pub fn local_execute(&mut self, portal: &str) -> Option<Result<BytesMut, Refused>> {
        let bound = self.portals.get(portal)?.clone();
        if self.failed {
            return Some(Err((Refusal::TransactionAborted, 0)));
        }
        let mut out = BytesMut::new();
        Some(
            execute(
                &self.tenancy,
                &mut self.context,
                &bound,
                self.block_open,
                &mut out,
            )
            .map(|()| out)
            .map_err(|r| (r, 0)),
        )
    }

    /// Close of a tenant command or its portal.
    pub fn local_close(&mut self, kind: TargetKind, name: &str) -> Option<BytesMut> {
        let removed = match kind {
            TargetKind::Statement if name.is_empty() => self.unnamed_local.take().is_some(),
            TargetKind::Statement => self.locals.remove(name).is_some(),
            TargetKind::Portal => self.portals.remove(name).is_some(),
        };
        if kind == TargetKind::Statement {
            self.checked.remove(name);
        }
        removed.then(|| {
            let mut out = BytesMut::new();
            encode::close_complete(&mut out);
            out
        })
    }

    /// The client's Sync: the batch ends, and with it an implicit transaction.
    pub fn on_sync(&mut self) {
        self.batch_injected = false;
        if !self.block_open {
            self.end_transaction();
            self.portals.clear();
        }
    }

    /// ReadyForQuery with nothing else in flight: the server's word replaces the prediction.
    pub fn settle(&mut self, status: TransactionStatus) {
        self.block_open = status != TransactionStatus::Idle;
        self.failed = status == TransactionStatus::Failed;
        self.batch_injected = false;
        if status == TransactionStatus::Idle {
            self.end_transaction();
        }
    }

    /// The server connection changed its prepared statements wholesale (DISCARD ALL,
    /// DEALLOCATE ALL): the client's tenant commands are gone too.
    pub fn forget_statements(&mut self) {
        self.locals.clear();
        self.unnamed_local = None;
        self.checked.clear();
        self.portals.clear();
    }

    /// RESET ALL / DISCARD ALL answered for the client: the session tenant goes too (a bound
    /// one stays: the connection was made for it).
    pub fn reset_all(&mut self) {
        self.context.clear_session();
    }
}

/// What a Parse that report-only mode let through is taken to be when it is bound: already
/// reported, so not again; still given the tenant when there is one.
fn reported_statement() -> Arc<Verdict> {
    static REPORTED: std::sync::LazyLock<Arc<Verdict>> = std::sync::LazyLock::new(|| {
        let mut verdict = (*unknown_statement()).clone();
        verdict.kind = VerdictKind::Free;
        Arc::new(verdict)
    });
    REPORTED.clone()
}

/// The verdict for a statement Sentinel never checked: it may read anything.
fn unknown_statement() -> Arc<Verdict> {
    static UNKNOWN: std::sync::LazyLock<Arc<Verdict>> = std::sync::LazyLock::new(|| {
        Arc::new(Verdict {
            kind: VerdictKind::NeedsTenant,
            relations: Vec::new(),
            fingerprint: 0,
            statements: 1,
            no_transaction_block: false,
            session_state: false,
            tx: Default::default(),
            constants_matter: true,
        })
    });
    UNKNOWN.clone()
}
