"""The reference trainer, run for real on digits with the tiny model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hpo_trial import env, reporting, train

pytestmark = pytest.mark.slow

TINY = ["--dataset", "digits", "--model", "tiny", "--threads", "1"]


def read_reports(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def checkpoint_epochs(folder: Path) -> list[int]:
    return sorted(int(p.stem.split("-")[1]) for p in folder.glob("epoch-*.pt"))


@pytest.fixture
def trial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A trial environment in tmp_path for in-process runs; the signal handlers are put back after."""
    for name in [v for k, v in vars(env).items() if k.startswith("HPO_")]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HPO_REPORT_FILE", str(tmp_path / "reports.jsonl"))
    monkeypatch.setenv("HPO_CHECKPOINT_DIR", str(tmp_path / "ckpt"))
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    yield tmp_path
    for signum, handler in handlers.items():
        signal.signal(signum, handler)


def run_in_process(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    monkeypatch.setattr(reporting, "_default", None)  # each run is a new trial process: seq from 0
    return train.main([*TINY, *args])


def subprocess_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HPO_")}
    environ.update(
        OMP_NUM_THREADS="1",
        HPO_REPORT_FILE=str(tmp_path / "reports.jsonl"),
        HPO_CHECKPOINT_DIR=str(tmp_path / "ckpt"),
        **extra,
    )
    return environ


def test_a_trial_reports_every_epoch_and_learns(tmp_path: Path) -> None:
    environ = subprocess_env(
        tmp_path,
        HPO_MAX_RESOURCE="3",
        HPO_METRIC="accuracy",
        HPO_HYPERPARAMETERS=json.dumps(
            {"learning_parameters.learning_rate": 0.05, "learning_parameters.batch_size": 64.0}
        ),
    )
    command = [sys.executable, "-m", "hpo_trial.train", *TINY]
    done = subprocess.run(command, env=environ, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    reports = read_reports(tmp_path / "reports.jsonl")
    assert [(r["seq"], r["resource"]) for r in reports] == [(0, 1), (1, 2), (2, 3)]
    assert all(0.0 <= r["value"] <= 1.0 for r in reports)
    assert reports[-1]["value"] > 0.5  # chance is 0.1
    assert reports[-1]["extra"]["metric"] == "accuracy"
    assert reports[-1]["extra"]["val_accuracy"] == reports[-1]["value"]
    assert "batch_size=64," in done.stderr and "learning_rate=0.05," in done.stderr
    assert checkpoint_epochs(tmp_path / "ckpt") == [2, 3]  # the newest two are kept


def test_a_resumed_trial_continues_exactly_where_it_stopped(
    trial: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run_in_process(monkeypatch, "--epochs", "2", "--checkpoint-dir", str(trial / "reference")) == 0
    reference = read_reports(trial / "reports.jsonl")
    (trial / "reports.jsonl").unlink()

    assert run_in_process(monkeypatch, "--epochs", "2", "--stop-after", "1") == 0
    monkeypatch.setenv("HPO_REPORT_FILE", str(trial / "resumed.jsonl"))
    assert run_in_process(monkeypatch, "--epochs", "2") == 0
    first = read_reports(trial / "reports.jsonl")
    resumed = read_reports(trial / "resumed.jsonl")
    assert [r["resource"] for r in first] == [1]
    assert [(r["seq"], r["resource"]) for r in resumed] == [(0, 2)]
    assert resumed[0]["value"] == reference[1]["value"]
    assert resumed[0]["extra"]["val_loss"] == pytest.approx(reference[1]["extra"]["val_loss"], rel=1e-6)
    assert checkpoint_epochs(trial / "ckpt") == [1, 2]


def test_start_resource_resumes_from_that_epoch_and_drops_later_checkpoints(
    trial: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run_in_process(monkeypatch, "--epochs", "2", "--keep-checkpoints", "0") == 0
    reference = read_reports(trial / "reports.jsonl")
    assert checkpoint_epochs(trial / "ckpt") == [1, 2]

    monkeypatch.setenv("HPO_START_RESOURCE", "1")
    monkeypatch.setenv("HPO_REPORT_FILE", str(trial / "promoted.jsonl"))
    assert run_in_process(monkeypatch, "--epochs", "2", "--stop-after", "1") == 0
    assert checkpoint_epochs(trial / "ckpt") == [1]  # epoch 2 of the earlier run is gone
    assert read_reports(trial / "promoted.jsonl") == []

    assert run_in_process(monkeypatch, "--epochs", "2") == 0
    promoted = read_reports(trial / "promoted.jsonl")
    assert [r["resource"] for r in promoted] == [2]
    assert promoted[0]["extra"]["val_loss"] == pytest.approx(reference[1]["extra"]["val_loss"], rel=1e-6)


def test_a_missing_start_checkpoint_is_a_configuration_error(
    trial: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HPO_START_RESOURCE", "3")
    assert run_in_process(monkeypatch, "--epochs", "4") == 2
    assert read_reports(trial / "reports.jsonl") == []


def test_the_loss_metric_reports_validation_loss(trial: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HPO_METRIC", "loss")
    assert run_in_process(monkeypatch, "--epochs", "1") == 0
    (only,) = read_reports(trial / "reports.jsonl")
    assert only["value"] == only["extra"]["val_loss"] > 0


@pytest.mark.parametrize(
    ("variable", "value"),
    [("HPO_METRIC", "mAP"), ("HPO_HYPERPARAMETERS", '{"learning_rate": -1}'), ("HPO_MAX_RESOURCE", "x")],
)
def test_configuration_errors_exit_with_2_before_training(
    trial: Path, monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    assert run_in_process(monkeypatch) == 2
    assert not (trial / "ckpt").exists() or checkpoint_epochs(trial / "ckpt") == []


def test_sigterm_stops_the_trial_after_the_current_batch(tmp_path: Path) -> None:
    reports_path = tmp_path / "reports.jsonl"
    process = subprocess.Popen(
        [sys.executable, "-m", "hpo_trial.train", *TINY, "--epochs", "200"],
        env=subprocess_env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while not read_reports(reports_path):
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline, "no report within 90 s"
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert time.monotonic() - stopped_at < 10
    assert "stopped by SIGTERM" in stderr
    reports = read_reports(reports_path)
    assert 1 <= len(reports) < 200
    assert checkpoint_epochs(tmp_path / "ckpt")[-1] == reports[-1]["resource"]


def test_stop_resource_pauses_a_run_and_start_resource_resumes_it(
    trial: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ASHA's promote variant: pause at rung 1, resume from it and pause again at rung 2.
    monkeypatch.setenv("HPO_STOP_RESOURCE", "1")
    assert run_in_process(monkeypatch, "--epochs", "3") == 0
    assert [r["resource"] for r in read_reports(trial / "reports.jsonl")] == [1]
    monkeypatch.setenv("HPO_START_RESOURCE", "1")
    monkeypatch.setenv("HPO_STOP_RESOURCE", "2")
    monkeypatch.setenv("HPO_REPORT_FILE", str(trial / "promoted.jsonl"))
    assert run_in_process(monkeypatch, "--epochs", "3") == 0
    assert [r["resource"] for r in read_reports(trial / "promoted.jsonl")] == [2]
    assert checkpoint_epochs(trial / "ckpt") == [1, 2]


def test_the_trainer_ends_without_the_interpreter_teardown_and_keeps_its_last_output(tmp_path: Path) -> None:
    # An exit hook stands for the teardown (torch's unloading): it must not run, while the reports
    # and the last log line, written before the exit, must all be there.
    marker = tmp_path / "teardown-ran"
    program = (
        "import atexit, pathlib, runpy, sys\n"
        f"atexit.register(pathlib.Path({str(marker)!r}).write_text, 'ran')\n"
        f"sys.argv = ['train', *{[*TINY, '--epochs', '2']!r}]\n"
        "runpy.run_module('hpo_trial.train', run_name='__main__')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program],
        env=subprocess_env(tmp_path, HPO_MAX_RESOURCE="2"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert not marker.exists()
    assert [r["resource"] for r in read_reports(tmp_path / "reports.jsonl")] == [1, 2]
    assert done.stderr.rstrip().splitlines()[-1].split(": ", 1)[1].startswith("epoch 2/2:")
