"""`hashgov bench poll`: hashgov's FleetPoller against bare pyasic, same run, same miners.

Starts N simulated miners (by default in a child process, so the miners' CPU is
not charged to the poller; --sim-in-process keeps one process), builds one
PyasicDriver per miner, then alternates

  (a) FleetPoller.poll()                                   -> hashgov_poll_s
  (b) asyncio.gather(*(m.get_data(include=...) ...))       -> bare_pyasic_poll_s

over the very same pyasic objects and include lists, ``--repeats`` times each,
and reports the medians. (c) a bare full ``get_data()`` (no include) once, as
``bare_pyasic_full_poll_s``, unless --no-full. Progress goes to stderr; the last
stdout line is one JSON object.
"""

from __future__ import annotations

import asyncio
import gc
import json
import multiprocessing as mp
import resource
import statistics
import sys
import time
from collections.abc import Sequence
from multiprocessing.synchronize import Event as EventType
from typing import Any

import typer

from drivers.open_files import raise_open_files_limit

DEFAULT_MIX = "Antminer S19j Pro:luxos:1,Antminer S19j Pro:braiins:1"


def _progress(message: str) -> None:
    print(f"[bench poll] {message}", file=sys.stderr, flush=True)


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ------------------------------------------------------------------ simulator


def _serve_fleet(
    specs: Sequence[Any], time_scale: float, ready: EventType, stop: EventType
) -> None:
    from simulators.miners.fleet import SimFleet

    raise_open_files_limit()

    async def run() -> None:
        async with SimFleet(specs, time_scale=time_scale):
            ready.set()
            await asyncio.to_thread(stop.wait)  # a process Event: block a thread, not the loop

    asyncio.run(run())


class _ChildFleet:
    def __init__(self, specs: Sequence[Any], time_scale: float) -> None:
        ctx = mp.get_context("spawn")
        self._ready = ctx.Event()
        self._stop = ctx.Event()
        self._proc = ctx.Process(
            target=_serve_fleet, args=(list(specs), time_scale, self._ready, self._stop), daemon=True
        )

    async def __aenter__(self) -> _ChildFleet:
        self._proc.start()
        deadline = time.monotonic() + 300
        while not self._ready.is_set():
            if not self._proc.is_alive():
                raise RuntimeError(f"simulator process exited with code {self._proc.exitcode}")
            if time.monotonic() > deadline:
                raise RuntimeError("simulator did not start within 300 s")
            await asyncio.sleep(0.1)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        await asyncio.to_thread(self._proc.join, 10)
        if self._proc.is_alive():
            self._proc.terminate()


# ------------------------------------------------------------------ benchmark


async def _timed(coro: Any) -> tuple[float, Any]:
    gc.collect()
    started = time.perf_counter()
    result = await coro
    return time.perf_counter() - started, result


