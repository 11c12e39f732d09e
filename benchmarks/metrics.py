"""Metrics of a Trace, computed the same way for every contender, and their statistics over seeds.

* The *incumbent* at time t is the configuration a user would be handed at t: among the reports made
  up to t, those at the highest epoch any trial has reached, the one with the best observed value
  (for a peer that finishes trials this is its best completed trial, as Optuna's ``best_trial``).
* Its *simple regret* is the noise-free full-fidelity value of that configuration minus the known
  optimum (``Problem.regret``), whatever noisy value was observed.
* The *final regret* is the regret of the contender's own answer when it names one (this project's
  ``Finalize.best``), otherwise the regret of the incumbent at the deadline: work finished after the
  deadline does not count.
* *Busy fraction*: slot-seconds spent in trials over ``workers x finish time``.
* *Overrun*: finish time minus deadline (positive: the run ended after its budget).
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import platform
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .contenders import Trace
from .functions import Problem

# The packages a result depends on besides this project: the peers, and the numerics under them.
PACKAGES = ("optuna", "ray", "numpy", "scipy", "torch")


# Vector extensions that change which floating-point kernels torch runs on the CPU, and so the
# last digits of a training: on digits, (batch 32, learning rate 0.071) reached 0.9973 at R on one
# machine and 0.9945 on another with the same releases.
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile")


def machine(cpuinfo: str | None = None) -> dict[str, Any]:
    """The CPU a result was measured on: its model and which of ISA_FLAGS it has (Linux)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return {"cpu": platform.processor() or None, "cores": os.cpu_count(), "isa": None}
    fields = dict(
        (key.strip(), value.strip())
        for key, _, value in (line.partition(":") for line in cpuinfo.splitlines())
        if key.strip() in ("model name", "flags")
    )
    flags = set(fields.get("flags", "").split())
    return {
        "cpu": fields.get("model name"),
        "cores": os.cpu_count(),
        "isa": [flag for flag in ISA_FLAGS if flag in flags],
    }


def package_versions() -> dict[str, str | None]:
    """The installed release of each of PACKAGES (None: not installed), stored with every result: the
    peers' defaults change between releases (Optuna 5.0's TPESampler samples multivariate, with a
    constant liar for running trials)."""
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def result_json(value: Any, depth: int = 0) -> str:
    """A result document as JSON that is compact and still reads and diffs line by line: a value
    that fits on a line of about 160 characters stays on one, and so does a list of numbers or
    strings; larger objects, and lists of objects or lists, are opened one level at a time (up to 4
    levels; below that a value is written on one line)."""
    flat = json.dumps(value, separators=(",", ":"))
    if len(flat) <= 160 or depth >= 4 or not value or not isinstance(value, dict | list):
        return flat
    if isinstance(value, list) and not any(isinstance(v, dict | list) for v in value):
        return flat
    pad = " " * (depth + 1)
    if isinstance(value, dict):
        items = [f"{pad}{json.dumps(k)}: {result_json(v, depth + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * depth + "}"
    return "[\n" + ",\n".join(pad + result_json(v, depth + 1) for v in value) + "\n" + " " * depth + "]"


def write_result(path: Path, document: dict[str, Any]) -> None:
    """Writes a result document to ``path`` (folders made as needed) in ``result_json``'s form."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(result_json(document) + "\n")


def incumbent_steps(trace: Trace) -> list[tuple[float, dict[str, Any]]]:
    """(time, configuration) each time the incumbent changes, in time order."""
    reports = sorted((time, epoch, value, t.key) for t in trace.trials for epoch, value, time in t.reports)
    params = {t.key: t.params for t in trace.trials}
    steps: list[tuple[float, dict[str, Any]]] = []
    level, best_value, best_key = -1, math.inf, -1
    for time, epoch, value, key in reports:
        better = epoch > level or (epoch == level and value < best_value)
        if better:
            level, best_value = epoch, value
            if key != best_key:
                best_key = key
                steps.append((time, params[key]))
    return steps


def regret_curve(trace: Trace, problem: Problem, times: Sequence[float]) -> list[float]:
    """The incumbent's regret at each time (NaN before the first report)."""
    steps = [(time, problem.regret(p)) for time, p in incumbent_steps(trace)]
    out, i, current = [], 0, math.nan
    for t in times:
        while i < len(steps) and steps[i][0] <= t:
            current = steps[i][1]
            i += 1
        out.append(current)
    return out


def time_to_regret(trace: Trace, problem: Problem, target: float) -> float | None:
    """The first time (within the deadline) the incumbent's regret is at most ``target``."""
    for time, p in incumbent_steps(trace):
        if time > trace.deadline:
            return None
        if problem.regret(p) <= target:
            return time
    return None


@dataclass(frozen=True)
class RunSummary:
    contender: str
    problem: str
    workers: int
    seed: int
    final_regret: float
    incumbent_regret_at_deadline: float
    time_to_target: float | None
    busy_fraction: float
    overrun: float
    trials: int
    epochs: int
    curve: list[float]


def summarize(trace: Trace, problem: Problem, times: Sequence[float]) -> RunSummary:
    at_deadline = regret_curve(trace, problem, [trace.deadline])[0]
    final = problem.regret(trace.answer) if trace.answer is not None else at_deadline
    return RunSummary(
        contender=trace.contender,
        problem=trace.problem,
        workers=trace.workers,
        seed=trace.seed,
        final_regret=final,
        incumbent_regret_at_deadline=at_deadline,
        time_to_target=time_to_regret(trace, problem, problem.target_regret),
        busy_fraction=trace.busy_seconds / (trace.workers * trace.finished_at) if trace.finished_at else 0.0,
        overrun=trace.finished_at - trace.deadline,
        trials=len(trace.trials),
        epochs=sum(len(t.reports) for t in trace.trials),
        curve=regret_curve(trace, problem, times),
    )


# --- statistics ------------------------------------------------------------------------------


def t_quantile(n: int) -> float:
    """The two-sided 95% Student-t quantile for n samples (n - 1 degrees of freedom)."""
    if n < 2:
        return math.nan
    try:
        from scipy.stats import t

        return float(t.ppf(0.975, n - 1))
    except ImportError:  # pragma: no cover - scipy is in the bench extra
        return 1.96


def mean_ci(values: Sequence[float]) -> tuple[float, float]:
    """The mean and the half-width of its 95% confidence interval."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return math.nan, math.nan
    mean = statistics.fmean(finite)
    if len(finite) < 2:
        return mean, math.nan
    return mean, t_quantile(len(finite)) * statistics.stdev(finite) / math.sqrt(len(finite))


def ratio_ci(
    ours: Sequence[float], theirs: Sequence[float], resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """mean(ours) / mean(theirs) and a 95% paired-bootstrap interval over the seeds."""
    pairs = [(a, b) for a, b in zip(ours, theirs, strict=True) if math.isfinite(a) and math.isfinite(b)]
    if not pairs or statistics.fmean(b for _, b in pairs) == 0:
        return math.nan, math.nan, math.nan
    ratio = statistics.fmean(a for a, _ in pairs) / statistics.fmean(b for _, b in pairs)
    rng = random.Random(seed)
    samples = []
    for _ in range(resamples):
        pick = [pairs[rng.randrange(len(pairs))] for _ in pairs]
        denominator = statistics.fmean(b for _, b in pick)
        if denominator > 0:
            samples.append(statistics.fmean(a for a, _ in pick) / denominator)
    samples.sort()
    if not samples:
        return ratio, math.nan, math.nan
    return ratio, samples[int(0.025 * len(samples))], samples[int(0.975 * len(samples)) - 1]
