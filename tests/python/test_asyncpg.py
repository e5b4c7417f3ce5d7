"""asyncpg through Sentinel (transaction pooling). asyncpg prepares every query as a named
statement (`__asyncpg_stmt_N__`, numbered per connection) and caches it, so many clients on a
small pool use the same names for different queries: Sentinel must keep them apart."""

from __future__ import annotations

import asyncio
import io

import asyncpg
import psycopg  # the oracle: direct connections that bypass Sentinel
import pytest


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=120))


def test_fetch_fetchval_executemany(sentinel_pool3, table_name):
    s = sentinel_pool3
    t = table_name

    async def main():
        conn = await asyncpg.connect(**s.asyncpg_kwargs())
        try:
            assert await conn.fetchval("SELECT current_user") == s.db.role
            await conn.execute(f"CREATE TABLE {t} (id int PRIMARY KEY, name text, score float8)")
            await conn.executemany(
                f"INSERT INTO {t} VALUES ($1, $2, $3)",
                [(i, f"n{i}", i / 2) for i in range(1, 501)],
            )
            assert await conn.fetchval(f"SELECT count(*) FROM {t}") == 500
            assert await conn.fetchval(f"SELECT sum(id) FROM {t} WHERE id <= $1", 10) == 55
            rows = await conn.fetch(
                f"SELECT id, name, score FROM {t} WHERE id = ANY($1::int[]) ORDER BY id",
                [3, 1, 2],
            )
            assert [tuple(r) for r in rows] == [(1, "n1", 0.5), (2, "n2", 1.0), (3, "n3", 1.5)]
            row = await conn.fetchrow(f"SELECT name FROM {t} WHERE id = $1", 42)
            assert row["name"] == "n42"
            # The same query again comes from asyncpg's statement cache (Bind of a named
            # statement without a new Parse).
            for i in range(1, 51):
                assert await conn.fetchval(f"SELECT name FROM {t} WHERE id = $1", i) == f"n{i}"
            # An explicit prepared statement.
            stmt = await conn.prepare(f"SELECT score FROM {t} WHERE id = $1")
            assert [await stmt.fetchval(i) for i in (2, 4, 6)] == [1.0, 2.0, 3.0]
            # Types asyncpg has to introspect (an enum and a composite).
            await conn.execute(f"CREATE TYPE {t}_mood AS ENUM ('sad', 'ok', 'happy')")
            assert await conn.fetchval(f"SELECT 'happy'::{t}_mood") == "happy"
            assert await conn.fetchval(f"SELECT ARRAY['ok', 'sad']::{t}_mood[]") == ["ok", "sad"]
            rec = await conn.fetchval("SELECT ROW(1, 'x')::record")
            assert tuple(rec) == (1, "x")
            # An error, then the connection carries on.
            with pytest.raises(asyncpg.exceptions.UniqueViolationError):
                await conn.execute(f"INSERT INTO {t} VALUES ($1, $2, $3)", 1, "dup", 0.0)
            assert await conn.fetchval("SELECT $1::int + 1", 41) == 42
        finally:
            await conn.close()

    run(main())
    with psycopg.connect(s.db.direct_dsn) as oracle:
        assert oracle.execute(f"SELECT count(*), sum(score) FROM {t}").fetchone() == (
            500,
            sum(i / 2 for i in range(1, 501)),
        )


def test_twenty_concurrent_connections_on_pool_of_three(sentinel_pool3, table_name):
    s = sentinel_pool3
    t = table_name
    clients, queries = 20, 50

    async def setup():
        conn = await asyncpg.connect(**s.asyncpg_kwargs())
        try:
            await conn.execute(f"CREATE TABLE {t} (id int PRIMARY KEY, val text NOT NULL)")
            await conn.execute(
                f"INSERT INTO {t} SELECT g, 'v' || g FROM generate_series(1, 1000) g"
            )
        finally:
            await conn.close()

    async def client(k: int) -> int:
        conn = await asyncpg.connect(**s.asyncpg_kwargs())
        try:
            ok = 0
            # Each client prepares its statements in a different order, so the per-connection
            # names `__asyncpg_stmt_1__`, `_2__`, ... mean different queries on different clients.
            stmts = [
                ("a", "SELECT $1::int * 2, $2::text || '!'"),
                ("b", f"SELECT val FROM {t} WHERE id = $1"),
                ("c", "SELECT $1::bigint + $2::bigint + $3::bigint"),
            ]
            stmts = stmts[k % 3 :] + stmts[: k % 3]
            for i in range(queries):
                kind, sql = stmts[i % 3]
                if kind == "a":
                    row = await conn.fetchrow(sql, i + k, f"c{k}q{i}")
                    assert tuple(row) == ((i + k) * 2, f"c{k}q{i}!"), (k, i, row)
                elif kind == "b":
                    key = (k * 50 + i) % 1000 + 1
                    assert await conn.fetchval(sql, key) == f"v{key}", (k, i)
                else:
                    assert await conn.fetchval(sql, k, i, 1000) == k + i + 1000, (k, i)
                ok += 1
            return ok
        finally:
            await conn.close()

    async def main():
        await setup()
        return await asyncio.gather(*(client(k) for k in range(clients)))

    assert run(main()) == [queries] * clients
    assert s.proc.poll() is None, f"sentinel exited:\n{s.logs()}"

    # Postgres never saw more connections of the role than the pool allows (idle server
    # connections stay open for server_idle_timeout, so any extra would still be here).
    with psycopg.connect(s.db.direct_dsn, autocommit=True) as oracle:
        n = oracle.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = %s AND pid <> pg_backend_pid()",
            (s.db.role,),
        ).fetchone()[0]
    assert 1 <= n <= 3, f"{n} server connections for pool_size 3"


