"""``report()``: builds the report of the trial contract and delivers it, retrying with back-off."""

from __future__ import annotations

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

from hpo_trial.transports import SendError, Transport, transport_from_env

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

    def report(self, resource: float, value: float, **extra: Any) -> bool:
        """Delivers one report; True when delivered. Never raises: failures are logged."""
        try:
            with self._lock:  # one report at a time keeps seq order equal to delivery order
                body = make_report(next(self._seq), resource, value, self._clock(), extra)
                if body["value"] is None:
                    log.warning("report seq=%d: value %r is not finite, sent as null", body["seq"], value)
                return self._deliver(body)
        except Exception:
            log.exception("report(%r, %r) failed and was dropped", resource, value)
            return False

    def _deliver(self, body: dict[str, Any]) -> bool:
        policy = self.policy
        deadline = time.monotonic() + policy.total_seconds
        delay = policy.initial_delay
        attempt = 0
        first_forbidden: float | None = None
        while True:
            attempt += 1
            try:
                timeout = max(0.1, min(policy.request_timeout, deadline - time.monotonic()))
                self.transport.send(body, timeout=timeout)
                self._delivered = True
                if attempt > 1:
                    log.info("report seq=%d delivered on attempt %d", body["seq"], attempt)
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
                        "report seq=%d to %s given up after %d attempt(s): %s%s",
                        body["seq"],
                        self.transport.describe(),
                        attempt,
                        exc,
                        hint,
                    )
                    return False
                log.warning("report seq=%d attempt %d failed (%s); retrying", body["seq"], attempt, exc)
                self._sleep(min(delay, remaining))
                delay = min(delay * 2, policy.max_delay)


_default: Reporter | None = None
_default_lock = threading.Lock()


def default_reporter() -> Reporter:
    """The process's reporter, its transport chosen from the environment on first use."""
    global _default
    with _default_lock:
        if _default is None:
            transport = transport_from_env()
            log.debug("hpo_trial reports go to %s", transport.describe())
            _default = Reporter(transport, RetryPolicy.from_env())
        return _default


def report(resource: float, value: float, **extra: Any) -> bool:
    """Reports the metric ``value`` reached at ``resource`` (e.g. epochs) to the study.

    Returns True when the report was delivered (or, outside a study, logged). It never raises into
    training code: a failed report is retried with back-off for a bounded time
    (``HPO_REPORT_RETRY_SECONDS``, default 60) and then logged and dropped.
    """
    return default_reporter().report(resource, value, **extra)
