"""The contenders of the search-quality benchmark, each run on one virtual clock.

A contender is a name and a function ``run(problem, workers, ratio, seed) -> Trace``: given the same
problem, the same number of parallel workers and the same budget (``ratio`` x one training with the
default configuration, in virtual seconds), it returns every trial it ran with its reports and
times. The harness computes every metric from the Trace, the same way for everyone.

* ``ours`` / ``ours:<sampler>``: this project's decision core with auto-config, through
  ``hpo_operator.simulate``. ``ours:<sampler>`` sets the study config's ``sampler`` field (a
  model-based or quasi-random sampler inside our ASHA); while the core has no such field the
  contender reports itself unavailable. ``register`` adds any other variant.
* ``ours-promote`` / ``ours-promote:<sampler>``: the same core with ``asha_variant = "promote"``
  (issue 9): a trial pauses at each rung and the top ``1/eta`` of a rung are resumed from their
  checkpoint to the next level; every resumption is a new run that pays the start-up again.
* ``ours-brackets``: the same core (stop variant) asking for ``BRACKETS`` Hyperband brackets (as
  many as the budget fits, brackets.py); ``ours`` runs one.
* ``optuna-sh-random``, ``optuna-sh-tpe``, ``optuna-hb-random``, ``optuna-hb-tpe``: Optuna's
  SuccessiveHalvingPruner / HyperbandPruner with its RandomSampler / TPESampler (library defaults
  except ``min_resource = 1`` and ``reduction_factor = 3``, as ours), driven through ask/tell with
  ``trial.report`` and ``trial.should_prune`` after every epoch. Like ``study.optimize(timeout=...)``
  they start no trial after the deadline and let running trials finish.
* ``ray-asha``, ``ray-hyperband``: Ray Tune's ASHAScheduler (grace period 1, reduction factor 3,
  max_t = R) and HyperBandScheduler (max_t = R, reduction factor 3), driven through their public
  scheduler hooks (``on_trial_add``, ``on_trial_result``, ``on_trial_complete``,
  ``choose_trial_to_run``) with minimal trial stand-ins and a stand-in controller on the virtual
  clock; configurations are drawn at random, as Tune's default searcher does. A paused HyperBand
  trial resumes from where it stopped (a free checkpoint). Like ``time_budget_s`` every trial is
  stopped at the deadline.
* ``random``: random search, every trial trained to R, no trial started after the deadline.

``START_SECONDS`` is the start-up every run of a trial pays before its first epoch (a new process or
pod: image start, imports, data loading), the same for every contender: once per trial for ``ours``,
Optuna and random search, once per run for ``ours-promote`` and for a resumed Ray HyperBand trial.
One training is then ``START_SECONDS + R`` epochs, and the budget ``ratio`` x that.

Every contender's first trial is the default configuration (``SearchSpace.initial()``), as this
project's core always does it (Optuna: ``enqueue_trial``; Ray Tune: ``points_to_evaluate``).
``DEFAULTS_FIRST = False`` turns that off for the peers.
"""

from __future__ import annotations

import dataclasses
import heapq
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from hpo_operator.config import BudgetSpec, StudyConfig
from hpo_operator.simulate import simulate
from hpo_operator.space import SearchSpace, parse_space

from .functions import Problem

REDUCTION_FACTOR = 3
METRIC = "loss"
# Every peer's first trial is the default configuration (the middle of each range), as this
# project's first trial is: Optuna's enqueue_trial, Ray Tune's points_to_evaluate.
DEFAULTS_FIRST = True
# Start-up seconds of every run of a trial (a new trial, or a resumed one), for every contender.
START_SECONDS = 0.0
# Brackets ours-brackets asks for: with R = 27, r = 1 and eta 3 (rungs 1, 3, 9), every one there is.
BRACKETS = 4


class Unavailable(RuntimeError):
    """A contender that cannot run here (a library not installed, a core feature not there yet)."""


@dataclass
class TrialRecord:
    key: int
    params: dict[str, Any]
    created_at: float
    reports: list[tuple[int, float, float]] = field(default_factory=list)  # (epoch, value, time)
    ended_at: float | None = None
    runs: int = 1  # the trial's first run and every resumption of it


@dataclass
class Trace:
    """Everything one contender did in one run."""

    contender: str
    problem: str
    workers: int
    seed: int
    deadline: float
    finished_at: float
    busy_seconds: float
    trials: list[TrialRecord]
    answer: dict[str, Any] | None  # the contender's own best configuration, if it names one


