"""Example-based policy tests: small fleets with expectations a person can check by hand."""

from __future__ import annotations

from controller.catalog import find_model
from controller.fleet import FleetState, MinerStatus, MinerView
from controller.policy import Plan, plan
from simulators.bench.policy_bench import bench_config

NOW = 1_000.0
S21 = find_model("Antminer S21", "braiins")  # 1800..3500 W in 100 W steps
S21_LUX = find_model("Antminer S21", "luxos")  # profiles 1800/2500/3000/3500
S19J_LUX = find_model("Antminer S19j Pro", "luxos")  # profiles 1100..3050, 22 J/TH at 1100 W


def miner(
    miner_id: str,
    model: object = S21,
    *,
    on: bool = True,
    target: int | None = None,
    switched_ago: float | None = None,
    status: MinerStatus | None = None,
    measured: float | None = None,
    **extra: object,
) -> MinerView:
    assert model is S21 or model is S21_LUX or model is S19J_LUX
    limit = (target or model.max_target_watts) if on else None
    return MinerView(
        miner_id=miner_id,
        model=model,
        status=status or (MinerStatus.MINING if on else MinerStatus.SLEEPING),
        measured_watts=measured
        if measured is not None
        else (float(limit) if limit else float(model.sleep_watts)),
        power_limit_watts=limit,
        switched_at_seconds=None if switched_ago is None else NOW - switched_ago,
        **extra,  # type: ignore[arg-type]
    )


def fleet(*views: MinerView) -> FleetState:
    return FleetState(NOW, views)


def run(fl: FleetState, budget_kw: float, previous: Plan | None = None, **site: float) -> Plan:
    return plan(fl, budget_kw * 1000, bench_config(**site), NOW, previous)


def targets(p: Plan) -> dict[str, int | None]:
    return {m.miner_id: m.target_watts for m in p.miners}


def test_plenty_of_budget_runs_everyone_at_full_power() -> None:
    p = run(fleet(miner("a"), miner("b", S19J_LUX)), 100)
    assert targets(p) == {"a": 3500, "b": 3050}
    assert {m.reason for m in p.miners} == {"full power: budget allows"}
    assert p.planned_watts == 6550


def test_power_is_spread_across_throttled_miners_before_any_sleeps() -> None:
    # 4 x S21 with 10.2 kW: one at full power plus three asleep would waste the
    # concave curve; four at 2500 W mine far more.
    fl = fleet(*(miner(f"m{i}") for i in range(4)))
    p = run(fl, 10.2)
    assert all(m.action == "run" for m in p.miners)
    # where S21's curve is straight (2500-2700 W) how the watts split costs no TH/s
    assert all(2500 <= (t or 0) <= 2700 for t in targets(p).values())
    assert sum(t or 0 for t in targets(p).values()) == 10_200
    assert p.planned_watts <= 10_200
    assert "throttled to 2500 W: budget shared" in {m.reason for m in p.miners}


def test_least_efficient_miner_sleeps_first() -> None:
    p = run(fleet(miner("s21", S21_LUX), miner("s19j", S19J_LUX)), 2.5)
    assert p.by_id()["s21"].action == "run"
    s19j = p.by_id()["s19j"]
    assert s19j.action == "sleep"
    assert s19j.reason == "sleep: least efficient (22.0 J/TH) shed for budget"


def test_higher_priority_runs_first() -> None:
    p = run(fleet(miner("low", priority=0), miner("high", priority=1)), 2.0)
    assert p.by_id()["high"].action == "run"
    assert p.by_id()["low"].action == "sleep"
    assert p.by_id()["low"].reason == "sleep: priority 0, shed before higher-priority miners"


def test_lower_priority_waits_while_a_higher_one_sleeps() -> None:
    # "mid" (S19j, 1.1 kW minimum) fits while "high" (S21, 1.8 kW) does not: still mid waits.
    fl = fleet(miner("high", priority=2, on=False), miner("mid", S19J_LUX, priority=1, on=False))
    p = run(fl, 1.5)
    assert [m.action for m in p.miners] == ["sleep", "sleep"]
    assert p.by_id()["mid"].reason == "sleep: priority 1 waits for higher-priority miners"


