"""Asynchronous successive halving (ASHA), pure and deterministic.

Rungs lie at ``r * eta**k`` for k = 0, 1, ... while below the maximum resource R. A trial is
*recorded* at a rung by its first report whose resource reaches the rung. In the ``stop`` variant
(Ray Tune's ASHAScheduler) a trial recorded at a rung continues only if its value is among the top
``max(1, n // eta)`` of the n values recorded at that rung so far, itself included; otherwise it is
pruned there. So the first trial at an empty rung always continues, and with fewer than ``eta``
values only the best of them does.

"Recorded so far" is replayed from the reports in the order of their timestamps (ties by trial
index, then rung), never from the order in which a caller happened to look, so the same reports give
the same decisions however often, and after however many restarts, they are evaluated.

Values are normalised once to "higher is better" (``mode``); NaN counts as the worst value. Ties
between equal values go to the value recorded first. A trial pruned at a rung is recorded there
(its value still raises the bar for later trials) and not at any higher rung.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .config import Mode


def rung_resources(min_resource: float, eta: int, max_resource: float) -> tuple[float, ...]:
    """The rung resources ``r * eta**k`` below ``max_resource`` (ints when r is integral)."""
    if min_resource <= 0 or eta < 2 or max_resource <= 0:
        raise ValueError(f"need r > 0, eta >= 2, R > 0; got r={min_resource}, eta={eta}, R={max_resource}")
    rungs: list[float] = []
    k = 0
    while True:
        resource = min_resource * eta**k
        if resource >= max_resource:
            return tuple(rungs)
        rungs.append(int(resource) if float(resource).is_integer() else resource)
        k += 1


def score(value: float, mode: Mode) -> float:
    """A value as 'higher is better'; NaN is the worst."""
    if math.isnan(value):
        return -math.inf
    return value if mode == "max" else -value


@dataclass(frozen=True)
class RungRecord:
    """A trial's value at a rung, and when it was reported."""

    trial: int
    rung: int
    resource: float
    value: float
    time: float


@dataclass(frozen=True)
class RungDecision:
    """The outcome of one record: continue, or prune with the cut-off it missed."""

    trial: int
    rung: int
    resource: float
    value: float
    cutoff: float  # the worst value that still continues at this rung
    rank: int  # 1 = best at the rung when recorded
    competitors: int  # values recorded at the rung, this one included
    keep: int  # how many of them continue

    @property
    def promoted(self) -> bool:
        return self.rank <= self.keep


@dataclass(frozen=True)
class Report:
    """One report of a trial: its value at a resource, and when (seconds, on the study's clock)."""

    resource: float
    value: float
    time: float


def report_order(report: Report) -> tuple[float, float]:
    return (report.time, report.resource)


def rung_records(trial: int, reports: Sequence[Report], rungs: Sequence[float]) -> list[RungRecord]:
    """A trial's records: for each rung, its first report reaching it. ``reports`` in time order."""
    records: list[RungRecord] = []
    for report in reports:
        while len(records) < len(rungs) and report.resource >= rungs[len(records)]:
            k = len(records)
            records.append(RungRecord(trial, k, rungs[k], report.value, report.time))
    return records


def replay_stop(records: Iterable[RungRecord], eta: int, mode: Mode) -> dict[int, list[RungDecision]]:
    """Replays the ``stop`` rule over every record; returns each trial's decisions, in rung order.

    A trial's list ends with its pruning decision when it was pruned.
    """
    ordered = sorted(records, key=lambda r: (r.time, r.trial, r.rung))
    # rung -> [(-score, arrival)] kept sorted: best first, equal values to the one recorded first.
    at_rung: dict[int, list[tuple[float, int]]] = {}
    decisions: dict[int, list[RungDecision]] = {}
    pruned: set[int] = set()
    for arrival, rec in enumerate(ordered):
        if rec.trial in pruned:
            continue
        ranking = at_rung.setdefault(rec.rung, [])
        mine = (-score(rec.value, mode), arrival)
        position = bisect.bisect_left(ranking, mine)
        ranking.insert(position, mine)
        keep = max(1, len(ranking) // eta)
        cutoff_score = -ranking[keep - 1][0]
        rank = position + 1
        decision = RungDecision(
            trial=rec.trial,
            rung=rec.rung,
            resource=rec.resource,
            value=rec.value,
            cutoff=_unscore(cutoff_score, mode),
            rank=rank,
            competitors=len(ranking),
            keep=keep,
        )
        decisions.setdefault(rec.trial, []).append(decision)
        if not decision.promoted:
            pruned.add(rec.trial)
    return decisions


def _unscore(s: float, mode: Mode) -> float:
    if math.isinf(s) and s < 0:
        return math.nan
    return s if mode == "max" else -s
