"""Fast shed: meet a budget drop within a deadline, not asymptotically.

A miner's draw follows a new power target with a first-order lag (time constant
``power_tau_seconds``, ~3 s); a stopped miner falls to its sleep draw faster
(``sleep_tau_seconds``, ~1 s). A plan that meets a lower budget by cutting
targets is right in the end state, but the fleet approaches it from above: the
draw stays over the new budget for many seconds. After a budget drop this pass
estimates the fleet's draw ``deadline`` seconds after the commands, and while
that is still over the budget it sleeps the least efficient running miners
instead (they wake again once min_off has passed and the ramp allows).

Pure: everything arrives as arguments.
"""

from __future__ import annotations

import dataclasses
import math

from controller.fleet import FleetState, MinerView
from controller.policy import MinerPlan, Plan

FAST_SHED_REASON = "fast shed: a target cut would settle over budget too slowly"


def _decay(tau_seconds: float, after_seconds: float) -> float:
    """Share of a step still left after ``after_seconds`` (first-order lag)."""
    return math.exp(-after_seconds / tau_seconds)


def _draw_after(view: MinerView, mp: MinerPlan, after_seconds: float) -> float:
    """The miner's expected draw ``after_seconds`` after this plan's command."""
    if not view.controllable or mp.action == "leave" or not view.is_on:
        return mp.planned_watts  # off or not ours: the plan already counts the worst case
    now = view.assumed_watts
    if mp.action == "sleep":
        sleep = float(view.model.sleep_watts)
        return sleep + max(0.0, now - sleep) * _decay(view.model.sleep_tau_seconds, after_seconds)
    if mp.planned_watts >= now:
        return mp.planned_watts  # a raise: count it at its target
    cut = now - mp.planned_watts
    return mp.planned_watts + cut * _decay(view.model.power_tau_seconds, after_seconds)


def _sleep_instead(view: MinerView, mp: MinerPlan) -> MinerPlan:
    return MinerPlan(mp.miner_id, "sleep", None, float(view.model.sleep_watts), 0.0,
                     FAST_SHED_REASON)


def fast_shed(the_plan: Plan, fleet: FleetState, deadline_seconds: float) -> Plan:
    """``the_plan``, with running miners put to sleep (least efficient first) until the
    draw expected ``deadline_seconds`` after the commands is within the budget.
    Unchanged when it already is, when the deadline is 0 (off), or when nothing
    running may be slept (pinned miners keep running)."""
    if deadline_seconds <= 0:
        return the_plan
    views = fleet.by_id()
    expected = {
        mp.miner_id: _draw_after(views[mp.miner_id], mp, deadline_seconds)
        for mp in the_plan.miners if mp.miner_id in views
    }
    excess = sum(expected.values()) - the_plan.budget_watts
    if excess <= 0:
        return the_plan
    candidates: list[tuple[float, float, MinerPlan, MinerPlan]] = []
    for mp in the_plan.miners:
        view = views.get(mp.miner_id)
        if view is None or mp.action != "run" or view.pinned or not view.controllable:
            continue
        if not view.is_on:
            continue  # a wake in a shedding plan: sleeping it saves nothing now
        slept = _sleep_instead(view, mp)
        gain = expected[mp.miner_id] - _draw_after(view, slept, deadline_seconds)
        if gain <= 0:
            continue
        joules_per_th = mp.planned_watts / mp.planned_ths if mp.planned_ths > 0 else math.inf
        candidates.append((joules_per_th, gain, mp, slept))
    candidates.sort(key=lambda c: (-c[0], -c[1], c[2].miner_id))  # worst J/TH first
    replaced: dict[str, MinerPlan] = {}
    for _, gain, mp, slept in candidates:
        if excess <= 0:
            break
        replaced[mp.miner_id] = slept
        excess -= gain
    if not replaced:
        return the_plan
    miners = tuple(replaced.get(mp.miner_id, mp) for mp in the_plan.miners)
    removed = [(mp, replaced[mp.miner_id]) for mp in the_plan.miners if mp.miner_id in replaced]
    return dataclasses.replace(
        the_plan,
        miners=miners,
        planned_watts=the_plan.planned_watts - sum(a.planned_watts - b.planned_watts
                                                   for a, b in removed),
        planned_ths=the_plan.planned_ths - sum(a.planned_ths for a, _ in removed),
        notes=(*the_plan.notes, f"fast shed: {len(replaced)} miners slept to meet the "
                                f"budget within {deadline_seconds:g} s"),
    )
