//! Black-box tests of `sentinel_policy::sql`: every refusal reason in several spellings and
//! positions, every tenant command form, relations in every position a statement can hide them,
//! the flags (no transaction block, session state, transaction effects), fingerprints,
//! unparsable and absurdly deep input, the verdict cache, and a property over random text.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use proptest::prelude::*;
use sentinel_policy::sql::*;

fn rules() -> Rules {
    Rules {
        tenant_setting: "app.tenant_id".to_owned(),
        global_tables: vec!["countries".to_owned(), "ref.currencies".to_owned()],
        allow_do: false,
        // The table checks what function definitions contain; refusing them all is checked
        // on its own below.
        allow_functions: true,
    }
}

fn verdict(sql: &str) -> Verdict {
    classify(sql, &rules())
}

fn kind(sql: &str) -> VerdictKind {
    verdict(sql).kind
}

/// What a table row expects.
#[derive(Debug, Clone, PartialEq)]
enum Want {
    Free,
    Needs,
    No(Forbidden),
    Cmd(TenantCommand),
    Unparsable,
}

use Forbidden as F;
use Want::*;

fn set(local: bool, value: &str) -> Want {
    Cmd(TenantCommand::Set {
        local,
        value: value.to_owned(),
    })
}

fn reset(local: bool) -> Want {
    Cmd(TenantCommand::Reset { local })
}

fn set_config(value: Arg, is_local: Arg, column: &str) -> Want {
    Cmd(TenantCommand::SetConfig {
        value,
        is_local,
        column: column.to_owned(),
    })
}

fn text(s: &str) -> Arg {
    Arg::Text(s.to_owned())
}

