//! The catalog queries of the audit, and what each finding is made of.

use tokio_postgres::Client;

use super::{Audited, Code, Finding, pg_error};
use crate::config::Config;

/// Schemas never checked: the catalogs and every other `pg_*` schema (toast, temp).
const NOT_SYSTEM: &str = "n.nspname NOT IN ('pg_catalog', 'information_schema') \
     AND n.nspname NOT LIKE 'pg\\_%'";

/// Relations and functions that belong to an extension are the extension's business.
fn not_extension_member(catalog: &str, oid: &str) -> String {
    format!(
        "NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = '{catalog}'::regclass \
         AND d.objid = {oid} AND d.deptype = 'e')"
    )
}

struct Table {
    oid: u32,
    schema: String,
    name: String,
    /// `schema.name`, quoted where SQL needs it.
    sql_name: String,
    kind: i8,
    rls: bool,
    force: bool,
    /// The audited role is the owner or has its rights.
    owned: bool,
    owner: String,
}

struct Policy {
    table: u32,
    name: String,
    permissive: bool,
    /// `r`, `a`, `w`, `d` or `*`.
    cmd: i8,
    using: Option<String>,
    with_check: Option<String>,
}

pub(super) async fn check(
    client: &Client,
    config: &Config,
    target: &Audited,
) -> Result<Vec<Finding>, String> {
    let err = |e: tokio_postgres::Error| pg_error(&e);
    let mut out = Vec::new();
    let finding = |code: Code, object: String, problem: String, fix: String| Finding {
        code,
        user: target.user.clone(),
        server_user: target.server_user.clone(),
        database: target.database.clone(),
        object,
        problem,
        fix,
    };
    let setting = &config.tenancy.setting;

    let role = client
        .query_one(
            "SELECT quote_ident(rolname), rolsuper, rolbypassrls FROM pg_roles \
             WHERE rolname = current_user",
            &[],
        )
        .await
        .map_err(err)?;
    let role_sql: String = role.get(0);
    let (superuser, bypassrls): (bool, bool) = (role.get(1), role.get(2));
    if superuser {
        out.push(finding(
            Code::Superuser,
            format!("role {role_sql}"),
            "the role Sentinel logs in as is a superuser: it skips every RLS policy (other \
             checks skipped: a superuser can read and change everything)"
                .to_owned(),
            format!(
                "ALTER ROLE {role_sql} NOSUPERUSER; (or give Sentinel a role of its own that \
                 owns nothing)"
            ),
        ));
        return Ok(out);
    }
    if bypassrls {
        out.push(finding(
            Code::Bypassrls,
            format!("role {role_sql}"),
            "the role Sentinel logs in as has BYPASSRLS: it skips every RLS policy".to_owned(),
            format!("ALTER ROLE {role_sql} NOBYPASSRLS;"),
        ));
    }

    // Tables, partitioned tables and materialized views the role can reach.
    let sql = format!(
        "SELECT c.oid, n.nspname::text, c.relname::text, \
                quote_ident(n.nspname) || '.' || quote_ident(c.relname), c.relkind, \
                c.relrowsecurity, c.relforcerowsecurity, \
                pg_has_role(c.relowner, 'USAGE'), pg_get_userbyid(c.relowner)::text \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r', 'p', 'm') AND {NOT_SYSTEM} AND {} \
           AND has_schema_privilege(n.oid, 'USAGE') \
           AND (pg_has_role(c.relowner, 'USAGE') \
                OR has_table_privilege(c.oid, 'SELECT, INSERT, UPDATE, DELETE') \
                OR has_any_column_privilege(c.oid, 'SELECT, INSERT, UPDATE'))",
        not_extension_member("pg_class", "c.oid")
    );
    let tables: Vec<Table> = client
        .query(&sql, &[])
        .await
        .map_err(err)?
        .iter()
        .map(|r| Table {
            oid: r.get(0),
            schema: r.get(1),
            name: r.get(2),
            sql_name: r.get(3),
            kind: r.get(4),
            rls: r.get(5),
            force: r.get(6),
            owned: r.get(7),
            owner: r.get(8),
        })
        .filter(|t| !is_global(&config.tenancy.global_tables, &t.schema, &t.name))
        .collect();

    let mut checked = Vec::new();
    for t in &tables {
        if t.kind == b'm' as i8 {
            out.push(finding(
                Code::NoRls,
                format!("materialized view {}", t.sql_name),
                format!(
                    "the role can read this materialized view, and materialized views cannot \
                     have row-level security (owner {})",
                    t.owner
                ),
                format!(
                    "REVOKE SELECT ON {} FROM {role_sql}; or list it in [tenancy] global_tables \
                     if it holds no tenant data",
                    t.sql_name
                ),
            ));
            continue;
        }
        if !t.rls {
            let whose = if t.owned { " and owns it" } else { "" };
            out.push(finding(
                Code::NoRls,
                format!("table {}", t.sql_name),
                format!(
                    "the role can read or write this table{whose}, and row-level security is \
                     not enabled"
                ),
                format!(
                    "ALTER TABLE {} ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY; with a \
                     policy on {setting}, or list it in [tenancy] global_tables if it holds no \
                     tenant data",
                    t.sql_name
                ),
            ));
            continue;
        }
        if t.owned && !t.force {
            out.push(finding(
                Code::OwnerWithoutForce,
                format!("table {}", t.sql_name),
                format!(
                    "the role owns this table (owner {}) and RLS is enabled but not forced, so \
                     its policies do not apply to the role",
                    t.owner
                ),
                format!(
                    "ALTER TABLE {} FORCE ROW LEVEL SECURITY; (better: make another role the \
                     owner)",
                    t.sql_name
                ),
            ));
            continue;
        }
        checked.push(t);
    }

    // Policies of the tables whose policies the role is subject to.
    if !checked.is_empty() {
        let oids: Vec<u32> = checked.iter().map(|t| t.oid).collect();
        let rows = client
            .query(
                "SELECT p.polrelid, quote_ident(p.polname), p.polpermissive, p.polcmd, \
                        pg_get_expr(p.polqual, p.polrelid), \
                        pg_get_expr(p.polwithcheck, p.polrelid) \
                 FROM pg_policy p \
                 WHERE p.polrelid = ANY($1::oid[]) \
                   AND EXISTS (SELECT 1 FROM unnest(p.polroles) AS r(oid) \
                               WHERE CASE WHEN r.oid = 0 THEN true \
                                          ELSE pg_has_role(r.oid, 'MEMBER') END) \
                 ORDER BY p.polrelid, p.polname",
                &[&oids],
            )
            .await
            .map_err(err)?;
        let policies: Vec<Policy> = rows
            .iter()
            .map(|r| Policy {
                table: r.get(0),
                name: r.get(1),
                permissive: r.get(2),
                cmd: r.get(3),
                using: r.get(4),
                with_check: r.get(5),
            })
            .collect();
        for t in checked {
            let on_table: Vec<&Policy> = policies.iter().filter(|p| p.table == t.oid).collect();
            for p in &on_table {
                if !p.permissive {
                    continue;
                }
                let allows_all = is_true(p.using.as_deref())
                    || (p.using.is_none() && is_true(p.with_check.as_deref()));
                let reads = reads_setting(p, setting);
                if reads && !allows_all {
                    continue;
                }
                // A restrictive policy that reads the setting filters every row of its commands.
                let restricted = on_table.iter().any(|r| {
                    !r.permissive
                        && (r.cmd == b'*' as i8 || r.cmd == p.cmd)
                        && reads_setting(r, setting)
                });
                if restricted {
                    continue;
                }
                let problem = if allows_all {
                    "permissive policy with USING (true): it lets every row through, whatever \
                     the tenant"
                        .to_owned()
                } else {
                    format!(
                        "permissive policy that never reads {setting}: rows pass it whatever \
                         the tenant"
                    )
                };
                out.push(finding(
                    Code::PolicyIgnoresSetting,
                    format!("policy {} on {}", p.name, t.sql_name),
                    problem,
                    format!(
                        "ALTER POLICY {} ON {} USING (tenant_id = (SELECT \
                         nullif(current_setting('{setting}', true), ''))) WITH CHECK (same); \
                         or DROP POLICY {} ON {};",
                        p.name, t.sql_name, p.name, t.sql_name
                    ),
                ));
            }
        }
    }

    // Views the role can read.
    let sql = format!(
        "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname), \
                c.reloptions::text[], pg_get_userbyid(c.relowner)::text \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind = 'v' AND {NOT_SYSTEM} AND {} \
           AND has_schema_privilege(n.oid, 'USAGE') AND has_table_privilege(c.oid, 'SELECT')",
        not_extension_member("pg_class", "c.oid")
    );
    for r in client.query(&sql, &[]).await.map_err(err)? {
        let name: String = r.get(0);
        let options: Option<Vec<String>> = r.get(1);
        let owner: String = r.get(2);
        if security_invoker(options.as_deref().unwrap_or_default()) {
            continue;
        }
        out.push(finding(
            Code::ViewNotSecurityInvoker,
            format!("view {name}"),
            format!(
                "the role can read this view, which reads its tables as its owner ({owner}): \
                 their policies see the owner, not the role"
            ),
            format!("ALTER VIEW {name} SET (security_invoker = true);"),
        ));
    }

    // SECURITY DEFINER functions the role can call.
    let sql = format!(
        "SELECT quote_ident(n.nspname) || '.' || quote_ident(p.proname) || '(' || \
                pg_get_function_identity_arguments(p.oid) || ')', \
                pg_get_userbyid(p.proowner)::text \
         FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
         WHERE p.prosecdef AND {NOT_SYSTEM} AND {} \
           AND has_schema_privilege(n.oid, 'USAGE') AND has_function_privilege(p.oid, 'EXECUTE')",
        not_extension_member("pg_proc", "p.oid")
    );
    for r in client.query(&sql, &[]).await.map_err(err)? {
        let name: String = r.get(0);
        let owner: String = r.get(1);
        out.push(finding(
            Code::SecurityDefinerFunction,
            format!("function {name}"),
            format!(
                "the role can execute this SECURITY DEFINER function, which runs as its owner \
                 ({owner}): the policies see the owner, not the role"
            ),
            format!(
                "ALTER FUNCTION {name} SECURITY INVOKER; or REVOKE EXECUTE ON FUNCTION {name} \
                 FROM PUBLIC, {role_sql};"
            ),
        ));
    }
    Ok(out)
}

