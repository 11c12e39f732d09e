"""tests/cluster/binaries.py run as a script."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.cluster import binaries
from tests.support.cluster_binaries import fake_binaries


def test_as_a_script_it_prints_the_folder_or_the_error(tmp_path: Path) -> None:
    script = Path(binaries.__file__)
    mine = fake_binaries(tmp_path / "mine")
    found = subprocess.run([sys.executable, "-I", script], env={"HPO_K8S_BIN_DIR": str(mine)},
                           capture_output=True, text=True, check=True)  # fmt: skip
    assert found.stdout.strip() == str(mine)
    empty = tmp_path / "empty"
    empty.mkdir()
    missing = subprocess.run([sys.executable, "-I", script], env={"HPO_K8S_BIN_DIR": str(empty)},
                             capture_output=True, text=True)  # fmt: skip
    assert missing.returncode == 1 and "holds neither" in missing.stderr
