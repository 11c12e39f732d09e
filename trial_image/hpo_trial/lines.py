"""Bytes appended to a file, cut into whole lines.

A writer appends a line in pieces; the bytes after the last newline wait for the rest of their
line. Once the writer is gone (``final``) they are as whole as they will ever be: a trainer killed
mid-line leaves a last line without its newline. Both readers of appended files use it: the
metrics collector (collect.py) and `hpo run`'s report reader.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class LineTail:
    """Where a reader stands in a file: ``offset`` bytes read, ``partial`` the unfinished line."""

    offset: int = 0
    partial: bytes = b""

    def lines(self, data: bytes, final: bool = False) -> list[bytes]:
        """The whole lines that ``data``, read at ``offset``, completes (blank ones included)."""
        self.offset += len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        if final and self.partial.strip():
            lines.append(self.partial)
            self.partial = b""
        return lines
