"""Property tests: each would fail on a policy that breaks the rule it names."""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import replace
from unittest.mock import patch

from hypothesis import assume, given, note
from hypothesis import strategies as st

from controller import policy_fill
from controller.config import HashgovConfig
from controller.fleet import FleetState
from controller.policy import Plan, plan
from simulators.bench.policy_bench import bench_config
from tests.unit.test_policy_support import (
    EPS_WATTS,
    NOW_SECONDS,
    apply_plan,
    brute_force_ths,
    concave_upper_bound_ths,
    configs,
    current_watts,
    fleets,
    floor_watts,
    held_off,
    held_on,
    is_controllable,
    levels,
)

budgets_kw = st.floats(0.0, 120.0)


@st.composite
def histories(draw: st.DrawFn, fleet: FleetState, config: HashgovConfig) -> Plan | None:
    """None, or a previous plan made some seconds ago on the same fleet."""
    if draw(st.booleans()):
        return None
    earlier = NOW_SECONDS - draw(st.floats(0.5, 60.0))
    return plan(fleet, draw(budgets_kw) * 1000, config, earlier)


def _ramp_cap(fleet: FleetState, config: HashgovConfig, previous: Plan | None) -> float:
    rate = config.site.ramp_up_watts_per_second
    if previous is None:
        return current_watts(fleet) + rate * config.site.control_period_seconds
    # unused allowance carries over, at most one step of any miner in the fleet
    ceiling = (
        previous.planned_watts
        if previous.ramp_ceiling_watts is None
        else previous.ramp_ceiling_watts
    )
    carried = min(max(ceiling - previous.planned_watts, 0.0), largest_step_watts(fleet))
    return previous.planned_watts + carried + rate * (NOW_SECONDS - previous.created_at_seconds)


def largest_step_watts(fleet: FleetState) -> float:
    steps = [0.0]
    for m in fleet.miners:
        t = m.model.targets_watts
        steps += [t[0] - m.model.sleep_watts, *(b - a for a, b in itertools.pairwise(t))]
    return max(steps)


# ------------------------------------------------------------------ budget


@given(st.data(), fleets(), configs(), budgets_kw)
def test_planned_never_exceeds_budget_except_floor(
    data: st.DataObject, fleet: FleetState, config: HashgovConfig, budget_kw: float
) -> None:
    previous = data.draw(histories(fleet, config))
    budget = budget_kw * 1000
    result = plan(fleet, budget, config, NOW_SECONDS, previous)
    floor = floor_watts(fleet)
    if budget < floor:
        assert math.isclose(result.planned_watts, floor, rel_tol=1e-9)
        assert all(m.action != "run" for m in result.miners)
        assert any("floor" in n for n in result.notes)
    else:
        assert result.planned_watts <= budget + EPS_WATTS
    assert math.isclose(
        result.planned_watts, math.fsum(m.planned_watts for m in result.miners), rel_tol=1e-9
    )


@given(st.data(), fleets(), configs(), budgets_kw)
def test_ramp_limits_rise(
    data: st.DataObject, fleet: FleetState, config: HashgovConfig, budget_kw: float
) -> None:
    previous = data.draw(histories(fleet, config))
    result = plan(fleet, budget_kw * 1000, config, NOW_SECONDS, previous)
    allowed = max(_ramp_cap(fleet, config, previous), floor_watts(fleet))
    assert result.planned_watts <= allowed + EPS_WATTS


@given(fleets(), configs(min_times=False))
def test_budget_above_everything_runs_every_eligible_miner_at_full_power(
    fleet: FleetState, config: HashgovConfig
) -> None:
    config = config.model_copy(
        update={"site": config.site.model_copy(update={"ramp_up_kw_per_second": 1e6})}
    )
    full = sum(
        v.model.max_target_watts if is_controllable(v) else floor_watts(FleetState(0, (v,)))
        for v in fleet.miners
    )
    nameplate = sum(v.model.nameplate_watts for v in fleet.miners)
    result = plan(fleet, max(full, nameplate), config, NOW_SECONDS)
    by_id = result.by_id()
    for v in fleet.miners:
        if is_controllable(v):
            assert by_id[v.miner_id].action == "run"
            assert by_id[v.miner_id].target_watts == v.model.max_target_watts


# ------------------------------------------------------------------ optimality


