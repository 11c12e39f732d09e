"""The `hpo` command line as a subprocess, from the repository's root, with no GPU and no HPO_ variables
of the caller.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner, Result

from hpo_operator.cli import main

REPO = Path(__file__).resolve().parents[2]
HPO = [sys.executable, "-m", "hpo_operator"]


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HPO_", "FAKE_"))}
    # No GPU, whatever the machine has: the CPU slots are what these tests expect.
    env["CUDA_VISIBLE_DEVICES"] = ""
    return env | extra


def hpo(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*HPO, *args], capture_output=True, text=True, env=env or environment(), timeout=timeout, cwd=REPO
    )


def hpo_here(*args: str) -> Result:
    """The CLI in this process: for commands that start no trial."""
    return CliRunner().invoke(main, list(args), env={"CUDA_VISIBLE_DEVICES": ""})


def write_fake_config(folder: Path) -> Path:
    """An hpo_config.yaml for the fake trainer (tests/fixtures/fake_trainer.py): x in [0, 1], R = 4."""
    path = folder / "hpo_config.yaml"
    path.write_text(
        "metric: score\n"
        "maximum_resource: 4\n"
        "reduction_factor: 2\n"
        "hp_space:\n"
        "  x: {param_type: uniform, range: [0.0, 1.0]}\n"
    )
    return path
