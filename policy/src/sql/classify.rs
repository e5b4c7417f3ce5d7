//! `classify`: parse a query text once and combine what each of its statements says into one
//! [`Verdict`].

use std::panic::catch_unwind;

use super::forbidden::Forbidden;
use super::statement;
use super::tenant_command;
use super::tree::to_tree;
use super::verdict::{Rules, TenantCommand, TxEffects, Verdict, VerdictKind};
use super::walk::walk;

/// Classifies a query text (one or more statements) by parsing it with `pg_query`.
///
/// Precedence when statements disagree: `Unparsable` > `Forbidden` (the first reason found, in
/// statement order) > `TenantCommand` (only when it is the only statement) > `NeedsTenant` >
/// `Free`. Never panics: a parser failure of any kind is `Unparsable`.
pub fn classify(sql: &str, rules: &Rules) -> Verdict {
    // Parsing, decoding the protobuf tree and copying it are recursive, one frame per level of
    // nesting, and a query may nest thousands of levels deep (generated UNION ALLs, chained
    // operators, nested subqueries). They run on a stack of their own, large enough for the
    // deepest tree the parser accepts, instead of failing at a fixed depth or overflowing the
    // caller's. The stack is mapped lazily: only the pages a deep tree touches are used.
    stacker::grow(CLASSIFY_STACK_BYTES, || classify_here(sql, rules))
}

/// Stack for one classification (mapped, not committed, until used).
const CLASSIFY_STACK_BYTES: usize = 32 << 20;

fn classify_here(sql: &str, rules: &Rules) -> Verdict {
    let parsed = match catch_unwind(|| pg_query::parse(sql, 0)) {
        Ok(Ok(parsed)) => parsed,
        Ok(Err(error)) => return unparsable(parse_error_message(error)),
        Err(_) => return unparsable("the statement could not be checked".to_owned()),
    };
    let stmts = &parsed.protobuf.stmts;
    let fingerprint = catch_unwind(|| pg_query::fingerprint(sql, 0, 0))
        .ok()
        .and_then(Result::ok)
        .map_or(0, |f| f.value);

    let mut acc = Accumulator {
        control_only: !stmts.is_empty(),
        ..Accumulator::default()
    };
    let multi = stmts.len() > 1;
    for raw in stmts {
        let Ok(tree) = to_tree(&raw.stmt) else {
            return unparsable("the statement could not be checked".to_owned());
        };
        let Some(stmt) = tree.as_struct() else {
            continue;
        };

        if let Some(command) = tenant_command::recognize(stmt, rules) {
            acc.constants_matter = true;
            acc.control_only = false;
            if multi {
                acc.forbid(Forbidden::TenantSettingInMultiStatement);
            }
            match command {
                Ok(command) => acc.command = acc.command.take().or(Some(command)),
                Err(reason) => acc.forbid(reason),
            }
            continue;
        }

        let top = statement::facts(stmt);
        let facts = walk(stmt, rules);
        // Utility statements read constants (option values, setting values); so do set_config
        // calls (which setting, which value, local or not).
        let plain_dml = matches!(
            stmt.name,
            "SelectStmt" | "InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt"
        );
        acc.constants_matter |= !plain_dml || facts.calls_set_config;
        if facts.needs_tenant {
            acc.needs_tenant = true;
            if acc.tx.ends || acc.tx.rolls_back_to_savepoint || acc.tx.resets_settings {
                acc.tx.tenant_after_end = true;
            }
        }
        if let Some(reason) = facts.forbidden {
            acc.forbid(reason);
        }
        acc.relations.extend(facts.relations);
        acc.session_state |= facts.session_state || top.session_state;
        acc.no_transaction_block |= top.no_transaction_block;
        acc.tx.begins |= top.begins;
        acc.tx.ends |= top.ends;
        acc.tx.rolls_back_to_savepoint |= top.rolls_back_to_savepoint;
        acc.tx.resets_settings |= top.resets_settings;
        acc.control_only &= top.control_only;
    }

    let kind = if let Some(reason) = acc.forbidden {
        VerdictKind::Forbidden(reason)
    } else if let (Some(command), false) = (acc.command, multi) {
        VerdictKind::TenantCommand(command)
    } else if acc.needs_tenant {
        VerdictKind::NeedsTenant
    } else {
        VerdictKind::Free
    };
    let mut relations = acc.relations;
    relations.sort_unstable();
    relations.dedup();
    Verdict {
        kind,
        relations,
        fingerprint,
        statements: stmts.len(),
        no_transaction_block: acc.no_transaction_block,
        session_state: acc.session_state,
        tx: TxEffects {
            control_only: acc.control_only,
            ..acc.tx
        },
        constants_matter: acc.constants_matter,
    }
}

/// What the statements of one text add up to so far.
#[derive(Default)]
struct Accumulator {
    forbidden: Option<Forbidden>,
    command: Option<TenantCommand>,
    needs_tenant: bool,
    relations: Vec<String>,
    no_transaction_block: bool,
    session_state: bool,
    tx: TxEffects,
    constants_matter: bool,
    control_only: bool,
}

impl Accumulator {
    fn forbid(&mut self, reason: Forbidden) {
        self.forbidden.get_or_insert(reason);
    }
}

fn unparsable(message: String) -> Verdict {
    Verdict {
        kind: VerdictKind::Unparsable {
            message,
            cursor: None,
        },
        relations: Vec::new(),
        fingerprint: 0,
        statements: 0,
        no_transaction_block: false,
        session_state: false,
        tx: TxEffects::default(),
        constants_matter: true,
    }
}

/// A message for the client. The parser's own (`syntax error at or near "x"`) quotes only the
/// client's text; the other failures get fixed words.
fn parse_error_message(error: pg_query::Error) -> String {
    match error {
        pg_query::Error::Parse(message) => message,
        pg_query::Error::Conversion(_) => "the query text contains a zero byte".to_owned(),
        pg_query::Error::Decode(_) => "the statement could not be decoded for checking".to_owned(),
        _ => "the statement could not be checked".to_owned(),
    }
}
