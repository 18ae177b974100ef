"""Plant profiles: what the plant reports at simulated time t (pure, deterministic).

``profile.value_at(t_seconds) -> PlantSample``. Besides the figures a sample
carries behaviour flags for the publisher: ``publish`` (False during a
dropout), ``lag_seconds`` (timestamps that lag behind the wall clock) and
``garbage`` (publish a broken payload of that kind instead of the figures).
"""

from __future__ import annotations

import csv
import math
import random
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, Protocol

GarbageKind = Literal["nan", "string", "negative", "huge", "bad_json"]
GARBAGE_KINDS: tuple[GarbageKind, ...] = ("nan", "string", "negative", "huge", "bad_json")
# the telemetry rejection reason each kind of garbage must produce
GARBAGE_REASON: dict[GarbageKind, str] = {
    "nan": "nan",
    "string": "not_a_number",
    "negative": "negative",
    "huge": "implausible",
    "bad_json": "bad_json",
}


@dataclass(frozen=True, slots=True)
class PlantSample:
    surplus_kw: float
    plant_output_kw: float
    plant_demand_kw: float
    other_load_kw: float = 0.0
    publish: bool = True
    lag_seconds: float = 0.0
    garbage: GarbageKind | None = None


class Profile(Protocol):
    @property
    def name(self) -> str: ...

    def value_at(self, t_seconds: float) -> PlantSample: ...


def _sample(surplus_kw: float, demand_kw: float, other_kw: float) -> PlantSample:
    surplus = max(0.0, surplus_kw)
    return PlantSample(
        surplus_kw=surplus,
        plant_output_kw=demand_kw + surplus,
        plant_demand_kw=demand_kw,
        other_load_kw=max(0.0, other_kw),
    )


@dataclass(frozen=True, slots=True)
class Steady:
    surplus_kw: float
    other_load_kw: float = 0.0
    demand_kw: float = 1_000.0
    name: str = "steady"

    def value_at(self, t_seconds: float) -> PlantSample:
        return _sample(self.surplus_kw, self.demand_kw, self.other_load_kw)


