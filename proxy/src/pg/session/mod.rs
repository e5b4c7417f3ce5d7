//! One client's session: the state machine between a client connection and the server
//! connections it borrows.
//!
//! The session knows transaction boundaries exactly. Every message it forwards to a server is
//! recorded in `pending` with the replies it will produce, in order; replies are matched against
//! that queue, so Sentinel can insert messages of its own (a Parse for a statement this server
//! has not prepared yet) and swallow their replies, and answer some messages itself (Close of a
//! client statement) with replies placed exactly where the server's would have been. In
//! transaction mode the server goes back to the pool at the first ReadyForQuery `I` with
//! nothing pending.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use sentinel_policy::tenant::TenantId;
use sentinel_wire::{
    BackendMessage, Frame, FrontendMessage, TargetKind, TransactionStatus, encode, tag,
};
use tokio::time::Instant;

use super::cancel::CancelHandle;
use super::clients::{ClientInfo, ClientState};
use super::conn::{Conn, ReadError};
use super::error::{PgError, PgResult};
use super::handshake::ClientLogin;
use super::io::{Io, next_io};
use super::params;
use super::pool::{Checkout, Pool};
use super::server::ServerConn;
use super::statements::{
    ClientStatements, LocalCommand, SERVER_PREFIX, Statement, local_command, reset_commands,
};
use super::tenancy::Refusal;
use super::tenancy::inject;
use super::tenancy::state::TenantState;
use super::{PgLive, PgShared};
use crate::config::PoolMode;

mod tenancy;

use tenancy::shift_position;

/// What a message sent to the server will be answered with; popped when its last reply arrives.
#[derive(Debug)]
enum Pending {
    /// `swallow`: injected by Sentinel, the client never sent it. `name`: the server statement.
    /// `client`: the client's name for it, forgotten if the server refuses it.
    Parse {
        swallow: bool,
        name: Option<Arc<str>>,
        client: Option<String>,
    },
    /// `swallow`: Sentinel's own (the tenant it sets).
    Bind {
        statement: Option<Arc<Statement>>,
        swallow: bool,
    },
    Describe {
        statement: Option<Arc<Statement>>,
    },
    Execute {
        swallow: bool,
    },
    Close {
        swallow: bool,
    },
    Sync,
    /// `swallow`: a query of Sentinel's own; nothing of its reply reaches the client.
    /// `prefix`: Sentinel put a statement of its own in front of the client's text.
    Query {
        swallow: bool,
        prefix: Option<Prefix>,
    },
    FunctionCall,
    /// A reply Sentinel produced itself, sent when everything before it has been answered; and
    /// what to undo if the server skips past it after an error (Postgres would not have run
    /// the message it answers).
    Synthetic(Bytes, Option<Undo>),
    /// A ReadyForQuery Sentinel answers itself, with the status current at that point.
    SyntheticReady,
    /// The client ended a COPY it pipelined before the server started it: Syncs sent before
    /// this point reach the server during COPY and are ignored there.
    CopyEnd,
    /// A Parse made to fail so the server aborts the batch along with Sentinel's own error;
    /// its ErrorResponse is swallowed.
    Abort,
}

impl Pending {
    fn ends_with_ready(&self) -> bool {
        matches!(
            self,
            Pending::Sync | Pending::Query { .. } | Pending::FunctionCall
        )
    }

    /// Entries that produce nothing once the server skips to the next Sync after an error.
    fn skipped_after_error(&self) -> bool {
        self.is_extended()
            || matches!(
                self,
                Pending::Synthetic(..)
                    | Pending::SyntheticReady
                    | Pending::CopyEnd
                    | Pending::Query { .. }
                    | Pending::FunctionCall
            )
    }

    fn is_extended(&self) -> bool {
        matches!(
            self,
            Pending::Parse { .. }
                | Pending::Abort
                | Pending::Bind { .. }
                | Pending::Describe { .. }
                | Pending::Execute { .. }
                | Pending::Close { .. }
        )
    }
}

/// The statement Sentinel put in front of a client's simple Query.
#[derive(Debug, Clone, Copy)]
struct Prefix {
    /// Its length in characters: error positions in the client's text move by this much.
    chars: u32,
    /// Its replies (RowDescription, DataRow, CommandComplete) have not all arrived yet.
    replying: bool,
}

/// A change to the client's statements made when Sentinel answered a Parse or Close itself.
#[derive(Debug)]
enum Undo {
    Forget(String),
    Restore(String, Arc<Statement>),
}

/// Session state a server connection may carry past a transaction, seen from command tags.
#[derive(Debug, Default, Clone, Copy)]
struct Dirty {
    session: bool,
    prepared: bool,
}

pub enum Flow {
    Continue,
    Close,
}

/// How long Sentinel waits for its own housekeeping queries before it gives up on a server.
const HOUSEKEEPING_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle time after which a pooled connection is checked for life before it is used.
const LIVENESS_CHECK_AFTER: Duration = Duration::from_secs(1);
/// Replies awaited at most; past this the client is not read until some arrive.
const MAX_PENDING: usize = 4096;
/// Above this many prepared statements a server is cleared at its next release.
const MAX_SERVER_STATEMENTS: usize = 2000;
const RESET_SQL: &str = "SET SESSION AUTHORIZATION DEFAULT; RESET ROLE; RESET ALL; UNLISTEN *; \
     SELECT pg_advisory_unlock_all(); CLOSE ALL; DISCARD TEMP; DISCARD SEQUENCES";

pub struct Session {
    shared: Arc<PgShared>,
    /// The config this client logged in with.
    live: Arc<PgLive>,
    /// This client's entry in the registry of the admin views.
    info: Arc<ClientInfo>,
    /// When the request whose reply comes next was sent (for the query duration).
    query_started: Option<Instant>,
    /// When the running transaction's first request was sent.
    tx_started: Option<Instant>,
    client: Conn,
    pool: Arc<Pool>,
    cancel: CancelHandle,
    mode: PoolMode,
    /// Settings the client wants on every server it uses.
    desired: BTreeMap<String, String>,
    held: Option<Checkout>,
    statements: ClientStatements,
    pending: VecDeque<Pending>,
    /// Extended-protocol messages forwarded since the last Sync.
    batch_open: bool,
    /// The last transaction status the server reported.
    tx: TransactionStatus,
    copy_in: bool,
    dirty: Dirty,
    /// After an error in an extended batch (the server's, or Sentinel's own when no server was
    /// available), everything up to the client's next Sync is dropped, as Postgres does.
    discarding: bool,
    /// The client's last unnamed statement, and whether the held server has it.
    unnamed: Option<Bytes>,
    unnamed_on_server: bool,
    /// What RESET ALL and DISCARD ALL go back to.
    startup_params: BTreeMap<String, String>,
    /// A RESET the server is running for the client, applied to its settings when it succeeds.
    reset_on_success: VecDeque<LocalCommand>,
    /// The reply at the head of `pending` is one of Sentinel's own queries: not passed on.
    swallowing: bool,
    /// When the oldest request awaiting ReadyForQuery was sent (for query_timeout).
    busy_since: Option<Instant>,
    timeout_cancel_sent: bool,
    /// When the client last became idle inside a transaction.
    idle_since: Option<Instant>,
    shutdown: pingora::server::ShutdownWatch,
    drain_deadline: Option<Instant>,
    /// The client's login user.
    user: String,
    /// Tenant context enforcement; `None` when tenancy is off or the user bypasses it.
    tenant: Option<TenantState>,
    /// A bypass user of enabled tenancy: statements are logged with their fingerprints.
    bypass: bool,
    /// The prefix to put in front of the simple Query being forwarded.
    next_prefix: Option<String>,
    /// The tenant to set before the Bind being forwarded.
    next_inject: Option<(TenantId, Option<String>)>,
}

