-- deploy/rls.sql: the reference multi-tenant schema, set up so row-level security cannot be
-- bypassed by the role the application (through Sentinel) connects as.
--
-- Run it as the role that owns the schema (the database owner, or a migration role), never as the
-- app role:
--
--   psql -v ON_ERROR_STOP=1 -v app_role=app -f deploy/rls.sql "postgresql://owner@host/db"
--
-- Variables: app_role (default `app`): an existing login role that is not the owner, not
-- superuser and not BYPASSRLS; Sentinel logs in upstream as that role. tenant_setting (default
-- `app.tenant_id`): the setting the policies read, Sentinel's `[tenancy] setting`.
-- Safe to run again: every object is created if missing and the policies are replaced.
-- `sentinel audit` checks the result: it reports nothing for this schema.
--
-- In sentinel.toml: `[tenancy] global_tables = ["tenants"]` (the one table without tenant rows).

\set ON_ERROR_STOP on
\if :{?app_role}
\else
\set app_role app
\endif
\if :{?tenant_setting}
\else
\set tenant_setting app.tenant_id
\endif

-- One transaction: a failure leaves the database as it was.
BEGIN;
-- Quiet the "already exists, skipping" notices of a second run; warnings still show.
SET LOCAL client_min_messages = warning;

-- The checks below read the app role from a transaction-local setting (psql variables do not
-- reach into a DO block).
SELECT set_config('sentinel_rls.app_role', :'app_role', true) AS sentinel_rls_app_role \gset

DO $$
DECLARE
    app name := current_setting('sentinel_rls.app_role');
    r pg_roles%ROWTYPE;
BEGIN
    SELECT * INTO r FROM pg_roles WHERE rolname = app;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'rls.sql: role "%" does not exist', app
            USING HINT = 'create it first: CREATE ROLE ' || quote_ident(app)
                || ' LOGIN PASSWORD ''...''; (not superuser, not BYPASSRLS)';
    END IF;
    -- Superusers and BYPASSRLS roles skip every policy.
    IF r.rolsuper OR r.rolbypassrls THEN
        RAISE EXCEPTION 'rls.sql: role "%" is superuser or BYPASSRLS: RLS would never apply to it', app
            USING HINT = 'ALTER ROLE ' || quote_ident(app) || ' NOSUPERUSER NOBYPASSRLS';
    END IF;
    -- The tables' owner can switch RLS off again; the app role must never be it.
    IF pg_has_role(app, current_user, 'USAGE') THEN
        RAISE EXCEPTION 'rls.sql: run as "%", whose rights role "%" has: the app role would own the tables',
            current_user, app
            USING HINT = 'run this script as the schema owner, a role the app role is not a member of';
    END IF;
END
$$;

-- Nobody but the owner creates objects in public (PG15's default, made explicit): the app role
-- cannot add functions or tables that dodge the policies.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;

-- Global: tenants themselves. No RLS; list it in [tenancy] global_tables.
CREATE TABLE IF NOT EXISTS tenants (
    id text PRIMARY KEY,
    name text NOT NULL
);

CREATE TABLE IF NOT EXISTS projects (
    id bigserial PRIMARY KEY,
    tenant_id text NOT NULL REFERENCES tenants (id),
    name text,
    -- Target of tasks' (tenant_id, project_id) foreign key; its index also serves tenant_id lookups.
    UNIQUE (tenant_id, id)
);

CREATE TABLE IF NOT EXISTS tasks (
    id bigserial PRIMARY KEY,
    tenant_id text NOT NULL REFERENCES tenants (id),
    project_id bigint,
    title text,
    done bool NOT NULL DEFAULT false,
    -- Composite: a task can only point at a project of its own tenant (FK checks bypass RLS).
    FOREIGN KEY (tenant_id, project_id) REFERENCES projects (tenant_id, id)
);

-- Policies filter on tenant_id: index it (leading column) on every tenant table.
CREATE INDEX IF NOT EXISTS projects_tenant_id_idx ON projects (tenant_id);
CREATE INDEX IF NOT EXISTS tasks_tenant_id_project_id_idx ON tasks (tenant_id, project_id);

-- ENABLE: policies apply to everyone but the owner; FORCE: to the owner as well.
ALTER TABLE projects ENABLE ROW LEVEL SECURITY;
ALTER TABLE projects FORCE ROW LEVEL SECURITY;
ALTER TABLE tasks ENABLE ROW LEVEL SECURITY;
ALTER TABLE tasks FORCE ROW LEVEL SECURITY;

-- One policy per table for every command and role: rows of the current tenant only, for reads
-- (USING) and writes (WITH CHECK). nullif: an unset or reset setting reads as '' and must match
-- nothing (fail closed). (SELECT ...): evaluated once per statement, not once per row.
DROP POLICY IF EXISTS tenant_isolation ON projects;
CREATE POLICY tenant_isolation ON projects
    USING (tenant_id = (SELECT nullif(current_setting(:'tenant_setting', true), '')))
    WITH CHECK (tenant_id = (SELECT nullif(current_setting(:'tenant_setting', true), '')));

DROP POLICY IF EXISTS tenant_isolation ON tasks;
CREATE POLICY tenant_isolation ON tasks
    USING (tenant_id = (SELECT nullif(current_setting(:'tenant_setting', true), '')))
    WITH CHECK (tenant_id = (SELECT nullif(current_setting(:'tenant_setting', true), '')));

-- security_invoker: the view reads tasks with the caller's rights, so tasks' policies apply to
-- the caller (a default view would read as its owner).
CREATE OR REPLACE VIEW open_tasks WITH (security_invoker = true) AS
    SELECT id, tenant_id, project_id, title
    FROM tasks
    WHERE NOT done;

-- The app role gets data rights only: no ownership, no TRUNCATE (not subject to RLS), no
-- REFERENCES, no TRIGGER.
GRANT USAGE ON SCHEMA public TO :"app_role";
GRANT SELECT ON tenants TO :"app_role";
GRANT SELECT, INSERT, UPDATE, DELETE ON projects, tasks TO :"app_role";
GRANT SELECT ON open_tasks TO :"app_role";
-- bigserial ids: nextval() needs USAGE on the sequences.
GRANT USAGE ON SEQUENCE projects_id_seq, tasks_id_seq TO :"app_role";

COMMIT;
