"""Real training, in real time on the CPU: `hpo run` against Optuna with the same trainer.

    .venv/bin/python -m benchmarks.digits --seeds 2 --budget 60

Both contenders run the reference trainer (``python -m hpo_trial.train --dataset digits --model
tiny``, scikit-learn's digits, epochs as the resource) over the search space of
``examples/demo/hpo_config.yaml`` with one trial at a time, under the same wall-clock budget:

* ``ours``: ``hpo run CONFIG --budget B --gpus 0 --cpu-slots 1`` (the config's seed set per run);
  the answer is ``best.json``.
* ``optuna-sh-tpe``: Optuna's TPESampler and SuccessiveHalvingPruner (min_resource 1, reduction
  factor 3) over ask/tell; each trial is the same command with the trial environment, its reports
  read from ``HPO_REPORT_FILE``; a pruned trial gets SIGTERM. As ``study.optimize(timeout=B)``, no
  trial starts after the budget and a running trial finishes. Its first trial is the defaults.

Reported: the best validation accuracy at the full resource (the selection metric, so optimistic
for both alike), trials run, and wall clock against the budget. Writes
``benchmarks/results/digits.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from hpo_operator.config import load_config

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "examples" / "demo" / "hpo_config.yaml"
TRAINER = ["-m", "hpo_trial.train", "--dataset", "digits", "--model", "tiny"]
RESULTS = Path(__file__).parent / "results"


def _env(threads: int = 1) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = str(threads)
    return env


def run_ours(budget: float, seed: int, work: Path) -> dict[str, Any]:
    raw = yaml.safe_load(CONFIG.read_text())
    raw["seed"] = seed
    config = work / f"ours-{seed}.yaml"
    config.write_text(yaml.safe_dump(raw))
    out = work / f"ours-{seed}"
    hpo = Path(sys.executable).parent / "hpo"
    started = time.monotonic()
    done = subprocess.run(
        [str(hpo), "run", str(config), "--budget", f"{budget:g}", "--gpus", "0", "--cpu-slots", "1",
         "--out", str(out), "--", sys.executable, *TRAINER],
        capture_output=True, text=True, env=_env(), cwd=REPO,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    best = json.loads((out / "best.json").read_text()) if (out / "best.json").exists() else {}
    study = json.loads((out / "study.json").read_text()) if (out / "study.json").exists() else {}
    return {
        "contender": "ours",
        "seed": seed,
        "exit": done.returncode,
        "best_accuracy": best.get("value"),
        "best": best,
        "trials": len(study.get("trials", [])),
        "elapsed": elapsed,
        "overrun": elapsed - budget,
    }


def run_optuna(budget: float, seed: int, work: Path) -> dict[str, Any]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    config, _ = load_config(CONFIG)
    max_resource = int(config.max_resource)
    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3),
    )
    space = config.space
    study.enqueue_trial(space.initial())
    started = time.monotonic()
    trials = 0
    while time.monotonic() - started < budget:
        trial = study.ask()
        params: dict[str, Any] = {}
        for p in space.params:
            x = trial.suggest_float(p.name, p.low, p.high, log=p.log)
            params[p.name] = p.grid_value(p.nearest_grid_index(x)) if p.quantized else x
        report_file = work / f"optuna-{seed}-{trial.number}.jsonl"
        env = _env()
        env.update(
            HPO_HYPERPARAMETERS=json.dumps(params),
            HPO_REPORT_FILE=str(report_file),
            HPO_METRIC=config.metric,
            HPO_MAX_RESOURCE=str(max_resource),
            HPO_CHECKPOINT_DIR=str(work / f"ckpt-{seed}-{trial.number}"),
        )
        proc = subprocess.Popen(
            [sys.executable, *TRAINER],
            env=env,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        trials += 1
        seen, last, pruned = 0, None, False
        while True:
            exited = proc.poll() is not None
            lines = report_file.read_text().splitlines() if report_file.exists() else []
            for line in lines[seen:]:
                report = json.loads(line)
                last = report
                trial.report(float(report["value"]), int(report["resource"]))
                if int(report["resource"]) < max_resource and trial.should_prune():
                    pruned = True
            seen = len(lines)
            if pruned:
                proc.send_signal(signal.SIGTERM)
                proc.wait()
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                break
            if exited:
                if last is not None and int(last["resource"]) >= max_resource:
                    study.tell(trial, float(last["value"]))
                else:
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                break
            time.sleep(0.2)
    elapsed = time.monotonic() - started
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = max(complete, key=lambda t: t.value or 0.0) if complete else None
    return {
        "contender": "optuna-sh-tpe",
        "seed": seed,
        "best_accuracy": None if best is None else best.value,
        "best": None if best is None else best.params,
        "trials": trials,
        "elapsed": elapsed,
        "overrun": elapsed - budget,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--budget", type=float, default=60.0, help="seconds per study")
    parser.add_argument("--out", type=Path, default=RESULTS / "digits.json")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="hpo-bench-digits-") as tmp:
        for seed in range(args.seeds):
            for run in (run_ours, run_optuna):
                row = run(args.budget, seed, Path(tmp))
                print(json.dumps({k: v for k, v in row.items() if k != "best"}), file=sys.stderr, flush=True)
                rows.append(row)
    summary = {}
    for name in ("ours", "optuna-sh-tpe"):
        accs = [r["best_accuracy"] for r in rows if r["contender"] == name and r["best_accuracy"] is not None]
        summary[name] = {
            "best_accuracy_mean": statistics.fmean(accs) if accs else None,
            "best_accuracy_each": accs,
            "overrun_max": max(r["overrun"] for r in rows if r["contender"] == name),
            "trials_mean": statistics.fmean(r["trials"] for r in rows if r["contender"] == name),
        }
    command = "python -m benchmarks.digits " + " ".join(sys.argv[1:] if argv is None else argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"command": command.strip(), "budget": args.budget, "summary": summary, "runs": rows}, indent=1
        )
        + "\n"
    )
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
