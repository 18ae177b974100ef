"""deploy/prometheus: rules are valid, every alert fires and resolves (promtool unit
tests), the scrape config is valid, and the rules name only metrics hashgov exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from controller.metrics import HISTOGRAM_NAMES, METRIC_NAMES

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy" / "prometheus"
RULES = PROM / "hashgov.rules.yml"
RULE_TESTS = PROM / "hashgov.rules.test.yml"

EXPECTED_ALERTS = {
    "HashgovBudgetExceeded",
    "HashgovTelemetryStale",
    "HashgovFailSafeActive",
    "HashgovDown",
    "HashgovWatchdogRestarts",
    "HashgovMinersUnreachable",
    "HashgovCommandFailures",
    "HashgovMeterModelGap",
    "HashgovControlLoopStalled",
    "HashgovMqttDisconnected",
}

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("promtool") is None, reason="needs promtool"),
]


def _promtool(*args: str, cwd: Path = PROM) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


def test_rules_check() -> None:
    proc = _promtool("check", "rules", str(RULES))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(EXPECTED_ALERTS)} rules found" in proc.stdout


def test_every_alert_fires_and_resolves_in_unit_tests() -> None:
    alerts = set(re.findall(r"^\s*- alert: (\w+)", RULES.read_text(), re.M))
    assert alerts == EXPECTED_ALERTS
    tests = RULE_TESTS.read_text()
    for alert in alerts:
        firing = re.search(rf"alertname: {alert}\n\s+exp_alerts:\n\s+- exp_labels", tests)
        resolved = re.search(rf"alertname: {alert}, exp_alerts: \[\]", tests)
        assert firing and resolved, f"{alert}: needs a firing and a resolved case"
    proc = _promtool("test", "rules", str(RULE_TESTS))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_scrape_config_checks(tmp_path: Path) -> None:
    text = (PROM / "prometheus.yml").read_text()
    rewritten = text.replace("/etc/prometheus/rules/hashgov.rules.yml", str(RULES))
    assert rewritten != text
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(rewritten)
    proc = _promtool("check", "config", str(cfg), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_rules_name_only_exported_metrics() -> None:
    known = set(METRIC_NAMES) | {f"{h}_{s}" for h in HISTOGRAM_NAMES
                                 for s in ("bucket", "sum", "count")}
    exprs = re.findall(r"expr: (\|\n(?:\s{10}.*\n)+|.*)", RULES.read_text())
    names = {n for e in exprs for n in re.findall(r"\b((?:hashgov|process)_[a-z_]+)\b", e)}
    assert names, "no metric names found"
    unknown = {n for n in names if not n.startswith("process_") and n not in known}
    assert not unknown
