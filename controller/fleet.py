"""What the controller believes about every miner: the policy's view of the fleet.

Built by the fleet tracker from driver reads, the config, operator overrides and
the command history. Plain frozen values: the policy never sees drivers or I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
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
    read_age_seconds: float = 0.0
    priority: int = 0
    pinned: bool = False
    excluded: bool = False
    verified: bool = True  # False: the last command was not confirmed by readback
    # a raise is in flight: the miner may already be heading for this draw
    pending_watts: float | None = None
    # seconds since a command newer than the last read was confirmed (its draw has
    # been settling that long); None when the read is newer than every command
    commanded_age_seconds: float | None = None

    @property
    def is_on(self) -> bool:
        """Mining or booting: drawing (or about to draw) working power."""
        return self.status in (MinerStatus.MINING, MinerStatus.BOOTING)

    @property
    def controllable(self) -> bool:
        return (
            not self.excluded
            and self.verified
            and self.status
            not in (MinerStatus.UNREACHABLE, MinerStatus.UNRESPONSIVE, MinerStatus.EXCLUDED)
        )

    @property
    def assumed_watts(self) -> float:
        """Draw the controller should assume now: reported draw, but never below the
        working target of a miner that is on (it may still be ramping up), and the
        worst case for one we cannot read or trust."""
        if self.excluded:
            return (
                self.measured_watts
                if self.measured_watts is not None
                else float(self.model.nameplate_watts)
            )
        if not self.controllable:
            return self.worst_case_watts
        measured = max(self.measured_watts or 0.0, self.pending_watts or 0.0)
        if self.is_on:
            target = self.power_limit_watts or self.model.max_target_watts
            return max(measured, float(target))
        return max(measured, float(self.model.sleep_watts))

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
