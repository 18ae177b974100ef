"""`hashgov sim miners`: run a simulated fleet until Ctrl-C / SIGTERM."""

from __future__ import annotations

import asyncio
import resource
import signal
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

DEFAULT_MIX = "Antminer S19j Pro:braiins:1"


def _fail(argument: str, message: str) -> typer.Exit:
    typer.echo(f"error: {argument}: {message}", err=True)
    return typer.Exit(code=2)


def register(sim_app: typer.Typer) -> None:
    @sim_app.command("miners")
    def miners(
        count: Annotated[int, typer.Option("--count", min=1, help="Number of miners.")] = 10,
        mix: Annotated[
            str, typer.Option("--mix", help="MODEL:FIRMWARE:SHARE[,...] (firmware luxos|braiins).")
        ] = DEFAULT_MIX,
        base_ip: Annotated[
            str, typer.Option("--base-ip", help="First loopback IP; one IP per miner.")
        ] = "127.1.0.1",
        time_scale: Annotated[
            float, typer.Option("--time-scale", help="Speed-up K: boot and ramps take 1/K.")
        ] = 1.0,
        inventory_out: Annotated[
            Path | None, typer.Option("--inventory-out", help="Write a TOML [[miners]] inventory.")
        ] = None,
        admin_port: Annotated[
            int | None, typer.Option("--admin-port", help="Admin HTTP API port on 127.0.0.1.")
        ] = None,
        sleeping: Annotated[
            bool, typer.Option("--sleeping", help="Start every miner asleep.")
        ] = False,
        inventory_in: Annotated[
            Path | None,
            typer.Option("--inventory", help="Serve exactly these miners (a TOML [[miners]] "
                         "inventory); replaces --count, --mix and --base-ip."),
        ] = None,
    ) -> None:
        """Simulated LuxOS / Braiins OS+ miners that pyasic cannot tell from real ones."""
        from simulators.miners.fleet import (
            FleetError,
            SimFleet,
            make_specs,
            parse_mix,
            read_inventory,
            write_inventory,
        )

        if not time_scale > 0:
            raise _fail("--time-scale", f"must be > 0, got {time_scale}")
        try:
            parse_mix(mix)
        except FleetError as exc:
            raise _fail("--mix", str(exc)) from None
        if inventory_in is not None:
            try:
                specs = read_inventory(inventory_in)
            except FleetError as exc:
                raise _fail("--inventory", str(exc)) from None
        else:
            try:
                specs = make_specs(count, mix, base_ip)
            except FleetError as exc:
                raise _fail("--base-ip", str(exc)) from None
        if inventory_out is not None:
            try:
                write_inventory(specs, inventory_out)
            except OSError as exc:
                raise _fail("--inventory-out", f"cannot write {inventory_out}: {exc.strerror}") from None

        async def run() -> None:
            started = time.monotonic()
            fleet = SimFleet(specs, time_scale=time_scale, start_mining=not sleeping,
                             admin_port=admin_port)
            await fleet.start()
            try:
                rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                admin = (f"admin http://127.0.0.1:{fleet.admin_port}/miners"
                         if fleet.admin_port is not None else "admin off")
                firmwares = ", ".join(
                    f"{sum(1 for s in specs if s.firmware == fw)} {fw}" for fw in ("luxos", "braiins")
                )
                typer.echo(
                    f"hashgov sim miners: {len(specs)} miners ({firmwares}) on "
                    f"{specs[0].address}..{specs[-1].address} ports 4028 (+50051 braiins); "
                    f"{admin}; time scale {time_scale:g}; started in "
                    f"{time.monotonic() - started:.1f} s, RSS {rss_mb:.0f} MB; Ctrl-C to stop",
                    err=False,
                )
                sys.stdout.flush()
                stop = asyncio.Event()
                loop = asyncio.get_running_loop()
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.add_signal_handler(sig, stop.set)
                await stop.wait()
            finally:
                await fleet.stop()

        try:
            asyncio.run(run())
        except FleetError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(code=1) from None
        except KeyboardInterrupt:
            pass
