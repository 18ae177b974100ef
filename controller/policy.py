"""The allocation policy: which miners run, at which power target, within the budget.

``plan()`` is pure and synchronous: everything it needs arrives as arguments (no
I/O, no clock), and the same inputs always give the same plan. See docs/policy.md
for the operator's view and the invariants the tests prove.

Outline: miners we cannot command are counted at their worst-case draw; the rest
are grouped (same model, cap, kind, priority and on/off history share one ladder
of power levels) and water-filled on marginal TH per W (controller.policy_fill).
Ramp limit and hysteresis narrow the budget before filling; minimum on/off times
decide who may switch.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Literal

from controller.config import HashgovConfig, ModelConfig
from controller.fleet import FleetState, MinerStatus, MinerView
from controller.policy_fill import (
    EXACT_MAX_MINERS,
    EXACT_MIN_GAIN,
    ExactMiner,
    Group,
    Kind,
    Ladder,
    assign_counts,
    assign_sticky,
    build_ladder,
    improve_locally,
    solve_exact,
    water_fill,
)

Action = Literal["run", "sleep", "leave"]


@dataclass(frozen=True, slots=True)
class MinerPlan:
    miner_id: str
    action: Action
    target_watts: int | None  # power target for "run"; None otherwise
    planned_watts: float  # draw this plan counts for the miner
    planned_ths: float
    reason: str


@dataclass(frozen=True, slots=True)
class Plan:
    created_at_seconds: float
    budget_watts: float
    planned_watts: float
    planned_ths: float
    miners: tuple[MinerPlan, ...]  # sorted by miner_id
    notes: tuple[str, ...]
    # the ramp allowance this plan had (>= planned_watts): unused allowance carries
    # over to the next plan, up to one step of the fleet, so a slow ramp still lets a
    # whole miner wake once enough time has passed. None: same as planned_watts.
    ramp_ceiling_watts: float | None = None

    def by_id(self) -> dict[str, MinerPlan]:
        return {m.miner_id: m for m in self.miners}

    def running(self) -> tuple[MinerPlan, ...]:
        return tuple(m for m in self.miners if m.action == "run")

    @property
    def joules_per_th(self) -> float | None:
        """Site efficiency of the plan (all planned draw over planned TH/s)."""
        return self.planned_watts / self.planned_ths if self.planned_ths > 0 else None


def _plan_factory() -> Callable[[str, Action, int | None, float, float, str], MinerPlan]:
    """MinerPlan(...) without the frozen dataclass __init__ (one object.__setattr__ per
    field): the same object, built ~30 % faster. Plans hold one per miner, 10k+ a round."""
    setters = [getattr(MinerPlan, name).__set__ for name in MinerPlan.__slots__]
    set_id, set_action, set_target, set_watts, set_ths, set_reason = setters
    new = object.__new__

    def make(
        miner_id: str, action: Action, target: int | None, watts: float, ths: float, reason: str
    ) -> MinerPlan:
        p: MinerPlan = new(MinerPlan)
        set_id(p, miner_id)
        set_action(p, action)
        set_target(p, target)
        set_watts(p, watts)
        set_ths(p, ths)
        set_reason(p, reason)
        return p

    return make


_miner_plan = _plan_factory()


# ------------------------------------------------------------ classification


@dataclass(frozen=True, slots=True)
class _Limits:
    """The figures one planning round works against (all in watts)."""

    budget_watts: float
    floor_watts: float  # uncontrolled draw + sleep draw of everything controllable
    current_watts: float  # the fleet's present draw as the policy counts it
    full_watts: float  # every eligible miner at full power
    ramp_cap_watts: float
    limit_watts: float  # what this plan may use: budget narrowed by the ramp
    raise_allowed: bool
    wake_margin_watts: float
    hysteresis_watts: float
    now_seconds: float
    min_on_seconds: float
    min_off_seconds: float

    def on_time_left_seconds(self, view: MinerView) -> float:
        return max(self.min_on_seconds - _since_switch_seconds(view, self.now_seconds), 0.0)

    def off_time_left_seconds(self, view: MinerView) -> float:
        return max(self.min_off_seconds - _since_switch_seconds(view, self.now_seconds), 0.0)

    @property
    def headroom_watts(self) -> float:
        return self.limit_watts - self.current_watts

    @property
    def absorbing_dip(self) -> bool:
        """A shortfall within the hysteresis band: throttle, do not switch miners off."""
        return (
            not self.raise_allowed
            and self.current_watts - self.limit_watts <= self.hysteresis_watts
        )

    @property
    def ramp_binding(self) -> bool:
        return self.ramp_cap_watts < self.budget_watts


def _since_switch_seconds(view: MinerView, now_seconds: float) -> float:
    switched = view.switched_at_seconds
    return math.inf if switched is None else now_seconds - switched


@dataclass(slots=True)
class _ModelInfo:
    """Per-model figures looked up once per plan rather than once per miner."""

    model: ModelConfig
    max_target_watts: int
    sleep_watts: float
    snapped: dict[float, int]  # known power limit -> valid target at or below it

    def snap(self, watts: float) -> int:
        target = self.snapped.get(watts)
        if target is None:
            target = self.snapped[watts] = _snap_target(self.model, watts)
        return target


_BaseKey = tuple[int, Kind, int, bool, int]  # model id, kind, priority, was_on, current target


@dataclass(slots=True)
class _Census:
    """The fleet sorted for one round: what is fixed, what may be commanded, present totals."""

    leave: list[MinerPlan]
    uncontrolled_watts: float = 0.0
    sleep_watts: float = 0.0  # every controllable miner asleep
    largest_step_watts: float = 0.0  # the biggest single increment any controllable miner can take
    current_watts: float = 0.0  # controllable miners as they are now
    full_watts: float = 0.0  # controllable miners at full power (held-off ones asleep)
    held_off: list[MinerView] = field(default_factory=list)  # min off-time still running
    # controllable miners by (model, kind, priority, was_on, current target), ascending id
    base: dict[_BaseKey, list[MinerView]] = field(default_factory=dict)
    infos: dict[int, _ModelInfo] = field(default_factory=dict)


def _info(census: _Census, model: ModelConfig) -> _ModelInfo:
    info = census.infos.get(id(model))
    if info is None:
        info = _ModelInfo(model, model.max_target_watts, float(model.sleep_watts), {})
        census.infos[id(model)] = info
    return info


def _take_census(fleet: FleetState, config: HashgovConfig, now_seconds: float) -> _Census:
    """One pass over the fleet (the hot loop at 10k+ miners: no per-miner objects)."""
    census = _Census([])
    min_on, min_off = config.site.min_on_seconds, config.site.min_off_seconds
    infos = census.infos
    base = census.base
    sleep_watts = current_watts = full_watts = 0.0
    for view in sorted(fleet.miners, key=_MINER_ID):
        status = view.status
        if view.excluded or not view.verified or status in _NOT_COMMANDED:
            _add_uncontrolled(census, view)
            continue
        info = infos.get(id(view.model)) or _info(census, view.model)
        was_on = status is MinerStatus.MINING or status is MinerStatus.BOOTING
        switched = view.switched_at_seconds
        since = math.inf if switched is None else now_seconds - switched
        sleep_watts += info.sleep_watts
        held_on = False
        if was_on:
            known = (
                view.power_limit_watts
                if view.power_limit_watts is not None
                else view.measured_watts
            )
            target = info.max_target_watts if known is None else info.snap(known)
            current_watts += info.max_target_watts if known is None else known
            held_on = since < min_on
        else:
            target = info.max_target_watts
            current_watts += info.sleep_watts
            if since < min_off:
                census.held_off.append(view)
                full_watts += info.sleep_watts
                continue
        full_watts += info.max_target_watts
        kind: Kind = "pinned" if view.pinned else ("held_on" if held_on else "free")
        key = (id(view.model), kind, view.priority, was_on, target)
        members = base.get(key)
        if members is None:
            base[key] = [view]
        else:
            members.append(view)
    census.sleep_watts, census.current_watts, census.full_watts = (
        sleep_watts,
        current_watts,
        full_watts,
    )
    census.largest_step_watts = max((_largest_step_watts(i) for i in infos.values()), default=0.0)
    return census


def _largest_step_watts(info: _ModelInfo) -> float:
    """Waking at the lowest target, or the widest gap between two targets."""
    targets = info.model.targets_watts
    gaps = [b - a for a, b in itertools.pairwise(targets)]
    return max([targets[0] - info.sleep_watts, *gaps])


_MINER_ID = attrgetter("miner_id")
_SUM_NOISE_WATTS = 1e-3  # float noise in watts summed over up to 10,000s of miners
_NOT_COMMANDED = frozenset(
    {MinerStatus.UNREACHABLE, MinerStatus.UNRESPONSIVE, MinerStatus.EXCLUDED}
)


def _add_uncontrolled(census: _Census, view: MinerView) -> None:
    fixed = _uncontrolled(view)
    assert fixed is not None
    watts, reason = fixed
    census.uncontrolled_watts += watts
    ths = view.model.hashrate_ths_at(watts) if "excluded" in reason else 0.0
    census.leave.append(MinerPlan(view.miner_id, "leave", None, watts, ths, reason))


def _uncontrolled(view: MinerView) -> tuple[float, str] | None:
    """Draw and reason for a miner the policy must not command; None if controllable."""
    if view.excluded or view.status == MinerStatus.EXCLUDED:
        measured = view.measured_watts
        watts = measured if measured is not None else float(view.model.nameplate_watts)
        return watts, "not commanded: excluded"
    if view.controllable:
        return None
    watts = view.worst_case_watts
    if view.status == MinerStatus.UNREACHABLE:
        why = "unreachable"
    elif view.status == MinerStatus.UNRESPONSIVE:
        why = "ignores commands"
    else:
        why = "last command unconfirmed"
    return watts, f"not commanded: {why}, counted at {watts:.0f} W"


def _snap_target(model: ModelConfig, watts: float) -> int:
    """The highest valid target at or below ``watts`` (the lowest target if below all)."""
    best = model.min_target_watts
    for t in model.targets_watts:
        if t > watts + 1e-9:
            break
        best = t
    return best


def _limits(
    budget_watts: float,
    census: _Census,
    config: HashgovConfig,
    now_seconds: float,
    previous: Plan | None,
) -> _Limits:
    site = config.site
    floor_watts = census.uncontrolled_watts + census.sleep_watts
    current_watts = census.uncontrolled_watts + census.current_watts
    full_watts = census.uncontrolled_watts + census.full_watts
    if previous is None:
        # first plan: rise from what the fleet draws now, one control period's worth
        ramp_cap = current_watts + site.ramp_up_watts_per_second * site.control_period_seconds
    else:
        elapsed = max(now_seconds - previous.created_at_seconds, 0.0)
        # allowance left unused by the previous plan (step granularity) carries over,
        # at most one step: a ramp slower than one step per period still progresses
        ceiling = (
            previous.planned_watts
            if previous.ramp_ceiling_watts is None
            else previous.ramp_ceiling_watts
        )
        carried = min(max(ceiling - previous.planned_watts, 0.0), census.largest_step_watts)
        ramp_cap = previous.planned_watts + carried + site.ramp_up_watts_per_second * elapsed
    limit = min(budget_watts, max(ramp_cap, floor_watts))
    # sums of the same draws in another order differ in the last bits: a budget equal
    # to the fleet's full draw covers it
    everything_fits = limit >= full_watts - _SUM_NOISE_WATTS
    # hysteresis: raise load only on real headroom, unless the budget covers everything
    raise_allowed = everything_fits or limit - current_watts > site.hysteresis_watts
    margin = 0.0 if everything_fits else site.hysteresis_watts
    return _Limits(
        budget_watts,
        floor_watts,
        current_watts,
        full_watts,
        ramp_cap,
        limit,
        raise_allowed,
        margin,
        site.hysteresis_watts,
        now_seconds,
        site.min_on_seconds,
        site.min_off_seconds,
    )


# ------------------------------------------------------------ planning


@dataclass(slots=True)
class _Grouping:
    groups: list[Group]
    members: list[list[MinerView]]  # per group, ascending miner_id
    current: list[list[int]]  # per group, each member's present level (0: asleep)
    # per group, the level a sleeping member's firmware still holds (0: unknown, or on)
    resume: list[list[int]]
    held_off: list[MinerView]  # sleep whatever the budget (min off-time or hysteresis)
    levels: list[list[int]] = field(default_factory=list)  # per group, each member's level


# model id, kind, priority, was_on, cap, wake target (0: wake at the lowest target)
_GroupKey = tuple[int, Kind, int, bool, int, int]


def _group(census: _Census, limits: _Limits) -> _Grouping:
    """Merge the census's base groups into solver groups.

    With raising allowed every miner of a model may go to full power, so groups
    ignore the current target; while holding, each miner's cap is its current
    target and sleepers stay asleep. While the ramp holds the plan back (after a
    trip, at start-up), free sleepers are grouped by the limit their firmware
    still holds and wake straight to it: one command (resume) per miner instead
    of a target, a resume and later raises, so the fleet is back sooner.
    """
    ladders: dict[tuple[int, int, bool, int], Ladder] = {}
    merged: dict[_GroupKey, list[tuple[MinerView, int]]] = {}
    resort: set[_GroupKey] = set()  # merged from several: by id again
    held_off = list(census.held_off)
    for (model_id, kind, priority, was_on, target), members in census.base.items():
        if not was_on and not limits.raise_allowed:
            held_off.extend(members)
            continue
        info = census.infos[model_id]
        cap = info.max_target_watts if limits.raise_allowed else target
        if kind == "free" and was_on and limits.absorbing_dip:
            kind = "kept_on"  # shed only if throttling everyone cannot cover the dip
        buckets: dict[int, list[tuple[MinerView, int]]] = {}
        for v in members:
            wake = 0
            if limits.ramp_binding and not was_on and kind == "free" and v.power_limit_watts is not None:
                wake = min(info.snap(v.power_limit_watts), cap)
            buckets.setdefault(wake, []).append((v, target if was_on else 0))
        for wake, tagged in buckets.items():
            key = (model_id, kind, priority, was_on, cap, wake)
            if key in merged:
                merged[key] += tagged
                resort.add(key)
            else:
                merged[key] = tagged
    for key in resort:
        merged[key].sort(key=_tagged_id)
    grouping = _Grouping([], [], [], [], held_off)
    for (model_id, kind, priority, was_on, cap, wake), tagged in merged.items():
        forced = kind != "free"
        ladder = ladders.get((model_id, cap, forced, wake))
        if ladder is None:
            ladder = ladders[(model_id, cap, forced, wake)] = _ladder(
                census.infos[model_id].model, cap, forced, wake
            )
        level_of = {t: level for level, t in enumerate(ladder.targets_watts, start=1)}
        grouping.groups.append(Group(ladder, kind, priority, was_on, len(tagged)))
        grouping.members.append([v for v, _ in tagged])
        grouping.current.append(
            [level_of.get(t, ladder.top_level) if t else 0 for _, t in tagged]
        )
        info = census.infos[model_id]
        grouping.resume.append(
            [
                0 if t or v.power_limit_watts is None else level_of.get(info.snap(v.power_limit_watts), 0)
                for v, t in tagged
            ]
        )
    return grouping


def _tagged_id(tagged: tuple[MinerView, int]) -> str:
    return tagged[0].miner_id


def _ladder(model: ModelConfig, cap_watts: int, forced: bool, wake_watts: int = 0) -> Ladder:
    """``wake_watts``: a sleeper wakes straight to this target (0: the fill decides)."""
    targets = [t for t in model.targets_watts if t <= cap_watts] or [model.min_target_watts]
    ths = [model.hashrate_ths_at(t) for t in targets]
    # a held limit to resume at; else forced miners wake at their lowest target
    wake_level = targets.index(wake_watts) + 1 if wake_watts in targets else int(forced)
    return build_ladder(targets, model.sleep_watts, ths, wake_level)


def _solve(grouping: _Grouping, limits: _Limits) -> None:
    """Set every group's level counts: water-fill, repair, exact search on small fleets."""
    groups = grouping.groups
    fixed_watts = limits.floor_watts  # everyone asleep; running adds to this
    spare = limits.limit_watts - fixed_watts
    leftover = water_fill(groups, spare, limits.wake_margin_watts)
    leftover = improve_locally(groups, leftover)
    free_count = sum(g.size for g in groups if g.kind != "pinned")
    exact = 0 < free_count <= EXACT_MAX_MINERS
    if exact:
        _solve_exactly(grouping, limits)
    _assign(grouping, limits, sticky=not exact)


