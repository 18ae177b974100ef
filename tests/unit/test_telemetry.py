"""Payload parsing and the telemetry store: every rejection reason, units, sign, paths, timestamps."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.config import SiteConfig, StreamConfig
from controller.telemetry import (
    MAX_PAYLOAD_BYTES,
    REJECTION_REASONS,
    Reading,
    Rejection,
    TelemetryStore,
    parse_payload,
)

WALL = 1_700_000_000.0
MONO = 1_000.0


def stream(**kw: Any) -> StreamConfig:
    base: dict[str, Any] = {"kind": "surplus", "topic": "plant/surplus"}
    base.update(kw)
    return StreamConfig(**base)


JSON_TS = stream(format="json", value_path="surplus_kw", timestamp_path="ts")


def parse(s: StreamConfig, payload: bytes | str, wall: float = WALL) -> Reading | Rejection:
    data = payload.encode() if isinstance(payload, str) else payload
    return parse_payload("s", s, data, wall, MONO)


def reason(result: Reading | Rejection) -> str:
    assert isinstance(result, Rejection), result
    assert result.reason in REJECTION_REASONS
    return result.reason


def watts(result: Reading | Rejection) -> float:
    assert isinstance(result, Reading), result
    return result.watts


# ------------------------------------------------------------------ numbers


@pytest.mark.parametrize(
    ("unit", "payload", "expected"),
    [("W", "1500", 1500.0), ("kW", "1.5", 1500.0), ("MW", "0.0015", 1500.0), ("kW", " 2e3 \n", 2e6)],
)
def test_bare_number_units(unit: str, payload: str, expected: float) -> None:
    assert watts(parse(stream(unit=unit), payload)) == pytest.approx(expected)


def test_sign_flips_import_reported_negative() -> None:
    s = stream(kind="site_meter", topic="m", sign=-1)
    assert watts(parse(s, "-12.5")) == pytest.approx(12_500.0)
    assert reason(parse(s, "3")) == "negative"


def test_zero_is_fine_and_not_negative_zero() -> None:
    w = watts(parse(stream(sign=-1), "0"))
    assert w == 0.0 and math.copysign(1.0, w) == 1.0


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ("nan", "nan"),
        ("NaN", "nan"),
        ("-nan", "nan"),
        ("inf", "inf"),
        ("-Infinity", "inf"),
        ("1e999", "inf"),
        ("abc", "not_a_number"),
        ("", "not_a_number"),
        ("true", "not_a_number"),
        ("1_000", "not_a_number"),
        ("0x10", "not_a_number"),
    ],
)
def test_bare_number_rejections(payload: str, expected: str) -> None:
    assert reason(parse(stream(), payload)) == expected


def test_not_utf8() -> None:
    assert reason(parse(stream(), b"\xff\xfe")) == "not_a_number"
    assert reason(parse(JSON_TS, b"\xff\xfe")) == "bad_json"


def test_too_large() -> None:
    assert reason(parse(stream(), b"1" * (MAX_PAYLOAD_BYTES + 1))) == "too_large"


def test_implausible_against_configured_limit_and_default() -> None:
    s = stream(max_plausible_kw=100.0)
    assert watts(parse(s, "100")) == 100_000.0
    assert reason(parse(s, "100.5")) == "implausible"
    assert reason(parse(stream(unit="MW"), "1e300")) == "implausible"
    assert reason(parse(stream(unit="MW"), "20000")) == "implausible"  # 20 GW > default 10 GW


@pytest.mark.parametrize("kind", ["plant_output", "plant_demand", "site_meter", "other_load"])
def test_every_kind_but_surplus_rejects_negative(kind: str) -> None:
    assert reason(parse(stream(kind=kind), "-0.001")) == "negative"


def test_negative_surplus_is_a_deficit_read_as_zero_at_once() -> None:
    # rejecting it would hold the previous (higher) budget through stale + grace
    assert watts(parse(stream(kind="surplus"), "-5")) == 0.0
    assert watts(parse(stream(kind="surplus", unit="MW"), "-1e3")) == 0.0


# --------------------------------------------------------------------- json


def test_json_value_and_unix_seconds() -> None:
    r = parse(JSON_TS, json.dumps({"surplus_kw": 12.5, "ts": WALL - 1}))
    assert isinstance(r, Reading)
    assert r.watts == 12_500.0 and r.source_wall == WALL - 1
    assert r.received_wall == WALL and r.received_mono == MONO and r.kind == "surplus"


def test_json_milliseconds_and_iso8601() -> None:
    ms = parse(JSON_TS, json.dumps({"surplus_kw": 1, "ts": int((WALL - 2) * 1000)}))
    assert isinstance(ms, Reading) and ms.source_wall == pytest.approx(WALL - 2)
    iso = parse(JSON_TS, json.dumps({"surplus_kw": 1, "ts": "2023-11-14T22:13:20Z"}))
    assert isinstance(iso, Reading) and iso.source_wall == pytest.approx(1_700_000_000.0)
    offset = parse(JSON_TS, json.dumps({"surplus_kw": 1, "ts": "2023-11-15T03:13:20+05:00"}))
    assert isinstance(offset, Reading) and offset.source_wall == pytest.approx(1_700_000_000.0)
    naive = parse(JSON_TS, json.dumps({"surplus_kw": 1, "ts": "2023-11-14T22:13:20"}))
    assert isinstance(naive, Reading) and naive.source_wall == pytest.approx(1_700_000_000.0)
    text_num = parse(JSON_TS, json.dumps({"surplus_kw": 1, "ts": "1700000000.5"}))
    assert isinstance(text_num, Reading) and text_num.source_wall == 1_700_000_000.5


@pytest.mark.parametrize(
    "ts", ["yesterday", True, None, -5, 0, [1], {"a": 1}, float("nan"), "2023-13-45T00:00:00Z"]
)
def test_bad_timestamps(ts: Any) -> None:
    payload = json.dumps({"surplus_kw": 1, "ts": ts}).replace("NaN", "NaN")
    assert reason(parse(JSON_TS, payload)) == "bad_timestamp"


def test_nested_path_with_list_indices() -> None:
    s = stream(format="json", value_path="data.values.1.kw", timestamp_path="data.meta.-1")
    payload = {"data": {"values": [{"kw": 1}, {"kw": 2.5}], "meta": [0, WALL]}}
    r = parse(s, json.dumps(payload))
    assert isinstance(r, Reading) and r.watts == 2_500.0 and r.source_wall == WALL


@pytest.mark.parametrize(
    "doc",
    [
        {"other": 1},
        {"data": 5},
        {"data": {"values": []}},
        {"data": {"values": [{"kw": 1}]}},
        {"data": {"values": [0, {"kw": 1}]}},
        {"data": {"values": [0, {"kw": 1}], "meta": []}},
    ],
)
def test_missing_field(doc: dict[str, Any]) -> None:
    s = stream(format="json", value_path="data.values.1.kw", timestamp_path="data.meta.0")
    assert reason(parse(s, json.dumps(doc))) == "missing_field"


def test_numeric_path_part_is_a_key_in_an_object() -> None:
    s = stream(format="json", value_path="data.values.1.kw", timestamp_path="data.meta.0")
    doc = {"data": {"values": {"1": {"kw": 1}}, "meta": [WALL]}}
    assert watts(parse(s, json.dumps(doc))) == 1_000.0


def test_missing_timestamp_when_configured() -> None:
    assert reason(parse(JSON_TS, json.dumps({"surplus_kw": 1}))) == "missing_field"


def test_timestamp_optional() -> None:
    s = stream(format="json", value_path="surplus_kw")
    r = parse(s, '{"surplus_kw": 3}')
    assert isinstance(r, Reading) and r.source_wall is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("NaN", "nan"),
        ("Infinity", "inf"),
        ("-Infinity", "inf"),
        ("true", "not_a_number"),
        ("null", "not_a_number"),
        ('"abc"', "not_a_number"),
        ('"nan"', "nan"),
        ("[1]", "not_a_number"),
        ("{}", "not_a_number"),
        ("1" + "0" * 400, "inf"),
    ],
)
def test_json_value_rejections(value: str, expected: str) -> None:
    payload = '{"surplus_kw": ' + value + ', "ts": ' + str(WALL) + "}"
    assert reason(parse(JSON_TS, payload)) == expected


def test_json_numeric_string_is_accepted() -> None:
    assert watts(parse(JSON_TS, json.dumps({"surplus_kw": "7.5", "ts": WALL}))) == 7_500.0


@pytest.mark.parametrize("payload", ["{", "surplus=5", "", "[" * 5000, '{"surplus_kw": 1,}'])
def test_bad_json(payload: str) -> None:
    assert reason(parse(JSON_TS, payload)) == "bad_json"


def test_json_top_level_not_object() -> None:
    assert reason(parse(JSON_TS, "5")) == "missing_field"


# ------------------------------------------------------------------ fuzzing

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["surplus_kw", "ts", "data", "0", "x"]), children, max_size=4),
    max_leaves=12,
)

FUZZ_STREAMS = [
    stream(),
    stream(unit="MW", sign=-1),
    JSON_TS,
    stream(format="json", value_path="data.0.surplus_kw", timestamp_path="data.0.ts",
           max_plausible_kw=5_000.0),
]


def _check_never_bad(result: Reading | Rejection, s: StreamConfig) -> None:
    if isinstance(result, Reading):
        assert math.isfinite(result.watts)
        assert result.watts >= 0.0
        limit = s.max_plausible_kw * 1000 if s.max_plausible_kw else 10e9
        assert result.watts <= limit
        assert result.source_wall is None or math.isfinite(result.source_wall)
    else:
        assert result.reason in REJECTION_REASONS


@given(st.binary(max_size=300), st.sampled_from(FUZZ_STREAMS))
def test_fuzz_bytes_never_raise(payload: bytes, s: StreamConfig) -> None:
    _check_never_bad(parse_payload("s", s, payload, WALL, MONO), s)


@given(json_values, st.sampled_from(FUZZ_STREAMS))
def test_fuzz_json_never_raise(doc: Any, s: StreamConfig) -> None:
    payload = json.dumps(doc).encode()
    _check_never_bad(parse_payload("s", s, payload, WALL, MONO), s)


@given(
    st.one_of(st.floats(), st.integers(), st.text(max_size=10), st.booleans(), st.none()),
    st.one_of(st.floats(), st.integers(), st.text(max_size=30), st.none()),
    st.sampled_from(FUZZ_STREAMS[2:3]),
)
def test_fuzz_value_and_timestamp(value: Any, ts: Any, s: StreamConfig) -> None:
    payload = json.dumps({"surplus_kw": value, "ts": ts}).encode()
    _check_never_bad(parse_payload("s", s, payload, WALL, MONO), s)


# -------------------------------------------------------------------- store

SITE = SiteConfig(grant_cap_kw=100.0, stale_after_seconds=10.0, grace_seconds=5.0)


class FakeLog:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def warning(self, event: str, **kw: Any) -> None:
        self.events.append({"event": event, **kw})


def make_store(**kw: Any) -> tuple[TelemetryStore, FakeLog]:
    log = FakeLog()
    store = TelemetryStore(
        SITE,
        {"surplus": JSON_TS, "dc": stream(kind="other_load", topic="dc/load")},
        logger=log,
        **kw,
    )
    return store, log


def sample(kw: float, ts: float) -> bytes:
    return json.dumps({"surplus_kw": kw, "ts": ts}).encode()


def test_store_accepts_and_ages_by_monotonic_receive_time() -> None:
    store, _ = make_store()
    r = store.ingest("surplus", sample(5, WALL - 1), WALL, MONO)
    assert isinstance(r, Reading)
    assert store.latest("surplus") == r
    assert store.age_seconds("surplus", MONO + 3.5) == 3.5
    assert store.age_seconds("dc", MONO) is None
    assert store.latest("other_load") is None
    assert store.accepted_counts["surplus"] == 1


def test_store_out_of_order_and_duplicate() -> None:
    store, _ = make_store()
    store.ingest("surplus", sample(5, WALL - 1), WALL, MONO)
    assert reason(store.ingest("surplus", sample(9, WALL - 2), WALL + 1, MONO + 1)) == "out_of_order"
    # a re-delivered retained sample (same timestamp) must not refresh freshness
    assert reason(store.ingest("surplus", sample(5, WALL - 1), WALL + 2, MONO + 2)) == "out_of_order"
    latest = store.latest("surplus")
    assert latest is not None and latest.watts == 5_000.0 and latest.received_mono == MONO
    assert store.rejected_counts[("surplus", "out_of_order")] == 2


def test_same_timestamp_with_a_new_value_is_news() -> None:
    # a plant with one-second timestamps may publish twice in a second: a drop in that
    # second must not be thrown away as "out of order"
    store, _ = make_store()
    store.ingest("surplus", sample(5, WALL - 1), WALL, MONO)
    r = store.ingest("surplus", sample(2, WALL - 1), WALL + 0.5, MONO + 0.5)
    assert isinstance(r, Reading) and r.watts == 2_000.0


def test_store_stale_and_future() -> None:
    store, _ = make_store(future_tolerance_seconds=2.0)
    assert reason(store.ingest("surplus", sample(5, WALL - 10.5), WALL, MONO)) == "stale"
    assert reason(store.ingest("surplus", sample(5, WALL + 2.5), WALL, MONO)) == "future_timestamp"
    assert isinstance(store.ingest("surplus", sample(5, WALL + 1.5), WALL, MONO), Reading)
    assert store.latest("surplus") is not None


def test_wall_clock_step_does_not_make_old_data_fresh() -> None:
    store, _ = make_store()
    store.ingest("surplus", sample(5, WALL), WALL, MONO)
    # wall clock jumps an hour back; the monotonic age still grows
    assert store.age_seconds("surplus", MONO + 20) == 20


def test_store_counts_and_rate_limits_logs() -> None:
    seen: list[Rejection] = []
    accepted: list[Reading] = []
    store, log = make_store(on_reject=seen.append, on_accept=accepted.append)
    for i in range(5):
        store.ingest("surplus", b"garbage", WALL + i, MONO + i)
    store.ingest("surplus", b'{"surplus_kw": NaN, "ts": 1}', WALL, MONO + 5)
    assert store.rejected_counts[("surplus", "bad_json")] == 5
    assert store.rejected_counts[("surplus", "nan")] == 1
    assert len(seen) == 6 and not accepted
    assert [e["reason"] for e in log.events] == ["bad_json", "nan"]
    store.ingest("surplus", b"garbage", WALL + 61, MONO + 61)
    assert [e["reason"] for e in log.events] == ["bad_json", "nan", "bad_json"]
    assert log.events[-1]["suppressed"] == 4
    assert log.events[-1]["event"] == "telemetry_rejected"
    store.ingest("dc", b"-4", WALL, MONO + 62)
    assert log.events[-1]["stream"] == "dc" and log.events[-1]["reason"] == "negative"
    assert store.rejected_total() == 8 and store.rejected_total("dc") == 1


def test_store_topic_handlers() -> None:
    store, _ = make_store()
    handlers = store.handlers()
    assert set(handlers) == {"plant/surplus", "dc/load"}
    handlers["dc/load"]("dc/load", b"12", WALL, MONO)
    latest = store.latest("other_load")
    assert latest is not None and latest.watts == 12_000.0
    assert store.ingest_topic("unknown/topic", b"1", WALL, MONO) is None


def test_untrusted_timestamp_can_still_lower_but_never_raise() -> None:
    """Our clock stepped back (or the plant's is ahead): its samples look like the
    future. A drop they report is taken at once; a rise is not; freshness is not
    refreshed either way."""
    store, _ = make_store(future_tolerance_seconds=2.0)
    store.ingest("surplus", sample(20, WALL), WALL, MONO)
    ahead = WALL + 60  # 60 s in "the future"
    assert reason(store.ingest("surplus", sample(30, ahead), WALL + 1, MONO + 1)) == "future_timestamp"
    latest = store.latest("surplus")
    assert latest is not None and latest.watts == 20_000.0, "a rise from an untrusted timestamp is ignored"
    assert reason(store.ingest("surplus", sample(5, ahead + 1), WALL + 2, MONO + 2)) == "future_timestamp"
    latest = store.latest("surplus")
    assert latest is not None and latest.watts == 5_000.0, "a drop is acted on"
    assert latest.received_mono == MONO, "but it does not make the stream look fresh"
