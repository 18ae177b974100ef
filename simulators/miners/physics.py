"""Physical model of one miner: pure, with time injected.

Every method takes ``now_seconds`` (any monotonic clock; the caller owns it) and
nothing here reads a clock, so tests drive the model with plain numbers.

The model is a sequence of *segments*.  A segment starts at ``start_seconds``
with draw ``start_watts`` and settles exponentially toward ``goal_watts`` with
time constant ``tau_seconds``.  A command (new target, stop, resume, reboot)
closes the current segment at ``now_seconds`` (continuity of draw) and opens a
new one.  A resume opens a *boot* phase (draw ``boot_watts``, no hashing) that
ends ``boot_seconds`` later, after which the draw ramps to the power target.

``time_scale`` K divides every duration (boot, time constants) by K, so a test
sees a two-minute boot in 120/K seconds. Reported uptime is in simulated
seconds (real elapsed seconds times K).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from controller.config import ModelConfig

# the catalogue's defaults (a model may set its own): one source, controller.config
DEFAULT_POWER_TAU_SECONDS: float = ModelConfig.model_fields["power_tau_seconds"].default
DEFAULT_SLEEP_TAU_SECONDS: float = ModelConfig.model_fields["sleep_tau_seconds"].default
AMBIENT_CELSIUS = 25.0
BOARD_RISE_CELSIUS = 40.0  # board temperature rise at nameplate draw
CHIP_OVER_BOARD_CELSIUS = 12.0  # chip above board at nameplate draw
FAN_IDLE_RPM = 1_200.0
FAN_FULL_RPM = 6_000.0


class Phase(StrEnum):
    MINING = "mining"
    SLEEPING = "sleeping"
    BOOTING = "booting"


@dataclass(frozen=True, slots=True)
class _Segment:
    start_seconds: float
    start_watts: float
    goal_watts: float
    tau_seconds: float

    def watts_at(self, now_seconds: float) -> float:
        elapsed = max(0.0, now_seconds - self.start_seconds)
        if self.tau_seconds <= 0.0:
            return self.goal_watts
        return self.goal_watts + (self.start_watts - self.goal_watts) * math.exp(
            -elapsed / self.tau_seconds
        )


class MinerPhysics:
    """Draw, hashrate, temperatures and fans of one miner as functions of time."""

    def __init__(
        self,
        model: ModelConfig,
        *,
        now_seconds: float,
        time_scale: float = 1.0,
        mining: bool = True,
        target_watts: float | None = None,
        power_tau_seconds: float | None = None,  # None: the model's
        sleep_tau_seconds: float | None = None,
        boot_watts: float | None = None,
    ) -> None:
        if time_scale <= 0:
            raise ValueError(f"time_scale must be > 0, got {time_scale}")
        self.model = model
        self.time_scale = time_scale
        self.power_tau_seconds = (power_tau_seconds or model.power_tau_seconds) / time_scale
        self.sleep_tau_seconds = (sleep_tau_seconds or model.sleep_tau_seconds) / time_scale
        self.boot_seconds = model.boot_seconds / time_scale
        # while booting: control board, fans, PSU idle, no hashing
        self.boot_watts = (
            boot_watts
            if boot_watts is not None
            else max(float(model.sleep_watts), 0.05 * model.nameplate_watts)
        )
        self.default_target_watts = float(model.max_target_watts)
        self.target_watts = float(target_watts if target_watts is not None else self.default_target_watts)
        self._phase = Phase.MINING if mining else Phase.SLEEPING
        # sleep <-> awake changes so far: exact, where sampling would miss short naps
        self.transitions = 0
        self._boot_end_seconds = now_seconds
        self._powered_since_seconds = now_seconds
        start = self.target_watts if mining else float(model.sleep_watts)
        self._segment = _Segment(now_seconds, start, start, 0.0)

    # ------------------------------------------------------------ transitions

    def _advance(self, now_seconds: float) -> None:
        """Close a finished boot: from its end the draw ramps to the target."""
        if self._phase is Phase.BOOTING and now_seconds >= self._boot_end_seconds:
            self._phase = Phase.MINING
            self._segment = _Segment(
                self._boot_end_seconds, self.boot_watts, self.target_watts, self.power_tau_seconds
            )

    def set_target(self, watts: float, now_seconds: float) -> None:
        """New power target; while mining the draw settles toward it."""
        self._advance(now_seconds)
        self.target_watts = float(watts)
        if self._phase is Phase.MINING:
            self._segment = _Segment(
                now_seconds, self._segment.watts_at(now_seconds), self.target_watts,
                self.power_tau_seconds,
            )

    def stop(self, now_seconds: float) -> None:
        """Sleep: hashing stops at once, draw falls to sleep_watts within seconds."""
        self._advance(now_seconds)
        if self._phase is Phase.SLEEPING:
            return
        current = self._segment.watts_at(now_seconds)
        if self._phase is Phase.BOOTING:
            current = self.boot_watts
        self._phase = Phase.SLEEPING
        self.transitions += 1
        self._segment = _Segment(
            now_seconds, current, float(self.model.sleep_watts), self.sleep_tau_seconds
        )

    def resume(self, now_seconds: float) -> None:
        """Wake from sleep: boot (low draw, no hashing), then ramp to the target."""
        self._advance(now_seconds)
        if self._phase is not Phase.SLEEPING:
            return
        self.transitions += 1
        self._start_boot(now_seconds)

    def reboot(self, now_seconds: float) -> None:
        """Power-cycle: boot, then mine at the default target."""
        self._advance(now_seconds)
        if self._phase is Phase.SLEEPING:
            self.transitions += 1
        self.target_watts = self.default_target_watts
        self._powered_since_seconds = now_seconds
        self._start_boot(now_seconds)

    def _start_boot(self, now_seconds: float) -> None:
        self._phase = Phase.BOOTING
        self._boot_end_seconds = now_seconds + self.boot_seconds
        self._segment = _Segment(now_seconds, self.boot_watts, self.boot_watts, 0.0)

    # ------------------------------------------------------------- readings

    def phase(self, now_seconds: float) -> Phase:
        self._advance(now_seconds)
        return self._phase

    def is_sleeping(self, now_seconds: float) -> bool:
        return self.phase(now_seconds) is Phase.SLEEPING

    def is_booting(self, now_seconds: float) -> bool:
        return self.phase(now_seconds) is Phase.BOOTING

    def is_mining(self, now_seconds: float) -> bool:
        """Hashing now (mining phase, boot finished)."""
        return self.phase(now_seconds) is Phase.MINING

    def boot_remaining_seconds(self, now_seconds: float) -> float:
        if self.phase(now_seconds) is not Phase.BOOTING:
            return 0.0
        return self._boot_end_seconds - now_seconds

    def true_watts(self, now_seconds: float) -> float:
        self._advance(now_seconds)
        return self._segment.watts_at(now_seconds)

    def hashrate_ths(self, now_seconds: float) -> float:
        if self.phase(now_seconds) is not Phase.MINING:
            return 0.0
        return self.model.hashrate_ths_at(self.true_watts(now_seconds))

    def _load_fraction(self, now_seconds: float) -> float:
        return max(0.0, self.true_watts(now_seconds) / self.model.nameplate_watts)

    def board_temp_celsius(self, now_seconds: float) -> float:
        return AMBIENT_CELSIUS + BOARD_RISE_CELSIUS * self._load_fraction(now_seconds)

    def chip_temp_celsius(self, now_seconds: float) -> float:
        return self.board_temp_celsius(now_seconds) + CHIP_OVER_BOARD_CELSIUS * self._load_fraction(
            now_seconds
        )

    def fan_rpm(self, now_seconds: float) -> int:
        load = min(1.0, self._load_fraction(now_seconds))
        return round(FAN_IDLE_RPM + (FAN_FULL_RPM - FAN_IDLE_RPM) * load)

    def uptime_seconds(self, now_seconds: float) -> int:
        """Simulated seconds since the last power-on (real seconds times time_scale)."""
        return int(max(0.0, now_seconds - self._powered_since_seconds) * self.time_scale)
