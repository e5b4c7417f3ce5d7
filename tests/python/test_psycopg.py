"""psycopg 3 through Sentinel (transaction pooling): autocommit and transactions, server-side
prepared statements from several threads on a small pool, COPY both ways, errors inside a
transaction, pipeline mode. Results are checked against literals or a direct connection."""

from __future__ import annotations

import threading
from decimal import Decimal

import psycopg
import pytest
from psycopg import errors, pq


def test_autocommit_and_transactions(sentinel_pool2, table_name):
    s = sentinel_pool2
    t = table_name
    with s.connect(autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {t} (id int PRIMARY KEY, name text NOT NULL)")
        conn.execute(f"INSERT INTO {t} VALUES (%s, %s), (%s, %s)", (1, "one", 2, "two"))
        assert conn.info.transaction_status == pq.TransactionStatus.IDLE
        rows = conn.execute(f"SELECT id, name FROM {t} ORDER BY id").fetchall()
        assert rows == [(1, "one"), (2, "two")]
        assert conn.execute("SELECT current_user").fetchone() == (s.db.role,)

    with s.connect() as conn:  # autocommit off: psycopg opens a transaction implicitly
        conn.execute(f"INSERT INTO {t} VALUES (3, 'three')")
        assert conn.info.transaction_status == pq.TransactionStatus.INTRANS
        # Not visible to another client before commit.
        with s.db.connect_direct() as oracle:
            assert oracle.execute(f"SELECT count(*) FROM {t}").fetchone() == (2,)
        conn.commit()
        conn.execute(f"INSERT INTO {t} VALUES (4, 'four')")
        conn.rollback()
        with conn.transaction():
            conn.execute(f"INSERT INTO {t} VALUES (5, 'five')")
            with conn.transaction():  # a savepoint
                conn.execute(f"INSERT INTO {t} VALUES (6, 'six')")
        with pytest.raises(ZeroDivisionError):
            with conn.transaction():
                conn.execute(f"INSERT INTO {t} VALUES (7, 'seven')")
                raise ZeroDivisionError
        conn.commit()

    with s.db.connect_direct() as oracle:
        ids = [r[0] for r in oracle.execute(f"SELECT id FROM {t} ORDER BY id")]
    assert ids == [1, 2, 3, 5, 6]


def test_prepared_statements_from_threads(sentinel_pool2, table_name):
    """4 threads, each with its own connection, on a pool of 2 server connections; half prepare
    with `prepare=True`, half with `prepare_threshold=0`. psycopg names its statements `_pg3_N`
    per connection, so the same names mean different statements on different clients."""
    s = sentinel_pool2
    t = table_name
    with s.connect(autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {t} (id int PRIMARY KEY, val bigint NOT NULL)")
        conn.execute(
            f"INSERT INTO {t} SELECT g, g * g FROM generate_series(1, 1000) g"
        )

    threads_n, iterations = 4, 400
    errors_seen: list[BaseException] = []
    checked = [0] * threads_n

    def worker(k: int) -> None:
        try:
            kwargs = {"prepare_threshold": 0} if k % 2 else {}
            prepare = None if k % 2 else True
            with s.connect(autocommit=True, **kwargs) as conn:
                # Different statement texts per thread, so that `_pg3_0` of one client is a
                # different query from `_pg3_0` of another.
                if k % 2 == 0:
                    q1 = f"SELECT val FROM {t} WHERE id = %s"
                    q2 = "SELECT %s::int + %s::int"
                else:
                    q2 = f"SELECT val FROM {t} WHERE id = %s"
                    q1 = "SELECT %s::int + %s::int"
                for i in range(iterations):
                    key = (i * 7 + k * 13) % 1000 + 1
                    if k % 2 == 0:
                        v = conn.execute(q1, (key,), prepare=prepare).fetchone()[0]
                        w = conn.execute(q2, (i, k), prepare=prepare).fetchone()[0]
                    else:
                        w = conn.execute(q1, (i, k), prepare=prepare).fetchone()[0]
                        v = conn.execute(q2, (key,), prepare=prepare).fetchone()[0]
                    assert v == key * key, (k, i, key, v)
                    assert w == i + k, (k, i, w)
                    checked[k] += 1
                    # Inside a transaction too.
                    if i % 25 == 0:
                        with conn.transaction():
                            v = conn.execute(
                                f"SELECT val FROM {t} WHERE id = %s", (key,), prepare=True
                            ).fetchone()[0]
                            assert v == key * key
                # psycopg really used server-side prepared statements.
                assert conn._prepared._names, "psycopg prepared nothing"  # noqa: SLF001
        except BaseException as e:  # noqa: BLE001 - reported from the main thread
            errors_seen.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(threads_n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert not any(th.is_alive() for th in threads), "a worker thread hung"
    if errors_seen:
        raise errors_seen[0]
    assert checked == [iterations] * threads_n

    # Never more server connections than the pool allows, and the pool reused them.
    with s.db.connect_direct() as oracle:
        n = oracle.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = %s AND pid <> pg_backend_pid()",
            (s.db.role,),
        ).fetchone()[0]
    assert 1 <= n <= 2, f"{n} server connections for pool_size 2"


def test_copy_in_and_out(sentinel_pool2, table_name):
    s = sentinel_pool2
    t = table_name
    rows = [
        (
            i,
            f"name {i}\twith tab" if i % 5 == 0 else f"ünï {i}",
            None if i % 7 == 0 else Decimal(i) / 4,
        )
        for i in range(1, 5001)
    ]
    with s.connect(autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {t} (id int PRIMARY KEY, name text, amount numeric)")
        with conn.cursor() as cur:
            with cur.copy(f"COPY {t} (id, name, amount) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            assert cur.rowcount == len(rows)

        with s.db.connect_direct() as oracle:
            assert oracle.execute(f"SELECT count(*), sum(amount) FROM {t}").fetchone() == (
                5000,
                sum(r[2] for r in rows if r[2] is not None),
            )

        # COPY TO STDOUT, text rows, through Sentinel.
        with conn.cursor() as cur:
            got = []
            with cur.copy(f"COPY (SELECT id, name, amount FROM {t} ORDER BY id) TO STDOUT") as copy:
                copy.set_types(["int4", "text", "numeric"])
                for row in copy.rows():
                    got.append(row)
        assert got == rows

        # Raw bytes are the same as directly.
        def raw(c: psycopg.Connection) -> bytes:
            buf = bytearray()
            with c.cursor().copy(f"COPY {t} TO STDOUT") as copy:
                for chunk in copy:
                    buf += chunk
            return bytes(buf)

        with s.db.connect_direct() as oracle:
            assert raw(conn) == raw(oracle)

        # Binary COPY both ways.
        conn.execute(f"CREATE TABLE {t}_bin (id int, payload bytea)")
        with conn.cursor() as cur:
            with cur.copy(f"COPY {t}_bin FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["int4", "bytea"])
                for i in range(2000):
                    copy.write_row((i, bytes([i % 256]) * (i % 50)))
        with conn.cursor() as cur:
            query = f"COPY (SELECT * FROM {t}_bin ORDER BY id) TO STDOUT (FORMAT BINARY)"
            with cur.copy(query) as copy:
                copy.set_types(["int4", "bytea"])
                back = list(copy.rows())
        assert back == [(i, bytes([i % 256]) * (i % 50)) for i in range(2000)]

        # A failing COPY FROM reports the Postgres error and the connection carries on.
        with pytest.raises(errors.UniqueViolation):
            with conn.cursor().copy(f"COPY {t} (id, name) FROM STDIN") as copy:
                copy.write_row((1, "duplicate"))
        assert conn.execute(f"SELECT count(*) FROM {t}").fetchone() == (5000,)

        # An exception in the client during COPY sends CopyFail; nothing is written.
        with pytest.raises(RuntimeError):
            with conn.cursor().copy(f"COPY {t} (id, name) FROM STDIN") as copy:
                copy.write_row((90001, "never"))
                raise RuntimeError("client gives up")
        assert conn.info.transaction_status == pq.TransactionStatus.IDLE
        assert conn.execute(f"SELECT count(*) FROM {t} WHERE id = 90001").fetchone() == (0,)


def test_error_inside_transaction_then_rollback(sentinel_pool2, table_name):
    s = sentinel_pool2
    t = table_name
    with s.connect() as conn:
        conn.execute(f"CREATE TABLE {t} (id int PRIMARY KEY)")
        conn.commit()
        conn.execute(f"INSERT INTO {t} VALUES (1)")
        with pytest.raises(errors.UniqueViolation) as exc:
            conn.execute(f"INSERT INTO {t} VALUES (1)")
        assert exc.value.sqlstate == "23505"
        assert conn.info.transaction_status == pq.TransactionStatus.INERROR
        with pytest.raises(errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        conn.rollback()
        assert conn.info.transaction_status == pq.TransactionStatus.IDLE
        assert conn.execute(f"SELECT count(*) FROM {t}").fetchone() == (0,)
        conn.rollback()

        # Errors in the extended protocol too (parameters force it), then the next query.
        with pytest.raises(errors.DivisionByZero):
            conn.execute("SELECT 1 / %s::int", (0,))
        conn.rollback()
        assert conn.execute("SELECT 10 / %s::int", (2,)).fetchone() == (5,)
        conn.commit()

        # A syntax error from Postgres keeps its SQLSTATE.
        with pytest.raises(errors.UndefinedTable) as exc:
            conn.execute("SELECT * FROM no_such_table_here")
        assert exc.value.sqlstate == "42P01"
        conn.rollback()

    # The server connections went back clean: other clients see no aborted transaction.
    for _ in range(4):
        with s.connect(autocommit=True) as conn:
            assert conn.execute(f"SELECT count(*) FROM {t}").fetchone() == (0,)
    with s.db.connect_direct() as oracle:
        assert oracle.execute(f"SELECT count(*) FROM {t}").fetchone() == (0,)


def test_pipeline_mode(sentinel_pool2, table_name):
    s = sentinel_pool2
    t = table_name
    with s.connect(autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {t} (id int PRIMARY KEY, sq int)")
        n = 400
        with conn.pipeline():
            cur = conn.cursor()
            cur.executemany(f"INSERT INTO {t} VALUES (%s, %s)", [(i, i * i) for i in range(n)])
            cursors = []
            for i in range(n):
                c = conn.cursor()
                c.execute(f"SELECT sq, %s::text FROM {t} WHERE id = %s", (f"q{i}", i))
                cursors.append(c)
        for i, c in enumerate(cursors):
            assert c.fetchone() == (i * i, f"q{i}")

        # A transaction in pipeline mode, committed.
        with conn.pipeline():
            with conn.transaction():
                for i in range(n, n + 50):
                    conn.execute(f"INSERT INTO {t} VALUES (%s, %s)", (i, i * i))
        assert conn.execute(f"SELECT count(*) FROM {t}").fetchone() == (n + 50,)

        # An error in a pipelined transaction aborts it; the connection carries on.
        with pytest.raises(errors.UniqueViolation):
            with conn.pipeline():
                with conn.transaction():
                    conn.execute(f"INSERT INTO {t} VALUES (%s, %s)", (100000, 1))
                    conn.execute(f"INSERT INTO {t} VALUES (%s, %s)", (0, 0))
                    conn.execute(f"INSERT INTO {t} VALUES (%s, %s)", (100001, 1))
        assert conn.info.transaction_status == pq.TransactionStatus.IDLE
        assert conn.execute(f"SELECT count(*) FROM {t}").fetchone() == (n + 50,)

    with s.db.connect_direct() as oracle:
        assert oracle.execute(f"SELECT count(*), sum(sq) FROM {t}").fetchone() == (
            n + 50,
            sum(i * i for i in range(n + 50)),
        )


def test_pipeline_statement_sent_after_the_error_arrived(sentinel_pool2, table_name):
    """In pipeline mode libpq keeps sending queued statements after the server reported an
    error, up to the Sync; Postgres skips them. Here the error is fetched (Flush, wait) before
    the next statement is even sent, so the proxy sees the skipped statement arrive after the
    error. Expected (what Postgres does directly): UniqueViolation, then PipelineAborted for the
    rest of the pipeline, then a usable connection."""
    s = sentinel_pool2
    t = table_name

    def scenario(conn: psycopg.Connection) -> list:
        seen = []
        with pytest.raises(errors.PipelineAborted):
            with conn.pipeline():
                cur = conn.execute(f"INSERT INTO {t} VALUES (%s)", (1,))
                with pytest.raises(errors.UniqueViolation):
                    cur.fetchone()
                seen.append(conn.info.transaction_status)
                conn.execute("SELECT %s::int", (2,))
        seen.append(conn.info.transaction_status)
        seen.append(conn.execute("SELECT %s::int + 40", (2,)).fetchone())
        return seen

    with s.db.connect_direct() as oracle:
        oracle.execute(f"CREATE TABLE {t} (id int PRIMARY KEY)")
        oracle.execute(f"INSERT INTO {t} VALUES (1)")
        expected = scenario(oracle)
    assert expected[1:] == [pq.TransactionStatus.IDLE, (42,)], expected
    for _ in range(3):
        with s.connect(autocommit=True) as conn:
            assert scenario(conn) == expected, f"Sentinel's log:\n{s.logs()[-3000:]}"
