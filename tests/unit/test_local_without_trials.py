"""The local backend's parts that need no trial process: the stop margin, the report reader, slots and GPUs,
the log of a tie (tests/integration/test_local.py runs real trials).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from hpo_operator.local.reports import ReportReader
from hpo_operator.local.runner import LocalRunner, RunOptions
from hpo_operator.local.slots import Slot, detect_gpus, make_slots
from hpo_operator.local.supervision import LocalTrial
from hpo_operator.study import PruneTrial, Study
from hpo_operator.trials import TrialPhase
from tests.fixtures import FAKE_TRAINER
from tests.support.local_study import fake_config

pytestmark = pytest.mark.timeout(60)


def test_the_stop_margin_keeps_at_most_one_second_of_grace() -> None:
    def margin(grace: float) -> float:
        return RunOptions("s", ("true",), Path("out"), (), grace=grace, poll=0.2).stop_margin

    assert margin(5.0) == pytest.approx(1.0 + 0.6 + 0.5)
    assert margin(0.3) == pytest.approx(0.3 + 0.6 + 0.5)


def test_the_report_reader_keeps_the_first_of_each_seq_and_waits_for_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "reports.jsonl"
    reader = ReportReader(path)
    assert reader.read() == []  # no file yet
    first = {"seq": 0, "resource": 1, "value": 0.5, "time": 10.0, "extra": {"loss": 1.2}}
    line = json.dumps(first)
    path.write_text(line[:20])
    assert reader.read() == []  # half a line: not yet
    with path.open("a") as f:
        f.write(line[20:] + "\n")
        f.write(json.dumps({**first, "value": 0.9}) + "\n")  # a retried seq 0: the first one wins
        f.write("not json\n")
        f.write(json.dumps({"seq": 1, "resource": 2, "value": None, "time": 11.0}) + "\n")
        f.write(json.dumps({"seq": 2, "resource": "3", "value": 1, "time": 12.0}) + "\n")
        f.write('{"seq": 5, "resource": 2, "value": NaN, "time": 11.5}\n')  # Python's json.dumps
        f.write('{"seq": 6, "resource": 2, "value": -Infinity, "time": 11.6}\n')
    new = reader.read()
    assert [r["seq"] for r in new] == [0, 1, 5, 6]
    assert new[0]["value"] == 0.5 and new[0]["extra"] == {"loss": 1.2}
    assert [r["value"] for r in new[1:]] == [None, None, None]  # not finite: the worst value
    assert len(reader.rejected) == 2
    with path.open("a") as f:
        f.write(json.dumps({"seq": 3, "resource": 4, "value": 0.7, "time": 13.0}))  # killed mid-line
    assert reader.read() == []
    assert [r["seq"] for r in reader.read(final=True)] == [3]
    # A second process of the same trial counts seq from 0 again, at new times: kept.
    with path.open("a") as f:
        f.write(json.dumps({"seq": 0, "resource": 5, "value": 0.8, "time": 20.0}) + "\n")
    assert [(r["seq"], r["resource"]) for r in reader.read()] == [(0, 5)]


def test_a_report_of_null_is_the_worst_value_for_the_core(tmp_path: Path) -> None:

    reader = ReportReader(tmp_path / "r.jsonl")
    trial = LocalTrial(0, "s-0", {}, Slot(0, None, 1), tmp_path, reader, started_at=0.0)
    assert trial.take({"seq": 0, "resource": 1, "value": None, "time": 1.0, "extra": {}}, 4) is None
    assert math.isnan(trial.view().reports[0].value)


def test_slots_one_trial_per_gpu_or_cpu_slots() -> None:
    gpu = make_slots("auto", None, cores=16, detected=["0", "1"])
    assert [(s.gpu, s.threads) for s in gpu] == [("0", 8), ("1", 8)]
    assert [s.gpu for s in make_slots("1", None, cores=16, detected=["0", "1"])] == ["0"]
    cpu = make_slots("0", None, cores=2, detected=["0"])
    assert [(s.gpu, s.threads) for s in cpu] == [(None, 1), (None, 1)]
    assert len(make_slots("auto", None, cores=32, detected=[])) == 8
    assert [s.threads for s in make_slots("auto", 2, cores=8, detected=[])] == [4, 4]
    with pytest.raises(ValueError, match="more GPUs than the 1 found"):
        make_slots("2", None, cores=2, detected=["0"])
    with pytest.raises(ValueError, match="--gpus must be"):
        make_slots("many", None, cores=2, detected=[])


@pytest.mark.parametrize(
    ("visible", "gpus"),
    [("2,3", ["2", "3"]), ("GPU-abc", ["GPU-abc"]), ("-1", []), ("", []), ("0,-1,1", ["0"])],
)
def test_cuda_visible_devices_narrows_the_gpus(visible: str, gpus: list[str]) -> None:
    assert detect_gpus({"CUDA_VISIBLE_DEVICES": visible}) == gpus


def test_a_pruned_trial_whose_value_equals_the_cutoff_is_logged_as_a_tie(tmp_path: Path) -> None:
    lines: list[str] = []

    class Lines:
        def log(self, message: str) -> None:
            lines.append(message)

        def update(self, document: Mapping[str, Any]) -> None: ...

        def close(self) -> None: ...

    config = fake_config(max_resource=4, eta=2, deadline=6.0)
    options = RunOptions(
        name="fake", command=(sys.executable, str(FAKE_TRAINER)), out_dir=tmp_path / "out",
        slots=(Slot(0, None, 1),), grace=1.0, poll=0.05, config_summary={"metric": "score"},
    )  # fmt: skip
    runner = LocalRunner(Study(config, 1), options, progress=Lines())
    for index in (0, 1):
        runner.trials[index] = LocalTrial(
            index, f"fake-{index}", {"x": 0.5}, Slot(0, None, 1), tmp_path, ReportReader(tmp_path / "r"), 0.0
        )
    runner._prune(PruneTrial(0, 0, 1, 0.9, 0.9))
    runner._prune(PruneTrial(1, 0, 1, 0.8, 0.9))
    assert lines == [
        "fake-0 pruned at rung 0 (resource 1): score 0.9, cut-off 0.9"
        " (a tie: the value recorded first continues)",
        "fake-1 pruned at rung 0 (resource 1): score 0.8, cut-off 0.9",
    ]
    assert runner.trials[0].status is TrialPhase.PRUNED
