"""The admin port's `/metrics` after a scripted workload through Sentinel.

A Sentinel of its own (tenancy on, scope = "transaction", pool_size 2, no `[llm]`) in front of a
database with row-level security; `/metrics` is scraped once before and once after a workload on
one psycopg connection, and both scrapes are parsed with prometheus_client's OpenMetrics parser
(strict: `# EOF`, HELP/TYPE/UNIT placement, histogram bucket order and `+Inf`, `_total` on
counters). The counters must have moved by exactly what the workload did; the families must be
those of the "Metrics" table of docs/admin.md (the Postgres side; the LLM and ledger families
only exist with `[llm]`, which this Sentinel lacks).

The workload (autocommit, so every statement outside an explicit block is its own transaction):

- 5 tagged `/*tenant='acme'*/ SELECT count(*) FROM items`;
- 2 explicit transactions (`with conn.transaction()`), each a tagged INSERT and a tagged SELECT;
- 3 untagged `SELECT count(*) FROM items`, which Sentinel refuses itself (42501).

How psycopg 3 puts these on the wire (psycopg/_cursor_base.py `_execute_send`,
psycopg/_connection_base.py `_exec_command`):

- a statement without parameters is a simple Query message, unless the result is asked for in
  binary, which needs the extended protocol (Parse, Bind, Describe, Execute, Sync);
- a statement with parameters is Parse, Bind, Describe, Execute, Sync (unnamed: the connection is
  opened with `prepare_threshold=None`, so psycopg never switches to named prepared statements);
- `conn.transaction()` in autocommit mode sends `BEGIN` and `COMMIT` as simple Query messages.

Both protocols count the same: one statement forwarded per simple Query or Execute, one
ReadyForQuery per simple Query or Sync. So that both code paths are counted, two of the five
autocommit SELECTs are sent in binary (extended protocol). The three refused SELECTs are simple
Query messages, which Sentinel answers without a server; a refused extended-protocol statement
is not free of server work, see `test_refused_extended_statement`.

What Sentinel counts (proxy/src/pg/session/mod.rs):

- `sentinel_pg_queries_total`: each simple Query or Execute forwarded to the server
  (`queries.fetch_add` in `on_client_frame`, after the tenancy gate, so refused statements do not
  count): 5 + 2 × (BEGIN, INSERT, SELECT, COMMIT) = 13;
- `sentinel_pg_added_latency_seconds`: observed at the same place: 13;
- `sentinel_pg_query_duration_seconds`: one per ReadyForQuery from the server (`timed_ready`),
  i.e. per simple Query or Sync forwarded: 5 + 2 × 4 = 13 (Sentinel's tenant injection on a
  Bind adds Parse/Bind/Execute/Close but no Sync, and a refusal outside a transaction block is
  answered without the server);
- `sentinel_pg_transactions_total` and `sentinel_pg_transaction_duration_seconds`: one per
  ReadyForQuery that brings the server back to idle: 5 autocommit statements + 2 COMMITs = 7;
- `sentinel_pg_pool_wait_seconds`: one per server checkout (`pool_wait.observe` in
  `ensure_server`): the login takes a server to apply the client's settings and gives it back
  (transaction pooling), then each of the 5 autocommit statements and each of the 2
  transactions takes one: 8. None of them waits (one client, pool_size 2): `pool_waits` +0;
- `sentinel_tenancy_refusals_total{reason="no_context"}`: 3;
- `sentinel_pg_client_logins_total{result="ok"}`: 1 (the oracle connects straight to Postgres).
"""

from __future__ import annotations

import re
import time
import urllib.request

import psycopg
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from conftest import (
    REPO,
    SEEDED_PER_TENANT,
    TENANTS,
    TenancyEnv,
    create_tenancy_db,
    start_sentinel,
    tenancy_toml,
)

