"""Fast shed: meet a budget drop within a deadline, not asymptotically.

A miner's draw follows a new power target with a first-order lag (time constant
``power_tau_seconds``, ~3 s); a stopped miner falls to its sleep draw faster
(``sleep_tau_seconds``, ~1 s). A plan that meets a lower budget by cutting
targets is right in the end state, but the fleet approaches it from above: the
draw stays over the new budget for many seconds. After a budget drop this pass
estimates the fleet's draw ``deadline`` seconds after the commands, and while
that is still over the budget plus the site's safety margin it changes the least
efficient running miners: a small excess is met by cutting some of them to their
lowest target (a deeper cut settles further within the deadline; they keep
mining and the next rounds raise them), a large one by sleeping them (they wake
again once min_off has passed and the ramp allows).

Pure: everything arrives as arguments.
"""

from __future__ import annotations

import dataclasses
import math

from controller.fleet import FleetState, MinerStatus, MinerView
from controller.policy import MinerPlan, Plan

FAST_SHED_REASON = "fast shed: a target cut would settle over budget too slowly"
DEEP_CUT_REASON = "fast shed: cut to the lowest target to settle within the deadline"


def _decay(tau_seconds: float, after_seconds: float) -> float:
    """Share of a step still left after ``after_seconds`` (first-order lag)."""
    return math.exp(-after_seconds / tau_seconds)


def _settle(now_watts: float, level_watts: float, tau_seconds: float,
            after_seconds: float) -> float:
    """Draw ``after_seconds`` after heading from ``now_watts`` down to ``level_watts``."""
    return level_watts + max(0.0, now_watts - level_watts) * _decay(tau_seconds, after_seconds)


def _draw_now(view: MinerView, now_seconds: float) -> float:
    """A running miner's draw at ``now_seconds``: the last read, unless a target cut
    sent since has had time to pull it down (it settles from the draw read before it)."""
    now = view.assumed_watts
    age = view.commanded_age_seconds(now_seconds)
    if age is None or not view.controllable or view.pending_watts is not None:
        return now
    read = view.measured_watts
    if read is None:
        return now
    target = view.power_limit_watts
    if target is None or read <= target:
        return now
    return _settle(read, float(target), view.model.power_tau_seconds, age)


def _draw_after(view: MinerView, mp: MinerPlan, after_seconds: float, now: float) -> float:
    """The miner's expected draw ``after_seconds`` after this plan's command, from
    ``now``, its draw now (``_draw_now``)."""
    if not view.controllable or mp.action == "leave" or not view.is_on:
        return mp.planned_watts  # off or not ours: the plan already counts the worst case
    if mp.action == "sleep":
        return _settle(now, float(view.model.sleep_watts), view.model.sleep_tau_seconds,
                       after_seconds)
    if mp.planned_watts >= now:
        return mp.planned_watts  # a raise: count it at its target
    return _settle(now, mp.planned_watts, view.model.power_tau_seconds, after_seconds)


def _cuts_wait_for_stops(the_plan: Plan, views: dict[str, MinerView],
                         max_batch: int | None) -> frozenset[str]:
    """The plan's cuts that will not have landed by the deadline: every one of them
    when its stops alone fill the actuator's batch. Stops go before cuts, so then
    the cuts wait at least a whole wave of stops, and each cut is itself slower
    (a target, a readback, a slower settling). At 10,000 miners a trip's ~5,000
    stops went first, and the draw crossed the grant only once the ~2,000 cuts
    the plan counted on had landed behind them, seconds later."""
    if max_batch is None:
        return frozenset()
    stops = 0
    cuts: list[str] = []
    for mp in the_plan.miners:
        view = views.get(mp.miner_id)
        if view is None or not view.controllable:
            continue
        if mp.action == "sleep" and view.is_on:
            stops += 1
        elif mp.action == "run" and view.is_cut_by(mp.target_watts):
            cuts.append(mp.miner_id)
    return frozenset(cuts) if stops >= max_batch else frozenset()


def _sleep_instead(view: MinerView, mp: MinerPlan) -> MinerPlan:
    return MinerPlan(mp.miner_id, "sleep", None, float(view.model.sleep_watts), 0.0,
                     FAST_SHED_REASON)


def _cut_deeper(view: MinerView, mp: MinerPlan) -> MinerPlan:
    lowest = view.model.min_target_watts
    return MinerPlan(mp.miner_id, "run", lowest, float(lowest),
                     view.model.hashrate_ths_at(lowest), DEEP_CUT_REASON)