def _assign(grouping: _Grouping, limits: _Limits, sticky: bool) -> None:
    """Give each member its level, moving as few as possible; counts follow the result.

    ``sticky``: members may keep a level near the solver's (policy_fill.assign_sticky);
    otherwise (a fleet small enough for the exact search) the solver's counts stand.
    """
    groups = grouping.groups
    # room the solver left unused: sticky members may take it, never more
    left_watts = limits.limit_watts - limits.floor_watts - math.fsum(
        n * (g.ladder.costs_watts[level] - g.ladder.costs_watts[0])
        for g in groups
        for level, n in enumerate(g.counts)
    )
    grouping.levels = []
    for g, current, resume in zip(groups, grouping.current, grouping.resume, strict=True):
        costs = g.ladder.costs_watts
        if not sticky:
            grouping.levels.append(assign_counts(g.counts, current))
            continue
        solver_watts = math.fsum(n * costs[level] for level, n in enumerate(g.counts) if level)
        room_watts = solver_watts + max(left_watts, 0.0)
        levels = assign_sticky(g.counts, g.ladder, current, room_watts, resume_levels=resume)
        counts = [0] * len(g.counts)
        for level in levels:
            counts[level] += 1
        left_watts += solver_watts - math.fsum(n * costs[level] for level, n in enumerate(counts) if level)
        g.counts = counts
        grouping.levels.append(levels)


