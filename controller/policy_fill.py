"""The allocation core of the policy: ladders, group water-filling, local repair, exact search.

Plain values only (no FleetState, no config): controller.policy classifies the fleet
into groups of identical miners and this module decides how many members of each
group sit on each power level. Level 0 is sleep; levels 1..k are the model's power
targets, ascending.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

# pinned: operator pin; held_on: min on-time still running; kept_on: running and kept
# through a dip inside the hysteresis band; free: anything else
Kind = Literal["pinned", "held_on", "kept_on", "free"]

# A sleeper's wake counts this much less than an equal raise of a running miner:
# a woken miner mines nothing while it boots, so near-ties go to running miners.
WAKE_HANDICAP = 0.98
# Exact search is used when this few miners are free to choose (the discrete
# steps then matter most; on large fleets one step is a tiny share of the budget).
EXACT_MAX_MINERS = 8
# The exact answer replaces the water-fill only when it is materially better, so
# small fleets do not swap machines for a rounding gain.
EXACT_MIN_GAIN = 0.002
_EPS_WATTS = 1e-6


@dataclass(frozen=True, slots=True)
class Ladder:
    """Power levels of one model (under an optional cap): level 0 sleeps, 1..k run."""

    targets_watts: tuple[int, ...]
    costs_watts: tuple[float, ...]  # index = level; [0] is the sleep draw
    values_ths: tuple[float, ...]  # index = level; [0] is 0
    hull_levels: tuple[int, ...]  # levels on the upper concave hull, from 0 to k

    @property
    def top_level(self) -> int:
        return len(self.targets_watts)


def build_ladder(
    targets_watts: Sequence[int], sleep_watts: float, ths_at: Sequence[float], wake_level: int = 0
) -> Ladder:
    """``wake_level``: 0, the envelope from sleep decides the first step; n >= 1, the
    first step ends at level n (1: a miner that has to keep running, even where the
    envelope would skip past its lowest target; > 1: a sleeper resumed at the limit its
    firmware holds). Levels below n stay on the ladder but off its hull."""
    costs = (float(sleep_watts), *(float(t) for t in targets_watts))
    values = (0.0, *ths_at)
    if wake_level:
        above = _upper_hull(costs[wake_level:], values[wake_level:])
        hull = (0, *(level + wake_level for level in above))
    else:
        hull = _upper_hull(costs, values)
    return Ladder(tuple(targets_watts), costs, values, hull)


def _slope(costs: Sequence[float], values: Sequence[float], a: int, b: int) -> float:
    dc = costs[b] - costs[a]
    dv = values[b] - values[a]
    if dc <= 0:
        return math.inf  # a target at or below the sleep draw costs nothing extra
    return dv / dc


def _upper_hull(costs: Sequence[float], values: Sequence[float]) -> tuple[int, ...]:
    """Levels whose marginal TH per W never rises, so greedy steps stay in level order."""
    hull: list[int] = [0]
    for level in range(1, len(costs)):
        while len(hull) >= 2 and _slope(costs, values, hull[-2], hull[-1]) < _slope(
            costs, values, hull[-1], level
        ):
            hull.pop()
        hull.append(level)
    return tuple(hull)


@dataclass(slots=True)
class Group:
    """Identical miners: same ladder, kind, priority and on/off history."""

    ladder: Ladder
    kind: Kind
    priority: int
    was_on: bool
    size: int
    # members per level after solving (index = level)
    counts: list[int] = field(default_factory=list)


@dataclass(slots=True)
class _Fill:
    groups: Sequence[Group]
    remaining_watts: float
    wake_margin_watts: float
    reached: list[list[int]]  # per group: members at or above each hull index


def water_fill(groups: Sequence[Group], spare_watts: float, wake_margin_watts: float) -> float:
    """Fill ``spare_watts`` (budget above everyone's sleep draw) greedily; return what is left.

    Order: pinned miners wake and rise to full power first, then miners held on
    by their minimum on-time wake, then those kept on through a small dip, then
    everything else by marginal TH per W,
    with wakes released one priority class at a time (a lower class waits until
    every miner of the higher class has woken). Waking a sleeping miner needs
    ``wake_margin_watts`` of extra room so a budget wobble does not undo it.
    """
    fill = _Fill(groups, spare_watts, wake_margin_watts, [[0] * len(g.ladder.hull_levels) for g in groups])
    for gi, g in enumerate(groups):
        fill.reached[gi][0] = g.size
    pinned = [gi for gi, g in enumerate(groups) if g.kind == "pinned"]
    held = [gi for gi, g in enumerate(groups) if g.kind == "held_on"]
    kept = [gi for gi, g in enumerate(groups) if g.kind == "kept_on"]
    for gi in sorted(pinned, key=lambda gi: (-groups[gi].priority, -_ratio(fill, gi, 1), gi)):
        _take(fill, gi, 1)
    raises = [(gi, k) for gi in pinned for k in range(2, len(groups[gi].ladder.hull_levels))]
    for gi, k in sorted(raises, key=lambda it: (-_ratio(fill, it[0], it[1]), it[0], it[1])):
        _take(fill, gi, k)
    for gi in sorted(held, key=lambda gi: (-groups[gi].priority, -_ratio(fill, gi, 1), gi)):
        _take(fill, gi, 1)
    for gi in sorted(kept, key=lambda gi: (-groups[gi].priority, -_ratio(fill, gi, 1), gi)):
        _take(fill, gi, 1)
    # a forced miner asleep for lack of budget holds back free miners of lower priority
    short = [groups[gi].priority for gi in pinned + held + kept if fill.reached[gi][1] < groups[gi].size]
    _fill_free(fill, held + kept, max(short, default=None))
    _store_counts(fill)
    return fill.remaining_watts


def _ratio(fill: _Fill, gi: int, k: int) -> float:
    g = fill.groups[gi]
    hull = g.ladder.hull_levels
    r = _slope(g.ladder.costs_watts, g.ladder.values_ths, hull[k - 1], hull[k])
    return r * WAKE_HANDICAP if k == 1 and not g.was_on else r


def _take(fill: _Fill, gi: int, k: int) -> int:
    """Move as many members as fit from hull index k-1 to k; return how many moved."""
    g = fill.groups[gi]
    hull = g.ladder.hull_levels
    available = fill.reached[gi][k - 1]
    if available <= 0:
        return 0
    cost = g.ladder.costs_watts[hull[k]] - g.ladder.costs_watts[hull[k - 1]]
    room = fill.remaining_watts
    if k == 1 and not g.was_on:
        room -= fill.wake_margin_watts
    fits = available if cost <= 0 else math.floor((room + _EPS_WATTS) / cost)
    n = min(available, max(0, fits))
    fill.reached[gi][k] = n
    fill.remaining_watts -= n * cost
    return n


def _fill_free(fill: _Fill, held: list[int], blocked_below: int | None) -> None:
    groups = fill.groups
    heap: list[tuple[float, int, int]] = []
    for gi in held:
        if len(groups[gi].ladder.hull_levels) > 2 and fill.reached[gi][1] > 0:
            heapq.heappush(heap, (-_ratio(fill, gi, 2), gi, 2))
    free = [gi for gi, g in enumerate(groups) if g.kind == "free"]
    classes = sorted(
        {g.priority for g in (groups[gi] for gi in free) if blocked_below is None or g.priority >= blocked_below},
        reverse=True,
    )
    pending = 0  # wake items of the open priority class still in the heap
    blocked = False

    def open_next_class() -> None:
        nonlocal pending
        while classes and pending == 0 and not blocked:
            prio = classes.pop(0)
            for gi in free:
                if groups[gi].priority == prio:
                    heapq.heappush(heap, (-_ratio(fill, gi, 1), gi, 1))
                    pending += 1

    open_next_class()
    while heap:
        _, gi, k = heapq.heappop(heap)
        moved = _take(fill, gi, k)
        if k == 1:
            pending -= 1
            if moved < groups[gi].size:
                blocked = True  # a higher class is short of budget: lower classes stay asleep
            open_next_class()
        if moved > 0 and k + 1 < len(groups[gi].ladder.hull_levels):
            heapq.heappush(heap, (-_ratio(fill, gi, k + 1), gi, k + 1))


def _store_counts(fill: _Fill) -> None:
    for gi, g in enumerate(fill.groups):
        counts = [0] * (g.ladder.top_level + 1)
        reached = fill.reached[gi]
        for k, level in enumerate(g.ladder.hull_levels):
            above = reached[k + 1] if k + 1 < len(reached) else 0
            counts[level] = reached[k] - above
        g.counts = counts


# ------------------------------------------------------------ sticky assignment


# A member keeps its target while it sits where the hash curve is nearly as steep
# as at the solver's levels: each step's TH per W within this fraction of theirs.
# Then a budget move is met by a few members moving several levels instead of many
# moving one (commands, not watts, limit how fast a large fleet follows a noisy
# grant), at a small TH/s cost: the curve is nearly straight over the band.
# Narrower bands are tried in turn when a wider one costs more than STICKY_MAX_LOSS
# of the group's TH/s; the last (-1) keeps members within the solver's own levels.
STICKY_SLOPE_TOLERANCES = (0.2, 0.1, 0.05, 0.02, -1.0)
STICKY_MAX_LOSS = 0.006


def assign_sticky(
    counts: Sequence[int], ladder: Ladder, current: Sequence[int], room_watts: float,
    tolerances: Sequence[float] | None = None, resume_levels: Sequence[int] | None = None,
) -> list[int]:
    """Each member's level (same order as ``current``, 0 = asleep): as many members as
    possible keep their current level, and the fewest move to fit ``room_watts``.

    The result sleeps exactly ``counts[0]`` members (the solver's switching decision
    stands), keeps every running member in a band around the solver's running
    levels where the curve's slope is within a tolerance of theirs, and draws at
    most ``room_watts`` (the solver's running watts plus any room it left). Members
    that must change anyway (woken, or outside the band) absorb the difference
    first, so they cost no extra command. The widest band that loses at most
    STICKY_MAX_LOSS of the solver's TH/s is used; if none does, the solver's counts.
    ``tolerances``: the bands to try (default STICKY_SLOPE_TOLERANCES; empty: none).
    ``resume_levels``: per member, the level a sleeper's firmware still holds (0:
    unknown); a woken member kept there needs no power-limit command before resuming.
    """
    values = ladder.values_ths
    solver_ths = math.fsum(n * values[level] for level, n in enumerate(counts))
    # where each member sits now, or would resume without a power-limit command
    anchors = list(current) if resume_levels is None else [
        now or resume for now, resume in zip(current, resume_levels, strict=True)
    ]
    for tolerance in STICKY_SLOPE_TOLERANCES if tolerances is None else tolerances:
        levels = _sticky_levels(counts, ladder, current, anchors, room_watts, tolerance)
        if math.fsum(values[level] for level in levels) >= solver_ths * (1 - STICKY_MAX_LOSS):
            return levels
    return assign_counts(counts, current)


def _sticky_levels(
    counts: Sequence[int], ladder: Ladder, current: Sequence[int], anchors: Sequence[int],
    room_watts: float, tolerance: float,
) -> list[int]:
    top_level = ladder.top_level
    running = [level for level in range(1, top_level + 1) if counts[level] > 0]
    if not running:
        return [0] * len(current)
    low, high = running[0], running[-1]
    bottom, top = _band(ladder, low, high, tolerance)
    costs = ladder.costs_watts
    sleeping = _sleepers(current, counts[0])
    levels = [0] * len(current)
    changed: list[int] = []  # moving anyway: adjusting them costs no extra command
    kept: list[int] = []
    for i, anchor in enumerate(anchors):
        if i in sleeping:
            continue
        levels[i] = min(max(anchor, bottom), top) if anchor > 0 else low
        (kept if levels[i] == anchor else changed).append(i)
    total = math.fsum(costs[level] for level in levels if level > 0)
    if total > room_watts + _EPS_WATTS:
        total = _lower(levels, costs, changed, low, total, room_watts)
        total = _lower(levels, costs, changed, bottom, total, room_watts)
        total = _lower(levels, costs, kept, bottom, total, room_watts)
        changed += [i for i in kept if levels[i] != anchors[i]]
    # a coarse last cut can free more than needed: moved members take it back
    step = min(b - a for a, b in itertools.pairwise(costs[bottom : top + 1])) if top > bottom else 0.0
    if top > bottom and room_watts - total >= step - _EPS_WATTS:
        total = _lift(levels, costs, changed, high, total, room_watts)
        total = _lift(levels, costs, changed, top, total, room_watts)
        if room_watts - total >= step - _EPS_WATTS:
            _lift(levels, costs, [i for i in kept if levels[i] == anchors[i]], top, total, room_watts)
    return levels


def _sleepers(current: Sequence[int], count: int) -> set[int]:
    """Which members sleep: those already asleep, then the highest indices (the id rule)."""
    if count == 0:
        return set()
    asleep = [i for i, now in enumerate(current) if now == 0]
    if len(asleep) >= count:
        return set(asleep[len(asleep) - count :])
    awake = [i for i, now in enumerate(current) if now != 0]
    return set(asleep) | set(awake[len(awake) - (count - len(asleep)) :])


def assign_counts(counts: Sequence[int], current: Sequence[int]) -> list[int]:
    """Levels matching ``counts`` exactly, with as many members as possible kept where they are."""
    left = list(counts)
    levels = [-1] * len(current)
    for i, now in enumerate(current):
        if left[now] > 0:
            left[now] -= 1
            levels[i] = now
    # the rest, highest current level to the highest open level (lowest index first)
    movers = sorted((i for i in range(len(current)) if levels[i] < 0), key=lambda i: (-current[i], i))
    open_levels = [level for level in range(len(left) - 1, -1, -1) for _ in range(left[level])]
    for i, level in zip(movers, open_levels, strict=True):
        levels[i] = level
    return levels


def _band(ladder: Ladder, low: int, high: int, tolerance: float) -> tuple[int, int]:
    """Levels around [low, high] whose steps' TH per W stays within ``tolerance`` of theirs."""
    costs, values = ladder.costs_watts, ladder.values_ths
    top_level = ladder.top_level
    if high > low:
        slope = _slope(costs, values, low, high)
    elif high < top_level:
        slope = _slope(costs, values, high, high + 1)
    else:
        slope = _slope(costs, values, low - 1, low) if low > 1 else math.inf
    bottom, top = low, high
    while bottom > 1 and _slope(costs, values, bottom - 1, bottom) <= slope * (1 + tolerance):
        bottom -= 1
    while top < top_level and _slope(costs, values, top, top + 1) >= slope * (1 - tolerance):
        top += 1
    return bottom, top


def _lower(levels: list[int], costs: Sequence[float], members: list[int], floor: int,
           total: float, room: float) -> float:
    """Move members down towards ``floor``, highest first, until ``total`` fits ``room``."""
    for i in sorted(members, key=lambda i: (-levels[i], i)):
        if total <= room + _EPS_WATTS:
            break
        level = levels[i]
        if level <= floor:
            continue
        to = floor  # the highest level that fits, else the floor
        for candidate in range(level - 1, floor, -1):
            if total - costs[level] + costs[candidate] <= room + _EPS_WATTS:
                to = candidate
                break
        total += costs[to] - costs[level]
        levels[i] = to
    return total


def _lift(levels: list[int], costs: Sequence[float], members: list[int], ceiling: int,
          total: float, room: float) -> float:
    """Move members up towards ``ceiling``, lowest first, while a step still fits ``room``."""
    for i in sorted(members, key=lambda i: (levels[i], i)):
        level = levels[i]
        to = level
        for candidate in range(level + 1, ceiling + 1):
            if total - costs[level] + costs[candidate] > room + _EPS_WATTS:
                break
            to = candidate
        total += costs[to] - costs[level]
        levels[i] = to
    return total


# ------------------------------------------------------------ local repair


def improve_locally(groups: Sequence[Group], leftover_watts: float, max_rounds: int = 200) -> float:
    """Apply the best one-step move while it gains TH/s; return the leftover watts.

    Moves: raise one running miner a level into the leftover, or lower one
    running miner a level to raise another. Greedy steps can leave a gap that
    a bigger step did not fit; this closes it. On/off decisions are untouched.
    """
    for _ in range(max_rounds):
        ups, downs = _moves(groups)
        best_gain, best = 0.0, None
        for up_gain, up_cost, ug, ul in ups:
            if up_cost <= leftover_watts + _EPS_WATTS and up_gain > best_gain:
                best_gain, best = up_gain, (ug, ul, -1, -1, up_cost)
            for dn_loss, dn_saving, dg, dl in downs:
                if dn_loss >= up_gain - best_gain:
                    break  # downs are sorted by loss: none further can beat best
                if up_cost - dn_saving > leftover_watts + _EPS_WATTS:
                    continue
                if dg == ug and (dl == ul + 1 or (dl == ul and groups[ug].counts[ul] < 2)):
                    continue  # the same miner, or a swap back
                best_gain, best = up_gain - dn_loss, (ug, ul, dg, dl, up_cost - dn_saving)
        if best is None or best_gain <= 1e-9:
            break
        ug, ul, dg, dl, net_cost = best
        groups[ug].counts[ul] -= 1
        groups[ug].counts[ul + 1] += 1
        if dg >= 0:
            groups[dg].counts[dl] -= 1
            groups[dg].counts[dl - 1] += 1
        leftover_watts -= net_cost
    return leftover_watts


def _moves(
    groups: Sequence[Group],
) -> tuple[list[tuple[float, float, int, int]], list[tuple[float, float, int, int]]]:
    ups: list[tuple[float, float, int, int]] = []
    downs: list[tuple[float, float, int, int]] = []
    for gi, g in enumerate(groups):
        costs, values = g.ladder.costs_watts, g.ladder.values_ths
        for level in range(1, len(g.counts)):
            if g.counts[level] <= 0:
                continue
            if level < g.ladder.top_level:
                ups.append((values[level + 1] - values[level], costs[level + 1] - costs[level], gi, level))
            if level >= 2 and g.kind != "pinned":
                downs.append((values[level] - values[level - 1], costs[level] - costs[level - 1], gi, level))
    ups.sort(key=lambda u: (-u[0], u[2], u[3]))
    downs.sort(key=lambda d: (d[0], d[2], d[3]))
    return ups, downs


# ------------------------------------------------------------ exact search


@dataclass(frozen=True, slots=True)
class ExactMiner:
    """One miner the exact search may place on any level in [min_level, top]."""

    ladder: Ladder
    priority: int
    was_on: bool
    min_level: int  # 1: must run (held on by min on-time), 0: may sleep
    free: bool  # counts for the priority rule (held-on miners do not)


def solve_exact(
    miners: Sequence[ExactMiner], room_watts: float, wake_room_watts: float, blocked_below: int | None = None
) -> tuple[float, tuple[int, ...]] | None:
    """Best (TH/s, levels) with total cost <= room (<= wake_room if any sleeper wakes).

    Honours the priority rule: once a free miner sleeps, no free miner of lower
    priority runs. Miners must come sorted by priority, highest first. None: no
    feasible assignment (the forced miners alone do not fit).
    """
    # state: (blocked_priority or None, woke_any) -> Pareto list of (cost, value, wakes, levels)
    State = tuple[float, float, int, tuple[int, ...]]
    start = (blocked_below, False)
    frontier: dict[tuple[int | None, bool], list[State]] = {start: [(0.0, 0.0, 0, ())]}
    for m in miners:
        nxt: dict[tuple[int | None, bool], list[State]] = {}
        for (blocked, woke), states in frontier.items():
            may_run = blocked is None or m.priority >= blocked or not m.free
            for level in range(m.min_level, m.ladder.top_level + 1):
                if level > 0 and not may_run:
                    break
                wakes_now = level > 0 and not m.was_on
                key_blocked = blocked
                if level == 0 and m.free and (blocked is None or m.priority > blocked):
                    # a sleeping free miner holds back every lower priority, even where
                    # a shed pin or min-on miner already held back a lower one still
                    key_blocked = m.priority
                key = (key_blocked, woke or wakes_now)
                limit = wake_room_watts if key[1] else room_watts
                dc, dv = m.ladder.costs_watts[level], m.ladder.values_ths[level]
                bucket = nxt.setdefault(key, [])
                for cost, value, wakes, levels in states:
                    if cost + dc <= limit + _EPS_WATTS:
                        bucket.append((cost + dc, value + dv, wakes + wakes_now, (*levels, level)))
        frontier = {key: _pareto(states) for key, states in nxt.items() if states}
    best: State | None = None
    for states in frontier.values():
        for s in states:
            if best is None or (s[1], -s[2], -s[0]) > (best[1], -best[2], -best[0]):
                best = s
    return None if best is None else (best[1], best[3])


def _pareto(states: list[tuple[float, float, int, tuple[int, ...]]]) -> list[tuple[float, float, int, tuple[int, ...]]]:
    """Keep states that no cheaper state beats on TH/s (fewer wakes break ties)."""
    states.sort(key=lambda s: (s[0], -s[1], s[2], s[3]))
    kept: list[tuple[float, float, int, tuple[int, ...]]] = []
    best_value = -math.inf
    for s in states:
        if s[1] > best_value + 1e-12:
            kept.append(s)
            best_value = s[1]
    return kept