@given(
    fleets(max_miners=6, faults=False, history=False, pins=False, initial="on", max_targets=6),
    st.floats(0.0, 1.1),
)
def test_within_two_percent_of_brute_force(fleet: FleetState, budget_share: float) -> None:
    config = bench_config()  # no ramp, hysteresis or min times: the bare optimisation
    floor = floor_watts(fleet)
    full = sum(v.model.max_target_watts for v in fleet.miners)
    budget = floor + budget_share * (full - floor)
    assume(math.prod(len(levels(v.model)) for v in fleet.miners) <= 50_000)
    result = plan(fleet, budget, config, NOW_SECONDS)
    best = brute_force_ths(fleet.miners, 0.0, budget)
    note(f"plan {result.planned_ths:.3f} TH/s, brute force {best:.3f} TH/s")
    assert result.planned_ths <= best + 1e-6  # the plan itself must be feasible
    assert result.planned_ths >= 0.98 * best - 1e-9


@given(
    fleets(
        min_miners=9,
        max_miners=40,
        faults=False,
        history=False,
        pins=False,
        priorities=False,
        initial="on",
    ),
    st.floats(0.0, 1.0),
)
def test_large_fleets_within_one_step_of_the_concave_upper_bound(
    fleet: FleetState, share: float
) -> None:
    # Above the exact-search size the water-fill alone decides: it may lose at most
    # about one step to the discrete fit, never more.
    floor = floor_watts(fleet)
    budget = floor + share * (sum(v.model.max_target_watts for v in fleet.miners) - floor)
    result = plan(fleet, budget, bench_config(), NOW_SECONDS)
    bound, largest_step = concave_upper_bound_ths(fleet.miners, budget - floor)
    note(f"plan {result.planned_ths:.3f}, bound {bound:.3f}, largest step {largest_step:.3f}")
    assert result.planned_ths <= bound + 1e-6
    assert result.planned_ths >= bound - largest_step - 1e-6


@given(fleets(min_miners=2, max_miners=30, history=False, initial="on"), st.floats(0.0, 1.1))
def test_no_one_step_power_move_between_running_miners_gains(
    fleet: FleetState, budget_share: float
) -> None:
    # the solver's own optimality: sticky bands off (they trade a little, next test)
    config = bench_config()
    floor = floor_watts(fleet)
    budget = _share_above_floor(fleet, budget_share)
    with patch.object(policy_fill, "STICKY_SLOPE_TOLERANCES", ()):
        result = plan(fleet, budget, config, NOW_SECONDS)
    if budget < floor:
        return
    by_id = {v.miner_id: v for v in fleet.miners}
    running = [(by_id[m.miner_id], m.target_watts or 0) for m in result.miners if m.action == "run"]
    tolerance = 1e-6 * max(result.planned_ths, 1.0)
    for donor, d_target in running:
        if donor.pinned:
            continue  # a pin keeps its power while the budget allows
        d_targets = donor.model.targets_watts
        d_index = d_targets.index(d_target)
        if d_index == 0:
            continue
        freed = d_targets[d_index] - d_targets[d_index - 1]
        lost = donor.model.hashrate_ths_at(d_targets[d_index]) - donor.model.hashrate_ths_at(
            d_targets[d_index - 1]
        )
        for taker, t_target in running:
            if taker is donor:
                continue
            t_targets = taker.model.targets_watts
            t_index = t_targets.index(t_target)
            if t_index + 1 >= len(t_targets):
                continue
            extra = t_targets[t_index + 1] - t_targets[t_index]
            if result.planned_watts - freed + extra > budget + EPS_WATTS:
                continue
            gained = taker.model.hashrate_ths_at(
                t_targets[t_index + 1]
            ) - taker.model.hashrate_ths_at(t_target)
            assert gained - lost <= tolerance, (donor.miner_id, taker.miner_id, gained, lost)


@given(
    fleets(min_miners=2, max_miners=40, history=False),
    st.floats(0.0, 1.1),
)
def test_sticky_levels_keep_the_solvers_decisions_and_nearly_its_hashrate(
    fleet: FleetState, budget_share: float
) -> None:
    # Members keep a level near the solver's to save commands: the same miners run,
    # the budget still holds, and no group gives up more than STICKY_MAX_LOSS.
    config = bench_config()
    floor = floor_watts(fleet)
    budget = _share_above_floor(fleet, budget_share)
    sticky = plan(fleet, budget, config, NOW_SECONDS)
    with patch.object(policy_fill, "STICKY_SLOPE_TOLERANCES", ()):
        solver = plan(fleet, budget, config, NOW_SECONDS)
    note(f"sticky {sticky.planned_ths:.3f} TH/s, solver {solver.planned_ths:.3f} TH/s")
    if budget >= floor:
        assert sticky.planned_watts <= budget + EPS_WATTS
    assert sticky.planned_ths >= solver.planned_ths * (1 - policy_fill.STICKY_MAX_LOSS) - 1e-9
    assert _running_models(fleet, sticky) == _running_models(fleet, solver)


def _share_above_floor(fleet: FleetState, share: float) -> float:
    """The floor plus ``share`` of every controllable miner at full power."""
    return floor_watts(fleet) + share * sum(
        v.model.max_target_watts for v in fleet.miners if is_controllable(v)
    )