ADMIN_DOC = REPO / "docs" / "admin.md"
TENANT = TENANTS[0]
TAG = f"/*tenant='{TENANT}'*/ "
CONTEXT_REQUIRED = "tenant context required"
# Families that exist only when Sentinel has an `[llm]` section (egress and its ledger).
LLM_ONLY_PREFIXES = ("sentinel_llm_", "sentinel_ledger_")
# Process metrics a scrape may carry besides Sentinel's own (documented: none so far).
PROCESS_METRICS: frozenset[str] = frozenset()

# The workload, and what it must add to the counters (see the module docstring).
TAGGED_SELECTS = 5
TRANSACTIONS = 2
STATEMENTS_PER_TRANSACTION = 4  # BEGIN, INSERT, SELECT, COMMIT
REFUSED = 3
EXPECTED_QUERIES = TAGGED_SELECTS + TRANSACTIONS * STATEMENTS_PER_TRANSACTION  # 13
EXPECTED_TRANSACTIONS = TAGGED_SELECTS + TRANSACTIONS  # 7
EXPECTED_CHECKOUTS = 1 + TAGGED_SELECTS + TRANSACTIONS  # 8: the login, then one per transaction
EXPECTED_MIN_VERDICT_LOOKUPS = 10


# ------------------------------------------------------------------------------------ scraping


class Scrape:
    """One parsed `/metrics` answer."""

    def __init__(self, text: str, content_type: str) -> None:
        self.text = text
        self.content_type = content_type
        # Strict: a malformed exposition raises here (the parser is a generator: drain it).
        try:
            self.families = {f.name: f for f in text_string_to_metric_families(text)}
        except ValueError as e:
            pytest.fail(f"/metrics is not valid OpenMetrics: {e}\n{text}", pytrace=False)

    def family(self, name: str):
        assert name in self.families, f"no family {name} in the scrape:\n{self.text}"
        return self.families[name]

    def value(self, sample_name: str, **labels: str) -> float:
        """The value of the one sample named `sample_name` with exactly `labels` (0 when the
        family exists but has no such sample yet: counters with labels start empty)."""
        found = [
            s.value
            for f in self.families.values()
            for s in f.samples
            if s.name == sample_name and s.labels == labels
        ]
        assert len(found) <= 1, f"{sample_name}{labels} appears {len(found)} times"
        return found[0] if found else 0.0

    def sum_of(self, sample_name: str) -> float:
        return sum(
            s.value for f in self.families.values() for s in f.samples if s.name == sample_name
        )

    def histogram_count(self, family: str) -> float:
        self.family(family)
        return self.value(f"{family}_count")


def fetch_metrics(admin_url: str) -> tuple[str, str]:
    """The `/metrics` body and its content type."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"{admin_url}/metrics", timeout=10) as r:
        assert r.status == 200
        return r.read().decode(), r.headers.get("content-type", "")


def scrape(admin_url: str) -> Scrape:
    return Scrape(*fetch_metrics(admin_url))


# ------------------------------------------------------------------------ the documented table


def documented_metrics() -> dict[str, tuple[str, str]]:
    """The "Metrics" table of docs/admin.md: name (as written: counters with `_total`) →
    (type, labels column)."""
    text = ADMIN_DOC.read_text()
    section = text.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    out = {}
    for line in section.splitlines():
        m = re.match(r"\|\s*`(sentinel_[a-z_]+)`\s*\|\s*(\w+)\s*\|([^|]*)\|", line)
        if m:
            out[m.group(1)] = (m.group(2), m.group(3).strip())
    assert len(out) > 20, f"the Metrics table of {ADMIN_DOC} did not parse: {out}"
    return out


def family_name(documented: str, kind: str) -> str:
    """The OpenMetrics family name of a documented name: counters lose `_total`."""
    if kind == "counter":
        assert documented.endswith("_total"), f"{documented}: a counter without _total"
        return documented[: -len("_total")]
    return documented


def documented_label_names(labels: str) -> set[str]:
    """`state` = idle, active → {"state"}; `database`, `user`, `state` = … → all three."""
    return set(re.findall(r"`([a-z_]+)`\s*(?:=|\(|,|$)", labels + ","))


# ------------------------------------------------------------------------------------- fixture


@pytest.fixture(scope="module")
def metrics_env(pg):
    """Its own Sentinel, so no other test's traffic lands in the counts."""
    s = start_sentinel(
        create_tenancy_db(pg, "pymetrics"), pool_size=2, tenancy=tenancy_toml("transaction")
    )
    yield TenancyEnv(sentinel=s, pg=pg)
    s.stop()