@dataclasses.dataclass(frozen=True, slots=True)
class _Candidate:
    joules_per_th: float
    plan: MinerPlan
    view: MinerView
    sleep_gain_watts: float  # draw saved at the deadline by sleeping it instead
    cut_gain_watts: float  # ... by its lowest target instead (0: already there)


def _candidates(the_plan: Plan, views: dict[str, MinerView], nows: dict[str, float],
                expected: dict[str, float], deadline_seconds: float) -> list[_Candidate]:
    """Running, unpinned, controllable miners the plan keeps running: hashing ones
    before booting ones, worst J/TH first.
    Gains are computed, plans built only for the miners chosen (10,000-miner sites)."""
    out: list[_Candidate] = []
    for mp in the_plan.miners:
        if mp.action != "run":
            continue
        view = views.get(mp.miner_id)
        if view is None or view.pinned or not view.controllable or not view.is_on:
            continue  # not ours to change, or a wake: sleeping it saves nothing now
        now = nows[mp.miner_id]
        model = view.model
        after_sleep = _settle(now, float(model.sleep_watts), model.sleep_tau_seconds,
                              deadline_seconds)
        sleep_gain = expected[mp.miner_id] - after_sleep
        if sleep_gain <= 0:
            continue
        cut_gain = 0.0
        lowest = model.min_target_watts
        if mp.target_watts is not None and mp.target_watts > lowest and now > lowest:
            after_cut = _settle(now, float(lowest), model.power_tau_seconds, deadline_seconds)
            cut_gain = max(0.0, expected[mp.miner_id] - after_cut)
        joules_per_th = mp.planned_watts / mp.planned_ths if mp.planned_ths > 0 else math.inf
        out.append(_Candidate(joules_per_th, mp, view, sleep_gain, cut_gain))
    # Booting miners last: the draw counted for them is their target, but one just
    # woken still draws little, so sleeping it saves little now and wastes its boot.
    out.sort(key=lambda c: (c.view.status is MinerStatus.BOOTING, -c.joules_per_th,
                            -c.sleep_gain_watts, c.plan.miner_id))
    return out


def floor_seconds(views: dict[str, MinerView], nows: dict[str, float],
                  target_watts: float) -> float:
    """The physical minimum time to bring the fleet's draw to ``target_watts``: every
    running miner we control stopped at once, their draw falling to sleep level with
    the sleep time constant (the longest of the fleet's): tau * ln((D - S)/(G - S)).
    0 when the draw already fits; inf when even all asleep would not."""
    draw = math.fsum(nows.values())
    if draw <= target_watts:
        return 0.0
    stoppable = [v for v in views.values() if v.controllable and v.is_on and not v.pinned]
    floor_watts = draw - math.fsum(nows[v.miner_id] - v.model.sleep_watts for v in stoppable)
    if target_watts <= floor_watts or not stoppable:
        return math.inf
    tau = max(v.model.sleep_tau_seconds for v in stoppable)
    return tau * math.log((draw - floor_watts) / (target_watts - floor_watts))


def _after_floor(views: dict[str, MinerView], nows: dict[str, float], target_watts: float,
                 deadline_seconds: float) -> float:
    floor = floor_seconds(views, nows, target_watts)
    return deadline_seconds + floor if math.isfinite(floor) else deadline_seconds


def effective_deadline_seconds(the_plan: Plan, fleet: FleetState, deadline_seconds: float,
                               allowance_watts: float = 0.0) -> float:
    """The time after the commands by which fast_shed wants the draw within budget."""
    views = fleet.by_id()
    nows = {mid: _draw_now(view, fleet.taken_at_seconds) for mid, view in views.items()}
    return _after_floor(views, nows, the_plan.budget_watts + max(allowance_watts, 0.0),
                        deadline_seconds)


