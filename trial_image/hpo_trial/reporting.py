"""``report()``: builds the report of the trial contract and delivers it, retrying with back-off
(in the background: sending.py)."""

from __future__ import annotations

import atexit
import itertools
import logging
import math
import numbers
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from hpo_trial.journal import ReportJournal
from hpo_trial.sending import (
    BackgroundReporter,
    Goal,
    Thinning,
    Urgency,
    chain_sigterm_flush,
    interval_from_env,
)
from hpo_trial.transports import ClusterTransport, SendError, Transport, send_all, transport_from_env

log = logging.getLogger("hpo_trial")

#: Seconds a report may spend being retried before it is given up (default 60).
HPO_REPORT_RETRY_SECONDS = "HPO_REPORT_RETRY_SECONDS"
FORBIDDEN = 403


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential back-off, bounded in total time so a lost API server cannot stall training."""

    total_seconds: float = 60.0
    """Time after the first attempt when no further attempt starts."""
    initial_delay: float = 0.5
    """Seconds before the second attempt; doubled after each failure."""
    max_delay: float = 10.0
    """Longest wait between two attempts."""
    request_timeout: float = 10.0
    """Longest a single attempt may take."""
    forbidden_grace: float = 10.0
    """Seconds a 403 is retried before any report of the process got through: a restarted API
    server answers 403 until its authorizer has loaded the cluster's RBAC."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RetryPolicy:
        raw = (os.environ if environ is None else environ).get(HPO_REPORT_RETRY_SECONDS, "").strip()
        if not raw:
            return cls()
        try:
            total = float(raw)
        except ValueError:
            log.warning("ignoring %s=%r: not a number", HPO_REPORT_RETRY_SECONDS, raw)
            return cls()
        return cls(total_seconds=max(0.0, total))


