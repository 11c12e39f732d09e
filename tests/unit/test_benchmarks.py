"""Smoke tests of benchmarks/: the functions' published optima, and one tiny run of each contender."""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
import os
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from benchmarks import contenders, digits, digits_recommend
from benchmarks.budget_adherence import run_one
from benchmarks.contenders import Unavailable, contender
from benchmarks.functions import (
    BRANIN_MIN,
    BRANIN_MINIMISERS,
    HARTMANN6_MIN,
    HARTMANN6_MINIMISER,
    HARTMANN6_PRESETS,
    PROBLEMS,
    mf_branin,
    mf_hartmann6,
)
from benchmarks.metrics import PACKAGES, mean_ci, ratio_ci, summarize
from benchmarks.search_quality import _one_blas_thread
from benchmarks.search_quality import main as search_quality_main

HAS_OPTUNA = importlib.util.find_spec("optuna") is not None
HAS_RAY = importlib.util.find_spec("ray") is not None


@pytest.mark.parametrize("x", BRANIN_MINIMISERS)
def test_branin_at_full_fidelity_has_its_published_minimum_at_each_minimiser(x: tuple[float, float]) -> None:
    assert mf_branin(*x, 1.0) == pytest.approx(BRANIN_MIN, abs=1e-6)
    assert PROBLEMS["branin"].regret({"x1": x[0], "x2": x[1]}) == pytest.approx(0.0, abs=1e-6)


def test_branin_at_low_fidelity_differs_from_branin() -> None:
    x = BRANIN_MINIMISERS[0]
    assert mf_branin(*x, 0.0) != pytest.approx(mf_branin(*x, 1.0), abs=1e-3)


@pytest.mark.parametrize("preset", sorted(HARTMANN6_PRESETS))
def test_hartmann6_at_full_fidelity_has_its_published_minimum(preset: str) -> None:
    assert mf_hartmann6(HARTMANN6_MINIMISER, 1.0, HARTMANN6_PRESETS[preset]) == pytest.approx(
        HARTMANN6_MIN, abs=1e-4
    )
    problem = PROBLEMS[f"hartmann6-{preset}"]
    params = {f"x{j + 1}": v for j, v in enumerate(HARTMANN6_MINIMISER)}
    assert problem.value(params, problem.max_resource) == pytest.approx(HARTMANN6_MIN, abs=1e-4)


def test_bad_hartmann6_prefers_the_local_minimum_at_low_fidelity() -> None:
    bad = HARTMANN6_PRESETS["bad"]
    local = (0.4047, 0.8828, 0.8732, 0.5743, 0.1091, 0.0381)  # the basin of P_4
    assert mf_hartmann6(local, 1.0, bad) > mf_hartmann6(HARTMANN6_MINIMISER, 1.0, bad)
    assert mf_hartmann6(local, 1 / 3, bad) < mf_hartmann6(HARTMANN6_MINIMISER, 1 / 3, bad)


def test_noise_is_fixed_per_configuration_epoch_and_seed_and_absent_at_full_fidelity() -> None:
    problem = PROBLEMS["hartmann6-bad"]
    params = problem.default_params()
    assert problem.value(params, 3, seed=1) == problem.value(params, 3, seed=1)
    assert problem.value(params, 3, seed=1) != problem.value(params, 3, seed=2)
    assert problem.value(params, problem.max_resource, seed=1) == problem.true_value(params)


def test_cost_model_averages_the_base_epoch_time() -> None:
    problem = PROBLEMS["branin"]
    assert problem.epoch_seconds({"x1": -5.0, "x2": 0.0}) == pytest.approx(0.5 * problem.base_seconds)
    assert problem.epoch_seconds({"x1": 10.0, "x2": 0.0}) == pytest.approx(1.5 * problem.base_seconds)
    assert problem.train_seconds() == pytest.approx(problem.max_resource * problem.base_seconds)


def _check_run(name: str) -> None:
    problem = PROBLEMS["branin"]
    trace = contender(name).run(problem, 2, 2.0, 0)
    summary = summarize(trace, problem, [trace.deadline])
    assert trace.trials and math.isfinite(summary.final_regret) and summary.final_regret >= 0
    assert trace.trials[0].params == {"x1": 2.5, "x2": 7.5}  # the defaults come first
    assert 0 < summary.busy_fraction <= 1 + 1e-9
    for t in trace.trials:
        assert [e for e, _, _ in t.reports] == list(range(1, len(t.reports) + 1))
        assert all(e <= problem.max_resource for e, _, _ in t.reports)


@pytest.mark.parametrize("name", ["ours", "random"])
def test_core_contenders_run_within_the_deadline(name: str) -> None:
    _check_run(name)
    if name == "ours":
        trace = contender(name).run(PROBLEMS["branin"], 2, 2.0, 0)
        assert trace.finished_at <= trace.deadline


@pytest.mark.skipif(not HAS_OPTUNA, reason="optuna is not installed (the bench extra)")
@pytest.mark.parametrize("name", ["optuna-sh-random", "optuna-sh-tpe", "optuna-hb-random", "optuna-hb-tpe"])
def test_optuna_contenders_run(name: str) -> None:
    _check_run(name)


