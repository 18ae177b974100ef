"""The power budget the policy may plan against, and the site-meter check.

    available = min(grant cap, plant surplus) − Σ other loads − safety margin,  floored at 0

``surplus`` is the surplus stream, or plant_output − plant_demand when the
plant publishes those two instead (then its age is the age of the *older* of
the two). Timeline of a surplus that stops arriving (age by monotonic receive
time):

- age ≤ stale_after_seconds: ``fresh`` — the formula above.
- stale_after < age ≤ stale_after + grace_seconds: ``grace`` — the last budget
  is held, never raised (pass ``previous`` to hold it exactly).
- later, or no surplus ever: ``fail_safe`` — ``fail_safe_budget_kw`` (and never
  above the previous budget).

Other loads are counted conservatively: each other-load stream counts at its
latest accepted value for as long as it is silent (a stale other load is never
lowered or dropped); an other-load stream that has never reported puts the
budget into fail-safe, because the load it measures is unknown.

Everything here is pure: no clock reads, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from controller.config import SiteConfig
from controller.telemetry import TelemetryStore

BudgetState = Literal["fresh", "grace", "fail_safe"]


@dataclass(frozen=True, slots=True)
class Budget:
    watts: float
    fail_safe: bool
    state: BudgetState
    reason: str
    surplus_watts: float | None
    other_loads_watts: float
    cap_watts: float
    surplus_age_seconds: float | None


@dataclass(frozen=True, slots=True)
class MeterCheck:
    effective_budget_watts: float
    gap_watts: float  # meter − model: > 0 means draw the fleet model does not explain
    over_budget: bool  # the meter shows more draw than the budget allows


def _surplus(store: TelemetryStore, now_mono: float) -> tuple[float | None, float | None, str]:
    """(surplus watts, age seconds, source description); None when there is none yet."""
    if store.streams_of("surplus"):
        reading = store.latest("surplus")
        if reading is None:
            return None, None, "no surplus reading yet"
        return reading.watts, store.age_seconds(reading.stream, now_mono), f"surplus {reading.stream}"
    output = store.latest("plant_output")
    demand = store.latest("plant_demand")
    if output is None or demand is None:
        missing = "plant_output" if output is None else "plant_demand"
        return None, None, f"no {missing} reading yet"
    age_out = store.age_seconds(output.stream, now_mono) or 0.0
    age_dem = store.age_seconds(demand.stream, now_mono) or 0.0
    return (
        max(0.0, output.watts - demand.watts),
        max(age_out, age_dem),
        f"plant_output {output.stream} − plant_demand {demand.stream}",
    )


def _other_loads(store: TelemetryStore) -> tuple[float, list[str]]:
    total = 0.0
    missing: list[str] = []
    for name, reading in store.readings("other_load").items():
        if reading is None:
            missing.append(name)
        else:
            total += reading.watts
    return total, missing


def _fail_safe(
    site: SiteConfig,
    reason: str,
    surplus_watts: float | None,
    other_watts: float,
    age_seconds: float | None,
    previous: Budget | None,
) -> Budget:
    watts = min(site.fail_safe_budget_watts, site.grant_cap_watts)
    if previous is not None:
        watts = min(watts, previous.watts)  # falling to fail-safe never raises the budget
    return Budget(
        watts=watts,
        fail_safe=True,
        state="fail_safe",
        reason=reason,
        surplus_watts=surplus_watts,
        other_loads_watts=other_watts,
        cap_watts=site.grant_cap_watts,
        surplus_age_seconds=age_seconds,
    )


def compute_budget(
    site: SiteConfig,
    store: TelemetryStore,
    now_mono: float,
    *,
    previous: Budget | None = None,
) -> Budget:
    """The budget at ``now_mono``. Pass the previous tick's Budget as ``previous``
    so that grace holds it exactly (without it, grace re-computes from the last
    readings, which is the same unless an other load fell meanwhile)."""
    cap = site.grant_cap_watts
    surplus_watts, age, source = _surplus(store, now_mono)
    other_watts, missing = _other_loads(store)
    if surplus_watts is None or age is None:
        return _fail_safe(site, source, None, other_watts, None, previous)
    if missing:
        return _fail_safe(
            site,
            f"other load never reported: {', '.join(missing)}",
            surplus_watts,
            other_watts,
            age,
            previous,
        )
    available = max(0.0, min(cap, surplus_watts) - other_watts - site.safety_margin_watts)
    if age <= site.stale_after_seconds:
        return Budget(
            watts=available,
            fail_safe=False,
            state="fresh",
            reason=f"{source}, {age:.1f} s old",
            surplus_watts=surplus_watts,
            other_loads_watts=other_watts,
            cap_watts=cap,
            surplus_age_seconds=age,
        )
    if age <= site.stale_after_seconds + site.grace_seconds:
        held = available if previous is None else min(available, previous.watts)
        return Budget(
            watts=held,
            fail_safe=False,
            state="grace",
            reason=(
                f"{source} stale ({age:.1f} s > {site.stale_after_seconds:g} s); holding for up "
                f"to {site.grace_seconds:g} s"
            ),
            surplus_watts=surplus_watts,
            other_loads_watts=other_watts,
            cap_watts=cap,
            surplus_age_seconds=age,
        )
    return _fail_safe(
        site,
        f"{source} stale for {age:.1f} s (> {site.stale_after_seconds:g} s + grace "
        f"{site.grace_seconds:g} s)",
        surplus_watts,
        other_watts,
        age,
        previous,
    )


class BudgetKeeper:
    """Remembers the previous budget so that grace and fail-safe never raise it."""

    def __init__(self, site: SiteConfig) -> None:
        self.site = site
        self.last: Budget | None = None

    def update(self, store: TelemetryStore, now_mono: float) -> Budget:
        budget = compute_budget(self.site, store, now_mono, previous=self.last)
        self.last = budget
        return budget


def meter_correction(budget_watts: float, meter_watts: float, model_watts: float) -> MeterCheck:
    """Shed for draw the fleet model does not explain; never raise the budget for the meter.

    ``gap = meter − model``. A positive gap (the site draws more than the model
    explains) is subtracted from the budget the policy plans against, so the
    policy sheds that much more now. A negative gap changes nothing.
    """
    gap = meter_watts - model_watts
    effective = max(0.0, budget_watts - max(0.0, gap))
    return MeterCheck(
        effective_budget_watts=min(effective, budget_watts),
        gap_watts=gap,
        over_budget=meter_watts > budget_watts,
    )