def test_a_shed_pin_does_not_let_a_lower_priority_overtake_a_higher_one() -> None:
    # The pin (priority 0, S21, 1.8 kW) cannot run and "high" (priority 2, S21) cannot
    # either; "low" (priority 1, S19j, 1.1 kW) would fit, but a higher priority sleeps
    # for budget, so it waits. (The exact search once took the pin's lower block as
    # the only one and ran "low".)
    fl = fleet(
        miner("pin", S21, on=False, pinned=True),
        miner("high", S21, on=False, priority=2),
        miner("low", S19J_LUX, on=False, priority=1),
    )
    p = run(fl, 1.5)
    assert [m.action for m in p.miners] == ["sleep", "sleep", "sleep"]


def test_pinned_miner_keeps_full_power_while_the_budget_allows() -> None:
    p = run(fleet(miner("pin", S19J_LUX, pinned=True), miner("free", S21)), 5.0)
    assert p.by_id()["pin"].target_watts == 3050
    assert p.by_id()["pin"].reason == "full power: pinned"
    assert p.by_id()["free"].target_watts == 1900  # what is left after the pin and its sleep draw


def test_pin_never_breaks_the_budget() -> None:
    p = run(fleet(miner("pin", S21, pinned=True)), 1.0)
    assert p.by_id()["pin"].action == "sleep"
    assert p.planned_watts <= 1000


def test_excluded_and_unreachable_miners_are_counted_not_commanded() -> None:
    fl = fleet(
        miner("excl", S21, excluded=True, status=MinerStatus.EXCLUDED, measured=3300.0),
        miner("lost", S21, status=MinerStatus.UNREACHABLE, measured=1000.0),
        miner("ok", S21),
    )
    p = run(fl, 9.0)
    assert p.by_id()["excl"].action == "leave"
    assert p.by_id()["excl"].planned_watts == 3300  # its measured draw
    assert p.by_id()["lost"].planned_watts == 3500  # worst case: nameplate, not the stale reading
    assert p.by_id()["lost"].reason == "not commanded: unreachable, counted at 3500 W"
    assert p.by_id()["ok"].target_watts == 2200  # 9000 - 3300 - 3500


def test_budget_below_the_floor_sleeps_everything_controllable() -> None:
    fl = fleet(
        miner("excl", S21, excluded=True, status=MinerStatus.EXCLUDED), miner("a"), miner("b")
    )
    p = run(fl, 3.0)
    assert [m.action for m in p.miners] == ["sleep", "sleep", "leave"]
    assert p.planned_watts == 3500 + 35 + 35  # above the budget: nothing more can be shed
    assert "below the floor" in p.notes[0]


def test_min_off_time_keeps_a_fresh_sleeper_asleep() -> None:
    p = run(fleet(miner("a", on=False, switched_ago=100.0)), 10.0, min_off_seconds=300.0)
    assert p.by_id()["a"].action == "sleep"
    assert p.by_id()["a"].reason == "held off: min off-time 200 s left"


def test_min_on_time_keeps_a_fresh_miner_on_when_it_would_be_slept_voluntarily() -> None:
    # Priority alone would sleep "low"; it was switched on 60 s ago, so it stays on.
    fl = fleet(miner("high", priority=1, on=False), miner("low", switched_ago=60.0))
    p = run(fl, 3.7, min_on_seconds=120.0, min_off_seconds=0.0)
    assert p.by_id()["low"].action == "run"
    assert p.by_id()["low"].reason.startswith("held on: min on-time 60 s left")


def test_shedding_for_budget_overrides_min_on_time() -> None:
    fl = fleet(miner("a", switched_ago=10.0), miner("b", switched_ago=10.0))
    p = run(fl, 2.0, min_on_seconds=300.0)
    assert p.planned_watts <= 2000
    assert [m.action for m in p.miners] == ["run", "sleep"]
    assert p.by_id()["b"].reason == "sleep: shed for budget despite min on-time"


