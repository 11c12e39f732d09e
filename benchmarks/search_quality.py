"""Search quality on a virtual clock: every contender, same budget, same parallelism, many seeds.

    .venv/bin/python -m benchmarks.search_quality --workers 2 8 --seeds 10

writes ``benchmarks/results/search_quality.json`` (per-run summaries and per-group statistics), one
anytime-regret plot per problem (``search_quality_<problem>.png``) and prints a Markdown table.

``--pairs A/B ...`` adds, per problem and worker count, the ratio of A's mean final regret to B's over
the same seeds (paired bootstrap interval), as for the promote variant against the stop variant:

    .venv/bin/python -m benchmarks.search_quality --contenders ours ours-promote ours:random \
        ours-promote:random optuna-sh-tpe ray-hyperband \
        --pairs ours-promote/ours ours-promote:random/ours:random --out benchmarks/results/promote.json

``--start-seconds S``: every run of a trial (a new trial or a resumed one) pays S seconds of start-up
(``contenders.START_SECONDS``); one training, and so the budget, grows by S.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from . import contenders
from .contenders import DEFAULT_CONTENDERS, Unavailable, budget_of, contender
from .functions import PROBLEMS, Problem
from .metrics import RunSummary, mean_ci, package_versions, ratio_ci, summarize, write_result

RESULTS = Path(__file__).parent / "results"
CURVE_POINTS = 60
REFERENCE = "ours"


def curve_times(problem: Problem, ratio: float) -> list[float]:
    deadline = budget_of(problem, ratio)
    return [deadline * (i + 1) / CURVE_POINTS for i in range(CURVE_POINTS)]


def _one_run(task: tuple[str, int, str, int, float, float]) -> tuple[RunSummary, int] | str:
    """One contender on one problem, worker count and seed: its summary and the runs it started, or
    why the contender cannot run here. A top-level function so that worker processes can take it."""
    problem_name, w, name, seed, ratio, start_seconds = task
    contenders.START_SECONDS = start_seconds
    problem = PROBLEMS[problem_name]
    try:
        trace = contender(name).run(problem, w, ratio, seed)
    except Unavailable as err:
        return str(err)
    return summarize(trace, problem, curve_times(problem, ratio)), sum(t.runs for t in trace.trials)


BLAS_THREADS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


@contextlib.contextmanager
def _one_blas_thread() -> Iterator[None]:
    """Worker processes started inside get one BLAS thread each (unless the caller chose a number):
    N processes with a thread per core each ran the gp sampler several times slower on 2 cores."""
    before = {name: os.environ.get(name) for name in BLAS_THREADS}
    for name in BLAS_THREADS:
        os.environ.setdefault(name, "1")
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_all(
    problems: Sequence[str],
    workers: Sequence[int],
    seeds: Sequence[int],
    names: Sequence[str],
    ratio: float,
    log: Any = sys.stderr,
    starts: dict[tuple[str, int, str, int], int] | None = None,
    jobs: int = 1,
) -> tuple[list[RunSummary], dict[str, str]]:
    """Every contender on every problem, worker count and seed, in ``jobs`` processes (each run is
    seeded and on a virtual clock, so the results do not depend on how many). ``starts``, when given,
    receives the runs each study started, new trials and resumptions together, by (problem, workers,
    name, seed)."""
    tasks = [
        (p, w, name, seed, ratio, contenders.START_SECONDS)
        for p in problems
        for w in workers
        for name in names
        for seed in seeds
    ]
    started = time.monotonic()
    if jobs > 1:
        with _one_blas_thread(), multiprocessing.get_context("spawn").Pool(jobs) as pool:
            results = pool.map(_one_run, tasks, chunksize=1)
    else:
        results = [_one_run(task) for task in tasks]
    runs: list[RunSummary] = []
    skipped: dict[str, str] = {}
    for (problem_name, w, name, seed, _, _), result in zip(tasks, results, strict=True):
        if isinstance(result, str):
            if name not in skipped:
                print(f"skipping {name}: {result}", file=log)
            skipped[name] = result
            continue
        summary, runs_started = result
        runs.append(summary)
        if starts is not None:
            starts[(problem_name, w, name, seed)] = runs_started
    print(f"{len(tasks)} runs in {time.monotonic() - started:.1f}s ({jobs} processes)", file=log, flush=True)
    return runs, skipped


def group_stats(
    runs: Sequence[RunSummary],
    reference: str = REFERENCE,
    starts: dict[tuple[str, int, str, int], int] | None = None,
) -> list[dict[str, Any]]:
    """Per (problem, workers, contender): regret, time to target, busy fraction, overrun, and the
    ratio of the reference's mean final regret to this contender's over the same seeds."""
    groups: dict[tuple[str, int, str], list[RunSummary]] = {}
    for r in runs:
        groups.setdefault((r.problem, r.workers, r.contender), []).append(r)
    out = []
    for (problem, workers, name), rs in groups.items():
        rs = sorted(rs, key=lambda r: r.seed)
        regrets = [r.final_regret for r in rs]
        mean, half = mean_ci(regrets)
        reached = [r.time_to_target for r in rs if r.time_to_target is not None]
        busy_mean, busy_half = mean_ci([r.busy_fraction for r in rs])
        over_mean, over_half = mean_ci([r.overrun for r in rs])
        row: dict[str, Any] = {
            "problem": problem,
            "workers": workers,
            "contender": name,
            "seeds": len(rs),
            "final_regret_mean": mean,
            "final_regret_ci95": half,
            "final_regret_median": statistics.median(regrets),
            "target_regret": PROBLEMS[problem].target_regret,
            "reached_target": len(reached),
            "time_to_target_median": statistics.median(reached) if reached else None,
            "busy_fraction_mean": busy_mean,
            "busy_fraction_ci95": busy_half,
            "overrun_mean": over_mean,
            "overrun_ci95": over_half,
            "overrun_max": max(r.overrun for r in rs),
            "trials_mean": statistics.fmean(r.trials for r in rs),
            "epochs_mean": statistics.fmean(r.epochs for r in rs),
        }
        if starts is not None:
            row["runs_mean"] = statistics.fmean(starts[(problem, workers, name, r.seed)] for r in rs)
        ref = {r.seed: r.final_regret for r in groups.get((problem, workers, reference), [])}
        common = [r for r in rs if r.seed in ref]
        if name != reference and common:
            ratio, low, high = ratio_ci([ref[r.seed] for r in common], [r.final_regret for r in common])
            row.update(ratio_ours_to_this=ratio, ratio_ci95=[low, high])
        out.append(row)
    return out


def pair_stats(runs: Sequence[RunSummary], pairs: Sequence[str]) -> list[dict[str, Any]]:
    """For each ``A/B`` in ``pairs`` and each (problem, workers) both ran: mean final regret of A over
    B's on the seeds both ran, with its 95% paired-bootstrap interval (below 1: A is better)."""
    by_key = {(r.problem, r.workers, r.contender, r.seed): r.final_regret for r in runs}
    out = []
    for pair in pairs:
        a, b = pair.split("/", 1)
        for problem, workers in sorted({(r.problem, r.workers) for r in runs}):
            seeds = sorted(
                s for (p, w, n, s) in by_key if (p, w, n) == (problem, workers, a) and (p, w, b, s) in by_key
            )
            if not seeds:
                continue
            ratio, low, high = ratio_ci(
                [by_key[(problem, workers, a, s)] for s in seeds],
                [by_key[(problem, workers, b, s)] for s in seeds],
            )
            out.append(
                {"pair": pair, "problem": problem, "workers": workers, "seeds": len(seeds),
                 "ratio": ratio, "ci95": [low, high]}
            )  # fmt: skip
    return out


