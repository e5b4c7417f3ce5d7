//! The session's tenancy side: asking the tenant state about each client message, refusing
//! what it refuses, and setting the tenant on the server in the client's transaction (and
//! hiding the replies to that from the client).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use sentinel_policy::tenant::TenantId;
use sentinel_wire::{Frame, FrontendMessage, TransactionStatus, decode_frame, encode, tag};

use super::{Pending, Session};
use crate::pg::error::PgResult;
use crate::pg::tenancy::state::{QueryPlan, Refused, TenantState};
use crate::pg::tenancy::{Refusal, inject};

impl Session {
    /// Tenancy's say on a client message: true when Sentinel answered or refused it here.
    pub(super) fn tenancy_gate(&mut self, msg: &FrontendMessage<'_>) -> bool {
        enum Action {
            Pass,
            Reply(BytesMut),
            ReplyReady(BytesMut),
            RefuseQuery(Refused),
            RefuseExtended(Refused),
            AlreadyExists(String),
        }
        let Some(tenant) = self.tenant.as_mut() else {
            return false;
        };
        let action = match msg {
            FrontendMessage::Query { sql } => match tenant.on_query(sql) {
                Ok(QueryPlan::Forward {
                    prefix,
                    session_state,
                }) => {
                    self.next_prefix = prefix;
                    self.dirty.session |= session_state;
                    Action::Pass
                }
                Ok(QueryPlan::Answer(out)) => Action::ReplyReady(out),
                Err(refused) => Action::RefuseQuery(refused),
            },
            FrontendMessage::FunctionCall => Action::RefuseQuery((Refusal::FunctionCall, 0)),
            FrontendMessage::Parse {
                name,
                sql,
                param_types,
            } => {
                if !name.is_empty() && tenant.is_local_statement(name) {
                    Action::AlreadyExists((*name).to_owned())
                } else if !name.is_empty() && self.statements.get(name).is_some() {
                    Action::Pass // refused as Postgres would when forwarded
                } else {
                    match tenant.on_parse(name, sql, param_types) {
                        Ok(Some(out)) => Action::Reply(out),
                        Ok(None) => Action::Pass,
                        Err(refused) => Action::RefuseExtended(refused),
                    }
                }
            }
            FrontendMessage::Bind {
                portal,
                statement,
                rest,
            } => match tenant.local_bind(portal, statement, rest) {
                Some(Ok(out)) => Action::Reply(out),
                Some(Err(refusal)) => Action::RefuseExtended((refusal, 0)),
                None => match tenant.on_bind(statement) {
                    Ok(plan) => {
                        self.next_inject = plan.inject;
                        self.dirty.session |= plan.session_state;
                        Action::Pass
                    }
                    Err(refused) => Action::RefuseExtended(refused),
                },
            },
            FrontendMessage::Describe { kind, name } => match tenant.local_describe(*kind, name) {
                Some(out) => Action::Reply(out),
                None => Action::Pass,
            },
            FrontendMessage::Execute { portal, .. } => match tenant.local_execute(portal) {
                Some(Ok(out)) => Action::Reply(out),
                Some(Err(refused)) => Action::RefuseExtended(refused),
                None => Action::Pass,
            },
            FrontendMessage::Close { kind, name } => match tenant.local_close(*kind, name) {
                Some(out) => Action::Reply(out),
                None => Action::Pass,
            },
            FrontendMessage::Sync => {
                tenant.on_sync();
                Action::Pass
            }
            _ => Action::Pass,
        };
        let action = match action {
            Action::RefuseQuery((refusal, fingerprint))
            | Action::RefuseExtended((refusal, fingerprint))
                if !self.live.tenancy.config.enforce =>
            {
                // Report-only: counted and logged as a refusal, then run as sent. What it does
                // to the server connection is unknown (a session set_config of the tenant, say):
                // reset it before another client gets it.
                self.live
                    .tenancy
                    .reported(&refusal, fingerprint, &self.user);
                self.next_prefix = None;
                self.next_inject = None;
                self.dirty.session = true;
                if let (FrontendMessage::Parse { name, .. }, Some(tenant)) =
                    (msg, self.tenant.as_mut())
                {
                    tenant.let_through(name);
                }
                Action::Pass
            }
            other => other,
        };
        match action {
            Action::Pass => return false,
            Action::Reply(out) => self.respond(out.freeze()),
            Action::ReplyReady(out) => {
                self.respond(out.freeze());
                self.respond_ready();
            }
            Action::RefuseQuery(refused) => self.refuse_query(refused),
            Action::RefuseExtended((refusal, fingerprint)) => {
                self.live.tenancy.refused(&refusal, fingerprint, &self.user);
                let reply = self.refusal_reply(&refusal);
                self.refuse_with(reply);
            }
            Action::AlreadyExists(name) => {
                self.refuse(
                    "42P05",
                    &format!("prepared statement \"{name}\" already exists"),
                );
            }
        }
        true
    }

