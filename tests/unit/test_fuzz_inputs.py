"""Property-based fuzzing of every external input the daemon parses: telemetry
(through TelemetryStore and the budget), operator command streams, config files.

Each must hold: nothing crashes; nothing raises the budget; every rejection is
counted and explained. (Single-payload parsing is fuzzed in test_telemetry.py and
test_operator.py; here: interleavings, sequences and whole files.)
"""

from __future__ import annotations

import copy
import json
import math
import tomllib
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from controller.budget import BudgetKeeper, compute_budget
from controller.config import ConfigError, HashgovConfig, SiteConfig, StreamConfig, parse_config
from controller.operator import (
    OperatorCommand,
    OperatorState,
    Refusal,
    apply_command,
    parse_command,
    state_from_json,
    state_to_json,
)
from controller.telemetry import REJECTION_REASONS, Reading, Rejection, TelemetryStore

ROOT = Path(__file__).resolve().parents[2]
WALL0 = 1_700_000_000.0
MONO0 = 1_000.0

# ------------------------------------------------------------------ telemetry

SURPLUS = StreamConfig(kind="surplus", topic="plant/surplus", format="json",
                       value_path="surplus_kw", timestamp_path="ts", max_plausible_kw=1_000.0)
METER = StreamConfig(kind="site_meter", topic="site/meter", format="json",
                     value_path="power_kw", timestamp_path="ts")
OTHER = StreamConfig(kind="other_load", topic="site/loads/ai", format="number")
STREAMS = {"surplus": SURPLUS, "meter": METER, "ai": OTHER}
FUZZ_SITE = SiteConfig(grant_cap_kw=500.0, safety_margin_kw=1.0, stale_after_seconds=10.0,
                       grace_seconds=5.0, fail_safe_budget_kw=0.0)


class _QuietLog:
    def warning(self, event: str, **kw: Any) -> None:
        pass


GARBAGE_KINDS = (
    "not_utf8", "bad_json", "nan", "inf", "string", "bool", "missing", "huge",
    "stale", "future", "bad_ts", "out_of_order", "negative_other", "too_large", "number_nan",
)

valid_event = st.tuples(
    st.just("valid"),
    st.sampled_from(["surplus", "meter", "ai"]),
    st.floats(min_value=0.0, max_value=900.0, allow_nan=False),  # kW
    st.floats(min_value=0.0, max_value=2.0),  # lag of the plant timestamp (s)
    st.floats(min_value=0.0, max_value=3.0),  # monotonic time passing before it (s)
)
garbage_event = st.tuples(
    st.just("garbage"),
    st.sampled_from(GARBAGE_KINDS),
    st.floats(min_value=0.0, max_value=900.0, allow_nan=False),
    st.floats(min_value=0.0, max_value=2.0),
    st.floats(min_value=0.0, max_value=3.0),
)


def _garbage_payload(kind: str, value: float, wall: float, last_ts: float | None) -> tuple[str, bytes]:
    """A payload the store must reject, and the stream it is sent on."""
    ts = wall - 0.5
    doc: Any
    match kind:
        case "not_utf8":
            return "surplus", b"\xff\xfe\x00garbage"
        case "bad_json":
            return "surplus", b'{"surplus_kw": 12,'
        case "nan":
            return "surplus", f'{{"surplus_kw": NaN, "ts": {ts}}}'.encode()
        case "inf":
            return "meter", f'{{"power_kw": -Infinity, "ts": {ts}}}'.encode()
        case "string":
            doc = {"surplus_kw": "lots", "ts": ts}
        case "bool":
            doc = {"surplus_kw": True, "ts": ts}
        case "missing":
            doc = {"surplus": value, "ts": ts}
        case "huge":
            doc = {"surplus_kw": 1e12 + value, "ts": ts}
        case "stale":
            doc = {"surplus_kw": value, "ts": wall - 60.0}
        case "future":
            doc = {"surplus_kw": value, "ts": wall + 3600.0}
        case "bad_ts":
            doc = {"surplus_kw": value, "ts": "yesterday"}
        case "out_of_order":
            if last_ts is None:
                return "surplus", b"[]"  # no earlier sample to be out of order with
            doc = {"surplus_kw": value, "ts": last_ts - 0.25}
        case "negative_other":
            return "ai", f"{-1.0 - value}".encode()
        case "too_large":
            return "surplus", b" " * 20_000
        case "number_nan":
            return "ai", b"nan"
        case _:
            raise AssertionError(kind)
    return "surplus", json.dumps(doc).encode()


