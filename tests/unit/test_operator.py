"""Operator commands: only well-formed commands act; each gets one answer."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from controller.operator import (
    OperatorCommand,
    OperatorState,
    Refusal,
    apply_command,
    parse_command,
    reply_topic,
    state_from_json,
    state_to_json,
)

MINERS = frozenset({"m1", "m2"})


def cmd(**doc: object) -> OperatorCommand | Refusal:
    return parse_command(json.dumps(doc).encode(), MINERS)


def test_pause_resume_cap_and_overrides_apply() -> None:
    state = OperatorState()
    for doc in (
        {"id": "a", "command": "pause"},
        {"id": "b", "command": "set_cap", "cap_kw": 12.5},
        {"id": "c", "command": "pin", "miner": "m1"},
        {"id": "d", "command": "exclude", "miner": "m2"},
    ):
        parsed = cmd(**doc)
        assert isinstance(parsed, OperatorCommand), parsed
        state = apply_command(state, parsed)
    assert state.paused and state.cap_watts == 12_500
    assert state.overrides.pinned == {"m1"} and state.overrides.excluded == {"m2"}
    state = apply_command(state, cmd(id="e", command="exclude", miner="m1"))  # type: ignore[arg-type]
    assert "m1" not in state.overrides.pinned, "excluding a miner lifts its pin"
    state = apply_command(state, cmd(id="f", command="resume"))  # type: ignore[arg-type]
    state = apply_command(state, cmd(id="g", command="clear_cap"))  # type: ignore[arg-type]
    assert not state.paused and state.cap_watts is None


def test_malformed_commands_are_refused_with_reasons() -> None:
    cases = {
        b"not json": "not JSON",
        b"[1,2]": "JSON object",
        json.dumps({"command": "pause"}).encode(): "'id'",
        json.dumps({"id": "x", "command": "explode"}).encode(): "unknown command",
        json.dumps({"id": "x", "command": "pin", "miner": "nope"}).encode(): "configured miner",
        json.dumps({"id": "x", "command": "set_cap", "cap_kw": -1}).encode(): "cap_kw",
        json.dumps({"id": "x", "command": "set_cap", "cap_kw": True}).encode(): "cap_kw",
        # finite in kW, infinite in watts (found by the fuzz test)
        b'{"id": "x", "command": "set_cap", "cap_kw": 1.797693134862316e+305}': "cap_kw",
        json.dumps({"id": "x", "command": "pause", "extra": 1}).encode(): "unknown field",
        json.dumps({"id": "x/y", "command": "pause"}).encode(): "'id'",
        b"{" * 5000: "larger than",
    }
    for payload, fragment in cases.items():
        result = parse_command(payload, MINERS)
        assert isinstance(result, Refusal), payload
        assert fragment in result.error, (payload, result.error)


def test_reply_topic_never_contains_wildcards() -> None:
    assert reply_topic("hashgov", "c1") == "hashgov/reply/c1"
    assert reply_topic("hashgov", None) == "hashgov/reply/invalid"


@given(st.binary(max_size=300))
def test_any_bytes_parse_without_raising(payload: bytes) -> None:
    result = parse_command(payload, MINERS)
    assert isinstance(result, OperatorCommand | Refusal)


@given(
    st.dictionaries(
        st.sampled_from(["id", "command", "miner", "cap_kw", "x"]),
        st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8)),
    )
)
def test_accepted_commands_never_raise_the_cap_above_what_was_asked(doc: dict[str, object]) -> None:
    try:
        payload = json.dumps(doc).encode()
    except ValueError:
        return
    result = parse_command(payload, MINERS)
    if isinstance(result, OperatorCommand) and result.command == "set_cap":
        assert result.cap_watts is not None and result.cap_watts >= 0
        assert result.cap_watts == float(doc["cap_kw"]) * 1000  # type: ignore[arg-type]


def test_state_round_trips_and_rejects_garbage() -> None:
    state = OperatorState(paused=True, cap_watts=1000.0)
    state = apply_command(state, cmd(id="p", command="pin", miner="m1"))  # type: ignore[arg-type]
    assert state_from_json(json.loads(json.dumps(state_to_json(state)))) == state
    for bad in (
        [],
        {"paused": "yes"},
        {"cap_watts": -5},
        {"pinned": "m1"},
        {"cap_watts": float("nan")},
    ):
        try:
            state_from_json(bad)
        except ValueError:
            continue
        raise AssertionError(f"accepted {bad!r}")
