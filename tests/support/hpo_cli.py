"""The `hpo` command line as a subprocess, from the repository's root, with no GPU and no HPO_ variables
of the caller.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