impl Session {
    pub fn new(
        shared: Arc<PgShared>,
        live: Arc<PgLive>,
        login: ClientLogin,
        pool: Arc<Pool>,
        info: Arc<ClientInfo>,
        shutdown: pingora::server::ShutdownWatch,
    ) -> Session {
        let cancel = shared.cancels.register();
        let mode = live.config.postgres.pool_mode;
        let tenancy = &live.tenancy;
        let tenant = tenancy
            .applies_to(&login.user)
            .then(|| TenantState::new(tenancy.clone(), login.bound.clone().map(|(t, _)| t)));
        let bypass = tenancy.config.enabled && tenant.is_none();
        Session {
            client: login.conn,
            pool,
            cancel,
            mode,
            desired: login.params.clone(),
            held: None,
            statements: ClientStatements::default(),
            pending: VecDeque::new(),
            batch_open: false,
            tx: TransactionStatus::Idle,
            copy_in: false,
            dirty: Dirty::default(),
            discarding: false,
            unnamed: None,
            unnamed_on_server: false,
            startup_params: login.params.clone(),
            reset_on_success: VecDeque::new(),
            swallowing: false,
            busy_since: None,
            timeout_cancel_sent: false,
            idle_since: None,
            shutdown,
            drain_deadline: None,
            user: login.user,
            tenant,
            bypass,
            next_prefix: None,
            next_inject: None,
            shared,
            live,
            info,
            query_started: None,
            tx_started: None,
        }
    }

    /// Runs the session to its end. Whatever happens, a server connection it holds is left
    /// clean in the pool or closed.
    pub async fn run(mut self) -> PgResult<()> {
        let result = self.run_inner().await;
        if let Err(e) = &result
            && !matches!(e, PgError::ClientIo(_))
        {
            e.encode(&mut self.client.wbuf, "FATAL");
        }
        let clean_exit = result.is_ok();
        self.give_back_server(clean_exit).await;
        self.client.shutdown().await;
        result
    }

    /// Shows in the admin views whether the client holds a server connection now.
    fn publish_state(&mut self) {
        let held = self.held.as_mut().map(|c| c.server().cancel.process_id);
        self.info.set_server(held);
        self.info.set_state(if held.is_some() {
            ClientState::Active
        } else {
            ClientState::Idle
        });
    }

    async fn run_inner(&mut self) -> PgResult<()> {
        self.login().await?;
        self.publish_state();
        // One wait for shutdown for the whole session: a fresh `changed()` on every event would
        // take the watch's lock, which every session shares, twice per event.
        let mut shutdown = self.shutdown.clone();
        let shutdown_signal = shutdown.changed();
        tokio::pin!(shutdown_signal);
        loop {
            let deadline = self.next_deadline();
            let draining = self.drain_deadline.is_some();
            let server = self.held.as_mut().map(|c| &mut c.server().conn);
            let read_client = self.pending.len() < MAX_PENDING;
            let io = tokio::select! {
                io = next_io(&mut self.client, server, read_client) => io,
                _ = &mut shutdown_signal, if !draining => {
                    self.start_drain()?;
                    continue;
                }
                _ = sleep_until(deadline), if deadline.is_some() => {
                    self.on_deadline().await?;
                    continue;
                }
            };
            match io {
                Io::Client => {
                    if let Flow::Close = self.on_client_data().await? {
                        return Ok(());
                    }
                }
                Io::Server => self.on_server_data()?,
                Io::ClientClosed(e) => {
                    return Err(PgError::ClientIo(
                        e.unwrap_or_else(|| std::io::ErrorKind::UnexpectedEof.into()),
                    ));
                }
                Io::ServerClosed(e) => {
                    tracing::warn!(error = ?e, "server connection lost");
                    return Err(self.server_lost(true));
                }
            }
            self.maybe_release().await?;
            self.publish_state();
        }
    }

    /// Finishes login: applies the client's settings on a server connection (which checks
    /// them), reports the resulting settings, and says the session is ready.
    async fn login(&mut self) -> PgResult<()> {
        self.ensure_server().await?;
        let server = self.server();
        let mut out = BytesMut::new();
        for (name, value) in &server.reported {
            encode::parameter_status(&mut out, name, value);
        }
        encode::backend_key_data(&mut out, self.cancel.process_id, &self.cancel.secret);
        encode::ready_for_query(&mut out, TransactionStatus::Idle);
        self.client.wbuf.extend_from_slice(&out);
        self.maybe_release().await
    }

    fn server(&mut self) -> &mut ServerConn {
        self.held.as_mut().expect("a server is held").server()
    }

    // === client messages ===

    async fn on_client_data(&mut self) -> PgResult<Flow> {
        while let Some(frame) = self.client.next_frame()? {
            if let Flow::Close = self.on_client_frame(frame).await? {
                return Ok(Flow::Close);
            }
        }
        Ok(Flow::Continue)
    }