def _jsonable(value: Any) -> Any:
    """The value as plain JSON: numpy/torch scalars unwrapped, NaN and infinities as null."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    item = getattr(value, "item", None)  # 0-d arrays and tensors
    if callable(item):
        return _jsonable(item())
    return str(value)


def make_report(
    seq: int, resource: float, value: float, now: float, extra: Mapping[str, Any]
) -> dict[str, Any]:
    """The report object of the trial contract: ``{seq, resource, value, time, extra}``."""
    number = _jsonable(value)
    if number is not None and not isinstance(number, (int, float)):
        raise TypeError(f"value must be a number, got {type(value).__name__}")
    res = _jsonable(resource)
    if not isinstance(res, (int, float)) or isinstance(res, bool):
        raise TypeError(f"resource must be a finite number, got {resource!r}")
    return {
        "seq": seq,
        "resource": res,
        "value": None if number is None else float(number),
        "time": now,
        "extra": _jsonable(dict(extra)),
    }


class Reporter:
    """Numbers reports from 0 and delivers each through a transport, retrying with back-off."""

    def __init__(
        self,
        transport: Transport,
        policy: RetryPolicy | None = None,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.transport = transport
        self.policy = policy or RetryPolicy()
        self._clock = clock
        self._sleep = sleep
        self._seq = itertools.count()
        self._lock = threading.Lock()
        self._delivered = False  # some report of this process got through
        # A report was given up on a 403 before any delivery: the trial most likely lacks the right,
        # so later 403s are final at once and a misconfigured trial loses one grace period in all.
        self._forbidden = False

    def build(self, resource: float, value: float, extra: Mapping[str, Any]) -> dict[str, Any]:
        """The next report, numbered and stamped now; raises TypeError for a report that cannot be
        made (callers log and drop it, so that a bad value never raises into training)."""
        body = make_report(next(self._seq), resource, value, self._clock(), extra)
        if body["value"] is None:
            log.warning("report seq=%d: value %r is not finite, sent as null", body["seq"], value)
        return body

    def report(self, resource: float, value: float, **extra: Any) -> bool:
        """Delivers one report and waits for it; True when delivered. Never raises: failures are
        logged."""
        try:
            with self._lock:  # one report at a time keeps seq order equal to delivery order
                return self.deliver([self.build(resource, value, extra)])
        except Exception:
            log.exception("report(%r, %r) failed and was dropped", resource, value)
            return False

    def deliver(self, bodies: list[dict[str, Any]]) -> bool:
        """Sends built reports, in one request where the transport can, retrying the whole batch
        with back-off; True when delivered, False when given up (logged)."""
        policy = self.policy
        seqs = ",".join(str(b["seq"]) for b in bodies)
        deadline = time.monotonic() + policy.total_seconds
        delay = policy.initial_delay
        attempt = 0
        first_forbidden: float | None = None
        while True:
            attempt += 1
            try:
                timeout = max(0.1, min(policy.request_timeout, deadline - time.monotonic()))
                send_all(self.transport, bodies, timeout=timeout)
                self._delivered = True
                if attempt > 1:
                    log.info("report seq=%s delivered on attempt %d", seqs, attempt)
                return True
            except SendError as exc:
                now = time.monotonic()
                remaining = deadline - now
                retryable = exc.retryable
                if exc.status == FORBIDDEN:
                    # After a delivery the server changed its mind for a moment, as a restarted API
                    # server does until its authorizer has loaded RBAC; before one that is told from
                    # a missing right only by time, so it gets a grace period once per process.
                    first_forbidden = now if first_forbidden is None else first_forbidden
                    retryable = self._delivered or (
                        not self._forbidden and now - first_forbidden < policy.forbidden_grace
                    )
                if not retryable or remaining <= 0:
                    hint = ""
                    if exc.status == FORBIDDEN and not self._delivered:
                        self._forbidden = True
                        hint = " (may the trial's service account patch hpotrials/status?)"
                    log.error(
                        "report seq=%s to %s given up after %d attempt(s): %s%s",
                        seqs,
                        self.transport.describe(),
                        attempt,
                        exc,
                        hint,
                    )
                    return False
                log.warning("report seq=%s attempt %d failed (%s); retrying", seqs, attempt, exc)
                self._sleep(min(delay, remaining))
                delay = min(delay * 2, policy.max_delay)


#: Seconds a report to the cluster that cannot change a decision may wait for the next ones.
CLUSTER_REPORT_INTERVAL = 2.0

_default: BackgroundReporter | None = None
_default_lock = threading.Lock()


def default_reporter() -> BackgroundReporter:
    """The process's reporter, its transport chosen from the environment on first use. Reports to
    the cluster are coalesced (a write costs the API server, etcd and every watcher); a report
    file is appended to at once. Only the cluster's reports are thinned (sending.Thinning)."""
    global _default
    with _default_lock:
        if _default is None:
            transport = transport_from_env()
            log.debug("hpo_trial reports go to %s", transport.describe())
            policy = RetryPolicy.from_env()
            cluster = isinstance(transport, ClusterTransport)
            interval = CLUSTER_REPORT_INTERVAL if cluster else 0.0
            reporter = BackgroundReporter(
                Reporter(transport, policy),
                interval=interval_from_env(interval),
                urgent=Urgency.from_env(),
                goal=Goal.from_env(),
                # The HPOTrial is rewritten whole for each write: its reports are thinned, and the
                # full curve kept in the journal. A report file keeps every report.
                thinning=Thinning.from_env() if cluster else None,
                journal=ReportJournal.from_env() if cluster else None,
            )
            # Flushing on exit and SIGTERM is bounded by the retry bound of the last batch.
            limit = policy.total_seconds + policy.request_timeout
            atexit.register(reporter.flush, limit)
            chain_sigterm_flush(lambda: reporter.flush(limit))
            _default = reporter
        return _default


def report(resource: float, value: float, **extra: Any) -> bool:
    """Reports the metric ``value`` reached at ``resource`` (e.g. epochs) to the study.

    It returns at once, True when the report was queued: a thread of the SDK delivers it, retrying
    with back-off for a bounded time (``HPO_REPORT_RETRY_SECONDS``, default 60) before it logs and
    drops it. It never raises into training code. Reports are flushed when the process exits
    normally or by SIGTERM; a process that ends itself with ``os._exit`` calls :func:`flush` first.
    """
    return default_reporter().report(resource, value, **extra)


def flush(timeout: float | None = None) -> bool:
    """Waits until every report made so far is delivered (or given up), at most ``timeout``
    seconds; True when all were delivered. Needed only before ``os._exit``."""
    with _default_lock:
        reporter = _default
    return True if reporter is None else reporter.flush(timeout)