/// Whether `schema.name` is one of `tenancy.global_tables` (`name` matches in any schema).
fn is_global(global_tables: &[String], schema: &str, name: &str) -> bool {
    global_tables.iter().any(|g| match g.split_once('.') {
        Some((s, n)) => s == schema && n == name,
        None => g == name,
    })
}

/// A policy expression that is the constant true.
fn is_true(expr: Option<&str>) -> bool {
    expr.is_some_and(|e| {
        let e = e.trim();
        let e = e
            .strip_prefix('(')
            .and_then(|e| e.strip_suffix(')'))
            .unwrap_or(e);
        e.trim().eq_ignore_ascii_case("true")
    })
}

/// Whether a policy's expressions name the tenant setting (as the literal Postgres deparses:
/// `current_setting('app.tenant_id'::text, true)`).
fn reads_setting(policy: &Policy, setting: &str) -> bool {
    let needle = format!("'{}'", setting.to_ascii_lowercase());
    [&policy.using, &policy.with_check]
        .into_iter()
        .flatten()
        .any(|e| e.to_ascii_lowercase().contains(&needle))
}

/// Whether a view's reloptions say `security_invoker` is on (Postgres' boolean spellings).
fn security_invoker(options: &[String]) -> bool {
    options.iter().any(|o| {
        o.split_once('=').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("security_invoker") && parse_bool(v.trim())
        })
    })
}

