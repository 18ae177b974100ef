"""`hashgov plan` (what would the policy do?) and `hashgov bench policy`.

The state file (``--state``) describes how the miners are now; every miner it
does not mention is taken to be mining at full power. Format (JSON)::

    {
      "miners": {
        "row1-01": {"status": "mining", "power_limit_watts": 3000, "measured_watts": 2980},
        "row1-02": {"status": "sleeping", "switched_seconds_ago": 40},
        "row2-03": {"status": "unreachable", "measured_watts": 3100}
      }
    }

Keys are miner names (or addresses for unnamed miners). ``status`` is one of
mining, sleeping, booting, unreachable, unresponsive; ``switched_seconds_ago`` is
how long ago the miner last switched on or off (omit: long ago); ``verified``
false marks a miner whose last command was not confirmed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

import typer
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from rich.console import Console
from rich.table import Table

from controller.cli_config import load_or_exit
from controller.config import HashgovConfig, ModelConfig
from controller.fleet import FleetState, MinerStatus, MinerView
from controller.policy import MinerPlan, Plan, plan

PLAN_NOW_SECONDS = 0.0  # the state file gives ages, so "now" is simply zero


class MinerStateEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    status: Literal["mining", "sleeping", "booting", "unreachable", "unresponsive"] = "mining"
    measured_watts: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    power_limit_watts: int | None = Field(default=None, gt=0)
    switched_seconds_ago: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    verified: bool = True


class StateFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    miners: dict[str, MinerStateEntry] = Field(default_factory=dict)


def _usage_error(param: str, message: str) -> typer.BadParameter:
    return typer.BadParameter(message, param_hint=f"'{param}'")


def read_state(path: Path, config: HashgovConfig) -> StateFile:
    """Parse a state file; any problem is a usage error naming --state."""
    try:
        raw = json.loads(path.read_text("utf-8"))
    except OSError as exc:
        raise _usage_error("--state", f"cannot read {path}: {exc.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _usage_error("--state", f"{path} is not valid JSON: {exc}") from None
    try:
        state = StateFile.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}"
            for err in exc.errors(include_url=False)
        )
        raise _usage_error("--state", f"{path}: {problems}") from None
    known = {m.miner_id for m in config.fleet.miners}
    unknown = sorted(set(state.miners) - known)
    if unknown:
        raise _usage_error("--state", f"{path}: miners not in the config: {', '.join(unknown)}")
    return state


def build_fleet(config: HashgovConfig, state: StateFile | None) -> FleetState:
    """The fleet as the state file describes it (default: mining at full power)."""
    views = []
    for m in config.fleet.miners:
        model = config.fleet.model_for(m)
        entry = state.miners.get(m.miner_id) if state else None
        views.append(_view(m.miner_id, model, entry, m.priority, m.pinned, m.excluded))
    return FleetState(PLAN_NOW_SECONDS, tuple(views))


def _view(
    miner_id: str, model: ModelConfig, entry: MinerStateEntry | None, priority: int, pinned: bool, excluded: bool
) -> MinerView:
    entry = entry or MinerStateEntry()
    status = MinerStatus.EXCLUDED if excluded else MinerStatus(entry.status)
    on = status in (MinerStatus.MINING, MinerStatus.BOOTING)
    limit = entry.power_limit_watts if entry.power_limit_watts is not None else (model.max_target_watts if on else None)
    measured = entry.measured_watts
    if measured is None:
        measured = float(limit) if on and limit else float(model.sleep_watts) if not excluded else None
    ago = entry.switched_seconds_ago
    return MinerView(
        miner_id=miner_id,
        model=model,
        status=status,
        measured_watts=measured,
        power_limit_watts=limit,
        switched_at_seconds=None if ago is None else PLAN_NOW_SECONDS - ago,
        priority=priority,
        pinned=pinned,
        excluded=excluded,
        verified=entry.verified,
    )


def plan_json(result: Plan, fleet: FleetState) -> dict[str, Any]:
    views = fleet.by_id()
    return {
        "budget_watts": result.budget_watts,
        "planned_watts": result.planned_watts,
        "planned_ths": round(result.planned_ths, 3),
        "joules_per_th": None if result.joules_per_th is None else round(result.joules_per_th, 3),
        "notes": list(result.notes),
        "miners": [
            {
                "miner_id": m.miner_id,
                "model": views[m.miner_id].model.model,
                "now_status": str(views[m.miner_id].status),
                "now_watts": views[m.miner_id].measured_watts,
                "action": m.action,
                "target_watts": m.target_watts,
                "planned_watts": m.planned_watts,
                "planned_ths": round(m.planned_ths, 3),
                "reason": m.reason,
            }
            for m in result.miners
        ],
    }


def _now_text(view: MinerView) -> str:
    if view.measured_watts is None:
        return str(view.status)
    return f"{view.status} {view.measured_watts:,.0f} W"


def _planned_text(m: MinerPlan) -> str:
    if m.action == "run":
        return f"run {m.target_watts:,} W"
    return f"{m.action} {m.planned_watts:,.0f} W"


def print_plan(result: Plan, fleet: FleetState, console: Console) -> None:
    views = fleet.by_id()
    table = Table(title="hashgov plan", show_lines=False)
    for column in ("miner", "model", "now", "planned", "reason"):
        table.add_column(column, no_wrap=column != "reason")
    for m in result.miners:
        view = views[m.miner_id]
        table.add_row(m.miner_id, view.model.model, _now_text(view), _planned_text(m), m.reason)
    console.print(table)
    jth = "-" if result.joules_per_th is None else f"{result.joules_per_th:.1f}"
    console.print(
        f"budget {result.budget_watts / 1000:,.2f} kW   planned {result.planned_watts / 1000:,.2f} kW   "
        f"{result.planned_ths:,.1f} TH/s   {jth} J/TH",
        markup=False,
    )
    for line in result.notes:
        console.print(f"note: {line}", markup=False)


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    @app.command("plan")
    def plan_command(
        config_file: Path = typer.Option(..., "--config", help="TOML config (as for `hashgov run`)."),
        budget_kw: float = typer.Option(..., "--budget-kw", help="Budget to plan for (kW, >= 0)."),
        state_file: Path | None = typer.Option(
            None, "--state", help="JSON file with the miners' present state (see docs/policy.md)."
        ),
        ignore_ramp: bool = typer.Option(
            False, "--ignore-ramp", help="Show where the policy settles, not just its first ramp step."
        ),
        as_json: bool = typer.Option(False, "--json", help="Print the plan as one JSON object."),
    ) -> None:
        """Show what the policy would do with a budget: every miner's action, target and why."""
        if not math.isfinite(budget_kw) or budget_kw < 0:
            raise _usage_error("--budget-kw", f"must be a finite number >= 0, got {budget_kw}")
        if state_file is not None and not state_file.is_file():
            raise _usage_error("--state", f"no such file: {state_file}")
        config = load_or_exit(config_file)
        state = read_state(state_file, config) if state_file is not None else None
        if ignore_ramp:
            site = config.site.model_copy(update={"ramp_up_kw_per_second": 1e9})
            config = config.model_copy(update={"site": site})
        fleet = build_fleet(config, state)
        result = plan(fleet, budget_kw * 1000.0, config, PLAN_NOW_SECONDS)
        if as_json:
            print(json.dumps(plan_json(result, fleet)))
        else:
            print_plan(result, fleet, Console(highlight=False))

    @bench_app.command("policy")
    def bench_policy(
        miners: int = typer.Option(10_000, "--miners", min=1, help="Fleet size."),
        rounds: int = typer.Option(100, "--rounds", min=1, help="Budgets in the sweep (one plan each)."),
        seed: int = typer.Option(1, "--seed", help="Fleet and sweep seed."),
        as_json: bool = typer.Option(False, "--json", help="No progress on stderr; JSON only."),
        gc_freeze: bool = typer.Option(
            True, "--gc-freeze/--no-gc-freeze", help="Freeze the long-lived heap first (recommended for the daemon)."
        ),
    ) -> None:
        """Time plan() over a budget sweep on a random mixed fleet (last line: JSON)."""
        from simulators.bench.policy_bench import (
            main as bench_main,  # late: keeps `hashgov` start fast
        )

        bench_main(miners, rounds, seed, as_json, gc_freeze)
