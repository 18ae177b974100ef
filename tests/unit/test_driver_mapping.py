"""Driver unit tests without sockets: MinerData mapping, is_mining, exception mapping."""

from __future__ import annotations

import pytest
from pyasic.data import Fan, HashBoard, MinerData
from pyasic.device.algorithm import SHA256Algo
from pyasic.errors import APIError

from drivers.base import CommandOutcome, MinerState
from drivers.mapping import (
    FirmwareKind,
    MiningThresholds,
    derive_is_mining,
    hashrate_to_ths,
    state_from_bosminer_rpc,
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


# ------------------------------------------------- BOSer lean RPC read


def _bosminer_reply(
    *, mhs_1m: object = 104_000_000.0, devs_mhs: tuple[object, ...] = (34_666_666.7,) * 3,
    elapsed: object = 3600, power_limit: object = 3250, draw: object = 3190,
    chains: object = None,
) -> dict[str, object]:
    """pyasic's rpc.multicommand("summary", "devs", "tunerstatus") reply, shaped as real
    bosminer / simulators.miners.boser answer it (each section a one-item list)."""

    def status(code: int, msg: str) -> list[dict[str, object]]:
        return [{"STATUS": "S", "When": 1_700_000_000, "Code": code, "Msg": msg,
                 "Description": "BOSer boser-buildroot 0.1.0-0ce150e9"}]

    if chains is None:
        chains = [{"HashchainIndex": i, "Status": "Stable", "PowerLimitWatt": 1083}
                  for i in range(3)]
    return {
        "summary": [{"STATUS": status(11, "Summary"), "id": 1,
                     "SUMMARY": [{"Elapsed": elapsed, "MHS av": 104e6, "MHS 5s": 104e6,
                                  "MHS 1m": mhs_1m, "Accepted": 0, "Rejected": 0}]}],
        "devs": [{"STATUS": status(9, "3 ASC(s)"), "id": 1,
                  "DEVS": [{"ASC": i, "ID": i + 1, "Enabled": "Y", "Status": "Alive",
                            "MHS 5s": mhs, "MHS 1m": mhs} for i, mhs in enumerate(devs_mhs)]}],
        "tunerstatus": [{"STATUS": status(99, "Tuner Status"), "id": 1,
                         "TUNERSTATUS": [{"PowerLimit": power_limit,
                                          "ApproximateMinerPowerConsumption": draw,
                                          "TunerChainStatus": chains}]}],
        "id": 1,
        "multicommand": True,  # added by pyasic's multicommand
    }


def _lean(reply: object, **kw: object) -> MinerState:
    return state_from_bosminer_rpc("m1", reply, read_at_seconds=7.0, thresholds=T, **kw)  # type: ignore[arg-type]


def test_bosminer_rpc_reply_maps_every_field() -> None:
    state = _lean(_bosminer_reply(), hostname="h1", mac="02:00:00:00:00:01")
    assert state.reachable and state.error is None
    assert state.read_at_seconds == 7.0
    assert state.hashrate_ths == pytest.approx(104.0)
    assert state.watts == 3190.0
    assert state.power_limit_watts == 3250.0
    assert state.is_mining is True
    assert state.uptime_seconds == 3600.0
    assert state.errors == ()
    assert (state.hostname, state.mac) == ("h1", "02:00:00:00:00:01")  # carried, not read
    assert state.temperature_c is None and state.fan_rpm == ()  # detail reads only


def test_bosminer_rpc_sleeping_miner() -> None:
    state = _lean(_bosminer_reply(mhs_1m=0.0, devs_mhs=(0.0, 0.0, 0.0), draw=15))
    assert state.reachable
    assert state.is_mining is False
    assert state.hashrate_ths == 0.0 and state.watts == 15.0
    assert state.power_limit_watts == 3250.0


def test_bosminer_devs_say_stopped_although_1m_average_still_hashes() -> None:
    # stop was just sent: the 1-minute average lags, devs' 5 s rate does not
    state = _lean(_bosminer_reply(mhs_1m=52e6, devs_mhs=(0.0, 0.0, 0.0)))
    assert state.hashrate_ths == pytest.approx(52.0)
    assert state.is_mining is False


def test_bosminer_chain_errors_as_pyasic_words_them() -> None:
    chains = [
        {"HashchainIndex": 6, "Status": "Stable"},
        {"HashchainIndex": 7, "Status": "Failed to initialize {code: 12}"},
        {"HashchainIndex": 8, "Status": "Tuning individual chips"},
    ]
    assert _lean(_bosminer_reply(chains=chains)).errors == ("Slot 1 failed to initialize",)


async def test_bosminer_mapping_agrees_with_pyasic_boser_parsers() -> None:
    """The same reply through pyasic's own BOSer _get_* parsers (pure with their args)."""
    from pyasic.miners.antminer.bosminer import BOSMinerS19jPro

    miner = BOSMinerS19jPro("127.0.0.1")
    chains = [{"HashchainIndex": 0, "Status": "Stable"},
              {"HashchainIndex": 2, "Status": "Hashboard failure {x}"}]
    for reply in (
        _bosminer_reply(chains=chains),
        _bosminer_reply(mhs_1m=0.0, devs_mhs=(0.0, 0.0, 0.0), draw=15),
        _bosminer_reply(mhs_1m="98765432.1", devs_mhs=(0.0, 5.0), elapsed=17),
    ):
        ours = _lean(reply)
        rpc = {k: v[0] for k, v in reply.items() if isinstance(v, list)}
        theirs_hr = await miner._get_hashrate(rpc_summary=rpc["summary"])
        assert ours.hashrate_ths == pytest.approx(hashrate_to_ths(theirs_hr))
        assert ours.uptime_seconds == await miner._get_uptime(rpc_summary=rpc["summary"])
        theirs_errors = await miner._get_errors(rpc_tunerstatus=rpc["tunerstatus"])
        assert ours.errors == tuple(e.error_message for e in theirs_errors)
        reported = await miner._is_mining(rpc_devs=rpc["devs"])
        assert ours.is_mining is derive_is_mining(
            reported=reported, firmware_reports=True, hashrate_ths=ours.hashrate_ths,
            watts=ours.watts, thresholds=T)


def test_bosminer_empty_devs_is_not_mining_as_in_pyasic() -> None:
    state = _lean(_bosminer_reply(devs_mhs=()))
    assert state.is_mining is False  # pyasic: any([]) is False
    assert state.hashrate_ths == pytest.approx(104.0)


@pytest.mark.parametrize(
    "reply",
    [
        None, "garbage", 42, [], [1, 2], {}, {"multicommand": True},  # refused port: {} + flag
        {"summary": "x", "devs": 1, "tunerstatus": None},
        {"summary": [], "devs": [], "tunerstatus": []},
        {"summary": [{}], "devs": [{}], "tunerstatus": [{}]},
        {"summary": [{"SUMMARY": []}], "tunerstatus": [{"TUNERSTATUS": {}}]},
        {"summary": [{"SUMMARY": ["x"]}], "tunerstatus": [{"TUNERSTATUS": [None]}]},
    ],
)
def test_bosminer_reply_without_power_fields_is_unreachable(reply: object) -> None:
    state = _lean(reply)
    assert not state.reachable
    assert state.error is not None and "no data" in state.error


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"mhs_1m": "fast"}, "hashrate_ths"),
        ({"mhs_1m": float("nan")}, "hashrate_ths"),
        ({"mhs_1m": float("inf")}, "hashrate_ths"),
        ({"mhs_1m": -5.0}, "hashrate_ths"),
        ({"mhs_1m": True}, "hashrate_ths"),
        ({"mhs_1m": None}, "hashrate_ths"),
        ({"draw": "3190W"}, "watts"),
        ({"draw": float("nan")}, "watts"),
        ({"draw": -1}, "watts"),
        ({"draw": 10**400}, "watts"),  # float() overflows
        ({"draw": [3190]}, "watts"),
        ({"power_limit": "NaN"}, "power_limit_watts"),
        ({"power_limit": 0}, "power_limit_watts"),
        ({"power_limit": {"watt": 3250}}, "power_limit_watts"),
        ({"elapsed": "soon"}, "uptime_seconds"),
        ({"elapsed": -3}, "uptime_seconds"),
        ({"elapsed": float("inf")}, "uptime_seconds"),
    ],
)
def test_bosminer_garbage_field_is_none_others_kept(
    overrides: dict[str, object], field: str
) -> None:
    good = _lean(_bosminer_reply())
    state = _lean(_bosminer_reply(**overrides))  # type: ignore[arg-type]
    assert state.reachable
    assert getattr(state, field) is None
    for other in ("hashrate_ths", "watts", "power_limit_watts", "uptime_seconds"):
        if other != field:
            assert getattr(state, other) == getattr(good, other), other


