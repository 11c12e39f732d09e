"""`hpo run` and `hpo status` refusing their arguments, in this process, before any trial starts
(tests/integration/test_cli_run.py runs them with real trials).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.fixtures import FAKE_TRAINER
from tests.support.hpo_cli import hpo_here, write_fake_config

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
