"""The local backend with real subprocess trials (tests/fixtures/fake_trainer.py).

The fake trainer's value is a known function of its parameter ``x`` and the epoch, and each epoch
sleeps a little, so a study takes seconds and every outcome can be checked against the core.
"""

from __future__ import annotations

import json
import math
import signal
import sys
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from hpo_operator.config import BudgetSpec, config_from_mapping
from hpo_operator.local.reports import ReportReader
from hpo_operator.local.runner import LocalRunner, RunOptions
from hpo_operator.local.slots import Slot, detect_gpus, make_slots
from hpo_operator.local.supervision import LocalTrial
from hpo_operator.study import PruneTrial, Study, TrialView
from hpo_operator.trials import Report, TrialPhase
from tests.fixtures import FAKE_TRAINER
from tests.fixtures.fake_trainer import CRASH_EXIT_CODE, score

pytestmark = pytest.mark.timeout(60)


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


def test_a_study_finishes_inside_its_budget_and_prunes_exactly_as_the_core_decides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_EPOCH_SECONDS", "0.15")
    config = fake_config(max_resource=4, eta=2, deadline=6.0)
    result, doc = run_study(tmp_path, config)

    assert result.state == "Succeeded" and result.exit_code == 0
    # It runs until the deadline, or until no trial could reach its first rung before it.
    assert doc["reason"] in ("deadline", "no time for another trial")
    assert_inside_budget(doc)
    assert doc["plan"]["rungs"] == [1, 2]

    # Replaying every recorded report through the core prunes the same trials at the same rungs.
    study = Study(config, 2)
    assert list(study.rungs) == doc["plan"]["rungs"]
    replayed = study.rung_decisions(views(doc))
    pruned_by_runner = {t["index"]: t["pruned"] for t in doc["trials"] if t["status"] == "Pruned"}
    assert pruned_by_runner, "a study of this length prunes some trials"
    for t in doc["trials"]:
        if t["status"] == "Stopped":
            continue  # stopped at the deadline: reports sent while stopping came after the last decision
        decisions = replayed.get(t["index"], [])
        core_pruned = decisions and not decisions[-1].promoted
        if t["index"] in pruned_by_runner:
            assert core_pruned, t["name"]
            d = decisions[-1]
            assert pruned_by_runner[t["index"]] == {
                "rung": d.rung,
                "resource": d.resource,
                "value": d.value,
                "cutoff": d.cutoff,
            }
        else:
            assert not core_pruned, t["name"]

    # Values are the fake trainer's function of x and the epoch; the best is the best at R.
    for t in doc["trials"]:
        for r in t["reports"]:
            assert r["value"] == score(t["params"], int(r["resource"]))
    at_r = [t for t in doc["trials"] if any(r["resource"] == 4 for r in t["reports"])]
    best = max(at_r, key=lambda t: (score(t["params"], 4), -t["index"]))
    assert doc["best"]["index"] == best["index"]
    assert doc["best"]["hyperparameters"] == best["params"]
    assert json.loads((tmp_path / "out" / "best.json").read_text())["hyperparameters"] == best["params"]


def test_trials_get_the_trial_environment_and_write_logs(tmp_path: Path) -> None:
    config = fake_config(max_resource=3, deadline=4.0)
    _, doc = run_study(tmp_path, config)
    out = tmp_path / "out"
    reported = [t for t in doc["trials"] if t["reports"]]  # a trial stopped at start wrote nothing
    assert len(reported) >= 2
    for t in reported:
        folder = out / "trials" / t["name"]
        env = json.loads((folder / "checkpoints" / "env.json").read_text())
        assert env["HPO_STUDY"] == "fake"
        assert env["HPO_TRIAL"] == f"fake-{t['index']}" == t["name"]
        assert json.loads(env["HPO_HYPERPARAMETERS"]) == t["params"]
        assert env["HPO_METRIC"] == "score"
        assert env["HPO_MAX_RESOURCE"] == "3"
        assert env["HPO_REPORT_FILE"] == str((folder / "reports.jsonl").resolve())
        assert env["HPO_CHECKPOINT_DIR"] == str((folder / "checkpoints").resolve())
        assert env["CUDA_VISIBLE_DEVICES"] == "" and env["OMP_NUM_THREADS"] == "1"
        assert t["log"] == f"trials/{t['name']}/log.txt"
        assert f"{t['name']}: training with" in (out / t["log"]).read_text()
    assert doc["trials"][0]["params"] == {"x": 0.5}  # trial 0 takes the defaults