    /// A Query or Parse whose text carries signed tenant tokens, rebuilt with those comments
    /// blanked out: checked, they have done their job, and on the server other sessions of the
    /// same role could read them in `pg_stat_activity` and replay them.
    pub(super) fn redacted(&self, msg: &FrontendMessage<'_>) -> PgResult<Option<Frame>> {
        let mut buf = BytesMut::new();
        match msg {
            FrontendMessage::Query { sql } => match self.live.tenancy.redact(sql) {
                Some(text) => encode::query(&mut buf, &text),
                None => return Ok(None),
            },
            FrontendMessage::Parse {
                name,
                sql,
                param_types,
            } => match self.live.tenancy.redact(sql) {
                Some(text) => encode::parse_raw_types(&mut buf, name, &text, param_types),
                None => return Ok(None),
            },
            _ => return Ok(None),
        }
        Ok(decode_frame(&mut buf, usize::MAX)?)
    }

    /// Refuses a simple Query (or function call) for tenancy: the error, then ReadyForQuery.
    /// Inside a transaction block the server's transaction is made to fail as well, as it would
    /// after an error of Postgres's own, so a later COMMIT cannot keep half of the work.
    fn refuse_query(&mut self, (refusal, fingerprint): Refused) {
        self.live.tenancy.refused(&refusal, fingerprint, &self.user);
        self.next_prefix = None;
        let in_block = self.tx != TransactionStatus::Idle
            || self.tenant.as_ref().is_some_and(TenantState::block_open);
        if self.held.is_some() && in_block {
            let mut abort = BytesMut::new();
            encode::query(&mut abort, "sentinel: statement refused");
            self.send(
                &abort,
                Some(Pending::Query {
                    swallow: true,
                    prefix: None,
                }),
            );
        }
        let reply = self.refusal_reply(&refusal);
        self.respond(reply);
        self.respond_ready();
    }

    fn refusal_reply(&self, refusal: &Refusal) -> Bytes {
        let mut out = BytesMut::new();
        let hint = matches!(refusal, Refusal::NoContext).then(|| self.live.tenancy.hint());
        encode::error_response(
            &mut out,
            "ERROR",
            refusal.sqlstate(),
            &refusal.message(),
            hint,
        );
        out.freeze()
    }

    /// Swallows the replies of the tenant prefix of a simple Query. True when `frame` was one.
    pub(super) fn prefix_reply(&mut self, frame: &Frame) -> bool {
        use tag::backend as b;
        let Some(Pending::Query {
            prefix: Some(prefix),
            ..
        }) = self.pending.front_mut()
        else {
            return false;
        };
        if !prefix.replying {
            return false;
        }
        match frame.tag {
            b::ROW_DESCRIPTION | b::DATA_ROW => true,
            b::COMMAND_COMPLETE => {
                prefix.replying = false;
                true
            }
            b::ERROR_RESPONSE => {
                // The prefix itself failed (the client's statements will not run): its error is
                // the client's answer, with its position left as it is.
                prefix.replying = false;
                prefix.chars = 0;
                false
            }
            _ => false,
        }
    }

    /// Sends the statement that sets the tenant for the transaction, ahead of the client's Bind.
    pub(super) fn inject_tenant(&mut self, tenant: &TenantId, timeout: Option<&str>) {
        let name = inject::statement_name(timeout.is_some());
        if !self.server().prepared.contains(name) {
            let mut parse = BytesMut::new();
            let setting = self.live.tenancy.config.setting.clone();
            inject::statement(&mut parse, &setting, timeout.is_some());
            let name: Arc<str> = name.into();
            self.server().prepared.insert(name.clone());
            self.send(
                &parse,
                Some(Pending::Parse {
                    swallow: true,
                    name: Some(name),
                    client: None,
                }),
            );
        }
        let mut out = BytesMut::new();
        inject::bind(&mut out, tenant, timeout);
        self.send(
            &out,
            Some(Pending::Bind {
                statement: None,
                swallow: true,
            }),
        );
        out.clear();
        inject::execute(&mut out);
        self.send(&out, Some(Pending::Execute { swallow: true }));
        out.clear();
        inject::close(&mut out);
        self.send(&out, Some(Pending::Close { swallow: true }));
    }
}

/// Re-encodes an ErrorResponse with its position (`P`) moved back by `shift` characters.
pub(super) fn shift_position(
    out: &mut BytesMut,
    fields: &sentinel_wire::ErrorFields<'_>,
    shift: u32,
) {
    let moved: Vec<(u8, String)> = fields
        .fields
        .iter()
        .map(|(code, value)| {
            let value = match (*code, value.parse::<u32>()) {
                (b'P', Ok(p)) if p > shift => (p - shift).to_string(),
                _ => (*value).to_owned(),
            };
            (*code, value)
        })
        .collect();
    let borrowed: Vec<(u8, &str)> = moved.iter().map(|(c, v)| (*c, v.as_str())).collect();
    encode::error_fields(out, tag::backend::ERROR_RESPONSE, &borrowed);
}
