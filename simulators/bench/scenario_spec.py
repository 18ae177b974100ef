"""Scenario files: what `hashgov bench scenario` runs (TOML, validated, with built-ins).

Every duration in a scenario file is in SIMULATED seconds; powers are either
kW or, with a ``_frac`` suffix, a fraction of the fleet's nameplate draw (so a
scenario works for any fleet size). See docs/benchmarks.md for the format.
"""

from __future__ import annotations

import dataclasses
import math
import random
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from simulators.bench.scenario_faults import EventError, EventSpec, parse_events
from simulators.plant.profile import (
    CsvReplay,
    Dropout,
    PlantSample,
    Profile,
    Ramps,
    Steady,
    Steps,
    _sample,
)

BUILTIN_SCENARIOS = (
    "smoke", "daily", "trip", "dropout", "flap", "scale",
    # fault scenarios (docs/reliability.md): [[events]] run by simulators/bench/scenario_faults.py
    "broker-restart", "broker-outage", "miner-faults", "kill-restart", "flood", "clock-jump",
)
DEFAULT_MIX = "Antminer S19j Pro:braiins:2,Antminer S19j Pro:luxos:1,Antminer S21:braiins:1,Antminer S19 XP:luxos:1"


class ScenarioError(ValueError):
    """A bad scenario file: says which field, which value, what was expected."""


@dataclass(frozen=True, slots=True)
class FaultSpec:
    fault: str
    share: float  # of the fleet, 0..1 (at least one miner when > 0)
    at_s: float  # simulated seconds after the measurement starts
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ControllerTiming:
    """Controller timing in SIMULATED seconds (the runner divides by the time scale).

    control_period_s and poll_interval_s are REAL seconds: the control loop and a
    fleet poll cost real CPU and network time that no time scale shrinks.
    """

    control_period_s: float = 1.0
    poll_interval_s: float = 2.0
    stale_after_s: float = 60.0
    grace_s: float = 30.0
    min_on_s: float = 300.0
    min_off_s: float = 300.0
    ramp_up_frac_per_s: float = 0.01  # of fleet nameplate per simulated second
    hysteresis_frac: float = 0.002
    safety_margin_frac: float = 0.0
    # not scaled by K: the controller judges it against the models' time constants,
    # which the simulator compresses by K too (only the ratio matters)
    shed_deadline_s: float = 1.0
    max_concurrency: float = 256.0  # fleet.max_concurrency (reads and commands in flight)
    meter_release_s: float = 60.0  # site.meter_release_seconds (÷ K, at least 0.5 s real)
    detail_interval_s: float = 60.0  # REAL: fleet.detail_interval_seconds (monitoring reads)


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    description: str
    duration_s: float  # simulated
    time_scale: float
    profile: dict[str, Any]
    count: int = 50
    mix: str = DEFAULT_MIX
    shards: int = 0  # simulator processes; 0 = automatic (scenario_fleet.auto_shards)
    seed: int = 1
    faults: tuple[FaultSpec, ...] = ()
    timing: ControllerTiming = ControllerTiming()
    publish_hz: float = 5.0  # real publications per second
    sample_hz: float = 20.0  # real truth samples per second
    warmup_real_s: float = 8.0
    baseline: bool = True
    baseline_period_s: float = 60.0  # simulated
    baseline_threshold_frac: float = 0.0
    grant_cap_frac: float = 1.1
    events: tuple[EventSpec, ...] = ()  # site fault events (scenario_faults.py)
    recover_from_s: float | None = None  # recover_s counts from here (default: last event's end)

    @property
    def real_duration_s(self) -> float:
        return self.duration_s / self.time_scale


# ------------------------------------------------------------------ profiles


