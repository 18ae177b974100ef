"""PyasicDriver against a scripted fake pyasic miner: results, retries, timeouts,
secrets, credentials file, and the FleetPoller (no sockets)."""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
import structlog
from pyasic.data import HashBoard, MinerData
from pyasic.device.algorithm import SHA256Algo
from pyasic.errors import APIError

from controller.catalog import find_model
from controller.clock import ManualClock, SystemClock
from controller.config import MinerConfig
from drivers.base import CommandOutcome, MinerDriver, MinerState
from drivers.credentials import (
    CredentialsError,
    MinerCredentials,
    Secret,
    load_credentials,
    parse_credentials,
)
from drivers.poller import FleetPoller
from drivers.pyasic_driver import DriverSettings, PyasicDriver

PASSWORD = "hunter2-very-secret-Pa55"
FAST = DriverSettings(
    read_timeout_seconds=0.3,
    command_timeout_seconds=0.3,
    command_retries=2,
    retry_backoff_seconds=0.01,
    verify_window_seconds=0.2,
    verify_interval_seconds=0.05,
)


class FakeWeb:
    def __init__(self) -> None:
        self.username = "root"
        self.pwd = "root"


class FakeRpc:
    """pyasic's BOSer RPC client as the lean read uses it: multicommand only."""

    def __init__(self, miner: FakeMiner) -> None:
        self.miner = miner
        self.fail_next: list[BaseException | str | dict[str, Any]] = []  # or a reply

    async def multicommand(self, *commands: str, allow_warning: bool = True) -> dict[str, Any]:
        m = self.miner
        m.calls.append("rpc:" + "+".join(commands))
        if self.fail_next:
            item = self.fail_next.pop(0)
            if item == "hang":
                await asyncio.sleep(3600)
            if isinstance(item, dict):
                return item
            assert isinstance(item, BaseException)
            raise item
        mhs = 100e6 if m.mining else 0.0
        return {
            "summary": [{"SUMMARY": [{"MHS 1m": mhs, "Elapsed": 60}]}],
            "devs": [{"DEVS": [{"MHS 5s": mhs}]}],
            "tunerstatus": [{"TUNERSTATUS": [{
                "PowerLimit": m.limit_watts,
                "ApproximateMinerPowerConsumption": m.limit_watts if m.mining else 30,
                "TunerChainStatus": [{"HashchainIndex": 0, "Status": "Stable"}],
            }]}],
            "id": 1,
            "multicommand": True,
        }


class FakeMiner:
    """Just enough of a pyasic miner: state + scripted failures."""

    def __init__(self) -> None:
        self.web = FakeWeb()
        self.rpc = FakeRpc(self)
        self.limit_watts = 3000
        self.mining = True
        self.obey = True
        self.fail_next: list[BaseException | str] = []  # "hang" or an exception
        self.calls: list[str] = []

    async def _maybe_fail(self) -> None:
        if self.fail_next:
            item = self.fail_next.pop(0)
            if item == "hang":
                await asyncio.sleep(3600)
            assert isinstance(item, BaseException)
            raise item

    async def get_data(self, include: list[str] | None = None) -> MinerData:
        self.calls.append("get_data")
        data = MinerData(
            ip="127.0.0.1",
            wattage=self.limit_watts if self.mining else 30,
            hashboards=[
                HashBoard(
                    slot=0,
                    hashrate=SHA256Algo.hashrate(
                        rate=100.0 if self.mining else 0.0, unit=SHA256Algo.unit.TH
                    ),
                )
            ],
            is_mining=self.mining,
        )
        data.wattage_limit = self.limit_watts
        if include is not None and "hostname" in include:
            data.hostname, data.mac = "bos-1", "02:00:00:00:00:09"
        return data

    async def set_power_limit(self, wattage: int) -> bool:
        self.calls.append("set_power_limit")
        await self._maybe_fail()
        if self.obey:
            self.limit_watts = wattage
        return True

    async def stop_mining(self) -> bool:
        self.calls.append("stop")
        await self._maybe_fail()
        if self.obey:
            self.mining = False
        return True

    async def resume_mining(self) -> bool:
        self.calls.append("resume")
        await self._maybe_fail()
        if self.obey:
            self.mining = True
        return True


