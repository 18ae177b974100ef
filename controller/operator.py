"""Operator commands over MQTT: parse, validate, apply, answer.

A command is a JSON object on `<prefix>/command`; every command gets exactly
one answer on `<prefix>/reply/<id>`. Only well-formed commands act; anything
else is refused with a reason and changes nothing.

    {"id": "c1", "command": "pause"}                  hold: sheds continue, no raises
    {"id": "c2", "command": "resume"}
    {"id": "c3", "command": "set_cap", "cap_kw": 500}  manual budget cap (only lowers)
    {"id": "c4", "command": "clear_cap"}
    {"id": "c5", "command": "pin", "miner": "row1-01"}     also unpin, exclude, include
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from controller.config import MAX_SITE_KW
from controller.tracker import Overrides

MAX_COMMAND_BYTES = 4096
_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
CommandName = Literal[
    "pause", "resume", "set_cap", "clear_cap", "pin", "unpin", "exclude", "include"
]
_MINER_COMMANDS = frozenset({"pin", "unpin", "exclude", "include"})
_ALL_COMMANDS = frozenset(
    {"pause", "resume", "set_cap", "clear_cap", "pin", "unpin", "exclude", "include"}
)


@dataclass(frozen=True, slots=True)
class OperatorState:
    """Everything an operator can change at run time; persisted across restarts."""

    paused: bool = False
    cap_watts: float | None = None
    overrides: Overrides = field(default_factory=Overrides)


@dataclass(frozen=True, slots=True)
class OperatorCommand:
    request_id: str
    command: str
    miner: str | None = None
    cap_watts: float | None = None


@dataclass(frozen=True, slots=True)
class Refusal:
    request_id: str | None
    error: str


def reply_topic(prefix: str, request_id: str | None) -> str:
    return f"{prefix}/reply/{request_id if request_id else 'invalid'}"


def parse_command(payload: bytes, known_miners: frozenset[str]) -> OperatorCommand | Refusal:
    """Validate one command payload; never raises."""
    if len(payload) > MAX_COMMAND_BYTES:
        return Refusal(None, f"command larger than {MAX_COMMAND_BYTES} bytes")
    try:
        doc: Any = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return Refusal(None, "not JSON")
    if not isinstance(doc, dict):
        return Refusal(None, "command must be a JSON object")
    raw_id = doc.get("id")
    request_id = raw_id if isinstance(raw_id, str) and _ID_RE.match(raw_id) else None
    if request_id is None:
        return Refusal(None, "missing or invalid 'id' (1-64 of A-Z a-z 0-9 _ . -)")
    allowed = {"id", "command", "miner", "cap_kw"}
    unknown = sorted(set(doc) - allowed)
    if unknown:
        return Refusal(request_id, f"unknown field(s): {', '.join(unknown)}")
    name = doc.get("command")
    if name not in _ALL_COMMANDS:
        return Refusal(
            request_id, f"unknown command {name!r}; expected one of {sorted(_ALL_COMMANDS)}"
        )
    miner = doc.get("miner")
    if name in _MINER_COMMANDS:
        if not isinstance(miner, str) or miner not in known_miners:
            return Refusal(
                request_id, f"'{name}' needs 'miner' naming a configured miner (got {miner!r})"
            )
    elif miner is not None:
        return Refusal(request_id, f"'{name}' takes no 'miner'")
    cap_watts: float | None = None
    if name == "set_cap":
        cap_kw = doc.get("cap_kw")
        if (
            isinstance(cap_kw, bool)
            or not isinstance(cap_kw, int | float)
            or not math.isfinite(cap_kw)
            or not 0 <= cap_kw <= MAX_SITE_KW  # 1.8e305 kW is finite; its watts are not
        ):
            return Refusal(
                request_id, f"'set_cap' needs 0 <= 'cap_kw' <= {MAX_SITE_KW:g} (got {cap_kw!r})"
            )
        cap_watts = float(cap_kw) * 1000.0
    elif "cap_kw" in doc:
        return Refusal(request_id, f"'{name}' takes no 'cap_kw'")
    return OperatorCommand(
        request_id, str(name), miner if isinstance(miner, str) else None, cap_watts
    )


def apply_command(state: OperatorState, cmd: OperatorCommand) -> OperatorState:
    """The operator state after a valid command (pure)."""
    o = state.overrides
    match cmd.command:
        case "pause":
            return replace(state, paused=True)
        case "resume":
            return replace(state, paused=False)
        case "set_cap":
            return replace(state, cap_watts=cmd.cap_watts)
        case "clear_cap":
            return replace(state, cap_watts=None)
    m = cmd.miner
    assert m is not None
    match cmd.command:
        case "pin":
            o = Overrides(o.pinned | {m}, o.excluded - {m}, o.unpinned - {m}, o.included)
        case "unpin":
            o = Overrides(o.pinned - {m}, o.excluded, o.unpinned | {m}, o.included)
        case "exclude":
            o = Overrides(o.pinned - {m}, o.excluded | {m}, o.unpinned, o.included - {m})
        case "include":
            o = Overrides(o.pinned, o.excluded - {m}, o.unpinned, o.included | {m})
    return replace(state, overrides=o)


def state_to_json(state: OperatorState) -> dict[str, Any]:
    o = state.overrides
    return {
        "paused": state.paused,
        "cap_watts": state.cap_watts,
        "pinned": sorted(o.pinned),
        "excluded": sorted(o.excluded),
        "unpinned": sorted(o.unpinned),
        "included": sorted(o.included),
    }


def state_from_json(doc: Any) -> OperatorState:
    """Inverse of state_to_json; raises ValueError on anything malformed."""
    if not isinstance(doc, dict):
        raise ValueError("operator state must be an object")

    def names(key: str) -> frozenset[str]:
        value = doc.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{key} must be a list of miner names")
        return frozenset(value)

    cap = doc.get("cap_watts")
    if cap is not None and (
        isinstance(cap, bool)
        or not isinstance(cap, int | float)
        or not math.isfinite(cap)
        or not 0 <= cap <= MAX_SITE_KW * 1000.0
    ):
        raise ValueError("cap_watts must be a number from 0 to 1e12 or null")
    paused = doc.get("paused", False)
    if not isinstance(paused, bool):
        raise ValueError("paused must be true or false")
    return OperatorState(
        paused=paused,
        cap_watts=float(cap) if cap is not None else None,
        overrides=Overrides(
            names("pinned"), names("excluded"), names("unpinned"), names("included")
        ),
    )
