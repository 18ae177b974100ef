"""`hashgov plan` and `hashgov bench policy`: output, JSON, and usage errors (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from controller.cli import app

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "hashgov.example.toml"
runner = CliRunner()


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def test_plan_prints_a_table_and_totals() -> None:
    code, out = invoke("plan", "--config", str(EXAMPLE), "--budget-kw", "20")
    assert code == 0
    assert "row1-01" in out and "excluded" in out
    assert "budget 20.00 kW" in out and "TH/s" in out and "J/TH" in out


def test_plan_json_is_within_budget() -> None:
    code, out = invoke("plan", "--config", str(EXAMPLE), "--budget-kw", "15", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["planned_watts"] <= 15_000
    assert {m["miner_id"] for m in data["miners"]} >= {"row1-01", "row3-02"}
    assert next(m for m in data["miners"] if m["miner_id"] == "row3-02")["action"] == "leave"


def test_plan_reads_a_state_file(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"miners": {
        "row1-01": {"status": "sleeping", "switched_seconds_ago": 30},
        "row1-02": {"status": "unreachable", "measured_watts": 100},
    }}))
    code, out = invoke("plan", "--config", str(EXAMPLE), "--budget-kw", "40", "--state", str(state), "--json")
    assert code == 0
    by_id = {m["miner_id"]: m for m in json.loads(out)["miners"]}
    assert by_id["row1-01"]["reason"].startswith("held off: min off-time 270 s left")
    assert by_id["row1-02"]["action"] == "leave" and by_id["row1-02"]["planned_watts"] == 3500


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--budget-kw", "-1"], "--budget-kw"),
        (["--budget-kw", "nan"], "--budget-kw"),
        (["--budget-kw", "ten"], "--budget-kw"),
        (["--budget-kw", "10", "--state", "/nonexistent/state.json"], "--state"),
    ],
)
def test_bad_arguments_are_usage_errors(args: list[str], names: str) -> None:
    code, out = invoke("plan", "--config", str(EXAMPLE), *args)
    assert code == 2
    assert names in out
    assert "Traceback" not in out


@pytest.mark.parametrize(
    "content",
    ["{not json", '{"miners": {"row1-01": {"status": "dozing"}}}', '{"miners": {"nobody": {}}}', "[1, 2]"],
)
def test_bad_state_files_are_usage_errors(tmp_path: Path, content: str) -> None:
    state = tmp_path / "state.json"
    state.write_text(content)
    code, out = invoke("plan", "--config", str(EXAMPLE), "--budget-kw", "10", "--state", str(state))
    assert code == 2
    assert "--state" in out


def test_bad_config_exits_78(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[site]\ngrant_cap_kw = -1\n")
    code, _ = invoke("plan", "--config", str(bad), "--budget-kw", "10")
    assert code == 78


def test_bench_policy_last_line_is_json() -> None:
    code, out = invoke("bench", "policy", "--miners", "300", "--rounds", "5", "--json")
    assert code == 0
    data = json.loads(out.strip().splitlines()[-1])
    assert data["miners"] == 300
    for key in ("plan_ms_p50", "plan_ms_p99", "baseline_sort_ms_p50", "ratio_to_baseline"):
        assert data[key] is not None
