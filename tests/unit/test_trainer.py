"""The reference trainer, run in this process on digits with the tiny model
(tests/integration/test_trainer_process.py runs it as a trial process)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpo_trial import env, reporting, train
from tests.support.trainer import TINY, checkpoint_epochs, read_reports

pytestmark = pytest.mark.slow


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
