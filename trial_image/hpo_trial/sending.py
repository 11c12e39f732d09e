"""Reports sent in the background, so that training never waits for the API server.

``report()`` numbers and stamps a report and puts it on a bounded queue; one sender thread delivers
the queue through the :class:`~hpo_trial.reporting.Reporter`, retrying with its back-off. A report
that can change a decision goes out at once: the first two (they size the study's budget), the
first at or past each rung level, and the last (the maximum or stop resource). Others wait up to
``interval`` seconds and go out together in one request, so a trial reporting every second costs
one write every few seconds. The queue is flushed on exit and on SIGTERM; a full queue makes
``report()`` wait rather than drop a report.

To the cluster, the reports written are also thinned (:class:`Thinning`), since every write of the
HPOTrial sends and stores the whole object: besides the ones that go out at once, a report is
written only when its resource is ``max_resource / points`` beyond the last one written. The latest
report left unwritten is held and written when the queue is flushed, so a run's final value is never
lost. A report not written is logged (INFO), and every report goes to the report journal
(journal.py) where one is given.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Any

from hpo_trial.journal import ReportJournal

if TYPE_CHECKING:  # reporting.py builds the process's BackgroundReporter
    from hpo_trial.reporting import Reporter

log = logging.getLogger("hpo_trial")

#: Seconds a report that cannot change a decision may wait to go out with the next ones.
HPO_REPORT_INTERVAL_SECONDS = "HPO_REPORT_INTERVAL_SECONDS"
#: The study's rung levels, comma-separated: a report reaching one is sent at once.
HPO_RUNG_LEVELS = "HPO_RUNG_LEVELS"
#: The study's goal, the resource from which a report can reach it, and the metric's direction.
HPO_GOAL, HPO_GOAL_RESOURCE, HPO_MODE = "HPO_GOAL", "HPO_GOAL_RESOURCE", "HPO_MODE"
#: Reports of one request at most; more pending go out in the next one, at once.
MAX_BATCH = 100
#: Reports waiting at most before ``report()`` waits for room.
MAX_PENDING = 10_000
#: The reports the budget is sized from.
SIZING_REPORTS = 2
#: Points of the learning curve the HPOTrial status keeps besides the reports that go out at once.
HPO_STATUS_POINTS = "HPO_STATUS_POINTS"
DEFAULT_STATUS_POINTS = 256
#: Seconds a flush waits at most for the report journal, after the reports are sent.
JOURNAL_FLUSH_SECONDS = 5.0
# A report this share of the spacing short of it still counts as spaced: float resources (0.1
# steps, say) must not lose a point to rounding.
_SPACING_SLACK = 1e-9


@dataclass
class Urgency:
    """Which reports go out at once: they may change a decision. These are the first two, the first
    at or past each rung level and the first at or past the last resource; a later report at the
    same level is not urgent, so a trainer reporting often at the last resource is still coalesced."""

    rung_levels: Sequence[float] = ()
    last_resource: float | None = None
    """The maximum resource, or the stop resource of a trial run to a rung."""
    _seen: int = 0
    _passed: set[float] = field(default_factory=set)

    def __call__(self, resource: float) -> bool:
        self._seen += 1
        ends = self.rung_levels if self.last_resource is None else (*self.rung_levels, self.last_resource)
        crossed = {level for level in ends if resource >= level} - self._passed
        self._passed |= crossed
        return self._seen <= SIZING_REPORTS or bool(crossed)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Urgency:
        source = os.environ if environ is None else environ
        levels = [_number(part) for part in source.get(HPO_RUNG_LEVELS, "").split(",") if part.strip()]
        ends = [_number(source.get(name, "")) for name in ("HPO_STOP_RESOURCE", "HPO_MAX_RESOURCE")]
        last = min((e for e in ends if e is not None), default=None)
        return cls(rung_levels=sorted(lv for lv in levels if lv is not None), last_resource=last)


@dataclass(frozen=True)
class Goal:
    """The study's goal (``HPO_GOAL``, from ``HPO_GOAL_RESOURCE`` on, ``HPO_MODE``): a report that
    reaches it ends the study, so it goes out at once and is never thinned away."""

    value: float
    resource: float
    mode: str = "max"

    def reached(self, resource: float, value: float | None) -> bool:
        if value is None or not math.isfinite(value) or resource < self.resource:
            return False
        return value <= self.value if self.mode == "min" else value >= self.value

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Goal | None:
        """None without a goal (or with a value that is no number)."""
        source = os.environ if environ is None else environ
        value = _number(source.get(HPO_GOAL, "").strip() or "none")
        if value is None:
            return None
        at = _number(source.get(HPO_GOAL_RESOURCE, "").strip() or "none")
        at = at if at is not None else _number(source.get("HPO_MAX_RESOURCE", "").strip() or "none")
        mode = "min" if source.get(HPO_MODE, "").strip().lower() == "min" else "max"
        return cls(value=value, resource=at if at is not None else 0.0, mode=mode)


def is_urgent(urgency: Callable[[float], bool], goal: Goal | None, report: Mapping[str, Any]) -> bool:
    """Whether a built report goes out at once: by ``urgency``'s rule, or because it reaches the goal."""
    urgent = urgency(report["resource"])  # called for every report: it counts those it has seen
    return urgent or (goal is not None and goal.reached(report["resource"], report["value"]))


