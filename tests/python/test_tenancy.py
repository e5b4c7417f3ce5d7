"""Tenant context through Sentinel with real drivers: psycopg 3 with server-side prepared
statements (`prepare_threshold=0`: every statement is a named prepared statement) and asyncpg
(which always prepares, and caches statements by text across transactions).

A small real workload (inserts, updates, selects, in transactions) per tenant, with the tenant
given by a sqlcommenter comment or by the set source (`SET app.tenant_id` after BEGIN under
scope = "transaction"; `SELECT set_config('app.tenant_id', $1, false)` under scope = "session"),
and the rows each tenant sees compared with what a direct superuser connection (the oracle, which
bypasses Sentinel and RLS) says that tenant has."""

from __future__ import annotations

import asyncio
import itertools

import asyncpg
import psycopg
import pytest
from psycopg import sql

from conftest import SEEDED_PER_TENANT, TENANTS

CONTEXT_REQUIRED = "tenant context required"
_notes = itertools.count()


def note(prefix: str, tenant: str) -> str:
    return f"{prefix}-{tenant}-{next(_notes)}"


def tag(tenant: str) -> str:
    return f"/*tenant='{tenant}'*/ "


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=120))


def assert_only(rows, tenant: str, oracle_rows) -> None:
    """`rows` are (tenant_id, v) pairs read through Sentinel as `tenant`."""
    rows = [tuple(r) for r in rows]
    assert all(t == tenant for t, _ in rows), f"{tenant} saw other tenants' rows: {rows}"
    assert sorted(rows) == sorted(oracle_rows), (
        f"{tenant} saw {sorted(rows)}; the oracle says {sorted(oracle_rows)}"
    )


def assert_context_required(exc: BaseException) -> None:
    sqlstate = getattr(exc, "sqlstate", None)
    message = getattr(getattr(exc, "diag", None), "message_primary", None) or str(exc)
    assert sqlstate == "42501", f"expected 42501, got {sqlstate}: {exc}"
    assert CONTEXT_REQUIRED in message, message


# --- psycopg 3, server-side prepared statements ---


def test_psycopg_comment_source_workload(sentinel_tenancy):
    env = sentinel_tenancy
    for tenant in TENANTS:
        a, b = note("pyc", tenant), note("pyc", tenant)
        with env.sentinel.connect(prepare_threshold=0) as conn:  # transactions, implicit BEGIN
            # The tag on the first statement holds for the whole transaction.
            conn.execute(tag(tenant) + "INSERT INTO items (tenant_id, v) VALUES (%s, %s)", (tenant, a))
            conn.execute("INSERT INTO items (tenant_id, v) VALUES (%s, %s)", (tenant, b))
            cur = conn.execute("UPDATE items SET v = v || '!' WHERE v = %s", (b,))
            assert cur.rowcount == 1
            setting = conn.execute("SELECT current_setting('app.tenant_id', true)").fetchone()
            assert setting == (tenant,)
            conn.commit()

            rows = conn.execute(tag(tenant) + "SELECT tenant_id, v FROM items ORDER BY id").fetchall()
            conn.commit()
            assert_only(rows, tenant, env.oracle_rows(tenant))
            assert (tenant, b + "!") in [tuple(r) for r in rows]

            # A transaction without a tag is refused, and the connection carries on.
            with pytest.raises(psycopg.Error) as info:
                conn.execute("SELECT tenant_id, v FROM items")
            assert_context_required(info.value)
            conn.rollback()

    # Autocommit: every statement is its own transaction and carries its tag; the same
    # connection serves all tenants in turn, each statement prepared.
    with env.sentinel.connect(autocommit=True, prepare_threshold=0) as conn:
        for _ in range(2):
            for tenant in TENANTS:
                rows = conn.execute(
                    "SELECT tenant_id, v FROM items WHERE id > %s ORDER BY id /*tenant='"
                    + tenant
                    + "'*/",
                    (0,),
                ).fetchall()
                assert_only(rows, tenant, env.oracle_rows(tenant))
        with pytest.raises(psycopg.Error) as info:
            conn.execute("SELECT count(*) FROM items")
        assert_context_required(info.value)
        assert conn.execute("SELECT count(*) FROM tenants").fetchone() == (len(TENANTS),)


