"""Checks of what `hpo plot` draws: the PNG it writes, and the trials' lines of its figure."""

from __future__ import annotations

import struct
from pathlib import Path

from matplotlib.figure import Figure

# 14 x 5.5 inches at 110 dpi (plot.py).
PNG_SIZE = (1540, 605)


def png_size(path: Path) -> tuple[int, int]:
    """The width and height a PNG's header gives; fails unless the file is a PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def trial_lines(figure: Figure) -> list[str]:
    """The ids of the trials' learning curves (plot.trial_gid), in the order drawn."""
    left = figure.axes[0]
    return [str(line.get_gid()) for line in left.get_lines() if str(line.get_gid()).startswith("trial:")]
