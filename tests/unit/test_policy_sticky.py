"""Sticky assignment: a budget move is met by few members moving far, not many moving one step."""

from __future__ import annotations

import itertools
import random
from unittest.mock import patch

from controller import policy_fill
from controller.actuator import commands_for
from controller.catalog import builtin_models, find_model
from controller.fleet import FleetState, MinerStatus, MinerView
from controller.policy import plan
from controller.policy_fill import (
    STICKY_MAX_LOSS,
    Ladder,
    assign_counts,
    assign_sticky,
    build_ladder,
)
from drivers.base import CommandKind
from simulators.bench.policy_bench import bench_config
from tests.unit.test_policy_support import apply_plan

# S19j Pro on LuxOS: 1100..3000 W in 100 W steps; straight from 1100 to 1500 W, then bending
S19J_TARGETS = tuple(range(1100, 3001, 100))


def s19j_curve(watts: float) -> float:
    points = [(1100, 50.0), (1500, 64.0), (2000, 80.0), (2500, 93.0), (3050, 104.0)]
    for (w0, h0), (w1, h1) in itertools.pairwise(points):
        if watts <= w1:
            return h0 + (h1 - h0) * (watts - w0) / (w1 - w0)
    return points[-1][1]


def s19j() -> Ladder:
    return build_ladder(S19J_TARGETS, 30.0, [s19j_curve(t) for t in S19J_TARGETS])


def level_of(watts: int) -> int:
    return S19J_TARGETS.index(watts) + 1


def running_watts(ladder: Ladder, levels: list[int]) -> float:
    return sum(ladder.costs_watts[level] for level in levels if level > 0)


def hashrate(ladder: Ladder, levels: list[int]) -> float:
    return sum(ladder.values_ths[level] for level in levels)


def counts_at(ladder: Ladder, spread: dict[int, int]) -> list[int]:
    counts = [0] * (ladder.top_level + 1)
    for watts, n in spread.items():
        counts[0 if watts == 0 else level_of(watts)] = n
    return counts


def test_a_small_shed_moves_a_few_members_several_steps() -> None:
    # 100 miners at 1300 W; the solver sheds 2 kW by moving 20 of them one step down.
    # On the straight part of the curve 1100-1500 W, moving 10 two steps is as good.
    ladder = s19j()
    current = [level_of(1300)] * 100
    counts = counts_at(ladder, {1300: 80, 1200: 20})
    room = 80 * 1300 + 20 * 1200
    levels = assign_sticky(counts, ladder, current, room)
    moved = sum(1 for now, new in zip(current, levels, strict=True) if now != new)
    assert moved == 10
    assert running_watts(ladder, levels) <= room
    assert hashrate(ladder, levels) >= hashrate(ladder, assign_counts(counts, current)) - 1e-9


def test_members_that_change_anyway_absorb_the_move_first() -> None:
    # two members wake (asleep now): they take the whole raise, nobody else is touched
    ladder = s19j()
    current = [level_of(1300)] * 20 + [0, 0]
    counts = counts_at(ladder, {1400: 6, 1300: 16})
    room = 6 * 1400 + 16 * 1300
    levels = assign_sticky(counts, ladder, current, room)
    assert levels[:20] == current[:20]
    assert all(level > 0 for level in levels[20:])
    assert running_watts(ladder, levels) == room


def test_the_solvers_sleep_count_stands_and_sleepers_stay_asleep() -> None:
    ladder = s19j()
    current = [level_of(1200)] * 5 + [0] * 3
    counts = counts_at(ladder, {0: 4, 1200: 4})
    levels = assign_sticky(counts, ladder, current, 4 * 1200)
    assert levels.count(0) == 4
    assert levels[5:] == [0, 0, 0]  # those already asleep are the ones that sleep


def test_members_far_from_the_solvers_levels_move_into_the_band() -> None:
    # all at 3000 W, the solver wants 1200 W: the bend between 1500 and 3000 W is past
    # any tolerance, so nobody may stay at 3000 W
    ladder = s19j()
    current = [level_of(3000)] * 10
    counts = counts_at(ladder, {1200: 10})
    levels = assign_sticky(counts, ladder, current, 12_000)
    assert max(levels) <= level_of(1500)
    assert running_watts(ladder, levels) <= 12_000


def test_a_coarse_ladder_falls_back_to_narrower_bands() -> None:
    # three targets only: keeping members at 3000 W and cutting others to 1800 W
    # would lose more than STICKY_MAX_LOSS; the result stays within it
    targets = (1800, 2500, 3000)
    values = {1800: 125.0, 2500: 160.0, 3000: 183.0}
    ladder = build_ladder(targets, 30.0, [values[t] for t in targets])
    current = [3] * 120
    counts = [0, 0, 117, 3]
    levels = assign_sticky(counts, ladder, current, 117 * 2500 + 3 * 3000)
    solver_ths = 117 * 160.0 + 3 * 183.0
    assert hashrate(ladder, levels) >= solver_ths * (1 - STICKY_MAX_LOSS)
    assert running_watts(ladder, levels) <= 117 * 2500 + 3 * 3000
    with patch.object(policy_fill, "STICKY_MAX_LOSS", 1.0):  # the widest band, unchecked
        wide = assign_sticky(counts, ladder, current, 117 * 2500 + 3 * 3000, tolerances=(0.2,))
    assert hashrate(ladder, wide) < solver_ths * (1 - STICKY_MAX_LOSS)  # what the fallback avoided