@dataclass
class Thinning:
    """Which reports are written to the HPOTrial status, decided for each report in order: every
    urgent one (:class:`Urgency`), and an ordinary one only when its resource is at least
    ``spacing`` beyond the resource of the last report written. With ``spacing = max_resource /
    points`` a run writes at most ``points + rungs + 3`` reports over resources in (0, max_resource]
    however often it reports: two sizing reports, one per rung, the one at the stop or maximum
    resource, the held latest (:class:`BackgroundReporter` writes it at flush) and fewer than
    ``points`` spaced ones. Reports at whole resources that increase (once per epoch) are all
    written while ``max_resource <= points``: their spacing is then at most 1."""

    spacing: float = 0.0
    """0: every report is written."""
    last_written: float | None = None

    def __call__(self, resource: float, urgent: bool) -> bool:
        """Whether the report at ``resource`` is written; it is then the last one written."""
        last = self.last_written
        spaced = last is None or resource >= last + self.spacing * (1 - _SPACING_SLACK)
        if urgent or self.spacing <= 0 or spaced:
            self.last_written = resource
            return True
        return False

    def wrote(self, resource: float) -> None:
        """A report held back was written after all (at a flush): later ones are spaced from it."""
        self.last_written = resource

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Thinning:
        """Spaced by ``HPO_MAX_RESOURCE / HPO_STATUS_POINTS``; no thinning without a maximum resource."""
        source = os.environ if environ is None else environ
        max_resource = _number(source.get("HPO_MAX_RESOURCE", "").strip() or "none")
        if max_resource is None or max_resource <= 0:
            return cls()
        return cls(spacing=max_resource / status_points_from_env(source))


def status_points_from_env(environ: Mapping[str, str] | None = None) -> int:
    """``HPO_STATUS_POINTS``: a whole number >= 1, else (logged) ``DEFAULT_STATUS_POINTS``."""
    raw = (os.environ if environ is None else environ).get(HPO_STATUS_POINTS, "").strip()
    if not raw:
        return DEFAULT_STATUS_POINTS
    value = _number(raw)
    if value is None or not value.is_integer() or value < 1:
        log.warning(
            "ignoring %s=%r: not a whole number >= 1; using %d", HPO_STATUS_POINTS, raw, DEFAULT_STATUS_POINTS
        )
        return DEFAULT_STATUS_POINTS
    return int(value)


def _number(raw: str) -> float | None:
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def interval_from_env(default: float, environ: Mapping[str, str] | None = None) -> float:
    raw = (os.environ if environ is None else environ).get(HPO_REPORT_INTERVAL_SECONDS, "").strip()
    value = _number(raw) if raw else default
    if value is None or value < 0:
        log.warning("ignoring %s=%r: not a number of seconds", HPO_REPORT_INTERVAL_SECONDS, raw)
        return default
    return value


