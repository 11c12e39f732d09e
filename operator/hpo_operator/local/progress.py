"""What a person sees of a local study: the table of trials, live on a terminal or from study.json.

Everything here reads the study.json document (``LocalRunner.document()``), so `hpo run`'s live table
and `hpo status DIR` show the same thing.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TextIO

from ..contain import runner_gone


class Progress(Protocol):
    """Where the runner tells a person what happens."""

    def log(self, message: str) -> None:
        """One event, as a line."""

    def update(self, document: Mapping[str, Any]) -> None:
        """The study as in study.json, after a change or at least every second."""

    def close(self) -> None:
        """The run is over."""


class SilentProgress:
    def log(self, message: str) -> None:
        pass

    def update(self, document: Mapping[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


# Terminal control: cursor up N lines, back to column 0, clear to the end of the screen.
_UP = "\x1b[{n}A"
_CLEAR_BELOW = "\r\x1b[J"
# How often a plain (non-terminal) log prints a summary line when nothing else happens.
SUMMARY_EVERY_SECONDS = 15.0


def clock_text(seconds: float | None) -> str:
    """'42s', '3m05s', '1h02m'; '-' when unknown."""
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s" if seconds >= 10 else f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def value_text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def params_text(params: Mapping[str, Any]) -> str:
    """Hyper-parameters by their last dotted segment: 'learning_rate=0.003 batch_size=64'."""
    return " ".join(f"{k.rsplit('.', 1)[-1]}={value_text(v)}" for k, v in params.items())


def summary_lines(doc: Mapping[str, Any], now: float | None = None) -> list[str]:
    """The study in a few lines: state, time against the budget, counts, plan and best."""
    now = time.time() if now is None else now
    started = float(doc["startedAt"])
    finished = doc.get("finishedAt")
    end = float(finished) if finished is not None else now
    budget = doc["budget"]
    used = end - started
    if isinstance(budget.get("usedSeconds"), int | float) and isinstance(doc.get("updatedAt"), int | float):
        # On the study's clock, which leaves out the time between resumed sessions.
        used = float(budget["usedSeconds"]) + (
            0.0 if finished is not None else max(0.0, now - doc["updatedAt"])
        )
    if budget.get("seconds") is not None:
        timing = f"{clock_text(used)} of {clock_text(budget['seconds'])} budget"
        if finished is None and doc.get("deadline") is not None:
            timing += f", deadline in {clock_text(float(doc['deadline']) - now)}"
        elif budget.get("finishedInsideSeconds") is not None:
            timing += f", finished {clock_text(budget['finishedInsideSeconds'])} inside it"
    else:
        timing = f"{clock_text(used)}, budget not known yet"
    counts = doc["counts"]
    parts = [
        f"{counts[k]} {k}" for k in ("running", "completed", "pruned", "failed", "stopped") if counts.get(k)
    ]
    state = doc["state"] + (f" ({doc['reason']})" if doc.get("reason") else "")
    gone = runner_gone(dict(doc))
    if gone is not None:
        # Killed together with its watchdog (or the machine went down): nobody marked it.
        state = f"Interrupted ({gone}; study.json is as it last wrote it)"
    lines = [
        f"study {doc['name']}: {state}; {timing}; {counts['total']} trials"
        + (f": {', '.join(parts)}" if parts else "")
    ]
    plan = doc.get("plan")
    if plan:
        rungs = ", ".join(f"{r:g}" for r in plan["rungs"]) or "none"
        lines.append(
            f"plan: {plan['plannedTrials']} trials, {plan['parallelism']} at once, eta {plan['eta']}, "
            f"rungs {rungs}, R {plan['maximumResource']:g}, epoch {plan['epochSeconds']:.2f}s"
        )
    if doc.get("message") and finished is None:
        lines.append(f"note: {doc['message']}")
    if doc.get("error"):
        lines.append(f"error: {doc['error']}")
    refused = [(t["name"], t["refusedReports"]) for t in doc["trials"] if t.get("refusedReports")]
    if refused:
        each = ", ".join(f"{name} {count}" for name, count in refused)
        lines.append(f"refused reports: {each} (why: each trial's refused in study.json)")
    best = doc.get("best")
    if best:
        lines.append(
            f"best: {best['trial']} {best['metric']} {value_text(best['value'])} at {best['resource']:g}: "
            f"{params_text(best['hyperparameters'])}"
        )
    return lines


def trial_rows(
    doc: Mapping[str, Any], now: float | None = None, running_only: bool = False
) -> list[list[str]]:
    """One row per trial: trial, status, rung, resource, last value, elapsed, params."""
    now = time.time() if now is None else now
    max_resource = (doc.get("plan") or {}).get("maximumResource") or doc["config"].get("maximumResource")
    best = (doc.get("best") or {}).get("index")
    rows = []
    for t in doc["trials"]:
        if running_only and t["status"] != "Running":
            continue
        reports = t["reports"]
        last = reports[-1] if reports else None
        status = t["status"]
        if status == "Failed" and t.get("exitCode") is not None:
            status += f" ({t['exitCode']})"
        elapsed = (t["endedAt"] if t["endedAt"] is not None else now) - t["startedAt"]
        resource = "-" if last is None else f"{last['resource']:g}"
        if max_resource is not None and last is not None:
            resource += f"/{max_resource:g}"
        rows.append(
            [
                t["name"] + (" *" if t["index"] == best else ""),
                status,
                "-" if t.get("rung") is None else str(t["rung"]),
                resource,
                "-" if last is None else value_text(last["value"]),
                clock_text(elapsed),
                params_text(t["params"]),
            ]
        )
    return rows


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [
        max(len(header[i]), *(len(r[i]) for r in rows)) if rows else len(header[i])
        for i in range(len(header))
    ]

    # The last column (params) is not padded: it is the one cut at the terminal's edge.
    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells[:-1], widths[:-1], strict=True)) + "  " + cells[-1]

    return [line(header), *(line(r) for r in rows)]


def table_header(doc: Mapping[str, Any]) -> list[str]:
    metric = str(doc["config"].get("metric", "value")).upper()
    return ["TRIAL", "STATUS", "RUNG", "RESOURCE", metric, "ELAPSED", "PARAMS"]


def render(doc: Mapping[str, Any], now: float | None = None, running_only: bool = False) -> list[str]:
    """The summary and the table of trials (running ones only for the live view)."""
    lines = summary_lines(doc, now)
    rows = trial_rows(doc, now, running_only)
    if rows:
        lines += format_table(table_header(doc), rows)
    return lines


def _fit(line: str, width: int) -> str:
    return line if len(line) < width else line[: max(1, width - 2)] + "…"


class TerminalProgress:
    """A live table of the running trials at the bottom of the terminal, events scrolling above."""

    def __init__(self, stream: TextIO, clock: Callable[[], float] = time.time) -> None:
        self.stream = stream
        self.clock = clock
        self.start = clock()
        self.drawn = 0
        self.doc: Mapping[str, Any] | None = None

    def log(self, message: str) -> None:
        self._erase()
        self.stream.write(f"[{clock_text(self.clock() - self.start):>6}] {message}\n")
        self._draw()

    def update(self, document: Mapping[str, Any]) -> None:
        self.doc = document
        self._erase()
        self._draw()

    def close(self) -> None:
        self._erase()
        if self.doc is not None:
            width = shutil.get_terminal_size().columns
            for line in summary_lines(self.doc, self.clock()):
                self.stream.write(_fit(line, width) + "\n")
        self.stream.flush()
        self.doc = None

    def _erase(self) -> None:
        if self.drawn:
            self.stream.write(_UP.format(n=self.drawn) + _CLEAR_BELOW)
            self.drawn = 0

    def _draw(self) -> None:
        if self.doc is None:
            self.stream.flush()
            return
        width = shutil.get_terminal_size().columns
        # Lines shorter than the terminal never wrap, so the cursor goes back up exactly this far.
        lines = [_fit(line, width) for line in render(self.doc, self.clock(), running_only=True)]
        self.stream.write("".join(line + "\n" for line in lines))
        self.stream.flush()
        self.drawn = len(lines)


class LineProgress:
    """Plain log lines, for a log file or a pipe; a summary line now and then."""

    def __init__(self, stream: TextIO, clock: Callable[[], float] = time.time) -> None:
        self.stream = stream
        self.clock = clock
        self.start = clock()
        self.last_summary = self.start
        self.doc: Mapping[str, Any] | None = None

    def log(self, message: str) -> None:
        self.stream.write(f"[{clock_text(self.clock() - self.start):>6}] {message}\n")
        self.stream.flush()

    def update(self, document: Mapping[str, Any]) -> None:
        self.doc = document
        now = self.clock()
        if document["state"] == "Running" and now - self.last_summary >= SUMMARY_EVERY_SECONDS:
            self.last_summary = now
            self.log(summary_lines(document, now)[0])

    def close(self) -> None:
        if self.doc is not None:
            for line in summary_lines(self.doc, self.clock()):
                self.log(line)