    async fn on_client_frame(&mut self, frame: Frame) -> PgResult<Flow> {
        use tag::frontend as f;
        // Statements are timed for the added-latency histogram; other frames are not.
        let received = matches!(frame.tag, f::QUERY | f::EXECUTE).then(Instant::now);
        if self.discarding {
            if frame.tag == f::SYNC {
                self.discarding = false;
                if let Some(tenant) = self.tenant.as_mut() {
                    tenant.on_sync();
                }
                if self.held.is_some() {
                    self.send(frame.raw(), Some(Pending::Sync));
                    self.batch_open = false;
                } else {
                    self.respond_ready();
                }
            } else if frame.tag == f::TERMINATE {
                return Ok(Flow::Close);
            }
            return Ok(Flow::Continue);
        }
        let mut redacted = None;
        {
            let msg = FrontendMessage::parse(&frame)?;
            if matches!(
                msg,
                FrontendMessage::Query { .. } | FrontendMessage::Parse { name: "", .. }
            ) {
                // Whatever becomes of it, the client's unnamed statement is gone (Postgres drops
                // it at a simple Query, a new Parse replaces it): never re-sent from here on.
                self.unnamed = None;
                self.unnamed_on_server = false;
            }
            if self.tenant.is_some() {
                if self.tenancy_gate(&msg) {
                    return Ok(Flow::Continue);
                }
                redacted = self.redacted(&msg)?;
                if matches!(
                    msg,
                    FrontendMessage::Query { .. } | FrontendMessage::Bind { .. }
                ) {
                    self.note_tenant()?;
                }
            } else if self.bypass
                && let FrontendMessage::Query { sql } | FrontendMessage::Parse { sql, .. } = &msg
            {
                self.live.tenancy.bypass(sql, &self.user);
                // What a bypass user's statement leaves on the server (a session set_config of
                // the tenant, say) is unknown: reset the connection before another client.
                self.dirty.session = true;
            }
        }
        // From here on the message is the one the server may see.
        let frame = redacted.unwrap_or(frame);
        let msg = FrontendMessage::parse(&frame)?;
        match &msg {
            FrontendMessage::Terminate => return Ok(Flow::Close),
            FrontendMessage::Password(_) => {
                return Err(PgError::Unexpected("password message after authentication"));
            }
            FrontendMessage::Sync if self.held.is_none() => {
                self.respond_ready();
                return Ok(Flow::Continue);
            }
            FrontendMessage::Flush if self.held.is_none() => return Ok(Flow::Continue),
            FrontendMessage::CopyData(_)
            | FrontendMessage::CopyDone
            | FrontendMessage::CopyFail { .. }
                if self.held.is_none() =>
            {
                // Postgres ignores copy messages outside COPY, for the sake of client libraries
                // that send them after a COPY failed.
                return Ok(Flow::Continue);
            }
            FrontendMessage::Close {
                kind: TargetKind::Statement,
                name,
            } if !name.is_empty() => {
                let closed = self.statements.close(name);
                let mut out = BytesMut::new();
                encode::close_complete(&mut out);
                let undo = closed.map(|stmt| Undo::Restore(name.to_string(), stmt));
                self.respond_with(out.freeze(), undo);
                return Ok(Flow::Continue);
            }
            FrontendMessage::Query { sql } => {
                if let Some(cmd) = local_command(sql) {
                    let resets_all =
                        matches!(cmd, LocalCommand::ResetAll | LocalCommand::DiscardAll);
                    if self.answer_locally(cmd) {
                        self.next_prefix = None;
                        if resets_all && let Some(tenant) = self.tenant.as_mut() {
                            tenant.reset_all();
                        }
                        return Ok(Flow::Continue);
                    }
                } else if let Some(resets) = reset_commands(sql) {
                    self.reset_on_success.extend(resets);
                }
            }
            FrontendMessage::Parse {
                name,
                sql,
                param_types,
            } if self.held.is_none() && !name.is_empty() && self.statements.get(name).is_none() => {
                // A statement this pool's servers have prepared before needs no server now:
                // it is prepared on whichever one runs its first Bind. Waiting for a server
                // just to prepare could deadlock a client whose other connections hold them all.
                let key = &self.shared.statement_key;
                let path = self.desired.get("search_path").map_or("", String::as_str);
                let stmt = Statement::new(sql, param_types, path, key, &self.pool.generations);
                if self.pool.is_known(&stmt.server_name) {
                    self.statements.prepare(
                        name,
                        sql,
                        param_types,
                        path,
                        key,
                        &self.pool.generations,
                    );
                    let mut out = BytesMut::new();
                    encode::parse_complete(&mut out);
                    self.respond_with(out.freeze(), Some(Undo::Forget(name.to_string())));
                    return Ok(Flow::Continue);
                }
            }
            _ => {}
        }
        let checks_done = received.map(|received| (received, Instant::now()));
        if let Err(e) = self.ensure_server().await {
            if matches!(e, PgError::ShuttingDown) {
                return Err(e);
            }
            // The client stays connected: it gets the error as Postgres would report a failed
            // statement, and may try again.
            tracing::warn!(error = %e, kind = e.kind(), "no server connection for client");
            self.next_prefix = None;
            self.next_inject = None;
            e.encode(&mut self.client.wbuf, "ERROR");
            match msg {
                FrontendMessage::Query { .. }
                | FrontendMessage::FunctionCall
                | FrontendMessage::Sync => {
                    encode::ready_for_query(&mut self.client.wbuf, TransactionStatus::Idle);
                }
                _ => self.discarding = true,
            }
            return Ok(Flow::Continue);
        }
        let server_ready = checks_done.map(|_| Instant::now());
        self.forward(&frame, msg);
        if let (Some((received, checks_done)), Some(server_ready)) = (checks_done, server_ready) {
            let metrics = &self.shared.metrics.pg;
            metrics
                .queries
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            metrics
                .added_latency
                .observe((checks_done - received) + server_ready.elapsed());
            self.info.requested();
        }
        Ok(Flow::Continue)
    }

    /// Records the tenant the client's statement runs as, and ends the session of a tenant an
    /// operator has blocked (the kill switch).
    fn note_tenant(&mut self) -> PgResult<()> {
        let Some(tenant) = self
            .tenant
            .as_ref()
            .and_then(|t| t.statement_tenant.as_ref())
        else {
            return Ok(());
        };
        if self.info.set_tenant(tenant.as_str()) {
            // The client's span carries the tenant its statements run as now.
            tracing::Span::current().record("tenant", tenant.as_str());
        }
        if self.shared.blocks.db_blocked(tenant.as_str()) {
            crate::metrics::Metrics::count(&self.shared.metrics.blocked_db);
            tracing::info!(
                tenant = tenant.as_str(),
                "tenant blocked: closing the client"
            );
            return Err(PgError::Tenancy(Refusal::Blocked));
        }
        Ok(())
    }

