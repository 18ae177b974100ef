"""What the controller believes about every miner: the policy's view of the fleet.

Built by the fleet tracker from driver reads, the config, operator overrides and
the command history. Plain frozen values: the policy never sees drivers or I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from controller.config import ModelConfig


class MinerStatus(StrEnum):
    MINING = "mining"
    SLEEPING = "sleeping"
    BOOTING = "booting"  # resumed, not hashing yet
    UNREACHABLE = "unreachable"
    UNRESPONSIVE = "unresponsive"  # acknowledges commands but ignores them
    EXCLUDED = "excluded"  # operator: never command


@dataclass(frozen=True, slots=True)
class MinerView:
    miner_id: str
    model: ModelConfig
    status: MinerStatus
    measured_watts: float | None  # last firmware-reported draw
    power_limit_watts: int | None  # current power target, if known
    # monotonic seconds of the last on<->off change; None: unknown (long ago)
    switched_at_seconds: float | None = None
    priority: int = 0
    pinned: bool = False
    excluded: bool = False
    verified: bool = True  # False: the last command was not confirmed by readback
    # a raise is in flight: the miner may already be heading for this draw
    pending_watts: float | None = None
    # monotonic seconds when a command newer than the last read was confirmed (its
    # draw has been settling since); None when the read is newer than every command.
    # A time, not an age, so a view stays true from round to round (the tracker
    # rebuilds only the views of miners read or commanded since).
    commanded_at_seconds: float | None = None
    # Derived once here: a round reads each of them several times per miner, and at
    # 10,000 miners recomputing them was a fifth of a round.
    # is_on: mining or booting, drawing (or about to draw) working power.
    is_on: bool = field(init=False, repr=False, compare=False)
    controllable: bool = field(init=False, repr=False, compare=False)
    # assumed_watts: the draw the controller should assume now: reported draw, but
    # never below the working target of a miner that is on (it may still be ramping
    # up), and the worst case for one we cannot read or trust.
    assumed_watts: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        is_on = self.status in (MinerStatus.MINING, MinerStatus.BOOTING)
        controllable = (
            not self.excluded
            and self.verified
            and self.status
            not in (MinerStatus.UNREACHABLE, MinerStatus.UNRESPONSIVE, MinerStatus.EXCLUDED)
        )
        object.__setattr__(self, "is_on", is_on)
        object.__setattr__(self, "controllable", controllable)
        object.__setattr__(self, "assumed_watts", self._assumed_watts(is_on, controllable))

    def _assumed_watts(self, is_on: bool, controllable: bool) -> float:
        if self.excluded:
            return (
                self.measured_watts
                if self.measured_watts is not None
                else float(self.model.nameplate_watts)
            )
        if not controllable:
            return self.worst_case_watts
        measured = max(self.measured_watts or 0.0, self.pending_watts or 0.0)
        if is_on:
            target = self.power_limit_watts or self.model.max_target_watts
            return max(measured, float(target))
        return max(measured, float(self.model.sleep_watts))

    def is_cut_by(self, target_watts: int | None) -> bool:
        """Whether running at ``target_watts`` takes a power-limit command that lowers
        this miner's target (the actuator's cut; a miner that is off is woken instead)."""
        if not self.is_on or target_watts is None:
            return False
        current = (
            self.power_limit_watts
            if self.power_limit_watts is not None
            else self.model.max_target_watts
        )
        return target_watts < current

    def commanded_age_seconds(self, now_seconds: float) -> float | None:
        """How long a command newer than the last read has been settling."""
        at = self.commanded_at_seconds
        return None if at is None else max(now_seconds - at, 0.0)

    @property
    def worst_case_watts(self) -> float:
        """Draw to assume for a miner we cannot command or trust: never below nameplate."""
        return max(self.measured_watts or 0.0, float(self.model.nameplate_watts))


@dataclass(frozen=True, slots=True)
class FleetState:
    taken_at_seconds: float  # monotonic
    miners: tuple[MinerView, ...]

    def by_id(self) -> dict[str, MinerView]:
        return {m.miner_id: m for m in self.miners}

    def assumed_watts(self) -> float:
        return sum(m.assumed_watts for m in self.miners)
