-- deploy/rls-demo-data.sql: three sample tenants with a few projects and tasks each, for the
-- schema of deploy/rls.sql. Run it after rls.sql, as the same owner role:
--
--   psql -v ON_ERROR_STOP=1 -f deploy/rls-demo-data.sql "postgresql://owner@host/db"
--
-- The tenant tables FORCE row-level security, so even their owner writes one tenant at a time:
-- each block sets the tenant (transaction-local, as Sentinel does) and its rows must pass the
-- policies' WITH CHECK. Running it again adds the projects and tasks again.

\set ON_ERROR_STOP on

BEGIN;
-- Global table: no RLS, no tenant needed.
INSERT INTO tenants (id, name) VALUES
    ('acme', 'Acme Corporation'),
    ('globex', 'Globex Corporation'),
    ('initech', 'Initech')
ON CONFLICT (id) DO NOTHING;
COMMIT;

BEGIN;
SELECT set_config('app.tenant_id', 'acme', true) AS tenant \gset
WITH p AS (
    INSERT INTO projects (tenant_id, name) VALUES
        ('acme', 'Rocket skates'),
        ('acme', 'Giant magnet')
    RETURNING id, name
)
INSERT INTO tasks (tenant_id, project_id, title, done)
SELECT 'acme', p.id, t.title, t.done
FROM p
JOIN (VALUES
    ('Rocket skates', 'Order rockets', true),
    ('Rocket skates', 'Test on a canyon road', false),
    ('Giant magnet', 'Find an anvil supplier', false)
) AS t (project, title, done) ON t.project = p.name;
COMMIT;

BEGIN;
SELECT set_config('app.tenant_id', 'globex', true) AS tenant \gset
WITH p AS (
    INSERT INTO projects (tenant_id, name) VALUES
        ('globex', 'Doomsday device'),
        ('globex', 'Hammock district')
    RETURNING id, name
)
INSERT INTO tasks (tenant_id, project_id, title, done)
SELECT 'globex', p.id, t.title, t.done
FROM p
JOIN (VALUES
    ('Doomsday device', 'Hire a new project lead', false),
    ('Hammock district', 'Order hammocks', true),
    ('Hammock district', 'Plan the chili cook-off', false)
) AS t (project, title, done) ON t.project = p.name;
COMMIT;

BEGIN;
SELECT set_config('app.tenant_id', 'initech', true) AS tenant \gset
WITH p AS (
    INSERT INTO projects (tenant_id, name) VALUES
        ('initech', 'TPS reports'),
        ('initech', 'Y2K patch')
    RETURNING id, name
)
INSERT INTO tasks (tenant_id, project_id, title, done)
SELECT 'initech', p.id, t.title, t.done
FROM p
JOIN (VALUES
    ('TPS reports', 'Add the new cover sheet', false),
    ('TPS reports', 'Find the red stapler', false),
    ('Y2K patch', 'Fix the rounding in the sub-routine', true)
) AS t (project, title, done) ON t.project = p.name;
COMMIT;
