"""Hyperband's brackets over ASHA's rungs, asynchronous: which trial runs in which bracket.

The rungs ``r * eta**k`` (k = 0 .. K-1, below R) give K + 1 possible brackets. Bracket ``b`` starts
its trials at ``r * eta**b`` and has the rungs from there up: bracket 0 is the one ladder of plain
ASHA (every rung), bracket K has no rung at all (every trial trains to R, random search at full
fidelity). Each bracket ranks its trials only against its own, rung by rung, so a trial of bracket 1
is never judged at the first rung and never raises the bar there for a trial of bracket 0. Brackets
run side by side (asynchronous Hyperband, Li et al., "A System for Massively Parallel
Hyperparameter Tuning", MLSys 2020): every new trial joins one of them, none waits for another.

Which bracket: as Hyperband, each bracket gets about the same share of the budget, so bracket b
gets trials in proportion to ``1 / E_b``, where ``E_b`` is the resource a trial of bracket b uses on
average under the stop rule (budget.expected_trial_resource over its rungs). With eta 3, r 1, R 27
that is 3, 7, 15 and 27 epochs, so about 59%, 25%, 12% and 6.5% of the trials (Ray Tune's
AsyncHyperBandScheduler draws a bracket at random, with probabilities proportional to e^(rungs):
64%, 24%, 9% and 3%). Here the assignment is not drawn but dealt, by weighted round robin: each
bracket holds a credit, every new trial adds each bracket's weight to its credit, the bracket with
the most credit takes the trial and pays 1. After any number of trials each bracket holds its share
to within one trial, which a random draw would not give a short study. The credits start from
offsets drawn from the study's seed, so seeds interleave the brackets differently; trial 0 (the
defaults, or the first prior configuration) always joins bracket 0. The bracket of trial k depends on
k, the seed and the bracket count alone: the same study gives every trial the same bracket on every
backend and after every restart.

How many brackets: as many as asked (``asha.brackets``, OTX's ``num_brackets``) while each one's
equal share of the budget still holds enough trials for one of them to reach R by merit: ``eta**K_b``
trials at the first rung of a bracket with ``K_b`` rungs, at ``E_b`` each. Bracket 0 needs the most
(27 trials of 3 epochs with eta 3, r 1, R 27: 3 trainings), so B brackets need B times that; fewer
fit a tight budget, and one always does.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from .asha import rung_resources

# The seed's stream for the credits' starting offsets, apart from the sampler's (seed, index) draws.
_SEED_SALT = 0x6272_6163


def bracket_cost(rungs: Sequence[float], max_resource: float, eta: int, bracket: int) -> float:
    """E_b: the average resource a trial of ``bracket`` uses under the stop rule, from 0 to its first
    rung, then a share eta^-k past its k-th rung."""
    total, previous = 0.0, 0.0
    for k, level in enumerate((*rungs[bracket:], max_resource)):
        total += (level - previous) * float(eta) ** -k
        previous = level
    return total


def bracket_need(rungs: Sequence[float], max_resource: float, eta: int, bracket: int) -> float:
    """The resource a bracket's share must hold: ``eta**K_b`` trials (K_b its rungs) at ``E_b``."""
    return float(eta) ** (len(rungs) - bracket) * bracket_cost(rungs, max_resource, eta, bracket)


def bracket_weights(rungs: Sequence[float], max_resource: float, eta: int, count: int) -> tuple[float, ...]:
    """Each of the first ``count`` brackets' share of the trials: ``1 / E_b``, normalised."""
    inverse = [1.0 / bracket_cost(rungs, max_resource, eta, b) for b in range(count)]
    total = sum(inverse)
    return tuple(w / total for w in inverse)


def brackets_that_fit(
    asked: int, rungs: Sequence[float], max_resource: float, eta: int, resource_budget: float
) -> int:
    """The most brackets, at most ``asked`` and at most K + 1, whose equal shares of
    ``resource_budget`` (epochs over all slots) each hold their bracket's need; at least 1."""
    most = min(asked, len(rungs) + 1)
    for count in range(most, 1, -1):
        need = max(bracket_need(rungs, max_resource, eta, b) for b in range(count))
        if count * need <= resource_budget:
            return count
    return 1


def _deal_one(credit: list[float], weights: Sequence[float], first: bool) -> int:
    """One trial's bracket by weighted round robin; ``credit`` is updated in place."""
    for b, w in enumerate(weights):
        credit[b] += w
    pick = 0 if first else max(range(len(credit)), key=lambda b: (credit[b], -b))
    credit[pick] -= 1.0
    return pick


def deal(weights: Sequence[float], n: int, offsets: Sequence[float]) -> list[int]:
    """The brackets of trials 0..n-1 by weighted round robin from the credits ``offsets``: trial 0
    joins bracket 0, each later one the bracket with the most credit (ties: the lower bracket)."""
    credit = list(offsets)
    return [_deal_one(credit, weights, k == 0) for k in range(n)]


@dataclass
class Brackets:
    """The brackets of one study: the rungs each has, and which trial runs in which."""

    rungs: tuple[float, ...]  # every rung, bracket 0's
    max_resource: float
    eta: int
    count: int
    seed: int = 0
    weights: tuple[float, ...] = field(init=False)
    _dealt: list[int] = field(init=False, default_factory=list)
    _credit: list[float] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        if not 1 <= self.count <= len(self.rungs) + 1:
            raise ValueError(f"{self.count} brackets: need 1 to {len(self.rungs) + 1} (the rungs plus one)")
        self.weights = bracket_weights(self.rungs, self.max_resource, self.eta, self.count)
        generator = random.Random(f"{self.seed}:{_SEED_SALT}")
        self._credit = [generator.random() for _ in range(self.count)]

    @classmethod
    def of(cls, min_resource: float, eta: int, max_resource: float, count: int, seed: int = 0) -> Brackets:
        return cls(rung_resources(min_resource, eta, max_resource), max_resource, eta, count, seed)

    def rungs_of(self, bracket: int) -> tuple[float, ...]:
        """The rungs of ``bracket``: those from ``r * eta**bracket`` up, below R."""
        return self.rungs[bracket:]

    def first_level(self, bracket: int) -> float:
        """Where a trial of ``bracket`` is judged first (R for the bracket without rungs)."""
        return self.rungs[bracket] if bracket < len(self.rungs) else self.max_resource

    def of_trial(self, index: int) -> int:
        """Trial ``index``'s bracket (dealt once per study, extended as trials are added)."""
        if self.count == 1:
            return 0
        while len(self._dealt) <= index:
            self._dealt.append(_deal_one(self._credit, self.weights, not self._dealt))
        return self._dealt[index]

    def cost(self, bracket: int) -> float:
        """E_b of ``bracket``."""
        return bracket_cost(self.rungs, self.max_resource, self.eta, bracket)