@pytest.mark.skipif(not HAS_RAY, reason="ray[tune] is not installed (the bench extra)")
@pytest.mark.parametrize("name", ["ray-asha", "ray-hyperband"])
def test_ray_contenders_run_and_stop_at_the_deadline(name: str) -> None:
    _check_run(name)
    trace = contender(name).run(PROBLEMS["branin"], 2, 2.0, 0)
    assert trace.finished_at <= trace.deadline


def test_a_sampler_the_core_does_not_have_is_reported_unavailable_or_runs() -> None:
    try:
        trace = contender("ours:random").run(PROBLEMS["branin"], 2, 2.0, 0)
    except Unavailable as err:
        assert "sampler" in str(err)
    else:
        assert trace.contender == "ours:random" and trace.trials


def test_statistics() -> None:
    mean, half = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(2.484, abs=1e-2)  # t(0.975, 2) = 4.303
    ratio, low, high = ratio_ci([1.0, 2.0, 3.0], [2.0, 4.0, 6.0])
    assert ratio == pytest.approx(0.5) and low == pytest.approx(0.5) and high == pytest.approx(0.5)


def test_search_quality_harness_writes_results(tmp_path: Path) -> None:
    out = tmp_path / "sq.json"
    code = search_quality_main(
        ["--problems", "branin", "--workers", "2", "--seeds", "2", "--ratio", "2",
         "--contenders", "ours", "random", "--out", str(out), "--no-plots"]
    )  # fmt: skip
    assert code == 0
    data = json.loads(out.read_text())
    names = {s["contender"] for s in data["stats"]}
    assert names == {"ours", "random"}
    random_row = next(s for s in data["stats"] if s["contender"] == "random")
    assert "ratio_ours_to_this" in random_row and len(data["runs"]) == 4
    # The releases the numbers depend on are stored with them.
    assert data["versions"]["numpy"] == np.__version__
    assert set(data["versions"]) == set(PACKAGES)


def test_worker_processes_get_one_blas_thread_unless_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    with _one_blas_thread():
        assert os.environ["OPENBLAS_NUM_THREADS"] == "1"
        assert os.environ["OMP_NUM_THREADS"] == "3"
    assert "OPENBLAS_NUM_THREADS" not in os.environ
    assert os.environ["OMP_NUM_THREADS"] == "3"


def test_budget_adherence_refuses_one_training_and_never_passes_the_deadline() -> None:
    problem = PROBLEMS["hartmann6-good"]
    assert "refused" in run_one(problem, 1.0, 2, "exact", 0)
    row = run_one(problem, 2.0, 2, "noisy", 0)
    assert "refused" in row or row["overrun"] <= 0


def test_the_promote_contender_resumes_trials_and_pays_the_start_up_per_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    start = 20.0
    monkeypatch.setattr(contenders, "START_SECONDS", start)
    problem = PROBLEMS["branin"]
    trace = contender("ours-promote").run(problem, 2, 2.0, 0)
    assert trace.deadline == pytest.approx(2.0 * (problem.train_seconds() + start))
    assert trace.finished_at <= trace.deadline and trace.answer is not None
    assert trace.trials[0].params == problem.default_params()
    resumed = [t for t in trace.trials if t.runs > 1]
    assert resumed, "no trial was resumed"
    low = high = 0.0
    for t in trace.trials:
        epochs = [e for e, _, _ in t.reports]
        assert epochs == list(range(1, len(epochs) + 1))  # a resumed run goes on, never repeats an epoch
        e = problem.epoch_seconds(t.params)
        # Each run's first report comes after its start-up; the other reports one epoch apart.
        times = [t.created_at] + [time for _, _, time in t.reports]
        slow = sum(1 for a, b in itertools.pairwise(times) if b - a > e + 1e-6)
        cut = t.ended_at is not None and (not t.reports or t.ended_at > t.reports[-1][2])
        assert slow == t.runs or (cut and slow == t.runs - 1)
        assert all(b - a >= start + e - 1e-6 for a, b in itertools.pairwise(times) if b - a > e + 1e-6)
        done = len(epochs) * e + (t.runs - (1 if cut else 0)) * start
        low += done
        high += done + (start + e if cut else 0.0)  # a run stopped at the deadline: part of one
    assert low - 1e-6 <= trace.busy_seconds <= high + 1e-6
    summary = summarize(trace, problem, [trace.deadline])
    assert math.isfinite(summary.final_regret) and 0 < summary.busy_fraction <= 1 + 1e-9


