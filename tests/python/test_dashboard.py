"""The Grafana dashboard (deploy/grafana/sentinel.json) against the metrics contract.

The contract is the "Metrics" table of docs/admin.md (name, type, labels). The checks:

- the file is a dashboard: a title, panels with unique ids, every non-row panel has a
  datasource (the `${datasource}` template variable) and at least one target with an expr;
- the template variables `datasource`, `instance` and `pod` exist, and every series selector
  carries the `instance`/`pod` filter, so one replica or all can be shown;
- every metric name in every expr (`sentinel_[a-z_]+`, histograms through their
  `_bucket`/`_sum`/`_count` series) is in the table, with a matching type: histogram series only
  for histograms, no bare histogram name, no rate()/increase() over a gauge, no counter or
  histogram series outside one;
- range selectors are `[$__rate_interval]` (or `[$__range]` for totals over the dashboard range),
  histogram_quantile() is over `_bucket` series aggregated `by (le)`;
- labels in selectors, `by (...)` clauses and `{{legend}}` templates exist on the metric (or are
  target labels Prometheus adds: instance, pod, job), and exact label values are among those the
  table lists, where it lists them;
- every metric of the table is used by at least one panel.

The checks are pure functions returning a list of problems; the tests at the bottom feed them
small broken dashboards to show that each check does fail.

SENTINEL_DASHBOARD=<path> checks another dashboard file instead of the one in deploy/grafana.
No fixture of conftest.py is used: this needs neither Postgres nor the sentinel binary.
"""

from __future__ import annotations

import copy
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DASHBOARD = REPO / "deploy" / "grafana" / "sentinel.json"
ADMIN_DOC = REPO / "docs" / "admin.md"

METRIC_RE = re.compile(r"(?<![A-Za-z0-9_:$])sentinel_[a-z_]+")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# Labels the scrape adds, not the exporter (pod through Kubernetes service discovery relabeling).
TARGET_LABELS = {"instance", "job", "pod"}
RANGE_FUNCTIONS = ("rate", "irate", "increase")
ALLOWED_RANGES = {"$__rate_interval", "$__range"}
AGGREGATIONS = (
    "sum|avg|min|max|count|group|stddev|stdvar|topk|bottomk|quantile|count_values|limitk"
)
REPLICA_FILTER = {"instance": "$instance", "pod": "$pod"}


# ------------------------------------------------------------------------------- the contract


@dataclass
class Metric:
    name: str
    type: str
    labels: set[str] = field(default_factory=set)
    # label -> the values the table lists, for labels whose list is closed (plain words only).
    values: dict[str, set[str]] = field(default_factory=dict)


def parse_metrics_table(markdown: str) -> dict[str, Metric]:
    """The rows of the table under the `## Metrics` heading."""
    section = re.search(r"^## Metrics\s*$(.*?)(?=^## |\Z)", markdown, re.M | re.S)
    if not section:
        raise AssertionError("docs/admin.md has no '## Metrics' section")
    rows = [line.strip() for line in section.group(1).splitlines() if line.strip().startswith("|")]
    if len(rows) < 3:
        raise AssertionError("the Metrics section has no table")
    header = [c.strip().lower() for c in rows[0].strip("|").split("|")]
    if header[:3] != ["name", "type", "labels"]:
        raise AssertionError(f"unexpected Metrics table header: {header}")
    metrics: dict[str, Metric] = {}
    for row in rows[2:]:  # rows[1] is the |---| separator
        cells = [c.strip() for c in row.strip("|").split("|")]
        name = cells[0].strip("` ")
        mtype = cells[1].strip("` ").lower()
        if not re.fullmatch(r"sentinel_[a-z_]+", name):
            raise AssertionError(f"Metrics table: not a metric name: {cells[0]!r}")
        if mtype not in ("counter", "gauge", "histogram", "summary"):
            raise AssertionError(f"Metrics table: {name}: unknown type {cells[1]!r}")
        if name in metrics:
            raise AssertionError(f"Metrics table: {name} listed twice")
        metric = Metric(name, mtype)
        for m in re.finditer(r"`([a-z_]+)`(?:\s*=\s*([^`]*))?", cells[2]):
            label, listed = m.group(1), m.group(2)
            metric.labels.add(label)
            if listed:
                items = [v.strip() for v in listed.strip().rstrip(",").split(",")]
                if items and all(re.fullmatch(r"[a-z_]+", v) for v in items):
                    metric.values[label] = set(items)
        metrics[name] = metric
    return metrics


