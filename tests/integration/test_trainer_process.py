"""The reference trainer as a trial process: its reports, SIGTERM, and its end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.trainer import TINY, checkpoint_epochs, read_reports


def subprocess_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HPO_")}
    environ.update(
        OMP_NUM_THREADS="1",
        HPO_REPORT_FILE=str(tmp_path / "reports.jsonl"),
        HPO_CHECKPOINT_DIR=str(tmp_path / "ckpt"),
        **extra,
    )
    return environ


pytestmark = pytest.mark.slow


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
