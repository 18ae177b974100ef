"""The fleet tracker: what the controller believes about each miner.

It folds three sources into the policy's FleetState: the last read of each
miner (drivers), what we last commanded and whether readback confirmed it
(actuator), and the operator's overrides. Beliefs err on the side of more draw:
a miner we cannot read or that ignores us is counted at nameplate by the policy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from controller.config import HashgovConfig, MinerConfig, ModelConfig
from controller.fleet import FleetState, MinerStatus, MinerView
from drivers.base import CommandKind, CommandOutcome, CommandResult, MinerState

# A resumed miner that is not hashing after boot_seconds × this (+ one poll) ignored us.
BOOT_GRACE_FACTOR = 1.5
# Stop/lower commands that a later read contradicts this many times → unresponsive.
MAX_CONTRADICTIONS = 2
# An unresponsive miner is given another chance after this long.
UNRESPONSIVE_RETRY_SECONDS = 300.0


# MinerRecord attributes that hold its cached view rather than what we know
_VIEW_CACHE_FIELDS = frozenset({"cached_view", "view_valid_until"})


@dataclass(slots=True)
class MinerRecord:
    config: MinerConfig
    model: ModelConfig
    last_state: MinerState | None = None
    commanded_on: bool | None = None  # None: we never commanded it
    commanded_target_watts: int | None = None
    commanded_at_seconds: float | None = None
    switched_at_seconds: float | None = None
    resumed_at_seconds: float | None = None
    unresponsive_since_seconds: float | None = None
    unresponsive_reason: str = ""
    contradictions: int = 0
    pending_watts: float | None = None  # highest draw an in-flight command may lead to
    last_result: CommandResult | None = field(default=None, repr=False)
    # The policy's view of this record, true until view_valid_until (monotonic s: a
    # boot grace or an unresponsive spell running out). At 10,000 miners building
    # every view each round was 40 % of a round; now only the miners read or
    # commanded since are rebuilt.
    cached_view: MinerView | None = field(default=None, repr=False, compare=False)
    view_valid_until: float = field(default=-math.inf, repr=False, compare=False)

    def __setattr__(self, name: str, value: object) -> None:
        # any change to what we know drops the cached view, whoever makes it
        # (observe, command_sent, the plan-state restore, a test)
        object.__setattr__(self, name, value)
        if name not in _VIEW_CACHE_FIELDS:
            object.__setattr__(self, "cached_view", None)


@dataclass(frozen=True, slots=True)
class Overrides:
    """Operator overrides that survive restarts (persisted by controller.persist)."""

    pinned: frozenset[str] = frozenset()
    excluded: frozenset[str] = frozenset()
    unpinned: frozenset[str] = frozenset()  # config pin lifted by the operator
    included: frozenset[str] = frozenset()  # config exclusion lifted by the operator


def _unseen_command_at(rec: MinerRecord) -> float | None:
    """When the last command was confirmed, if the last read predates it."""
    at = rec.commanded_at_seconds
    if at is None or (rec.last_state is not None and rec.last_state.read_at_seconds > at):
        return None
    return at


class FleetTracker:
    def __init__(self, config: HashgovConfig) -> None:
        self._records: dict[str, MinerRecord] = {}
        self.overrides = Overrides()
        # monotonic time of the newest fleet poll folded in: a site-meter sample older
        # than this is compared with newer miner reads and would show a phantom gap
        self.last_poll_at_seconds = -float("inf")
        self.reconfigure(config)

    def reconfigure(self, config: HashgovConfig) -> None:
        """Adopt a new config, keeping what we know about miners that remain."""
        self._poll_interval_seconds = config.fleet.poll_interval_seconds
        records: dict[str, MinerRecord] = {}
        for miner in config.fleet.miners:
            old = self._records.get(miner.miner_id)
            model = config.fleet.model_for(miner)
            if old is not None:
                old.config, old.model = miner, model
                records[miner.miner_id] = old
            else:
                records[miner.miner_id] = MinerRecord(config=miner, model=model)
        self._records = records
        self._drop_views()  # the poll interval sets boot deadlines

    def _drop_views(self) -> None:
        for rec in self._records.values():
            rec.cached_view = None

    @property
    def miner_ids(self) -> list[str]:
        return list(self._records)

    def record(self, miner_id: str) -> MinerRecord:
        return self._records[miner_id]

    # ----------------------------------------------------------- updates

    def observe(self, state: MinerState) -> None:
        rec = self._records.get(state.miner_id)
        if rec is None or state is rec.last_state:
            return  # a poll hands over the last read again for a miner it missed
        prev = rec.last_state
        rec.last_state = state
        if not state.reachable or state.is_mining is None:
            return
        flipped = (
            prev is not None and prev.is_mining is not None and prev.is_mining != state.is_mining
        )
        if flipped and (rec.commanded_on is None or rec.commanded_on == state.is_mining):
            rec.switched_at_seconds = state.read_at_seconds
        if rec.commanded_on is None or rec.commanded_at_seconds is None:
            return
        if state.read_at_seconds <= rec.commanded_at_seconds:
            return
        if rec.commanded_on and state.is_mining:
            rec.resumed_at_seconds = None  # booted
            rec.contradictions = 0
        elif not rec.commanded_on and state.is_mining:
            # we stopped it, yet it hashes: a reboot, or it ignores us
            rec.contradictions += 1
            if rec.contradictions >= MAX_CONTRADICTIONS:
                self._mark_unresponsive(rec, state.read_at_seconds, "keeps mining after stop")
        elif not rec.commanded_on and not state.is_mining:
            rec.contradictions = 0

    def poll_completed(self, at_seconds: float) -> None:
        self.last_poll_at_seconds = max(self.last_poll_at_seconds, at_seconds)

    def command_sent(self, result: CommandResult, now_seconds: float) -> None:
        rec = self._records.get(result.miner_id)
        if rec is None:
            return
        rec.last_result = result
        if result.outcome is CommandOutcome.UNVERIFIED:
            self._mark_unresponsive(rec, now_seconds, f"{result.kind} not confirmed by readback")
            return
        if not result.ok:
            return  # unreachable/timeouts show up in the next read
        if result.kind is CommandKind.STOP:
            if rec.commanded_on is not False:
                rec.switched_at_seconds = now_seconds
            rec.commanded_on = False
            rec.resumed_at_seconds = None
        elif result.kind is CommandKind.RESUME:
            if rec.commanded_on is not True:
                rec.switched_at_seconds = now_seconds
            rec.commanded_on = True
            rec.resumed_at_seconds = now_seconds
        elif result.kind is CommandKind.SET_POWER_LIMIT:
            # LuxOS quantises to a profile: believe what the miner applied
            rec.commanded_target_watts = result.applied_watts or result.requested_watts
        rec.commanded_at_seconds = now_seconds

    def commands_started(self, miner_id: str, pending_watts: float) -> None:
        """Commands that may raise this miner's draw are in flight: assume that draw now."""
        rec = self._records.get(miner_id)
        if rec is not None:
            rec.pending_watts = pending_watts

    def commands_finished(self, miner_id: str) -> None:
        rec = self._records.get(miner_id)
        if rec is not None:
            rec.pending_watts = None

    def set_overrides(self, overrides: Overrides) -> None:
        if overrides != self.overrides:
            self._drop_views()
        self.overrides = overrides

    def _mark_unresponsive(self, rec: MinerRecord, now_seconds: float, reason: str) -> None:
        if rec.unresponsive_since_seconds is None:
            rec.unresponsive_since_seconds = now_seconds
        rec.unresponsive_reason = reason

    # ------------------------------------------------------------ views

    def _is_excluded(self, miner_id: str, cfg: MinerConfig) -> bool:
        if miner_id in self.overrides.excluded:
            return True
        return cfg.excluded and miner_id not in self.overrides.included

    def _is_pinned(self, miner_id: str, cfg: MinerConfig) -> bool:
        if miner_id in self.overrides.pinned:
            return True
        return cfg.pinned and miner_id not in self.overrides.unpinned

    def _status(self, rec: MinerRecord, now_seconds: float) -> tuple[MinerStatus, float]:
        """The miner's status and until when it holds (monotonic s) unless the record
        changes: only a boot grace and an unresponsive spell run out by themselves."""
        state = rec.last_state
        if self._is_excluded(rec.config.miner_id, rec.config):
            return MinerStatus.EXCLUDED, math.inf
        if rec.unresponsive_since_seconds is not None:
            retry_at = rec.unresponsive_since_seconds + UNRESPONSIVE_RETRY_SECONDS
            if now_seconds < retry_at:
                return MinerStatus.UNRESPONSIVE, retry_at
            rec.unresponsive_since_seconds = None  # give it another chance
            rec.contradictions = 0
        if state is None or not state.reachable:
            return MinerStatus.UNREACHABLE, math.inf
        if state.is_mining is None and state.watts is None:
            return MinerStatus.UNREACHABLE, math.inf  # nothing about its draw: assume the worst
        newer_command = _unseen_command_at(rec) is not None
        if rec.resumed_at_seconds is not None:
            boot_deadline = (
                rec.resumed_at_seconds
                + rec.model.boot_seconds * BOOT_GRACE_FACTOR
                + self._poll_interval_seconds
            )
            if state.is_mining and not newer_command:
                return MinerStatus.MINING, math.inf
            if now_seconds < boot_deadline:
                return MinerStatus.BOOTING, boot_deadline
            self._mark_unresponsive(rec, now_seconds, "did not start mining after resume")
            return MinerStatus.UNRESPONSIVE, now_seconds + UNRESPONSIVE_RETRY_SECONDS
        if newer_command and rec.commanded_on is False:
            return MinerStatus.SLEEPING, math.inf
        if state.is_mining is None:
            # the firmware did not say; trust draw: above sleep level means working
            watts = state.watts or 0.0
            working = watts > rec.model.sleep_watts * 3
            return (MinerStatus.MINING if working else MinerStatus.SLEEPING), math.inf
        return (MinerStatus.MINING if state.is_mining else MinerStatus.SLEEPING), math.inf

    def view(self, miner_id: str, now_seconds: float) -> MinerView:
        rec = self._records[miner_id]
        cached = rec.cached_view
        if cached is not None and now_seconds < rec.view_valid_until:
            return cached
        cfg, state = rec.config, rec.last_state
        status, valid_until = self._status(rec, now_seconds)
        limit = rec.commanded_target_watts
        if limit is None and state is not None and state.power_limit_watts is not None:
            limit = round(state.power_limit_watts)
        view = MinerView(
            miner_id=miner_id,
            model=rec.model,
            status=status,
            measured_watts=state.watts if state is not None else None,
            power_limit_watts=limit,
            switched_at_seconds=rec.switched_at_seconds,
            priority=cfg.priority,
            pinned=self._is_pinned(miner_id, cfg),
            excluded=status is MinerStatus.EXCLUDED,
            verified=status is not MinerStatus.UNRESPONSIVE,
            pending_watts=rec.pending_watts,
            commanded_at_seconds=_unseen_command_at(rec),
        )
        rec.cached_view = view  # after _status, whose own changes drop the cache
        rec.view_valid_until = valid_until
        return view

    def fleet_state(self, now_seconds: float) -> FleetState:
        return FleetState(
            taken_at_seconds=now_seconds,
            miners=tuple(self.view(mid, now_seconds) for mid in self._records),
        )