def test_ramp_limits_the_rise_over_the_previous_plan() -> None:
    fl = fleet(*(miner(f"m{i}", on=False) for i in range(6)))
    first = run(fl, 30, ramp_up_kw_per_second=1.0)  # from ~0.2 kW asleep, +5 kW (one period)
    assert first.planned_watts <= 210 + 5000
    assert any("ramp limit" in n for n in first.notes)
    second = plan(fl, 30_000, bench_config(ramp_up_kw_per_second=1.0), NOW + 2.0, first)
    # two more seconds of ramp, plus what the first plan's allowance left unused
    assert first.ramp_ceiling_watts is not None
    assert second.planned_watts <= first.ramp_ceiling_watts + 2000 + 1e-6


def test_slow_ramp_still_wakes_miners_once_enough_allowance_accumulated() -> None:
    # 0.2 kW/s with 1 s between plans: one period's allowance (200 W) is far below the
    # smallest wake (a miner at its lowest target); unused allowance must carry over
    config = bench_config(ramp_up_kw_per_second=0.2)
    fl = fleet(*(miner(f"m{i}", on=False) for i in range(3)))
    previous = plan(fl, 20_000, config, NOW)
    woke_at = None
    for second in range(1, 60):
        p = plan(fl, 20_000, config, NOW + second, previous)
        assert previous.ramp_ceiling_watts is not None
        assert p.planned_watts <= previous.ramp_ceiling_watts + 200 + 1e-6
        if any(m.action == "run" for m in p.miners):
            woke_at = second
            break
        previous = p
    assert woke_at is not None, "a slow ramp must not stall below the smallest step"
    smallest_wake = min(m.model.min_target_watts for m in fl.miners)
    assert woke_at <= smallest_wake / 200 + 2


def test_hysteresis_holds_off_a_wake_on_small_headroom() -> None:
    # 3.8 kW leaves 265 W above one S21 at full power: below 0.5 kW of hysteresis, nothing wakes
    fl = fleet(miner("a"), miner("b", on=False))
    p = run(fl, 3.8, hysteresis_kw=0.5)
    assert p.by_id()["b"].action == "sleep"
    assert p.by_id()["b"].reason.startswith("stays asleep: headroom")


def test_a_running_miner_is_preferred_over_waking_an_identical_sleeper() -> None:
    fl = fleet(miner("asleep", on=False), miner("awake"))
    p = run(fl, 3.0)  # room for one S21 only: keep the one already mining
    assert p.by_id()["awake"].target_watts == 2900
    assert p.by_id()["asleep"].action == "sleep"


def test_booting_miner_counts_at_its_target() -> None:
    fl = fleet(miner("boot", status=MinerStatus.BOOTING, target=2000, measured=200.0))
    p = run(fl, 2.0, hysteresis_kw=0.5)
    assert p.by_id()["boot"].target_watts == 2000


def test_luxos_targets_are_profiles() -> None:
    p = run(fleet(miner("a", S19J_LUX), miner("b", S19J_LUX)), 4.5)
    assert {t for t in targets(p).values()} <= set(S19J_LUX.targets_watts)
    assert p.planned_watts <= 4500


def test_plan_helpers() -> None:
    p = run(fleet(miner("a"), miner("b")), 100)
    assert set(p.by_id()) == {"a", "b"}
    assert len(p.running()) == 2
    assert p.joules_per_th is not None and 17 < p.joules_per_th < 18


def test_a_small_dip_is_absorbed_by_throttling_not_by_switching_off() -> None:
    # Budget 200 W under the present 23.6 kW, inside 0.5 kW of hysteresis. Pure
    # water-filling would sleep the S19j (its wake no longer fits); holding it on and
    # trimming the S21s avoids a switch for a wobble.
    fl = fleet(
        *(miner(f"s21-{i}", target=2500) for i in range(9)), miner("s19j", S19J_LUX, target=1100)
    )
    p = run(fl, 23.4, hysteresis_kw=0.5)
    assert p.planned_watts <= 23_400
    assert all(m.action == "run" for m in p.miners)
    assert (
        p.by_id()["s19j"].reason == "throttled to 1100 W: small dip absorbed without switching off"
    )


def test_nan_or_negative_budget_plans_for_nothing() -> None:
    for budget in (float("nan"), -5_000.0):
        p = plan(fleet(miner("a")), budget, bench_config(), NOW)
        assert p.by_id()["a"].action == "sleep"
        assert p.budget_watts == 0.0