def _driver(
    fake: FakeMiner, firmware: str = "braiins", password: str | None = PASSWORD,
    settings: DriverSettings = FAST,
) -> PyasicDriver:
    miner = MinerConfig(address="127.9.9.9", model="Antminer S19j Pro", firmware=firmware, name="m1")  # type: ignore[arg-type]
    return PyasicDriver(
        miner,
        model=find_model("Antminer S19j Pro", firmware),
        settings=settings,
        credentials=MinerCredentials(password=Secret(password) if password else None),
        pyasic_miner=fake,
    )


async def test_set_power_limit_ok_and_readback() -> None:
    fake = FakeMiner()
    result = await _driver(fake).set_power_limit(2300)
    assert result.outcome is CommandOutcome.OK
    assert (result.requested_watts, result.applied_watts) == (2300, 2300)


async def test_luxos_limit_is_quantised_to_profile() -> None:
    fake = FakeMiner()

    async def quantising(wattage: int) -> bool:
        fake.limit_watts = max(p for p in (1100, 1500, 2000, 2500, 3050) if p <= wattage)
        return True

    fake.set_power_limit = quantising  # type: ignore[method-assign]
    result = await _driver(fake, firmware="luxos").set_power_limit(2200)
    assert result.outcome is CommandOutcome.OK
    assert result.applied_watts == 2000
    assert "applied 2000 W" in result.detail


async def test_luxos_no_profile_below_request_is_rejected_without_sending() -> None:
    fake = FakeMiner()
    result = await _driver(fake, firmware="luxos").set_power_limit(900)
    assert result.outcome is CommandOutcome.REJECTED
    assert "set_power_limit" not in fake.calls


async def test_luxos_false_with_a_session_held_logs_on_again_once_before_it_is_refused() -> None:
    """pyasic's LuxOS stop says False for any APIError, a dead session included."""
    fake = FakeMiner()
    fake.rpc.session_token = "dead"  # type: ignore[attr-defined]
    answers = [False, True]

    async def stop_mining() -> bool:
        fake.calls.append("stop")
        accepted = answers.pop(0) if answers else False
        fake.mining = fake.mining and not accepted
        return accepted

    fake.stop_mining = stop_mining  # type: ignore[method-assign]
    driver = _driver(fake, firmware="luxos")
    assert (await driver.stop()).ok
    assert fake.calls.count("stop") == 2
    assert fake.rpc.session_token is None  # type: ignore[attr-defined]  # pyasic logs on next time
    fake.mining = True
    refused = await driver.stop()  # no session to drop: the firmware's own no
    assert refused.outcome is CommandOutcome.REJECTED
    assert fake.calls.count("stop") == 3


async def test_ignored_command_is_unverified() -> None:
    fake = FakeMiner()
    fake.obey = False
    driver = _driver(fake)
    assert (await driver.set_power_limit(2000)).outcome is CommandOutcome.UNVERIFIED
    assert (await driver.stop()).outcome is CommandOutcome.UNVERIFIED


async def test_stop_and_resume_verified() -> None:
    fake = FakeMiner()
    driver = _driver(fake)
    assert (await driver.stop()).ok
    assert (await driver.read_state()).is_mining is False
    assert (await driver.resume()).ok


async def test_a_stop_sent_is_read_back_only_when_asked() -> None:
    """send_stop returns once the miner accepted; the readback comes later."""
    fake = FakeMiner()
    driver = _driver(fake)
    readback = await driver.send_stop()
    assert callable(readback) and not fake.mining
    reads_before = len(fake.calls)
    result = await readback()
    assert result.ok and result.kind.value == "stop"
    assert len(fake.calls) > reads_before, "the readback reads the miner"
    fake.obey = False
    fake.mining = True
    readback = await driver.send_stop()
    assert callable(readback)
    assert (await readback()).outcome is CommandOutcome.UNVERIFIED
    fake.fail_next = ["hang", "hang", "hang"]
    failed = await driver.send_stop()
    assert not callable(failed) and failed.outcome is CommandOutcome.TIMEOUT


async def test_transient_errors_are_retried() -> None:
    fake = FakeMiner()
    fake.fail_next = [ConnectionResetError("reset"), KeyError("GROUPS")]
    result = await _driver(fake).set_power_limit(2000)
    assert result.ok
    assert fake.calls.count("set_power_limit") == 3


