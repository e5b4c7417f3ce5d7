//! Facts about a top-level statement as a whole: transaction control, whether it may run inside
//! a transaction block, and session state it leaves behind by its kind.
//!
//! These only mean something for a statement at the top of the text (a `BEGIN` cannot be nested),
//! so they are read from the statement's top node; what can sit anywhere (relations, calls,
//! temporary objects) is the walker's.

use pg_query::protobuf::{
    AlterSubscriptionType, DiscardMode, ReindexObjectType, TransactionStmtKind, VariableSetKind,
};

use super::literal;
use super::tree::{Struct, Value};

/// `CURSOR_OPT_HOLD` from Postgres' `parsenodes.h`: `DECLARE … WITH HOLD`.
const CURSOR_OPT_HOLD: i64 = 0x0020;

/// What one top-level statement does outside the rows it touches.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct StatementFacts {
    pub(super) begins: bool,
    pub(super) ends: bool,
    pub(super) rolls_back_to_savepoint: bool,
    pub(super) no_transaction_block: bool,
    pub(super) session_state: bool,
    pub(super) resets_settings: bool,
    pub(super) control_only: bool,
}

/// Reads the facts of the top-level statement `stmt`.
pub(super) fn facts(stmt: &Struct) -> StatementFacts {
    let mut facts = StatementFacts {
        no_transaction_block: no_transaction_block(stmt),
        session_state: session_state(stmt),
        resets_settings: stmt.name == "VariableSetStmt"
            && stmt.int("kind") == i64::from(VariableSetKind::VarResetAll as i32),
        control_only: stmt.name == "TransactionStmt"
            || (stmt.name == "VariableSetStmt"
                && stmt
                    .str("name")
                    .get(..11)
                    .is_some_and(|n| n.eq_ignore_ascii_case("transaction"))),
        ..StatementFacts::default()
    };
    if stmt.name == "TransactionStmt" {
        let kind = stmt.int("kind");
        let is = |k: TransactionStmtKind| kind == i64::from(k as i32);
        let chain = stmt.bool("chain");
        facts.begins = is(TransactionStmtKind::TransStmtBegin)
            || is(TransactionStmtKind::TransStmtStart)
            || chain;
        facts.ends = is(TransactionStmtKind::TransStmtCommit)
            || is(TransactionStmtKind::TransStmtRollback)
            || is(TransactionStmtKind::TransStmtPrepare)
            || is(TransactionStmtKind::TransStmtCommitPrepared)
            || is(TransactionStmtKind::TransStmtRollbackPrepared);
        facts.rolls_back_to_savepoint = is(TransactionStmtKind::TransStmtRollbackTo);
    }
    facts
}

/// Statements Postgres refuses inside a transaction block (`PreventInTransactionBlock`).
fn no_transaction_block(stmt: &Struct) -> bool {
    match stmt.name {
        // VACUUM, not a plain ANALYZE.
        "VacuumStmt" => stmt.bool("is_vacuumcmd"),
        "IndexStmt" => stmt.bool("concurrent"),
        "DropStmt" => stmt.bool("concurrent"),
        "ReindexStmt" => {
            let kind = stmt.int("kind");
            let is = |k: ReindexObjectType| kind == i64::from(k as i32);
            is(ReindexObjectType::ReindexObjectSchema)
                || is(ReindexObjectType::ReindexObjectSystem)
                || is(ReindexObjectType::ReindexObjectDatabase)
                || has_option(stmt.seq("params"), "concurrently")
        }
        "CreatedbStmt"
        | "DropdbStmt"
        | "CreateTableSpaceStmt"
        | "DropTableSpaceStmt"
        | "AlterSystemStmt"
        | "CreateSubscriptionStmt"
        | "DropSubscriptionStmt" => true,
        // ALTER DATABASE … SET TABLESPACE moves the database.
        "AlterDatabaseStmt" => has_option(stmt.seq("options"), "tablespace"),
        "AlterSubscriptionStmt" => {
            let kind = stmt.int("kind");
            kind == i64::from(AlterSubscriptionType::AlterSubscriptionRefresh as i32)
                || kind == i64::from(AlterSubscriptionType::AlterSubscriptionSetPublication as i32)
                || kind == i64::from(AlterSubscriptionType::AlterSubscriptionAddPublication as i32)
                || kind == i64::from(AlterSubscriptionType::AlterSubscriptionDropPublication as i32)
        }
        // CLUSTER without a table reclusters every table, one transaction each.
        "ClusterStmt" => stmt.child("relation").is_none(),
        "DiscardStmt" => stmt.int("target") == i64::from(DiscardMode::DiscardAll as i32),
        "TransactionStmt" => {
            let kind = stmt.int("kind");
            kind == i64::from(TransactionStmtKind::TransStmtCommitPrepared as i32)
                || kind == i64::from(TransactionStmtKind::TransStmtRollbackPrepared as i32)
        }
        _ => false,
    }
}