@dataclass(frozen=True, slots=True)
class Steps:
    """Hold each level for step_seconds, then the next; repeats."""

    levels_kw: tuple[float, ...]
    step_seconds: float
    other_load_kw: float = 0.0
    demand_kw: float = 1_000.0
    name: str = "steps"

    def value_at(self, t_seconds: float) -> PlantSample:
        index = int(max(0.0, t_seconds) // self.step_seconds) % len(self.levels_kw)
        return _sample(self.levels_kw[index], self.demand_kw, self.other_load_kw)


@dataclass(frozen=True, slots=True)
class Ramps:
    """Triangle wave between low and high with the given period."""

    low_kw: float
    high_kw: float
    period_seconds: float
    other_load_kw: float = 0.0
    demand_kw: float = 1_000.0
    name: str = "ramps"

    def value_at(self, t_seconds: float) -> PlantSample:
        phase = (max(0.0, t_seconds) % self.period_seconds) / self.period_seconds
        frac = 2 * phase if phase < 0.5 else 2 * (1 - phase)
        return _sample(
            self.low_kw + (self.high_kw - self.low_kw) * frac, self.demand_kw, self.other_load_kw
        )


@dataclass(frozen=True, slots=True)
class Noise:
    """Gaussian noise around a base, the same for the same (seed, t to 0.1 s)."""

    base_kw: float
    sigma_kw: float
    seed: int = 1
    other_load_kw: float = 0.0
    demand_kw: float = 1_000.0
    name: str = "noise"

    def value_at(self, t_seconds: float) -> PlantSample:
        rng = random.Random(self.seed * 1_000_003 + round(t_seconds * 10))
        return _sample(self.base_kw + rng.gauss(0.0, self.sigma_kw), self.demand_kw,
                       self.other_load_kw)


@dataclass(frozen=True, slots=True)
class Trip:
    """Surplus falls to zero at trip_at_seconds (and comes back at recover_at_seconds)."""

    surplus_kw: float
    trip_at_seconds: float
    recover_at_seconds: float | None = None
    other_load_kw: float = 0.0
    demand_kw: float = 1_000.0
    name: str = "trip"

    def value_at(self, t_seconds: float) -> PlantSample:
        tripped = t_seconds >= self.trip_at_seconds and (
            self.recover_at_seconds is None or t_seconds < self.recover_at_seconds
        )
        return _sample(0.0 if tripped else self.surplus_kw, self.demand_kw, self.other_load_kw)


@dataclass(frozen=True, slots=True)
class Dropout:
    """Nothing is published between start and end (the plant's link is down)."""

    inner: Profile
    start_seconds: float
    end_seconds: float
    name: str = "dropout"

    def value_at(self, t_seconds: float) -> PlantSample:
        sample = self.inner.value_at(t_seconds)
        if self.start_seconds <= t_seconds < self.end_seconds:
            return replace(sample, publish=False)
        return sample


@dataclass(frozen=True, slots=True)
class Stale:
    """From start on, timestamps lag the wall clock by lag_seconds."""

    inner: Profile
    lag_seconds: float
    start_seconds: float = 0.0
    name: str = "stale"

    def value_at(self, t_seconds: float) -> PlantSample:
        sample = self.inner.value_at(t_seconds)
        if t_seconds >= self.start_seconds:
            return replace(sample, lag_seconds=self.lag_seconds)
        return sample


@dataclass(frozen=True, slots=True)
class Garbage:
    """A fraction of samples (chosen by seed and t to 0.1 s) are garbage of a random kind."""

    inner: Profile
    fraction: float = 0.5
    seed: int = 7
    kinds: tuple[GarbageKind, ...] = GARBAGE_KINDS
    name: str = "garbage"

    def value_at(self, t_seconds: float) -> PlantSample:
        sample = self.inner.value_at(t_seconds)
        rng = random.Random(self.seed * 7_919 + round(t_seconds * 10))
        if rng.random() < self.fraction:
            return replace(sample, garbage=rng.choice(self.kinds))
        return sample


@dataclass(frozen=True, slots=True)
class CsvReplay:
    """Rows of t_seconds,surplus_kw[,other_load_kw]; each row holds until the next."""

    times_seconds: tuple[float, ...]
    surplus_kw: tuple[float, ...]
    other_load_kw: tuple[float, ...]
    demand_kw: float = 1_000.0
    name: str = "csv"

    @classmethod
    def from_file(cls, path: Path) -> CsvReplay:
        times: list[float] = []
        surplus: list[float] = []
        other: list[float] = []
        with path.open(newline="") as fh:
            for lineno, row in enumerate(csv.reader(fh), start=1):
                cells = [c.strip() for c in row]
                if not cells or not cells[0] or cells[0].startswith("#"):
                    continue
                if lineno == 1 and not _is_float(cells[0]):
                    continue  # header
                if len(cells) < 2:
                    raise ValueError(f"{path}:{lineno}: need t_seconds,surplus_kw[,other_load_kw]")
                try:
                    values = [float(c) for c in cells[:3]]
                except ValueError:
                    raise ValueError(f"{path}:{lineno}: not a number in {row!r}") from None
                if not all(math.isfinite(v) for v in values):
                    raise ValueError(f"{path}:{lineno}: values must be finite")
                if times and values[0] < times[-1]:
                    raise ValueError(f"{path}:{lineno}: t_seconds must not decrease")
                times.append(values[0])
                surplus.append(values[1])
                other.append(values[2] if len(values) > 2 else 0.0)
        if not times:
            raise ValueError(f"{path}: no rows")
        return cls(tuple(times), tuple(surplus), tuple(other), name=f"csv:{path.name}")

    def value_at(self, t_seconds: float) -> PlantSample:
        index = max(0, bisect_right(self.times_seconds, t_seconds) - 1)
        return _sample(self.surplus_kw[index], self.demand_kw, self.other_load_kw[index])


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _builtins(cap_kw: float) -> dict[str, Callable[[], Profile]]:
    """Built-in profiles scaled to a site's grant cap."""
    base = 0.8 * cap_kw
    return {
        "steady": lambda: Steady(base),
        "steps": lambda: Steps((base, 0.4 * cap_kw, 0.95 * cap_kw, 0.6 * cap_kw), 30.0),
        "ramps": lambda: Ramps(0.2 * cap_kw, cap_kw, 120.0),
        "noise": lambda: Noise(base, 0.05 * cap_kw, seed=1),
        "trip": lambda: Trip(base, trip_at_seconds=30.0, recover_at_seconds=90.0),
        "dropout": lambda: Dropout(Steady(base), 20.0, 50.0),
        "stale": lambda: Stale(Steady(base), lag_seconds=3_600.0, start_seconds=20.0),
        "garbage": lambda: Garbage(Steady(base), fraction=0.5, seed=7),
    }


BUILTIN_PROFILES: tuple[str, ...] = tuple(_builtins(1.0))


def load_profile(name_or_file: str, cap_kw: float) -> Profile:
    """A built-in profile by name (scaled to cap_kw) or a CSV file; ValueError otherwise."""
    table = _builtins(cap_kw)
    if name_or_file in table:
        return table[name_or_file]()
    path = Path(name_or_file)
    if path.suffix.lower() == ".csv" or path.exists():
        if not path.is_file():
            raise ValueError(f"profile file {str(path)!r} not found")
        return CsvReplay.from_file(path)
    raise ValueError(
        f"unknown profile {name_or_file!r}: use one of {', '.join(BUILTIN_PROFILES)} or a .csv file"
    )
