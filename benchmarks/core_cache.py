"""Time per reconcile decision with the decision core kept between reconciles and built afresh.

    nice -n 19 .venv/bin/python -m benchmarks.core_cache --trials 50 --samplers random tpe gp --repeats 5

A study of ``--trials`` trials (spec.maxTrials, a budget that holds them all, 4 slots, eta 3, R 27,
one report per epoch) is run by the simulator, which records every observation the core was given:
that is the history a reconcile sees, one observation per report or trial end. The history is then
decided again twice, as the operator does: with a core built for each observation (``Study(config,
slots).decide(obs)``, the operator without kube/core_cache.py) and with one core kept for them all
(with it). Both give the same decisions (checked here on every observation). Reported: the median,
90th percentile and mean of one decision over the whole history, and the mean over the decisions
that started a trial (where a model-based sampler proposes); each decision's time is the least of
``--repeats`` replays.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from dataclasses import replace

from benchmarks.sampler_cost import SPACE, loss
from hpo_operator.config import BudgetSpec, SamplerName, StudyConfig, config_from_mapping
from hpo_operator.simulate import simulate
from hpo_operator.study import Decision, Observation, StartTrial, Study

SLOTS = 4


def config(sampler: SamplerName, trials: int) -> StudyConfig:
    base = config_from_mapping(
        {
            "metric": "loss",
            "mode": "min",
            "maximum_resource": 27,
            "hp_space": SPACE,
        }
    )
    # Room for many more trials than ``trials``: the trial limit ends the study.
    budget = BudgetSpec(train_time=27.0, time_ratio=float(trials))
    return replace(base, budget=budget, sampler=sampler, max_trials=trials, seed=1)


def history(cfg: StudyConfig) -> list[tuple[Observation, Decision]]:
    seen: list[tuple[Observation, Decision]] = []
    simulate(cfg, SLOTS, loss, 1.0, start_seconds=2.0, observe=lambda o, d: seen.append((o, d)))
    return seen


def timed(
    cfg: StudyConfig, observations: list[Observation], kept: bool, repeats: int
) -> tuple[list[float], list[Decision]]:
    """Seconds per decision, each the least of ``repeats`` replays of the whole history (a shared
    machine's noise only ever adds), and the decisions."""
    best = [math.inf] * len(observations)
    decisions: list[Decision] = []
    for _ in range(repeats):
        core = Study(cfg, SLOTS)
        decisions = []
        for k, obs in enumerate(observations):
            began = time.perf_counter()
            if not kept:
                core = Study(cfg, SLOTS)
            decisions.append(core.decide(obs))
            best[k] = min(best[k], time.perf_counter() - began)
    return best, decisions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--samplers", nargs="+", default=["random", "tpe", "gp"])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    print("| sampler | observations | core | median ms | p90 ms | mean ms | mean ms, starting a trial |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for sampler in args.samplers:
        cfg = config(sampler, args.trials)
        recorded = history(cfg)
        observations = [o for o, _ in recorded]
        starts = [k for k, (_, d) in enumerate(recorded) if any(isinstance(a, StartTrial) for a in d.actions)]
        fresh, fresh_decisions = timed(cfg, observations, False, args.repeats)
        kept, kept_decisions = timed(cfg, observations, True, args.repeats)
        if fresh_decisions != kept_decisions:
            print(f"{sampler}: the kept core decided otherwise than fresh cores", file=sys.stderr)
            return 1
        for name, seconds in (("fresh each time", fresh), ("kept", kept)):
            ms = sorted(s * 1000 for s in seconds)
            p90 = ms[int(0.9 * (len(ms) - 1))]
            at_starts = statistics.mean(seconds[k] * 1000 for k in starts) if starts else float("nan")
            print(
                f"| {sampler} | {len(ms)} | {name} | {statistics.median(ms):.2f} | {p90:.2f} | "
                f"{statistics.mean(ms):.2f} | {at_starts:.2f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