def assert_context_required(exc: BaseException) -> None:
    sqlstate = getattr(exc, "sqlstate", None)
    message = getattr(getattr(exc, "diag", None), "message_primary", None) or str(exc)
    assert sqlstate == "42501", f"expected 42501, got {sqlstate}: {exc}"
    assert CONTEXT_REQUIRED in message, message


COUNTED = {
    "queries": "sentinel_pg_queries_total",
    "transactions": "sentinel_pg_transactions_total",
    "query_duration.count": "sentinel_pg_query_duration_seconds_count",
    "transaction_duration.count": "sentinel_pg_transaction_duration_seconds_count",
    "added_latency.count": "sentinel_pg_added_latency_seconds_count",
    "pool_wait.count": "sentinel_pg_pool_wait_seconds_count",
}


CLIENT_STATES = ("login", "idle", "active", "waiting")


def client_states(s: Scrape) -> dict[str, float]:
    return {st: s.value("sentinel_pg_clients", state=st) for st in CLIENT_STATES}


def scrape_until_clients(admin_url: str, idle: int, timeout: float = 5.0) -> Scrape:
    """Scrapes until the gauges show `idle` clients, all idle. The client has all its answers
    by then, and Sentinel counts before it answers, so the counters are final; only the client's
    state is set after the answer is queued (at the end of the session's loop turn), and a
    client that just closed its connection is gone only once Sentinel has read the close."""
    want = {st: (idle if st == "idle" else 0) for st in CLIENT_STATES}
    deadline = time.monotonic() + timeout
    while True:
        s = scrape(admin_url)
        if client_states(s) == want or time.monotonic() > deadline:
            return s  # on a timeout, the assertions on it say what is wrong
        time.sleep(0.05)


def scrape_until_idle(admin_url: str) -> Scrape:
    return scrape_until_clients(admin_url, idle=1)


# ---------------------------------------------------------------------------------------- test