def test_a_promote_contender_with_another_sampler_and_the_pairs_table(tmp_path: Path) -> None:
    trace = contender("ours-promote:random").run(PROBLEMS["branin"], 2, 2.0, 0)
    assert trace.contender == "ours-promote:random" and any(t.runs > 1 for t in trace.trials)
    out = tmp_path / "promote.json"
    code = search_quality_main(
        ["--problems", "branin", "--workers", "2", "--seeds", "2", "--ratio", "2",
         "--contenders", "ours", "ours-promote", "--pairs", "ours-promote/ours", "--out", str(out),
         "--no-plots"]
    )  # fmt: skip
    assert code == 0
    data = json.loads(out.read_text())
    assert [(p["pair"], p["seeds"]) for p in data["pairs"]] == [("ours-promote/ours", 2)]
    rows = {s["contender"]: s for s in data["stats"]}
    assert rows["ours"]["runs_mean"] == rows["ours"]["trials_mean"]
    assert rows["ours-promote"]["runs_mean"] > rows["ours-promote"]["trials_mean"]


def test_digits_passes_optuna_its_reduction_factor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []

    def fake_optuna(
        budget: float, seed: int, work: Path, workers: int, reduction_factor: int = 3
    ) -> dict[str, object]:
        seen.append(reduction_factor)
        row = {"contender": "optuna-sh-tpe", "seed": seed, "workers": workers, "trials": 1, "overrun": 0.0}
        return row | {"best_accuracy": 0.5, "best_accuracy_at_deadline": 0.5}

    monkeypatch.setattr(digits, "run_optuna", fake_optuna)
    base = ["--seeds", "1", "--budget", "1", "--workers", "2", "--contenders", "optuna-sh-tpe"]
    assert digits.main([*base, "--out", str(tmp_path / "default.json")]) == 0
    assert digits.main([*base, "--optuna-reduction-factor", "2", "--out", str(tmp_path / "two.json")]) == 0
    assert seen == [3, 2]
    two = json.loads((tmp_path / "two.json").read_text())
    assert two["summary"]["optuna-sh-tpe 2w"]["trials_mean"] == 1
    assert two["versions"]["numpy"] == np.__version__


def _digits_row(contender: str, seed: int, accuracy: float | None, workers: int = 2) -> dict[str, object]:
    row: dict[str, object] = {"contender": contender, "seed": seed, "workers": workers, "trials": 3}
    row |= {"overrun": 0.0, "best_accuracy": accuracy}
    if contender == "optuna-sh-tpe":
        row["best_accuracy_at_deadline"] = accuracy
    return row


def test_digits_compares_error_rates_seed_by_seed() -> None:
    rows = [
        _digits_row("ours", 0, 0.99), _digits_row("optuna-sh-tpe", 0, 0.98),   # ours better
        _digits_row("ours", 1, 0.97), _digits_row("optuna-sh-tpe", 1, 0.98),   # ours worse
        _digits_row("ours", 2, 0.99), _digits_row("optuna-sh-tpe", 2, 0.99),   # equal
        _digits_row("ours", 3, None), _digits_row("optuna-sh-tpe", 3, 0.99),   # no answer: accuracy 0
        _digits_row("ours", 4, 0.99),                                          # unpaired: left out
    ]  # fmt: skip
    compared = digits.summarize_rows(rows)["ours/optuna-sh-tpe 2w"]
    assert compared["seeds"] == [0, 1, 2, 3]
    assert (compared["ours_better"], compared["ours_worse"], compared["equal"]) == (1, 2, 1)
    assert compared["error_rate_ours"] == pytest.approx((0.01 + 0.03 + 0.01 + 1.0) / 4)
    assert compared["error_rate_ratio"] == pytest.approx(1.05 / 0.06)
    low, high = compared["error_rate_ratio_ci95"]
    assert low <= compared["error_rate_ratio"] <= high
    assert compared["resolvable_difference"] > 0
    # two standard errors of the mean difference equal to the mean difference itself
    differences = [-0.01, 0.01, 0.0, 0.99]
    spread = statistics.stdev(differences)
    assert compared["seeds_to_resolve"] == math.ceil((2 * spread / statistics.fmean(differences)) ** 2)
    level = [_digits_row("ours", 0, 0.99), _digits_row("optuna-sh-tpe", 0, 0.98)]
    level += [_digits_row("ours", 1, 0.98), _digits_row("optuna-sh-tpe", 1, 0.99)]
    assert digits.summarize_rows(level)["ours/optuna-sh-tpe 2w"]["seeds_to_resolve"] is None  # no difference


def test_digits_counts_the_distinct_configurations_each_run_trained_to_r() -> None:
    def trial(batch: int, rate: float, *resources: int) -> dict[str, object]:
        params = {"learning_parameters.batch_size": batch, "learning_parameters.learning_rate": rate}
        return {"params": params, "reports": [[r, 0.9] for r in resources], "outcome": "x"}

    ours, theirs = _digits_row("ours", 0, 0.99), _digits_row("optuna-sh-tpe", 0, 0.98)
    # R is the demo config's 4 epochs: a repeat of a configuration counts once, pruned ones not at all
    ours["trial_log"] = [trial(16, 0.05, 1, 2, 4), trial(16, 0.05, 1, 2, 4), trial(32, 0.05, 1, 2, 4)]
    theirs["trial_log"] = [trial(16, 0.05, 1), trial(32, 0.06, 1, 2, 3, 4), trial(48, 0.1)]
    assert digits.trained_to_r(ours) == 2 and digits.trained_to_r(theirs) == 1
    summary = digits.summarize_rows([ours, theirs])
    assert summary["ours 2w"]["trained_to_r_mean"] == 2
    assert summary["optuna-sh-tpe 2w"]["trained_to_r_mean"] == 1
    # rows of result files from before the trial log have no such count
    assert "trained_to_r_mean" not in digits.summarize_rows([_digits_row("ours", 0, 0.99)])["ours 2w"]
    assert digits.by_value([ours, theirs], "learning_parameters.batch_size") == {
        "optuna-sh-tpe 2w": {
            "16": {"started": 1, "trained_to_r": 0},
            "32": {"started": 1, "trained_to_r": 1},
            "48": {"started": 1, "trained_to_r": 0},
        },
        "ours 2w": {"16": {"started": 2, "trained_to_r": 1}, "32": {"started": 1, "trained_to_r": 1}},
    }