Runner = Callable[[Problem, int, float, int], Trace]


@dataclass(frozen=True)
class Contender:
    name: str
    run: Runner
    description: str


def space_of(problem: Problem) -> SearchSpace:
    return parse_space(problem.hp_space)


def one_training(problem: Problem) -> float:
    """Seconds of one training with the default configuration: start-up and R epochs."""
    return problem.train_seconds() + START_SECONDS


def budget_of(problem: Problem, ratio: float) -> float:
    return ratio * one_training(problem)


# --- ours ------------------------------------------------------------------------------------


def study_config(problem: Problem, ratio: float, seed: int, sampler: str | None = None) -> StudyConfig:
    """The study config a user of this project would write for the problem, with the budget."""
    config = StudyConfig(
        space=space_of(problem),
        metric=METRIC,
        mode="min",
        max_resource=problem.max_resource,
        seed=seed,
        budget=BudgetSpec(time_ratio=ratio, train_time=one_training(problem)),
    )
    if sampler is not None:
        if "sampler" not in {f.name for f in dataclasses.fields(StudyConfig)}:
            raise Unavailable(
                f"the core's StudyConfig has no 'sampler' setting, so 'ours:{sampler}' cannot run"
            )
        config = dataclasses.replace(config, sampler=sampler)  # type: ignore[call-arg]
    return config


def run_ours(
    problem: Problem,
    workers: int,
    ratio: float,
    seed: int,
    sampler: str | None = None,
    name: str = "ours",
    variant: str = "stop",
    brackets: int = 1,
) -> Trace:
    config = study_config(problem, ratio, seed, sampler)
    if variant != "stop":
        config = dataclasses.replace(config, asha_variant=variant)  # type: ignore[arg-type]
    if brackets != 1:
        config = dataclasses.replace(config, asha_brackets=brackets)
    result = simulate(
        config,
        workers,
        lambda params, epoch: problem.value(params, epoch, seed),
        problem.epoch_seconds,
        start_seconds=START_SECONDS,
    )
    trials = [
        TrialRecord(
            key=t.index,
            params=t.params,
            # The simulator moves created_at to a resumed run's start; started_at stays the first
            # run's start plus its start-up.
            created_at=t.started_at - START_SECONDS,
            reports=[(int(r.resource), r.value, r.time) for r in t.reports],
            ended_at=t.ended_at,
            runs=t.runs,
        )
        for t in result.trials
    ]
    best = result.finalize.best
    return Trace(
        contender=name,
        problem=problem.name,
        workers=workers,
        seed=seed,
        deadline=result.deadline if result.deadline is not None else budget_of(problem, ratio),
        finished_at=result.finished_at,
        busy_seconds=result.busy_seconds,
        trials=trials,
        answer=None if best is None else best.params,
    )


# --- a virtual clock for the peers ------------------------------------------------------------


class Driver(Protocol):
    """A peer's scheduling decisions, as the worker loop asks for them."""

    def next_trial(self, now: float) -> tuple[int, dict[str, Any]] | None:
        """A trial to run on a free worker: a new key, or the key of a paused trial to resume."""

    def on_report(self, key: int, epoch: int, value: float, now: float) -> str:
        """'continue', 'pause' (frees the worker, may resume later) or 'stop'."""

    def take_stopped(self) -> Iterable[int]:
        """Keys of running trials the peer stopped outside ``on_report`` (since the last call)."""