def _running_models(fleet: FleetState, result: Plan) -> list[str]:
    running = {m.miner_id for m in result.running()}
    return sorted(v.model.model for v in fleet.miners if v.miner_id in running)



# ------------------------------------------------------------------ rules


@given(st.data(), st.booleans(), st.booleans(), st.floats(0.0, 1.0))
def test_lower_priority_never_runs_while_higher_sleeps_for_budget(
    data: st.DataObject, start_on: bool, large: bool, share: float
) -> None:
    # large fleets exercise the water-fill's priority gate, small ones the exact search
    sizes = {"min_miners": 9, "max_miners": 30} if large else {"max_miners": 8}
    fleet = data.draw(fleets(history=False, initial="on" if start_on else "off", **sizes))  # type: ignore[arg-type]
    floor = floor_watts(fleet)
    budget = floor + share * sum(v.model.max_target_watts for v in fleet.miners)
    result = plan(fleet, budget, bench_config(), NOW_SECONDS)
    by_id = {v.miner_id: v for v in fleet.miners}
    asleep = [by_id[m.miner_id] for m in result.miners if m.action == "sleep"]
    running = [by_id[m.miner_id] for m in result.miners if m.action == "run"]
    for sleeper in asleep:
        for runner in running:
            if runner.pinned:
                continue  # pins outrank priority
            assert runner.priority >= sleeper.priority, (sleeper.miner_id, runner.miner_id)


@given(fleets(), configs(), budgets_kw)
def test_min_off_and_min_on_times(
    fleet: FleetState, config: HashgovConfig, budget_kw: float
) -> None:
    budget = budget_kw * 1000
    result = plan(fleet, budget, config, NOW_SECONDS)
    by_id = result.by_id()
    limit = min(budget, max(_ramp_cap(fleet, config, None), floor_watts(fleet)))
    # watts the plan could free without touching pins: free miners to sleep, held-on ones to minimum
    freeable = 0.0
    for v in fleet.miners:
        p = by_id[v.miner_id]
        if not is_controllable(v) or v.pinned or p.action != "run":
            continue
        assert p.target_watts is not None
        floor_of_v = v.model.min_target_watts if held_on(v, config) else v.model.sleep_watts
        freeable += p.target_watts - floor_of_v
    for v in fleet.miners:
        if not is_controllable(v):
            continue
        action = by_id[v.miner_id].action
        if held_off(v, config):
            assert action == "sleep", v.miner_id  # not woken before min off-time
        if held_on(v, config) and action == "sleep" and not v.pinned:
            # slept only for budget: even freeing every free miner would not make room
            wake_watts = v.model.min_target_watts - v.model.sleep_watts
            assert result.planned_watts - freeable + wake_watts > limit + EPS_WATTS, v.miner_id


@given(
    fleets(min_miners=2, max_miners=30, initial="on", faults=False, pins=False), st.floats(0.0, 1.0)
)
def test_min_on_miners_sleep_only_when_freeing_everyone_else_would_not_do(
    fleet: FleetState, share: float
) -> None:
    # every miner on, some switched on recently, budget cut: who gets slept?
    config = bench_config(min_on_seconds=300.0, min_off_seconds=0.0)
    floor = floor_watts(fleet)
    budget = floor + share * (current_watts(fleet) - floor)
    result = plan(fleet, budget, config, NOW_SECONDS)
    by_id = result.by_id()
    freeable = sum(
        (by_id[v.miner_id].target_watts or 0)
        - (v.model.min_target_watts if held_on(v, config) else v.model.sleep_watts)
        for v in fleet.miners
        if by_id[v.miner_id].action == "run"
    )
    for v in fleet.miners:
        if held_on(v, config) and by_id[v.miner_id].action == "sleep":
            wake_watts = v.model.min_target_watts - v.model.sleep_watts
            assert result.planned_watts - freeable + wake_watts > budget + EPS_WATTS, v.miner_id


@given(fleets(initial="on", faults=False), st.floats(0.0, 1.0))
def test_shedding_is_immediate_and_overrides_min_on(fleet: FleetState, share: float) -> None:
    config = bench_config(min_on_seconds=300.0)
    just_on = FleetState(
        NOW_SECONDS, tuple(replace(v, switched_at_seconds=NOW_SECONDS - 1.0) for v in fleet.miners)
    )
    floor = floor_watts(just_on)
    budget = floor + share * (current_watts(just_on) - floor)
    result = plan(just_on, budget, config, NOW_SECONDS)
    assert result.planned_watts <= budget + EPS_WATTS


