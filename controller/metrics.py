"""Prometheus metrics for the daemon, on a registry of their own.

Every series lives on the ``CollectorRegistry`` a ``Metrics`` instance owns (never
the global default registry), so tests can build as many as they like and the
daemon's exposition contains exactly what is listed in ``METRIC_NAMES`` plus the
``process_*`` series of a ``ProcessCollector``.

Names follow the project conventions: ``hashgov_`` prefix, base units (watts,
seconds), counters end in ``_total``.

The HTTP endpoint is a small asyncio server (``Metrics.serve``) rather than
prometheus_client's ``start_http_server``: it runs inside the daemon's event loop
and TaskGroup (no extra thread to leak or to outlive a stop), binds port 0 to an
ephemeral port the caller can read back, and stops deterministically. Rendering
(``generate_latest``) is synchronous but cheap: there are no per-miner series, so
a scrape is a few hundred samples (well under a millisecond of loop time).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

MINER_STATES: Final = ("mining", "sleeping", "booting", "unreachable", "unresponsive", "excluded")
COMMAND_KINDS: Final = ("set_power_limit", "stop", "resume")
COMMAND_RESULTS: Final = ("ok", "rejected", "unverified", "timeout", "error")

COMMAND_LATENCY_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0)
CONTROL_LOOP_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)

# Every hashgov_ metric family, as it is named in the exposition (counters with
# their _total suffix; histograms also expose _bucket/_sum/_count).
METRIC_NAMES: Final[frozenset[str]] = frozenset(
    {
        "hashgov_budget_watts",
        "hashgov_measured_draw_watts",
        "hashgov_planned_draw_watts",
        "hashgov_model_draw_watts",
        "hashgov_headroom_watts",
        "hashgov_meter_model_gap_watts",
        "hashgov_planned_hashrate_ths",
        "hashgov_miners",
        "hashgov_telemetry_age_seconds",
        "hashgov_telemetry_accepted_total",
        "hashgov_telemetry_rejected_total",
        "hashgov_commands_total",
        "hashgov_command_latency_seconds",
        "hashgov_control_loop_duration_seconds",
        "hashgov_control_loop_last_run_timestamp_seconds",
        "hashgov_fail_safe_active",
        "hashgov_budget_exceeded",
        "hashgov_mqtt_connected",
        "hashgov_shadow_mode",
        "hashgov_build_info",
    }
)
HISTOGRAM_NAMES: Final[frozenset[str]] = frozenset(
    {"hashgov_command_latency_seconds", "hashgov_control_loop_duration_seconds"}
)

_MAX_REQUEST_HEAD_BYTES: Final = 8192
_REQUEST_TIMEOUT_SECONDS: Final = 10.0


def _default_version() -> str:
    try:
        from importlib.metadata import version

        return version("hashgov")
    except Exception:  # not installed (e.g. run from a bare checkout)
        return "unknown"


class _TelemetryAgeCollector(Collector):
    """Age of the newest accepted sample per stream, computed at scrape time.

    A stream that is known but has never delivered a sample reports +Inf, so a
    staleness alert fires for it too.
    """

    def __init__(self, monotonic: Callable[[], float]) -> None:
        self._monotonic = monotonic
        self._last: dict[str, float | None] = {}

    def register_stream(self, stream: str) -> None:
        self._last.setdefault(stream, None)

    def received(self, stream: str, at_monotonic: float | None) -> None:
        self._last[stream] = self._monotonic() if at_monotonic is None else at_monotonic

    def age_seconds(self, stream: str) -> float:
        last = self._last.get(stream)
        if last is None:
            return math.inf
        return max(0.0, self._monotonic() - last)

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "hashgov_telemetry_age_seconds",
            "Seconds since the newest accepted sample of each telemetry stream (+Inf: none yet).",
            labels=["stream"],
        )
        for stream in sorted(self._last):
            family.add_metric([stream], self.age_seconds(stream))
        yield family

    def describe(self) -> Iterable[Metric]:
        # describing lets the registry detect name clashes without calling collect()
        yield GaugeMetricFamily(
            "hashgov_telemetry_age_seconds",
            "Seconds since the newest accepted sample of each telemetry stream (+Inf: none yet).",
            labels=["stream"],
        )


class BootTimeSafeProcessCollector(ProcessCollector):
    """prometheus_client's ProcessCollector, working when /proc/stat is hidden.

    The stock collector reads the boot time from /proc/stat and exports nothing
    at all when it cannot, which is what happens under the unit's ProcSubset=pid
    (only /proc/<pid> is visible). Then process_start_time_seconds would vanish
    and the HashgovWatchdogRestarts alert would go blind. The boot time is also
    "now minus CLOCK_BOOTTIME", which needs no file.
    """

    def _boot_time(self) -> float:
        try:
            btime = super()._boot_time()  # type: ignore[no-untyped-call]
        except OSError:
            btime = None
        if btime:
            return float(btime)
        return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)


class _WithoutCreated:
    """A view of a registry without the ``*_created`` samples prometheus_client adds.

    Those timestamps are noise here (the process start time says the same) and
    would be extra families outside ``METRIC_NAMES`` in the text format.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterable[Metric]:
        for metric in self._registry.collect():
            kept = Metric(metric.name, metric.documentation, metric.type, metric.unit)
            kept.samples = [s for s in metric.samples if not s.name.endswith("_created")]
            yield kept


