"""Figures from a run's truth series (pure; unit-tested with synthetic series)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from simulators.bench.scenario_faults import recover_s
from simulators.bench.scenario_oracle import BlindFigures
from simulators.bench.scenario_runner import Drop, RunResult
from simulators.miners.physics import DEFAULT_SLEEP_TAU_SECONDS
from simulators.truth import TruthMeter


@dataclass(frozen=True, slots=True)
class ShedEvent:
    t_sim: float
    wall: float
    before_watts: float
    after_watts: float
    draw_watts: float
    shed_s: float  # simulated seconds until true draw ≤ grant (censored at the run's end)
    floor_s: float  # the physical minimum for this drop
    resolved: bool


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


def shed_floor_s(draw_watts: float, budget_watts: float, sleep_watts: float,
                 tau_s: float = DEFAULT_SLEEP_TAU_SECONDS) -> float:
    """Fastest time (simulated s) the physics allows from draw to ≤ budget.

    Sleeping is the fastest way down: draw decays toward the fleet's sleep
    draw with the sleep time constant, so with every miner stopped at once
    t = τ · ln((D − S) / (B − S)). Infinite when the grant is below the sleep draw.
    """
    if draw_watts <= budget_watts:
        return 0.0
    if budget_watts <= sleep_watts:
        return math.inf
    return tau_s * math.log((draw_watts - sleep_watts) / (budget_watts - sleep_watts))


def shed_events(run: RunResult) -> list[ShedEvent]:
    """Every published drop after which true draw was above the new grant."""
    events: list[ShedEvent] = []
    t, draw, budget = run.t, run.draw, run.budget
    j = 0
    for drop in run.drops:
        while j < len(t) and t[j] < drop.t_sim:
            j += 1
        if j >= len(t):
            break
        d0 = draw[j]
        if d0 <= drop.after_watts:
            continue
        k = j
        # a sample taken just before the new grant reached the sampler still holds the old one
        while k < len(t) and draw[k] > (
            drop.after_watts if budget[k] == drop.before_watts else budget[k]
        ):
            k += 1
        resolved = k < len(t)
        end = t[k] if resolved else t[-1]
        events.append(ShedEvent(
            drop.t_sim, drop.wall, drop.before_watts, drop.after_watts, d0,
            max(0.0, end - drop.t_sim), shed_floor_s(d0, drop.after_watts, run.sleep_watts),
            resolved,
        ))
    return events


def truth_meter(run: RunResult, tolerance_watts: float = 0.0) -> TruthMeter:
    meter = TruthMeter(tolerance_watts=tolerance_watts)
    for t, d, b, h in zip(run.t, run.draw, run.budget, run.ths, strict=True):
        meter.sample(t, d, b, h)
    return meter


def decide_latencies_ms(log_path: Path | None, drops: Sequence[Drop],
                        window_s: float = 5.0) -> list[float]:
    """Budget-lowering message published → the controller's `plan` log line (commands issued).

    The control loop logs event "plan" right after handing a plan's commands to
    the actuator; its ISO timestamp (µs) minus the publication's wall time is
    the decision latency, broker transit included. Drops with no plan event
    within window_s (nothing to change) are skipped.
    """
    if log_path is None or not log_path.exists() or not drops:
        return []
    plans: list[tuple[float, float]] = []
    with log_path.open("rb") as fh:
        for raw in fh:
            if b'"plan"' not in raw:
                continue
            try:
                doc = json.loads(raw)
                if doc.get("event") != "plan":
                    continue
                ts = datetime.fromisoformat(str(doc["timestamp"]).replace("Z", "+00:00"))
                plans.append((ts.timestamp(), float(doc.get("budget_watts", math.inf))))
            except (ValueError, KeyError, TypeError):
                continue
    out: list[float] = []
    i = 0
    for drop in sorted(drops, key=lambda d: d.wall):
        while i < len(plans) and plans[i][0] < drop.wall:
            i += 1
        for plan_ts, budget in plans[i:]:
            if plan_ts - drop.wall > window_s:
                break
            if budget <= drop.after_watts + 1.0:
                out.append((plan_ts - drop.wall) * 1000.0)
                break
    return out


def _r(value: float | None, digits: int = 3) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(value, digits)


def figures(run: RunResult, oracle_ths_s: float | None, naive: RunResult | None,
            control_period_real_s: float, blind: BlindFigures | None = None) -> dict[str, Any]:
    k = run.time_scale
    meter = truth_meter(run)
    events = shed_events(run)
    sheds = [e.shed_s for e in events]
    floors = [e.floor_s for e in events if math.isfinite(e.floor_s)]
    excess = [e.shed_s - e.floor_s for e in events if math.isfinite(e.floor_s)]
    hours = run.sim_seconds / 3600.0
    decide = decide_latencies_ms(run.log_path, run.drops)
    naive_meter = truth_meter(naive) if naive is not None else None
    out: dict[str, Any] = {
        "miners": run.miners,
        "time_scale": k,
        "sim_seconds": _r(run.sim_seconds, 1),
        "real_seconds": _r(run.sim_seconds / k, 1),
        "utilization": _r(meter.utilization, 4),
        "oracle_ratio": _r(meter.hashes_ths_s / oracle_ths_s, 4) if oracle_ths_s else None,
        # the oracle without foresight of the noise (scenario_oracle.noise_blind): where
        # noise changes faster than a controller can react, what the best one could do
        "noise_blind_ratio": (
            _r(meter.hashes_ths_s / blind.hashes_ths_s, 4)
            if blind is not None and blind.hashes_ths_s > 0 else None
        ),
        "noise_blind_utilization": _r(blind.utilization, 4) if blind is not None else None,
        "baseline_ratio": (
            _r(meter.hashes_ths_s / naive_meter.hashes_ths_s, 4)
            if naive_meter is not None and naive_meter.hashes_ths_s > 0 else None
        ),
        "violation_ws": _r(meter.violation_ws, 1),
        "max_violation_s": _r(meter.longest_violation_s, 2),
        "max_violation_real_s": _r(meter.longest_violation_s / k, 3),
        "shed_events": len(events),
        "shed_unresolved": sum(not e.resolved for e in events),
        "shed_p50_s": _r(percentile(sheds, 50), 2),
        "shed_p99_s": _r(percentile(sheds, 99), 2),
        "shed_p50_real_s": _r((percentile(sheds, 50) or 0.0) / k, 3) if sheds else None,
        "shed_p99_real_s": _r((percentile(sheds, 99) or 0.0) / k, 3) if sheds else None,
        "shed_floor_s": _r(max(floors), 2) if floors else None,
        "shed_excess_p99_s": _r(percentile(excess, 99), 2),
        "control_period_s": _r(control_period_real_s * k, 2),
        "control_period_real_s": control_period_real_s,
        "sample_resolution_s": _r(
            (run.t[-1] - run.t[0]) / max(1, len(run.t) - 1) if len(run.t) > 1 else None, 3),
        "switches_per_miner_hour": _r(run.switches / run.miners / hours, 3) if hours > 0 else None,
        "decide_ms_p50": _r(percentile(decide, 50), 1),
        "decide_ms_p99": _r(percentile(decide, 99), 1),
        "decide_samples": len(decide),
        "controller_rss_mib": run.controller.get("rss_mib"),
        "controller_cpu_s": run.controller.get("cpu_s"),
        "controller_cpu_s_measured": run.controller.get("cpu_s_measured"),
        "hashgov_ths_s": _r(meter.hashes_ths_s, 0),
        "oracle_ths_s": _r(oracle_ths_s, 0),
        # fault scenarios (docs/reliability.md): simulated s from the fault's end until the
        # true draw is back within 10 % below the grant for 10 s; overrides set before a
        # restart and missing after it
        "recover_s": _r(recover_s(run.t, run.draw, run.budget, run.recover_from_s), 1)
        if run.recover_from_s is not None else None,
        "lost_overrides": run.lost_overrides,
    }
    if out["recover_s"] is not None and run.recover_from_s is not None:
        # once recovered, does it hold? worst true draw over the grant from then on
        held_from = run.recover_from_s + out["recover_s"]
        over = [d - b for t, d, b in zip(run.t, run.draw, run.budget, strict=True)
                if t >= held_from]
        out["max_over_after_recover_w"] = _r(max([0.0, *over]), 1)
    if run.faults:
        out["faults"] = run.faults
    if naive is not None and naive_meter is not None:
        out["naive"] = {
            "utilization": _r(naive_meter.utilization, 4),
            "violation_ws": _r(naive_meter.violation_ws, 1),
            "max_violation_s": _r(naive_meter.longest_violation_s, 2),
            "hashes_ths_s": _r(naive_meter.hashes_ths_s, 0),
            "switches_per_miner_hour": (
                _r(naive.switches / naive.miners / (naive.sim_seconds / 3600.0), 3)
                if naive.sim_seconds > 0 else None
            ),
        }
    return out


# Above this K a real second is more than 20 simulated seconds: reaction times are
# the controller's real latency times K and say nothing in simulated seconds, so
# the time goals are judged in real seconds (the physics floor shrinks by K too).
REAL_TIME_GOALS_ABOVE_K = 20.0


def goals(figs: dict[str, Any]) -> dict[str, Any]:
    """The issue's goals against these figures: {name: {want, got, met}} + time basis."""
    k = float(figs.get("time_scale") or 1.0)
    real = k > REAL_TIME_GOALS_ABOVE_K
    scale = k if real else 1.0
    unit = "real s" if real else "simulated s"
    floor = (figs.get("shed_floor_s") or 0.0) / scale
    period = float(figs.get("control_period_s") or 0.0) / scale
    checks: list[tuple[str, str, float | None, float, bool]] = [  # name, want, got, limit, ≥?
        ("utilization", ">= 0.98", figs.get("utilization"), 0.98, True),
        ("oracle_ratio", ">= 0.97", figs.get("oracle_ratio"), 0.97, True),
        ("baseline_ratio", ">= 1.10", figs.get("baseline_ratio"), 1.10, True),
        ("max_violation", f"<= shed floor + one control period = {floor + period:.3g} {unit}",
         None if figs.get("max_violation_s") is None else figs["max_violation_s"] / scale,
         floor + period, False),
        ("shed_excess_p99", f"<= 1 {unit} over each shed's physical floor",
         None if figs.get("shed_excess_p99_s") is None else figs["shed_excess_p99_s"] / scale,
         1.0, False),
        ("switches_per_miner_hour", "<= 2", figs.get("switches_per_miner_hour"), 2.0, False),
        ("decide_ms_p99", "<= 250", figs.get("decide_ms_p99"), 250.0, False),
    ]
    out: dict[str, Any] = {"time_basis": unit}
    for name, want, got, limit, at_least in checks:
        met = None if got is None else (got >= limit if at_least else got <= limit)
        out[name] = {"want": want, "got": None if got is None else round(got, 4), "met": met}
    judged = [v["met"] for key, v in out.items() if key != "time_basis" and v["met"] is not None]
    out["met"] = f"{sum(judged)}/{len(judged)}"
    return out
