"""The reference trainer (hpo_trial.train) on digits with the tiny model: its arguments, and what a run
leaves behind (reports, checkpoints)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TINY = ["--dataset", "digits", "--model", "tiny", "--threads", "1"]


def read_reports(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def checkpoint_epochs(folder: Path) -> list[int]:
    return sorted(int(p.stem.split("-")[1]) for p in folder.glob("epoch-*.pt"))