def load_metrics() -> dict[str, Metric]:
    return parse_metrics_table(ADMIN_DOC.read_text())


def dashboard_path() -> Path:
    env = os.environ.get("SENTINEL_DASHBOARD")
    return Path(env) if env else DEFAULT_DASHBOARD


def load_dashboard(path: Path | None = None) -> dict:
    with open(path or dashboard_path()) as f:
        return json.load(f)


# ------------------------------------------------------------------------- PromQL, roughly


def strip_strings(expr: str) -> str:
    """The expr with the inside of string literals blanked (same length, so offsets hold)."""
    return re.sub(r'"(?:[^"\\]|\\.)*"', lambda m: '"' + " " * (len(m.group(0)) - 2) + '"', expr)


def closing_paren(expr: str, open_at: int) -> int:
    depth = 0
    for i in range(open_at, len(expr)):
        if expr[i] == "(":
            depth += 1
        elif expr[i] == ")":
            depth -= 1
            if depth == 0:
                return i
    raise ValueError(f"unbalanced parentheses in {expr!r}")


def call_spans(expr: str, functions: str) -> list[tuple[str, int, int]]:
    """(function, start, end) of the argument list of every call of one of `functions`."""
    spans = []
    for m in re.finditer(rf"(?<![A-Za-z0-9_:$])({functions})\s*\(", expr):
        start = m.end() - 1
        spans.append((m.group(1), start, closing_paren(expr, start)))
    return spans


@dataclass
class Use:
    """One occurrence of a metric name in an expr."""

    series: str  # as written, e.g. sentinel_pg_query_duration_seconds_bucket
    metric: str | None  # the table's name, None when unknown
    suffix: str  # "_bucket" / "_sum" / "_count" for a histogram series, "" otherwise
    start: int
    end: int
    matchers: list[tuple[str, str, str]]  # (label, operator, value)
    range: str | None  # what is inside [...] after the selector


def resolve(series: str, metrics: dict[str, Metric]) -> tuple[str | None, str]:
    if series in metrics:
        return series, ""
    for suffix in HISTOGRAM_SUFFIXES:
        if series.endswith(suffix) and series[: -len(suffix)] in metrics:
            return series[: -len(suffix)], suffix
    return None, ""


def metric_uses(expr: str, metrics: dict[str, Metric]) -> list[Use]:
    blanked = strip_strings(expr)
    uses = []
    for m in METRIC_RE.finditer(blanked):
        metric, suffix = resolve(m.group(0), metrics)
        pos = m.end()
        matchers: list[tuple[str, str, str]] = []
        if pos < len(expr) and expr[pos] == "{":
            close = blanked.index("}", pos)
            matchers = re.findall(r'([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"',
                                  expr[pos + 1 : close])
            pos = close + 1
        rng = None
        r = re.match(r"\s*\[([^\]]*)\]", expr[pos:])
        if r:
            rng = r.group(1).strip()
        uses.append(Use(m.group(0), metric, suffix, m.start(), m.end(), matchers, rng))
    return uses