async def test_firmware_refusal_is_rejected_not_retried() -> None:
    fake = FakeMiner()
    fake.fail_next = [APIError("profileset: Cannot set profile while ATM is enabled")]
    result = await _driver(fake).set_power_limit(2000)
    assert result.outcome is CommandOutcome.REJECTED
    assert fake.calls.count("set_power_limit") == 1


async def test_hang_becomes_timeout_within_bound() -> None:
    fake = FakeMiner()
    fake.fail_next = ["hang", "hang", "hang"]
    started = time.monotonic()
    result = await _driver(fake).stop()
    elapsed = time.monotonic() - started
    assert result.outcome is CommandOutcome.TIMEOUT
    assert elapsed < 3 * 0.3 + 0.5  # (retries + 1) x timeout + backoff
    assert "after 3 attempts" in result.detail


async def test_read_timeout_is_unreachable() -> None:
    fake = FakeMiner()

    async def hang(include: list[str] | None = None) -> MinerData:
        await asyncio.sleep(3600)
        raise AssertionError

    fake.get_data = hang  # type: ignore[method-assign]
    started = time.monotonic()
    state = await _driver(fake, firmware="luxos").read_state()  # LuxOS: every read is get_data
    assert time.monotonic() - started < 0.6
    assert not state.reachable and state.error is not None and "0.3 s" in state.error


async def test_get_data_exception_never_escapes() -> None:
    fake = FakeMiner()

    async def boom(include: list[str] | None = None) -> MinerData:
        raise TypeError("sequence item 0: expected str instance, NoneType found")

    fake.get_data = boom  # type: ignore[method-assign]
    state = await _driver(fake, firmware="luxos").read_state()
    assert not state.reachable and state.error is not None and "TypeError" in state.error


async def test_password_never_in_results_reprs_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    fake = FakeMiner()
    driver = _driver(fake)
    assert fake.web.pwd == PASSWORD  # applied to pyasic's BOSer object
    fake.fail_next = [
        APIError(f"login failed for root:{PASSWORD}"),
    ]
    texts: list[str] = [repr(driver), str(driver)]
    with structlog.testing.capture_logs() as logs:
        results = [await driver.set_power_limit(2000)]
        fake.fail_next = [ConnectionError(f"password={PASSWORD}")] * 3
        results.append(await driver.stop())
        results.append(await driver.resume())
        state = await driver.read_state()
    texts += [repr(r) for r in results] + [r.detail for r in results] + [repr(state)]
    texts += [repr(entry) for entry in logs] + [caplog.text]
    assert logs, "commands are logged"
    for text in texts:
        assert PASSWORD not in text
    assert any("***" in r.detail for r in results)


def test_secret_hides_itself() -> None:
    secret = Secret(PASSWORD)
    assert PASSWORD not in repr(secret) + str(secret) + f"{secret}" + repr(MinerCredentials(password=secret))
    assert secret.reveal() == PASSWORD


def test_credentials_file_formats(tmp_path: Path) -> None:
    bare = tmp_path / "pw"
    bare.write_text(PASSWORD + "\n")
    store = load_credentials(bare)
    assert store.for_miner("10.0.0.1").password == Secret(PASSWORD)

    toml = tmp_path / "creds.toml"
    toml.write_text(
        f'[braiins]\nusername = "admin"\npassword = "{PASSWORD}"\n'
        '[miners."10.0.0.7"]\npassword = "other"\n'
    )
    store = load_credentials(toml)
    assert store.for_miner("10.0.0.1").username == "admin"
    assert store.for_miner("10.0.0.7").password == Secret("other")
    assert store.for_miner("10.0.0.7").username == "admin"
    assert load_credentials(None).for_miner("x").password is None


def test_credentials_errors_do_not_quote_the_file(tmp_path: Path) -> None:
    with pytest.raises(CredentialsError) as err:
        parse_credentials(f'[braiins]\npasword = "{PASSWORD}"\n')
    assert PASSWORD not in str(err.value)
    with pytest.raises(CredentialsError):
        load_credentials(tmp_path / "missing")


