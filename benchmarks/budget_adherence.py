"""Budget adherence on the simulator: budgets from 1x to 8x one training, finish time against deadline.

    .venv/bin/python -m benchmarks.budget_adherence --seeds 30

For every budget ratio, worker count, timing condition and seed it runs this project's core through
``hpo_operator.simulate`` on MF-Hartmann-6 (good) and records the finish time against the deadline,
the share of the budget used, the share of slot time spent in trials, and the epochs cut off at the
deadline (trained by trials that were stopped there). Writes
``benchmarks/results/budget_adherence.json``, ``budget_adherence.png`` beside it and prints a Markdown table.

Timing conditions:

* ``exact``: every epoch takes the cost model's time, no start-up, ``train_time`` given.
* ``noisy``: every epoch's time is drawn from the cost model times a log-normal factor
  (sigma 0.3), every trial spends 5% of one training starting up, ``train_time`` given.
* ``measured``: as ``noisy``, but no ``train_time``: the first trial measures it (the default).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import random
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hpo_operator.config import BudgetSpec
from hpo_operator.simulate import simulate
from hpo_operator.study import Study, StudyError
from hpo_operator.trials import TrialPhase

from .contenders import study_config
from .functions import PROBLEMS, Problem
from .metrics import mean_ci, write_result

RESULTS = Path(__file__).parent / "results"
RATIOS = (1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)
CONDITIONS = ("exact", "noisy", "measured")
EPOCH_SIGMA = 0.3
START_SHARE = 0.05


def run_one(problem: Problem, ratio: float, workers: int, condition: str, seed: int) -> dict[str, Any]:
    config = study_config(problem, ratio, seed)
    if condition == "measured":
        config = dataclasses.replace(config, budget=BudgetSpec(time_ratio=ratio))
    rng = random.Random(f"epoch-times:{seed}")

    def epoch_seconds(params: dict[str, Any]) -> float:
        base = problem.epoch_seconds(params)
        return base if condition == "exact" else base * math.exp(rng.gauss(0.0, EPOCH_SIGMA))

    start = 0.0 if condition == "exact" else START_SHARE * problem.train_seconds()
    row: dict[str, Any] = {"ratio": ratio, "workers": workers, "condition": condition, "seed": seed}
    try:
        Study(config, workers).plan([])
    except StudyError as err:
        return {**row, "refused": str(err)}
    try:
        result = simulate(
            config, workers, lambda p, e: problem.value(p, e, seed), epoch_seconds, start_seconds=start
        )
    except StudyError as err:
        # The core raised while the study was running (a re-plan with measured epoch times):
        # every adapter fails the study at that point.
        return {**row, "refused": f"failed mid-run: {err}", "mid_run": True}
    assert result.deadline is not None
    cut = sum(len(t.reports) for t in result.trials if t.status is TrialPhase.STOPPED)
    return {
        **row,
        "deadline": result.deadline,
        "finished_at": result.finished_at,
        "overrun": result.finished_at - result.deadline,
        "budget_used": result.finished_at / result.deadline,
        "busy_fraction": result.busy_seconds / (workers * result.finished_at),
        "trials": len(result.trials),
        "stopped_at_deadline": sum(1 for t in result.trials if t.status is TrialPhase.STOPPED),
        "epochs_cut": cut,
        "epochs": sum(len(t.reports) for t in result.trials),
        "reason": result.finalize.reason,
        "succeeded": result.finalize.succeeded,
    }


def stats(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[float, int, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["ratio"], r["workers"], r["condition"]), []).append(r)
    out = []
    for (ratio, workers, condition), rs in sorted(groups.items()):
        ran = [r for r in rs if "refused" not in r]
        s: dict[str, Any] = {
            "ratio": ratio,
            "workers": workers,
            "condition": condition,
            "seeds": len(rs),
            "refused": len(rs) - len(ran),
            "failed_mid_run": sum(1 for r in rs if r.get("mid_run")),
        }
        if ran:
            used, used_half = mean_ci([r["budget_used"] for r in ran])
            busy, busy_half = mean_ci([r["busy_fraction"] for r in ran])
            s.update(
                overrun_max=max(r["overrun"] for r in ran),
                overrun_mean=statistics.fmean(r["overrun"] for r in ran),
                past_deadline=sum(1 for r in ran if r["overrun"] > 0),
                budget_used_mean=used,
                budget_used_ci95=used_half,
                budget_used_min=min(r["budget_used"] for r in ran),
                busy_fraction_mean=busy,
                busy_fraction_ci95=busy_half,
                epochs_cut_share=sum(r["epochs_cut"] for r in ran) / max(1, sum(r["epochs"] for r in ran)),
                trials_mean=statistics.fmean(r["trials"] for r in ran),
                failed=sum(1 for r in ran if not r["succeeded"]),
            )
        else:
            s["refusal"] = rs[0]["refused"]
        out.append(s)
    return out


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| ratio | workers | condition | runs | refused up front | failed mid-run | past deadline "
        "| overrun max (s) | budget used mean ± CI (min) | busy | epochs cut at deadline | trials |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in rows:
        if "budget_used_mean" not in s:
            lines.append(
                f"| {s['ratio']:g}x | {s['workers']} | {s['condition']} | 0 "
                f"| {s['refused'] - s['failed_mid_run']} | {s['failed_mid_run']} | | | | | | |"
            )
            continue
        lines.append(
            f"| {s['ratio']:g}x | {s['workers']} | {s['condition']} | {s['seeds'] - s['refused']} "
            f"| {s['refused'] - s['failed_mid_run']} | {s['failed_mid_run']} "
            f"| {s['past_deadline']} | {s['overrun_max']:.1f} "
            f"| {s['budget_used_mean']:.3f} ± {s['budget_used_ci95']:.3f} ({s['budget_used_min']:.3f}) "
            f"| {s['busy_fraction_mean']:.2f} | {100 * s['epochs_cut_share']:.1f}% | {s['trials_mean']:.0f} |"
        )
    return "\n".join(lines)


def plot(rows: Sequence[dict[str, Any]], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        return False
    conditions = sorted({r["condition"] for r in rows}, key=CONDITIONS.index)
    fig, axes = plt.subplots(
        1, len(conditions), figsize=(5 * len(conditions), 3.8), squeeze=False, sharey=True
    )
    for ax, condition in zip(axes[0], conditions, strict=True):
        for w in sorted({r["workers"] for r in rows}):
            pts = [
                (r["ratio"], r["finished_at"] / r["deadline"])
                for r in rows
                if r["condition"] == condition and r["workers"] == w and "refused" not in r
            ]
            jitter = random.Random(w)
            ax.scatter(
                [x * (1 + 0.03 * (jitter.random() - 0.5)) for x, _ in pts],
                [y for _, y in pts],
                s=8,
                alpha=0.5,
                label=f"{w} workers",
            )
        ax.axhline(1.0, color="red", linewidth=1, label="deadline")
        if any("refused" not in r and r["condition"] == condition for r in rows):
            ax.set_xscale("log", base=2)
        ax.set_xlabel("budget (x one training)")
        ax.set_title(condition)
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("finish time / deadline")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problem", default="hartmann6-good", choices=list(PROBLEMS))
    parser.add_argument("--ratios", nargs="+", type=float, default=list(RATIOS))
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2, 8])
    parser.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=list(CONDITIONS))
    parser.add_argument("--seeds", type=int, default=30)
    parser.add_argument("--out", type=Path, default=RESULTS / "budget_adherence.json")
    args = parser.parse_args(argv)

    started = time.monotonic()
    problem = PROBLEMS[args.problem]
    rows = [
        run_one(problem, ratio, w, condition, seed)
        for condition in args.conditions
        for w in args.workers
        for ratio in args.ratios
        for seed in range(args.seeds)
    ]
    summary = stats(rows)
    command = "python -m benchmarks.budget_adherence " + " ".join(sys.argv[1:] if argv is None else argv)
    write_result(
        args.out,
        {
            "command": command.strip(),
            "problem": args.problem,
            "seconds": round(time.monotonic() - started, 1),
            "stats": summary,
            "runs": rows,
        },
    )
    plot(rows, args.out.with_suffix(".png"))
    print(markdown_table(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
