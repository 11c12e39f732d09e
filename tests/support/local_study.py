"""A study of the fake trainer (tests/fixtures/fake_trainer.py) through the local backend, and checks of
its study.json.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from hpo_operator.config import BudgetSpec, config_from_mapping
from hpo_operator.local.document import StudyFile, TrialFile
from hpo_operator.local.runner import LocalRunner, RunOptions
from hpo_operator.local.slots import Slot
from hpo_operator.study import Study, TrialView
from hpo_operator.trials import Report, TrialPhase
from tests.fixtures import FAKE_TRAINER


def fake_config(max_resource: int = 4, eta: int = 2, **budget: Any) -> Any:
    """A study of the fake trainer. Budgets leave room for a slow start: each trial pays the
    interpreter's start-up before its first report."""
    config = config_from_mapping(
        {
            "metric": "score",
            "mode": "max",
            "maximum_resource": max_resource,
            "reduction_factor": eta,
            "hp_space": {"x": {"param_type": "uniform", "range": [0.0, 1.0]}},
        }
    )
    return replace(config, budget=BudgetSpec(**budget))


def run_study(
    tmp_path: Path,
    config: Any,
    *,
    slots: int = 2,
    grace: float = 1.0,
    poll: float = 0.05,
) -> tuple[Any, dict[str, Any]]:
    options = RunOptions(
        name="fake",
        command=(sys.executable, str(FAKE_TRAINER)),
        out_dir=tmp_path / "out",
        slots=tuple(Slot(i, None, 1) for i in range(slots)),
        grace=grace,
        poll=poll,
        config_summary={"metric": "score", "maximumResource": config.max_resource},
    )
    result = LocalRunner(Study(config, slots), options).run()
    doc = json.loads((options.out_dir / "study.json").read_text())
    return result, doc


def views(doc: dict[str, Any]) -> list[TrialView]:
    return [
        TrialView(
            t["index"],
            TrialPhase(t["status"]),
            tuple(Report(r["resource"], r["value"], r["time"]) for r in t["reports"]),
            t["startedAt"],
            params=t["params"],
        )
        for t in doc["trials"]
    ]


def assert_inside_budget(doc: dict[str, Any]) -> None:
    deadline = doc["deadline"]
    assert deadline is not None
    assert doc["finishedAt"] <= deadline
    assert doc["budget"]["finishedInsideSeconds"] == pytest.approx(deadline - doc["finishedAt"], abs=2e-3)
    assert doc["budget"]["finishedInsideSeconds"] > 0
    for t in doc["trials"]:
        assert t["endedAt"] is not None and t["endedAt"] <= deadline, t["name"]


def trial_file(status: str, reports: list[float], **fields: Any) -> TrialFile:
    """A trial of study.json (index 3, ``s-3``) with one report per resource in ``reports``."""
    base: dict[str, Any] = {
        "index": 3,
        "name": "s-3",
        "status": status,
        "reason": None,
        "params": {"x": 0.5},
        "slot": {"number": 0, "gpu": None, "threads": 1},
        "startedAt": 10.0,
        "endedAt": None,
        "pid": 4321,
        "exitCode": None,
        "killed": False,
        "runs": 1,
        "final": False,
        "command": ["train"],
        "rung": None,
        "pruned": None,
        "reports": [
            {"seq": k, "resource": r, "value": r / 10, "time": 10.0 + r, "extra": {}}
            for k, r in enumerate(reports)
        ],
        "refusedReports": 0,
        "refused": [],
        "processes": [],
        "log": "trials/s-3/log.txt",
        "logTail": None,
    }
    return TrialFile.model_validate(base | fields)


def study_doc(trials: list[TrialFile], **fields: Any) -> StudyFile:
    """A study.json of ``trials``: a 100 s budget of which 30 s used, interrupted."""
    base: dict[str, Any] = {
        "format": 1,
        "name": "s",
        "state": "Interrupted",
        "reason": "the runner died",
        "message": "",
        "error": None,
        "config": {},
        "command": ["train"],
        "slots": [],
        "graceSeconds": 1.0,
        "runner": None,
        "startedAt": 10.0,
        "deadline": 110.0,
        "finishedAt": 40.0,
        "updatedAt": 40.0,
        "plan": None,
        "budget": {
            "seconds": 100.0,
            "usedSeconds": 30.0,
            "stopMarginSeconds": 1.0,
            "finishedInsideSeconds": 70.0,
        },
        "counts": {"total": len(trials)},
        "best": None,
        "final": None,
        "trials": [t.model_dump(by_alias=True) for t in trials],
        "sessions": [{"startedAt": 10.0, "endedAt": None}],
    }
    return StudyFile.model_validate(base | fields)