def expr_problems(expr: str, metrics: dict[str, Metric]) -> list[str]:
    problems = []
    uses = metric_uses(expr, metrics)
    if not uses:
        problems.append("uses no sentinel_ metric")
    blanked = strip_strings(expr)
    range_spans = call_spans(blanked, "|".join(RANGE_FUNCTIONS))

    for use in uses:
        if use.metric is None:
            problems.append(f"{use.series}: not in the docs/admin.md Metrics table")
            continue
        metric = metrics[use.metric]
        if use.suffix and metric.type != "histogram":
            problems.append(f"{use.series}: {use.suffix} series of a {metric.type}, not a histogram")
        if not use.suffix and metric.type == "histogram":
            problems.append(
                f"{use.series}: a histogram has no bare series; use _bucket, _sum or _count"
            )
        in_range_fn = [f for f, s, e in range_spans if s < use.start < e]
        if metric.type == "gauge" and in_range_fn:
            problems.append(f"{use.series}: {in_range_fn[0]}() over a gauge")
        if metric.type in ("counter", "histogram") and not in_range_fn:
            problems.append(
                f"{use.series}: a {metric.type} series outside rate()/increase()"
            )
        if in_range_fn and use.range is None:
            problems.append(f"{use.series}: {in_range_fn[0]}() without a range selector")
        if use.range is not None and use.range not in ALLOWED_RANGES:
            problems.append(
                f"{use.series}: range [{use.range}], expected [$__rate_interval] "
                "(or [$__range] for a total over the dashboard range)"
            )
        allowed = metric.labels | TARGET_LABELS | ({"le"} if use.suffix == "_bucket" else set())
        for label, op, value in use.matchers:
            if label not in allowed:
                problems.append(f"{use.series}: no label {label!r} in the Metrics table")
            elif op == "=" and label in metric.values and value not in metric.values[label]:
                problems.append(
                    f"{use.series}: {label}={value!r} is not one of {sorted(metric.values[label])}"
                )
        for label, value in REPLICA_FILTER.items():
            if (label, "=~", value) not in use.matchers:
                problems.append(f'{use.series}: selector lacks {label}=~"{value}"')

    for _, start, end in call_spans(blanked, "histogram_quantile"):
        args = blanked[start + 1 : end]
        q = re.match(r"\s*([0-9.]+)\s*,", args)
        if not q or not 0 <= float(q.group(1)) <= 1:
            problems.append("histogram_quantile(): the first argument is not a quantile in [0, 1]")
        inside = [u for u in uses if start < u.start < end]
        if not inside or any(u.suffix != "_bucket" for u in inside):
            problems.append("histogram_quantile() over something else than _bucket series")
        by = re.search(r"\bby\s*\(([^)]*)\)", args)
        if not by or "le" not in {x.strip() for x in by.group(1).split(",")}:
            problems.append("histogram_quantile(): the buckets are not aggregated by (le)")

    for m in re.finditer(rf"\b({AGGREGATIONS})\s+(by|without)\s*\(([^)]*)\)\s*\(", blanked):
        labels = {x.strip() for x in m.group(3).split(",") if x.strip()}
        start = m.end() - 1
        end = closing_paren(blanked, start)
        for use in uses:
            if use.metric is None or not start < use.start < end:
                continue
            metric = metrics[use.metric]
            allowed = (
                metric.labels | TARGET_LABELS | ({"le"} if use.suffix == "_bucket" else set())
            )
            for label in sorted(labels - allowed):
                problems.append(f"{use.series}: {m.group(2)} ({label}): no such label")
    if re.search(r"\)\s*(by|without)\s*\(", blanked):
        problems.append("write aggregations as `sum by (...) (...)`, not `sum(...) by (...)`")
    return problems


# --------------------------------------------------------------------------- the dashboard


def all_panels(dashboard: dict) -> list[dict]:
    """Every panel, rows included, with the panels nested in collapsed rows."""
    out = []
    for panel in dashboard.get("panels", []):
        out.append(panel)
        out.extend(panel.get("panels", []) or [])
    return out


def datasource_uid(ds) -> str | None:
    if isinstance(ds, dict):
        return ds.get("uid")
    return ds


