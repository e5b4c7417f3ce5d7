//! Why a statement is refused.
//!
//! Each variant is one way to step outside the tenant context or around row-level security.
//! Messages go to the client as they are: they say what is refused and why, and never quote the
//! query. Labels are fixed snake_case strings for the refusal metric.

use std::fmt;

/// A reason to refuse a statement for everyone but bypass users. SQLSTATE `42501`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Forbidden {
    /// `SET [LOCAL|SESSION] ROLE`, `RESET ROLE`, `set_config('role', …)`.
    SetRole,
    /// `SET|RESET SESSION AUTHORIZATION`, `set_config('session_authorization', …)`.
    SessionAuthorization,
    /// `set_config` of the tenant setting anywhere but the standalone `SELECT set_config(…)`, or
    /// a tenant `SET` in a form Postgres would not take as one value.
    TenantSettingWrite,
    /// `set_config` whose setting name is not a string literal: which setting it writes cannot be
    /// known before it runs.
    DynamicSettingName,
    /// A tenant `SET`/`RESET`/`set_config` in a text of more than one statement.
    TenantSettingInMultiStatement,
    /// `CREATE|ALTER|DROP ROLE|USER|GROUP`, `GRANT|REVOKE` role membership, `ALTER ROLE … SET`,
    /// `REASSIGN OWNED`, `ALTER DATABASE … SET` of the tenant setting, role or session
    /// authorization.
    RoleDdl,
    /// `CREATE FUNCTION|PROCEDURE … SET` or `ALTER FUNCTION|PROCEDURE|ROUTINE … SET` of the
    /// tenant setting, role or session authorization.
    FunctionSetsTenant,
    /// `ALTER TABLE … DISABLE ROW LEVEL SECURITY` or `… NO FORCE ROW LEVEL SECURITY`.
    RlsDisable,
    /// `CREATE|ALTER|DROP POLICY`, `ALTER POLICY … RENAME`.
    PolicyDdl,
    /// `ALTER SYSTEM`.
    AlterSystem,
    /// `LOAD`.
    Load,
    /// `COPY … TO|FROM PROGRAM`.
    CopyProgram,
    /// `DO` blocks, unless the rules allow them.
    DoBlock,
    /// `TRUNCATE`, which row-level security does not apply to.
    Truncate,
    /// Built-ins that run SQL text the proxy cannot see (`query_to_xml`, `table_to_xml`,
    /// `ts_stat`, …).
    DynamicSql,
    /// SQL-level `PREPARE`, `EXECUTE` or `DEALLOCATE` of a statement named `sentinel_…`: those
    /// names are Sentinel's own on the server (the statement that sets the tenant among them).
    ReservedName,
    /// `CREATE [OR REPLACE] FUNCTION|PROCEDURE`, unless the rules allow them.
    FunctionDefinition,
    /// A change of `standard_conforming_strings`: with it off, the server would read string
    /// literals (`'a\'…'`) differently from the classifier, which assumes it on.
    StringSyntax,
}

impl Forbidden {
    /// Every variant, for exhaustive tests and metric registration.
    pub const ALL: [Forbidden; 18] = [
        Forbidden::SetRole,
        Forbidden::SessionAuthorization,
        Forbidden::TenantSettingWrite,
        Forbidden::DynamicSettingName,
        Forbidden::TenantSettingInMultiStatement,
        Forbidden::RoleDdl,
        Forbidden::FunctionSetsTenant,
        Forbidden::RlsDisable,
        Forbidden::PolicyDdl,
        Forbidden::AlterSystem,
        Forbidden::Load,
        Forbidden::CopyProgram,
        Forbidden::DoBlock,
        Forbidden::Truncate,
        Forbidden::DynamicSql,
        Forbidden::ReservedName,
        Forbidden::FunctionDefinition,
        Forbidden::StringSyntax,
    ];

