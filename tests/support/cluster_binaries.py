"""Stand-ins for the control plane's binaries, for tests of tests/cluster/binaries.py."""

from __future__ import annotations

from pathlib import Path

from tests.cluster import binaries


def fake_binaries(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for name in binaries.KUBE_BINARIES:
        (folder / name).write_text("#!/bin/sh\n")
        (folder / name).chmod(0o755)
    return folder
