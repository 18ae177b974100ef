"""The last plan, persisted so a restarted daemon keeps its miners' switch history.

Monotonic times do not survive a restart, so switch times are stored as wall
time and turned back into monotonic time on load. Only what the restart needs is
kept: each miner's planned action and target, and when it last switched on/off
(so minimum on/off times still hold after a crash). Written atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from controller.persist import read_json, write_json_atomic
from controller.policy import Plan
from controller.tracker import FleetTracker

FILE_NAME = "last_plan.json"
# a saved plan older than this says nothing useful about the present fleet
MAX_AGE_SECONDS = 24 * 3600.0


def plan_document(
    plan: Plan, tracker: FleetTracker, now_mono: float, now_wall: float
) -> dict[str, Any]:
    to_wall = now_wall - now_mono
    miners: dict[str, dict[str, Any]] = {}
    for mp in plan.miners:
        try:
            switched = tracker.record(mp.miner_id).switched_at_seconds
        except KeyError:
            continue
        miners[mp.miner_id] = {
            "action": mp.action,
            "target_watts": mp.target_watts,
            "switched_wall": None if switched is None else round(switched + to_wall, 3),
        }
    return {
        "saved_wall": round(now_wall, 3),
        "budget_watts": round(plan.budget_watts, 1),
        "planned_watts": round(plan.planned_watts, 1),
        "miners": miners,
    }


def save(state_dir: Path, doc: dict[str, Any]) -> None:
    write_json_atomic(state_dir / FILE_NAME, doc)


def restore_switch_times(
    state_dir: Path, tracker: FleetTracker, now_mono: float, now_wall: float
) -> int:
    """Give the tracker back each miner's last switch time; returns how many. A
    missing, old or malformed file restores nothing (a corrupt one is set aside)."""
    doc = read_json(state_dir / FILE_NAME)
    if not isinstance(doc, dict):
        return 0
    saved = doc.get("saved_wall")
    miners = doc.get("miners")
    if not isinstance(saved, int | float) or not isinstance(miners, dict):
        return 0
    if not 0 <= now_wall - saved <= MAX_AGE_SECONDS:
        return 0  # from the future (clock stepped) or too old: trust nothing
    known = set(tracker.miner_ids)
    restored = 0
    for miner_id, entry in miners.items():
        if miner_id not in known or not isinstance(entry, dict):
            continue
        switched = entry.get("switched_wall")
        if (
            isinstance(switched, int | float)
            and not isinstance(switched, bool)
            and switched <= now_wall
        ):
            tracker.record(miner_id).switched_at_seconds = now_mono - (now_wall - switched)
            restored += 1
    return restored