class Metrics:
    """All hashgov series on one private registry, plus an asyncio /metrics server."""

    def __init__(
        self,
        *,
        version: str | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        process_metrics: bool = True,
    ) -> None:
        r = CollectorRegistry(auto_describe=True)
        self.registry: Final = r
        self._server: asyncio.Server | None = None
        self._port: int | None = None

        self.budget_watts: Final = Gauge(
            "hashgov_budget_watts", "Power the site may draw now (after cap, loads, margin).",
            registry=r)
        self.measured_draw_watts: Final = Gauge(
            "hashgov_measured_draw_watts", "Site draw measured by the site meter.", registry=r)
        self.planned_draw_watts: Final = Gauge(
            "hashgov_planned_draw_watts", "Draw of the current plan.", registry=r)
        self.model_draw_watts: Final = Gauge(
            "hashgov_model_draw_watts", "Sum of firmware-reported miner draw.", registry=r)
        self.headroom_watts: Final = Gauge(
            "hashgov_headroom_watts", "Budget minus measured draw (negative: over budget).",
            registry=r)
        self.meter_model_gap_watts: Final = Gauge(
            "hashgov_meter_model_gap_watts",
            "Measured site draw minus the fleet model's draw (other loads, bad readings).",
            registry=r)
        self.planned_hashrate_ths: Final = Gauge(
            "hashgov_planned_hashrate_ths", "Hashrate the current plan expects (TH/s).", registry=r)
        self.miners: Final = Gauge(
            "hashgov_miners", "Miners by state.", ["state"], registry=r)
        self._telemetry_age: Final = _TelemetryAgeCollector(monotonic)
        r.register(self._telemetry_age)
        self.telemetry_accepted: Final = Counter(
            "hashgov_telemetry_accepted", "Telemetry samples accepted.", ["stream"], registry=r)
        self.telemetry_rejected: Final = Counter(
            "hashgov_telemetry_rejected", "Telemetry samples rejected, by cause.",
            ["stream", "reason"], registry=r)
        self.commands: Final = Counter(
            "hashgov_commands", "Miner commands sent, by kind and outcome.", ["kind", "result"],
            registry=r)
        self.command_latency_seconds: Final = Histogram(
            "hashgov_command_latency_seconds", "Time from sending a miner command to its outcome.",
            ["kind"], buckets=COMMAND_LATENCY_BUCKETS, registry=r)
        self.control_loop_duration_seconds: Final = Histogram(
            "hashgov_control_loop_duration_seconds", "Time one control-loop iteration takes.",
            buckets=CONTROL_LOOP_BUCKETS, registry=r)
        self.control_loop_last_run_timestamp_seconds: Final = Gauge(
            "hashgov_control_loop_last_run_timestamp_seconds",
            "UNIX time the control loop last completed.", registry=r)
        self.fail_safe_active: Final = Gauge(
            "hashgov_fail_safe_active", "1 while the budget is the fail-safe (stale telemetry).",
            registry=r)
        self.budget_exceeded: Final = Gauge(
            "hashgov_budget_exceeded", "1 while measured draw is above the budget.", registry=r)
        self.mqtt_connected: Final = Gauge(
            "hashgov_mqtt_connected", "1 while connected to the MQTT broker.", registry=r)
        self.shadow_mode: Final = Gauge(
            "hashgov_shadow_mode", "1 in shadow (dry-run) mode: plans are made, nothing is sent.",
            registry=r)
        self.build_info: Final = Gauge(
            "hashgov_build_info", "Always 1; the version label says which build runs.", ["version"],
            registry=r)
        self.build_info.labels(version=version or _default_version()).set(1)
        if process_metrics:
            BootTimeSafeProcessCollector(registry=r)

        # Pre-create label sets with known values so rates and sums exist from zero.
        for state in MINER_STATES:
            self.miners.labels(state=state).set(0)
        for kind in COMMAND_KINDS:
            self.command_latency_seconds.labels(kind=kind)
            for result in COMMAND_RESULTS:
                self.commands.labels(kind=kind, result=result)

    # ------------------------------------------------------------- updates

    def set_power(
        self,
        *,
        budget_watts: float,
        measured_draw_watts: float | None,
        planned_draw_watts: float,
        model_draw_watts: float,
        planned_hashrate_ths: float | None = None,
    ) -> None:
        """One control-loop snapshot; headroom, gap and budget_exceeded are derived here.

        ``measured_draw_watts`` None (no meter stream) reports NaN for measured draw,
        headroom and gap rather than a made-up figure.
        """
        self.budget_watts.set(budget_watts)
        self.planned_draw_watts.set(planned_draw_watts)
        self.model_draw_watts.set(model_draw_watts)
        if planned_hashrate_ths is not None:
            self.planned_hashrate_ths.set(planned_hashrate_ths)
        if measured_draw_watts is None:
            for g in (self.measured_draw_watts, self.headroom_watts, self.meter_model_gap_watts):
                g.set(math.nan)
            self.budget_exceeded.set(0)
            return
        self.measured_draw_watts.set(measured_draw_watts)
        self.headroom_watts.set(budget_watts - measured_draw_watts)
        self.meter_model_gap_watts.set(measured_draw_watts - model_draw_watts)
        self.budget_exceeded.set(1 if measured_draw_watts > budget_watts else 0)

    def set_miner_states(self, counts: Mapping[str, int]) -> None:
        """Counts per state; states missing from ``counts`` are set to 0."""
        unknown = set(counts) - set(MINER_STATES)
        if unknown:
            raise ValueError(f"unknown miner states {sorted(unknown)}; expected {MINER_STATES}")
        for state in MINER_STATES:
            self.miners.labels(state=state).set(counts.get(state, 0))

    def register_streams(self, streams: Iterable[str], reasons: Iterable[str] = ()) -> None:
        """Declare the configured streams: their age is +Inf and counters 0 until data
        arrives; rejection counters exist from zero for each reason given, so rate()
        over them works before the first rejection."""
        reason_list = tuple(reasons)
        for stream in streams:
            self._telemetry_age.register_stream(stream)
            self.telemetry_accepted.labels(stream=stream)
            for reason in reason_list:
                self.telemetry_rejected.labels(stream=stream, reason=reason)

    def telemetry_accepted_sample(self, stream: str, at_monotonic: float | None = None) -> None:
        """Count an accepted sample and restart the stream's age (at ``at_monotonic``, or now)."""
        self.telemetry_accepted.labels(stream=stream).inc()
        self._telemetry_age.received(stream, at_monotonic)

    def telemetry_rejected_sample(self, stream: str, reason: str) -> None:
        self.telemetry_rejected.labels(stream=stream, reason=reason).inc()

    def telemetry_age_seconds(self, stream: str) -> float:
        return self._telemetry_age.age_seconds(stream)

    def command_done(self, kind: str, result: str, latency_seconds: float | None) -> None:
        """Count one command outcome and observe its latency (when it has one)."""
        if kind not in COMMAND_KINDS:
            raise ValueError(f"unknown command kind {kind!r}; expected one of {COMMAND_KINDS}")
        if result not in COMMAND_RESULTS:
            raise ValueError(
                f"unknown command result {result!r}; expected one of {COMMAND_RESULTS}"
            )
        self.commands.labels(kind=kind, result=result).inc()
        if latency_seconds is not None:
            self.command_latency_seconds.labels(kind=kind).observe(latency_seconds)

    def control_loop_done(self, duration_seconds: float, wall_time: float) -> None:
        self.control_loop_duration_seconds.observe(duration_seconds)
        self.control_loop_last_run_timestamp_seconds.set(wall_time)

    def set_flags(
        self,
        *,
        fail_safe_active: bool | None = None,
        mqtt_connected: bool | None = None,
        shadow_mode: bool | None = None,
    ) -> None:
        """Set any of the 0/1 state gauges; None leaves a gauge as it is."""
        for gauge, value in (
            (self.fail_safe_active, fail_safe_active),
            (self.mqtt_connected, mqtt_connected),
            (self.shadow_mode, shadow_mode),
        ):
            if value is not None:
                gauge.set(1 if value else 0)

    # ------------------------------------------------------------- exposition

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition body and its content type (OpenMetrics if ``accept`` asks for it)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(_WithoutCreated(self.registry)), content_type

    async def serve(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Start serving GET /metrics in the running loop; returns the bound port.

        Port 0 binds an ephemeral port. Call ``stop()`` to close it.
        """
        if self._server is not None:
            raise RuntimeError("metrics server already running")
        server = await asyncio.start_server(self._handle, host, port)
        self._server = server
        self._port = int(server.sockets[0].getsockname()[1])
        return self._port

    @property
    def port(self) -> int | None:
        """The bound port while serving, else None."""
        return self._port

    async def stop(self) -> None:
        """Stop the server and wait for it to close; a no-op when not serving."""
        server, self._server, self._port = self._server, None, None
        if server is None:
            return
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), timeout=5.0)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_REQUEST_TIMEOUT_SECONDS):
                head = await reader.readuntil(b"\r\n\r\n")
            if len(head) > _MAX_REQUEST_HEAD_BYTES:
                await self._respond(writer, 431, b"request head too large\n", "text/plain")
                return
            lines = head.decode("latin-1").split("\r\n")
            parts = lines[0].split(" ")
            if len(parts) != 3:
                await self._respond(writer, 400, b"bad request\n", "text/plain")
                return
            method, target, _ = parts
            headers = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
            path = target.split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                await self._respond(writer, 405, b"method not allowed\n", "text/plain",
                                    extra={"Allow": "GET, HEAD"})
                return
            if path == "/metrics":
                body, content_type = self.render(headers.get("accept"))
                await self._respond(writer, 200, body, content_type, head_only=method == "HEAD")
            elif path == "/":
                await self._respond(writer, 200, b'<a href="/metrics">/metrics</a>\n',
                                    "text/html; charset=utf-8", head_only=method == "HEAD")
            else:
                await self._respond(writer, 404, b"not found\n", "text/plain")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError,
                ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    @staticmethod
    async def _respond(
        writer: asyncio.StreamWriter,
        status: int,
        body: bytes,
        content_type: str,
        *,
        head_only: bool = False,
        extra: Mapping[str, str] | None = None,
    ) -> None:
        reasons = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
                   431: "Request Header Fields Too Large"}
        lines = [
            f"HTTP/1.1 {status} {reasons.get(status, 'Error')}",
            f"Content-Type: {content_type}",
            f"Content-Length: {len(body)}",
            "Connection: close",
        ]
        lines.extend(f"{k}: {v}" for k, v in (extra or {}).items())
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if not head_only:
            writer.write(body)
        await writer.drain()