def test_bosminer_numeric_strings_parse_as_pyasic_float_does() -> None:
    state = _lean(_bosminer_reply(mhs_1m="104000000", draw="3190", elapsed="60"))
    assert state.hashrate_ths == pytest.approx(104.0)
    assert state.watts == 3190.0 and state.uptime_seconds == 60.0


@pytest.mark.parametrize(
    ("devs", "expected"),
    [
        ((5.0, "x"), True),  # one board hashing is enough
        (("x", 0.0), None),  # cannot tell: hashrate decides
        ((float("nan"), 0.0), None),
        ((None,), None),
        ((0.0, 0.0), False),
    ],
)
def test_bosminer_devs_garbage(devs: tuple[object, ...], expected: bool | None) -> None:
    # no hashrate, no draw (the limit keeps it reachable): is_mining rests on devs alone
    state = _lean(_bosminer_reply(mhs_1m=None, draw=None, devs_mhs=devs))
    assert state.reachable
    assert state.is_mining is expected


def test_bosminer_devs_not_a_list_or_rows_not_objects() -> None:
    reply = _bosminer_reply(mhs_1m=None, draw=None)
    reply["devs"] = [{"DEVS": {"MHS 5s": 1.0}}]
    assert _lean(reply).is_mining is None
    reply["devs"] = [{"DEVS": ["a", 3]}]
    assert _lean(reply).is_mining is None


@pytest.mark.parametrize(
    "chains",
    [
        "Stable", {"HashchainIndex": 1}, [None, 3, "x"], [{}],
        [{"HashchainIndex": "a", "Status": "Broken"}], [{"HashchainIndex": 1, "Status": 7}],
        [{"HashchainIndex": True, "Status": "Broken"}], [{"HashchainIndex": 0, "Status": ""}],
    ],
)
def test_bosminer_garbage_chains_give_no_errors_and_no_exception(chains: object) -> None:
    state = _lean(_bosminer_reply(chains=chains))
    assert state.reachable and state.errors == ()


def test_bosminer_malformed_chain_entries_are_skipped_not_fatal() -> None:
    chains = [{"HashchainIndex": 0, "Status": "Stable"}, None,
              {"HashchainIndex": "2", "Status": "Overheated"}]
    assert _lean(_bosminer_reply(chains=chains)).errors == ("Slot 2 overheated",)
