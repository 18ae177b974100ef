"""A perfect-foresight oracle: the most hashes a fleet can mine inside a grant series.

Assumptions (documented in docs/benchmarks.md): the oracle knows the whole
grant series, changes power instantly (no boot time, no ramp, no command
latency), obeys each model's discrete power targets (range/step or profiles)
and its sleep draw, and fills the grant by water-filling on marginal TH per W:
every miner starts asleep; the increments "wake to the lowest target" and
"next target step" are taken greedily in order of TH gained per W added. Since
every built-in hashrate curve is concave, each miner's increments come in
falling TH/W order, so the greedy prefix is the fractional-knapsack optimum
minus at most one increment per model (< 0.1 % of a large fleet). Its figure
is therefore an upper bound on what any controller can do: oracle_ratio ≤ 1
is expected.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from controller.config import ModelConfig


@dataclass(frozen=True, slots=True)
class _Step:
    ratio: float  # TH/s per W
    watts: float
    ths: float
    order: tuple[int, int]  # (miner, step) keeps each miner's steps in order on ties


class Oracle:
    """Precomputes the greedy order once; each budget then costs one bisection."""

    def __init__(self, models: Sequence[ModelConfig]) -> None:
        self.sleep_watts = float(sum(m.sleep_watts for m in models))
        steps: list[_Step] = []
        for i, model in enumerate(models):
            targets = model.targets_watts
            prev_w = float(model.sleep_watts)
            prev_h = 0.0
            for j, target in enumerate(targets):
                h = model.hashrate_ths_at(float(target))
                dw = float(target) - prev_w
                dh = h - prev_h
                if dw > 0:
                    steps.append(_Step(dh / dw, dw, dh, (i, j)))
                prev_w, prev_h = float(target), h
        steps.sort(key=lambda s: (-s.ratio, s.order))
        self._cum_watts: list[float] = [0.0]
        self._cum_ths: list[float] = [0.0]
        for s in steps:
            self._cum_watts.append(self._cum_watts[-1] + s.watts)
            self._cum_ths.append(self._cum_ths[-1] + s.ths)

    def ths_at(self, budget_watts: float) -> float:
        """The most TH/s within budget_watts (0 when even a sleeping fleet is over it)."""
        room = budget_watts - self.sleep_watts
        if room < 0:
            return 0.0
        k = bisect_right(self._cum_watts, room) - 1
        return self._cum_ths[k]

    def planned_watts_at(self, budget_watts: float) -> float:
        room = budget_watts - self.sleep_watts
        if room < 0:
            return self.sleep_watts
        k = bisect_right(self._cum_watts, room) - 1
        return self.sleep_watts + self._cum_watts[k]

    def hashes_ths_s(self, series: Iterable[tuple[float, float]]) -> float:
        """∫ ths_at(budget) dt over (t, budget_watts) samples (left Riemann sums)."""
        total = 0.0
        last: tuple[float, float] | None = None
        for t, budget in series:
            if last is not None:
                total += self.ths_at(last[1]) * max(0.0, t - last[0])
            last = (t, budget)
        return total


# The noise-blind reference picks its draw from this many standard deviations
# below the expected grant (0 to 4 in steps of 0.05): fine enough that the best
# point on the grid is within 0.1 % of the true optimum for Gaussian noise.
BLIND_K_GRID = tuple(i * 0.05 for i in range(81))


@dataclass(frozen=True, slots=True)
class BlindFigures:
    hashes_ths_s: float  # mined while its draw <= the true grant
    utilization: float  # ∫ min(draw, grant) / ∫ grant


def noise_blind(
    oracle: Oracle,
    t: Sequence[float],
    grants_watts: Sequence[float],
    expected_watts: Sequence[float],
    sigma_watts: float,
) -> BlindFigures:
    """The oracle without foresight of the noise: what the best controller could mine
    that knows the profile (levels, ramps, trips) but sees each noise sample too late.

    At every sample it plans the oracle's fill for the draw D that maximises
    TH/s(D) × P(grant ≥ D), the grant being Gaussian around the expected grant with
    ``sigma_watts``; then, like everyone, mines nothing counted while D > the true
    grant. With no noise (sigma 0) it is the oracle. Left Riemann sums, as above.
    """
    hashes = used = granted = 0.0
    for i in range(len(t) - 1):
        dt = max(0.0, t[i + 1] - t[i])
        grant, expected = grants_watts[i], expected_watts[i]
        draw, ths = _blind_choice(oracle, expected, sigma_watts)
        if draw <= grant:
            hashes += ths * dt
        used += min(draw, grant) * dt
        granted += grant * dt
    return BlindFigures(hashes, used / granted if granted > 0 else 0.0)


def _blind_choice(oracle: Oracle, expected_watts: float, sigma_watts: float) -> tuple[float, float]:
    if sigma_watts <= 0:
        return oracle.planned_watts_at(expected_watts), oracle.ths_at(expected_watts)
    best = (oracle.planned_watts_at(0.0), 0.0, 0.0)  # (draw, TH/s, expected TH/s)
    for k in BLIND_K_GRID:
        budget = expected_watts - k * sigma_watts
        draw = oracle.planned_watts_at(budget)
        ths = oracle.ths_at(budget)
        p_within = 0.5 * math.erfc((draw - expected_watts) / (sigma_watts * math.sqrt(2.0)))
        if ths * p_within > best[2]:
            best = (draw, ths, ths * p_within)
    return best[0], best[1]
