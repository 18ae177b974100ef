"""Budget: the formula, the stale → grace → fail-safe timeline, split streams, the meter check."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.budget import Budget, BudgetKeeper, compute_budget, meter_correction
from controller.clock import ManualClock
from controller.config import SiteConfig, StreamConfig
from controller.telemetry import TelemetryStore


def site(**kw: Any) -> SiteConfig:
    base: dict[str, Any] = {
        "grant_cap_kw": 100.0,
        "safety_margin_kw": 2.0,
        "stale_after_seconds": 10.0,
        "grace_seconds": 5.0,
        "fail_safe_budget_kw": 0.0,
    }
    base.update(kw)
    return SiteConfig(**base)


def num(kind: str, topic: str) -> StreamConfig:
    return StreamConfig(kind=kind, topic=topic)


SURPLUS = {"surplus": num("surplus", "p/s")}
SPLIT = {"out": num("plant_output", "p/o"), "dem": num("plant_demand", "p/d")}


class Feed:
    """A store fed by hand on a ManualClock."""

    def __init__(self, site_config: SiteConfig, streams: dict[str, StreamConfig]) -> None:
        self.clock = ManualClock()
        self.site = site_config
        self.store = TelemetryStore(site_config, streams)

    def put(self, name: str, kw: float) -> None:
        self.store.ingest(name, str(kw).encode(), self.clock.wall(), self.clock.monotonic())

    def budget(self, previous: Budget | None = None) -> Budget:
        return compute_budget(self.site, self.store, self.clock.monotonic(), previous=previous)


def test_no_telemetry_is_fail_safe() -> None:
    f = Feed(site(fail_safe_budget_kw=3.0), SURPLUS)
    b = f.budget()
    assert b.state == "fail_safe" and b.fail_safe and b.watts == 3_000.0
    assert b.surplus_watts is None and "no surplus" in b.reason


def test_formula_surplus_below_cap() -> None:
    f = Feed(site(), {**SURPLUS, "dc": num("other_load", "dc"), "aux": num("other_load", "aux")})
    f.put("surplus", 60)
    f.put("dc", 10)
    f.put("aux", 3)
    b = f.budget()
    assert b.state == "fresh" and not b.fail_safe
    assert b.watts == pytest.approx((60 - 10 - 3 - 2) * 1000)
    assert b.other_loads_watts == 13_000 and b.surplus_watts == 60_000 and b.cap_watts == 100_000


def test_formula_cap_binds_and_floor_at_zero() -> None:
    f = Feed(site(), {**SURPLUS, "dc": num("other_load", "dc")})
    f.put("surplus", 500)
    f.put("dc", 10)
    assert f.budget().watts == pytest.approx((100 - 10 - 2) * 1000)
    f.put("dc", 99)
    assert f.budget().watts == 0.0


def test_split_streams_use_output_minus_demand_and_older_age() -> None:
    f = Feed(site(), SPLIT)
    f.put("out", 80)
    assert f.budget().state == "fail_safe"  # demand never reported
    f.clock.advance(6)
    f.put("dem", 30)
    b = f.budget()
    assert b.state == "fresh" and b.watts == pytest.approx((80 - 30 - 2) * 1000)
    assert b.surplus_age_seconds == 6
    f.clock.advance(4.5)  # output is now 10.5 s old, demand 4.5 s: stale by the older one
    assert f.budget().state == "grace"
    f.put("dem", 90)  # demand above output: surplus 0, not negative
    f.put("out", 85)
    assert f.budget().watts == 0.0 and f.budget().surplus_watts == 0.0


def test_timeline_fresh_grace_fail_safe_never_raised() -> None:
    s = site(fail_safe_budget_kw=5.0)
    f = Feed(s, {**SURPLUS, "dc": num("other_load", "dc")})
    keeper = BudgetKeeper(s)
    f.put("surplus", 50)
    f.put("dc", 20)
    fresh = keeper.update(f.store, f.clock.monotonic())
    assert fresh.state == "fresh" and fresh.watts == 28_000
    f.clock.advance(10)
    assert keeper.update(f.store, f.clock.monotonic()).state == "fresh"  # exactly stale_after
    f.clock.advance(0.5)
    held = keeper.update(f.store, f.clock.monotonic())
    assert held.state == "grace" and held.watts == 28_000 and not held.fail_safe
    # the other load falls during grace: the budget is held, not raised
    f.put("dc", 1)
    assert keeper.update(f.store, f.clock.monotonic()).watts == 28_000
    # ... and rises: the budget drops at once
    f.put("dc", 40)
    low = keeper.update(f.store, f.clock.monotonic())
    assert low.state == "grace" and low.watts == 8_000
    f.put("dc", 20)
    assert keeper.update(f.store, f.clock.monotonic()).watts == 8_000
    f.clock.advance(4.5)  # age 15: still grace
    assert keeper.update(f.store, f.clock.monotonic()).state == "grace"
    f.clock.advance(0.01)
    fs = keeper.update(f.store, f.clock.monotonic())
    assert fs.state == "fail_safe" and fs.fail_safe and fs.watts == 5_000
    assert "stale" in fs.reason
    # fresh data again: back to fresh at once
    f.put("surplus", 40)
    back = keeper.update(f.store, f.clock.monotonic())
    assert back.state == "fresh" and back.watts == 18_000


def test_fail_safe_never_above_previous_budget() -> None:
    s = site(fail_safe_budget_kw=50.0)
    f = Feed(s, SURPLUS)
    keeper = BudgetKeeper(s)
    f.put("surplus", 12)
    assert keeper.update(f.store, f.clock.monotonic()).watts == 10_000
    f.clock.advance(16)
    b = keeper.update(f.store, f.clock.monotonic())
    assert b.state == "fail_safe" and b.watts == 10_000
    # without a previous budget, fail-safe is the configured figure
    assert f.budget().watts == 50_000


def test_other_load_never_reported_is_fail_safe() -> None:
    f = Feed(site(), {**SURPLUS, "dc": num("other_load", "dc")})
    f.put("surplus", 50)
    b = f.budget()
    assert b.state == "fail_safe" and "dc" in b.reason


def test_stale_other_load_keeps_its_last_value() -> None:
    f = Feed(site(), {**SURPLUS, "dc": num("other_load", "dc")})
    f.put("dc", 30)
    f.clock.advance(3600)
    f.put("surplus", 50)
    b = f.budget()
    assert b.state == "fresh" and b.other_loads_watts == 30_000 and b.watts == 18_000


def test_garbage_does_not_refresh_or_raise() -> None:
    f = Feed(site(), SURPLUS)
    f.put("surplus", 20)
    f.clock.advance(11)
    for bad in (b"nan", b"1e99", b"x"):
        f.store.ingest("surplus", bad, f.clock.wall(), f.clock.monotonic())
    b = f.budget()
    assert b.state == "grace" and b.watts == 18_000


def test_negative_surplus_is_a_deficit_and_drops_the_budget_at_once() -> None:
    f = Feed(site(), SURPLUS)
    f.put("surplus", 20)
    f.store.ingest("surplus", b"-3", f.clock.wall(), f.clock.monotonic())
    b = f.budget()
    assert b.state == "fresh" and b.watts == 0.0


@given(
    surplus_kw=st.floats(0, 1e5),
    other_kw=st.floats(0, 1e5),
    steps=st.lists(st.floats(0.1, 5.0), min_size=1, max_size=10),
)
def test_budget_never_rises_while_stale(surplus_kw: float, other_kw: float, steps: list[float]) -> None:
    s = site()
    f = Feed(s, {**SURPLUS, "dc": num("other_load", "dc")})
    keeper = BudgetKeeper(s)
    f.put("surplus", surplus_kw)
    f.put("dc", other_kw)
    first = keeper.update(f.store, f.clock.monotonic())
    assert 0 <= first.watts <= s.grant_cap_watts
    last = first.watts
    f.clock.advance(10.01)
    for step in steps:
        f.clock.advance(step)
        b = keeper.update(f.store, f.clock.monotonic())
        assert b.state in ("grace", "fail_safe")
        assert b.watts <= last
        last = b.watts


# -------------------------------------------------------------------- meter


def test_meter_explained_changes_nothing() -> None:
    m = meter_correction(50_000, 40_000, 40_000)
    assert m.effective_budget_watts == 50_000 and m.gap_watts == 0 and not m.over_budget


def test_meter_below_model_never_raises() -> None:
    m = meter_correction(50_000, 30_000, 40_000)
    assert m.effective_budget_watts == 50_000 and m.gap_watts == -10_000


def test_meter_unexplained_draw_is_shed() -> None:
    m = meter_correction(50_000, 48_000, 40_000)
    assert m.effective_budget_watts == 42_000 and m.gap_watts == 8_000 and not m.over_budget
    over = meter_correction(50_000, 60_000, 45_000)
    assert over.effective_budget_watts == 35_000 and over.over_budget
    assert meter_correction(5_000, 60_000, 0).effective_budget_watts == 0


@given(st.floats(0, 1e8), st.floats(0, 1e8), st.floats(0, 1e8))
def test_meter_correction_bounds(budget: float, meter: float, model: float) -> None:
    m = meter_correction(budget, meter, model)
    assert 0 <= m.effective_budget_watts <= budget
    assert m.over_budget == (meter > budget)