def test_assign_counts_keeps_members_where_the_counts_allow() -> None:
    levels = assign_counts([1, 0, 2, 1], [3, 2, 2, 0])
    assert sorted(levels) == [0, 2, 2, 3]
    assert levels[:3] == [3, 2, 2]  # unchanged; only the last member moves


def test_a_woken_member_resumes_at_the_limit_its_firmware_holds() -> None:
    # four sleepers wake; two still hold 1400 W from before, inside the band: they keep
    # it (one command, resume) and the other two take up the difference
    ladder = s19j()
    current = [0, 0, 0, 0]
    resume = [level_of(1400), level_of(1400), 0, level_of(3000)]
    counts = counts_at(ladder, {1300: 4})
    levels = assign_sticky(counts, ladder, current, 4 * 1300, resume_levels=resume)
    assert levels[:2] == [level_of(1400), level_of(1400)]
    assert levels[3] != level_of(3000)  # far outside the band: set before resuming
    assert running_watts(ladder, levels) <= 4 * 1300
    without = assign_sticky(counts, ladder, current, 4 * 1300)
    assert without[:2] != levels[:2]  # what the held limit saved


def _chase_noise(rounds: int, seed: int) -> tuple[int, float]:
    """Commands sent and TH/s planned over a closed loop: 300 catalogue miners, each plan
    carried out perfectly, budget at 60 % of nameplate with 1 % noise per round."""
    rng = random.Random(seed)
    models = builtin_models()
    views = []
    for i in range(300):
        model = rng.choice(models)
        top = model.max_target_watts
        views.append(MinerView(f"m{i:04d}", model, MinerStatus.MINING, float(top), top))
    fleet = FleetState(0.0, tuple(views))
    nameplate = sum(v.model.nameplate_watts for v in views)
    config = bench_config(hysteresis_kw=0.01 * nameplate / 1000, min_on_seconds=900, min_off_seconds=900)
    commands, ths, previous = 0, 0.0, None
    for r in range(rounds):
        now = 30.0 * (r + 1)
        result = plan(fleet, nameplate * (0.6 + 0.01 * rng.gauss(0, 1)), config, now, previous)
        if r >= 10:  # after the first big cut from full power
            commands += sum(len(work.steps) for work in commands_for(result, fleet))
            ths += result.planned_ths
        fleet, previous = apply_plan(fleet, result, now), result
    return commands, ths


def test_chasing_a_noisy_budget_sends_far_fewer_commands_for_nearly_the_same_hashrate() -> None:
    sticky_commands, sticky_ths = _chase_noise(60, seed=7)
    with patch.object(policy_fill, "STICKY_SLOPE_TOLERANCES", ()):
        solver_commands, solver_ths = _chase_noise(60, seed=7)
    assert sticky_commands < 0.7 * solver_commands
    assert sticky_ths >= solver_ths * (1 - policy_fill.STICKY_MAX_LOSS)


def _asleep_holding(count: int, held_watts: int) -> FleetState:
    model = find_model("Antminer S19j Pro", "braiins")
    return FleetState(0.0, tuple(
        MinerView(f"m{i:03d}", model, MinerStatus.SLEEPING, float(model.sleep_watts), held_watts)
        for i in range(count)
    ))


def test_while_the_ramp_binds_sleepers_wake_straight_to_the_limit_they_hold() -> None:
    # after a trip: 40 asleep holding 2500 W, the ramp lets ~50 kW in; waking 20 at
    # 2500 W is one command each (resume), where 45 at 1100 W would be two, and
    # then raises again as the ramp goes on
    fleet = _asleep_holding(40, 2500)
    config = bench_config(ramp_up_kw_per_second=10.0)  # 50 kW a 5 s period
    result = plan(fleet, 200_000.0, config, 10_000.0)
    targets = [m.target_watts for m in result.running()]
    assert len(targets) >= 15 and targets.count(2500) >= len(targets) - 2
    steps = [step.kind for work in commands_for(result, fleet) for step in work.steps]
    assert steps.count(CommandKind.RESUME) == len(targets)
    # the fill's leftover (less than one more wake) may still raise one or two
    assert steps.count(CommandKind.SET_POWER_LIMIT) <= 2


def test_without_a_binding_ramp_sleepers_wake_where_the_fill_puts_them() -> None:
    # the night: the budget, not the ramp, is short: as many as fit wake, at the lowest
    # target (the best TH per W), whatever limit they hold
    fleet = _asleep_holding(40, 2500)
    result = plan(fleet, 30_000.0, bench_config(), 10_000.0)
    targets = [m.target_watts for m in result.running()]
    assert len(targets) >= 25 and targets.count(1100) >= len(targets) - 1
