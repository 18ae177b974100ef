"""Fault events a scenario schedules on a live site, executed by the scenario runner.

A scenario's ``[[events]]`` (simulated seconds after the measurement start)::

    [[events]]
    kind = "broker_down"        # SIGKILL the broker, start it again after duration_s
    at_s = 60.0
    duration_s = 30.0

Kinds: ``broker_down``; ``controller_kill`` (SIGKILL the controller child, start a
new one after duration_s); ``operator`` (publish operator commands: params
``cap_frac`` of nameplate, ``pin`` = [fleet indexes]); ``flood`` (a second
publisher floods the surplus topic for duration_s: params ``rate_hz``,
``garbage_frac``); ``clock_step`` (step the controller's WALL clock by params
``step_s`` for duration_s — the controller child runs with ``install_clock_hook``,
which makes ``time.time()`` read an offset file; monotonic time is untouched,
as with an NTP step).

While the run lasts, ``MetricsWatch`` polls the controller's /metrics (10 Hz
real) so the fail-safe gauge, loop iterations and rejected-sample counters are
read from the controller itself. ``finish()`` turns the record into figures.
Pure helpers (``recover_s``, ``parse_metrics``, ``parse_events``) are unit-testable.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from simulators.http_get import http_request

if TYPE_CHECKING:
    from simulators.bench.scenario_fleet import BenchFleet
    from simulators.broker import Broker

EVENT_KINDS = ("broker_down", "controller_kill", "operator", "flood", "clock_step")
CLOCK_ENV = "HASHGOV_BENCH_CLOCK_OFFSET_FILE"
RECOVER_BAND_FRAC = 0.10  # "back within 10 % of the grant": (1 − 0.10)·grant ≤ draw ...
RECOVER_OVER_FRAC = 0.005  # ... ≤ 1.005·grant (the exponential settling tail, never more)
RECOVER_HOLD_S = 10.0  # ... and staying there for 10 simulated seconds
FLOOD_GARBAGE = (b"NaN", b'{"surplus_kw": "lots"}', b"{", b'{"surplus_kw": 1e12}', b"\xff\xfe")


class EventError(ValueError):
    """A bad [[events]] entry."""


@dataclass(frozen=True, slots=True)
class EventSpec:
    kind: str
    at_s: float  # simulated seconds after the measurement start
    duration_s: float = 0.0  # simulated
    params: dict[str, Any] = field(default_factory=dict)


def parse_events(raw: Any) -> tuple[EventSpec, ...]:
    if not isinstance(raw, list):
        raise EventError("events: expected an array of tables [[events]]")
    out: list[EventSpec] = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or item.get("kind") not in EVENT_KINDS:
            raise EventError(f"events[{i}].kind: expected one of {', '.join(EVENT_KINDS)}")
        at = item.get("at_s", 0.0)
        dur = item.get("duration_s", 0.0)
        if not isinstance(at, int | float) or not isinstance(dur, int | float) or at < 0 or dur < 0:
            raise EventError(f"events[{i}]: at_s and duration_s must be numbers >= 0")
        params = item.get("params", {})
        if not isinstance(params, dict):
            raise EventError(f"events[{i}].params: expected a table")
        out.append(EventSpec(str(item["kind"]), float(at), float(dur), dict(params)))
    return tuple(out)


# ------------------------------------------------------------------ pure helpers


def recover_s(t: Sequence[float], draw: Sequence[float], grant: Sequence[float], from_s: float,
              band_frac: float = RECOVER_BAND_FRAC, hold_s: float = RECOVER_HOLD_S) -> float | None:
    """Simulated seconds from ``from_s`` until true draw is within ``band_frac`` BELOW
    the grant ((1 − band)·grant ≤ draw ≤ (1 + RECOVER_OVER_FRAC)·grant: over the grant
    is not recovered) and stays there for ``hold_s`` (or to the run's end, if that
    comes first after at least one sample). None: never."""
    start: float | None = None
    for ti, d, g in zip(t, draw, grant, strict=True):
        if ti < from_s:
            continue
        if (1.0 - band_frac) * g <= d <= g + RECOVER_OVER_FRAC * max(g, 1.0):
            if start is None:
                start = ti
            if ti - start >= hold_s:
                return max(0.0, start - from_s)
        else:
            start = None
    return None if start is None else max(0.0, start - from_s)


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text → {name{labels}: value} (comments skipped)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            out[key] = float(value)
    return out


def metric_sum(metrics: dict[str, float], name: str) -> float:
    return sum(v for k, v in metrics.items() if k == name or k.startswith(name + "{"))


def install_clock_hook() -> None:
    """In the controller child: make time.time() add the offset in $HASHGOV_BENCH_CLOCK_OFFSET_FILE.

    Only wall time moves (as an NTP step would); time.monotonic() is untouched. No-op
    unless the variable is set. No root needed: the child patches its own time module.
    """
    path = os.environ.get(CLOCK_ENV)
    if not path:
        return
    real = time.time
    offset = [0.0]

    def read() -> None:
        with contextlib.suppress(OSError, ValueError):
            offset[0] = float(Path(path).read_text() or 0.0)

    def poll() -> None:
        while True:
            read()
            time.sleep(0.02)

    read()
    threading.Thread(target=poll, name="bench-clock", daemon=True).start()
    time.time = lambda: real() + offset[0]


# ------------------------------------------------------------------ runtime


@dataclass(frozen=True, slots=True)
class MetricsSample:
    t_sim: float
    mono: float
    fail_safe: bool
    loops: float
    rejected: float
    rejected_by: dict[str, float]
    meter_gap_w: float = 0.0
    mqtt_connected: bool = True


class MetricsWatch:
    """Polls the controller's /metrics at ``hz`` real; a failed fetch (controller down) is skipped."""

    def __init__(self, host: str, port: int, t_sim: Callable[[], float], hz: float = 10.0) -> None:
        self.host, self.port, self.t_sim, self.period = host, port, t_sim, 1.0 / hz
        self.samples: list[MetricsSample] = []

    async def fetch(self) -> dict[str, float] | None:
        try:
            _status, body = await http_request(self.host, self.port, "GET", "/metrics",
                                               timeout_seconds=2.0)
        except (OSError, TimeoutError):
            return None
        return parse_metrics(body.decode(errors="replace"))

    async def run(self) -> None:
        while True:
            m = await self.fetch()
            if m is not None:
                by = {k: v for k, v in m.items() if k.startswith("hashgov_telemetry_rejected_total")}
                self.samples.append(MetricsSample(
                    self.t_sim(), time.monotonic(), m.get("hashgov_fail_safe_active", 0.0) > 0,
                    metric_sum(m, "hashgov_control_loop_duration_seconds_count"),
                    metric_sum(m, "hashgov_telemetry_rejected_total"), by,
                    m.get("hashgov_meter_model_gap_watts", 0.0),
                    m.get("hashgov_mqtt_connected", 0.0) > 0))
            await asyncio.sleep(self.period)


