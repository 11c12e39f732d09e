"""Which reports count in `hpo run`, with real trials sending exactly the reports a test chose
(tests/fixtures/scripted_trainer.py): values that are not finite, a pruned trial's reports sent
while it was being stopped, and resources out of range."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from hpo_operator.config import BudgetSpec, config_from_mapping
from hpo_operator.local.runner import LocalRunner, RunOptions, RunResult
from hpo_operator.local.slots import Slot
from hpo_operator.study import Study

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[2]
TRAINER = REPO / "tests" / "fixtures" / "scripted_trainer.py"


def run_study(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    reports: dict[str, Any],
    on_term: dict[str, Any] | None = None,
) -> tuple[RunResult, dict[str, Any]]:
    """One slot, so trials run one after another in index order; trials without a script of their
    own report 0.01 at 1 and are pruned there, until the deadline."""
    monkeypatch.setenv("SCRIPT_REPORTS", json.dumps({"*": [[1, 0.01], "hold"], **reports}))
    monkeypatch.setenv("SCRIPT_ON_TERM", json.dumps(on_term or {}))
    config = config_from_mapping(
        {
            "metric": "score",
            "mode": "max",
            "maximum_resource": 4,
            "reduction_factor": 2,
            "hp_space": {"x": {"param_type": "uniform", "range": [0.0, 1.0]}},
        }
    )
    # Room for trials 0 and 1 to finish on a loaded machine: the others are pruned at once.
    config = replace(config, budget=BudgetSpec(deadline=6.0))
    options = RunOptions(
        name="s",
        command=(sys.executable, str(TRAINER)),
        out_dir=tmp_path / "out",
        slots=(Slot(0, None, 1),),
        grace=1.0,
        poll=0.05,
        config_summary={"metric": "score"},
    )
    result = LocalRunner(Study(config, 1), options).run()
    return result, json.loads((options.out_dir / "study.json").read_text())


def test_a_nan_at_the_top_does_not_erase_a_finite_best(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Trial 0 alone reaches R (4), where its value is NaN; trial 1 completes at 2 with 0.8.
    result, doc = run_study(
        tmp_path,
        monkeypatch,
        {"0": [[1, 0.5], [2, 0.6], [4, "nan"]], "1": [[1, 0.7], [2, 0.8]]},
    )
    first = doc["trials"][0]
    assert first["status"] == "Completed" and first["reports"][-1] == {**first["reports"][-1], "value": None}
    assert result.state == "Succeeded" and result.exit_code == 0
    assert doc["best"] is not None
    assert (doc["best"]["trial"], doc["best"]["value"], doc["best"]["resource"]) == ("s-1", 0.8, 2)


def test_an_infinite_value_never_becomes_the_best(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result, doc = run_study(
        tmp_path, monkeypatch, {"0": [[1, 0.5], [2, 0.6], [4, 0.7]], "1": [[1, "inf"], "hold"]}
    )
    assert doc["trials"][1]["status"] == "Pruned"  # the worst value at rung 0, not the best
    assert doc["trials"][1]["reports"][0]["value"] is None
    assert result.best is not None and (result.best.index, result.best.value) == (0, 0.7)


def test_reports_a_pruned_trial_sends_while_it_stops_do_not_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Trial 1 is pruned at rung 0 (0.1 behind 0.5); on SIGTERM it sends 0.99 at 2 and at R.
    result, doc = run_study(
        tmp_path,
        monkeypatch,
        {"0": [[1, 0.5], [2, 0.6], [4, 0.7]], "1": [[1, 0.1], "hold"]},
        on_term={"1": [[2, 0.99], [4, 0.99]]},
    )
    pruned = doc["trials"][1]
    assert pruned["status"] == "Pruned" and pruned["pruned"]["rung"] == 0
    assert [(r["resource"], r["value"]) for r in pruned["reports"]] == [(1, 0.1)]
    assert pruned["refusedReports"] == 2
    assert [(r["reason"], r["report"]["resource"]) for r in pruned["refused"]] == [
        ("arrived after the trial was pruned", 2),
        ("arrived after the trial was pruned", 4),
    ]
    written = (tmp_path / "out" / "trials" / "s-1" / "reports.jsonl").read_text().splitlines()
    assert len(written) == 3  # all were sent; study.json keeps them all, the late ones as refused
    assert result.best is not None and (result.best.index, result.best.value, result.best.resource) == (
        0,
        0.7,
        4,
    )
    assert doc["best"]["trial"] == "s-0"


def test_resources_out_of_range_are_refused_and_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps = [[1, 0.5], [-1, 0.99], [0, 0.99], [99, 0.99], ["nan", 0.99], [0.5, 0.99], [2, 0.6], [4, 0.7]]
    result, doc = run_study(tmp_path, monkeypatch, {"0": steps})
    first = doc["trials"][0]
    assert [(r["resource"], r["value"]) for r in first["reports"]] == [(1, 0.5), (2, 0.6), (4, 0.7)]
    assert first["refusedReports"] == 5
    assert [r["reason"] for r in first["refused"]] == [
        "resource -1 is not above 0",
        "resource 0 is not above 0",
        "resource 99 is beyond the maximum resource 4",
        "resource nan is not a finite number",
        "resource 0.5 is below 1, reported before",
    ]
    assert result.best is not None and (result.best.index, result.best.value) == (0, 0.7)
    # hpo status names the trials that had reports refused.
    status = subprocess.run(
        [sys.executable, "-m", "hpo_operator", "status", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert "refused reports: s-0 5" in status.stdout, status.stdout
