"""Plant simulator profiles and payload rendering, round-tripped through telemetry parsing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.config import StreamConfig
from controller.telemetry import Reading, Rejection, parse_payload
from simulators.plant.cli import parse_broker
from simulators.plant.profile import (
    BUILTIN_PROFILES,
    GARBAGE_KINDS,
    CsvReplay,
    Dropout,
    Garbage,
    Noise,
    Ramps,
    Stale,
    Steady,
    Steps,
    Trip,
    load_profile,
)
from simulators.plant.publisher import PlantPublisher, expected_reason, render, render_garbage

WALL = 1_700_000_000.0

STREAMS: dict[str, StreamConfig] = {
    "surplus": StreamConfig(kind="surplus", topic="p/s", format="json", value_path="surplus_kw",
                            timestamp_path="ts", max_plausible_kw=1_000.0),
    "out": StreamConfig(kind="plant_output", topic="p/o", unit="MW"),
    "dem": StreamConfig(kind="plant_demand", topic="p/d", format="json",
                        value_path="data.values.1", timestamp_path="meta.0.ts", unit="W"),
    "meter": StreamConfig(kind="site_meter", topic="s/m", sign=-1, unit="W"),
    "dc": StreamConfig(kind="other_load", topic="dc/l", format="json", value_path="kw", sign=-1),
}
BY_TOPIC = {s.topic: (n, s) for n, s in STREAMS.items()}


def parse_all(payloads: list[tuple[str, bytes]]) -> dict[str, Reading | Rejection]:
    out: dict[str, Reading | Rejection] = {}
    for topic, payload in payloads:
        name, stream = BY_TOPIC[topic]
        out[name] = parse_payload(name, stream, payload, WALL, 1.0)
    return out


@given(st.floats(0, 999.0), st.floats(0, 500.0), st.floats(0, 1e7))
def test_render_round_trips_through_parse(surplus_kw: float, other_kw: float, meter_w: float) -> None:
    pub = PlantPublisher(STREAMS, Steady(surplus_kw, other_load_kw=other_kw))
    parsed = parse_all(pub.payloads_at(0.0, WALL, meter_watts=meter_w))
    expected = {
        "surplus": surplus_kw * 1000,
        "out": (1000 + surplus_kw) * 1000,
        "dem": 1_000_000.0,
        "meter": meter_w,
        "dc": other_kw * 1000,
    }
    for name, watts in expected.items():
        r = parsed[name]
        assert isinstance(r, Reading), r
        assert r.watts == pytest.approx(watts, rel=1e-9, abs=1e-6)
    surplus = parsed["surplus"]
    assert isinstance(surplus, Reading) and surplus.source_wall == WALL


def test_no_meter_source_skips_meter_stream() -> None:
    pub = PlantPublisher(STREAMS, Steady(10))
    assert "s/m" not in [t for t, _ in pub.payloads_at(0.0, WALL)]


@pytest.mark.parametrize("kind", GARBAGE_KINDS)
@pytest.mark.parametrize("name", list(STREAMS))
def test_each_garbage_kind_gives_its_rejection(kind: Any, name: str) -> None:
    stream = STREAMS[name]
    r = parse_payload(name, stream, render_garbage(stream, kind, WALL), WALL, 1.0)
    reason = expected_reason(stream, kind)
    if reason is None:  # a negative surplus is a deficit: accepted as 0 W
        assert isinstance(r, Reading) and r.watts == 0.0
    else:
        assert isinstance(r, Rejection) and r.reason == reason


def test_render_nested_list_paths() -> None:
    assert render(STREAMS["dem"], 5.0, WALL) == b'{"data": {"values": [null, 5.0]}, "meta": [{"ts": 1700000000.0}]}'


def test_profiles() -> None:
    assert Steady(10).value_at(123).surplus_kw == 10
    steps = Steps((1.0, 2.0, 3.0), 10.0)
    assert [steps.value_at(t).surplus_kw for t in (0, 9.9, 10, 25, 30)] == [1, 1, 2, 3, 1]
    ramps = Ramps(0.0, 100.0, 100.0)
    assert [ramps.value_at(t).surplus_kw for t in (0, 25, 50, 75)] == [0, 50, 100, 50]
    assert Noise(50, 5, seed=3).value_at(1.0) == Noise(50, 5, seed=3).value_at(1.0)
    assert Noise(50, 5, seed=3).value_at(1.0) != Noise(50, 5, seed=4).value_at(1.0)
    assert Noise(1, 100, seed=1).value_at(2.0).surplus_kw >= 0
    trip = Trip(40, 10, 20)
    assert [trip.value_at(t).surplus_kw for t in (9, 10, 19, 20)] == [40, 0, 0, 40]
    drop = Dropout(Steady(5), 10, 20)
    assert [drop.value_at(t).publish for t in (9, 10, 19, 20)] == [True, False, False, True]
    stale = Stale(Steady(5), 60, 10)
    assert [stale.value_at(t).lag_seconds for t in (9, 10)] == [0, 60]
    garbage = Garbage(Steady(5), fraction=0.5, seed=1)
    kinds = {garbage.value_at(t / 10).garbage for t in range(400)}
    assert kinds == {None, *GARBAGE_KINDS}
    s = Steady(7, demand_kw=100).value_at(0)
    assert s.plant_output_kw - s.plant_demand_kw == s.surplus_kw


def test_dropout_publishes_nothing_and_stale_lags() -> None:
    assert PlantPublisher(STREAMS, Dropout(Steady(5), 0, 10)).payloads_at(5, WALL) == []
    parsed = parse_all(PlantPublisher(STREAMS, Stale(Steady(5), 30)).payloads_at(5, WALL))
    r = parsed["surplus"]
    assert isinstance(r, Reading) and r.source_wall == WALL - 30


def test_csv_replay(tmp_path: Path) -> None:
    path = tmp_path / "day.csv"
    path.write_text("t_seconds,surplus_kw,other_load_kw\n0,10,1\n5,20\n# note\n10,0,2\n")
    prof = load_profile(str(path), 100)
    assert isinstance(prof, CsvReplay)
    got = [(prof.value_at(t).surplus_kw, prof.value_at(t).other_load_kw) for t in (-1, 0, 4.9, 5, 12)]
    assert got == [(10, 1), (10, 1), (10, 1), (20, 0), (0, 2)]


@pytest.mark.parametrize(
    ("text", "match"),
    [("0,1\nx,2\n", "not a number"), ("5,1\n1,1\n", "decrease"), ("", "no rows"), ("1\n", "need"),
     ("0,nan\n", "finite")],
)
def test_csv_errors(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        load_profile(str(path), 100)


def test_load_profile_names() -> None:
    for name in BUILTIN_PROFILES:
        assert load_profile(name, 100).name == name
    with pytest.raises(ValueError, match="unknown profile"):
        load_profile("nope", 100)
    with pytest.raises(ValueError, match="not found"):
        load_profile("/no/such.csv", 100)


def test_publisher_rejects_bad_rates() -> None:
    with pytest.raises(ValueError, match="rate_hz"):
        PlantPublisher(STREAMS, Steady(1), rate_hz=0)
    with pytest.raises(ValueError, match="time_scale"):
        PlantPublisher(STREAMS, Steady(1), time_scale=-1)


def test_parse_broker() -> None:
    assert parse_broker("127.0.0.1:1883") == ("127.0.0.1", 1883)
    assert parse_broker("[::1]:1884") == ("::1", 1884)
    for bad in ("host", ":1883", "h:x", "h:0", "h:70000"):
        with pytest.raises(ValueError):
            parse_broker(bad)
