//! Statement types that are refused, wherever they sit in the tree, and `SET` clauses nested in
//! other statements (`CREATE FUNCTION … SET`, `ALTER DATABASE … SET`).
//!
//! Matched by node type name on the generic tree, so a statement wrapped in another (`EXPLAIN`,
//! `PREPARE`, `CREATE SCHEMA … CREATE …`) is refused the same as alone.

use pg_query::protobuf::{AlterTableType, ObjectType, VariableSetKind};

use super::calls::setting_write;
use super::forbidden::Forbidden;
use super::tree::Struct;
use super::verdict::Rules;

/// Why the node `node` is refused, if it is. `root` is the statement's top node: a `SET` clause
/// nested in `ALTER DATABASE` is role DDL, nested anywhere else (function definitions) a
/// function that switches the context.
pub(super) fn refused(node: &Struct, root: &Struct, rules: &Rules) -> Option<Forbidden> {
    match node.name {
        "CreateRoleStmt" | "AlterRoleStmt" | "DropRoleStmt" | "GrantRoleStmt"
        | "AlterRoleSetStmt" | "ReassignOwnedStmt" => Some(Forbidden::RoleDdl),
        "CreatePolicyStmt" | "AlterPolicyStmt" => Some(Forbidden::PolicyDdl),
        "DropStmt" if is(node.int("remove_type"), ObjectType::ObjectPolicy as i32) => {
            Some(Forbidden::PolicyDdl)
        }
        "RenameStmt" => match node.int("rename_type") {
            t if is(t, ObjectType::ObjectRole as i32) => Some(Forbidden::RoleDdl),
            t if is(t, ObjectType::ObjectPolicy as i32) => Some(Forbidden::PolicyDdl),
            _ => None,
        },
        "AlterTableCmd" => {
            let subtype = node.int("subtype");
            (is(subtype, AlterTableType::AtDisableRowSecurity as i32)
                || is(subtype, AlterTableType::AtNoForceRowSecurity as i32))
            .then_some(Forbidden::RlsDisable)
        }
        "AlterSystemStmt" => Some(Forbidden::AlterSystem),
        "LoadStmt" => Some(Forbidden::Load),
        "CopyStmt" if node.bool("is_program") => Some(Forbidden::CopyProgram),
        "DoStmt" if !rules.allow_do => Some(Forbidden::DoBlock),
        "TruncateStmt" => Some(Forbidden::Truncate),
        "VariableSetStmt" => variable_set(node, std::ptr::eq(node, root), root, rules),
        // Server-side statement names Sentinel uses start with this (proxy `SERVER_PREFIX`);
        // SQL names are case-folded unless quoted, so compare without case.
        "PrepareStmt" | "ExecuteStmt" | "DeallocateStmt"
            if node
                .str("name")
                .get(..9)
                .is_some_and(|p| p.eq_ignore_ascii_case("sentinel_")) =>
        {
            Some(Forbidden::ReservedName)
        }
        _ => None,
    }
}

fn is(value: i64, variant: i32) -> bool {
    value == i64::from(variant)
}

/// A `SET`/`RESET` node. At the top: `SET ROLE` and `SET SESSION AUTHORIZATION` in every form
/// (tenant `SET`s never get here: they are tenant commands). Nested: any clause that sets or
/// resets the tenant setting, the role or the session authorization.
fn variable_set(node: &Struct, at_root: bool, root: &Struct, rules: &Rules) -> Option<Forbidden> {
    let name = node.str("name");
    if node.int("kind") == i64::from(VariableSetKind::VarResetAll as i32) {
        return None;
    }
    let reason = setting_write(name, rules)?;
    if at_root {
        // A top-level tenant SET is a tenant command; should one get here, refuse it.
        return Some(reason);
    }
    Some(match root.name {
        "AlterDatabaseSetStmt" | "AlterRoleSetStmt" => Forbidden::RoleDdl,
        _ => Forbidden::FunctionSetsTenant,
    })
}
