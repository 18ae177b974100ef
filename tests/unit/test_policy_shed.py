"""Fast shed: after a budget drop, the draw expected at the deadline must fit the budget."""

from __future__ import annotations

import dataclasses
import math

from hypothesis import given
from hypothesis import strategies as st

from controller.catalog import find_model
from controller.fleet import FleetState, MinerStatus, MinerView
from controller.policy import plan
from controller.policy_shed import (
    DEEP_CUT_REASON,
    FAST_SHED_REASON,
    _draw_after,
    _draw_now,
    effective_deadline_seconds,
    fast_shed,
    floor_seconds,
)
from simulators.bench.policy_bench import bench_config
from tests.unit.test_policy_support import NOW_SECONDS, fleets

S19J = find_model("Antminer S19j Pro", "braiins")  # ~29 J/TH at full power
S21 = find_model("Antminer S21", "braiins")  # ~17 J/TH: kept running longest
CONFIG = bench_config(ramp_up_kw_per_second=1e6, hysteresis_kw=0.0, min_on_seconds=0.0,
                      min_off_seconds=0.0)


def _mining(i: int, model: object, pinned: bool = False) -> MinerView:
    assert hasattr(model, "max_target_watts")
    top = model.max_target_watts  # type: ignore[attr-defined]
    return MinerView(miner_id=f"m{i:02d}", model=model, status=MinerStatus.MINING,  # type: ignore[arg-type]
                     measured_watts=float(top), power_limit_watts=top, pinned=pinned)


def _expected(result_plan: object, fleet: FleetState, deadline: float) -> float:
    """Expected draw ``deadline`` seconds after the physical floor of the drop."""
    deadline = effective_deadline_seconds(result_plan, fleet, deadline)  # type: ignore[arg-type]
    views = fleet.by_id()
    return math.fsum(_draw_after(views[mp.miner_id], mp, deadline,
                                 _draw_now(views[mp.miner_id], fleet.taken_at_seconds))
                     for mp in result_plan.miners)  # type: ignore[attr-defined]


def test_a_deep_drop_sleeps_the_least_efficient_first_and_fits_by_the_deadline() -> None:
    fleet = FleetState(NOW_SECONDS, tuple(
        [_mining(i, S19J) for i in range(5)] + [_mining(i + 5, S21) for i in range(5)]))
    full = fleet.assumed_watts()
    budget = 0.6 * full
    cut = plan(fleet, budget, CONFIG, NOW_SECONDS)
    assert _expected(cut, fleet, 1.0) > budget  # target cuts alone are still over at 1 s
    shed = fast_shed(cut, fleet, 1.0)
    assert _expected(shed, fleet, 1.0) <= budget
    slept = {mp.miner_id for mp in shed.miners if mp.reason == FAST_SHED_REASON}
    s19j = {f"m{i:02d}" for i in range(5)}
    assert slept and (slept <= s19j or s19j <= slept)  # every S19j Pro before any S21
    assert shed.planned_watts < cut.planned_watts <= budget
    assert math.isclose(shed.planned_watts, math.fsum(m.planned_watts for m in shed.miners))
    assert math.isclose(shed.planned_ths, math.fsum(m.planned_ths for m in shed.miners))
    assert any("fast shed" in n for n in shed.notes)


def test_no_change_without_a_slow_cut_with_deadline_off_or_with_only_pins() -> None:
    fleet = FleetState(NOW_SECONDS, tuple(_mining(i, S19J) for i in range(4)))
    full = fleet.assumed_watts()
    raised = plan(fleet, 2 * full, CONFIG, NOW_SECONDS)
    assert fast_shed(raised, fleet, 1.0) is raised
    cut = plan(fleet, 0.5 * full, CONFIG, NOW_SECONDS)
    assert fast_shed(cut, fleet, 0.0) is cut
    pinned = FleetState(NOW_SECONDS, tuple(_mining(i, S19J, pinned=True) for i in range(4)))
    pinned_cut = plan(pinned, 0.5 * full, CONFIG, NOW_SECONDS)
    assert fast_shed(pinned_cut, pinned, 1.0) is pinned_cut


def test_a_longer_deadline_sleeps_fewer_miners() -> None:
    fleet = FleetState(NOW_SECONDS, tuple(_mining(i, S19J) for i in range(20)))
    cut = plan(fleet, 0.7 * fleet.assumed_watts(), CONFIG, NOW_SECONDS)
    counts = [sum(mp.reason == FAST_SHED_REASON for mp in fast_shed(cut, fleet, d).miners)
              for d in (0.5, 1.0, 3.0, 30.0)]
    assert counts == sorted(counts, reverse=True) and counts[0] > 0
    assert counts[-1] <= 1  # settled but for watts: an exact fill never quite gets there


