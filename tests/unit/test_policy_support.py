"""Shared strategies and helpers for the policy tests (no tests of its own).

Fleets mix catalogue models with random valid ModelConfigs (range or discrete
profiles, concave curves that need not pass through the origin concavely),
random statuses, priorities, pins, exclusions and switch histories.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import replace

from hypothesis import strategies as st

from controller.catalog import builtin_models
from controller.config import HashgovConfig, ModelConfig
from controller.fleet import FleetState, MinerStatus, MinerView
from controller.policy import Plan
from simulators.bench.policy_bench import bench_config

NOW_SECONDS = 10_000.0
EPS_WATTS = 1e-6


# ------------------------------------------------------------------ models


@st.composite
def random_models(draw: st.DrawFn) -> ModelConfig:
    """A random valid model: 1-6 targets, a concave curve covering them."""
    min_target = draw(st.integers(500, 2500))
    if draw(st.booleans()):
        count = draw(st.integers(1, 5))
        gaps = draw(st.lists(st.integers(50, 900), min_size=count - 1, max_size=count - 1))
        targets = [min_target]
        for gap in gaps:
            targets.append(targets[-1] + gap)
        shape: dict[str, object] = {"profiles_watts": tuple(draw(st.permutations(targets)))}
    else:
        step = draw(st.integers(100, 700))
        steps = draw(st.integers(0, 5))
        max_target = min_target + step * steps + draw(st.integers(0, step - 1))
        targets = [*range(min_target, max_target + 1, step)]
        if targets[-1] != max_target:
            targets.append(max_target)
        shape = {"power_range": {"min_watts": min_target, "max_watts": max_target, "step_watts": step}}
    # concave curve from a bit below the lowest target to the highest
    start_watts = float(max(min_target - draw(st.integers(0, 400)), 1))
    end_watts = float(max(targets[-1], start_watts + 1))
    points = draw(st.integers(2, 4))
    xs = [start_watts + (end_watts - start_watts) * i / (points - 1) for i in range(points)]
    slope = draw(st.floats(0.005, 0.08))
    h = draw(st.floats(5.0, 150.0))
    curve = [(xs[0], h)]
    for x0, x1 in itertools.pairwise(xs):
        slope *= draw(st.floats(0.3, 1.0))
        h += slope * (x1 - x0)
        curve.append((x1, h))
    return ModelConfig.model_validate(
        {
            "model": f"Random {draw(st.integers(0, 999))}",
            "nameplate_watts": targets[-1] + draw(st.integers(0, 200)),
            "nameplate_ths": curve[-1][1],
            "sleep_watts": draw(st.integers(0, 60)),
            "boot_seconds": draw(st.floats(0, 200)),
            "hashrate_curve": tuple(curve),
            **shape,
        }
    )


def models(max_targets: int | None = None, catalogue_only: bool = False) -> st.SearchStrategy[ModelConfig]:
    catalogue = [m for m in builtin_models() if max_targets is None or len(m.targets_watts) <= max_targets]
    if catalogue_only:
        return st.sampled_from(catalogue)
    return st.one_of(st.sampled_from(catalogue), random_models())


# ------------------------------------------------------------------ fleets


@st.composite
def miner_views(
    draw: st.DrawFn,
    /,
    index: int,
    model_pool: Sequence[ModelConfig],
    *,
    faults: bool = True,
    history: bool = True,
    pins: bool = True,
    priorities: bool = True,
    initial: str = "any",  # "any" | "on" | "off"
) -> MinerView:
    model = draw(st.sampled_from(model_pool))
    if initial == "on":
        status = MinerStatus.MINING
    elif initial == "off":
        status = MinerStatus.SLEEPING
    else:
        status = draw(st.sampled_from([MinerStatus.MINING, MinerStatus.MINING, MinerStatus.SLEEPING, MinerStatus.BOOTING]))
    excluded = False
    verified = True
    if faults:
        fault = draw(st.sampled_from(["none"] * 8 + ["unreachable", "unresponsive", "unverified", "excluded"]))
        if fault == "unreachable":
            status = MinerStatus.UNREACHABLE
        elif fault == "unresponsive":
            status = MinerStatus.UNRESPONSIVE
        elif fault == "unverified":
            verified = False
        elif fault == "excluded":
            excluded = True
            status = draw(st.sampled_from([MinerStatus.EXCLUDED, MinerStatus.MINING]))
    on = status in (MinerStatus.MINING, MinerStatus.BOOTING)
    limit: int | None
    if on and initial != "on":
        limit = draw(st.sampled_from(model.targets_watts))
    else:
        limit = model.max_target_watts if on else None
    measured = draw(st.one_of(st.none(), st.floats(0, model.nameplate_watts * 1.2))) if faults else (
        float(limit) if on and limit else float(model.sleep_watts)
    )
    switched = None
    if history:
        switched = draw(st.one_of(st.none(), st.floats(NOW_SECONDS - 900, NOW_SECONDS)))
    return MinerView(
        miner_id=f"m{index:03d}",
        model=model,
        status=status,
        measured_watts=measured,
        power_limit_watts=limit,
        switched_at_seconds=switched,
        priority=draw(st.integers(0, 2)) if priorities else 0,
        pinned=pins and not excluded and draw(st.integers(0, 9)) == 0,
        excluded=excluded,
        verified=verified,
    )


@st.composite
def fleets(
    draw: st.DrawFn,
    /,
    *,
    min_miners: int = 1,
    max_miners: int = 12,
    max_targets: int | None = None,
    catalogue_only: bool = False,
    **view_options: object,
) -> FleetState:
    pool = draw(st.lists(models(max_targets, catalogue_only), min_size=1, max_size=3))
    count = draw(st.integers(min_miners, max_miners))
    views = [draw(miner_views(i, pool, **view_options)) for i in range(count)]  # type: ignore[arg-type]
    order = draw(st.permutations(views))  # input order must not matter
    return FleetState(NOW_SECONDS, tuple(order))


@st.composite
def configs(draw: st.DrawFn, *, ramp: bool = True, hysteresis: bool = True, min_times: bool = True) -> HashgovConfig:
    return bench_config(
        ramp_up_kw_per_second=draw(st.sampled_from([0.2, 1.0, 5.0, 1e6])) if ramp else 1e6,
        hysteresis_kw=draw(st.sampled_from([0.0, 0.3, 1.0, 3.0])) if hysteresis else 0.0,
        min_on_seconds=draw(st.sampled_from([0.0, 60.0, 300.0])) if min_times else 0.0,
        min_off_seconds=draw(st.sampled_from([0.0, 60.0, 300.0])) if min_times else 0.0,
    )


# ------------------------------------------------------------------ accounting


def is_controllable(view: MinerView) -> bool:
    return not view.excluded and view.controllable


def uncontrolled_watts(view: MinerView) -> float:
    if view.excluded or view.status == MinerStatus.EXCLUDED:
        return view.measured_watts if view.measured_watts is not None else float(view.model.nameplate_watts)
    return view.worst_case_watts


def floor_watts(fleet: FleetState) -> float:
    return sum(
        float(v.model.sleep_watts) if is_controllable(v) else uncontrolled_watts(v) for v in fleet.miners
    )


def since_switch(view: MinerView, now: float = NOW_SECONDS) -> float:
    return math.inf if view.switched_at_seconds is None else now - view.switched_at_seconds


def held_off(view: MinerView, config: HashgovConfig, now: float = NOW_SECONDS) -> bool:
    return not view.is_on and since_switch(view, now) < config.site.min_off_seconds


def held_on(view: MinerView, config: HashgovConfig, now: float = NOW_SECONDS) -> bool:
    return view.is_on and since_switch(view, now) < config.site.min_on_seconds


def current_watts(fleet: FleetState) -> float:
    total = 0.0
    for v in fleet.miners:
        if not is_controllable(v):
            total += uncontrolled_watts(v)
        elif v.is_on:
            known = v.power_limit_watts if v.power_limit_watts is not None else v.measured_watts
            total += v.model.max_target_watts if known is None else known
        else:
            total += v.model.sleep_watts
    return total


def apply_plan(fleet: FleetState, plan: Plan, now: float) -> FleetState:
    """The fleet after the actuator carried out ``plan`` perfectly at ``now``."""
    by_id = plan.by_id()
    views = []
    for v in fleet.miners:
        p = by_id[v.miner_id]
        if p.action == "run":
            assert p.target_watts is not None
            switched = v.switched_at_seconds if v.is_on else now
            v = replace(v, status=MinerStatus.MINING, power_limit_watts=p.target_watts,
                        measured_watts=float(p.target_watts), switched_at_seconds=switched)
        elif p.action == "sleep":
            switched = now if v.is_on else v.switched_at_seconds
            v = replace(v, status=MinerStatus.SLEEPING, measured_watts=float(v.model.sleep_watts),
                        switched_at_seconds=switched)
        views.append(v)
    return FleetState(now, tuple(views))


def levels(model: ModelConfig) -> list[tuple[int | None, float, float]]:
    """Every choice for one miner: (target or None for sleep, watts, TH/s)."""
    return [(None, float(model.sleep_watts), 0.0)] + [
        (t, float(t), model.hashrate_ths_at(t)) for t in model.targets_watts
    ]


def brute_force_ths(
    miners: Sequence[MinerView], fixed_watts: float, limit_watts: float
) -> float:
    """Best TH/s over every sleep/target combination with the priority rule.

    Priority rule: no miner runs while a miner of higher priority sleeps.
    """
    best = -1.0
    order = sorted(miners, key=lambda v: -v.priority)
    options = [levels(v.model) for v in order]

    def walk(i: int, watts: float, ths: float, blocked_below: int | None) -> None:
        nonlocal best
        if watts > limit_watts + EPS_WATTS:
            return
        if i == len(order):
            best = max(best, ths)
            return
        view = order[i]
        for target, w, h in options[i]:
            if target is None:
                nb = view.priority if blocked_below is None else blocked_below
                walk(i + 1, watts + w, ths, nb)
            elif blocked_below is None or view.priority >= blocked_below:
                walk(i + 1, watts + w, ths + h, blocked_below)

    walk(0, fixed_watts, 0.0, None)
    return best


def running_views(fleet: FleetState, plan: Plan) -> Iterable[tuple[MinerView, int]]:
    by_id = plan.by_id()
    for v in fleet.miners:
        p = by_id[v.miner_id]
        if p.action == "run":
            assert p.target_watts is not None
            yield v, p.target_watts


def concave_upper_bound_ths(miners: Sequence[MinerView], spare_watts: float) -> tuple[float, float]:
    """LP relaxation: fill ``spare_watts`` (above everyone's sleep draw) fractionally along
    each miner's concave envelope. Returns (bound, largest single step's TH/s)."""
    segments: list[tuple[float, float]] = []  # (watts, ths)
    for v in miners:
        points = [(w, h) for _, w, h in levels(v.model)]
        hull = [points[0]]
        for p in points[1:]:
            while len(hull) >= 2 and _cross(hull[-2], hull[-1], p) >= 0:
                hull.pop()
            hull.append(p)
        segments += [(b[0] - a[0], b[1] - a[1]) for a, b in itertools.pairwise(hull)]
    segments.sort(key=lambda s: -(s[1] / s[0]) if s[0] > 0 else -math.inf)
    bound, left = 0.0, spare_watts
    for watts, ths in segments:
        if watts <= left:
            bound, left = bound + ths, left - watts
        else:
            bound += ths * max(left, 0.0) / watts
            break
    return bound, max((ths for _, ths in segments), default=0.0)


def _cross(o: tuple[float, float], a: tuple[float, float], b: tuple[float, float]) -> float:
    """> 0 when o->a->b turns left (a lies below the chord o->b: not on the upper hull)."""
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])
