"""The control loop's own logic, on a manual clock: urgent wake-ups, the site
meter check (fast attack, slow release) and the operator cap and pause."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from controller.actuator import Actuator
from controller.clock import ManualClock
from controller.config import HashgovConfig, load_config
from controller.control import ControlLoop, Decision, MeterFilter
from controller.operator import OperatorState
from controller.telemetry import TelemetryStore
from controller.tracker import FleetTracker
from drivers.base import MinerState

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "hashgov.example.toml"


class Rig:
    def __init__(self) -> None:
        self.clock = ManualClock()
        self.config: HashgovConfig = load_config(EXAMPLE)
        self.store = TelemetryStore(self.config.site, self.config.mqtt.streams)
        self.tracker = FleetTracker(self.config)
        self.actuator = Actuator(
            {}, self.clock, max_concurrency=4, on_result=lambda r: None, dry_run=True
        )
        self.operator = OperatorState()
        self.decisions: list[Decision] = []
        self.loop = ControlLoop(
            self.config,
            self.store,
            self.tracker,
            self.actuator,
            self.clock,
            operator=lambda: self.operator,
            on_decision=self.decisions.append,
        )
        for miner_id in self.tracker.miner_ids:
            self.tracker.observe(
                MinerState(
                    miner_id,
                    True,
                    self.clock.monotonic(),
                    is_mining=True,
                    watts=3000.0,
                    power_limit_watts=3000.0,
                )
            )

    def publish(self, stream: str, payload: bytes) -> None:
        item = self.store.ingest(stream, payload, self.clock.wall(), self.clock.monotonic())
        self.loop.on_telemetry(item)

    def surplus(self, kw: float) -> None:
        self.publish("surplus", f'{{"surplus_kw": {kw}, "ts": {self.clock.wall()}}}'.encode())

    def meter(self, kw: float) -> None:
        self.publish("meter", f'{{"power_kw": {kw}, "ts": {self.clock.wall()}}}'.encode())


@pytest.fixture
def rig() -> Rig:
    r = Rig()
    r.publish("ai_datacentre", b"0")
    return r


def test_budget_drop_wakes_at_once_rise_does_not(rig: Rig) -> None:
    rig.surplus(30)
    rig.loop.iterate()
    rig.loop._wake.clear()
    rig.clock.advance(0.5)
    rig.surplus(35)
    assert not rig.loop._wake.is_set(), "a rise waits for the period"
    rig.clock.advance(0.5)
    rig.surplus(10)
    assert rig.loop._wake.is_set() and rig.loop._urgent, "a drop is acted on at once"


def test_unexplained_meter_draw_is_shed_and_released_slowly(rig: Rig) -> None:
    rig.surplus(30)
    first = rig.loop.iterate()
    assert first.meter_watts is None and first.effective_budget_watts == first.capped_budget_watts
    model_watts = first.model_watts
    rig.meter(model_watts / 1000 + 4.0)  # 4 kW the fleet model does not explain
    second = rig.loop.iterate()
    assert second.meter_gap_watts == pytest.approx(4000.0)
    assert second.effective_budget_watts == pytest.approx(second.capped_budget_watts - 4000.0)
    assert second.plan.planned_watts <= second.effective_budget_watts
    rig.clock.advance(rig.loop.config.site.meter_release_seconds / 2)
    rig.surplus(30)
    rig.meter(model_watts / 1000)  # the gap is gone: the correction decays, not vanishes
    third = rig.loop.iterate()
    assert 1500.0 < third.meter_correction_watts < 2500.0


class Stopping:
    """Stands in for the actuator's one figure the meter wake-up reads."""

    def __init__(self, watts: float) -> None:
        self.stopping_watts = watts


def test_meter_over_budget_wakes_a_round_unless_our_stops_under_way_cover_it(rig: Rig) -> None:
    rig.surplus(30)
    first = rig.loop.iterate()
    rig.loop._wake.clear()
    rig.loop._urgent = False
    over_kw = first.effective_budget_watts / 1000 + 5.0
    rig.clock.advance(0.1)
    rig.meter(over_kw)
    assert rig.loop._wake.is_set(), "nothing under way: act"
    assert not rig.loop._urgent, "paced (ROUND_PACE), not at once: a drop is what is urgent"
    rig.loop._wake.clear()
    rig.loop._actuator = Stopping(6000.0)  # type: ignore[assignment]
    rig.clock.advance(0.1)
    rig.meter(over_kw)
    assert not rig.loop._wake.is_set(), "the stops already sent take off this excess"
    rig.loop._actuator = Stopping(3000.0)  # type: ignore[assignment]
    rig.clock.advance(0.1)
    rig.meter(over_kw)
    assert rig.loop._wake.is_set(), "2 kW more than they cover: act"


def test_meter_rounds_are_paced_by_how_long_a_round_takes(rig: Rig) -> None:
    """A 10,000-miner round takes ~0.35 s: meter samples at 5-10 Hz must not keep
    the loop planning instead of carrying the commands out."""
    import dataclasses

    from controller.control import MIN_ITERATION_SPACING_SECONDS, ROUND_PACE

    rig.surplus(30)
    quick = rig.loop.iterate()
    rig.loop.last = dataclasses.replace(quick, duration_seconds=0.001)
    assert rig.loop._pace_seconds() == MIN_ITERATION_SPACING_SECONDS
    rig.loop.last = dataclasses.replace(quick, duration_seconds=0.35)
    assert rig.loop._pace_seconds() == pytest.approx(ROUND_PACE * 0.35)


