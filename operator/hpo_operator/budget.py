"""Auto-configuration: from a wall-clock budget to an ASHA plan that fits it.

The cost model, in epochs (resource units) of GPU time, for the ``stop`` variant: a trial trains to
the first rung; a share ``eta**-k`` of trials passes k rungs, so one trial costs on average

    E = sum_k (L_k - L_{k-1}) * eta**-k      over the levels L = rungs + [R], L_{-1} = 0.

The first trials at an empty rung always continue, so the plan charges the first trial a full
training (R) instead of E. Each trial also pays a start-up ``o`` (process or pod start, imports,
data loading) once, measured from the trials' first reports. With n trials over P slots the
predicted wall clock is

    ((R + (n - 1) * E) * epoch_seconds + n * o) / P  +  (1 - 1/P) * (R * epoch_seconds + o)

(the second term: the last full training may run alone while the other slots idle). The plan takes
the largest n whose prediction stays within ``headroom`` x budget, so it never predicts a finish
past the budget; the longest chain, one training to R, must fit on its own or there is no plan.
Re-planning is the same computation with a measured epoch time. A trial limit (``max_trials``)
caps n; the plan then says so (``Plan.max_trials``).

With several Hyperband brackets (brackets.py) E is the average over the brackets' shares of the
trials, and the plan says how many brackets the budget fits (``brackets``) and, when that is fewer
than asked, why (``brackets_note``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .asha import rung_resources
from .brackets import bracket_cost, bracket_need, bracket_weights, brackets_that_fit
from .config import DEFAULT_REDUCTION_FACTOR

# Share of the budget the plan may fill; the rest absorbs start-up, scheduling and noise.
HEADROOM = 0.9
# An upper bound on trials, so that a huge budget does not plan an unbounded study.
MAX_TRIALS = 10_000


class BudgetTooSmall(ValueError):
    """The budget does not hold one full training; ``smallest_budget`` is the least that does."""

    def __init__(self, budget_seconds: float, train_seconds: float) -> None:
        self.budget_seconds = budget_seconds
        self.smallest_budget = train_seconds / HEADROOM
        super().__init__(
            f"a budget of {budget_seconds:.0f}s is too small for even one full training "
            f"({train_seconds:.0f}s); the smallest workable budget is {self.smallest_budget:.0f}s"
        )


@dataclass(frozen=True)
class Plan:
    """An ASHA configuration sized to a budget."""

    eta: int
    min_resource: float
    max_resource: float
    rungs: tuple[float, ...]
    planned_trials: int
    parallelism: int
    epoch_seconds: float
    budget_seconds: float
    predicted_gpu_seconds: float
    predicted_seconds: float
    trial_overhead_seconds: float = 0.0
    max_trials: int | None = None  # set when this trial limit capped planned_trials below the budget's
    brackets: int = 1
    brackets_note: str = ""  # why fewer brackets than asked run; empty when as asked

    def to_status(self) -> dict[str, Any]:
        """camelCase keys, as in the HPOStudy status and `hpo plan --json`."""
        return {
            "eta": self.eta,
            "minimumResource": self.min_resource,
            "maximumResource": self.max_resource,
            "rungs": list(self.rungs),
            "plannedTrials": self.planned_trials,
            "parallelism": self.parallelism,
            "epochSeconds": round(self.epoch_seconds, 3),
            "budgetSeconds": round(self.budget_seconds, 3),
            "predictedGpuSeconds": round(self.predicted_gpu_seconds, 3),
            "predictedSeconds": round(self.predicted_seconds, 3),
            "trialOverheadSeconds": round(self.trial_overhead_seconds, 3),
            "brackets": self.brackets,
            **({"bracketsNote": self.brackets_note} if self.brackets_note else {}),
            **({"maxTrials": self.max_trials} if self.max_trials is not None else {}),
        }

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def expected_trial_resource(rungs: tuple[float, ...], max_resource: float, eta: int) -> float:
    """E: the average resource one trial consumes under the stop rule."""
    total, previous = 0.0, 0.0
    for k, level in enumerate((*rungs, max_resource)):
        total += (level - previous) * eta**-k
        previous = level
    return total


def fit_brackets(
    asked: int, rungs: tuple[float, ...], max_resource: float, eta: int, trainings: float | None
) -> tuple[int, str]:
    """How many of ``asked`` brackets to run, and why fewer when fewer: ``trainings`` is the number
    of full trainings the budget holds over all slots (None: not known before trials start)."""
    most = len(rungs) + 1
    if asked <= 1:
        return 1, ""
    if trainings is None:
        return 1, (
            f"1 of {asked} brackets: with a deadline and no trainTime, how many trainings the budget "
            "holds is not known when the first trials start; give trainTime too"
        )
    budget = HEADROOM * trainings * max_resource
    count = brackets_that_fit(asked, rungs, max_resource, eta, budget)
    if count == asked:
        return count, ""
    if count == most and asked > most:
        return count, f"{count} of {asked} brackets: {len(rungs)} rungs make at most {most}"
    wanted = min(asked, most)
    need = wanted * max(bracket_need(rungs, max_resource, eta, b) for b in range(wanted)) / max_resource
    return count, (
        f"{count} of {asked} brackets: {wanted} need a budget of {need / HEADROOM:.3g} trainings "
        f"(each bracket's equal share must take {eta}^rungs trials to its first rung), it holds "
        f"{trainings:.3g}"
    )


def mean_trial_resource(rungs: tuple[float, ...], max_resource: float, eta: int, brackets: int) -> float:
    """E over the brackets' shares of the trials (with one bracket, expected_trial_resource)."""
    weights = bracket_weights(rungs, max_resource, eta, brackets)
    return sum(w * bracket_cost(rungs, max_resource, eta, b) for b, w in enumerate(weights))