def _solve_exactly(grouping: _Grouping, limits: _Limits) -> None:
    """Replace the water-fill for non-pinned miners by the exact optimum when clearly better.

    Pinned miners keep their water-filled levels and held-on miners the fill had
    to shed stay shed; everyone else is searched exhaustively (Pareto frontier).
    """
    groups = grouping.groups
    # room = limit - uncontrolled - held-off sleep - fixed groups; the searched
    # miners' own sleep draw is inside their level costs
    room = limits.limit_watts - limits.floor_watts
    exact: list[tuple[int, ExactMiner]] = []
    greedy_ths = 0.0
    blocked_below: int | None = None  # a forced miner shed for budget holds back lower priorities
    for gi, g in enumerate(groups):
        costs, values = g.ladder.costs_watts, g.ladder.values_ths
        room += g.size * costs[0]
        fixed = g.kind == "pinned" or (g.kind in ("held_on", "kept_on") and g.counts[0] > 0)
        if fixed:
            room -= sum(n * costs[lvl] for lvl, n in enumerate(g.counts))
            if g.counts[0] > 0 and (blocked_below is None or g.priority > blocked_below):
                blocked_below = g.priority
            continue
        greedy_ths += sum(n * values[lvl] for lvl, n in enumerate(g.counts))
        must_run = 1 if g.kind in ("held_on", "kept_on") else 0
        miner = ExactMiner(g.ladder, g.priority, g.was_on, must_run, g.kind == "free")
        exact.extend((gi, miner) for _ in range(g.size))
    exact.sort(key=lambda it: -it[1].priority)  # stable: group order breaks ties
    result = solve_exact(
        [m for _, m in exact], room, room - limits.wake_margin_watts, blocked_below
    )
    if result is None or result[0] <= greedy_ths * (1 + EXACT_MIN_GAIN) + 1e-9:
        return
    for gi, _ in exact:
        groups[gi].counts = [0] * (groups[gi].ladder.top_level + 1)
    for (gi, _), level in zip(exact, result[1], strict=True):
        groups[gi].counts[level] += 1


