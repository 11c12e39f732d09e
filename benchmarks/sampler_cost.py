"""The cost of one model-based proposal, ours against Optuna's TPESampler, on the same history.

    nice -n 19 .venv/bin/python -m benchmarks.sampler_cost --trials 100 1000 --samplers tpe gp

A history of ``n`` trials with four parameters (two log-scaled, two linear) is made as ASHA would
leave it (eta = 3, rungs 1, 3, 9 and R = 27): every trial reports at epoch 1, and the best third of
each level's trials go on to the next, so about n / 3 reach 3, n / 9 reach 9 and n / 27 finish.
The same trials, values and states are given to both: to our ``Study.params_for`` (as the decision
core calls it, with the trials as ``TrialView``) and to an Optuna study (``add_trials``: pruned
trials with their intermediate values, finished ones complete), whose cost is ``ask()`` plus the
four ``suggest_float`` calls (where Optuna's independent TPE samples). The median of ``--repeats``
proposals is reported, each for a new trial index on the unchanged history (ours) or after a
``tell(FAIL)`` that TPE ignores (Optuna).
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

from hpo_operator.config import SamplerName, StudyConfig
from hpo_operator.space import parse_space
from hpo_operator.study import Study, TrialView
from hpo_operator.trials import Report, TrialPhase

SPACE = {
    "lr": {"param_type": "loguniform", "range": [1e-5, 1e-1]},
    "momentum": {"param_type": "uniform", "range": [0.0, 0.99]},
    "weight_decay": {"param_type": "loguniform", "range": [1e-6, 1e-2]},
    "dropout": {"param_type": "uniform", "range": [0.0, 0.5]},
}
LEVELS = (1, 3, 9, 27)


def loss(params: dict[str, Any], epoch: int) -> float:
    """A smooth synthetic loss that falls with the epochs and has one optimum."""
    x = (
        (math.log10(params["lr"]) + 2.5) ** 2
        + (params["momentum"] - 0.9) ** 2
        + 0.1 * (math.log10(params["weight_decay"]) + 4) ** 2
        + (params["dropout"] - 0.1) ** 2
    )
    return x + 1.0 / epoch


def history(n: int, seed: int = 0) -> list[tuple[dict[str, Any], list[tuple[int, float]]]]:
    """``n`` trials as ASHA leaves them: (params, [(epoch, value), ...])."""
    space = parse_space(SPACE)
    rng = random.Random(f"sampler-cost:{seed}")
    trials = [(space.sample(rng), [(1, 0.0)]) for _ in range(n)]
    for params, reports in trials:
        reports[0] = (1, loss(params, 1))
    alive = list(range(n))
    for level in LEVELS[1:]:
        alive = sorted(alive, key=lambda i: trials[i][1][-1][1])[: max(1, len(alive) // 3)]
        for i in alive:
            params, reports = trials[i]
            last = reports[-1][0]
            reports.extend((e, loss(params, e)) for e in range(last + 1, level + 1))
    return trials


def ours_ms(
    trials: Sequence[tuple[dict[str, Any], list[tuple[int, float]]]], repeats: int, sampler: SamplerName
) -> float:
    config = StudyConfig(
        space=parse_space(SPACE), metric="loss", mode="min", max_resource=27, seed=1, sampler=sampler
    )
    study = Study(config, slots=8)
    views = [
        TrialView(
            index=i,
            status=TrialPhase.COMPLETED if reports[-1][0] == 27 else TrialPhase.PRUNED,
            reports=tuple(Report(e, v, float(i + e)) for e, v in reports),
            started_at=float(i),
            params=params,
        )
        for i, (params, reports) in enumerate(trials)
    ]
    times = []
    for k in range(repeats):
        started = time.perf_counter()
        study.params_for(len(views) + k, views, study.rungs)
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def optuna_ms(trials: Sequence[tuple[dict[str, Any], list[tuple[int, float]]]], repeats: int) -> float:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    distributions: dict[str, Any] = {
        name: optuna.distributions.FloatDistribution(*spec["range"], log=spec["param_type"] == "loguniform")
        for name, spec in SPACE.items()
    }
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=1))
    study.add_trials(
        [
            optuna.trial.create_trial(
                params=params,
                distributions=distributions,
                intermediate_values=dict(reports),
                state=(
                    optuna.trial.TrialState.COMPLETE
                    if reports[-1][0] == 27
                    else optuna.trial.TrialState.PRUNED
                ),
                value=reports[-1][1] if reports[-1][0] == 27 else None,
            )
            for params, reports in trials
        ]
    )
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        trial = study.ask()
        for name, dist in distributions.items():
            trial.suggest_float(name, dist.low, dist.high, log=dist.log)
        times.append(time.perf_counter() - started)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    return 1000 * statistics.median(times)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", nargs="+", type=int, default=[100, 1000])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--samplers", nargs="+", default=["tpe", "gp"], help="ours, one row each")
    args = parser.parse_args(argv)
    header = (
        "observed trials",
        "sampler",
        "ours: ms per proposal",
        "Optuna TPESampler: ms per ask",
        "ours / Optuna",
    )
    print("| " + " | ".join(header) + " |")
    print("| --- | --- | --- | --- | --- |")
    for n in args.trials:
        trials = history(n)
        ours = {name: ours_ms(trials, args.repeats, name) for name in args.samplers}
        try:
            theirs = optuna_ms(trials, args.repeats)
        except ImportError:
            print("optuna is not installed (pip install 'hpo-operator[bench]')", file=sys.stderr)
            theirs = math.nan
        for name, ms in ours.items():
            print(f"| {n} | {name} | {ms:.2f} | {theirs:.2f} | {ms / theirs:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
