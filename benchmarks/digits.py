"""Real training, in real time on the CPU: `hpo run` against Optuna with the same trainer.

    .venv/bin/python -m benchmarks.digits --seeds 2 --budget 60

Both contenders run the reference trainer (``python -m hpo_trial.train --dataset digits --model
tiny``, scikit-learn's digits, epochs as the resource) over the search space of
``examples/demo/hpo_config.yaml`` with the same number of trials at once (``--workers``, CPU slots
of one thread each), under the same wall-clock budget:

* ``ours``: ``hpo run CONFIG --budget B --gpus 0 --cpu-slots W`` (the config's seed set per run);
  the answer is ``best.json``.
* ``optuna-sh-tpe``: Optuna's TPESampler and SuccessiveHalvingPruner (min_resource 1, reduction
  factor 3, Optuna's default, or ``--optuna-reduction-factor``) over ask/tell; each trial is the
  same command with the trial environment, its reports read from ``HPO_REPORT_FILE``, W processes
  at once; a pruned trial gets SIGTERM. As ``study.optimize(timeout=B, n_jobs=W)``, no trial starts
  after the budget and running trials finish. Its first trial is the defaults.

Reported: the best validation accuracy at the full resource (the selection metric, so optimistic for
both alike), trials run, and wall clock against the budget. Optuna's running trials finish past the
budget, so its best is also given among the trials completed by the deadline
(``best_accuracy_at_deadline``), as the synthetic benchmarks read every contender. Each run also
keeps every trial it started (``trial_log``: its configuration, its reports and how it ended), and
the summary counts the distinct configurations each trained to the full resource
(``trained_to_r_mean``). The configuration each study returns is then trained again with trainer
seeds 1..N (``--retrain-seeds``, 3 unless told; the studies train with seed 0), and its mean
accuracy at R (``retrained_accuracy``) is compared as well: on digits the objective at the scale
the samplers search is a fixed pattern of noise from the one seed's training, which the best
accuracy of a study selects on. Per number of workers, ``ours/optuna-sh-tpe`` compares the two seed by
seed: the ratio of their mean error rates at the deadline with a 95% paired-bootstrap interval, and
the smallest difference the seeds resolve (and the seeds that would resolve the difference seen);
``retrained spread`` puts the spread of the returned configurations' own accuracies beside the
spread between trainer seeds of one configuration. Writes ``benchmarks/results/digits.json``, or adds
the runs to the file ``--out`` names when it holds runs of the same budget (so seeds run in blocks
stay one file, its ``parts`` saying which command ran which seeds); ``--combine A.json B.json``
prints that summary over the runs of several files without running anything. ``--landscape`` runs
no study: it trains every grid point of a region that holds many of both contenders' best
configurations once, to R, and reports how high the objective reaches there and how much it moves
between neighbours.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import cache, partial
from pathlib import Path
from typing import Any

import yaml

from hpo_operator.config import StudyConfig, load_config

from .metrics import machine, package_versions, ratio_ci, write_result

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "examples" / "demo" / "hpo_config.yaml"
TRAINER = ["-m", "hpo_trial.train", "--dataset", "digits", "--model", "tiny"]
RESULTS = Path(__file__).parent / "results"


def _env(threads: int = 1) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = str(threads)
    env["CUDA_VISIBLE_DEVICES"] = ""  # both contenders train on the CPU, also on a machine with GPUs
    return env


@cache
def _demo_config() -> StudyConfig:
    """The demo config, read once per process."""
    return load_config(CONFIG)[0]


def _trial_env(params: dict[str, Any], report_file: Path, checkpoint_dir: Path) -> dict[str, str]:
    """The environment of one trial of the demo config, as the trial contract gives it."""
    config = _demo_config()
    return {
        **_env(),
        "HPO_METRIC": config.metric,
        "HPO_MAX_RESOURCE": str(int(config.max_resource)),
        "HPO_HYPERPARAMETERS": json.dumps(params),
        "HPO_REPORT_FILE": str(report_file),
        "HPO_CHECKPOINT_DIR": str(checkpoint_dir),
    }


def run_ours(budget: float, seed: int, work: Path, workers: int) -> dict[str, Any]:
    raw = yaml.safe_load(CONFIG.read_text())
    raw["seed"] = seed
    config = work / f"ours-{seed}.yaml"
    config.write_text(yaml.safe_dump(raw))
    out = work / f"ours-{seed}-{workers}"
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "hpo_operator", "run", str(config), "--budget", f"{budget:g}", "--gpus", "0",
         "--cpu-slots", str(workers), "--out", str(out), "--", sys.executable, *TRAINER],
        capture_output=True, text=True, env=_env(), cwd=REPO,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    best = json.loads((out / "best.json").read_text()) if (out / "best.json").exists() else {}
    study = json.loads((out / "study.json").read_text()) if (out / "study.json").exists() else {}
    return {
        "contender": "ours",
        "seed": seed,
        "workers": workers,
        "exit": done.returncode,
        "log_tail": None if done.returncode == 0 else (done.stdout + done.stderr)[-2000:],
        "best_accuracy": best.get("value"),
        "best": best,
        "returned": best.get("hyperparameters"),
        "trials": len(study.get("trials", [])),
        "trial_log": [
            _logged(t["params"], [(r["resource"], r["value"]) for r in t["reports"]], t["status"].lower())
            for t in study.get("trials", [])
        ],
        "elapsed": elapsed,
        "overrun": elapsed - budget,
    }


def _logged(params: dict[str, Any], reports: Sequence[tuple[float, float]], outcome: str) -> dict[str, Any]:
    """One trial as a result file keeps it: what was proposed, what it reported and how it ended, so
    that a result can be traced to the configurations each contender tried."""
    return {"params": params, "reports": [[r, v] for r, v in reports], "outcome": outcome}


class _OptunaTrial:
    """One Optuna trial running as the trainer's process, its reports read from its report file."""

    def __init__(self, trial: Any, params: dict[str, Any], work: Path, tag: str) -> None:
        self.trial = trial
        self.report_file = work / f"optuna-{tag}-{trial.number}.jsonl"
        env = _trial_env(params, self.report_file, work / f"ckpt-{tag}-{trial.number}")
        self.proc = subprocess.Popen(
            [sys.executable, *TRAINER],
            env=env,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.params = params
        self.reports: list[tuple[float, float]] = []
        self.seen = 0
        self.last: dict[str, Any] | None = None

    def new_reports(self) -> list[dict[str, Any]]:
        lines = self.report_file.read_text().splitlines() if self.report_file.exists() else []
        fresh = [json.loads(line) for line in lines[self.seen :]]
        self.seen = len(lines)
        if fresh:
            self.last = fresh[-1]
        self.reports += [(r["resource"], r["value"]) for r in fresh]
        return fresh

    def tell_reports(self, max_resource: int) -> bool:
        """Reports the trainer's new reports to the Optuna trial; True once one below R prunes it.
        As an objective function stops at the report that pruned it, the reports the trainer wrote
        past that one between two polls (a slow poll, a fast trainer) are not the trial's."""
        fresh = self.new_reports()
        kept = len(self.reports) - len(fresh)
        for report in fresh:
            kept += 1
            self.trial.report(float(report["value"]), int(report["resource"]))
            if int(report["resource"]) < max_resource and self.trial.should_prune():
                del self.reports[kept:]
                return True
        return False


def run_optuna(
    budget: float, seed: int, work: Path, workers: int, reduction_factor: int = 3
) -> dict[str, Any]:
    """Optuna SH+TPE over ask/tell with ``workers`` trainer processes at once; as
    ``study.optimize(timeout=budget, n_jobs=workers)``: no trial starts after the budget, running
    trials finish."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    config = _demo_config()
    max_resource = int(config.max_resource)
    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=reduction_factor),
    )
    space = config.space
    study.enqueue_trial(space.initial())
    started = time.monotonic()
    trials = 0
    running: list[_OptunaTrial] = []
    finished_at: dict[int, float] = {}  # trial number -> seconds into the study it completed
    log: dict[int, dict[str, Any]] = {}  # trial number -> the trial as the result file keeps it
    while running or time.monotonic() - started < budget:
        while len(running) < workers and time.monotonic() - started < budget:
            trial = study.ask()
            params: dict[str, Any] = {}
            for p in space.params:
                x = trial.suggest_float(p.name, p.low, p.high, log=p.log)
                params[p.name] = p.grid_value(p.nearest_grid_index(x)) if p.quantized else x
            running.append(_OptunaTrial(trial, params, work, f"{seed}-{workers}"))
            trials += 1
        for t in list(running):
            exited = t.proc.poll() is not None
            pruned = t.tell_reports(max_resource)
            if pruned:
                t.proc.send_signal(signal.SIGTERM)
                t.proc.wait()
                study.tell(t.trial, state=optuna.trial.TrialState.PRUNED)
                outcome = "pruned"
            elif exited:
                if t.last is not None and int(t.last["resource"]) >= max_resource:
                    study.tell(t.trial, float(t.last["value"]))
                    finished_at[t.trial.number] = time.monotonic() - started
                    outcome = "completed"
                else:
                    study.tell(t.trial, state=optuna.trial.TrialState.FAIL)
                    outcome = "failed"
            else:
                continue
            log[t.trial.number] = _logged(t.params, t.reports, outcome)
            running.remove(t)
        time.sleep(0.2)
    elapsed = time.monotonic() - started
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = max(complete, key=lambda t: t.value or 0.0) if complete else None
    # What a user stopping at the budget would have had: trials completed by then.
    in_time = [t for t in complete if finished_at.get(t.number, math.inf) <= budget]
    best_in_time = max(in_time, key=lambda t: t.value or 0.0) if in_time else None
    # The configuration a user stopping at the budget would take, as the trials ran it (grid values).
    returned = None if best_in_time is None else log[best_in_time.number]["params"]
    return {
        "contender": "optuna-sh-tpe",
        "seed": seed,
        "workers": workers,
        "reduction_factor": reduction_factor,
        "best_accuracy": None if best is None else best.value,
        "best_accuracy_at_deadline": None if best_in_time is None else best_in_time.value,
        "best": None if best is None else best.params,
        "returned": returned,
        "trials": trials,
        "trial_log": [log[n] for n in sorted(log)],
        "elapsed": elapsed,
        "overrun": elapsed - budget,
    }


RUNNERS = {"ours": run_ours, "optuna-sh-tpe": run_optuna}

# Half of the best configurations of both contenders' digits studies (results/digits*.json) lie
# here: batch 16 and 32, learning rates 0.04-0.08. The landscape trains every grid point once, to R.
LANDSCAPE_BATCHES = (16, 32)
LANDSCAPE_RATES = tuple(round(0.001 * k, 3) for k in range(40, 81))


def train_reports(params: dict[str, Any], work: Path, tag: str, seed: int = 0) -> list[dict[str, Any]]:
    """One full training with ``params`` (as a trial runs it, with the trainer's ``--seed``); its
    reports as the trial contract has them (``extra`` holds the trainer's other numbers)."""
    report = work / f"landscape-{tag}.jsonl"
    env = _trial_env(params, report, work / f"ckpt-landscape-{tag}")
    command = [sys.executable, *TRAINER, "--seed", str(seed)]
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the trainer failed with {params}: {(done.stdout + done.stderr)[-500:]}")
    return [json.loads(line) for line in report.read_text().splitlines()]


def train_once(params: dict[str, Any], work: Path, tag: str, seed: int = 0) -> dict[int, float]:
    """One full training with ``params``; its value at each resource."""
    return {int(r["resource"]): float(r["value"]) for r in train_reports(params, work, tag, seed)}


def landscape(
    work: Path, jobs: int, train: Callable[[dict[str, Any], Path, str], dict[int, float]] = train_once
) -> dict[str, Any]:
    """Every grid point of the region that holds many of the best configurations, trained once to R.

    The trainer is deterministic for a configuration (its seed is fixed), so this is the objective
    itself there: how high it reaches, and how much it moves between neighbouring learning rates."""
    from concurrent.futures import ThreadPoolExecutor

    config = _demo_config()
    r_max = int(config.max_resource)
    names = [p.name for p in config.space.params]
    batch = next(n for n in names if n.endswith("batch_size"))
    rate = next(n for n in names if n.endswith("learning_rate"))
    grid = [{batch: b, rate: lr} for b in LANDSCAPE_BATCHES for lr in LANDSCAPE_RATES]
    with ThreadPoolExecutor(jobs) as pool:
        values = list(pool.map(lambda ip: train(ip[1], work, str(ip[0])), enumerate(grid)))
    points = [{"params": p, "values": v} for p, v in zip(grid, values, strict=True)]
    summary: dict[str, Any] = {}
    for b in LANDSCAPE_BATCHES:
        at_r = [pt["values"][r_max] for pt in points if pt["params"][batch] == b]
        steps = [abs(x - y) for x, y in itertools.pairwise(at_r)]
        summary[f"batch {b}"] = {
            "accuracy_mean": statistics.fmean(at_r),
            "accuracy_min": min(at_r),
            "accuracy_max": max(at_r),
            "counts": {f"{a:.4f}": at_r.count(a) for a in sorted(set(at_r), reverse=True)},
            # between learning rates 0.001 apart: how rugged the objective is at the grid's scale
            "neighbour_step_mean": statistics.fmean(steps),
        }
    return {"resource": r_max, "summary": summary, "points": points}


def retrain(
    row: dict[str, Any],
    seeds: int,
    work: Path,
    jobs: int,
    train: Callable[..., dict[int, float]] = train_once,
) -> dict[str, Any]:
    """The row with its returned configuration trained again to R with trainer seeds 1..``seeds``
    (the studies train with seed 0): ``retrained_accuracy`` is their mean, the configuration's
    accuracy without the luck of the one training that selected it (the validation split is the
    same for every seed). None when the run returned no configuration; the row as it is for 0 seeds."""
    from concurrent.futures import ThreadPoolExecutor

    if seeds < 1:
        return row
    params = row.get("returned")
    if not params:
        return {**row, "retrained_accuracy": None, "retrained_each": []}
    r_max = int(_demo_config().max_resource)
    tag = f"{row['contender']}-{row['seed']}-{row['workers']}"
    with ThreadPoolExecutor(jobs) as pool:
        values = list(
            pool.map(lambda k: train(params, work, f"{tag}-{k}", seed=k)[r_max], range(1, seeds + 1))
        )
    return {**row, "retrained_accuracy": statistics.fmean(values), "retrained_each": values}


def _answer(row: dict[str, Any]) -> float:
    """A run's best accuracy at its deadline; a run without an answer counts as accuracy 0 (it named
    no configuration)."""
    value = row.get("best_accuracy_at_deadline", row["best_accuracy"])
    return 0.0 if value is None else float(value)


def _retrained(row: dict[str, Any]) -> float:
    """A run's returned configuration's accuracy trained again; 0 without one (it named none)."""
    value = row.get("retrained_accuracy")
    return 0.0 if value is None else float(value)


def compare(
    rows: Sequence[dict[str, Any]], workers: int, answer: Callable[[dict[str, Any]], float] = _answer
) -> dict[str, Any] | None:
    """Ours against Optuna on the seeds both ran at ``workers``: the ratio of mean error rates
    (1 - best accuracy at the deadline; below 1, ours is better) with its 95% paired-bootstrap
    interval, the seeds each was better on, and the smallest mean difference those seeds resolve."""
    by_seed: dict[str, dict[int, float]] = {"ours": {}, "optuna-sh-tpe": {}}
    for row in rows:
        if row["workers"] == workers and row["contender"] in by_seed:
            by_seed[row["contender"]][int(row["seed"])] = 1.0 - answer(row)
    seeds = sorted(set(by_seed["ours"]) & set(by_seed["optuna-sh-tpe"]))
    if not seeds:
        return None
    ours = [by_seed["ours"][s] for s in seeds]
    theirs = [by_seed["optuna-sh-tpe"][s] for s in seeds]
    ratio, low, high = ratio_ci(ours, theirs)
    differences = [a - b for a, b in zip(ours, theirs, strict=True)]
    # Two standard errors of the mean paired difference: a smaller true difference than this is
    # as likely as not to end with an interval that includes "no difference".
    sd = statistics.stdev(differences) if len(seeds) > 1 else None
    resolves = 2 * sd / math.sqrt(len(seeds)) if sd is not None else None
    mean_difference = statistics.fmean(differences)
    # How many seeds would resolve the mean difference seen, at the spread seen (None: no difference).
    needed = None
    if sd and abs(mean_difference) > 1e-12:
        needed = math.ceil((2 * sd / abs(mean_difference)) ** 2)
    return {
        "seeds": seeds,
        "error_rate_ours": statistics.fmean(ours),
        "error_rate_optuna": statistics.fmean(theirs),
        "error_rate_ratio": ratio,
        "error_rate_ratio_ci95": [low, high],
        "ours_better": sum(d < 0 for d in differences),
        "ours_worse": sum(d > 0 for d in differences),
        "equal": sum(d == 0 for d in differences),
        "resolvable_difference": resolves,
        "seeds_to_resolve": needed,
    }


def spread(groups: Sequence[Sequence[float]]) -> dict[str, Any] | None:
    """How far apart groups of repeated measurements are against the noise within them: the pooled
    standard deviation within a group, and that of the groups' own means (the spread of their
    sample means less the part the noise within explains; 0 when the noise explains all of it).
    Groups of fewer than two values are left out; None with fewer than two groups left."""
    kept = [list(g) for g in groups if len(g) > 1]
    if len(kept) < 2:
        return None
    within = statistics.fmean(statistics.variance(g) for g in kept)
    k = statistics.fmean(len(g) for g in kept)
    between = statistics.variance(statistics.fmean(g) for g in kept) - within / k
    return {"groups": len(kept), "within_sd": math.sqrt(within), "between_sd": math.sqrt(max(between, 0.0))}


def retrained_spread(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """How much the returned configurations differ from one another once trained again, against the
    noise of one training: the standard deviation between trainer seeds of one configuration
    (pooled), and that of the configurations' own mean accuracies (``spread``). When the second is
    a fraction of the first, no sampler's answer can be told from another's in a few seeds."""
    found = spread([r.get("retrained_each") or [] for r in rows])
    if found is None:
        return None
    return {
        "configurations": found["groups"],
        "trainer_seed_sd": found["within_sd"],
        "returned_configuration_sd": found["between_sd"],
    }


def _reached_r(trial: dict[str, Any]) -> bool:
    """Whether a logged trial reported at the full resource."""
    return any(r >= _demo_config().max_resource for r, _ in trial["reports"])


def trained_to_r(row: dict[str, Any]) -> int:
    """How many distinct configurations a run trained to the full resource (from its trial log)."""
    return len({_key(t["params"]) for t in row["trial_log"] if _reached_r(t)})


def _key(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True)


def by_value(rows: Sequence[dict[str, Any]], param: str) -> dict[str, Any]:
    """Per contender and workers, per value of ``param`` (a parameter with few values, such as the
    batch size): trials started with it and distinct configurations trained to R, summed over runs."""
    found: dict[str, dict[str, dict[str, int]]] = {}
    for row in rows:
        if "trial_log" not in row:
            continue
        counts = found.setdefault(f"{row['contender']} {row['workers']}w", {})
        at_r: set[str] = set()
        for t in row["trial_log"]:
            value = counts.setdefault(str(t["params"][param]), {"started": 0, "trained_to_r": 0})
            value["started"] += 1
            key = _key(t["params"])
            if key not in at_r and _reached_r(t):
                at_r.add(key)
                value["trained_to_r"] += 1
    return {name: dict(sorted(c.items(), key=lambda kv: float(kv[0]))) for name, c in sorted(found.items())}


def summarize_rows(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per contender and workers: accuracies, overrun and trials; per workers: the comparison."""
    summary: dict[str, Any] = {}
    for workers in sorted({int(r["workers"]) for r in rows}):
        for name in sorted({str(r["contender"]) for r in rows}, reverse=True):
            mine = [r for r in rows if r["contender"] == name and r["workers"] == workers]
            if not mine:
                continue
            accs = [r["best_accuracy"] for r in mine if r["best_accuracy"] is not None]
            summary[f"{name} {workers}w"] = {
                "best_accuracy_mean": statistics.fmean(accs) if accs else None,
                "best_accuracy_each": accs,
                # ours ends inside its budget, so its answer is its answer at the deadline
                "best_accuracy_at_deadline_mean": statistics.fmean(_answer(r) for r in mine),
                "overrun_max": max(r["overrun"] for r in mine),
                "trials_mean": statistics.fmean(r["trials"] for r in mine),
            }
            if all("retrained_accuracy" in r for r in mine):
                summary[f"{name} {workers}w"]["retrained_accuracy_mean"] = statistics.fmean(
                    _retrained(r) for r in mine
                )
            if all("trial_log" in r for r in mine):
                summary[f"{name} {workers}w"]["trained_to_r_mean"] = statistics.fmean(
                    trained_to_r(r) for r in mine
                )
        compared = compare(rows, workers)
        if compared is not None:
            summary[f"ours/optuna-sh-tpe {workers}w"] = compared
        at_workers = [r for r in rows if r["workers"] == workers]
        if all("retrained_accuracy" in r for r in at_workers):
            again = compare(at_workers, workers, answer=_retrained)
            if again is not None:
                summary[f"ours/optuna-sh-tpe {workers}w retrained"] = again
            apart = retrained_spread(at_workers)
            if apart is not None:
                summary[f"retrained spread {workers}w"] = apart
    return summary


def joined(documents: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One result document from several of one cell (the same budget; seeds run apart): every run,
    the summary over all of them, and each part's command, package versions and machine (one
    document alone stays as it is, with its summary).

    A (contender, seed, workers) run present twice is an error, as averaging over it would count
    that seed twice. ``main`` joins a new run to the file at ``--out`` this way, so a cell run in
    blocks of seeds stays one file."""
    if len(documents) == 1 and "parts" not in documents[0]:  # one run: the file as it ran
        only = documents[0]
        return {**{k: v for k, v in only.items() if k != "runs"}, "summary": summarize_rows(only["runs"]),
                "runs": only["runs"]}  # fmt: skip
    budgets = {d["budget"] for d in documents}
    if len(budgets) > 1:
        raise SystemExit(f"the runs have different budgets ({sorted(budgets)}); one file holds one budget")
    parts: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    seen: set[tuple[str, int, int]] = set()
    for document in documents:
        for row in document["runs"]:
            key = (row["contender"], int(row["seed"]), int(row["workers"]))
            if key in seen:
                raise SystemExit(f"{key[0]} seed {key[1]} at {key[2]} workers is there twice")
            seen.add(key)
            rows.append(row)
        parts += document.get("parts") or [
            {k: document[k] for k in ("command", "versions", "machine") if k in document}
            | {"seeds": sorted({int(r["seed"]) for r in document["runs"]})}
        ]
    return {"budget": budgets.pop(), "parts": parts, "summary": summarize_rows(rows), "runs": rows}


def combine(paths: Sequence[Path], seeds: tuple[int, int] | None = None) -> dict[str, Any]:
    """The summary over the runs of several result files (e.g. seeds 0-9 and 10-19, run apart), or
    over those of the study seeds ``seeds`` (both ends included).

        Files must share the budget; a (contender, seed, workers) run present twice is an error, as
        averaging over it would count that seed twice."""
    budgets = set()
    rows: list[dict[str, Any]] = []
    seen: set[tuple[str, int, int]] = set()
    for path in paths:
        data = json.loads(path.read_text())
        budgets.add(data["budget"])
        for row in data["runs"]:
            key = (row["contender"], int(row["seed"]), int(row["workers"]))
            if seeds is not None and not seeds[0] <= key[1] <= seeds[1]:
                continue
            if key in seen:
                raise SystemExit(
                    f"{path}: {key[0]} seed {key[1]} at {key[2]} workers is also in an earlier file"
                )
            seen.add(key)
            rows.append(row)
    if len(budgets) > 1:
        raise SystemExit(f"the files have different budgets ({sorted(budgets)}); combine runs of one budget")
    return {"files": [str(p) for p in paths], "budget": budgets.pop() if budgets else None,
            "summary": summarize_rows(rows)}  # fmt: skip


def seed_range(text: str) -> tuple[int, int]:
    """``30-59`` -> (30, 59), both included."""
    first, _, last = text.partition("-")
    try:
        return int(first), int(last or first)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not FIRST-LAST (e.g. 30-59)") from None


def offline_parser(doc: str, results_help: str, out_name: str) -> argparse.ArgumentParser:
    """The command line every offline tool shares: result files in, trainings at once, file out."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("results", type=Path, nargs="+", help=results_help)
    parser.add_argument("--jobs", type=int, default=2, help="trainings at once")
    parser.add_argument(
        "--study-seeds", type=seed_range, metavar="FIRST-LAST", help="only the studies of these seeds"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / out_name)
    return parser


def read_runs(paths: Sequence[Path], seeds: tuple[int, int] | None = None) -> list[dict[str, Any]]:
    """Every run of the given result files (of the study seeds ``seeds``, both ends included), in
    file order."""
    rows = [row for path in paths for row in json.loads(path.read_text())["runs"]]
    return [r for r in rows if seeds is None or seeds[0] <= int(r["seed"]) <= seeds[1]]


def write_offline(
    module: str, argv: Sequence[str] | None, paths: Sequence[Path], found: dict[str, Any], out: Path
) -> None:
    """Writes what an offline tool found from ``paths`` (with its command, the package versions and
    this machine, which ran its trainings) to ``out``, and prints its summary."""
    command = f"python -m benchmarks.{module} " + " ".join(sys.argv[1:] if argv is None else argv)
    document = {
        "command": command.strip(),
        "versions": package_versions(),
        "machine": machine(),
        "files": [str(p) for p in paths],
        **found,
    }
    write_result(out, document)
    print(json.dumps(found["summary"], indent=1))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--budget", type=float, default=60.0, help="seconds per study")
    parser.add_argument("--workers", type=int, nargs="+", default=[1], help="trials at once (CPU slots)")
    parser.add_argument("--first-seed", type=int, default=0, help="the seeds run: first-seed onwards")
    parser.add_argument(
        "--contenders", nargs="+", choices=sorted(RUNNERS), default=sorted(RUNNERS, reverse=True)
    )
    parser.add_argument(
        "--optuna-reduction-factor",
        type=int,
        default=3,
        help="Optuna's SuccessiveHalvingPruner reduction factor (3: its default; the demo config's is 2)",
    )
    parser.add_argument(
        "--retrain-seeds",
        type=int,
        default=3,
        help="after each study, train its returned configuration again with trainer seeds 1..N "
        "(0: not at all); the summary compares these accuracies too",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "digits.json")
    parser.add_argument(
        "--combine",
        type=Path,
        nargs="+",
        metavar="RESULTS",
        help="run nothing: print the summary over the runs of these result files",
    )
    parser.add_argument(
        "--study-seeds",
        type=seed_range,
        metavar="FIRST-LAST",
        help="with --combine: only the runs of these seeds (e.g. 0-59)",
    )
    parser.add_argument(
        "--by",
        metavar="PARAM",
        help="with --combine: per value of this parameter, the trials each contender started with it "
        "and trained to R (from the runs' trial logs)",
    )
    parser.add_argument(
        "--landscape",
        action="store_true",
        help="run no study: train every grid point of a region of good configurations once "
        "(batch 16 and 32, learning rates 0.040-0.080), --workers[0] at once",
    )
    args = parser.parse_args(argv)
    if args.by and not args.combine:
        parser.error("--by reads result files: give them with --combine")
    if args.study_seeds and not args.combine:
        parser.error("--study-seeds reads result files: give them with --combine")
    if args.landscape:
        with tempfile.TemporaryDirectory(prefix="hpo-bench-digits-") as tmp:
            found = landscape(Path(tmp), args.workers[0])
        command = "python -m benchmarks.digits " + " ".join(sys.argv[1:] if argv is None else argv)
        found = {"command": command.strip(), "versions": package_versions(), "machine": machine(), **found}
        write_result(args.out, found)
        print(json.dumps(found["summary"], indent=1))
        return 0
    if args.combine:
        combined = combine(args.combine, args.study_seeds)
        if args.by:
            combined["by_value"] = by_value(read_runs(args.combine, args.study_seeds), args.by)
        print(json.dumps(combined, indent=1))
        return 0
    if args.out.exists():  # the runs will join this file: refuse now, not after hours of training
        earlier = json.loads(args.out.read_text())
        if earlier.get("budget") != args.budget or not isinstance(earlier.get("runs"), list):
            parser.error(f"{args.out} holds no runs of budget {args.budget:g}: name another --out")
        taken = {(r["contender"], int(r["seed"]), int(r["workers"])) for r in earlier["runs"]}
        seeds = range(args.first_seed, args.first_seed + args.seeds)
        if twice := sorted(taken.intersection(itertools.product(args.contenders, seeds, args.workers))):
            name, seed, workers = twice[0]
            parser.error(f"{args.out} already holds {name} seed {seed} at {workers} workers")
    runners = {**RUNNERS, "optuna-sh-tpe": partial(run_optuna, reduction_factor=args.optuna_reduction_factor)}
    rows = []
    retrain_jobs = min(args.retrain_seeds, os.cpu_count() or 1)
    with tempfile.TemporaryDirectory(prefix="hpo-bench-digits-") as tmp:
        # Seed-major, contenders alternating: a change in the machine's load hits both alike.
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            for workers in args.workers:
                for name in args.contenders:
                    row = runners[name](args.budget, seed, Path(tmp), workers)
                    # After the study, so that the trainings take none of its budget.
                    row = retrain(row, args.retrain_seeds, Path(tmp), retrain_jobs)
                    print(
                        json.dumps({k: v for k, v in row.items() if k != "best"}), file=sys.stderr, flush=True
                    )
                    rows.append(row)
    command = "python -m benchmarks.digits " + " ".join(sys.argv[1:] if argv is None else argv)
    document = {
        "command": command.strip(),
        "versions": package_versions(),
        "machine": machine(),
        "budget": args.budget,
        "runs": rows,
    }
    # A block of seeds joins the cell's file: one file per cell, however many blocks it ran in.
    earlier = [json.loads(args.out.read_text())] if args.out.exists() else []
    document = joined([*earlier, document])
    write_result(args.out, document)
    print(json.dumps(document["summary"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