def test_psycopg_set_source_after_begin(sentinel_tenancy):
    env = sentinel_tenancy
    with env.sentinel.connect(prepare_threshold=0) as conn:
        for tenant in TENANTS * 2:
            n = note("pys", tenant)
            conn.execute(sql.SQL("SET app.tenant_id = {}").format(sql.Literal(tenant)))
            conn.execute("INSERT INTO items (tenant_id, v) VALUES (%s, %s)", (tenant, n))
            conn.execute("UPDATE items SET v = upper(v) WHERE v = %s", (n,))
            rows = conn.execute("SELECT tenant_id, v FROM items ORDER BY id").fetchall()
            assert (tenant, n.upper()) in [tuple(r) for r in rows]
            conn.commit()
            assert_only(rows, tenant, env.oracle_rows(tenant))
            # The tenant ended with the transaction (scope = "transaction").
            with pytest.raises(psycopg.Error) as info:
                conn.execute("SELECT tenant_id, v FROM items")
            assert_context_required(info.value)
            conn.rollback()
        # A write that names another tenant than the context is stopped by RLS.
        conn.execute(sql.SQL("SET LOCAL app.tenant_id = {}").format(sql.Literal("acme")))
        with pytest.raises(psycopg.Error):
            conn.execute("INSERT INTO items (tenant_id, v) VALUES ('globex', 'sneaky')")
        conn.rollback()
    with env.oracle() as o:
        assert o.execute("SELECT count(*) FROM items WHERE v = 'sneaky'").fetchone() == (0,)


def test_psycopg_set_config_session_scope(sentinel_tenancy_session):
    env = sentinel_tenancy_session
    with env.sentinel.connect(autocommit=True, prepare_threshold=0) as conn:
        for tenant in TENANTS * 2:
            got = conn.execute(
                "SELECT set_config('app.tenant_id', %s, false)", (tenant,)
            ).fetchone()
            assert got == (tenant,)
            n = note("pyss", tenant)
            # Autocommit statements and explicit transactions all run as the tenant.
            conn.execute("INSERT INTO items (tenant_id, v) VALUES (%s, %s)", (tenant, n))
            with conn.transaction():
                cur = conn.execute("UPDATE items SET v = v || '+' WHERE v = %s", (n,))
                assert cur.rowcount == 1
                rows = conn.execute("SELECT tenant_id, v FROM items ORDER BY id").fetchall()
                assert conn.execute(
                    "SELECT current_setting('app.tenant_id', true)"
                ).fetchone() == (tenant,)
            assert_only(rows, tenant, env.oracle_rows(tenant))
            rows = conn.execute("SELECT tenant_id, v FROM items ORDER BY id").fetchall()
            assert_only(rows, tenant, env.oracle_rows(tenant))
        conn.execute("RESET app.tenant_id")
        with pytest.raises(psycopg.Error) as info:
            conn.execute("SELECT tenant_id, v FROM items")
        assert_context_required(info.value)


def test_psycopg_threads_for_different_tenants(sentinel_tenancy):
    """Several connections at once on a pool of 2, each its own tenant, comment source."""
    import threading

    env = sentinel_tenancy
    failures: list[BaseException] = []

    def worker(tenant: str) -> None:
        try:
            with env.sentinel.connect(autocommit=True, prepare_threshold=0) as conn:
                for i in range(30):
                    n = note("pyt", tenant)
                    got = conn.execute(
                        tag(tenant)
                        + "INSERT INTO items (tenant_id, v) VALUES "
                        "(current_setting('app.tenant_id'), %s) RETURNING tenant_id",
                        (n,),
                    ).fetchone()
                    assert got == (tenant,), f"{tenant}'s insert went to {got}"
                    rows = conn.execute(
                        tag(tenant) + "SELECT tenant_id, v FROM items ORDER BY id"
                    ).fetchall()
                    assert all(r[0] == tenant for r in rows), f"{tenant} saw {rows}"
        except BaseException as e:  # noqa: BLE001 - reported below
            failures.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in TENANTS * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not failures, failures
    with env.oracle() as o:
        bad = o.execute(
            "SELECT v, tenant_id FROM items WHERE v LIKE 'pyt-%' AND split_part(v, '-', 2) <> tenant_id"
        ).fetchall()
        assert bad == []


# --- asyncpg: every query prepared and cached by text ---


