//! The ledger's schema: versioned migrations Sentinel applies itself at start (or `sentinel
//! ledger migrate`), each once, under an advisory lock so replicas starting together do not race.
//!
//! The write paths are SQL functions, so each is one round trip and one transaction, and takes
//! its row locks in one order everywhere — the lease row first, then the budget rows in scope
//! order (`''`, the tenant's whole budget, sorts first) — so replicas never deadlock on each
//! other:
//!
//! - `lease_take`: grows (or opens) a lease by what the budget can give: at least `need`, at
//!   most `want`, and no more than an eighth of what is free, so the last of a budget is shared
//!   out in small slices instead of stranded in one replica. Per scope it is one conditional
//!   `UPDATE … SET reserved = reserved + grant WHERE spent + reserved + need <= limit`.
//! - `record`: one usage event, idempotent by request id: inserted once, its cost moved from the
//!   lease's hold to the period's spend. An event of a swept lease first uses up the credit the
//!   sweeper charged for it, so a late event is never charged twice.
//! - `lease_return`: gives back what a lease holds beyond `keep`, or closes it.
//! - `sweep`: charges and ends leases past their expiry (`FOR UPDATE SKIP LOCKED`, ordered by
//!   tenant, in small batches): what the lease owed at its last heartbeat (calls in flight,
//!   usage not yet recorded) is spent, the rest comes back.
//!
//! Periods roll inside the statements: a row whose `period_start` is older than the period of
//! `now` (in the configured time zone) starts from zero spend; an event of an earlier period is
//! recorded but does not count against the current one.

/// `(version, SQL)`, applied in order; `{s}` is the schema (a validated identifier).
const MIGRATIONS: &[(i32, &str)] = &[(1, V1), (2, V2)];

/// The kill switch, shared by every replica.
const V2: &str = r#"
CREATE TABLE {s}.blocks (
    tenant text PRIMARY KEY,
    llm boolean NOT NULL,
    db boolean NOT NULL,
    since timestamptz NOT NULL DEFAULT now()
);
"#;

const V1: &str = r#"
CREATE TABLE {s}.budgets (
    tenant text NOT NULL,
    scope text NOT NULL,
    limit_micros bigint NOT NULL CHECK (limit_micros >= 0),
    period text NOT NULL CHECK (period IN ('day', 'month', 'total')),
    soft_threshold double precision NOT NULL DEFAULT 0.8,
    period_start timestamptz NOT NULL DEFAULT '-infinity',
    spent bigint NOT NULL DEFAULT 0,
    reserved bigint NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    last_grant bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, scope)
);