def test_results_name_the_cpu_and_the_vector_extensions_that_change_a_training() -> None:
    from benchmarks.metrics import machine

    cpuinfo = "processor\t: 0\nmodel name\t: Example CPU @ 2.00GHz\nflags\t\t: fpu sse2 avx2 avx512f\n"
    found = machine(cpuinfo)
    assert found["cpu"] == "Example CPU @ 2.00GHz"
    assert found["isa"] == ["avx2", "avx512f"]
    assert machine("")["isa"] == []


def test_digits_trains_the_returned_configuration_again_with_other_seeds(tmp_path: Path) -> None:
    calls: list[tuple[object, int]] = []

    def fake_train(params: dict[str, object], work: Path, tag: str, seed: int = 0) -> dict[int, float]:
        calls.append((params["learning_parameters.learning_rate"], seed))
        return {1: 0.5, 4: 0.98 + 0.001 * seed}

    ours = _digits_row("ours", 0, 0.999) | {"returned": {"learning_parameters.learning_rate": 0.05}}
    theirs = _digits_row("optuna-sh-tpe", 0, 0.98) | {"returned": {"learning_parameters.learning_rate": 0.1}}
    nothing = _digits_row("optuna-sh-tpe", 1, None) | {"returned": None}
    again = [digits.retrain(r, 3, tmp_path, 2, train=fake_train) for r in (ours, theirs, nothing)]
    assert sorted(calls) == [(0.05, 1), (0.05, 2), (0.05, 3), (0.1, 1), (0.1, 2), (0.1, 3)]
    assert again[0]["retrained_accuracy"] == pytest.approx(0.982)
    assert again[0]["retrained_each"] == pytest.approx([0.981, 0.982, 0.983])
    assert again[2]["retrained_accuracy"] is None
    assert digits.retrain(ours, 0, tmp_path, 2, train=fake_train) == ours  # 0 seeds: left as it was
    summary = digits.summarize_rows(again[:2])
    # the selection metric favours ours (0.999 against 0.98); trained again the two are equal
    assert summary["ours/optuna-sh-tpe 2w"]["error_rate_ratio"] == pytest.approx(0.001 / 0.02)
    assert summary["ours/optuna-sh-tpe 2w retrained"]["error_rate_ratio"] == pytest.approx(1.0)
    assert summary["ours 2w"]["retrained_accuracy_mean"] == pytest.approx(0.982)
    assert "ours/optuna-sh-tpe 2w retrained" not in digits.summarize_rows([ours, theirs])
    # both configurations score 0.981-0.983 over the seeds: the seeds explain all their spread
    spread = summary["retrained spread 2w"]
    assert spread["configurations"] == 2
    assert spread["trainer_seed_sd"] == pytest.approx(0.001)
    assert spread["returned_configuration_sd"] == 0.0


def test_digits_retrained_spread_separates_configurations_from_trainer_seeds() -> None:
    rows = [
        {"retrained_each": [0.90, 0.92, 0.94]},  # mean 0.92
        {"retrained_each": [0.96, 0.98, 1.00]},  # mean 0.98
        {"retrained_each": [0.95]},  # one seed: no spread of its own, left out
    ]
    spread = digits.retrained_spread(rows)
    assert spread is not None and spread["configurations"] == 2
    assert spread["trainer_seed_sd"] == pytest.approx(0.02)
    # the means' variance (0.0018) less the part the seeds explain (0.0004 / 3)
    assert spread["returned_configuration_sd"] == pytest.approx(math.sqrt(0.0018 - 0.0004 / 3))
    assert digits.retrained_spread(rows[:1]) is None


def test_digits_combines_result_files_and_refuses_a_seed_twice(tmp_path: Path) -> None:
    first = [_digits_row("ours", 0, 0.99), _digits_row("optuna-sh-tpe", 0, 0.98)]
    second = [_digits_row("ours", 1, 0.98), _digits_row("optuna-sh-tpe", 1, 0.98)]
    paths = []
    for name, rows in (("a", first), ("b", second), ("again", first)):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps({"budget": 60.0, "runs": rows}))
    combined = digits.combine(paths[:2])["summary"]
    assert combined["ours/optuna-sh-tpe 2w"]["seeds"] == [0, 1]
    assert combined["ours/optuna-sh-tpe 2w"]["error_rate_ratio"] == pytest.approx(0.03 / 0.04)
    with pytest.raises(SystemExit, match="ours seed 0 at 2 workers"):
        digits.combine([paths[0], paths[2]])
    paths[1].write_text(json.dumps({"budget": 150.0, "runs": second}))
    with pytest.raises(SystemExit, match="different budgets"):
        digits.combine(paths[:2])


