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

Values are normalised once to "higher is better" (``mode``); a value that is not finite (NaN, or
an infinity, which a diverged loss or a broken metric gives) counts as the worst value. Ties
between equal values go to the value recorded first. A trial pruned at a rung is recorded there
(its value still raises the bar for later trials) and not at any higher rung.

With Hyperband's brackets (brackets.py) a trial of bracket b is recorded only at rungs b and above,
and ranked only against the records of its own bracket at the same rung.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .config import Mode
from .trials import Report


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
    """A value as 'higher is better'; a value that is not finite is the worst, in either mode (an
    infinite accuracy or a loss of minus infinity is a broken report, not a result)."""
    if not math.isfinite(value):
        return -math.inf
    return value if mode == "max" else -value


@dataclass(frozen=True)
class RungRecord:
    """A trial's value at a rung (its index among all rungs), and when it was reported."""

    trial: int
    rung: int
    resource: float
    value: float
    time: float
    bracket: int = 0


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


def rung_records(
    trial: int, reports: Sequence[Report], rungs: Sequence[float], bracket: int = 0
) -> list[RungRecord]:
    """A trial's records: for each rung of its bracket (``rungs[bracket:]``), its first report
    reaching it. ``reports`` in time order."""
    records: list[RungRecord] = []
    k = bracket
    for report in reports:
        while k < len(rungs) and report.resource >= rungs[k]:
            records.append(RungRecord(trial, k, rungs[k], report.value, report.time, bracket))
            k += 1
    return records


def _arrival(record: RungRecord) -> tuple[float, int, int]:
    return (record.time, record.trial, record.rung)


class StopReplay:
    """The ``stop`` rule replayed over records in arrival order, extendable as records arrive.

    Records are ranked per (bracket, rung). ``update(records)`` takes every record so far. When the
    records seen before are still the first ones in arrival order (reports only ever grow, and
    mostly arrive in time order), it carries on from where it stopped; otherwise it replays from
    scratch. Either way the result equals a full replay of the records given.
    """

    def __init__(self, eta: int, mode: Mode) -> None:
        self.eta = eta
        self.mode = mode
        self._reset()

    def _reset(self) -> None:
        self.seen: list[RungRecord] = []
        # (bracket, rung) -> [(-score, arrival)] kept sorted: best first, equal values to the one
        # recorded first.
        self.at_rung: dict[tuple[int, int], list[tuple[float, int]]] = {}
        self.decisions: dict[int, list[RungDecision]] = {}
        self.pruned: set[int] = set()

    def update(self, records: Iterable[RungRecord]) -> dict[int, list[RungDecision]]:
        ordered = sorted(records, key=_arrival)
        n = len(self.seen)
        if n > len(ordered) or (n and ordered[n - 1] != self.seen[-1]) or ordered[:n] != self.seen:
            self._reset()
            n = 0
        for rec in ordered[n:]:
            self._record(rec, len(self.seen))
            self.seen.append(rec)
        return {trial: list(ds) for trial, ds in self.decisions.items()}  # callers may keep it

    def _record(self, rec: RungRecord, arrival: int) -> None:
        if rec.trial in self.pruned:
            return
        ranking = self.at_rung.setdefault((rec.bracket, rec.rung), [])
        mine = (-score(rec.value, self.mode), arrival)
        position = bisect.bisect_left(ranking, mine)
        ranking.insert(position, mine)
        keep = max(1, len(ranking) // self.eta)
        decision = RungDecision(
            trial=rec.trial,
            rung=rec.rung,
            resource=rec.resource,
            value=rec.value,
            cutoff=_unscore(-ranking[keep - 1][0], self.mode),
            rank=position + 1,
            competitors=len(ranking),
            keep=keep,
        )
        self.decisions.setdefault(rec.trial, []).append(decision)
        if not decision.promoted:
            self.pruned.add(rec.trial)


def tie_note(value: float, cutoff: float) -> str:
    """For a pruned trial's message: a value equal to the cut-off it missed lost a tie (equal values
    rank by arrival), which "0.9588, cut-off 0.9588" alone does not say."""
    return " (a tie: the value recorded first continues)" if value == cutoff else ""


def replay_stop(records: Iterable[RungRecord], eta: int, mode: Mode) -> dict[int, list[RungDecision]]:
    """Replays the ``stop`` rule over every record; returns each trial's decisions, in rung order.

    A trial's list ends with its pruning decision when it was pruned.
    """
    return StopReplay(eta, mode).update(records)


def _unscore(s: float, mode: Mode) -> float:
    if math.isinf(s) and s < 0:
        return math.nan
    return s if mode == "max" else -s