# ------------------------------------------------------------------ poller


class ScriptedDriver:
    def __init__(self, miner_id: str, delay_seconds: float = 0.0, raises: bool = False) -> None:
        self._id = miner_id
        self.delay_seconds = delay_seconds
        self.raises = raises

    @property
    def miner_id(self) -> str:
        return self._id

    async def read_state(self) -> MinerState:
        if self.raises:
            raise RuntimeError("bad driver")
        await asyncio.sleep(self.delay_seconds)
        return MinerState(miner_id=self._id, reachable=True, read_at_seconds=time.monotonic(), watts=100.0)

    async def set_power_limit(self, watts: int) -> Any:
        raise NotImplementedError

    async def stop(self) -> Any:
        raise NotImplementedError

    async def send_stop(self) -> Any:
        raise NotImplementedError

    async def resume(self) -> Any:
        raise NotImplementedError

    async def close(self) -> None:
        pass  # keeps no connections


async def test_poller_isolates_bad_drivers_and_respects_deadline() -> None:
    drivers: dict[str, MinerDriver] = {f"m{i}": ScriptedDriver(f"m{i}") for i in range(50)}
    drivers["bad"] = ScriptedDriver("bad", raises=True)
    drivers["hang"] = ScriptedDriver("hang", delay_seconds=3600)
    poller = FleetPoller(drivers, max_concurrency=8, read_timeout_seconds=0.2, slack_seconds=0.1)
    started = time.monotonic()
    snap = await poller.poll()
    assert time.monotonic() - started < 0.5
    assert snap.reachable_count == 50
    assert not snap.states["bad"].reachable
    assert snap.missed == frozenset({"hang"})
    assert snap.age_seconds("hang", snap.taken_at_seconds) == float("inf")
    assert list(snap.states) == list(drivers)  # inventory order


async def test_poller_keeps_previous_state_for_missed_miners() -> None:
    slow = ScriptedDriver("slow")
    poller = FleetPoller({"slow": slow}, max_concurrency=1, read_timeout_seconds=0.1, slack_seconds=0.05)
    first = await poller.poll()
    slow.delay_seconds = 3600
    second = await poller.poll()
    assert second.states["slow"] is first.states["slow"]
    assert second.missed == frozenset({"slow"})
    assert second.age_seconds("slow", second.taken_at_seconds) > 0


async def test_overloaded_polls_reach_every_miner_in_turn() -> None:
    # each poll has room for ~4 of 10 reads; without starting at the last poll's misses
    # the same tail of the inventory would never be read
    drivers: dict[str, MinerDriver] = {
        f"m{i}": ScriptedDriver(f"m{i}", delay_seconds=0.05) for i in range(10)}
    poller = FleetPoller(drivers, max_concurrency=1, read_timeout_seconds=0.17, slack_seconds=0.05)
    read: set[str] = set()
    for _ in range(4):
        snap = await poller.poll()
        assert 0 < len(snap.missed) < 10
        read |= set(drivers) - snap.missed
    assert read == set(drivers)
    assert list(snap.states) == list(drivers)  # snapshots stay in inventory order


async def test_snapshot_uses_injected_clock() -> None:
    clock = ManualClock(start_monotonic=500.0)
    poller = FleetPoller(
        {"a": ScriptedDriver("a")}, max_concurrency=4, read_timeout_seconds=1.0, clock=clock
    )
    snap = await poller.poll()
    assert snap.taken_at_seconds == 500.0
    assert snap.age_seconds("nope", 600.0) == float("inf")


def test_poller_rejects_zero_concurrency() -> None:
    with pytest.raises(ValueError):
        FleetPoller({}, max_concurrency=0, read_timeout_seconds=1.0, clock=SystemClock())


