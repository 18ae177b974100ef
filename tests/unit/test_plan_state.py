"""The last plan survives a restart: switch times come back (as monotonic time in
the new process), so minimum on/off times still hold after a crash."""

from __future__ import annotations

import json
from pathlib import Path

from controller import plan_state
from controller.config import load_config
from controller.policy import MinerPlan, Plan
from controller.tracker import FleetTracker
from drivers.base import CommandKind, CommandOutcome, CommandResult

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "hashgov.example.toml"


def test_switch_times_round_trip_across_a_restart(tmp_path: Path) -> None:
    config = load_config(EXAMPLE)
    before = FleetTracker(config)
    # the old process: monotonic 1000 <-> wall 1_700_000_000; row1-01 stopped at mono 990
    before.command_sent(CommandResult("row1-01", CommandKind.STOP, CommandOutcome.OK, 0.1), 990.0)
    plan = Plan(1000.0, 5000.0, 4000.0, 100.0, (MinerPlan("row1-01", "sleep", None, 30.0, 0.0, "x"),), ())
    plan_state.save(tmp_path, plan_state.plan_document(plan, before, 1000.0, 1_700_000_000.0))

    # the new process, 30 s later, with a different monotonic origin
    after = FleetTracker(config)
    restored = plan_state.restore_switch_times(tmp_path, after, 50.0, 1_700_000_030.0)
    assert restored == 1
    switched = after.record("row1-01").switched_at_seconds
    assert switched is not None and abs(switched - (50.0 - 40.0)) < 1e-6  # 40 s ago
    doc = json.loads((tmp_path / plan_state.FILE_NAME).read_text())
    assert doc["miners"]["row1-01"]["action"] == "sleep"


def test_stale_future_or_corrupt_plans_restore_nothing(tmp_path: Path) -> None:
    config = load_config(EXAMPLE)
    tracker = FleetTracker(config)
    doc = {"saved_wall": 1_700_000_000.0, "miners": {"row1-01": {"switched_wall": 1_699_999_990.0}}}
    path = tmp_path / plan_state.FILE_NAME
    path.write_text(json.dumps(doc))
    assert plan_state.restore_switch_times(tmp_path, tracker, 10.0, 1_700_000_000.0 + 2 * 86_400) == 0
    assert plan_state.restore_switch_times(tmp_path, tracker, 10.0, 1_699_000_000.0) == 0  # clock stepped back
    path.write_text('{"saved_wall": 1, "miners": ')  # torn by hand: set aside, nothing restored
    assert plan_state.restore_switch_times(tmp_path, tracker, 10.0, 1_700_000_000.0) == 0
    assert tracker.record("row1-01").switched_at_seconds is None
    assert any(p.name.startswith("last_plan.json.corrupt-") for p in tmp_path.iterdir())
