"""Run one scenario against a fresh site: broker, plant, simulated fleet, a controller.

The controller is either hashgov as a CHILD PROCESS (`hashgov run --config`),
so its RSS and CPU seconds are its own, or the naive baseline in-process
(simulators.bench.scenario_naive). Truth (draw, hashrate, phase of every
miner) is sampled from the simulator, never from the controller's beliefs.

Time: simulated seconds t_sim = (real seconds since the measurement start) × K.
Before the start the plant holds its t = 0 value while the controller reads the
fleet and settles (warm-up, not measured).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiomqtt

from controller.catalog import find_model
from controller.config import HashgovConfig, load_config
from simulators.bench import scenario_faults
from simulators.bench.scenario_fleet import BenchFleet, make_fleet
from simulators.bench.scenario_spec import Scenario
from simulators.broker import Broker, free_port, start_broker
from simulators.miners.fleet import MinerSpec
from simulators.plant.profile import Profile
from simulators.plant.publisher import PlantPublisher
from simulators.site import SiteTiming, site_config_text

Progress = Callable[[str], None]
# `hashgov run`, but with pyasic imported first: pyasic's logger setup sets the root
# level to WARNING on import, which would otherwise silence the controller's info
# events (the "plan" event gives decide_ms) when the drivers import it lazily.
CONTROLLER_CMD = (
    sys.executable, "-c",
    "import sys, pyasic; from simulators.bench.scenario_faults import install_clock_hook; "
    "install_clock_hook(); from controller.cli import main; sys.argv[0] = 'hashgov'; main()",
)
ControllerKind = Literal["hashgov", "naive"]


@dataclass(frozen=True, slots=True)
class Drop:
    """A published grant lower than the one before it."""

    t_sim: float
    wall: float
    before_watts: float
    after_watts: float


@dataclass
class RunResult:
    label: ControllerKind
    miners: int
    time_scale: float
    nameplate_watts: float
    sleep_watts: float
    t: list[float] = field(default_factory=list)  # simulated seconds
    budget: list[float] = field(default_factory=list)  # true grant, W
    draw: list[float] = field(default_factory=list)  # true draw, W
    ths: list[float] = field(default_factory=list)  # true hashrate, TH/s
    planned: list[tuple[float, float, float]] = field(default_factory=list)  # t, planned, ctl budget
    drops: list[Drop] = field(default_factory=list)
    switches: int = 0
    controller: dict[str, Any] = field(default_factory=dict)
    log_path: Path | None = None
    faults: dict[str, Any] = field(default_factory=dict)  # scenario_faults.finish() figures
    recover_from_s: float | None = None  # end of the last fault window (simulated s)
    lost_overrides: int = 0
    status_docs: list[tuple[float, float, dict[str, Any]]] = field(default_factory=list)

    @property
    def sim_seconds(self) -> float:
        return self.t[-1] - self.t[0] if len(self.t) > 1 else 0.0


@dataclass
class _Timeline:
    time_scale: float
    t0: float | None = None  # monotonic start of the measurement
    grant_watts: float = 0.0  # the plant's true grant (latest tick, published or not)
    published_grant_watts: float | None = None  # what a listener last heard
    surplus_kw: float = 0.0  # the plant's true surplus (latest tick), for the flood's valid samples

    def t_sim(self, mono: float | None = None) -> float:
        if self.t0 is None:
            return 0.0
        return ((time.monotonic() if mono is None else mono) - self.t0) * self.time_scale


def grant_cap_kw(sc: Scenario, nameplate_kw: float) -> float:
    """The contract cap the scenario's controller (and its references) work under."""
    return round(nameplate_kw * sc.grant_cap_frac, 3)


def grant_watts(profile: Profile, t_sim: float, cap_watts: float) -> float:
    """The plant's true grant: min(cap, surplus) − other loads (never below 0).

    The controller's safety margin is NOT taken off: it is the site's own choice of
    headroom, so its cost shows in utilization and hashes."""
    s = profile.value_at(t_sim)
    return max(0.0, min(cap_watts, s.surplus_kw * 1000.0) - s.other_load_kw * 1000.0)