def test_digits_joins_blocks_of_seeds_into_one_document_with_its_parts() -> None:
    first = {"command": "c0", "versions": {}, "budget": 60.0,
             "runs": [_digits_row("ours", 0, 0.99), _digits_row("optuna-sh-tpe", 0, 0.98)]}  # fmt: skip
    second = {"command": "c1", "budget": 60.0,
              "runs": [_digits_row("ours", 1, 0.98), _digits_row("optuna-sh-tpe", 1, 0.98)]}  # fmt: skip
    joined = digits.joined([first, second])
    assert [r["seed"] for r in joined["runs"]] == [0, 0, 1, 1]
    assert joined["parts"] == [
        {"command": "c0", "versions": {}, "seeds": [0]},
        {"command": "c1", "seeds": [1]},
    ]
    assert joined["summary"] == digits.summarize_rows(joined["runs"])
    assert digits.joined([first])["versions"] == {}  # one run alone: the file as it ran, summarised
    assert digits.joined([first])["summary"] == digits.summarize_rows(first["runs"])
    again = digits.joined([joined, {**second, "command": "c2", "runs": []}])
    assert [p["command"] for p in again["parts"]] == ["c0", "c1", "c2"]  # a joined file joins again
    with pytest.raises(SystemExit, match="ours seed 1 at 2 workers is there twice"):
        digits.joined([joined, second])
    with pytest.raises(SystemExit, match="different budgets"):
        digits.joined([first, {**second, "budget": 150.0}])


def test_digits_refuses_an_out_file_it_cannot_join_before_running_anything(tmp_path: Path) -> None:
    out = tmp_path / "cell.json"
    out.write_text(json.dumps({"budget": 60.0, "runs": [_digits_row("ours", 3, 0.99)]}))
    for argv in (["--budget", "150"], ["--budget", "60", "--first-seed", "2", "--seeds", "2"]):
        with pytest.raises(SystemExit) as exit_info:  # the parser's error: exit 2, nothing trained
            digits.main([*argv, "--contenders", "ours", "--workers", "2", "--out", str(out)])
        assert exit_info.value.code == 2


def test_digits_reads_and_combines_only_the_study_seeds_asked_for(tmp_path: Path) -> None:
    path = tmp_path / "cell.json"
    rows = [_digits_row(c, s, 0.99 - 0.01 * s) for s in range(4) for c in ("ours", "optuna-sh-tpe")]
    path.write_text(json.dumps({"budget": 60.0, "runs": rows}))
    assert {r["seed"] for r in digits.read_runs([path], (1, 2))} == {1, 2}
    assert digits.combine([path], (2, 3))["summary"]["ours/optuna-sh-tpe 2w"]["seeds"] == [2, 3]
    assert digits.seed_range("30-59") == (30, 59) and digits.seed_range("7") == (7, 7)


def test_merge_results_joins_digits_blocks_and_makes_other_files_the_parts_of_one(tmp_path: Path) -> None:
    from benchmarks import merge_results

    a, b, out = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "out.json"
    a.write_text(json.dumps({"command": "x --start-seconds 0", "runs": [{"regret": 1.0}]}))
    b.write_text(json.dumps({"command": "x --start-seconds 30", "runs": [{"regret": 2.0}]}))
    assert merge_results.main([str(out), str(a), str(b)]) == 0
    parts = json.loads(out.read_text())["parts"]
    assert [p["command"] for p in parts] == ["x --start-seconds 0", "x --start-seconds 30"]
    assert merge_results.main([str(out), str(out), str(a)]) == 0  # a merged file's parts stay flat
    assert len(json.loads(out.read_text())["parts"]) == 3
    a.write_text(json.dumps({"budget": 60.0, "runs": [_digits_row("ours", 0, 0.99)]}))
    b.write_text(json.dumps({"budget": 60.0, "runs": [_digits_row("ours", 1, 0.98)]}))
    assert merge_results.main([str(out), str(a), str(b)]) == 0
    assert [r["seed"] for r in json.loads(out.read_text())["runs"]] == [0, 1]


def test_result_files_are_compact_json_with_large_values_one_per_line(tmp_path: Path) -> None:
    from benchmarks.metrics import result_json, write_result

    document = {"command": "c", "runs": [{"seed": i, "trial_log": list(range(60))} for i in range(3)]}
    text = result_json(document)
    assert json.loads(text) == document
    # {, "command", "runs": [, each run opened (its seed and its log of numbers on a line each), ], }
    assert len(text.splitlines()) == 3 + 3 * 4 + 2
    assert any(line.strip().startswith('"trial_log": [0,1,2') for line in text.splitlines())
    write_result(tmp_path / "new" / "r.json", document)
    assert json.loads((tmp_path / "new" / "r.json").read_text()) == document