def test_transactions_commit_and_rollback(sentinel_pool3, table_name):
    s = sentinel_pool3
    t = table_name

    class Boom(Exception):
        pass

    async def main():
        conn = await asyncpg.connect(**s.asyncpg_kwargs())
        other = await asyncpg.connect(**s.asyncpg_kwargs())
        try:
            await conn.execute(f"CREATE TABLE {t} (id int PRIMARY KEY)")
            async with conn.transaction():
                await conn.execute(f"INSERT INTO {t} VALUES ($1)", 1)
                # Not visible to another client before commit.
                assert await other.fetchval(f"SELECT count(*) FROM {t}") == 0
            assert await other.fetchval(f"SELECT count(*) FROM {t}") == 1

            with pytest.raises(Boom):
                async with conn.transaction():
                    await conn.execute(f"INSERT INTO {t} VALUES ($1)", 2)
                    raise Boom()
            assert not conn.is_in_transaction()

            # A database error inside the block rolls it back too.
            with pytest.raises(asyncpg.exceptions.UniqueViolationError):
                async with conn.transaction():
                    await conn.execute(f"INSERT INTO {t} VALUES ($1)", 3)
                    await conn.execute(f"INSERT INTO {t} VALUES ($1)", 1)

            # Nested: the savepoint rolls back, the outer transaction commits.
            async with conn.transaction():
                await conn.execute(f"INSERT INTO {t} VALUES ($1)", 4)
                with pytest.raises(Boom):
                    async with conn.transaction():
                        await conn.execute(f"INSERT INTO {t} VALUES ($1)", 5)
                        raise Boom()
                await conn.execute(f"INSERT INTO {t} VALUES ($1)", 6)

            ids = [r["id"] for r in await other.fetch(f"SELECT id FROM {t} ORDER BY id")]
            assert ids == [1, 4, 6]
        finally:
            await conn.close()
            await other.close()

    run(main())


def test_copy_records_and_copy_from_query(sentinel_pool3, table_name):
    s = sentinel_pool3
    t = table_name
    records = [(i, f"row {i}" if i % 9 else None, i * 1.5) for i in range(1, 5001)]

    async def main():
        conn = await asyncpg.connect(**s.asyncpg_kwargs())
        try:
            await conn.execute(f"CREATE TABLE {t} (id int PRIMARY KEY, label text, x float8)")
            status = await conn.copy_records_to_table(t, records=records)
            assert status == "COPY 5000"
            assert await conn.fetchval(f"SELECT count(*) FROM {t}") == 5000
            assert await conn.fetchval(f"SELECT count(*) FROM {t} WHERE label IS NULL") == 5000 // 9

            buf = io.BytesIO()
            status = await conn.copy_from_query(
                f"SELECT id, label, x FROM {t} WHERE id <= $1 ORDER BY id", 1000, output=buf
            )
            assert status == "COPY 1000"
            lines = buf.getvalue().decode().splitlines()
            expected = [
                f"{i}\t{label if label is not None else chr(92) + 'N'}\t{x:g}"
                for i, label, x in records[:1000]
            ]
            assert lines == expected

            # A failing copy_records_to_table (duplicate key) and the connection carries on.
            with pytest.raises(asyncpg.exceptions.UniqueViolationError):
                await conn.copy_records_to_table(t, records=[(5001, "new", 0.0), (1, "dup", 0.0)])
            assert await conn.fetchval(f"SELECT count(*) FROM {t}") == 5000

            # copy_from_table and copy_to_table round trip, in CSV.
            out = io.BytesIO()
            await conn.copy_from_table(t, output=out, format="csv")
            await conn.execute(f"CREATE TABLE {t}_2 (LIKE {t})")
            out.seek(0)
            status = await conn.copy_to_table(f"{t}_2", source=out, format="csv")
            assert status == "COPY 5000"
            diff = await conn.fetchval(
                f"SELECT count(*) FROM ((TABLE {t} EXCEPT TABLE {t}_2) UNION ALL "
                f"(TABLE {t}_2 EXCEPT TABLE {t})) d"
            )
            assert diff == 0
        finally:
            await conn.close()

    run(main())


def test_executemany_failing_early_in_a_large_batch(sentinel_pool3, table_name):
    """asyncpg pipelines executemany (Bind/Execute per row, one Sync) and makes it atomic: a
    row that fails early makes the server skip the thousands of messages still on their way."""
    s = sentinel_pool3
    t = table_name

    async def main():
        conn = await asyncpg.connect(**s.asyncpg_kwargs())
        try:
            await conn.execute(f"CREATE TABLE {t} (id int PRIMARY KEY)")
            for _ in range(5):
                with pytest.raises(asyncpg.exceptions.UniqueViolationError):
                    await conn.executemany(
                        f"INSERT INTO {t} VALUES ($1)", [(5,)] + [(i,) for i in range(20000)]
                    )
                assert not conn.is_in_transaction()
                assert await conn.fetchval(f"SELECT count(*) FROM {t}") == 0
            await conn.executemany(f"INSERT INTO {t} VALUES ($1)", [(i,) for i in range(20000)])
            assert await conn.fetchval(f"SELECT count(*) FROM {t}") == 20000
        finally:
            await conn.close()

    run(main())