def test_metrics_count_the_workload(metrics_env):
    env = metrics_env
    s = env.sentinel
    inserted = [f"metrics-{TENANT}-{i}" for i in range(TRANSACTIONS)]

    # No client yet (or none left from another test of this module).
    before = scrape_until_clients(s.admin_url, idle=0)
    assert sum(client_states(before).values()) == 0, before.text

    # prepare_threshold=None: never named prepared statements, so each statement with
    # parameters is exactly one unnamed Parse/Bind/Describe/Execute/Sync.
    with s.connect(autocommit=True, prepare_threshold=None) as conn:
        for i in range(TAGGED_SELECTS):
            # Odd ones in binary: the extended protocol without parameters.
            row = conn.execute(TAG + "SELECT count(*) FROM items", binary=i % 2 == 1).fetchone()
            assert row == (SEEDED_PER_TENANT,), f"select {i} as {TENANT} saw {row}"

        for i, note in enumerate(inserted):
            with conn.transaction():  # BEGIN … COMMIT, both simple Query messages
                conn.execute(
                    TAG + "INSERT INTO items (tenant_id, v) VALUES (%s, %s)", (TENANT, note)
                )
                row = conn.execute(
                    TAG + "SELECT count(*) FROM items WHERE tenant_id = %s", (TENANT,)
                ).fetchone()
                assert row == (SEEDED_PER_TENANT + i + 1,), f"transaction {i} saw {row}"

        for i in range(REFUSED):
            with pytest.raises(psycopg.Error) as info:
                conn.execute("SELECT count(*) FROM items")  # a simple Query
            assert_context_required(info.value)

        # The connection is still open and idle: one client, idle; the scrapes are HTTP.
        after = scrape_until_idle(s.admin_url)
        states = client_states(after)
        assert states == {"login": 0, "idle": 1, "active": 0, "waiting": 0}, after.text

    # The workload really ran, as the tenant: the oracle (straight to Postgres) sees the rows.
    rows = env.oracle_rows(TENANT)
    for note in inserted:
        assert (TENANT, note) in rows, f"{note} is not in the database: {rows}"
    assert len(rows) == SEEDED_PER_TENANT + TRANSACTIONS, rows

    def delta(sample: str, **labels: str) -> float:
        return after.value(sample, **labels) - before.value(sample, **labels)

    def hist_delta(family: str) -> float:
        return after.histogram_count(family) - before.histogram_count(family)

    figures = {
        "queries": delta("sentinel_pg_queries_total"),
        "transactions": delta("sentinel_pg_transactions_total"),
        "query_duration.count": hist_delta("sentinel_pg_query_duration_seconds"),
        "transaction_duration.count": hist_delta("sentinel_pg_transaction_duration_seconds"),
        "added_latency.count": hist_delta("sentinel_pg_added_latency_seconds"),
        "pool_wait.count": hist_delta("sentinel_pg_pool_wait_seconds"),
        "refusals.no_context": delta("sentinel_tenancy_refusals_total", reason="no_context"),
        "refusals.all": after.sum_of("sentinel_tenancy_refusals_total")
        - before.sum_of("sentinel_tenancy_refusals_total"),
        "logins.ok": delta("sentinel_pg_client_logins_total", result="ok"),
        "verdict_cache.hit": delta("sentinel_tenancy_verdict_cache_total", result="hit"),
        "verdict_cache.miss": delta("sentinel_tenancy_verdict_cache_total", result="miss"),
        "pool_waits": after.sum_of("sentinel_pg_pool_waits_total")
        - before.sum_of("sentinel_pg_pool_waits_total"),
        "pool_wait_timeouts": after.sum_of("sentinel_pg_pool_wait_timeouts_total")
        - before.sum_of("sentinel_pg_pool_wait_timeouts_total"),
        "would_refuse": after.sum_of("sentinel_tenancy_would_refuse_total")
        - before.sum_of("sentinel_tenancy_would_refuse_total"),
        "bypass": delta("sentinel_tenancy_bypass_statements_total"),
        "blocked": after.sum_of("sentinel_blocked_total") - before.sum_of("sentinel_blocked_total"),
        "reloads": after.sum_of("sentinel_config_reloads_total")
        - before.sum_of("sentinel_config_reloads_total"),
    }
    print("metric deltas:", figures)
    expected = {
        "queries": EXPECTED_QUERIES,
        "transactions": EXPECTED_TRANSACTIONS,
        "query_duration.count": EXPECTED_QUERIES,
        "transaction_duration.count": EXPECTED_TRANSACTIONS,
        "added_latency.count": EXPECTED_QUERIES,
        "pool_wait.count": EXPECTED_CHECKOUTS,
        "refusals.no_context": REFUSED,
        "refusals.all": REFUSED,
        "logins.ok": 1,
        "pool_waits": 0,
        "pool_wait_timeouts": 0,
        "would_refuse": 0,
        "bypass": 0,
        "blocked": 0,
        "reloads": 0,
    }
    got = {k: figures[k] for k in expected}
    assert got == expected, f"deltas differ from the workload's: {figures}"
    lookups = figures["verdict_cache.hit"] + figures["verdict_cache.miss"]
    assert lookups >= EXPECTED_MIN_VERDICT_LOOKUPS, figures
    # The same texts over and over: the cache must have served some of them.
    assert figures["verdict_cache.hit"] > 0, figures

    # Durations were measured, not just counted.
    for family in (
        "sentinel_pg_query_duration_seconds",
        "sentinel_pg_transaction_duration_seconds",
        "sentinel_pg_added_latency_seconds",
    ):
        grew = after.value(f"{family}_sum") - before.value(f"{family}_sum")
        assert grew > 0, f"{family}_sum did not grow: {grew}"

    # The pool opened at least one server connection, without errors.
    pool = {"database": s.db.name, "user": s.db.role}
    assert after.value("sentinel_pg_server_connects_total", **pool, result="ok") >= 1, after.text
    assert after.value("sentinel_pg_server_connects_total", **pool, result="error") == 0
    servers = sum(
        after.value("sentinel_pg_servers", **pool, state=st) for st in ("idle", "active")
    )
    assert 1 <= servers <= 2, after.text