def test_digits_landscape_trains_every_grid_point_once_and_summarises_at_r(tmp_path: Path) -> None:
    seen: list[tuple[int, float]] = []

    def fake_train(params: dict[str, object], work: Path, tag: str) -> dict[int, float]:
        batch, rate = params["learning_parameters.batch_size"], params["learning_parameters.learning_rate"]
        assert isinstance(batch, int) and isinstance(rate, float)
        seen.append((batch, rate))
        # batch 16: 0.98 everywhere but one spike; batch 32: alternating 0.97 and 0.99
        at_r = 0.995 if (batch, rate) == (16, 0.059) else 0.98
        if batch == 32:
            at_r = 0.99 if round(rate * 1000) % 2 else 0.97
        return {1: 0.5, 2: 0.9, 4: at_r}

    found = digits.landscape(tmp_path, 2, train=fake_train)
    grid = [(b, r) for b in digits.LANDSCAPE_BATCHES for r in digits.LANDSCAPE_RATES]
    assert sorted(seen) == sorted(grid) and len(set(seen)) == len(grid) == 82
    sixteen, thirty_two = found["summary"]["batch 16"], found["summary"]["batch 32"]
    assert (sixteen["accuracy_max"], sixteen["counts"]) == (0.995, {"0.9950": 1, "0.9800": 40})
    assert sixteen["neighbour_step_mean"] == pytest.approx(2 * 0.015 / 40)
    assert thirty_two["neighbour_step_mean"] == pytest.approx(0.02)
    assert thirty_two["accuracy_mean"] == pytest.approx((20 * 0.99 + 21 * 0.97) / 41)
    assert found["resource"] == 4 and len(found["points"]) == 82