async def run_bench(
    miners: int,
    mix: str,
    base_ip: str,
    repeats: int,
    full: bool,
    sim_in_process: bool,
    max_concurrency: int,
    read_timeout_seconds: float,
) -> dict[str, Any]:
    from controller.catalog import find_model
    from controller.clock import SystemClock
    from controller.config import MinerConfig
    from drivers.base import close_drivers
    from drivers.poller import FleetPoller
    from drivers.pyasic_driver import DriverSettings, PyasicDriver
    from simulators.miners.fleet import SimFleet, make_specs

    nofile = raise_open_files_limit()
    _progress(f"RLIMIT_NOFILE={nofile}; starting {miners} simulated miners ({mix})")
    specs = make_specs(miners, mix, base_ip)
    clock = SystemClock()
    settings = DriverSettings(read_timeout_seconds=read_timeout_seconds)
    drivers = {
        spec.name or spec.address: PyasicDriver(
            MinerConfig(address=spec.address, model=spec.model, firmware=spec.firmware, name=spec.name),
            model=find_model(spec.model, spec.firmware),
            settings=settings,
            clock=clock,
        )
        for spec in specs
    }
    fleet_cm: Any = SimFleet(specs) if sim_in_process else _ChildFleet(specs, 1.0)
    started = time.perf_counter()
    async with fleet_cm:
        _progress(f"simulator up in {time.perf_counter() - started:.1f} s")
        poller = FleetPoller(
            drivers, max_concurrency=max_concurrency, read_timeout_seconds=read_timeout_seconds,
            clock=clock,
        )
        # plain pyasic: its own objects (the drivers' keep a BOSer gRPC connection)
        objects = [type(m)(m.ip) for m in [await d.pyasic_miner() for d in drivers.values()]]
        includes = [list(d.read_include) for d in drivers.values()]

        async def bare() -> list[Any]:
            return await asyncio.gather(
                *(m.get_data(include=inc) for m, inc in zip(objects, includes, strict=True)),
                return_exceptions=True,
            )

        # warm-up: BOSer logins, identity reads, import costs
        await poller.poll()
        await poller.poll()
        includes = [list(d.read_include) for d in drivers.values()]
        await bare()
        hashgov_s: list[float] = []
        bare_s: list[float] = []
        reachable = 0
        missed = 0
        bare_errors = 0
        for i in range(repeats):
            t, snap = await _timed(poller.poll())
            hashgov_s.append(t)
            reachable = snap.reachable_count
            missed = len(snap.missed)
            t, results = await _timed(bare())
            bare_s.append(t)
            bare_errors = sum(1 for r in results if isinstance(r, BaseException))
            _progress(
                f"round {i + 1}/{repeats}: hashgov {hashgov_s[-1]:.3f} s "
                f"({reachable}/{miners} reachable, {missed} missed), bare {bare_s[-1]:.3f} s ({bare_errors} errors)"
            )
        full_s: float | None = None
        if full:
            full_s, _ = await _timed(
                asyncio.gather(*(m.get_data() for m in objects), return_exceptions=True)
            )
            _progress(f"bare full get_data: {full_s:.3f} s")
        await close_drivers(drivers.values())
    hashgov_med = statistics.median(hashgov_s)
    bare_med = statistics.median(bare_s)
    return {
        "miners": miners,
        "mix": mix,
        "repeats": repeats,
        "max_concurrency": max_concurrency,
        "sim_in_process": sim_in_process,
        "hashgov_poll_s": round(hashgov_med, 4),
        "bare_pyasic_poll_s": round(bare_med, 4),
        "ratio": round(hashgov_med / bare_med, 3) if bare_med > 0 else None,
        "hashgov_poll_runs_s": [round(x, 4) for x in hashgov_s],
        "bare_pyasic_poll_runs_s": [round(x, 4) for x in bare_s],
        "bare_pyasic_full_poll_s": round(full_s, 4) if full_s is not None else None,
        "reachable": reachable,
        "missed_deadline": missed,
        "poll_deadline_s": read_timeout_seconds + 0.5,
        "bare_errors": bare_errors,
        "rss_mib": round(_rss_mib(), 1),
    }


def register(bench_app: typer.Typer) -> None:
    @bench_app.command("poll")
    def poll(
        miners: int = typer.Option(1000, "--miners", min=1, help="Number of simulated miners."),
        mix: str = typer.Option(DEFAULT_MIX, "--mix", help="MODEL:FIRMWARE:SHARE[,...]"),
        base_ip: str = typer.Option("127.3.0.1", "--base-ip", help="First loopback address."),
        repeats: int = typer.Option(3, "--repeats", min=1, help="Timed rounds of each variant."),
        full: bool = typer.Option(True, "--full/--no-full", help="Also time a bare full get_data."),
        sim_in_process: bool = typer.Option(
            False, "--sim-in-process", help="Run the simulator in this process (one core)."
        ),
        max_concurrency: int = typer.Option(
            256, "--max-concurrency", min=1, help="FleetPoller concurrency (fleet.max_concurrency)."
        ),
        read_timeout_seconds: float = typer.Option(8.0, "--read-timeout", help="Per-miner read timeout."),
        as_json: bool = typer.Option(True, "--json/--no-json", help="Print the JSON result line."),
    ) -> None:
        """Time hashgov's fleet poll against bare pyasic get_data over the same miners."""
        result = asyncio.run(
            run_bench(
                miners, mix, base_ip, repeats, full, sim_in_process, max_concurrency,
                read_timeout_seconds,
            )
        )
        if as_json:
            print(json.dumps(result))
        else:
            for key, value in result.items():
                print(f"{key}: {value}")
