"""hpo run with training scripts that know nothing of hpo_trial (tests/fixtures/plain_trainer.py):
hyper-parameters given as flags through ${name}, the metric read from what the script prints, the
CSV file it writes or its TensorBoard event files. Pruning, the budget and the best work as with the
SDK; a run that exits 0 with nothing reported is Failed."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from hpo_operator.config import config_from_mapping
from hpo_operator.study import Study
from tests.fixtures.plain_trainer import score
from tests.support.hpo_cli import environment, hpo
from tests.support.local_study import assert_inside_budget, views

REPO = Path(__file__).resolve().parents[2]
PLAIN = str(REPO / "tests" / "fixtures" / "plain_trainer.py")
SCRIPTED = str(REPO / "tests" / "fixtures" / "scripted_trainer.py")

pytestmark = pytest.mark.timeout(120)


def write_config(tmp_path: Path, collector: dict[str, Any] | None, **settings: Any) -> tuple[Path, Any]:
    raw: dict[str, Any] = {
        "metric": "score",
        "maximum_resource": 4,
        "reduction_factor": 2,
        # Steps of 0.1: the command gets 0.3, never 0.30000000000000004.
        "hp_space": {"x": {"param_type": "quniform", "range": [0.0, 1.0, 0.1]}},
        **settings,
    }
    if collector is not None:
        raw["metrics_collector"] = collector
    path = tmp_path / "hpo_config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path, config_from_mapping(raw)


def run(tmp_path: Path, config: Path, budget: str, *command: str, timeout: float = 90) -> dict[str, Any]:
    done = hpo(
        "run", str(config), "--budget", budget, "--cpu-slots", "2", "--grace", "3s", "--poll", "0.05",
        "--out", str(tmp_path / "out"), "--", *command,
        timeout=timeout,
    )  # fmt: skip
    doc: dict[str, Any] = json.loads((tmp_path / "out" / "study.json").read_text())
    doc["exit"], doc["stderr"] = done.returncode, done.stderr
    return doc


def assert_best_is_the_best_at_r(doc: dict[str, Any], r: float) -> None:
    at_r = [t for t in doc["trials"] if any(rep["resource"] == r for rep in t["reports"])]
    assert at_r, "some trial trained to R"
    best = max(at_r, key=lambda t: (score(t["params"]["x"], int(r)), -t["index"]))
    assert doc["best"]["index"] == best["index"]
    assert doc["best"]["hyperparameters"] == best["params"]


def test_a_print_only_script_prunes_and_keeps_the_budget_as_with_the_sdk(tmp_path: Path) -> None:
    config, study_config = write_config(tmp_path, {"kind": "stdout"})
    doc = run(
        tmp_path, config, "8s",
        sys.executable, PLAIN, "--x", "${x}", "--epochs", "4", "--epoch-seconds", "0.15",
    )  # fmt: skip
    assert doc["exit"] == 0 and doc["state"] == "Succeeded", doc["stderr"][-2000:]
    assert_inside_budget(doc)
    assert doc["plan"]["rungs"] == [1, 2]

    for t in doc["trials"]:
        # Its flags carry its hyper-parameter as sampled; its reports are what it printed.
        argv = t["command"]
        assert argv[:3] == [sys.executable, "-m", "hpo_trial.collect"], argv
        assert argv[argv.index("--x") + 1] == repr(t["params"]["x"]) and len(repr(t["params"]["x"])) <= 3
        for report in t["reports"]:
            assert report["value"] == score(t["params"]["x"], int(report["resource"]))
            assert report["extra"] == {"loss": round(1 - report["value"], 6)}

    # Pruned exactly as the core decides from the reports, and each pruned trial's processes ended
    # on SIGTERM, within the grace period, not killed.
    replayed = Study(study_config, 2).rung_decisions(views(doc))
    pruned = [t for t in doc["trials"] if t["status"] == "Pruned"]
    assert pruned, "a study of this length prunes some trials"
    for t in pruned:
        decision = replayed[t["index"]][-1]
        assert not decision.promoted and t["pruned"]["rung"] == decision.rung, t["name"]
        assert t["exitCode"] == -signal.SIGTERM and not t["killed"], t["name"]
        assert t["endedAt"] - t["startedAt"] < 3.0 + 4 * 0.15 + 2.0, t["name"]
        assert t["processes"] == []
    assert_best_is_the_best_at_r(doc, 4)
    best = json.loads((tmp_path / "out" / "best.json").read_text())
    assert best["hyperparameters"] == doc["best"]["hyperparameters"]

    status = hpo("status", str(tmp_path / "out"))
    assert status.returncode == 0
    assert "other metrics, at each trial's last report:" in status.stdout
    assert f"{doc['best']['trial']} at 4: loss=" in status.stdout


def test_a_script_that_logs_lightning_csv_to_its_own_folder(tmp_path: Path) -> None:
    logs = "$(HPO_CHECKPOINT_DIR)/logs"
    collector = {"kind": "file", "path": f"{logs}/metrics.csv", "resource_offset": 1}
    config, _ = write_config(tmp_path, collector, metric="val_score")
    doc = run(
        tmp_path, config, "8s",
        sys.executable, PLAIN, "--x", "${x}", "--epochs", "4", "--epoch-seconds", "0.15", "--log", "csv",
        "--log-dir", logs,
    )  # fmt: skip
    assert doc["exit"] == 0 and doc["state"] == "Succeeded", doc["stderr"][-2000:]
    assert_inside_budget(doc)
    assert any(t["status"] == "Pruned" for t in doc["trials"])
    for t in doc["trials"]:
        folder = tmp_path / "out" / "trials" / t["name"] / "checkpoints" / "logs"
        if t["reports"]:
            assert (folder / "metrics.csv").is_file(), t["name"]  # each trial's own file
        # Lightning counts epochs from 0: the offset makes the first validation resource 1.
        assert [r["resource"] for r in t["reports"]] == list(range(1, len(t["reports"]) + 1))
        for report in t["reports"]:
            assert report["value"] == score(t["params"]["x"], int(report["resource"]))
    assert_best_is_the_best_at_r(doc, 4)


@pytest.mark.timeout(180)
def test_a_script_that_writes_tensorboard_event_files(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    pytest.importorskip("torch.utils.tensorboard")
    tb = "$(HPO_CHECKPOINT_DIR)/tb"
    config, _ = write_config(tmp_path, {"kind": "tensorboard", "path": tb}, maximum_resource=3)
    # Each trial imports torch for its SummaryWriter: seconds of start-up on a small machine.
    doc = run(
        tmp_path, config, "25s",
        sys.executable, PLAIN, "--x", "${x}", "--epochs", "3", "--epoch-seconds", "0.3",
        "--log", "tensorboard", "--log-dir", tb,
        timeout=150,
    )  # fmt: skip
    assert doc["exit"] == 0 and doc["state"] == "Succeeded", doc["stderr"][-2000:]
    assert_inside_budget(doc)
    reported = [t for t in doc["trials"] if t["reports"]]
    assert len(reported) >= 2
    for t in reported:
        for report in t["reports"]:
            assert report["value"] == score(t["params"]["x"], int(report["resource"]))
            assert report["extra"] == {"loss": round(1 - report["value"], 6)}
    assert_best_is_the_best_at_r(doc, 3)


def test_a_script_whose_metric_is_never_seen_fails_its_trials_and_the_study(tmp_path: Path) -> None:
    config, _ = write_config(tmp_path, {"kind": "stdout"})
    doc = run(
        tmp_path, config, "20s",
        sys.executable, PLAIN, "--x", "${x}", "--epochs", "2", "--log", "none",
    )  # fmt: skip
    assert doc["exit"] == 1 and doc["state"] == "Failed" and doc["best"] is None
    assert "trials failed" in doc["reason"]  # maxFailedTrials' default rule counts them
    failed = [t for t in doc["trials"] if t["status"] == "Failed"]
    assert len(failed) >= 3
    for t in failed:
        assert t["exitCode"] == 0 and t["reports"] == []
        assert t["reason"].startswith(
            "exited 0 without reporting score; the collector looked for output lines"
        )
        assert "score=<number>" in t["reason"]
        assert "reported nothing" in t["logTail"] and "finished epoch 2" in t["logTail"]
    status = hpo("status", str(tmp_path / "out"))
    assert "exited 0 without reporting score" in status.stdout


def test_without_a_collector_a_silent_trial_is_failed_too(tmp_path: Path) -> None:
    config, _ = write_config(tmp_path, None)
    doc = run(tmp_path, config, "20s", sys.executable, "-c", "print('trained, reported nothing')")
    assert doc["state"] == "Failed"
    # Each ended Failed, but those stopped when the study gave up on its failed trials.
    assert {t["status"] for t in doc["trials"]} <= {"Failed", "Stopped"}
    assert sum(t["status"] == "Failed" for t in doc["trials"]) >= 3
    assert doc["trials"][0]["reason"] == "exited 0 without reporting score"


def test_refused_reports_are_named_when_nothing_counted(tmp_path: Path) -> None:
    # Epochs counted from 0 without resource_offset: the only report is at resource 0.
    config, _ = write_config(tmp_path, {"kind": "stdout"}, maximum_resource=1)
    doc = run(tmp_path, config, "20s", sys.executable, "-c", "print('epoch=0 score=0.5')")
    reason = doc["trials"][0]["reason"]
    assert reason.startswith(
        "exited 0 without a report of score that counts (1 refused, the last: resource 0"
    )


def test_promote_a_paused_run_that_reported_pauses_and_a_resumed_one_that_did_not_fails(
    tmp_path: Path,
) -> None:
    # Every run sends the same one report at resource 1: the first run pauses at rung 1 with it, a
    # resumed run (from 1) adds nothing beyond where it started.
    config, _ = write_config(tmp_path, None, asha={"variant": "promote"})
    done = hpo(
        "run", str(config), "--budget", "8s", "--cpu-slots", "2", "--poll", "0.05",
        "--out", str(tmp_path / "out"), "--", sys.executable, SCRIPTED,
        env=environment(SCRIPT_REPORTS=json.dumps({"*": [[1, 0.5]]})),
    )  # fmt: skip
    doc = json.loads((tmp_path / "out" / "study.json").read_text())
    assert any(t["status"] == "Paused" for t in doc["trials"]), done.stderr[-2000:]
    resumed = [t for t in doc["trials"] if t["runs"] > 1]
    assert resumed, done.stderr[-2000:]
    for t in resumed:
        assert t["status"] == "Failed", t
        assert t["reason"] == "exited 0 without reporting score beyond resource 1, where it resumed"


def test_a_collector_file_that_every_trial_would_share_is_warned_about(tmp_path: Path) -> None:
    config, _ = write_config(tmp_path, {"kind": "file", "path": "logs/metrics.csv"})
    doc = run(tmp_path, config, "20s", "true")
    warning = "warning: metrics_collector.path 'logs/metrics.csv' is the same file for every trial"
    assert warning in doc["stderr"]
    config, _ = write_config(tmp_path, {"kind": "file", "path": "$(HPO_CHECKPOINT_DIR)/metrics.csv"})
    (tmp_path / "out").rename(tmp_path / "first")
    assert "warning" not in run(tmp_path, config, "20s", "true")["stderr"]