def pairs_table(rows: Sequence[dict[str, Any]]) -> str:
    columns = sorted({(r["problem"], r["workers"]) for r in rows})
    lines = [
        "| mean final regret ratio (95% CI) | " + " | ".join(f"{p} {w}w" for p, w in columns) + " |",
        "| --- |" + " --- |" * len(columns),
    ]
    for pair in dict.fromkeys(r["pair"] for r in rows):
        cells = {(r["problem"], r["workers"]): r for r in rows if r["pair"] == pair}
        lines.append(
            f"| {pair} | "
            + " | ".join(
                f"{_fmt(c['ratio'])} ({_fmt(c['ci95'][0])}–{_fmt(c['ci95'][1])})"
                if (c := cells.get(k))
                else ""
                for k in columns
            )
            + " |"
        )
    return "\n".join(lines)


def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{digits}g}"


def markdown_table(stats: Sequence[dict[str, Any]], reference: str = REFERENCE) -> str:
    """The table; with runs counted (``group_stats(starts=...)``) it adds runs and epochs per study."""
    runs = all("runs_mean" in s for s in stats)
    lines = [
        "| problem | workers | contender | final regret mean ± 95% CI | median "
        f"| {reference} / this (95% CI) | reached target | median time to target (s) "
        "| busy | overrun mean / max (s) | trials |" + (" runs | epochs |" if runs else ""),
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
        + (" --- | --- |" if runs else ""),
    ]
    for s in sorted(stats, key=lambda s: (s["problem"], s["workers"], s["contender"] != reference)):
        ratio = (
            f"{_fmt(s['ratio_ours_to_this'])} ({_fmt(s['ratio_ci95'][0])}–{_fmt(s['ratio_ci95'][1])})"
            if "ratio_ours_to_this" in s
            else ""
        )
        lines.append(
            f"| {s['problem']} | {s['workers']} | {s['contender']} "
            f"| {_fmt(s['final_regret_mean'])} ± {_fmt(s['final_regret_ci95'], 2)} "
            f"| {_fmt(s['final_regret_median'])} | {ratio} "
            f"| {s['reached_target']}/{s['seeds']} | {_fmt(s['time_to_target_median'], 4)} "
            f"| {s['busy_fraction_mean']:.2f} | {s['overrun_mean']:.0f} / {s['overrun_max']:.0f} "
            f"| {s['trials_mean']:.0f} |"
            + (f" {s['runs_mean']:.0f} | {s['epochs_mean']:.0f} |" if runs else "")
        )
    return "\n".join(lines)