@dataclass
class FaultContext:
    """What the events act on; built by the runner (hashgov runs only)."""

    time_scale: float
    t_sim: Callable[[], float]
    broker: Broker
    fleet: BenchFleet
    miner_names: list[str]
    nameplate_kw: float
    max_nameplate_watts: float  # of the largest miner
    command_topic: str
    surplus_topic: str
    surplus_kw: Callable[[], float]  # the plant's true surplus now
    state_dir: Path
    log_path: Path
    clock_file: Path
    kill_controller: Callable[[], Awaitable[None]]
    start_controller: Callable[[], Awaitable[None]]
    status_docs: list[tuple[float, float, dict[str, Any]]]  # (t_sim, mono, doc)
    failsafe_after_s: float  # stale_after + grace, simulated
    ramp_w_per_real_s: float
    control_period_real_s: float
    metrics: MetricsWatch
    windows: list[tuple[str, float, float, float, float]] = field(default_factory=list)
    # (kind, start t_sim, end t_sim, start mono, end mono)
    figures: dict[str, Any] = field(default_factory=dict)
    lost_overrides: int = 0
    overrides_set: dict[str, Any] = field(default_factory=dict)


def _sleep_real(ctx: FaultContext, until_sim: float) -> Awaitable[None]:
    return asyncio.sleep(max(0.0, (until_sim - ctx.t_sim()) / ctx.time_scale))