@given(fleets(max_miners=10), st.floats(0.05, 1.0), st.sampled_from([0.5, 1.0, 2.0]))
def test_fast_shed_only_slows_running_unpinned_miners_and_never_raises_the_plan(
    fleet: FleetState, share: float, deadline: float
) -> None:
    budget = share * fleet.assumed_watts()
    cut = plan(fleet, budget, CONFIG, NOW_SECONDS)
    shed = fast_shed(cut, fleet, deadline)
    assert shed.planned_watts <= cut.planned_watts + 1e-6
    assert shed.planned_ths <= cut.planned_ths + 1e-6
    views = fleet.by_id()
    before = cut.by_id()
    changed = [mp for mp in shed.miners if mp != before[mp.miner_id]]
    for mp in changed:
        view = views[mp.miner_id]
        was = before[mp.miner_id]
        assert was.action == "run" and view.is_on and view.controllable and not view.pinned
        if mp.action == "run":  # a deeper cut: the lowest target, below the plan's
            assert mp.reason == DEEP_CUT_REASON
            assert mp.target_watts == view.model.min_target_watts
            assert was.target_watts is not None and mp.target_watts < was.target_watts
        else:
            assert mp.action == "sleep" and mp.reason == FAST_SHED_REASON
    untouched = [
        mp for mp in shed.miners
        if mp.action == "run" and mp not in changed and views[mp.miner_id].is_on
        and views[mp.miner_id].controllable and not views[mp.miner_id].pinned
    ]
    # either the deadline estimate fits, or every miner that could help was used
    assert _expected(shed, fleet, deadline) <= budget + 1e-6 or not untouched


def test_a_small_excess_is_met_by_deeper_cuts_not_sleeps() -> None:
    fleet = FleetState(NOW_SECONDS, tuple(_mining(i, S19J) for i in range(20)))
    budget = 0.97 * fleet.assumed_watts()
    cut = plan(fleet, budget, CONFIG, NOW_SECONDS)
    assert _expected(cut, fleet, 1.0) > budget
    shed = fast_shed(cut, fleet, 1.0)
    assert _expected(shed, fleet, 1.0) <= budget
    reasons = [mp.reason for mp in shed.miners]
    assert FAST_SHED_REASON not in reasons, "a 3 % drop needs no miner asleep"
    deep = reasons.count(DEEP_CUT_REASON)
    assert 0 < deep < 20
    assert any(f"0 miners slept, {deep} cut" in n for n in shed.notes)


def test_booting_miners_are_slowed_only_after_every_hashing_one() -> None:
    """A miner woken a moment ago is counted at its target but still draws little:
    sleeping it saves little now and wastes its boot. The least efficient miners
    here are the booting S19j Pros, and still the hashing S21s go first."""
    booting = [dataclasses.replace(_mining(i, S19J), status=MinerStatus.BOOTING)
               for i in range(5)]
    hashing = [_mining(i + 5, S21) for i in range(5)]
    fleet = FleetState(NOW_SECONDS, tuple(booting + hashing))
    hashing_ids = {v.miner_id for v in hashing}
    for share in (0.9, 0.8, 0.6, 0.4):
        budget = share * fleet.assumed_watts()
        cut = plan(fleet, budget, CONFIG, NOW_SECONDS)
        shed = fast_shed(cut, fleet, 1.0)
        changed = {mp.miner_id for mp in shed.miners
                   if mp.reason in (FAST_SHED_REASON, DEEP_CUT_REASON)}
        kept_hashing = {mp.miner_id for mp in cut.miners
                        if mp.action == "run" and mp.miner_id in hashing_ids}
        if share == 0.8:
            assert changed and changed <= hashing_ids, changed
        if changed - hashing_ids:  # a booting one was slowed: every hashing one was first
            assert kept_hashing <= changed, (share, changed)
        assert _expected(shed, fleet, 1.0) <= budget


def test_a_drop_within_the_safety_margin_changes_nothing() -> None:
    fleet = FleetState(NOW_SECONDS, tuple(_mining(i, S19J) for i in range(20)))
    full = fleet.assumed_watts()
    budget = 0.97 * full
    cut = plan(fleet, budget, CONFIG, NOW_SECONDS)
    assert fast_shed(cut, fleet, 1.0) is not cut
    # the margin covers what the fleet draws now: no hurry, the plan's cuts will do
    assert fast_shed(cut, fleet, 1.0, allowance_watts=full - budget) is cut


def test_the_deadline_counts_from_the_drops_physical_floor() -> None:
    fleet = FleetState(NOW_SECONDS, tuple(_mining(i, S19J) for i in range(10)))
    views = fleet.by_id()
    nows = {mid: v.assumed_watts for mid, v in views.items()}
    draw = sum(nows.values())
    sleep = 10 * S19J.sleep_watts
    assert floor_seconds(views, nows, draw + 1) == 0.0
    assert floor_seconds(views, nows, sleep - 1) == math.inf
    half = sleep + (draw - sleep) / 2
    assert math.isclose(floor_seconds(views, nows, half), S19J.sleep_tau_seconds * math.log(2))
    cut = plan(fleet, half, CONFIG, NOW_SECONDS)
    assert math.isclose(effective_deadline_seconds(cut, fleet, 1.0),
                        1.0 + S19J.sleep_tau_seconds * math.log(2))
    # halving the working draw by the floor + 1 s takes some sleeps, not all ten
    slept = sum(mp.reason == FAST_SHED_REASON for mp in fast_shed(cut, fleet, 1.0).miners)
    assert 0 < slept < 10