@settings(max_examples=150)
@given(st.lists(st.one_of(valid_event, garbage_event), min_size=1, max_size=40),
       st.floats(min_value=-7200.0, max_value=7200.0))
def test_garbage_interleaved_with_valid_never_raises_the_budget(
    events: list[tuple[str, str, float, float, float]], wall_step: float
) -> None:
    """Feeding valid samples with garbage interleaved never gives more budget than the
    valid samples alone (a stale or future-stamped sample may only lower it); each
    garbage sample is rejected, counted once under a known reason and explained."""
    everything = TelemetryStore(FUZZ_SITE, STREAMS, logger=_QuietLog())
    valid_only = TelemetryStore(FUZZ_SITE, STREAMS, logger=_QuietLog())
    keep_all, keep_valid = BudgetKeeper(FUZZ_SITE), BudgetKeeper(FUZZ_SITE)
    mono, wall_offset = MONO0, WALL0 - MONO0
    last_ts: dict[str, float] = {}
    garbage_sent = 0
    for i, (what, name, value, lag, dt) in enumerate(events):
        mono += dt
        if i == len(events) // 2:
            wall_offset += wall_step  # an NTP step in the middle of it all
        wall = mono + wall_offset
        if what == "valid":
            if name == "ai":
                payload = f"{value:.3f}".encode()
            else:
                key = "surplus_kw" if name == "surplus" else "power_kw"
                ts = wall - lag
                if name in last_ts:
                    ts = max(ts, last_ts[name] + 0.001)
                payload = json.dumps({key: value, "ts": ts}).encode()
            a = everything.ingest(name, payload, wall, mono)
            b = valid_only.ingest(name, payload, wall, mono)
            assert type(a) is type(b)
            assert isinstance(a, Reading) or a.reason in ("stale", "out_of_order", "implausible", "future_timestamp")
            if isinstance(a, Reading) and a.source_wall is not None:
                last_ts[name] = a.source_wall
        else:
            before = sum(everything.rejected_counts.values())
            stream, payload = _garbage_payload(name, value, wall, last_ts.get("surplus"))
            result = everything.ingest(stream, payload, wall, mono)
            assert isinstance(result, Rejection), (name, payload[:60], result)
            assert result.reason in REJECTION_REASONS and result.detail
            assert sum(everything.rejected_counts.values()) == before + 1
            garbage_sent += 1
        got = keep_all.update(everything, mono)
        want = keep_valid.update(valid_only, mono)
        assert math.isfinite(got.watts) and got.watts >= 0
        assert got.watts <= want.watts + 1e-9
        # a sample with an untrusted timestamp may still LOWER the budget (never raise
        # it, never refresh freshness): so never more than the valid samples alone give
        assert got.state == want.state
        assert got.watts <= FUZZ_SITE.grant_cap_watts
        fresh = compute_budget(FUZZ_SITE, everything, mono)
        assert fresh.watts <= FUZZ_SITE.grant_cap_watts
    extra = sum(everything.rejected_counts.values()) - sum(valid_only.rejected_counts.values())
    assert extra == garbage_sent
    assert all(reason in REJECTION_REASONS for _, reason in everything.rejected_counts)


# ------------------------------------------------------------------- operator

MINERS = frozenset({"m1", "m2", "m3"})