    /// The SQLSTATE to answer with: `42501` (insufficient privilege) for all of them.
    pub const fn sqlstate(&self) -> &'static str {
        "42501"
    }

    /// What is refused and why, safe to show the client.
    pub const fn message(&self) -> &'static str {
        match self {
            Forbidden::SetRole => {
                "SET ROLE is not allowed through Sentinel: it would change whose row-level security applies"
            }
            Forbidden::SessionAuthorization => {
                "SET SESSION AUTHORIZATION is not allowed through Sentinel: it would change whose row-level security applies"
            }
            Forbidden::TenantSettingWrite => {
                "the tenant setting can only be changed by a standalone SET, RESET or SELECT set_config(...) statement, which Sentinel handles itself"
            }
            Forbidden::DynamicSettingName => {
                "set_config with a setting name that is not a string literal is not allowed through Sentinel: it could change the tenant setting unseen"
            }
            Forbidden::TenantSettingInMultiStatement => {
                "setting the tenant inside a multi-statement query is not allowed through Sentinel: send it as its own statement"
            }
            Forbidden::RoleDdl => {
                "role DDL and role or tenant defaults are not allowed through Sentinel: they would change whose row-level security applies"
            }
            Forbidden::FunctionSetsTenant => {
                "a function or procedure that sets the tenant setting, role or session authorization is not allowed through Sentinel: it would switch the tenant context unseen"
            }
            Forbidden::RlsDisable => {
                "disabling row-level security (DISABLE or NO FORCE ROW LEVEL SECURITY) is not allowed through Sentinel"
            }
            Forbidden::PolicyDdl => {
                "CREATE, ALTER and DROP POLICY are not allowed through Sentinel: row-level security policies are managed by migrations"
            }
            Forbidden::AlterSystem => {
                "ALTER SYSTEM is not allowed through Sentinel: it changes server configuration for every tenant"
            }
            Forbidden::Load => {
                "LOAD is not allowed through Sentinel: a loaded library runs outside row-level security"
            }
            Forbidden::CopyProgram => {
                "COPY TO/FROM PROGRAM is not allowed through Sentinel: it runs a program on the database server"
            }
            Forbidden::DoBlock => {
                "DO blocks are not allowed through Sentinel: their code cannot be checked for tenant context changes"
            }
            Forbidden::Truncate => {
                "TRUNCATE is not allowed through Sentinel: it is not subject to row-level security and would empty every tenant's rows"
            }
            Forbidden::DynamicSql => {
                "functions that run SQL given as text (query_to_xml, table_to_xml, ts_stat, ...) are not allowed through Sentinel: that SQL cannot be checked"
            }
            Forbidden::ReservedName => {
                "prepared statement names starting with sentinel_ are reserved for Sentinel's own statements"
            }
            Forbidden::StringSyntax => {
                "standard_conforming_strings cannot be changed through Sentinel: it decides how string literals are read, and Sentinel checks statements as Postgres reads them with it on"
            }
            Forbidden::FunctionDefinition => {
                "CREATE FUNCTION and CREATE PROCEDURE are not allowed through Sentinel: a function body cannot be checked for tenant context changes (create functions as a bypass user, or set tenancy.allow_functions)"
            }
        }
    }

    /// A fixed snake_case label for metrics (refusals by reason).
    pub const fn label(&self) -> &'static str {
        match self {
            Forbidden::SetRole => "set_role",
            Forbidden::SessionAuthorization => "session_authorization",
            Forbidden::TenantSettingWrite => "tenant_setting_write",
            Forbidden::DynamicSettingName => "dynamic_setting_name",
            Forbidden::TenantSettingInMultiStatement => "tenant_setting_in_multi_statement",
            Forbidden::RoleDdl => "role_ddl",
            Forbidden::FunctionSetsTenant => "function_sets_tenant",
            Forbidden::RlsDisable => "rls_disable",
            Forbidden::PolicyDdl => "policy_ddl",
            Forbidden::AlterSystem => "alter_system",
            Forbidden::Load => "load",
            Forbidden::CopyProgram => "copy_program",
            Forbidden::DoBlock => "do_block",
            Forbidden::Truncate => "truncate",
            Forbidden::DynamicSql => "dynamic_sql",
            Forbidden::ReservedName => "reserved_name",
            Forbidden::FunctionDefinition => "function_definition",
            Forbidden::StringSyntax => "string_syntax",
        }
    }
}

impl fmt::Display for Forbidden {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for Forbidden {}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn labels_are_unique_snake_case() {
        let labels: HashSet<_> = Forbidden::ALL.iter().map(Forbidden::label).collect();
        assert_eq!(labels.len(), Forbidden::ALL.len());
        for label in labels {
            assert!(
                label.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{label}"
            );
        }
    }

    #[test]
    fn messages_say_sentinel_and_sqlstate_is_42501() {
        for reason in Forbidden::ALL {
            assert!(reason.message().contains("Sentinel"), "{reason:?}");
            assert_eq!(reason.sqlstate(), "42501");
            assert_eq!(reason.to_string(), reason.message());
        }
    }
}
