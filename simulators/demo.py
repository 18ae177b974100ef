"""`hashgov demo`: the whole site on one machine.

A broker (mosquitto when installed, else the embedded one), the plant
simulator on a varying profile, simulated miners speaking LuxOS and Braiins
OS+ to unmodified pyasic, and the controller — with a live view of budget
versus true draw. Figures come from the simulator's truth, not from what the
controller believes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from controller.config import load_config
from controller.logs import configure_logging
from controller.service import Service, ServiceOptions
from simulators.broker import start_broker
from simulators.miners.fleet import FleetError, SimFleet, make_specs
from simulators.plant.publisher import PlantPublisher
from simulators.site import SiteTiming, site_config_text
from simulators.tasks import cancel_and_wait
from simulators.truth import TruthMeter, WaveProfile

DEFAULT_MIX = "Antminer S19j Pro:braiins:2,Antminer S19j Pro:luxos:1,Antminer S21:braiins:1,Antminer S19 XP:luxos:1"
SPARK = " ▁▂▃▄▅▆▇█"


def spark(values: list[float], top: float) -> str:
    if top <= 0:
        return ""
    return "".join(
        SPARK[min(len(SPARK) - 1, max(0, round(v / top * (len(SPARK) - 1))))] for v in values
    )


def view(
    service: Service,
    meter: TruthMeter,
    budget_watts: float,
    draw_watts: float,
    elapsed: float,
    top: float,
) -> Group:
    d = service.loop.last
    table = Table(
        title=f"hashgov demo — {elapsed:5.0f} s  (Ctrl-C to stop)", show_header=False, expand=False
    )
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    table.add_row("plant grant (truth)", f"{budget_watts / 1000:8.1f} kW")
    table.add_row("true draw (meter)", f"{draw_watts / 1000:8.1f} kW")
    if d is not None:
        table.add_row(
            "controller budget", f"{d.capped_budget_watts / 1000:8.1f} kW ({d.budget.state})"
        )
        table.add_row("planned draw", f"{d.plan.planned_watts / 1000:8.1f} kW")
        counts: dict[str, int] = {}
        for m in d.fleet.miners:
            counts[str(m.status)] = counts.get(str(m.status), 0) + 1
        table.add_row("miners", ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    table.add_row("utilization so far", f"{meter.utilization:8.3f}")
    table.add_row("longest over-grant", f"{meter.longest_violation_s:8.1f} s")
    hist = list(meter.history)
    lines = Text()
    lines.append("grant " + spark([b for b, _ in hist], top) + "\n", style="green")
    lines.append("draw  " + spark([w for _, w in hist], top), style="cyan")
    return Group(table, lines)


async def run_demo(
    *,
    miners: int,
    duration_seconds: float | None,
    ui: bool,
    base_ip: str,
    time_scale: float,
    workdir: Path,
    trace: Callable[[float, float, float, Service], None] | None = None,
) -> dict[str, Any]:
    specs = make_specs(miners, DEFAULT_MIX, base_ip)
    broker = await start_broker()
    fleet = SimFleet(specs, time_scale=time_scale)
    try:
        await fleet.start()
        nameplate_kw = sum(fleet.miners[s.address].model.nameplate_watts for s in specs) / 1000
        config_path = workdir / "hashgov.toml"
        timing = SiteTiming(
            control_period_seconds=1.0,
            poll_interval_seconds=2.0,
            stale_after_seconds=5.0,
            grace_seconds=3.0,
            min_on_seconds=20.0,
            min_off_seconds=20.0,
            ramp_up_kw_per_second=max(20.0, nameplate_kw / 30),
            hysteresis_kw=max(1.0, nameplate_kw / 200),
            read_timeout_seconds=3.0,
            command_timeout_seconds=5.0,
            # the models' time constants are divided by K in the config (the physics
            # runs K times faster): so is the fast shed's deadline
            shed_deadline_seconds=1.0 / time_scale,
        )
        config_path.write_text(
            site_config_text(
                specs,
                broker_port=broker.port,
                state_dir=workdir / "state",
                grant_cap_kw=round(nameplate_kw * 1.1, 1),
                timing=timing,
                metrics_port=0,
                time_scale=time_scale,
            )
        )
        config = load_config(config_path)
        profile = WaveProfile(
            low_kw=nameplate_kw * 0.35, high_kw=nameplate_kw * 0.95, noise_kw=nameplate_kw * 0.02
        )
        publisher = PlantPublisher(
            config.mqtt.streams,
            profile,
            host=broker.host,
            port=broker.port,
            rate_hz=2.0,
            meter_watts=fleet.true_total_watts,
        )
        service = Service(config_path, options=ServiceOptions())
        service_task = asyncio.ensure_future(service.run())
        plant_task = asyncio.ensure_future(publisher.run())
        meter = TruthMeter()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        console = Console()
        try:
            await asyncio.wait_for(service.ready.wait(), 60)
            # our own handlers replace the service's: Ctrl-C ends the demo, which stops the service
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            live = Live(console=console, refresh_per_second=4, transient=False) if ui else None
            with live if live is not None else contextlib.nullcontext():
                while not stop.is_set():
                    t = time.monotonic() - started
                    if duration_seconds is not None and t >= duration_seconds:
                        break
                    sample = profile.value_at(t * publisher.time_scale)
                    grant_watts = (
                        min(config.site.grant_cap_watts, sample.surplus_kw * 1000)
                        - sample.other_load_kw * 1000
                    )
                    draw = fleet.true_total_watts()
                    meter.sample(t, draw, max(0.0, grant_watts))
                    if live is not None:
                        live.update(view(service, meter, grant_watts, draw, t, nameplate_kw * 1000))
                    if trace is not None:
                        trace(t, grant_watts, draw, service)
                    if service_task.done():
                        break
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 0.25)
        finally:
            service.request_stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(service_task, 15)
            await cancel_and_wait(plant_task)
        d = service.loop.last
        return {
            "miners": miners,
            "duration_s": round(time.monotonic() - started, 1),
            "utilization": round(meter.utilization, 4),
            "max_violation_s": round(meter.longest_violation_s, 2),
            "violation_ws": round(meter.violation_ws, 1),
            "mean_grant_kw": round(
                meter.budget_ws / max(1e-9, time.monotonic() - started) / 1000, 1
            ),
            "decisions": service.decisions,
            "broker": type(broker).__name__,
            "last_budget_state": None if d is None else d.budget.state,
        }
    finally:
        await fleet.stop()
        await broker.stop()


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        miners: int = typer.Option(200, min=1, max=3000, help="Simulated miners."),
        duration: float = typer.Option(
            0.0, min=0.0, help="Stop after S seconds (0: run until Ctrl-C)."
        ),
        no_ui: bool = typer.Option(False, "--no-ui", help="No live view (for scripts and CI)."),
        as_json: bool = typer.Option(
            False, "--json", help="Print the figures as one JSON object (last line)."
        ),
        base_ip: str = typer.Option(
            "127.77.0.1", help="First loopback address for the simulated miners."
        ),
        time_scale: float = typer.Option(
            10.0, min=1.0, help="Miner physics speed-up (boot minutes become seconds)."
        ),
    ) -> None:
        """Everything on one machine: broker, plant simulator, simulated fleet, controller — live."""
        with tempfile.TemporaryDirectory(prefix="hashgov-demo-") as tmp:
            workdir = Path(tmp)
            log_file = (workdir / "hashgov.log").open("w")
            configure_logging("json", "info", stream=log_file)
            try:
                figures = asyncio.run(
                    run_demo(
                        miners=miners,
                        duration_seconds=duration or None,
                        ui=not no_ui and sys.stdout.isatty(),
                        base_ip=base_ip,
                        time_scale=time_scale,
                        workdir=workdir,
                    )
                )
            except FleetError as exc:
                typer.echo(f"demo: {exc}", err=True)
                raise typer.Exit(2) from None
            except Exception as exc:
                typer.echo(f"demo failed: {exc!r} (log: kept below)", err=True)
                log_file.flush()
                sys.stderr.write((workdir / "hashgov.log").read_text()[-4000:])
                raise typer.Exit(1) from None
            finally:
                log_file.close()
        if as_json:
            print(json.dumps(figures))
        else:
            for key, value in figures.items():
                typer.echo(f"{key:>18}: {value}")
