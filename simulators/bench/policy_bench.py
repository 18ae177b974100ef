"""`hashgov bench policy`: how long plan() takes on a large random fleet.

The figure that matters is ``ratio_to_baseline``: plan() time over the time to
merely sort the same miners by efficiency, measured in the same run, so it can
be compared across machines. The last stdout line is one JSON object.
"""

from __future__ import annotations

import gc
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from controller.catalog import builtin_models
from controller.config import HashgovConfig, ModelConfig, parse_config
from controller.fleet import FleetState, MinerStatus, MinerView
from controller.policy import Plan, plan

BENCH_NOW_SECONDS = 100_000.0


def bench_config(
    *,
    ramp_up_kw_per_second: float = 1e6,
    hysteresis_kw: float = 0.0,
    min_on_seconds: float = 300.0,
    min_off_seconds: float = 300.0,
    control_period_seconds: float = 5.0,
) -> HashgovConfig:
    """A minimal valid config: the policy reads only [site] (models travel in the fleet)."""
    return parse_config(
        {
            "site": {
                "grant_cap_kw": 1e6,
                "ramp_up_kw_per_second": ramp_up_kw_per_second,
                "hysteresis_kw": hysteresis_kw,
                "min_on_seconds": min_on_seconds,
                "min_off_seconds": min_off_seconds,
                "control_period_seconds": control_period_seconds,
            },
            "mqtt": {"streams": {"surplus": {"kind": "surplus", "topic": "plant/surplus"}}},
            "fleet": {},
        }
    )


def random_fleet(miners: int, seed: int, now_seconds: float = BENCH_NOW_SECONDS) -> FleetState:
    """A seeded mixed fleet: catalogue models, a few priorities, pins, exclusions and faults."""
    rng = random.Random(seed)
    models = builtin_models()
    views = [_random_view(rng, i, rng.choice(models), now_seconds) for i in range(miners)]
    return FleetState(now_seconds, tuple(views))


def _random_view(rng: random.Random, index: int, model: ModelConfig, now_seconds: float) -> MinerView:
    roll = rng.random()
    status = MinerStatus.MINING
    if roll < 0.01:
        status = MinerStatus.UNREACHABLE
    elif roll < 0.25:
        status = MinerStatus.SLEEPING
    excluded = rng.random() < 0.01
    if excluded:
        status = MinerStatus.EXCLUDED
    target = rng.choice(model.targets_watts)
    on = status == MinerStatus.MINING
    return MinerView(
        miner_id=f"m{index:06d}",
        model=model,
        status=status,
        measured_watts=float(target) if on else float(model.sleep_watts),
        power_limit_watts=target if on else None,
        switched_at_seconds=None if rng.random() < 0.8 else now_seconds - rng.uniform(0, 900),
        priority=rng.choice((0, 0, 0, 1, 2)),
        pinned=not excluded and rng.random() < 0.02,
        excluded=excluded,
    )


def _time_ms(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1_000.0


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_bench(
    miners: int, rounds: int, seed: int, progress: Callable[[str], None], freeze_gc: bool = True
) -> dict[str, Any]:
    config = bench_config()
    fleet = random_fleet(miners, seed)
    nameplate_watts = sum(v.model.nameplate_watts for v in fleet.miners)
    budgets = [nameplate_watts * (0.05 + 1.05 * i / max(rounds - 1, 1)) for i in range(rounds)]
    random.Random(seed).shuffle(budgets)

    def efficiency(v: MinerView) -> float:
        return v.model.nameplate_watts / v.model.nameplate_ths

    plan_ms: list[float] = []
    sort_ms: list[float] = []
    last: Plan | None = None
    gc.collect()
    if freeze_gc:
        # as a long-running daemon should after start-up: the fleet and config are
        # long-lived, so full collections need not rescan them every few plans
        gc.freeze()
    for i, budget in enumerate(budgets):
        sort_ms.append(_time_ms(lambda: sorted(fleet.miners, key=efficiency)))
        start = time.perf_counter()
        last = plan(fleet, budget, config, BENCH_NOW_SECONDS)
        plan_ms.append((time.perf_counter() - start) * 1_000.0)
        if (i + 1) % max(rounds // 10, 1) == 0:
            progress(f"{i + 1}/{rounds} plans, last {plan_ms[-1]:.1f} ms")
    assert last is not None
    if freeze_gc:
        gc.unfreeze()
    p50 = statistics.median(plan_ms)
    base = statistics.median(sort_ms)
    return {
        "bench": "policy",
        "miners": miners,
        "rounds": rounds,
        "seed": seed,
        "plan_ms_p50": round(p50, 3),
        "plan_ms_p99": round(_percentile(plan_ms, 0.99), 3),
        "plan_ms_max": round(max(plan_ms), 3),
        "baseline_sort_ms_p50": round(base, 3),
        "ratio_to_baseline": round(p50 / base, 2) if base > 0 else None,
        "gc_frozen": freeze_gc,
        "python": sys.version.split()[0],
    }


def main(miners: int, rounds: int, seed: int, as_json: bool, freeze_gc: bool = True) -> None:
    def progress(line: str) -> None:
        if not as_json:
            print(line, file=sys.stderr, flush=True)

    progress(f"policy bench: {miners} miners, {rounds} budgets, seed {seed}")
    result = run_bench(miners, rounds, seed, progress, freeze_gc)
    if not as_json:
        progress(
            f"plan() p50 {result['plan_ms_p50']} ms, p99 {result['plan_ms_p99']} ms; "
            f"sorting the fleet {result['baseline_sort_ms_p50']} ms (x{result['ratio_to_baseline']})"
        )
    print(json.dumps(result))
