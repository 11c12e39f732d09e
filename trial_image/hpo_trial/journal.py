"""The report journal: every report of the trial, one JSON line each, appended to
``$HPO_CHECKPOINT_DIR/reports.jsonl``, so the full learning curve outlives the thinned HPOTrial
status (sending.py) on the trial's own volume.

Best effort: lines are written by a thread of their own, a few together, so a slow volume never
holds up training; a line that finds 10,000 waiting is dropped, and a failure to write is logged
once and never raised.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hpo_trial import env

log = logging.getLogger("hpo_trial")

JOURNAL_NAME = "reports.jsonl"
#: Seconds the writer waits for more lines before it appends what it has.
JOURNAL_INTERVAL = 1.0
#: Lines waiting at most; more are dropped (counted, logged once).
MAX_JOURNAL_LINES = 10_000


class ReportJournal:
    """Appends reports to a JSON-lines file from a thread of its own."""

    def __init__(
        self, path: Path, *, interval: float = JOURNAL_INTERVAL, max_lines: int = MAX_JOURNAL_LINES
    ) -> None:
        self.path = path
        self.interval = interval
        self._max_lines = max_lines
        self._cond = threading.Condition(threading.RLock())  # RLock: a signal handler may flush
        self._lines: deque[Mapping[str, Any]] = deque()
        self._writing = 0
        self._flushing = 0
        self._warned = False
        self.dropped = 0
        self.failed = 0
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ReportJournal | None:
        """The journal in ``HPO_CHECKPOINT_DIR``, or None where it is not set."""
        raw = (os.environ if environ is None else environ).get(env.HPO_CHECKPOINT_DIR, "").strip()
        return cls(Path(raw) / JOURNAL_NAME) if raw else None

    def append(self, report: Mapping[str, Any]) -> None:
        """Queues one report for the file; never waits, never raises."""
        with self._cond:
            if len(self._lines) >= self._max_lines:
                self.dropped += 1
                self._warn_once("more than %d reports waiting", self._max_lines)
                return
            self._lines.append(report)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="hpo-report-journal", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Waits until the lines queued now are written (or failed), at most ``timeout`` seconds."""
        if os.getpid() != self._pid:
            return True  # a forked child's copy has no writer: the lines are the parent's
        with self._cond:
            self._flushing += 1
            self._cond.notify_all()
            try:
                return self._cond.wait_for(lambda: not self._lines and not self._writing, timeout)
            finally:
                self._flushing -= 1

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._lines))
                # A few lines together: one open and one write for a trainer reporting every step.
                self._cond.wait_for(lambda: self._flushing > 0, self.interval)
                lines = list(self._lines)
                self._lines.clear()
                self._writing = len(lines)
            try:
                self._write(lines)
            finally:
                with self._cond:
                    self._writing = 0
                    self._cond.notify_all()

    def _write(self, lines: list[Mapping[str, Any]]) -> None:
        try:
            text = "".join(json.dumps(line, allow_nan=False) + "\n" for line in lines)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as handle:  # opened per write: may be rotated
                handle.write(text)
        except Exception as exc:  # best effort: the status and the log still hold the reports
            with self._cond:
                self.failed += len(lines)
                self._warn_once("cannot append to it: %s", exc)

    def _warn_once(self, why: str, *args: object) -> None:
        if not self._warned:
            self._warned = True
            log.warning("report journal %s: " + why + "; reports are still sent", self.path, *args)
