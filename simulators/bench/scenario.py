"""`hashgov bench scenario FILE|NAME --json [--report DIR]`: a whole site, scored.

Runs the scenario twice on fresh fleets — hashgov (a child process) and the
naive baseline — then scores both against the simulator's truth and a
perfect-foresight oracle. Progress goes to stderr; the figures are one JSON
object on the last stdout line. See docs/benchmarks.md.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import typer

from controller.catalog import find_model
from simulators.bench.scenario_figures import figures, goals
from simulators.bench.scenario_oracle import Oracle, noise_blind
from simulators.bench.scenario_runner import RunResult, grant_cap_kw, grant_watts, run_site
from simulators.bench.scenario_spec import (
    BUILTIN_SCENARIOS,
    Scenario,
    ScenarioError,
    build_profile,
    load_scenario,
    without_noise,
)
from simulators.miners.fleet import make_specs

HASHGOV_BASE_IP = "127.201.0.1"
NAIVE_BASE_IP = "127.202.0.1"


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def run_scenario(
    sc: Scenario,
    workdir: Path,
    *,
    base_ips: tuple[str, str] = (HASHGOV_BASE_IP, NAIVE_BASE_IP),
    baseline: bool | None = None,
    base_dir: Path | None = None,
) -> tuple[dict[str, Any], RunResult, RunResult | None]:
    specs = make_specs(sc.count, sc.mix, base_ips[0])
    models = [find_model(s.model, s.firmware) for s in specs]
    nameplate_kw = sum(m.nameplate_watts for m in models) / 1000.0
    profile = build_profile(sc.profile, nameplate_kw, base_dir)
    _progress(
        f"scenario {sc.name}: {sc.count} miners ({nameplate_kw:.0f} kW nameplate), "
        f"{sc.duration_s:.0f}s simulated at K={sc.time_scale:g} ({sc.real_duration_s:.0f}s real)"
    )
    run = await run_site(sc, profile, specs, workdir / "hashgov", "hashgov", _progress)
    naive: RunResult | None = None
    if sc.baseline if baseline is None else baseline:
        naive_specs = make_specs(sc.count, sc.mix, base_ips[1])
        naive = await run_site(sc, profile, naive_specs, workdir / "naive", "naive", _progress)
    oracle = Oracle(models)
    oracle_ths_s = oracle.hashes_ths_s(zip(run.t, run.budget, strict=True))
    calm, sigma_kw = without_noise(profile)
    cap_watts = grant_cap_kw(sc, nameplate_kw) * 1000.0
    # no noise: the grant as published is what to expect (the oracle's own series)
    expected = [grant_watts(calm, t, cap_watts) for t in run.t] if sigma_kw > 0 else run.budget
    blind = noise_blind(oracle, run.t, run.budget, expected, sigma_kw * 1000.0)
    figs = figures(run, oracle_ths_s, naive, sc.timing.control_period_s, blind)
    figs["goals"] = goals(figs)
    return {"scenario": sc.name, **figs}, run, naive


def register(bench_app: typer.Typer) -> None:
    @bench_app.command("scenario")
    def scenario(
        name: str = typer.Argument(
            ..., help=f"A scenario TOML file or a built-in: {', '.join(BUILTIN_SCENARIOS)}."
        ),
        as_json: bool = typer.Option(
            False, "--json", help="Print the figures as one JSON object (last stdout line)."
        ),
        report: Path | None = typer.Option(
            None, "--report", help="Write a Markdown report and PNG plots into DIR."
        ),
        miners: int | None = typer.Option(
            None, "--miners", min=1, help="Override the scenario's fleet count."
        ),
        no_baseline: bool = typer.Option(
            False, "--no-baseline", help="Skip the naive-baseline run (no baseline_ratio)."
        ),
        base_ip: str = typer.Option(
            HASHGOV_BASE_IP, "--base-ip",
            help="First loopback IP of the hashgov fleet; the naive fleet uses the next /16.",
        ),
        keep: Path | None = typer.Option(
            None, "--workdir", help="Keep configs and the controller log here."
        ),
    ) -> None:
        """Run a scenario end to end (broker, plant, fleet, controller) and score it."""
        try:
            sc, base_dir = load_scenario(name, count=miners)
        except ScenarioError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None

        def go(workdir: Path) -> tuple[dict[str, Any], RunResult, RunResult | None]:
            first = base_ip.split(".")
            naive_ip = ".".join([first[0], first[1], str((int(first[2]) + 1) % 255), first[3]]) \
                if base_ip != HASHGOV_BASE_IP else NAIVE_BASE_IP
            return asyncio.run(run_scenario(
                sc, workdir, base_ips=(base_ip, naive_ip),
                baseline=False if no_baseline else None, base_dir=base_dir))

        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            figs, run, naive = go(keep)
        else:
            with tempfile.TemporaryDirectory(prefix="hashgov-scenario-") as tmp:
                figs, run, naive = go(Path(tmp))
        _progress("figures: " + json.dumps(figs))
        if report is not None:
            from simulators.bench.scenario_report import write_report

            written = write_report(report, sc, figs, run, naive)
            _progress(f"report: {written}")
        if as_json:
            print(json.dumps(figs))
        else:
            for key, value in figs.items():
                typer.echo(f"{key:>26}: {value}")
