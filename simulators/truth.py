"""Ground truth for simulated runs: integrate true draw against the plant's true grant.

Shared by `hashgov demo` and `hashgov bench scenario`. Pure: time comes in as
arguments (any unit, as long as it is the same for every call; the scenario
runner passes simulated seconds).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from simulators.plant.profile import PlantSample


@dataclass(frozen=True)
class WaveProfile:
    """A plant day compressed to minutes: a slow wave, noise, and one trip."""

    low_kw: float
    high_kw: float
    period_seconds: float = 240.0
    trip_at_seconds: float = 150.0
    trip_for_seconds: float = 25.0
    noise_kw: float = 0.0
    other_load_kw: float = 0.0
    name: str = "demo-wave"

    def surplus_kw_at(self, t_seconds: float) -> float:
        if (
            self.trip_at_seconds
            <= t_seconds % (self.period_seconds * 2)
            < self.trip_at_seconds + self.trip_for_seconds
        ):
            return self.low_kw * 0.25  # the plant trips: surplus collapses in one step
        phase = 2 * math.pi * t_seconds / self.period_seconds
        wave = self.low_kw + (self.high_kw - self.low_kw) * (0.5 - 0.5 * math.cos(phase))
        jitter = self.noise_kw * math.sin(t_seconds * 1.7) * math.sin(t_seconds * 0.31)
        return max(0.0, wave + jitter)

    def value_at(self, t_seconds: float) -> PlantSample:
        surplus = self.surplus_kw_at(t_seconds)
        return PlantSample(surplus, 1_000.0 + surplus, 1_000.0, self.other_load_kw)


@dataclass
class TruthMeter:
    """Integrates true draw (and hashrate) against the plant's true grant.

    Left Riemann sums: the values given at ``t`` hold until the next sample.
    ``hashes_ths_s`` counts hashrate only while draw ≤ grant (a second over
    the grant mines nothing that counts).
    """

    budget_ws: float = 0.0
    used_ws: float = 0.0
    violation_ws: float = 0.0
    hashes_ths_s: float = 0.0
    longest_violation_s: float = 0.0
    elapsed_s: float = 0.0
    tolerance_watts: float = 0.0
    _violation_since: float | None = None
    _last: tuple[float, float, float, float] | None = None  # t, draw, budget, ths
    history: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=60))

    def sample(self, t: float, draw_watts: float, budget_watts: float, ths: float = 0.0) -> None:
        if self._last is not None:
            t0, draw0, budget0, ths0 = self._last
            dt = max(0.0, t - t0)
            self.elapsed_s += dt
            self.budget_ws += budget0 * dt
            self.used_ws += min(draw0, budget0) * dt
            self.violation_ws += max(0.0, draw0 - budget0) * dt
            if draw0 <= budget0 + self.tolerance_watts:
                self.hashes_ths_s += ths0 * dt
        self._last = (t, draw_watts, budget_watts, ths)
        if draw_watts > budget_watts + self.tolerance_watts:
            if self._violation_since is None:
                self._violation_since = t
            self.longest_violation_s = max(self.longest_violation_s, t - self._violation_since)
        elif self._violation_since is not None:
            # over from the first bad sample until this good one (sample resolution)
            self.longest_violation_s = max(self.longest_violation_s, t - self._violation_since)
            self._violation_since = None
        self.history.append((budget_watts, draw_watts))

    @property
    def utilization(self) -> float:
        return self.used_ws / self.budget_ws if self.budget_ws > 0 else 1.0