CREATE TABLE {s}.leases (
    id text PRIMARY KEY,
    tenant text NOT NULL,
    scopes text[] NOT NULL,
    replica text NOT NULL,
    amount bigint NOT NULL DEFAULT 0 CHECK (amount >= 0),
    owed bigint NOT NULL DEFAULT 0,
    credit bigint NOT NULL DEFAULT 0,
    state text NOT NULL DEFAULT 'live' CHECK (state IN ('live', 'closed', 'swept')),
    expires_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX leases_live_expiry ON {s}.leases (expires_at) WHERE state = 'live';

CREATE TABLE {s}.usage_events (
    request_id text PRIMARY KEY,
    tenant text NOT NULL,
    model text NOT NULL,
    provider text NOT NULL,
    lease_id text,
    input_tokens bigint NOT NULL DEFAULT 0,
    cached_input_tokens bigint NOT NULL DEFAULT 0,
    cache_write_5m_tokens bigint NOT NULL DEFAULT 0,
    cache_write_1h_tokens bigint NOT NULL DEFAULT 0,
    output_tokens bigint NOT NULL DEFAULT 0,
    reasoning_tokens bigint NOT NULL DEFAULT 0,
    cost bigint NOT NULL,
    charged bigint NOT NULL DEFAULT 0,
    outcome text NOT NULL,
    estimated boolean NOT NULL,
    at timestamptz NOT NULL,
    replica text NOT NULL
);
CREATE INDEX usage_events_tenant_at ON {s}.usage_events (tenant, at DESC);

CREATE TABLE {s}.revoked_keys (
    key_id text PRIMARY KEY,
    revoked_at timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION {s}.period_start(p_period text, p_at timestamptz, p_tz text)
RETURNS timestamptz LANGUAGE sql STABLE AS $$
    SELECT CASE p_period
        WHEN 'day' THEN date_trunc('day', p_at AT TIME ZONE p_tz) AT TIME ZONE p_tz
        WHEN 'month' THEN date_trunc('month', p_at AT TIME ZONE p_tz) AT TIME ZONE p_tz
        ELSE '-infinity'::timestamptz
    END
$$;

-- Moves the row of (tenant, scope) into the period of p_at if that is newer, then adds
-- p_spend (counted only if p_at is in the row's current period) and p_reserve.
CREATE FUNCTION {s}.charge(p_tenant text, p_scope text, p_at timestamptz, p_tz text,
                           p_spend bigint, p_reserve bigint)
RETURNS void LANGUAGE sql AS $$
    UPDATE {s}.budgets SET
        spent = CASE WHEN period_start < {s}.period_start(period, p_at, p_tz) THEN 0 ELSE spent END
              + CASE WHEN {s}.period_start(period, p_at, p_tz) >= period_start THEN p_spend ELSE 0 END,
        period_start = GREATEST(period_start, {s}.period_start(period, p_at, p_tz)),
        reserved = GREATEST(0, reserved + p_reserve)
    WHERE tenant = p_tenant AND scope = p_scope
$$;

CREATE FUNCTION {s}.lease_take(
    p_lease text, p_tenant text, p_scopes text[], p_replica text,
    p_need bigint, p_want bigint, p_owed bigint,
    p_now timestamptz, p_expires timestamptz, p_tz text)
RETURNS TABLE (granted bigint, short_scope text, limit_micros bigint, spent bigint, reserved bigint)
LANGUAGE plpgsql AS $$
DECLARE
    sc text;
    got bigint;
    grants bigint[] := '{}';
    final bigint;
    i int;
BEGIN
    INSERT INTO {s}.leases AS l (id, tenant, scopes, replica, owed, expires_at)
    VALUES (p_lease, p_tenant, p_scopes, p_replica, p_owed, p_expires)
    ON CONFLICT (id) DO UPDATE SET expires_at = EXCLUDED.expires_at
        WHERE l.state = 'live';
    IF NOT FOUND THEN
        RETURN QUERY SELECT 0::bigint, '!lease'::text, NULL::bigint, NULL::bigint, NULL::bigint;
        RETURN;
    END IF;
    FOREACH sc IN ARRAY p_scopes LOOP
        UPDATE {s}.budgets b SET
            spent = CASE WHEN b.period_start < {s}.period_start(b.period, p_now, p_tz) THEN 0 ELSE b.spent END,
            period_start = GREATEST(b.period_start, {s}.period_start(b.period, p_now, p_tz)),
            last_grant = LEAST(p_want, GREATEST(p_need, (b.limit_micros - b.reserved
                - CASE WHEN b.period_start < {s}.period_start(b.period, p_now, p_tz) THEN 0 ELSE b.spent END) / 8)),
            reserved = b.reserved + LEAST(p_want, GREATEST(p_need, (b.limit_micros - b.reserved
                - CASE WHEN b.period_start < {s}.period_start(b.period, p_now, p_tz) THEN 0 ELSE b.spent END) / 8))
        WHERE b.tenant = p_tenant AND b.scope = sc
          AND CASE WHEN b.period_start < {s}.period_start(b.period, p_now, p_tz) THEN 0 ELSE b.spent END
              + b.reserved + p_need <= b.limit_micros
        RETURNING b.last_grant INTO got;
        IF NOT FOUND THEN
            -- A lease that holds nothing (a refused one-call lease, or an empty slice) must not
            -- linger: the sweeper would charge what it says it owes.
            DELETE FROM {s}.leases WHERE id = p_lease AND amount = 0;
            -- Give back what earlier scopes granted in this call, then say which one is short.
            FOR i IN 1 .. coalesce(array_length(grants, 1), 0) LOOP
                UPDATE {s}.budgets b SET reserved = b.reserved - grants[i]
                WHERE b.tenant = p_tenant AND b.scope = p_scopes[i];
            END LOOP;
            RETURN QUERY SELECT 0::bigint, sc, b.limit_micros,
                CASE WHEN b.period_start < {s}.period_start(b.period, p_now, p_tz) THEN 0 ELSE b.spent END,
                b.reserved
            FROM (SELECT 1) one LEFT JOIN {s}.budgets b ON b.tenant = p_tenant AND b.scope = sc;
            RETURN;
        END IF;
        grants := grants || got;
    END LOOP;
    SELECT min(g) INTO final FROM unnest(grants) g;
    -- Every scope holds the same amount: trim those that granted more than the least.
    FOR i IN 1 .. array_length(grants, 1) LOOP
        IF grants[i] > final THEN
            UPDATE {s}.budgets b SET reserved = b.reserved - (grants[i] - final)
            WHERE b.tenant = p_tenant AND b.scope = p_scopes[i];
        END IF;
    END LOOP;
    UPDATE {s}.leases SET amount = amount + final WHERE id = p_lease;
    RETURN QUERY SELECT final, NULL::text, NULL::bigint, NULL::bigint, NULL::bigint;
END
$$;

CREATE FUNCTION {s}.record(
    p_request_id text, p_tenant text, p_model text, p_provider text, p_lease text,
    p_input bigint, p_cached bigint, p_cw5 bigint, p_cw1 bigint, p_output bigint, p_reasoning bigint,
    p_cost bigint, p_outcome text, p_estimated boolean, p_at timestamptz, p_replica text,
    p_close boolean, p_tz text, p_reported bigint)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    l {s}.leases%ROWTYPE;
    spend bigint := p_cost;
    free bigint := 0;
    counted boolean;
    sc text;
BEGIN
    SELECT * INTO l FROM {s}.leases WHERE id = p_lease FOR UPDATE;
    IF l.state = 'live' AND l.replica <> p_replica AND NOT p_close THEN
        -- A previous run's lease, replayed from its spool: that run is gone, so end its lease
        -- as the sweeper would (charging what it owed), and let this event use up that charge.
        PERFORM {s}.sweep_one(l.id, p_at, p_tz);
        SELECT * INTO l FROM {s}.leases WHERE id = p_lease;
    END IF;
    INSERT INTO {s}.usage_events (request_id, tenant, model, provider, lease_id, input_tokens,
        cached_input_tokens, cache_write_5m_tokens, cache_write_1h_tokens, output_tokens,
        reasoning_tokens, cost, outcome, estimated, at, replica)
    VALUES (p_request_id, p_tenant, p_model, p_provider, p_lease, p_input, p_cached, p_cw5,
        p_cw1, p_output, p_reasoning, p_cost, p_outcome, p_estimated, p_at, p_replica)
    ON CONFLICT (request_id) DO NOTHING;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF l.id IS NULL THEN
        SELECT {s}.period_start(b.period, p_at, p_tz) >= b.period_start INTO counted
        FROM {s}.budgets b WHERE b.tenant = p_tenant AND b.scope = '';
        PERFORM {s}.charge(p_tenant, '', p_at, p_tz, spend, 0);
    ELSE
        IF l.state = 'swept' THEN
            spend := GREATEST(0, p_cost - l.credit);
            UPDATE {s}.leases SET credit = GREATEST(0, credit - p_cost) WHERE id = l.id;
        ELSIF l.state = 'live' THEN
            free := CASE WHEN p_close THEN l.amount ELSE LEAST(p_cost, l.amount) END;
            UPDATE {s}.leases SET amount = amount - free,
                owed = GREATEST(0, owed - p_reported),
                state = CASE WHEN p_close THEN 'closed' ELSE state END
            WHERE id = l.id;
        END IF;
        -- Counted only if the event is not from a period before the budget's current one.
        SELECT {s}.period_start(b.period, p_at, p_tz) >= b.period_start INTO counted
        FROM {s}.budgets b WHERE b.tenant = l.tenant AND b.scope = '';
        FOREACH sc IN ARRAY l.scopes LOOP
            PERFORM {s}.charge(l.tenant, sc, p_at, p_tz, spend, -free);
        END LOOP;
    END IF;
    UPDATE {s}.usage_events SET charged = CASE WHEN coalesce(counted, true) THEN spend ELSE 0 END
    WHERE request_id = p_request_id;
    RETURN true;
END
$$;

CREATE FUNCTION {s}.lease_return(p_lease text, p_keep bigint, p_owed bigint, p_close boolean,
                                 p_now timestamptz, p_expires timestamptz, p_tz text)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    l {s}.leases%ROWTYPE;
    give bigint;
    sc text;
BEGIN
    SELECT * INTO l FROM {s}.leases WHERE id = p_lease AND state = 'live' FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    give := GREATEST(0, l.amount - p_keep);
    FOREACH sc IN ARRAY l.scopes LOOP
        PERFORM {s}.charge(l.tenant, sc, p_now, p_tz, 0, -give);
    END LOOP;
    UPDATE {s}.leases SET amount = amount - give, owed = p_owed, expires_at = p_expires,
        state = CASE WHEN p_close THEN 'closed' ELSE state END
    WHERE id = p_lease;
    RETURN l.amount - give;
END
$$;

-- Ends one live lease (locked by the caller): what it owed is charged, the rest comes back.
CREATE FUNCTION {s}.sweep_one(p_lease text, p_now timestamptz, p_tz text)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    l {s}.leases%ROWTYPE;
    sc text;
BEGIN
    SELECT * INTO l FROM {s}.leases WHERE id = p_lease AND state = 'live';
    IF NOT FOUND THEN
        RETURN;
    END IF;
    FOREACH sc IN ARRAY l.scopes LOOP
        PERFORM {s}.charge(l.tenant, sc, p_now, p_tz, l.owed, -l.amount);
    END LOOP;
    UPDATE {s}.leases SET state = 'swept', credit = l.owed, amount = 0 WHERE id = l.id;
    INSERT INTO {s}.usage_events (request_id, tenant, model, provider, lease_id, cost,
        charged, outcome, estimated, at, replica)
    VALUES (l.id || ':expired', l.tenant, '', '', l.id, l.owed, l.owed, 'expired', true,
        p_now, l.replica)
    ON CONFLICT (request_id) DO NOTHING;
END
$$;

CREATE FUNCTION {s}.sweep(p_now timestamptz, p_batch int, p_tz text)
RETURNS int LANGUAGE plpgsql AS $$
DECLARE
    l {s}.leases%ROWTYPE;
    n int := 0;
BEGIN
    FOR l IN
        SELECT * FROM {s}.leases
        WHERE state = 'live' AND expires_at < p_now
        ORDER BY tenant, id
        LIMIT p_batch
        FOR UPDATE SKIP LOCKED
    LOOP
        PERFORM {s}.sweep_one(l.id, p_now, p_tz);
        n := n + 1;
    END LOOP;
    RETURN n;
END
$$;
"#;

/// Creates the schema if needed and applies every migration not yet applied, in one
/// transaction under an advisory lock. Returns the versions applied now.
pub async fn migrate(
    client: &mut tokio_postgres::Client,
    schema: &str,
) -> Result<Vec<i32>, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    // One migrator at a time across replicas; the lock ends with the transaction.
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('sentinel-ledger-migrate:' || $1))",
        &[&schema],
    )
    .await?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS {schema}.migrations (
             version int PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now())"
    ))
    .await?;
    let done: Vec<i32> = tx
        .query(&format!("SELECT version FROM {schema}.migrations"), &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut applied = Vec::new();
    for (version, sql) in MIGRATIONS {
        if done.contains(version) {
            continue;
        }
        tx.batch_execute(&sql.replace("{s}", schema)).await?;
        tx.execute(
            &format!("INSERT INTO {schema}.migrations (version) VALUES ($1)"),
            &[version],
        )
        .await?;
        applied.push(*version);
    }
    tx.commit().await?;
    Ok(applied)
}

/// The newest schema version this build knows.
pub fn latest() -> i32 {
    MIGRATIONS.last().map_or(0, |(v, _)| *v)
}