def scaled_timing(sc: Scenario, nameplate_kw: float) -> SiteTiming:
    """The controller's timing in real seconds for time scale K (see docs/benchmarks.md)."""
    k = sc.time_scale
    t = sc.timing
    publish_period = 1.0 / sc.publish_hz
    return SiteTiming(
        control_period_seconds=t.control_period_s,  # real: not compressible
        poll_interval_seconds=t.poll_interval_s,  # real: a poll takes real network time
        stale_after_seconds=round(max(t.stale_after_s / k, 4 * publish_period, 1.0), 3),
        grace_seconds=round(max(t.grace_s / k, publish_period), 3),
        min_on_seconds=round(t.min_on_s / k, 3),
        min_off_seconds=round(t.min_off_s / k, 3),
        ramp_up_kw_per_second=round(t.ramp_up_frac_per_s * nameplate_kw * k, 3),
        hysteresis_kw=round(max(0.1, t.hysteresis_frac * nameplate_kw), 3),
        read_timeout_seconds=3.0,
        command_timeout_seconds=5.0,
        # simulated, like the models' time constants the config divides by K
        shed_deadline_seconds=round(t.shed_deadline_s / k, 4),
        # the physics settle K times faster, so must the meter correction's release
        meter_release_seconds=round(max(t.meter_release_s / k, 0.5), 3),
        max_concurrency=max(1, round(t.max_concurrency)),
        detail_interval_seconds=t.detail_interval_s,  # real, like the poll interval
    )


def write_config(
    sc: Scenario, specs: list[MinerSpec], workdir: Path, broker: Broker, nameplate_kw: float
) -> Path:
    text = site_config_text(
        specs,
        broker_port=broker.port,
        broker_host=broker.host,
        state_dir=workdir / "state",
        grant_cap_kw=grant_cap_kw(sc, nameplate_kw),
        timing=scaled_timing(sc, nameplate_kw),
        safety_margin_kw=round(sc.timing.safety_margin_frac * nameplate_kw, 3),
        metrics_port=free_port(),  # fixed: a restarted controller serves the same port
        time_scale=sc.time_scale,
    )
    text = text.replace('format = "console"\nlevel = "warning"', 'format = "json"\nlevel = "info"')
    path = workdir / "hashgov.toml"
    path.write_text(text)
    return path


def write_series(run: RunResult, path: Path) -> None:
    """The truth series as CSV: t_sim_s, grant_watts, draw_watts, ths."""
    lines = ["t_sim_s,grant_watts,draw_watts,ths"]
    lines += [
        f"{t:.3f},{b:.1f},{d:.1f},{h:.2f}"
        for t, b, d, h in zip(run.t, run.budget, run.draw, run.ths, strict=True)
    ]
    path.write_text("\n".join(lines) + "\n")


# ------------------------------------------------------------------ /proc