fn check_table(table: &[(&str, Want)]) {
    let mut failures = Vec::new();
    for (sql, want) in table {
        let got = kind(sql);
        let ok = match (want, &got) {
            (Free, VerdictKind::Free) | (Needs, VerdictKind::NeedsTenant) => true,
            (No(reason), VerdictKind::Forbidden(got)) => reason == got,
            (Cmd(command), VerdictKind::TenantCommand(got)) => command == got,
            (Unparsable, VerdictKind::Unparsable { .. }) => true,
            _ => false,
        };
        if !ok {
            failures.push(format!("{sql:?}: want {want:?}, got {got:?}"));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn refusals_in_every_spelling() {
    check_table(&[
        // SET ROLE
        ("SET ROLE admin", No(F::SetRole)),
        ("set role 'admin'", No(F::SetRole)),
        ("SET LOCAL ROLE admin", No(F::SetRole)),
        ("SET SESSION ROLE admin", No(F::SetRole)),
        ("SET ROLE NONE", No(F::SetRole)),
        ("SET role TO DEFAULT", No(F::SetRole)),
        ("RESET ROLE", No(F::SetRole)),
        ("SET \"role\" = 'admin'", No(F::SetRole)),
        ("SELECT set_config('role', 'admin', false)", No(F::SetRole)),
        ("SELECT set_config('ROLE', 'admin', true)", No(F::SetRole)),
        (
            "SELECT 1 FROM t WHERE set_config('role', 'a', true) = 'a'",
            No(F::SetRole),
        ),
        // SESSION AUTHORIZATION
        (
            "SET SESSION AUTHORIZATION admin",
            No(F::SessionAuthorization),
        ),
        (
            "SET SESSION AUTHORIZATION 'admin'",
            No(F::SessionAuthorization),
        ),
        (
            "SET SESSION AUTHORIZATION DEFAULT",
            No(F::SessionAuthorization),
        ),
        ("RESET SESSION AUTHORIZATION", No(F::SessionAuthorization)),
        (
            "select pg_catalog.set_config('session_authorization', 'x', false)",
            No(F::SessionAuthorization),
        ),
        // set_config of the tenant anywhere but alone
        (
            "SELECT set_config('app.tenant_id', 'acme', true), 1",
            No(F::TenantSettingWrite),
        ),
        (
            "SELECT 1, set_config('app.tenant_id', 'acme', true)",
            No(F::TenantSettingWrite),
        ),
        (
            "SELECT set_config('app.tenant_id', 'acme', true) FROM orders",
            No(F::TenantSettingWrite),
        ),
        (
            "SELECT * FROM orders WHERE set_config('app.tenant_id', 'acme', true) IS NOT NULL",
            No(F::TenantSettingWrite),
        ),
        (
            "WITH x AS (SELECT set_config('app.tenant_id', 'acme', true)) SELECT * FROM x",
            No(F::TenantSettingWrite),
        ),
        (
            "SELECT (SELECT set_config('app.tenant_id', 'acme', true))",
            No(F::TenantSettingWrite),
        ),
        (
            "SELECT * FROM set_config('app.tenant_id', 'acme', true)",
            No(F::TenantSettingWrite),
        ),
        (
            "VALUES (set_config('app.tenant_id', 'acme', true))",
            No(F::TenantSettingWrite),
        ),
        (
            "INSERT INTO orders (id) VALUES (1) RETURNING set_config('app.tenant_id', 'x', true)",
            No(F::TenantSettingWrite),
        ),
        (
            "UPDATE orders SET note = set_config('app.tenant_id', 'x', true)",
            No(F::TenantSettingWrite),
        ),
        (
            "CALL my_proc(set_config('app.tenant_id', 'x', true))",
            No(F::TenantSettingWrite),
        ),
        (
            "SELECT coalesce(set_config('app.tenant_id', 'x', true), '')",
            No(F::TenantSettingWrite),
        ),
        (
            "SELECT upper(pg_catalog.set_config('sentinel.tenant', 'acme', false))",
            No(F::TenantSettingWrite),
        ),
        (
            "SELECT set_config('APP.TENANT_ID', 'acme', true) LIMIT 1",
            No(F::TenantSettingWrite),
        ),
        (
            "SELECT DISTINCT set_config('app.tenant_id', 'acme', true)",
            No(F::TenantSettingWrite),
        ),
        (
            "SELECT set_config('app.tenant_id', 'a' || 'b', true)",
            No(F::TenantSettingWrite),
        ),
        (
            "SELECT set_config('app.tenant_id', 42, true)",
            No(F::TenantSettingWrite),
        ),
        (
            "SELECT set_config('app.tenant_id', 'x', is_local) FROM flags",
            No(F::TenantSettingWrite),
        ),
        (
            "SELECT set_config('app.tenant_id'::text, 'x', true) WHERE true",
            No(F::TenantSettingWrite),
        ),
        (
            "SELECT myschema.set_config('app.tenant_id', 'x', true)",
            No(F::TenantSettingWrite),
        ),
        (
            "EXPLAIN SELECT set_config('app.tenant_id', 'x', true)",
            No(F::TenantSettingWrite),
        ),
        (
            "PREPARE p AS SELECT set_config('app.tenant_id', $1, true)",
            No(F::TenantSettingWrite),
        ),
        (
            "SELECT set_config('app.tenant_id', 'x', true) UNION SELECT 'y'",
            No(F::TenantSettingWrite),
        ),
        ("SET app.tenant_id = 'a', 'b'", No(F::TenantSettingWrite)),
        ("SET app.tenant_id FROM CURRENT", No(F::TenantSettingWrite)),
        // setting name not a literal
        ("SELECT set_config($1, $2, true)", No(F::DynamicSettingName)),
        (
            "SELECT set_config(name, 'x', true) FROM settings",
            No(F::DynamicSettingName),
        ),
        (
            "SELECT set_config('app.' || 'tenant_id', 'x', true)",
            No(F::DynamicSettingName),
        ),
        (
            "SELECT set_config(lower('APP.TENANT_ID'), 'x', false)",
            No(F::DynamicSettingName),
        ),
        (
            "SELECT set_config(VARIADIC ARRAY['a', 'b', 'c'])",
            No(F::DynamicSettingName),
        ),
        // the tenant in a multi-statement text
        (
            "SET app.tenant_id = 'acme'; SELECT * FROM orders",
            No(F::TenantSettingInMultiStatement),
        ),
        (
            "SELECT 1; SELECT set_config('app.tenant_id', 'acme', true)",
            No(F::TenantSettingInMultiStatement),
        ),
        (
            "BEGIN; SET LOCAL app.tenant_id = 'acme'; COMMIT",
            No(F::TenantSettingInMultiStatement),
        ),
        (
            "RESET app.tenant_id; SELECT 1",
            No(F::TenantSettingInMultiStatement),
        ),
        // roles
        ("CREATE ROLE x", No(F::RoleDdl)),
        ("CREATE USER x WITH PASSWORD 'p'", No(F::RoleDdl)),
        ("CREATE GROUP g", No(F::RoleDdl)),
        ("ALTER ROLE x BYPASSRLS", No(F::RoleDdl)),
        ("ALTER GROUP g ADD USER u", No(F::RoleDdl)),
        ("ALTER ROLE x RENAME TO y", No(F::RoleDdl)),
        ("DROP ROLE x", No(F::RoleDdl)),
        ("DROP USER IF EXISTS x", No(F::RoleDdl)),
        ("GRANT admin TO app", No(F::RoleDdl)),
        ("REVOKE admin FROM app", No(F::RoleDdl)),
        ("ALTER ROLE app SET app.tenant_id = 'acme'", No(F::RoleDdl)),
        ("ALTER ROLE app SET work_mem = '1GB'", No(F::RoleDdl)),
        (
            "ALTER USER app IN DATABASE d SET search_path = x",
            No(F::RoleDdl),
        ),
        (
            "ALTER DATABASE d SET app.tenant_id = 'acme'",
            No(F::RoleDdl),
        ),
        ("ALTER DATABASE d SET role = 'admin'", No(F::RoleDdl)),
        ("ALTER DATABASE d RESET app.tenant_id", No(F::RoleDdl)),
        ("REASSIGN OWNED BY a TO b", No(F::RoleDdl)),
        // functions that switch the context
        (
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql SET app.tenant_id = 'acme' AS 'select 1'",
            No(F::FunctionSetsTenant),
        ),
        (
            "CREATE OR REPLACE PROCEDURE p() LANGUAGE sql SET role = 'admin' AS 'select 1'",
            No(F::FunctionSetsTenant),
        ),
        (
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql SET \"App.Tenant_Id\" TO 'x' AS 'select 1'",
            No(F::FunctionSetsTenant),
        ),
        (
            "ALTER FUNCTION f() SET app.tenant_id = 'x'",
            No(F::FunctionSetsTenant),
        ),
        (
            "ALTER FUNCTION f(int) SET sentinel.tenant TO 'x'",
            No(F::FunctionSetsTenant),
        ),
        (
            "ALTER PROCEDURE p() SET session_authorization = 'x'",
            No(F::FunctionSetsTenant),
        ),
        (
            "ALTER ROUTINE f() RESET app.tenant_id",
            No(F::FunctionSetsTenant),
        ),
        // RLS off
        (
            "ALTER TABLE orders DISABLE ROW LEVEL SECURITY",
            No(F::RlsDisable),
        ),
        (
            "ALTER TABLE public.orders NO FORCE ROW LEVEL SECURITY",
            No(F::RlsDisable),
        ),
        (
            "alter table if exists orders add column x int, disable row level security",
            No(F::RlsDisable),
        ),
        // policies
        ("CREATE POLICY p ON orders USING (true)", No(F::PolicyDdl)),
        ("ALTER POLICY p ON orders USING (true)", No(F::PolicyDdl)),
        ("ALTER POLICY p ON orders RENAME TO q", No(F::PolicyDdl)),
        ("DROP POLICY p ON orders", No(F::PolicyDdl)),
        ("drop policy if exists p on public.orders", No(F::PolicyDdl)),
        // server-wide
        ("ALTER SYSTEM SET work_mem = '1GB'", No(F::AlterSystem)),
        ("ALTER SYSTEM RESET ALL", No(F::AlterSystem)),
        ("LOAD 'auto_explain'", No(F::Load)),
        ("load '$libdir/plugins/x'", No(F::Load)),
        ("COPY orders TO PROGRAM 'cat > /tmp/x'", No(F::CopyProgram)),
        ("COPY orders FROM PROGRAM 'curl x'", No(F::CopyProgram)),
        ("COPY (SELECT 1) TO PROGRAM 'x'", No(F::CopyProgram)),
        (
            "DO $$ BEGIN PERFORM set_config('app.tenant_id', 'x', false); END $$",
            No(F::DoBlock),
        ),
        ("DO LANGUAGE plpgsql 'BEGIN NULL; END'", No(F::DoBlock)),
        ("TRUNCATE orders", No(F::Truncate)),
        ("TRUNCATE TABLE a, b CASCADE", No(F::Truncate)),
        ("truncate only countries", No(F::Truncate)),
        // SQL the proxy cannot see
        (
            "SELECT query_to_xml('select * from orders', true, false, '')",
            No(F::DynamicSql),
        ),
        (
            "SELECT table_to_xml('orders', true, false, '')",
            No(F::DynamicSql),
        ),
        (
            "SELECT pg_catalog.database_to_xml(true, false, '')",
            No(F::DynamicSql),
        ),
        (
            "SELECT schema_to_xmlschema('public', true, false, '')",
            No(F::DynamicSql),
        ),
        (
            "SELECT cursor_to_xml('c', 10, true, false, '')",
            No(F::DynamicSql),
        ),
        (
            "SELECT * FROM ts_stat('SELECT v FROM docs')",
            No(F::DynamicSql),
        ),
        (
            "SELECT ts_rewrite('a'::tsquery, 'SELECT t, s FROM aliases')",
            No(F::DynamicSql),
        ),
        // The string syntax the classifier reads with
        ("SET standard_conforming_strings = off", No(F::StringSyntax)),
        (
            "SET LOCAL standard_conforming_strings TO on",
            No(F::StringSyntax),
        ),
        (
            "SELECT set_config('standard_conforming_strings', 'off', false)",
            No(F::StringSyntax),
        ),
        ("RESET standard_conforming_strings", No(F::StringSyntax)),
        // Sentinel's own server-side statement names
        ("EXECUTE sentinel_tenant('other')", No(F::ReservedName)),
        ("EXECUTE SENTINEL_tenant('other')", No(F::ReservedName)),
        ("execute \"sentinel_0123abcd\"", No(F::ReservedName)),
        ("DEALLOCATE sentinel_tenant", No(F::ReservedName)),
        (
            "DEALLOCATE PREPARE sentinel_tenant_timeout",
            No(F::ReservedName),
        ),
        ("PREPARE sentinel_x AS SELECT 1", No(F::ReservedName)),
        // first reason in statement order wins
        ("SET ROLE a; TRUNCATE orders", No(F::SetRole)),
        ("TRUNCATE orders; SET ROLE a", No(F::Truncate)),
        ("SELECT * FROM orders; LOAD 'x'", No(F::Load)),
    ]);
}

#[test]
fn do_blocks_when_allowed() {
    let rules = Rules {
        allow_do: true,
        ..rules()
    };
    assert_eq!(
        classify("DO $$ BEGIN NULL; END $$", &rules).kind,
        VerdictKind::Free
    );
}

#[test]
fn tenant_commands() {
    check_table(&[
        ("SET app.tenant_id = 'acme'", set(false, "acme")),
        ("SET app.tenant_id TO acme", set(false, "acme")),
        ("SET LOCAL sentinel.tenant = 'acme'", set(true, "acme")),
        ("SET SESSION app.tenant_id = 'acme'", set(false, "acme")),
        ("set App.Tenant_Id = 42", set(false, "42")),
        ("SET app.tenant_id = -1.5", set(false, "-1.5")),
        ("SET \"app.tenant_id\" = 'x'", set(false, "x")),
        ("SET \"app\".\"tenant_id\" = 'x'", set(false, "x")),
        ("SET app.tenant_id = E'a\\'b'", set(false, "a'b")),
        (
            "/*tenant='x'*/ SET app.tenant_id = 'acme';",
            set(false, "acme"),
        ),
        ("RESET app.tenant_id", reset(false)),
        ("RESET sentinel.tenant", reset(false)),
        ("SET app.tenant_id TO DEFAULT", reset(false)),
        ("SET LOCAL app.tenant_id = DEFAULT", reset(true)),
        (
            "SELECT set_config('app.tenant_id', 'acme', true)",
            set_config(text("acme"), Arg::Bool(true), "set_config"),
        ),
        (
            "select pg_catalog.set_config('app.tenant_id', $1, false)",
            set_config(Arg::Param(1), Arg::Bool(false), "set_config"),
        ),
        (
            "SELECT set_config('sentinel.tenant', $1::text, $2) AS t",
            set_config(Arg::Param(1), Arg::Param(2), "t"),
        ),
        (
            "SELECT set_config('APP.TENANT_ID', 'acme', 'on') tenant",
            set_config(text("acme"), text("on"), "tenant"),
        ),
        (
            "SELECT set_config('app.tenant_id', NULL, NULL)",
            set_config(Arg::Null, Arg::Null, "set_config"),
        ),
        (
            "SELECT set_config('app.tenant_id'::text, 'acme'::varchar, true::bool);",
            set_config(text("acme"), Arg::Bool(true), "set_config"),
        ),
    ]);
}

#[test]
fn tenant_needed_in_every_position() {
    check_table(&[
        ("SELECT * FROM orders", Needs),
        ("TABLE orders", Needs),
        ("SELECT * FROM ONLY orders", Needs),
        ("SELECT * FROM orders TABLESAMPLE SYSTEM (10)", Needs),
        (
            "select * from public.orders o join customers c on c.id = o.customer_id",
            Needs,
        ),
        ("SELECT * FROM countries c, orders o", Needs),
        ("WITH x AS (SELECT * FROM orders) SELECT * FROM x", Needs),
        ("SELECT (SELECT count(*) FROM orders)", Needs),
        ("SELECT 1 WHERE EXISTS (SELECT 1 FROM orders)", Needs),
        ("SELECT array(SELECT id FROM orders)", Needs),
        ("SELECT 1 UNION SELECT id FROM orders", Needs),
        (
            "SELECT * FROM countries c LEFT JOIN LATERAL (SELECT * FROM orders o WHERE o.c = c.id) x ON true",
            Needs,
        ),
        (
            "SELECT * FROM countries, LATERAL my_func(countries.id)",
            Needs,
        ),
        ("SELECT * FROM (VALUES (1)) v, orders", Needs),
        (
            "SELECT * FROM countries ORDER BY (SELECT 1 FROM orders LIMIT 1)",
            Needs,
        ),
        (
            "SELECT count(*) FILTER (WHERE id IN (SELECT id FROM orders)) FROM countries",
            Needs,
        ),
        (
            "SELECT * FROM json_to_recordset((SELECT data FROM orders)) AS x(a int)",
            Needs,
        ),
        (
            "SELECT * FROM XMLTABLE('/r' PASSING (SELECT x FROM docs) COLUMNS a int)",
            Needs,
        ),
        ("INSERT INTO audit SELECT * FROM countries", Needs),
        ("INSERT INTO countries SELECT * FROM orders", Needs),
        (
            "INSERT INTO countries VALUES (1) ON CONFLICT (id) DO UPDATE SET n = (SELECT 1 FROM orders)",
            Needs,
        ),
        (
            "UPDATE countries SET name = 'x' RETURNING (SELECT max(id) FROM orders)",
            Needs,
        ),
        ("UPDATE countries SET n = o.n FROM orders o", Needs),
        ("DELETE FROM orders WHERE id = $1", Needs),
        ("DELETE FROM countries USING orders", Needs),
        (
            "MERGE INTO orders o USING countries c ON o.id = c.id WHEN MATCHED THEN DELETE",
            Needs,
        ),
        (
            "MERGE INTO countries c USING (SELECT * FROM orders) o ON o.id = c.id WHEN MATCHED THEN DELETE",
            Needs,
        ),
        ("COPY (SELECT * FROM orders) TO STDOUT", Needs),
        ("COPY orders FROM STDIN", Needs),
        ("EXPLAIN ANALYZE SELECT * FROM orders", Needs),
        ("EXPLAIN (ANALYZE, BUFFERS) DELETE FROM orders", Needs),
        ("DECLARE c CURSOR FOR SELECT * FROM orders", Needs),
        ("CREATE TABLE t2 AS SELECT * FROM orders", Needs),
        ("CREATE MATERIALIZED VIEW mv AS SELECT * FROM orders", Needs),
        ("CREATE VIEW v AS SELECT * FROM orders", Needs),
        ("SELECT my_func()", Needs),
        ("SELECT * FROM my_srf()", Needs),
        ("SELECT myschema.lower('x')", Needs),
        ("SELECT 1 OPERATOR(myschema.+) 2", Needs),
        ("CALL do_things()", Needs),
        ("EXECUTE my_plan(1)", Needs),
        ("EXPLAIN EXECUTE my_plan", Needs),
        ("PREPARE p AS SELECT * FROM orders", Needs),
        ("PREPARE p (int) AS DELETE FROM orders WHERE id = $1", Needs),
        // a CTE shadowing a table reads the table inside its own body
        (
            "WITH orders AS (SELECT * FROM orders) SELECT * FROM orders",
            Needs,
        ),
        // a non-recursive CTE cannot see the CTEs after it
        (
            "WITH b AS (SELECT * FROM a), a AS (SELECT 1) SELECT * FROM b",
            Needs,
        ),
        (
            "WITH a AS (SELECT 1), b AS (SELECT * FROM c) SELECT * FROM a, b",
            Needs,
        ),
        // nor a CTE defined in a sibling subquery
        (
            "SELECT * FROM (WITH t AS (SELECT 1) SELECT * FROM t) x, t",
            Needs,
        ),
        // DML targets are always tables
        ("WITH t AS (SELECT 1) INSERT INTO t VALUES (1)", Needs),
        ("WITH t AS (SELECT 1) DELETE FROM t", Needs),
        ("WITH t AS (SELECT 1) UPDATE t SET a = 1", Needs),
        ("WITH t AS (SELECT 1) SELECT * INTO t FROM t", Needs),
        (
            "WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d",
            Needs,
        ),
        (
            "WITH RECURSIVE r AS (SELECT 1 n UNION ALL SELECT n + 1 FROM r WHERE n < 3) SELECT * FROM r, orders",
            Needs,
        ),
        (
            "SELECT 1 FROM countries WHERE id IN (SELECT country FROM ref.regions)",
            Needs,
        ),
        ("SELECT * FROM other.currencies", Needs),
        ("SELECT * FROM pg_temp.scratch", Needs),
        ("LOCK TABLE orders", Needs),
        ("VACUUM orders", Needs),
        ("CREATE TABLE t (id int)", Needs),
        ("CREATE INDEX ON orders (id)", Needs),
        ("DROP TABLE orders", Needs),
        ("DROP VIEW IF EXISTS s.v", Needs),
        ("ALTER TABLE orders ENABLE ROW LEVEL SECURITY", Needs),
        ("SELECT 1; SELECT * FROM orders", Needs),
    ]);
}

#[test]
fn free_statements() {
    check_table(&[
        ("SELECT 1", Free),
        ("select now()", Free),
        ("SELECT pg_catalog.now()", Free),
        ("BEGIN", Free),
        ("COMMIT", Free),
        ("SAVEPOINT s", Free),
        ("ROLLBACK TO SAVEPOINT s", Free),
        ("SET statement_timeout = '5s'", Free),
        ("SET LOCAL statement_timeout TO 1000", Free),
        ("SET search_path TO public", Free),
        ("SET TIME ZONE 'UTC'", Free),
        ("SET row_security = off", Free),
        ("RESET ALL", Free),
        ("SHOW app.tenant_id", Free),
        ("SHOW ALL", Free),
        ("SELECT current_setting('app.tenant_id', true)", Free),
        ("SELECT * FROM pg_class", Free),
        (
            "select relname from pg_catalog.pg_class c join pg_namespace n on n.oid = c.relnamespace",
            Free,
        ),
        ("SELECT * FROM information_schema.tables", Free),
        ("SELECT * FROM pg_stat_activity", Free),
        ("WITH x AS (SELECT 1) SELECT * FROM x", Free),
        (
            "WITH a AS (SELECT 1), b AS (SELECT * FROM a) SELECT * FROM b",
            Free,
        ),
        (
            "WITH RECURSIVE r AS (SELECT 1 n UNION ALL SELECT n + 1 FROM r WHERE n < 3) SELECT * FROM r",
            Free,
        ),
        (
            "WITH x AS (SELECT 1) SELECT * FROM x UNION ALL SELECT * FROM x",
            Free,
        ),
        ("SELECT * FROM countries", Free),
        ("SELECT * FROM ref.countries", Free),
        ("SELECT * FROM ref.currencies", Free),
        ("SELECT * FROM generate_series(1, 10)", Free),
        (
            "SELECT coalesce(null, 1), greatest(1, 2), nullif(1, 1)",
            Free,
        ),
        ("SELECT 'orders'::regclass", Free),
        ("SELECT 1 + 2 OPERATOR(pg_catalog.+) 3", Free),
        (
            "SELECT ts_rewrite('a'::tsquery, 'a'::tsquery, 'b'::tsquery)",
            Free,
        ),
        ("SELECT set_config('search_path', 'public', true)", Free),
        ("SELECT set_config('statement_timeout', $1, false)", Free),
        ("SELECT pg_advisory_xact_lock(1)", Free),
        ("DISCARD ALL", Free),
        ("DEALLOCATE ALL", Free),
        ("LISTEN ch", Free),
        ("NOTIFY ch, 'x'", Free),
        ("VACUUM", Free),
        ("ANALYZE", Free),
        ("CHECKPOINT", Free),
        ("CREATE EXTENSION IF NOT EXISTS pgcrypto", Free),
        (
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql SET search_path = public AS 'select 1'",
            Free,
        ),
        ("ALTER DATABASE d SET work_mem = '64MB'", Free),
        ("SELECT x FROM (SELECT 1 AS x) s", Free),
        ("", Free),
        ("-- only a comment", Free),
        (";", Free),
    ]);
}

#[test]
fn unparsable_is_refused_with_the_parser_message() {
    check_table(&[
        ("SELEC 1", Unparsable),
        ("SELECT * FROM", Unparsable),
        ("select 'unterminated", Unparsable),
        ("SELECT 1 FROM orders WHERE", Unparsable),
        ("SELECT 1; SELEC 2", Unparsable),
        ("SET ROLE", Unparsable),
        ("SELECT 1\0", Unparsable),
    ]);
    let v = verdict("SELEC 1");
    let VerdictKind::Unparsable { message, .. } = &v.kind else {
        panic!("{v:?}");
    };
    assert!(message.contains("syntax error"), "{message}");
    assert_eq!(v.fingerprint, 0);
    assert_eq!(v.statements, 0);
    assert!(v.relations.is_empty());
}

#[test]
fn every_forbidden_reason_is_covered_by_the_table() {
    // The table above is the coverage; this keeps it honest when a reason is added.
    let probes = [
        "SET ROLE a",
        "RESET SESSION AUTHORIZATION",
        "SELECT set_config('app.tenant_id', 'x', true) FROM t",
        "SELECT set_config($1, 'x', true)",
        "SET app.tenant_id = 'a'; SELECT 1",
        "DROP ROLE a",
        "ALTER FUNCTION f() SET app.tenant_id = 'x'",
        "ALTER TABLE t DISABLE ROW LEVEL SECURITY",
        "DROP POLICY p ON t",
        "ALTER SYSTEM SET a = 1",
        "LOAD 'x'",
        "COPY t TO PROGRAM 'x'",
        "DO 'BEGIN END'",
        "TRUNCATE t",
        "SELECT query_to_xml('x', true, true, '')",
        "EXECUTE sentinel_tenant('x')",
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'select 1'",
        "SET standard_conforming_strings = off",
    ];
    let strict = Rules {
        allow_functions: false,
        ..rules()
    };
    let found: Vec<_> = probes
        .iter()
        .map(|sql| match classify(sql, &strict).kind {
            VerdictKind::Forbidden(reason) => reason,
            other => panic!("{sql}: {other:?}"),
        })
        .collect();
    assert_eq!(found, Forbidden::ALL);
}

#[test]
fn relations_as_written_deduped_sorted_without_ctes() {
    assert_eq!(
        verdict("WITH x AS (SELECT * FROM b.t) SELECT * FROM x, a, b.t, a JOIN pg_class ON true")
            .relations,
        ["a", "b.t", "pg_class"]
    );
    assert_eq!(
        verdict("INSERT INTO orders SELECT * FROM countries").relations,
        ["countries", "orders"]
    );
    assert!(verdict("SELECT 1").relations.is_empty());
    assert_eq!(verdict("SELECT 1; SELECT 2").statements, 2);
    assert_eq!(verdict("").statements, 0);
}

#[test]
fn no_transaction_block() {
    let cases = [
        ("VACUUM", true),
        ("VACUUM orders", true),
        ("VACUUM (ANALYZE) orders", true),
        ("ANALYZE", false),
        ("ANALYZE orders", false),
        ("CREATE INDEX CONCURRENTLY i ON orders (id)", true),
        ("CREATE INDEX i ON orders (id)", false),
        ("DROP INDEX CONCURRENTLY i", true),
        ("DROP INDEX i", false),
        ("REINDEX TABLE CONCURRENTLY orders", true),
        ("REINDEX (CONCURRENTLY) INDEX i", true),
        ("REINDEX TABLE orders", false),
        ("REINDEX SCHEMA public", true),
        ("REINDEX DATABASE d", true),
        ("REINDEX SYSTEM d", true),
        ("CREATE DATABASE d", true),
        ("DROP DATABASE d", true),
        ("ALTER DATABASE d SET TABLESPACE ts", true),
        ("ALTER DATABASE d CONNECTION LIMIT 3", false),
        ("CREATE TABLESPACE ts LOCATION '/x'", true),
        ("DROP TABLESPACE ts", true),
        ("ALTER SYSTEM SET work_mem = '1GB'", true),
        ("CLUSTER", true),
        ("CLUSTER orders", false),
        ("DISCARD ALL", true),
        ("DISCARD TEMP", false),
        ("COMMIT PREPARED 'x'", true),
        ("ROLLBACK PREPARED 'x'", true),
        ("PREPARE TRANSACTION 'x'", false),
        ("CREATE SUBSCRIPTION s CONNECTION 'x' PUBLICATION p", true),
        ("DROP SUBSCRIPTION s", true),
        ("SELECT 1; VACUUM", true),
        ("SELECT 1", false),
        ("BEGIN", false),
    ];
    for (sql, want) in cases {
        let v = verdict(sql);
        assert!(
            !matches!(v.kind, VerdictKind::Unparsable { .. }),
            "{sql}: {v:?}"
        );
        assert_eq!(v.no_transaction_block, want, "{sql}");
    }
}

#[test]
fn session_state() {
    let cases = [
        ("SET statement_timeout = 1", true),
        ("SET SESSION statement_timeout = 1", true),
        ("SET LOCAL statement_timeout = 1", false),
        ("SET search_path TO DEFAULT", true),
        ("RESET statement_timeout", false),
        ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", false),
        ("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", true),
        ("SELECT set_config('search_path', 'x', false)", true),
        ("SELECT set_config('search_path', 'x', true)", false),
        ("SELECT set_config('search_path', 'x', 'off')", true),
        ("SELECT set_config('search_path', 'x', 'on')", false),
        ("SELECT set_config('x.y', 'z', $1)", true),
        ("SELECT set_config('x.y', 'z', NULL)", true),
        ("SELECT pg_advisory_lock(1)", true),
        ("SELECT pg_catalog.pg_advisory_lock_shared(1)", true),
        ("SELECT pg_try_advisory_lock(1)", true),
        ("SELECT 1 WHERE pg_try_advisory_lock_shared(1, 2)", true),
        ("SELECT pg_advisory_xact_lock(1)", false),
        ("SELECT pg_advisory_unlock_all()", false),
        ("LISTEN ch", true),
        ("UNLISTEN *", false),
        ("PREPARE p AS SELECT 1", true),
        ("DEALLOCATE p", false),
        ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", true),
        ("DECLARE c CURSOR FOR SELECT 1", false),
        ("CREATE TEMP TABLE t (id int)", true),
        ("CREATE LOCAL TEMPORARY TABLE t (id int)", true),
        ("CREATE TEMPORARY VIEW v AS SELECT 1", true),
        ("CREATE TEMP SEQUENCE s", true),
        ("CREATE TEMP TABLE t AS SELECT 1", true),
        ("SELECT 1 INTO TEMP t", true),
        ("CREATE TABLE pg_temp.t (id int)", true),
        (
            "CREATE FUNCTION pg_temp.f() RETURNS int LANGUAGE sql AS 'select 1'",
            true,
        ),
        ("CREATE TABLE t (id int)", false),
        ("CREATE UNLOGGED TABLE t (id int)", false),
        ("LOAD 'x'", true),
        ("SELECT 1; SET work_mem = '1MB'", true),
        ("SELECT 1", false),
        ("DISCARD ALL", false),
        // The proxy answers tenant commands itself: nothing reaches the server.
        ("SET app.tenant_id = 'acme'", false),
    ];
    for (sql, want) in cases {
        let v = verdict(sql);
        assert!(
            !matches!(v.kind, VerdictKind::Unparsable { .. }),
            "{sql}: {v:?}"
        );
        assert_eq!(v.session_state, want, "{sql}");
    }
}

#[test]
fn transaction_effects() {
    // control_only and resets_settings are checked on their own below.
    let tx = |sql: &str| {
        let e: TxEffects = verdict(sql).tx;
        (
            e.begins,
            e.ends,
            e.rolls_back_to_savepoint,
            e.tenant_after_end,
        )
    };
    let t = |begins, ends, rolls_back_to_savepoint, tenant_after_end| {
        (begins, ends, rolls_back_to_savepoint, tenant_after_end)
    };
    assert_eq!(tx("BEGIN"), t(true, false, false, false));
    assert_eq!(
        tx("BEGIN ISOLATION LEVEL SERIALIZABLE"),
        t(true, false, false, false)
    );
    assert_eq!(
        tx("START TRANSACTION READ ONLY"),
        t(true, false, false, false)
    );
    for end in [
        "COMMIT",
        "END",
        "ROLLBACK",
        "ABORT",
        "PREPARE TRANSACTION 'x'",
        "COMMIT PREPARED 'x'",
        "ROLLBACK PREPARED 'x'",
    ] {
        assert_eq!(tx(end), t(false, true, false, false), "{end}");
    }
    assert_eq!(tx("COMMIT AND CHAIN"), t(true, true, false, false));
    assert_eq!(tx("ROLLBACK TO SAVEPOINT s"), t(false, false, true, false));
    assert_eq!(tx("ROLLBACK TO s"), t(false, false, true, false));
    assert_eq!(tx("SAVEPOINT s"), t(false, false, false, false));
    assert_eq!(tx("RELEASE SAVEPOINT s"), t(false, false, false, false));
    assert_eq!(tx("SELECT 1"), t(false, false, false, false));
    assert_eq!(
        tx("BEGIN; SELECT * FROM orders; COMMIT"),
        t(true, true, false, false)
    );
    assert_eq!(
        tx("SELECT * FROM orders; COMMIT; SELECT * FROM orders"),
        t(false, true, false, true)
    );
    assert_eq!(
        tx("COMMIT; BEGIN; DELETE FROM orders"),
        t(true, true, false, true)
    );
    assert_eq!(tx("COMMIT; SELECT 1"), t(false, true, false, false));
    assert_eq!(
        tx("SELECT * FROM orders; COMMIT"),
        t(false, true, false, false)
    );
}

#[test]
fn fingerprints() {
    let fp = |sql: &str| verdict(sql).fingerprint;
    let base = fp("SELECT * FROM orders WHERE id = 1");
    assert_ne!(base, 0);
    assert_eq!(
        base,
        fp("select *  from orders /*tenant='a'*/ where id = 2")
    );
    assert_eq!(base, fp("SELECT *\n FROM orders\n WHERE id = $1 -- c"));
    assert_ne!(base, fp("SELECT * FROM customers WHERE id = 1"));
    assert_ne!(base, fp("SELECT id FROM orders WHERE id = 1"));
    assert_ne!(base, fp("SELECT * FROM orders WHERE id = 1; SELECT 1"));
    assert_eq!(fp("SELEC 1"), 0);
}

#[test]
fn deep_nesting_never_overflows() {
    let n = 1000;
    // Parentheses alone add no nodes, and negations of a constant fold into it: parses, free.
    let parens = format!("SELECT {}1{}", "(".repeat(n), ")".repeat(n));
    assert_eq!(kind(&parens), VerdictKind::Free);
    let negations = format!("SELECT {}1{}", "-(".repeat(n), ")".repeat(n));
    assert_eq!(kind(&negations), VerdictKind::Free);

    // A thousand levels of subqueries, calls, operators or arrays are too deep for the parser
    // (its stack depth limit, as in Postgres): refused as unparsable, never a crash.
    let deep = [
        format!(
            "SELECT {} FROM orders",
            "(SELECT ".repeat(n) + "1" + &")".repeat(n)
        ),
        format!("SELECT {}1{}", "abs(".repeat(n), ")".repeat(n)),
        format!("SELECT {}", vec!["1"; 10 * n].join(" + ")),
        format!("SELECT {}1{}", "ARRAY[".repeat(n), "]".repeat(n)),
        format!(
            "SELECT * FROM {}orders{}",
            "(SELECT * FROM ".repeat(n),
            " x)".repeat(n)
        ),
    ];
    for sql in &deep {
        let v = verdict(sql);
        assert!(
            matches!(v.kind, VerdictKind::Unparsable { .. }),
            "{}…: {:?}",
            &sql[..40],
            v.kind
        );
    }

    // What real generated SQL reaches classifies: the limits are the parser's own, not a
    // fixed depth of the protobuf decoder (which stopped at 15 nested subqueries).
    let nested = format!(
        "SELECT {} FROM orders",
        "(SELECT ".repeat(100) + "1" + &")".repeat(100)
    );
    assert_eq!(kind(&nested), VerdictKind::NeedsTenant);
    let unions = vec!["SELECT id FROM orders"; 500].join(" UNION ALL ");
    assert_eq!(kind(&unions), VerdictKind::NeedsTenant);
    let chained = format!("SELECT {} FROM countries", vec!["id"; 150].join(" || "));
    assert_eq!(kind(&chained), VerdictKind::Free);
    let calls = format!("SELECT {}1{}", "abs(".repeat(150), ")".repeat(150));
    assert_eq!(kind(&calls), VerdictKind::Free);
}

#[test]
fn cache_shares_one_entry_across_tags() {
    let cache = VerdictCache::new(100, Arc::new(rules()));
    let first = cache.verdict("SELECT * FROM orders WHERE id = $1 /*tenant='t0'*/");
    assert_eq!(first.kind, VerdictKind::NeedsTenant);
    for i in 1..100 {
        let sql = format!(
            "/*traceparent='00-{i:032x}-01'*/ SELECT * FROM orders WHERE id = $1 /*tenant='t{i}'*/"
        );
        let v = cache.verdict(&sql);
        assert!(Arc::ptr_eq(&v, &first), "{sql}");
    }
    let stats = cache.stats();
    // Plain DML: one text, under its key and its constant-masked key.
    assert_eq!((stats.hits, stats.misses, stats.entries), (99, 1, 2));
    assert!((stats.hit_rate() - 0.99).abs() < 1e-9);

    // A different statement is a different entry; same verdict as classify.
    let other = cache.verdict("SELECT 1");
    assert_eq!(*other, classify("SELECT 1", &rules()));
    assert_eq!(cache.stats().entries, 4);
    assert_eq!(cache.rules(), &rules());
}

#[test]
fn cache_does_not_store_huge_texts() {
    let cache = VerdictCache::new(100, Arc::new(rules()));
    let huge = format!("SELECT 1 WHERE 'x' <> '{}'", "y".repeat(MAX_CACHED_LEN));
    for _ in 0..3 {
        assert_eq!(cache.verdict(&huge).kind, VerdictKind::Free);
    }
    let stats = cache.stats();
    assert_eq!(
        (stats.hits, stats.misses, stats.uncached, stats.entries),
        (0, 3, 3, 0)
    );
}

#[test]
fn cache_is_bounded() {
    let cache = VerdictCache::new(50, Arc::new(rules()));
    for i in 0..500 {
        cache.verdict(&format!("SELECT {i} AS c{i}"));
    }
    let stats = cache.stats();
    assert!(stats.entries <= 50, "{stats:?}");
    // Each alias is a name, so each text is a statement of its own.
    assert_eq!(stats.misses, 500);
}

#[test]
fn cached_verdicts_are_unparsable_too() {
    let cache = VerdictCache::new(10, Arc::new(rules()));
    assert!(matches!(
        cache.verdict("SELEC 1 /*tenant='a'*/").kind,
        VerdictKind::Unparsable { .. }
    ));
    assert!(matches!(
        cache.verdict("SELEC 1 /*tenant='b'*/").kind,
        VerdictKind::Unparsable { .. }
    ));
    assert_eq!(cache.stats().hits, 1);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_text_never_panics(sql in "\\PC{0,200}") {
        let v = classify(&sql, &rules());
        if matches!(v.kind, VerdictKind::Unparsable { .. }) {
            prop_assert_eq!(v.fingerprint, 0);
        }
    }

    #[test]
    fn random_sql_ish_text_never_panics(
        words in prop::collection::vec(
            prop::sample::select(vec![
                "SELECT", "FROM", "WHERE", "WITH", "AS", "(", ")", ",", ";", "set_config",
                "'app.tenant_id'", "$1", "true", "orders", "pg_class", "SET", "ROLE", "LOCAL",
                "RESET", "INSERT", "INTO", "VALUES", "DELETE", "UPDATE", "=", "1", "x",
                "RETURNING", "CALL", "EXPLAIN", "ANALYZE", "JOIN", "ON", "LATERAL", "UNION",
                "app.tenant_id", "TO", "DEFAULT", "COPY", "PROGRAM", "TRUNCATE", "DO", "$$",
                "BEGIN", "COMMIT", "/*tenant='a'*/", "--", "\n", "'", "\"",
            ]),
            0..30,
        )
    ) {
        let sql = words.join(" ");
        let v = classify(&sql, &rules());
        prop_assert!(v.relations.windows(2).all(|w| w[0] < w[1]));
    }
}

#[test]
fn function_definitions_are_refused_unless_allowed() {
    let strict = Rules {
        allow_functions: false,
        ..rules()
    };
    let body_sets_tenant = "CREATE FUNCTION f() RETURNS text LANGUAGE sql AS \
                            $$ SELECT set_config('app.tenant_id', 'other', false) $$";
    for sql in [
        body_sets_tenant,
        "CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql AS 'select 1'",
        "CREATE PROCEDURE p() LANGUAGE plpgsql AS $$ BEGIN NULL; END $$",
        "CREATE FUNCTION pg_temp.f() RETURNS int LANGUAGE sql AS 'select 1'",
    ] {
        assert_eq!(
            classify(sql, &strict).kind,
            VerdictKind::Forbidden(Forbidden::FunctionDefinition),
            "{sql}"
        );
    }
    // A SET clause of the tenant setting keeps its own, more specific reason.
    assert_eq!(
        classify(
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql SET app.tenant_id = 'x' AS 'select 1'",
            &strict
        )
        .kind,
        VerdictKind::Forbidden(Forbidden::FunctionSetsTenant)
    );
    // Allowed, the definition itself touches no tenant rows.
    assert_eq!(kind(body_sets_tenant), VerdictKind::Free);
    // Calling an existing function is not a definition.
    assert_eq!(
        classify("SELECT f()", &strict).kind,
        VerdictKind::NeedsTenant
    );
}

#[test]
fn cache_shares_plain_dml_across_constants_but_not_set_config() {
    let cache = VerdictCache::new(100, Arc::new(rules()));
    let a = cache.verdict("SELECT * FROM orders WHERE id = 1 AND note = 'a'");
    let b = cache.verdict("/*tenant='t2'*/ SELECT * FROM orders WHERE id = 2 AND note = 'b''c'");
    assert!(Arc::ptr_eq(&a, &b), "one verdict for both");
    assert_eq!(a.kind, VerdictKind::NeedsTenant);
    assert!(!a.constants_matter);
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses), (1, 1));
    // The classified text and its masked form; the second text added nothing.
    assert_eq!(stats.entries, 2);
    // Quoted identifiers are names, not constants.
    let c = cache.verdict("SELECT * FROM \"countries\" WHERE id = 3");
    assert_eq!(c.kind, VerdictKind::Free);

    // set_config reads its constants: which setting decides the verdict.
    let harmless = cache.verdict("SELECT set_config('work_mem', '1MB', true), 1");
    let role = cache.verdict("SELECT set_config('role', 'admin', true), 1");
    assert!(harmless.constants_matter);
    assert_ne!(harmless.kind, role.kind);
    assert_eq!(role.kind, VerdictKind::Forbidden(Forbidden::SetRole));
    // So do utility statements and tenant commands.
    let set_a = cache.verdict("SET app.tenant_id = 'a'");
    let set_b = cache.verdict("SET app.tenant_id = 'b'");
    assert_ne!(set_a.kind, set_b.kind);
    let strict = cache.verdict("VACUUM (PARALLEL 0) orders");
    assert!(strict.constants_matter);
}

#[test]
fn transaction_control_and_what_undoes_the_tenant() {
    for sql in [
        "BEGIN",
        "BEGIN ISOLATION LEVEL SERIALIZABLE",
        "START TRANSACTION READ ONLY",
        "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ",
        "SAVEPOINT s",
        "COMMIT",
        "BEGIN; SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
    ] {
        assert!(verdict(sql).tx.control_only, "{sql}");
    }
    for sql in [
        "SELECT 1",
        "BEGIN; SELECT 1",
        "SET work_mem = '1MB'",
        "SET app.tenant_id = 'a'",
    ] {
        assert!(!verdict(sql).tx.control_only, "{sql}");
    }
    assert!(verdict("RESET ALL").tx.resets_settings);
    for sql in [
        "ROLLBACK TO s; SELECT * FROM orders",
        "RESET ALL; SELECT * FROM orders",
        "COMMIT; SELECT * FROM orders",
    ] {
        assert!(verdict(sql).tx.tenant_after_end, "{sql}");
    }
    assert!(
        !verdict("SELECT * FROM orders; ROLLBACK TO s")
            .tx
            .tenant_after_end
    );
}
