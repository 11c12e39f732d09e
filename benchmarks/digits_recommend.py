"""Offline, from digits result files: would ours return better configurations if it chose its answer
by a model's smoothed estimate instead of the best single training?

    .venv/bin/python -m benchmarks.digits_recommend \
        benchmarks/results/digits_retrained_8w.json --study-seeds 30-59

For each of ours' runs with a trial log, the Gaussian process the default sampler fits (gp.py: every
rung result, normal scores per rung, fidelity as a dimension) is fitted to the whole log; among the
configurations trained to R, the *recommended* one is that of the highest posterior mean at R, where
the returned one is that of the highest single value. Both are trained again to R with trainer seeds
1..N on this machine (the same seeds as ``digits.py --retrain-seeds``; a configuration recommended
and returned alike is trained once), and the mean error rates are compared seed by seed: the ratio
recommended / returned with its 95% paired-bootstrap interval. Noisy Bayesian optimisation commonly
recommends by posterior mean for this reason: the best single value is partly the luck of its
training. Writes ``benchmarks/results/digits_recommend.json``. Nothing of the product changes.
"""

from __future__ import annotations

import json
import math
import statistics
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hpo_operator import gp
from hpo_operator.study import Study

from . import digits
from .metrics import ratio_ci


def _levels() -> list[float]:
    """The levels results are compared at: the demo config's rungs, then R (as the core plans them)."""
    return [float(level) for level in Study(digits._demo_config(), 1).levels]


def recommend(trial_log: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The configuration trained to R of highest posterior mean at R; None if none reached R."""
    config = digits._demo_config()
    space, levels = config.space, _levels()
    lo, hi = math.log(levels[0]), math.log(levels[-1])
    sizes = [len(p.choices) if p.type == "choice" else 0 for p in space.params]
    xs: list[list[float]] = []
    values: list[float] = []
    at_level: list[int] = []
    at_r: dict[str, tuple[list[float], dict[str, Any]]] = {}
    for trial in trial_log:
        unit = [p.to_unit(trial["params"][p.name]) for p in space.params]
        reports = {float(r): float(v) for r, v in trial["reports"]}
        for k, level in enumerate(levels):
            if level in reports:
                xs.append([*unit, (math.log(level) - lo) / (hi - lo)])
                values.append(reports[level])
                at_level.append(k)
        if levels[-1] in reports:
            at_r.setdefault(json.dumps(trial["params"], sort_keys=True), (unit, trial["params"]))
    if not at_r:
        return None
    model = gp.fit(np.asarray(xs), gp.level_scores(values, at_level), sizes)
    candidates = list(at_r.values())
    mean = model.predict_mean(np.asarray([[*unit, 1.0] for unit, _ in candidates]))
    return dict(candidates[int(np.argmax(mean))][1])


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(float(a[k]) == float(b[k]) for k in a)


def compare_answers(
    rows: Sequence[dict[str, Any]],
    seeds: int,
    work: Path,
    jobs: int,
    train: Callable[..., dict[int, float]] = digits.train_once,
) -> dict[str, Any]:
    """Per run of ours with a trial log: the returned and the recommended configuration, each trained
    again; and the comparison of the two over the runs."""
    runs = []
    for row in rows:
        if row["contender"] != "ours" or not row.get("trial_log") or not row.get("returned"):
            continue
        recommended = recommend(row["trial_log"])
        assert recommended is not None  # a run that returned a configuration trained one to R
        # Each answer in its own folder: a training's report file and checkpoints are named by the run,
        # and the trainer resumes from a checkpoint it finds.
        run = f"{row['seed']}-{row['workers']}"
        folders = {name: work / f"{name}-{run}" for name in ("returned", "recommended")}
        for folder in folders.values():
            folder.mkdir(parents=True, exist_ok=True)
        returned = digits.retrain(row, seeds, folders["returned"], jobs, train)
        if _same(recommended, row["returned"]):
            again = returned
        else:
            other = {**row, "returned": recommended}
            again = digits.retrain(other, seeds, folders["recommended"], jobs, train)
        runs.append(
            {
                "seed": row["seed"],
                "workers": row["workers"],
                "returned": row["returned"],
                "returned_accuracy": returned["retrained_accuracy"],
                "recommended": recommended,
                "recommended_accuracy": again["retrained_accuracy"],
            }
        )
    summary: dict[str, Any] = {"runs": len(runs)}
    if runs:
        recommended_errors = [1.0 - r["recommended_accuracy"] for r in runs]
        returned_errors = [1.0 - r["returned_accuracy"] for r in runs]
        ratio, low, high = ratio_ci(recommended_errors, returned_errors)
        differences = [a - b for a, b in zip(recommended_errors, returned_errors, strict=True)]
        summary |= {
            "differing": sum(not _same(r["recommended"], r["returned"]) for r in runs),
            "returned_accuracy_mean": 1.0 - statistics.fmean(returned_errors),
            "recommended_accuracy_mean": 1.0 - statistics.fmean(recommended_errors),
            "error_rate_ratio": ratio,
            "error_rate_ratio_ci95": [low, high],
            "recommended_better": sum(d < 0 for d in differences),
            "recommended_worse": sum(d > 0 for d in differences),
        }
    return {"summary": summary, "runs": runs}


def main(argv: Sequence[str] | None = None) -> int:
    parser = digits.offline_parser(
        __doc__ or "", "digits.py result files with trial logs", "digits_recommend.json"
    )
    parser.add_argument("--retrain-seeds", type=int, default=3, help="trainer seeds 1..N for each answer")
    args = parser.parse_args(argv)
    if args.retrain_seeds < 1:
        parser.error("--retrain-seeds must be at least 1")
    rows = digits.read_runs(args.results, args.study_seeds)
    with tempfile.TemporaryDirectory(prefix="hpo-bench-recommend-") as tmp:
        found = compare_answers(rows, args.retrain_seeds, Path(tmp), args.jobs)
    digits.write_offline("digits_recommend", argv, args.results, found, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