# ------------------------------------------------------------ output


def _run_reason(view: MinerView, kind: Kind, target: int, why: str, limits: _Limits) -> str:
    model = view.model
    if target >= model.max_target_watts:
        return "full power: pinned" if kind == "pinned" else "full power: budget allows"
    if kind == "pinned":
        return f"pinned, throttled to {target} W: {why}"
    if kind == "held_on" and target == model.min_target_watts:
        left = limits.on_time_left_seconds(view)
        return f"held on: min on-time {left:.0f} s left ({target} W)"
    if kind == "kept_on" and target == model.min_target_watts:
        return f"throttled to {target} W: small dip absorbed without switching off"
    return f"throttled to {target} W: {why}"


def _throttle_why(limits: _Limits) -> str:
    if not limits.raise_allowed and limits.headroom_watts >= 0:
        return "holding, headroom within hysteresis"
    if limits.ramp_binding and limits.ramp_cap_watts <= limits.full_watts:
        return "ramping up"
    return "budget shared"


def _sleep_reason(
    view: MinerView, kind: Kind, priorities: tuple[int | None, int | None], limits: _Limits
) -> str:
    """Why a miner sleeps; ``priorities``: (highest asleep, highest running)."""
    blocked_priority, top_running = priorities
    if kind == "pinned":
        return "sleep: pinned, but the budget cannot hold it"
    if kind == "held_on":
        return "sleep: shed for budget despite min on-time"
    if kind == "kept_on":
        return "sleep: shed for budget (dip too deep to throttle through)"
    if blocked_priority is not None and view.priority < blocked_priority:
        return f"sleep: priority {view.priority} waits for higher-priority miners"
    if top_running is not None and view.priority < top_running:
        return f"sleep: priority {view.priority}, shed before higher-priority miners"
    if limits.ramp_binding and limits.ramp_cap_watts <= limits.full_watts:
        return "sleep: waiting for ramp-up"
    model = view.model
    ths = model.hashrate_ths_at(model.min_target_watts)
    jth = model.min_target_watts / ths if ths > 0 else math.inf
    return f"sleep: least efficient ({jth:.1f} J/TH) shed for budget"


