"""Wall-clock jumps (NTP steps) at unit level: TelemetryStore + BudgetKeeper +
ControlLoop on a ManualClock, against a twin that sees no jump.

Properties: a step backwards or forwards never raises the budget (compared with
the twin, step by step); it never freezes freshness (staleness follows monotonic
time whatever the wall clock does); the control loop stamps its decisions with
monotonic time; plant timestamps are checked against our clock, not trusted
(their rejections are counted).
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_control_loop import Rig

step = st.one_of(
    st.tuples(st.just("advance"), st.floats(min_value=0.01, max_value=6.0)),
    st.tuples(st.just("jump"), st.sampled_from([-86_400.0, -3_600.0, -30.0, -6.0, -1.0,
                                                1.0, 6.0, 30.0, 3_600.0, 86_400.0])),
    st.tuples(st.just("surplus"), st.floats(min_value=0.0, max_value=60.0)),
    st.tuples(st.just("silence"), st.floats(min_value=0.0, max_value=0.0)),
)


def _make() -> Rig:
    rig = Rig()
    rig.publish("ai_datacentre", b"0")
    return rig


@settings(max_examples=80)
@given(st.lists(step, min_size=1, max_size=40))
def test_wall_clock_steps_never_raise_the_budget_nor_freeze_freshness(
    steps: list[tuple[str, float]],
) -> None:
    jumped, twin = _make(), _make()
    site = jumped.config.site
    last_accepted_mono: float | None = None
    prev = 0.0
    for kind, value in steps:
        if kind == "advance":
            jumped.clock.advance(value)
            twin.clock.advance(value)
        elif kind == "jump":
            jumped.clock.jump_wall(value)  # our clock steps; the plant's does not
        elif kind == "surplus":
            plant_ts = twin.clock.wall()  # the plant stamps with the true time
            payload = f'{{"surplus_kw": {value}, "ts": {plant_ts}}}'.encode()
            before = sum(jumped.store.rejected_counts.values())
            item = jumped.store.ingest("surplus", payload, jumped.clock.wall(),
                                       jumped.clock.monotonic())
            jumped.loop.on_telemetry(item)
            twin.publish("surplus", payload)
            if hasattr(item, "reason"):
                assert sum(jumped.store.rejected_counts.values()) == before + 1
                assert item.reason in ("future_timestamp", "stale", "out_of_order")  # type: ignore[union-attr]
            else:
                last_accepted_mono = jumped.clock.monotonic()
        a = jumped.loop.iterate()
        b = twin.loop.iterate()
        assert a.at_seconds == jumped.clock.monotonic(), "control runs on monotonic time"
        # never raised by a step: any rise must be one the un-jumped twin also makes.
        # (It may HOLD above the twin: after a step back, a plant's drop arrives with a
        # "future" timestamp and is rejected, so the previous budget is held until
        # stale + grace -> fail-safe; see docs/reliability.md.)
        if a.budget.watts > prev + 1e-9:
            assert a.budget.watts <= b.budget.watts + 1e-9, (kind, value, a.budget, b.budget)
        prev = a.budget.watts
        assert a.effective_budget_watts <= a.capped_budget_watts <= a.budget.watts + 1e-9
        # freshness follows monotonic time: no accepted sample for stale+grace -> fail-safe
        now = jumped.clock.monotonic()
        if last_accepted_mono is None or now - last_accepted_mono > (
            site.stale_after_seconds + site.grace_seconds
        ):
            if last_accepted_mono is not None:
                assert a.budget.fail_safe, (now - last_accepted_mono, a.budget)
        elif now - last_accepted_mono <= site.stale_after_seconds:
            assert a.budget.state == "fresh"


def test_ntp_step_back_rejects_plant_samples_as_future_and_fails_safe_on_time() -> None:
    rig = _make()
    rig.surplus(30)
    assert rig.loop.iterate().budget.state == "fresh"
    plant_wall = rig.clock.wall()
    rig.clock.jump_wall(-3_600.0)  # our clock goes back an hour
    site = rig.config.site
    t = 0.0
    while t <= site.stale_after_seconds + site.grace_seconds + 1:
        rig.clock.advance(1.0)
        t += 1.0
        plant_wall += 1.0
        item = rig.store.ingest("surplus", f'{{"surplus_kw": 90, "ts": {plant_wall}}}'.encode(),
                                rig.clock.wall(), rig.clock.monotonic())
        assert getattr(item, "reason", None) == "future_timestamp"
        d = rig.loop.iterate()
        assert d.budget.watts <= 30_000 - site.safety_margin_watts + 1e-9, "never raised"
    assert d.budget.fail_safe, "freshness did not freeze: stale + grace later, fail-safe"
    assert rig.store.rejected_counts[("surplus", "future_timestamp")] >= site.stale_after_seconds


def test_ntp_step_forward_makes_plant_samples_stale_not_fresh() -> None:
    rig = _make()
    rig.surplus(30)
    rig.loop.iterate()
    rig.clock.jump_wall(+3_600.0)
    rig.clock.advance(1.0)
    plant_ts = rig.clock.wall() - 3_600.0
    item = rig.store.ingest("surplus", f'{{"surplus_kw": 90, "ts": {plant_ts}}}'.encode(),
                            rig.clock.wall(), rig.clock.monotonic())
    assert getattr(item, "reason", None) == "stale"
    assert rig.loop.iterate().budget.watts <= 30_000
