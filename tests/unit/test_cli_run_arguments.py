"""`hpo run` and `hpo status` refusing their arguments, in this process, before any trial starts
(tests/integration/test_cli_run.py runs them with real trials).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from hpo_operator.local.resume import RunFlags, RunRecord, write_run_record
from tests.fixtures import FAKE_TRAINER
from tests.support.hpo_cli import hpo_here, write_fake_config
from tests.support.local_study import study_doc, trial_file

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def fake_config(tmp_path: Path) -> Path:
    return write_fake_config(tmp_path)


def test_a_budget_smaller_than_one_training_exits_2_before_starting(
    tmp_path: Path, fake_config: Path
) -> None:
    out = tmp_path / "run"
    done = hpo_here(
        "run", str(fake_config), "--train-time", "60", "--time-ratio", "1", "--out", str(out),
        "--", sys.executable, str(FAKE_TRAINER),
    )  # fmt: skip
    assert done.exit_code == 2
    assert "too small for even one full training" in done.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--budget", "1m", "--", "no-such-trainer-command"], "is not on PATH"),
        (["--budget", "1m", "--time-ratio", "2", "--", "true"], "either --budget or --time-ratio"),
        (["--budget", "1m", "--gpus", "2", "--", "true"], "asks for more GPUs than the 0 found"),
        (["--budget", "1m", "--name", "no/slash", "--", "true"], "--name 'no/slash'"),
    ],
)
def test_bad_run_arguments_exit_2_with_the_reason(
    tmp_path: Path, fake_config: Path, args: list[str], message: str
) -> None:
    done = hpo_here("run", str(fake_config), "--out", str(tmp_path / "run"), *args)
    assert done.exit_code == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_status_of_a_folder_without_a_study_exits_2(tmp_path: Path) -> None:
    done = hpo_here("status", str(tmp_path))
    assert done.exit_code == 2 and "cannot read" in done.stderr
    done = hpo_here("status", "no-such-study")
    assert done.exit_code == 2 and "no such study folder" in done.stderr


# --- hpo run --resume ----------------------------------------------------------------------------


@pytest.fixture
def recorded_study(tmp_path: Path, fake_config: Path) -> Path:
    """A study folder as `hpo run` leaves it when killed: run.json, the config's copy, study.json
    (30 s of a 100 s budget used, one trial interrupted)."""
    folder = tmp_path / "study"
    flags = RunFlags(budget=100.0, cpu_slots=1, grace=0.5, poll=0.05)
    record = RunRecord(
        format=1,
        name="s",
        command=[sys.executable, str(FAKE_TRAINER)],
        cwd=str(tmp_path),
        config_path=str(fake_config),
        flags=flags,
    )
    write_run_record(folder, record, fake_config.read_text())
    doc = study_doc([trial_file("Stopped", [1], reason="the runner died", endedAt=40.0)])
    (folder / "study.json").write_text(json.dumps(doc.model_dump(by_alias=True)))
    return folder


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-resource", "8"], "--max-resource: a resumed study keeps the settings it was started with"),
        (["--final-training", "--name", "x"], "--name, --final-training: a resumed study keeps"),
        (["--budget", "20s"], "--budget 20s is not more than the 30s the study has used"),
        (["--budget", "+1m", "--time-ratio", "3"], "either --budget or --time-ratio"),
        (["--", "python", "other.py"], "python: no such config file (with --resume, a trial command"),
    ],
)
def test_a_resume_that_would_change_the_study_exits_2_naming_why(
    recorded_study: Path, args: list[str], message: str
) -> None:
    before = (recorded_study / "study.json").read_text()
    done = hpo_here("run", "--resume", str(recorded_study), *args)
    assert done.exit_code == 2, done.output
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert (recorded_study / "study.json").read_text() == before  # nothing ran


def test_a_config_that_differs_from_the_studys_is_refused_naming_each_difference(
    tmp_path: Path, recorded_study: Path
) -> None:
    other = tmp_path / "other.yaml"
    other.write_text(
        "metric: loss\nmode: min\nmaximum_resource: 4\nreduction_factor: 2\n"
        "hp_space:\n  x: {param_type: uniform, range: [0.0, 2.0]}\n"
    )
    done = hpo_here("run", "--resume", str(recorded_study), str(other))
    assert done.exit_code == 2
    assert "differs from the study's config" in done.stderr
    assert "metric: 'loss' given, 'score' in the study" in done.stderr
    assert "mode: 'min' given, 'max' in the study" in done.stderr
    assert "hp_space.x: " in done.stderr
    done = hpo_here("run", "--resume", str(recorded_study), str(other), "--", "python", "other.py")
    assert done.exit_code == 2 and "differs from the study's config" in done.stderr


def test_a_trial_command_that_differs_from_the_studys_is_refused(
    recorded_study: Path, fake_config: Path
) -> None:
    done = hpo_here("run", "--resume", str(recorded_study), str(fake_config), "--", "python", "other.py")
    assert done.exit_code == 2
    assert 'the trial command differs from the study\'s: ["python", "other.py"] given' in done.stderr


def test_resume_of_a_folder_without_a_study_and_plus_budget_without_resume_exit_2(
    tmp_path: Path, fake_config: Path
) -> None:
    done = hpo_here("run", "--resume", str(tmp_path / "none"))
    assert done.exit_code == 2 and "no such study folder" in done.stderr
    done = hpo_here("run", "--resume", str(tmp_path))
    assert done.exit_code == 2 and "holds no run.json" in done.stderr
    done = hpo_here("run", str(fake_config), "--budget", "+5m", "--", "true")
    assert done.exit_code == 2 and "use it with --resume DIR" in done.stderr
    done = hpo_here("run", str(fake_config))
    assert done.exit_code == 2 and "give the trial command after --" in done.stderr