def test_asyncpg_comment_source_workload(sentinel_tenancy):
    env = sentinel_tenancy

    async def main():
        conn = await asyncpg.connect(**env.sentinel.asyncpg_kwargs())
        try:
            for tenant in TENANTS:
                a = note("apc", tenant)
                async with conn.transaction():
                    await conn.execute(
                        tag(tenant) + "INSERT INTO items (tenant_id, v) VALUES ($1, $2)", tenant, a
                    )
                    # Untagged, later in the same transaction.
                    status = await conn.execute("UPDATE items SET v = v || '!' WHERE v = $1", a)
                    assert status == "UPDATE 1"
                    assert await conn.fetchval(
                        "SELECT current_setting('app.tenant_id', true)"
                    ) == tenant
                rows = await conn.fetch(tag(tenant) + "SELECT tenant_id, v FROM items ORDER BY id")
                assert_only([(r["tenant_id"], r["v"]) for r in rows], tenant, env.oracle_rows(tenant))
                # The same (cached) statement for each tenant in turn.
                for t in TENANTS:
                    rows = await conn.fetch(
                        "SELECT tenant_id, v FROM items WHERE id > $1 /*tenant='" + t + "'*/", 0
                    )
                    assert_only([tuple(r) for r in rows], t, env.oracle_rows(t))
            with pytest.raises(asyncpg.PostgresError) as info:
                await conn.fetch("SELECT tenant_id FROM items")
            assert info.value.sqlstate == "42501"
            assert CONTEXT_REQUIRED in str(info.value)
            assert await conn.fetchval("SELECT count(*) FROM tenants") == len(TENANTS)
        finally:
            await conn.close()

    run(main())


def test_asyncpg_set_source_after_begin(sentinel_tenancy):
    env = sentinel_tenancy

    async def main():
        conn = await asyncpg.connect(**env.sentinel.asyncpg_kwargs())
        try:
            for tenant in TENANTS * 2:
                n = note("aps", tenant)
                async with conn.transaction():
                    # No arguments: asyncpg sends this as a simple query.
                    await conn.execute(f"SET app.tenant_id = '{tenant}'")
                    await conn.execute("INSERT INTO items (tenant_id, v) VALUES ($1, $2)", tenant, n)
                    await conn.execute("UPDATE items SET v = upper(v) WHERE v = $1", n)
                    # The same statement text every time: asyncpg reuses its prepared statement.
                    rows = await conn.fetch("SELECT tenant_id, v FROM items ORDER BY id")
                assert_only([tuple(r) for r in rows], tenant, env.oracle_rows(tenant))
                assert (tenant, n.upper()) in [tuple(r) for r in rows]
                with pytest.raises(asyncpg.PostgresError) as info:
                    await conn.fetch("SELECT tenant_id, v FROM items ORDER BY id")
                assert info.value.sqlstate == "42501"
        finally:
            await conn.close()

    run(main())


def test_asyncpg_set_config_session_scope_concurrently(sentinel_tenancy_session):
    env = sentinel_tenancy_session

    async def client(tenant: str, rounds: int):
        conn = await asyncpg.connect(**env.sentinel.asyncpg_kwargs())
        try:
            assert await conn.fetchval("SELECT set_config('app.tenant_id', $1, false)", tenant) == tenant
            for _ in range(rounds):
                n = note("apss", tenant)
                got = await conn.fetchval(
                    "INSERT INTO items (tenant_id, v) VALUES (current_setting('app.tenant_id'), $1)"
                    " RETURNING tenant_id",
                    n,
                )
                assert got == tenant, f"{tenant}'s insert went to {got}"
                async with conn.transaction():
                    await conn.execute("UPDATE items SET v = v || '+' WHERE v = $1", n)
                    rows = await conn.fetch("SELECT tenant_id, v FROM items ORDER BY id")
                assert all(r["tenant_id"] == tenant for r in rows), f"{tenant} saw {rows}"
                assert (tenant, n + "+") in [tuple(r) for r in rows]
            await conn.execute("RESET app.tenant_id")
            with pytest.raises(asyncpg.PostgresError) as info:
                await conn.fetch("SELECT tenant_id, v FROM items ORDER BY id")
            assert info.value.sqlstate == "42501"
        finally:
            await conn.close()

    async def main():
        await asyncio.gather(*(client(t, 15) for t in TENANTS * 2))

    before = {t: len(env.oracle_rows(t)) for t in TENANTS}
    assert all(n >= SEEDED_PER_TENANT for n in before.values())
    run(main())
    for tenant in TENANTS:
        rows = env.oracle_rows(tenant)
        assert len(rows) == before[tenant] + 2 * 15
        assert all(t == tenant for t, _ in rows)
    with env.oracle() as o:
        bad = o.execute(
            "SELECT v, tenant_id FROM items WHERE v LIKE 'apss-%' AND split_part(v, '-', 2) <> tenant_id"
        ).fetchall()
        assert bad == []