def proc_figures(pid: int) -> dict[str, float]:
    """RSS high-water mark, RSS now (MiB) and CPU seconds (user+system) of a process."""
    out: dict[str, float] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(value.split()[0]) / 1024.0
    with contextlib.suppress(OSError, ValueError, IndexError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat.rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        out["cpu_s"] = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return out


# ------------------------------------------------------------------ tasks


async def _publish(
    sc: Scenario,
    publisher: PlantPublisher,
    broker: Broker,
    tl: _Timeline,
    profile: Profile,
    config: HashgovConfig,
    drops: list[Drop],
) -> None:
    period = 1.0 / sc.publish_hz
    cap = config.site.grant_cap_watts
    next_tick = time.monotonic()
    drop_threshold = 1.0  # W: any real drop counts as a shed event
    client: aiomqtt.Client | None = None
    stack = contextlib.AsyncExitStack()
    try:
        while True:
            t_sim = tl.t_sim()
            grant = grant_watts(profile, t_sim, cap)
            tl.surplus_kw = profile.value_at(t_sim).surplus_kw
            wall = time.time()
            before = tl.grant_watts
            tl.grant_watts = grant  # the grant is in force from its publication on
            sent = 0
            try:  # the broker may be down (fault events): the true grant still moves
                if client is None:
                    client = await stack.enter_async_context(aiomqtt.Client(
                        broker.host, broker.port, identifier=f"scenario-plant-{os.getpid()}"))
                sent = await publisher.tick(client, t_sim)
            except aiomqtt.MqttError:
                client = None
                await stack.aclose()
                stack = contextlib.AsyncExitStack()
            if sent:
                tl.published_grant_watts = grant
            if tl.t0 is not None and sent and grant < before - drop_threshold:
                drops.append(Drop(t_sim, wall, before, grant))
            next_tick += period
            await asyncio.sleep(max(0.0, next_tick - time.monotonic()))
    finally:  # bounded: a disconnect must not hang the run's teardown
        with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
            await asyncio.wait_for(stack.aclose(), 2.0)


async def _status(host: str, port: int, topic: str, tl: _Timeline, result: RunResult,
                  online: asyncio.Event) -> None:
    while True:  # reconnects: the broker may be killed by a fault event
        try:
            async with aiomqtt.Client(host, port,
                                      identifier=f"scenario-status-{os.getpid()}") as client:
                await client.subscribe(topic, qos=0)
                async for message in client.messages:
                    payload = message.payload
                    if not isinstance(payload, bytes):
                        continue
                    with contextlib.suppress(ValueError):
                        doc = json.loads(payload)
                        if isinstance(doc, dict) and tl.t0 is not None:
                            result.status_docs.append((tl.t_sim(), time.monotonic(), doc))
                        if isinstance(doc, dict) and doc.get("state") == "online":
                            online.set()
                            if tl.t0 is not None:
                                result.planned.append(
                                    (tl.t_sim(), float(doc.get("planned_watts") or 0.0),
                                     float(doc.get("effective_budget_watts") or 0.0))
                                )
        except aiomqtt.MqttError:
            await asyncio.sleep(0.2)


async def _faults(sc: Scenario, fleet: BenchFleet, tl: _Timeline, progress: Progress) -> None:
    rng = random.Random(sc.seed)
    addresses = [s.address for s in fleet.specs]
    pool = list(addresses)  # each miner gets at most one fault: shares are disjoint
    for spec in sorted(sc.faults, key=lambda f: f.at_s):
        wait_real = (spec.at_s - tl.t_sim()) / sc.time_scale
        if wait_real > 0:
            await asyncio.sleep(wait_real)
        n = max(1, math.ceil(spec.share * len(addresses) - 1e-9)) if spec.share > 0 else 0
        chosen = rng.sample(pool, min(n, len(pool)))
        pool = [a for a in pool if a not in chosen]
        await asyncio.gather(*(fleet.set_fault(a, spec.fault, **spec.params) for a in chosen))
        progress(f"t={tl.t_sim():.0f}s sim: fault {spec.fault} on {len(chosen)} miners")


async def _sample(sc: Scenario, fleet: BenchFleet, tl: _Timeline, result: RunResult,
                  progress: Progress, measuring: asyncio.Event) -> None:
    """Truth at sample_hz from the start (a sharded fleet's meter is this sample), recorded
    from the measurement start to the scenario's end."""
    transitions_at_start: int | None = None
    period = 1.0 / sc.sample_hz
    next_tick = time.monotonic()
    next_report = 0.0
    while True:
        now = time.monotonic()
        grant = tl.grant_watts
        truth = await fleet.truth()
        if not measuring.is_set():
            transitions_at_start = truth.transitions
            next_tick = max(next_tick + period, time.monotonic())
            await asyncio.sleep(max(0.0, next_tick - time.monotonic()))
            continue
        t_sim = tl.t_sim(now)
        if transitions_at_start is None:
            transitions_at_start = truth.transitions
        result.switches = truth.transitions - transitions_at_start
        result.t.append(t_sim)
        result.budget.append(grant)
        result.draw.append(truth.draw_watts)
        result.ths.append(truth.hashrate_ths)
        if t_sim >= next_report:
            progress(
                f"[{result.label}] t={t_sim:7.0f}/{sc.duration_s:.0f}s sim  grant "
                f"{grant / 1000:8.1f} kW  draw {truth.draw_watts / 1000:8.1f} kW"
            )
            next_report = t_sim + sc.duration_s / 10
        if t_sim >= sc.duration_s:
            return
        next_tick += period
        await asyncio.sleep(max(0.0, next_tick - time.monotonic()))


# ------------------------------------------------------------------ one run


def _fault_context(
    sc: Scenario, config: HashgovConfig, broker: Broker, fleet: BenchFleet,
    specs: list[MinerSpec], tl: _Timeline, result: RunResult, clock_file: Path,
    kill: Callable[[], Awaitable[None]], start: Callable[[], Awaitable[None]],
) -> scenario_faults.FaultContext:
    """What scenario_faults acts on (see simulators/bench/scenario_faults.py)."""
    from simulators.site import SURPLUS_TOPIC

    site = config.site
    return scenario_faults.FaultContext(
        time_scale=sc.time_scale,
        t_sim=tl.t_sim,
        broker=broker,
        fleet=fleet,
        miner_names=[s.name or s.address for s in specs],  # as site_config_text names them
        nameplate_kw=result.nameplate_watts / 1000.0,
        max_nameplate_watts=max(find_model(s.model, s.firmware).nameplate_watts for s in specs),
        command_topic=f"{config.mqtt.topic_prefix}/command",
        surplus_topic=SURPLUS_TOPIC,
        surplus_kw=lambda: tl.surplus_kw,
        state_dir=site.state_dir,
        log_path=result.log_path or Path(os.devnull),
        clock_file=clock_file,
        kill_controller=kill,
        start_controller=start,
        status_docs=result.status_docs,
        failsafe_after_s=(site.stale_after_seconds + site.grace_seconds) * sc.time_scale,
        ramp_w_per_real_s=site.ramp_up_kw_per_second * 1000.0,
        control_period_real_s=site.control_period_seconds,
        metrics=scenario_faults.MetricsWatch(config.metrics.listen, config.metrics.port, tl.t_sim),
    )



async def run_site(
    sc: Scenario,
    profile: Profile,
    specs: list[MinerSpec],
    workdir: Path,
    kind: ControllerKind,
    progress: Progress,
) -> RunResult:
    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    broker = await start_broker()
    fleet = make_fleet(specs, sc.time_scale, sc.shards, workdir)
    tasks: list[asyncio.Task[Any]] = []
    child: asyncio.subprocess.Process | None = None
    deliberate: set[int] = set()  # pids killed by a fault event (not an early exit)
    try:
        progress(f"[{kind}] starting {len(specs)} simulated miners")
        await fleet.start()
        models = [find_model(s.model, s.firmware) for s in specs]
        nameplate_w = float(sum(m.nameplate_watts for m in models))
        result = RunResult(kind, len(specs), sc.time_scale, nameplate_w,
                           float(sum(m.sleep_watts for m in models)))
        config_path = write_config(sc, specs, workdir, broker, nameplate_w / 1000)
        config = load_config(config_path)
        tl = _Timeline(sc.time_scale)
        publisher = PlantPublisher(
            config.mqtt.streams, profile, host=broker.host, port=broker.port,
            rate_hz=sc.publish_hz, time_scale=sc.time_scale, meter_watts=fleet.meter_watts,
        )
        clock_file = workdir / "clock_offset"
        clock_file.write_text("0.0")
        log_path = workdir / "hashgov.log"
        respawned = asyncio.Event()

        async def start_child() -> None:
            nonlocal child
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            if any(e.kind == "clock_step" for e in sc.events):
                env[scenario_faults.CLOCK_ENV] = str(clock_file)
            with log_path.open("ab") as log_file:
                child = await asyncio.create_subprocess_exec(
                    *CONTROLLER_CMD, "run", "--config", str(config_path),
                    stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=log_file, env=env,
                )
            respawned.set()

        async def kill_child() -> None:
            if child is not None and child.returncode is None:
                deliberate.add(child.pid)
                child.kill()
                await child.wait()

        async def child_exit() -> None:
            """Returns when the controller exits on its own (not when a fault event kills it)."""
            while True:
                proc = child
                if proc is None:
                    await asyncio.sleep(0.1)
                    continue
                await proc.wait()
                if proc.pid not in deliberate:
                    return
                await respawned.wait()  # a fault event killed it: watch the next one
                respawned.clear()

        tasks.append(asyncio.create_task(
            _publish(sc, publisher, broker, tl, profile, config, result.drops)))
        measuring = asyncio.Event()
        sampler = asyncio.create_task(_sample(sc, fleet, tl, result, progress, measuring))
        tasks.append(sampler)
        online = asyncio.Event()
        if kind == "hashgov":
            tasks.append(asyncio.create_task(_status(
                broker.host, broker.port, f"{config.mqtt.topic_prefix}/status", tl, result,
                online)))
            result.log_path = log_path
            log_path.write_bytes(b"")
            await start_child()
            assert child is not None
            progress(f"[hashgov] controller pid {child.pid}, waiting for its first status")
            waiter = asyncio.ensure_future(online.wait())
            ended = asyncio.ensure_future(child.wait())
            await asyncio.wait({waiter, ended}, timeout=120 + len(specs) / 20,
                               return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            ended.cancel()
            if not online.is_set():
                raise RuntimeError(f"controller never came online (log: {log_path})")
        else:
            from simulators.bench.scenario_naive import NaiveController

            naive = NaiveController(config, sc, lambda: tl.published_grant_watts)
            tasks.append(asyncio.create_task(naive.run()))
        await asyncio.sleep(sc.warmup_real_s)
        before = proc_figures(child.pid) if child is not None else {}
        tl.t0 = time.monotonic()
        measuring.set()
        progress(f"[{kind}] measuring {sc.duration_s:.0f}s sim = {sc.real_duration_s:.0f}s real")
        tasks.append(asyncio.create_task(_faults(sc, fleet, tl, progress)))
        ctx: scenario_faults.FaultContext | None = None
        if kind == "hashgov" and (sc.events or sc.faults):
            ctx = _fault_context(sc, config, broker, fleet, specs, tl, result, clock_file,
                                 kill_child, start_child)
            tasks.append(asyncio.create_task(ctx.metrics.run()))
            tasks.append(asyncio.create_task(scenario_faults.run_events(ctx, sc.events)))
        exited = asyncio.create_task(child_exit()) if kind == "hashgov" else None
        watch = [sampler] + ([exited] if exited is not None else [])
        await asyncio.wait(watch, return_when=asyncio.FIRST_COMPLETED)
        if exited is not None:
            exited.cancel()
        if not sampler.done():
            sampler.cancel()
            raise RuntimeError(f"controller exited early (log: {result.log_path})")
        sampler.result()
        if ctx is not None:
            result.faults = scenario_faults.finish(ctx)
            result.lost_overrides = ctx.lost_overrides
            result.recover_from_s = (
                sc.recover_from_s if sc.recover_from_s is not None
                else result.faults.get("recover_from_s"))
            progress(f"[hashgov] fault figures: {json.dumps(result.faults)}")
        elif sc.recover_from_s is not None:
            result.recover_from_s = sc.recover_from_s
        if child is not None:
            after = proc_figures(child.pid)
            result.controller = {
                "rss_mib": round(after.get("VmHWM", 0.0), 1),
                "rss_now_mib": round(after.get("VmRSS", 0.0), 1),
                "cpu_s": round(after.get("cpu_s", 0.0), 2),
                "cpu_s_measured": round(after.get("cpu_s", 0.0) - before.get("cpu_s", 0.0), 2),
            }
        await asyncio.to_thread(write_series, result, workdir / "series.csv")
        return result
    finally:
        for task in tasks:
            task.cancel()
        if tasks:  # bounded: a fault event's thread (flood) cannot be cancelled
            done, _pending = await asyncio.wait(tasks, timeout=10.0)
            for task in done:
                if not task.cancelled():
                    task.exception()  # retrieved: the run's own error, if any, is raised
        if child is not None and child.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                child.terminate()
            try:
                await asyncio.wait_for(child.wait(), 20)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    child.kill()
                await child.wait()
        await fleet.stop()
        await broker.stop()