@given(fleets(), configs(), budgets_kw)
def test_excluded_never_commanded_and_targets_valid(
    fleet: FleetState, config: HashgovConfig, budget_kw: float
) -> None:
    result = plan(fleet, budget_kw * 1000, config, NOW_SECONDS)
    by_id = result.by_id()
    assert sorted(by_id) == sorted(v.miner_id for v in fleet.miners)
    for v in fleet.miners:
        p = by_id[v.miner_id]
        if not is_controllable(v):
            assert p.action == "leave" and p.target_watts is None
        elif p.action == "run":
            assert p.target_watts in v.model.targets_watts
        else:
            assert p.action == "sleep" and p.target_watts is None
            assert p.planned_watts == v.model.sleep_watts
        assert p.reason


@given(fleets(), configs(), budgets_kw)
def test_pinned_never_break_budget(
    fleet: FleetState, config: HashgovConfig, budget_kw: float
) -> None:
    pinned_all = FleetState(
        fleet.taken_at_seconds, tuple(replace(v, pinned=not v.excluded) for v in fleet.miners)
    )
    budget = budget_kw * 1000
    result = plan(pinned_all, budget, config, NOW_SECONDS)
    assert result.planned_watts <= max(budget, floor_watts(pinned_all)) + EPS_WATTS


@given(st.data(), fleets(), configs(), budgets_kw)
def test_deterministic(
    data: st.DataObject, fleet: FleetState, config: HashgovConfig, budget_kw: float
) -> None:
    previous = data.draw(histories(fleet, config))
    first = plan(fleet, budget_kw * 1000, config, NOW_SECONDS, previous)
    shuffled = FleetState(fleet.taken_at_seconds, tuple(data.draw(st.permutations(fleet.miners))))
    assert plan(shuffled, budget_kw * 1000, config, NOW_SECONDS, previous) == first


# ------------------------------------------------------------------ sequences


def _switch_times(
    fleet: FleetState, budgets_watts: list[float], config: HashgovConfig, period_seconds: float
) -> dict[str, list[float]]:
    """Run the loop (plan, apply, repeat) and record when each miner switched on/off."""
    switches: dict[str, list[float]] = {v.miner_id: [] for v in fleet.miners}
    previous: Plan | None = None
    now = NOW_SECONDS
    for budget in budgets_watts:
        result = plan(fleet, budget, config, now, previous)
        assert result.planned_watts <= max(budget, floor_watts(fleet)) + EPS_WATTS
        before = {v.miner_id: v.is_on for v in fleet.miners}
        fleet = apply_plan(fleet, result, now)
        for v in fleet.miners:
            if is_controllable(v) and v.is_on != before[v.miner_id]:
                switches[v.miner_id].append(now)
        previous = result
        now += period_seconds
    return switches


@given(
    fleets(
        min_miners=3, max_miners=20, faults=False, history=False, initial="on", catalogue_only=True
    ),
    st.floats(0.2, 0.9),
    st.integers(0, 2**32 - 1),
)
def test_noisy_budget_switches_at_most_once_per_min_period(
    fleet: FleetState, share: float, seed: int
) -> None:
    config = bench_config(hysteresis_kw=1.0, min_on_seconds=60.0, min_off_seconds=60.0)
    rng = random.Random(seed)
    floor = floor_watts(fleet)
    base = floor + share * (sum(v.model.max_target_watts for v in fleet.miners) - floor)
    budgets = [base + rng.uniform(-450.0, 450.0) for _ in range(60)]  # noise < hysteresis / 2
    switches = _switch_times(fleet, budgets, config, period_seconds=5.0)
    for miner_id, times in switches.items():
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert all(g >= 60.0 for g in gaps), (miner_id, times)


# Catalogue models: every dip of the noise can be absorbed by throttling. (A fleet
# of fixed-power machines must shed when the budget dips below them: the budget wins.)
@given(
    fleets(
        min_miners=2, max_miners=16, faults=False, history=False, initial="on", catalogue_only=True
    ),
    st.floats(0.1, 0.9),
    st.integers(0, 2**32 - 1),
)
def test_hysteresis_alone_stops_flapping_at_a_boundary(
    fleet: FleetState, share: float, seed: int
) -> None:
    config = bench_config(hysteresis_kw=1.0, min_on_seconds=0.0, min_off_seconds=0.0)
    rng = random.Random(seed)
    floor = floor_watts(fleet)
    base = floor + share * (sum(v.model.max_target_watts for v in fleet.miners) - floor)
    budgets = [base + rng.choice((-1, 1)) * 450.0 for _ in range(40)]
    switches = _switch_times(fleet, budgets, config, period_seconds=5.0)
    for miner_id, times in switches.items():
        assert len([t for t in times if t > NOW_SECONDS]) <= 1, (miner_id, times)