async def _publish(ctx: FaultContext, docs: list[dict[str, Any]]) -> None:
    import aiomqtt

    async with aiomqtt.Client(ctx.broker.host, ctx.broker.port,
                              identifier=f"scenario-operator-{os.getpid()}") as client:
        for doc in docs:
            await client.publish(ctx.command_topic, json.dumps(doc).encode(), qos=1)


def _operator_file(ctx: FaultContext) -> dict[str, Any]:
    with contextlib.suppress(OSError, ValueError):
        doc = json.loads((ctx.state_dir / "operator.json").read_text())
        if isinstance(doc, dict):
            return doc
    return {}


async def _operator(ctx: FaultContext, ev: EventSpec) -> None:
    docs: list[dict[str, Any]] = []
    if "cap_frac" in ev.params:
        cap_kw = round(float(ev.params["cap_frac"]) * ctx.nameplate_kw, 3)
        docs.append({"id": "bench-cap", "command": "set_cap", "cap_kw": cap_kw})
        ctx.overrides_set["cap_watts"] = cap_kw * 1000.0
    pins = [ctx.miner_names[int(i) % len(ctx.miner_names)] for i in ev.params.get("pin", [])]
    for name in pins:
        docs.append({"id": f"bench-pin-{name}", "command": "pin", "miner": name})
    ctx.overrides_set.setdefault("pinned", []).extend(pins)
    await _publish(ctx, docs)
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:  # until it is on disk (the controller persisted it)
        doc = _operator_file(ctx)
        if doc.get("cap_watts") == ctx.overrides_set.get("cap_watts") and set(pins) <= set(
                doc.get("pinned", [])):
            break
        await asyncio.sleep(0.05)
    ctx.figures["operator_persisted"] = bool(_operator_file(ctx))