    /// Answers DEALLOCATE, DISCARD ALL and RESET for the client's own virtual session. Returns
    /// false when the server must see the command after all.
    fn answer_locally(&mut self, cmd: LocalCommand) -> bool {
        // Only with nothing in flight is the transaction status known for sure.
        let settled = self.pending.is_empty() && !self.batch_open;
        if let LocalCommand::Deallocate(name) = &cmd
            && settled
            && self.tx != TransactionStatus::Failed
            && self.statements.get(name).is_some()
        {
            // A protocol-level statement of this client's: only Sentinel knows its name.
            self.statements.close(name);
            return self.answer("DEALLOCATE");
        }
        if !settled || self.tx != TransactionStatus::Idle {
            // Inside a transaction Postgres may refuse these (DISCARD ALL), or they act on
            // state only the server has: let it answer, and follow a RESET when it succeeds.
            if matches!(cmd, LocalCommand::ResetAll | LocalCommand::Reset(_)) {
                self.reset_on_success.push_back(cmd);
            }
            return false;
        }
        let session_mode = self.mode == PoolMode::Session;
        let tag = match &cmd {
            LocalCommand::Deallocate(_) => return false, // an SQL-level PREPARE: the server's
            LocalCommand::DiscardAll if session_mode => {
                // Also acts on SQL-level state the server holds for this session; the command
                // tag tells the session to forget its statements, and startup settings are
                // put back as after RESET ALL.
                self.reset_on_success.push_back(cmd);
                return false;
            }
            LocalCommand::DeallocateAll if session_mode => return false,
            LocalCommand::DeallocateAll => {
                self.statements.clear();
                if let Some(tenant) = self.tenant.as_mut() {
                    tenant.forget_statements();
                }
                "DEALLOCATE ALL"
            }
            LocalCommand::DiscardAll => {
                self.statements.clear();
                self.desired = self.startup_params.clone();
                if let Some(tenant) = self.tenant.as_mut() {
                    tenant.forget_statements();
                }
                "DISCARD ALL"
            }
            LocalCommand::ResetAll | LocalCommand::Reset(_) if session_mode => {
                self.reset_on_success.push_back(cmd);
                return false;
            }
            LocalCommand::ResetAll | LocalCommand::Reset(_) => {
                self.apply_reset(&cmd);
                "RESET"
            }
        };
        self.answer(tag)
    }

    /// Answers a simple query with its command tag and ReadyForQuery.
    fn answer(&mut self, tag: &str) -> bool {
        let mut out = BytesMut::new();
        encode::command_complete(&mut out, tag);
        self.respond(out.freeze());
        self.respond_ready();
        true
    }

    /// After a RESET the client sent through, puts back on the server what the client asked for
    /// at startup (the server's own RESET goes to the server's defaults).
    fn restore_after_reset(&mut self) {
        if self.reset_on_success.is_empty() {
            return;
        }
        let mut restore = BTreeMap::new();
        for cmd in &self.reset_on_success {
            match cmd {
                LocalCommand::ResetAll | LocalCommand::DiscardAll => {
                    restore.extend(self.startup_params.clone())
                }
                LocalCommand::Reset(name) => {
                    if let Some(value) = self.startup_params.get(name) {
                        restore.insert(name.clone(), value.clone());
                    }
                }
                _ => {}
            }
        }
        if let Some(sql) = params::sync_sql(&BTreeMap::new(), &restore) {
            let mut out = BytesMut::new();
            encode::query(&mut out, &sql);
            self.send(
                &out,
                Some(Pending::Query {
                    swallow: true,
                    prefix: None,
                }),
            );
        }
    }

    /// RESET goes back to what the client asked for at startup, not to the server's defaults.
    fn apply_reset(&mut self, cmd: &LocalCommand) {
        match cmd {
            LocalCommand::ResetAll | LocalCommand::DiscardAll => {
                self.desired = self.startup_params.clone()
            }
            LocalCommand::Reset(name) => match self.startup_params.get(name) {
                Some(value) => {
                    self.desired.insert(name.clone(), value.clone());
                }
                None => {
                    self.desired.remove(name);
                }
            },
            _ => {}
        }
        if let Some(held) = self.held.as_mut() {
            // The server now has its defaults: the next checkout applies the client's values.
            held.server().applied.clear();
        }
    }

    /// Answers a message with an error Sentinel raised itself; as after a server error in the
    /// extended protocol, the client's messages up to its next Sync are dropped.
    /// With a server held, the server is made to fail too (a Parse that cannot parse, its error
    /// swallowed), so that it also skips to the Sync and rolls back the implicit transaction
    /// exactly as Postgres would after its own error.
    fn refuse(&mut self, code: &str, message: &str) {
        let mut out = BytesMut::new();
        encode::error_response(&mut out, "ERROR", code, message, None);
        self.refuse_with(out.freeze());
    }

    fn refuse_with(&mut self, error: Bytes) {
        self.respond(error);
        self.discarding = true;
        if self.held.is_some() {
            let mut abort = BytesMut::new();
            encode::parse(&mut abort, "", "sentinel: abort this batch", &[]);
            self.unnamed_on_server = false;
            self.send(&abort, Some(Pending::Abort));
        }
    }

    /// Sends a reply Sentinel produced, in order with the server's replies.
    fn respond(&mut self, reply: Bytes) {
        self.respond_with(reply, None);
    }

    fn respond_with(&mut self, reply: Bytes, undo: Option<Undo>) {
        if self.pending.is_empty() {
            self.client.wbuf.extend_from_slice(&reply);
        } else {
            self.pending.push_back(Pending::Synthetic(reply, undo));
        }
    }

    fn respond_ready(&mut self) {
        if self.pending.is_empty() {
            encode::ready_for_query(&mut self.client.wbuf, self.tx);
        } else {
            self.pending.push_back(Pending::SyntheticReady);
        }
    }