def dashboard_problems(dashboard: dict, metrics: dict[str, Metric]) -> list[str]:
    problems = []
    if not isinstance(dashboard, dict):
        return ["not a JSON object"]
    if not str(dashboard.get("title", "")).strip():
        problems.append("no title")
    if not isinstance(dashboard.get("schemaVersion"), int) or dashboard["schemaVersion"] < 36:
        problems.append(f"schemaVersion {dashboard.get('schemaVersion')!r}: expected >= 36")
    panels = all_panels(dashboard)
    if not [p for p in panels if p.get("type") != "row"]:
        problems.append("no panels")

    variables = {v.get("name"): v for v in dashboard.get("templating", {}).get("list", [])}
    ds = variables.get("datasource")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        problems.append("no `datasource` template variable of type datasource (prometheus)")
    for name in REPLICA_FILTER:
        var = variables.get(name)
        query = var.get("query") if var else None
        if isinstance(query, dict):
            query = query.get("query")
        if not var or var.get("type") != "query" or not query:
            problems.append(f"no `{name}` query template variable")
            continue
        if not re.search(rf"label_values\(\s*sentinel_build_info\b.*,\s*{name}\s*\)", query):
            problems.append(f"`{name}` variable: expected label_values(sentinel_build_info…, {name})")
        if not var.get("includeAll") or var.get("allValue") != ".*":
            problems.append(f'`{name}` variable: needs includeAll with allValue ".*"')
        if datasource_uid(var.get("datasource")) != "${datasource}":
            problems.append(f"`{name}` variable: not on the ${{datasource}} datasource")
        for p in expr_problems(query, metrics):
            if "selector lacks" not in p and "uses no" not in p:
                problems.append(f"`{name}` variable: {p}")

    seen_ids: dict[int, str] = {}
    for panel in panels:
        title = panel.get("title") or f"<untitled {panel.get('type')}>"
        pid = panel.get("id")
        if not isinstance(pid, int):
            problems.append(f"panel {title!r}: no integer id")
        elif pid in seen_ids:
            problems.append(f"panel {title!r}: id {pid} already used by {seen_ids[pid]!r}")
        else:
            seen_ids[pid] = title
        pos = panel.get("gridPos") or {}
        if not all(isinstance(pos.get(k), int) for k in ("h", "w", "x", "y")):
            problems.append(f"panel {title!r}: no gridPos")
        elif pos["x"] + pos["w"] > 24:
            problems.append(f"panel {title!r}: wider than the 24-column grid")
        if panel.get("type") == "row":
            continue
        if not panel.get("title"):
            problems.append(f"panel id {pid}: no title")
        if datasource_uid(panel.get("datasource")) != "${datasource}":
            problems.append(f"panel {title!r}: datasource is not ${{datasource}}")
        if not (panel.get("fieldConfig", {}).get("defaults", {}).get("unit")):
            problems.append(f"panel {title!r}: no unit")
        targets = panel.get("targets") or []
        if not any(isinstance(t.get("expr"), str) and t["expr"].strip() for t in targets):
            problems.append(f"panel {title!r}: no target with an expr")
        ref_ids = [t.get("refId") for t in targets]
        if len(set(ref_ids)) != len(ref_ids):
            problems.append(f"panel {title!r}: duplicate refIds {ref_ids}")
        for t in targets:
            expr = t.get("expr")
            if not isinstance(expr, str) or not expr.strip():
                problems.append(f"panel {title!r} target {t.get('refId')}: no expr")
                continue
            if t.get("datasource") is not None and datasource_uid(t["datasource"]) != "${datasource}":
                problems.append(f"panel {title!r} target {t.get('refId')}: other datasource")
            for p in expr_problems(expr, metrics):
                problems.append(f"panel {title!r} target {t.get('refId')}: {p}")
            grouped = set()
            for m in re.finditer(r"\bby\s*\(([^)]*)\)", expr):
                grouped |= {x.strip() for x in m.group(1).split(",")}
            for label in re.findall(r"\{\{\s*([A-Za-z_]\w*)\s*\}\}", t.get("legendFormat", "")):
                if label not in grouped:
                    problems.append(
                        f"panel {title!r} target {t.get('refId')}: legend {{{{{label}}}}} "
                        "is not a label the expr keeps (by (...))"
                    )
    return problems


def used_metrics(dashboard: dict, metrics: dict[str, Metric]) -> set[str]:
    used = set()
    for panel in all_panels(dashboard):
        for t in panel.get("targets") or []:
            for use in metric_uses(t.get("expr") or "", metrics):
                if use.metric:
                    used.add(use.metric)
    return used


def coverage_problems(dashboard: dict, metrics: dict[str, Metric]) -> list[str]:
    return [
        f"{name} ({metrics[name].type}) is in the Metrics table but on no panel"
        for name in sorted(set(metrics) - used_metrics(dashboard, metrics))
    ]


# ---------------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def metrics() -> dict[str, Metric]:
    return load_metrics()


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return load_dashboard()


def test_metrics_table_parses(metrics):
    # Guards against a parser that silently reads nothing (and so checks nothing).
    assert len(metrics) >= 30
    assert metrics["sentinel_build_info"].type == "gauge"
    assert metrics["sentinel_pg_pool_wait_seconds"].type == "histogram"
    assert metrics["sentinel_pg_servers"].labels == {"database", "user", "state"}
    assert metrics["sentinel_tenancy_verdict_cache_total"].values == {"result": {"hit", "miss"}}
    assert "result" not in metrics["sentinel_pg_client_logins_total"].values  # an open list


def test_dashboard_is_valid(dashboard, metrics):
    problems = dashboard_problems(dashboard, metrics)
    assert not problems, f"{dashboard_path()}:\n  " + "\n  ".join(problems)


def test_every_documented_metric_is_on_a_panel(dashboard, metrics):
    problems = coverage_problems(dashboard, metrics)
    assert not problems, f"{dashboard_path()}:\n  " + "\n  ".join(problems)


# The checks themselves: each broken variant of a minimal valid dashboard must be caught.

SEL = 'instance=~"$instance", pod=~"$pod"'


