"""Unit tests start no process: a test that needs one (a trial, `hpo` as a command, helm) belongs in
tests/integration. Every unit test runs with process creation refused."""

from __future__ import annotations

import os
import subprocess
from typing import Any

import pytest

REFUSED = "a unit test starts no process (tests/README.md): this one belongs in tests/integration"


def _refuse(*_: Any, **__: Any) -> Any:
    raise AssertionError(REFUSED)


@pytest.fixture(autouse=True)
def no_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subprocess.Popen, "_execute_child", _refuse)
    for name in ("fork", "forkpty", "posix_spawn", "posix_spawnp", "system"):
        if hasattr(os, name):
            monkeypatch.setattr(os, name, _refuse)