    /// Sends a client message on to the held server, translating statement names.
    fn forward(&mut self, frame: &Frame, msg: FrontendMessage<'_>) {
        let raw = frame.raw();
        match msg {
            FrontendMessage::Query { sql } => {
                // A simple Query drops the unnamed statement, on the server as in Postgres.
                self.unnamed = None;
                self.unnamed_on_server = false;
                match self.next_prefix.take() {
                    Some(prefix) => {
                        let mut out = BytesMut::with_capacity(raw.len() + prefix.len());
                        encode::query(&mut out, &format!("{prefix}{sql}"));
                        let chars = u32::try_from(prefix.chars().count()).unwrap_or(u32::MAX);
                        let prefix = Some(Prefix {
                            chars,
                            replying: true,
                        });
                        self.send(
                            &out,
                            Some(Pending::Query {
                                swallow: false,
                                prefix,
                            }),
                        );
                    }
                    None => self.send(
                        raw,
                        Some(Pending::Query {
                            swallow: false,
                            prefix: None,
                        }),
                    ),
                }
                self.restore_after_reset();
            }
            FrontendMessage::FunctionCall => self.send(raw, Some(Pending::FunctionCall)),
            FrontendMessage::Parse {
                name,
                sql,
                param_types,
            } => {
                self.batch_open = true;
                if name.is_empty() {
                    // Kept so a later Bind of "" can run on whichever server the client holds.
                    self.unnamed = Some(raw.clone());
                    self.unnamed_on_server = true;
                    return self.send(
                        raw,
                        Some(Pending::Parse {
                            swallow: false,
                            name: None,
                            client: None,
                        }),
                    );
                }
                if self.statements.get(name).is_some() {
                    return self.refuse(
                        "42P05",
                        &format!("prepared statement \"{name}\" already exists"),
                    );
                }
                if self.tx == TransactionStatus::Failed {
                    // Postgres refuses it (25P02): let it say so, and map nothing.
                    return self.send(
                        raw,
                        Some(Pending::Parse {
                            swallow: false,
                            name: None,
                            client: None,
                        }),
                    );
                }
                let key = &self.shared.statement_key;
                let path = self.desired.get("search_path").map_or("", String::as_str);
                let stmt = self.statements.prepare(
                    name,
                    sql,
                    param_types,
                    path,
                    key,
                    &self.pool.generations,
                );
                if self.server().prepared.contains(&stmt.server_name) {
                    let mut out = BytesMut::new();
                    encode::parse_complete(&mut out);
                    self.respond_with(out.freeze(), Some(Undo::Forget(name.to_owned())));
                } else {
                    self.prepare_on_server(&stmt, false, Some(name.to_owned()));
                }
            }
            FrontendMessage::Bind {
                portal,
                statement,
                rest,
            } => {
                self.batch_open = true;
                let inject = self.next_inject.take();
                let Some((name, stmt)) = self.server_statement(statement) else {
                    return;
                };
                if let Some((tenant, timeout)) = inject {
                    self.inject_tenant(&tenant, timeout.as_deref());
                }
                let mut out = BytesMut::new();
                encode::bind_raw_params(&mut out, portal, &name, rest);
                self.send(
                    &out,
                    Some(Pending::Bind {
                        statement: stmt,
                        swallow: false,
                    }),
                );
            }
            FrontendMessage::Describe {
                kind: TargetKind::Statement,
                name,
            } => {
                self.batch_open = true;
                let Some((name, statement)) = self.server_statement(name) else {
                    return;
                };
                let mut out = BytesMut::new();
                encode::describe(&mut out, TargetKind::Statement, &name);
                self.send(&out, Some(Pending::Describe { statement }));
            }
            FrontendMessage::Describe {
                kind: TargetKind::Portal,
                ..
            } => {
                self.batch_open = true;
                self.send(raw, Some(Pending::Describe { statement: None }));
            }
            FrontendMessage::Execute { .. } => {
                self.batch_open = true;
                self.send(raw, Some(Pending::Execute { swallow: false }));
            }
            FrontendMessage::Close { .. } => {
                self.batch_open = true;
                self.send(raw, Some(Pending::Close { swallow: false }));
            }
            FrontendMessage::Sync => {
                // During COPY FROM STDIN the server ignores Sync: it expects another after
                // CopyDone.
                let pending = (!self.copy_in).then_some(Pending::Sync);
                if pending.is_some() {
                    self.batch_open = false;
                }
                self.send(raw, pending);
            }
            FrontendMessage::Flush | FrontendMessage::CopyData(_) => self.send(raw, None),
            FrontendMessage::CopyDone | FrontendMessage::CopyFail { .. } => {
                let copy_may_start = self.pending.iter().any(|p| {
                    matches!(
                        p,
                        Pending::Query { swallow: false, .. } | Pending::Execute { swallow: false }
                    )
                });
                if self.copy_in {
                    self.copy_in = false;
                    self.send(raw, None);
                } else if !copy_may_start {
                    // No COPY is or can be under way (it failed and ended already): Postgres
                    // ignores the message.
                    self.send(raw, None);
                } else {
                    // Pipelined before the server said COPY started: mark the spot.
                    self.send(raw, Some(Pending::CopyEnd));
                }
            }
            FrontendMessage::Terminate | FrontendMessage::Password(_) => {
                unreachable!("handled before forwarding")
            }
        }
    }

    /// The server-side name for a client statement name, preparing it on the held server if
    /// needed. Unknown names go through as they are, so the server reports them as Postgres
    /// would (unless they could name one of Sentinel's statements). None when Sentinel refused
    /// the message itself.
    fn server_statement(&mut self, client_name: &str) -> Option<(String, Option<Arc<Statement>>)> {
        if client_name.is_empty() {
            if self.unnamed.is_none() {
                // Whatever unnamed statement the server holds is another client's.
                self.refuse("26000", "unnamed prepared statement does not exist");
                return None;
            }
            if !self.unnamed_on_server
                && let Some(parse) = self.unnamed.clone()
            {
                self.unnamed_on_server = true;
                self.send(
                    &parse,
                    Some(Pending::Parse {
                        swallow: true,
                        name: None,
                        client: None,
                    }),
                );
            }
            return Some((String::new(), None));
        }
        match self.statements.get(client_name).cloned() {
            Some(stmt) => {
                if !self.server().prepared.contains(&stmt.server_name) {
                    if self.pool.generations.is_outdated(&stmt) {
                        // Preparing the old text again would return rows of a shape the client
                        // did not describe: it gets Postgres's error until it prepares again.
                        self.refuse("0A000", "cached plan must not change result type");
                        return None;
                    }
                    self.prepare_on_server(&stmt, true, Some(client_name.to_owned()));
                }
                Some((stmt.server_name.to_string(), Some(stmt)))
            }
            None if client_name.starts_with(SERVER_PREFIX) => {
                Some((format!("{client_name}_unknown"), None))
            }
            None => Some((client_name.to_owned(), None)),
        }
    }

    fn prepare_on_server(&mut self, stmt: &Statement, swallow: bool, client: Option<String>) {
        let name = stmt.server_name.clone();
        self.server().prepared.insert(name.clone());
        self.send(
            &stmt.parse.clone(),
            Some(Pending::Parse {
                swallow,
                name: Some(name),
                client,
            }),
        );
    }

    fn send(&mut self, bytes: &[u8], pending: Option<Pending>) {
        self.server().conn.wbuf.extend_from_slice(bytes);
        if let Some(p) = pending {
            if p.ends_with_ready() && self.busy_since.is_none() {
                let now = Instant::now();
                self.busy_since = Some(now);
                self.timeout_cancel_sent = false;
                self.query_started.get_or_insert(now);
                self.tx_started.get_or_insert(now);
            }
            self.pending.push_back(p);
        }
        self.idle_since = None;
    }

    // === server messages ===

