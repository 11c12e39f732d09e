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

Reported: the best validation accuracy at the full resource (the selection metric, so optimistic
for both alike), trials run, and wall clock against the budget. Optuna's running trials finish past
the budget, so its best is also given among the trials completed by the deadline
(``best_accuracy_at_deadline``), as the synthetic benchmarks read every contender. Writes
``benchmarks/results/digits.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from hpo_operator.config import load_config

from .metrics import package_versions

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
        "trials": len(study.get("trials", [])),
        "elapsed": elapsed,
        "overrun": elapsed - budget,
    }


class _OptunaTrial:
    """One Optuna trial running as the trainer's process, its reports read from its report file."""

    def __init__(self, trial: Any, params: dict[str, Any], work: Path, tag: str, env: dict[str, str]) -> None:
        self.trial = trial
        self.report_file = work / f"optuna-{tag}-{trial.number}.jsonl"
        env = {
            **env,
            "HPO_HYPERPARAMETERS": json.dumps(params),
            "HPO_REPORT_FILE": str(self.report_file),
            "HPO_CHECKPOINT_DIR": str(work / f"ckpt-{tag}-{trial.number}"),
        }
        self.proc = subprocess.Popen(
            [sys.executable, *TRAINER],
            env=env,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.seen = 0
        self.last: dict[str, Any] | None = None

    def new_reports(self) -> list[dict[str, Any]]:
        lines = self.report_file.read_text().splitlines() if self.report_file.exists() else []
        fresh = [json.loads(line) for line in lines[self.seen :]]
        self.seen = len(lines)
        if fresh:
            self.last = fresh[-1]
        return fresh


def run_optuna(
    budget: float, seed: int, work: Path, workers: int, reduction_factor: int = 3
) -> dict[str, Any]:
    """Optuna SH+TPE over ask/tell with ``workers`` trainer processes at once; as
    ``study.optimize(timeout=budget, n_jobs=workers)``: no trial starts after the budget, running
    trials finish."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    config, _ = load_config(CONFIG)
    max_resource = int(config.max_resource)
    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=reduction_factor),
    )
    space = config.space
    study.enqueue_trial(space.initial())
    env = {**_env(), "HPO_METRIC": config.metric, "HPO_MAX_RESOURCE": str(max_resource)}
    started = time.monotonic()
    trials = 0
    running: list[_OptunaTrial] = []
    finished_at: dict[int, float] = {}  # trial number -> seconds into the study it completed
    while running or time.monotonic() - started < budget:
        while len(running) < workers and time.monotonic() - started < budget:
            trial = study.ask()
            params: dict[str, Any] = {}
            for p in space.params:
                x = trial.suggest_float(p.name, p.low, p.high, log=p.log)
                params[p.name] = p.grid_value(p.nearest_grid_index(x)) if p.quantized else x
            running.append(_OptunaTrial(trial, params, work, f"{seed}-{workers}", env))
            trials += 1
        for t in list(running):
            exited = t.proc.poll() is not None
            pruned = False
            for report in t.new_reports():
                t.trial.report(float(report["value"]), int(report["resource"]))
                if int(report["resource"]) < max_resource and t.trial.should_prune():
                    pruned = True
            if pruned:
                t.proc.send_signal(signal.SIGTERM)
                t.proc.wait()
                study.tell(t.trial, state=optuna.trial.TrialState.PRUNED)
            elif exited:
                if t.last is not None and int(t.last["resource"]) >= max_resource:
                    study.tell(t.trial, float(t.last["value"]))
                    finished_at[t.trial.number] = time.monotonic() - started
                else:
                    study.tell(t.trial, state=optuna.trial.TrialState.FAIL)
            else:
                continue
            running.remove(t)
        time.sleep(0.2)
    elapsed = time.monotonic() - started
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = max(complete, key=lambda t: t.value or 0.0) if complete else None
    # What a user stopping at the budget would have had: trials completed by then.
    in_time = [t for t in complete if finished_at.get(t.number, math.inf) <= budget]
    best_in_time = max(in_time, key=lambda t: t.value or 0.0) if in_time else None
    return {
        "contender": "optuna-sh-tpe",
        "seed": seed,
        "workers": workers,
        "reduction_factor": reduction_factor,
        "best_accuracy": None if best is None else best.value,
        "best_accuracy_at_deadline": None if best_in_time is None else best_in_time.value,
        "best": None if best is None else best.params,
        "trials": trials,
        "elapsed": elapsed,
        "overrun": elapsed - budget,
    }


RUNNERS = {"ours": run_ours, "optuna-sh-tpe": run_optuna}


def _mean(values: Sequence[float | None]) -> float | None:
    """The mean, a run without an answer counting as accuracy 0 (it named no configuration)."""
    return statistics.fmean(0.0 if v is None else v for v in values) if values else None


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
    parser.add_argument("--out", type=Path, default=RESULTS / "digits.json")
    args = parser.parse_args(argv)
    runners = {**RUNNERS, "optuna-sh-tpe": partial(run_optuna, reduction_factor=args.optuna_reduction_factor)}
    rows = []
    with tempfile.TemporaryDirectory(prefix="hpo-bench-digits-") as tmp:
        # Seed-major, contenders alternating: a change in the machine's load hits both alike.
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            for workers in args.workers:
                for name in args.contenders:
                    row = runners[name](args.budget, seed, Path(tmp), workers)
                    print(
                        json.dumps({k: v for k, v in row.items() if k != "best"}), file=sys.stderr, flush=True
                    )
                    rows.append(row)
    summary: dict[str, Any] = {}
    for workers in args.workers:
        for name in args.contenders:
            mine = [r for r in rows if r["contender"] == name and r["workers"] == workers]
            accs = [r["best_accuracy"] for r in mine if r["best_accuracy"] is not None]
            summary[f"{name} {workers}w"] = {
                "best_accuracy_mean": statistics.fmean(accs) if accs else None,
                "best_accuracy_each": accs,
                # ours ends inside its budget, so its answer is its answer at the deadline
                "best_accuracy_at_deadline_mean": _mean(
                    [r.get("best_accuracy_at_deadline", r["best_accuracy"]) for r in mine]
                ),
                "overrun_max": max(r["overrun"] for r in mine),
                "trials_mean": statistics.fmean(r["trials"] for r in mine),
            }
    command = "python -m benchmarks.digits " + " ".join(sys.argv[1:] if argv is None else argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "command": command.strip(),
                "versions": package_versions(),
                "budget": args.budget,
                "summary": summary,
                "runs": rows,
            },
            indent=1,
        )
        + "\n"
    )
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