def run_workers(
    problem: Problem,
    workers: int,
    deadline: float,
    seed: int,
    driver: Driver,
    name: str,
    stop_at_deadline: bool,
    start_seconds: float | None = None,
) -> Trace:
    """Runs a peer's trials on ``workers`` parallel workers, one event at a time, on a virtual clock.

    No trial starts at or after the deadline. With ``stop_at_deadline`` every running trial is
    stopped there; otherwise running trials finish (each up to its own end) and the run ends later.
    Every run of a trial (its first and each resumption) pays ``start_seconds`` (default
    ``START_SECONDS``) before its first epoch.
    """
    if start_seconds is None:
        start_seconds = START_SECONDS
    trials: dict[int, TrialRecord] = {}
    done_epochs: dict[int, int] = {}
    segment_start: dict[int, float] = {}  # running trials: when their current run began
    events: list[tuple[float, int, int]] = []  # (time, key, epoch it reports)
    now, busy = 0.0, 0.0

    def end_segment(key: int, at: float) -> None:
        nonlocal busy
        busy += at - segment_start.pop(key)

    def fill() -> None:
        while len(segment_start) < workers and now < deadline:
            nxt = driver.next_trial(now)
            if nxt is None:
                return
            key, params = nxt
            if key not in trials:
                trials[key] = TrialRecord(key, params, created_at=now)
                done_epochs[key] = 0
            else:
                trials[key].runs += 1
            segment_start[key] = now
            heapq.heappush(
                events, (now + start_seconds + problem.epoch_seconds(params), key, done_epochs[key] + 1)
            )

    fill()
    while events:
        t, key, epoch = heapq.heappop(events)
        if key not in segment_start:
            continue  # stopped while this epoch was running
        if stop_at_deadline and t > deadline:
            now = deadline
            for k in list(segment_start):
                end_segment(k, now)
                trials[k].ended_at = now
            events.clear()
            break
        now = t
        trial = trials[key]
        value = problem.value(trial.params, epoch, seed)
        trial.reports.append((epoch, value, now))
        done_epochs[key] = epoch
        action = driver.on_report(key, epoch, value, now)
        if epoch >= problem.max_resource:
            action = "stop"
        if action == "continue":
            heapq.heappush(events, (now + problem.epoch_seconds(trial.params), key, epoch + 1))
        else:
            end_segment(key, now)
            if action == "stop":
                trial.ended_at = now
        for k in driver.take_stopped():
            if k in segment_start:
                end_segment(k, now)
                trials[k].ended_at = now
        fill()
    return Trace(
        contender=name,
        problem=problem.name,
        workers=workers,
        seed=seed,
        deadline=deadline,
        finished_at=now,
        busy_seconds=busy,
        trials=list(trials.values()),
        answer=None,
    )


# --- random search ---------------------------------------------------------------------------


class RandomDriver:
    def __init__(self, problem: Problem, seed: int) -> None:
        self.space = space_of(problem)
        self.rng = random.Random(f"random-search:{seed}")
        self.count = 0

    def next_trial(self, now: float) -> tuple[int, dict[str, Any]] | None:
        self.count += 1
        if self.count == 1 and DEFAULTS_FIRST:
            return 0, self.space.initial()
        return self.count - 1, self.space.sample(self.rng)

    def on_report(self, key: int, epoch: int, value: float, now: float) -> str:
        return "continue"

    def take_stopped(self) -> Iterable[int]:
        return ()


def run_random(problem: Problem, workers: int, ratio: float, seed: int) -> Trace:
    driver = RandomDriver(problem, seed)
    return run_workers(
        problem, workers, budget_of(problem, ratio), seed, driver, "random", stop_at_deadline=False
    )


# --- Optuna ----------------------------------------------------------------------------------


class OptunaDriver:
    def __init__(self, problem: Problem, seed: int, sampler: str, pruner: str) -> None:
        try:
            import optuna
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise Unavailable("optuna is not installed (pip install 'hpo-operator[bench]')") from err
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.optuna = optuna
        samplers = {
            "random": lambda: optuna.samplers.RandomSampler(seed=seed),
            "tpe": lambda: optuna.samplers.TPESampler(seed=seed),
        }
        pruners = {
            "sh": lambda: optuna.pruners.SuccessiveHalvingPruner(
                min_resource=1, reduction_factor=REDUCTION_FACTOR
            ),
            "hb": lambda: optuna.pruners.HyperbandPruner(
                min_resource=1, max_resource=problem.max_resource, reduction_factor=REDUCTION_FACTOR
            ),
        }
        self.study = optuna.create_study(
            direction="minimize", sampler=samplers[sampler](), pruner=pruners[pruner]()
        )
        self.problem = problem
        self.space = space_of(problem)
        self.running: dict[int, Any] = {}
        if DEFAULTS_FIRST:
            self.study.enqueue_trial(self._optuna_params(self.space.initial()))

    def _optuna_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """A configuration in the names _suggest asks Optuna for."""
        out = {}
        for p in self.space.params:
            if p.type == "quniform":
                out[f"{p.name}__k"] = p.nearest_grid_index(float(params[p.name]))
            else:
                out[p.name] = params[p.name]
        return out

    def _suggest(self, trial: Any) -> dict[str, Any]:
        params: dict[str, Any] = {}
        for p in self.space.params:
            if p.type == "choice":
                params[p.name] = trial.suggest_categorical(p.name, list(p.choices))
            elif p.type == "quniform":
                params[p.name] = p.grid_value(trial.suggest_int(f"{p.name}__k", 0, p.grid_size() - 1))
            elif p.type == "qloguniform":
                x = trial.suggest_float(p.name, p.low, p.high, log=True)
                params[p.name] = p.grid_value(p.nearest_grid_index(x))
            else:
                params[p.name] = trial.suggest_float(p.name, p.low, p.high, log=p.log)
        return params

    def next_trial(self, now: float) -> tuple[int, dict[str, Any]] | None:
        trial = self.study.ask()
        self.running[trial.number] = trial
        return trial.number, self._suggest(trial)

    def on_report(self, key: int, epoch: int, value: float, now: float) -> str:
        trial = self.running[key]
        trial.report(value, epoch)
        if epoch >= self.problem.max_resource:
            self.study.tell(trial, value)
            del self.running[key]
            return "stop"
        if trial.should_prune():
            self.study.tell(trial, state=self.optuna.trial.TrialState.PRUNED)
            del self.running[key]
            return "stop"
        return "continue"

    def take_stopped(self) -> Iterable[int]:
        return ()