command_docs = st.one_of(
    st.fixed_dictionaries({"command": st.sampled_from(["pause", "resume", "clear_cap"])}),
    st.fixed_dictionaries({
        "command": st.just("set_cap"),
        "cap_kw": st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(),
                            st.text(max_size=4), st.booleans(), st.none()),
    }),
    st.fixed_dictionaries({
        "command": st.sampled_from(["pin", "unpin", "exclude", "include"]),
        "miner": st.one_of(st.sampled_from(sorted(MINERS)), st.text(max_size=4), st.integers()),
    }),
    st.dictionaries(st.sampled_from(["command", "miner", "cap_kw", "x"]),
                    st.one_of(st.none(), st.integers(), st.text(max_size=6)), max_size=3),
)
command_payloads = st.one_of(
    st.tuples(st.one_of(st.just("c1"), st.text(max_size=70)), command_docs).map(
        lambda t: json.dumps({"id": t[0], **t[1]}, allow_nan=True).encode()
    ),
    st.binary(max_size=40),
)


@settings(max_examples=200)
@given(st.lists(command_payloads, max_size=30), st.floats(min_value=0, max_value=1e7))
def test_operator_command_streams(payloads: list[bytes], budget_watts: float) -> None:
    """Random command streams: refusals change nothing and say why; the cap in force is
    the last set_cap not cleared since; the capped budget never exceeds the budget; the
    state always survives a persistence round trip; no miner is pinned and excluded."""
    state = OperatorState()
    cap_in_force: float | None = None
    for payload in payloads:
        result = parse_command(payload, MINERS)
        if isinstance(result, Refusal):
            assert result.error  # explained
            continue
        assert isinstance(result, OperatorCommand)
        if result.command == "set_cap":
            assert result.cap_watts is not None
            assert math.isfinite(result.cap_watts) and result.cap_watts >= 0
            cap_in_force = result.cap_watts
        elif result.command == "clear_cap":
            cap_in_force = None
        state = apply_command(state, result)
        assert state.cap_watts == cap_in_force
        capped = budget_watts if state.cap_watts is None else min(budget_watts, state.cap_watts)
        assert capped <= budget_watts
        if cap_in_force is not None:
            assert capped <= cap_in_force
        o = state.overrides
        assert not (o.pinned & o.excluded)
        assert (o.pinned | o.excluded | o.unpinned | o.included) <= MINERS
        assert state_from_json(json.loads(json.dumps(state_to_json(state)))) == state


# --------------------------------------------------------------------- config

EXAMPLE = tomllib.loads((ROOT / "deploy" / "hashgov.example.toml").read_text())

WEIRD_VALUES = st.one_of(
    st.none().map(lambda _: "oops"),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=8),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
    st.sampled_from([-1, -0.001, 0, 1e308, -1e308, 2**63, "1e999", "", "127.0.0.1"]),
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    if isinstance(node, dict):
        for k, v in node.items():
            out.append((*prefix, k))
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.append((*prefix, i))
            out += _paths(v, (*prefix, i))
    return out


ALL_PATHS = _paths(EXAMPLE)


def _parent(doc: Any, path: tuple[Any, ...]) -> Any:
    node = doc
    for part in path[:-1]:
        node = node[part]
    return node


mutation = st.tuples(
    st.sampled_from(["drop", "set", "unknown", "negate", "huge"]),
    st.sampled_from(ALL_PATHS),
    WEIRD_VALUES,
)


def _apply(doc: dict[str, Any], kind: str, path: tuple[Any, ...], value: Any) -> None:
    try:
        parent = _parent(doc, path)
    except (KeyError, IndexError, TypeError):
        return  # an earlier mutation removed or replaced the way there
    key = path[-1]
    if isinstance(parent, dict):
        if key not in parent and kind != "set":
            return
    elif isinstance(parent, list):
        if not isinstance(key, int) or key >= len(parent):
            return
    else:
        return
    match kind:
        case "drop":
            if isinstance(parent, dict):
                del parent[key]
            else:
                parent.pop(key)
        case "set":
            parent[key] = value
        case "unknown":
            target = parent[key]
            if isinstance(target, dict):
                target["surely_unknown_key"] = value
            else:
                parent[key] = value
        case "negate":
            old = parent[key]
            if isinstance(old, int | float) and not isinstance(old, bool):
                parent[key] = -old - 1
        case "huge":
            old = parent[key]
            if isinstance(old, int | float) and not isinstance(old, bool):
                parent[key] = 10**40 if isinstance(old, int) else 1e300


