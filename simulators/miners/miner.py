"""One simulated miner: identity, physics, faults and firmware-neutral control.

Protocol servers (luxos, boser) read and command a ``SimMiner``; they never
touch the physics directly, so faults such as ``ignore_commands`` apply to
every protocol alike.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from controller.config import ModelConfig
from simulators.miners import faults as f
from simulators.miners.physics import MinerPhysics

FirmwareName = Literal["luxos", "braiins"]


@dataclass(frozen=True)
class MinerSpec:
    """What to simulate at one loopback address."""

    address: str
    model: str
    firmware: FirmwareName
    name: str | None = None


def mac_for(address: str) -> str:
    """A stable, locally administered MAC derived from the IPv4 address."""
    packed = ipaddress.IPv4Address(address).packed
    return "02:00:" + ":".join(f"{b:02X}" for b in packed)


class SimMiner:
    """State of one simulated miner; time comes from the injected clock."""

    def __init__(
        self,
        spec: MinerSpec,
        model: ModelConfig,
        *,
        clock: Callable[[], float],
        time_scale: float = 1.0,
        start_mining: bool = True,
    ) -> None:
        self.spec = spec
        self.address = spec.address
        self.firmware: FirmwareName = spec.firmware
        self.model = model
        self.name = spec.name or f"sim-{spec.address.replace('.', '-')}"
        self.hostname = self.name
        self.mac = mac_for(spec.address)
        self.clock = clock
        self.physics = MinerPhysics(
            model, now_seconds=clock(), time_scale=time_scale, mining=start_mining
        )
        self.faults = f.FaultState()
        self.commands_received = 0  # control commands acknowledged (ignored or not)

    # --------------------------------------------------------------- readings

    def now(self) -> float:
        return self.clock()

    def true_watts(self) -> float:
        return self.physics.true_watts(self.clock())

    def reported_watts(self) -> float:
        """Draw as the firmware reports it (the ``underreport`` fault lies here)."""
        return self.faults.reported_watts(self.true_watts())

    def hashrate_ths(self) -> float:
        return self.physics.hashrate_ths(self.clock())

    @property
    def is_sleeping(self) -> bool:
        return self.physics.is_sleeping(self.clock())

    @property
    def is_booting(self) -> bool:
        return self.physics.is_booting(self.clock())

    @property
    def is_mining(self) -> bool:
        """Hashing now (not asleep, boot finished)."""
        return self.physics.is_mining(self.clock())

    @property
    def power_target_watts(self) -> int:
        return round(self.physics.target_watts)

    @property
    def fault_names(self) -> tuple[str, ...]:
        return tuple(self.faults.active)

    # ---------------------------------------------------------------- control

    def _obeys(self) -> bool:
        self.commands_received += 1
        return not self.faults.has(f.IGNORE_COMMANDS)

    def set_power_target(self, watts: float) -> None:
        if self._obeys():
            self.physics.set_target(watts, self.clock())

    def stop(self) -> None:
        if self._obeys():
            self.physics.stop(self.clock())

    def resume(self) -> None:
        if self._obeys():
            self.physics.resume(self.clock())

    def reboot(self) -> None:
        """Power-cycle (the fleet also takes the listeners down for the boot time)."""
        self.physics.reboot(self.clock())

    def state(self) -> dict[str, object]:
        """A JSON-ready snapshot for the admin API."""
        now = self.clock()
        return {
            "address": self.address,
            "name": self.name,
            "model": self.model.model,
            "firmware": self.firmware,
            "phase": self.physics.phase(now).value,
            "true_watts": round(self.physics.true_watts(now), 1),
            "reported_watts": round(self.reported_watts(), 1),
            "power_target_watts": self.power_target_watts,
            "hashrate_ths": round(self.physics.hashrate_ths(now), 3),
            "boot_remaining_seconds": round(self.physics.boot_remaining_seconds(now), 2),
            "faults": self.faults.as_dict(),
        }