def optuna_runner(sampler: str, pruner: str) -> Runner:
    name = f"optuna-{pruner}-{sampler}"

    def run(problem: Problem, workers: int, ratio: float, seed: int) -> Trace:
        driver = OptunaDriver(problem, seed, sampler, pruner)
        return run_workers(
            problem, workers, budget_of(problem, ratio), seed, driver, name, stop_at_deadline=False
        )

    return run


# --- Ray Tune's schedulers -------------------------------------------------------------------


class _RayTrial:
    """The part of ray.tune's Trial that its schedulers read."""

    def __init__(self, key: int, params: dict[str, Any], status: str) -> None:
        self.trial_id = f"{key:05d}"
        self.key = key
        self.config = params
        self.status = status
        self.is_saving = False
        self.last_result: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"trial_{self.trial_id}"


class _RayController:
    """The part of ray.tune's TuneController that its schedulers call (stop_trial)."""

    def __init__(self, driver: RayDriver) -> None:
        self.driver = driver

    def stop_trial(self, trial: _RayTrial) -> None:
        self.driver.stop(trial)

    def get_trials(self) -> list[_RayTrial]:
        return list(self.driver.trials.values())


class RayDriver:
    def __init__(self, problem: Problem, seed: int, scheduler: str) -> None:
        try:
            import numpy as np
            from ray.tune.experiment.trial import Trial
            from ray.tune.schedulers import ASHAScheduler, HyperBandScheduler, TrialScheduler
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise Unavailable("ray[tune] is not installed (pip install 'hpo-operator[bench]')") from err
        np.random.seed(seed)  # ASHAScheduler draws brackets from numpy's global generator
        self.T = Trial
        self.TS = TrialScheduler
        if scheduler == "asha":
            self.scheduler: Any = ASHAScheduler(
                metric=METRIC,
                mode="min",
                max_t=problem.max_resource,
                grace_period=1,
                reduction_factor=REDUCTION_FACTOR,
            )
        else:
            self.scheduler = HyperBandScheduler(
                metric=METRIC, mode="min", max_t=problem.max_resource, reduction_factor=REDUCTION_FACTOR
            )
        self.synchronous = scheduler == "hyperband"
        self.problem = problem
        self.space = space_of(problem)
        self.rng = random.Random(f"ray-random:{seed}")
        self.trials: dict[int, _RayTrial] = {}
        self.controller = _RayController(self)
        self.stopped: list[int] = []

    def stop(self, trial: _RayTrial) -> None:
        if trial.status in (self.T.TERMINATED, self.T.ERROR):
            return
        if trial.status in (self.T.PENDING, self.T.PAUSED):
            self.scheduler.on_trial_remove(self.controller, trial)
        else:
            self.scheduler.on_trial_complete(self.controller, trial, trial.last_result)
            self.stopped.append(trial.key)
        trial.status = self.T.TERMINATED

    def _choose(self) -> _RayTrial | None:
        if self.synchronous:
            chosen: _RayTrial | None = self.scheduler.choose_trial_to_run(self.controller)
            return chosen
        return next((t for t in self.trials.values() if t.status == self.T.PENDING), None)

    def next_trial(self, now: float) -> tuple[int, dict[str, Any]] | None:
        trial = self._choose()
        if trial is None:
            key = len(self.trials)
            params = self.space.initial() if key == 0 and DEFAULTS_FIRST else self.space.sample(self.rng)
            trial = _RayTrial(key, params, self.T.PENDING)
            self.trials[key] = trial
            self.scheduler.on_trial_add(self.controller, trial)
            trial = self._choose()
            if trial is None:
                return None
        trial.status = self.T.RUNNING
        return trial.key, trial.config

    def on_report(self, key: int, epoch: int, value: float, now: float) -> str:
        trial = self.trials[key]
        result = {"training_iteration": epoch, METRIC: value, "time_total_s": now}
        decision = self.scheduler.on_trial_result(self.controller, trial, result)
        trial.last_result = result
        if trial.status == self.T.TERMINATED:  # stopped by the scheduler while processing the result
            self.stopped = [k for k in self.stopped if k != key]
            return "stop"
        if decision == self.TS.STOP or epoch >= self.problem.max_resource:
            self.stop(trial)
            self.stopped = [k for k in self.stopped if k != key]
            return "stop"
        if decision == self.TS.PAUSE:
            trial.status = self.T.PAUSED
            return "pause"
        return "continue"

    def take_stopped(self) -> Iterable[int]:
        stopped, self.stopped = self.stopped, []
        return stopped


