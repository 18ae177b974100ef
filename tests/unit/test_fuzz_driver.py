"""Miner replies fuzzed through the real driver: unmodified pyasic talks LuxOS RPC to a
tiny asyncio TCP server on a loopback IP (port 4028) that answers every command with
hypothesis-generated garbage — bytes, truncated JSON, JSON of the right shape with
wrong types, huge numbers, NaN, missing keys, or nothing at all.

PyasicDriver.read_state / set_power_limit / stop / resume must never raise, must
return a typed result within their timeouts, and a read must never report negative,
NaN or infinite watts. Bounded: few examples, short timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.catalog import find_model
from controller.config import MinerConfig
from drivers.base import CommandOutcome, CommandResult, MinerState
from drivers.mapping import BRAIINS_READ, MiningThresholds, state_from_bosminer_rpc
from drivers.pyasic_driver import DriverSettings, PyasicDriver
from simulators.miners.fleet import SimFleet, make_specs

FAST = DriverSettings(
    read_timeout_seconds=0.4,
    command_timeout_seconds=0.4,
    command_retries=0,
    retry_backoff_seconds=0.01,
    verify_window_seconds=0.15,
    verify_interval_seconds=0.05,
)
# read_state: one read; a command: send + probe read + verify window of reads
# slack for 2 shared CI cores; the point is "no hang" (pyasic's own read timeout is 100 s)
READ_DEADLINE = FAST.read_timeout_seconds + 3.0
COMMAND_DEADLINE = (
    FAST.command_timeout_seconds + 2 * FAST.read_timeout_seconds + FAST.verify_window_seconds + 3.0
)

WEIRD = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.sampled_from([-3000, 1e308, "3000", "NaN", "-inf", 2**64, -0.0]),
)
LUXOS_FIELDS = [
    "Watts", "PSU", "Power", "Limit", "PowerLimit", "GHS 5s", "GHS av", "MHS 5s", "Elapsed",
    "Temperature", "Chip Temp", "Speed", "RPM", "ID", "Profile", "Voltage", "Frequency",
    "Hashrate", "Enabled", "Status", "Stopped", "Mode", "SessionID", "When", "Code", "Msg",
]


# BOSer RPC (the lean read's summary+devs+tunerstatus), chain entries included
BOSER_FIELDS = [
    "MHS 1m", "MHS 5s", "MHS av", "Elapsed", "PowerLimit", "ApproximateMinerPowerConsumption",
    "TunerChainStatus", "HashchainIndex", "Status", "ID", "Enabled",
]
BOSER_WEIRD = st.one_of(
    WEIRD,
    st.lists(st.one_of(WEIRD, st.fixed_dictionaries({
        "HashchainIndex": st.one_of(st.integers(-2, 9), WEIRD),
        "Status": st.one_of(st.sampled_from(["Stable", "Failed {x}", "", "Tuning individual chips"]),
                            WEIRD),
    })), max_size=3),
)


def _section(command: str, fields: list[str] = LUXOS_FIELDS) -> st.SearchStrategy[Any]:
    values = BOSER_WEIRD if fields is BOSER_FIELDS else WEIRD
    body = st.dictionaries(st.sampled_from(fields), values, max_size=6)
    status = st.sampled_from(["S", "E", "W", 5, None])
    return st.fixed_dictionaries(
        {
            "STATUS": st.lists(st.fixed_dictionaries({"STATUS": status, "Msg": st.text(max_size=5)}),
                               max_size=1),
            command.upper(): st.one_of(st.lists(body, max_size=3), WEIRD),
        }
    )


def _plausible(data: st.DataObject, commands: list[str], fields: list[str] = LUXOS_FIELDS) -> Any:
    if len(commands) == 1:
        return data.draw(_section(commands[0], fields))
    return {c: data.draw(st.one_of(st.lists(_section(c, fields), max_size=2), WEIRD))
            for c in commands}


def reply_for(
    data: st.DataObject, fields: list[str] = LUXOS_FIELDS
) -> Callable[[list[str]], bytes | None]:
    """A reply function drawing from hypothesis for every request (None: close silently)."""

    def reply(commands: list[str]) -> bytes | None:
        kind = data.draw(st.sampled_from(["bytes", "truncated", "plausible", "plausible",
                                          "json", "close", "nul"]))
        if kind == "bytes":
            return data.draw(st.binary(max_size=64))
        if kind == "close":
            return None
        doc = _plausible(data, commands, fields) if kind != "json" else data.draw(
            st.recursive(WEIRD, lambda c: st.lists(c, max_size=3)
                         | st.dictionaries(st.text(max_size=5), c, max_size=3), max_leaves=8))
        text = json.dumps(doc, allow_nan=True, default=str).encode()
        if kind == "truncated":
            return text[: data.draw(st.integers(min_value=0, max_value=max(0, len(text) - 1)))]
        if kind == "nul":
            return text + b"\x00"
        return text

    return reply


class GarbageMiner:
    """A LuxOS RPC lookalike on (host, 4028) whose replies a function decides."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.reply: Callable[[list[str]], bytes | None] = lambda _c: b"{}"
        self.requests = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, 4028)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            buffer = b""
            commands: list[str] = []
            while len(buffer) < 65536:
                chunk = await asyncio.wait_for(reader.read(4096), 2)
                if not chunk:
                    return
                buffer += chunk
                try:
                    request = json.loads(buffer)
                except ValueError:
                    continue
                commands = str(request.get("command", "")).split("+") if isinstance(request, dict) else []
                break
            self.requests += 1
            payload = self.reply(commands)
            if payload is not None:
                writer.write(payload)
                await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