@settings(max_examples=300)
@given(st.lists(mutation, min_size=1, max_size=5))
def test_mutated_example_config_parses_or_names_every_problem(
    mutations: list[tuple[str, tuple[Any, ...], Any]],
) -> None:
    doc = copy.deepcopy(EXAMPLE)
    for kind, path, value in mutations:
        _apply(doc, kind, path, value)
    try:
        config = parse_config(doc, source="fuzz.toml", base_dir=Path("/nonexistent-hashgov"))
    except ConfigError as exc:
        assert exc.problems, "a ConfigError lists at least one problem"
        for problem in exc.problems:
            assert problem.location and problem.location.strip(), problem
            assert problem.message, problem
            assert str(problem)  # renders, whatever the value
        assert exc.render()
        return
    assert isinstance(config, HashgovConfig)
    site = config.site
    for figure in (site.grant_cap_watts, site.safety_margin_watts, site.fail_safe_budget_watts,
                   site.stale_after_seconds, site.grace_seconds, site.control_period_seconds):
        assert math.isfinite(figure) and figure >= 0
    assert site.fail_safe_budget_watts <= site.grant_cap_watts


@settings(max_examples=100)
@given(st.sampled_from(["site", "mqtt", "fleet", "metrics", "logging"]), WEIRD_VALUES)
def test_whole_table_replaced_by_garbage(table: str, value: Any) -> None:
    doc = copy.deepcopy(EXAMPLE)
    doc[table] = value
    try:
        parse_config(doc, source="fuzz.toml")
    except ConfigError as exc:
        assert all(p.location for p in exc.problems)


SHAPE_KEYS = [
    ("fleet", "inventory_files"), ("fleet", "miners"), ("fleet", "models"), ("mqtt", "streams"),
    ("mqtt", "tls"), ("site", "state_dir"), ("fleet", "credentials_file"), ("mqtt", "port"),
]


@settings(max_examples=200)
@given(
    st.sampled_from(SHAPE_KEYS),
    st.one_of(WEIRD_VALUES, st.lists(WEIRD_VALUES, min_size=1, max_size=3)),
    st.booleans(),
)
def test_wrong_shapes_where_the_parser_looks_inside(
    key: tuple[str, str], value: Any, with_inventory: bool
) -> None:
    """The keys parse_config reads itself before validation (inventory merge) and the
    nested tables: any shape gives a config or a ConfigError naming every problem.
    (Found: inventory_files = 5 or [5], miners = null, a directory as inventory all
    raised TypeError/IsADirectoryError.)"""
    doc = copy.deepcopy(EXAMPLE)
    if with_inventory:
        doc["fleet"]["inventory_files"] = ["", ".", "nope.toml"]
    doc[key[0]][key[1]] = value
    try:
        parse_config(doc, source="fuzz.toml", base_dir=ROOT / "deploy")
    except ConfigError as exc:
        assert exc.problems and all(p.location and p.message for p in exc.problems)


@settings(max_examples=100)
@given(st.binary(max_size=200))
def test_any_file_bytes_load_or_raise_config_error(tmp_path_factory: Any, data: bytes) -> None:
    from controller.config import load_config

    path = tmp_path_factory.mktemp("cfg") / "fuzz.toml"
    path.write_bytes(data)
    try:
        load_config(path)
    except ConfigError as exc:
        assert exc.problems and all(p.location for p in exc.problems)