def test_metrics_exposition_matches_the_documented_table(metrics_env):
    s = scrape(metrics_env.sentinel.admin_url)
    assert s.content_type.startswith("application/openmetrics-text"), s.content_type
    assert s.text.endswith("# EOF\n")

    for f in s.families.values():
        assert f.documentation.strip(), f"{f.name} has no HELP text"
        for sample in f.samples:
            assert sample.name.startswith("sentinel_") or f.name in PROCESS_METRICS, sample

    documented = documented_metrics()
    present, absent = {}, {}
    for name, (kind, labels) in documented.items():
        target = absent if name.startswith(LLM_ONLY_PREFIXES) else present
        target[family_name(name, kind)] = (name, kind, labels)

    missing = sorted(n for n in present if n not in s.families)
    assert not missing, f"documented families missing from the scrape: {missing}"
    # No [llm] section: no egress, no ledger, and render.rs leaves their families out.
    unexpected_llm = sorted(n for n in absent if n in s.families)
    assert not unexpected_llm, f"LLM/ledger families without [llm]: {unexpected_llm}"
    undocumented = sorted(
        n for n in s.families if n not in present and n not in PROCESS_METRICS
    )
    assert not undocumented, f"families not in docs/admin.md's table: {undocumented}"

    for fam, (name, kind, labels) in present.items():
        f = s.families[fam]
        assert f.type == kind, f"{name}: documented as {kind}, exposed as {f.type}"
        allowed = documented_label_names(labels) | ({"le"} if kind == "histogram" else set())
        for sample in f.samples:
            extra = set(sample.labels) - allowed
            assert not extra, f"{sample.name} has labels {extra} the table does not list"

    # Exact label values where the table lists them.
    assert {
        smp.labels["state"] for smp in s.family("sentinel_pg_clients").samples
    } == {"login", "idle", "active", "waiting"}
    assert {
        smp.labels["result"] for smp in s.family("sentinel_tenancy_verdict_cache").samples
    } == {"hit", "miss"}
    assert {smp.labels["result"] for smp in s.family("sentinel_config_reloads").samples} == {
        "ok",
        "error",
    }
    assert {smp.labels["service"] for smp in s.family("sentinel_blocked").samples} == {
        "llm",
        "db",
    }
    build = s.family("sentinel_build_info").samples
    assert len(build) == 1 and build[0].value == 1 and build[0].labels["version"], build

    # Histograms: cumulative buckets ending in +Inf, which equals _count.
    for fam, (name, kind, _) in present.items():
        if kind != "histogram":
            continue
        samples = s.families[fam].samples
        buckets = [x for x in samples if x.name == f"{fam}_bucket"]
        counts = [x.value for x in buckets]
        assert buckets and buckets[-1].labels["le"] == "+Inf", name
        assert counts == sorted(counts), f"{name}: buckets not cumulative: {counts}"
        assert buckets[-1].value == s.value(f"{fam}_count"), name


