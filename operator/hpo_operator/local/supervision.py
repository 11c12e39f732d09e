"""A trial as a process: its record (reports that count and those refused, its process, how it
ended), its environment (the trial contract's variables and its slot's limits), its start in a
process group of its own, when it is killed after SIGTERM, the runner's signals, its log's tail
and its exit, read for a person. Which of its processes belong to it is contain.py's."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

from ..study import PruneTrial, TrialView
from ..trials import TrialPhase, report_refusal, to_report
from .reports import ReportReader
from .slots import THREAD_VARIABLES, Slot

LOG_TAIL_LINES = 20
LOG_TAIL_BYTES = 8192
# Refused reports kept in study.json per trial (all are counted), and logged.
REFUSED_KEPT = 50
REFUSED_LOGGED = 5


@dataclass
class LocalTrial:
    """One trial and its process, as the runner tracks it."""

    index: int
    name: str
    params: dict[str, Any]
    slot: Slot
    folder: Path
    reader: ReportReader
    started_at: float
    process: subprocess.Popen[bytes] | None = None
    status: TrialPhase = TrialPhase.RUNNING
    ended_at: float | None = None
    exit_code: int | None = None
    reason: str | None = None  # why it ended, when the runner ended it or it failed
    pruned: PruneTrial | None = None
    term_sent_at: float | None = None
    killed: bool = False
    log_tail: str | None = None
    stop_at: float | None = None  # this run ends at this resource (promote variant); None: at R
    runs: int = 1  # the first start and each resumption
    final: bool = False  # resumed for the final training
    start_from: float = 0.0  # this run resumed from this resource; a run that reports goes beyond it
    run_refused_from: int = 0  # refused_count when this run started
    argv: list[str] = field(default_factory=list)  # the command this run ran
    reports: list[dict[str, Any]] = field(default_factory=list)  # those that count, as they arrived
    refused: list[dict[str, Any]] = field(default_factory=list)  # the first REFUSED_KEPT, with why
    refused_count: int = 0
    recorded_pid: int | None = None  # a resumed study's record of a process of an earlier session
    # Reports of runs interrupted and run again from scratch (stop variant): kept, never counted.
    discarded_reports: list[dict[str, Any]] = field(default_factory=list)
    interruptions: list[dict[str, Any]] = field(default_factory=list)  # what each resume did to it

    def take(self, report: dict[str, Any], max_resource: float) -> str | None:
        """Counts ``report``, or refuses it; returns why it was refused."""
        reason: str | None
        if not self.status.active:
            reason = f"arrived after the trial was {self.status.value.lower()}"
        else:
            highest = self.reports[-1]["resource"] if self.reports else 0.0
            reason = report_refusal(to_report(report), max_resource, highest)
        if reason is None:
            self.reports.append(report)
        else:
            self.refuse(reason, report=report)
        return reason

    def refuse(self, reason: str, *, report: dict[str, Any] | None = None, line: str | None = None) -> None:
        self.refused_count += 1
        if report is not None:
            # JSON has no NaN or infinity: a refused report may hold them where its value cannot.
            report = {
                k: str(v) if isinstance(v, float) and not math.isfinite(v) else v for k, v in report.items()
            }
        if len(self.refused) < REFUSED_KEPT:
            self.refused.append(
                {"reason": reason, "report": report} if line is None else {"reason": reason, "line": line}
            )

    @property
    def alive(self) -> bool:
        """The process still runs (and holds its slot)."""
        return self.process is not None and self.exit_code is None

    @property
    def log_path(self) -> Path:
        return self.folder / "log.txt"

    def view(self) -> TrialView:
        reports = tuple(to_report(r) for r in self.reports)
        return TrialView(self.index, self.status, reports, self.started_at, params=self.params)


def read_log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log (at most LOG_TAIL_BYTES read)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - LOG_TAIL_BYTES))
            data = handle.read()
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def resource_text(resource: float) -> str:
    return str(int(resource)) if float(resource).is_integer() else str(resource)


def trial_environment(
    study: str,
    name: str,
    params: Mapping[str, Any],
    metric: str,
    max_resource: float,
    slot: Slot,
    folder: Path,
) -> dict[str, str]:
    """This process's environment, less its ``HPO_`` variables, with the trial contract's (its
    name, configuration, metric, R, checkpoint folder and report file) and the slot's limits."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPO_")}
    env |= {
        "HPO_STUDY": study,
        "HPO_TRIAL": name,
        "HPO_HYPERPARAMETERS": json.dumps(dict(params)),
        "HPO_METRIC": metric,
        "HPO_MAX_RESOURCE": resource_text(max_resource),
        "HPO_CHECKPOINT_DIR": str((folder / "checkpoints").resolve()),
        "HPO_REPORT_FILE": str((folder / "reports.jsonl").resolve()),
        # Live logs: a crashing trial's last lines are in its log, not lost in a buffer.
        "PYTHONUNBUFFERED": "1",
    }
    # One trial per slot: a GPU trial sees only its GPU, a CPU trial none.
    env["CUDA_VISIBLE_DEVICES"] = slot.gpu if slot.gpu is not None else ""
    for variable in THREAD_VARIABLES:
        env[variable] = str(slot.threads)
    return env


def start_process(
    argv: list[str], env: Mapping[str, str], cwd: Path | None, log: IO[bytes]
) -> subprocess.Popen[bytes]:
    """The trial's process, its output to ``log``, in a process group of its own: out of reach of
    the terminal's ^C, which the runner handles, and signalled as a group. Raises OSError."""
    return subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=dict(env),
        cwd=cwd,
        start_new_session=True,
    )


def kill_at(term_sent_at: float, grace: float, deadline: float | None, kill_lead: float) -> float:
    """When a trial given SIGTERM at ``term_sent_at`` gets SIGKILL: after the grace, or sooner
    when that would end past the deadline (a stop before it, not the final training's), by
    ``kill_lead`` seconds."""
    at = term_sent_at + grace
    if deadline is not None and term_sent_at < deadline:
        at = min(at, max(term_sent_at, deadline - kill_lead))
    return at


@contextmanager
def interrupts(handler: Callable[[], None]) -> Iterator[None]:
    """SIGINT and SIGTERM call ``handler`` while inside (in the main thread only: elsewhere Python
    lets no signal handler be set); the previous handlers come back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum: int, frame: FrameType | None) -> None:
        handler()

    previous = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