def _member_plans(grouping: _Grouping, limits: _Limits) -> list[MinerPlan]:
    """One MinerPlan per member, at the level the sticky assignment gave it."""
    out: list[MinerPlan] = []
    why = _throttle_why(limits)
    blocked = _free_priorities(grouping)
    for g, members, levels in zip(grouping.groups, grouping.members, grouping.levels, strict=True):
        ladder = g.ladder
        by_level: dict[int, list[MinerView]] = {}
        for v, level in zip(members, levels, strict=True):
            by_level.setdefault(level, []).append(v)
        for level, run in sorted(by_level.items(), reverse=True):
            if level == 0:
                out += _sleep_plans(run, g, blocked, limits)
                continue
            target = ladder.targets_watts[level - 1]
            watts, ths = float(target), ladder.values_ths[level]
            if g.kind == "held_on":  # reasons name each miner's own time left
                out += [
                    _miner_plan(
                        v.miner_id,
                        "run",
                        target,
                        watts,
                        ths,
                        _run_reason(v, g.kind, target, why, limits),
                    )
                    for v in run
                ]
            else:
                reason = _run_reason(run[0], g.kind, target, why, limits)
                out += [_miner_plan(v.miner_id, "run", target, watts, ths, reason) for v in run]
    hysteresis_reason = (
        f"stays asleep: headroom {limits.headroom_watts / 1000:.2f} kW within hysteresis"
    )
    for v in grouping.held_off:
        left = limits.off_time_left_seconds(v)
        reason = f"held off: min off-time {left:.0f} s left" if left > 0 else hysteresis_reason
        out.append(MinerPlan(v.miner_id, "sleep", None, float(v.model.sleep_watts), 0.0, reason))
    return out