async def test_braiins_detail_fields_every_nth_read() -> None:
    fake = FakeMiner()
    seen: list[list[str]] = []
    original = fake.get_data

    async def recording(include: list[str] | None = None) -> MinerData:
        seen.append(list(include or []))
        data = await original(include)
        data.hashboards[0].temp = 61
        return data

    fake.get_data = recording  # type: ignore[method-assign]
    settings = DriverSettings(read_timeout_seconds=0.3, detail_every_reads=3)
    driver = _driver(fake, settings=settings)
    states = [await driver.read_state() for _ in range(6)]
    # "m1" starts its cycle at offset 0: two lean reads (one RPC multicommand each), then
    # a lean read with the details through get_data alongside, and so on
    assert zlib.crc32(b"m1") % 3 == 0
    lean = "rpc:summary+devs+tunerstatus"
    assert fake.calls == [lean, lean, lean, "get_data", lean, lean, lean, "get_data"]
    # get_data is asked for the details only: the power fields came with the lean read
    assert seen == [["hashboards", "fans", "hostname", "mac"], ["hashboards", "fans"]]
    assert "hostname" in seen[0] and "hostname" not in seen[1]  # identity until known
    assert states[0].temperature_c is None  # no detail read yet
    assert all(s.temperature_c == 61 for s in states[2:])  # carried forward between details
    assert states[0].watts == 3000 and states[0].power_limit_watts == 3000
    assert states[0].hashrate_ths == pytest.approx(100.0) and states[0].is_mining is True


async def test_detail_reads_of_a_fleet_are_spread_over_polls() -> None:
    every = 4
    first_detail_at: list[int] = []
    for i in range(24):
        fake = FakeMiner()
        miner = MinerConfig(address="127.9.9.9", model="Antminer S19j Pro", firmware="braiins",
                            name=f"miner-{i}")
        driver = PyasicDriver(miner, model=find_model("Antminer S19j Pro", "braiins"),
                              settings=DriverSettings(read_timeout_seconds=0.3,
                                                      detail_every_reads=every),
                              pyasic_miner=fake)
        details = []
        for n in range(2 * every):
            before = len(fake.calls)
            await driver.read_state()
            if "get_data" in fake.calls[before:]:
                details.append(n)
        assert len(details) == 2 and details[1] - details[0] == every
        first_detail_at.append(details[0])
    # every miner gets a detail read every `every` polls, but not all on the same one,
    # not even on the first poll
    assert set(first_detail_at) <= set(range(every))
    assert len(set(first_detail_at)) >= 3


async def _after_detail_read(fake: FakeMiner) -> PyasicDriver:
    driver = _driver(fake, settings=DriverSettings(read_timeout_seconds=0.3, detail_every_reads=5))
    while "get_data" not in fake.calls:  # lean reads until the detail + identity read
        assert (await driver.read_state()).reachable
    fake.calls.clear()
    return driver


async def test_braiins_readbacks_are_lean_rpc_reads() -> None:
    fake = FakeMiner()
    driver = _driver(fake)
    assert (await driver.set_power_limit(2300)).ok
    assert (await driver.stop()).ok
    assert (await driver.resume()).ok
    assert "get_data" not in fake.calls
    assert fake.calls.count("rpc:summary+devs+tunerstatus") == 3


async def test_luxos_never_uses_the_lean_read() -> None:
    fake = FakeMiner()
    driver = _driver(fake, firmware="luxos")
    await driver.read_state()
    await driver.read_state()
    assert (await driver.stop()).ok
    assert not [c for c in fake.calls if c.startswith("rpc:")]


async def test_lean_read_timeout_is_unreachable_with_the_read_timeout() -> None:
    fake = FakeMiner()
    driver = await _after_detail_read(fake)
    fake.rpc.fail_next = ["hang"]
    started = time.monotonic()
    state = await driver.read_state()
    assert time.monotonic() - started < 0.6
    assert not state.reachable and state.error == "read: no reply within 0.3 s"


@pytest.mark.parametrize(
    ("failure", "words"),
    [
        (APIError("Decode Error Expecting value: {"), "APIError"),
        (KeyError("STATUS"), "KeyError"),
        (AttributeError("'list' object has no attribute 'keys'"), "AttributeError"),
        ({"multicommand": True}, "no data in reply"),  # what a refused port gives
        ({"summary": [{"SUMMARY": [{"MHS 1m": "x"}]}], "multicommand": True}, "no data in reply"),
    ],
)
async def test_lean_read_failures_are_unreachable_never_raised(
    failure: BaseException | dict[str, Any], words: str
) -> None:
    fake = FakeMiner()
    driver = await _after_detail_read(fake)
    fake.rpc.fail_next = [failure]
    state = await driver.read_state()
    assert not state.reachable and state.error is not None and words in state.error
    assert fake.calls == ["rpc:summary+devs+tunerstatus"]
    # the next read is fine again and keeps identity and carried-forward detail
    state = await driver.read_state()
    assert state.reachable and state.watts == 3000