BUCKET_RE = re.compile(r'^(sentinel_[a-z_]+)_bucket\{le="([^"]*)"\} (\d+)$', re.M)
COUNT_RE = re.compile(r"^(sentinel_[a-z_]+)_count (\d+)$", re.M)


def test_histogram_buckets_are_cumulative_up_to_plus_inf(metrics_env):
    """The histograms' shape, read from the raw text without the parser, so that a broken
    exposition is described precisely: cumulative `le` buckets, the last `le="+Inf"` (the only
    spelling OpenMetrics allows), whose value is `_count`. A short workload first, so that the
    histograms have observations in more than one bucket's range."""
    s = metrics_env.sentinel
    with s.connect(autocommit=True) as conn:
        for _ in range(3):
            conn.execute(TAG + "SELECT count(*) FROM items").fetchone()
    text, _ = fetch_metrics(s.admin_url)
    buckets: dict[str, list[tuple[str, int]]] = {}
    for name, le, value in BUCKET_RE.findall(text):
        buckets.setdefault(name, []).append((le, int(value)))
    counts = {name: int(v) for name, v in COUNT_RE.findall(text)}
    assert buckets, f"no histogram buckets in:\n{text}"
    problems = []
    for name, series in buckets.items():
        les = [le for le, _ in series]
        values = [v for _, v in series]
        if les[-1] != "+Inf":
            problems.append(f'{name}: last bucket is le="{les[-1]}", not le="+Inf"')
        if values != sorted(values):
            problems.append(f"{name}: buckets not cumulative: {values}")
        if name not in counts:
            problems.append(f"{name}: no _count")
            continue
        if values[-1] != counts[name]:
            problems.append(f"{name}: last bucket {values[-1]} != _count {counts[name]}")
        over = [(le, v) for le, v in series if v > counts[name]]
        if over:
            problems.append(f"{name}: buckets above _count {counts[name]}: {over}")
    assert not problems, "\n".join(problems) + "\n\n" + text


def test_refused_extended_statement(metrics_env):
    """An untagged statement in the extended protocol (Parse, Bind, Describe, Execute, Sync) is
    refused too, but not at its Parse: the context requirement is judged at the Bind (a named
    statement may be bound under different tenants; `TenantState::on_parse` only checks what the
    text itself forbids). So the Parse has already gone to a server, which the Bind's refusal
    makes fail as well (`refuse_with`: a Parse that cannot parse, its error swallowed), and the
    client's Sync goes to the server too: one checkout, and one request that brings the server
    back to idle, i.e. one transaction by the metrics' definition ("the server back to idle"),
    though no statement (no Execute) was forwarded. Should Sentinel learn to refuse such a
    statement without a server, the last three figures become 0."""
    s = metrics_env.sentinel
    with s.connect(autocommit=True, prepare_threshold=None) as conn:
        before = scrape_until_idle(s.admin_url)
        with pytest.raises(psycopg.Error) as info:
            conn.execute("SELECT count(*) FROM items", binary=True)
        assert_context_required(info.value)
        after = scrape_until_idle(s.admin_url)
        # The session carries on.
        row = conn.execute(TAG + "SELECT count(*) FROM items", binary=True).fetchone()
        assert row is not None and row[0] >= SEEDED_PER_TENANT
    figures = {k: after.value(v) - before.value(v) for k, v in COUNTED.items()}
    figures["refusals.no_context"] = after.value(
        "sentinel_tenancy_refusals_total", reason="no_context"
    ) - before.value("sentinel_tenancy_refusals_total", reason="no_context")
    print("metric deltas (refused extended statement):", figures)
    assert figures == {
        "refusals.no_context": 1,
        "queries": 0,
        "added_latency.count": 0,
        "query_duration.count": 1,
        "transactions": 1,
        "transaction_duration.count": 1,
        "pool_wait.count": 1,
    }, figures