def test_a_cut_sent_after_the_last_read_counts_as_settling_since_it_was_sent() -> None:
    """Rounds that follow a cut before the next poll must not see the old draw as
    current: the second drop of a fast fall would otherwise sleep miners whose cut
    has long settled."""
    fleet_of = [
        MinerView(miner_id="m00", model=S19J, status=MinerStatus.MINING, measured_watts=3000.0,
                  power_limit_watts=1100,
                  commanded_at_seconds=None if age is None else NOW_SECONDS - age)
        for age in (None, 0.0, 3.0, 30.0)
    ]
    fresh, just_sent, settling, settled = (_draw_now(v, NOW_SECONDS) for v in fleet_of)
    assert fresh == just_sent == 3000.0
    assert 1100.0 < settling < 3000.0
    assert math.isclose(settling, 1100 + 1900 * math.exp(-3.0 / S19J.power_tau_seconds))
    assert math.isclose(settled, 1100.0, abs_tol=1.0)
    # and the shed follows: after 30 s nothing is over, after none everything is
    for view, fits in ((fleet_of[0], False), (fleet_of[3], True)):
        fleet = FleetState(NOW_SECONDS, (view,))
        held = plan(fleet, 1200.0, CONFIG, NOW_SECONDS)
        shed = fast_shed(held, fleet, 1.0)
        assert (shed is held) is fits


def test_a_shed_larger_than_one_wave_of_commands_uses_the_fewest() -> None:
    """Deep cuts keep miners hashing, but a stop takes off ~3x the watts by the
    deadline: when the cuts would need more commands than the actuator runs at once,
    the excess is met with fewer commands, by sleeps."""
    fleet = FleetState(NOW_SECONDS, tuple(_mining(i, S19J) for i in range(20)))
    budget = 0.97 * fleet.assumed_watts()
    cut = plan(fleet, budget, CONFIG, NOW_SECONDS)

    def changes(p: object) -> tuple[int, int]:
        reasons = [mp.reason for mp in p.miners]  # type: ignore[attr-defined]
        return reasons.count(DEEP_CUT_REASON), reasons.count(FAST_SHED_REASON)

    deep, slept = changes(fast_shed(cut, fleet, 1.0, max_batch=64))  # one wave: as before
    assert deep > 2 and slept == 0
    shed = fast_shed(cut, fleet, 1.0, max_batch=2)
    fewer_deep, fewer_slept = changes(shed)
    assert fewer_deep == 0 and 0 < fewer_slept < deep
    assert _expected(shed, fleet, 1.0) <= budget


def test_cuts_behind_a_full_batch_of_stops_are_not_counted_on() -> None:
    """The actuator sends stops before cuts, so when a drop's stops alone fill a
    batch its cuts land a wave or more later: by the deadline only the stops count,
    and the miners the cuts would have covered are slept instead (stops go first)."""
    fleet = FleetState(NOW_SECONDS, tuple(
        [_mining(i, S19J) for i in range(10)] + [_mining(i + 10, S21) for i in range(10)]))
    budget = 0.3 * fleet.assumed_watts()
    base = plan(fleet, budget, CONFIG, NOW_SECONDS)
    views = fleet.by_id()
    stops = sum(mp.action == "sleep" for mp in base.miners)
    assert 0 < stops < 20 and any(views[mp.miner_id].is_cut_by(mp.target_watts)
                                  for mp in base.miners), "a drop with stops and cuts"

    def slept(p: object) -> int:
        return sum(mp.action == "sleep" for mp in p.miners)  # type: ignore[attr-defined]

    def expected_without_cuts(p: object) -> float:
        """Draw at the deadline with every cut still where it is now."""
        deadline = effective_deadline_seconds(p, fleet, 1.0)  # type: ignore[arg-type]
        return math.fsum(
            views[mp.miner_id].assumed_watts if views[mp.miner_id].is_cut_by(mp.target_watts)
            else _draw_after(views[mp.miner_id], mp, deadline,
                             _draw_now(views[mp.miner_id], fleet.taken_at_seconds))
            for mp in p.miners)  # type: ignore[attr-defined]

    unbatched = fast_shed(base, fleet, 1.0)
    assert fast_shed(base, fleet, 1.0, max_batch=stops + 1).miners == unbatched.miners
    assert expected_without_cuts(unbatched) > budget  # it counts on its cuts landing in time

    waiting = fast_shed(base, fleet, 1.0, max_batch=stops)
    assert expected_without_cuts(waiting) <= budget  # the stops alone meet the budget
    assert slept(waiting) > slept(unbatched)
    assert DEEP_CUT_REASON not in {mp.reason for mp in waiting.miners}