async def test_lean_read_keeps_identity_from_the_detail_read() -> None:
    fake = FakeMiner()
    driver = await _after_detail_read(fake)
    state = await driver.read_state()
    assert fake.calls == ["rpc:summary+devs+tunerstatus"]
    assert (state.hostname, state.mac) == ("bos-1", "02:00:00:00:00:09")


async def test_identity_unknown_is_asked_again_on_detail_reads_only() -> None:
    # hostname/mac come from gRPC GetMinerDetails only: a miner that never reports them
    # must not put every read back on gRPC (that is what saturated large fleets)
    fake = FakeMiner()
    original = fake.get_data
    asked: list[list[str]] = []

    async def anonymous(include: list[str] | None = None) -> MinerData:
        asked.append(list(include or []))
        data = await original(include)
        data.hostname = data.mac = None
        return data

    fake.get_data = anonymous  # type: ignore[method-assign]
    driver = _driver(fake, settings=DriverSettings(read_timeout_seconds=0.3, detail_every_reads=3))
    for _ in range(6):
        assert (await driver.read_state()).reachable
    assert fake.calls.count("get_data") == 2 and len(fake.calls) == 8  # + 6 lean reads
    assert all("hostname" in include for include in asked)


async def test_a_failing_detail_read_keeps_the_power_reading_and_waits_a_cycle() -> None:
    """Temperatures are monitoring: a hung gRPC detail read must neither make the
    miner unreachable nor be retried on every read."""
    fake = FakeMiner()
    original = fake.get_data
    hang = True
    asked = 0

    async def detail(include: list[str] | None = None) -> MinerData:
        nonlocal asked
        asked += 1
        if hang:
            await asyncio.sleep(3600)
        data = await original(include)
        data.hashboards[0].temp = 55
        return data

    fake.get_data = detail  # type: ignore[method-assign]
    driver = _driver(fake, settings=DriverSettings(read_timeout_seconds=0.3, detail_every_reads=3))
    states = [await driver.read_state() for _ in range(6)]
    assert all(s.reachable and s.watts == 3000 for s in states)
    assert asked == 2  # once a cycle, not on every read after a failure
    assert all(s.temperature_c is None for s in states)
    hang = False
    states = [await driver.read_state() for _ in range(3)]
    assert asked == 3
    assert states[-1].temperature_c == 55 and states[-1].hostname == "bos-1"




async def test_reads_yield_to_queued_stops_for_the_whole_poll() -> None:
    """While a trip's stops queue, no read starts: the poll ends at its deadline
    with everything missed; once they are through, all are read."""
    drivers: dict[str, MinerDriver] = {f"m{i}": ScriptedDriver(f"m{i}") for i in range(6)}
    gate = asyncio.Event()
    poller = FleetPoller(drivers, max_concurrency=2, read_timeout_seconds=0.1,
                         slack_seconds=0.05, yield_to=gate.wait)
    closed = await poller.poll()
    assert closed.missed == frozenset(drivers)
    gate.set()
    opened = await poller.poll()
    assert opened.missed == frozenset() and opened.reachable_count == 6


async def test_reads_defer_to_a_backlog_for_half_a_poll_only() -> None:
    """Stops and queued commands go first, but a backlog that never clears (or a
    stop hanging on a dead miner) cannot starve the reads: after half the poll's
    window they go ahead, all within the poll."""
    drivers: dict[str, MinerDriver] = {f"m{i}": ScriptedDriver(f"m{i}") for i in range(6)}
    never = asyncio.Event()
    poller = FleetPoller(drivers, max_concurrency=2, read_timeout_seconds=0.2, slack_seconds=0.2,
                         defer_to=never.wait)
    started = time.monotonic()
    snap = await poller.poll()
    took = time.monotonic() - started
    assert snap.missed == frozenset() and snap.reachable_count == 6, "read within the window"
    assert took >= 0.19, f"deferred for half the 0.4 s window first: {took:.3f} s"