def test_a_crashing_trial_is_failed_with_its_exit_code_and_log_and_the_study_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Trial 0 is the first at rung 0, so it always continues there: it crashes, never pruned.
    monkeypatch.setenv("FAKE_CRASH_TRIALS", "0")
    result, doc = run_study(tmp_path, fake_config(max_resource=3, deadline=4.0))
    crashed = doc["trials"][0]
    assert crashed["status"] == "Failed"
    assert crashed["exitCode"] == CRASH_EXIT_CODE
    assert crashed["reason"] == f"exit code {CRASH_EXIT_CODE}"
    assert "simulated crash: out of memory" in crashed["logTail"]
    assert len(crashed["reports"]) == 1  # what it reported before crashing is kept
    assert len(doc["trials"]) > 2 and doc["counts"]["failed"] == 1
    assert result.state == "Succeeded" and doc["best"] is not None
    assert_inside_budget(doc)


def test_a_trial_that_ignores_sigterm_is_killed_after_the_grace_period_before_the_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_IGNORE_SIGTERM", "1")
    # An epoch longer than the grace period: a trial stopped at a rung cannot finish on its own.
    monkeypatch.setenv("FAKE_EPOCH_SECONDS", "0.4")
    _, doc = run_study(tmp_path, fake_config(deadline=7.0), grace=0.2)
    # Trials that reported had set SIGTERM aside; one stopped while starting up may die of SIGTERM.
    ended_by_us = [t for t in doc["trials"] if t["status"] in ("Pruned", "Stopped") and t["reports"]]
    assert ended_by_us
    for t in ended_by_us:
        # Killed after the grace period, unless its last epoch ended on its own within the grace.
        finished = t["exitCode"] == 0 and max(r["resource"] for r in t["reports"]) == 4
        assert (t["killed"] and t["exitCode"] == -signal.SIGKILL) or finished, t["name"]
    assert any(t["killed"] for t in ended_by_us)
    assert_inside_budget(doc)


def test_a_long_grace_is_cut_short_at_the_deadline_so_the_margin_stays_small(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_IGNORE_SIGTERM", "1")
    monkeypatch.setenv("FAKE_EPOCH_SECONDS", "0.6")
    # A grace longer than the budget, and trials of 9 epochs (5.4 s) that ignore SIGTERM: the two
    # started after the first two cannot end by themselves before the deadline, pruned or not, so
    # they are killed, which must still happen before it.
    _, doc = run_study(tmp_path, fake_config(max_resource=9, deadline=10.0), grace=30.0, poll=0.05)
    assert doc["budget"]["stopMarginSeconds"] == pytest.approx(1.0 + 3 * 0.05 + 0.5)
    killed = [t for t in doc["trials"] if t["killed"]]
    summary = [(t["name"], t["status"], t["killed"], t["exitCode"], len(t["reports"])) for t in doc["trials"]]
    assert killed and all(t["exitCode"] == -signal.SIGKILL for t in killed), summary
    assert all(t["status"] in ("Pruned", "Stopped") for t in killed)
    assert_inside_budget(doc)
    # Killed in the last seconds, not 30 s (the grace) before a 6 s deadline.
    assert all(t["endedAt"] > doc["deadline"] - 2.0 for t in killed)


def test_the_stop_margin_keeps_at_most_one_second_of_grace() -> None:
    def margin(grace: float) -> float:
        return RunOptions("s", ("true",), Path("out"), (), grace=grace, poll=0.2).stop_margin

    assert margin(5.0) == pytest.approx(1.0 + 0.6 + 0.5)
    assert margin(0.3) == pytest.approx(0.3 + 0.6 + 0.5)


def test_without_a_budget_the_first_trial_measures_one_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_EPOCH_SECONDS", "0.3")
    result, doc = run_study(tmp_path, fake_config(max_resource=5, time_ratio=3.0), grace=0.2)
    first = doc["trials"][0]
    t1, t2 = sorted(r["time"] for r in first["reports"])[:2]
    # Trial 0 ran alone until its first two reports, which sized the budget: 3 x one training,
    # its start-up once plus 5 epochs at the rate between the two reports.
    assert all(t["startedAt"] >= t2 for t in doc["trials"][1:])
    assert len(doc["trials"]) > 1
    epoch = t2 - t1
    startup = max(0.0, t1 - first["startedAt"] - epoch)
    assert doc["budget"]["seconds"] == pytest.approx(3.0 * (startup + 5 * epoch), rel=0.02, abs=0.01)
    assert result.state == "Succeeded"
    assert_inside_budget(doc)


# --- the parts, without processes ---------------------------------------------------------------


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
