"""Every PromQL query in deploy/grafana/hashgov.json parses (promtool, via recording rules)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.unit.test_metrics_dashboard import DASHBOARD, _exprs

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("promtool") is None, reason="needs promtool"),
]


def test_dashboard_promql_parses(tmp_path: Path) -> None:
    exprs = [e for e in _exprs(json.loads(DASHBOARD.read_text()))
             if not e.startswith("label_values(")]
    rules = ["groups:", "  - name: dashboard", "    rules:"]
    for i, expr in enumerate(exprs):
        concrete = (expr.replace("$__rate_interval", "1m").replace("${instance}", ".*")
                    .replace("$instance", ".*"))
        rules += [f"      - record: dashboard:q{i}", f"        expr: {json.dumps(concrete)}"]
    path = tmp_path / "dashboard.rules.yml"
    path.write_text("\n".join(rules) + "\n")
    proc = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