class BackgroundReporter:
    """Queues reports and delivers them from a thread of its own."""

    def __init__(
        self,
        reporter: Reporter,
        *,
        interval: float = 0.0,
        urgent: Callable[[float], bool] | None = None,
        goal: Goal | None = None,
        thinning: Thinning | None = None,
        journal: ReportJournal | None = None,
        max_pending: int = MAX_PENDING,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.reporter = reporter
        self.interval = interval
        self._urgent = urgent or Urgency()
        self._goal = goal
        self._thinning = Thinning() if thinning is None else thinning
        self._journal = journal
        self._held: dict[str, Any] | None = None  # the latest report not written (yet)
        self._max_pending = max_pending
        self._clock = clock
        self._cond = threading.Condition(threading.RLock())  # RLock: a signal handler may flush
        self._pending: deque[dict[str, Any]] = deque()
        self._sending = 0
        self._due = False  # a pending report must go out now
        self._flushing = 0
        self._last_send = -math.inf
        self._lost = 0
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def report(self, resource: float, value: float, **extra: Any) -> bool:
        """Queues one report; True once queued. Never raises: a report that cannot be made is
        logged and dropped (False)."""
        try:
            with self._cond:
                while len(self._pending) >= self._max_pending:
                    self._cond.wait()
                # Built and queued without letting go of the lock: the queue's order is the seq order.
                body = self.reporter.build(resource, value, extra)
                urgent = is_urgent(self._urgent, self._goal, body)
                written = self._thinning(body["resource"], urgent)
                if self._journal is not None:
                    self._journal.append(body)
                if written:
                    self._held = None  # superseded: it stays in the log and the journal
                    self._pending.append(body)
                    self._due = urgent or self._due
                    self._start()
                    self._cond.notify_all()
                else:
                    self._held = body
                    if log.isEnabledFor(logging.INFO):
                        log.info("report (not written to the status): %s", json.dumps(body, sort_keys=True))
            return True
        except Exception:
            log.exception("report(%r, %r) failed and was dropped", resource, value)
            return False

    def flush(self, timeout: float | None = None) -> bool:
        """Sends what is queued now and waits until it is delivered or given up, or ``timeout``
        seconds; True when nothing is waiting and no report of this process was given up."""
        if os.getpid() != self._pid:
            # A forked child (a data-loader worker, say) has a copy of the queue but no sender:
            # its reports are the parent's to send.
            return True
        journal = self._journal
        started = time.monotonic()
        with self._cond:
            held, self._held = self._held, None
            if held is not None:  # the latest report must reach the status: written now
                self._thinning.wrote(held["resource"])
                self._pending.append(held)
                self._start()
            self._flushing += 1
            self._cond.notify_all()
            try:
                idle = self._cond.wait_for(lambda: not self._pending and not self._sending, timeout)
            finally:
                self._flushing -= 1
            sent = idle and self._lost == 0
        if journal is not None:  # best effort: bounded on its own, and not part of the result
            left = JOURNAL_FLUSH_SECONDS if timeout is None else timeout - (time.monotonic() - started)
            journal.flush(min(JOURNAL_FLUSH_SECONDS, max(left, 1.0)))
        return sent

    @property
    def pending(self) -> int:
        """Reports queued or being sent; a report held back from the status is not counted."""
        with self._cond:
            return len(self._pending) + self._sending

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="hpo-report-sender", daemon=True)
            self._thread.start()

    def _next_batch(self) -> list[dict[str, Any]]:
        with self._cond:
            while True:
                if self._pending:
                    wait = self._last_send + self.interval - self._clock()
                    if self._due or self._flushing or wait <= 0:
                        break
                    self._cond.wait(wait)
                else:
                    self._cond.wait()
            count = min(len(self._pending), MAX_BATCH)
            batch = [self._pending.popleft() for _ in range(count)]
            self._due = bool(self._pending)  # the rest of a long queue follows at once
            self._sending = count
            self._cond.notify_all()  # room for a waiting report()
            return batch

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            delivered = False
            try:
                delivered = self.reporter.deliver(batch)
            except Exception:
                log.exception("report seq=%s failed and was dropped", ",".join(str(b["seq"]) for b in batch))
            with self._cond:
                self._sending = 0
                self._lost += 0 if delivered else len(batch)
                self._last_send = self._clock()
                self._cond.notify_all()


def chain_sigterm_flush(flush: Callable[[], object]) -> bool:
    """Where SIGTERM still has its default action, flushes the queue on SIGTERM and then lets the
    signal do what it would have done. Returns whether the handler was installed (only from the
    main thread, and never over a handler the training code set)."""
    if threading.current_thread() is not threading.main_thread():
        return False
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return False

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        flush()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)  # as PID 1 of a container this is ignored, as before

    signal.signal(signal.SIGTERM, on_sigterm)
    return True
