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