def _check_state(state: Any) -> None:
    assert isinstance(state, MinerState)
    if state.watts is not None:
        assert math.isfinite(state.watts) and state.watts >= 0, state
    if state.power_limit_watts is not None:
        assert math.isfinite(state.power_limit_watts) and state.power_limit_watts >= 0, state
    if state.hashrate_ths is not None:
        assert math.isfinite(state.hashrate_ths), state
    if not state.reachable:
        assert state.error, "an unreachable read says why"


def _check_result(result: Any, requested: int | None) -> None:
    assert isinstance(result, CommandResult)
    assert isinstance(result.outcome, CommandOutcome)
    assert result.latency_seconds >= 0
    if result.outcome is not CommandOutcome.OK:
        assert result.detail, "a failed command says why"


async def _exercise(driver: PyasicDriver) -> None:
    t0 = time.monotonic()
    _check_state(await asyncio.wait_for(driver.read_state(), READ_DEADLINE + 1))
    assert time.monotonic() - t0 <= READ_DEADLINE, "read overran its timeout"
    for call, requested in ((lambda: driver.set_power_limit(2500), 2500),
                            (driver.stop, None), (driver.resume, None)):
        t0 = time.monotonic()
        _check_result(await asyncio.wait_for(call(), COMMAND_DEADLINE + 2), requested)
        assert time.monotonic() - t0 <= COMMAND_DEADLINE, "command overran its timeouts"


def _driver(address: str, firmware: str = "luxos") -> PyasicDriver:
    miner = MinerConfig(address=address, name="fuzz", model="Antminer S19j Pro",
                        firmware=firmware)  # type: ignore[arg-type]
    return PyasicDriver(miner, model=find_model("Antminer S19j Pro", firmware), settings=FAST)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_luxos_garbage_replies_never_escape_the_driver(data: st.DataObject) -> None:
    address = "127.30.0.1"

    async def run() -> int:
        server = GarbageMiner(address)
        server.reply = reply_for(data)
        await server.start()
        try:
            await _exercise(_driver(address))
        finally:
            await server.close()
        return server.requests

    assert asyncio.run(run()) >= 1


