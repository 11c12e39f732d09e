"""Benchmarks that run real processes: `hpo run` under the digits harness, and the search-quality
harness in worker processes.
"""

from __future__ import annotations

import importlib.util
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from benchmarks import digits
from benchmarks.search_quality import run_all

from tests.fixtures import FAKE_TRAINER
from tests.fixtures.fake_trainer import score

HAS_OPTUNA = importlib.util.find_spec("optuna") is not None


@pytest.fixture
def fake_digits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """digits.py's runners on the fake trainer (tests/fixtures) and a one-parameter grid, so that a
    study takes seconds and every logged report can be checked against the trainer's function."""
    config = tmp_path / "hpo_config.yaml"
    space = {"x": {"param_type": "quniform", "range": [0.0, 1.0, 0.05]}}
    config.write_text(json.dumps({"metric": "score", "mode": "max", "maximum_resource": 4,
                                  "reduction_factor": 2, "hp_space": space}))  # fmt: skip
    monkeypatch.setattr(digits, "CONFIG", config)
    monkeypatch.setattr(digits, "TRAINER", [str(FAKE_TRAINER)])
    digits._demo_config.cache_clear()
    work = tmp_path / "work"
    work.mkdir()
    yield work
    digits._demo_config.cache_clear()


def _check_trial_log(row: dict[str, Any]) -> list[dict[str, Any]]:
    """Every logged trial's reports are what the fake trainer reported for its configuration."""
    log = row["trial_log"]
    assert isinstance(log, list) and len(log) == row["trials"] > 2
    for t in log:
        assert t["reports"] or t["outcome"] in ("stopped", "failed"), t  # ended before a report
        assert all(v == score(t["params"], int(r)) for r, v in t["reports"]), t
    return log


@pytest.mark.timeout(60)
def test_digits_ours_logs_each_trial_and_returns_the_best_it_trained_to_r(fake_digits: Path) -> None:
    row = digits.run_ours(4.0, 0, fake_digits, 2)
    assert row["exit"] == 0, row["log_tail"]
    log = _check_trial_log(row)
    assert {t["outcome"] for t in log} <= {"completed", "pruned", "failed", "stopped"}
    assert log[0]["params"] == {"x": 0.5}  # the default comes first
    at_r = [t for t in log if digits._reached_r(t)]
    # A trial pruned at a rung can have reported at R before SIGTERM took effect (the fake trainer's
    # epochs take 50 ms); those reports count, as the core counts every report.
    assert at_r and any(t["outcome"] == "completed" for t in at_r)
    best = max(score(t["params"], 4) for t in at_r)
    assert row["best_accuracy"] == best
    assert row["returned"] in [t["params"] for t in at_r] and score(row["returned"], 4) == best
    assert digits.trained_to_r(row) == len(at_r)


def test_search_quality_runs_the_same_in_worker_processes_and_from_any_first_seed() -> None:
    args = (["branin"], [2], range(3, 5), ["ours", "random"], 2.0)
    serial, skipped = run_all(*args, log=io.StringIO())
    parallel, _ = run_all(*args, log=io.StringIO(), jobs=2)
    assert not skipped and [r.seed for r in serial] == [3, 4, 3, 4]
    assert [(r.contender, r.seed, r.final_regret, r.trials) for r in parallel] == [
        (r.contender, r.seed, r.final_regret, r.trials) for r in serial
    ]


@pytest.mark.timeout(60)
@pytest.mark.skipif(not HAS_OPTUNA, reason="optuna is not installed (the bench extra)")
def test_digits_optuna_logs_each_trial_and_returns_its_best_completed_by_the_deadline(
    fake_digits: Path,
) -> None:
    row = digits.run_optuna(4.0, 0, fake_digits, 2, reduction_factor=2)
    log = _check_trial_log(row)
    grid = {round(0.05 * k, 2) for k in range(21)}
    assert all(round(t["params"]["x"], 10) in grid for t in log)  # the grid values the trials ran with
    assert log[0]["params"] == {"x": 0.5}
    completed = [t for t in log if t["outcome"] == "completed"]
    assert completed and all(digits._reached_r(t) for t in completed)
    assert all(not digits._reached_r(t) for t in log if t["outcome"] == "pruned")
    assert row["returned"] in [t["params"] for t in completed]
    assert row["best_accuracy_at_deadline"] == score(row["returned"], 4)
    assert row["best_accuracy"] == max(score(t["params"], 4) for t in completed)
    assert row["best_accuracy"] >= row["best_accuracy_at_deadline"]
