"""deploy/grafana/hashgov.json asks only for series hashgov (or Prometheus itself) exports."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from controller.metrics import HISTOGRAM_NAMES, METRIC_NAMES

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "hashgov.json"

PROMQL_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
    "and", "or", "unless", "inf", "nan",
}
EXPORTED = (
    set(METRIC_NAMES)
    | {f"{h}_{suffix}" for h in HISTOGRAM_NAMES for suffix in ("bucket", "sum", "count")}
)
OTHER_ALLOWED = {"up"}
PROCESS_SERIES = {
    "process_start_time_seconds", "process_cpu_seconds_total", "process_resident_memory_bytes",
    "process_virtual_memory_bytes", "process_open_fds", "process_max_fds",
}


def _exprs(node: Any) -> Iterator[str]:
    """Panel target expressions and query-variable definitions, anywhere in the JSON."""
    if isinstance(node, dict):
        if node.get("type") == "query" and isinstance(node.get("definition"), str):
            yield node["definition"]
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                yield value
            else:
                yield from _exprs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _exprs(item)


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (a small lexer, enough for dashboards)."""
    e = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)  # string literals
    e = re.sub(r"\{[^}]*\}", " ", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", " ", e)  # range / subquery selectors
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"\$\{?\w+\}?", " ", e)  # dashboard variables
    names = set()
    for m in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", e):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in PROMQL_KEYWORDS:
            continue
        names.add(word)
    # label_values(metric, label): the second argument is a label, not a metric
    for m in re.finditer(r"label_values\(\s*([a-zA-Z_:][\w:]*)\s*,\s*(\w+)\s*\)", expr):
        names.discard(m.group(2))
        names.add(m.group(1))
    return names


def test_lexer_on_known_shapes() -> None:
    assert metric_names(
        'histogram_quantile(0.95, sum by (le, kind) '
        '(rate(hashgov_command_latency_seconds_bucket{instance=~"$instance"}[$__rate_interval])))'
    ) == {"hashgov_command_latency_seconds_bucket"}
    assert metric_names("a / on(instance) b > bool 1") == {"a", "b"}
    assert metric_names("label_values(hashgov_build_info, instance)") == {"hashgov_build_info"}
    assert metric_names("time() - hashgov_control_loop_last_run_timestamp_seconds / 1e6") == {
        "hashgov_control_loop_last_run_timestamp_seconds"
    }


def test_every_query_names_only_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = list(_exprs(dashboard))
    assert len(exprs) >= 20
    used: set[str] = set()
    for expr in exprs:
        names = metric_names(expr)
        assert names, f"no metric in {expr!r}"
        unknown = names - EXPORTED - OTHER_ALLOWED - PROCESS_SERIES
        assert not unknown, f"{expr!r} names {sorted(unknown)}"
        used |= names
    # the dashboard shows what it promises
    for wanted in (
        "hashgov_budget_watts", "hashgov_measured_draw_watts", "hashgov_planned_draw_watts",
        "hashgov_headroom_watts", "hashgov_miners", "hashgov_telemetry_age_seconds",
        "hashgov_command_latency_seconds_bucket", "hashgov_control_loop_duration_seconds_bucket",
        "hashgov_telemetry_rejected_total",
    ):
        assert wanted in used, wanted


def test_dashboard_shape() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "hashgov-site"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert variables == {"datasource", "instance"}
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"], panel["title"]