def _mini_dashboard(*exprs: str) -> dict:
    ds = {"type": "prometheus", "uid": "${datasource}"}
    var = {"type": "query", "datasource": ds, "includeAll": True, "allValue": ".*"}
    return {
        "title": "t",
        "schemaVersion": 39,
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus"},
            dict(var, name="instance", query="label_values(sentinel_build_info, instance)"),
            dict(var, name="pod", query="label_values(sentinel_build_info, pod)"),
        ]},
        "panels": [
            {"type": "row", "id": 1, "title": "r", "gridPos": {"h": 1, "w": 24, "x": 0, "y": 0}},
            {
                "type": "timeseries", "id": 2, "title": "p", "datasource": ds,
                "gridPos": {"h": 8, "w": 8, "x": 0, "y": 1},
                "fieldConfig": {"defaults": {"unit": "short"}},
                "targets": [
                    {"refId": chr(65 + i), "expr": e, "legendFormat": ""}
                    for i, e in enumerate(exprs)
                ],
            },
        ],
    }


GOOD_EXPRS = [
    f"sum by (state) (sentinel_pg_clients{{{SEL}}})",
    f"sum(rate(sentinel_pg_queries_total{{{SEL}}}[$__rate_interval]))",
    f"histogram_quantile(0.99, sum by (le) "
    f"(rate(sentinel_pg_query_duration_seconds_bucket{{{SEL}}}[$__rate_interval])))",
    f'sum(rate(sentinel_tenancy_verdict_cache_total{{result="hit", {SEL}}}[$__rate_interval]))',
]

BAD_EXPRS = {
    "unknown metric": f"sum(rate(sentinel_pg_querys_total{{{SEL}}}[$__rate_interval]))",
    "rate on a gauge": f"sum(rate(sentinel_pg_clients{{{SEL}}}[$__rate_interval]))",
    "bucket of a counter": f"histogram_quantile(0.99, sum by (le) "
    f"(rate(sentinel_pg_queries_total_bucket{{{SEL}}}[$__rate_interval])))",
    "bare histogram": f"sum(sentinel_pg_query_duration_seconds{{{SEL}}})",
    "raw counter": f"sum(sentinel_pg_queries_total{{{SEL}}})",
    "fixed range": f"sum(rate(sentinel_pg_queries_total{{{SEL}}}[5m]))",
    "quantile without le": f"histogram_quantile(0.99, sum "
    f"(rate(sentinel_pg_query_duration_seconds_bucket{{{SEL}}}[$__rate_interval])))",
    "undocumented label": f"sum by (tenant) (rate(sentinel_pg_queries_total{{{SEL}}}[$__rate_interval]))",
    "undocumented value": f'sum(rate(sentinel_tenancy_verdict_cache_total{{result="hits", {SEL}}}'
    f"[$__rate_interval]))",
    "no replica filter": "sum(rate(sentinel_pg_queries_total[$__rate_interval]))",
}


def test_checks_accept_a_good_dashboard(metrics):
    assert dashboard_problems(_mini_dashboard(*GOOD_EXPRS), metrics) == []


@pytest.mark.parametrize("what", sorted(BAD_EXPRS))
def test_checks_catch_a_bad_expr(metrics, what):
    problems = dashboard_problems(_mini_dashboard(*GOOD_EXPRS, BAD_EXPRS[what]), metrics)
    assert problems, f"{what}: not caught"
    assert all("target E" in p for p in problems), problems  # only the bad target is blamed


def test_checks_catch_a_bad_structure(metrics):
    good = _mini_dashboard(*GOOD_EXPRS)
    breakages = {
        "duplicate id": lambda d: d["panels"][1].update(id=1),
        "no datasource": lambda d: d["panels"][1].pop("datasource"),
        "no targets": lambda d: d["panels"][1].update(targets=[]),
        "empty expr": lambda d: d["panels"][1]["targets"][0].update(expr=""),
        "no title": lambda d: d.pop("title"),
        "no pod variable": lambda d: d["templating"]["list"].pop(),
        "legend label not kept": lambda d: d["panels"][1]["targets"][1].update(
            legendFormat="{{state}}"
        ),
    }
    for what, breakage in breakages.items():
        broken = copy.deepcopy(good)
        breakage(broken)
        assert dashboard_problems(broken, metrics), f"{what}: not caught"


def test_coverage_check_catches_an_unused_metric(metrics):
    problems = coverage_problems(_mini_dashboard(*GOOD_EXPRS), metrics)
    assert "sentinel_llm_in_flight (gauge) is in the Metrics table but on no panel" in problems