async def test_black_holed_and_refusing_miner_time_out_as_typed_results() -> None:
    """A server that accepts and never answers, and an address nobody listens on."""
    hold = asyncio.Event()

    async def serve_forever(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await hold.wait()
        writer.close()

    black = await asyncio.start_server(serve_forever, "127.30.0.2", 4028)
    try:
        for address in ("127.30.0.2", "127.30.0.3"):
            await _exercise(_driver(address))
    finally:
        hold.set()
        black.close()


@pytest.mark.parametrize("kind", ["malformed"])
async def test_simulator_malformed_fault_through_the_driver(kind: str) -> None:
    """The simulator's own `malformed` fault (truncated JSON) on both firmwares."""
    specs = make_specs(2, "Antminer S19j Pro:luxos:1,Antminer S19j Pro:braiins:1", "127.30.1.1")
    async with SimFleet(specs, time_scale=30) as fleet:
        for spec in specs:
            fleet.set_fault(spec.address, kind)
            miner = MinerConfig(address=spec.address, name=spec.name, model=spec.model,
                                firmware=spec.firmware)
            driver = PyasicDriver(miner, model=find_model(spec.model, spec.firmware),
                                  settings=FAST)
            await _exercise(driver)
            state = await driver.read_state()
            _check_state(state)


# ------------------------------------------------- BOSer lean RPC read


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(
    st.recursive(WEIRD, lambda c: st.lists(c, max_size=3)
                 | st.dictionaries(st.text(max_size=5), c, max_size=3), max_leaves=8),
    st.fixed_dictionaries({c: st.one_of(st.lists(_section(c, BOSER_FIELDS), max_size=2), BOSER_WEIRD)
                           for c in ("summary", "devs", "tunerstatus")}),
))
def test_bosminer_mapping_never_raises_on_garbage(reply: Any) -> None:
    state = state_from_bosminer_rpc(
        "m1", reply, read_at_seconds=1.0, thresholds=MiningThresholds(), hostname="h", mac=None
    )
    _check_state(state)
    assert state.is_mining in (True, False, None)
    assert all(isinstance(e, str) for e in state.errors)
    if state.uptime_seconds is not None:
        assert math.isfinite(state.uptime_seconds) and state.uptime_seconds >= 0
    if state.reachable:
        assert state.hostname == "h"


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_boser_lean_read_garbage_replies_never_escape_the_driver(data: st.DataObject) -> None:
    """The lean read through unmodified pyasic's RPC client (multicommand, and its
    split fallback) against garbage on 4028; no gRPC listener at all."""
    address = "127.1.140.1"

    async def run() -> int:
        server = GarbageMiner(address)
        server.reply = reply_for(data, BOSER_FIELDS)
        await server.start()
        try:
            driver = _driver(address, "braiins")
            for _ in range(2):
                t0 = time.monotonic()
                # _read with the regular fields is the lean path (read_state's first
                # read is a get_data detail read, which needs gRPC)
                state = await asyncio.wait_for(
                    driver._read(BRAIINS_READ, FAST.read_timeout_seconds), READ_DEADLINE + 1)
                _check_state(state)
                assert time.monotonic() - t0 <= READ_DEADLINE, "read overran its timeout"
        finally:
            await server.close()
        return server.requests

    assert asyncio.run(run()) >= 1


def _boser_section(command: str) -> dict[str, Any]:
    ok = [{"STATUS": "S", "Msg": command}]
    return {
        "summary": {"STATUS": ok, "SUMMARY": [{"MHS 1m": 90e6, "Elapsed": 5}]},
        "devs": {"STATUS": ok, "DEVS": [{"MHS 5s": 30e6}]},
        "tunerstatus": {"STATUS": ok, "TUNERSTATUS": [
            {"PowerLimit": 2900, "ApproximateMinerPowerConsumption": 2850,
             "TunerChainStatus": []}]},
    }[command]


@pytest.mark.parametrize("joined_ok", [True, False])
async def test_boser_lean_read_one_connection_or_pyasic_split_fallback(joined_ok: bool) -> None:
    """A miner that answers the "+" multicommand: one connection. One that refuses it
    (STATUS E): pyasic resends each command alone and the same state comes out."""
    address = "127.1.140.2"
    server = GarbageMiner(address)
    seen: list[list[str]] = []

    def reply(commands: list[str]) -> bytes:
        seen.append(commands)
        if len(commands) > 1:
            if not joined_ok:
                return json.dumps({"STATUS": [{"STATUS": "E", "Msg": "Invalid command"}]}).encode()
            return json.dumps({c: [_boser_section(c)] for c in commands} | {"id": 1}).encode()
        return json.dumps(_boser_section(commands[0])).encode()

    server.reply = reply
    await server.start()
    try:
        state = await _driver(address, "braiins")._read(BRAIINS_READ, FAST.read_timeout_seconds)
    finally:
        await server.close()
    assert state.reachable, state.error
    assert (state.watts, state.power_limit_watts, state.is_mining) == (2850.0, 2900.0, True)
    assert state.hashrate_ths == pytest.approx(90.0)
    assert seen[0] == ["summary", "devs", "tunerstatus"]
    # refused: our joined send, then pyasic's multicommand (joined again, then split)
    assert len(seen) == (1 if joined_ok else 5)