def _sleep_plans(
    run: list[MinerView], g: Group, blocked: tuple[int | None, int | None], limits: _Limits
) -> list[MinerPlan]:
    watts = g.ladder.costs_watts[0]
    reason = _sleep_reason(run[0], g.kind, blocked, limits)
    return [_miner_plan(v.miner_id, "sleep", None, watts, 0.0, reason) for v in run]


def _free_priorities(grouping: _Grouping) -> tuple[int | None, int | None]:
    """Highest priority of a solved miner left asleep, and of one running."""
    asleep: int | None = None
    running: int | None = None
    for g in grouping.groups:
        if g.counts[0] > 0 and (asleep is None or g.priority > asleep):
            asleep = g.priority
        if g.counts[0] < g.size and (running is None or g.priority > running):
            running = g.priority
    return asleep, running


def _notes(limits: _Limits, grouping: _Grouping) -> list[str]:
    notes: list[str] = []
    if limits.ramp_binding and limits.limit_watts < limits.budget_watts:
        notes.append(
            f"ramp limit: planned draw may rise to {limits.limit_watts / 1000:.1f} kW now "
            f"(budget {limits.budget_watts / 1000:.1f} kW)"
        )
    if not limits.raise_allowed and limits.headroom_watts >= 0:
        notes.append(
            f"holding: headroom {limits.headroom_watts / 1000:.2f} kW is within the hysteresis band"
        )
    shed_forced = sum(g.counts[0] for g in grouping.groups if g.kind in ("pinned", "held_on"))
    if shed_forced:
        notes.append(f"{shed_forced} pinned or min-on miner(s) shed: the budget cannot hold them")
    return notes