def plot(
    runs: Sequence[RunSummary], ratio: float, directory: Path, prefix: str, reference: str = REFERENCE
) -> list[Path]:
    """One PNG per problem: median incumbent regret over time (and its quartiles), per workers."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib is in the bench extra
        return []
    paths = []
    for problem_name in sorted({r.problem for r in runs}):
        problem = PROBLEMS[problem_name]
        times = curve_times(problem, ratio)
        worker_counts = sorted({r.workers for r in runs if r.problem == problem_name})
        fig, axes = plt.subplots(1, len(worker_counts), figsize=(6 * len(worker_counts), 4), squeeze=False)
        for ax, w in zip(axes[0], worker_counts, strict=True):
            names = sorted(
                {r.contender for r in runs if r.problem == problem_name and r.workers == w},
                key=lambda n: (n != reference, n),
            )
            for name in names:
                key = (problem_name, w, name)
                curves = [r.curve for r in runs if (r.problem, r.workers, r.contender) == key]
                med, q1, q3 = [], [], []
                for i in range(len(times)):
                    column = sorted(c[i] for c in curves if math.isfinite(c[i]))
                    if len(column) < len(curves) / 2:
                        med.append(math.nan), q1.append(math.nan), q3.append(math.nan)
                        continue
                    med.append(statistics.median(column))
                    q = statistics.quantiles(column, n=4) if len(column) > 1 else [column[0]] * 3
                    q1.append(q[0]), q3.append(q[2])
                style = {"linewidth": 2.5, "color": "black"} if name == reference else {"linewidth": 1.2}
                line = ax.plot(times, med, label=name, **style)[0]
                ax.fill_between(times, q1, q3, alpha=0.12, color=line.get_color())
            ax.set_yscale("log")
            ax.set_xlabel("virtual seconds")
            ax.set_ylabel("simple regret (median, quartiles)")
            start = f", start-up {contenders.START_SECONDS:g}s per run" if contenders.START_SECONDS else ""
            ax.set_title(f"{problem_name}, {w} workers, budget {ratio:g}x one training{start}", fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
        axes[0][-1].legend(fontsize=7)
        fig.tight_layout()
        path = directory / f"{prefix}_{problem_name}.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", nargs="+", default=list(PROBLEMS), choices=list(PROBLEMS))
    parser.add_argument("--workers", nargs="+", type=int, default=[2, 8])
    parser.add_argument("--seeds", type=int, default=10, help="how many seeds: first-seed onwards")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=1, help="processes to run the runs in")
    parser.add_argument("--ratio", type=float, default=4.0, help="budget as a multiple of one training")
    parser.add_argument(
        "--contenders", nargs="+", default=list(DEFAULT_CONTENDERS), help="names, or ours:<sampler>"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "search_quality.json")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--reference", default=REFERENCE, help="the contender of the ratio column")
    parser.add_argument("--pairs", nargs="*", default=[], help="A/B: ratios of A's mean regret to B's")
    parser.add_argument(
        "--start-seconds", type=float, default=0.0, help="start-up of every run of a trial (virtual s)"
    )
    args = parser.parse_args(argv)

    contenders.START_SECONDS = args.start_seconds
    started = time.monotonic()
    starts: dict[tuple[str, int, str, int], int] = {}
    runs, skipped = run_all(
        args.problems,
        args.workers,
        range(args.first_seed, args.first_seed + args.seeds),
        args.contenders,
        args.ratio,
        starts=starts,
        jobs=args.jobs,
    )
    stats = group_stats(runs, args.reference, starts)
    pairs = pair_stats(runs, args.pairs)
    command = "python -m benchmarks.search_quality " + " ".join(sys.argv[1:] if argv is None else argv)
    write_result(
        args.out,
        {
            "command": command.strip(),
            "versions": package_versions(),
            "ratio": args.ratio,
            "start_seconds": args.start_seconds,
            "seconds": round(time.monotonic() - started, 1),
            "skipped": skipped,
            "stats": stats,
            "pairs": pairs,
            "runs": [{k: v for k, v in asdict(r).items() if k != "curve"} for r in runs],
        },
    )
    if not args.no_plots:
        for path in plot(runs, args.ratio, args.out.parent, args.out.stem, args.reference):
            print(f"wrote {path}", file=sys.stderr)
    print(markdown_table(stats, args.reference))
    if pairs:
        print()
        print(pairs_table(pairs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