def mean_runs(rungs: tuple[float, ...], max_resource: float, eta: int, brackets: int) -> float:
    """Runs per trial under the promote rule over the brackets' shares of the trials."""
    weights = bracket_weights(rungs, max_resource, eta, brackets)
    return sum(w * expected_runs(rungs[b:], eta) for b, w in enumerate(weights))


def expected_runs(rungs: tuple[float, ...], eta: int) -> float:
    """Runs per trial under the promote rule: the first, and one more for each rung a trial is
    promoted from (a share eta^-k of the trials reaches level k)."""
    return 1.0 + sum(float(eta) ** -k for k in range(1, len(rungs) + 1))


def predicted_seconds(
    n: int,
    slots: int,
    epoch_seconds: float,
    per_trial: float,
    max_resource: float,
    trial_overhead: float = 0.0,
    runs_per_trial: float = 1.0,
) -> float:
    parallel = max(1, min(slots, n))
    gpu_seconds = (max_resource + (n - 1) * per_trial) * epoch_seconds + n * trial_overhead * runs_per_trial
    longest = max_resource * epoch_seconds + trial_overhead
    return gpu_seconds / parallel + (1 - 1 / parallel) * longest


def default_min_resource(max_resource: float) -> float:
    """One epoch: the smallest resource that gives a signal, or R itself below one epoch."""
    return 1 if max_resource >= 1 else max_resource


def make_plan(
    budget_seconds: float,
    slots: int,
    epoch_seconds: float,
    max_resource: float,
    min_resource: float | None = None,
    eta: int | None = None,
    trial_overhead: float = 0.0,
    promote: bool = False,
    max_trials: int | None = None,
    brackets: int | tuple[int, str] = 1,
    trainings: float | None = None,
) -> Plan:
    """The plan with the most trials whose predicted finish fits the budget, at most ``max_trials``;
    ``promote``: each resumption of a trial pays ``trial_overhead`` again. ``brackets``: as many
    asked, of which the plan runs those that fit ``trainings`` full trainings over all slots (unset:
    the budget over the slots divided by one training); or (count, note) as a caller decided them
    (fit_brackets).

    Raises BudgetTooSmall when one full training does not fit, ValueError on impossible inputs.
    """
    if budget_seconds <= 0 or epoch_seconds <= 0 or slots < 1 or max_resource <= 0:
        raise ValueError(
            f"need a positive budget, epoch time, slot count and R; got budget={budget_seconds}, "
            f"epoch={epoch_seconds}, slots={slots}, R={max_resource}"
        )
    eta = eta or DEFAULT_REDUCTION_FACTOR
    r = min_resource if min_resource is not None else default_min_resource(max_resource)
    if r > max_resource:
        raise ValueError(f"minimum resource {r} exceeds the maximum resource {max_resource}")
    rungs = rung_resources(r, eta, max_resource)
    if isinstance(brackets, tuple):
        count, note = brackets
    else:
        if trainings is None:
            trainings = budget_seconds * slots / (max_resource * epoch_seconds + trial_overhead)
        count, note = fit_brackets(brackets, rungs, max_resource, eta, trainings)
    per_trial = mean_trial_resource(rungs, max_resource, eta, count)
    runs = mean_runs(rungs, max_resource, eta, count) if promote else 1.0
    limit = HEADROOM * budget_seconds
    train_seconds = max_resource * epoch_seconds + trial_overhead
    # The tolerance: a caller's "one training fills the limit exactly" must not fail on rounding.
    if train_seconds > limit * (1 + 1e-9):
        raise BudgetTooSmall(budget_seconds, train_seconds)

    def fits(n: int) -> bool:
        predicted = predicted_seconds(n, slots, epoch_seconds, per_trial, max_resource, trial_overhead, runs)
        return predicted <= limit

    # The prediction grows with n (below the slot count it is R*e + (n-1)/n * E*e), and n = 1 fits:
    # find the largest fitting n by doubling, then bisection.
    low, high = 1, 2
    while high <= MAX_TRIALS and fits(high):
        low, high = high, 2 * high
    high = min(high, MAX_TRIALS + 1)
    while high - low > 1:
        mid = (low + high) // 2
        if fits(mid):
            low = mid
        else:
            high = mid
    n = low
    capped = max_trials is not None and max_trials < n
    if capped:
        assert max_trials is not None
        n = max_trials
    parallel = min(slots, n)
    return Plan(
        eta=eta,
        min_resource=r,
        max_resource=max_resource,
        rungs=rungs,
        planned_trials=n,
        parallelism=parallel,
        epoch_seconds=epoch_seconds,
        budget_seconds=budget_seconds,
        predicted_gpu_seconds=(max_resource + (n - 1) * per_trial) * epoch_seconds
        + n * trial_overhead * runs,
        predicted_seconds=predicted_seconds(
            n, slots, epoch_seconds, per_trial, max_resource, trial_overhead, runs
        ),
        trial_overhead_seconds=trial_overhead,
        max_trials=max_trials if capped else None,
        brackets=count,
        brackets_note=note,
    )