def plan(
    fleet: FleetState,
    budget_watts: float,
    config: HashgovConfig,
    now_seconds: float,
    previous: Plan | None = None,
) -> Plan:
    """Decide every miner's action and power target for this control round."""
    census = _take_census(fleet, config, now_seconds)
    # telemetry should never hand over NaN; if it does, plan as for no budget at all
    budget_watts = 0.0 if math.isnan(budget_watts) else max(float(budget_watts), 0.0)
    limits = _limits(budget_watts, census, config, now_seconds, previous)
    if budget_watts < limits.floor_watts:
        return _floor_plan(census, limits, now_seconds)
    grouping = _group(census, limits)
    _solve(grouping, limits)
    miners = census.leave + _member_plans(grouping, limits)
    watts = [census.uncontrolled_watts, *(float(v.model.sleep_watts) for v in grouping.held_off)]
    ths = [m.planned_ths for m in census.leave]
    for g in grouping.groups:
        watts += [n * g.ladder.costs_watts[lvl] for lvl, n in enumerate(g.counts) if n]
        ths += [n * g.ladder.values_ths[lvl] for lvl, n in enumerate(g.counts) if n]
    return _assemble(
        now_seconds,
        budget_watts,
        miners,
        math.fsum(watts),
        math.fsum(ths),
        _notes(limits, grouping),
        ramp_ceiling_watts=min(limits.ramp_cap_watts, budget_watts),
    )


def _floor_plan(census: _Census, limits: _Limits, now_seconds: float) -> Plan:
    sleep = [
        MinerPlan(
            v.miner_id,
            "sleep",
            None,
            float(v.model.sleep_watts),
            0.0,
            "sleep: budget below the site's floor",
        )
        for v in _all_controllable(census)
    ]
    note = (
        f"budget {limits.budget_watts / 1000:.1f} kW is below the floor "
        f"{limits.floor_watts / 1000:.1f} kW (uncommanded miners + sleep draw): "
        "everything controllable sleeps"
    )
    miners = census.leave + sleep
    ths = math.fsum(m.planned_ths for m in census.leave)
    return _assemble(now_seconds, limits.budget_watts, miners, limits.floor_watts, ths, [note])


def _all_controllable(census: _Census) -> list[MinerView]:
    out = list(census.held_off)
    for members in census.base.values():
        out += members
    return out


def _assemble(
    now_seconds: float,
    budget_watts: float,
    miners: list[MinerPlan],
    watts: float,
    ths: float,
    notes: list[str],
    ramp_ceiling_watts: float | None = None,
) -> Plan:
    miners.sort(key=attrgetter("miner_id"))
    ceiling = None if ramp_ceiling_watts is None else max(ramp_ceiling_watts, watts)
    return Plan(now_seconds, budget_watts, watts, ths, tuple(miners), tuple(notes), ceiling)
