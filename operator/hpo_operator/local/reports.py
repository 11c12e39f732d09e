"""A trial's report file, read as it grows: one JSON object a line (the trial contract), read by
the trial layer's rules (trials.parse_report; the first of each ``(seq, time)``). A line that is
no report is kept, with why, for study.json."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpo_trial.lines import LineTail

from ..trials import ReportKeys, parse_report


@dataclass
class ReportReader:
    """Reads a trial's report file incrementally; keeps the first report of each ``(seq, time)``
    (a retry repeats both; a second process of the same trial starts ``seq`` again at new times)."""

    path: Path
    tail: LineTail = field(default_factory=LineTail)
    reports: list[dict[str, Any]] = field(default_factory=list)
    keys: ReportKeys = field(default_factory=ReportKeys)
    rejected: list[str] = field(default_factory=list)

    def read(self, final: bool = False) -> list[dict[str, Any]]:
        """New valid reports since the last read. ``final``: the writer is gone, so a last line
        without its newline is complete as far as it will ever be."""
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.tail.offset)
                data = handle.read()
        except FileNotFoundError:
            return []
        new = []
        for line in self.tail.lines(data, final):
            if not line.strip():
                continue
            report = self._parse(line)
            if report is None or not self.keys.first(report):
                continue
            self.reports.append(report)
            new.append(report)
        return new

    def _parse(self, line: bytes) -> dict[str, Any] | None:
        try:
            raw = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            self.rejected.append(f"not JSON: {line[:200]!r}")
            return None
        report = parse_report(raw)
        if isinstance(report, str):
            self.rejected.append(f"{report}: {line[:200]!r}")
            return None
        return report
