"""controller.metrics: a private registry, every documented series, served over real HTTP."""

from __future__ import annotations

import asyncio
import math
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from controller.metrics import (
    COMMAND_KINDS,
    COMMAND_RESULTS,
    METRIC_NAMES,
    MINER_STATES,
    BootTimeSafeProcessCollector,
    Metrics,
)


class FakeMono:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _get(url: str, accept: str | None = None) -> tuple[int, str, str]:
    req = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


async def _scrape(
    port: int, path: str = "/metrics", accept: str | None = None
) -> tuple[int, str, str]:
    return await asyncio.to_thread(_get, f"http://127.0.0.1:{port}{path}", accept)


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            assert isinstance(s, Sample)
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _populate(m: Metrics, mono: FakeMono) -> None:
    m.register_streams(["surplus", "meter"])
    m.set_power(budget_watts=40_000, measured_draw_watts=41_500, planned_draw_watts=39_000,
                model_draw_watts=38_000, planned_hashrate_ths=1234.5)
    m.set_miner_states({"mining": 7, "sleeping": 2, "unreachable": 1})
    m.telemetry_accepted_sample("surplus")
    m.telemetry_accepted_sample("surplus")
    mono.now += 4.0
    m.telemetry_rejected_sample("surplus", "nan")
    m.command_done("set_power_limit", "ok", 0.3)
    m.command_done("set_power_limit", "ok", 0.7)
    m.command_done("stop", "timeout", 12.0)
    m.command_done("resume", "unverified", None)
    m.control_loop_done(0.004, 1_700_000_123.0)
    m.set_flags(fail_safe_active=True, mqtt_connected=True, shadow_mode=False)


async def test_scrape_over_http_has_every_series_and_values() -> None:
    mono = FakeMono()
    m = Metrics(version="9.9.9", monotonic=mono)
    _populate(m, mono)
    port = await m.serve("127.0.0.1", 0)
    try:
        assert port > 0 and m.port == port
        status, ctype, body = await _scrape(port)
    finally:
        await m.stop()
    assert status == 200
    assert ctype.startswith("text/plain")
    families = {f.name for f in text_string_to_metric_families(body)}
    # the parser drops _total from counter family names
    exposed = {f"{n}_total" if f"{n}_total" in METRIC_NAMES else n for n in families}
    hashgov = {n for n in exposed if n.startswith("hashgov_")}
    assert hashgov == METRIC_NAMES
    assert "process_start_time_seconds" in families

    s = _samples(body)
    assert s[("hashgov_budget_watts", ())] == 40_000
    assert s[("hashgov_measured_draw_watts", ())] == 41_500
    assert s[("hashgov_planned_draw_watts", ())] == 39_000
    assert s[("hashgov_model_draw_watts", ())] == 38_000
    assert s[("hashgov_headroom_watts", ())] == -1_500
    assert s[("hashgov_meter_model_gap_watts", ())] == 3_500
    assert s[("hashgov_planned_hashrate_ths", ())] == 1234.5
    assert s[("hashgov_budget_exceeded", ())] == 1
    for state in MINER_STATES:
        want = {"mining": 7, "sleeping": 2, "unreachable": 1}.get(state, 0)
        assert s[("hashgov_miners", (("state", state),))] == want
    assert s[("hashgov_telemetry_age_seconds", (("stream", "surplus"),))] == 4.0
    assert math.isinf(s[("hashgov_telemetry_age_seconds", (("stream", "meter"),))])
    assert s[("hashgov_telemetry_accepted_total", (("stream", "surplus"),))] == 2
    assert s[("hashgov_telemetry_accepted_total", (("stream", "meter"),))] == 0
    assert s[("hashgov_telemetry_rejected_total", (("reason", "nan"), ("stream", "surplus")))] == 1
    for kind in COMMAND_KINDS:
        for result in COMMAND_RESULTS:
            assert ("hashgov_commands_total", (("kind", kind), ("result", result))) in s
    assert s[("hashgov_commands_total", (("kind", "set_power_limit"), ("result", "ok")))] == 2
    assert s[("hashgov_commands_total", (("kind", "stop"), ("result", "timeout")))] == 1
    assert s[("hashgov_commands_total", (("kind", "resume"), ("result", "unverified")))] == 1
    assert s[("hashgov_command_latency_seconds_count", (("kind", "set_power_limit"),))] == 2
    lat_sum = s[("hashgov_command_latency_seconds_sum", (("kind", "set_power_limit"),))]
    assert lat_sum == pytest.approx(1.0)
    assert s[("hashgov_command_latency_seconds_bucket",
              (("kind", "set_power_limit"), ("le", "0.5")))] == 1
    assert s[("hashgov_command_latency_seconds_bucket", (("kind", "stop"), ("le", "10.0")))] == 0
    assert s[("hashgov_command_latency_seconds_bucket", (("kind", "stop"), ("le", "+Inf")))] == 1
    assert s[("hashgov_control_loop_duration_seconds_bucket", (("le", "0.001"),))] == 0
    assert s[("hashgov_control_loop_duration_seconds_bucket", (("le", "0.005"),))] == 1
    assert s[("hashgov_control_loop_last_run_timestamp_seconds", ())] == 1_700_000_123.0
    assert s[("hashgov_fail_safe_active", ())] == 1
    assert s[("hashgov_mqtt_connected", ())] == 1
    assert s[("hashgov_shadow_mode", ())] == 0
    assert s[("hashgov_build_info", (("version", "9.9.9"),))] == 1


