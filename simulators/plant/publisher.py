"""Publish a plant profile to a real broker, in the formats a config's streams expect.

``payloads_at(sim_t, wall)`` is pure (which topic gets which bytes); ``run()``
publishes at ``rate_hz`` real ticks per second while simulated time runs
``time_scale`` times faster. Timestamps are always real wall-clock time (minus
a profile's lag): the controller checks them against its own clock.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiomqtt

from controller.clock import Clock, SystemClock
from controller.config import StreamConfig
from controller.telemetry import DEFAULT_MAX_PLAUSIBLE_WATTS
from simulators.plant.profile import GarbageKind, PlantSample, Profile

MeterSource = Callable[[], float | Awaitable[float]]


def _set_path(doc: Any, path: str, value: Any) -> Any:
    """Put value at a dotted path, creating dicts (and lists for numeric parts)."""
    parts = path.split(".")
    if doc is None:
        doc = [] if parts[0].lstrip("-").isdigit() else {}
    node = doc
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        nxt_is_index = not last and parts[i + 1].isdigit()
        if isinstance(node, list):
            index = int(part)
            while len(node) <= index:
                node.append(None)
            if last:
                node[index] = value
            else:
                if node[index] is None:
                    node[index] = [] if nxt_is_index else {}
                node = node[index]
        else:
            if last:
                node[part] = value
            else:
                if part not in node:
                    node[part] = [] if nxt_is_index else {}
                node = node[part]
    return doc


def to_stream_units(stream: StreamConfig, watts: float) -> float:
    """What the plant puts on the wire for a true value in watts (unit and sign applied)."""
    return watts / stream.watts_per_unit * stream.sign


def render(stream: StreamConfig, watts: float, ts: float) -> bytes:
    value = to_stream_units(stream, watts)
    if stream.format == "number":
        return repr(value).encode()
    assert stream.value_path is not None
    doc = _set_path(None, stream.value_path, value)
    if stream.timestamp_path:
        doc = _set_path(doc, stream.timestamp_path, ts)
    return json.dumps(doc).encode()


def render_garbage(stream: StreamConfig, kind: GarbageKind, ts: float) -> bytes:
    if kind == "negative":
        return render(stream, -5_000.0, ts)
    if kind == "huge":
        limit = (
            stream.max_plausible_kw * 1_000.0
            if stream.max_plausible_kw is not None
            else DEFAULT_MAX_PLAUSIBLE_WATTS
        )
        return render(stream, limit * 10.0, ts)
    if stream.format == "number":
        return {"nan": b"NaN", "string": b"n/a", "bad_json": b"{"}[kind]
    if kind == "bad_json":
        return b'{"' + (stream.value_path or "v").encode() + b'": 1.0,'
    assert stream.value_path is not None
    bad: Any = math.nan if kind == "nan" else "n/a"
    doc = _set_path(None, stream.value_path, bad)
    if stream.timestamp_path:
        doc = _set_path(doc, stream.timestamp_path, ts)
    return json.dumps(doc).encode()


def expected_reason(stream: StreamConfig, kind: GarbageKind) -> str | None:
    """The telemetry rejection reason this garbage must produce on this stream;
    None where it is no garbage at all: a negative surplus is a deficit, read as 0 W."""
    if kind == "negative" and stream.kind == "surplus":
        return None
    if kind == "bad_json" and stream.format == "number":
        return "not_a_number"
    return {
        "nan": "nan",
        "string": "not_a_number",
        "negative": "negative",
        "huge": "implausible",
        "bad_json": "bad_json",
    }[kind]


def _watts_for(stream: StreamConfig, sample: PlantSample, meter_watts: float | None) -> float | None:
    if stream.kind == "surplus":
        return sample.surplus_kw * 1_000.0
    if stream.kind == "plant_output":
        return sample.plant_output_kw * 1_000.0
    if stream.kind == "plant_demand":
        return sample.plant_demand_kw * 1_000.0
    if stream.kind == "other_load":
        return sample.other_load_kw * 1_000.0
    return meter_watts  # site_meter: None when there is no meter source


@dataclass
class PlantPublisher:
    """Publishes one profile on every stream of a config (the site meter from ``meter_watts``)."""

    streams: Mapping[str, StreamConfig]
    profile: Profile
    host: str = "127.0.0.1"
    port: int = 1883
    rate_hz: float = 1.0
    time_scale: float = 1.0
    meter_watts: MeterSource | None = None
    clock: Clock = field(default_factory=SystemClock)
    username: str | None = None
    password: str | None = None
    client_id: str = "hashgov-sim-plant"
    published: int = 0
    skipped_ticks: int = 0
    garbage_sent: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.rate_hz > 0:
            raise ValueError(f"rate_hz must be > 0, got {self.rate_hz}")
        if not self.time_scale > 0:
            raise ValueError(f"time_scale must be > 0, got {self.time_scale}")

    def payloads_at(
        self, sim_t_seconds: float, wall: float, meter_watts: float | None = None
    ) -> list[tuple[str, bytes]]:
        """(topic, payload) for every stream at simulated time t (empty in a dropout)."""
        sample = self.profile.value_at(sim_t_seconds)
        if not sample.publish:
            return []
        ts = wall - sample.lag_seconds
        out: list[tuple[str, bytes]] = []
        for stream in self.streams.values():
            watts = _watts_for(stream, sample, meter_watts)
            if watts is None:
                continue
            if sample.garbage is not None:
                out.append((stream.topic, render_garbage(stream, sample.garbage, ts)))
            else:
                out.append((stream.topic, render(stream, watts, ts)))
        return out

    async def _read_meter(self) -> float | None:
        if self.meter_watts is None:
            return None
        result = self.meter_watts()
        if inspect.isawaitable(result):
            result = await result
        return float(result)

    async def tick(self, client: aiomqtt.Client, sim_t_seconds: float) -> int:
        try:
            meter = await self._read_meter()
        except Exception:  # a meter that cannot be read is not published this tick
            meter = None
        sample = self.profile.value_at(sim_t_seconds)
        payloads = self.payloads_at(sim_t_seconds, self.clock.wall(), meter)
        if not payloads:
            self.skipped_ticks += 1
        for topic, payload in payloads:
            await client.publish(topic, payload, qos=1)
            self.published += 1
            if sample.garbage is not None:
                self.garbage_sent[sample.garbage] = self.garbage_sent.get(sample.garbage, 0) + 1
        return len(payloads)

    async def run(self, duration_seconds: float | None = None) -> None:
        """Publish until cancelled (or for duration_seconds of real time)."""
        async with aiomqtt.Client(
            self.host,
            self.port,
            identifier=self.client_id,
            username=self.username,
            password=self.password,
        ) as client:
            start = self.clock.monotonic()
            period = 1.0 / self.rate_hz
            next_tick = start
            while True:
                now = self.clock.monotonic()
                if duration_seconds is not None and now - start >= duration_seconds:
                    return
                await self.tick(client, (now - start) * self.time_scale)
                next_tick += period
                await self.clock.sleep(max(0.0, next_tick - self.clock.monotonic()))