@dataclass(frozen=True, slots=True)
class DailyProfile:
    """A plant day: night trough, morning ramp, midday plateau, evening ramp, noise, trips.

    Times in simulated seconds from 0 to ``day_s``; levels in kW.
    """

    low_kw: float
    high_kw: float
    noise_kw: float
    trips: tuple[tuple[float, float], ...]  # (start, length) simulated seconds
    trip_kw: float
    seed: int = 1
    day_s: float = 86_400.0
    other_load_kw: float = 0.0
    name: str = "daily"

    def surplus_kw_at(self, t_seconds: float) -> float:
        for start, length in self.trips:
            if start <= t_seconds < start + length:
                return self.trip_kw
        hour = (t_seconds % self.day_s) / self.day_s * 24.0
        # night plateau (0-6 h), ramp up (6-10 h), plateau with a dip (10-17 h), ramp down (17-22 h)
        if hour < 6.0:
            frac = 0.0
        elif hour < 10.0:
            frac = (hour - 6.0) / 4.0
        elif hour < 17.0:
            frac = 1.0 - 0.15 * math.sin(math.pi * (hour - 10.0) / 7.0)
        elif hour < 22.0:
            frac = 1.0 - (hour - 17.0) / 5.0
        else:
            frac = 0.0
        level = self.low_kw + (self.high_kw - self.low_kw) * frac
        # noise: a fresh value every 30 simulated seconds, held (like a dispatcher's updates)
        rng = random.Random(self.seed * 1_000_003 + int(t_seconds // 30.0))
        return max(0.0, level + rng.gauss(0.0, self.noise_kw))

    def value_at(self, t_seconds: float) -> PlantSample:
        return _sample(self.surplus_kw_at(t_seconds), 1_000.0, self.other_load_kw)


def without_noise(profile: Profile) -> tuple[Profile, float]:
    """The profile with its noise taken out, and the noise's standard deviation (kW).

    For the noise-blind reference (scenario_oracle.noise_blind); only the daily
    profile has noise, every other comes back unchanged with 0."""
    if isinstance(profile, DailyProfile):
        return dataclasses.replace(profile, noise_kw=0.0), profile.noise_kw
    return profile, 0.0


def _kw(params: dict[str, Any], key: str, nameplate_kw: float, default: float | None = None) -> float:
    if f"{key}_kw" in params:
        return float(params[f"{key}_kw"])
    if f"{key}_frac" in params:
        return float(params[f"{key}_frac"]) * nameplate_kw
    if default is not None:
        return default * nameplate_kw
    raise ScenarioError(f"profile: give {key}_kw or {key}_frac")


def build_profile(params: dict[str, Any], nameplate_kw: float, base_dir: Path | None = None) -> Profile:
    """The plant profile a scenario's [profile] table describes, scaled to the fleet."""
    kind = params.get("kind")
    other = _kw(params, "other_load", nameplate_kw, 0.0)
    if kind == "daily":
        return DailyProfile(
            low_kw=_kw(params, "low", nameplate_kw, 0.3),
            high_kw=_kw(params, "high", nameplate_kw, 0.95),
            noise_kw=_kw(params, "noise", nameplate_kw, 0.01),
            trips=tuple((float(a), float(b)) for a, b in params.get("trips", ())),
            trip_kw=_kw(params, "trip", nameplate_kw, 0.05),
            seed=int(params.get("seed", 1)),
            day_s=float(params.get("day_s", 86_400.0)),
            other_load_kw=other,
        )
    if kind == "steady":
        return Steady(_kw(params, "level", nameplate_kw, 0.8), other_load_kw=other)
    if kind == "steps":
        levels = params.get("levels_frac")
        if not isinstance(levels, list) or not levels:
            raise ScenarioError("profile: steps needs levels_frac = [..] (fractions of nameplate)")
        return Steps(
            tuple(float(x) * nameplate_kw for x in levels),
            float(params.get("step_s", 60.0)),
            other_load_kw=other,
        )
    if kind == "ramps":
        return Ramps(
            _kw(params, "low", nameplate_kw, 0.2),
            _kw(params, "high", nameplate_kw, 1.0),
            float(params.get("period_s", 600.0)),
            other_load_kw=other,
        )
    if kind == "dropout":
        inner = build_profile(dict(params.get("inner", {"kind": "steady"})), nameplate_kw, base_dir)
        return Dropout(inner, float(params["start_s"]), float(params["end_s"]))
    if kind == "csv":
        path = Path(str(params.get("file", "")))
        if base_dir is not None and not path.is_absolute():
            path = base_dir / path
        if not path.is_file():
            raise ScenarioError(f"profile.file: {str(path)!r} not found")
        return CsvReplay.from_file(path)
    raise ScenarioError(
        f"profile.kind: {kind!r} is not one of daily, steady, steps, ramps, dropout, csv"
    )


# ------------------------------------------------------------------ loading


def _positive(doc: dict[str, Any], key: str, default: float | None = None) -> float:
    value = doc.get(key, default)
    if value is None:
        raise ScenarioError(f"{key}: required (a number > 0)")
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ScenarioError(f"{key}: expected a number > 0, got {value!r}")
    return float(value)


def parse_scenario(doc: dict[str, Any], default_name: str = "scenario") -> Scenario:
    fleet = dict(doc.get("fleet", {}))
    profile = doc.get("profile")
    if not isinstance(profile, dict):
        raise ScenarioError("profile: required table, e.g. [profile] kind = \"daily\"")
    faults: list[FaultSpec] = []
    for i, raw in enumerate(doc.get("faults", [])):
        if not isinstance(raw, dict) or not isinstance(raw.get("fault"), str):
            raise ScenarioError(f"faults[{i}]: needs fault = \"NAME\"")
        share = float(raw.get("share", 0.0))
        if not 0.0 <= share <= 1.0:
            raise ScenarioError(f"faults[{i}].share: expected 0..1, got {share}")
        faults.append(FaultSpec(raw["fault"], share, float(raw.get("at_s", 0.0)),
                                dict(raw.get("params", {}))))
    known = set(ControllerTiming.__dataclass_fields__)
    ctl = dict(doc.get("controller", {}))
    unknown = set(ctl) - known
    if unknown:
        raise ScenarioError(f"controller: unknown keys {sorted(unknown)}; known: {sorted(known)}")
    try:
        events = parse_events(doc.get("events", []))
    except EventError as exc:
        raise ScenarioError(str(exc)) from None
    recover_from = doc.get("recover_from_s")
    baseline = dict(doc.get("baseline", {}))
    count = int(fleet.get("count", 50))
    if count < 1:
        raise ScenarioError(f"fleet.count: expected >= 1, got {count}")
    shards = fleet.get("shards", 0)
    if isinstance(shards, bool) or not isinstance(shards, int) or not 0 <= shards <= 64:
        raise ScenarioError(f"fleet.shards: expected an integer 0..64 (0 = auto), got {shards!r}")
    return Scenario(
        name=str(doc.get("name", default_name)),
        description=str(doc.get("description", "")),
        duration_s=_positive(doc, "duration_s"),
        time_scale=_positive(doc, "time_scale", 1.0),
        profile=profile,
        count=count,
        mix=str(fleet.get("mix", DEFAULT_MIX)),
        shards=shards,
        seed=int(doc.get("seed", 1)),
        faults=tuple(faults),
        timing=ControllerTiming(**{k: float(v) for k, v in ctl.items()}),
        publish_hz=_positive(doc, "publish_hz", 5.0),
        sample_hz=_positive(doc, "sample_hz", 20.0),
        warmup_real_s=_positive(doc, "warmup_real_s", 8.0),
        baseline=bool(baseline.get("enabled", True)),
        baseline_period_s=_positive(baseline, "period_s", 60.0),
        baseline_threshold_frac=float(baseline.get("threshold_frac", 0.0)),
        grant_cap_frac=_positive(doc, "grant_cap_frac", 1.1),
        events=events,
        recover_from_s=None if recover_from is None else float(recover_from),
    )


def load_scenario(name_or_file: str, *, count: int | None = None) -> tuple[Scenario, Path | None]:
    """A built-in scenario by name or a TOML file; ScenarioError otherwise."""
    base_dir: Path | None
    if name_or_file in BUILTIN_SCENARIOS:
        text = resources.files("simulators").joinpath(f"scenarios/{name_or_file}.toml").read_text(
            "utf-8"
        )
        base_dir = None
        default = name_or_file
    else:
        path = Path(name_or_file)
        if not path.is_file():
            raise ScenarioError(
                f"scenario {name_or_file!r}: not a built-in ({', '.join(BUILTIN_SCENARIOS)}) "
                "and no such file"
            )
        text = path.read_text("utf-8")
        base_dir = path.parent
        default = path.stem
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"scenario {name_or_file!r}: not valid TOML: {exc}") from None
    if count is not None:
        doc.setdefault("fleet", {})["count"] = count
    return parse_scenario(doc, default), base_dir