def _log_events(path: Path, offset: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    with contextlib.suppress(OSError), path.open("rb") as fh:
        fh.seek(offset)
        for line in fh:
            with contextlib.suppress(ValueError):
                doc = json.loads(line)
                if isinstance(doc, dict):
                    out.append(doc)
    return out


async def _controller_kill(ctx: FaultContext, ev: EventSpec) -> None:
    start_sim, start_mono = ctx.t_sim(), time.monotonic()
    await ctx.kill_controller()
    await _sleep_real(ctx, ev.at_s + ev.duration_s)
    present = (await ctx.fleet.truth()).draw_watts
    offset = ctx.log_path.stat().st_size if ctx.log_path.exists() else 0
    n_docs = len(ctx.status_docs)
    end_sim, end_mono = ctx.t_sim(), time.monotonic()
    await ctx.start_controller()
    first: dict[str, Any] | None = None
    deadline = time.monotonic() + 90.0
    while first is None and time.monotonic() < deadline:
        first = next((d for _, m, d in ctx.status_docs[n_docs:]
                      if m >= end_mono and d.get("state") == "online"), None)
        await asyncio.sleep(0.05)
    ctx.windows.append(("controller_kill", start_sim, end_sim, start_mono, end_mono))
    events = _log_events(ctx.log_path, offset)
    names = [e.get("event") for e in events]
    restored = next((e for e in events if e.get("event") == "operator_state_restored"), None)
    lost = 0
    want_cap = ctx.overrides_set.get("cap_watts")
    if want_cap is not None:
        got_cap = first.get("cap_watts") if first is not None else None
        lost += got_cap != want_cap
    got_pins = set(restored.get("pinned", [])) if restored is not None else set()
    lost += len(set(ctx.overrides_set.get("pinned", [])) - got_pins)
    ctx.lost_overrides += lost
    read_at = names.index("fleet_read") if "fleet_read" in names else None
    plan_at = names.index("plan") if "plan" in names else None
    ctx.figures.update({
        "restart_online": first is not None,
        "restart_to_online_real_s": round(
            next((m for _, m, d in ctx.status_docs[n_docs:]
                  if m >= end_mono and d.get("state") == "online"), end_mono) - end_mono, 2),
        "restart_read_fleet_first": read_at is not None and (plan_at is None or read_at < plan_at),
        "restart_present_draw_w": round(present, 1),
        "restart_first_planned_w": None if first is None else first.get("planned_watts"),
        "restart_jump_w": None if first is None else round(
            float(first.get("planned_watts") or 0.0) - present, 1),
        "restart_jump_allowed_w": round(
            ctx.ramp_w_per_real_s * (1.0 + 1.5 * ctx.control_period_real_s)
            + ctx.max_nameplate_watts, 1),
        "overrides_set": sum(len(v) if isinstance(v, list) else 1
                             for v in ctx.overrides_set.values()),
    })


async def _broker_down(ctx: FaultContext, ev: EventSpec) -> None:
    start_sim, start_mono = ctx.t_sim(), time.monotonic()
    await ctx.broker.kill()
    await _sleep_real(ctx, ev.at_s + ev.duration_s)
    end_sim, end_mono = ctx.t_sim(), time.monotonic()
    await ctx.broker.start()
    ctx.windows.append(("broker_down", start_sim, end_sim, start_mono, end_mono))


def _flood_thread(ctx: FaultContext, seconds: float, rate: float, garbage_frac: float,
                  sent: dict[str, int]) -> None:
    import aiomqtt

    async def run() -> None:
        async with aiomqtt.Client(ctx.broker.host, ctx.broker.port,
                                  identifier=f"scenario-flood-{os.getpid()}",
                                  max_queued_outgoing_messages=0) as client:
            start = time.monotonic()
            i = 0
            garbage_every = max(1, round(1.0 / garbage_frac)) if garbage_frac > 0 else 0
            while time.monotonic() - start < seconds:
                for _ in range(20):
                    if garbage_every and i % garbage_every == 0:
                        payload = FLOOD_GARBAGE[(i // garbage_every) % len(FLOOD_GARBAGE)]
                        sent["garbage"] += 1
                    else:
                        payload = json.dumps(
                            {"surplus_kw": ctx.surplus_kw(), "ts": time.time()}).encode()
                        sent["valid"] += 1
                    await client.publish(ctx.surplus_topic, payload, qos=0)
                    i += 1
                await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))

    asyncio.run(run())


async def _flood(ctx: FaultContext, ev: EventSpec) -> None:
    sent = {"garbage": 0, "valid": 0}
    rate = float(ev.params.get("rate_hz", 2000.0))
    frac = float(ev.params.get("garbage_frac", 0.5))
    start_sim, start_mono = ctx.t_sim(), time.monotonic()
    await asyncio.to_thread(_flood_thread, ctx, ev.duration_s / ctx.time_scale, rate, frac, sent)
    end_sim, end_mono = ctx.t_sim(), time.monotonic()
    ctx.windows.append(("flood", start_sim, end_sim, start_mono, end_mono))
    ctx.figures.update({
        "flood_sent": sent["garbage"] + sent["valid"],
        "flood_garbage_sent": sent["garbage"],
        "flood_rate_per_real_s": round((sent["garbage"] + sent["valid"])
                                       / max(1e-9, end_mono - start_mono)),
    })


async def _clock_step(ctx: FaultContext, ev: EventSpec) -> None:
    step = float(ev.params.get("step_s", 3600.0))

    def shift(by: float) -> None:
        try:
            now = float(ctx.clock_file.read_text() or 0.0)
        except (OSError, ValueError):
            now = 0.0
        tmp = ctx.clock_file.with_suffix(".tmp")
        tmp.write_text(repr(now + by))
        tmp.replace(ctx.clock_file)

    start_sim, start_mono = ctx.t_sim(), time.monotonic()
    shift(step)
    if ev.duration_s > 0:
        await _sleep_real(ctx, ev.at_s + ev.duration_s)
        shift(-step)
    ctx.windows.append((f"clock_step{step:+g}", start_sim, ctx.t_sim(), start_mono,
                        time.monotonic()))


_RUNNERS: dict[str, Callable[[FaultContext, EventSpec], Awaitable[None]]] = {
    "broker_down": _broker_down,
    "controller_kill": _controller_kill,
    "operator": _operator,
    "flood": _flood,
    "clock_step": _clock_step,
}


async def run_events(ctx: FaultContext, events: Sequence[EventSpec]) -> None:
    """Run the events in order of at_s (each waits for its time; they do not overlap)."""
    for ev in sorted(events, key=lambda e: e.at_s):
        await _sleep_real(ctx, ev.at_s)
        await _RUNNERS[ev.kind](ctx, ev)
    ctx.figures["events_done"] = len(events)


# ------------------------------------------------------------------ figures


def _r(x: float | None, digits: int = 2) -> float | None:
    return None if x is None else round(x, digits)


def finish(ctx: FaultContext) -> dict[str, Any]:
    """Figures from the windows, the /metrics samples and the status documents."""
    out = dict(ctx.figures)
    ms = ctx.metrics.samples
    out["fault_windows"] = [
        {"kind": k, "start_s": round(a, 1), "end_s": round(b, 1)} for k, a, b, _, _ in ctx.windows]
    out["failsafe_expected_s"] = _r(ctx.failsafe_after_s, 1)
    engaged: list[float] = []
    for kind, a, _b, a_mono, b_mono in ctx.windows:
        during = [s for s in ms if a_mono <= s.mono <= b_mono + 0.5]
        hit = next((s for s in during if s.fail_safe), None)
        if hit is not None:
            engaged.append(hit.t_sim - a)
        before = [s for s in ms if s.mono < a_mono]
        after = [s for s in ms if s.mono >= b_mono]
        if before and after:
            # the counters reset when the controller restarts: only compare within one process
            base = before[-1]
            late = [s for s in after if s.mono <= b_mono + 5.0] or after[:1]
            delta = {k: v - base.rejected_by.get(k, 0.0) for k, v in late[-1].rejected_by.items()
                     if v - base.rejected_by.get(k, 0.0) > 0}
            if kind != "controller_kill":
                out.setdefault("rejected_samples", 0)
                out["rejected_samples"] += int(late[-1].rejected - base.rejected)
                reasons = out.setdefault("rejected_by", {})
                for k, v in delta.items():
                    reason = k.split('reason="')[1].split('"')[0] if 'reason="' in k else k
                    reasons[reason] = reasons.get(reason, 0) + int(v)
        if kind == "flood":
            win = [s for s in ms if a_mono - 0.5 <= s.mono <= b_mono + 0.5]
            bumps = [s.mono for prev, s in itertools.pairwise(win) if s.loops > prev.loops]
            gaps = [b2 - a2 for a2, b2 in itertools.pairwise(bumps)]
            out["flood_loop_max_gap_real_s"] = _r(max(gaps), 3) if gaps else None
            out["flood_loop_iterations"] = int(win[-1].loops - win[0].loops) if win else 0
        if kind == "broker_down":
            later = [(t, d) for t, m, d in ctx.status_docs
                     if m >= b_mono and d.get("state") == "online" and not d.get("fail_safe")]
            planned = [float(d.get("planned_watts") or 0.0) for _, d in later]
            if planned:
                top = max(planned)
                stages: set[int] = set()
                for p in planned:  # distinct planned levels on the way back to 90 % of the top
                    stages.add(round(p / 100.0))
                    if p >= 0.9 * top:
                        break
                out["recover_stages"] = len(stages)
            # the controller's own view: its mqtt_connected gauge back to 1
            back = next((s.mono for s in ms if s.mono >= b_mono and s.mqtt_connected), None)
            out["reconnect_real_s"] = _r(None if back is None else back - b_mono, 2)
    # the controller's meter − model gap at its largest magnitude (signed)
    out["meter_gap_max_w"] = _r(max((s.meter_gap_w for s in ms), key=abs, default=None), 0)
    out["failsafe_engaged"] = bool(engaged)
    out["failsafe_engage_s"] = _r(min(engaged), 1) if engaged else None
    out["recover_from_s"] = _r(max((b for _, _, b, _, _ in ctx.windows), default=None), 1)
    return out