    fn on_server_data(&mut self) -> PgResult<()> {
        loop {
            let frame = match self.server().conn.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => return Ok(()),
                Err(e) => {
                    tracing::warn!(error = %e, "protocol violation from the server");
                    return Err(self.server_lost(false));
                }
            };
            self.on_server_frame(&frame)?;
            self.emit_synthetic();
        }
    }

    fn on_server_frame(&mut self, frame: &Frame) -> PgResult<()> {
        use tag::backend as b;
        self.swallowing = matches!(
            self.pending.front(),
            Some(
                Pending::Query { swallow: true, .. }
                    | Pending::Bind { swallow: true, .. }
                    | Pending::Execute { swallow: true }
            )
        );
        if self.prefix_reply(frame) {
            return Ok(());
        }
        match frame.tag {
            b::DATA_ROW
            | b::COPY_DATA
            | b::COPY_DONE
            | b::COPY_OUT_RESPONSE
            | b::NOTIFICATION_RESPONSE
            | b::FUNCTION_CALL_RESPONSE
            | b::PARAMETER_DESCRIPTION => {
                self.pass_to_client(frame);
            }
            b::COPY_IN_RESPONSE | b::COPY_BOTH_RESPONSE => {
                self.start_copy_in();
                self.pass_to_client(frame);
            }
            b::ROW_DESCRIPTION | b::NO_DATA => {
                if matches!(self.pending.front(), Some(Pending::Describe { .. })) {
                    self.pending.pop_front();
                }
                self.pass_to_client(frame);
            }
            b::PARSE_COMPLETE => match self.pending.pop_front() {
                Some(Pending::Parse { swallow, name, .. }) => {
                    if let Some(name) = name {
                        self.pool.remember(name);
                    }
                    if !swallow {
                        self.pass_to_client(frame);
                    }
                }
                _ => return Err(self.out_of_step("ParseComplete")),
            },
            b::BIND_COMPLETE => match self.pending.pop_front() {
                Some(Pending::Bind { .. }) => self.pass_to_client(frame),
                _ => return Err(self.out_of_step("BindComplete")),
            },
            b::CLOSE_COMPLETE => match self.pending.pop_front() {
                Some(Pending::Close { swallow: true }) => {}
                Some(Pending::Close { swallow: false }) => self.pass_to_client(frame),
                _ => return Err(self.out_of_step("CloseComplete")),
            },
            b::COMMAND_COMPLETE => {
                if let BackendMessage::CommandComplete { tag } = BackendMessage::parse(frame)? {
                    self.note_command(tag);
                }
                if matches!(self.pending.front(), Some(Pending::Execute { .. })) {
                    self.pending.pop_front();
                }
                self.pass_to_client(frame);
            }
            b::EMPTY_QUERY_RESPONSE | b::PORTAL_SUSPENDED => {
                if matches!(self.pending.front(), Some(Pending::Execute { .. })) {
                    self.pending.pop_front();
                }
                self.pass_to_client(frame);
            }
            b::NOTICE_RESPONSE => {
                if !matches!(
                    self.pending.front(),
                    Some(Pending::Parse { swallow: true, .. })
                ) {
                    self.pass_to_client(frame);
                }
            }
            b::PARAMETER_STATUS => {
                if let BackendMessage::ParameterStatus { name, value } =
                    BackendMessage::parse(frame)?
                {
                    self.server().record_parameter(name, value);
                    if params::is_tracked(name) {
                        let key = name.to_ascii_lowercase();
                        self.server().applied.insert(key.clone(), value.to_owned());
                        self.desired.insert(key, value.to_owned());
                    }
                }
                // Even from Sentinel's own queries: the client must know the values in force.
                self.client.wbuf.extend_from_slice(frame.raw());
            }
            b::ERROR_RESPONSE => self.on_server_error(frame)?,
            b::READY_FOR_QUERY => {
                let BackendMessage::ReadyForQuery(status) = BackendMessage::parse(frame)? else {
                    unreachable!("tag checked")
                };
                match self.pending.pop_front() {
                    Some(p) if p.ends_with_ready() => {}
                    _ => return Err(self.out_of_step("ReadyForQuery")),
                }
                self.tx = status;
                self.copy_in = false;
                if self.pending.is_empty()
                    && !self.batch_open
                    && let Some(tenant) = self.tenant.as_mut()
                {
                    tenant.settle(status);
                }
                let more = self.pending.iter().any(Pending::ends_with_ready);
                if !more {
                    self.busy_since = None;
                }
                self.timed_ready(status, more);
                if status != TransactionStatus::Idle && self.pending.is_empty() {
                    self.idle_since = Some(Instant::now());
                }
                self.pass_to_client(frame);
            }
            other => {
                tracing::warn!(tag = %(other as char), "unexpected message from the server");
                return Err(self.server_lost(false));
            }
        }
        Ok(())
    }

    /// The server entered COPY FROM STDIN. Syncs the client pipelined behind the Execute and
    /// before its CopyDone reach the server during COPY, where they are ignored: the client
    /// sends another after CopyDone.
    fn start_copy_in(&mut self) {
        let ended = |p: &VecDeque<Pending>| p.iter().position(|e| matches!(e, Pending::CopyEnd));
        if matches!(self.pending.front(), Some(Pending::Execute { .. })) {
            let end = ended(&self.pending).unwrap_or(self.pending.len());
            let mut index = 0;
            self.pending.retain(|p| {
                index += 1;
                !(index > 1 && index <= end && matches!(p, Pending::Sync))
            });
            // Only a Sync after the client's CopyDone ends this batch.
            let end = ended(&self.pending).unwrap_or(self.pending.len());
            self.batch_open = !self
                .pending
                .iter()
                .skip(end)
                .any(|p| matches!(p, Pending::Sync));
        }
        match ended(&self.pending) {
            Some(at) => {
                self.pending.remove(at);
                self.copy_in = false;
            }
            None => self.copy_in = true,
        }
    }

    fn on_server_error(&mut self, frame: &Frame) -> PgResult<()> {
        let BackendMessage::ErrorResponse(fields) = BackendMessage::parse(frame)? else {
            unreachable!("tag checked")
        };
        self.copy_in = false;
        self.reset_on_success.clear();
        // Sentinel's own abort: the client already has Sentinel's error.
        let own_abort = matches!(self.pending.front(), Some(Pending::Abort));
        let injected = matches!(
            self.pending.front(),
            Some(Pending::Bind { swallow: true, .. } | Pending::Execute { swallow: true })
        );
        let prefix_shift = match self.pending.front() {
            Some(Pending::Query {
                prefix: Some(p), ..
            }) if p.chars > 0 => Some(p.chars),
            _ => None,
        };
        let code = fields.code().unwrap_or_default();
        if injected && code == "26000" {
            // Sentinel's tenant statement is gone from this server (a DEALLOCATE ALL Sentinel
            // did not see, inside a function): prepare it again next time.
            let server = self.server();
            server.prepared.remove(inject::statement_name(false));
            server.prepared.remove(inject::statement_name(true));
        }
        if let Some(
            Pending::Bind {
                statement: Some(stmt),
                ..
            }
            | Pending::Describe {
                statement: Some(stmt),
            },
        ) = self.pending.front()
        {
            let stmt = stmt.clone();
            // Postgres's routine name, not the (translatable) message, identifies the error.
            let stale_plan = code == "0A000" && fields.get(b'R') == Some("RevalidateCachedQuery");
            if stale_plan {
                self.pool.generations.outdate(&stmt);
            } else if code == "26000" {
                self.server().prepared.remove(&stmt.server_name);
            }
        }
        // In the extended protocol the server now skips everything up to the next Sync; if the
        // client has not sent that Sync yet, what it sends until then is dropped here too.
        if self.pending.front().is_some_and(Pending::is_extended) {
            while self
                .pending
                .front()
                .is_some_and(Pending::skipped_after_error)
            {
                match self.pending.pop_front() {
                    // The failed Parse, and any the server skips, leave no statement behind.
                    Some(Pending::Parse { name, client, .. }) => {
                        if let Some(name) = name {
                            self.server().prepared.remove(&name);
                        }
                        if let Some(client) = client {
                            self.statements.close(&client);
                        }
                    }
                    // Parse and Close Sentinel answered itself, which the server now skips.
                    Some(Pending::Synthetic(_, Some(undo))) => match undo {
                        Undo::Forget(name) => {
                            self.statements.close(&name);
                        }
                        Undo::Restore(name, stmt) => self.statements.restore(name, stmt),
                    },
                    _ => {}
                }
            }
            if !matches!(self.pending.front(), Some(Pending::Sync)) {
                self.discarding = true;
            }
        }
        if !own_abort {
            if let Some(shift) = prefix_shift {
                // Positions count from the start of the text Postgres got, which began with
                // Sentinel's prefix; the client's text starts after it.
                let mut out = BytesMut::new();
                shift_position(&mut out, &fields, shift);
                self.client.wbuf.extend_from_slice(&out);
            } else if injected {
                // Sentinel's own tenant statement failed: the client must know its batch did.
                self.client.wbuf.extend_from_slice(frame.raw());
            } else {
                self.pass_to_client(frame);
            }
        }
        Ok(())
    }

    /// Learns from command tags what the statement left behind on the server connection.
    fn note_command(&mut self, tag: &str) {
        match tag {
            "SET" | "LISTEN" | "DECLARE CURSOR" | "CREATE TABLE" | "SET CONSTRAINTS" => {
                self.dirty.session = true;
            }
            "RESET" => {
                self.dirty.session = true;
                if let Some(cmd) = self.reset_on_success.pop_front() {
                    self.apply_reset(&cmd);
                }
            }
            "PREPARE" => self.dirty.prepared = true,
            "DEALLOCATE ALL" | "DISCARD ALL" => {
                // Also when the client ran it through the server (inside a multi-statement
                // query, the extended protocol or session mode): its statements are gone.
                self.statements.clear();
                if let Some(tenant) = self.tenant.as_mut() {
                    tenant.forget_statements();
                    if tag == "DISCARD ALL" {
                        tenant.reset_all();
                    }
                }
                let server = self.server();
                server.prepared.clear();
                if tag == "DISCARD ALL" {
                    server.applied.clear();
                    self.desired = self.startup_params.clone();
                }
            }
            _ => {}
        }
    }

    fn pass_to_client(&mut self, frame: &Frame) {
        if !self.swallowing {
            self.client.wbuf.extend_from_slice(frame.raw());
        }
    }

    fn emit_synthetic(&mut self) {
        loop {
            match self.pending.front() {
                Some(Pending::Synthetic(reply, _)) => {
                    self.client.wbuf.extend_from_slice(reply);
                }
                Some(Pending::SyntheticReady) => {
                    encode::ready_for_query(&mut self.client.wbuf, self.tx);
                }
                // The COPY it ended never started (the statement failed first).
                Some(Pending::CopyEnd) => {}
                _ => return,
            }
            self.pending.pop_front();
        }
    }

    fn out_of_step(&mut self, what: &'static str) -> PgError {
        tracing::error!(message = what, pending = ?self.pending.front(), "server reply out of step with requests");
        if let Some(held) = self.held.take() {
            held.discard();
        }
        PgError::Unexpected(what)
    }

    /// The held server broke. `closed`: it went away (rather than misbehaving), which after a
    /// restart is true of every idle connection too.
    fn server_lost(&mut self, closed: bool) -> PgError {
        if let Some(held) = self.held.take() {
            self.cancel.detach();
            if closed {
                held.pool().close_idle();
            }
            held.discard();
        }
        PgError::UpstreamLost
    }

    // === holding and releasing servers ===

    async fn ensure_server(&mut self) -> PgResult<()> {
        if self.held.is_some() {
            return Ok(());
        }
        if self.drain_deadline.is_some() {
            return Err(PgError::ShuttingDown);
        }
        if self.shared.pause.is_paused() {
            self.info.set_state(ClientState::Waiting);
            let mut shutdown = self.shutdown.clone();
            tokio::select! {
                _ = self.shared.pause.wait() => {}
                // A paused client must not hold up a shutdown.
                _ = shutdown.changed() => return Err(PgError::ShuttingDown),
            }
        }
        self.info.set_state(ClientState::Waiting);
        let asked = Instant::now();
        let mut checkout = loop {
            let mut checkout = self.pool.checkout().await?;
            // A connection released moments ago is trusted as PgBouncer trusts any used within
            // server_check_delay; one idle longer is checked, which costs a read call.
            let server = checkout.server();
            if server.last_used.elapsed() < LIVENESS_CHECK_AFTER || is_alive(&mut server.conn) {
                break checkout;
            }
            checkout.discard();
        };
        self.shared.metrics.pg.pool_wait.observe(asked.elapsed());
        self.info.set_state(ClientState::Active);
        if let Some(sql) = params::sync_sql(&checkout.server().applied, &self.desired) {
            let outcome = housekeeping(checkout.server(), &sql).await;
            match outcome {
                Ok(None) => checkout.server().applied = self.desired.clone(),
                Ok(Some(e)) => {
                    checkout.release();
                    return Err(e);
                }
                Err(e) => {
                    checkout.discard();
                    return Err(e);
                }
            }
        }
        self.cancel.attach(checkout.server().cancel.clone());
        self.held = Some(checkout);
        Ok(())
    }

    /// In transaction mode, gives the server back as soon as the transaction is over.
    async fn maybe_release(&mut self) -> PgResult<()> {
        let Some(held) = self.held.as_mut() else {
            return Ok(());
        };
        let done = self.pending.is_empty()
            && !self.batch_open
            && !self.copy_in
            && self.tx == TransactionStatus::Idle
            && held.server().conn.wbuf.is_empty();
        if !done {
            return Ok(());
        }
        if self.mode == PoolMode::Transaction {
            self.release(false).await;
        }
        if self.drain_deadline.is_some() {
            return Err(PgError::ShuttingDown);
        }
        Ok(())
    }

    /// Returns the held server to the pool, resetting what the client left on it, or closes it
    /// when its state cannot be vouched for.
    async fn release(&mut self, full_reset: bool) {
        let Some(mut checkout) = self.held.take() else {
            return;
        };
        self.unnamed_on_server = false;
        let cancelled = self.cancel.detach();
        if cancelled {
            tracing::debug!("closing a server connection a cancel was sent to");
            return checkout.discard();
        }
        let server = checkout.server();
        let too_many = server.prepared.len() > MAX_SERVER_STATEMENTS;
        let dirty = std::mem::take(&mut self.dirty);
        if full_reset || dirty.session || dirty.prepared || too_many {
            let mut sql = String::from(RESET_SQL);
            if dirty.prepared || too_many {
                sql.push_str("; DEALLOCATE ALL");
            }
            match housekeeping(server, &sql).await {
                Ok(None) => {
                    server.applied.clear();
                    if dirty.prepared || too_many {
                        server.prepared.clear();
                    }
                }
                Ok(Some(e)) | Err(e) => {
                    tracing::warn!(error = %e, "server reset failed; closing the connection");
                    return checkout.discard();
                }
            }
        }
        checkout.release();
    }

    /// At the end of the session: a server left in a transaction is rolled back and reset, one
    /// in the middle of a reply is closed.
    async fn give_back_server(&mut self, clean_exit: bool) {
        let Some(held) = self.held.as_mut() else {
            return;
        };
        let mid_reply = !self.pending.is_empty() || self.copy_in;
        // An open batch holds an implicit transaction that ROLLBACK cannot end (a server
        // skipping to Sync ignores it) and a Sync would commit: close the connection.
        if mid_reply || self.batch_open || self.discarding || !held.server().conn.wbuf.is_empty() {
            if mid_reply && let Some(target) = self.cancel.cancel_own() {
                // Stop the backend's work now rather than when it next writes to a closed socket.
                let upstream = self.pool.upstream().clone();
                tokio::spawn(async move { upstream.cancel(&target).await });
            }
            if let Some(held) = self.held.take() {
                self.cancel.detach();
                held.discard();
            }
            return;
        }
        let in_tx = self.tx != TransactionStatus::Idle;
        if in_tx {
            match housekeeping(held.server(), "ROLLBACK").await {
                Ok(_) => self.tx = TransactionStatus::Idle,
                Err(_) => {
                    if let Some(held) = self.held.take() {
                        self.cancel.detach();
                        held.discard();
                    }
                    return;
                }
            }
        }
        let full = in_tx || !clean_exit || self.mode == PoolMode::Session;
        self.release(full).await;
    }

    // === time ===

    /// A ReadyForQuery arrived: times the request it ends and, back at idle, its transaction.
    /// With more requests pipelined behind it, the next one is timed from now.
    fn timed_ready(&mut self, status: TransactionStatus, more: bool) {
        let now = Instant::now();
        let metrics = &self.shared.metrics.pg;
        if let Some(started) = self.query_started.take() {
            metrics.query_duration.observe(now - started);
        }
        if more {
            self.query_started = Some(now);
        }
        if status == TransactionStatus::Idle
            && let Some(started) = self.tx_started.take()
        {
            metrics
                .transactions
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            metrics.transaction_duration.observe(now - started);
        }
        if more && self.tx_started.is_none() {
            // The next pipelined request starts the next transaction.
            self.tx_started = Some(now);
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let pg = &self.live.config.postgres;
        let query = (!pg.query_timeout.is_zero() && !self.timeout_cancel_sent)
            .then(|| self.busy_since.map(|t| t + pg.query_timeout))
            .flatten();
        let idle = (!pg.idle_transaction_timeout.is_zero() && self.held.is_some())
            .then(|| self.idle_since.map(|t| t + pg.idle_transaction_timeout))
            .flatten();
        [query, idle, self.drain_deadline]
            .into_iter()
            .flatten()
            .min()
    }

    async fn on_deadline(&mut self) -> PgResult<()> {
        let now = Instant::now();
        if self.drain_deadline.is_some_and(|d| d <= now) {
            return Err(PgError::ShuttingDown);
        }
        let pg = &self.live.config.postgres;
        if self
            .idle_since
            .is_some_and(|t| t + pg.idle_transaction_timeout <= now)
            && !pg.idle_transaction_timeout.is_zero()
        {
            tracing::info!("idle-in-transaction timeout: rolling back and closing the client");
            return Err(PgError::IdleTransactionTimeout);
        }
        if self.busy_since.is_some_and(|t| t + pg.query_timeout <= now)
            && !pg.query_timeout.is_zero()
        {
            self.timeout_cancel_sent = true;
            if let Some(target) = self.cancel.cancel_own() {
                tracing::info!("query_timeout: cancelling the running query");
                let upstream = self.pool.upstream().clone();
                tokio::spawn(async move {
                    if let Err(e) = upstream.cancel(&target).await {
                        tracing::warn!(error = %e, "cannot send cancel request");
                    }
                });
            }
        }
        Ok(())
    }

    /// On shutdown a client between transactions is let go at once; one inside a transaction
    /// may finish it within the grace period.
    fn start_drain(&mut self) -> PgResult<()> {
        let between_transactions = self.pending.is_empty()
            && !self.batch_open
            && !self.copy_in
            && self.tx == TransactionStatus::Idle;
        if self.held.is_none() || between_transactions {
            return Err(PgError::ShuttingDown);
        }
        self.drain_deadline = Some(Instant::now() + self.live.config.process.shutdown_grace);
        Ok(())
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Whether an idle server connection still looks usable: one Postgres has closed (or sent a
/// FATAL to, as on shutdown) is readable while idle.
fn is_alive(conn: &mut Conn) -> bool {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};
    let mut cx = Context::from_waker(Waker::noop());
    let mut fill = std::pin::pin!(conn.fill());
    matches!(fill.as_mut().poll(&mut cx), Poll::Pending)
}

/// Runs a query of Sentinel's own on a server with nothing in flight and reads it to its end.
/// Returns the first error Postgres reported, if any.
async fn housekeeping(server: &mut ServerConn, sql: &str) -> PgResult<Option<PgError>> {
    let run = async {
        encode::query(&mut server.conn.wbuf, sql);
        server
            .conn
            .flush()
            .await
            .map_err(|_| PgError::UpstreamLost)?;
        let mut first_error = None;
        loop {
            let frame = server.conn.read_frame().await.map_err(|e| match e {
                ReadError::Wire(w) => PgError::Protocol(w),
                ReadError::Io(_) | ReadError::Eof => PgError::UpstreamLost,
            })?;
            match BackendMessage::parse(&frame)? {
                BackendMessage::ParameterStatus { name, value } => {
                    server.record_parameter(name, value);
                }
                BackendMessage::ErrorResponse(e) if first_error.is_none() => {
                    first_error = Some(PgError::Server {
                        code: e.code().unwrap_or("XX000").to_owned(),
                        message: e.message().unwrap_or("error").to_owned(),
                    });
                }
                BackendMessage::ReadyForQuery(status) => {
                    if status != TransactionStatus::Idle {
                        return Err(PgError::Unexpected("transaction left open by housekeeping"));
                    }
                    return Ok(first_error);
                }
                _ => {}
            }
        }
    };
    tokio::time::timeout(HOUSEKEEPING_TIMEOUT, run)
        .await
        .map_err(|_| PgError::UpstreamLost)?
}
