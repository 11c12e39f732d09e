"""Per-epoch checkpoints in the trial's checkpoint folder: ``epoch-0003.pt`` after three epochs."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

_NAME = re.compile(r"^epoch-(\d+)\.pt$")


class ResumeError(Exception):
    """The checkpoint asked for is missing or belongs to another configuration."""


def _by_epoch(folder: Path) -> dict[int, Path]:
    found = {}
    for path in folder.glob("epoch-*.pt"):
        match = _NAME.match(path.name)
        if match:
            found[int(match.group(1))] = path
    return found


def find(folder: Path, start: int | None) -> Path | None:
    """The checkpoint to resume from: epoch ``start`` when given (0: none), else the latest."""
    checkpoints = _by_epoch(folder)
    if start is None:
        return checkpoints[max(checkpoints)] if checkpoints else None
    if start == 0:
        return None
    if start not in checkpoints:
        have = ", ".join(str(e) for e in sorted(checkpoints)) or "none"
        raise ResumeError(f"no checkpoint of epoch {start} in {folder} to resume from (have: {have})")
    return checkpoints[start]


def discard_after(folder: Path, epoch: int) -> None:
    """Removes checkpoints later than ``epoch``, so a later restart never resumes an abandoned run."""
    for number, path in _by_epoch(folder).items():
        if number > epoch:
            path.unlink(missing_ok=True)


def save(folder: Path, epoch: int, state: dict[str, Any], keep: int) -> Path:
    """Writes atomically (a killed trial leaves the previous checkpoint intact), keeps the newest ``keep``."""
    path = folder / f"epoch-{epoch:04d}.pt"
    partial = path.with_suffix(".pt.partial")
    torch.save(state, partial)
    os.replace(partial, path)
    if keep > 0:
        for number, old in _by_epoch(folder).items():
            if number <= epoch - keep:
                old.unlink(missing_ok=True)
    return path


def load(path: Path) -> dict[str, Any]:
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    return state
