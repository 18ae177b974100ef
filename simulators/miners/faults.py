"""Per-miner fault switches, changeable at run time.

Several faults may be active at once (e.g. ``slow`` and ``underreport``).
``reboot`` is an action: the fleet power-cycles the miner and the fault clears
itself when the miner is back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

UNREACHABLE: Final = "unreachable"  # listeners closed: connection refused
BLACKHOLE: Final = "blackhole"  # accept, never answer
SLOW: Final = "slow"  # delay every reply by params delay_seconds (default 5)
IGNORE_COMMANDS: Final = "ignore_commands"  # acknowledge commands, change nothing
UNDERREPORT: Final = "underreport"  # report power params percent (default 20) below truth
REBOOT: Final = "reboot"  # offline for boot time, back mining at the default target
MALFORMED: Final = "malformed"  # truncated / garbage JSON replies

FAULTS: Final = (UNREACHABLE, BLACKHOLE, SLOW, IGNORE_COMMANDS, UNDERREPORT, REBOOT, MALFORMED)

DEFAULT_SLOW_DELAY_SECONDS = 5.0
DEFAULT_UNDERREPORT_PERCENT = 20.0

_PARAMS: Final[dict[str, frozenset[str]]] = {
    UNREACHABLE: frozenset(),
    BLACKHOLE: frozenset(),
    SLOW: frozenset({"delay_seconds"}),
    IGNORE_COMMANDS: frozenset(),
    UNDERREPORT: frozenset({"percent"}),
    REBOOT: frozenset(),
    MALFORMED: frozenset(),
}


class FaultError(ValueError):
    """An unknown fault name or bad parameters."""


def validate(fault: str, params: dict[str, Any]) -> dict[str, float]:
    """Check a fault name and its parameters; return them as floats."""
    if fault not in _PARAMS:
        raise FaultError(f"unknown fault {fault!r}; known: {', '.join(FAULTS)}")
    unknown = sorted(set(params) - _PARAMS[fault])
    if unknown:
        raise FaultError(f"fault {fault!r} takes no parameter(s) {unknown}")
    out: dict[str, float] = {}
    for key, value in params.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise FaultError(f"fault {fault!r}: {key} must be a number, got {value!r}") from None
        if number < 0 or number != number:
            raise FaultError(f"fault {fault!r}: {key} must be >= 0, got {value!r}")
        out[key] = number
    if fault == UNDERREPORT and out.get("percent", 0.0) > 100:
        raise FaultError(f"fault 'underreport': percent must be <= 100, got {out['percent']}")
    return out


@dataclass(slots=True)
class FaultState:
    """The faults active on one miner, with their parameters."""

    active: dict[str, dict[str, float]] = field(default_factory=dict)

    def has(self, fault: str) -> bool:
        return fault in self.active

    def set(self, fault: str, params: dict[str, float]) -> None:
        self.active[fault] = params

    def clear(self, fault: str | None = None) -> None:
        if fault is None:
            self.active.clear()
        else:
            self.active.pop(fault, None)

    @property
    def delay_seconds(self) -> float:
        """Reply delay from the ``slow`` fault (0 when not slow)."""
        params = self.active.get(SLOW)
        if params is None:
            return 0.0
        return params.get("delay_seconds", DEFAULT_SLOW_DELAY_SECONDS)

    def reported_watts(self, true_watts: float) -> float:
        """What the firmware claims it draws, given the truth."""
        params = self.active.get(UNDERREPORT)
        if params is None:
            return true_watts
        return true_watts * (1.0 - params.get("percent", DEFAULT_UNDERREPORT_PERCENT) / 100.0)

    def as_dict(self) -> dict[str, dict[str, float]]:
        return {name: dict(params) for name, params in self.active.items()}