def _choose(candidates: list[_Candidate], excess_watts: float,
            cuts_first: bool) -> list[tuple[_Candidate, bool]]:
    """Least efficient first: the candidates changed, each with whether it sleeps
    (else it is cut to its lowest target). With ``cuts_first`` a candidate is cut
    while the deep cuts of all the candidates left could still cover what is over,
    else slept. Plans are built only for the choice kept (10,000-miner drops)."""
    cut_potential = math.fsum(c.cut_gain_watts for c in candidates) if cuts_first else 0.0
    chosen: list[tuple[_Candidate, bool]] = []
    for c in candidates:
        if excess_watts <= 0:
            break
        if cuts_first and c.cut_gain_watts > 0 and cut_potential >= excess_watts:
            chosen.append((c, False))
            excess_watts -= c.cut_gain_watts
        else:
            chosen.append((c, True))
            excess_watts -= c.sleep_gain_watts
        cut_potential -= c.cut_gain_watts
    return chosen


def fast_shed(the_plan: Plan, fleet: FleetState, deadline_seconds: float,
              allowance_watts: float = 0.0, max_batch: int | None = None) -> Plan:
    """``the_plan``, changed so that the draw expected ``deadline_seconds`` after the
    physical minimum for this drop (``floor_seconds``) is within the budget plus
    ``allowance_watts`` (the site's safety margin: headroom for exactly this, so a
    drop it absorbs needs no hurry). A deep drop cannot be met faster than that
    minimum anyway; aiming at it plus the deadline sleeps fewer miners than aiming
    at the deadline alone, for the same promise: within the deadline of the floor.

    Least efficient running miners first, each either cut to its lowest target (it
    keeps mining; the next rounds raise it again) or, while the deep cuts of all the
    miners left could not cover what is still over, slept (it boots again only after
    min_off). Unchanged when the expected draw already fits, when the deadline is 0
    (off), or when nothing running may be changed (pinned miners keep running).

    ``max_batch``: how many commands the actuator runs at once. A shed needing more
    than that lands wave after wave, so it is met with the fewest commands instead:
    sleeps only, when they need fewer (a stop takes off ~3x the watts of a deep cut
    by the deadline). A 10,000-miner fleet started over the grant was otherwise
    given 9,548 deep cuts, a minute of commands for a 0.1 s deadline. When the
    plan's stops alone fill a batch, its cuts are counted at the draw they have now
    (``_cuts_wait_for_stops``): the miners they would have to cover are slept, so
    the stops, which go first, meet the budget on their own."""
    if deadline_seconds <= 0:
        return the_plan
    views = fleet.by_id()
    nows = {mid: _draw_now(view, fleet.taken_at_seconds) for mid, view in views.items()}
    allowance_watts = max(allowance_watts, 0.0)
    deadline_seconds = _after_floor(views, nows, the_plan.budget_watts + allowance_watts,
                                    deadline_seconds)
    late = _cuts_wait_for_stops(the_plan, views, max_batch)
    expected = {
        mp.miner_id: nows[mp.miner_id] if mp.miner_id in late
        else _draw_after(views[mp.miner_id], mp, deadline_seconds, nows[mp.miner_id])
        for mp in the_plan.miners if mp.miner_id in views
    }
    excess = math.fsum(expected.values()) - the_plan.budget_watts - allowance_watts
    if excess <= 0:
        return the_plan
    candidates = _candidates(the_plan, views, nows, expected, deadline_seconds)
    # behind a wave of stops a deep cut would land late too: sleep instead
    chosen = _choose(candidates, excess, cuts_first=not late)
    if max_batch is not None and len(chosen) > max_batch:
        fewer = _choose(candidates, excess, cuts_first=False)
        if len(fewer) < len(chosen):
            chosen = fewer
    if not chosen:
        return the_plan
    replaced = {
        c.plan.miner_id: _sleep_instead(c.view, c.plan) if sleeps else _cut_deeper(c.view, c.plan)
        for c, sleeps in chosen
    }
    slept = sum(sleeps for _, sleeps in chosen)
    removed = [(mp, replaced[mp.miner_id]) for mp in the_plan.miners if mp.miner_id in replaced]
    cuts = len(replaced) - slept
    return dataclasses.replace(
        the_plan,
        miners=tuple(replaced.get(mp.miner_id, mp) for mp in the_plan.miners),
        planned_watts=the_plan.planned_watts - sum(a.planned_watts - b.planned_watts
                                                   for a, b in removed),
        planned_ths=the_plan.planned_ths - sum(a.planned_ths - b.planned_ths
                                               for a, b in removed),
        notes=(*the_plan.notes, f"fast shed: {slept} miners slept, {cuts} cut to their "
                                f"lowest target, to meet the budget within "
                                f"{deadline_seconds:.3g} s"),
    )
