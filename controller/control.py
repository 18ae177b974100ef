"""The control loop: budget → fleet view → plan → commands, on a period and on
every budget drop.

One iteration is synchronous and cheap (the policy is pure); actuation runs
in the background (controller.actuator), so a slow miner never delays the next
decision. A budget drop wakes the loop at once; rises wait for the period (the
policy's ramp and hysteresis pace them anyway).
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from controller.actuator import Actuator, MinerCommands, commands_for
from controller.budget import Budget, BudgetKeeper, compute_budget, meter_correction
from controller.clock import Clock
from controller.config import HashgovConfig
from controller.fleet import FleetState
from controller.operator import OperatorState
from controller.policy import Plan, plan
from controller.policy_shed import fast_shed
from controller.telemetry import Reading, Rejection, TelemetryStore
from controller.tracker import FleetTracker

log = structlog.get_logger("hashgov.control")

# An unexplained meter excess is applied at once and released over
# site.meter_release_seconds (MeterFilter), so a miner that under-reports keeps the
# fleet shed instead of oscillating.
GAP_LOG_INTERVAL_SECONDS = 60.0
# Non-urgent wake-ups (the meter over the budget) are spaced at least this far apart,
MIN_ITERATION_SPACING_SECONDS = 0.2
# and start no sooner than this many times the last round's own duration after it:
# at 10,000 miners a round takes ~0.35 s, and a meter at 5-10 Hz over the budget
# would otherwise keep the loop planning, starving the commands that shed.
ROUND_PACE = 3.0
# a cut has settled (to 5 %) after this many power time constants
SETTLE_TIME_CONSTANTS = 3.0
# rounds remembered for the fast shed's "what may the fleet still draw" (bounded)
RECENT_BUDGETS_KEPT = 256


class MeterFilter:
    """Fast attack, slow release on the meter-minus-model gap."""

    def __init__(self, release_seconds: float = 60.0) -> None:
        self.correction_watts = 0.0
        self.release_seconds = release_seconds  # a correction decays to 0 over this long
        self._at: float | None = None

    def update(self, gap_watts: float | None, now_seconds: float) -> float:
        dt = 0.0 if self._at is None else max(0.0, now_seconds - self._at)
        self._at = now_seconds
        decayed = self.correction_watts * max(0.0, 1.0 - dt / self.release_seconds)
        self.correction_watts = max(decayed, gap_watts or 0.0, 0.0)
        return self.correction_watts


@dataclass(frozen=True, slots=True)
class Decision:
    """One iteration's figures, for metrics, status and logs."""

    at_seconds: float
    budget: Budget
    operator_cap_watts: float | None
    capped_budget_watts: float  # the budget after the operator's cap
    effective_budget_watts: float  # what the policy planned against (after the meter check)
    meter_watts: float | None
    model_watts: float
    meter_gap_watts: float | None
    meter_correction_watts: float
    plan: Plan
    fleet: FleetState
    commands: tuple[MinerCommands, ...]
    paused: bool
    duration_seconds: float