def test_operator_cap_and_pause(rig: Rig) -> None:
    rig.surplus(30)
    rig.operator = OperatorState(cap_watts=5000.0)
    capped = rig.loop.iterate()
    assert capped.capped_budget_watts == 5000.0 and capped.plan.planned_watts <= 5000.0
    rig.operator = OperatorState(paused=True)
    rig.clock.advance(60)
    rig.surplus(30)
    paused = rig.loop.iterate()
    assert all(w.sheds for w in paused.commands), "paused: only sheds are sent"


def test_stale_surplus_falls_to_fail_safe_after_grace(rig: Rig) -> None:
    rig.surplus(30)
    assert not rig.loop.iterate().budget.fail_safe
    site = rig.config.site
    rig.clock.advance(site.stale_after_seconds + 0.5)
    grace = rig.loop.iterate()
    assert grace.budget.state == "grace"
    rig.clock.advance(site.grace_seconds)
    failed = rig.loop.iterate()
    assert failed.budget.fail_safe and failed.capped_budget_watts == site.fail_safe_budget_watts
    assert failed.plan.planned_watts <= max(failed.capped_budget_watts, failed.plan.planned_watts)


def test_meter_filter_releases_over_its_configured_time() -> None:
    f = MeterFilter(release_seconds=4.0)
    assert f.update(2000.0, 0.0) == 2000.0
    assert f.update(None, 1.0) == pytest.approx(1500.0)
    assert f.update(None, 5.0) == 0.0


def test_meter_filter_attacks_fast() -> None:
    f = MeterFilter()
    assert f.update(None, 0.0) == 0.0
    assert f.update(3000.0, 1.0) == 3000.0
    assert f.update(-500.0, 1.0) == 3000.0
    assert f.update(5000.0, 2.0) == 5000.0


def spy_on_fast_shed(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The budgets of the plans the control loop hands to the fast shed."""
    import controller.control as control

    consulted: list[float] = []
    real = control.fast_shed

    def spy(the_plan: Any, fleet: Any, deadline: float, **kwargs: Any) -> Any:
        consulted.append(the_plan.budget_watts)
        return real(the_plan, fleet, deadline, **kwargs)

    monkeypatch.setattr(control, "fast_shed", spy)
    return consulted


def test_fast_shed_runs_only_for_drops_past_the_safety_margin(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A drop the margin covers cannot put the draw over the grant (the fleet was
    planned at most at the old budget, the grant is the new budget plus the margin),
    so the fast shed is not consulted. Drops add up while earlier cuts may still be
    settling (3 power time constants, 9 s in the example)."""
    consulted = spy_on_fast_shed(monkeypatch)
    margin_kw = rig.config.site.safety_margin_kw
    assert margin_kw > 0

    def round_at(surplus_kw: float, after_seconds: float = 0.5) -> int:
        rig.clock.advance(after_seconds)
        rig.surplus(surplus_kw)
        rig.loop.iterate()
        return len(consulted)

    assert round_at(30.0) == 0
    assert round_at(30.0 - 0.6 * margin_kw) == 0, "within the margin: not consulted"
    assert round_at(30.0 - 1.2 * margin_kw) == 1, "two drops 1 s apart add up past it"
    assert round_at(30.0 - 1.2 * margin_kw, after_seconds=60.0) == 1, "no drop: no shed"
    assert round_at(30.0 - 1.8 * margin_kw) == 1, "cuts of a minute ago have settled"
    assert round_at(30.0 - 3.0 * margin_kw) == 2, "past the margin at once"


def test_the_first_round_sheds_fast_when_the_fleet_starts_over_the_grant(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At a start or restart the draw was never planned by us: a fleet found over
    the grant is met like a drop, not by slow cuts alone."""
    consulted = spy_on_fast_shed(monkeypatch)
    fleet_kw = rig.loop._tracker.fleet_state(rig.clock.monotonic()).assumed_watts() / 1000
    margin_kw = rig.config.site.safety_margin_kw
    rig.surplus(fleet_kw - 2 * margin_kw - 1.0)
    first = rig.loop.iterate()
    assert consulted == [first.plan.budget_watts]
    rig.clock.advance(1.0)
    rig.loop.iterate()
    assert len(consulted) == 1, "later rounds: only on a drop"


def test_a_budget_drop_is_logged_even_when_no_command_is_needed(rig: Rig) -> None:
    """The plan log must show every drop's decision, or the decide latency read
    from it matches a drop to a later round's commands."""
    import dataclasses

    from controller.service import plan_worth_logging

    rig.surplus(30)
    decision = rig.loop.iterate()
    quiet = dataclasses.replace(decision, commands=())
    budget = quiet.effective_budget_watts
    assert plan_worth_logging(dataclasses.replace(quiet, commands=decision.commands or (None,)),  # type: ignore[arg-type]
                              budget)
    assert plan_worth_logging(quiet, budget + 500.0), "the budget fell: logged"
    assert not plan_worth_logging(quiet, budget), "same budget, nothing sent: quiet"
    assert not plan_worth_logging(quiet, budget - 500.0), "a rise with nothing sent: quiet"
    assert not plan_worth_logging(quiet, None), "no previous round to compare with"