def ray_runner(scheduler: str) -> Runner:
    name = f"ray-{scheduler}"

    def run(problem: Problem, workers: int, ratio: float, seed: int) -> Trace:
        driver = RayDriver(problem, seed, scheduler)
        return run_workers(
            problem, workers, budget_of(problem, ratio), seed, driver, name, stop_at_deadline=True
        )

    return run


# --- the registry ----------------------------------------------------------------------------

CONTENDERS: dict[str, Contender] = {}


def register(contender: Contender) -> None:
    CONTENDERS[contender.name] = contender


def ours_runner(sampler: str | None, variant: str = "stop", brackets: int = 1) -> Runner:
    base = "ours" if variant == "stop" else f"ours-{variant}"
    base = base if brackets == 1 else f"{base}-brackets"
    name = base if sampler is None else f"{base}:{sampler}"

    def run(problem: Problem, workers: int, ratio: float, seed: int) -> Trace:
        return run_ours(problem, workers, ratio, seed, sampler, name, variant, brackets)

    return run


def contender(name: str) -> Contender:
    """A registered contender, or ``ours:<sampler>`` / ``ours-promote:<sampler>`` for any sampler."""
    if name in CONTENDERS:
        return CONTENDERS[name]
    base, _, sampler = name.partition(":")
    if sampler and base in ("ours", "ours-promote"):
        variant = "stop" if base == "ours" else "promote"
        return Contender(
            name,
            ours_runner(sampler, variant),
            f"this project's ASHA ({variant} variant) with sampler {sampler!r}",
        )
    raise KeyError(
        f"unknown contender {name!r}; known: {', '.join(CONTENDERS)}, ours:<sampler> and "
        "ours-promote:<sampler>"
    )


register(Contender("ours", ours_runner(None), "this project's ASHA with auto-config (its default sampler)"))
register(
    Contender(
        "ours-brackets",
        ours_runner(None, brackets=BRACKETS),
        f"this project's ASHA with {BRACKETS} Hyperband brackets asked for (as many as the budget fits)",
    )
)
register(
    Contender(
        "ours-promote",
        ours_runner(None, "promote"),
        "this project's ASHA, promote variant: trials pause at each rung and the best resume",
    )
)
for _pruner in ("sh", "hb"):
    for _sampler in ("random", "tpe"):
        register(
            Contender(
                f"optuna-{_pruner}-{_sampler}",
                optuna_runner(_sampler, _pruner),
                f"Optuna {'SuccessiveHalving' if _pruner == 'sh' else 'Hyperband'}Pruner + "
                f"{'Random' if _sampler == 'random' else 'TPE'}Sampler",
            )
        )
register(Contender("ray-asha", ray_runner("asha"), "Ray Tune ASHAScheduler, random configurations"))
register(
    Contender("ray-hyperband", ray_runner("hyperband"), "Ray Tune HyperBandScheduler, random configurations")
)
register(Contender("random", run_random, "random search, every trial to R"))

# The search-quality table of issue 7: ours against the peers (the promote variant is compared on
# its own, docs/benchmarks/promote.md).
DEFAULT_CONTENDERS = tuple(name for name in CONTENDERS if name not in ("ours-promote", "ours-brackets"))
