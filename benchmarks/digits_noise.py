"""How far apart good digits configurations are against the noise of one training, per metric.

    OPENBLAS_NUM_THREADS=1 .venv/bin/python -m benchmarks.digits_noise \
        benchmarks/results/digits_retrained_8w.json --study-seeds 30-59 --configs 16 --seeds 4

Takes the distinct configurations the studies of the given result files returned (both contenders,
in file and seed order, the first ``--configs``), trains each to R with trainer seeds 1..``--seeds``
(the studies train with seed 0), and reports, for the validation accuracy and the validation loss
at R (the trainer reports both, whichever is the study's metric): the standard deviation between
trainer seeds of one configuration, that of the configurations' own means (``digits.spread``), and
their ratio. A sampler can only be told from another by a metric on which the configurations they
return differ by more than one training's noise: the higher the ratio, the fewer seeds a comparison
needs. Writes ``benchmarks/results/digits_noise.json``.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from . import digits

METRICS = {"accuracy": "val_accuracy", "loss": "val_loss"}  # name -> the trainer's extra at each report


def returned_configurations(rows: Sequence[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """The distinct configurations the runs returned, in their order, at most ``limit``."""
    found: dict[str, dict[str, Any]] = {}
    for row in rows:
        params = row.get("returned")
        if params:
            found.setdefault(json.dumps({k: float(v) for k, v in sorted(params.items())}), params)
    return list(found.values())[:limit]


def measure(
    configurations: Sequence[dict[str, Any]],
    seeds: int,
    work: Path,
    jobs: int,
    train: Callable[..., list[dict[str, Any]]] = digits.train_reports,
) -> dict[str, Any]:
    """Each configuration trained to R with trainer seeds 1..``seeds``; per metric, the spreads."""
    r_max = digits._demo_config().max_resource
    tasks = [(i, params, seed) for i, params in enumerate(configurations) for seed in range(1, seeds + 1)]

    def one(task: tuple[int, dict[str, Any], int]) -> dict[str, float]:
        i, params, seed = task
        reports = train(params, work, f"noise-{i}-{seed}", seed=seed)
        last = next(r for r in reports if float(r["resource"]) >= r_max)
        return {name: float(last["extra"][key]) for name, key in METRICS.items()}

    with ThreadPoolExecutor(jobs) as pool:
        values = list(pool.map(one, tasks))
    per_config: list[dict[str, list[float]]] = [{name: [] for name in METRICS} for _ in configurations]
    for (i, _, _), measured in zip(tasks, values, strict=True):
        for name, value in measured.items():
            per_config[i][name].append(value)
    summary: dict[str, Any] = {}
    for name in METRICS:
        found = digits.spread([c[name] for c in per_config])
        if found is not None:
            ratio = found["between_sd"] / found["within_sd"] if found["within_sd"] else None
            summary[name] = {**found, "between_over_within": ratio}
    runs = [{"params": p, **c} for p, c in zip(configurations, per_config, strict=True)]
    return {"summary": summary, "configurations": runs}


def main(argv: Sequence[str] | None = None) -> int:
    parser = digits.offline_parser(__doc__ or "", "digits.py result files", "digits_noise.json")
    parser.add_argument("--configs", type=int, default=16, help="distinct returned configurations to train")
    parser.add_argument("--seeds", type=int, default=4, help="trainer seeds 1..N for each")
    args = parser.parse_args(argv)
    if args.seeds < 2 or args.configs < 2:
        parser.error("--seeds and --configs must be at least 2 (a spread needs two of each)")
    rows = digits.read_runs(args.results, args.study_seeds)
    configurations = returned_configurations(rows, args.configs)
    with tempfile.TemporaryDirectory(prefix="hpo-bench-noise-") as tmp:
        found = measure(configurations, args.seeds, Path(tmp), args.jobs)
    digits.write_offline("digits_noise", argv, args.results, found, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