/// A `DefElem` option named `name` that is on (no argument, or not a false literal).
fn has_option(options: &[Value], name: &str) -> bool {
    options.iter().filter_map(|o| o.named("DefElem")).any(|d| {
        d.str("defname").eq_ignore_ascii_case(name)
            && !d.get("arg").is_some_and(|arg| {
                // `(CONCURRENTLY false)`: a String node; `(CONCURRENTLY 0)`: an Integer.
                let text = literal::string(arg)
                    .map(str::to_owned)
                    .or_else(|| arg.named("Integer").map(|i| i.int("ival").to_string()));
                matches!(text.as_deref(), Some("false" | "off" | "0"))
            })
    })
}

/// Statement kinds that leave state on the connection past the transaction. (Temporary objects
/// and calls are found by the walker, wherever they are.)
fn session_state(stmt: &Struct) -> bool {
    match stmt.name {
        "VariableSetStmt" => {
            let kind = stmt.int("kind");
            let sets = [
                VariableSetKind::VarSetValue,
                VariableSetKind::VarSetDefault,
                VariableSetKind::VarSetCurrent,
                VariableSetKind::VarSetMulti,
            ]
            .iter()
            .any(|k| kind == i64::from(*k as i32));
            // SET TRANSACTION … and SET TRANSACTION SNAPSHOT end with the transaction; SET SESSION
            // CHARACTERISTICS AS TRANSACTION does not.
            let transaction_only = stmt
                .str("name")
                .to_ascii_uppercase()
                .starts_with("TRANSACTION");
            sets && !stmt.bool("is_local") && !transaction_only
        }
        // A DO block (with allow_do) may set anything for the session.
        "ListenStmt" | "PrepareStmt" | "LoadStmt" | "DoStmt" => true,
        "DeclareCursorStmt" => stmt.int("options") & CURSOR_OPT_HOLD != 0,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::super::tree::to_tree;
    use super::*;

    fn top(sql: &str) -> StatementFacts {
        let parsed = pg_query::parse(sql, 0).expect("parses");
        let tree = to_tree(&parsed.protobuf.stmts[0].stmt).expect("tree");
        facts(tree.as_struct().expect("statement"))
    }

    #[test]
    fn options_switched_off_do_not_count() {
        assert!(top("REINDEX (CONCURRENTLY) TABLE t").no_transaction_block);
        assert!(top("REINDEX (CONCURRENTLY true) TABLE t").no_transaction_block);
        assert!(!top("REINDEX (CONCURRENTLY false) TABLE t").no_transaction_block);
        assert!(!top("REINDEX (CONCURRENTLY off, VERBOSE) TABLE t").no_transaction_block);
        assert!(!top("REINDEX (CONCURRENTLY 0) TABLE t").no_transaction_block);
        assert!(top("REINDEX (CONCURRENTLY 1) TABLE t").no_transaction_block);
    }

    #[test]
    fn chain_begins_a_new_transaction() {
        let f = top("ROLLBACK AND CHAIN");
        assert!(f.ends && f.begins);
        let f = top("COMMIT AND NO CHAIN");
        assert!(f.ends && !f.begins);
    }
}