/// Postgres' `parse_bool` for the true side: `true`, `yes`, `on`, `1` and unique prefixes.
fn parse_bool(v: &str) -> bool {
    let v = v.to_ascii_lowercase();
    if v.is_empty() {
        return false;
    }
    v == "1" || v == "on" || "true".starts_with(&v) || "yes".starts_with(&v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(using: Option<&str>, with_check: Option<&str>) -> Policy {
        Policy {
            table: 1,
            name: "p".to_owned(),
            permissive: true,
            cmd: b'*' as i8,
            using: using.map(str::to_owned),
            with_check: with_check.map(str::to_owned),
        }
    }

    #[test]
    fn global_tables_match_by_name_or_schema_name() {
        let globals = vec!["tenants".to_owned(), "billing.plans".to_owned()];
        assert!(is_global(&globals, "public", "tenants"));
        assert!(is_global(&globals, "other", "tenants"));
        assert!(is_global(&globals, "billing", "plans"));
        assert!(!is_global(&globals, "public", "plans"));
        assert!(!is_global(&globals, "public", "tasks"));
    }

    #[test]
    fn policies_that_read_the_setting() {
        let deparsed = "(tenant_id = ( SELECT NULLIF(current_setting('app.tenant_id'::text, \
                        true), ''::text) AS \"nullif\"))";
        assert!(reads_setting(
            &policy(Some(deparsed), None),
            "app.tenant_id"
        ));
        assert!(reads_setting(
            &policy(None, Some(deparsed)),
            "app.tenant_id"
        ));
        assert!(!reads_setting(&policy(Some(deparsed), None), "app.tenant"));
        assert!(!reads_setting(
            &policy(Some("(owner = CURRENT_USER)"), None),
            "app.tenant_id"
        ));
        assert!(is_true(Some("true")));
        assert!(is_true(Some("(true)")));
        assert!(!is_true(Some("(tenant_id = 'acme'::text)")));
        assert!(!is_true(None));
    }

    #[test]
    fn security_invoker_spellings() {
        let opts = |o: &[&str]| o.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert!(security_invoker(&opts(&["security_invoker=true"])));
        assert!(security_invoker(&opts(&[
            "check_option=local",
            "security_invoker=on"
        ])));
        assert!(security_invoker(&opts(&["security_invoker=1"])));
        assert!(!security_invoker(&opts(&["security_invoker=false"])));
        assert!(!security_invoker(&opts(&["security_invoker=off"])));
        assert!(!security_invoker(&opts(&["security_barrier=true"])));
        assert!(!security_invoker(&[]));
    }

    #[test]
    fn codes_are_stable() {
        let json = serde_json::to_string(&Code::OwnerWithoutForce).unwrap_or_default();
        assert_eq!(json, "\"owner_without_force\"");
        for code in [
            Code::Superuser,
            Code::Bypassrls,
            Code::OwnerWithoutForce,
            Code::NoRls,
            Code::PolicyIgnoresSetting,
            Code::ViewNotSecurityInvoker,
            Code::SecurityDefinerFunction,
        ] {
            let json = serde_json::to_string(&code).unwrap_or_default();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }
}