async def test_histogram_bucket_bounds() -> None:
    m = Metrics(version="t", process_metrics=False)
    body = m.render()[0].decode()
    s = _samples(body)
    lat = sorted(float(dict(k[1])["le"]) for k in s
                 if k[0] == "hashgov_command_latency_seconds_bucket"
                 and dict(k[1])["kind"] == "stop")
    assert lat[0] == 0.05 and lat[-2] == 30.0 and math.isinf(lat[-1])
    loop = sorted(float(dict(k[1])["le"]) for k in s
                  if k[0] == "hashgov_control_loop_duration_seconds_bucket")
    assert loop[0] == 0.001 and loop[-2] == 5.0


async def test_registries_are_independent_and_no_process_metrics_when_disabled() -> None:
    a = Metrics(version="a", process_metrics=False)
    b = Metrics(version="b")
    a.set_flags(shadow_mode=True)
    sa, sb = _samples(a.render()[0].decode()), _samples(b.render()[0].decode())
    assert sa[("hashgov_shadow_mode", ())] == 1
    assert sb[("hashgov_shadow_mode", ())] == 0
    assert not any(k[0].startswith("process_") for k in sa)
    assert ("process_start_time_seconds", ()) in sb


async def test_no_meter_reports_nan_not_a_guess() -> None:
    m = Metrics(version="t", process_metrics=False)
    m.set_power(budget_watts=1000, measured_draw_watts=None, planned_draw_watts=900,
                model_draw_watts=800)
    s = _samples(m.render()[0].decode())
    assert math.isnan(s[("hashgov_headroom_watts", ())])
    assert s[("hashgov_budget_exceeded", ())] == 0


async def test_bad_labels_are_refused() -> None:
    m = Metrics(version="t", process_metrics=False)
    with pytest.raises(ValueError, match="state"):
        m.set_miner_states({"dancing": 1})
    with pytest.raises(ValueError, match="kind"):
        m.command_done("reboot", "ok", 1.0)
    with pytest.raises(ValueError, match="result"):
        m.command_done("stop", "meh", 1.0)


async def test_http_edges_openmetrics_404_head_and_stop() -> None:
    m = Metrics(version="t", process_metrics=False)
    port = await m.serve("127.0.0.1", 0)
    with pytest.raises(RuntimeError):
        await m.serve("127.0.0.1", 0)
    try:
        status, ctype, body = await _scrape(
            port, accept="application/openmetrics-text; version=1.0.0")
        assert status == 200 and ctype.startswith("application/openmetrics-text")
        assert body.rstrip().endswith("# EOF")
        status, _, _ = await _scrape(port, "/nope")
        assert status == 404

        def head() -> tuple[int, str | None, bytes]:
            req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", method="HEAD")
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status, resp.headers["Content-Length"], resp.read()

        st, length, data = await asyncio.to_thread(head)
        assert st == 200 and length is not None and int(length) > 0 and data == b""
        # a client that connects and sends garbage does not break the server
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"garbage\r\n\r\n")
        await w.drain()
        assert (await r.read()).startswith(b"HTTP/1.1 400")
        w.close()
    finally:
        await m.stop()
    assert m.port is None
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)
    await m.stop()  # idempotent


def test_process_start_time_survives_hidden_proc_stat(tmp_path: Path) -> None:
    """Under ProcSubset=pid /proc/stat is hidden; the stock collector would export nothing."""
    fake_proc = tmp_path / "proc"
    fake_proc.mkdir()
    (fake_proc / "self").symlink_to(f"/proc/{os.getpid()}")
    reg = CollectorRegistry()
    BootTimeSafeProcessCollector(proc=str(fake_proc), registry=reg)
    s = _samples(generate_latest(reg).decode())
    start = s[("process_start_time_seconds", ())]
    assert 0 < time.time() - start < 24 * 3600
    real = CollectorRegistry()
    BootTimeSafeProcessCollector(registry=real)
    real_start = _samples(generate_latest(real).decode())[("process_start_time_seconds", ())]
    assert abs(real_start - start) < 2.0
