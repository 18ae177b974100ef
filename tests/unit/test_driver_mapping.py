"""Driver unit tests without sockets: MinerData mapping, is_mining, exception mapping."""

from __future__ import annotations

import pytest
from pyasic.data import Fan, HashBoard, MinerData
from pyasic.device.algorithm import SHA256Algo
from pyasic.errors import APIError

from drivers.base import CommandOutcome
from drivers.mapping import (
    FirmwareKind,
    MiningThresholds,
    derive_is_mining,
    hashrate_to_ths,
    state_from_data,
)
from drivers.pyasic_driver import classify_exception, pyasic_class_for, quantised_watts

T = MiningThresholds(min_mining_ths=1.0, idle_watts=55.0)


def _hr(ths: float) -> object:
    return SHA256Algo.hashrate(rate=ths, unit=SHA256Algo.unit.TH)


@pytest.mark.parametrize(
    ("reported", "firmware_reports", "ths", "watts", "expected"),
    [
        (True, False, 100.0, 3000.0, True),  # LuxOS says True always: hashrate decides
        (True, False, 0.0, 3000.0, False),  # LuxOS sleeping/booting: still "True" in pyasic
        (True, False, None, 3000.0, True),  # no hashrate: draw decides
        (True, False, None, 30.0, False),
        (True, False, None, None, None),  # nothing known
        (False, True, 100.0, 3000.0, False),  # BOSer says not mining: believed
        (True, True, 0.0, 150.0, False),  # BOSer booting: hashes nothing
        (True, True, None, None, True),  # BOSer's own word as the last resort
        (None, True, None, None, None),
    ],
)
def test_derive_is_mining(
    reported: bool | None, firmware_reports: bool, ths: float | None, watts: float | None,
    expected: bool | None,
) -> None:
    got = derive_is_mining(
        reported=reported, firmware_reports=firmware_reports, hashrate_ths=ths, watts=watts,
        thresholds=T,
    )
    assert got is expected


def test_thresholds_for_model() -> None:
    t = MiningThresholds.for_model(sleep_watts=30, nameplate_ths=104.0)
    assert t.idle_watts == 55.0
    assert t.min_mining_ths == pytest.approx(1.04)


def test_hashrate_units() -> None:
    assert hashrate_to_ths(None) is None
    assert hashrate_to_ths(_hr(104.0)) == pytest.approx(104.0)
    gh = SHA256Algo.hashrate(rate=104_000.0, unit=SHA256Algo.unit.GH)
    assert hashrate_to_ths(gh) == pytest.approx(104.0)


def _data(**fields: object) -> MinerData:
    return MinerData(ip="127.0.0.1", **fields)  # type: ignore[arg-type]


def test_state_from_luxos_data() -> None:
    data = _data(
        wattage=2000,
        hashboards=[HashBoard(slot=i, hashrate=_hr(26.0), temp=60) for i in range(3)],
        fans=[Fan(speed=5000), Fan(speed=None)],
        uptime=42,
    )
    data.wattage_limit = 2000
    state = state_from_data(
        "m1", data, read_at_seconds=5.0, firmware=FirmwareKind.LUXOS, thresholds=T,
        asked=("hashboards", "wattage", "wattage_limit", "fans", "uptime"),
    )
    assert state.reachable
    assert state.watts == 2000.0
    assert state.power_limit_watts == 2000.0
    assert state.hashrate_ths == pytest.approx(78.0)
    assert state.is_mining is True
    assert state.fan_rpm == (5000,)
    assert state.uptime_seconds == 42.0
    assert state.temperature_c == 60.0
    assert state.read_at_seconds == 5.0


def test_luxos_sleeping_is_not_mining_although_pyasic_says_true() -> None:
    data = _data(wattage=30, hashboards=[HashBoard(slot=0, hashrate=_hr(0.0))])
    assert data.is_mining is True  # pyasic's default for LuxOS
    state = state_from_data(
        "m1", data, read_at_seconds=0.0, firmware=FirmwareKind.LUXOS, thresholds=T,
        asked=("hashboards", "wattage"),
    )
    assert state.is_mining is False


def test_braiins_identity_is_kept_from_earlier_reads() -> None:
    data = _data(wattage=3000, is_mining=True, hashrate=_hr(100.0))
    state = state_from_data(
        "m1", data, read_at_seconds=0.0, firmware=FirmwareKind.BRAIINS, thresholds=T,
        asked=("hashrate", "wattage", "is_mining"), hostname="h1", mac="02:00:00:00:00:01",
    )
    assert (state.hostname, state.mac) == ("h1", "02:00:00:00:00:01")


def test_all_none_reply_is_unreachable() -> None:
    # what pyasic returns for a closed LuxOS port: no exception, nothing filled in
    data = _data(hashboards=[HashBoard(slot=0)], fans=[Fan()])
    state = state_from_data(
        "m1", data, read_at_seconds=1.0, firmware=FirmwareKind.LUXOS, thresholds=T,
        asked=("hashboards", "wattage", "wattage_limit", "fans", "uptime"),
    )
    assert not state.reachable
    assert state.error is not None and "no data" in state.error


def test_nan_and_garbage_fields_are_none() -> None:
    data = _data(wattage=3000, uptime=None)
    data.hashrate = float("nan")  # type: ignore[assignment]
    state = state_from_data(
        "m1", data, read_at_seconds=0.0, firmware=FirmwareKind.LUXOS, thresholds=T,
        asked=("hashrate", "wattage"),
    )
    assert state.hashrate_ths is None
    assert state.is_mining is True  # 3000 W > idle


def test_classify_exception() -> None:
    assert classify_exception(APIError("profileset: Cannot set profile")) is CommandOutcome.REJECTED
    assert classify_exception(APIError("Decode Error x: y")) is CommandOutcome.ERROR
    try:
        try:
            raise ConnectionRefusedError()
        except ConnectionRefusedError as cause:
            raise APIError("gRPC command failed") from cause
    except APIError as chained:
        assert classify_exception(chained) is CommandOutcome.ERROR
    assert classify_exception(KeyError("GROUPS")) is CommandOutcome.ERROR
    assert classify_exception(TypeError("x")) is CommandOutcome.ERROR


def test_quantised_watts() -> None:
    profiles = (1100, 1500, 2000, 2500, 3050)
    assert quantised_watts(2200, profiles) == 2000
    assert quantised_watts(3050, profiles) == 3050
    assert quantised_watts(9999, profiles) == 3050
    assert quantised_watts(1000, profiles) is None
    assert quantised_watts(2345, None) == 2345  # exact-watt firmware


def test_pyasic_class_from_inventory() -> None:
    lux = pyasic_class_for("Antminer S19j Pro", "luxos")
    bos = pyasic_class_for("antminer s21", "braiins")
    assert lux is not None and lux.__name__ == "LUXMinerS19jPro"
    assert bos is not None and bos.__name__ == "BOSMinerS21"
    assert pyasic_class_for("S19j Pro", "luxos") is lux  # without the make
    assert pyasic_class_for("Nonexistent 9000", "luxos") is None
    assert pyasic_class_for("Antminer S21", "vnish") is None


def test_fans_alone_are_not_a_usable_reading() -> None:
    from drivers.base import MinerState
    from drivers.mapping import has_any_reading

    assert not has_any_reading(MinerState("m", True, 0.0, fan_rpm=(6000,), uptime_seconds=5.0))
    assert has_any_reading(MinerState("m", True, 0.0, watts=30.0))
    assert has_any_reading(MinerState("m", True, 0.0, hashrate_ths=0.0))
    assert has_any_reading(MinerState("m", True, 0.0, power_limit_watts=2000.0))