class ControlLoop:
    def __init__(
        self,
        config: HashgovConfig,
        store: TelemetryStore,
        tracker: FleetTracker,
        actuator: Actuator,
        clock: Clock,
        *,
        operator: Callable[[], OperatorState],
        on_decision: Callable[[Decision], None],
    ) -> None:
        self.config = config
        self._store = store
        self._tracker = tracker
        self._actuator = actuator
        self._clock = clock
        self._operator = operator
        self._on_decision = on_decision
        self._budgets = BudgetKeeper(config.site)
        self._meter = MeterFilter(config.site.meter_release_seconds)
        self._wake = asyncio.Event()
        self._urgent = False
        self.previous_plan: Plan | None = None
        # (monotonic s, grant after the operator cap) of recent rounds, the last one
        # last: a drop is against the last, what the fleet may still draw the highest
        self._recent_capped: collections.deque[tuple[float, float]] = collections.deque(
            maxlen=RECENT_BUDGETS_KEPT
        )
        self.last: Decision | None = None
        self.fleet_read = asyncio.Event()  # set after the first fleet poll: act only then
        self._last_iteration_at = -float("inf")
        self._gap_logged_at = -float("inf")

    def reconfigure(self, config: HashgovConfig) -> None:
        self.config = config
        self._budgets.site = config.site
        self._meter.release_seconds = config.site.meter_release_seconds

    # ------------------------------------------------------------- wake-ups

    def wake(self, urgent: bool = False) -> None:
        self._urgent = self._urgent or urgent
        self._wake.set()

    def on_telemetry(self, item: Reading | Rejection) -> None:
        """Called for every sample: a drop in budget or a meter above it wakes us now."""
        if not isinstance(item, Reading):
            return
        if self.last is None:
            self.wake(urgent=True)  # the first sample ends the start-up hold
            return
        if item.kind == "site_meter":
            # An excess our own stops under way will take off needs no round: on a
            # trip the meter (10 Hz in the benches) drove ~10 rounds a second, each
            # re-planning cuts that took slots and CPU from the stops. Any other excess
            # (load we do not control, a dip a round's cuts are still settling into)
            # wakes a round, paced: deeper cuts meet it sooner. The period's round runs
            # anyway.
            if item.watts - self._actuator.stopping_watts > self.last.effective_budget_watts:
                self.wake()  # paced: see ROUND_PACE
            return
        budget = compute_budget(
            self.config.site, self._store, self._clock.monotonic(), previous=self._budgets.last
        )
        if budget.watts < self.last.budget.watts:
            self.wake(urgent=True)
        # a rise waits for the period: the ramp paces raises anyway, and a telemetry
        # flood must not turn into a planning flood

    def _next_deadline_seconds(self, now: float) -> float:
        """When the surplus goes stale or grace ends: wake then even if nothing arrives."""
        period = self.config.site.control_period_seconds
        budget = self._budgets.last
        if budget is None or budget.surplus_age_seconds is None:
            return now + period
        site = self.config.site
        age = budget.surplus_age_seconds + (now - (self.last.at_seconds if self.last else now))
        for edge in (site.stale_after_seconds, site.stale_after_seconds + site.grace_seconds):
            if age < edge:
                return min(now + period, now + (edge - age) + 0.01)
        return now + period

    async def run(self, on_alive: Callable[[], object]) -> None:
        await self.fleet_read.wait()
        await self._await_first_telemetry(on_alive)
        while True:
            self.iterate()
            on_alive()
            now = self._clock.monotonic()
            deadline = self._next_deadline_seconds(now)
            await self._wait(deadline)

    async def _await_first_telemetry(self, on_alive: Callable[[], object]) -> None:
        """At start the budget is unknown, not zero: leave the fleet as it is until the
        first surplus sample arrives, or until stale_after + grace have passed (then the
        fail-safe applies, as it would for telemetry that went silent)."""
        site = self.config.site
        deadline = self._clock.monotonic() + site.stale_after_seconds + site.grace_seconds
        while not self._has_surplus() and self._clock.monotonic() < deadline:
            on_alive()  # alive and deliberately holding: keep the watchdog fed
            waiter = asyncio.ensure_future(self._wake.wait())
            sleeper = asyncio.ensure_future(self._clock.sleep(min(1.0, deadline - self._clock.monotonic())))
            try:
                await asyncio.wait({waiter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
                sleeper.cancel()
            self._wake.clear()
        if not self._has_surplus():
            log.warning("no_telemetry_at_start", waited_s=site.stale_after_seconds + site.grace_seconds)

    def _has_surplus(self) -> bool:
        if self._store.streams_of("surplus"):
            return self._store.latest("surplus") is not None
        return self._store.latest("plant_output") is not None and self._store.latest("plant_demand") is not None

    async def _wait(self, deadline_seconds: float) -> None:
        while True:
            now = self._clock.monotonic()
            remaining = deadline_seconds - now
            if remaining <= 0:
                return
            sleeper = asyncio.ensure_future(self._clock.sleep(remaining))
            waker = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeper.cancel()
                waker.cancel()
            if self._wake.is_set():
                self._wake.clear()
                if self._urgent:
                    self._urgent = False
                    return
                spacing = self._last_iteration_at + self._pace_seconds() - self._clock.monotonic()
                if spacing <= 0:
                    return
                deadline_seconds = min(deadline_seconds, self._clock.monotonic() + spacing)
            if sleeper.done():
                return

    def _pace_seconds(self) -> float:
        last_round_seconds = self.last.duration_seconds if self.last is not None else 0.0
        return max(MIN_ITERATION_SPACING_SECONDS, ROUND_PACE * last_round_seconds)

    # ------------------------------------------------------------ iteration

    def iterate(self) -> Decision:
        started = time.perf_counter()
        now = self._clock.monotonic()
        self._last_iteration_at = now
        op = self._operator()
        self._tracker.set_overrides(op.overrides)
        budget = self._budgets.update(self._store, now)
        capped = budget.watts if op.cap_watts is None else min(budget.watts, op.cap_watts)
        fleet = self._tracker.fleet_state(now)
        model_watts = fleet.assumed_watts()
        meter_watts, gap = self._meter_reading(now, model_watts)
        correction = self._meter.update(gap, now)
        self._report_gap(gap, now)
        effective = max(0.0, capped - correction)
        if gap is not None and meter_watts is not None:
            check = meter_correction(capped, meter_watts, model_watts)
            if check.over_budget:
                log.warning(
                    "meter_over_budget",
                    meter_watts=round(meter_watts),
                    budget_watts=round(capped),
                    model_watts=round(model_watts),
                )
        the_plan = plan(fleet, effective, self.config, now, self.previous_plan)
        if self._needs_fast_shed(capped, fleet, now, model_watts):
            # the grant dropped past the margin: cut targets settle slowly, so cut deeper
            # or sleep some miners if that would be too slow for the grant itself. Only
            # on the drop itself (not on meter corrections, not on later rounds, which
            # see the cut miners still settling).
            site = self.config.site
            the_plan = fast_shed(the_plan, fleet, site.shed_deadline_seconds,
                                 allowance_watts=site.safety_margin_watts,
                                 max_batch=self.config.fleet.max_concurrency)
        self._recent_capped.append((now, capped))
        work = commands_for(the_plan, fleet)
        if op.paused:
            work = [w for w in work if w.sheds]  # paused: hold, but the budget still wins
        # the sheds counted as not done yet: raises within this may go before them
        self._actuator.submit(work, headroom_watts=effective - model_watts)
        self.previous_plan = the_plan
        decision = Decision(
            at_seconds=now,
            budget=budget,
            operator_cap_watts=op.cap_watts,
            capped_budget_watts=capped,
            effective_budget_watts=effective,
            meter_watts=meter_watts,
            model_watts=model_watts,
            meter_gap_watts=gap,
            meter_correction_watts=correction,
            plan=the_plan,
            fleet=fleet,
            commands=tuple(work),
            paused=op.paused,
            duration_seconds=time.perf_counter() - started,
        )
        self.last = decision
        self._on_decision(decision)
        return decision

    def _needs_fast_shed(
        self, capped_watts: float, fleet: FleetState, now: float, model_watts: float
    ) -> bool:
        """A drop this round, to below what the fleet may still draw minus the margin
        (on the first round: a fleet drawing more than the budget plus the margin).

        The fleet draws at most the highest budget of the last few settling times
        (rounds' cuts settle within ~3 time constants). The grant is that budget plus
        the safety margin, so a drop the margin covers cannot put the draw over the
        grant, however slowly the plan's cuts settle: no deep cut, no sleep. Without
        this, every noise dip past zero sent hundreds of deep cuts, raised back the
        next round, and the command traffic starved the real sheds."""
        margin_watts = self.config.site.safety_margin_watts
        if not self._recent_capped:
            # the first round: the draw was never planned by us (a start, a restart),
            # so a fleet over the grant is a drop like any other; cuts alone took a
            # 10,000-miner fleet started at full power ~30 s to bring under it
            return model_watts - capped_watts > margin_watts
        last = self._recent_capped[-1][1]
        if capped_watts >= last:
            return False
        if last - capped_watts > margin_watts:
            return True  # the common case, without scanning the fleet's models
        horizon_seconds = SETTLE_TIME_CONSTANTS * max(
            (v.model.power_tau_seconds for v in fleet.miners), default=0.0
        )
        recent_high = max(
            (c for at, c in self._recent_capped if at >= now - horizon_seconds), default=last
        )
        return recent_high - capped_watts > margin_watts

    def _report_gap(self, gap_watts: float | None, now: float) -> None:
        """A meter/model gap above the configured alert level is logged (once a
        minute while it lasts), not hidden: it means a miner under-reports, an
        unknown load, or a wrong meter."""
        alert_watts = self.config.site.meter_gap_alert_kw * 1000.0
        if gap_watts is None or abs(gap_watts) <= alert_watts:
            return
        if now - self._gap_logged_at < GAP_LOG_INTERVAL_SECONDS:
            return
        self._gap_logged_at = now
        log.warning(
            "meter_model_gap",
            gap_watts=round(gap_watts),
            alert_watts=round(alert_watts),
            correction_watts=round(self._meter.correction_watts),
        )

    def _meter_reading(self, now: float, model_watts: float) -> tuple[float | None, float | None]:
        """The fresh site-meter reading and its gap to the fleet model, if there is one."""
        reading = self._store.latest("site_meter")
        if reading is None:
            return None, None
        age = self._store.age_seconds(reading.stream, now)
        if age is None or age > self.config.site.stale_after_seconds:
            return None, None
        if reading.received_mono < self._tracker.last_poll_at_seconds:
            # the meter sample predates the miner reads it would be compared with: during
            # a fast shed it still shows the old draw, and the "gap" would be a phantom
            return reading.watts, None
        explained = model_watts
        if self.config.site.meter_includes_other_loads:
            explained += sum(
                r.watts for r in self._store.readings("other_load").values() if r is not None
            )
        return reading.watts, reading.watts - explained