def test_digits_combine_by_prints_the_counts_per_value_from_the_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def logged(batch: int, *resources: int) -> dict[str, object]:
        params = {"learning_parameters.batch_size": batch, "learning_parameters.learning_rate": 0.05}
        return {"params": params, "reports": [[r, 0.9] for r in resources], "outcome": "x"}

    first = _digits_row("ours", 0, 0.99) | {"trial_log": [logged(16, 1, 2, 4), logged(32, 1)]}
    second = _digits_row("ours", 1, 0.98) | {"trial_log": [logged(32, 1, 2, 4)]}
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    for path, row in zip(paths, (first, second), strict=True):
        path.write_text(json.dumps({"budget": 60.0, "runs": [row]}))
    by = "learning_parameters.batch_size"
    assert digits.main(["--combine", *map(str, paths), "--by", by]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["by_value"] == {
        "ours 2w": {"16": {"started": 1, "trained_to_r": 1}, "32": {"started": 2, "trained_to_r": 1}}
    }
    assert printed["summary"]["ours 2w"]["trained_to_r_mean"] == 1
    with pytest.raises(SystemExit):
        digits.main(["--by", by])  # --by reads result files
    assert "--by reads result files" in capsys.readouterr().err


def _logged(batch: int, rate: float, *values: float) -> dict[str, object]:
    """A trial-log entry of the demo config: one report per epoch from 1."""
    params = {"learning_parameters.batch_size": batch, "learning_parameters.learning_rate": rate}
    return {"params": params, "reports": [[k + 1, v] for k, v in enumerate(values)], "outcome": "x"}


def _smooth_and_a_spike() -> list[dict[str, object]]:
    """Batch 16 is good at every learning rate around 0.05; at batch 112 one configuration's single
    training at R is the highest value of all, among neighbours that are poor at every epoch."""
    log = [_logged(16, rate, 0.90, 0.95, 0.97, 0.985) for rate in (0.03, 0.04, 0.05, 0.06, 0.07)]
    log += [_logged(112, rate, 0.40, 0.60, 0.80, 0.90) for rate in (0.2, 0.25, 0.28)]
    log += [_logged(112, 0.22, 0.40, 0.60, 0.80, 0.99)]
    log += [_logged(64, rate, 0.5) for rate in (0.01, 0.1, 0.2)]  # pruned at the first rung
    return log


def test_recommend_returns_the_configuration_of_highest_posterior_mean_at_r() -> None:
    log = _smooth_and_a_spike()
    recommended = digits_recommend.recommend(log)
    assert recommended is not None
    assert recommended["learning_parameters.batch_size"] == 16  # not the spike at batch 112
    assert recommended in [t["params"] for t in log[:5]]
    assert digits_recommend.recommend(log[-3:]) is None  # nothing reached R
    assert digits_recommend._levels() == [1.0, 2.0, 4.0]  # the demo config's rungs, then R


def test_recommend_trains_both_answers_again_and_compares_them(tmp_path: Path) -> None:
    calls: list[tuple[object, int]] = []
    places: set[Path] = set()

    def fake_train(params: dict[str, object], work: Path, tag: str, seed: int = 0) -> dict[int, float]:
        calls.append((params["learning_parameters.batch_size"], seed))
        # the trainer resumes from the checkpoint it finds: a place must not serve two trainings
        assert work / tag not in places and work.is_dir()
        places.add(work / tag)
        return {4: 0.98 if params["learning_parameters.batch_size"] == 16 else 0.96}

    spike = _logged(112, 0.22, 0.99)["params"]
    smooth = _logged(16, 0.05, 0.99)["params"]
    differs = _digits_row("ours", 0, 0.99) | {"trial_log": _smooth_and_a_spike(), "returned": spike}
    only = [_logged(16, 0.05, 0.9, 0.95, 0.97, 0.985), *_smooth_and_a_spike()[-3:]]  # one reached R
    agrees = _digits_row("ours", 1, 0.985) | {"trial_log": only, "returned": smooth}
    theirs = _digits_row("optuna-sh-tpe", 0, 0.99) | {"trial_log": _smooth_and_a_spike(), "returned": spike}
    found = digits_recommend.compare_answers([differs, agrees, theirs], 2, tmp_path, 1, train=fake_train)
    # ours only; the run whose answers agree trains its one configuration once
    assert sorted(calls) == [(16, 1), (16, 1), (16, 2), (16, 2), (112, 1), (112, 2)]
    summary = found["summary"]
    assert (summary["runs"], summary["differing"]) == (2, 1)
    assert summary["returned_accuracy_mean"] == pytest.approx(0.97)
    assert summary["recommended_accuracy_mean"] == pytest.approx(0.98)
    assert summary["error_rate_ratio"] == pytest.approx(0.02 / 0.03)
    assert (summary["recommended_better"], summary["recommended_worse"]) == (1, 0)


def test_noise_separates_configurations_from_trainer_seeds_per_metric(tmp_path: Path) -> None:
    from benchmarks import digits_noise

    places: set[str] = set()

    def fake_reports(params: dict[str, float], work: Path, tag: str, seed: int = 0) -> list[dict[str, Any]]:
        assert tag not in places  # every training its own report file and checkpoints
        places.add(tag)
        # accuracy: configurations apart by 0.01, seeds by +-0.01; loss: apart by 0.1, seeds by +-0.001
        rate = params["learning_parameters.learning_rate"]
        wobble = 1.0 if seed % 2 else -1.0
        extra = {"val_accuracy": 0.9 + rate + 0.01 * wobble, "val_loss": 10 * rate + 0.001 * wobble}
        return [{"resource": 1, "extra": {}}, {"resource": 4, "extra": extra}]

    rows = [
        {"returned": {"learning_parameters.learning_rate": 0.01}},
        {"returned": {"learning_parameters.learning_rate": 0.01}},  # the same configuration again
        {"returned": None},  # a run that returned nothing
        {"returned": {"learning_parameters.learning_rate": 0.03}},
        {"returned": {"learning_parameters.learning_rate": 0.05}},
    ]
    configurations = digits_noise.returned_configurations(rows, 10)
    assert [c["learning_parameters.learning_rate"] for c in configurations] == [0.01, 0.03, 0.05]
    assert digits_noise.returned_configurations(rows, 2) == configurations[:2]
    found = digits_noise.measure(configurations, 2, tmp_path, 2, train=fake_reports)
    assert len(places) == 6
    accuracy, loss = found["summary"]["accuracy"], found["summary"]["loss"]
    assert accuracy["within_sd"] == pytest.approx(0.01 * math.sqrt(2))
    assert loss["within_sd"] == pytest.approx(0.001 * math.sqrt(2))
    # the means are 0.02 (accuracy) and 0.2 (loss) apart: sd 0.02 and 0.2, less the seeds' part
    assert accuracy["between_sd"] == pytest.approx(math.sqrt(0.02**2 - 0.0002 / 2))
    assert loss["between_sd"] == pytest.approx(math.sqrt(0.2**2 - 0.000002 / 2))
    assert loss["between_over_within"] > 100 * accuracy["between_over_within"] / 2
    assert found["configurations"][0]["accuracy"] == pytest.approx([0.92, 0.90])  # seeds 1 and 2


def test_offline_tools_read_runs_in_file_order_and_write_what_they_found(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    paths[0].write_text(json.dumps({"runs": [{"seed": 0}, {"seed": 1}]}))
    paths[1].write_text(json.dumps({"runs": [{"seed": 2}]}))
    assert [r["seed"] for r in digits.read_runs(paths)] == [0, 1, 2]
    out = tmp_path / "results" / "found.json"
    found = {"summary": {"ratio": 1.5}, "runs": [{"seed": 0}]}
    digits.write_offline("digits_noise", ["a.json", "b.json", "--seeds", "2"], paths, found, out)
    written = json.loads(out.read_text())
    assert written["command"] == "python -m benchmarks.digits_noise a.json b.json --seeds 2"
    assert written["files"] == [str(p) for p in paths]
    assert written["summary"] == {"ratio": 1.5} and written["runs"] == [{"seed": 0}]
    assert {"versions", "machine"} <= written.keys()
    assert json.loads(capsys.readouterr().out) == {"ratio": 1.5}


def test_optuna_harness_stops_at_the_report_that_pruned_a_trial(tmp_path: Path) -> None:
    class FakeTrial:
        def __init__(self, prune_at: float | None) -> None:
            self.prune_at, self.told = prune_at, []

        def report(self, value: float, step: int) -> None:
            self.told.append(step)

        def should_prune(self) -> bool:
            return self.told[-1] == self.prune_at

    def harness(prune_at: float | None) -> Any:
        t = object.__new__(digits._OptunaTrial)  # no trainer process: the report file is written here
        t.trial, t.report_file, t.reports, t.seen, t.last = FakeTrial(prune_at), tmp_path / "r", [], 0, None
        # a slow poll: the trainer wrote all four epochs before the harness read any
        t.report_file.write_text(
            "".join(json.dumps({"resource": r, "value": r / 10}) + "\n" for r in (1, 2, 3, 4))
        )
        return t

    pruned = harness(prune_at=1)
    assert pruned.tell_reports(4) is True
    assert pruned.trial.told == [1] and pruned.reports == [(1, 0.1)]
    finished = harness(prune_at=None)
    assert finished.tell_reports(4) is False
    assert finished.trial.told == [1, 2, 3, 4] and len(finished.reports) == 4


def test_operator_scale_phases_run_each_reads_mode_next_to_each_other() -> None:
    from benchmarks.operator_scale import Phase, parser, phase_plan

    args = parser().parse_args(["--phases", "1x8", "50x8:cache", "1x200", "--reads", "api", "cache"])
    plan = [(p.studies, p.trials, interval, reads) for p, interval, reads in phase_plan(args)]
    assert plan == [
        (1, 8, 0.0, "api"),
        (1, 8, 0.0, "cache"),
        (50, 8, 0.0, "cache"),
        (1, 200, 0.0, "api"),
        (1, 200, 0.0, "cache"),
    ]
    default = phase_plan(parser().parse_args(["--studies", "1", "10", "--trials", "4"]))
    assert default == [(Phase(1, 4), 0.0, "cache"), (Phase(10, 4), 0.0, "cache")]


@pytest.mark.parametrize("bad", ["8", "1x", "0x8", "1x8:disk"])
def test_operator_scale_rejects_a_malformed_phase(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks.operator_scale import parser

    with pytest.raises(SystemExit):
        parser().parse_args(["--phases", bad])
    assert f"phase {bad!r}" in capsys.readouterr().err


def test_operator_scale_splits_the_operators_requests_into_lists_gets_and_writes() -> None:
    from benchmarks.operator_scale import split_requests

    requests = {
        ("list", "pods"): 6.0,
        ("list", "hpotrials"): 2.0,
        ("get", "hpostudies"): 4.0,
        ("patch", "hpotrials"): 8.0,
    }
    assert split_requests(requests, 2.0) == {
        "list": 4.0,
        "get": 2.0,
        "writes": 4.0,
        "list_by_resource": {"hpotrials": 1.0, "pods": 3.0},
    }


def test_operator_scale_ratios_compare_within_a_reads_mode_and_cache_against_api() -> None:
    from benchmarks.operator_scale import ratios

    def phase(studies: int, reads: str, lag: float, requests: float) -> dict[str, Any]:
        return {
            "studies": studies,
            "trials_per_study": 8,
            "report_interval_s": 2.0,
            "reads": reads,
            "decision_lag_s": {"n": 10, "median": lag},
            "prune_report_to_deletion_s": {"n": 0},
            "completed_end_to_next_pod_s": {"n": 0},
            "operator_cpu_fraction": 0.1,
            "api_requests_per_trial": 100.0,
            "operator_requests_per_trial": requests,
            "cpu_seconds": {},
            "reports": 100,
        }

    out = ratios([phase(1, "api", 0.2, 80.0), phase(1, "cache", 0.1, 20.0), phase(10, "cache", 0.3, 20.0)])
    assert set(out) == {"10/1 studies, reads cache", "reads cache/api, 1x8"}
    assert out["10/1 studies, reads cache"]["decision_lag_s median"] == 3.0
    assert out["reads cache/api, 1x8"]["operator_requests_per_trial"] == 0.25
    assert out["reads cache/api, 1x8"]["decision_lag_s median"] == 0.5


def test_status_size_thins_per_step_reports_and_keeps_every_per_epoch_one(tmp_path: Path) -> None:
    from benchmarks.status_size import main as status_size_main
    from benchmarks.status_size import run as status_size_run

    per_epoch = status_size_run(1, 90, (10.0, 30.0), 256, thin=True)
    assert per_epoch == status_size_run(1, 90, (10.0, 30.0), 256, thin=False)
    assert per_epoch["entries"] == per_epoch["reports"] == 90
    per_step = status_size_run(100, 90, (10.0, 30.0), 256, thin=True)
    assert per_step["reports"] == 9000 and per_step["entries"] <= 256 + 2 + 3
    assert per_step["decision_reports_written"] and per_step["last_written"]
    out = tmp_path / "size.json"
    status_size_main(["--reports-per-epoch", "1", "10", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [r["reports_per_epoch"] for r in rows] == [1, 10] and rows[1]["bytes_ratio"] < 1
